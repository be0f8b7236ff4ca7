//! TURN over TCP and TLS against the real binary on loopback: stream framing (coalesced and split
//! frames, ChannelData padding), TLS (dedicated port and sniffed on the plain port), PROXY
//! protocol, connection limits, the idle and slowloris timeouts, and a client that stops
//! reading.

mod common;

use common::certs::TestCert;
use common::stream_client::{closed_within, read_frame, Datagrams, StreamTurn};
use common::{free_port, EchoPeer, TempFile, Tern, SECRET};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tern::stun::{self, attr, Class, Message, MessageWriter, Method};

const REALM: &str = "tern";

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn tid(n: u8) -> [u8; 12] {
    [n; 12]
}

fn binding(n: u8) -> Vec<u8> {
    let mut buf = [0u8; 64];
    MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &tid(n))
        .finish()
        .unwrap()
        .to_vec()
}

fn xor_mapped(frame: &[u8]) -> SocketAddr {
    let msg = Message::parse(frame).unwrap();
    assert_eq!(msg.class(), Class::Success, "{frame:?}");
    stun::decode_xor_address(
        msg.get(attr::XOR_MAPPED_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap()
}

fn answers_binding(stream: &mut TcpStream, n: u8) -> bool {
    stream.write_all(&binding(n)).is_ok()
        && read_frame(stream)
            .is_ok_and(|f| Message::parse(&f).is_ok_and(|m| m.class() == Class::Success))
}

/// A free TCP port on 127.0.0.1 for the TLS listener.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn binding_requests_coalesced_and_split_are_all_answered() {
    let tern = Tern::start("");
    let mut stream = connect(tern.addr);
    let local = stream.local_addr().unwrap();

    // Two requests in one write.
    let mut both = binding(1);
    both.extend(binding(2));
    stream.write_all(&both).unwrap();
    for n in [1, 2] {
        let frame = read_frame(&mut stream).unwrap();
        assert_eq!(Message::parse(&frame).unwrap().transaction_id(), &tid(n));
        assert_eq!(
            xor_mapped(&frame),
            local,
            "XOR-MAPPED-ADDRESS is the TCP client"
        );
    }

    // One request across three writes (inside the header, then inside the body).
    let mut buf = [0u8; 64];
    let mut writer = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &tid(3));
    writer.add_fingerprint();
    let request = writer.finish().unwrap().to_vec();
    for part in [&request[..3], &request[3..22], &request[22..]] {
        stream.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    let frame = read_frame(&mut stream).unwrap();
    assert_eq!(Message::parse(&frame).unwrap().transaction_id(), &tid(3));

    // And a request followed by half of the next in one write, then the rest.
    let mut one_and_a_half = binding(4);
    let next = binding(5);
    one_and_a_half.extend_from_slice(&next[..10]);
    stream.write_all(&one_and_a_half).unwrap();
    let frame = read_frame(&mut stream).unwrap();
    assert_eq!(Message::parse(&frame).unwrap().transaction_id(), &tid(4));
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(&next[10..]).unwrap();
    let frame = read_frame(&mut stream).unwrap();
    assert_eq!(Message::parse(&frame).unwrap().transaction_id(), &tid(5));
}

#[test]
fn garbage_first_bytes_close_the_connection() {
    let tern = Tern::start("");
    let mut stream = connect(tern.addr);
    stream.write_all(&[0xFF; 24]).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(3)));
}

/// A raw TURN client over any byte stream, with a REST credential.
/// A stream TURN client with a REST credential for the test secret.
fn raw_turn<S: Read + Write>(stream: S) -> StreamTurn<S> {
    let minted = tern::credentials::mint(SECRET, Some("raw"), 3600, common::unix_now());
    StreamTurn::new(stream, &minted.username, &minted.password, REALM)
}

fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = channel.to_be_bytes().to_vec();
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().div_ceil(4) * 4, 0);
    frame
}

#[test]
fn channel_data_is_padded_both_ways_on_a_tcp_allocation() {
    let tern = Tern::start("allow-loopback-peers = true");
    let peer = EchoPeer::start(Duration::from_secs(20));
    let mut client = raw_turn(connect(tern.addr));
    let relayed = client.allocate().unwrap();
    assert_eq!(relayed.ip(), tern.addr.ip());
    client.channel_bind(0x4001, peer.addr).unwrap();

    // Odd payload sizes, coalesced in one write: each frame padded to 4 bytes.
    let payloads: [&[u8]; 3] = [b"a", b"hello", b"0123456789ab"];
    let mut burst = Vec::new();
    for payload in payloads {
        burst.extend(channel_data(0x4001, payload));
    }
    client.stream.write_all(&burst).unwrap();
    for payload in payloads {
        let frame = read_frame(&mut client.stream).unwrap();
        assert_eq!(frame.len() % 4, 0, "padded over TCP: {frame:?}");
        assert_eq!(&frame[..2], &0x4001u16.to_be_bytes());
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[2], frame[3]])),
            payload.len()
        );
        assert_eq!(&frame[4..4 + payload.len()], payload);
    }
    let received = peer.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|(from, _)| *from == relayed));
    assert_eq!(
        received[1].1, b"hello",
        "the peer gets the payload, not the padding"
    );

    // Closing the connection ends the allocation: the relay port is free again at once.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(3);
    while std::net::UdpSocket::bind(relayed).is_err() {
        assert!(
            Instant::now() < deadline,
            "relay port still bound after close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// The timeouts through real sockets, each with a short configured timeout and a generous bound
// (the exact deadlines are unit tests of the state machine, with injected time: see
// src/net/stream/connection/tests.rs).

#[test]
fn a_silent_connection_is_closed_by_the_idle_timeout() {
    let tern = Tern::start("stream-idle-timeout = 1\npartial-frame-timeout = 60");
    let mut silent = connect(tern.addr);
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
}

#[test]
fn an_idle_connection_after_one_valid_binding_is_closed_by_the_idle_timeout() {
    // Before, the idle timeout only timed the first message: 64 of 64 such connections were
    // still served 20 s later with both timeouts at 2 s.
    let tern = Tern::start("stream-idle-timeout = 1\npartial-frame-timeout = 60");
    let mut idle = connect(tern.addr);
    assert!(answers_binding(&mut idle, 1));
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
}

#[test]
fn a_frame_that_never_completes_is_closed_by_the_partial_frame_timeout() {
    let tern = Tern::start("stream-idle-timeout = 60\npartial-frame-timeout = 1");
    let mut slow = connect(tern.addr);
    assert!(answers_binding(&mut slow, 1));
    slow.write_all(&binding(2)[..10]).unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(5)));
}

const ADMIN_KEY: &str = "stream-test-admin-key-0123";

/// A TURN client on a connection whose receive buffer is tiny, so the server's writes back up
/// as soon as it stops reading; with an allocation and a permission for `peer`.
fn stalling_client(tern: &Tern, peer: SocketAddr) -> (StreamTurn<TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&tern.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut client = raw_turn(stream);
    let relayed = client.allocate().unwrap();
    client.create_permission(peer).unwrap();
    (client, relayed)
}

/// Waits until `relay` refuses datagrams (ICMP port unreachable: the relay socket is closed);
/// when it did, or `None` if it still took them at `deadline`.
fn refused_by(relay: SocketAddr, deadline: Instant) -> Option<Instant> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.connect(relay).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let sent = probe.send(b"probe");
        let refused = |e: &io::Error| e.kind() == io::ErrorKind::ConnectionRefused;
        if sent.as_ref().is_err_and(refused) || probe.recv(&mut buf).as_ref().is_err_and(refused) {
            return Some(Instant::now());
        }
    }
    None
}

#[test]
fn a_client_that_stops_reading_keeps_its_expiry_and_its_admin_api() {
    // Before, a write to such a client blocked its connection task: its allocation outlived its
    // lifetime, and the admin API could neither list nor delete it.
    let lifetime = Duration::from_secs(6);
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\nadmin-api-keys = [\"{ADMIN_KEY}\"]\n\
         default-allocate-lifetime = {0}\nmax-allocate-lifetime = {0}\nstream-idle-timeout = 60",
        lifetime.as_secs()
    ));
    let _logs = DumpLogsOnPanic(&tern);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let (_deleted, deleted_relay) = stalling_client(&tern, peer_addr);
    let (mut expiring, expiring_relay) = stalling_client(&tern, peer_addr);
    let allocated = Instant::now();

    // The peer floods both relays (bounded), and neither client reads a byte: first the one
    // that is to expire, paced so the relay takes it all, until its queue is full (the server
    // counts datagrams dropped there; a burst at once could mostly be lost before the relay socket
    // and leave the queue short of full), then the other.
    let payload = [0x5Au8; 1200];
    let mut full = None;
    for _ in 0..200 {
        for _ in 0..100 {
            let _ = peer.send_to(&payload, expiring_relay);
        }
        std::thread::sleep(Duration::from_millis(5));
        if scraped(&tern, "tern_stream_queue_drops_total") > 0 {
            full = Some(Instant::now());
            break;
        }
    }
    let full = full.expect("the queue of a client that does not read fills up");
    assert!(full < allocated + Duration::from_secs(4), "flooded in time");
    for _ in 0..8000 {
        let _ = peer.send_to(&payload, deleted_relay);
    }

    // The admin API still lists both connections' allocations, and deletes one.
    let admin = |method: &str, path: &str| {
        common::http(method, &tern.url(path), Some(ADMIN_KEY), None).json()
    };
    let list = admin("GET", "/api/v1/admin/allocations");
    let allocations = list["allocations"].as_array().unwrap().clone();
    let id_of = |relay: SocketAddr| {
        allocations
            .iter()
            .find(|a| a["relay"] == relay.to_string())
            .and_then(|a| a["id"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{relay} not listed: {list}"))
    };
    let deleted_id = id_of(deleted_relay);
    id_of(expiring_relay);
    let path = format!("/api/v1/admin/allocations/{deleted_id}");
    assert_eq!(admin("DELETE", &path)["deleted"], 1);
    let soon = Instant::now() + Duration::from_secs(3);
    assert!(
        refused_by(deleted_relay, soon).is_some(),
        "the deleted allocation's relay is closed"
    );

    // The other one's timers kept running: it expires on time, and its relay closes.
    let closed = refused_by(
        expiring_relay,
        allocated + lifetime + Duration::from_secs(3),
    )
    .expect("the allocation of a client that does not read expires on time");
    assert!(
        closed >= allocated + lifetime - Duration::from_secs(1),
        "closed by its expiry, not before"
    );

    // Its queue has stayed full since the flood: the connection is cut after the write-stall
    // timeout (10 s), well before this. (Reading any earlier would have restarted that clock.)
    let stall = Duration::from_secs(tern::config::Config::default().stream_write_timeout.into());
    std::thread::sleep(
        (full + stall + Duration::from_secs(3)).saturating_duration_since(Instant::now()),
    );
    assert!(
        closed_within(&mut expiring.stream, Duration::from_secs(3)),
        "a client that stopped reading is cut"
    );
}

#[test]
fn per_ip_connection_limit() {
    let tern = Tern::start("max-connections-per-ip = 3");
    let mut open: Vec<TcpStream> = (0..3).map(|_| connect(tern.addr)).collect();
    for (n, stream) in open.iter_mut().enumerate() {
        assert!(answers_binding(stream, n as u8));
    }
    let mut fourth = connect(tern.addr);
    let _ = fourth.write_all(&binding(9));
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2)),
        "4th closed"
    );
    for (n, stream) in open.iter_mut().enumerate() {
        assert!(
            answers_binding(stream, 20 + n as u8),
            "the first 3 still work"
        );
    }
    // A closed connection gives its place back.
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect(tern.addr);
    assert!(answers_binding(&mut again, 30));
    assert!(tern
        .logs()
        .contains("connections refused by connection limits"));
}

#[test]
fn total_connection_limit() {
    let tern = Tern::start("max-connections = 2\nmax-connections-per-ip = 0");
    let mut first = connect(tern.addr);
    let mut second = connect(tern.addr);
    assert!(answers_binding(&mut first, 1) && answers_binding(&mut second, 2));
    let mut third = connect(tern.addr);
    assert!(closed_within(&mut third, Duration::from_secs(2)));
    assert!(answers_binding(&mut first, 3));
}

struct DumpLogsOnPanic<'a>(&'a Tern);

impl Drop for DumpLogsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tern logs:\n{}", self.0.logs());
        }
    }
}

fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (source, destination) else {
        panic!("IPv4 only here");
    };
    let mut header = tern::net::proxy_protocol::V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&src.ip().octets());
    header.extend_from_slice(&dst.ip().octets());
    header.extend_from_slice(&src.port().to_be_bytes());
    header.extend_from_slice(&dst.port().to_be_bytes());
    header
}

#[test]
fn proxy_protocol_from_trusted_sources_sets_the_client_address() {
    let tern = Tern::start("proxy-protocol-trusted = [\"127.0.0.0/8\"]");
    let real: SocketAddr = "203.0.113.9:4242".parse().unwrap();
    let _logs = DumpLogsOnPanic(&tern);

    // v2, with the first request in the same write.
    let mut stream = connect(tern.addr);
    let mut bytes = proxy_v2(real, tern.addr);
    bytes.extend(binding(1));
    stream.write_all(&bytes).unwrap();
    assert_eq!(xor_mapped(&read_frame(&mut stream).unwrap()), real);

    // v1, split in two writes.
    let mut stream = connect(tern.addr);
    stream
        .write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 5")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"6324 3478\r\n").unwrap();
    stream.write_all(&binding(2)).unwrap();
    assert_eq!(
        xor_mapped(&read_frame(&mut stream).unwrap()),
        "198.51.100.7:56324".parse().unwrap()
    );

    // A trusted source may also connect without a header.
    let mut stream = connect(tern.addr);
    let local = stream.local_addr().unwrap();
    stream.write_all(&binding(3)).unwrap();
    assert_eq!(xor_mapped(&read_frame(&mut stream).unwrap()), local);

    // A malformed header closes.
    let mut stream = connect(tern.addr);
    stream.write_all(b"PROXY TCP4 nonsense\r\n").unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(2)));
}

#[test]
fn proxy_protocol_from_untrusted_sources_is_refused() {
    let tern = Tern::start("proxy-protocol-trusted = [\"192.0.2.0/24\"]");
    let mut stream = connect(tern.addr);
    let mut bytes = proxy_v2("203.0.113.9:4242".parse().unwrap(), tern.addr);
    bytes.extend(binding(1));
    stream.write_all(&bytes).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(2)));

    // Default: no source is trusted.
    let tern = Tern::start("");
    let mut stream = connect(tern.addr);
    stream
        .write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 56324 3478\r\n")
        .unwrap();
    stream.write_all(&binding(2)).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(2)));
}

/// A TLS tern: certificate files, and the TLS port.
struct TlsTern {
    tern: Tern,
    tls_port: u16,
    cert: TempFile,
    key: TempFile,
}

fn start_tls(name: &str, cert: &TestCert, extra: &str) -> TlsTern {
    let cert_file = TempFile::new(&format!("{name}-cert.pem"), &cert.cert_pem);
    let key_file = TempFile::new(&format!("{name}-key.pem"), &cert.key_pem);
    let tls_port = free_tcp_port();
    let tern = Tern::start(&format!(
        "tls-listening-port = {tls_port}\ncert = \"{}\"\npkey = \"{}\"\n{extra}",
        cert_file.0.display(),
        key_file.0.display()
    ));
    TlsTern {
        tern,
        tls_port,
        cert: cert_file,
        key: key_file,
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(port: u16, trust: &TestCert) -> io::Result<TlsStream> {
    let tcp = connect(SocketAddr::from(([127, 0, 0, 1], port)));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(trust.client_config(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    // Drive the handshake to completion (errors show here, e.g. an untrusted certificate).
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

fn tls_binding(stream: &mut TlsStream, n: u8) -> SocketAddr {
    stream.write_all(&binding(n)).unwrap();
    xor_mapped(&read_frame(stream).unwrap())
}

#[test]
fn tls_on_its_port_and_sniffed_on_the_plain_port() {
    let cert = TestCert::generate();
    let tls = start_tls("tls-ports", &cert, "allow-loopback-peers = true");
    for port in [tls.tls_port, tls.tern.port] {
        let mut stream = tls_connect(port, &cert).unwrap();
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"stun.turn"[..]));
        let local = stream.sock.local_addr().unwrap();
        assert_eq!(tls_binding(&mut stream, 1), local);
    }
    // Plain STUN still works on the plain port, and is refused on the TLS-only port.
    let mut plain = connect(tls.tern.addr);
    assert!(answers_binding(&mut plain, 2));
    let mut plain_on_tls = connect(SocketAddr::from(([127, 0, 0, 1], tls.tls_port)));
    let _ = plain_on_tls.write_all(&binding(3));
    assert!(closed_within(&mut plain_on_tls, Duration::from_secs(2)));

    // A TURN allocation relays over TLS with padded ChannelData.
    let peer = EchoPeer::start(Duration::from_secs(20));
    let mut client = raw_turn(tls_connect(tls.tls_port, &cert).unwrap());
    client.allocate().unwrap();
    client.channel_bind(0x4002, peer.addr).unwrap();
    client
        .stream
        .write_all(&channel_data(0x4002, b"over tls"))
        .unwrap();
    let frame = read_frame(&mut client.stream).unwrap();
    assert_eq!(&frame[4..12], b"over tls");
    let _ = (&tls.cert, &tls.key);
}

#[test]
fn tls_certificate_reloads_on_file_change_and_bad_files_are_refused() {
    let cert_a = TestCert::generate();
    let cert_b = TestCert::generate();
    let tls = start_tls("tls-watch", &cert_a, "");
    let mut kept = tls_connect(tls.tls_port, &cert_a).unwrap();
    assert!(tls_connect(tls.tls_port, &cert_b).is_err());

    // Replaced on disk, no signal: the watcher picks it up within a few seconds.
    cert_b.install(&tls.cert.0, &tls.key.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_connect(tls.tls_port, &cert_b).is_err() {
        assert!(
            Instant::now() < deadline,
            "cert B not served:\n{}",
            tls.tern.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tls_connect(tls.tls_port, &cert_a).is_err());
    // The connection made under A goes on.
    let local = kept.sock.local_addr().unwrap();
    assert_eq!(tls_binding(&mut kept, 1), local);

    // A garbage certificate, then SIGUSR2: refused with an error, B keeps serving.
    std::fs::write(
        &tls.cert.0,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-USR2", &tls.tern.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tls.tern.logs().contains("TLS certificate reload refused") {
        assert!(
            Instant::now() < deadline,
            "no error logged:\n{}",
            tls.tern.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        tls.tern.logs().contains(&tls.cert.0.display().to_string()),
        "the log names the file"
    );
    let mut stream = tls_connect(tls.tls_port, &cert_b).unwrap();
    tls_binding(&mut stream, 2);
}

#[test]
fn bad_certificate_at_start_is_a_configuration_error() {
    let port = free_port();
    let missing =
        std::env::temp_dir().join(format!("tern-test-{}-missing.pem", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
        ])
        .arg(format!("--cert={}", missing.display()))
        .arg(format!("--pkey={}", missing.display()))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cert") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

/// The soft open-file limit of process `pid`.
fn open_file_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// The value of `sample` (name and labels, as printed) in a scrape of `/metrics`, 0 if absent.
fn scraped(tern: &Tern, sample: &str) -> u64 {
    let metrics = common::http("GET", &tern.url("/metrics"), None, None).body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[test]
fn under_descriptor_pressure_tcp_is_refused_first_and_udp_and_http_go_on() {
    // Before, TCP connections took every descriptor under a low limit: then every UDP Allocate
    // failed with 508 and /healthz could not be accepted.
    const LIMIT: u32 = 256;
    let tern = Tern::start_with_fd_limit(
        LIMIT,
        "max-connections-per-ip = 0\nallow-loopback-peers = true",
    );
    let _logs = DumpLogsOnPanic(&tern);
    assert_eq!(open_file_limit(tern.pid()), u64::from(LIMIT));
    // An RFC 6062 allocation made before the pressure.
    let mut control = raw_turn(connect(tern.addr));
    control
        .request(Method::ALLOCATE, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })
        .expect("a TCP allocation");
    let mut open = Vec::new();
    let _refused = loop {
        assert!(open.len() < LIMIT as usize, "never refused");
        let mut stream = connect(tern.addr);
        if !answers_binding(&mut stream, 1) {
            break stream;
        }
        open.push(stream);
    };
    // fd-reserve-percent = 25: TCP keeps below descriptor 192, the rest of the process included.
    assert!((100..192).contains(&open.len()), "{} served", open.len());
    // A UDP allocation, and HTTP, still get descriptors.
    let minted = tern::credentials::mint(SECRET, Some("udp"), 3600, common::unix_now());
    let udp = Datagrams::connect("127.0.0.1:0", tern.addr);
    let mut udp = StreamTurn::new(udp, &minted.username, &minted.password, REALM);
    udp.allocate().expect("a UDP allocation under TCP pressure");
    let health = common::http("GET", &tern.url("/healthz"), None, None);
    assert_eq!(health.status, 200);
    assert!(scraped(&tern, "tern_stream_refused_total{reason=\"fd_reserve\"}") >= 1);
    // A peer connection would take a descriptor of the reserve too: the Connect gets 447.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let connect_peer = control.request(Method::CONNECT, |w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
    });
    assert_eq!(connect_peer.err(), Some(447));
    let peers_refused = "tern_tcp_peer_connections_refused_total{reason=\"fd_reserve\"}";
    assert_eq!(scraped(&tern, peers_refused), 1);
    // The served connections still are.
    assert!(answers_binding(&mut open[0], 2));
}

#[test]
fn a_connection_that_sent_a_64_kib_frame_gives_the_memory_back() {
    // Before, a connection that once sent a 64 KiB frame kept ~88 KiB for the rest of its life.
    let tern = Tern::start("stream-idle-timeout = 60");
    let buffers = || scraped(&tern, "tern_stream_read_buffer_bytes");
    let mut stream = connect(tern.addr);
    assert!(answers_binding(&mut stream, 1));
    assert_eq!(buffers(), 4096);
    // A maximal ChannelData frame (no channel: dropped), its first part, then the rest.
    let large = channel_data(0x4000, &[7u8; 65535]);
    stream.write_all(&large[..60_000]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while buffers() < 60_000 {
        assert!(Instant::now() < deadline, "the buffer never grew");
        std::thread::sleep(Duration::from_millis(50));
    }
    stream.write_all(&large[60_000..]).unwrap();
    assert!(answers_binding(&mut stream, 2));
    assert_eq!(buffers(), 4096, "back to one small buffer");
}
