//! Google over HTTP: the geocoding, imagery and design-model ports on Maps and
//! Gemini, called with `reqwest` (no SDK).
//!
//! [`GoogleClient`] implements [`Geocoder`](terrace_ports::Geocoder),
//! [`Imagery`](terrace_ports::Imagery) and
//! [`DesignModel`](terrace_ports::DesignModel). Every call is ONE request and
//! never retries: it classifies Google's answer into the domain's errors
//! (see `docs/GOOGLE.md`) and the engine retries what is retryable.
//!
//! Bounds:
//! - Maps: [`GoogleConfig::maps_timeout`] on the whole request, connect to
//!   last body byte → `Timeout { kind: Request }`.
//! - Gemini: [`GoogleConfig::llm_connect_timeout`] on the connect →
//!   `Timeout { kind: Connect }`; [`GoogleConfig::llm_idle_timeout`] on the
//!   silence before the response headers and between any two chunks of bytes
//!   → `Timeout { kind: Idle }`. A large event that keeps arriving is progress,
//!   and the stream says so with `DesignEvent::Progress`.
//!
//! Only this crate knows Google's wire format: paths, query parameters, JSON
//! shapes, statuses and the event stream. `docs/GOOGLE.md` is the mapping.
//!
//! HTTP/2 where it can ([`HttpVersion`]): many requests in flight share a
//! few connections. Each upstream has its lanes (see `lanes`): clients with
//! their own pools, so that no more than
//! [`GoogleConfig::streams_per_connection`] requests share one HTTP/2
//! connection and none queue behind Google's stream limit.
//!
//! API keys are held in [`ApiKey`], whose `Debug` and `Display` print `***`;
//! no error, log line or metric label carries a key or a request URL.

mod error;
mod gemini;
mod lanes;
mod maps;

pub use error::ConfigError;
#[doc(hidden)]
pub use gemini::design_stream_over;

use std::sync::Arc;
use std::time::Duration;
use terrace_domain::{TimeoutKind, UpstreamError};
use terrace_ports::{Observer, Upstream, UpstreamOutcome};

/// An API key. Printing it shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Which HTTP the adapter speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/2 where TLS negotiates it (ALPN: Google's `https` endpoints),
    /// else HTTP/1.1 (plain `http`).
    #[default]
    Auto,
    /// HTTP/2 always; over plain `http` with prior knowledge (h2c), as the
    /// simulator speaks it.
    Http2,
    /// HTTP/1.1 only.
    Http1,
}

/// Requests in flight on one HTTP/2 connection by default: Google's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
pub const DEFAULT_STREAMS_PER_CONNECTION: usize = 100;

/// Where Google is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// `https://maps.googleapis.com` (or a simulator's base URL).
    pub maps_base_url: String,
    /// `https://generativelanguage.googleapis.com` (or a simulator's base URL).
    pub gemini_base_url: String,
    /// e.g. `gemini-2.5-flash-image`.
    pub gemini_model: String,
    pub maps_api_key: ApiKey,
    pub gemini_api_key: ApiKey,
    /// One whole Maps request.
    pub maps_timeout: Duration,
    /// Establishing a connection. Set on every client, so it bounds Maps
    /// connects too (which are also inside the whole-request timeout).
    pub llm_connect_timeout: Duration,
    /// Longest silence on the Gemini stream: before the headers or between bytes.
    pub llm_idle_timeout: Duration,
    /// HTTP/2 or HTTP/1.1.
    pub http: HttpVersion,
    /// Requests in flight on one HTTP/2 connection before another is opened
    /// ([`DEFAULT_STREAMS_PER_CONNECTION`]; not above the server's stream
    /// limit, or requests queue inside the connection). Unused on HTTP/1.1.
    pub streams_per_connection: usize,
}

/// The Google adapters. Cheap to clone; every clone shares the same HTTP
/// clients (their connection pools), the first made in [`GoogleClient::new`].
#[derive(Debug, Clone)]
pub struct GoogleClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The clients Maps requests go out on.
    maps: lanes::Lanes,
    /// The clients Gemini requests go out on.
    gemini: lanes::Lanes,
    observer: Arc<dyn Observer>,
    maps_key: ApiKey,
    gemini_key: ApiKey,
    /// The Gemini key as a header value, built once (and marked sensitive,
    /// so no debug output prints it).
    gemini_key_header: reqwest::header::HeaderValue,
    maps_timeout: Duration,
    idle_timeout: Duration,
    geocode_url: reqwest::Url,
    metadata_url: reqwest::Url,
    street_view_url: reqwest::Url,
    static_map_url: reqwest::Url,
    gemini_url: reqwest::Url,
}

fn join(base: &str, path: &str, which: &'static str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
        .map_err(|_| ConfigError::InvalidBaseUrl { which })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::InvalidBaseUrl { which });
    }
    Ok(url)
}

/// One lane's HTTP client.
fn client(http: HttpVersion, connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_keepalive(Duration::from_secs(30))
        .tcp_nodelay(true)
        // No silent resends: a design request sent twice is billed twice,
        // and the engine owns retries. This also keeps the client from
        // holding a copy of every request body for a possible resend.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .user_agent(concat!("terrace/", env!("CARGO_PKG_VERSION")));
    match http {
        // With the `http2` feature, TLS offers h2 then http/1.1 by ALPN.
        HttpVersion::Auto => builder,
        HttpVersion::Http2 => builder.http2_prior_knowledge(),
        HttpVersion::Http1 => builder.http1_only(),
    }
    .build()
}

/// Requests in flight per lane to `url`: one lane with no limit where the
/// requests go over HTTP/1.1.
fn lane_limit(http: HttpVersion, url: &reqwest::Url, streams_per_connection: usize) -> usize {
    match http {
        HttpVersion::Http1 => usize::MAX,
        HttpVersion::Auto if url.scheme() == "http" => usize::MAX,
        HttpVersion::Auto | HttpVersion::Http2 => streams_per_connection,
    }
}

impl GoogleClient {
    /// Checks the configuration and builds the first HTTP client of each
    /// upstream.
    pub fn new(config: GoogleConfig, observer: Arc<dyn Observer>) -> Result<Self, ConfigError> {
        for (which, d) in [
            ("maps_timeout", config.maps_timeout),
            ("llm_connect_timeout", config.llm_connect_timeout),
            ("llm_idle_timeout", config.llm_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroTimeout { which });
            }
        }
        for (which, key) in
            [("maps_api_key", &config.maps_api_key), ("gemini_api_key", &config.gemini_api_key)]
        {
            if key.0.trim().is_empty() {
                return Err(ConfigError::EmptyKey { which });
            }
            if !key.0.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::InvalidKey { which });
            }
        }
        if config.streams_per_connection == 0 {
            return Err(ConfigError::ZeroLimit { which: "streams_per_connection" });
        }
        let model = config.gemini_model.trim();
        if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
            return Err(ConfigError::InvalidModel);
        }
        let maps = config.maps_base_url.as_str();
        let gemini_url = join(
            &config.gemini_base_url,
            &format!("/v1beta/models/{model}:streamGenerateContent?alt=sse"),
            "gemini_base_url",
        )?;
        let geocode_url = join(maps, "/maps/api/geocode/json", "maps_base_url")?;
        let (http, connect) = (config.http, config.llm_connect_timeout);
        let make = || -> lanes::MakeClient { Box::new(move || client(http, connect)) };
        let lanes = |url: &reqwest::Url| {
            lanes::Lanes::new(lane_limit(http, url, config.streams_per_connection), make())
                .map_err(|e| ConfigError::Client(error::describe(e)))
        };
        let maps_lanes = lanes(&geocode_url)?;
        let gemini_lanes = lanes(&gemini_url)?;
        let mut gemini_key_header = reqwest::header::HeaderValue::from_str(config.gemini_api_key.expose())
            .map_err(|_| ConfigError::InvalidKey { which: "gemini_api_key" })?;
        gemini_key_header.set_sensitive(true);
        Ok(Self {
            inner: Arc::new(Inner {
                maps: maps_lanes,
                gemini: gemini_lanes,
                gemini_key_header,
                observer,
                geocode_url,
                metadata_url: join(maps, "/maps/api/streetview/metadata", "maps_base_url")?,
                street_view_url: join(maps, "/maps/api/streetview", "maps_base_url")?,
                static_map_url: join(maps, "/maps/api/staticmap", "maps_base_url")?,
                gemini_url,
                maps_key: config.maps_api_key,
                gemini_key: config.gemini_api_key,
                maps_timeout: config.maps_timeout,
                idle_timeout: config.llm_idle_timeout,
            }),
        })
    }
}

/// The metrics outcome of an upstream error.
/// The metrics outcome of an upstream failure, and its timeout kind if it
/// was a timeout.
fn upstream_outcome(e: &UpstreamError) -> (UpstreamOutcome, Option<TimeoutKind>) {
    match e {
        UpstreamError::Timeout { kind } => (UpstreamOutcome::Timeout, Some(*kind)),
        UpstreamError::Unavailable { .. } => (UpstreamOutcome::Unavailable, None),
        UpstreamError::Rejected { .. } => (UpstreamOutcome::Rejected, None),
    }
}

impl Inner {
    /// Reports one finished request to the observer (and its timeout, if any).
    fn report(
        &self,
        upstream: Upstream,
        outcome: UpstreamOutcome,
        timeout: Option<TimeoutKind>,
        elapsed: Duration,
    ) {
        if let Some(kind) = timeout {
            self.observer.upstream_timeout(upstream, kind);
        }
        self.observer.upstream_request(upstream, outcome, elapsed);
        tracing::debug!(
            upstream = upstream.as_str(),
            outcome = outcome.as_str(),
            elapsed_ms = elapsed.as_millis() as u64,
            "google request ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_ports::NoopObserver;

    fn config() -> GoogleConfig {
        GoogleConfig {
            maps_base_url: "https://maps.googleapis.com".into(),
            gemini_base_url: "https://generativelanguage.googleapis.com/".into(),
            gemini_model: "gemini-2.5-flash-image".into(),
            maps_api_key: ApiKey::new("maps-secret-1234"),
            gemini_api_key: ApiKey::new("gemini-secret-5678"),
            maps_timeout: Duration::from_secs(10),
            llm_connect_timeout: Duration::from_secs(5),
            llm_idle_timeout: Duration::from_secs(90),
            http: HttpVersion::Auto,
            streams_per_connection: DEFAULT_STREAMS_PER_CONNECTION,
        }
    }

    #[test]
    fn keys_never_print() {
        let c = config();
        let printed = format!("{c:?} {} {:?}", c.maps_api_key, c.gemini_api_key);
        assert!(!printed.contains("secret"), "{printed}");
        let client = GoogleClient::new(c, Arc::new(NoopObserver)).expect("builds");
        assert!(!format!("{client:?}").contains("secret"));
    }

    #[test]
    fn urls_follow_googles_paths() {
        let client = GoogleClient::new(config(), Arc::new(NoopObserver)).expect("builds");
        assert_eq!(client.inner.geocode_url.as_str(), "https://maps.googleapis.com/maps/api/geocode/json");
        assert_eq!(
            client.inner.gemini_url.as_str(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash-image:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let observer: Arc<dyn Observer> = Arc::new(NoopObserver);
        let mut c = config();
        c.llm_idle_timeout = Duration::ZERO;
        assert_eq!(
            GoogleClient::new(c, observer.clone()).unwrap_err(),
            ConfigError::ZeroTimeout { which: "llm_idle_timeout" }
        );
        let mut c = config();
        c.maps_base_url = "maps.googleapis.com".into();
        assert_eq!(
            GoogleClient::new(c, observer.clone()).unwrap_err(),
            ConfigError::InvalidBaseUrl { which: "maps_base_url" }
        );
        let mut c = config();
        c.gemini_model = "../admin".into();
        assert_eq!(GoogleClient::new(c, observer.clone()).unwrap_err(), ConfigError::InvalidModel);
        let mut c = config();
        c.maps_api_key = ApiKey::new("abc\ndef");
        assert_eq!(
            GoogleClient::new(c, observer.clone()).unwrap_err(),
            ConfigError::InvalidKey { which: "maps_api_key" }
        );
        let mut c = config();
        c.gemini_api_key = ApiKey::new(" ");
        assert_eq!(
            GoogleClient::new(c, observer.clone()).unwrap_err(),
            ConfigError::EmptyKey { which: "gemini_api_key" }
        );
        let mut c = config();
        c.streams_per_connection = 0;
        assert_eq!(
            GoogleClient::new(c, observer).unwrap_err(),
            ConfigError::ZeroLimit { which: "streams_per_connection" }
        );
    }

    #[test]
    fn lanes_have_a_limit_only_where_requests_share_http2_connections() {
        let https = reqwest::Url::parse("https://maps.googleapis.com/maps/api/geocode/json").expect("url");
        let http = reqwest::Url::parse("http://127.0.0.1:9/maps/api/geocode/json").expect("url");
        assert_eq!(lane_limit(HttpVersion::Auto, &https, 100), 100);
        assert_eq!(lane_limit(HttpVersion::Auto, &http, 100), usize::MAX, "plain http is HTTP/1.1");
        assert_eq!(lane_limit(HttpVersion::Http2, &http, 7), 7);
        assert_eq!(lane_limit(HttpVersion::Http2, &https, 7), 7);
        assert_eq!(lane_limit(HttpVersion::Http1, &https, 100), usize::MAX);
        for version in [HttpVersion::Auto, HttpVersion::Http2, HttpVersion::Http1] {
            let mut c = config();
            c.http = version;
            let client = GoogleClient::new(c, Arc::new(NoopObserver)).expect("builds");
            assert_eq!((client.inner.maps.len(), client.inner.gemini.len()), (1, 1), "{version:?}");
        }
    }
}
