//! ChannelData framing (RFC 8656 §12.4).

/// Size of the ChannelData header (channel number + length).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// Channel numbers a client may bind (RFC 8656 §12).
/// RFC 5766's range; RFC 8656 narrowed bindable numbers to 0x4000–0x4FFF, which the server
/// enforces at ChannelBind. Framing accepts the wider range so RFC 5766 clients work when allowed.
const CHANNEL_RANGE: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// A ChannelData message borrowing its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message at the start of `buf`. Channel must be 0x4000–0x7FFF; the
    /// length field must fit in `buf` (trailing padding bytes after it are allowed and ignored).
    pub fn parse(buf: &'a [u8]) -> Option<ChannelData<'a>> {
        let (channel, len, rest) = match buf {
            [c0, c1, l0, l1, rest @ ..] => (
                u16::from_be_bytes([*c0, *c1]),
                usize::from(u16::from_be_bytes([*l0, *l1])),
                rest,
            ),
            _ => return None,
        };
        if !CHANNEL_RANGE.contains(&channel) {
            return None;
        }
        Some(ChannelData {
            channel,
            data: rest.get(..len)?,
        })
    }

    /// Writes the 4-byte header in place in front of a payload: `buf[..4]` gets the header for a
    /// payload of `len` bytes that already stands at `buf[4..4 + len]`.
    pub fn write_header(buf: &mut [u8; CHANNEL_DATA_HEADER_LEN], channel: u16, len: u16) {
        buf[0..2].copy_from_slice(&channel.to_be_bytes());
        buf[2..4].copy_from_slice(&len.to_be_bytes());
    }
}
