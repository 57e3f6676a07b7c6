//! Gemini: `streamGenerateContent?alt=sse`, read as a stream of
//! [`DesignEvent`]s with the silence limit measured on bytes received.

use crate::error::{ErrorBody, GoogleError, clean, http_status, retry_after_header, transport};
use crate::lanes::LaneGuard;
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
            Ok((resp, lane)) => Ok(GeminiStream::new(resp, lane, inner, start).boxed()),
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
    /// the connect timeout and the silence limit. The response comes with its
    /// place on a lane, for the stream to hold until it ends or is dropped.
    async fn open(&self, request: &DesignRequest) -> Result<(reqwest::Response, LaneGuard), UpstreamError> {
        // Sent as a one-chunk stream with its length: a body given as bytes
        // stays referenced by the client (for redirects) until the answer
        // comes, which for a design is minutes of a large base64 image per
        // request in flight. A stream is dropped as soon as it is written.
        let body = bytes::Bytes::from(request_body(request));
        let length = body.len();
        let once = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let lane = self.gemini.acquire();
        let send = lane
            .http()
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
            return Ok((resp, lane));
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
    /// A line is not UTF-8.
    Utf8,
    Transport(reqwest::Error),
}

/// The response bytes, one line at a time, failing with [`ByteError::Idle`]
/// after `idle` of silence, and counted as they arrive.
///
/// Silence is measured from the moment the socket is found empty after the
/// last bytes (so time spent here parsing an event is not counted as the
/// upstream's silence), and any bytes end it: a large event that keeps
/// arriving is progress.
///
/// The SSE parser is handed one complete line at a time, checked to be
/// UTF-8, so that it reads each byte once: it re-reads an incomplete line
/// from its start on every chunk, copies what follows each line it parses,
/// and holds everything after a byte that is not UTF-8 until the stream
/// ends. The stream's byte-order mark is removed here, and the first line
/// handed over is a blank one (which dispatches nothing), because the
/// parser's own removal of the mark panics.
struct IdleBytes {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Bytes arrived since the timer was last armed.
    fresh: bool,
    received: Arc<AtomicUsize>,
    lines: LineBuffer,
    /// The blank first line was handed over.
    opened: bool,
    /// The response body ended.
    ended: bool,
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
            opened: false,
            ended: false,
        }
    }
}

fn utf8(line: Bytes) -> Result<Bytes, ByteError> {
    if std::str::from_utf8(&line).is_ok() { Ok(line) } else { Err(ByteError::Utf8) }
}

impl Stream for IdleBytes {
    type Item = Result<Bytes, ByteError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !std::mem::replace(&mut this.opened, true) {
            return Poll::Ready(Some(Ok(Bytes::from_static(b"\n"))));
        }
        loop {
            if let Some(line) = this.lines.next_line() {
                return Poll::Ready(Some(utf8(line)));
            }
            if this.ended {
                return Poll::Ready(this.lines.finish().map(utf8));
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let total = this.received.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
                    if total > MAX_STREAM_BYTES {
                        return Poll::Ready(Some(Err(ByteError::TooLarge)));
                    }
                    this.fresh = true;
                    this.lines.push(&chunk);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(ByteError::Transport(e)))),
                Poll::Ready(None) => this.ended = true,
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

/// A byte stream cut into lines, each with its end (`\n`, `\r\n` or `\r`),
/// the stream's byte-order mark removed.
#[derive(Debug, Default)]
struct LineBuffer {
    buf: BytesMut,
    /// `buf[..scanned]` holds no line end: it is not searched again.
    scanned: usize,
    /// The first line was taken.
    started: bool,
}

impl LineBuffer {
    fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line. A `\r` at the very end is held back, as a
    /// `\n` may follow it.
    fn next_line(&mut self) -> Option<Bytes> {
        let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n' || b == b'\r') else {
            self.scanned = self.buf.len();
            return None;
        };
        let i = self.scanned + i;
        let end = match self.buf.get(i + 1) {
            _ if self.buf[i] == b'\n' => i + 1,
            None => {
                self.scanned = i;
                return None;
            }
            Some(b'\n') => i + 2,
            Some(_) => i + 1,
        };
        Some(self.take(end))
    }

    /// What is left at the end of the stream.
    fn finish(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.take(self.buf.len()))
    }

    fn take(&mut self, end: usize) -> Bytes {
        self.scanned = 0;
        let mut line = self.buf.split_to(end);
        if !std::mem::replace(&mut self.started, true) && line.starts_with("\u{feff}".as_bytes()) {
            let _ = line.split_to(3);
        }
        line.freeze()
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
/// the stream's total so far). Ends after the first error. Dropping it drops
/// the response body, which closes the connection (HTTP/1.1) or resets the
/// stream (HTTP/2), and frees its place on the lane.
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
    /// The request's place on its lane, held while the response body is:
    /// until the stream ends or is dropped (`None` for a stream over given
    /// bytes, and once the body is gone).
    lane: Option<LaneGuard>,
}

impl GeminiStream {
    fn new(resp: reqwest::Response, lane: LaneGuard, inner: Arc<Inner>, start: Instant) -> Self {
        Self::over(resp.bytes_stream().boxed(), Some(lane), inner, start)
    }

    /// The stream over a response body's chunks.
    fn over(
        body: BoxStream<'static, reqwest::Result<Bytes>>,
        lane: Option<LaneGuard>,
        inner: Arc<Inner>,
        start: Instant,
    ) -> Self {
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
            lane,
        }
    }

    /// Drops the response body, and with it the request's place on its lane.
    fn close(&mut self) {
        self.events = None;
        self.lane = None;
    }

    fn observe(&mut self, outcome: UpstreamOutcome, timeout: Option<TimeoutKind>) {
        if !self.observed {
            self.observed = true;
            self.inner.report(Upstream::Gemini, outcome, timeout, self.start.elapsed());
        }
    }

    /// Ends the stream with `e`: the response body is dropped at once.
    fn fail(&mut self, e: DesignError) {
        self.close();
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
                // serde quotes the input it could not read: masked like Google's words.
                let detail = clean(&format!("Gemini sent malformed JSON: {e}"), key);
                return self.fail(UpstreamError::rejected(detail).into());
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
                        EventStreamError::Transport(ByteError::Utf8) | EventStreamError::Utf8(_) => {
                            UpstreamError::rejected("Gemini sent invalid UTF-8")
                        }
                        EventStreamError::Parser(_) => {
                            UpstreamError::rejected("Gemini sent a malformed event stream")
                        }
                    };
                    this.fail(e.into());
                }
                Poll::Ready(None) => {
                    this.close();
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
    GeminiStream::over(body, None, Arc::clone(&client.inner), Instant::now()).boxed()
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
    fn only_complete_lines_pass_one_at_a_time() {
        let mut b = LineBuffer::default();
        let line = |s: &'static [u8]| Some(Bytes::from_static(s));
        b.push("\u{feff}data: {\"a\"".as_bytes());
        assert_eq!(b.next_line(), None);
        b.push(b": 1}\r\n\r");
        assert_eq!(b.next_line(), line(b"data: {\"a\": 1}\r\n"), "the byte-order mark is removed");
        assert_eq!(b.next_line(), None, "a \\r at the end may be half of \\r\\n");
        b.push(b"\n");
        assert_eq!(b.next_line(), line(b"\r\n"));
        b.push(b"data: x\n\ndata: y");
        assert_eq!(b.next_line(), line(b"data: x\n"));
        assert_eq!(b.next_line(), line(b"\n"));
        assert_eq!(b.next_line(), None);
        b.push(b"\r");
        assert_eq!(b.next_line(), None);
        b.push(b"data");
        assert_eq!(b.next_line(), line(b"data: y\r"));
        assert_eq!(b.next_line(), None);
        b.push("\u{feff}\r".as_bytes());
        assert_eq!(b.finish(), Some(Bytes::from("data\u{feff}\r")), "only the stream's first mark goes");
        assert_eq!(b.finish(), None);
    }

    /// What the event parser is handed for `body`, in `chunk`-byte chunks.
    fn handed(body: &'static [u8], chunk: usize) -> Vec<Result<Bytes, String>> {
        let chunks: Vec<reqwest::Result<Bytes>> =
            body.chunks(chunk).map(|c| Ok(Bytes::from_static(c))).collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            let bytes = IdleBytes::new(
                futures::stream::iter(chunks).boxed(),
                Duration::from_secs(60),
                Arc::new(AtomicUsize::new(0)),
            );
            bytes.map(|r| r.map_err(|e| format!("{e:?}"))).collect().await
        })
    }

    #[test]
    fn the_parser_is_handed_a_blank_line_then_one_utf8_line_at_a_time() {
        let ok = |s: &'static str| Ok(Bytes::from_static(s.as_bytes()));
        for chunk in [1, 2, 5, 100] {
            assert_eq!(
                handed("\u{feff}\u{feff}a\r\n\rb\nc".as_bytes(), chunk),
                [ok("\n"), ok("\u{feff}a\r\n"), ok("\r"), ok("b\n"), ok("c")],
                "{chunk}"
            );
            assert_eq!(handed(b"a\n\xff\nb\n", chunk), [ok("\n"), ok("a\n"), Err("Utf8".into()), ok("b\n")]);
        }
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
