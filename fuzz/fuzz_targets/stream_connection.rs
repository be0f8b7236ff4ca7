//! One TCP/TLS client connection (`net::stream::connection::Connection`, the sans-IO state
//! machine the tokio task drives) fed what a client and the I/O layer can bring: PROXY headers,
//! TLS and STUN first bytes, signed and unsigned requests, ChannelData (some with lying lengths),
//! raw bytes, all cut into arbitrary read sizes; a client that reads slowly or not at all; peer
//! datagrams and connections; relay binds; reloads; time jumps; EOF. Time is injected.
//!
//! Asserted, besides "no panic": the queue toward the client never exceeds `stream-queue-size`; a closed
//! connection asks for nothing more and has no deadline; deadlines move on after
//! `handle_timeout`; a relay is released only after it was bound, a hand-off only follows a
//! ConnectionBind; every datagram toward a peer lies inside what the client sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern::config::Config;
use tern::net::stream_connection::{Accepts, Connection, Output, PeerConnections, Settings};
use tern::net::{StreamStats, MAX_FRAME};
use tern_fuzz::proto::{self, Credentials, Signing};
use tern_fuzz::Input;
use tern_proto::auth::{Authenticator, NonceMint};
use tern_proto::policy::{PeerPolicy, Quotas};
use tern_proto::stun::{Class, Method, DATA_INDICATION_MAX_PREFIX};
use tern_proto::turn::{BoundRelay, CoreConfig, RelayError, Server};

const CLIENT: &str = "198.51.100.7:40000";
/// Where a PROXY header may say the client is.
const PROXIED: &[&str] = &["203.0.113.50:1234", "[2001:db8::50]:1234", "127.0.0.1:1"];

fn wall_clock() -> u64 {
    proto::UNIX_START
}

fn core(variant: u8) -> Arc<CoreConfig> {
    let allowed = ["198.51.100.0/24".parse().unwrap()];
    let policy = match variant % 2 {
        0 => PeerPolicy::new(&[], &allowed, false),
        _ => PeerPolicy::new(&[], &[], true),
    };
    let secrets = [proto::SECRET_A.to_string()];
    let auth = Authenticator::new(proto::REALM, &secrets, &proto::static_users(), 86_400);
    let mut core = CoreConfig::new(auth, policy);
    if variant & 2 != 0 {
        core.max_bps = 2000;
        core.default_lifetime = Duration::from_secs(30);
    }
    Arc::new(core)
}

/// RFC 6062 peer connections waiting for a ConnectionBind: id → owner's username and client.
type Pending = HashMap<u32, (Box<str>, SocketAddr)>;

/// The registry, shared between the connection and the harness.
#[derive(Clone, Default)]
struct Peers {
    pending: Rc<RefCell<Pending>>,
}

impl PeerConnections for Peers {
    type Claimed = u32;

    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)> {
        self.pending.borrow().get(&id).cloned()
    }

    fn claim(&self, id: u32) -> Option<u32> {
        self.pending.borrow_mut().remove(&id).map(|_| id)
    }
}

struct Run {
    conn: Connection<Peers>,
    peers: Peers,
    now: Instant,
    start: Instant,
    nonces: NonceMint,
    credentials: Credentials,
    accepts: Accepts,
    /// What the client sent that the connection has not taken yet.
    unsent: Vec<u8>,
    /// Everything the client sent: datagrams toward peers lie inside it.
    sent: Vec<u8>,
    next_tid: u32,
    relay_bound: bool,
    tls_pending: bool,
    closed: bool,
    connection_ids: Vec<u32>,
    connects: Vec<u32>,
    /// `stream-queue-size`: the queue toward the client never holds more.
    queue_limit: usize,
}

impl Run {
    fn new(flags: u8) -> Run {
        let now = Instant::now();
        let accepts = Accepts {
            proxy: flags & 1 != 0,
            tls: flags & 2 != 0,
            plain: flags & 4 == 0,
        };
        let server = Server::new(
            core(flags >> 3),
            NonceMint::with_key(proto::NONCE_KEY),
            Arc::new(Quotas::new()),
            now,
            proto::UNIX_START,
        );
        let defaults = Config::default();
        let queue_limit = defaults.stream_queue_size as usize;
        let settings = Settings {
            idle_timeout: Duration::from_secs(10),
            partial_frame_timeout: Duration::from_secs(4),
            write_stall_timeout: Duration::from_secs(defaults.stream_write_timeout.into()),
            queue_limit,
            accepts,
            wall_clock,
        };
        let peers = Peers::default();
        let conn = Connection::new(
            now,
            server,
            proto::addr(CLIENT),
            proto::addr(proto::SERVER_V4),
            settings,
            Arc::new(StreamStats::default()),
            peers.clone(),
        );
        Run {
            conn,
            peers,
            now,
            start: now,
            nonces: NonceMint::with_key(proto::NONCE_KEY),
            credentials: Credentials::default(),
            accepts,
            unsent: Vec::new(),
            sent: Vec::new(),
            next_tid: 0,
            relay_bound: false,
            tls_pending: false,
            closed: false,
            connection_ids: Vec::new(),
            connects: Vec::new(),
            queue_limit,
        }
    }

    fn unix(&self) -> u64 {
        proto::UNIX_START + self.now.duration_since(self.start).as_secs()
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let op = input.byte() % 12;
        tern_fuzz::trace!("step {op} at +{:?}", self.now - self.start);
        match op {
            0..=3 => {
                let bytes = self.client_bytes(input);
                self.unsent.extend_from_slice(&bytes);
                self.sent.extend_from_slice(&bytes);
                self.deliver(input);
            }
            4 => self.deliver(input),
            5 => {
                // The client reads part or all of what is queued for it.
                let queued = self.conn.client_bytes().len();
                let n = match input.byte() {
                    0 => 0,
                    255 => queued,
                    b => queued.min(usize::from(b) * 64),
                };
                self.conn.client_bytes_written(n);
            }
            6 => self.advance(input),
            7 => {
                let peer = proto::peer(input.pick(proto::PEERS.len()));
                let payload = input.long_bytes(65_000);
                let mut buf = vec![0u8; DATA_INDICATION_MAX_PREFIX + payload.len() + 3];
                buf[DATA_INDICATION_MAX_PREFIX..][..payload.len()].copy_from_slice(payload);
                self.conn
                    .handle_peer_datagram(self.now, peer, &mut buf, payload.len());
            }
            8 => {
                let peer = proto::peer(input.pick(proto::PEERS.len()));
                let filed = input.flag();
                let peers = self.peers.clone();
                let control = self.conn.tuple().client;
                let username = self.conn.allocation_username().map(Box::<str>::from);
                let mut ids = Vec::new();
                self.conn.handle_peer_connection(self.now, peer, |id| {
                    if filed {
                        if let Some(username) = username {
                            peers.pending.borrow_mut().insert(id, (username, control));
                        }
                        ids.push(id);
                    }
                    filed
                });
                self.connection_ids.extend(ids);
            }
            9 => {
                if !self.connects.is_empty() {
                    let id = self.connects.swap_remove(input.pick(self.connects.len()));
                    if input.flag() {
                        let connected = input.flag();
                        self.conn.connect_result(self.now, id, connected);
                        if connected {
                            self.connection_ids.push(id);
                        }
                    } else {
                        self.conn.peer_connection_closed(id);
                    }
                }
            }
            10 => {
                let config = core(input.byte());
                self.conn.set_config(config);
            }
            _ => match input.byte() % 4 {
                0 => self.conn.handle_client_eof(),
                1 => {
                    if self.tls_pending {
                        self.tls_pending = false;
                        self.conn.tls_established();
                    }
                }
                2 => {
                    let first = self.conn.allocations(self.now).first().map(|(id, _)| *id);
                    if let Some(alloc) = first {
                        assert!(self.conn.delete_allocation(self.now, alloc));
                    }
                }
                _ => {
                    // A relay bound for nothing: ignored.
                    let bound = BoundRelay::from(proto::addr("192.0.2.1:50001"));
                    self.conn.relay_bound(self.now, Ok(bound));
                }
            },
        }
        self.act(input);
        self.check();
    }

    /// What the client sends next: a PROXY header, a TLS ClientHello's first bytes, a request
    /// (signed or not), ChannelData, or raw bytes.
    fn client_bytes(&mut self, input: &mut Input<'_>) -> Vec<u8> {
        match input.byte() % 8 {
            0 => proxy_header(input),
            1 => vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0],
            2..=4 => self.request(input),
            5 => proto::channel_data(input, true),
            _ => input.long_bytes(4096).to_vec(),
        }
    }

    fn request(&mut self, input: &mut Input<'_>) -> Vec<u8> {
        let method = proto::METHODS[input.pick(proto::METHODS.len())];
        self.next_tid += 1;
        let mut tid = [0u8; 12];
        tid[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        let unix = self.unix();
        let client = self.conn.tuple().client;
        let signer = proto::read_signer(input, &self.credentials, unix);
        let nonce = proto::read_nonce(input, &self.nonces, client, unix);
        let signing = Signing {
            signer: signer.as_ref(),
            nonce,
            realm: proto::REALM.as_bytes(),
            sha256: input.byte().is_multiple_of(4),
            fingerprint: input.flag(),
        };
        let class = if method == Method::SEND {
            Class::Indication
        } else {
            Class::Request
        };
        let ids = self.connection_ids.clone();
        proto::build_message(input, method, class, tid, &signing, &ids).unwrap_or_default()
    }

    /// Offers what the client has sent, in reads of the size the input picks, as the task reads
    /// the socket into the connection's buffer.
    fn deliver(&mut self, input: &mut Input<'_>) {
        let chunk = match input.byte() {
            0 => usize::MAX,
            b => usize::from(b) * 16,
        };
        for _ in 0..64 {
            if self.unsent.is_empty() {
                return;
            }
            let Some(spare) = self.conn.read_buffer() else {
                return;
            };
            assert!(!spare.is_empty(), "an empty read buffer would read EOF");
            let n = spare.len().min(self.unsent.len()).min(chunk);
            spare[..n].copy_from_slice(&self.unsent[..n]);
            self.unsent.drain(..n);
            self.conn.handle_client_read(self.now, n);
            self.act(input);
        }
    }

    /// Acts on every output, as the task would.
    fn act(&mut self, input: &mut Input<'_>) {
        for _ in 0..10_000 {
            let Some(output) = self.conn.poll_output(self.now) else {
                return;
            };
            assert!(!self.closed, "output after Close");
            tern_fuzz::trace!("  {output:?}");
            match output {
                Output::Identified { client, tls_prefix } => {
                    let _ = client;
                    if let Some(prefix) = tls_prefix {
                        assert!(self.accepts.tls, "TLS on a listener without a certificate");
                        assert!(!prefix.is_empty());
                        self.tls_pending = true;
                    } else {
                        assert!(
                            self.accepts.plain,
                            "STUN in the clear on a TLS-only listener"
                        );
                    }
                }
                Output::ToPeer { peer, data } => {
                    let _ = peer;
                    assert!(self.relay_bound, "data toward a peer without a relay");
                    assert!(data.len() <= MAX_FRAME);
                    // (Checked while what was sent is small enough to search.)
                    assert!(
                        data.is_empty()
                            || self.sent.len() > 16 * 1024
                            || self.sent.windows(data.len()).any(|w| w == data),
                        "a datagram toward a peer that the client never sent"
                    );
                }
                Output::BindRelay(_) => {
                    assert!(!self.relay_bound, "a second relay");
                    // As the task does: bound (or refused) before anything else happens.
                    let result = match input.byte() % 8 {
                        0 => Err(RelayError::NoPorts),
                        _ => Ok(BoundRelay::from(proto::addr("192.0.2.1:50000"))),
                    };
                    self.relay_bound = result.is_ok();
                    self.conn.relay_bound(self.now, result);
                }
                Output::ConnectPeer { connection_id, .. } => {
                    assert!(self.relay_bound);
                    self.connects.push(connection_id);
                }
                Output::ClosePeerConnection { connection_id } => {
                    // As the task does: one still connecting fails, one waiting for its
                    // ConnectionBind closes; an id it never filed (or already closed) is
                    // nothing to it.
                    if let Some(i) = self.connects.iter().position(|&id| id == connection_id) {
                        self.connects.swap_remove(i);
                        self.conn.connect_result(self.now, connection_id, false);
                    } else if self.connection_ids.contains(&connection_id) {
                        self.connection_ids.retain(|&id| id != connection_id);
                        self.peers.pending.borrow_mut().remove(&connection_id);
                        self.conn.peer_connection_closed(connection_id);
                    }
                }
                Output::ReleaseRelay => {
                    assert!(self.relay_bound, "released a relay never bound");
                    self.relay_bound = false;
                    self.connects.clear();
                }
                Output::HandOff(handoff) => {
                    assert!(self.connection_ids.contains(&handoff.claimed));
                    self.closed = true;
                }
                Output::Close(_) => self.closed = true,
            }
        }
        panic!("poll_output never runs dry");
    }

    /// Time passes; the harness runs the deadlines as the task would.
    fn advance(&mut self, input: &mut Input<'_>) {
        let by = match input.byte() % 3 {
            0 => Duration::from_millis(u64::from(input.u16())),
            1 => Duration::from_secs(u64::from(input.byte())),
            _ => self
                .conn
                .poll_timeout()
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(self.now)),
        };
        self.now += by;
        for _ in 0..1000 {
            match self.conn.poll_timeout() {
                Some(at) if at <= self.now => {
                    self.conn.handle_timeout(self.now);
                    self.act(input);
                }
                _ => return,
            }
        }
        panic!("the deadline does not move past now");
    }

    fn check(&self) {
        assert!(
            self.conn.client_bytes().len() <= self.queue_limit,
            "client queue over its limit"
        );
        if self.closed {
            assert_eq!(
                self.conn.poll_timeout(),
                None,
                "a closed connection has no deadline"
            );
        }
    }
}

/// A PROXY header: v1 text or v2 binary, well-formed or not.
fn proxy_header(input: &mut Input<'_>) -> Vec<u8> {
    let source: SocketAddr = proto::addr(PROXIED[input.pick(PROXIED.len())]);
    match input.byte() % 4 {
        0 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            let destination = if source.is_ipv4() {
                "192.0.2.1"
            } else {
                "2001:db8::1"
            };
            format!(
                "PROXY {family} {} {destination} {} 3478\r\n",
                source.ip(),
                source.port()
            )
            .into_bytes()
        }
        1 => b"PROXY UNKNOWN\r\n".to_vec(),
        2 => {
            let mut header = tern::net::proxy_protocol::V2_SIGNATURE.to_vec();
            let command = if input.flag() { 0x21 } else { 0x20 };
            header.push(command);
            let tlv = input.bytes();
            match source {
                SocketAddr::V4(v4) => {
                    header.push(0x11);
                    header.extend_from_slice(&(12 + tlv.len() as u16).to_be_bytes());
                    header.extend_from_slice(&v4.ip().octets());
                    header.extend_from_slice(&[192, 0, 2, 1]);
                    header.extend_from_slice(&v4.port().to_be_bytes());
                    header.extend_from_slice(&3478u16.to_be_bytes());
                }
                SocketAddr::V6(v6) => {
                    header.push(0x21);
                    header.extend_from_slice(&(36 + tlv.len() as u16).to_be_bytes());
                    header.extend_from_slice(&v6.ip().octets());
                    header.extend_from_slice(&[
                        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                    ]);
                    header.extend_from_slice(&v6.port().to_be_bytes());
                    header.extend_from_slice(&3478u16.to_be_bytes());
                }
            }
            header.extend_from_slice(tlv);
            header
        }
        _ => {
            let mut header = b"PROXY ".to_vec();
            header.extend_from_slice(input.bytes());
            header
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut run = Run::new(input.byte());
    while !input.is_empty() && !run.closed {
        run.step(&mut input);
    }
});
