//! Allocate (RFC 8656 §7.2, RFC 6062 §5.1): admission (drain, quotas, 300 to an alternate
//! server), the pending allocation while the I/O layer binds its relay, and the answer.

use super::allocation::{Allocation, PendingReply, Traffic};
use super::auth::Authed;
use super::metrics::{Limit, LogKind, Outcome};
use super::reply::{add_address_error_code, Answer, Seal};
use super::request;
use super::server::{live, Removal};
use super::{AllocId, BoundRelay, ErrorCode, Family, Output, RelayError, RelayRequest, Server};
use crate::metrics::LabelSet;
use crate::policy::{QuotaError, QuotaLimits};
use crate::stun::{attr, Method};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::{debug, info};

impl RelayError {
    /// The error code a relay bind failure answers with.
    fn code(self) -> ErrorCode {
        match self {
            RelayError::FamilyUnsupported => ErrorCode::AddressFamilyNotSupported,
            RelayError::NoPorts | RelayError::BadReservation => ErrorCode::InsufficientCapacity,
        }
    }
}

impl Server {
    /// A new allocation for an authenticated, decoded Allocate on a 5-tuple that has none:
    /// refused while draining or over quota, else pending until the I/O layer binds its relay.
    pub(super) fn allocate<'a>(
        &mut self,
        now: Instant,
        allocate: request::Allocate,
        authed: &Authed<'_>,
        answer: &Answer<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let tuple = answer.tuple;
        if self.draining.load(Ordering::Relaxed) {
            self.counters.drain_rejections += 1;
            if let Some(suppressed) = self.log_gate(LogKind::LimitRefusal) {
                info!(client = %tuple.client, user = authed.username, suppressed, "allocation refused: server is draining");
            }
            return self.refuse_allocate(out, answer, true);
        }
        let quota_id = self.config.auth.quota_id(authed.username);
        let limits = QuotaLimits {
            per_user: self.config.user_quota,
            per_address: self.config.max_allocations_per_ip,
            total: self.config.total_quota,
        };
        if let Err(error) = self.quotas.try_acquire(quota_id, tuple.client.ip(), limits) {
            let limit = match error {
                QuotaError::User => Limit::UserQuota,
                QuotaError::Address => Limit::MaxAllocationsPerIp,
                QuotaError::Total => Limit::TotalQuota,
            };
            self.counters.limit_refusals[limit.index()] += 1;
            // tern_quota_rejections_total keeps counting user-quota and total-quota alone.
            if error != QuotaError::Address {
                self.counters.quota_rejections += 1;
            }
            if let Some(suppressed) = self.log_gate(LogKind::LimitRefusal) {
                info!(client = %tuple.client, user = authed.username, reason = %error, suppressed, "allocation refused");
            }
            let redirect = error == QuotaError::Total;
            return self.refuse_allocate(out, answer, redirect);
        }
        let lifetime = self.config.grant_lifetime(allocate.lifetime);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let expires = now + lifetime;
        let alloc = self.insert_allocation(Allocation {
            generation,
            tuple,
            username: authed.username.into(),
            quota_id: quota_id.into(),
            key: authed.key,
            allocate_tid: answer.tid,
            relays: [None; 2],
            address_error: None,
            legacy_family_attrs: allocate.legacy_family_attrs,
            pending: Some(PendingReply {
                sha256: answer.seal.sha256,
                fingerprint: answer.seal.fingerprint,
                family: allocate.family,
                additional: allocate.additional,
            }),
            created: now,
            expires,
            permissions: Default::default(),
            channels: Default::default(),
            channel_numbers: Default::default(),
            bandwidth: Default::default(),
            next_deadline: expires,
            stats: Traffic::default(),
            relay_transport: allocate.transport,
            peer_connections: Vec::new(),
            offloaded: false,
        });
        Output::BindRelay(RelayRequest {
            alloc,
            tuple,
            family: allocate.family,
            additional: allocate.additional,
            port: allocate.port,
            transport: allocate.transport,
        })
    }

    /// An Allocate on a 5-tuple that has an allocation: the success again for a retransmission
    /// of the request that made it, else 437.
    pub(super) fn allocate_again<'a>(
        &mut self,
        now: Instant,
        index: usize,
        answer: &Answer<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let allocation = &self.allocations[index];
        if allocation.allocate_tid == answer.tid && allocation.has_relay() {
            self.allocate_success(now, index, answer, None, out)
        } else {
            self.reply_error(out, answer, ErrorCode::AllocationMismatch)
        }
    }

    /// Refuses an Allocate for lack of room: 300 Try Alternate with the next `alternate-server`
    /// of the client's family when `redirect` and one is configured, else 486.
    fn refuse_allocate<'a>(
        &mut self,
        out: &'a mut [u8],
        answer: &Answer<'_>,
        redirect: bool,
    ) -> Output<'a> {
        let alternate = if redirect {
            self.next_alternate(Family::of(&answer.tuple.client))
        } else {
            None
        };
        let Some(alternate) = alternate else {
            return self.reply_error(out, answer, ErrorCode::AllocationQuotaReached);
        };
        self.counters.redirects += 1;
        debug!(client = %answer.tuple.client, %alternate, "allocate redirected");
        self.respond(out, answer, Outcome::Error(ErrorCode::TryAlternate), |w| {
            w.add_address(attr::ALTERNATE_SERVER, alternate);
        })
    }

    /// Round-robin over the configured alternate servers of `family`.
    fn next_alternate(&mut self, family: Family) -> Option<SocketAddr> {
        let alternates = &self.config.alternate_servers;
        let count = alternates
            .iter()
            .filter(|a| Family::of(a) == family)
            .count();
        if count == 0 {
            return None;
        }
        let position = &mut self.next_alternate[family.index()];
        let pick = *position % count;
        *position = position.wrapping_add(1);
        alternates
            .iter()
            .filter(|a| Family::of(a) == family)
            .nth(pick)
            .copied()
    }

    /// Completes an Allocate once the I/O layer has bound (or failed to bind) the relay socket
    /// of the request's `family`, and, for a dual-stack request, the `additional` one. The
    /// allocation succeeds if either was bound; the family that failed is reported in an
    /// ADDRESS-ERROR-CODE (RFC 8656 §7.2).
    pub fn relay_bound<'a>(
        &mut self,
        now: Instant,
        alloc: AllocId,
        result: Result<BoundRelay, RelayError>,
        additional: Option<Result<BoundRelay, RelayError>>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let Some(pending) = allocation.pending.take() else {
            return Output::Nothing;
        };
        let key = allocation.key;
        let answer = Answer {
            tuple: allocation.tuple,
            method: Method::ALLOCATE,
            tid: allocation.allocate_tid,
            seal: Seal {
                key: Some(&key),
                sha256: pending.sha256,
                fingerprint: pending.fingerprint,
            },
        };
        let (primary, reservation) = match result {
            Ok(bound) => (Some(bound.local), bound.reservation),
            Err(_) => (None, None),
        };
        let second = additional.and_then(Result::ok).map(|bound| bound.local);
        if primary.is_none() && second.is_none() {
            self.remove_allocation(alloc.index, Removal::Failed);
            let code = match result {
                Err(error) => error.code(),
                Ok(_) => ErrorCode::InsufficientCapacity,
            };
            return self.reply_error(out, &answer, code);
        }
        for local in primary.into_iter().chain(second) {
            let advertised = self.config.advertised(local);
            allocation.relays[Family::of(&local).index()] = Some((local, advertised));
        }
        // A dual-stack request where one family failed: say which and why.
        allocation.address_error = match (result, additional) {
            (Err(error), Some(Ok(_))) => Some((pending.family, error.code())),
            (Ok(_), Some(Err(error))) => pending.additional.map(|family| (family, error.code())),
            _ => None,
        };
        self.counters.allocations_created += 1;
        debug!(client = %answer.tuple.client, relay = ?allocation.advertised().collect::<Vec<_>>(), user = %allocation.username, "allocation created");
        self.start_offloading(alloc.index);
        self.allocate_success(now, alloc.index, &answer, reservation, out)
    }

    /// The success response: relayed address(es), lifetime left, mapped address, the
    /// reservation token and ADDRESS-ERROR-CODE when there are.
    fn allocate_success<'a>(
        &mut self,
        now: Instant,
        index: usize,
        answer: &Answer<'_>,
        reservation: Option<[u8; 8]>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let allocation = &self.allocations[index];
        if !allocation.has_relay() {
            return Output::Nothing;
        }
        let lifetime = remaining_secs(allocation.expires, now);
        let client = allocation.tuple.client;
        let advertised = allocation
            .relays
            .map(|relay| relay.map(|(_, advertised)| advertised));
        let address_error = allocation.address_error;
        let address_error_type = if allocation.legacy_family_attrs {
            attr::ADDRESS_ERROR_CODE_LEGACY
        } else {
            attr::ADDRESS_ERROR_CODE
        };
        self.respond(out, answer, Outcome::Success, |w| {
            // Two XOR-RELAYED-ADDRESS attributes for a dual-stack allocation, IPv4 first.
            for advertised in advertised.into_iter().flatten() {
                w.add_xor_address(attr::XOR_RELAYED_ADDRESS, advertised);
            }
            w.add_u32(attr::LIFETIME, lifetime);
            w.add_xor_address(attr::XOR_MAPPED_ADDRESS, client);
            if let Some(token) = reservation {
                w.add_bytes(attr::RESERVATION_TOKEN, &token);
            }
            if let Some((family, code)) = address_error {
                add_address_error_code(w, address_error_type, family.wire(), code);
            }
        })
    }
}

fn remaining_secs(expires: Instant, now: Instant) -> u32 {
    expires
        .saturating_duration_since(now)
        .as_secs()
        .min(u32::MAX.into()) as u32
}
