//! ChannelData framing (RFC 8656 §12.4).

/// Size of the ChannelData header (channel number + length).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A ChannelData message borrowing its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message at the start of `buf`. Channel must be 0x4000–0x4FFF; the
    /// length field must fit in `buf` (trailing padding bytes after it are allowed and ignored).
    pub fn parse(buf: &'a [u8]) -> Option<ChannelData<'a>> {
        let _ = buf;
        todo!("stun helper")
    }

    /// Writes the 4-byte header in place in front of a payload: `buf[..4]` gets the header for a
    /// payload of `len` bytes that already stands at `buf[4..4 + len]`.
    pub fn write_header(buf: &mut [u8; CHANNEL_DATA_HEADER_LEN], channel: u16, len: u16) {
        let _ = (buf, channel, len);
        todo!("stun helper")
    }
}
