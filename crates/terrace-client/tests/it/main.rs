//! The client against a scripted server over real loopback HTTP: create
//! retries with one idempotency key, and every way a watch can end.

mod server;
mod watch;
