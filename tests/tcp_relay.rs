//! TCP allocations (RFC 6062) against the real binary on loopback, driven message by message:
//! Connect to a TCP echo peer and ConnectionBind on a second connection; a peer connecting to
//! the relayed address, announced by ConnectionAttempt; the error codes; and closing.
//! (coTURN's `turnutils_uclient -T` is the independent check, in tests/coturn_uclient.rs.)

mod common;

use common::stream_client::{closed_within, read_frame, StreamTurn};
use common::{Tern, SECRET};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
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

/// A TURN client over one TCP connection, with REST credentials for user `raw`.
/// The RFC 6062 client: a stream TURN client on its control connection.
struct Client {
    turn: StreamTurn<TcpStream>,
}

impl Client {
    fn new(server: SocketAddr) -> Self {
        let minted = tern::credentials::mint(SECRET, Some("raw"), 3600, common::unix_now());
        let turn = StreamTurn::new(connect(server), &minted.username, &minted.password, REALM);
        Client { turn }
    }

    /// Sends an authenticated request and returns the response, success or error.
    fn request(&mut self, method: Method, attrs: impl Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        self.turn.exchange(method, attrs).unwrap()
    }

    fn allocate_tcp(&mut self) -> SocketAddr {
        let response = self.request(Method::ALLOCATE, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        });
        let msg = Message::parse(&response).unwrap();
        assert_eq!(msg.class(), Class::Success, "{:?}", msg.error_code());
        stun::decode_xor_address(
            msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            msg.transaction_id(),
        )
        .unwrap()
    }

    /// Connect: the CONNECTION-ID, or the error code.
    fn connect_peer(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let response = self.request(Method::CONNECT, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        let msg = Message::parse(&response).unwrap();
        assert_eq!(msg.method(), Method::CONNECT);
        match msg.error_code() {
            Some((code, _)) => Err(code),
            None => Ok(msg.get_u32(attr::CONNECTION_ID).expect("CONNECTION-ID")),
        }
    }

    fn create_permission(&mut self, peer: SocketAddr) {
        let response = self.request(Method::CREATE_PERMISSION, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
    }

    /// A data connection for `id`, with the same credentials and (first) the control
    /// connection's nonce; `Err(code)` if the bind failed.
    fn data_connection(&self, server: SocketAddr, id: u32) -> Result<TcpStream, u16> {
        let mut data = self.turn.sharing_session(connect(server));
        let response = data
            .exchange(Method::CONNECTION_BIND, |w| {
                w.add_u32(attr::CONNECTION_ID, id);
            })
            .unwrap();
        let msg = Message::parse(&response).unwrap();
        assert_eq!(msg.method(), Method::CONNECTION_BIND);
        match msg.error_code() {
            Some((code, _)) => Err(code),
            None => Ok(data.stream),
        }
    }
}

/// A TCP peer that echoes every connection; reports each connection's source address.
fn echo_peer() -> (SocketAddr, std::sync::mpsc::Receiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (sources, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = sources.send(stream.peer_addr().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, receiver)
}

fn round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
}

#[test]
fn connect_then_connection_bind_relays_bytes_to_a_tcp_peer() {
    let tern = Tern::start("allow-loopback-peers = true");
    let (peer, sources) = echo_peer();
    let mut control = Client::new(tern.addr);
    let relayed = control.allocate_tcp();
    assert_eq!(relayed.ip(), tern.addr.ip());

    let id = control.connect_peer(peer).unwrap();
    let source = sources.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(source, relayed, "the peer sees the relayed address");
    // One connection per peer address at a time.
    assert_eq!(control.connect_peer(peer), Err(446));
    // Peer policy applies (private ranges are denied by default).
    assert_eq!(
        control.connect_peer("10.1.2.3:80".parse().unwrap()),
        Err(403)
    );
    // Nobody listens there: 447.
    let nobody = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(control.connect_peer(nobody), Err(447));

    assert_eq!(control.data_connection(tern.addr, id ^ 1).err(), Some(400));
    let mut data = control.data_connection(tern.addr, id).unwrap();
    round_trip(&mut data, b"hello over a TCP relay");
    // Not STUN-framed: any bytes go through as they are, large ones too.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    round_trip(&mut data, &big);
    // Operators see the TCP relay in /metrics: one peer connection was established (the refused
    // and failed attempts never were), and it is spliced now.
    let metrics = common::http("GET", &tern.url("/metrics"), None, None).body;
    assert_eq!(
        metric(&metrics, "tern_tcp_peer_connections_total"),
        1,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "tern_tcp_relay_spliced"), 1, "{metrics}");
    // Connect and ConnectionBind answers are counted under their own methods and codes, 446
    // and 447 included (connections fold their counters within 500 ms, hence the wait).
    let answers = [
        ("connect", "200"),
        ("connect", "403"),
        ("connect", "446"),
        ("connect", "447"),
        ("connection_bind", "200"),
        ("connection_bind", "400"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::http("GET", &tern.url("/metrics"), None, None).body;
        let counted = |(method, code): &(&str, &str)| {
            let sample = format!("tern_requests_total{{method=\"{method}\",code=\"{code}\"}} 1");
            metrics.lines().any(|line| line == sample)
        };
        if answers.iter().all(counted) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A connection id is bound once.
    assert_eq!(control.data_connection(tern.addr, id).err(), Some(400));

    // The control connection closing ends the allocation and its data connections.
    drop(control);
    assert!(closed_within(&mut data, Duration::from_secs(5)));
}

#[test]
fn a_peer_connecting_to_the_relayed_address_is_announced_and_bound() {
    let tern = Tern::start("allow-loopback-peers = true");
    let mut control = Client::new(tern.addr);
    let relayed = control.allocate_tcp();

    // No permission yet: the peer connection is closed and the client hears nothing.
    let mut refused = connect(relayed);
    assert!(closed_within(&mut refused, Duration::from_secs(5)));

    control.create_permission("127.0.0.1:1".parse().unwrap());
    let mut peer = connect(relayed);
    let indication = read_frame(&mut control.turn.stream).unwrap();
    let msg = Message::parse(&indication).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, Method::CONNECTION_ATTEMPT)
    );
    let announced = stun::decode_xor_address(
        msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap();
    assert_eq!(announced, peer.local_addr().unwrap());
    let id = msg.get_u32(attr::CONNECTION_ID).unwrap();

    // The peer may speak first: its bytes wait for the bind.
    peer.write_all(b"early bytes from the peer").unwrap();
    let mut data = control.data_connection(tern.addr, id).unwrap();
    let mut buf = [0u8; 25];
    data.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"early bytes from the peer");
    data.write_all(b"and back").unwrap();
    let mut buf = [0u8; 8];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"and back");

    // The peer closing closes the data connection, and the control connection goes on.
    drop(peer);
    assert!(closed_within(&mut data, Duration::from_secs(5)));
    let response = control.request(Method::REFRESH, |_| {});
    assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
}

#[test]
fn tcp_allocations_refuse_channels_and_udp_allocations_refuse_connect() {
    let tern = Tern::start("allow-loopback-peers = true");
    let mut control = Client::new(tern.addr);
    control.allocate_tcp();
    let response = control.request(Method::CHANNEL_BIND, |w| {
        w.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:9".parse().unwrap());
    });
    assert_eq!(
        Message::parse(&response).unwrap().error_code().map(|e| e.0),
        Some(400)
    );

    let mut udp = Client::new(tern.addr);
    let response = udp.request(Method::ALLOCATE, |w| {
        w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
    assert_eq!(udp.connect_peer("127.0.0.1:9".parse().unwrap()), Err(400));
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// The value of a sample with labels, as Prometheus text prints it (0 when absent).
fn labelled(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[test]
fn peer_connections_count_against_max_connections() {
    // Before, peer connections ignored max-connections: with 8 allowed, 512 were opened.
    let tern = Tern::start("allow-loopback-peers = true\nmax-connections = 4");
    let mut control = Client::new(tern.addr);
    let relayed = control.allocate_tcp();
    let peers: Vec<SocketAddr> = (0..4).map(|_| echo_peer().0).collect();
    // The control connection holds one slot, each peer connection one more.
    for peer in &peers[..3] {
        control.connect_peer(*peer).unwrap();
    }
    assert_eq!(
        control.connect_peer(peers[3]),
        Err(447),
        "a 4th peer connection"
    );
    // A peer connecting in is closed, and the client hears nothing of it.
    control.create_permission("127.0.0.1:1".parse().unwrap());
    let mut inbound = connect(relayed);
    assert!(closed_within(&mut inbound, Duration::from_secs(5)));
    // Nor is there room for another client.
    let mut client = connect(tern.addr);
    assert!(closed_within(&mut client, Duration::from_secs(5)));
    let metrics = common::http("GET", &tern.url("/metrics"), None, None).body;
    let refused = |name: &str| {
        labelled(
            &metrics,
            &format!("{name}_total{{reason=\"max_connections\"}}"),
        )
    };
    assert_eq!(refused("tern_tcp_peer_connections_refused"), 2, "{metrics}");
    assert_eq!(refused("tern_stream_refused"), 1, "{metrics}");
    assert_eq!(metric(&metrics, "tern_stream_admitted"), 4, "{metrics}");
    // Control still works; when the allocation ends its peer connections give their slots back.
    let response = control.request(Method::REFRESH, |_| {});
    assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
    drop(control);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = common::http("GET", &tern.url("/metrics"), None, None).body;
        if metric(&metrics, "tern_stream_admitted") == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut again = Client::new(tern.addr);
    again.allocate_tcp();
}

#[test]
fn spliced_bytes_pass_max_bps_both_ways_and_count_as_relayed() {
    const RATE: u64 = 50_000;
    const SIZE: usize = 200_000;
    let tern = Tern::start(&format!("allow-loopback-peers = true\nmax-bps = {RATE}"));
    let from_client: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let from_peer: Vec<u8> = (0..SIZE).map(|i| (i % 241) as u8).collect();
    // A TCP peer that, once told to, sends 200 KB and reads 200 KB at the same time; what it
    // read, and how long that took.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = listener.local_addr().unwrap();
    let (go, started) = std::sync::mpsc::channel::<std::time::Instant>();
    let peer_side = {
        let from_peer = from_peer.clone();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let start = started.recv().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let sending = std::thread::spawn(move || writer.write_all(&from_peer));
            let mut heard = vec![0u8; SIZE];
            stream.read_exact(&mut heard).unwrap();
            let took = start.elapsed();
            sending.join().unwrap().unwrap();
            (heard, took)
        })
    };
    let mut control = Client::new(tern.addr);
    control.allocate_tcp();
    let id = control.connect_peer(peer).unwrap();
    let mut data = control.data_connection(tern.addr, id).unwrap();
    data.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    // Both ways at once, as fast as either side writes: each way has its own bucket, so each
    // takes a 64 KiB burst and then 50 KB/s, about 2.7 s; tern reads no faster, nothing is lost.
    let start = std::time::Instant::now();
    go.send(start).unwrap();
    let mut writer = data.try_clone().unwrap();
    let sending = {
        let from_client = from_client.clone();
        std::thread::spawn(move || writer.write_all(&from_client))
    };
    let mut heard = vec![0u8; SIZE];
    data.read_exact(&mut heard).unwrap();
    let took = start.elapsed();
    sending.join().unwrap().unwrap();
    let (peer_heard, peer_took) = peer_side.join().unwrap();
    assert!(heard == from_peer, "the client got the peer's bytes");
    assert!(peer_heard == from_client, "the peer got the client's bytes");
    for (way, took) in [("to the client", took), ("to the peer", peer_took)] {
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(30)).contains(&took),
            "200 KB {way} at 50 KB/s after a 64 KiB burst took {took:?}"
        );
    }
    // Relayed traffic in /metrics (a read is a packet), and the pauses both ways.
    let relayed = |m: &str, what: &str, direction: &str| {
        common::sample(
            m,
            &format!("tern_relayed_{what}_total{{direction=\"{direction}\"}}"),
        )
    };
    let metrics = common::scrape_until(&tern, "the spliced bytes counted", |m| {
        relayed(m, "bytes", "to_peer") == SIZE as u64
            && relayed(m, "bytes", "to_client") == SIZE as u64
    });
    assert!(relayed(&metrics, "packets", "to_peer") > 0, "{metrics}");
    assert!(relayed(&metrics, "packets", "to_client") > 0, "{metrics}");
    for direction in ["to_peer", "to_client"] {
        let paused =
            format!("tern_bandwidth_paused_total{{direction=\"{direction}\",limit=\"max-bps\"}}");
        assert!(common::sample(&metrics, &paused) > 0, "{metrics}");
    }
}

/// A TCP peer that accepts one connection and reports what reaches it: each read, then `None`
/// when the connection ends.
fn recording_peer() -> (SocketAddr, std::sync::mpsc::Receiver<Option<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (heard, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = heard.send(Some(buf[..n].to_vec()));
                }
            }
        }
        let _ = heard.send(None);
    });
    (addr, receiver)
}

#[test]
fn a_reload_that_denies_the_peer_cuts_its_peer_connections() {
    let tern = Tern::start("allow-loopback-peers = true\nlog-level = \"info\"");
    let (spliced_peer, spliced_heard) = recording_peer();
    let (pending_peer, pending_heard) = recording_peer();
    let mut control = Client::new(tern.addr);
    control.allocate_tcp();
    let id = control.connect_peer(spliced_peer).unwrap();
    let mut data = control.data_connection(tern.addr, id).unwrap();
    data.write_all(b"before").unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(
        spliced_heard.recv_timeout(wait).unwrap(),
        Some(b"before".to_vec())
    );
    // Another peer connection waits for its ConnectionBind.
    let pending_id = control.connect_peer(pending_peer).unwrap();

    // The operator stops allowing loopback peers (an operator's denied-peer-ip does not
    // override allow-loopback-peers for loopback addresses).
    common::reload_with(&tern, |text| {
        text.replace(
            "allow-loopback-peers = true",
            "allow-loopback-peers = false",
        )
    });
    // Both peer connections are closed: the peers see their end, the client its data
    // connection closed, and nothing more reaches the peer.
    assert_eq!(spliced_heard.recv_timeout(wait).unwrap(), None);
    assert_eq!(pending_heard.recv_timeout(wait).unwrap(), None);
    assert!(closed_within(&mut data, wait));
    let _ = data.write_all(b"after");
    assert!(spliced_heard
        .recv_timeout(Duration::from_millis(300))
        .is_err());
    let revoked = "tern_reload_revocations_total{kind=\"tcp_peer_connection\"}";
    common::scrape_until(&tern, "the peer connections revoked", |m| {
        common::sample(m, revoked) == 2
    });
    // The pending one can no longer be bound; the allocation lives on, and a new Connect to
    // the peer is refused by the policy now in force.
    assert_eq!(
        control.data_connection(tern.addr, pending_id).err(),
        Some(400)
    );
    let response = control.request(Method::REFRESH, |_| {});
    assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
    assert_eq!(control.connect_peer(spliced_peer), Err(403));
}
