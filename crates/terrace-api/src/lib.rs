//! Terrace's HTTP surface (CONTRACT §4–§6) on hyper 1 and axum.
//!
//! - [`Api`] holds the ports and the configuration and builds the [`axum::Router`]
//!   (every route of §4, problems as `application/problem+json`, `X-Request-Id`).
//! - [`serve`] runs the accept loop on hyper with a timer (so the header read
//!   timeout works) and drains connections on shutdown within a grace period.
//! - [`Metrics`] (from terrace-metrics) is CONTRACT §6: the API serves it at `/metrics`.
//!
//! Only this crate knows HTTP and the wire JSON; it never runs generations
//! itself: it creates them in the store and wakes the [`Work`] that runs them.

mod auth;
mod billing;
mod digest;
mod edge;
mod events;
mod problem;
mod routes;
mod server;
mod views;
mod wire;

pub use auth::{ADMIN_ROLE, Caller, DEFAULT_AUDIENCE, Jwt};
pub use edge::REQUEST_ID_HEADER;
pub use problem::{FieldError, Problem};
pub use routes::parse_body;
pub use server::{Drained, ServeOptions, serve};
pub use terrace_metrics::{GENERATION_BUCKETS, Metrics, UPSTREAM_BUCKETS};
pub use terrace_web::WebConfig;
pub use terrace_wire::TaskView;

use axum::Router;
use axum::routing::{get, post};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_domain::UserId;
use terrace_ports::{BillingLedger, BlobStore, GenerationStore, Ledger, Payments};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The work side as the API sees it: the engine, when this instance runs one.
pub trait Work: Send + Sync + 'static {
    /// A generation was created here: claim it now rather than at the next sweep.
    fn wake(&self);
    /// The generations this instance runs.
    fn tasks(&self) -> Vec<TaskView>;
    /// How many it runs.
    fn active(&self) -> usize;
    /// The user cancelled this generation (the store has recorded it): stop
    /// it now if it runs here. Other instances hear of it from the store.
    fn cancelled(&self, _generation: terrace_domain::GenerationId) {}
}

/// Which routes an instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Every route (roles `api` and `all`).
    All,
    /// Only `/livez`, `/readyz` and `/metrics` (role `worker`).
    OpsOnly,
}

/// Everything the API needs to know. [`ApiConfig::new`] takes the values that
/// come from the service's configuration and fills the wire limits of
/// CONTRACT §5; change fields afterwards to deviate.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub routes: Routes,
    /// Trial credits of a new account.
    pub trial_credits: u64,
    /// A generation's deadline from creation; event streams close after it plus one minute.
    pub generation_timeout: Duration,
    /// The lease TTL, for the `stuck` gauge.
    pub lease_ttl: Duration,
    /// `/readyz` fails when the store does not answer within this (the pool's acquire timeout).
    pub ready_timeout: Duration,
    /// The longest one store call may take from the API's side.
    pub store_timeout: Duration,
    /// Non-streaming requests answer within this (503 `timeout` past it).
    pub request_timeout: Duration,
    /// Request headers must arrive within this.
    pub header_read_timeout: Duration,
    /// Request bodies larger than this are refused with 413.
    pub body_limit: usize,
    /// Non-streaming requests in flight at once; more are shed with 503.
    pub max_requests: usize,
    /// Event streams open at once; more are refused with 503.
    pub max_event_streams: usize,
    /// Non-streaming requests one user may have in flight; more get 429.
    pub max_requests_per_user: usize,
    /// Event streams one user may have open; more get 429.
    pub max_streams_per_user: usize,
    /// The event stream's `: keepalive` comment interval.
    pub keepalive_interval: Duration,
    /// How often an event stream re-reads its generation when no notification came.
    pub event_poll_interval: Duration,
    /// An event stream closes itself at the latest after the generation
    /// timeout plus this (CONTRACT §5: one minute).
    pub event_stream_slack: Duration,
    pub billing: BillingConfig,
    /// What the web app at `/` must know (served where [`Routes::All`]).
    pub web: WebConfig,
}

/// What the billing routes need besides Stripe itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingConfig {
    /// The Stripe price of `monthly_pro`; unset: the plan is not offered.
    pub monthly_pro_price: Option<String>,
    /// Where Checkout returns the user (`/billing/success`, `/billing/cancel`).
    pub public_url: String,
}

impl ApiConfig {
    /// The API's configuration for an instance running under `policies`,
    /// with the wire limits of CONTRACT §5.
    pub fn from_policies(policies: &terrace_domain::Policies) -> Self {
        Self::new(
            policies.trial_credits,
            policies.generation_timeout,
            policies.lease.ttl,
            policies.db.acquire_timeout,
            policies.db.call_timeout(),
        )
    }

    pub fn new(
        trial_credits: u64,
        generation_timeout: Duration,
        lease_ttl: Duration,
        ready_timeout: Duration,
        store_timeout: Duration,
    ) -> Self {
        Self {
            routes: Routes::All,
            trial_credits,
            generation_timeout,
            lease_ttl,
            ready_timeout,
            store_timeout,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_limit: 64 * 1024,
            max_requests: 512,
            max_event_streams: 1024,
            max_requests_per_user: 32,
            max_streams_per_user: 8,
            keepalive_interval: Duration::from_secs(15),
            event_poll_interval: Duration::from_secs(5),
            event_stream_slack: Duration::from_secs(60),
            billing: BillingConfig { monthly_pro_price: None, public_url: "http://127.0.0.1:8000".into() },
            web: WebConfig::default(),
        }
    }
}

/// The ports the API calls.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn GenerationStore>,
    pub ledger: Arc<dyn Ledger>,
    pub billing: Arc<dyn BillingLedger>,
    pub blobs: Arc<dyn BlobStore>,
    /// Stripe (or its simulator); without it the billing routes that call
    /// Stripe answer 503 `billing_unavailable`.
    pub payments: Option<Arc<dyn Payments>>,
    /// The engine of this instance, if it runs one.
    pub work: Option<Arc<dyn Work>>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps").field("work", &self.work.is_some()).finish_non_exhaustive()
    }
}

/// Accounts known to be open, so that only a user's first request opens one.
/// Bounded: forgotten wholesale when full (opening is idempotent).
#[derive(Debug, Default)]
struct KnownAccounts(Mutex<HashSet<UserId>>);

impl KnownAccounts {
    const MAX: usize = 100_000;
    fn is_known(&self, u: UserId) -> bool {
        self.0.lock().map(|s| s.contains(&u)).unwrap_or(false)
    }
    fn remember(&self, u: UserId) {
        if let Ok(mut s) = self.0.lock() {
            if s.len() >= Self::MAX {
                s.clear();
            }
            s.insert(u);
        }
    }
}

struct Inner {
    store: Arc<dyn GenerationStore>,
    ledger: Arc<dyn Ledger>,
    billing: Arc<dyn BillingLedger>,
    blobs: Arc<dyn BlobStore>,
    payments: Option<Arc<dyn Payments>>,
    work: Option<Arc<dyn Work>>,
    metrics: Arc<Metrics>,
    jwt: Jwt,
    cfg: ApiConfig,
    shutdown: CancellationToken,
    requests: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    user_requests: Arc<edge::PerUser>,
    user_streams: Arc<edge::PerUser>,
    accounts: KnownAccounts,
}

/// The handlers' shared state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("cfg", &self.0.cfg).finish_non_exhaustive()
    }
}

/// The HTTP API of one instance.
#[derive(Debug, Clone)]
pub struct Api {
    state: AppState,
}

impl Api {
    /// `shutdown` is the instance's drain signal: once cancelled, `/readyz`
    /// answers 503 and event streams end.
    pub fn new(deps: Deps, jwt: Jwt, cfg: ApiConfig, shutdown: CancellationToken) -> Self {
        let inner = Inner {
            store: deps.store,
            ledger: deps.ledger,
            billing: deps.billing,
            blobs: deps.blobs,
            payments: deps.payments,
            work: deps.work,
            metrics: deps.metrics,
            jwt,
            requests: Arc::new(Semaphore::new(cfg.max_requests)),
            streams: Arc::new(Semaphore::new(cfg.max_event_streams)),
            user_requests: edge::PerUser::new(cfg.max_requests_per_user),
            user_streams: edge::PerUser::new(cfg.max_streams_per_user),
            cfg,
            shutdown,
            accounts: KnownAccounts::default(),
        };
        Self { state: AppState(Arc::new(inner)) }
    }

    /// The router: every route of CONTRACT §4 (or only the operations routes).
    pub fn router(&self) -> Router {
        let s = self.state.clone();
        let ops = Router::new()
            .route("/livez", get(routes::livez))
            .route("/readyz", get(routes::readyz))
            .route("/metrics", get(routes::metrics));
        let mut app = ops;
        if s.0.cfg.routes == Routes::All {
            let timed = Router::new()
                .route("/v1/account", get(routes::account))
                .route("/v1/account/transactions", get(routes::transactions))
                .route("/v1/generations", post(routes::create).get(routes::list))
                .route("/v1/generations/{id}", get(routes::get_one))
                .route("/v1/generations/{id}/cancel", post(routes::cancel))
                .route("/v1/generations/{id}/areas/{area}/image", get(routes::area_image))
                .route("/v1/generations/{id}/source-images/{source}", get(routes::source_image))
                .route("/v1/admin/credits", post(routes::grant))
                .route("/v1/admin/tasks", get(routes::tasks))
                .route("/v1/billing/packages", get(billing::packages))
                .route("/v1/billing/checkout", post(billing::checkout))
                .route("/v1/billing/subscription", post(billing::subscribe).get(billing::subscription))
                .route("/v1/billing/subscription/cancel", post(billing::cancel_subscription))
                .route("/v1/billing/portal", post(billing::portal))
                .route_layer(axum::middleware::from_fn_with_state(s.clone(), edge::limits));
            // Stripe's webhook: its own body limit, no user, checked by signature.
            let webhooks = Router::new()
                .route("/v1/webhooks/stripe", post(billing::webhook))
                .route_layer(axum::middleware::from_fn_with_state(s.clone(), edge::webhook_limits));
            let streams = Router::new()
                .route("/v1/generations/{id}/events", get(routes::events))
                .route_layer(axum::middleware::from_fn_with_state(s.clone(), edge::stream_limits));
            app = app.merge(timed).merge(streams).merge(webhooks);
            app = app.merge(terrace_web::router(&s.0.cfg.web));
        }
        app.fallback(routes::not_found)
            .method_not_allowed_fallback(routes::method_not_allowed)
            .layer(axum::middleware::from_fn(edge::request_id))
            .with_state(s)
    }
}
