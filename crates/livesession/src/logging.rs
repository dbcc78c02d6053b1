//! Logs: `tracing` events as JSON lines (timestamp, level, message, fields and the current
//! span's `session_id`/`conn_id`), or human-readable on a terminal. Request lines are
//! logged with their path only: query strings can carry access tokens.

use std::io::IsTerminal;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("LIVESESSION_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

pub async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // The path only, never the query string.
    let path = request.uri().path().to_owned();
    // The client as `proxy::client_info` decided it (behind a trusted proxy, not the proxy).
    let client = request
        .extensions()
        .get::<crate::proxy::ClientInfo>()
        .map(|c| c.ip.to_string())
        .unwrap_or_default();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(%method, %path, status, elapsed_ms, %client, "request");
    } else {
        tracing::info!(%method, %path, status, elapsed_ms, %client, "request");
    }
    response
}
