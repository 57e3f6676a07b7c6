//! `cargo xtask simulate --seeds N [--from B] [--minutes M] [--threads T]`
//! and `cargo xtask simulate --seed S [--trace] [--minutes M]`: the
//! deterministic simulator of `crates/terrace-dst` (docs/SIMULATION.md).
//! N seeds from B (random and printed unless given) on every core, or one
//! seed replayed with its report; prints seeds per second. Fails when an
//! invariant broke.

use anyhow::{Context, Result, bail};
use std::process::Command;

const USAGE: &str = "usage: cargo xtask simulate --seeds N [--from B] [--minutes M] [--threads T] \
                     | --seed S [--trace] [--minutes M]";

pub fn run(args: &[String]) -> Result<()> {
    // The simulator is CPU-bound: run it optimised, as loadtest and bench are.
    if cfg!(debug_assertions) {
        let status = Command::new("cargo")
            .args(["run", "--release", "--quiet", "--locked", "-p", "xtask", "--", "simulate"])
            .args(args)
            .status()
            .context("running the optimised xtask")?;
        if !status.success() {
            bail!("simulate failed ({status})");
        }
        return Ok(());
    }
    match terrace_dst::cli(args) {
        Ok(true) => Ok(()),
        Ok(false) => bail!("an invariant broke: the seed, the step and the events that led there are above"),
        Err(e) => bail!("{e}\n{USAGE}"),
    }
}
