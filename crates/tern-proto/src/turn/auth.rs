//! Authenticating requests (RFC 8489 §9.2, long-term credentials) and the challenges sent when
//! they do not.

use super::metrics::{AuthReason, Outcome};
use super::reply::{Answer, Seal};
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
    /// RFC 8489 §9.2.4, with the key remembered per allocation (§9.2.2: one username per
    /// allocation). REST expiry is checked on every request so an expired credential cannot
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
        let (Some(username), Some(_realm), Some(nonce)) =
            (text(attr::USERNAME), text(attr::REALM), text(attr::NONCE))
        else {
            return Err(Challenge::BadRequest);
        };
        let unix = self.clock.unix_at(now);
        let stale = self.config.stale_nonce_secs;
        let valid = |client| self.nonces.check(nonce, client, unix, stale) == NonceCheck::Valid;
        if !valid(tuple.client) && !also_nonce_of.is_some_and(valid) {
            return Err(Challenge::StaleNonce);
        }
        let keys = match self.config.auth.keys(username, unix) {
            Ok(keys) => keys,
            Err(error) => {
                let reason = match error {
                    AuthError::UnknownUser => AuthReason::UnknownUser,
                    AuthError::Expired => AuthReason::Expired,
                    AuthError::TtlTooLong => AuthReason::TtlTooLong,
                };
                self.counters.auth_failures[reason.index()] += 1;
                info!(client = %tuple.client, user = username, reason = auth_error_text(error), "authentication failed");
                return Err(Challenge::Unauthorized);
            }
        };
        let remembered = existing
            .map(|i| &self.allocations[i])
            .filter(|a| &*a.username == username);
        let candidates = remembered
            .map(|a| a.key)
            .into_iter()
            .chain(keys.iter().copied());
        for key in candidates {
            if let IntegrityCheck::Valid(_) = msg.verify_integrity(&key) {
                return Ok(Authed {
                    username,
                    key,
                    kind,
                });
            }
        }
        self.counters.auth_failures[AuthReason::BadIntegrity.index()] += 1;
        info!(client = %tuple.client, user = username, reason = "bad message integrity", "authentication failed");
        Err(Challenge::Unauthorized)
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
