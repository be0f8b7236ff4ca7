//! Zero-copy reading of a STUN message.

use super::{Class, Method, TransactionId};

/// Why a buffer is not a STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("top two bits are not zero")]
    NotStun,
    #[error("magic cookie mismatch")]
    BadCookie,
    #[error("length field is not a multiple of 4 or disagrees with the buffer")]
    BadLength,
    #[error("attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("attribute value is malformed")]
    BadAttribute,
}

/// One attribute as it stands in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttr<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute's 4-byte header from the start of the message.
    pub offset: usize,
}

/// Which MESSAGE-INTEGRITY variant a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityKind {
    Sha1,
    Sha256,
}

/// Result of checking MESSAGE-INTEGRITY(-SHA256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityCheck {
    Missing,
    Valid(IntegrityKind),
    Invalid,
}

/// A parsed STUN message borrowing its buffer. `parse` checks the header and walks every
/// attribute once, so later accessors cannot fail on framing.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses exactly one message; `buf.len()` must equal 20 + the header's length field.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let _ = buf;
        todo!("stun helper")
    }
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    pub fn method(&self) -> Method {
        todo!("stun helper")
    }
    pub fn class(&self) -> Class {
        todo!("stun helper")
    }
    pub fn transaction_id(&self) -> &'a TransactionId {
        todo!("stun helper")
    }
    /// Attributes in order, stopping after MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 except
    /// that a FINGERPRINT after them is still yielded.
    pub fn attributes(&self) -> AttrIter<'a> {
        todo!("stun helper")
    }
    /// Value of the first attribute of this type (within what `attributes` yields).
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        let _ = typ;
        todo!("stun helper")
    }
    /// A 4-byte attribute value as u32 (LIFETIME, CHANNEL-NUMBER's first bytes …); `None` if
    /// absent or not 4 bytes.
    pub fn get_u32(&self, typ: u16) -> Option<u32> {
        let _ = typ;
        todo!("stun helper")
    }
    /// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE). `Some(Err)` when not UTF-8.
    pub fn get_str(&self, typ: u16) -> Option<Result<&'a str, ParseError>> {
        let _ = typ;
        todo!("stun helper")
    }
    /// ERROR-CODE as (code, reason).
    pub fn error_code(&self) -> Option<(u16, &'a str)> {
        todo!("stun helper")
    }
    /// Which integrity attribute is present (SHA256 wins if both are).
    pub fn integrity_kind(&self) -> Option<IntegrityKind> {
        todo!("stun helper")
    }
    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`
    /// (the long-term key, RFC 8489 §9.2.2). Handles a FINGERPRINT after it.
    pub fn verify_integrity(&self, key: &[u8]) -> IntegrityCheck {
        let _ = key;
        todo!("stun helper")
    }
    /// `None` if no FINGERPRINT, else whether it matches.
    pub fn fingerprint_ok(&self) -> Option<bool> {
        todo!("stun helper")
    }
    /// Writes comprehension-required attribute types (before integrity) for which `known` is
    /// false into `out`, returns how many (at most `out.len()`).
    pub fn unknown_required(&self, known: impl Fn(u16) -> bool, out: &mut [u16]) -> usize {
        let _ = (known, out);
        todo!("stun helper")
    }
}

/// Iterator over attributes; see [`Message::attributes`].
#[derive(Clone, Debug)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = RawAttr<'a>;
    fn next(&mut self) -> Option<RawAttr<'a>> {
        let _ = (self.buf, self.pos, self.done);
        todo!("stun helper")
    }
}
