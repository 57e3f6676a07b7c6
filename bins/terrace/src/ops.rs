//! What the command line does besides serving, as functions another program
//! can call too: logging, signals, migrations and tokens.

use crate::AppError;
use crate::config::{self, ConfigError, Env, LogFormat};
use std::time::Duration;
use terrace_api::Jwt;
use terrace_domain::UserId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Logs to standard output, filtered by `TERRACE_LOG` (else `RUST_LOG`,
/// else `info`), as text or JSON lines.
pub fn init_logging(format: &LogFormat) {
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

/// Cancels `stop` at the first SIGTERM or SIGINT (the drain) and exits the
/// process with 130 at a second. Run it beside [`crate::App::serve`] (a
/// `select!` that ends when serving does); it never ends by itself.
pub async fn drain_on_signals(stop: CancellationToken) {
    wait_for_signal().await;
    info!("signal received: draining (a second signal exits at once)");
    stop.cancel();
    wait_for_signal().await;
    warn!("second signal: exiting now");
    std::process::exit(130);
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

/// Applies the pending migrations to `DATABASE_URL` within the database
/// bounds of the policies; returns the versions applied.
pub async fn migrate(env: &Env<'_>) -> Result<Vec<i32>, AppError> {
    let url = env.0.get("DATABASE_URL").filter(|u| !u.trim().is_empty()).ok_or_else(|| ConfigError {
        var: "DATABASE_URL",
        message: "is required by `terrace migrate`".into(),
    })?;
    let policies = config::policies(env)?;
    terrace_postgres::migrate(url, &policies).await.map_err(|e| AppError::start("applying migrations", e))
}

/// A bearer token for `user` from `TERRACE_JWT_SECRET` (and
/// `TERRACE_JWT_AUDIENCE`), valid for `ttl` (like `30m` or `1h`).
pub fn mint_token(env: &Env<'_>, user: &str, admin: bool, ttl: &str) -> Result<String, ConfigError> {
    let secret = env.0.get("TERRACE_JWT_SECRET").filter(|s| !s.is_empty()).ok_or_else(|| ConfigError {
        var: "TERRACE_JWT_SECRET",
        message: "is required by `terrace token`".into(),
    })?;
    let user: UserId =
        user.parse().map_err(|_| ConfigError { var: "--user", message: "must be a UUID".into() })?;
    let ttl: Duration = humantime::parse_duration(ttl)
        .map_err(|_| ConfigError { var: "--ttl", message: "must be a duration like 30m or 1h".into() })?;
    let audience = env.0.get("TERRACE_JWT_AUDIENCE").map(|a| a.trim()).filter(|a| !a.is_empty());
    let jwt = Jwt::new(secret.as_bytes()).with_audience(audience.unwrap_or(terrace_api::DEFAULT_AUDIENCE));
    Ok(jwt.mint(user, admin, ttl))
}

/// What dev mode prints on start: the demo token and how to use it.
pub fn dev_banner(user: UserId, token: &str, url: &str) -> String {
    format!(
        "\nTERRACE_JWT_SECRET is unset: made a random one for this run. A demo token for user {user}, valid 24h:\n\n  {token}\n\nOpen the web app, signed in as this user: {url}/\n\nTry the terminal front end:\n\n  export TERRACE_URL={url} TERRACE_TOKEN={token}\n  terrace generate --address '1600 Amphitheatre Parkway, Mountain View, CA' --area front_yard:japanese_zen --area backyard:mediterranean\n\nor curl:\n\n  curl -s -X POST {url}/v1/generations -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{\"address\":\"1600 Amphitheatre Parkway, Mountain View, CA\",\"areas\":[{{\"area\":\"front_yard\",\"style\":\"japanese_zen\"}}]}}'\n"
    )
}
