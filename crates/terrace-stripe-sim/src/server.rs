//! Accepting connections, reading bodies, and routing to the API, the
//! hosted pages and the control endpoint.

use crate::{State, api, checkout, control};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read.
const MAX_BODY: usize = 256 * 1024;
/// How long a connection may take to finish once shutdown began.
const CONNECTION_GRACE: Duration = Duration::from_millis(500);

pub(crate) type Body = Full<Bytes>;

pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let accepted = tokio::select! {
            () = state.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                state.tracker.spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "stripe simulator accept failed");
                tokio::select! {
                    () = state.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let svc_state = Arc::clone(&state);
    let service = service_fn(move |req| handle(req, Arc::clone(&svc_state)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = state.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CONNECTION_GRACE, conn).await;
        }
    }
}

/// The connection closes without an answer (a hang that ended at shutdown,
/// a scripted disconnect).
#[derive(Debug, thiserror::Error)]
#[error("connection closed by the simulator")]
pub(crate) struct Closed;

/// What a handler needs of a request, its body read.
#[derive(Debug)]
pub(crate) struct Req {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Closed> {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    let body = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large or was cut")),
        Err(_) => return Ok(text(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
    };
    let req = Req { method: parts.method, path: parts.uri.path().to_owned(), headers: parts.headers, body };
    if req.path.starts_with("/_sim/") {
        return Ok(control::handle(&req, &state));
    }
    if req.path.starts_with("/v1/") {
        return api::handle(&req, &state).await;
    }
    Ok(checkout::handle(&req, &state))
}

/// A response with a body and a content type.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    response(status, "application/json", value.to_string())
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body)
}

pub(crate) fn no_content() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// `303 See Other` to `location`.
pub(crate) fn see_other(location: &str) -> Response<Body> {
    let mut resp = response(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

/// Sleeps unless the simulator shuts down first.
pub(crate) async fn pause(state: &State, d: Duration) -> Result<(), Closed> {
    if d.is_zero() {
        return Ok(());
    }
    tokio::select! {
        () = state.cancel.cancelled() => Err(Closed),
        () = tokio::time::sleep(d) => Ok(()),
    }
}
