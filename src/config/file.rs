//! Reading a `turnserver.toml`: every top-level key is looked up in the key table, and every
//! error names the file and line. toml_edit keeps the positions toml's own parser drops.

use super::error::nearest;
use super::keys::{self, KEYS};
use super::shape::Input;
use super::{ConfigError, Origin};
use crate::config::Config;
use std::collections::HashMap;
use toml::Value;
use toml_edit::{ImDocument, Item, TableLike};

/// Where each key's value came from, for errors found once every source is merged.
pub(super) type Sources = HashMap<&'static str, Origin>;

/// Applies the keys of a TOML document on top of `config`. `origin` names the document (its
/// path) in errors. Cross-key checks are left to [`super::validate`].
pub(super) fn apply_toml(
    config: &mut Config,
    text: &str,
    origin: &str,
    sources: &mut Sources,
) -> Result<(), ConfigError> {
    let document = ImDocument::parse(text).map_err(|err| syntax_error(origin, text, &err))?;
    let table = document.as_table();
    for (name, item) in table.iter() {
        let at = Origin::File {
            path: origin.to_string(),
            line: line_of(text, table.key(name).and_then(|key| key.span())),
        };
        let Some(key) = keys::find(name) else {
            return Err(unknown_key(name, Some(at)));
        };
        if let Some(entries) = item.as_table_like() {
            inside_table(text, origin, name, entries)?;
        }
        let value = to_value(item);
        key.set(config, &Input::Toml(&value))
            .map_err(|err| err.at(Some(&at)))?;
        sources.insert(key.name, at);
    }
    Ok(())
}

/// `unknown key "x" (did you mean "y"?)`: the nearest key, or the key a coTURN name maps to.
pub(super) fn unknown_key(name: &str, at: Option<Origin>) -> ConfigError {
    let by_coturn = KEYS
        .iter()
        .find(|key| key.coturn.contains(&name))
        .map(|key| key.name.to_string());
    let suggestion = by_coturn.or_else(|| nearest(name, KEYS.iter().map(|key| key.name)));
    ConfigError::UnknownKey {
        key: name.to_string(),
        suggestion,
    }
    .at(at.as_ref())
}

/// A key of the table `[table]` that is a known top-level key was meant to be above it: TOML
/// would otherwise silently take `realm = "x"` after `[users]` as a user named realm.
fn inside_table(
    text: &str,
    origin: &str,
    table: &str,
    entries: &dyn TableLike,
) -> Result<(), ConfigError> {
    for (name, _) in entries.iter() {
        if keys::find(name).is_some() {
            let span = entries.get_key_value(name).and_then(|(key, _)| key.span());
            let at = Origin::File {
                path: origin.to_string(),
                line: line_of(text, span),
            };
            return Err(ConfigError::InsideTable {
                key: name.to_string(),
                table: table.to_string(),
            }
            .at(Some(&at)));
        }
    }
    Ok(())
}

/// The 1-based line of a byte offset (line 1 when unknown).
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    let start = span.map_or(0, |span| span.start.min(text.len()));
    text[..start].matches('\n').count() + 1
}

/// A toml_edit item as a plain TOML value.
fn to_value(item: &Item) -> Value {
    match item {
        Item::None => Value::Table(Default::default()),
        Item::Value(value) => plain(value),
        Item::Table(table) => Value::Table(
            table
                .iter()
                .map(|(name, item)| (name.to_string(), to_value(item)))
                .collect(),
        ),
        Item::ArrayOfTables(tables) => Value::Array(
            tables
                .iter()
                .map(|table| to_value(&Item::Table(table.clone())))
                .collect(),
        ),
    }
}

fn plain(value: &toml_edit::Value) -> Value {
    use toml_edit::Value as Edit;
    match value {
        Edit::String(text) => Value::String(text.value().clone()),
        Edit::Integer(number) => Value::Integer(*number.value()),
        Edit::Float(number) => Value::Float(*number.value()),
        Edit::Boolean(flag) => Value::Boolean(*flag.value()),
        Edit::Datetime(time) => Value::Datetime(*time.value()),
        Edit::Array(items) => Value::Array(items.iter().map(plain).collect()),
        Edit::InlineTable(table) => Value::Table(
            table
                .iter()
                .map(|(name, value)| (name.to_string(), plain(value)))
                .collect(),
        ),
    }
}

/// `path: line L, column C: message`. The parser's own rendering quotes the offending source
/// line, which could hold a secret, so only its message and position are kept.
fn syntax_error(origin: &str, text: &str, err: &toml_edit::TomlError) -> ConfigError {
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

#[cfg(test)]
mod tests {
    use super::super::values::REDACTED;
    use super::super::{from_toml_str, AllocationLimit, ExternalIp, Secret};
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
            Err(err) => match err.inner() {
                ConfigError::Invalid { key, value, .. } => (key.clone(), value.clone()),
                other => panic!("{text}: expected Invalid, got {other:?}"),
            },
            Ok(config) => panic!("{text}: expected Invalid, got {config:?}"),
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
        assert_eq!(
            (config.user_quota, config.total_quota),
            (AllocationLimit::PercentOfPorts(25), 0)
        );
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
        assert_eq!(
            (config.user_quota, config.total_quota),
            (AllocationLimit::Count(5), 1000)
        );
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
            let err = from_toml_str(text).unwrap_err();
            match err.inner() {
                ConfigError::UnknownKey { key: named, .. } => assert_eq!(named, key),
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
        let err = apply_toml(
            &mut config,
            "a = = 1",
            "/etc/tern/turnserver.toml",
            &mut Sources::new(),
        )
        .unwrap_err();
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

    #[test]
    fn unknown_key_names_line_and_nearest_key() {
        let err = from_toml_str("realm = \"x\"\n\nlistening-prot = 3478\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "<string>:3: unknown key \"listening-prot\" (did you mean \"listening-port\"?)"
        );
        // A coTURN spelling points at the key it maps to.
        let err = from_toml_str("user = \"alice:pw\"")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("(did you mean \"users\"?)"), "{err}");
        // Nothing near: no suggestion.
        let err = from_toml_str("zzzzzz = 1").unwrap_err().to_string();
        assert_eq!(err, "<string>:1: unknown key \"zzzzzz\"");
    }

    #[test]
    fn key_after_users_table_is_an_error_not_a_user() {
        let text = "[users]\nalice = \"pw\"\nrealm = \"x\"\n";
        let err = from_toml_str(text).unwrap_err();
        assert!(
            matches!(err.inner(), ConfigError::InsideTable { key, table } if key == "realm" && table == "users")
        );
        assert_eq!(
            err.to_string(),
            "<string>:3: \"realm\" is inside the [users] table (keys after a [table] header \
             belong to it): move it above [users]"
        );
        // Above the table it is the realm.
        let config = parse("realm = \"x\"\n[users]\nalice = \"pw\"\n");
        assert_eq!((config.realm.as_str(), config.users.len()), ("x", 1));
    }

    #[test]
    fn value_errors_name_file_line_key_and_value() {
        let err = from_toml_str("realm = \"x\"\nlistening-port = \"abc\"\n").unwrap_err();
        assert_eq!(
            err.origin().map(ToString::to_string).as_deref(),
            Some("<string>:2")
        );
        assert!(
            err.to_string()
                .starts_with("<string>:2: listening-port: invalid value \"abc\""),
            "{err}"
        );
        // Cross-key checks name the line the key was set on.
        let err = from_toml_str("max-port = 50000\nmin-port = 60000\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("<string>:2: min-port: invalid value \"60000\""),
            "{err}"
        );
        // A secret's line is named, its value never.
        let err = from_toml_str("\nstatic-auth-secret = [\"hunter2\", 5]")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("<string>:2: static-auth-secret") && !err.contains("hunter2"),
            "{err}"
        );
        let err = from_toml_str("[users]\nbob = \"0xdeadbeef\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("<string>:1: users.bob") && !err.contains("deadbeef"),
            "{err}"
        );
    }
}
