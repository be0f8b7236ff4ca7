//! The HTTP endpoint (axum): the credential endpoint for app backends, `/metrics`, `/healthz` and
//! `/readyz`, the admin API and the Trickle ICE test page.
//!
//! It runs on a thread and a runtime of its own ([`HttpServer`]), never on a relay worker nor
//! on the runtime of the TCP/TLS connections: what it needs from the workers it reads from their
//! published atomics ([`crate::net::WorkerStats`]) or asks over their control channel
//! ([`crate::net::WorkerControl`]) from a blocking task.
//!
//! Plain HTTP by default, bound to loopback (put a reverse proxy in front to expose it). With
//! `http-tls` it serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with the TLS listener's certificate
//! store, so certificate reloads reach it too. Its limits (connections, timeouts, body size) are
//! in [`server`].

mod admin;
mod credentials;
mod health;
mod metrics;
mod page;
mod server;

pub use credentials::derive_uris;
pub use metrics::declared_metrics;
pub use server::{serve, HttpLimits, HttpRefusal, HttpServer, HttpStats, MAX_BODY};

use crate::config::{Config, Secret};
use crate::net::{
    RelayPorts, StreamControl, StreamService, UdpService, WorkerControl, WorkerStats,
};
use arc_swap::ArcSwap;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// What the endpoint takes from the configuration; rebuilt and swapped in on reload.
#[derive(Debug, Default)]
pub struct HttpSettings {
    /// Signs minted credentials: the first `static-auth-secret` (the newest in rotation order).
    pub signing_secret: Option<Secret>,
    pub api_keys: Vec<Secret>,
    pub admin_api_keys: Vec<Secret>,
    pub max_credential_ttl: u64,
    /// `public-uris`, or derived from the listeners ([`derive_uris`]).
    pub uris: Vec<String>,
    /// The STUN/TURN port, for the test page's default URL.
    pub turn_port: u16,
}

impl HttpSettings {
    pub fn from_config(config: &Config) -> Self {
        HttpSettings {
            signing_secret: config.static_auth_secrets.first().cloned(),
            api_keys: config.api_keys.clone(),
            admin_api_keys: config.admin_api_keys.clone(),
            max_credential_ttl: config.max_credential_ttl,
            uris: derive_uris(config),
            turn_port: config.listening_port,
        }
    }
}

/// Everything the handlers share.
pub struct HttpState {
    pub settings: ArcSwap<HttpSettings>,
    pub stats: Vec<Arc<WorkerStats>>,
    pub ports: Arc<Mutex<RelayPorts>>,
    pub control: WorkerControl,
    /// The TCP/TLS connections' allocations, for the admin API.
    pub streams: StreamControl,
    pub draining: Arc<AtomicBool>,
    /// Listeners bound and serving (false before start-up completes and once shutdown begins).
    pub ready: AtomicBool,
    /// The endpoint's own connections and refusals.
    pub http_stats: Arc<HttpStats>,
    metrics: metrics::Metrics,
}

impl HttpState {
    /// `udp` is `None` under `no-udp`, `streams` when no TCP/TLS listener runs: metrics and the
    /// admin API then see none of those.
    pub fn new(
        settings: HttpSettings,
        udp: Option<&UdpService>,
        streams: Option<&StreamService>,
        ports: Arc<Mutex<RelayPorts>>,
        draining: Arc<AtomicBool>,
    ) -> Arc<HttpState> {
        let stats = udp.map(|udp| udp.stats.clone()).unwrap_or_default();
        let control = udp.map(UdpService::control).unwrap_or_default();
        let stream_stats = streams.map(|streams| streams.stats.clone());
        let http_stats = Arc::new(HttpStats::default());
        Arc::new(HttpState {
            settings: ArcSwap::from_pointee(settings),
            metrics: metrics::Metrics::new(
                stats.clone(),
                stream_stats,
                udp.map(|udp| udp.fast_path_stats.clone()),
                http_stats.clone(),
                ports.clone(),
                draining.clone(),
            ),
            http_stats,
            stats,
            ports,
            control,
            streams: streams.map(StreamService::control).unwrap_or_default(),
            draining,
            ready: AtomicBool::new(false),
        })
    }

    pub fn reload(&self, settings: HttpSettings) {
        self.settings.store(Arc::new(settings));
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// HTTP refusals an operator changes with a key (see `turn::refusal` for the TURN ones).
#[derive(Clone, Copy)]
enum Refusal {
    NoApiKeys = 0,
    NoAdminKeys = 1,
}

/// Logs `message` at info the first time `refusal` happens in this process; later ones are not
/// logged (each answer carries the reason).
fn explain_once(refusal: Refusal, message: &str) {
    static EXPLAINED: [AtomicBool; 2] = [const { AtomicBool::new(false) }; 2];
    if !EXPLAINED[refusal as usize].swap(true, Ordering::Relaxed) {
        tracing::info!("{message}");
    }
}

/// All routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .merge(credentials::routes())
        .merge(metrics::routes())
        .merge(health::routes())
        .merge(admin::routes())
        .merge(page::routes())
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// `{"error": message}` with `status`. Messages are fixed texts or name a field: never a
/// secret, never internal detail.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    (status, no_store(), axum::Json(body)).into_response()
}

/// Responses carrying credentials must not be cached.
pub(crate) fn no_store() -> [(header::HeaderName, &'static str); 1] {
    [(header::CACHE_CONTROL, "no-store")]
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `given` is one of `keys`, in time independent of where (or whether) they differ: both
/// sides are hashed to fixed-length digests first, every key is compared, and the results are
/// combined without branching.
pub(crate) fn key_matches(given: &str, keys: &[Secret]) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let mut found = subtle::Choice::from(0);
    for key in keys {
        found |= Sha256::digest(key.0.as_bytes()).ct_eq(&given);
    }
    found.into()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison() {
        let keys = [
            Secret("first-key-0123456789".into()),
            Secret("second-key-0123456789".into()),
        ];
        assert!(key_matches("second-key-0123456789", &keys));
        assert!(!key_matches("second-key-012345678", &keys));
        assert!(!key_matches("", &keys));
        assert!(!key_matches("first-key-0123456789", &[]));
    }

    #[test]
    fn bearer_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
