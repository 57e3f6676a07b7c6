//! The Postgres adapter's integration tests, on a real Postgres that
//! `cargo xtask test` starts (`TERRACE_TEST_DATABASE_URL`). Each test gets a
//! fresh database.

mod bounds;
mod conformance;
mod listener;
mod migrations;
mod pipelined;
mod reads;
mod schema;
mod support;
mod together;
mod work;
