//! The refusals a newcomer hits in a local try-out are logged once each, with the reason and the
//! key that changes it: coTURN's test client's RFC 5766 channel numbers, a loopback peer, the
//! credential endpoint without api-keys.

mod common;

use common::tools::coturn_tool;
use common::{http, Tern, SECRET};
use std::process::Command;

/// How many log lines contain `text`.
fn lines_with(tern: &Tern, text: &str) -> usize {
    tern.logs().lines().filter(|l| l.contains(text)).count()
}

/// uclient as the README's try-out runs it (two clients relaying to each other through tern):
/// its exit status does not matter here, tern refuses it.
fn uclient(tern: &Tern) {
    let _ = Command::new("timeout")
        .args([
            "30",
            "turnutils_uclient",
            "-W",
            SECRET,
            "-u",
            "newcomer",
            "-n",
            "5",
        ])
        .args(["-m", "2", "-y", "-p", &tern.port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
}

/// Waits (up to 10 s) for `text` in tern's logs, then checks it was logged exactly once.
fn logged_once(tern: &Tern, text: &str) {
    tern.wait_log(text, std::time::Duration::from_secs(10));
    assert_eq!(lines_with(tern, text), 1, "{}", tern.logs());
}

#[test]
fn rfc5766_channel_numbers_are_explained_once() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let tern = Tern::start("allow-loopback-peers = true");
    uclient(&tern);
    uclient(&tern);
    logged_once(
        &tern,
        "RFC 8656 allows 0x4000-0x4FFF; set allow-rfc5766-channel-numbers = true",
    );
}

#[test]
fn loopback_peers_are_explained_once() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let tern = Tern::start("allow-rfc5766-channel-numbers = true");
    uclient(&tern);
    uclient(&tern);
    logged_once(
        &tern,
        "is loopback; set allow-loopback-peers = true for local tests",
    );
}

#[test]
fn a_credential_endpoint_without_api_keys_is_explained_once() {
    let tern = Tern::start("");
    for _ in 0..3 {
        let reply = http(
            "POST",
            &tern.url("/api/v1/credentials"),
            Some("a-key-of-some-length"),
            None,
        );
        assert_eq!(reply.status, 403);
    }
    logged_once(&tern, "no api-keys configured; set api-keys");
}
