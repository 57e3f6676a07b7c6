//! Every validation error of CONTRACT §4 gets its 4xx with the field named,
//! and holds nothing.

use crate::support::*;
use serde_json::{Value, json};
use terrace_domain::UserId;

fn area(a: &str, s: &str) -> Value {
    json!({"area": a, "style": s})
}

#[tokio::test]
async fn bad_create_requests_are_4xx_and_hold_nothing() {
    let sim = simulator().await;
    let t = Terrace::start(&base_env(&sim)).await;
    let token = t.token(UserId::new_random());
    let addr = "12 Main Street, Springfield";
    let six: Vec<Value> = ["front_yard", "backyard", "walkway", "side_yard", "patio", "pool_area"]
        .iter()
        .map(|a| area(a, "japanese_zen"))
        .collect();
    // (name, body, expected status, a field that must be named)
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not json", "{".into(), 400, "body"),
        ("an array", "[]".into(), 400, "body"),
        ("unknown field", json!({"address": addr, "areas": [area("patio", "japanese_zen")], "x": 1}).to_string(), 400, ""),
        ("unknown area field", json!({"address": addr, "areas": [{"area": "patio", "style": "japanese_zen", "colour": "red"}]}).to_string(), 400, "areas"),
        ("missing areas", json!({"address": addr}).to_string(), 400, ""),
        ("address too short", json!({"address": "1 A", "areas": [area("patio", "japanese_zen")]}).to_string(), 400, "address"),
        ("address too long", json!({"address": "x".repeat(201), "areas": [area("patio", "japanese_zen")]}).to_string(), 400, "address"),
        ("address not a string", json!({"address": 12345, "areas": [area("patio", "japanese_zen")]}).to_string(), 400, "address"),
        ("no areas", json!({"address": addr, "areas": []}).to_string(), 400, "areas"),
        (
            "six areas",
            json!({"address": addr, "areas": six}).to_string(),
            400,
            "areas",
        ),
        ("an area twice", json!({"address": addr, "areas": [area("patio", "japanese_zen"), area("patio", "mediterranean")]}).to_string(), 400, "areas[1].area"),
        ("unknown area", json!({"address": addr, "areas": [area("roof", "japanese_zen")]}).to_string(), 400, "areas[0].area"),
        ("unknown style", json!({"address": addr, "areas": [area("patio", "gothic")]}).to_string(), 400, "areas[0].style"),
        (
            "custom prompt too long",
            json!({"address": addr, "areas": [{"area": "patio", "style": "japanese_zen", "custom_prompt": "x".repeat(501)}]}).to_string(),
            400,
            "areas[0].custom_prompt",
        ),
        (
            "preservation out of range",
            json!({"address": addr, "areas": [{"area": "patio", "style": "japanese_zen", "preservation_strength": 1.5}]}).to_string(),
            400,
            "areas[0].preservation_strength",
        ),
        (
            "preservation not a number",
            json!({"address": addr, "areas": [{"area": "patio", "style": "japanese_zen", "preservation_strength": "high"}]}).to_string(),
            400,
            "areas[0].preservation_strength",
        ),
    ];
    for (name, body, status, field) in cases {
        let res = t
            .http
            .post(t.url("/v1/generations"))
            .header("authorization", &token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{name}");
        assert_eq!(res.headers()["content-type"], "application/problem+json", "{name}");
        let p: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(p["code"], "validation_failed", "{name}: {p}");
        let errors = p["errors"].as_array().unwrap_or_else(|| panic!("{name}: no errors in {p}"));
        assert!(!errors.is_empty());
        assert!(
            errors
                .iter()
                .any(|e| e["field"].as_str().unwrap().starts_with(field) && e["message"].is_string()),
            "{name}: {field} not named in {p}"
        );
    }
    // Several problems at once are all reported.
    let (_, _, p) = t
        .post("/v1/generations", &token, &json!({"address": "x", "areas": [area("roof", "gothic")]}), None)
        .await;
    let fields: Vec<&str> =
        p["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["address", "areas[0].area", "areas[0].style"]);

    // Not JSON: 415. Too large: 413. A bad Idempotency-Key: 400.
    let res = t
        .http
        .post(t.url("/v1/generations"))
        .header("authorization", &token)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = t
        .http
        .post(t.url("/v1/generations"))
        .header("authorization", &token)
        .body(request(&[("patio", "japanese_zen")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415, "no content type");
    let huge = json!({"address": addr, "areas": [{"area": "patio", "style": "japanese_zen", "custom_prompt": "x".repeat(65 * 1024)}]});
    let res = t
        .http
        .post(t.url("/v1/generations"))
        .header("authorization", &token)
        .header("content-type", "application/json")
        .body(huge.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let (status, _, p) = t
        .post("/v1/generations", &token, &request(&[("patio", "japanese_zen")]), Some(&"k".repeat(256)))
        .await;
    assert_eq!(status, 400);
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key");

    // Nothing was held by any of it.
    let account = t.account(&token).await;
    assert_eq!((account["trial_credits"].as_u64(), account["held"].as_u64()), (Some(3), Some(0)));
    let (_, list) = t.get("/v1/generations", &token).await;
    assert_eq!(list["items"], json!([]));
}

async fn bad_queries_paths_and_grants(backend: Backend) {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());
    for (path, field) in [
        ("/v1/generations?limit=0", "limit"),
        ("/v1/generations?limit=51", "limit"),
        ("/v1/generations?limit=ten", "limit"),
        ("/v1/generations?status=done", "status"),
        ("/v1/generations?cursor=not-a-cursor", "cursor"),
        ("/v1/account/transactions?limit=0", "limit"),
        ("/v1/account/transactions?cursor=zzz", "cursor"),
    ] {
        let (status, p) = t.get(path, &token).await;
        assert_eq!(status, 400, "{path}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{path}");
    }
    assert_eq!(t.get("/v1/generations?limit=50", &token).await.0, 200);
    for path in [
        "/v1/generations/not-a-uuid",
        "/v1/generations/6b0f4a53-3f5e-4d1a-9d7e-9a1d2c3b4a5f",
        "/v1/generations/6b0f4a53-3f5e-4d1a-9d7e-9a1d2c3b4a5f/areas/patio/image",
    ] {
        assert_eq!(t.get(path, &token).await.0, 404, "{path}");
    }
    // An area not completed yet, an area not in the generation, an unknown source.
    let sim_hang = terrace_simulator::Behaviour::HangBeforeHeaders;
    sim.set_default(terrace_simulator::Endpoint::Gemini, sim_hang);
    let (_, g) = t.create(&token, &[("patio", "japanese_zen")]).await;
    let id = g["id"].as_str().unwrap();
    for path in [
        format!("/v1/generations/{id}/areas/patio/image"),
        format!("/v1/generations/{id}/areas/backyard/image"),
        format!("/v1/generations/{id}/areas/roof/image"),
        format!("/v1/generations/{id}/source-images/aerial"),
    ] {
        assert_eq!(t.get(&path, &token).await.0, 404, "{path}");
    }

    let admin = t.admin_token();
    let user = UserId::new_random().to_string();
    for (body, field) in [
        (json!({"user_id": user, "amount": 0, "reference": "r"}), "amount"),
        (json!({"user_id": user, "amount": 100001, "reference": "r"}), "amount"),
        (json!({"user_id": user, "amount": 1.5, "reference": "r"}), "amount"),
        (json!({"user_id": user, "amount": 5, "reference": ""}), "reference"),
        (json!({"user_id": user, "amount": 5, "reference": "r".repeat(256)}), "reference"),
        (json!({"user_id": "bob", "amount": 5, "reference": "r"}), "user_id"),
        (json!({"user_id": user, "amount": 5, "reference": "r", "note": "x"}), ""),
    ] {
        let (status, _, p) = t.post("/v1/admin/credits", &admin, &body, None).await;
        assert_eq!(status, 400, "{body}: {p}");
        assert!(p["errors"][0]["field"].as_str().unwrap().starts_with(field), "{body}: {p}");
    }
}

#[tokio::test]
async fn bad_queries_paths_and_grants_are_4xx_in_memory() {
    bad_queries_paths_and_grants(Backend::Memory).await;
}

#[tokio::test]
async fn bad_queries_paths_and_grants_are_4xx_on_postgres() {
    bad_queries_paths_and_grants(crate::support::Backend::postgres().await).await;
}
