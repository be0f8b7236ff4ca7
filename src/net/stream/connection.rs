//! One TCP/TLS client connection as a state machine, shaped like `turn::Server`: `now` and bytes
//! in, typed outputs and one deadline out, no sockets and no clock. The tokio task in `task.rs`
//! only moves bytes between the sockets and this.
//!
//! It owns the connection's `turn::Server` (a stream 5-tuple has at most one allocation), the
//! first bytes (an optional PROXY header, then TLS or STUN), the framing of STUN and ChannelData
//! frames, the bounded queue of bytes for the client, and every deadline:
//!
//! - `stream-idle-timeout`: a connection that holds no allocation is closed when it has sent no
//!   valid STUN message for this long (from its start: PROXY header and TLS handshake count in;
//!   and again from the end of an allocation). One with an allocation lives as long as it.
//! - `partial-frame-timeout`: a started frame must complete within it (slowloris).
//! - `stream-write-timeout`: a client that leaves its queue full this long is cut.
//! - `max-bps` and `bps-capacity` toward peers: client data past them waits, unread, until the
//!   limits let it pass (TCP flow control pushes back on the client); none is dropped.
//! - the allocation's own timers, the fold of its counters into the shared metrics, and the
//!   wall-clock resync.
//!
//! The queue toward the client never blocks anything: datagrams from peers that find it full
//! (or that are past `max-bps` or `bps-capacity`: a UDP peer cannot be paused) are dropped, as
//! UDP would, and counted, and requests wait in the framing buffer until their replies fit, so
//! a client that stops reading still has its timers run and its admin calls answered.

use super::buffers::{ClientQueue, FrameBuffer};
use crate::metrics::LabelSet;
use crate::net::common::REPLY_BUFFER;
use crate::net::proxy_protocol::{self, Parsed};
use crate::net::relay::{self, RelayOwner};
use crate::net::stream_admin::Folder;
use crate::net::StreamStats;
use crate::stun::{
    self, attr, ChannelData, Class, FrameKind, Message, Method, DATA_INDICATION_MAX_PREFIX,
};
use crate::turn::{
    self, AllocId, AllocationInfo, BoundRelay, ConnectionLookup, CoreConfig, Direction, FiveTuple,
    RelayError, RelayRequest, RelayTransport, Server, Transport,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The part of the queue that relayed datagrams never take, so that replies (a Refresh!) still
/// fit while a peer floods.
const REPLY_RESERVE: usize = 16 * 1024;
/// How often a busy connection re-reads wall-clock time (REST expiry, nonces).
const CLOCK_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Frames a connection handles in one turn (one wake-up of its task) before it gives other
/// connections theirs: a client writing requests back to back gets its fair share of a runtime
/// thread, never the whole of it.
pub const FRAMES_PER_TURN: u32 = 64;

/// What may open a connection on this listener from this source.
#[derive(Clone, Copy, Debug)]
pub struct Accepts {
    /// A PROXY header (the source is in `proxy-protocol-trusted`).
    pub proxy: bool,
    /// A TLS ClientHello (a certificate is configured).
    pub tls: bool,
    /// STUN in the clear (`listening-port`, not `tls-listening-port`).
    pub plain: bool,
}

/// A connection's limits.
#[derive(Clone, Debug)]
pub struct Settings {
    pub idle_timeout: Duration,
    pub partial_frame_timeout: Duration,
    /// `stream-write-timeout`: a client whose queue stays full this long is cut.
    pub write_stall_timeout: Duration,
    /// `stream-queue-size`: the most that waits for a client that does not read.
    pub queue_limit: usize,
    pub accepts: Accepts,
    /// Reads wall-clock seconds (injected, so tests control it).
    pub wall_clock: fn() -> u64,
}

/// The process-wide registry of RFC 6062 peer connections waiting for their ConnectionBind, as
/// a connection sees it. `Claimed` is what the splice needs (the peer socket, in the I/O layer).
pub trait PeerConnections {
    type Claimed;
    /// The owning allocation's username and its control connection's client address.
    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)>;
    /// Takes pending connection `id` for this data connection.
    fn claim(&self, id: u32) -> Option<Self::Claimed>;
}

/// Why a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its side.
    Eof,
    /// Bytes that are neither STUN, ChannelData nor (first) TLS or an accepted PROXY header.
    Protocol(&'static str),
    IdleTimeout,
    PartialFrameTimeout,
    /// The client left its queue full for `stream-write-timeout`.
    WriteStalled,
    /// The admin API deleted the allocation.
    AdminDeleted,
}

/// A successful ConnectionBind (RFC 6062 §5.4): from now on the connection carries its peer's
/// bytes, unframed. Emitted once the response has left the queue.
#[derive(Debug)]
pub struct HandOff<C> {
    pub claimed: C,
    /// What the client sent after its ConnectionBind (for the peer).
    pub leftover: Vec<u8>,
}

/// What the I/O layer must do, from [`Connection::poll_output`].
#[derive(Debug)]
pub enum Output<'a, C> {
    /// The first bytes are sorted out: `client` is who the connection speaks for (a trusted
    /// proxy's PROXY header, else the TCP peer). With `tls_prefix`, a TLS handshake follows over
    /// those bytes and then the socket: run it, then call [`Connection::tls_established`].
    Identified {
        client: SocketAddr,
        tls_prefix: Option<Vec<u8>>,
    },
    /// Send `data` from the allocation's relay socket to `peer`.
    ToPeer { peer: SocketAddr, data: &'a [u8] },
    /// Open the relay socket a new allocation needs, then call [`Connection::relay_bound`].
    BindRelay(RelayRequest),
    /// Connect from the relayed address to `peer` (RFC 6062 Connect), then call
    /// [`Connection::connect_result`].
    ConnectPeer {
        peer: SocketAddr,
        connection_id: u32,
    },
    /// The allocation ended: close its relay socket.
    ReleaseRelay,
    /// A reload denies this RFC 6062 peer connection's peer: close it, pending or spliced (one
    /// still connecting: give it up and report it to [`Connection::connect_result`] as failed).
    ClosePeerConnection { connection_id: u32 },
    /// Splice the client with its claimed peer connection.
    HandOff(HandOff<C>),
    /// Close the connection.
    Close(CloseReason),
}

/// Outputs that own their data, waiting to be polled.
enum Action {
    Identified {
        client: SocketAddr,
        tls_prefix: Option<Vec<u8>>,
    },
    BindRelay(RelayRequest),
    ConnectPeer {
        peer: SocketAddr,
        connection_id: u32,
    },
    ReleaseRelay,
    ClosePeerConnection(u32),
    Close(CloseReason),
}

impl Action {
    fn into_output<'a, C>(self) -> Output<'a, C> {
        match self {
            Action::Identified { client, tls_prefix } => Output::Identified { client, tls_prefix },
            Action::BindRelay(request) => Output::BindRelay(request),
            Action::ConnectPeer {
                peer,
                connection_id,
            } => Output::ConnectPeer {
                peer,
                connection_id,
            },
            Action::ReleaseRelay => Output::ReleaseRelay,
            Action::ClosePeerConnection(connection_id) => {
                Output::ClosePeerConnection { connection_id }
            }
            Action::Close(reason) => Output::Close(reason),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Sorting out the first bytes: a PROXY header (trusted sources only), then TLS or STUN.
    Prelude {
        proxy_seen: bool,
    },
    /// The I/O layer runs the TLS handshake.
    Handshake,
    /// TURN frames.
    Serving,
    /// A ConnectionBind succeeded; its response drains, then the hand-off.
    HandingOff,
    Closed,
}

/// The core's events as this connection carries them out: as outputs.
struct Effects {
    actions: VecDeque<Action>,
    /// The allocation whose relay socket the I/O layer holds, and its kind.
    relay: Option<(AllocId, RelayTransport)>,
    /// An allocation ended since last looked at.
    released: bool,
}

impl RelayOwner for Effects {
    fn release(&mut self, alloc: AllocId) {
        if self.relay.is_some_and(|(held, _)| held == alloc) {
            self.relay = None;
            self.actions.push_back(Action::ReleaseRelay);
        }
        self.released = true;
    }

    fn connect_peer(&mut self, alloc: AllocId, peer: SocketAddr, connection_id: u32) {
        if self.relay == Some((alloc, RelayTransport::Tcp)) {
            self.actions.push_back(Action::ConnectPeer {
                peer,
                connection_id,
            });
        }
    }

    fn close_peer_connection(&mut self, alloc: AllocId, connection_id: u32) {
        if self.relay == Some((alloc, RelayTransport::Tcp)) {
            self.actions
                .push_back(Action::ClosePeerConnection(connection_id));
        }
    }
}

/// What handling the next piece of input came to.
enum Step {
    /// Nothing more to do until more input.
    Idle,
    /// Something was done; look again.
    Again,
    /// The frame at the front (`frame` bytes) carries a datagram for `peer` at `range`.
    ToPeer {
        peer: SocketAddr,
        range: Range<usize>,
        frame: usize,
    },
}

/// One client connection. See the module documentation.
pub struct Connection<P: PeerConnections> {
    phase: Phase,
    server: Server,
    tuple: FiveTuple,
    settings: Settings,
    input: FrameBuffer,
    /// The front frame whose datagram the last [`Output::ToPeer`] lent out, and when: dropped
    /// from `input` at the next call.
    lent: Option<(usize, Instant)>,
    output: ClientQueue,
    effects: Effects,
    handoff: Option<HandOff<P::Claimed>>,
    /// The Allocate waiting for its relay socket.
    binding: Option<RelayRequest>,
    /// The last valid STUN message, the end of the last allocation, or the start.
    active_at: Instant,
    /// When the frame at the front of `input` started to wait for its rest.
    partial_since: Option<Instant>,
    /// Since when the queue has been refusing output, with no byte taken by the client since.
    stalled_since: Option<Instant>,
    /// The frame at the front carries data past `max-bps` or `bps-capacity`: it waits, and
    /// nothing more is read, until then.
    paused_until: Option<Instant>,
    clock_synced: Instant,
    /// Frames handled since the counters were last offered to the folder.
    worked: bool,
    /// Frames this turn may still handle (see [`FRAMES_PER_TURN`]).
    budget: u32,
    folder: Folder,
    stats: Arc<StreamStats>,
    /// Peer datagrams dropped on a full queue, not yet added to `stats`.
    dropped: u64,
    /// What `input` holds as `stats.read_buffers` counts it.
    input_held: usize,
    peers: P,
    reply: Box<[u8]>,
}

impl<P: PeerConnections> Connection<P> {
    /// A connection from `peer` to our `local` address, accepted at `now`.
    pub fn new(
        now: Instant,
        server: Server,
        peer: SocketAddr,
        local: SocketAddr,
        settings: Settings,
        stats: Arc<StreamStats>,
        peers: P,
    ) -> Self {
        let input = FrameBuffer::new();
        let input_held = input.capacity();
        stats.read_buffers.fetch_add(input_held as u64, Relaxed);
        Connection {
            phase: Phase::Prelude { proxy_seen: false },
            server,
            tuple: FiveTuple {
                client: peer,
                server: local,
                transport: Transport::Tcp,
            },
            settings,
            input,
            lent: None,
            output: ClientQueue::new(),
            effects: Effects {
                actions: VecDeque::new(),
                relay: None,
                released: false,
            },
            handoff: None,
            binding: None,
            active_at: now,
            partial_since: None,
            stalled_since: None,
            paused_until: None,
            clock_synced: now,
            worked: false,
            budget: FRAMES_PER_TURN,
            folder: Folder::new(stats.turn.clone()),
            stats,
            dropped: 0,
            input_held,
            peers,
            reply: vec![0u8; REPLY_BUFFER].into_boxed_slice(),
        }
    }

    /// The 5-tuple: the client (a PROXY header's once read) and our address.
    pub fn tuple(&self) -> FiveTuple {
        self.tuple
    }

    // ----- turns -----

    /// A new turn begins (the task woke up): up to [`FRAMES_PER_TURN`] frames may be handled.
    pub fn start_turn(&mut self) {
        self.budget = FRAMES_PER_TURN;
    }

    /// Whether whole frames wait while this turn's budget is spent: the task should let other
    /// tasks run, then start a new turn.
    pub fn yielding(&self) -> bool {
        self.budget == 0
            && self.phase == Phase::Serving
            && self.paused_until.is_none()
            && self.input.complete_frame().is_some()
    }

    // ----- the client stream -----

    /// Where to read the client's next bytes; `None` while the connection takes no input (TLS
    /// handshake, hand-off, closed) or holds a whole frame back (its reply would not fit the
    /// queue, or its data waits for the bandwidth limits). Then call
    /// [`Connection::handle_client_read`].
    pub fn read_buffer(&mut self) -> Option<&mut [u8]> {
        self.settle();
        let reading = match self.phase {
            Phase::Prelude { .. } => true,
            Phase::Serving => self.input.complete_frame().is_none(),
            Phase::Handshake | Phase::HandingOff | Phase::Closed => false,
        };
        if !reading {
            return None;
        }
        let spare = self.input.spare();
        (!spare.is_empty()).then_some(spare)
    }

    /// `n` bytes were read into [`Connection::read_buffer`] at `now` (nothing else called in
    /// between).
    pub fn handle_client_read(&mut self, now: Instant, n: usize) {
        self.input.filled(n);
        self.track_input_memory();
        if now.saturating_duration_since(self.clock_synced) >= CLOCK_SYNC_INTERVAL {
            self.clock_synced = now;
            self.server
                .sync_wall_clock(now, (self.settings.wall_clock)());
        }
        self.track_partial(now, false);
    }

    /// Takes as many of `bytes` as the connection accepts now (see
    /// [`Connection::read_buffer`]); how many. Poll the outputs, then offer the rest. (The task
    /// reads into [`Connection::read_buffer`] instead, saving the copy.)
    #[cfg(test)]
    pub fn handle_client_bytes(&mut self, now: Instant, mut bytes: &[u8]) -> usize {
        let mut taken = 0;
        while !bytes.is_empty() {
            let Some(spare) = self.read_buffer() else {
                break;
            };
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            self.handle_client_read(now, n);
            taken += n;
            bytes = &bytes[n..];
        }
        taken
    }

    /// The client closed its side.
    pub fn handle_client_eof(&mut self) {
        let reason = match self.phase {
            Phase::Prelude { .. } => CloseReason::Protocol("closed before sending anything"),
            _ => CloseReason::Eof,
        };
        self.close(reason);
    }

    /// Bytes waiting for the client; write them, then call [`Connection::client_bytes_written`].
    pub fn client_bytes(&self) -> &[u8] {
        self.output.bytes()
    }

    /// The socket took `n` of [`Connection::client_bytes`] at `now`.
    pub fn client_bytes_written(&mut self, n: usize) {
        self.output.advance(n);
        if n > 0 {
            self.stalled_since = None;
        }
    }

    /// The TLS handshake is done; TURN over TLS follows.
    pub fn tls_established(&mut self) {
        if self.phase == Phase::Handshake {
            self.phase = Phase::Serving;
            self.tuple.transport = Transport::Tls;
        }
    }

    // ----- the relay -----

    /// The relay socket asked for by [`Output::BindRelay`] is bound (or not); completes the
    /// Allocate.
    pub fn relay_bound(&mut self, now: Instant, result: Result<BoundRelay, RelayError>) {
        self.settle();
        let Some(request) = self.binding.take() else {
            return;
        };
        let bound = result.is_ok();
        // One relay socket per connection: a dual-stack request gets its primary family and an
        // ADDRESS-ERROR-CODE for the additional one.
        let additional = request
            .additional
            .map(|_| Err(RelayError::FamilyUnsupported));
        let output =
            self.server
                .relay_bound(now, request.alloc, result, additional, &mut self.reply);
        if let turn::Output::ToClient { data, .. } = output {
            push_or_stall(
                &mut self.output,
                &mut self.stalled_since,
                now,
                data,
                self.settings.queue_limit,
            );
        }
        if bound {
            if self.server.allocation_username(request.alloc).is_some() {
                self.effects.relay = Some((request.alloc, request.transport));
            } else {
                // The allocation ended while its socket was being bound.
                self.effects.actions.push_back(Action::ReleaseRelay);
            }
        }
        self.apply_events(now);
    }

    /// A datagram from `peer` on the relay socket; the payload stands at
    /// `buf[DATA_INDICATION_MAX_PREFIX..][..len]` with 3 spare bytes behind it (see
    /// `turn::Server::handle_peer`). Framed toward the client, or dropped if its queue is full.
    pub fn handle_peer_datagram(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) {
        self.settle();
        let Some((alloc, RelayTransport::Udp)) = self.effects.relay else {
            return;
        };
        let limit = self.settings.queue_limit - REPLY_RESERVE;
        if self.output.len() + DATA_INDICATION_MAX_PREFIX + len + 3 > limit {
            self.dropped += 1;
            self.stalled_since.get_or_insert(now);
            return;
        }
        if let turn::Output::ToClient { data, .. } =
            self.server.handle_peer(now, alloc, peer, buf, len)
        {
            self.output.push(data, limit);
        }
        self.folder.fold_soon(&self.server, now);
    }

    /// The username of the allocation (its data connections must use the same).
    pub fn allocation_username(&self) -> Option<&str> {
        let (alloc, _) = self.effects.relay?;
        self.server.allocation_username(alloc)
    }

    /// A peer connected to the relayed address of the TCP allocation (RFC 6062 §5.3). With a
    /// permission, it gets an id, and `file` files it under that id for a ConnectionBind; once
    /// filed, the client hears of it. Otherwise `file` is not called (the peer is closed).
    pub fn handle_peer_connection(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        file: impl FnOnce(u32) -> bool,
    ) {
        self.settle();
        let Some((alloc, RelayTransport::Tcp)) = self.effects.relay else {
            return;
        };
        let Some((id, data)) = self.server.connection_attempt(alloc, peer, &mut self.reply) else {
            return;
        };
        if file(id) {
            push_or_stall(
                &mut self.output,
                &mut self.stalled_since,
                now,
                data,
                self.settings.queue_limit,
            );
        } else {
            // The task closed it: its slot among the allocation's peer connections goes back.
            self.server.connection_closed(alloc, id);
        }
        self.folder.fold_soon(&self.server, now);
    }

    /// The connection to a peer asked for by [`Output::ConnectPeer`] is open and filed
    /// (`connected`), or failed; answers the Connect.
    pub fn connect_result(&mut self, now: Instant, connection_id: u32, connected: bool) {
        self.settle();
        let Some((alloc, RelayTransport::Tcp)) = self.effects.relay else {
            return;
        };
        let output = self
            .server
            .connect_result(alloc, connection_id, connected, &mut self.reply);
        if let turn::Output::ToClient { data, .. } = output {
            push_or_stall(
                &mut self.output,
                &mut self.stalled_since,
                now,
                data,
                self.settings.queue_limit,
            );
        }
        self.folder.fold_soon(&self.server, now);
    }

    /// A peer connection of the allocation is gone (never bound, or its splice ended).
    pub fn peer_connection_closed(&mut self, connection_id: u32) {
        if let Some((alloc, _)) = self.effects.relay {
            self.server.connection_closed(alloc, connection_id);
        }
    }

    // ----- admin and configuration -----

    /// The connection's allocations (at most one), for the admin API.
    pub fn allocations(&self, now: Instant) -> Vec<(AllocId, AllocationInfo)> {
        self.server.allocations_with_ids(now).collect()
    }

    /// Deletes the allocation (admin API) and closes the connection; false if it is not there.
    pub fn delete_allocation(&mut self, now: Instant, alloc: AllocId) -> bool {
        self.settle();
        let deleted = self.server.delete_allocation(alloc);
        if deleted {
            self.apply_events(now);
            self.fold();
            self.close(CloseReason::AdminDeleted);
        }
        deleted
    }

    /// A reloaded configuration; the allocation keeps its state.
    pub fn set_config(&mut self, config: Arc<CoreConfig>) {
        self.server.set_config(config);
    }

    // ----- time -----

    /// When [`Connection::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Closed) {
            return None;
        }
        [
            self.server.poll_timeout(),
            self.idle_deadline(),
            self.partial_deadline(),
            self.stall_deadline(),
            self.paused_until,
            self.folder.due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Closes a connection whose deadline passed; runs the allocation's timers; folds counters.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle();
        if self.phase == Phase::Closed {
            return;
        }
        let passed = |deadline: Option<Instant>| deadline.is_some_and(|at| now >= at);
        if passed(self.idle_deadline()) {
            return self.close(CloseReason::IdleTimeout);
        }
        if passed(self.partial_deadline()) {
            return self.close(CloseReason::PartialFrameTimeout);
        }
        if passed(self.stall_deadline()) {
            return self.close(CloseReason::WriteStalled);
        }
        if passed(self.paused_until) {
            self.paused_until = None; // the frame gets its turn at the next poll_output
        }
        self.server.handle_timeout(now);
        self.apply_events(now);
        self.fold();
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let applies = match self.phase {
            Phase::Prelude { .. } | Phase::Handshake => true,
            Phase::Serving => self.server.allocation_count() == 0,
            Phase::HandingOff | Phase::Closed => false,
        };
        applies.then(|| self.active_at + self.settings.idle_timeout)
    }

    fn partial_deadline(&self) -> Option<Instant> {
        let since = self.partial_since?;
        Some(since + self.settings.partial_frame_timeout)
    }

    fn stall_deadline(&self) -> Option<Instant> {
        Some(self.stalled_since? + self.settings.write_stall_timeout)
    }

    // ----- outputs -----

    /// The next thing for the I/O layer to do, handling buffered frames as it goes; `None`
    /// when there is nothing until more input. Act on each before calling anything else.
    pub fn poll_output(&mut self, now: Instant) -> Option<Output<'_, P::Claimed>> {
        self.settle();
        loop {
            if let Some(action) = self.effects.actions.pop_front() {
                if matches!(action, Action::Close(_)) {
                    self.phase = Phase::Closed;
                    self.effects.actions.clear();
                }
                return Some(action.into_output());
            }
            let step = match self.phase {
                Phase::Prelude { proxy_seen } => self.prelude(now, proxy_seen),
                Phase::Serving => self.next_frame(now),
                Phase::HandingOff if self.output.is_empty() => {
                    self.phase = Phase::Closed;
                    return self.handoff.take().map(Output::HandOff);
                }
                Phase::HandingOff | Phase::Handshake | Phase::Closed => Step::Idle,
            };
            match step {
                Step::Idle => {
                    self.track_input_memory();
                    if std::mem::take(&mut self.worked) {
                        self.folder.fold_soon(&self.server, now);
                    }
                    return None;
                }
                Step::Again => continue,
                Step::ToPeer { peer, range, frame } => {
                    self.lent = Some((frame, now));
                    let data = &self.input.pending()[range];
                    return Some(Output::ToPeer { peer, data });
                }
            }
        }
    }

    /// The first bytes: a PROXY header if the source may send one, then TLS or STUN.
    fn prelude(&mut self, now: Instant, proxy_seen: bool) -> Step {
        let pending = self.input.pending();
        let Some(&first) = pending.first() else {
            return Step::Idle;
        };
        let accepts = self.settings.accepts;
        if !proxy_seen && proxy_protocol::may_start_header(first) {
            if !accepts.proxy {
                return self.close_step(CloseReason::Protocol(
                    "PROXY header from a source not in proxy-protocol-trusted",
                ));
            }
            return match proxy_protocol::parse(pending) {
                Ok(Parsed::Incomplete) if pending.len() >= proxy_protocol::V2_MAX_LEN => {
                    self.close_step(CloseReason::Protocol("PROXY header too long"))
                }
                Ok(Parsed::Incomplete) => Step::Idle,
                Ok(Parsed::Complete { header, len }) => {
                    if let Some(source) = header.source {
                        self.tuple.client = source;
                    }
                    self.input.consume(len);
                    self.phase = Phase::Prelude { proxy_seen: true };
                    Step::Again
                }
                Err(_) => self.close_step(CloseReason::Protocol("malformed PROXY header")),
            };
        }
        let tls = match first {
            0x16 if accepts.tls => true,
            0x00..=0x03 | 0x40..=0x7F if accepts.plain => false,
            _ => {
                return self.close_step(CloseReason::Protocol(
                    "first bytes are not STUN or a TLS handshake",
                ))
            }
        };
        let tls_prefix = if tls {
            self.phase = Phase::Handshake;
            Some(self.input.take_pending())
        } else {
            self.phase = Phase::Serving;
            self.track_partial(now, false);
            None
        };
        self.effects.actions.push_back(Action::Identified {
            client: self.tuple.client,
            tls_prefix,
        });
        Step::Again
    }

    /// Handles the frame at the front of `input`, if it is whole and its reply would fit.
    fn next_frame(&mut self, now: Instant) -> Step {
        let pending = self.input.pending();
        if pending.is_empty() {
            return Step::Idle;
        }
        if stun::frame_kind(pending) == FrameKind::Other {
            return self.close_step(CloseReason::Protocol("not STUN or ChannelData"));
        }
        let Some(len) = self.input.complete_frame() else {
            return Step::Idle;
        };
        if self.output.len() + REPLY_BUFFER > self.settings.queue_limit {
            // Its reply might not fit: the frame waits, and so does the client's stream.
            self.stalled_since.get_or_insert(now);
            return Step::Idle;
        }
        if self.budget == 0 {
            return Step::Idle; // the rest waits for the next turn
        }
        let frame = &self.input.pending()[..len];
        let (valid, bind, relayed) = match stun::frame_kind(frame) {
            FrameKind::Stun => match Message::parse(frame) {
                Ok(m) if m.fingerprint_ok() != Some(false) => (
                    true,
                    m.method() == Method::CONNECTION_BIND && m.class() == Class::Request,
                    send_indication_data(&m),
                ),
                _ => (false, false, None),
            },
            _ => (
                false,
                false,
                ChannelData::parse(frame).map(|c| c.data.len()),
            ),
        };
        if let Some(bytes) = relayed {
            if self.paused(now, bytes) {
                return Step::Idle;
            }
        }
        self.budget -= 1;
        self.worked = true;
        if valid {
            self.active_at = now;
        }
        if bind {
            return self.connection_bind(now, len);
        }
        let frame = &self.input.pending()[..len];
        let tuple = self.tuple;
        let mut to_peer = None;
        match self
            .server
            .handle_client(now, tuple, frame, &mut self.reply)
        {
            turn::Output::ToClient { data, .. } => {
                self.output.push(data, self.settings.queue_limit);
            }
            turn::Output::ToPeer { peer, data, .. } => {
                // The datagram lies inside the frame: lent out, the frame dropped afterwards.
                to_peer = range_within(frame, data).map(|range| (peer, range));
            }
            turn::Output::BindRelay(request) => {
                self.binding = Some(request);
                self.effects.actions.push_back(Action::BindRelay(request));
            }
            turn::Output::Nothing => {}
        }
        if let Some((peer, range)) = to_peer {
            self.apply_events(now);
            return Step::ToPeer {
                peer,
                range,
                frame: len,
            };
        }
        self.input.consume(len);
        self.apply_events(now);
        self.track_partial(now, true);
        Step::Again
    }

    /// Whether client data of `bytes` for the peer must wait for `max-bps` or `bps-capacity`:
    /// then it stays at the front, nothing more is read, and the connection wakes up when it may
    /// pass (each such pause counted in `tern_bandwidth_paused_total`).
    fn paused(&mut self, now: Instant, bytes: usize) -> bool {
        if self.paused_until.is_some_and(|until| now < until) {
            return true;
        }
        self.paused_until = None;
        let Some((alloc, RelayTransport::Udp)) = self.effects.relay else {
            return false;
        };
        let to_peer = Direction::ToPeer;
        let Some((delay, limit)) = self.server.bandwidth_wait(now, alloc, to_peer, bytes) else {
            return false;
        };
        self.paused_until = Some(now + delay);
        self.stats.bandwidth_paused[to_peer.index()][limit.index()].fetch_add(1, Relaxed);
        true
    }

    /// A ConnectionBind request (RFC 6062 §5.4): on success the connection is handed off to
    /// carry its peer connection's bytes once the response is out.
    fn connection_bind(&mut self, now: Instant, len: usize) -> Step {
        let frame = &self.input.pending()[..len];
        let mut claim = Claim {
            peers: &self.peers,
            claimed: None,
        };
        let tuple = self.tuple;
        let output = self
            .server
            .connection_bind(now, tuple, frame, &mut claim, &mut self.reply);
        if let turn::Output::ToClient { data, .. } = output {
            self.output.push(data, self.settings.queue_limit);
        }
        let claimed = claim.claimed;
        self.input.consume(len);
        match claimed {
            Some(claimed) => {
                let leftover = self.input.take_pending();
                self.handoff = Some(HandOff { claimed, leftover });
                self.phase = Phase::HandingOff;
                self.partial_since = None;
            }
            None => self.track_partial(now, true),
        }
        Step::Again
    }

    // ----- bookkeeping -----

    /// Drops the frame lent out by the last [`Output::ToPeer`].
    fn settle(&mut self) {
        if let Some((len, at)) = self.lent.take() {
            self.input.consume(len);
            self.track_partial(at, true);
        }
    }

    /// Starts or stops the partial-frame clock: it runs while the front frame is incomplete,
    /// from when its first bytes arrived or the frame before it was handled (`handled`).
    fn track_partial(&mut self, now: Instant, handled: bool) {
        let waiting = self.phase == Phase::Serving
            && !self.input.is_empty()
            && self.input.complete_frame().is_none();
        if !waiting {
            self.partial_since = None;
        } else if handled || self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
    }

    /// Brings `tern_stream_read_buffer_bytes` up to date when the read buffer grew or shrank.
    fn track_input_memory(&mut self) {
        let held = self.input.capacity();
        if held > self.input_held {
            let grown = (held - self.input_held) as u64;
            self.stats.read_buffers.fetch_add(grown, Relaxed);
        } else if held < self.input_held {
            let shrunk = (self.input_held - held) as u64;
            self.stats.read_buffers.fetch_sub(shrunk, Relaxed);
        }
        self.input_held = held;
    }

    fn apply_events(&mut self, now: Instant) {
        relay::apply_events(&mut self.server, &mut self.effects);
        if std::mem::take(&mut self.effects.released) {
            self.active_at = now; // the idle clock restarts when an allocation ends
        }
    }

    fn fold(&mut self) {
        self.folder.fold(&self.server);
        if self.dropped > 0 {
            let dropped = std::mem::take(&mut self.dropped);
            self.stats.client_queue_drops.fetch_add(dropped, Relaxed);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        let closing = self
            .effects
            .actions
            .iter()
            .any(|a| matches!(a, Action::Close(_)));
        if self.phase != Phase::Closed && !closing {
            self.effects.actions.push_back(Action::Close(reason));
        }
    }

    fn close_step(&mut self, reason: CloseReason) -> Step {
        self.close(reason);
        Step::Again
    }
}

impl<P: PeerConnections> Drop for Connection<P> {
    /// However the connection ends, its allocation ends with it.
    fn drop(&mut self) {
        self.server.close_tuple(&self.tuple);
        self.fold();
        let held = self.input_held as u64;
        self.stats.read_buffers.fetch_sub(held, Relaxed);
    }
}

/// Appends `data` for the client; a full queue drops it and starts the stall clock.
fn push_or_stall(
    queue: &mut ClientQueue,
    stalled_since: &mut Option<Instant>,
    now: Instant,
    data: &[u8],
    limit: usize,
) {
    if !queue.push(data, limit) {
        stalled_since.get_or_insert(now);
    }
}

/// The payload length of a Send indication (what it would relay), `None` for other messages.
fn send_indication_data(message: &Message<'_>) -> Option<usize> {
    if message.method() != Method::SEND || message.class() != Class::Indication {
        return None;
    }
    message.get(attr::DATA).map(<[u8]>::len)
}

/// Where `part`, a slice the core returned from `whole`, lies in it.
fn range_within(whole: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// The registry as one ConnectionBind sees it: what it claims lands here.
struct Claim<'p, P: PeerConnections> {
    peers: &'p P,
    claimed: Option<P::Claimed>,
}

impl<P: PeerConnections> ConnectionLookup for Claim<'_, P> {
    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)> {
        self.peers.pending(id)
    }

    fn claim(&mut self, id: u32) -> bool {
        self.claimed = self.peers.claim(id);
        self.claimed.is_some()
    }
}

#[cfg(test)]
mod tests;
