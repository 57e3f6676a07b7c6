//! Reads that share a connection: many at once on one connection, a read
//! given up on never cancels another caller's, and a dead shared connection
//! is replaced.

use crate::support::{TestDb, policies, session};
use std::time::Duration;
use terrace_conformance::new_generation;
use terrace_domain::{AreaKind, GenerationId, UserId};
use terrace_ports::{CreateOutcome, GenerationStore};

/// Sessions of the store (its pool and shared readers) by what they wait on.
async fn terrace_sessions(admin: &tokio_postgres::Client, waiting_on_lock: bool) -> i64 {
    let filter = if waiting_on_lock { " AND wait_event_type = 'Lock'" } else { "" };
    admin
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'terrace'{filter}"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn one_generation(store: &terrace_postgres::PgStore) -> GenerationId {
    let made = store
        .create(new_generation(UserId::new_random(), &[AreaKind::Patio], Duration::from_secs(60), 3), None)
        .await
        .unwrap();
    match made {
        CreateOutcome::Created(g) => g.id,
        other => panic!("expected a new generation, got {other:?}"),
    }
}

/// Policies with a pool of eight (one connection set aside for reads) and
/// server-side timeouts long enough that only the client gives up.
fn shared_reads(patient_server: bool) -> terrace_domain::Policies {
    let mut p = policies();
    p.db.pool_size = 8;
    if patient_server {
        p.db.statement_timeout = Duration::from_secs(8);
        p.db.lock_timeout = Duration::from_secs(8);
    }
    p
}

/// A session holding `generations` locked until it rolls back.
async fn table_locked(db: &TestDb) -> tokio_postgres::Client {
    let locker = session(&db.url).await;
    locker.batch_execute("BEGIN; LOCK TABLE generations IN ACCESS EXCLUSIVE MODE").await.unwrap();
    locker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_reads_at_once_share_one_connection() {
    let db = TestDb::create().await;
    let store = db.store(&shared_reads(false)).await;
    let id = one_generation(&store).await;
    let admin = session(&db.url).await;
    let before = terrace_sessions(&admin, false).await;
    let reads = (0..200).map(|_| store.get(id));
    let got = futures::future::join_all(reads).await;
    assert!(got.iter().all(|g| matches!(g, Ok(Some(g)) if g.id == id)), "every read answered");
    let after = terrace_sessions(&admin, false).await;
    // Two hundred reads at once took at most one connection more than the
    // write had made: without sharing they would have filled the pool.
    assert!(after <= before + 1, "{before} sessions before, {after} after");
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_given_up_on_never_cancels_another_read_on_its_connection() {
    let db = TestDb::create().await;
    let store = db.store(&shared_reads(true)).await;
    let id = one_generation(&store).await;
    let admin = session(&db.url).await;
    let locker = table_locked(&db).await;
    // The first read waits on the lock; the second is pipelined behind it.
    let patient = tokio::spawn({
        let store = store.clone();
        async move { store.get(id).await }
    });
    terrace_conformance::eventually("the first read waits on the lock", Duration::from_secs(3), async || {
        (terrace_sessions(&admin, true).await == 1).then_some(())
    })
    .await;
    let gave_up = tokio::time::timeout(Duration::from_millis(200), store.get(id)).await;
    assert!(gave_up.is_err(), "the second read was given up on");
    // Nothing cancelled the first read: it still waits, and answers once the
    // lock goes.
    assert_eq!(terrace_sessions(&admin, true).await, 1, "the first read still waits");
    locker.batch_execute("ROLLBACK").await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(3), patient).await.unwrap().unwrap();
    assert!(matches!(&answered, Ok(Some(g)) if g.id == id), "{answered:?}");
    // Later reads use a connection nobody gave up on.
    assert!(matches!(store.get(id).await, Ok(Some(_))));
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_read_given_up_on_is_cancelled_on_the_server() {
    let db = TestDb::create().await;
    let store = db.store(&shared_reads(true)).await;
    let admin = session(&db.url).await;
    let locker = table_locked(&db).await;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), store.get(GenerationId::new_random())).await;
    assert!(gave_up.is_err());
    // Alone on its connection, the abandoned read is cancelled well before
    // the server's own timeouts (8 s) would end it.
    terrace_conformance::eventually("the abandoned read is cancelled", Duration::from_secs(3), async || {
        (terrace_sessions(&admin, true).await == 0).then_some(())
    })
    .await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert!(store.get(GenerationId::new_random()).await.unwrap().is_none());
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_connection_killed_by_the_server_is_replaced() {
    let db = TestDb::create().await;
    let store = db.store(&shared_reads(false)).await;
    let id = one_generation(&store).await;
    assert!(store.get(id).await.unwrap().is_some());
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
    // The driver sees its connection end; the next reads take a new one.
    terrace_conformance::eventually("a read answers again", Duration::from_secs(5), async || {
        store.get(id).await.ok().flatten()
    })
    .await;
    store.close().await;
    db.drop_now().await;
}
