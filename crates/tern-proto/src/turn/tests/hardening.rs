//! Limits, the host's own addresses, bandwidth, unauthenticated answers, reloads reaching live
//! state and memory that follows live state: the state machine on injected time.

use super::*;
use crate::metrics::LabelSet;
use crate::policy::IpRange;
use crate::turn::metrics::{AuthReason, BandwidthLimit, Direction, Limit, LogKind, Revoked};

fn range(text: &str) -> IpRange {
    text.parse().unwrap()
}

/// `count` public peers 203.0.114.1, .2, … at port 5000.
fn peers(count: usize) -> Vec<SocketAddr> {
    (1..=count)
        .map(|i| addr(&format!("203.0.114.{i}:5000")))
        .collect()
}

fn refused_by(h: &Harness, limit: Limit) -> u64 {
    h.server.counters().limit_refusals[limit.index()]
}

fn small_limits() -> Config {
    Config {
        adjust: |core| {
            core.max_permissions = 4;
            core.max_peers_per_request = 3;
            core.max_channels = 2;
        },
        ..config()
    }
}

#[test]
fn per_allocation_limits_answer_508_and_count() {
    let mut h = Harness::new(small_limits());
    h.allocate();
    // One request may name at most max-peers-per-request peers; nothing is installed otherwise.
    assert_eq!(h.create_permission(&peers(4)), Some(508));
    assert_eq!(refused_by(&h, Limit::MaxPeersPerRequest), 1);
    assert_eq!(h.server.allocations[0].permissions.len(), 0);
    assert_eq!(h.create_permission(&peers(3)), None);
    assert_eq!(h.create_permission(&peers(4)[3..]), None);
    // Full: a new peer is refused, a known one refreshed.
    let fifth = addr("203.0.114.5:5000");
    assert_eq!(h.create_permission(&[fifth]), Some(508));
    assert_eq!(refused_by(&h, Limit::MaxPermissions), 1);
    assert_eq!(h.create_permission(&peers(2)), None);
    // A channel to a new peer needs a permission too: refused while full.
    assert_eq!(h.channel_bind(0x4000, fifth), Some(508));
    assert_eq!(refused_by(&h, Limit::MaxPermissions), 2);
    let known = peers(4);
    assert_eq!(h.channel_bind(0x4000, known[0]), None);
    assert_eq!(h.channel_bind(0x4001, known[1]), None);
    assert_eq!(h.channel_bind(0x4002, known[2]), Some(508));
    assert_eq!(refused_by(&h, Limit::MaxChannels), 1);
    // Refreshing a bound channel is not a new one.
    assert_eq!(h.channel_bind(0x4001, known[1]), None);
    // The refusals were 508 Insufficient Capacity, counted as such.
    let requests = &h.server.counters().requests;
    let create = super::super::metrics::RequestMethod::CreatePermission.index();
    let code508 = super::super::metrics::CODES
        .iter()
        .position(|c| *c == "508")
        .unwrap();
    assert_eq!(requests[create][code508], 2);
    let bind = super::super::metrics::RequestMethod::ChannelBind.index();
    assert_eq!(requests[bind][code508], 2);
    // Once the permissions expire, the room is back.
    h.advance(301);
    assert_eq!(h.create_permission(&peers(3)), None);
}

#[test]
fn zero_means_no_limit() {
    let mut h = Harness::new(Config {
        adjust: |core| {
            core.max_permissions = 0;
            core.max_peers_per_request = 0;
        },
        ..config()
    });
    h.allocate();
    let many: Vec<SocketAddr> = (0..100u16)
        .map(|i| addr(&format!("203.0.{}.{}:5000", 114 + i / 250, 1 + i % 250)))
        .collect();
    assert_eq!(h.create_permission(&many), None);
    assert_eq!(h.server.allocations[0].permissions.len(), 100);
}

#[test]
fn allocations_per_client_address_are_capped() {
    let cfg = Config {
        adjust: |core| core.max_allocations_per_ip = 2,
        ..config()
    };
    let quotas = Arc::new(Quotas::new());
    let start = Instant::now();
    let mut clients: Vec<Harness> = (0..3)
        .map(|port| {
            let mut h = Harness::with_quotas(cfg.clone(), quotas.clone(), start);
            h.tuple.client = addr(&format!("198.51.100.7:{}", 40000 + port));
            h
        })
        .collect();
    clients[0].allocate();
    clients[1].allocate();
    clients[2].learn_nonce();
    let reply = clients[2].request(Method::ALLOCATE, &[udp_transport()], true);
    assert_eq!(code(&reply), Some(486));
    assert_eq!(refused_by(&clients[2], Limit::MaxAllocationsPerIp), 1);
    // Not a user or total quota matter.
    assert_eq!(clients[2].server.counters().quota_rejections, 0);
    // Another address is another budget; a freed slot is free again.
    let mut elsewhere = Harness::with_quotas(cfg, quotas.clone(), start);
    elsewhere.tuple.client = addr("198.51.100.8:40000");
    elsewhere.allocate();
    clients[0].request(Method::REFRESH, &[lifetime(0)], true);
    let reply = clients[2].request(Method::ALLOCATE, &[udp_transport()], true);
    assert_eq!(code(&reply), None);
    assert_eq!(quotas.of_address(addr("198.51.100.7:1").ip()), 2);
}

/// The host is 203.0.114.10 (allowed by a covering range, as an operator might), relay ports
/// 50000-50100.
fn on_host() -> Config {
    Config {
        adjust: |core| {
            core.policy = PeerPolicy::new(&[], &[range("203.0.114.0/24")], false)
                .with_host(&["203.0.114.10".parse().unwrap()], (50000, 50100));
        },
        ..config()
    }
}

#[test]
fn own_addresses_are_reachable_at_relay_ports_only() {
    let mut h = Harness::new(on_host());
    h.allocate();
    let listener = addr("203.0.114.10:3478");
    let relay = addr("203.0.114.10:50010");
    // A permission is per IP: it may be installed.
    assert_eq!(h.create_permission(&[listener]), None);
    // A channel names a port: only a relay port.
    assert_eq!(h.channel_bind(0x4000, listener), Some(403));
    assert_eq!(h.server.counters().own_address_refusals, 1);
    assert_eq!(h.channel_bind(0x4001, relay), None);
    // Send indications: to the relay port, not to the listener.
    let to_listener = h.send_indication(listener, b"GET /metrics");
    assert_eq!(h.client_sends(&to_listener), None);
    assert_eq!(h.server.counters().own_address_refusals, 2);
    let to_relay = h.send_indication(relay, b"hello");
    assert_eq!(h.client_sends(&to_relay), Some((relay, b"hello".to_vec())));
    // From the host: a relay port is let through, another port is not.
    assert!(h.peer_sends(relay, b"back").is_some());
    assert_eq!(h.peer_sends(listener, b"sneak"), None);
    assert_eq!(h.server.counters().own_address_refusals, 3);
    // Another address of the covering range is no concern of this rule.
    let neighbour = addr("203.0.114.11:3478");
    assert_eq!(h.channel_bind(0x4002, neighbour), None);
}

#[test]
fn connect_to_an_own_address_needs_a_relay_port() {
    let mut h = Harness::new(on_host());
    h.tuple.transport = Transport::Tcp;
    h.learn_nonce();
    let tid = h.tid();
    let msg = h.build(Method::ALLOCATE, &[super::tcp_transport()], true, tid);
    let tuple = h.tuple;
    let Output::BindRelay(request) = h.server.handle_client(h.now, tuple, &msg, &mut h.out) else {
        panic!("expected BindRelay");
    };
    let bound = h.server.relay_bound(
        h.now,
        request.alloc,
        Ok(addr(RELAY_V4).into()),
        None,
        &mut h.out,
    );
    assert!(matches!(bound, Output::ToClient { .. }));
    assert_eq!(h.connect(addr("203.0.114.10:8080")), Err(403));
    assert!(h.connect(addr("203.0.114.10:50020")).is_ok());
    // An inbound connection from the host's own non-relay port is refused.
    let alloc = super::alloc_id(&h);
    let mut out = [0u8; 256];
    let sneak = addr("203.0.114.10:8080");
    assert!(h
        .server
        .connection_attempt(alloc, sneak, &mut out)
        .is_none());
}

#[test]
fn naming_the_own_address_in_allowed_peer_ip_opens_it() {
    let mut h = Harness::new(Config {
        adjust: |core| {
            let allowed = [range("203.0.114.10")];
            core.policy = PeerPolicy::new(&[], &allowed, false)
                .with_host(&["203.0.114.10".parse().unwrap()], (50000, 50100));
        },
        ..config()
    });
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr("203.0.114.10:8080")), None);
}

/// Allocations on `count` client ports of one server, each with a permission and a channel to
/// `PEER`.
fn many_allocations(h: &mut Harness, count: u16) {
    for port in 0..count {
        h.tuple.client = addr(&format!("198.51.100.{}:{}", 1 + port / 50, 30000 + port));
        h.allocate();
        assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    }
}

#[test]
fn reload_removes_what_it_denies_a_batch_at_a_time() {
    let mut h = Harness::new(config());
    many_allocations(&mut h, 150);
    let last = h.tuple;
    let frame = {
        let mut frame = vec![0x40, 0x00, 0x00, 0x04];
        frame.extend_from_slice(b"ping");
        frame
    };
    assert!(h.client_sends(&frame).is_some());
    assert_eq!(h.server.poll_timeout().map(|at| at > h.now), Some(true));
    // The operator denies the peer's network.
    let mut core = config().core();
    core.policy = PeerPolicy::new(&[range("203.0.114.0/24")], &[], false);
    h.server.set_config(Arc::new(core));
    // Due at once, and a batch of 64 allocations per wake-up.
    assert!(h.server.poll_timeout().is_some_and(|at| at <= h.now));
    h.server.handle_timeout(h.now);
    let revoked = |h: &Harness, kind: Revoked| h.server.counters().reload_revocations[kind.index()];
    assert_eq!(revoked(&h, Revoked::Permission), 64);
    assert_eq!(revoked(&h, Revoked::Channel), 64);
    while h.server.poll_timeout().is_some_and(|at| at <= h.now) {
        h.server.handle_timeout(h.now);
    }
    assert_eq!(revoked(&h, Revoked::Permission), 150);
    assert_eq!(revoked(&h, Revoked::Channel), 150);
    // Nothing more reaches the peer, nothing comes back from it.
    h.tuple = last;
    assert_eq!(h.client_sends(&frame), None);
    assert_eq!(h.peer_sends(addr(PEER), b"late"), None);
    // The allocations themselves live on.
    assert_eq!(h.server.allocation_count(), 150);
}

#[test]
fn reload_marks_a_permission_that_became_an_own_address() {
    let mut h = Harness::new(Config {
        adjust: |core| {
            core.policy = PeerPolicy::new(&[], &[range("203.0.114.0/24")], false);
        },
        ..config()
    });
    h.allocate();
    let peer = addr("203.0.114.10:3478");
    assert_eq!(h.create_permission(&[peer]), None);
    assert!(h.peer_sends(peer, b"before").is_some());
    // An interface with that address appears; SIGHUP re-reads the host's addresses.
    h.server.set_config(Arc::new(on_host().core()));
    h.server.handle_timeout(h.now);
    assert_eq!(h.peer_sends(peer, b"after"), None);
}

fn two_secrets() -> Config {
    Config {
        static_auth_secrets: vec![SECRET.into(), "another-secret".into()],
        ..config()
    }
}

#[test]
fn a_removed_secret_ends_its_allocations_at_the_next_request() {
    let mut h = Harness::new(two_secrets());
    h.allocate();
    assert_eq!(code(&h.request(Method::REFRESH, &[], true)), None);
    // The secret that signed the credential goes; the other stays.
    let kept = Config {
        static_auth_secrets: vec!["another-secret".into()],
        ..config()
    };
    h.server.set_config(Arc::new(kept.core()));
    h.server.handle_timeout(h.now);
    assert_eq!(
        h.server.allocation_count(),
        1,
        "nothing happens before a request"
    );
    assert_eq!(code(&h.request(Method::REFRESH, &[], true)), Some(401));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().allocations_revoked, 1);
    assert_eq!(h.released(), 1, "the relay is released");
}

#[test]
fn a_removed_user_ends_its_allocations_at_the_next_request() {
    let alice = || Config {
        static_auth_secrets: Vec::new(),
        users: vec![("alice".into(), StaticKey::Password("pw".into()))],
        ..config()
    };
    let mut h = Harness::new(alice());
    h.username = "alice".into();
    h.key = long_term_key("alice", "tern", "pw");
    h.allocate();
    let without = Config {
        users: vec![("bob".into(), StaticKey::Password("pw".into()))],
        ..alice()
    };
    h.server.set_config(Arc::new(without.core()));
    assert_eq!(code(&h.request(Method::REFRESH, &[], true)), Some(401));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().allocations_revoked, 1);
}

#[test]
fn a_request_with_bad_integrity_does_not_end_a_good_allocation() {
    let mut h = Harness::new(two_secrets());
    h.allocate();
    let good_key = h.key;
    h.key = [0; 16];
    assert_eq!(code(&h.request(Method::REFRESH, &[], true)), Some(401));
    assert_eq!(
        h.server.allocation_count(),
        1,
        "a spoofed request ends nothing"
    );
    assert_eq!(h.server.counters().allocations_revoked, 0);
    h.key = good_key;
    assert_eq!(code(&h.request(Method::REFRESH, &[], true)), None);
}

fn rate_limited(rate: u32) -> Config {
    let mut cfg = config();
    cfg.adjust = match rate {
        5 => |core| core.unauthenticated_rate_limit = 5,
        _ => |core| core.unauthenticated_rate_limit = 0,
    };
    cfg
}

/// How many of `count` Bindings from the harness's client are answered at `now`.
fn bindings_answered(h: &mut Harness, count: usize) -> usize {
    (0..count)
        .filter(|_| {
            let request = h.build(Method::BINDING, &[], false, [3; 12]);
            let tuple = h.tuple;
            matches!(
                h.server.handle_client(h.now, tuple, &request, &mut h.out),
                Output::ToClient { .. }
            )
        })
        .count()
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let mut h = Harness::new(rate_limited(5));
    assert_eq!(bindings_answered(&mut h, 50), 5);
    assert_eq!(h.server.counters().unauthenticated_dropped, 45);
    // 401 challenges draw from the same bucket.
    let tid = h.tid();
    let allocate = h.build(Method::ALLOCATE, &[udp_transport()], false, tid);
    let tuple = h.tuple;
    assert_eq!(
        h.server.handle_client(h.now, tuple, &allocate, &mut h.out),
        Output::Nothing
    );
    // Another source has its own bucket; time refills this one.
    let flooder = h.tuple;
    h.tuple.client = addr("198.51.100.99:40000");
    assert_eq!(bindings_answered(&mut h, 3), 3);
    h.tuple = flooder;
    h.now += Duration::from_secs(1);
    assert_eq!(bindings_answered(&mut h, 50), 5);
    // Over TCP the source cannot be spoofed: no limit.
    h.tuple.transport = Transport::Tcp;
    assert_eq!(bindings_answered(&mut h, 50), 50);
    // Authenticated answers never count against it.
    let mut h = Harness::new(rate_limited(5));
    h.allocate();
    for _ in 0..20 {
        assert_eq!(code(&h.request(Method::REFRESH, &[], true)), None);
    }
    let mut unlimited = Harness::new(rate_limited(0));
    assert_eq!(bindings_answered(&mut unlimited, 500), 500);
}

/// Bytes out over bytes in of every answer an unauthenticated request gets, with the default
/// realm: what `docs/RELIABILITY.md` quotes.
#[test]
fn unauthenticated_answers_stay_small() {
    let mut h = Harness::new(Config {
        adjust: |core| core.software = Some("tern/1.2.3 with a long software name".into()),
        ..config()
    });
    let ratio = |request: &[u8], reply: &[u8]| reply.len() as f64 / request.len() as f64;
    // Binding, IPv4 and IPv6 client: 32 / 20 and 44 / 20.
    let binding = h.build(Method::BINDING, &[], false, [1; 12]);
    let reply = h.send(&binding);
    assert_eq!((binding.len(), reply.len()), (20, 32));
    assert!(Message::parse(&reply)
        .unwrap()
        .get(attr::SOFTWARE)
        .is_none());
    let v4 = h.tuple;
    h.tuple.client = addr("[2001:db8::7]:40000");
    h.tuple.server = addr("[2001:db8::1]:3478");
    let reply = h.send(&binding);
    assert_eq!(reply.len(), 44);
    assert!(ratio(&binding, &reply) <= 2.2);
    h.tuple = v4;
    // 401 to the smallest request that earns one (an Allocate with no attribute at all):
    // ERROR-CODE 401, REALM "tern", a 16-character NONCE, no SOFTWARE.
    let bare = h.build(Method::ALLOCATE, &[], false, [2; 12]);
    let reply = h.send(&bare);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.error_code().map(|(c, _)| c), Some(401));
    assert_eq!(msg.get(attr::NONCE).map(<[u8]>::len), Some(16));
    assert!(msg.get(attr::SOFTWARE).is_none());
    assert_eq!((bare.len(), reply.len()), (20, 68));
    assert!(ratio(&bare, &reply) <= 3.4);
    // 400 to a request of a method we do not serve, 20 bytes: 40 bytes.
    let unknown = {
        let mut buf = vec![0u8; 64];
        let w = MessageWriter::new(&mut buf, Method(0x0FF), Class::Request, &[5; 12]);
        w.finish().unwrap().to_vec()
    };
    let reply = h.send(&unknown);
    assert_eq!(code(&reply), Some(400));
    assert!(ratio(&unknown, &reply) <= 2.0, "{}", reply.len());
    // 420: the answer lists the unknown attribute the request had to carry.
    let strange = h.build(Method::BINDING, &[(0x7777, vec![0; 4])], false, [6; 12]);
    let reply = h.send(&strange);
    assert_eq!(code(&reply), Some(420));
    assert!(ratio(&strange, &reply) <= 2.5, "{}", reply.len());
    // An authenticated answer carries SOFTWARE.
    let mut h2 = Harness::new(Config {
        adjust: |core| core.software = Some("tern".into()),
        ..config()
    });
    h2.allocate();
    let reply = h2.request(Method::REFRESH, &[], true);
    assert!(Message::parse(&reply)
        .unwrap()
        .get(attr::SOFTWARE)
        .is_some());
}

#[test]
fn oversized_username_realm_or_nonce_gets_400() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let oversized = |h: &Harness| h.server.counters().auth_failures[AuthReason::Oversized.index()];
    // A username of 509 bytes (RFC 8489: fewer than 509).
    h.username = "u".repeat(509);
    let reply = h.request(Method::ALLOCATE, &[udp_transport()], true);
    assert_eq!(code(&reply), Some(400));
    assert_eq!(oversized(&h), 1);
    // 508 bytes is a username like any other (unknown here: 401).
    h.username = "u".repeat(508);
    let reply = h.request(Method::ALLOCATE, &[udp_transport()], true);
    assert_eq!(code(&reply), Some(401));
    // A nonce of 128 characters.
    h.username = "alice".into();
    h.nonce = "n".repeat(128);
    let reply = h.request(Method::ALLOCATE, &[udp_transport()], true);
    assert_eq!(code(&reply), Some(400));
    assert_eq!(oversized(&h), 2);
}

#[test]
fn auth_failure_log_lines_are_rate_limited() {
    let mut h = Harness::new(rate_limited(0));
    h.learn_nonce();
    h.key = [0; 16];
    for _ in 0..100 {
        assert_eq!(
            code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
            Some(401)
        );
    }
    let counters = h.server.counters();
    assert_eq!(
        counters.auth_failures[AuthReason::BadIntegrity.index()],
        100
    );
    let suppressed = counters.log_lines_suppressed[LogKind::AuthFailure.index()];
    assert_eq!(
        suppressed,
        100 - u64::from(crate::turn::LOG_LINES_PER_SECOND)
    );
}

fn bandwidth(max_bps: u64, bps_capacity: u64) -> Config {
    let mut cfg = config();
    cfg.adjust = match (max_bps, bps_capacity) {
        (100_000, 0) => |core| core.max_bps = 100_000,
        _ => |core| core.bps_capacity = 200_000,
    };
    cfg
}

/// A ChannelData frame of `len` bytes on channel 0x4000.
fn channel_frame(len: usize) -> Vec<u8> {
    let mut frame = vec![0x40, 0x00];
    frame.extend_from_slice(&(len as u16).to_be_bytes());
    frame.extend(std::iter::repeat_n(7u8, len));
    frame
}

#[test]
fn max_bps_drops_past_the_rate_in_each_direction() {
    let mut h = Harness::new(bandwidth(100_000, 0));
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    let frame = channel_frame(1000);
    // A second's worth passes at once, then nothing until time passes.
    let passed = (0..150)
        .filter(|_| h.client_sends(&frame).is_some())
        .count();
    assert_eq!(passed, 100);
    let (to_peer, max_bps) = (Direction::ToPeer.index(), BandwidthLimit::MaxBps.index());
    let counters = h.server.counters();
    assert_eq!(counters.bandwidth_dropped_packets[to_peer][max_bps], 50);
    assert_eq!(counters.bandwidth_dropped_bytes[to_peer][max_bps], 50_000);
    // The other direction has its own bucket.
    let back = (0..150)
        .filter(|_| h.peer_sends(addr(PEER), &[1; 1000]).is_some())
        .count();
    assert_eq!(back, 100);
    // The delay a stream connection would wait, then what passes after it.
    let alloc = super::alloc_id(&h);
    let delay = h
        .server
        .bandwidth_delay(h.now, alloc, Direction::ToPeer, 1000);
    assert_eq!(delay, Duration::from_millis(10));
    h.now += delay;
    assert!(h.client_sends(&frame).is_some());
    assert!(h.client_sends(&frame).is_none());
    // take_bandwidth takes, for data the server does not see (RFC 6062 splices).
    h.now += Duration::from_millis(20);
    let alloc = super::alloc_id(&h);
    assert_eq!(
        h.server
            .take_bandwidth(h.now, alloc, Direction::ToPeer, 2000),
        Duration::ZERO
    );
    assert!(h.client_sends(&frame).is_none(), "the splice took it");
}

#[test]
fn bps_capacity_is_shared_by_the_servers_allocations() {
    let mut h = Harness::new(bandwidth(0, 200_000));
    // Without a share, the capacity does not apply to this server.
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    let frame = channel_frame(1000);
    assert_eq!(
        (0..300)
            .filter(|_| h.client_sends(&frame).is_some())
            .count(),
        300
    );
    // One worker of two: 100 000 bytes per second for all its allocations together.
    let mut h = Harness::new(bandwidth(0, 200_000));
    h.server.set_capacity_share(2);
    many_allocations(&mut h, 2);
    let second = h.tuple;
    h.tuple.client = addr("198.51.100.1:30000");
    assert_ne!(second, h.tuple);
    let first = (0..80).filter(|_| h.client_sends(&frame).is_some()).count();
    h.tuple = second;
    let then = (0..80).filter(|_| h.client_sends(&frame).is_some()).count();
    assert_eq!((first, then), (80, 20));
    let (to_peer, capacity) = (
        Direction::ToPeer.index(),
        BandwidthLimit::BpsCapacity.index(),
    );
    assert_eq!(
        h.server.counters().bandwidth_dropped_packets[to_peer][capacity],
        60
    );
}

#[test]
fn pooled_servers_draw_the_capacity_in_batches_and_share_it() {
    use crate::policy::CapacityPool;
    use crate::turn::capacity::Capacity;
    let held = |h: &Harness| match &h.server.capacity {
        Capacity::Pooled { held, .. } => held[Direction::ToPeer.index()],
        other => panic!("{other:?}"),
    };
    // 100 MB per second: a batch is 64 KiB (5 ms would be 500 KB).
    let fast = Config {
        adjust: |core| core.bps_capacity = 100_000_000,
        ..config()
    };
    let mut h = Harness::new(fast);
    h.server
        .set_capacity_pool(Arc::new(CapacityPool::new(1, h.now)));
    h.allocate();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), None);
    let frame = channel_frame(1000);
    assert!(h.client_sends(&frame).is_some());
    // The first frame drew a batch; the next 64 pass on it without touching the pool.
    assert_eq!(held(&h), 65_536 - 1000);
    for _ in 0..64 {
        assert!(h.client_sends(&frame).is_some());
    }
    assert_eq!(held(&h), 536);
    assert!(h.client_sends(&frame).is_some());
    assert_eq!(held(&h), 536 + 65_536 - 1000, "the next batch");

    // Servers on one pool share its rate: what one took, another does not get.
    let slow = || Config {
        adjust: |core| core.bps_capacity = 100_000,
        ..config()
    };
    let mut one = Harness::new(slow());
    let pool = Arc::new(CapacityPool::new(1, one.now));
    one.server.set_capacity_pool(pool.clone());
    one.allocate();
    assert_eq!(one.channel_bind(0x4000, addr(PEER)), None);
    let mut two = Harness::new(slow());
    two.now = one.now;
    two.server.set_capacity_pool(pool);
    two.allocate();
    assert_eq!(two.channel_bind(0x4000, addr(PEER)), None);
    let passed = (0..150)
        .filter(|_| one.client_sends(&frame).is_some())
        .count();
    assert_eq!(passed, 100, "a burst of the pool");
    assert!(two.client_sends(&frame).is_none());
    let (to_peer, capacity) = (
        Direction::ToPeer.index(),
        BandwidthLimit::BpsCapacity.index(),
    );
    assert_eq!(
        two.server.counters().bandwidth_dropped_packets[to_peer][capacity],
        1
    );
    let alloc = super::alloc_id(&two);
    assert_eq!(
        two.server
            .bandwidth_wait(two.now, alloc, Direction::ToPeer, 1000),
        Some((Duration::from_millis(10), BandwidthLimit::BpsCapacity))
    );
}

#[test]
fn reload_closes_tcp_peer_connections_to_a_newly_denied_peer() {
    let mut h = super::tcp_harness();
    let (denied, other_denied, kept) = (
        addr("203.0.114.9:80"),
        addr("203.0.114.10:80"),
        addr("203.0.115.9:80"),
    );
    let open = h.connect(denied).unwrap();
    assert_eq!(code(&h.connect_result(open, true)), None);
    let kept_id = h.connect(kept).unwrap();
    assert_eq!(code(&h.connect_result(kept_id, true)), None);
    let connecting = h.connect(other_denied).unwrap();
    // The operator denies 203.0.114.0/24.
    let denying = || {
        let mut core = config().core();
        core.policy = PeerPolicy::new(&[range("203.0.114.0/24")], &[], false);
        Arc::new(core)
    };
    h.server.set_config(denying());
    h.server.handle_timeout(h.now);
    let mut closed: Vec<u32> = std::iter::from_fn(|| h.server.poll_event())
        .map(|event| match event {
            Event::ClosePeerConnection { connection_id, .. } => connection_id,
            other => panic!("{other:?}"),
        })
        .collect();
    closed.sort_unstable();
    let mut expected = vec![open, connecting];
    expected.sort_unstable();
    assert_eq!(closed, expected);
    let revoked =
        |h: &Harness| h.server.counters().reload_revocations[Revoked::TcpPeerConnection.index()];
    assert_eq!(revoked(&h), 2);
    // Once: another reload finds nothing more to close.
    h.server.set_config(denying());
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.poll_event(), None);
    assert_eq!(revoked(&h), 2);
    // The Connect in progress is answered 403 once the I/O layer gives it up.
    assert_eq!(code(&h.connect_result(connecting, false)), Some(403));
    // The closed connection is forgotten (a new Connect to its peer is judged afresh: 403),
    // the kept one stays (a second to its peer: 446).
    assert_eq!(h.connect(denied), Err(403));
    assert_eq!(h.connect(kept), Err(446));
}

#[test]
fn the_timer_queue_follows_live_allocations_not_those_ever_made() {
    let mut h = Harness::new(rate_limited(0));
    let mut most = 0;
    for round in 0..20u16 {
        for i in 0..100u16 {
            h.tuple.client = addr(&format!("198.51.100.{}:{}", 1 + round, 20000 + i));
            h.allocate();
            h.create_permission(&[addr(PEER)]);
        }
        for i in 0..100u16 {
            h.tuple.client = addr(&format!("198.51.100.{}:{}", 1 + round, 20000 + i));
            h.learn_nonce(); // nonces are per client address and port
            let reply = h.request(Method::REFRESH, &[lifetime(0)], true);
            assert_eq!(code(&reply), None);
            let live = h.server.allocation_count();
            assert!(h.server.timers.len() <= 2 * live + 64, "{live} live");
        }
        most = most.max(h.server.timers.len());
        assert!(
            h.server.timers.len() <= 2 * h.server.allocation_count() + 64,
            "round {round}: {} entries for {} allocations",
            h.server.timers.len(),
            h.server.allocation_count()
        );
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert!(most <= 2 * 100 + 64, "{most}");
    // What is live still expires on time.
    h.tuple.client = addr("198.51.100.200:1");
    h.allocate();
    h.advance(601);
    assert_eq!(h.server.allocation_count(), 0);
}
