//! Checks on the merged configuration: ranges, cross-key relations, and text formats.
//!
//! These run once all sources are applied, so e.g. `--max-port` may fix a file's `min-port`.

use super::values::{invalid, REDACTED};
use super::{Config, ConfigError};
use crate::auth::StaticKey;
use std::collections::HashSet;
use std::ops::RangeInclusive;

/// RFC 8489: REALM and SOFTWARE are fewer than 128 characters.
const MAX_TEXT_CHARS: usize = 127;
const MAX_RELAY_THREADS: usize = 1024;
/// The longest coalescing pause: one media packet interval.
const MAX_UDP_COALESCE_US: u32 = 20_000;
/// API keys shorter than this are guessable.
const MIN_API_KEY_CHARS: usize = 16;
/// A stream client's queue holds at least a maximal reply and relayed datagram, and at most
/// what a busy server can afford per connection.
const MIN_STREAM_QUEUE: u32 = 32 * 1024;
const MAX_STREAM_QUEUE: u32 = 16 * 1024 * 1024;
/// Fast path entries: its maps are sized for this many when it attaches.
const MAX_FAST_PATH_CAPACITY: u32 = 1 << 22;

pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    if config.listening_ips.is_empty() {
        return Err(invalid(
            "listening-ip",
            "[]",
            "at least one address is needed",
        ));
    }
    nonzero_port("listening-port", config.listening_port)?;
    if config.alt_listening_port == 0 && config.listening_port == u16::MAX {
        let reason = "listening-port is 65535, so listening-port + 1 does not exist; set a port";
        return Err(invalid("alt-listening-port", "0", reason));
    }
    if config.alt_listening_port == config.listening_port {
        let reason = "must differ from listening-port";
        let value = config.alt_listening_port.to_string();
        return Err(invalid("alt-listening-port", &value, reason));
    }
    if let Some(server) = config.alternate_servers.iter().find(|s| s.port() == 0) {
        let reason = "the port must be in 1..=65535";
        return Err(invalid("alternate-server", &server.to_string(), reason));
    }
    nonzero_port("min-port", config.min_port)?;
    nonzero_port("max-port", config.max_port)?;
    if config.min_port > config.max_port {
        let reason = format!("greater than max-port ({})", config.max_port);
        return Err(invalid("min-port", &config.min_port.to_string(), reason));
    }

    at_least_one_second(
        "default-allocate-lifetime",
        config.default_allocate_lifetime.into(),
    )?;
    at_least_one_second("max-allocate-lifetime", config.max_allocate_lifetime.into())?;
    at_least_one_second("permission-lifetime", config.permission_lifetime.into())?;
    at_least_one_second("channel-lifetime", config.channel_lifetime.into())?;
    at_least_one_second("stale-nonce", config.stale_nonce.into())?;
    at_least_one_second("max-credential-ttl", config.max_credential_ttl)?;
    if config.default_allocate_lifetime > config.max_allocate_lifetime {
        let reason = format!(
            "greater than max-allocate-lifetime ({})",
            config.max_allocate_lifetime
        );
        let value = config.default_allocate_lifetime.to_string();
        return Err(invalid("default-allocate-lifetime", &value, reason));
    }

    realm(&config.realm)?;
    rfc5780(config)?;
    if let Some(software) = &config.software {
        if software.chars().count() > MAX_TEXT_CHARS {
            return Err(invalid(
                "software",
                software,
                "must be fewer than 128 characters",
            ));
        }
    }
    if config
        .static_auth_secrets
        .iter()
        .any(|secret| secret.0.is_empty())
    {
        return Err(invalid("static-auth-secret", REDACTED, "must not be empty"));
    }
    users(&config.users)?;
    for (key, keys) in [
        ("api-keys", &config.api_keys),
        ("admin-api-keys", &config.admin_api_keys),
    ] {
        if keys.iter().any(|k| k.0.len() < MIN_API_KEY_CHARS) {
            let reason = format!("each key needs at least {MIN_API_KEY_CHARS} characters");
            return Err(invalid(key, REDACTED, reason));
        }
    }
    for uri in &config.public_uris {
        let scheme_ok = ["turn:", "turns:", "stun:", "stuns:"]
            .iter()
            .any(|scheme| uri.starts_with(scheme) && uri.len() > scheme.len());
        if !scheme_ok || uri.chars().any(char::is_whitespace) {
            return Err(invalid(
                "public-uris",
                uri,
                "expected a turn:, turns:, stun: or stuns: URI (RFC 7064/7065)",
            ));
        }
    }
    if config.relay_threads > MAX_RELAY_THREADS {
        let reason = format!("at most {MAX_RELAY_THREADS} (0 = number of cores)");
        return Err(invalid(
            "relay-threads",
            &config.relay_threads.to_string(),
            reason,
        ));
    }
    if config.udp_coalesce_us > MAX_UDP_COALESCE_US {
        let reason = format!("at most {MAX_UDP_COALESCE_US} (20 ms, one media packet interval)");
        let value = config.udp_coalesce_us.to_string();
        return Err(invalid("udp-coalesce-us", &value, reason));
    }
    streams(config)?;
    if !config.log_level.is_ascii() {
        // Targets, spans and levels are ASCII; and tracing-subscriber's parser can panic on
        // other characters rather than refuse them.
        let reason = "not a tracing filter: only ASCII characters";
        return Err(invalid("log-level", &config.log_level, reason));
    }
    in_range(
        "fast-path-capacity",
        config.fast_path_capacity,
        1..=MAX_FAST_PATH_CAPACITY,
    )?;
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&config.log_level) {
        let reason = format!("not a tracing filter: {err}");
        return Err(invalid("log-level", &config.log_level, reason));
    }
    Ok(())
}

/// TCP/TLS keys. Whether the certificate files load is checked at start (see `net::tls`).
fn streams(config: &Config) -> Result<(), ConfigError> {
    nonzero_port("tls-listening-port", config.tls_listening_port)?;
    at_least_one_second("stream-idle-timeout", config.stream_idle_timeout.into())?;
    at_least_one_second("partial-frame-timeout", config.partial_frame_timeout.into())?;
    at_least_one_second("stream-write-timeout", config.stream_write_timeout.into())?;
    in_range(
        "stream-queue-size",
        config.stream_queue_size,
        MIN_STREAM_QUEUE..=MAX_STREAM_QUEUE,
    )?;
    in_range(
        "connection-ipv6-prefix",
        config.connection_ipv6_prefix,
        0..=128,
    )?;
    in_range("fd-reserve-percent", config.fd_reserve_percent, 0..=90)?;
    at_least_one_second("http-header-timeout", config.http_header_timeout.into())?;
    at_least_one_second("http-request-timeout", config.http_request_timeout.into())?;
    match (&config.cert, &config.pkey) {
        (Some(cert), None) => {
            let cert = cert.display().to_string();
            return Err(invalid("cert", &cert, "pkey must be set too"));
        }
        (None, Some(pkey)) => {
            let pkey = pkey.display().to_string();
            return Err(invalid("pkey", &pkey, "cert must be set too"));
        }
        _ => {}
    }
    if config.http_tls && config.cert.is_none() {
        return Err(invalid(
            "http-tls",
            "true",
            "needs cert and pkey (the same certificate as the TLS listener)",
        ));
    }
    let tls = !config.no_tls && config.cert.is_some();
    if config.no_udp && config.no_tcp && !tls {
        return Err(invalid(
            "no-udp",
            "true",
            "no-tcp is set and TLS is off (no-tls, or no cert/pkey): nothing would listen",
        ));
    }
    Ok(())
}

/// `value` lies in `range`.
fn in_range(key: &str, value: u32, range: RangeInclusive<u32>) -> Result<(), ConfigError> {
    if !range.contains(&value) {
        let reason = format!("must be in {}..={}", range.start(), range.end());
        return Err(invalid(key, &value.to_string(), reason));
    }
    Ok(())
}

fn nonzero_port(key: &str, port: u16) -> Result<(), ConfigError> {
    if port == 0 {
        return Err(invalid(key, "0", "must be in 1..=65535"));
    }
    Ok(())
}

fn at_least_one_second(key: &str, seconds: u64) -> Result<(), ConfigError> {
    if seconds == 0 {
        return Err(invalid(key, "0", "must be at least 1 second"));
    }
    Ok(())
}

fn realm(realm: &str) -> Result<(), ConfigError> {
    if realm.is_empty() {
        return Err(invalid("realm", realm, "must not be empty"));
    }
    if realm.contains('"') {
        return Err(invalid("realm", realm, "must not contain '\"'"));
    }
    // RFC 8489 counts characters; every 401, sent to sources that proved nothing, carries the
    // realm, so tern counts bytes.
    if realm.len() > MAX_TEXT_CHARS {
        return Err(invalid("realm", realm, "must be at most 127 bytes"));
    }
    Ok(())
}

/// RFC 5780 answers every client with OTHER-ADDRESS, so it pairs only addresses the operator
/// named: never what a wildcard expands to (which may be a private interface).
fn rfc5780(config: &Config) -> Result<(), ConfigError> {
    if !config.rfc5780 {
        return Ok(());
    }
    let named = |v4: bool| {
        config
            .listening_ips
            .iter()
            .filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == v4)
            .count()
    };
    if named(true) < 2 && named(false) < 2 {
        let reason =
            "needs two addresses of one family named in listening-ip (0.0.0.0 and :: do not count)";
        return Err(invalid("rfc5780", "true", reason));
    }
    Ok(())
}

fn users(users: &[(String, StaticKey)]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (name, key) in users {
        if name.is_empty() {
            return Err(invalid("users", name, "user names must not be empty"));
        }
        if name.contains(':') {
            return Err(invalid("users", name, "user names must not contain ':'"));
        }
        if super::keys::find(name).is_some() {
            let reason =
                "a user may not be named like a key (in turnserver.toml it would read as one)";
            return Err(invalid("users", name, reason));
        }
        if !seen.insert(name.as_str()) {
            return Err(invalid("users", name, "user given twice"));
        }
        if matches!(key, StaticKey::Password(password) if password.is_empty()) {
            return Err(invalid(
                &format!("users.{name}"),
                REDACTED,
                "password must not be empty",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{from_toml_str, AllocationLimit};
    use super::*;

    fn rejected(text: &str) -> (String, String, String) {
        match from_toml_str(text) {
            Err(err) => match err.inner() {
                ConfigError::Invalid { key, value, .. } => {
                    (key.clone(), value.clone(), err.to_string())
                }
                other => panic!("{text}: expected Invalid, got {other:?}"),
            },
            Ok(config) => panic!("{text}: expected Invalid, got {config:?}"),
        }
    }

    fn assert_rejected(text: &str, key: &str, value: &str) {
        let (k, v, shown) = rejected(text);
        assert_eq!((k.as_str(), v.as_str()), (key, value), "{text}");
        assert!(
            shown.contains(key) && shown.contains(&format!("{value:?}")),
            "{shown}"
        );
    }

    #[test]
    fn http_keys() {
        assert_rejected("api-keys = [\"short\"]", "api-keys", REDACTED);
        assert_rejected("admin-api-keys = \"short\"", "admin-api-keys", REDACTED);
        assert_rejected(
            "public-uris = [\"http://example.com\"]",
            "public-uris",
            "http://example.com",
        );
        assert_rejected("http-listen = \"localhost\"", "http-listen", "localhost");
        assert_rejected("http-tls = true", "http-tls", "true");
        let https = from_toml_str("http-tls = true\ncert = \"/c.pem\"\npkey = \"/k.pem\"").unwrap();
        assert!(https.http_tls);
        assert!(!from_toml_str("").unwrap().http_tls);
        let config = from_toml_str(
            "http-listen = \"[::1]:9000\"\nno-http = true\napi-keys = [\"0123456789abcdef\"]\n\
             admin-api-keys = \"fedcba9876543210\"\npublic-uris = \"turns:turn.example.com:443?transport=tcp\"",
        )
        .unwrap();
        assert_eq!(config.http_listen, "[::1]:9000".parse().unwrap());
        assert!(config.no_http);
        assert_eq!(config.api_keys.len(), 1);
        assert_eq!(config.admin_api_keys[0].0, "fedcba9876543210");
        assert_eq!(
            config.public_uris,
            ["turns:turn.example.com:443?transport=tcp"]
        );
    }

    #[test]
    fn ports() {
        assert_rejected("listening-port = 0", "listening-port", "0");
        assert_rejected("min-port = 0", "min-port", "0");
        assert_rejected("max-port = 0\nmin-port = 0", "min-port", "0");
        assert_rejected("min-port = 50000\nmax-port = 40000", "min-port", "50000");
        let config = from_toml_str("min-port = 1\nmax-port = 1").unwrap();
        assert_eq!((config.min_port, config.max_port), (1, 1));
    }

    #[test]
    fn alt_listening_port() {
        assert_rejected(
            "listening-port = 3478\nalt-listening-port = 3478",
            "alt-listening-port",
            "3478",
        );
        assert_rejected("listening-port = 65535", "alt-listening-port", "0");
        let config = from_toml_str("listening-port = 65535\nalt-listening-port = 3479").unwrap();
        assert_eq!(config.alt_listening_port(), 3479);
        let config = from_toml_str("listening-port = 5000").unwrap();
        assert_eq!(
            config.alt_listening_port(),
            5001,
            "0 means listening-port + 1"
        );
    }

    #[test]
    fn alternate_server_needs_a_port() {
        assert_rejected(
            r#"alternate-server = "203.0.113.1:0""#,
            "alternate-server",
            "203.0.113.1:0",
        );
    }

    #[test]
    fn lifetimes_at_least_one_second() {
        for key in [
            "default-allocate-lifetime",
            "max-allocate-lifetime",
            "permission-lifetime",
            "channel-lifetime",
            "stale-nonce",
            "max-credential-ttl",
        ] {
            assert_rejected(&format!("{key} = 0"), key, "0");
        }
    }

    #[test]
    fn connection_limits_and_timeouts() {
        for key in [
            "stream-write-timeout",
            "http-header-timeout",
            "http-request-timeout",
        ] {
            assert_rejected(&format!("{key} = 0"), key, "0");
        }
        assert_rejected("stream-queue-size = 1000", "stream-queue-size", "1000");
        assert_rejected(
            "connection-ipv6-prefix = 129",
            "connection-ipv6-prefix",
            "129",
        );
        assert_rejected("fd-reserve-percent = 91", "fd-reserve-percent", "91");
        let config = from_toml_str(
            "stream-queue-size = 32768\nconnection-ipv6-prefix = 128\nfd-reserve-percent = 0\n\
             http-max-connections = 0",
        )
        .unwrap();
        assert_eq!(config.stream_queue_size, 32768);
        assert_eq!(config.connection_ipv6_prefix, 128);
        assert_eq!(config.fd_reserve_percent, 0);
        assert_eq!(config.http_max_connections, 0);
    }

    #[test]
    fn fast_path_keys() {
        assert_rejected("fast-path = \"sometimes\"", "fast-path", "sometimes");
        assert_rejected("fast-path-capacity = 0", "fast-path-capacity", "0");
        assert_rejected(
            "fast-path-capacity = 4194305",
            "fast-path-capacity",
            "4194305",
        );
        assert_rejected(
            "fast-path-interfaces = [\"eth0\", \"a/b\"]",
            "fast-path-interfaces",
            "a/b",
        );
        let config = from_toml_str(
            "fast-path = \"required\"\nfast-path-interfaces = [\"eth0\", \"veth1\"]\n\
             fast-path-capacity = 100",
        )
        .unwrap();
        assert_eq!(config.fast_path, tern_xdp::Mode::Required);
        assert_eq!(config.fast_path_interfaces, ["eth0", "veth1"]);
        assert_eq!(config.fast_path_capacity, 100);
        assert_eq!(Config::default().fast_path, tern_xdp::Mode::Auto);
    }

    #[test]
    fn default_lifetime_not_above_max() {
        assert_rejected(
            "default-allocate-lifetime = 3601",
            "default-allocate-lifetime",
            "3601",
        );
        assert!(from_toml_str("default-allocate-lifetime = 3600").is_ok());
    }

    #[test]
    fn realm_text() {
        assert_rejected(r#"realm = """#, "realm", "");
        assert_rejected(r#"realm = 'a"b'"#, "realm", "a\"b");
        let long = "r".repeat(128);
        assert_rejected(&format!("realm = \"{long}\""), "realm", &long);
        assert!(from_toml_str(&format!("realm = \"{}\"", "r".repeat(127))).is_ok());
        // Every 401 carries the realm: 127 bytes, not 127 four-byte characters.
        let wide = "é".repeat(64);
        assert_rejected(&format!("realm = \"{wide}\""), "realm", &wide);
    }

    #[test]
    fn rfc5780_needs_two_named_addresses_of_a_family() {
        for text in [
            "rfc5780 = true",
            "rfc5780 = true\nlistening-ip = [\"0.0.0.0\", \"192.0.2.1\"]",
            "rfc5780 = true\nlistening-ip = [\"192.0.2.1\", \"2001:db8::1\"]",
        ] {
            assert_rejected(text, "rfc5780", "true");
        }
        let config =
            from_toml_str("rfc5780 = true\nlistening-ip = [\"192.0.2.1\", \"192.0.2.2\"]").unwrap();
        assert!(config.rfc5780);
        assert!(!from_toml_str("").unwrap().rfc5780, "off by default");
    }

    #[test]
    fn allocation_limits_are_counts_or_shares_of_the_ports() {
        let config = from_toml_str(
            "min-port = 50000\nmax-port = 50099\nuser-quota = \"10%\"\n\
             max-allocations-per-ip = 7",
        )
        .unwrap();
        assert_eq!(config.user_quota, AllocationLimit::PercentOfPorts(10));
        assert_eq!(config.max_allocations_per_ip, AllocationLimit::Count(7));
        let core = config.core();
        assert_eq!((core.user_quota, core.max_allocations_per_ip), (10, 7));
        // The defaults: a quarter of the ports, so one user or address never takes them all.
        let defaults = from_toml_str("min-port = 50000\nmax-port = 50099")
            .unwrap()
            .core();
        assert_eq!(
            (defaults.user_quota, defaults.max_allocations_per_ip),
            (25, 25)
        );
        let tiny = from_toml_str("min-port = 50000\nmax-port = 50000")
            .unwrap()
            .core();
        assert_eq!(tiny.user_quota, 1, "a share is at least one allocation");
        let off = from_toml_str("user-quota = 0\nmax-allocations-per-ip = \"0\"").unwrap();
        assert_eq!(off.core().user_quota, 0);
        assert_eq!(off.core().max_allocations_per_ip, 0);
        for bad in ["\"0%\"", "\"101%\"", "\"lots\"", "-1", "true"] {
            let (key, _, _) = rejected(&format!("user-quota = {bad}"));
            assert_eq!(key, "user-quota", "{bad}");
        }
    }

    #[test]
    fn software_length() {
        let long = "s".repeat(128);
        assert_rejected(&format!("software = \"{long}\""), "software", &long);
    }

    #[test]
    fn relay_threads_limit() {
        assert_rejected("relay-threads = 1025", "relay-threads", "1025");
        assert!(from_toml_str("relay-threads = 1024").is_ok());
    }

    #[test]
    fn coalescing_pause_is_at_most_one_media_packet_interval() {
        assert_rejected("udp-coalesce-us = 20001", "udp-coalesce-us", "20001");
        assert!(from_toml_str("udp-coalesce-us = 20000").is_ok());
        assert!(from_toml_str("udp-coalesce-us = 0").is_ok());
    }

    #[test]
    fn log_level_must_be_a_filter() {
        assert_rejected(r#"log-level = "tern=loud""#, "log-level", "tern=loud");
        assert!(from_toml_str(r#"log-level = "warn,tern::turn=debug""#).is_ok());
    }

    /// Found by fuzzing (fuzz/config_toml): tracing-subscriber's filter parser slices by
    /// character count and panicked on a non-ASCII character before a `[` or `=`, so such a
    /// `log-level` crashed tern instead of naming the key.
    #[test]
    fn non_ascii_log_level_is_refused_not_a_panic() {
        let found = "x, column 1: in\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}[\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}b2";
        for value in [found, "\u{e9}[x]", "tern\u{e9}=debug"] {
            let text = format!("log-level = \"{value}\"");
            assert_rejected(&text, "log-level", value);
        }
    }

    #[test]
    fn empty_listening_ip_list() {
        assert_rejected("listening-ip = []", "listening-ip", "[]");
    }

    #[test]
    fn user_names() {
        assert_rejected("[users]\n\"\" = \"pw\"", "users", "");
        assert_rejected("[users]\n\"a:b\" = \"pw\"", "users", "a:b");
    }

    #[test]
    fn secrets_never_shown() {
        let (key, value, shown) = rejected("[users]\nbob = \"0xdeadbeefdeadbeef\"");
        assert_eq!((key.as_str(), value.as_str()), ("users.bob", REDACTED));
        assert!(!shown.contains("deadbeef"), "{shown}");

        let (key, value, _) = rejected("[users]\nalice = \"\"");
        assert_eq!((key.as_str(), value.as_str()), ("users.alice", REDACTED));

        let (key, value, _) = rejected(r#"static-auth-secret = ["good-secret", ""]"#);
        assert_eq!(
            (key.as_str(), value.as_str()),
            ("static-auth-secret", REDACTED)
        );
    }

    #[test]
    fn duplicate_users_from_flags() {
        let users = vec![
            ("alice".to_string(), StaticKey::Password("a".into())),
            ("alice".to_string(), StaticKey::Password("b".into())),
        ];
        let config = Config {
            users,
            ..Config::default()
        };
        let err = validate(&config).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, value, .. } if key == "users" && value == "alice"),
            "{err:?}"
        );
    }
}
