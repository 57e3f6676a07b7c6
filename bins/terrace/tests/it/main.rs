//! End-to-end: the real `terrace` binary on port 0, Google played by the
//! simulator (in this test process, scripted per test), in memory and on
//! Postgres (`TERRACE_TEST_DATABASE_URL`, which `cargo xtask test` sets: a
//! Postgres test fails without it; each test gets a fresh database).

mod auth;
mod billing;
mod config;
mod embed;
mod faults;
mod flows;
mod front;
mod openapi;
mod overdue;
mod shutdown;
mod support;
mod validation;
