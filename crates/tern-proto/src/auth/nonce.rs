//! Stateless nonces: nothing is stored for a request that has not authenticated.
//!
//! Layout: base64url (no padding) of `issue_time (u32 BE, 4 bytes) || MAC (8 bytes)`, where MAC is
//! HMAC-SHA256(key, tag || client IP || client port BE || issue_time BE) truncated to 8 bytes and
//! `tag` is 4 or 6 for the address family. 12 bytes encode to exactly 16 ASCII characters, all of
//! which (`A-Z a-z 0-9 - _`) are legal in a STUN NONCE (qdtext).
//!
//! The nonce is short because every 401 carries it to a source that has proved nothing (see the
//! amplification note in `turn::reply`). 64 bits of MAC are plenty: a forged nonce would only
//! spare its forger one round trip (it authenticates nothing), and each guess costs a request.
//! Unix seconds fit 32 bits until 2106.
//!
//! The RFC 8489 §9.2 "nonce cookie" (a `obMatJos2` prefix advertising security features) is not
//! used: we support neither PASSWORD-ALGORITHMS nor USERHASH yet, so there is nothing to
//! advertise, and without the prefix RFC 8489 clients fall back to RFC 5389 behaviour.

use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Encoded nonce length in characters.
const NONCE_LEN: usize = 16;
/// Bytes of the issue time.
const TIME_LEN: usize = 4;
/// Bytes of the truncated MAC.
const MAC_LEN: usize = 8;
/// Raw (pre-base64) length.
const RAW_LEN: usize = TIME_LEN + MAC_LEN;
/// How far in the future an issue time may be before the nonce is refused. Only our own process
/// issues nonces (the key is per process), so this only absorbs small wall-clock steps backwards.
const MAX_FUTURE_SKEW_SECS: u64 = 5;

// 12 raw bytes are exactly 16 base64 characters, with no padding or partial final group.
const _: () = assert!(RAW_LEN % 3 == 0 && RAW_LEN / 3 * 4 == NONCE_LEN);

/// A nonce as sent on the wire (ASCII, fixed size, no heap).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    bytes: [u8; NONCE_LEN],
}

impl Nonce {
    pub fn as_str(&self) -> &str {
        // Always ASCII by construction (base64url output); the fallback is unreachable.
        std::str::from_utf8(&self.bytes).unwrap_or("")
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

impl std::fmt::Debug for NonceMint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceMint(<redacted>)")
    }
}

impl NonceMint {
    /// A mint with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        NonceMint { key }
    }
    pub fn with_key(key: [u8; 32]) -> Self {
        NonceMint { key }
    }
    pub fn issue(&self, client: SocketAddr, now_unix: u64) -> Nonce {
        let issued = now_unix as u32;
        let mut raw = [0u8; RAW_LEN];
        raw[..TIME_LEN].copy_from_slice(&issued.to_be_bytes());
        raw[TIME_LEN..].copy_from_slice(&self.mac(client, issued));
        let mut bytes = [0u8; NONCE_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut bytes)
            .expect("12 bytes encode to exactly 16 characters");
        debug_assert_eq!(written, NONCE_LEN);
        Nonce { bytes }
    }
    /// `stale_after`: seconds a nonce stays valid.
    pub fn check(
        &self,
        nonce: &str,
        client: SocketAddr,
        now_unix: u64,
        stale_after: u64,
    ) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return NonceCheck::Invalid,
        }
        let mut time = [0u8; TIME_LEN];
        time.copy_from_slice(&raw[..TIME_LEN]);
        let issued = u32::from_be_bytes(time);
        // Constant time so the MAC cannot be guessed byte by byte from response timing.
        let expected = self.mac(client, issued);
        if !bool::from(expected.ct_eq(&raw[TIME_LEN..])) {
            return NonceCheck::Invalid;
        }
        let issued = u64::from(issued);
        if issued > now_unix.saturating_add(MAX_FUTURE_SKEW_SECS) {
            return NonceCheck::Invalid;
        }
        if now_unix.saturating_sub(issued) > stale_after {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    fn mac(&self, client: SocketAddr, issued: u32) -> [u8; MAC_LEN] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        // The family tag keeps IPv4 and IPv6 inputs apart explicitly (their lengths differ too).
        match client.ip() {
            IpAddr::V4(ip) => {
                mac.update(&[4]);
                mac.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                mac.update(&[6]);
                mac.update(&ip.octets());
            }
        }
        mac.update(&client.port().to_be_bytes());
        mac.update(&issued.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

impl Default for NonceMint {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const STALE: u64 = 600;

    fn client() -> SocketAddr {
        "192.0.2.10:40000".parse().unwrap()
    }

    fn mint() -> NonceMint {
        NonceMint::with_key([7; 32])
    }

    #[test]
    fn round_trip_is_valid() {
        let m = mint();
        let n = m.issue(client(), NOW);
        assert_eq!(n.as_str().len(), 16);
        assert_eq!(m.check(n.as_str(), client(), NOW, STALE), NonceCheck::Valid);
        assert_eq!(format!("{n:?}"), n.as_str());
    }

    #[test]
    fn round_trip_ipv6() {
        let m = mint();
        let c: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let n = m.issue(c, NOW);
        assert_eq!(m.check(n.as_str(), c, NOW, STALE), NonceCheck::Valid);
        let other: SocketAddr = "[2001:db8::2]:3478".parse().unwrap();
        assert_eq!(m.check(n.as_str(), other, NOW, STALE), NonceCheck::Invalid);
    }

    #[test]
    fn random_mints_differ() {
        let (a, b) = (NonceMint::new(), NonceMint::default());
        let n = a.issue(client(), NOW);
        assert_eq!(a.check(n.as_str(), client(), NOW, STALE), NonceCheck::Valid);
        assert_eq!(
            b.check(n.as_str(), client(), NOW, STALE),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn other_port_or_ip_is_invalid() {
        let m = mint();
        let n = m.issue(client(), NOW);
        let other_port: SocketAddr = "192.0.2.10:40001".parse().unwrap();
        let other_ip: SocketAddr = "192.0.2.11:40000".parse().unwrap();
        let mapped_v6: SocketAddr = "[::ffff:192.0.2.10]:40000".parse().unwrap();
        for c in [other_port, other_ip, mapped_v6] {
            assert_eq!(
                m.check(n.as_str(), c, NOW, STALE),
                NonceCheck::Invalid,
                "{c}"
            );
        }
    }

    #[test]
    fn tampered_character_is_invalid() {
        let m = mint();
        let n = m.issue(client(), NOW);
        for i in 0..NONCE_LEN {
            let mut s = n.as_str().as_bytes().to_vec();
            s[i] = if s[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(s).unwrap();
            assert_eq!(
                m.check(&s, client(), NOW, STALE),
                NonceCheck::Invalid,
                "pos {i}"
            );
        }
        // Characters outside base64url.
        let mut s = n.as_str().to_owned();
        s.replace_range(0..1, "+");
        assert_eq!(m.check(&s, client(), NOW, STALE), NonceCheck::Invalid);
        let mut s = n.as_str().to_owned();
        s.replace_range(15..16, "=");
        assert_eq!(m.check(&s, client(), NOW, STALE), NonceCheck::Invalid);
    }

    #[test]
    fn wrong_length_is_invalid() {
        let m = mint();
        let n = m.issue(client(), NOW);
        let s = n.as_str();
        assert_eq!(m.check(&s[..15], client(), NOW, STALE), NonceCheck::Invalid);
        assert_eq!(
            m.check(&format!("{s}A"), client(), NOW, STALE),
            NonceCheck::Invalid
        );
        assert_eq!(m.check("", client(), NOW, STALE), NonceCheck::Invalid);
        // 16 bytes but not ASCII.
        let non_ascii = format!("é{}", &s[2..]);
        assert_eq!(non_ascii.len(), 16);
        assert_eq!(
            m.check(&non_ascii, client(), NOW, STALE),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn other_mint_is_invalid() {
        let n = NonceMint::with_key([8; 32]).issue(client(), NOW);
        assert_eq!(
            mint().check(n.as_str(), client(), NOW, STALE),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn staleness_boundary() {
        let m = mint();
        let n = m.issue(client(), NOW);
        assert_eq!(
            m.check(n.as_str(), client(), NOW + STALE, STALE),
            NonceCheck::Valid
        );
        assert_eq!(
            m.check(n.as_str(), client(), NOW + STALE + 1, STALE),
            NonceCheck::Stale
        );
    }

    #[test]
    fn future_issue_time_is_invalid() {
        let m = mint();
        let n = m.issue(client(), NOW + 60);
        assert_eq!(
            m.check(n.as_str(), client(), NOW, STALE),
            NonceCheck::Invalid
        );
        // A small backwards clock step is tolerated.
        let n = m.issue(client(), NOW + MAX_FUTURE_SKEW_SECS);
        assert_eq!(m.check(n.as_str(), client(), NOW, STALE), NonceCheck::Valid);
    }

    #[test]
    fn characters_are_legal_qdtext() {
        let m = NonceMint::new();
        for i in 0..200u16 {
            let c = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1000 + i));
            let n = m.issue(c, NOW + u64::from(i) * 977);
            assert_eq!(n.as_str().len(), 16);
            assert!(
                n.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{n:?}"
            );
            assert!(!n.as_str().contains(['"', '\\']));
        }
    }

    #[test]
    fn debug_hides_key() {
        let shown = format!("{:?}", NonceMint::with_key([0xab; 32]));
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
            "{shown}"
        );
        assert_eq!(shown, "NonceMint(<redacted>)");
    }
}
