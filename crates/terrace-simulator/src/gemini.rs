//! Gemini's `streamGenerateContent?alt=sse`: Google's request checks, error
//! bodies and event shapes, and the stream faults.

use crate::body::{SimBody, Step};
use crate::png::{self, Design};
use crate::server::{Closed, KeyCheck, pause, response};
use crate::{Behaviour, RequestEnd, RequestGuard};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest request body accepted (Google's inline data limit is 20 MB).
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// How long the client may take to send its request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
const MODEL_VERSION: &str = "gemini-2.5-flash-image";
const JSON: &str = "application/json; charset=UTF-8";
const SSE: &str = "text/event-stream";

/// The events of a normal answer, framed once at start.
#[derive(Debug)]
pub(crate) struct Events {
    pub text: Bytes,
    /// The plain picture's event, for prompts that name no design.
    pub image: Arc<ImageEvent>,
    pub text_only_stop: Bytes,
    pub drip: Bytes,
    pub separator: &'static str,
}

fn usage() -> Value {
    json!({"promptTokenCount": 1290, "candidatesTokenCount": 1290, "totalTokenCount": 2580})
}

fn candidate_event(parts: Value, finish_reason: Option<&str>) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(reason) = finish_reason {
        candidate["finishReason"] = json!(reason);
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage(),
        "modelVersion": MODEL_VERSION,
        "responseId": "simulated-response",
    })
}

impl Events {
    pub(crate) fn new(image_b64: &str, crlf: bool) -> Self {
        let separator = if crlf { "\r\n\r\n" } else { "\n\n" };
        let text = candidate_event(json!([{"text": "Here is the redesigned landscape."}]), None);
        let stop = candidate_event(json!([{"text": "I could not draw this one."}]), Some("STOP"));
        let drip = candidate_event(json!([{"text": "."}]), None);
        Self {
            text: frame(&text.to_string(), separator),
            image: Arc::new(ImageEvent::new(image_b64, separator)),
            text_only_stop: frame(&stop.to_string(), separator),
            drip: frame(&drip.to_string(), separator),
            separator,
        }
    }

    fn frame(&self, value: &Value) -> Bytes {
        frame(&value.to_string(), self.separator)
    }
}

/// The event that carries one image, framed, and its JSON.
#[derive(Debug)]
pub(crate) struct ImageEvent {
    pub framed: Bytes,
    /// Unframed (padded by `TrickleImage`).
    pub json: String,
}

impl ImageEvent {
    fn new(image_b64: &str, separator: &str) -> Self {
        let image = candidate_event(
            json!([{"inlineData": {"mimeType": "image/png", "data": image_b64}}]),
            Some("STOP"),
        );
        let json = image.to_string();
        Self { framed: frame(&json, separator), json }
    }

    /// The event padded with JSON whitespace to about `size` bytes.
    fn padded(&self, size: usize, separator: &str) -> Bytes {
        let json = self.json.as_bytes();
        let pad = size.saturating_sub(json.len() + 6 + separator.len());
        let mut out = bytes::BytesMut::with_capacity(json.len() + pad + 16);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&json[..json.len() - 1]);
        out.resize(out.len() + pad, b' ');
        out.extend_from_slice(b"}");
        out.extend_from_slice(separator.as_bytes());
        out.freeze()
    }
}

/// The image events of the designs asked for so far, each built once: the
/// area and style of the prompt pick the picture (at most 6 × 7 of them).
#[derive(Debug, Default)]
pub(crate) struct Designs(Mutex<HashMap<Design, Arc<ImageEvent>>>);

impl Designs {
    /// The event for `prompt`'s design, or the plain picture's when the
    /// prompt names neither an area nor a style.
    pub(crate) fn event(&self, prompt: &str, events: &Events) -> Arc<ImageEvent> {
        let design = Design::from_prompt(prompt);
        if design.is_unnamed() {
            return events.image.clone();
        }
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let event = known.entry(design).or_insert_with(|| {
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png::design(design));
            Arc::new(ImageEvent::new(&b64, events.separator))
        });
        Arc::clone(event)
    }
}

fn frame(json: &str, separator: &str) -> Bytes {
    Bytes::from(format!("data: {json}{separator}"))
}

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// `retryDelay` as protobuf's JSON writes a `Duration`: `"7s"`, `"1.500s"`.
fn proto_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
    }
}

/// Google's error body.
pub(crate) fn google_error(code: u16, message: &str, retry_delay: Option<Duration>) -> Value {
    let mut error = json!({"code": code, "message": message, "status": status_name(code)});
    if let Some(d) = retry_delay {
        error["details"] = json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": proto_duration(d)},
        ]);
    }
    json!({"error": error})
}

fn default_message(code: u16) -> &'static str {
    match code {
        429 => "You exceeded your current quota, please check your plan and billing details.",
        500 => {
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        }
        503 => "The model is overloaded. Please try again later.",
        504 => "Deadline expired before operation could complete.",
        400 => "Request contains an invalid argument.",
        _ => "Simulated error.",
    }
}

fn error_response(
    code: u16,
    message: &str,
    retry_delay: Option<Duration>,
    guard: RequestGuard,
) -> Response<SimBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = Bytes::from(google_error(code, message, retry_delay).to_string());
    let len = body.len();
    let mut resp = response(status, JSON, SimBody::full(body, guard));
    resp.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
    resp
}

#[derive(Deserialize)]
struct GenerateRequest<'a> {
    #[serde(borrow)]
    contents: Vec<Content<'a>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(default, borrow)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    text: Option<String>,
    #[serde(rename = "inlineData", borrow)]
    inline_data: Option<InlineData<'a>>,
}

#[derive(Deserialize)]
struct InlineData<'a> {
    #[serde(rename = "mimeType")]
    mime_type: String,
    /// Borrowed from the request body when it has no escapes (base64 needs none).
    #[serde(borrow)]
    data: Cow<'a, str>,
}

/// The decoded length of standard, padded base64, without decoding it.
fn base64_len(data: &str) -> Option<usize> {
    let b = data.as_bytes();
    if b.len() % 4 != 0 {
        return None;
    }
    let padding = b.iter().rev().take_while(|&&c| c == b'=').count();
    let body = &b[..b.len() - padding];
    let valid = padding <= 2 && body.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/');
    valid.then(|| b.len() / 4 * 3 - padding)
}

/// The prompt and inline data of a request body, or why Google would refuse it.
fn parse_request(body: &[u8]) -> Result<(String, Vec<(String, usize)>), String> {
    let req: GenerateRequest =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}"))?;
    let mut texts = Vec::new();
    let mut inline = Vec::new();
    for part in req.contents.iter().flat_map(|c| &c.parts) {
        if let Some(t) = &part.text {
            texts.push(t.as_str());
        }
        if let Some(d) = &part.inline_data {
            let len = base64_len(&d.data).ok_or_else(|| {
                "Invalid value at 'contents[0].parts[1].inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                    .to_owned()
            })?;
            inline.push((d.mime_type.clone(), len));
        }
        if part.text.is_none() && part.inline_data.is_none() {
            return Err(
                "* GenerateContentRequest.contents[0].parts: contents.parts must not be empty.".into()
            );
        }
    }
    if texts.is_empty() && inline.is_empty() {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    }
    Ok((texts.join("\n"), inline))
}

/// Answers a Gemini request: key checks, body checks, then `behaviour`.
pub(crate) async fn answer(
    req: Request<Incoming>,
    query: &[(String, String)],
    key: KeyCheck,
    behaviour: Behaviour,
    mut guard: RequestGuard,
    reset: &Arc<AtomicBool>,
) -> Result<Response<SimBody>, Closed> {
    match key {
        KeyCheck::Ok => {}
        KeyCheck::Missing => {
            let msg = "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.";
            return Ok(error_response(403, msg, None, guard));
        }
        KeyCheck::Wrong => {
            return Ok(error_response(400, "API key not valid. Please pass a valid API key.", None, guard));
        }
    }
    if behaviour == Behaviour::ConnectionReset {
        reset.store(true, Ordering::Relaxed);
        guard.finish(RequestEnd::Reset);
        return Err(Closed);
    }
    let state = Arc::clone(guard.state());
    // Read the whole request body first, as Google does; this also lets the
    // connection notice a client that goes away while we hang.
    let collected = tokio::select! {
        () = state.cancel.cancelled() => return Err(Closed),
        r = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect()) => r,
    };
    let body = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => return Ok(error_response(400, "Request payload size exceeds the limit.", None, guard)),
        Err(_) => return Err(Closed),
    };
    let parsed = parse_request(&body);
    // Not held through the latency and the answer: under load, thousands of
    // multi-megabyte bodies would be.
    drop(body);
    let image = match parsed {
        Ok((prompt, inline)) => {
            let image = state.canned.designs.event(&prompt, &state.canned.events);
            guard.set_request_body(prompt, inline);
            image
        }
        Err(msg) => return Ok(error_response(400, &msg, None, guard)),
    };
    if !query.iter().any(|(k, v)| k == "alt" && v == "sse") {
        return Ok(error_response(400, "The simulator only streams with alt=sse.", None, guard));
    }
    let delay = match &behaviour {
        Behaviour::Latency { delay } => *delay,
        _ => Duration::ZERO,
    };
    pause(&state, state.latency() + delay).await?;

    let events = &state.canned.events;
    let steps: Vec<Step> = match behaviour {
        Behaviour::HangBeforeHeaders => {
            state.cancel.cancelled().await;
            return Err(Closed);
        }
        Behaviour::Status { status, retry_delay } => {
            return Ok(error_response(status, default_message(status), retry_delay, guard));
        }
        Behaviour::StallAfterFirstEvent => vec![Step::Send(events.text.clone()), Step::Hang],
        Behaviour::DripEvents { every } => {
            vec![Step::Send(events.text.clone()), Step::Repeat { data: events.drip.clone(), every }]
        }
        Behaviour::MalformedJson => {
            vec![Step::Send(frame("{\"candidates\": [{\"content\": {\"parts\": [", events.separator))]
        }
        Behaviour::BlockedPrompt { reason } => vec![Step::Send(events.frame(&json!({
            "promptFeedback": {"blockReason": reason},
            "usageMetadata": {"promptTokenCount": 1290, "totalTokenCount": 1290},
            "modelVersion": MODEL_VERSION,
            "responseId": "simulated-response",
        })))],
        Behaviour::BlockedFinish { reason } => vec![Step::Send(events.frame(&json!({
            "candidates": [{"finishReason": reason, "index": 0}],
            "usageMetadata": usage(),
            "modelVersion": MODEL_VERSION,
            "responseId": "simulated-response",
        })))],
        Behaviour::ErrorEvent { status } => vec![
            Step::Send(events.text.clone()),
            Step::Send(events.frame(&google_error(status, default_message(status), None))),
        ],
        Behaviour::NoImage => {
            vec![Step::Send(events.text.clone()), Step::Send(events.text_only_stop.clone())]
        }
        Behaviour::TrickleImage { size, chunk, every } => {
            let mut steps = vec![Step::Send(events.text.clone())];
            steps.extend(SimBody::chunked_steps(image.padded(size, events.separator), chunk, every));
            steps
        }
        Behaviour::Ok
        | Behaviour::Latency { .. }
        | Behaviour::MapsStatus { .. }
        | Behaviour::ConnectionReset => {
            vec![Step::Send(events.text.clone()), Step::Send(image.framed.clone())]
        }
    };
    Ok(response(StatusCode::OK, SSE, SimBody::new(steps, guard)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn retry_delays_read_like_protobuf_durations() {
        assert_eq!(proto_duration(Duration::from_secs(7)), "7s");
        assert_eq!(proto_duration(Duration::from_millis(1500)), "1.500s");
    }

    #[test]
    fn padded_image_events_stay_valid_json() {
        let events = Events::new("aGVsbG8=", true);
        let padded = events.image.padded(10_000, events.separator);
        assert!((10_000..10_010).contains(&padded.len()));
        let text = std::str::from_utf8(&padded).expect("utf8");
        let json = text.strip_prefix("data: ").and_then(|t| t.strip_suffix("\r\n\r\n")).expect("framed");
        let v: Value = serde_json::from_str(json).expect("valid json");
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["inlineData"]["data"], "aGVsbG8=");
    }

    #[test]
    fn base64_lengths_match_decoding() {
        for n in 0..20 {
            let data = vec![7u8; n];
            let text = base64::engine::general_purpose::STANDARD.encode(&data);
            assert_eq!(base64_len(&text), Some(n), "{text}");
        }
        assert_eq!(base64_len("a=b="), None);
        assert_eq!(base64_len("abc"), None);
        assert_eq!(base64_len("a==="), None);
    }

    #[test]
    fn requests_without_parts_are_refused() {
        assert!(parse_request(br#"{"contents":[]}"#).is_err());
        assert!(
            parse_request(
                br#"{"contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"!!"}}]}]}"#
            )
            .is_err()
        );
        let (prompt, inline) = parse_request(
            br#"{"contents":[{"parts":[{"text":"draw"},{"inlineData":{"mimeType":"image/png","data":"aGVsbG8="}}]}]}"#,
        )
        .expect("valid");
        assert_eq!(prompt, "draw");
        assert_eq!(inline, vec![("image/png".to_owned(), 5)]);
    }
}
