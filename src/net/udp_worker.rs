//! One UDP worker: a thread with its own poll loop, its own listener sockets (SO_REUSEPORT), the
//! relay sockets of the allocations it owns, and its own `turn::Server`. Nothing on the packet
//! path is shared with other workers.

use super::coalesce::Coalescer;
use super::common::{unix_now, REPLY_BUFFER};
use super::fast_path::{SharedFastPath, WorkerOffload};
use super::relay::{self, Leased, RelayOwner, RelaySockets, DATAGRAM_BUFFER};
use super::sockets;
use super::stats::WorkerStats;
use super::steer::{LoadMeter, Pins};
use crate::stun::DATA_INDICATION_MAX_PREFIX;
use crate::turn::{
    AllocId, BoundRelay, CoreConfig, Family, FiveTuple, Offload, OffloadKey, Output, PortRequest,
    RelayError, RelayRequest, Server, Traffic, Transport,
};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_steer::Steering;
use tern_udp::{
    deepen_receive_buffer, send_gso, RecvBatch, SendBatch, BATCH, GSO_MAX_BYTES, GSO_MAX_SEGMENTS,
};
use tracing::{debug, warn};

/// Relay sockets use tokens `0..`: the allocation's slab index times two, plus its family's
/// index (0 IPv4, 1 IPv6), as a dual-stack allocation has one socket of each (see
/// [`relay_slot`]); listeners and the waker sit at the top of the token space.
const LISTENER_TOKEN_BASE: usize = 1 << 40;
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);
/// Receive buffer of a listener: every client of the worker queues here, so a burst from a few
/// hundred clients must not overflow the kernel's default (~208 KiB, a few hundred datagrams).
const LISTENER_RECEIVE_BUFFER: usize = 4 << 20;
/// Upper bound on how long the loop sleeps, so wall-clock sync and stats stay fresh.
const MAX_SLEEP: Duration = Duration::from_millis(500);
/// Timer slack of a worker that pauses (coalescing): pauses end within 1 µs of their time.
const PAUSE_TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// Messages from the rest of the process, delivered with a wake-up.
pub(crate) enum Control {
    Reload(Arc<CoreConfig>),
    Shutdown,
    /// Admin API: this worker's allocations.
    ListAllocations(Sender<Vec<(AllocId, crate::turn::AllocationInfo)>>),
    /// Admin API: delete every allocation of a user; replies how many.
    DeleteUser(String, Sender<usize>),
    /// Admin API: delete one allocation; replies whether it existed.
    DeleteAllocation(AllocId, Sender<bool>),
    /// Replies once every earlier control message is applied.
    Sync(Sender<()>),
}

struct Listener {
    socket: UdpSocket,
    local: SocketAddr,
}

/// An allocation's relay socket of one family; closing it gives its port back.
struct Relay {
    socket: Leased<UdpSocket>,
    generation: u32,
}

/// The relay sockets of this worker's allocations, by [`relay_slot`], and their kernel fast path
/// entries.
struct Relays {
    slots: Vec<Option<Relay>>,
    registry: Registry,
    pins: Pins,
    offload: Option<WorkerOffload>,
}

impl Relays {
    fn get(&self, slot: usize) -> Option<&Relay> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    fn insert(&mut self, slot: usize, relay: Relay) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(relay);
    }
}

impl RelayOwner for Relays {
    fn release(&mut self, alloc: AllocId) {
        self.pins.unpin(alloc);
        // The kernel stops first, then the sockets close.
        if let Some(offload) = self.offload.as_mut() {
            offload.release(alloc);
        }
        for family in [Family::V4, Family::V6] {
            let slot = self.slots.get_mut(relay_slot(alloc.index, family));
            let Some(slot) =
                slot.filter(|s| s.as_ref().is_some_and(|r| r.generation == alloc.generation))
            else {
                continue;
            };
            if let Some(mut relay) = slot.take() {
                let _ = self.registry.deregister(&mut *relay.socket);
            }
        }
    }

    fn connect_peer(&mut self, _: AllocId, _: SocketAddr, _: u32) {
        // Only TCP allocations connect to peers, and those live on stream connections.
    }

    fn offload(&mut self, offload: &Offload) {
        if let Some(fast_path) = self.offload.as_mut() {
            fast_path.offload(offload);
        }
    }

    fn unoffload(&mut self, alloc: AllocId, what: OffloadKey) -> Option<Traffic> {
        self.offload.as_mut()?.unoffload(alloc, what)
    }
}

/// What a worker needs to start.
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub listen: Vec<SocketAddr>,
    pub server: Server,
    pub relay_sockets: RelaySockets,
    pub control: Receiver<Control>,
    pub poll: Poll,
    pub stats: Arc<WorkerStats>,
    /// `udp-gso`: send runs of datagrams with UDP GSO where the kernel supports it.
    pub gso: bool,
    /// `udp-coalesce-us`: the longest pause after a wake-up (zero: none).
    pub coalesce: Duration,
    /// The kernel fast path, when it runs; the server has offloading on then.
    pub fast_path: Option<Arc<SharedFastPath>>,
    /// `external-ip` at start (reloads bring the new one).
    pub external_ips: Vec<crate::turn::ExternalIp>,
}

pub(crate) struct UdpWorker {
    id: usize,
    poll: Poll,
    listeners: Vec<Listener>,
    relays: Relays,
    server: Server,
    relay_sockets: RelaySockets,
    control: Receiver<Control>,
    stats: Arc<WorkerStats>,
    /// Receive slots for one batch; each holds the largest datagram plus framing room.
    /// Always `Some` between calls (lent out, without allocating, while a listener drains).
    rx: Option<RecvBatch>,
    /// One reply buffer per datagram of a listener batch, sent together.
    replies: Box<[u8]>,
    /// Whether UDP GSO is used toward clients (off after the kernel refuses it once).
    gso_enabled: bool,
    gso_buffer: Box<[u8]>,
    reply_gso_buffer: Box<[u8]>,
    /// Reply buffer for answers sent on their own (Allocate completion).
    reply: Box<[u8]>,
    /// Whether to pause after a wake-up, so the next one finds several datagrams.
    coalescer: Coalescer,
    load: LoadMeter,
}

/// Creates the poll and its waker before the thread starts, so the caller can wake it.
pub(crate) fn new_poll() -> io::Result<(Poll, Arc<Waker>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
    Ok((poll, waker))
}

impl UdpWorker {
    /// Binds this worker's listeners; fails (before serving anything) if one cannot bind.
    pub fn bind(setup: WorkerSetup) -> io::Result<UdpWorker> {
        let mut listeners = Vec::new();
        for (i, addr) in setup.listen.iter().enumerate() {
            let std_socket = sockets::reuseport_udp(*addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on udp {addr}: {e}"))
            })?;
            deepen_receive_buffer(&std_socket, LISTENER_RECEIVE_BUFFER);
            let mut socket = UdpSocket::from_std(std_socket);
            setup.poll.registry().register(
                &mut socket,
                Token(LISTENER_TOKEN_BASE + i),
                Interest::READABLE,
            )?;
            listeners.push(Listener {
                socket,
                local: *addr,
            });
        }
        let relays = Relays {
            slots: Vec::new(),
            registry: setup.poll.registry().try_clone()?,
            pins: Pins::new(setup.id),
            offload: setup
                .fast_path
                .map(|shared| WorkerOffload::new(shared, setup.external_ips)),
        };
        Ok(UdpWorker {
            id: setup.id,
            poll: setup.poll,
            listeners,
            relays,
            server: setup.server,
            relay_sockets: setup.relay_sockets,
            control: setup.control,
            stats: setup.stats,
            rx: Some(RecvBatch::new(DATAGRAM_BUFFER)),
            replies: vec![0u8; REPLY_BUFFER * BATCH].into_boxed_slice(),
            gso_enabled: setup.gso,
            gso_buffer: vec![0u8; GSO_MAX_BYTES].into_boxed_slice(),
            reply_gso_buffer: vec![0u8; GSO_MAX_BYTES].into_boxed_slice(),
            reply: vec![0u8; REPLY_BUFFER].into_boxed_slice(),
            coalescer: Coalescer::new(setup.coalesce, Instant::now()),
            load: LoadMeter::default(),
        })
    }

    /// The listener sockets, in the order of `WorkerSetup::listen`: this worker's member of
    /// each listening address's reuseport group.
    pub fn listener_fds(&self) -> Vec<RawFd> {
        self.listeners
            .iter()
            .map(|l| l.socket.as_raw_fd())
            .collect()
    }

    /// Steer this worker's clients in the kernel: its allocations' clients are pinned to it,
    /// and its load is published so new clients go elsewhere when it is busy.
    pub fn set_steering(&mut self, steering: Arc<Steering>) {
        self.relays.pins.set_steering(steering);
    }

    /// The poll loop; returns on `Control::Shutdown`.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_sync = Instant::now();
        if self.coalescer.enabled() {
            // The default 50 µs of timer slack would stretch every pause of a few hundred.
            // SAFETY: prctl with an integer argument; affects this thread only.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, PAUSE_TIMER_SLACK_NS) };
        }
        loop {
            let now = Instant::now();
            let sleep = self
                .server
                .poll_timeout()
                .map(|deadline| deadline.saturating_duration_since(now))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            if let Err(error) = self.poll.poll(&mut events, Some(sleep)) {
                if error.kind() != ErrorKind::Interrupted {
                    warn!(worker = self.id, %error, "poll failed");
                }
                continue;
            }
            let now = Instant::now();
            let mut datagrams = 0;
            for event in events.iter() {
                match event.token() {
                    WAKER_TOKEN => {
                        if !self.handle_control() {
                            return; // dropping the relays gives their ports back
                        }
                    }
                    Token(t) if t >= LISTENER_TOKEN_BASE => {
                        datagrams += self.drain_listener(now, t - LISTENER_TOKEN_BASE)
                    }
                    Token(slot) => datagrams += self.drain_relay(now, slot),
                }
            }
            self.server.handle_timeout(now);
            self.apply_events();
            self.load.add(datagrams);
            if now.duration_since(last_sync) >= MAX_SLEEP {
                self.load.publish(
                    self.relays.pins.steering(),
                    self.id,
                    now.duration_since(last_sync),
                );
                last_sync = now;
                self.relay_sockets.expire_reservations(now);
                self.server.sync_wall_clock(now, unix_now());
                self.stats.publish(&self.server);
                self.publish_fast_path();
            }
            if let Some(pause) = self.coalescer.after_wake(now, datagrams) {
                std::thread::sleep(pause);
            }
        }
    }

    /// Applies pending control messages; false on shutdown.
    fn handle_control(&mut self) -> bool {
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::Reload(config) => {
                    if let Some(offload) = self.relays.offload.as_mut() {
                        offload.set_external_ips(config.external_ips.clone());
                    }
                    self.server.set_config(config)
                }
                Control::Shutdown => return false,
                Control::ListAllocations(reply) => {
                    let now = Instant::now();
                    let offload = self.relays.offload.as_ref();
                    let list = self.server.allocations_with_ids(now).map(|(id, mut info)| {
                        if let Some(offload) = offload {
                            info.traffic = info.traffic + offload.live_traffic(id);
                        }
                        (id, info)
                    });
                    let _ = reply.send(list.collect());
                }
                Control::DeleteUser(username, reply) => {
                    let _ = reply.send(self.server.delete_user(&username));
                    self.apply_events();
                }
                Control::DeleteAllocation(alloc, reply) => {
                    let _ = reply.send(self.server.delete_allocation(alloc));
                    self.apply_events();
                }
                Control::Sync(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        true
    }

    /// Reads the listener in batches (`recvmmsg`) and hands each datagram to the server. Relayed
    /// data goes straight out of the allocation's relay socket; replies to clients are collected
    /// and leave together with one `sendmmsg` per batch. Returns how many datagrams it read.
    fn drain_listener(&mut self, now: Instant, index: usize) -> usize {
        let Some(listener) = self.listeners.get(index) else {
            return 0;
        };
        let local = listener.local;
        let fd = listener.socket.as_raw_fd();
        // Taken out of `self` for the batch, so replies can stay borrowed while the server and
        // the relay table are used; put back at the end.
        let Some(mut rx) = self.rx.take() else {
            return 0;
        };
        let mut received = 0;
        let mut replies = std::mem::take(&mut self.replies);
        let mut gso_buffer = std::mem::take(&mut self.gso_buffer);
        let mut reply_gso_buffer = std::mem::take(&mut self.reply_gso_buffer);
        loop {
            let count = match rx.recv(fd, 0, rx.stride, BATCH) {
                Ok(count) => count,
                Err(e) => {
                    debug!(worker = self.id, error = %e, "udp receive failed");
                    break;
                }
            };
            received += count;
            let mut out = SendBatch::new();
            // Consecutive datagrams of one allocation toward one peer leave together.
            let mut run = PeerRun::default();
            // Consecutive replies to one client likewise (GSO); the others join `out`.
            let mut replies_run = PeerRun::default();
            for (i, reply) in replies.chunks_mut(REPLY_BUFFER).take(count).enumerate() {
                let Some(client) = rx.meta.source(i) else {
                    continue;
                };
                let tuple = FiveTuple {
                    client,
                    server: local,
                    transport: Transport::Udp,
                };
                let start = i * rx.stride;
                let input = &rx.data[start..start + rx.meta.len[i]];
                let output = self.server.handle_client(now, tuple, input, reply);
                if let Output::ToPeer { alloc, peer, data } = output {
                    // The relay socket of the peer's family (a dual-stack allocation has two).
                    let slot = relay_slot(alloc.index, Family::of(&peer));
                    let relay = self.relays.get(slot);
                    if let Some(relay) = relay.filter(|r| r.generation == alloc.generation) {
                        let target = (relay.socket.as_raw_fd(), peer);
                        if run.target != Some(target) {
                            run.flush(&gso_buffer, &mut self.gso_enabled);
                            run.start(target, self.gso_enabled);
                        }
                        run.add(&mut gso_buffer, data);
                    }
                    continue;
                }
                // Anything else may end an allocation and close its socket: send what is
                // pending on relay sockets first.
                run.flush(&gso_buffer, &mut self.gso_enabled);
                match output {
                    Output::ToClient { tuple, data } if tuple.server == local => {
                        let target = (fd, tuple.client);
                        if replies_run.target != Some(target) {
                            replies_run.flush_or_join(
                                &reply_gso_buffer,
                                &mut self.gso_enabled,
                                &mut out,
                            );
                            replies_run.start(target, self.gso_enabled);
                        }
                        replies_run.add(&mut reply_gso_buffer, data);
                    }
                    Output::BindRelay(request) => self.bind_relay(now, request),
                    other => send(&self.listeners, &self.relays, other),
                }
                self.apply_events();
            }
            run.flush(&gso_buffer, &mut self.gso_enabled);
            replies_run.flush_or_join(&reply_gso_buffer, &mut self.gso_enabled, &mut out);
            out.flush(fd);
            // Edge-triggered: a short batch means the queue was empty; anything arriving later
            // raises a new event, so no extra empty read is needed.
            if count < BATCH {
                break;
            }
        }
        self.rx = Some(rx);
        self.replies = replies;
        self.gso_buffer = gso_buffer;
        self.reply_gso_buffer = reply_gso_buffer;
        received
    }

    /// Reads a relay socket (filed under `slot`, see `relay_slot`) in batches, frames each
    /// datagram in place (ChannelData or Data indication) and sends the whole batch to the client
    /// with one GSO send or `sendmmsg`. Returns how many datagrams it read.
    fn drain_relay(&mut self, now: Instant, slot: usize) -> usize {
        let mut received = 0;
        loop {
            let Some(relay) = self.relays.get(slot) else {
                return received;
            };
            let alloc = AllocId {
                index: slot / 2,
                generation: relay.generation,
            };
            let fd = relay.socket.as_raw_fd();
            let Some(rx) = self.rx.as_mut() else {
                return received;
            };
            // Room for the largest framing in front and 3 bytes of padding behind.
            let limit = rx.stride - DATA_INDICATION_MAX_PREFIX - 4;
            let count = match rx.recv(fd, DATA_INDICATION_MAX_PREFIX, limit, BATCH) {
                Ok(count) => count,
                Err(e) => {
                    debug!(worker = self.id, error = %e, "relay receive failed");
                    return received;
                }
            };
            received += count;
            let (slots, meta) = rx.split();
            let mut out = SendBatch::new();
            let mut via: Option<(RawFd, SocketAddr)> = None;
            // The same datagrams copied back to back for one GSO send, while they qualify:
            // one destination, equal sizes (the last may be shorter).
            let mut gso = GsoRun::new(self.gso_enabled);
            for (i, buf) in slots.take(count).enumerate() {
                let Some(peer) = meta.source(i) else {
                    continue;
                };
                let Output::ToClient { tuple, data } =
                    self.server.handle_peer(now, alloc, peer, buf, meta.len[i])
                else {
                    continue;
                };
                let Some(listener) = self.listeners.iter().find(|l| l.local == tuple.server) else {
                    continue;
                };
                let fd = listener.socket.as_raw_fd();
                if let Some((v, _)) = via.filter(|(v, to)| *v != fd || *to != tuple.client) {
                    // Cannot happen for one allocation (one 5-tuple), but stay correct.
                    out.flush(v);
                    gso.enabled = false;
                }
                via = Some((fd, tuple.client));
                gso.add(&mut self.gso_buffer, data);
                out.push(data, Some(&tuple.client));
            }
            if let Some((fd, client)) = via {
                send_run(
                    fd,
                    client,
                    &gso,
                    &self.gso_buffer,
                    &mut out,
                    &mut self.gso_enabled,
                );
            }
            if count < BATCH {
                return received;
            }
        }
    }

    /// Binds the relay socket(s) for a new allocation and completes the Allocate.
    fn bind_relay(&mut self, now: Instant, request: RelayRequest) {
        let primary = self.open_relay(now, &request, request.family, request.port);
        let additional = request.additional.map(|family| {
            self.open_relay(now, &request, family, relay::additional_port(request.port))
        });
        if primary.is_ok() || additional.as_ref().is_some_and(Result::is_ok) {
            // The allocation will exist: its client must keep reaching this worker.
            self.relays.pins.pin(request.alloc, request.tuple);
        }
        let output =
            self.server
                .relay_bound(now, request.alloc, primary, additional, &mut self.reply);
        send(&self.listeners, &self.relays, output);
    }

    /// Opens a relay socket, registers it under its slot's token and files it there.
    fn open_relay(
        &mut self,
        now: Instant,
        request: &RelayRequest,
        family: Family,
        port: PortRequest,
    ) -> Result<BoundRelay, RelayError> {
        let (bound, socket) = self.relay_sockets.open_udp(now, request, family, port)?;
        let slot = relay_slot(request.alloc.index, Family::of(&bound.local));
        let registry = self.poll.registry();
        let socket = socket.register(|socket| {
            let mut socket = UdpSocket::from_std(socket);
            registry.register(&mut socket, Token(slot), Interest::READABLE)?;
            Ok(socket)
        })?;
        let generation = request.alloc.generation;
        self.relays.insert(slot, Relay { socket, generation });
        Ok(bound)
    }

    /// Closes the relay sockets of allocations the server has ended, and installs and removes
    /// kernel fast path entries as it says.
    fn apply_events(&mut self) {
        relay::apply_events(&mut self.server, &mut self.relays);
    }

    /// The first worker stores the kernel fast path's totals for `/metrics`.
    fn publish_fast_path(&self) {
        if let (0, Some(offload)) = (self.id, self.relays.offload.as_ref()) {
            offload.shared().publish();
        }
    }
}

/// Datagrams of one relay batch laid back to back for a single GSO send, as long as they
/// qualify: all but the last of one size, and no more than the kernel takes at once.
/// Larger segments could exceed a 1500-byte path MTU, which GSO refuses (EINVAL).
const GSO_MAX_SEGMENT: usize = 1452;

struct GsoRun {
    enabled: bool,
    used: usize,
    segments: usize,
    size: usize,
    short_seen: bool,
}

impl GsoRun {
    fn new(enabled: bool) -> GsoRun {
        GsoRun {
            enabled,
            used: 0,
            segments: 0,
            size: 0,
            short_seen: false,
        }
    }

    fn add(&mut self, buffer: &mut [u8], data: &[u8]) {
        if !self.enabled {
            return;
        }
        let len = data.len();
        let fits = self.used + len <= buffer.len() && self.segments < GSO_MAX_SEGMENTS;
        let shape_ok = self.segments == 0 || (!self.short_seen && len <= self.size);
        if !fits || !shape_ok || len == 0 {
            self.enabled = false;
            return;
        }
        if self.segments == 0 {
            self.size = len;
        } else if len < self.size {
            self.short_seen = true;
        }
        buffer[self.used..self.used + len].copy_from_slice(data);
        self.used += len;
        self.segments += 1;
    }

    /// The segment size to send with, if GSO applies (two datagrams or more).
    fn segment(&self) -> Option<u16> {
        (self.enabled && self.segments >= 2 && self.size <= GSO_MAX_SEGMENT)
            .then(|| u16::try_from(self.size).ok())
            .flatten()
    }
}

/// Datagrams from one relay socket to one peer, collected over a listener batch and sent with
/// one GSO `sendmsg` (equal sizes) or one `sendmmsg`.
#[derive(Default)]
struct PeerRun<'a> {
    target: Option<(RawFd, SocketAddr)>,
    gso: Option<GsoRun>,
    batch: SendBatch<'a>,
}

impl<'a> PeerRun<'a> {
    fn start(&mut self, target: (RawFd, SocketAddr), gso_enabled: bool) {
        self.target = Some(target);
        self.gso = Some(GsoRun::new(gso_enabled));
    }

    fn add(&mut self, buffer: &mut [u8], data: &'a [u8]) {
        if let (Some(gso), Some((_, peer))) = (self.gso.as_mut(), self.target) {
            gso.add(buffer, data);
            self.batch.push(data, Some(&peer));
        }
    }

    /// Sends a run that qualifies for GSO; otherwise moves its datagrams into `into` (one
    /// `sendmmsg` for many destinations). The run is empty afterwards.
    fn flush_or_join(&mut self, buffer: &[u8], gso_enabled: &mut bool, into: &mut SendBatch<'a>) {
        let (Some((fd, peer)), Some(gso)) = (self.target.take(), self.gso.take()) else {
            return;
        };
        if gso.segment().is_some() {
            send_run(fd, peer, &gso, buffer, &mut self.batch, gso_enabled);
        } else {
            into.append(&mut self.batch);
        }
    }

    /// Sends what is collected; the run is empty afterwards.
    fn flush(&mut self, buffer: &[u8], gso_enabled: &mut bool) {
        let (Some((fd, peer)), Some(gso)) = (self.target.take(), self.gso.take()) else {
            return;
        };
        send_run(fd, peer, &gso, buffer, &mut self.batch, gso_enabled);
    }
}

/// Sends a run of datagrams to one destination: one GSO send when they qualify, else
/// `sendmmsg`. A kernel without UDP GSO turns it off for good.
fn send_run(
    fd: RawFd,
    dest: SocketAddr,
    gso: &GsoRun,
    buffer: &[u8],
    batch: &mut SendBatch<'_>,
    gso_enabled: &mut bool,
) {
    let Some(segment) = gso.segment() else {
        batch.flush(fd);
        return;
    };
    match send_gso(fd, &buffer[..gso.used], segment, &dest) {
        Ok(_) => batch.clear(),
        Err(e) if e.kind() == ErrorKind::WouldBlock => batch.clear(),
        Err(e) => {
            // EIO / ENOPROTOOPT: no UDP GSO on this kernel or device.
            if matches!(e.raw_os_error(), Some(libc::EIO | libc::ENOPROTOOPT)) {
                debug!(error = %e, "UDP GSO unavailable");
                *gso_enabled = false;
            }
            batch.flush(fd);
        }
    }
}

/// Carries out a reply or a relayed packet. A full socket buffer drops the datagram, as UDP would.
fn send(listeners: &[Listener], relays: &Relays, output: Output<'_>) {
    let result = match output {
        Output::ToClient { tuple, data } => {
            match listeners.iter().find(|l| l.local == tuple.server) {
                Some(listener) => listener.socket.send_to(data, tuple.client),
                None => return,
            }
        }
        Output::ToPeer { alloc, peer, data } => {
            let slot = relay_slot(alloc.index, Family::of(&peer));
            match relays.get(slot) {
                Some(relay) if relay.generation == alloc.generation => {
                    relay.socket.send_to(data, peer)
                }
                _ => return,
            }
        }
        Output::Nothing | Output::BindRelay(_) => return,
    };
    if let Err(error) = result {
        if error.kind() != ErrorKind::WouldBlock {
            debug!(%error, "udp send failed");
        }
    }
}

/// Where an allocation's relay socket of `family` sits in `relays`, and its poll token.
fn relay_slot(index: usize, family: Family) -> usize {
    index * 2 + family.index()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(sizes: &[usize]) -> GsoRun {
        let mut buffer = vec![0u8; GSO_MAX_BYTES];
        let mut run = GsoRun::new(true);
        for &size in sizes {
            run.add(&mut buffer, &vec![7u8; size]);
        }
        run
    }

    #[test]
    fn gso_takes_equal_datagrams_and_a_shorter_last_one() {
        assert_eq!(run_of(&[100, 100, 100]).segment(), Some(100));
        assert_eq!(run_of(&[100, 100, 40]).segment(), Some(100));
        assert_eq!(run_of(&[100, 100, 40]).used, 240);
    }

    #[test]
    fn gso_refuses_what_the_kernel_would_split_differently() {
        assert_eq!(run_of(&[100]).segment(), None, "one datagram: plain send");
        assert_eq!(run_of(&[100, 120]).segment(), None, "a longer one after");
        assert_eq!(
            run_of(&[100, 40, 100]).segment(),
            None,
            "a short one in the middle"
        );
        assert_eq!(
            run_of(&[1500, 1500]).segment(),
            None,
            "over a 1500-byte path MTU"
        );
        assert_eq!(run_of(&[100; 65]).segment(), None, "more than 64 segments");
        let mut off = GsoRun::new(false);
        off.add(&mut [0u8; 1000], &[1u8; 10]);
        assert_eq!(off.segment(), None, "disabled");
    }
}
