//! A small coverage-free mutation fuzzer for the parsers Terrace runs on
//! bytes from outside: the request bodies, the bearer token, Gemini's event
//! stream and Stripe's webhook signature ([`targets::TARGETS`]).
//!
//! Stable Rust, no instrumentation: inputs are mutated from a corpus
//! ([`mutate::Mutator`]), each runs under [`std::panic::catch_unwind`] and a
//! counting allocator ([`alloc::measure`]), and an input that panics, fails
//! a target's check or allocates more than its target's [`targets::Bound`]
//! is a failure, written to `fuzz/crashes/<target>/`. Inputs that make a
//! target do something it had not done yet (a new [`targets::Outcome`]) join
//! the corpus. `docs/FUZZING.md` says how to run it and replay.
//!
//! The corpora (`fuzz/corpus/<target>/`) and the inputs of fixed bugs
//! (`fuzz/regressions/<target>/`) are replayed by this crate's test
//! (`tests/replay.rs`), under the same bounds.

pub mod alloc;
pub mod mutate;
pub mod targets;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use targets::{Outcome, Target, fnv};

/// The most files a target's corpus keeps.
pub const CORPUS_CAP: usize = 200;

/// `fuzz/` at the root of the workspace.
pub fn fuzz_dir() -> PathBuf {
    let krate = Path::new(env!("CARGO_MANIFEST_DIR"));
    krate.ancestors().nth(2).unwrap_or(krate).join("fuzz")
}

/// The inputs in `dir`, by name: every file but notes (`*.md`) and hidden
/// files. A missing directory has none.
pub fn inputs_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            !name.starts_with('.') && !name.ends_with(".md")
        })
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    out.sort();
    out
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    static IN_CHECK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the panics of inputs quiet and remembered: the runner reports
/// them itself, with the input. Other panics are printed as before. Call
/// once, before fuzzing or replaying.
pub fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CHECK.try_with(|c| c.get()).unwrap_or(false) {
                return before(info);
            }
            let payload = info.payload();
            let message = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
                (Some(s), _) => (*s).to_owned(),
                (_, Some(s)) => s.clone(),
                _ => "a panic without a message".to_owned(),
            };
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(format!("{message} (at {at})")));
        }));
    });
}

/// Why an input failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It panicked, or a check of the target failed.
    Panic(String),
    /// It allocated more than the target's bound.
    Allocation { allocated: usize, limit: usize, peak: usize },
}

impl Failure {
    /// What tells one failure from another: where it panicked, or that the
    /// bound was crossed.
    pub fn signature(&self) -> String {
        match self {
            Failure::Panic(m) => m.rsplit_once(" (at ").map_or(m.as_str(), |(_, at)| at).to_owned(),
            Failure::Allocation { .. } => "allocation bound".to_owned(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panicked: {m}"),
            Failure::Allocation { allocated, limit, peak } => {
                write!(f, "allocated {allocated} bytes (at most {peak} at once), over the bound of {limit}")
            }
        }
    }
}

/// One input that passed.
#[derive(Debug, Clone, Copy)]
pub struct Passed {
    pub outcome: Outcome,
    pub usage: alloc::Usage,
    pub elapsed: Duration,
}

/// Runs one input through `target` under its bound.
pub fn check(target: &Target, input: &[u8]) -> Result<Passed, Failure> {
    let _ = LAST_PANIC.try_with(|p| p.borrow_mut().take());
    let _ = IN_CHECK.try_with(|c| c.set(true));
    let start = Instant::now();
    let (result, usage) = alloc::measure(|| (target.run)(input));
    let elapsed = start.elapsed();
    let _ = IN_CHECK.try_with(|c| c.set(false));
    match result {
        Err(payload) => {
            let remembered = LAST_PANIC.try_with(|p| p.borrow_mut().take()).ok().flatten();
            let message = remembered
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(Failure::Panic(message))
        }
        Ok(outcome) => {
            let limit = target.bound.limit(input.len());
            if usage.allocated > limit {
                return Err(Failure::Allocation { allocated: usage.allocated, limit, peak: usage.peak });
            }
            Ok(Passed { outcome, usage, elapsed })
        }
    }
}

/// How to fuzz.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Stop after this long…
    pub duration: Duration,
    /// …or after this many inputs, whichever comes first.
    pub runs: u64,
    /// `fuzz/`: corpus, regressions and crashes.
    pub dir: PathBuf,
    /// Write up to this many of the inputs found to the corpus.
    pub save: usize,
    /// An input running longer than this is a hang: recorded, and the run
    /// ends at once.
    pub hang: Duration,
    /// Print progress every this long.
    pub every: Duration,
}

/// A recorded failure.
#[derive(Debug, Clone)]
pub struct Found {
    pub failure: Failure,
    pub input: Vec<u8>,
    pub file: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub execs: u64,
    pub elapsed: Duration,
    /// Inputs in memory at the end: the corpus read plus those found.
    pub corpus: usize,
    /// Inputs the run found (a new outcome each).
    pub found: usize,
    /// Inputs written to the corpus.
    pub saved: usize,
    pub failures: Vec<Found>,
    /// The slowest passing input, and how long it took.
    pub slowest: Duration,
    pub slowest_input: Vec<u8>,
    /// The most bytes one passing input allocated, and its length.
    pub most_allocated: (usize, usize),
    /// The input closest to the bound: its share of the bound in percent.
    pub closest_to_bound: u64,
}

impl Report {
    pub fn execs_per_sec(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn hex(n: u64) -> String {
    format!("{n:016x}")
}

/// Writes a failing input and a note on it to `fuzz/crashes/<target>/`.
fn record(dir: &Path, target: &Target, input: &[u8], why: &str, seed: u64, exec: u64) -> PathBuf {
    let crashes = dir.join("crashes").join(target.name);
    let _ = std::fs::create_dir_all(&crashes);
    let file = crashes.join(format!("{}-seed{seed}", hex(fnv(input))));
    let _ = std::fs::write(&file, input);
    let note = format!(
        "target: {}\nseed: {seed}\ninput number: {exec}\nlength: {}\nfailure: {why}\nbound: {}\nreplay: cargo xtask fuzz replay {} {}\n",
        target.name,
        input.len(),
        target.bound,
        target.name,
        file.display()
    );
    let _ = std::fs::write(file.with_extension("md"), note);
    file
}

/// The tokens of `fuzz/dictionaries/<target>.dict`, or none. A dictionary
/// that does not read is said so, and not used.
pub fn dictionary(target: &Target, dir: &Path) -> Vec<Vec<u8>> {
    let file = dir.join("dictionaries").join(format!("{}.dict", target.name));
    let Ok(text) = std::fs::read_to_string(&file) else { return Vec::new() };
    mutate::dictionary(&text).unwrap_or_else(|e| {
        eprintln!("terrace-fuzz: {}: {e}; fuzzing without it", file.display());
        Vec::new()
    })
}

/// Shared with the watchdog: the input running now and since when.
struct Running {
    /// Milliseconds since the run began when the current input started, or 0.
    since: AtomicU64,
    input: Mutex<Vec<u8>>,
    done: AtomicBool,
}

/// Fuzzes `target` as `opts` says.
pub fn fuzz(target: &Target, opts: &Options) -> Report {
    (target.init)();
    let mut report = Report::default();
    let begun = Instant::now();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for sub in ["corpus", "regressions"] {
        corpus.extend(inputs_in(&opts.dir.join(sub).join(target.name)).into_iter().map(|(_, b)| b));
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    // Outcome → the smallest input that had it; `true` if found in this run.
    let mut seen: HashMap<Outcome, (usize, bool)> = HashMap::new();
    let mut failures_by_signature: HashMap<String, usize> = HashMap::new();

    let running = Arc::new(Running {
        since: AtomicU64::new(0),
        input: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
    });
    let watchdog = {
        let running = Arc::clone(&running);
        let (dir, target, seed, hang) = (opts.dir.clone(), *target, opts.seed, opts.hang);
        std::thread::spawn(move || {
            while !running.done.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(200));
                let since = running.since.load(Ordering::Relaxed);
                let now = begun.elapsed().as_millis() as u64;
                if since != 0 && now.saturating_sub(since) > hang.as_millis() as u64 {
                    let input = running.input.lock().map(|i| i.clone()).unwrap_or_default();
                    let why = format!("hang: still running after {} ms", now - since);
                    let file = record(&dir, &target, &input, &why, seed, 0);
                    eprintln!("terrace-fuzz: {}: {why}; input written to {}", target.name, file.display());
                    std::process::exit(3);
                }
            }
        })
    };

    let mut mutator = mutate::Mutator::new(opts.seed, dictionary(target, &opts.dir), target.max_len);
    let mut input = Vec::with_capacity(target.max_len);
    let mut last_print = Instant::now();
    let mut exec: u64 = 0;
    let mut run_one = |input: &[u8], exec: u64, report: &mut Report| -> Option<Outcome> {
        if let Ok(mut i) = running.input.lock() {
            i.clear();
            i.extend_from_slice(input);
        }
        running.since.store(begun.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
        let result = check(target, input);
        running.since.store(0, Ordering::Relaxed);
        report.execs += 1;
        match result {
            Ok(p) => {
                if p.elapsed > report.slowest {
                    report.slowest = p.elapsed;
                    report.slowest_input = input.to_vec();
                }
                if p.usage.allocated > report.most_allocated.0 {
                    report.most_allocated = (p.usage.allocated, input.len());
                }
                let share = p.usage.allocated as u64 * 100 / target.bound.limit(input.len()).max(1) as u64;
                report.closest_to_bound = report.closest_to_bound.max(share);
                Some(p.outcome)
            }
            Err(failure) => {
                let signature = failure.signature();
                let n = failures_by_signature.entry(signature).or_insert(0);
                *n += 1;
                if *n == 1 && report.failures.len() < 50 {
                    let why = failure.to_string();
                    let file = record(&opts.dir, target, input, &why, opts.seed, exec);
                    eprintln!(
                        "terrace-fuzz: {}: input {exec} {why}; written to {}",
                        target.name,
                        file.display()
                    );
                    report.failures.push(Found { failure, input: input.to_vec(), file });
                }
                None
            }
        }
    };

    // The corpus first, as it is.
    for (i, entry) in corpus.iter().enumerate() {
        if let Some(o) = run_one(entry, exec, &mut report) {
            let e = seen.entry(o).or_insert((i, false));
            if corpus[e.0].len() > entry.len() {
                e.0 = i;
            }
        }
        exec += 1;
    }

    while begun.elapsed() < opts.duration && exec < opts.runs {
        let fresh = target.generate.filter(|_| mutator.rng().u8(..) < 24);
        match fresh {
            Some(generate) => {
                let base = generate(mutator.rng());
                if mutator.rng().bool() {
                    input.clear();
                    input.extend_from_slice(&base);
                } else {
                    mutator.mutate(&base, &corpus, &mut input);
                }
            }
            None => {
                let base = mutator.rng().usize(0..corpus.len());
                mutator.mutate(&corpus[base], &corpus, &mut input);
            }
        }
        if let Some(o) = run_one(&input, exec, &mut report) {
            match seen.get_mut(&o) {
                None if corpus.len() < 20_000 => {
                    seen.insert(o, (corpus.len(), true));
                    corpus.push(input.clone());
                    report.found += 1;
                }
                // A smaller input that does the same replaces one found here.
                Some((i, true)) if input.len() < corpus[*i].len() => corpus[*i] = input.clone(),
                _ => {}
            }
        }
        exec += 1;
        if last_print.elapsed() >= opts.every {
            last_print = Instant::now();
            let secs = begun.elapsed().as_secs_f64();
            eprintln!(
                "terrace-fuzz: {}: {:>7.0}s  execs {:>10}  {:>8.0}/s  corpus {:>5}  found {:>4}  failures {}",
                target.name,
                secs,
                report.execs,
                report.execs as f64 / secs,
                corpus.len(),
                report.found,
                report.failures.len()
            );
        }
    }
    running.done.store(true, Ordering::Relaxed);
    watchdog.thread().unpark();
    let _ = watchdog.join();
    report.elapsed = begun.elapsed();
    report.corpus = corpus.len();

    // Not a failure: kept so that a slow input can be timed again
    // (`replay` prints how long it takes), since no bound is on time.
    if !report.slowest_input.is_empty() {
        let crashes = opts.dir.join("crashes").join(target.name);
        let _ = std::fs::create_dir_all(&crashes);
        let _ = std::fs::write(crashes.join(format!("slowest-seed{}", opts.seed)), &report.slowest_input);
    }

    if opts.save > 0 {
        let dir = opts.dir.join("corpus").join(target.name);
        let _ = std::fs::create_dir_all(&dir);
        let have = inputs_in(&dir).len();
        let mut new: Vec<&Vec<u8>> =
            seen.values().filter(|(_, found)| *found).map(|(i, _)| &corpus[*i]).collect();
        new.sort_by_key(|b| (b.len(), fnv(b)));
        for b in new.into_iter().take(opts.save.min(CORPUS_CAP.saturating_sub(have))) {
            let file = dir.join(hex(fnv(b)));
            if !file.exists() && std::fs::File::create(&file).and_then(|mut f| f.write_all(b)).is_ok() {
                report.saved += 1;
            }
        }
    }
    report
}

/// Replays every input of `fuzz/corpus/<target>/` and
/// `fuzz/regressions/<target>/`: the failures, by file.
pub fn replay(target: &Target, dir: &Path) -> (usize, Vec<(PathBuf, Failure)>) {
    (target.init)();
    let mut failures = Vec::new();
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        for (path, input) in inputs_in(&dir.join(sub).join(target.name)) {
            n += 1;
            if let Err(f) = check(target, &input) {
                failures.push((path, f));
            }
        }
    }
    (n, failures)
}
