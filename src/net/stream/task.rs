//! The tokio task that drives one connection's state machine: it reads the client stream into
//! it, writes what it queued as the socket allows, carries out its outputs (the relay socket,
//! RFC 6062 peer connections, the TLS handshake, the hand-off to a splice), and feeds it one
//! sleep, the admin API's commands and configuration changes. Every decision is the state
//! machine's; nothing here waits on one thing while another is due.

use super::connection::{Accepts, CloseReason, Connection, HandOff, Output, Settings};
use super::{Kind, Refused, Shared, Slot};
use crate::net::common::unix_now;
use crate::net::relay::{Leased, DATAGRAM_BUFFER};
use crate::net::stream_admin::{Registration, StreamCommand};
use crate::net::tcp_relay::{self, ConnectionRegistry, Meter, Pending, RelayEvent, TcpRelay};
use crate::stun::DATA_INDICATION_MAX_PREFIX;
use crate::turn::{
    BoundRelay, CoreConfig, RelayError, RelayRequest, RelayTransport, Server, Transport,
};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;
use tracing::debug;

type Conn = Connection<Arc<ConnectionRegistry>>;

/// Rounds of work one wake-up may do before the task yields to others.
const ROUNDS_PER_POLL: usize = 32;

/// How a connection's task ended.
#[derive(Debug)]
enum Ending {
    Closed(CloseReason),
    /// Reading or writing the client failed.
    Io,
    /// `max-connections-per-ip`, for the client a trusted proxy named.
    Refused,
    TlsFailed,
    /// A data connection's splice ended.
    Spliced,
}

/// Why [`Driver::drive`] returned.
enum Exit {
    Ended(Ending),
    /// The first bytes are a TLS ClientHello: the handshake comes next.
    StartTls(Vec<u8>),
    HandOff(HandOff<Pending>),
}

/// Serves one accepted connection to its end.
pub(super) async fn run(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    trusted: bool,
    slot: Slot,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(local) = tcp.local_addr() else { return };
    let now = Instant::now();
    let mut config = shared.core.clone();
    let core = config.borrow_and_update().clone();
    let mut server = Server::new(
        core,
        shared.nonces.clone(),
        shared.quotas.clone(),
        now,
        unix_now(),
    );
    server.set_drain_flag(shared.draining.clone());
    server.set_capacity_pool(shared.capacity.clone());
    let settings = Settings {
        idle_timeout: shared.settings.idle_timeout,
        partial_frame_timeout: shared.settings.partial_frame_timeout,
        write_stall_timeout: shared.settings.write_stall_timeout,
        queue_limit: shared.settings.queue_limit,
        accepts: Accepts {
            proxy: trusted,
            tls: shared.tls.is_some(),
            plain: kind == Kind::Plain,
        },
        wall_clock: unix_now,
    };
    let stats = shared.stats.clone();
    let conn = Connection::new(
        now,
        server,
        peer,
        local,
        settings,
        stats.clone(),
        shared.tcp_connections.clone(),
    );
    let mut driver = Driver {
        shared,
        peer,
        client: peer,
        trusted,
        slot,
        relay: None,
        unflushed: false,
        sleep: Box::pin(tokio::time::sleep_until(now.into())),
        registration: None,
        commands: None,
        config: ConfigWatch::new(config),
    };
    let ending = driver.serve(tcp, conn).await;
    let counter = match ending {
        Ending::Closed(CloseReason::IdleTimeout | CloseReason::PartialFrameTimeout) => {
            Some(&stats.timeouts)
        }
        Ending::Closed(CloseReason::WriteStalled) => Some(&stats.write_stalls),
        Ending::Closed(CloseReason::Protocol(_)) => Some(&stats.protocol_errors),
        _ => None,
    };
    if let Some(counter) = counter {
        counter.fetch_add(1, Relaxed);
    }
    debug!(client = %driver.client, reason = ?ending, "connection closed");
}

/// The I/O around one connection.
struct Driver {
    shared: Arc<Shared>,
    /// The TCP peer, and the client it speaks for (a trusted proxy's PROXY header).
    peer: SocketAddr,
    client: SocketAddr,
    trusted: bool,
    /// The connection's place under the connection limits.
    slot: Slot,
    relay: Option<HeldRelay>,
    /// Bytes were written since the stream was last flushed (TLS buffers records).
    unflushed: bool,
    /// Fires at the state machine's next deadline.
    sleep: Pin<Box<Sleep>>,
    /// In the admin API's registry (and `tern_connections`) while serving TURN.
    registration: Option<Registration>,
    commands: Option<mpsc::UnboundedReceiver<StreamCommand>>,
    config: ConfigWatch,
}

impl Driver {
    async fn serve(&mut self, mut tcp: TcpStream, mut conn: Conn) -> Ending {
        match self.drive(&mut tcp, &mut conn).await {
            Exit::Ended(ending) => ending,
            Exit::HandOff(handoff) => self.splice(tcp, conn, handoff).await,
            Exit::StartTls(prefix) => {
                let Some(acceptor) = self.shared.tls.clone() else {
                    return Ending::TlsFailed;
                };
                let stream = Prefixed {
                    prefix,
                    at: 0,
                    inner: tcp,
                };
                let mut tls = match self.handshake(acceptor.accept(stream), &mut conn).await {
                    Ok(tls) => tls,
                    Err(ending) => return ending,
                };
                conn.tls_established();
                self.register(Transport::Tls);
                match self.drive(&mut tls, &mut conn).await {
                    Exit::Ended(ending) => ending,
                    Exit::HandOff(handoff) => self.splice(tls, conn, handoff).await,
                    Exit::StartTls(_) => Ending::TlsFailed,
                }
            }
        }
    }

    /// Runs the TLS handshake; the connection's deadlines (`stream-idle-timeout`) still hold.
    async fn handshake<F, S>(&mut self, handshake: F, conn: &mut Conn) -> Result<S, Ending>
    where
        F: Future<Output = io::Result<S>>,
    {
        tokio::pin!(handshake);
        loop {
            let Some(deadline) = conn.poll_timeout() else {
                return Err(Ending::Io);
            };
            tokio::select! {
                done = &mut handshake => {
                    return done.map_err(|error| {
                        self.shared.stats.tls_handshake_failures.fetch_add(1, Relaxed);
                        debug!(client = %self.client, %error, "TLS handshake failed");
                        Ending::TlsFailed
                    });
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now().max(deadline);
                    conn.handle_timeout(now);
                    while let Some(output) = conn.poll_output(now) {
                        if let Output::Close(reason) = output {
                            return Err(Ending::Closed(reason));
                        }
                    }
                }
            }
        }
    }

    /// Carries a bound data connection's bytes to and from its peer until either closes.
    async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        conn: Conn,
        handoff: HandOff<Pending>,
    ) -> Ending {
        drop(conn);
        // Nothing for the admin API to ask a spliced connection.
        self.commands = None;
        let stats = &self.shared.stats;
        stats.tcp_spliced.fetch_add(1, Relaxed);
        let meter = Meter {
            config: self.shared.core.clone(),
            capacity: self.shared.capacity.clone(),
            stats: stats.clone(),
        };
        tcp_relay::splice(stream, handoff.leftover, handoff.claimed, meter).await;
        stats.tcp_spliced.fetch_sub(1, Relaxed);
        Ending::Spliced
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        conn: &mut Conn,
    ) -> Exit {
        std::future::poll_fn(|cx| self.poll(cx, stream, conn)).await
    }

    /// One wake-up: act on the outputs, then offer every source a turn, until none is ready.
    fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        conn: &mut Conn,
    ) -> Poll<Exit> {
        conn.start_turn();
        for _ in 0..ROUNDS_PER_POLL {
            let now = Instant::now();
            if let Some(exit) = self.act(now, conn) {
                return Poll::Ready(exit);
            }
            let mut busy = match self.poll_write(cx, stream, conn) {
                Ok(wrote) => wrote,
                Err(_) => return Poll::Ready(Exit::Ended(Ending::Io)),
            };
            match poll_read(cx, stream, conn) {
                Poll::Ready(Ok(0)) => {
                    conn.handle_client_eof();
                    busy = true;
                }
                Poll::Ready(Ok(n)) => {
                    conn.handle_client_read(now, n);
                    busy = true;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Exit::Ended(Ending::Io)),
                Poll::Pending => {}
            }
            busy |= self.poll_relay(cx, now, conn);
            busy |= self.poll_commands(cx, now, conn);
            if let Poll::Ready(config) = self.config.poll_changed(cx) {
                conn.set_config(config);
                busy = true;
            }
            busy |= self.poll_timer(cx, conn);
            if conn.yielding() {
                break; // frames wait: they get the next turn, after other tasks had theirs
            }
            if !busy {
                return Poll::Pending;
            }
        }
        // Woken from within its own poll, the task goes to the back of the run queue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Carries out every output the connection has; `Some` when the connection is done here.
    fn act(&mut self, now: Instant, conn: &mut Conn) -> Option<Exit> {
        while let Some(output) = conn.poll_output(now) {
            match output {
                Output::Identified { client, tls_prefix } => {
                    self.client = client;
                    if self.trusted {
                        let limits = &self.shared.limits;
                        if let Err(reason) = limits.admit_ip(&mut self.slot, client.ip()) {
                            self.shared.refused(client, reason);
                            return Some(Exit::Ended(Ending::Refused));
                        }
                    }
                    if client != self.peer {
                        debug!(%client, proxy = %self.peer, "PROXY header accepted");
                    }
                    match tls_prefix {
                        Some(prefix) => return Some(Exit::StartTls(prefix)),
                        None => self.register(Transport::Tcp),
                    }
                }
                Output::ToPeer { peer, data } => {
                    if let Some(HeldRelay {
                        relay: StreamRelay::Udp { socket, .. },
                        ..
                    }) = &self.relay
                    {
                        // A full socket buffer drops the datagram, as UDP would.
                        let _ = socket.try_send_to(data, peer);
                    }
                }
                Output::BindRelay(request) => {
                    let result = self.bind_relay(now, &request);
                    conn.relay_bound(now, result);
                    if let Some(HeldRelay {
                        relay: StreamRelay::Tcp { username, .. },
                        ..
                    }) = &mut self.relay
                    {
                        *username = conn.allocation_username().unwrap_or_default().into();
                    }
                }
                Output::ConnectPeer {
                    peer,
                    connection_id,
                } => {
                    if let Some(HeldRelay {
                        relay: StreamRelay::Tcp { relay, .. },
                        ..
                    }) = &mut self.relay
                    {
                        // The peer connection counts against max-connections from now on.
                        match self.shared.limits.slot() {
                            Ok(slot) => relay.connect(peer, connection_id, slot),
                            Err(reason) => {
                                self.shared.limits.refused(Refused::Peer, peer, reason);
                                conn.connect_result(now, connection_id, false);
                            }
                        }
                    }
                }
                Output::ClosePeerConnection { connection_id } => {
                    if let Some(HeldRelay {
                        relay: StreamRelay::Tcp { relay, .. },
                        ..
                    }) = &mut self.relay
                    {
                        relay.cut(connection_id);
                    }
                }
                Output::ReleaseRelay => self.relay = None,
                Output::HandOff(handoff) => return Some(Exit::HandOff(handoff)),
                Output::Close(reason) => return Some(Exit::Ended(Ending::Closed(reason))),
            }
        }
        None
    }

    /// Writes queued bytes as the socket takes them; whether any went.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        conn: &mut Conn,
    ) -> io::Result<bool> {
        let mut wrote = false;
        while !conn.client_bytes().is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, conn.client_bytes()) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    conn.client_bytes_written(n);
                    self.unflushed = true;
                    wrote = true;
                }
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(wrote),
            }
        }
        if self.unflushed {
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    /// Opens the relay socket an Allocate asked for, registered with tokio.
    fn bind_relay(
        &mut self,
        now: Instant,
        request: &RelayRequest,
    ) -> Result<BoundRelay, RelayError> {
        let relays = &self.shared.relays;
        // A stream client's relay socket stays out of the descriptor reserve too (508).
        let limits = &self.shared.limits;
        let reserved = |_| RelayError::NoPorts;
        let (bound, relay) = match request.transport {
            RelayTransport::Udp => {
                let (bound, socket) =
                    relays.open_udp(now, request, request.family, request.port)?;
                limits.fd_allowed(&*socket).map_err(reserved)?;
                let socket = socket.register(UdpSocket::from_std)?;
                let buf = vec![0u8; DATAGRAM_BUFFER].into_boxed_slice();
                (bound, StreamRelay::Udp { socket, buf })
            }
            RelayTransport::Tcp => {
                let (bound, listener) = relays.open_tcp(request)?;
                limits.fd_allowed(&*listener).map_err(reserved)?;
                let relay = listener.register(|listener| {
                    let listener = TcpListener::from_std(listener)?;
                    Ok(TcpRelay::new(listener, bound.local))
                })?;
                let username = Box::default();
                (bound, StreamRelay::Tcp { relay, username })
            }
        };
        self.relay = Some(HeldRelay::new(relay, &self.shared));
        Ok(bound)
    }

    /// Takes a datagram or an RFC 6062 event from the relay; whether there was one.
    fn poll_relay(&mut self, cx: &mut Context<'_>, now: Instant, conn: &mut Conn) -> bool {
        let Some(held) = &mut self.relay else {
            return false;
        };
        let event = match &mut held.relay {
            StreamRelay::Udp { socket, buf } => {
                let payload = &mut buf[DATA_INDICATION_MAX_PREFIX..DATAGRAM_BUFFER - 4];
                let mut read = ReadBuf::new(payload);
                match socket.poll_recv_from(cx, &mut read) {
                    Poll::Ready(Ok(peer)) => {
                        let len = read.filled().len();
                        conn.handle_peer_datagram(now, peer, buf, len);
                    }
                    Poll::Ready(Err(error)) => debug!(%error, "relay receive failed"),
                    Poll::Pending => return false,
                }
                return true;
            }
            StreamRelay::Tcp { relay, .. } => match relay.poll_event(cx) {
                Poll::Ready(event) => event,
                Poll::Pending => return false,
            },
        };
        self.tcp_relay_event(now, event, conn);
        true
    }

    /// Files a new peer connection for its ConnectionBind and tells the connection.
    fn tcp_relay_event(&mut self, now: Instant, event: RelayEvent, conn: &mut Conn) {
        let Some(HeldRelay {
            relay: StreamRelay::Tcp { relay, username },
            ..
        }) = &mut self.relay
        else {
            return;
        };
        let owner = relay.owner();
        let control_client = conn.tuple().client;
        let registry = &self.shared.tcp_connections;
        let opened = &self.shared.stats.tcp_peer_connections;
        let file = |id, peer: TcpStream, peer_addr, slot, cut| {
            let filed = registry.insert(Pending {
                id,
                username: username.clone(),
                control_client,
                peer: Some(peer),
                peer_addr,
                owner,
                cut,
                _slot: slot,
            });
            if filed {
                opened.fetch_add(1, Relaxed);
            }
            filed
        };
        let limits = &self.shared.limits;
        match event {
            RelayEvent::Accepted(Ok((peer, peer_addr))) => match limits.admit(&peer) {
                // Without a permission the peer connection is dropped here, closed.
                Ok(slot) => conn.handle_peer_connection(now, peer_addr, |id| {
                    let cut = relay.new_cut(id);
                    file(id, peer, peer_addr, slot, cut)
                }),
                Err(reason) => limits.refused(Refused::Peer, peer_addr, reason),
            },
            RelayEvent::Accepted(Err(error)) => debug!(%error, "TCP relay accept failed"),
            RelayEvent::Connected(id, result, slot) => {
                // Cut while connecting (a reload denies the peer): not filed, whatever the result.
                let cut = relay.cut_of(id);
                let filed = match result.and_then(|peer| Ok((peer.peer_addr()?, peer))) {
                    Ok((peer_addr, peer)) => match (limits.fd_allowed(&peer), cut) {
                        (Ok(()), Some(cut)) => file(id, peer, peer_addr, slot, cut),
                        (Ok(()), None) => false,
                        (Err(reason), _) => {
                            limits.refused(Refused::Peer, peer_addr, reason);
                            false
                        }
                    },
                    Err(error) => {
                        debug!(%error, connection_id = id, "connect to peer failed");
                        false
                    }
                };
                if !filed {
                    relay.forget(id);
                }
                conn.connect_result(now, id, filed);
            }
            RelayEvent::Closed(id) => conn.peer_connection_closed(id),
        }
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>, now: Instant, conn: &mut Conn) -> bool {
        let Some(commands) = &mut self.commands else {
            return false;
        };
        match commands.poll_recv(cx) {
            Poll::Ready(Some(StreamCommand::List(reply))) => {
                let _ = reply.send(conn.allocations(now));
            }
            Poll::Ready(Some(StreamCommand::Delete(alloc, reply))) => {
                let _ = reply.send(conn.delete_allocation(now, alloc));
            }
            Poll::Ready(None) => self.commands = None,
            Poll::Pending => return false,
        }
        true
    }

    /// Runs the connection's timers once its deadline passes; whether it did.
    fn poll_timer(&mut self, cx: &mut Context<'_>, conn: &mut Conn) -> bool {
        let Some(deadline) = conn.poll_timeout() else {
            return false;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        // Never earlier than the deadline, so what was due is handled and the next one later.
        conn.handle_timeout(Instant::now().max(deadline.into_std()));
        true
    }

    /// Serves the admin API from now on, and counts in `tern_connections{transport}`.
    fn register(&mut self, transport: Transport) {
        let (registration, commands) = self
            .shared
            .registry
            .register(transport, self.shared.stats.clone());
        self.registration = Some(registration);
        self.commands = Some(commands);
    }
}

/// Reads client bytes into the connection's buffer, if it takes any now.
fn poll_read<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    stream: &mut S,
    conn: &mut Conn,
) -> Poll<io::Result<usize>> {
    let Some(buf) = conn.read_buffer() else {
        return Poll::Pending;
    };
    let mut read = ReadBuf::new(buf);
    ready!(Pin::new(stream).poll_read(cx, &mut read))?;
    Poll::Ready(Ok(read.filled().len()))
}

/// The allocation's relay socket in the task, counted in `StreamStats::allocations`.
struct HeldRelay {
    relay: StreamRelay,
    shared: Arc<Shared>,
}

enum StreamRelay {
    /// A UDP relay and its receive buffer (framed toward the client in place).
    Udp {
        socket: Leased<UdpSocket>,
        buf: Box<[u8]>,
    },
    /// A TCP relay (RFC 6062), and the allocation's username its peer connections carry.
    Tcp {
        relay: Leased<TcpRelay>,
        username: Box<str>,
    },
}

impl HeldRelay {
    fn new(relay: StreamRelay, shared: &Arc<Shared>) -> Self {
        shared.stats.allocations.fetch_add(1, Relaxed);
        HeldRelay {
            relay,
            shared: shared.clone(),
        }
    }
}

impl Drop for HeldRelay {
    fn drop(&mut self) {
        self.shared.stats.allocations.fetch_sub(1, Relaxed);
    }
}

/// Configuration reloads as a pollable source.
struct ConfigWatch {
    changed: Option<Pin<Box<dyn Future<Output = Option<ConfigReceiver>> + Send>>>,
}

type ConfigReceiver = watch::Receiver<Arc<CoreConfig>>;

impl ConfigWatch {
    fn new(receiver: ConfigReceiver) -> Self {
        ConfigWatch {
            changed: Some(Self::wait(receiver)),
        }
    }

    fn wait(
        mut receiver: ConfigReceiver,
    ) -> Pin<Box<dyn Future<Output = Option<ConfigReceiver>> + Send>> {
        Box::pin(async move {
            receiver.changed().await.ok()?;
            Some(receiver)
        })
    }

    /// The new configuration, once there is one; pending forever once the sender is gone.
    fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Arc<CoreConfig>> {
        let Some(changed) = &mut self.changed else {
            return Poll::Pending;
        };
        match ready!(changed.as_mut().poll(cx)) {
            Some(mut receiver) => {
                let config = receiver.borrow_and_update().clone();
                self.changed = Some(Self::wait(receiver));
                Poll::Ready(config)
            }
            None => {
                self.changed = None;
                Poll::Pending
            }
        }
    }
}

/// A stream that first yields bytes already read from it (while sniffing), for the TLS acceptor.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::policy::PeerPolicy;

    fn config(realm: &str) -> Arc<CoreConfig> {
        let auth = Authenticator::new(realm, &[], &[], 0);
        Arc::new(CoreConfig::new(auth, PeerPolicy::new(&[], &[], false)))
    }

    #[tokio::test]
    async fn a_reload_reaches_the_connection_and_a_closed_sender_goes_quiet() {
        let (sender, receiver) = watch::channel(config("first"));
        let mut watch = ConfigWatch::new(receiver);
        let pending = std::future::poll_fn(|cx| Poll::Ready(watch.poll_changed(cx).is_pending()));
        assert!(pending.await, "nothing new yet");
        sender.send_replace(config("second"));
        let next = std::future::poll_fn(|cx| watch.poll_changed(cx)).await;
        assert_eq!(next.auth.realm(), "second");
        sender.send_replace(config("third"));
        let next = std::future::poll_fn(|cx| watch.poll_changed(cx)).await;
        assert_eq!(next.auth.realm(), "third");
        drop(sender);
        let quiet = std::future::poll_fn(|cx| Poll::Ready(watch.poll_changed(cx).is_pending()));
        assert!(quiet.await);
    }
}
