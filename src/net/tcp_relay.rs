//! TCP relays (RFC 6062) in the I/O layer: the relay's listening socket and outgoing peer
//! connections, the process-wide registry of peer connections waiting for their ConnectionBind,
//! and the splice of a bound data connection with its peer connection.
//!
//! The protocol decisions (permissions, policy, 446, who may bind, what a reload revokes) are the
//! turn core's; this module carries them out and enforces the RFC's 30 s timers (connecting to a
//! peer, and a peer connection waiting for its ConnectionBind).
//!
//! The registry is a `Mutex<HashMap>` touched when a peer connection is opened, bound or given
//! up, never per byte. Each peer connection has a cut ([`Cut`]) its allocation's relay holds:
//! the relay closes one connection by dropping its cut (a reload denies the peer), and all of
//! them by being dropped (the allocation ended).
//!
//! After the bind, bytes go straight between the two sockets through a buffer per direction: no
//! STUN framing or parsing. They are relayed traffic all the same: metered against the
//! allocation's `max-bps` and the stream side's part of `bps-capacity` (a side that is over is
//! not read until it may pass: TCP flow control slows its sender, nothing is dropped), and
//! counted in `tern_relayed_bytes_total` and `tern_relayed_packets_total` (a read is a packet).

use super::common::lock;
use super::sockets;
use super::stats::StreamStats;
use super::stream::{PeerConnections, Slot};
use super::stream_admin::{Folder, FOLD_INTERVAL};
use crate::metrics::LabelSet;
use crate::policy::bandwidth::{self, CapacityPool, SharedByteBucket};
use crate::turn::{BandwidthLimit, CoreConfig, Counters, Direction, CONNECTION_BIND_TIMEOUT};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tracing::debug;

/// How long a relay stops accepting after a failed accept (out of file descriptors and the
/// like), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How many bytes a spliced connection reads at once from either side.
const SPLICE_CHUNK: usize = 16 * 1024;

/// Ties peer connections to the allocation that owns them.
#[derive(Clone, Debug)]
pub(super) struct Owner {
    /// Tells the control connection that a peer connection is gone (so its core forgets it).
    pub closed: mpsc::UnboundedSender<u32>,
    /// The allocation's `max-bps` for what its spliced connections relay, by direction. Its
    /// data connections are tasks of their own, so the bucket is shared (one atomic, drawn from
    /// in batches); the core's buckets for the allocation carry nothing, as a TCP allocation
    /// relays no ChannelData.
    pub max_bps: Arc<[SharedByteBucket; 2]>,
}

/// Resolves when a peer connection must close: its relay dropped the sender, to cut this
/// connection (a reload denies its peer) or all of them (the allocation ended).
pub(super) type Cut = watch::Receiver<()>;

/// A peer connection waiting for its ConnectionBind.
#[derive(Debug)]
pub(super) struct Pending {
    pub id: u32,
    pub username: Box<str>,
    /// The control connection's client address (its nonce is good on the data connection too).
    pub control_client: SocketAddr,
    pub peer: Option<TcpStream>,
    pub peer_addr: SocketAddr,
    pub owner: Owner,
    pub cut: Cut,
    /// Its place under `max-connections`, kept through the splice.
    pub _slot: Slot,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Bound and spliced, timed out, or its allocation ended: either way it is over.
        let _ = self.owner.closed.send(self.id);
    }
}

/// Peer connections waiting for a ConnectionBind, by connection id, for every client connection.
#[derive(Debug, Default)]
pub(super) struct ConnectionRegistry {
    pending: Mutex<HashMap<u32, Pending>>,
}

impl ConnectionRegistry {
    /// Files a peer connection under its id until a data connection claims it, it is cut (its
    /// allocation ends, or a reload denies its peer), or [`CONNECTION_BIND_TIMEOUT`] passes.
    /// False (and the connection is dropped) if the id is already taken by another allocation's
    /// connection.
    pub fn insert(self: &Arc<Self>, pending: Pending) -> bool {
        let id = pending.id;
        let mut cut = pending.cut.clone();
        {
            let mut map = lock(&self.pending);
            if map.contains_key(&id) {
                return false;
            }
            map.insert(id, pending);
        }
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(CONNECTION_BIND_TIMEOUT) => {}
                _ = cut.changed() => {}
            }
            if let Some(registry) = registry.upgrade() {
                if let Some(closed) = registry.take(id) {
                    debug!(peer = %closed.peer_addr, connection_id = id, "peer connection closed before its ConnectionBind");
                }
            }
        });
        true
    }

    fn take(&self, id: u32) -> Option<Pending> {
        lock(&self.pending).remove(&id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.pending).len()
    }
}

impl PeerConnections for Arc<ConnectionRegistry> {
    type Claimed = Pending;

    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)> {
        lock(&self.pending)
            .get(&id)
            .map(|p| (p.username.clone(), p.control_client))
    }

    fn claim(&self, id: u32) -> Option<Pending> {
        self.take(id)
    }
}

/// A TCP allocation's relay, owned by its control connection: the listening socket on the
/// relayed address, the Connects in progress, the news of closed peer connections, and the
/// cuts of its peer connections.
pub(super) struct TcpRelay {
    pub listener: TcpListener,
    pub local: SocketAddr,
    pub connects: JoinSet<(u32, io::Result<TcpStream>, Slot)>,
    pub closed: mpsc::UnboundedReceiver<u32>,
    /// Set after a failed accept: accepting resumes when it fires.
    backoff: Option<Pin<Box<Sleep>>>,
    owner: Owner,
    /// The sending side of each peer connection's [`Cut`], by connection id, from Connect or
    /// accept until it closes. Dropped with the relay: every peer connection then closes.
    cuts: HashMap<u32, watch::Sender<()>>,
}

/// What happened on a TCP relay.
pub(super) enum RelayEvent {
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    /// A Connect's outcome, with the slot its connection holds.
    Connected(u32, io::Result<TcpStream>, Slot),
    Closed(u32),
}

impl TcpRelay {
    pub fn new(listener: TcpListener, local: SocketAddr) -> Self {
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let now = Instant::now();
        TcpRelay {
            listener,
            local,
            connects: JoinSet::new(),
            closed,
            backoff: None,
            owner: Owner {
                closed: closed_tx,
                max_bps: Arc::new([SharedByteBucket::new(now), SharedByteBucket::new(now)]),
            },
            cuts: HashMap::new(),
        }
    }

    pub fn owner(&self) -> Owner {
        self.owner.clone()
    }

    /// A new cut for peer connection `id` (accepted, or connecting), held until it closes.
    pub fn new_cut(&mut self, id: u32) -> Cut {
        let (sender, cut) = watch::channel(());
        self.cuts.insert(id, sender);
        cut
    }

    /// The cut of peer connection `id`; `None` once it was cut.
    pub fn cut_of(&self, id: u32) -> Option<Cut> {
        self.cuts.get(&id).map(watch::Sender::subscribe)
    }

    /// Closes peer connection `id`, waiting for its ConnectionBind, spliced or connecting (a
    /// connect then fails).
    pub fn cut(&mut self, id: u32) {
        if self.cuts.remove(&id).is_some() {
            debug!(
                connection_id = id,
                "peer connection cut: a reload denies its peer"
            );
        }
    }

    /// Peer connection `id` is closed (or never was opened): its cut goes.
    pub fn forget(&mut self, id: u32) {
        self.cuts.remove(&id);
    }

    /// Opens a connection from the relayed address to `peer` in `slot`, giving up after 30 s
    /// or when it is cut.
    pub fn connect(&mut self, peer: SocketAddr, id: u32, slot: Slot) {
        let local = self.local;
        let mut cut = self.new_cut(id);
        self.connects.spawn(async move {
            let attempt = async {
                let socket = TcpSocket::from_std_stream(sockets::relay_tcp_outgoing(local)?);
                socket.connect(peer).await
            };
            let result = tokio::select! {
                result = tokio::time::timeout(CONNECTION_BIND_TIMEOUT, attempt) => match result {
                    Ok(result) => result,
                    Err(_) => Err(io::ErrorKind::TimedOut.into()),
                },
                _ = cut.changed() => Err(io::ErrorKind::ConnectionAborted.into()),
            };
            (id, result, slot)
        });
    }

    /// The next thing that happens on this relay.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<RelayEvent> {
        if let Some(backoff) = &mut self.backoff {
            if backoff.as_mut().poll(cx).is_ready() {
                self.backoff = None;
            }
        }
        if self.backoff.is_none() {
            if let Poll::Ready(accepted) = self.listener.poll_accept(cx) {
                if accepted.is_err() {
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                return Poll::Ready(RelayEvent::Accepted(accepted));
            }
        }
        while let Poll::Ready(Some(joined)) = self.connects.poll_join_next(cx) {
            if let Ok((id, result, slot)) = joined {
                return Poll::Ready(RelayEvent::Connected(id, result, slot));
            }
        }
        match self.closed.poll_recv(cx) {
            Poll::Ready(Some(id)) => {
                self.forget(id);
                Poll::Ready(RelayEvent::Closed(id))
            }
            _ => Poll::Pending,
        }
    }

    #[cfg(test)]
    async fn next_event(&mut self) -> RelayEvent {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }
}

/// What a spliced connection's bytes pass and are counted in, besides its allocation's
/// `max-bps` bucket.
pub(super) struct Meter {
    /// Where `max-bps` and `bps-capacity` come from (a reload changes them).
    pub config: watch::Receiver<Arc<CoreConfig>>,
    /// The stream side's part of `bps-capacity`.
    pub capacity: Arc<CapacityPool>,
    pub stats: Arc<StreamStats>,
}

/// Relays bytes between a bound data connection and its peer connection until either closes
/// (then both close) or the peer connection is cut. `leftover` is what the client sent after
/// its ConnectionBind, before the response reached it: relayed first, metered like the rest.
pub(super) async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    leftover: Vec<u8>,
    mut pending: Pending,
    mut meter: Meter,
) {
    let Some(mut peer) = pending.peer.take() else {
        return;
    };
    let _ = peer.set_nodelay(true);
    let gate = Gate::new(pending.owner.max_bps.clone(), &meter);
    gate.configure(&meter.config.borrow_and_update());
    let mut folder = Folder::new(meter.stats.turn.clone());
    let (client_read, mut client_write) = tokio::io::split(client);
    let mut client_read = io::Cursor::new(leftover).chain(client_read);
    let (mut peer_read, mut peer_write) = peer.split();
    {
        let to_peer = pump(&mut client_read, &mut peer_write, Direction::ToPeer, &gate);
        let to_client = pump(
            &mut peer_read,
            &mut client_write,
            Direction::ToClient,
            &gate,
        );
        tokio::pin!(to_peer, to_client);
        let mut fold = tokio::time::interval(FOLD_INTERVAL);
        let mut reloads = true;
        loop {
            tokio::select! {
                _ = &mut to_peer => break,
                _ = &mut to_client => break,
                _ = pending.cut.changed() => break,
                changed = meter.config.changed(), if reloads => match changed {
                    Ok(()) => gate.configure(&meter.config.borrow_and_update()),
                    Err(_) => reloads = false,
                },
                _ = fold.tick() => folder.fold_counters(gate.counters()),
            }
        }
    }
    folder.fold_counters(gate.counters());
    // One side closed (or failed), or the connection was cut: close both (RFC 6062 §5.5).
    let _ = peer_write.shutdown().await;
    let _ = client_write.shutdown().await;
    debug!(peer = %pending.peer_addr, connection_id = pending.id, "spliced connection closed");
}

/// Copies `reader` to `writer` through `gate` until `reader` ends or either fails: a read of
/// at most [`SPLICE_CHUNK`], then its bytes wait (nothing more is read) until the limits let them
/// pass, then they are written.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    direction: Direction,
    gate: &Gate,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SPLICE_CHUNK];
    let mut held = [0u64; BandwidthLimit::COUNT];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        gate.pass(direction, n as u64, &mut held).await;
        writer.write_all(&buf[..n]).await?;
        // TLS holds records back until flushed; for TCP this is nothing.
        writer.flush().await?;
    }
}

/// The limits a spliced connection's bytes pass, with its current rates, and what it relayed.
/// Its two directions run in one task: the atomics here are that task's own, never contended.
struct Gate {
    max_bps: Arc<[SharedByteBucket; 2]>,
    capacity: Arc<CapacityPool>,
    stats: Arc<StreamStats>,
    /// The rates of `max-bps` and `bps-capacity` (the whole server's), by [`BandwidthLimit`].
    rates: [AtomicU64; BandwidthLimit::COUNT],
    /// Reads and bytes relayed, by [`Direction`].
    reads: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

impl Gate {
    fn new(max_bps: Arc<[SharedByteBucket; 2]>, meter: &Meter) -> Self {
        Gate {
            max_bps,
            capacity: meter.capacity.clone(),
            stats: meter.stats.clone(),
            rates: Default::default(),
            reads: Default::default(),
            bytes: Default::default(),
        }
    }

    fn configure(&self, config: &CoreConfig) {
        self.rates[BandwidthLimit::MaxBps.index()].store(config.max_bps, Relaxed);
        self.rates[BandwidthLimit::BpsCapacity.index()].store(config.bps_capacity, Relaxed);
    }

    /// Takes `bytes` going `direction` from each limit, waiting while one has not got them;
    /// `held` is what this direction drew before and has not spent, by limit. Counts them.
    async fn pass(&self, direction: Direction, bytes: u64, held: &mut [u64]) {
        let d = direction.index();
        for limit in [BandwidthLimit::MaxBps, BandwidthLimit::BpsCapacity] {
            let held = &mut held[limit.index()];
            loop {
                let configured = self.rates[limit.index()].load(Relaxed);
                let rate = match limit {
                    BandwidthLimit::MaxBps => configured,
                    BandwidthLimit::BpsCapacity => self.capacity.rate(configured),
                };
                if rate == 0 {
                    break;
                }
                if *held >= bytes {
                    *held -= bytes;
                    break;
                }
                let need = bytes - *held;
                let want = need.max(bandwidth::batch(rate));
                let now = Instant::now();
                let drawn = match limit {
                    BandwidthLimit::MaxBps => self.max_bps[d].draw(now, rate, need, want),
                    BandwidthLimit::BpsCapacity => self.capacity.draw(now, rate, d, need, want),
                };
                match drawn {
                    Ok(drawn) => *held += drawn,
                    Err(delay) => {
                        self.stats.bandwidth_paused[d][limit.index()].fetch_add(1, Relaxed);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        self.reads[d].fetch_add(1, Relaxed);
        self.bytes[d].fetch_add(bytes, Relaxed);
    }

    /// What was relayed, as the turn counters count it (for [`Folder`]).
    fn counters(&self) -> Counters {
        let mut counters = Counters::default();
        for d in 0..2 {
            counters.relayed_packets[d] = self.reads[d].load(Relaxed);
            counters.relayed_bytes[d] = self.bytes[d].load(Relaxed);
        }
        counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::{LimitSettings, Limits};
    use crate::net::StreamStats;
    use std::time::Duration;

    fn pending(id: u32, relay: &mut TcpRelay, peer: TcpStream) -> Pending {
        let unlimited = LimitSettings {
            max_connections: 0,
            max_connections_per_ip: 0,
            ipv6_prefix: 64,
            fd_ceiling: None,
        };
        let limits = Limits::new(unlimited, Arc::new(StreamStats::default()));
        Pending {
            id,
            username: "alice".into(),
            control_client: "127.0.0.1:1".parse().unwrap(),
            peer_addr: peer.peer_addr().unwrap(),
            peer: Some(peer),
            owner: relay.owner(),
            cut: relay.new_cut(id),
            _slot: limits.slot().unwrap(),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    fn relay() -> TcpRelay {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let local = std.local_addr().unwrap();
        TcpRelay::new(TcpListener::from_std(std).unwrap(), local)
    }

    #[tokio::test(start_paused = true)]
    async fn unbound_connections_expire_and_the_owner_hears_of_it() {
        let registry = Arc::new(ConnectionRegistry::default());
        let (mut relay, mut other_relay) = (relay(), relay());
        let (_far, near) = pair().await;
        assert!(registry.insert(pending(5, &mut relay, near)));
        let (_far2, near2) = pair().await;
        assert!(
            !registry.insert(pending(5, &mut other_relay, near2)),
            "an id is filed once"
        );
        // The refused duplicate (another allocation's) reports itself closed.
        assert!(matches!(
            other_relay.next_event().await,
            RelayEvent::Closed(5)
        ));
        assert_eq!(registry.len(), 1);
        tokio::time::sleep(CONNECTION_BIND_TIMEOUT + Duration::from_secs(1)).await;
        assert_eq!(registry.len(), 0);
        assert!(matches!(relay.next_event().await, RelayEvent::Closed(5)));
    }

    #[tokio::test]
    async fn a_cut_closes_that_pending_connection_only() {
        let registry = Arc::new(ConnectionRegistry::default());
        let mut relay = relay();
        let (mut far_one, near_one) = pair().await;
        let (mut far_two, near_two) = pair().await;
        assert!(registry.insert(pending(1, &mut relay, near_one)));
        assert!(registry.insert(pending(2, &mut relay, near_two)));
        relay.cut(1);
        assert!(matches!(relay.next_event().await, RelayEvent::Closed(1)));
        assert_eq!(registry.len(), 1);
        assert!(registry.claim(1).is_none());
        // The peer sees its connection closed; the other one stays open.
        let mut buf = [0u8; 1];
        assert_eq!(far_one.read(&mut buf).await.unwrap(), 0);
        let open = tokio::time::timeout(Duration::from_millis(100), far_two.read(&mut buf)).await;
        assert!(open.is_err(), "still open");
        assert!(relay.cut_of(2).is_some() && relay.cut_of(1).is_none());
    }

    #[tokio::test]
    async fn dropping_the_relay_ends_pending_and_claims_see_the_user() {
        let registry = Arc::new(ConnectionRegistry::default());
        let mut relay = relay();
        let (_far, near) = pair().await;
        assert!(registry.insert(pending(9, &mut relay, near)));
        assert_eq!(
            registry.pending(9).map(|(user, _)| user),
            Some("alice".into())
        );
        assert!(registry.pending(10).is_none());
        drop(relay);
        for _ in 0..100 {
            if registry.len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(registry.len(), 0);
        assert!(registry.claim(9).is_none());
    }
}
