//! The rules every store applies to leases, claims, the sweep, fenced writes
//! and paging, written once. Each adapter persists what these decide: the
//! memory store calls them; the Postgres store's statements say the same in
//! SQL (each names the rule it follows), and the conformance suite holds
//! both to it.

use crate::credits::{CreditSource, HoldState};
use crate::error::{ErrorCode, Failure, StoreError};
use crate::input::AreaKind;
use crate::state::{AreaStatus, Generation, GenerationStatus};
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// When a lease taken or renewed at `now` runs out: one TTL from now, but
/// never more than one TTL past the deadline, so that a stuck worker that
/// keeps heartbeating cannot keep overdue work (and its holds) forever.
pub fn lease_expiry(now: DateTime<Utc>, deadline_at: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    now.min(deadline_at) + delta(ttl)
}

/// Whether a lease that runs out at `expires` still holds at `now`.
pub fn lease_holds(expires: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires.is_some_and(|e| e > now)
}

/// Whether a worker may claim the generation now: it is unfinished, nobody
/// holds a live lease on it, and its deadline has not passed. Claims take
/// the oldest first (creation order).
pub fn claimable(
    status: GenerationStatus,
    lease_expires: Option<DateTime<Utc>>,
    deadline_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    !status.is_terminal() && !lease_holds(lease_expires, now) && deadline_at > now
}

/// Whether the sweep ends the generation now: unfinished, past its
/// deadline, and no live lease (a live lease is its worker's to end). The
/// sweep takes the earliest deadline first.
pub fn overdue(
    status: GenerationStatus,
    lease_expires: Option<DateTime<Utc>>,
    deadline_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    !status.is_terminal() && deadline_at <= now && !lease_holds(lease_expires, now)
}

/// Whether the generation counts as stuck (`terrace_generations_stuck`):
/// pending or processing past its deadline plus one lease TTL.
pub fn stuck(
    status: GenerationStatus,
    deadline_at: DateTime<Utc>,
    ttl: Duration,
    now: DateTime<Utc>,
) -> bool {
    !status.is_terminal() && deadline_at + delta(ttl) < now
}

/// Checks a worker's write against the generation it fences: `Finished` if
/// the generation is terminal, `LeaseLost` unless the lease (attempt and
/// owner) is still the one in force.
pub fn check_fence(
    status: GenerationStatus,
    attempt: u32,
    owner: Option<&str>,
    lease_attempt: u32,
    lease_owner: &str,
) -> Result<(), StoreError> {
    if status.is_terminal() {
        return Err(StoreError::Finished);
    }
    if attempt != lease_attempt || owner != Some(lease_owner) {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

/// The worker's final write: ends every unfinished area with `unfinished`
/// and settles. A status that cannot end an area (`pending`, `processing`)
/// leaves the generation unsettled, which is refused, not written.
pub fn finish(
    g: &mut Generation,
    unfinished: AreaStatus,
    failure: &Failure,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if g.close(unfinished, failure, now) {
        Ok(())
    } else {
        Err(StoreError::Internal {
            detail: format!("cannot end unfinished areas as {}", unfinished.as_str()),
        })
    }
}

/// One hold a write resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub area: AreaKind,
    pub source: CreditSource,
    /// `Captured` or `Voided`.
    pub to: HoldState,
    /// Why a voided hold was voided.
    pub reason: Option<ErrorCode>,
}

/// The holds that `before` → `after` resolved, in area order: what a store
/// books in the ledger and a fenced write reports back.
pub fn resolutions(before: &Generation, after: &Generation) -> Vec<Resolution> {
    before
        .areas
        .iter()
        .zip(&after.areas)
        .filter(|(b, a)| b.hold == HoldState::Held && a.hold != HoldState::Held)
        .map(|(_, a)| Resolution {
            area: a.kind(),
            source: a.hold_source,
            to: a.hold,
            reason: (a.hold == HoldState::Voided)
                .then(|| a.error.as_ref().map_or(ErrorCode::Internal, |e| e.code)),
        })
        .collect()
}

/// A page cursor as the stores give them: the position of the last item.
pub fn parse_cursor(cursor: Option<&str>) -> Result<Option<i64>, StoreError> {
    cursor.map(|c| c.parse::<i64>().map_err(|_| StoreError::InvalidCursor)).transpose()
}

/// Cuts `items` (fetched as `limit + 1`, newest first) to a page: the cursor
/// of the next page is the position of its last item, when there is more.
pub fn page<T>(mut items: Vec<T>, limit: usize, position: impl Fn(&T) -> i64) -> (Vec<T>, Option<String>) {
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|i| position(i).to_string()).unwrap_or_default()
    });
    (items, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_lease_never_reaches_past_the_deadline_by_more_than_one_ttl() {
        let ttl = Duration::from_secs(30);
        assert_eq!(lease_expiry(t(0), t(100), ttl), t(30));
        assert_eq!(lease_expiry(t(90), t(100), ttl), t(120));
        assert_eq!(lease_expiry(t(500), t(100), ttl), t(130), "a heartbeat past the deadline renews nothing");
    }

    #[test]
    fn claims_sweeps_and_stuck_work_follow_the_lease_and_the_deadline() {
        use GenerationStatus::*;
        let live = Some(t(50));
        assert!(claimable(Pending, None, t(100), t(10)));
        assert!(!claimable(Processing, live, t(100), t(10)), "a live lease is its worker's");
        assert!(claimable(Processing, live, t(100), t(50)), "an expired lease is free");
        assert!(!claimable(Pending, None, t(100), t(100)), "past the deadline nothing is claimed");
        assert!(!claimable(Completed, None, t(100), t(10)));
        assert!(overdue(Pending, None, t(100), t(100)));
        assert!(!overdue(Processing, Some(t(120)), t(100), t(110)), "a live lease is spared");
        assert!(overdue(Processing, Some(t(120)), t(100), t(120)));
        assert!(!overdue(Failed, None, t(100), t(200)));
        let ttl = Duration::from_secs(30);
        assert!(!stuck(Pending, t(100), ttl, t(130)));
        assert!(stuck(Pending, t(100), ttl, t(131)) && stuck(Processing, t(100), ttl, t(131)));
        assert!(!stuck(Cancelled, t(100), ttl, t(500)));
    }

    #[test]
    fn a_fence_refuses_finished_work_and_superseded_leases() {
        use GenerationStatus::*;
        assert_eq!(check_fence(Processing, 2, Some("w"), 2, "w"), Ok(()));
        assert_eq!(check_fence(Processing, 3, Some("w"), 2, "w"), Err(StoreError::LeaseLost));
        assert_eq!(check_fence(Processing, 2, Some("x"), 2, "w"), Err(StoreError::LeaseLost));
        assert_eq!(check_fence(Pending, 2, None, 2, "w"), Err(StoreError::LeaseLost));
        assert_eq!(check_fence(Completed, 2, Some("w"), 2, "w"), Err(StoreError::Finished));
    }

    #[test]
    fn cursors_are_positions_and_pages_end_with_theirs() {
        assert_eq!(parse_cursor(None), Ok(None));
        assert_eq!(parse_cursor(Some("17")), Ok(Some(17)));
        assert_eq!(parse_cursor(Some("x")), Err(StoreError::InvalidCursor));
        assert_eq!(page(vec![9, 8, 7], 2, |i| *i), (vec![9, 8], Some("8".to_owned())));
        assert_eq!(page(vec![9, 8], 2, |i| *i), (vec![9, 8], None));
    }
}
