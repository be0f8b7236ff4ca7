//! coTURN's own test client, `turnutils_uclient` (Debian package `coturn`), against tern.
//! Under CI=true a missing tool fails the test; elsewhere it is reported and skipped.

mod common;

use common::{Tern, SECRET};
use std::process::Command;

fn uclient_available() -> bool {
    let found = Command::new("turnutils_uclient").arg("-h").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "turnutils_uclient is missing under CI=true: install Debian's coturn package (.ci/run does)"
        );
        eprintln!("SKIPPED: turnutils_uclient not installed (apt-get install coturn)");
    }
    found
}

/// Parses uclient's closing lines: messages sent and received, and lost packets.
fn totals(output: &str) -> (u64, u64, u64) {
    let number_after = |key: &str| -> u64 {
        let at = output
            .rfind(key)
            .unwrap_or_else(|| panic!("{key} missing in:\n{output}"))
            + key.len();
        output[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (
        number_after("tot_send_msgs="),
        number_after("tot_recv_msgs="),
        number_after("Total lost packets"),
    )
}

fn run_uclient(tern: &Tern, extra: &[&str]) -> String {
    let port = tern.port.to_string();
    let mut args = vec![
        "-W", SECRET, "-u", "uclient", "-p", &port, "-n", "50", "-l", "120", "-m", "4", "-y",
    ];
    args.extend_from_slice(extra);
    args.push("127.0.0.1");
    let output = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args(&args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "uclient failed ({:?}):\n{text}\ntern logs:\n{}",
        output.status,
        tern.logs()
    );
    text
}

fn assert_all_came_back(text: &str) {
    let (sent, received, lost) = totals(text);
    assert!(
        sent >= 200,
        "4 clients x 50 messages, got {sent} sent:\n{text}"
    );
    assert_eq!(received, sent, "everything sent came back:\n{text}");
    assert_eq!(lost, 0, "{text}");
}

#[test]
fn uclient_relays_over_udp_with_rest_credentials_channels() {
    if !uclient_available() {
        return;
    }
    // uclient picks channel numbers from RFC 5766's 0x4000-0x7FFF.
    let tern = Tern::start("allow-loopback-peers = true\nallow-rfc5766-channel-numbers = true");
    assert_all_came_back(&run_uclient(&tern, &[]));
}

#[test]
fn uclient_relays_over_udp_with_send_indications() {
    if !uclient_available() {
        return;
    }
    let tern = Tern::start("allow-loopback-peers = true");
    assert_all_came_back(&run_uclient(&tern, &["-s"]));
}
