//! IPv6 (RFC 8656 §§ 6-7) through real sockets, driven by coTURN's `turnutils_uclient` on `::1`
//! with TURN REST credentials: IPv6 relays (`-x`), dual-stack allocations (`-Z`), and 440 when
//! no IPv6 relay address exists; and a RESERVATION-TOKEN of an IPv6 pair claimed over TCP.
//! Under CI=true a missing tool or `::1` fails; elsewhere the tests are skipped.

mod common;

use common::stream_client::StreamTurn;
use common::tools::{self, coturn_tool, ipv6_loopback, uclient_totals as totals};
use common::{Tern, SECRET};
use std::net::SocketAddr;
use std::process::Command;
use tern::stun::{self, attr, Message, Method};

fn available() -> bool {
    ipv6_loopback() && coturn_tool("turnutils_uclient")
}

/// Runs uclient: 4 clients x 50 messages between each other (`-y`) through tern at `server`.
fn run_uclient(tern: &Tern, server: &str, extra: &[&str]) -> String {
    tools::run_uclient(tern, server, tern.port, extra)
}

fn assert_all_came_back(text: &str, tern: &Tern) {
    let (sent, received, lost) = totals(text);
    assert!(
        sent >= 200,
        "4 clients x 50 messages, got {sent} sent:\n{text}"
    );
    assert_eq!(
        received,
        sent,
        "everything sent came back:\n{text}\ntern logs:\n{}",
        tern.logs()
    );
    assert_eq!(lost, 0, "{text}");
}

/// The `allocation created` log lines (debug level in the test config), without colours.
fn created(tern: &Tern) -> Vec<String> {
    tern.logs()
        .lines()
        .filter(|line| line.contains("allocation created"))
        .map(strip_ansi)
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

fn dual_stack_tern() -> Tern {
    Tern::start_listening(
        r#"["127.0.0.1", "::1"]"#,
        "allow-loopback-peers = true\nallow-rfc5766-channel-numbers = true",
    )
}

#[test]
fn uclient_over_ipv6_with_ipv6_relays_and_channels() {
    if !available() {
        return;
    }
    let tern = dual_stack_tern();
    let text = run_uclient(&tern, "::1", &["-x"]);
    assert_all_came_back(&text, &tern);
    let created = created(&tern);
    assert!(!created.is_empty(), "{}", tern.logs());
    for line in &created {
        assert!(
            line.contains("client=[::1]:")
                && line.contains("[::1]:")
                && !line.contains("127.0.0.1"),
            "an IPv6 client with an IPv6 relay only: {line}"
        );
    }
}

#[test]
fn uclient_over_ipv6_with_send_indications() {
    if !available() {
        return;
    }
    let tern = dual_stack_tern();
    let text = run_uclient(&tern, "::1", &["-x", "-s"]);
    assert_all_came_back(&text, &tern);
}

#[test]
fn uclient_dual_stack_allocations_get_two_relays() {
    if !available() {
        return;
    }
    let tern = dual_stack_tern();
    // -Z: ADDITIONAL-ADDRESS-FAMILY (coTURN sends the draft's 0x8032), one relay per family.
    let text = run_uclient(&tern, "::1", &["-Z"]);
    assert_all_came_back(&text, &tern);
    let created = created(&tern);
    assert!(!created.is_empty(), "{}", tern.logs());
    for line in &created {
        let relays = line.split("relay=").nth(1).unwrap_or_default();
        assert!(
            relays.contains("127.0.0.1:") && relays.contains("[::1]:"),
            "two relays, one per family: {line}"
        );
    }
}

#[test]
fn ipv6_relay_without_an_ipv6_address_gets_440() {
    if !available() {
        return;
    }
    let tern = Tern::start("allow-loopback-peers = true");
    let output = Command::new("timeout")
        .args(["20", "turnutils_uclient", "-W", SECRET, "-u", "uclient"])
        .args([
            "-p",
            &tern.port.to_string(),
            "-n",
            "5",
            "-m",
            "1",
            "-y",
            "-x",
        ])
        .arg("127.0.0.1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("error 440"),
        "uclient sees 440 Address Family not Supported:\n{text}"
    );
    assert!(created(&tern).is_empty(), "{}", tern.logs());
}

/// An Allocate over TCP on a stream connection with REST credentials.
fn stream_turn(tern: &Tern) -> StreamTurn<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect(tern.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let minted = tern::credentials::mint(SECRET, Some("token"), 3600, common::unix_now());
    StreamTurn::new(stream, &minted.username, &minted.password, "tern")
}

/// A RESERVATION-TOKEN names its socket whatever its family (RFC 8656 §7.2): a pair reserved by
/// an IPv6 EVEN-PORT Allocate is claimed by a token Allocate over TCP, which carries no family
/// and so defaults to IPv4. Over UDP this always worked; over TCP it was 508.
#[test]
fn reservation_token_from_an_ipv6_allocate_is_claimed_over_tcp() {
    if !ipv6_loopback() {
        return;
    }
    let tern = dual_stack_tern();
    let mut first = stream_turn(&tern);
    let response = first
        .request(Method::ALLOCATE, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            w.add_bytes(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
            w.add_bytes(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
        })
        .expect("IPv6 EVEN-PORT Allocate");
    let msg = Message::parse(&response).unwrap();
    let even = relayed(&msg);
    assert!(even.is_ipv6() && even.port() % 2 == 0, "{even}");
    let token = msg.get(attr::RESERVATION_TOKEN).expect("a token").to_vec();

    let mut second = stream_turn(&tern);
    let response = second
        .request(Method::ALLOCATE, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            w.add_bytes(attr::RESERVATION_TOKEN, &token);
        })
        .unwrap_or_else(|code| panic!("token Allocate over TCP refused: {code}"));
    let odd = relayed(&Message::parse(&response).unwrap());
    assert_eq!(
        odd,
        SocketAddr::new(even.ip(), even.port() + 1),
        "the reserved odd port"
    );
}

fn relayed(msg: &Message<'_>) -> SocketAddr {
    stun::decode_xor_address(
        msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap()
}

/// Whether a TCP connection from `source` to `server` is served: it answers a Binding.
fn served_from(source: &str, server: SocketAddr) -> Option<std::net::TcpStream> {
    use std::io::Write;
    let source: SocketAddr = format!("[{source}]:0").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).ok()?;
    socket.bind(&source.into()).unwrap();
    socket.connect(&server.into()).ok()?;
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    stream.write_all(&common::binding_request()).ok()?;
    common::stream_client::read_frame(&mut stream).ok()?;
    Some(stream)
}

#[test]
fn max_connections_per_ip_counts_ipv6_clients_per_prefix() {
    // Before, each IPv6 address counted on its own: one subscriber's /64 could open
    // max-connections-per-ip connections from each of its 2^64 addresses.
    if !common::netns::available() {
        return;
    }
    const SERVER: &str = "2001:db8::1";
    let netns = common::netns::Netns::with_loopback_addresses(&[
        SERVER,
        "2001:db8::a",
        "2001:db8::b",
        "2001:db8::c",
        "2001:db8:0:1::a",
    ]);
    for (prefix, served_in_the_64) in [(64, 2), (128, 3)] {
        let (tern, refused) = netns.within(move || {
            let tern = Tern::start_listening(
                &format!("[\"127.0.0.1\", \"{SERVER}\"]"),
                &format!("max-connections-per-ip = 2\nconnection-ipv6-prefix = {prefix}"),
            );
            let server = SocketAddr::new(SERVER.parse().unwrap(), tern.port);
            let same_64: Vec<_> = ["2001:db8::a", "2001:db8::b", "2001:db8::c"]
                .iter()
                .filter_map(|source| served_from(source, server))
                .collect();
            assert_eq!(same_64.len(), served_in_the_64, "/{prefix}");
            // Another /64 has places of its own.
            assert!(
                served_from("2001:db8:0:1::a", server).is_some(),
                "/{prefix}"
            );
            let metrics = common::http("GET", &tern.url("/metrics"), None, None).body;
            let sample = "tern_stream_refused_total{reason=\"max_connections_per_ip\"} ";
            let refused: u64 = metrics
                .lines()
                .find_map(|line| line.strip_prefix(sample))
                .map_or(0, |value| value.trim().parse().unwrap());
            (tern, refused)
        });
        assert_eq!(refused, 3 - served_in_the_64 as u64, "/{prefix}");
        drop(tern);
    }
}
