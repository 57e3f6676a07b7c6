//! `terrace`: reads the configuration, builds the adapters, hands them to the
//! engine and the API, serves, and drains on a signal. Subcommands: `serve`
//! (the default), `migrate`, `token`, and the terminal front end of a
//! running server: `generate`, `status`, `cancel`.

mod config;
mod front;
mod google;
mod stripe;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::{Config, ConfigError, Env, Google, LogFormat, Role};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use terrace_api::{
    Api, ApiConfig, Deps, Jwt, Metrics, ObjectBlobStore, Routes, ServeOptions, TaskView, Work,
};
use terrace_domain::UserId;
use terrace_engine::Engine;
use terrace_ports::{
    BillingLedger, BlobStore, Clock, GenerationStore, Ledger, Observer, SystemClock, WorkerId,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(name = "terrace", version, about = "Terrace: AI landscape designs as a service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP and/or run generations, as TERRACE_ROLE says (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Mint a bearer token from TERRACE_JWT_SECRET.
    Token {
        /// The user's UUID (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Make an administrator token (`role: service_role`).
        #[arg(long)]
        admin: bool,
        /// How long the token is valid, like 30m or 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Create a generation on a running server, show its progress, save its images.
    Generate {
        /// The street address.
        #[arg(long)]
        address: String,
        /// An area and its style, like front_yard:japanese_zen (1 to 5 times).
        #[arg(long = "area", value_name = "AREA:STYLE", required = true)]
        areas: Vec<String>,
        /// Where to save the images.
        #[arg(long, default_value = "designs")]
        out: std::path::PathBuf,
        #[command(flatten)]
        target: front::Target,
    },
    /// Show a generation.
    Status {
        /// The generation's id.
        id: String,
        #[command(flatten)]
        target: front::Target,
    },
    /// Cancel a generation.
    Cancel {
        /// The generation's id.
        id: String,
        #[command(flatten)]
        target: front::Target,
    },
}

/// Exit code for bad configuration or usage.
const EXIT_CONFIG: i32 = 2;

pub(crate) fn config_exit(e: &ConfigError) -> ! {
    eprintln!("terrace: {e}");
    std::process::exit(EXIT_CONFIG)
}

fn main() {
    let cli = Cli::parse();
    let vars: HashMap<String, String> = std::env::vars().collect();
    let env = Env(&vars);
    let code = match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, admin, ttl } => token(&env, &user, admin, &ttl),
        Command::Generate { address, areas, out, target } => {
            front::run(target, front::Action::Generate { address, areas, out })
        }
        Command::Status { id, target } => front::run(target, front::Action::Status(id)),
        Command::Cancel { id, target } => front::run(target, front::Action::Cancel(id)),
        Command::Migrate => {
            let url =
                vars.get("DATABASE_URL").filter(|u| !u.trim().is_empty()).cloned().unwrap_or_else(|| {
                    config_exit(&ConfigError {
                        var: "DATABASE_URL",
                        message: "is required by `terrace migrate`".into(),
                    })
                });
            let policies = config::db_policies(&env).unwrap_or_else(|e| config_exit(&e));
            init_logging(&LogFormat::default());
            runtime().block_on(async {
                match terrace_postgres::migrate(&url, &policies).await {
                    Ok(applied) => {
                        info!(?applied, "migrations applied");
                        0
                    }
                    Err(e) => {
                        error!(error = %e, "migration failed");
                        1
                    }
                }
            })
        }
        Command::Serve => {
            let cfg = config::load(&env).unwrap_or_else(|e| config_exit(&e));
            init_logging(&cfg.log_format);
            match runtime().block_on(serve(cfg)) {
                Ok(()) => 0,
                Err(e) => {
                    error!(error = format!("{e:#}"), "terrace stopped");
                    1
                }
            }
        }
    };
    std::process::exit(code)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the tokio runtime starts")
}

fn init_logging(format: &LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TERRACE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    match format {
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(true).init()
        }
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).init(),
    }
}

fn token(env: &Env<'_>, user: &str, admin: bool, ttl: &str) -> i32 {
    let secret = env.0.get("TERRACE_JWT_SECRET").filter(|s| !s.is_empty()).unwrap_or_else(|| {
        config_exit(&ConfigError {
            var: "TERRACE_JWT_SECRET",
            message: "is required by `terrace token`".into(),
        })
    });
    let user: UserId = user.parse().unwrap_or_else(|_| {
        eprintln!("terrace: --user must be a UUID");
        std::process::exit(EXIT_CONFIG)
    });
    let ttl = humantime::parse_duration(ttl).unwrap_or_else(|_| {
        eprintln!("terrace: --ttl must be a duration like 30m or 1h");
        std::process::exit(EXIT_CONFIG)
    });
    let audience = env.0.get("TERRACE_JWT_AUDIENCE").map(|a| a.trim()).filter(|a| !a.is_empty());
    let jwt = Jwt::new(secret.as_bytes()).with_audience(audience.unwrap_or(terrace_api::DEFAULT_AUDIENCE));
    println!("{}", jwt.mint(user, admin, ttl));
    0
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
    fn cancelled(&self, generation: terrace_domain::GenerationId) {
        self.0.cancel_local(generation);
    }
}

/// The store in use, kept concrete so it can be closed on the way out.
enum Store {
    Memory(terrace_memory::MemoryStore),
    Postgres(terrace_postgres::PgStore),
}

impl Store {
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

fn random_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let observer: Arc<dyn Observer> = metrics.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    // A bad blob URL is a configuration error: found before anything connects.
    let blobs: Arc<dyn BlobStore> =
        Arc::new(ObjectBlobStore::from_url(&cfg.blob_url, cfg.policies.blob_timeout).unwrap_or_else(|e| {
            config_exit(&ConfigError { var: "TERRACE_BLOB_URL", message: e.to_string() })
        }));
    info!(blob_url = %cfg.blob_url, "blob store ready");

    // The store: Postgres, or memory in dev mode.
    let store = match &cfg.database_url {
        Some(url) => {
            // Every instance migrates at startup; the runner takes an advisory
            // lock, so instances starting together apply each migration once.
            let applied =
                terrace_postgres::migrate(url, &cfg.policies).await.context("applying migrations")?;
            info!(?applied, "migrations applied");
            let s = terrace_postgres::PgStore::connect(url, &cfg.policies, observer.clone())
                .await
                .context("connecting to DATABASE_URL")?;
            info!(pool_size = cfg.policies.db.pool_size, "store: postgres");
            Store::Postgres(s)
        }
        None => {
            warn!(
                "dev mode: DATABASE_URL is unset; generations and credits live in memory and die with the process"
            );
            Store::Memory(terrace_memory::MemoryStore::with_observer(clock.clone(), observer.clone()))
        }
    };

    // Google, or the simulator on loopback.
    let (simulator, google) = match &cfg.google {
        Google::Real { maps_key, gemini_key } => (
            None,
            google::adapters(
                &cfg,
                &cfg.maps_base_url,
                &cfg.gemini_base_url,
                maps_key,
                gemini_key,
                &observer,
            )?,
        ),
        Google::Simulator => {
            let sim = terrace_simulator::Simulator::start(terrace_simulator::SimulatorConfig::default())
                .await
                .context("starting the Google simulator")?;
            warn!(url = %sim.base_url(), "GOOGLE_MAPS_API_KEY and GEMINI_API_KEY are unset: the built-in Google simulator answers instead of Google");
            let base = sim.base_url();
            let adapters = google::adapters(&cfg, &base, &base, sim.maps_key(), sim.gemini_key(), &observer)?;
            (Some(sim), adapters)
        }
    };

    let jwt_secret = match &cfg.jwt_secret {
        Some(s) => s.clone(),
        None => random_secret(),
    };
    let jwt = Jwt::new(jwt_secret.as_bytes()).with_audience(cfg.jwt_audience.clone());

    // Bind before any work starts: if the port is taken, nothing was claimed.
    let listener =
        tokio::net::TcpListener::bind(cfg.bind).await.with_context(|| format!("binding {}", cfg.bind))?;
    let addr = listener.local_addr()?;
    // Stripe, or its simulator sending webhooks to the bound address; a
    // worker serves no billing routes and needs neither.
    let billing = match cfg.role.serves_api() {
        true => Some(stripe::billing(&cfg, addr, &observer).await?),
        false => None,
    };

    let engine = cfg.role.runs_work().then(|| {
        let worker_id = WorkerId(
            cfg.worker_id
                .clone()
                .unwrap_or_else(|| format!("terrace-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])),
        );
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
    // Every instance ends overdue work, whatever its role: an engine sweeps
    // on its own, an api-only instance runs the sweep alone.
    let sweeper =
        engine.is_none().then(|| terrace_engine::Sweeper::start(store.generations(), &cfg.policies));
    if cfg.role == Role::Api && cfg.dev_mode() {
        warn!("TERRACE_ROLE=api in dev mode: nothing will run the generations this instance creates");
    }

    let shutdown = CancellationToken::new();
    let mut api_cfg = ApiConfig::new(
        cfg.trial_credits,
        cfg.policies.generation_timeout,
        cfg.policies.lease.ttl,
        cfg.policies.db.acquire_timeout,
        cfg.policies.db.call_timeout(),
    );
    api_cfg.routes = if cfg.role.serves_api() { Routes::All } else { Routes::OpsOnly };
    api_cfg.header_read_timeout = cfg.header_read_timeout;
    api_cfg.request_timeout = cfg.request_timeout;
    api_cfg.max_requests = cfg.max_requests;
    api_cfg.max_event_streams = cfg.max_event_streams;
    api_cfg.max_requests_per_user = cfg.max_requests_per_user;
    api_cfg.max_streams_per_user = cfg.max_streams_per_user;
    api_cfg.keepalive_interval = cfg.event_keepalive;
    if let Some(b) = &billing {
        api_cfg.billing = b.config.clone();
    }
    // Dev mode (no secret): one demo token, printed below and given to the web app.
    let demo = cfg.jwt_secret.is_none().then(|| {
        let user = UserId::new_random();
        (user, jwt.mint(user, false, Duration::from_secs(24 * 3600)))
    });
    api_cfg.web = terrace_api::WebConfig {
        dev_mode: demo.is_some(),
        demo_token: demo.as_ref().map(|(_, token)| token.clone()),
        supabase_url: cfg.supabase_url.clone(),
    };
    let api = Api::new(
        Deps {
            store: store.generations(),
            ledger: store.ledger(),
            billing: store.billing(),
            blobs,
            payments: billing.as_ref().map(|b| b.payments.clone()),
            work: engine.clone().map(|e| Arc::new(EngineWork(e)) as Arc<dyn Work>),
            metrics,
        },
        jwt.clone(),
        api_cfg,
        shutdown.clone(),
    );

    info!(role = cfg.role.as_str(), "listening on {addr}");
    if let Some((demo, token)) = &demo {
        let local = stripe::local_url(addr);
        let host = local.trim_start_matches("http://");
        println!(
            "\nTERRACE_JWT_SECRET is unset: made a random one for this run. A demo token for user {demo}, valid 24h:\n\n  {token}\n\nOpen the web app, signed in as this user: http://{host}/\n\nTry the terminal front end:\n\n  export TERRACE_URL=http://{host} TERRACE_TOKEN={token}\n  terrace generate --address '1600 Amphitheatre Parkway, Mountain View, CA' --area front_yard:japanese_zen --area backyard:mediterranean\n\nor curl:\n\n  curl -s -X POST http://{host}/v1/generations -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{\"address\":\"1600 Amphitheatre Parkway, Mountain View, CA\",\"areas\":[{{\"area\":\"front_yard\",\"style\":\"japanese_zen\"}}]}}'\n"
        );
    }

    // Signals: the first drains, a second exits at once.
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: draining (a second signal exits at once)");
        signals.cancel();
        wait_for_signal().await;
        warn!("second signal: exiting now");
        std::process::exit(130);
    });

    // The drain gets most of the grace; the rest is for closing the pool and
    // the simulator, so the process is gone within the grace.
    let grace = cfg.policies.shutdown_grace;
    let drain = grace - (grace / 5).min(Duration::from_secs(2));
    let options = ServeOptions { header_read_timeout: cfg.header_read_timeout, grace: drain };
    let server = tokio::spawn(terrace_api::serve(listener, api.router(), options, shutdown.clone()));
    shutdown.cancelled().await;

    // Drain: the server stops accepting and finishes in-flight requests while
    // the engine hands its running generations back.
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
    let (served, report) = tokio::join!(tokio::time::timeout_at(began + grace, server), engine_drain);
    match served {
        Ok(Ok(d)) if d.clean => info!("connections drained"),
        Ok(Ok(_)) => warn!("some connections were still open when the grace period ended"),
        Ok(Err(e)) => warn!(error = %e, "the server task failed"),
        Err(_) => warn!("the server did not drain within the grace period"),
    }
    if let Some(r) = report {
        info!(stopped = r.stopped, drained = r.drained, "generations handed back");
    }
    if tokio::time::timeout_at(began + grace, store.close()).await.is_err() {
        warn!("the store did not close within the grace period");
    }
    if let Some(sim) = simulator {
        let _ = tokio::time::timeout_at(began + grace, sim.shutdown()).await;
    }
    if let Some(sim) = billing.and_then(|b| b.simulator) {
        let _ = tokio::time::timeout_at(began + grace, sim.shutdown()).await;
    }
    info!("stopped");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT can be handled");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
