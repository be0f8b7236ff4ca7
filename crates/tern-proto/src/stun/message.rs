//! Zero-copy reading of a STUN message.

use super::attr;
use super::header::{class_of, method_of, padded};
use super::integrity::{fingerprint, hmac, HmacSha1, HmacSha256};
use super::{Class, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};
use hmac::Mac;

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
    tid: &'a TransactionId,
    /// Attributes whose header starts before this offset are visible: all of them, or up to
    /// the end of the last integrity attribute.
    visible_end: usize,
    /// Offsets of the integrity attributes that count (see `parse`).
    integrity_sha1: Option<usize>,
    integrity_sha256: Option<usize>,
    /// Offset of FINGERPRINT, only when it is the last attribute.
    fingerprint: Option<usize>,
}

/// Reads the attribute whose header starts at `pos`; returns it and the offset of the next one
/// (after padding). Fails if the header, value or padding runs past `buf`.
fn read_attr(buf: &[u8], pos: usize) -> Result<(RawAttr<'_>, usize), ParseError> {
    let value_start = pos.checked_add(4).ok_or(ParseError::TruncatedAttribute)?;
    let header = buf
        .get(pos..value_start)
        .ok_or(ParseError::TruncatedAttribute)?;
    let (typ, len) = match header {
        [t0, t1, l0, l1] => (
            u16::from_be_bytes([*t0, *t1]),
            usize::from(u16::from_be_bytes([*l0, *l1])),
        ),
        _ => return Err(ParseError::TruncatedAttribute),
    };
    let value_end = value_start
        .checked_add(len)
        .ok_or(ParseError::TruncatedAttribute)?;
    let next = padded(len)
        .and_then(|p| value_start.checked_add(p))
        .ok_or(ParseError::TruncatedAttribute)?;
    let value = buf
        .get(value_start..value_end)
        .ok_or(ParseError::TruncatedAttribute)?;
    if next > buf.len() {
        return Err(ParseError::TruncatedAttribute);
    }
    Ok((
        RawAttr {
            typ,
            value,
            offset: pos,
        },
        next,
    ))
}

/// Header length field value for a message ending at `end` (bounded by parse/writer checks).
fn body_len_to(end: usize) -> Option<u16> {
    end.checked_sub(HEADER_LEN)
        .and_then(|n| u16::try_from(n).ok())
}

impl<'a> Message<'a> {
    /// Parses exactly one message; `buf.len()` must equal 20 + the header's length field.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let header: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(ParseError::TooShort)?;
        if header[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(ParseError::BadCookie);
        }
        let body_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if body_len % 4 != 0 || Some(body_len) != buf.len().checked_sub(HEADER_LEN) {
            return Err(ParseError::BadLength);
        }
        let tid: &'a TransactionId = match buf.get(8..HEADER_LEN).map(<&TransactionId>::try_from) {
            Some(Ok(tid)) => tid,
            _ => return Err(ParseError::TooShort),
        };

        let mut msg = Message {
            buf,
            tid,
            visible_end: buf.len(),
            integrity_sha1: None,
            integrity_sha256: None,
            fingerprint: None,
        };
        // Walk every attribute once. After the first integrity attribute only an adjacent
        // MESSAGE-INTEGRITY-SHA256 (which RFC 8489 §14.6 puts after MESSAGE-INTEGRITY) and a
        // final FINGERPRINT still count; anything else there is ignored.
        let mut pos = HEADER_LEN;
        while pos < buf.len() {
            let (attr, next) = read_attr(buf, pos)?;
            let integrity_seen = msg.integrity_sha1.is_some() || msg.integrity_sha256.is_some();
            match attr.typ {
                attr::MESSAGE_INTEGRITY if !integrity_seen => {
                    msg.integrity_sha1 = Some(pos);
                    msg.visible_end = next;
                }
                attr::MESSAGE_INTEGRITY_SHA256
                    if msg.integrity_sha256.is_none()
                        && (!integrity_seen || pos == msg.visible_end) =>
                {
                    msg.integrity_sha256 = Some(pos);
                    msg.visible_end = next;
                }
                attr::FINGERPRINT if next == buf.len() => msg.fingerprint = Some(pos),
                _ => {}
            }
            pos = next;
        }
        Ok(msg)
    }
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    pub fn method(&self) -> Method {
        method_of(self.message_type())
    }
    pub fn class(&self) -> Class {
        class_of(self.message_type())
    }
    pub fn transaction_id(&self) -> &'a TransactionId {
        self.tid
    }
    fn message_type(&self) -> u16 {
        match self.buf {
            [t0, t1, ..] => u16::from_be_bytes([*t0, *t1]),
            _ => 0,
        }
    }
    /// Attributes in order, stopping after MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 except
    /// that a FINGERPRINT after them is still yielded.
    pub fn attributes(&self) -> AttrIter<'a> {
        AttrIter {
            buf: self.buf,
            pos: HEADER_LEN,
            visible_end: self.visible_end,
            // A FINGERPRINT inside the visible range is yielded by the ordinary walk.
            trailing_fingerprint: self.fingerprint.filter(|&off| off >= self.visible_end),
        }
    }
    /// Value of the first attribute of this type (within what `attributes` yields).
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.typ == typ).map(|a| a.value)
    }
    /// A 4-byte attribute value as u32 (LIFETIME, CHANNEL-NUMBER's first bytes …); `None` if
    /// absent or not 4 bytes.
    pub fn get_u32(&self, typ: u16) -> Option<u32> {
        let bytes: [u8; 4] = self.get(typ)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }
    /// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE). `Some(Err)` when not UTF-8.
    pub fn get_str(&self, typ: u16) -> Option<Result<&'a str, ParseError>> {
        self.get(typ)
            .map(|v| std::str::from_utf8(v).map_err(|_| ParseError::BadAttribute))
    }
    /// ERROR-CODE as (code, reason).
    pub fn error_code(&self) -> Option<(u16, &'a str)> {
        match self.get(attr::ERROR_CODE)? {
            [_, _, class, number, reason @ ..] => {
                let class = u16::from(class & 0x07);
                let number = u16::from(*number);
                // RFC 8489 §14.8: class 3–6, number 0–99.
                if !(3..=6).contains(&class) || number > 99 {
                    return None;
                }
                let reason = std::str::from_utf8(reason).ok()?;
                Some((class * 100 + number, reason))
            }
            _ => None,
        }
    }
    /// Which integrity attribute is present (SHA256 wins if both are).
    pub fn integrity_kind(&self) -> Option<IntegrityKind> {
        if self.integrity_sha256.is_some() {
            Some(IntegrityKind::Sha256)
        } else if self.integrity_sha1.is_some() {
            Some(IntegrityKind::Sha1)
        } else {
            None
        }
    }
    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`
    /// (the long-term key, RFC 8489 §9.2.2). Handles a FINGERPRINT after it.
    pub fn verify_integrity(&self, key: &[u8]) -> IntegrityCheck {
        let (off, kind) = match (self.integrity_sha256, self.integrity_sha1) {
            (Some(off), _) => (off, IntegrityKind::Sha256),
            (None, Some(off)) => (off, IntegrityKind::Sha1),
            (None, None) => return IntegrityCheck::Missing,
        };
        let Ok((attr, end)) = read_attr(self.buf, off) else {
            return IntegrityCheck::Invalid;
        };
        let Some(body_len) = body_len_to(end) else {
            return IntegrityCheck::Invalid;
        };
        let ok = match kind {
            IntegrityKind::Sha1 => {
                attr.value.len() == 20
                    && hmac::<HmacSha1>(key, self.buf, off, body_len)
                        .is_some_and(|mac| mac.verify_slice(attr.value).is_ok())
            }
            // The value may be truncated to 16..=32 bytes in steps of 4 (RFC 8489 §14.6).
            IntegrityKind::Sha256 => {
                (16..=32).contains(&attr.value.len())
                    && attr.value.len() % 4 == 0
                    && hmac::<HmacSha256>(key, self.buf, off, body_len)
                        .is_some_and(|mac| mac.verify_truncated_left(attr.value).is_ok())
            }
        };
        if ok {
            IntegrityCheck::Valid(kind)
        } else {
            IntegrityCheck::Invalid
        }
    }
    /// `None` if no FINGERPRINT, else whether it matches.
    pub fn fingerprint_ok(&self) -> Option<bool> {
        let off = self.fingerprint?;
        let ok = read_attr(self.buf, off).is_ok_and(|(attr, end)| {
            let expected = body_len_to(end).and_then(|len| fingerprint(self.buf, off, len));
            match (<[u8; 4]>::try_from(attr.value), expected) {
                (Ok(value), Some(expected)) => u32::from_be_bytes(value) == expected,
                _ => false,
            }
        });
        Some(ok)
    }
    /// Writes comprehension-required attribute types (before integrity) for which `known` is
    /// false into `out`, returns how many (at most `out.len()`).
    pub fn unknown_required(&self, known: impl Fn(u16) -> bool, out: &mut [u16]) -> usize {
        let mut count = 0;
        let before_integrity = self.attributes().take_while(|a| {
            a.typ != attr::MESSAGE_INTEGRITY && a.typ != attr::MESSAGE_INTEGRITY_SHA256
        });
        for a in before_integrity {
            if !attr::is_comprehension_required(a.typ) || known(a.typ) {
                continue;
            }
            // Each type is listed once, however often it repeats.
            let listed = out.get(..count).is_some_and(|l| l.contains(&a.typ));
            if listed {
                continue;
            }
            match out.get_mut(count) {
                Some(slot) => {
                    *slot = a.typ;
                    count += 1;
                }
                None => break,
            }
        }
        count
    }
}

/// Iterator over attributes; see [`Message::attributes`].
#[derive(Clone, Debug)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
    visible_end: usize,
    trailing_fingerprint: Option<usize>,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = RawAttr<'a>;
    fn next(&mut self) -> Option<RawAttr<'a>> {
        if self.pos < self.visible_end {
            // `parse` already walked these, so this cannot fail; stop quietly if it did.
            match read_attr(self.buf, self.pos) {
                Ok((attr, next)) => {
                    self.pos = next;
                    return Some(attr);
                }
                Err(_) => self.pos = self.visible_end,
            }
        }
        let off = self.trailing_fingerprint.take()?;
        read_attr(self.buf, off).ok().map(|(attr, _)| attr)
    }
}
