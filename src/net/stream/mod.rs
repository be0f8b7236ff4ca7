//! TURN over TCP and TLS (RFC 8489 §6.2.2, RFC 8656 §3.1): listeners on `listening-port` (plain,
//! and TLS told apart by its first byte) and `tls-listening-port` (TLS only), with optional
//! PROXY protocol headers from trusted load balancers.
//!
//! Each connection is a state machine ([`connection::Connection`]: bytes and `now` in, outputs
//! and one deadline out) that owns its own `turn::Server`, driven by one thin tokio task
//! ([`task`]) that moves bytes between its sockets and it. A stream 5-tuple has at most one
//! allocation, so the per-connection state is small and needs no lock. Connections share the
//! quotas, the nonce key, the relay sockets' port pool (locked only when an allocation starts or
//! ends), the configuration snapshot (a `watch` channel, so a reload reaches every connection)
//! and their part of `bps-capacity`: one even share among the UDP relay threads' (N + 1 shares
//! for N threads), as one pool every connection draws batches from (a few milliseconds of the
//! rate, one atomic operation each: never per packet; see `policy::bandwidth`). Closing the
//! connection ends its allocation.

mod buffers;
pub(super) mod connection;
mod limits;
mod task;

pub use buffers::MAX_FRAME;
pub(super) use connection::PeerConnections;
pub use connection::FRAMES_PER_TURN;
pub use limits::{address_group, fd_ceiling, LimitSettings};
pub(super) use limits::{Limits, Refused, Slot};

use super::addresses::{expand_listening_ips, RelayPlan};
use super::relay::RelaySockets;
use super::relay_ports::RelayPorts;
use super::stats::{StreamRefusal, StreamStats};
use super::stream_admin::{StreamControl, StreamRegistry};
use super::tcp_relay::ConnectionRegistry;
use super::tls::{CertStore, ALPN_STUN_TURN};
use crate::auth::NonceMint;
use crate::config::Config;
use crate::policy::{CapacityPool, IpRange, Quotas};
use crate::turn::{CoreConfig, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

/// Listen backlog of TCP listeners.
const BACKLOG: i32 = 1024;

/// Worker threads of the stream runtime.
const RUNTIME_THREADS: usize = 2;
/// Task polls a stream runtime worker makes between two looks at the sockets and timers (tokio's
/// `event_interval`, 61 by default). A connection's poll does at most [`FRAMES_PER_TURN`] frames,
/// so while flooding connections keep every worker busy, a socket that turns ready waits for a
/// few of those polls, not for 61.
const EVENT_INTERVAL: u32 = 4;

/// The runtime the TCP/TLS connections run on (signals and the certificate watcher too).
pub fn stream_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .event_interval(EVENT_INTERVAL)
        .thread_name("tern-stream")
        .enable_all()
        .build()
}

/// Limits and timeouts of the stream listeners (restart to change).
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub idle_timeout: Duration,
    pub partial_frame_timeout: Duration,
    pub write_stall_timeout: Duration,
    pub queue_limit: usize,
    pub limits: LimitSettings,
    pub proxy_trusted: Vec<IpRange>,
}

impl StreamSettings {
    /// The settings `config` asks for; the descriptor reserve is taken off the open-file limit
    /// in force now.
    pub fn from_config(config: &Config) -> Self {
        let fd_limit = limits::open_file_limit().unwrap_or(0);
        StreamSettings {
            idle_timeout: Duration::from_secs(config.stream_idle_timeout.into()),
            partial_frame_timeout: Duration::from_secs(config.partial_frame_timeout.into()),
            write_stall_timeout: Duration::from_secs(config.stream_write_timeout.into()),
            queue_limit: config.stream_queue_size as usize,
            limits: LimitSettings {
                max_connections: config.max_connections as usize,
                max_connections_per_ip: config.max_connections_per_ip as usize,
                ipv6_prefix: config.connection_ipv6_prefix.min(128) as u8,
                fd_ceiling: fd_ceiling(fd_limit, config.fd_reserve_percent),
            },
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
    /// How many even shares `bps-capacity` is split into; the stream connections together take
    /// one (see `net::capacity_shares`).
    pub capacity_shares: u32,
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
        let settings = StreamSettings::from_config(config);
        if let Some(ceiling) = settings.limits.fd_ceiling {
            let open_file_limit = limits::open_file_limit().unwrap_or(0);
            info!(
                open_file_limit,
                ceiling, "TCP/TLS and peer connections keep below this file descriptor"
            );
        }
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            limits: Limits::new(settings.limits, stats.clone()),
            settings,
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
            tcp_connections: Arc::new(ConnectionRegistry::default()),
            capacity: Arc::new(CapacityPool::new(
                deps.capacity_shares,
                std::time::Instant::now(),
            )),
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
    /// `max-connections`, `max-connections-per-ip` and the descriptor reserve.
    limits: Arc<Limits>,
    /// Serving connections, for the admin API.
    registry: Arc<StreamRegistry>,
    /// RFC 6062 peer connections waiting for their ConnectionBind, across connections.
    tcp_connections: Arc<ConnectionRegistry>,
    /// The stream side's share of `bps-capacity`, for connections and splices alike.
    capacity: Arc<CapacityPool>,
}

impl Shared {
    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.settings.proxy_trusted.iter().any(|r| r.contains(ip))
    }

    fn refused(&self, peer: SocketAddr, reason: StreamRefusal) {
        self.limits.refused(Refused::Client, peer, reason);
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
        let mut slot = match shared.limits.admit(&tcp) {
            Ok(slot) => slot,
            Err(reason) => {
                shared.refused(peer, reason);
                continue;
            }
        };
        // A trusted proxy's own address is not limited; the client it speaks for is, once known.
        let trusted = shared.is_trusted_proxy(peer.ip());
        if !trusted {
            if let Err(reason) = shared.limits.admit_ip(&mut slot, peer.ip()) {
                shared.refused(peer, reason);
                continue;
            }
        }
        shared.stats.accepted.fetch_add(1, Relaxed);
        tokio::spawn(task::run(tcp, peer, kind, trusted, slot, shared.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_their_keys() {
        let config = crate::config::from_toml_str(
            "stream-write-timeout = 3\nstream-queue-size = 65536\nconnection-ipv6-prefix = 56\n\
             max-connections = 7\nmax-connections-per-ip = 2\nfd-reserve-percent = 10",
        )
        .unwrap();
        let settings = StreamSettings::from_config(&config);
        assert_eq!(settings.write_stall_timeout, Duration::from_secs(3));
        assert_eq!(settings.queue_limit, 65536);
        assert_eq!(settings.limits.ipv6_prefix, 56);
        assert_eq!(settings.limits.max_connections, 7);
        assert_eq!(settings.limits.max_connections_per_ip, 2);
        let soft = limits::open_file_limit().unwrap();
        assert_eq!(settings.limits.fd_ceiling, fd_ceiling(soft, 10));
        assert!(settings.limits.fd_ceiling.is_some());
        let none = crate::config::from_toml_str("fd-reserve-percent = 0").unwrap();
        let none = StreamSettings::from_config(&none);
        assert_eq!(none.limits.fd_ceiling, None);
    }
}
