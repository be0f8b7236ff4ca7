//! TURN over TCP and TLS (RFC 8489 §6.2.2, RFC 8656 §3.1): listeners on `listening-port` (plain,
//! and TLS told apart by its first byte) and `tls-listening-port` (TLS only), with optional
//! PROXY protocol headers from trusted load balancers.
//!
//! Each connection is one tokio task that owns its own `turn::Server`: a stream 5-tuple has at
//! most one allocation, so the per-connection state is small and needs no lock. Tasks share the
//! quotas, the nonce key, the relay port pool (locked only when an allocation starts or ends)
//! and the configuration snapshot (a `watch` channel, so a reload reaches every connection).
//!
//! A connection's task selects over the client stream, the allocation's relay socket and one
//! timer (allocation/permission/channel expiry, the first-message deadline, the partial-frame
//! deadline). Frames are cut from a buffer that never grows past one maximal frame; a
//! connection that does not send a valid STUN message within `stream-idle-timeout`, or takes
//! longer than `partial-frame-timeout` to complete a frame, is closed. Closing the connection
//! ends its allocation.

use super::addresses::{expand_listening_ips, RelayPlan};
use super::proxy_protocol::{self, Parsed};
use super::relay_ports::RelayPorts;
use super::stats::StreamStats;
use super::stream_admin::{Folder, StreamCommand, StreamControl, StreamRegistry};
use super::tcp_relay::{self, Claimer, ConnectionRegistry, Pending, RelayEvent, TcpRelay};
use super::tls::{CertStore, ALPN_STUN_TURN};
use crate::auth::NonceMint;
use crate::config::Config;
use crate::policy::{IpRange, Quotas};
use crate::stun::{self, FrameKind, Message, DATA_INDICATION_MAX_PREFIX};
use crate::turn::{
    AllocId, BoundRelay, CoreConfig, Event, FiveTuple, Output, RelayError, RelayRequest,
    RelayTransport, Server, Transport,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// The largest frame on a stream: a STUN message of maximal length. (ChannelData with its
/// padding is at most 4 + 65536.) No connection buffers more than this.
pub const MAX_FRAME: usize = stun::HEADER_LEN + 65535;
/// A connection's read buffer starts here and grows, as bytes arrive, up to [`MAX_FRAME`].
const INITIAL_BUFFER: usize = 4096;
/// Responses are small; 4 KiB is plenty for any the server writes.
const REPLY_BUFFER: usize = 4096;
/// A peer datagram with room for the framing in front and the padding behind; allocated only
/// while the connection has an allocation.
const PEER_BUFFER: usize = DATA_INDICATION_MAX_PREFIX + 65536 + 4;
/// Listen backlog of TCP listeners.
const BACKLOG: i32 = 1024;
/// At most one info line about refused connections per this interval (each one is at debug).
const REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Limits and timeouts of the stream listeners (restart to change).
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub idle_timeout: Duration,
    pub partial_frame_timeout: Duration,
    /// 0 = unlimited.
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub proxy_trusted: Vec<IpRange>,
}

impl StreamSettings {
    pub fn from_config(config: &Config) -> Self {
        StreamSettings {
            idle_timeout: Duration::from_secs(config.stream_idle_timeout.into()),
            partial_frame_timeout: Duration::from_secs(config.partial_frame_timeout.into()),
            max_connections: config.max_connections as usize,
            max_connections_per_ip: config.max_connections_per_ip as usize,
            proxy_trusted: config.proxy_protocol_trusted.clone(),
        }
    }
}

/// What connection tasks need from the rest of the process.
pub struct StreamDeps {
    pub core: Arc<CoreConfig>,
    pub nonces: NonceMint,
    pub quotas: Arc<Quotas>,
    /// The relay port pool, shared with the UDP workers.
    pub ports: Arc<Mutex<RelayPorts>>,
    /// The process-wide drain switch (admin API), shared with the UDP workers.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `listening-port`: STUN, and TLS as well when a certificate is configured.
    Plain,
    /// `tls-listening-port`: TLS only.
    Tls,
}

/// The TCP/TLS listeners and their connections.
pub struct StreamService {
    /// Every listening address, with `Transport::Tcp` for `listening-port` (which also takes TLS
    /// when TLS is on) and `Transport::Tls` for `tls-listening-port`.
    pub listening: Vec<(SocketAddr, Transport)>,
    pub stats: Arc<StreamStats>,
    config: watch::Sender<Arc<CoreConfig>>,
    accept_tasks: Vec<JoinHandle<()>>,
    registry: Arc<StreamRegistry>,
}

/// Stream listeners bound but not yet serving (see [`StreamService::bind`]).
pub struct BoundStreams {
    listeners: Vec<(std::net::TcpListener, SocketAddr, Kind)>,
    listening_ips: Vec<IpAddr>,
    tls: Option<TlsAcceptor>,
}

impl BoundStreams {
    /// Serves the listeners on `runtime`: accepting starts now.
    pub fn serve(
        self,
        config: &Config,
        runtime: &tokio::runtime::Handle,
        deps: StreamDeps,
    ) -> io::Result<StreamService> {
        let (sender, receiver) = watch::channel(deps.core);
        let stats = Arc::new(StreamStats::default());
        let registry = Arc::new(StreamRegistry::default());
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            settings: StreamSettings::from_config(config),
            core: receiver,
            nonces: deps.nonces,
            quotas: deps.quotas,
            ports: deps.ports,
            draining: deps.draining,
            plan: RelayPlan {
                relay_ips: config.relay_ips.clone(),
                listening_ips: self.listening_ips,
            },
            tls: self.tls,
            stats: stats.clone(),
            per_ip: Mutex::new(HashMap::new()),
            refusals: RefusalLog::default(),
            tcp_connections: Arc::new(ConnectionRegistry::default()),
        });
        let _entered = runtime.enter();
        let mut listening = Vec::new();
        let mut accept_tasks = Vec::new();
        for (listener, addr, kind) in self.listeners {
            let listener = TcpListener::from_std(listener)?;
            let transport = match kind {
                Kind::Plain => Transport::Tcp,
                Kind::Tls => Transport::Tls,
            };
            listening.push((addr, transport));
            accept_tasks.push(runtime.spawn(accept_loop(listener, kind, shared.clone())));
        }
        Ok(StreamService {
            listening,
            stats,
            config: sender,
            accept_tasks,
            registry,
        })
    }
}

impl StreamService {
    /// Binds the TCP and TLS listeners `config` asks for (`Ok(None)` if none); `certs` turns TLS
    /// on. Bind before starting anything else, so nothing serves if a bind fails.
    pub fn bind(
        config: &Config,
        certs: Option<Arc<CertStore>>,
    ) -> io::Result<Option<BoundStreams>> {
        let tls = certs
            .filter(|_| !config.no_tls)
            .map(|certs| TlsAcceptor::from(certs.server_config(&[ALPN_STUN_TURN])));
        let plain_port = (!config.no_tcp).then_some(config.listening_port);
        // One port for both when they are the same number: the plain listener sniffs TLS.
        let tls_port = tls
            .as_ref()
            .map(|_| config.tls_listening_port)
            .filter(|port| Some(*port) != plain_port);
        if plain_port.is_none() && tls_port.is_none() {
            return Ok(None);
        }
        let listening_ips = expand_listening_ips(&config.listening_ips)?;
        let mut listeners = Vec::new();
        for ip in &listening_ips {
            for (port, kind) in [(plain_port, Kind::Plain), (tls_port, Kind::Tls)] {
                let Some(port) = port else { continue };
                let addr = SocketAddr::new(*ip, port);
                let listener = tcp_listener(addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on tcp {addr}: {e}"))
                })?;
                listeners.push((listener, addr, kind));
            }
        }
        Ok(Some(BoundStreams {
            listeners,
            listening_ips,
            tls,
        }))
    }

    /// The admin API's handle on the connections (list and delete their allocations).
    pub fn control(&self) -> StreamControl {
        StreamControl {
            registry: Some(self.registry.clone()),
        }
    }

    /// Hands every connection a new configuration snapshot; allocations stay.
    pub fn reload(&self, core: Arc<CoreConfig>) {
        self.config.send_replace(core);
    }

    /// Stops accepting. Open connections end with the runtime.
    pub fn shutdown(self) {
        for task in self.accept_tasks {
            task.abort();
        }
    }
}

/// A non-blocking TCP listener (SO_REUSEADDR so a restart binds at once; v6 listeners v6 only).
fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// State shared by all connection tasks.
struct Shared {
    settings: StreamSettings,
    core: watch::Receiver<Arc<CoreConfig>>,
    nonces: NonceMint,
    quotas: Arc<Quotas>,
    ports: Arc<Mutex<RelayPorts>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    plan: RelayPlan,
    tls: Option<TlsAcceptor>,
    stats: Arc<StreamStats>,
    /// Open connections per client address (only addresses under a per-IP limit).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refusals: RefusalLog,
    /// Serving connections, for the admin API.
    registry: Arc<StreamRegistry>,
    /// RFC 6062 peer connections waiting for their ConnectionBind, across connections.
    tcp_connections: Arc<ConnectionRegistry>,
}

impl Shared {
    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.settings.proxy_trusted.iter().any(|r| r.contains(ip))
    }

    /// Counts a connection against `max-connections`.
    fn admit(self: &Arc<Self>) -> Option<Permit> {
        let max = self.settings.max_connections as u64;
        let open = self.stats.connections.fetch_add(1, Relaxed);
        let permit = Permit {
            shared: self.clone(),
            ip: None,
        };
        // Over the limit: dropping the permit takes the count back.
        (max == 0 || open < max).then_some(permit)
    }

    /// Counts the connection against `max-connections-per-ip` for `ip`.
    fn admit_ip(&self, permit: &mut Permit, ip: IpAddr) -> bool {
        let max = self.settings.max_connections_per_ip;
        if max == 0 {
            return true;
        }
        let mut per_ip = lock(&self.per_ip);
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= max {
            if *open == 0 {
                per_ip.remove(&ip);
            }
            return false;
        }
        *open += 1;
        permit.ip = Some(ip);
        true
    }

    fn refused(&self, peer: SocketAddr, reason: &'static str) {
        self.stats.refused.fetch_add(1, Relaxed);
        debug!(%peer, reason, "connection refused");
        self.refusals.note(reason);
    }
}

/// A connection's place under the limits, given back on drop.
struct Permit {
    shared: Arc<Shared>,
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.stats.connections.fetch_sub(1, Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = lock(&self.shared.per_ip);
            if let Some(open) = per_ip.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Rate-limits the info line about refused connections, so a flood does not flood the log.
#[derive(Default)]
struct RefusalLog {
    since_report: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

impl RefusalLog {
    fn note(&self, reason: &'static str) {
        self.since_report.fetch_add(1, Relaxed);
        let Ok(mut last) = self.last_report.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= REFUSAL_REPORT_EVERY) {
            *last = Some(now);
            let refused = self.since_report.swap(0, Relaxed);
            info!(
                refused,
                reason, "connections refused by connection limits (reported at most every 10 s)"
            );
        }
    }
}

async fn accept_loop(listener: TcpListener, kind: Kind, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(mut permit) = shared.admit() else {
            shared.refused(peer, "max-connections");
            continue;
        };
        // A trusted proxy's own address is not limited; the client it speaks for is, once known.
        let trusted = shared.is_trusted_proxy(peer.ip());
        if !trusted && !shared.admit_ip(&mut permit, peer.ip()) {
            shared.refused(peer, "max-connections-per-ip");
            continue;
        }
        shared.stats.accepted.fetch_add(1, Relaxed);
        tokio::spawn(connection(tcp, peer, kind, trusted, permit, shared.clone()));
    }
}

/// Why a connection ended, for the debug log.
#[derive(Debug)]
enum Close {
    Eof,
    Io,
    BadFrame,
    IdleTimeout,
    PartialFrameTimeout,
    /// The admin API deleted the allocation.
    AdminDeleted,
    /// A ConnectionBind succeeded: the connection now carries a peer's bytes (RFC 6062).
    Bound(Box<Bound>),
    /// A spliced data connection ended.
    Spliced,
}

/// A data connection's claimed peer connection, and the bytes that followed its ConnectionBind.
#[derive(Debug)]
struct Bound {
    pending: Pending,
    leftover: Vec<u8>,
}

async fn connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    trusted: bool,
    mut permit: Permit,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(local) = tcp.local_addr() else { return };
    let first_deadline = Instant::now() + shared.settings.idle_timeout;
    let accepts = Accepts {
        proxy: trusted,
        tls: shared.tls.is_some(),
        plain: kind == Kind::Plain,
    };
    let prelude =
        match tokio::time::timeout_at(first_deadline.into(), read_prelude(&mut tcp, accepts)).await
        {
            Ok(Ok(prelude)) => prelude,
            Ok(Err(reason)) => {
                shared.stats.protocol_errors.fetch_add(1, Relaxed);
                debug!(%peer, reason, "connection closed");
                return;
            }
            Err(_) => {
                shared.stats.timeouts.fetch_add(1, Relaxed);
                debug!(%peer, "connection closed: nothing within stream-idle-timeout");
                return;
            }
        };
    let client = prelude.client.unwrap_or(peer);
    if trusted && !shared.admit_ip(&mut permit, client.ip()) {
        shared.refused(client, "max-connections-per-ip");
        return;
    }
    if client != peer {
        debug!(%client, proxy = %peer, "PROXY header accepted");
    }
    let ending = match (&shared.tls, prelude.tls) {
        (Some(acceptor), true) => {
            let stream = Prefixed {
                prefix: prelude.leftover,
                at: 0,
                inner: tcp,
            };
            let handshake = acceptor.accept(stream);
            match tokio::time::timeout_at(first_deadline.into(), handshake).await {
                Ok(Ok(tls)) => {
                    let tuple = FiveTuple {
                        client,
                        server: local,
                        transport: Transport::Tls,
                    };
                    serve(tls, tuple, FrameBuffer::new(&[]), first_deadline, &shared).await
                }
                Ok(Err(error)) => {
                    shared.stats.tls_handshake_failures.fetch_add(1, Relaxed);
                    debug!(%client, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => Close::IdleTimeout,
            }
        }
        _ => {
            let tuple = FiveTuple {
                client,
                server: local,
                transport: Transport::Tcp,
            };
            let input = FrameBuffer::new(&prelude.leftover);
            drop(prelude.leftover);
            serve(tcp, tuple, input, first_deadline, &shared).await
        }
    };
    match ending {
        Close::IdleTimeout | Close::PartialFrameTimeout => {
            shared.stats.timeouts.fetch_add(1, Relaxed);
        }
        Close::BadFrame => {
            shared.stats.protocol_errors.fetch_add(1, Relaxed);
        }
        Close::Eof | Close::Io | Close::AdminDeleted | Close::Bound(_) | Close::Spliced => {}
    }
    debug!(%client, reason = ?ending, "connection closed");
    drop(permit);
}

/// What may open a connection on this listener from this source.
#[derive(Clone, Copy)]
struct Accepts {
    proxy: bool,
    tls: bool,
    plain: bool,
}

/// The first bytes, sorted out: the PROXY header's client, TLS or not, and what was read past
/// the header.
struct Prelude {
    client: Option<SocketAddr>,
    tls: bool,
    leftover: Vec<u8>,
}

/// Reads until it knows what the connection speaks: an optional PROXY header (only from a
/// trusted source), then a TLS ClientHello (0x16) or STUN/ChannelData (0x00–0x03, 0x40–0x7F).
async fn read_prelude(tcp: &mut TcpStream, accepts: Accepts) -> Result<Prelude, &'static str> {
    let mut buf = vec![0u8; proxy_protocol::V2_MAX_LEN];
    let mut filled = 0;
    let mut start = 0;
    let mut client = None;
    let mut proxy_seen = false;
    loop {
        if let Some(&first) = buf[..filled].get(start) {
            if !proxy_seen && proxy_protocol::may_start_header(first) {
                if !accepts.proxy {
                    return Err("PROXY header from a source not in proxy-protocol-trusted");
                }
                match proxy_protocol::parse(&buf[start..filled]) {
                    Ok(Parsed::Incomplete) => {}
                    Ok(Parsed::Complete { header, len }) => {
                        client = header.source;
                        start += len;
                        proxy_seen = true;
                        continue;
                    }
                    Err(_) => return Err("malformed PROXY header"),
                }
            } else {
                let tls = match first {
                    0x16 if accepts.tls => true,
                    0x00..=0x03 | 0x40..=0x7F if accepts.plain => false,
                    _ => return Err("first bytes are not STUN or a TLS handshake"),
                };
                return Ok(Prelude {
                    client,
                    tls,
                    leftover: buf[start..filled].to_vec(),
                });
            }
        }
        if filled == buf.len() {
            return Err("PROXY header too long");
        }
        match tcp.read(&mut buf[filled..]).await {
            Ok(0) => return Err("closed before sending anything"),
            Ok(n) => filled += n,
            Err(_) => return Err("read failed"),
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

/// Bytes read from the client and not yet handled: `buf[start..end]`. Grows as bytes arrive,
/// never past [`MAX_FRAME`] (a larger frame cannot exist: lengths are 16 bits).
struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuffer {
    fn new(initial: &[u8]) -> Self {
        let mut buf = vec![0u8; INITIAL_BUFFER.max(initial.len())];
        buf[..initial.len()].copy_from_slice(initial);
        FrameBuffer {
            buf,
            start: 0,
            end: initial.len(),
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn consume(&mut self, len: usize) {
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into: moves a partial frame to the front when the end is reached, and
    /// doubles the buffer (up to [`MAX_FRAME`]) only when a frame fills all of it.
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_FRAME {
                let grown = (self.buf.len() * 2).min(MAX_FRAME);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }
}

/// The allocation's relay socket and its receive buffer.
struct Relay {
    socket: UdpSocket,
    port: u16,
    alloc: AllocId,
    buf: Box<[u8]>,
    shared: Arc<Shared>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        lock(&self.shared.ports).release(self.port);
        self.shared.stats.allocations.fetch_sub(1, Relaxed);
    }
}

/// A connection's TURN state; ends its allocation when dropped, however the task ends.
struct Session {
    server: Server,
    tuple: FiveTuple,
    relay: Option<Relay>,
    /// The relay of a TCP allocation (RFC 6062), instead of `relay`.
    tcp_relay: Option<TcpRelaySlot>,
    clock_synced: Instant,
    /// Adds this connection's counter changes into `StreamStats::turn`.
    folder: Folder,
}

/// A TCP relay and the pool port it holds.
struct TcpRelaySlot {
    relay: TcpRelay,
    port: u16,
    shared: Arc<Shared>,
}

impl Drop for TcpRelaySlot {
    fn drop(&mut self) {
        lock(&self.shared.ports).release(self.port);
        self.shared.stats.allocations.fetch_sub(1, Relaxed);
    }
}

impl Session {
    /// Keeps REST expiry and nonces on wall-clock time over a long-lived connection.
    fn sync_clock(&mut self, now: Instant) {
        if now.duration_since(self.clock_synced) >= Duration::from_secs(1) {
            self.clock_synced = now;
            self.server.sync_wall_clock(now, unix_now());
        }
    }

    fn bind_relay<'r>(
        &mut self,
        shared: &Arc<Shared>,
        now: Instant,
        request: RelayRequest,
        reply: &'r mut [u8],
    ) -> Output<'r> {
        let bound = match request.transport {
            RelayTransport::Udp => open_relay(shared, now, request).map(|(bound, relay)| {
                self.relay = Some(relay);
                bound
            }),
            RelayTransport::Tcp => open_tcp_relay(shared, request).map(|(bound, relay)| {
                self.tcp_relay = Some(relay);
                bound
            }),
        };
        // A connection holds one relay socket: a dual-stack request gets its primary family and an
        // ADDRESS-ERROR-CODE for the additional one.
        let additional = request
            .additional
            .map(|_| Err(RelayError::FamilyUnsupported));
        self.server
            .relay_bound(now, request.alloc, bound, additional, reply)
    }

    /// Drops the relay socket of an allocation the server has ended; starts Connects.
    fn apply_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::Released { alloc, .. } => {
                    if self.relay.as_ref().is_some_and(|r| r.alloc == alloc) {
                        self.relay = None;
                    }
                    if self
                        .tcp_relay
                        .as_ref()
                        .is_some_and(|r| r.relay.alloc == alloc)
                    {
                        self.tcp_relay = None;
                    }
                }
                Event::ConnectPeer {
                    alloc,
                    peer,
                    connection_id,
                } => match self.tcp_relay.as_mut() {
                    Some(slot) if slot.relay.alloc == alloc => {
                        slot.relay.connect(peer, connection_id);
                    }
                    _ => {}
                },
            }
        }
    }

    /// Something happened on the TCP relay; returns what to send the client, if anything.
    fn tcp_relay_event<'r>(
        &mut self,
        shared: &Arc<Shared>,
        event: RelayEvent,
        reply: &'r mut [u8],
    ) -> Option<&'r [u8]> {
        let slot = self.tcp_relay.as_ref()?;
        let alloc = slot.relay.alloc;
        let owner = slot.relay.owner();
        let username: Box<str> = self.server.allocation_username(alloc)?.into();
        let control_client = self.tuple.client;
        let pending = |id, peer: TcpStream, peer_addr| Pending {
            id,
            username: username.clone(),
            control_client,
            peer: Some(peer),
            peer_addr,
            owner: owner.clone(),
        };
        match event {
            RelayEvent::Accepted(Ok((peer, peer_addr))) => {
                // Without a permission the peer connection is closed here (dropped).
                let (id, data) = self.server.connection_attempt(alloc, peer_addr, reply)?;
                if shared.tcp_connections.insert(pending(id, peer, peer_addr)) {
                    shared.stats.tcp_peer_connections.fetch_add(1, Relaxed);
                    Some(data)
                } else {
                    None // an id collision across allocations: the peer is closed
                }
            }
            RelayEvent::Accepted(Err(error)) => {
                debug!(%error, "TCP relay accept failed");
                None
            }
            RelayEvent::Connected(id, result) => {
                let connected = match result {
                    Ok(peer) => match peer.peer_addr() {
                        Ok(peer_addr) => {
                            let filed = shared.tcp_connections.insert(pending(id, peer, peer_addr));
                            if filed {
                                shared.stats.tcp_peer_connections.fetch_add(1, Relaxed);
                            }
                            filed
                        }
                        Err(_) => false,
                    },
                    Err(error) => {
                        debug!(%error, connection_id = id, "connect to peer failed");
                        false
                    }
                };
                match self.server.connect_result(alloc, id, connected, reply) {
                    Output::ToClient { data, .. } => Some(data),
                    _ => None,
                }
            }
            RelayEvent::Closed(id) => {
                self.server.connection_closed(alloc, id);
                None
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.close_tuple(&self.tuple);
        self.apply_events();
        self.relay = None;
        self.folder.fold(&self.server);
        self.tcp_relay = None;
    }
}

/// Binds the listening socket of a TCP allocation's relayed address.
fn open_tcp_relay(
    shared: &Arc<Shared>,
    request: RelayRequest,
) -> Result<(BoundRelay, TcpRelaySlot), RelayError> {
    let ip = shared
        .plan
        .ip_for(request.family, request.tuple.server.ip())
        .ok_or(RelayError::FamilyUnsupported)?;
    let opened = lock(&shared.ports).open_tcp(ip)?;
    let listener = match TcpListener::from_std(opened.listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "cannot register TCP relay socket");
            lock(&shared.ports).release(opened.port);
            return Err(RelayError::NoPorts);
        }
    };
    shared.stats.allocations.fetch_add(1, Relaxed);
    let slot = TcpRelaySlot {
        relay: TcpRelay::new(request.alloc, listener, opened.local),
        port: opened.port,
        shared: shared.clone(),
    };
    Ok((BoundRelay::from(opened.local), slot))
}

fn open_relay(
    shared: &Arc<Shared>,
    now: Instant,
    request: RelayRequest,
) -> Result<(BoundRelay, Relay), RelayError> {
    let ip = shared
        .plan
        .ip_for(request.family, request.tuple.server.ip())
        .ok_or(RelayError::FamilyUnsupported)?;
    let opened = lock(&shared.ports).open(ip, request.port, now)?;
    let socket = match UdpSocket::from_std(opened.socket) {
        Ok(socket) => socket,
        Err(error) => {
            warn!(%error, "cannot register relay socket");
            lock(&shared.ports).release(opened.port);
            return Err(RelayError::NoPorts);
        }
    };
    shared.stats.allocations.fetch_add(1, Relaxed);
    let relay = Relay {
        socket,
        port: opened.port,
        alloc: request.alloc,
        buf: vec![0u8; PEER_BUFFER].into_boxed_slice(),
        shared: shared.clone(),
    };
    let bound = BoundRelay {
        local: opened.local,
        reservation: opened.reservation,
    };
    Ok((bound, relay))
}

/// Serves one connection after the prelude: frames in, replies and relayed data out.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    tuple: FiveTuple,
    mut input: FrameBuffer,
    first_deadline: Instant,
    shared: &Arc<Shared>,
) -> Close {
    let mut core = shared.core.clone();
    let now = Instant::now();
    let config = core.borrow_and_update().clone();
    let mut server = Server::new(
        config,
        shared.nonces.clone(),
        shared.quotas.clone(),
        now,
        unix_now(),
    );
    server.set_drain_flag(shared.draining.clone());
    let (_registration, mut commands) = shared
        .registry
        .register(tuple.transport, shared.stats.clone());
    let mut session = Session {
        server,
        tuple,
        relay: None,
        tcp_relay: None,
        clock_synced: now,
        folder: Folder::new(shared.stats.turn.clone()),
    };
    let mut reply = vec![0u8; REPLY_BUFFER].into_boxed_slice();
    let mut seen_valid = false;
    let mut partial_since: Option<Instant> = None;
    let mut config_open = true;
    let partial_timeout = shared.settings.partial_frame_timeout;

    // Frames that arrived with the first bytes.
    let mut progressed = match handle_frames(
        &mut stream,
        &mut input,
        &mut session,
        shared,
        &mut reply,
        &mut seen_valid,
        now,
    )
    .await
    {
        Ok(progressed) => progressed,
        Err(Close::Bound(bound)) => {
            drop((session, reply, input));
            return splice(stream, *bound, shared).await;
        }
        Err(close) => return close,
    };
    session.folder.fold(&session.server);
    let sleep = tokio::time::sleep_until(first_deadline.into());
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        if input.is_empty() {
            partial_since = None;
        } else if progressed || partial_since.is_none() {
            partial_since = Some(now);
        }
        progressed = false;
        let mut deadline = session
            .server
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(3600));
        if !seen_valid {
            deadline = deadline.min(first_deadline);
        }
        if let Some(since) = partial_since {
            deadline = deadline.min(since + partial_timeout);
        }
        if let Some(due) = session.folder.due() {
            deadline = deadline.min(due);
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            read = stream.read(input.spare()) => {
                let n = match read {
                    Ok(0) => return Close::Eof,
                    Ok(n) => n,
                    Err(_) => return Close::Io,
                };
                input.end += n;
                let now = Instant::now();
                session.sync_clock(now);
                match handle_frames(&mut stream, &mut input, &mut session, shared, &mut reply, &mut seen_valid, now).await {
                    Ok(any) => progressed = any,
                    Err(Close::Bound(bound)) => {
                        drop((session, reply, input));
                        return splice(stream, *bound, shared).await;
                    }
                    Err(close) => return close,
                }
                session.folder.fold_soon(&session.server, now);
            }
            event = tcp_relay_event(&mut session.tcp_relay) => {
                if let Some(data) = session.tcp_relay_event(shared, event, &mut reply) {
                    if stream.write_all(data).await.is_err() || stream.flush().await.is_err() {
                        return Close::Io;
                    }
                }
            }
            received = recv_peer(&mut session.relay) => {
                let Ok((len, peer)) = received else { continue };
                let Some(relay) = session.relay.as_mut() else { continue };
                let now = Instant::now();
                if let Output::ToClient { data, .. } = session.server.handle_peer(now, relay.alloc, peer, &mut relay.buf, len) {
                    if stream.write_all(data).await.is_err() || stream.flush().await.is_err() {
                        return Close::Io;
                    }
                }
                session.folder.fold_soon(&session.server, now);
            }
            () = &mut sleep => {
                let now = Instant::now();
                if !seen_valid && now >= first_deadline {
                    return Close::IdleTimeout;
                }
                if partial_since.is_some_and(|since| now >= since + partial_timeout) {
                    return Close::PartialFrameTimeout;
                }
                session.server.handle_timeout(now);
                session.apply_events();
                session.folder.fold(&session.server);
            }
            Some(command) = commands.recv() => match command {
                StreamCommand::List(reply) => {
                    let now = Instant::now();
                    let _ = reply.send(session.server.allocations_with_ids(now).collect());
                }
                StreamCommand::Delete(alloc, reply) => {
                    let deleted = session.server.delete_allocation(alloc);
                    let _ = reply.send(deleted);
                    if deleted {
                        // The session's drop releases the relay and folds the counters.
                        return Close::AdminDeleted;
                    }
                }
            },
            changed = core.changed(), if config_open => match changed {
                Ok(()) => session.server.set_config(core.borrow_and_update().clone()),
                Err(_) => config_open = false,
            },
        }
    }
}

/// A datagram from a peer into the relay's buffer, at the offset `handle_peer` wants; pending
/// forever while there is no allocation.
async fn recv_peer(relay: &mut Option<Relay>) -> io::Result<(usize, SocketAddr)> {
    match relay {
        Some(relay) => {
            let payload = &mut relay.buf[DATA_INDICATION_MAX_PREFIX..PEER_BUFFER - 4];
            relay.socket.recv_from(payload).await
        }
        None => std::future::pending().await,
    }
}

/// Handles every complete frame in `input`; true if there was at least one.
async fn handle_frames<S: AsyncWrite + Unpin>(
    stream: &mut S,
    input: &mut FrameBuffer,
    session: &mut Session,
    shared: &Arc<Shared>,
    reply: &mut [u8],
    seen_valid: &mut bool,
    now: Instant,
) -> Result<bool, Close> {
    let mut progressed = false;
    let mut wrote = false;
    loop {
        let pending = input.pending();
        if pending.is_empty() {
            break;
        }
        if stun::frame_kind(pending) == FrameKind::Other {
            return Err(Close::BadFrame);
        }
        let Some(len) = stun::frame_len(pending, true) else {
            break; // fewer than 4 bytes
        };
        let Some(frame) = pending.get(..len) else {
            break; // the rest has yet to arrive
        };
        if !*seen_valid {
            *seen_valid = stun::frame_kind(frame) == FrameKind::Stun
                && Message::parse(frame).is_ok_and(|m| m.fingerprint_ok() != Some(false));
        }
        let tuple = session.tuple;
        if is_connection_bind(frame) {
            let mut claimer = Claimer::new(&shared.tcp_connections);
            let output = session
                .server
                .connection_bind(now, tuple, frame, &mut claimer, reply);
            if let Output::ToClient { data, .. } = output {
                stream.write_all(data).await.map_err(|_| Close::Io)?;
                wrote = true;
            }
            input.consume(len);
            progressed = true;
            if let Some(pending) = claimer.claimed {
                stream.flush().await.map_err(|_| Close::Io)?;
                let leftover = input.pending().to_vec();
                return Err(Close::Bound(Box::new(Bound { pending, leftover })));
            }
            continue;
        }
        match session.server.handle_client(now, tuple, frame, reply) {
            Output::ToClient { data, .. } => {
                stream.write_all(data).await.map_err(|_| Close::Io)?;
                wrote = true;
            }
            Output::ToPeer { peer, data, .. } => {
                if let Some(relay) = &session.relay {
                    // A full socket buffer drops the datagram, as UDP would.
                    let _ = relay.socket.try_send_to(data, peer);
                }
            }
            Output::BindRelay(request) => {
                if let Output::ToClient { data, .. } =
                    session.bind_relay(shared, now, request, reply)
                {
                    stream.write_all(data).await.map_err(|_| Close::Io)?;
                    wrote = true;
                }
            }
            Output::Nothing => {}
        }
        session.apply_events();
        input.consume(len);
        progressed = true;
    }
    if wrote {
        stream.flush().await.map_err(|_| Close::Io)?;
    }
    Ok(progressed)
}

/// Carries a bound data connection's bytes to and from its peer until either closes.
async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    bound: Bound,
    shared: &Arc<Shared>,
) -> Close {
    shared.stats.tcp_spliced.fetch_add(1, Relaxed);
    tcp_relay::splice(stream, bound.leftover, bound.pending).await;
    shared.stats.tcp_spliced.fetch_sub(1, Relaxed);
    Close::Spliced
}

/// The next event of the TCP relay; pending forever without one.
async fn tcp_relay_event(slot: &mut Option<TcpRelaySlot>) -> RelayEvent {
    match slot {
        Some(slot) => slot.relay.next_event().await,
        None => std::future::pending().await,
    }
}

/// A ConnectionBind request (RFC 6062), told by its message type alone.
fn is_connection_bind(frame: &[u8]) -> bool {
    frame.starts_with(&[0x00, 0x0B])
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoned only if another task panicked mid-update of plain counters or a free list.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_buffer_compacts_and_grows_only_to_one_frame() {
        let mut input = FrameBuffer::new(&[1, 2, 3]);
        assert_eq!(input.pending(), &[1, 2, 3]);
        input.consume(2);
        assert_eq!(input.pending(), &[3]);
        // Fill to the end: the partial byte moves to the front.
        let room = input.spare().len();
        input.end += room;
        assert_eq!(input.spare().len(), 2);
        assert_eq!(input.start, 0);
        // A frame filling the whole buffer makes it grow, but never past MAX_FRAME.
        loop {
            let room = input.spare().len();
            if room == 0 {
                break;
            }
            input.end += room;
        }
        assert_eq!(input.buf.len(), MAX_FRAME);
        input.consume(input.end);
        assert!(input.is_empty());
        assert_eq!((input.start, input.end), (0, 0));
    }
}
