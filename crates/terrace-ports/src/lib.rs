//! The ports: traits for everything Terrace's work touches outside itself.
//!
//! Adapters implement them (`terrace-google` for Maps and Gemini,
//! `terrace-postgres` and `terrace-memory` for the store, ledger and blobs);
//! `terrace-engine` drives them. Every method documents which error it MUST
//! return when, and what happens if its future is dropped.
//!
//! **Deadlines are the adapter's promise.** Every method returns within its
//! adapter's configured bounds (Maps timeout, model silence limit, pool acquire
//! plus statement timeout, blob timeout). Callers still wrap store calls in
//! [`terrace_domain::DbPolicy::call_timeout`] so that a broken promise cannot
//! hold them.
//!
//! With the `mock` feature every trait has a `mockall` mock (`MockGeocoder`, …).

mod billing;
mod google;
mod observe;
mod store;

pub use billing::*;
pub use google::*;
pub use observe::*;
pub use store::*;
