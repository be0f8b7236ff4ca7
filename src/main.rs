//! The `tern` binary: parses the command line, loads the config, and wires the pieces together.

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use tern::auth::NonceMint;
use tern::config::{self, Cli, Command, Config, CredentialsArgs, Secret};
use tern::credentials::{ice_server_json, mint};
use tern::http::{HttpSettings, HttpState};
use tern::net::UdpService;
use tern::policy::Quotas;
use tern::turn::CoreConfig;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Credentials(args)) = &cli.command {
        print_credentials(args);
        return ExitCode::SUCCESS;
    }
    let config = match config::load(&cli.serve) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tern: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_level);
    match serve(&cli, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error}");
            eprintln!("tern: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: &Cli, mut config: Config) -> std::io::Result<()> {
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
    // TODO(https): serve TLS here with the TLS listener's certificate loader once it lands.
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
    let core = Arc::new(CoreConfig::from_config(&config));
    let quotas = Arc::new(Quotas::new());
    let udp = UdpService::start(&config, core, NonceMint::new(), quotas)?;
    for addr in &udp.listening {
        info!(%addr, transport = "udp", "listening");
    }
    info!(workers = udp.stats.len(), ports = %format!("{}-{}", config.min_port, config.max_port), realm = %config.realm, "tern started");
    if let Some(secret) = &generated.secret {
        print_first_run_banner(secret, generated.api_key.as_deref(), &config);
    }
    // Signals and the HTTP endpoint; relay workers have their own threads and never wait on this.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tern-http")
        .enable_all()
        .build()?;
    let http = HttpState::new(HttpSettings::from_config(&config), &udp);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = match http_listener {
        Some(listener) => {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            info!(addr = %config.http_listen, "http listening");
            let state = http.clone();
            Some(runtime.spawn(async move {
                let shutdown = async {
                    let _ = http_stopped.await;
                };
                if let Err(error) = tern::http::serve(listener, state, shutdown).await {
                    error!(%error, "http server failed");
                }
            }))
        }
        None => None,
    };
    http.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    runtime.block_on(wait_for_signals(cli, &udp, &http, &generated))?;
    info!("shutting down");
    http.ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_http.send(());
    if let Some(task) = http_task {
        let _ = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), task).await
        });
    }
    udp.shutdown();
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

/// Runs until SIGINT/SIGTERM; SIGHUP reloads the config file (a bad file keeps the old config).
async fn wait_for_signals(
    cli: &Cli,
    udp: &UdpService,
    http: &HttpState,
    generated: &Generated,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => match config::load(&cli.serve) {
                Ok(mut config) => {
                    generated.apply(&mut config);
                    udp.reload(Arc::new(CoreConfig::from_config(&config)));
                    // Workers take the new secrets before the endpoint signs with them, so a
                    // credential minted right after a rotation verifies.
                    let control = udp.control();
                    let synced = tokio::task::spawn_blocking(move || control.sync(std::time::Duration::from_secs(2))).await.unwrap_or(false);
                    if !synced {
                        warn!("a relay worker did not confirm the reload within 2 s");
                    }
                    http.reload(HttpSettings::from_config(&config));
                    info!("configuration reloaded (listeners and port range change only on restart)");
                }
                Err(error) => warn!(%error, "configuration reload refused; the running configuration stays"),
            },
        }
    }
}

fn print_first_run_banner(secret: &str, api_key: Option<&str>, config: &Config) {
    let minted = mint(secret, Some("demo"), 3600, unix_now());
    let port = config.listening_port;
    println!("No credentials configured: generated a static-auth-secret for this run.");
    println!("  static-auth-secret = {secret}");
    println!("Example credential, valid for one hour:");
    println!("  username:   {}", minted.username);
    println!("  credential: {}", minted.password);
    let ice = ice_server_json(&minted, &[format!("turn:127.0.0.1:{port}?transport=udp")]);
    println!("  RTCIceServer: {ice}");
    if let (Some(key), false) = (api_key, config.no_http) {
        let http = config.http_listen;
        println!("No api-keys configured: generated one for the credential endpoint.");
        println!("  api-key = {key}");
        println!(
            "  curl -X POST -H 'Authorization: Bearer {key}' http://{http}/api/v1/credentials"
        );
        println!("Trickle ICE test page: http://{http}/");
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

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}
