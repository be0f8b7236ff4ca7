//! Reading and merging the sources: defaults, the file, the environment and flags.

use super::file::{apply_toml, optional_text};
use super::values;
use super::{validate::validate, Config, ServeArgs};

/// A configuration problem, naming the key and the offending value (never a secret's value).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: invalid value {value:?}: {reason}")]
    Invalid { key: String, value: String, reason: String },
    #[error("unknown key {key:?}")]
    UnknownKey { key: String },
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    /// The file is not valid TOML; `message` has the line and column.
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
}

/// What syntax errors of [`from_toml_str`] name as the path.
const INLINE_ORIGIN: &str = "<string>";

/// Builds the config from (in rising precedence) defaults, the file, the environment and flags.
///
/// The environment and the flags both arrive in `args` (clap's `env`, a flag beating its
/// variable). A list given by a higher source replaces the lower one's list.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    if let Some(path) = &args.config {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError::Io { path: shown.clone(), reason: err.to_string() })?;
        apply_toml(&mut config, &text, &shown)?;
    }
    apply_args(&mut config, args)?;
    validate(&config)?;
    Ok(config)
}

/// Parses a TOML document on top of the defaults and validates it (no environment, no flags).
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    apply_toml(&mut config, text, INLINE_ORIGIN)?;
    validate(&config)?;
    Ok(config)
}

/// Applies every flag (or environment variable) that was given.
fn apply_args(config: &mut Config, args: &ServeArgs) -> Result<(), ConfigError> {
    if let Some(ips) = &args.listening_ip {
        config.listening_ips = each("listening-ip", ips, values::ip)?;
    }
    if let Some(ips) = &args.relay_ip {
        config.relay_ips = each("relay-ip", ips, values::ip)?;
    }
    if let Some(ips) = &args.external_ip {
        config.external_ips = each("external-ip", ips, values::external_ip)?;
    }
    if let Some(ranges) = &args.denied_peer_ip {
        config.denied_peer_ips = each("denied-peer-ip", ranges, values::range)?;
    }
    if let Some(ranges) = &args.allowed_peer_ip {
        config.allowed_peer_ips = each("allowed-peer-ip", ranges, values::range)?;
    }
    if let Some(secrets) = &args.static_auth_secret {
        config.static_auth_secrets = secrets.clone();
    }
    if let Some(users) = &args.users {
        config.users = users.iter().map(|user| values::user_entry(&user.0)).collect::<Result<_, _>>()?;
    }
    if let Some(realm) = &args.realm {
        config.realm = realm.clone();
    }
    if let Some(software) = &args.software {
        config.software = optional_text(software.clone());
    }
    if let Some(log_level) = &args.log_level {
        config.log_level = log_level.clone();
    }
    set(&mut config.listening_port, args.listening_port);
    set(&mut config.min_port, args.min_port);
    set(&mut config.max_port, args.max_port);
    set(&mut config.allow_loopback_peers, args.allow_loopback_peers);
    set(&mut config.default_allocate_lifetime, args.default_allocate_lifetime);
    set(&mut config.max_allocate_lifetime, args.max_allocate_lifetime);
    set(&mut config.permission_lifetime, args.permission_lifetime);
    set(&mut config.channel_lifetime, args.channel_lifetime);
    set(&mut config.stale_nonce, args.stale_nonce);
    set(&mut config.max_credential_ttl, args.max_credential_ttl);
    set(&mut config.user_quota, args.user_quota);
    set(&mut config.total_quota, args.total_quota);
    set(&mut config.relay_threads, args.relay_threads);
    set(&mut config.sock_buf_size, args.sock_buf_size);
    set(&mut config.no_udp, args.no_udp);
    // use-auth-secret, lt-cred-mech, fingerprint: accepted for coTURN compatibility; tern
    // always does this.
    let _ = (args.use_auth_secret, args.lt_cred_mech, args.fingerprint);
    Ok(())
}

fn set<T: Copy>(field: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *field = value;
    }
}

fn each<T>(
    key: &str,
    texts: &[String],
    parse: fn(&str, &str) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    texts.iter().map(|text| parse(key, text)).collect()
}
