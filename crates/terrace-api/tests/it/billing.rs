//! The billing routes (CONTRACT §7) over a scripted Stripe: what is asked of
//! Stripe, how its failures answer, and webhooks applied once.

use crate::support::App;
use crate::support::Asked;
use std::time::Duration;
use terrace_domain::UserId;
use terrace_ports::{
    CancelAt, CheckoutCompleted, CheckoutMode, PackagePrice, PaymentEvent, PaymentEventKind, PaymentStatus,
    PaymentsError, SubscriptionAction, SubscriptionChanged,
};

async fn call(
    app: &App,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    key: Option<&str>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_owned());
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = req.send().await.unwrap();
    let (status, headers) = (res.status().as_u16(), res.headers().clone());
    (status, serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or_default(), headers)
}

async fn post(
    app: &App,
    user: UserId,
    body: &str,
    key: Option<&str>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    call(app, reqwest::Method::POST, "/v1/billing/checkout", Some(&app.token(user)), Some(body), key).await
}

async fn account_of(app: &App, user: UserId) -> serde_json::Value {
    call(app, reqwest::Method::GET, "/v1/account", Some(&app.token(user)), None, None).await.1
}

async fn hook(app: &App, sig: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = app.http.post(app.url("/v1/webhooks/stripe")).body(r#"{"id":"evt_1"}"#);
    if let Some(s) = sig {
        req = req.header("stripe-signature", s);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or_default())
}

fn checkout_completed(id: &str, user: UserId, mode: CheckoutMode) -> PaymentEvent {
    PaymentEvent {
        id: id.into(),
        event_type: "checkout.session.completed".into(),
        created: 100,
        kind: PaymentEventKind::CheckoutCompleted(CheckoutCompleted {
            session_id: "cs_1".into(),
            mode,
            payment_status: PaymentStatus::Paid,
            client_reference_id: Some(user.to_string()),
            payment_intent: Some("pi_42".into()),
            customer: Some("cus_42".into()),
            subscription: (mode == CheckoutMode::Subscription).then(|| "sub_9".to_owned()),
            user_id: Some(user.to_string()),
            package_id: Some("package_10".into()),
            plan_id: (mode == CheckoutMode::Subscription).then(|| "monthly_pro".to_owned()),
            amount_total: Some(1000),
            currency: Some("usd".into()),
        }),
    }
}

#[tokio::test]
async fn packages_are_public_and_the_plan_needs_its_price() {
    let app = App::start(|_| {}).await;
    let (status, body, _) = call(&app, reqwest::Method::GET, "/v1/billing/packages", None, None, None).await;
    assert_eq!(status, 200);
    let ids: Vec<_> = body["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["tokens"].as_u64().unwrap(),
                p["price_cents"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("package_10".to_owned(), 10, 1000),
            ("package_50".into(), 50, 4500),
            ("package_100".into(), 100, 9000),
            ("package_500".into(), 500, 40000)
        ]
    );
    assert_eq!(body["plans"], serde_json::json!([]));
    let app = App::start(|c| c.billing.monthly_pro_price = Some("price_pro".into())).await;
    let (_, body, _) = call(&app, reqwest::Method::GET, "/v1/billing/packages", None, None, None).await;
    assert_eq!(
        body["plans"],
        serde_json::json!([{"id": "monthly_pro", "price_cents": 9900, "currency": "usd", "interval": "month"}])
    );
}

#[tokio::test]
async fn checkout_asks_stripe_once_per_key_and_names_the_user_and_package() {
    let app = App::start(|c| c.billing.public_url = "https://terrace.example".into()).await;
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    let (status, first, _) = post(&app, alice, r#"{"package_id":"package_50"}"#, Some("k1")).await;
    assert_eq!(status, 201, "{first}");
    assert!(first["checkout_url"].as_str().unwrap().starts_with("https://"));
    let (_, again, _) = post(&app, alice, r#"{"package_id":"package_50"}"#, Some("k1")).await;
    assert_eq!(again["session_id"], first["session_id"], "the same key asks Stripe with the same key");
    let (_, other, _) = post(&app, bob, r#"{"package_id":"package_50"}"#, Some("k1")).await;
    assert_ne!(other["session_id"], first["session_id"], "users' keys never meet");
    let asked = app.payments.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 3);
    let [Asked::Package(first, k1), Asked::Package(_, k2), Asked::Package(_, k3)] = &asked[..] else {
        panic!("{asked:?}")
    };
    assert_eq!((first.user, first.package_id.as_str()), (alice, "package_50"));
    assert!(
        matches!(&first.price, PackagePrice::Inline { unit_amount: 4500, currency, .. } if currency == "usd")
    );
    assert_eq!(first.cancel_url, "https://terrace.example/billing/cancel");
    assert!(first.success_url.starts_with("https://terrace.example/billing/success"));
    assert_eq!(k1, k2, "the same key asks Stripe with the same key");
    assert_ne!(k1, k3);
    // Bad input never reaches Stripe.
    let (status, p, _) = post(&app, alice, r#"{"package_id":"package_7"}"#, None).await;
    assert_eq!((status, p["errors"][0]["field"].as_str()), (400, Some("package_id")));
    assert_eq!(app.payments.asked.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_stripe_outage_is_a_prompt_503_with_retry_after() {
    let app = App::start(|_| {}).await;
    let token = app.token(UserId::new_random());
    for (failure, want) in [
        (
            PaymentsError::Unavailable { detail: "502".into(), retry_after: Some(Duration::from_secs(7)) },
            (503, "7"),
        ),
        (PaymentsError::Timeout, (503, "5")),
    ] {
        *app.payments.failing.lock().unwrap() = Some(failure);
        let started = std::time::Instant::now();
        let (status, p, h) = call(
            &app,
            reqwest::Method::POST,
            "/v1/billing/checkout",
            Some(&token),
            Some(r#"{"package_id":"package_10"}"#),
            None,
        )
        .await;
        assert_eq!((status, h["retry-after"].to_str().unwrap()), want, "{p}");
        assert_eq!(p["code"], "payments_unavailable");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    *app.payments.failing.lock().unwrap() = Some(PaymentsError::Rejected {
        status: 400,
        error_type: "idempotency_error".into(),
        code: None,
        message: "Keys for idempotent requests can only be used with the same parameters".into(),
    });
    let (status, p, _) = call(
        &app,
        reqwest::Method::POST,
        "/v1/billing/checkout",
        Some(&token),
        Some(r#"{"package_id":"package_10"}"#),
        Some("k"),
    )
    .await;
    assert_eq!((status, p["code"].as_str()), (422, Some("idempotency_key_reused")));
}

#[tokio::test]
async fn webhooks_are_believed_only_when_signed_and_apply_once() {
    let app = App::start(|_| {}).await;
    let user = UserId::new_random();
    *app.payments.event.lock().unwrap() = Some(checkout_completed("evt_1", user, CheckoutMode::Payment));
    for bad in [None, Some("t=1,v1=00")] {
        let (status, p) = hook(&app, bad).await;
        assert_eq!((status, p["code"].as_str()), (400, Some("bad_signature")));
    }
    assert_eq!(account_of(&app, user).await["token_balance"], 0, "a bad signature changes nothing");
    let (status, body) = hook(&app, Some("good")).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("applied")));
    let (status, body) = hook(&app, Some("good")).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
    let a = account_of(&app, user).await;
    assert_eq!(a["token_balance"], 10, "{a}");
    let (_, tx, _) =
        call(&app, reqwest::Method::GET, "/v1/account/transactions", Some(&app.token(user)), None, None)
            .await;
    let credit = tx["items"].as_array().unwrap().iter().find(|e| e["source"] == "token").unwrap().clone();
    assert_eq!(
        (credit["kind"].as_str(), credit["reference"].as_str()),
        (Some("credit"), Some("stripe:pi_42"))
    );
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"terrace_stripe_webhooks_total{type="checkout.session.completed",outcome="applied"} 1"#,
        r#"terrace_stripe_webhooks_total{type="checkout.session.completed",outcome="duplicate"} 1"#,
        r#"terrace_stripe_webhooks_total{type="unknown",outcome="bad_signature"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[tokio::test]
async fn subscribing_cancelling_and_the_portal_follow_the_subscription() {
    let app = App::start(|c| c.billing.monthly_pro_price = Some("price_pro".into())).await;
    let user = UserId::new_random();
    let token = app.token(user);
    let (status, p, _) =
        call(&app, reqwest::Method::POST, "/v1/billing/subscription/cancel", Some(&token), Some("{}"), None)
            .await;
    assert_eq!((status, p["code"].as_str()), (409, Some("no_subscription")));
    let (status, p, _) =
        call(&app, reqwest::Method::POST, "/v1/billing/portal", Some(&token), None, None).await;
    assert_eq!((status, p["code"].as_str()), (409, Some("never_paid")));
    let (status, _, _) = call(
        &app,
        reqwest::Method::POST,
        "/v1/billing/subscription",
        Some(&token),
        Some(r#"{"plan_id":"monthly_pro"}"#),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let asked = app.payments.asked.lock().unwrap().clone();
    assert!(
        matches!(&asked[..], [Asked::Subscription(r, _)] if r.price_id == "price_pro" && r.plan_id == "monthly_pro" && r.user == user),
        "{asked:?}"
    );
    // Stripe says it is active (created after the session completed, in the same second).
    *app.payments.event.lock().unwrap() = Some(checkout_completed("evt_c", user, CheckoutMode::Subscription));
    assert_eq!(hook(&app, Some("good")).await.1["outcome"], "applied");
    *app.payments.event.lock().unwrap() = Some(PaymentEvent {
        id: "evt_s".into(),
        event_type: "customer.subscription.created".into(),
        created: 100,
        kind: PaymentEventKind::SubscriptionChanged(SubscriptionChanged {
            action: SubscriptionAction::Created,
            subscription_id: "sub_9".into(),
            customer: Some("cus_9".into()),
            status: "active".into(),
            current_period_end: Some(chrono::DateTime::from_timestamp(2_000_000_000, 0).unwrap()),
            cancel_at_period_end: false,
            cancel_at: None,
            price_id: Some("price_pro".into()),
            user_id: Some(user.to_string()),
            plan_id: Some("monthly_pro".into()),
        }),
    });
    assert_eq!(hook(&app, Some("good")).await.1["outcome"], "ignored", "older than the checkout by its kind");
    let created = app.payments.event.lock().unwrap().clone().unwrap();
    let PaymentEventKind::SubscriptionChanged(c) = created.kind else { unreachable!() };
    let updated = PaymentEvent {
        id: "evt_u".into(),
        event_type: "customer.subscription.updated".into(),
        created: 101,
        kind: PaymentEventKind::SubscriptionChanged(SubscriptionChanged {
            action: SubscriptionAction::Updated,
            ..c
        }),
    };
    *app.payments.event.lock().unwrap() = Some(updated);
    assert_eq!(hook(&app, Some("good")).await.1["outcome"], "applied");
    let (_, a, _) = call(&app, reqwest::Method::GET, "/v1/account", Some(&token), None, None).await;
    assert_eq!(
        a["subscription"],
        serde_json::json!({"plan": "monthly_pro", "status": "active", "current_period_end": "2033-05-18T03:33:20Z"})
    );
    let (status, p, _) = call(
        &app,
        reqwest::Method::POST,
        "/v1/billing/subscription",
        Some(&token),
        Some(r#"{"plan_id":"monthly_pro"}"#),
        None,
    )
    .await;
    assert_eq!((status, p["code"].as_str()), (409, Some("already_subscribed")));
    let (status, s, _) =
        call(&app, reqwest::Method::POST, "/v1/billing/subscription/cancel", Some(&token), Some("{}"), None)
            .await;
    assert_eq!(status, 200);
    assert_eq!((s["status"].as_str(), s["cancel_at_period_end"].as_bool()), (Some("active"), Some(true)));
    let cancelled = app.payments.asked.lock().unwrap().last().cloned();
    assert_eq!(cancelled, Some(Asked::Cancel("sub_9".into(), CancelAt::PeriodEnd)));
    let (status, p, _) =
        call(&app, reqwest::Method::POST, "/v1/billing/portal", Some(&token), None, None).await;
    assert_eq!((status, p["url"].as_str()), (201, Some("https://portal.example/cus_9")));
    let (_, s, _) =
        call(&app, reqwest::Method::GET, "/v1/billing/subscription", Some(&token), None, None).await;
    assert_eq!(s["status"], "active");
    // A create is free while active.
    let g = app.create(user).await;
    assert_eq!(g["cost"], 1);
    let (_, a, _) = call(&app, reqwest::Method::GET, "/v1/account", Some(&token), None, None).await;
    assert_eq!((a["trial_credits"].as_u64(), a["held"].as_u64()), (Some(3), Some(0)));
}
