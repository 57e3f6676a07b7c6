//! Transactions whose last writes travel with their `COMMIT`: a write that
//! fails there, or refuses, keeps nothing of its transaction, and leaves its
//! connection ready for the next call.

use crate::support::{TestDb, policies, refuse_inserts, session};
use std::time::Duration;
use terrace_conformance::{eventually, key_claim, new_generation};
use terrace_domain::{AreaKind, CreateError, GenerationStatus, HoldState, LockPolicy, UserId};
use terrace_ports::{CreateOutcome, GenerationStore, Lease, Ledger, WorkerId};

const LONG: Duration = Duration::from_secs(600);

/// Every row the user has, counted: accounts' balances, generations, ledger
/// entries, idempotency keys.
async fn footprint(s: &tokio_postgres::Client, user: UserId) -> (i64, i64, i64, i64, i64) {
    let row = s
        .query_one(
            "SELECT (SELECT held FROM accounts WHERE user_id = $1),
                    (SELECT trial_credits FROM accounts WHERE user_id = $1),
                    (SELECT count(*) FROM generations WHERE user_id = $1),
                    (SELECT count(*) FROM ledger_entries WHERE user_id = $1),
                    (SELECT count(*) FROM idempotency_keys WHERE user_id = $1)",
            &[&user.0],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// A store on one pooled connection: a call after a failed one must find
/// that connection clean.
async fn one_connection_store(db: &TestDb) -> terrace_postgres::PgStore {
    let mut p = policies();
    p.db.pool_size = 1;
    db.store(&p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_write_fails_with_its_commit_keeps_nothing() {
    let db = TestDb::create().await;
    let store = one_connection_store(&db).await;
    let user = UserId::new_random();
    store.open_account(user, 3).await.unwrap();
    let s = session(&db.url).await;
    let before = footprint(&s, user).await;
    refuse_inserts(&s, "generation_areas", "true").await;
    let refused = store.create(new_generation(user, &[AreaKind::Patio], LONG, 3), None).await;
    assert!(matches!(refused, Err(CreateError::Store(_))), "the failed write is the answer: {refused:?}");
    assert_eq!(footprint(&s, user).await, before, "nothing of the failed create was kept");

    s.batch_execute("DROP TRIGGER refuse ON generation_areas").await.unwrap();
    let CreateOutcome::Created(g) =
        store.create(new_generation(user, &[AreaKind::Patio], LONG, 3), None).await.unwrap()
    else {
        panic!("created")
    };
    assert_eq!(store.get(g.id).await.unwrap().map(|g| g.status), Some(GenerationStatus::Pending));
    let (held, trial, generations, entries, _) = footprint(&s, user).await;
    assert_eq!((held, trial, generations, entries), (1, 2, 1, before.3 + 1), "one hold, one entry");
    assert!(store.conservation_violations().await.unwrap().is_empty());
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_write_that_fails_with_its_commit_keeps_nothing() {
    let db = TestDb::create().await;
    let store = one_connection_store(&db).await;
    let user = UserId::new_random();
    let CreateOutcome::Created(g) =
        store.create(new_generation(user, &[AreaKind::Patio], LONG, 3), None).await.unwrap()
    else {
        panic!("created")
    };
    let owner = WorkerId("w1".into());
    let claimed = store.claim(&owner, Duration::from_secs(30), 1).await.unwrap();
    let lease = Lease { generation_id: g.id, attempt: claimed[0].attempt, owner };
    let s = session(&db.url).await;
    // The capture's ledger entry fails: the area's completion, sent in the
    // same round trip, must not stay.
    refuse_inserts(&s, "ledger_entries", "NEW.kind = 'capture'").await;
    let failed = store.complete_area(&lease, AreaKind::Patio, "images/patio.png").await;
    assert!(failed.is_err(), "the failed capture is the answer: {failed:?}");
    let area = store.get(g.id).await.unwrap().unwrap().areas[0].clone();
    assert_eq!((area.status.as_str(), area.hold, area.image_key), ("pending", HoldState::Held, None));

    s.batch_execute("DROP TRIGGER refuse ON ledger_entries").await.unwrap();
    let resolved = store.complete_area(&lease, AreaKind::Patio, "images/patio.png").await.unwrap();
    assert_eq!(resolved.len(), 1, "the retry captures once");
    let area = store.get(g.id).await.unwrap().unwrap().areas[0].clone();
    assert_eq!(area.hold, HoldState::Captured);
    assert!(store.conservation_violations().await.unwrap().is_empty());
    db.drop_now().await;
}

/// Two creates with one key: the second waits for the account lock while
/// the first commits. Its lock statement's snapshot predates that commit, so
/// it cannot see the key; its write, sent with its COMMIT, finds the key and
/// refuses, and the COMMIT rolls everything back. The retry replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_while_waiting_for_the_lock_keeps_nothing_and_its_retry_replays() {
    let db = TestDb::create().await;
    let mut p = policies();
    p.lock = LockPolicy::Timeout(Duration::from_secs(3));
    let store = std::sync::Arc::new(db.store(&p).await);
    let user = UserId::new_random();
    store.open_account(user, 3).await.unwrap();
    let claim = || Some(key_claim("key-1", "h1"));

    // The first request, by hand: it holds the lock, writes a generation and
    // the key, and commits when told.
    let first = session(&db.url).await;
    let first_id = uuid::Uuid::new_v4();
    first
        .batch_execute(&format!(
            "BEGIN;
             SELECT 1 FROM accounts WHERE user_id = '{u}' FOR UPDATE;
             INSERT INTO generations (id, user_id, request_id, status, address, deadline_at)
                 VALUES ('{first_id}', '{u}', 'r1', 'pending', '1 Main St', now() + interval '1 hour');
             INSERT INTO generation_areas (generation_id, position, area, style, preservation_strength,
                 status, stage, hold_source, hold_state)
                 VALUES ('{first_id}', 0, 'front_yard', 'modern_minimalist', 0.5, 'pending', 'queued', 'trial', 'held');
             UPDATE accounts SET trial_credits = trial_credits - 1, held = held + 1 WHERE user_id = '{u}';
             INSERT INTO ledger_entries (user_id, kind, amount, source, generation_id, area)
                 VALUES ('{u}', 'hold', 1, 'trial', '{first_id}', 'front_yard');
             INSERT INTO idempotency_keys (user_id, key, request_hash, generation_id, expires_at)
                 VALUES ('{u}', 'key-1', 'h1', '{first_id}', now() + interval '1 day');",
            u = user.0
        ))
        .await
        .unwrap();

    let second = tokio::spawn({
        let (store, claim) = (store.clone(), claim());
        async move { store.create(new_generation(user, &[AreaKind::FrontYard], LONG, 3), claim).await }
    });
    let watcher = session(&db.url).await;
    eventually("the second create waits for the account lock", Duration::from_secs(5), async || {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) > 0).then_some(())
    })
    .await;
    first.batch_execute("COMMIT").await.unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
    assert!(matches!(answer, Err(CreateError::AccountBusy)), "busy, to be retried: {answer:?}");
    let s = session(&db.url).await;
    let (held, trial, generations, _, keys) = footprint(&s, user).await;
    assert_eq!((held, trial, generations, keys), (1, 2, 1, 1), "only the first request's writes");

    match store.create(new_generation(user, &[AreaKind::FrontYard], LONG, 3), claim()).await {
        Ok(CreateOutcome::Replayed(g)) => assert_eq!(g.id.0, first_id, "the retry replays the first"),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert!(store.conservation_violations().await.unwrap().is_empty());
    db.drop_now().await;
}
