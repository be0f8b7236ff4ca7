//! The `tern` binary: parses the command line, loads the config, and wires the pieces together.

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use tern::auth::NonceMint;
use tern::config::{self, Cli, Command, Config, CredentialsArgs, Secret};
use tern::credentials::{ice_server_json, mint};
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
    let core = Arc::new(CoreConfig::from_config(&config));
    let quotas = Arc::new(Quotas::new());
    let udp = UdpService::start(&config, core, NonceMint::new(), quotas)?;
    for addr in &udp.listening {
        info!(%addr, transport = "udp", "listening");
    }
    info!(workers = udp.stats.len(), ports = %format!("{}-{}", config.min_port, config.max_port), realm = %config.realm, "tern started");
    if let Some(secret) = &generated_secret {
        print_first_run_banner(secret, &config);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(wait_for_signals(cli, &udp, generated_secret.as_deref()))?;
    info!("shutting down");
    udp.shutdown();
    Ok(())
}

/// Runs until SIGINT/SIGTERM; SIGHUP reloads the config file (a bad file keeps the old config).
async fn wait_for_signals(
    cli: &Cli,
    udp: &UdpService,
    generated_secret: Option<&str>,
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
                    if let (Some(secret), true) = (generated_secret, config.static_auth_secrets.is_empty() && config.users.is_empty()) {
                        config.static_auth_secrets.push(Secret(secret.to_string()));
                    }
                    udp.reload(Arc::new(CoreConfig::from_config(&config)));
                    info!("configuration reloaded (listeners and port range change only on restart)");
                }
                Err(error) => warn!(%error, "configuration reload refused; the running configuration stays"),
            },
        }
    }
}

fn print_first_run_banner(secret: &str, config: &Config) {
    let minted = mint(secret, Some("demo"), 3600, unix_now());
    let port = config.listening_port;
    println!("No credentials configured: generated a static-auth-secret for this run.");
    println!("  static-auth-secret = {secret}");
    println!("Example credential, valid for one hour:");
    println!("  username:   {}", minted.username);
    println!("  credential: {}", minted.password);
    let ice = ice_server_json(&minted, &[format!("turn:127.0.0.1:{port}?transport=udp")]);
    println!("  RTCIceServer: {ice}");
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
