//! `terrace`: the service's command line. `serve` (the default) builds an
//! instance from the environment ([`terrace::App`]) and drains it on a
//! signal; `migrate`, `token`, and the terminal front end of a running
//! server: `generate`, `status`, `cancel`. Exit codes: 0 done, 1 failed,
//! 2 bad configuration or usage, 130 a second signal.

mod front;

use clap::{Parser, Subcommand};
use std::collections::HashMap;
use terrace::config::{self, Env, LogFormat};
use terrace::{App, AppError, ConfigError};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

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

fn config_exit(e: &ConfigError) -> ! {
    eprintln!("terrace: {e}");
    std::process::exit(EXIT_CONFIG)
}

fn main() {
    let cli = Cli::parse();
    let vars: HashMap<String, String> = std::env::vars().collect();
    let env = Env(&vars);
    let code = match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, admin, ttl } => match terrace::mint_token(&env, &user, admin, &ttl) {
            Ok(token) => {
                println!("{token}");
                0
            }
            Err(e) => config_exit(&e),
        },
        Command::Generate { address, areas, out, target } => {
            front::run(target, front::Action::Generate { address, areas, out })
        }
        Command::Status { id, target } => front::run(target, front::Action::Status(id)),
        Command::Cancel { id, target } => front::run(target, front::Action::Cancel(id)),
        Command::Migrate => {
            terrace::init_logging(&LogFormat::default());
            match runtime().block_on(terrace::migrate(&env)) {
                Ok(applied) => {
                    info!(?applied, "migrations applied");
                    0
                }
                Err(AppError::Config(e)) => config_exit(&e),
                Err(e) => {
                    error!(error = %e, "migration failed");
                    1
                }
            }
        }
        Command::Serve => {
            let cfg = config::load(&env).unwrap_or_else(|e| config_exit(&e));
            terrace::init_logging(&cfg.log_format);
            match runtime().block_on(serve(cfg)) {
                Ok(()) => 0,
                Err(AppError::Config(e)) => config_exit(&e),
                Err(e) => {
                    error!(error = %e, "terrace stopped");
                    1
                }
            }
        }
    };
    std::process::exit(code)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the tokio runtime starts")
}

/// Builds the instance, says how to reach it in dev mode, and serves it
/// until a signal: the first drains, a second exits at once.
async fn serve(cfg: config::Config) -> Result<(), AppError> {
    let app = App::build(cfg).await?;
    if let Some((user, token)) = app.demo() {
        println!("{}", terrace::dev_banner(user, token, &app.local_url()));
    }
    let stop = CancellationToken::new();
    tokio::select! {
        served = app.serve(stop.clone()) => served,
        () = terrace::drain_on_signals(stop.clone()) => unreachable!("it exits the process instead"),
    }
}
