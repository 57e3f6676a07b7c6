//! `terrace-fuzz`: fuzz one target, or replay inputs through one.
//!
//! ```text
//! terrace-fuzz <target> [--minutes M | --seconds S] [--runs N] [--seed S] [--save N] [--hang-secs S] [--dir DIR]
//! terrace-fuzz replay <target|all> [FILE…]
//! terrace-fuzz list
//! ```
//!
//! Exits 1 when any input failed (a panic, a failed check, the allocation
//! bound crossed), 3 on a hang, 2 on a usage error.

use std::process::ExitCode;
use std::time::Duration;
use terrace_fuzz::targets::{TARGETS, Target, target};
use terrace_fuzz::{Options, alloc, check, fuzz, fuzz_dir, quiet_panics, replay};

#[global_allocator]
static COUNTING: alloc::Counting = alloc::Counting;

const USAGE: &str = "usage: terrace-fuzz <target> [--minutes M | --seconds S] [--runs N] [--seed S] [--save N] [--hang-secs S] [--dir DIR]
       terrace-fuzz replay <target|all> [FILE...]
       terrace-fuzz list";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("terrace-fuzz: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn named(name: &str) -> Result<&'static Target, String> {
    target(name).ok_or_else(|| {
        let all: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
        format!("no target {name:?}; the targets are {}", all.join(", "))
    })
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> Result<T, String> {
    value.and_then(|v| v.parse().ok()).ok_or_else(|| format!("{flag} takes a number"))
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    if !alloc::installed() {
        return Err("the counting allocator is not installed".into());
    }
    quiet_panics();
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some("list") => {
            for t in TARGETS {
                println!("{}: {}\n  bound: {}: {}\n", t.name, t.about, t.bound, t.bound_why);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("replay") => {
            let which = args.get(1).ok_or("replay needs a target (or all)")?;
            let files = &args[2..];
            if !files.is_empty() {
                let t = named(which)?;
                (t.init)();
                let mut failed = false;
                for f in files {
                    let input = std::fs::read(f).map_err(|e| format!("{f}: {e}"))?;
                    match check(t, &input) {
                        Ok(p) => println!(
                            "{f}: ok (outcome {:016x}, {} bytes, allocated {} of at most {}, peak {}, {:?})",
                            p.outcome.0,
                            input.len(),
                            p.usage.allocated,
                            t.bound.limit(input.len()),
                            p.usage.peak,
                            p.elapsed
                        ),
                        Err(e) => {
                            failed = true;
                            println!("{f}: FAILED: {e}");
                        }
                    }
                }
                return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
            }
            let targets: Vec<&Target> =
                if which == "all" { TARGETS.iter().collect() } else { vec![named(which)?] };
            let mut failed = false;
            for t in targets {
                let (n, failures) = replay(t, &fuzz_dir());
                println!("{}: {n} inputs replayed, {} failed", t.name, failures.len());
                for (path, f) in failures {
                    failed = true;
                    println!("  {}: {f}", path.display());
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Some(name) => {
            let t = named(name)?;
            let mut opts = Options {
                seed: 1,
                duration: Duration::from_secs(60),
                runs: u64::MAX,
                dir: fuzz_dir(),
                save: 0,
                hang: Duration::from_secs(10),
                every: Duration::from_secs(30),
            };
            let mut i = 1;
            while i < args.len() {
                let value = args.get(i + 1);
                match args[i].as_str() {
                    "--minutes" => {
                        opts.duration = Duration::from_secs_f64(number::<f64>("--minutes", value)? * 60.0)
                    }
                    "--seconds" => opts.duration = Duration::from_secs_f64(number("--seconds", value)?),
                    "--runs" => opts.runs = number("--runs", value)?,
                    "--seed" => opts.seed = number("--seed", value)?,
                    "--save" => opts.save = number("--save", value)?,
                    "--dir" => opts.dir = value.ok_or("--dir takes a directory")?.into(),
                    "--hang-secs" => opts.hang = Duration::from_secs_f64(number("--hang-secs", value)?),
                    other => return Err(format!("unknown argument {other:?}")),
                }
                i += 2;
            }
            let r = fuzz(t, &opts);
            println!(
                "{}: seed {}, {:.1} min, {} execs, {:.0} execs/s, corpus {} ({} found, {} saved), failures {}, slowest {:?}, most allocated {} bytes for {} input bytes, closest to the bound {}% ({})",
                t.name,
                opts.seed,
                r.elapsed.as_secs_f64() / 60.0,
                r.execs,
                r.execs_per_sec(),
                r.corpus,
                r.found,
                r.saved,
                r.failures.len(),
                r.slowest,
                r.most_allocated.0,
                r.most_allocated.1,
                r.closest_to_bound,
                t.bound,
            );
            for f in &r.failures {
                println!("  {}: {}", f.file.display(), f.failure);
            }
            Ok(if r.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
