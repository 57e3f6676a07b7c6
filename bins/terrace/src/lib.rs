//! Terrace as a library: [`config::load`] reads an instance's configuration
//! (CONTRACT §2) from an environment, [`App::build`] wires it (the store,
//! Google or its simulator, Stripe or its simulator, the engine, the API)
//! and binds, and [`App::serve`] serves it until a token is cancelled, then
//! drains within the grace. The `terrace` binary is this plus argument
//! parsing, signals and exit codes; another Rust service can embed an
//! instance the same way:
//!
//! ```no_run
//! # async fn run() -> Result<(), terrace::AppError> {
//! use std::collections::HashMap;
//! let vars: HashMap<String, String> = std::env::vars().collect();
//! let cfg = terrace::config::load(&terrace::config::Env(&vars))?;
//! let app = terrace::App::build(cfg).await?;
//! let stop = tokio_util::sync::CancellationToken::new();
//! // … cancel `stop` when the host service shuts down …
//! app.serve(stop).await
//! # }
//! ```

mod app;
pub mod config;
mod google;
mod ops;
mod stripe;

pub use app::{App, AppError};
pub use config::{Config, ConfigError};
pub use ops::{dev_banner, drain_on_signals, init_logging, migrate, mint_token};
