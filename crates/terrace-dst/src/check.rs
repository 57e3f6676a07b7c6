//! The invariants, checked after every step against the real store (read
//! without faults) and its ledger, read through the `Ledger` port.

use crate::shared::{Shared, Violation, at_once, gname, uname};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use terrace_domain::state::AreaStatus;
use terrace_domain::{
    AreaKind, CreditSource, GenerationId, GenerationStatus, HoldState, LedgerEntry, LedgerKind, UserId,
};
use terrace_ports::{BlobStore, Clock, GenerationStore, Ledger, blob_key};
use tokio::time::Instant;

/// An area as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AreaSnap {
    kind: AreaKind,
    status: AreaStatus,
    hold: HoldState,
    source: CreditSource,
    image_key: Option<String>,
}

/// A generation as last seen.
#[derive(Debug, Clone)]
struct Snap {
    status: GenerationStatus,
    deadline_at: DateTime<Utc>,
    areas: Vec<AreaSnap>,
}

/// What the checker needs from the driver.
#[derive(Debug)]
pub struct Context<'a> {
    pub users: &'a [UserId],
    /// Every generation id a create proposed under each user's key.
    pub keys: &'a BTreeMap<UserId, BTreeMap<String, Vec<GenerationId>>>,
    /// Since when an instance has been up and the store free of faults;
    /// `None` while no instance is up or a storm blows.
    pub healthy_since: Option<Instant>,
    pub trial: u64,
}

#[derive(Debug, Default)]
pub struct Checker {
    snaps: BTreeMap<GenerationId, Snap>,
    /// When (virtual time) the store's clock passed each held generation's
    /// deadline plus one lease TTL.
    overdue_since: BTreeMap<GenerationId, Instant>,
    /// Generations with a held area, as last seen.
    held: BTreeSet<GenerationId>,
    by_user: BTreeMap<UserId, BTreeSet<GenerationId>>,
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Every ledger entry of a user, through the port's pages.
pub fn entries(shared: &Shared, user: UserId) -> Vec<LedgerEntry> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = at_once(shared.store.transactions(user, 500, cursor)).expect("the memory ledger answers");
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return all,
        }
    }
}

impl Checker {
    /// The generations seen, and whether each is terminal.
    pub fn statuses(&self) -> impl Iterator<Item = (GenerationId, GenerationStatus)> + '_ {
        self.snaps.iter().map(|(id, s)| (*id, s.status))
    }

    /// Checks every invariant on what calls touched since the last check
    /// (everything, when `full`); the first broken one.
    pub fn check(&mut self, shared: &Shared, cx: &Context<'_>, full: bool) -> Option<Violation> {
        let (gens, mut users, full) = {
            let mut s = shared.lock();
            if let Some(v) = &s.violation {
                return Some(v.clone());
            }
            let full = std::mem::take(&mut s.full) || full;
            let touched = std::mem::take(&mut s.touched);
            let users = std::mem::take(&mut s.touched_users);
            if full {
                (s.known.iter().copied().collect::<Vec<_>>(), cx.users.iter().copied().collect(), true)
            } else {
                (touched.into_iter().filter(|id| s.known.contains(id)).collect(), users, false)
            }
        };
        match self.generations(shared, &gens) {
            Ok(owners) => users.extend(owners),
            Err(v) => return Some(v),
        }
        if let Err(v) = self.ledger(shared, cx, &users, full) {
            return Some(v);
        }
        {
            let s = shared.lock();
            let keys = users.iter().filter_map(|u| cx.keys.get(u).map(|k| (u, k)));
            for (user, key, ids) in keys.flat_map(|(u, k)| k.iter().map(move |(key, ids)| (u, key, ids))) {
                let made: Vec<String> =
                    ids.iter().filter(|id| s.known.contains(id)).map(|id| gname(*id)).collect();
                if made.len() > 1 {
                    let detail = format!("{} key {key} made {}", uname(*user), made.join(", "));
                    return Some(violation("an idempotent create holds once", detail));
                }
            }
        }
        self.bounded_holds(shared, cx).err()
    }

    /// Each generation: its areas' statuses and holds agree, a completed
    /// area's image is stored, nothing terminal changed since last seen.
    /// Returns the users whose generations it read.
    fn generations(&mut self, shared: &Shared, ids: &[GenerationId]) -> Result<BTreeSet<UserId>, Violation> {
        let mut users = BTreeSet::new();
        for id in ids {
            let Some(g) = at_once(shared.store.get(*id)).expect("the memory store answers") else {
                return Err(violation("created generations stay", format!("{} is gone", gname(*id))));
            };
            let areas: Vec<AreaSnap> = g
                .areas
                .iter()
                .map(|a| AreaSnap {
                    kind: a.kind(),
                    status: a.status,
                    hold: a.hold,
                    source: a.hold_source,
                    image_key: a.image_key.clone(),
                })
                .collect();
            for a in &areas {
                let agree = matches!(
                    (a.status, a.hold),
                    (AreaStatus::Pending | AreaStatus::Processing, HoldState::Held)
                        | (AreaStatus::Completed, HoldState::Captured)
                        | (AreaStatus::Failed | AreaStatus::Cancelled, HoldState::Voided)
                );
                if !agree {
                    let detail = format!(
                        "{} {} is {} with its hold {:?}",
                        gname(*id),
                        a.kind,
                        a.status.as_str(),
                        a.hold
                    );
                    return Err(violation("an area's hold follows its status", detail));
                }
            }
            // Areas end one by one; the generation settles with its worker's
            // final write (or a cancel, or the sweep).
            let statuses: Vec<AreaStatus> = areas.iter().map(|a| a.status).collect();
            if g.status.is_terminal() && GenerationStatus::settle(&statuses) != Some(g.status) {
                let detail = format!("{} is {} with areas {statuses:?}", gname(*id), g.status.as_str());
                return Err(violation("a generation's status follows its areas", detail));
            }
            let before = self.snaps.get(id);
            for a in &areas {
                let was = before.and_then(|b| b.areas.iter().find(|x| x.kind == a.kind));
                if let Some(was) = was.filter(|w| w.status.is_terminal()) {
                    if was != a {
                        let detail = format!("{} {}: {was:?} became {a:?}", gname(*id), a.kind);
                        return Err(violation("terminal states never change", detail));
                    }
                    continue;
                }
                if a.status == AreaStatus::Completed {
                    let key = blob_key::design(*id, a.kind);
                    if a.image_key.as_deref() != Some(key.as_str())
                        || at_once(shared.blobs.get(&key)).is_err()
                    {
                        let detail = format!(
                            "{} {} completed with image {:?}, not stored",
                            gname(*id),
                            a.kind,
                            a.image_key
                        );
                        return Err(violation("an area completes only once its image is stored", detail));
                    }
                }
            }
            if let Some(b) = before.filter(|b| b.status.is_terminal() && b.status != g.status) {
                let detail =
                    format!("{} went from {} to {}", gname(*id), b.status.as_str(), g.status.as_str());
                return Err(violation("terminal states never change", detail));
            }
            if areas.iter().any(|a| a.hold == HoldState::Held) {
                self.held.insert(*id);
            } else {
                self.held.remove(id);
            }
            self.by_user.entry(g.user_id).or_default().insert(*id);
            users.insert(g.user_id);
            self.snaps.insert(*id, Snap { status: g.status, deadline_at: g.deadline_at, areas });
        }
        Ok(users)
    }

    /// Each account: conservation, one hold entry per area and at most one
    /// resolution, its counters equal to what its generations hold and
    /// captured, each reference credited once; and the store's own check.
    fn ledger(
        &self,
        shared: &Shared,
        cx: &Context<'_>,
        users: &BTreeSet<UserId>,
        full: bool,
    ) -> Result<(), Violation> {
        for user in users {
            let entries = entries(shared, *user);
            let none = BTreeSet::new();
            let mine: Vec<(&GenerationId, &Snap)> = self
                .by_user
                .get(user)
                .unwrap_or(&none)
                .iter()
                .filter_map(|id| self.snaps.get_key_value(id))
                .collect();
            if entries.is_empty() {
                if let Some((id, _)) = mine.first() {
                    let detail = format!("{} has {} but no ledger entries", uname(*user), gname(**id));
                    return Err(violation("every hold is booked", detail));
                }
                continue;
            }
            let account =
                at_once(shared.store.open_account(*user, cx.trial)).expect("the memory ledger answers");
            let sum = |k: LedgerKind| entries.iter().filter(|e| e.kind == k).map(|e| e.amount).sum::<u64>();
            let credited = sum(LedgerKind::Credit);
            let total = account.trial_credits + account.token_balance + account.held + account.captured;
            if credited != total {
                let detail = format!(
                    "{}: credited {credited} != trial {} + tokens {} + held {} + captured {}",
                    uname(*user),
                    account.trial_credits,
                    account.token_balance,
                    account.held,
                    account.captured
                );
                return Err(violation("conservation", detail));
            }
            let mut references = BTreeSet::new();
            for e in entries.iter().filter(|e| e.kind == LedgerKind::Credit) {
                let r = e.reference.clone().unwrap_or_default();
                if !references.insert(r.clone()) {
                    return Err(violation(
                        "a reference credits once",
                        format!("{} credited {r} twice", uname(*user)),
                    ));
                }
            }
            let mut per_area: BTreeMap<(GenerationId, AreaKind), [u32; 3]> = BTreeMap::new();
            for e in &entries {
                let (Some(g), Some(a)) = (e.generation_id, e.area) else { continue };
                let i = match e.kind {
                    LedgerKind::Hold => 0,
                    LedgerKind::Capture => 1,
                    LedgerKind::Void => 2,
                    LedgerKind::Credit => continue,
                };
                per_area.entry((g, a)).or_default()[i] += 1;
                if e.amount != e.source.per_area() {
                    let detail = format!(
                        "{} {a}: a {} of {} from {}",
                        gname(g),
                        e.kind.as_str(),
                        e.amount,
                        e.source.as_str()
                    );
                    return Err(violation("a hold moves one credit of its source", detail));
                }
            }
            let (mut held, mut captured) = (0, 0);
            for (id, snap) in &mine {
                for a in &snap.areas {
                    let [h, c, v] = per_area.remove(&(**id, a.kind)).unwrap_or_default();
                    let expected = match a.hold {
                        HoldState::Held => [1, 0, 0],
                        HoldState::Captured => [1, 1, 0],
                        HoldState::Voided => [1, 0, 1],
                    };
                    if [h, c, v] != expected {
                        let detail = format!(
                            "{} {} is {:?} with {h} hold, {c} capture and {v} void entries",
                            gname(**id),
                            a.kind,
                            a.hold
                        );
                        return Err(violation("a hold resolves once", detail));
                    }
                    match a.hold {
                        HoldState::Held => held += a.source.per_area(),
                        HoldState::Captured => captured += a.source.per_area(),
                        HoldState::Voided => {}
                    }
                }
            }
            if let Some(((g, a), _)) = per_area.into_iter().next() {
                return Err(violation(
                    "every hold is booked",
                    format!("entries for {} {a}, which has no such area", gname(g)),
                ));
            }
            if (account.held, account.captured) != (held, captured) {
                let detail = format!(
                    "{}: the account holds {} and captured {}; its generations hold {held} and captured {captured}",
                    uname(*user),
                    account.held,
                    account.captured
                );
                return Err(violation("conservation", detail));
            }
        }
        let theirs = if full {
            at_once(shared.store.conservation_violations()).expect("the memory ledger answers")
        } else {
            Vec::new()
        };
        if let Some(v) = theirs.into_iter().next() {
            return Err(violation("conservation", format!("the store's own check: {v}")));
        }
        Ok(())
    }

    /// No hold stays held past its generation's deadline plus one lease TTL
    /// plus one sweep interval, counted from when an instance was up and the
    /// store without faults.
    fn bounded_holds(&mut self, shared: &Shared, cx: &Context<'_>) -> Result<(), Violation> {
        let policies = &shared.policies;
        let ttl = chrono::TimeDelta::from_std(policies.lease.ttl).unwrap_or(chrono::TimeDelta::MAX);
        let slack = policies.lease.sweep_interval + Duration::from_secs(1);
        let (wall, now) = (shared.store_clock.now(), Instant::now());
        let jumped = shared.store_clock.jumped_at();
        self.overdue_since.retain(|id, _| self.held.contains(id));
        for id in &self.held {
            let snap = &self.snaps[id];
            let due = snap.deadline_at + ttl;
            if wall < due {
                self.overdue_since.remove(id);
                continue;
            }
            let since = *self.overdue_since.entry(*id).or_insert_with(|| {
                let past = (wall - due).to_std().unwrap_or_default();
                let reached = now.checked_sub(past).unwrap_or(now);
                jumped.map_or(reached, |j| reached.max(j))
            });
            let Some(healthy) = cx.healthy_since else { continue };
            let bound = since.max(healthy) + slack;
            if now > bound {
                let detail = format!(
                    "{} still holds credits {:?} after its deadline plus one lease TTL (instances up and the store healthy for {:?})",
                    gname(*id),
                    now - since,
                    now - healthy
                );
                return Err(violation(
                    "no hold outlives its deadline by more than one TTL and one sweep",
                    detail,
                ));
            }
        }
        Ok(())
    }
}
