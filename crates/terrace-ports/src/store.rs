//! Terrace's own state: generations (with leases and cancellation), credits
//! and images.

use crate::google::Image;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::time::Duration;
use terrace_domain::rules::Resolution;
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    Account, AreaKind, BlobError, CreateError, CreditReference, Failure, Generation, GenerationId,
    GenerationRequest, GenerationStatus, Geocoded, GrantAmount, IdempotencyKey, LedgerEntry, LedgerError,
    RequestId, StoreError, UserId,
};

/// Wall-clock time, injectable so that stores can be tested with a clock the
/// test moves.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Names one running instance of Terrace. Leases are held in its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub String);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker's right to write to one generation: its id, the attempt number
/// the claim gave, and the owner. Every worker write is fenced by it: once
/// another claim raised the attempt, the old lease's writes fail with
/// [`StoreError::LeaseLost`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub generation_id: GenerationId,
    pub attempt: u32,
    pub owner: WorkerId,
}

/// A new generation, ready to be held for and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGeneration {
    pub id: GenerationId,
    pub user_id: UserId,
    pub request_id: RequestId,
    pub request: GenerationRequest,
    pub deadline: Duration,
    /// Trial credits to open the account with, should it not exist yet.
    pub trial_credits: u64,
}

/// An `Idempotency-Key` and the hash of the request body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: IdempotencyKey,
    pub request_hash: String,
}

/// What [`GenerationStore::create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// Held, stored, pending.
    Created(Generation),
    /// The key was used before with the same request: nothing new was held.
    /// The generation is as it is now; [`Generation::as_created`] is what
    /// the first create returned.
    Replayed(Generation),
}

/// What [`GenerationStore::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// Unfinished areas are now cancelled and their holds voided.
    Cancelled(Generation),
    /// It was terminal already (409).
    AlreadyTerminal(Generation),
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque; pass back to get the next page.
    pub next_cursor: Option<String>,
}

/// A listing's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// 1 to 50.
    pub limit: usize,
    pub cursor: Option<String>,
    pub status: Option<GenerationStatus>,
}

/// A lease the store still honours, as a heartbeat found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub generation_id: GenerationId,
    pub attempt: u32,
    pub cancel_requested: bool,
}

/// Something changed; delivered best effort (heartbeats, sweeps and polling
/// are the fallbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A generation was created and waits for a worker.
    Created(GenerationId),
    /// A generation's row changed.
    Changed(GenerationId),
    /// The user asked to cancel it: whoever runs it should stop.
    CancelRequested(GenerationId),
}

/// What the worker's final write came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub generation: Generation,
    /// The holds this write resolved (those the run had not).
    pub resolved: Vec<Resolution>,
}

/// Gauges the store can count cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreGauges {
    /// Credits held across all accounts.
    pub credits_held: u64,
    /// Generations pending or processing past their deadline plus one lease TTL.
    pub stuck: u64,
}

/// A connection pool's state, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    pub max: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
    pub acquire_timeouts: u64,
    /// Creates waiting to be written (stores that write them together).
    pub creates_queued: usize,
    /// Transactions that wrote two creates or more at once.
    pub create_batches: u64,
    /// The creates those transactions wrote.
    pub batched_creates: u64,
}

/// Generations: creation with its holds, reads, cancellation, and the durable
/// work protocol (claim, heartbeat, fenced writes, release, sweep).
///
/// Errors: every method may fail with [`StoreError::Timeout`] (no connection
/// within the acquire timeout, or a statement past the statement timeout) or
/// [`StoreError::Unavailable`]. Fenced writes fail with
/// [`StoreError::LeaseLost`] when the lease no longer holds, and with
/// [`StoreError::Finished`] when the area or generation is already terminal
/// (for example cancelled by the user meanwhile).
///
/// Cancel safety: every method is one transaction (creates made at the same
/// moment may share one, each still all or nothing). Dropping its future
/// either lets the transaction commit or rolls it back; it never leaves a
/// half-written generation or a held connection behind.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait GenerationStore: Send + Sync + 'static {
    /// Opens the account if needed, holds one credit per area (trial first)
    /// and stores the generation and its areas as `pending`, all in one
    /// transaction. The account lock follows the lock policy. A store may
    /// write creates that wait at the same moment in one transaction (the
    /// Postgres store does); each one's answer is still its own.
    ///
    /// Errors: [`CreateError::InsufficientCredits`],
    /// [`CreateError::AccountBusy`] (lock not had under the lock policy),
    /// [`CreateError::IdempotencyKeyReused`] (the key came with another body
    /// within 24 h); nothing is held in any of these cases.
    async fn create(
        &self,
        new: NewGeneration,
        idempotency: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, CreateError>;

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError>;

    /// The user's generations, newest first.
    async fn list(&self, user: UserId, query: ListQuery) -> Result<Page<Generation>, StoreError>;

    /// Cancels on the user's behalf: unfinished areas become `cancelled`,
    /// their holds are voided and the generation settles, in one transaction;
    /// the row records the request so the worker running it stops.
    ///
    /// Errors: [`StoreError::NotFound`].
    async fn cancel(&self, id: GenerationId) -> Result<CancelOutcome, StoreError>;

    /// Claims up to `limit` generations that are pending, or processing with
    /// an expired lease, and not past their deadline: raises each one's
    /// attempt, sets the lease to `owner` for `ttl`, marks it `processing`.
    /// Claims skip rows other instances hold locked (`SKIP LOCKED`).
    async fn claim(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError>;

    /// Claims up to `limit` *pending* generations (never started, or handed
    /// back), oldest first, as [`GenerationStore::claim`] would; work whose
    /// lease expired is left to `claim`. For claiming as soon as new work is
    /// announced: a store can find pending work without looking at every
    /// running generation's lease. The default claims as `claim` does.
    async fn claim_pending(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.claim(owner, ttl, limit).await
    }

    /// Claims one named generation, as [`GenerationStore::claim`] would;
    /// `None` when it is not claimable (already claimed, terminal, overdue).
    async fn claim_one(
        &self,
        id: GenerationId,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Option<Generation>, StoreError>;

    /// Renews every lease `owner` holds, in one statement, and returns them;
    /// a generation missing from the answer is no longer this owner's.
    async fn heartbeat(&self, owner: &WorkerId, ttl: Duration) -> Result<Vec<LeaseState>, StoreError>;

    /// Hands the generation back: its unfinished areas return to `pending`
    /// and the lease ends, so any instance may claim it at once.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Records what geocoding found. Fenced.
    async fn record_geocode(&self, lease: &Lease, geocoded: &Geocoded) -> Result<(), StoreError>;

    /// Moves an area to `processing` at `stage`. Fenced.
    async fn advance_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        stage: AreaStage,
        progress: u8,
    ) -> Result<(), StoreError>;

    /// Completes an area with its stored image and captures its hold, in one
    /// transaction. Fenced; `Finished` if the area is terminal already.
    /// Returns the hold it resolved.
    async fn complete_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        image_key: &str,
    ) -> Result<Vec<Resolution>, StoreError>;

    /// Ends an area as `failed` or `cancelled` and voids its hold, in one
    /// transaction. Fenced; `Finished` if the area is terminal already.
    /// Returns the hold it resolved.
    async fn end_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        status: AreaStatus,
        failure: &Failure,
    ) -> Result<Vec<Resolution>, StoreError>;

    /// Ends every unfinished area with `failure`, voiding their holds, then
    /// settles the generation and ends the lease. Fenced. Returns the final
    /// record and the holds this write resolved. With no unfinished areas it
    /// only settles. `Internal` (nothing written) when `unfinished` cannot
    /// end an area.
    async fn finish(
        &self,
        lease: &Lease,
        unfinished: AreaStatus,
        failure: &Failure,
    ) -> Result<Finished, StoreError>;

    /// Ends up to `limit` generations that are past their deadline and whose
    /// lease has expired (or that nobody claimed): unfinished areas fail with
    /// `deadline_exceeded`, holds are voided, the generation settles. Returns
    /// their ids. Any instance may run it.
    async fn end_overdue(&self, limit: usize) -> Result<Vec<GenerationId>, StoreError>;

    /// Deletes up to `limit` idempotency keys whose window has ended, oldest
    /// first, and returns how many. An expired key never replays (its next
    /// use starts afresh), so this changes no answer; it keeps the keys
    /// stored bounded by one window of requests. Any instance may run it.
    async fn forget_expired_keys(&self, limit: usize) -> Result<usize, StoreError>;

    /// Changes, best effort. The stream lives as long as the store.
    fn notifications(&self) -> BoxStream<'static, Notification>;

    /// Answers when the store can serve a query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counts for `/metrics`.
    async fn gauges(&self, lease_ttl: Duration) -> Result<StoreGauges, StoreError>;

    /// The pool's state, if the store has a pool.
    fn pool_status(&self) -> Option<PoolStatus>;
}

/// The result of an admin grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub account: Account,
    /// False when the reference had been applied before (nothing credited).
    pub applied: bool,
}

/// Accounts and their history.
///
/// Errors: [`LedgerError::AccountBusy`] when the account row is locked past
/// the lock policy; [`LedgerError::Store`] otherwise.
/// Cancel safety: one transaction per method, as for [`GenerationStore`].
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// The account, opened with `trial_credits` (and a `credit` entry) if it
    /// does not exist yet. Idempotent.
    async fn open_account(&self, user: UserId, trial_credits: u64) -> Result<Account, LedgerError>;

    /// The account's entries, newest first.
    async fn transactions(
        &self,
        user: UserId,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<LedgerEntry>, LedgerError>;

    /// Credits `amount` tokens once per `reference` and account (opening the
    /// account if needed).
    async fn grant(
        &self,
        user: UserId,
        amount: GrantAmount,
        reference: &CreditReference,
        trial_credits: u64,
    ) -> Result<Grant, LedgerError>;

    /// Checks `credited = available + held + captured` (and that the counters
    /// match the entries) for every account; returns one sentence per
    /// account that breaks it.
    async fn conservation_violations(&self) -> Result<Vec<String>, LedgerError>;
}

/// Where images live. Keys come from [`blob_key`].
///
/// Errors: [`BlobError::NotFound`] for a missing key; `Timeout` when the
/// adapter's blob timeout passed.
/// Cancel safety: dropping `put` may leave the object written or not, never
/// partly written.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    async fn put(&self, key: &str, image: Image) -> Result<(), BlobError>;
    async fn get(&self, key: &str) -> Result<Image, BlobError>;
}

/// Which source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    StreetView,
    Satellite,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::StreetView => "street_view",
            SourceKind::Satellite => "satellite",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "street_view" => Some(Self::StreetView),
            "satellite" => Some(Self::Satellite),
            _ => None,
        }
    }
}

/// The blob keys Terrace uses, in one place.
pub mod blob_key {
    use super::SourceKind;
    use terrace_domain::{AreaKind, GenerationId};

    /// The design image of one area.
    pub fn design(id: GenerationId, area: AreaKind) -> String {
        format!("generations/{id}/areas/{area}")
    }
    /// A source image of a generation.
    pub fn source(id: GenerationId, kind: SourceKind) -> String {
        format!("generations/{id}/source/{}", kind.as_str())
    }
}

/// Billing's side of the ledger (CONTRACT §7): verified Stripe events,
/// applied by the rules of [`terrace_domain::billing`].
///
/// Errors: a `LedgerError` means nothing of the event took effect, so the
/// webhook answers 5xx and Stripe delivers it again.
/// Cancel safety: dropping `apply_event` leaves the event applied entirely
/// or not at all.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BillingLedger: Send + Sync + 'static {
    /// Applies `event` at most once by its id: recording the id and its
    /// effect (a purchase's credit, a subscription's state) happen together,
    /// however many times and however concurrently it is delivered. A
    /// purchase credits its tokens once per payment (reference
    /// `stripe:<payment_intent>`), opening the account with
    /// `trial_credits` if needed.
    async fn apply_event(
        &self,
        event: &terrace_domain::billing::BillingEvent,
        trial_credits: u64,
    ) -> Result<terrace_domain::billing::WebhookOutcome, LedgerError>;

    /// The user's billing: their customer and subscription (the default
    /// when they have none).
    async fn subscription(&self, user: UserId) -> Result<terrace_domain::billing::Subscription, LedgerError>;
}
