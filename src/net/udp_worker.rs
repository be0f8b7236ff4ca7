//! One UDP worker: a thread with its own poll loop, its own listener sockets (SO_REUSEPORT), the
//! relay sockets of the allocations it owns, and its own `turn::Server`. Nothing on the packet
//! path is shared with other workers.

use super::addresses::RelayPlan;
use super::relay_ports::RelayPorts;
use super::sockets;
use super::stats::WorkerStats;
use crate::stun::DATA_INDICATION_MAX_PREFIX;
use crate::turn::{
    AllocId, BoundRelay, CoreConfig, Event, Family, FiveTuple, Output, PortRequest, RelayError,
    RelayRequest, Server, Transport,
};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, warn};

/// Relay sockets use tokens `0..`: the allocation's slab index times two, plus its family's
/// index (0 IPv4, 1 IPv6), as a dual-stack allocation has one socket of each (see
/// [`relay_slot`]); listeners and the waker sit at the top of the token space.
const LISTENER_TOKEN_BASE: usize = 1 << 40;
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);
/// Largest UDP payload plus room for framing in front and padding behind.
const PACKET_BUFFER: usize = DATA_INDICATION_MAX_PREFIX + 65536 + 4;
/// Responses are small; 4 KiB is plenty for any we write.
const REPLY_BUFFER: usize = 4096;
/// Upper bound on how long the loop sleeps, so wall-clock sync and stats stay fresh.
const MAX_SLEEP: Duration = Duration::from_millis(500);

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

struct Relay {
    socket: UdpSocket,
    generation: u32,
    port: u16,
}

/// What a worker needs to start.
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub listen: Vec<SocketAddr>,
    pub server: Server,
    pub ports: Arc<Mutex<RelayPorts>>,
    pub plan: Arc<RelayPlan>,
    pub control: Receiver<Control>,
    pub poll: Poll,
    pub stats: Arc<WorkerStats>,
}

pub(crate) struct UdpWorker {
    id: usize,
    poll: Poll,
    listeners: Vec<Listener>,
    relays: Vec<Option<Relay>>,
    server: Server,
    ports: Arc<Mutex<RelayPorts>>,
    plan: Arc<RelayPlan>,
    control: Receiver<Control>,
    stats: Arc<WorkerStats>,
    packet: Box<[u8]>,
    reply: Box<[u8]>,
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
        Ok(UdpWorker {
            id: setup.id,
            poll: setup.poll,
            listeners,
            relays: Vec::new(),
            server: setup.server,
            ports: setup.ports,
            plan: setup.plan,
            control: setup.control,
            stats: setup.stats,
            packet: vec![0u8; PACKET_BUFFER].into_boxed_slice(),
            reply: vec![0u8; REPLY_BUFFER].into_boxed_slice(),
        })
    }

    /// The poll loop; returns on `Control::Shutdown`.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_sync = Instant::now();
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
            for event in events.iter() {
                match event.token() {
                    WAKER_TOKEN => {
                        if !self.handle_control() {
                            self.release_all();
                            return;
                        }
                    }
                    Token(t) if t >= LISTENER_TOKEN_BASE => {
                        self.drain_listener(now, t - LISTENER_TOKEN_BASE)
                    }
                    Token(slot) => self.drain_relay(slot),
                }
            }
            self.server.handle_timeout(now);
            self.apply_events();
            if now.duration_since(last_sync) >= MAX_SLEEP {
                last_sync = now;
                self.server.sync_wall_clock(now, unix_now());
                self.stats.publish(&self.server);
            }
        }
    }

    /// Applies pending control messages; false on shutdown.
    fn handle_control(&mut self) -> bool {
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::Reload(config) => self.server.set_config(config),
                Control::Shutdown => return false,
                Control::ListAllocations(reply) => {
                    let now = Instant::now();
                    let _ = reply.send(self.server.allocations_with_ids(now).collect());
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

    fn drain_listener(&mut self, now: Instant, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let (len, client) = match listener.socket.recv_from(&mut self.packet) {
                Ok(received) => received,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(worker = self.id, error = %e, "udp receive failed");
                    return;
                }
            };
            let tuple = FiveTuple {
                client,
                server: listener.local,
                transport: Transport::Udp,
            };
            let output =
                self.server
                    .handle_client(now, tuple, &self.packet[..len], &mut self.reply);
            match output {
                Output::BindRelay(request) => self.bind_relay(now, request),
                other => send(&self.listeners, &self.relays, other),
            }
            self.apply_events();
        }
    }

    fn drain_relay(&mut self, slot: usize) {
        loop {
            let Some(relay) = self.relays.get(slot).and_then(Option::as_ref) else {
                return;
            };
            let alloc = AllocId {
                index: slot / 2,
                generation: relay.generation,
            };
            let payload = &mut self.packet[DATA_INDICATION_MAX_PREFIX..PACKET_BUFFER - 4];
            let (len, peer) = match relay.socket.recv_from(payload) {
                Ok(received) => received,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(worker = self.id, error = %e, "relay receive failed");
                    return;
                }
            };
            let output = self.server.handle_peer(alloc, peer, &mut self.packet, len);
            send(&self.listeners, &self.relays, output);
        }
    }

    /// Binds the relay socket(s) for a new allocation and completes the Allocate.
    fn bind_relay(&mut self, now: Instant, request: RelayRequest) {
        let primary = self.open_relay(now, request, request.family, request.port);
        // The additional (dual-stack) relay takes an even port if the first did, never a pair.
        let additional_port = match request.port {
            PortRequest::Even { .. } => PortRequest::Even {
                reserve_next: false,
            },
            _ => PortRequest::Any,
        };
        let additional = request
            .additional
            .map(|family| self.open_relay(now, request, family, additional_port));
        let primary = self.keep_relay(request.alloc, primary);
        let additional = additional.map(|result| self.keep_relay(request.alloc, result));
        let output =
            self.server
                .relay_bound(now, request.alloc, primary, additional, &mut self.reply);
        send(&self.listeners, &self.relays, output);
    }

    /// Files a bound relay socket under its slot; passes the result on for the core.
    fn keep_relay(
        &mut self,
        alloc: AllocId,
        result: Result<(BoundRelay, Relay), RelayError>,
    ) -> Result<BoundRelay, RelayError> {
        let (bound, relay) = result?;
        let slot = relay_slot(alloc.index, Family::of(&bound.local));
        if self.relays.len() <= slot {
            self.relays.resize_with(slot + 1, || None);
        }
        self.relays[slot] = Some(relay);
        Ok(bound)
    }

    fn open_relay(
        &mut self,
        now: Instant,
        request: RelayRequest,
        family: Family,
        port: PortRequest,
    ) -> Result<(BoundRelay, Relay), RelayError> {
        let reached = request.tuple.server.ip();
        let ip = self
            .plan
            .ip_for(family, reached)
            .ok_or(RelayError::FamilyUnsupported)?;
        let mut opened = lock(&self.ports).open(ip, port, now);
        if let (Err(RelayError::BadReservation), PortRequest::Reserved(_)) = (&opened, port) {
            // A token names its socket, whatever its family: the pair may have been reserved
            // by an IPv6 Allocate, and a token Allocate carries no family (RFC 8656 §7.2).
            let other = match family {
                Family::V4 => Family::V6,
                Family::V6 => Family::V4,
            };
            if let Some(ip) = self.plan.ip_for(other, reached) {
                opened = lock(&self.ports).open(ip, port, now);
            }
        }
        let opened = opened?;
        let mut socket = UdpSocket::from_std(opened.socket);
        let token = Token(relay_slot(request.alloc.index, Family::of(&opened.local)));
        if let Err(error) = self
            .poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)
        {
            warn!(%error, "cannot register relay socket");
            lock(&self.ports).release(opened.port);
            return Err(RelayError::NoPorts);
        }
        let bound = BoundRelay {
            local: opened.local,
            reservation: opened.reservation,
        };
        Ok((
            bound,
            Relay {
                socket,
                generation: request.alloc.generation,
                port: opened.port,
            },
        ))
    }

    /// Closes the relay sockets of allocations the server has ended.
    fn apply_events(&mut self) {
        while let Some(Event::Released { alloc, .. }) = self.server.poll_event() {
            for family in [Family::V4, Family::V6] {
                let slot = self.relays.get_mut(relay_slot(alloc.index, family));
                let Some(slot) =
                    slot.filter(|s| s.as_ref().is_some_and(|r| r.generation == alloc.generation))
                else {
                    continue;
                };
                if let Some(mut relay) = slot.take() {
                    let _ = self.poll.registry().deregister(&mut relay.socket);
                    lock(&self.ports).release(relay.port);
                }
            }
        }
    }

    fn release_all(&mut self) {
        for relay in self.relays.iter_mut().filter_map(Option::take) {
            lock(&self.ports).release(relay.port);
        }
    }
}

/// Carries out a reply or a relayed packet. A full socket buffer drops the datagram, as UDP would.
fn send(listeners: &[Listener], relays: &[Option<Relay>], output: Output<'_>) {
    let result = match output {
        Output::ToClient { tuple, data } => {
            match listeners.iter().find(|l| l.local == tuple.server) {
                Some(listener) => listener.socket.send_to(data, tuple.client),
                None => return,
            }
        }
        Output::ToPeer { alloc, peer, data } => {
            let slot = relay_slot(alloc.index, Family::of(&peer));
            match relays.get(slot).and_then(Option::as_ref) {
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

fn lock(ports: &Mutex<RelayPorts>) -> std::sync::MutexGuard<'_, RelayPorts> {
    // A poisoned pool only means another worker panicked mid-update of a free list of integers.
    ports
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
