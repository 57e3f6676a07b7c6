//! Each upstream fault ends its area with the contract's error code and voids
//! the hold. One server per table; scenarios run one after another with the
//! simulator reset between them.

use crate::support::*;
use terrace_domain::UserId;
use terrace_simulator::{Behaviour, Endpoint, Simulator};

/// (name, area, endpoint, behaviour, persistent?, expected code)
type Scenario = (&'static str, &'static str, Endpoint, Behaviour, bool, &'static str);

async fn check(backend: Backend, scenarios: Vec<Scenario>, tune: &[(&str, &str)]) {
    let sim: Simulator = simulator().await;
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    for (k, v) in tune {
        set(&mut env, k, v);
    }
    let t = Terrace::start(&env).await;
    let mut failures = Vec::new();
    for (name, area, endpoint, behaviour, persistent, code) in scenarios {
        sim.reset();
        if persistent {
            sim.set_default(endpoint, behaviour);
        } else {
            sim.script(endpoint, behaviour);
        }
        let token = t.token(UserId::new_random());
        let (status, g) = t.create(&token, &[(area, "mediterranean")]).await;
        assert_eq!(status, 202, "{name}: {g}");
        let g = t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
        let got = g["areas"][0]["error"]["code"].as_str().unwrap_or("none").to_owned();
        let account = t.account(&token).await;
        let ok = got == code
            && g["status"] == "failed"
            && g["error"]["code"] == code
            && g["voided"] == 1
            && g["captured"] == 0
            && account["held"] == 0
            && account["trial_credits"] == 3;
        if !ok {
            failures.push(format!("{name}: expected {code}, got {got}; generation {g}; account {account}"));
        }
    }
    assert!(failures.is_empty(), "{}\n\nlogs:\n{}", failures.join("\n"), t.logs());
}

fn permanent_faults() -> Vec<Scenario> {
    vec![
        (
            "geocode ZERO_RESULTS",
            "patio",
            Endpoint::Geocode,
            Behaviour::zero_results(),
            false,
            "address_not_found",
        ),
        (
            "geocode REQUEST_DENIED",
            "patio",
            Endpoint::Geocode,
            Behaviour::MapsStatus { status: "REQUEST_DENIED".into() },
            false,
            "upstream_rejected",
        ),
        (
            "no satellite image",
            "backyard",
            Endpoint::StaticMap,
            Behaviour::MapsStatus { status: "ZERO_RESULTS".into() },
            true,
            "imagery_unavailable",
        ),
        (
            "blocked finish",
            "patio",
            Endpoint::Gemini,
            Behaviour::BlockedFinish { reason: "IMAGE_SAFETY".into() },
            false,
            "content_blocked",
        ),
        (
            "blocked prompt",
            "patio",
            Endpoint::Gemini,
            Behaviour::BlockedPrompt { reason: "SAFETY".into() },
            false,
            "content_blocked",
        ),
        ("no image", "patio", Endpoint::Gemini, Behaviour::NoImage, false, "no_image"),
        ("gemini 400", "patio", Endpoint::Gemini, Behaviour::status(400), false, "upstream_rejected"),
        ("gemini 503", "patio", Endpoint::Gemini, Behaviour::status(503), true, "upstream_unavailable"),
        ("gemini reset", "patio", Endpoint::Gemini, Behaviour::ConnectionReset, true, "upstream_unavailable"),
        (
            "geocode OVER_QUERY_LIMIT",
            "patio",
            Endpoint::Geocode,
            Behaviour::over_query_limit(),
            true,
            "upstream_unavailable",
        ),
    ]
}

#[tokio::test]
async fn permanent_faults_end_the_area_with_their_code_in_memory() {
    check(Backend::Memory, permanent_faults(), &[]).await;
}

#[tokio::test]
async fn permanent_faults_end_the_area_with_their_code_on_postgres() {
    check(crate::support::Backend::postgres().await, permanent_faults(), &[]).await;
}

#[tokio::test]
async fn silent_upstreams_end_the_area_with_a_timeout() {
    check(
        Backend::Memory,
        vec![
            (
                "geocode hangs",
                "patio",
                Endpoint::Geocode,
                Behaviour::HangBeforeHeaders,
                true,
                "upstream_timeout",
            ),
            (
                "gemini hangs",
                "patio",
                Endpoint::Gemini,
                Behaviour::HangBeforeHeaders,
                true,
                "upstream_timeout",
            ),
            (
                "gemini stalls mid-stream",
                "patio",
                Endpoint::Gemini,
                Behaviour::StallAfterFirstEvent,
                true,
                "upstream_timeout",
            ),
        ],
        &[
            ("TERRACE_RETRY_MAX_ATTEMPTS", "1"),
            ("TERRACE_MAPS_TIMEOUT", "500ms"),
            ("TERRACE_LLM_IDLE_TIMEOUT", "500ms"),
        ],
    )
    .await;
}
