//! Every running generation, tracked: id, request id, attempt, start,
//! deadline and stage; cancellable by id; drained on shutdown within a bound.
//! [`Supervisor::spawn`] is the only way the engine starts a task, so no task
//! runs untracked.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use terrace_domain::{GenerationId, RequestId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a running generation was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The user cancelled it: unfinished areas end `cancelled`.
    User,
    /// This instance is shutting down: the work is handed back.
    Shutdown,
    /// Another worker owns it now: stop without writing.
    LeaseLost,
}

/// One running generation, as `GET /v1/admin/tasks` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub generation_id: GenerationId,
    pub request_id: RequestId,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    pub stage: &'static str,
}

/// The stop signal a task watches: a token and the reason it fired for.
#[derive(Debug, Clone)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl Stop {
    /// A signal tied to nothing (tests and embedders running one generation).
    pub fn new() -> Self {
        Self { token: CancellationToken::new(), reason: Arc::default() }
    }
    /// Fires the signal; the first reason wins.
    pub fn fire(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }
    /// Resolves when the signal fires, with its reason.
    ///
    /// Cancel safety: safe to drop and call again.
    pub async fn fired(&self) -> StopReason {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(StopReason::Shutdown)
    }
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

/// A running task's entry: what it reports and how to stop it.
#[derive(Debug)]
struct Entry {
    info: TaskInfo,
    stop: Stop,
}

/// Lets a task report its stage.
#[derive(Debug, Clone)]
pub struct StageReporter {
    id: GenerationId,
    tasks: Arc<Mutex<BTreeMap<GenerationId, Entry>>>,
}

impl StageReporter {
    pub fn set(&self, stage: &'static str) {
        if let Some(e) = lock(&self.tasks).get_mut(&self.id) {
            e.info.stage = stage;
        }
    }
}

/// What a shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tasks running when shutdown began.
    pub stopped: usize,
    /// Whether every task ended within the grace period.
    pub drained: bool,
}

/// Tracks every task the engine runs. Tasks are kept in id order, so that
/// they are listed, and told to stop, in the same order on every run.
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    tracker: TaskTracker,
    tasks: Arc<Mutex<BTreeMap<GenerationId, Entry>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a task's entry however the task ends (finishes, panics, dropped).
struct Deregister {
    id: GenerationId,
    tasks: Arc<Mutex<BTreeMap<GenerationId, Entry>>>,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        lock(&self.tasks).remove(&self.id);
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a generation's task unless one runs for it already (then
    /// returns `false` and drops `start`). `start` gets the stop signal and a
    /// stage reporter.
    pub fn spawn<F, Fut>(&self, info: TaskInfo, start: F) -> bool
    where
        F: FnOnce(Stop, StageReporter) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let id = info.generation_id;
        let stop = Stop::new();
        {
            let mut tasks = lock(&self.tasks);
            if tasks.contains_key(&id) || self.tracker.is_closed() {
                return false;
            }
            tasks.insert(id, Entry { info, stop: stop.clone() });
        }
        let guard = Deregister { id, tasks: self.tasks.clone() };
        let fut = start(stop, StageReporter { id, tasks: self.tasks.clone() });
        self.tracker.spawn(async move {
            let _guard = guard;
            fut.await;
        });
        true
    }

    /// Spawns a background loop of the engine itself, tracked like the rest.
    pub fn spawn_loop(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(fut);
    }

    /// Tells one task to stop. Returns whether it was running here.
    pub fn cancel(&self, id: GenerationId, reason: StopReason) -> bool {
        lock(&self.tasks).get(&id).map(|e| e.stop.fire(reason)).is_some()
    }

    /// The running generations' ids and attempts.
    pub fn running(&self) -> Vec<(GenerationId, u32)> {
        lock(&self.tasks).values().map(|e| (e.info.generation_id, e.info.attempt)).collect()
    }

    pub fn list(&self) -> Vec<TaskInfo> {
        let mut v: Vec<TaskInfo> = lock(&self.tasks).values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|t| t.started_at);
        v
    }

    /// Running generations.
    pub fn count(&self) -> usize {
        lock(&self.tasks).len()
    }

    /// Every tracked task still alive, loops included.
    pub fn tracked(&self) -> usize {
        self.tracker.len()
    }

    /// Stops every task with [`StopReason::Shutdown`], refuses new ones, and
    /// waits at most `grace` for them to end.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.tracker.close();
        let stopped = {
            let tasks = lock(&self.tasks);
            tasks.values().for_each(|e| e.stop.fire(StopReason::Shutdown));
            tasks.len()
        };
        let drained = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        ShutdownReport { stopped, drained }
    }
}
