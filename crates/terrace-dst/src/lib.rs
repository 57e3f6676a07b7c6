//! A deterministic simulator of Terrace, as TigerBeetle's VOPR is of its
//! database: one seed gives one run, and a run that breaks an invariant is
//! replayed exactly from its seed.
//!
//! What is real: the engine ([`terrace_engine::Engine`] with its runner,
//! supervisor, claim, heartbeat and notification loops, and its
//! [`terrace_engine::Sweeper`]; a [`terrace_engine::Sweeper`] alone on
//! API-only instances), and the store rules (the in-memory store,
//! [`terrace_memory::MemoryStore`], which applies `terrace_domain::rules` and
//! the domain's transitions and credit moves). Several instances, each an
//! engine under its own worker id with its own clock, share one store and
//! one blob store.
//!
//! What is simulated: time (tokio's paused clock on a current-thread
//! runtime, so that the schedule is a function of the seed; the wall clocks
//! follow it from a fixed epoch and jump as the seed says); Google (each
//! call's behaviour drawn from the seed: success, every error class of the
//! ports, hangs, stalls, slow bodies, retry-after hints); the store's
//! faults (a wrapper that delays, refuses before the store, loses the
//! answer after it, hangs), in storms; the blob store's faults; crashes
//! (an incarnation's calls stop reaching anything and its tasks are stopped
//! without handing work back) and restarts with a new worker id; graceful
//! shutdowns; the users, admins and Stripe that drive it all through the
//! ports the API and the webhook use.
//!
//! After every step the invariants of [`check`] are checked; at the end the
//! run calms down and every generation must end.

mod check;
mod client;
mod clock;
mod shared;
mod store;
mod trace;
mod upstream;
mod world;

use std::cell::Cell;
use std::fmt::Write;
use std::sync::Once;
use std::time::{Duration, Instant};

pub use clock::SimClock;
pub use shared::{Stats, Violation};
pub use trace::clock as format_clock;

/// How a seed runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Minutes of virtual time of traffic, before the run calms down and
    /// drains.
    pub minutes: u64,
    /// Trace lines kept for the report (every event goes into the digest).
    pub keep: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { minutes: 10, keep: 300 }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub steps: u64,
    pub elapsed: Duration,
    pub instances: u32,
    pub users: u32,
    pub starts: u32,
    pub crashes: u32,
    pub shutdowns: u32,
    pub creates: u32,
    pub completed: u32,
    pub partial: u32,
    pub failed: u32,
    pub cancelled: u32,
    pub unfinished: u32,
    pub stats: Stats,
}

/// One seed's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub seed: u64,
    /// The first invariant broken, if one was.
    pub violation: Option<Violation>,
    /// The step it broke at (or the last step).
    pub step: u64,
    pub summary: Summary,
    /// A digest of every event of the run: equal digests, equal runs.
    pub digest: u64,
    pub events: u64,
    /// The last events, oldest first.
    pub trace: Vec<String>,
}

impl SeedReport {
    pub fn ok(&self) -> bool {
        self.violation.is_none()
    }

    /// One line: the seed, what it did, its digest.
    pub fn line(&self) -> String {
        let s = &self.summary;
        format!(
            "seed {}: {} — {} steps, {} virtual; {} instances ({} starts, {} crashes, {} shutdowns), {} users; \
             {} creates → {} completed, {} partially, {} failed, {} cancelled; store {} calls ({} faults), \
             upstream {} calls ({} faults), {} blob faults; {} events, digest {:016x}",
            self.seed,
            if self.ok() { "ok" } else { "VIOLATION" },
            s.steps,
            trace::clock(s.elapsed),
            s.instances,
            s.starts,
            s.crashes,
            s.shutdowns,
            s.users,
            s.creates,
            s.completed,
            s.partial,
            s.failed,
            s.cancelled,
            s.stats.store_calls,
            s.stats.store_faults,
            s.stats.upstream_calls,
            s.stats.upstream_faults,
            s.stats.blob_faults,
            self.events,
            self.digest,
        )
    }

    /// The report: its line, and for a broken invariant the step, the
    /// invariant, the events that led there and how to replay it.
    pub fn render(&self) -> String {
        let mut out = self.line();
        out.push('\n');
        if let Some(v) = &self.violation {
            let _ = writeln!(
                out,
                "  step {} at {}: {}: {}",
                self.step,
                trace::clock(self.summary.elapsed),
                v.invariant,
                v.detail
            );
            let _ = writeln!(out, "  the last {} of {} events:", self.trace.len(), self.events);
            for line in &self.trace {
                let _ = writeln!(out, "    {line}");
            }
            let _ = writeln!(out, "  replay: cargo xtask simulate --seed {}", self.seed);
        }
        out
    }
}

thread_local! {
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

/// Whether a task on this thread panicked since the run began.
fn panicked() -> bool {
    PANICKED.with(Cell::get)
}

/// Notes panics on the thread they happen on (the run's one thread), then
/// lets the previous hook report them.
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            previous(info);
        }));
    });
}

/// Runs one seed: its own current-thread runtime in paused time, the
/// engine's jitter seeded from it too.
pub fn run_seed(seed: u64, opts: &Options) -> SeedReport {
    watch_panics();
    PANICKED.with(|p| p.set(false));
    fastrand::seed(seed.rotate_left(17) ^ 0x7e44_ace0_5eed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    // Built inside the runtime, so that every instant is of its paused clock.
    let opts = *opts;
    let report = runtime.block_on(async move { world::Sim::new(seed, opts).run().await });
    drop(runtime);
    report
}

/// Runs one seed; a panic of the run itself (the simulator's, or one that
/// escaped the runtime) is a report too, not the end of the batch.
pub fn run_seed_caught(seed: u64, opts: &Options) -> SeedReport {
    std::panic::catch_unwind(|| run_seed(seed, opts)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        SeedReport {
            seed,
            violation: Some(Violation {
                invariant: "the run ends",
                detail: format!("it panicked: {detail}"),
            }),
            step: 0,
            summary: Summary::default(),
            digest: 0,
            events: 0,
            trace: Vec::new(),
        }
    })
}

/// What a batch of seeds came to.
#[derive(Debug, Clone)]
pub struct Batch {
    pub seeds: u64,
    pub failures: Vec<SeedReport>,
    pub wall: Duration,
    /// Virtual time simulated, all seeds together.
    pub simulated: Duration,
}

impl Batch {
    pub fn per_second(&self) -> f64 {
        self.seeds as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs `seeds` on `threads` threads (each seed on one thread, start to
/// end); `each` sees every report as it ends.
pub fn run_seeds(
    seeds: &[u64],
    threads: usize,
    opts: &Options,
    each: &(dyn Fn(&SeedReport) + Sync),
) -> Batch {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new((Vec::new(), Duration::ZERO));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(seed) = seeds.get(i) else { return };
                    let report = run_seed_caught(*seed, opts);
                    each(&report);
                    let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                    r.1 += report.summary.elapsed;
                    if !report.ok() {
                        r.0.push(report);
                    }
                }
            });
        }
    });
    let (mut failures, simulated) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort_by_key(|r| r.seed);
    Batch { seeds: seeds.len() as u64, failures, wall: started.elapsed(), simulated }
}

/// `simulate --seeds N [--from B] [--seed S [--trace]] [--minutes M] [--threads T] [--keep K]`:
/// runs N seeds from B (random unless given, and printed), or replays seed
/// S and prints its report in full (with `--trace`, every event, broken
/// invariant or not). Prints seeds per second. `Ok(false)`
/// when an invariant broke.
pub fn cli(args: &[String]) -> Result<bool, String> {
    let mut opts = Options::default();
    let (mut seeds, mut from, mut one, mut threads) = (None, None, None, None);
    let mut trace = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse().map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--seeds" => seeds = Some(value("--seeds")?),
            "--from" => from = Some(value("--from")?),
            "--seed" => one = Some(value("--seed")?),
            "--minutes" => opts.minutes = value("--minutes")?,
            "--threads" => threads = Some(value("--threads")? as usize),
            "--keep" => opts.keep = value("--keep")? as usize,
            "--trace" => trace = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(seed) = one {
        let started = Instant::now();
        if trace {
            opts.keep = usize::MAX;
        }
        let report = run_seed_caught(seed, &opts);
        print!("{}", report.render());
        if trace && report.ok() {
            report.trace.iter().for_each(|l| println!("    {l}"));
        }
        println!("1 seed in {:.2}s", started.elapsed().as_secs_f64());
        return Ok(report.ok());
    }
    let count = seeds.unwrap_or(100);
    let from = from.unwrap_or_else(|| fastrand::u64(..u64::MAX / 2));
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "simulating seeds {from}..{} ({count} seeds, {} virtual minutes of traffic each) on {threads} threads",
        from + count,
        opts.minutes
    );
    let done = std::sync::atomic::AtomicU64::new(0);
    let seeds: Vec<u64> = (from..from + count).collect();
    let batch = run_seeds(&seeds, threads, &opts, &|r| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if !r.ok() {
            print!("{}", r.render());
        } else if n % 1000 == 0 {
            println!("{n} seeds done");
        }
    });
    println!(
        "{} seeds in {:.1}s: {:.1} seeds/s ({:.0} virtual hours, {:.0}× real time); {} failed{}",
        batch.seeds,
        batch.wall.as_secs_f64(),
        batch.per_second(),
        batch.simulated.as_secs_f64() / 3600.0,
        batch.simulated.as_secs_f64() / batch.wall.as_secs_f64().max(1e-9),
        batch.failures.len(),
        if batch.failures.is_empty() {
            String::new()
        } else {
            format!(": {:?}", batch.failures.iter().map(|r| r.seed).collect::<Vec<_>>())
        }
    );
    Ok(batch.failures.is_empty())
}
