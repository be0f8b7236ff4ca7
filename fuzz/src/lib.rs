//! What the fuzz targets share: a byte cursor that turns fuzzer input into choices, and the
//! protocol vocabulary of the structured targets (clients, peers, credentials, requests).
//!
//! The structured targets read their input as a stream of small choices through [`Input`]
//! rather than with `arbitrary`, so a seed can be written by hand or by `seeds` (see
//! `fuzz/README.md`): one byte picks an operation, the next bytes its arguments. When the input
//! runs out every read yields zero, and the targets stop at the next operation.

pub mod proto;
pub mod secrets;

/// Fuzzer bytes read as choices. Reads past the end yield zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// One of `n` choices (`n` > 0).
    pub fn pick(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    /// One of `items`.
    pub fn choose<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[self.pick(items.len())]
    }

    /// A length byte, then that many bytes (fewer if the input ends).
    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte());
        self.take(len)
    }

    /// A two-byte length (at most `max`), then that many bytes.
    pub fn long_bytes(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.u16()) % (max + 1);
        self.take(len)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }
}

/// Writes inputs that [`Input`] reads back as the same choices: how the seeds are made.
#[derive(Default)]
pub struct Script {
    pub bytes: Vec<u8>,
}

impl Script {
    pub fn byte(&mut self, b: u8) -> &mut Self {
        self.bytes.push(b);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// What [`Input::bytes`] reads.
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        assert!(data.len() <= 255);
        self.bytes.push(data.len() as u8);
        self.bytes.extend_from_slice(data);
        self
    }

    /// What [`Input::long_bytes`] reads.
    pub fn long_bytes(&mut self, data: &[u8]) -> &mut Self {
        self.u16(data.len() as u16);
        self.bytes.extend_from_slice(data);
        self
    }
}

/// Whether `TERN_FUZZ_TRACE` is set: the structured targets then print each step and output,
/// to read what a seed or a crash input does (`TERN_FUZZ_TRACE=1 cargo fuzz run T FILE`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TERN_FUZZ_TRACE").is_some())
}

/// Prints when [`tracing`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::tracing() {
            eprintln!($($arg)*);
        }
    };
}
