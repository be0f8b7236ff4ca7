//! Offload events: what the I/O layer hears about channels and permissions it may relay itself
//! (the kernel fast path), on injected time.

use super::*;
use crate::policy::IpRange;

const PEER_IP: &str = "203.0.114.9";

fn offloading(config: Config) -> Harness {
    let mut h = Harness::new(config);
    h.server.set_offload(true);
    h
}

fn events(h: &mut Harness) -> Vec<Event> {
    std::iter::from_fn(|| h.server.poll_event()).collect()
}

fn alloc(h: &Harness) -> AllocId {
    h.server.allocations_with_ids(h.now).next().unwrap().0
}

fn offloaded(h: &Harness, what: Offloaded) -> Event {
    Event::Offload(Offload {
        alloc: alloc(h),
        tuple: h.tuple,
        relay: addr(RELAY_V4),
        advertised: addr(RELAY_V4),
        what,
        relay_ports_only: false,
    })
}

fn permission(ip: &str) -> Offloaded {
    Offloaded::Permission {
        peer: ip.parse().unwrap(),
    }
}

fn channel(number: u16, peer: &str) -> Offloaded {
    Offloaded::Channel {
        number,
        peer: addr(peer),
    }
}

fn unoffloaded(h: &Harness, what: OffloadKey) -> Event {
    Event::Unoffload {
        alloc: alloc(h),
        what,
    }
}

fn peer_ip() -> std::net::IpAddr {
    PEER_IP.parse().unwrap()
}

#[test]
fn nothing_is_announced_unless_offloading_is_on() {
    let mut h = Harness::new(config());
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    assert_eq!(h.create_permission(&[addr("203.0.114.10:1")]), None);
    assert_eq!(events(&mut h), []);
}

#[test]
fn a_channel_bind_announces_its_permission_and_channel_once() {
    let mut h = offloading(config());
    h.allocate();
    assert_eq!(
        events(&mut h),
        [],
        "an allocation alone has nothing to relay"
    );
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    assert_eq!(
        events(&mut h),
        [
            offloaded(&h, permission(PEER_IP)),
            offloaded(&h, channel(0x4000, PEER))
        ]
    );
    // Refreshing either changes nothing outside the server.
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    assert_eq!(h.create_permission(&[addr(PEER)]), None);
    assert_eq!(events(&mut h), []);
    // A permission for another peer, named twice in one request: announced once.
    let other = addr("203.0.114.10:7000");
    assert_eq!(h.create_permission(&[other, other]), None);
    assert_eq!(events(&mut h), [offloaded(&h, permission("203.0.114.10"))]);
    // A second channel to a permitted peer: the channel alone.
    assert_eq!(h.channel_bind(0x4001, other), None);
    assert_eq!(
        events(&mut h),
        [offloaded(&h, channel(0x4001, "203.0.114.10:7000"))]
    );
}

#[test]
fn expiry_withdraws_the_permission_and_its_channels_and_a_new_permission_brings_them_back() {
    let mut h = offloading(config());
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    events(&mut h);
    // The permission (300 s) ends before the channel (600 s): the server stops relaying both.
    h.advance(301);
    assert_eq!(
        events(&mut h),
        [
            unoffloaded(&h, OffloadKey::Permission(peer_ip())),
            unoffloaded(&h, OffloadKey::Channel(0x4000))
        ]
    );
    assert_eq!(
        h.client_sends(&[0x40, 0, 0, 1, 7]),
        None,
        "the server agrees"
    );
    // CreatePermission again: the channel is usable again, so both are announced.
    assert_eq!(h.create_permission(&[addr(PEER)]), None);
    assert_eq!(
        code(&h.request(Method::REFRESH, &[lifetime(600)], true)),
        None
    );
    assert_eq!(
        events(&mut h),
        [
            offloaded(&h, permission(PEER_IP)),
            offloaded(&h, channel(0x4000, PEER))
        ]
    );
    // The channel's own expiry (600 s after its bind); the permission was refreshed at 301.
    h.advance(299);
    assert_eq!(
        events(&mut h),
        [unoffloaded(&h, OffloadKey::Channel(0x4000))]
    );
    h.advance(2);
    assert_eq!(
        events(&mut h),
        [unoffloaded(&h, OffloadKey::Permission(peer_ip()))]
    );
}

#[test]
fn the_end_of_the_allocation_is_its_release() {
    let mut h = offloading(config());
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    events(&mut h);
    let id = alloc(&h);
    assert_eq!(
        code(&h.request(Method::REFRESH, &[lifetime(0)], true)),
        None
    );
    let ended = events(&mut h);
    assert!(
        matches!(ended[..], [Event::Released { alloc, .. }] if alloc == id),
        "{ended:?}"
    );
    // Admin deletion likewise.
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    events(&mut h);
    let id = alloc(&h);
    assert!(h.server.delete_allocation(id));
    let ended = events(&mut h);
    assert!(
        matches!(ended[..], [Event::Released { alloc, .. }] if alloc == id),
        "{ended:?}"
    );
}

#[test]
fn a_reload_withdraws_denied_peers_and_everything_under_a_bandwidth_limit() {
    let mut h = offloading(config());
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    let other = addr("203.0.115.99:9");
    assert_eq!(h.create_permission(&[other]), None);
    events(&mut h);
    // The operator denies the first peer's network.
    let mut core = config().core();
    core.policy = PeerPolicy::new(&["203.0.114.0/24".parse::<IpRange>().unwrap()], &[], false);
    h.server.set_config(Arc::new(core));
    h.server.handle_timeout(h.now);
    assert_eq!(
        events(&mut h),
        [
            unoffloaded(&h, OffloadKey::Permission(peer_ip())),
            unoffloaded(&h, OffloadKey::Channel(0x4000))
        ]
    );
    // max-bps: nothing leaves the server's hands, as nothing else would enforce it.
    let limited = Config {
        adjust: |core| core.max_bps = 100_000,
        ..config()
    };
    h.server.set_config(Arc::new(limited.core()));
    h.server.handle_timeout(h.now);
    assert_eq!(
        events(&mut h),
        [unoffloaded(&h, OffloadKey::Permission(other.ip()))]
    );
    assert_eq!(h.create_permission(&[addr("203.0.115.98:9")]), None);
    assert_eq!(events(&mut h), [], "not while limited");
    // The limit goes: whatever lives is announced again.
    h.server.set_config(Arc::new(config().core()));
    h.server.handle_timeout(h.now);
    let mut back = events(&mut h);
    back.sort_by_key(|e| format!("{e:?}"));
    let mut expected = vec![
        offloaded(&h, permission("203.0.115.99")),
        offloaded(&h, permission("203.0.115.98")),
    ];
    expected.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(back, expected);
}

/// Found by fuzzing (fuzz/turn_server): a reload that sets max-bps reaches live allocations on
/// the next timers (in batches); a permission granted before that was still announced.
#[test]
fn nothing_new_is_announced_once_a_reload_sets_a_limit_even_before_it_reaches_the_allocation() {
    let mut h = offloading(config());
    h.allocate();
    assert_eq!(h.create_permission(&[addr(PEER)]), None);
    events(&mut h);
    let limited = Config {
        adjust: |core| core.max_bps = 1000,
        ..config()
    };
    h.server.set_config(Arc::new(limited.core()));
    // No timer has run: the allocation has not been re-judged yet.
    assert_eq!(h.create_permission(&[addr("203.0.115.98:9")]), None);
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    assert_eq!(events(&mut h), [], "announced under max-bps");
    // Then everything is withdrawn (what was never announced too, which the I/O layer ignores).
    h.server.handle_timeout(h.now);
    let mut withdrawn = events(&mut h);
    withdrawn.sort_by_key(|e| format!("{e:?}"));
    let mut expected = vec![
        unoffloaded(&h, OffloadKey::Permission(peer_ip())),
        unoffloaded(&h, OffloadKey::Permission("203.0.115.98".parse().unwrap())),
        unoffloaded(&h, OffloadKey::Channel(0x4000)),
    ];
    expected.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(withdrawn, expected);
}

/// Found by fuzzing (fuzz/turn_server): a reload that lifts a bandwidth limit announced every
/// permission the allocation held, expired ones that its timer had not swept yet included.
#[test]
fn a_reload_that_lifts_a_limit_announces_only_live_permissions() {
    let limited = Config {
        adjust: |core| core.max_bps = 1000,
        ..config()
    };
    let mut h = offloading(limited);
    h.allocate();
    assert_eq!(h.create_permission(&[addr(PEER)]), None);
    assert_eq!(events(&mut h), []);
    // The permission has run out (the allocation has not); the reload comes before its sweep.
    h.now += crate::turn::PERMISSION_LIFETIME + Duration::from_secs(1);
    h.server.set_config(Arc::new(config().core()));
    h.server.handle_timeout(h.now);
    let announced: Vec<Event> = events(&mut h)
        .into_iter()
        .filter(|e| matches!(e, Event::Offload(_)))
        .collect();
    assert_eq!(announced, [], "an expired permission went to the fast path");
}

#[test]
fn tcp_clients_and_limited_servers_never_offload() {
    // A TCP client with a UDP relay.
    let mut h = offloading(config());
    h.tuple.transport = Transport::Tcp;
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    assert_eq!(events(&mut h), []);
    // bps-capacity from the start (a UDP worker takes its share).
    let mut h = offloading(Config {
        adjust: |core| core.bps_capacity = 1_000_000,
        ..config()
    });
    h.server.set_capacity_share(2);
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    assert_eq!(events(&mut h), []);
    // max-bps from the start.
    let mut h = offloading(Config {
        adjust: |core| core.max_bps = 1000,
        ..config()
    });
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    assert_eq!(events(&mut h), []);
}

#[test]
fn an_own_address_permission_says_so_and_external_ip_is_advertised() {
    let mut h = offloading(Config {
        external_ips: vec![ExternalIp {
            public: "203.0.113.50".parse().unwrap(),
            private: None,
        }],
        adjust: |core| {
            let documentation: IpRange = "203.0.113.0/24".parse().unwrap();
            core.policy = PeerPolicy::new(&[], &[documentation], false)
                .with_host(&["203.0.113.50".parse().unwrap()], (50000, 50100));
        },
        ..config()
    });
    h.allocate();
    assert_eq!(h.create_permission(&[addr("203.0.113.50:50001")]), None);
    let expected = Event::Offload(Offload {
        alloc: alloc(&h),
        tuple: h.tuple,
        relay: addr(RELAY_V4),
        advertised: addr("203.0.113.50:50000"),
        what: permission("203.0.113.50"),
        relay_ports_only: true,
    });
    assert_eq!(events(&mut h), [expected]);
}

#[test]
fn traffic_relayed_outside_adds_to_the_allocation() {
    let mut h = offloading(config());
    h.allocate();
    let id = alloc(&h);
    h.server.add_offloaded_traffic(
        id,
        Traffic {
            packets_to_peer: 3,
            bytes_to_peer: 300,
            packets_to_client: 2,
            bytes_to_client: 20,
        },
    );
    let info = h.server.allocations(h.now).next().unwrap();
    assert_eq!(
        (
            info.traffic.packets_to_peer,
            info.traffic.bytes_to_peer,
            info.traffic.packets_to_client,
            info.traffic.bytes_to_client
        ),
        (3, 300, 2, 20)
    );
    // Nothing for an allocation that ended (its id is not reused).
    assert!(h.server.delete_allocation(id));
    h.server.add_offloaded_traffic(id, Traffic::default());
}
