//! `cargo xtask <task>`: the project's one entry point for checks.
//!
//! - `test [ARGS…]`: checks and tests the alert rules of `deploy/` with
//!   promtool, starts a throwaway Postgres, then runs every test with
//!   cargo-nextest (ARGS are passed on: `-p CRATE` narrows the run), then
//!   stops Postgres.
//! - `ci`: `cargo fmt --check`, `cargo clippy -D warnings`, then `test`:
//!   exactly what CI runs.
//! - `loadtest [--generations N --users U --latency-ms L --concurrency C]`:
//!   one instance on Postgres and the simulator, N concurrent generations;
//!   writes `target/loadtest/report.{md,json}`.
//! - `bench [--connections C --seconds T --warmup S --users U --out DIR
//!   --only create|status]`: one `api` instance on a durable Postgres, the
//!   server and Postgres pinned to their own CPUs; the create and status
//!   paths each for T seconds on C connections, against a pgbench replay of
//!   the same statements (the ceiling); writes `target/bench/report.{md,json}`.
//! - `chaos`: three instances on one Postgres and a simulator injecting
//!   faults; kills one instance mid-run and restarts it, restarts Postgres
//!   once, then checks that every hold resolved.
//! - `lb [--duration 60s --creators N --config FILE]`: three instances behind
//!   HAProxy (`deploy/haproxy.cfg`), traffic through it while each instance in
//!   turn is restarted with SIGTERM; passes only if no request failed, every
//!   event stream ended cleanly, and every generation and hold resolved.
//! - `e2e`: the web app in headless Chromium over WebDriver (chromedriver),
//!   against `terrace` in dev mode: every step with a bound, a keyboard-only
//!   path, phone and desktop widths; screenshots in `target/e2e/`.
//! - `simulate [--seeds N --from B | --seed S --trace] [--minutes M]`: the
//!   deterministic simulator (terrace-dst): the real engine and store rules
//!   under seeded faults, invariants checked after every step
//!   (`docs/SIMULATION.md`).
//! - `fuzz <list|TARGET [--minutes M --seed S …]|replay TARGET|all [FILE…]>`:
//!   the stable fuzzer of terrace-fuzz, optimised (`docs/FUZZING.md`).
//! - `postgres`: starts a throwaway Postgres and waits for Ctrl-C, printing
//!   its URL (for running single tests by hand).

mod bench;
mod chaos;
mod cluster;
mod e2e;
mod lb;
mod loadtest;
mod postgres;
mod simulate;

use anyhow::{Context, Result, bail};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    std::env::set_current_dir(workspace_root()).context("entering the workspace root")?;
    match task.as_str() {
        "test" => test(&rest),
        "ci" => {
            cmd("cargo", &["fmt", "--all", "--check"])?;
            cmd("cargo", &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
            test(&rest)
        }
        // The load driver shares the machine with what it measures: run it
        // optimised, so that it takes as little of the cores as it can.
        "loadtest" if cfg!(debug_assertions) => {
            let mut args = vec!["run", "--release", "--quiet", "--locked", "-p", "xtask", "--", "loadtest"];
            args.extend(rest.iter().map(String::as_str));
            cmd("cargo", &args)
        }
        "loadtest" => loadtest::run(&rest),
        "bench" if cfg!(debug_assertions) => {
            let mut args = vec!["run", "--release", "--quiet", "--locked", "-p", "xtask", "--", "bench"];
            args.extend(rest.iter().map(String::as_str));
            cmd("cargo", &args)
        }
        "bench" => bench::run(&rest),
        "chaos" => chaos::run(&rest),
        "lb" => lb::run(&rest),
        "e2e" => e2e::run(&rest),
        "simulate" => simulate::run(&rest),
        // Optimised, as its figures (executions per second) assume.
        "fuzz" => {
            let mut args = vec!["run", "--release", "--quiet", "--locked", "-p", "terrace-fuzz", "--"];
            args.extend(rest.iter().map(String::as_str));
            cmd("cargo", &args)
        }
        "postgres" => {
            let pg = postgres::TestPostgres::start()?;
            println!("TERRACE_TEST_DATABASE_URL={}", pg.url());
            println!("Postgres is running; press Enter to stop it.");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            Ok(())
        }
        _ => bail!("usage: cargo xtask <test|ci|loadtest|bench|chaos|lb|e2e|simulate|fuzz|postgres> [ARGS…]"),
    }
}

fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn test(extra: &[String]) -> Result<()> {
    alert_rules()?;
    let pg = postgres::TestPostgres::start()?;
    let profile = if std::env::var_os("CI").is_some() { "ci" } else { "default" };
    let mut args = vec!["nextest", "run", "--locked", "--no-fail-fast", "--profile", profile];
    // The whole workspace unless packages were named.
    if !extra.iter().any(|a| a == "-p" || a.starts_with("--package")) {
        args.push("--workspace");
    }
    args.extend(extra.iter().map(String::as_str));
    let status = Command::new("cargo")
        .args(&args)
        .env("TERRACE_TEST_DATABASE_URL", pg.url())
        .status()
        .context("running cargo nextest (install it with `cargo install cargo-nextest --locked`)")?;
    drop(pg);
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

/// Checks `deploy/alerts.yml` and runs its unit tests (`deploy/alerts.test.yml`)
/// with promtool.
fn alert_rules() -> Result<()> {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        bail!(
            "promtool not found: it checks and tests the alert rules in deploy/ (Debian: apt-get install prometheus; .ci/run installs it)"
        );
    }
    cmd("promtool", &["check", "rules", "deploy/alerts.yml"])?;
    cmd("promtool", &["test", "rules", "deploy/alerts.test.yml"])
}

pub(crate) fn cmd(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tidy;
