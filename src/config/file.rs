//! The `turnserver.toml` shape: which keys exist, their TOML types, and how each lands in
//! [`Config`]. Keys use coTURN's names where the concept is the same.

use super::values::{self, invalid, REDACTED};
use super::{Config, ConfigError, Secret};
use toml::Value;

/// Applies the keys of a TOML document on top of `config`. `origin` names the document (its path)
/// in syntax errors. Cross-key checks are left to [`super::validate`].
pub(super) fn apply_toml(config: &mut Config, text: &str, origin: &str) -> Result<(), ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|err| syntax_error(origin, text, &err))?;
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
    ConfigError::Syntax {
        path: origin.to_string(),
        message,
    }
}

fn apply_key(config: &mut Config, key: &str, value: &Value) -> Result<(), ConfigError> {
    match key {
        "listening-ip" => config.listening_ips = each(key, value, values::ip)?,
        "listening-port" => config.listening_port = integer(key, value)?,
        "alt-listening-port" => config.alt_listening_port = integer(key, value)?,
        "alternate-server" => config.alternate_servers = each(key, value, values::server_address)?,
        "relay-ip" => config.relay_ips = each(key, value, values::ip)?,
        "external-ip" => config.external_ips = each(key, value, values::external_ip)?,
        "min-port" => config.min_port = integer(key, value)?,
        "max-port" => config.max_port = integer(key, value)?,
        "realm" => config.realm = string(key, value)?,
        "static-auth-secret" => {
            config.static_auth_secrets = secret_strings(key, value)?
                .into_iter()
                .map(Secret)
                .collect();
        }
        "users" => config.users = users(value)?,
        "denied-peer-ip" => config.denied_peer_ips = each(key, value, values::range)?,
        "allowed-peer-ip" => config.allowed_peer_ips = each(key, value, values::range)?,
        "allow-loopback-peers" => config.allow_loopback_peers = boolean(key, value)?,
        "allow-rfc5766-channel-numbers" => {
            config.allow_rfc5766_channel_numbers = boolean(key, value)?
        }
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
        "http-listen" => config.http_listen = values::socket_addr(key, &string(key, value)?)?,
        "no-http" => config.no_http = boolean(key, value)?,
        "http-tls" => config.http_tls = boolean(key, value)?,
        "api-keys" => {
            config.api_keys = secret_strings(key, value)?
                .into_iter()
                .map(Secret)
                .collect()
        }
        "admin-api-keys" => {
            config.admin_api_keys = secret_strings(key, value)?
                .into_iter()
                .map(Secret)
                .collect()
        }
        "public-uris" => config.public_uris = strings(key, value)?,
        "no-tcp" => config.no_tcp = boolean(key, value)?,
        "no-tls" => config.no_tls = boolean(key, value)?,
        "tls-listening-port" => config.tls_listening_port = integer(key, value)?,
        "cert" => config.cert = optional_text(string(key, value)?).map(Into::into),
        "pkey" => config.pkey = optional_text(string(key, value)?).map(Into::into),
        "proxy-protocol-trusted" => {
            config.proxy_protocol_trusted = each(key, value, values::range)?
        }
        "max-connections-per-ip" => config.max_connections_per_ip = integer(key, value)?,
        "max-connections" => config.max_connections = integer(key, value)?,
        "stream-idle-timeout" => config.stream_idle_timeout = integer(key, value)?,
        "partial-frame-timeout" => config.partial_frame_timeout = integer(key, value)?,
        // Accepted for coTURN compatibility; tern always does this.
        "use-auth-secret" | "lt-cred-mech" | "fingerprint" => {
            boolean(key, value)?;
        }
        _ => {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
            })
        }
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
    value
        .as_bool()
        .ok_or_else(|| wrong_type(key, value, "true or false"))
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
    strings(key, value)?
        .iter()
        .map(|text| parse(key, text))
        .collect()
}

/// `[users]`: `name = "password"` or `name = "0x<32 hex digits>"`.
fn users(value: &Value) -> Result<Vec<(String, crate::auth::StaticKey)>, ConfigError> {
    let Value::Table(table) = value else {
        return Err(invalid(
            "users",
            REDACTED,
            "expected a table: [users] name = \"password\"",
        ));
    };
    table
        .iter()
        .map(|(name, secret)| {
            let Value::String(secret) = secret else {
                return Err(invalid(
                    &format!("users.{name}"),
                    REDACTED,
                    "expected a string",
                ));
            };
            Ok((name.clone(), values::static_key(name, secret)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{from_toml_str, ExternalIp};
    use super::*;
    use crate::auth::StaticKey;
    use std::net::IpAddr;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn parse(text: &str) -> Config {
        from_toml_str(text).unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    fn invalid_key_value(text: &str) -> (String, String) {
        match from_toml_str(text) {
            Err(ConfigError::Invalid { key, value, .. }) => (key, value),
            other => panic!("{text}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let config = Config::default();
        assert_eq!(config.listening_ips, vec![ip("0.0.0.0")]);
        assert_eq!(config.listening_port, 3478);
        assert!(config.relay_ips.is_empty() && config.external_ips.is_empty());
        assert_eq!((config.min_port, config.max_port), (49152, 65535));
        assert_eq!(config.realm, "tern");
        assert!(config.static_auth_secrets.is_empty() && config.users.is_empty());
        assert!(config.denied_peer_ips.is_empty() && config.allowed_peer_ips.is_empty());
        assert!(!config.allow_loopback_peers);
        assert_eq!(
            (
                config.default_allocate_lifetime,
                config.max_allocate_lifetime
            ),
            (600, 3600)
        );
        assert_eq!(
            (config.permission_lifetime, config.channel_lifetime),
            (300, 600)
        );
        assert_eq!(
            (config.stale_nonce, config.max_credential_ttl),
            (600, 86400)
        );
        assert_eq!((config.user_quota, config.total_quota), (0, 0));
        assert_eq!(config.software, None);
        assert_eq!((config.relay_threads, config.sock_buf_size), (0, 0));
        assert_eq!(config.log_level, "info");
        assert!(!config.no_udp);
        assert_eq!(parse(""), config, "an empty file is the defaults");
    }

    #[test]
    fn example_file_is_the_defaults() {
        assert_eq!(
            parse(include_str!("../../turnserver.toml")),
            Config::default()
        );
    }

    /// The commented-out examples are valid too (they include ranges, hence `range_`).
    #[test]
    fn range_example_file_commented_lines_parse() {
        let uncommented: String = include_str!("../../turnserver.toml")
            .lines()
            .map(|line| {
                let rest = line.strip_prefix("# ").unwrap_or(line);
                let is_setting = rest == "[users]"
                    || rest.split_once(" = ").is_some_and(|(key, _)| {
                        !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                    });
                if is_setting {
                    rest
                } else {
                    line
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&uncommented);
        assert!(!config.static_auth_secrets.is_empty() && config.users.len() == 2);
        assert!(config.software.is_some() && !config.allowed_peer_ips.is_empty());
    }

    #[test]
    fn example_file_lists_every_key() {
        let example = include_str!("../../turnserver.toml");
        let keys = [
            "listening-ip",
            "listening-port",
            "alt-listening-port",
            "alternate-server",
            "relay-ip",
            "external-ip",
            "min-port",
            "max-port",
            "realm",
            "static-auth-secret",
            "[users]",
            "denied-peer-ip",
            "allowed-peer-ip",
            "allow-loopback-peers",
            "allow-rfc5766-channel-numbers",
            "default-allocate-lifetime",
            "max-allocate-lifetime",
            "permission-lifetime",
            "channel-lifetime",
            "stale-nonce",
            "max-credential-ttl",
            "user-quota",
            "total-quota",
            "software",
            "relay-threads",
            "sock-buf-size",
            "log-level",
            "no-udp",
            "http-listen",
            "no-http",
            "http-tls",
            "api-keys",
            "admin-api-keys",
            "public-uris",
            "no-tcp",
            "no-tls",
            "tls-listening-port",
            "cert",
            "pkey",
            "proxy-protocol-trusted",
            "max-connections-per-ip",
            "max-connections",
            "stream-idle-timeout",
            "partial-frame-timeout",
            "use-auth-secret",
            "lt-cred-mech",
            "fingerprint",
        ];
        for key in keys {
            let listed = example.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{key} =")) || line == key
            });
            assert!(listed, "{key} missing from turnserver.toml");
        }
    }

    #[test]
    fn stream_keys() {
        let defaults = Config::default();
        assert_eq!(defaults.tls_listening_port, 5349);
        assert!(!defaults.no_tcp && !defaults.no_tls);
        assert!(defaults.cert.is_none() && defaults.pkey.is_none());
        assert!(defaults.proxy_protocol_trusted.is_empty());
        assert_eq!(
            (defaults.max_connections_per_ip, defaults.max_connections),
            (64, 10000)
        );
        assert_eq!(
            (defaults.stream_idle_timeout, defaults.partial_frame_timeout),
            (10, 10)
        );
        let config = parse(
            r#"
            no-tcp = true
            no-tls = true
            tls-listening-port = 443
            cert = "/etc/tern/cert.pem"
            pkey = "/etc/tern/key.pem"
            proxy-protocol-trusted = ["10.0.0.0/8", "192.0.2.7"]
            max-connections-per-ip = 3
            max-connections = 100
            stream-idle-timeout = 5
            partial-frame-timeout = 2
            "#,
        );
        assert!(config.no_tcp && config.no_tls);
        assert_eq!(config.tls_listening_port, 443);
        assert_eq!(
            config.cert.as_deref(),
            Some(std::path::Path::new("/etc/tern/cert.pem"))
        );
        assert_eq!(
            config.pkey.as_deref(),
            Some(std::path::Path::new("/etc/tern/key.pem"))
        );
        assert_eq!(config.proxy_protocol_trusted.len(), 2);
        assert_eq!(
            (config.max_connections_per_ip, config.max_connections),
            (3, 100)
        );
        assert_eq!(
            (config.stream_idle_timeout, config.partial_frame_timeout),
            (5, 2)
        );
        let (key, _) = invalid_key_value(r#"proxy-protocol-trusted = "nope""#);
        assert_eq!(key, "proxy-protocol-trusted");
        let (key, _) = invalid_key_value(r#"cert = "/a.pem""#);
        assert_eq!(key, "cert", "cert without pkey");
        let (key, _) = invalid_key_value("stream-idle-timeout = 0");
        assert_eq!(key, "stream-idle-timeout");
        let (key, _) = invalid_key_value("partial-frame-timeout = 0");
        assert_eq!(key, "partial-frame-timeout");
        let (key, _) = invalid_key_value("tls-listening-port = 0");
        assert_eq!(key, "tls-listening-port");
        let (key, _) = invalid_key_value("no-udp = true\nno-tcp = true");
        assert_eq!(key, "no-udp", "every listener off");
    }

    #[test]
    fn scalar_keys() {
        let config = parse(
            r#"
            listening-port = 3479
            min-port = 40000
            max-port = 40100
            realm = "example.org"
            allow-loopback-peers = true
            default-allocate-lifetime = 300
            max-allocate-lifetime = 1200
            permission-lifetime = 120
            channel-lifetime = 240
            stale-nonce = 60
            max-credential-ttl = 3600
            user-quota = 5
            total-quota = 1000
            software = "tern/1"
            relay-threads = 4
            sock-buf-size = 1048576
            log-level = "debug,tern::auth=trace"
            no-udp = true
            "#,
        );
        assert_eq!(config.listening_port, 3479);
        assert_eq!((config.min_port, config.max_port), (40000, 40100));
        assert_eq!(config.realm, "example.org");
        assert!(config.allow_loopback_peers);
        assert_eq!(
            (
                config.default_allocate_lifetime,
                config.max_allocate_lifetime
            ),
            (300, 1200)
        );
        assert_eq!(
            (config.permission_lifetime, config.channel_lifetime),
            (120, 240)
        );
        assert_eq!((config.stale_nonce, config.max_credential_ttl), (60, 3600));
        assert_eq!((config.user_quota, config.total_quota), (5, 1000));
        assert_eq!(config.software.as_deref(), Some("tern/1"));
        assert_eq!((config.relay_threads, config.sock_buf_size), (4, 1048576));
        assert_eq!(config.log_level, "debug,tern::auth=trace");
        assert!(config.no_udp);
    }

    #[test]
    fn empty_software_means_none() {
        assert_eq!(parse(r#"software = """#).software, None);
    }

    #[test]
    fn listening_ip_list_or_string() {
        assert_eq!(
            parse(r#"listening-ip = "::""#).listening_ips,
            vec![ip("::")]
        );
        assert_eq!(
            parse(r#"listening-ip = ["192.0.2.1", "2001:db8::1"]"#).listening_ips,
            vec![ip("192.0.2.1"), ip("2001:db8::1")]
        );
    }

    #[test]
    fn relay_ip_list_or_string() {
        assert_eq!(
            parse(r#"relay-ip = "10.0.0.5""#).relay_ips,
            vec![ip("10.0.0.5")]
        );
        assert_eq!(
            parse(r#"relay-ip = ["10.0.0.5", "fd00::5"]"#).relay_ips,
            vec![ip("10.0.0.5"), ip("fd00::5")]
        );
    }

    #[test]
    fn external_ip_list_or_string_and_forms() {
        let public = ExternalIp {
            public: ip("203.0.113.7"),
            private: None,
        };
        let mapped = ExternalIp {
            public: ip("203.0.113.8"),
            private: Some(ip("10.0.0.5")),
        };
        assert_eq!(
            parse(r#"external-ip = "203.0.113.7""#).external_ips,
            vec![public]
        );
        assert_eq!(
            parse(r#"external-ip = ["203.0.113.7", "203.0.113.8/10.0.0.5"]"#).external_ips,
            vec![public, mapped]
        );
    }

    #[test]
    fn static_auth_secret_list_or_string() {
        assert_eq!(
            parse(r#"static-auth-secret = "s1""#).static_auth_secrets,
            vec![Secret("s1".into())]
        );
        assert_eq!(
            parse(r#"static-auth-secret = ["s1", "s2"]"#).static_auth_secrets,
            vec![Secret("s1".into()), Secret("s2".into())]
        );
    }

    #[test]
    fn range_denied_peer_ip_list_or_string() {
        let one = parse(r#"denied-peer-ip = "203.0.113.0/24""#).denied_peer_ips;
        assert_eq!(one, vec!["203.0.113.0/24".parse().unwrap()]);
        let two = parse(r#"denied-peer-ip = ["203.0.113.0/24", "198.51.100.1-198.51.100.9"]"#);
        assert_eq!(two.denied_peer_ips.len(), 2);
    }

    #[test]
    fn range_allowed_peer_ip_list_or_string() {
        let one = parse(r#"allowed-peer-ip = "10.0.0.1""#).allowed_peer_ips;
        assert_eq!(one, vec!["10.0.0.1".parse().unwrap()]);
        let two = parse(r#"allowed-peer-ip = ["10.0.0.0/8", "fd00::/8"]"#);
        assert_eq!(two.allowed_peer_ips.len(), 2);
    }

    #[test]
    fn range_unparsable_peer_ip_names_key_and_value() {
        for key in ["denied-peer-ip", "allowed-peer-ip"] {
            let (k, v) = invalid_key_value(&format!(r#"{key} = ["10.0.0.0/8", "10.0.0.0/99"]"#));
            assert_eq!((k.as_str(), v.as_str()), (key, "10.0.0.0/99"));
        }
    }

    #[test]
    fn users_table_both_forms() {
        let config = parse(
            r#"
            [users]
            alice = "password"
            bob = "0x00112233445566778899aabbccddeeff"
            "#,
        );
        let mut users = config.users;
        users.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            users[0],
            ("alice".into(), StaticKey::Password("password".into()))
        );
        assert_eq!(
            users[1],
            (
                "bob".into(),
                StaticKey::Key([
                    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
                    0xdd, 0xee, 0xff
                ])
            )
        );
    }

    #[test]
    fn coturn_compatibility_booleans_change_nothing() {
        let text = "use-auth-secret = true\nlt-cred-mech = false\nfingerprint = true\n";
        assert_eq!(parse(text), Config::default());
        assert_eq!(
            invalid_key_value(r#"fingerprint = "yes""#),
            ("fingerprint".into(), "yes".into())
        );
    }

    #[test]
    fn unknown_key_is_named() {
        for (text, key) in [
            ("listening-prot = 3478", "listening-prot"),
            ("[extra]\na = 1", "extra"),
        ] {
            match from_toml_str(text) {
                Err(ConfigError::UnknownKey { key: named }) => assert_eq!(named, key),
                other => panic!("{text}: {other:?}"),
            }
        }
        let shown = from_toml_str("realms = \"x\"").unwrap_err().to_string();
        assert!(shown.contains("realms"), "{shown}");
    }

    #[test]
    fn wrong_types_name_key_and_value() {
        let cases = [
            (r#"listening-port = "abc""#, "listening-port", "abc"),
            ("listening-port = 70000", "listening-port", "70000"),
            ("min-port = -1", "min-port", "-1"),
            ("max-port = 1.5", "max-port", "1.5"),
            ("realm = 5", "realm", "5"),
            (
                r#"allow-loopback-peers = "true""#,
                "allow-loopback-peers",
                "true",
            ),
            ("no-udp = 1", "no-udp", "1"),
            ("stale-nonce = 4294967296", "stale-nonce", "4294967296"),
            ("relay-threads = -4", "relay-threads", "-4"),
            ("listening-ip = 7", "listening-ip", "7"),
            ("relay-ip = [1]", "relay-ip", "1"),
            ("log-level = true", "log-level", "true"),
            ("software = []", "software", "[]"),
        ];
        for (text, key, value) in cases {
            assert_eq!(
                invalid_key_value(text),
                (key.to_string(), value.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn alternate_server_forms_and_alt_listening_port() {
        let config = parse(
            r#"
            alt-listening-port = 3500
            alternate-server = ["192.0.2.1:3478", "[2001:db8::1]:3479", "192.0.2.2"]
            "#,
        );
        assert_eq!(config.alt_listening_port, 3500);
        let addr = |text: &str| text.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(
            config.alternate_servers,
            vec![
                addr("192.0.2.1:3478"),
                addr("[2001:db8::1]:3479"),
                addr("192.0.2.2:3478")
            ]
        );
        let config = parse(r#"alternate-server = "[2001:db8::1]:3478""#);
        assert_eq!(config.alternate_servers, vec![addr("[2001:db8::1]:3478")]);
    }

    #[test]
    fn unparsable_addresses_name_key_and_value() {
        let cases = [
            (
                r#"listening-ip = ["0.0.0.0", "1.2.3"]"#,
                "listening-ip",
                "1.2.3",
            ),
            (r#"relay-ip = "eth0""#, "relay-ip", "eth0"),
            (r#"external-ip = "1.2.3.4/x""#, "external-ip", "1.2.3.4/x"),
            (
                r#"alternate-server = ["192.0.2.1:3478", "tern.example:3478"]"#,
                "alternate-server",
                "tern.example:3478",
            ),
            (
                r#"alternate-server = "::1:3478:x""#,
                "alternate-server",
                "::1:3478:x",
            ),
        ];
        for (text, key, value) in cases {
            assert_eq!(
                invalid_key_value(text),
                (key.to_string(), value.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn secrets_of_wrong_type_are_redacted() {
        let (key, value) = invalid_key_value("static-auth-secret = [\"hunter2\", 5]");
        assert_eq!(
            (key.as_str(), value.as_str()),
            ("static-auth-secret", REDACTED)
        );
        let err = from_toml_str("[users]\nalice = 12345")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("users.alice") && !err.contains("12345"),
            "{err}"
        );
        let err = from_toml_str("users = \"alice:hunter2\"")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn syntax_error_names_path_line_and_column() {
        let err = from_toml_str("realm = \"ok\"\nstatic-auth-secret = \"hunter2\n").unwrap_err();
        let ConfigError::Syntax { path, message } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, "<string>");
        assert!(message.contains("line 2"), "{message}");
        assert!(!err.to_string().contains("hunter2"), "{err}");

        let mut config = Config::default();
        let err = apply_toml(&mut config, "a = = 1", "/etc/tern/turnserver.toml").unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("/etc/tern/turnserver.toml: line 1, column"),
            "{shown}"
        );
    }

    #[test]
    fn duplicate_key_is_a_syntax_error() {
        let err = from_toml_str("realm = \"a\"\nrealm = \"b\"").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    }
}
