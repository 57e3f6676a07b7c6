//! A local look-alike of the Google endpoints Terrace calls, speaking Google's
//! wire format, with faults on demand.
//!
//! [`Simulator::start`] binds `127.0.0.1:0` and serves, on one port, the four
//! Maps paths (`/maps/api/geocode/json`, `/maps/api/streetview/metadata`,
//! `/maps/api/streetview`, `/maps/api/staticmap`) and Gemini's
//! `/v1beta/models/{model}:streamGenerateContent?alt=sse`, so the real
//! adapters can be pointed at [`Simulator::base_url`] for tests, dev mode and
//! load runs. It requires the API keys the way Google does (`key=` for Maps,
//! `x-goog-api-key` or `key=` for Gemini) and returns a real small PNG.
//!
//! Each endpoint has a queue of one-shot [`Behaviour`]s and a default one;
//! [`Simulator::script`] and [`Simulator::set_default`] set them from Rust, and
//! `POST /_sim/script` does the same over HTTP for other processes (see
//! [`control`]). The simulator records what it saw ([`Simulator::requests`],
//! [`Simulator::stats`]), including whether the client abandoned a response
//! before its end.
//!
//! It speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the same
//! port, and allows [`MAX_CONCURRENT_STREAMS`] streams per HTTP/2 connection,
//! as Google does; [`Stats::connections`] counts the connections of each.
//!
//! Every connection task is tracked; [`Simulator::shutdown`] ends them all,
//! hanging behaviours included, within a bound. Dropping a [`Simulator`]
//! cancels its tasks too.

mod behaviour;
mod body;
pub mod control;
mod gemini;
mod maps;
mod png;
mod server;

pub use behaviour::{Behaviour, Endpoint};
pub use server::MAX_CONCURRENT_STREAMS;

use serde::Serialize;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// The loopback port to bind; 0 picks a free one.
    pub port: u16,
    /// The Maps key the simulator accepts.
    pub maps_key: String,
    /// The Gemini key the simulator accepts.
    pub gemini_key: String,
    /// Frame SSE events with `\r\n\r\n` (as Google does) instead of `\n\n`.
    pub sse_crlf: bool,
    /// How many [`RequestRecord`]s to keep; later requests are only counted.
    pub record_limit: usize,
    /// How long [`Simulator::shutdown`] waits for connection tasks to end.
    pub shutdown_timeout: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            port: 0,
            maps_key: "sim-maps-key".into(),
            gemini_key: "sim-gemini-key".into(),
            sse_crlf: true,
            record_limit: 10_000,
            shutdown_timeout: Duration::from_secs(2),
        }
    }
}

/// Failed to start the simulator.
#[derive(Debug, thiserror::Error)]
#[error("could not bind the simulator to 127.0.0.1:{port}: {source}")]
pub struct StartError {
    port: u16,
    #[source]
    source: std::io::Error,
}

/// How a request the simulator saw ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestEnd {
    /// The whole response was handed to the connection.
    Completed,
    /// The client went away (or dropped the stream) before the response ended.
    Abandoned,
    /// The simulator reset the connection, as scripted.
    Reset,
    /// The simulator shut down before the response ended.
    Shutdown,
}

/// One request the simulator saw. The API key is never recorded, only whether
/// it was right.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: u64,
    pub endpoint: Endpoint,
    /// The query parameters, `key` left out.
    pub query: Vec<(String, String)>,
    /// The right key was given the way Google requires it.
    pub key_ok: bool,
    /// What the simulator did (`Ok` for requests refused for their key).
    pub behaviour: Behaviour,
    /// Gemini: the text parts of the request, joined by newlines.
    pub prompt: Option<String>,
    /// Gemini: the MIME types and decoded sizes of the `inlineData` parts.
    pub inline_data: Vec<(String, usize)>,
    /// `None` while the response is still being sent.
    pub end: Option<RequestEnd>,
}

/// Counters for one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EndpointStats {
    pub requests: u64,
    pub key_rejected: u64,
    pub completed: u64,
    pub abandoned: u64,
    pub reset: u64,
    pub shutdown: u64,
}

impl EndpointStats {
    /// Requests whose response has not ended yet.
    pub fn in_flight(&self) -> u64 {
        self.requests.saturating_sub(self.completed + self.abandoned + self.reset + self.shutdown)
    }
}

/// The connections clients opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Of those, the ones that spoke HTTP/1.
    pub http1: u64,
    /// Of those, the ones that spoke HTTP/2 (with prior knowledge).
    pub http2: u64,
    /// Connections open now (not cleared by a reset).
    pub open: u64,
}

/// What the simulator saw, per endpoint, and its connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub geocode: EndpointStats,
    pub street_view_metadata: EndpointStats,
    pub street_view: EndpointStats,
    pub static_map: EndpointStats,
    pub gemini: EndpointStats,
    pub connections: ConnectionStats,
}

impl Stats {
    pub fn endpoint(&self, endpoint: Endpoint) -> &EndpointStats {
        match endpoint {
            Endpoint::Geocode => &self.geocode,
            Endpoint::StreetViewMetadata => &self.street_view_metadata,
            Endpoint::StreetView => &self.street_view,
            Endpoint::StaticMap => &self.static_map,
            Endpoint::Gemini => &self.gemini,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    key_rejected: AtomicU64,
    completed: AtomicU64,
    abandoned: AtomicU64,
    reset: AtomicU64,
    shutdown: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> EndpointStats {
        EndpointStats {
            requests: self.requests.load(Ordering::Relaxed),
            key_rejected: self.key_rejected.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            reset: self.reset.load(Ordering::Relaxed),
            shutdown: self.shutdown.load(Ordering::Relaxed),
        }
    }

    fn clear(&self) {
        for c in [
            &self.requests,
            &self.key_rejected,
            &self.completed,
            &self.abandoned,
            &self.reset,
            &self.shutdown,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Default)]
struct ConnectionCounters {
    accepted: AtomicU64,
    http1: AtomicU64,
    http2: AtomicU64,
    open: AtomicU64,
}

/// Counts a connection as open until it is dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<State>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

#[derive(Debug)]
struct Scripts {
    queues: [VecDeque<Behaviour>; 5],
    defaults: [Behaviour; 5],
}

impl Scripts {
    fn new() -> Self {
        Self { queues: Default::default(), defaults: std::array::from_fn(|_| Behaviour::Ok) }
    }
}

/// The pre-built answers every normal request reuses.
pub(crate) struct Canned {
    pub image: bytes::Bytes,
    pub events: gemini::Events,
    /// One design per area and style the prompts asked for.
    pub designs: gemini::Designs,
}

impl std::fmt::Debug for Canned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canned").field("image_len", &self.image.len()).finish_non_exhaustive()
    }
}

/// Everything the connection tasks share.
#[derive(Debug)]
pub(crate) struct State {
    pub maps_key: String,
    pub gemini_key: String,
    pub canned: Canned,
    pub cancel: CancellationToken,
    scripts: Mutex<Scripts>,
    latency_ms: AtomicU64,
    counters: [Counters; 5],
    connections: ConnectionCounters,
    records: Mutex<Vec<RequestRecord>>,
    record_limit: usize,
    next_id: AtomicU64,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn new(config: &SimulatorConfig, cancel: CancellationToken) -> Self {
        let image = bytes::Bytes::from(png::picture());
        let image_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &image);
        let events = gemini::Events::new(&image_b64, config.sse_crlf);
        Self {
            maps_key: config.maps_key.clone(),
            gemini_key: config.gemini_key.clone(),
            canned: Canned { image, events, designs: Default::default() },
            cancel,
            scripts: Mutex::new(Scripts::new()),
            latency_ms: AtomicU64::new(0),
            counters: Default::default(),
            connections: ConnectionCounters::default(),
            records: Mutex::new(Vec::new()),
            record_limit: config.record_limit,
            next_id: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub(crate) fn script(&self, endpoint: Endpoint, behaviour: Behaviour, times: usize) {
        let mut s = lock(&self.scripts);
        for _ in 0..times {
            s.queues[endpoint.index()].push_back(behaviour.clone());
        }
    }

    pub(crate) fn set_default(&self, endpoint: Endpoint, behaviour: Behaviour) {
        lock(&self.scripts).defaults[endpoint.index()] = behaviour;
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(latency.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn reset(&self) {
        *lock(&self.scripts) = Scripts::new();
        self.set_latency(Duration::ZERO);
        lock(&self.records).clear();
        for c in &self.counters {
            c.clear();
        }
        let c = &self.connections;
        for counter in [&c.accepted, &c.http1, &c.http2] {
            counter.store(0, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// Counts a new connection, open until the returned guard is dropped.
    pub(crate) fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections.accepted.fetch_add(1, Ordering::Relaxed);
        self.connections.open.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        OpenConnection(Arc::clone(self))
    }

    /// Counts the protocol a connection turned out to speak.
    pub(crate) fn connection_speaks(&self, protocol: server::Protocol) {
        let counter = match protocol {
            server::Protocol::Http1 => &self.connections.http1,
            server::Protocol::Http2 => &self.connections.http2,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// The next behaviour for `endpoint`: the oldest scripted one, else the default.
    fn next_behaviour(&self, endpoint: Endpoint) -> Behaviour {
        let mut s = lock(&self.scripts);
        match s.queues[endpoint.index()].pop_front() {
            Some(b) => b,
            None => s.defaults[endpoint.index()].clone(),
        }
    }

    /// Records a request and returns the guard that records how it ends.
    /// Picks the behaviour only for requests with the right key, so refused
    /// requests do not use up scripted faults.
    pub(crate) fn begin(
        self: &Arc<Self>,
        endpoint: Endpoint,
        query: Vec<(String, String)>,
        key_ok: bool,
    ) -> (RequestGuard, Behaviour) {
        let behaviour = if key_ok { self.next_behaviour(endpoint) } else { Behaviour::Ok };
        let counters = &self.counters[endpoint.index()];
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if !key_ok {
            counters.key_rejected.fetch_add(1, Ordering::Relaxed);
        }
        let id = {
            let mut records = lock(&self.records);
            // Ids are taken under the lock so that records stay sorted by id.
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if records.len() < self.record_limit {
                records.push(RequestRecord {
                    id,
                    endpoint,
                    query,
                    key_ok,
                    behaviour: behaviour.clone(),
                    prompt: None,
                    inline_data: Vec::new(),
                    end: None,
                });
            }
            id
        };
        self.changed.notify_waiters();
        (RequestGuard { state: Arc::clone(self), id, endpoint, ended: false }, behaviour)
    }

    fn with_record(&self, id: u64, f: impl FnOnce(&mut RequestRecord)) {
        let mut records = lock(&self.records);
        // Records are pushed in id order but `reset` may have cleared them.
        if let Ok(i) = records.binary_search_by_key(&id, |r| r.id) {
            f(&mut records[i]);
        }
    }

    fn end(&self, id: u64, endpoint: Endpoint, end: RequestEnd) {
        let c = &self.counters[endpoint.index()];
        let counter = match end {
            RequestEnd::Completed => &c.completed,
            RequestEnd::Abandoned => &c.abandoned,
            RequestEnd::Reset => &c.reset,
            RequestEnd::Shutdown => &c.shutdown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.with_record(id, |r| r.end = Some(end));
        self.changed.notify_waiters();
    }

    fn stats(&self) -> Stats {
        let s = |e: Endpoint| self.counters[e.index()].snapshot();
        Stats {
            geocode: s(Endpoint::Geocode),
            street_view_metadata: s(Endpoint::StreetViewMetadata),
            street_view: s(Endpoint::StreetView),
            static_map: s(Endpoint::StaticMap),
            gemini: s(Endpoint::Gemini),
            connections: ConnectionStats {
                accepted: self.connections.accepted.load(Ordering::Relaxed),
                http1: self.connections.http1.load(Ordering::Relaxed),
                http2: self.connections.http2.load(Ordering::Relaxed),
                open: self.connections.open.load(Ordering::Relaxed),
            },
        }
    }

    fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.records).clone()
    }
}

/// Records how one request ends. Dropped before [`RequestGuard::finish`], it
/// records `Abandoned` (or `Shutdown` when the simulator is shutting down).
#[derive(Debug)]
pub(crate) struct RequestGuard {
    state: Arc<State>,
    id: u64,
    endpoint: Endpoint,
    ended: bool,
}

impl RequestGuard {
    pub(crate) fn finish(&mut self, end: RequestEnd) {
        if !self.ended {
            self.ended = true;
            self.state.end(self.id, self.endpoint, end);
        }
    }

    pub(crate) fn set_request_body(&self, prompt: String, inline_data: Vec<(String, usize)>) {
        self.state.with_record(self.id, |r| {
            r.prompt = Some(prompt);
            r.inline_data = inline_data;
        });
    }

    pub(crate) fn state(&self) -> &Arc<State> {
        &self.state
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let end = if self.state.cancel.is_cancelled() { RequestEnd::Shutdown } else { RequestEnd::Abandoned };
        self.finish(end);
    }
}

/// A running simulator. See the crate documentation.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
}

impl Simulator {
    /// Binds `127.0.0.1:{config.port}` and starts serving.
    pub async fn start(config: SimulatorConfig) -> Result<Self, StartError> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
            .await
            .map_err(|source| StartError { port: config.port, source })?;
        let addr = listener.local_addr().map_err(|source| StartError { port: config.port, source })?;
        let cancel = CancellationToken::new();
        let state = Arc::new(State::new(&config, cancel.clone()));
        let tracker = TaskTracker::new();
        tracker.spawn(server::accept_loop(listener, Arc::clone(&state), tracker.clone()));
        tracing::debug!(%addr, "google simulator listening");
        Ok(Self { addr, state, cancel, tracker, shutdown_timeout: config.shutdown_timeout })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the base URL for both Maps and Gemini, over
    /// HTTP/1.1 or HTTP/2 with prior knowledge.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Maps key the simulator accepts.
    pub fn maps_key(&self) -> &str {
        &self.state.maps_key
    }

    /// The Gemini key the simulator accepts.
    pub fn gemini_key(&self) -> &str {
        &self.state.gemini_key
    }

    /// The PNG every normal image answer carries.
    pub fn image(&self) -> bytes::Bytes {
        self.state.canned.image.clone()
    }

    /// Queues a one-shot behaviour for the next request to `endpoint` that
    /// carries the right key.
    pub fn script(&self, endpoint: Endpoint, behaviour: Behaviour) {
        self.state.script(endpoint, behaviour, 1);
    }

    /// What `endpoint` does when its queue is empty.
    pub fn set_default(&self, endpoint: Endpoint, behaviour: Behaviour) {
        self.state.set_default(endpoint, behaviour);
    }

    /// A delay added before every answer, on every endpoint.
    pub fn set_latency(&self, latency: Duration) {
        self.state.set_latency(latency);
    }

    /// Clears scripts, defaults, latency, records and counters.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// The requests seen so far (up to the record limit), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.requests()
    }

    /// Counters per endpoint.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Waits until `condition` holds for the stats, at most `timeout`.
    /// Returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, mut condition: impl FnMut(&Stats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&self.stats()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.stats());
            }
        }
    }

    /// Stops accepting, ends every connection (hanging ones included) and
    /// waits for their tasks, at most the configured shutdown timeout.
    /// Returns whether every task ended in time. Idempotent; the records stay
    /// readable afterwards.
    pub async fn shutdown(&self) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(self.shutdown_timeout, self.tracker.wait()).await.is_ok()
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
