//! The key table: every configuration key declared once. The [`Config`] struct, its defaults,
//! the TOML reader, the flags and environment variables, `--help`, `tern config check` and
//! `convert`, the coTURN import and the documentation checks all derive from [`KEYS`].

use super::shape::{
    int, Accepted, Arity, Count, Input, Limit, List, Optional, Secrets, Shape, Switch, Text, Users,
};
use super::values::{self};
use super::{AllocationLimit, ConfigError, ExternalIp, LogFormat, Secret};
use crate::auth::StaticKey;
use crate::policy::IpRange;
use crate::turn::{
    DEFAULT_MAX_CHANNELS, DEFAULT_MAX_PEERS_PER_REQUEST, DEFAULT_MAX_PERMISSIONS,
    DEFAULT_UNAUTHENTICATED_RATE_LIMIT,
};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Whether SIGHUP applies a changed value to the running server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Applied to live traffic on SIGHUP.
    Live,
    /// Read at start only (listeners, threads, sockets, logging).
    Restart,
}

/// One configuration key.
pub struct Key {
    /// The TOML name (coTURN's where the concept is the same); the flag is `--<name>` and the
    /// environment variable `TERN_<NAME>` (upper snake case).
    pub name: &'static str,
    doc: &'static str,
    /// What `--help` shows as the value, e.g. `PORT`.
    pub value_name: &'static str,
    /// coTURN `turnserver.conf` names meaning the same thing, with values of the same form.
    pub coturn: &'static [&'static str],
    pub reload: Reload,
    /// Never shown: errors, `--help` and `tern config check` redact it.
    pub secret: bool,
    /// Further flag spellings (`--user` for `--users`).
    pub aliases: &'static [&'static str],
    /// Whether the key sets a field (false: accepted for coTURN compatibility, no effect).
    pub effective: bool,
    arity: Arity,
    set: fn(&mut Config, &Input<'_>) -> Result<(), ConfigError>,
    get: fn(&Config) -> Option<toml::Value>,
}

impl Key {
    const BASE: Key = Key {
        name: "",
        doc: "",
        value_name: "VALUE",
        coturn: &[],
        reload: Reload::Restart,
        secret: false,
        aliases: &[],
        effective: true,
        arity: Arity::One,
        set: |_, _| Ok(()),
        get: |_| None,
    };

    /// The one-line description (`--help`, `tern config check`).
    pub fn doc(&self) -> &'static str {
        self.doc.trim()
    }

    pub fn arity(&self) -> Arity {
        self.arity
    }

    /// `TERN_LISTENING_PORT` for `listening-port`.
    pub fn env(&self) -> String {
        format!("TERN_{}", self.name.to_ascii_uppercase().replace('-', "_"))
    }

    /// The value in `config` as TOML; `None` = unset.
    pub fn get(&self, config: &Config) -> Option<toml::Value> {
        (self.get)(config)
    }

    /// The default as TOML; `None` = unset by default.
    pub fn default_value(&self) -> Option<toml::Value> {
        self.get(&Config::default())
    }

    /// Whether this is the `[users]` table.
    pub fn is_table(&self) -> bool {
        self.name == USERS
    }

    pub(super) fn set(&self, config: &mut Config, input: &Input<'_>) -> Result<(), ConfigError> {
        (self.set)(config, input)
    }
}

/// The name of the static users table.
pub(super) const USERS: &str = "users";

/// The key named `name`, if any.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|key| key.name == name)
}

/// The restart-only keys whose value differs between the running and a reloaded config.
pub fn restart_keys_changed(running: &Config, reloaded: &Config) -> Vec<&'static str> {
    KEYS.iter()
        .filter(|key| key.reload == Reload::Restart && key.get(running) != key.get(reloaded))
        .map(|key| key.name)
        .collect()
}

const fn arity<S: Shape>(_: &S) -> Arity {
    S::ARITY
}

/// Declares [`Config`], its `Default` and [`KEYS`] from one list. Each entry:
/// `/// doc` `"name" field: Type = default; shape, Live|Restart, option = value, …;`
macro_rules! config_keys {
    (
        $(
            #[doc = $doc:literal]
            $name:literal $field:ident: $ty:ty = $default:expr;
            $shape:expr, $reload:ident $(, $opt:ident = $value:expr)*;
        )*
        accepted {
            $(
                #[doc = $adoc:literal]
                $aname:literal $(, $aopt:ident = $avalue:expr)*;
            )*
        }
    ) => {
        /// The validated configuration, one field per key of [`KEYS`]; the defaults are the
        /// zero-config run.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            $( #[doc = $doc] pub $field: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $field: $default, )* }
            }
        }

        /// Every key, in the order `turnserver.toml` lists them.
        pub static KEYS: &[Key] = &[
            $(
                Key {
                    name: $name,
                    doc: $doc,
                    reload: Reload::$reload,
                    arity: arity(&$shape),
                    set: |config, input| {
                        config.$field = Shape::parse(&$shape, $name, input)?;
                        Ok(())
                    },
                    get: |config| Shape::to_toml(&$shape, &config.$field),
                    $( $opt: $value, )*
                    ..Key::BASE
                },
            )*
            $(
                Key {
                    name: $aname,
                    doc: $adoc,
                    reload: Reload::Live,
                    arity: Arity::Switch,
                    effective: false,
                    set: |_, input| Shape::parse(&Accepted, $aname, input).map(drop),
                    $( $aopt: $avalue, )*
                    ..Key::BASE
                },
            )*
        ];
    };
}

config_keys! {
    /// Addresses to listen on; 0.0.0.0 / :: mean every local address of that family (IPv6 link-local ones excepted)
    "listening-ip" listening_ips: Vec<IpAddr> = vec![IpAddr::from([0, 0, 0, 0])];
        List(values::ip), Restart, value_name = "IP", coturn = &["listening-ip"];
    /// UDP and TCP port to listen on (TLS too when cert and pkey are set)
    "listening-port" listening_port: u16 = 3478;
        int::<u16>(), Restart, value_name = "PORT", coturn = &["listening-port"];
    /// Serve RFC 5780 NAT behaviour discovery; needs two addresses of one family named in listening-ip (a wildcard never counts), whose OTHER-ADDRESS every client can read
    "rfc5780" rfc5780: bool = false;
        Switch, Restart, coturn = &["rfc5780"];
    /// RFC 5780 NAT behaviour discovery's second port (with rfc5780); 0 = listening-port + 1
    "alt-listening-port" alt_listening_port: u16 = 0;
        int::<u16>(), Restart, value_name = "PORT", coturn = &["alt-listening-port"];
    /// Servers for 300 Try Alternate while draining or at total-quota, IP:PORT or [IPv6]:PORT; unset = 486 instead
    "alternate-server" alternate_servers: Vec<SocketAddr> = Vec::new();
        List(values::server_address), Live, value_name = "ADDR", coturn = &["alternate-server"];
    /// Seconds SIGTERM drains before stopping (new Allocates refused, live ones relay until they end); 0 = stop at once
    "drain-timeout" drain_timeout: u32 = 0;
        int::<u32>(), Live, value_name = "SECONDS";
    /// Addresses relay sockets bind to; unset = the address the client reached
    "relay-ip" relay_ips: Vec<IpAddr> = Vec::new();
        List(values::ip), Restart, value_name = "IP", coturn = &["relay-ip"];
    /// Public address advertised to clients behind NAT, PUBLIC or PUBLIC/PRIVATE
    "external-ip" external_ips: Vec<ExternalIp> = Vec::new();
        List(values::external_ip), Live, value_name = "IP[/IP]", coturn = &["external-ip"];
    /// Lowest relay port
    "min-port" min_port: u16 = 49152;
        int::<u16>(), Restart, value_name = "PORT", coturn = &["min-port"];
    /// Highest relay port
    "max-port" max_port: u16 = 65535;
        int::<u16>(), Restart, value_name = "PORT", coturn = &["max-port"];
    /// Authentication realm
    "realm" realm: String = "tern".to_string();
        Text(values::text), Live, value_name = "REALM", coturn = &["realm"];
    /// TURN REST API secrets; several at once for rotation (the first signs, any verifies)
    "static-auth-secret" static_auth_secrets: Vec<Secret> = Vec::new();
        Secrets, Live, value_name = "SECRET", secret = true, coturn = &["static-auth-secret"];
    /// Extra peer ranges to deny, on top of the built-in secure list: CIDR, address or a-b
    "denied-peer-ip" denied_peer_ips: Vec<IpRange> = Vec::new();
        List(values::range), Live, value_name = "RANGE", coturn = &["denied-peer-ip"];
    /// Peer ranges to allow even though denied
    "allowed-peer-ip" allowed_peer_ips: Vec<IpRange> = Vec::new();
        List(values::range), Live, value_name = "RANGE", coturn = &["allowed-peer-ip"];
    /// Allow relaying to loopback addresses (local tests only)
    "allow-loopback-peers" allow_loopback_peers: bool = false;
        Switch, Live, coturn = &["allow-loopback-peers"];
    /// Also bind channels 0x5000-0x7FFF, which RFC 5766-era clients pick (RFC 8656 allows 0x4000-0x4FFF)
    "allow-rfc5766-channel-numbers" allow_rfc5766_channel_numbers: bool = false;
        Switch, Live, coturn = &["rfc5766-channel-numbers"];
    /// Allocation lifetime when the client asks for none, seconds
    "default-allocate-lifetime" default_allocate_lifetime: u32 = 600;
        int::<u32>(), Live, value_name = "SECONDS";
    /// Longest allocation lifetime granted, seconds
    "max-allocate-lifetime" max_allocate_lifetime: u32 = 3600;
        int::<u32>(), Live, value_name = "SECONDS", coturn = &["max-allocate-lifetime"];
    /// Permission lifetime, seconds
    "permission-lifetime" permission_lifetime: u32 = 300;
        int::<u32>(), Live, value_name = "SECONDS", coturn = &["permission-lifetime"];
    /// Channel binding lifetime, seconds
    "channel-lifetime" channel_lifetime: u32 = 600;
        int::<u32>(), Live, value_name = "SECONDS", coturn = &["channel-lifetime"];
    /// Nonce lifetime, seconds
    "stale-nonce" stale_nonce: u32 = 600;
        int::<u32>(), Live, value_name = "SECONDS", coturn = &["stale-nonce"];
    /// Longest validity accepted in a REST credential, seconds
    "max-credential-ttl" max_credential_ttl: u64 = 86400;
        int::<u64>(), Live, value_name = "SECONDS";
    /// Concurrent allocations per user: N, or N% of the relay ports; 0 = unlimited (past it: 486)
    "user-quota" user_quota: AllocationLimit = AllocationLimit::PercentOfPorts(25);
        Limit, Live, value_name = "N|N%", coturn = &["user-quota"];
    /// Concurrent allocations per client address (IPv6: per /64): N, or N% of the relay ports; 0 = unlimited (past it: 486)
    "max-allocations-per-ip" max_allocations_per_ip: AllocationLimit = AllocationLimit::PercentOfPorts(25);
        Limit, Live, value_name = "N|N%";
    /// Concurrent allocations in total; 0 = unlimited
    "total-quota" total_quota: u32 = 0;
        int::<u32>(), Live, value_name = "N", coturn = &["total-quota"];
    /// Permissions one allocation may hold; 0 = unlimited (past it: 508)
    "max-permissions" max_permissions: u32 = DEFAULT_MAX_PERMISSIONS;
        int::<u32>(), Live, value_name = "N";
    /// XOR-PEER-ADDRESS attributes one CreatePermission may carry; 0 = unlimited (past it: 508)
    "max-peers-per-request" max_peers_per_request: u32 = DEFAULT_MAX_PEERS_PER_REQUEST;
        int::<u32>(), Live, value_name = "N";
    /// Channels one allocation may bind; 0 = unlimited (past it: 508)
    "max-channels" max_channels: u32 = DEFAULT_MAX_CHANNELS;
        int::<u32>(), Live, value_name = "N";
    /// Relayed bytes per second per allocation, each direction; 0 = unlimited (past it, UDP datagrams are dropped; TCP/TLS and RFC 6062 streams are not read until it lets them pass)
    "max-bps" max_bps: u64 = 0;
        int::<u64>(), Live, value_name = "BYTES", coturn = &["max-bps"];
    /// Relayed bytes per second of the whole server, each direction, split evenly over the UDP relay threads and the TCP/TLS connections (one share for all of them); 0 = unlimited
    "bps-capacity" bps_capacity: u64 = 0;
        int::<u64>(), Live, value_name = "BYTES", coturn = &["bps-capacity"];
    /// Answers per second to one source address (IPv6: per /64) and relay thread for UDP requests that are not authenticated; 0 = unlimited
    "unauthenticated-rate-limit" unauthenticated_rate_limit: u32 = DEFAULT_UNAUTHENTICATED_RATE_LIMIT;
        int::<u32>(), Live, value_name = "N", coturn = &["unauthorized-ratelimit-rps"];
    /// SOFTWARE attribute text; unset = not sent (no amplification, no fingerprinting)
    "software" software: Option<String> = None;
        Optional(values::text), Live, value_name = "TEXT";
    /// Relay threads (UDP workers); 0 = number of cores
    "relay-threads" relay_threads: usize = 0;
        Count, Restart, value_name = "N", coturn = &["relay-threads"];
    /// SO_RCVBUF/SO_SNDBUF of relay sockets, bytes; 0 = kernel default
    "sock-buf-size" sock_buf_size: usize = 0;
        Count, Restart, value_name = "BYTES", coturn = &["sock-buf-size"];
    /// Send with UDP GSO where the kernel supports it; off for A/B measurements
    "udp-gso" udp_gso: bool = true;
        Switch, Restart, coturn = &["udp-gso"];
    /// Longest pause, in microseconds, of a busy UDP worker after a wake-up so the next finds several datagrams (only while its rate makes a pause collect two or more); 0 = never pause
    "udp-coalesce-us" udp_coalesce_us: u32 = 250;
        int::<u32>(), Restart, value_name = "MICROSECONDS";
    /// Datagrams per second a UDP worker takes new clients up to before the next one gets them (an SK_REUSEPORT eBPF program; needs CAP_BPF); clients with allocations stay on their worker; 0 = the kernel's reuseport hash spreads clients
    "udp-worker-budget" udp_worker_budget: u64 = 40_000;
        int::<u64>(), Restart, value_name = "DATAGRAMS";
    /// Relay UDP clients' channels and permissions in the kernel (XDP): auto (when the kernel, the capabilities and the interfaces allow it, else user space with one log line), off, or required (no start without it)
    "fast-path" fast_path: tern_xdp::Mode = tern_xdp::Mode::Auto;
        Text(values::fast_path), Restart, value_name = "auto|off|required";
    /// Interfaces the fast path attaches to; unset = those carrying the listening and relay addresses (loopback is never served)
    "fast-path-interfaces" fast_path_interfaces: Vec<String> = Vec::new();
        List(values::interface), Restart, value_name = "NAME";
    /// Channels plus permissions the fast path holds at once (kernel memory: about 400 bytes each, plus 32 per core); past it they relay in user space
    "fast-path-capacity" fast_path_capacity: u32 = 16384;
        int::<u32>(), Restart, value_name = "N";
    /// Log filter, as for RUST_LOG (e.g. info,tern::auth=debug)
    "log-level" log_level: String = "info".to_string();
        Text(values::text), Restart, value_name = "FILTER";
    /// Log line format: text (human-readable) or json (one object per line)
    "log-format" log_format: LogFormat = LogFormat::Text;
        Text(values::log_format), Restart, value_name = "text|json";
    /// File to append logs to (as well as standard error, unless no-stdout-log), or stdout; unset = none
    "log-file" log_file: Option<PathBuf> = None;
        Optional(values::path), Restart, value_name = "PATH", coturn = &["log-file"];
    /// Don't log to standard error (with log-file: only to the file)
    "no-stdout-log" no_stdout_log: bool = false;
        Switch, Restart, coturn = &["no-stdout-log"];
    /// File to write the process id to at start (removed at exit); unset = none
    "pidfile" pidfile: Option<PathBuf> = None;
        Optional(values::path), Restart, value_name = "PATH", coturn = &["pidfile"];
    /// Don't serve UDP
    "no-udp" no_udp: bool = false;
        Switch, Restart, coturn = &["no-udp"];
    /// Address:port of the HTTP endpoint (credentials, metrics, health, admin, test page)
    "http-listen" http_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080));
        Text(values::socket_addr), Restart, value_name = "ADDR:PORT";
    /// Don't serve HTTP
    "no-http" no_http: bool = false;
        Switch, Restart;
    /// Serve the HTTP endpoint as HTTPS with cert and pkey, which must be set
    "http-tls" http_tls: bool = false;
        Switch, Restart;
    /// HTTP connections at once (HTTPS handshakes included); more are closed at once; 0 = unlimited
    "http-max-connections" http_max_connections: u32 = 128;
        int::<u32>(), Restart, value_name = "N";
    /// Seconds an HTTP client has to send a request's headers (and first the TLS handshake); an idle keep-alive connection is closed after it
    "http-header-timeout" http_header_timeout: u32 = 10;
        int::<u32>(), Restart, value_name = "SECONDS";
    /// Seconds an HTTP request may take from its headers to its response, and an HTTP connection may stall reading or writing
    "http-request-timeout" http_request_timeout: u32 = 30;
        int::<u32>(), Restart, value_name = "SECONDS";
    /// Bearer keys for the credential endpoint, at least 16 characters; unset = the endpoint answers 403
    "api-keys" api_keys: Vec<Secret> = Vec::new();
        Secrets, Live, value_name = "KEY", secret = true;
    /// Bearer keys for the admin API, at least 16 characters; unset = admin API off
    "admin-api-keys" admin_api_keys: Vec<Secret> = Vec::new();
        Secrets, Live, value_name = "KEY", secret = true;
    /// TURN/STUN URIs handed out with credentials; unset = derived from the listeners
    "public-uris" public_uris: Vec<String> = Vec::new();
        List(values::text), Live, value_name = "URI";
    /// Don't listen on TCP on listening-port
    "no-tcp" no_tcp: bool = false;
        Switch, Restart, coturn = &["no-tcp"];
    /// Don't serve TLS (neither on tls-listening-port nor on listening-port)
    "no-tls" no_tls: bool = false;
        Switch, Restart, coturn = &["no-tls"];
    /// TLS-only port (turns:), on when cert and pkey are set
    "tls-listening-port" tls_listening_port: u16 = 5349;
        int::<u16>(), Restart, value_name = "PORT", coturn = &["tls-listening-port"];
    /// PEM certificate chain; TLS needs cert and pkey (the files reload on SIGHUP, SIGUSR2 and change)
    "cert" cert: Option<PathBuf> = None;
        Optional(values::path), Restart, value_name = "PATH", coturn = &["cert"];
    /// PEM private key of cert
    "pkey" pkey: Option<PathBuf> = None;
        Optional(values::path), Restart, value_name = "PATH", coturn = &["pkey"];
    /// Load balancers whose PROXY protocol v1/v2 headers are believed; unset = PROXY headers refused
    "proxy-protocol-trusted" proxy_protocol_trusted: Vec<IpRange> = Vec::new();
        List(values::range), Restart, value_name = "RANGE";
    /// TCP/TLS connections per client address; 0 = unlimited
    "max-connections-per-ip" max_connections_per_ip: u32 = 64;
        int::<u32>(), Restart, value_name = "N";
    /// IPv6 prefix length under which client addresses count as one for max-connections-per-ip (128 = each address)
    "connection-ipv6-prefix" connection_ipv6_prefix: u32 = 64;
        int::<u32>(), Restart, value_name = "BITS";
    /// TCP/TLS connections and RFC 6062 peer connections in total; 0 = unlimited
    "max-connections" max_connections: u32 = 10000;
        int::<u32>(), Restart, value_name = "N";
    /// Percent of the open-file limit kept for UDP allocations and HTTP: TCP/TLS and RFC 6062 peer connections are refused once only this is left; 0 = no reserve
    "fd-reserve-percent" fd_reserve_percent: u32 = 25;
        int::<u32>(), Restart, value_name = "PERCENT";
    /// Seconds a TCP/TLS connection without an allocation may go without a valid STUN message
    "stream-idle-timeout" stream_idle_timeout: u32 = 10;
        int::<u32>(), Restart, value_name = "SECONDS";
    /// Seconds a started TCP/TLS frame may take to complete (slowloris)
    "partial-frame-timeout" partial_frame_timeout: u32 = 10;
        int::<u32>(), Restart, value_name = "SECONDS";
    /// Seconds a TCP/TLS client may leave its queue of bytes full (not reading) before it is cut
    "stream-write-timeout" stream_write_timeout: u32 = 10;
        int::<u32>(), Restart, value_name = "SECONDS";
    /// Bytes that may wait for a TCP/TLS client that does not read; relayed datagrams past it are dropped
    "stream-queue-size" stream_queue_size: u32 = 131072;
        int::<u32>(), Restart, value_name = "BYTES";
    /// Static long-term-credential users, NAME:PASSWORD or NAME:0x<32 hex digits> (coTURN's MD5 key)
    "users" users: Vec<(String, StaticKey)> = Vec::new();
        Users, Live, value_name = "NAME:PASSWORD", secret = true, aliases = &["user"], coturn = &["user"];
    accepted {
        /// Accepted for coTURN compatibility: tern always takes TURN REST credentials when static-auth-secret is set
        "use-auth-secret", coturn = &["use-auth-secret"];
        /// Accepted for coTURN compatibility: tern always uses long-term credentials
        "lt-cred-mech", coturn = &["lt-cred-mech"];
        /// Accepted for coTURN compatibility: tern answers with FINGERPRINT when the request has one
        "fingerprint", coturn = &["fingerprint"];
    }
}

/// The documentation checks: `turnserver.toml` and the README's configuration reference list
/// exactly the declared keys, with their declared defaults.
#[cfg(test)]
mod docs_tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../turnserver.toml");
    const README: &str = include_str!("../../README.md");

    /// `name` as the docs write it: `[users]` for the table.
    fn shown_name(key: &Key) -> String {
        if key.is_table() {
            format!("[{}]", key.name)
        } else {
            key.name.to_string()
        }
    }

    /// `key = value` settings of the example file, active or commented out: (name, value, active).
    fn example_settings() -> Vec<(String, String, bool)> {
        // Lines after the [users] header are users, not keys.
        let keys_part = EXAMPLE.split("# [users]\n").next().unwrap();
        let table = EXAMPLE
            .contains("# [users]\n")
            .then(|| ("[users]".to_string(), String::new(), false));
        keys_part
            .lines()
            .filter_map(|line| {
                let (active, rest) = match line.strip_prefix("# ") {
                    Some(rest) => (false, rest),
                    None => (true, line),
                };
                if rest == "[users]" {
                    return Some((rest.to_string(), String::new(), active));
                }
                let (name, value) = rest.split_once(" = ")?;
                let is_key = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                is_key.then(|| (name.to_string(), value.to_string(), active))
            })
            .chain(table)
            .collect()
    }

    /// The README configuration reference rows: (key, default cell, reload cell).
    fn readme_rows() -> Vec<(String, String, String)> {
        let section = README
            .split("## Configuration reference")
            .nth(1)
            .expect("README has a Configuration reference section");
        let section = section.split("\n## ").next().unwrap();
        let section = section.split("\n### ").next().unwrap();
        section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
                let name = cells[0].trim_matches('`').to_string();
                (name, cells[1].to_string(), cells[2].to_string())
            })
            .collect()
    }

    #[test]
    fn example_file_has_every_key_with_its_default() {
        let settings = example_settings();
        for key in KEYS {
            let name = shown_name(key);
            let lines: Vec<_> = settings.iter().filter(|(n, _, _)| *n == name).collect();
            assert!(!lines.is_empty(), "{name} missing from turnserver.toml");
            match key.default_value() {
                Some(default) if !key.is_table() => assert!(
                    lines.iter().any(|(_, value, active)| *active && *value == default.to_string()),
                    "turnserver.toml: {name} = {default} (the declared default) must be an active line"
                ),
                _ => assert!(
                    lines.iter().all(|(_, _, active)| !active),
                    "turnserver.toml: {name} is unset by default, so it must be commented out"
                ),
            }
        }
        for (name, _, _) in &settings {
            let declared = KEYS.iter().any(|key| shown_name(key) == *name);
            assert!(
                declared,
                "turnserver.toml lists {name}, which is not a declared key"
            );
        }
    }

    #[test]
    fn readme_reference_has_every_key_with_its_default_and_reload() {
        let rows = readme_rows();
        for key in KEYS {
            let name = shown_name(key);
            let Some((_, default, reload)) = rows.iter().find(|(n, _, _)| *n == name) else {
                panic!("README configuration reference: no row for `{name}`");
            };
            match key.default_value() {
                Some(value) if !key.is_table() => assert!(
                    default.starts_with(&format!("`{value}`")),
                    "README: `{name}` default should be `{value}`, the row says {default}"
                ),
                _ => assert!(
                    default.starts_with('('),
                    "README: `{name}` is unset by default, the row says {default}"
                ),
            }
            let expected = match key.reload {
                Reload::Live => "live",
                Reload::Restart => "restart",
            };
            assert_eq!(reload, expected, "README: `{name}` reload");
        }
        for (name, _, _) in &rows {
            let declared = KEYS.iter().any(|key| shown_name(key) == *name);
            assert!(
                declared,
                "README documents `{name}`, which is not a declared key"
            );
        }
    }

    #[test]
    fn names_and_docs_are_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for key in KEYS {
            assert!(seen.insert(key.name), "{} declared twice", key.name);
            assert!(
                !key.doc().is_empty() && !key.doc().contains('\n'),
                "{}",
                key.name
            );
            for alias in key.aliases {
                assert!(find(alias).is_none(), "alias {alias} is a key too");
            }
        }
        assert_eq!(find("listening-port").unwrap().env(), "TERN_LISTENING_PORT");
    }
}
