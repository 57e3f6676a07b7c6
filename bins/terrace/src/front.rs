//! `terrace generate | status | cancel`: the terminal front end, a client of
//! a running Terrace (`--url`, or `TERRACE_URL`, default
//! `http://127.0.0.1:8000`; `--token`, or `TERRACE_TOKEN`).

use std::path::PathBuf;
use terrace::ConfigError;
use terrace_client::cli::{self, CliError};
use terrace_client::{Client, ClientConfig, WatchOptions};
use terrace_domain::GenerationStatus;
use uuid::Uuid;

/// Where the server is and who is asking.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The server's base URL.
    #[arg(long, env = "TERRACE_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// A bearer token (`terrace token`, or the demo token dev mode prints).
    #[arg(long, env = "TERRACE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// What the front end was asked to do.
#[derive(Debug)]
pub enum Action {
    Generate { address: String, areas: Vec<String>, out: PathBuf },
    Status(String),
    Cancel(String),
}

/// Runs an action; returns the exit code: 0 when the generation completed
/// (or the status/cancel call succeeded), 1 when it ended otherwise or a
/// call failed, 2 for bad usage.
pub fn run(target: Target, action: Action) -> i32 {
    let url = target.url;
    let Some(token) = target.token.filter(|t| !t.is_empty()) else {
        crate::config_exit(&ConfigError {
            var: "TERRACE_TOKEN",
            message: "is required (or --token): dev mode prints a demo token, `terrace token` mints one"
                .into(),
        })
    };
    let client = match Client::new(&url, &token, ClientConfig::interactive()) {
        Ok(c) => c,
        Err(e) => return fail(&CliError::Client(e)),
    };
    let result = crate::runtime().block_on(async {
        match action {
            Action::Generate { address, areas, out } => {
                let areas = areas.iter().map(|a| cli::parse_area(a)).collect::<Result<Vec<_>, _>>()?;
                let g = cli::generate(&client, address, areas, &out, WatchOptions::standard()).await?;
                Ok(g.status == GenerationStatus::Completed)
            }
            Action::Status(id) => cli::status(&client, parse_id(&id)?).await.map(|_| true),
            Action::Cancel(id) => cli::cancel(&client, parse_id(&id)?).await.map(|_| true),
        }
    });
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => fail(&e),
    }
}

fn parse_id(id: &str) -> Result<Uuid, CliError> {
    id.parse().map_err(|_| CliError::Usage(format!("{id:?} is not a generation id (a UUID)")))
}

fn fail(e: &CliError) -> i32 {
    eprintln!("terrace: {e}");
    if matches!(e, CliError::Usage(_)) { 2 } else { 1 }
}
