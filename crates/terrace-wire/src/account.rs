//! The account and its history (`GET /v1/account`, `GET
//! /v1/account/transactions`), and the admin routes (`POST
//! /v1/admin/credits`, `GET /v1/admin/tasks`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use terrace_domain::billing::SubscriptionStatus;
use terrace_domain::{AreaKind, CreditSource, LedgerKind};
use uuid::Uuid;

/// `GET /v1/account`, and the answer of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: Uuid,
    /// Available trial credits.
    pub trial_credits: u64,
    /// Available purchased credits.
    pub token_balance: u64,
    pub held: u64,
    pub captured: u64,
    /// `null` for a user who never subscribed.
    #[serde(default)]
    pub subscription: Option<SubscriptionSummary>,
}

/// An [`Account`]'s subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSummary {
    pub plan: Option<String>,
    #[serde(with = "crate::names")]
    pub status: SubscriptionStatus,
    #[serde(default, with = "crate::time::seconds")]
    pub current_period_end: Option<DateTime<Utc>>,
}

/// One line of an account's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: i64,
    #[serde(with = "crate::names")]
    pub kind: LedgerKind,
    pub amount: u64,
    #[serde(with = "crate::names")]
    pub source: CreditSource,
    #[serde(default)]
    pub generation_id: Option<Uuid>,
    #[serde(default, with = "crate::names::option")]
    pub area: Option<AreaKind>,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(with = "crate::time")]
    pub created_at: DateTime<Utc>,
}

/// A page of items, newest first; `next_cursor` asks for the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The body of `POST /v1/admin/credits`. Unknown fields are refused; the
/// server checks each field and names every invalid one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub user_id: String,
    /// 1 to 100 000.
    pub amount: i64,
    /// 1 to 255 characters; the same reference again credits once.
    pub reference: String,
}

/// One generation running on the instance asked (`GET /v1/admin/tasks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub generation_id: String,
    pub request_id: String,
    pub attempt: u32,
    #[serde(with = "crate::time")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "crate::time")]
    pub deadline_at: DateTime<Utc>,
    pub stage: String,
}

impl TaskView {
    pub fn new(
        generation_id: impl ToString,
        request_id: impl ToString,
        attempt: u32,
        started_at: DateTime<Utc>,
        deadline_at: DateTime<Utc>,
        stage: impl Into<String>,
    ) -> Self {
        Self {
            generation_id: generation_id.to_string(),
            request_id: request_id.to_string(),
            attempt,
            started_at,
            deadline_at,
            stage: stage.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_without_a_subscription_field_reads_as_none() {
        let a: Account = serde_json::from_str(
            r#"{"user_id":"00000000-0000-0000-0000-000000000001","trial_credits":3,"token_balance":0,"held":0,"captured":0}"#,
        )
        .unwrap();
        assert_eq!(a.subscription, None);
    }

    #[test]
    fn a_period_end_is_written_in_seconds_and_read_in_any_precision() {
        let s = SubscriptionSummary {
            plan: Some("monthly_pro".into()),
            status: SubscriptionStatus::PastDue,
            current_period_end: DateTime::from_timestamp(2_000_000_000, 0),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"plan":"monthly_pro","status":"past_due","current_period_end":"2033-05-18T03:33:20Z"}"#
        );
        assert_eq!(serde_json::from_str::<SubscriptionSummary>(&json).unwrap(), s);
        let millis = json.replace("20Z", "20.000Z");
        assert_eq!(serde_json::from_str::<SubscriptionSummary>(&millis).unwrap(), s);
    }

    #[test]
    fn grants_refuse_unknown_fields() {
        let ok = r#"{"user_id":"u","amount":5,"reference":"r"}"#;
        assert!(serde_json::from_str::<GrantRequest>(ok).is_ok());
        let bad = r#"{"user_id":"u","amount":5,"reference":"r","extra":1}"#;
        assert!(serde_json::from_str::<GrantRequest>(bad).is_err());
    }
}
