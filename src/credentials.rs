//! The browser's view of a minted credential (for `tern credentials` and the HTTP endpoint).

pub use tern_proto::auth::{mint, Minted};

/// The browser's `RTCIceServer` shape for a minted credential.
pub fn ice_server_json(minted: &Minted, uris: &[String]) -> serde_json::Value {
    serde_json::json!({
        "urls": uris,
        "username": minted.username,
        "credential": minted.password,
    })
}
