//! A connection's two buffers: the frames read from the client and not yet handled, and the
//! bytes for the client that its socket has not taken yet. Both are bounded; neither grows per
//! packet once warm.

use crate::stun;

/// The largest frame on a stream: a STUN message of maximal length. (ChannelData with its
/// padding is at most 4 + 65536.) No connection buffers more than this of input.
pub const MAX_FRAME: usize = stun::HEADER_LEN + 65535;
/// A connection's read buffer starts at this size, and returns to it after a larger frame.
pub(super) const INITIAL_BUFFER: usize = 4096;

/// Bytes read from the client and not yet handled: `buf[start..end]`. Grows only while one frame
/// needs more room, never past [`MAX_FRAME`] (a larger frame cannot exist: lengths are 16 bits),
/// and shrinks back to [`INITIAL_BUFFER`] once what is left fits in it.
pub(super) struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuffer {
    pub fn new() -> Self {
        FrameBuffer {
            buf: vec![0u8; INITIAL_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// Bytes not handled yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The length of the frame at the front, if it has arrived whole.
    pub fn complete_frame(&self) -> Option<usize> {
        let pending = self.pending();
        stun::frame_len(pending, true).filter(|&len| len <= pending.len())
    }

    /// Drops the first `len` pending bytes (a handled frame or header).
    pub fn consume(&mut self, len: usize) {
        self.start = (self.start + len).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() > INITIAL_BUFFER && self.end - self.start <= INITIAL_BUFFER {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.truncate(INITIAL_BUFFER);
            self.buf.shrink_to_fit();
        }
    }

    /// Every pending byte, taken out (what followed a ConnectionBind, or a TLS ClientHello).
    pub fn take_pending(&mut self) -> Vec<u8> {
        let pending = self.pending().to_vec();
        self.consume(pending.len());
        pending
    }

    /// Room to read into: moves a partial frame to the front when the end is reached, and grows
    /// (to the frame's length, or double) only when a frame fills it all. Empty only when a whole
    /// maximal frame is pending: handle frames before reading more.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                let frame = stun::frame_len(self.pending(), true).unwrap_or(0);
                let grown = frame.max(len * 2).min(MAX_FRAME).max(len);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`FrameBuffer::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes held, used or not.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

/// Bytes for the client that its socket has not taken yet: `buf[head..]`. What may be added is
/// bounded by the caller's limit; the memory goes back once a burst has drained.
pub(super) struct ClientQueue {
    buf: Vec<u8>,
    head: usize,
}

/// An emptied queue keeps at most this much memory.
const QUEUE_KEEP: usize = 16 * 1024;

impl ClientQueue {
    pub fn new() -> Self {
        ClientQueue {
            buf: Vec::new(),
            head: 0,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.head..]
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data` if the queue stays within `limit` bytes; false (and nothing added) if not.
    pub fn push(&mut self, data: &[u8], limit: usize) -> bool {
        if self.len() + data.len() > limit {
            return false;
        }
        if self.head > 0 && self.head >= self.buf.len() / 2 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(data);
        true
    }

    /// The socket took `n` bytes.
    pub fn advance(&mut self, n: usize) {
        self.head = (self.head + n).min(self.buf.len());
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
            if self.buf.capacity() > QUEUE_KEEP {
                self.buf = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ChannelData frame of `payload` bytes (padded to 4).
    fn channel_data(payload: usize) -> Vec<u8> {
        let mut frame = vec![0x40, 0x00];
        frame.extend_from_slice(&(payload as u16).to_be_bytes());
        frame.resize(4 + payload.div_ceil(4) * 4, 7);
        frame
    }

    fn read(buffer: &mut FrameBuffer, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let spare = buffer.spare();
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            buffer.filled(n);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn frame_buffer_compacts_a_partial_frame_instead_of_growing() {
        let mut input = FrameBuffer::new();
        read(&mut input, &[1, 2, 3]);
        assert_eq!(input.pending(), &[1, 2, 3]);
        input.consume(2);
        assert_eq!(input.pending(), &[3]);
        // Fill to the end: the partial byte moves to the front, and the buffer stays small.
        let room = input.spare().len();
        input.filled(room);
        assert_eq!(input.spare().len(), 2);
        assert_eq!(input.capacity(), INITIAL_BUFFER);
        input.consume(INITIAL_BUFFER);
        assert!(input.is_empty());
    }

    #[test]
    fn frame_buffer_grows_to_one_maximal_frame_and_shrinks_back_after_it() {
        let mut input = FrameBuffer::new();
        let large = channel_data(65535);
        let small = channel_data(10);
        let mut bytes = large.clone();
        bytes.extend_from_slice(&small[..8]);
        // The large frame and part of the next arrive; only one frame is ever buffered.
        read(&mut input, &bytes[..large.len()]);
        assert_eq!(input.complete_frame(), Some(large.len()));
        assert!(input.capacity() <= MAX_FRAME, "{}", input.capacity());
        read(&mut input, &bytes[large.len()..]);
        assert!(input.capacity() <= MAX_FRAME);
        input.consume(large.len());
        assert_eq!(input.capacity(), INITIAL_BUFFER, "back to its small size");
        assert_eq!(input.pending(), &small[..8]);
        read(&mut input, &small[8..]);
        assert_eq!(input.complete_frame(), Some(small.len()));
        input.consume(small.len());
        assert!(input.is_empty());
        assert_eq!(input.capacity(), INITIAL_BUFFER);
    }

    #[test]
    fn frame_buffer_shrinks_after_every_large_frame() {
        let mut input = FrameBuffer::new();
        let large = channel_data(65535);
        for _ in 0..3 {
            read(&mut input, &large);
            assert_eq!(input.complete_frame(), Some(large.len()));
            assert!(input.capacity() <= MAX_FRAME);
            input.consume(large.len());
            assert_eq!(input.capacity(), INITIAL_BUFFER);
        }
    }

    #[test]
    fn client_queue_bounds_what_it_takes_and_gives_memory_back() {
        let mut queue = ClientQueue::new();
        assert!(queue.push(&[1; 100], 150));
        assert!(!queue.push(&[2; 60], 150), "over the limit: refused whole");
        assert!(queue.push(&[3; 50], 150));
        assert_eq!(queue.len(), 150);
        queue.advance(120);
        assert_eq!(queue.bytes(), &[3; 30]);
        assert!(queue.push(&[4; 100], 150));
        assert_eq!(queue.len(), 130);
        assert_eq!(&queue.bytes()[..30], &[3; 30]);
        let big = vec![5u8; 100_000];
        assert!(queue.push(&big, 200_000));
        queue.advance(queue.len());
        assert!(queue.is_empty());
        assert!(queue.buf.capacity() <= QUEUE_KEEP);
    }
}
