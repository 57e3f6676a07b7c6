//! A scripted stand-in for Terrace's API: each endpoint answers from a queue
//! and counts what it saw, so the tests can prove what the client sent.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

pub fn generation(id: Uuid, status: &str, progress: u8) -> Value {
    json!({
        "id": id, "user_id": Uuid::nil(), "request_id": "r1", "status": status,
        "address": "12 Garden Lane", "geocoded_address": null, "location": null,
        "cost": 1, "captured": 0, "voided": 0,
        "areas": [{"area": "patio", "style": "japanese_zen", "status": if status == "completed" { "completed" } else { "processing" },
                   "stage": "generating_design", "progress": progress, "image_url": null, "error": null, "completed_at": null}],
        "error": null,
        "created_at": "2026-01-01T00:00:00Z", "started_at": null, "completed_at": null,
        "deadline_at": "2026-01-01T00:05:00Z"
    })
}

/// How the event stream answers.
#[derive(Debug, Clone)]
pub enum Events {
    /// These snapshots, then the end.
    Send(Vec<Value>),
    /// These snapshots, then keepalive comments forever.
    SendThenKeepalive(Vec<Value>),
    /// An HTTP status with a problem body.
    Status(u16),
}

/// One scripted answer: a status, a body, and an optional Retry-After.
pub type Answer = (u16, Value, Option<&'static str>);

#[derive(Debug)]
pub struct Script {
    pub creates: Mutex<VecDeque<Answer>>,
    pub keys: Mutex<Vec<String>>,
    pub events: Mutex<Events>,
    pub polls: Mutex<(VecDeque<Answer>, Option<Answer>)>,
    /// Requests to GET /v1/generations/{id}.
    pub gets: AtomicU32,
    /// Requests to the event stream.
    pub event_requests: AtomicU32,
    /// Event streams whose body is still held by a connection.
    pub open_streams: Arc<AtomicI32>,
    /// The n-th poll answers "processing" with progress n when no script is left.
    pub counting_polls: bool,
}

impl Script {
    pub fn new(events: Events) -> Arc<Self> {
        Arc::new(Self {
            creates: Mutex::default(),
            keys: Mutex::default(),
            events: Mutex::new(events),
            polls: Mutex::default(),
            gets: AtomicU32::new(0),
            event_requests: AtomicU32::new(0),
            open_streams: Arc::default(),
            counting_polls: false,
        })
    }
}

fn problem(status: u16, code: &str) -> Value {
    json!({"type": "about:blank", "title": code, "status": status, "detail": code, "code": code, "request_id": "r1"})
}

pub fn problem_answer(status: u16, code: &str, retry_after: Option<&'static str>) -> Answer {
    (status, problem(status, code), retry_after)
}

fn respond((status, body, retry_after): Answer) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    if let Some(ra) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, ra.parse().unwrap());
    }
    r
}

async fn create(State(s): State<Arc<Script>>, headers: HeaderMap) -> Response {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    s.keys.lock().unwrap().push(key.to_owned());
    let next = s.creates.lock().unwrap().pop_front();
    respond(next.unwrap_or_else(|| problem_answer(500, "unscripted", None)))
}

async fn poll(State(s): State<Arc<Script>>) -> Response {
    let n = s.gets.fetch_add(1, Ordering::SeqCst) + 1;
    let next = {
        let mut p = s.polls.lock().unwrap();
        p.0.pop_front().or_else(|| p.1.clone())
    };
    match next {
        Some(a) => respond(a),
        None if s.counting_polls => respond((200, generation(Uuid::nil(), "processing", n as u8), None)),
        None => respond(problem_answer(500, "unscripted", None)),
    }
}

/// Decrements the open-stream count when the body is dropped.
struct Open(Arc<AtomicI32>);
impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn events(State(s): State<Arc<Script>>) -> Response {
    s.event_requests.fetch_add(1, Ordering::SeqCst);
    let script = s.events.lock().unwrap().clone();
    let (snapshots, keepalive) = match script {
        Events::Status(code) => return respond(problem_answer(code, "scripted", None)),
        Events::Send(v) => (v, false),
        Events::SendThenKeepalive(v) => (v, true),
    };
    s.open_streams.fetch_add(1, Ordering::SeqCst);
    let open = Open(s.open_streams.clone());
    let frames: VecDeque<String> =
        snapshots.iter().map(|g| format!("event: generation\ndata: {g}\n\n")).collect();
    let body = futures::stream::unfold((frames, open), move |(mut frames, open)| async move {
        match frames.pop_front() {
            Some(f) => Some((Ok::<_, Infallible>(f), (frames, open))),
            None if keepalive => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok(": keepalive\n\n".to_owned()), (frames, open)))
            }
            None => None,
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

/// Serves `script` on a free loopback port; returns the base URL. The
/// server lives as long as the test's runtime.
pub async fn serve(script: Arc<Script>) -> String {
    let app = Router::new()
        .route("/v1/generations", post(create))
        .route("/v1/generations/{id}", get(poll))
        .route("/v1/generations/{id}/events", get(events))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}
