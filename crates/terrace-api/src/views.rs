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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use terrace_domain::billing::{Subscription, SubscriptionStatus};
    use terrace_domain::input::{RawAreaRequest, RawGenerationRequest};
    use terrace_domain::state::{AreaStage, Geocoded};
    use terrace_domain::{
        Created, CreditSource, ErrorCode, GenerationId, GenerationRequest, GenerationStatus, LatLng,
        LedgerKind, RequestId, UserId,
    };
    use uuid::Uuid;

    /// A time with more precision than the wire shows.
    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(1_767_225_600 + secs, nanos).unwrap()
    }

    fn area(area: &str, style: &str, prompt: Option<&str>) -> RawAreaRequest {
        RawAreaRequest {
            area: area.into(),
            style: style.into(),
            custom_prompt: prompt.map(Into::into),
            preservation_strength: Some(0.25),
        }
    }

    /// One generation in every state an area can show: completed, failed,
    /// still working.
    fn generation() -> Generation {
        let raw = RawGenerationRequest {
            address: "12 \"Garden\" Lane, Zürich".into(),
            areas: vec![
                area("front_yard", "japanese_zen", None),
                area("backyard", "mediterranean", Some("olive trees")),
                area("patio", "modern_minimalist", None),
            ],
        };
        let created = Created {
            id: GenerationId(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)),
            user_id: UserId(Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210)),
            request_id: RequestId::parse("req-1.a_b").unwrap(),
            request: GenerationRequest::parse(&raw).unwrap(),
            sources: vec![CreditSource::Trial, CreditSource::Token, CreditSource::Subscription],
        };
        let mut g = Generation::created(created, at(0, 123_456_789), at(300, 123_456_789));
        g.status = GenerationStatus::Processing;
        g.started_at = Some(at(1, 5_000_000));
        g.geocoded = Some(Geocoded {
            formatted_address: "12 Garden Lane, 8001 Zürich, Switzerland".into(),
            location: LatLng::new(47.376_886, 8.541_694).unwrap(),
        });
        g.areas[0].complete("designs/front_yard".into(), at(42, 999_999_999)).unwrap();
        g.areas[1]
            .end(
                AreaStatus::Failed,
                Failure::new(ErrorCode::ContentBlocked, "the model declined to draw it"),
                at(43, 0),
            )
            .unwrap();
        g.areas[2].advance(AreaStage::GeneratingDesign, 40).unwrap();
        g
    }

    /// The bytes the API sends for a generation: field order, timestamps in
    /// milliseconds with `Z`, `null`s, the image URL only once completed.
    #[test]
    fn a_generation_s_json_is_pinned() {
        let expected = concat!(
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","user_id":"fedcba98-7654-3210-fedc-ba9876543210","#,
            r#""request_id":"req-1.a_b","status":"processing","address":"12 \"Garden\" Lane, Zürich","#,
            r#""geocoded_address":"12 Garden Lane, 8001 Zürich, Switzerland","#,
            r#""location":{"lat":47.376886,"lng":8.541694},"cost":3,"captured":1,"voided":1,"areas":["#,
            r#"{"area":"front_yard","style":"japanese_zen","status":"completed","stage":"done","progress":100,"#,
            r#""image_url":"/v1/generations/01234567-89ab-cdef-0123-456789abcdef/areas/front_yard/image","#,
            r#""error":null,"completed_at":"2026-01-01T00:00:42.999Z"},"#,
            r#"{"area":"backyard","style":"mediterranean","status":"failed","stage":"queued","progress":0,"#,
            r#""image_url":null,"error":{"code":"content_blocked","message":"the model declined to draw it"},"#,
            r#""completed_at":"2026-01-01T00:00:43.000Z"},"#,
            r#"{"area":"patio","style":"modern_minimalist","status":"processing","stage":"generating_design","#,
            r#""progress":40,"image_url":null,"error":null,"completed_at":null}],"#,
            r#""error":null,"created_at":"2026-01-01T00:00:00.123Z","started_at":"2026-01-01T00:00:01.005Z","#,
            r#""completed_at":null,"deadline_at":"2026-01-01T00:05:00.123Z"}"#,
        );
        assert_eq!(GenerationView::json(&generation()), expected);
    }

    #[test]
    fn an_account_a_transaction_and_a_task_are_pinned() {
        let user = UserId(Uuid::from_u128(1));
        let account = Account { user_id: user, trial_credits: 3, token_balance: 10, held: 2, captured: 5 };
        let sub = Subscription {
            plan: Some("monthly_pro".into()),
            status: SubscriptionStatus::Active,
            current_period_end: Some(at(86_400, 500_000_000)),
            cancel_at_period_end: true,
            ..Subscription::default()
        };
        assert_eq!(
            serde_json::to_string(&AccountView::of(&account, &sub)).unwrap(),
            concat!(
                r#"{"user_id":"00000000-0000-0000-0000-000000000001","trial_credits":3,"token_balance":10,"#,
                r#""held":2,"captured":5,"subscription":{"plan":"monthly_pro","status":"active","#,
                r#""current_period_end":"2026-01-02T00:00:00Z"}}"#
            )
        );
        assert_eq!(
            serde_json::to_string(&AccountView::of(&account, &Subscription::default())).unwrap(),
            concat!(
                r#"{"user_id":"00000000-0000-0000-0000-000000000001","trial_credits":3,"token_balance":10,"#,
                r#""held":2,"captured":5,"subscription":null}"#
            )
        );
        let entry = LedgerEntry {
            id: 7,
            user_id: user,
            kind: LedgerKind::Void,
            amount: 1,
            source: CreditSource::Trial,
            generation_id: Some(GenerationId(Uuid::from_u128(2))),
            area: Some(terrace_domain::AreaKind::PoolArea),
            reference: None,
            created_at: at(5, 1_500_000),
        };
        let page = PageView { items: vec![TransactionView::of(&entry)], next_cursor: Some("c1".into()) };
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            concat!(
                r#"{"items":[{"id":7,"kind":"void","amount":1,"source":"trial","#,
                r#""generation_id":"00000000-0000-0000-0000-000000000002","area":"pool_area","reference":null,"#,
                r#""created_at":"2026-01-01T00:00:05.001Z"}],"next_cursor":"c1"}"#
            )
        );
        let task = TaskView::new(Uuid::from_u128(2), "r1", 2, at(1, 0), at(301, 0), "designing");
        assert_eq!(
            serde_json::to_string(&[task]).unwrap(),
            concat!(
                r#"[{"generation_id":"00000000-0000-0000-0000-000000000002","request_id":"r1","attempt":2,"#,
                r#""started_at":"2026-01-01T00:00:01.000Z","deadline_at":"2026-01-01T00:05:01.000Z","#,
                r#""stage":"designing"}]"#
            )
        );
    }
}
