//! What can be scripted: how an API endpoint answers, and how a batch of
//! webhook events is delivered.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The Stripe API endpoints the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/checkout/sessions`, `GET /v1/checkout/sessions/{id}`
    CheckoutSessions,
    /// `GET|POST|DELETE /v1/subscriptions/{id}`
    Subscriptions,
    /// `POST /v1/billing_portal/sessions`
    BillingPortal,
}

impl Endpoint {
    pub const ALL: &'static [Endpoint] =
        &[Endpoint::CheckoutSessions, Endpoint::Subscriptions, Endpoint::BillingPortal];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What the simulator does with one API request that carries the right key.
/// Serialised as `{"kind": "snake_case_name", ...}`, durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApiBehaviour {
    /// The normal answer.
    Ok,
    /// The normal answer after a delay.
    Latency {
        #[serde(rename = "delay_ms", with = "millis")]
        delay: Duration,
    },
    /// Accept the request and never answer (until the client leaves or the
    /// simulator shuts down).
    Hang,
    /// An HTTP error with Stripe's error body (`api_error` for 5xx,
    /// `rate_limit` for 429, `invalid_request_error` otherwise), and a
    /// `Stripe-Should-Retry` header when `should_retry` is set. Nothing is
    /// executed and nothing is saved under the idempotency key.
    Status {
        status: u16,
        #[serde(default)]
        should_retry: Option<bool>,
    },
    /// Close the connection without answering.
    Disconnect,
}

impl ApiBehaviour {
    /// `Status { status, should_retry: None }`.
    pub fn status(status: u16) -> Self {
        ApiBehaviour::Status { status, should_retry: None }
    }
}

/// In what order a batch's events are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// The order Stripe makes them in.
    #[default]
    AsMade,
    /// Last first.
    Reversed,
    /// A random order.
    Shuffled,
}

/// How one batch of webhook events (those one action makes: a payment, a
/// cancellation, a lifecycle step) is delivered. The default delivers each
/// event once, in order, one at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookPlan {
    /// Send every event this many more times (the same event id and body,
    /// signed anew for each send).
    pub duplicates: u32,
    /// Wait this long before the first send.
    #[serde(rename = "delay_ms", with = "millis")]
    pub delay: Duration,
    pub order: Order,
    /// Send every event (and its duplicates) at once, concurrently.
    pub concurrent: bool,
    /// Record the events but never send them.
    pub drop: bool,
}

impl WebhookPlan {
    /// Each event `extra` more times.
    pub fn duplicated(extra: u32) -> Self {
        Self { duplicates: extra, ..Self::default() }
    }

    /// The batch's events last first.
    pub fn reversed() -> Self {
        Self { order: Order::Reversed, ..Self::default() }
    }

    /// All sends at once.
    pub fn concurrent() -> Self {
        Self { concurrent: true, ..Self::default() }
    }

    /// The batch after `delay`.
    pub fn delayed(delay: Duration) -> Self {
        Self { delay, ..Self::default() }
    }

    /// Never sent.
    pub fn dropped() -> Self {
        Self { drop: true, ..Self::default() }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_from_the_control_json() {
        let b: ApiBehaviour =
            serde_json::from_str(r#"{"kind":"status","status":500,"should_retry":true}"#).expect("parses");
        assert_eq!(b, ApiBehaviour::Status { status: 500, should_retry: Some(true) });
        let b: ApiBehaviour = serde_json::from_str(r#"{"kind":"latency","delay_ms":20}"#).expect("parses");
        assert_eq!(b, ApiBehaviour::Latency { delay: Duration::from_millis(20) });
        let p: WebhookPlan =
            serde_json::from_str(r#"{"duplicates":2,"order":"reversed","delay_ms":5}"#).expect("parses");
        assert_eq!(
            p,
            WebhookPlan {
                duplicates: 2,
                order: Order::Reversed,
                delay: Duration::from_millis(5),
                ..WebhookPlan::default()
            }
        );
        assert!(serde_json::from_str::<WebhookPlan>(r#"{"twice":true}"#).is_err());
    }
}
