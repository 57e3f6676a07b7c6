//! The store as one instance sees it: the real memory store behind a
//! wrapper that delays calls, refuses them before they reach the store,
//! loses their answers after they reached it, and hangs; and that, once its
//! instance has crashed, refuses everything without reaching the store.

use crate::shared::{Shared, Who, at_once, gname, uname};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::billing::{BillingChange, BillingEvent, Subscription, WebhookOutcome};
use terrace_domain::rules::Resolution;
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    Account, AreaKind, CreateError, CreditReference, Failure, Generation, GenerationId, Geocoded,
    GrantAmount, LedgerEntry, LedgerError, StoreError, UserId,
};
use terrace_ports::{
    BillingLedger, CancelOutcome, CreateOutcome, Finished, GenerationStore, Grant, IdempotencyClaim, Lease,
    LeaseState, Ledger, ListQuery, NewGeneration, Notification, Page, PoolStatus, StoreGauges, WorkerId,
};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

/// One instance's store (and ledger, and billing ledger).
#[derive(Debug)]
pub struct FaultyStore {
    shared: Arc<Shared>,
    who: Who,
    /// Cancelled when the instance crashes.
    dead: CancellationToken,
}

fn down() -> StoreError {
    StoreError::Unavailable { detail: "the instance is down".into() }
}

impl FaultyStore {
    pub fn new(shared: Arc<Shared>, who: Who, dead: CancellationToken) -> Self {
        Self { shared, who, dead }
    }

    /// Waits `d`, or less if the instance dies meanwhile (then `false`).
    async fn pause(&self, d: Duration) -> bool {
        if !d.is_zero() {
            tokio::select! {
                biased;
                _ = self.dead.cancelled() => {}
                _ = sleep(d) => {}
            }
        }
        !self.dead.is_cancelled()
    }

    /// One call: the plan's wait, its refusal, the store (`apply`, which runs
    /// at once and records what it did), the plan's second wait, its lost
    /// answer. A crashed instance reaches nothing and draws nothing.
    async fn call<T, E: From<StoreError>>(
        &self,
        op: &'static str,
        apply: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if self.dead.is_cancelled() {
            return Err(down().into());
        }
        let plan = self.shared.store_plan(self.who, op);
        if !self.pause(plan.before).await {
            return Err(down().into());
        }
        if let Some(e) = plan.refuse {
            return Err(e.into());
        }
        let result = apply();
        if !self.pause(plan.after).await {
            return Err(down().into());
        }
        match plan.lose {
            Some(e) => Err(e.into()),
            None => result,
        }
    }

    fn note(&self, what: std::fmt::Arguments<'_>) {
        self.shared.trace(&self.who.to_string(), what);
    }

    /// A fenced write: the generation as it was just before, the write, and
    /// the check that an applied write was the current lease's.
    async fn fenced<T>(
        &self,
        op: &'static str,
        lease: &Lease,
        what: &str,
        write: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.call(op, || {
            self.shared.touch(lease.generation_id);
            let before = at_once(self.shared.store.get(lease.generation_id)).ok().flatten();
            let r = write();
            let g = gname(lease.generation_id);
            match &r {
                Ok(_) => {
                    self.shared.fenced_applied(op, lease, before.as_ref());
                    self.note(format_args!("{op} {g}#{} {what}: applied", lease.attempt));
                }
                Err(e) => self.note(format_args!("{op} {g}#{} {what}: {e}", lease.attempt)),
            }
            r
        })
        .await
    }
}

#[async_trait]
impl GenerationStore for FaultyStore {
    async fn create(
        &self,
        new: NewGeneration,
        idempotency: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, CreateError> {
        self.call("create", || {
            let (id, user) = (new.id, new.user_id);
            self.shared.touch_user(user);
            let r = at_once(self.shared.store.create(new, idempotency));
            match &r {
                Ok(CreateOutcome::Created(g)) => {
                    let mut s = self.shared.lock();
                    s.known.insert(g.id);
                    s.touched.insert(g.id);
                    drop(s);
                    self.note(format_args!("create {} for {}: created", gname(id), uname(user)));
                }
                Ok(CreateOutcome::Replayed(g)) => self.note(format_args!(
                    "create {} for {}: replayed {}",
                    gname(id),
                    uname(user),
                    gname(g.id)
                )),
                Err(e) => self.note(format_args!("create {} for {}: {e}", gname(id), uname(user))),
            }
            r
        })
        .await
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        self.call("get", || at_once(self.shared.store.get(id))).await
    }

    async fn list(&self, user: UserId, query: ListQuery) -> Result<Page<Generation>, StoreError> {
        self.call("list", || at_once(self.shared.store.list(user, query))).await
    }

    async fn cancel(&self, id: GenerationId) -> Result<CancelOutcome, StoreError> {
        self.call("cancel", || {
            self.shared.touch(id);
            let r = at_once(self.shared.store.cancel(id));
            match &r {
                Ok(CancelOutcome::Cancelled(_)) => {
                    self.shared.ended(&[id]);
                    self.note(format_args!("cancel {}: cancelled", gname(id)));
                }
                Ok(CancelOutcome::AlreadyTerminal(g)) => {
                    self.note(format_args!("cancel {}: already {}", gname(id), g.status.as_str()))
                }
                Err(e) => self.note(format_args!("cancel {}: {e}", gname(id))),
            }
            r
        })
        .await
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.call("claim", || {
            let r = at_once(self.shared.store.claim(owner, ttl, limit));
            if let Ok(claimed) = &r {
                self.shared.claimed(self.who, &owner.0, claimed);
            }
            r
        })
        .await
    }

    async fn claim_pending(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.call("claim_pending", || {
            let r = at_once(self.shared.store.claim_pending(owner, ttl, limit));
            if let Ok(claimed) = &r {
                self.shared.claimed(self.who, &owner.0, claimed);
            }
            r
        })
        .await
    }

    async fn claim_one(
        &self,
        id: GenerationId,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Option<Generation>, StoreError> {
        self.call("claim_one", || {
            let r = at_once(self.shared.store.claim_one(id, owner, ttl));
            if let Ok(Some(g)) = &r {
                self.shared.claimed(self.who, &owner.0, std::slice::from_ref(g));
            }
            r
        })
        .await
    }

    async fn heartbeat(&self, owner: &WorkerId, ttl: Duration) -> Result<Vec<LeaseState>, StoreError> {
        self.call("heartbeat", || {
            let r = at_once(self.shared.store.heartbeat(owner, ttl));
            if let Ok(leases) = &r {
                // In id order: the store answers in no particular order.
                let mut leases: Vec<&LeaseState> = leases.iter().collect();
                leases.sort_by_key(|l| l.generation_id);
                let names: Vec<String> =
                    leases.iter().map(|l| format!("{}#{}", gname(l.generation_id), l.attempt)).collect();
                self.note(format_args!("heartbeat renewed [{}]", names.join(" ")));
            }
            r
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.fenced("release", lease, "", || at_once(self.shared.store.release(lease))).await
    }

    async fn record_geocode(&self, lease: &Lease, geocoded: &Geocoded) -> Result<(), StoreError> {
        self.fenced("record_geocode", lease, "", || {
            at_once(self.shared.store.record_geocode(lease, geocoded))
        })
        .await
    }

    async fn advance_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        stage: AreaStage,
        progress: u8,
    ) -> Result<(), StoreError> {
        let what = format!("{area} {}", stage.as_str());
        self.fenced("advance_area", lease, &what, || {
            at_once(self.shared.store.advance_area(lease, area, stage, progress))
        })
        .await
    }

    async fn complete_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        image_key: &str,
    ) -> Result<Vec<Resolution>, StoreError> {
        self.fenced("complete_area", lease, area.as_str(), || {
            at_once(self.shared.store.complete_area(lease, area, image_key))
        })
        .await
    }

    async fn end_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        status: AreaStatus,
        failure: &Failure,
    ) -> Result<Vec<Resolution>, StoreError> {
        let what = format!("{area} {} {}", status.as_str(), failure.code);
        self.fenced("end_area", lease, &what, || {
            at_once(self.shared.store.end_area(lease, area, status, failure))
        })
        .await
    }

    async fn finish(
        &self,
        lease: &Lease,
        unfinished: AreaStatus,
        failure: &Failure,
    ) -> Result<Finished, StoreError> {
        let what = format!("{} {}", unfinished.as_str(), failure.code);
        self.fenced("finish", lease, &what, || at_once(self.shared.store.finish(lease, unfinished, failure)))
            .await
    }

    async fn end_overdue(&self, limit: usize) -> Result<Vec<GenerationId>, StoreError> {
        self.call("end_overdue", || {
            let r = at_once(self.shared.store.end_overdue(limit));
            if let Ok(ids) = &r {
                if !ids.is_empty() {
                    self.shared.ended(ids);
                    let names: Vec<String> = ids.iter().map(|id| gname(*id)).collect();
                    self.note(format_args!("end_overdue ended [{}]", names.join(" ")));
                }
            }
            r
        })
        .await
    }

    async fn forget_expired_keys(&self, limit: usize) -> Result<usize, StoreError> {
        self.call("forget_expired_keys", || at_once(self.shared.store.forget_expired_keys(limit))).await
    }

    fn notifications(&self) -> BoxStream<'static, Notification> {
        // A storm drops the listener's connection now and then: the stream
        // ends after a few notifications.
        let cut = {
            let mut s = self.shared.lock();
            match s.storm().map(|storm| storm.rate) {
                Some(rate) if s.faults.f64() < rate => Some(s.faults.usize(0..20)),
                _ => None,
            }
        };
        let events = self.shared.store.notifications();
        match cut {
            Some(n) => {
                self.note(format_args!("fault notifications: the stream ends after {n}"));
                events.take(n).boxed()
            }
            None => events,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", || Ok(())).await
    }

    async fn gauges(&self, lease_ttl: Duration) -> Result<StoreGauges, StoreError> {
        self.call("gauges", || at_once(self.shared.store.gauges(lease_ttl))).await
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

#[async_trait]
impl Ledger for FaultyStore {
    async fn open_account(&self, user: UserId, trial_credits: u64) -> Result<Account, LedgerError> {
        self.call("open_account", || {
            self.shared.touch_user(user);
            at_once(self.shared.store.open_account(user, trial_credits))
        })
        .await
    }

    async fn transactions(
        &self,
        user: UserId,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Page<LedgerEntry>, LedgerError> {
        self.call("transactions", || at_once(self.shared.store.transactions(user, limit, cursor))).await
    }

    async fn grant(
        &self,
        user: UserId,
        amount: GrantAmount,
        reference: &CreditReference,
        trial_credits: u64,
    ) -> Result<Grant, LedgerError> {
        self.call("grant", || {
            self.shared.touch_user(user);
            let r = at_once(self.shared.store.grant(user, amount, reference, trial_credits));
            match &r {
                Ok(g) => self.note(format_args!(
                    "grant {} {} to {}: {}",
                    amount.get(),
                    reference.as_str(),
                    uname(user),
                    if g.applied { "applied" } else { "applied before" }
                )),
                Err(e) => self.note(format_args!("grant {} to {}: {e}", reference.as_str(), uname(user))),
            }
            r
        })
        .await
    }

    async fn conservation_violations(&self) -> Result<Vec<String>, LedgerError> {
        self.call("conservation_violations", || at_once(self.shared.store.conservation_violations())).await
    }
}

#[async_trait]
impl BillingLedger for FaultyStore {
    async fn apply_event(
        &self,
        event: &BillingEvent,
        trial_credits: u64,
    ) -> Result<WebhookOutcome, LedgerError> {
        self.call("apply_event", || {
            match &event.change {
                BillingChange::Purchase { user, .. }
                | BillingChange::Subscription { user: Some(user), .. } => self.shared.touch_user(*user),
                _ => self.shared.lock().full = true,
            }
            let r = at_once(self.shared.store.apply_event(event, trial_credits));
            match &r {
                Ok(o) => self.note(format_args!("apply_event {} {}: {}", event.id, event.kind, o.as_str())),
                Err(e) => self.note(format_args!("apply_event {}: {e}", event.id)),
            }
            r
        })
        .await
    }

    async fn subscription(&self, user: UserId) -> Result<Subscription, LedgerError> {
        self.call("subscription", || at_once(self.shared.store.subscription(user))).await
    }
}
