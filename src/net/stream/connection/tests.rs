//! The connection state machine with injected time: no sockets, no clock, no sleeping. The
//! harness plays the task (acting on outputs, binding relays, reading what the client gets).

use super::*;
use crate::auth::{long_term_key, mint, Authenticator, LongTermKey, NonceMint};
use crate::net::relay::DATAGRAM_BUFFER;
use crate::net::stream::buffers::{INITIAL_BUFFER, MAX_FRAME};
use crate::policy::{PeerPolicy, Quotas};
use crate::stun::{attr, MessageWriter};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

const SECRET: &str = "connection-test-secret";
const REALM: &str = "tern";
const UNIX: u64 = 1_700_000_000;
const IDLE: Duration = Duration::from_secs(10);
const PARTIAL: Duration = Duration::from_secs(4);
const LIFETIME: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);
const CLIENT_QUEUE_LIMIT: usize = 128 * 1024;
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn wall_clock() -> u64 {
    UNIX
}

const CLIENT: &str = "192.0.2.7:40000";
const SERVER: &str = "192.0.2.1:3478";
const RELAY: &str = "192.0.2.1:50000";
const PEER: &str = "198.51.100.9:7000";

/// RFC 6062 peer connections waiting for a ConnectionBind, by id; counts lookups.
#[derive(Default)]
struct Peers {
    pending: RefCell<HashMap<u32, (Box<str>, SocketAddr)>>,
    asked: Cell<usize>,
}

impl PeerConnections for Rc<Peers> {
    type Claimed = u32;

    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)> {
        self.asked.set(self.asked.get() + 1);
        self.pending.borrow().get(&id).cloned()
    }

    fn claim(&self, id: u32) -> Option<u32> {
        self.pending.borrow_mut().remove(&id).map(|_| id)
    }
}

/// An output, owned, for assertions.
#[derive(Debug, PartialEq)]
enum Seen {
    Identified {
        client: SocketAddr,
        tls_prefix: Option<Vec<u8>>,
    },
    ToPeer {
        peer: SocketAddr,
        data: Vec<u8>,
    },
    BindRelay(RelayTransport),
    ConnectPeer {
        peer: SocketAddr,
        connection_id: u32,
    },
    ReleaseRelay,
    ClosePeerConnection(u32),
    HandOff {
        claimed: u32,
        leftover: Vec<u8>,
    },
    Close(CloseReason),
}

impl From<Output<'_, u32>> for Seen {
    fn from(output: Output<'_, u32>) -> Self {
        match output {
            Output::Identified { client, tls_prefix } => Seen::Identified { client, tls_prefix },
            Output::ToPeer { peer, data } => Seen::ToPeer {
                peer,
                data: data.to_vec(),
            },
            Output::BindRelay(request) => Seen::BindRelay(request.transport),
            Output::ConnectPeer {
                peer,
                connection_id,
            } => Seen::ConnectPeer {
                peer,
                connection_id,
            },
            Output::ReleaseRelay => Seen::ReleaseRelay,
            Output::ClosePeerConnection { connection_id } => {
                Seen::ClosePeerConnection(connection_id)
            }
            Output::HandOff(handoff) => Seen::HandOff {
                claimed: handoff.claimed,
                leftover: handoff.leftover,
            },
            Output::Close(reason) => Seen::Close(reason),
        }
    }
}

struct Harness {
    conn: Connection<Rc<Peers>>,
    peers: Rc<Peers>,
    stats: Arc<StreamStats>,
    now: Instant,
    /// What the client has read and not yet cut into frames.
    received: Vec<u8>,
    username: String,
    key: LongTermKey,
    nonce: Vec<u8>,
    next_tid: u8,
}

fn core(lifetime: Duration) -> Arc<CoreConfig> {
    Arc::new(core_with(lifetime, |_| {}))
}

/// The test configuration, with `adjust` applied.
fn core_with(lifetime: Duration, adjust: impl FnOnce(&mut CoreConfig)) -> CoreConfig {
    let auth = Authenticator::new(REALM, &[SECRET.to_string()], &[], 86400);
    // The test peers live in a documentation range, denied unless allowed.
    let allowed = ["198.51.100.0/24".parse().unwrap()];
    let mut core = CoreConfig::new(auth, PeerPolicy::new(&[], &allowed, true));
    core.default_lifetime = lifetime;
    core.max_lifetime = lifetime.max(core.max_lifetime);
    adjust(&mut core);
    core
}

const PLAIN: Accepts = Accepts {
    proxy: false,
    tls: false,
    plain: true,
};

impl Harness {
    fn new(accepts: Accepts, lifetime: Duration) -> Self {
        Harness::with_core(accepts, core(lifetime))
    }

    fn with_core(accepts: Accepts, core: Arc<CoreConfig>) -> Self {
        let now = Instant::now();
        let server = Server::new(core, NonceMint::new(), Arc::new(Quotas::new()), now, UNIX);
        let settings = Settings {
            idle_timeout: IDLE,
            partial_frame_timeout: PARTIAL,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
            queue_limit: CLIENT_QUEUE_LIMIT,
            accepts,
            wall_clock,
        };
        let stats = Arc::new(StreamStats::default());
        let peers = Rc::new(Peers::default());
        let conn = Connection::new(
            now,
            server,
            addr(CLIENT),
            addr(SERVER),
            settings,
            stats.clone(),
            peers.clone(),
        );
        let minted = mint(SECRET, Some("alice"), 86400, UNIX);
        Harness {
            conn,
            peers,
            stats,
            now,
            received: Vec::new(),
            key: long_term_key(&minted.username, REALM, &minted.password),
            username: minted.username,
            nonce: Vec::new(),
            next_tid: 0,
        }
    }

    fn plain() -> Self {
        Harness::new(PLAIN, LIFETIME)
    }

    /// The client sends `bytes`; the connection takes them as it can, and the harness acts on
    /// the outputs as the task would. The outputs.
    fn send(&mut self, bytes: &[u8]) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut rest = bytes;
        loop {
            let taken = self.conn.handle_client_bytes(self.now, rest);
            rest = &rest[taken..];
            let acted = self.act(&mut seen);
            if rest.is_empty() || (taken == 0 && !acted) {
                break;
            }
        }
        seen
    }

    /// Acts on every output; whether there was one. Relays bind at [`RELAY`].
    /// Turn after turn while frames wait for one, as the task's wake-ups would.
    fn act(&mut self, seen: &mut Vec<Seen>) -> bool {
        let mut any = false;
        loop {
            self.conn.start_turn();
            while let Some(output) = self.conn.poll_output(self.now) {
                any = true;
                if let Output::BindRelay(request) = output {
                    seen.push(Seen::BindRelay(request.transport));
                    self.conn
                        .relay_bound(self.now, Ok(BoundRelay::from(addr(RELAY))));
                } else {
                    seen.push(output.into());
                }
            }
            if !self.conn.yielding() {
                return any;
            }
        }
    }

    /// Time passes by `by`, the harness running the timers as the task would; the outputs.
    fn wait(&mut self, by: Duration) -> Vec<Seen> {
        let until = self.now + by;
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            match self.conn.poll_timeout() {
                Some(deadline) if deadline <= until => {
                    self.now = self.now.max(deadline);
                    self.conn.handle_timeout(self.now);
                    self.act(&mut seen);
                }
                _ => {
                    self.now = until;
                    return seen;
                }
            }
        }
        panic!(
            "the deadline does not move on: {:?}",
            self.conn.poll_timeout()
        );
    }

    /// The client reads all that is queued for it; the whole frames it has now.
    fn read(&mut self) -> Vec<Vec<u8>> {
        let bytes = self.conn.client_bytes().to_vec();
        self.conn.client_bytes_written(bytes.len());
        self.received.extend(bytes);
        let mut frames = Vec::new();
        while let Some(len) = stun::frame_len(&self.received, true) {
            if len > self.received.len() {
                break;
            }
            frames.push(self.received.drain(..len).collect());
        }
        frames
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        [self.next_tid; 12]
    }

    /// A request with the client's credentials (once it has a nonce).
    fn request_bytes(&mut self, method: Method, attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        let tid = self.tid();
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, &tid);
        attrs(&mut w);
        if !self.nonce.is_empty() {
            w.add_bytes(attr::USERNAME, self.username.as_bytes());
            w.add_bytes(attr::REALM, REALM.as_bytes());
            w.add_bytes(attr::NONCE, &self.nonce);
            w.add_message_integrity(&self.key);
        }
        w.finish().unwrap().to_vec()
    }

    /// Sends an authenticated request and reads its response (learning the nonce first).
    fn request(&mut self, method: Method, attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        for _ in 0..2 {
            let request = self.request_bytes(method, attrs);
            self.send(&request);
            let response = self.read().pop().expect("a response");
            let msg = Message::parse(&response).unwrap();
            match msg.error_code() {
                Some((401, _)) => self.nonce = msg.get(attr::NONCE).unwrap().to_vec(),
                _ => return response,
            }
        }
        panic!("no nonce accepted");
    }

    fn succeeds(&mut self, method: Method, attrs: &dyn Fn(&mut MessageWriter<'_>)) {
        let response = self.request(method, attrs);
        let msg = Message::parse(&response).unwrap();
        assert_eq!(msg.class(), Class::Success, "{:?}", msg.error_code());
    }

    /// An allocation with a permission for [`PEER`].
    fn allocate(&mut self) -> Vec<Seen> {
        self.send(&binding(0)); // past the prelude
        self.read();
        let request = self.request_bytes(Method::ALLOCATE, &|_| {});
        self.send(&request); // 401: learn the nonce
        let challenge = self.read().pop().unwrap();
        self.nonce = Message::parse(&challenge)
            .unwrap()
            .get(attr::NONCE)
            .unwrap()
            .to_vec();
        let request = self.request_bytes(Method::ALLOCATE, &|w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        let seen = self.send(&request);
        let response = self.read().pop().unwrap();
        assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
        self.succeeds(Method::CREATE_PERMISSION, &|w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
        });
        seen
    }

    /// A datagram of `len` bytes from [`PEER`] on the relay.
    fn peer_sends(&mut self, len: usize) {
        let mut buf = vec![0u8; DATAGRAM_BUFFER];
        buf[DATA_INDICATION_MAX_PREFIX..][..len].fill(0xAB);
        self.conn
            .handle_peer_datagram(self.now, addr(PEER), &mut buf, len);
    }
}

fn binding(n: u8) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::BINDING,
        Class::Request,
        &[0xB0u8.wrapping_add(n); 12],
    );
    w.add_fingerprint();
    w.finish().unwrap().to_vec()
}

fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = channel.to_be_bytes().to_vec();
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().div_ceil(4) * 4, 0);
    frame
}

fn identified() -> Seen {
    Seen::Identified {
        client: addr(CLIENT),
        tls_prefix: None,
    }
}

fn is_success(frame: &[u8]) -> bool {
    Message::parse(frame).is_ok_and(|m| m.class() == Class::Success)
}

// ----- stream-idle-timeout -----

#[test]
fn a_silent_connection_is_closed_at_the_idle_timeout() {
    let mut h = Harness::plain();
    assert_eq!(h.wait(IDLE - MS), vec![]);
    assert_eq!(h.wait(MS), vec![Seen::Close(CloseReason::IdleTimeout)]);
    assert_eq!(h.conn.poll_timeout(), None, "closed: nothing more is due");
}

#[test]
fn the_idle_timeout_holds_for_the_whole_life_of_a_connection_without_allocation() {
    let mut h = Harness::plain();
    assert_eq!(h.send(&binding(1)), vec![identified()]);
    assert!(h.read().iter().all(|f| is_success(f)));
    // Valid messages keep it open, each one restarting the clock.
    for n in 2..6 {
        assert_eq!(h.wait(IDLE - MS), vec![], "round {n}");
        h.send(&binding(n));
        assert_eq!(h.read().len(), 1);
    }
    // After the last one, silence closes it (before, only the first message was timed).
    assert_eq!(h.wait(IDLE - MS), vec![]);
    assert_eq!(h.wait(MS), vec![Seen::Close(CloseReason::IdleTimeout)]);
}

#[test]
fn frames_that_are_not_valid_stun_do_not_keep_a_connection_open() {
    let mut h = Harness::plain();
    h.send(&binding(1));
    h.read();
    let mut broken = binding(2);
    let last = broken.len() - 1;
    broken[last] ^= 0xFF; // FINGERPRINT no longer matches
    for _ in 0..3 {
        assert_eq!(h.wait(Duration::from_secs(3)), vec![]);
        // ChannelData without an allocation, and a message failing its fingerprint.
        h.send(&channel_data(0x4000, b"nobody"));
        h.send(&broken);
        assert!(h.read().is_empty(), "neither is answered");
    }
    // 9 s after the valid Binding.
    assert_eq!(
        h.wait(Duration::from_secs(1)),
        vec![Seen::Close(CloseReason::IdleTimeout)]
    );
}

#[test]
fn an_allocation_keeps_its_connection_until_it_ends_then_the_idle_clock_restarts() {
    let mut h = Harness::plain();
    assert_eq!(
        h.allocate(),
        vec![Seen::BindRelay(RelayTransport::Udp)],
        "the Allocate asked for a relay"
    );
    // No traffic at all: the allocation, not the idle timeout, decides.
    assert_eq!(h.wait(LIFETIME - MS), vec![]);
    assert_eq!(h.wait(MS), vec![Seen::ReleaseRelay], "expired on time");
    assert_eq!(h.wait(IDLE - MS), vec![]);
    assert_eq!(h.wait(MS), vec![Seen::Close(CloseReason::IdleTimeout)]);
}

#[test]
fn the_idle_timeout_covers_the_first_bytes_of_a_tls_connection() {
    let tls = Accepts {
        proxy: false,
        tls: true,
        plain: true,
    };
    let mut h = Harness::new(tls, LIFETIME);
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
    assert_eq!(
        h.send(&hello),
        vec![Seen::Identified {
            client: addr(CLIENT),
            tls_prefix: Some(hello.to_vec()),
        }]
    );
    assert!(h.conn.read_buffer().is_none(), "the handshake reads now");
    // A handshake that never finishes is cut by the idle deadline.
    assert_eq!(h.wait(IDLE - MS), vec![]);
    assert_eq!(h.wait(MS), vec![Seen::Close(CloseReason::IdleTimeout)]);
}

// ----- partial-frame-timeout -----

#[test]
fn a_started_frame_must_complete_within_the_partial_frame_timeout() {
    let mut h = Harness::plain();
    h.send(&binding(1));
    h.read();
    h.send(&binding(2)[..10]);
    assert_eq!(h.wait(PARTIAL - MS), vec![]);
    assert_eq!(
        h.wait(MS),
        vec![Seen::Close(CloseReason::PartialFrameTimeout)]
    );
}

#[test]
fn slow_frames_that_each_complete_in_time_are_served() {
    let mut h = Harness::plain();
    h.send(&binding(1));
    h.read();
    for n in 2..6 {
        let request = binding(n);
        h.send(&request[..8]);
        assert_eq!(h.wait(PARTIAL - MS), vec![], "round {n}");
        h.send(&request[8..]);
        assert_eq!(h.read().len(), 1, "round {n}");
    }
    // A whole frame and the start of the next: the next one's clock starts now.
    let mut one_and_a_half = binding(7);
    one_and_a_half.extend_from_slice(&binding(8)[..5]);
    h.send(&one_and_a_half);
    assert_eq!(h.read().len(), 1);
    assert_eq!(h.wait(PARTIAL - MS), vec![]);
    h.send(&binding(8)[5..]);
    assert_eq!(h.read().len(), 1);
}

// ----- a client that stops reading -----

#[test]
fn a_client_that_stops_reading_keeps_its_timers_and_is_cut_after_the_write_stall() {
    let lifetime = Duration::from_secs(5);
    let mut h = Harness::new(PLAIN, lifetime);
    h.allocate();
    h.read();
    // A peer floods; the client reads nothing. The queue fills to its bound, the rest drops.
    for _ in 0..200 {
        h.peer_sends(1000);
    }
    let queued = h.conn.client_bytes().len();
    assert!(queued <= CLIENT_QUEUE_LIMIT - REPLY_RESERVE, "{queued}");
    assert!(queued > CLIENT_QUEUE_LIMIT / 2, "{queued}");
    // Requests still get their replies queued (the reserve), and the admin API its answers.
    let refresh = h.request_bytes(Method::REFRESH, &|_| {});
    h.send(&refresh);
    assert!(
        h.conn.client_bytes().len() > queued,
        "the Refresh is answered"
    );
    let listed = h.conn.allocations(h.now);
    assert_eq!(listed.len(), 1);
    // Timers still run: the allocation ends on time, its relay is released.
    assert_eq!(h.wait(lifetime - MS), vec![]);
    assert_eq!(h.wait(MS), vec![Seen::ReleaseRelay]);
    assert!(h.conn.allocations(h.now).is_empty());
    // The dropped datagrams are counted (folded with the timers).
    let dropped = h.stats.client_queue_drops.load(Relaxed);
    assert!(dropped >= 80, "{dropped}");
    // Full since the flood: cut WRITE_STALL_TIMEOUT after.
    assert_eq!(h.wait(WRITE_STALL_TIMEOUT - lifetime - MS), vec![]);
    assert_eq!(h.wait(MS), vec![Seen::Close(CloseReason::WriteStalled)]);
}

#[test]
fn a_client_that_reads_again_is_not_cut() {
    let mut h = Harness::plain();
    h.allocate();
    for _ in 0..200 {
        h.peer_sends(1000);
    }
    assert!(
        h.stats.client_queue_drops.load(Relaxed) == 0,
        "not folded yet"
    );
    assert_eq!(h.wait(WRITE_STALL_TIMEOUT - MS), vec![]);
    let frames = h.read();
    assert!(frames.len() > 50, "{}", frames.len());
    assert_eq!(h.wait(WRITE_STALL_TIMEOUT * 2), vec![]);
    // The relayed data went out framed: Data indications carrying the payload.
    let msg = Message::parse(&frames[0]).unwrap();
    assert_eq!(msg.method(), Method::DATA);
    assert_eq!(msg.get(attr::DATA).unwrap(), &[0xAB; 1000][..]);
}

#[test]
fn requests_wait_in_the_framing_buffer_while_their_replies_would_not_fit() {
    let mut h = Harness::plain();
    h.allocate();
    for _ in 0..200 {
        h.peer_sends(1000);
    }
    // Far more Bindings than the reserve holds replies for; the client reads nothing.
    let burst: Vec<u8> = (0..1000).flat_map(|n| binding(n as u8)).collect();
    let mut offered = 0;
    let mut seen = Vec::new();
    loop {
        let taken = h.conn.handle_client_bytes(h.now, &burst[offered..]);
        offered += taken;
        h.act(&mut seen);
        if taken == 0 {
            break;
        }
    }
    assert!(offered < burst.len(), "the stream is held back");
    assert!(h.conn.client_bytes().len() <= CLIENT_QUEUE_LIMIT);
    assert!(h.conn.read_buffer().is_none());
    // As the client reads, the rest is answered, every request once.
    let bindings = |frames: Vec<Vec<u8>>| {
        frames
            .iter()
            .filter(|f| Message::parse(f).is_ok_and(|m| m.method() == Method::BINDING))
            .count()
    };
    let mut answered = 0;
    loop {
        answered += bindings(h.read());
        if offered == burst.len() && h.conn.client_bytes().is_empty() {
            break;
        }
        offered += h.conn.handle_client_bytes(h.now, &burst[offered..]);
        h.act(&mut seen);
    }
    assert_eq!(answered, 1000);
    assert_eq!(seen, vec![]);
}

// ----- relaying, admin, ConnectionBind -----

#[test]
fn client_data_goes_out_as_datagrams_for_the_peer() {
    let mut h = Harness::plain();
    h.allocate();
    h.succeeds(Method::CHANNEL_BIND, &|w| {
        w.add_u32(attr::CHANNEL_NUMBER, 0x4001 << 16);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    let mut both = channel_data(0x4001, b"hello");
    both.extend(channel_data(0x4001, b"again!"));
    assert_eq!(
        h.send(&both),
        vec![
            Seen::ToPeer {
                peer: addr(PEER),
                data: b"hello".to_vec()
            },
            Seen::ToPeer {
                peer: addr(PEER),
                data: b"again!".to_vec()
            },
        ]
    );
}

#[test]
fn the_admin_api_deletes_the_allocation_and_the_connection_closes() {
    let mut h = Harness::plain();
    h.allocate();
    let (id, info) = h.conn.allocations(h.now).pop().unwrap();
    assert_eq!(info.tuple.client, addr(CLIENT));
    let other = AllocId {
        index: id.index,
        generation: id.generation + 1,
    };
    assert!(!h.conn.delete_allocation(h.now, other));
    assert!(h.conn.delete_allocation(h.now, id));
    let mut seen = Vec::new();
    h.act(&mut seen);
    assert_eq!(
        seen,
        vec![Seen::ReleaseRelay, Seen::Close(CloseReason::AdminDeleted)]
    );
}

#[test]
fn connection_bind_is_told_from_the_decoded_message_and_hands_off_after_its_response() {
    let mut h = Harness::plain();
    h.send(&binding(1));
    h.read();
    h.peers
        .pending
        .borrow_mut()
        .insert(7, (h.username.clone().into(), addr("192.0.2.8:1")));
    // The type bytes of a ConnectionBind, but not a valid message: no lookup, no bind.
    let mut broken = {
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, Method::CONNECTION_BIND, Class::Request, &[9; 12]);
        w.add_u32(attr::CONNECTION_ID, 7);
        w.add_fingerprint();
        w.finish().unwrap().to_vec()
    };
    let last = broken.len() - 1;
    broken[last] ^= 0xFF;
    assert_eq!(h.send(&broken), vec![]);
    assert_eq!(h.peers.asked.get(), 0);
    assert!(h.read().is_empty());
    // A real one (after the 401 for the nonce), with bytes for the peer behind it.
    let request = h.request_bytes(Method::CONNECTION_BIND, &|w| {
        w.add_u32(attr::CONNECTION_ID, 7);
    });
    h.send(&request);
    let challenge = h.read().pop().unwrap();
    h.nonce = Message::parse(&challenge)
        .unwrap()
        .get(attr::NONCE)
        .unwrap()
        .to_vec();
    let mut bytes = h.request_bytes(Method::CONNECTION_BIND, &|w| {
        w.add_u32(attr::CONNECTION_ID, 7);
    });
    bytes.extend_from_slice(b"early bytes");
    assert_eq!(h.send(&bytes), vec![], "not before the response is out");
    assert!(
        h.conn.read_buffer().is_none(),
        "nothing more is read as STUN"
    );
    let response = h.read().pop().unwrap();
    assert!(is_success(&response));
    let mut seen = Vec::new();
    h.act(&mut seen);
    assert_eq!(
        seen,
        vec![Seen::HandOff {
            claimed: 7,
            leftover: b"early bytes".to_vec()
        }]
    );
}

// ----- the prelude -----

fn proxy_v2(source: &str, destination: &str) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (addr(source), addr(destination)) else {
        unreachable!()
    };
    let mut header = proxy_protocol::V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&src.ip().octets());
    header.extend_from_slice(&dst.ip().octets());
    header.extend_from_slice(&src.port().to_be_bytes());
    header.extend_from_slice(&dst.port().to_be_bytes());
    header
}

#[test]
fn a_trusted_proxy_header_names_the_client() {
    let trusted = Accepts {
        proxy: true,
        tls: false,
        plain: true,
    };
    let mut h = Harness::new(trusted, LIFETIME);
    let mut bytes = proxy_v2("203.0.113.9:4242", SERVER);
    bytes.extend(binding(1));
    let real = addr("203.0.113.9:4242");
    assert_eq!(
        h.send(&bytes),
        vec![Seen::Identified {
            client: real,
            tls_prefix: None
        }]
    );
    let response = h.read().pop().unwrap();
    let msg = Message::parse(&response).unwrap();
    let mapped = stun::decode_xor_address(
        msg.get(attr::XOR_MAPPED_ADDRESS).unwrap(),
        msg.transaction_id(),
    );
    assert_eq!(mapped.unwrap(), real);
    assert_eq!(h.conn.tuple().client, real);
}

#[test]
fn first_bytes_that_are_not_accepted_close_the_connection() {
    let untrusted = proxy_v2("203.0.113.9:4242", SERVER);
    let tls_on_plain_only = [0x16, 0x03, 0x01, 0x00];
    for bytes in [&untrusted[..], &[0xFF; 24][..], &tls_on_plain_only[..]] {
        let mut h = Harness::plain();
        let seen = h.send(bytes);
        assert!(
            matches!(seen[..], [Seen::Close(CloseReason::Protocol(_))]),
            "{bytes:?}: {seen:?}"
        );
    }
    let mut h = Harness::plain();
    h.conn.handle_client_eof();
    let mut seen = Vec::new();
    h.act(&mut seen);
    assert_eq!(
        seen,
        vec![Seen::Close(CloseReason::Protocol(
            "closed before sending anything"
        ))]
    );
}

#[test]
fn a_tls_connection_serves_turn_after_its_handshake() {
    let tls = Accepts {
        proxy: false,
        tls: true,
        plain: false,
    };
    let mut h = Harness::new(tls, LIFETIME);
    h.send(&[0x16, 3, 1]);
    h.conn.tls_established();
    assert_eq!(h.conn.tuple().transport, Transport::Tls);
    assert_eq!(h.send(&binding(1)), vec![]);
    assert!(is_success(&h.read().pop().unwrap()));
}

// ----- buffers and counters -----

#[test]
fn the_read_buffer_shrinks_back_after_a_64_kib_frame() {
    let mut h = Harness::plain();
    h.send(&binding(1));
    h.read();
    let mut large = channel_data(0x4000, &[1u8; 65535]);
    large.extend_from_slice(&binding(2)[..4]);
    h.send(&large);
    assert_eq!(h.conn.input.capacity(), INITIAL_BUFFER);
    assert!(h.conn.input.pending().len() == 4);
    // While it arrives, it never takes more than one maximal frame.
    let mut h = Harness::plain();
    h.send(&binding(1));
    let large = channel_data(0x4000, &[1u8; 65535]);
    h.send(&large[..60_000]);
    assert!(h.conn.input.capacity() <= MAX_FRAME);
    // `tern_stream_read_buffer_bytes` follows the buffer up and back down.
    let gauge = |h: &Harness| h.stats.read_buffers.load(Relaxed) as usize;
    assert_eq!(gauge(&h), h.conn.input.capacity());
    assert!(gauge(&h) >= 60_000);
    h.send(&large[60_000..]);
    assert_eq!(h.conn.input.capacity(), INITIAL_BUFFER);
    assert_eq!(gauge(&h), INITIAL_BUFFER);
    let stats = h.stats.clone();
    drop(h);
    assert_eq!(stats.read_buffers.load(Relaxed), 0);
}

#[test]
fn counters_fold_within_the_fold_interval_not_per_packet() {
    let mut h = Harness::plain();
    h.send(&binding(1));
    h.read();
    // A fold is due soon after packet work...
    let due = h.conn.poll_timeout().unwrap();
    assert!(due <= h.now + Duration::from_millis(500));
    assert!(due < h.now + IDLE);
    // ...and after it, the next deadline is the idle timeout.
    h.wait(Duration::from_millis(500));
    assert_eq!(
        h.conn.poll_timeout(),
        Some(h.now - Duration::from_millis(500) + IDLE)
    );
}

#[test]
fn a_turn_handles_at_most_its_budget_of_frames_then_the_rest_waits() {
    let mut h = Harness::plain();
    h.send(&binding(0));
    assert_eq!(h.read().len(), 1);
    // Two turns' worth of requests in one write.
    let count = 2 * FRAMES_PER_TURN as usize;
    let burst: Vec<u8> = (0..count).flat_map(|n| binding(n as u8)).collect();
    assert_eq!(h.conn.handle_client_bytes(h.now, &burst), burst.len());
    h.conn.start_turn();
    while h.conn.poll_output(h.now).is_some() {}
    assert_eq!(
        h.read().len(),
        FRAMES_PER_TURN as usize,
        "one turn's budget"
    );
    assert!(h.conn.yielding(), "frames wait for the next turn");
    assert!(
        h.conn.read_buffer().is_none(),
        "and nothing more is read meanwhile"
    );
    h.conn.start_turn();
    while h.conn.poll_output(h.now).is_some() {}
    assert_eq!(h.read().len(), FRAMES_PER_TURN as usize);
    assert!(!h.conn.yielding(), "all answered");
    assert!(h.conn.read_buffer().is_some());
}

// ----- bandwidth -----

const MAX_BPS: u64 = 10_000;

fn max_bps() -> Arc<CoreConfig> {
    Arc::new(core_with(LIFETIME, |core| core.max_bps = MAX_BPS))
}

/// A client with an allocation and channel 0x4001 to [`PEER`].
fn with_channel(core: Arc<CoreConfig>) -> Harness {
    let mut h = Harness::with_core(PLAIN, core);
    h.allocate();
    h.succeeds(Method::CHANNEL_BIND, &|w| {
        w.add_u32(attr::CHANNEL_NUMBER, 0x4001 << 16);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
    });
    h
}

/// `count` ChannelData frames of 1000 bytes on channel 0x4001, each filled with its number.
fn numbered_frames(count: u8) -> Vec<u8> {
    (0..count)
        .flat_map(|i| channel_data(0x4001, &[i; 1000]))
        .collect()
}

/// The client writes `rest` as fast as the connection reads it (what it takes is cut off
/// `rest`); the numbers of the frames relayed to the peer meanwhile.
fn feed(h: &mut Harness, rest: &mut &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    loop {
        let taken = h.conn.handle_client_bytes(h.now, rest);
        *rest = &rest[taken..];
        if !h.act(&mut seen) && taken == 0 {
            break;
        }
    }
    seen.into_iter()
        .map(|output| match output {
            Seen::ToPeer { peer, data } if peer == addr(PEER) => data[0],
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Runs the connection's timers deadline after deadline, feeding `rest` after each, until
/// `count` frames in all went to the peer; their numbers in order.
fn feed_until(h: &mut Harness, rest: &mut &[u8], mut relayed: Vec<u8>, count: usize) -> Vec<u8> {
    for _ in 0..100_000 {
        if relayed.len() >= count {
            return relayed;
        }
        let at = h.conn.poll_timeout().expect("a wake-up while data waits");
        h.now = h.now.max(at);
        h.conn.handle_timeout(h.now);
        relayed.extend(feed(h, rest));
    }
    panic!("{} of {count} relayed", relayed.len());
}

fn dropped(h: &Harness, direction: Direction, limit: crate::turn::BandwidthLimit) -> u64 {
    h.conn.server.counters().bandwidth_dropped_packets[direction.index()][limit.index()]
}

fn paused(h: &Harness, direction: Direction, limit: crate::turn::BandwidthLimit) -> u64 {
    h.stats.bandwidth_paused[direction.index()][limit.index()].load(Relaxed)
}

#[test]
fn client_data_past_max_bps_waits_unread_and_none_is_dropped() {
    use crate::turn::BandwidthLimit::MaxBps;
    let mut h = with_channel(max_bps());
    // 100 KB where a burst is 64 KiB: 65 frames pass at once.
    let frames = numbered_frames(100);
    let mut rest = &frames[..];
    let start = h.now;
    let first = feed(&mut h, &mut rest);
    assert_eq!(first, (0..65).collect::<Vec<u8>>());
    // The 66th waits at the front, and nothing more is read: the client's stream stops.
    assert!(h.conn.read_buffer().is_none());
    assert!(!rest.is_empty());
    assert!(!h.conn.yielding());
    // It wakes up when 1000 bytes are there: 536 were left, 464 more at 10 000 per second.
    assert_eq!(
        h.conn.poll_timeout(),
        Some(start + Duration::from_micros(46_400))
    );
    // The rest follows at the rate, in order, none dropped.
    let relayed = feed_until(&mut h, &mut rest, first, 100);
    assert_eq!(relayed, (0..100).collect::<Vec<u8>>());
    assert!(rest.is_empty());
    let elapsed = h.now - start;
    let expected = Duration::from_secs_f64((100_000.0 - 65_536.0) / MAX_BPS as f64);
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_millis(5),
        "{elapsed:?}"
    );
    assert_eq!(dropped(&h, Direction::ToPeer, MaxBps), 0);
    // Each of the 35 frames past the burst made the connection stop reading once.
    assert_eq!(paused(&h, Direction::ToPeer, MaxBps), 35);
    // Requests behind waiting data keep their order, and are answered.
    let mut h = with_channel(max_bps());
    let mut bytes = numbered_frames(70);
    bytes.extend(binding(9));
    let mut rest = &bytes[..];
    let relayed = feed(&mut h, &mut rest);
    assert_eq!(relayed.len(), 65);
    assert!(h.read().is_empty(), "the Binding waits behind the data");
    feed_until(&mut h, &mut rest, relayed, 70);
    h.wait(Duration::ZERO);
    assert!(is_success(&h.read().pop().expect("the Binding answered")));
}

#[test]
fn a_send_indication_past_max_bps_waits_too() {
    let mut h = Harness::with_core(PLAIN, max_bps());
    h.allocate();
    let send = |h: &mut Harness, n: u8| {
        let tid = h.tid();
        let mut buf = vec![0u8; 1200];
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, &tid);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, addr(PEER));
        w.add_bytes(attr::DATA, &[n; 1000]);
        w.finish().unwrap().to_vec()
    };
    let bytes: Vec<u8> = (0..70).flat_map(|n| send(&mut h, n)).collect();
    let mut rest = &bytes[..];
    let relayed = feed(&mut h, &mut rest);
    assert_eq!(relayed.len(), 65);
    let relayed = feed_until(&mut h, &mut rest, relayed, 70);
    assert_eq!(relayed, (0..70).collect::<Vec<u8>>());
    assert_eq!(
        dropped(&h, Direction::ToPeer, crate::turn::BandwidthLimit::MaxBps),
        0
    );
}

#[test]
fn peer_datagrams_past_max_bps_are_dropped_and_counted() {
    use crate::turn::BandwidthLimit::MaxBps;
    let mut h = with_channel(max_bps());
    let mut delivered = 0;
    for _ in 0..100 {
        h.peer_sends(1000);
        delivered += h.read().len();
    }
    // A UDP peer cannot be paused: past the burst, its datagrams are dropped, as over UDP.
    assert_eq!(delivered, 65);
    assert_eq!(dropped(&h, Direction::ToClient, MaxBps), 35);
    assert_eq!(paused(&h, Direction::ToClient, MaxBps), 0);
    assert_eq!(h.stats.client_queue_drops.load(Relaxed), 0);
    h.wait(Duration::from_millis(100));
    h.peer_sends(1000);
    assert_eq!(h.read().len(), 1, "1000 bytes later");
}

#[test]
fn stream_connections_share_one_capacity_pool_and_wait_for_it() {
    use crate::turn::BandwidthLimit::BpsCapacity;
    const CAPACITY: u64 = 20_000;
    let core = Arc::new(core_with(LIFETIME, |core| core.bps_capacity = CAPACITY));
    let mut one = with_channel(core.clone());
    let mut two = with_channel(core);
    two.now = one.now;
    let pool = Arc::new(crate::policy::CapacityPool::new(1, one.now));
    one.conn.server.set_capacity_pool(pool.clone());
    two.conn.server.set_capacity_pool(pool);
    // One burst (64 KiB) between them: the first takes 40 frames, the second what is left.
    let (frames_one, frames_two) = (numbered_frames(40), numbered_frames(60));
    let (mut rest_one, mut rest_two) = (&frames_one[..], &frames_two[..]);
    assert_eq!(feed(&mut one, &mut rest_one).len(), 40);
    let start = two.now;
    let relayed = feed(&mut two, &mut rest_two);
    assert_eq!(relayed.len(), 25);
    assert!(two.conn.read_buffer().is_none(), "the second stops reading");
    // Then the pool's rate: 35 frames more take 35 000 bytes at 20 000 per second.
    let relayed = feed_until(&mut two, &mut rest_two, relayed, 60);
    assert_eq!(relayed, (0..60).collect::<Vec<u8>>());
    let elapsed = two.now - start;
    assert!(
        elapsed >= Duration::from_millis(1700) && elapsed < Duration::from_millis(1800),
        "{elapsed:?}"
    );
    assert_eq!(dropped(&two, Direction::ToPeer, BpsCapacity), 0);
    assert_eq!(paused(&two, Direction::ToPeer, BpsCapacity), 35);
    // The first shares the same pool: it has to wait now too.
    one.now = two.now;
    let more = numbered_frames(1);
    let mut rest = &more[..];
    assert!(feed(&mut one, &mut rest).is_empty());
    assert_eq!(paused(&one, Direction::ToPeer, BpsCapacity), 1);
}

// ----- RFC 6062 and reloads -----

/// A TCP allocation (RFC 6062) with a Connect to [`PEER`] reported open; its connection id.
fn tcp_allocation_with_peer_connection(h: &mut Harness) -> u32 {
    h.send(&binding(0));
    h.read();
    let request = h.request_bytes(Method::ALLOCATE, &|_| {});
    h.send(&request);
    let challenge = h.read().pop().unwrap();
    h.nonce = Message::parse(&challenge)
        .unwrap()
        .get(attr::NONCE)
        .unwrap()
        .to_vec();
    h.succeeds(Method::ALLOCATE, &|w| {
        w.add_bytes(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    let id = connect(h, addr(PEER));
    h.conn.connect_result(h.now, id, true);
    assert!(is_success(&h.read().pop().unwrap()));
    id
}

/// Sends a Connect to `peer`; the connection id the connection asks the task to connect with.
fn connect(h: &mut Harness, peer: SocketAddr) -> u32 {
    let request = h.request_bytes(Method::CONNECT, &|w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    match h.send(&request)[..] {
        [Seen::ConnectPeer {
            peer: asked,
            connection_id,
        }] if asked == peer => connection_id,
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn a_reload_that_denies_a_tcp_peer_closes_its_peer_connections() {
    let mut h = Harness::plain();
    let open = tcp_allocation_with_peer_connection(&mut h);
    let other = addr("198.51.100.10:7000");
    let connecting = connect(&mut h, other);
    // The operator no longer allows the peers' range.
    let denying = core_with(LIFETIME, |core| {
        core.policy = PeerPolicy::new(&[], &[], true);
    });
    h.conn.set_config(Arc::new(denying));
    let mut seen = h.wait(Duration::ZERO);
    seen.sort_by_key(|s| format!("{s:?}"));
    let mut expected = vec![
        Seen::ClosePeerConnection(open),
        Seen::ClosePeerConnection(connecting),
    ];
    expected.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(seen, expected);
    let revoked = h.conn.server.counters().reload_revocations
        [crate::turn::metrics::Revoked::TcpPeerConnection.index()];
    assert_eq!(revoked, 2);
    // The task gives the connecting one up: its Connect is answered 403.
    h.conn.connect_result(h.now, connecting, false);
    let answer = h.read().pop().unwrap();
    assert_eq!(
        Message::parse(&answer)
            .unwrap()
            .error_code()
            .map(|(c, _)| c),
        Some(403)
    );
    // Nothing more to close, however often the connection wakes.
    assert_eq!(h.wait(Duration::from_secs(1)), vec![]);
}

/// Found by fuzzing (fuzz/stream_connection): a peer connection the task could not file (its
/// registry refused it, so the socket was closed) stayed in the core and held one of the
/// allocation's RFC 6062 peer-connection slots until the allocation ended.
#[test]
fn a_peer_connection_the_task_cannot_file_gives_its_slot_back() {
    let mut h = Harness::plain();
    tcp_allocation_with_peer_connection(&mut h);
    let from = SocketAddr::new(addr(PEER).ip(), 9000);
    for _ in 0..200 {
        h.conn.handle_peer_connection(h.now, from, |_| false);
    }
    let mut filed = None;
    h.conn.handle_peer_connection(h.now, from, |id| {
        filed = Some(id);
        true
    });
    assert!(
        filed.is_some(),
        "the slots were all taken by unfiled connections"
    );
    let attempt = h.read().pop().expect("a ConnectionAttempt");
    assert_eq!(
        Message::parse(&attempt).unwrap().method(),
        Method::CONNECTION_ATTEMPT
    );
}
