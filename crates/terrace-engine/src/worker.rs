//! An instance's worker: the loops that claim, heartbeat, sweep and deliver
//! cancellation, and the handle the binary and the API hold.
//!
//! Every loop's `select!` is `biased` with its stop signal first: a loop
//! told to stop never starts another round, and which branch wins never
//! depends on a random draw, so that one schedule (paused time, one thread)
//! always runs the same way.

use crate::Ports;
use crate::retry::bounded;
use crate::runner::{RunOutcome, run_generation};
use crate::supervisor::{ShutdownReport, StopReason, Supervisor, TaskInfo};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::{Generation, GenerationId, Policies};
use terrace_ports::{GenerationStore, Lease, LeaseState, Notification, WorkerId};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Idempotency keys forgotten per store call, and calls per sweep at most:
/// ten thousand keys per sweep interval per instance.
const KEY_BATCH: usize = 1000;
const KEY_BATCHES: usize = 10;

/// Sweeps once. Ends overdue work: every generation still `pending` or
/// `processing` past its deadline whose lease (if any) has run out ends
/// `failed` (`deadline_exceeded`), its holds voided. Then forgets the
/// idempotency keys whose window has ended, in bounded batches.
async fn sweep_once(store: &dyn GenerationStore, call_limit: Duration, batch: usize) {
    match bounded(call_limit, "end_overdue", store.end_overdue(batch)).await {
        Ok(ended) if !ended.is_empty() => info!(count = ended.len(), "ended overdue generations"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "sweep failed"),
    }
    let mut forgotten = 0;
    for _ in 0..KEY_BATCHES {
        match bounded(call_limit, "forget_expired_keys", store.forget_expired_keys(KEY_BATCH)).await {
            Ok(n) => {
                forgotten += n;
                if n < KEY_BATCH {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "forgetting expired idempotency keys failed");
                break;
            }
        }
    }
    if forgotten > 0 {
        debug!(count = forgotten, "forgot expired idempotency keys");
    }
}

/// The sweep: every instance, whatever its role, ends overdue work
/// (CONTRACT §5), so a hold never outlives its deadline for want of a
/// worker. An [`Engine`] runs one of its own; an instance that runs no
/// engine (role `api`) starts one alone.
#[derive(Debug, Clone)]
pub struct Sweeper {
    supervisor: Supervisor,
    stop: CancellationToken,
}

impl Sweeper {
    /// Sweeps now and then every `policies.lease.sweep_interval`. Must be
    /// called inside a tokio runtime.
    pub fn start(store: Arc<dyn GenerationStore>, policies: &Policies) -> Sweeper {
        let sweeper = Sweeper { supervisor: Supervisor::new(), stop: CancellationToken::new() };
        let (stop, every, limit) =
            (sweeper.stop.clone(), policies.lease.sweep_interval, policies.db.call_timeout());
        let batch = policies.lease.sweep_batch;
        sweeper.supervisor.spawn_loop(async move {
            let mut tick = interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => sweep_once(&*store, limit, batch).await,
                }
            }
        });
        sweeper
    }

    /// Stops sweeping; waits at most `grace` for a sweep in progress.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.stop.cancel();
        self.supervisor.shutdown(grace).await
    }

    /// Its loop, while it runs (0 after shutdown).
    pub fn tracked_tasks(&self) -> usize {
        self.supervisor.tracked()
    }
}

/// A running worker. Cheap to clone; all clones drive the same worker.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ports: Ports,
    policies: Policies,
    owner: WorkerId,
    supervisor: Supervisor,
    sweeper: Sweeper,
    wake: Notify,
    stop_loops: CancellationToken,
}

impl Engine {
    /// Starts the worker's loops: claim (on [`Engine::wake`], on a `Created`
    /// notification, and every sweep interval, for work whose lease ran
    /// out), heartbeat (one store call per interval for all of this
    /// instance's leases), cancellation delivery, and its [`Sweeper`] (end
    /// overdue work). Must be called inside a tokio runtime.
    pub fn start(ports: Ports, policies: Policies, owner: WorkerId) -> Engine {
        let sweeper = Sweeper::start(ports.store.clone(), &policies);
        let inner = Arc::new(Inner {
            ports,
            policies,
            owner,
            supervisor: Supervisor::new(),
            sweeper,
            wake: Notify::new(),
            stop_loops: CancellationToken::new(),
        });
        let engine = Engine { inner };
        let sup = &engine.inner.supervisor;
        sup.spawn_loop(engine.clone().claim_loop());
        sup.spawn_loop(engine.clone().heartbeat_loop());
        sup.spawn_loop(engine.clone().notification_loop());
        info!(worker = %engine.inner.owner, "worker started");
        engine
    }

    /// Asks the worker to claim now (a generation was just created here).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// This instance's running generations.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        self.inner.supervisor.list()
    }

    /// How many generations run here now.
    pub fn active(&self) -> usize {
        self.inner.supervisor.count()
    }

    /// Every task alive, the worker's own loops and its sweeper's included
    /// (0 after shutdown).
    pub fn tracked_tasks(&self) -> usize {
        self.inner.supervisor.tracked() + self.inner.sweeper.tracked_tasks()
    }

    /// Stops a generation running here (the store has recorded the user's
    /// cancel already). Returns whether it ran here.
    pub fn cancel_local(&self, generation: terrace_domain::GenerationId) -> bool {
        self.inner.supervisor.cancel(generation, StopReason::User)
    }

    /// Stops claiming, tells every running generation to hand itself back,
    /// and waits at most `grace` for them. It drained when every task ended,
    /// its sweeper's included.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.inner.stop_loops.cancel();
        let (report, swept) =
            tokio::join!(self.inner.supervisor.shutdown(grace), self.inner.sweeper.shutdown(grace));
        let report = ShutdownReport { drained: report.drained && swept.drained, ..report };
        info!(stopped = report.stopped, drained = report.drained, "worker stopped");
        report
    }

    fn call_limit(&self) -> Duration {
        self.inner.policies.db.call_timeout()
    }

    /// Starts a claimed generation under the supervisor.
    fn run(&self, generation: Generation) {
        let lease = Lease {
            generation_id: generation.id,
            attempt: generation.attempt,
            owner: self.inner.owner.clone(),
        };
        let info = TaskInfo {
            generation_id: generation.id,
            request_id: generation.request_id.clone(),
            attempt: generation.attempt,
            started_at: self.inner.ports.clock.now(),
            deadline_at: generation.deadline_at,
            stage: "starting",
        };
        let engine = self.clone();
        self.inner.supervisor.spawn(info, move |stop, stage| async move {
            let i = &engine.inner;
            let outcome = run_generation(&i.ports, &i.policies, generation, lease, stop, Some(stage)).await;
            if matches!(outcome, RunOutcome::Finished(_)) {
                // Capacity freed: look for more work at once.
                engine.wake();
            }
        });
    }

    /// Claims work while there is room: on the sweep's tick, everything
    /// claimable (work whose lease expired too); when new work is
    /// announced, pending work only, which a store finds without looking at
    /// every running generation's lease.
    async fn claim_available(&self, expired_too: bool) {
        let i = &self.inner;
        let room = i.policies.lease.max_running.saturating_sub(i.supervisor.count());
        if room == 0 || i.stop_loops.is_cancelled() {
            return;
        }
        let (owner, ttl) = (&i.owner, i.policies.lease.ttl);
        let claim = async {
            if expired_too {
                i.ports.store.claim(owner, ttl, room).await
            } else {
                i.ports.store.claim_pending(owner, ttl, room).await
            }
        };
        match bounded(self.call_limit(), "claim", claim).await {
            Ok(claimed) => {
                if !claimed.is_empty() {
                    debug!(count = claimed.len(), "claimed generations");
                }
                claimed.into_iter().for_each(|g| self.run(g));
            }
            Err(e) => warn!(error = %e, "claim failed"),
        }
    }

    async fn claim_loop(self) {
        let stop = self.inner.stop_loops.clone();
        let mut tick = interval(self.inner.policies.lease.sweep_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let expired_too = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.inner.wake.notified() => false,
                _ = tick.tick() => true,
            };
            self.claim_available(expired_too).await;
        }
    }

    async fn heartbeat_loop(self) {
        let stop = self.inner.stop_loops.clone();
        let mut tick = interval(self.inner.policies.lease.heartbeat_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // When this instance's leases were last known renewed (or it held none).
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.heartbeat(&mut renewed).await,
            }
        }
    }

    /// Renews every lease in one call and reconciles: a generation this
    /// instance runs but no longer owns stops without writing; one whose user
    /// asked to cancel stops as cancelled; one it holds but runs nothing for
    /// (a claim whose answer was lost, a claim of its own expired lease
    /// while the old attempt still ran) runs here now, so that no lease is
    /// kept alive for work nobody does. When heartbeats have failed for a
    /// lease TTL since the last one that renewed (`renewed`), the leases have
    /// lapsed and another instance may run the work: everything running here
    /// stops without writing, instead of calling upstreams for work whose
    /// writes the fence would refuse.
    async fn heartbeat(&self, renewed: &mut Instant) {
        let i = &self.inner;
        let started = Instant::now();
        let running = i.supervisor.running();
        if running.is_empty() {
            *renewed = started;
            return;
        }
        let ttl = i.policies.lease.ttl;
        let beat = i.ports.store.heartbeat(&i.owner, ttl);
        let leases = match bounded(self.call_limit(), "heartbeat", beat).await {
            Ok(l) => {
                *renewed = started;
                l
            }
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                if renewed.elapsed() >= ttl {
                    for (id, _) in running {
                        if i.supervisor.cancel(id, StopReason::LeaseLost) {
                            warn!(generation_id = %id, "lease lapsed: heartbeats failed for a lease TTL");
                        }
                    }
                }
                return;
            }
        };
        let owned: HashMap<_, _> = leases.iter().map(|l| (l.generation_id, l)).collect();
        for (id, attempt) in running {
            match owned.get(&id) {
                Some(l) if l.attempt == attempt && l.cancel_requested => {
                    i.supervisor.cancel(id, StopReason::User);
                }
                Some(l) if l.attempt == attempt => {}
                _ => {
                    if i.supervisor.cancel(id, StopReason::LeaseLost) {
                        warn!(generation_id = %id, "lease no longer held");
                    }
                }
            }
        }
        let runs: HashSet<GenerationId> = i.supervisor.running().into_iter().map(|(id, _)| id).collect();
        for held in leases.iter().filter(|l| !runs.contains(&l.generation_id)) {
            self.adopt(held).await;
        }
    }

    /// Runs a generation this instance holds the lease of, under that lease.
    async fn adopt(&self, held: &LeaseState) {
        let get = self.inner.ports.store.get(held.generation_id);
        match bounded(self.call_limit(), "get", get).await {
            Ok(Some(g)) if g.attempt == held.attempt && !g.status.is_terminal() => {
                info!(generation_id = %g.id, attempt = g.attempt, "running work held here but not run");
                self.run(g);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not read work held here"),
        }
    }

    async fn notification_loop(self) {
        let stop = self.inner.stop_loops.clone();
        while !stop.is_cancelled() {
            let mut events = self.inner.ports.store.notifications();
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    n = events.next() => n,
                };
                match next {
                    Some(Notification::Created(_)) => self.wake(),
                    Some(Notification::CancelRequested(id)) => {
                        self.inner.supervisor.cancel(id, StopReason::User);
                    }
                    Some(Notification::Changed(_)) => {}
                    None => break,
                }
            }
            // The stream ended (its connection dropped): subscribe again after
            // a pause; heartbeats and sweeps cover the gap.
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
