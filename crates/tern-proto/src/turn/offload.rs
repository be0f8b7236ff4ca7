//! Offloading: which channels and permissions the I/O layer may relay without the server (the
//! kernel fast path), announced as [`Event::Offload`] and withdrawn as [`Event::Unoffload`].
//!
//! An allocation qualifies while offloading is on ([`Server::set_offload`]), its client and its
//! relay are UDP, and no bandwidth limit applies (`max-bps`, `bps-capacity`: outside the server
//! nothing enforces them). Its permissions are announced as they become live (CreatePermission,
//! ChannelBind), its channels while both the channel and its peer's permission live, exactly when
//! the server itself would relay them. They are withdrawn when they end: expiry
//! ([`Allocation::sweep`]), a permission's end for the channels to its IP, a reload that denies
//! the peer, and all of them on a reload that sets a bandwidth limit (a reload that lifts it
//! announces them again). The end of the allocation (Refresh 0, expiry, deletion, a revoked
//! credential) is [`Event::Released`], which covers whatever it had. Timers stay here: refreshes
//! are requests, which always reach the server.

use super::allocation::{Allocation, Traffic};
use super::server::live;
use super::{
    AllocId, Event, Family, Offload, OffloadKey, Offloaded, RelayTransport, Server, Transport,
};
use std::collections::VecDeque;
use std::net::IpAddr;

impl Server {
    /// Announces offloadable channels and permissions as events from now on (the I/O layer calls
    /// this once, when its fast path runs). Allocations that exist already are not announced.
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on;
    }

    /// Adds traffic relayed outside the server for `alloc` (what the fast path counted for an
    /// entry it removed) to the allocation's, which the admin API shows. Nothing if it ended.
    pub fn add_offloaded_traffic(&mut self, alloc: AllocId, traffic: Traffic) {
        if let Some(allocation) = live(&mut self.allocations, alloc) {
            allocation.stats = allocation.stats + traffic;
        }
    }

    /// Whether the configuration lets traffic leave the server's hands: offloading on and no
    /// bandwidth limit to enforce.
    fn offload_allowed(&self) -> bool {
        self.offload
            && self.config.max_bps == 0
            && self.capacity.rate(self.config.bps_capacity) == 0
    }

    /// Decides, once its relay is bound, whether the allocation's channels and permissions will
    /// be announced.
    pub(super) fn start_offloading(&mut self, index: usize) {
        let allowed = self.offload_allowed();
        let allocation = &mut self.allocations[index];
        allocation.offloaded = allowed && qualifies(allocation);
    }

    /// The permission for `ip` became live (it was not before): announces it, and the channels
    /// to that IP, which the server relays again from now on.
    pub(super) fn permission_live(&mut self, index: usize, ip: IpAddr) {
        // A reload that set a bandwidth limit reaches live allocations in batches: until it has
        // reached this one, nothing new leaves the server's hands.
        let allowed = self.offload_allowed();
        let allocation = &self.allocations[index];
        if !allocation.offloaded || !allowed {
            return;
        }
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        let events = &mut self.events;
        let relay_ports_only = allocation
            .permissions
            .get(&ip)
            .is_some_and(|p| p.relay_ports_only);
        announce(
            events,
            alloc,
            allocation,
            Offloaded::Permission { peer: ip },
            relay_ports_only,
        );
        for (&number, channel) in &allocation.channels {
            if channel.peer.ip() == ip {
                let what = Offloaded::Channel {
                    number,
                    peer: channel.peer,
                };
                announce(events, alloc, allocation, what, relay_ports_only);
            }
        }
    }

    /// Channel `number` was bound anew while its peer's permission lives: announces it.
    pub(super) fn channel_live(&mut self, index: usize, number: u16) {
        let allowed = self.offload_allowed();
        let allocation = &self.allocations[index];
        let Some(channel) = allocation.channels.get(&number) else {
            return;
        };
        let Some(permission) = allocation.permissions.get(&channel.peer.ip()) else {
            return;
        };
        if allocation.offloaded && allowed {
            let alloc = AllocId {
                index,
                generation: allocation.generation,
            };
            let what = Offloaded::Channel {
                number,
                peer: channel.peer,
            };
            announce(
                &mut self.events,
                alloc,
                allocation,
                what,
                permission.relay_ports_only,
            );
        }
    }

    /// After a reload has re-judged the allocation's permissions and channels: withdraws
    /// everything if a bandwidth limit now applies, announces everything if one no longer does,
    /// and announces again the permissions `rejudged` (withdrawn because their own-address
    /// status changed).
    pub(super) fn reconsider_offload(&mut self, index: usize, rejudged: &[IpAddr]) {
        let allowed = self.offload_allowed();
        // Expired entries wait for their allocation's timer: never announce one.
        let now = self.now;
        let allocation = &mut self.allocations[index];
        let eligible = allowed && qualifies(allocation);
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        let events = &mut self.events;
        match (allocation.offloaded, eligible) {
            (true, false) => {
                allocation.offloaded = false;
                let permissions = allocation.permissions.keys().copied();
                let channels = allocation.channels.keys().copied();
                let what = permissions
                    .map(OffloadKey::Permission)
                    .chain(channels.map(OffloadKey::Channel));
                events.extend(what.map(|what| Event::Unoffload { alloc, what }));
            }
            (false, true) => {
                allocation.offloaded = true;
                let live = allocation
                    .permissions
                    .iter()
                    .filter(|(_, p)| p.expires > now);
                for (&ip, permission) in live {
                    let what = Offloaded::Permission { peer: ip };
                    announce(events, alloc, allocation, what, permission.relay_ports_only);
                }
                let live = allocation.channels.iter().filter(|(_, c)| c.expires > now);
                for (&number, channel) in live {
                    let permission = allocation.permissions.get(&channel.peer.ip());
                    if let Some(permission) = permission.filter(|p| p.expires > now) {
                        let what = Offloaded::Channel {
                            number,
                            peer: channel.peer,
                        };
                        announce(events, alloc, allocation, what, permission.relay_ports_only);
                    }
                }
            }
            (true, true) => {
                for &ip in rejudged {
                    let permission = allocation.permissions.get(&ip);
                    if let Some(permission) = permission.filter(|p| p.expires > now) {
                        let what = Offloaded::Permission { peer: ip };
                        announce(events, alloc, allocation, what, permission.relay_ports_only);
                    }
                }
            }
            (false, false) => {}
        }
    }
}

/// A UDP client's UDP allocation with a relay bound: the only kind the fast path relays.
fn qualifies(allocation: &Allocation) -> bool {
    allocation.tuple.transport == Transport::Udp
        && allocation.relay_transport == RelayTransport::Udp
        && allocation.has_relay()
}

/// Queues the [`Event::Offload`] for `what` of `allocation`.
fn announce(
    events: &mut VecDeque<Event>,
    alloc: AllocId,
    allocation: &Allocation,
    what: Offloaded,
    relay_ports_only: bool,
) {
    let peer = match what {
        Offloaded::Channel { peer, .. } => peer.ip(),
        Offloaded::Permission { peer } => peer,
    };
    let Some((relay, advertised)) = allocation.relays[Family::of_ip(&peer).index()] else {
        return; // no relay of the peer's family: nothing to relay (refused at the request)
    };
    events.push_back(Event::Offload(Offload {
        alloc,
        tuple: allocation.tuple,
        relay,
        advertised,
        what,
        relay_ports_only,
    }));
}
