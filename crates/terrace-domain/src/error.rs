//! The error taxonomy. Every error says whether retrying can help
//! ([`Classify::retryable`]) and which contract error code it becomes
//! ([`Classify::code`]). Adapters translate driver errors into these; the API
//! maps them to HTTP.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The error codes of CONTRACT §4 that end an area or a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    AddressNotFound,
    ImageryUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamRejected,
    ContentBlocked,
    NoImage,
    DeadlineExceeded,
    Cancelled,
    Internal,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::AddressNotFound,
        ErrorCode::ImageryUnavailable,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamRejected,
        ErrorCode::ContentBlocked,
        ErrorCode::NoImage,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AddressNotFound => "address_not_found",
            ErrorCode::ImageryUnavailable => "imagery_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamRejected => "upstream_rejected",
            ErrorCode::ContentBlocked => "content_blocked",
            ErrorCode::NoImage => "no_image",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an area or a generation ended without an image: a code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A generation's deadline passed: what the runner and the sweep end its
    /// unfinished areas with.
    pub fn generation_deadline() -> Self {
        Self::new(ErrorCode::DeadlineExceeded, "the generation's deadline passed")
    }

    /// The user cancelled: what a cancel ends unfinished areas with, and a
    /// cancelled generation's error.
    pub fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "cancelled by the user")
    }

    /// The failure an error becomes.
    pub fn from_error<E: Classify + std::fmt::Display + ?Sized>(e: &E) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

/// What every Terrace error can tell about itself.
pub trait Classify {
    /// Whether the same call may succeed if tried again later.
    fn retryable(&self) -> bool;
    /// The contract error code an area or generation ends with because of it.
    fn code(&self) -> ErrorCode;
    /// How long the upstream asked us to wait before trying again, if it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// Establishing the connection.
    Connect,
    /// The whole request (Maps calls, blob calls).
    Request,
    /// Silence on a stream: before the headers or between events.
    Idle,
    /// The area's or generation's own deadline.
    Deadline,
}

impl TimeoutKind {
    /// The `kind` label of `terrace_upstream_timeouts_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::Request => "request",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Deadline => "deadline",
        }
    }
}

/// A failure talking to Google (or anything else upstream), already classified.
///
/// Adapters MUST return `Timeout` when one of their own deadlines passed,
/// `Unavailable` for answers that say "try later" (HTTP 429/5xx, connection
/// errors, `OVER_QUERY_LIMIT`, `UNKNOWN_ERROR`) and `Rejected` for answers that
/// will not change (HTTP 400/401/403/404, `REQUEST_DENIED`, malformed answers).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream timed out ({})", kind.as_str())]
    Timeout { kind: TimeoutKind },
    #[error("upstream unavailable: {detail}")]
    Unavailable { detail: String, retry_after: Option<Duration> },
    #[error("upstream rejected the request: {detail}")]
    Rejected { detail: String },
}

impl UpstreamError {
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable { detail: detail.into(), retry_after: None }
    }
    pub fn rejected(detail: impl Into<String>) -> Self {
        Self::Rejected { detail: detail.into() }
    }
}

impl Classify for UpstreamError {
    fn retryable(&self) -> bool {
        !matches!(self, UpstreamError::Rejected { .. })
    }
    fn code(&self) -> ErrorCode {
        match self {
            UpstreamError::Timeout { .. } => ErrorCode::UpstreamTimeout,
            UpstreamError::Unavailable { .. } => ErrorCode::UpstreamUnavailable,
            UpstreamError::Rejected { .. } => ErrorCode::UpstreamRejected,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Errors of [`geocode`](../terrace_ports/trait.Geocoder.html).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeocodeError {
    /// `ZERO_RESULTS`: the address does not exist. Never retried.
    #[error("the address was not found")]
    NotFound,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Classify for GeocodeError {
    fn retryable(&self) -> bool {
        match self {
            GeocodeError::NotFound => false,
            GeocodeError::Upstream(e) => e.retryable(),
        }
    }
    fn code(&self) -> ErrorCode {
        match self {
            GeocodeError::NotFound => ErrorCode::AddressNotFound,
            GeocodeError::Upstream(e) => e.code(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            GeocodeError::Upstream(e) => e.retry_after(),
            GeocodeError::NotFound => None,
        }
    }
}

/// Errors of the imagery calls.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageryError {
    /// Google has no image of this place (the static API answered with an
    /// error image or 404 under `return_error_code`). Never retried.
    #[error("no imagery is available for this location")]
    NoImagery,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Classify for ImageryError {
    fn retryable(&self) -> bool {
        match self {
            ImageryError::NoImagery => false,
            ImageryError::Upstream(e) => e.retryable(),
        }
    }
    fn code(&self) -> ErrorCode {
        match self {
            ImageryError::NoImagery => ErrorCode::ImageryUnavailable,
            ImageryError::Upstream(e) => e.code(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ImageryError::Upstream(e) => e.retry_after(),
            ImageryError::NoImagery => None,
        }
    }
}

/// Errors of the design model's stream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesignError {
    /// The model refused (`promptFeedback.blockReason` or a blocking
    /// `finishReason`). Never retried.
    #[error("the model blocked the request: {reason}")]
    Blocked { reason: String },
    /// The stream ended without an image part. Never retried.
    #[error("the model answered without an image")]
    NoImage,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Classify for DesignError {
    fn retryable(&self) -> bool {
        match self {
            DesignError::Blocked { .. } | DesignError::NoImage => false,
            DesignError::Upstream(e) => e.retryable(),
        }
    }
    fn code(&self) -> ErrorCode {
        match self {
            DesignError::Blocked { .. } => ErrorCode::ContentBlocked,
            DesignError::NoImage => ErrorCode::NoImage,
            DesignError::Upstream(e) => e.code(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            DesignError::Upstream(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Errors of the generation store.
///
/// Adapters MUST return `Busy` when a row lock could not be taken under the lock
/// policy (SQLSTATE 55P03), `Timeout` when a connection could not be had or a
/// statement did not finish in time, `Unavailable` when the database cannot be
/// reached, `LeaseLost` when a fenced write names an attempt that no longer
/// owns the generation, and `Finished` when the row is already terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the row is locked by another request")]
    Busy,
    #[error("not found")]
    NotFound,
    /// A paging cursor that this store did not give out.
    #[error("the cursor is not one this store gave")]
    InvalidCursor,
    #[error("the lease on this generation was lost")]
    LeaseLost,
    #[error("the generation or area is already finished")]
    Finished,
    #[error("the store timed out: {what}")]
    Timeout { what: String },
    #[error("the store is unavailable: {detail}")]
    Unavailable { detail: String },
    #[error("store failure: {detail}")]
    Internal { detail: String },
}

impl Classify for StoreError {
    fn retryable(&self) -> bool {
        matches!(self, StoreError::Busy | StoreError::Timeout { .. } | StoreError::Unavailable { .. })
    }
    fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// Errors of the credit ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The account row is locked by a concurrent request (the lock policy's
    /// `NOWAIT` or short lock timeout ran out). Answered 409 `account_busy`.
    #[error("the account is busy with another request")]
    AccountBusy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for LedgerError {
    fn retryable(&self) -> bool {
        match self {
            LedgerError::AccountBusy => true,
            LedgerError::Store(e) => e.retryable(),
        }
    }
    fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// Errors of creating a generation (hold + rows in one transaction).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// 402 `insufficient_credits`. Nothing was held.
    #[error("{needed} credits needed, {available} available")]
    InsufficientCredits { needed: u64, available: u64 },
    /// 409 `account_busy`. Nothing was held.
    #[error("the account is busy with another request")]
    AccountBusy,
    /// 422 `idempotency_key_reused`: the key was used with another body.
    #[error("the idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for CreateError {
    fn retryable(&self) -> bool {
        match self {
            CreateError::AccountBusy => true,
            CreateError::Store(e) => e.retryable(),
            _ => false,
        }
    }
    fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// Errors of the blob store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("no such blob")]
    NotFound,
    #[error("the blob store timed out")]
    Timeout,
    #[error("the blob store is unavailable: {detail}")]
    Unavailable { detail: String },
    #[error("blob store failure: {detail}")]
    Internal { detail: String },
}

impl Classify for BlobError {
    fn retryable(&self) -> bool {
        matches!(self, BlobError::Timeout | BlobError::Unavailable { .. })
    }
    fn code(&self) -> ErrorCode {
        match self {
            BlobError::Timeout => ErrorCode::UpstreamTimeout,
            _ => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_text_and_json() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{}\"", c.as_str()));
        }
    }

    #[test]
    fn permanent_errors_are_never_retryable() {
        let permanent: Vec<Box<dyn Classify>> = vec![
            Box::new(GeocodeError::NotFound),
            Box::new(ImageryError::NoImagery),
            Box::new(DesignError::Blocked { reason: "SAFETY".into() }),
            Box::new(DesignError::NoImage),
            Box::new(UpstreamError::rejected("400")),
            Box::new(CreateError::InsufficientCredits { needed: 2, available: 1 }),
            Box::new(StoreError::LeaseLost),
        ];
        assert!(permanent.iter().all(|e| !e.retryable()));
        let transient: Vec<Box<dyn Classify>> = vec![
            Box::new(UpstreamError::Timeout { kind: TimeoutKind::Idle }),
            Box::new(UpstreamError::unavailable("503")),
            Box::new(GeocodeError::Upstream(UpstreamError::unavailable("OVER_QUERY_LIMIT"))),
            Box::new(StoreError::Busy),
            Box::new(LedgerError::AccountBusy),
            Box::new(CreateError::AccountBusy),
        ];
        assert!(transient.iter().all(|e| e.retryable()));
    }

    #[test]
    fn codes_follow_the_contract() {
        assert_eq!(GeocodeError::NotFound.code(), ErrorCode::AddressNotFound);
        assert_eq!(ImageryError::NoImagery.code(), ErrorCode::ImageryUnavailable);
        assert_eq!(DesignError::NoImage.code(), ErrorCode::NoImage);
        assert_eq!(DesignError::Blocked { reason: "x".into() }.code(), ErrorCode::ContentBlocked);
        assert_eq!(UpstreamError::Timeout { kind: TimeoutKind::Connect }.code(), ErrorCode::UpstreamTimeout);
        let hint =
            UpstreamError::Unavailable { detail: "429".into(), retry_after: Some(Duration::from_secs(7)) };
        assert_eq!(DesignError::from(hint).retry_after(), Some(Duration::from_secs(7)));
    }
}
