//! One allocation's state: its relay, permissions and channels.

use super::{ErrorCode, Family, FiveTuple, RelayTransport};
use crate::auth::LongTermKey;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// A channel bound to a peer transport address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
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

/// Per-allocation state. Kept small and flat: a few permissions and channels are the norm, so
/// plain vectors with linear scans beat maps on both memory and speed.
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
    pub permissions: Vec<(IpAddr, Instant)>,
    pub channels: Vec<Channel>,
    /// The deadline this allocation is filed under in the timer queue.
    pub next_deadline: Instant,
    pub stats: Traffic,
    /// UDP (RFC 8656) or TCP (RFC 6062) toward peers.
    pub relay_transport: RelayTransport,
    /// Peer TCP connections of a TCP allocation.
    pub peer_connections: Vec<PeerConnection>,
}

/// Relayed traffic of one allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
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

    pub fn has_permission(&self, ip: IpAddr) -> bool {
        self.permissions.iter().any(|(p, _)| *p == ip)
    }

    pub fn channel_by_number(&self, number: u16) -> Option<&Channel> {
        self.channels.iter().find(|c| c.number == number)
    }

    pub fn channel_by_peer(&self, peer: SocketAddr) -> Option<&Channel> {
        self.channels.iter().find(|c| c.peer == peer)
    }

    pub fn install_permission(&mut self, ip: IpAddr, expires: Instant) {
        match self.permissions.iter_mut().find(|(p, _)| *p == ip) {
            Some(entry) => entry.1 = expires,
            None => self.permissions.push((ip, expires)),
        }
    }

    /// Binds or refreshes a channel; the caller has checked the re-binding rules.
    pub fn bind_channel(&mut self, number: u16, peer: SocketAddr, expires: Instant) {
        match self.channels.iter_mut().find(|c| c.number == number) {
            Some(channel) => channel.expires = expires,
            None => self.channels.push(Channel {
                number,
                peer,
                expires,
            }),
        }
    }

    /// Drops expired permissions and channels; returns the earliest deadline still pending.
    pub fn sweep(&mut self, now: Instant) -> Instant {
        self.permissions.retain(|(_, expires)| *expires > now);
        self.channels.retain(|c| c.expires > now);
        self.earliest_deadline()
    }

    pub fn earliest_deadline(&self) -> Instant {
        let permissions = self.permissions.iter().map(|(_, e)| *e);
        let channels = self.channels.iter().map(|c| c.expires);
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
