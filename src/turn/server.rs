//! `Server`: requests and data in, what to send out.

use super::allocation::{Allocation, AllocationInfo, PendingReply, Traffic};
use super::core_config::{same_family, CoreConfig};
use super::errors::{self, reason};
use super::timers::TimerQueue;
use crate::auth::{AuthError, LongTermKey, NonceCheck, NonceMint};
use crate::policy::Quotas;
use crate::stun::{
    self, attr, ChannelData, Class, FrameKind, IntegrityCheck, IntegrityKind, Message,
    MessageWriter, Method, TransactionId, CHANNEL_DATA_HEADER_LEN, DATA_INDICATION_MAX_PREFIX,
};
use rustc_hash::FxHashMap;
use slab::Slab;
use std::collections::VecDeque;
use std::net::SocketAddr;
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
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// The I/O layer is asked to bind a relay socket, then calls [`Server::relay_bound`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayRequest {
    pub alloc: AllocId,
    pub tuple: FiveTuple,
    pub family: Family,
    pub port: PortRequest,
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
    /// Send `data` from the allocation's relay socket to `peer`.
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
    /// The allocation ended: close its relay socket and return its port.
    Released {
        alloc: AllocId,
        relay: Option<SocketAddr>,
    },
}

/// How a response is protected: with the request's integrity kind and key, and a FINGERPRINT if
/// the request had one.
#[derive(Clone, Copy)]
struct Seal<'k> {
    key: Option<&'k LongTermKey>,
    sha256: bool,
    fingerprint: bool,
}

impl<'k> Seal<'k> {
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
    pub traffic: Traffic,
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
        }
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
                    self.stun_from_client(now, tuple, &msg, out)
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
                stun::write_data_indication_prefix(
                    &mut buf[start - prefix..start],
                    &tid,
                    peer,
                    len,
                );
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

    /// Completes an Allocate once the I/O layer has bound (or failed to bind) the relay socket.
    pub fn relay_bound<'a>(
        &mut self,
        now: Instant,
        alloc: AllocId,
        result: Result<BoundRelay, RelayError>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let Some(pending) = allocation.pending.take() else {
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
        match result {
            Ok(BoundRelay { local, reservation }) => {
                let advertised = self.config.advertised(local);
                allocation.relay = Some((local, advertised));
                self.counters.allocations_created += 1;
                debug!(client = %tuple.client, relay = %advertised, user = %allocation.username, "allocation created");
                self.allocate_success(now, alloc.index, &tid, reservation, seal, out)
            }
            Err(error) => {
                self.remove_allocation(alloc.index, Removal::Failed);
                let code = match error {
                    RelayError::FamilyUnsupported => errors::ADDRESS_FAMILY_NOT_SUPPORTED,
                    RelayError::NoPorts | RelayError::BadReservation => {
                        errors::INSUFFICIENT_CAPACITY
                    }
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
                to_client(tuple, data)
            }
        }
    }

    /// Ends the allocation of a 5-tuple (its TCP connection closed).
    pub fn close_tuple(&mut self, tuple: &FiveTuple) {
        if let Some(&index) = self.by_tuple.get(tuple) {
            self.remove_allocation(index, Removal::Deleted);
        }
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
                | Method::CHANNEL_BIND,
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
        let mut unknown = [0u16; 8];
        let count = msg.unknown_required(is_known_attribute, &mut unknown);
        if count > 0 {
            return self.reply_unknown(out, tuple, msg, seal, &unknown[..count]);
        }
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            msg.method(),
            Class::Success,
            msg.transaction_id(),
            software,
            seal,
            |w| {
                w.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
            },
        );
        to_client(tuple, data)
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
        let relay_family_matches = allocation
            .relay
            .is_some_and(|(local, _)| same_family(local.ip(), peer.ip()));
        if !relay_family_matches || !allocation.has_permission(peer.ip()) {
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
        let authed = match self.authenticate(now, tuple, msg, existing) {
            Ok(authed) => authed,
            Err(challenge) => return self.reply_challenge(now, out, tuple, msg, challenge),
        };
        let key = authed.key;
        let seal = Seal {
            key: Some(&key),
            sha256: authed.kind == IntegrityKind::Sha256,
            fingerprint: msg.fingerprint_ok().is_some(),
        };
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
                if allocation.allocate_tid == *msg.transaction_id() && allocation.relay.is_some() {
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
            (_, Some(index)) => self.channel_bind(now, index, tuple, msg, seal, out),
        }
    }

    /// RFC 8489 §9.2.4, with the key remembered per allocation (§9.2.2: one username per
    /// allocation). REST expiry is checked on every request so an expired credential cannot
    /// keep refreshing.
    fn authenticate<'m>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'m>,
        existing: Option<usize>,
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
        match self
            .nonces
            .check(nonce, tuple.client, unix, self.config.stale_nonce_secs)
        {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => return Err(Challenge::StaleNonce),
        }
        let keys = match self.config.auth.keys(username, unix) {
            Ok(keys) => keys,
            Err(error) => {
                self.counters.auth_failures += 1;
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
        match msg.get(attr::REQUESTED_TRANSPORT) {
            None => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
            Some([17, ..]) => {}
            Some(_) => {
                return self.reply_error(
                    out,
                    tuple,
                    msg,
                    seal,
                    errors::UNSUPPORTED_TRANSPORT_PROTOCOL,
                )
            }
        }
        let port = match (msg.get(attr::EVEN_PORT), msg.get(attr::RESERVATION_TOKEN)) {
            (None, None) => PortRequest::Any,
            (Some(even), None) => PortRequest::Even {
                reserve_next: even.first().is_some_and(|b| b & 0x80 != 0),
            },
            (None, Some(token)) => match <[u8; 8]>::try_from(token) {
                Ok(token) => PortRequest::Reserved(token),
                Err(_) => return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST),
            },
            (Some(_), Some(_)) => {
                return self.reply_error(out, tuple, msg, seal, errors::BAD_REQUEST)
            }
        };
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => Family::V4,
            Some([0x01, ..]) => Family::V4,
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
        let quota_id = self.config.auth.quota_id(authed.username);
        if let Err(error) =
            self.quotas
                .try_acquire(quota_id, self.config.user_quota, self.config.total_quota)
        {
            self.counters.quota_rejections += 1;
            info!(client = %tuple.client, user = authed.username, reason = %error, "allocation refused");
            return self.reply_error(out, tuple, msg, seal, errors::ALLOCATION_QUOTA_REACHED);
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
            relay: None,
            pending: Some(PendingReply {
                sha256: seal.sha256,
                fingerprint: seal.fingerprint,
            }),
            created: now,
            expires,
            permissions: Vec::new(),
            channels: Vec::new(),
            next_deadline: expires,
            stats: Traffic::default(),
        });
        self.by_tuple.insert(tuple, index);
        self.timers.schedule(expires, index, generation);
        let alloc = AllocId { index, generation };
        Output::BindRelay(RelayRequest {
            alloc,
            tuple,
            family,
            port,
        })
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
        let Some((_, advertised)) = allocation.relay else {
            return Output::Nothing;
        };
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
                w.add_xor_address(attr::XOR_RELAYED_ADDRESS, advertised);
                w.add_u32(attr::LIFETIME, lifetime);
                w.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
                if let Some(token) = reservation {
                    w.add_bytes(attr::RESERVATION_TOKEN, &token);
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
        let relay_family = allocation.relay.map(|(local, _)| Family::of(&local));
        let requested_family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            Some([0x01, ..]) => Some(Family::V4),
            Some([0x02, ..]) => Some(Family::V6),
            _ => None,
        };
        if requested_family.is_some() && requested_family != relay_family {
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
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            Method::REFRESH,
            Class::Success,
            msg.transaction_id(),
            software,
            seal,
            |w| {
                w.add_u32(attr::LIFETIME, granted.as_secs() as u32);
            },
        );
        to_client(tuple, data)
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

    fn channel_bind<'a>(
        &mut self,
        now: Instant,
        index: usize,
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
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
        let relay = self.allocations[index].relay.map(|(local, _)| local)?;
        if !same_family(relay.ip(), peer.ip()) {
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
        let relay = allocation.relay.map(|(local, _)| local);
        self.events.push_back(Event::Released { alloc, relay });
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
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            msg.method(),
            Class::Error,
            msg.transaction_id(),
            software,
            seal,
            |w| {
                w.add_error_code(code, reason(code));
                w.add_bytes(attr::REALM, realm.as_bytes());
                w.add_bytes(attr::NONCE, nonce.as_str().as_bytes());
            },
        );
        to_client(tuple, data)
    }

    fn reply_unknown<'a>(
        &self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        unknown: &[u16],
    ) -> Output<'a> {
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            msg.method(),
            Class::Error,
            msg.transaction_id(),
            software,
            seal,
            |w| {
                w.add_error_code(errors::UNKNOWN_ATTRIBUTE, reason(errors::UNKNOWN_ATTRIBUTE));
                w.add_unknown_attributes(unknown);
            },
        );
        to_client(tuple, data)
    }

    fn reply_error<'a>(
        &self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
        code: u16,
    ) -> Output<'a> {
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            msg.method(),
            Class::Error,
            msg.transaction_id(),
            software,
            seal,
            |w| {
                w.add_error_code(code, reason(code));
            },
        );
        to_client(tuple, data)
    }

    fn reply_success<'a>(
        &self,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        seal: Seal<'_>,
    ) -> Output<'a> {
        let software = self.config.software.as_deref();
        let data = write_message(
            out,
            msg.method(),
            Class::Success,
            msg.transaction_id(),
            software,
            seal,
            |_| {},
        );
        to_client(tuple, data)
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
            | attr::XOR_PEER_ADDRESS
            | attr::CHANNEL_NUMBER
            | attr::DATA
    )
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
