//! Per-worker counters published for metrics. Each worker writes only its own `WorkerStats`
//! (relaxed stores, a few times a second), so readers never slow the packet path.

use crate::turn::metrics::{AUTH_REASONS, CODES, METHODS, TRANSPORTS};
use crate::turn::Server;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct WorkerStats {
    /// RFC 6062 peer connections opened by Connect or accepted on a relayed address, in total
    /// (stream connections only; written directly by the I/O layer, not by `publish`).
    pub tcp_peer_connections: AtomicU64,
    /// RFC 6062 data connections spliced with their peer connection now.
    pub tcp_spliced: AtomicU64,
    pub allocations: AtomicU64,
    pub allocations_created: AtomicU64,
    pub allocations_expired: AtomicU64,
    pub allocations_deleted: AtomicU64,
    pub auth_failures: AtomicU64,
    pub peers_denied: AtomicU64,
    pub quota_rejections: AtomicU64,
    /// Allocates answered 300 Try Alternate.
    pub redirects: AtomicU64,
    pub packets_to_peer: AtomicU64,
    pub bytes_to_peer: AtomicU64,
    pub packets_to_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Responses by method and code ([`crate::turn::metrics`] indices).
    pub requests: [[AtomicU64; CODES.len()]; METHODS.len()],
    pub auth_failures_by_reason: [AtomicU64; AUTH_REASONS.len()],
    pub allocations_by_transport: [AtomicU64; TRANSPORTS.len()],
    pub drain_rejections: AtomicU64,
    /// Client connections open on this worker by transport (TCP/TLS listeners keep these; UDP
    /// has no connections).
    pub connections_open: [AtomicU64; TRANSPORTS.len()],
}

impl WorkerStats {
    pub fn publish(&self, server: &Server) {
        let c = server.counters();
        self.allocations
            .store(server.allocation_count() as u64, Relaxed);
        self.allocations_created
            .store(c.allocations_created, Relaxed);
        self.allocations_expired
            .store(c.allocations_expired, Relaxed);
        self.allocations_deleted
            .store(c.allocations_deleted, Relaxed);
        self.auth_failures.store(c.auth_failures, Relaxed);
        self.peers_denied.store(c.peers_denied, Relaxed);
        self.quota_rejections.store(c.quota_rejections, Relaxed);
        self.redirects.store(c.redirects, Relaxed);
        self.packets_to_peer
            .store(c.traffic.packets_to_peer, Relaxed);
        self.bytes_to_peer.store(c.traffic.bytes_to_peer, Relaxed);
        self.packets_to_client
            .store(c.traffic.packets_to_client, Relaxed);
        self.bytes_to_client
            .store(c.traffic.bytes_to_client, Relaxed);
        for (cells, values) in self.requests.iter().zip(&c.requests.counts) {
            store_all(cells, values);
        }
        store_all(&self.auth_failures_by_reason, &c.auth_failures_by_reason);
        store_all(&self.allocations_by_transport, &c.allocations_by_transport);
        self.drain_rejections.store(c.drain_rejections, Relaxed);
    }
}

fn store_all(cells: &[AtomicU64], values: &[u64]) {
    for (cell, value) in cells.iter().zip(values) {
        cell.store(*value, Relaxed);
    }
}
