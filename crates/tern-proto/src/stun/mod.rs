//! STUN codec (RFC 8489) and TURN ChannelData framing.
//!
//! Reading is zero-copy over a `&[u8]`: it never allocates and never panics, whatever the input.
//! Writing goes into a caller's buffer; a buffer that is too small makes `finish` fail rather
//! than panic.

mod address;
pub mod attr;
mod channel_data;
mod data_indication;
mod header;
mod integrity;
mod message;
mod writer;

#[cfg(test)]
mod tests;

pub use channel_data::{ChannelData, CHANNEL_DATA_HEADER_LEN};
pub use message::{AttrIter, IntegrityCheck, IntegrityKind, Message, ParseError, RawAttr};
pub use writer::MessageWriter;

use std::net::SocketAddr;

/// The fixed value in every RFC 5389/8489 header.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;

/// A STUN method (12 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    pub const CONNECT: Method = Method(0x00A);
    pub const CONNECTION_BIND: Method = Method(0x00B);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);
}

/// The two class bits of the message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// The 96-bit transaction id.
pub type TransactionId = [u8; 12];

/// What the first bytes of a datagram or stream frame are, by their top two bits (RFC 7983 style).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Stun,
    ChannelData,
    Other,
}

/// Classifies a frame by its first byte: 0x00–0x03 STUN, 0x40–0x7F ChannelData (RFC 5766's
/// channel range; which numbers may be bound is the server's decision).
pub fn frame_kind(buf: &[u8]) -> FrameKind {
    match buf.first() {
        Some(0x00..=0x03) => FrameKind::Stun,
        Some(0x40..=0x7F) => FrameKind::ChannelData,
        _ => FrameKind::Other,
    }
}

/// Decodes an XOR-MAPPED/XOR-PEER/XOR-RELAYED-ADDRESS attribute value (IPv4 or IPv6).
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, ParseError> {
    address::decode(value, Some(tid))
}

/// Decodes a plain address attribute value: MAPPED-ADDRESS, ALTERNATE-SERVER, OTHER-ADDRESS,
/// RESPONSE-ORIGIN (IPv4 or IPv6).
pub fn decode_address(value: &[u8]) -> Result<SocketAddr, ParseError> {
    address::decode(value, None)
}

/// Total length in bytes of the complete frame (STUN message or ChannelData) at the start of a
/// stream buffer, once at least 4 bytes are there; `None` if fewer than 4 bytes or not a frame.
/// ChannelData over streams is padded to a multiple of 4 (RFC 8656 §12.5); `padded` says whether to
/// count that padding.
pub fn frame_len(buf: &[u8], padded: bool) -> Option<usize> {
    let len = match buf {
        [_, _, l0, l1, ..] => usize::from(u16::from_be_bytes([*l0, *l1])),
        _ => return None,
    };
    match frame_kind(buf) {
        FrameKind::Stun => Some(HEADER_LEN + len),
        FrameKind::ChannelData if padded => {
            header::padded(len).map(|p| CHANNEL_DATA_HEADER_LEN + p)
        }
        FrameKind::ChannelData => Some(CHANNEL_DATA_HEADER_LEN + len),
        FrameKind::Other => None,
    }
}

/// Largest Data indication prefix: header (20) + XOR-PEER-ADDRESS for IPv6 (4 + 20) + DATA
/// header (4). A relay receives peer datagrams at this offset so the prefix can be written in place.
pub const DATA_INDICATION_MAX_PREFIX: usize = 48;

/// Length of the Data indication prefix for a peer of this family (36 for IPv4, 48 for IPv6).
pub fn data_indication_prefix_len(peer: &SocketAddr) -> usize {
    data_indication::prefix_len(peer)
}

/// Writes a Data indication's prefix (STUN header, XOR-PEER-ADDRESS, DATA attribute header) into
/// `buf`, whose length must be `data_indication_prefix_len(&peer)`; the caller places `data_len`
/// payload bytes right after it followed by zero padding to a multiple of 4. The header length
/// field counts that padding. Returns the total message length (prefix + padded payload), or 0
/// (writing nothing) if `buf` is shorter than the prefix or `data_len` cannot fit a STUN message.
pub fn write_data_indication_prefix(
    buf: &mut [u8],
    tid: &TransactionId,
    peer: SocketAddr,
    data_len: usize,
) -> usize {
    data_indication::write_prefix(buf, tid, peer, data_len)
}
