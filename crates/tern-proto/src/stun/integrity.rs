//! MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT computations (RFC 8489 §14.5–§14.7).
//!
//! All three cover the message up to the attribute, with the header length field rewritten to
//! end at that attribute. The header copy lives on the stack so nothing is allocated.

use super::HEADER_LEN;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// XOR constant of the FINGERPRINT value ("STUN").
pub(super) const FINGERPRINT_XOR: u32 = 0x5354_554E;

pub(super) type HmacSha1 = Hmac<Sha1>;
pub(super) type HmacSha256 = Hmac<Sha256>;

/// Feeds `msg[..attr_off]` to `update`, with the header length field replaced by `body_len`.
/// `false` if `attr_off` does not lie within `msg` after the header.
fn feed(msg: &[u8], attr_off: usize, body_len: u16, mut update: impl FnMut(&[u8])) -> bool {
    let (Some(header), Some(rest)) = (msg.get(..HEADER_LEN), msg.get(HEADER_LEN..attr_off)) else {
        return false;
    };
    let mut adjusted = [0u8; HEADER_LEN];
    adjusted.copy_from_slice(header);
    adjusted[2..4].copy_from_slice(&body_len.to_be_bytes());
    update(&adjusted);
    update(rest);
    true
}

/// HMAC (not yet finalized) over the message up to `attr_off`.
pub(super) fn hmac<M: Mac + hmac::digest::KeyInit>(
    key: &[u8],
    msg: &[u8],
    attr_off: usize,
    body_len: u16,
) -> Option<M> {
    // HMAC accepts keys of any length, so this never fails in practice.
    let mut mac = <M as Mac>::new_from_slice(key).ok()?;
    feed(msg, attr_off, body_len, |chunk| mac.update(chunk)).then_some(mac)
}

/// The FINGERPRINT value for an attribute at `attr_off`.
pub(super) fn fingerprint(msg: &[u8], attr_off: usize, body_len: u16) -> Option<u32> {
    let mut crc = crc32fast::Hasher::new();
    feed(msg, attr_off, body_len, |chunk| crc.update(chunk))
        .then(|| crc.finalize() ^ FINGERPRINT_XOR)
}
