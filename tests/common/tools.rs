//! External things some tests need (coTURN's clients, Chromium, an IPv6 loopback) and the rule
//! for their absence: under CI=true, which installs everything, a missing one fails the test;
//! elsewhere the test says SKIPPED and passes.

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
