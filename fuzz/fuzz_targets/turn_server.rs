//! The TURN core (`turn::Server`) fed sequences of client messages from a few 5-tuples (UDP,
//! TCP, TLS; IPv4 and IPv6), signed with good and bad credentials and nonces, peer datagrams and
//! connections, time jumps, reloads with another policy, secrets and limits, admin deletes,
//! closes and relay binds that succeed, fail or come late. Time is injected; nothing touches a
//! socket or the clock.
//!
//! After every step it asserts, besides "no panic":
//! - every datagram toward a peer (`ToPeer`, a peer's datagram framed for the client, a Connect,
//!   an accepted peer connection) concerns a peer the policy in force permits (or, until a
//!   reload has been applied to live state, the one before it) and that holds an unexpired
//!   permission on that allocation, as the harness saw it granted;
//! - every allocation belongs to a 5-tuple and user that signed a request with a genuine key;
//! - the counters agree with what the harness saw: live allocations by transport, quotas,
//!   responses, relayed packets, allocations created and ended;
//! - timers move on: after `handle_timeout(now)` the next deadline lies after `now` within a
//!   bounded number of calls;
//! - an answer without MESSAGE-INTEGRITY never carries SOFTWARE;
//! - what the core hands to the kernel fast path (`Event::Offload`, offloading on as in a UDP
//!   worker with it) meets the same conditions, on a UDP allocation without `max-bps`;
//!   reload-denied RFC 6062 peer connections are closed as the I/O layer would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_fuzz::proto::{self, Credentials, Signer, Signing};
use tern_fuzz::Input;
use tern_proto::auth::{Authenticator, NonceMint};
use tern_proto::metrics::LabelSet;
use tern_proto::policy::{IpRange, PeerPolicy, Quotas, Verdict};
use tern_proto::stun::{self, attr, Class, Message, Method};
use tern_proto::turn::{
    AllocId, BoundRelay, ConnectionLookup, CoreConfig, Direction, Event, Family, FiveTuple,
    OffloadKey, Offloaded, Output, RelayError, RelayRequest, RelayTransport, Server, Transport,
};

/// The clients: two UDP 5-tuples from one address (per-address quotas), IPv6, TCP and TLS.
const CLIENTS: &[(&str, &str, Transport)] = &[
    ("198.51.100.7:40000", proto::SERVER_V4, Transport::Udp),
    ("198.51.100.7:40001", proto::SERVER_V4, Transport::Udp),
    ("[2001:db8::7]:40000", proto::SERVER_V6, Transport::Udp),
    ("198.51.100.8:40000", proto::SERVER_V4, Transport::Tcp),
    ("203.0.113.7:40000", proto::SERVER_V4, Transport::Tls),
];

fn tuple(index: usize) -> FiveTuple {
    let (client, server, transport) = CLIENTS[index % CLIENTS.len()];
    FiveTuple {
        client: proto::addr(client),
        server: proto::addr(server),
        transport,
    }
}

fn ranges(list: &[&str]) -> Vec<IpRange> {
    list.iter().map(|r| r.parse().unwrap()).collect()
}

/// One of 48 configurations: peer policy × credentials × limits.
fn core_config(variant: u8) -> CoreConfig {
    let (policy, secrets, limits) = (variant % 4, (variant / 4) % 3, (variant / 12) % 4);
    let policy = match policy {
        0 => PeerPolicy::new(&[], &[], false),
        1 => PeerPolicy::new(&[], &ranges(&["198.51.100.0/24", "2001:db8::/32"]), true),
        2 => PeerPolicy::new(
            &ranges(&["198.51.100.9"]),
            &ranges(&["198.51.100.0/24"]),
            false,
        ),
        _ => PeerPolicy::new(
            &ranges(&["10.0.0.0/8"]),
            &ranges(&["203.0.113.0/24", "192.0.2.1"]),
            true,
        ),
    };
    let own: [IpAddr; 2] = [
        proto::addr(proto::SERVER_V4).ip(),
        proto::addr(proto::SERVER_V6).ip(),
    ];
    let policy = policy.with_host(&own, proto::RELAY_PORTS);
    let (secrets, users) = match secrets {
        0 => (
            vec![proto::SECRET_A.to_string(), proto::SECRET_B.to_string()],
            proto::static_users(),
        ),
        1 => (vec![proto::SECRET_A.to_string()], proto::static_users()),
        _ => (vec![proto::SECRET_B.to_string()], Vec::new()),
    };
    let auth = Authenticator::new(proto::REALM, &secrets, &users, 86_400);
    let mut core = CoreConfig::new(auth, policy);
    match limits {
        0 => {}
        1 => {
            core.max_permissions = 2;
            core.max_channels = 2;
            core.max_peers_per_request = 2;
            core.user_quota = 2;
            core.max_allocations_per_ip = 3;
            core.total_quota = 4;
            core.default_lifetime = Duration::from_secs(60);
        }
        2 => {
            core.max_bps = 1000;
            core.bps_capacity = 5000;
            core.unauthenticated_rate_limit = 3;
            core.software = Some("tern-fuzz".into());
            core.alternate_servers = vec![proto::addr("192.0.2.2:3478")];
        }
        _ => {
            core.max_permissions = 0;
            core.max_channels = 0;
            core.max_peers_per_request = 0;
            core.unauthenticated_rate_limit = 0;
            core.max_lifetime = Duration::from_secs(120);
            core.permission_lifetime = Duration::from_secs(30);
            core.channel_lifetime = Duration::from_secs(60);
        }
    }
    core
}

/// An output of the core, owned, so the harness can act on it after the borrow ends.
enum Seen {
    Nothing,
    ToClient(FiveTuple, Vec<u8>),
    ToPeer(AllocId, SocketAddr),
    Bind(RelayRequest),
}

impl From<Output<'_>> for Seen {
    fn from(output: Output<'_>) -> Self {
        match output {
            Output::Nothing => Seen::Nothing,
            Output::ToClient { tuple, data } => Seen::ToClient(tuple, data.to_vec()),
            Output::ToPeer { alloc, peer, .. } => Seen::ToPeer(alloc, peer),
            Output::BindRelay(request) => Seen::Bind(request),
        }
    }
}

/// The I/O layer's registry of RFC 6062 peer connections, as the harness keeps it.
#[derive(Default)]
struct Registry {
    pending: HashMap<u32, (Box<str>, SocketAddr)>,
}

impl ConnectionLookup for Registry {
    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)> {
        self.pending.get(&id).cloned()
    }

    fn claim(&mut self, id: u32) -> bool {
        self.pending.remove(&id).is_some()
    }
}

struct Run {
    server: Server,
    quotas: Arc<Quotas>,
    draining: Arc<AtomicBool>,
    start: Instant,
    now: Instant,
    nonces: NonceMint,
    credentials: Credentials,
    out: Vec<u8>,
    next_tid: u32,
    last_tid: [u8; 12],
    /// The configuration in force first, then older ones a reload has not yet been applied to
    /// live state for.
    in_force: Vec<Arc<CoreConfig>>,
    /// The permissions the harness saw granted, with their expiry.
    permissions: HashMap<AllocId, HashMap<IpAddr, Instant>>,
    relay_transport: HashMap<AllocId, RelayTransport>,
    /// (5-tuple, username) pairs that signed a request with a genuine key.
    signed: HashSet<(FiveTuple, String)>,
    /// Relay binds asked for and not yet answered.
    binding: Vec<RelayRequest>,
    /// Allocations that ended while their relay was being bound (never counted as created).
    ended_pending: u64,
    connects: Vec<(AllocId, u32)>,
    /// Channels and permissions the core announced for the kernel fast path, not yet withdrawn.
    offloaded: HashSet<(AllocId, OffloadKey)>,
    registry: Registry,
    connection_ids: Vec<u32>,
    next_port: u16,
    /// What the harness saw: responses, datagrams to peers, datagrams framed for clients.
    responses: u64,
    to_peer: u64,
    to_client: u64,
    /// The largest `max-permissions` / `max-channels` any configuration had (0: unlimited).
    max_permissions: Option<u32>,
    max_channels: Option<u32>,
}

impl Run {
    fn new(variant: u8) -> Run {
        let start = Instant::now();
        let quotas = Arc::new(Quotas::new());
        let config = Arc::new(core_config(variant));
        let mut server = Server::new(
            config.clone(),
            NonceMint::with_key(proto::NONCE_KEY),
            quotas.clone(),
            start,
            proto::UNIX_START,
        );
        let draining = Arc::new(AtomicBool::new(false));
        server.set_drain_flag(draining.clone());
        // As a UDP worker with the kernel fast path: the core announces what may leave it.
        server.set_offload(true);
        let mut run = Run {
            server,
            quotas,
            draining,
            start,
            now: start,
            nonces: NonceMint::with_key(proto::NONCE_KEY),
            credentials: Credentials::default(),
            out: vec![0; 4096],
            next_tid: 0,
            last_tid: [0; 12],
            in_force: Vec::new(),
            permissions: HashMap::new(),
            relay_transport: HashMap::new(),
            signed: HashSet::new(),
            binding: Vec::new(),
            ended_pending: 0,
            connects: Vec::new(),
            offloaded: HashSet::new(),
            registry: Registry::default(),
            connection_ids: Vec::new(),
            next_port: 0,
            responses: 0,
            to_peer: 0,
            to_client: 0,
            max_permissions: Some(0),
            max_channels: Some(0),
        };
        run.take_config(config);
        run
    }

    fn unix(&self) -> u64 {
        proto::UNIX_START + self.now.duration_since(self.start).as_secs()
    }

    fn take_config(&mut self, config: Arc<CoreConfig>) {
        tern_fuzz::trace!("config: max-bps {}", config.max_bps);
        let widen = |seen: Option<u32>, limit: u32| match (seen, limit) {
            (_, 0) | (None, _) => None,
            (Some(seen), limit) => Some(seen.max(limit)),
        };
        self.max_permissions = widen(self.max_permissions, config.max_permissions);
        self.max_channels = widen(self.max_channels, config.max_channels);
        self.in_force.insert(0, config);
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let op = input.byte() % 16;
        tern_fuzz::trace!("step {op} at +{:?}", self.now - self.start);
        match op {
            0..=2 => self.request(input),
            3 => self.send_indication(input),
            4 => self.channel_data(input),
            5 => {
                let tuple = tuple(input.pick(CLIENTS.len()));
                let bytes = input.long_bytes(2048).to_vec();
                let seen = self
                    .server
                    .handle_client(self.now, tuple, &bytes, &mut self.out)
                    .into();
                self.act(tuple, None, seen);
            }
            6 => self.peer_datagram(input),
            7 => self.advance(input),
            8 => self.reload(input),
            9 => {
                let tuple = tuple(input.pick(CLIENTS.len()));
                self.server.close_tuple(&tuple);
            }
            10 => self.admin(input),
            11 => self.finish_bind(input),
            12 => self.connect_result(input),
            13 => self.connection_attempt(input),
            14 => self.connection_bind(input),
            _ => {
                let drain = input.flag();
                self.draining.store(drain, Relaxed);
            }
        }
        self.events();
        self.check();
    }

    fn tid(&mut self, input: &mut Input<'_>) -> [u8; 12] {
        // One in eight repeats the last transaction id (a retransmission).
        if !input.byte().is_multiple_of(8) {
            self.next_tid += 1;
            let mut tid = [0u8; 12];
            tid[8..].copy_from_slice(&self.next_tid.to_be_bytes());
            self.last_tid = tid;
        }
        self.last_tid
    }

    /// A STUN message from a client, signed as the input chooses.
    fn request(&mut self, input: &mut Input<'_>) {
        let tuple = tuple(input.pick(CLIENTS.len()));
        let method = match input.byte() {
            250..=255 => Method(input.u16() & 0x0FFF),
            choice => proto::METHODS[usize::from(choice) % proto::METHODS.len()],
        };
        let class = match input.byte() % 16 {
            0 => Class::Indication,
            1 => Class::Success,
            _ => Class::Request,
        };
        let tid = self.tid(input);
        let unix = self.unix();
        let signer = proto::read_signer(input, &self.credentials, unix);
        let nonce = proto::read_nonce(input, &self.nonces, tuple.client, unix);
        let realm: &[u8] = if input.byte().is_multiple_of(16) {
            b"elsewhere"
        } else {
            proto::REALM.as_bytes()
        };
        let (sha256, fingerprint) = (input.byte().is_multiple_of(4), input.flag());
        let signing = Signing {
            signer: signer.as_ref(),
            nonce,
            realm,
            sha256,
            fingerprint,
        };
        let ids = self.connection_ids.clone();
        let Some(message) = proto::build_message(input, method, class, tid, &signing, &ids) else {
            return;
        };
        self.note_signed(tuple, signer.as_ref());
        let seen = self
            .server
            .handle_client(self.now, tuple, &message, &mut self.out)
            .into();
        self.act(tuple, Some(&message), seen);
    }

    fn note_signed(&mut self, tuple: FiveTuple, signer: Option<&Signer>) {
        if let Some(signer) = signer.filter(|s| s.genuine) {
            self.signed.insert((tuple, signer.username.clone()));
        }
    }

    /// A Send indication (never signed) toward one of the peers.
    fn send_indication(&mut self, input: &mut Input<'_>) {
        let tuple = tuple(input.pick(CLIENTS.len()));
        let peer = proto::peer(input.pick(proto::PEERS.len()));
        let data = input.long_bytes(1500);
        let tid = self.tid(input);
        let mut buf = vec![0u8; 2048];
        let mut w = stun::MessageWriter::new(&mut buf, Method::SEND, Class::Indication, &tid);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        w.add_bytes(attr::DATA, data);
        if input.flag() {
            w.add_bytes(attr::DONT_FRAGMENT, &[]);
        }
        let Some(message) = w.finish().map(<[u8]>::to_vec) else {
            return;
        };
        let seen = self
            .server
            .handle_client(self.now, tuple, &message, &mut self.out)
            .into();
        self.act(tuple, None, seen);
    }

    fn channel_data(&mut self, input: &mut Input<'_>) {
        let tuple = tuple(input.pick(CLIENTS.len()));
        let frame = proto::channel_data(input, tuple.transport.is_stream());
        let seen = self
            .server
            .handle_client(self.now, tuple, &frame, &mut self.out)
            .into();
        self.act(tuple, None, seen);
    }

    /// Acts on what the core returned for a client's `request` over `tuple`.
    fn act(&mut self, tuple: FiveTuple, request: Option<&[u8]>, seen: Seen) {
        match &seen {
            Seen::Nothing => tern_fuzz::trace!("  nothing"),
            Seen::ToClient(_, data) => tern_fuzz::trace!("  to client: {:?}", Message::parse(data)),
            Seen::ToPeer(alloc, peer) => tern_fuzz::trace!("  to peer {peer} from {alloc:?}"),
            Seen::Bind(request) => tern_fuzz::trace!("  bind {request:?}"),
        }
        match seen {
            Seen::Nothing => {}
            Seen::ToClient(to, data) => {
                assert_eq!(to, tuple, "a reply goes back over the request's 5-tuple");
                self.response(tuple, request, &data);
            }
            Seen::ToPeer(alloc, peer) => {
                assert_eq!(
                    self.server.allocation_on(&tuple),
                    Some(alloc),
                    "data leaves from the sender's own allocation"
                );
                self.check_peer(alloc, peer, "ToPeer");
                self.to_peer += 1;
            }
            Seen::Bind(request) => self.bind(request),
        }
    }

    /// A response to a client: counted; a successful CreatePermission or ChannelBind grants the
    /// permissions for every XOR-PEER-ADDRESS of the request the harness sent.
    fn response(&mut self, tuple: FiveTuple, request: Option<&[u8]>, data: &[u8]) {
        let response = Message::parse(data).expect("tern writes well-formed STUN");
        assert!(
            response.integrity_kind().is_some() || response.get(attr::SOFTWARE).is_none(),
            "SOFTWARE in an answer to a request that proved nothing"
        );
        match response.class() {
            Class::Success | Class::Error => self.responses += 1,
            _ => return,
        }
        let granted = matches!(
            response.method(),
            Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        );
        let (Class::Success, true, Some(request)) = (response.class(), granted, request) else {
            return;
        };
        let request = Message::parse(request).unwrap();
        let alloc = self
            .server
            .allocation_on(&tuple)
            .expect("a permission is granted on an allocation");
        let lifetime = self.in_force[0].permission_lifetime;
        let tid = request.transaction_id();
        for attribute in request.attributes() {
            if attribute.typ == attr::XOR_PEER_ADDRESS {
                if let Ok(peer) = stun::decode_xor_address(attribute.value, tid) {
                    self.permissions
                        .entry(alloc)
                        .or_default()
                        .insert(peer.ip(), self.now + lifetime);
                }
            }
        }
    }

    /// Asserts that `peer` may be reached from `alloc`: the policy in force permits it (or the
    /// one before, while a reload is still being applied) and a permission is live.
    fn check_peer(&self, alloc: AllocId, peer: SocketAddr, what: &str) {
        let permitted = self
            .in_force
            .iter()
            .any(|config| config.policy.judge(peer) == Verdict::Permitted);
        assert!(permitted, "{what} to {peer}, which the policy denies");
        self.check_live_permission(alloc, peer.ip(), what);
    }

    /// The same for a whole permission (any port of `peer`), as the fast path is given one.
    fn check_permission(&self, alloc: AllocId, peer: IpAddr, what: &str) {
        let permitted = self
            .in_force
            .iter()
            .any(|config| config.policy.permits(peer));
        assert!(permitted, "{what} for {peer}, which the policy denies");
        self.check_live_permission(alloc, peer, what);
    }

    fn check_live_permission(&self, alloc: AllocId, peer: IpAddr, what: &str) {
        let expires = self
            .permissions
            .get(&alloc)
            .and_then(|granted| granted.get(&peer));
        assert!(
            expires.is_some_and(|&at| at > self.now),
            "{what} to {peer} without a live permission (granted until {expires:?})"
        );
    }

    /// The core asks for a relay socket: bound at once (mostly), refused, or left for later.
    fn bind(&mut self, request: RelayRequest) {
        self.relay_transport
            .insert(request.alloc, request.transport);
        self.binding.push(request);
        // The decision comes from the request's own shape so that it stays deterministic.
        let later = self.next_port % 7 == 3;
        self.next_port = self.next_port.wrapping_add(1);
        if !later {
            let index = self.binding.len() - 1;
            self.complete_bind(index, 0);
        }
    }

    fn finish_bind(&mut self, input: &mut Input<'_>) {
        if self.binding.is_empty() {
            return;
        }
        let index = input.pick(self.binding.len());
        let outcome = input.byte();
        self.complete_bind(index, outcome);
    }

    fn complete_bind(&mut self, index: usize, outcome: u8) {
        let request = self.binding.swap_remove(index);
        let port = proto::RELAY_PORTS.0 + self.next_port % 1000;
        let bound = |family: Family| -> Result<BoundRelay, RelayError> {
            let ip: IpAddr = match family {
                Family::V4 => proto::addr(proto::SERVER_V4).ip(),
                Family::V6 => proto::addr(proto::SERVER_V6).ip(),
            };
            Ok(BoundRelay {
                local: SocketAddr::new(ip, port),
                reservation: matches!(
                    request.port,
                    tern_proto::turn::PortRequest::Even { reserve_next: true }
                )
                .then_some([1, 2, 3, 4, 5, 6, 7, 8]),
            })
        };
        let result = match outcome % 8 {
            5 => Err(RelayError::NoPorts),
            6 => Err(RelayError::FamilyUnsupported),
            7 => Err(RelayError::BadReservation),
            _ => bound(request.family),
        };
        let additional = request.additional.map(|family| match outcome % 3 {
            0 => Err(RelayError::FamilyUnsupported),
            _ => bound(family),
        });
        let seen: Seen = self
            .server
            .relay_bound(self.now, request.alloc, result, additional, &mut self.out)
            .into();
        match seen {
            Seen::ToClient(to, data) => {
                assert_eq!(to, request.tuple);
                self.response(request.tuple, None, &data);
            }
            Seen::Nothing => {}
            _ => panic!("relay_bound answers the client or nothing"),
        }
    }

    /// A datagram from a peer to an allocation's UDP relay.
    fn peer_datagram(&mut self, input: &mut Input<'_>) {
        let Some(alloc) = self.nth_allocation(input, RelayTransport::Udp) else {
            return;
        };
        let peer = proto::peer(input.pick(proto::PEERS.len()));
        let payload = input.long_bytes(65_000);
        let prefix = stun::DATA_INDICATION_MAX_PREFIX;
        let mut buf = vec![0u8; prefix + payload.len() + 3];
        buf[prefix..prefix + payload.len()].copy_from_slice(payload);
        let owner = self.allocation_tuple(alloc);
        tern_fuzz::trace!("  datagram from {peer} to {alloc:?}");
        match self
            .server
            .handle_peer(self.now, alloc, peer, &mut buf, payload.len())
        {
            Output::Nothing => {}
            Output::ToClient { tuple, data } => {
                tern_fuzz::trace!("  framed for the client");
                assert_eq!(
                    Some(tuple),
                    owner,
                    "a peer's datagram goes to its allocation's client"
                );
                let framed = match stun::frame_kind(data) {
                    stun::FrameKind::ChannelData => stun::ChannelData::parse(data).map(|c| c.data),
                    _ => Message::parse(data).ok().and_then(|m| m.get(attr::DATA)),
                };
                assert_eq!(framed, Some(payload), "the payload arrives whole");
                self.check_peer(alloc, peer, "datagram from");
                self.to_client += 1;
            }
            _ => panic!("a peer's datagram goes to the client or nowhere"),
        }
    }

    fn allocation_tuple(&self, alloc: AllocId) -> Option<FiveTuple> {
        self.server
            .allocations_with_ids(self.now)
            .find(|(id, _)| *id == alloc)
            .map(|(_, info)| info.tuple)
    }

    /// The input's choice among live allocations relaying `transport`.
    fn nth_allocation(&self, input: &mut Input<'_>, transport: RelayTransport) -> Option<AllocId> {
        let ids: Vec<AllocId> = self
            .server
            .allocations_with_ids(self.now)
            .map(|(id, _)| id)
            .filter(|id| self.relay_transport.get(id) == Some(&transport))
            .collect();
        (!ids.is_empty()).then(|| ids[input.pick(ids.len())])
    }

    /// Time passes; the harness runs the timers as the I/O layer would.
    fn advance(&mut self, input: &mut Input<'_>) {
        let by = match input.byte() % 4 {
            0 => Duration::from_millis(u64::from(input.u16())),
            1 => Duration::from_secs(u64::from(input.byte())),
            2 => Duration::from_secs(u64::from(input.u16())),
            _ => self
                .server
                .poll_timeout()
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(self.now)),
        };
        self.now += by;
        self.run_timers();
    }

    /// `handle_timeout` until nothing is due at `now`; a reload is then applied to live state.
    fn run_timers(&mut self) {
        for _ in 0..10_000 {
            self.server.handle_timeout(self.now);
            self.events();
            match self.server.poll_timeout() {
                Some(at) if at <= self.now => continue,
                _ => {
                    self.in_force.truncate(1);
                    return;
                }
            }
        }
        panic!("handle_timeout does not move the deadline past now");
    }

    fn reload(&mut self, input: &mut Input<'_>) {
        let config = Arc::new(core_config(input.byte()));
        self.server.set_config(config.clone());
        self.take_config(config);
        if input.flag() {
            // As the UDP worker does: the reload, then the timers of the same wake-up.
            self.run_timers();
        }
    }

    fn admin(&mut self, input: &mut Input<'_>) {
        if input.flag() {
            let credential = *input.choose(proto::CREDENTIALS);
            let username = self.credentials.signer(credential, self.unix()).username;
            self.server.delete_user(&username);
        } else {
            let ids: Vec<AllocId> = self
                .server
                .allocations_with_ids(self.now)
                .map(|(id, _)| id)
                .collect();
            if !ids.is_empty() {
                let alloc = ids[input.pick(ids.len())];
                assert!(self.server.delete_allocation(alloc));
                assert!(!self.server.delete_allocation(alloc), "deleted once only");
            }
        }
    }

    /// The I/O layer reports on a Connect: opened (the peer connection then waits for its
    /// ConnectionBind), failed, or a peer connection closed.
    fn connect_result(&mut self, input: &mut Input<'_>) {
        if self.connects.is_empty() {
            return;
        }
        let (alloc, id) = self.connects.swap_remove(input.pick(self.connects.len()));
        match input.byte() % 3 {
            0 | 1 => {
                let connected = input.flag();
                let owner = self.allocation_tuple(alloc);
                let seen: Seen = self
                    .server
                    .connect_result(alloc, id, connected, &mut self.out)
                    .into();
                if let Seen::ToClient(tuple, data) = seen {
                    assert_eq!(Some(tuple), owner);
                    self.response(tuple, None, &data);
                    if connected {
                        self.file_connection(alloc, id, tuple);
                    }
                }
            }
            _ => {
                self.server.connection_closed(alloc, id);
                self.registry.pending.remove(&id);
            }
        }
    }

    fn file_connection(&mut self, alloc: AllocId, id: u32, control: FiveTuple) {
        if let Some(username) = self.server.allocation_username(alloc) {
            let entry = (username.into(), control.client);
            self.registry.pending.insert(id, entry);
            self.connection_ids.push(id);
        }
    }

    /// A peer connects to a TCP allocation's relayed address.
    fn connection_attempt(&mut self, input: &mut Input<'_>) {
        let Some(alloc) = self.nth_allocation(input, RelayTransport::Tcp) else {
            return;
        };
        let peer = proto::peer(input.pick(proto::PEERS.len()));
        let owner = self.allocation_tuple(alloc).unwrap();
        let accepted = self
            .server
            .connection_attempt(alloc, peer, &mut self.out)
            .map(|(id, data)| (id, data.to_vec()));
        if let Some((id, data)) = accepted {
            self.check_peer(alloc, peer, "peer connection from");
            let indication = Message::parse(&data).expect("a well-formed ConnectionAttempt");
            assert_eq!(indication.method(), Method::CONNECTION_ATTEMPT);
            self.file_connection(alloc, id, owner);
        }
    }

    /// A ConnectionBind on a stream 5-tuple, looked up in the harness's registry.
    fn connection_bind(&mut self, input: &mut Input<'_>) {
        let tuple = tuple(input.pick(CLIENTS.len()));
        let tid = self.tid(input);
        let unix = self.unix();
        let signer = proto::read_signer(input, &self.credentials, unix);
        let nonce = proto::read_nonce(input, &self.nonces, tuple.client, unix);
        let signing = Signing {
            signer: signer.as_ref(),
            nonce,
            realm: proto::REALM.as_bytes(),
            sha256: false,
            fingerprint: input.flag(),
        };
        let ids = self.connection_ids.clone();
        let Some(message) = proto::build_message(
            input,
            Method::CONNECTION_BIND,
            Class::Request,
            tid,
            &signing,
            &ids,
        ) else {
            return;
        };
        self.note_signed(tuple, signer.as_ref());
        let seen: Seen = self
            .server
            .connection_bind(self.now, tuple, &message, &mut self.registry, &mut self.out)
            .into();
        match seen {
            Seen::ToClient(to, data) => {
                assert_eq!(to, tuple);
                let success = Message::parse(&data).unwrap().class() == Class::Success;
                assert!(
                    !success
                        || (tuple.transport.is_stream()
                            && self.server.allocation_on(&tuple).is_none()),
                    "ConnectionBind succeeds only on a stream without an allocation"
                );
                self.response(tuple, None, &data);
            }
            Seen::Nothing => {}
            _ => panic!("a ConnectionBind is answered or dropped"),
        }
    }

    /// Applies the core's events as the I/O layer would.
    fn events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            tern_fuzz::trace!("  event {event:?}");
            match event {
                Event::Released { alloc, .. } => {
                    self.permissions.remove(&alloc);
                    self.relay_transport.remove(&alloc);
                    self.connects.retain(|(a, _)| *a != alloc);
                    self.offloaded.retain(|(a, _)| *a != alloc);
                    if let Some(i) = self.binding.iter().position(|r| r.alloc == alloc) {
                        self.binding.swap_remove(i);
                        self.ended_pending += 1;
                    }
                }
                Event::ConnectPeer {
                    alloc,
                    peer,
                    connection_id,
                } => {
                    // Connect installs the permission, then asks for the connection.
                    let lifetime = self.in_force[0].permission_lifetime;
                    self.permissions
                        .entry(alloc)
                        .or_default()
                        .insert(peer.ip(), self.now + lifetime);
                    self.check_peer(alloc, peer, "Connect");
                    assert_eq!(self.relay_transport.get(&alloc), Some(&RelayTransport::Tcp));
                    self.connects.push((alloc, connection_id));
                }
                Event::ClosePeerConnection {
                    alloc,
                    connection_id,
                } => {
                    // As the I/O layer does: one still connecting fails (answered 403), one
                    // waiting for its ConnectionBind closes.
                    if let Some(i) = self
                        .connects
                        .iter()
                        .position(|&c| c == (alloc, connection_id))
                    {
                        self.connects.swap_remove(i);
                        let seen: Seen = self
                            .server
                            .connect_result(alloc, connection_id, false, &mut self.out)
                            .into();
                        if let Seen::ToClient(tuple, data) = seen {
                            self.response(tuple, None, &data);
                        }
                    } else {
                        self.server.connection_closed(alloc, connection_id);
                        self.registry.pending.remove(&connection_id);
                    }
                }
                Event::Offload(offload) => {
                    // Only what the server itself would relay now: a UDP allocation, no
                    // bandwidth limit, a permitted peer with a live permission.
                    assert_eq!(
                        self.relay_transport.get(&offload.alloc),
                        Some(&RelayTransport::Udp)
                    );
                    assert_eq!(self.in_force[0].max_bps, 0, "offloaded under max-bps");
                    match offload.what {
                        Offloaded::Channel { peer, .. } => {
                            self.check_peer(offload.alloc, peer, "offloaded channel")
                        }
                        Offloaded::Permission { peer } => {
                            self.check_permission(offload.alloc, peer, "offloaded permission")
                        }
                    }
                    self.offloaded.insert((offload.alloc, offload.what.key()));
                }
                Event::Unoffload { alloc, what } => {
                    self.offloaded.remove(&(alloc, what));
                }
            }
        }
    }

    /// The invariants that hold between any two steps.
    fn check(&self) {
        let live = self.server.allocation_count();
        let counters = self.server.counters();
        for (alloc, info) in self.server.allocations_with_ids(self.now) {
            assert!(
                self.signed.contains(&(info.tuple, info.username.clone())),
                "allocation {alloc:?} of {} on {:?}, which never authenticated as that user",
                info.username,
                info.tuple
            );
            if let Some(max) = self.max_permissions.filter(|&m| m > 0) {
                assert!(
                    info.permissions <= max as usize,
                    "{} permissions",
                    info.permissions
                );
            }
            if let Some(max) = self.max_channels.filter(|&m| m > 0) {
                assert!(info.channels <= max as usize, "{} channels", info.channels);
            }
            assert_eq!(self.server.allocation_on(&info.tuple), Some(alloc));
        }
        let by_transport: u64 = counters.allocations_by_transport.iter().sum();
        assert_eq!(by_transport, live as u64, "tern_allocations gauge");
        assert_eq!(self.quotas.total(), live, "quota slots held");
        let answered: u64 = counters.requests.iter().flatten().sum();
        assert_eq!(
            answered, self.responses,
            "tern_requests against responses sent"
        );
        let relayed = &counters.relayed_packets;
        assert_eq!(relayed[Direction::ToPeer.index()], self.to_peer);
        assert_eq!(relayed[Direction::ToClient.index()], self.to_client);
        if self.binding.is_empty() {
            let ended = counters.allocations_expired
                + counters.allocations_deleted
                + counters.allocations_revoked;
            assert_eq!(
                counters.allocations_created + self.ended_pending,
                ended + live as u64,
                "allocations created and ended against live ones"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut run = Run::new(input.byte());
    while !input.is_empty() {
        run.step(&mut input);
    }
    // At the end every allocation expires, and nothing stays behind.
    run.now += Duration::from_secs(7 * 86_400);
    run.run_timers();
    while let Some(request) = run.binding.pop() {
        let _ = run.server.relay_bound(
            run.now,
            request.alloc,
            Err(RelayError::NoPorts),
            None,
            &mut run.out,
        );
    }
    run.events();
    assert_eq!(
        run.server.allocation_count(),
        0,
        "allocations outlive their lifetime"
    );
    assert_eq!(
        run.quotas.total(),
        0,
        "quota slots outlive their allocations"
    );
});
