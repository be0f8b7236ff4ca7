//! State-machine tests with injected time: no sockets, no clock.

use super::*;
use crate::auth::{long_term_key, NonceMint};
use crate::auth::{mint, Authenticator, StaticKey};
use crate::policy::{PeerPolicy, Quotas};
use crate::stun;
use crate::stun::{
    attr, ChannelData, Class, IntegrityCheck, IntegrityKind, Message, MessageWriter, Method,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "test-secret";
const UNIX_START: u64 = 1_700_000_000;

struct Harness {
    server: Server,
    now: Instant,
    tuple: FiveTuple,
    out: Vec<u8>,
    next_tid: u32,
    username: String,
    key: [u8; 16],
    nonce: String,
    /// Which relay families the simulated I/O layer can bind, by `Family::index`.
    relay_families: [bool; 2],
}

const RELAY_V4: &str = "192.0.2.1:50000";
const RELAY_V6: &str = "[2001:db8::1]:50002";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The settings these tests vary, named as the server crate's configuration keys.
#[derive(Clone)]
struct Config {
    realm: String,
    static_auth_secrets: Vec<String>,
    users: Vec<(String, StaticKey)>,
    allow_loopback_peers: bool,
    allow_rfc5766_channel_numbers: bool,
    user_quota: u32,
    total_quota: u32,
    external_ips: Vec<ExternalIp>,
    alternate_servers: Vec<SocketAddr>,
    /// Anything else, set on the built core configuration.
    adjust: fn(&mut CoreConfig),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "tern".into(),
            static_auth_secrets: Vec::new(),
            users: Vec::new(),
            allow_loopback_peers: false,
            allow_rfc5766_channel_numbers: false,
            user_quota: 0,
            total_quota: 0,
            external_ips: Vec::new(),
            alternate_servers: Vec::new(),
            adjust: |_| {},
        }
    }
}

impl Config {
    fn core(&self) -> CoreConfig {
        let auth = Authenticator::new(&self.realm, &self.static_auth_secrets, &self.users, 86400);
        let policy = PeerPolicy::new(&[], &[], self.allow_loopback_peers);
        let mut core = CoreConfig {
            max_channel_number: if self.allow_rfc5766_channel_numbers {
                MAX_CHANNEL_NUMBER_RFC5766
            } else {
                MAX_CHANNEL_NUMBER
            },
            user_quota: self.user_quota,
            total_quota: self.total_quota,
            external_ips: self.external_ips.clone(),
            alternate_servers: self.alternate_servers.clone(),
            ..CoreConfig::new(auth, policy)
        };
        (self.adjust)(&mut core);
        core
    }
}

fn config() -> Config {
    Config {
        static_auth_secrets: vec![SECRET.into()],
        ..Config::default()
    }
}

impl Harness {
    fn new(config: Config) -> Harness {
        let start = Instant::now();
        let quotas = Arc::new(Quotas::new());
        Self::with_quotas(config, quotas, start)
    }

    fn with_quotas(config: Config, quotas: Arc<Quotas>, start: Instant) -> Harness {
        let core = Arc::new(config.core());
        let server = Server::new(
            core,
            NonceMint::with_key([7; 32]),
            quotas,
            start,
            UNIX_START,
        );
        let minted = mint(SECRET, Some("alice"), 3600, UNIX_START);
        Harness {
            server,

            now: start,
            tuple: FiveTuple {
                client: addr("198.51.100.7:40000"),
                server: addr("192.0.2.1:3478"),
                transport: Transport::Udp,
            },
            out: vec![0; 4096],
            next_tid: 0,
            key: long_term_key(&minted.username, &config.realm, &minted.password),
            username: minted.username,
            nonce: String::new(),
            relay_families: [true, true],
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.server.handle_timeout(self.now);
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        let mut tid = [0u8; 12];
        for chunk in tid.chunks_mut(4) {
            chunk.copy_from_slice(&self.next_tid.to_be_bytes());
        }
        tid
    }

    /// Builds a request; `auth` adds USERNAME/REALM/NONCE and MESSAGE-INTEGRITY with the harness key.
    fn build(
        &mut self,
        method: Method,
        attrs: &[(u16, Vec<u8>)],
        auth: bool,
        tid: [u8; 12],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, &tid);
        for (typ, value) in attrs {
            w.add_bytes(*typ, value);
        }
        if auth {
            w.add_bytes(attr::USERNAME, self.username.as_bytes());
            w.add_bytes(attr::REALM, b"tern");
            w.add_bytes(attr::NONCE, self.nonce.as_bytes());
            w.add_message_integrity(&self.key);
        }
        w.finish().unwrap().to_vec()
    }

    /// Sends a request and returns the response bytes (panics if the server said nothing).
    fn request(&mut self, method: Method, attrs: &[(u16, Vec<u8>)], auth: bool) -> Vec<u8> {
        let tid = self.tid();
        let msg = self.build(method, attrs, auth, tid);
        self.send(&msg)
    }

    fn send(&mut self, msg: &[u8]) -> Vec<u8> {
        let tuple = self.tuple;
        match self
            .server
            .handle_client(self.now, tuple, msg, &mut self.out)
        {
            Output::ToClient { tuple: t, data } => {
                assert_eq!(t, tuple);
                data.to_vec()
            }
            Output::BindRelay(request) => {
                let bind = |family: Family| match (family, self.relay_families[family.index()]) {
                    (_, false) => Err(RelayError::FamilyUnsupported),
                    (Family::V4, true) => Ok(addr(RELAY_V4).into()),
                    (Family::V6, true) => Ok(addr(RELAY_V6).into()),
                };
                let primary = bind(request.family);
                let additional = request.additional.map(bind);
                let alloc = request.alloc;
                match self
                    .server
                    .relay_bound(self.now, alloc, primary, additional, &mut self.out)
                {
                    Output::ToClient { data, .. } => data.to_vec(),
                    other => panic!("unexpected {other:?}"),
                }
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn learn_nonce(&mut self) {
        let reply = self.request(Method::ALLOCATE, &[udp_transport()], false);
        let msg = Message::parse(&reply).unwrap();
        assert_eq!(msg.error_code().map(|(c, _)| c), Some(401));
        self.nonce = msg.get_str(attr::NONCE).unwrap().unwrap().to_string();
    }

    fn allocate(&mut self) -> SocketAddr {
        self.learn_nonce();
        let reply = self.request(Method::ALLOCATE, &[udp_transport()], true);
        let msg = Message::parse(&reply).unwrap();
        assert_eq!(msg.class(), Class::Success, "{:?}", msg.error_code());
        assert_eq!(
            msg.verify_integrity(&self.key),
            IntegrityCheck::Valid(IntegrityKind::Sha1)
        );
        stun::decode_xor_address(
            msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            msg.transaction_id(),
        )
        .unwrap()
    }

    fn peer_attr(&self, peer: SocketAddr, tid: &[u8; 12]) -> (u16, Vec<u8>) {
        // Encode via a scratch message so the XOR uses this request's transaction id.
        let mut buf = vec![0u8; 64];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        let msg = w.finish().unwrap().to_vec();
        let value = Message::parse(&msg)
            .unwrap()
            .get(attr::XOR_PEER_ADDRESS)
            .unwrap()
            .to_vec();
        (attr::XOR_PEER_ADDRESS, value)
    }

    fn create_permission(&mut self, peers: &[SocketAddr]) -> Option<u16> {
        let tid = self.tid();
        let attrs: Vec<_> = peers.iter().map(|p| self.peer_attr(*p, &tid)).collect();
        let msg = self.build(Method::CREATE_PERMISSION, &attrs, true, tid);
        code(&self.send(&msg))
    }

    fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Option<u16> {
        let tid = self.tid();
        let mut number_value = number.to_be_bytes().to_vec();
        number_value.extend([0, 0]);
        let attrs = vec![
            (attr::CHANNEL_NUMBER, number_value),
            self.peer_attr(peer, &tid),
        ];
        let msg = self.build(Method::CHANNEL_BIND, &attrs, true, tid);
        code(&self.send(&msg))
    }

    /// Delivers a peer datagram; returns what reaches the client.
    fn peer_sends(&mut self, peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; stun::DATA_INDICATION_MAX_PREFIX + payload.len() + 4];
        buf[stun::DATA_INDICATION_MAX_PREFIX..][..payload.len()].copy_from_slice(payload);
        let alloc = AllocId {
            index: 0,
            generation: self.server.allocations.get(0).map(|a| a.generation)?,
        };
        match self
            .server
            .handle_peer(self.now, alloc, peer, &mut buf, payload.len())
        {
            Output::ToClient { data, .. } => Some(data.to_vec()),
            Output::Nothing => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends client bytes that must not produce a reply; returns the peer-bound output if any.
    fn client_sends(&mut self, bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let tuple = self.tuple;
        match self
            .server
            .handle_client(self.now, tuple, bytes, &mut self.out)
        {
            Output::ToPeer { peer, data, .. } => Some((peer, data.to_vec())),
            Output::Nothing => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = self.tid();
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, &tid);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        w.add_bytes(attr::DATA, data);
        w.finish().unwrap().to_vec()
    }

    fn released(&mut self) -> usize {
        std::iter::from_fn(|| self.server.poll_event()).count()
    }
}

fn udp_transport() -> (u16, Vec<u8>) {
    (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

fn code(reply: &[u8]) -> Option<u16> {
    Message::parse(reply).unwrap().error_code().map(|(c, _)| c)
}

fn lifetime(secs: u32) -> (u16, Vec<u8>) {
    (attr::LIFETIME, secs.to_be_bytes().to_vec())
}

const PEER: &str = "203.0.114.9:5000";

#[test]
fn binding_answers_without_auth_and_stays_small() {
    let mut h = Harness::new(config());
    let request = h.build(Method::BINDING, &[], false, [9; 12]);
    let reply = h.send(&request);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.class(), Class::Success);
    let mapped = stun::decode_xor_address(
        msg.get(attr::XOR_MAPPED_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap();
    assert_eq!(mapped, h.tuple.client);
    assert!(
        reply.len() <= 3 * request.len(),
        "{} vs {}",
        reply.len(),
        request.len()
    );
    assert!(
        msg.get(attr::SOFTWARE).is_none(),
        "SOFTWARE is off by default"
    );
}

#[test]
fn allocate_is_challenged_then_succeeds_with_the_relay_address() {
    let mut h = Harness::new(config());
    let relay = h.allocate();
    assert_eq!(relay, addr("192.0.2.1:50000"));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn external_ip_is_what_the_relay_advertises() {
    let mut cfg = config();
    cfg.external_ips = vec![ExternalIp {
        public: "203.0.113.50".parse().unwrap(),
        private: None,
    }];
    let mut h = Harness::new(cfg);
    assert_eq!(h.allocate(), addr("203.0.113.50:50000"));
}

#[test]
fn wrong_password_unknown_user_and_expired_credentials_get_401() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    h.key = long_term_key(&h.username, "tern", "not-the-password");
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
        Some(401)
    );

    let expired = mint(SECRET, Some("bob"), 0, UNIX_START - 10);
    h.username = expired.username.clone();
    h.key = long_term_key(&expired.username, "tern", &expired.password);
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
        Some(401)
    );

    h.username = "not-rest-and-not-static".into();
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
        Some(401)
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().auth_failures_total(), 3);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    h.advance(601);
    let reply = h.request(Method::ALLOCATE, &[udp_transport()], true);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.error_code().map(|(c, _)| c), Some(438));
    let fresh = msg.get_str(attr::NONCE).unwrap().unwrap().to_string();
    assert_ne!(fresh, h.nonce);
    h.nonce = fresh;
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
        None
    );
}

#[test]
fn allocation_expires_after_its_lifetime() {
    let mut h = Harness::new(config());
    h.allocate();
    h.advance(599);
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(2);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.released(), 1);
    assert_eq!(h.server.counters().allocations_expired, 1);
}

#[test]
fn requested_lifetime_is_capped_by_the_maximum() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let reply = h.request(
        Method::ALLOCATE,
        &[udp_transport(), lifetime(100_000)],
        true,
    );
    let granted = Message::parse(&reply).unwrap().get_u32(attr::LIFETIME);
    assert_eq!(granted, Some(3600));
}

#[test]
fn refresh_extends_and_lifetime_zero_deletes() {
    let mut h = Harness::new(config());
    h.allocate();
    h.advance(500);
    assert_eq!(
        code(&h.request(Method::REFRESH, &[lifetime(600)], true)),
        None
    );
    h.advance(500);
    assert_eq!(
        h.server.allocation_count(),
        1,
        "refreshed at 500 s for another 600 s"
    );
    h.learn_nonce(); // the first nonce went stale at 600 s
    let reply = h.request(Method::REFRESH, &[lifetime(0)], true);
    assert_eq!(
        Message::parse(&reply).unwrap().get_u32(attr::LIFETIME),
        Some(0)
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.released(), 1);
    assert_eq!(
        code(&h.request(Method::REFRESH, &[lifetime(600)], true)),
        Some(437)
    );
}

#[test]
fn allocate_retransmission_gets_the_same_answer_and_another_tid_gets_437() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let request = h.build(Method::ALLOCATE, &[udp_transport()], true, [42; 12]);
    let first = h.send(&request);
    let again = h.send(&request);
    assert_eq!(first, again);
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
        Some(437)
    );
}

#[test]
fn permissions_gate_peer_traffic_and_expire_after_300_s() {
    let mut h = Harness::new(config());
    h.allocate();
    let peer = addr(PEER);
    assert_eq!(h.peer_sends(peer, b"early"), None, "no permission yet");
    assert_eq!(h.create_permission(&[peer]), None);
    let indication = h
        .peer_sends(peer, b"hello")
        .expect("relayed as a Data indication");
    let msg = Message::parse(&indication).unwrap();
    assert_eq!(
        (msg.method(), msg.class()),
        (Method::DATA, Class::Indication)
    );
    assert_eq!(msg.get(attr::DATA), Some(&b"hello"[..]));
    let from = stun::decode_xor_address(
        msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap();
    assert_eq!(from, peer);
    // Same IP, other port: permissions are per IP.
    assert!(h.peer_sends(addr("203.0.114.9:6000"), b"x").is_some());
    h.advance(299);
    assert!(h.peer_sends(peer, b"still").is_some());
    h.advance(2);
    assert_eq!(h.peer_sends(peer, b"late"), None, "permission expired");
}

#[test]
fn send_indication_needs_a_permission_and_an_allowed_peer() {
    let mut h = Harness::new(config());
    h.allocate();
    let peer = addr(PEER);
    let send = h.send_indication(peer, b"payload");
    assert_eq!(h.client_sends(&send), None, "no permission");
    h.create_permission(&[peer]);
    let send = h.send_indication(peer, b"payload");
    assert_eq!(h.client_sends(&send), Some((peer, b"payload".to_vec())));
    let denied = h.send_indication(addr("10.0.0.1:5000"), b"payload");
    assert_eq!(h.client_sends(&denied), None);
}

#[test]
fn create_permission_is_all_or_nothing() {
    let mut h = Harness::new(config());
    h.allocate();
    let good = addr(PEER);
    assert_eq!(
        h.create_permission(&[good, addr("169.254.169.254:80")]),
        Some(403)
    );
    assert_eq!(
        h.peer_sends(good, b"x"),
        None,
        "the allowed peer got no permission either"
    );
    assert_eq!(
        h.create_permission(&[addr("[2001:db8::1]:5000")]),
        Some(443)
    );
    assert_eq!(h.server.counters().peers_denied, 1);
}

#[test]
fn loopback_peers_only_when_allowed() {
    let mut h = Harness::new(config());
    h.allocate();
    assert_eq!(h.create_permission(&[addr("127.0.0.1:9")]), Some(403));
    let mut cfg = config();
    cfg.allow_loopback_peers = true;
    let mut h = Harness::new(cfg);
    h.allocate();
    assert_eq!(h.create_permission(&[addr("127.0.0.1:9")]), None);
}

#[test]
fn channel_data_flows_both_ways() {
    let mut h = Harness::new(config());
    h.allocate();
    let peer = addr(PEER);
    assert_eq!(h.channel_bind(0x4001, peer), None);
    let mut frame = vec![0x40, 0x01, 0, 3];
    frame.extend(b"abc");
    assert_eq!(h.client_sends(&frame), Some((peer, b"abc".to_vec())));
    let to_client = h.peer_sends(peer, b"reply").unwrap();
    let parsed = ChannelData::parse(&to_client).unwrap();
    assert_eq!((parsed.channel, parsed.data), (0x4001, &b"reply"[..]));
    assert_eq!(to_client.len(), 4 + 5, "no padding over UDP");
    let unbound = [0x40, 0x02, 0, 1, b'z'];
    assert_eq!(h.client_sends(&unbound), None);
}

#[test]
fn channel_data_is_padded_over_streams() {
    let mut h = Harness::new(config());
    h.tuple.transport = Transport::Tcp;
    h.allocate();
    let peer = addr(PEER);
    h.channel_bind(0x4000, peer);
    let to_client = h.peer_sends(peer, b"reply").unwrap();
    assert_eq!(to_client.len(), 12);
    assert_eq!(&to_client[9..], &[0, 0, 0]);
}

#[test]
fn channel_bind_rules() {
    let mut h = Harness::new(config());
    h.allocate();
    let peer = addr(PEER);
    let other = addr("203.0.114.10:5000");
    assert_eq!(h.channel_bind(0x3FFF, peer), Some(400));
    assert_eq!(h.channel_bind(0x5000, peer), Some(400));
    assert_eq!(h.channel_bind(0x4000, peer), None);
    assert_eq!(
        h.channel_bind(0x4000, peer),
        None,
        "refresh of the same binding"
    );
    assert_eq!(
        h.channel_bind(0x4000, other),
        Some(400),
        "number taken by another peer"
    );
    assert_eq!(
        h.channel_bind(0x4001, peer),
        Some(400),
        "peer bound to another number"
    );
    assert_eq!(h.channel_bind(0x4002, addr("192.168.1.1:5000")), Some(403));
}

#[test]
fn rfc5766_channel_numbers_only_when_allowed() {
    let mut h = Harness::new(config());
    h.allocate();
    assert_eq!(h.channel_bind(0x5662, addr(PEER)), Some(400));
    let mut cfg = config();
    cfg.allow_rfc5766_channel_numbers = true;
    let mut h = Harness::new(cfg);
    h.allocate();
    assert_eq!(h.channel_bind(0x5662, addr(PEER)), None);
    assert_eq!(h.channel_bind(0x8000, addr("203.0.114.10:1")), Some(400));
    let frame = [0x56, 0x62, 0, 2, b'h', b'i'];
    assert_eq!(h.client_sends(&frame), Some((addr(PEER), b"hi".to_vec())));
}

#[test]
fn channel_expires_after_600_s_even_with_a_fresh_permission() {
    let mut h = Harness::new(config());
    h.allocate();
    let peer = addr(PEER);
    h.channel_bind(0x4000, peer);
    h.advance(290);
    h.create_permission(&[peer]);
    h.advance(290);
    h.create_permission(&[peer]);
    h.request(Method::REFRESH, &[], true);
    let frame = [0x40, 0x00, 0, 1, b'q'];
    assert!(h.client_sends(&frame).is_some(), "bound at 580 s");
    h.advance(21);
    assert_eq!(h.client_sends(&frame), None, "channel gone after 600 s");
    let reply = h.peer_sends(peer, b"data").unwrap();
    assert_eq!(
        Message::parse(&reply).unwrap().method(),
        Method::DATA,
        "back to Data indications"
    );
}

#[test]
fn user_and_total_quotas_answer_486_and_free_up_on_delete() {
    let mut cfg = config();
    cfg.user_quota = 1;
    let quotas = Arc::new(Quotas::new());
    let start = Instant::now();
    let mut first = Harness::with_quotas(cfg.clone(), quotas.clone(), start);
    first.allocate();
    let mut second = Harness::with_quotas(cfg.clone(), quotas.clone(), start);
    second.tuple.client = addr("198.51.100.8:40000");
    second.learn_nonce();
    assert_eq!(
        code(&second.request(Method::ALLOCATE, &[udp_transport()], true)),
        Some(486)
    );
    first.request(Method::REFRESH, &[lifetime(0)], true);
    assert_eq!(
        code(&second.request(Method::ALLOCATE, &[udp_transport()], true)),
        None
    );

    let mut cfg = config();
    cfg.total_quota = 1;
    let quotas = Arc::new(Quotas::new());
    let mut first = Harness::with_quotas(cfg.clone(), quotas.clone(), start);
    first.allocate();
    let mut other_user = Harness::with_quotas(cfg, quotas, start);
    other_user.tuple.client = addr("198.51.100.9:40000");
    let minted = mint(SECRET, Some("carol"), 3600, UNIX_START);
    other_user.key = long_term_key(&minted.username, "tern", &minted.password);
    other_user.username = minted.username;
    other_user.learn_nonce();
    assert_eq!(
        code(&other_user.request(Method::ALLOCATE, &[udp_transport()], true)),
        Some(486)
    );
}

#[test]
fn requests_without_an_allocation_get_437() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    assert_eq!(code(&h.request(Method::REFRESH, &[], true)), Some(437));
    assert_eq!(
        code(&h.request(Method::CREATE_PERMISSION, &[], true)),
        Some(437)
    );
}

#[test]
fn another_username_on_the_allocation_gets_441() {
    let mut h = Harness::new(config());
    h.allocate();
    let minted = mint(SECRET, Some("mallory"), 3600, UNIX_START);
    h.username = minted.username.clone();
    h.key = long_term_key(&minted.username, "tern", &minted.password);
    assert_eq!(code(&h.request(Method::REFRESH, &[], true)), Some(441));
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let reply = h.request(
        Method::ALLOCATE,
        &[udp_transport(), (0x7777, vec![1, 2, 3, 4])],
        true,
    );
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.error_code().map(|(c, _)| c), Some(420));
    assert_eq!(msg.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x77, 0x77][..]));
    let binding = h.request(Method::BINDING, &[(0x7777, vec![0; 4])], false);
    assert_eq!(code(&binding), Some(420));
    // Comprehension-optional unknowns are ignored.
    assert_eq!(
        code(&h.request(Method::BINDING, &[(0xC001, vec![0; 4])], false)),
        None
    );
}

#[test]
fn allocate_checks_transport_and_family() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    assert_eq!(code(&h.request(Method::ALLOCATE, &[], true)), Some(400));
    // TCP over UDP: 400 (RFC 6062 §5.1); see tcp_allocation_needs_a_stream_client_….
    let sctp = (attr::REQUESTED_TRANSPORT, vec![132, 0, 0, 0]);
    assert_eq!(code(&h.request(Method::ALLOCATE, &[sctp], true)), Some(442));
    let bad_family = (attr::REQUESTED_ADDRESS_FAMILY, vec![9, 0, 0, 0]);
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport(), bad_family], true)),
        Some(440)
    );
}

#[test]
fn relay_bind_failure_answers_508_and_releases_the_quota() {
    let mut cfg = config();
    cfg.user_quota = 1;
    let mut h = Harness::new(cfg);
    h.learn_nonce();
    let tid = h.tid();
    let request = h.build(Method::ALLOCATE, &[udp_transport()], true, tid);
    let tuple = h.tuple;
    let Output::BindRelay(bind) = h.server.handle_client(h.now, tuple, &request, &mut h.out) else {
        panic!("expected BindRelay");
    };
    let reply = match h.server.relay_bound(
        h.now,
        bind.alloc,
        Err(RelayError::NoPorts),
        None,
        &mut h.out,
    ) {
        Output::ToClient { data, .. } => data.to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!(code(&reply), Some(508));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
        None,
        "quota was given back"
    );
}

#[test]
fn sha256_integrity_is_answered_in_kind() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, &[3; 12]);
    w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    w.add_bytes(attr::USERNAME, h.username.as_bytes());
    w.add_bytes(attr::REALM, b"tern");
    w.add_bytes(attr::NONCE, h.nonce.as_bytes());
    w.add_message_integrity_sha256(&h.key);
    w.add_fingerprint();
    let request = w.finish().unwrap().to_vec();
    let reply = h.send(&request);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(
        msg.verify_integrity(&h.key),
        IntegrityCheck::Valid(IntegrityKind::Sha256)
    );
    assert_eq!(msg.fingerprint_ok(), Some(true));
}

#[test]
fn static_users_authenticate() {
    let cfg = Config {
        users: vec![("alice".into(), StaticKey::Password("wonderland".into()))],
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    h.username = "alice".into();
    h.key = long_term_key("alice", "tern", "wonderland");
    h.allocate();
}

#[test]
fn garbage_never_panics_and_gets_no_answer() {
    let mut h = Harness::new(config());
    h.allocate();
    let mut state = 0x1234_5678_u32;
    for len in 0..2000usize {
        let bytes: Vec<u8> = (0..len % 200)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let tuple = h.tuple;
        let output = h.server.handle_client(h.now, tuple, &bytes, &mut h.out);
        assert!(
            matches!(output, Output::Nothing),
            "random bytes answered: {bytes:?}"
        );
    }
}

// ---- IPv6, dual-stack allocations (RFC 8656 §§ 6-7) ----

const PEER_V6: &str = "[2001:470::9]:5000";

fn family_attr(typ: u16, family: u8) -> (u16, Vec<u8>) {
    (typ, vec![family, 0, 0, 0])
}

fn relayed_addresses(msg: &Message<'_>) -> Vec<SocketAddr> {
    msg.attributes()
        .filter(|a| a.typ == attr::XOR_RELAYED_ADDRESS)
        .map(|a| stun::decode_xor_address(a.value, msg.transaction_id()).unwrap())
        .collect()
}

impl Harness {
    /// An authenticated Allocate with `attrs` besides REQUESTED-TRANSPORT; the reply.
    fn allocate_with(&mut self, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        self.learn_nonce();
        let mut all = vec![udp_transport()];
        all.extend_from_slice(attrs);
        self.request(Method::ALLOCATE, &all, true)
    }
}

#[test]
fn requested_ipv6_family_gets_an_ipv6_relay_and_ipv6_peers_only() {
    let mut h = Harness::new(config());
    let reply = h.allocate_with(&[family_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x02)]);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.class(), Class::Success, "{:?}", msg.error_code());
    assert_eq!(relayed_addresses(&msg), vec![addr(RELAY_V6)]);
    let peer = addr(PEER_V6);
    assert_eq!(h.create_permission(&[addr(PEER)]), Some(443));
    assert_eq!(h.create_permission(&[peer]), None);
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), Some(443));
    let send = h.send_indication(peer, b"six");
    assert_eq!(h.client_sends(&send), Some((peer, b"six".to_vec())));
    assert!(h.peer_sends(peer, b"back").is_some());
    // IPv6 peers are policed too.
    assert_eq!(h.create_permission(&[addr("[fd00::1]:5000")]), Some(403));
}

#[test]
fn a_family_without_relay_address_gets_440() {
    let mut h = Harness::new(config());
    h.relay_families = [true, false];
    let reply = h.allocate_with(&[family_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x02)]);
    assert_eq!(code(&reply), Some(440));
    assert_eq!(h.server.allocation_count(), 0);
    h.relay_families = [false, true];
    let reply = h.request(Method::ALLOCATE, &[udp_transport()], true);
    assert_eq!(code(&reply), Some(440), "IPv4 is the default family");
}

#[test]
fn additional_family_gives_a_dual_stack_allocation() {
    let mut h = Harness::new(config());
    let reply = h.allocate_with(&[family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02)]);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.class(), Class::Success, "{:?}", msg.error_code());
    assert_eq!(
        msg.verify_integrity(&h.key),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
    assert_eq!(
        relayed_addresses(&msg),
        vec![addr(RELAY_V4), addr(RELAY_V6)]
    );
    assert!(msg.get(attr::ADDRESS_ERROR_CODE).is_none());
    let info = h.server.allocations(h.now).next().unwrap();
    assert_eq!(
        (info.relay, info.additional_relay),
        (Some(addr(RELAY_V4)), Some(addr(RELAY_V6)))
    );

    // Permissions and channels of both families; each peer is reached from its family's relay.
    let (v4, v6) = (addr(PEER), addr(PEER_V6));
    assert_eq!(h.create_permission(&[v4, v6]), None);
    assert_eq!(h.channel_bind(0x4001, v6), None);
    let frame = [0x40, 0x01, 0, 2, b'h', b'i'];
    assert_eq!(h.client_sends(&frame), Some((v6, b"hi".to_vec())));
    let send = h.send_indication(v4, b"four");
    assert_eq!(h.client_sends(&send), Some((v4, b"four".to_vec())));
    let to_client = h.peer_sends(v6, b"from six").unwrap();
    assert_eq!(ChannelData::parse(&to_client).unwrap().channel, 0x4001);
    assert!(h.peer_sends(v4, b"from four").is_some());

    // Refresh may name either family; the allocation ends with both relays released.
    let v6_family = family_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x02);
    assert_eq!(code(&h.request(Method::REFRESH, &[v6_family], true)), None);
    h.request(Method::REFRESH, &[lifetime(0)], true);
    match h.server.poll_event() {
        Some(Event::Released { relays, .. }) => {
            assert_eq!(relays, [Some(addr(RELAY_V4)), Some(addr(RELAY_V6))])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dual_stack_without_ipv6_keeps_ipv4_and_says_why() {
    let mut h = Harness::new(config());
    h.relay_families = [true, false];
    h.learn_nonce();
    let tid = h.tid();
    let request = h.build(
        Method::ALLOCATE,
        &[
            udp_transport(),
            family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02),
        ],
        true,
        tid,
    );
    let reply = h.send(&request);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(relayed_addresses(&msg), vec![addr(RELAY_V4)]);
    let address_error = msg.get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!(&address_error[..4], &[0x02, 0, 4, 40], "IPv6: 440");
    assert_eq!(h.create_permission(&[addr(PEER_V6)]), Some(443));
    assert_eq!(
        h.send(&request),
        reply,
        "a retransmission gets the same answer"
    );

    // And the other way round: IPv4 unavailable, IPv6 bound.
    let mut h = Harness::new(config());
    h.relay_families = [false, true];
    let reply = h.allocate_with(&[family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02)]);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(relayed_addresses(&msg), vec![addr(RELAY_V6)]);
    assert_eq!(
        &msg.get(attr::ADDRESS_ERROR_CODE).unwrap()[..4],
        &[0x01, 0, 4, 40]
    );

    // Neither family: the Allocate fails as a whole.
    let mut h = Harness::new(config());
    h.relay_families = [false, false];
    let reply = h.allocate_with(&[family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02)]);
    assert_eq!(code(&reply), Some(440));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn family_attribute_combinations_that_get_400() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let cases = [
        vec![
            family_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x01),
            family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02),
        ],
        vec![family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x01)],
        vec![family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x07)],
        vec![
            (attr::EVEN_PORT, vec![0x80]),
            family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02),
        ],
        vec![
            (attr::RESERVATION_TOKEN, vec![1; 8]),
            family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02),
        ],
    ];
    for attrs in cases {
        let mut all = vec![udp_transport()];
        all.extend(attrs.iter().cloned());
        let reply = h.request(Method::ALLOCATE, &all, true);
        assert_eq!(code(&reply), Some(400), "{attrs:?}");
    }
    assert_eq!(h.server.allocation_count(), 0);
    // EVEN-PORT without the R bit combines with a dual-stack request.
    let reply = h.request(
        Method::ALLOCATE,
        &[
            udp_transport(),
            (attr::EVEN_PORT, vec![0]),
            family_attr(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02),
        ],
        true,
    );
    assert_eq!(code(&reply), None);
}

#[test]
fn refresh_naming_a_family_the_allocation_lacks_gets_443() {
    let mut h = Harness::new(config());
    h.allocate();
    let v6 = family_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x02);
    assert_eq!(code(&h.request(Method::REFRESH, &[v6], true)), Some(443));
    let v4 = family_attr(attr::REQUESTED_ADDRESS_FAMILY, 0x01);
    assert_eq!(code(&h.request(Method::REFRESH, &[v4], true)), None);
}

// ---- RFC 5780 NAT behaviour discovery ----

fn nat_harness() -> Harness {
    let mut h = Harness::new(config());
    h.server.set_nat_discovery(Arc::new(NatDiscovery::new(
        &["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
        3478,
        3479,
    )));
    h
}

/// Sends a Binding with `attrs`; returns the tuple the answer goes out on and the answer.
fn binding(h: &mut Harness, attrs: &[(u16, Vec<u8>)]) -> (FiveTuple, Vec<u8>) {
    let tid = h.tid();
    let request = h.build(Method::BINDING, attrs, false, tid);
    let tuple = h.tuple;
    match h.server.handle_client(h.now, tuple, &request, &mut h.out) {
        Output::ToClient { tuple, data } => (tuple, data.to_vec()),
        other => panic!("{other:?}"),
    }
}

fn plain_address(msg: &Message<'_>, typ: u16) -> Option<SocketAddr> {
    msg.get(typ).map(|v| stun::decode_address(v).unwrap())
}

fn change_request(flags: u32) -> (u16, Vec<u8>) {
    (attr::CHANGE_REQUEST, flags.to_be_bytes().to_vec())
}

#[test]
fn binding_carries_other_address_and_response_origin_with_two_addresses() {
    let mut h = nat_harness();
    let (tuple, reply) = binding(&mut h, &[]);
    assert_eq!(tuple, h.tuple);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(
        plain_address(&msg, attr::OTHER_ADDRESS),
        Some(addr("192.0.2.2:3479"))
    );
    assert_eq!(
        plain_address(&msg, attr::RESPONSE_ORIGIN),
        Some(addr("192.0.2.1:3478"))
    );
    assert_eq!(
        plain_address(&msg, attr::MAPPED_ADDRESS),
        Some(h.tuple.client)
    );
}

#[test]
fn change_request_answers_from_the_other_address_and_port() {
    let mut h = nat_harness();
    let cases = [
        (0x0, "192.0.2.1:3478"),
        (0x2, "192.0.2.1:3479"),
        (0x4, "192.0.2.2:3478"),
        (0x6, "192.0.2.2:3479"),
    ];
    for (flags, from) in cases {
        let (tuple, reply) = binding(&mut h, &[change_request(flags)]);
        assert_eq!(tuple.server, addr(from), "flags {flags:#x}");
        assert_eq!(tuple.client, h.tuple.client);
        let msg = Message::parse(&reply).unwrap();
        assert_eq!(msg.class(), Class::Success);
        assert_eq!(plain_address(&msg, attr::RESPONSE_ORIGIN), Some(addr(from)));
        assert_eq!(
            plain_address(&msg, attr::OTHER_ADDRESS),
            Some(addr("192.0.2.2:3479"))
        );
    }
    // Received on the alternate address and port: OTHER-ADDRESS points back.
    h.tuple.server = addr("192.0.2.2:3479");
    let (tuple, reply) = binding(&mut h, &[change_request(0x6)]);
    assert_eq!(tuple.server, addr("192.0.2.1:3478"));
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(
        plain_address(&msg, attr::OTHER_ADDRESS),
        Some(addr("192.0.2.1:3478"))
    );
    let (_, reply) = binding(&mut h, &[(attr::CHANGE_REQUEST, vec![0; 3])]);
    assert_eq!(code(&reply), Some(400));
}

#[test]
fn without_two_addresses_or_over_tcp_change_request_is_unknown() {
    let mut h = Harness::new(config());
    let (_, reply) = binding(&mut h, &[change_request(0x4)]);
    assert_eq!(code(&reply), Some(420));
    let (_, reply) = binding(&mut h, &[]);
    let msg = Message::parse(&reply).unwrap();
    assert!(msg.get(attr::OTHER_ADDRESS).is_none() && msg.get(attr::RESPONSE_ORIGIN).is_none());

    let mut h = nat_harness();
    h.tuple.transport = Transport::Tcp;
    let (_, reply) = binding(&mut h, &[change_request(0x4)]);
    assert_eq!(code(&reply), Some(420));
    // RFC 5780 is about Binding only.
    let mut h = nat_harness();
    let reply = h.allocate_with(&[change_request(0x4)]);
    assert_eq!(code(&reply), Some(420));
}

// ---- 300 Try Alternate ----

fn alternates_config() -> Config {
    Config {
        alternate_servers: vec![
            addr("203.0.113.1:3478"),
            addr("[2001:db8::7]:3478"),
            addr("203.0.113.2:3479"),
        ],
        ..config()
    }
}

fn alternate_of(reply: &[u8]) -> Option<SocketAddr> {
    plain_address(&Message::parse(reply).unwrap(), attr::ALTERNATE_SERVER)
}

#[test]
fn draining_redirects_allocates_round_robin_per_family() {
    let mut h = Harness::new(alternates_config());
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(true));
    h.server.set_drain_flag(draining.clone());
    h.learn_nonce();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let reply = h.request(Method::ALLOCATE, &[udp_transport()], true);
        let msg = Message::parse(&reply).unwrap();
        assert_eq!(msg.error_code().map(|(c, _)| c), Some(300));
        assert_eq!(
            msg.verify_integrity(&h.key),
            IntegrityCheck::Valid(IntegrityKind::Sha1),
            "a 300 is authenticated"
        );
        seen.push(alternate_of(&reply).unwrap());
    }
    assert_eq!(
        seen,
        vec![
            addr("203.0.113.1:3478"),
            addr("203.0.113.2:3479"),
            addr("203.0.113.1:3478")
        ]
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().redirects, 3);

    // An IPv6 client gets the IPv6 alternate.
    let mut v6 = Harness::new(alternates_config());
    v6.server.set_drain_flag(draining.clone());
    v6.tuple = FiveTuple {
        client: addr("[2001:db8:1::5]:40000"),
        server: addr("[2001:db8::1]:3478"),
        transport: Transport::Udp,
    };
    let reply = v6.allocate_with(&[]);
    assert_eq!(alternate_of(&reply), Some(addr("[2001:db8::7]:3478")));

    // Unauthenticated requests are still challenged; draining ends, allocations resume.
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], false)),
        Some(401)
    );
    draining.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        code(&h.request(Method::ALLOCATE, &[udp_transport()], true)),
        None
    );
}

#[test]
fn draining_without_alternates_answers_486() {
    let mut h = Harness::new(config());
    h.server
        .set_drain_flag(Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let reply = h.allocate_with(&[]);
    assert_eq!(code(&reply), Some(486));
    assert!(alternate_of(&reply).is_none());
    // An IPv6 client with only IPv4 alternates configured gets 486 too.
    let mut cfg = config();
    cfg.alternate_servers = vec![addr("203.0.113.1:3478")];
    let mut h = Harness::new(cfg);
    h.server
        .set_drain_flag(Arc::new(std::sync::atomic::AtomicBool::new(true)));
    h.tuple.client = addr("[2001:db8:1::5]:40000");
    assert_eq!(code(&h.allocate_with(&[])), Some(486));
}

#[test]
fn total_quota_redirects_but_user_quota_does_not() {
    let start = Instant::now();
    let mut cfg = alternates_config();
    cfg.total_quota = 1;
    let quotas = Arc::new(Quotas::new());
    let mut first = Harness::with_quotas(cfg.clone(), quotas.clone(), start);
    first.allocate();
    let mut second = Harness::with_quotas(cfg, quotas, start);
    second.tuple.client = addr("198.51.100.8:40000");
    let minted = mint(SECRET, Some("carol"), 3600, UNIX_START);
    second.key = long_term_key(&minted.username, "tern", &minted.password);
    second.username = minted.username;
    let reply = second.allocate_with(&[]);
    assert_eq!(code(&reply), Some(300));
    assert_eq!(alternate_of(&reply), Some(addr("203.0.113.1:3478")));

    let mut cfg = alternates_config();
    cfg.user_quota = 1;
    let quotas = Arc::new(Quotas::new());
    let mut first = Harness::with_quotas(cfg.clone(), quotas.clone(), start);
    first.allocate();
    let mut second = Harness::with_quotas(cfg, quotas, start);
    second.tuple.client = addr("198.51.100.8:40000");
    assert_eq!(code(&second.allocate_with(&[])), Some(486));
}

#[test]
fn coturn_draft_additional_family_attribute_is_understood() {
    // coTURN's turnutils_uclient -Z sends ADDITIONAL-ADDRESS-FAMILY as 0x8032.
    let legacy = family_attr(attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY, 0x02);
    let mut h = Harness::new(config());
    let reply = h.allocate_with(std::slice::from_ref(&legacy));
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(
        relayed_addresses(&msg),
        vec![addr(RELAY_V4), addr(RELAY_V6)]
    );
    let mut h = Harness::new(config());
    h.relay_families = [true, false];
    let reply = h.allocate_with(&[legacy]);
    let msg = Message::parse(&reply).unwrap();
    assert!(msg.get(attr::ADDRESS_ERROR_CODE).is_none());
    assert_eq!(
        &msg.get(attr::ADDRESS_ERROR_CODE_LEGACY).unwrap()[..4],
        &[0x02, 0, 4, 40],
        "answered in the same numbering"
    );
}

#[test]
fn draining_refuses_new_allocates_and_admin_deletes_count() {
    use crate::turn::metrics::{CODES, METHODS};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut h = Harness::new(config());
    let draining = Arc::new(AtomicBool::new(false));
    h.server.set_drain_flag(draining.clone());
    h.allocate();
    let counters = *h.server.counters();
    assert_eq!(counters.allocations_by_transport, [1, 0, 0]);
    let (allocate, ok, unauthorized) = (
        METHODS.iter().position(|m| *m == "allocate").unwrap(),
        CODES.iter().position(|c| *c == "200").unwrap(),
        CODES.iter().position(|c| *c == "401").unwrap(),
    );
    assert_eq!(counters.requests[allocate][ok], 1);
    assert_eq!(counters.requests[allocate][unauthorized], 1);

    // Draining: a new Allocate (another client) gets 486; the live allocation stays.
    draining.store(true, Ordering::Relaxed);
    h.tuple.client = addr("198.51.100.9:40000");
    h.learn_nonce();
    let reply = h.request(Method::ALLOCATE, &[udp_transport()], true);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.error_code().map(|(c, _)| c), Some(486));
    assert_eq!(h.server.counters().drain_rejections, 1);
    assert_eq!(h.server.allocation_count(), 1);

    // The admin API deletes by id; a stale id is refused.
    let (id, info) = h.server.allocations_with_ids(h.now).next().unwrap();
    assert_eq!(info.username, h.username);
    assert!(h.server.delete_allocation(id));
    assert!(!h.server.delete_allocation(id));
    assert_eq!(h.server.counters().allocations_by_transport, [0, 0, 0]);
    assert_eq!(h.server.counters().allocations_deleted, 1);
}

// RFC 6062: TCP allocations.

fn tcp_transport() -> (u16, Vec<u8>) {
    (attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])
}

/// A harness whose client is on TCP, with a TCP allocation.
fn tcp_harness() -> Harness {
    let mut h = Harness::new(config());
    h.tuple.transport = Transport::Tcp;
    h.learn_nonce();
    let tid = h.tid();
    let msg = h.build(Method::ALLOCATE, &[tcp_transport()], true, tid);
    let tuple = h.tuple;
    let request = match h.server.handle_client(h.now, tuple, &msg, &mut h.out) {
        Output::BindRelay(request) => request,
        other => panic!("expected BindRelay, got {other:?}"),
    };
    assert_eq!(request.transport, RelayTransport::Tcp);
    let reply = match h.server.relay_bound(
        h.now,
        request.alloc,
        Ok(addr(RELAY_V4).into()),
        None,
        &mut h.out,
    ) {
        Output::ToClient { data, .. } => data.to_vec(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(code(&reply), None);
    h
}

fn alloc_id(h: &Harness) -> AllocId {
    h.server.allocations_with_ids(h.now).next().unwrap().0
}

impl Harness {
    /// Sends a Connect; `Ok(id)` when it went to the I/O layer, `Err(code)` when refused.
    fn connect(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let tid = self.tid();
        let attrs = vec![self.peer_attr(peer, &tid)];
        let msg = self.build(Method::CONNECT, &attrs, true, tid);
        let tuple = self.tuple;
        match self
            .server
            .handle_client(self.now, tuple, &msg, &mut self.out)
        {
            Output::Nothing => {}
            Output::ToClient { data, .. } => return Err(code(data).expect("an error")),
            other => panic!("unexpected {other:?}"),
        }
        match self.server.poll_event() {
            Some(Event::ConnectPeer {
                peer: asked,
                connection_id,
                ..
            }) => {
                assert_eq!(asked, peer);
                Ok(connection_id)
            }
            other => panic!("expected ConnectPeer, got {other:?}"),
        }
    }

    fn connect_result(&mut self, id: u32, connected: bool) -> Vec<u8> {
        let alloc = alloc_id(self);
        match self
            .server
            .connect_result(alloc, id, connected, &mut self.out)
        {
            Output::ToClient { data, .. } => data.to_vec(),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[derive(Default)]
struct Registry {
    pending: std::collections::HashMap<u32, (Box<str>, SocketAddr)>,
}

impl ConnectionLookup for Registry {
    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)> {
        self.pending.get(&id).cloned()
    }

    fn claim(&mut self, id: u32) -> bool {
        self.pending.remove(&id).is_some()
    }
}

#[test]
fn tcp_allocation_needs_a_stream_client_and_no_udp_only_attributes() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    // RFC 6062 §5.1: over UDP, 400.
    let reply = h.request(Method::ALLOCATE, &[tcp_transport()], true);
    assert_eq!(code(&reply), Some(400));
    // Any other protocol stays 442.
    let reply = h.request(
        Method::ALLOCATE,
        &[(attr::REQUESTED_TRANSPORT, vec![132, 0, 0, 0])],
        true,
    );
    assert_eq!(code(&reply), Some(442));
    h.tuple.transport = Transport::Tcp;
    h.learn_nonce();
    let reply = h.request(
        Method::ALLOCATE,
        &[tcp_transport(), (attr::EVEN_PORT, vec![0])],
        true,
    );
    assert_eq!(code(&reply), Some(400));
    let reply = h.request(
        Method::ALLOCATE,
        &[tcp_transport(), (attr::DONT_FRAGMENT, vec![])],
        true,
    );
    assert_eq!(code(&reply), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn connect_checks_the_peer_and_refuses_a_second_connection_to_it() {
    let mut h = tcp_harness();
    // Loopback is denied by the default policy.
    assert_eq!(h.connect(addr("127.0.0.1:80")), Err(403));
    assert_eq!(h.connect(addr("[2001:db8::9]:80")), Err(443));
    let id = h.connect(addr(PEER)).unwrap();
    assert_ne!(id, 0);
    // In progress: 446.
    assert_eq!(h.connect(addr(PEER)), Err(446));
    // Another port of the same peer is another connection.
    let other = h.connect(addr("203.0.114.9:5001")).unwrap();
    assert_ne!(other, id);

    let reply = h.connect_result(id, true);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Success, Method::CONNECT)
    );
    assert_eq!(msg.get_u32(attr::CONNECTION_ID), Some(id));
    assert_eq!(
        msg.verify_integrity(&h.key),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
    // Established and waiting for its bind: still 446.
    assert_eq!(h.connect(addr(PEER)), Err(446));
    // Closed: a new Connect goes ahead.
    h.server.connection_closed(alloc_id(&h), id);
    let again = h.connect(addr(PEER)).unwrap();

    let reply = h.connect_result(again, false);
    assert_eq!(code(&reply), Some(447));
    // A failed attempt is forgotten.
    assert!(h.connect(addr(PEER)).is_ok());
    // Connect installs the permission for the peer.
    assert!(h.server.allocations[0].has_permission(addr(PEER).ip()));

    // At most MAX_PEER_CONNECTIONS at once: then 508, and inbound peers are refused.
    let open = h.server.allocations[0].peer_connections.len();
    for port in 0..(MAX_PEER_CONNECTIONS - open) {
        assert!(h
            .connect(SocketAddr::new(addr(PEER).ip(), 6000 + port as u16))
            .is_ok());
    }
    assert_eq!(h.connect(addr("203.0.114.9:9999")), Err(508));
    let mut out = vec![0u8; 512];
    let alloc = alloc_id(&h);
    assert!(h
        .server
        .connection_attempt(alloc, addr("203.0.114.9:9998"), &mut out)
        .is_none());
}

#[test]
fn connect_on_a_udp_allocation_and_channels_on_a_tcp_one_are_bad_requests() {
    let mut h = Harness::new(config());
    h.allocate();
    assert_eq!(h.connect(addr(PEER)), Err(400));

    let mut h = tcp_harness();
    assert_eq!(h.channel_bind(0x4000, addr(PEER)), Some(400));
    // Send indications are dropped.
    let indication = h.send_indication(addr(PEER), b"hello");
    assert!(h.create_permission(&[addr(PEER)]).is_none());
    assert!(h.client_sends(&indication).is_none());
}

#[test]
fn inbound_peer_connections_need_a_permission_and_announce_themselves() {
    let mut h = tcp_harness();
    let alloc = alloc_id(&h);
    let peer = addr("203.0.114.9:41000");
    let mut out = vec![0u8; 512];
    assert!(h.server.connection_attempt(alloc, peer, &mut out).is_none());
    assert!(h.create_permission(&[addr(PEER)]).is_none());
    let (id, data) = h
        .server
        .connection_attempt(alloc, peer, &mut out)
        .expect("permitted");
    let msg = Message::parse(data).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, Method::CONNECTION_ATTEMPT)
    );
    assert_eq!(msg.get_u32(attr::CONNECTION_ID), Some(id));
    let announced = stun::decode_xor_address(
        msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
        msg.transaction_id(),
    )
    .unwrap();
    assert_eq!(announced, peer);
    assert_eq!(h.server.allocation_username(alloc), Some(&*h.username));
}

#[test]
fn connection_bind_needs_a_known_id_and_the_allocations_user() {
    let mut h = tcp_harness();
    let control = h.tuple;
    let control_nonce = h.nonce.clone();
    let mut registry = Registry::default();
    registry
        .pending
        .insert(7, (h.username.clone().into(), control.client));
    let other = mint(SECRET, Some("mallory"), 3600, UNIX_START);
    registry
        .pending
        .insert(8, (other.username.clone().into(), control.client));

    // The data connection: a new TCP connection from the same client.
    let data_tuple = FiveTuple {
        client: addr("198.51.100.7:40001"),
        ..control
    };
    let bind = |h: &mut Harness, id: u32, registry: &mut Registry| -> Option<u16> {
        let tid = h.tid();
        let msg = h.build(
            Method::CONNECTION_BIND,
            &[(attr::CONNECTION_ID, id.to_be_bytes().to_vec())],
            true,
            tid,
        );
        match h
            .server
            .connection_bind(h.now, data_tuple, &msg, registry, &mut h.out)
        {
            Output::ToClient { data, .. } => {
                let msg = Message::parse(data).unwrap();
                assert_eq!(msg.method(), Method::CONNECTION_BIND);
                msg.error_code().map(|(c, _)| c)
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(bind(&mut h, 99, &mut registry), Some(438), "not our nonce");
    // The control connection's nonce is accepted for a known id.
    assert_eq!(h.nonce, control_nonce);
    assert_eq!(bind(&mut h, 8, &mut registry), Some(441), "another user's");
    assert_eq!(bind(&mut h, 7, &mut registry), None);
    assert!(!registry.pending.contains_key(&7), "claimed");
    // Gone now: a fresh nonce for this connection, then 400.
    assert_eq!(bind(&mut h, 7, &mut registry), Some(438));
    let tid = h.tid();
    let probe = h.build(
        Method::CONNECTION_BIND,
        &[(attr::CONNECTION_ID, 7u32.to_be_bytes().to_vec())],
        false,
        tid,
    );
    let challenge =
        match h
            .server
            .connection_bind(h.now, data_tuple, &probe, &mut registry, &mut h.out)
        {
            Output::ToClient { data, .. } => Message::parse(data)
                .unwrap()
                .get_str(attr::NONCE)
                .unwrap()
                .unwrap()
                .to_string(),
            other => panic!("unexpected {other:?}"),
        };
    h.nonce = challenge;
    assert_eq!(bind(&mut h, 7, &mut registry), Some(400));

    // Not on the control connection itself (it has an allocation).
    registry
        .pending
        .insert(9, (h.username.clone().into(), control.client));
    h.nonce = control_nonce;
    let tid = h.tid();
    let msg = h.build(
        Method::CONNECTION_BIND,
        &[(attr::CONNECTION_ID, 9u32.to_be_bytes().to_vec())],
        true,
        tid,
    );
    match h
        .server
        .connection_bind(h.now, control, &msg, &mut registry, &mut h.out)
    {
        Output::ToClient { data, .. } => assert_eq!(code(data), Some(400)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(registry.pending.contains_key(&9));
}

#[test]
fn connection_bind_over_udp_is_a_bad_request() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let reply = h.request(
        Method::CONNECTION_BIND,
        &[(attr::CONNECTION_ID, 1u32.to_be_bytes().to_vec())],
        true,
    );
    assert_eq!(code(&reply), Some(400));
}

#[test]
fn connect_and_connection_bind_are_counted_under_their_own_labels() {
    use crate::metrics::LabelSet;
    use crate::turn::metrics::{Outcome, RequestMethod};
    let count = |h: &Harness, method: RequestMethod, outcome: Outcome| {
        h.server.counters().requests[method.index()][outcome.index()]
    };
    let mut h = tcp_harness();
    let id = h.connect(addr(PEER)).unwrap();
    assert_eq!(h.connect(addr(PEER)), Err(446));
    h.connect_result(id, true);
    let failed = h.connect(addr("203.0.114.9:5001")).unwrap();
    assert_eq!(code(&h.connect_result(failed, false)), Some(447));

    // The data connection binds the established one.
    let mut registry = Registry::default();
    registry
        .pending
        .insert(id, (h.username.clone().into(), h.tuple.client));
    let data_tuple = FiveTuple {
        client: addr("198.51.100.7:40001"),
        ..h.tuple
    };
    let tid = h.tid();
    let msg = h.build(
        Method::CONNECTION_BIND,
        &[(attr::CONNECTION_ID, id.to_be_bytes().to_vec())],
        true,
        tid,
    );
    match h
        .server
        .connection_bind(h.now, data_tuple, &msg, &mut registry, &mut h.out)
    {
        Output::ToClient { data, .. } => assert_eq!(code(data), None),
        other => panic!("unexpected {other:?}"),
    }

    let error = |code| Outcome::Error(ErrorCode::from_code(code).unwrap());
    assert_eq!(count(&h, RequestMethod::Connect, Outcome::Success), 1);
    assert_eq!(count(&h, RequestMethod::Connect, error(446)), 1);
    assert_eq!(count(&h, RequestMethod::Connect, error(447)), 1);
    assert_eq!(
        count(&h, RequestMethod::ConnectionBind, Outcome::Success),
        1
    );
    assert_eq!(count(&h, RequestMethod::Allocate, Outcome::Success), 1);
    let other = h.server.counters().requests[RequestMethod::Other.index()];
    assert_eq!(other.iter().sum::<u64>(), 0, "nothing counted as other");
    // Every response written was counted once: the Allocate's 401 and 200, the three Connect
    // answers (success, 446, 447), the ConnectionBind's success.
    let total: u64 = h.server.counters().requests.iter().flatten().sum();
    assert_eq!(total, 2 + 3 + 1);
}

mod hardening;

/// Found by fuzzing (fuzz/turn_server): while an allocation's relay was still being bound, the
/// peer checks returned early, so a CreatePermission (or ChannelBind, Connect) for a peer the
/// policy denies succeeded, and its permission held once the relay came.
#[test]
fn requests_before_the_relay_is_bound_still_meet_the_peer_policy() {
    let mut h = Harness::new(config());
    h.learn_nonce();
    let tuple = h.tuple;
    let tid = h.tid();
    let allocate = h.build(Method::ALLOCATE, &[udp_transport()], true, tid);
    let pending = match h.server.handle_client(h.now, tuple, &allocate, &mut h.out) {
        Output::BindRelay(request) => request,
        other => panic!("expected a relay to bind, got {other:?}"),
    };
    let denied = addr("10.0.0.1:5000");
    let tid = h.tid();
    let attrs = vec![h.peer_attr(denied, &tid)];
    let request = h.build(Method::CREATE_PERMISSION, &attrs, true, tid);
    let reply = match h.server.handle_client(h.now, tuple, &request, &mut h.out) {
        Output::ToClient { data, .. } => data.to_vec(),
        other => panic!("expected an answer, got {other:?}"),
    };
    assert_eq!(code(&reply), Some(403), "a denied peer, relay bound or not");
    let bound = Ok(addr(RELAY_V4).into());
    h.server
        .relay_bound(h.now, pending.alloc, bound, None, &mut h.out);
    assert_eq!(h.server.allocations(h.now).next().unwrap().permissions, 0);
}
mod offload;
