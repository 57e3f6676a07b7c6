//! The edge every request passes: its request id, the access log line, a
//! 500 instead of a dropped connection when a handler panics, the
//! concurrency limit that sheds load with 503, the body limit and the request
//! timeout.

use crate::AppState;
use crate::problem::{Problem, REQUEST_ID};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use http::{HeaderValue, header};
use std::time::Instant;
use terrace_domain::RequestId;
use tracing::Instrument;

/// The request id header, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The caller's request id if well formed, else a new one.
pub fn request_id_of(req: &Request) -> RequestId {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate)
}

/// Outermost layer: gives the request its id (extension, task-local for
/// problems, tracing span), echoes it in `X-Request-Id`, and logs one line
/// when the answer is ready.
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = request_id_of(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, path = %path);
    let started = Instant::now();
    let mut req = req;
    req.extensions_mut().insert(id.clone());
    let answer = REQUEST_ID.scope(id.to_string(), next.run(req)).instrument(span.clone());
    // A panic in a handler is a bug; the client still gets a problem, and the
    // connection and the server live on.
    let mut res = match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
        Ok(res) => res,
        Err(_) => {
            span.in_scope(|| tracing::error!("the handler panicked"));
            REQUEST_ID.sync_scope(id.to_string(), || Problem::internal().into_response())
        }
    };
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let (status, elapsed_ms) = (res.status().as_u16(), started.elapsed().as_millis() as u64);
    span.in_scope(|| {
        // Probes and scrapes are frequent: they log at debug.
        if matches!(path.as_str(), "/livez" | "/readyz" | "/metrics") && status < 500 {
            tracing::debug!(status, elapsed_ms, "answered");
        } else {
            tracing::info!(status, elapsed_ms, "answered");
        }
    });
    res
}

/// Rejects a declared body over the limit before anything reads it.
fn declared_too_large(req: &Request, limit: usize) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// For the non-streaming API routes: sheds load past the concurrency limit
/// (503 `overloaded`, never an unbounded queue), rejects declared bodies over
/// the limit (413) and answers 503 `timeout` when the handler does not finish
/// within the request timeout.
pub async fn limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Ok(_permit) = state.0.requests.clone().try_acquire_owned() else {
        return Problem::overloaded().into_response();
    };
    if declared_too_large(&req, state.0.cfg.body_limit) {
        return Problem::payload_too_large(state.0.cfg.body_limit).into_response();
    }
    match tokio::time::timeout(state.0.cfg.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(timeout = ?state.0.cfg.request_timeout, "request timed out");
            Problem::timeout().into_response()
        }
    }
}

/// For the event stream: only the body limit (the stream takes its own permit).
pub async fn stream_limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if declared_too_large(&req, state.0.cfg.body_limit) {
        return Problem::payload_too_large(state.0.cfg.body_limit).into_response();
    }
    next.run(req).await
}
