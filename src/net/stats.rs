//! What the I/O layer publishes for `/metrics`, declared once (see `tern_proto::metrics`).
//!
//! - [`WorkerStats`]: a `turn::Server`'s counters as atomics. A UDP worker stores its own a few
//!   times a second ([`WorkerStats::publish`]); the TCP/TLS connections add their changes into
//!   one shared `WorkerStats` (`stream_admin::Folder`). Readers never slow the packet path.
//! - [`StreamStats`]: what only the TCP/TLS listeners count, bumped directly (relaxed atomics)
//!   by connection code, never per packet.
//! - [`FastPathStats`]: what the kernel fast path relayed and left to user space, stored by the
//!   first UDP worker when it publishes (read from two per-CPU cells, no per-entry scan).

use crate::turn::metrics::{BandwidthLimit, Counters, Direction, SharedCounters};
use crate::turn::{Server, Transport};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One `turn::Server`'s counters, or many added up.
#[derive(Debug, Default)]
pub struct WorkerStats {
    counters: SharedCounters,
    /// How many times the worker's loop has published: it moves while the worker runs (the
    /// systemd watchdog is pinged only while every worker's moves).
    heartbeat: AtomicU64,
}

impl WorkerStats {
    /// Stores the worker's counters and ticks its heartbeat (the worker calls this every
    /// 500 ms or so, busy or idle).
    pub fn publish(&self, server: &Server) {
        self.counters.store(server.counters());
        self.heartbeat.fetch_add(1, Relaxed);
    }

    /// The heartbeat count: different from the last reading means the worker ran since.
    pub fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Relaxed)
    }

    /// Adds what changed from `before` to `now` (a stream connection folding its counters).
    pub fn add_changes(&self, now: &Counters, before: &Counters) {
        self.counters.add_changes(now, before);
    }

    pub fn counters(&self) -> &SharedCounters {
        &self.counters
    }
}

tern_proto::label_set! {
    /// The limit that refused a TCP/TLS connection or an RFC 6062 peer connection (the `reason`
    /// label).
    pub enum StreamRefusal: "reason" {
        MaxConnections = "max_connections",
        MaxConnectionsPerIp = "max_connections_per_ip",
        /// The descriptor reserve (`fd-reserve-percent`).
        FdReserve = "fd_reserve",
    }
}

tern_proto::declare_metrics! {
    /// The TCP/TLS listeners' metrics.
    pub struct StreamStats(AtomicU64) {
        /// Held from accept to close (TLS handshake and PROXY header included), and by RFC 6062
        /// peer connections from Connect or accept to close: what `max-connections` limits.
        connections: gauge
            = "tern_stream_admitted",
              "TCP/TLS client connections (from accept, handshakes included) and RFC 6062 peer connections holding a max-connections slot";
        accepted: counter
            = "tern_stream_accepted",
              "TCP/TLS connections accepted within max-connections, max-connections-per-ip and the fd reserve";
        refused: counter [StreamRefusal]
            = "tern_stream_refused",
              "TCP/TLS connections refused, by the limit that refused them";
        tls_handshake_failures: counter
            = "tern_tls_handshake_failures", "TLS handshakes that failed";
        /// Closed for bytes that are neither STUN, ChannelData nor TLS, or an unaccepted PROXY
        /// header.
        protocol_errors: counter
            = "tern_stream_protocol_errors",
              "TCP/TLS connections closed for bytes that are not STUN, ChannelData, TLS or an accepted PROXY header";
        /// Closed by `stream-idle-timeout` or `partial-frame-timeout`.
        timeouts: counter
            = "tern_stream_timeouts",
              "TCP/TLS connections closed by stream-idle-timeout or partial-frame-timeout";
        /// Cut for leaving the queue of bytes toward them full past the write-stall timeout.
        write_stalls: counter
            = "tern_stream_write_stalls",
              "TCP/TLS connections cut because the client did not read for the write-stall timeout";
        /// Datagrams from peers dropped because the client's queue was full.
        client_queue_drops: counter
            = "tern_stream_queue_drops",
              "Peer datagrams dropped because the TCP/TLS client's queue toward it was full";
        /// What the connections' read buffers hold: [`super::stream::MAX_FRAME`] at most each,
        /// back to 4 KiB once a large frame is handled.
        read_buffers: gauge
            = "tern_stream_read_buffer_bytes",
              "Bytes held by TCP/TLS connections' read buffers (4 KiB each, more only while a large frame arrives)";
        /// Relay sockets held by allocations on streams now.
        allocations: gauge
            = "tern_stream_relays",
              "Relay sockets (UDP, or TCP for RFC 6062) held by allocations of TCP/TLS clients";
        /// Client connections serving TURN, by transport (UDP has none).
        connections_open: gauge [Transport]
            = "tern_connections",
              "Client connections open, by transport (TCP and TLS; UDP has no connections)";
        /// RFC 6062 peer connections opened by Connect or accepted on a relayed address.
        tcp_peer_connections: counter
            = "tern_tcp_peer_connections",
              "RFC 6062 peer connections opened by Connect or accepted on a relayed address";
        /// Refused before they were opened or filed (a Connect is answered 447).
        tcp_peer_refused: counter [StreamRefusal]
            = "tern_tcp_peer_connections_refused",
              "RFC 6062 peer connections refused by max-connections or the fd reserve (Connect answered 447, inbound closed)";
        /// RFC 6062 data connections spliced with their peer connection now.
        tcp_spliced: gauge
            = "tern_tcp_relay_spliced", "RFC 6062 data connections spliced with a peer connection now";
        /// A stream that would pass `max-bps` or `bps-capacity` is not read until it may: each
        /// such wait (a TCP/TLS client's data for a peer, either side of a spliced RFC 6062
        /// connection). Nothing is dropped; the sender is slowed by TCP flow control.
        bandwidth_paused: counter [Direction, BandwidthLimit]
            = "tern_bandwidth_paused",
              "Times a TCP/TLS client connection or a side of a spliced RFC 6062 connection stopped reading until max-bps or bps-capacity let its data pass, by direction and limit";
    }
    extra {
        /// Every connection's TURN counters added up (see `stream_admin::Folder`).
        pub turn: Arc<WorkerStats>,
    }
}

tern_proto::label_set! {
    /// Why the kernel fast path left a datagram to user space (the `reason` label).
    pub enum FastPathPass: "reason" {
        /// Nothing has come from its destination yet, so no next hop is known.
        NoHop = "no_hop",
        /// It would exceed the egress MTU.
        TooBig = "too_big",
        /// IP options, fragments, a shape of TURN message the program leaves alone.
        Unsupported = "unsupported",
        /// IPv4 without a UDP checksum, bound for IPv6.
        NoChecksum = "no_checksum",
        /// The driver would not move the frame's head or tail.
        AdjustFailed = "adjust_failed",
        /// Sent on this host with transmit checksum offload (a veth from another namespace or a
        /// container): only the pseudo header is summed.
        PartialChecksum = "partial_checksum",
    }
}

tern_proto::declare_metrics! {
    /// The kernel fast path's metrics (all zero while it is off).
    pub struct FastPathStats(AtomicU64) {
        active: gauge
            = "tern_fast_path_active", "1 while the kernel fast path is attached";
        entries: gauge
            = "tern_fast_path_entries", "Channels and permissions the kernel fast path relays now";
        relayed_packets: counter [Direction]
            = "tern_fast_path_relayed_packets",
              "Datagrams relayed by the kernel fast path, by direction (part of tern_relayed_packets)";
        relayed_bytes: counter [Direction]
            = "tern_fast_path_relayed_bytes",
              "Payload bytes relayed by the kernel fast path, by direction (part of tern_relayed_bytes)";
        passed: counter [FastPathPass]
            = "tern_fast_path_passed",
              "Datagrams the kernel fast path could not relay and left to user space, by reason";
        install_failures: counter
            = "tern_fast_path_install_failures",
              "Channels and permissions left to user space because the fast path held fast-path-capacity entries";
    }
    extra {
        /// The kernel's share of the TURN counters (only `relayed_*` move), added to every
        /// worker's when `/metrics` sums them.
        pub turn: SharedCounters,
    }
}

impl FastPathStats {
    /// Stores what the kernel relayed since attach (totals summed over CPUs).
    pub fn store_relayed(&self, to_peer: (u64, u64), to_client: (u64, u64)) {
        for (direction, (packets, bytes)) in [
            (Direction::ToPeer, to_peer),
            (Direction::ToClient, to_client),
        ] {
            let d = direction as usize;
            self.relayed_packets[d].store(packets, Relaxed);
            self.relayed_bytes[d].store(bytes, Relaxed);
            self.turn.relayed_packets[d].store(packets, Relaxed);
            self.turn.relayed_bytes[d].store(bytes, Relaxed);
        }
    }
}
