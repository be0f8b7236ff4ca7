//! Stateless nonces: nothing is stored for a request that has not authenticated.

use std::net::SocketAddr;

/// A nonce as sent on the wire (ASCII, fixed size, no heap).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    bytes: [u8; 32],
}

impl Nonce {
    pub fn as_str(&self) -> &str {
        let _ = self.bytes;
        todo!("auth helper")
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Well-formed and ours, but older than the stale limit: answer 438 with a fresh nonce.
    Stale,
    /// Not a nonce we issued to this client.
    Invalid,
}

/// Issues and checks nonces: HMAC-SHA256 over the client address and issue time, keyed by a
/// per-process random key. Shared by all workers (clone it).
#[derive(Clone)]
pub struct NonceMint {
    key: [u8; 32],
}

impl NonceMint {
    /// A mint with a fresh random key.
    pub fn new() -> Self {
        todo!("auth helper")
    }
    pub fn with_key(key: [u8; 32]) -> Self {
        NonceMint { key }
    }
    pub fn issue(&self, client: SocketAddr, now_unix: u64) -> Nonce {
        let _ = (client, now_unix, self.key);
        todo!("auth helper")
    }
    /// `stale_after`: seconds a nonce stays valid.
    pub fn check(&self, nonce: &str, client: SocketAddr, now_unix: u64, stale_after: u64) -> NonceCheck {
        let _ = (nonce, client, now_unix, stale_after);
        todo!("auth helper")
    }
}

impl Default for NonceMint {
    fn default() -> Self {
        Self::new()
    }
}
