//! CONTRACT §6's metrics over a prometheus-client registry. [`Metrics`] is
//! also the [`Observer`] that the engine and the adapters report to.
//!
//! Counters and histograms are updated as events happen; gauges that describe
//! state (tasks, pool, held credits, stuck generations, memory) are read when
//! `/metrics` is scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use terrace_domain::{ErrorCode, GenerationStatus, TimeoutKind};
use terrace_ports::{Observer, PoolStatus, StoreGauges, Upstream, UpstreamOutcome};

/// Buckets of `terrace_generation_duration_seconds`: a generation runs for
/// seconds to minutes and is bounded by the generation timeout.
pub const GENERATION_BUCKETS: &[f64] =
    &[1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 450.0, 600.0];
/// Buckets of `terrace_upstream_request_duration_seconds`: Maps calls take
/// tens of milliseconds, Gemini streams tens of seconds.
pub const UPSTREAM_BUCKETS: &[f64] =
    &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcomeLabels {
    upstream: String,
    outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamKindLabels {
    upstream: String,
    kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A counter that follows a total kept elsewhere (the store's), read at
/// scrape time.
#[derive(Debug, Default)]
struct Following {
    counter: Counter,
    seen: AtomicU64,
}

impl Following {
    /// Adds what the total grew by since the last scrape.
    fn follow(&self, total: u64) {
        let seen = self.seen.swap(total, Ordering::Relaxed);
        if total > seen {
            self.counter.inc_by(total - seen);
        }
    }
}

/// Every metric of CONTRACT §6.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tasks_active: Gauge,
    generations: Family<OutcomeLabel, Counter>,
    generation_duration: Histogram,
    stuck: Gauge,
    pool_connections: Family<StateLabel, Gauge>,
    pool_max: Gauge,
    acquire_timeouts: Following,
    creates_queued: Gauge,
    create_batches: Following,
    batched_creates: Following,
    upstream_requests: Family<UpstreamOutcomeLabels, Counter>,
    upstream_timeouts: Family<UpstreamKindLabels, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabel>,
    credits_held: Gauge,
    holds_voided: Family<ReasonLabel, Counter>,
    event_streams: Gauge,
    resident_memory: Gauge,
    requests_rejected: Family<ReasonLabel, Counter>,
    /// Labels `type` and `outcome` (`type` cannot be a field name).
    webhooks: Family<Vec<(&'static str, String)>, Counter>,
}

/// The Stripe event types Terrace acts on; any other is counted as `other`,
/// so that the label's values stay few.
const WEBHOOK_TYPES: &[&str] = &[
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            tasks_active: Gauge::default(),
            generations: Family::default(),
            generation_duration: Histogram::new(GENERATION_BUCKETS.iter().copied()),
            stuck: Gauge::default(),
            pool_connections: Family::default(),
            pool_max: Gauge::default(),
            acquire_timeouts: Following::default(),
            creates_queued: Gauge::default(),
            create_batches: Following::default(),
            batched_creates: Following::default(),
            upstream_requests: Family::default(),
            upstream_timeouts: Family::default(),
            upstream_duration: Family::new_with_constructor(|| {
                Histogram::new(UPSTREAM_BUCKETS.iter().copied())
            }),
            credits_held: Gauge::default(),
            holds_voided: Family::default(),
            event_streams: Gauge::default(),
            resident_memory: Gauge::default(),
            requests_rejected: Family::default(),
            webhooks: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "terrace_generation_tasks_active",
            "Generations this instance is running",
            m.tasks_active.clone(),
        );
        registry.register(
            "terrace_generations",
            "Generations that reached a terminal status on this instance, by outcome",
            m.generations.clone(),
        );
        registry.register(
            "terrace_generation_duration_seconds",
            "From a generation's creation to its terminal status",
            m.generation_duration.clone(),
        );
        registry.register(
            "terrace_generations_stuck",
            "Generations pending or processing past their deadline plus one lease TTL",
            m.stuck.clone(),
        );
        registry.register(
            "terrace_db_pool_connections",
            "Database pool connections by state",
            m.pool_connections.clone(),
        );
        registry.register("terrace_db_pool_max", "Database pool size limit", m.pool_max.clone());
        registry.register(
            "terrace_db_acquire_timeouts",
            "Waits for a pooled connection that ran out",
            m.acquire_timeouts.counter.clone(),
        );
        registry.register(
            "terrace_db_creates_queued",
            "Creates waiting to be written, together, in one transaction",
            m.creates_queued.clone(),
        );
        registry.register(
            "terrace_db_create_batches",
            "Transactions that wrote two creates or more at once",
            m.create_batches.counter.clone(),
        );
        registry.register(
            "terrace_db_batched_creates",
            "Creates written in a transaction with others",
            m.batched_creates.counter.clone(),
        );
        registry.register(
            "terrace_upstream_requests",
            "Requests to Google by upstream and outcome",
            m.upstream_requests.clone(),
        );
        registry.register(
            "terrace_upstream_timeouts",
            "Upstream deadlines that passed, by upstream and kind",
            m.upstream_timeouts.clone(),
        );
        registry.register(
            "terrace_upstream_request_duration_seconds",
            "Duration of requests to Google",
            m.upstream_duration.clone(),
        );
        registry.register("terrace_credits_held", "Credits held across all accounts", m.credits_held.clone());
        registry.register("terrace_holds_voided", "Holds voided, by reason", m.holds_voided.clone());
        registry.register("terrace_event_streams_active", "Open event streams", m.event_streams.clone());
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            m.resident_memory.clone(),
        );
        registry.register(
            "terrace_requests_rejected",
            "Requests refused at the edge: overloaded (the instance's caps), too_many_requests (the user's caps), timeout",
            m.requests_rejected.clone(),
        );
        registry.register(
            "terrace_stripe_webhooks",
            "Stripe webhooks by event type and outcome (applied, duplicate, ignored, bad_signature, failed)",
            m.webhooks.clone(),
        );
        // Every label value the contract names exists from the start, at zero.
        for reason in ["overloaded", "too_many_requests", "timeout"] {
            let _ = m.requests_rejected.get_or_create(&ReasonLabel { reason: reason.into() });
        }
        for s in GenerationStatus::ALL.iter().filter(|s| s.is_terminal()) {
            let _ = m.generations.get_or_create(&OutcomeLabel { outcome: s.as_str().into() });
        }
        for state in ["size", "available", "waiting"] {
            let _ = m.pool_connections.get_or_create(&StateLabel { state: state.into() });
        }
        for u in Upstream::ALL {
            let upstream = u.as_str().to_owned();
            for o in [
                UpstreamOutcome::Ok,
                UpstreamOutcome::Rejected,
                UpstreamOutcome::Unavailable,
                UpstreamOutcome::Timeout,
            ] {
                let _ = m.upstream_requests.get_or_create(&UpstreamOutcomeLabels {
                    upstream: upstream.clone(),
                    outcome: o.as_str().into(),
                });
            }
            for k in [TimeoutKind::Connect, TimeoutKind::Request, TimeoutKind::Idle, TimeoutKind::Deadline] {
                let _ = m.upstream_timeouts.get_or_create(&UpstreamKindLabels {
                    upstream: upstream.clone(),
                    kind: k.as_str().into(),
                });
            }
            let _ = m.upstream_duration.get_or_create(&UpstreamLabel { upstream });
        }
        for c in ErrorCode::ALL {
            let _ = m.holds_voided.get_or_create(&ReasonLabel { reason: c.as_str().into() });
        }
        Self { registry, ..m }
    }

    /// A Stripe webhook and what it came to.
    /// One Stripe webhook and what became of it.
    pub fn webhook(&self, kind: &str, outcome: &'static str) {
        // `unknown`: refused before its type was read.
        let kind = if kind == "unknown" || WEBHOOK_TYPES.contains(&kind) { kind } else { "other" };
        self.webhooks.get_or_create(&vec![("type", kind.to_owned()), ("outcome", outcome.to_owned())]).inc();
    }

    /// A request refused at the edge, by reason.
    /// A request the edge refused, by why.
    pub fn rejected(&self, reason: &'static str) {
        self.requests_rejected.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    /// One more (or one fewer) open event stream.
    /// The open event streams.
    pub fn event_streams(&self) -> &Gauge {
        &self.event_streams
    }

    /// Records what was read at scrape time.
    pub fn set_state(
        &self,
        tasks_active: Option<usize>,
        gauges: Option<StoreGauges>,
        pool: Option<PoolStatus>,
    ) {
        if let Some(n) = tasks_active {
            self.tasks_active.set(n as i64);
        }
        if let Some(g) = gauges {
            self.credits_held.set(g.credits_held as i64);
            self.stuck.set(g.stuck as i64);
        }
        if let Some(p) = pool {
            let set = |state: &str, v: usize| {
                self.pool_connections.get_or_create(&StateLabel { state: state.into() }).set(v as i64);
            };
            set("size", p.size);
            set("available", p.available);
            set("waiting", p.waiting);
            self.pool_max.set(p.max as i64);
            self.acquire_timeouts.follow(p.acquire_timeouts);
            self.creates_queued.set(p.creates_queued as i64);
            self.create_batches.follow(p.create_batches);
            self.batched_creates.follow(p.batched_creates);
        }
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss as i64);
        }
    }

    /// The registry in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Resident set size from `/proc/self/status` (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Observer for Metrics {
    fn upstream_request(&self, upstream: Upstream, outcome: UpstreamOutcome, elapsed: Duration) {
        self.upstream_requests
            .get_or_create(&UpstreamOutcomeLabels {
                upstream: upstream.as_str().into(),
                outcome: outcome.as_str().into(),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&UpstreamLabel { upstream: upstream.as_str().into() })
            .observe(elapsed.as_secs_f64());
    }

    fn upstream_timeout(&self, upstream: Upstream, kind: TimeoutKind) {
        self.upstream_timeouts
            .get_or_create(&UpstreamKindLabels {
                upstream: upstream.as_str().into(),
                kind: kind.as_str().into(),
            })
            .inc();
    }

    fn generation_finished(&self, status: GenerationStatus, elapsed: Duration) {
        self.generations.get_or_create(&OutcomeLabel { outcome: status.as_str().into() }).inc();
        self.generation_duration.observe(elapsed.as_secs_f64());
    }

    fn hold_voided(&self, reason: ErrorCode) {
        self.holds_voided.get_or_create(&ReasonLabel { reason: reason.as_str().into() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exposed() {
        let m = Metrics::new();
        m.generation_finished(GenerationStatus::Completed, Duration::from_secs(3));
        m.set_state(Some(2), Some(StoreGauges { credits_held: 4, stuck: 0 }), None);
        let pool =
            PoolStatus { creates_queued: 6, create_batches: 2, batched_creates: 5, ..PoolStatus::default() };
        m.set_state(None, None, Some(pool));
        m.set_state(None, None, Some(PoolStatus { create_batches: 3, batched_creates: 7, ..pool }));
        let text = m.encode();
        for name in [
            "terrace_generation_tasks_active 2",
            "terrace_generations_total{outcome=\"completed\"} 1",
            "terrace_generation_duration_seconds_bucket{le=\"5.0\"} 1",
            "terrace_generations_stuck 0",
            "terrace_db_pool_connections{state=\"waiting\"}",
            "terrace_db_pool_max",
            "terrace_db_acquire_timeouts_total",
            "terrace_db_creates_queued 6",
            "terrace_db_create_batches_total 3",
            "terrace_db_batched_creates_total 7",
            "terrace_upstream_requests_total{upstream=\"gemini\",outcome=\"timeout\"} 0",
            "terrace_upstream_timeouts_total{upstream=\"geocode\",kind=\"idle\"} 0",
            "terrace_upstream_request_duration_seconds_bucket{le=\"0.025\",upstream=\"staticmap\"}",
            "terrace_credits_held 4",
            "terrace_holds_voided_total{reason=\"cancelled\"} 0",
            "terrace_event_streams_active 0",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
