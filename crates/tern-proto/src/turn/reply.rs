//! Writing responses: the message, its SOFTWARE, integrity and fingerprint, and counting it
//! under its method and result. Every response goes through [`Server::respond`].

use super::metrics::Outcome;
use super::{ErrorCode, FiveTuple, Output, Server, Transport};
use crate::auth::LongTermKey;
use crate::stun::{attr, Class, IntegrityKind, Message, MessageWriter, Method, TransactionId};

/// How a response is protected: with the request's integrity kind and key, and a FINGERPRINT if
/// the request had one.
#[derive(Clone, Copy)]
pub(super) struct Seal<'k> {
    pub key: Option<&'k LongTermKey>,
    pub sha256: bool,
    pub fingerprint: bool,
}

impl<'k> Seal<'k> {
    /// The seal for answering an authenticated request: its integrity kind, its key, and a
    /// FINGERPRINT if it carried one.
    pub fn answering(msg: &Message<'_>, key: &'k LongTermKey, kind: IntegrityKind) -> Seal<'k> {
        Seal {
            key: Some(key),
            sha256: kind == IntegrityKind::Sha256,
            fingerprint: msg.fingerprint_ok().is_some(),
        }
    }

    /// No integrity (challenges, Binding), a FINGERPRINT if the request had one.
    pub fn open(msg: &Message<'_>) -> Seal<'static> {
        Seal {
            key: None,
            sha256: false,
            fingerprint: msg.fingerprint_ok().is_some(),
        }
    }
}

/// The request a response answers: where the response goes, the request's method and
/// transaction id, and how the response is sealed.
#[derive(Clone, Copy)]
pub(super) struct Answer<'k> {
    pub tuple: FiveTuple,
    pub method: Method,
    pub tid: TransactionId,
    pub seal: Seal<'k>,
}

impl<'k> Answer<'k> {
    /// Answering `msg`, received over `tuple`.
    pub fn to(msg: &Message<'_>, tuple: FiveTuple, seal: Seal<'k>) -> Answer<'k> {
        Answer {
            tuple,
            method: msg.method(),
            tid: *msg.transaction_id(),
            seal,
        }
    }
}

impl Server {
    /// Writes the response: success, or an error with its ERROR-CODE first; then `body`, then
    /// SOFTWARE, integrity and fingerprint. Counts it under its method and outcome.
    ///
    /// A response without integrity answers a request that proved nothing (Binding, challenges,
    /// errors before authentication). Over UDP its source may be spoofed, so such responses are
    /// rate limited per source (`unauthenticated-rate-limit`) and kept small: no SOFTWARE.
    pub(super) fn respond<'a>(
        &mut self,
        out: &'a mut [u8],
        answer: &Answer<'_>,
        outcome: Outcome,
        body: impl FnOnce(&mut MessageWriter<'a>),
    ) -> Output<'a> {
        let authenticated = answer.seal.key.is_some();
        if !authenticated
            && answer.tuple.transport == Transport::Udp
            && !self.admit_unauthenticated(answer.tuple.client.ip())
        {
            return Output::Nothing;
        }
        let class = match outcome {
            Outcome::Success => Class::Success,
            Outcome::Error(_) => Class::Error,
        };
        let mut writer = MessageWriter::new(out, answer.method, class, &answer.tid);
        if let Outcome::Error(code) = outcome {
            add_error_code(&mut writer, code);
        }
        body(&mut writer);
        if let (Some(software), true) = (&self.config.software, authenticated) {
            writer.add_bytes(attr::SOFTWARE, software.as_bytes());
        }
        match (answer.seal.key, answer.seal.sha256) {
            (Some(key), true) => {
                writer.add_message_integrity_sha256(key);
            }
            (Some(key), false) => {
                writer.add_message_integrity(key);
            }
            (None, _) => {}
        }
        if answer.seal.fingerprint {
            writer.add_fingerprint();
        }
        match writer.finish() {
            Some(data) => {
                self.counters.count_response(answer.method, outcome);
                Output::ToClient {
                    tuple: answer.tuple,
                    data,
                }
            }
            None => Output::Nothing,
        }
    }

    pub(super) fn reply_success<'a>(
        &mut self,
        out: &'a mut [u8],
        answer: &Answer<'_>,
    ) -> Output<'a> {
        self.respond(out, answer, Outcome::Success, |_| {})
    }

    pub(super) fn reply_error<'a>(
        &mut self,
        out: &'a mut [u8],
        answer: &Answer<'_>,
        code: ErrorCode,
    ) -> Output<'a> {
        self.respond(out, answer, Outcome::Error(code), |_| {})
    }

    /// 420 listing the comprehension-required attributes we do not understand.
    pub(super) fn reply_unknown<'a>(
        &mut self,
        out: &'a mut [u8],
        answer: &Answer<'_>,
        unknown: &[u16],
    ) -> Output<'a> {
        let outcome = Outcome::Error(ErrorCode::UnknownAttribute);
        self.respond(out, answer, outcome, |w| {
            w.add_unknown_attributes(unknown);
        })
    }
}

/// ERROR-CODE: the code's number and reason phrase, the only place they reach the wire.
fn add_error_code(writer: &mut MessageWriter<'_>, code: ErrorCode) {
    writer.add_error_code(code.code(), code.reason());
}

/// ADDRESS-ERROR-CODE (RFC 8656 §7.2) of type `typ` for the address family byte `family`.
pub(super) fn add_address_error_code(
    writer: &mut MessageWriter<'_>,
    typ: u16,
    family: u8,
    code: ErrorCode,
) {
    writer.add_address_error_code(typ, family, code.code(), code.reason());
}
