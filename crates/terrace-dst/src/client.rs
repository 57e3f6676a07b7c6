//! The clients: users, admins and Stripe. Each request is a future of its
//! own, sent to whichever instance serves the API when it is sent (as a
//! load balancer would), bounded as the API bounds its store calls, and
//! retried as a careful client retries.

use crate::shared::{Shared, uname};
use crate::store::FaultyStore;
use fastrand::Rng;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::billing::BillingEvent;
use terrace_domain::{
    Classify, CreateError, CreditReference, GenerationId, GenerationRequest, GrantAmount, IdempotencyKey,
    RequestId, StoreError, UserId,
};
use terrace_engine::Engine;
use terrace_ports::{
    BillingLedger, CancelOutcome, CreateOutcome, GenerationStore, IdempotencyClaim, Ledger, NewGeneration,
};
use tokio::time::{sleep, timeout};

/// One instance's API: its store, and its engine when it runs one (the API
/// wakes it after a create and tells it of a cancel).
#[derive(Debug, Clone)]
pub struct Door {
    pub store: Arc<FaultyStore>,
    pub engine: Option<Engine>,
}

/// The instances that serve the API now.
#[derive(Debug, Clone, Default)]
pub struct Router(Rc<RefCell<BTreeMap<u8, Door>>>);

impl Router {
    pub fn open(&self, instance: u8, door: Door) {
        self.0.borrow_mut().insert(instance, door);
    }

    pub fn close(&self, instance: u8) {
        self.0.borrow_mut().remove(&instance);
    }

    fn pick(&self, rng: &mut Rng) -> Option<Door> {
        let doors = self.0.borrow();
        let n = doors.len();
        (n > 0).then(|| doors.values().nth(rng.usize(0..n)).cloned()).flatten()
    }
}

/// What a request came to, for the driver's checks.
#[derive(Debug)]
pub enum Done {
    Nothing,
    /// A create was answered as a replay of `generation`.
    Replayed {
        user: UserId,
        key: String,
        generation: GenerationId,
    },
    /// A Stripe delivery: `applied` when it was answered (else Stripe sends
    /// it again later).
    Delivered {
        index: usize,
        user: UserId,
        answered: bool,
    },
}

/// Bounds a call of the API side, as the API does every store call.
async fn bounded<T, E: From<StoreError>>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout { what: "the API's bound".into() }.into()),
    }
}

/// Sends requests.
#[derive(Debug, Clone)]
pub struct Client {
    pub router: Router,
    pub shared: Arc<Shared>,
    /// The API's bound on a store call.
    pub limit: Duration,
    pub trial: u64,
}

/// A create as its client sends it: the same key and body on every try,
/// a new generation id each time (the API makes one per request).
#[derive(Debug)]
pub struct Create {
    pub user: UserId,
    pub key: Option<String>,
    pub body: usize,
    pub request: GenerationRequest,
    pub deadline: Duration,
    /// One per try.
    pub ids: Vec<GenerationId>,
}

impl Client {
    fn door(&self, rng: &mut Rng, what: &str) -> Option<Door> {
        let door = self.router.pick(rng);
        if door.is_none() {
            self.shared.trace("client", format_args!("{what}: no instance serves the API"));
        }
        door
    }

    /// Creates; a keyed create that may not have been answered is sent
    /// again with its key; without a key only what surely held nothing
    /// (the account was busy) is.
    pub async fn create(self, mut rng: Rng, c: Create) -> Done {
        for (i, id) in c.ids.iter().enumerate() {
            let Some(door) = self.door(&mut rng, "create") else { return Done::Nothing };
            let new = NewGeneration {
                id: *id,
                user_id: c.user,
                request_id: RequestId::parse(&format!("req-{}", id.0.as_u128() as u32))
                    .expect("a valid request id"),
                request: c.request.clone(),
                deadline: c.deadline,
                trial_credits: self.trial,
            };
            let claim = c.key.as_ref().map(|k| IdempotencyClaim {
                key: IdempotencyKey::parse(k).expect("a valid key"),
                request_hash: format!("body-{}", c.body),
            });
            match bounded(self.limit, door.store.create(new, claim)).await {
                Ok(CreateOutcome::Created(_)) => {
                    if let Some(e) = door.engine {
                        e.wake();
                    }
                    return Done::Nothing;
                }
                Ok(CreateOutcome::Replayed(g)) => {
                    let key = c.key.clone().unwrap_or_default();
                    return Done::Replayed { user: c.user, key, generation: g.id };
                }
                Err(e) => {
                    let again = e.retryable()
                        && (c.key.is_some()
                            || matches!(e, CreateError::AccountBusy | CreateError::Store(StoreError::Busy)));
                    if !again || i + 1 == c.ids.len() {
                        return Done::Nothing;
                    }
                    sleep(Duration::from_millis(rng.u64(200..=3_000))).await;
                }
            }
        }
        Done::Nothing
    }

    /// Cancels; the API then tells its own engine.
    pub async fn cancel(self, mut rng: Rng, id: GenerationId) -> Done {
        let Some(door) = self.door(&mut rng, "cancel") else { return Done::Nothing };
        if let Ok(CancelOutcome::Cancelled(_)) = bounded(self.limit, door.store.cancel(id)).await {
            if let Some(e) = door.engine {
                e.cancel_local(id);
            }
        }
        Done::Nothing
    }

    /// An admin grants, and retries what was not answered (the reference
    /// makes it safe).
    pub async fn grant(
        self,
        mut rng: Rng,
        user: UserId,
        amount: GrantAmount,
        reference: CreditReference,
    ) -> Done {
        for _ in 0..3 {
            let Some(door) = self.door(&mut rng, "grant") else { return Done::Nothing };
            match bounded(self.limit, door.store.grant(user, amount, &reference, self.trial)).await {
                Err(e) if e.retryable() => sleep(Duration::from_millis(rng.u64(200..=3_000))).await,
                _ => return Done::Nothing,
            }
        }
        Done::Nothing
    }

    /// A user's first request opens their account.
    pub async fn visit(self, mut rng: Rng, user: UserId) -> Done {
        if let Some(door) = self.door(&mut rng, &format!("visit of {}", uname(user))) {
            let _ = bounded(self.limit, door.store.open_account(user, self.trial)).await;
        }
        Done::Nothing
    }

    /// Stripe delivers one event.
    pub async fn deliver(self, mut rng: Rng, index: usize, user: UserId, event: BillingEvent) -> Done {
        let Some(door) = self.door(&mut rng, &format!("delivery of {}", event.id)) else {
            return Done::Delivered { index, user, answered: false };
        };
        let answered = bounded(self.limit, door.store.apply_event(&event, self.trial)).await.is_ok();
        Done::Delivered { index, user, answered }
    }
}
