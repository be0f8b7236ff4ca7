//! `/metrics`: Prometheus text (OpenMetrics) through `prometheus-client`'s registry and encoder.
//!
//! A custom collector reads the workers' published atomics at scrape time, so values move while
//! allocations live (not only when they end) and the packet path never touches a metric. Labels
//! are bounded sets (transport, method, code, reason, direction): never a user name.

use super::HttpState;
use crate::net::{RelayPorts, WorkerStats};
use crate::turn::metrics::{AUTH_REASONS, CODES, METHODS, TRANSPORTS};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
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
    /// `workers`: the UDP workers' stats; `streams`: the TCP/TLS connections' counters, added up.
    pub fn new(
        workers: Vec<Arc<WorkerStats>>,
        streams: Option<Arc<WorkerStats>>,
        ports: Arc<Mutex<RelayPorts>>,
        draining: Arc<AtomicBool>,
    ) -> Metrics {
        let relay_workers = workers.len();
        let mut stats = workers;
        stats.extend(streams);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TernCollector {
            stats,
            relay_workers,
            ports,
            draining,
        }));
        Metrics { registry }
    }
}

struct TernCollector {
    /// The UDP workers' stats, then the stream connections' (if any); every metric is their sum.
    stats: Vec<Arc<WorkerStats>>,
    relay_workers: usize,
    ports: Arc<Mutex<RelayPorts>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for TernCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TernCollector")
            .field("workers", &self.stats.len())
            .finish()
    }
}

impl TernCollector {
    /// The sum over workers of one atomic.
    fn sum(&self, field: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.stats.iter().map(|s| field(s).load(Relaxed)).sum()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for TernCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        {
            let gauge_type = ConstGauge::new(0i64).metric_type();
            let mut family = e.encode_descriptor(
                "tern_allocations",
                "Live allocations, by client transport",
                None,
                gauge_type,
            )?;
            for (i, transport) in TRANSPORTS.iter().enumerate() {
                let value = self.sum(|s| &s.allocations_by_transport[i]);
                ConstGauge::new(value as i64)
                    .encode(family.encode_family(&[("transport", *transport)])?)?;
            }
        }
        counter(
            e,
            "tern_allocations_created",
            "Allocations created",
            self.sum(|s| &s.allocations_created),
        )?;
        counter(
            e,
            "tern_allocations_expired",
            "Allocations ended because their lifetime ran out",
            self.sum(|s| &s.allocations_expired),
        )?;
        counter(
            e,
            "tern_allocations_deleted",
            "Allocations ended by the client (Refresh lifetime 0), connection close or the admin API",
            self.sum(|s| &s.allocations_deleted),
        )?;
        {
            let counter_type = ConstCounter::new(0u64).metric_type();
            let mut family = e.encode_descriptor(
                "tern_requests",
                "STUN/TURN requests answered, by method and result code (200 = success)",
                None,
                counter_type,
            )?;
            for (m, method) in METHODS.iter().enumerate() {
                for (c, code) in CODES.iter().enumerate() {
                    let value = self.sum(|s| &s.requests[m][c]);
                    if value > 0 {
                        ConstCounter::new(value).encode(
                            family.encode_family(&[("method", *method), ("code", *code)])?,
                        )?;
                    }
                }
            }
        }
        {
            let counter_type = ConstCounter::new(0u64).metric_type();
            let mut family = e.encode_descriptor(
                "tern_auth_failures",
                "Requests that failed authentication, by reason",
                None,
                counter_type,
            )?;
            for (i, reason) in AUTH_REASONS.iter().enumerate() {
                let value = self.sum(|s| &s.auth_failures_by_reason[i]);
                ConstCounter::new(value).encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }
        for (name, help, packets_or_bytes) in [
            (
                "tern_relayed_packets",
                "Datagrams relayed, by direction",
                true,
            ),
            (
                "tern_relayed_bytes",
                "Payload bytes relayed, by direction",
                false,
            ),
        ] {
            let counter_type = ConstCounter::new(0u64).metric_type();
            let mut family = e.encode_descriptor(name, help, None, counter_type)?;
            let (to_peer, to_client) = if packets_or_bytes {
                (
                    self.sum(|s| &s.packets_to_peer),
                    self.sum(|s| &s.packets_to_client),
                )
            } else {
                (
                    self.sum(|s| &s.bytes_to_peer),
                    self.sum(|s| &s.bytes_to_client),
                )
            };
            ConstCounter::new(to_peer)
                .encode(family.encode_family(&[("direction", "to_peer")])?)?;
            ConstCounter::new(to_client)
                .encode(family.encode_family(&[("direction", "to_client")])?)?;
        }
        counter(
            e,
            "tern_peers_denied",
            "Peer addresses refused by the peer policy",
            self.sum(|s| &s.peers_denied),
        )?;
        counter(
            e,
            "tern_quota_rejections",
            "Allocates refused by user-quota or total-quota",
            self.sum(|s| &s.quota_rejections),
        )?;
        counter(
            e,
            "tern_drain_rejections",
            "Allocates refused because the server is draining",
            self.sum(|s| &s.drain_rejections),
        )?;
        let free_ports = self
            .ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .free();
        gauge(
            e,
            "tern_relay_ports_free",
            "Relay ports free in the min-port..max-port range",
            free_ports as u64,
        )?;
        {
            let gauge_type = ConstGauge::new(0i64).metric_type();
            let mut family = e.encode_descriptor(
                "tern_connections",
                "Client connections open, by transport (stream transports; UDP has none)",
                None,
                gauge_type,
            )?;
            for (i, transport) in TRANSPORTS.iter().enumerate().skip(1) {
                let value = self.sum(|s| &s.connections_open[i]);
                ConstGauge::new(value as i64)
                    .encode(family.encode_family(&[("transport", *transport)])?)?;
            }
        }
        counter(
            e,
            "tern_tcp_peer_connections",
            "RFC 6062 peer connections opened by Connect or accepted on a relayed address",
            self.sum(|s| &s.tcp_peer_connections),
        )?;
        gauge(
            e,
            "tern_tcp_relay_spliced",
            "RFC 6062 data connections spliced with a peer connection now",
            self.sum(|s| &s.tcp_spliced),
        )?;
        gauge(
            e,
            "tern_draining",
            "1 while the server drains (new allocations refused)",
            u64::from(self.draining.load(Relaxed)),
        )?;
        gauge(
            e,
            "tern_relay_workers",
            "Relay worker threads",
            self.relay_workers as u64,
        )?;
        Ok(())
    }
}
