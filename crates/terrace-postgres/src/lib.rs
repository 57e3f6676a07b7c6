//! The generation store and the credit ledger on Postgres.
//!
//! [`PgStore`] implements [`terrace_ports::GenerationStore`] and
//! [`terrace_ports::Ledger`] on one deadpool-postgres pool; [`migrate`] applies
//! the schema of `migrations/`. Several Terrace instances share one database:
//! that is how work outlives a process.
//!
//! Bounds (CONTRACT §1.1): a pooled connection comes within the acquire
//! timeout (deadpool's `wait`, `create` and `recycle` timeouts are all set), a
//! new connection within the connect timeout, and every session carries the
//! server-side `statement_timeout`, `lock_timeout` and
//! `idle_in_transaction_session_timeout` of [`terrace_domain::DbPolicy`]. Each
//! call's body runs under a client-side deadline a little longer than the
//! statement timeout; when it passes, or when the caller drops the future, the
//! server is asked to cancel the query and the connection is discarded, never
//! returned to the pool. Reads outside a transaction share a few pipelined
//! connections instead (`db::Db::read`): one given up on takes its
//! connection out of use, and is cancelled once no other read is on it.
//!
//! Credits (CONTRACT §1.2): the schema enforces non-negative balances,
//! `credited = available + held + captured` on every account row, one
//! resolution per hold, and one application per credit reference. A new
//! generation's hold takes the account row lock under the lock policy
//! (`FOR UPDATE NOWAIT` or a `SET LOCAL lock_timeout`) and SQLSTATE 55P03
//! becomes "account busy".
//!
//! Durable work (CONTRACT §1.3): claims use `FOR UPDATE SKIP LOCKED`, leases
//! are renewed for all of an instance's generations by one statement, every
//! worker write is fenced by `(id, attempt, lease_owner)`, and changes are
//! announced with `NOTIFY` on one channel that every store listens on, once
//! the transaction that made them has committed.
//!
//! Generation and area state changes are the domain's own
//! ([`terrace_domain::Area::complete`], [`terrace_domain::Generation::settle`],
//! …), applied to rows read under a row lock inside the transaction.

mod billing;
mod db;
mod gather;
mod ledger;
mod listen;
mod migrate;
mod pipeline;
mod rows;
mod sql;
mod store;

pub use migrate::{MIGRATIONS, Migration, migrate};

use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::{Policies, StoreError};
use terrace_ports::{Notification, Observer, PoolStatus};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The store and ledger on Postgres. Cheap to clone; every clone shares the
/// pool and the listener.
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<db::Db>,
    observer: Arc<dyn Observer>,
    events: broadcast::Sender<Notification>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Creates waiting to be written together.
    gather: gather::Gather,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
        self.db.close();
    }
}

/// How long [`PgStore::close`] waits for its tasks.
const CLOSE_BOUND: Duration = Duration::from_secs(2);

impl PgStore {
    /// Builds the pool for `url` under `policies.db` and `policies.lock`,
    /// checks that the database answers, and starts the notification
    /// listener. Does not migrate: run [`migrate`] first.
    ///
    /// TLS is not supported yet: connections are plain TCP (or a Unix socket).
    pub async fn connect(
        url: &str,
        policies: &Policies,
        observer: Arc<dyn Observer>,
    ) -> Result<PgStore, StoreError> {
        let cfg = db::pg_config(url, &policies.db, "terrace")?;
        let tasks = TaskTracker::new();
        let db = Arc::new(db::Db::new(cfg.clone(), policies, tasks.clone())?);
        let (events, _) = broadcast::channel(4096);
        let stop = CancellationToken::new();
        let mut listen_cfg = db::pg_config(url, &policies.db, "terrace-listener")?;
        // The listener's session idles outside any transaction; only the
        // connect bound matters to it.
        listen_cfg.connect_timeout(policies.db.connect_timeout);
        tasks.spawn(listen::run(listen_cfg, policies.db.connect_timeout, events.clone(), stop.clone()));
        let store = PgStore {
            inner: Arc::new(Inner { db, observer, events, stop, tasks, gather: Default::default() }),
        };
        if let Err(e) = terrace_ports::GenerationStore::ping(&store).await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// Stops the listener and the pool. Returns within two seconds; calls
    /// made afterwards fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.db.close();
        self.inner.tasks.close();
        if tokio::time::timeout(CLOSE_BOUND, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!("the store's tasks did not stop within {CLOSE_BOUND:?}");
        }
    }

    /// The pool's state and the count of acquire timeouts, for `/metrics`.
    pub fn pool(&self) -> PoolStatus {
        let gather = &self.inner.gather;
        let (create_batches, batched_creates) = gather.counts();
        PoolStatus {
            creates_queued: gather.queued(),
            create_batches,
            batched_creates,
            ..self.inner.db.status()
        }
    }

    fn db(&self) -> &Arc<db::Db> {
        &self.inner.db
    }

    fn subscribe(&self) -> BoxStream<'static, Notification> {
        let stopped = self.inner.stop.clone().cancelled_owned();
        BroadcastStream::new(self.inner.events.subscribe())
            .filter_map(|n| async move { n.ok() })
            .take_until(stopped)
            .boxed()
    }
}
