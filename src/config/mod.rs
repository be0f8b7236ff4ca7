//! Configuration: `turnserver.toml` + CLI flags + environment, validated into one typed
//! [`Config`] before anything binds.

mod cli;
mod file;
mod load;
mod validate;
mod values;

pub use cli::{Cli, Command, CredentialsArgs, ServeArgs};
pub use load::{from_toml_str, load, ConfigError};

use crate::auth::{Authenticator, StaticKey};
use crate::policy::IpRange;
use crate::policy::PeerPolicy;
use crate::turn::CoreConfig;
pub use crate::turn::ExternalIp;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// A REST secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The validated configuration. Defaults are the embedded zero-config run.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `listening-ip`: addresses to listen on; `0.0.0.0` / `::` mean every local address of that family.
    pub listening_ips: Vec<IpAddr>,
    /// `listening-port` (3478): UDP (and later TCP) port.
    pub listening_port: u16,
    /// `alt-listening-port` (0 = `listening-port` + 1): the second port RFC 5780 NAT behaviour
    /// discovery listens on, used only when two listening addresses of a family exist.
    pub alt_listening_port: u16,
    /// `relay-ip`: addresses relay sockets bind to; empty = the address the client reached.
    pub relay_ips: Vec<IpAddr>,
    /// `external-ip`.
    pub external_ips: Vec<ExternalIp>,
    /// `min-port` / `max-port` (49152–65535): relay port range, inclusive.
    pub min_port: u16,
    pub max_port: u16,
    /// `realm` ("tern").
    pub realm: String,
    /// `static-auth-secret`: one or more REST secrets (rotation).
    pub static_auth_secrets: Vec<Secret>,
    /// `[users]`: static users.
    pub users: Vec<(String, StaticKey)>,
    /// `denied-peer-ip` (added to the secure defaults) / `allowed-peer-ip`.
    pub denied_peer_ips: Vec<IpRange>,
    pub allowed_peer_ips: Vec<IpRange>,
    /// `allow-loopback-peers` (false).
    pub allow_loopback_peers: bool,
    /// `allow-rfc5766-channel-numbers` (false): also bind channels 0x5000–0x7FFF, as RFC 5766
    /// clients (coTURN's turnutils_uclient among them) pick; RFC 8656 allows 0x4000–0x4FFF.
    pub allow_rfc5766_channel_numbers: bool,
    /// `default-allocate-lifetime` (600) and `max-allocate-lifetime` (3600), seconds.
    pub default_allocate_lifetime: u32,
    pub max_allocate_lifetime: u32,
    /// `permission-lifetime` (300) and `channel-lifetime` (600), seconds.
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    /// `stale-nonce` (600), seconds.
    pub stale_nonce: u32,
    /// `max-credential-ttl` (86400), seconds.
    pub max_credential_ttl: u64,
    /// `user-quota` / `total-quota` (0 = unlimited): concurrent allocations.
    pub user_quota: u32,
    pub total_quota: u32,
    /// `software` (none): SOFTWARE attribute text; off by default (no amplification, no fingerprinting).
    pub software: Option<String>,
    /// `relay-threads` (0 = number of cores).
    pub relay_threads: usize,
    /// `sock-buf-size` (0 = kernel default): SO_RCVBUF/SO_SNDBUF of relay sockets, bytes.
    pub sock_buf_size: usize,
    /// `log-level` ("info"): a tracing filter.
    pub log_level: String,
    /// `no-udp` (false).
    pub no_udp: bool,
    /// `alternate-server` (none): `ip:port` / `[v6]:port` sent in 300 Try Alternate while
    /// draining or over `total-quota`.
    pub alternate_servers: Vec<SocketAddr>,
    /// `http-listen` (127.0.0.1:8080): the HTTP endpoint (credentials, metrics, health, admin, page).
    pub http_listen: SocketAddr,
    /// `no-http` (false).
    pub no_http: bool,
    /// `http-tls` (false): serve the HTTP endpoint as HTTPS with `cert` / `pkey` (which must be
    /// set), reloaded like the TLS listener's.
    pub http_tls: bool,
    /// `api-keys`: bearer keys for the credential endpoint (secret).
    pub api_keys: Vec<Secret>,
    /// `admin-api-keys`: bearer keys for the admin API; none = admin API off (secret).
    pub admin_api_keys: Vec<Secret>,
    /// `public-uris`: the TURN/STUN URIs handed out with credentials; empty = derived.
    pub public_uris: Vec<String>,
    /// `no-tcp` (false): no plain TCP listener on `listening-port`.
    pub no_tcp: bool,
    /// `no-tls` (false): no TLS, neither on `tls-listening-port` nor sniffed on `listening-port`.
    pub no_tls: bool,
    /// `tls-listening-port` (5349): TLS-only listener, on when `cert` and `pkey` are set.
    pub tls_listening_port: u16,
    /// `cert` / `pkey` (none): PEM certificate chain and private key; TLS needs both.
    pub cert: Option<PathBuf>,
    pub pkey: Option<PathBuf>,
    /// `proxy-protocol-trusted` (none): sources whose PROXY v1/v2 headers are believed.
    pub proxy_protocol_trusted: Vec<IpRange>,
    /// `max-connections-per-ip` (64) and `max-connections` (10000), TCP/TLS; 0 = unlimited.
    pub max_connections_per_ip: u32,
    pub max_connections: u32,
    /// `stream-idle-timeout` (10): seconds a TCP/TLS connection may take to send its first
    /// valid STUN message (TLS handshake and PROXY header included).
    pub stream_idle_timeout: u32,
    /// `partial-frame-timeout` (10): seconds a started frame may take to complete.
    pub partial_frame_timeout: u32,
}

impl Config {
    /// The slice of this configuration the TURN core reads (swapped in whole on reload).
    pub fn core(&self) -> CoreConfig {
        let secrets: Vec<String> = self
            .static_auth_secrets
            .iter()
            .map(|s| s.0.clone())
            .collect();
        let auth = Authenticator::new(&self.realm, &secrets, &self.users, self.max_credential_ttl);
        let policy = PeerPolicy::new(
            &self.denied_peer_ips,
            &self.allowed_peer_ips,
            self.allow_loopback_peers,
        );
        let secs = |secs: u32| std::time::Duration::from_secs(secs.into());
        CoreConfig {
            default_lifetime: secs(self.default_allocate_lifetime),
            max_lifetime: secs(self.max_allocate_lifetime),
            permission_lifetime: secs(self.permission_lifetime),
            channel_lifetime: secs(self.channel_lifetime),
            stale_nonce_secs: self.stale_nonce.into(),
            max_channel_number: if self.allow_rfc5766_channel_numbers {
                crate::turn::MAX_CHANNEL_NUMBER_RFC5766
            } else {
                crate::turn::MAX_CHANNEL_NUMBER
            },
            user_quota: self.user_quota,
            total_quota: self.total_quota,
            software: self.software.clone().filter(|s| !s.is_empty()),
            external_ips: self.external_ips.clone(),
            alternate_servers: self.alternate_servers.clone(),
            ..CoreConfig::new(auth, policy)
        }
    }

    /// The effective `alt-listening-port`: as configured, or `listening-port` + 1.
    pub fn alt_listening_port(&self) -> u16 {
        match self.alt_listening_port {
            0 => self.listening_port.wrapping_add(1),
            port => port,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listening_ips: vec![IpAddr::from([0, 0, 0, 0])],
            listening_port: 3478,
            alt_listening_port: 0,
            relay_ips: Vec::new(),
            external_ips: Vec::new(),
            min_port: 49152,
            max_port: 65535,
            realm: "tern".to_string(),
            static_auth_secrets: Vec::new(),
            users: Vec::new(),
            denied_peer_ips: Vec::new(),
            allowed_peer_ips: Vec::new(),
            allow_loopback_peers: false,
            allow_rfc5766_channel_numbers: false,
            default_allocate_lifetime: 600,
            max_allocate_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            stale_nonce: 600,
            max_credential_ttl: 86400,
            user_quota: 0,
            total_quota: 0,
            software: None,
            relay_threads: 0,
            sock_buf_size: 0,
            log_level: "info".to_string(),
            no_udp: false,
            alternate_servers: Vec::new(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            no_http: false,
            http_tls: false,
            api_keys: Vec::new(),
            admin_api_keys: Vec::new(),
            public_uris: Vec::new(),
            no_tcp: false,
            no_tls: false,
            tls_listening_port: 5349,
            cert: None,
            pkey: None,
            proxy_protocol_trusted: Vec::new(),
            max_connections_per_ip: 64,
            max_connections: 10000,
            stream_idle_timeout: 10,
            partial_frame_timeout: 10,
        }
    }
}
