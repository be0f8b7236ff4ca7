//! External things some tests need (coTURN's clients, Chromium, an IPv6 loopback) and the rule
//! for their absence: under CI=true, which installs everything, a missing one fails the test;
//! elsewhere the test says SKIPPED and passes.

use super::{Tern, SECRET};
use std::process::Command;

/// `found`, after applying the rule: panics under CI=true when it is false.
pub fn required(found: bool, what: &str, how: &str) -> bool {
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is missing under CI=true: {how} (scripts/install-test-deps.sh installs the tools)"
        );
        eprintln!("SKIPPED: {what} is missing ({how})");
    }
    found
}

/// Whether coTURN's `program` (`turnutils_uclient`, `turnutils_natdiscovery`) can run.
pub fn coturn_tool(program: &str) -> bool {
    let found = Command::new(program).arg("-h").output().is_ok();
    required(found, program, "apt-get install coturn")
}

/// Whether this host has an IPv6 loopback.
pub fn ipv6_loopback() -> bool {
    let found = std::net::UdpSocket::bind("[::1]:0").is_ok();
    required(found, "the IPv6 loopback ::1", "enable IPv6 on lo")
}

/// uclient's closing totals: messages sent and received, and lost packets.
pub fn uclient_totals(output: &str) -> (u64, u64, u64) {
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

/// Runs coTURN's uclient against tern at `server`:`port` with REST credentials: 4 clients x 50
/// messages between each other (`-y`), plus `extra` flags; its whole output. A failing uclient
/// fails the test, with tern's logs.
pub fn run_uclient(tern: &Tern, server: &str, port: u16, extra: &[&str]) -> String {
    run_uclient_against(|| tern.logs(), server, port, extra)
}

/// [`run_uclient`] against a tern this process did not start (a container): `logs` fetches its
/// logs for a failure message.
pub fn run_uclient_against(
    logs: impl Fn() -> String,
    server: &str,
    port: u16,
    extra: &[&str],
) -> String {
    let port = port.to_string();
    let mut args = vec![
        "-W", SECRET, "-u", "uclient", "-p", &port, "-n", "50", "-l", "120", "-m", "4", "-y",
    ];
    args.extend_from_slice(extra);
    args.push(server);
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
        logs()
    );
    text
}
