//! Scriptable fakes of the Google ports, a recording observer, and the
//! fixtures the tests share.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_domain::input::{RawAreaRequest, RawGenerationRequest};
use terrace_domain::rules::Resolution;
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    Address, AreaKind, DbPolicy, DesignError, ErrorCode, Failure, GenerationId, GenerationRequest,
    GenerationStatus, GeocodeError, Geocoded, ImageryError, LatLng, LeasePolicy, LockPolicy, Policies,
    RequestId, RetryPolicy, StoreError, TimeoutKind, UserId,
};
use terrace_engine::Ports;
use terrace_memory::{MemoryBlobs, MemoryStore, TokioClock};
use terrace_ports::{
    DesignEvent, DesignModel, DesignRequest, DesignStream, Geocoder, Image, Imagery, Lease, NewGeneration,
    Observer, Panorama, Upstream, UpstreamOutcome, WorkerId,
};

pub fn policies() -> Policies {
    Policies {
        maps_timeout: Duration::from_secs(10),
        llm_connect_timeout: Duration::from_secs(10),
        llm_idle_timeout: Duration::from_secs(90),
        area_timeout: Duration::from_secs(240),
        generation_timeout: Duration::from_secs(300),
        area_concurrency: 3,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        },
        lock: LockPolicy::NoWait,
        db: DbPolicy {
            pool_size: 10,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(60),
            verify_idle_after: Duration::from_secs(5),
        },
        lease: LeasePolicy {
            ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(5),
            max_running: 100,
            sweep_batch: 500,
        },
        shutdown_grace: Duration::from_secs(30),
        blob_timeout: Duration::from_secs(10),
        blob_retries: 2,
        settle_retry: RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        },
        idempotency_ttl: terrace_domain::policy::IDEMPOTENCY_TTL,
        trial_credits: 3,
    }
}

pub fn image() -> Image {
    Image { bytes: Bytes::from_static(b"\x89PNG fake"), content_type: "image/png".into() }
}

/// What a geocode call does.
#[derive(Debug, Clone)]
pub enum Geo {
    Ok,
    Hang,
    Fail(GeocodeError),
}

/// What one design call does.
#[derive(Debug, Clone)]
pub enum Design {
    /// Text, then an image, then the end.
    Image,
    /// The headers never come.
    HangBeforeHeaders,
    /// Headers, then silence.
    HangBeforeFirstEvent,
    /// One event, then silence.
    StallAfterOneEvent,
    /// A progress event every period, forever.
    DripForever(Duration),
    /// The call fails before any event.
    Fail(DesignError),
    /// An error event in the stream.
    ErrorEvent(DesignError),
    /// Text, then the end.
    NoImage,
}

/// A fake of Maps and Gemini driven by scripts. Design scripts are chosen by
/// a word of the prompt (so each area can behave differently): a queue of
/// one-shot behaviours, then a default.
#[derive(Debug)]
pub struct FakeGoogle {
    geo: Mutex<(VecDeque<Geo>, Geo)>,
    panorama: bool,
    satellite_missing: bool,
    design: Mutex<HashMap<&'static str, (VecDeque<Design>, Design)>>,
    pub geocode_calls: AtomicU32,
    pub design_calls: AtomicU32,
    pub satellite_calls: AtomicU32,
}

/// The word of each area's prompt the fake keys on.
pub fn prompt_word(area: &str) -> &'static str {
    match area {
        "front_yard" => "front yard",
        "backyard" => "backyard",
        "walkway" => "walkway",
        "side_yard" => "side yard",
        "patio" => "patio",
        "pool_area" => "pool surround",
        other => panic!("unknown area {other}"),
    }
}

impl FakeGoogle {
    pub fn new() -> Self {
        Self {
            geo: Mutex::new((VecDeque::new(), Geo::Ok)),
            panorama: true,
            satellite_missing: false,
            design: Mutex::default(),
            geocode_calls: AtomicU32::new(0),
            design_calls: AtomicU32::new(0),
            satellite_calls: AtomicU32::new(0),
        }
    }
    pub fn geocode(self, queue: &[Geo], default: Geo) -> Self {
        *self.geo.lock().unwrap() = (queue.iter().cloned().collect(), default);
        self
    }
    pub fn no_panorama(mut self) -> Self {
        self.panorama = false;
        self
    }
    pub fn no_satellite(mut self) -> Self {
        self.satellite_missing = true;
        self
    }
    /// Scripts the design calls of one area (by its contract name).
    pub fn design(self, area: &str, queue: &[Design], default: Design) -> Self {
        self.design.lock().unwrap().insert(prompt_word(area), (queue.iter().cloned().collect(), default));
        self
    }

    fn next_design(&self, prompt: &str) -> Design {
        let mut d = self.design.lock().unwrap();
        let entry = d.iter_mut().find(|(word, _)| prompt.contains(**word)).map(|(_, v)| v);
        match entry {
            Some((queue, default)) => queue.pop_front().unwrap_or_else(|| default.clone()),
            None => Design::Image,
        }
    }
}

#[async_trait]
impl Geocoder for FakeGoogle {
    async fn geocode(&self, address: &Address) -> Result<Geocoded, GeocodeError> {
        self.geocode_calls.fetch_add(1, Ordering::SeqCst);
        let step = {
            let mut g = self.geo.lock().unwrap();
            g.0.pop_front().unwrap_or_else(|| g.1.clone())
        };
        match step {
            Geo::Ok => Ok(Geocoded {
                formatted_address: format!("{}, Springfield", address.as_str()),
                location: LatLng { lat: 37.0, lng: -122.0 },
            }),
            Geo::Hang => futures::future::pending().await,
            Geo::Fail(e) => Err(e),
        }
    }
}

#[async_trait]
impl Imagery for FakeGoogle {
    async fn street_view_metadata(&self, at: LatLng) -> Result<Option<Panorama>, ImageryError> {
        Ok(self.panorama.then(|| Panorama {
            pano_id: "p1".into(),
            location: LatLng { lat: at.lat - 0.0002, lng: at.lng },
        }))
    }
    async fn street_view(&self, _: LatLng, _: u16) -> Result<Image, ImageryError> {
        Ok(image())
    }
    async fn satellite(&self, _: LatLng) -> Result<Image, ImageryError> {
        self.satellite_calls.fetch_add(1, Ordering::SeqCst);
        if self.satellite_missing { Err(ImageryError::NoImagery) } else { Ok(image()) }
    }
}

fn events(items: Vec<Result<DesignEvent, DesignError>>) -> DesignStream {
    stream::iter(items).boxed()
}

#[async_trait]
impl DesignModel for FakeGoogle {
    async fn generate(&self, request: DesignRequest) -> Result<DesignStream, DesignError> {
        self.design_calls.fetch_add(1, Ordering::SeqCst);
        let text = || Ok(DesignEvent::Text("here is your garden".into()));
        match self.next_design(&request.prompt) {
            Design::Image => Ok(events(vec![text(), Ok(DesignEvent::Image(image()))])),
            Design::HangBeforeHeaders => futures::future::pending().await,
            Design::HangBeforeFirstEvent => Ok(stream::pending().boxed()),
            Design::StallAfterOneEvent => Ok(events(vec![text()]).chain(stream::pending()).boxed()),
            Design::DripForever(every) => Ok(stream::unfold(0usize, move |n| async move {
                tokio::time::sleep(every).await;
                Some((Ok(DesignEvent::Progress { received_bytes: n + 1024 }), n + 1024))
            })
            .boxed()),
            Design::Fail(e) => Err(e),
            Design::ErrorEvent(e) => Ok(events(vec![text(), Err(e)])),
            Design::NoImage => Ok(events(vec![text()])),
        }
    }
}

/// Counts what the engine reports.
#[derive(Debug, Default)]
pub struct Recorder {
    pub voided: Mutex<Vec<ErrorCode>>,
    pub finished: Mutex<Vec<GenerationStatus>>,
    pub timeouts: Mutex<Vec<(Upstream, TimeoutKind)>>,
}

impl Observer for Recorder {
    fn upstream_request(&self, _: Upstream, _: UpstreamOutcome, _: Duration) {}
    fn upstream_timeout(&self, upstream: Upstream, kind: TimeoutKind) {
        self.timeouts.lock().unwrap().push((upstream, kind));
    }
    fn generation_finished(&self, status: GenerationStatus, _: Duration) {
        self.finished.lock().unwrap().push(status);
    }
    fn hold_voided(&self, reason: ErrorCode) {
        self.voided.lock().unwrap().push(reason);
    }
}

/// A store, blobs and fakes wired into [`Ports`].
pub struct World {
    pub store: MemoryStore,
    pub blobs: MemoryBlobs,
    pub google: Arc<FakeGoogle>,
    pub recorder: Arc<Recorder>,
    pub ports: Ports,
}

impl World {
    pub fn new(google: FakeGoogle) -> Self {
        let clock = Arc::new(TokioClock::new());
        let store = MemoryStore::new(clock.clone());
        Self::with_store(store, clock, google)
    }

    /// Another instance's view: the same store, its own fakes.
    pub fn with_store(store: MemoryStore, clock: Arc<TokioClock>, google: FakeGoogle) -> Self {
        let blobs = MemoryBlobs::new();
        let google = Arc::new(google);
        let recorder = Arc::new(Recorder::default());
        let ports = Ports {
            geocoder: google.clone(),
            imagery: google.clone(),
            model: google.clone(),
            store: Arc::new(store.clone()),
            blobs: Arc::new(blobs.clone()),
            observer: recorder.clone(),
            clock,
        };
        Self { store, blobs, google, recorder, ports }
    }

    /// Creates a generation for a new user with `credits` trial credits.
    pub async fn create(&self, areas: &[&str], credits: u64) -> (UserId, GenerationId) {
        self.create_with_key(areas, credits, None).await
    }

    /// As [`World::create`], under an idempotency key.
    pub async fn create_with_key(
        &self,
        areas: &[&str],
        credits: u64,
        key: Option<terrace_ports::IdempotencyClaim>,
    ) -> (UserId, GenerationId) {
        use terrace_ports::{CreateOutcome, GenerationStore};
        let raw = RawGenerationRequest {
            address: "12 Garden Lane".into(),
            areas: areas
                .iter()
                .map(|a| RawAreaRequest {
                    area: (*a).into(),
                    style: "japanese_zen".into(),
                    custom_prompt: None,
                    preservation_strength: None,
                })
                .collect(),
        };
        let user = UserId::new_random();
        let new = NewGeneration {
            id: GenerationId::new_random(),
            user_id: user,
            request_id: RequestId::generate(),
            request: GenerationRequest::parse(&raw).expect("valid request"),
            deadline: policies().generation_timeout,
            trial_credits: credits,
        };
        match self.store.create(new, key).await.expect("created") {
            CreateOutcome::Created(g) => (user, g.id),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Checks the ledger: no hold left open, every hold of `id` resolved once
    /// (captured + voided = cost), what the engine reported voided matches,
    /// and `credited = available + held + captured` for every account.
    pub async fn assert_ledger(&self, id: GenerationId) {
        use terrace_ports::{GenerationStore, Ledger};
        let g = self.store.get(id).await.unwrap().unwrap();
        assert!(g.status.is_terminal(), "{:?} is not terminal", g.status);
        assert!(g.areas.iter().all(|a| a.status.is_terminal()), "an area is unfinished: {:?}", g.areas);
        assert_eq!(g.captured() + g.voided(), g.cost(), "a hold is unresolved");
        let completed = g.areas.iter().filter(|a| a.status == AreaStatus::Completed).count() as u64;
        assert_eq!(g.captured(), completed, "captures must match completed areas");
        let violations = self.store.conservation_violations().await.unwrap();
        assert!(violations.is_empty(), "{violations:?}");
        let held = self.store.gauges(Duration::from_secs(30)).await.unwrap().credits_held;
        assert_eq!(held, 0, "credits still held");
    }
}

/// A memory store with faults: sweeps that never answer (a hung
/// `end_overdue`), or heartbeats that fail while `heartbeats_fail` is set;
/// every other call goes straight to the store.
#[derive(Debug)]
pub struct FaultyStore {
    pub store: MemoryStore,
    hang_sweeps: bool,
    pub heartbeats_fail: std::sync::atomic::AtomicBool,
    pub sweeps: AtomicU32,
    /// Idempotency keys the store forgot when asked through this wrapper.
    pub forgotten: std::sync::atomic::AtomicUsize,
}

impl FaultyStore {
    fn new(store: MemoryStore, hang_sweeps: bool) -> Self {
        Self {
            store,
            hang_sweeps,
            heartbeats_fail: Default::default(),
            sweeps: AtomicU32::new(0),
            forgotten: Default::default(),
        }
    }

    /// `store` with its sweeps hung, nothing counted yet.
    pub fn hanging_sweeps(store: MemoryStore) -> Self {
        Self::new(store, true)
    }

    /// `store` with heartbeats that fail once `heartbeats_fail` is set.
    pub fn failing_heartbeats(store: MemoryStore) -> Self {
        Self::new(store, false)
    }
}

#[async_trait]
impl terrace_ports::GenerationStore for FaultyStore {
    async fn create(
        &self,
        new: NewGeneration,
        key: Option<terrace_ports::IdempotencyClaim>,
    ) -> Result<terrace_ports::CreateOutcome, terrace_domain::CreateError> {
        self.store.create(new, key).await
    }
    async fn get(&self, id: GenerationId) -> Result<Option<terrace_domain::Generation>, StoreError> {
        self.store.get(id).await
    }
    async fn list(
        &self,
        user: UserId,
        query: terrace_ports::ListQuery,
    ) -> Result<terrace_ports::Page<terrace_domain::Generation>, StoreError> {
        self.store.list(user, query).await
    }
    async fn cancel(&self, id: GenerationId) -> Result<terrace_ports::CancelOutcome, StoreError> {
        self.store.cancel(id).await
    }
    async fn claim(
        &self,
        owner: &WorkerId,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<terrace_domain::Generation>, StoreError> {
        self.store.claim(owner, ttl, limit).await
    }
    async fn claim_one(
        &self,
        id: GenerationId,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Option<terrace_domain::Generation>, StoreError> {
        self.store.claim_one(id, owner, ttl).await
    }
    async fn heartbeat(
        &self,
        owner: &WorkerId,
        ttl: Duration,
    ) -> Result<Vec<terrace_ports::LeaseState>, StoreError> {
        if self.heartbeats_fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable { detail: "the test fails heartbeats".into() });
        }
        self.store.heartbeat(owner, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.store.release(lease).await
    }
    async fn record_geocode(&self, lease: &Lease, geocoded: &Geocoded) -> Result<(), StoreError> {
        self.store.record_geocode(lease, geocoded).await
    }
    async fn advance_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        stage: AreaStage,
        progress: u8,
    ) -> Result<(), StoreError> {
        self.store.advance_area(lease, area, stage, progress).await
    }
    async fn complete_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        key: &str,
    ) -> Result<Vec<Resolution>, StoreError> {
        self.store.complete_area(lease, area, key).await
    }
    async fn end_area(
        &self,
        lease: &Lease,
        area: AreaKind,
        status: AreaStatus,
        failure: &Failure,
    ) -> Result<Vec<Resolution>, StoreError> {
        self.store.end_area(lease, area, status, failure).await
    }
    async fn finish(
        &self,
        lease: &Lease,
        unfinished: AreaStatus,
        failure: &Failure,
    ) -> Result<terrace_ports::Finished, StoreError> {
        self.store.finish(lease, unfinished, failure).await
    }
    async fn end_overdue(&self, limit: usize) -> Result<Vec<GenerationId>, StoreError> {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        if self.hang_sweeps {
            futures::future::pending::<()>().await;
        }
        self.store.end_overdue(limit).await
    }
    async fn forget_expired_keys(&self, limit: usize) -> Result<usize, StoreError> {
        let n = self.store.forget_expired_keys(limit).await?;
        self.forgotten.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
    fn notifications(&self) -> futures::stream::BoxStream<'static, terrace_ports::Notification> {
        self.store.notifications()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
    async fn gauges(&self, ttl: Duration) -> Result<terrace_ports::StoreGauges, StoreError> {
        self.store.gauges(ttl).await
    }
    fn pool_status(&self) -> Option<terrace_ports::PoolStatus> {
        None
    }
}
