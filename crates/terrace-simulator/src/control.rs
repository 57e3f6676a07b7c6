//! The control endpoint, for load and chaos runs in other processes. Same
//! port as the Google paths, no key:
//!
//! | request | effect |
//! |---|---|
//! | `POST /_sim/script` `{"endpoint": "gemini", "behaviour": {"kind": "hang_before_headers"}, "times": 3}` | queues the behaviour `times` times (default 1) |
//! | `POST /_sim/script` `{"endpoint": "geocode", "behaviour": {"kind": "latency", "delay_ms": 200}, "default": true}` | sets the endpoint's default |
//! | `POST /_sim/latency` `{"delay_ms": 50}` | a delay before every answer |
//! | `POST /_sim/reset` | clears scripts, defaults, latency, records and counters |
//! | `GET /_sim/stats` | [`crate::Stats`] as JSON: per endpoint, and `connections` (`accepted`, `http1`, `http2`, `open`) |
//! | `GET /_sim/requests` | the [`crate::RequestRecord`]s as JSON |
//!
//! Answers are 204 on success, 400 with a one-line reason otherwise.

use crate::body::SimBody;
use crate::server::plain;
use crate::{Behaviour, Endpoint, State};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use std::time::Duration;

const MAX_BODY: usize = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `POST /_sim/script`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    pub endpoint: Endpoint,
    pub behaviour: Behaviour,
    /// How many times to queue it (ignored with `default`).
    #[serde(default = "one")]
    pub times: usize,
    /// Set the endpoint's default instead of queueing.
    #[serde(default)]
    pub default: bool,
}

fn one() -> usize {
    1
}

/// The body of `POST /_sim/latency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyRequest {
    pub delay_ms: u64,
}

fn json_response(state: &State, value: &impl serde::Serialize) -> Response<SimBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(SimBody::untracked(body, state));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn bad_request(state: &State, reason: String) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::untracked(reason, state));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp
}

fn no_content(state: &State) -> Response<SimBody> {
    plain(state, StatusCode::NO_CONTENT, "text/plain", "")
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let collected = tokio::time::timeout(READ_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect())
        .await
        .map_err(|_| "the body did not arrive in time".to_owned())?
        .map_err(|e| format!("could not read the body: {e}"))?;
    serde_json::from_slice(&collected.to_bytes()).map_err(|e| format!("invalid body: {e}"))
}

pub(crate) async fn handle(req: Request<Incoming>, state: &State) -> Response<SimBody> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/_sim/script") => match read_json::<ScriptRequest>(req).await {
            Ok(s) if s.default => {
                state.set_default(s.endpoint, s.behaviour);
                no_content(state)
            }
            Ok(s) => {
                state.script(s.endpoint, s.behaviour, s.times.min(100_000));
                no_content(state)
            }
            Err(e) => bad_request(state, e),
        },
        (Method::POST, "/_sim/latency") => match read_json::<LatencyRequest>(req).await {
            Ok(l) => {
                state.set_latency(Duration::from_millis(l.delay_ms));
                no_content(state)
            }
            Err(e) => bad_request(state, e),
        },
        (Method::POST, "/_sim/reset") => {
            state.reset();
            no_content(state)
        }
        (Method::GET, "/_sim/stats") => json_response(state, &state.stats()),
        (Method::GET, "/_sim/requests") => json_response(state, &state.requests()),
        _ => plain(state, StatusCode::NOT_FOUND, "text/plain", "no such control endpoint"),
    }
}
