//! TURN over TCP and TLS (RFC 8489 §6.2.2, RFC 8656 §3.1): listeners on `listening-port` (plain,
//! and TLS told apart by its first byte) and `tls-listening-port` (TLS only), with optional
//! PROXY protocol headers from trusted load balancers.
//!
//! Each connection is a state machine ([`connection::Connection`]: bytes and `now` in, outputs
//! and one deadline out) that owns its own `turn::Server`, driven by one thin tokio task
//! ([`task`]) that moves bytes between its sockets and it. A stream 5-tuple has at most one
//! allocation, so the per-connection state is small and needs no lock. Connections share the
//! quotas, the nonce key, the relay sockets' port pool (locked only when an allocation starts or
//! ends) and the configuration snapshot (a `watch` channel, so a reload reaches every
//! connection). Closing the connection ends its allocation.

mod buffers;
pub(super) mod connection;
mod task;

pub use buffers::MAX_FRAME;
pub(super) use connection::PeerConnections;
pub use connection::{CLIENT_QUEUE_LIMIT, WRITE_STALL_TIMEOUT};

use super::addresses::{expand_listening_ips, RelayPlan};
use super::common::lock;
use super::relay::RelaySockets;
use super::relay_ports::RelayPorts;
use super::stats::StreamStats;
use super::stream_admin::{StreamControl, StreamRegistry};
use super::tcp_relay::ConnectionRegistry;
use super::tls::{CertStore, ALPN_STUN_TURN};
use crate::auth::NonceMint;
use crate::config::Config;
use crate::policy::{IpRange, Quotas};
use crate::turn::{CoreConfig, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

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
    pub draining: Arc<AtomicBool>,
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
            draining: deps.draining,
            relays: RelaySockets::new(
                deps.ports,
                Arc::new(RelayPlan {
                    relay_ips: config.relay_ips.clone(),
                    listening_ips: self.listening_ips,
                }),
            ),
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
    draining: Arc<AtomicBool>,
    /// Relay sockets, from the port pool the UDP workers share.
    relays: RelaySockets,
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
        tokio::spawn(task::run(tcp, peer, kind, trusted, permit, shared.clone()));
    }
}
