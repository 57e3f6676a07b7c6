//! The control endpoint and the hosted pages, as another process and a
//! browser would use them, and the API's wire format seen by a plain client.

use crate::*;
use terrace_ports::{Payments, PaymentsError};

async fn control(sim: &StripeSim, path: &str, body: serde_json::Value) -> reqwest::Response {
    http()
        .post(format!("{}/_sim/{path}", sim.base_url()))
        .body(body.to_string())
        .send()
        .await
        .expect("answers")
}

async fn get_json(sim: &StripeSim, path: &str) -> serde_json::Value {
    http()
        .get(format!("{}/_sim/{path}", sim.base_url()))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn scripts_plans_payments_and_records_over_http() {
    let sim = start().await;
    let receiver = Receiver::start().await;
    let r = control(&sim, "webhook_url", serde_json::json!({"url": receiver.url()})).await;
    assert_eq!(r.status(), 204);
    let script = serde_json::json!({
        "endpoint": "checkout_sessions",
        "behaviour": {"kind": "status", "status": 500},
        "times": 1,
    });
    assert_eq!(control(&sim, "script", script).await.status(), 204);
    let plan = serde_json::json!({"plan": {"duplicates": 1}});
    assert_eq!(control(&sim, "webhooks", plan).await.status(), 204);

    let (client, recorder) = client(&sim);
    let s = client.checkout_package(&package(), &key("http-1")).await.expect("created after a retry");
    assert_eq!(recorder.outcomes(), [UpstreamOutcome::Unavailable, UpstreamOutcome::Ok]);

    let r = control(&sim, "pay", serde_json::json!({"session_id": s.id})).await;
    assert_eq!(r.status(), 200);
    let session: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(
        (session["status"].as_str(), session["payment_status"].as_str()),
        (Some("complete"), Some("paid"))
    );
    assert!(receiver.wait_for(WAIT, |r| r.len() == 2).await, "duplicated once");

    let events = get_json(&sim, "events").await;
    assert_eq!(events.as_array().map(Vec::len), Some(1));
    assert_eq!(events[0]["event_type"], "checkout.session.completed");
    let requests = get_json(&sim, "requests").await;
    assert_eq!(requests[0]["status"], 500);
    assert_eq!(requests[1]["status"], 200);
    assert_eq!(get_json(&sim, "sessions").await[0]["id"], s.id.as_str());

    let r = control(&sim, "events", serde_json::json!({"type": "ping.test", "object": {"id": "x"}})).await;
    let id = r.json::<serde_json::Value>().await.expect("JSON")["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("evt_"));
    assert!(receiver.wait_for(WAIT, |r| r.iter().any(|x| x.event_id() == id)).await);

    assert_eq!(control(&sim, "pay", serde_json::json!({"session_id": "cs_nope"})).await.status(), 404);
    assert_eq!(
        control(&sim, "advance", serde_json::json!({"subscription_id": "sub_nope", "status": "active"}))
            .await
            .status(),
        404
    );
    assert_eq!(control(&sim, "script", serde_json::json!({"endpoint": "nowhere"})).await.status(), 400);
    assert_eq!(control(&sim, "reset", serde_json::json!({})).await.status(), 204);
    assert!(sim.events().is_empty() && sim.requests().is_empty() && sim.sessions().is_empty());
}

#[tokio::test]
async fn a_default_behaviour_holds_until_changed() {
    let sim = start().await;
    let body = serde_json::json!({
        "endpoint": "billing_portal",
        "behaviour": {"kind": "status", "status": 503, "should_retry": false},
        "default": true,
    });
    assert_eq!(control(&sim, "script", body).await.status(), 204);
    let (client, _) = client(&sim);
    for _ in 0..2 {
        let e = client.portal_session("cus_x", "http://x.example/", &key("p")).await.expect_err("503");
        assert!(matches!(e, PaymentsError::Unavailable { .. }), "{e:?}");
    }
    assert_eq!(sim.requests().len(), 2, "Stripe-Should-Retry: false is not retried");
}

#[tokio::test]
async fn the_checkout_page_pays_and_cancels_with_plain_forms() {
    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = client(&sim);
    let s = client.checkout_package(&package(), &key("page")).await.expect("created");
    let page = http().get(&s.url).send().await.expect("page");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.expect("html");
    let pay = format!("<form method=\"post\" action=\"/checkout/{}/pay\">", s.id);
    let cancel = format!("<form method=\"post\" action=\"/checkout/{}/cancel\">", s.id);
    assert!(html.contains(&pay) && html.contains(&cancel), "{html}");
    assert!(html.contains("$10.00") && html.contains("Terrace: 10 tokens"), "{html}");
    assert!(
        !html.contains("src=") && !html.contains("<link") && !html.contains("<script"),
        "nothing fetched: {html}"
    );

    let r = http().post(format!("{}/checkout/{}/cancel", sim.base_url(), s.id)).send().await.expect("cancel");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "http://127.0.0.1:9/billing/cancel");
    assert!(sim.events().is_empty(), "cancelling sends nothing");

    let r = http().post(format!("{}/checkout/{}/pay", sim.base_url(), s.id)).send().await.expect("pay");
    assert_eq!(r.status(), 303);
    let expected = format!("http://127.0.0.1:9/billing/success?session_id={}", s.id);
    assert_eq!(r.headers()["location"], expected.as_str());
    assert!(receiver.wait_for(WAIT, |r| r.len() == 1).await);
    let html = http().get(&s.url).send().await.expect("page").text().await.expect("html");
    assert!(html.contains("This session is paid.") && !html.contains(&pay), "{html}");

    let r = http().get(format!("{}/checkout/cs_nope", sim.base_url())).send().await.expect("page");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn the_api_speaks_stripes_wire_format() {
    let sim = start().await;
    let url = format!("{}/v1/checkout/sessions", sim.base_url());
    let body = "mode=payment&success_url=https%3A%2F%2Fx.example%2F&line_items[0][quantity]=1\
                &line_items[0][price_data][currency]=usd&line_items[0][price_data][unit_amount]=500\
                &line_items[0][price_data][product_data][name]=Five";
    let r = http().post(&url).body(body).send().await.expect("answer");
    assert_eq!(r.status(), 401);
    let e: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("did not provide an API key")), "{e}");

    let post = |body: String| {
        http()
            .post(&url)
            .bearer_auth(sim.secret_key())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = post(body.to_owned()).await.expect("answer");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("request-id"));
    let s: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(
        (s["object"].as_str(), s["status"].as_str(), s["amount_total"].as_i64()),
        (Some("checkout.session"), Some("open"), Some(500))
    );

    let r = post(format!("{body}&line_items[0][price_data][unit_ammount]=5")).await.expect("answer");
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(e["error"]["code"], "parameter_unknown");
    assert_eq!(e["error"]["param"], "line_items[0][price_data][unit_ammount]");

    let r = post("success_url=https%3A%2F%2Fx.example%2F".into()).await.expect("answer");
    let e: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["param"].as_str()),
        (Some("parameter_missing"), Some("mode"))
    );

    let r = http()
        .get(format!("{}/v1/customers", sim.base_url()))
        .bearer_auth(sim.secret_key())
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);

    // The same key and body replays, and says so.
    let with_key = |k: &'static str| {
        http().post(&url).bearer_auth(sim.secret_key()).header("idempotency-key", k).body(body).send()
    };
    let first: serde_json::Value = with_key("raw-1").await.expect("answer").json().await.expect("JSON");
    let again = with_key("raw-1").await.expect("answer");
    assert_eq!(again.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(again.json::<serde_json::Value>().await.expect("JSON"), first);
}

#[tokio::test]
async fn the_portal_needs_a_customer_that_exists() {
    let sim = start().await;
    let (client, _) = client(&sim);
    let s = client.checkout_package(&package(), &key("k")).await.expect("created");
    let paid = sim.pay(&s.id).expect("paid");
    let customer = paid["customer"].as_str().expect("customer_creation=always made one").to_owned();
    let portal = client.portal_session(&customer, "http://127.0.0.1:9/", &key("p")).await.expect("portal");
    let html = http().get(&portal.url).send().await.expect("page").text().await.expect("html");
    assert!(html.contains("No subscriptions.") && html.contains("Return to Terrace"), "{html}");
    // A later checkout for the same customer reuses it.
    let again = terrace_ports::PackageCheckout { customer: Some(customer.clone()), ..package() };
    client.checkout_package(&again, &key("k2")).await.expect("created");
    assert_eq!(sim.sessions()[1]["customer"], customer.as_str());
}
