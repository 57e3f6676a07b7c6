//! Stripe's JSON objects, as far as Terrace reads them. Unknown fields are
//! ignored; fields that moved between API versions are read from either place.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::HashMap;

/// An id, or the object it names when the field was expanded.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    pub(crate) fn into_id(self) -> String {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
}

pub(crate) fn id(e: Option<Expandable>) -> Option<String> {
    e.map(Expandable::into_id)
}

/// Stripe's metadata: string keys and values, or null.
pub(crate) type Metadata = Option<HashMap<String, String>>;

pub(crate) fn meta(m: &Metadata, key: &str) -> Option<String> {
    m.as_ref().and_then(|m| m.get(key)).filter(|v| !v.is_empty()).cloned()
}

pub(crate) fn time(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::from_timestamp(s, 0))
}

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
}

/// A `checkout.session`.
#[derive(Debug, Deserialize)]
pub(crate) struct Session {
    pub id: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
    #[serde(default)]
    pub customer: Option<Expandable>,
    #[serde(default)]
    pub subscription: Option<Expandable>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub amount_total: Option<u64>,
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Price {
    pub id: String,
}

/// A subscription item: since API version 2025-03-31 it carries the period.
#[derive(Debug, Deserialize)]
pub(crate) struct SubscriptionItem {
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub price: Option<Price>,
}

/// A `subscription`.
#[derive(Debug, Deserialize)]
pub(crate) struct Subscription {
    pub id: String,
    #[serde(default)]
    pub customer: Option<Expandable>,
    pub status: String,
    /// Before API version 2025-03-31.
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub cancel_at_period_end: Option<bool>,
    #[serde(default)]
    pub cancel_at: Option<i64>,
    #[serde(default)]
    pub items: Option<List<SubscriptionItem>>,
    #[serde(default)]
    pub metadata: Metadata,
}

impl Subscription {
    /// The period end from the subscription, else the latest of its items'.
    pub(crate) fn period_end(&self) -> Option<i64> {
        self.current_period_end.or_else(|| {
            self.items.as_ref().and_then(|i| i.data.iter().filter_map(|i| i.current_period_end).max())
        })
    }

    pub(crate) fn price_id(&self) -> Option<String> {
        self.items.as_ref()?.data.iter().find_map(|i| i.price.as_ref().map(|p| p.id.clone()))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Period {
    #[serde(default)]
    pub end: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InvoiceLine {
    #[serde(default)]
    pub period: Option<Period>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubscriptionDetails {
    #[serde(default)]
    pub subscription: Option<Expandable>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// Since API version 2025-03-31: what made the invoice.
#[derive(Debug, Deserialize)]
pub(crate) struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

/// An `invoice`.
#[derive(Debug, Deserialize)]
pub(crate) struct Invoice {
    pub id: String,
    #[serde(default)]
    pub customer: Option<Expandable>,
    /// Before API version 2025-03-31.
    #[serde(default)]
    pub subscription: Option<Expandable>,
    /// Before API version 2025-03-31.
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
    #[serde(default)]
    pub period_end: Option<i64>,
    #[serde(default)]
    pub lines: Option<List<InvoiceLine>>,
}

impl Invoice {
    fn details(&self) -> Option<&SubscriptionDetails> {
        self.parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref())
            .or(self.subscription_details.as_ref())
    }

    pub(crate) fn subscription_id(&self) -> Option<String> {
        self.details()
            .and_then(|d| d.subscription.clone())
            .or_else(|| self.subscription.clone())
            .map(Expandable::into_id)
    }

    pub(crate) fn user_id(&self) -> Option<String> {
        self.details().and_then(|d| meta(&d.metadata, "user_id"))
    }

    /// The latest end of the lines' periods (what the invoice pays for),
    /// else the invoice's own `period_end`.
    pub(crate) fn paid_through(&self) -> Option<i64> {
        self.lines
            .as_ref()
            .and_then(|l| l.data.iter().filter_map(|l| l.period.as_ref().and_then(|p| p.end)).max())
            .or(self.period_end)
    }
}

/// A `billing_portal.session`.
#[derive(Debug, Deserialize)]
pub(crate) struct PortalSession {
    pub id: String,
    pub url: String,
}

/// `{"error": {"type", "code", "message", ...}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorObject {
    #[serde(rename = "type", default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}
