//! The simulator run as a test: fixed seeds (split so that each test stays
//! well within the runner's per-test limit), a few random ones (printed),
//! replays, and the seeds of the bugs it found.

use terrace_dst::{Options, SeedReport, run_seed, run_seeds};

/// Tests simulate five minutes of traffic per seed (the command line ten).
pub fn options() -> Options {
    Options { minutes: 5, keep: 200 }
}

fn assert_ok(seeds: &[u64]) {
    let batch = run_seeds(seeds, 1, &options(), &|_| {});
    let failures: Vec<String> = batch.failures.iter().map(SeedReport::render).collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds broke an invariant:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

macro_rules! fixed {
    ($($name:ident: $from:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_ok(&($from..$from + SEEDS_PER_TEST).collect::<Vec<u64>>());
            }
        )*
    };
}

const SEEDS_PER_TEST: u64 = 50;

fixed! {
    fixed_seeds_0: 0;
    fixed_seeds_50: 50;
    fixed_seeds_100: 100;
    fixed_seeds_150: 150;
    fixed_seeds_200: 200;
    fixed_seeds_250: 250;
}

#[test]
fn a_few_random_seeds() {
    let seeds: Vec<u64> = (0..4).map(|_| fastrand::u64(..)).collect();
    // Printed, so that a failure can be replayed with `--seed`.
    println!("random seeds: {seeds:?}");
    assert_ok(&seeds);
}

#[test]
fn a_seed_replays_exactly_on_any_thread() {
    let opts = Options { keep: usize::MAX, ..options() };
    for seed in [3, 1_000_003] {
        let first = run_seed(seed, &opts);
        let again = run_seed(seed, &opts);
        assert!(first.events > 100, "seed {seed} did too little to compare: {}", first.line());
        assert_eq!(first.render(), again.render(), "seed {seed} ran two ways");
        assert_eq!(first, again);
        let elsewhere = std::thread::spawn(move || run_seed(seed, &opts)).join().expect("the run ends");
        assert_eq!(first, elsewhere, "seed {seed} ran another way on another thread");
    }
}
