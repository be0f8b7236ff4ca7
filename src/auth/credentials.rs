//! Which long-term keys a username may authenticate with.

use std::fmt;

/// The 16-byte long-term key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
pub type LongTermKey = [u8; 16];

/// A static user's secret as configured: a password, or coTURN's precomputed `0x…` key.
#[derive(Clone, PartialEq, Eq)]
pub enum StaticKey {
    Password(String),
    Key(LongTermKey),
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticKey(<redacted>)")
    }
}

/// Why a username cannot authenticate. Messages never include secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown user")]
    UnknownUser,
    #[error("credential expired")]
    Expired,
    #[error("credential expiry beyond max-credential-ttl")]
    TtlTooLong,
}

/// Up to 8 candidate keys for one username (one per REST secret, for rotation). No heap.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: [LongTermKey; 8],
    len: usize,
}

impl KeySet {
    pub fn push(&mut self, key: LongTermKey) {
        if self.len < self.keys.len() {
            self.keys[self.len] = key;
            self.len += 1;
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = &LongTermKey> {
        self.keys[..self.len].iter()
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Looks up keys for usernames. Cheap to clone; built from config at start and on reload.
#[derive(Clone)]
pub struct Authenticator {}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authenticator(<redacted>)")
    }
}

impl Authenticator {
    /// `secrets`: REST secrets, any of which verifies (at most 8 are used). `users`: static users.
    /// `max_credential_ttl`: REST expiries further than this many seconds ahead are refused.
    pub fn new(realm: &str, secrets: &[String], users: &[(String, StaticKey)], max_credential_ttl: u64) -> Self {
        let _ = (realm, secrets, users, max_credential_ttl);
        todo!("auth helper")
    }
    pub fn realm(&self) -> &str {
        todo!("auth helper")
    }
    /// The keys `username` may use at `now_unix`. Static users are looked up first; otherwise, if
    /// secrets are configured, the username is parsed as REST (`<expiry>[:<user>]`, or
    /// `<user>:<expiry>` as coTURN also accepts) and one key per secret is returned.
    pub fn keys(&self, username: &str, now_unix: u64) -> Result<KeySet, AuthError> {
        let _ = (username, now_unix);
        todo!("auth helper")
    }
    /// The id quotas count against: the REST user part (or the whole name if none), or the
    /// static user's name.
    pub fn quota_id<'a>(&self, username: &'a str) -> &'a str {
        let _ = username;
        todo!("auth helper")
    }
}

/// MD5(username:realm:password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> LongTermKey {
    let _ = (username, realm, password);
    todo!("auth helper")
}

/// The REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let _ = (secret, username);
    todo!("auth helper")
}
