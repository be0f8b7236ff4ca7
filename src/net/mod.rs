//! Sockets: listeners, relay sockets, the port pool, workers. The only module that does I/O.

mod addresses;
mod coalesce;
mod common;
mod control;
mod fast_path;
mod port_pool;
pub mod proxy_protocol;
mod relay;
mod relay_ports;
mod sockets;
mod stats;
mod steer;
mod stream;
mod stream_admin;
mod tcp_relay;
pub mod tls;
mod udp_worker;

pub use addresses::{expand_listening_ips, host_addresses, RelayPlan};
pub use control::{parse_allocation_id, AllocationEntry, WorkerControl};
pub use port_pool::PortPool;
pub use relay_ports::RelayPorts;
pub use stats::StreamRefusal;
pub use stats::{FastPathPass, FastPathStats, StreamStats, WorkerStats};
pub use stream::{
    address_group, fd_ceiling, stream_runtime, BoundStreams, LimitSettings, StreamDeps,
    StreamService, StreamSettings, FRAMES_PER_TURN, MAX_FRAME,
};
pub use stream_admin::{parse_stream_allocation_id, StreamAllocation, StreamControl};

/// The TCP/TLS connection state machine, for the fuzz targets in `fuzz/` (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod stream_connection {
    pub use super::stream::connection::*;
}

use crate::auth::NonceMint;
use crate::config::Config;
use crate::policy::Quotas;
use crate::turn::{CoreConfig, NatDiscovery, Server};
use mio::Waker;
use relay::RelaySockets;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use udp_worker::{Control, UdpWorker, WorkerSetup};

struct WorkerHandle {
    thread: JoinHandle<()>,
    control: Sender<Control>,
    waker: Arc<Waker>,
}

/// The UDP relay: one worker thread per core, each with its own SO_REUSEPORT listeners.
pub struct UdpService {
    workers: Vec<WorkerHandle>,
    pub stats: Vec<Arc<WorkerStats>>,
    pub ports: Arc<Mutex<RelayPorts>>,
    pub listening: Vec<SocketAddr>,
    /// The drain switch every worker's `Server` reads: set it (`store(true, Relaxed)`) and new
    /// Allocates get 300 Try Alternate (with `alternate-server`) or 486; live ones go on. Share
    /// it with other services' servers via `Server::set_drain_flag`.
    pub draining: Arc<AtomicBool>,
    /// The kernel fast path's metrics (zero while it is off).
    pub fast_path_stats: Arc<FastPathStats>,
    fast_path: Option<Arc<fast_path::SharedFastPath>>,
}

/// Workers to run: `relay-threads`, or one per core.
/// How many even shares `bps-capacity` is split into: one per UDP relay thread, and one for the
/// TCP/TLS connections together when they serve (`streams`).
pub fn capacity_shares(config: &Config, streams: bool) -> u32 {
    let udp = if config.no_udp {
        0
    } else {
        worker_count(config)
    };
    (udp + usize::from(streams)).max(1) as u32
}

pub fn worker_count(config: &Config) -> usize {
    match config.relay_threads {
        0 => std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1),
        n => n,
    }
}

/// Clients with allocations a server can hold, at most: the steering's pin table is this big
/// (allocated as pins are made).
const MAX_PINNED_CLIENTS: u32 = 1 << 20;

/// `udp-worker-budget`: attaches the steering program to every listening address's group of
/// worker listeners. Without it (no CAP_BPF, no program built, budget 0, one worker) the
/// kernel's reuseport hash spreads clients, as it always did: one log line says why.
fn attach_steering(config: &Config, mut workers: Vec<&mut UdpWorker>) {
    if config.udp_worker_budget == 0 || workers.len() < 2 {
        return;
    }
    let per_worker: Vec<Vec<_>> = workers.iter().map(|w| w.listener_fds()).collect();
    let groups: Vec<Vec<_>> = (0..per_worker[0].len())
        .map(|group| per_worker.iter().map(|fds| fds[group]).collect())
        .collect();
    match tern_steer::Steering::attach(&groups, config.udp_worker_budget, MAX_PINNED_CLIENTS) {
        Ok(steering) => {
            let steering = Arc::new(steering);
            for worker in workers.iter_mut() {
                worker.set_steering(steering.clone());
            }
            tracing::info!(
                budget = config.udp_worker_budget,
                "UDP worker steering on: new clients go to the first worker under the budget (datagrams/s)"
            );
        }
        Err(error) => tracing::info!(
            %error,
            "UDP worker steering off: the kernel's reuseport hash spreads clients over the workers"
        ),
    }
}

impl UdpService {
    /// Binds every listener of every worker, then starts the workers. Nothing serves if any
    /// bind fails. Each worker takes one of `capacity_shares` of `bps-capacity` (see
    /// [`capacity_shares`]).
    pub fn start(
        config: &Config,
        core: Arc<CoreConfig>,
        nonces: NonceMint,
        quotas: Arc<Quotas>,
        capacity_shares: u32,
    ) -> io::Result<UdpService> {
        let listening_ips = expand_listening_ips(&config.listening_ips)?;
        if listening_ips.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no address to listen on",
            ));
        }
        let mut listening: Vec<SocketAddr> = listening_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, config.listening_port))
            .collect();
        // RFC 5780 (rfc5780 = true): pairs of the addresses named in listening-ip, never what a
        // wildcard expands to, as every client reads OTHER-ADDRESS. They also listen on the
        // alternate port.
        let nat = if config.rfc5780 {
            let named: Vec<IpAddr> = config
                .listening_ips
                .iter()
                .copied()
                .filter(|ip| !ip.is_unspecified())
                .collect();
            NatDiscovery::new(&named, config.listening_port, config.alt_listening_port())
        } else {
            NatDiscovery::default()
        };
        let nat = Arc::new(nat);
        if !nat.is_empty() {
            tracing::info!(
                alt_port = config.alt_listening_port(),
                "RFC 5780 NAT behaviour discovery enabled"
            );
        }
        listening.extend(nat.alternate_listeners());
        let relay_ips = match config.relay_ips.is_empty() {
            true => listening_ips.clone(),
            false => config.relay_ips.clone(),
        };
        let fast_path_stats = Arc::new(FastPathStats::default());
        let fast_path =
            fast_path::start(config, &listening_ips, relay_ips, fast_path_stats.clone())?;
        let plan = Arc::new(RelayPlan {
            relay_ips: config.relay_ips.clone(),
            listening_ips,
        });
        let pool = PortPool::new(config.min_port, config.max_port);
        let ports = Arc::new(Mutex::new(RelayPorts::new(pool, config.sock_buf_size)));
        let relay_sockets = RelaySockets::new(ports.clone(), plan);
        let draining = Arc::new(AtomicBool::new(false));
        let mut bound = Vec::new();
        let workers = worker_count(config);
        for id in 0..workers {
            let (poll, waker) = udp_worker::new_poll()?;
            let (control, receiver) = mpsc::channel();
            let stats = Arc::new(WorkerStats::default());
            let now = Instant::now();
            let mut server = Server::new(
                core.clone(),
                nonces.clone(),
                quotas.clone(),
                now,
                common::unix_now(),
            );
            server.set_nat_discovery(nat.clone());
            server.set_drain_flag(draining.clone());
            // bps-capacity: each worker's buckets take an even share (no bucket across cores).
            server.set_capacity_share(capacity_shares);
            server.set_offload(fast_path.is_some());
            let worker = UdpWorker::bind(WorkerSetup {
                id,
                listen: listening.clone(),
                server,
                relay_sockets: relay_sockets.clone(),
                control: receiver,
                poll,
                stats: stats.clone(),
                gso: config.udp_gso,
                coalesce: std::time::Duration::from_micros(config.udp_coalesce_us.into()),
                fast_path: fast_path.clone(),
                external_ips: core.external_ips.clone(),
            })?;
            bound.push((worker, control, waker, stats));
        }
        attach_steering(
            config,
            bound.iter_mut().map(|(worker, ..)| worker).collect(),
        );
        let mut workers = Vec::new();
        let mut all_stats = Vec::new();
        for (id, (worker, control, waker, stats)) in bound.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("tern-udp-{id}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                thread,
                control,
                waker,
            });
            all_stats.push(stats);
        }
        Ok(UdpService {
            workers,
            stats: all_stats,
            ports,
            listening,
            draining,
            fast_path_stats,
            fast_path,
        })
    }

    /// A handle to ask the workers for their allocations, delete some, or wait for a reload.
    pub fn control(&self) -> WorkerControl {
        WorkerControl {
            workers: self
                .workers
                .iter()
                .map(|w| (w.control.clone(), w.waker.clone()))
                .collect(),
        }
    }

    /// Hands every worker a new configuration snapshot; traffic does not pause.
    pub fn reload(&self, core: Arc<CoreConfig>) {
        for worker in &self.workers {
            let _ = worker.control.send(Control::Reload(core.clone()));
            let _ = worker.waker.wake();
        }
    }

    /// Stops the workers and waits for them. The kernel fast path goes first, so nothing is
    /// relayed for allocations whose sockets are closing.
    pub fn shutdown(self) {
        if let Some(fast_path) = &self.fast_path {
            fast_path.detach();
        }
        for worker in &self.workers {
            let _ = worker.control.send(Control::Shutdown);
            let _ = worker.waker.wake();
        }
        for worker in self.workers {
            let _ = worker.thread.join();
        }
    }
}
