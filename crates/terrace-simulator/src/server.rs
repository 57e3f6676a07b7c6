//! Accepting connections, routing, key checks and the behaviours every
//! endpoint shares (latency, hanging, resets).

use crate::body::SimBody;
use crate::{Behaviour, Endpoint, RequestEnd, State, control, gemini, maps};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to finish once shutdown began.
const CONNECTION_GRACE: Duration = Duration::from_millis(500);

pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<State>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = state.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "simulator accept failed");
                tokio::select! {
                    () = state.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(SimStream { inner: stream, reset: Arc::clone(&reset) });
    let svc_state = Arc::clone(&state);
    let service = service_fn(move |req| handle(req, Arc::clone(&svc_state), Arc::clone(&reset)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = state.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CONNECTION_GRACE, conn).await;
        }
    }
}

/// The connection closes without an answer (a scripted reset, a hang that
/// ended at shutdown).
#[derive(Debug, thiserror::Error)]
#[error("connection closed by the simulator")]
pub(crate) struct Closed;

/// Whether a request carried the right key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    Ok,
    Missing,
    Wrong,
}

fn check(given: Option<&str>, expected: &str) -> KeyCheck {
    match given {
        None | Some("") => KeyCheck::Missing,
        Some(k) if k == expected => KeyCheck::Ok,
        Some(_) => KeyCheck::Wrong,
    }
}

fn route(method: &Method, path: &str) -> Option<Endpoint> {
    match (method, path) {
        (&Method::GET, "/maps/api/geocode/json") => Some(Endpoint::Geocode),
        (&Method::GET, "/maps/api/streetview/metadata") => Some(Endpoint::StreetViewMetadata),
        (&Method::GET, "/maps/api/streetview") => Some(Endpoint::StreetView),
        (&Method::GET, "/maps/api/staticmap") => Some(Endpoint::StaticMap),
        (&Method::POST, p) if p.starts_with("/v1beta/models/") && p.ends_with(":streamGenerateContent") => {
            Some(Endpoint::Gemini)
        }
        _ => None,
    }
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

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    reset: Arc<AtomicBool>,
) -> Result<Response<SimBody>, Closed> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/_sim/") {
        return Ok(control::handle(req, &state).await);
    }
    let Some(endpoint) = route(req.method(), &path) else {
        return Ok(plain(
            &state,
            StatusCode::NOT_FOUND,
            "text/html; charset=UTF-8",
            "<html>404. That’s an error.</html>",
        ));
    };
    let mut query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let query_key = query.iter().find(|(k, _)| k == "key").map(|(_, v)| v.clone());
    query.retain(|(k, _)| k != "key");
    let key = if endpoint == Endpoint::Gemini {
        let header = req.headers().get("x-goog-api-key").and_then(|v| v.to_str().ok());
        check(header.or(query_key.as_deref()), &state.gemini_key)
    } else {
        check(query_key.as_deref(), &state.maps_key)
    };

    let (mut guard, behaviour) = state.begin(endpoint, query.clone(), key == KeyCheck::Ok);
    if endpoint == Endpoint::Gemini {
        return gemini::answer(req, &query, key, behaviour, guard, &reset).await;
    }
    if key != KeyCheck::Ok {
        return Ok(maps::key_rejected(endpoint, key, guard));
    }
    let delay = match &behaviour {
        Behaviour::Latency { delay } => *delay,
        _ => Duration::ZERO,
    };
    pause(&state, state.latency() + delay).await?;
    match behaviour {
        Behaviour::HangBeforeHeaders => {
            state.cancel.cancelled().await;
            Err(Closed)
        }
        Behaviour::ConnectionReset => {
            reset.store(true, Ordering::Relaxed);
            guard.finish(RequestEnd::Reset);
            Err(Closed)
        }
        other => Ok(maps::answer(endpoint, &query, other, guard)),
    }
}

/// A complete, unrecorded response.
pub(crate) fn plain(
    state: &State,
    status: StatusCode,
    content_type: &str,
    body: &'static str,
) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::untracked(body, state));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// A response with a status, a content type and a body.
pub(crate) fn response(status: StatusCode, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

/// The connection's socket. When the handler asked for a reset, dropping it
/// sends a TCP RST instead of a FIN.
struct SimStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
