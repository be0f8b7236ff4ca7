//! coTURN's `turnserver.conf`, read as it is: `key=value`, `key value`, bare switches, `#`
//! comments, quoted values, repeated keys, an optional leading `--`, coTURN's booleans.
//!
//! A coTURN key whose meaning tern has maps to a tern key through the key table's `coturn`
//! names ([`super::keys`]). The rest are decided here, one rule each ([`RULES`]): tern already
//! behaves so (accepted), tern ignores it with a warning (it only concerns coTURN's internals,
//! and ignoring it makes tern neither less safe nor silently different), or tern refuses to start
//! (ignoring it would). tern's own keys may be written in the same file and form.

use super::error::nearest;
use super::keys::{self, Key, KEYS};
use super::shape::{Arity, Input};
use super::{Config, ConfigError, Origin};
use crate::config::file::Sources;
use std::fmt;

/// What tern does with a coTURN key that has no tern key of the same meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// tern behaves like this anyway: accepted without a word.
    Always(&'static str),
    /// Only concerns coTURN's internals (or tern does better): one warning, and tern starts.
    Warn(&'static str),
    /// Ignoring it would make tern less safe or silently different: tern does not start.
    Refuse(&'static str),
    /// Decided by its value or together with other keys (see [`Import`]).
    Special(&'static str),
}

/// One coTURN key's rule. `when_on`: the rule applies only when the switch is on (`key`,
/// `key=1`, `key=yes`…); `key=0` is then accepted and changes nothing.
pub struct Rule {
    pub name: &'static str,
    pub when_on: bool,
    pub action: Action,
}

const fn on(name: &'static str, action: Action) -> Rule {
    Rule {
        name,
        when_on: true,
        action,
    }
}

const fn any(name: &'static str, action: Action) -> Rule {
    Rule {
        name,
        when_on: false,
        action,
    }
}

use Action::{Always, Refuse, Special, Warn};

const NO_CLI: &str =
    "tern has no telnet CLI; the admin API (admin-api-keys) lists and ends allocations";
const NO_WEB_ADMIN: &str =
    "tern has no web admin; the admin API on http-listen (admin-api-keys) replaces it";
const TLS_DEFAULTS: &str =
    "tern's TLS is rustls: TLS 1.2 and 1.3, ECDHE and AEAD suites only, not configurable";
const LOGS: &str = "tern logs to standard error and log-file, in its own format (log-level)";
const DATABASE: &str =
    "tern reads no user database: credentials come from static-auth-secret and user lines";

/// Every coTURN 4.x key that no tern key takes as it is.
pub static RULES: &[Rule] = &[
    // Authentication.
    on("no-auth", Refuse("tern never relays for unauthenticated clients: set static-auth-secret (TURN REST) or user lines")),
    on("oauth", Refuse("tern does not do third-party authorization (RFC 7635): use static-auth-secret (TURN REST credentials)")),
    on("secure-stun", Refuse("tern answers STUN Binding without authentication, as RFC 8489 servers do; remove secure-stun to accept that")),
    any("server-name", Warn("only names the server for oAuth, which tern does not do")),
    any("rest-api-separator", Special("tern's REST usernames are <expiry>:<user>: only \":\" is accepted")),
    any("userdb", Special(DATABASE)),
    any("db", Special(DATABASE)),
    any("psql-userdb", Special(DATABASE)),
    any("sql-userdb", Special(DATABASE)),
    any("mysql-userdb", Special(DATABASE)),
    any("mongo-userdb", Special(DATABASE)),
    any("redis-userdb", Special(DATABASE)),
    any("redis-statsdb", Warn("tern keeps no statistics database; /metrics serves the counters")),
    any("secret-key-file", Warn("only decrypts passwords stored in coTURN's database")),
    on("no-auth-pings", Always("tern pings no database")),
    on("no-dynamic-ip-list", Always("tern's peer lists come from its configuration only")),
    on("no-dynamic-realms", Always("tern has one realm, from its configuration")),
    on("stateless-nonce", Always("tern's nonces are always stateless")),
    any("stateless-nonce-secret", Warn("each tern process keys its own nonces: behind a load balancer a client that moves gets one 438 and retries")),
    on("unauthorized-ratelimit", Always("tern always rate-limits answers to unauthenticated UDP requests per source (unauthenticated-rate-limit, which unauthorized-ratelimit-rps sets)")),
    // What is relayed.
    on("server-relay", Refuse("tern always checks permissions on relayed traffic; it cannot relay without them")),
    on("stun-only", Refuse("tern has no STUN-only mode and would relay: keep coTURN (or another STUN server) for STUN-only")),
    on("no-stun", Warn("tern always answers STUN Binding requests")),
    on("no-udp-relay", Refuse("tern always relays UDP: there is no switch to turn UDP relays off")),
    on("no-tcp-relay", Special("tern relays TCP (RFC 6062) for clients on TCP or TLS and has no switch for it: set no-tcp and no-tls so no client can ask, or remove no-tcp-relay knowing TCP relays stay on (peer policy applies to them)")),
    on("no-multicast-peers", Always("tern denies multicast peers unless allowed-peer-ip allows them")),
    on("no-loopback-peers", Always("tern denies loopback peers unless allow-loopback-peers is set")),
    on("mobility", Warn("tern does not implement ICE mobility (RFC 8016)")),
    on("check-origin-consistency", Warn("tern does not check the ORIGIN attribute")),
    on("multiplex-peer", Warn("tern gives each allocation its own relay port")),
    any("multiplex-peer-port", Warn("tern gives each allocation its own relay port")),
    any("multiplex-peer-max-peers", Warn("tern gives each allocation its own relay port")),
    any("allocation-default-address-family", Special("tern relays IPv4 unless the client asks for IPv6 (REQUESTED-ADDRESS-FAMILY)")),
    on("keep-address-family", Warn("tern relays IPv4 unless the client asks for IPv6 (REQUESTED-ADDRESS-FAMILY)")),
    any("max-allocate-timeout", Warn("tern answers an Allocate at once; there is no timeout to set")),
    any("drain-min-allocations", Warn("tern drains through the admin API (POST /api/v1/admin/drain)")),
    // Listeners.
    any("listening-device", Refuse("tern does not bind to a device: list the device's addresses in listening-ip")),
    any("relay-device", Refuse("tern does not bind to a device: list the device's addresses in relay-ip")),
    any("tcp-proxy-port", Refuse("tern takes PROXY protocol headers on listening-port from the sources in proxy-protocol-trusted: set that to the load balancer's address")),
    any("alt-tls-listening-port", Warn("tern serves RFC 5780 NAT discovery over UDP only")),
    any("aux-server", Warn("tern listens on listening-ip x listening-port (and tls-listening-port) only")),
    on("udp-self-balance", Always("tern's UDP workers share the listening port with SO_REUSEPORT")),
    any("tls-alternate-server", Warn("tern's alternate-server applies to every transport")),
    any("tcp-alternate-server", Warn("tern's alternate-server applies to every transport")),
    any("udp-alternate-server", Warn("tern's alternate-server applies to every transport")),
    on("dtls", Warn("tern has no DTLS listener")),
    on("no-dtls", Always("tern has no DTLS listener")),
    on("udp-recvmmsg", Always("tern always receives with recvmmsg")),
    on("udp-recvmmsg-log", Warn(LOGS)),
    on("udp-sendmmsg-log", Warn(LOGS)),
    on("respond-http-unsupported", Warn("tern does not answer HTTP on its TURN ports")),
    on("drop-invalid-packets", Always("tern drops malformed packets")),
    on("drop-invalid-packets-log", Warn(LOGS)),
    on("include-reason-string", Warn("tern's error responses carry its own reason phrases")),
    on("no-rfc5780", Always("tern serves RFC 5780 NAT discovery only with rfc5780")),
    on("response-origin-only-with-rfc5780", Always("tern sends RESPONSE-ORIGIN only with RFC 5780")),
    on("no-stun-backward-compatibility", Always("tern answers RFC 5389/8489 STUN only")),
    on("stun-backward-compatibility", Warn("tern answers RFC 5389/8489 STUN only")),
    on("rfc3489-compatibility", Warn("tern answers RFC 5389/8489 STUN only")),
    any("acme-redirect", Warn("tern does not serve ACME challenges; renew the certificate outside, tern reloads it")),
    any("cpus", Warn("use relay-threads (0 = one per core)")),
    // TLS.
    any("cipher-list", Warn(TLS_DEFAULTS)),
    any("ec-curve-name", Warn(TLS_DEFAULTS)),
    any("dh-file", Warn(TLS_DEFAULTS)),
    on("dh566", Warn(TLS_DEFAULTS)),
    on("dh1066", Warn(TLS_DEFAULTS)),
    on("tlsv1", Warn("tern never serves TLS 1.0")),
    on("tlsv1_1", Warn("tern never serves TLS 1.1")),
    on("no-tlsv1", Always("tern never serves TLS 1.0")),
    on("no-tlsv1_1", Always("tern never serves TLS 1.1")),
    on("no-tlsv1_2", Warn("tern serves TLS 1.2 and 1.3 (ECDHE and AEAD suites only) and cannot turn 1.2 off")),
    any("CA-file", Refuse("tern does not verify client certificates: remove CA-file, or keep coTURN where clients must present one")),
    any("pkey-pwd", Refuse("tern reads unencrypted PEM keys only: decrypt the key (openssl pkey -in KEY -out KEY.pem) and point pkey at it")),
    on("raw-public-keys", Warn("tern serves X.509 certificates only")),
    // Process and logging.
    any("proc-user", Refuse("tern does not switch user: start it as that user (docker user:, systemd User=)")),
    any("proc-group", Refuse("tern does not switch group: start it with that group (docker user:, systemd Group=)")),
    on("daemon", Warn("tern stays in the foreground: let the supervisor (systemd, docker) run it")),
    on("syslog", Warn("tern logs to standard error (journald and docker collect it) and log-file")),
    any("syslog-facility", Warn(LOGS)),
    on("simple-log", Always("tern writes log-file under the name given")),
    any("log-min-level", Warn("set log-level (a tracing filter, e.g. warn)")),
    on("new-log-timestamp", Warn(LOGS)),
    any("new-log-timestamp-format", Warn(LOGS)),
    on("log-binding", Warn("tern does not log Binding requests")),
    on("verbose", Special("log-level = \"debug\"")),
    on("Verbose", Special("log-level = \"debug\" (tern logs nothing per packet)")),
    on("software-attribute", Special("software = \"tern/<version>\"")),
    on("no-software-attribute", Special("software unset (tern's default)")),
    any("version", Warn("not a setting")),
    // Management interfaces.
    on("cli", Warn(NO_CLI)),
    on("no-cli", Always(NO_CLI)),
    any("cli-ip", Warn(NO_CLI)),
    any("cli-port", Warn(NO_CLI)),
    any("cli-password", Warn(NO_CLI)),
    any("cli-max-output-sessions", Warn(NO_CLI)),
    on("web-admin", Warn(NO_WEB_ADMIN)),
    any("web-admin-ip", Warn(NO_WEB_ADMIN)),
    any("web-admin-port", Warn(NO_WEB_ADMIN)),
    on("web-admin-listen-on-workers", Warn(NO_WEB_ADMIN)),
    on("prometheus", Special("/metrics on http-listen = 0.0.0.0:9641 (or prometheus-address:prometheus-port)")),
    any("prometheus-port", Special("the port of http-listen, with prometheus")),
    any("prometheus-address", Special("the address of http-listen, with prometheus")),
    any("prometheus-path", Special("tern serves metrics at /metrics")),
    on("prometheus-username-labels", Warn("tern's metrics have no per-user labels")),
    on("prometheus-tls", Refuse("set http-tls (with cert and pkey) to serve /metrics over HTTPS")),
    any("prometheus-cert", Refuse("set http-tls (with cert and pkey) to serve /metrics over HTTPS")),
    any("prometheus-key", Refuse("set http-tls (with cert and pkey) to serve /metrics over HTTPS")),
];

/// coTURN's prometheus port when none is given.
const PROMETHEUS_PORT: u16 = 9641;

/// What a bare `key` (no value) means in coTURN for keys that take a number.
const BARE_DEFAULTS: &[(&str, &str)] = &[
    ("stale-nonce", "600"),
    ("max-allocate-lifetime", "3600"),
    ("channel-lifetime", "600"),
    ("permission-lifetime", "300"),
];

/// The rule for a coTURN name, if it has one.
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|rule| rule.name == name)
}

/// The tern key a coTURN name maps to, if any.
pub fn mapped_key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|key| key.coturn.contains(&name))
}

/// A coTURN key tern accepted as its own behaviour, or ignored with a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub at: Origin,
    pub key: String,
    pub text: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.key, self.text)
    }
}

/// A check that needs every source merged (the environment may bring the secret).
#[derive(Clone, Debug)]
enum Deferred {
    /// `use-auth-secret` / `lt-cred-mech` / a user database: credentials must come from somewhere.
    Credentials {
        key: String,
        at: Origin,
        database: bool,
    },
    /// `no-tcp-relay`: fine only if no client can reach tern over TCP or TLS.
    NoTcpRelay { at: Origin },
}

/// What reading a `turnserver.conf` leaves besides the values: notes and the checks to run once
/// every source is merged ([`Import::finish`]).
#[derive(Clone, Debug, Default)]
pub struct Import {
    /// Ignored with a warning.
    pub warnings: Vec<Note>,
    /// Accepted as what tern does anyway.
    pub accepted: Vec<Note>,
    deferred: Vec<Deferred>,
}

impl Import {
    /// Runs the checks that need the merged configuration.
    pub(super) fn finish(&mut self, config: &Config) -> Result<(), ConfigError> {
        let has_credentials = !config.static_auth_secrets.is_empty() || !config.users.is_empty();
        // A database is the more telling refusal: check those first.
        let mut deferred = self.deferred.clone();
        deferred
            .sort_by_key(|check| !matches!(check, Deferred::Credentials { database: true, .. }));
        for check in deferred {
            match check {
                Deferred::Credentials { key, at, database } if has_credentials => {
                    if database {
                        let text = format!("ignored: {DATABASE}");
                        self.warnings.push(Note { at, key, text });
                    }
                }
                Deferred::Credentials { key, at, database } => {
                    let reason = if database {
                        "tern reads no user database and no static-auth-secret or user line is \
                         set: set static-auth-secret (or TERN_STATIC_AUTH_SECRET) or user lines"
                    } else {
                        "coTURN would take the credentials from its database, which tern does not \
                         read: set static-auth-secret (or TERN_STATIC_AUTH_SECRET) or user lines"
                    };
                    return Err(refused(&key, reason, &at));
                }
                Deferred::NoTcpRelay { at } => {
                    let tls = !config.no_tls && config.cert.is_some();
                    if !config.no_tcp || tls {
                        let Some(Rule {
                            action: Special(reason),
                            ..
                        }) = rule("no-tcp-relay")
                        else {
                            unreachable!("no-tcp-relay has a rule")
                        };
                        return Err(refused("no-tcp-relay", reason, &at));
                    }
                }
            }
        }
        Ok(())
    }
}

fn refused(key: &str, reason: &str, at: &Origin) -> ConfigError {
    ConfigError::Refused {
        key: key.to_string(),
        reason: reason.to_string(),
    }
    .at(Some(at))
}

/// One setting line: its number, name and value (quotes removed; empty for a bare switch).
struct Line<'a> {
    number: usize,
    name: &'a str,
    value: &'a str,
}

/// coTURN's own line format: the name ends at the first space, tab or `=`; the value follows
/// any run of those; a value starting with `"` loses its quotes.
fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines().enumerate().filter_map(|(index, raw)| {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("--").unwrap_or(line);
        let end = line.find([' ', '\t', '=']).unwrap_or(line.len());
        let (name, rest) = line.split_at(end);
        let mut value = rest.trim_start_matches([' ', '\t', '=']);
        if let Some(quoted) = value.strip_prefix('"') {
            value = quoted.strip_suffix('"').unwrap_or(quoted);
        }
        Some(Line {
            number: index + 1,
            name,
            value,
        })
    })
}

/// coTURN's boolean: empty (a bare switch) is on; then by the first character, as coTURN reads
/// it (`0`/`n`/`f` off, `1`-`9`/`y`/`t` on), or `on`/`off`.
fn switch(key: &str, value: &str) -> Result<bool, ConfigError> {
    let lower = value.trim().to_ascii_lowercase();
    match lower.as_bytes().first() {
        None => Ok(true),
        Some(b'0' | b'n' | b'f') => Ok(false),
        Some(b'1'..=b'9' | b'y' | b't') => Ok(true),
        _ if lower == "on" => Ok(true),
        _ if lower == "off" => Ok(false),
        _ => Err(super::values::invalid(
            key,
            value,
            "expected on/off, yes/no, true/false or 1/0",
        )),
    }
}

/// Values gathered for one tern key, in file order.
struct Pending {
    key: &'static Key,
    values: Vec<(String, Origin)>,
}

/// Reads a `turnserver.conf` on top of `config`. Refused keys are errors; the rest of the
/// decisions come back in the [`Import`].
pub(super) fn apply_coturn(
    config: &mut Config,
    text: &str,
    origin: &str,
    sources: &mut Sources,
) -> Result<Import, ConfigError> {
    let mut import = Import::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut prometheus: Option<Origin> = None;
    let mut prometheus_port: Option<(String, Origin)> = None;
    let mut prometheus_address: Option<(String, Origin)> = None;
    for line in lines(text) {
        let at = Origin::File {
            path: origin.to_string(),
            line: line.number,
        };
        let mut push = |key: &'static Key, value: String| {
            let at = at.clone();
            match pending.iter_mut().find(|p| p.key.name == key.name) {
                Some(p) if key.arity() == Arity::Many => p.values.push((value, at)),
                Some(p) => p.values = vec![(value, at)],
                None => pending.push(Pending {
                    key,
                    values: vec![(value, at)],
                }),
            }
        };
        let note = |text: &str| Note {
            at: at.clone(),
            key: line.name.to_string(),
            text: text.to_string(),
        };
        if let Some(rule) = rule(line.name) {
            if rule.when_on && !switch(line.name, line.value).map_err(|e| e.at(Some(&at)))? {
                continue;
            }
            match rule.action {
                Always(text) => import.accepted.push(note(text)),
                Warn(text) => import.warnings.push(note(&format!("ignored: {text}"))),
                Refuse(reason) => return Err(refused(line.name, reason, &at)),
                Special(reason) => match line.name {
                    "verbose" | "Verbose" => push(keys::find("log-level").unwrap(), "debug".into()),
                    "software-attribute" => push(
                        keys::find("software").unwrap(),
                        concat!("tern/", env!("CARGO_PKG_VERSION")).into(),
                    ),
                    "no-software-attribute" => push(keys::find("software").unwrap(), String::new()),
                    "prometheus" => prometheus = Some(at.clone()),
                    "prometheus-port" => prometheus_port = Some((line.value.into(), at.clone())),
                    "prometheus-address" => {
                        prometheus_address = Some((line.value.into(), at.clone()))
                    }
                    "prometheus-path" => {
                        if line.value.trim_end_matches('/') != "/metrics" {
                            import.warnings.push(note(&format!("ignored: {reason}")));
                        }
                    }
                    "rest-api-separator" => {
                        if line.value != ":" {
                            return Err(refused(line.name, reason, &at));
                        }
                        import.accepted.push(note("tern's separator is \":\""));
                    }
                    "allocation-default-address-family" => {
                        if line.value == "ipv4" {
                            import.accepted.push(note(reason));
                        } else {
                            import.warnings.push(note(&format!("ignored: {reason}")));
                        }
                    }
                    "no-tcp-relay" => import
                        .deferred
                        .push(Deferred::NoTcpRelay { at: at.clone() }),
                    _database => import.deferred.push(Deferred::Credentials {
                        key: line.name.to_string(),
                        at: at.clone(),
                        database: true,
                    }),
                },
            }
            continue;
        }
        let Some(key) = mapped_key(line.name).or_else(|| keys::find(line.name)) else {
            return Err(unknown(line.name, &at));
        };
        if matches!(line.name, "use-auth-secret" | "lt-cred-mech")
            && switch(line.name, line.value).map_err(|e| e.at(Some(&at)))?
        {
            import.deferred.push(Deferred::Credentials {
                key: line.name.to_string(),
                at: at.clone(),
                database: false,
            });
        }
        let value = match key.arity() {
            Arity::Switch => switch(line.name, line.value)
                .map_err(|e| e.at(Some(&at)))?
                .to_string(),
            _ if line.value.is_empty() => {
                let bare = BARE_DEFAULTS.iter().find(|(name, _)| *name == line.name);
                match bare {
                    Some((_, value)) => value.to_string(),
                    None => {
                        let err = super::values::invalid(line.name, "", "needs a value");
                        return Err(err.at(Some(&at)));
                    }
                }
            }
            _ => line.value.to_string(),
        };
        push(key, value);
    }
    if let Some(at) = prometheus {
        let key = keys::find("http-listen").unwrap();
        let address = prometheus_address.map_or("0.0.0.0".to_string(), |(a, _)| a);
        let port = prometheus_port.map_or(PROMETHEUS_PORT.to_string(), |(p, _)| p);
        let listen = match address.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]:{port}"),
            Err(_) => format!("{address}:{port}"),
        };
        pending.push(Pending {
            key,
            values: vec![(listen, at.clone())],
        });
        pending.push(Pending {
            key: keys::find("no-http").unwrap(),
            values: vec![("false".into(), at)],
        });
    } else if let Some((_, at)) = prometheus_port.or(prometheus_address) {
        let text = "ignored: without prometheus coTURN serves no metrics (tern serves them on http-listen)";
        import.warnings.push(Note {
            at,
            key: "prometheus-port".into(),
            text: text.into(),
        });
    }
    for Pending { key, values } in pending {
        // Each value alone first, so an error names its own line.
        for (value, at) in &values {
            key.set(config, &Input::Text(std::slice::from_ref(value)))
                .map_err(|e| e.at(Some(at)))?;
        }
        let texts: Vec<String> = values.iter().map(|(value, _)| value.clone()).collect();
        let at = values.last().map(|(_, at)| at.clone()).unwrap();
        key.set(config, &Input::Text(&texts))
            .map_err(|e| e.at(Some(&at)))?;
        sources.insert(key.name, at);
    }
    Ok(import)
}

/// `unknown key "x" (did you mean "y"?)` among coTURN's and tern's names.
fn unknown(name: &str, at: &Origin) -> ConfigError {
    let names = RULES
        .iter()
        .map(|rule| rule.name)
        .chain(KEYS.iter().flat_map(|key| key.coturn.iter().copied()))
        .chain(KEYS.iter().map(|key| key.name));
    ConfigError::UnknownKey {
        key: name.to_string(),
        suggestion: nearest(name, names),
    }
    .at(Some(at))
}

/// Whether `text` is a coTURN `turnserver.conf` rather than TOML, by its content: any line in a
/// form only coTURN reads (a bare switch, `key value`, `key=unquoted text`, `--key`) makes it
/// coTURN's, any TOML-only form (a `[table]`, a list) TOML's. Lines both read alike
/// (`key = 3478`, `key = "text"`, `key = true`) decide by their names.
pub fn is_coturn(text: &str) -> bool {
    let mut coturn_names = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            return false;
        }
        let Some((name, value)) = line.split_once('=') else {
            return true;
        };
        if name.starts_with("--") {
            return true;
        }
        let name = name.trim();
        let value = value.trim();
        let is_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !is_name {
            return true;
        }
        match value.bytes().next() {
            Some(b'[' | b'{' | b'\'') => return false,
            None | Some(b'"' | b'0'..=b'9' | b'+' | b'-') => {}
            Some(_) if value.starts_with("true") || value.starts_with("false") => {}
            Some(_) => return true,
        }
        if keys::find(name).is_none() && (rule(name).is_some() || mapped_key(name).is_some()) {
            coturn_names = true;
        }
    }
    coturn_names
}

#[cfg(test)]
mod tests {
    use super::super::{converted_toml, from_str, from_toml_str, Format, Loaded, Secret};
    use super::*;
    use crate::auth::StaticKey;
    use crate::config::AllocationLimit;

    /// Every option of coTURN 4.17.1's `turnserver` (src/apps/relay/mainrelay.c, long_options),
    /// plus keys older coTURN (Debian's 4.6 turnserver.conf) still writes.
    const COTURN_OPTIONS: &[&str] = &[
        "listening-device",
        "listening-port",
        "tls-listening-port",
        "alt-listening-port",
        "alt-tls-listening-port",
        "tcp-proxy-port",
        "listening-ip",
        "relay-device",
        "relay-ip",
        "external-ip",
        "relay-threads",
        "min-port",
        "max-port",
        "sock-buf-size",
        "lt-cred-mech",
        "no-auth",
        "user",
        "userdb",
        "db",
        "psql-userdb",
        "sql-userdb",
        "mysql-userdb",
        "mongo-userdb",
        "redis-userdb",
        "redis-statsdb",
        "prometheus",
        "prometheus-port",
        "prometheus-address",
        "prometheus-path",
        "prometheus-username-labels",
        "prometheus-tls",
        "prometheus-cert",
        "prometheus-key",
        "use-auth-secret",
        "static-auth-secret",
        "no-auth-pings",
        "no-dynamic-ip-list",
        "no-dynamic-realms",
        "realm",
        "server-name",
        "oauth",
        "user-quota",
        "total-quota",
        "max-bps",
        "bps-capacity",
        "verbose",
        "Verbose",
        "daemon",
        "no-software-attribute",
        "software-attribute",
        "fingerprint",
        "check-origin-consistency",
        "no-udp",
        "no-tcp",
        "no-tls",
        "dtls",
        "no-dtls",
        "no-udp-relay",
        "no-tcp-relay",
        "stale-nonce",
        "max-allocate-lifetime",
        "channel-lifetime",
        "permission-lifetime",
        "stun-only",
        "no-stun",
        "cert",
        "raw-public-keys",
        "pkey",
        "pkey-pwd",
        "log-file",
        "no-stdout-log",
        "syslog",
        "simple-log",
        "log-min-level",
        "new-log-timestamp",
        "new-log-timestamp-format",
        "aux-server",
        "udp-self-balance",
        "alternate-server",
        "tls-alternate-server",
        "tcp-alternate-server",
        "udp-alternate-server",
        "rest-api-separator",
        "max-allocate-timeout",
        "drain-min-allocations",
        "no-multicast-peers",
        "allow-loopback-peers",
        "allowed-peer-ip",
        "denied-peer-ip",
        "cipher-list",
        "pidfile",
        "secure-stun",
        "CA-file",
        "dh-file",
        "proc-user",
        "proc-group",
        "mobility",
        "no-cli",
        "cli",
        "cli-ip",
        "cli-port",
        "cli-password",
        "web-admin",
        "web-admin-ip",
        "web-admin-port",
        "web-admin-listen-on-workers",
        "server-relay",
        "cli-max-output-sessions",
        "ec-curve-name",
        "dh566",
        "dh1066",
        "tlsv1",
        "tlsv1_1",
        "no-tlsv1_2",
        "secret-key-file",
        "keep-address-family",
        "allocation-default-address-family",
        "acme-redirect",
        "log-binding",
        "no-rfc5780",
        "rfc5780",
        "stun-backward-compatibility",
        "rfc5766-channel-numbers",
        "rfc3489-compatibility",
        "response-origin-only-with-rfc5780",
        "respond-http-unsupported",
        "drop-invalid-packets",
        "drop-invalid-packets-log",
        "udp-recvmmsg",
        "udp-recvmmsg-log",
        "udp-sendmmsg-log",
        "udp-gso",
        "include-reason-string",
        "multiplex-peer",
        "multiplex-peer-port",
        "multiplex-peer-max-peers",
        "version",
        "syslog-facility",
        "cpus",
        "unauthorized-ratelimit",
        "unauthorized-ratelimit-rps",
        "stateless-nonce",
        "stateless-nonce-secret",
        // Older coTURN.
        "no-stun-backward-compatibility",
        "no-tlsv1",
        "no-tlsv1_1",
        "no-loopback-peers",
    ];

    fn conf(text: &str) -> Loaded {
        let loaded = from_str(text).unwrap_or_else(|err| panic!("{text}\n{err}"));
        assert_eq!(loaded.format, Format::Coturn, "{text}");
        loaded
    }

    fn refused_key(text: &str) -> (String, String) {
        let err = from_str(text).expect_err(text);
        let shown = err.to_string();
        match err.inner() {
            ConfigError::Refused { key, .. } => (key.clone(), shown),
            other => panic!("{text}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn every_coturn_option_is_decided() {
        for name in COTURN_OPTIONS {
            let decided = rule(name).is_some() || mapped_key(name).is_some();
            assert!(decided, "coTURN's {name} has no rule and maps to no key");
        }
        for rule in RULES {
            assert!(
                mapped_key(rule.name).is_none(),
                "{} both maps and has a rule",
                rule.name
            );
            assert!(
                keys::find(rule.name).is_none(),
                "{} is a tern key",
                rule.name
            );
        }
    }

    #[test]
    fn line_forms() {
        let config = conf(
            "# comment\n\
             \n\
             listening-port=3479\n\
             min-port 40000\n\
             max-port\t=\t40100\n\
             --realm=\"example.org\"\n\
             \tuser-quota = 5   \n\
             no-tcp\n\
             allow-loopback-peers=yes\n\
             no-tls=off\n",
        )
        .config;
        assert_eq!(config.listening_port, 3479);
        assert_eq!((config.min_port, config.max_port), (40000, 40100));
        assert_eq!(config.realm, "example.org");
        assert_eq!(config.user_quota, AllocationLimit::Count(5));
        assert!(config.no_tcp && config.allow_loopback_peers && !config.no_tls);
    }

    #[test]
    fn coturn_booleans() {
        for (value, expected) in [
            ("", true),
            ("=1", true),
            ("=true", true),
            ("=yes", true),
            ("=on", true),
            (" On", true),
            ("=Y", true),
            ("=0", false),
            ("=false", false),
            ("=no", false),
            ("=off", false),
            ("=OFF", false),
        ] {
            let text = format!("realm=x\nno-udp{value}\n");
            assert_eq!(conf(&text).config.no_udp, expected, "no-udp{value}");
        }
        let err = from_str("realm=x\nno-udp=maybe").unwrap_err().to_string();
        assert!(
            err.starts_with("<string>:2: no-udp: invalid value \"maybe\""),
            "{err}"
        );
    }

    #[test]
    fn repeated_keys_accumulate_or_replace() {
        let config = conf(
            "listening-ip=127.0.0.1\nlistening-ip=::1\n\
             static-auth-secret=one\nstatic-auth-secret=two\n\
             user=bob:0x00112233445566778899aabbccddeeff\nuser=alice:pa:ss\n\
             denied-peer-ip=203.0.113.0-203.0.113.255\ndenied-peer-ip=198.51.100.7\n\
             allowed-peer-ip=10.0.0.1\n\
             external-ip=203.0.113.7/10.0.0.5\n\
             alternate-server=192.0.2.1:3478\n\
             realm=first\nrealm=second\n",
        )
        .config;
        let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(config.listening_ips, vec![ip("127.0.0.1"), ip("::1")]);
        assert_eq!(
            config.static_auth_secrets,
            vec![Secret("one".into()), Secret("two".into())],
            "repeated static-auth-secret = rotation"
        );
        assert_eq!(
            config.users,
            vec![
                ("alice".into(), StaticKey::Password("pa:ss".into())),
                (
                    "bob".into(),
                    StaticKey::Key([
                        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                        0xcc, 0xdd, 0xee, 0xff
                    ])
                ),
            ]
        );
        assert_eq!(config.denied_peer_ips.len(), 2);
        assert_eq!(config.allowed_peer_ips.len(), 1);
        assert_eq!(
            config.external_ips,
            vec![ExternalIpFixture::mapped("203.0.113.7", "10.0.0.5")]
        );
        assert_eq!(config.alternate_servers.len(), 1);
        assert_eq!(config.realm, "second", "a single-valued key: the last wins");
    }

    struct ExternalIpFixture;
    impl ExternalIpFixture {
        fn mapped(public: &str, private: &str) -> crate::config::ExternalIp {
            crate::config::ExternalIp {
                public: public.parse().unwrap(),
                private: Some(private.parse().unwrap()),
            }
        }
    }

    #[test]
    fn bare_numbers_take_coturns_defaults() {
        let config = conf(
            "realm=x\nstale-nonce\nmax-allocate-lifetime\nchannel-lifetime\npermission-lifetime\n",
        )
        .config;
        assert_eq!(
            (
                config.stale_nonce,
                config.max_allocate_lifetime,
                config.channel_lifetime,
                config.permission_lifetime
            ),
            (600, 3600, 600, 300)
        );
        let config = conf("realm=x\nstale-nonce=120\nchannel-lifetime 60\n").config;
        assert_eq!((config.stale_nonce, config.channel_lifetime), (120, 60));
        let err = from_str("realm=x\nlistening-port\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("<string>:2: listening-port: invalid value \"\": needs a value"),
            "{err}"
        );
    }

    #[test]
    fn mapped_names_and_specials() {
        let config = conf(
            "rfc5766-channel-numbers\nudp-gso=0\nverbose\nsoftware-attribute\n\
             log-file=/var/log/tern.log\nno-stdout-log\npidfile=/run/tern.pid\n\
             relay-threads=3\nsock-buf-size=65536\ntls-listening-port=443\nalt-listening-port=3500\n\
             cert=/c.pem\npkey=/k.pem\nno-tls\n",
        )
        .config;
        assert!(config.allow_rfc5766_channel_numbers && !config.udp_gso);
        assert_eq!(config.log_level, "debug");
        assert_eq!(
            config.software.as_deref(),
            Some(concat!("tern/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(
            config.log_file.as_deref(),
            Some(std::path::Path::new("/var/log/tern.log"))
        );
        assert!(config.no_stdout_log);
        assert_eq!(
            config.pidfile.as_deref(),
            Some(std::path::Path::new("/run/tern.pid"))
        );
        assert_eq!((config.relay_threads, config.sock_buf_size), (3, 65536));
        assert_eq!(
            (config.tls_listening_port, config.alt_listening_port),
            (443, 3500)
        );
        assert!(config.cert.is_some() && config.pkey.is_some() && config.no_tls);
        // Later no-software-attribute switches it off again.
        assert_eq!(
            conf("software-attribute\nno-software-attribute\n")
                .config
                .software,
            None
        );
    }

    #[test]
    fn prometheus_becomes_http_listen() {
        let config = conf("prometheus\n").config;
        assert_eq!(config.http_listen, "0.0.0.0:9641".parse().unwrap());
        let config =
            conf("prometheus\nprometheus-port=9100\nprometheus-address=127.0.0.1\n").config;
        assert_eq!(config.http_listen, "127.0.0.1:9100".parse().unwrap());
        let config = conf("prometheus\nprometheus-address=::1\n").config;
        assert_eq!(config.http_listen, "[::1]:9641".parse().unwrap());
        let loaded = conf("prometheus-port=9100\n");
        assert_eq!(loaded.config.http_listen, Config::default().http_listen);
        assert_eq!(loaded.import.warnings.len(), 1);
        assert!(conf("prometheus\nprometheus-path=/metrics\n")
            .import
            .warnings
            .is_empty());
        assert_eq!(
            conf("prometheus\nprometheus-path=/stats\n")
                .import
                .warnings
                .len(),
            1
        );
    }

    #[test]
    fn internals_warn_once_each_and_start() {
        let loaded = conf(
            "realm=x\ncli-password=hunter2\nno-cli\nmobility\ncipher-list=\"DEFAULT\"\nsyslog\n\
             dh566=0\nno-multicast-peers\n",
        );
        let warned: Vec<&str> = loaded
            .import
            .warnings
            .iter()
            .map(|n| n.key.as_str())
            .collect();
        assert_eq!(
            warned,
            ["cli-password", "mobility", "cipher-list", "syslog"]
        );
        let accepted: Vec<&str> = loaded
            .import
            .accepted
            .iter()
            .map(|n| n.key.as_str())
            .collect();
        assert_eq!(accepted, ["no-cli", "no-multicast-peers"]);
        let shown = loaded.import.warnings[0].to_string();
        assert!(
            shown.starts_with("<string>:2: cli-password: ignored:") && !shown.contains("hunter2")
        );
        assert_eq!(
            loaded.config,
            Config {
                realm: "x".into(),
                ..Config::default()
            }
        );
    }

    #[test]
    fn unsafe_or_different_keys_are_refused() {
        for (text, key) in [
            ("no-auth", "no-auth"),
            ("realm=x\noauth=1", "oauth"),
            ("server-relay", "server-relay"),
            ("secure-stun", "secure-stun"),
            ("stun-only", "stun-only"),
            ("listening-device=eth0", "listening-device"),
            ("relay-device=eth0", "relay-device"),
            ("tcp-proxy-port=5555", "tcp-proxy-port"),
            ("proc-user=turnserver", "proc-user"),
            ("CA-file=/ca.pem", "CA-file"),
            ("pkey-pwd=secret", "pkey-pwd"),
            ("prometheus-tls", "prometheus-tls"),
            ("no-udp-relay", "no-udp-relay"),
            ("rest-api-separator=-", "rest-api-separator"),
            ("static-auth-secret=s\nno-tcp-relay", "no-tcp-relay"),
        ] {
            let (named, shown) = refused_key(text);
            assert_eq!(named, key, "{text}");
            assert!(
                shown.starts_with("<string>:") && shown.contains(key),
                "{shown}"
            );
            assert!(!shown.contains("secret\n"), "{shown}");
        }
        // Off, or harmless values, are accepted.
        for text in [
            "no-auth=0",
            "server-relay=false",
            "rest-api-separator=:",
            "secure-stun=no",
        ] {
            conf(&format!("realm=x\n{text}\n"));
        }
        // no-tcp-relay is honoured when no client can reach tern over TCP or TLS.
        let config = conf("no-tcp-relay\nno-tcp\nno-tls\n").config;
        assert!(config.no_tcp && config.no_tls);
        let (_, shown) = refused_key("realm=x\npkey-pwd=hunter2");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn bandwidth_rate_limit_and_rfc5780_map_to_tern_keys() {
        let config = conf(
            "realm=x\nmax-bps=100000\nbps-capacity=1000000\nunauthorized-ratelimit\n\
             unauthorized-ratelimit-rps=5\nlistening-ip=192.0.2.1\nlistening-ip=192.0.2.2\n\
             rfc5780\n",
        )
        .config;
        assert_eq!((config.max_bps, config.bps_capacity), (100_000, 1_000_000));
        assert_eq!(config.unauthenticated_rate_limit, 5);
        assert!(config.rfc5780);
        let config = conf("realm=x\nno-rfc5780\nmax-bps=0\n").config;
        assert!(!config.rfc5780);
        assert_eq!(config.max_bps, 0);
    }

    #[test]
    fn credentials_from_a_database_are_refused_unless_given_here() {
        for (text, key) in [
            ("use-auth-secret\n", "use-auth-secret"),
            ("lt-cred-mech\n", "lt-cred-mech"),
            ("lt-cred-mech\nuserdb=/var/lib/turn/turndb\n", "userdb"),
            (
                "redis-userdb=\"ip=127.0.0.1 password=hunter2\"\n",
                "redis-userdb",
            ),
        ] {
            let (named, shown) = refused_key(text);
            assert_eq!(named, key, "{text}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let loaded =
            conf("use-auth-secret\nstatic-auth-secret=s\npsql-userdb=\"password=hunter2\"\n");
        assert_eq!(loaded.import.warnings.len(), 1);
        assert_eq!(loaded.import.warnings[0].key, "psql-userdb");
        assert!(!loaded.import.warnings[0].to_string().contains("hunter2"));
        conf("lt-cred-mech\nuser=alice:pw\n");
    }

    /// Each rule does what it says, bare (`key`) and with a value (`key=1`).
    #[test]
    fn every_rule_accepts_warns_or_refuses() {
        for rule in RULES {
            for line in [rule.name.to_string(), format!("{}=1", rule.name)] {
                let text = format!("static-auth-secret=s\n{line}\n");
                match rule.action {
                    Refuse(reason) => {
                        let (key, shown) = refused_key(&text);
                        assert_eq!(key, rule.name);
                        assert!(
                            shown.starts_with("<string>:2: ") && shown.ends_with(reason),
                            "{shown}"
                        );
                    }
                    Warn(_) => {
                        let loaded = conf(&text);
                        let keys: Vec<&str> = loaded
                            .import
                            .warnings
                            .iter()
                            .map(|n| n.key.as_str())
                            .collect();
                        assert_eq!(keys, [rule.name], "{text}");
                        assert!(loaded.import.accepted.is_empty());
                    }
                    Always(_) => {
                        let loaded = conf(&text);
                        assert!(loaded.import.warnings.is_empty(), "{text}");
                        assert_eq!(loaded.import.accepted.len(), 1, "{text}");
                        assert_eq!(
                            loaded.config,
                            from_str("static-auth-secret=s\n").unwrap().config
                        );
                    }
                    Special(_) => {}
                }
            }
            if rule.when_on {
                // Switched off, a rule does nothing.
                let loaded = conf(&format!("static-auth-secret=s\n{}=0\n", rule.name));
                assert!(loaded.import.warnings.is_empty() && loaded.import.accepted.is_empty());
            }
        }
    }

    #[test]
    fn unknown_coturn_key_is_an_error_with_a_suggestion() {
        let err = from_str("realm=x\nlistening-prt=3478\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "<string>:2: unknown key \"listening-prt\" (did you mean \"listening-port\"?)"
        );
        let err = from_str("realm=x\nstatic-auth-secrt=hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did you mean \"static-auth-secret\"") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn format_is_decided_by_content() {
        assert!(is_coturn("lt-cred-mech\n"));
        assert!(is_coturn("realm=example.org\n"));
        assert!(is_coturn("listening-port 3478\n"));
        assert!(is_coturn("--listening-port=3478\n"));
        assert!(
            is_coturn("# a comment\nuser=\"alice:pw\"\n"),
            "a coTURN-only name"
        );
        assert!(!is_coturn(
            "realm = \"example.org\"\nlistening-port = 3478 # port\n"
        ));
        assert!(!is_coturn("listening-ip = [\"0.0.0.0\"]\n"));
        assert!(!is_coturn("[users]\nalice = \"pw\"\n"));
        assert!(!is_coturn("no-udp = true\n"));
        assert!(!is_coturn("realm = \n"), "a TOML syntax error stays TOML's");
        assert!(!is_coturn(include_str!("../../turnserver.toml")));
        // Both read `key=number` alike.
        let loaded = from_str("listening-port=3479\n").unwrap();
        assert_eq!(
            (loaded.format, loaded.config.listening_port),
            (Format::Toml, 3479)
        );
    }

    /// convert writes a turnserver.toml that loads to the same configuration.
    #[test]
    fn convert_round_trip() {
        let texts = [
            "listening-ip=127.0.0.1\nlistening-ip=::1\nlistening-port=3479\nrealm=example.org\n\
             use-auth-secret\nstatic-auth-secret=one\nstatic-auth-secret=two\n\
             user=alice:pw\nuser=bob:0x00112233445566778899aabbccddeeff\nuser=\"we:ird\"\n\
             denied-peer-ip=203.0.113.0-203.0.113.255\nallowed-peer-ip=10.0.0.1\n\
             external-ip=203.0.113.7/10.0.0.5\nexternal-ip=2001:db8::7\nmin-port=40000\nmax-port=40100\n\
             stale-nonce\nmax-allocate-lifetime=1200\nuser-quota=3\ntotal-quota=100\n\
             no-tcp\nverbose\nsoftware-attribute\nprometheus\ncli-password=x\nno-multicast-peers\n\
             alternate-server=192.0.2.1:3478\nrelay-threads=2\nudp-gso=no\nlog-file=/tmp/t.log\n",
            include_str!("../../tests/fixtures/coturn/debian-turnserver.conf"),
            include_str!("../../tests/fixtures/coturn/hardened-turnserver.conf"),
        ];
        for text in texts {
            let loaded = from_str(text).unwrap_or_else(|err| panic!("{err}"));
            let converted = converted_toml(&loaded, "turnserver.conf");
            let reloaded =
                from_toml_str(&converted).unwrap_or_else(|err| panic!("{err}\n{converted}"));
            assert_eq!(reloaded, loaded.config, "{converted}");
        }
    }
}

/// The README's "Migrating from coTURN" table has a row for every coTURN name tern knows.
#[cfg(test)]
mod docs_tests {
    use super::*;

    #[test]
    fn readme_migration_table_covers_every_coturn_name() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Migrating from coTURN")
            .nth(1)
            .expect("README has a Migrating from coTURN section")
            .split("\n## ")
            .next()
            .unwrap();
        let row = |name: &str| -> Vec<String> {
            let start = format!("| `{name}` |");
            let line = section
                .lines()
                .find(|line| line.starts_with(&start))
                .unwrap_or_else(|| panic!("README migration table: no row for coTURN's {name}"));
            line.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        };
        for key in KEYS {
            for name in key.coturn {
                assert_eq!(row(name)[1], format!("`{}`", key.name), "coTURN's {name}");
            }
        }
        for rule in RULES {
            let cells = row(rule.name);
            match rule.action {
                Refuse(_) => assert!(cells[2].contains("**refused**"), "{}", rule.name),
                Warn(_) => assert!(cells[2].contains("one warning"), "{}", rule.name),
                Always(_) => assert!(cells[2].starts_with("accepted"), "{}", rule.name),
                Special(_) => {}
            }
        }
    }
}
