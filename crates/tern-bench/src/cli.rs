//! Command line of `tern-bench`.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Longest a measured run may last, whatever the flags say.
pub const MAX_DURATION_SECS: f64 = 300.0;

#[derive(Debug, Parser)]
#[command(
    name = "tern-bench",
    version,
    about = "Load generator for TURN servers (loopback only) and a raw UDP forwarder baseline",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// N allocations, each with a channel (or Send indications) to a built-in UDP echo peer;
    /// saturated, or paced per millisecond tick (bursts).
    Relay(RelayArgs),
    /// N allocations, each an independent stream at its own jittered packet rate (as calls
    /// are): arrivals spread out, so a server's wake-ups find one or two datagrams each.
    Steady(SteadyArgs),
    /// A STUN Binding request flood.
    Binding(BindingArgs),
    /// Allocation churn: 401 challenge, authenticated Allocate, Refresh(0), again.
    Alloc(AllocArgs),
    /// N idle allocations, then the server's RSS per allocation.
    Hold(HoldArgs),
    /// A raw UDP forwarder (no protocol, recvmmsg/sendmmsg): the floor a relay is compared to.
    Forwarder(ForwarderArgs),
    /// Broken and hostile clients at once (malformed datagrams, floods, idle and stalled TCP).
    Abuse(AbuseArgs),
    /// Turns a file of JSON reports (one per line) into the markdown benchmark table.
    Table(TableArgs),
}

/// What every client mode shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server's UDP address (loopback only).
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub server: SocketAddr,
    /// TURN REST shared secret (coTURN `static-auth-secret`); usernames are `<expiry>:bench<i>`.
    #[arg(long, env = "TERN_BENCH_SECRET", default_value = "")]
    pub secret: String,
    /// The server's process id: its CPU seconds and RSS are read from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Seconds measured (after the warm-up); at most 300.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Free-form tags copied into the report: `--tag server=tern --tag run=1`.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Count the server's system calls and context switches over the window (kernel
    /// tracepoints, as `perf stat -e raw_syscalls:sys_enter`; needs root). Slows every system
    /// call on the machine a little while on.
    #[arg(long)]
    pub count_syscalls: bool,
}

impl Common {
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.duration.clamp(0.1, MAX_DURATION_SECS))
    }

    pub fn warmup(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.warmup.clamp(0.0, 30.0))
    }
}

/// The allocations a relay load runs over, and the echo peer behind them.
#[derive(Debug, Clone, Args)]
pub struct FlowArgs {
    /// Allocations (one client socket, one relay, one channel each).
    #[arg(long, default_value_t = 100)]
    pub allocations: usize,
    /// Payload bytes per packet (what reaches the peer; framing comes on top).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Use Send/Data indications instead of channels.
    #[arg(long)]
    pub send_indication: bool,
    /// Drive `tern-bench forwarder` (no STUN: a 4-byte header only).
    #[arg(long)]
    pub raw: bool,
    /// Echo peer threads (the peer sockets are split between them).
    #[arg(long, default_value_t = 1)]
    pub echo_threads: usize,
    /// Echo peer sockets, i.e. distinct peer addresses, assigned to the allocations in turn;
    /// default one per allocation in `steady` (every call has its own peer), one in `relay`.
    #[arg(long)]
    pub peers: Option<usize>,
    /// Address the echo peer binds; default the loopback address of the server's family.
    #[arg(long)]
    pub peer_ip: Option<std::net::IpAddr>,
    /// Network namespace (a name under /run/netns) the echo peer's sockets are made in.
    #[arg(long)]
    pub peer_netns: Option<String>,
    /// Network namespace the client sockets are made in (tern-bench itself stays where it is,
    /// so it can still read the server's /proc and the tracepoints).
    #[arg(long)]
    pub client_netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub flows: FlowArgs,
    /// Relayed packets per second, both directions together (clients send half of them: each
    /// echo round trip is relayed twice), sent in a burst every millisecond, round-robin over
    /// the allocations; 0 = saturated (a window of packets in flight).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Saturated mode: packets in flight per flow.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Client threads (flows are split between them).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Stop after this many packets sent (0: only the time bounds).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

#[derive(Debug, Args)]
pub struct SteadyArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub flows: FlowArgs,
    /// Relayed packets per second, both directions together (clients send half: each echo is
    /// relayed twice), shared equally by the allocations' streams.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Packets per second each allocation's client sends (50 is an audio call); overrides
    /// --rate, which becomes 2 × this × allocations.
    #[arg(long)]
    pub stream_rate: Option<f64>,
    /// Each gap between a stream's packets is its period × (1 ± jitter), uniformly (0–1).
    #[arg(long, default_value_t = 0.5)]
    pub jitter: f64,
    /// Seed of the phases and gaps (the same seed, the same schedule).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many packets sent (0: only the time bounds).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

#[derive(Debug, Args)]
pub struct BindingArgs {
    #[command(flatten)]
    pub common: Common,
    /// Client sockets.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Requests in flight per client socket.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Requests per second, all clients together; 0 = saturated.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Stop after this many requests (0: only the time bounds).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

#[derive(Debug, Args)]
pub struct AllocArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients allocating at once, each from its own socket.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Stop after this many allocations (0: only the time bounds).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    /// Allocations to create and hold.
    #[arg(long, default_value_t = 1000)]
    pub allocations: usize,
    /// Also bind a channel (and so a permission) on each, toward an echo peer.
    #[arg(long)]
    pub channel: bool,
}

#[derive(Debug, Args)]
pub struct AbuseArgs {
    #[command(flatten)]
    pub common: Common,
    /// Malformed and unauthenticated datagrams per second, all sources together.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// TCP connections held open without sending.
    #[arg(long, default_value_t = 16)]
    pub idle_connections: usize,
}

#[derive(Debug, Args)]
pub struct ForwarderArgs {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub listen: SocketAddr,
    /// Seconds before the forwarder exits by itself.
    #[arg(long, default_value_t = 900.0)]
    pub max_time: f64,
    /// Prototype of wake-up coalescing (not a baseline): after a wake-up that handled
    /// datagrams, sleep this many microseconds before polling again, so spread-out arrivals
    /// are handled in batches (interrupt moderation for a user-space relay). 0 = off.
    #[arg(long, default_value_t = 0)]
    pub coalesce_us: u64,
}

#[derive(Debug, Args)]
pub struct TableArgs {
    /// JSON lines written by the runs (each with `scenario` and `server` tags).
    pub input: PathBuf,
}
