//! The `tern` binary: parses the command line, loads the config, and wires the pieces together.

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use tern::auth::NonceMint;
use tern::config::{
    self, Cli, Command, Config, ConfigCommand, ConfigError, CredentialsArgs, Format, Secret,
};
use tern::credentials::{ice_server_json, mint};
use tern::http::{HttpSettings, HttpState};
use tern::net::tls::CertStore;
use tern::net::{PortPool, RelayPorts, StreamDeps, StreamService, UdpService};
use tern::policy::Quotas;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Credentials(args)) => {
            print_credentials(args);
            return ExitCode::SUCCESS;
        }
        Some(Command::Config(ConfigCommand::Check { file })) => return check(&cli, file),
        Some(Command::Config(ConfigCommand::Convert { file })) => return convert(file),
        None => {}
    }
    let loaded = match config::load_all(&cli.serve) {
        Ok(loaded) => loaded,
        Err(error) => return configuration_error(&error),
    };
    let config = loaded.config;
    let certs = match load_certs(&config) {
        Ok(certs) => certs,
        Err(error) => return configuration_error(&error),
    };
    if let Err(error) = init_logging(&config) {
        return configuration_error(&error);
    }
    for warning in &loaded.import.warnings {
        warn!("{warning}");
    }
    let pidfile = match &config.pidfile {
        Some(path) => match std::fs::write(path, format!("{}\n", std::process::id())) {
            Ok(()) => Some(path.clone()),
            Err(error) => {
                let reason = format!("cannot write: {error}");
                return configuration_error(&invalid("pidfile", path, reason));
            }
        },
        None => None,
    };
    let served = serve(&cli, config, certs);
    if let Some(path) = pidfile {
        let _ = std::fs::remove_file(path);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error}");
            eprintln!("tern: {error}");
            ExitCode::FAILURE
        }
    }
}

fn configuration_error(error: &ConfigError) -> ExitCode {
    eprintln!("tern: configuration error: {error}");
    ExitCode::from(2)
}

fn invalid(key: &str, path: &std::path::Path, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: path.display().to_string(),
        reason,
    }
}

/// Certificate files are checked like any other configuration, before anything binds. The TLS
/// listener (unless no-tls) and HTTPS (http-tls) share them.
fn load_certs(config: &Config) -> Result<Option<Arc<CertStore>>, ConfigError> {
    let wants_certs = !config.no_tls || (config.http_tls && !config.no_http);
    match (&config.cert, &config.pkey, wants_certs) {
        (Some(cert), Some(pkey), true) => CertStore::load(cert, pkey).map(Some),
        _ => Ok(None),
    }
}

/// `tern config check FILE`: exit 0 and the effective configuration (secrets redacted) on
/// stdout, or 2 and the error.
fn check(cli: &Cli, file: &std::path::Path) -> ExitCode {
    let mut args = cli.serve.clone();
    args.config = Some(file.to_path_buf());
    let loaded = match config::load_all(&args) {
        Ok(loaded) => loaded,
        Err(error) => return configuration_error(&error),
    };
    if let Err(error) = load_certs(&loaded.config) {
        return configuration_error(&error);
    }
    for warning in &loaded.import.warnings {
        eprintln!("tern: warning: {warning}");
    }
    print!("{}", config::effective_toml(&loaded.config));
    let format = match loaded.format {
        Format::Toml => "turnserver.toml",
        Format::Coturn => "coTURN turnserver.conf",
    };
    eprintln!("tern: {}: valid ({format})", file.display());
    ExitCode::SUCCESS
}

/// `tern config convert FILE`: the file alone (no environment, no flags) as a turnserver.toml.
fn convert(file: &std::path::Path) -> ExitCode {
    match config::load_file(file) {
        Ok(loaded) => {
            print!(
                "{}",
                config::converted_toml(&loaded, &file.display().to_string())
            );
            ExitCode::SUCCESS
        }
        Err(error) => configuration_error(&error),
    }
}

fn serve(cli: &Cli, mut config: Config, certs: Option<Arc<CertStore>>) -> std::io::Result<()> {
    // Zero-config run: no credentials configured, so make a secret up and show how to use it.
    let generated_secret = if config.static_auth_secrets.is_empty() && config.users.is_empty() {
        let secret = random_secret();
        config.static_auth_secrets.push(Secret(secret.clone()));
        Some(secret)
    } else {
        None
    };
    // ... and an API key, so the credential endpoint (and the test page's mint button) works.
    let generated_api_key = if generated_secret.is_some() && config.api_keys.is_empty() {
        let key = random_secret();
        config.api_keys.push(Secret(key.clone()));
        Some(key)
    } else {
        None
    };
    let generated = Generated {
        secret: generated_secret,
        api_key: generated_api_key,
    };
    // Bind HTTP before the relay starts, so a taken port fails start-up before anything serves.
    let http_listener = if config.no_http {
        None
    } else {
        let listener = std::net::TcpListener::bind(config.http_listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on http {}: {e}", config.http_listen),
            )
        })?;
        listener.set_nonblocking(true)?;
        Some(listener)
    };
    let core = Arc::new(config.core_on_host(&tern::net::host_addresses()));
    let quotas = Arc::new(Quotas::new());
    let nonces = NonceMint::new();
    // Connection tasks (TCP/TLS), signals and the certificate watcher.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tern-stream")
        .enable_all()
        .build()?;
    // TCP/TLS listeners bind first: if one cannot, nothing has started serving.
    let bound_streams = StreamService::bind(&config, certs.clone())?;
    let udp = if config.no_udp {
        None
    } else {
        let udp = UdpService::start(&config, core.clone(), nonces.clone(), quotas.clone())?;
        for addr in &udp.listening {
            info!(%addr, transport = "udp", "listening");
        }
        Some(udp)
    };
    // TCP/TLS relays draw from the same port pool as the UDP workers.
    let ports = match &udp {
        Some(udp) => udp.ports.clone(),
        None => Arc::new(Mutex::new(RelayPorts::new(
            PortPool::new(config.min_port, config.max_port),
            config.sock_buf_size,
        ))),
    };
    // One drain switch for every relay (admin API, /readyz).
    let draining = match &udp {
        Some(udp) => udp.draining.clone(),
        None => Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let deps = StreamDeps {
        core,
        nonces,
        quotas,
        ports: ports.clone(),
        draining: draining.clone(),
    };
    let streams = match bound_streams {
        Some(bound) => Some(bound.serve(&config, runtime.handle(), deps)?),
        None => None,
    };
    if let Some(streams) = &streams {
        let tls_sniffed = certs.is_some() && !config.no_tls;
        for (addr, transport) in &streams.listening {
            match transport {
                tern::turn::Transport::Tcp if tls_sniffed => {
                    info!(%addr, transport = "tcp", also = "tls", "listening")
                }
                transport => info!(%addr, transport = transport.as_str(), "listening"),
            }
        }
    }
    if let Some(certs) = &certs {
        runtime.spawn(certs.clone().watch(std::time::Duration::from_secs(2)));
    }
    let workers = udp.as_ref().map_or(0, |udp| udp.stats.len());
    info!(workers, ports = %format!("{}-{}", config.min_port, config.max_port), realm = %config.realm, "tern started");
    if let Some(secret) = &generated.secret {
        print_first_run_banner(secret, generated.api_key.as_deref(), &config);
    }
    let http = HttpState::new(
        HttpSettings::from_config(&config),
        udp.as_ref(),
        streams.as_ref(),
        ports,
        draining,
    );
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = match http_listener {
        Some(listener) => {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // Validation made sure cert and pkey are set with http-tls, so certs is loaded.
            let tls = certs
                .as_ref()
                .filter(|_| config.http_tls)
                .map(|certs| certs.server_config(&[b"h2", b"http/1.1"]));
            let scheme = if tls.is_some() { "https" } else { "http" };
            info!(addr = %config.http_listen, scheme, "http listening");
            let state = http.clone();
            Some(runtime.spawn(async move {
                let shutdown = async {
                    let _ = http_stopped.await;
                };
                let served = match tls {
                    Some(tls) => tern::http::serve_tls(listener, tls, state, shutdown).await,
                    None => tern::http::serve(listener, state, shutdown).await,
                };
                if let Err(error) = served {
                    error!(%error, "http server failed");
                }
            }))
        }
        None => None,
    };
    http.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let running = Running {
        udp: udp.as_ref(),
        streams: streams.as_ref(),
        certs: certs.as_deref(),
        http: &http,
        started: &config,
    };
    runtime.block_on(wait_for_signals(cli, running, &generated))?;
    info!("shutting down");
    http.ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_http.send(());
    if let Some(task) = http_task {
        let _ = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), task).await
        });
    }
    if let Some(streams) = streams {
        streams.shutdown();
    }
    if let Some(udp) = udp {
        udp.shutdown();
    }
    Ok(())
}

/// What the zero-config run made up at start; reloads keep using it while the file still
/// configures none.
struct Generated {
    secret: Option<String>,
    api_key: Option<String>,
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

/// The services a reload or shutdown reaches.
#[derive(Clone, Copy)]
struct Running<'a> {
    udp: Option<&'a UdpService>,
    streams: Option<&'a StreamService>,
    certs: Option<&'a CertStore>,
    http: &'a HttpState,
    /// The configuration started with: restart-only keys keep these values.
    started: &'a Config,
}

/// Runs until SIGINT/SIGTERM; SIGHUP reloads the config file (a bad file keeps the old config)
/// and the TLS certificate; SIGUSR2 (coTURN's signal) reloads only the certificate.
async fn wait_for_signals(
    cli: &Cli,
    running: Running<'_>,
    generated: &Generated,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut user2 = signal(SignalKind::user_defined2())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = user2.recv() => {
                if let Some(certs) = running.certs {
                    let _ = certs.reload(); // logs the outcome
                }
            }
            _ = hangup.recv() => {
                match config::load(&cli.serve) {
                    Ok(mut config) => {
                        generated.apply(&mut config);
                        reload(running, &config).await;
                        let waiting = config::restart_keys_changed(running.started, &config);
                        if waiting.is_empty() {
                            info!("configuration reloaded");
                        } else {
                            warn!(keys = %waiting.join(", "), "configuration reloaded; these keys change only on restart and keep their running values");
                        }
                    }
                    Err(error) => warn!(%error, "configuration reload refused; the running configuration stays"),
                }
                if let Some(certs) = running.certs {
                    let _ = certs.reload(); // logs the outcome
                }
            }
        }
    }
}

/// Hands a reloaded configuration to every service. Relay workers confirm before the HTTP
/// endpoint signs with new secrets, so a credential minted right after a rotation verifies.
async fn reload(running: Running<'_>, config: &Config) {
    // The host's addresses are read again: an interface may have come or gone.
    let core = Arc::new(config.core_on_host(&tern::net::host_addresses()));
    if let Some(streams) = running.streams {
        streams.reload(core.clone());
    }
    if let Some(udp) = running.udp {
        udp.reload(core);
        let control = udp.control();
        let synced =
            tokio::task::spawn_blocking(move || control.sync(std::time::Duration::from_secs(2)))
                .await
                .unwrap_or(false);
        if !synced {
            warn!("a relay worker did not confirm the reload within 2 s");
        }
    }
    running.http.reload(HttpSettings::from_config(config));
}

fn print_first_run_banner(secret: &str, api_key: Option<&str>, config: &Config) {
    let minted = mint(secret, Some("demo"), 3600, unix_now());
    let port = config.listening_port;
    println!("No credentials configured: generated a static-auth-secret for this run.");
    println!("  static-auth-secret = {secret}");
    println!("Example credential, valid for one hour:");
    println!("  username:   {}", minted.username);
    println!("  credential: {}", minted.password);
    let mut urls = vec![format!("turn:127.0.0.1:{port}?transport=udp")];
    if !config.no_tcp {
        urls.push(format!("turn:127.0.0.1:{port}?transport=tcp"));
    }
    let ice = ice_server_json(&minted, &urls);
    println!("  RTCIceServer: {ice}");
    if let (Some(key), false) = (api_key, config.no_http) {
        let http = config.http_listen;
        let scheme = if config.http_tls { "https" } else { "http" };
        println!("No api-keys configured: generated one for the credential endpoint.");
        println!("  api-key = {key}");
        println!(
            "  curl -X POST -H 'Authorization: Bearer {key}' {scheme}://{http}/api/v1/credentials"
        );
        println!("Trickle ICE test page: {scheme}://{http}/");
    }
}

fn print_credentials(args: &CredentialsArgs) {
    let minted = mint(&args.secret, args.user.as_deref(), args.ttl, unix_now());
    println!("username: {}", minted.username);
    println!("password: {}", minted.password);
    println!("{}", ice_server_json(&minted, &args.uri));
}

fn random_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Logs go to standard error (unless `no-stdout-log`) and to `log-file` (appended; `stdout`
/// means standard output); `RUST_LOG`, when set, overrides `log-level`.
fn init_logging(config: &Config) -> Result<(), ConfigError> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let file = match &config.log_file {
        Some(path) if path.as_os_str() == "stdout" => Some(BoxMakeWriter::new(std::io::stdout)),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|error| invalid("log-file", path, format!("cannot open: {error}")))?;
            Some(BoxMakeWriter::new(Mutex::new(file)))
        }
        None => None,
    };
    let writer = match (file, config.no_stdout_log) {
        (Some(file), true) => file,
        (Some(file), false) => BoxMakeWriter::new(std::io::stderr.and(file)),
        (None, false) => BoxMakeWriter::new(std::io::stderr),
        (None, true) => BoxMakeWriter::new(std::io::sink),
    };
    // A line that cannot be written (a full disk) is dropped: reporting it on standard error,
    // tracing-subscriber's default, panics the logging thread when that fails too.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .log_internal_errors(false)
        .with_writer(writer);
    if config.log_file.is_some() {
        subscriber.with_ansi(false).init();
    } else {
        subscriber.init();
    }
    Ok(())
}
