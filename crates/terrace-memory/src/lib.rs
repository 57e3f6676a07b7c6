//! In-memory adapters: [`MemoryStore`] (the generation store and the credit
//! ledger on one value) and [`MemoryBlobs`]. Dev mode and tests use them.
//!
//! They keep the same promises as the Postgres adapter, by the same rules: the
//! area and hold transitions are the domain's own ([`terrace_domain::Area`]),
//! every worker write is fenced by its [`Lease`], and a generation settles with
//! [`terrace_domain::Generation::settle`]. State lives behind one mutex that is
//! never held across an `.await`, so every method returns at once.
//!
//! Time comes from a [`Clock`]; [`TokioClock`] follows tokio's clock, so tests
//! that pause time also move lease expiries and deadlines here.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use terrace_domain::billing::{
    BillingChange, BillingEvent, Subscription, SubscriptionChange, WebhookOutcome, purchase_reference,
};
use terrace_domain::credits::check_conservation;
use terrace_domain::rules::{self, Resolution};
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    Account, Area, AreaKind, BlobError, CreateError, Created, CreditReference, CreditSource, ErrorCode,
    Failure, Generation, GenerationId, GenerationStatus, Geocoded, GrantAmount, HoldState, LedgerEntry,
    LedgerError, LedgerKind, StoreError, UserId,
};
use terrace_ports::{
    BillingLedger, BlobStore, CancelOutcome, Clock, CreateOutcome, Finished, GenerationStore, Grant,
    IdempotencyClaim, Image, Lease, LeaseState, Ledger, ListQuery, NewGeneration, NoopObserver, Notification,
    Observer, Page, PoolStatus, StoreGauges, WorkerId,
};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// A wall clock that advances with tokio's clock: paused in tests that pause
/// time, real otherwise.
#[derive(Debug, Clone)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self { wall: Utc::now(), start: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        self.wall + chrono::TimeDelta::from_std(elapsed).unwrap_or(chrono::TimeDelta::MAX)
    }
}

#[derive(Debug)]
struct Row {
    generation: Generation,
    seq: u64,
    lease_owner: Option<WorkerId>,
    lease_expires: Option<DateTime<Utc>>,
}

impl Row {
    /// Ends every unfinished area with `status` and `failure`, settles the
    /// generation and ends the lease.
    fn close(&mut self, status: AreaStatus, failure: &Failure, now: DateTime<Utc>) {
        self.generation.close(status, failure, now);
        self.lease_owner = None;
        self.lease_expires = None;
    }
}

#[derive(Debug)]
struct Idempotency {
    request_hash: String,
    generation_id: GenerationId,
    expires_at: DateTime<Utc>,
}

/// What a ledger entry is about.
enum Link {
    Area(GenerationId, AreaKind),
    Reference(String),
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<UserId, Account>,
    entries: Vec<LedgerEntry>,
    references: HashSet<(UserId, String)>,
    rows: HashMap<GenerationId, Row>,
    next_seq: u64,
    idempotency: HashMap<(UserId, String), Idempotency>,
    billing: HashMap<UserId, Subscription>,
    /// Stripe event ids seen, and what each came to.
    events: HashMap<String, WebhookOutcome>,
}

impl State {
    /// Appends a ledger entry of one of `user_id`'s credits, for an area or
    /// with a reference.
    fn entry(&mut self, now: DateTime<Utc>, line: (UserId, LedgerKind, CreditSource, u64), link: Link) {
        let (user_id, kind, source, amount) = line;
        let id = self.entries.len() as i64 + 1;
        let (at, reference) = match link {
            Link::Area(g, a) => (Some((g, a)), None),
            Link::Reference(r) => (None, Some(r)),
        };
        self.entries.push(LedgerEntry {
            id,
            user_id,
            kind,
            amount,
            source,
            generation_id: at.map(|a| a.0),
            area: at.map(|a| a.1),
            reference,
            created_at: now,
        });
    }

    fn open(&mut self, now: DateTime<Utc>, user: UserId, trial: u64) -> Account {
        if let Some(a) = self.accounts.get(&user) {
            return *a;
        }
        let a = Account::open(user, trial);
        self.accounts.insert(user, a);
        if trial > 0 {
            self.entry(
                now,
                (user, LedgerKind::Credit, CreditSource::Trial, trial),
                Link::Reference(CreditReference::TRIAL.into()),
            );
        }
        a
    }

    /// Books the ledger side of holds that just resolved.
    fn book(&mut self, now: DateTime<Utc>, generation: &Generation, resolved: &[Resolution]) {
        let user = generation.user_id;
        for r in resolved {
            let account = self.accounts.entry(user).or_insert_with(|| Account::open(user, 0));
            let kind = if r.to == HoldState::Captured {
                account.capture(r.source);
                LedgerKind::Capture
            } else {
                account.void(r.source);
                LedgerKind::Void
            };
            self.entry(now, (user, kind, r.source, r.source.per_area()), Link::Area(generation.id, r.area));
        }
    }

    /// Credits `amount` tokens once per `reference` and account, opening the
    /// account if needed. Returns whether it was applied now.
    fn credit_once(
        &mut self,
        now: DateTime<Utc>,
        user: UserId,
        amount: u64,
        reference: &str,
        trial: u64,
    ) -> bool {
        self.open(now, user, trial);
        let applied = self.references.insert((user, reference.to_owned()));
        if applied {
            if let Some(a) = self.accounts.get_mut(&user) {
                a.credit(CreditSource::Token, amount);
            }
            let r = Link::Reference(reference.to_owned());
            self.entry(now, (user, LedgerKind::Credit, CreditSource::Token, amount), r);
        }
        applied
    }

    /// The user a subscription event is about: named, or found by the
    /// subscription or customer it names.
    fn billing_user(&self, named: Option<UserId>, change: &SubscriptionChange) -> Option<UserId> {
        named.or_else(|| {
            self.billing.iter().find_map(|(user, b)| {
                let same_sub =
                    change.subscription_id.is_some() && b.subscription_id == change.subscription_id;
                let same_customer = change.customer_id.is_some() && b.customer_id == change.customer_id;
                (same_sub || same_customer).then_some(*user)
            })
        })
    }

    fn apply_event(&mut self, now: DateTime<Utc>, event: &BillingEvent, trial: u64) -> WebhookOutcome {
        if self.events.contains_key(&event.id) {
            return WebhookOutcome::Duplicate;
        }
        let outcome = match &event.change {
            BillingChange::Purchase { user, package, payment_intent, customer_id } => {
                if customer_id.is_some() {
                    self.open(now, *user, trial);
                    self.billing.entry(*user).or_default().customer_id.clone_from(customer_id);
                }
                let reference = purchase_reference(payment_intent);
                if self.credit_once(now, *user, package.tokens, &reference, trial) {
                    WebhookOutcome::Applied
                } else {
                    WebhookOutcome::Ignored
                }
            }
            BillingChange::Subscription { user, change } => match self.billing_user(*user, change) {
                Some(user) => {
                    self.open(now, user, trial);
                    let changed = self.billing.entry(user).or_default().apply(change, event.order);
                    if changed { WebhookOutcome::Applied } else { WebhookOutcome::Ignored }
                }
                None => WebhookOutcome::Ignored,
            },
            BillingChange::Ignored => WebhookOutcome::Ignored,
        };
        self.events.insert(event.id.clone(), outcome);
        outcome
    }

    fn fenced(&mut self, lease: &Lease) -> Result<&mut Row, StoreError> {
        let row = self.rows.get_mut(&lease.generation_id).ok_or(StoreError::NotFound)?;
        let g = &row.generation;
        let owner = row.lease_owner.as_ref().map(|o| o.0.as_str());
        rules::check_fence(g.status, g.attempt, owner, lease.attempt, &lease.owner.0)?;
        Ok(row)
    }

    /// Applies `f` to a row (nothing, if it fails) and books in the ledger
    /// the holds it resolved. Returns the generation as it is now and those
    /// resolutions.
    fn apply(
        &mut self,
        now: DateTime<Utc>,
        id: GenerationId,
        f: impl FnOnce(&mut Row) -> Result<(), StoreError>,
    ) -> Result<(Generation, Vec<Resolution>), StoreError> {
        let row = self.rows.get_mut(&id).ok_or(StoreError::NotFound)?;
        let before = row.generation.clone();
        let (owner, expires) = (row.lease_owner.clone(), row.lease_expires);
        if let Err(e) = f(row) {
            (row.generation, row.lease_owner, row.lease_expires) = (before, owner, expires);
            return Err(e);
        }
        let generation = row.generation.clone();
        let resolved = rules::resolutions(&before, &generation);
        self.book(now, &generation, &resolved);
        Ok((generation, resolved))
    }

    fn claimable(row: &Row, now: DateTime<Utc>) -> bool {
        rules::claimable(row.generation.status, row.lease_expires, row.generation.deadline_at, now)
    }

    fn take_claim(row: &mut Row, now: DateTime<Utc>, owner: &WorkerId, ttl: Duration) -> Generation {
        let g = &mut row.generation;
        g.attempt += 1;
        g.status = GenerationStatus::Processing;
        g.started_at.get_or_insert(now);
        row.lease_owner = Some(owner.clone());
        row.lease_expires = Some(rules::lease_expiry(now, g.deadline_at, ttl));
        g.clone()
    }
}

fn delta(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

/// The generation store and the credit ledger, in memory.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<Notification>,
    observer: Arc<dyn Observer>,
    /// How long an `Idempotency-Key` is honoured.
    idempotency_ttl: chrono::TimeDelta,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_observer(clock, Arc::new(NoopObserver))
    }

    /// Keys are honoured for `ttl` instead of the contract's 24 h
    /// (`Policies::idempotency_ttl`).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = delta(ttl);
        self
    }

    /// A store that reports the voids it makes itself (a user's cancel, the
    /// sweep of overdue work), as the Postgres store does; the engine
    /// reports the voids of the writes it makes.
    pub fn with_observer(clock: Arc<dyn Clock>, observer: Arc<dyn Observer>) -> Self {
        let (events, _) = broadcast::channel(4096);
        let idempotency_ttl = delta(terrace_domain::policy::IDEMPOTENCY_TTL);
        Self { state: Arc::default(), clock, events, observer, idempotency_ttl }
    }

    fn report_voids(&self, resolved: &[Resolution]) {
        for r in resolved.iter().filter(|r| r.to == HoldState::Voided) {
            self.observer.hold_voided(r.reason.unwrap_or(ErrorCode::Internal));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every change
        // is computed before it is stored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims up to `limit` claimable generations that `which` admits,
    /// oldest first.
    fn claim_where(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
        which: impl Fn(&Row) -> bool,
    ) -> Result<Vec<Generation>, StoreError> {
        let now = self.clock.now();
        let mut s = self.lock();
        let mut free: Vec<&mut Row> =
            s.rows.values_mut().filter(|r| which(r) && State::claimable(r, now)).collect();
        free.sort_by_key(|r| r.seq);
        let claimed: Vec<_> =
            free.into_iter().take(limit).map(|r| State::take_claim(r, now, owner, ttl)).collect();
        drop(s);
        for g in &claimed {
            self.notify(Notification::Changed(g.id));
        }
        Ok(claimed)
    }

    fn notify(&self, n: Notification) {
        let _ = self.events.send(n);
    }

    /// A fenced change: checks the lease, applies `change`, books the holds
    /// it resolved, and returns the generation and those resolutions.
    fn fenced_write(
        &self,
        lease: &Lease,
        change: impl FnOnce(&mut Row, DateTime<Utc>) -> Result<(), StoreError>,
    ) -> Result<(Generation, Vec<Resolution>), StoreError> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.fenced(lease)?;
        let written = s.apply(now, lease.generation_id, |row| change(row, now))?;
        drop(s);
        self.notify(Notification::Changed(lease.generation_id));
        Ok(written)
    }
}

fn area_of(row: &mut Row, area: AreaKind) -> Result<&mut Area, StoreError> {
    row.generation.area_mut(area).ok_or(StoreError::NotFound)
}

fn page<T>(items: Vec<T>, limit: usize, position: impl Fn(&T) -> i64) -> Page<T> {
    let (items, next_cursor) = rules::page(items, limit, position);
    Page { items, next_cursor }
}

#[async_trait]
impl GenerationStore for MemoryStore {
    async fn create(
        &self,
        new: NewGeneration,
        idempotency: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, CreateError> {
        let now = self.clock.now();
        let mut s = self.lock();
        if let Some(claim) = &idempotency {
            let k = (new.user_id, claim.key.as_str().to_owned());
            if let Some(prior) = s.idempotency.get(&k).filter(|p| p.expires_at > now) {
                if prior.request_hash != claim.request_hash {
                    return Err(CreateError::IdempotencyKeyReused);
                }
                return Ok(CreateOutcome::Replayed(s.rows[&prior.generation_id].generation.clone()));
            }
        }
        s.open(now, new.user_id, new.trial_credits);
        let subscribed = s.billing.get(&new.user_id).is_some_and(Subscription::grants_generations);
        let account = s.accounts.get_mut(&new.user_id).ok_or(StoreError::NotFound)?;
        let sources = account
            .hold(new.request.areas.len(), subscribed)
            .map_err(|e| CreateError::InsufficientCredits { needed: e.needed, available: e.available })?;
        let generation = Generation::created(
            Created {
                id: new.id,
                user_id: new.user_id,
                request_id: new.request_id,
                request: new.request,
                sources,
            },
            now,
            now + delta(new.deadline),
        );
        for a in &generation.areas {
            let line = (new.user_id, LedgerKind::Hold, a.hold_source, a.hold_source.per_area());
            s.entry(now, line, Link::Area(new.id, a.kind()));
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.rows.insert(
            new.id,
            Row { generation: generation.clone(), seq, lease_owner: None, lease_expires: None },
        );
        if let Some(claim) = idempotency {
            s.idempotency.insert(
                (new.user_id, claim.key.as_str().to_owned()),
                Idempotency {
                    request_hash: claim.request_hash,
                    generation_id: new.id,
                    expires_at: now + self.idempotency_ttl,
                },
            );
        }
        drop(s);
        self.notify(Notification::Created(new.id));
        Ok(CreateOutcome::Created(generation))
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        Ok(self.lock().rows.get(&id).map(|r| r.generation.clone()))
    }

    async fn list(&self, user: UserId, query: ListQuery) -> Result<Page<Generation>, StoreError> {
        let before = rules::parse_cursor(query.cursor.as_deref())?.unwrap_or(i64::MAX);
        let s = self.lock();
        let mut rows: Vec<&Row> = s
            .rows
            .values()
            .filter(|r| r.generation.user_id == user && (r.seq as i64) < before)
            .filter(|r| query.status.is_none_or(|st| r.generation.status == st))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.seq));
        rows.truncate(query.limit + 1);
        let seqs: HashMap<GenerationId, u64> = rows.iter().map(|r| (r.generation.id, r.seq)).collect();
        let items = rows.into_iter().map(|r| r.generation.clone()).collect();
        Ok(page(items, query.limit, |g: &Generation| seqs[&g.id] as i64))
    }

    async fn cancel(&self, id: GenerationId) -> Result<CancelOutcome, StoreError> {
        let now = self.clock.now();
        let mut s = self.lock();
        let row = s.rows.get_mut(&id).ok_or(StoreError::NotFound)?;
        if row.generation.status.is_terminal() {
            return Ok(CancelOutcome::AlreadyTerminal(row.generation.clone()));
        }
        let (generation, resolved) = s.apply(now, id, |row| {
            row.generation.cancel_requested = true;
            row.close(AreaStatus::Cancelled, &Failure::cancelled(), now);
            Ok(())
        })?;
        drop(s);
        self.report_voids(&resolved);
        self.notify(Notification::CancelRequested(id));
        self.notify(Notification::Changed(id));
        Ok(CancelOutcome::Cancelled(generation))
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.claim_where(owner, ttl, limit, |_| true)
    }

    async fn claim_pending(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.claim_where(owner, ttl, limit, |r| r.generation.status == GenerationStatus::Pending)
    }

    async fn claim_one(
        &self,
        id: GenerationId,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Option<Generation>, StoreError> {
        let now = self.clock.now();
        let mut s = self.lock();
        let claimed = s
            .rows
            .get_mut(&id)
            .filter(|r| State::claimable(r, now))
            .map(|r| State::take_claim(r, now, owner, ttl));
        drop(s);
        if claimed.is_some() {
            self.notify(Notification::Changed(id));
        }
        Ok(claimed)
    }

    async fn heartbeat(&self, owner: &WorkerId, ttl: Duration) -> Result<Vec<LeaseState>, StoreError> {
        let now = self.clock.now();
        let mut s = self.lock();
        Ok(s.rows
            .values_mut()
            .filter(|r| r.lease_owner.as_ref() == Some(owner) && !r.generation.status.is_terminal())
            .map(|r| {
                r.lease_expires = Some(rules::lease_expiry(now, r.generation.deadline_at, ttl));
                LeaseState {
                    generation_id: r.generation.id,
                    attempt: r.generation.attempt,
                    cancel_requested: r.generation.cancel_requested,
                }
            })
            .collect())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.fenced_write(lease, |row, _| {
            row.generation.areas.iter_mut().for_each(Area::hand_back);
            row.generation.status = GenerationStatus::Pending;
            row.lease_owner = None;
            row.lease_expires = None;
            Ok(())
        })
        .map(drop)
    }

    async fn record_geocode(&self, lease: &Lease, geocoded: &Geocoded) -> Result<(), StoreError> {
        self.fenced_write(lease, |row, _| {
            row.generation.geocoded = Some(geocoded.clone());
            Ok(())
        })
        .map(drop)
    }

    async fn advance_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        stage: AreaStage,
        progress: u8,
    ) -> Result<(), StoreError> {
        self.fenced_write(lease, |row, _| {
            area_of(row, area)?.advance(stage, progress).map_err(|_| StoreError::Finished)
        })
        .map(drop)
    }

    async fn complete_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        image_key: &str,
    ) -> Result<Vec<Resolution>, StoreError> {
        self.fenced_write(lease, |row, now| {
            area_of(row, area)?.complete(image_key.to_owned(), now).map_err(|_| StoreError::Finished)
        })
        .map(|(_, resolved)| resolved)
    }

    async fn end_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        status: AreaStatus,
        failure: &Failure,
    ) -> Result<Vec<Resolution>, StoreError> {
        self.fenced_write(lease, |row, now| {
            area_of(row, area)?.end(status, failure.clone(), now).map_err(|_| StoreError::Finished)
        })
        .map(|(_, resolved)| resolved)
    }

    async fn finish(
        &self,
        lease: &Lease,
        unfinished: AreaStatus,
        failure: &Failure,
    ) -> Result<Finished, StoreError> {
        self.fenced_write(lease, |row, now| {
            rules::finish(&mut row.generation, unfinished, failure, now)?;
            row.lease_owner = None;
            row.lease_expires = None;
            Ok(())
        })
        .map(|(generation, resolved)| Finished { generation, resolved })
    }

    async fn end_overdue(&self, limit: usize) -> Result<Vec<GenerationId>, StoreError> {
        let now = self.clock.now();
        let failure = Failure::generation_deadline();
        let mut s = self.lock();
        let mut ended = Vec::new();
        let mut overdue: Vec<(DateTime<Utc>, GenerationId)> = s
            .rows
            .values()
            .filter(|r| rules::overdue(r.generation.status, r.lease_expires, r.generation.deadline_at, now))
            .map(|r| (r.generation.deadline_at, r.generation.id))
            .collect();
        // Earliest deadline first, as every store sweeps.
        overdue.sort();
        let overdue: Vec<GenerationId> = overdue.into_iter().take(limit).map(|(_, id)| id).collect();
        for id in &overdue {
            ended.push(s.apply(now, *id, |row| {
                row.close(AreaStatus::Failed, &failure, now);
                Ok(())
            })?);
        }
        drop(s);
        for (_, resolved) in &ended {
            self.report_voids(resolved);
        }
        for id in &overdue {
            self.notify(Notification::Changed(*id));
        }
        Ok(overdue)
    }

    async fn forget_expired_keys(&self, limit: usize) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut s = self.lock();
        // Oldest first; only the keys forgotten are copied.
        let mut expired: Vec<(DateTime<Utc>, &(UserId, String))> = s
            .idempotency
            .iter()
            .filter(|(_, k)| k.expires_at <= now)
            .map(|(id, k)| (k.expires_at, id))
            .collect();
        expired.sort_by_key(|(at, _)| *at);
        let forget: Vec<(UserId, String)> =
            expired.into_iter().take(limit).map(|(_, id)| id.clone()).collect();
        for id in &forget {
            s.idempotency.remove(id);
        }
        Ok(forget.len())
    }

    fn notifications(&self) -> BoxStream<'static, Notification> {
        BroadcastStream::new(self.events.subscribe()).filter_map(|n| async move { n.ok() }).boxed()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn gauges(&self, lease_ttl: Duration) -> Result<StoreGauges, StoreError> {
        let now = self.clock.now();
        let s = self.lock();
        let stuck = s
            .rows
            .values()
            .filter(|r| rules::stuck(r.generation.status, r.generation.deadline_at, lease_ttl, now))
            .count() as u64;
        Ok(StoreGauges { credits_held: s.accounts.values().map(|a| a.held).sum(), stuck })
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

#[async_trait]
impl Ledger for MemoryStore {
    async fn open_account(&self, user: UserId, trial_credits: u64) -> Result<Account, LedgerError> {
        let now = self.clock.now();
        Ok(self.lock().open(now, user, trial_credits))
    }

    async fn transactions(
        &self,
        user: UserId,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<LedgerEntry>, LedgerError> {
        let before = rules::parse_cursor(cursor.as_deref())?.unwrap_or(i64::MAX);
        let s = self.lock();
        let items: Vec<LedgerEntry> = s
            .entries
            .iter()
            .rev()
            .filter(|e| e.user_id == user && e.id < before)
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(page(items, limit, |e: &LedgerEntry| e.id))
    }

    async fn grant(
        &self,
        user: UserId,
        amount: GrantAmount,
        reference: &CreditReference,
        trial_credits: u64,
    ) -> Result<Grant, LedgerError> {
        let now = self.clock.now();
        let mut s = self.lock();
        let applied = s.credit_once(now, user, amount.get(), reference.as_str(), trial_credits);
        let account = s.accounts[&user];
        Ok(Grant { account, applied })
    }

    async fn conservation_violations(&self) -> Result<Vec<String>, LedgerError> {
        let s = self.lock();
        let mut by_user: HashMap<UserId, Vec<LedgerEntry>> = HashMap::new();
        for e in &s.entries {
            by_user.entry(e.user_id).or_default().push(e.clone());
        }
        Ok(s.accounts
            .values()
            .filter_map(|a| {
                check_conservation(a, by_user.get(&a.user_id).map_or(&[][..], Vec::as_slice)).err()
            })
            .collect())
    }
}

#[async_trait]
impl BillingLedger for MemoryStore {
    async fn apply_event(
        &self,
        event: &BillingEvent,
        trial_credits: u64,
    ) -> Result<WebhookOutcome, LedgerError> {
        let now = self.clock.now();
        Ok(self.lock().apply_event(now, event, trial_credits))
    }

    async fn subscription(&self, user: UserId) -> Result<Subscription, LedgerError> {
        Ok(self.lock().billing.get(&user).cloned().unwrap_or_default())
    }
}

/// Images in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryBlobs {
    blobs: Arc<Mutex<HashMap<String, Image>>>,
}

impl MemoryBlobs {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BlobStore for MemoryBlobs {
    async fn put(&self, key: &str, image: Image) -> Result<(), BlobError> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), image);
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Image, BlobError> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned().ok_or(BlobError::NotFound)
    }
}
