//! One allocation's state: its relay, permissions and channels.

use super::FiveTuple;
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
    /// Relay socket's local address and what we advertise for it; `None` while pending.
    pub relay: Option<(SocketAddr, SocketAddr)>,
    pub pending: Option<PendingReply>,
    pub created: Instant,
    pub expires: Instant,
    pub permissions: Vec<(IpAddr, Instant)>,
    pub channels: Vec<Channel>,
    /// The deadline this allocation is filed under in the timer queue.
    pub next_deadline: Instant,
    pub stats: Traffic,
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
    pub relay: Option<SocketAddr>,
    pub age_secs: u64,
    pub traffic: Traffic,
    pub permissions: usize,
    pub channels: usize,
}

impl Allocation {
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
            relay: self.relay.map(|(_, advertised)| advertised),
            age_secs: now.saturating_duration_since(self.created).as_secs(),
            traffic: self.stats,
            permissions: self.permissions.len(),
            channels: self.channels.len(),
        }
    }
}
