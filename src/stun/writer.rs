//! Writing a STUN message into a caller's buffer.

use super::{Class, Method, TransactionId};
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
        let _ = (method, class, tid);
        MessageWriter { buf, len: 0, overflow: false }
    }
    /// Appends an attribute with a raw value (padded to 4 bytes with zeros).
    pub fn add_bytes(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        let _ = (typ, value, &self.buf, self.len, self.overflow);
        todo!("stun helper")
    }
    pub fn add_u32(&mut self, typ: u16, value: u32) -> &mut Self {
        let _ = (typ, value);
        todo!("stun helper")
    }
    /// XOR-MAPPED / XOR-PEER / XOR-RELAYED-ADDRESS (IPv4 or IPv6).
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let _ = (typ, addr);
        todo!("stun helper")
    }
    /// Plain (non-XOR) address, for OTHER-ADDRESS, RESPONSE-ORIGIN, ALTERNATE-SERVER.
    pub fn add_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let _ = (typ, addr);
        todo!("stun helper")
    }
    /// ERROR-CODE: class/number from `code` (300–699) and a reason phrase.
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let _ = (code, reason);
        todo!("stun helper")
    }
    /// UNKNOWN-ATTRIBUTES listing `types`.
    pub fn add_unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let _ = types;
        todo!("stun helper")
    }
    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything so far, with the length adjusted (§14.5).
    pub fn add_message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let _ = key;
        todo!("stun helper")
    }
    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes).
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let _ = key;
        todo!("stun helper")
    }
    /// FINGERPRINT (CRC-32 xor 0x5354554E); must be last.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        todo!("stun helper")
    }
    /// The finished message, or `None` if the buffer was too small.
    pub fn finish(self) -> Option<&'b [u8]> {
        todo!("stun helper")
    }
    /// Length written so far (None after overflow).
    pub fn len(&self) -> Option<usize> {
        todo!("stun helper")
    }
}
