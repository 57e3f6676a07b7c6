//! Credits: an account's balances and the holds that move credits between them.
//!
//! Creating a generation *holds* one credit per area: nothing (a hold of
//! amount 0) while the user's subscription is active, else trial credits
//! first, then tokens. Each hold resolves exactly once: *captured* when the area's image is
//! stored, or *voided* back to the source it came from. For every account at
//! every moment `credited = available + held + captured`.

use crate::input::AreaKind;
use crate::input::{GenerationId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a credit came from, and so where a void returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditSource {
    Trial,
    Token,
    /// An active subscription: the hold is of no credit (amount 0), and
    /// still resolves exactly once.
    Subscription,
}

impl CreditSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditSource::Trial => "trial",
            CreditSource::Token => "token",
            CreditSource::Subscription => "subscription",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "trial" => Some(Self::Trial),
            "token" => Some(Self::Token),
            "subscription" => Some(Self::Subscription),
            _ => None,
        }
    }
    /// How many credits one area's hold from this source moves.
    pub fn per_area(self) -> u64 {
        match self {
            CreditSource::Subscription => 0,
            CreditSource::Trial | CreditSource::Token => 1,
        }
    }
}

/// The life of one area's hold. `Held` resolves once, to `Captured` or `Voided`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Held,
    Captured,
    Voided,
}

/// A hold was asked to resolve a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hold is already {0:?}")]
pub struct HoldAlreadyResolved(pub HoldState);

impl HoldState {
    pub fn capture(self) -> Result<HoldState, HoldAlreadyResolved> {
        match self {
            HoldState::Held => Ok(HoldState::Captured),
            other => Err(HoldAlreadyResolved(other)),
        }
    }
    pub fn void(self) -> Result<HoldState, HoldAlreadyResolved> {
        match self {
            HoldState::Held => Ok(HoldState::Voided),
            other => Err(HoldAlreadyResolved(other)),
        }
    }
}

/// Not enough credits for a hold. Nothing was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} credits needed, {available} available")]
pub struct InsufficientCredits {
    pub needed: u64,
    pub available: u64,
}

/// An account's balances, as the contract's `GET /v1/account` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: UserId,
    /// Available trial credits.
    pub trial_credits: u64,
    /// Available purchased credits.
    pub token_balance: u64,
    pub held: u64,
    pub captured: u64,
}

impl Account {
    /// A new account with its trial credits.
    pub fn open(user_id: UserId, trial_credits: u64) -> Self {
        Self { user_id, trial_credits, token_balance: 0, held: 0, captured: 0 }
    }

    pub fn available(&self) -> u64 {
        self.trial_credits + self.token_balance
    }

    /// Holds one credit per area, trial credits first, or nothing while
    /// `subscribed` (an active subscription). All or nothing.
    pub fn hold(&mut self, areas: usize, subscribed: bool) -> Result<Vec<CreditSource>, InsufficientCredits> {
        if subscribed {
            return Ok(vec![CreditSource::Subscription; areas]);
        }
        let needed = areas as u64;
        if self.available() < needed {
            return Err(InsufficientCredits { needed, available: self.available() });
        }
        let from_trial = needed.min(self.trial_credits);
        self.trial_credits -= from_trial;
        self.token_balance -= needed - from_trial;
        self.held += needed;
        Ok((0..needed)
            .map(|i| if i < from_trial { CreditSource::Trial } else { CreditSource::Token })
            .collect())
    }

    /// Moves one area's hold from `source` to captured.
    pub fn capture(&mut self, source: CreditSource) {
        let n = source.per_area();
        debug_assert!(self.held >= n, "capture without a hold");
        self.held = self.held.saturating_sub(n);
        self.captured += n;
    }

    /// Returns one area's hold to its source.
    pub fn void(&mut self, source: CreditSource) {
        let n = source.per_area();
        debug_assert!(self.held >= n, "void without a hold");
        self.held = self.held.saturating_sub(n);
        self.credit(source, n);
    }

    pub fn credit(&mut self, source: CreditSource, amount: u64) {
        match source {
            CreditSource::Trial => self.trial_credits += amount,
            CreditSource::Token => self.token_balance += amount,
            CreditSource::Subscription => {}
        }
    }
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    Credit,
    Hold,
    Capture,
    Void,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Credit => "credit",
            LedgerKind::Hold => "hold",
            LedgerKind::Capture => "capture",
            LedgerKind::Void => "void",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Credit, Self::Hold, Self::Capture, Self::Void].into_iter().find(|k| k.as_str() == s)
    }
}

/// One line of an account's history (`GET /v1/account/transactions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Increases with time within one store; the page cursor.
    pub id: i64,
    pub user_id: UserId,
    pub kind: LedgerKind,
    pub amount: u64,
    pub source: CreditSource,
    pub generation_id: Option<GenerationId>,
    pub area: Option<AreaKind>,
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Checks an account against its full history: what was credited equals what
/// is available, held and captured, and each counter matches its entries.
/// Returns a sentence naming the first mismatch.
pub fn check_conservation(account: &Account, entries: &[LedgerEntry]) -> Result<(), String> {
    let sum = |k: LedgerKind| entries.iter().filter(|e| e.kind == k).map(|e| e.amount).sum::<u64>();
    let (credited, held, captured, voided) =
        (sum(LedgerKind::Credit), sum(LedgerKind::Hold), sum(LedgerKind::Capture), sum(LedgerKind::Void));
    let rhs = account.available() + account.held + account.captured;
    if credited != rhs {
        return Err(format!(
            "account {}: credited {credited} != available {} + held {} + captured {}",
            account.user_id,
            account.available(),
            account.held,
            account.captured
        ));
    }
    if account.held != held - captured - voided || account.captured != captured {
        return Err(format!(
            "account {}: counters (held {}, captured {}) disagree with entries (held {held}, captured {captured}, voided {voided})",
            account.user_id, account.held, account.captured
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_take_trial_first_and_voids_return_to_source() {
        let mut a = Account::open(UserId::new_random(), 2);
        a.credit(CreditSource::Token, 5);
        let sources = a.hold(3, false).unwrap();
        assert_eq!(sources, [CreditSource::Trial, CreditSource::Trial, CreditSource::Token]);
        assert_eq!((a.trial_credits, a.token_balance, a.held), (0, 4, 3));
        a.void(CreditSource::Trial);
        a.capture(CreditSource::Trial);
        a.void(CreditSource::Token);
        assert_eq!((a.trial_credits, a.token_balance, a.held, a.captured), (1, 5, 0, 1));
    }

    #[test]
    fn an_active_subscription_holds_nothing_and_its_holds_resolve_to_nothing() {
        let mut a = Account::open(UserId::new_random(), 0);
        let before = a;
        let sources = a.hold(5, true).unwrap();
        assert_eq!(sources, [CreditSource::Subscription; 5]);
        assert_eq!(a, before, "no credit moved");
        a.capture(CreditSource::Subscription);
        a.void(CreditSource::Subscription);
        assert_eq!(a, before);
        assert_eq!(a.hold(1, false), Err(InsufficientCredits { needed: 1, available: 0 }));
    }

    #[test]
    fn a_hold_is_all_or_nothing() {
        let mut a = Account::open(UserId::new_random(), 1);
        let before = a;
        assert_eq!(a.hold(2, false), Err(InsufficientCredits { needed: 2, available: 1 }));
        assert_eq!(a, before);
    }

    #[test]
    fn a_hold_resolves_once() {
        let captured = HoldState::Held.capture().unwrap();
        assert!(captured.void().is_err());
        assert!(captured.capture().is_err());
        assert!(HoldState::Held.void().unwrap().capture().is_err());
    }

    #[test]
    fn conservation_catches_a_lost_credit() {
        let user = UserId::new_random();
        let entry = |kind, amount| LedgerEntry {
            id: 0,
            user_id: user,
            kind,
            amount,
            source: CreditSource::Trial,
            generation_id: None,
            area: None,
            reference: None,
            created_at: Utc::now(),
        };
        let mut a = Account::open(user, 3);
        let mut entries = vec![entry(LedgerKind::Credit, 3)];
        assert!(check_conservation(&a, &entries).is_ok());
        a.hold(1, false).unwrap();
        entries.push(entry(LedgerKind::Hold, 1));
        assert!(check_conservation(&a, &entries).is_ok());
        a.held = 0; // a hold that vanished
        assert!(check_conservation(&a, &entries).is_err());
    }
}
