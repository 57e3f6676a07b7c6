//! The driver: one run of one seed. It starts the instances, then step by
//! step draws what users, admins, Stripe and operators do (and what the
//! weather does to the store), lets virtual time pass, and checks every
//! invariant; at the end it calms everything, waits for every generation
//! to end, and stops every instance.

use crate::check::{Checker, Context, entries};
use crate::client::{Client, Create, Done, Door, Router};
use crate::clock::SimClock;
use crate::shared::{Shared, Storm, Violation, Weather, Who, at_once, gname, uname, uuid};
use crate::store::FaultyStore;
use crate::upstream::{FaultyBlobs, SimGoogle};
use crate::{Options, SeedReport, Summary};
use chrono::{DateTime, Utc};
use fastrand::Rng;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::billing::{
    BillingChange, BillingEvent, EventOrder, MONTHLY_PRO, PACKAGES, SubscriptionChange, SubscriptionStatus,
    purchase_reference,
};
use terrace_domain::{
    Address, AreaKind, AreaRequest, CreditReference, CustomPrompt, DbPolicy, GenerationId, GenerationRequest,
    GenerationStatus, GrantAmount, LeasePolicy, LockPolicy, Policies, PreservationStrength, RetryPolicy,
    Style, UserId,
};
use terrace_engine::{Engine, Ports, ShutdownReport, Sweeper};
use terrace_memory::MemoryStore;
use terrace_ports::{BillingLedger, Clock, GenerationStore, NoopObserver, WorkerId};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

/// Trial credits every account opens with (the contract's default).
const TRIAL: u64 = 3;

/// The policies of a production instance (the contract's defaults), with
/// how many generations an instance runs and how many areas at once drawn
/// per seed.
pub fn policies(rng: &mut Rng) -> Policies {
    let retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(8),
        max_retry_after: Duration::from_secs(30),
    };
    Policies {
        maps_timeout: Duration::from_secs(10),
        llm_connect_timeout: Duration::from_secs(10),
        llm_idle_timeout: Duration::from_secs(90),
        area_timeout: Duration::from_secs(240),
        generation_timeout: Duration::from_secs(300),
        area_concurrency: rng.usize(1..=5),
        retry: retry.clone(),
        lock: LockPolicy::Timeout(Duration::from_millis(250)),
        db: DbPolicy {
            pool_size: 10,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(60),
            verify_idle_after: Duration::from_secs(5),
        },
        lease: LeasePolicy {
            ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(5),
            max_running: [1, 2, 4, 32][rng.usize(0..4)],
            sweep_batch: 500,
        },
        shutdown_grace: Duration::from_secs(30),
        blob_timeout: Duration::from_secs(30),
        blob_retries: 2,
        settle_retry: RetryPolicy { max_attempts: u32::MAX, ..retry },
        idempotency_ttl: terrace_domain::policy::IDEMPOTENCY_TTL,
        trial_credits: TRIAL,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Serves the API and runs work.
    All,
    /// Runs work only.
    Worker,
    /// Serves the API and sweeps, runs no work.
    Api,
}

/// A running incarnation of an instance.
struct Live {
    who: Who,
    dead: CancellationToken,
    engine: Option<Engine>,
    sweeper: Option<Sweeper>,
}

impl Live {
    async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        match (&self.engine, &self.sweeper) {
            (Some(e), _) => e.shutdown(grace).await,
            (None, Some(s)) => s.shutdown(grace).await,
            (None, None) => ShutdownReport { stopped: 0, drained: true },
        }
    }

    fn tracked(&self) -> usize {
        self.engine.as_ref().map_or(0, Engine::tracked_tasks)
            + self.sweeper.as_ref().map_or(0, Sweeper::tracked_tasks)
    }
}

struct Instance {
    index: u8,
    role: Role,
    incarnation: u16,
    clock: Arc<SimClock>,
    live: Option<Live>,
    /// While it shuts down: what kills it.
    shutting: Option<CancellationToken>,
}

/// How often each action is drawn, per seed.
#[derive(Debug, Clone, Copy)]
struct Mix {
    create: u32,
    cancel: u32,
    grant: u32,
    visit: u32,
    purchase: u32,
    subscribe: u32,
    crash: u32,
    restart: u32,
    shutdown: u32,
    jump: u32,
    idle: u32,
}

/// How storms come, per seed: `None` for a run without store faults.
#[derive(Debug, Clone, Copy)]
struct Storms {
    calm: (u64, u64),
    storm: (u64, u64),
    rate: f64,
    slow: f64,
}

/// One create body: an address and its areas.
#[derive(Debug, Clone)]
struct Body {
    address: usize,
    areas: Vec<(AreaKind, Style, bool)>,
}

struct User {
    id: UserId,
    /// Keys used, each with its body.
    keys: Vec<(u32, usize)>,
    subscribed: bool,
}

/// A Stripe event to deliver, and what the checks expect of it.
struct Sent {
    event: BillingEvent,
    user: UserId,
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    shared: Arc<Shared>,
    policies: Policies,
    opts: Options,
    instances: Vec<Instance>,
    /// Incarnations that stopped, and when, kept to check that their tasks
    /// end.
    graveyard: Vec<(Instant, Live)>,
    shutting: FuturesUnordered<LocalBoxFuture<'static, (u8, Live, ShutdownReport)>>,
    /// Client requests on their way.
    inflight: FuturesUnordered<LocalBoxFuture<'static, Done>>,
    client: Client,
    users: Vec<User>,
    user_ids: Vec<UserId>,
    bodies: Vec<Body>,
    proposals: Vec<GenerationId>,
    /// Every generation id a create proposed, per user and key.
    keys: BTreeMap<UserId, BTreeMap<String, Vec<GenerationId>>>,
    next_key: u32,
    grants: Vec<(UserId, String)>,
    sent: Vec<Sent>,
    deliveries: Vec<(Instant, usize)>,
    /// The newest event applied to each user's subscription, as last read.
    applied: BTreeMap<UserId, Option<EventOrder>>,
    next_event: u32,
    checker: Checker,
    mix: Mix,
    storms: Option<Storms>,
    /// Whether a storm blew at the last step (for the trace).
    stormy: bool,
    up_since: Option<Instant>,
    next_jump: Instant,
    max_pause: u64,
    /// Leases a live instance holds for work it does not run, and since when.
    orphans: BTreeMap<GenerationId, (String, u32, Instant)>,
    step: u64,
    summary: Summary,
}

fn ms(rng: &mut Rng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[rng.usize(0..from.len())]
}

const ADDRESSES: [&str; 4] =
    ["12 Garden Lane", "1600 Amphitheatre Parkway", "221B Baker Street", "4 Privet Drive"];

impl Sim {
    pub fn new(seed: u64, opts: Options) -> Self {
        let mut rng = Rng::with_seed(seed);
        let policies = policies(&mut rng);
        let epoch: DateTime<Utc> = DateTime::from_timestamp(1_893_456_000, 0).expect("a valid epoch");
        let start = Instant::now();
        let store_clock = Arc::new(SimClock::new(epoch, start, 0));
        let store = MemoryStore::new(store_clock.clone()).with_idempotency_ttl(policies.idempotency_ttl);
        let rate = |rng: &mut Rng| pick(rng, &[0.0, 0.02, 0.1, 0.3, 0.6]);
        let weather = Weather {
            geocode: rate(&mut rng),
            imagery: rate(&mut rng),
            design: rate(&mut rng),
            blob: rate(&mut rng) / 2.0,
            no_panorama: pick(&mut rng, &[0.0, 0.3, 1.0]),
        };
        let shared =
            Arc::new(Shared::new(policies.clone(), store, store_clock, &mut rng, weather, opts.keep));
        let count = rng.u8(1..=4);
        let instances = (0..count)
            .map(|index| Instance {
                index,
                role: match (index, rng.u8(0..10)) {
                    (0, _) => Role::All,
                    (_, 0..=4) => Role::All,
                    (_, 5..=7) => Role::Worker,
                    _ => Role::Api,
                },
                incarnation: 0,
                clock: Arc::new(SimClock::new(epoch, start, rng.i64(-1000..=1000))),
                live: None,
                shutting: None,
            })
            .collect();
        let users: Vec<User> = (0..rng.u32(2..=8))
            .map(|i| User { id: UserId(uuid(&mut rng, i)), keys: Vec::new(), subscribed: false })
            .collect();
        let w = |rng: &mut Rng, most: u32| rng.u32(0..=most);
        let mix = Mix {
            create: 2 + w(&mut rng, 6),
            cancel: w(&mut rng, 4),
            grant: 1 + w(&mut rng, 4),
            visit: w(&mut rng, 2),
            purchase: w(&mut rng, 3),
            subscribe: w(&mut rng, 2),
            crash: w(&mut rng, 3),
            restart: 2 + w(&mut rng, 6),
            shutdown: w(&mut rng, 2),
            jump: w(&mut rng, 2),
            idle: 20 + w(&mut rng, 40),
        };
        let storms = (rng.u8(0..5) != 0).then(|| Storms {
            calm: pick(&mut rng, &[(20_000, 60_000), (60_000, 180_000), (120_000, 400_000)]),
            storm: pick(&mut rng, &[(2_000, 10_000), (5_000, 40_000), (20_000, 90_000)]),
            rate: pick(&mut rng, &[0.05, 0.2, 0.5, 1.0]),
            slow: pick(&mut rng, &[0.0, 0.05, 0.2]),
        });
        let max_pause = pick(&mut rng, &[500, 1500, 3000]);
        let user_ids = users.iter().map(|u| u.id).collect();
        let summary = Summary { instances: count as u32, users: users.len() as u32, ..Summary::default() };
        let client = Client {
            router: Router::default(),
            shared: shared.clone(),
            limit: policies.db.call_timeout(),
            trial: TRIAL,
        };
        let mut sim = Sim {
            seed,
            rng,
            shared,
            policies,
            opts,
            instances,
            graveyard: Vec::new(),
            shutting: FuturesUnordered::new(),
            inflight: FuturesUnordered::new(),
            client,
            users,
            user_ids,
            bodies: Vec::new(),
            proposals: Vec::new(),
            keys: BTreeMap::new(),
            next_key: 0,
            grants: Vec::new(),
            sent: Vec::new(),
            deliveries: Vec::new(),
            applied: BTreeMap::new(),
            next_event: 0,
            checker: Checker::default(),
            mix,
            storms,
            stormy: false,
            up_since: None,
            next_jump: start,
            max_pause,
            orphans: BTreeMap::new(),
            step: 0,
            summary,
        };
        if let Some(s) = storms {
            // The storms of the whole run, drawn now: when they blow does
            // not depend on what the driver waits for.
            let end = start + Duration::from_secs(60 * opts.minutes);
            let mut at = start + ms(&mut sim.rng, s.calm.0..=s.calm.1);
            let mut schedule = Vec::new();
            while at < end {
                let to = at + ms(&mut sim.rng, s.storm.0..=s.storm.1);
                schedule.push((at, to, Storm { rate: s.rate, slow: s.slow }));
                at = to + ms(&mut sim.rng, s.calm.0..=s.calm.1);
            }
            sim.shared.lock().schedule = schedule;
        }
        sim
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        self.shared.trace("sim", what);
    }

    /// Runs the seed to its end or its first broken invariant.
    pub async fn run(mut self) -> SeedReport {
        let weather = self.shared.lock().weather;
        self.trace(format_args!(
            "seed {}: {} instances {:?}, {} users, {:?}, storms {:?}, weather {:?}, max_running {}, area_concurrency {}",
            self.seed,
            self.instances.len(),
            self.instances.iter().map(|i| i.role).collect::<Vec<_>>(),
            self.users.len(),
            self.mix,
            self.storms,
            weather,
            self.policies.lease.max_running,
            self.policies.area_concurrency,
        ));
        for i in 0..self.instances.len() {
            self.start(i);
        }
        let end = self.shared.start + Duration::from_secs(60 * self.opts.minutes);
        let result = async {
            while Instant::now() < end {
                self.step += 1;
                self.weather();
                self.deliver_due();
                self.act().await;
                let pause = ms(&mut self.rng, 0..=self.max_pause);
                self.advance(pause).await;
                self.check()?;
            }
            self.drain().await
        }
        .await;
        self.report(result.err())
    }

    fn report(mut self, violation: Option<Violation>) -> SeedReport {
        let s = self.shared.lock();
        self.summary.steps = self.step;
        self.summary.elapsed = self.shared.elapsed();
        self.summary.stats = s.stats;
        for (_, status) in self.checker.statuses() {
            match status {
                GenerationStatus::Completed => self.summary.completed += 1,
                GenerationStatus::PartiallyCompleted => self.summary.partial += 1,
                GenerationStatus::Failed => self.summary.failed += 1,
                GenerationStatus::Cancelled => self.summary.cancelled += 1,
                _ => self.summary.unfinished += 1,
            }
        }
        SeedReport {
            seed: self.seed,
            violation,
            step: self.step,
            summary: self.summary,
            digest: s.trace.digest(),
            events: s.trace.count(),
            trace: s.trace.lines().map(str::to_owned).collect(),
        }
    }

    /// Since when an instance has been up and the store without faults.
    fn healthy_since(&self) -> Option<Instant> {
        let s = self.shared.lock();
        if s.storm().is_some() {
            return None;
        }
        Some(self.up_since?.max(s.calm_since(self.shared.start)).max(s.last_fault_end))
    }

    /// Checks what the last step touched, and everything every 100 steps.
    fn check(&mut self) -> Result<(), Violation> {
        self.check_with(self.step % 100 == 0)
    }

    fn check_with(&mut self, full: bool) -> Result<(), Violation> {
        if crate::panicked() {
            return Err(Violation {
                invariant: "nothing panics",
                detail: "a task panicked (see stderr)".into(),
            });
        }
        let cx = Context {
            users: &self.user_ids,
            keys: &self.keys,
            healthy_since: self.healthy_since(),
            trial: TRIAL,
        };
        if let Some(v) = self.checker.check(&self.shared, &cx, full) {
            self.shared.violate(v.invariant, v.detail.clone());
            return Err(v);
        }
        self.orphans()?;
        // A stopped instance's last task is a run in its final write, which
        // tries for three call limits (plus the one in flight).
        let bound = self.policies.db.call_timeout() * 4 + Duration::from_secs(1);
        self.graveyard.retain(|(_, live)| live.tracked() != 0);
        if let Some((at, live)) = self.graveyard.iter().find(|(at, _)| at.elapsed() > bound) {
            let detail =
                format!("{} stopped {:?} ago and still has {} tasks", live.who, at.elapsed(), live.tracked());
            return Err(self.fail("every task of a stopped instance ends", detail));
        }
        Ok(())
    }

    /// Work a live instance holds a lease for runs there, or its lease runs
    /// out and another claim (or the sweep) takes it: a lease is not kept
    /// alive for work nobody does.
    fn orphans(&mut self) -> Result<(), Violation> {
        let owners = self.shared.lock().owners.clone();
        // Nothing can be claimed or run while no store call goes through.
        let Some(healthy) = self.healthy_since() else {
            self.orphans.clear();
            return Ok(());
        };
        let p = &self.policies;
        let bound =
            p.lease.ttl + p.lease.heartbeat_interval + p.lease.sweep_interval + p.db.call_timeout() * 2;
        let now = Instant::now();
        let mut orphans = BTreeMap::new();
        for live in self.instances.iter().filter_map(|i| i.live.as_ref()) {
            let Some(engine) = &live.engine else { continue };
            let name = live.who.to_string();
            let running: Vec<(GenerationId, u32)> =
                engine.tasks().iter().map(|t| (t.generation_id, t.attempt)).collect();
            for (id, (owner, attempt)) in owners.iter().filter(|(_, (o, _))| *o == name) {
                if running.contains(&(*id, *attempt)) {
                    continue;
                }
                let since = match self.orphans.get(id) {
                    Some((o, a, since)) if o == owner && a == attempt => *since,
                    _ => now,
                };
                orphans.insert(*id, (owner.clone(), *attempt, since));
                if now - since.max(healthy) > bound {
                    let detail = format!(
                        "{name} has held {}#{attempt} for {:?} without running it",
                        gname(*id),
                        now - since
                    );
                    return Err(self.fail("work a live instance holds runs there", detail));
                }
            }
        }
        self.orphans = orphans;
        Ok(())
    }

    fn fail(&self, invariant: &'static str, detail: String) -> Violation {
        self.shared.violate(invariant, detail.clone());
        Violation { invariant, detail }
    }

    fn up(&self) -> usize {
        self.instances.iter().filter(|i| i.live.is_some()).count()
    }

    fn went(&mut self, was: usize) {
        match (was, self.up()) {
            (0, n) if n > 0 => self.up_since = Some(Instant::now()),
            (_, 0) => self.up_since = None,
            _ => {}
        }
    }

    /// Starts instance `i`'s next incarnation.
    fn start(&mut self, i: usize) {
        let was = self.up();
        let inst = &mut self.instances[i];
        inst.incarnation += 1;
        let who = Who { instance: inst.index, incarnation: inst.incarnation };
        let dead = CancellationToken::new();
        let store = Arc::new(FaultyStore::new(self.shared.clone(), who, dead.clone()));
        let google = Arc::new(SimGoogle::new(self.shared.clone(), who, dead.clone()));
        let ports = Ports {
            geocoder: google.clone(),
            imagery: google.clone(),
            model: google,
            store: store.clone(),
            blobs: Arc::new(FaultyBlobs::new(self.shared.clone(), who, dead.clone())),
            observer: Arc::new(NoopObserver),
            clock: inst.clock.clone(),
        };
        let (engine, sweeper) = match inst.role {
            Role::All | Role::Worker => {
                (Some(Engine::start(ports, self.policies.clone(), WorkerId(who.to_string()))), None)
            }
            Role::Api => (None, Some(Sweeper::start(store.clone(), &self.policies))),
        };
        let role = inst.role;
        if role != Role::Worker {
            self.client.router.open(inst.index, Door { store: store.clone(), engine: engine.clone() });
        }
        inst.live = Some(Live { who, dead, engine, sweeper });
        self.summary.starts += 1;
        self.shared.trace(&who.to_string(), format_args!("started ({role:?})"));
        self.went(was);
    }

    /// Kills instance `i` (running, or shutting down): from now on its calls
    /// reach nothing, and its tasks are stopped without handing anything
    /// back.
    async fn crash(&mut self, i: usize) {
        let was = self.up();
        self.client.router.close(i as u8);
        if let Some(kill) = self.instances[i].shutting.take() {
            // SIGKILL during the drain: its shutdown ends at once.
            kill.cancel();
            self.summary.crashes += 1;
            self.trace(format_args!("instance {i} is killed while it shuts down"));
            return;
        }
        let Some(live) = self.instances[i].live.take() else { return };
        live.dead.cancel();
        live.shutdown(Duration::ZERO).await;
        self.summary.crashes += 1;
        self.shared.trace(&live.who.to_string(), format_args!("crashed"));
        self.graveyard.push((Instant::now(), live));
        self.went(was);
    }

    /// Stops instance `i` as SIGTERM does: its work is handed back within
    /// the grace, then the process exits.
    fn shutdown(&mut self, i: usize) {
        let was = self.up();
        self.client.router.close(i as u8);
        let Some(live) = self.instances[i].live.take() else { return };
        self.instances[i].shutting = Some(live.dead.clone());
        self.summary.shutdowns += 1;
        self.shared.trace(&live.who.to_string(), format_args!("shutting down"));
        let (grace, index) = (self.policies.shutdown_grace, i as u8);
        self.shutting.push(Box::pin(async move {
            let report = live.shutdown(grace).await;
            live.dead.cancel();
            (index, live, report)
        }));
        self.went(was);
    }

    /// A shutdown ended. A report that says it drained left no task
    /// behind.
    fn stopped(&mut self, (i, live, report): (u8, Live, ShutdownReport)) {
        self.instances[i as usize].shutting = None;
        self.shared.trace(
            &live.who.to_string(),
            format_args!("stopped: {} running, drained {}", report.stopped, report.drained),
        );
        if report.drained && live.tracked() != 0 {
            let detail = format!("{} reported {report:?} with {} tasks left", live.who, live.tracked());
            self.shared.violate("a drained shutdown leaves no task", detail);
        }
        self.graveyard.push((Instant::now(), live));
    }

    /// Lets `d` of virtual time pass, while instances shut down and client
    /// requests go their way.
    async fn advance(&mut self, d: Duration) {
        enum Next {
            Stopped((u8, Live, ShutdownReport)),
            Done(Done),
            Time,
        }
        let until = Instant::now() + d;
        loop {
            let next = tokio::select! {
                biased;
                Some(s) = self.shutting.next(), if !self.shutting.is_empty() => Next::Stopped(s),
                Some(d) = self.inflight.next(), if !self.inflight.is_empty() => Next::Done(d),
                _ = sleep_until(until) => Next::Time,
            };
            match next {
                Next::Stopped(s) => self.stopped(s),
                Next::Done(d) => self.done(d),
                Next::Time => return,
            }
        }
    }

    /// What a client request came to.
    fn done(&mut self, done: Done) {
        match done {
            Done::Nothing => {}
            Done::Replayed { user, key, generation } => {
                let ours = self
                    .keys
                    .get(&user)
                    .and_then(|k| k.get(&key))
                    .is_some_and(|ids| ids.contains(&generation));
                if !ours {
                    let detail = format!(
                        "key {key} of {} replayed {}, made under no such key",
                        uname(user),
                        gname(generation)
                    );
                    self.shared.violate("an idempotent create holds once", detail);
                }
            }
            Done::Delivered { index, user, answered } => {
                if !answered {
                    // Stripe sends it again later.
                    let later = Instant::now() + ms(&mut self.rng, 1_000..=30_000);
                    self.deliveries.push((later, index));
                }
                if let Err(v) = self.subscription_moves_forward(user) {
                    self.shared.violate(v.invariant, v.detail);
                }
            }
        }
    }

    /// Notes in the trace when a storm began or ended.
    fn weather(&mut self) {
        let storm = self.shared.lock().storm();
        if storm.is_some() != self.stormy {
            self.stormy = storm.is_some();
            match storm {
                Some(storm) => self.trace(format_args!("a storm blows: {storm:?}")),
                None => self.trace(format_args!("the store calms down")),
            }
        }
    }

    async fn act(&mut self) {
        let m = self.mix;
        let up = self.up();
        let down = self.instances.iter().filter(|i| i.live.is_none() && i.shutting.is_none()).count();
        let weights = [
            m.create,
            m.cancel,
            m.grant,
            m.visit,
            m.purchase,
            m.subscribe,
            if self.instances.iter().any(|i| i.live.is_some() || i.shutting.is_some()) { m.crash } else { 0 },
            if down > 0 { m.restart } else { 0 },
            if up > 0 { m.shutdown } else { 0 },
            m.jump,
            m.idle,
        ];
        let mut roll = self.rng.u32(0..weights.iter().sum::<u32>());
        let action = weights.iter().position(|w| {
            let hit = roll < *w;
            roll = roll.saturating_sub(*w);
            hit
        });
        match action {
            Some(0) => self.create(),
            Some(1) => self.cancel(),
            Some(2) => self.grant(),
            Some(3) => self.visit(),
            Some(4) => self.purchase(),
            Some(5) => self.subscribe(),
            Some(6) => {
                let i = self.pick_instance(|i| i.live.is_some() || i.shutting.is_some());
                self.crash(i).await;
            }
            Some(7) => {
                let i = self.pick_instance(|i| i.live.is_none() && i.shutting.is_none());
                self.start(i);
            }
            Some(8) => {
                let i = self.pick_instance(|i| i.live.is_some());
                self.shutdown(i);
            }
            Some(9) => self.jump(),
            _ => {}
        }
    }

    fn pick_instance(&mut self, which: impl Fn(&Instance) -> bool) -> usize {
        let fit: Vec<usize> = (0..self.instances.len()).filter(|i| which(&self.instances[*i])).collect();
        pick(&mut self.rng, &fit)
    }

    fn new_body(&mut self) -> usize {
        let mut kinds: Vec<AreaKind> = AreaKind::ALL.to_vec();
        self.rng.shuffle(&mut kinds);
        kinds.truncate(self.rng.usize(1..=5));
        let areas =
            kinds.into_iter().map(|k| (k, pick(&mut self.rng, Style::ALL), self.rng.u8(0..4) == 0)).collect();
        self.bodies.push(Body { address: self.rng.usize(0..ADDRESSES.len()), areas });
        self.bodies.len() - 1
    }

    fn request(&self, body: usize) -> GenerationRequest {
        let b = &self.bodies[body];
        GenerationRequest {
            address: Address::parse(ADDRESSES[b.address]).expect("a valid address"),
            areas: b
                .areas
                .iter()
                .map(|(area, style, custom)| AreaRequest {
                    area: *area,
                    style: *style,
                    custom_prompt: if *custom {
                        CustomPrompt::parse("more lavender").ok().flatten()
                    } else {
                        None
                    },
                    preservation_strength: PreservationStrength::DEFAULT,
                })
                .collect(),
        }
    }

    /// A user creates a generation, with an idempotency key (new, or one
    /// used before with the same body or another) or without.
    fn create(&mut self) {
        let u = self.rng.usize(0..self.users.len());
        let user = self.users[u].id;
        let (key, body) = match self.rng.u8(0..10) {
            0..=2 if !self.users[u].keys.is_empty() => {
                let (key, body) = pick(&mut self.rng, &self.users[u].keys);
                let body = if self.rng.u8(0..4) == 0 { self.new_body() } else { body };
                (Some(key), body)
            }
            0..=5 => {
                self.next_key += 1;
                let body = self.new_body();
                self.users[u].keys.push((self.next_key, body));
                (Some(self.next_key), body)
            }
            _ => (None, self.new_body()),
        };
        let key = key.map(|k| format!("k{k}"));
        let ids: Vec<GenerationId> = (0..4)
            .map(|_| {
                let index = self.proposals.len() as u32 + 1;
                let id = GenerationId(uuid(&mut self.rng, index));
                self.proposals.push(id);
                id
            })
            .collect();
        if let Some(k) = &key {
            self.keys.entry(user).or_default().entry(k.clone()).or_default().extend(&ids);
        }
        self.summary.creates += 1;
        let create = Create {
            user,
            key,
            body,
            request: self.request(body),
            deadline: self.policies.generation_timeout,
            ids,
        };
        let rng = self.rng.fork();
        self.inflight.push(Box::pin(self.client.clone().create(rng, create)));
    }

    fn cancel(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let id = pick(&mut self.rng, &self.proposals);
        let rng = self.rng.fork();
        self.inflight.push(Box::pin(self.client.clone().cancel(rng, id)));
    }

    /// An admin grants credits under a reference, now and then one used
    /// before.
    fn grant(&mut self) {
        let (user, reference) = if !self.grants.is_empty() && self.rng.u8(0..4) == 0 {
            self.grants[self.rng.usize(0..self.grants.len())].clone()
        } else {
            let user = self.users[self.rng.usize(0..self.users.len())].id;
            let reference = format!("grant-{}", self.grants.len() + 1);
            self.grants.push((user, reference.clone()));
            (user, reference)
        };
        let amount = GrantAmount::parse(self.rng.i64(1..=12)).expect("a valid amount");
        let reference = CreditReference::parse(&reference).expect("a valid reference");
        let rng = self.rng.fork();
        self.inflight.push(Box::pin(self.client.clone().grant(rng, user, amount, reference)));
    }

    fn visit(&mut self) {
        let user = self.users[self.rng.usize(0..self.users.len())].id;
        let rng = self.rng.fork();
        self.inflight.push(Box::pin(self.client.clone().visit(rng, user)));
    }

    /// Queues `event` for delivery, now and then twice, at random times.
    fn send(&mut self, event: BillingEvent, user: UserId) {
        self.sent.push(Sent { event, user });
        let index = self.sent.len() - 1;
        for _ in 0..if self.rng.u8(0..3) == 0 { 2 } else { 1 } {
            let due = Instant::now() + ms(&mut self.rng, 0..=60_000);
            self.deliveries.push((due, index));
        }
    }

    fn event_id(&mut self) -> String {
        self.next_event += 1;
        format!("evt_{}", self.next_event)
    }

    fn stripe_now(&self) -> i64 {
        self.shared.store_clock.now().timestamp()
    }

    /// A user pays for a package: one event, delivered once or more, and
    /// now and then a second event of the same payment.
    fn purchase(&mut self) {
        let user = self.users[self.rng.usize(0..self.users.len())].id;
        let package = pick(&mut self.rng, &PACKAGES[..2]);
        let payment_intent = format!("pi_{}", self.next_event + 1);
        let order = EventOrder { created: self.stripe_now(), rank: 2 };
        let change = BillingChange::Purchase {
            user,
            package,
            payment_intent: payment_intent.clone(),
            customer_id: Some(format!("cus_{}", uname(user))),
        };
        let id = self.event_id();
        self.send(
            BillingEvent { id, kind: "checkout.session.completed".into(), order, change: change.clone() },
            user,
        );
        if self.rng.u8(0..5) == 0 {
            let id = self.event_id();
            let kind = "checkout.session.async_payment_succeeded".into();
            self.send(BillingEvent { id, kind, order, change }, user);
        }
    }

    /// A user subscribes; later the subscription may be set to end, fall
    /// past due, or be deleted. Each event is delivered at its own time, so
    /// they arrive out of order.
    fn subscribe(&mut self) {
        let free: Vec<usize> = (0..self.users.len()).filter(|u| !self.users[*u].subscribed).collect();
        if free.is_empty() {
            return;
        }
        let u = pick(&mut self.rng, &free);
        self.users[u].subscribed = true;
        let user = self.users[u].id;
        let created = self.stripe_now();
        let customer = Some(format!("cus_{}", uname(user)));
        let subscription = Some(format!("sub_{}", uname(user)));
        let period_end = DateTime::from_timestamp(created + 30 * 86_400, 0);
        let change = |status, cancel_at_period_end| SubscriptionChange {
            customer_id: customer.clone(),
            subscription_id: subscription.clone(),
            plan: Some(MONTHLY_PRO.id.into()),
            status: Some(status),
            current_period_end: period_end,
            cancel_at_period_end,
        };
        let mut events = vec![
            (
                "customer.subscription.created",
                EventOrder { created, rank: 1 },
                change(SubscriptionStatus::Active, Some(false)),
            ),
            (
                "checkout.session.completed",
                EventOrder { created, rank: 2 },
                change(SubscriptionStatus::Active, None),
            ),
            (
                "invoice.payment_succeeded",
                EventOrder { created, rank: 3 },
                change(SubscriptionStatus::Active, None),
            ),
        ];
        let mut at = created;
        if self.rng.bool() {
            at += self.rng.i64(1..=100);
            events.push((
                "customer.subscription.updated",
                EventOrder { created: at, rank: 4 },
                change(SubscriptionStatus::Active, Some(true)),
            ));
        }
        if self.rng.bool() {
            at += self.rng.i64(1..=100);
            events.push((
                "invoice.payment_failed",
                EventOrder { created: at, rank: 3 },
                change(SubscriptionStatus::PastDue, None),
            ));
        }
        if self.rng.bool() {
            at += self.rng.i64(1..=100);
            events.push((
                "customer.subscription.deleted",
                EventOrder { created: at, rank: 5 },
                change(SubscriptionStatus::Cancelled, None),
            ));
        }
        for (kind, order, change) in events {
            let id = self.event_id();
            let change = BillingChange::Subscription { user: Some(user), change };
            self.send(BillingEvent { id, kind: kind.into(), order, change }, user);
        }
    }

    /// Stripe delivers what is due; a delivery that is not answered is
    /// sent again later.
    fn deliver_due(&mut self) {
        let now = Instant::now();
        let mut due: Vec<(Instant, usize)> = Vec::new();
        self.deliveries.retain(|d| {
            let ready = d.0 <= now;
            if ready {
                due.push(*d);
            }
            !ready
        });
        due.sort();
        for (_, index) in due {
            let (event, user) = (self.sent[index].event.clone(), self.sent[index].user);
            let rng = self.rng.fork();
            self.inflight.push(Box::pin(self.client.clone().deliver(rng, index, user, event)));
        }
    }

    /// A subscription never moves back to an older event.
    fn subscription_moves_forward(&mut self, user: UserId) -> Result<(), Violation> {
        let now = at_once(self.shared.store.subscription(user)).expect("the memory ledger answers").applied;
        let before = self.applied.insert(user, now).flatten();
        if before.is_some() && now < before {
            let detail = format!("{}'s subscription went from {before:?} back to {now:?}", uname(user));
            return Err(self.fail("a subscription never moves back", detail));
        }
        Ok(())
    }

    /// A clock steps, within what the lease rules allow: forward by less
    /// than a TTL less a heartbeat interval (a live lease survives it),
    /// back by a few seconds; at most once per TTL.
    fn jump(&mut self) {
        let now = Instant::now();
        if now < self.next_jump {
            return;
        }
        let lease = &self.policies.lease;
        self.next_jump = now + lease.ttl;
        let forward = (lease.ttl - lease.heartbeat_interval).as_millis() as i64 - 1_000;
        let delta =
            if self.rng.u8(0..3) == 0 { -self.rng.i64(1_000..=5_000) } else { self.rng.i64(1_000..=forward) };
        if self.rng.bool() {
            self.shared.store_clock.jump(delta);
            self.trace(format_args!("the store's clock jumps {delta}ms"));
        } else {
            let i = self.rng.usize(0..self.instances.len());
            let clock = &self.instances[i].clock;
            if (clock.offset_ms() + delta).abs() <= 15_000 {
                clock.jump(delta);
                self.trace(format_args!("instance {i}'s clock jumps {delta}ms"));
            }
        }
    }

    /// Calms the store, starts every instance, delivers every event, and
    /// waits for every generation to end; then checks what only the end can
    /// show, and stops every instance.
    async fn drain(&mut self) -> Result<(), Violation> {
        self.storms = None;
        self.shared.lock().calm_from_now();
        self.trace(format_args!("drain: the store calms down, every instance comes up"));
        while !self.shutting.is_empty() {
            self.advance(Duration::from_secs(1)).await;
        }
        for i in 0..self.instances.len() {
            if self.instances[i].live.is_none() {
                self.start(i);
            }
        }
        let p = &self.policies;
        let bound = p.generation_timeout + p.lease.ttl + p.lease.sweep_interval + p.db.call_timeout() * 3;
        let until = Instant::now() + bound + Duration::from_secs(60);
        loop {
            self.step += 1;
            for d in &mut self.deliveries {
                d.0 = d.0.min(Instant::now());
            }
            self.deliver_due();
            self.advance(Duration::from_secs(1)).await;
            self.check()?;
            let open: Vec<String> = self
                .checker
                .statuses()
                .filter(|(_, s)| !s.is_terminal())
                .map(|(id, s)| format!("{} {}", gname(id), s.as_str()))
                .collect();
            let quiet = self.deliveries.is_empty() && self.inflight.is_empty() && self.graveyard.is_empty();
            if open.is_empty() && quiet {
                break;
            }
            if Instant::now() > until {
                let detail = format!("unfinished after {bound:?} without faults: {}", open.join(", "));
                return Err(self.fail("every generation ends by the end of the run", detail));
            }
        }
        self.check_with(true)?;
        self.settled()?;
        // Calls a storm left hanging end first; then, with nothing to run
        // and a healthy store, every shutdown drains.
        let hung = self.shared.lock().last_fault_end;
        if hung > Instant::now() {
            self.advance(hung - Instant::now()).await;
        }
        for i in 0..self.instances.len() {
            self.shutdown(i);
        }
        let grace = self.policies.shutdown_grace;
        while let Ok(Some((i, live, report))) =
            timeout(grace + Duration::from_secs(1), self.shutting.next()).await
        {
            if !report.drained {
                let detail =
                    format!("{} with nothing to run: {report:?}, {} tasks left", live.who, live.tracked());
                return Err(self.fail("a shutdown drains", detail));
            }
            self.stopped((i, live, report));
        }
        if let Some(i) = self.instances.iter().position(|i| i.shutting.is_some()) {
            return Err(self.fail("a shutdown drains", format!("instance {i} did not stop within its grace")));
        }
        self.check_with(true)
    }

    /// What holds once everything ended: no credit held; every purchase
    /// credited once; every subscription as its newest event says.
    fn settled(&mut self) -> Result<(), Violation> {
        let gauges =
            at_once(self.shared.store.gauges(self.policies.lease.ttl)).expect("the memory store answers");
        if gauges.credits_held != 0 || gauges.stuck != 0 {
            return Err(self.fail("every generation ends by the end of the run", format!("{gauges:?}")));
        }
        let mut newest: BTreeMap<UserId, (EventOrder, SubscriptionStatus)> = BTreeMap::new();
        for sent in &self.sent {
            match &sent.event.change {
                BillingChange::Purchase { payment_intent, .. } => {
                    let reference = purchase_reference(payment_intent);
                    let credited = entries(&self.shared, sent.user)
                        .iter()
                        .filter(|e| e.reference.as_deref() == Some(reference.as_str()))
                        .count();
                    if credited != 1 {
                        let detail =
                            format!("{} for {} credited {credited} times", reference, uname(sent.user));
                        return Err(self.fail("a purchase credits once", detail));
                    }
                }
                BillingChange::Subscription { change, .. } => {
                    let status = change.status.unwrap_or_default();
                    let e = newest.entry(sent.user).or_insert((sent.event.order, status));
                    if sent.event.order > e.0 {
                        *e = (sent.event.order, status);
                    }
                }
                BillingChange::Ignored => {}
            }
        }
        for (user, (order, status)) in newest {
            let sub = at_once(self.shared.store.subscription(user)).expect("the memory ledger answers");
            if sub.status != status || sub.applied != Some(order) {
                let detail = format!(
                    "{}'s subscription is {} at {:?}; its newest event says {} at {order:?}",
                    uname(user),
                    sub.status.as_str(),
                    sub.applied,
                    status.as_str()
                );
                return Err(self.fail("a subscription ends as its newest event says", detail));
            }
        }
        Ok(())
    }
}
