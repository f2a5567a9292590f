//! The admin listener: liveness, readiness (a config from the control plane
//! or a file is applied, or the cached config serves and no control plane
//! answered within its grace period; the revocation set is loaded or its
//! grace period is over; and the data plane is not draining), the health
//! report of its dependencies (`/health`, see [`crate::ops::health`]), what it
//! serves (`/config`, see [`crate::ops::config_dump`]) and Prometheus metrics.

use crate::config::runtime::{ConfigSource, Runtime};
use crate::ops::health::{HealthSources, Status};
use crate::ops::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use tokio::sync::watch;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Routing state (readiness, version).
    pub runtime: Arc<Runtime>,
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// True once shutdown has begun.
    pub stopping: watch::Receiver<bool>,
    /// Revocations and API keys, when fed from Redis: not ready until
    /// loaded once (or their grace period is over).
    pub credentials: Option<Arc<crate::policy::auth::credentials::Credentials>>,
    /// What `/health` reports on.
    pub health: HealthSources,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .with_state(state)
}

async fn health(State(state): State<AdminState>) -> impl IntoResponse {
    let stopping = *state.stopping.borrow();
    let report = state.health.report(stopping).await;
    let code = match report.status {
        Status::Error => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (code, Json(report))
}

async fn live() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Whether the data plane takes traffic, and why not.
fn readiness(state: &AdminState, source: ConfigSource) -> (StatusCode, &'static str) {
    if *state.stopping.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if !state
        .credentials
        .as_ref()
        .is_none_or(|c| c.ready_for_traffic())
    {
        (StatusCode::SERVICE_UNAVAILABLE, "loading revocations")
    } else if state.runtime.is_ready() {
        (StatusCode::OK, "ready")
    } else if source == ConfigSource::Cache {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the control plane (the cached config serves meanwhile)",
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for config")
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let (epoch, version, source) = {
        let held = state.runtime.load();
        (held.epoch.clone(), held.version, held.source)
    };
    let (status, text) = readiness(&state, source);
    (
        status,
        Json(serde_json::json!({
            "status": text,
            "epoch": epoch,
            "version": version,
            "source": source.as_str(),
        })),
    )
}

/// What this data plane serves ([`crate::ops::config_dump`]).
async fn config(State(state): State<AdminState>) -> impl IntoResponse {
    Json(crate::ops::config_dump::dump(&state.runtime))
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let (status, _) = readiness(&state, state.runtime.source());
    state.metrics.ready.set(i64::from(status == StatusCode::OK));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
