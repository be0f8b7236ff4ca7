//! One allocation's state: its relay, permissions and channels.

use super::{ErrorCode, Family, FiveTuple, OffloadKey, RelayTransport};
use crate::auth::LongTermKey;
use crate::policy::ByteBucket;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// A channel bound to a peer transport address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Channel {
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// A permission for a peer IP (RFC 8656 §9).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Permission {
    pub expires: Instant,
    /// The peer is one of tern's own addresses: only its relay-range ports are reachable (see
    /// `PeerPolicy::relay_ports_only`), judged when installed and again on reload.
    pub relay_ports_only: bool,
}

/// Allocate accepted, relay socket not yet bound by the I/O layer.
#[derive(Clone, Debug)]
pub(crate) struct PendingReply {
    pub sha256: bool,
    pub fingerprint: bool,
    /// The families asked for, to name the one that failed in ADDRESS-ERROR-CODE.
    pub family: Family,
    pub additional: Option<Family>,
}

/// A Connect request (RFC 6062 §5.2) waiting for the I/O layer to reach the peer: what the
/// deferred response needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingConnect {
    pub tid: [u8; 12],
    pub sha256: bool,
    pub fingerprint: bool,
    /// A reload denied the peer while connecting: the answer is 403, whatever the outcome.
    pub revoked: bool,
}

/// A peer TCP connection of a TCP allocation (RFC 6062): outbound (Connect) or inbound
/// (ConnectionAttempt), from the moment it is asked for or accepted until the I/O layer reports it
/// closed (never bound within 30 s, or either side of the spliced pair closed).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerConnection {
    pub id: u32,
    pub peer: SocketAddr,
    /// Set while a Connect is in progress.
    pub connect: Option<PendingConnect>,
}

/// Per-allocation state. Permissions and channels are looked up by hash on every packet, never by
/// scanning, and are capped (`max-permissions`, `max-channels`); an empty map costs no heap.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub generation: u32,
    pub tuple: FiveTuple,
    pub username: Box<str>,
    pub quota_id: Box<str>,
    pub key: LongTermKey,
    /// Transaction id of the Allocate that created it, to answer retransmissions.
    pub allocate_tid: [u8; 12],
    /// Relay sockets by family ([`Family::index`]): local address and what we advertise for
    /// it. Both `None` while pending; both `Some` for a dual-stack allocation (RFC 8656 §7.2).
    pub relays: [Option<(SocketAddr, SocketAddr)>; 2],
    /// ADDRESS-ERROR-CODE to repeat in the Allocate response: the family of a dual-stack
    /// request that could not be had, and why.
    pub address_error: Option<(Family, ErrorCode)>,
    /// The request used coTURN's draft-era ADDITIONAL-ADDRESS-FAMILY (0x8032), so the answer
    /// uses the matching ADDRESS-ERROR-CODE type (0x8033).
    pub legacy_family_attrs: bool,
    pub pending: Option<PendingReply>,
    pub created: Instant,
    pub expires: Instant,
    pub permissions: FxHashMap<IpAddr, Permission>,
    /// Channels by number, and the number of each bound peer (RFC 8656 §12: one each way).
    pub channels: FxHashMap<u16, Channel>,
    pub channel_numbers: FxHashMap<SocketAddr, u16>,
    /// `max-bps`, by [`Direction`](super::metrics::Direction).
    pub bandwidth: [ByteBucket; 2],
    /// The deadline this allocation is filed under in the timer queue.
    pub next_deadline: Instant,
    pub stats: Traffic,
    /// UDP (RFC 8656) or TCP (RFC 6062) toward peers.
    pub relay_transport: RelayTransport,
    /// Peer TCP connections of a TCP allocation.
    pub peer_connections: Vec<PeerConnection>,
    /// Its channels and permissions are announced for offloading (see `offload`).
    pub offloaded: bool,
}

/// Relayed traffic of one allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

impl std::ops::Add for Traffic {
    type Output = Traffic;
    fn add(self, other: Traffic) -> Traffic {
        Traffic {
            packets_to_peer: self.packets_to_peer + other.packets_to_peer,
            bytes_to_peer: self.bytes_to_peer + other.bytes_to_peer,
            packets_to_client: self.packets_to_client + other.packets_to_client,
            bytes_to_client: self.bytes_to_client + other.bytes_to_client,
        }
    }
}

/// What the admin API shows of an allocation.
#[derive(Clone, Debug)]
pub struct AllocationInfo {
    pub tuple: FiveTuple,
    pub username: String,
    /// The advertised relay address (the IPv4 one of a dual-stack allocation).
    pub relay: Option<SocketAddr>,
    /// The second, IPv6, relay address of a dual-stack allocation.
    pub additional_relay: Option<SocketAddr>,
    pub age_secs: u64,
    pub traffic: Traffic,
    pub permissions: usize,
    pub channels: usize,
}

impl Allocation {
    /// True once a relay socket is bound (the Allocate has been answered with success).
    pub fn has_relay(&self) -> bool {
        self.relays.iter().any(Option::is_some)
    }

    /// Whether a relay of `ip`'s family exists, so the allocation can talk to that peer.
    pub fn serves(&self, ip: IpAddr) -> bool {
        self.relays[Family::of_ip(&ip).index()].is_some()
    }

    /// Advertised relay addresses, IPv4 first.
    pub fn advertised(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.relays
            .iter()
            .flatten()
            .map(|(_, advertised)| *advertised)
    }

    /// Whether a datagram from or to `peer` may pass: a permission for its IP, and for one of
    /// tern's own addresses a relay-range port (`is_relay_port`).
    #[inline]
    pub fn permits(&self, peer: SocketAddr, is_relay_port: impl Fn(u16) -> bool) -> bool {
        match self.permissions.get(&peer.ip()) {
            Some(permission) => !permission.relay_ports_only || is_relay_port(peer.port()),
            None => false,
        }
    }

    pub fn has_permission(&self, ip: IpAddr) -> bool {
        self.permissions.contains_key(&ip)
    }

    pub fn channel_by_number(&self, number: u16) -> Option<&Channel> {
        self.channels.get(&number)
    }

    pub fn channel_number_of(&self, peer: SocketAddr) -> Option<u16> {
        self.channel_numbers.get(&peer).copied()
    }

    /// Installs or refreshes the permission for `ip`.
    pub fn install_permission(&mut self, ip: IpAddr, permission: Permission) {
        self.permissions.insert(ip, permission);
    }

    /// Binds or refreshes a channel; the caller has checked the re-binding rules.
    pub fn bind_channel(&mut self, number: u16, peer: SocketAddr, expires: Instant) {
        self.channels.insert(number, Channel { peer, expires });
        self.channel_numbers.insert(peer, number);
    }

    /// Drops expired permissions and channels; returns the earliest deadline still pending. Runs
    /// when the allocation's timer fires: at most `max-permissions` + `max-channels` entries.
    /// `ended` hears of each permission and channel the server stops relaying: those that
    /// expired, and channels whose peer's permission just did.
    pub fn sweep(&mut self, now: Instant, mut ended: impl FnMut(OffloadKey)) -> Instant {
        let mut permission_ended = false;
        self.permissions.retain(|ip, p| {
            let live = p.expires > now;
            if !live {
                permission_ended = true;
                ended(OffloadKey::Permission(*ip));
            }
            live
        });
        let numbers = &mut self.channel_numbers;
        let permissions = &self.permissions;
        self.channels.retain(|number, c| {
            let live = c.expires > now;
            if !live {
                numbers.remove(&c.peer);
            }
            if !live || (permission_ended && !permissions.contains_key(&c.peer.ip())) {
                ended(OffloadKey::Channel(*number));
            }
            live
        });
        self.earliest_deadline()
    }

    pub fn earliest_deadline(&self) -> Instant {
        let permissions = self.permissions.values().map(|p| p.expires);
        let channels = self.channels.values().map(|c| c.expires);
        permissions.chain(channels).fold(self.expires, Instant::min)
    }

    pub fn info(&self, now: Instant) -> AllocationInfo {
        AllocationInfo {
            tuple: self.tuple,
            username: self.username.to_string(),
            relay: self.advertised().next(),
            additional_relay: self.advertised().nth(1),
            age_secs: now.saturating_duration_since(self.created).as_secs(),
            traffic: self.stats,
            permissions: self.permissions.len(),
            channels: self.channels.len(),
        }
    }
}
