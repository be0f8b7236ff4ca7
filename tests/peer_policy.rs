//! The peer policy through real sockets: tern never relays into its own host (its listeners, its
//! HTTP port, a service on 0.0.0.0) while relay to relay on the same tern still works over UDP
//! and RFC 6062; every spelling of a denied address is refused on every path (CreatePermission,
//! ChannelBind, Send, ChannelData, Connect) from UDP and TCP clients, with sentinels on 127.0.0.1
//! and ::1 receiving nothing; and a reload reaches live state (a newly denied peer loses its
//! channel; a removed secret's allocation is refused at Refresh).

mod common;

use common::stream_client::{read_frame, tcp_client, udp_client, Datagrams, StreamTurn};
use common::{reload_with, sample, scrape_until, tools, Tern, SECRET};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tern::stun::{self, attr, Class, Message, Method};

fn code(response: &[u8]) -> Option<u16> {
    Message::parse(response)
        .unwrap()
        .error_code()
        .map(|(c, _)| c)
}

/// A UDP socket bound to `bind` that counts what reaches it (for 60 s).
fn udp_sentinel(bind: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind(bind).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            if socket.recv_from(&mut buf).is_ok() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (local, count)
}

/// A TCP listener on `bind` that counts the connections it accepts.
fn tcp_sentinel(bind: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(bind).unwrap();
    let local = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stream.is_ok() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (local, count)
}

fn channel_data(number: u16, payload: &[u8], padded: bool) -> Vec<u8> {
    let mut frame = number.to_be_bytes().to_vec();
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    while padded && frame.len() % 4 != 0 {
        frame.push(0);
    }
    frame
}

/// Allocates a relay of `family` (1 IPv4, 2 IPv6) and `transport` (17 UDP, 6 TCP); its address.
fn allocate<S: Read + Write>(turn: &mut StreamTurn<S>, family: u8, transport: u8) -> SocketAddr {
    let response = turn
        .request(Method::ALLOCATE, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[transport, 0, 0, 0]);
            w.add_bytes(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0]);
        })
        .unwrap_or_else(|code| panic!("allocate family {family} transport {transport}: {code}"));
    let msg = Message::parse(&response).unwrap();
    stun::decode_xor_address(
        msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap()
}

fn create_permission<S: Read + Write>(turn: &mut StreamTurn<S>, peer: SocketAddr) -> Option<u16> {
    turn.create_permission(peer).err()
}

fn connect<S: Read + Write>(turn: &mut StreamTurn<S>, peer: SocketAddr) -> Result<u32, u16> {
    let response = turn
        .exchange(Method::CONNECT, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .unwrap();
    let msg = Message::parse(&response).unwrap();
    match msg.error_code() {
        Some((code, _)) => Err(code),
        None => Ok(msg.get_u32(attr::CONNECTION_ID).unwrap()),
    }
}

/// Waits for a datagram on a client socket; `None` if none comes within 300 ms.
fn receive(socket: &UdpSocket) -> Option<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let len = socket.recv(&mut buf).ok()?;
    Some(buf[..len].to_vec())
}

#[test]
fn tern_never_relays_into_its_own_host_but_relays_between_its_allocations() {
    // The operator allows loopback peers as a range (as one might allow 10.0.0.0/8 on a host at
    // 10.0.0.5): that does not open tern's own host.
    let tern = Tern::start("allowed-peer-ip = [\"127.0.0.0/8\"]\nlog-level = \"info\"");
    let http = tern.http.unwrap();
    let (sentinel, reached) = udp_sentinel("0.0.0.0:0");
    let sentinel = SocketAddr::new("127.0.0.1".parse().unwrap(), sentinel.port());

    let mut client = udp_client("127.0.0.1:0", tern.addr, "prober");
    client.allocate().unwrap();
    let socket = client.stream.socket.try_clone().unwrap();
    // A permission is per IP: installing one for the host's address is fine...
    assert_eq!(create_permission(&mut client, sentinel), None);
    // ...but no port of the host outside the relay range is reachable.
    for target in [sentinel, tern.addr, http] {
        assert_eq!(client.channel_bind(0x4000, target), Err(403), "{target}");
        // A Binding request sent to tern's own listener would draw an answer back.
        client.send(target, &common::binding_request()).unwrap();
    }
    client
        .stream
        .socket
        .send(&channel_data(0x4000, b"x", false))
        .unwrap();
    assert_eq!(
        receive(&socket),
        None,
        "nothing came back through the relay"
    );
    // Over RFC 6062: Connect to the HTTP port (whose /metrics a client could read).
    let mut tcp = tcp_client(tern.addr, "prober-tcp");
    allocate(&mut tcp, 1, 6);
    assert_eq!(connect(&mut tcp, http), Err(403));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        reached.load(Ordering::Relaxed),
        0,
        "the host's service heard nothing"
    );

    // Relay to relay on the same tern (two browsers in one call): UDP...
    let mut alice = udp_client("127.0.0.1:0", tern.addr, "alice");
    let mut bob = udp_client("127.0.0.1:0", tern.addr, "bob");
    let alice_relay = alice.allocate().unwrap();
    let bob_relay = bob.allocate().unwrap();
    alice.create_permission(bob_relay).unwrap();
    bob.channel_bind(0x4000, alice_relay).unwrap();
    let bob_socket = bob.stream.socket.try_clone().unwrap();
    bob_socket
        .send(&channel_data(0x4000, b"hello alice", false))
        .unwrap();
    let indication = receive(&alice.stream.socket.try_clone().unwrap()).expect("alice hears bob");
    let msg = Message::parse(&indication).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, Method::DATA)
    );
    assert_eq!(msg.get(attr::DATA), Some(&b"hello alice"[..]));
    alice.send(bob_relay, b"hello bob").unwrap();
    let framed = receive(&bob_socket).expect("bob hears alice, on his channel");
    assert_eq!(framed, channel_data(0x4000, b"hello bob", false));

    // ...and TCP (RFC 6062): bob connects from his TCP relay to alice's.
    let mut alice = tcp_client(tern.addr, "alice-tcp");
    let mut bob = tcp_client(tern.addr, "bob-tcp");
    let alice_relay = allocate(&mut alice, 1, 6);
    let bob_relay = allocate(&mut bob, 1, 6);
    alice.create_permission(bob_relay).unwrap();
    let bob_id = connect(&mut bob, alice_relay).expect("a relay port of its own host is fine");
    let attempt = read_frame(&mut alice.stream).unwrap();
    let msg = Message::parse(&attempt).unwrap();
    assert_eq!(msg.method(), Method::CONNECTION_ATTEMPT);
    let alice_id = msg.get_u32(attr::CONNECTION_ID).unwrap();
    let bind = |turn: &StreamTurn<TcpStream>, id: u32| {
        let stream = TcpStream::connect(tern.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut data = turn.sharing_session(stream);
        let response = data
            .exchange(Method::CONNECTION_BIND, |w| {
                w.add_u32(attr::CONNECTION_ID, id);
            })
            .unwrap();
        assert_eq!(code(&response), None);
        data.stream
    };
    let mut bob_data = bind(&bob, bob_id);
    let mut alice_data = bind(&alice, alice_id);
    bob_data.write_all(b"over tcp relays").unwrap();
    let mut buf = [0u8; 15];
    alice_data.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"over tcp relays");

    let metrics = scrape_until(&tern, "own-address refusals counted", |m| {
        sample(m, "tern_own_address_refusals_total") >= 7
    });
    assert!(
        sample(&metrics, "tern_peers_denied_total") == 0,
        "{metrics}"
    );
}

/// Every spelling of 127.0.0.1 and ::1, block boundaries, cloud metadata and host services.
fn denied_forms(v4_port: u16, v6_port: u16, own: &[SocketAddr]) -> Vec<SocketAddr> {
    let loopback_v4 = [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:0:127.0.0.1",
        "::127.0.0.1",
        "64:ff9b::127.0.0.1",
        "64:ff9b:1::7f00:1",
        "2002:7f00:1::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "127.255.255.255",
    ];
    let others = [
        "0.0.0.0",
        "0.255.255.255",
        "10.0.0.0",
        "10.255.255.255",
        "100.64.0.0",
        "100.127.255.255",
        "169.254.0.0",
        "169.254.255.255",
        "172.16.0.0",
        "172.31.255.255",
        "192.0.0.0",
        "192.0.2.255",
        "192.168.0.0",
        "192.168.255.255",
        "198.18.0.0",
        "198.19.255.255",
        "224.0.0.0",
        "239.255.255.255",
        "240.0.0.0",
        "255.255.255.255",
        "169.254.169.254",
        "168.63.129.16",
        "100.100.100.200",
        "192.0.0.192",
        "::",
        "100::",
        "2001:db8::",
        "fc00::",
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fd00:ec2::254",
        "fd20:ce::254",
        "fe80::1",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:0:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::",
    ];
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    loopback_v4
        .iter()
        .map(|a| SocketAddr::new(ip(a), v4_port))
        .chain(std::iter::once(SocketAddr::new(ip("::1"), v6_port)))
        .chain(others.iter().map(|a| SocketAddr::new(ip(a), v4_port)))
        .chain(own.iter().copied())
        .collect()
}

/// Client transports under test: a UDP relay asked for over UDP and over TCP, by peer family.
struct Prober<S: Read + Write> {
    v4: StreamTurn<S>,
    v6: StreamTurn<S>,
    stream: bool,
}

impl<S: Read + Write> Prober<S> {
    fn for_peer(&mut self, peer: SocketAddr) -> &mut StreamTurn<S> {
        if peer.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    /// CreatePermission and ChannelBind are refused with 403; Send and ChannelData go nowhere.
    fn probe(&mut self, peer: SocketAddr, number: u16) {
        let stream = self.stream;
        let turn = self.for_peer(peer);
        assert_eq!(
            create_permission(turn, peer),
            Some(403),
            "CreatePermission {peer}"
        );
        assert_eq!(
            turn.channel_bind(number, peer),
            Err(403),
            "ChannelBind {peer}"
        );
        turn.send(peer, b"send indication").unwrap();
        turn.stream
            .write_all(&channel_data(number, b"channel data", stream))
            .unwrap();
    }
}

#[test]
fn every_denied_address_form_is_refused_on_every_path() {
    if !tools::ipv6_loopback() {
        return;
    }
    let tern = Tern::start_listening("[\"127.0.0.1\", \"::1\"]", "log-level = \"info\"");
    let (udp4, udp4_heard) = udp_sentinel("127.0.0.1:0");
    let (udp6, udp6_heard) = udp_sentinel("[::1]:0");
    let (tcp4, tcp4_heard) = tcp_sentinel("127.0.0.1:0");
    let (tcp6, tcp6_heard) = tcp_sentinel("[::1]:0");
    let own = [
        tern.addr,
        SocketAddr::new("::1".parse().unwrap(), tern.port),
        tern.http.unwrap(),
    ];
    let datagram_forms = denied_forms(udp4.port(), udp6.port(), &own);
    let mut udp = Prober {
        v4: udp_client("127.0.0.1:0", tern.addr, "udp-prober"),
        v6: udp_client("127.0.0.1:0", tern.addr, "udp-prober"),
        stream: false,
    };
    allocate(&mut udp.v4, 1, 17);
    allocate(&mut udp.v6, 2, 17);
    let mut tcp = Prober {
        v4: tcp_client(tern.addr, "tcp-prober"),
        v6: tcp_client(tern.addr, "tcp-prober"),
        stream: true,
    };
    allocate(&mut tcp.v4, 1, 17);
    allocate(&mut tcp.v6, 2, 17);
    for (i, peer) in datagram_forms.iter().enumerate() {
        udp.probe(*peer, 0x4000 + i as u16);
        tcp.probe(*peer, 0x4000 + i as u16);
    }
    // Connect (RFC 6062), from TCP allocations of each family.
    let mut connect4 = tcp_client(tern.addr, "connector");
    let mut connect6 = tcp_client(tern.addr, "connector");
    allocate(&mut connect4, 1, 6);
    allocate(&mut connect6, 2, 6);
    for peer in denied_forms(tcp4.port(), tcp6.port(), &own) {
        let turn = if peer.is_ipv4() {
            &mut connect4
        } else {
            &mut connect6
        };
        assert_eq!(connect(turn, peer), Err(403), "Connect {peer}");
    }
    std::thread::sleep(Duration::from_millis(500));
    for (sentinel, heard) in [
        ("udp 127.0.0.1", &udp4_heard),
        ("udp ::1", &udp6_heard),
        ("tcp 127.0.0.1", &tcp4_heard),
        ("tcp ::1", &tcp6_heard),
    ] {
        assert_eq!(heard.load(Ordering::Relaxed), 0, "{sentinel} was reached");
    }
    // Every refusal was counted: 2 clients x 2 requests per form, and each Connect.
    let refusals = (4 * datagram_forms.len() + datagram_forms.len()) as u64;
    scrape_until(&tern, "every refusal counted", |m| {
        sample(m, "tern_peers_denied_total") >= refusals
    });

    // An address the operator names is relayed to.
    let allowed = Tern::start("allowed-peer-ip = \"127.0.0.1\"");
    let mut client = udp_client("127.0.0.1:0", allowed.addr, "allowed");
    client.allocate().unwrap();
    assert_eq!(create_permission(&mut client, udp4), None);
    client.send(udp4, b"welcome").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        udp4_heard.load(Ordering::Relaxed),
        1,
        "the allowed address relays"
    );
}

#[test]
fn reload_cuts_a_live_channel_to_a_newly_denied_peer() {
    let tern = Tern::start("allow-loopback-peers = true\nlog-level = \"info\"");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut client = udp_client("127.0.0.1:0", tern.addr, "caller");
    let relayed = client.allocate().unwrap();
    client
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .unwrap();
    let socket = client.stream.socket.try_clone().unwrap();
    socket
        .send(&channel_data(0x4000, b"before", false))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(peer.recv(&mut buf).ok(), Some(6), "the channel relays");

    // The operator stops allowing loopback peers.
    reload_with(&tern, |text| {
        text.replace(
            "allow-loopback-peers = true",
            "allow-loopback-peers = false",
        )
    });
    let metrics = scrape_until(&tern, "the channel revoked", |m| {
        sample(m, "tern_reload_revocations_total{kind=\"channel\"}") == 1
    });
    assert_eq!(
        sample(
            &metrics,
            "tern_reload_revocations_total{kind=\"permission\"}"
        ),
        1
    );
    for _ in 0..5 {
        socket.send(&channel_data(0x4000, b"after", false)).unwrap();
    }
    assert!(
        peer.recv(&mut buf).is_err(),
        "nothing more reaches the peer"
    );
    peer.send_to(b"late", relayed).unwrap();
    assert_eq!(receive(&socket), None, "nor comes back from it");
    // The allocation lives on, and a new channel to the peer is refused.
    assert_eq!(
        client.channel_bind(0x4001, peer.local_addr().unwrap()),
        Err(403)
    );
}

#[test]
fn a_removed_secrets_allocation_is_refused_at_refresh() {
    const ROTATED: &str = "the-secret-about-to-be-removed";
    let port = common::free_port();
    let (min, max) = common::relay_range();
    let toml = format!(
        "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
         static-auth-secret = [\"{SECRET}\", \"{ROTATED}\"]\nrelay-threads = 2\n"
    );
    let tern = Tern::start_with_config(port, &toml);
    let minted = tern::credentials::mint(ROTATED, Some("leaver"), 3600, common::unix_now());
    let mut client = StreamTurn::new(
        Datagrams::connect("127.0.0.1:0", tern.addr),
        &minted.username,
        &minted.password,
        "tern",
    );
    client.allocate().unwrap();
    assert!(client.request(Method::REFRESH, |_| {}).is_ok());

    reload_with(&tern, |text| text.replace(&format!(", \"{ROTATED}\""), ""));
    assert_eq!(client.request(Method::REFRESH, |_| {}).err(), Some(401));
    let metrics = scrape_until(&tern, "the allocation revoked", |m| {
        sample(m, "tern_allocations_revoked_total") == 1
    });
    assert_eq!(sample(&metrics, "tern_allocations{transport=\"udp\"}"), 0);
    // A credential of the remaining secret allocates as before.
    let mut stayer = udp_client("127.0.0.1:0", tern.addr, "stayer");
    stayer.allocate().unwrap();
}
