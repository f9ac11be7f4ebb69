//! The admin HTTP listener (`admin_listen`, default `127.0.0.1:9644`, `off` disables it;
//! docs/OPERATIONS.md): probes for load balancers and Kubernetes, and Prometheus metrics.
//! Read-only: nothing here changes the broker.
//!
//! - `GET /health/live`: 200 while the process serves HTTP at all.
//! - `GET /health/ready`: 200 once the broker has registered with the controller quorum, its
//!   metadata has caught up and its logs are recovered (it takes client requests); 503 before
//!   and while it shuts down.
//! - `GET /metrics`: every metric (`crate::metrics`) in Prometheus's OpenMetrics text.
//! - `GET /v1/...`: the JSON API ([`api`]): cluster, topics, groups, records.
//! - `GET /`: the web console ([`console`]), over the JSON API and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::server::BrokerState;

pub mod api;
pub mod console;

use api::Api;

/// Serves the admin API on `listener` until the broker shuts down.
pub async fn serve(state: Arc<BrokerState>, listener: TcpListener) {
    let shutdown = state.shutdown.clone();
    let app = Router::new()
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(api::cluster))
        .route("/v1/topics", get(api::topics))
        .route("/v1/topics/{topic}", get(api::topic))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(api::records),
        )
        .route("/v1/groups", get(api::groups))
        .route("/v1/groups/{group}", get(api::group))
        .merge(console::routes())
        .with_state(Api::new(state));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::warn!("admin listener stopped: {e}");
    }
}

async fn ready(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let state = &api.state;
    let ready = state.ready.load(Ordering::Acquire)
        && state.lease.is_valid()
        && !state.shutdown.is_cancelled();
    if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let remote = api.remote_high_watermarks().await;
    let state = api.state.clone();
    // Log sizes take each log's lock, which an fsync may hold: off the async threads.
    let rendered = tokio::task::spawn_blocking(move || state.metrics.render(&state, &remote)).await;
    match rendered {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics failed: {e}\n"),
        )
            .into_response(),
    }
}
