use crate::support::*;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use terrace_domain::UserId;
use terrace_simulator::{Behaviour, Endpoint};

async fn happy_path(backend: Backend) {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());

    let (status, location, g) = t
        .post(
            "/v1/generations",
            &token,
            &request(&[("front_yard", "japanese_zen"), ("backyard", "mediterranean")]),
            None,
        )
        .await;
    assert_eq!(status, 202, "{g}");
    let id = g["id"].as_str().unwrap().to_owned();
    assert_eq!(location.as_deref(), Some(format!("/v1/generations/{id}").as_str()));
    assert_eq!(g["status"], "pending");
    assert_eq!(g["cost"], 2);
    assert_eq!(t.account(&token).await["held"], 2);

    let done = t.wait_terminal(&id, &token).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!((done["captured"].as_u64(), done["voided"].as_u64()), (Some(2), Some(0)));
    assert!(done["geocoded_address"].is_string() && done["location"]["lat"].is_f64());
    for area in done["areas"].as_array().unwrap() {
        assert_eq!(area["status"], "completed");
        assert_eq!(area["progress"], 100);
        let url = area["image_url"].as_str().unwrap();
        let res = t.http.get(t.url(url)).header("authorization", &token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "image/png");
        assert!(res.bytes().await.unwrap().starts_with(b"\x89PNG"));
    }
    // The imagery the designs were drawn from.
    for source in ["street_view", "satellite"] {
        let res = t
            .http
            .get(t.url(&format!("/v1/generations/{id}/source-images/{source}")))
            .header("authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{source}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("image/"));
    }
    let account = t.account(&token).await;
    assert_eq!(
        (account["held"].as_u64(), account["captured"].as_u64(), account["trial_credits"].as_u64()),
        (Some(0), Some(2), Some(1))
    );
    assert_conserved(&account, 3);

    // The history: one trial credit, two holds, two captures, newest first.
    let (status, tx) = t.get("/v1/account/transactions?limit=10", &token).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> =
        tx["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "capture").count(), 2, "{tx}");
    assert_eq!(kinds.last(), Some(&"credit"));
    let (_, page) = t.get("/v1/account/transactions?limit=2", &token).await;
    let cursor = page["next_cursor"].as_str().expect("a next page").to_owned();
    let (status, next) = t.get(&format!("/v1/account/transactions?limit=2&cursor={cursor}"), &token).await;
    assert_eq!(status, 200);
    assert_ne!(next["items"][0]["id"], page["items"][0]["id"]);

    // The listing, filtered.
    let (_, list) = t.get("/v1/generations?status=completed", &token).await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    let (_, none) = t.get("/v1/generations?status=failed", &token).await;
    assert_eq!(none["items"], json!([]));

    // Every background line of the generation carries the request id that created it.
    let rid = done["request_id"].as_str().unwrap();
    let logs = t.logs();
    let work: Vec<&str> = logs.lines().filter(|l| l.contains(&id) && l.contains("generation")).collect();
    assert!(!work.is_empty());
    assert!(logs.lines().filter(|l| l.contains("area completed")).all(|l| l.contains(rid)), "{logs}");
}

#[tokio::test]
async fn two_areas_complete_and_their_images_download_in_memory() {
    happy_path(Backend::Memory).await;
}

#[tokio::test]
async fn two_areas_complete_and_their_images_download_on_postgres() {
    happy_path(crate::support::Backend::postgres().await).await;
}

async fn cancel_flow(backend: Backend) {
    let sim = simulator().await;
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    set(&mut env, "TERRACE_LLM_IDLE_TIMEOUT", "30s");
    let t = Terrace::start(&env).await;
    let user = UserId::new_random();
    let token = t.token(user);
    let (status, g) =
        t.create(&token, &[("patio", "tropical_resort"), ("pool_area", "modern_minimalist")]).await;
    assert_eq!(status, 202);
    let id = g["id"].as_str().unwrap().to_owned();
    t.wait_for(&id, &token, Duration::from_secs(5), |g| g["areas"][0]["stage"] == "generating_design").await;

    // Only the owner may cancel.
    let (status, _, _) = t
        .post(&format!("/v1/generations/{id}/cancel"), &t.token(UserId::new_random()), &json!({}), None)
        .await;
    assert_eq!(status, 404);

    let (status, _, g) = t.post(&format!("/v1/generations/{id}/cancel"), &token, &json!({}), None).await;
    assert_eq!(status, 202, "{g}");
    assert_eq!(g["status"], "cancelled");
    assert_eq!(g["voided"], 2);
    assert!(
        g["areas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "cancelled" && a["error"]["code"] == "cancelled")
    );
    assert_eq!(g["error"]["code"], "cancelled");
    let account = t.account(&token).await;
    assert_eq!((account["held"].as_u64(), account["trial_credits"].as_u64()), (Some(0), Some(3)));

    // A second cancel: 409. The worker stops: the task list empties.
    let (status, _, p) = t.post(&format!("/v1/generations/{id}/cancel"), &token, &json!({}), None).await;
    assert_eq!(status, 409, "{p}");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (_, tasks) = t.get("/v1/admin/tasks", &t.admin_token()).await;
            if tasks == json!([]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("the cancelled generation kept running");
}

#[tokio::test]
async fn cancel_ends_unfinished_areas_and_voids_their_holds_in_memory() {
    cancel_flow(Backend::Memory).await;
}

#[tokio::test]
async fn cancel_ends_unfinished_areas_and_voids_their_holds_on_postgres() {
    cancel_flow(crate::support::Backend::postgres().await).await;
}

async fn idempotency_flow(backend: Backend) {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());
    let body = request(&[("walkway", "english_garden")]);
    let first = t.post("/v1/generations", &token, &body, Some("order-42")).await;
    assert_eq!(first.0, 202);
    let again = t.post("/v1/generations", &token, &body, Some("order-42")).await;
    assert_eq!(again, first, "the replay differs from the first answer");
    // Nothing more was held.
    let account = t.account(&token).await;
    assert_eq!(
        account["trial_credits"].as_u64().unwrap()
            + account["held"].as_u64().unwrap()
            + account["captured"].as_u64().unwrap(),
        3
    );
    assert_eq!(account["held"].as_u64().unwrap() + account["captured"].as_u64().unwrap(), 1);
    let (_, list) = t.get("/v1/generations", &token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // The same key with another body.
    let (status, _, p) =
        t.post("/v1/generations", &token, &request(&[("patio", "english_garden")]), Some("order-42")).await;
    assert_eq!(status, 422);
    assert_eq!(p["code"], "idempotency_key_reused");
    // Keys are per user: another user may use the same key.
    let (status, _, _) =
        t.post("/v1/generations", &t.token(UserId::new_random()), &body, Some("order-42")).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body_in_memory() {
    idempotency_flow(Backend::Memory).await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body_on_postgres() {
    idempotency_flow(crate::support::Backend::postgres().await).await;
}

async fn thirty_creates_on_five_credits(backend: Backend) {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    set(&mut env, "TERRACE_TRIAL_CREDITS", "5");
    backend.apply(&mut env);
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());
    assert_conserved(&t.account(&token).await, 5);
    let creates = (0..30).map(|_| t.create(&token, &[("side_yard", "desert_landscape")]));
    let answers = futures::future::join_all(creates).await;
    let accepted: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 202).map(|(_, g)| g).collect();
    for (status, body) in &answers {
        assert!(matches!(status, 202 | 402 | 409), "{status}: {body}");
        if *status == 402 {
            assert_eq!(body["code"], "insufficient_credits");
        }
        if *status == 409 {
            assert_eq!(body["code"], "account_busy");
        }
    }
    assert!(accepted.len() <= 5 && !accepted.is_empty(), "{} accepted", accepted.len());
    for g in &accepted {
        t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    }
    let account = t.account(&token).await;
    assert_conserved(&account, 5);
    assert_eq!(account["held"], 0);
    assert_eq!(account["captured"].as_u64().unwrap() as usize, accepted.len());
}

#[tokio::test]
async fn thirty_concurrent_creates_on_five_credits_hold_at_most_five_in_memory() {
    thirty_creates_on_five_credits(Backend::Memory).await;
}

#[tokio::test]
async fn thirty_concurrent_creates_on_five_credits_hold_at_most_five_on_postgres() {
    thirty_creates_on_five_credits(crate::support::Backend::postgres().await).await;
}

#[tokio::test]
async fn the_event_stream_follows_a_generation_to_its_end() {
    let sim = simulator().await;
    sim.set_latency(Duration::from_millis(100));
    let t = Terrace::start(&base_env(&sim)).await;
    let token = t.token(UserId::new_random());
    let (_, g) = t.create(&token, &[("front_yard", "california_native")]).await;
    let id = g["id"].as_str().unwrap();
    let res = t
        .http
        .get(t.url(&format!("/v1/generations/{id}/events")))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(8), async {
        let mut body = res.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    })
    .await
    .expect("the stream did not end after the terminal state");
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("event: generation\ndata: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(events.len() >= 2, "{text}");
    assert_eq!(events.last().unwrap()["status"], "completed");
    assert!(events[..events.len() - 1].iter().all(|e| !is_terminal(e)));
    let stages: Vec<&str> = events.iter().map(|e| e["areas"][0]["stage"].as_str().unwrap()).collect();
    assert!(stages.contains(&"generating_design") || stages.contains(&"retrieving_imagery"), "{stages:?}");
}

#[tokio::test]
async fn admin_grants_credit_once_per_reference() {
    let sim = simulator().await;
    let t = Terrace::start(&base_env(&sim)).await;
    let user = UserId::new_random();
    let grant = json!({"user_id": user.to_string(), "amount": 10, "reference": "pay_123"});
    let (status, _, a) = t.post("/v1/admin/credits", &t.admin_token(), &grant, None).await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["token_balance"], 10);
    let (status, _, a) = t.post("/v1/admin/credits", &t.admin_token(), &grant, None).await;
    assert_eq!(status, 200);
    assert_eq!(a["token_balance"], 10);
    let account = t.account(&t.token(user)).await;
    assert_eq!((account["token_balance"].as_u64(), account["trial_credits"].as_u64()), (Some(10), Some(3)));
    // Not for users.
    let (status, _, p) = t.post("/v1/admin/credits", &t.token(user), &grant, None).await;
    assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")));
}

#[tokio::test]
async fn metrics_expose_every_contract_name_after_work() {
    let sim = simulator().await;
    let t = Terrace::start(&base_env(&sim)).await;
    let token = t.token(UserId::new_random());
    let (_, g) = t.create(&token, &[("patio", "japanese_zen")]).await;
    t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    let text = t.http.get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "terrace_generation_tasks_active",
        "terrace_generations_total{outcome=\"completed\"} 1",
        "terrace_generation_duration_seconds_count 1",
        "terrace_generations_stuck",
        "terrace_db_pool_connections",
        "terrace_db_pool_max",
        "terrace_db_acquire_timeouts_total",
        "terrace_upstream_requests_total{upstream=\"gemini\",outcome=\"ok\"} 1",
        "terrace_upstream_timeouts_total",
        "terrace_upstream_request_duration_seconds_bucket",
        "terrace_credits_held 0",
        "terrace_holds_voided_total",
        "terrace_event_streams_active 0",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}

#[tokio::test]
async fn roles_split_the_routes() {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    set(&mut env, "TERRACE_ROLE", "worker");
    let worker = Terrace::start(&env).await;
    let token = worker.token(UserId::new_random());
    assert_eq!(worker.get("/v1/account", &token).await.0, 404);
    for ops in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(worker.http.get(worker.url(ops)).send().await.unwrap().status(), 200, "{ops}");
    }
    set(&mut env, "TERRACE_ROLE", "api");
    let api = Terrace::start(&env).await;
    assert_eq!(api.get("/v1/admin/tasks", &api.admin_token()).await, (200, json!([])));
    assert_eq!(api.get("/v1/account", &token).await.0, 200);
}

#[tokio::test]
async fn json_logs_carry_the_request_id_on_every_line_of_the_work() {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    set(&mut env, "TERRACE_LOG_FORMAT", "json");
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());
    let res = t
        .http
        .post(t.url("/v1/generations"))
        .header("authorization", &token)
        .header("content-type", "application/json")
        .header("x-request-id", "trace-0042")
        .body(request(&[("patio", "japanese_zen"), ("walkway", "mediterranean")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-0042");
    let g: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(g["request_id"], "trace-0042");
    let id = g["id"].as_str().unwrap();
    t.wait_terminal(id, &token).await;
    let logs = t.logs();
    let lines: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of_work: Vec<&Value> = lines
        .iter()
        .filter(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["generation_id"] == id)))
        .collect();
    assert!(of_work.len() >= 3, "{logs}");
    for line in of_work {
        let carries = line["spans"].as_array().unwrap().iter().any(|s| s["request_id"] == "trace-0042");
        assert!(carries, "a line of the work lacks the request id: {line}");
    }
}

#[tokio::test]
async fn api_and_worker_instances_scale_apart_on_one_postgres() {
    let backend = crate::support::Backend::postgres().await;
    let sim = simulator().await;
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    set(&mut env, "TERRACE_LLM_IDLE_TIMEOUT", "30s");
    set(&mut env, "TERRACE_ROLE", "worker");
    let worker = Terrace::start(&env).await;
    set(&mut env, "TERRACE_ROLE", "api");
    let api = Terrace::start(&env).await;
    let token = api.token(UserId::new_random());

    // Created on the api instance, run by the worker, images served by the api instance.
    let (status, g) = api.create(&token, &[("backyard", "desert_landscape")]).await;
    assert_eq!(status, 202);
    let done = api.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", worker.logs());
    let image = done["areas"][0]["image_url"].as_str().unwrap();
    assert_eq!(
        api.http.get(api.url(image)).header("authorization", &token).send().await.unwrap().status(),
        200
    );
    assert!(worker.logs().contains(done["request_id"].as_str().unwrap()));

    // A cancel sent to the api instance stops the work on the worker.
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let (_, g) = api.create(&token, &[("patio", "japanese_zen")]).await;
    let id = g["id"].as_str().unwrap().to_owned();
    api.wait_for(&id, &token, Duration::from_secs(5), |g| g["areas"][0]["stage"] == "generating_design")
        .await;
    let (status, _, g) = api.post(&format!("/v1/generations/{id}/cancel"), &token, &json!({}), None).await;
    assert_eq!((status, g["status"].as_str()), (202, Some("cancelled")));
    let stopped =
        sim.wait_for(Duration::from_secs(5), |s| s.endpoint(Endpoint::Gemini).in_flight() == 0).await;
    assert!(stopped, "the worker kept waiting on Gemini after the cancel\n{}", worker.logs());
    let account = api.account(&token).await;
    assert_eq!((account["held"].as_u64(), account["captured"].as_u64()), (Some(0), Some(1)));
    assert_conserved(&account, 3);
}
