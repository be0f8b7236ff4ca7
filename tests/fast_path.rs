//! The kernel fast path through the real tern binary, in client, tern and peer namespaces joined
//! by veth pairs (tests/common/fast_path_net.rs), with independent clients: webrtc-rs `turn` for
//! channels, and a client that relays only with Send and Data indications, as Firefox does.
//!
//! What proves the kernel relayed: tern's own threads count nothing (`tern_relayed_*` less the
//! kernel's `tern_fast_path_relayed_*` stays flat) while the kernel's counters rise by exactly
//! what went through, byte for byte. Then: entries go with their permission, channel or allocation
//! (expiry, Refresh 0, admin delete, a reload that denies the peer), after which nothing more
//! reaches the peer; `auto` without the capability falls back with its log line and still
//! relays; a Chromium call between two allocations of this tern stays in the kernel.

mod common;

use common::chromium::{chromium, encode, Browser, Harness};
use common::fast_path_net::*;
use common::stream_client::UdpTurn;
use common::webrtc::turn_client_on;
use common::{unix_now, EchoPeer, Tern, SECRET};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use webrtc_util::Conn;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// Payload sizes of a burst: odd ones test the checksum's byte parity and the padding.
fn sizes(count: usize) -> Vec<usize> {
    (0..count).map(|i| 1 + (i * 37) % 1200).collect()
}

fn payload(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// An echo peer bound in `ns`, for the test's length.
fn echo_peer(ns: &common::netns::Netns, at: SocketAddr) -> EchoPeer {
    EchoPeer::on_socket(FastPathNet::socket(ns, at), Duration::from_secs(120), true)
}

/// A Send/Data client (as Firefox relays) in the client namespace, with a relay of `family`
/// (1 IPv4, 2 IPv6) from tern at `server`.
fn send_data_client(
    net: &FastPathNet,
    local: &str,
    server: SocketAddr,
    family: u8,
) -> (UdpTurn, SocketAddr) {
    let minted = tern::credentials::mint(SECRET, Some("firefox"), 600, unix_now());
    let socket = FastPathNet::socket(&net.client, addr(local, 0));
    let mut client = UdpTurn::on_socket(socket, server, &minted.username, &minted.password);
    let relay = client.allocate_family(family).expect("allocate");
    (client, relay)
}

/// Sends `data` in a Send indication and expects it back from the echo peer in a Data
/// indication, byte for byte.
fn send_and_echo(client: &mut UdpTurn, peer: SocketAddr, data: &[u8], what: &str) {
    client.send(peer, data).unwrap();
    let (from, got) = client
        .receive_data()
        .unwrap_or_else(|e| panic!("{what}: no Data indication back ({e})"));
    assert_eq!(from, peer, "{what}");
    assert_eq!(got, data, "{what}: byte-exact");
}

fn channel_and_echo(client: &mut UdpTurn, channel: u16, data: &[u8], what: &str) {
    client.send_channel_data(channel, data).unwrap();
    let (number, got) = client
        .receive_channel_data()
        .unwrap_or_else(|e| panic!("{what}: no ChannelData back ({e})"));
    assert_eq!(number, channel, "{what}");
    assert_eq!(got, data, "{what}: byte-exact");
}

/// A complete UDP checksum that happens to equal a partial one (once in 65,536 datagrams; the
/// ports here are ephemeral, so it can hit any run) goes to user space, counted under
/// `partial_checksum`: the only datagrams of a burst the kernel may leave to tern.
fn chance_matches(before: &Metrics, after: &Metrics) -> u64 {
    after.passed("partial_checksum") - before.passed("partial_checksum")
}

/// The kernel's and user space's share of a burst: the burst's packets and payload bytes went
/// through the kernel in both directions, and tern's own threads relayed none of them but the
/// chance matches above (counted, at most two).
fn assert_kernel_relayed(before: &Metrics, after: &Metrics, packets: u64, bytes: u64, what: &str) {
    let chance = chance_matches(before, after);
    assert!(
        chance <= 2,
        "{what}: {chance} partial checksums\n{}",
        after.0
    );
    let mut user_total = 0;
    for direction in ["to_peer", "to_client"] {
        let kernel = after.kernel_packets(direction) - before.kernel_packets(direction);
        let kernel_bytes = after.kernel_bytes(direction) - before.kernel_bytes(direction);
        let user = after.user_space_packets(direction) - before.user_space_packets(direction);
        let total_bytes = after.bytes(direction) - before.bytes(direction);
        user_total += user;
        assert_eq!(
            (kernel + user, total_bytes),
            (packets, bytes),
            "{what}, {direction}: (kernel + user-space packets, bytes in tern_relayed_bytes_total)\n{}",
            after.0
        );
        if chance == 0 {
            assert_eq!(kernel_bytes, bytes, "{what}, {direction}: kernel bytes");
        }
    }
    assert_eq!(
        user_total, chance,
        "{what}: packets tern's own threads relayed, other than the chance matches\n{}",
        after.0
    );
}

/// /metrics once every worker has published what happened so far (each does at least every
/// 500 ms).
fn settled(net: &FastPathNet) -> Metrics {
    std::thread::sleep(Duration::from_millis(1100));
    Metrics(net.metrics())
}

/// Settled /metrics after a burst of `packets` each way went through the kernel (or, by chance,
/// to user space: see [`chance_matches`]).
fn metrics_after(net: &FastPathNet, before: &Metrics, packets: u64) -> Metrics {
    let kernel = |m: &Metrics| m.kernel_packets("to_peer") + m.kernel_packets("to_client");
    net.metrics_until("the kernel's counters", |m| {
        kernel(m) + chance_matches(before, m) >= kernel(before) + 2 * packets
    });
    settled(net)
}

/// Sends `data` through webrtc-rs's relay connection and expects the echo back, byte for byte.
async fn echo_through(relay: &impl Conn, peer: SocketAddr, data: &[u8], what: &str) {
    relay.send_to(data, peer).await.expect("send");
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: no echo"))
        .expect("recv");
    assert_eq!(from, peer, "{what}");
    assert_eq!(&buf[..n], data, "{what}: byte-exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_channels_relay_in_the_kernel_byte_exact() {
    if !available() {
        return;
    }
    let net = FastPathNet::new();
    let tern = net.start_tern("", &[]);
    // webrtc-rs asks for no relay family, so its relay is IPv4: an IPv6 client is the cross-family
    // case. The last peer sits behind the clients' interface (one NIC for both).
    let cases = [
        ("IPv4 client", CLIENT_V4, LISTEN_V4, PEER_V4, false),
        (
            "IPv6 client, IPv4 peer",
            CLIENT_V6,
            LISTEN_V6,
            PEER_V4,
            false,
        ),
        (
            "IPv4, peer on the clients' link",
            CLIENT_V4,
            LISTEN_V4,
            NEAR_PEER_V4,
            true,
        ),
    ];
    for (i, (name, client_ip, server_ip, peer_ip, near)) in cases.into_iter().enumerate() {
        let peer_ns = if near { &net.client } else { &net.peer };
        let peer = echo_peer(peer_ns, addr(peer_ip, 5000 + i as u16));
        let socket = FastPathNet::socket(&net.client, addr(client_ip, 0));
        let client = turn_client_on(socket, addr(server_ip, tern.port), "chrome").await;
        let relay = client.allocate().await.expect("allocate");
        // The first exchanges bind the channel and teach the kernel the way to the peer.
        for n in 0..5 {
            echo_through(&relay, peer.addr, &payload(n, 10), name).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = tokio::task::block_in_place(|| settled(&net));
        let burst = sizes(100);
        for (n, size) in burst.iter().enumerate() {
            echo_through(&relay, peer.addr, &payload(n, *size), name).await;
        }
        let after = tokio::task::block_in_place(|| metrics_after(&net, &before, 100));
        let bytes = burst.iter().sum::<usize>() as u64;
        assert_kernel_relayed(&before, &after, 100, bytes, name);
        assert_eq!(
            peer.count(),
            105,
            "{name}: every datagram reached the peer once"
        );
        relay.close().await.ok();
        client.close().await.ok();
    }
    assert!(tern.logs().contains("fast path on"), "{}", tern.logs());
}

#[test]
fn send_and_data_indications_relay_in_the_kernel_in_every_family_combination() {
    if !available() {
        return;
    }
    let net = FastPathNet::new();
    let tern = net.start_tern("", &[]);
    let cases = [
        ("IPv4", CLIENT_V4, LISTEN_V4, 1, PEER_V4),
        ("IPv6", CLIENT_V6, LISTEN_V6, 2, PEER_V6),
        ("IPv4 client, IPv6 relay", CLIENT_V4, LISTEN_V4, 2, PEER_V6),
        ("IPv6 client, IPv4 relay", CLIENT_V6, LISTEN_V6, 1, PEER_V4),
    ];
    for (i, (name, client_ip, server_ip, family, peer_ip)) in cases.into_iter().enumerate() {
        let peer = echo_peer(&net.peer, addr(peer_ip, 6000 + i as u16));
        let server = addr(server_ip, tern.port);
        let (mut client, relay) = send_data_client(&net, client_ip, server, family);
        assert_eq!(relay.is_ipv4(), family == 1, "{name}");
        client.create_permission(peer.addr).expect("permission");
        for n in 0..3 {
            send_and_echo(&mut client, peer.addr, &payload(n, 8), name);
        }
        let before = settled(&net);
        let burst = sizes(60);
        for (n, size) in burst.iter().enumerate() {
            send_and_echo(&mut client, peer.addr, &payload(n, *size), name);
        }
        let after = metrics_after(&net, &before, 60);
        assert_kernel_relayed(
            &before,
            &after,
            60,
            burst.iter().sum::<usize>() as u64,
            name,
        );
        assert_eq!(peer.count(), 63, "{name}");
    }
}

/// ChannelData for the family combinations webrtc-rs cannot ask for (an IPv6 relay).
#[test]
fn channel_data_to_ipv6_relays_in_the_kernel() {
    if !available() {
        return;
    }
    let net = FastPathNet::new();
    let tern = net.start_tern("", &[]);
    let cases = [
        ("IPv6", CLIENT_V6, LISTEN_V6, PEER_V6),
        ("IPv4 client, IPv6 relay", CLIENT_V4, LISTEN_V4, PEER_V6),
    ];
    for (i, (name, client_ip, server_ip, peer_ip)) in cases.into_iter().enumerate() {
        let peer = echo_peer(&net.peer, addr(peer_ip, 7000 + i as u16));
        let (mut client, _) = send_data_client(&net, client_ip, addr(server_ip, tern.port), 2);
        client.channel_bind(0x4000, peer.addr).expect("channel");
        for n in 0..3 {
            channel_and_echo(&mut client, 0x4000, &payload(n, 8), name);
        }
        let before = settled(&net);
        let burst = sizes(60);
        for (n, size) in burst.iter().enumerate() {
            channel_and_echo(&mut client, 0x4000, &payload(n, *size), name);
        }
        let after = metrics_after(&net, &before, 60);
        assert_kernel_relayed(
            &before,
            &after,
            60,
            burst.iter().sum::<usize>() as u64,
            name,
        );
    }
}

/// A client with a channel (0x4000) to one echo peer and a permission for its address, used with
/// Send indications to a second echo peer at that address, whose traffic the kernel carries: the
/// state each removal test starts from. (The channel's peer answers in ChannelData, the other in
/// Data indications.)
struct Relayed {
    client: UdpTurn,
    channel_peer: EchoPeer,
    send_peer: EchoPeer,
    /// When the ChannelBind (and with it the permission) was answered.
    bound_at: Instant,
}

fn relayed(net: &FastPathNet, tern: &Tern, port: u16) -> Relayed {
    let channel_peer = echo_peer(&net.peer, addr(PEER_V4, port));
    let send_peer = echo_peer(&net.peer, addr(PEER_V4, port + 100));
    let (mut client, _) = send_data_client(net, CLIENT_V4, addr(LISTEN_V4, tern.port), 1);
    client
        .channel_bind(0x4000, channel_peer.addr)
        .expect("channel");
    let bound_at = Instant::now();
    channel_and_echo(&mut client, 0x4000, b"first", "warm-up");
    let before = settled(net);
    for n in 0..20 {
        channel_and_echo(&mut client, 0x4000, &payload(n, 100), "through the kernel");
        send_and_echo(
            &mut client,
            send_peer.addr,
            &payload(n, 60),
            "through the kernel",
        );
    }
    let after = metrics_after(net, &before, 40);
    assert_kernel_relayed(&before, &after, 40, 20 * 160, "ChannelData and Send");
    Relayed {
        client,
        channel_peer,
        send_peer,
        bound_at,
    }
}

impl Relayed {
    fn heard(&self) -> usize {
        self.channel_peer.count() + self.send_peer.count()
    }

    /// The client keeps sending (ChannelData and Send) and nothing more reaches the peers.
    fn assert_peer_hears_nothing(&mut self, what: &str) {
        let heard = self.heard();
        for n in 0..10 {
            self.client
                .send_channel_data(0x4000, &payload(n, 50))
                .unwrap();
            self.client
                .send(self.send_peer.addr, &payload(n, 50))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(self.heard(), heard, "{what}: something reached the peer");
    }
}

#[test]
fn expiry_takes_permissions_and_channels_out_of_the_kernel() {
    if !available() {
        return;
    }
    let net = FastPathNet::new();
    // Lifetimes long enough for the burst that shows the kernel relaying on a slow machine.
    let lifetime = Duration::from_secs(8);
    let wait_past = |state: &Relayed| {
        let expired = state.bound_at + lifetime + Duration::from_millis(600);
        std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    };
    // The permission expires first: Send indications and the channel stop together.
    let tern = net.start_tern("permission-lifetime = 8", &[]);
    let mut state = relayed(&net, &tern, 8000);
    assert!(Metrics(net.metrics()).entries() >= 2);
    wait_past(&state);
    net.metrics_until("entries gone", |m| m.entries() == 0);
    state.assert_peer_hears_nothing("after the permission expired");
    drop(tern);

    // The channel expires while its permission lives: ChannelData stops, Send goes on in the
    // kernel.
    let tern = net.start_tern("channel-lifetime = 8", &[]);
    let mut state = relayed(&net, &tern, 8001);
    wait_past(&state);
    net.metrics_until("the channel's entry gone", |m| m.entries() == 1);
    let heard = state.channel_peer.count();
    for n in 0..10 {
        state
            .client
            .send_channel_data(0x4000, &payload(n, 50))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        state.channel_peer.count(),
        heard,
        "ChannelData after the channel expired"
    );
    let before = settled(&net);
    for n in 0..10 {
        send_and_echo(
            &mut state.client,
            state.send_peer.addr,
            &payload(n, 40),
            "permission lives",
        );
    }
    let after = metrics_after(&net, &before, 10);
    assert_kernel_relayed(
        &before,
        &after,
        10,
        400,
        "the permission's Send indications",
    );
}

#[test]
fn deletion_admin_delete_and_a_denying_reload_take_entries_out_of_the_kernel() {
    if !available() {
        return;
    }
    let net = FastPathNet::new();
    let tern = net.start_tern("", &[]);

    // Refresh with lifetime 0.
    let mut state = relayed(&net, &tern, 8100);
    state.client.refresh(0).expect("deleted");
    net.metrics_until("entries gone", |m| m.entries() == 0);
    state.assert_peer_hears_nothing("after Refresh 0");

    // The admin API: it shows the kernel's traffic while the allocation lives, then deletes it.
    let mut state = relayed(&net, &tern, 8101);
    let list = net.http("GET", "/api/v1/admin/allocations").json();
    let allocation = &list["allocations"][0];
    assert_eq!(list["allocations"].as_array().unwrap().len(), 1, "{list}");
    // 1 warm-up + 20 ChannelData of 100 bytes, 20 Send indications of 60: all counted.
    assert!(
        allocation["packets_to_peer"].as_u64() >= Some(41)
            && allocation["bytes_to_peer"].as_u64() >= Some(20 * 160 + 5),
        "the kernel's share shows: {list}"
    );
    let path = format!(
        "/api/v1/admin/allocations/{}",
        allocation["id"].as_str().unwrap()
    );
    assert_eq!(net.http("DELETE", &path).json()["deleted"], 1);
    net.metrics_until("entries gone", |m| m.entries() == 0);
    state.assert_peer_hears_nothing("after the admin delete");

    // A reload that denies the peer (its range no longer allowed): the allocation stays, its
    // permission and channel go.
    let mut state = relayed(&net, &tern, 8102);
    common::reload_with(&tern, |config| config.replace("\"198.51.100.0/24\", ", ""));
    net.metrics_until("entries gone", |m| m.entries() == 0);
    state.assert_peer_hears_nothing("after a reload that denies the peer");
    let list = net.http("GET", "/api/v1/admin/allocations").json();
    assert_eq!(
        list["allocations"].as_array().unwrap().len(),
        1,
        "the allocation lives: {list}"
    );
}

#[test]
fn auto_without_the_capability_falls_back_and_still_relays() {
    if !available() {
        return;
    }
    let net = FastPathNet::new();
    // As an unprivileged container would run it: no CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN or
    // CAP_SYS_ADMIN.
    let launcher = [
        "setpriv",
        "--bounding-set=-bpf,-perfmon,-net_admin,-sys_admin",
        "--inh-caps=-all",
        "--",
    ];
    let mut required = net.launch_tern("fast-path = \"required\"", &launcher);
    let status = required.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let logs = required.wait_log("cannot run", Duration::from_secs(5));
    assert!(
        logs.contains("fast-path = \"required\", but the fast path cannot run")
            && logs.contains("not permitted"),
        "{logs}"
    );
    drop(required);

    let tern = net.start_tern("fast-path = \"auto\"", &launcher);
    let logs = tern.logs();
    assert_eq!(
        logs.matches("fast path off (fast-path = \"auto\")").count(),
        1,
        "one line says why: {logs}"
    );
    assert!(
        logs.contains("not permitted to load BPF programs"),
        "{logs}"
    );
    let peer = echo_peer(&net.peer, addr(PEER_V4, 9000));
    let (mut client, _) = send_data_client(&net, CLIENT_V4, addr(LISTEN_V4, tern.port), 1);
    client.create_permission(peer.addr).expect("permission");
    let before = settled(&net);
    for n in 0..20 {
        send_and_echo(&mut client, peer.addr, &payload(n, 64), "user space relays");
    }
    let after = net.metrics_until("user space's counters", |m| {
        m.packets("to_client") >= before.packets("to_client") + 20
    });
    assert_eq!(after.get("tern_fast_path_active"), 0);
    assert_eq!(after.kernel_packets("to_peer"), 0);
    assert_eq!(
        after.user_space_packets("to_peer") - before.user_space_packets("to_peer"),
        20
    );
}

/// Two relay-only RTCPeerConnections in one Chromium page, its network in the client namespace:
/// the call is between two allocations of this tern (each peer's relay address is the other's),
/// and the kernel relays it from one client to the other without it ever leaving the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chromium_call_between_two_allocations_stays_in_the_kernel() {
    if !available() {
        return;
    }
    let Some(binary) = chromium() else { return };
    let net = FastPathNet::new();
    let tern = net.start_tern("", &[]);
    let listener = net
        .client
        .within(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let mut harness = Harness::start_on(listener).await;
    let minted = tern::credentials::mint(SECRET, Some("browser"), 600, unix_now());
    let url = format!("turn:{LISTEN_V4}:{}?transport=udp", tern.port);
    let page = format!(
        "{}/e2e.html?name=udp&url={}&username={}&credential={}",
        harness.base,
        encode(&url),
        encode(&minted.username),
        encode(&minted.password)
    );
    let before = tokio::task::block_in_place(|| settled(&net));
    let browser = Browser::open_in(Some(net.client.name()), &binary, &page, None);
    let report = harness.next_report("the call").await;
    drop(browser);
    let context = format!("{report:#}\ntern logs:\n{}", tern.logs());
    assert!(report["error"].is_null(), "{context}");
    assert_eq!(report["connected"], true, "{context}");
    assert_eq!(report["bytesReceived"], 1024 * 1024, "{context}");
    assert_eq!(report["byteExact"], true, "{context}");
    assert!(report["framesDecoded"].as_u64() > Some(0), "{context}");
    assert_eq!(report["selectedPair"]["local"], "relay", "{context}");
    assert_eq!(report["selectedPair"]["remote"], "relay", "{context}");
    assert_eq!(
        report["selectedPair"]["localRelayProtocol"], "udp",
        "{context}"
    );
    let after = tokio::task::block_in_place(|| {
        net.metrics_until("the kernel carried the call", |m| {
            m.kernel_bytes("to_peer") - before.kernel_bytes("to_peer") >= 1024 * 1024
        })
    });
    // Each datagram leaves one allocation toward the other and arrives at the other's client:
    // the kernel counts it both ways. Almost all of the call went that way; user space relayed
    // only what came before the kernel knew both ends (ICE's first checks).
    let kernel = after.kernel_packets("to_peer") - before.kernel_packets("to_peer");
    let user = after.user_space_packets("to_peer") - before.user_space_packets("to_peer");
    eprintln!("the call: {kernel} datagrams relayed by the kernel, {user} by tern's threads");
    assert!(
        kernel >= 500 && user * 50 <= kernel,
        "kernel {kernel} packets, user space {user}\n{}",
        after.0
    );
    // Both ways alike, but for chance matches of a partial checksum (see `chance_matches`).
    let to_client = after.kernel_packets("to_client") - before.kernel_packets("to_client");
    assert!(
        to_client.abs_diff(kernel) <= chance_matches(&before, &after),
        "kernel to peer {kernel}, to client {to_client}\n{}",
        after.0
    );
}
