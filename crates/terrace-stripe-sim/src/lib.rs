//! A local look-alike of the Stripe endpoints Terrace calls, speaking
//! Stripe's wire format, with a hosted Checkout page, signed webhooks, and
//! faults on demand.
//!
//! [`StripeSim::start`] binds `127.0.0.1:0` and serves, on one port:
//!
//! - the API: `POST /v1/checkout/sessions`, `GET /v1/checkout/sessions/{id}`,
//!   `GET|POST|DELETE /v1/subscriptions/{id}`, `POST /v1/billing_portal/sessions`:
//!   form-encoded in, Stripe's JSON objects and `{"error": …}` bodies out,
//!   `Authorization: Bearer <secret key>` required, `Idempotency-Key`
//!   honoured (the same key and parameters answer the saved object again,
//!   with `Idempotent-Replayed: true`; other parameters are an
//!   `idempotency_error`);
//! - the hosted pages: a Checkout page at each session's `url`
//!   (`/checkout/{id}`) with Pay and Cancel buttons (plain HTML forms), and a
//!   billing-portal page at each portal session's `url`;
//! - the control endpoint `/_sim/…` (see [`control`]).
//!
//! Paying (the button, [`StripeSim::pay`] or `POST /_sim/pay`) completes the
//! session and sends the webhooks Stripe would, in its order, signed with the
//! webhook secret, to the webhook URL: for a payment
//! `checkout.session.completed`; for a subscription
//! `customer.subscription.created`, `checkout.session.completed`,
//! `invoice.payment_succeeded`. Cancelling a subscription through the API
//! sends `customer.subscription.updated` or `.deleted`;
//! [`StripeSim::advance_subscription`] walks it through its lifecycle.
//! Each send has a timeout and non-2xx answers are retried with backoff a
//! bounded number of times. How a batch is delivered (duplicated, delayed,
//! reordered, concurrent, dropped) is scriptable with a [`WebhookPlan`];
//! how an API endpoint answers with an [`ApiBehaviour`].
//!
//! Every task (connections, deliveries) is tracked; [`StripeSim::shutdown`]
//! ends them within a bound, and dropping the simulator cancels them.

mod api;
mod behaviour;
mod checkout;
pub mod control;
mod objects;
mod server;
mod webhooks;

pub use behaviour::{ApiBehaviour, Endpoint, Order, WebhookPlan};
pub use objects::{API_VERSION, SimPrice};
pub use webhooks::sign;

use objects::{Mode, Session, Subscription, new_id, now};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webhooks::Batch;

/// The id of the monthly price the default configuration offers.
pub const MONTHLY_PRICE_ID: &str = "price_sim_monthly_pro";

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct StripeSimConfig {
    /// The loopback port to bind; 0 picks a free one.
    pub port: u16,
    /// The secret key the API accepts (`Authorization: Bearer …`).
    pub secret_key: String,
    /// The secret webhooks are signed with.
    pub webhook_secret: String,
    /// Where webhooks go; `None` records them without sending (set it later
    /// with [`StripeSim::set_webhook_url`]).
    pub webhook_url: Option<String>,
    /// The prices `line_items[][price]` may name.
    pub prices: Vec<SimPrice>,
    /// One webhook send, connect to answer headers.
    pub webhook_timeout: Duration,
    /// Sends of one event in all, the first included, until one is 2xx.
    pub webhook_attempts: u32,
    /// The wait before the first resend; it doubles each time.
    pub webhook_backoff: Duration,
    /// How many events and requests to keep in the records.
    pub record_limit: usize,
    /// How long [`StripeSim::shutdown`] waits for its tasks to end.
    pub shutdown_timeout: Duration,
}

impl Default for StripeSimConfig {
    fn default() -> Self {
        Self {
            port: 0,
            secret_key: "sk_test_terrace_sim".into(),
            webhook_secret: "whsec_terrace_sim".into(),
            webhook_url: None,
            prices: vec![SimPrice {
                id: MONTHLY_PRICE_ID.into(),
                unit_amount: 9_900,
                currency: "usd".into(),
                interval: Some("month".into()),
                product_name: "Monthly Pro".into(),
            }],
            webhook_timeout: Duration::from_secs(2),
            webhook_attempts: 4,
            webhook_backoff: Duration::from_millis(100),
            record_limit: 10_000,
            shutdown_timeout: Duration::from_secs(2),
        }
    }
}

/// Failed to start the simulator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not bind the Stripe simulator to 127.0.0.1:{port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("could not build the webhook client: {0}")]
    Client(String),
}

/// A simulator operation that named something it does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no such checkout session: {0}")]
    NoSuchSession(String),
    #[error("no such subscription: {0}")]
    NoSuchSubscription(String),
    #[error("the simulator cannot move a subscription to {0:?}")]
    UnknownStatus(String),
}

/// One send of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// 1 for the first send of this copy; resends count up.
    pub attempt: u32,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why there was no answer (timeout, refused connection).
    pub error: Option<String>,
}

impl Delivery {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// One event the simulator made, and every send of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    /// The event exactly as sent (its `data.object` included).
    pub body: serde_json::Value,
    /// Sends in the order they ended.
    pub deliveries: Vec<Delivery>,
}

impl EventRecord {
    /// Whether a send got a 2xx.
    pub fn delivered(&self) -> bool {
        self.deliveries.iter().any(Delivery::ok)
    }
}

/// One API request the simulator saw. The key is never recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub id: u64,
    pub method: String,
    pub path: String,
    pub endpoint: Option<Endpoint>,
    /// The request carried the right secret key.
    pub key_ok: bool,
    pub idempotency_key: Option<String>,
    /// What the simulator did with it.
    pub behaviour: ApiBehaviour,
    /// The answer's status; `None` while pending or when none was sent.
    pub status: Option<u16>,
    /// The answer was the one saved under the idempotency key.
    pub replayed: bool,
}

/// An answer saved under an idempotency key.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    pub fingerprint: String,
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Debug)]
pub(crate) struct Store {
    pub prices: Vec<SimPrice>,
    pub sessions: HashMap<String, Session>,
    /// Session ids in creation order.
    pub session_order: Vec<String>,
    pub subscriptions: HashMap<String, Subscription>,
    pub customers: BTreeSet<String>,
    pub portals: HashMap<String, objects::PortalSession>,
    pub saved: HashMap<String, Saved>,
    pub(crate) scripts: [VecDeque<ApiBehaviour>; 3],
    pub(crate) defaults: [ApiBehaviour; 3],
    pub(crate) webhook_scripts: VecDeque<WebhookPlan>,
    pub(crate) webhook_default: WebhookPlan,
    pub(crate) webhook_url: Option<String>,
    pub(crate) events: Vec<EventRecord>,
    pub(crate) requests: Vec<RequestRecord>,
    pub(crate) next_request: u64,
}

impl Store {
    fn new(config: &StripeSimConfig) -> Self {
        Self {
            prices: config.prices.clone(),
            sessions: HashMap::new(),
            session_order: Vec::new(),
            subscriptions: HashMap::new(),
            customers: BTreeSet::new(),
            portals: HashMap::new(),
            saved: HashMap::new(),
            scripts: Default::default(),
            defaults: std::array::from_fn(|_| ApiBehaviour::Ok),
            webhook_scripts: VecDeque::new(),
            webhook_default: WebhookPlan::default(),
            webhook_url: config.webhook_url.clone(),
            events: Vec::new(),
            requests: Vec::new(),
            next_request: 0,
        }
    }

    pub(crate) fn new_customer(&mut self) -> String {
        let id = new_id("cus");
        self.customers.insert(id.clone());
        id
    }
}

/// Everything the tasks share.
#[derive(Debug)]
pub(crate) struct State {
    pub secret_key: String,
    pub webhook_secret: String,
    pub base_url: String,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub http: reqwest::Client,
    pub webhook_attempts: u32,
    pub webhook_backoff: Duration,
    record_limit: usize,
    store: Mutex<Store>,
    changed: Notify,
}

impl State {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// The behaviour for the next authorised request to `endpoint`.
    pub(crate) fn next_behaviour(&self, store: &mut Store, endpoint: Endpoint) -> ApiBehaviour {
        let i = endpoint.index();
        store.scripts[i].pop_front().unwrap_or_else(|| store.defaults[i].clone())
    }

    pub(crate) fn record_request(&self, store: &mut Store, mut record: RequestRecord) -> u64 {
        let id = store.next_request;
        store.next_request += 1;
        record.id = id;
        if store.requests.len() < self.record_limit {
            store.requests.push(record);
        }
        id
    }

    pub(crate) fn finish_request(&self, id: u64, status: u16, replayed: bool) {
        let mut store = self.lock();
        if let Ok(i) = store.requests.binary_search_by_key(&id, |r| r.id) {
            store.requests[i].status = Some(status);
            store.requests[i].replayed = replayed;
        }
        drop(store);
        self.notify();
    }

    /// Makes events of `(type, object)` in order, records them, and returns
    /// the batch to send once the lock is released ([`webhooks::dispatch`]).
    pub(crate) fn emit(&self, store: &mut Store, events: Vec<(&str, serde_json::Value)>) -> Batch {
        let created = now();
        let mut out = Vec::with_capacity(events.len());
        for (event_type, object) in events {
            let id = new_id("evt");
            let body = objects::event_json(&id, event_type, created, object);
            out.push(webhooks::Outgoing { id: id.clone(), body: bytes::Bytes::from(body.to_string()) });
            if store.events.len() < self.record_limit {
                store.events.push(EventRecord {
                    id,
                    event_type: event_type.to_owned(),
                    created,
                    body,
                    deliveries: Vec::new(),
                });
            }
        }
        let plan = store.webhook_scripts.pop_front().unwrap_or_else(|| store.webhook_default.clone());
        Batch { events: out, plan, url: store.webhook_url.clone() }
    }

    pub(crate) fn record_delivery(&self, event_id: &str, delivery: Delivery) {
        let mut store = self.lock();
        if let Some(e) = store.events.iter_mut().rev().find(|e| e.id == event_id) {
            e.deliveries.push(delivery);
        }
        drop(store);
        self.notify();
    }

    pub(crate) fn sessions(&self) -> Vec<serde_json::Value> {
        let store = self.lock();
        store.session_order.iter().filter_map(|id| store.sessions.get(id)).map(Session::json).collect()
    }

    pub(crate) fn reset(&self) {
        let mut store = self.lock();
        let url = store.webhook_url.take();
        let prices = std::mem::take(&mut store.prices);
        *store = Store::new(&StripeSimConfig { webhook_url: url, prices, ..StripeSimConfig::default() });
        drop(store);
        self.notify();
    }

    /// Completes a session as the Pay button does. Paying a completed
    /// session again changes nothing and sends nothing.
    pub(crate) fn pay(&self, session_id: &str) -> Result<(serde_json::Value, Option<Batch>), SimError> {
        let mut store = self.lock();
        let store = &mut *store;
        let session = store
            .sessions
            .get(session_id)
            .cloned()
            .ok_or_else(|| SimError::NoSuchSession(session_id.into()))?;
        if session.complete {
            return Ok((session.json(), None));
        }
        let mut session = session;
        session.complete = true;
        let batch = match session.mode {
            Mode::Payment => {
                if session.customer.is_none() && session.customer_creation_always {
                    session.customer = Some(store.new_customer());
                }
                session.payment_intent = Some(new_id("pi"));
                self.emit(store, vec![("checkout.session.completed", session.json())])
            }
            Mode::Subscription => {
                let customer = match &session.customer {
                    Some(c) => c.clone(),
                    None => store.new_customer(),
                };
                session.customer = Some(customer.clone());
                let price_id = session.line.price.clone().unwrap_or_default();
                let price = store
                    .prices
                    .iter()
                    .find(|p| p.id == price_id)
                    .cloned()
                    .unwrap_or_else(|| store.prices[0].clone());
                let start = now();
                let invoice_id = new_id("in");
                let subscription = Subscription {
                    id: new_id("sub"),
                    item_id: new_id("si"),
                    customer,
                    status: "active".into(),
                    price,
                    metadata: session.subscription_metadata.clone(),
                    current_period_start: start,
                    current_period_end: start + objects::PERIOD_SECS,
                    cancel_at_period_end: false,
                    canceled_at: None,
                    created: start,
                    latest_invoice: Some(invoice_id.clone()),
                };
                session.subscription = Some(subscription.id.clone());
                session.invoice = Some(invoice_id.clone());
                let events = vec![
                    ("customer.subscription.created", subscription.json()),
                    ("checkout.session.completed", session.json()),
                    (
                        "invoice.payment_succeeded",
                        subscription.invoice_json(&invoice_id, true, "subscription_create"),
                    ),
                ];
                store.subscriptions.insert(subscription.id.clone(), subscription);
                self.emit(store, events)
            }
        };
        let json = session.json();
        store.sessions.insert(session.id.clone(), session);
        Ok((json, Some(batch)))
    }

    /// Moves a subscription to `status` and makes the events Stripe would.
    pub(crate) fn advance(&self, subscription_id: &str, status: &str) -> Result<Batch, SimError> {
        let mut store = self.lock();
        let store = &mut *store;
        let mut sub = store
            .subscriptions
            .get(subscription_id)
            .cloned()
            .ok_or_else(|| SimError::NoSuchSubscription(subscription_id.into()))?;
        let events = match status {
            "active" => {
                // A renewal: the next period, paid.
                sub.status = "active".into();
                sub.current_period_start = sub.current_period_end;
                sub.current_period_end += objects::PERIOD_SECS;
                let invoice = new_id("in");
                sub.latest_invoice = Some(invoice.clone());
                vec![
                    ("customer.subscription.updated", sub.json()),
                    ("invoice.payment_succeeded", sub.invoice_json(&invoice, true, "subscription_cycle")),
                ]
            }
            "past_due" => {
                sub.status = "past_due".into();
                let invoice = new_id("in");
                sub.latest_invoice = Some(invoice.clone());
                vec![
                    ("invoice.payment_failed", sub.invoice_json(&invoice, false, "subscription_cycle")),
                    ("customer.subscription.updated", sub.json()),
                ]
            }
            "unpaid" | "trialing" | "incomplete" | "paused" => {
                sub.status = status.into();
                vec![("customer.subscription.updated", sub.json())]
            }
            "canceled" | "incomplete_expired" => {
                sub.status = status.into();
                sub.cancel_at_period_end = false;
                sub.canceled_at = Some(now());
                vec![("customer.subscription.deleted", sub.json())]
            }
            other => return Err(SimError::UnknownStatus(other.into())),
        };
        let batch = self.emit(store, events);
        store.subscriptions.insert(sub.id.clone(), sub);
        Ok(batch)
    }
}

/// A running simulator. See the crate documentation.
pub struct StripeSim {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown_timeout: Duration,
}

impl StripeSim {
    /// Binds `127.0.0.1:{config.port}` and starts serving.
    pub async fn start(config: StripeSimConfig) -> Result<Self, StartError> {
        let bind_error = |source| StartError::Bind { port: config.port, source };
        let listener =
            tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, config.port)).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .connect_timeout(config.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(concat!("terrace-stripe-sim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StartError::Client(e.to_string()))?;
        let mut config = config;
        if config.prices.is_empty() {
            config.prices = StripeSimConfig::default().prices;
        }
        let state = Arc::new(State {
            secret_key: config.secret_key.clone(),
            webhook_secret: config.webhook_secret.clone(),
            base_url: format!("http://{addr}"),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            http,
            webhook_attempts: config.webhook_attempts.max(1),
            webhook_backoff: config.webhook_backoff,
            record_limit: config.record_limit,
            store: Mutex::new(Store::new(&config)),
            changed: Notify::new(),
        });
        state.tracker.spawn(server::accept_loop(listener, Arc::clone(&state)));
        tracing::debug!(%addr, "stripe simulator listening");
        Ok(Self { addr, state, shutdown_timeout: config.shutdown_timeout })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the API base URL (`TERRACE_STRIPE_BASE_URL`).
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// The secret key the API accepts.
    pub fn secret_key(&self) -> &str {
        &self.state.secret_key
    }

    /// The secret webhooks are signed with.
    pub fn webhook_secret(&self) -> &str {
        &self.state.webhook_secret
    }

    /// Where webhooks go from now on (`None`: recorded, not sent).
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.state.lock().webhook_url = url;
    }

    /// Queues a one-shot behaviour for the next authorised request to `endpoint`.
    pub fn script(&self, endpoint: Endpoint, behaviour: ApiBehaviour) {
        self.state.lock().scripts[endpoint.index()].push_back(behaviour);
    }

    /// What `endpoint` does when its queue is empty.
    pub fn set_default(&self, endpoint: Endpoint, behaviour: ApiBehaviour) {
        self.state.lock().defaults[endpoint.index()] = behaviour;
    }

    /// Queues a one-shot plan for the next batch of webhook events.
    pub fn script_webhooks(&self, plan: WebhookPlan) {
        self.state.lock().webhook_scripts.push_back(plan);
    }

    /// The plan for batches when no one-shot plan is queued.
    pub fn set_webhook_default(&self, plan: WebhookPlan) {
        self.state.lock().webhook_default = plan;
    }

    /// Pays a session as the Pay button does, and returns it. The webhooks
    /// are on their way when this returns (see [`StripeSim::wait_for_events`]).
    pub fn pay(&self, session_id: &str) -> Result<serde_json::Value, SimError> {
        let (session, batch) = self.state.pay(session_id)?;
        if let Some(batch) = batch {
            webhooks::dispatch(&self.state, batch);
        }
        Ok(session)
    }

    /// Moves a subscription through its lifecycle and sends what Stripe would:
    /// `active` (a renewal: `customer.subscription.updated`, then
    /// `invoice.payment_succeeded` for the next period); `past_due`
    /// (`invoice.payment_failed`, then `customer.subscription.updated`);
    /// `unpaid`, `trialing`, `incomplete`, `paused` (`customer.subscription.updated`);
    /// `canceled`, `incomplete_expired` (`customer.subscription.deleted`).
    pub fn advance_subscription(&self, subscription_id: &str, status: &str) -> Result<(), SimError> {
        let batch = self.state.advance(subscription_id, status)?;
        webhooks::dispatch(&self.state, batch);
        Ok(())
    }

    /// Makes and sends an event of any type around `object`; returns its id.
    pub fn send_event(&self, event_type: &str, object: serde_json::Value) -> String {
        let batch = {
            let mut store = self.state.lock();
            self.state.emit(&mut store, vec![(event_type, object)])
        };
        let id = batch.events[0].id.clone();
        webhooks::dispatch(&self.state, batch);
        id
    }

    /// The `Stripe-Signature` header for `body`, signed now.
    pub fn sign(&self, body: &[u8]) -> String {
        sign(&self.state.webhook_secret, now(), body)
    }

    /// The `Stripe-Signature` header for `body`, signed at `t` (Unix seconds).
    pub fn sign_at(&self, body: &[u8], t: i64) -> String {
        sign(&self.state.webhook_secret, t, body)
    }

    /// The events made so far (up to the record limit), oldest first.
    pub fn events(&self) -> Vec<EventRecord> {
        self.state.lock().events.clone()
    }

    /// The API requests seen so far (up to the record limit), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.lock().requests.clone()
    }

    /// Every Checkout session, oldest first, as the API shows them.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        self.state.sessions()
    }

    /// A subscription as the API shows it.
    pub fn subscription(&self, id: &str) -> Option<serde_json::Value> {
        self.state.lock().subscriptions.get(id).map(Subscription::json)
    }

    /// Waits until `condition` holds for the events, at most `timeout`.
    /// Returns whether it held.
    pub async fn wait_for_events(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[EventRecord]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&self.state.lock().events) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.state.lock().events);
            }
        }
    }

    /// Waits until `condition` holds for the API requests seen, at most
    /// `timeout`. Returns whether it held.
    pub async fn wait_for_requests(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[RequestRecord]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&self.state.lock().requests) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.state.lock().requests);
            }
        }
    }

    /// Clears objects, saved idempotent answers, scripts, plans and records;
    /// keeps the webhook URL.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, ends every connection and delivery, and waits for
    /// their tasks, at most the configured shutdown timeout. Returns whether
    /// every task ended in time. Idempotent; the records stay readable.
    pub async fn shutdown(&self) -> bool {
        self.state.cancel.cancel();
        self.state.tracker.close();
        tokio::time::timeout(self.shutdown_timeout, self.state.tracker.wait()).await.is_ok()
    }
}

impl std::fmt::Debug for StripeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSim").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for StripeSim {
    fn drop(&mut self) {
        self.state.cancel.cancel();
    }
}
