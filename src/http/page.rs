//! The Trickle ICE test page at `/`: static, embedded in the binary, no external resources.
//!
//! The server fills in one thing at request time: the STUN/TURN port and the URIs it hands out,
//! so the default URL works on the machine the page is opened from. Query parameters pre-fill
//! the form (`url`, `username`, `credential`, `policy=relay`) and `auto=1` starts gathering;
//! `report=<url>` (loopback only) posts the results as JSON, for automated tests.

use super::HttpState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

const PAGE: &str = include_str!("page/index.html");
const PLACEHOLDER: &str = "/*TERN_CONFIG*/null";
/// Inline script and style only; network access only to this origin (the mint button) and to a
/// loopback `report` URL.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self' http://127.0.0.1:* http://localhost:*; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/", get(page))
}

async fn page(State(state): State<Arc<HttpState>>) -> Response {
    let settings = state.settings.load();
    let config = serde_json::json!({
        "turnPort": settings.turn_port,
        "uris": settings.uris,
    });
    // JSON inside <script>: keep `</script>` and friends from closing it.
    let config = config.to_string().replace('<', "\\u003c");
    let html = PAGE.replacen(PLACEHOLDER, &config, 1);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_is_self_contained() {
        let page = super::PAGE;
        assert!(page.contains(super::PLACEHOLDER));
        for external in ["http://", "https://", "//fonts", "src=\"//"] {
            assert!(!page.contains(external), "page references {external}");
        }
    }
}
