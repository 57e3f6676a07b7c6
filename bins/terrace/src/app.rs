//! An instance of Terrace built from its [`Config`]: the store, the
//! adapters, the engine and the API, wired; then served until a shutdown
//! token is cancelled, and drained within the grace.

use crate::config::{Config, ConfigError, Google, Role};
use crate::{google, stripe};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use terrace_api::{Api, Deps, Jwt, Metrics, ServeOptions, TaskView, Work};
use terrace_blobs::ObjectBlobStore;
use terrace_domain::{GenerationId, UserId};
use terrace_engine::{Engine, Sweeper};
use terrace_ports::{
    BillingLedger, BlobStore, Clock, GenerationStore, Ledger, Observer, SystemClock, WorkerId,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Why an instance could not be built or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A configuration value that cannot work, found before anything binds
    /// (the binary exits 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Something it needs did not start (the database, a port, a simulator).
    #[error("{0:#}")]
    Start(anyhow::Error),
}

impl AppError {
    pub(crate) fn start(what: &'static str, e: impl std::fmt::Display) -> Self {
        AppError::Start(anyhow::anyhow!("{what}: {e}"))
    }
}

/// A built instance: bound, its engine (if it runs one) already claiming.
/// [`App::serve`] serves it and drains it.
pub struct App {
    cfg: Config,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    api: Api,
    engine: Option<Engine>,
    sweeper: Option<Sweeper>,
    store: Store,
    google_simulator: Option<terrace_simulator::Simulator>,
    stripe_simulator: Option<terrace_stripe_sim::StripeSim>,
    demo: Option<(UserId, String)>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("addr", &self.addr)
            .field("role", &self.cfg.role)
            .field("dev_mode", &self.cfg.dev_mode())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds an instance: checks what can be checked before connecting,
    /// migrates and connects the store, builds the adapters (or starts the
    /// simulators), binds `cfg.bind`, and only then starts the engine, so
    /// that a port that is taken leaves nothing claimed.
    ///
    /// Errors: [`AppError::Config`] for a value found unusable before
    /// anything binds; [`AppError::Start`] when the database, the port or a
    /// simulator fails.
    pub async fn build(cfg: Config) -> Result<App, AppError> {
        let metrics = Arc::new(Metrics::new());
        let observer: Arc<dyn Observer> = metrics.clone();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);

        let blobs: Arc<dyn BlobStore> = Arc::new(
            ObjectBlobStore::from_url(&cfg.blob_url, cfg.policies.blob_timeout, cfg.policies.blob_retries)
                .map_err(|e| ConfigError { var: "TERRACE_BLOB_URL", message: e.to_string() })?,
        );
        info!(blob_url = %cfg.blob_url, "blob store ready");
        // Stripe (or its simulator) before anything binds, so that a key
        // Stripe's client refuses is a configuration error.
        let payments = match cfg.role.serves_api() {
            true => Some(stripe::payments(&cfg, &observer).await?),
            false => None,
        };

        let store = Store::open(&cfg, &clock, &observer).await?;

        let (google_simulator, google) = match &cfg.google {
            Google::Real { maps_key, gemini_key } => (
                None,
                google::adapters(
                    &cfg,
                    &cfg.maps_base_url,
                    &cfg.gemini_base_url,
                    maps_key,
                    gemini_key,
                    &observer,
                )
                .map_err(AppError::Start)?,
            ),
            Google::Simulator => {
                let sim = terrace_simulator::Simulator::start(terrace_simulator::SimulatorConfig::default())
                    .await
                    .map_err(|e| AppError::start("starting the Google simulator", e))?;
                warn!(url = %sim.base_url(), "GOOGLE_MAPS_API_KEY and GEMINI_API_KEY are unset: the built-in Google simulator answers instead of Google");
                let base = sim.base_url();
                let adapters =
                    google::adapters(&cfg, &base, &base, sim.maps_key(), sim.gemini_key(), &observer)
                        .map_err(AppError::Start)?;
                (Some(sim), adapters)
            }
        };

        let jwt_secret = cfg.jwt_secret.clone().unwrap_or_else(random_secret);
        let jwt = Jwt::new(jwt_secret.as_bytes()).with_audience(cfg.jwt_audience.clone());

        // Bind before any work starts: if the port is taken, nothing was claimed.
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .with_context(|| format!("binding {}", cfg.bind))
            .map_err(AppError::Start)?;
        let addr = listener.local_addr().map_err(|e| AppError::start("reading the bound address", e))?;

        let engine = cfg.role.runs_work().then(|| {
            let worker_id =
                WorkerId(cfg.worker_id.clone().unwrap_or_else(|| {
                    format!("terrace-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
                }));
            Engine::start(
                terrace_engine::Ports {
                    geocoder: google.geocoder.clone(),
                    imagery: google.imagery.clone(),
                    model: google.model.clone(),
                    store: store.generations(),
                    blobs: blobs.clone(),
                    observer: observer.clone(),
                    clock: clock.clone(),
                },
                cfg.policies.clone(),
                worker_id,
            )
        });
        // Every instance ends overdue work, whatever its role: an engine
        // sweeps on its own, an api-only instance runs the sweep alone.
        let sweeper = engine.is_none().then(|| Sweeper::start(store.generations(), &cfg.policies));
        if cfg.role == Role::Api && cfg.dev_mode() {
            warn!("TERRACE_ROLE=api in dev mode: nothing will run the generations this instance creates");
        }

        let mut api_cfg = cfg.api.clone();
        if let Some(p) = &payments {
            api_cfg.billing = stripe::billing_config(&cfg, addr, p);
        }
        // Dev mode (no secret): one demo token, for the web app and the banner.
        let demo = cfg.jwt_secret.is_none().then(|| {
            let user = UserId::new_random();
            (user, jwt.mint(user, false, Duration::from_secs(24 * 3600)))
        });
        api_cfg.web = terrace_api::WebConfig {
            dev_mode: demo.is_some(),
            demo_token: demo.as_ref().map(|(_, token)| token.clone()),
            supabase_url: cfg.supabase_url.clone(),
        };
        // Cancelled when the drain begins: readiness turns off and event
        // streams end.
        let shutdown = CancellationToken::new();
        let (payments_adapter, stripe_simulator) = match payments {
            Some(p) => (Some(p.adapter), p.simulator),
            None => (None, None),
        };
        let api = Api::new(
            Deps {
                store: store.generations(),
                ledger: store.ledger(),
                billing: store.billing(),
                blobs,
                payments: payments_adapter,
                work: engine.clone().map(|e| Arc::new(EngineWork(e)) as Arc<dyn Work>),
                metrics,
            },
            jwt,
            api_cfg,
            shutdown.clone(),
        );
        info!(role = cfg.role.as_str(), "listening on {addr}");
        Ok(App {
            cfg,
            listener,
            addr,
            api,
            engine,
            sweeper,
            store,
            google_simulator,
            stripe_simulator,
            demo,
            shutdown,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port` of the bound address, with loopback for 0.0.0.0.
    pub fn local_url(&self) -> String {
        stripe::local_url(self.addr)
    }

    /// In dev mode (no `TERRACE_JWT_SECRET`), the demo user and a token for
    /// it, valid 24 h: the web app signs in with it.
    pub fn demo(&self) -> Option<(UserId, &str)> {
        self.demo.as_ref().map(|(u, t)| (*u, t.as_str()))
    }

    /// Serves until `signal` is cancelled, then drains: the listener
    /// closes and in-flight requests finish while the engine hands its
    /// running generations back, within most of `TERRACE_SHUTDOWN_GRACE`;
    /// the rest of the grace closes the store and the simulators. Returns
    /// once everything has ended or the grace has passed.
    pub async fn serve(self, signal: CancellationToken) -> Result<(), AppError> {
        let App {
            cfg,
            listener,
            api,
            engine,
            sweeper,
            store,
            google_simulator,
            stripe_simulator,
            shutdown,
            ..
        } = self;
        let grace = cfg.policies.shutdown_grace;
        let drain = grace - (grace / 5).min(Duration::from_secs(2));
        let options = ServeOptions { header_read_timeout: cfg.api.header_read_timeout, grace: drain };
        // Served here, not spawned: it ends when this does.
        let server = terrace_api::serve(listener, api.router(), options, shutdown.clone());
        tokio::pin!(server);
        let early = tokio::select! {
            drained = &mut server => Some(drained),
            () = signal.cancelled() => None,
        };
        shutdown.cancel();

        // Drain: the server stops accepting and finishes in-flight requests
        // while the engine hands its running generations back.
        let began = tokio::time::Instant::now();
        let engine_drain = async {
            if let Some(s) = &sweeper {
                s.shutdown(drain).await;
            }
            match &engine {
                Some(e) => Some(e.shutdown(drain).await),
                None => None,
            }
        };
        // serve bounds its own drain by `drain`; the grace is only a backstop.
        let served = async {
            match early {
                Some(drained) => Ok(drained),
                None => tokio::time::timeout_at(began + grace, &mut server).await,
            }
        };
        let (served, report) = tokio::join!(served, engine_drain);
        match served {
            Ok(d) if d.clean => info!("connections drained"),
            Ok(_) => warn!("some connections were still open when the grace period ended"),
            Err(_) => warn!("the server did not drain within the grace period"),
        }
        if let Some(r) = report {
            info!(stopped = r.stopped, drained = r.drained, "generations handed back");
        }
        if tokio::time::timeout_at(began + grace, store.close()).await.is_err() {
            warn!("the store did not close within the grace period");
        }
        if let Some(sim) = google_simulator {
            let _ = tokio::time::timeout_at(began + grace, sim.shutdown()).await;
        }
        if let Some(sim) = stripe_simulator {
            let _ = tokio::time::timeout_at(began + grace, sim.shutdown()).await;
        }
        info!("stopped");
        Ok(())
    }
}

fn random_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The engine as the API sees it.
struct EngineWork(Engine);

impl Work for EngineWork {
    fn wake(&self) {
        self.0.wake();
    }
    fn tasks(&self) -> Vec<TaskView> {
        self.0
            .tasks()
            .into_iter()
            .map(|t| {
                TaskView::new(t.generation_id, t.request_id, t.attempt, t.started_at, t.deadline_at, t.stage)
            })
            .collect()
    }
    fn active(&self) -> usize {
        self.0.active()
    }
    fn cancelled(&self, generation: GenerationId) {
        self.0.cancel_local(generation);
    }
}

/// The store in use, kept concrete so it can be closed on the way out.
enum Store {
    Memory(terrace_memory::MemoryStore),
    Postgres(terrace_postgres::PgStore),
}

impl Store {
    /// Postgres (migrated first: every instance migrates at startup, and the
    /// runner's advisory lock applies each migration once), or memory in dev
    /// mode.
    async fn open(
        cfg: &Config,
        clock: &Arc<dyn Clock>,
        observer: &Arc<dyn Observer>,
    ) -> Result<Store, AppError> {
        match &cfg.database_url {
            Some(url) => {
                let applied = terrace_postgres::migrate(url, &cfg.policies)
                    .await
                    .map_err(|e| AppError::start("applying migrations", e))?;
                info!(?applied, "migrations applied");
                let s = terrace_postgres::PgStore::connect(url, &cfg.policies, observer.clone())
                    .await
                    .map_err(|e| AppError::start("connecting to DATABASE_URL", e))?;
                info!(pool_size = cfg.policies.db.pool_size, "store: postgres");
                Ok(Store::Postgres(s))
            }
            None => {
                warn!(
                    "dev mode: DATABASE_URL is unset; generations and credits live in memory and die with the process"
                );
                let store = terrace_memory::MemoryStore::with_observer(clock.clone(), observer.clone())
                    .with_idempotency_ttl(cfg.policies.idempotency_ttl);
                Ok(Store::Memory(store))
            }
        }
    }

    fn generations(&self) -> Arc<dyn GenerationStore> {
        match self {
            Store::Memory(s) => Arc::new(s.clone()),
            Store::Postgres(s) => Arc::new(s.clone()),
        }
    }
    fn ledger(&self) -> Arc<dyn Ledger> {
        match self {
            Store::Memory(s) => Arc::new(s.clone()),
            Store::Postgres(s) => Arc::new(s.clone()),
        }
    }
    fn billing(&self) -> Arc<dyn BillingLedger> {
        match self {
            Store::Memory(s) => Arc::new(s.clone()),
            Store::Postgres(s) => Arc::new(s.clone()),
        }
    }
    async fn close(&self) {
        if let Store::Postgres(s) = self {
            s.close().await;
        }
    }
}
