//! `Server`: requests and data in, what to send out.

use super::allocation::{
    Allocation, AllocationInfo, PeerConnection, PendingConnect, PendingReply, Traffic,
};
use super::core_config::CoreConfig;
use super::errors::{self, reason};
use super::metrics::{auth_reason, transport_index, RequestCounts, AUTH_REASONS, TRANSPORTS};
use super::nat_discovery::NatDiscovery;
use super::timers::TimerQueue;
use crate::auth::{AuthError, LongTermKey, NonceCheck, NonceMint};
use crate::policy::{QuotaError, Quotas};
use crate::stun::{
    self, attr, ChannelData, Class, FrameKind, IntegrityCheck, IntegrityKind, Message,
    MessageWriter, Method, TransactionId, CHANNEL_DATA_HEADER_LEN, DATA_INDICATION_MAX_PREFIX,
};
use rustc_hash::FxHashMap;
use slab::Slab;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// How the client reaches us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Streams pad ChannelData to a multiple of 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Client address, our address and transport: what identifies an allocation (RFC 8656 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Names an allocation; the generation tells a reused slot from the allocation that had it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocId {
    pub index: usize,
    pub generation: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        Family::of_ip(&addr.ip())
    }

    pub fn of_ip(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// 0 for IPv4, 1 for IPv6: where per-family state sits in two-element arrays.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The family byte of REQUESTED-ADDRESS-FAMILY and friends (RFC 8656 §18.1).
    fn wire(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }
}

/// What an allocation relays to peers: UDP datagrams (RFC 8656) or TCP connections (RFC 6062).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    Udp,
    Tcp,
}

/// The I/O layer is asked to bind a relay socket (two for a dual-stack allocation), then calls
/// [`Server::relay_bound`] with one result per family asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayRequest {
    pub alloc: AllocId,
    pub tuple: FiveTuple,
    /// The family of the relay the allocation needs (REQUESTED-ADDRESS-FAMILY, IPv4 by default).
    pub family: Family,
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2): a second relay of this family (IPv6) is
    /// wanted too. The allocation succeeds if either can be bound.
    pub additional: Option<Family>,
    /// Applies to the `family` relay; the additional one takes any port.
    pub port: PortRequest,
    /// A UDP socket, or for [`RelayTransport::Tcp`] a TCP listening socket whose port outgoing
    /// peer connections share (RFC 6062 §5.1). Only stream clients get TCP.
    pub transport: RelayTransport,
}

/// Which relay port an Allocate asks for (RFC 8656 §7.2, EVEN-PORT and RESERVATION-TOKEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    /// An even port; with `reserve_next`, the next port is held for a later Allocate.
    Even {
        reserve_next: bool,
    },
    /// The port held under this token by an earlier EVEN-PORT allocation.
    Reserved([u8; 8]),
}

/// A relay socket the I/O layer bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundRelay {
    pub local: SocketAddr,
    /// Token for the reserved next port, when one was asked for.
    pub reservation: Option<[u8; 8]>,
}

impl From<SocketAddr> for BoundRelay {
    fn from(local: SocketAddr) -> Self {
        BoundRelay {
            local,
            reservation: None,
        }
    }
}

/// Why the I/O layer could not bind a relay socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayError {
    /// No relay address of the requested family (→ 440).
    FamilyUnsupported,
    /// No free port in the range (→ 508).
    NoPorts,
    /// The reservation token is unknown or expired (→ 508).
    BadReservation,
}

/// What to do after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    Nothing,
    /// Send `data` to the client over `tuple`.
    ToClient {
        tuple: FiveTuple,
        data: &'a [u8],
    },
    /// Send `data` to `peer` from the allocation's relay socket of `peer`'s family
    /// ([`Family::of`]`(&peer)`; a dual-stack allocation has one of each).
    ToPeer {
        alloc: AllocId,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// Bind a relay socket for a new allocation.
    BindRelay(RelayRequest),
}

/// Things the I/O layer must learn about outside of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The allocation ended: close its relay sockets and return their ports.
    Released {
        alloc: AllocId,
        /// Local addresses of its relay sockets, by [`Family::index`].
        relays: [Option<SocketAddr>; 2],
    },
    /// A Connect request (RFC 6062 §5.2) passed the checks: open a TCP connection from the
    /// allocation's relayed address to `peer` (giving up after 30 s), then call
    /// [`Server::connect_result`] with `connection_id`.
    ConnectPeer {
        alloc: AllocId,
        peer: SocketAddr,
        connection_id: u32,
    },
}

/// The I/O layer's registry of peer TCP connections waiting for their ConnectionBind (RFC 6062
/// §5.4). It is shared by every client connection, since the data connection is a different
/// connection from the control connection that owns the allocation.
pub trait ConnectionLookup {
    /// The username of the allocation that owns pending connection `id`, and the client address
    /// of its control connection (whose nonce the data connection may reuse).
    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)>;
    /// Takes pending connection `id` for this data connection; false if it is gone (bound by
    /// another data connection, timed out, or its allocation ended).
    fn claim(&mut self, id: u32) -> bool;
}

/// How long a peer TCP connection waits for its ConnectionBind, and how long a Connect may take
/// to reach the peer (RFC 6062 §5.2, §5.3: 30 s). The I/O layer enforces both.
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// Peer TCP connections (pending and spliced) one TCP allocation may have at once: a Connect
/// beyond it is 508, a peer connecting beyond it is closed.
pub const MAX_PEER_CONNECTIONS: usize = 128;

/// How a response is protected: with the request's integrity kind and key, and a FINGERPRINT if
/// the request had one.
#[derive(Clone, Copy)]
struct Seal<'k> {
    key: Option<&'k LongTermKey>,
    sha256: bool,
    fingerprint: bool,
}

impl<'k> Seal<'k> {
    /// The seal for answering an authenticated request: its integrity kind, its key, and a
    /// FINGERPRINT if it carried one.
    fn answering(msg: &Message<'_>, key: &'k LongTermKey, kind: IntegrityKind) -> Seal<'k> {
        Seal {
            key: Some(key),
            sha256: kind == IntegrityKind::Sha256,
            fingerprint: msg.fingerprint_ok().is_some(),
        }
    }

    fn open(msg: &Message<'_>) -> Seal<'static> {
        Seal {
            key: None,
            sha256: false,
            fingerprint: msg.fingerprint_ok().is_some(),
        }
    }
}

/// An authenticated request's credentials.
struct Authed<'m> {
    username: &'m str,
    key: LongTermKey,
    kind: IntegrityKind,
}

/// Why a request did not authenticate, and so which challenge to answer with.
enum Challenge {
    /// 401 with REALM and NONCE (no or bad credentials).
    Unauthorized,
    /// 438 with a fresh NONCE.
    StaleNonce,
    /// 400: integrity present but USERNAME, REALM or NONCE missing.
    BadRequest,
}

/// Wall-clock seconds, derived from a monotonic anchor so the core never reads a clock.
#[derive(Clone, Copy, Debug)]
struct WallClock {
    at: Instant,
    unix: u64,
}

impl WallClock {
    fn unix_at(&self, now: Instant) -> u64 {
        self.unix + now.saturating_duration_since(self.at).as_secs()
    }
}

/// Counters a worker keeps for metrics; plain integers, read by whoever owns the server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub auth_failures: u64,
    pub peers_denied: u64,
    pub quota_rejections: u64,
    /// Allocates answered 300 Try Alternate (draining or total quota, with alternates configured).
    pub redirects: u64,
    pub traffic: Traffic,
    /// Responses sent, by method and result code.
    pub requests: RequestCounts,
    /// `auth_failures` split by reason ([`super::metrics::AUTH_REASONS`]).
    pub auth_failures_by_reason: [u64; AUTH_REASONS.len()],
    /// Live allocations (pending ones included) by transport ([`super::metrics::TRANSPORTS`]).
    pub allocations_by_transport: [u64; TRANSPORTS.len()],
    /// Allocates refused with 486 because the server is draining.
    pub drain_rejections: u64,
}

/// The TURN server state machine of one worker.
pub struct Server {
    config: Arc<CoreConfig>,
    nonces: NonceMint,
    quotas: Arc<Quotas>,
    pub(super) allocations: Slab<Allocation>,
    /// FxHash: looked up on every ChannelData packet, where SipHash was a visible cost.
    by_tuple: FxHashMap<FiveTuple, usize>,
    timers: TimerQueue,
    events: VecDeque<Event>,
    clock: WallClock,
    next_generation: u32,
    rng: u64,
    counters: Counters,
    /// Set while the process drains: new Allocates are refused (300 to an alternate server if
    /// any is configured, else 486), existing allocations go on.
    draining: Arc<AtomicBool>,
    /// RFC 5780 listener pairs; empty unless two listening addresses of a family exist.
    nat: Arc<NatDiscovery>,
    /// Round-robin position in `alternate-server`, per client address family.
    next_alternate: [usize; 2],
}

impl Server {
    /// `now_unix` is the wall-clock time at `now`; see [`Server::sync_wall_clock`].
    pub fn new(
        config: Arc<CoreConfig>,
        nonces: NonceMint,
        quotas: Arc<Quotas>,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        Server {
            config,
            nonces,
            quotas,
            allocations: Slab::new(),
            by_tuple: FxHashMap::default(),
            timers: TimerQueue::default(),
            events: VecDeque::new(),
            clock: WallClock {
                at: now,
                unix: now_unix,
            },
            next_generation: 0,
            rng: rand::random::<u64>() | 1,
            counters: Counters::default(),
            draining: Arc::new(AtomicBool::new(false)),
            nat: Arc::new(NatDiscovery::default()),
            next_alternate: [0; 2],
        }
    }

    /// Shares the process-wide drain switch (admin API); while it is set, new Allocates get
    /// 300 Try Alternate (with `alternate-server` configured) or 486.
    pub fn set_drain_flag(&mut self, draining: Arc<AtomicBool>) {
        self.draining = draining;
    }

    /// The listener pairs RFC 5780 NAT behaviour discovery answers from (set by the I/O layer,
    /// which knows the concrete listening addresses).
    pub fn set_nat_discovery(&mut self, nat: Arc<NatDiscovery>) {
        self.nat = nat;
    }

    /// Allocations with the ids the admin API names them by.
    pub fn allocations_with_ids(
        &self,
        now: Instant,
    ) -> impl Iterator<Item = (AllocId, AllocationInfo)> + '_ {
        self.allocations.iter().map(move |(index, a)| {
            let id = AllocId {
                index,
                generation: a.generation,
            };
            (id, a.info(now))
        })
    }

    /// Deletes one allocation (admin API); false if it no longer exists.
    pub fn delete_allocation(&mut self, alloc: AllocId) -> bool {
        if live(&mut self.allocations, alloc).is_none() {
            return false;
        }
        self.remove_allocation(alloc.index, Removal::Deleted);
        true
    }

    /// Swaps in a reloaded configuration; live allocations keep their state.
    pub fn set_config(&mut self, config: Arc<CoreConfig>) {
        self.config = config;
    }

    pub fn config(&self) -> &Arc<CoreConfig> {
        &self.config
    }

    /// Re-anchors wall-clock time (REST expiry, nonces) to a fresh reading.
    pub fn sync_wall_clock(&mut self, now: Instant, now_unix: u64) {
        self.clock = WallClock {
            at: now,
            unix: now_unix,
        };
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn allocations(&self, now: Instant) -> impl Iterator<Item = AllocationInfo> + '_ {
        self.allocations.iter().map(move |(_, a)| a.info(now))
    }

    /// A datagram or stream frame from a client. Replies are written into `out`.
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        input: &'a [u8],
        out: &'a mut [u8],
    ) -> Output<'a> {
        match stun::frame_kind(input) {
            FrameKind::ChannelData => self.channel_data_from_client(tuple, input),
            FrameKind::Stun => match Message::parse(input) {
                Ok(msg) if msg.fingerprint_ok() != Some(false) => {
                    let output = self.stun_from_client(now, tuple, &msg, out);
                    self.count_reply(output)
                }
                _ => Output::Nothing,
            },
            FrameKind::Other => Output::Nothing,
        }
    }

    /// A datagram from `peer` on an allocation's relay socket. The payload stands at
    /// `buf[DATA_INDICATION_MAX_PREFIX..DATA_INDICATION_MAX_PREFIX + len]`; the framing toward
    /// the client is written in place in front of it, and any padding after it, so `buf` needs
    /// 3 spare bytes past the payload.
    pub fn handle_peer<'a>(
        &mut self,
        alloc: AllocId,
        peer: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let start = DATA_INDICATION_MAX_PREFIX;
        let end = start + len;
        if end + 3 > buf.len() || !allocation.has_permission(peer.ip()) {
            return Output::Nothing;
        }
        let tuple = allocation.tuple;
        let pad = if tuple.transport.is_stream() {
            (4 - len % 4) % 4
        } else {
            0
        };
        let channel = allocation.channel_by_peer(peer).map(|c| c.number);
        allocation.stats.packets_to_client += 1;
        allocation.stats.bytes_to_client += len as u64;
        self.counters.traffic.packets_to_client += 1;
        self.counters.traffic.bytes_to_client += len as u64;
        let frame_start = match channel {
            Some(number) => {
                let header_at = start - CHANNEL_DATA_HEADER_LEN;
                let mut header = [0u8; CHANNEL_DATA_HEADER_LEN];
                ChannelData::write_header(&mut header, number, len as u16);
                buf[header_at..start].copy_from_slice(&header);
                buf[end..end + pad].fill(0);
                header_at
            }
            None => {
                let prefix = stun::data_indication_prefix_len(&peer);
                let tid = self.random_tid();
                let written = stun::write_data_indication_prefix(
                    &mut buf[start - prefix..start],
                    &tid,
                    peer,
                    len,
                );
                if written == 0 {
                    return Output::Nothing; // too large for a STUN message: only a channel can carry it
                }
                let data_pad = (4 - len % 4) % 4;
                buf[end..end + data_pad].fill(0);
                return Output::ToClient {
                    tuple,
                    data: &buf[start - prefix..end + data_pad],
                };
            }
        };
        Output::ToClient {
            tuple,
            data: &buf[frame_start..end + pad],
        }
    }

    /// Completes an Allocate once the I/O layer has bound (or failed to bind) the relay socket
    /// of the request's `family`, and, for a dual-stack request, the `additional` one. The
    /// allocation succeeds if either was bound; the family that failed is reported in an
    /// ADDRESS-ERROR-CODE (RFC 8656 §7.2).
    pub fn relay_bound<'a>(
        &mut self,
        now: Instant,
        alloc: AllocId,
        result: Result<BoundRelay, RelayError>,
        additional: Option<Result<BoundRelay, RelayError>>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let Some(pending) = allocation.pending.take() else {
            return Output::Nothing;
        };
        let output = self.finish_allocate(now, alloc, pending, result, additional, out);
        self.count_reply(output)
    }

    fn finish_allocate<'a>(
        &mut self,
        now: Instant,
        alloc: AllocId,
        pending: PendingReply,
        result: Result<BoundRelay, RelayError>,
        additional: Option<Result<BoundRelay, RelayError>>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let tuple = allocation.tuple;
        let key = allocation.key;
        let tid = allocation.allocate_tid;
        let seal = Seal {
            key: Some(&key),
            sha256: pending.sha256,
            fingerprint: pending.fingerprint,
        };
        let (primary, reservation) = match result {
            Ok(bound) => (Some(bound.local), bound.reservation),
            Err(_) => (None, None),
        };
        let second = additional.and_then(Result::ok).map(|bound| bound.local);
        if primary.is_none() && second.is_none() {
            self.remove_allocation(alloc.index, Removal::Failed);
            let code = match result {
                Err(error) => relay_error_code(error),
                Ok(_) => errors::INSUFFICIENT_CAPACITY,
            };
            let software = self.config.software.clone();
            let data = write_message(
                out,
                Method::ALLOCATE,
                Class::Error,
                &tid,
                software.as_deref(),
                seal,
                |w| {
                    w.add_error_code(code, reason(code));
                },
            );
            return to_client(tuple, data);
        }
        for local in primary.into_iter().chain(second) {
            let advertised = self.config.advertised(local);
            allocation.relays[Family::of(&local).index()] = Some((local, advertised));
        }
        // A dual-stack request where one family failed: say which and why.
        allocation.address_error = match (result, additional) {
            (Err(error), Some(Ok(_))) => Some((pending.family, relay_error_code(error))),
            (Ok(_), Some(Err(error))) => pending
                .additional
                .map(|family| (family, relay_error_code(error))),
            _ => None,
        };
        self.counters.allocations_created += 1;
        debug!(client = %tuple.client, relay = ?allocation.advertised().collect::<Vec<_>>(), user = %allocation.username, "allocation created");
        self.allocate_success(now, alloc.index, &tid, reservation, seal, out)
    }

    /// Ends the allocation of a 5-tuple (its TCP connection closed).
    pub fn close_tuple(&mut self, tuple: &FiveTuple) {
        if let Some(&index) = self.by_tuple.get(tuple) {
            self.remove_allocation(index, Removal::Deleted);
        }
    }

    /// Answers the Connect request behind [`Event::ConnectPeer`] once the I/O layer has opened
    /// the peer connection (`connected`) or given up on it (447). On success the connection waits
    /// for its ConnectionBind under `connection_id`; on failure it is forgotten.
    pub fn connect_result<'a>(
        &mut self,
        alloc: AllocId,
        connection_id: u32,
        connected: bool,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let Some(position) = allocation
            .peer_connections
            .iter()
            .position(|c| c.id == connection_id)
        else {
            return Output::Nothing;
        };
        let Some(pending) = allocation.peer_connections[position].connect.take() else {
            return Output::Nothing;
        };
        let peer = allocation.peer_connections[position].peer;
        if !connected {
            allocation.peer_connections.swap_remove(position);
        }
        let tuple = allocation.tuple;
        let key = allocation.key;
        let seal = Seal {
            key: Some(&key),
            sha256: pending.sha256,
            fingerprint: pending.fingerprint,
        };
        let software = self.config.software.as_deref();
        let data = if connected {
            debug!(client = %tuple.client, %peer, connection_id, "peer connection opened");
            write_message(
                out,
                Method::CONNECT,
                Class::Success,
                &pending.tid,
                software,
                seal,
                |w| {
                    w.add_u32(attr::CONNECTION_ID, connection_id);
                },
            )
        } else {
            debug!(client = %tuple.client, %peer, "peer connection failed");
            let code = errors::CONNECTION_TIMEOUT_OR_FAILURE;
            write_message(
                out,
                Method::CONNECT,
                Class::Error,
                &pending.tid,
                software,
                seal,
                |w| {
                    w.add_error_code(code, reason(code));
                },
            )
        };
        if let Some(data) = data {
            self.counters.requests.record(data);
        }
        to_client(tuple, data)
    }

    /// A peer connection of `alloc` is gone (never bound in time, or one side of the spliced pair
    /// closed): a new Connect to that peer may proceed.
    pub fn connection_closed(&mut self, alloc: AllocId, connection_id: u32) {
        if let Some(allocation) = live(&mut self.allocations, alloc) {
            allocation
                .peer_connections
                .retain(|c| c.id != connection_id);
        }
    }

    /// A peer connected to the relayed address of TCP allocation `alloc` (RFC 6062 §5.3). With
    /// a permission for its IP (and the peer policy allowing it) the connection gets an id and
    /// the client a ConnectionAttempt indication, written into `out`; otherwise `None`, and the
    /// I/O layer closes the peer connection.
    pub fn connection_attempt<'a>(
        &mut self,
        alloc: AllocId,
        peer: SocketAddr,
        out: &'a mut [u8],
    ) -> Option<(u32, &'a [u8])> {
        let allocation = live(&mut self.allocations, alloc)?;
        if allocation.relay_transport != RelayTransport::Tcp
            || !allocation.has_permission(peer.ip())
            || allocation.peer_connections.len() >= MAX_PEER_CONNECTIONS
        {
            return None;
        }
        if !self.config.policy.permits(peer.ip()) {
            self.counters.peers_denied += 1;
            return None;
        }
        let id = self.next_connection_id(alloc.index)?;
        let allocation = &mut self.allocations[alloc.index];
        allocation.peer_connections.push(PeerConnection {
            id,
            peer,
            connect: None,
        });
        debug!(client = %allocation.tuple.client, %peer, connection_id = id, "peer connection accepted");
        let tid = self.random_tid();
        let mut writer =
            MessageWriter::new(out, Method::CONNECTION_ATTEMPT, Class::Indication, &tid);
        writer.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        writer.add_u32(attr::CONNECTION_ID, id);
        writer.add_fingerprint();
        writer.finish().map(|data| (id, data))
    }

    /// The username an allocation authenticated with (the data connections of a TCP allocation
    /// must use the same).
    pub fn allocation_username(&self, alloc: AllocId) -> Option<&str> {
        self.allocations
            .get(alloc.index)
            .filter(|a| a.generation == alloc.generation)
            .map(|a| &*a.username)
    }

    /// A ConnectionBind request (RFC 6062 §5.4) on a client connection: authenticated with the
    /// same user as the allocation that owns the connection id, on a stream connection that has
    /// no allocation. On success the response is the last STUN message on this connection:
    /// the I/O layer has claimed the peer connection from `lookup` and splices the two.
    pub fn connection_bind<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        input: &'a [u8],
        lookup: &mut dyn ConnectionLookup,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Ok(msg) = Message::parse(input) else {
            return Output::Nothing;
        };
        if msg.fingerprint_ok() == Some(false)
            || msg.class() != Class::Request
            || msg.method() != Method::CONNECTION_BIND
        {
            return Output::Nothing;
        }
        let output = self.connection_bind_request(now, tuple, &msg, lookup, out);
        self.count_reply(output)
    }

    fn connection_bind_request<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        lookup: &mut dyn ConnectionLookup,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let id = match msg.get(attr::CONNECTION_ID) {
            Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
            _ => None,
        };
        let pending = id.and_then(|id| lookup.pending(id));
        let control_client = pending.as_ref().map(|(_, client)| *client);
        let authed = match self.authenticate(now, tuple, msg, None, control_client) {
            Ok(authed) => authed,
            Err(challenge) => return self.reply_challenge(now, out, tuple, msg, challenge),
        };
        let key = authed.key;
        let seal = Seal::answering(msg, &key, authed.kind);
        let mut unknown = [0u16; 8];
        let count = msg.unknown_required(is_known_attribute, &mut unknown);
        if count > 0 {
            return self.reply_unknown(out, tuple, msg, seal, &unknown[..count]);
        }
        // A data connection carries nothing but its peer's bytes: not over UDP, not on a
        // connection that has an allocation (RFC 6062 §5.4).
        let (Some(id), Some((username, _))) = (id, pending) else {
            debug!(client = %tuple.client, "connection bind refused: unknown connection id");
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        };
        if !tuple.transport.is_stream() || self.by_tuple.contains_key(&tuple) {
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        }
        if *username != *authed.username {
            info!(client = %tuple.client, user = authed.username, "connection bind refused: not the allocation's user");
            return self.reply_error(out, tuple, msg, seal, errors::WRONG_CREDENTIALS);
        }
        if !lookup.claim(id) {
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        }
        debug!(client = %tuple.client, connection_id = id, "connection bound");
        self.reply_success(out, tuple, msg, seal)
    }

    /// A fresh non-zero connection id, unique within the allocation (the I/O layer's registry
    /// refuses the rare collision with another allocation's).
    fn next_connection_id(&mut self, index: usize) -> Option<u32> {
        for _ in 0..8 {
            let tid = self.random_tid();
            let id = u32::from_be_bytes([tid[0], tid[1], tid[2], tid[3]]);
            let taken = self.allocations[index]
                .peer_connections
                .iter()
                .any(|c| c.id == id);
            if id != 0 && !taken {
                return Some(id);
            }
        }
        None
    }

    /// Deletes every allocation of `username` (admin API); returns how many.
    pub fn delete_user(&mut self, username: &str) -> usize {
        let doomed: Vec<usize> = self
            .allocations
            .iter()
            .filter(|(_, a)| &*a.username == username)
            .map(|(i, _)| i)
            .collect();
        for &index in &doomed {
            self.remove_allocation(index, Removal::Deleted);
        }
        doomed.len()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Expires allocations, permissions and channels due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, index, generation)) = self.timers.pop_due(now) {
            let Some(allocation) = self.allocations.get_mut(index) else {
                continue;
            };
            if allocation.generation != generation || allocation.next_deadline != at {
                continue; // filed under an older deadline
            }
            if allocation.expires <= now {
                self.remove_allocation(index, Removal::Expired);
                continue;
            }
            let next = allocation.sweep(now);
            allocation.next_deadline = next;
            self.timers.schedule(next, index, generation);
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn random_tid(&mut self) -> TransactionId {
        // xorshift64*: transaction ids of Data indications need to be unpredictable-ish and
        // unique, not cryptographic, and this costs no syscall per packet.
        let mut tid = [0u8; 12];
        for chunk in tid.chunks_mut(4) {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            chunk.copy_from_slice(
                &(self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32).to_be_bytes()[4..],
            );
        }
        tid
    }

    fn channel_data_from_client<'a>(&mut self, tuple: FiveTuple, input: &'a [u8]) -> Output<'a> {
        let Some(frame) = ChannelData::parse(input) else {
            return Output::Nothing;
        };
        let Some(&index) = self.by_tuple.get(&tuple) else {
            return Output::Nothing;
        };
        let allocation = &mut self.allocations[index];
        let Some(channel) = allocation.channel_by_number(frame.channel) else {
            return Output::Nothing;
        };
        let peer = channel.peer;
        if !allocation.has_permission(peer.ip()) {
            return Output::Nothing;
        }
        allocation.stats.packets_to_peer += 1;
        allocation.stats.bytes_to_peer += frame.data.len() as u64;
        self.counters.traffic.packets_to_peer += 1;
        self.counters.traffic.bytes_to_peer += frame.data.len() as u64;
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        Output::ToPeer {
            alloc,
            peer,
            data: frame.data,
        }
    }

    fn stun_from_client<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'a>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        match (msg.class(), msg.method()) {
            (Class::Request, Method::BINDING) => self.binding(tuple, msg, out),
            (Class::Indication, Method::SEND) => self.send_indication(tuple, msg),
            (
                Class::Request,
                Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT,
            ) => self.turn_request(now, tuple, msg, out),
            (Class::Request, _) => {
                self.reply_error(out, tuple, msg, Seal::open(msg), errors::BAD_REQUEST)
            }
            _ => Output::Nothing,
        }
    }

    fn binding<'a>(
        &mut self,
        tuple: FiveTuple,
        msg: &Message<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let seal = Seal::open(msg);
        // RFC 5780 over UDP, when this listener has a partner: OTHER-ADDRESS, RESPONSE-ORIGIN
        // and CHANGE-REQUEST. Otherwise CHANGE-REQUEST is an unknown attribute (420).
        let other = match tuple.transport {
            Transport::Udp => self.nat.other_address(tuple.server),
            _ => None,
        };
        let known =
            |typ| is_known_attribute(typ) || (other.is_some() && typ == attr::CHANGE_REQUEST);
        let mut unknown = [0u16; 8];
        let count = msg.unknown_required(known, &mut unknown);
        if count > 0 {
            return self.reply_unknown(out, tuple, msg, seal, &unknown[..count]);
        }
        let mut reply_tuple = tuple;
        if other.is_some() {
            let flags = match msg.get(attr::CHANGE_REQUEST) {
                None => 0,
                Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
                Some(_) => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
            };
            match self.nat.answer_from(tuple.server, flags) {
                Some(from) => reply_tuple.server = from,
                None => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
            }
        }
        self.reply(out, reply_tuple, msg, Class::Success, seal, |w| {
            w.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
            if let Some(other) = other {
                // RFC 5780 clients may still read the RFC 3489 MAPPED-ADDRESS.
                w.add_address(attr::MAPPED_ADDRESS, tuple.client);
                w.add_address(attr::RESPONSE_ORIGIN, reply_tuple.server);
                w.add_address(attr::OTHER_ADDRESS, other);
            }
        })
    }

    fn send_indication<'a>(&mut self, tuple: FiveTuple, msg: &Message<'a>) -> Output<'a> {
        let Some(&index) = self.by_tuple.get(&tuple) else {
            return Output::Nothing;
        };
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|v| stun::decode_xor_address(v, msg.transaction_id()).ok());
        let (Some(peer), Some(data)) = (peer, msg.get(attr::DATA)) else {
            return Output::Nothing;
        };
        if !self.config.policy.permits(peer.ip()) {
            self.counters.peers_denied += 1;
            return Output::Nothing;
        }
        let allocation = &mut self.allocations[index];
        if !allocation.serves(peer.ip())
            || !allocation.has_permission(peer.ip())
            || allocation.relay_transport == RelayTransport::Tcp
        {
            return Output::Nothing;
        }
        allocation.stats.packets_to_peer += 1;
        allocation.stats.bytes_to_peer += data.len() as u64;
        self.counters.traffic.packets_to_peer += 1;
        self.counters.traffic.bytes_to_peer += data.len() as u64;
        Output::ToPeer {
            alloc: AllocId {
                index,
                generation: allocation.generation,
            },
            peer,
            data,
        }
    }

    /// Allocate, Refresh, CreatePermission, ChannelBind: authenticate, then dispatch.
    fn turn_request<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let existing = self.by_tuple.get(&tuple).copied();
        let authed = match self.authenticate(now, tuple, msg, existing, None) {
            Ok(authed) => authed,
            Err(challenge) => return self.reply_challenge(now, out, tuple, msg, challenge),
        };
        let key = authed.key;
        let seal = Seal::answering(msg, &key, authed.kind);
        if let Some(index) = existing {
            if *self.allocations[index].username != *authed.username {
                return self.reply_error(out, tuple, msg, seal, errors::WRONG_CREDENTIALS);
            }
        }
        let mut unknown = [0u16; 8];
        let count = msg.unknown_required(is_known_attribute, &mut unknown);
        if count > 0 {
            return self.reply_unknown(out, tuple, msg, seal, &unknown[..count]);
        }
        match (msg.method(), existing) {
            (Method::ALLOCATE, None) => self.allocate(now, tuple, msg, &authed, seal, out),
            (Method::ALLOCATE, Some(index)) => {
                let allocation = &self.allocations[index];
                if allocation.allocate_tid == *msg.transaction_id() && allocation.has_relay() {
                    self.allocate_success(now, index, msg.transaction_id(), None, seal, out)
                // a retransmission
                } else {
                    self.reply_error(out, tuple, msg, seal, errors::ALLOCATION_MISMATCH)
                }
            }
            (_, None) => self.reply_error(out, tuple, msg, seal, errors::ALLOCATION_MISMATCH),
            (Method::REFRESH, Some(index)) => self.refresh(now, index, tuple, msg, seal, out),
            (Method::CREATE_PERMISSION, Some(index)) => {
                self.create_permission(now, index, tuple, msg, seal, out)
            }
            (Method::CONNECT, Some(index)) => self.connect(now, index, tuple, msg, seal, out),
            (_, Some(index)) => self.channel_bind(now, index, tuple, msg, seal, out),
        }
    }

    /// RFC 8489 §9.2.4, with the key remembered per allocation (§9.2.2: one username per
    /// allocation). REST expiry is checked on every request so an expired credential cannot
    /// keep refreshing.
    ///
    /// `also_nonce_of`: another client address whose nonce is accepted too (a ConnectionBind on a
    /// data connection may carry the nonce its control connection was given).
    fn authenticate<'m>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'m>,
        existing: Option<usize>,
        also_nonce_of: Option<SocketAddr>,
    ) -> Result<Authed<'m>, Challenge> {
        let Some(kind) = msg.integrity_kind() else {
            return Err(Challenge::Unauthorized);
        };
        let text = |typ| msg.get_str(typ).and_then(Result::ok);
        let (Some(username), Some(_realm), Some(nonce)) =
            (text(attr::USERNAME), text(attr::REALM), text(attr::NONCE))
        else {
            return Err(Challenge::BadRequest);
        };
        let unix = self.clock.unix_at(now);
        let stale = self.config.stale_nonce_secs;
        let valid = |client| self.nonces.check(nonce, client, unix, stale) == NonceCheck::Valid;
        if !valid(tuple.client) && !also_nonce_of.is_some_and(valid) {
            return Err(Challenge::StaleNonce);
        }
        let keys = match self.config.auth.keys(username, unix) {
            Ok(keys) => keys,
            Err(error) => {
                self.counters.auth_failures += 1;
                let index = match error {
                    AuthError::UnknownUser => auth_reason::UNKNOWN_USER,
                    AuthError::Expired => auth_reason::EXPIRED,
                    AuthError::TtlTooLong => auth_reason::TTL_TOO_LONG,
                };
                self.counters.auth_failures_by_reason[index] += 1;
                info!(client = %tuple.client, user = username, reason = auth_reason(error), "authentication failed");
                return Err(Challenge::Unauthorized);
            }
        };
        let remembered = existing
            .map(|i| &self.allocations[i])
            .filter(|a| &*a.username == username);
        let candidates = remembered
            .map(|a| a.key)
            .into_iter()
            .chain(keys.iter().copied());
        for key in candidates {
            if let IntegrityCheck::Valid(_) = msg.verify_integrity(&key) {
                return Ok(Authed {
                    username,
                    key,
                    kind,
                });
            }
        }
        self.counters.auth_failures += 1;
        self.counters.auth_failures_by_reason[auth_reason::BAD_INTEGRITY] += 1;
        info!(client = %tuple.client, user = username, reason = "bad message integrity", "authentication failed");
        Err(Challenge::Unauthorized)
    }

    fn allocate<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed<'_>,
        seal: Seal<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let relay_transport = match msg.get(attr::REQUESTED_TRANSPORT) {
            None => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
            Some([17, ..]) => RelayTransport::Udp,
            // RFC 6062 §5.1: TCP only for clients on TCP or TLS, and without the UDP-only
            // attributes.
            Some([6, ..])
                if !tuple.transport.is_stream()
                    || msg.get(attr::DONT_FRAGMENT).is_some()
                    || msg.get(attr::EVEN_PORT).is_some()
                    || msg.get(attr::RESERVATION_TOKEN).is_some() =>
            {
                return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST)
            }
            Some([6, ..]) => RelayTransport::Tcp,
            Some(_) => {
                return self.reply_error(
                    out,
                    tuple,
                    msg,
                    seal,
                    errors::UNSUPPORTED_TRANSPORT_PROTOCOL,
                )
            }
        };
        let requested = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        let legacy_family_attrs = msg.get(attr::ADDITIONAL_ADDRESS_FAMILY).is_none()
            && msg.get(attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY).is_some();
        let additional = msg
            .get(attr::ADDITIONAL_ADDRESS_FAMILY)
            .or_else(|| msg.get(attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY));
        // RFC 8656 §7.2 steps 5-9, in order: a reservation token stands alone; one of
        // REQUESTED- and ADDITIONAL-ADDRESS-FAMILY; a reserved pair is single-family; the
        // additional family can only be IPv6 (the requested one being IPv4).
        let port = match (msg.get(attr::EVEN_PORT), msg.get(attr::RESERVATION_TOKEN)) {
            (None, None) => PortRequest::Any,
            (Some(even), None) => PortRequest::Even {
                reserve_next: even.first().is_some_and(|b| b & 0x80 != 0),
            },
            (None, Some(token)) => match <[u8; 8]>::try_from(token) {
                Ok(token) if additional.is_none() => PortRequest::Reserved(token),
                _ => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
            },
            (Some(_), Some(_)) => {
                return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST)
            }
        };
        if requested.is_some() && additional.is_some() {
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        }
        let family = match requested {
            None | Some([0x01, ..]) => Family::V4,
            Some([0x02, ..]) => Family::V6,
            Some(_) => {
                return self.reply_error(
                    out,
                    tuple,
                    msg,
                    seal,
                    errors::ADDRESS_FAMILY_NOT_SUPPORTED,
                )
            }
        };
        let additional = match additional {
            None => None,
            Some(_) if port == (PortRequest::Even { reserve_next: true }) => {
                return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST)
            }
            Some([0x02, ..]) => Some(Family::V6),
            Some(_) => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
        };
        if self.draining.load(Ordering::Relaxed) {
            self.counters.drain_rejections += 1;
            info!(client = %tuple.client, user = authed.username, "allocation refused: server is draining");
            return self.refuse_allocate(out, tuple, msg, seal, true);
        }
        let quota_id = self.config.auth.quota_id(authed.username);
        if let Err(error) =
            self.quotas
                .try_acquire(quota_id, self.config.user_quota, self.config.total_quota)
        {
            self.counters.quota_rejections += 1;
            info!(client = %tuple.client, user = authed.username, reason = %error, "allocation refused");
            let redirect = error == QuotaError::Total;
            return self.refuse_allocate(out, tuple, msg, seal, redirect);
        }
        let lifetime = self.config.grant_lifetime(msg.get_u32(attr::LIFETIME));
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let expires = now + lifetime;
        let index = self.allocations.insert(Allocation {
            generation,
            tuple,
            username: authed.username.into(),
            quota_id: quota_id.into(),
            key: authed.key,
            allocate_tid: *msg.transaction_id(),
            relays: [None; 2],
            address_error: None,
            legacy_family_attrs,
            pending: Some(PendingReply {
                sha256: seal.sha256,
                fingerprint: seal.fingerprint,
                family,
                additional,
            }),
            created: now,
            expires,
            permissions: Vec::new(),
            channels: Vec::new(),
            next_deadline: expires,
            stats: Traffic::default(),
            relay_transport,
            peer_connections: Vec::new(),
        });
        self.by_tuple.insert(tuple, index);
        self.counters.allocations_by_transport[transport_index(tuple.transport)] += 1;
        self.timers.schedule(expires, index, generation);
        let alloc = AllocId { index, generation };
        Output::BindRelay(RelayRequest {
            alloc,
            tuple,
            family,
            additional,
            port,
            transport: relay_transport,
        })
    }

    /// Refuses an Allocate for lack of room: 300 Try Alternate with the next `alternate-server`
    /// of the client's family when `redirect` and one is configured, else 486.
    fn refuse_allocate<'a>(
        &mut self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        redirect: bool,
    ) -> Output<'a> {
        let alternate = if redirect {
            self.next_alternate(Family::of(&tuple.client))
        } else {
            None
        };
        let Some(alternate) = alternate else {
            return self.reply_error(out, tuple, msg, seal, errors::ALLOCATION_QUOTA_REACHED);
        };
        self.counters.redirects += 1;
        debug!(client = %tuple.client, %alternate, "allocate redirected");
        self.reply(out, tuple, msg, Class::Error, seal, |w| {
            w.add_error_code(errors::TRY_ALTERNATE, reason(errors::TRY_ALTERNATE));
            w.add_address(attr::ALTERNATE_SERVER, alternate);
        })
    }

    /// Round-robin over the configured alternate servers of `family`.
    fn next_alternate(&mut self, family: Family) -> Option<SocketAddr> {
        let alternates = &self.config.alternate_servers;
        let count = alternates
            .iter()
            .filter(|a| Family::of(a) == family)
            .count();
        if count == 0 {
            return None;
        }
        let position = &mut self.next_alternate[family.index()];
        let pick = *position % count;
        *position = position.wrapping_add(1);
        alternates
            .iter()
            .filter(|a| Family::of(a) == family)
            .nth(pick)
            .copied()
    }

    fn allocate_success<'a>(
        &mut self,
        now: Instant,
        index: usize,
        tid: &TransactionId,
        reservation: Option<[u8; 8]>,
        seal: Seal<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let allocation = &self.allocations[index];
        if !allocation.has_relay() {
            return Output::Nothing;
        }
        let lifetime = remaining_secs(allocation.expires, now);
        let tuple = allocation.tuple;
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            Method::ALLOCATE,
            Class::Success,
            tid,
            software,
            seal,
            |w| {
                // Two XOR-RELAYED-ADDRESS attributes for a dual-stack allocation, IPv4 first.
                for advertised in allocation.advertised() {
                    w.add_xor_address(attr::XOR_RELAYED_ADDRESS, advertised);
                }
                w.add_u32(attr::LIFETIME, lifetime);
                w.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
                if let Some(token) = reservation {
                    w.add_bytes(attr::RESERVATION_TOKEN, &token);
                }
                if let Some((family, code)) = allocation.address_error {
                    let typ = if allocation.legacy_family_attrs {
                        attr::ADDRESS_ERROR_CODE_LEGACY
                    } else {
                        attr::ADDRESS_ERROR_CODE
                    };
                    w.add_address_error_code(typ, family.wire(), code, reason(code));
                }
            },
        );
        to_client(tuple, data)
    }

    fn refresh<'a>(
        &mut self,
        now: Instant,
        index: usize,
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let allocation = &self.allocations[index];
        let requested_family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            Some([0x01, ..]) => Some(Family::V4),
            Some([0x02, ..]) => Some(Family::V6),
            _ => None,
        };
        // RFC 8656 §8: a family the allocation has no relay of is a mismatch (either of the
        // two of a dual-stack allocation matches; the whole allocation is refreshed).
        if requested_family.is_some_and(|family| allocation.relays[family.index()].is_none()) {
            return self.reply_error(out, tuple, msg, seal, errors::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        let granted = match msg.get_u32(attr::LIFETIME) {
            Some(0) => {
                self.remove_allocation(index, Removal::Deleted);
                Duration::ZERO
            }
            requested => {
                let lifetime = self.config.grant_lifetime(requested);
                let allocation = &mut self.allocations[index];
                allocation.expires = now + lifetime;
                debug!(client = %tuple.client, lifetime = lifetime.as_secs(), "allocation refreshed");
                self.reschedule(index);
                lifetime
            }
        };
        self.reply(out, tuple, msg, Class::Success, seal, |w| {
            w.add_u32(attr::LIFETIME, granted.as_secs() as u32);
        })
    }

    fn create_permission<'a>(
        &mut self,
        now: Instant,
        index: usize,
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        // All-or-nothing: every XOR-PEER-ADDRESS is checked before any permission is installed.
        let mut peers = 0;
        for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
            let code = match stun::decode_xor_address(attribute.value, msg.transaction_id()) {
                Err(_) => Some(errors::BAD_REQUEST),
                Ok(peer) => self.check_peer(index, peer),
            };
            if let Some(code) = code {
                return self.reply_error(out, tuple, msg, seal, code);
            }
            peers += 1;
        }
        if peers == 0 {
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        }
        let expires = now + self.config.permission_lifetime;
        let allocation = &mut self.allocations[index];
        for attribute in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
            if let Ok(peer) = stun::decode_xor_address(attribute.value, msg.transaction_id()) {
                allocation.install_permission(peer.ip(), expires);
            }
        }
        self.reschedule(index);
        self.reply_success(out, tuple, msg, seal)
    }

    /// RFC 6062 §5.2: check the peer, refuse a second connection to it (446), then ask the I/O
    /// layer to connect; the response waits for [`Server::connect_result`].
    fn connect<'a>(
        &mut self,
        now: Instant,
        index: usize,
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        if self.allocations[index].relay_transport != RelayTransport::Tcp {
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        }
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|v| stun::decode_xor_address(v, msg.transaction_id()).ok());
        let Some(peer) = peer else {
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        };
        if let Some(code) = self.check_peer(index, peer) {
            return self.reply_error(out, tuple, msg, seal, code);
        }
        if self.allocations[index]
            .peer_connections
            .iter()
            .any(|c| c.peer == peer)
        {
            return self.reply_error(out, tuple, msg, seal, errors::CONNECTION_ALREADY_EXISTS);
        }
        if self.allocations[index].peer_connections.len() >= MAX_PEER_CONNECTIONS {
            return self.reply_error(out, tuple, msg, seal, errors::INSUFFICIENT_CAPACITY);
        }
        let Some(id) = self.next_connection_id(index) else {
            return self.reply_error(out, tuple, msg, seal, errors::INSUFFICIENT_CAPACITY);
        };
        let expires = now + self.config.permission_lifetime;
        let allocation = &mut self.allocations[index];
        // The peer may connect back to the relayed address: Connect installs the permission.
        allocation.install_permission(peer.ip(), expires);
        allocation.peer_connections.push(PeerConnection {
            id,
            peer,
            connect: Some(PendingConnect {
                tid: *msg.transaction_id(),
                sha256: seal.sha256,
                fingerprint: seal.fingerprint,
            }),
        });
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        self.reschedule(index);
        self.events.push_back(Event::ConnectPeer {
            alloc,
            peer,
            connection_id: id,
        });
        Output::Nothing
    }

    fn channel_bind<'a>(
        &mut self,
        now: Instant,
        index: usize,
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        // RFC 6062 §5: channels (and Send/Data) do not exist on TCP allocations.
        if self.allocations[index].relay_transport == RelayTransport::Tcp {
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        }
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) => u16::from_be_bytes([hi, lo]),
            _ => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
        };
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|v| stun::decode_xor_address(v, msg.transaction_id()).ok());
        let Some(peer) =
            peer.filter(|_| (0x4000..=self.config.max_channel_number).contains(&number))
        else {
            debug!(client = %tuple.client, number = format_args!("{number:#06x}"), "channel bind refused: bad number or peer");
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        };
        if let Some(code) = self.check_peer(index, peer) {
            return self.reply_error(out, tuple, msg, seal, code);
        }
        let allocation = &mut self.allocations[index];
        // Re-binding rules (RFC 8656 §11.2): a number stays with its peer and a peer with its number.
        let number_taken = allocation
            .channel_by_number(number)
            .is_some_and(|c| c.peer != peer);
        let peer_taken = allocation
            .channel_by_peer(peer)
            .is_some_and(|c| c.number != number);
        if number_taken || peer_taken {
            debug!(client = %tuple.client, number = format_args!("{number:#06x}"), %peer, "channel bind refused: re-binding conflict");
            return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST);
        }
        allocation.bind_channel(number, peer, now + self.config.channel_lifetime);
        allocation.install_permission(peer.ip(), now + self.config.permission_lifetime);
        self.reschedule(index);
        self.reply_success(out, tuple, msg, seal)
    }

    /// The error code a peer address earns, if any: family mismatch (443) or policy (403).
    fn check_peer(&mut self, index: usize, peer: SocketAddr) -> Option<u16> {
        let allocation = &self.allocations[index];
        if !allocation.has_relay() {
            return None; // not reachable: requests wait for the relay to be bound
        }
        // RFC 8656 §9.2/§11.2: the peer's family must be one the allocation relays.
        if !allocation.serves(peer.ip()) {
            return Some(errors::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        if !self.config.policy.permits(peer.ip()) {
            self.counters.peers_denied += 1;
            info!(client = %self.allocations[index].tuple.client, peer = %peer.ip(), "peer denied by policy");
            return Some(errors::FORBIDDEN);
        }
        None
    }

    /// Files the allocation under an earlier deadline if one appeared; a later one is picked up
    /// when the current entry fires.
    fn reschedule(&mut self, index: usize) {
        let allocation = &mut self.allocations[index];
        let earliest = allocation.earliest_deadline();
        if earliest < allocation.next_deadline {
            allocation.next_deadline = earliest;
            self.timers.schedule(earliest, index, allocation.generation);
        }
    }

    fn remove_allocation(&mut self, index: usize, removal: Removal) {
        let allocation = self.allocations.remove(index);
        self.by_tuple.remove(&allocation.tuple);
        self.quotas.release(&allocation.quota_id);
        let by_transport = &mut self.counters.allocations_by_transport
            [transport_index(allocation.tuple.transport)];
        *by_transport = by_transport.saturating_sub(1);
        match removal {
            Removal::Expired => self.counters.allocations_expired += 1,
            Removal::Deleted => self.counters.allocations_deleted += 1,
            Removal::Failed => {}
        }
        debug!(client = %allocation.tuple.client, user = %allocation.username, reason = removal.as_str(), "allocation ended");
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        let relays = allocation.relays.map(|relay| relay.map(|(local, _)| local));
        self.events.push_back(Event::Released { alloc, relays });
    }

    /// Counts a response we send by method and code (requests by result, for metrics).
    fn count_reply<'a>(&mut self, output: Output<'a>) -> Output<'a> {
        if let Output::ToClient { data, .. } = &output {
            self.counters.requests.record(data);
        }
        output
    }

    /// Answers the request `msg` over `tuple`: `body`, then SOFTWARE, integrity and fingerprint
    /// as `seal` says.
    fn reply<'a>(
        &self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        class: Class,
        seal: Seal<'_>,
        body: impl FnOnce(&mut MessageWriter<'a>),
    ) -> Output<'a> {
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            msg.method(),
            class,
            msg.transaction_id(),
            software,
            seal,
            body,
        );
        to_client(tuple, data)
    }

    fn reply_challenge<'a>(
        &mut self,
        now: Instant,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        challenge: Challenge,
    ) -> Output<'a> {
        let seal = Seal::open(msg);
        let code = match challenge {
            Challenge::BadRequest => {
                return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST)
            }
            Challenge::Unauthorized => errors::UNAUTHORIZED,
            Challenge::StaleNonce => errors::STALE_NONCE,
        };
        let nonce = self.nonces.issue(tuple.client, self.clock.unix_at(now));
        let realm = self.config.auth.realm();
        self.reply(out, tuple, msg, Class::Error, seal, |w| {
            w.add_error_code(code, reason(code));
            w.add_bytes(attr::REALM, realm.as_bytes());
            w.add_bytes(attr::NONCE, nonce.as_str().as_bytes());
        })
    }

    fn reply_unknown<'a>(
        &self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        unknown: &[u16],
    ) -> Output<'a> {
        self.reply(out, tuple, msg, Class::Error, seal, |w| {
            w.add_error_code(errors::UNKNOWN_ATTRIBUTE, reason(errors::UNKNOWN_ATTRIBUTE));
            w.add_unknown_attributes(unknown);
        })
    }

    fn reply_error<'a>(
        &self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        code: u16,
    ) -> Output<'a> {
        self.reply(out, tuple, msg, Class::Error, seal, |w| {
            w.add_error_code(code, reason(code));
        })
    }

    fn reply_success<'a>(
        &self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
    ) -> Output<'a> {
        self.reply(out, tuple, msg, Class::Success, seal, |_| {})
    }
}

#[derive(Clone, Copy, Debug)]
enum Removal {
    Expired,
    Deleted,
    Failed,
}

impl Removal {
    fn as_str(self) -> &'static str {
        match self {
            Removal::Expired => "expired",
            Removal::Deleted => "deleted",
            Removal::Failed => "relay bind failed",
        }
    }
}

/// The allocation `alloc` names, if it still exists.
fn live(allocations: &mut Slab<Allocation>, alloc: AllocId) -> Option<&mut Allocation> {
    allocations
        .get_mut(alloc.index)
        .filter(|a| a.generation == alloc.generation)
}

fn auth_reason(error: AuthError) -> &'static str {
    match error {
        AuthError::UnknownUser => "unknown user",
        AuthError::Expired => "credential expired",
        AuthError::TtlTooLong => "credential expiry beyond max-credential-ttl",
    }
}

/// Attributes whose meaning we implement (anything else comprehension-required → 420).
fn is_known_attribute(typ: u16) -> bool {
    matches!(
        typ,
        attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::REALM
            | attr::NONCE
            | attr::LIFETIME
            | attr::REQUESTED_TRANSPORT
            | attr::DONT_FRAGMENT
            | attr::EVEN_PORT
            | attr::RESERVATION_TOKEN
            | attr::REQUESTED_ADDRESS_FAMILY
            | attr::ADDITIONAL_ADDRESS_FAMILY
            | attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY
            | attr::XOR_PEER_ADDRESS
            | attr::CHANNEL_NUMBER
            | attr::DATA
            | attr::CONNECTION_ID
    )
}

/// The error code a relay bind failure answers with.
fn relay_error_code(error: RelayError) -> u16 {
    match error {
        RelayError::FamilyUnsupported => errors::ADDRESS_FAMILY_NOT_SUPPORTED,
        RelayError::NoPorts | RelayError::BadReservation => errors::INSUFFICIENT_CAPACITY,
    }
}

fn remaining_secs(expires: Instant, now: Instant) -> u32 {
    expires
        .saturating_duration_since(now)
        .as_secs()
        .min(u32::MAX.into()) as u32
}

fn to_client(tuple: FiveTuple, data: Option<&[u8]>) -> Output<'_> {
    match data {
        Some(data) => Output::ToClient { tuple, data },
        None => Output::Nothing,
    }
}

/// Writes a whole message: header, `body`, SOFTWARE if configured, then integrity and
/// fingerprint as `seal` says. `None` only if `out` is too small.
fn write_message<'b>(
    out: &'b mut [u8],
    method: Method,
    class: Class,
    tid: &TransactionId,
    software: Option<&str>,
    seal: Seal<'_>,
    body: impl FnOnce(&mut MessageWriter<'b>),
) -> Option<&'b [u8]> {
    let mut writer = MessageWriter::new(out, method, class, tid);
    body(&mut writer);
    if let Some(software) = software {
        writer.add_bytes(attr::SOFTWARE, software.as_bytes());
    }
    match (seal.key, seal.sha256) {
        (Some(key), true) => {
            writer.add_message_integrity_sha256(key);
        }
        (Some(key), false) => {
            writer.add_message_integrity(key);
        }
        (None, _) => {}
    }
    if seal.fingerprint {
        writer.add_fingerprint();
    }
    writer.finish()
}
