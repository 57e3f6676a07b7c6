//! Runs generations through the ports, under every deadline, and keeps track
//! of them.
//!
//! - [`runner`]: takes one claimed generation to a terminal state: geocode
//!   once, then its areas concurrently (bounded), each doing imagery → design
//!   stream → store image → capture. Every call is under its deadline;
//!   retryable errors are retried with jittered backoff inside the area's
//!   deadline; whatever happens, every area's hold is captured or voided once.
//! - [`supervisor`]: the only way a generation's task is spawned; lists,
//!   counts and cancels them, and drains them on shutdown within a bound.
//! - [`Engine`]: an instance's worker: claims work (on wake and every sweep
//!   interval), renews its leases with one heartbeat statement, ends overdue
//!   work, and delivers cancellation to the task that runs it.
//! - [`Sweeper`]: the sweep alone, for instances that run no engine (role
//!   `api`), so that every instance ends overdue work.
//!
//! Time is tokio's (`tokio::time`), so tests pause it and run minutes of
//! deadlines in milliseconds.

pub mod retry;
pub mod runner;
pub mod supervisor;
mod worker;

use std::sync::Arc;
use terrace_ports::{BlobStore, Clock, DesignModel, GenerationStore, Geocoder, Imagery, Observer};

pub use supervisor::{ShutdownReport, StopReason, Supervisor, TaskInfo};
pub use worker::{Engine, Sweeper};

/// Everything the engine talks to.
#[derive(Clone)]
pub struct Ports {
    pub geocoder: Arc<dyn Geocoder>,
    pub imagery: Arc<dyn Imagery>,
    pub model: Arc<dyn DesignModel>,
    pub store: Arc<dyn GenerationStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub observer: Arc<dyn Observer>,
    /// The wall clock deadlines are stored in (the store's).
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("observer", &self.observer)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}
