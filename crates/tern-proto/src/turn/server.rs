//! `Server`: the state, its construction and settings, the dispatch of what comes in, timers
//! and the end of allocations. What each request does lives in the sibling modules.

use super::allocation::Allocation;
use super::capacity::Capacity;
use super::core_config::CoreConfig;
use super::log_gate::LogGate;
use super::metrics::{Counters, LogKind, Revoked};
use super::nat_discovery::NatDiscovery;
use super::refusal;
use super::reply::{Answer, Seal};
use super::request::{self, is_known_attribute};
use super::timers::TimerQueue;
use super::{AllocId, ErrorCode, Event, FiveTuple, OffloadKey, Output};
use crate::auth::NonceMint;
use crate::metrics::LabelSet;
use crate::policy::{CapacityPool, Quotas, SourceLimiter, Verdict};
use crate::stun::{self, Class, FrameKind, Message, Method, TransactionId};
use rustc_hash::FxHashMap;
use slab::Slab;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tracing::debug;

/// Wall-clock seconds, derived from a monotonic anchor so the core never reads a clock.
#[derive(Clone, Copy, Debug)]
pub(super) struct WallClock {
    at: Instant,
    unix: u64,
}

impl WallClock {
    pub fn unix_at(&self, now: Instant) -> u64 {
        self.unix + now.saturating_duration_since(self.at).as_secs()
    }
}

/// The TURN server state machine of one worker.
pub struct Server {
    pub(super) config: Arc<CoreConfig>,
    pub(super) nonces: NonceMint,
    pub(super) quotas: Arc<Quotas>,
    pub(super) allocations: Slab<Allocation>,
    /// FxHash: looked up on every ChannelData packet, where SipHash was a visible cost.
    pub(super) by_tuple: FxHashMap<FiveTuple, usize>,
    pub(super) timers: TimerQueue,
    pub(super) events: VecDeque<Event>,
    pub(super) clock: WallClock,
    pub(super) next_generation: u32,
    rng: u64,
    pub(super) counters: Counters,
    /// Set while the process drains: new Allocates are refused (300 to an alternate server if
    /// any is configured, else 486), existing allocations go on.
    pub(super) draining: Arc<AtomicBool>,
    /// RFC 5780 listener pairs; empty unless two listening addresses of a family exist.
    pub(super) nat: Arc<NatDiscovery>,
    /// Round-robin position in `alternate-server`, per client address family.
    pub(super) next_alternate: [usize; 2],
    /// The latest `now` an input brought: what rate limits and log gates measure against.
    pub(super) now: Instant,
    /// Buckets of answers to unauthenticated UDP requests, per source address. Made on first
    /// use, so stream connections (a server each, and no spoofing) never carry one.
    source_limiter: Option<SourceLimiter>,
    pub(super) log_gates: [LogGate; LogKind::COUNT],
    /// This server's part of `bps-capacity`, by [`Direction`](super::metrics::Direction).
    pub(super) capacity: Capacity,
    /// After a reload: the slab index from which permissions and channels are judged again.
    revalidate_from: Option<usize>,
    /// Announce offloadable channels and permissions (`offload`).
    pub(super) offload: bool,
}

/// Allocations whose permissions and channels a reload re-judges per wake-up: with their caps
/// (`max-permissions`, `max-channels`) this bounds the work between two batches of packets.
const REVALIDATE_BATCH: usize = 64;

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
            now,
            source_limiter: None,
            log_gates: Default::default(),
            capacity: Capacity::default(),
            revalidate_from: None,
            offload: false,
        }
    }

    /// Takes `1/share` of `bps-capacity` for this server's relayed traffic: each of N UDP workers
    /// takes one share of N (the kernel spreads clients evenly over them), so no bucket is shared
    /// across cores. 0, the default, leaves this server out of the capacity.
    pub fn set_capacity_share(&mut self, share: u32) {
        self.capacity = Capacity::share(share);
    }

    /// Draws this server's part of `bps-capacity` from `pool`, which other servers share, in
    /// batches of a few milliseconds of its rate: for servers too many and too short-lived for
    /// a share each (a TCP/TLS connection), without a shared cache line per packet.
    pub fn set_capacity_pool(&mut self, pool: Arc<CapacityPool>) {
        self.capacity = Capacity::pooled(pool);
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

    /// Swaps in a reloaded configuration. Live allocations keep their state, except what the new
    /// configuration denies: their permissions and channels are judged again over the next
    /// wake-ups ([`Server::poll_timeout`] says when), [`REVALIDATE_BATCH`] allocations at a time.
    pub fn set_config(&mut self, config: Arc<CoreConfig>) {
        self.config = config;
        if !self.allocations.is_empty() {
            self.revalidate_from = Some(0);
        }
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

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A datagram or stream frame from a client. Replies are written into `out`.
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        input: &'a [u8],
        out: &'a mut [u8],
    ) -> Output<'a> {
        self.now = now;
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
    ///
    /// [`DATA_INDICATION_MAX_PREFIX`]: crate::stun::DATA_INDICATION_MAX_PREFIX
    pub fn handle_peer<'a>(
        &mut self,
        now: Instant,
        alloc: AllocId,
        peer: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
    ) -> Output<'a> {
        self.now = now;
        self.peer_data_to_client(alloc, peer, buf, len)
    }

    /// Ends the allocation of a 5-tuple (its TCP connection closed).
    pub fn close_tuple(&mut self, tuple: &FiveTuple) {
        if let Some(&index) = self.by_tuple.get(tuple) {
            self.remove_allocation(index, Removal::Deleted);
        }
    }

    /// When [`Server::handle_timeout`] is due next: a timer, or at once while a reload is still
    /// being applied to live allocations.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.revalidate_from {
            Some(_) => Some(self.now),
            None => self.timers.next_deadline(),
        }
    }

    /// Expires allocations, permissions and channels due at `now`, and applies a reload to the
    /// next batch of live allocations.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.revalidate_batch();
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
            let (offloaded, alloc) = (allocation.offloaded, AllocId { index, generation });
            let events = &mut self.events;
            let next = allocation.sweep(now, |what| {
                if offloaded {
                    events.push_back(Event::Unoffload { alloc, what });
                }
            });
            allocation.next_deadline = next;
            self.schedule(next, index, generation);
        }
    }

    /// Files a timer entry. When stale entries (of ended allocations, or deadlines that moved
    /// earlier) outnumber live ones, the queue is rebuilt from the live allocations, so its size
    /// follows live state and not the allocations ever made: a rebuild costs O(live) and comes
    /// only after that many entries went stale, so O(1) amortised.
    fn schedule(&mut self, at: Instant, index: usize, generation: u32) {
        self.timers.schedule(at, index, generation);
        self.compact_timers();
    }

    /// Rebuilds the timer queue if stale entries outnumber live allocations (checked when an
    /// entry is filed and when an allocation ends).
    fn compact_timers(&mut self) {
        if self.timers.len() > 2 * self.allocations.len() + 64 {
            let live = self
                .allocations
                .iter()
                .map(|(index, a)| (a.next_deadline, index, a.generation));
            self.timers.rebuild(live);
        }
    }

    /// Judges the permissions, channels and RFC 6062 peer connections of the next
    /// [`REVALIDATE_BATCH`] allocations against the configuration a reload brought: a peer it
    /// denies loses its permission and channels, and its peer connections are closed
    /// ([`Event::ClosePeerConnection`]); all counted in `tern_reload_revocations_total`. A
    /// permission to one of tern's own addresses is marked again.
    fn revalidate_batch(&mut self) {
        let Some(from) = self.revalidate_from else {
            return;
        };
        let end = from
            .saturating_add(REVALIDATE_BATCH)
            .min(self.allocations.capacity());
        let config = self.config.clone();
        let policy = &config.policy;
        let mut revoked = [0u64; Revoked::COUNT];
        let mut rejudged = Vec::new();
        for index in from..end {
            let Some(allocation) = self.allocations.get_mut(index) else {
                continue;
            };
            let alloc = AllocId {
                index,
                generation: allocation.generation,
            };
            let offloaded = allocation.offloaded;
            let events = &mut self.events;
            let mut withdraw = |what| {
                if offloaded {
                    events.push_back(Event::Unoffload { alloc, what });
                }
            };
            let before = allocation.permissions.len();
            rejudged.clear();
            allocation.permissions.retain(|ip, permission| {
                let was = permission.relay_ports_only;
                permission.relay_ports_only = policy.relay_ports_only(*ip);
                let kept = policy.permits(*ip);
                if !kept || was != permission.relay_ports_only {
                    withdraw(OffloadKey::Permission(*ip));
                    if kept {
                        rejudged.push(*ip);
                    }
                }
                kept
            });
            revoked[Revoked::Permission.index()] += (before - allocation.permissions.len()) as u64;
            let permissions = &allocation.permissions;
            let numbers = &mut allocation.channel_numbers;
            allocation.channels.retain(|number, channel| {
                let kept = policy.judge(channel.peer) == Verdict::Permitted
                    && permissions.contains_key(&channel.peer.ip());
                if !kept {
                    numbers.remove(&channel.peer);
                    revoked[Revoked::Channel.index()] += 1;
                    withdraw(OffloadKey::Channel(*number));
                }
                kept
            });
            allocation.peer_connections.retain_mut(|connection| {
                let denied = policy.judge(connection.peer) != Verdict::Permitted;
                // One still connecting stays until the I/O layer reports it given up (answered
                // 403); it is revoked once, whatever the reloads meanwhile.
                let revoked_now = denied
                    && match &mut connection.connect {
                        Some(pending) => !std::mem::replace(&mut pending.revoked, true),
                        None => true,
                    };
                if revoked_now {
                    revoked[Revoked::TcpPeerConnection.index()] += 1;
                    events.push_back(Event::ClosePeerConnection {
                        alloc,
                        connection_id: connection.id,
                    });
                }
                !denied || connection.connect.is_some()
            });
            self.reconsider_offload(index, &rejudged);
        }
        for (counter, count) in self.counters.reload_revocations.iter_mut().zip(revoked) {
            *counter += count;
        }
        if revoked.iter().any(|&count| count > 0) {
            debug!(
                permissions = revoked[Revoked::Permission.index()],
                channels = revoked[Revoked::Channel.index()],
                tcp_peer_connections = revoked[Revoked::TcpPeerConnection.index()],
                "reload removed what it denies"
            );
        }
        self.revalidate_from = (end < self.allocations.capacity()).then_some(end);
    }

    /// Whether an answer to an unauthenticated request from `client` may go out (per-source
    /// token bucket, `unauthenticated-rate-limit`); counts the ones that may not.
    pub(super) fn admit_unauthenticated(&mut self, client: IpAddr) -> bool {
        let rate = self.config.unauthenticated_rate_limit;
        if rate == 0 {
            return true;
        }
        let now = self.now;
        let limiter = self
            .source_limiter
            .get_or_insert_with(|| SourceLimiter::new(now, rand::random()));
        if limiter.admit(now, client, rate) {
            return true;
        }
        self.counters.unauthenticated_dropped += 1;
        false
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
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
            (Class::Indication, Method::SEND) => match request::SendIndication::decode(msg) {
                Ok(send) => self.send_indication(tuple, send),
                Err(_) => Output::Nothing,
            },
            (
                Class::Request,
                Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT,
            ) => self.turn_request(now, tuple, msg, out),
            (Class::Request, _) => {
                let answer = Answer::to(msg, tuple, Seal::open(msg));
                self.reply_error(out, &answer, ErrorCode::BadRequest)
            }
            _ => Output::Nothing,
        }
    }

    /// Allocate, Refresh, CreatePermission, ChannelBind, Connect: authenticate, check the
    /// attributes, decode, then hand over to the method.
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
        let answer = Answer::to(msg, tuple, Seal::answering(msg, &key, authed.kind));
        if let Some(index) = existing {
            if *self.allocations[index].username != *authed.username {
                return self.reply_error(out, &answer, ErrorCode::WrongCredentials);
            }
        }
        let mut unknown = [0u16; 8];
        let count = msg.unknown_required(is_known_attribute, &mut unknown);
        if count > 0 {
            return self.reply_unknown(out, &answer, &unknown[..count]);
        }
        let Some(index) = existing else {
            if msg.method() != Method::ALLOCATE {
                return self.reply_error(out, &answer, ErrorCode::AllocationMismatch);
            }
            return match request::Allocate::decode(msg, tuple.transport.is_stream()) {
                Ok(allocate) => self.allocate(now, allocate, &authed, &answer, out),
                Err(error) => self.reply_malformed(out, &answer, error),
            };
        };
        match msg.method() {
            Method::ALLOCATE => self.allocate_again(now, index, &answer, out),
            Method::REFRESH => {
                self.refresh(now, index, request::Refresh::decode(msg), &answer, out)
            }
            Method::CREATE_PERMISSION => match request::CreatePermission::decode(msg) {
                Ok(create) => self.create_permission(now, index, create, &answer, out),
                Err(error) => self.reply_malformed(out, &answer, error),
            },
            Method::CONNECT => match request::Connect::decode(msg) {
                Ok(connect) => self.connect(now, index, connect, &answer, out),
                Err(error) => self.reply_malformed(out, &answer, error),
            },
            _ => {
                let max_number = self.config.max_channel_number;
                match request::ChannelBind::decode(msg, max_number) {
                    Ok(bind) => self.channel_bind(now, index, bind, &answer, out),
                    Err(error) => self.reply_malformed(out, &answer, error),
                }
            }
        }
    }

    /// Answers a request that did not decode with the code its failure earns.
    pub(super) fn reply_malformed<'a>(
        &mut self,
        out: &'a mut [u8],
        answer: &Answer<'_>,
        error: request::DecodeError,
    ) -> Output<'a> {
        if let request::DecodeError::ChannelOutOfRange(number) = error {
            refusal::channel_number(answer.tuple.client, number, self.config.max_channel_number);
        } else {
            debug!(client = %answer.tuple.client, method = answer.method.0, ?error, "request refused");
        }
        self.reply_error(out, answer, error.code())
    }

    pub(super) fn random_tid(&mut self) -> TransactionId {
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

    /// Files the allocation under a new one: a `generation` for its id, a deadline for its expiry.
    pub(super) fn insert_allocation(&mut self, allocation: Allocation) -> AllocId {
        let generation = allocation.generation;
        let (tuple, expires) = (allocation.tuple, allocation.expires);
        let index = self.allocations.insert(allocation);
        self.by_tuple.insert(tuple, index);
        self.counters.allocations_by_transport[tuple.transport.index()] += 1;
        self.schedule(expires, index, generation);
        AllocId { index, generation }
    }

    /// Files the allocation under `deadline` (a permission's, a channel's, its own expiry) if that
    /// comes before the one it is filed under; a later one is picked up when the current entry
    /// fires. O(log n), whatever the allocation holds.
    pub(super) fn reschedule(&mut self, index: usize, deadline: Instant) {
        let allocation = &mut self.allocations[index];
        if deadline < allocation.next_deadline {
            allocation.next_deadline = deadline;
            let generation = allocation.generation;
            self.schedule(deadline, index, generation);
        }
    }

    pub(super) fn remove_allocation(&mut self, index: usize, removal: Removal) {
        let allocation = self.allocations.remove(index);
        self.by_tuple.remove(&allocation.tuple);
        self.quotas
            .release(&allocation.quota_id, allocation.tuple.client.ip());
        let by_transport =
            &mut self.counters.allocations_by_transport[allocation.tuple.transport.index()];
        *by_transport = by_transport.saturating_sub(1);
        match removal {
            Removal::Expired => self.counters.allocations_expired += 1,
            Removal::Deleted => self.counters.allocations_deleted += 1,
            Removal::Revoked => self.counters.allocations_revoked += 1,
            Removal::Failed => {}
        }
        debug!(client = %allocation.tuple.client, user = %allocation.username, reason = removal.as_str(), "allocation ended");
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        let relays = allocation.relays.map(|relay| relay.map(|(local, _)| local));
        self.events.push_back(Event::Released { alloc, relays });
        self.compact_timers();
    }
}

/// How an allocation ended.
#[derive(Clone, Copy, Debug)]
pub(super) enum Removal {
    Expired,
    Deleted,
    /// Its credential no longer verifies: the secret or user was removed.
    Revoked,
    Failed,
}

impl Removal {
    fn as_str(self) -> &'static str {
        match self {
            Removal::Expired => "expired",
            Removal::Deleted => "deleted",
            Removal::Revoked => "credential revoked",
            Removal::Failed => "relay bind failed",
        }
    }
}

/// The allocation `alloc` names, if it still exists.
pub(super) fn live(allocations: &mut Slab<Allocation>, alloc: AllocId) -> Option<&mut Allocation> {
    allocations
        .get_mut(alloc.index)
        .filter(|a| a.generation == alloc.generation)
}
