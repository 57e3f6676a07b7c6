//! The in-memory adapter's integration tests.

mod conformance;
mod keys;
mod voids;
