//! Command-line interface (clap).
//!
//! Every config-file key has a flag of the same kebab-case name and an environment variable
//! `TERN_<KEY>` (upper snake case). A flag beats its environment variable (clap does that); both
//! beat the file (see [`super::load`]). List keys repeat as flags and are comma-separated in
//! the environment (and may be comma-separated as flags too).

use super::Secret;
use clap::builder::BoolishValueParser;
use std::convert::Infallible;
use std::path::PathBuf;

/// `tern [FLAGS]` serves; `tern credentials …` mints a REST credential.
#[derive(Debug, clap::Parser)]
#[command(name = "tern", version, about = "TURN/STUN relay server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a TURN REST credential and an RTCIceServer JSON object.
    Credentials(CredentialsArgs),
}

/// Wraps a secret flag value so `Debug` of the parsed arguments never shows it.
fn secret(value: &str) -> Result<Secret, Infallible> {
    Ok(Secret(value.to_string()))
}

/// Flags for serving; each overrides the same-named key of the config file. `None` = not given.
///
/// Boolean flags take an optional value: `--no-udp` means true, `--no-udp=false` false.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Path of a turnserver.toml.
    #[arg(long, short = 'c', env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on (repeatable) [default: 0.0.0.0].
    #[arg(
        long,
        env = "TERN_LISTENING_IP",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub listening_ip: Option<Vec<String>>,
    /// UDP port to listen on [default: 3478].
    #[arg(long, env = "TERN_LISTENING_PORT", value_name = "PORT")]
    pub listening_port: Option<u16>,
    /// Second port for RFC 5780 NAT discovery (with two listening addresses of a family),
    /// 0 = listening-port + 1 [default: 0].
    #[arg(long, env = "TERN_ALT_LISTENING_PORT", value_name = "PORT")]
    pub alt_listening_port: Option<u16>,
    /// Server to send clients to with 300 Try Alternate while draining or over total-quota,
    /// IP:PORT or [IPv6]:PORT (repeatable) [default: none].
    #[arg(
        long,
        env = "TERN_ALTERNATE_SERVER",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub alternate_server: Option<Vec<String>>,
    /// Address relay sockets bind to (repeatable) [default: the address the client reached].
    #[arg(long, env = "TERN_RELAY_IP", value_name = "IP", value_delimiter = ',')]
    pub relay_ip: Option<Vec<String>>,
    /// Public address to advertise, `PUBLIC` or `PUBLIC/PRIVATE` (repeatable).
    #[arg(
        long,
        env = "TERN_EXTERNAL_IP",
        value_name = "IP[/IP]",
        value_delimiter = ','
    )]
    pub external_ip: Option<Vec<String>>,
    /// Lowest relay port [default: 49152].
    #[arg(long, env = "TERN_MIN_PORT", value_name = "PORT")]
    pub min_port: Option<u16>,
    /// Highest relay port [default: 65535].
    #[arg(long, env = "TERN_MAX_PORT", value_name = "PORT")]
    pub max_port: Option<u16>,
    /// Realm [default: tern].
    #[arg(long, env = "TERN_REALM")]
    pub realm: Option<String>,
    /// TURN REST API secret (repeatable, for rotation).
    #[arg(
        long,
        env = "TERN_STATIC_AUTH_SECRET",
        value_name = "SECRET",
        value_delimiter = ',',
        value_parser = secret,
        hide_env_values = true
    )]
    pub static_auth_secret: Option<Vec<Secret>>,
    /// Static user `NAME:PASSWORD` or `NAME:0x<32 hex digits>` (repeatable).
    #[arg(
        long,
        alias = "user",
        env = "TERN_USERS",
        value_name = "NAME:PASSWORD",
        value_delimiter = ',',
        value_parser = secret,
        hide_env_values = true
    )]
    pub users: Option<Vec<Secret>>,
    /// Peer addresses to deny, in addition to the built-in list (repeatable).
    #[arg(
        long,
        env = "TERN_DENIED_PEER_IP",
        value_name = "RANGE",
        value_delimiter = ','
    )]
    pub denied_peer_ip: Option<Vec<String>>,
    /// Peer addresses to allow even if denied (repeatable).
    #[arg(
        long,
        env = "TERN_ALLOWED_PEER_IP",
        value_name = "RANGE",
        value_delimiter = ','
    )]
    pub allowed_peer_ip: Option<Vec<String>>,
    /// Allow relaying to loopback addresses [default: false].
    #[arg(
        long,
        env = "TERN_ALLOW_LOOPBACK_PEERS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub allow_loopback_peers: Option<bool>,
    /// Also accept channel numbers 0x5000-0x7FFF (RFC 5766 clients) [default: false].
    #[arg(
        long,
        env = "TERN_ALLOW_RFC5766_CHANNEL_NUMBERS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub allow_rfc5766_channel_numbers: Option<bool>,
    /// Allocation lifetime when the client asks for none, seconds [default: 600].
    #[arg(long, env = "TERN_DEFAULT_ALLOCATE_LIFETIME", value_name = "SECONDS")]
    pub default_allocate_lifetime: Option<u32>,
    /// Longest allocation lifetime, seconds [default: 3600].
    #[arg(long, env = "TERN_MAX_ALLOCATE_LIFETIME", value_name = "SECONDS")]
    pub max_allocate_lifetime: Option<u32>,
    /// Permission lifetime, seconds [default: 300].
    #[arg(long, env = "TERN_PERMISSION_LIFETIME", value_name = "SECONDS")]
    pub permission_lifetime: Option<u32>,
    /// Channel binding lifetime, seconds [default: 600].
    #[arg(long, env = "TERN_CHANNEL_LIFETIME", value_name = "SECONDS")]
    pub channel_lifetime: Option<u32>,
    /// Nonce lifetime, seconds [default: 600].
    #[arg(long, env = "TERN_STALE_NONCE", value_name = "SECONDS")]
    pub stale_nonce: Option<u32>,
    /// Longest accepted REST credential validity, seconds [default: 86400].
    #[arg(long, env = "TERN_MAX_CREDENTIAL_TTL", value_name = "SECONDS")]
    pub max_credential_ttl: Option<u64>,
    /// Concurrent allocations per user, 0 = unlimited [default: 0].
    #[arg(long, env = "TERN_USER_QUOTA", value_name = "N")]
    pub user_quota: Option<u32>,
    /// Concurrent allocations in total, 0 = unlimited [default: 0].
    #[arg(long, env = "TERN_TOTAL_QUOTA", value_name = "N")]
    pub total_quota: Option<u32>,
    /// SOFTWARE attribute text; empty = none [default: none].
    #[arg(long, env = "TERN_SOFTWARE", value_name = "TEXT")]
    pub software: Option<String>,
    /// Relay threads, 0 = number of cores [default: 0].
    #[arg(long, env = "TERN_RELAY_THREADS", value_name = "N")]
    pub relay_threads: Option<usize>,
    /// SO_RCVBUF/SO_SNDBUF of relay sockets, 0 = kernel default [default: 0].
    #[arg(long, env = "TERN_SOCK_BUF_SIZE", value_name = "BYTES")]
    pub sock_buf_size: Option<usize>,
    /// Log filter, as for RUST_LOG [default: info].
    #[arg(long, env = "TERN_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Don't serve UDP [default: false].
    #[arg(
        long,
        env = "TERN_NO_UDP",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub no_udp: Option<bool>,
    /// Address:port of the HTTP endpoint [default: 127.0.0.1:8080].
    #[arg(long, env = "TERN_HTTP_LISTEN", value_name = "ADDR:PORT")]
    pub http_listen: Option<String>,
    /// Don't serve HTTP (credentials, metrics, health, admin, test page) [default: false].
    #[arg(
        long,
        env = "TERN_NO_HTTP",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub no_http: Option<bool>,
    /// Serve the HTTP endpoint as HTTPS with cert/pkey [default: false].
    #[arg(
        long,
        env = "TERN_HTTP_TLS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub http_tls: Option<bool>,
    /// Bearer key for the credential endpoint (repeatable).
    #[arg(
        long,
        env = "TERN_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        value_parser = secret,
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<Secret>>,
    /// Bearer key for the admin API (repeatable); none = admin API off.
    #[arg(
        long,
        env = "TERN_ADMIN_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        value_parser = secret,
        hide_env_values = true
    )]
    pub admin_api_keys: Option<Vec<Secret>>,
    /// TURN/STUN URI handed out with credentials (repeatable) [default: derived from listeners].
    #[arg(
        long,
        env = "TERN_PUBLIC_URIS",
        value_name = "URI",
        value_delimiter = ','
    )]
    pub public_uris: Option<Vec<String>>,
    /// Don't listen on TCP (listening-port) [default: false].
    #[arg(
        long,
        env = "TERN_NO_TCP",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub no_tcp: Option<bool>,
    /// Don't serve TLS [default: false].
    #[arg(
        long,
        env = "TERN_NO_TLS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub no_tls: Option<bool>,
    /// TLS port (turns:) [default: 5349].
    #[arg(long, env = "TERN_TLS_LISTENING_PORT", value_name = "PORT")]
    pub tls_listening_port: Option<u16>,
    /// TLS certificate chain, PEM [default: none].
    #[arg(long, env = "TERN_CERT", value_name = "PATH")]
    pub cert: Option<String>,
    /// TLS private key, PEM [default: none].
    #[arg(long, env = "TERN_PKEY", value_name = "PATH")]
    pub pkey: Option<String>,
    /// Sources whose PROXY protocol headers are accepted (repeatable) [default: none].
    #[arg(
        long,
        env = "TERN_PROXY_PROTOCOL_TRUSTED",
        value_name = "RANGE",
        value_delimiter = ','
    )]
    pub proxy_protocol_trusted: Option<Vec<String>>,
    /// TCP/TLS connections per client address, 0 = unlimited [default: 64].
    #[arg(long, env = "TERN_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// TCP/TLS connections in total, 0 = unlimited [default: 10000].
    #[arg(long, env = "TERN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Seconds a TCP/TLS connection may take to send its first valid STUN message [default: 10].
    #[arg(long, env = "TERN_STREAM_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub stream_idle_timeout: Option<u32>,
    /// Seconds a started TCP/TLS frame may take to complete [default: 10].
    #[arg(long, env = "TERN_PARTIAL_FRAME_TIMEOUT", value_name = "SECONDS")]
    pub partial_frame_timeout: Option<u32>,
    /// Accepted for coTURN compatibility; tern always does this.
    #[arg(
        long,
        env = "TERN_USE_AUTH_SECRET",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub use_auth_secret: Option<bool>,
    /// Accepted for coTURN compatibility; tern always does this.
    #[arg(
        long,
        env = "TERN_LT_CRED_MECH",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub lt_cred_mech: Option<bool>,
    /// Accepted for coTURN compatibility; tern always does this.
    #[arg(
        long,
        env = "TERN_FINGERPRINT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub fingerprint: Option<bool>,
}

#[derive(Debug, clap::Args)]
pub struct CredentialsArgs {
    /// The static-auth-secret to sign with.
    #[arg(long, env = "TERN_STATIC_AUTH_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long)]
    pub user: Option<String>,
    /// Seconds the credential stays valid.
    #[arg(long, default_value_t = 86400)]
    pub ttl: u64,
    /// TURN/STUN URIs for the RTCIceServer object (repeatable).
    #[arg(long)]
    pub uri: Vec<String>,
}
