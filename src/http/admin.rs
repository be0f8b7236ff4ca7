//! The admin API, behind `admin-api-keys` (`Authorization: Bearer <admin-key>`); with no admin
//! key configured it does not exist (404).
//!
//! - `GET /api/v1/admin/allocations`: every allocation (id, user, client and relay address,
//!   transport, age, traffic), on the UDP workers (ids `<worker>-<slot>-<generation>`) and on
//!   TCP/TLS connections (ids `tcp-<connection>-<slot>-<generation>`, `tls-…`).
//! - `DELETE /api/v1/admin/allocations/{id}`: end one allocation (a TCP/TLS allocation's
//!   connection is closed too).
//! - `DELETE /api/v1/admin/users/{user}/allocations`: end all of a user's allocations (the user
//!   part of a REST username, or the whole username).
//! - `POST /api/v1/admin/drain`: refuse new allocations (486) while existing ones go on;
//!   `/readyz` turns 503. `DELETE /api/v1/admin/drain` resumes.

use super::{bearer, json_error, key_matches, HttpState};
use crate::net::{parse_allocation_id, parse_stream_allocation_id, StreamAllocation};
use crate::turn::AllocationInfo;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How long a request waits for the workers to answer.
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/v1/admin/allocations", get(list))
        .route("/api/v1/admin/allocations/{id}", delete(delete_one))
        .route(
            "/api/v1/admin/users/{user}/allocations",
            delete(delete_user),
        )
        .route("/api/v1/admin/drain", post(drain).delete(resume))
}

/// The refusal, if any: 404 when the admin API is off, 401 for a missing or wrong key.
fn authorize(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let settings = state.settings.load();
    if settings.admin_api_keys.is_empty() {
        super::explain_once(
            super::Refusal::NoAdminKeys,
            "admin API refused (404): no admin-api-keys configured; set admin-api-keys (at least 16 characters) to use it",
        );
        return Some(json_error(StatusCode::NOT_FOUND, "not found"));
    }
    match bearer(headers) {
        Some(given) if key_matches(given, &settings.admin_api_keys) => None,
        _ => {
            let mut response = json_error(StatusCode::UNAUTHORIZED, "invalid or missing admin key");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            Some(response)
        }
    }
}

fn entry_json(id: String, info: &AllocationInfo) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "user": info.username,
        "client": info.tuple.client.to_string(),
        "server": info.tuple.server.to_string(),
        "relay": info.relay.map(|r| r.to_string()),
        "transport": info.tuple.transport.as_str(),
        "age_secs": info.age_secs,
        "permissions": info.permissions,
        "channels": info.channels,
        "packets_to_peer": info.traffic.packets_to_peer,
        "bytes_to_peer": info.traffic.bytes_to_peer,
        "packets_to_client": info.traffic.packets_to_client,
        "bytes_to_client": info.traffic.bytes_to_client,
    })
}

/// Runs a blocking worker round-trip off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

async fn list(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize(&state, &headers) {
        return refused;
    }
    let control = state.control.clone();
    let Some(mut entries) = blocking(move || control.list_allocations(WORKER_TIMEOUT)).await else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    entries.sort_by_key(|e| (e.worker, e.id.index));
    let mut streams = state.streams.list_allocations(WORKER_TIMEOUT).await;
    streams.sort_by_key(|e| (e.connection, e.id.index));
    let list: Vec<_> = entries
        .iter()
        .map(|e| entry_json(e.id_string(), &e.info))
        .chain(streams.iter().map(|e| entry_json(e.id_string(), &e.info)))
        .collect();
    Json(serde_json::json!({ "allocations": list })).into_response()
}

async fn delete_one(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = authorize(&state, &headers) {
        return refused;
    }
    let deleted = if let Some((connection, alloc)) = parse_stream_allocation_id(&id) {
        state
            .streams
            .delete_allocation(connection, alloc, WORKER_TIMEOUT)
            .await
    } else if let Some((worker, alloc)) = parse_allocation_id(&id) {
        let control = state.control.clone();
        blocking(move || control.delete_allocation(worker, alloc, WORKER_TIMEOUT))
            .await
            .flatten()
    } else {
        None
    };
    match deleted {
        Some(true) => {
            info!(allocation = %id, "allocation deleted by the admin API");
            Json(serde_json::json!({ "deleted": 1 })).into_response()
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such allocation"),
    }
}

async fn delete_user(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    if let Some(refused) = authorize(&state, &headers) {
        return refused;
    }
    // Allocations remember the full USERNAME; for REST credentials the admin names the user
    // part, so match either.
    let control = state.control.clone();
    let wanted = user.clone();
    let deleted = blocking(move || {
        let entries = control.list_allocations(WORKER_TIMEOUT);
        let mut names: Vec<String> = entries
            .into_iter()
            .map(|e| e.info.username)
            .filter(|name| user_matches(name, &wanted))
            .collect();
        names.sort();
        names.dedup();
        names
            .iter()
            .map(|name| control.delete_user(name, WORKER_TIMEOUT))
            .sum::<usize>()
    })
    .await
    .unwrap_or(0);
    // Stream connections: each matching allocation by id (a connection has at most one).
    let doomed: Vec<StreamAllocation> = state
        .streams
        .list_allocations(WORKER_TIMEOUT)
        .await
        .into_iter()
        .filter(|e| user_matches(&e.info.username, &user))
        .collect();
    let mut deleted = deleted;
    for entry in doomed {
        let gone = state
            .streams
            .delete_allocation(entry.connection, entry.id, WORKER_TIMEOUT)
            .await;
        deleted += usize::from(gone == Some(true));
    }
    info!(user = %user, deleted, "user's allocations deleted by the admin API");
    Json(serde_json::json!({ "deleted": deleted })).into_response()
}

/// `name` is `user` itself, or a REST username whose user part is `user`.
fn user_matches(name: &str, user: &str) -> bool {
    if name == user {
        return true;
    }
    let rest_user = match name.split_once(':') {
        Some((expiry, rest)) if expiry.bytes().all(|b| b.is_ascii_digit()) => Some(rest),
        Some(_) => name
            .rsplit_once(':')
            .filter(|(_, expiry)| expiry.bytes().all(|b| b.is_ascii_digit()))
            .map(|(rest, _)| rest),
        None => None,
    };
    rest_user == Some(user)
}

async fn drain(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize(&state, &headers) {
        return refused;
    }
    if !state.draining.swap(true, Ordering::Relaxed) {
        warn!("draining: new allocations are refused (486), existing ones continue");
    }
    Json(serde_json::json!({ "draining": true })).into_response()
}

async fn resume(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize(&state, &headers) {
        return refused;
    }
    if state.draining.swap(false, Ordering::Relaxed) {
        info!("draining stopped: new allocations are accepted again");
    }
    Json(serde_json::json!({ "draining": false })).into_response()
}

#[cfg(test)]
mod tests {
    use super::user_matches;

    #[test]
    fn user_names() {
        assert!(user_matches("alice", "alice"));
        assert!(user_matches("1700000000:alice", "alice"));
        assert!(user_matches("alice:1700000000", "alice"));
        assert!(user_matches("1700000000:a:b", "a:b"));
        assert!(!user_matches("1700000000:alicia", "alice"));
        assert!(!user_matches("bob:alice", "alice"));
    }
}
