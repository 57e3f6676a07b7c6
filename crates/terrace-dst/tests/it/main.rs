//! The simulator as a test: fixed and random seeds, replays, and the seeds
//! of the bugs it found.

mod regressions;
mod seeds;
