//! Policies are values: every deadline, the retry/backoff policy and the lock
//! policy. There is no `Default`: the binary builds a [`Policies`] from its
//! configuration, tests build their own, and [`Policies::validate`] rejects
//! combinations that cannot work.

use std::time::Duration;

/// Every bound Terrace works under.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    /// One whole Maps request (geocode, metadata, image).
    pub maps_timeout: Duration,
    /// Establishing a connection to the model.
    pub llm_connect_timeout: Duration,
    /// Longest silence on the model's stream: before the headers, or between
    /// events (adapters count bytes received as progress).
    pub llm_idle_timeout: Duration,
    /// One area, all attempts included.
    pub area_timeout: Duration,
    /// A whole generation from its creation, queueing included.
    pub generation_timeout: Duration,
    /// How many areas of one generation run at once.
    pub area_concurrency: usize,
    pub retry: RetryPolicy,
    pub lock: LockPolicy,
    pub db: DbPolicy,
    pub lease: LeasePolicy,
    /// On shutdown: how long running work gets to hand itself back.
    pub shutdown_grace: Duration,
    /// One blob store call (storing or reading an image), its retries included.
    pub blob_timeout: Duration,
    /// Retries the blob store's client may make within `blob_timeout`.
    pub blob_retries: usize,
    /// The writes that resolve holds (capture, void, finish): retried with
    /// this backoff for as long as their deadline allows, so attempts are
    /// normally unbounded (`u32::MAX`) and time is the bound.
    pub settle_retry: RetryPolicy,
    /// How long an `Idempotency-Key` is honoured (CONTRACT §4:
    /// [`IDEMPOTENCY_TTL`]).
    pub idempotency_ttl: Duration,
    /// The trial credits an account opens with.
    pub trial_credits: u64,
}

/// The contract's idempotency window: 24 h.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Retries with jittered exponential backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. At least 1.
    pub max_attempts: u32,
    /// The backoff before the first retry; it doubles each time.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest upstream `retry-after` hint honoured; longer hints are
    /// treated as "not within this deadline".
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry), given an
    /// upstream hint and a uniform random number in `[0, 1)`.
    ///
    /// Equal jitter: half the exponential step plus a random part of the other
    /// half, so retries spread out but never collapse to zero. A hint from the
    /// upstream (HTTP 429 `RetryInfo`) is honoured: the wait is never shorter
    /// than the hint.
    pub fn backoff(&self, retry: u32, hint: Option<Duration>, unit_random: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(20);
        let step = self.initial_backoff.saturating_mul(1u32 << exp).min(self.max_backoff);
        let half = step / 2;
        let jittered = half + half.mul_f64(unit_random.clamp(0.0, 1.0));
        match hint {
            Some(h) => jittered.max(h.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

/// How a request that needs a locked row waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPolicy {
    /// Fail at once (`FOR UPDATE NOWAIT`).
    NoWait,
    /// Wait at most this long (`SET LOCAL lock_timeout`).
    Timeout(Duration),
}

/// Database bounds. Every one is sent to the pool or the server.
#[derive(Debug, Clone, PartialEq)]
pub struct DbPolicy {
    pub pool_size: usize,
    /// Waiting for a pooled connection.
    pub acquire_timeout: Duration,
    /// Establishing a new connection.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`.
    pub statement_timeout: Duration,
    /// Server-side `lock_timeout` for statements that are not under the lock policy.
    pub lock_timeout: Duration,
    /// Server-side `idle_in_transaction_session_timeout`.
    pub idle_in_transaction_timeout: Duration,
    /// A pooled connection idle at least this long is checked with one
    /// round trip before it is handed out (zero: every one is). Busy
    /// connections are not checked: a dead one is found by its connection
    /// task ending, or by the call's own deadline.
    pub verify_idle_after: Duration,
}

impl DbPolicy {
    /// The longest one store call may take from the caller's side: a
    /// connection, then a statement, plus a second of slack. Callers bound
    /// store calls with this so that even a store that broke its promise cannot
    /// hold them.
    pub fn call_timeout(&self) -> Duration {
        self.acquire_timeout + self.connect_timeout + self.statement_timeout + Duration::from_secs(1)
    }
}

/// Durable work: leases, heartbeats and sweeps.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasePolicy {
    /// How long a claim lasts without a heartbeat.
    pub ttl: Duration,
    /// How often an instance renews all its leases (one statement).
    pub heartbeat_interval: Duration,
    /// How often an instance claims orphaned work and ends overdue work.
    pub sweep_interval: Duration,
    /// Most generations one instance runs at once.
    pub max_running: usize,
    /// Most overdue generations one sweep ends (the rest wait for the next).
    pub sweep_batch: usize,
}

/// A combination of policies that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(pub String);

impl Policies {
    /// Rejects zero deadlines and combinations that defeat each other.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let nonzero = [
            ("maps_timeout", self.maps_timeout),
            ("llm_connect_timeout", self.llm_connect_timeout),
            ("llm_idle_timeout", self.llm_idle_timeout),
            ("area_timeout", self.area_timeout),
            ("generation_timeout", self.generation_timeout),
            ("db.acquire_timeout", self.db.acquire_timeout),
            ("db.connect_timeout", self.db.connect_timeout),
            ("db.statement_timeout", self.db.statement_timeout),
            ("db.lock_timeout", self.db.lock_timeout),
            ("db.idle_in_transaction_timeout", self.db.idle_in_transaction_timeout),
            ("lease.ttl", self.lease.ttl),
            ("lease.heartbeat_interval", self.lease.heartbeat_interval),
            ("lease.sweep_interval", self.lease.sweep_interval),
            ("blob_timeout", self.blob_timeout),
            ("retry.initial_backoff", self.retry.initial_backoff),
            ("settle_retry.initial_backoff", self.settle_retry.initial_backoff),
            ("idempotency_ttl", self.idempotency_ttl),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, d)| d.is_zero()) {
            return Err(PolicyError(format!("{name} must be greater than zero")));
        }
        if self.retry.max_attempts == 0 || self.settle_retry.max_attempts == 0 {
            return Err(PolicyError("a retry policy needs at least 1 attempt".into()));
        }
        if self.area_concurrency == 0
            || self.db.pool_size == 0
            || self.lease.max_running == 0
            || self.lease.sweep_batch == 0
        {
            return Err(PolicyError(
                "area_concurrency, db.pool_size, lease.max_running and lease.sweep_batch must be at least 1"
                    .into(),
            ));
        }
        if self.area_timeout > self.generation_timeout {
            return Err(PolicyError("area_timeout must not exceed generation_timeout".into()));
        }
        if self.lease.heartbeat_interval >= self.lease.ttl {
            return Err(PolicyError("lease.heartbeat_interval must be shorter than lease.ttl".into()));
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err(PolicyError(
                "retry.max_backoff must not be shorter than retry.initial_backoff".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let r = retry();
        assert_eq!(r.backoff(1, None, 0.0), Duration::from_millis(100));
        assert_eq!(r.backoff(1, None, 0.999_999).as_millis(), 199);
        assert_eq!(r.backoff(3, None, 0.0), Duration::from_millis(400));
        assert_eq!(r.backoff(30, None, 0.0), Duration::from_millis(2500));
        assert!(r.backoff(30, None, 1.0) <= Duration::from_secs(5));
    }

    #[test]
    fn hints_are_honoured_up_to_the_cap() {
        let r = retry();
        assert_eq!(r.backoff(1, Some(Duration::from_secs(7)), 0.5), Duration::from_secs(7));
        assert_eq!(r.backoff(1, Some(Duration::from_secs(600)), 0.5), Duration::from_secs(60));
        assert_eq!(r.backoff(5, Some(Duration::from_millis(1)), 0.0), Duration::from_millis(1600));
    }
}
