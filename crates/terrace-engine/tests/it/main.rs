//! The engine under faults, in paused time: minutes of deadlines run in
//! milliseconds, and elapsed times are exact.

mod fake;
mod scenarios;
mod worker;
