//! Authenticating requests (RFC 8489 §9.2, long-term credentials) and the challenges sent when
//! they do not.

use super::metrics::{AuthReason, LogKind, Outcome};
use super::reply::{Answer, Seal};
use super::server::Removal;
use super::{ErrorCode, FiveTuple, Output, Server};
use crate::auth::{AuthError, LongTermKey, NonceCheck};
use crate::metrics::LabelSet;
use crate::stun::{attr, IntegrityCheck, IntegrityKind, Message};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// An authenticated request's credentials.
pub(super) struct Authed<'m> {
    pub username: &'m str,
    pub key: LongTermKey,
    pub kind: IntegrityKind,
}

/// RFC 8489 §14.3: USERNAME is fewer than 509 bytes.
const MAX_USERNAME_BYTES: usize = 508;
/// RFC 8489 §14.9, §14.10: REALM and NONCE are fewer than 128 characters.
const MAX_TEXT_CHARS: usize = 127;

/// Why a request did not authenticate, and so which challenge to answer with.
pub(super) enum Challenge {
    /// 401 with REALM and NONCE (no or bad credentials).
    Unauthorized,
    /// 438 with a fresh NONCE.
    StaleNonce,
    /// 400: integrity present but USERNAME, REALM or NONCE missing.
    BadRequest,
}

impl Server {
    /// RFC 8489 §9.2.4. The credential is verified against the current secrets and users on every
    /// request, so a reload that removes a secret or a user reaches live allocations: the next
    /// request on an allocation whose credential no longer verifies ends it (its Refresh is
    /// refused). REST expiry is checked on every request too, so an expired credential cannot
    /// keep refreshing.
    ///
    /// `also_nonce_of`: another client address whose nonce is accepted too (a ConnectionBind on a
    /// data connection may carry the nonce its control connection was given).
    pub(super) fn authenticate<'m>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'m>,
        existing: Option<usize>,
        also_nonce_of: Option<SocketAddr>,
    ) -> Result<Authed<'m>, Challenge> {
        let Some(kind) = msg.integrity_kind() else {
            return Err(Challenge::Unauthorized);
        };
        let text = |typ| msg.get_str(typ).and_then(Result::ok);
        let (Some(username), Some(realm), Some(nonce)) =
            (text(attr::USERNAME), text(attr::REALM), text(attr::NONCE))
        else {
            return Err(Challenge::BadRequest);
        };
        // Before any work or log line that grows with them.
        if username.len() > MAX_USERNAME_BYTES
            || realm.chars().count() > MAX_TEXT_CHARS
            || nonce.chars().count() > MAX_TEXT_CHARS
        {
            self.counters.auth_failures[AuthReason::Oversized.index()] += 1;
            return Err(Challenge::BadRequest);
        }
        let unix = self.clock.unix_at(now);
        let stale = self.config.stale_nonce_secs;
        let valid = |client| self.nonces.check(nonce, client, unix, stale) == NonceCheck::Valid;
        if !valid(tuple.client) && !also_nonce_of.is_some_and(valid) {
            return Err(Challenge::StaleNonce);
        }
        // The allocation on this 5-tuple, if the request names its user.
        let own = existing.filter(|&i| &*self.allocations[i].username == username);
        let keys = match self.config.auth.keys(username, unix) {
            Ok(keys) => keys,
            Err(error) => {
                let reason = match error {
                    AuthError::UnknownUser => AuthReason::UnknownUser,
                    AuthError::Expired => AuthReason::Expired,
                    AuthError::TtlTooLong => AuthReason::TtlTooLong,
                };
                self.counters.auth_failures[reason.index()] += 1;
                if let Some(suppressed) = self.log_gate(LogKind::AuthFailure) {
                    info!(client = %tuple.client, user = username, reason = auth_error_text(error), suppressed, "authentication failed");
                }
                // An expired credential only stops refreshing; one the configuration no longer
                // knows (or no longer accepts) is revoked.
                if let (Some(index), false) = (own, error == AuthError::Expired) {
                    self.revoke(index);
                }
                return Err(Challenge::Unauthorized);
            }
        };
        // The server's own record decides, not the request: a spoofed request cannot end an
        // allocation whose credential is still good.
        if let Some(index) = own {
            let key = self.allocations[index].key;
            if !keys.iter().any(|candidate| *candidate == key) {
                self.counters.auth_failures[AuthReason::UnknownUser.index()] += 1;
                self.revoke(index);
                return Err(Challenge::Unauthorized);
            }
        }
        for key in keys.iter() {
            if let IntegrityCheck::Valid(_) = msg.verify_integrity(key) {
                return Ok(Authed {
                    username,
                    key: *key,
                    kind,
                });
            }
        }
        self.counters.auth_failures[AuthReason::BadIntegrity.index()] += 1;
        if let Some(suppressed) = self.log_gate(LogKind::AuthFailure) {
            info!(client = %tuple.client, user = username, reason = "bad message integrity", suppressed, "authentication failed");
        }
        Err(Challenge::Unauthorized)
    }

    /// Ends an allocation whose credential no longer verifies.
    fn revoke(&mut self, index: usize) {
        let allocation = &self.allocations[index];
        info!(client = %allocation.tuple.client, user = %allocation.username, "allocation ended: its credential was removed");
        self.remove_allocation(index, Removal::Revoked);
    }

    /// Answers a request that did not authenticate: 401 or 438 with REALM and a fresh NONCE,
    /// or 400.
    pub(super) fn reply_challenge<'a>(
        &mut self,
        now: Instant,
        out: &'a mut [u8],
        tuple: FiveTuple,
        msg: &Message<'_>,
        challenge: Challenge,
    ) -> Output<'a> {
        let answer = Answer::to(msg, tuple, Seal::open(msg));
        let code = match challenge {
            Challenge::BadRequest => return self.reply_error(out, &answer, ErrorCode::BadRequest),
            Challenge::Unauthorized => ErrorCode::Unauthorized,
            Challenge::StaleNonce => ErrorCode::StaleNonce,
        };
        let nonce = self.nonces.issue(tuple.client, self.clock.unix_at(now));
        // The realm is borrowed from the configuration while `respond` borrows the server.
        let config = Arc::clone(&self.config);
        let realm = config.auth.realm();
        self.respond(out, &answer, Outcome::Error(code), |w| {
            w.add_bytes(attr::REALM, realm.as_bytes());
            w.add_bytes(attr::NONCE, nonce.as_str().as_bytes());
        })
    }
}

/// How an authentication failure reads in the log.
fn auth_error_text(error: AuthError) -> &'static str {
    match error {
        AuthError::UnknownUser => "unknown user",
        AuthError::Expired => "credential expired",
        AuthError::TtlTooLong => "credential expiry beyond max-credential-ttl",
    }
}
