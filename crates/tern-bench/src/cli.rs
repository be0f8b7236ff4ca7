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
    /// N allocations, each with a channel (or Send indications) to a built-in UDP echo peer.
    Relay(RelayArgs),
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
}

impl Common {
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.duration.clamp(0.1, MAX_DURATION_SECS))
    }

    pub fn warmup(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.warmup.clamp(0.0, 30.0))
    }
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub common: Common,
    /// Allocations (one client socket, one relay, one channel each).
    #[arg(long, default_value_t = 100)]
    pub allocations: usize,
    /// Payload bytes per packet (what reaches the peer; framing comes on top).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Relayed packets per second, both directions together (clients send half of them: each
    /// echo round trip is relayed twice); 0 = saturated (a window of packets in flight).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Saturated mode: packets in flight per flow.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Use Send/Data indications instead of channels.
    #[arg(long)]
    pub send_indication: bool,
    /// Drive `tern-bench forwarder` (no STUN: a 4-byte header only).
    #[arg(long)]
    pub raw: bool,
    /// Client threads (flows are split between them).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Echo peer threads, each with its own socket.
    #[arg(long, default_value_t = 1)]
    pub echo_threads: usize,
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
}

#[derive(Debug, Args)]
pub struct TableArgs {
    /// JSON lines written by the runs (each with `scenario` and `server` tags).
    pub input: PathBuf,
}
