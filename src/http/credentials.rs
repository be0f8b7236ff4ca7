//! The credential endpoint for app backends: TURN REST credentials (draft-uberti-behave-turn-rest)
//! in both the draft's shape and the browser's `RTCIceServer` shape.
//!
//! - `POST /api/v1/credentials`, `Authorization: Bearer <api-key>`, optional JSON body
//!   `{"user": "alice", "ttl": 3600}`.
//! - `GET /api/v1/credentials?service=turn&username=alice&key=<api-key>`, as the draft has it.
//!
//! Both answer `{"username", "password", "ttl", "uris", "iceServers": [{"urls", "username",
//! "credential"}]}`. The first `static-auth-secret` signs; all listed secrets verify.

use super::{bearer, json_error, key_matches, no_store, unix_now, HttpState};
use crate::config::Config;
use crate::credentials::{ice_server_json, mint};
use crate::net::expand_listening_ips;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// TTL when the request names none (the draft recommends a day), before the cap.
const DEFAULT_TTL: u64 = 86400;
/// Longest `user` accepted (USERNAME must stay under 513 bytes with the expiry in front).
const MAX_USER_CHARS: usize = 256;

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new().route(
        "/api/v1/credentials",
        get(get_credentials).post(post_credentials),
    )
}

/// What a request asks for, once checked.
#[derive(Debug, Default, PartialEq)]
struct Request {
    user: Option<String>,
    ttl: Option<u64>,
}

/// A bad request: which field, and what is wrong with it (the value is not echoed).
#[derive(Debug, PartialEq)]
struct FieldError {
    field: &'static str,
    problem: &'static str,
}

impl FieldError {
    fn response(&self) -> Response {
        let body = serde_json::json!({
            "error": format!("{}: {}", self.field, self.problem),
            "field": self.field,
        });
        (StatusCode::BAD_REQUEST, no_store(), Json(body)).into_response()
    }
}

async fn post_credentials(
    State(state): State<Arc<HttpState>>,
    request: axum::extract::Request,
) -> Response {
    // The key first: without one, not a byte of the body is read.
    if let Some(refused) = check_key(&state, bearer(request.headers())) {
        return refused;
    }
    let body = match Bytes::from_request(request, &state).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return json_error(rejection.status(), "body larger than 16 KiB");
        }
        Err(rejection) => return json_error(rejection.status(), "cannot read the body"),
    };
    match parse_body(&body) {
        Ok(request) => answer(&state, request),
        Err(error) => error.response(),
    }
}

async fn get_credentials(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let key = query.get("key").map(String::as_str).or(bearer(&headers));
    if let Some(refused) = check_key(&state, key) {
        return refused;
    }
    match parse_query(&query) {
        Ok(request) => answer(&state, request),
        Err(error) => error.response(),
    }
}

/// The refusal, if any: 401 for a missing or wrong key; 403 when no key is configured at all.
fn check_key(state: &HttpState, given: Option<&str>) -> Option<Response> {
    let settings = state.settings.load();
    if settings.api_keys.is_empty() {
        super::explain_once(
            super::Refusal::NoApiKeys,
            "credential endpoint refused (403): no api-keys configured; set api-keys (at least 16 characters) to mint credentials",
        );
        return Some(json_error(StatusCode::FORBIDDEN, "no api-keys configured"));
    }
    match given {
        Some(given) if key_matches(given, &settings.api_keys) => None,
        _ => {
            let mut response = json_error(StatusCode::UNAUTHORIZED, "invalid or missing API key");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            Some(response)
        }
    }
}

fn answer(state: &HttpState, request: Request) -> Response {
    let settings = state.settings.load();
    let Some(secret) = &settings.signing_secret else {
        return json_error(StatusCode::FORBIDDEN, "no static-auth-secret configured");
    };
    let ttl = request
        .ttl
        .unwrap_or(DEFAULT_TTL)
        .min(settings.max_credential_ttl);
    let minted = mint(&secret.0, request.user.as_deref(), ttl, unix_now());
    let body = serde_json::json!({
        "username": minted.username,
        "password": minted.password,
        "ttl": minted.ttl,
        "uris": settings.uris,
        "iceServers": [ice_server_json(&minted, &settings.uris)],
    });
    (StatusCode::OK, no_store(), Json(body)).into_response()
}

/// An empty body asks for defaults; otherwise a JSON object with `user` and/or `ttl`.
fn parse_body(body: &[u8]) -> Result<Request, FieldError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Request::default());
    }
    let bad = |problem| FieldError {
        field: "body",
        problem,
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("not valid JSON"))?;
    let Value::Object(fields) = value else {
        return Err(bad("expected a JSON object"));
    };
    let mut request = Request::default();
    for (name, value) in &fields {
        match name.as_str() {
            "user" => request.user = user(value.as_str())?,
            "ttl" => request.ttl = Some(ttl(value.as_u64())?),
            _ => {
                return Err(FieldError {
                    field: "body",
                    problem: "unknown field (expected user, ttl)",
                })
            }
        }
    }
    Ok(request)
}

/// `service=turn` (required by the draft), `username` and `ttl` (optional).
fn parse_query(query: &HashMap<String, String>) -> Result<Request, FieldError> {
    if query.get("service").map(String::as_str) != Some("turn") {
        return Err(FieldError {
            field: "service",
            problem: "must be \"turn\"",
        });
    }
    let ttl = match query.get("ttl") {
        None => None,
        Some(text) => Some(ttl(text.parse().ok())?),
    };
    Ok(Request {
        user: user(query.get("username").map(String::as_str))?,
        ttl,
    })
}

fn user(text: Option<&str>) -> Result<Option<String>, FieldError> {
    let bad = |problem| FieldError {
        field: "user",
        problem,
    };
    let Some(text) = text else {
        return Err(bad("expected a string"));
    };
    if text.chars().count() > MAX_USER_CHARS {
        return Err(bad("longer than 256 characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(bad("must not contain control characters"));
    }
    Ok(Some(text.to_string()).filter(|t| !t.is_empty()))
}

fn ttl(seconds: Option<u64>) -> Result<u64, FieldError> {
    seconds.filter(|s| *s > 0).ok_or(FieldError {
        field: "ttl",
        problem: "expected a positive whole number of seconds",
    })
}

/// The URIs handed out with credentials: `public-uris` when configured, otherwise one per
/// address clients can reach (the `external-ip` public addresses, else the listening addresses,
/// loopback left out when others exist).
///
/// Per address, in this order, each only when its listener is on: `turn:<ip>:<port>?transport=udp`
/// (unless `no-udp`), `turn:<ip>:<port>?transport=tcp` (unless `no-tcp`) and
/// `turns:<ip>:<tls-listening-port>?transport=tcp` (with `cert` and `pkey`, unless `no-tls`).
/// IPv6 goes in brackets. Browsers check a `turns:` host against the certificate, so a
/// deployment whose certificate names a host should list that host in `public-uris`.
pub fn derive_uris(config: &Config) -> Vec<String> {
    if !config.public_uris.is_empty() {
        return config.public_uris.clone();
    }
    let mut hosts: Vec<IpAddr> = if config.external_ips.is_empty() {
        expand_listening_ips(&config.listening_ips).unwrap_or_default()
    } else {
        config.external_ips.iter().map(|e| e.public).collect()
    };
    if hosts.iter().any(|ip| !ip.is_loopback()) {
        hosts.retain(|ip| !ip.is_loopback());
    }
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|ip| seen.insert(*ip));
    let port = config.listening_port;
    let tls = !config.no_tls && config.cert.is_some() && config.pkey.is_some();
    let tls_port = config.tls_listening_port;
    let mut uris = Vec::new();
    for ip in hosts {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if !config.no_udp {
            uris.push(format!("turn:{host}:{port}?transport=udp"));
        }
        if !config.no_tcp {
            uris.push(format!("turn:{host}:{port}?transport=tcp"));
        }
        if tls {
            uris.push(format!("turns:{host}:{tls_port}?transport=tcp"));
        }
    }
    uris
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExternalIp;

    #[test]
    fn bodies() {
        assert_eq!(parse_body(b""), Ok(Request::default()));
        assert_eq!(parse_body(b" {} "), Ok(Request::default()));
        assert_eq!(
            parse_body(br#"{"user": "alice", "ttl": 60}"#),
            Ok(Request {
                user: Some("alice".into()),
                ttl: Some(60)
            })
        );
        let field = |body: &[u8]| parse_body(body).unwrap_err().field;
        assert_eq!(field(br#"{"ttl": "60"}"#), "ttl");
        assert_eq!(field(br#"{"ttl": -1}"#), "ttl");
        assert_eq!(field(br#"{"ttl": 0}"#), "ttl");
        assert_eq!(field(br#"{"ttl": 1.5}"#), "ttl");
        assert_eq!(field(br#"{"user": 7}"#), "user");
        assert_eq!(field(br#"{"user": "a\nb"}"#), "user");
        assert_eq!(field(br#"{"other": 1}"#), "body");
        assert_eq!(field(b"[1]"), "body");
        assert_eq!(field(b"{"), "body");
    }

    #[test]
    fn queries() {
        let query = |pairs: &[(&str, &str)]| {
            parse_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(query(&[]).unwrap_err().field, "service");
        assert_eq!(query(&[("service", "stun")]).unwrap_err().field, "service");
        assert_eq!(
            query(&[("service", "turn"), ("username", "bob")]),
            Ok(Request {
                user: Some("bob".into()),
                ttl: None
            })
        );
        assert_eq!(
            query(&[("service", "turn"), ("ttl", "x")])
                .unwrap_err()
                .field,
            "ttl"
        );
    }

    #[test]
    fn uris() {
        let mut config = Config {
            listening_ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(
            derive_uris(&config),
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp",
                "turn:[::1]:3478?transport=udp",
                "turn:[::1]:3478?transport=tcp",
            ]
        );
        // TLS on: turns: on tls-listening-port, for each address.
        config.cert = Some("/c.pem".into());
        config.pkey = Some("/k.pem".into());
        config.tls_listening_port = 5350;
        assert_eq!(
            derive_uris(&config),
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp",
                "turns:127.0.0.1:5350?transport=tcp",
                "turn:[::1]:3478?transport=udp",
                "turn:[::1]:3478?transport=tcp",
                "turns:[::1]:5350?transport=tcp",
            ]
        );
        // Each listener switched off drops its URIs.
        config.no_udp = true;
        config.no_tcp = true;
        assert_eq!(
            derive_uris(&config),
            [
                "turns:127.0.0.1:5350?transport=tcp",
                "turns:[::1]:5350?transport=tcp"
            ]
        );
        config.no_tls = true;
        config.no_udp = false;
        assert_eq!(
            derive_uris(&config),
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turn:[::1]:3478?transport=udp"
            ]
        );
        config.external_ips = vec![ExternalIp {
            public: "203.0.113.7".parse().unwrap(),
            private: Some("10.0.0.5".parse().unwrap()),
        }];
        assert_eq!(
            derive_uris(&config),
            ["turn:203.0.113.7:3478?transport=udp"]
        );
        config.public_uris = vec!["turns:turn.example.com:443?transport=tcp".into()];
        assert_eq!(
            derive_uris(&config),
            ["turns:turn.example.com:443?transport=tcp"]
        );
    }
}
