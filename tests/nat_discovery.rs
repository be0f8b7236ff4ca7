//! RFC 5780 NAT behaviour discovery through real sockets: with `rfc5780 = true` and tern
//! listening on 127.0.0.1 and 127.0.0.2 (both loopback on Linux), it also listens on
//! `alt-listening-port` and answers CHANGE-REQUEST from the other address and port. Checked with
//! raw datagrams (the source address of each answer is what is under test) and with coTURN's
//! `turnutils_natdiscovery`. Without `rfc5780`, two addresses reveal nothing of each other.

mod common;

use common::{free_port, Tern, SECRET};
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;
use tern::stun::{attr, decode_address, Class, Message, MessageWriter, Method};

/// tern on 127.0.0.1 + 127.0.0.2 at `port` with `rfc5780 = true`, alternate port `alt`; `None`
/// if 127.0.0.2 is not usable here.
fn start() -> Option<(Tern, u16)> {
    start_with("rfc5780 = true\n")
}

fn start_with(extra: &str) -> Option<(Tern, u16)> {
    if UdpSocket::bind("127.0.0.2:0").is_err() {
        eprintln!("SKIPPED: 127.0.0.2 is not a local address here");
        return None;
    }
    let port = free_port();
    let alt = loop {
        let candidate = free_port();
        if candidate != port {
            break candidate;
        }
    };
    let (min, max) = common::relay_range();
    let toml = format!(
        "listening-ip = [\"127.0.0.1\", \"127.0.0.2\"]\nlistening-port = {port}\n\
         alt-listening-port = {alt}\nmin-port = {min}\nmax-port = {max}\n\
         static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\n{extra}"
    );
    Some((Tern::start_with_config(port, &toml), alt))
}

/// Sends a Binding to `to` with CHANGE-REQUEST `flags` (none if `None`); returns the answer's
/// source address and its OTHER-ADDRESS, RESPONSE-ORIGIN and XOR-MAPPED-ADDRESS.
fn binding(
    socket: &UdpSocket,
    to: SocketAddr,
    flags: Option<u32>,
) -> (
    SocketAddr,
    Option<SocketAddr>,
    Option<SocketAddr>,
    SocketAddr,
) {
    let tid: [u8; 12] = rand_tid();
    let mut buf = [0u8; 128];
    let mut writer = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &tid);
    if let Some(flags) = flags {
        writer.add_u32(attr::CHANGE_REQUEST, flags);
    }
    let request = writer.finish().unwrap().to_vec();
    socket.send_to(&request, to).unwrap();
    let mut reply = [0u8; 512];
    let (len, from) = socket
        .recv_from(&mut reply)
        .unwrap_or_else(|e| panic!("no answer to flags {flags:?} sent to {to}: {e}"));
    let msg = Message::parse(&reply[..len]).unwrap();
    assert_eq!(msg.class(), Class::Success, "{:?}", msg.error_code());
    assert_eq!(msg.transaction_id(), &tid);
    let plain = |typ| msg.get(typ).map(|v| decode_address(v).unwrap());
    let mapped = tern::stun::decode_xor_address(
        msg.get(attr::XOR_MAPPED_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap();
    (
        from,
        plain(attr::OTHER_ADDRESS),
        plain(attr::RESPONSE_ORIGIN),
        mapped,
    )
}

fn rand_tid() -> [u8; 12] {
    use std::sync::atomic::{AtomicU8, Ordering};
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut tid = [0x5a; 12];
    tid[0] = n;
    tid[11] = std::process::id() as u8;
    tid
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn change_request_is_answered_from_the_other_address_and_port() {
    let Some((tern, alt)) = start() else {
        return;
    };
    let port = tern.port;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let primary = addr(&format!("127.0.0.1:{port}"));
    let cases = [
        (None, format!("127.0.0.1:{port}")),
        (Some(0x0), format!("127.0.0.1:{port}")),
        (Some(0x2), format!("127.0.0.1:{alt}")),
        (Some(0x4), format!("127.0.0.2:{port}")),
        (Some(0x6), format!("127.0.0.2:{alt}")),
    ];
    for (flags, expected) in cases {
        let (from, other, origin, mapped) = binding(&socket, primary, flags);
        let expected = addr(&expected);
        assert_eq!(
            from, expected,
            "answer to {flags:?} comes from the asked address"
        );
        assert_eq!(
            origin,
            Some(expected),
            "RESPONSE-ORIGIN says where it came from"
        );
        assert_eq!(other, Some(addr(&format!("127.0.0.2:{alt}"))));
        assert_eq!(mapped, socket.local_addr().unwrap());
    }
    // Every one of the four listeners answers, naming its opposite as OTHER-ADDRESS.
    for (to, opposite) in [
        (format!("127.0.0.2:{port}"), format!("127.0.0.1:{alt}")),
        (format!("127.0.0.1:{alt}"), format!("127.0.0.2:{port}")),
        (format!("127.0.0.2:{alt}"), format!("127.0.0.1:{port}")),
    ] {
        let (from, other, _, _) = binding(&socket, addr(&to), None);
        assert_eq!(from, addr(&to));
        assert_eq!(other, Some(addr(&opposite)), "asked at {to}");
    }
}

#[test]
fn one_listening_address_means_no_rfc5780() {
    let tern = Tern::start("");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 128];
    let mut writer = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &[3; 12]);
    writer.add_u32(attr::CHANGE_REQUEST, 0x6);
    let request = writer.finish().unwrap().to_vec();
    socket.send_to(&request, tern.addr).unwrap();
    let mut reply = [0u8; 512];
    let (len, from) = socket.recv_from(&mut reply).unwrap();
    assert_eq!(from, tern.addr);
    let msg = Message::parse(&reply[..len]).unwrap();
    assert_eq!(msg.error_code().map(|(c, _)| c), Some(420));
    let (_, other, origin, _) = binding(&socket, tern.addr, None);
    assert_eq!((other, origin), (None, None));
}

/// Two listening addresses no longer switch RFC 5780 on: OTHER-ADDRESS would tell every client,
/// unauthenticated, the host's other address (a private one, on a multi-homed host).
#[test]
fn two_listening_addresses_without_rfc5780_say_nothing_of_each_other() {
    let Some((tern, alt)) = start_with("") else {
        return;
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for listener in ["127.0.0.1", "127.0.0.2"] {
        let to = addr(&format!("{listener}:{}", tern.port));
        let (from, other, origin, _) = binding(&socket, to, None);
        assert_eq!(from, to);
        assert_eq!((other, origin), (None, None), "asked at {to}");
    }
    // Nothing listens on the alternate port.
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
        .send_to(
            &common::binding_request(),
            addr(&format!("127.0.0.1:{alt}")),
        )
        .unwrap();
    assert!(socket.recv_from(&mut [0u8; 512]).is_err());
}

#[test]
fn coturn_natdiscovery_sees_endpoint_independent_mapping_and_filtering() {
    if !common::tools::coturn_tool("turnutils_natdiscovery") {
        return;
    }
    let Some((tern, alt)) = start() else {
        return;
    };
    let output = Command::new("timeout")
        .args(["30", "turnutils_natdiscovery", "-m", "-f", "-p"])
        .arg(tern.port.to_string())
        .arg("127.0.0.1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // Loopback does no NAT: both behaviours come out endpoint independent, which the tool can
    // only conclude from answers to CHANGE-REQUEST and from the OTHER-ADDRESS listeners.
    assert!(
        text.contains("NAT with Endpoint Independent Mapping"),
        "{text}\ntern logs:\n{}",
        tern.logs()
    );
    assert!(
        text.contains("NAT with Endpoint Independent Filtering"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Response origin: : 127.0.0.2:{alt}")),
        "a change-IP-and-port answer came from the other address and port:\n{text}"
    );
}
