//! The control endpoint, as another process would use it.

use crate::*;
use terrace_simulator::RequestEnd;

async fn control(sim: &Simulator, path: &str, body: serde_json::Value) -> reqwest::StatusCode {
    http()
        .post(format!("{}/_sim/{path}", sim.base_url()))
        .body(body.to_string())
        .send()
        .await
        .expect("control answers")
        .status()
}

async fn geocode_status(sim: &Simulator) -> String {
    let v: serde_json::Value = http()
        .get(format!("{}/maps/api/geocode/json", sim.base_url()))
        .query(&[("address", "10 Downing Street"), ("key", sim.maps_key())])
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .unwrap_or_else(|_| serde_json::json!({"status": "(not JSON)"}));
    v["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn scripts_defaults_stats_and_reset_over_http() {
    let sim = start().await;
    let one_shot = serde_json::json!({
        "endpoint": "geocode",
        "behaviour": {"kind": "maps_status", "status": "ZERO_RESULTS"},
        "times": 2,
    });
    assert_eq!(control(&sim, "script", one_shot).await, 204);
    let default = serde_json::json!({
        "endpoint": "geocode",
        "behaviour": {"kind": "maps_status", "status": "OVER_QUERY_LIMIT"},
        "default": true,
    });
    assert_eq!(control(&sim, "script", default).await, 204);
    assert_eq!(geocode_status(&sim).await, "ZERO_RESULTS");
    assert_eq!(geocode_status(&sim).await, "ZERO_RESULTS");
    assert_eq!(geocode_status(&sim).await, "OVER_QUERY_LIMIT");
    assert_eq!(geocode_status(&sim).await, "OVER_QUERY_LIMIT");

    let stats: serde_json::Value = http()
        .get(format!("{}/_sim/stats", sim.base_url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["geocode"]["requests"], 4);
    let requests: serde_json::Value = http()
        .get(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .expect("requests")
        .json()
        .await
        .expect("JSON");
    assert_eq!(requests.as_array().map(Vec::len), Some(4));
    assert_eq!(requests[0]["behaviour"]["status"], "ZERO_RESULTS");

    assert_eq!(control(&sim, "latency", serde_json::json!({"delay_ms": 0})).await, 204);
    assert_eq!(control(&sim, "reset", serde_json::json!({})).await, 204);
    assert_eq!(geocode_status(&sim).await, "OK");
    assert_eq!(sim.stats().geocode.requests, 1);
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.geocode.completed == 1).await);
    assert_eq!(sim.requests()[0].end, Some(RequestEnd::Completed));
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn bad_control_bodies_are_refused() {
    let sim = start().await;
    let unknown = serde_json::json!({"endpoint": "geocode", "behaviour": {"kind": "explode"}});
    assert_eq!(control(&sim, "script", unknown).await, 400);
    let wrong_endpoint = serde_json::json!({"endpoint": "nowhere", "behaviour": {"kind": "ok"}});
    assert_eq!(control(&sim, "script", wrong_endpoint).await, 400);
    assert_eq!(geocode_status(&sim).await, "OK");
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn latency_applies_to_every_answer() {
    let sim = start().await;
    assert_eq!(control(&sim, "latency", serde_json::json!({"delay_ms": 150})).await, 204);
    let started = std::time::Instant::now();
    assert_eq!(geocode_status(&sim).await, "OK");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert!(sim.shutdown().await);
}
