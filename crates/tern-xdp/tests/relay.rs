//! The kernel fast path through real sockets in network namespaces (see tests/common/mod.rs):
//! what the peer and the client receive, byte for byte, and what reaches user space instead.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use tern_proto::stun::{self, attr, Class, Message, MessageWriter, Method};
use tern_xdp::{
    AttachMode, AttachPolicy, ClientTuple, Counters, Entry, EntryKind, FastPath, InstallError,
    Loopback, Mode, Settings, Unavailable,
};

const LISTEN_PORT: u16 = 3478;

/// One client/peer family combination, each with its own sockets.
struct Leg {
    name: &'static str,
    client: UdpSocket,
    listener: UdpSocket,
    relay: UdpSocket,
    peer: UdpSocket,
}

impl Leg {
    fn tuple(&self) -> ClientTuple {
        ClientTuple {
            client: self.client.local_addr().unwrap(),
            server: self.listener.local_addr().unwrap(),
        }
    }
    fn relay_addr(&self) -> SocketAddr {
        self.relay.local_addr().unwrap()
    }
    fn peer_addr(&self) -> SocketAddr {
        self.peer.local_addr().unwrap()
    }
    fn listener_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }
    /// Nothing reached tern's user-space sockets.
    fn assert_user_space_silent(&self) {
        assert_silent(&self.listener, &format!("{}: listener", self.name));
        assert_silent(&self.relay, &format!("{}: relay socket", self.name));
    }

    /// Lets the kernel learn how to reach the client and the peer, as the first exchange of
    /// a real allocation does: through a permission taken out again afterwards. The client's
    /// Send reaches user space unless the peer's address is known from an earlier leg; the
    /// peer's answer comes back in the kernel.
    fn learn_hops(&self, fast_path: &mut FastPath) {
        let id = fast_path
            .install_permission(self.tuple(), self.relay_addr(), self.peer_addr().ip())
            .unwrap();
        let send = send_indication(self.peer_addr(), b"hello", false);
        self.client.send_to(&send, self.listener_addr()).unwrap();
        let reached = recv(&self.listener).map(|(got, _)| got == send);
        if reached.is_none() {
            expect_from(&self.peer, self.relay_addr(), self.name);
        }
        self.peer.send_to(b"hello back", self.relay_addr()).unwrap();
        expect_from(&self.client, self.listener_addr(), self.name);
        let learned = fast_path.remove(id).unwrap();
        assert_eq!(learned.to_client_packets, 1, "{}: {learned:?}", self.name);
    }
}

/// The four family combinations; each leg has its own listener port and relay port.
fn legs(topology: &Topology) -> Vec<Leg> {
    let combos = [
        ("v4 client, v4 peer", false, false),
        ("v6 client, v6 peer", true, true),
        ("v4 client, v6 peer", false, true),
        ("v6 client, v4 peer", true, false),
    ];
    combos
        .iter()
        .enumerate()
        .map(|(i, &(name, client_v6, peer_v6))| {
            let i = i as u16;
            let (client_ip, server_ip) = if client_v6 {
                (CLIENT_V6, TERN_CLIENT_SIDE_V6)
            } else {
                (CLIENT_V4, TERN_CLIENT_SIDE_V4)
            };
            let (relay_ip, peer_ip) = if peer_v6 {
                (TERN_PEER_SIDE_V6, PEER_V6)
            } else {
                (TERN_PEER_SIDE_V4, PEER_V4)
            };
            Leg {
                name,
                client: Topology::socket(&topology.client, addr(client_ip, 40000 + i)),
                listener: Topology::socket(&topology.tern, addr(server_ip, LISTEN_PORT + i)),
                relay: Topology::socket(&topology.tern, addr(relay_ip, 49152 + i)),
                peer: Topology::socket(&topology.peer, addr(peer_ip, 50000 + i)),
            }
        })
        .collect()
}

/// Attached to t0 and t1 as the server does it (generically on veth).
fn attach(topology: &Topology) -> FastPath {
    attach_with(topology, &["t0", "t1"], AttachPolicy::Auto)
}

fn attach_with(topology: &Topology, interfaces: &[&str], policy: AttachPolicy) -> FastPath {
    let settings = settings(interfaces, 64, policy);
    Topology::within(&topology.tern, move || {
        FastPath::attach(&settings).expect("fast path attaches")
    })
}

fn settings(interfaces: &[&str], capacity: u32, attach: AttachPolicy) -> Settings {
    Settings {
        interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
        capacity,
        relay_ports: 49152..=65535,
        attach,
    }
}

/// Payloads of awkward sizes: odd lengths test the checksum's byte parity and the padding.
fn payloads() -> Vec<Vec<u8>> {
    [1usize, 2, 3, 5, 64, 333, 1200]
        .iter()
        .map(|&len| (0..len).map(|i| (i * 7 + len) as u8).collect())
        .collect()
}

fn channel_data(channel: u16, payload: &[u8], padding: usize) -> Vec<u8> {
    let mut out = channel.to_be_bytes().to_vec();
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + padding, 0xAA);
    out
}

fn send_indication(peer: SocketAddr, payload: &[u8], fingerprint: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let tid = [7u8; 12];
    let mut writer = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, &tid);
    writer
        .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        .add_bytes(attr::DATA, payload);
    if fingerprint {
        writer.add_fingerprint();
    }
    writer.finish().expect("fits").to_vec()
}

fn expect_from(socket: &UdpSocket, from: SocketAddr, what: &str) -> Vec<u8> {
    let (data, source) = recv(socket).unwrap_or_else(|| panic!("{what}: nothing arrived"));
    assert_eq!(source, from, "{what}: source");
    data
}

fn totals(sizes: impl Iterator<Item = usize> + Clone, to_peer: bool) -> Counters {
    let packets = sizes.clone().count() as u64;
    let bytes = sizes.sum::<usize>() as u64;
    if to_peer {
        Counters {
            to_peer_packets: packets,
            to_peer_bytes: bytes,
            ..Counters::default()
        }
    } else {
        Counters {
            to_client_packets: packets,
            to_client_bytes: bytes,
            ..Counters::default()
        }
    }
}

#[test]
fn channel_data_is_relayed_byte_exact_both_ways_in_all_families() {
    if !can_run() {
        return;
    }
    // Generically (veth's default) and natively (redirects between the two veths).
    for policy in [AttachPolicy::Auto, AttachPolicy::Native] {
        let topology = Topology::new();
        let mut fast_path = attach_with(&topology, &["t0", "t1"], policy);
        let legs = legs(&topology);
        for leg in &legs {
            leg.learn_hops(&mut fast_path);
        }
        let (relayed_before, totals_before) = (fast_path.outcomes().relayed, fast_path.totals());
        for (i, leg) in legs.iter().enumerate() {
            let channel = 0x4000 + i as u16;
            let id = fast_path
                .install_channel(leg.tuple(), channel, leg.relay_addr(), leg.peer_addr())
                .unwrap();
            for (n, payload) in payloads().iter().enumerate() {
                // Padding is optional over UDP; whatever there is must not reach the peer.
                let sent = channel_data(channel, payload, n % 4);
                leg.client.send_to(&sent, leg.listener_addr()).unwrap();
                let got = expect_from(&leg.peer, leg.relay_addr(), leg.name);
                assert_eq!(got, *payload, "{}: ChannelData -> peer", leg.name);

                leg.peer.send_to(payload, leg.relay_addr()).unwrap();
                let got = expect_from(&leg.client, leg.listener_addr(), leg.name);
                assert_eq!(
                    got,
                    channel_data(channel, payload, 0),
                    "{}: peer -> ChannelData",
                    leg.name
                );
            }
            leg.assert_user_space_silent();
            let sizes = payloads().into_iter().map(|p| p.len());
            let expected = totals(sizes.clone(), true);
            let back = totals(sizes, false);
            assert_eq!(
                fast_path.counters(id).unwrap(),
                Counters {
                    to_client_packets: back.to_client_packets,
                    to_client_bytes: back.to_client_bytes,
                    ..expected
                },
                "{}: counters",
                leg.name
            );
        }
        assert_eq!(
            fast_path.outcomes().relayed - relayed_before,
            4 * 2 * payloads().len() as u64
        );
        let totals = fast_path.totals();
        let bytes = payloads().iter().map(Vec::len).sum::<usize>() as u64;
        let packets = payloads().len() as u64;
        assert_eq!(
            (
                totals.to_peer_packets - totals_before.to_peer_packets,
                totals.to_peer_bytes - totals_before.to_peer_bytes,
                totals.to_client_packets - totals_before.to_client_packets,
                totals.to_client_bytes - totals_before.to_client_bytes,
            ),
            (4 * packets, 4 * bytes, 4 * packets, 4 * bytes)
        );
    }
}

#[test]
fn send_and_data_indications_are_relayed_in_all_families() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = attach(&topology);
    let legs = legs(&topology);
    for leg in &legs {
        leg.learn_hops(&mut fast_path);
    }
    let relayed_before = fast_path.outcomes().relayed;
    for leg in legs {
        let id = fast_path
            .install_permission(leg.tuple(), leg.relay_addr(), leg.peer_addr().ip())
            .unwrap();
        for (n, payload) in payloads().iter().enumerate() {
            // With and without a FINGERPRINT after DATA: both trail the payload.
            let sent = send_indication(leg.peer_addr(), payload, n % 2 == 1);
            leg.client.send_to(&sent, leg.listener_addr()).unwrap();
            let got = expect_from(&leg.peer, leg.relay_addr(), leg.name);
            assert_eq!(got, *payload, "{}: Send -> peer", leg.name);

            leg.peer.send_to(payload, leg.relay_addr()).unwrap();
            let got = expect_from(&leg.client, leg.listener_addr(), leg.name);
            assert_eq!(got.len() % 4, 0, "{}: Data indication is padded", leg.name);
            let msg = Message::parse(&got)
                .unwrap_or_else(|e| panic!("{}: Data indication parses: {e:?}", leg.name));
            assert_eq!(msg.method(), Method::DATA, "{}", leg.name);
            assert_eq!(msg.class(), Class::Indication, "{}", leg.name);
            let peer = stun::decode_xor_address(
                msg.get(attr::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS"),
                msg.transaction_id(),
            )
            .unwrap();
            assert_eq!(peer, leg.peer_addr(), "{}: XOR-PEER-ADDRESS", leg.name);
            assert_eq!(
                msg.get(attr::DATA),
                Some(payload.as_slice()),
                "{}: DATA",
                leg.name
            );
        }
        leg.assert_user_space_silent();
        let sizes = payloads().into_iter().map(|p| p.len());
        let to_peer = totals(sizes.clone(), true);
        let to_client = totals(sizes, false);
        assert_eq!(
            fast_path.counters(id).unwrap(),
            Counters {
                to_client_packets: to_client.to_client_packets,
                to_client_bytes: to_client.to_client_bytes,
                ..to_peer
            },
            "{}: counters",
            leg.name
        );
    }
    let outcomes = fast_path.outcomes();
    assert_eq!(
        outcomes.relayed - relayed_before,
        4 * 2 * payloads().len() as u64,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.adjust_failed, 0, "{outcomes:?}");
}

/// Data indication transaction IDs differ between packets (they come from the kernel's PRNG).
#[test]
fn data_indications_get_fresh_transaction_ids() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = attach(&topology);
    let leg = legs(&topology).remove(0);
    leg.learn_hops(&mut fast_path);
    fast_path
        .install_permission(leg.tuple(), leg.relay_addr(), leg.peer_addr().ip())
        .unwrap();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..8 {
        leg.peer.send_to(b"x", leg.relay_addr()).unwrap();
        let got = expect_from(&leg.client, leg.listener_addr(), leg.name);
        ids.insert(*Message::parse(&got).unwrap().transaction_id());
    }
    assert_eq!(ids.len(), 8);
}

#[test]
fn after_remove_traffic_goes_to_user_space_and_nothing_reaches_the_peer() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = attach(&topology);
    for (i, leg) in legs(&topology).iter().enumerate() {
        leg.learn_hops(&mut fast_path);
        let channel = 0x4000 + i as u16;
        let tuple = leg.tuple();
        let channel_id = fast_path
            .install_channel(tuple, channel, leg.relay_addr(), leg.peer_addr())
            .unwrap();
        let permission_id = fast_path
            .install_permission(tuple, leg.relay_addr(), leg.peer_addr().ip())
            .unwrap();
        let cd = channel_data(channel, b"through the kernel", 2);
        leg.client.send_to(&cd, leg.listener_addr()).unwrap();
        expect_from(&leg.peer, leg.relay_addr(), leg.name);

        // The channel ends (expiry, deletion, a reload denying the peer: the server removes it).
        let final_counters = fast_path.remove(channel_id).unwrap();
        assert_eq!(final_counters.to_peer_packets, 1, "{}", leg.name);
        assert_eq!(final_counters.to_peer_bytes, 18, "{}", leg.name);
        leg.client.send_to(&cd, leg.listener_addr()).unwrap();
        let (got, from) = recv(&leg.listener).expect("ChannelData reaches user space");
        assert_eq!(
            (got, from),
            (cd.clone(), tuple.client),
            "{}: unchanged",
            leg.name
        );
        assert_silent(&leg.peer, leg.name);
        // The permission still stands: the peer's datagram now comes as a Data indication.
        leg.peer.send_to(b"pong", leg.relay_addr()).unwrap();
        let got = expect_from(&leg.client, leg.listener_addr(), leg.name);
        assert_eq!(
            Message::parse(&got).unwrap().get(attr::DATA),
            Some(&b"pong"[..])
        );

        // The permission ends too: Send and peer datagrams reach user space unchanged.
        let final_counters = fast_path.remove(permission_id).unwrap();
        assert_eq!(final_counters.to_client_packets, 1, "{}", leg.name);
        let send = send_indication(leg.peer_addr(), b"no longer", false);
        leg.client.send_to(&send, leg.listener_addr()).unwrap();
        let (got, _) = recv(&leg.listener).expect("Send reaches user space");
        assert_eq!(got, send, "{}: Send unchanged", leg.name);
        leg.peer.send_to(b"anyone?", leg.relay_addr()).unwrap();
        let (got, from) = recv(&leg.relay).expect("peer datagram reaches user space");
        assert_eq!((got.as_slice(), from), (&b"anyone?"[..], leg.peer_addr()));
        assert_silent(&leg.peer, leg.name);
        assert_silent(&leg.client, leg.name);
        assert!(matches!(
            fast_path.counters(channel_id),
            Err(InstallError::UnknownEntry)
        ));
    }
    assert!(fast_path.is_empty());
}

#[test]
fn unknown_traffic_passes_to_user_space_unchanged() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = attach(&topology);
    let leg = legs(&topology).remove(0);
    leg.learn_hops(&mut fast_path);
    let relayed_before = fast_path.outcomes().relayed;
    fast_path
        .install_channel(leg.tuple(), 0x4000, leg.relay_addr(), leg.peer_addr())
        .unwrap();

    let mut binding = vec![0u8; 64];
    let binding = MessageWriter::new(&mut binding, Method::BINDING, Class::Request, &[1; 12])
        .finish()
        .unwrap()
        .to_vec();
    let unknown_channel = channel_data(0x4001, b"who?", 0);
    let too_much_padding = {
        let mut cd = channel_data(0x4000, b"pad", 0);
        cd.extend_from_slice(&[0; 4]);
        cd
    };
    let no_permission = send_indication(leg.peer_addr(), b"not permitted", false);
    for sent in [binding, unknown_channel, too_much_padding, no_permission] {
        leg.client.send_to(&sent, leg.listener_addr()).unwrap();
        let (got, _) = recv(&leg.listener).expect("reaches user space");
        assert_eq!(got, sent);
    }
    // A peer port without a channel, and no permission: user space.
    let other_port = Topology::socket(&topology.peer, addr(PEER_V4, 50100));
    other_port.send_to(b"stranger", leg.relay_addr()).unwrap();
    let (got, _) = recv(&leg.relay).expect("reaches user space");
    assert_eq!(got, b"stranger");
    assert_silent(&leg.client, "client");
    assert_silent(&leg.peer, "peer");
    assert_eq!(fast_path.outcomes().relayed, relayed_before);
}

#[test]
fn auto_falls_back_without_the_capability_and_traffic_still_reaches_user_space() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let (auto, required) = Topology::within(&topology.tern, || {
        drop_bpf_capabilities();
        let settings = settings(&["t0", "t1"], 64, AttachPolicy::Auto);
        let auto = FastPath::start(Mode::Auto, &settings);
        let required = FastPath::start(Mode::Required, &settings);
        (auto.map(|f| f.is_none()), required.err())
    });
    assert!(auto.unwrap(), "auto gives no fast path");
    assert!(
        matches!(required, Some(Unavailable::NotPermitted(_))),
        "required reports the capability: {required:?}"
    );
    let off = FastPath::start(Mode::Off, &settings(&["t0"], 64, AttachPolicy::Auto)).unwrap();
    assert!(off.is_none());
    // Without the kernel path the datagram reaches tern's socket as it was sent.
    let leg = legs(&topology).remove(0);
    let cd = channel_data(0x4000, b"user space relays", 0);
    leg.client.send_to(&cd, leg.listener_addr()).unwrap();
    let (got, _) = recv(&leg.listener).expect("reaches user space");
    assert_eq!(got, cd);
}

#[test]
fn until_something_comes_from_the_peer_its_traffic_stays_in_user_space() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    // The host does not forward: the next hops come from the packets, not from the FIB.
    let forwarding = Topology::within(&topology.tern, || {
        [
            "ipv4/conf/t0",
            "ipv4/conf/t1",
            "ipv6/conf/t0",
            "ipv6/conf/t1",
        ]
        .map(|path| std::fs::read_to_string(format!("/proc/sys/net/{path}/forwarding")).unwrap())
    });
    assert!(forwarding.iter().all(|v| v.trim() == "0"), "{forwarding:?}");
    let mut fast_path = attach(&topology);
    // The first two legs: addresses nothing has come from yet (the others reuse them).
    for (i, leg) in legs(&topology).iter().take(2).enumerate() {
        let channel = 0x4000 + i as u16;
        fast_path
            .install_channel(leg.tuple(), channel, leg.relay_addr(), leg.peer_addr())
            .unwrap();
        let no_hop = fast_path.outcomes().no_hop;
        let cd = channel_data(channel, b"first", 0);
        leg.client.send_to(&cd, leg.listener_addr()).unwrap();
        let (got, _) = recv(&leg.listener).expect("reaches user space");
        assert_eq!(got, cd, "{}", leg.name);
        assert_silent(&leg.peer, leg.name);
        assert_eq!(fast_path.outcomes().no_hop, no_hop + 1, "{}", leg.name);
        // The peer answers (user space would have relayed the first one): that comes back in
        // the kernel, and from now on both ways do.
        leg.peer.send_to(b"answer", leg.relay_addr()).unwrap();
        let got = expect_from(&leg.client, leg.listener_addr(), leg.name);
        assert_eq!(got, channel_data(channel, b"answer", 0), "{}", leg.name);
        leg.client.send_to(&cd, leg.listener_addr()).unwrap();
        assert_eq!(expect_from(&leg.peer, leg.relay_addr(), leg.name), b"first");
        leg.assert_user_space_silent();
    }
}

/// The single-NIC host: client and peer both behind t0. Natively on a veth the program redirects
/// the frame to the interface it came from (XDP_TX there would wait for the other end's next
/// wake-up, forever for a lone packet: IPv6 never arrived); generically (veth's default) it uses
/// XDP_TX.
#[test]
fn client_and_peer_behind_the_same_interface_in_both_families() {
    if !can_run() {
        return;
    }
    for (policy, expected) in [
        (AttachPolicy::Native, AttachMode::Native),
        (AttachPolicy::Auto, AttachMode::Generic),
    ] {
        let topology = Topology::new();
        let mut fast_path = attach_with(&topology, &["t0", "t1"], policy);
        let mode = fast_path.attached()[0].1;
        assert_eq!(mode, expected);
        let combos = [
            ("v4", CLIENT_V4, TERN_CLIENT_SIDE_V4, NEAR_PEER_V4),
            ("v6", CLIENT_V6, TERN_CLIENT_SIDE_V6, NEAR_PEER_V6),
            (
                "v4 client, v6 peer",
                CLIENT_V4,
                TERN_CLIENT_SIDE_V6,
                NEAR_PEER_V6,
            ),
        ];
        for (i, (name, client_ip, tern_ip, peer_ip)) in combos.into_iter().enumerate() {
            let i = i as u16;
            let listen_ip = if client_ip.contains(':') {
                TERN_CLIENT_SIDE_V6
            } else {
                TERN_CLIENT_SIDE_V4
            };
            let leg = Leg {
                name,
                client: Topology::socket(&topology.client, addr(client_ip, 40000 + i)),
                listener: Topology::socket(&topology.tern, addr(listen_ip, LISTEN_PORT + i)),
                relay: Topology::socket(&topology.tern, addr(tern_ip, 49152 + i)),
                peer: Topology::socket(&topology.client, addr(peer_ip, 50000 + i)),
            };
            leg.learn_hops(&mut fast_path);
            let channel = 0x4000 + i;
            fast_path
                .install_channel(leg.tuple(), channel, leg.relay_addr(), leg.peer_addr())
                .unwrap();
            for payload in payloads() {
                let sent = channel_data(channel, &payload, 0);
                leg.client.send_to(&sent, leg.listener_addr()).unwrap();
                let got = expect_from(&leg.peer, leg.relay_addr(), name);
                assert_eq!(got, payload, "{name} ({mode:?}): ChannelData -> peer");
                leg.peer.send_to(&payload, leg.relay_addr()).unwrap();
                let got = expect_from(&leg.client, leg.listener_addr(), name);
                assert_eq!(got, sent, "{name} ({mode:?}): peer -> ChannelData");
            }
            leg.assert_user_space_silent();
        }
    }
}

/// Two allocations of this tern talking to each other (two browsers on one TURN server): A's
/// client sends to B's relay address and B's client gets it from the kernel, framed as from A's
/// relay address, without the datagram ever leaving the host. Also behind a 1:1 NAT, where each
/// sees the other's advertised (public) relay address.
#[test]
fn two_allocations_of_this_tern_talk_in_the_kernel() {
    if !can_run() {
        return;
    }
    const PUBLIC: &str = "203.0.113.10";
    for (variant, advertised) in [("no NAT", TERN_PEER_SIDE_V4), ("1:1 NAT", PUBLIC)] {
        let topology = Topology::new();
        let mut fast_path = attach(&topology);
        let listener = Topology::socket(&topology.tern, addr(TERN_CLIENT_SIDE_V4, LISTEN_PORT));
        let client_a = Topology::socket(&topology.client, addr(CLIENT_V4, 40000));
        let client_b = Topology::socket(&topology.client, addr(CLIENT_V4, 40001));
        let relay_a = Topology::socket(&topology.tern, addr(TERN_PEER_SIDE_V4, 49200));
        let relay_b = Topology::socket(&topology.tern, addr(TERN_PEER_SIDE_V4, 49201));
        let seen = |relay: &UdpSocket| addr(advertised, relay.local_addr().unwrap().port());
        let tuple = |client: &UdpSocket| ClientTuple {
            client: client.local_addr().unwrap(),
            server: listener.local_addr().unwrap(),
        };
        let loopback = Some(Loopback {
            peer_relay_ip: TERN_PEER_SIDE_V4.parse().unwrap(),
            self_ip: advertised.parse().unwrap(),
        });
        // A: a channel to B's relay address; B: a permission for A's (tern's own address).
        let a = fast_path
            .install(&Entry {
                tuple: tuple(&client_a),
                relay: relay_a.local_addr().unwrap(),
                kind: EntryKind::Channel {
                    number: 0x4000,
                    peer: seen(&relay_b),
                },
                relay_ports_only: false,
                loopback,
            })
            .unwrap();
        let b = fast_path
            .install(&Entry {
                tuple: tuple(&client_b),
                relay: relay_b.local_addr().unwrap(),
                kind: EntryKind::Permission {
                    peer: advertised.parse().unwrap(),
                },
                relay_ports_only: true,
                loopback,
            })
            .unwrap();
        let server = listener.local_addr().unwrap();
        // Both clients share an address, so the way to B's client is known from A's first
        // packet on: everything goes through the kernel. B answers with a Send to A's relay
        // address, and A's client gets ChannelData.
        let send = send_indication(seen(&relay_a), b"from B", true);
        client_b.send_to(&send, server).unwrap();
        let (got, from) = recv(&client_a).expect("A's client gets B's data");
        assert_eq!(
            (got, from),
            (channel_data(0x4000, b"from B", 0), server),
            "{variant}"
        );
        // A to B, as a Data indication from A's relay address.
        for n in 0..10 {
            let payload = format!("A to B {n}");
            client_a
                .send_to(&channel_data(0x4000, payload.as_bytes(), 0), server)
                .unwrap();
            let (got, from) = recv(&client_b).expect("B's client gets A's data");
            assert_eq!(from, server, "{variant}");
            let msg = Message::parse(&got).unwrap();
            assert_eq!(
                (msg.class(), msg.method()),
                (Class::Indication, Method::DATA)
            );
            let peer = stun::decode_xor_address(
                msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
                msg.transaction_id(),
            )
            .unwrap();
            assert_eq!(peer, seen(&relay_a), "{variant}");
            assert_eq!(msg.get(attr::DATA), Some(payload.as_bytes()), "{variant}");
        }
        for socket in [&listener, &relay_a, &relay_b] {
            assert_silent(socket, variant);
        }
        // Each side counts what it relayed: A 10 out and 1 in, B the other way round.
        let (a, b) = (
            fast_path.counters(a).unwrap(),
            fast_path.counters(b).unwrap(),
        );
        assert_eq!(
            (a.to_peer_packets, a.to_client_packets),
            (10, 1),
            "{variant}"
        );
        assert_eq!(
            (b.to_peer_packets, b.to_client_packets),
            (1, 10),
            "{variant}"
        );
        let totals = fast_path.totals();
        assert_eq!(
            (totals.to_peer_packets, totals.to_client_packets),
            (11, 11),
            "{variant}"
        );
    }
}

/// A permission for one of tern's own addresses passes only relay-range ports, as user space's.
#[test]
fn a_permission_for_an_own_address_passes_only_relay_range_ports() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = attach(&topology);
    let leg = legs(&topology).remove(0);
    leg.learn_hops(&mut fast_path);
    fast_path
        .install(&Entry {
            tuple: leg.tuple(),
            relay: leg.relay_addr(),
            kind: EntryKind::Permission {
                peer: leg.peer_addr().ip(),
            },
            relay_ports_only: true,
            loopback: None,
        })
        .unwrap();
    // leg.peer sits at port 50000, inside 49152..=65535: relayed.
    leg.peer.send_to(b"in range", leg.relay_addr()).unwrap();
    expect_from(&leg.client, leg.listener_addr(), "in range");
    let outside = Topology::socket(&topology.peer, addr(PEER_V4, 40123));
    outside.send_to(b"outside", leg.relay_addr()).unwrap();
    let (got, _) = recv(&leg.relay).expect("reaches user space");
    assert_eq!(got, b"outside");
    assert_silent(&leg.client, "client");
}

/// A datagram that would leave bigger than the egress MTU goes to user space.
#[test]
fn a_packet_over_the_mtu_goes_to_user_space() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = attach(&topology);
    let leg = legs(&topology).remove(0);
    leg.learn_hops(&mut fast_path);
    fast_path
        .install_permission(leg.tuple(), leg.relay_addr(), leg.peer_addr().ip())
        .unwrap();
    let status = std::process::Command::new("ip")
        .args(["-n", &topology.tern, "link", "set", "t0", "mtu", "1300"])
        .status()
        .unwrap();
    assert!(status.success());
    // 1250 bytes from the peer fit t1; as a Data indication (36 more) plus headers, not t0.
    let payload = vec![7u8; 1250];
    leg.peer.send_to(&payload, leg.relay_addr()).unwrap();
    let (got, _) = recv(&leg.relay).expect("reaches user space");
    assert_eq!(got, payload);
    assert_eq!(fast_path.outcomes().too_big, 1);
    let small = vec![7u8; 1200];
    leg.peer.send_to(&small, leg.relay_addr()).unwrap();
    let got = expect_from(&leg.client, leg.listener_addr(), "fits");
    assert_eq!(
        Message::parse(&got).unwrap().get(attr::DATA),
        Some(&small[..])
    );
}

/// A sender on this host with transmit checksum offload (a container behind a veth) hands over
/// only the pseudo header's sum as its UDP checksum: relayed with it, the datagram would arrive
/// with a wrong one and be dropped. It goes to user space instead, which the stack serves.
#[test]
fn a_partial_checksum_from_this_host_goes_to_user_space() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = attach(&topology);
    for leg in legs(&topology).iter().take(2) {
        leg.learn_hops(&mut fast_path);
        fast_path
            .install_channel(leg.tuple(), 0x4000, leg.relay_addr(), leg.peer_addr())
            .unwrap();
        let offload = |on: &str| {
            let output = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &topology.client,
                    "ethtool",
                    "-K",
                    "c0",
                    "tx",
                    on,
                ])
                .output()
                .unwrap();
            assert!(output.status.success());
        };
        offload("on");
        let partial = fast_path.outcomes().partial_checksum;
        let cd = channel_data(0x4000, b"checksum left to the NIC", 0);
        leg.client.send_to(&cd, leg.listener_addr()).unwrap();
        let (got, _) = recv(&leg.listener).expect("reaches user space");
        assert_eq!(got, cd, "{}", leg.name);
        assert_silent(&leg.peer, leg.name);
        assert_eq!(
            fast_path.outcomes().partial_checksum,
            partial + 1,
            "{}",
            leg.name
        );
        // With a whole checksum the kernel relays it again.
        offload("off");
        leg.client.send_to(&cd, leg.listener_addr()).unwrap();
        let got = expect_from(&leg.peer, leg.relay_addr(), leg.name);
        assert_eq!(got, b"checksum left to the NIC");
    }
}

#[test]
fn loopback_is_refused_by_name() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let result = Topology::within(&topology.tern, || {
        FastPath::attach(&settings(&["t0", "lo"], 8, AttachPolicy::Auto)).err()
    });
    assert!(
        matches!(&result, Some(Unavailable::Loopback(name)) if name == "lo"),
        "{result:?}"
    );
    let result = Topology::within(&topology.tern, || {
        FastPath::attach(&settings(&[], 8, AttachPolicy::Auto)).err()
    });
    assert!(
        matches!(result, Some(Unavailable::NoInterface)),
        "{result:?}"
    );
}

#[test]
fn a_full_fast_path_says_so_and_frees_slots_on_remove() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let mut fast_path = Topology::within(&topology.tern, || {
        FastPath::attach(&settings(&["t0"], 2, AttachPolicy::Auto)).unwrap()
    });
    let tuple = ClientTuple {
        client: addr(CLIENT_V4, 40000),
        server: addr(TERN_CLIENT_SIDE_V4, LISTEN_PORT),
    };
    let relay = addr(TERN_PEER_SIDE_V4, 49152);
    let first = fast_path
        .install_permission(tuple, relay, PEER_V4.parse().unwrap())
        .unwrap();
    fast_path
        .install_channel(tuple, 0x4000, relay, addr(PEER_V4, 50000))
        .unwrap();
    // Installing the same entry again is not a new entry.
    assert_eq!(
        fast_path
            .install_permission(tuple, relay, PEER_V4.parse().unwrap())
            .unwrap(),
        first
    );
    let third = fast_path.install_permission(tuple, relay, "198.51.100.3".parse().unwrap());
    assert!(
        matches!(third, Err(InstallError::Full { capacity: 2 })),
        "{third:?}"
    );
    fast_path.remove(first).unwrap();
    fast_path
        .install_permission(tuple, relay, "198.51.100.3".parse().unwrap())
        .unwrap();
    // A relay address must be of the peer's family.
    let mixed = fast_path.install_permission(tuple, relay, PEER_V6.parse().unwrap());
    assert!(
        matches!(mixed, Err(InstallError::FamilyMismatch { .. })),
        "{mixed:?}"
    );
}

/// Under CI=true (which installs clang and libbpf-dev) the object must have been built.
#[test]
fn the_program_is_built_under_ci() {
    if required(
        tern_xdp::built(),
        "the fast path object",
        "install clang and libbpf-dev",
    ) {
        assert!(tern_xdp::built());
    }
}

/// Drops, for this thread only, the capabilities loading BPF programs needs (as an unprivileged
/// container would have them).
fn drop_bpf_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data structs, as the ABI requires.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        for cap in [CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF] {
            let (word, bit) = ((cap / 32) as usize, cap % 32);
            data[word].effective &= !(1 << bit);
            data[word].permitted &= !(1 << bit);
        }
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}
