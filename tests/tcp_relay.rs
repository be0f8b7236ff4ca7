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
