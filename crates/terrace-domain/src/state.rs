//! The generation and area state machines, and the record every port speaks in.
//!
//! An area goes `pending → processing → completed | failed | cancelled` (or
//! straight from `pending` to `failed`/`cancelled`); a worker that hands work
//! back on shutdown may return a `processing` area to `pending`. Terminal
//! states never change. A generation is terminal once every area is, and its
//! status follows from its areas ([`GenerationStatus::settle`]).

use crate::credits::{CreditSource, HoldState};
use crate::error::Failure;
use crate::geo::LatLng;
use crate::input::{Address, AreaKind, AreaRequest, GenerationId, GenerationRequest, RequestId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A transition the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition of {what}: {from} -> {to}")]
pub struct IllegalTransition {
    pub what: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationStatus {
    Pending,
    Processing,
    Completed,
    PartiallyCompleted,
    Failed,
    Cancelled,
}

impl GenerationStatus {
    pub const ALL: &'static [GenerationStatus] = &[
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::PartiallyCompleted,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::PartiallyCompleted => "partially_completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|x| x.as_str() == s)
    }
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Processing)
    }

    /// The terminal status that a generation's areas add up to, or `None`
    /// while any area is unfinished: every area completed → `completed`; some →
    /// `partially_completed`; none, and some cancelled by the user →
    /// `cancelled`; none → `failed`.
    pub fn settle(areas: &[AreaStatus]) -> Option<Self> {
        if areas.is_empty() || areas.iter().any(|a| !a.is_terminal()) {
            return None;
        }
        let completed = areas.iter().filter(|a| **a == AreaStatus::Completed).count();
        Some(if completed == areas.len() {
            Self::Completed
        } else if completed > 0 {
            Self::PartiallyCompleted
        } else if areas.contains(&AreaStatus::Cancelled) {
            Self::Cancelled
        } else {
            Self::Failed
        })
    }

    /// Checks a transition: `pending ⇄ processing`, and either to any terminal
    /// status; nothing leaves a terminal status.
    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        let ok = match self {
            Self::Pending => to != Self::Pending,
            Self::Processing => true,
            _ => false,
        };
        if ok {
            Ok(to)
        } else {
            Err(IllegalTransition { what: "generation", from: self.as_str(), to: to.as_str() })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AreaStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl AreaStatus {
    pub const ALL: &'static [AreaStatus] =
        &[Self::Pending, Self::Processing, Self::Completed, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|x| x.as_str() == s)
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Checks a transition: `pending → processing`, `processing → pending`
    /// (handed back), `processing → processing` (a new stage), `processing →
    /// completed`, and `pending|processing → failed|cancelled`.
    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        use AreaStatus::*;
        let ok = matches!(
            (self, to),
            (Pending, Processing)
                | (Processing, Pending | Processing | Completed)
                | (Pending | Processing, Failed | Cancelled)
        );
        if ok {
            Ok(to)
        } else {
            Err(IllegalTransition { what: "area", from: self.as_str(), to: to.as_str() })
        }
    }
}

/// Where an area's work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AreaStage {
    Queued,
    RetrievingImagery,
    GeneratingDesign,
    Storing,
    Done,
}

impl AreaStage {
    pub const ALL: &'static [AreaStage] =
        &[Self::Queued, Self::RetrievingImagery, Self::GeneratingDesign, Self::Storing, Self::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::RetrievingImagery => "retrieving_imagery",
            Self::GeneratingDesign => "generating_design",
            Self::Storing => "storing",
            Self::Done => "done",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|x| x.as_str() == s)
    }
}

/// What geocoding found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Geocoded {
    pub formatted_address: String,
    pub location: LatLng,
}

/// One area of a generation, with its hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Area {
    pub spec: AreaRequest,
    pub status: AreaStatus,
    pub stage: AreaStage,
    /// 0 to 100.
    pub progress: u8,
    /// The blob key of the design image once completed.
    pub image_key: Option<String>,
    pub error: Option<Failure>,
    pub completed_at: Option<DateTime<Utc>>,
    pub hold_source: CreditSource,
    pub hold: HoldState,
}

impl Area {
    pub fn kind(&self) -> AreaKind {
        self.spec.area
    }

    /// Starts or advances the area's work.
    pub fn advance(&mut self, stage: AreaStage, progress: u8) -> Result<(), IllegalTransition> {
        self.status = self.status.transition(AreaStatus::Processing)?;
        self.stage = stage;
        self.progress = progress.min(100);
        Ok(())
    }

    /// Completes the area and captures its hold, both or neither. A
    /// `pending` area passes through `processing` in the same step: its
    /// image is stored, even if the writes that reported its progress were
    /// lost.
    pub fn complete(&mut self, image_key: String, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        let working = match self.status {
            AreaStatus::Pending => self.status.transition(AreaStatus::Processing)?,
            other => other,
        };
        let status = working.transition(AreaStatus::Completed)?;
        let hold = self.hold.capture().map_err(|_| IllegalTransition {
            what: "hold",
            from: "resolved",
            to: "captured",
        })?;
        (self.status, self.hold) = (status, hold);
        self.stage = AreaStage::Done;
        self.progress = 100;
        self.image_key = Some(image_key);
        self.completed_at = Some(now);
        Ok(())
    }

    /// Ends the area as failed or cancelled and voids its hold, both or neither.
    pub fn end(
        &mut self,
        status: AreaStatus,
        failure: Failure,
        now: DateTime<Utc>,
    ) -> Result<(), IllegalTransition> {
        if !matches!(status, AreaStatus::Failed | AreaStatus::Cancelled) {
            return Err(IllegalTransition { what: "area", from: self.status.as_str(), to: status.as_str() });
        }
        let new_status = self.status.transition(status)?;
        let hold = self.hold.void().map_err(|_| IllegalTransition {
            what: "hold",
            from: "resolved",
            to: "voided",
        })?;
        (self.status, self.hold) = (new_status, hold);
        self.error = Some(failure);
        self.completed_at = Some(now);
        Ok(())
    }

    /// Hands the area back for another worker: `processing` returns to `pending`.
    pub fn hand_back(&mut self) {
        if self.status == AreaStatus::Processing {
            self.status = AreaStatus::Pending;
            self.stage = AreaStage::Queued;
            self.progress = 0;
        }
    }
}

/// A generation as stored: the rows of a generation and its areas.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    pub id: GenerationId,
    pub user_id: UserId,
    pub request_id: RequestId,
    pub status: GenerationStatus,
    pub address: Address,
    pub geocoded: Option<Geocoded>,
    pub areas: Vec<Area>,
    pub error: Option<Failure>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deadline_at: DateTime<Utc>,
    /// How many times a worker has claimed it; fences every worker write.
    pub attempt: u32,
    /// The user asked to cancel.
    pub cancel_requested: bool,
}

/// What a create decides about a new generation; the store supplies the
/// time it was made.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: GenerationId,
    pub user_id: UserId,
    pub request_id: RequestId,
    pub request: GenerationRequest,
    /// Where each area's hold comes from, in the request's order (what
    /// [`crate::Account::hold`] took).
    pub sources: Vec<CreditSource>,
}

impl Generation {
    /// The generation a create makes: pending, every area queued and holding
    /// its credit. Every store builds it here, so that what it returns is
    /// what it wrote, without reading it back.
    pub fn created(c: Created, created_at: DateTime<Utc>, deadline_at: DateTime<Utc>) -> Self {
        debug_assert_eq!(c.request.areas.len(), c.sources.len(), "one hold per area");
        let areas = c
            .request
            .areas
            .into_iter()
            .zip(c.sources)
            .map(|(spec, hold_source)| Area {
                spec,
                status: AreaStatus::Pending,
                stage: AreaStage::Queued,
                progress: 0,
                image_key: None,
                error: None,
                completed_at: None,
                hold_source,
                hold: HoldState::Held,
            })
            .collect();
        Generation {
            id: c.id,
            user_id: c.user_id,
            request_id: c.request_id,
            status: GenerationStatus::Pending,
            address: c.request.address,
            geocoded: None,
            areas,
            error: None,
            created_at,
            started_at: None,
            completed_at: None,
            deadline_at,
            attempt: 0,
            cancel_requested: false,
        }
    }

    /// The generation as its create left it, whatever has happened since:
    /// what an idempotent replay answers (the first answer, rebuilt from
    /// what the store keeps rather than saved as a response).
    pub fn as_created(&self) -> Self {
        Generation::created(
            Created {
                id: self.id,
                user_id: self.user_id,
                request_id: self.request_id.clone(),
                request: GenerationRequest {
                    address: self.address.clone(),
                    areas: self.areas.iter().map(|a| a.spec.clone()).collect(),
                },
                sources: self.areas.iter().map(|a| a.hold_source).collect(),
            },
            self.created_at,
            self.deadline_at,
        )
    }

    /// One credit per area.
    pub fn cost(&self) -> u64 {
        self.areas.len() as u64
    }
    pub fn captured(&self) -> u64 {
        self.areas.iter().filter(|a| a.hold == HoldState::Captured).count() as u64
    }
    pub fn voided(&self) -> u64 {
        self.areas.iter().filter(|a| a.hold == HoldState::Voided).count() as u64
    }
    pub fn area(&self, kind: AreaKind) -> Option<&Area> {
        self.areas.iter().find(|a| a.kind() == kind)
    }
    pub fn area_mut(&mut self, kind: AreaKind) -> Option<&mut Area> {
        self.areas.iter_mut().find(|a| a.kind() == kind)
    }

    /// Ends every unfinished area with `status` and `failure`, voiding their
    /// holds. Returns the areas it ended.
    pub fn end_unfinished(
        &mut self,
        status: AreaStatus,
        failure: &Failure,
        now: DateTime<Utc>,
    ) -> Vec<AreaKind> {
        let mut ended = Vec::new();
        for a in self.areas.iter_mut().filter(|a| !a.status.is_terminal()) {
            if a.end(status, failure.clone(), now).is_ok() {
                ended.push(a.kind());
            }
        }
        ended
    }

    /// Ends every unfinished area with `status` and `failure` (voiding their
    /// holds), then settles the generation. Returns whether it is terminal
    /// now: the step that ends a generation, whoever ends it (the worker's
    /// final write, the user's cancel, the sweep).
    pub fn close(&mut self, status: AreaStatus, failure: &Failure, now: DateTime<Utc>) -> bool {
        self.end_unfinished(status, failure, now);
        self.settle(now)
    }

    /// If every area is terminal, makes the generation terminal with the
    /// status they add up to, and the generation-level error: for `failed`, the
    /// first area's failure (they usually share one), for `cancelled`, the
    /// cancellation. Returns whether it is terminal now.
    pub fn settle(&mut self, now: DateTime<Utc>) -> bool {
        if self.status.is_terminal() {
            return true;
        }
        let statuses: Vec<_> = self.areas.iter().map(|a| a.status).collect();
        let Some(status) = GenerationStatus::settle(&statuses) else {
            return false;
        };
        self.status = status;
        self.completed_at = Some(now);
        self.error = match status {
            GenerationStatus::Failed => self.areas.iter().find_map(|a| a.error.clone()),
            GenerationStatus::Cancelled => Some(Failure::cancelled()),
            _ => None,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use AreaStatus::*;

    #[test]
    fn terminal_area_states_never_change() {
        for from in [Completed, Failed, Cancelled] {
            for to in AreaStatus::ALL {
                assert!(from.transition(*to).is_err(), "{from:?} -> {to:?}");
            }
        }
        assert!(Pending.transition(Completed).is_err());
        assert!(Pending.transition(Processing).is_ok());
        assert!(Processing.transition(Pending).is_ok());
    }

    #[test]
    fn terminal_generation_states_never_change() {
        for from in GenerationStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for to in GenerationStatus::ALL {
                assert!(from.transition(*to).is_err());
            }
        }
        assert!(GenerationStatus::Pending.transition(GenerationStatus::Pending).is_err());
    }

    #[test]
    fn an_area_completes_from_pending_in_one_step_but_never_twice() {
        use crate::input::{AreaKind, AreaRequest, PreservationStrength, Style};
        let mut a = Area {
            spec: AreaRequest {
                area: AreaKind::Patio,
                style: Style::JapaneseZen,
                custom_prompt: None,
                preservation_strength: PreservationStrength::DEFAULT,
            },
            status: Pending,
            stage: AreaStage::Queued,
            progress: 0,
            image_key: None,
            error: None,
            completed_at: None,
            hold_source: CreditSource::Trial,
            hold: HoldState::Held,
        };
        let now = Utc::now();
        a.complete("k".into(), now).unwrap();
        assert_eq!((a.status, a.hold, a.stage), (Completed, HoldState::Captured, AreaStage::Done));
        assert!(a.complete("k".into(), now).is_err());
        assert!(a.end(Failed, Failure::new(ErrorCode::Internal, "x"), now).is_err());
        assert_eq!(a.hold, HoldState::Captured);
    }

    #[test]
    fn a_generation_as_created_is_the_one_its_create_made_whatever_happened_since() {
        use crate::input::{RawAreaRequest, RawGenerationRequest};
        let raw = RawGenerationRequest {
            address: "1 Main St".into(),
            areas: ["front_yard", "backyard"]
                .map(|area| RawAreaRequest {
                    area: area.into(),
                    style: "mediterranean".into(),
                    custom_prompt: Some("olives".into()),
                    preservation_strength: Some(0.4),
                })
                .to_vec(),
        };
        let request = GenerationRequest::parse(&raw).unwrap();
        let now = Utc::now();
        let made = Generation::created(
            Created {
                id: GenerationId::new_random(),
                user_id: UserId::new_random(),
                request_id: RequestId::generate(),
                request,
                sources: vec![CreditSource::Subscription, CreditSource::Token],
            },
            now,
            now + chrono::Duration::minutes(5),
        );
        assert_eq!(made.status, GenerationStatus::Pending);
        assert!(made.areas.iter().all(|a| a.status == Pending && a.hold == HoldState::Held));
        assert_eq!(made.areas[1].hold_source, CreditSource::Token);

        let mut later = made.clone();
        later.attempt = 2;
        later.status = GenerationStatus::PartiallyCompleted;
        later.started_at = Some(now);
        later.completed_at = Some(now);
        later.geocoded = Some(Geocoded {
            location: crate::LatLng::new(1.0, 2.0).unwrap(),
            formatted_address: "1 Main Street".into(),
        });
        later.areas[0].complete("k".into(), now).unwrap();
        later.areas[1].end(Failed, Failure::new(ErrorCode::Internal, "x"), now).unwrap();
        assert_ne!(later, made);
        assert_eq!(later.as_created(), made);
    }

    #[test]
    fn status_follows_from_areas() {
        use GenerationStatus as G;
        assert_eq!(G::settle(&[Completed, Completed]), Some(G::Completed));
        assert_eq!(G::settle(&[Completed, Failed]), Some(G::PartiallyCompleted));
        assert_eq!(G::settle(&[Completed, Cancelled]), Some(G::PartiallyCompleted));
        assert_eq!(G::settle(&[Failed, Cancelled]), Some(G::Cancelled));
        assert_eq!(G::settle(&[Failed, Failed]), Some(G::Failed));
        assert_eq!(G::settle(&[Failed, Processing]), None);
        assert_eq!(G::settle(&[]), None);
    }
}
