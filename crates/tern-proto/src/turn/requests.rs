//! Binding (RFC 8489, RFC 5780), and the requests on an existing allocation: Refresh,
//! CreatePermission and ChannelBind (RFC 8656 §8, §9, §11).

use super::metrics::Outcome;
use super::refusal;
use super::reply::{Answer, Seal};
use super::request::{self, is_known_attribute, CreatePermission};
use super::server::Removal;
use super::{ErrorCode, FiveTuple, Output, RelayTransport, Server, Transport};
use crate::stun::{attr, Message};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::debug;

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
                self.reschedule(index);
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
        // All-or-nothing: every XOR-PEER-ADDRESS is checked before any permission is installed.
        for peer in create.peers() {
            let refusal = match peer {
                Err(error) => Some(error.code()),
                Ok(peer) => self.check_peer(index, peer),
            };
            if let Some(code) = refusal {
                return self.reply_error(out, answer, code);
            }
        }
        let expires = now + self.config.permission_lifetime;
        let allocation = &mut self.allocations[index];
        for peer in create.peers().flatten() {
            allocation.install_permission(peer.ip(), expires);
        }
        self.reschedule(index);
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
        let allocation = &mut self.allocations[index];
        // Re-binding rules (RFC 8656 §11.2): a number stays with its peer and a peer with its number.
        let number_taken = allocation
            .channel_by_number(number)
            .is_some_and(|c| c.peer != peer);
        let peer_taken = allocation
            .channel_by_peer(peer)
            .is_some_and(|c| c.number != number);
        if number_taken || peer_taken {
            debug!(client = %answer.tuple.client, number = format_args!("{number:#06x}"), %peer, "channel bind refused: re-binding conflict");
            return self.reply_error(out, answer, ErrorCode::BadRequest);
        }
        allocation.bind_channel(number, peer, now + self.config.channel_lifetime);
        allocation.install_permission(peer.ip(), now + self.config.permission_lifetime);
        self.reschedule(index);
        self.reply_success(out, answer)
    }

    /// The error code a peer address earns, if any: family mismatch (443) or policy (403).
    pub(super) fn check_peer(&mut self, index: usize, peer: SocketAddr) -> Option<ErrorCode> {
        let allocation = &self.allocations[index];
        if !allocation.has_relay() {
            return None; // not reachable: requests wait for the relay to be bound
        }
        // RFC 8656 §9.2/§11.2: the peer's family must be one the allocation relays.
        if !allocation.serves(peer.ip()) {
            return Some(ErrorCode::PeerAddressFamilyMismatch);
        }
        if let Some(denial) = self.config.policy.denial(peer.ip()) {
            self.counters.peers_denied += 1;
            refusal::peer(self.allocations[index].tuple.client, peer.ip(), denial);
            return Some(ErrorCode::Forbidden);
        }
        None
    }
}
