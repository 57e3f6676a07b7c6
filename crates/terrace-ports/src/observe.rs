//! What adapters and the engine report, for metrics. The binary implements
//! [`Observer`] over its metrics registry; tests and embedders may use
//! [`NoopObserver`]. Observers must be cheap and must not block.

use std::time::Duration;
use terrace_domain::{ErrorCode, GenerationStatus, TimeoutKind};

/// The upstream a request went to (the `upstream` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    Geocode,
    StreetView,
    StaticMap,
    Gemini,
    Stripe,
}

impl Upstream {
    pub const ALL: &'static [Upstream] =
        &[Upstream::Geocode, Upstream::StreetView, Upstream::StaticMap, Upstream::Gemini, Upstream::Stripe];

    pub fn as_str(self) -> &'static str {
        match self {
            Upstream::Geocode => "geocode",
            Upstream::StreetView => "streetview",
            Upstream::StaticMap => "staticmap",
            Upstream::Gemini => "gemini",
            Upstream::Stripe => "stripe",
        }
    }
}

/// How one upstream request ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamOutcome {
    Ok,
    /// Permanent failure (4xx, not found, blocked, no image).
    Rejected,
    /// Retryable failure (429, 5xx, connection error).
    Unavailable,
    Timeout,
}

impl UpstreamOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::Rejected => "rejected",
            UpstreamOutcome::Unavailable => "unavailable",
            UpstreamOutcome::Timeout => "timeout",
        }
    }
}

/// Receives the events behind CONTRACT §6's metrics.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// One upstream request ended.
    fn upstream_request(&self, upstream: Upstream, outcome: UpstreamOutcome, elapsed: Duration);
    /// One of an upstream request's deadlines passed.
    fn upstream_timeout(&self, upstream: Upstream, kind: TimeoutKind);
    /// A generation reached a terminal status on this instance.
    fn generation_finished(&self, status: GenerationStatus, elapsed: Duration);
    /// A hold was voided, and why.
    fn hold_voided(&self, reason: ErrorCode);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {
    fn upstream_request(&self, _: Upstream, _: UpstreamOutcome, _: Duration) {}
    fn upstream_timeout(&self, _: Upstream, _: TimeoutKind) {}
    fn generation_finished(&self, _: GenerationStatus, _: Duration) {}
    fn hold_voided(&self, _: ErrorCode) {}
}
