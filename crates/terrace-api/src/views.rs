//! What a domain record shows on the wire (CONTRACT §4, §7): the API
//! builds terrace-wire's types from what it stores. Only this module decides
//! which of a record's facts an answer shows.

use terrace_domain::billing::{CURRENCY, PACKAGES, Plan, Subscription, SubscriptionStatus};
use terrace_domain::{Account, AreaStatus, Failure, Generation, LedgerEntry};
use terrace_wire as wire;

/// The path a generation is found at.
pub fn generation_path(g: &Generation) -> String {
    format!("/v1/generations/{}", g.id)
}

fn error(f: &Failure) -> wire::ErrorInfo {
    wire::ErrorInfo { code: f.code.as_str().to_owned(), message: f.message.clone() }
}

/// A generation; an area's `image_url` once it is completed.
pub fn generation(g: &Generation) -> wire::Generation {
    let path = generation_path(g);
    wire::Generation {
        id: g.id.0,
        user_id: g.user_id.0,
        request_id: g.request_id.to_string(),
        status: g.status,
        address: g.address.as_str().to_owned(),
        geocoded_address: g.geocoded.as_ref().map(|x| x.formatted_address.clone()),
        location: g.geocoded.as_ref().map(|x| wire::Location { lat: x.location.lat, lng: x.location.lng }),
        cost: g.cost(),
        captured: g.captured(),
        voided: g.voided(),
        areas: g
            .areas
            .iter()
            .map(|a| wire::AreaView {
                area: a.kind(),
                style: a.spec.style,
                status: a.status,
                stage: a.stage,
                progress: a.progress,
                image_url: (a.status == AreaStatus::Completed)
                    .then(|| format!("{path}/areas/{}/image", a.kind())),
                error: a.error.as_ref().map(error),
                completed_at: a.completed_at,
            })
            .collect(),
        error: g.error.as_ref().map(error),
        created_at: g.created_at,
        started_at: g.started_at,
        completed_at: g.completed_at,
        deadline_at: g.deadline_at,
    }
}

/// A generation's JSON, rendered once (the event stream compares it).
pub fn generation_json(g: &Generation) -> String {
    serde_json::to_string(&generation(g)).expect("a generation always serializes")
}

/// An account, with its subscription: `null` for a user who never subscribed.
pub fn account(a: &Account, sub: &Subscription) -> wire::Account {
    wire::Account {
        user_id: a.user_id.0,
        trial_credits: a.trial_credits,
        token_balance: a.token_balance,
        held: a.held,
        captured: a.captured,
        subscription: (sub.status != SubscriptionStatus::None || sub.plan.is_some()).then(|| {
            wire::SubscriptionSummary {
                plan: sub.plan.clone(),
                status: sub.status,
                current_period_end: sub.current_period_end,
            }
        }),
    }
}

pub fn transaction(e: &LedgerEntry) -> wire::Transaction {
    wire::Transaction {
        id: e.id,
        kind: e.kind,
        amount: e.amount,
        source: e.source,
        generation_id: e.generation_id.map(|g| g.0),
        area: e.area,
        reference: e.reference.clone(),
        created_at: e.created_at,
    }
}

/// `GET /v1/billing/subscription`, and the answer of a cancel.
pub fn subscription(s: &Subscription) -> wire::Subscription {
    wire::Subscription {
        plan: s.plan.clone(),
        status: s.status,
        current_period_end: s.current_period_end,
        cancel_at_period_end: s.cancel_at_period_end,
    }
}

/// Every package, and the plan when it is on offer.
pub fn catalogue(plan: Option<Plan>) -> wire::Catalogue {
    let packages = PACKAGES
        .iter()
        .map(|p| wire::Package {
            id: p.id.to_owned(),
            tokens: p.tokens,
            price_cents: p.price_cents,
            currency: CURRENCY.to_owned(),
        })
        .collect();
    let plans = plan
        .map(|p| wire::Plan {
            id: p.id.to_owned(),
            price_cents: p.price_cents,
            currency: CURRENCY.to_owned(),
            interval: p.interval.to_owned(),
        })
        .into_iter()
        .collect();
    wire::Catalogue { packages, plans }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
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
    fn sample() -> Generation {
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
        assert_eq!(generation_json(&sample()), expected);
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
            serde_json::to_string(&super::account(&account, &sub)).unwrap(),
            concat!(
                r#"{"user_id":"00000000-0000-0000-0000-000000000001","trial_credits":3,"token_balance":10,"#,
                r#""held":2,"captured":5,"subscription":{"plan":"monthly_pro","status":"active","#,
                r#""current_period_end":"2026-01-02T00:00:00Z"}}"#
            )
        );
        assert_eq!(
            serde_json::to_string(&super::account(&account, &Subscription::default())).unwrap(),
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
        let page = wire::Page { items: vec![transaction(&entry)], next_cursor: Some("c1".into()) };
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            concat!(
                r#"{"items":[{"id":7,"kind":"void","amount":1,"source":"trial","#,
                r#""generation_id":"00000000-0000-0000-0000-000000000002","area":"pool_area","reference":null,"#,
                r#""created_at":"2026-01-01T00:00:05.001Z"}],"next_cursor":"c1"}"#
            )
        );
        let task = wire::TaskView::new(Uuid::from_u128(2), "r1", 2, at(1, 0), at(301, 0), "designing");
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
