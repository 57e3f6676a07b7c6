//! One test suite for the [`GenerationStore`] and [`Ledger`] ports, written
//! once and run on every adapter.
//!
//! An adapter's integration tests implement [`Factory`] (a fresh, empty store
//! and ledger sharing state, per test) and call [`suite!`], which expands to
//! one `#[tokio::test]` per case in [`cases`]. Every case ends by checking
//! [`Ledger::conservation_violations`]: `credited = available + held +
//! captured` for every account, and every counter agrees with the entries.
//!
//! Cases that depend on time (lease expiry, deadlines) use real durations of
//! a few hundred milliseconds and wait for the condition with a bound, since
//! a database keeps its own clock.

pub mod cases;

use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::{
    AreaKind, AreaRequest, GenerationId, GenerationRequest, IdempotencyKey, PreservationStrength, RequestId,
    Style, UserId,
};
use terrace_ports::{BillingLedger, GenerationStore, IdempotencyClaim, Ledger, NewGeneration};

pub use tokio;

/// A fresh store and ledger that share state, and how to clean up after them.
pub struct Subject {
    pub store: Arc<dyn GenerationStore>,
    pub ledger: Arc<dyn Ledger>,
    pub billing: Arc<dyn BillingLedger>,
    /// Run after a case passed (closing pools, dropping a database).
    pub teardown: Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject").finish_non_exhaustive()
    }
}

/// Makes subjects for the suite.
pub trait Factory: Send + Sync {
    /// A fresh, empty store and ledger.
    fn fresh(&self) -> BoxFuture<'_, Subject>;
}

/// Runs one case on a fresh subject, then checks conservation and tears the
/// subject down.
pub async fn run<C>(factory: &dyn Factory, case: C)
where
    C: AsyncFnOnce(&Subject),
{
    let mut subject = factory.fresh().await;
    case(&subject).await;
    let violations = subject.ledger.conservation_violations().await.expect("conservation check");
    assert!(violations.is_empty(), "conservation violated: {violations:#?}");
    if let Some(teardown) = subject.teardown.take() {
        teardown().await;
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each running on
/// `$factory` (an expression of a type implementing [`Factory`]).
#[macro_export]
macro_rules! suite {
    ($factory:expr) => {
        $crate::suite!(@cases $factory;
            open_account_is_idempotent,
            create_holds_one_credit_per_area_trial_first,
            holds_take_trial_then_tokens,
            insufficient_credits_hold_nothing,
            idempotency_replays_and_refuses_another_body,
            get_and_list_page_newest_first,
            claim_sets_lease_and_attempt,
            claim_one_takes_only_claimable,
            heartbeat_renews_every_lease_in_one_call,
            expired_lease_is_rescued_and_old_writes_refused,
            claim_pending_takes_new_work_and_leaves_expired_leases_to_claim,
            complete_captures_and_end_voids_once,
            a_pending_area_completes_once_its_image_is_stored,
            finish_ends_unfinished_and_settles,
            finish_with_every_area_completed_is_completed,
            cancel_voids_unfinished_and_settles,
            cancel_racing_a_worker_resolves_each_hold_once,
            cancel_of_unknown_generation_is_not_found,
            release_hands_work_back,
            record_geocode_is_fenced,
            end_overdue_fails_unclaimed_work_past_deadline,
            end_overdue_spares_live_leases,
            dropped_worker_is_resumed_and_every_hold_resolves_once,
            grant_applies_a_reference_once,
            transactions_page_newest_first,
            concurrent_holds_never_overdraw,
            notifications_announce_creation_and_cancellation,
            gauges_count_held_credits,
            gauges_count_pending_work_past_its_deadline_as_stuck,
            a_cursor_the_store_did_not_give_is_invalid,
            a_purchase_credits_once_however_often_it_is_delivered,
            subscription_events_out_of_order_never_move_it_back,
            an_active_subscription_holds_nothing_and_a_lapsed_one_pays_trial_then_tokens,
            unknown_and_unpaid_events_are_acknowledged_and_change_nothing,
            heartbeats_never_keep_a_lease_past_the_deadline_by_more_than_one_ttl,
            the_sweep_ends_the_earliest_deadline_first,
            a_finish_that_cannot_settle_is_refused_and_writes_nothing,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[$crate::tokio::test(flavor = "multi_thread", worker_threads = 2, crate = "terrace_conformance::tokio")]
            async fn $case() {
                $crate::run(&$factory, $crate::cases::$case).await;
            }
        )*
    };
}

/// A create request for `areas`, each in one style.
pub fn request(areas: &[AreaKind]) -> GenerationRequest {
    GenerationRequest {
        address: terrace_domain::Address::parse("1600 Amphitheatre Parkway").expect("valid address"),
        areas: areas
            .iter()
            .map(|a| AreaRequest {
                area: *a,
                style: Style::JapaneseZen,
                custom_prompt: None,
                preservation_strength: PreservationStrength::DEFAULT,
            })
            .collect(),
    }
}

/// A new generation for `user` with `areas`, a deadline and the trial
/// credits a new account gets.
pub fn new_generation(user: UserId, areas: &[AreaKind], deadline: Duration, trial: u64) -> NewGeneration {
    NewGeneration {
        id: GenerationId::new_random(),
        user_id: user,
        request_id: RequestId::generate(),
        request: request(areas),
        deadline,
        trial_credits: trial,
    }
}

/// The claim of idempotency key `key` (which must parse) for a request
/// whose fingerprint is `request_hash`.
pub fn key_claim(key: &str, request_hash: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        key: IdempotencyKey::parse(key).expect("a valid key"),
        request_hash: request_hash.into(),
    }
}

/// Polls `check` until it yields a value or `bound` passes (then panics
/// naming `what`). For conditions that depend on a clock the test cannot move.
pub async fn eventually<T, F>(what: &str, bound: Duration, mut check: F) -> T
where
    F: AsyncFnMut() -> Option<T>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
