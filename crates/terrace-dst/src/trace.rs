//! What happened in a run: a digest of every event, and the last ones kept
//! to print when an invariant breaks.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::Duration;

/// The events of one run. Every event goes into the digest (FNV-1a of its
/// text, so that two runs of a seed can be compared by one number); the
/// last `keep` are kept as text.
#[derive(Debug)]
pub struct Trace {
    lines: VecDeque<String>,
    keep: usize,
    count: u64,
    digest: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    pub fn new(keep: usize) -> Self {
        Self { lines: VecDeque::with_capacity(keep.min(4096)), keep, count: 0, digest: FNV_OFFSET }
    }

    /// Records one event at virtual time `at` (since the run began).
    pub fn push(&mut self, at: Duration, who: &str, what: std::fmt::Arguments<'_>) {
        let mut line = String::with_capacity(64);
        let _ = write!(line, "{:>10}  {who:<6} {what}", clock(at));
        for b in line.bytes() {
            self.digest = (self.digest ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        self.digest = (self.digest ^ u64::from(b'\n')).wrapping_mul(FNV_PRIME);
        self.count += 1;
        if self.keep == 0 {
            return;
        }
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }
}

/// `m:ss.mmm` of a virtual time.
pub fn clock(at: Duration) -> String {
    let ms = at.as_millis();
    format!("{}:{:02}.{:03}", ms / 60_000, (ms / 1000) % 60, ms % 1000)
}
