//! Gemini: `streamGenerateContent?alt=sse`, read as a stream of
//! [`DesignEvent`]s with the silence limit measured on bytes received.

use crate::error::{ErrorBody, GoogleError, clean, http_status, retry_after_header, transport};
use crate::{GoogleClient, Inner, upstream_outcome};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::stream::{BoxStream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use terrace_domain::{DesignError, TimeoutKind, UpstreamError};
use terrace_ports::{
    DesignEvent, DesignModel, DesignRequest, DesignStream, Image, Upstream, UpstreamOutcome,
};
use tokio::time::{Instant, Sleep};

/// Finish reasons that mean the model refused (CONTRACT §3).
const BLOCKING_FINISH_REASONS: &[&str] = &[
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "RECITATION",
    "IMAGE_RECITATION",
    "SPII",
];
/// A `Progress` event at most once per this many bytes…
const PROGRESS_BYTES: usize = 64 * 1024;
/// …or once per this long, whichever comes first, while bytes keep arriving.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Largest stream read (a few base64 images are far below).
const MAX_STREAM_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The request body, serialised straight from borrowed parts (the base64
/// image, which can be megabytes, is built once and copied once).
fn request_body(request: &DesignRequest) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body<'a> {
        contents: [RequestContent<'a>; 1],
        generation_config: GenerationConfig,
    }
    #[derive(Serialize)]
    struct RequestContent<'a> {
        role: &'static str,
        parts: (TextPart<'a>, DataPart<'a>),
    }
    #[derive(Serialize)]
    struct TextPart<'a> {
        text: &'a str,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct DataPart<'a> {
        inline_data: InlineDataOut<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct InlineDataOut<'a> {
        mime_type: &'a str,
        data: &'a str,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct GenerationConfig {
        response_modalities: [&'static str; 2],
    }

    let data = base64::engine::general_purpose::STANDARD.encode(&request.source.bytes);
    let body = Body {
        contents: [RequestContent {
            role: "user",
            parts: (
                TextPart { text: &request.prompt },
                DataPart {
                    inline_data: InlineDataOut { mime_type: &request.source.content_type, data: &data },
                },
            ),
        }],
        generation_config: GenerationConfig { response_modalities: ["TEXT", "IMAGE"] },
    };
    // Sized up front: the body is mostly the base64 image, and a buffer grown
    // by doubling would carry up to as much again in slack.
    let mut out = Vec::with_capacity(data.len() + request.prompt.len() * 2 + 256);
    match serde_json::to_writer(&mut out, &body) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

#[async_trait]
impl DesignModel for GoogleClient {
    async fn generate(&self, request: DesignRequest) -> Result<DesignStream, DesignError> {
        let inner = Arc::clone(&self.inner);
        let start = Instant::now();
        match inner.open(&request).await {
            Ok(resp) => Ok(GeminiStream::new(resp, inner, start).boxed()),
            Err(e) => {
                let (outcome, timeout) = upstream_outcome(&e);
                inner.report(Upstream::Gemini, outcome, timeout, start.elapsed());
                Err(e.into())
            }
        }
    }
}

impl Inner {
    /// Sends the request and waits for successful response headers, within
    /// the connect timeout and the silence limit.
    async fn open(&self, request: &DesignRequest) -> Result<reqwest::Response, UpstreamError> {
        // Sent as a one-chunk stream with its length: a body given as bytes
        // stays referenced by the client (for redirects) until the answer
        // comes, which for a design is minutes of a large base64 image per
        // request in flight. A stream is dropped as soon as it is written.
        let body = bytes::Bytes::from(request_body(request));
        let length = body.len();
        let once = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let send = self
            .http
            .post(self.gemini_url.clone())
            .header("x-goog-api-key", self.gemini_key_header.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(once))
            .send();
        let idle = UpstreamError::Timeout { kind: TimeoutKind::Idle };
        let resp = tokio::time::timeout(self.idle_timeout, send)
            .await
            .map_err(|_| idle.clone())?
            .map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // Read Google's error body (bounded in size and silence) to learn
        // its reason and `RetryInfo.retryDelay`.
        let retry_header = retry_after_header(resp.headers());
        let key = self.gemini_key.expose();
        let body = tokio::time::timeout(self.idle_timeout, read_capped(resp, MAX_ERROR_BYTES)).await;
        let parsed = match body {
            Ok(Some(b)) => serde_json::from_slice::<ErrorBody>(&b).ok(),
            _ => None,
        };
        Err(match parsed {
            Some(b) => b.error.classify(Some(status), key, retry_header),
            None => http_status(status, retry_header, format!("HTTP {status}")),
        })
    }
}

async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Option<Bytes> {
    let mut body = BytesMut::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if body.len() + chunk.len() > cap {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body.freeze())
}

/// Why the byte stream under the SSE parser stopped.
#[derive(Debug)]
enum ByteError {
    /// No byte arrived within the silence limit.
    Idle,
    TooLarge,
    Transport(reqwest::Error),
}

/// The response bytes, cut at line ends, failing with [`ByteError::Idle`]
/// after `idle` of silence, and counted as they arrive.
///
/// Silence is measured from the moment the socket is found empty after the
/// last bytes (so time spent here parsing an event is not counted as the
/// upstream's silence), and any bytes end it: a large event that keeps
/// arriving is progress.
///
/// Only complete lines are passed on, so that the SSE parser, which re-reads
/// an incomplete line from its start on every chunk, reads each byte of a
/// multi-megabyte `data:` line once instead of once per chunk.
struct IdleBytes {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Bytes arrived since the timer was last armed.
    fresh: bool,
    received: Arc<AtomicUsize>,
    lines: LineBuffer,
}

impl IdleBytes {
    fn new(
        inner: BoxStream<'static, reqwest::Result<Bytes>>,
        idle: Duration,
        received: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            // Armed at the first wait, not when the headers arrived.
            fresh: true,
            received,
            lines: LineBuffer::default(),
        }
    }
}

impl Stream for IdleBytes {
    type Item = Result<Bytes, ByteError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let total = this.received.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
                    if total > MAX_STREAM_BYTES {
                        return Poll::Ready(Some(Err(ByteError::TooLarge)));
                    }
                    this.fresh = true;
                    if let Some(lines) = this.lines.push(&chunk) {
                        return Poll::Ready(Some(Ok(lines)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(ByteError::Transport(e)))),
                Poll::Ready(None) => return Poll::Ready(this.lines.finish().map(Ok)),
                Poll::Pending => {
                    if std::mem::take(&mut this.fresh) {
                        this.timer.as_mut().reset(Instant::now() + this.idle);
                    }
                    return match this.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(ByteError::Idle))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Holds back the incomplete last line of a byte stream.
#[derive(Debug, Default)]
struct LineBuffer {
    buf: BytesMut,
}

impl LineBuffer {
    /// Adds `chunk`; returns everything up to the last line end, if any.
    /// A `\r` at the very end is held back, as a `\n` may follow it.
    fn push(&mut self, chunk: &[u8]) -> Option<Bytes> {
        let start = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let len = self.buf.len();
        // A `\r` held back last time may now end a line.
        let from = start.saturating_sub(1);
        let end = self.buf[from..]
            .iter()
            .rposition(|&b| b == b'\n' || b == b'\r')
            .map(|i| from + i)
            .and_then(|i| {
                if self.buf[i] == b'\r' && i + 1 == len { self.last_end_before(from, i) } else { Some(i + 1) }
            })?;
        Some(self.buf.split_to(end).freeze())
    }

    /// The end of the last line strictly before `before`, searching from `from`.
    fn last_end_before(&self, from: usize, before: usize) -> Option<usize> {
        self.buf[from..before].iter().rposition(|&b| b == b'\n' || b == b'\r').map(|i| from + i + 1)
    }

    /// What is left at the end of the stream.
    fn finish(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    error: Option<GoogleError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    inline_data: Option<InlineData>,
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InlineData {
    mime_type: String,
    data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

type Events = BoxStream<'static, Result<Event, EventStreamError<ByteError>>>;

/// The design stream: SSE events turned into [`DesignEvent`]s, plus
/// `Progress` while a large event is still arriving (its `received_bytes` is
/// the stream's total so far). Ends after the first
/// error. Dropping it drops the response body, which closes the connection.
struct GeminiStream {
    events: Option<Events>,
    received: Arc<AtomicUsize>,
    /// Bytes accounted for by a completed event or a `Progress` already sent.
    reported: usize,
    last_progress: Instant,
    pending: VecDeque<Result<DesignEvent, DesignError>>,
    saw_image: bool,
    inner: Arc<Inner>,
    start: Instant,
    /// The request's outcome was reported to the observer.
    observed: bool,
}

impl GeminiStream {
    fn new(resp: reqwest::Response, inner: Arc<Inner>, start: Instant) -> Self {
        Self::over(resp.bytes_stream().boxed(), inner, start)
    }

    /// The stream over a response body's chunks.
    fn over(body: BoxStream<'static, reqwest::Result<Bytes>>, inner: Arc<Inner>, start: Instant) -> Self {
        let received = Arc::new(AtomicUsize::new(0));
        let idle = inner.idle_timeout;
        let bytes = IdleBytes::new(body, idle, Arc::clone(&received));
        Self {
            events: Some(bytes.eventsource().boxed()),
            received,
            reported: 0,
            last_progress: Instant::now(),
            pending: VecDeque::new(),
            saw_image: false,
            inner,
            start,
            observed: false,
        }
    }

    fn observe(&mut self, outcome: UpstreamOutcome, timeout: Option<TimeoutKind>) {
        if !self.observed {
            self.observed = true;
            self.inner.report(Upstream::Gemini, outcome, timeout, self.start.elapsed());
        }
    }

    /// Ends the stream with `e`: the connection is dropped at once.
    fn fail(&mut self, e: DesignError) {
        self.events = None;
        let (outcome, timeout) = match &e {
            DesignError::Upstream(u) => upstream_outcome(u),
            DesignError::Blocked { .. } | DesignError::NoImage => (UpstreamOutcome::Rejected, None),
        };
        self.observe(outcome, timeout);
        self.pending.push_back(Err(e));
    }

    fn on_event(&mut self, event: Event) {
        if event.data.trim().is_empty() {
            return;
        }
        let key = self.inner.gemini_key.expose();
        let chunk: Chunk = match serde_json::from_str(&event.data) {
            Ok(c) => c,
            Err(e) => {
                return self.fail(UpstreamError::rejected(format!("Gemini sent malformed JSON: {e}")).into());
            }
        };
        if let Some(error) = chunk.error {
            let e = error.classify(None, key, None);
            return self.fail(e.into());
        }
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            return self.fail(DesignError::Blocked { reason: clean(&reason, key) });
        }
        let mut out = Vec::new();
        for candidate in chunk.candidates.into_iter().take(1) {
            if let Some(reason) = candidate.finish_reason.as_deref()
                && BLOCKING_FINISH_REASONS.contains(&reason)
            {
                return self.fail(DesignError::Blocked { reason: reason.to_owned() });
            }
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if part.thought {
                    continue;
                }
                if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    out.push(DesignEvent::Text(text));
                }
                if let Some(data) = part.inline_data {
                    match base64::engine::general_purpose::STANDARD.decode(data.data.as_bytes()) {
                        Ok(bytes) => {
                            self.saw_image = true;
                            out.push(DesignEvent::Image(Image {
                                bytes: Bytes::from(bytes),
                                content_type: clean(&data.mime_type, key),
                            }));
                        }
                        Err(_) => {
                            return self.fail(
                                UpstreamError::rejected("Gemini sent invalid base64 image data").into(),
                            );
                        }
                    }
                }
            }
        }
        self.pending.extend(out.into_iter().map(Ok));
    }
}

impl Stream for GeminiStream {
    type Item = Result<DesignEvent, DesignError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            let Some(events) = this.events.as_mut() else { return Poll::Ready(None) };
            match events.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    this.reported = this.received.load(Ordering::Relaxed);
                    this.on_event(event);
                }
                Poll::Ready(Some(Err(e))) => {
                    let e = match e {
                        EventStreamError::Transport(ByteError::Idle) => {
                            UpstreamError::Timeout { kind: TimeoutKind::Idle }
                        }
                        EventStreamError::Transport(ByteError::TooLarge) => UpstreamError::rejected(format!(
                            "the stream is larger than {MAX_STREAM_BYTES} bytes"
                        )),
                        EventStreamError::Transport(ByteError::Transport(e)) => transport(e),
                        EventStreamError::Utf8(_) => UpstreamError::rejected("Gemini sent invalid UTF-8"),
                        EventStreamError::Parser(_) => {
                            UpstreamError::rejected("Gemini sent a malformed event stream")
                        }
                    };
                    this.fail(e.into());
                }
                Poll::Ready(None) => {
                    this.events = None;
                    let outcome =
                        if this.saw_image { UpstreamOutcome::Ok } else { UpstreamOutcome::Rejected };
                    this.observe(outcome, None);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    let received = this.received.load(Ordering::Relaxed);
                    let fresh = received.saturating_sub(this.reported);
                    if fresh > 0
                        && (fresh >= PROGRESS_BYTES || this.last_progress.elapsed() >= PROGRESS_INTERVAL)
                    {
                        this.reported = received;
                        this.last_progress = Instant::now();
                        return Poll::Ready(Some(Ok(DesignEvent::Progress { received_bytes: received })));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The design stream over `chunks` as the body of a successful response,
/// read exactly as a response from Gemini is read (lines, events, parts).
/// Polled inside a Tokio runtime with time enabled. For the fuzzer
/// (terrace-fuzz), which feeds it bytes no server sends.
#[doc(hidden)]
pub fn design_stream_over(client: &GoogleClient, chunks: Vec<Bytes>) -> DesignStream {
    let body = futures::stream::iter(chunks.into_iter().map(Ok)).boxed();
    GeminiStream::over(body, Arc::clone(&client.inner), Instant::now()).boxed()
}

impl Drop for GeminiStream {
    fn drop(&mut self) {
        // Dropped by the caller before the end: the upstream did nothing wrong.
        self.observe(UpstreamOutcome::Ok, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_pass() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"data: {\"a\""), None);
        assert_eq!(b.push(b": 1}\r\n\r"), Some(Bytes::from_static(b"data: {\"a\": 1}\r\n")));
        assert_eq!(b.push(b"\n"), Some(Bytes::from_static(b"\r\n")));
        assert_eq!(b.push(b"data: x\n\ndata: y"), Some(Bytes::from_static(b"data: x\n\n")));
        assert_eq!(b.push(b"\r"), None);
        assert_eq!(b.push(b"data"), Some(Bytes::from_static(b"data: y\r")));
        assert_eq!(b.finish(), Some(Bytes::from_static(b"data")));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn the_request_body_has_google_shape() {
        let req = DesignRequest {
            prompt: "a zen garden".into(),
            source: Image { bytes: Bytes::from_static(b"png"), content_type: "image/png".into() },
        };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&req)).expect("json");
        assert_eq!(v["contents"][0]["parts"][0]["text"], "a zen garden");
        assert_eq!(v["contents"][0]["parts"][1]["inlineData"]["mimeType"], "image/png");
        assert_eq!(v["contents"][0]["parts"][1]["inlineData"]["data"], "cG5n");
        assert_eq!(v["generationConfig"]["responseModalities"], serde_json::json!(["TEXT", "IMAGE"]));
        assert_eq!(v["contents"][0]["role"], "user");
    }
}
