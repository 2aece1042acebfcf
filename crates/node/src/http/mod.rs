//! The node's HTTP port: Prometheus metrics, JSON status, a health check
//! and a live dashboard of the parliament.
//!
//! | path       | answer |
//! |------------|--------|
//! | `/metrics` | [`crate::metrics::Metrics::render`], the OpenMetrics text format |
//! | `/status`  | the [`StatusReport`] as JSON, readable from any origin (CORS) so one member's dashboard can poll the others |
//! | `/health`  | 200 `ok` while a leader is known, else 503 with the reason |
//! | `/`        | the dashboard: one page, no outside resources |
//!
//! Any other path is 404. The server holds at most [`CONNECTIONS_MAX`]
//! connections and closes one idle for [`CONNECTION_IDLE_SECONDS_MAX`].

pub mod client;
mod listener;

use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::{NodeHandle, StatusReport};

/// Connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 64;

/// A connection that neither reads nor writes for this long is closed.
pub const CONNECTION_IDLE_SECONDS_MAX: u64 = 30;

/// The dashboard page, served as is.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Serves the HTTP port on `listener` until the task is dropped or the
/// listener fails.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    node: NodeHandle,
) -> std::io::Result<()> {
    serve_limited(
        listener,
        node,
        CONNECTIONS_MAX,
        Duration::from_secs(CONNECTION_IDLE_SECONDS_MAX),
    )
    .await
}

/// [`serve_http`] with its limits given.
async fn serve_limited(
    listener: tokio::net::TcpListener,
    node: NodeHandle,
    connections_max: usize,
    idle: Duration,
) -> std::io::Result<()> {
    let listener = listener::Limited::new(listener, connections_max, idle);
    axum::serve(listener, router(node)).await
}

fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(node)
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

async fn metrics(axum::extract::State(node): axum::extract::State<NodeHandle>) -> Response {
    let body = node.metrics().render();
    (
        [
            (header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn status(axum::extract::State(node): axum::extract::State<NodeHandle>) -> Response {
    let headers = [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    match serde_json::to_string(&node.status()) {
        Ok(json) => (headers, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            headers,
            format!("cannot encode the status: {error}\n"),
        )
            .into_response(),
    }
}

async fn health(axum::extract::State(node): axum::extract::State<NodeHandle>) -> Response {
    let headers = [(header::CACHE_CONTROL, "no-store")];
    match check_health(&node.status()) {
        Ok(()) => (StatusCode::OK, headers, "ok\n".to_owned()).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            headers,
            format!("{reason}\n"),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Healthy while the node leads or knows a leader; otherwise the reason,
/// in one line.
pub fn check_health(status: &StatusReport) -> Result<(), String> {
    if status.role == "leader" || status.leader_id.is_some() {
        Ok(())
    } else {
        Err(format!(
            "no leader known: node {} is {} at ballot {}",
            status.id, status.role, status.ballot
        ))
    }
}

#[cfg(test)]
mod tests;
