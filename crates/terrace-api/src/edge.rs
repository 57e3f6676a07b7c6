//! The edge every request passes: its request id, the access log line, a
//! 500 instead of a dropped connection when a handler panics, and the limits
//! of CONTRACT §5: the body limit, capacity taken only once a body has
//! arrived, each user's own caps (429 for that user alone), the instance's
//! caps (503 `overloaded`) and the request timeout.

use crate::AppState;
use crate::auth::Caller;
use crate::problem::{Problem, REQUEST_ID};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use http::{HeaderValue, StatusCode, header};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use terrace_domain::{RequestId, UserId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// The longest request target answered (longer: 414).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) a request may carry (more: 431).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// A request over the wire limits of CONTRACT §5 that hyper lets through.
fn over_wire_limits(req: &Request) -> Option<Problem> {
    if req.uri().to_string().len() > MAX_URI_BYTES {
        return Some(Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request URIs are limited to {MAX_URI_BYTES} bytes"),
        ));
    }
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (header_bytes > MAX_HEADER_BYTES).then(|| {
        Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers are limited to {MAX_HEADER_BYTES} bytes"),
        )
    })
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
    let refused = over_wire_limits(&req);
    let answer = REQUEST_ID
        .scope(id.to_string(), async move {
            match refused {
                Some(p) => p.into_response(),
                None => next.run(req).await,
            }
        })
        .instrument(span.clone());
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
    // No answer of Terrace's is to be read as another type than it says.
    res.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
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

/// Reads a whole body of at most `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large =
            std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Problem::payload_too_large(limit)
        } else {
            Problem::new(StatusCode::BAD_REQUEST, "bad_request", "the request body could not be read")
        }
    })
}

/// How many requests (or streams) each user has in flight, against a cap.
#[derive(Debug)]
pub(crate) struct PerUser {
    max: usize,
    counts: Mutex<HashMap<UserId, usize>>,
}

impl PerUser {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, counts: Mutex::default() })
    }

    /// One more for `user`, unless they are at their cap.
    pub(crate) fn take(self: &Arc<Self>, user: UserId) -> Option<UserSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(user).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(UserSlot { of: self.clone(), user })
    }

    /// What `user` holds now.
    #[cfg(test)]
    fn held(&self, user: UserId) -> usize {
        self.counts.lock().map(|c| c.get(&user).copied().unwrap_or(0)).unwrap_or(0)
    }
}

/// One request or stream of one user; given back when dropped.
#[derive(Debug)]
pub(crate) struct UserSlot {
    of: Arc<PerUser>,
    user: UserId,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.of.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// The capacity one request or stream holds: its user's slot, then the
/// instance's permit. Released when dropped.
#[derive(Debug)]
pub(crate) struct Capacity {
    _user: Option<UserSlot>,
    _permit: OwnedSemaphorePermit,
}

/// A caller the edge has already authenticated (so handlers check the token once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verified(pub Caller);

impl AppState {
    /// The caller's own cap first (429 for them alone), then the instance's
    /// (503 `overloaded`). Unauthenticated callers take no user slot: the
    /// handler answers them 401.
    pub(crate) fn capacity(
        &self,
        caller: Option<Caller>,
        users: &Arc<PerUser>,
        instance: &Arc<Semaphore>,
    ) -> Result<Capacity, Problem> {
        let user = match caller {
            Some(c) => Some(users.take(c.user).ok_or_else(|| {
                self.0.metrics.rejected("too_many_requests");
                Problem::too_many_requests(1)
            })?),
            None => None,
        };
        let permit = instance.clone().try_acquire_owned().map_err(|_| {
            self.0.metrics.rejected("overloaded");
            Problem::overloaded()
        })?;
        Ok(Capacity { _user: user, _permit: permit })
    }

    fn caller_of(&self, req: &Request) -> Option<Caller> {
        let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        header.and_then(|h| self.0.jwt.authenticate(Some(h)).ok())
    }
}

/// For the non-streaming API routes: rejects declared bodies over the limit
/// (413), waits for the whole body, and only then takes capacity: the
/// caller's own slot (429) and the instance's permit (503 `overloaded`),
/// never an unbounded queue. The handler answers within the request timeout,
/// body included (503 `timeout` past it).
pub async fn limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cfg = &state.0.cfg;
    if declared_too_large(&req, cfg.body_limit) {
        return Problem::payload_too_large(cfg.body_limit).into_response();
    }
    let deadline = tokio::time::Instant::now() + cfg.request_timeout;
    let timed_out = || {
        tracing::warn!(timeout = ?cfg.request_timeout, "request timed out");
        state.0.metrics.rejected("timeout");
        Problem::timeout().into_response()
    };
    // A client that sends headers and then nothing holds its connection only.
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout_at(deadline, read_body(body, cfg.body_limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(p)) => return p.into_response(),
        Err(_) => return timed_out(),
    };
    let mut req = Request::from_parts(parts, Body::from(bytes));
    let caller = state.caller_of(&req);
    let _capacity = match state.capacity(caller, &state.0.user_requests, &state.0.requests) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    if let Some(c) = caller {
        req.extensions_mut().insert(Verified(c));
    }
    match tokio::time::timeout_at(deadline, next.run(req)).await {
        Ok(res) => res,
        Err(_) => timed_out(),
    }
}

/// For Stripe's webhook: its own body limit, the instance's capacity (no
/// user: the signature says who sent it) and the request timeout.
pub async fn webhook_limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = crate::billing::WEBHOOK_BODY_LIMIT;
    if declared_too_large(&req, limit) {
        return Problem::payload_too_large(limit).into_response();
    }
    let _capacity = match state.capacity(None, &state.0.user_requests, &state.0.requests) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    match tokio::time::timeout(state.0.cfg.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            state.0.metrics.rejected("timeout");
            Problem::timeout().into_response()
        }
    }
}

/// For the event stream: only the body limit (the handler takes the
/// stream's capacity, which the stream holds until it ends).
pub async fn stream_limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if declared_too_large(&req, state.0.cfg.body_limit) {
        return Problem::payload_too_large(state.0.cfg.body_limit).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_their_own_cap_and_slots_come_back() {
        let caps = PerUser::new(2);
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let first = caps.take(a).unwrap();
        let second = caps.take(a).unwrap();
        assert!(caps.take(a).is_none(), "a third is over a's cap");
        let other = caps.take(b).expect("b is not limited by a");
        assert_eq!((caps.held(a), caps.held(b)), (2, 1));
        drop(first);
        assert!(caps.take(a).is_some(), "a slot came back");
        drop((second, other));
        assert_eq!((caps.held(a), caps.held(b)), (0, 0));
        assert!(caps.counts.lock().unwrap().is_empty(), "users with nothing in flight are forgotten");
    }
}
