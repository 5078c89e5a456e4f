//! HTTP routes: the chat page (`/`, with the socket.io client it needs under `/vendor/`),
//! `/healthz`, `/readyz`, `/api/pool`, `/api/replicas`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Metrics;
use crate::session::SessionManager;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
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
        .route("/api/replicas", get(replicas))
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

/// 200 when the pool can hand out a sandbox now, the breaker is not open and this replica
/// serves (it has not self-fenced); else 503 with the reason. `bus` says whether the
/// hand-over bus is subscribed (a replica whose bus is down still serves its own sessions,
/// so it stays ready; others cannot hand sessions to it meanwhile).
async fn readyz(State(state): State<AppState>) -> Response {
    let bus = if state.sessions.bus_up() {
        "up"
    } else {
        "down"
    };
    let ready = state.sessions.readiness().and_then(|()| {
        state
            .sessions
            .check_serving()
            .map_err(|_| "this replica has stopped serving (self-fenced)")
    });
    match ready {
        Ok(()) => Json(json!({"ready": true, "bus": bus})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "ready": false,
                "reason": reason,
                "bus": bus,
                "breaker": state.sessions.pool_status().gate.breaker.as_str(),
            })),
        )
            .into_response(),
    }
}

/// The pool's counts, its image and the breaker state, the Docker gate's queue, and this
/// instance's sessions. The wire shape is written here (docs/API.md), not derived from the
/// pool's types.
async fn pool_status(State(state): State<AppState>) -> Response {
    let pool = state.sessions.pool_status();
    let gate = &pool.gate;
    Json(json!({
        "idle": pool.idle,
        "leased": pool.leased,
        "creating": pool.creating,
        "scrubbing": pool.scrubbing,
        "destroying": pool.destroying,
        "total": pool.total,
        "min_idle": pool.min_idle,
        "idle_target": pool.idle_target,
        "waiting": pool.waiting,
        "max": pool.max,
        "image": pool.image,
        "instance": pool.instance,
        "engine": pool.engine,
        "breaker": gate.breaker.as_str(),
        "closed": pool.closed,
        "gate": {
            "in_flight": gate.in_flight,
            "waiting": gate.waiting,
            "max_concurrent": gate.max_concurrent,
            "max_queue": gate.max_queue,
            "breaker": gate.breaker.as_str(),
            "calls_total": gate.calls_total,
            "failures_total": gate.failures_total,
            "overloaded_total": gate.overloaded_total,
        },
        "sessions": {
            "store": state.sessions.store().kind(),
            "local": state.sessions.local_counts(),
        },
    }))
    .into_response()
}

/// Every replica of the deployment (as the store knows them) with its last status: what
/// `sandpool status` prints. The store down: this replica alone, and `store: "unavailable"`.
async fn replicas(State(state): State<AppState>) -> Response {
    match state.sessions.replicas().await {
        Ok(all) => Json(crate::status::replicas_json(&all)).into_response(),
        Err(error) => {
            tracing::warn!(%error, "listing the replicas failed");
            let mine = crate::session::Replica {
                instance: state.sessions.instance().to_string(),
                alive: true,
                status: Some(state.sessions.replica_status()),
            };
            let mut body = crate::status::replicas_json(&[mine]);
            body["store"] = json!("unavailable");
            Json(body).into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&state.sessions),
    )
        .into_response()
}
