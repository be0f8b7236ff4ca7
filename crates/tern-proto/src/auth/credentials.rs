//! Which long-term keys a username may authenticate with.
//!
//! Strings are used exactly as given: no SASLprep/OpaqueString normalisation is applied to
//! usernames, realms or passwords. Clients must send the same bytes that were configured (or, for
//! REST credentials, that the credential service minted), which is what coTURN does in practice.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// Slack on the `max-credential-ttl` ceiling for the minting backend's clock running ahead of
/// ours (and for our second-granular clock): a credential minted "now + ttl" elsewhere must pass.
pub const CLOCK_SKEW_GRACE: u64 = 300;

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

/// Most REST secrets used at once; more are ignored (a `KeySet` holds this many keys).
const MAX_SECRETS: usize = 8;

/// Up to 8 candidate keys for one username (one per REST secret, for rotation). No heap.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: [LongTermKey; MAX_SECRETS],
    len: usize,
}

// Long-term keys are password-equivalent, so Debug shows only how many there are.
impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
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
pub struct Authenticator {
    // Shared so that cloning per worker is a refcount bump, not a copy of the user table.
    inner: Arc<Inner>,
}

struct Inner {
    realm: String,
    /// REST secrets, at most `MAX_SECRETS`.
    secrets: Vec<String>,
    /// Static users: name → long-term key (passwords are hashed at construction).
    users: HashMap<String, LongTermKey>,
    /// 0 = no limit.
    max_credential_ttl: u64,
}

// Only non-secret shape information: never secrets, passwords, keys or user names.
impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.inner.realm)
            .field("secrets", &self.inner.secrets.len())
            .field("static_users", &self.inner.users.len())
            .field("max_credential_ttl", &self.inner.max_credential_ttl)
            .finish()
    }
}

impl Authenticator {
    /// `secrets`: REST secrets, any of which verifies (at most 8 are used). `users`: static users.
    /// `max_credential_ttl`: REST expiries further than this many seconds ahead are refused
    /// (0 = no limit).
    pub fn new(
        realm: &str,
        secrets: &[String],
        users: &[(String, StaticKey)],
        max_credential_ttl: u64,
    ) -> Self {
        let users = users
            .iter()
            .map(|(name, key)| {
                let key = match key {
                    StaticKey::Password(pw) => long_term_key(name, realm, pw),
                    // coTURN's `0x…` form is already MD5(name:realm:password).
                    StaticKey::Key(k) => *k,
                };
                (name.clone(), key)
            })
            .collect();
        Authenticator {
            inner: Arc::new(Inner {
                realm: realm.to_owned(),
                secrets: secrets.iter().take(MAX_SECRETS).cloned().collect(),
                users,
                max_credential_ttl,
            }),
        }
    }

    pub fn realm(&self) -> &str {
        &self.inner.realm
    }

    /// The keys `username` may use at `now_unix`. Static users are looked up first; otherwise, if
    /// secrets are configured, the username is parsed as REST (`<expiry>[:<user>]`, or
    /// `<user>:<expiry>` as coTURN also accepts) and one key per secret is returned.
    ///
    /// A REST credential is valid while `expiry >= now_unix` (it expires *after* its expiry
    /// second), and refused if `expiry > now_unix + max_credential_ttl + CLOCK_SKEW_GRACE` (unless the ttl is 0).
    pub fn keys(&self, username: &str, now_unix: u64) -> Result<KeySet, AuthError> {
        let inner = &*self.inner;
        let mut set = KeySet::default();
        if let Some(key) = inner.users.get(username) {
            set.push(*key);
            return Ok(set);
        }
        if inner.secrets.is_empty() {
            return Err(AuthError::UnknownUser);
        }
        let rest = parse_rest_username(username).ok_or(AuthError::UnknownUser)?;
        if rest.expiry < now_unix {
            return Err(AuthError::Expired);
        }
        // coTURN accepts any future expiry; we refuse far-future ones so a leaked credential
        // cannot live forever.
        if inner.max_credential_ttl != 0
            && rest.expiry
                > now_unix
                    .saturating_add(inner.max_credential_ttl)
                    .saturating_add(CLOCK_SKEW_GRACE)
        {
            return Err(AuthError::TtlTooLong);
        }
        for secret in &inner.secrets {
            let mut password = [0u8; REST_PASSWORD_LEN];
            let password = rest_password_into(secret, username, &mut password);
            set.push(long_term_key_bytes(username, &inner.realm, password));
        }
        Ok(set)
    }

    /// The id quotas count against: the REST user part (or the whole name if none), or the
    /// static user's name.
    pub fn quota_id<'a>(&self, username: &'a str) -> &'a str {
        if self.inner.users.contains_key(username) || self.inner.secrets.is_empty() {
            return username;
        }
        match parse_rest_username(username) {
            Some(RestUsername {
                user: Some(user), ..
            }) => user,
            _ => username,
        }
    }
}

/// A parsed TURN REST username.
#[derive(Debug, PartialEq, Eq)]
struct RestUsername<'a> {
    expiry: u64,
    /// The non-timestamp part; `None` if absent or empty.
    user: Option<&'a str>,
}

/// Parses `<expiry>`, `<expiry>:<user>` or `<user>:<expiry>`. The timestamp is the first
/// `:`-separated part if that is all digits, else the last part if that is all digits.
fn parse_rest_username(username: &str) -> Option<RestUsername<'_>> {
    let (expiry, user) = match username.split_once(':') {
        None => (username, None),
        Some((first, rest)) if is_all_digits(first) => (first, Some(rest)),
        Some(_) => {
            // There is at least one ':', so rsplit_once succeeds.
            let (user, last) = username.rsplit_once(':')?;
            (last, Some(user))
        }
    };
    if !is_all_digits(expiry) {
        return None;
    }
    // More digits than fit in a u64 is not a timestamp we can compare: treat as malformed.
    let expiry = expiry.parse::<u64>().ok()?;
    Some(RestUsername {
        expiry,
        user: user.filter(|u| !u.is_empty()),
    })
}

/// Non-empty and only ASCII digits (`u64::from_str` alone would also accept a leading `+`).
fn is_all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// MD5(username:realm:password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> LongTermKey {
    long_term_key_bytes(username, realm, password.as_bytes())
}

fn long_term_key_bytes(username: &str, realm: &str, password: &[u8]) -> LongTermKey {
    // Hash incrementally so the joined string is never allocated.
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password);
    md5.finalize().into()
}

/// Length of base64 (with padding) of a 20-byte SHA-1 HMAC.
const REST_PASSWORD_LEN: usize = 28;

/// The REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut buf = [0u8; REST_PASSWORD_LEN];
    let password = rest_password_into(secret, username, &mut buf);
    // Base64 output is ASCII.
    String::from_utf8_lossy(password).into_owned()
}

/// A minted TURN REST credential: the username/password pair and how long it lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minted {
    pub username: String,
    pub password: String,
    pub ttl: u64,
}

/// `username = "<now + ttl>[:<user>]"`, `password = base64(HMAC-SHA1(secret, username))`.
pub fn mint(secret: &str, user: Option<&str>, ttl: u64, now_unix: u64) -> Minted {
    let expiry = now_unix.saturating_add(ttl);
    let username = match user.filter(|u| !u.is_empty()) {
        Some(user) => format!("{expiry}:{user}"),
        None => expiry.to_string(),
    };
    let password = rest_password(secret, &username);
    Minted {
        username,
        password,
        ttl,
    }
}

/// `rest_password` without allocating: writes into `buf` and returns the written bytes.
fn rest_password_into<'b>(
    secret: &str,
    username: &str,
    buf: &'b mut [u8; REST_PASSWORD_LEN],
) -> &'b [u8] {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    let tag = mac.finalize().into_bytes();
    let written = STANDARD
        .encode_slice(tag, buf)
        .expect("28 bytes fit base64 of a 20-byte tag");
    &buf[..written]
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "example.org";
    const DAY: u64 = 86_400;
    const NOW: u64 = 1_700_000_000;

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn rest_auth(secret_list: &[&str], ttl: u64) -> Authenticator {
        Authenticator::new(REALM, &secrets(secret_list), &[], ttl)
    }

    /// The key a client holding `secret` would derive, computed without the server's fast path.
    fn client_key(secret: &str, username: &str) -> LongTermKey {
        let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(username.as_bytes());
        let password = STANDARD.encode(mac.finalize().into_bytes());
        let joined = format!("{username}:{REALM}:{password}");
        Md5::digest(joined.as_bytes()).into()
    }

    fn contains(set: &KeySet, key: &LongTermKey) -> bool {
        set.iter().any(|k| k == key)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn long_term_key_known_vector() {
        // python3: hashlib.md5(b'alice:example.org:pw').hexdigest()
        assert_eq!(
            hex(&long_term_key("alice", REALM, "pw")),
            "db25ea610c2a955b77b272273cbe886b"
        );
    }

    #[test]
    fn rest_password_known_vector() {
        // python3: base64.b64encode(hmac.new(b'north', b'1700000000:alice', hashlib.sha1).digest())
        assert_eq!(
            rest_password("north", "1700000000:alice"),
            "Cd/49soE35ICqcJF/bCTn8Z4OyE="
        );
    }

    #[test]
    fn rest_credential_known_vector_key() {
        // python3: hashlib.md5(b'1700000000:alice:example.org:Cd/49soE35ICqcJF/bCTn8Z4OyE=')
        let set = rest_auth(&["north"], 0)
            .keys("1700000000:alice", NOW)
            .unwrap();
        let keys: Vec<_> = set.iter().collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(hex(keys[0]), "d9a6a3d964467baeffd2fce41704a913");
    }

    #[test]
    fn valid_rest_credential_yields_client_key() {
        let username = format!("{}:alice", NOW + 3600);
        let set = rest_auth(&["s3cret"], DAY).keys(&username, NOW).unwrap();
        let expected = client_key("s3cret", &username);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![&expected]);
        assert_eq!(
            expected,
            long_term_key(&username, REALM, &rest_password("s3cret", &username))
        );
    }

    #[test]
    fn rotation_accepts_old_and_new_secret_only() {
        let auth = rest_auth(&["old", "new"], DAY);
        let username = format!("{}:bob", NOW + 60);
        let set = auth.keys(&username, NOW).unwrap();
        assert!(contains(&set, &client_key("old", &username)));
        assert!(contains(&set, &client_key("new", &username)));
        assert!(!contains(&set, &client_key("other", &username)));
    }

    #[test]
    fn at_most_eight_secrets_used() {
        let many: Vec<String> = (0..10).map(|i| format!("secret{i}")).collect();
        let auth = Authenticator::new(REALM, &many, &[], 0);
        let username = format!("{NOW}");
        let set = auth.keys(&username, NOW).unwrap();
        assert_eq!(set.iter().count(), 8);
        assert!(contains(&set, &client_key("secret7", &username)));
        assert!(!contains(&set, &client_key("secret8", &username)));
    }

    #[test]
    fn expired_credential() {
        let username = format!("{}:alice", NOW - 1);
        assert_eq!(
            rest_auth(&["s"], DAY).keys(&username, NOW).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn expiry_equal_to_now_is_valid() {
        let username = format!("{NOW}:alice");
        assert!(rest_auth(&["s"], DAY).keys(&username, NOW).is_ok());
    }

    #[test]
    fn ttl_limit() {
        let auth = rest_auth(&["s"], DAY);
        let at_limit = format!("{}:alice", NOW + DAY);
        assert!(auth.keys(&at_limit, NOW).is_ok());
        let backend_clock_ahead = format!("{}:alice", NOW + DAY + CLOCK_SKEW_GRACE);
        assert!(auth.keys(&backend_clock_ahead, NOW).is_ok());
        let beyond = format!("{}:alice", NOW + DAY + CLOCK_SKEW_GRACE + 1);
        assert_eq!(auth.keys(&beyond, NOW).unwrap_err(), AuthError::TtlTooLong);
    }

    #[test]
    fn ttl_zero_means_no_limit() {
        let auth = rest_auth(&["s"], 0);
        let far = format!("{}:alice", u64::MAX);
        assert!(auth.keys(&far, NOW).is_ok());
    }

    #[test]
    fn user_then_expiry_form() {
        let username = format!("alice:{}", NOW + 60);
        let set = rest_auth(&["s"], DAY).keys(&username, NOW).unwrap();
        assert!(contains(&set, &client_key("s", &username)));
        let expired = format!("alice:{}", NOW - 60);
        assert_eq!(
            rest_auth(&["s"], DAY).keys(&expired, NOW).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn expiry_only_form() {
        let username = format!("{}", NOW + 60);
        let set = rest_auth(&["s"], DAY).keys(&username, NOW).unwrap();
        assert!(contains(&set, &client_key("s", &username)));
    }

    #[test]
    fn non_numeric_is_unknown_user() {
        let auth = rest_auth(&["s"], DAY);
        for name in [
            "alice",
            "alice:bob",
            "",
            ":",
            "+1700000060:alice",
            "17000x0060:alice",
            "alice:1700000060x",
            "99999999999999999999999:alice", // does not fit u64
        ] {
            assert_eq!(
                auth.keys(name, NOW).unwrap_err(),
                AuthError::UnknownUser,
                "{name:?}"
            );
        }
    }

    #[test]
    fn no_secrets_and_no_static_user_is_unknown() {
        let auth = Authenticator::new(REALM, &[], &[], DAY);
        let username = format!("{}:alice", NOW + 60);
        assert_eq!(
            auth.keys(&username, NOW).unwrap_err(),
            AuthError::UnknownUser
        );
    }

    #[test]
    fn static_password_and_precomputed_key_agree() {
        let by_password = Authenticator::new(
            REALM,
            &[],
            &[("carol".into(), StaticKey::Password("pw".into()))],
            0,
        );
        let precomputed = long_term_key("carol", REALM, "pw");
        let by_key = Authenticator::new(
            REALM,
            &[],
            &[("carol".into(), StaticKey::Key(precomputed))],
            0,
        );
        let a = by_password.keys("carol", NOW).unwrap();
        let b = by_key.keys("carol", NOW).unwrap();
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![&precomputed]);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![&precomputed]);
        assert_eq!(
            by_password.keys("dave", NOW).unwrap_err(),
            AuthError::UnknownUser
        );
    }

    #[test]
    fn static_user_takes_precedence_over_rest() {
        // A static user whose name parses as an (expired) REST username.
        let name = format!("{}:alice", NOW - 60);
        let auth = Authenticator::new(
            REALM,
            &secrets(&["s"]),
            &[(name.clone(), StaticKey::Password("pw".into()))],
            DAY,
        );
        let set = auth.keys(&name, NOW).unwrap();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![&long_term_key(&name, REALM, "pw")]
        );
        assert_eq!(auth.quota_id(&name), name);
    }

    #[test]
    fn quota_ids() {
        let auth = Authenticator::new(
            REALM,
            &secrets(&["s"]),
            &[("carol".into(), StaticKey::Password("pw".into()))],
            DAY,
        );
        assert_eq!(auth.quota_id("carol"), "carol");
        assert_eq!(auth.quota_id("1700000060:alice"), "alice");
        assert_eq!(auth.quota_id("alice:1700000060"), "alice");
        assert_eq!(auth.quota_id("1700000060"), "1700000060");
        assert_eq!(auth.quota_id("1700000060:"), "1700000060:");
        // Everything after the leading timestamp is the user part, colons included.
        assert_eq!(auth.quota_id("1700000060:a:b"), "a:b");
        assert_eq!(auth.quota_id("nobody"), "nobody");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let auth = Authenticator::new(
            REALM,
            &secrets(&["topsecret-rest"]),
            &[("carol".into(), StaticKey::Password("topsecret-pw".into()))],
            DAY,
        );
        let shown = format!("{auth:?} {auth:#?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains(REALM));

        let key = StaticKey::Password("topsecret-pw".into());
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("topsecret"), "{shown}");

        // Derived keys are password-equivalent: neither KeySet nor StaticKey::Key shows them.
        let set = auth.keys("carol", NOW).unwrap();
        assert_eq!(format!("{set:?}"), "KeySet { len: 1, .. }");
        let lt = long_term_key("carol", REALM, "topsecret-pw");
        assert_eq!(format!("{:?}", StaticKey::Key(lt)), "StaticKey(<redacted>)");
    }

    #[test]
    fn error_messages_are_fixed_text() {
        assert_eq!(AuthError::UnknownUser.to_string(), "unknown user");
        assert_eq!(AuthError::Expired.to_string(), "credential expired");
    }

    #[test]
    fn keyset_caps_at_eight() {
        let mut set = KeySet::default();
        assert!(set.is_empty());
        for i in 0..10u8 {
            set.push([i; 16]);
        }
        assert_eq!(set.iter().count(), 8);
        assert_eq!(set.iter().last(), Some(&[7u8; 16]));
    }
}
