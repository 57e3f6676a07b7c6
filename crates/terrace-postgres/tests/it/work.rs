//! Durable work at scale: one claim and one heartbeat statement, however many
//! generations an instance runs.

use crate::support::{TestDb, policies, session};
use std::time::{Duration, Instant};
use terrace_ports::{GenerationStore, WorkerId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_leases_are_claimed_and_renewed_in_one_call_each() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let s = session(&db.url).await;
    s.batch_execute(
        "INSERT INTO accounts (user_id, trial_credits, token_balance, credited) \
         VALUES ('00000000-0000-0000-0000-000000000001', 0, 0, 0);
         INSERT INTO generations (id, user_id, request_id, status, address, deadline_at)
         SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'r' || n, 'pending',
                '1 Main Street', now() + interval '1 hour'
           FROM generate_series(1, 10000) AS n;",
    )
    .await
    .unwrap();
    let owner = WorkerId("busy-instance".into());
    let ttl = Duration::from_secs(30);
    let started = Instant::now();
    let claimed = store.claim(&owner, ttl, 10_000).await.unwrap();
    let claim_took = started.elapsed();
    assert_eq!(claimed.len(), 10_000);
    let versions = async || -> Vec<(uuid::Uuid, String)> {
        s.query("SELECT id, xmin::text FROM generations ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let claimed_versions = versions().await;
    let started = Instant::now();
    let leases = store.heartbeat(&owner, ttl).await.unwrap();
    let beat_took = started.elapsed();
    assert_eq!(leases.len(), 10_000);
    assert!(leases.iter().all(|l| l.attempt == 1 && !l.cancel_requested));
    // One statement each: well inside one heartbeat interval on this machine.
    assert!(beat_took < Duration::from_secs(2), "heartbeat took {beat_took:?}");
    assert!(claim_took < Duration::from_secs(5), "claim took {claim_took:?}");
    // The heartbeat renewed the owner's one row and wrote no generation.
    let alive: i64 = s
        .query_one(
            "SELECT count(*) FROM workers WHERE owner = $1 AND expires_at > now() + interval '20 seconds'",
            &[&owner.0],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(alive, 1, "the owner's lease was renewed");
    assert_eq!(versions().await, claimed_versions, "no generation row was rewritten by the heartbeat");
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_heartbeating_past_its_deadline_loses_the_work_within_one_ttl() {
    use terrace_conformance::{eventually, new_generation};
    use terrace_domain::{AreaKind, GenerationStatus, HoldState, UserId};
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let user = UserId::new_random();
    let deadline = Duration::from_millis(300);
    let ttl = Duration::from_millis(400);
    let terrace_ports::CreateOutcome::Created(g) =
        store.create(new_generation(user, &[AreaKind::Patio], deadline, 1), None).await.unwrap()
    else {
        panic!("created")
    };
    let owner = WorkerId("stuck".into());
    store.claim_one(g.id, &owner, ttl).await.unwrap().expect("claimed");
    let started = Instant::now();
    // The stuck worker keeps renewing; the sweeper still ends the work once
    // the deadline plus one TTL has passed.
    let ended = eventually("the overdue work is ended", Duration::from_secs(5), async || {
        store.heartbeat(&owner, ttl).await.unwrap();
        let ids = store.end_overdue(10).await.unwrap();
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(ended, [g.id]);
    assert!(started.elapsed() < deadline + ttl + Duration::from_millis(700), "{:?}", started.elapsed());
    let done = store.get(g.id).await.unwrap().unwrap();
    assert_eq!(done.status, GenerationStatus::Failed);
    assert_eq!(done.areas[0].hold, HoldState::Voided);
    assert!(store.heartbeat(&owner, ttl).await.unwrap().is_empty());
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lapses_with_its_owners_heartbeat_and_an_owner_without_a_row_keeps_its_own_expiry() {
    use terrace_conformance::new_generation;
    use terrace_domain::{AreaKind, UserId};
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let s = session(&db.url).await;
    let user = UserId::new_random();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created =
            store.create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(600), 2), None);
        let terrace_ports::CreateOutcome::Created(g) = created.await.unwrap() else { panic!("created") };
        ids.push(g.id);
    }
    let (held_by_previous_release, held_by_lapsed) = (ids[0].0, ids[1].0);
    // One generation leased the way the release before per-worker leases
    // leases (no row in `workers`, its own expiry renewed); one leased by an
    // owner whose heartbeat lapsed two hours ago; and an owner gone as long
    // that holds nothing.
    s.execute(
        "UPDATE generations SET status = 'processing', attempt = 1, lease_expires_at = now() + interval '1 hour',
                lease_owner = CASE WHEN id = $1 THEN 'previous-release' ELSE 'lapsed' END
          WHERE id = $1 OR id = $2",
        &[&held_by_previous_release, &held_by_lapsed],
    )
    .await
    .unwrap();
    s.batch_execute(
        "INSERT INTO workers (owner, expires_at) VALUES ('lapsed', now() - interval '2 hours'),
                                                        ('gone', now() - interval '2 hours')",
    )
    .await
    .unwrap();
    let next = WorkerId("next".into());
    let ttl = Duration::from_secs(30);
    assert!(store.heartbeat(&next, ttl).await.unwrap().is_empty(), "the new owner holds nothing yet");
    let owners: Vec<String> = s
        .query("SELECT owner FROM workers ORDER BY owner", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        owners,
        ["lapsed", "next"],
        "a long-gone owner holding nothing is dropped, one holding work is kept"
    );
    let taken = store.claim(&next, ttl, 10).await.unwrap();
    assert_eq!(
        taken.iter().map(|g| g.id.0).collect::<Vec<_>>(),
        [held_by_lapsed],
        "only the lapsed owner's work"
    );
    s.execute(
        "UPDATE generations SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        &[&held_by_previous_release],
    )
    .await
    .unwrap();
    let taken = store.claim(&next, ttl, 10).await.unwrap();
    assert_eq!(taken.iter().map(|g| g.id.0).collect::<Vec<_>>(), [held_by_previous_release]);
    let leases = store.heartbeat(&next, ttl).await.unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().all(|l| l.attempt == 2), "{leases:?}");
    store.close().await;
    db.drop_now().await;
}

#[derive(Debug, Default)]
struct Voids(std::sync::Mutex<Vec<terrace_domain::ErrorCode>>);

impl terrace_ports::Observer for Voids {
    fn upstream_request(&self, _: terrace_ports::Upstream, _: terrace_ports::UpstreamOutcome, _: Duration) {}
    fn upstream_timeout(&self, _: terrace_ports::Upstream, _: terrace_domain::TimeoutKind) {}
    fn generation_finished(&self, _: terrace_domain::GenerationStatus, _: Duration) {}
    fn hold_voided(&self, reason: terrace_domain::ErrorCode) {
        self.0.lock().unwrap().push(reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voids_by_cancellation_and_sweeps_are_reported_and_workers_report_their_own() {
    use terrace_conformance::{eventually, new_generation};
    use terrace_domain::{AreaKind, ErrorCode, Failure, UserId, state::AreaStatus};
    use terrace_ports::{CreateOutcome, Lease};
    let db = TestDb::create().await;
    let voids = std::sync::Arc::new(Voids::default());
    let store = terrace_postgres::PgStore::connect(&db.url, &policies(), voids.clone()).await.unwrap();
    let user = UserId::new_random();
    let create = async |deadline| match store
        .create(new_generation(user, &[AreaKind::Patio, AreaKind::Walkway], deadline, 10), None)
        .await
        .unwrap()
    {
        CreateOutcome::Created(g) => g,
        other => panic!("{other:?}"),
    };
    let cancelled = create(Duration::from_secs(60)).await;
    let overdue = create(Duration::from_millis(100)).await;
    let worked = create(Duration::from_secs(60)).await;
    store.cancel(cancelled.id).await.unwrap();
    eventually("the overdue one is swept", Duration::from_secs(5), async || {
        (!store.end_overdue(10).await.unwrap().is_empty()).then_some(())
    })
    .await;
    let owner = WorkerId("w".into());
    let g = store.claim_one(worked.id, &owner, Duration::from_secs(30)).await.unwrap().unwrap();
    let lease = Lease { generation_id: g.id, attempt: g.attempt, owner };
    store
        .end_area(&lease, AreaKind::Patio, AreaStatus::Failed, &Failure::new(ErrorCode::NoImage, "none"))
        .await
        .unwrap();
    store.finish(&lease, AreaStatus::Failed, &Failure::new(ErrorCode::Internal, "x")).await.unwrap();
    let mut seen = voids.0.lock().unwrap().clone();
    seen.sort_by_key(|c| c.as_str());
    assert_eq!(
        seen,
        [
            ErrorCode::Cancelled,
            ErrorCode::Cancelled,
            ErrorCode::DeadlineExceeded,
            ErrorCode::DeadlineExceeded
        ],
        "the worker's own voids are the worker's to report"
    );
    let _ = overdue;
    assert!(terrace_ports::Ledger::conservation_violations(&store).await.unwrap().is_empty());
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_database_never_take_the_same_work() {
    use std::collections::HashSet;
    use terrace_conformance::{eventually, new_generation};
    use terrace_domain::{AreaKind, GenerationId, UserId};
    let db = TestDb::create().await;
    let (a, b) = (db.store(&policies()).await, db.store(&policies()).await);
    let user = UserId::new_random();
    terrace_ports::Ledger::open_account(&a, user, 100).await.unwrap();
    let mut fresh = HashSet::new();
    let mut doomed = HashSet::new();
    for i in 0..40 {
        let deadline = if i % 2 == 0 { Duration::from_secs(60) } else { Duration::from_millis(200) };
        let new = new_generation(user, &[AreaKind::Patio], deadline, 0);
        if i % 2 == 0 {
            fresh.insert(new.id)
        } else {
            doomed.insert(new.id)
        };
        a.create(new, None).await.unwrap();
    }
    // Claims race; each generation goes to one instance.
    let (wa, wb) = (WorkerId("a".into()), WorkerId("b".into()));
    let ttl = Duration::from_secs(30);
    let mut claimed: Vec<GenerationId> = Vec::new();
    while claimed.len() < fresh.len() {
        let (ca, cb) = tokio::join!(a.claim(&wa, ttl, 3), b.claim(&wb, ttl, 3));
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        assert!(!(ca.is_empty() && cb.is_empty()), "work left but nobody could claim it");
        claimed.extend(ca.iter().chain(&cb).map(|g| g.id));
    }
    let unique: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "no generation claimed twice");
    assert!(unique.is_subset(&fresh.iter().copied().chain(doomed.iter().copied()).collect()));
    // Sweeps race too; each overdue generation is ended once.
    let mut ended: Vec<GenerationId> = Vec::new();
    eventually("every overdue generation is ended", Duration::from_secs(5), async || {
        let (ea, eb) = tokio::join!(a.end_overdue(4), b.end_overdue(4));
        ended.extend(ea.unwrap().into_iter().chain(eb.unwrap()));
        (ended.len() >= doomed.len() - doomed.intersection(&unique).count()).then_some(())
    })
    .await;
    let ended_set: HashSet<_> = ended.iter().copied().collect();
    assert_eq!(ended_set.len(), ended.len(), "no generation ended twice");
    assert!(ended_set.is_disjoint(&unique), "leased work is spared");
    assert!(terrace_ports::Ledger::conservation_violations(&a).await.unwrap().is_empty());
    a.close().await;
    b.close().await;
    db.drop_now().await;
}
