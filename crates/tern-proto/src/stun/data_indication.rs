//! The Data indication prefix a relay writes in front of a peer's datagram (RFC 8656 §11.6).

use super::address;
use super::attr;
use super::header::{message_type, padded, write_header};
use super::{Class, Method, TransactionId, HEADER_LEN};
use std::net::SocketAddr;

/// Header + XOR-PEER-ADDRESS + DATA attribute header.
pub(super) fn prefix_len(peer: &SocketAddr) -> usize {
    HEADER_LEN + 4 + address::value_len(peer) + 4
}

/// See [`super::write_data_indication_prefix`]; returns 0 when `buf` is shorter than the prefix
/// or the payload does not fit a STUN message.
pub(super) fn write_prefix(
    buf: &mut [u8],
    tid: &TransactionId,
    peer: SocketAddr,
    data_len: usize,
) -> usize {
    let prefix = prefix_len(&peer);
    let total = padded(data_len).and_then(|p| p.checked_add(prefix));
    let lengths = total.and_then(|total| {
        let body_len = u16::try_from(total - HEADER_LEN).ok()?;
        let data_len = u16::try_from(data_len).ok()?;
        Some((total, body_len, data_len))
    });
    let (Some((total, body_len, data_len)), Some(out)) = (lengths, buf.get_mut(..prefix)) else {
        return 0;
    };
    let (header, rest) = out.split_at_mut(HEADER_LEN);
    let Ok(header) = <&mut [u8; HEADER_LEN]>::try_from(header) else {
        return 0;
    };
    write_header(
        header,
        message_type(Method::DATA, Class::Indication),
        body_len,
        tid,
    );
    let (value, value_len) = address::encode(peer, Some(tid));
    let (peer_attr, data_header) = rest.split_at_mut(4 + value_len);
    peer_attr[0..2].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    peer_attr[2..4].copy_from_slice(&(value_len as u16).to_be_bytes());
    peer_attr[4..].copy_from_slice(&value[..value_len]);
    data_header[0..2].copy_from_slice(&attr::DATA.to_be_bytes());
    data_header[2..4].copy_from_slice(&data_len.to_be_bytes());
    total
}
