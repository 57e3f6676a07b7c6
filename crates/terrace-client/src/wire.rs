//! The contract's JSON, as the client reads and writes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{AreaKind, GenerationStatus, Style};
use uuid::Uuid;

/// `POST /v1/generations`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateRequest {
    pub address: String,
    pub areas: Vec<AreaSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AreaSpec {
    pub area: AreaKind,
    pub style: Style,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preservation_strength: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaView {
    pub area: AreaKind,
    pub style: Style,
    pub status: AreaStatus,
    pub stage: AreaStage,
    pub progress: u8,
    pub image_url: Option<String>,
    pub error: Option<ErrorInfo>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A generation as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub request_id: String,
    pub status: GenerationStatus,
    pub address: String,
    pub geocoded_address: Option<String>,
    pub location: Option<Location>,
    pub cost: u64,
    pub captured: u64,
    pub voided: u64,
    pub areas: Vec<AreaView>,
    pub error: Option<ErrorInfo>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deadline_at: DateTime<Utc>,
}

/// `GET /v1/account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: Uuid,
    pub trial_credits: u64,
    pub token_balance: u64,
    pub held: u64,
    pub captured: u64,
}

/// An `application/problem+json` body.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Problem {
    pub title: Option<String>,
    pub detail: Option<String>,
    pub code: Option<String>,
    pub request_id: Option<String>,
}
