//! Writing a STUN message into a caller's buffer.

use super::address;
use super::attr;
use super::header::{message_type, padded, write_header};
use super::integrity::{fingerprint, hmac, HmacSha1, HmacSha256};
use super::{Class, Method, TransactionId, HEADER_LEN};
use hmac::Mac;
use std::net::SocketAddr;

/// Builds one message in place. Every `add_*` appends an attribute with padding and keeps the
/// header length current; running out of room sets a flag that makes `finish` return `None`.
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflow: bool,
}

impl<'b> MessageWriter<'b> {
    pub fn new(buf: &'b mut [u8], method: Method, class: Class, tid: &TransactionId) -> Self {
        let header: Option<&mut [u8; HEADER_LEN]> =
            buf.get_mut(..HEADER_LEN).and_then(|h| h.try_into().ok());
        let overflow = match header {
            Some(header) => {
                write_header(header, message_type(method, class), 0, tid);
                false
            }
            None => true,
        };
        MessageWriter {
            buf,
            len: HEADER_LEN,
            overflow,
        }
    }

    /// Appends an attribute header for a `value_len`-byte value, zeroes the value and its
    /// padding, updates the header length, and returns the value bytes to fill in. `None`
    /// (and the overflow flag) if it does not fit the buffer or the 16-bit length fields.
    fn reserve(&mut self, typ: u16, value_len: usize) -> Option<&mut [u8]> {
        if self.overflow {
            return None;
        }
        let start = self.len;
        let end = padded(value_len)
            .and_then(|p| p.checked_add(4))
            .and_then(|n| start.checked_add(n));
        let fits = |end: usize| {
            let body_len = u16::try_from(end - HEADER_LEN).ok()?;
            let value_len = u16::try_from(value_len).ok()?;
            Some((end, body_len, value_len))
        };
        let Some((end, body_len, value_len16)) = end.and_then(fits) else {
            self.overflow = true;
            return None;
        };
        let Some(slot) = self.buf.get_mut(start..end) else {
            self.overflow = true;
            return None;
        };
        slot.fill(0);
        slot[0..2].copy_from_slice(&typ.to_be_bytes());
        slot[2..4].copy_from_slice(&value_len16.to_be_bytes());
        self.len = end;
        // The header was written in `new`, so the buffer holds at least HEADER_LEN bytes.
        self.buf[2..4].copy_from_slice(&body_len.to_be_bytes());
        self.buf.get_mut(start + 4..start + 4 + value_len)
    }

    /// Appends an attribute with a raw value (padded to 4 bytes with zeros).
    pub fn add_bytes(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        if let Some(slot) = self.reserve(typ, value.len()) {
            slot.copy_from_slice(value);
        }
        self
    }
    pub fn add_u32(&mut self, typ: u16, value: u32) -> &mut Self {
        self.add_bytes(typ, &value.to_be_bytes())
    }
    /// XOR-MAPPED / XOR-PEER / XOR-RELAYED-ADDRESS (IPv4 or IPv6).
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let tid = self.transaction_id();
        let (value, len) = address::encode(addr, Some(&tid));
        self.add_bytes(typ, value.get(..len).unwrap_or_default())
    }
    /// Plain (non-XOR) address, for OTHER-ADDRESS, RESPONSE-ORIGIN, ALTERNATE-SERVER.
    pub fn add_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let (value, len) = address::encode(addr, None);
        self.add_bytes(typ, value.get(..len).unwrap_or_default())
    }
    /// ERROR-CODE: class/number from `code` (300–699) and a reason phrase.
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        // Codes outside 300–699 are the caller's bug; the class is kept to its 3 bits.
        let class = ((code / 100) & 0x07) as u8;
        let number = (code % 100) as u8;
        let Some(len) = reason.len().checked_add(4) else {
            self.overflow = true;
            return self;
        };
        if let Some(slot) = self.reserve(attr::ERROR_CODE, len) {
            slot[2] = class;
            slot[3] = number;
            slot[4..].copy_from_slice(reason.as_bytes());
        }
        self
    }
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.9, type `typ`: [`attr::ADDRESS_ERROR_CODE`] or the
    /// draft-era [`attr::ADDRESS_ERROR_CODE_LEGACY`]): like ERROR-CODE, with the address family
    /// (0x01 IPv4, 0x02 IPv6) in the first byte.
    pub fn add_address_error_code(
        &mut self,
        typ: u16,
        family: u8,
        code: u16,
        reason: &str,
    ) -> &mut Self {
        let class = ((code / 100) & 0x07) as u8;
        let number = (code % 100) as u8;
        let Some(len) = reason.len().checked_add(4) else {
            self.overflow = true;
            return self;
        };
        if let Some(slot) = self.reserve(typ, len) {
            slot[0] = family;
            slot[2] = class;
            slot[3] = number;
            slot[4..].copy_from_slice(reason.as_bytes());
        }
        self
    }
    /// UNKNOWN-ATTRIBUTES listing `types`.
    pub fn add_unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let Some(len) = types.len().checked_mul(2) else {
            self.overflow = true;
            return self;
        };
        if let Some(slot) = self.reserve(attr::UNKNOWN_ATTRIBUTES, len) {
            for (chunk, typ) in slot.chunks_exact_mut(2).zip(types) {
                chunk.copy_from_slice(&typ.to_be_bytes());
            }
        }
        self
    }
    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything so far, with the length adjusted (§14.5).
    pub fn add_message_integrity(&mut self, key: &[u8]) -> &mut Self {
        self.add_mac::<HmacSha1>(attr::MESSAGE_INTEGRITY, 20, key)
    }
    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes).
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        self.add_mac::<HmacSha256>(attr::MESSAGE_INTEGRITY_SHA256, 32, key)
    }
    /// Reserves the attribute first so the header length already counts it, then MACs the
    /// bytes before it.
    fn add_mac<M: Mac + hmac::digest::KeyInit>(
        &mut self,
        typ: u16,
        len: usize,
        key: &[u8],
    ) -> &mut Self {
        let start = self.len;
        if self.reserve(typ, len).is_none() {
            return self;
        }
        let Some(body_len) = self.body_len() else {
            self.overflow = true;
            return self;
        };
        let tag = hmac::<M>(key, self.buf, start, body_len).map(|m| m.finalize().into_bytes());
        match (tag, self.buf.get_mut(start + 4..start + 4 + len)) {
            (Some(tag), Some(slot)) if tag.len() == len => slot.copy_from_slice(&tag),
            _ => self.overflow = true,
        }
        self
    }
    /// FINGERPRINT (CRC-32 xor 0x5354554E); must be last.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        let start = self.len;
        if self.reserve(attr::FINGERPRINT, 4).is_none() {
            return self;
        }
        let crc = self
            .body_len()
            .and_then(|len| fingerprint(self.buf, start, len));
        match (crc, self.buf.get_mut(start + 4..start + 8)) {
            (Some(crc), Some(slot)) => slot.copy_from_slice(&crc.to_be_bytes()),
            _ => self.overflow = true,
        }
        self
    }
    /// The finished message, or `None` if the buffer was too small.
    pub fn finish(self) -> Option<&'b [u8]> {
        if self.overflow {
            return None;
        }
        let buf: &'b [u8] = self.buf;
        buf.get(..self.len)
    }
    /// Length written so far (None after overflow).
    // A message always has its header, so an `is_empty` would have nothing to say.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Option<usize> {
        (!self.overflow).then_some(self.len)
    }

    fn body_len(&self) -> Option<u16> {
        u16::try_from(self.len.checked_sub(HEADER_LEN)?).ok()
    }
    fn transaction_id(&self) -> TransactionId {
        let mut tid = [0u8; 12];
        if let Some(bytes) = self.buf.get(8..HEADER_LEN) {
            tid.copy_from_slice(bytes);
        }
        tid
    }
}
