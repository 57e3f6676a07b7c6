//! The billing routes (CONTRACT §7): packages and the plan, Checkout, the
//! subscription and its cancellation, the portal, and Stripe's webhook's
//! receipt.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use terrace_domain::billing::SubscriptionStatus;

/// `GET /v1/billing/packages`: every package, and the plan when it is on
/// offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    pub packages: Vec<Package>,
    pub plans: Vec<Plan>,
}

/// Tokens for one payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub id: String,
    pub tokens: u64,
    pub price_cents: u64,
    pub currency: String,
}

/// A subscription plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub price_cents: u64,
    pub currency: String,
    pub interval: String,
}

/// The body of `POST /v1/billing/checkout`. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub package_id: String,
}

/// The body of `POST /v1/billing/subscription`. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub plan_id: String,
}

/// A Stripe Checkout session to send the user to (201 of a checkout or a
/// subscribe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutSession {
    pub session_id: String,
    pub checkout_url: String,
}

/// `GET /v1/billing/subscription`, and the answer of a cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub plan: Option<String>,
    #[serde(with = "crate::names")]
    pub status: SubscriptionStatus,
    #[serde(default, with = "crate::time::seconds")]
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
}

/// The body of `POST /v1/billing/subscription/cancel`. Unknown fields are
/// refused; `at_period_end` is `true` unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelSubscriptionRequest {
    #[serde(default = "yes")]
    pub at_period_end: bool,
}

fn yes() -> bool {
    true
}

impl Default for CancelSubscriptionRequest {
    fn default() -> Self {
        Self { at_period_end: yes() }
    }
}

/// A Stripe billing-portal session (201 of `POST /v1/billing/portal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalSession {
    pub url: String,
}

/// What `POST /v1/webhooks/stripe` answers Stripe: the event was received,
/// and what it did (`applied`, `duplicate`, `ignored`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookReceipt {
    pub received: bool,
    pub outcome: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_is_at_the_period_s_end_unless_it_says_otherwise() {
        let read = |s| serde_json::from_str::<CancelSubscriptionRequest>(s);
        assert!(read("{}").unwrap().at_period_end);
        assert!(!read(r#"{"at_period_end":false}"#).unwrap().at_period_end);
        assert!(read(r#"{"now":true}"#).is_err());
        assert_eq!(CancelSubscriptionRequest::default(), read("{}").unwrap());
    }
}
