//! `/metrics`: Prometheus text (OpenMetrics) through `prometheus-client`'s registry and encoder.
//!
//! A custom collector reads the workers' published atomics at scrape time, so values move while
//! allocations live (not only when they end) and the packet path never touches a metric. What it
//! encodes comes from the declarations (`turn::metrics::CounterSet`, `net::StreamStats`,
//! [`ProcessGauges`]): names, help, kinds and labels. Labels are bounded sets (transport,
//! method, code, reason, direction): never a user name.

use super::{HttpState, HttpStats};
use crate::metrics::{Cell, Kind, MetricDef, MetricSet};
use crate::net::{FastPathStats, RelayPorts, StreamStats, WorkerStats};
use crate::turn::metrics::SharedCounters;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<Arc<HttpState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The registry with tern's collector in it.
pub(super) struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// `workers`: the UDP workers' stats; `streams`: the TCP/TLS listeners' (whose TURN counters
    /// are every connection's added up).
    pub fn new(
        workers: Vec<Arc<WorkerStats>>,
        streams: Option<Arc<StreamStats>>,
        fast_path: Option<Arc<FastPathStats>>,
        http: Arc<HttpStats>,
        ports: Arc<Mutex<RelayPorts>>,
        draining: Arc<AtomicBool>,
    ) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TernCollector {
            workers,
            streams,
            fast_path,
            http,
            ports,
            draining,
        }));
        Metrics { registry }
    }
}

tern_proto::declare_metrics! {
    /// What the process knows at scrape time, outside the workers' counters.
    struct ProcessGauges(u64) {
        relay_ports_free: gauge
            = "tern_relay_ports_free", "Relay ports free in the min-port..max-port range";
        draining: gauge
            = "tern_draining", "1 while the server drains (new allocations refused)";
        relay_workers: gauge = "tern_relay_workers", "Relay worker threads";
    }
}

/// Every metric `/metrics` shows, in the order the collector encodes them (for checks of
/// dashboards and docs against the declarations).
pub fn declared_metrics() -> impl Iterator<Item = &'static MetricDef> {
    let turn = <SharedCounters as MetricSet>::METRICS;
    let streams = <StreamStats as MetricSet>::METRICS;
    let fast_path = <FastPathStats as MetricSet>::METRICS;
    let http = <HttpStats as MetricSet>::METRICS;
    let process = <ProcessGauges as MetricSet>::METRICS;
    turn.iter()
        .chain(streams)
        .chain(fast_path)
        .chain(http)
        .chain(process)
}

struct TernCollector {
    /// The UDP workers' stats.
    workers: Vec<Arc<WorkerStats>>,
    /// `None` when no TCP/TLS listener runs (its metrics then read 0).
    streams: Option<Arc<StreamStats>>,
    /// The kernel fast path's (`None` without UDP); its relayed traffic is part of the TURN
    /// counters' too.
    fast_path: Option<Arc<FastPathStats>>,
    /// The HTTP endpoint's own.
    http: Arc<HttpStats>,
    ports: Arc<Mutex<RelayPorts>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for TernCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TernCollector")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Collector for TernCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // The TURN counters: every UDP worker's and the stream connections' summed.
        let stream_turn = self.streams.as_ref().map(|streams| streams.turn.counters());
        let kernel_turn = self.fast_path.as_ref().map(|fast_path| &fast_path.turn);
        let turn: Vec<&SharedCounters> = self
            .workers
            .iter()
            .map(|worker| worker.counters())
            .chain(stream_turn)
            .chain(kernel_turn)
            .collect();
        encode_set(&mut encoder, &turn)?;
        let streams: Vec<&StreamStats> = self.streams.iter().map(Arc::as_ref).collect();
        encode_set(&mut encoder, &streams)?;
        let fast_path: Vec<&FastPathStats> = self.fast_path.iter().map(Arc::as_ref).collect();
        encode_set(&mut encoder, &fast_path)?;
        encode_set(&mut encoder, &[self.http.as_ref()])?;
        let relay_ports_free = self
            .ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .free();
        let process = ProcessGauges {
            relay_ports_free: relay_ports_free as u64,
            draining: u64::from(self.draining.load(Relaxed)),
            relay_workers: self.workers.len() as u64,
        };
        encode_set(&mut encoder, &[&process])
    }
}

/// Encodes every metric of a declared set, each cell summed over `sources`.
fn encode_set<S: MetricSet>(
    encoder: &mut DescriptorEncoder,
    sources: &[&S],
) -> Result<(), std::fmt::Error> {
    for (index, def) in S::METRICS.iter().enumerate() {
        let value = |cell: usize| {
            sources.iter().fold(0u64, |sum, source| {
                let value = source.cells(index).get(cell).map_or(0, Cell::get);
                // Wrapping: a stream gauge folds its decreases as wrapping deltas.
                sum.wrapping_add(value)
            })
        };
        encode_metric(encoder, def, value)?;
    }
    Ok(())
}

fn encode_metric(
    encoder: &mut DescriptorEncoder,
    def: &MetricDef,
    value: impl Fn(usize) -> u64,
) -> Result<(), std::fmt::Error> {
    let metric_type = match def.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    };
    let mut family = encoder.encode_descriptor(def.name, def.help, None, metric_type)?;
    if def.labels.is_empty() {
        return encode_value(family, def.kind, value(0));
    }
    for cell in 0..def.cell_count() {
        let value = value(cell);
        if def.sparse && value == 0 {
            continue;
        }
        let pairs = def.label_values(cell);
        let labels = &pairs[..def.labels.len()];
        encode_value(family.encode_family(&labels)?, def.kind, value)?;
    }
    Ok(())
}

fn encode_value(encoder: MetricEncoder, kind: Kind, value: u64) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(encoder),
        Kind::Gauge => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::LabelSet;
    use crate::net::PortPool;
    use crate::turn::metrics::{Direction, Outcome, RequestMethod};
    use crate::turn::{ErrorCode, Transport};
    use std::collections::BTreeSet;

    fn declared() -> impl Iterator<Item = &'static MetricDef> {
        declared_metrics()
    }

    /// The README's `/metrics` paragraph: from its bullet to the next bullet.
    fn readme_metrics_paragraph() -> &'static str {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("- **`/metrics`**")
            .expect("README has a /metrics bullet");
        let rest = &readme[start + 1..];
        let end = rest.find("\n- ").map_or(rest.len(), |end| end + 1);
        &readme[start..start + end]
    }

    /// How a metric is written in the README: its exposed name and label names.
    fn documented_form(def: &MetricDef) -> String {
        let labels: Vec<&str> = def.labels.iter().map(|l| l.name).collect();
        match labels.is_empty() {
            true => def.exposed_name(),
            false => format!("{}{{{}}}", def.exposed_name(), labels.join(",")),
        }
    }

    /// Fails when a metric is declared but not in README.md's `/metrics` paragraph, or named
    /// there but not declared (or documented with other labels).
    #[test]
    fn readme_lists_exactly_the_declared_metrics() {
        let paragraph = readme_metrics_paragraph();
        let documented: BTreeSet<String> = paragraph
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|code| code.starts_with("tern_"))
            .map(str::to_string)
            .collect();
        let declared: BTreeSet<String> = declared().map(documented_form).collect();
        let undocumented: Vec<_> = declared.difference(&documented).collect();
        let undeclared: Vec<_> = documented.difference(&declared).collect();
        assert!(
            undocumented.is_empty() && undeclared.is_empty(),
            "README /metrics paragraph out of step with the declarations:\n  \
             declared, not documented: {undocumented:?}\n  documented, not declared: {undeclared:?}"
        );
    }

    #[test]
    fn metric_names_are_unique() {
        let mut names = BTreeSet::new();
        for def in declared() {
            assert!(names.insert(def.name), "{} declared twice", def.name);
        }
    }

    /// Counters and gauges from every declared set, summed over sources, with their labels.
    #[test]
    fn encodes_declared_sets_summed() {
        let one = WorkerStats::default();
        let two = WorkerStats::default();
        let connect = RequestMethod::Connect.index();
        let failed = Outcome::Error(ErrorCode::ConnectionTimeoutOrFailure).index();
        one.counters().requests[connect][failed].store(2, Relaxed);
        two.counters().requests[connect][failed].store(1, Relaxed);
        one.counters().allocations_created.store(5, Relaxed);
        let streams = StreamStats::default();
        streams.accepted.store(4, Relaxed);
        streams.connections_open[Transport::Tls.index()].store(1, Relaxed);
        one.counters().relayed_packets[Direction::ToPeer.index()].store(5, Relaxed);
        let fast_path = FastPathStats::default();
        fast_path.store_relayed((7, 700), (0, 0));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TernCollector {
            workers: vec![Arc::new(one), Arc::new(two)],
            streams: Some(Arc::new(streams)),
            fast_path: Some(Arc::new(fast_path)),
            http: Arc::new(HttpStats::default()),
            ports: Arc::new(Mutex::new(RelayPorts::new(PortPool::new(50000, 50009), 0))),
            draining: Arc::new(AtomicBool::new(true)),
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "tern_requests_total{method=\"connect\",code=\"447\"} 3",
            "tern_allocations_created_total 5",
            "tern_stream_accepted_total 4",
            "tern_connections{transport=\"tls\"} 1",
            "tern_relayed_bytes_total{direction=\"to_client\"} 0",
            // The kernel's share is in the total, and on its own.
            "tern_relayed_packets_total{direction=\"to_peer\"} 12",
            "tern_fast_path_relayed_packets_total{direction=\"to_peer\"} 7",
            "tern_fast_path_relayed_bytes_total{direction=\"to_peer\"} 700",
            "tern_relay_ports_free 10",
            "tern_draining 1",
            "tern_relay_workers 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // Sparse: no zero method × code samples.
        assert!(!text.contains("code=\"200\""), "{text}");
        for def in declared() {
            assert!(
                text.contains(&format!("# HELP {} {}", def.name, def.help)),
                "{}",
                def.name
            );
        }
    }
}
