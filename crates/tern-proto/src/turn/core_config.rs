//! The slice of configuration the state machine reads, prepared once per (re)load.

use crate::auth::Authenticator;
use crate::policy::PeerPolicy;
use std::net::{IpAddr, SocketAddr};
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
    /// Live allocations per user id, per client address (IPv6 by /64) and in total; 0 = no
    /// limit. The server crate resolves shares of the port pool into these numbers.
    pub user_quota: u32,
    pub max_allocations_per_ip: u32,
    pub total_quota: u32,
    /// Permissions one allocation may hold, XOR-PEER-ADDRESS attributes one CreatePermission
    /// may carry, channels one allocation may bind; 0 = no limit. Past them: 508.
    pub max_permissions: u32,
    pub max_peers_per_request: u32,
    pub max_channels: u32,
    /// `max-bps`: relayed bytes per second per allocation, each direction; 0 = no limit.
    pub max_bps: u64,
    /// `bps-capacity`: relayed bytes per second of the whole server, each direction; 0 = no
    /// limit. Each server takes its share ([`super::Server::set_capacity_share`]).
    pub bps_capacity: u64,
    /// `unauthenticated-rate-limit`: answers per second to one source address (IPv6 by /64) for
    /// requests that are not authenticated, over UDP; 0 = no limit.
    pub unauthenticated_rate_limit: u32,
    /// SOFTWARE, sent in authenticated responses only (never to a source that proved nothing).
    pub software: Option<String>,
    pub external_ips: Vec<ExternalIp>,
    /// `alternate-server`: where 300 Try Alternate sends clients while draining or over
    /// `total-quota`, round-robin among those of the client's address family.
    pub alternate_servers: Vec<SocketAddr>,
}

/// RFC 8656 §3.2: allocations last 10 minutes unless the client asks otherwise.
pub const DEFAULT_ALLOCATE_LIFETIME: Duration = Duration::from_secs(600);
/// A lifetime longer than one hour is cut to it (RFC 8656 §7.2: "for example, 3600 seconds").
pub const MAX_ALLOCATE_LIFETIME: Duration = Duration::from_secs(3600);
/// RFC 8656 §9: permissions last 300 seconds.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: channel bindings last 10 minutes.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How long a nonce stays fresh before 438 Stale Nonce (RFC 8489 §9.2 leaves it open).
pub const STALE_NONCE_SECS: u64 = 600;
/// Default `max-permissions`: a WebRTC allocation needs one per remote candidate address, rarely
/// more than ten.
pub const DEFAULT_MAX_PERMISSIONS: u32 = 64;
/// Default `max-peers-per-request`: browsers send one XOR-PEER-ADDRESS per CreatePermission.
pub const DEFAULT_MAX_PEERS_PER_REQUEST: u32 = 16;
/// Default `max-channels`: one per peer transport address.
pub const DEFAULT_MAX_CHANNELS: u32 = 64;
/// Default `unauthenticated-rate-limit`: answers per second per source address and worker.
pub const DEFAULT_UNAUTHENTICATED_RATE_LIMIT: u32 = 100;
/// Highest channel number RFC 8656 §12 allows; RFC 5766 allowed up to 0x7FFF.
pub const MAX_CHANNEL_NUMBER: u16 = 0x4FFF;
pub const MAX_CHANNEL_NUMBER_RFC5766: u16 = 0x7FFF;

/// `external-ip`: the address advertised in XOR-RELAYED-ADDRESS, either for every relay address
/// (`public`) or for one private relay address (`public/private`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalIp {
    pub public: IpAddr,
    pub private: Option<IpAddr>,
}

impl CoreConfig {
    /// The RFC's lifetimes, the default per-allocation limits and unauthenticated rate limit, no
    /// quotas, no bandwidth limits, no SOFTWARE, no external or alternate addresses; the server
    /// crate's configuration sets the fields it has keys for.
    pub fn new(auth: Authenticator, policy: PeerPolicy) -> Self {
        CoreConfig {
            auth,
            policy,
            default_lifetime: DEFAULT_ALLOCATE_LIFETIME,
            max_lifetime: MAX_ALLOCATE_LIFETIME,
            permission_lifetime: PERMISSION_LIFETIME,
            channel_lifetime: CHANNEL_LIFETIME,
            stale_nonce_secs: STALE_NONCE_SECS,
            max_channel_number: MAX_CHANNEL_NUMBER,
            user_quota: 0,
            max_allocations_per_ip: 0,
            total_quota: 0,
            max_permissions: DEFAULT_MAX_PERMISSIONS,
            max_peers_per_request: DEFAULT_MAX_PEERS_PER_REQUEST,
            max_channels: DEFAULT_MAX_CHANNELS,
            max_bps: 0,
            bps_capacity: 0,
            unauthenticated_rate_limit: DEFAULT_UNAUTHENTICATED_RATE_LIMIT,
            software: None,
            external_ips: Vec::new(),
            alternate_servers: Vec::new(),
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
