//! Serving the endpoint: on a thread and a runtime of its own ([`HttpServer`]), so that TURN
//! load on the stream runtime never delays `/healthz` or `/metrics`; plain HTTP or, with
//! `http-tls`, HTTPS (HTTP/2 and HTTP/1.1 by ALPN); and the limits that keep a few clients from
//! holding it:
//!
//! - `http-max-connections`: connections past it are closed at once;
//! - `http-header-timeout`: a client has this long for the TLS handshake, then for each
//!   request's headers (so an idle keep-alive connection is closed after it too);
//! - `http-request-timeout`: a request has this long from its headers to its response (408),
//!   and a connection that makes no progress reading or writing for it is closed;
//! - bodies of at most [`MAX_BODY`] (413), read only once the key is checked (`credentials`).
//!
//! Each refusal is counted in `tern_http_refused_total{reason}`.

use super::{json_error, router, HttpState};
use crate::config::Config;
use crate::metrics::LabelSet;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error};

/// The largest request body read (credential requests are a few dozen bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// How long requests in flight may finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The endpoint's limits (restart to change).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// 0 = unlimited.
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(config: &Config) -> Self {
        HttpLimits {
            max_connections: config.http_max_connections as usize,
            header_timeout: Duration::from_secs(config.http_header_timeout.into()),
            request_timeout: Duration::from_secs(config.http_request_timeout.into()),
        }
    }
}

tern_proto::label_set! {
    /// Why the endpoint turned a connection or a request away (the `reason` label).
    pub enum HttpRefusal: "reason" {
        /// `http-max-connections`: closed at accept.
        MaxConnections = "max_connections",
        /// `http-header-timeout`: a handshake or a request's headers too slow, or idle.
        HeaderTimeout = "header_timeout",
        /// `http-request-timeout`: a request too slow to its response (408), or a connection
        /// that stalled reading or writing.
        RequestTimeout = "request_timeout",
        /// 401: a wrong or missing API or admin key.
        Unauthorized = "unauthorized",
        /// 413: a body over [`MAX_BODY`].
        BodyTooLarge = "body_too_large",
    }
}

tern_proto::declare_metrics! {
    /// The HTTP endpoint's own metrics.
    pub struct HttpStats(AtomicU64) {
        connections: gauge = "tern_http_connections", "HTTP connections open";
        refused: counter [HttpRefusal]
            = "tern_http_refused",
              "HTTP connections and requests refused or cut by the endpoint's limits, by reason";
    }
}

impl HttpStats {
    fn count(&self, reason: HttpRefusal) {
        self.refused[reason.index()].fetch_add(1, Relaxed);
    }
}

/// The endpoint, serving from its own thread until [`HttpServer::stop`].
pub struct HttpServer {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `state` on `listener` (HTTPS with `tls`) from a new thread with a runtime of its
    /// own.
    pub fn start(
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        state: Arc<HttpState>,
        limits: HttpLimits,
    ) -> io::Result<HttpServer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        listener.set_nonblocking(true)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tern-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let served = match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let tls = tls.map(TlsAcceptor::from);
                            let shutdown = async {
                                let _ = stopped.await;
                            };
                            serve(listener, tls, state, limits, shutdown).await
                        }
                        Err(error) => Err(error),
                    };
                    if let Err(error) = served {
                        error!(%error, "http server failed");
                    }
                });
            })?;
        Ok(HttpServer { stop, thread })
    }

    /// Stops accepting and returns once requests in flight finished (a second at most).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Serves until `shutdown` completes; requests in flight then get [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<HttpState>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let stats = state.http_stats.clone();
    let guard = Guard {
        stats: stats.clone(),
        request_timeout: limits.request_timeout,
    };
    let app = router(state).layer(axum::middleware::from_fn_with_state(guard, guard_request));
    let slots = match limits.max_connections {
        0 => None,
        max => Some(Arc::new(Semaphore::new(max))),
    };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    debug!(%error, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    stats.count(HttpRefusal::MaxConnections);
                    debug!(%peer, "http connection refused: http-max-connections");
                    continue; // dropped: closed at once
                }
            },
        };
        let connection = Connection {
            peer,
            app: app.clone(),
            limits,
            stats: stats.clone(),
        };
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            connection.stats.connections.fetch_add(1, Relaxed);
            connection.serve(tcp, tls, watcher).await;
            connection.stats.connections.fetch_sub(1, Relaxed);
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
}

impl Connection {
    async fn serve(
        &self,
        tcp: TcpStream,
        tls: Option<TlsAcceptor>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let mut io = TimeoutStream::new(tcp);
        io.set_read_timeout(Some(self.limits.request_timeout));
        io.set_write_timeout(Some(self.limits.request_timeout));
        let io = Box::pin(io);
        let Some(acceptor) = tls else {
            return self.serve_http(io, watcher).await;
        };
        match tokio::time::timeout(self.limits.header_timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => self.serve_http(tls, watcher).await,
            Ok(Err(error)) => debug!(peer = %self.peer, %error, "https: TLS handshake failed"),
            Err(_) => {
                self.stats.count(HttpRefusal::HeaderTimeout);
                debug!(peer = %self.peer, "https: TLS handshake timed out");
            }
        }
    }

    async fn serve_http<I>(&self, io: I, watcher: hyper_util::server::graceful::Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        builder.http2().timer(TokioTimer::new());
        let service = TowerToHyperService::new(self.app.clone());
        let connection = builder.serve_connection(TokioIo::new(io), service);
        if let Err(error) = watcher.watch(connection).await {
            if let Some(reason) = timeout_reason(error.as_ref()) {
                self.stats.count(reason);
            }
            debug!(peer = %self.peer, %error, "http connection ended with an error");
        }
    }
}

/// Which timeout ended a connection, if one did: hyper's header-read timeout, or a read or write
/// that made no progress (`TimeoutStream`).
fn timeout_reason(error: &(dyn std::error::Error + 'static)) -> Option<HttpRefusal> {
    let mut source = Some(error);
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return Some(HttpRefusal::HeaderTimeout);
        }
        if error
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return Some(HttpRefusal::RequestTimeout);
        }
        source = error.source();
    }
    None
}

/// What every request passes through.
#[derive(Clone)]
struct Guard {
    stats: Arc<HttpStats>,
    request_timeout: Duration,
}

/// Holds a request to `http-request-timeout` (408 past it) and counts the refusals answered.
async fn guard_request(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let response = match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => json_error(StatusCode::REQUEST_TIMEOUT, "request timed out"),
    };
    let refusal = match response.status() {
        StatusCode::UNAUTHORIZED => HttpRefusal::Unauthorized,
        StatusCode::PAYLOAD_TOO_LARGE => HttpRefusal::BodyTooLarge,
        StatusCode::REQUEST_TIMEOUT => HttpRefusal::RequestTimeout,
        _ => return response,
    };
    guard.stats.count(refusal);
    response
}
