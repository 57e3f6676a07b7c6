//! The cases. Each takes a fresh [`Subject`]; [`crate::run`] checks
//! conservation after it.

use crate::{Subject, eventually, new_generation};
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    AreaKind, CreateError, CreditReference, CreditSource, ErrorCode, Failure, Generation, GenerationId,
    GenerationStatus, Geocoded, GrantAmount, HoldState, LatLng, LedgerKind, StoreError, UserId,
};
use terrace_ports::{CancelOutcome, CreateOutcome, Lease, ListQuery, Notification, WorkerId};

use AreaKind::{Backyard, FrontYard, Patio, Walkway};

const LONG: Duration = Duration::from_secs(300);
const TTL: Duration = Duration::from_secs(30);
const SHORT_TTL: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_secs(5);

fn worker(name: &str) -> WorkerId {
    WorkerId(format!("{name}-{}", GenerationId::new_random()))
}

fn lease(g: &Generation, owner: &WorkerId) -> Lease {
    Lease { generation_id: g.id, attempt: g.attempt, owner: owner.clone() }
}

fn failure(code: ErrorCode) -> Failure {
    Failure::new(code, format!("{code} in a test"))
}

async fn create(s: &Subject, user: UserId, areas: &[AreaKind], trial: u64) -> Generation {
    create_within(s, user, areas, LONG, trial).await
}

async fn create_within(
    s: &Subject,
    user: UserId,
    areas: &[AreaKind],
    deadline: Duration,
    trial: u64,
) -> Generation {
    match s.store.create(new_generation(user, areas, deadline, trial), None).await {
        Ok(CreateOutcome::Created(g)) => g,
        other => panic!("expected a new generation, got {other:?}"),
    }
}

/// Works an area to completion, as a worker does: advance, then complete.
async fn complete(s: &Subject, l: &Lease, area: AreaKind, key: &str) {
    s.store.advance_area(l, area, AreaStage::Storing, 90).await.expect("advance");
    s.store.complete_area(l, area, key).await.expect("complete");
}

async fn claim_it(s: &Subject, g: &Generation, owner: &WorkerId, ttl: Duration) -> Generation {
    s.store.claim_one(g.id, owner, ttl).await.expect("claim_one").expect("claimable")
}

async fn account(s: &Subject, user: UserId) -> terrace_domain::Account {
    s.ledger.open_account(user, 0).await.expect("account")
}

async fn get(s: &Subject, id: GenerationId) -> Generation {
    s.store.get(id).await.expect("get").expect("exists")
}

/// Every entry of the user's ledger, newest first, through every page.
async fn all_entries(s: &Subject, user: UserId) -> Vec<terrace_domain::LedgerEntry> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.ledger.transactions(user, 3, cursor).await.expect("transactions");
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// How many captures and voids the ledger has for each area of `g`.
async fn resolutions(s: &Subject, g: &Generation) -> Vec<(AreaKind, usize)> {
    let entries = all_entries(s, g.user_id).await;
    g.areas
        .iter()
        .map(|a| {
            let n = entries
                .iter()
                .filter(|e| {
                    e.generation_id == Some(g.id)
                        && e.area == Some(a.kind())
                        && matches!(e.kind, LedgerKind::Capture | LedgerKind::Void)
                })
                .count();
            (a.kind(), n)
        })
        .collect()
}

pub async fn open_account_is_idempotent(s: &Subject) {
    let user = UserId::new_random();
    let a = s.ledger.open_account(user, 3).await.unwrap();
    assert_eq!((a.trial_credits, a.token_balance, a.held, a.captured), (3, 0, 0, 0));
    let again = s.ledger.open_account(user, 7).await.unwrap();
    assert_eq!(again, a, "a second open changes nothing");
    let entries = all_entries(s, user).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].kind, entries[0].amount, entries[0].source),
        (LedgerKind::Credit, 3, CreditSource::Trial)
    );
}

pub async fn create_holds_one_credit_per_area_trial_first(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard], 3).await;
    assert_eq!(g.status, GenerationStatus::Pending);
    assert_eq!((g.attempt, g.cancel_requested, g.cost()), (0, false, 2));
    assert!(g.deadline_at > g.created_at);
    for a in &g.areas {
        assert_eq!((a.status, a.stage, a.progress), (AreaStatus::Pending, AreaStage::Queued, 0));
        assert_eq!((a.hold, a.hold_source), (HoldState::Held, CreditSource::Trial));
    }
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.token_balance, acc.held, acc.captured), (1, 0, 2, 0));
    assert_eq!(get(s, g.id).await, g, "what create returned is what is stored");
    let holds: Vec<_> =
        all_entries(s, user).await.into_iter().filter(|e| e.kind == LedgerKind::Hold).collect();
    assert_eq!(holds.len(), 2);
    assert!(holds.iter().all(|e| e.generation_id == Some(g.id) && e.amount == 1 && e.area.is_some()));
}

pub async fn holds_take_trial_then_tokens(s: &Subject) {
    let user = UserId::new_random();
    let r = CreditReference::parse("payment-1").unwrap();
    s.ledger.grant(user, GrantAmount::parse(5).unwrap(), &r, 1).await.unwrap();
    let g = create(s, user, &[FrontYard, Backyard, Patio], 1).await;
    let sources: Vec<_> = g.areas.iter().map(|a| a.hold_source).collect();
    assert_eq!(sources, [CreditSource::Trial, CreditSource::Token, CreditSource::Token]);
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.token_balance, acc.held), (0, 3, 3));
    // Voids return each credit to where it came from.
    if let CancelOutcome::Cancelled(c) = s.store.cancel(g.id).await.unwrap() {
        assert_eq!(c.voided(), 3);
    } else {
        panic!("expected a cancellation");
    }
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.token_balance, acc.held), (1, 5, 0));
}

pub async fn insufficient_credits_hold_nothing(s: &Subject) {
    let user = UserId::new_random();
    let new = new_generation(user, &[FrontYard, Backyard], LONG, 1);
    let id = new.id;
    match s.store.create(new, None).await {
        Err(CreateError::InsufficientCredits { needed: 2, available: 1 }) => {}
        other => panic!("expected insufficient credits, got {other:?}"),
    }
    assert_eq!(s.store.get(id).await.unwrap(), None);
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.held), (1, 0));
}

pub async fn idempotency_replays_and_refuses_another_body(s: &Subject) {
    let user = UserId::new_random();
    let claim = |hash: &str| Some(crate::key_claim("key-1", hash));
    let first = match s.store.create(new_generation(user, &[FrontYard], LONG, 3), claim("h1")).await {
        Ok(CreateOutcome::Created(g)) => g,
        other => panic!("expected created, got {other:?}"),
    };
    match s.store.create(new_generation(user, &[FrontYard], LONG, 3), claim("h1")).await {
        Ok(CreateOutcome::Replayed(g)) => assert_eq!(g, first, "the replay finds the generation as stored"),
        other => panic!("expected a replay, got {other:?}"),
    }
    // Once it has moved on, the replay still rebuilds the first answer.
    let lease = s.store.claim(&worker("w1"), TTL, 10).await.unwrap();
    assert!(lease.iter().any(|g| g.id == first.id), "the generation was claimed");
    match s.store.create(new_generation(user, &[FrontYard], LONG, 3), claim("h1")).await {
        Ok(CreateOutcome::Replayed(g)) => {
            assert_eq!(g.status, GenerationStatus::Processing);
            assert_eq!(g.as_created(), first, "the first answer, rebuilt");
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    match s.store.create(new_generation(user, &[FrontYard], LONG, 3), claim("h2")).await {
        Err(CreateError::IdempotencyKeyReused) => {}
        other => panic!("expected key reuse to be refused, got {other:?}"),
    }
    // Keys are per user.
    let other_user = UserId::new_random();
    let _ = s.store.create(new_generation(other_user, &[FrontYard], LONG, 3), claim("h2")).await.unwrap();
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.held), (2, 1), "replays held nothing");
}

pub async fn get_and_list_page_newest_first(s: &Subject) {
    let user = UserId::new_random();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create(s, user, &[FrontYard], 10).await.id);
    }
    let _ = create(s, UserId::new_random(), &[FrontYard], 1).await;
    s.store.cancel(ids[1]).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.store.list(user, ListQuery { limit: 2, cursor, status: None }).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|g| g.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let newest_first: Vec<_> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first, "every generation once, newest first, own only");
    let cancelled = s
        .store
        .list(user, ListQuery { limit: 50, cursor: None, status: Some(GenerationStatus::Cancelled) })
        .await
        .unwrap();
    assert_eq!(cancelled.items.iter().map(|g| g.id).collect::<Vec<_>>(), [ids[1]]);
    assert_eq!(cancelled.next_cursor, None);
    assert_eq!(s.store.get(GenerationId::new_random()).await.unwrap(), None);
}

pub async fn claim_sets_lease_and_attempt(s: &Subject) {
    let user = UserId::new_random();
    let a = create(s, user, &[FrontYard], 10).await;
    let b = create(s, user, &[Backyard], 10).await;
    let w = worker("w1");
    let claimed = s.store.claim(&w, TTL, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|g| g.id).collect::<Vec<_>>(), [a.id, b.id], "oldest first");
    for g in &claimed {
        assert_eq!((g.status, g.attempt), (GenerationStatus::Processing, 1));
        assert!(g.started_at.is_some());
    }
    assert!(
        s.store.claim(&worker("w2"), TTL, 10).await.unwrap().is_empty(),
        "leased work is not claimed twice"
    );
    assert_eq!(get(s, a.id).await.status, GenerationStatus::Processing);
    assert!(s.store.claim(&w, TTL, 0).await.unwrap().is_empty());
}

pub async fn claim_one_takes_only_claimable(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard], 10).await;
    let other = create(s, user, &[Backyard], 10).await;
    let w = worker("w");
    let got = claim_it(s, &g, &w, TTL).await;
    assert_eq!((got.id, got.attempt), (g.id, 1));
    assert_eq!(s.store.claim_one(g.id, &worker("x"), TTL).await.unwrap(), None, "already claimed");
    assert_eq!(get(s, other.id).await.status, GenerationStatus::Pending, "only the named one");
    s.store.cancel(other.id).await.unwrap();
    assert_eq!(s.store.claim_one(other.id, &w, TTL).await.unwrap(), None, "terminal");
    assert_eq!(s.store.claim_one(GenerationId::new_random(), &w, TTL).await.unwrap(), None, "unknown");
}

pub async fn heartbeat_renews_every_lease_in_one_call(s: &Subject) {
    let user = UserId::new_random();
    let w = worker("w");
    let mut gs = Vec::new();
    for _ in 0..3 {
        gs.push(create(s, user, &[FrontYard], 10).await);
    }
    let claimed = s.store.claim(&w, SHORT_TTL, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let other = worker("other");
    let theirs = create(s, user, &[Backyard], 10).await;
    claim_it(s, &theirs, &other, TTL).await;
    let beat = s.store.heartbeat(&w, TTL).await.unwrap();
    let ids: HashSet<_> = beat.iter().map(|l| l.generation_id).collect();
    assert_eq!(ids, gs.iter().map(|g| g.id).collect::<HashSet<_>>(), "all of mine and only mine");
    assert!(beat.iter().all(|l| l.attempt == 1 && !l.cancel_requested));
    // Renewed to the long TTL: past the short one, nobody can take them.
    tokio::time::sleep(SHORT_TTL * 2).await;
    assert!(s.store.claim(&worker("thief"), TTL, 10).await.unwrap().is_empty());
    // A cancelled generation leaves the owner's leases.
    s.store.cancel(gs[0].id).await.unwrap();
    let beat = s.store.heartbeat(&w, TTL).await.unwrap();
    assert_eq!(beat.len(), 2);
    assert!(!beat.iter().any(|l| l.generation_id == gs[0].id));
    assert!(s.store.heartbeat(&worker("nobody"), TTL).await.unwrap().is_empty());
}

pub async fn claim_pending_takes_new_work_and_leaves_expired_leases_to_claim(s: &Subject) {
    let user = UserId::new_random();
    let old = worker("old");
    let expired = create(s, user, &[FrontYard], 10).await;
    claim_it(s, &expired, &old, SHORT_TTL).await;
    let witness = create(s, user, &[FrontYard], 10).await;
    claim_it(s, &witness, &old, SHORT_TTL).await;
    let fresh = create(s, user, &[FrontYard], 10).await;
    // The witness was claimed after `expired`: once its lease has lapsed, so
    // has the other's.
    let new = worker("new");
    eventually("the old leases lapse", BOUND, async || {
        s.store.claim_one(witness.id, &new, TTL).await.unwrap()
    })
    .await;
    let pending = s.store.claim_pending(&new, TTL, 10).await.unwrap();
    assert_eq!(pending.iter().map(|g| g.id).collect::<Vec<_>>(), vec![fresh.id], "pending work only");
    assert_eq!((pending[0].status, pending[0].attempt), (GenerationStatus::Processing, 1));
    let rescued = s.store.claim(&new, TTL, 10).await.unwrap();
    assert_eq!(rescued.iter().map(|g| (g.id, g.attempt)).collect::<Vec<_>>(), vec![(expired.id, 2)]);
    assert!(s.store.claim_pending(&new, TTL, 10).await.unwrap().is_empty(), "nothing is left");
}

pub async fn expired_lease_is_rescued_and_old_writes_refused(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard], 10).await;
    let old = worker("old");
    let first = claim_it(s, &g, &old, SHORT_TTL).await;
    let old_lease = lease(&first, &old);
    s.store.advance_area(&old_lease, FrontYard, AreaStage::RetrievingImagery, 10).await.unwrap();
    let new = worker("new");
    let rescued = eventually("the expired lease is claimed", BOUND, async || {
        s.store.claim(&new, TTL, 10).await.unwrap().pop()
    })
    .await;
    assert_eq!((rescued.id, rescued.attempt), (g.id, 2));
    let stale = [
        s.store.advance_area(&old_lease, FrontYard, AreaStage::GeneratingDesign, 50).await,
        s.store.complete_area(&old_lease, FrontYard, "old-key").await.map(drop),
        s.store
            .end_area(&old_lease, Backyard, AreaStatus::Failed, &failure(ErrorCode::NoImage))
            .await
            .map(drop),
        s.store.release(&old_lease).await,
    ];
    assert!(stale.iter().all(|r| *r == Err(StoreError::LeaseLost)), "old writes refused: {stale:?}");
    assert_eq!(
        s.store
            .finish(&old_lease, AreaStatus::Failed, &failure(ErrorCode::Internal))
            .await
            .map(|f| f.generation),
        Err(StoreError::LeaseLost)
    );
    assert!(s.store.heartbeat(&old, TTL).await.unwrap().is_empty(), "the old owner holds nothing");
    let new_lease = lease(&rescued, &new);
    complete(s, &new_lease, FrontYard, "k1").await;
    complete(s, &new_lease, Backyard, "k2").await;
    let done = s
        .store
        .finish(&new_lease, AreaStatus::Failed, &failure(ErrorCode::Internal))
        .await
        .unwrap()
        .generation;
    assert_eq!(done.status, GenerationStatus::Completed);
    assert_eq!(resolutions(s, &done).await, [(FrontYard, 1), (Backyard, 1)]);
}

pub async fn complete_captures_and_end_voids_once(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard], 3).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    s.store.advance_area(&l, FrontYard, AreaStage::GeneratingDesign, 40).await.unwrap();
    let mid = get(s, g.id).await;
    let front = mid.area(FrontYard).unwrap();
    assert_eq!(
        (front.status, front.stage, front.progress),
        (AreaStatus::Processing, AreaStage::GeneratingDesign, 40)
    );
    complete(s, &l, FrontYard, "generations/x/areas/front_yard").await;
    assert_eq!(s.store.complete_area(&l, FrontYard, "again").await, Err(StoreError::Finished));
    assert_eq!(
        s.store.end_area(&l, FrontYard, AreaStatus::Failed, &failure(ErrorCode::NoImage)).await,
        Err(StoreError::Finished)
    );
    assert_eq!(s.store.advance_area(&l, FrontYard, AreaStage::Storing, 90).await, Err(StoreError::Finished));
    s.store.end_area(&l, Backyard, AreaStatus::Failed, &failure(ErrorCode::ContentBlocked)).await.unwrap();
    assert_eq!(
        s.store.end_area(&l, Backyard, AreaStatus::Cancelled, &failure(ErrorCode::Cancelled)).await,
        Err(StoreError::Finished)
    );
    let now = get(s, g.id).await;
    let (f, b) = (now.area(FrontYard).unwrap(), now.area(Backyard).unwrap());
    assert_eq!((f.status, f.hold, f.progress), (AreaStatus::Completed, HoldState::Captured, 100));
    assert_eq!(f.image_key.as_deref(), Some("generations/x/areas/front_yard"));
    assert!(f.completed_at.is_some());
    assert_eq!((b.status, b.hold), (AreaStatus::Failed, HoldState::Voided));
    assert_eq!(b.error.as_ref().map(|e| e.code), Some(ErrorCode::ContentBlocked));
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.held, acc.captured), (2, 0, 1));
    assert_eq!(resolutions(s, &now).await, [(FrontYard, 1), (Backyard, 1)]);
    let done =
        s.store.finish(&l, AreaStatus::Failed, &failure(ErrorCode::Internal)).await.unwrap().generation;
    assert_eq!(done.status, GenerationStatus::PartiallyCompleted);
    assert_eq!((done.captured(), done.voided()), (1, 1));
}

/// A worker whose progress writes were lost (the database was briefly away)
/// still completes the area once its image is stored.
pub async fn a_pending_area_completes_once_its_image_is_stored(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[Backyard], 3).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    complete(s, &l, Backyard, "generations/x/areas/backyard").await;
    let b = get(s, g.id).await;
    let b = b.area(Backyard).unwrap();
    assert_eq!((b.status, b.stage, b.hold), (AreaStatus::Completed, AreaStage::Done, HoldState::Captured));
    assert_eq!(s.store.complete_area(&l, Backyard, "again").await, Err(StoreError::Finished));
}

pub async fn finish_ends_unfinished_and_settles(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard, Walkway], 3).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    s.store.advance_area(&l, Backyard, AreaStage::RetrievingImagery, 5).await.unwrap();
    s.store.end_area(&l, Walkway, AreaStatus::Failed, &failure(ErrorCode::ImageryUnavailable)).await.unwrap();
    let why = failure(ErrorCode::AddressNotFound);
    let done = s.store.finish(&l, AreaStatus::Failed, &why).await.unwrap().generation;
    assert_eq!(done.status, GenerationStatus::Failed);
    assert!(done.completed_at.is_some());
    // The generation's error is the first area's.
    assert_eq!(done.error, Some(why.clone()));
    assert!(done.areas.iter().all(|a| a.hold == HoldState::Voided));
    assert_eq!(
        done.area(Walkway).unwrap().error.as_ref().map(|e| e.code),
        Some(ErrorCode::ImageryUnavailable)
    );
    assert_eq!(get(s, g.id).await, done);
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.held, acc.captured), (3, 0, 0));
    assert_eq!(
        s.store.finish(&l, AreaStatus::Failed, &why).await.map(|f| f.generation),
        Err(StoreError::Finished)
    );
    assert!(s.store.heartbeat(&w, TTL).await.unwrap().is_empty(), "the lease ended");
    assert_eq!(s.store.claim_one(g.id, &w, TTL).await.unwrap(), None);
}

pub async fn finish_with_every_area_completed_is_completed(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[Patio], 1).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    s.store
        .record_geocode(
            &l,
            &Geocoded {
                formatted_address: "1600 Amphitheatre Pkwy".into(),
                location: LatLng::new(37.42, -122.08).unwrap(),
            },
        )
        .await
        .unwrap();
    complete(s, &l, Patio, "k").await;
    let done =
        s.store.finish(&l, AreaStatus::Failed, &failure(ErrorCode::Internal)).await.unwrap().generation;
    assert_eq!((done.status, done.error.clone(), done.captured()), (GenerationStatus::Completed, None, 1));
    assert_eq!(done.geocoded.as_ref().map(|g| g.formatted_address.as_str()), Some("1600 Amphitheatre Pkwy"));
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.held, acc.captured), (0, 0, 1));
}

pub async fn cancel_voids_unfinished_and_settles(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard], 2).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    complete(s, &l, FrontYard, "k").await;
    let CancelOutcome::Cancelled(c) = s.store.cancel(g.id).await.unwrap() else {
        panic!("expected a cancellation");
    };
    assert!(c.cancel_requested);
    assert_eq!(c.status, GenerationStatus::PartiallyCompleted);
    let b = c.area(Backyard).unwrap();
    assert_eq!((b.status, b.hold), (AreaStatus::Cancelled, HoldState::Voided));
    assert_eq!(b.error.as_ref().map(|e| e.code), Some(ErrorCode::Cancelled));
    assert_eq!(get(s, g.id).await, c);
    match s.store.cancel(g.id).await.unwrap() {
        CancelOutcome::AlreadyTerminal(again) => assert_eq!(again, c),
        other => panic!("expected already terminal, got {other:?}"),
    }
    // The worker's writes now fail: the generation is finished.
    assert_eq!(s.store.complete_area(&l, Backyard, "late").await, Err(StoreError::Finished));
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.held, acc.captured), (1, 0, 1));
    // A generation nobody started is cancelled outright.
    let p = create(s, user, &[Walkway], 0).await;
    let CancelOutcome::Cancelled(pc) = s.store.cancel(p.id).await.unwrap() else {
        panic!("expected a cancellation");
    };
    assert_eq!(pc.status, GenerationStatus::Cancelled);
    assert_eq!(pc.error.as_ref().map(|e| e.code), Some(ErrorCode::Cancelled));
    assert_eq!(account(s, user).await.trial_credits, 1);
}

pub async fn cancel_of_unknown_generation_is_not_found(s: &Subject) {
    assert_eq!(s.store.cancel(GenerationId::new_random()).await, Err(StoreError::NotFound));
}

pub async fn release_hands_work_back(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard], 2).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    s.store.advance_area(&l, FrontYard, AreaStage::GeneratingDesign, 60).await.unwrap();
    complete(s, &l, Backyard, "k").await;
    s.store.release(&l).await.unwrap();
    let back = get(s, g.id).await;
    assert_eq!(back.status, GenerationStatus::Pending);
    let f = back.area(FrontYard).unwrap();
    assert_eq!(
        (f.status, f.stage, f.progress, f.hold),
        (AreaStatus::Pending, AreaStage::Queued, 0, HoldState::Held)
    );
    assert_eq!(back.area(Backyard).unwrap().status, AreaStatus::Completed, "finished areas stay finished");
    assert!(s.store.heartbeat(&w, TTL).await.unwrap().is_empty());
    assert_eq!(s.store.advance_area(&l, FrontYard, AreaStage::Storing, 1).await, Err(StoreError::LeaseLost));
    let next = worker("next");
    let again = claim_it(s, &g, &next, TTL).await;
    assert_eq!(again.attempt, 2);
    let nl = lease(&again, &next);
    complete(s, &nl, FrontYard, "k2").await;
    let done =
        s.store.finish(&nl, AreaStatus::Failed, &failure(ErrorCode::Internal)).await.unwrap().generation;
    assert_eq!(done.status, GenerationStatus::Completed);
}

pub async fn record_geocode_is_fenced(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard], 1).await;
    let w = worker("w");
    let claimed = claim_it(s, &g, &w, TTL).await;
    let geo = Geocoded { formatted_address: "Somewhere 1".into(), location: LatLng::new(1.5, -2.5).unwrap() };
    let wrong = Lease { generation_id: g.id, attempt: claimed.attempt + 1, owner: w.clone() };
    assert_eq!(s.store.record_geocode(&wrong, &geo).await, Err(StoreError::LeaseLost));
    let stranger = Lease { generation_id: g.id, attempt: claimed.attempt, owner: worker("x") };
    assert_eq!(s.store.record_geocode(&stranger, &geo).await, Err(StoreError::LeaseLost));
    s.store.record_geocode(&lease(&claimed, &w), &geo).await.unwrap();
    assert_eq!(get(s, g.id).await.geocoded, Some(geo));
    s.store.cancel(g.id).await.unwrap();
}

pub async fn end_overdue_fails_unclaimed_work_past_deadline(s: &Subject) {
    let user = UserId::new_random();
    let g = create_within(s, user, &[FrontYard, Backyard], Duration::from_millis(300), 3).await;
    let keep = create(s, user, &[Patio], 3).await;
    let ended = eventually("the overdue generation is ended", BOUND, async || {
        let ids = s.store.end_overdue(10).await.unwrap();
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(ended, [g.id]);
    let done = get(s, g.id).await;
    assert_eq!(done.status, GenerationStatus::Failed);
    assert_eq!(done.error.as_ref().map(|e| e.code), Some(ErrorCode::DeadlineExceeded));
    assert!(done.areas.iter().all(|a| a.hold == HoldState::Voided
        && a.error.as_ref().map(|e| e.code) == Some(ErrorCode::DeadlineExceeded)));
    assert_eq!(get(s, keep.id).await.status, GenerationStatus::Pending);
    assert!(s.store.end_overdue(10).await.unwrap().is_empty(), "ended once");
    assert_eq!(s.store.claim_one(g.id, &worker("w"), TTL).await.unwrap(), None);
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.held), (2, 1));
    assert_eq!(resolutions(s, &done).await, [(FrontYard, 1), (Backyard, 1)]);
}

pub async fn end_overdue_spares_live_leases(s: &Subject) {
    let user = UserId::new_random();
    let g = create_within(s, user, &[FrontYard], Duration::from_millis(200), 3).await;
    let w = worker("w");
    let claimed = claim_it(s, &g, &w, TTL).await;
    // Past the deadline the work is not claimable, but its live lease is the
    // worker's to end.
    eventually("the deadline passes", BOUND, async || {
        s.store.claim_one(g.id, &worker("x"), TTL).await.unwrap().is_none().then_some(())
    })
    .await;
    let before = tokio::time::Instant::now();
    while before.elapsed() < Duration::from_millis(400) {
        assert!(s.store.end_overdue(10).await.unwrap().is_empty(), "a live lease is spared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = lease(&claimed, &w);
    let done = s
        .store
        .finish(&l, AreaStatus::Failed, &failure(ErrorCode::DeadlineExceeded))
        .await
        .unwrap()
        .generation;
    assert_eq!(done.status, GenerationStatus::Failed);
}

pub async fn dropped_worker_is_resumed_and_every_hold_resolves_once(s: &Subject) {
    let user = UserId::new_random();
    // One generation to resume, one that runs out of time while orphaned.
    let resumable = create(s, user, &[FrontYard, Backyard, Patio], 5).await;
    // Its deadline passes before the dead worker's lease expires, so nobody
    // may claim it again: the sweeper must end it.
    let doomed = create_within(s, user, &[Walkway], Duration::from_millis(150), 5).await;
    let dead = worker("dead");
    let claimed = s.store.claim(&dead, SHORT_TTL, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let dl = lease(&claimed[0], &dead);
    complete(s, &dl, FrontYard, "k1").await;
    s.store.advance_area(&dl, Backyard, AreaStage::GeneratingDesign, 30).await.unwrap();
    // The worker dies here: no heartbeat, no finish.
    let rescuer = worker("rescuer");
    let resumed = eventually("the orphan is claimed again", BOUND, async || {
        s.store.claim(&rescuer, TTL, 10).await.unwrap().into_iter().find(|g| g.id == resumable.id)
    })
    .await;
    assert_eq!(resumed.attempt, 2);
    assert_eq!(resumed.area(FrontYard).unwrap().status, AreaStatus::Completed, "finished work is kept");
    let rl = lease(&resumed, &rescuer);
    complete(s, &rl, Backyard, "k2").await;
    s.store.end_area(&rl, Patio, AreaStatus::Failed, &failure(ErrorCode::NoImage)).await.unwrap();
    let done =
        s.store.finish(&rl, AreaStatus::Failed, &failure(ErrorCode::Internal)).await.unwrap().generation;
    assert_eq!(done.status, GenerationStatus::PartiallyCompleted);
    let ended = eventually("the orphan past its deadline is ended", BOUND, async || {
        let ids = s.store.end_overdue(10).await.unwrap();
        ids.contains(&doomed.id).then_some(ids)
    })
    .await;
    assert_eq!(ended, [doomed.id]);
    for g in [done, get(s, doomed.id).await] {
        assert!(g.status.is_terminal());
        assert!(resolutions(s, &g).await.iter().all(|(_, n)| *n == 1), "every hold resolved once: {g:?}");
    }
    let acc = account(s, user).await;
    assert_eq!((acc.held, acc.captured, acc.trial_credits), (0, 2, 3));
}

pub async fn grant_applies_a_reference_once(s: &Subject) {
    let user = UserId::new_random();
    let r1 = CreditReference::parse("pay_1").unwrap();
    let g = s.ledger.grant(user, GrantAmount::parse(5).unwrap(), &r1, 3).await.unwrap();
    assert!(g.applied);
    assert_eq!((g.account.trial_credits, g.account.token_balance), (3, 5), "the grant opened the account");
    let again = s.ledger.grant(user, GrantAmount::parse(5).unwrap(), &r1, 3).await.unwrap();
    assert!(!again.applied);
    assert_eq!(again.account, g.account);
    let r2 = CreditReference::parse("pay_2").unwrap();
    let more = s.ledger.grant(user, GrantAmount::parse(7).unwrap(), &r2, 3).await.unwrap();
    assert!(more.applied);
    assert_eq!(more.account.token_balance, 12);
    // References are per account.
    let other = s.ledger.grant(UserId::new_random(), GrantAmount::parse(1).unwrap(), &r1, 0).await.unwrap();
    assert!(other.applied);
    let credits: Vec<_> =
        all_entries(s, user).await.into_iter().filter(|e| e.kind == LedgerKind::Credit).collect();
    assert_eq!(credits.len(), 3);
    assert_eq!(credits.iter().filter(|e| e.reference.as_deref() == Some("pay_1")).count(), 1);
}

pub async fn transactions_page_newest_first(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard], 2).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    complete(s, &l, FrontYard, "k").await;
    s.store.finish(&l, AreaStatus::Failed, &failure(ErrorCode::NoImage)).await.unwrap();
    s.ledger
        .grant(user, GrantAmount::parse(4).unwrap(), &CreditReference::parse("r").unwrap(), 2)
        .await
        .unwrap();
    let entries = all_entries(s, user).await;
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            LedgerKind::Credit,
            LedgerKind::Void,
            LedgerKind::Capture,
            LedgerKind::Hold,
            LedgerKind::Hold,
            LedgerKind::Credit
        ],
        "newest first"
    );
    assert!(entries.windows(2).all(|w| w[0].id > w[1].id));
    assert!(entries.iter().all(|e| e.user_id == user));
    let void = &entries[1];
    assert_eq!(
        (void.generation_id, void.area, void.source),
        (Some(g.id), Some(Backyard), CreditSource::Trial)
    );
    let first = s.ledger.transactions(user, 2, None).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(first.next_cursor.is_some());
    let all = s.ledger.transactions(user, 50, None).await.unwrap();
    assert_eq!((all.items.len(), all.next_cursor), (6, None));
    assert!(s.ledger.transactions(UserId::new_random(), 10, None).await.unwrap().items.is_empty());
}

pub async fn concurrent_holds_never_overdraw(s: &Subject) {
    let user = UserId::new_random();
    s.ledger.open_account(user, 10).await.unwrap();
    let store = s.store.clone();
    let deadline = tokio::time::Instant::now() + BOUND;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                // Busy is a clean refusal; a client retries it.
                let mut busy = 0u32;
                loop {
                    match store.create(new_generation(user, &[FrontYard], LONG, 10), None).await {
                        Ok(CreateOutcome::Created(_)) => return (true, busy),
                        Err(CreateError::InsufficientCredits { needed: 1, available: 0 }) => {
                            return (false, busy);
                        }
                        Err(CreateError::AccountBusy) if tokio::time::Instant::now() < deadline => {
                            busy += 1;
                            tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10))).await;
                        }
                        other => panic!("neither held nor cleanly refused: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut held = 0;
    for t in tasks {
        let (ok, _) = t.await.expect("task");
        held += usize::from(ok);
    }
    assert_eq!(held, 10, "exactly the credits there were");
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.token_balance, acc.held), (0, 0, 10));
}

pub async fn notifications_announce_creation_and_cancellation(s: &Subject) {
    let mut events = s.store.notifications();
    let user = UserId::new_random();
    // The listener may still be starting: create until the announcement comes.
    let mut ids = Vec::new();
    let first = eventually("a creation is announced", BOUND, async || {
        let g = create(s, user, &[FrontYard], 100).await;
        ids.push(g.id);
        tokio::time::timeout(Duration::from_millis(250), next_about(&mut events, &ids)).await.ok()
    })
    .await;
    assert!(matches!(first, Notification::Created(id) if ids.contains(&id)), "{first:?}");
    let target = *ids.last().expect("created one");
    s.store.cancel(target).await.unwrap();
    let cancel = tokio::time::timeout(BOUND, async {
        loop {
            if let Notification::CancelRequested(id) = next_about(&mut events, &[target]).await {
                return id;
            }
        }
    })
    .await
    .expect("the cancellation is announced");
    assert_eq!(cancel, target);
}

async fn next_about(
    events: &mut futures::stream::BoxStream<'static, Notification>,
    ids: &[GenerationId],
) -> Notification {
    loop {
        let n = events.next().await.expect("the stream lives as long as the store");
        let id = match &n {
            Notification::Created(id) | Notification::Changed(id) | Notification::CancelRequested(id) => *id,
        };
        if ids.contains(&id) {
            return n;
        }
    }
}

pub async fn gauges_count_held_credits(s: &Subject) {
    let user = UserId::new_random();
    create(s, user, &[FrontYard, Backyard], 5).await;
    create(s, UserId::new_random(), &[Patio], 5).await;
    let gauges = s.store.gauges(TTL).await.unwrap();
    assert_eq!(gauges.credits_held, 3);
    assert_eq!(gauges.stuck, 0);
    s.store.ping().await.unwrap();
}

/// Work nobody runs counts as stuck too (CONTRACT §5): `pending` past its
/// deadline plus one lease TTL, as well as `processing`.
pub async fn gauges_count_pending_work_past_its_deadline_as_stuck(s: &Subject) {
    let user = UserId::new_random();
    let ttl = Duration::from_millis(100);
    let pending = create_within(s, user, &[FrontYard], Duration::from_millis(300), 5).await;
    let running = create_within(s, user, &[Patio], Duration::from_millis(300), 5).await;
    create(s, user, &[Backyard], 5).await;
    claim_it(s, &running, &worker("w"), TTL).await;
    let stuck = eventually("both overdue generations count as stuck", BOUND, async || {
        let n = s.store.gauges(ttl).await.unwrap().stuck;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(stuck, 2);
    assert_eq!(s.store.end_overdue(10).await.unwrap(), [pending.id], "the live lease is spared");
    assert_eq!(s.store.gauges(ttl).await.unwrap().stuck, 1);
}

pub async fn a_cursor_the_store_did_not_give_is_invalid(s: &Subject) {
    let user = UserId::new_random();
    create(s, user, &[FrontYard], 3).await;
    for bad in ["garbage", "12x", ""] {
        let q = ListQuery { limit: 5, cursor: Some(bad.to_owned()), status: None };
        assert_eq!(
            s.store.list(user, q).await.map(|p| p.items.len()),
            Err(StoreError::InvalidCursor),
            "{bad:?}"
        );
        let t = s.ledger.transactions(user, 5, Some(bad.to_owned())).await.map(|p| p.items.len());
        assert_eq!(t, Err(terrace_domain::LedgerError::Store(StoreError::InvalidCursor)), "{bad:?}");
    }
}

pub async fn cancel_racing_a_worker_resolves_each_hold_once(s: &Subject) {
    let user = UserId::new_random();
    let areas = [FrontYard, Backyard, Patio, Walkway];
    let g = create(s, user, &areas, 4).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    for a in areas {
        s.store.advance_area(&l, a, AreaStage::Storing, 90).await.unwrap();
    }
    let cancel = {
        let store = Arc::clone(&s.store);
        tokio::spawn(async move { store.cancel(g.id).await })
    };
    let completes: Vec<_> = areas
        .iter()
        .map(|a| {
            let (store, l, a) = (Arc::clone(&s.store), l.clone(), *a);
            tokio::spawn(async move { store.complete_area(&l, a, "k").await })
        })
        .collect();
    let mut completed = 0;
    for c in completes {
        match c.await.unwrap() {
            Ok(resolved) => {
                assert!(matches!(&resolved[..], [r] if r.to == HoldState::Captured), "{resolved:?}");
                completed += 1
            }
            Err(StoreError::Finished) => {}
            other => {
                panic!("a completion racing a cancel either lands or finds the area finished: {other:?}")
            }
        }
    }
    assert!(matches!(cancel.await.unwrap(), Ok(CancelOutcome::Cancelled(_))));
    let done = get(s, g.id).await;
    assert!(done.status.is_terminal());
    assert_eq!(done.captured(), completed);
    assert_eq!(done.captured() + done.voided(), 4);
    assert!(resolutions(s, &done).await.iter().all(|(_, n)| *n == 1), "{done:?}");
    let acc = account(s, user).await;
    assert_eq!((acc.held, acc.captured, acc.trial_credits), (0, completed, 4 - completed));
}

// ---- rules both stores once applied differently ----

/// A stuck worker that keeps heartbeating cannot keep overdue work (and its
/// holds) forever: its lease is capped at the deadline plus one TTL.
pub async fn heartbeats_never_keep_a_lease_past_the_deadline_by_more_than_one_ttl(s: &Subject) {
    let user = UserId::new_random();
    let g = create_within(s, user, &[FrontYard], Duration::from_millis(300), 3).await;
    let w = worker("stuck");
    claim_it(s, &g, &w, SHORT_TTL).await;
    let ended = eventually("the sweep ends work whose worker keeps heartbeating", BOUND, async || {
        let leases = s.store.heartbeat(&w, SHORT_TTL).await.unwrap();
        assert!(leases.len() <= 1);
        let ids = s.store.end_overdue(10).await.unwrap();
        ids.contains(&g.id).then_some(ids)
    })
    .await;
    assert_eq!(ended, [g.id]);
    let done = get(s, g.id).await;
    assert_eq!(done.error.map(|e| e.code), Some(ErrorCode::DeadlineExceeded));
    assert!(s.store.heartbeat(&w, SHORT_TTL).await.unwrap().is_empty(), "the lease is gone");
    assert_eq!(account(s, user).await.held, 0);
}

pub async fn the_sweep_ends_the_earliest_deadline_first(s: &Subject) {
    let user = UserId::new_random();
    let later = create_within(s, user, &[FrontYard], Duration::from_millis(400), 5).await;
    let sooner = create_within(s, user, &[Backyard], Duration::from_millis(200), 5).await;
    let earliest = create_within(s, user, &[Patio], Duration::from_millis(100), 5).await;
    // The store's clock is this machine's: wait for it past the last deadline.
    let past = later.deadline_at + chrono::TimeDelta::milliseconds(100);
    eventually("all three are past their deadlines", BOUND, async || {
        (chrono::Utc::now() > past).then_some(())
    })
    .await;
    let mut order = Vec::new();
    for _ in 0..3 {
        order.extend(s.store.end_overdue(1).await.unwrap());
    }
    assert_eq!(order, [earliest.id, sooner.id, later.id]);
}

pub async fn a_finish_that_cannot_settle_is_refused_and_writes_nothing(s: &Subject) {
    let user = UserId::new_random();
    let g = create(s, user, &[FrontYard, Backyard], 3).await;
    let w = worker("w");
    let l = lease(&claim_it(s, &g, &w, TTL).await, &w);
    for unfinished in [AreaStatus::Pending, AreaStatus::Processing] {
        let r = s.store.finish(&l, unfinished, &failure(ErrorCode::Internal)).await;
        assert!(matches!(r, Err(StoreError::Internal { .. })), "{unfinished:?}: {r:?}");
    }
    let still = get(s, g.id).await;
    assert!(!still.status.is_terminal());
    assert!(still.areas.iter().all(|a| a.hold == HoldState::Held), "nothing was resolved");
    let done =
        s.store.finish(&l, AreaStatus::Failed, &failure(ErrorCode::Internal)).await.unwrap().generation;
    assert_eq!(done.status, GenerationStatus::Failed);
}

// ---- billing (CONTRACT §7) ----

use terrace_domain::billing::{
    BillingChange, BillingEvent, EventOrder, Package, SubscriptionChange, SubscriptionStatus, WebhookOutcome,
};

fn event(id: &str, created: i64, rank: u8, change: BillingChange) -> BillingEvent {
    BillingEvent { id: id.to_owned(), kind: "test.event".into(), order: EventOrder { created, rank }, change }
}

fn purchase(user: UserId, package: &str, payment_intent: &str) -> BillingChange {
    BillingChange::Purchase {
        user,
        package: Package::find(package).expect("a package"),
        payment_intent: payment_intent.to_owned(),
        customer_id: Some("cus_1".into()),
    }
}

fn sub_change(user: Option<UserId>, status: SubscriptionStatus, cancel_at_end: bool) -> BillingChange {
    BillingChange::Subscription {
        user,
        change: SubscriptionChange {
            customer_id: Some(format!("cus_{}", user.map_or("x".into(), |u| u.to_string()))),
            subscription_id: Some("sub_1".into()),
            plan: Some("monthly_pro".into()),
            status: Some(status),
            current_period_end: None,
            cancel_at_period_end: Some(cancel_at_end),
        },
    }
}

pub async fn a_purchase_credits_once_however_often_it_is_delivered(s: &Subject) {
    let user = UserId::new_random();
    let paid =
        event(&format!("evt_{}", GenerationId::new_random()), 100, 2, purchase(user, "package_50", "pi_1"));
    // Five deliveries at once.
    let deliveries: Vec<_> = (0..5)
        .map(|_| {
            let (billing, paid) = (Arc::clone(&s.billing), paid.clone());
            tokio::spawn(async move { billing.apply_event(&paid, 3).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for d in deliveries {
        outcomes.push(d.await.unwrap().expect("applied or a duplicate"));
    }
    assert_eq!(outcomes.iter().filter(|o| **o == WebhookOutcome::Applied).count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == WebhookOutcome::Duplicate).count(), 4, "{outcomes:?}");
    // Another event about the same payment credits nothing more.
    let again = event("evt_other", 101, 2, purchase(user, "package_50", "pi_1"));
    assert_eq!(s.billing.apply_event(&again, 3).await.unwrap(), WebhookOutcome::Ignored);
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.token_balance), (3, 50));
    let credits: Vec<_> = all_entries(s, user)
        .await
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Credit && e.source == CreditSource::Token)
        .map(|e| (e.amount, e.reference))
        .collect();
    assert_eq!(credits, [(50, Some("stripe:pi_1".to_owned()))]);
    assert_eq!(s.billing.subscription(user).await.unwrap().customer_id.as_deref(), Some("cus_1"));
}

pub async fn subscription_events_out_of_order_never_move_it_back(s: &Subject) {
    let user = UserId::new_random();
    // `updated` (cancel at period end) is delivered before `created`.
    let updated = event("evt_u", 200, 3, sub_change(Some(user), SubscriptionStatus::Active, true));
    let created = event("evt_c", 100, 1, sub_change(Some(user), SubscriptionStatus::Active, false));
    assert_eq!(s.billing.apply_event(&updated, 3).await.unwrap(), WebhookOutcome::Applied);
    assert_eq!(s.billing.apply_event(&created, 3).await.unwrap(), WebhookOutcome::Ignored);
    let sub = s.billing.subscription(user).await.unwrap();
    assert_eq!((sub.status, sub.cancel_at_period_end), (SubscriptionStatus::Active, true));
    assert_eq!(sub.plan.as_deref(), Some("monthly_pro"));
    // An invoice naming only the subscription finds its user.
    let failed = event("evt_f", 300, 4, sub_change(None, SubscriptionStatus::PastDue, true));
    let BillingChange::Subscription { change, .. } = failed.change.clone() else { unreachable!() };
    let failed = BillingEvent {
        change: BillingChange::Subscription {
            user: None,
            change: SubscriptionChange { customer_id: None, ..change },
        },
        ..failed
    };
    assert_eq!(s.billing.apply_event(&failed, 3).await.unwrap(), WebhookOutcome::Applied);
    assert_eq!(s.billing.subscription(user).await.unwrap().status, SubscriptionStatus::PastDue);
    let deleted = event("evt_d", 400, 5, sub_change(Some(user), SubscriptionStatus::Cancelled, false));
    assert_eq!(s.billing.apply_event(&deleted, 3).await.unwrap(), WebhookOutcome::Applied);
    assert_eq!(s.billing.apply_event(&deleted, 3).await.unwrap(), WebhookOutcome::Duplicate);
    assert_eq!(s.billing.subscription(user).await.unwrap().status, SubscriptionStatus::Cancelled);
    let none = s.billing.subscription(UserId::new_random()).await.unwrap();
    assert_eq!((none.status, none.customer_id), (SubscriptionStatus::None, None));
}

pub async fn an_active_subscription_holds_nothing_and_a_lapsed_one_pays_trial_then_tokens(s: &Subject) {
    let user = UserId::new_random();
    s.ledger
        .grant(user, GrantAmount::parse(1).unwrap(), &CreditReference::parse("pay_1").unwrap(), 1)
        .await
        .unwrap();
    let active = event("evt_a", 100, 1, sub_change(Some(user), SubscriptionStatus::Active, false));
    s.billing.apply_event(&active, 1).await.unwrap();
    // Free while active: holds of amount 0 from the subscription, resolved once.
    let free = create(s, user, &[FrontYard, Backyard, Patio], 1).await;
    assert!(
        free.areas.iter().all(|a| a.hold_source == CreditSource::Subscription && a.hold == HoldState::Held)
    );
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.token_balance, acc.held), (1, 1, 0));
    let w = worker("w");
    let l = lease(&claim_it(s, &free, &w, TTL).await, &w);
    complete(s, &l, FrontYard, "k").await;
    s.store.end_area(&l, Backyard, AreaStatus::Failed, &failure(ErrorCode::NoImage)).await.unwrap();
    let done =
        s.store.finish(&l, AreaStatus::Failed, &failure(ErrorCode::Internal)).await.unwrap().generation;
    assert_eq!(done.status, GenerationStatus::PartiallyCompleted);
    assert!(resolutions(s, &done).await.iter().all(|(_, n)| *n == 1), "every hold resolved once");
    let holds: Vec<_> = all_entries(s, user)
        .await
        .into_iter()
        .filter(|e| e.generation_id == Some(free.id))
        .map(|e| (e.kind, e.amount, e.source))
        .collect();
    assert_eq!(holds.len(), 6, "three holds and their three resolutions: {holds:?}");
    assert!(holds.iter().all(|(_, amount, source)| *amount == 0 && *source == CreditSource::Subscription));
    let acc = account(s, user).await;
    assert_eq!((acc.trial_credits, acc.token_balance, acc.held, acc.captured), (1, 1, 0, 0));
    // Lapsed: trial first, then tokens, then nothing.
    let lapsed = event("evt_p", 200, 4, sub_change(Some(user), SubscriptionStatus::PastDue, false));
    s.billing.apply_event(&lapsed, 1).await.unwrap();
    let paid = create(s, user, &[Walkway], 1).await;
    assert_eq!(paid.areas[0].hold_source, CreditSource::Trial);
    let paid = create(s, user, &[Walkway], 1).await;
    assert_eq!(paid.areas[0].hold_source, CreditSource::Token);
    let refused = s.store.create(crate::new_generation(user, &[Walkway], LONG, 1), None).await;
    assert!(
        matches!(refused, Err(CreateError::InsufficientCredits { needed: 1, available: 0 })),
        "{refused:?}"
    );
    s.store.cancel(paid.id).await.unwrap();
}

pub async fn unknown_and_unpaid_events_are_acknowledged_and_change_nothing(s: &Subject) {
    let unknown = event("evt_unknown", 1, 0, BillingChange::Ignored);
    assert_eq!(s.billing.apply_event(&unknown, 3).await.unwrap(), WebhookOutcome::Ignored);
    assert_eq!(s.billing.apply_event(&unknown, 3).await.unwrap(), WebhookOutcome::Duplicate);
    // A subscription event for nobody Terrace knows.
    let stray = event("evt_stray", 5, 3, sub_change(None, SubscriptionStatus::Active, false));
    let BillingChange::Subscription { change, .. } = stray.change.clone() else { unreachable!() };
    let stray = BillingEvent {
        change: BillingChange::Subscription {
            user: None,
            change: SubscriptionChange {
                subscription_id: Some("sub_nobody".into()),
                customer_id: None,
                ..change
            },
        },
        ..stray
    };
    assert_eq!(s.billing.apply_event(&stray, 3).await.unwrap(), WebhookOutcome::Ignored);
}
