//! The HTTP endpoints: `/health/live`, `/health/ready` and `/metrics`.
//!
//! The server only listens once the replica's view is loaded, so readiness
//! is whether the store answers.

use crate::discovery::Sessions;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::view::View;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// Time the readiness check gives the store to answer.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What the endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// The store (pinged for readiness).
    pub store: Arc<dyn Store>,
    /// The replica's view.
    pub view: Arc<View>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Discovery sessions (connected count, version lag).
    pub discovery: Arc<crate::discovery::DiscoveryContext>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn live() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "live" }))
}

async fn ready(State(state): State<HttpState>) -> Response {
    let store = match tokio::time::timeout(READY_PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "store did not answer within {READY_PING_TIMEOUT:?}"
        )),
    };
    let version = state.view.stamp().version;
    let body = serde_json::json!({
        "status": if store.is_ok() { "ready" } else { "not ready" },
        "store": state.store.kind(),
        "store_error": store.as_ref().err(),
        "version": version,
    });
    let code = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

fn refresh(state: &HttpState, sessions: &Sessions) {
    let version = state.view.stamp().version;
    state.metrics.config_version.set(version as i64);
    state
        .metrics
        .connected_data_planes
        .set(sessions.count() as i64);
    state
        .metrics
        .dataplane_version_lag
        .set(sessions.max_lag(version) as i64);
}

async fn metrics(State(state): State<HttpState>) -> Response {
    refresh(&state, &state.discovery.sessions);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
