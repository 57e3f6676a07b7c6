use async_trait::async_trait;
use futures::stream::BoxStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use terrace_api::{Api, ApiConfig, Deps, Jwt, Metrics, ServeOptions, TaskView, Work};
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::*;
use terrace_memory::{MemoryBlobs, MemoryStore};
use terrace_ports::*;
use tokio_util::sync::CancellationToken;

/// The memory store, which a test can make hang on every call.
#[derive(Clone)]
pub struct Stall {
    pub inner: MemoryStore,
    pub stalled: Arc<tokio::sync::watch::Sender<bool>>,
    /// Every call panics (a bug somewhere below the API).
    pub panics: Arc<std::sync::atomic::AtomicBool>,
    /// `list` fails with an internal error (a store that broke).
    pub list_fails: Arc<std::sync::atomic::AtomicBool>,
    /// `list` hangs for this user only, while set.
    pub slow_user: Arc<tokio::sync::watch::Sender<Option<UserId>>>,
}

impl Stall {
    /// Waits while the store is stalled.
    async fn gate(&self) {
        if self.panics.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("the store was told to panic");
        }
        let mut rx = self.stalled.subscribe();
        let _ = rx.wait_for(|stalled| !*stalled).await;
    }

    /// How many calls wait at the gate now.
    pub fn waiting(&self) -> usize {
        self.stalled.receiver_count()
    }
}

#[async_trait]
impl GenerationStore for Stall {
    async fn create(
        &self,
        new: NewGeneration,
        idempotency: Option<IdempotencyClaim>,
    ) -> Result<CreateOutcome, CreateError> {
        self.gate().await;
        self.inner.create(new, idempotency).await
    }
    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        self.gate().await;
        self.inner.get(id).await
    }
    async fn list(&self, user: UserId, query: ListQuery) -> Result<Page<Generation>, StoreError> {
        self.gate().await;
        let _ = self.slow_user.subscribe().wait_for(|slow| *slow != Some(user)).await;
        if self.list_fails.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Internal { detail: "the disk is on fire".into() });
        }
        self.inner.list(user, query).await
    }
    async fn cancel(&self, id: GenerationId) -> Result<CancelOutcome, StoreError> {
        self.gate().await;
        self.inner.cancel(id).await
    }
    async fn claim(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Generation>, StoreError> {
        self.gate().await;
        self.inner.claim(owner, ttl, limit).await
    }
    async fn claim_one(
        &self,
        id: GenerationId,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Option<Generation>, StoreError> {
        self.gate().await;
        self.inner.claim_one(id, owner, ttl).await
    }
    async fn heartbeat(&self, owner: &WorkerId, ttl: Duration) -> Result<Vec<LeaseState>, StoreError> {
        self.gate().await;
        self.inner.heartbeat(owner, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.release(lease).await
    }
    async fn record_geocode(&self, lease: &Lease, geocoded: &Geocoded) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.record_geocode(lease, geocoded).await
    }
    async fn advance_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        stage: AreaStage,
        progress: u8,
    ) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.advance_area(lease, area, stage, progress).await
    }
    async fn complete_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        image_key: &str,
    ) -> Result<Vec<terrace_domain::rules::Resolution>, StoreError> {
        self.gate().await;
        self.inner.complete_area(lease, area, image_key).await
    }
    async fn end_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        status: AreaStatus,
        failure: &Failure,
    ) -> Result<Vec<terrace_domain::rules::Resolution>, StoreError> {
        self.gate().await;
        self.inner.end_area(lease, area, status, failure).await
    }
    async fn finish(
        &self,
        lease: &Lease,
        unfinished: AreaStatus,
        failure: &Failure,
    ) -> Result<Finished, StoreError> {
        self.gate().await;
        self.inner.finish(lease, unfinished, failure).await
    }
    async fn end_overdue(&self, limit: usize) -> Result<Vec<GenerationId>, StoreError> {
        self.gate().await;
        self.inner.end_overdue(limit).await
    }
    async fn forget_expired_keys(&self, limit: usize) -> Result<usize, StoreError> {
        self.gate().await;
        self.inner.forget_expired_keys(limit).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.ping().await
    }
    async fn gauges(&self, lease_ttl: Duration) -> Result<StoreGauges, StoreError> {
        self.gate().await;
        self.inner.gauges(lease_ttl).await
    }
    fn notifications(&self) -> BoxStream<'static, Notification> {
        self.inner.notifications()
    }
    fn pool_status(&self) -> Option<PoolStatus> {
        self.inner.pool_status()
    }
}

/// What a test asked of the scripted Stripe.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    Package(PackageCheckout, String),
    Subscription(SubscriptionCheckout, String),
    Cancel(String, CancelAt),
}

/// Stripe as a test scripts it: what it was asked, and what it answers.
#[derive(Default)]
pub struct FakePayments {
    pub asked: std::sync::Mutex<Vec<Asked>>,
    /// The next calls fail with this, while set.
    pub failing: std::sync::Mutex<Option<PaymentsError>>,
    /// What `parse_webhook` answers to the signature `good` (anything else
    /// is a bad signature).
    pub event: std::sync::Mutex<Option<PaymentEvent>>,
}

impl FakePayments {
    fn fail(&self) -> Result<(), PaymentsError> {
        self.failing.lock().unwrap().clone().map_or(Ok(()), Err)
    }
    fn session(&self, asked: Asked, key: &IdempotencyKey) -> Result<CheckoutSession, PaymentsError> {
        self.fail()?;
        self.asked.lock().unwrap().push(asked);
        let id = format!("cs_{}", &key.as_str()[8..20]);
        Ok(CheckoutSession { url: format!("https://checkout.example/{id}"), id })
    }
}

#[async_trait]
impl Payments for FakePayments {
    async fn checkout_package(
        &self,
        request: &PackageCheckout,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, PaymentsError> {
        self.session(Asked::Package(request.clone(), key.as_str().to_owned()), key)
    }
    async fn checkout_subscription(
        &self,
        request: &SubscriptionCheckout,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, PaymentsError> {
        self.session(Asked::Subscription(request.clone(), key.as_str().to_owned()), key)
    }
    async fn cancel_subscription(
        &self,
        id: &str,
        at: CancelAt,
        _key: &IdempotencyKey,
    ) -> Result<SubscriptionState, PaymentsError> {
        self.fail()?;
        self.asked.lock().unwrap().push(Asked::Cancel(id.to_owned(), at));
        Ok(SubscriptionState {
            id: id.to_owned(),
            customer: None,
            status: "active".into(),
            current_period_end: None,
            cancel_at_period_end: at == CancelAt::PeriodEnd,
        })
    }
    async fn portal_session(
        &self,
        customer: &str,
        _return_url: &str,
        _key: &IdempotencyKey,
    ) -> Result<PortalSession, PaymentsError> {
        self.fail()?;
        Ok(PortalSession { id: "bps_1".into(), url: format!("https://portal.example/{customer}") })
    }
    fn parse_webhook(&self, signature: Option<&str>, _body: &[u8]) -> Result<PaymentEvent, WebhookError> {
        match (signature, self.event.lock().unwrap().clone()) {
            (Some("good"), Some(e)) => Ok(e),
            (None, _) => Err(WebhookError::Signature(SignatureError::Missing)),
            _ => Err(WebhookError::Signature(SignatureError::Mismatch)),
        }
    }
}

#[derive(Default)]
pub struct FakeWork;
impl Work for FakeWork {
    fn wake(&self) {}
    fn tasks(&self) -> Vec<TaskView> {
        Vec::new()
    }
    fn active(&self) -> usize {
        0
    }
}

pub const SECRET: &[u8] = b"test-secret-test-secret";

/// A served API.
pub struct App {
    pub addr: SocketAddr,
    pub store: Stall,
    pub blobs: MemoryBlobs,
    pub payments: Arc<FakePayments>,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<terrace_api::Drained>,
    pub http: reqwest::Client,
    pub jwt: Jwt,
    /// The same router the server serves, for calls without a socket.
    pub router: axum::Router,
}

impl App {
    pub async fn start(tune: impl FnOnce(&mut ApiConfig)) -> App {
        let inner = MemoryStore::new(Arc::new(SystemClock));
        let store = Stall {
            inner: inner.clone(),
            stalled: Arc::new(tokio::sync::watch::channel(false).0),
            panics: Arc::default(),
            list_fails: Arc::default(),
            slow_user: Arc::new(tokio::sync::watch::channel(None).0),
        };
        let mut cfg = ApiConfig::new(
            3,
            Duration::from_secs(300),
            Duration::from_secs(30),
            Duration::from_millis(500),
            Duration::from_secs(2),
        );
        tune(&mut cfg);
        let header_read_timeout = cfg.header_read_timeout;
        let shutdown = CancellationToken::new();
        let jwt = Jwt::new(SECRET);
        let blobs = MemoryBlobs::new();
        let payments = Arc::new(FakePayments::default());
        let api = Api::new(
            Deps {
                store: Arc::new(store.clone()),
                ledger: Arc::new(inner.clone()),
                billing: Arc::new(inner),
                payments: Some(payments.clone()),
                blobs: Arc::new(blobs.clone()),
                work: Some(Arc::new(FakeWork)),
                metrics: Arc::new(Metrics::new()),
            },
            jwt.clone(),
            cfg,
            shutdown.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = ServeOptions { header_read_timeout, grace: Duration::from_secs(3) };
        let router = api.router();
        let server = tokio::spawn(terrace_api::serve(listener, router.clone(), options, shutdown.clone()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(8)).build().unwrap();
        App { addr, store, blobs, payments, shutdown, server, http, jwt, router }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token(&self, user: UserId) -> String {
        format!("Bearer {}", self.jwt.mint(user, false, Duration::from_secs(600)))
    }

    pub fn stall(&self, on: bool) {
        self.store.stalled.send_replace(on);
    }

    /// Waits (bounded) until `n` store calls wait at a gate (stalled, or the slow user's).
    pub async fn until_slow(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(3), async {
            while self.store.slow_user.receiver_count() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the slow user's calls never reached the store");
    }

    /// Waits (bounded) until `n` store calls wait at the stalled gate.
    pub async fn until_waiting(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(3), async {
            while self.store.waiting() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the calls never reached the store");
    }

    /// Creates a one-area generation for `user` and returns its JSON.
    pub async fn create(&self, user: UserId) -> serde_json::Value {
        let res = self
            .http
            .post(self.url("/v1/generations"))
            .header("authorization", self.token(user))
            .header("content-type", "application/json")
            .body(
                r#"{"address":"12 Main St, Springfield","areas":[{"area":"patio","style":"japanese_zen"}]}"#,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.server.abort();
    }
}
