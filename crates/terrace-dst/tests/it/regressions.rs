//! Seeds that found bugs, kept as they were found (ten minutes of traffic
//! each, as `cargo xtask simulate` runs them).

use terrace_dst::{Options, run_seed};

fn assert_seed(seed: u64) {
    let report = run_seed(seed, &Options { minutes: 10, keep: 200 });
    assert!(report.ok(), "{}", report.render());
}

/// Broke "a drained shutdown leaves no task": `Engine::shutdown` answered
/// `drained: true` while its sweeper's `end_overdue` still hung in a
/// storm, because it dropped the sweeper's own report.
#[test]
fn a_shutdown_drained_only_once_its_sweeper_has() {
    assert_seed(1);
}

/// Broke "work a live instance holds runs there": a claim reached the store
/// in a storm and its answer was lost, so the instance held a lease it ran
/// nothing for, and its heartbeats renewed that lease until the deadline.
#[test]
fn work_held_after_a_claim_whose_answer_was_lost_is_run() {
    assert_seed(35);
}

/// Broke "work a live instance holds runs there": in a storm an
/// instance's heartbeats failed, its own claim loop took its expired lease
/// as a new attempt while the old attempt still ran (so the supervisor
/// refused to start it), and its heartbeats then renewed the new attempt's
/// lease, which nothing ran, until the deadline.
#[test]
fn work_held_after_claiming_its_own_expired_lease_is_run() {
    assert_seed(55);
}
