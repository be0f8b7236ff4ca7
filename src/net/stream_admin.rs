//! What the rest of the process sees of TCP/TLS connections, each of which owns its own
//! `turn::Server`:
//!
//! - **Metrics.** [`Folder`] adds the changes of a connection's TURN counters (or of what a
//!   spliced RFC 6062 connection relayed) into one shared
//!   [`WorkerStats`] (`StreamStats::turn`): at most every [`FOLD_INTERVAL`] while packets flow
//!   (the shared cells are written by every core, so never per packet), and at once on timers,
//!   admin calls and the end of the connection. Relaxed `fetch_add`s, only for the counters that
//!   moved (every counter the TURN core declares). Gauges (live allocations) fold the same way,
//!   by wrapping deltas.
//! - **Admin API.** [`StreamRegistry`] maps a connection id to its task's command channel; it is
//!   touched when a connection starts serving, when it ends, and by admin calls, never per
//!   packet. [`StreamControl`] is the admin API's handle on it.

use super::common::lock;
use super::stats::{StreamStats, WorkerStats};
use crate::metrics::LabelSet;
use crate::turn::{AllocId, AllocationInfo, Counters, Server, Transport};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How stale the stream counters in `/metrics` may get while traffic flows (as the UDP
/// workers' publishing interval).
pub(super) const FOLD_INTERVAL: Duration = Duration::from_millis(500);
use tokio::sync::{mpsc, oneshot};

/// Adds the changes of one connection's counters into the shared stats.
pub(super) struct Folder {
    into: Arc<WorkerStats>,
    /// The counters as last folded.
    last: Counters,
    /// When the counters last changed without being folded (`None`: nothing pending).
    pending_since: Option<Instant>,
}

impl Folder {
    pub fn new(into: Arc<WorkerStats>) -> Folder {
        Folder {
            into,
            last: Counters::default(),
            pending_since: None,
        }
    }

    /// After packet work at `now`: folds if changes have waited `FOLD_INTERVAL`, else notes
    /// that some are pending (see [`Folder::due`]).
    pub fn fold_soon(&mut self, server: &Server, now: Instant) {
        match self.pending_since {
            Some(since) if now >= since + FOLD_INTERVAL => self.fold(server),
            Some(_) => {}
            None => self.pending_since = Some(now),
        }
    }

    /// When pending changes must be folded, so an idle connection's last packets still show.
    pub fn due(&self) -> Option<Instant> {
        self.pending_since.map(|since| since + FOLD_INTERVAL)
    }

    /// Folds every counter.
    pub fn fold(&mut self, server: &Server) {
        self.pending_since = None;
        self.fold_counters(*server.counters());
    }

    /// Folds `counters`, a server's or what a spliced connection relayed (see `tcp_relay`).
    pub fn fold_counters(&mut self, counters: Counters) {
        self.into.add_changes(&counters, &self.last);
        self.last = counters;
    }
}

/// What the admin API asks a connection task.
pub(super) enum StreamCommand {
    /// The connection's allocations (at most one).
    List(oneshot::Sender<Vec<(AllocId, AllocationInfo)>>),
    /// Delete this allocation and close the connection; replies whether it existed.
    Delete(AllocId, oneshot::Sender<bool>),
}

/// Connection tasks by id, for the admin API.
#[derive(Default)]
pub struct StreamRegistry {
    next: AtomicU64,
    connections: Mutex<HashMap<u64, (Transport, mpsc::UnboundedSender<StreamCommand>)>>,
}

/// A connection's place in the registry and in `tern_connections{transport}`; both are given
/// back on drop.
pub(super) struct Registration {
    pub id: u64,
    transport: Transport,
    registry: Arc<StreamRegistry>,
    stats: Arc<StreamStats>,
}

impl StreamRegistry {
    /// Registers a connection serving `transport`; commands arrive on the receiver.
    pub(super) fn register(
        self: &Arc<Self>,
        transport: Transport,
        stats: Arc<StreamStats>,
    ) -> (Registration, mpsc::UnboundedReceiver<StreamCommand>) {
        let id = self.next.fetch_add(1, Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().insert(id, (transport, sender));
        stats.connections_open[transport.index()].fetch_add(1, Relaxed);
        let registration = Registration {
            id,
            transport,
            registry: self.clone(),
            stats,
        };
        (registration, receiver)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (Transport, mpsc::UnboundedSender<StreamCommand>)>>
    {
        lock(&self.connections)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.stats.connections_open[self.transport.index()].fetch_sub(1, Relaxed);
    }
}

/// One allocation on a stream connection, as the admin API lists it.
#[derive(Clone, Debug)]
pub struct StreamAllocation {
    pub connection: u64,
    pub id: AllocId,
    pub info: AllocationInfo,
}

impl StreamAllocation {
    /// `"<tcp|tls>-<connection>-<slot>-<generation>"`: never the shape of a UDP worker's id
    /// (which starts with a number), and never reused in a process (connection ids only grow).
    pub fn id_string(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.info.tuple.transport.as_str(),
            self.connection,
            self.id.index,
            self.id.generation
        )
    }
}

/// Parses an id made by [`StreamAllocation::id_string`]: the connection and the allocation.
pub fn parse_stream_allocation_id(text: &str) -> Option<(u64, AllocId)> {
    let rest = text
        .strip_prefix("tcp-")
        .or_else(|| text.strip_prefix("tls-"))?;
    let mut parts = rest.splitn(3, '-');
    let connection = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    Some((connection, AllocId { index, generation }))
}

/// The admin API's handle on the stream connections; empty (nothing listed, nothing found)
/// when no TCP/TLS listener runs.
#[derive(Clone, Default)]
pub struct StreamControl {
    pub(super) registry: Option<Arc<StreamRegistry>>,
}

impl StreamControl {
    /// Every stream connection's allocations; a connection that does not answer within
    /// `timeout` (or ends meanwhile) is left out.
    pub async fn list_allocations(&self, timeout: Duration) -> Vec<StreamAllocation> {
        let Some(registry) = &self.registry else {
            return Vec::new();
        };
        let asked: Vec<_> = {
            let connections = registry.lock();
            connections
                .iter()
                .filter_map(|(id, (_, sender))| {
                    let (reply, answer) = oneshot::channel();
                    sender.send(StreamCommand::List(reply)).ok()?;
                    Some((*id, answer))
                })
                .collect()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut entries = Vec::new();
        for (connection, answer) in asked {
            if let Ok(Ok(list)) = tokio::time::timeout_at(deadline, answer).await {
                entries.extend(list.into_iter().map(|(id, info)| StreamAllocation {
                    connection,
                    id,
                    info,
                }));
            }
        }
        entries
    }

    /// Deletes one allocation (its connection closes); `None` if the connection is gone or did
    /// not answer in time.
    pub async fn delete_allocation(
        &self,
        connection: u64,
        id: AllocId,
        timeout: Duration,
    ) -> Option<bool> {
        let (reply, answer) = oneshot::channel();
        {
            let connections = self.registry.as_ref()?.lock();
            let (_, sender) = connections.get(&connection)?;
            sender.send(StreamCommand::Delete(id, reply)).ok()?;
        }
        tokio::time::timeout(timeout, answer).await.ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Cell, MetricSet};
    use crate::turn::metrics::{Direction, RequestMethod};

    #[test]
    fn ids_round_trip_and_differ_from_udp_ids() {
        assert_eq!(
            parse_stream_allocation_id("tcp-7-0-3"),
            Some((
                7,
                AllocId {
                    index: 0,
                    generation: 3
                }
            ))
        );
        assert!(parse_stream_allocation_id("tls-1-2-3").is_some());
        assert_eq!(parse_stream_allocation_id("0-1-2"), None);
        assert_eq!(parse_stream_allocation_id("udp-1-2-3"), None);
        assert_eq!(parse_stream_allocation_id("tcp-1-2"), None);
        assert_eq!(crate::net::parse_allocation_id("tcp-1-2-3"), None);
    }

    #[test]
    fn folding_adds_deltas_and_takes_gauges_back() {
        let stats = Arc::new(WorkerStats::default());
        let mut a = Folder::new(stats.clone());
        let mut b = Folder::new(stats.clone());
        let (tcp, to_peer) = (Transport::Tcp.index(), Direction::ToPeer.index());
        let allocate = RequestMethod::Allocate.index();
        // Two connections, one allocation each.
        let mut counters = Counters::default();
        counters.allocations_by_transport[tcp] = 1;
        counters.allocations_created = 1;
        counters.relayed_bytes[to_peer] = 100;
        counters.requests[allocate][0] = 1;
        a.fold_counters(counters);
        b.fold_counters(counters);
        // Folding again with nothing new changes nothing.
        a.fold_counters(counters);
        let shared = stats.counters();
        assert_eq!(shared.allocations_by_transport[tcp].load(Relaxed), 2);
        assert_eq!(shared.relayed_bytes[to_peer].load(Relaxed), 200);
        assert_eq!(shared.requests[allocate][0].load(Relaxed), 2);
        // One ends: the gauges go down, the counters keep counting.
        counters.allocations_by_transport[tcp] = 0;
        counters.allocations_deleted = 1;
        counters.relayed_bytes[to_peer] = 150;
        a.fold_counters(counters);
        assert_eq!(shared.allocations_by_transport[tcp].load(Relaxed), 1);
        assert_eq!(shared.allocations_created.load(Relaxed), 2);
        assert_eq!(shared.allocations_deleted.load(Relaxed), 1);
        assert_eq!(shared.relayed_bytes[to_peer].load(Relaxed), 250);
    }

    /// Every declared counter folds, not only those a test names: give each cell its own value
    /// and find it in the shared stats.
    #[test]
    fn folding_covers_every_declared_counter() {
        let stats = Arc::new(WorkerStats::default());
        let mut folder = Folder::new(stats.clone());
        let metrics = <Counters as MetricSet>::METRICS;
        let mut counters = Counters::default();
        let mut value = 0;
        for metric in 0..metrics.len() {
            for cell in counters.cells_mut(metric) {
                value += 1;
                *cell = value;
            }
        }
        folder.fold_counters(counters);
        for (metric, def) in metrics.iter().enumerate() {
            let folded: Vec<u64> = stats
                .counters()
                .cells(metric)
                .iter()
                .map(Cell::get)
                .collect();
            assert_eq!(folded.len(), def.cell_count(), "{}", def.name);
            assert_eq!(folded, counters.cells(metric), "{}", def.name);
        }
    }
}
