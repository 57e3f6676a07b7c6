//! Nothing waits without a deadline: a full pool, a locked account, a locked
//! table, a stalled connection.

use crate::support::{Proxy, TestDb, host_port, policies, session, with_database};
use std::time::{Duration, Instant};
use terrace_conformance::new_generation;
use terrace_domain::{
    AreaKind, CreateError, CreditReference, GrantAmount, LedgerError, LockPolicy, StoreError, UserId,
};
use terrace_ports::{GenerationStore, Ledger};

/// Slack for scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_secs(1);

fn within(elapsed: Duration, bound: Duration) {
    assert!(elapsed <= bound + MARGIN, "took {elapsed:?}, bound {bound:?} plus {MARGIN:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_fails_acquire_within_its_timeout() {
    let db = TestDb::create().await;
    let mut p = policies();
    p.db.pool_size = 2;
    p.db.acquire_timeout = Duration::from_millis(300);
    p.db.lock_timeout = Duration::from_secs(4);
    p.db.statement_timeout = Duration::from_secs(5);
    let store = db.store(&p).await;
    // Hold every pooled connection: two reads wait on a table lock.
    let locker = session(&db.url).await;
    locker.batch_execute("BEGIN; LOCK TABLE generations IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.get(terrace_domain::GenerationId::new_random()).await })
        })
        .collect();
    terrace_conformance::eventually("both connections are busy", Duration::from_secs(5), async || {
        let st = store.pool();
        (st.size == 2 && st.available == 0).then_some(())
    })
    .await;
    let started = Instant::now();
    let refused = store.ping().await;
    within(started.elapsed(), p.db.acquire_timeout);
    assert!(matches!(refused, Err(StoreError::Timeout { .. })), "{refused:?}");
    let status = store.pool();
    assert_eq!((status.max, status.acquire_timeouts), (2, 1));
    locker.batch_execute("ROLLBACK").await.unwrap();
    for b in blocked {
        assert_eq!(b.await.unwrap(), Ok(None), "the waiting reads finish once the lock is gone");
    }
    store.ping().await.unwrap();
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_account_is_busy_at_once_or_within_the_lock_timeout() {
    let db = TestDb::create().await;
    for (policy, least, most) in [
        (LockPolicy::NoWait, Duration::ZERO, Duration::from_millis(300)),
        (
            LockPolicy::Timeout(Duration::from_millis(400)),
            Duration::from_millis(380),
            Duration::from_millis(400),
        ),
    ] {
        let mut p = policies();
        p.lock = policy;
        let store = db.store(&p).await;
        let user = UserId::new_random();
        store.open_account(user, 3).await.unwrap();
        let locker = session(&db.url).await;
        locker
            .batch_execute(&format!("BEGIN; SELECT 1 FROM accounts WHERE user_id = '{}' FOR UPDATE", user.0))
            .await
            .unwrap();
        let started = Instant::now();
        let created =
            store.create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(60), 3), None).await;
        let took = started.elapsed();
        assert_eq!(created.err(), Some(CreateError::AccountBusy), "{policy:?}");
        assert!(took >= least, "{policy:?}: refused after {took:?}, before the lock timeout");
        within(took, most);
        let reference = CreditReference::parse("busy-grant").unwrap();
        let granted = store.grant(user, GrantAmount::parse(1).unwrap(), &reference, 3).await;
        assert_eq!(granted.err(), Some(LedgerError::AccountBusy));
        locker.batch_execute("ROLLBACK").await.unwrap();
        let acc = store.open_account(user, 3).await.unwrap();
        assert_eq!(
            (acc.trial_credits, acc.held, acc.token_balance),
            (3, 0, 0),
            "nothing was held or granted"
        );
        assert!(store.conservation_violations().await.unwrap().is_empty());
        store.close().await;
    }
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_table_ends_in_the_lock_or_statement_timeout() {
    let db = TestDb::create().await;
    // Lock timeout first, then statement timeout first.
    let cases = [
        (Duration::from_millis(300), Duration::from_secs(3), "lock"),
        (Duration::from_secs(3), Duration::from_millis(300), "statement"),
    ];
    for (lock_timeout, statement_timeout, which) in cases {
        let mut p = policies();
        p.db.lock_timeout = lock_timeout;
        p.db.statement_timeout = statement_timeout;
        let store = db.store(&p).await;
        let locker = session(&db.url).await;
        locker
            .batch_execute("BEGIN; LOCK TABLE accounts, generations IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let started = Instant::now();
        let got = store.get(terrace_domain::GenerationId::new_random()).await;
        within(started.elapsed(), lock_timeout.min(statement_timeout));
        match which {
            "lock" => assert_eq!(got, Err(StoreError::Busy)),
            _ => assert!(matches!(got, Err(StoreError::Timeout { .. })), "{got:?}"),
        }
        let user = UserId::new_random();
        let started = Instant::now();
        let created =
            store.create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(60), 3), None).await;
        within(started.elapsed(), lock_timeout.min(statement_timeout));
        assert!(created.is_err(), "{which}: {created:?}");
        locker.batch_execute("ROLLBACK").await.unwrap();
        store.ping().await.unwrap();
        store.close().await;
    }
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_is_abandoned_at_the_client_deadline_and_discarded() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(&host_port(&db.url)).await;
    let url = with_database(&format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port), &db.name);
    let mut p = policies();
    p.db.statement_timeout = Duration::from_millis(500);
    p.db.pool_size = 1;
    let store =
        terrace_postgres::PgStore::connect(&url, &p, std::sync::Arc::new(terrace_ports::NoopObserver))
            .await
            .unwrap();
    assert_eq!(store.pool().size, 1);
    // The network stalls in the middle of a call: the query reaches the
    // server, the answer never comes back.
    proxy.stall_on("FROM generations g LEFT JOIN generation_areas");
    let started = Instant::now();
    let got = store.get(terrace_domain::GenerationId::new_random()).await;
    let took = started.elapsed();
    assert!(matches!(got, Err(StoreError::Timeout { .. })), "{got:?}");
    // The client-side deadline is the statement timeout plus a second.
    assert!(took >= Duration::from_millis(1400), "gave up early: {took:?}");
    within(took, Duration::from_millis(1500));
    assert_eq!(store.pool().size, 0, "the stalled connection was discarded, not pooled");
    // A new connection serves the next call.
    store.ping().await.unwrap();
    assert_eq!(store.pool().size, 1);
    store.close().await;
    proxy.stop();
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_killed_by_the_server_are_replaced() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    store.ping().await.unwrap();
    let admin = session(&db.url).await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'terrace'",
            &[],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty());
    // The verified recycle notices the dead connection and makes a new one.
    terrace_conformance::eventually("a fresh connection answers", Duration::from_secs(5), async || {
        store.ping().await.ok()
    })
    .await;
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_that_stalled_while_idle_is_replaced_by_the_idle_check() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(&host_port(&db.url)).await;
    let url = with_database(&format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port), &db.name);
    let mut p = policies();
    p.db.pool_size = 1;
    p.db.connect_timeout = Duration::from_millis(500);
    // Checked however short its idleness (in service, only connections idle
    // for `verify_idle_after` are).
    p.db.verify_idle_after = Duration::ZERO;
    let store =
        terrace_postgres::PgStore::connect(&url, &p, std::sync::Arc::new(terrace_ports::NoopObserver))
            .await
            .unwrap();
    // The idle pooled connection goes dead without a word.
    proxy.freeze();
    let started = Instant::now();
    assert_eq!(store.get(terrace_domain::GenerationId::new_random()).await, Ok(None));
    // The idle check gives up within its timeout (the connect timeout) and
    // a new connection serves the call.
    within(started.elapsed(), p.db.connect_timeout * 2);
    assert_eq!(store.pool().size, 1);
    store.close().await;
    proxy.stop();
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_by_its_caller_is_cancelled_on_the_server_and_discarded() {
    let db = TestDb::create().await;
    let mut p = policies();
    p.db.lock_timeout = Duration::from_secs(8);
    p.db.statement_timeout = Duration::from_secs(8);
    let store = db.store(&p).await;
    let before = store.pool().size;
    let locker = session(&db.url).await;
    locker.batch_execute("BEGIN; LOCK TABLE generations IN ACCESS EXCLUSIVE MODE").await.unwrap();
    // The caller gives up long before the server would.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        store.get(terrace_domain::GenerationId::new_random()),
    )
    .await;
    assert!(gave_up.is_err());
    let waiting = async || {
        locker
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'terrace' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // The server stops the query well before its own timeouts would.
    let started = Instant::now();
    terrace_conformance::eventually("the abandoned query is cancelled", Duration::from_secs(3), async || {
        (waiting().await == 0).then_some(())
    })
    .await;
    within(started.elapsed(), Duration::from_millis(500));
    assert!(store.pool().size < before.max(1), "the abandoned connection left the pool");
    locker.batch_execute("ROLLBACK").await.unwrap();
    store.ping().await.unwrap();
    store.close().await;
    db.drop_now().await;
}

/// A transaction that changes an account (a worker's capture, say) makes a
/// create or a grant on it wait only as the lock policy says: with `NOWAIT`,
/// not at all. (An insert of the account that met the changed row would
/// wait for that transaction up to the session's lock timeout, here longer
/// than the statement timeout: the answer would be a timeout, not "busy".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_another_transaction_changes_is_busy_at_once_under_nowait() {
    let db = TestDb::create().await;
    let mut p = policies();
    p.lock = LockPolicy::NoWait;
    p.db.lock_timeout = Duration::from_secs(30);
    let store = db.store(&p).await;
    let user = UserId::new_random();
    store.open_account(user, 3).await.unwrap();
    let other = session(&db.url).await;
    other
        .batch_execute(&format!("BEGIN; UPDATE accounts SET updated_at = now() WHERE user_id = '{}'", user.0))
        .await
        .unwrap();
    let create =
        store.create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(600), 3), None).await;
    assert_eq!(create, Err(CreateError::AccountBusy), "the create is refused at once, not timed out");
    let reference = CreditReference::parse("grant-1").unwrap();
    let grant = store.grant(user, GrantAmount::parse(5).unwrap(), &reference, 3).await;
    assert!(matches!(grant, Err(LedgerError::AccountBusy)), "the grant too: {grant:?}");
    other.batch_execute("COMMIT").await.unwrap();
    assert!(
        store
            .create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(600), 3), None)
            .await
            .is_ok()
    );
    assert_eq!(
        store.grant(user, GrantAmount::parse(5).unwrap(), &reference, 3).await.unwrap().account.token_balance,
        5
    );
    db.drop_now().await;
}
