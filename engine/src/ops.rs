//! The operations endpoint: `/metrics` (Prometheus text), `/health` and `/ready`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{all_running, Health};
use crate::metrics::Metrics;

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    health: Health,
}

/// Serve the endpoint on `listener` until `shutdown` is cancelled. The caller binds the listener,
/// so tests can use port 0.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .with_state(OpsState { metrics, health });
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

async fn metrics_handler(State(s): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

/// 200 while no pipeline has failed for good, 503 after (a liveness probe: restart the process).
/// A `degraded` pipeline keeps it 200 (a restart would not bring a broker back); the body lists
/// every pipeline's state and reason either way.
async fn health_handler(State(s): State<OpsState>) -> impl IntoResponse {
    let (code, status) =
        if s.health.healthy() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "failed") };
    (code, Json(serde_json::json!({ "status": status, "pipelines": s.health.snapshot() })))
}

/// 200 only while every pipeline is `running`: `starting`, `degraded` (a sink or source has been
/// failing for longer than its `degraded_after_ms`), `restarting`, `stopped` and `failed` make it
/// 503 (a readiness probe: send no traffic, alert, but do not restart).
async fn ready_handler(State(s): State<OpsState>) -> impl IntoResponse {
    // One snapshot for the code and the body, so they cannot disagree.
    let pipelines = s.health.snapshot();
    let ready = all_running(&pipelines);
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({ "ready": ready, "pipelines": pipelines })))
}
