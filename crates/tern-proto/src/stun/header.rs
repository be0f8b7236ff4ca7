//! The 20-byte STUN header: message type bit layout (RFC 8489 §5) and header writing.

use super::{Class, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Class bits C1 (0x0100) and C0 (0x0010) of the message type.
const C1: u16 = 0x0100;
const C0: u16 = 0x0010;

/// Interleaves method and class: M11..M7 | C1 | M6..M4 | C0 | M3..M0.
pub(super) fn message_type(method: Method, class: Class) -> u16 {
    let m = method.0 & 0x0FFF;
    let class_bits = match class {
        Class::Request => 0,
        Class::Indication => C0,
        Class::Success => C1,
        Class::Error => C1 | C0,
    };
    ((m & 0x0F80) << 2) | ((m & 0x0070) << 1) | (m & 0x000F) | class_bits
}

pub(super) fn method_of(typ: u16) -> Method {
    Method(((typ & 0x3E00) >> 2) | ((typ & 0x00E0) >> 1) | (typ & 0x000F))
}

pub(super) fn class_of(typ: u16) -> Class {
    match (typ & C1 != 0, typ & C0 != 0) {
        (false, false) => Class::Request,
        (false, true) => Class::Indication,
        (true, false) => Class::Success,
        (true, true) => Class::Error,
    }
}

/// Writes a complete header with the given body length.
pub(super) fn write_header(
    out: &mut [u8; HEADER_LEN],
    typ: u16,
    body_len: u16,
    tid: &TransactionId,
) {
    out[0..2].copy_from_slice(&typ.to_be_bytes());
    out[2..4].copy_from_slice(&body_len.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(tid);
}

/// Rounds an attribute value length up to the 4-byte boundary; `None` on overflow.
pub(super) fn padded(len: usize) -> Option<usize> {
    len.checked_add(3).map(|n| n & !3)
}
