//! Wall clocks that follow tokio's paused clock from a fixed epoch, and can
//! jump.

use chrono::{DateTime, TimeDelta, Utc};
use std::sync::Mutex;
use terrace_ports::Clock;
use tokio::time::Instant;

/// A wall clock: a fixed epoch, plus the virtual time since the run began,
/// plus an offset that jumps. The store has one (the database's clock);
/// each instance has its own, a little off the store's.
#[derive(Debug)]
pub struct SimClock {
    epoch: DateTime<Utc>,
    start: Instant,
    offset: Mutex<Offset>,
}

#[derive(Debug, Clone, Copy)]
struct Offset {
    ms: i64,
    /// When it last jumped.
    jumped_at: Option<Instant>,
}

impl SimClock {
    pub fn new(epoch: DateTime<Utc>, start: Instant, offset_ms: i64) -> Self {
        Self { epoch, start, offset: Mutex::new(Offset { ms: offset_ms, jumped_at: None }) }
    }

    fn offset(&self) -> Offset {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Steps the clock by `ms` (either way).
    pub fn jump(&self, ms: i64) {
        let mut o = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        o.ms += ms;
        o.jumped_at = Some(Instant::now());
    }

    /// How far the clock is off the epoch plus virtual time.
    pub fn offset_ms(&self) -> i64 {
        self.offset().ms
    }

    /// When the clock last jumped, if it did.
    pub fn jumped_at(&self) -> Option<Instant> {
        self.offset().jumped_at
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        self.epoch
            + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::MAX)
            + TimeDelta::milliseconds(self.offset().ms)
    }
}
