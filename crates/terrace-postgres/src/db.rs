//! The pool and the bounds on every call: a connection within the acquire
//! timeout, a body within the client-side deadline, and a connection whose
//! deadline passed cancelled on the server and discarded.

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
    Timeouts,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use terrace_domain::{DbPolicy, LockPolicy, Policies, StoreError};
use terrace_ports::PoolStatus;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, NoTls};
use tokio_util::task::TaskTracker;

/// Slack between the server's own timeouts and the client-side deadline, so
/// that the server's answer (a clean `57014`) normally wins.
const CLIENT_SLACK: Duration = Duration::from_secs(1);

/// Builds the driver configuration from a URL and the database policy:
/// connect timeout, TCP keepalives and user timeout, and the server-side
/// timeouts as startup options of every session.
pub(crate) fn pg_config(
    url: &str,
    db: &DbPolicy,
    application: &str,
) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg: tokio_postgres::Config =
        url.parse().map_err(|e| StoreError::Internal { detail: format!("invalid database URL: {e}") })?;
    let ms = |d: Duration| d.as_millis().max(1);
    let options = format!(
        "{} -c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        cfg.get_options().unwrap_or_default(),
        ms(db.statement_timeout),
        ms(db.lock_timeout),
        ms(db.idle_in_transaction_timeout),
    );
    cfg.options(options.trim_start())
        .application_name(application)
        .connect_timeout(db.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        // A connection whose sent data goes unacknowledged this long is dead.
        .tcp_user_timeout(db.connect_timeout.max(Duration::from_secs(1)) + db.statement_timeout);
    Ok(cfg)
}

/// The pool and the policy it runs under. Cheap to share.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) pool: Pool,
    pub(crate) policy: DbPolicy,
    pub(crate) lock: LockPolicy,
    /// How long an `Idempotency-Key` is honoured.
    pub(crate) idempotency_ttl: Duration,
    /// The longest a call's body may run once it has a connection.
    pub(crate) deadline: Duration,
    acquire_timeouts: AtomicU64,
    /// Cancel requests for connections whose deadline passed.
    tasks: TaskTracker,
    /// Connections that plain reads share (see [`Db::read`]).
    readers: Vec<std::sync::Mutex<Option<Arc<Shared>>>>,
    next_reader: AtomicU64,
}

/// Pooled connections set aside for shared reads: one per eight of the
/// pool, at most four, none for a pool smaller than eight.
fn shared_readers(pool_size: usize) -> usize {
    (pool_size / 8).min(4)
}

/// A pooled connection that many reads use at once. Returned to the pool
/// when the last user lets go of it, unless it broke: then it is closed.
struct Shared {
    obj: Option<Object>,
    cancel: CancelToken,
    broken: std::sync::atomic::AtomicBool,
    /// Reads on the connection now.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// One read on a shared connection. Dropped unfinished (its caller gave up,
/// or its deadline passed), it takes the connection out of use, so that no
/// later read queues behind a statement that may be stuck; the last read to
/// leave such a connection asks the server to cancel what still runs there.
/// A cancel is never sent while another read is on the connection: it would
/// stop whichever statement runs, perhaps another caller's.
struct Reading<'a> {
    db: &'a Db,
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.db.evict(&self.shared);
        }
        let left = self.shared.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && self.shared.broken.load(Ordering::Acquire) && !self.finished {
            self.db.cancel_later(self.shared.cancel.clone());
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("broken", &self.broken).finish_non_exhaustive()
    }
}

impl Shared {
    fn client(&self) -> &Object {
        self.obj.as_ref().expect("the connection is present until drop")
    }

    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.client().is_closed()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.broken.load(Ordering::Relaxed) {
            if let Some(obj) = self.obj.take() {
                drop(Object::take(obj));
            }
        }
    }
}

impl Db {
    pub(crate) fn new(
        cfg: tokio_postgres::Config,
        policies: &Policies,
        tasks: TaskTracker,
    ) -> Result<Db, StoreError> {
        let db = policies.db.clone();
        // No round trip to check a connection on each checkout: a dead one is
        // found by its connection task ending (TCP keepalives and the user
        // timeout above bound how long that takes), and `Fast` drops a
        // closed connection instead of handing it out.
        let manager =
            Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let (verify_after, verify_within) = (db.verify_idle_after, db.connect_timeout);
        let pool = Pool::builder(manager)
            .pre_recycle(Hook::async_fn(move |client, metrics| {
                Box::pin(async move {
                    if metrics.last_used() < verify_after {
                        return Ok(());
                    }
                    match tokio::time::timeout(verify_within, client.simple_query("")).await {
                        Ok(Ok(_)) => Ok(()),
                        _ => Err(HookError::Message("an idle pooled connection did not answer".into())),
                    }
                })
            }))
            .max_size(db.pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(db.acquire_timeout),
                create: Some(db.connect_timeout),
                recycle: Some(db.connect_timeout),
            })
            .build()
            .map_err(|e| StoreError::Internal { detail: format!("building the pool: {e}") })?;
        let deadline = db.statement_timeout + CLIENT_SLACK;
        Ok(Db {
            pool,
            policy: db,
            lock: policies.lock,
            idempotency_ttl: policies.idempotency_ttl,
            deadline,
            acquire_timeouts: AtomicU64::new(0),
            tasks,
            readers: (0..shared_readers(policies.db.pool_size))
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
            next_reader: AtomicU64::new(0),
        })
    }

    /// Asks the server, in a tracked task bounded by the connect timeout, to
    /// stop whatever it still runs for a connection given up on (best
    /// effort: the connection is closed either way).
    fn cancel_later(&self, cancel: CancelToken) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let bound = self.policy.connect_timeout;
        self.tasks.spawn_on(
            async move {
                match tokio::time::timeout(bound, cancel.cancel_query(NoTls)).await {
                    Ok(Ok(())) => tracing::debug!("cancelled a query given up on"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cancelling a query given up on failed"),
                    Err(_) => tracing::warn!("cancelling a query given up on timed out"),
                }
            },
            &rt,
        );
    }

    /// Closes the pool, and lets go of the shared readers' connections.
    pub(crate) fn close(&self) {
        self.pool.close();
        for slot in &self.readers {
            slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// Runs a read that needs no transaction (`body` sends its statements on
    /// a connection other reads may be using at the same moment), within the
    /// client-side deadline.
    ///
    /// The driver pipelines concurrent statements on one connection: each is
    /// sent without waiting for the ones before it to answer, and the server
    /// takes several from one read of its socket instead of waking once per
    /// statement on a connection of its own. A read's statement is never
    /// preceded by a check: a connection whose driver task ended (a reset, a
    /// keepalive unanswered) is replaced on the next read. A read given up
    /// on (its deadline passed, or its caller dropped it) takes its
    /// connection out of use and, if no other read is still on it, has the
    /// server cancel what runs there ([`Reading`]); the connection closes
    /// when its last read ends. With a pool smaller than eight, reads take a
    /// connection of their own, as writes do.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, what: &'static str, body: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&Object) -> Result<T, StoreError>,
    {
        if self.readers.is_empty() {
            return self.run(what, async |c| body(&*c).await).await;
        }
        let mut reading = Reading { db: self, shared: self.reader().await?, finished: false };
        let outcome = tokio::time::timeout(self.deadline, body(reading.shared.client())).await;
        match outcome {
            Ok(result) => {
                reading.finished = true;
                if result.is_err() && reading.shared.client().is_closed() {
                    self.evict(&reading.shared);
                }
                result
            }
            // `reading` drops unfinished: out of use, cancelled if last.
            Err(_) => {
                Err(StoreError::Timeout { what: format!("{what}: no answer within {:?}", self.deadline) })
            }
        }
    }

    /// A shared reader's connection: the next slot's, or a new one from the
    /// pool (within the acquire bounds) when the slot is empty or broken.
    async fn reader(self: &Arc<Self>) -> Result<Arc<Shared>, StoreError> {
        let i = (self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len() as u64) as usize;
        let slot = &self.readers[i];
        let current = slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|s| s.usable()).cloned();
        if let Some(shared) = current {
            shared.in_flight.fetch_add(1, Ordering::AcqRel);
            return Ok(shared);
        }
        let mut conn = self.acquire().await?;
        conn.clean = true;
        let obj = conn.obj.take().expect("a fresh connection");
        let shared = Arc::new(Shared {
            obj: Some(obj),
            cancel: conn.cancel.clone(),
            broken: Default::default(),
            in_flight: Default::default(),
        });
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        // Another read may have filled the slot meanwhile: then its
        // connection is used, and this one goes back to the pool.
        let chosen = match guard.as_ref().filter(|s| s.usable()) {
            Some(other) => other.clone(),
            None => {
                *guard = Some(shared.clone());
                shared
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(chosen)
    }

    /// Takes a broken shared connection out of its slot; it closes when the
    /// last read on it ends.
    fn evict(&self, shared: &Arc<Shared>) {
        shared.broken.store(true, Ordering::Release);
        for slot in &self.readers {
            let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
            if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, shared)) {
                guard.take();
            }
        }
    }

    /// A connection from the pool, within the acquire timeout (plus the
    /// connect timeout when a new connection must be made). Counts timeouts.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Conn, StoreError> {
        let got = tokio::time::timeout(self.acquire_bound(), self.pool.get()).await;
        let obj = match got {
            Ok(Ok(obj)) => obj,
            Ok(Err(PoolError::Timeout(kind))) => {
                self.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
                let what = match kind {
                    TimeoutType::Wait => "waiting for a pooled connection",
                    TimeoutType::Create => "connecting to the database",
                    TimeoutType::Recycle => "checking a pooled connection",
                };
                return Err(StoreError::Timeout { what: what.into() });
            }
            Ok(Err(PoolError::Backend(e))) => return Err(map_err(e)),
            Ok(Err(e)) => return Err(StoreError::Unavailable { detail: e.to_string() }),
            Err(_) => {
                self.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Timeout { what: "acquiring a connection".into() });
            }
        };
        let cancel = obj.cancel_token();
        Ok(Conn { obj: Some(obj), cancel, clean: false, db: self.clone() })
    }

    /// Runs `body` on a pooled connection within the client-side deadline.
    /// If the deadline passes (or the caller drops the future), the running
    /// query is cancelled on the server and the connection is discarded.
    pub(crate) async fn run<T, E, F>(self: &Arc<Self>, what: &'static str, body: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: AsyncFnOnce(&mut Object) -> Result<T, E>,
    {
        let conn = self.acquire().await?;
        self.run_on(conn, what, body).await
    }

    /// [`Db::run`] on a connection already acquired.
    pub(crate) async fn run_on<T, E, F>(&self, mut conn: Conn, what: &'static str, body: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: AsyncFnOnce(&mut Object) -> Result<T, E>,
    {
        let outcome = tokio::time::timeout(self.deadline, body(conn.client())).await;
        match outcome {
            Ok(result) => {
                conn.clean = true;
                result
            }
            Err(_) => {
                drop(conn);
                Err(StoreError::Timeout { what: format!("{what}: no answer within {:?}", self.deadline) }
                    .into())
            }
        }
    }

    /// The longest [`Db::acquire`] waits: the pool's wait, and the connect
    /// timeout when a new connection must be made.
    fn acquire_bound(&self) -> Duration {
        self.policy.acquire_timeout + self.policy.connect_timeout + CLIENT_SLACK
    }

    /// The longest a call may take: a connection, then its body's deadline.
    pub(crate) fn call_bound(&self) -> Duration {
        self.acquire_bound() + self.deadline
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let s = self.pool.status();
        PoolStatus {
            max: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
            acquire_timeouts: self.acquire_timeouts.load(Ordering::Relaxed),
            ..PoolStatus::default()
        }
    }
}

/// A pooled connection that returns to the pool only if its body finished;
/// otherwise it is cancelled on the server and discarded.
pub(crate) struct Conn {
    obj: Option<Object>,
    cancel: CancelToken,
    clean: bool,
    db: Arc<Db>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("clean", &self.clean).finish_non_exhaustive()
    }
}

impl Conn {
    pub(crate) fn client(&mut self) -> &mut Object {
        self.obj.as_mut().expect("the connection is present until drop")
    }

    /// Returns the connection to the pool unused.
    pub(crate) fn give_back(mut self) {
        self.clean = true;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        let Some(obj) = self.obj.take() else { return };
        // Out of the pool for good: dropping the wrapper closes the socket.
        drop(Object::take(obj));
        self.db.cancel_later(self.cancel.clone());
    }
}

/// The driver's text, with the server's own message and SQLSTATE when there
/// is one ("db error" alone explains nothing in a log).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Translates a driver error into the store's taxonomy.
pub(crate) fn map_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        if *code == SqlState::LOCK_NOT_AVAILABLE {
            return StoreError::Busy;
        }
        if *code == SqlState::QUERY_CANCELED {
            return StoreError::Timeout { what: "the statement or lock timeout passed".into() };
        }
        if *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT {
            return StoreError::Timeout { what: "the transaction sat idle too long".into() };
        }
        if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
            return StoreError::Busy;
        }
        if code.code().starts_with("08") || code.code().starts_with("57P") || code.code().starts_with("53") {
            return StoreError::Unavailable { detail: describe(&e) };
        }
        return StoreError::Internal { detail: describe(&e) };
    }
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable { detail: e.to_string() };
    }
    // Timeouts of the driver's own (connect_timeout) say so in their text.
    let text = e.to_string();
    if text.contains("timed out") || text.contains("timeout") {
        return StoreError::Timeout { what: text };
    }
    StoreError::Unavailable { detail: text }
}

/// Whether the error is the lock policy refusing a row lock.
pub(crate) fn is_lock_refused(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DbPolicy {
        DbPolicy {
            pool_size: 3,
            acquire_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_millis(1500),
            idle_in_transaction_timeout: Duration::from_secs(60),
            verify_idle_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn every_session_carries_the_server_side_bounds() {
        let cfg = pg_config(
            "postgres://u@db.example:5433/app?options=-c%20search_path%3Dapp",
            &policy(),
            "terrace",
        )
        .unwrap();
        let options = cfg.get_options().unwrap();
        for wanted in [
            "-c search_path=app",
            "-c statement_timeout=30000",
            "-c lock_timeout=1500",
            "-c idle_in_transaction_session_timeout=60000",
        ] {
            assert!(options.contains(wanted), "{wanted} missing from {options}");
        }
        assert_eq!(cfg.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert!(cfg.get_keepalives());
        assert_eq!(cfg.get_tcp_user_timeout(), Some(&Duration::from_secs(32)));
        assert_eq!(cfg.get_application_name(), Some("terrace"));
    }

    #[test]
    fn a_bad_url_is_an_error_not_a_panic() {
        assert!(matches!(pg_config("postgres://[::1", &policy(), "t"), Err(StoreError::Internal { .. })));
    }
}
