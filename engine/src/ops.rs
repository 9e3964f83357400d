//! The operations endpoint: `/metrics` (Prometheus text), `/health` and `/ready`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
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
async fn health_handler(State(s): State<OpsState>) -> impl IntoResponse {
    let (code, status) =
        if s.health.healthy() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "failed") };
    (code, Json(serde_json::json!({ "status": status, "pipelines": s.health.snapshot() })))
}

async fn ready_handler(State(s): State<OpsState>) -> impl IntoResponse {
    let code = if s.health.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({ "ready": s.health.ready(), "pipelines": s.health.snapshot() })))
}
