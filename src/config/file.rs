//! The `turnserver.toml` shape: which keys exist, their TOML types, and how each lands in
//! [`Config`]. Keys use coTURN's names where the concept is the same.

use super::values::{self, invalid, REDACTED};
use super::{Config, ConfigError, Secret};
use toml::Value;

/// Applies the keys of a TOML document on top of `config`. `origin` names the document (its path)
/// in syntax errors. Cross-key checks are left to [`super::validate`].
pub(super) fn apply_toml(config: &mut Config, text: &str, origin: &str) -> Result<(), ConfigError> {
    let table: toml::Table = text.parse().map_err(|err| syntax_error(origin, text, &err))?;
    for (key, value) in &table {
        apply_key(config, key, value)?;
    }
    Ok(())
}

/// `path:line:column: message`. toml's own rendering quotes the offending source line, which
/// could hold a secret, so only its message and position are kept.
fn syntax_error(origin: &str, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim();
    let message = match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    };
    ConfigError::Syntax { path: origin.to_string(), message }
}

fn apply_key(config: &mut Config, key: &str, value: &Value) -> Result<(), ConfigError> {
    match key {
        "listening-ip" => config.listening_ips = each(key, value, values::ip)?,
        "listening-port" => config.listening_port = integer(key, value)?,
        "relay-ip" => config.relay_ips = each(key, value, values::ip)?,
        "external-ip" => config.external_ips = each(key, value, values::external_ip)?,
        "min-port" => config.min_port = integer(key, value)?,
        "max-port" => config.max_port = integer(key, value)?,
        "realm" => config.realm = string(key, value)?,
        "static-auth-secret" => {
            config.static_auth_secrets =
                secret_strings(key, value)?.into_iter().map(Secret).collect();
        }
        "users" => config.users = users(value)?,
        "denied-peer-ip" => config.denied_peer_ips = each(key, value, values::range)?,
        "allowed-peer-ip" => config.allowed_peer_ips = each(key, value, values::range)?,
        "allow-loopback-peers" => config.allow_loopback_peers = boolean(key, value)?,
        "default-allocate-lifetime" => config.default_allocate_lifetime = integer(key, value)?,
        "max-allocate-lifetime" => config.max_allocate_lifetime = integer(key, value)?,
        "permission-lifetime" => config.permission_lifetime = integer(key, value)?,
        "channel-lifetime" => config.channel_lifetime = integer(key, value)?,
        "stale-nonce" => config.stale_nonce = integer(key, value)?,
        "max-credential-ttl" => config.max_credential_ttl = integer(key, value)?,
        "user-quota" => config.user_quota = integer(key, value)?,
        "total-quota" => config.total_quota = integer(key, value)?,
        "software" => config.software = optional_text(string(key, value)?),
        "relay-threads" => config.relay_threads = integer(key, value)?,
        "sock-buf-size" => config.sock_buf_size = integer(key, value)?,
        "log-level" => config.log_level = string(key, value)?,
        "no-udp" => config.no_udp = boolean(key, value)?,
        // Accepted for coTURN compatibility; tern always does this.
        "use-auth-secret" | "lt-cred-mech" | "fingerprint" => {
            boolean(key, value)?;
        }
        _ => return Err(ConfigError::UnknownKey { key: key.to_string() }),
    }
    Ok(())
}

/// An empty `software` means "none", so a later source can switch it off.
pub(super) fn optional_text(text: String) -> Option<String> {
    Some(text).filter(|text| !text.is_empty())
}

/// A value as an error shows it: strings without TOML quoting, everything else as TOML.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn wrong_type(key: &str, value: &Value, expected: &str) -> ConfigError {
    invalid(key, &shown(value), format!("expected {expected}"))
}

fn string(key: &str, value: &Value) -> Result<String, ConfigError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(wrong_type(key, other, "a string")),
    }
}

fn boolean(key: &str, value: &Value) -> Result<bool, ConfigError> {
    value.as_bool().ok_or_else(|| wrong_type(key, value, "true or false"))
}

fn integer<T: TryFrom<i64> + Bounded>(key: &str, value: &Value) -> Result<T, ConfigError> {
    value
        .as_integer()
        .and_then(|number| T::try_from(number).ok())
        .ok_or_else(|| wrong_type(key, value, &format!("an integer in 0..={}", T::MAX_TEXT)))
}

/// The largest value of an integer field, for error messages.
trait Bounded {
    const MAX_TEXT: &'static str;
}
impl Bounded for u16 {
    const MAX_TEXT: &'static str = "65535";
}
impl Bounded for u32 {
    const MAX_TEXT: &'static str = "4294967295";
}
impl Bounded for u64 {
    const MAX_TEXT: &'static str = "9223372036854775807";
}
impl Bounded for usize {
    const MAX_TEXT: &'static str = "9223372036854775807";
}

/// A repeatable key: one string or a list of strings.
fn strings(key: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) => items.iter().map(|item| string(key, item)).collect(),
        other => Err(wrong_type(key, other, "a string or a list of strings")),
    }
}

/// Like [`strings`], but errors never show the value.
fn secret_strings(key: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    let redacted = || invalid(key, REDACTED, "expected a string or a list of strings");
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(redacted))
            .collect(),
        _ => Err(redacted()),
    }
}

fn each<T>(
    key: &str,
    value: &Value,
    parse: fn(&str, &str) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    strings(key, value)?.iter().map(|text| parse(key, text)).collect()
}

/// `[users]`: `name = "password"` or `name = "0x<32 hex digits>"`.
fn users(value: &Value) -> Result<Vec<(String, crate::auth::StaticKey)>, ConfigError> {
    let Value::Table(table) = value else {
        return Err(invalid("users", REDACTED, "expected a table: [users] name = \"password\""));
    };
    table
        .iter()
        .map(|(name, secret)| {
            let Value::String(secret) = secret else {
                return Err(invalid(&format!("users.{name}"), REDACTED, "expected a string"));
            };
            Ok((name.clone(), values::static_key(name, secret)?))
        })
        .collect()
}
