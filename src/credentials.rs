//! Minting TURN REST credentials (for `tern credentials` and the HTTP endpoint).

use crate::auth::rest_password;
use serde::Serialize;

/// A minted credential: the REST username/password pair and how long it lasts.
#[derive(Clone, Debug, Serialize)]
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

/// The browser's `RTCIceServer` shape for a minted credential.
pub fn ice_server_json(minted: &Minted, uris: &[String]) -> serde_json::Value {
    serde_json::json!({
        "urls": uris,
        "username": minted.username,
        "credential": minted.password,
    })
}
