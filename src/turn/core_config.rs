//! The slice of configuration the state machine reads, prepared once per (re)load.

use crate::auth::Authenticator;
use crate::config::{Config, ExternalIp};
use crate::policy::PeerPolicy;
use std::net::SocketAddr;
use std::time::Duration;

/// Immutable snapshot shared (behind an `Arc`) by every worker's [`super::Server`]; a reload
/// builds a new one and swaps it in, so traffic never waits on it.
#[derive(Debug)]
pub struct CoreConfig {
    pub auth: Authenticator,
    pub policy: PeerPolicy,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub stale_nonce_secs: u64,
    /// Highest channel number ChannelBind accepts: 0x4FFF (RFC 8656) or 0x7FFF (RFC 5766).
    pub max_channel_number: u16,
    pub user_quota: u32,
    pub total_quota: u32,
    pub software: Option<String>,
    pub external_ips: Vec<ExternalIp>,
    /// `alternate-server`: where 300 Try Alternate sends clients while draining or over
    /// `total-quota`, round-robin among those of the client's address family.
    pub alternate_servers: Vec<SocketAddr>,
}

impl CoreConfig {
    pub fn from_config(config: &Config) -> Self {
        let secrets: Vec<String> = config
            .static_auth_secrets
            .iter()
            .map(|s| s.0.clone())
            .collect();
        CoreConfig {
            auth: Authenticator::new(
                &config.realm,
                &secrets,
                &config.users,
                config.max_credential_ttl,
            ),
            policy: PeerPolicy::new(
                &config.denied_peer_ips,
                &config.allowed_peer_ips,
                config.allow_loopback_peers,
            ),
            default_lifetime: Duration::from_secs(config.default_allocate_lifetime.into()),
            max_lifetime: Duration::from_secs(config.max_allocate_lifetime.into()),
            permission_lifetime: Duration::from_secs(config.permission_lifetime.into()),
            channel_lifetime: Duration::from_secs(config.channel_lifetime.into()),
            stale_nonce_secs: config.stale_nonce.into(),
            max_channel_number: if config.allow_rfc5766_channel_numbers {
                0x7FFF
            } else {
                0x4FFF
            },
            user_quota: config.user_quota,
            total_quota: config.total_quota,
            software: config.software.clone().filter(|s| !s.is_empty()),
            external_ips: config.external_ips.clone(),
            alternate_servers: config.alternate_servers.clone(),
        }
    }

    /// The address XOR-RELAYED-ADDRESS advertises for a relay socket bound to `local`:
    /// a matching `public/private` pair first, then a plain `public` of the same family.
    pub fn advertised(&self, local: SocketAddr) -> SocketAddr {
        let paired = self
            .external_ips
            .iter()
            .find(|e| e.private == Some(local.ip()));
        let plain = || {
            self.external_ips
                .iter()
                .find(|e| e.private.is_none() && e.public.is_ipv4() == local.is_ipv4())
        };
        match paired.or_else(plain) {
            Some(external) => SocketAddr::new(external.public, local.port()),
            None => local,
        }
    }

    /// Lifetime granted for a requested one (RFC 8656 §7.2): the smaller of the request and the
    /// maximum, but never below the default; the default when nothing was asked.
    pub fn grant_lifetime(&self, requested_secs: Option<u32>) -> Duration {
        match requested_secs {
            None => self.default_lifetime.min(self.max_lifetime),
            Some(secs) => Duration::from_secs(secs.into())
                .min(self.max_lifetime)
                .max(self.default_lifetime.min(self.max_lifetime)),
        }
    }
}
