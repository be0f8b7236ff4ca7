//! Binding (RFC 8489, RFC 5780), and the requests on an existing allocation: Refresh,
//! CreatePermission and ChannelBind (RFC 8656 §8, §9, §11).

use super::allocation::Permission;
use super::metrics::{Limit, LogKind, Outcome};
use super::refusal;
use super::reply::{Answer, Seal};
use super::request::{self, is_known_attribute, CreatePermission};
use super::server::Removal;
use super::{ErrorCode, FiveTuple, Output, RelayTransport, Server, Transport};
use crate::metrics::LabelSet;
use crate::policy::Verdict;
use crate::stun::{attr, Message};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info};

impl Server {
    pub(super) fn binding<'a>(
        &mut self,
        tuple: FiveTuple,
        msg: &Message<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let mut answer = Answer::to(msg, tuple, Seal::open(msg));
        // RFC 5780 over UDP, when this listener has a partner: OTHER-ADDRESS, RESPONSE-ORIGIN
        // and CHANGE-REQUEST. Otherwise CHANGE-REQUEST is an unknown attribute (420).
        let other = match tuple.transport {
            Transport::Udp => self.nat.other_address(tuple.server),
            _ => None,
        };
        let known =
            |typ| is_known_attribute(typ) || (other.is_some() && typ == attr::CHANGE_REQUEST);
        let mut unknown = [0u16; 8];
        let count = msg.unknown_required(known, &mut unknown);
        if count > 0 {
            return self.reply_unknown(out, &answer, &unknown[..count]);
        }
        let binding = match request::Binding::decode(msg) {
            Ok(binding) => binding,
            Err(error) => return self.reply_malformed(out, &answer, error),
        };
        if other.is_some() {
            match self.nat.answer_from(tuple.server, binding.change_request) {
                Some(from) => answer.tuple.server = from,
                None => return self.reply_error(out, &answer, ErrorCode::BadRequest),
            }
        }
        let response_origin = answer.tuple.server;
        self.respond(out, &answer, Outcome::Success, |w| {
            w.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
            if let Some(other) = other {
                // RFC 5780 clients may still read the RFC 3489 MAPPED-ADDRESS.
                w.add_address(attr::MAPPED_ADDRESS, tuple.client);
                w.add_address(attr::RESPONSE_ORIGIN, response_origin);
                w.add_address(attr::OTHER_ADDRESS, other);
            }
        })
    }

    pub(super) fn refresh<'a>(
        &mut self,
        now: Instant,
        index: usize,
        refresh: request::Refresh,
        answer: &Answer<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let allocation = &self.allocations[index];
        // RFC 8656 §8: a family the allocation has no relay of is a mismatch (either of the
        // two of a dual-stack allocation matches; the whole allocation is refreshed).
        if refresh
            .family
            .is_some_and(|family| allocation.relays[family.index()].is_none())
        {
            return self.reply_error(out, answer, ErrorCode::PeerAddressFamilyMismatch);
        }
        let granted = match refresh.lifetime {
            Some(0) => {
                self.remove_allocation(index, Removal::Deleted);
                Duration::ZERO
            }
            requested => {
                let lifetime = self.config.grant_lifetime(requested);
                let allocation = &mut self.allocations[index];
                allocation.expires = now + lifetime;
                debug!(client = %answer.tuple.client, lifetime = lifetime.as_secs(), "allocation refreshed");
                self.reschedule(index, now + lifetime);
                lifetime
            }
        };
        self.respond(out, answer, Outcome::Success, |w| {
            w.add_u32(attr::LIFETIME, granted.as_secs() as u32);
        })
    }

    pub(super) fn create_permission<'a>(
        &mut self,
        now: Instant,
        index: usize,
        create: CreatePermission<'_>,
        answer: &Answer<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let max_peers = self.config.max_peers_per_request;
        if max_peers != 0 && create.count() > max_peers as usize {
            return self.refuse_by_limit(out, answer, Limit::MaxPeersPerRequest);
        }
        // All-or-nothing: every XOR-PEER-ADDRESS is checked before any permission is installed.
        for peer in create.peers() {
            let refusal = match peer {
                Err(error) => Some(error.code()),
                Ok(peer) => self.check_peer_ip(index, peer.ip()),
            };
            if let Some(code) = refusal {
                return self.reply_error(out, answer, code);
            }
        }
        // Each peer not yet permitted counts (one named twice in a request counts twice).
        let allocation = &self.allocations[index];
        let new = create
            .peers()
            .flatten()
            .filter(|peer| !allocation.has_permission(peer.ip()))
            .count();
        let max = self.config.max_permissions as usize;
        if max != 0 && new > 0 && allocation.permissions.len() + new > max {
            return self.refuse_by_limit(out, answer, Limit::MaxPermissions);
        }
        let expires = now + self.config.permission_lifetime;
        for peer in create.peers().flatten() {
            let relay_ports_only = self.config.policy.relay_ports_only(peer.ip());
            let allocation = &mut self.allocations[index];
            let new = !allocation.has_permission(peer.ip());
            allocation.install_permission(
                peer.ip(),
                Permission {
                    expires,
                    relay_ports_only,
                },
            );
            if new {
                self.permission_live(index, peer.ip());
            }
        }
        self.reschedule(index, expires);
        self.reply_success(out, answer)
    }

    pub(super) fn channel_bind<'a>(
        &mut self,
        now: Instant,
        index: usize,
        bind: request::ChannelBind,
        answer: &Answer<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        // RFC 6062 §5: channels (and Send/Data) do not exist on TCP allocations.
        if self.allocations[index].relay_transport == RelayTransport::Tcp {
            return self.reply_error(out, answer, ErrorCode::BadRequest);
        }
        let request::ChannelBind { number, peer } = bind;
        if let Some(code) = self.check_peer(index, peer) {
            return self.reply_error(out, answer, code);
        }
        let allocation = &self.allocations[index];
        // Re-binding rules (RFC 8656 §11.2): a number stays with its peer and a peer with its number.
        let bound = allocation.channel_by_number(number).map(|c| c.peer);
        let number_taken = bound.is_some_and(|bound| bound != peer);
        let peer_taken = allocation
            .channel_number_of(peer)
            .is_some_and(|bound| bound != number);
        if number_taken || peer_taken {
            debug!(client = %answer.tuple.client, number = format_args!("{number:#06x}"), %peer, "channel bind refused: re-binding conflict");
            return self.reply_error(out, answer, ErrorCode::BadRequest);
        }
        let max = self.config.max_channels as usize;
        if bound.is_none() && max != 0 && allocation.channels.len() >= max {
            return self.refuse_by_limit(out, answer, Limit::MaxChannels);
        }
        // The channel's permission counts against max-permissions like any other.
        let max = self.config.max_permissions as usize;
        if !allocation.has_permission(peer.ip()) && max != 0 && allocation.permissions.len() >= max
        {
            return self.refuse_by_limit(out, answer, Limit::MaxPermissions);
        }
        let channel_expires = now + self.config.channel_lifetime;
        let permission = Permission {
            expires: now + self.config.permission_lifetime,
            relay_ports_only: self.config.policy.relay_ports_only(peer.ip()),
        };
        let allocation = &mut self.allocations[index];
        let new_permission = !allocation.has_permission(peer.ip());
        allocation.bind_channel(number, peer, channel_expires);
        allocation.install_permission(peer.ip(), permission);
        if new_permission {
            self.permission_live(index, peer.ip()); // the channel with it
        } else if bound.is_none() {
            self.channel_live(index, number);
        }
        self.reschedule(index, channel_expires.min(permission.expires));
        self.reply_success(out, answer)
    }

    /// 508 (Insufficient Capacity) for a request past a per-allocation limit, counted under it.
    pub(super) fn refuse_by_limit<'a>(
        &mut self,
        out: &'a mut [u8],
        answer: &Answer<'_>,
        limit: Limit,
    ) -> Output<'a> {
        self.counters.limit_refusals[limit.index()] += 1;
        if let Some(suppressed) = self.log_gate(LogKind::LimitRefusal) {
            info!(client = %answer.tuple.client, limit = Limit::LABEL.values[limit.index()], suppressed, "request refused: limit reached");
        }
        self.reply_error(out, answer, ErrorCode::InsufficientCapacity)
    }

    /// The error code a peer IP earns for a permission, if any: family mismatch (443) or policy
    /// (403). One of tern's own addresses may have a permission; its ports are judged where they
    /// appear ([`Server::check_peer`], and per datagram).
    /// The policy is judged even before the relay is bound (the I/O layer binds at once, but the
    /// core does not count on it): only the family check waits for the relay.
    pub(super) fn check_peer_ip(&mut self, index: usize, peer: IpAddr) -> Option<ErrorCode> {
        let allocation = &self.allocations[index];
        // RFC 8656 §9.2/§11.2: the peer's family must be one the allocation relays.
        if allocation.has_relay() && !allocation.serves(peer) {
            return Some(ErrorCode::PeerAddressFamilyMismatch);
        }
        if let Some(denial) = self.config.policy.denial(peer) {
            self.counters.peers_denied += 1;
            refusal::peer(self.allocations[index].tuple.client, peer, denial);
            return Some(ErrorCode::Forbidden);
        }
        None
    }

    /// The error code a peer transport address earns (ChannelBind, Connect), if any: family
    /// mismatch (443), policy (403), or one of tern's own addresses outside the relay port range
    /// (403).
    pub(super) fn check_peer(&mut self, index: usize, peer: SocketAddr) -> Option<ErrorCode> {
        if let Some(code) = self.check_peer_ip(index, peer.ip()) {
            return Some(code);
        }
        if self.config.policy.judge(peer) != Verdict::OwnHost {
            return None;
        }
        self.counters.own_address_refusals += 1;
        if let Some(suppressed) = self.log_gate(LogKind::PeerDenied) {
            info!(client = %self.allocations[index].tuple.client, %peer, suppressed, "peer denied: one of tern's own addresses, outside the relay port range");
        }
        Some(ErrorCode::Forbidden)
    }
}
