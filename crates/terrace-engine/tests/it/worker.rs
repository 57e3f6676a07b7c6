//! The worker: claiming, handing back, rescuing, cancelling, sweeping, and
//! shutting down within its bound.

use crate::fake::{Design, FakeGoogle, FaultyStore, World, policies};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::state::AreaStatus;
use terrace_domain::{ErrorCode, GenerationId, GenerationStatus, HoldState, RequestId, StoreError};
use terrace_engine::{Engine, StopReason, Supervisor, TaskInfo};
use terrace_memory::TokioClock;
use terrace_ports::{GenerationStore, Lease, WorkerId};
use tokio::time::{Instant, timeout};

/// Waits, at most `bound` of virtual time, until `cond` holds for the generation.
async fn wait_for(
    store: &dyn GenerationStore,
    id: GenerationId,
    bound: Duration,
    cond: impl Fn(&terrace_domain::Generation) -> bool,
) -> terrace_domain::Generation {
    let mut changes = store.notifications();
    let deadline = Instant::now() + bound;
    loop {
        let g = store.get(id).await.unwrap().unwrap();
        if cond(&g) {
            return g;
        }
        // Wake on a change, or re-check every second (the fallback the API uses too).
        let next =
            tokio::time::timeout_at(deadline.min(Instant::now() + Duration::from_secs(1)), changes.next());
        let _ = next.await;
        assert!(Instant::now() < deadline, "condition not reached within {bound:?}: {g:?}");
    }
}

async fn wait_until(bound: Duration, cond: impl Fn() -> bool) {
    timeout(bound, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition reached in time");
}

fn engine(world: &World, name: &str) -> Engine {
    Engine::start(world.ports.clone(), policies(), WorkerId(name.into()))
}

#[tokio::test(start_paused = true)]
async fn runs_created_work_and_leaves_no_task_behind() {
    let world = World::new(FakeGoogle::new());
    let e = engine(&world, "a");
    let (_, id) = world.create(&["front_yard", "patio"], 3).await;
    e.wake();
    let g = wait_for(&*world.ports.store, id, Duration::from_secs(5), |g| g.status.is_terminal()).await;
    assert_eq!(g.status, GenerationStatus::Completed);
    assert_eq!(g.attempt, 1);
    world.assert_ledger(id).await;
    wait_until(Duration::from_secs(1), || e.active() == 0).await;
    let report = e.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert_eq!(e.tracked_tasks(), 0, "every task, loops included, ended");
}

#[tokio::test(start_paused = true)]
async fn lists_running_work_with_its_request_id_and_deadline() {
    let world = World::new(FakeGoogle::new().design("patio", &[], Design::HangBeforeFirstEvent));
    let e = engine(&world, "a");
    let (_, id) = world.create(&["patio"], 3).await;
    e.wake();
    wait_until(Duration::from_secs(1), || e.active() == 1).await;
    wait_until(Duration::from_secs(1), || e.tasks().first().is_some_and(|t| t.stage == "designing")).await;
    let g = world.store.get(id).await.unwrap().unwrap();
    let t = &e.tasks()[0];
    assert_eq!(
        (t.generation_id, &t.request_id, t.attempt, t.deadline_at),
        (id, &g.request_id, 1, g.deadline_at)
    );
    e.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_work_back_and_another_instance_finishes_it() {
    let clock = Arc::new(TokioClock::new());
    let store = terrace_memory::MemoryStore::new(clock.clone());
    let stuck = World::with_store(
        store.clone(),
        clock.clone(),
        FakeGoogle::new().design("patio", &[], Design::HangBeforeFirstEvent),
    );
    let a = engine(&stuck, "a");
    let (_, id) = stuck.create(&["front_yard", "patio"], 3).await;
    a.wake();
    wait_until(Duration::from_secs(5), || a.active() == 1).await;
    let front_done = |g: &terrace_domain::Generation| g.areas[0].status == AreaStatus::Completed;
    wait_for(&*stuck.ports.store, id, Duration::from_secs(5), front_done).await;

    let start = Instant::now();
    let report = a.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.stopped, report.drained), (1, true));
    assert!(start.elapsed() < Duration::from_secs(5));
    let g = store.get(id).await.unwrap().unwrap();
    assert_eq!(g.status, GenerationStatus::Pending, "handed back");
    assert_eq!((g.areas[0].hold, g.areas[1].hold), (HoldState::Captured, HoldState::Held));

    let healthy = World::with_store(store.clone(), clock, FakeGoogle::new());
    let b = engine(&healthy, "b");
    let g = wait_for(&*healthy.ports.store, id, Duration::from_secs(10), |g| g.status.is_terminal()).await;
    assert_eq!((g.status, g.attempt), (GenerationStatus::Completed, 2));
    healthy.assert_ledger(id).await;
    b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn work_of_a_vanished_worker_is_rescued_after_its_lease_and_its_writes_are_refused() {
    let world = World::new(FakeGoogle::new());
    let (_, id) = world.create(&["patio"], 3).await;
    let ghost = WorkerId("ghost".into());
    let g = world.store.claim_one(id, &ghost, policies().lease.ttl).await.unwrap().unwrap();
    let old = Lease { generation_id: id, attempt: g.attempt, owner: ghost };
    // The ghost never heartbeats again.
    let start = Instant::now();
    let e = engine(&world, "b");
    let g = wait_for(&*world.ports.store, id, Duration::from_secs(60), |g| g.status.is_terminal()).await;
    assert!(start.elapsed() >= policies().lease.ttl, "rescued only after the lease expired");
    assert!(
        start.elapsed() <= policies().lease.ttl + policies().lease.sweep_interval + Duration::from_secs(1)
    );
    assert_eq!((g.status, g.attempt), (GenerationStatus::Completed, 2));
    let late = world.store.complete_area(&old, terrace_domain::AreaKind::Patio, "k").await;
    assert!(matches!(late, Err(StoreError::Finished | StoreError::LeaseLost)), "{late:?}");
    world.assert_ledger(id).await;
    e.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_the_old_worker_without_writing() {
    let world = World::new(FakeGoogle::new().design("patio", &[], Design::HangBeforeFirstEvent));
    let (_, id) = world.create(&["patio"], 3).await;
    let g = world.store.claim_one(id, &WorkerId("old".into()), policies().lease.ttl).await.unwrap().unwrap();
    let lease = Lease { generation_id: id, attempt: g.attempt, owner: WorkerId("old".into()) };
    tokio::time::advance(policies().lease.ttl + Duration::from_secs(1)).await;
    let newer =
        world.store.claim_one(id, &WorkerId("new".into()), policies().lease.ttl).await.unwrap().unwrap();
    assert_eq!(newer.attempt, 2);
    let out = terrace_engine::runner::run_generation(
        &world.ports,
        &policies(),
        g,
        lease,
        terrace_engine::supervisor::Stop::new(),
        None,
    )
    .await;
    assert_eq!(out, terrace_engine::runner::RunOutcome::LeaseLost);
    let g = world.store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (g.status, g.areas[0].status, g.areas[0].hold),
        (GenerationStatus::Processing, AreaStatus::Pending, HoldState::Held)
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_reaches_the_running_task() {
    let world = World::new(FakeGoogle::new().design("patio", &[], Design::HangBeforeFirstEvent));
    let e = engine(&world, "a");
    let (_, id) = world.create(&["patio", "backyard"], 3).await;
    e.wake();
    wait_until(Duration::from_secs(5), || e.active() == 1).await;
    wait_for(&*world.ports.store, id, Duration::from_secs(5), |g| g.areas[1].status == AreaStatus::Completed)
        .await;
    world.store.cancel(id).await.unwrap();
    wait_until(Duration::from_secs(1), || e.active() == 0).await;
    let g = world.store.get(id).await.unwrap().unwrap();
    assert_eq!(g.status, GenerationStatus::PartiallyCompleted);
    assert_eq!(g.areas[0].error.as_ref().map(|e| e.code), Some(ErrorCode::Cancelled));
    world.assert_ledger(id).await;
    e.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn overdue_work_nobody_ran_is_ended_by_the_sweep() {
    let world = World::new(FakeGoogle::new());
    let (_, id) = world.create(&["patio", "backyard"], 3).await;
    tokio::time::advance(policies().generation_timeout + Duration::from_secs(1)).await;
    let e = engine(&world, "a");
    let g =
        wait_for(&*world.ports.store, id, policies().lease.sweep_interval * 2, |g| g.status.is_terminal())
            .await;
    assert_eq!(g.status, GenerationStatus::Failed);
    assert_eq!(g.error.map(|e| e.code), Some(ErrorCode::DeadlineExceeded));
    assert_eq!(world.google.design_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    world.assert_ledger(id).await;
    e.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn without_any_worker_the_sweeper_alone_ends_overdue_work_and_voids_its_holds() {
    let world = World::new(FakeGoogle::new());
    let (_, id) = world.create(&["patio", "backyard"], 3).await;
    let (_, other) = world.create(&["walkway"], 3).await;
    let sweeper = terrace_engine::Sweeper::start(world.ports.store.clone(), &policies());
    assert_eq!(sweeper.tracked_tasks(), 1);
    let deadline = world.ports.store.get(id).await.unwrap().unwrap().deadline_at;
    tokio::time::advance(policies().generation_timeout).await;
    let g =
        wait_for(&*world.ports.store, id, policies().lease.sweep_interval * 2, |g| g.status.is_terminal())
            .await;
    let ended = g.completed_at.expect("an end time");
    assert!(ended - deadline <= chrono::Duration::from_std(policies().lease.sweep_interval).unwrap());
    assert_eq!(g.error.map(|e| e.code), Some(ErrorCode::DeadlineExceeded));
    assert!(g.areas.iter().all(|a| a.hold == HoldState::Voided));
    world.assert_ledger(id).await;
    assert!(world.ports.store.get(other).await.unwrap().unwrap().status.is_terminal(), "both were overdue");
    let report = sweeper.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained);
    assert_eq!(sweeper.tracked_tasks(), 0);
    assert_eq!(world.google.design_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_no_longer_than_its_grace_even_for_a_task_that_ignores_it() {
    let sup = Supervisor::new();
    let info = TaskInfo {
        generation_id: GenerationId::new_random(),
        request_id: RequestId::generate(),
        attempt: 1,
        started_at: chrono::Utc::now(),
        deadline_at: chrono::Utc::now(),
        stage: "stubborn",
    };
    assert!(sup.spawn(info.clone(), |_stop, _| futures::future::pending::<()>()));
    assert!(!sup.spawn(info.clone(), |_, _| async {}), "one task per generation");
    assert!(sup.cancel(info.generation_id, StopReason::User));
    let start = Instant::now();
    let report = sup.shutdown(Duration::from_secs(2)).await;
    assert_eq!((report.stopped, report.drained), (1, false));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(!sup.spawn(info, |_, _| async {}), "a closed supervisor starts nothing");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_says_it_drained_only_once_its_sweeper_has_too() {
    let world = World::new(FakeGoogle::new());
    let store = Arc::new(FaultyStore::hanging_sweeps(world.store.clone()));
    let ports = terrace_engine::Ports { store: store.clone(), ..world.ports.clone() };
    let e = Engine::start(ports, policies(), WorkerId("a".into()));
    wait_until(Duration::from_secs(1), || store.sweeps.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    let report = e.shutdown(Duration::from_secs(1)).await;
    assert_eq!(e.tracked_tasks(), 1, "the sweep's call still hangs (until the call limit)");
    assert!(!report.drained, "{report:?} with a task left");
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_forgets_idempotency_keys_whose_window_ended_even_while_its_sweep_hangs() {
    use std::sync::atomic::Ordering;
    use terrace_domain::IdempotencyKey;
    use terrace_ports::IdempotencyClaim;
    let clock = Arc::new(TokioClock::new());
    let window = Duration::from_secs(60);
    let memory = terrace_memory::MemoryStore::new(clock.clone()).with_idempotency_ttl(window);
    let world = World::with_store(memory, clock, FakeGoogle::new());
    let claim = IdempotencyClaim { key: IdempotencyKey::parse("k").unwrap(), request_hash: "h".into() };
    world.create_with_key(&["patio"], 3, Some(claim)).await;
    let store = Arc::new(FaultyStore::hanging_sweeps(world.store.clone()));
    let sweeper = terrace_engine::Sweeper::start(store.clone(), &policies());
    // Each round first waits out the hung sweep (the call limit), then
    // forgets what expired.
    let round = policies().lease.sweep_interval + policies().db.call_timeout();
    wait_until(window + round * 2, || store.forgotten.load(Ordering::SeqCst) == 1).await;
    assert!(store.sweeps.load(Ordering::SeqCst) >= 1, "the hung sweep was tried first");
    assert_eq!(world.store.forget_expired_keys(10).await.unwrap(), 0, "nothing left to forget");
    sweeper.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn work_held_in_this_instance_s_name_but_not_run_here_is_run_at_its_next_heartbeat() {
    let world = World::new(FakeGoogle::new().design("patio", &[], Design::HangBeforeFirstEvent));
    let e = engine(&world, "a");
    let (_, busy) = world.create(&["patio"], 3).await;
    e.wake();
    wait_until(Duration::from_secs(1), || e.active() == 1).await;
    // A claim in this instance's name whose answer never came back (or of
    // its own expired lease while the old attempt still ran): the lease is
    // the instance's, and it runs nothing for it.
    let (_, held) = world.create(&["backyard"], 3).await;
    let claimed = world.store.claim_one(held, &WorkerId("a".into()), policies().lease.ttl).await.unwrap();
    assert_eq!(claimed.map(|g| g.attempt), Some(1));
    let bound = policies().lease.heartbeat_interval + Duration::from_secs(5);
    let g = wait_for(&*world.ports.store, held, bound, |g| g.status.is_terminal()).await;
    assert_eq!((g.status, g.attempt), (GenerationStatus::Completed, 1), "run under the lease it held");
    assert_eq!(g.areas[0].hold, HoldState::Captured);
    assert_eq!(world.store.get(busy).await.unwrap().unwrap().status, GenerationStatus::Processing);
    e.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn work_stops_once_heartbeats_have_failed_for_a_lease_ttl() {
    use std::sync::atomic::Ordering;
    let world = World::new(FakeGoogle::new().design("patio", &[], Design::HangBeforeFirstEvent));
    let store = Arc::new(FaultyStore::failing_heartbeats(world.store.clone()));
    let ports = terrace_engine::Ports { store: store.clone(), ..world.ports.clone() };
    let e = Engine::start(ports, policies(), WorkerId("a".into()));
    let (_, id) = world.create(&["patio"], 3).await;
    e.wake();
    wait_until(Duration::from_secs(1), || e.active() == 1).await;
    // The database stops answering this instance's heartbeats: after one
    // TTL its leases have lapsed and any instance may take the work, so the
    // attempt running here stops calling upstreams for it (without writing:
    // the fence would refuse). Its design never answers, so nothing else
    // would stop it before its deadline.
    store.heartbeats_fail.store(true, Ordering::SeqCst);
    let lease = policies().lease;
    wait_until(lease.ttl + lease.heartbeat_interval * 2, || e.tasks().iter().all(|t| t.attempt != 1)).await;
    let g = world.store.get(id).await.unwrap().unwrap();
    assert_eq!(
        g.status,
        GenerationStatus::Processing,
        "left for the next owner (this instance's sweep may claim it)"
    );
    assert_eq!(g.areas[0].hold, HoldState::Held, "the hold waits for whoever finishes the work");
    e.shutdown(Duration::from_secs(5)).await;
}
