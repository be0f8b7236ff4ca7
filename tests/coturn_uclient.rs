//! coTURN's own test client, `turnutils_uclient` (Debian package `coturn`), against tern.
//! Under CI=true a missing tool fails the test; elsewhere it is reported and skipped.

mod common;

use common::certs::{served_by, TestCert};
use common::tools::{self, coturn_tool, uclient_totals as totals};
use common::{TempFile, Tern};
use std::process::Command;
use std::time::{Duration, Instant};

fn run_uclient(tern: &Tern, extra: &[&str]) -> String {
    tools::run_uclient(tern, "127.0.0.1", tern.port, extra)
}

fn run_uclient_on(tern: &Tern, port: u16, extra: &[&str]) -> String {
    tools::run_uclient(tern, "127.0.0.1", port, extra)
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
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    // uclient picks channel numbers from RFC 5766's 0x4000-0x7FFF.
    let tern = Tern::start("allow-loopback-peers = true\nallow-rfc5766-channel-numbers = true");
    assert_all_came_back(&run_uclient(&tern, &[]));
}

#[test]
fn uclient_relays_over_udp_with_send_indications() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let tern = Tern::start("allow-loopback-peers = true");
    assert_all_came_back(&run_uclient(&tern, &["-s"]));
}

#[test]
fn uclient_relays_over_tcp_with_rest_credentials() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let tern = Tern::start("allow-loopback-peers = true\nallow-rfc5766-channel-numbers = true");
    assert_all_came_back(&run_uclient(&tern, &["-t"]));
}

/// tern with TLS on its own port, serving `cert` from files the test can replace.
fn start_tls(name: &str, cert: &TestCert) -> (Tern, u16, TempFile, TempFile) {
    let cert_file = TempFile::new(&format!("{name}-cert.pem"), &cert.cert_pem);
    let key_file = TempFile::new(&format!("{name}-key.pem"), &cert.key_pem);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\nallow-rfc5766-channel-numbers = true\n\
         tls-listening-port = {tls_port}\ncert = \"{}\"\npkey = \"{}\"\n",
        cert_file.0.display(),
        key_file.0.display()
    ));
    (tern, tls_port, cert_file, key_file)
}

#[test]
fn uclient_relays_over_tls_on_both_ports() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let cert = TestCert::generate();
    let (tern, tls_port, _cert, _key) = start_tls("uclient-tls", &cert);
    // uclient: -t -S is TLS over TCP (-S alone is DTLS).
    assert_all_came_back(&run_uclient_on(&tern, tls_port, &["-t", "-S"]));
    // The plain port tells TLS apart by its first byte.
    assert_all_came_back(&run_uclient_on(&tern, tern.port, &["-t", "-S"]));
}

fn signal(tern: &Tern, name: &str) {
    let status = Command::new("kill")
        .args([name, &tern.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn certificate_reload_while_allocations_relay_over_tls() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let cert_a = TestCert::generate();
    let cert_b = TestCert::generate();
    let (tern, tls_port, cert_file, key_file) = start_tls("uclient-reload", &cert_a);
    assert!(served_by(tls_port, &cert_a));
    std::thread::scope(|scope| {
        // 4 sessions x 200 messages, 20 ms apart: about 4 s of relaying over TLS.
        let relaying =
            scope.spawn(|| run_uclient_on(&tern, tls_port, &["-t", "-S", "-n", "200", "-z", "20"]));
        std::thread::sleep(Duration::from_millis(1500));
        cert_b.install(&cert_file.0, &key_file.0);
        signal(&tern, "-HUP");
        let text = relaying.join().unwrap();
        let (sent, received, lost) = totals(&text);
        assert!(sent >= 800, "4 clients x 200 messages, got {sent}:\n{text}");
        assert_eq!(received, sent, "everything sent came back:\n{text}");
        assert_eq!(lost, 0, "{text}");
    });
    assert!(
        tern.logs().contains("TLS certificate reloaded"),
        "{}",
        tern.logs()
    );
    assert!(served_by(tls_port, &cert_b), "new connections get cert B");
    assert!(!served_by(tls_port, &cert_a));

    // A bad certificate: an error naming the file, and B keeps serving.
    std::fs::write(&cert_file.0, "not a certificate").unwrap();
    signal(&tern, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tern.logs().contains("TLS certificate reload refused") {
        assert!(
            Instant::now() < deadline,
            "no error logged:\n{}",
            tern.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served_by(tls_port, &cert_b));
    assert_all_came_back(&run_uclient_on(&tern, tls_port, &["-t", "-S"]));
}

/// RFC 6062: every client Allocates with REQUESTED-TRANSPORT=TCP; one of each pair Connects to
/// the other's relayed address, whose allocation gets a ConnectionAttempt; both ConnectionBind
/// on new data connections and send raw bytes both ways.
#[test]
fn uclient_relays_over_tcp_allocations() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let tern = Tern::start("allow-loopback-peers = true");
    // -T: TCP relay (implies -t -y -c).
    assert_all_came_back(&run_uclient(&tern, &["-T"]));
    let logs = tern.logs();
    assert!(logs.contains("peer connection opened"), "{logs}");
    assert!(logs.contains("peer connection accepted"), "{logs}");
}

#[test]
fn uclient_relays_over_tcp_allocations_with_tls_data_connections() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let cert = TestCert::generate();
    let (tern, tls_port, _cert, _key) = start_tls("uclient-tcp-relay-tls", &cert);
    assert_all_came_back(&run_uclient_on(&tern, tls_port, &["-T", "-S"]));
}

/// -P: passive TCP, the "peer" is a plain TCP client that connects to the relayed address
/// (ConnectionAttempt, ConnectionBind). uclient counts only what its TURN clients receive (its
/// peer cannot parse raw bytes), so exactly half comes back by its count: coTURN 4.6 reports the
/// same.
#[test]
fn uclient_passive_tcp_relay_with_active_peers() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let tern = Tern::start("allow-loopback-peers = true");
    let text = run_uclient(&tern, &["-P"]);
    let (sent, received, _) = totals(&text);
    assert!(sent >= 200, "{text}");
    assert_eq!(
        received * 2,
        sent,
        "all the peers sent came through:\n{text}"
    );
    assert!(tern.logs().contains("connection bound"), "{}", tern.logs());
}
