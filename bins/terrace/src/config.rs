//! Configuration from the environment (CONTRACT §2). Every bad value is a
//! [`ConfigError`] naming its variable; `main` prints it on one line and
//! exits 2 before any port is bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use terrace_api::{ApiConfig, Routes};
use terrace_domain::{DbPolicy, LeasePolicy, LockPolicy, Policies, RetryPolicy};
use terrace_google::HttpVersion;

/// A bad configuration value: the variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.var, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { var, message: message.into() }
}

/// What the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    All,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }
    pub fn runs_work(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::All => "all",
        }
    }
}

/// Where Google is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Google {
    /// Both keys unset: the simulator runs in-process.
    Simulator,
    Real {
        maps_key: String,
        gemini_key: String,
    },
}

/// Where Stripe is (CONTRACT §7).
#[derive(Clone, PartialEq, Eq)]
pub enum Stripe {
    /// Both secrets unset: the Stripe simulator runs in-process.
    Simulator,
    Real {
        secret_key: String,
        webhook_secret: String,
    },
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stripe::Simulator => f.write_str("Simulator"),
            Stripe::Real { .. } => f.write_str("Real { .. }"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub role: Role,
    pub database_url: Option<String>,
    pub blob_url: String,
    pub google: Google,
    pub maps_base_url: String,
    pub gemini_base_url: String,
    pub gemini_model: String,
    /// Which HTTP the Google adapters speak (`TERRACE_GOOGLE_HTTP`); with the
    /// built-in simulator, HTTP/2 unless set.
    pub google_http: HttpVersion,
    /// Requests in flight on one HTTP/2 connection to Google before another
    /// is opened (`TERRACE_GOOGLE_STREAMS_PER_CONNECTION`).
    pub google_streams_per_connection: usize,
    /// `None` only in dev mode: a random one is made.
    pub jwt_secret: Option<String>,
    /// The audience a token with an `aud` claim must name.
    pub jwt_audience: String,
    pub policies: Policies,
    /// The API and its edge: built from the policies, with the edge's
    /// limits from their variables (`TERRACE_REQUEST_TIMEOUT`, …) or the
    /// API's own defaults. `App::build` adds billing and the web app.
    pub api: ApiConfig,
    pub worker_id: Option<String>,
    pub log_format: LogFormat,
    /// Where the web app's "Sign in" link goes (`TERRACE_SUPABASE_URL`).
    pub supabase_url: Option<String>,
    pub stripe: Stripe,
    pub stripe_base_url: String,
    /// The Stripe price of `monthly_pro`; `None`: the plan is not offered.
    /// With the simulator, its own monthly price when unset.
    pub stripe_price_monthly_pro: Option<String>,
    /// One Stripe call, retries included.
    pub stripe_timeout: Duration,
    /// Where Checkout returns the user; `None`: the bound address.
    pub public_url: Option<String>,
}

impl Config {
    pub fn dev_mode(&self) -> bool {
        self.database_url.is_none()
    }
}

/// Reads variables from a map (the process environment in `main`, a literal
/// map in tests).
pub struct Env<'a>(pub &'a HashMap<String, String>);

impl std::fmt::Debug for Env<'_> {
    /// The names only: values hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_tuple("Env").field(&names).finish()
    }
}

impl Env<'_> {
    fn raw(&self, var: &'static str) -> Option<&str> {
        self.0.get(var).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    fn string(&self, var: &'static str, default: &str) -> String {
        self.raw(var).unwrap_or(default).to_owned()
    }

    fn duration(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => {
                let d = humantime::parse_duration(v.trim())
                    .map_err(|e| err(var, format!("{v:?} is not a duration like 250ms, 30s or 5m ({e})")))?;
                if d.is_zero() {
                    return Err(err(var, "must be greater than zero"));
                }
                Ok(d)
            }
        }
    }

    fn number<T>(&self, var: &'static str, default: T, range: (T, T)) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<T>() {
                Ok(n) if n >= range.0 && n <= range.1 => Ok(n),
                _ => Err(err(var, format!("{v:?} must be a whole number from {} to {}", range.0, range.1))),
            },
        }
    }
}

fn parse_bind(v: &str) -> Result<SocketAddr, ConfigError> {
    let v = v.trim();
    let full = if let Some(port) = v.strip_prefix(':') { format!("0.0.0.0:{port}") } else { v.to_owned() };
    full.parse()
        .map_err(|_| err("TERRACE_BIND", format!("{v:?} is not an address like 127.0.0.1:8000 or :0")))
}

fn parse_url(var: &'static str, v: &str) -> Result<String, ConfigError> {
    let ok = (v.starts_with("http://") || v.starts_with("https://")) && v.len() > "https://".len();
    if ok {
        Ok(v.trim_end_matches('/').to_owned())
    } else {
        Err(err(var, format!("{v:?} is not an http(s) URL")))
    }
}

/// Reads and checks the whole configuration.
pub fn load(env: &Env<'_>) -> Result<Config, ConfigError> {
    let bind = parse_bind(&env.string("TERRACE_BIND", "127.0.0.1:8000"))?;
    let role = match env.string("TERRACE_ROLE", "all").trim() {
        "api" => Role::Api,
        "worker" => Role::Worker,
        "all" => Role::All,
        other => return Err(err("TERRACE_ROLE", format!("{other:?} must be api, worker or all"))),
    };
    let database_url = env.raw("DATABASE_URL").map(str::to_owned);
    if let Some(u) = &database_url {
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            return Err(err("DATABASE_URL", "must be a postgres:// or postgresql:// URL"));
        }
    }
    let dev = database_url.is_none();
    let blob_url = match env.raw("TERRACE_BLOB_URL") {
        Some(u) => u.to_owned(),
        None if dev => "memory://".to_owned(),
        None => {
            return Err(err(
                "TERRACE_BLOB_URL",
                "is required when DATABASE_URL is set (file:///dir, memory://)",
            ));
        }
    };
    let google = match (env.raw("GOOGLE_MAPS_API_KEY"), env.raw("GEMINI_API_KEY")) {
        (None, None) => Google::Simulator,
        (Some(m), Some(g)) => Google::Real { maps_key: m.to_owned(), gemini_key: g.to_owned() },
        (Some(_), None) => return Err(err("GEMINI_API_KEY", "is required when GOOGLE_MAPS_API_KEY is set")),
        (None, Some(_)) => return Err(err("GOOGLE_MAPS_API_KEY", "is required when GEMINI_API_KEY is set")),
    };
    let maps_base_url = parse_url(
        "TERRACE_MAPS_BASE_URL",
        &env.string("TERRACE_MAPS_BASE_URL", "https://maps.googleapis.com"),
    )?;
    let gemini_base_url = parse_url(
        "TERRACE_GEMINI_BASE_URL",
        &env.string("TERRACE_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com"),
    )?;
    let gemini_model = env.string("TERRACE_GEMINI_MODEL", "gemini-2.5-flash-image");
    if !gemini_model.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err(err("TERRACE_GEMINI_MODEL", format!("{gemini_model:?} is not a model name")));
    }
    let google_http = match env.raw("TERRACE_GOOGLE_HTTP").map(str::trim) {
        // The built-in simulator speaks HTTP/2 with prior knowledge.
        None if google == Google::Simulator => HttpVersion::Http2,
        None | Some("auto") => HttpVersion::Auto,
        Some("http2") => HttpVersion::Http2,
        Some("http1") => HttpVersion::Http1,
        Some(other) => {
            return Err(err("TERRACE_GOOGLE_HTTP", format!("{other:?} must be auto, http2 or http1")));
        }
    };
    let google_streams_per_connection = env.number(
        "TERRACE_GOOGLE_STREAMS_PER_CONNECTION",
        terrace_google::DEFAULT_STREAMS_PER_CONNECTION,
        (1, 1000),
    )?;
    let jwt_secret = env.raw("TERRACE_JWT_SECRET").map(str::to_owned);
    match &jwt_secret {
        None if !dev => return Err(err("TERRACE_JWT_SECRET", "is required when DATABASE_URL is set")),
        Some(s) if s.len() < 16 => return Err(err("TERRACE_JWT_SECRET", "must be at least 16 bytes")),
        _ => {}
    }
    let jwt_audience = env.string("TERRACE_JWT_AUDIENCE", terrace_api::DEFAULT_AUDIENCE).trim().to_owned();

    let policies = policies(env)?;

    // The edge's limits: its own defaults (CONTRACT §5), unless set.
    let mut api = ApiConfig::from_policies(&policies);
    api.routes = if role.serves_api() { Routes::All } else { Routes::OpsOnly };
    api.header_read_timeout = env.duration("TERRACE_HEADER_READ_TIMEOUT", api.header_read_timeout)?;
    api.request_timeout = env.duration("TERRACE_REQUEST_TIMEOUT", api.request_timeout)?;
    let limit = (1, 1_000_000);
    api.max_requests = env.number("TERRACE_MAX_CONCURRENT_REQUESTS", api.max_requests, limit)?;
    api.max_event_streams = env.number("TERRACE_MAX_EVENT_STREAMS", api.max_event_streams, limit)?;
    api.max_requests_per_user =
        env.number("TERRACE_MAX_REQUESTS_PER_USER", api.max_requests_per_user, limit)?;
    api.max_streams_per_user = env.number("TERRACE_MAX_STREAMS_PER_USER", api.max_streams_per_user, limit)?;
    api.keepalive_interval = env.duration("TERRACE_EVENT_KEEPALIVE", api.keepalive_interval)?;
    let worker_id = env.raw("TERRACE_WORKER_ID").map(str::to_owned);
    let log_format = match env.string("TERRACE_LOG_FORMAT", "text").trim() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => return Err(err("TERRACE_LOG_FORMAT", format!("{other:?} must be text or json"))),
    };
    let supabase_url =
        env.raw("TERRACE_SUPABASE_URL").map(|u| parse_url("TERRACE_SUPABASE_URL", u.trim())).transpose()?;
    let stripe = match (env.raw("STRIPE_SECRET_KEY"), env.raw("STRIPE_WEBHOOK_SECRET")) {
        (None, None) => Stripe::Simulator,
        (Some(k), Some(w)) => {
            // Checked here, so that a bad key exits 2 before anything binds.
            for (var, key) in [("STRIPE_SECRET_KEY", k.trim()), ("STRIPE_WEBHOOK_SECRET", w.trim())] {
                if !key.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(err(var, "has characters no Stripe key has (spaces, control or non-ASCII)"));
                }
            }
            Stripe::Real { secret_key: k.trim().to_owned(), webhook_secret: w.trim().to_owned() }
        }
        (Some(_), None) => {
            return Err(err("STRIPE_WEBHOOK_SECRET", "is required when STRIPE_SECRET_KEY is set"));
        }
        (None, Some(_)) => {
            return Err(err("STRIPE_SECRET_KEY", "is required when STRIPE_WEBHOOK_SECRET is set"));
        }
    };
    let stripe_base_url = parse_url(
        "TERRACE_STRIPE_BASE_URL",
        &env.string("TERRACE_STRIPE_BASE_URL", "https://api.stripe.com"),
    )?;
    let stripe_price_monthly_pro = match env.raw("TERRACE_STRIPE_PRICE_MONTHLY_PRO").map(str::trim) {
        None => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => Some(p.to_owned()),
        Some(p) => {
            return Err(err(
                "TERRACE_STRIPE_PRICE_MONTHLY_PRO",
                format!("{p:?} is not a Stripe price id like price_1Abc"),
            ));
        }
    };
    let stripe_timeout = env.duration("TERRACE_STRIPE_TIMEOUT", Duration::from_secs(10))?;
    let public_url =
        env.raw("TERRACE_PUBLIC_URL").map(|u| parse_url("TERRACE_PUBLIC_URL", u.trim())).transpose()?;
    Ok(Config {
        bind,
        role,
        database_url,
        blob_url,
        google,
        maps_base_url,
        gemini_base_url,
        gemini_model,
        google_http,
        google_streams_per_connection,
        jwt_secret,
        jwt_audience,
        policies,
        api,
        worker_id,
        log_format,
        supabase_url,
        stripe,
        stripe_base_url,
        stripe_price_monthly_pro,
        stripe_timeout,
        public_url,
    })
}

/// Every policy (CONTRACT §2's timeouts, retries, locks, leases and
/// bounds), from its variables or their defaults: what `serve` runs with,
/// and the database bounds `terrace migrate` keeps to.
pub fn policies(env: &Env<'_>) -> Result<Policies, ConfigError> {
    let maps_timeout = env.duration("TERRACE_MAPS_TIMEOUT", Duration::from_secs(10))?;
    let llm_idle_timeout = env.duration("TERRACE_LLM_IDLE_TIMEOUT", Duration::from_secs(90))?;
    let llm_connect_timeout = env.duration("TERRACE_LLM_CONNECT_TIMEOUT", Duration::from_secs(10))?;
    let area_timeout = env.duration("TERRACE_AREA_TIMEOUT", Duration::from_secs(240))?;
    let generation_timeout = env.duration("TERRACE_GENERATION_TIMEOUT", Duration::from_secs(300))?;
    if area_timeout > generation_timeout {
        return Err(err("TERRACE_AREA_TIMEOUT", "must not exceed TERRACE_GENERATION_TIMEOUT"));
    }
    let pool_size = env.number("TERRACE_DB_POOL_SIZE", 10usize, (1, 1000))?;
    let acquire_timeout = env.duration("TERRACE_DB_ACQUIRE_TIMEOUT", Duration::from_secs(5))?;
    let connect_timeout = env.duration("TERRACE_DB_CONNECT_TIMEOUT", Duration::from_secs(5))?;
    let statement_timeout = env.duration("TERRACE_DB_STATEMENT_TIMEOUT", Duration::from_secs(30))?;
    // `nowait` (or 0): the account lock is taken with NOWAIT, never waited for.
    let lock = match env.raw("TERRACE_DB_LOCK_WAIT").map(str::trim) {
        Some("nowait" | "0") => LockPolicy::NoWait,
        _ => LockPolicy::Timeout(env.duration("TERRACE_DB_LOCK_WAIT", Duration::from_millis(250))?),
    };
    let lease_ttl = env.duration("TERRACE_LEASE_TTL", Duration::from_secs(30))?;
    let heartbeat_interval = env.duration("TERRACE_HEARTBEAT_INTERVAL", lease_ttl / 3)?;
    if heartbeat_interval >= lease_ttl {
        return Err(err("TERRACE_HEARTBEAT_INTERVAL", "must be shorter than TERRACE_LEASE_TTL"));
    }
    let sweep_interval = env.duration("TERRACE_SWEEP_INTERVAL", Duration::from_secs(5))?;
    let shutdown_grace = env.duration("TERRACE_SHUTDOWN_GRACE", Duration::from_secs(30))?;
    let blob_timeout = env.duration("TERRACE_BLOB_TIMEOUT", Duration::from_secs(30))?;
    let max_running = env.number("TERRACE_MAX_RUNNING", 32usize, (1, 10_000))?;
    let sweep_batch = env.number("TERRACE_SWEEP_BATCH", 500usize, (1, 100_000))?;
    let area_concurrency = env.number("TERRACE_AREA_CONCURRENCY", 5usize, (1, 5))?;
    let max_attempts = env.number("TERRACE_RETRY_MAX_ATTEMPTS", 4u32, (1, 20))?;

    let retry = RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(8),
        max_retry_after: Duration::from_secs(30),
    };
    let policies = Policies {
        maps_timeout,
        llm_connect_timeout,
        llm_idle_timeout,
        area_timeout,
        generation_timeout,
        area_concurrency,
        retry: retry.clone(),
        lock,
        db: DbPolicy {
            pool_size,
            acquire_timeout,
            connect_timeout,
            statement_timeout,
            lock_timeout: Duration::from_secs(5).min(statement_timeout),
            idle_in_transaction_timeout: Duration::from_secs(60),
            verify_idle_after: Duration::from_secs(5),
        },
        lease: LeasePolicy { ttl: lease_ttl, heartbeat_interval, sweep_interval, max_running, sweep_batch },
        shutdown_grace,
        blob_timeout,
        blob_retries: 2,
        // The same backoff; attempts bounded only by the write's deadline.
        settle_retry: RetryPolicy { max_attempts: u32::MAX, ..retry.clone() },
        idempotency_ttl: terrace_domain::policy::IDEMPOTENCY_TTL,
        trial_credits: env.number("TERRACE_TRIAL_CREDITS", 3u64, (0, 1_000_000))?,
    };
    policies.validate().map_err(|e| err("TERRACE_*", e.to_string()))?;
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_empty_environment_is_dev_mode_with_the_contract_defaults() {
        let c = load(&Env(&env(&[]))).unwrap();
        assert!(c.dev_mode());
        assert_eq!(c.bind.to_string(), "127.0.0.1:8000");
        assert_eq!(c.role, Role::All);
        assert_eq!(c.google, Google::Simulator);
        assert_eq!(c.google_http, HttpVersion::Http2, "the built-in simulator speaks HTTP/2");
        assert_eq!(c.google_streams_per_connection, 100);
        assert_eq!(c.policies.trial_credits, 3);
        assert_eq!(c.api.trial_credits, 3);
        assert_eq!(c.api.request_timeout, Duration::from_secs(30));
        assert_eq!(c.api.max_requests_per_user, 32);
        assert_eq!(c.policies.generation_timeout, Duration::from_secs(300));
        assert_eq!(c.policies.area_timeout, Duration::from_secs(240));
        assert_eq!(c.policies.db.acquire_timeout, Duration::from_secs(5));
        assert_eq!(c.policies.lease.ttl, Duration::from_secs(30));
        assert_eq!(c.policies.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.stripe, Stripe::Simulator);
        assert_eq!(c.stripe_base_url, "https://api.stripe.com");
        assert_eq!(c.stripe_price_monthly_pro, None);
        assert_eq!(c.stripe_timeout, Duration::from_secs(10));
        assert_eq!(c.public_url, None);
    }

    #[test]
    fn stripe_needs_both_secrets_and_keeps_them_out_of_debug_output() {
        let c = load(&Env(&env(&[
            ("STRIPE_SECRET_KEY", "sk_live_abc"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_abc"),
            ("TERRACE_STRIPE_PRICE_MONTHLY_PRO", "price_1Abc"),
            ("TERRACE_STRIPE_TIMEOUT", "3s"),
            ("TERRACE_PUBLIC_URL", "https://terrace.example/"),
        ])))
        .unwrap();
        assert_eq!(
            c.stripe,
            Stripe::Real { secret_key: "sk_live_abc".into(), webhook_secret: "whsec_abc".into() }
        );
        assert_eq!(c.stripe_price_monthly_pro.as_deref(), Some("price_1Abc"));
        assert_eq!(c.stripe_timeout, Duration::from_secs(3));
        assert_eq!(c.public_url.as_deref(), Some("https://terrace.example"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk_live_abc") && !shown.contains("whsec_abc"), "{shown}");
        for (pairs, var) in [
            (vec![("STRIPE_SECRET_KEY", "sk_x")], "STRIPE_WEBHOOK_SECRET"),
            (vec![("STRIPE_WEBHOOK_SECRET", "whsec_x")], "STRIPE_SECRET_KEY"),
            (
                vec![("STRIPE_SECRET_KEY", "sk_test abc"), ("STRIPE_WEBHOOK_SECRET", "whsec_x")],
                "STRIPE_SECRET_KEY",
            ),
            (
                vec![("STRIPE_SECRET_KEY", "sk_x"), ("STRIPE_WEBHOOK_SECRET", "whsec_é")],
                "STRIPE_WEBHOOK_SECRET",
            ),
            (vec![("TERRACE_STRIPE_BASE_URL", "api.stripe.com")], "TERRACE_STRIPE_BASE_URL"),
            (vec![("TERRACE_STRIPE_PRICE_MONTHLY_PRO", "price 1")], "TERRACE_STRIPE_PRICE_MONTHLY_PRO"),
            (vec![("TERRACE_STRIPE_TIMEOUT", "0s")], "TERRACE_STRIPE_TIMEOUT"),
            (vec![("TERRACE_PUBLIC_URL", "terrace.example")], "TERRACE_PUBLIC_URL"),
        ] {
            assert_eq!(load(&Env(&env(&pairs))).unwrap_err().var, var, "{pairs:?}");
        }
    }

    #[test]
    fn google_speaks_http2_where_tls_offers_it_unless_told_otherwise() {
        let keys = [("GOOGLE_MAPS_API_KEY", "maps"), ("GEMINI_API_KEY", "gemini")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let pairs: Vec<_> = keys.iter().chain(extra).copied().collect();
            load(&Env(&env(&pairs)))
        };
        let c = with(&[]).unwrap();
        assert_eq!((c.google_http, c.google_streams_per_connection), (HttpVersion::Auto, 100));
        for (value, version) in
            [("auto", HttpVersion::Auto), (" http2 ", HttpVersion::Http2), ("http1", HttpVersion::Http1)]
        {
            assert_eq!(with(&[("TERRACE_GOOGLE_HTTP", value)]).unwrap().google_http, version, "{value}");
        }
        // Set, it holds with the built-in simulator too.
        let c = load(&Env(&env(&[("TERRACE_GOOGLE_HTTP", "http1")]))).unwrap();
        assert_eq!((c.google, c.google_http), (Google::Simulator, HttpVersion::Http1));
        let c = with(&[("TERRACE_GOOGLE_STREAMS_PER_CONNECTION", "1000")]).unwrap();
        assert_eq!(c.google_streams_per_connection, 1000);
        for (var, value) in [
            ("TERRACE_GOOGLE_HTTP", "h2c"),
            ("TERRACE_GOOGLE_HTTP", "HTTP/2"),
            ("TERRACE_GOOGLE_STREAMS_PER_CONNECTION", "0"),
            ("TERRACE_GOOGLE_STREAMS_PER_CONNECTION", "1001"),
            ("TERRACE_GOOGLE_STREAMS_PER_CONNECTION", "many"),
        ] {
            let e = with(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{value}");
            assert!(e.to_string().contains(value.trim()), "{e}");
        }
        assert_eq!(
            with(&[("TERRACE_GOOGLE_HTTP", "h2c")]).unwrap_err().to_string(),
            r#"invalid configuration: TERRACE_GOOGLE_HTTP: "h2c" must be auto, http2 or http1"#
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (pairs, var) in [
            (vec![("TERRACE_BIND", "nope")], "TERRACE_BIND"),
            (vec![("TERRACE_ROLE", "boss")], "TERRACE_ROLE"),
            (vec![("TERRACE_LEASE_TTL", "5 parsecs")], "TERRACE_LEASE_TTL"),
            (vec![("TERRACE_DB_POOL_SIZE", "0")], "TERRACE_DB_POOL_SIZE"),
            (vec![("GOOGLE_MAPS_API_KEY", "k")], "GEMINI_API_KEY"),
            (vec![("DATABASE_URL", "postgres://x/y")], "TERRACE_BLOB_URL"),
            (
                vec![("DATABASE_URL", "postgres://x/y"), ("TERRACE_BLOB_URL", "memory://")],
                "TERRACE_JWT_SECRET",
            ),
            (vec![("TERRACE_AREA_TIMEOUT", "10m")], "TERRACE_AREA_TIMEOUT"),
            (vec![("TERRACE_SUPABASE_URL", "abcd.supabase.co")], "TERRACE_SUPABASE_URL"),
        ] {
            assert_eq!(load(&Env(&env(&pairs))).unwrap_err().var, var, "{pairs:?}");
        }
        assert_eq!(load(&Env(&env(&[("TERRACE_BIND", ":0")]))).unwrap().bind.port(), 0);
        for nowait in ["nowait", "0"] {
            let c = load(&Env(&env(&[("TERRACE_DB_LOCK_WAIT", nowait)]))).unwrap();
            assert_eq!(c.policies.lock, LockPolicy::NoWait, "{nowait}");
        }
        let c = load(&Env(&env(&[("TERRACE_DB_LOCK_WAIT", "40ms")]))).unwrap();
        assert_eq!(c.policies.lock, LockPolicy::Timeout(Duration::from_millis(40)));
        assert_eq!(
            load(&Env(&env(&[("TERRACE_DB_LOCK_WAIT", "later")]))).unwrap_err().var,
            "TERRACE_DB_LOCK_WAIT"
        );
    }
}
