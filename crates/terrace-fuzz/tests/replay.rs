//! Replays every input of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through its target under the target's
//! allocation bound, and runs each target's fuzzer for a few hundred inputs
//! from a fixed seed. Fast: the whole file takes well under a second in
//! release, a few seconds in debug.

use std::time::Duration;
use terrace_fuzz::targets::{Bound, Outcome, TARGETS, Target, target};
use terrace_fuzz::{Failure, Options, alloc, check, fuzz, fuzz_dir, quiet_panics, replay};

#[global_allocator]
static COUNTING: alloc::Counting = alloc::Counting;

fn replays(name: &str) {
    assert!(alloc::installed(), "the counting allocator must be installed, or every bound holds vacuously");
    quiet_panics();
    let t = target(name).expect("a target");
    let (n, failures) = replay(t, &fuzz_dir());
    assert!(n >= 10, "{name}: only {n} inputs in fuzz/corpus/{name} and fuzz/regressions/{name}");
    let failures: Vec<String> = failures.iter().map(|(p, f)| format!("{}: {f}", p.display())).collect();
    assert!(failures.is_empty(), "{name}: {failures:#?}");
}

#[test]
fn create_body_replays() {
    replays("create_body");
}

#[test]
fn other_bodies_replay() {
    replays("other_bodies");
}

#[test]
fn jwt_replays() {
    replays("jwt");
}

#[test]
fn jwt_claims_replay() {
    replays("jwt_claims");
}

#[test]
fn gemini_sse_replays() {
    replays("gemini_sse");
}

#[test]
fn stripe_signature_replays() {
    replays("stripe_signature");
}

#[test]
fn every_target_has_a_test_here_a_bound_and_a_dictionary() {
    let here = include_str!("replay.rs");
    for t in TARGETS {
        assert!(here.contains(&format!("replays(\"{}\")", t.name)), "{} is not replayed here", t.name);
        assert!(t.bound.per_byte > 0 && t.bound.fixed > 0 && !t.bound_why.is_empty(), "{}", t.name);
        let file = fuzz_dir().join("dictionaries").join(format!("{}.dict", t.name));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let tokens =
            terrace_fuzz::mutate::dictionary(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(tokens.len() >= 10, "{}: {} tokens", file.display(), tokens.len());
    }
}

#[test]
fn each_target_survives_a_short_run_from_a_fixed_seed() {
    assert!(alloc::installed());
    quiet_panics();
    for t in TARGETS {
        let opts = Options {
            seed: 20_260_101,
            duration: Duration::from_secs(10),
            runs: 400,
            dir: fuzz_dir(),
            save: 0,
            hang: Duration::from_secs(10),
            every: Duration::from_secs(3600),
        };
        let r = fuzz(t, &opts);
        assert!(r.execs >= 400, "{}: {} inputs", t.name, r.execs);
        let failures: Vec<String> =
            r.failures.iter().map(|f| format!("{}: {}", f.file.display(), f.failure)).collect();
        assert!(failures.is_empty(), "{}: {failures:#?}", t.name);
    }
}

fn allocates_a_mebibyte(_: &[u8]) -> Outcome {
    std::hint::black_box(vec![1u8; 1 << 20]);
    Outcome::default()
}

fn panics(_: &[u8]) -> Outcome {
    panic!("a check failed")
}

fn fake(run: fn(&[u8]) -> Outcome) -> Target {
    Target {
        name: "fake",
        about: "",
        bound: Bound { per_byte: 8, fixed: 64 * 1024 },
        bound_why: "",
        max_len: 16,
        run,
        generate: None,
        init: || {},
    }
}

#[test]
fn an_input_over_its_bound_or_panicking_is_a_failure() {
    assert!(alloc::installed());
    quiet_panics();
    match check(&fake(allocates_a_mebibyte), b"x") {
        Err(Failure::Allocation { allocated, limit, .. }) => {
            assert!(allocated >= 1 << 20 && limit == 8 + 64 * 1024, "{allocated} {limit}")
        }
        other => panic!("{other:?}"),
    }
    match check(&fake(panics), b"x") {
        Err(Failure::Panic(m)) => assert!(m.contains("a check failed") && m.contains("replay.rs"), "{m}"),
        other => panic!("{other:?}"),
    }
}
