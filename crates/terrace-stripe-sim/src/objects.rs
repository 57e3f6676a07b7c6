//! The simulator's Stripe objects and their JSON, in the shape of API
//! version 2025-03-31 (periods on subscription items, invoices naming their
//! subscription under `parent.subscription_details`).

use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The API version the simulator's objects and events are shaped after.
pub const API_VERSION: &str = "2025-03-31.basil";

/// How long one subscription period lasts in the simulator.
pub(crate) const PERIOD_SECS: i64 = 30 * 24 * 60 * 60;

/// `prefix_` and 24 random letters and digits, as Stripe's ids look.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 25);
    id.push_str(prefix);
    id.push('_');
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) type Metadata = BTreeMap<String, String>;

/// A price the simulator knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPrice {
    /// `price_…`
    pub id: String,
    pub unit_amount: u64,
    pub currency: String,
    /// `Some("month")` for a recurring price.
    pub interval: Option<String>,
    pub product_name: String,
}

/// What a session's one line item charges.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub price: Option<String>,
    pub unit_amount: u64,
    pub currency: String,
    pub name: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Payment,
    Subscription,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Payment => "payment",
            Mode::Subscription => "subscription",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub id: String,
    pub mode: Mode,
    /// `open` or `complete`.
    pub complete: bool,
    pub line: Line,
    pub success_url: String,
    pub cancel_url: Option<String>,
    pub client_reference_id: Option<String>,
    pub customer: Option<String>,
    pub customer_creation_always: bool,
    pub metadata: Metadata,
    pub subscription_metadata: Metadata,
    pub payment_intent: Option<String>,
    pub subscription: Option<String>,
    pub invoice: Option<String>,
    pub created: i64,
    pub url: String,
}

impl Session {
    pub(crate) fn amount_total(&self) -> u64 {
        self.line.unit_amount.saturating_mul(self.line.quantity)
    }

    /// Where the buyer goes after paying: `{CHECKOUT_SESSION_ID}` replaced.
    pub(crate) fn success_redirect(&self) -> String {
        self.success_url.replace("{CHECKOUT_SESSION_ID}", &self.id)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "checkout.session",
            "mode": self.mode.as_str(),
            "status": if self.complete { "complete" } else { "open" },
            "payment_status": if self.complete { "paid" } else { "unpaid" },
            "amount_subtotal": self.amount_total(),
            "amount_total": self.amount_total(),
            "currency": self.line.currency,
            "client_reference_id": self.client_reference_id,
            "customer": self.customer,
            "customer_creation": if self.customer_creation_always { Some("always") } else { None },
            "metadata": self.metadata,
            "payment_intent": self.payment_intent,
            "subscription": self.subscription,
            "invoice": self.invoice,
            "success_url": self.success_url,
            "cancel_url": self.cancel_url,
            "url": if self.complete { None } else { Some(&self.url) },
            "created": self.created,
            "expires_at": self.created + 24 * 60 * 60,
            "livemode": false,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub id: String,
    pub item_id: String,
    pub customer: String,
    pub status: String,
    pub price: SimPrice,
    pub metadata: Metadata,
    pub current_period_start: i64,
    pub current_period_end: i64,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<i64>,
    pub created: i64,
    pub latest_invoice: Option<String>,
}

impl Subscription {
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "subscription",
            "customer": self.customer,
            "status": self.status,
            "cancel_at_period_end": self.cancel_at_period_end,
            "cancel_at": if self.cancel_at_period_end { Some(self.current_period_end) } else { None },
            "canceled_at": self.canceled_at,
            "ended_at": if self.status == "canceled" { self.canceled_at } else { None },
            "created": self.created,
            "start_date": self.created,
            "latest_invoice": self.latest_invoice,
            "metadata": self.metadata,
            "items": {
                "object": "list",
                "data": [{
                    "id": self.item_id,
                    "object": "subscription_item",
                    "quantity": 1,
                    "current_period_start": self.current_period_start,
                    "current_period_end": self.current_period_end,
                    "price": self.price_json(),
                }],
                "has_more": false,
                "url": format!("/v1/subscription_items?subscription={}", self.id),
            },
            "livemode": false,
        })
    }

    fn price_json(&self) -> Value {
        json!({
            "id": self.price.id,
            "object": "price",
            "unit_amount": self.price.unit_amount,
            "currency": self.price.currency,
            "recurring": self.price.interval.as_ref().map(|i| json!({"interval": i, "interval_count": 1})),
            "type": if self.price.interval.is_some() { "recurring" } else { "one_time" },
        })
    }

    /// The invoice of the current period, `paid` or `open` (a failed payment).
    pub(crate) fn invoice_json(&self, id: &str, paid: bool, billing_reason: &str) -> Value {
        let amount = self.price.unit_amount;
        json!({
            "id": id,
            "object": "invoice",
            "customer": self.customer,
            "status": if paid { "paid" } else { "open" },
            "billing_reason": billing_reason,
            "amount_due": amount,
            "amount_paid": if paid { amount } else { 0 },
            "amount_remaining": if paid { 0 } else { amount },
            "currency": self.price.currency,
            "attempt_count": 1,
            "created": now(),
            "period_start": self.current_period_start,
            "period_end": self.current_period_start,
            "parent": {
                "type": "subscription_details",
                "quote_details": null,
                "subscription_details": {"subscription": self.id, "metadata": self.metadata},
            },
            "lines": {
                "object": "list",
                "data": [{
                    "id": new_id("il"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": self.price.currency,
                    "period": {"start": self.current_period_start, "end": self.current_period_end},
                    "pricing": {"price_details": {"price": self.price.id}},
                }],
                "has_more": false,
            },
            "livemode": false,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PortalSession {
    pub id: String,
    pub customer: String,
    pub return_url: Option<String>,
    pub created: i64,
    pub url: String,
}

impl PortalSession {
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "billing_portal.session",
            "customer": self.customer,
            "return_url": self.return_url,
            "created": self.created,
            "url": self.url,
            "livemode": false,
        })
    }
}

/// A Stripe event around `object`.
pub(crate) fn event_json(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type,
        "data": {"object": object},
    })
}

/// Stripe's error body.
pub(crate) fn error_json(error_type: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Value {
    let mut e = json!({"type": error_type, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
    }
    if let Some(p) = param {
        e["param"] = json!(p);
    }
    json!({"error": e})
}
