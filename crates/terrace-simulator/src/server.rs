//! Accepting connections, routing, key checks and the behaviours every
//! endpoint shares (latency, hanging, resets).
//!
//! One port serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c): the first
//! bytes of a connection tell which (HTTP/2's 24-byte preface or not). On
//! HTTP/2 at most [`MAX_CONCURRENT_STREAMS`] requests run at once per
//! connection, as at Google.

use crate::body::SimBody;
use crate::{Behaviour, Endpoint, OpenConnection, RequestEnd, State, control, gemini, maps};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

/// How long a client may take to send its request headers (on HTTP/1), and
/// the first bytes of a connection (either protocol).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to finish once shutdown began.
const CONNECTION_GRACE: Duration = Duration::from_millis(500);
/// HTTP/2 streams one connection may have open at once: Google's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`. A client that sends more queues them.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Runs hyper's HTTP/2 stream tasks in the simulator's task tracker, so that
/// shutdown waits for them like for connections.
#[derive(Debug, Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// The connection builders, one per protocol, made once.
#[derive(Debug)]
struct Builders {
    http1: auto::Builder<Tracked>,
    http2: auto::Builder<Tracked>,
}

impl Builders {
    fn new(tracker: &TaskTracker) -> Self {
        let mut http1 = auto::Builder::new(Tracked(tracker.clone())).http1_only();
        http1.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        let mut http2 = auto::Builder::new(Tracked(tracker.clone())).http2_only();
        http2.http2().timer(TokioTimer::new()).max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        Self { http1, http2 }
    }

    fn get(&self, protocol: Protocol) -> &auto::Builder<Tracked> {
        match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
        }
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<State>, tracker: TaskTracker) {
    let builders = Arc::new(Builders::new(&tracker));
    loop {
        let accepted = tokio::select! {
            () = state.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let open = state.connection_opened();
                tracker.spawn(serve_connection(stream, Arc::clone(&state), Arc::clone(&builders), open));
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

/// Reads a connection's first bytes, at most the length of HTTP/2's preface,
/// until they tell HTTP/2 with prior knowledge from HTTP/1. Returns the
/// protocol and the bytes read, or `None` when the client closed first.
async fn sniff(stream: &mut TcpStream) -> io::Result<Option<(Protocol, Bytes)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < buf.len() {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
        if buf[..filled] != H2_PREFACE[..filled] {
            return Ok(Some((Protocol::Http1, Bytes::copy_from_slice(&buf[..filled]))));
        }
    }
    Ok(Some((Protocol::Http2, Bytes::copy_from_slice(&buf))))
}

async fn serve_connection(
    mut stream: TcpStream,
    state: Arc<State>,
    builders: Arc<Builders>,
    _open: OpenConnection,
) {
    let sniffed = tokio::select! {
        () = state.cancel.cancelled() => return,
        r = tokio::time::timeout(HEADER_READ_TIMEOUT, sniff(&mut stream)) => r,
    };
    let Ok(Ok(Some((protocol, prefix)))) = sniffed else { return };
    state.connection_speaks(protocol);
    let reset = Arc::new(AtomicBool::new(false));
    // On HTTP/2 a scripted reset fails its request's service, and hyper
    // resets that stream alone; the socket is not reset.
    let socket_reset = (protocol == Protocol::Http1).then(|| Arc::clone(&reset));
    let io = TokioIo::new(SimStream { inner: stream, prefix, reset: socket_reset });
    let svc_state = Arc::clone(&state);
    let service = service_fn(move |req| handle(req, Arc::clone(&svc_state), Arc::clone(&reset)));
    let conn = builders.get(protocol).serve_connection(io, service);
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
            // HTTP/1: the socket is reset; HTTP/2: hyper resets the stream.
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

/// The connection's socket, which first gives back the bytes read to tell
/// the protocol. On HTTP/1, when the handler asked for a reset, dropping it
/// sends a TCP RST instead of a FIN.
struct SimStream {
    inner: TcpStream,
    prefix: Bytes,
    reset: Option<Arc<AtomicBool>>,
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if self.reset.as_ref().is_some_and(|r| r.load(Ordering::Relaxed)) {
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
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
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
