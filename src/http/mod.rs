//! The HTTP endpoint (axum): the credential endpoint for app backends, `/metrics`, `/healthz` and
//! `/readyz`, the admin API and the Trickle ICE test page.
//!
//! It runs on the tokio runtime of `main.rs`, never on a relay worker: what it needs from the
//! workers it reads from their published atomics ([`crate::net::WorkerStats`]) or asks over
//! their control channel ([`crate::net::WorkerControl`]) from a blocking task.
//!
//! Plain HTTP by default, bound to loopback (put a reverse proxy in front to expose it). With
//! `http-tls` it serves HTTPS ([`serve_tls`]: HTTP/2 and HTTP/1.1 by ALPN) with the TLS
//! listener's certificate store, so certificate reloads reach it too.

mod admin;
mod credentials;
mod health;
mod metrics;
mod page;

pub use credentials::derive_uris;
pub use metrics::declared_metrics;

use crate::config::{Config, Secret};
use crate::net::{
    RelayPorts, StreamControl, StreamService, UdpService, WorkerControl, WorkerStats,
};
use arc_swap::ArcSwap;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};
use std::future::Future;
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
        Arc::new(HttpState {
            settings: ArcSwap::from_pointee(settings),
            metrics: metrics::Metrics::new(
                stats.clone(),
                stream_stats,
                ports.clone(),
                draining.clone(),
            ),
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
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTPS until `shutdown` completes: TLS with `tls` (e.g.
/// `CertStore::server_config(&[b"h2", b"http/1.1"])`, whose certificate follows reloads), then
/// HTTP/2 or HTTP/1.1 as negotiated. In-flight requests get a second to finish at shutdown.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(%error, "https accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "https: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "https: TLS handshake timed out");
                    return;
                }
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Slow request headers are cut off (hyper's header read timeout needs a timer).
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "https connection ended with an error");
            }
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), graceful.shutdown()).await;
    Ok(())
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
