//! Retries inside a deadline, and deadlines on single calls.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use terrace_domain::{Classify, RetryPolicy, StoreError};
use tokio::time::{Instant, sleep, timeout};

/// Runs `op` until it succeeds, fails permanently, runs out of attempts, or
/// the next backoff would end past `deadline`; returns the last result.
/// `op` gets the attempt number (1-based). The backoff honours the error's
/// `retry_after` hint.
///
/// The caller bounds each attempt itself and wraps the whole in its deadline:
/// this function never waits past `deadline` between attempts.
///
/// Cancel safety: dropping the future drops the running attempt.
pub async fn with_retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    deadline: Instant,
    what: &str,
    mut op: F,
) -> Result<T, E>
where
    E: Classify + Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        let e = match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !e.retryable() || attempt >= policy.max_attempts {
            return Err(e);
        }
        let wait = policy.backoff(attempt, e.retry_after(), fastrand::f64());
        if Instant::now() + wait >= deadline {
            tracing::debug!(attempt, error = %e, "{what} failed; no time left to retry");
            return Err(e);
        }
        tracing::info!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "{what} failed; retrying");
        sleep(wait).await;
        attempt += 1;
    }
}

/// Bounds a store call from the caller's side. The store keeps its own
/// deadlines; this makes sure a store that broke that promise cannot hold the
/// caller either.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout { what: format!("{what} took longer than {limit:?}") }),
    }
}
