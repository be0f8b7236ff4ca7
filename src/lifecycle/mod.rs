//! The process after start-up: signals, reloads, the graceful stop and systemd's notify protocol.
//!
//! - `SIGHUP` reloads the configuration file (a bad file keeps the running configuration) and
//!   the certificate; `SIGUSR2` (coTURN's signal) reloads only the certificate.
//! - `SIGTERM` or `SIGINT` stops: at once with `drain-timeout = 0`, else after draining (new
//!   Allocates refused with 300 or 486, `/readyz` 503, live allocations relay and refresh) until
//!   the last allocation ends or the timeout passes. A second `SIGTERM`/`SIGINT` stops at once.
//! - systemd (`Type=notify`): READY=1 once serving, RELOADING=1 then READY=1 around a reload,
//!   STOPPING=1 when stopping, WATCHDOG=1 while the workers run ([`watchdog`]).

mod drain;
mod limits;
mod notify;
mod watchdog;

pub use limits::raise_open_file_limit;

use crate::config::{self, Config, Secret, ServeArgs};
use crate::http::{HttpSettings, HttpState};
use crate::net::tls::CertStore;
use crate::net::{StreamService, UdpService};
use crate::policy::Quotas;
use drain::{Drain, End, Step};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal as UnixSignal, SignalKind};
use tracing::{info, warn};

/// What the zero-config run made up at start; reloads keep using it while the file still
/// configures none.
pub struct Generated {
    pub secret: Option<String>,
    pub api_key: Option<String>,
}

impl Generated {
    fn apply(&self, config: &mut Config) {
        if let (Some(secret), true) = (
            &self.secret,
            config.static_auth_secrets.is_empty() && config.users.is_empty(),
        ) {
            config.static_auth_secrets.push(Secret(secret.clone()));
            if let (Some(key), true) = (&self.api_key, config.api_keys.is_empty()) {
                config.api_keys.push(Secret(key.clone()));
            }
        }
    }
}

/// The services signals reach.
#[derive(Clone, Copy)]
pub struct Running<'a> {
    pub udp: Option<&'a UdpService>,
    pub streams: Option<&'a StreamService>,
    pub certs: Option<&'a CertStore>,
    pub http: &'a HttpState,
    /// Live allocations over every worker and connection: when the drain is over.
    pub quotas: &'a Quotas,
    /// The configuration started with: restart-only keys keep these values.
    pub started: &'a Config,
    pub generated: &'a Generated,
}

/// Serves until tern should stop (after draining, if `drain-timeout` is set); the caller then
/// shuts the services down.
pub async fn run(args: &ServeArgs, running: Running<'_>) -> std::io::Result<()> {
    let mut signals = Signals::new()?;
    let workers = running.udp.map(|udp| udp.stats.clone()).unwrap_or_default();
    let watchdog = watchdog::spawn(workers);
    notify::ready("serving");
    let mut drain_timeout = running.started.drain_timeout;
    let stop = loop {
        match signals.next().await {
            Signal::Stop(name) => break name,
            Signal::Reload => {
                if let Some(config) = reload(args, running).await {
                    drain_timeout = config.drain_timeout;
                }
                notify::ready("serving");
            }
            Signal::Certificates => reload_certificates(running),
        }
    };
    if drain_timeout == 0 {
        info!(signal = stop, "stopping");
        notify::stopping("stopping");
    } else {
        drain(
            args,
            running,
            &mut signals,
            stop,
            Duration::from_secs(drain_timeout.into()),
        )
        .await;
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    Ok(())
}

/// Refuses new allocations and waits until the live ones end, `timeout` passes or a second
/// stop signal comes. Reloads go on meanwhile.
async fn drain(
    args: &ServeArgs,
    running: Running<'_>,
    signals: &mut Signals,
    stop: &'static str,
    timeout: Duration,
) {
    running.http.draining.store(true, Relaxed);
    let live = running.quotas.total();
    info!(
        signal = stop,
        allocations = live,
        timeout_secs = timeout.as_secs(),
        "draining: new allocations are refused, live ones relay until they end; \
         stopping when the last one ends or at drain-timeout (SIGTERM or SIGINT again stops at once)"
    );
    notify::stopping(&format!("draining {live} allocations"));
    let mut drain = Drain::new(Instant::now(), timeout, live);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // A SIGTERM drain cannot be resumed through the admin API.
                running.http.draining.store(true, Relaxed);
                match drain.step(Instant::now(), running.quotas.total()) {
                    Step::Wait => {}
                    Step::Report { live, left } => {
                        info!(allocations = live, left_secs = left.as_secs(), "draining");
                        notify::status(&format!("draining {live} allocations"));
                    }
                    Step::Done(End::Drained) => {
                        info!("drained: the last allocation ended; stopping");
                        return;
                    }
                    Step::Done(End::TimedOut { left }) => {
                        info!(allocations = left, "drain-timeout passed; stopping");
                        return;
                    }
                }
            }
            signal = signals.next() => match signal {
                Signal::Stop(name) => {
                    let live = running.quotas.total();
                    info!(signal = name, allocations = live, "second stop signal: stopping at once");
                    return;
                }
                Signal::Reload => {
                    let _ = reload(args, running).await;
                    notify::stopping(&format!("draining {} allocations", running.quotas.total()));
                }
                Signal::Certificates => reload_certificates(running),
            }
        }
    }
}

enum Signal {
    /// SIGTERM or SIGINT (named).
    Stop(&'static str),
    /// SIGHUP.
    Reload,
    /// SIGUSR2.
    Certificates,
}

struct Signals {
    hangup: UnixSignal,
    user2: UnixSignal,
    terminate: UnixSignal,
    interrupt: UnixSignal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            user2: signal(SignalKind::user_defined2())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.hangup.recv() => Signal::Reload,
            _ = self.user2.recv() => Signal::Certificates,
        }
    }
}

fn reload_certificates(running: Running<'_>) {
    if let Some(certs) = running.certs {
        let _ = certs.reload(); // logs the outcome
    }
}

/// SIGHUP: reloads the file (a bad file keeps the running configuration) and the certificate.
/// The loaded configuration, if it loaded.
async fn reload(args: &ServeArgs, running: Running<'_>) -> Option<Config> {
    notify::reloading();
    let loaded = match config::load(args) {
        Ok(mut config) => {
            running.generated.apply(&mut config);
            apply(running, &config).await;
            let waiting = config::restart_keys_changed(running.started, &config);
            if waiting.is_empty() {
                info!("configuration reloaded");
            } else {
                warn!(keys = %waiting.join(", "), "configuration reloaded; these keys change only on restart and keep their running values");
            }
            Some(config)
        }
        Err(error) => {
            warn!(%error, "configuration reload refused; the running configuration stays");
            None
        }
    };
    reload_certificates(running);
    loaded
}

/// Hands a reloaded configuration to every service. Relay workers confirm before the HTTP
/// endpoint signs with new secrets, so a credential minted right after a rotation verifies.
async fn apply(running: Running<'_>, config: &Config) {
    // The host's addresses are read again: an interface may have come or gone.
    let core = Arc::new(config.core_on_host(&crate::net::host_addresses()));
    if let Some(streams) = running.streams {
        streams.reload(core.clone());
    }
    if let Some(udp) = running.udp {
        udp.reload(core);
        let control = udp.control();
        let synced = tokio::task::spawn_blocking(move || control.sync(Duration::from_secs(2)))
            .await
            .unwrap_or(false);
        if !synced {
            warn!("a relay worker did not confirm the reload within 2 s");
        }
    }
    running.http.reload(HttpSettings::from_config(config));
}
