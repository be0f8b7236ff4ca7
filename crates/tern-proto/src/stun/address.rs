//! Address attribute values (RFC 8489 §14.1, §14.2): plain and XOR-obfuscated.

use super::{ParseError, TransactionId, MAGIC_COOKIE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;
/// Longest encoded address value (IPv6).
pub(super) const MAX_ADDRESS_VALUE_LEN: usize = 20;

/// Value length for this address family (8 for IPv4, 20 for IPv6).
pub(super) fn value_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// The 16 bytes an IPv6 address is XORed with: cookie || transaction id.
fn xor_pad(tid: &TransactionId) -> [u8; 16] {
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    pad[4..].copy_from_slice(tid);
    pad
}

/// Encodes an address value; XORed with cookie/tid when `xor_tid` is given. Returns the buffer
/// and how many of its bytes are used.
pub(super) fn encode(
    addr: SocketAddr,
    xor_tid: Option<&TransactionId>,
) -> ([u8; MAX_ADDRESS_VALUE_LEN], usize) {
    let mut out = [0u8; MAX_ADDRESS_VALUE_LEN];
    let pad = xor_tid.map(xor_pad).unwrap_or([0u8; 16]);
    let port = addr.port() ^ u16::from_be_bytes([pad[0], pad[1]]);
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = FAMILY_IPV4;
            for (o, (b, p)) in out[4..8].iter_mut().zip(ip.octets().iter().zip(pad)) {
                *o = b ^ p;
            }
            (out, 8)
        }
        IpAddr::V6(ip) => {
            out[1] = FAMILY_IPV6;
            for (o, (b, p)) in out[4..20].iter_mut().zip(ip.octets().iter().zip(pad)) {
                *o = b ^ p;
            }
            (out, 20)
        }
    }
}

/// Decodes an address value, undoing the XOR when `xor_tid` is given.
pub(super) fn decode(
    value: &[u8],
    xor_tid: Option<&TransactionId>,
) -> Result<SocketAddr, ParseError> {
    let pad = xor_tid.map(xor_pad).unwrap_or([0u8; 16]);
    match value {
        [_, FAMILY_IPV4, p0, p1, rest @ ..] if rest.len() == 4 => {
            let port = u16::from_be_bytes([p0 ^ pad[0], p1 ^ pad[1]]);
            let mut ip = [0u8; 4];
            for (o, (b, p)) in ip.iter_mut().zip(rest.iter().zip(pad)) {
                *o = b ^ p;
            }
            Ok(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        [_, FAMILY_IPV6, p0, p1, rest @ ..] if rest.len() == 16 => {
            let port = u16::from_be_bytes([p0 ^ pad[0], p1 ^ pad[1]]);
            let mut ip = [0u8; 16];
            for (o, (b, p)) in ip.iter_mut().zip(rest.iter().zip(pad)) {
                *o = b ^ p;
            }
            Ok(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        _ => Err(ParseError::BadAttribute),
    }
}
