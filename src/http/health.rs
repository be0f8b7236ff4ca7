//! `/healthz`: the process is alive (it answers). `/readyz`: listeners bound and not draining;
//! 503 otherwise, so a load balancer stops sending new clients.

use super::HttpState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let reason = if !state.ready.load(Ordering::Relaxed) {
        Some("not serving")
    } else if state.is_draining() {
        Some("draining")
    } else {
        None
    };
    match reason {
        None => Json(serde_json::json!({ "ready": true })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}
