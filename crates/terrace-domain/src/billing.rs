//! Billing: the token packages and the plan Terrace sells (CONTRACT §7), the
//! subscription a user holds, and the rules by which Stripe's events change
//! it. Stripe's signed webhooks are the only thing that ever credits tokens
//! or changes a subscription; these rules decide what each one does, and
//! every store applies them as written here.

use crate::input::UserId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Tokens for one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Package {
    pub id: &'static str,
    pub tokens: u64,
    pub price_cents: u64,
}

/// The four packages, cheapest first.
pub const PACKAGES: [Package; 4] = [
    Package { id: "package_10", tokens: 10, price_cents: 1_000 },
    Package { id: "package_50", tokens: 50, price_cents: 4_500 },
    Package { id: "package_100", tokens: 100, price_cents: 9_000 },
    Package { id: "package_500", tokens: 500, price_cents: 40_000 },
];

/// Every price is in this currency.
pub const CURRENCY: &str = "usd";

impl Package {
    pub fn find(id: &str) -> Option<Package> {
        PACKAGES.into_iter().find(|p| p.id == id)
    }
}

/// A subscription plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub id: &'static str,
    pub price_cents: u64,
    pub interval: &'static str,
}

/// The one plan: unlimited generations for $99 a month.
pub const MONTHLY_PRO: Plan = Plan { id: "monthly_pro", price_cents: 9_900, interval: "month" };

impl Plan {
    pub fn find(id: &str) -> Option<Plan> {
        (id == MONTHLY_PRO.id).then_some(MONTHLY_PRO)
    }
}

/// A subscription's state, as the contract shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    #[default]
    None,
    Active,
    PastDue,
    Cancelled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::None, Self::Active, Self::PastDue, Self::Cancelled].into_iter().find(|v| v.as_str() == s)
    }

    /// Stripe's subscription status in the contract's terms: `trialing` is
    /// active, `unpaid` past due, `incomplete_expired` cancelled. `None` for
    /// a status that says nothing yet (`incomplete`, `paused`, unknown).
    pub fn from_stripe(s: &str) -> Option<Self> {
        match s {
            "active" | "trialing" => Some(Self::Active),
            "past_due" | "unpaid" => Some(Self::PastDue),
            "canceled" | "incomplete_expired" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// Where an event stands in a subscription's history: Stripe's `created`
/// (seconds), then the kind of event, so that of two events of one second a
/// later kind (`created` < checkout < `updated` < invoice < `deleted`) wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventOrder {
    pub created: i64,
    pub rank: u8,
}

/// A user's billing: their Stripe customer and subscription, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Subscription {
    pub plan: Option<String>,
    pub status: SubscriptionStatus,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    /// The newest event applied to the subscription's state.
    pub applied: Option<EventOrder>,
}

impl Subscription {
    /// Whether creates are free now: only an `active` subscription grants
    /// anything; `past_due` and `cancelled` grant nothing.
    pub fn grants_generations(&self) -> bool {
        self.status == SubscriptionStatus::Active
    }

    /// Whether a new subscription may be started: not while one is active
    /// and not ending.
    pub fn may_subscribe(&self) -> bool {
        self.status != SubscriptionStatus::Active || self.cancel_at_period_end
    }

    /// Whether there is a subscription to cancel.
    pub fn cancellable(&self) -> bool {
        matches!(self.status, SubscriptionStatus::Active | SubscriptionStatus::PastDue)
            && self.subscription_id.is_some()
    }

    /// Applies a change of the subscription's state, unless the subscription
    /// already reflects a newer event (events may arrive out of order and
    /// must never move it back). Ids are always recorded. Returns whether
    /// the state changed.
    pub fn apply(&mut self, change: &SubscriptionChange, order: EventOrder) -> bool {
        if change.customer_id.is_some() {
            self.customer_id.clone_from(&change.customer_id);
        }
        // A newer subscription replaces an ended one; events of an older
        // subscription than the current one change nothing.
        let other_subscription = change.subscription_id.is_some()
            && self.subscription_id.is_some()
            && change.subscription_id != self.subscription_id;
        if other_subscription && self.applied.is_some_and(|a| order <= a) {
            return false;
        }
        if !other_subscription && self.applied.is_some_and(|a| order < a) {
            return false;
        }
        if change.subscription_id.is_some() {
            self.subscription_id.clone_from(&change.subscription_id);
        }
        if let Some(plan) = &change.plan {
            self.plan = Some(plan.clone());
        }
        if let Some(status) = change.status {
            self.status = status;
        }
        if change.current_period_end.is_some() {
            self.current_period_end = change.current_period_end;
        }
        if let Some(flag) = change.cancel_at_period_end {
            self.cancel_at_period_end = flag;
        }
        self.applied = Some(order);
        true
    }
}

/// What one Stripe event says about a subscription. `None` fields say
/// nothing (the event does not carry them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscriptionChange {
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub plan: Option<String>,
    pub status: Option<SubscriptionStatus>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: Option<bool>,
}

/// What a verified Stripe event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillingChange {
    /// A paid Checkout for a package: credit its tokens once per payment.
    Purchase { user: UserId, package: Package, payment_intent: String, customer_id: Option<String> },
    /// The subscription changed. `user` when the event names them (the
    /// session's `client_reference_id` or the subscription's metadata);
    /// otherwise the store finds them by subscription or customer id.
    Subscription { user: Option<UserId>, change: SubscriptionChange },
    /// Nothing Terrace acts on (an unknown type, an unpaid session, …).
    Ignored,
}

/// One Stripe event, verified and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingEvent {
    /// Stripe's event id: each takes effect at most once.
    pub id: String,
    /// Stripe's event type, for logs and metrics.
    pub kind: String,
    pub order: EventOrder,
    pub change: BillingChange,
}

/// What applying an event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// It took effect now.
    Applied,
    /// Its id was seen before: nothing happened again.
    Duplicate,
    /// Recorded, with nothing to do (unknown type, stale, or for no known user).
    Ignored,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// The ledger reference of a purchase: once per payment.
pub fn purchase_reference(payment_intent: &str) -> String {
    format!("{}{payment_intent}", crate::CreditReference::PURCHASE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(created: i64, rank: u8) -> EventOrder {
        EventOrder { created, rank }
    }

    fn status(s: SubscriptionStatus) -> SubscriptionChange {
        SubscriptionChange { subscription_id: Some("sub_1".into()), status: Some(s), ..Default::default() }
    }

    #[test]
    fn stripe_statuses_map_to_the_contracts() {
        for (stripe, ours) in [
            ("active", Some(SubscriptionStatus::Active)),
            ("trialing", Some(SubscriptionStatus::Active)),
            ("past_due", Some(SubscriptionStatus::PastDue)),
            ("unpaid", Some(SubscriptionStatus::PastDue)),
            ("canceled", Some(SubscriptionStatus::Cancelled)),
            ("incomplete_expired", Some(SubscriptionStatus::Cancelled)),
            ("incomplete", None),
            ("something_new", None),
        ] {
            assert_eq!(SubscriptionStatus::from_stripe(stripe), ours, "{stripe}");
        }
    }

    #[test]
    fn an_older_event_never_moves_the_subscription_back() {
        let mut s = Subscription::default();
        // `updated` (cancel at period end) arrives before `created`.
        let updated =
            SubscriptionChange { cancel_at_period_end: Some(true), ..status(SubscriptionStatus::Active) };
        assert!(s.apply(&updated, at(200, 3)));
        let created =
            SubscriptionChange { cancel_at_period_end: Some(false), ..status(SubscriptionStatus::Active) };
        assert!(!s.apply(&created, at(100, 1)), "the older event changes nothing");
        assert!(s.cancel_at_period_end);
        // A deletion in the same second as an update wins by its kind.
        assert!(s.apply(&status(SubscriptionStatus::Cancelled), at(200, 5)));
        assert!(!s.apply(&status(SubscriptionStatus::Active), at(200, 3)));
        assert_eq!(s.status, SubscriptionStatus::Cancelled);
        assert!(!s.grants_generations());
    }

    #[test]
    fn past_due_and_cancelled_grant_nothing_and_an_active_one_blocks_a_second() {
        let mut s = Subscription::default();
        assert!(s.may_subscribe() && !s.cancellable() && !s.grants_generations());
        s.apply(&status(SubscriptionStatus::Active), at(1, 1));
        assert!(s.grants_generations() && !s.may_subscribe() && s.cancellable());
        s.apply(&SubscriptionChange { cancel_at_period_end: Some(true), ..Default::default() }, at(2, 3));
        assert!(s.grants_generations() && s.may_subscribe(), "ending at period end: active until then");
        s.apply(&status(SubscriptionStatus::PastDue), at(3, 3));
        assert!(!s.grants_generations());
    }

    #[test]
    fn a_new_subscription_replaces_an_ended_one() {
        let mut s = Subscription::default();
        s.apply(&status(SubscriptionStatus::Cancelled), at(10, 5));
        let next = SubscriptionChange {
            subscription_id: Some("sub_2".into()),
            status: Some(SubscriptionStatus::Active),
            ..Default::default()
        };
        assert!(s.apply(&next, at(20, 1)));
        assert_eq!((s.subscription_id.as_deref(), s.status), (Some("sub_2"), SubscriptionStatus::Active));
        // A late event of the old one changes nothing.
        assert!(!s.apply(&status(SubscriptionStatus::Cancelled), at(15, 5)));
        assert_eq!(s.status, SubscriptionStatus::Active);
    }

    #[test]
    fn packages_and_the_plan_are_the_contracts() {
        let ids: Vec<_> = PACKAGES.iter().map(|p| (p.id, p.tokens, p.price_cents)).collect();
        assert_eq!(
            ids,
            [
                ("package_10", 10, 1000),
                ("package_50", 50, 4500),
                ("package_100", 100, 9000),
                ("package_500", 500, 40000)
            ]
        );
        assert_eq!(Package::find("package_50").map(|p| p.tokens), Some(50));
        assert_eq!(Package::find("package_7"), None);
        assert_eq!(Plan::find("monthly_pro"), Some(MONTHLY_PRO));
        assert_eq!(purchase_reference("pi_1"), "stripe:pi_1");
    }
}
