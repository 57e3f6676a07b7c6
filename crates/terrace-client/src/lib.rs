//! A typed client for Terrace's HTTP API.
//!
//! - Every call has a deadline ([`ClientConfig::request_timeout`]).
//! - [`Client::create`] sends an `Idempotency-Key` it generates once per
//!   logical create, so a retried create never holds credits twice. Only
//!   409 `account_busy`, 503 and connection errors are retried, with
//!   jittered backoff that honours `Retry-After`.
//! - [`Client::watch`] follows a generation over its event stream, falls back
//!   to polling with backoff when the stream breaks, and ends at a terminal
//!   state, after a maximum duration, or after N consecutive failures (the
//!   circuit opens). It spawns nothing: dropping the watcher drops its
//!   in-flight request and closes the connection, so all network activity
//!   stops at once.
//!
//! The JSON it sends and reads is terrace-wire's, the same types the server
//! writes: the ones a client meets are re-exported here ([`CreateRequest`],
//! [`AreaSpec`], [`Generation`], [`Account`], …), and every other one under
//! [`wire`].

#[cfg(feature = "cli")]
pub mod cli;
mod watch;

pub use terrace_wire as wire;
pub use terrace_wire::{
    Account, AreaSpec, AreaView, CreateRequest, ErrorInfo, Generation, Location, SubscriptionSummary,
};
pub use watch::{Watch, WatchError, WatchOptions};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use std::time::Duration;
use terrace_domain::AreaKind;
use uuid::Uuid;

/// Bounds and retries of a [`Client`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Establishing a connection.
    pub connect_timeout: Duration,
    /// A whole non-streaming request, and the wait for an event stream's headers.
    pub request_timeout: Duration,
    /// Attempts of a create in all (first included).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientConfig {
    /// Bounds suited to an interactive client: 5 s to connect, 30 s a
    /// request, 4 attempts with backoff from 250 ms to 5 s.
    pub fn interactive() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Equal-jitter exponential backoff before retry number `retry`.
    fn backoff(&self, retry: u32, hint: Option<Duration>) -> Duration {
        let step =
            self.initial_backoff.saturating_mul(1 << retry.saturating_sub(1).min(16)).min(self.max_backoff);
        let wait = step / 2 + (step / 2).mul_f64(fastrand::f64());
        hint.map_or(wait, |h| wait.max(h.min(self.max_backoff * 4)))
    }
}

/// What went wrong with a call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem.
    #[error("{status} {code}: {detail}")]
    Api {
        status: u16,
        code: String,
        detail: String,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("the request timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl ClientError {
    /// The errors a create retries: 409 `account_busy`, 503, connection errors.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Api { status: 409, code, .. } => code == "account_busy",
            ClientError::Api { status, .. } => *status == 503,
            ClientError::Connect(_) => true,
            _ => false,
        }
    }

    /// Errors no retry or poll can fix (4xx other than 408/409/429).
    pub fn permanent(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if (400..500).contains(status) && ![408, 409, 429].contains(status))
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ClientError::Timeout
        } else if e.is_connect() || e.is_request() {
            // Connecting failed, or the connection broke while the request
            // was being sent (a pooled connection the server had just
            // closed): a connection error, safe to retry with the same
            // idempotency key.
            ClientError::Connect(e.without_url().to_string())
        } else if e.is_decode() {
            ClientError::Decode(e.without_url().to_string())
        } else {
            ClientError::Transport(e.without_url().to_string())
        }
    }
}

/// A Terrace client for one user (one bearer token). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    config: ClientConfig,
}

impl Client {
    /// `base_url` like `http://127.0.0.1:8000`; `token` a bearer JWT.
    pub fn new(base_url: &str, token: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // Shorter than the server's idle-connection limit (its header read
            // timeout, 10 s by default), so the client never reuses a
            // connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self { http, base: base_url.trim_end_matches('/').to_owned(), token: token.to_owned(), config })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends a request under the request timeout and turns problems into errors.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp =
            req.timeout(self.config.request_timeout).send().await.map_err(ClientError::from_reqwest)?;
        check(resp).await
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let body = self.send(req).await?.bytes().await.map_err(ClientError::from_reqwest)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Creates a generation. Retries 409 `account_busy`, 503 and connection
    /// errors with backoff, always with the same `Idempotency-Key`, so the
    /// server holds credits once however often the request is sent.
    pub async fn create(&self, request: &CreateRequest) -> Result<Generation, ClientError> {
        let key = Uuid::new_v4().to_string();
        self.create_with_key(request, &key).await
    }

    /// [`Client::create`] with the caller's idempotency key.
    pub async fn create_with_key(
        &self,
        request: &CreateRequest,
        key: &str,
    ) -> Result<Generation, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut attempt = 1;
        loop {
            let req = self
                .request(Method::POST, "/v1/generations")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.clone());
            match self.json(req).await {
                Err(e) if e.retryable() && attempt < self.config.max_attempts => {
                    let wait = self.config.backoff(attempt, e.retry_after());
                    tracing::debug!(attempt, error = %e, wait_ms = wait.as_millis() as u64, "create failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Generation, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/generations/{id}"))).await
    }

    pub async fn cancel(&self, id: Uuid) -> Result<Generation, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/generations/{id}/cancel"))).await
    }

    pub async fn account(&self) -> Result<Account, ClientError> {
        self.json(self.request(Method::GET, "/v1/account")).await
    }

    /// The design image of a completed area, with its content type.
    pub async fn image(&self, id: Uuid, area: AreaKind) -> Result<(Bytes, String), ClientError> {
        let resp =
            self.send(self.request(Method::GET, &format!("/v1/generations/{id}/areas/{area}/image"))).await?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = resp.bytes().await.map_err(ClientError::from_reqwest)?;
        Ok((bytes, content_type))
    }

    /// Follows a generation until it ends; see [`Watch`].
    pub fn watch(&self, id: Uuid, options: WatchOptions) -> Watch {
        Watch::new(self.clone(), id, options)
    }

    /// Opens the event stream (headers within the request timeout).
    async fn open_events(&self, id: Uuid) -> Result<reqwest::Response, ClientError> {
        let req = self
            .request(Method::GET, &format!("/v1/generations/{id}/events"))
            .header("accept", "text/event-stream");
        let resp = tokio::time::timeout(self.config.request_timeout, req.send())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(ClientError::from_reqwest)?;
        check(resp).await
    }
}

/// Turns a non-2xx answer into [`ClientError::Api`], reading its problem body.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let request_id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.bytes().await.unwrap_or_default();
    // Terrace answers with a problem document; anything else in front of it
    // (a proxy's error page) is named by its status.
    let (code, detail, problem_request_id) = match serde_json::from_slice::<wire::Problem>(&body) {
        Ok(p) => (p.code, p.detail, p.request_id),
        Err(_) => (default_code(status), String::new(), None),
    };
    Err(ClientError::Api {
        status: status.as_u16(),
        code,
        detail,
        request_id: problem_request_id.or(request_id),
        retry_after,
    })
}

fn default_code(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_ascii_lowercase().replace(' ', "_")
}
