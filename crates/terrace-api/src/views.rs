//! The JSON the API answers with (CONTRACT §4). Only this module decides how
//! a domain record looks on the wire.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use terrace_domain::{Account, AreaStatus, Failure, Generation, LedgerEntry};

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Serialize)]
pub struct GenerationView {
    pub id: String,
    pub user_id: String,
    pub request_id: String,
    pub status: &'static str,
    pub address: String,
    pub geocoded_address: Option<String>,
    pub location: Option<LocationView>,
    pub cost: u64,
    pub captured: u64,
    pub voided: u64,
    pub areas: Vec<AreaView>,
    pub error: Option<Failure>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub deadline_at: String,
}

#[derive(Debug, Serialize)]
pub struct LocationView {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Serialize)]
pub struct AreaView {
    pub area: &'static str,
    pub style: &'static str,
    pub status: &'static str,
    pub stage: &'static str,
    pub progress: u8,
    pub image_url: Option<String>,
    pub error: Option<Failure>,
    pub completed_at: Option<String>,
}

/// The path a generation is found at.
pub fn generation_path(g: &Generation) -> String {
    format!("/v1/generations/{}", g.id)
}

impl GenerationView {
    pub fn of(g: &Generation) -> Self {
        let path = generation_path(g);
        Self {
            id: g.id.to_string(),
            user_id: g.user_id.to_string(),
            request_id: g.request_id.to_string(),
            status: g.status.as_str(),
            address: g.address.as_str().to_owned(),
            geocoded_address: g.geocoded.as_ref().map(|x| x.formatted_address.clone()),
            location: g.geocoded.as_ref().map(|x| LocationView { lat: x.location.lat, lng: x.location.lng }),
            cost: g.cost(),
            captured: g.captured(),
            voided: g.voided(),
            areas: g
                .areas
                .iter()
                .map(|a| AreaView {
                    area: a.kind().as_str(),
                    style: a.spec.style.as_str(),
                    status: a.status.as_str(),
                    stage: a.stage.as_str(),
                    progress: a.progress,
                    image_url: (a.status == AreaStatus::Completed)
                        .then(|| format!("{path}/areas/{}/image", a.kind())),
                    error: a.error.clone(),
                    completed_at: a.completed_at.map(ts),
                })
                .collect(),
            error: g.error.clone(),
            created_at: ts(g.created_at),
            started_at: g.started_at.map(ts),
            completed_at: g.completed_at.map(ts),
            deadline_at: ts(g.deadline_at),
        }
    }

    pub fn json(g: &Generation) -> String {
        serde_json::to_string(&Self::of(g)).expect("a generation always serializes")
    }
}

#[derive(Debug, Serialize)]
pub struct AccountView {
    pub user_id: String,
    pub trial_credits: u64,
    pub token_balance: u64,
    pub held: u64,
    pub captured: u64,
    pub subscription: Option<crate::billing::SubscriptionSummary>,
}

impl AccountView {
    pub fn of(a: &Account, sub: &terrace_domain::billing::Subscription) -> Self {
        Self {
            user_id: a.user_id.to_string(),
            trial_credits: a.trial_credits,
            token_balance: a.token_balance,
            held: a.held,
            captured: a.captured,
            subscription: crate::billing::SubscriptionSummary::of(sub),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TransactionView {
    pub id: i64,
    pub kind: &'static str,
    pub amount: u64,
    pub source: &'static str,
    pub generation_id: Option<String>,
    pub area: Option<&'static str>,
    pub reference: Option<String>,
    pub created_at: String,
}

impl TransactionView {
    pub fn of(e: &LedgerEntry) -> Self {
        Self {
            id: e.id,
            kind: e.kind.as_str(),
            amount: e.amount,
            source: e.source.as_str(),
            generation_id: e.generation_id.map(|g| g.to_string()),
            area: e.area.map(|a| a.as_str()),
            reference: e.reference.clone(),
            created_at: ts(e.created_at),
        }
    }
}

/// A page of items.
#[derive(Debug, Serialize)]
pub struct PageView<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// One running generation on this instance (`GET /v1/admin/tasks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskView {
    pub generation_id: String,
    pub request_id: String,
    pub attempt: u32,
    pub started_at: String,
    pub deadline_at: String,
    pub stage: &'static str,
}

impl TaskView {
    pub fn new(
        generation_id: impl ToString,
        request_id: impl ToString,
        attempt: u32,
        started_at: DateTime<Utc>,
        deadline_at: DateTime<Utc>,
        stage: &'static str,
    ) -> Self {
        Self {
            generation_id: generation_id.to_string(),
            request_id: request_id.to_string(),
            attempt,
            started_at: ts(started_at),
            deadline_at: ts(deadline_at),
            stage,
        }
    }
}
