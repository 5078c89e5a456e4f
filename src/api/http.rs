//! HTTP routes: the chat page (`/`, with the socket.io client it needs under `/vendor/`),
//! `/healthz`, `/readyz`, `/api/pool`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Metrics;
use crate::pool::ContainerPool;
use crate::session::SessionManager;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: ContainerPool,
    pub sessions: SessionManager,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/vendor/socket.io.min.js", get(socket_io_client))
        .route("/vendor/socket.io-client.LICENSE", get(socket_io_licence))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/pool", get(pool_status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The browser chat page; it works offline (everything it loads is served from here).
async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../static/index.html"),
    )
        .into_response()
}

/// The official socket.io browser client (MIT; its licence is served beside it).
async fn socket_io_client() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../static/vendor/socket.io.min.js"),
    )
        .into_response()
}

async fn socket_io_licence() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        include_str!("../../static/vendor/socket.io-client.LICENSE"),
    )
        .into_response()
}

/// 200 while the process runs.
async fn healthz() -> &'static str {
    "ok"
}

/// 200 when the pool can hand out a sandbox now and the breaker is not open; else 503 with
/// the reason.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.pool.is_ready() {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason, "breaker": state.pool.gate().breaker_state()})),
        )
            .into_response(),
    }
}

/// The pool's counts, its image and the breaker state, plus the Docker gate's queue.
async fn pool_status(State(state): State<AppState>) -> Response {
    let pool = state.pool.status();
    let gate = state.pool.gate().status();
    let mut body = serde_json::to_value(&pool).unwrap_or_else(|_| json!({}));
    body["gate"] = serde_json::to_value(&gate).unwrap_or_else(|_| json!({}));
    body["sessions"] = json!({
        "store": state.sessions.store().kind(),
        "local": state.sessions.local_counts(),
    });
    Json(body).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&state.pool, &state.sessions),
    )
        .into_response()
}
