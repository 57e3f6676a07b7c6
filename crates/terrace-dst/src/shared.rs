//! What the simulated ports and the driver share: the real store and blobs
//! (no faults), the random sources of faults and upstream behaviours, the
//! trace, the store's weather, and what the fence check needs to know about
//! leases.

use crate::clock::SimClock;
use crate::trace::Trace;
use fastrand::Rng;
use futures::FutureExt;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use terrace_domain::{GenerationId, Policies, StoreError, UserId};
use terrace_memory::{MemoryBlobs, MemoryStore};
use tokio::time::Instant;

/// One incarnation of one instance: `i1.2` is instance 1 after its first
/// restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Who {
    pub instance: u8,
    pub incarnation: u16,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "i{}.{}", self.instance, self.incarnation)
    }
}

/// A generation's short name in the trace: `g17`.
pub fn gname(id: GenerationId) -> String {
    format!("g{}", id.0.as_u128() as u32)
}

/// A user's short name in the trace: `u3`.
pub fn uname(id: UserId) -> String {
    format!("u{}", id.0.as_u128() as u32)
}

/// The ids of a run: random high bits (so that their order is not their
/// creation order), the index in the low bits (so that the trace can name
/// them).
pub fn uuid(rng: &mut Rng, index: u32) -> uuid::Uuid {
    uuid::Uuid::from_u128((u128::from(rng.u64(..)) << 64) | u128::from(index))
}

/// Runs a memory store call, which never waits, to its end at once: what a
/// wrapper does between two awaits happens in one step of the schedule.
pub fn at_once<F: Future>(f: F) -> F::Output {
    f.now_or_never().expect("the memory store answers without waiting")
}

/// Store faults while a storm lasts.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    /// The share of calls that fail one way or another.
    pub rate: f64,
    /// The share of calls that take seconds.
    pub slow: f64,
}

/// How the upstreams and the blob store behave for a whole run: the share of
/// calls that fail, per upstream.
#[derive(Debug, Clone, Copy)]
pub struct Weather {
    pub geocode: f64,
    pub imagery: f64,
    pub design: f64,
    pub blob: f64,
    /// The share of places without a panorama.
    pub no_panorama: f64,
}

/// What one store call does: wait, maybe refuse before reaching the store,
/// reach it, wait, maybe lose the answer.
#[derive(Debug, Clone)]
pub struct Plan {
    pub before: Duration,
    pub refuse: Option<StoreError>,
    pub after: Duration,
    pub lose: Option<StoreError>,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// Counts for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub store_calls: u64,
    pub store_faults: u64,
    pub upstream_calls: u64,
    pub upstream_faults: u64,
    pub blob_faults: u64,
}

impl State {
    /// The storm blowing now, if one is.
    pub fn storm(&self) -> Option<Storm> {
        let now = Instant::now();
        self.schedule.iter().find(|(from, to, _)| *from <= now && now < *to).map(|w| w.2)
    }

    /// Since when no storm has blown (`start` if none has yet).
    pub fn calm_since(&self, start: Instant) -> Instant {
        let now = Instant::now();
        self.schedule.iter().map(|w| w.1).filter(|to| *to <= now).max().unwrap_or(start)
    }

    /// No storm from now on: the one blowing ends now.
    pub fn calm_from_now(&mut self) {
        let now = Instant::now();
        self.schedule.retain(|w| w.0 <= now);
        for w in &mut self.schedule {
            w.1 = w.1.min(now);
        }
    }
}

#[derive(Debug)]
pub struct State {
    pub faults: Rng,
    pub upstream: Rng,
    pub trace: Trace,
    /// When storms blow: windows of virtual time, in order.
    pub schedule: Vec<(Instant, Instant, Storm)>,
    /// When the last store fault ends (a refused call's wait, a hang's
    /// bound, a slow call).
    pub last_fault_end: Instant,
    pub weather: Weather,
    /// Generations a call may have changed since the last check.
    pub touched: BTreeSet<GenerationId>,
    /// Accounts a call may have changed since the last check.
    pub touched_users: BTreeSet<UserId>,
    /// A call may have changed anything: check everything.
    pub full: bool,
    pub violation: Option<Violation>,
    /// The lease as the claims made it: owner and attempt.
    pub owners: BTreeMap<GenerationId, (String, u32)>,
    /// The attempt each claim gave, per generation.
    pub attempts: BTreeMap<GenerationId, u32>,
    /// Generations the store created (whatever their create's caller heard).
    pub known: BTreeSet<GenerationId>,
    pub stats: Stats,
    /// Calls made at one instant: a schedule that never lets time move is
    /// a livelock.
    burst: (Instant, u32),
}

/// Calls at one virtual instant past which the run is a livelock.
const BURST_LIMIT: u32 = 200_000;

#[derive(Debug)]
pub struct Shared {
    pub start: Instant,
    pub policies: Policies,
    pub store: MemoryStore,
    pub blobs: MemoryBlobs,
    pub store_clock: Arc<SimClock>,
    state: Mutex<State>,
}

impl Shared {
    pub fn new(
        policies: Policies,
        store: MemoryStore,
        store_clock: Arc<SimClock>,
        rng: &mut Rng,
        weather: Weather,
        keep: usize,
    ) -> Self {
        let start = Instant::now();
        let state = State {
            faults: rng.fork(),
            upstream: rng.fork(),
            trace: Trace::new(keep),
            schedule: Vec::new(),
            last_fault_end: start,
            weather,
            touched: BTreeSet::new(),
            touched_users: BTreeSet::new(),
            full: true,
            violation: None,
            owners: BTreeMap::new(),
            attempts: BTreeMap::new(),
            known: BTreeSet::new(),
            stats: Stats::default(),
            burst: (start, 0),
        };
        Self { start, policies, store, blobs: MemoryBlobs::new(), store_clock, state: Mutex::new(state) }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    pub fn trace(&self, who: &str, what: std::fmt::Arguments<'_>) {
        let at = self.elapsed();
        self.lock().trace.push(at, who, what);
    }

    /// Records a broken invariant (the first one only: the run stops there).
    pub fn violate(&self, invariant: &'static str, detail: String) {
        let at = self.elapsed();
        let mut s = self.lock();
        if s.violation.is_none() {
            s.trace.push(at, "check", format_args!("VIOLATION {invariant}: {detail}"));
            s.violation = Some(Violation { invariant, detail });
        }
    }

    /// Counts a call at this instant; `false` once the instant has seen so
    /// many calls that time can no longer move (the call should then hang).
    pub fn count_call(&self, s: &mut State) -> bool {
        let now = Instant::now();
        if s.burst.0 == now {
            s.burst.1 += 1;
        } else {
            s.burst = (now, 1);
        }
        if s.burst.1 == BURST_LIMIT {
            s.violation.get_or_insert(Violation {
                invariant: "time moves",
                detail: format!("{BURST_LIMIT} calls at one instant: a livelock"),
            });
        }
        s.burst.1 < BURST_LIMIT
    }

    /// Draws what one store call does.
    pub fn store_plan(&self, who: Who, op: &'static str) -> Plan {
        let at = self.elapsed();
        let limit = self.policies.db.call_timeout();
        let mut s = self.lock();
        s.stats.store_calls += 1;
        if !self.count_call(&mut s) {
            return Plan {
                before: Duration::from_secs(3600),
                refuse: None,
                after: Duration::ZERO,
                lose: None,
            };
        }
        let Some(storm) = s.storm() else {
            let before = Duration::from_millis(s.faults.u64(0..=3));
            let after = Duration::from_millis(s.faults.u64(0..=3));
            return Plan { before, refuse: None, after, lose: None };
        };
        let rng = &mut s.faults;
        let slow = rng.f64() < storm.slow;
        let mut latency =
            || Duration::from_millis(if slow { rng.u64(500..=20_000) } else { rng.u64(0..=200) });
        let (before, after) = (latency(), latency());
        let hang = Duration::from_secs(3600);
        let unavailable = || StoreError::Unavailable { detail: "connection reset".into() };
        let mut plan = Plan { before, refuse: None, after, lose: None };
        let fault = (rng.f64() < storm.rate).then(|| rng.u8(0..6));
        let said = match fault {
            None => None,
            Some(0) => {
                plan.refuse = Some(unavailable());
                Some("refused: unavailable")
            }
            Some(1) => {
                plan.before = Duration::from_millis(rng.u64(0..=limit.as_millis() as u64));
                plan.refuse = Some(StoreError::Timeout { what: "statement timeout".into() });
                Some("refused: timeout")
            }
            Some(2) => {
                plan.refuse = Some(StoreError::Busy);
                Some("refused: busy")
            }
            Some(3) => {
                plan.before = hang;
                Some("hangs before the store")
            }
            Some(4) => {
                plan.lose = Some(unavailable());
                Some("reaches the store, answer lost")
            }
            _ => {
                plan.after = hang;
                Some("reaches the store, answer never comes")
            }
        };
        let end = Instant::now() + (plan.before + plan.after).min(limit);
        s.last_fault_end = s.last_fault_end.max(end);
        if let Some(said) = said {
            s.stats.store_faults += 1;
            s.trace.push(at, &who.to_string(), format_args!("fault {op}: {said}"));
        } else if slow {
            s.trace.push(at, &who.to_string(), format_args!("fault {op}: slow ({:?})", before + after));
        }
        plan
    }

    /// Records what a claim gave: the attempt rises by one, and the lease is
    /// `owner`'s.
    pub fn claimed(&self, who: Who, owner: &str, claimed: &[terrace_domain::Generation]) {
        if claimed.is_empty() {
            return;
        }
        let at = self.elapsed();
        let mut s = self.lock();
        for g in claimed {
            s.touched.insert(g.id);
            let before = s.attempts.get(&g.id).copied().unwrap_or(0);
            if g.attempt != before + 1 {
                let detail =
                    format!("{} claimed at attempt {} after attempt {before}", gname(g.id), g.attempt);
                s.violation.get_or_insert(Violation { invariant: "attempts rise by one", detail });
            }
            s.attempts.insert(g.id, g.attempt);
            s.owners.insert(g.id, (owner.to_owned(), g.attempt));
            s.trace.push(at, &who.to_string(), format_args!("claimed {} attempt {}", gname(g.id), g.attempt));
        }
    }

    /// Checks a fenced write the store applied against the lease model: it
    /// must be the current attempt's, by the owner its claim named, on an
    /// unfinished generation.
    pub fn fenced_applied(
        &self,
        op: &'static str,
        lease: &terrace_ports::Lease,
        before: Option<&terrace_domain::Generation>,
    ) {
        let mut s = self.lock();
        let id = lease.generation_id;
        s.touched.insert(id);
        let owner = s.owners.get(&id).cloned();
        let wrong = match before {
            None => Some("on a generation that does not exist".to_owned()),
            Some(g) if g.status.is_terminal() => Some(format!("on a {} generation", g.status.as_str())),
            Some(g) if g.attempt != lease.attempt => Some(format!("while attempt {} holds", g.attempt)),
            Some(_) if owner.as_ref() != Some(&(lease.owner.0.clone(), lease.attempt)) => {
                Some(format!("while the lease is {owner:?}"))
            }
            Some(_) => None,
        };
        if let Some(wrong) = wrong {
            let detail =
                format!("{op} of {} attempt {} by {} applied {wrong}", gname(id), lease.attempt, lease.owner);
            s.violation.get_or_insert(Violation { invariant: "no superseded write applies", detail });
        }
        if matches!(op, "release" | "finish") {
            s.owners.remove(&id);
        }
    }

    /// The lease ends with the generation (a cancel, the sweep).
    pub fn ended(&self, ids: &[GenerationId]) {
        let mut s = self.lock();
        for id in ids {
            s.touched.insert(*id);
            s.owners.remove(id);
        }
    }

    /// A call reached the store about `id` (whatever it came to).
    pub fn touch(&self, id: GenerationId) {
        self.lock().touched.insert(id);
    }

    /// A call reached `user`'s account (whatever it came to).
    pub fn touch_user(&self, user: UserId) {
        self.lock().touched_users.insert(user);
    }
}
