//! Configuration: `turnserver.toml` + CLI flags + environment, validated into one typed
//! [`Config`] before anything binds.

mod cli;
pub mod coturn;
mod error;
mod file;
mod keys;
mod load;
mod render;
mod shape;
mod validate;
mod values;

pub use cli::{Cli, Command, ConfigCommand, CredentialsArgs, DrainArgs, HealthArgs, ServeArgs};
pub use error::{ConfigError, Origin};
pub use keys::{find as find_key, restart_keys_changed, Config, Key, Reload, KEYS};
pub use load::{from_str, from_toml_str, load, load_all, load_file, Format, Loaded};
pub use render::{converted_toml, effective_toml};
pub use shape::Arity;

use crate::auth::Authenticator;
use crate::policy::PeerPolicy;
use crate::turn::CoreConfig;
pub use crate::turn::ExternalIp;
use std::fmt;
use std::net::IpAddr;

/// A REST secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A limit on live allocations (`user-quota`, `max-allocations-per-ip`): a number, or a share of
/// the relay port pool, so that a default stays a bounded share of the pool whatever `min-port`
/// and `max-port` make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocationLimit {
    /// At most this many; 0 = no limit.
    Count(u32),
    /// At most this percentage (1 to 100) of the relay ports, rounded up.
    PercentOfPorts(u8),
}

impl AllocationLimit {
    /// The number of allocations for a pool of `relay_ports` ports; 0 = no limit.
    pub fn resolve(self, relay_ports: u32) -> u32 {
        match self {
            AllocationLimit::Count(count) => count,
            AllocationLimit::PercentOfPorts(percent) => {
                let share = (u64::from(relay_ports) * u64::from(percent)).div_ceil(100);
                share.clamp(1, u64::from(u32::MAX)) as u32
            }
        }
    }
}

impl fmt::Display for AllocationLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocationLimit::Count(count) => write!(f, "{count}"),
            AllocationLimit::PercentOfPorts(percent) => write!(f, "{percent}%"),
        }
    }
}

/// `log-format`: how each log line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, one event per line.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message` and the event's fields).
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Config {
    /// Relay ports in `min-port..=max-port`.
    pub fn relay_port_count(&self) -> u32 {
        u32::from(self.max_port.saturating_sub(self.min_port)) + 1
    }

    /// The addresses this configuration names as the host's own: listening, relay, HTTP and
    /// external addresses (wildcards stand for the interfaces, which the caller adds).
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        let http = (!self.no_http).then_some(self.http_listen.ip());
        let external = self
            .external_ips
            .iter()
            .flat_map(|e| std::iter::once(e.public).chain(e.private));
        self.listening_ips
            .iter()
            .chain(&self.relay_ips)
            .copied()
            .chain(http)
            .chain(external)
            .filter(|ip| !ip.is_unspecified())
            .collect()
    }

    /// The slice of this configuration the TURN core reads, without the host's interface
    /// addresses (see [`Config::core_on_host`]).
    pub fn core(&self) -> CoreConfig {
        self.core_on_host(&[])
    }

    /// The slice of this configuration the TURN core reads (swapped in whole on reload).
    /// `interfaces`: the host's interface addresses, read afresh at start and on every reload, so
    /// the peer policy knows every address of its own host.
    pub fn core_on_host(&self, interfaces: &[IpAddr]) -> CoreConfig {
        let secrets: Vec<String> = self
            .static_auth_secrets
            .iter()
            .map(|s| s.0.clone())
            .collect();
        let auth = Authenticator::new(&self.realm, &secrets, &self.users, self.max_credential_ttl);
        let mut own = self.own_addresses();
        own.extend_from_slice(interfaces);
        let policy = PeerPolicy::new(
            &self.denied_peer_ips,
            &self.allowed_peer_ips,
            self.allow_loopback_peers,
        )
        .with_host(&own, (self.min_port, self.max_port));
        let ports = self.relay_port_count();
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
            user_quota: self.user_quota.resolve(ports),
            max_allocations_per_ip: self.max_allocations_per_ip.resolve(ports),
            total_quota: self.total_quota,
            max_permissions: self.max_permissions,
            max_peers_per_request: self.max_peers_per_request,
            max_channels: self.max_channels,
            max_bps: self.max_bps,
            bps_capacity: self.bps_capacity,
            unauthenticated_rate_limit: self.unauthenticated_rate_limit,
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
