//! Limits through real sockets against the real binary: one client filling every
//! per-allocation and per-client limit gets the RFC codes while another client's Binding keeps
//! answering; the default quotas leave most of the port pool to others; max-bps and
//! bps-capacity drop UDP past the rate both ways, and slow TCP clients down without dropping
//! (tern stops reading); and memory follows live allocations, not the allocations ever made.

mod common;

use common::stream_client::{tcp_client, udp_client, Datagrams, StreamTurn};
use common::{rss_kib, sample, scrape_until, Tern};
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern::stun::{attr, Class, Message, Method};

/// The error code of a response, `None` for a success.
fn code(response: &[u8]) -> Option<u16> {
    Message::parse(response)
        .unwrap()
        .error_code()
        .map(|(c, _)| c)
}

fn create_permission(turn: &mut StreamTurn<Datagrams>, peers: &[SocketAddr]) -> Option<u16> {
    let response = turn
        .exchange(Method::CREATE_PERMISSION, |w| {
            for peer in peers {
                w.add_xor_address(attr::XOR_PEER_ADDRESS, *peer);
            }
        })
        .unwrap();
    code(&response)
}

fn channel_bind(turn: &mut StreamTurn<Datagrams>, number: u16, peer: SocketAddr) -> Option<u16> {
    turn.channel_bind(number, peer).err()
}

/// Public-looking peers 203.0.114.x:5000 (never sent anything: permissions only).
fn peer(i: usize) -> SocketAddr {
    SocketAddr::from(([203, 0, 114 + (i / 250) as u8, 1 + (i % 250) as u8], 5000))
}

/// Measures Binding round trips from another client until `stop`; the slowest one.
fn watch_bindings(server: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let request = common::binding_request();
        let mut slowest = Duration::ZERO;
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            socket.send_to(&request, server).unwrap();
            socket
                .recv_from(&mut buf)
                .expect("the other client's Binding is answered");
            slowest = slowest.max(sent.elapsed());
            // 50 a second: within unauthenticated-rate-limit.
            std::thread::sleep(Duration::from_millis(20));
        }
        slowest
    })
}

#[test]
fn a_client_filling_every_limit_gets_the_codes_and_slows_no_one() {
    // One relay thread: the filler and the watcher share it, so a stall would show.
    let tern = Tern::start(
        "relay-threads = 1\nlog-level = \"info\"\nuser-quota = 2\nmax-allocations-per-ip = 3\n",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_bindings(tern.addr, stop.clone());

    let mut filler = udp_client("127.0.0.1:0", tern.addr, "filler");
    filler.allocate().unwrap();
    // Peers per request: 16 pass, 17 are refused.
    assert_eq!(
        create_permission(&mut filler, &(0..17).map(peer).collect::<Vec<_>>()),
        Some(508)
    );
    for batch in 0..4 {
        let peers: Vec<_> = (batch * 16..batch * 16 + 16).map(peer).collect();
        assert_eq!(
            create_permission(&mut filler, &peers),
            None,
            "batch {batch}"
        );
    }
    // 64 permissions: the 65th peer is refused, a known one refreshed.
    assert_eq!(create_permission(&mut filler, &[peer(64)]), Some(508));
    assert_eq!(create_permission(&mut filler, &[peer(0)]), None);
    // 64 channels (to permitted peers): the 65th is refused.
    for i in 0..64 {
        assert_eq!(channel_bind(&mut filler, 0x4000 + i as u16, peer(i)), None);
    }
    let mut other_port = peer(0);
    other_port.set_port(5001);
    assert_eq!(channel_bind(&mut filler, 0x4040, other_port), Some(508));

    // A flood of CreatePermission requests, each as big as a datagram gets (about 5000
    // XOR-PEER-ADDRESS): each is refused after counting, never scanned peer by peer.
    let flood: Vec<SocketAddr> = (0..5000).map(peer).collect();
    for _ in 0..60 {
        assert_eq!(create_permission(&mut filler, &flood), Some(508));
    }

    // Allocations: user-quota 2 for the filler, then max-allocations-per-ip 3 for the address.
    let mut second = udp_client("127.0.0.1:0", tern.addr, "filler");
    second.allocate().unwrap();
    let mut third = udp_client("127.0.0.1:0", tern.addr, "filler");
    assert_eq!(third.allocate().err(), Some(486));
    let mut stranger = udp_client("127.0.0.1:0", tern.addr, "stranger");
    stranger.allocate().unwrap();
    let mut crowd = udp_client("127.0.0.1:0", tern.addr, "crowd");
    assert_eq!(crowd.allocate().err(), Some(486));
    // Another address is not that address.
    let mut elsewhere = udp_client("127.0.0.3:0", tern.addr, "elsewhere");
    elsewhere.allocate().unwrap();

    stop.store(true, Ordering::Relaxed);
    let slowest = watcher.join().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "another client's Binding took {slowest:?}"
    );
    let metrics = scrape_until(&tern, "every refusal counted", |m| {
        sample(
            m,
            "tern_limit_refusals_total{limit=\"max-peers-per-request\"}",
        ) == 61
    });
    for (limit, count) in [
        ("max-permissions", 1),
        ("max-channels", 1),
        ("user-quota", 1),
        ("max-allocations-per-ip", 1),
    ] {
        let series = format!("tern_limit_refusals_total{{limit=\"{limit}\"}}");
        assert_eq!(sample(&metrics, &series), count, "{series}\n{metrics}");
    }
}

/// Allocations from fresh source ports of one address by one user, until refused.
fn allocate_until_refused(
    tern: &Tern,
    user: &str,
    local: &str,
) -> (Vec<StreamTurn<Datagrams>>, u16) {
    let mut held = Vec::new();
    loop {
        let mut client = udp_client(local, tern.addr, user);
        match client.allocate() {
            Ok(_) => held.push(client),
            Err(code) => return (held, code),
        }
        assert!(held.len() <= 100, "never refused");
    }
}

#[test]
fn by_default_one_user_or_address_holds_a_quarter_of_the_ports() {
    // The harness gives each tern a 100-port relay range.
    let tern = Tern::start("");
    let (held, code) = allocate_until_refused(&tern, "greedy", "127.0.0.1:0");
    assert_eq!(
        (held.len(), code),
        (25, 486),
        "user-quota = 25% of 100 ports"
    );
    // The same address under other users: the address is full too.
    let (more, code) = allocate_until_refused(&tern, "greedy-too", "127.0.0.1:0");
    assert_eq!((more.len(), code), (0, 486), "max-allocations-per-ip = 25%");
    // Someone else still gets a relay.
    let mut other = udp_client("127.0.0.2:0", tern.addr, "someone");
    other.allocate().unwrap();
    let metrics = scrape_until(&tern, "refusals counted", |m| {
        sample(
            m,
            "tern_limit_refusals_total{limit=\"max-allocations-per-ip\"}",
        ) == 1
    });
    assert_eq!(
        sample(&metrics, "tern_limit_refusals_total{limit=\"user-quota\"}"),
        1
    );
    assert_eq!(sample(&metrics, "tern_relay_ports_free"), 100 - 26);
}

/// Binds a channel to `peer` for the client; the relayed address.
fn allocate_with_channel(client: &mut StreamTurn<Datagrams>, peer: SocketAddr) -> SocketAddr {
    let relayed = client.allocate().unwrap();
    client.channel_bind(0x4000, peer).unwrap();
    relayed
}

fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x40, 0x00];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Sends `count` datagrams of 1000 bytes with `send`, a little apart, while a thread counts
/// what arrives on `receiver` (so no socket buffer decides what is counted); how many arrived,
/// and how long from the first send until the last arrival (or the end of sending).
fn offer(count: usize, receiver: &UdpSocket, mut send: impl FnMut(&[u8])) -> (usize, Duration) {
    let receiver = receiver.try_clone().unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let counter = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let (mut arrived, mut last) = (0, Duration::ZERO);
            loop {
                match receiver.recv(&mut buf) {
                    Ok(_) => {
                        arrived += 1;
                        last = start.elapsed();
                    }
                    Err(_) if done.load(Ordering::Relaxed) => return (arrived, last),
                    Err(_) => {}
                }
            }
        })
    };
    let payload = [7u8; 1000];
    for i in 0..count {
        send(&payload);
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let sent = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let (arrived, last) = counter.join().unwrap();
    (arrived, sent.max(last))
}

/// At most what a bucket of `rate` bytes per second (burst max(rate, 64 KiB)) lets through in
/// `elapsed`, in 1000-byte datagrams, with slack for timing.
fn bound(rate: u64, elapsed: Duration) -> usize {
    let bytes = rate.max(65_536) as f64 + rate as f64 * (elapsed.as_secs_f64() + 0.2);
    (bytes / 1000.0) as usize + 5
}

#[test]
fn max_bps_drops_udp_past_the_rate_both_ways() {
    const RATE: u64 = 20_000;
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\nmax-bps = {RATE}\nlog-level = \"info\""
    ));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut client = udp_client("127.0.0.1:0", tern.addr, "streamer");
    let relayed = allocate_with_channel(&mut client, peer.local_addr().unwrap());
    let socket = client.stream.socket.try_clone().unwrap();

    // Client to peer: 400 KB offered.
    let (reached, elapsed) = offer(400, &peer, |payload| {
        socket.send(&channel_data(payload)).unwrap();
    });
    assert!(
        (20..=bound(RATE, elapsed)).contains(&reached),
        "{reached} of 400 datagrams reached the peer in {elapsed:?}"
    );
    // Peer to client: its own bucket.
    let (delivered, elapsed) = offer(400, &socket, |payload| {
        peer.send_to(payload, relayed).unwrap();
    });
    assert!(
        (20..=bound(RATE, elapsed)).contains(&delivered),
        "{delivered} of 400 datagrams reached the client in {elapsed:?}"
    );
    let metrics = scrape_until(&tern, "drops counted", |m| {
        sample(
            m,
            "tern_bandwidth_dropped_packets_total{direction=\"to_client\",limit=\"max-bps\"}",
        ) as usize
            == 400 - delivered
    });
    let to_peer = "tern_bandwidth_dropped_packets_total{direction=\"to_peer\",limit=\"max-bps\"}";
    assert_eq!(
        sample(&metrics, to_peer) as usize,
        400 - reached,
        "{metrics}"
    );
}

#[test]
fn bps_capacity_caps_the_server_over_all_allocations() {
    const CAPACITY: u64 = 30_000;
    // One relay thread, which then has the whole capacity.
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\nbps-capacity = {CAPACITY}\nrelay-threads = 1\nlog-level = \"info\""
    ));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut first = udp_client("127.0.0.1:0", tern.addr, "one");
    let mut second = udp_client("127.0.0.1:0", tern.addr, "two");
    allocate_with_channel(&mut first, peer_addr);
    allocate_with_channel(&mut second, peer_addr);
    let (a, b) = (
        first.stream.socket.try_clone().unwrap(),
        second.stream.socket.try_clone().unwrap(),
    );
    // Each alone would be within any per-allocation limit (there is none); together they are
    // twice the capacity's burst.
    let (reached, elapsed) = offer(200, &peer, |payload| {
        a.send(&channel_data(payload)).unwrap();
        b.send(&channel_data(payload)).unwrap();
    });
    assert!(
        (20..=bound(CAPACITY, elapsed)).contains(&reached),
        "{reached} of 400 datagrams reached the peer in {elapsed:?}"
    );
    let series =
        "tern_bandwidth_dropped_packets_total{direction=\"to_peer\",limit=\"bps-capacity\"}";
    scrape_until(&tern, "capacity drops counted", |m| {
        sample(m, series) as usize == 400 - reached
    });
}

/// Counts the datagrams that reach `peer` until `expected` came or none for 3 s: how many, and
/// when the last came after `start`.
fn arrivals(
    peer: &UdpSocket,
    expected: usize,
    start: Instant,
) -> std::thread::JoinHandle<(usize, Duration)> {
    let peer = peer.try_clone().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut arrived, mut last) = (0, Duration::ZERO);
        while arrived < expected && peer.recv(&mut buf).is_ok() {
            arrived += 1;
            last = start.elapsed();
        }
        (arrived, last)
    })
}

/// `count` ChannelData frames of 1000 bytes on channel 0x4000 (a multiple of 4: no padding on a
/// stream).
fn frames(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|_| channel_data(&[7u8; 1000]))
        .collect()
}

#[test]
fn max_bps_slows_a_tcp_client_down_without_dropping_while_udp_drops() {
    const RATE: u64 = 50_000;
    const FRAMES: usize = 200;
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\nmax-bps = {RATE}\nlog-level = \"info\""
    ));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut tcp = tcp_client(tern.addr, "tcp-streamer");
    tcp.allocate().unwrap();
    tcp.channel_bind(0x4000, peer_addr).unwrap();

    // 200 KB as fast as the client can write: a burst (64 KiB) passes at once, the rest at
    // 50 KB/s, about 2.7 s. tern stops reading meanwhile, so the writes wait; none is lost.
    let start = Instant::now();
    let counter = arrivals(&peer, FRAMES, start);
    tcp.stream.write_all(&frames(FRAMES)).unwrap();
    let (arrived, last) = counter.join().unwrap();
    assert_eq!(arrived, FRAMES, "every frame relayed, in {last:?}");
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(30)).contains(&last),
        "200 KB at 50 KB/s after a 64 KiB burst took {last:?}"
    );
    let paused = "tern_bandwidth_paused_total{direction=\"to_peer\",limit=\"max-bps\"}";
    let dropped = "tern_bandwidth_dropped_packets_total{direction=\"to_peer\",limit=\"max-bps\"}";
    let metrics = scrape_until(&tern, "the TCP frames counted", |m| {
        sample(m, "tern_relayed_packets_total{direction=\"to_peer\"}") == FRAMES as u64
    });
    assert!(sample(&metrics, paused) > 0, "{metrics}");
    assert_eq!(sample(&metrics, dropped), 0, "{metrics}");

    // A UDP client over the same limit cannot be paused: its datagrams past it are dropped.
    let mut udp = udp_client("127.0.0.1:0", tern.addr, "udp-streamer");
    allocate_with_channel(&mut udp, peer_addr);
    let socket = udp.stream.socket.try_clone().unwrap();
    let (reached, elapsed) = offer(FRAMES, &peer, |payload| {
        socket.send(&channel_data(payload)).unwrap();
    });
    assert!(
        (20..=bound(RATE, elapsed)).contains(&reached),
        "{reached} of {FRAMES} datagrams reached the peer in {elapsed:?}"
    );
    scrape_until(&tern, "the UDP drops counted", |m| {
        sample(m, dropped) as usize == FRAMES - reached
    });
}

#[test]
fn bps_capacity_gives_tcp_clients_one_share_together_and_drops_nothing() {
    const CAPACITY: u64 = 100_000;
    const FRAMES: usize = 100;
    // One relay thread: two shares, the thread's and the TCP/TLS connections' (50 KB/s).
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\nbps-capacity = {CAPACITY}\nrelay-threads = 1\nlog-level = \"info\""
    ));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let clients: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|user| {
            let mut client = tcp_client(tern.addr, user);
            client.allocate().unwrap();
            client.channel_bind(0x4000, peer_addr).unwrap();
            client
        })
        .collect();
    // 100 KB each at once, 200 KB together: a 64 KiB burst, then 50 KB/s for both, about 2.7 s
    // (the whole capacity would take 1 s, a share per connection less still).
    let start = Instant::now();
    let counter = arrivals(&peer, 2 * FRAMES, start);
    let writers: Vec<_> = clients
        .into_iter()
        .map(|mut client| std::thread::spawn(move || client.stream.write_all(&frames(FRAMES))))
        .collect();
    for writer in writers {
        writer.join().unwrap().unwrap();
    }
    let (arrived, last) = counter.join().unwrap();
    assert_eq!(arrived, 2 * FRAMES, "every frame relayed, in {last:?}");
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(30)).contains(&last),
        "200 KB at 50 KB/s after a 64 KiB burst took {last:?}"
    );
    let paused = "tern_bandwidth_paused_total{direction=\"to_peer\",limit=\"bps-capacity\"}";
    let metrics = scrape_until(&tern, "pauses counted", |m| sample(m, paused) > 0);
    let dropped =
        "tern_bandwidth_dropped_packets_total{direction=\"to_peer\",limit=\"bps-capacity\"}";
    assert_eq!(sample(&metrics, dropped), 0, "{metrics}");
}

/// One allocation's life from a fresh source port: Allocate (after its 401), a permission, and
/// Refresh with lifetime 0.
fn allocate_and_delete(server: SocketAddr) {
    let mut client = udp_client("127.0.0.1:0", server, "churn");
    client.allocate().unwrap();
    client.create_permission(peer(1)).unwrap();
    let response = client
        .exchange(Method::REFRESH, |w| {
            w.add_u32(attr::LIFETIME, 0);
        })
        .unwrap();
    assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
}

#[test]
fn memory_follows_live_allocations_not_those_ever_made() {
    const ROUNDS: usize = 30;
    const PER_ROUND: usize = 800;
    const THREADS: usize = 8;
    let tern = Tern::start(
        "relay-threads = 1\nlog-level = \"warn\"\nuser-quota = 0\nmax-allocations-per-ip = 0\n\
         unauthenticated-rate-limit = 0\n",
    );
    let server = tern.addr;
    let round = || {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..PER_ROUND / THREADS {
                        allocate_and_delete(server);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
    };
    round();
    std::thread::sleep(Duration::from_millis(200));
    let after_first = rss_kib(tern.pid());
    let mut readings = vec![after_first];
    for _ in 1..ROUNDS {
        round();
        readings.push(rss_kib(tern.pid()));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after_last = rss_kib(tern.pid());
    eprintln!("RSS after each round, KiB: {readings:?}; at the end {after_last}");
    // Every allocation ever made would leave ~100 bytes here (two timer entries in a heap that
    // grows by doubling): 24 000 of them about 2 MiB. Live state is back where it started.
    assert!(
        after_last <= after_first + 1024,
        "RSS grew from {after_first} KiB to {after_last} KiB over {} allocations: {readings:?}",
        ROUNDS * PER_ROUND
    );
    let metrics = scrape_until(&tern, "all allocations gone", |m| {
        sample(m, "tern_allocations{transport=\"udp\"}") == 0
    });
    assert_eq!(
        sample(&metrics, "tern_allocations_deleted_total") as usize,
        ROUNDS * PER_ROUND
    );
    assert_eq!(sample(&metrics, "tern_relay_ports_free"), 100);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", tern.pid()))
        .unwrap()
        .count();
    assert!(fds < 64, "{fds} file descriptors open");
}
