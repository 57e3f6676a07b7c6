//! A simulator, an adapter pointed at it, and an observer that remembers.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_domain::{
    Classify, DesignError, GenerationStatus, GeocodeError, ImageryError, TimeoutKind, UpstreamError,
};
use terrace_google::{ApiKey, DEFAULT_STREAMS_PER_CONNECTION, GoogleClient, GoogleConfig, HttpVersion};
use terrace_ports::{Observer, Upstream, UpstreamOutcome};
use terrace_simulator::{Simulator, SimulatorConfig};

pub const MAPS_TIMEOUT: Duration = Duration::from_millis(400);
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(300);
/// How late a wait may end past its deadline (scheduling on a busy 2-core
/// machine running tests in parallel).
pub const MARGIN: Duration = Duration::from_millis(700);
/// Keys nobody would type by accident, to look for in errors.
pub const MAPS_KEY: &str = "maps-SECRET-7f3a9c";
pub const GEMINI_KEY: &str = "gemini-SECRET-41be0d";

#[derive(Debug, Default)]
pub struct Recorder {
    pub requests: Mutex<Vec<(Upstream, UpstreamOutcome)>>,
    pub timeouts: Mutex<Vec<(Upstream, TimeoutKind)>>,
}

impl Observer for Recorder {
    fn upstream_request(&self, upstream: Upstream, outcome: UpstreamOutcome, _: Duration) {
        self.requests.lock().unwrap().push((upstream, outcome));
    }
    fn upstream_timeout(&self, upstream: Upstream, kind: TimeoutKind) {
        self.timeouts.lock().unwrap().push((upstream, kind));
    }
    fn generation_finished(&self, _: GenerationStatus, _: Duration) {}
    fn hold_voided(&self, _: terrace_domain::ErrorCode) {}
}

impl Recorder {
    pub fn requests(&self) -> Vec<(Upstream, UpstreamOutcome)> {
        self.requests.lock().unwrap().clone()
    }
    pub fn timeouts(&self) -> Vec<(Upstream, TimeoutKind)> {
        self.timeouts.lock().unwrap().clone()
    }
}

pub struct Harness {
    pub sim: Simulator,
    pub client: GoogleClient,
    pub recorder: Arc<Recorder>,
}

pub fn sim_config(sse_crlf: bool) -> SimulatorConfig {
    SimulatorConfig {
        maps_key: MAPS_KEY.into(),
        gemini_key: GEMINI_KEY.into(),
        sse_crlf,
        ..SimulatorConfig::default()
    }
}

pub fn config(maps: &str, gemini: &str, maps_key: &str, gemini_key: &str) -> GoogleConfig {
    GoogleConfig {
        maps_base_url: maps.into(),
        gemini_base_url: gemini.into(),
        gemini_model: "gemini-2.5-flash-image".into(),
        maps_api_key: ApiKey::new(maps_key),
        gemini_api_key: ApiKey::new(gemini_key),
        maps_timeout: MAPS_TIMEOUT,
        llm_connect_timeout: CONNECT_TIMEOUT,
        llm_idle_timeout: IDLE_TIMEOUT,
        http: HttpVersion::Auto,
        streams_per_connection: DEFAULT_STREAMS_PER_CONNECTION,
    }
}

pub async fn harness_with(sim: SimulatorConfig) -> Harness {
    harness_idle(sim, IDLE_TIMEOUT).await
}

/// A harness whose Gemini silence limit is `idle`.
pub async fn harness_idle(sim: SimulatorConfig, idle: Duration) -> Harness {
    harness_configured(sim, |c| c.llm_idle_timeout = idle).await
}

/// A harness whose adapter's configuration `adjust` changed.
pub async fn harness_configured(sim: SimulatorConfig, adjust: impl FnOnce(&mut GoogleConfig)) -> Harness {
    let sim = Simulator::start(sim).await.expect("simulator starts");
    let recorder = Arc::new(Recorder::default());
    let base = sim.base_url();
    let mut config = config(&base, &base, MAPS_KEY, GEMINI_KEY);
    adjust(&mut config);
    let client = GoogleClient::new(config, recorder.clone()).expect("client builds");
    Harness { sim, client, recorder }
}

/// A harness whose adapter speaks HTTP/2 with prior knowledge, at most
/// `streams` requests per connection, with the silence limit `idle`.
pub async fn harness_http2(idle: Duration, streams: usize) -> Harness {
    harness_configured(sim_config(true), |c| {
        c.http = HttpVersion::Http2;
        c.streams_per_connection = streams;
        c.llm_idle_timeout = idle;
    })
    .await
}

pub async fn harness() -> Harness {
    harness_with(sim_config(true)).await
}

impl Harness {
    /// Checks that every connection the simulator saw spoke HTTP/2, then
    /// shuts it down.
    pub async fn finish_http2(self) {
        let connections = self.sim.stats().connections;
        assert!(connections.http2 >= 1 && connections.http1 == 0, "{connections:?}");
        self.finish().await;
    }

    /// Shuts the simulator down and checks that every task ended in time.
    pub async fn finish(self) {
        assert!(self.sim.shutdown().await, "simulator tasks did not end within the shutdown bound");
    }
}

/// What a call should end with.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Ok,
    /// Metadata: no panorama.
    NoPanorama,
    NotFound,
    NoImagery,
    Blocked(&'static str),
    /// The design stream ended without an image (and without an error).
    NoImage,
    Unavailable {
        retry_after: Option<Duration>,
    },
    Rejected,
    Timeout(TimeoutKind),
}

impl Expect {
    pub const UNAVAILABLE: Expect = Expect::Unavailable { retry_after: None };

    pub fn outcome(&self) -> UpstreamOutcome {
        match self {
            Expect::Ok | Expect::NoPanorama => UpstreamOutcome::Ok,
            Expect::NotFound
            | Expect::NoImagery
            | Expect::Blocked(_)
            | Expect::NoImage
            | Expect::Rejected => UpstreamOutcome::Rejected,
            Expect::Unavailable { .. } => UpstreamOutcome::Unavailable,
            Expect::Timeout(_) => UpstreamOutcome::Timeout,
        }
    }

    /// The longest the call may take.
    pub fn bound(&self, maps: bool) -> Duration {
        match self {
            Expect::Timeout(TimeoutKind::Connect) => CONNECT_TIMEOUT + MARGIN,
            Expect::Timeout(TimeoutKind::Idle) => IDLE_TIMEOUT + MARGIN,
            _ if maps => MAPS_TIMEOUT + MARGIN,
            _ => IDLE_TIMEOUT + MARGIN,
        }
    }
}

/// Checks an upstream error against the expectation.
pub fn check_upstream(e: &UpstreamError, expect: &Expect) {
    match (e, expect) {
        (UpstreamError::Timeout { kind }, Expect::Timeout(k)) => assert_eq!(kind, k),
        (UpstreamError::Unavailable { retry_after, .. }, Expect::Unavailable { retry_after: want }) => {
            assert_eq!(retry_after, want, "retry-after hint");
        }
        (UpstreamError::Rejected { .. }, Expect::Rejected) => {}
        _ => panic!("expected {expect:?}, got {e:?}"),
    }
    let retryable_expected = matches!(expect, Expect::Timeout(_) | Expect::Unavailable { .. });
    assert_eq!(e.retryable(), retryable_expected, "retryable() of {e:?}");
}

pub fn check_geocode<T: std::fmt::Debug>(r: &Result<T, GeocodeError>, expect: &Expect) {
    match (r, expect) {
        (Ok(_), Expect::Ok) => {}
        (Err(GeocodeError::NotFound), Expect::NotFound) => {
            assert!(!GeocodeError::NotFound.retryable());
        }
        (Err(GeocodeError::Upstream(e)), _) => check_upstream(e, expect),
        _ => panic!("expected {expect:?}, got {r:?}"),
    }
}

pub fn check_imagery<T: std::fmt::Debug>(r: &Result<T, ImageryError>, expect: &Expect) {
    match (r, expect) {
        (Ok(_), Expect::Ok) => {}
        (Err(ImageryError::NoImagery), Expect::NoImagery) => {}
        (Err(ImageryError::Upstream(e)), _) => check_upstream(e, expect),
        _ => panic!("expected {expect:?}, got {r:?}"),
    }
}

pub fn check_design(r: &Result<(), DesignError>, expect: &Expect) {
    match (r, expect) {
        (Ok(()), Expect::Ok | Expect::NoImage) => {}
        (Err(DesignError::Blocked { reason }), Expect::Blocked(want)) => {
            assert_eq!(reason, want);
            assert!(!r.as_ref().unwrap_err().retryable());
        }
        (Err(DesignError::Upstream(e)), _) => check_upstream(e, expect),
        _ => panic!("expected {expect:?}, got {r:?}"),
    }
}

/// No key in anything printed about a result.
pub fn assert_no_key(text: &str) {
    assert!(!text.contains(MAPS_KEY) && !text.contains(GEMINI_KEY), "a key leaked: {text}");
}

/// A loopback port that refuses connections for as long as the returned
/// socket lives: it is bound (so no other test can take it) but never
/// listens.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind("127.0.0.1:0".parse().expect("an address")).expect("binds");
    let port = socket.local_addr().expect("addr").port();
    (socket, port)
}
