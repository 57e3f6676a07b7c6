//! Billing end to end (CONTRACT §7): the real binary on Postgres, Stripe
//! played by the Stripe simulator in this test process. Webhooks are either
//! sent by the simulator or, where a test needs to choose who gets what and
//! when, taken from its records and delivered by the test, signed as Stripe
//! signs them.

use crate::support::*;
use futures::future::join_all;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use terrace_domain::UserId;
use terrace_simulator::Simulator;
use terrace_stripe_sim::{ApiBehaviour, Endpoint, MONTHLY_PRICE_ID, StripeSim, StripeSimConfig};

/// A simulator that records its webhooks without sending them: the test
/// delivers them.
async fn quiet_stripe() -> StripeSim {
    StripeSim::start(StripeSimConfig::default()).await.expect("the Stripe simulator starts")
}

/// `env` pointed at `stripe` as if it were Stripe, with its keys.
fn use_stripe(env: &mut Vec<(String, String)>, stripe: &StripeSim) {
    set(env, "STRIPE_SECRET_KEY", stripe.secret_key());
    set(env, "STRIPE_WEBHOOK_SECRET", stripe.webhook_secret());
    set(env, "TERRACE_STRIPE_BASE_URL", stripe.base_url());
    set(env, "TERRACE_STRIPE_PRICE_MONTHLY_PRO", MONTHLY_PRICE_ID);
    set(env, "TERRACE_STRIPE_TIMEOUT", "1500ms");
}

/// One server pointed at a quiet Stripe simulator (Google played by a
/// simulator of its own), on `backend` (memory when `None`) with `tune`
/// applied, and a new user's token.
struct Billed {
    _google: Simulator,
    stripe: StripeSim,
    t: Terrace,
    token: String,
}

impl Billed {
    async fn start(backend: Option<Backend>, tune: &[(&str, &str)]) -> Billed {
        let (google, stripe) = (simulator().await, quiet_stripe().await);
        let mut env = base_env(&google);
        if let Some(b) = backend {
            b.apply(&mut env);
        }
        use_stripe(&mut env, &stripe);
        for (k, v) in tune {
            set(&mut env, k, v);
        }
        let t = Terrace::start(&env).await;
        let token = t.token(UserId::new_random());
        Billed { _google: google, stripe, t, token }
    }
}

/// Sends one event body to `t` as Stripe does; returns the status and the answer.
async fn deliver(t: &Terrace, stripe: &StripeSim, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let res = t
        .http
        .post(t.url("/v1/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", stripe.sign(&bytes))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null))
}

/// Waits (bounded) until the simulator has made `n` events in all; returns them.
async fn events(stripe: &StripeSim, n: usize) -> Vec<Value> {
    assert!(
        stripe.wait_for_events(Duration::from_secs(5), |e| e.len() >= n).await,
        "the simulator made {} events, not {n}",
        stripe.events().len()
    );
    stripe.events().into_iter().map(|e| e.body).collect()
}

async fn checkout(t: &Terrace, token: &str, body: Value, path: &str) -> String {
    let (status, _, session) = t.post(path, token, &body, None).await;
    assert_eq!(status, 201, "{session}");
    session["session_id"].as_str().unwrap().to_owned()
}

async fn transactions(t: &Terrace, token: &str) -> Vec<Value> {
    let (status, page) = t.get("/v1/account/transactions?limit=100", token).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// Polls `GET /v1/billing/subscription` until `pred` holds (at most 8 s).
async fn wait_subscription(t: &Terrace, token: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, s) = t.get("/v1/billing/subscription", token).await;
        assert_eq!(status, 200, "{s}");
        if pred(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "the subscription stayed {s}\n{}", t.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_payment_delivered_ten_times_at_once_to_two_instances_credits_once() {
    let backend = Backend::postgres().await;
    let (sim, stripe) = (simulator().await, quiet_stripe().await);
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    use_stripe(&mut env, &stripe);
    let (a, b) = (Terrace::start(&env).await, Terrace::start(&env).await);
    let user = UserId::new_random();
    let token = a.token(user);
    let session = checkout(&a, &token, json!({"package_id": "package_50"}), "/v1/billing/checkout").await;
    stripe.pay(&session).unwrap();
    let paid = events(&stripe, 1).await.remove(0);
    assert_eq!(paid["type"], "checkout.session.completed");

    let sends = (0..10).map(|i| deliver(if i % 2 == 0 { &a } else { &b }, &stripe, &paid));
    let answers = join_all(sends).await;
    let mut outcomes: Vec<&str> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["outcome"].as_str().unwrap()
        })
        .collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, [vec!["applied"], vec!["duplicate"; 9]].concat());

    let account = b.account(&token).await;
    assert_eq!(account["token_balance"], 50, "{account}");
    assert_conserved(&account, 3 + 50);
    let credits: Vec<Value> =
        transactions(&b, &token).await.into_iter().filter(|t| t["source"] == "token").collect();
    let intent = paid["data"]["object"]["payment_intent"].as_str().unwrap();
    assert_eq!(credits.len(), 1, "{credits:?}");
    assert_eq!(credits[0]["kind"], "credit");
    assert_eq!(credits[0]["amount"], 50);
    assert_eq!(credits[0]["reference"], format!("stripe:{intent}"));
    // Both instances count what they did: one applied, nine duplicates.
    let mut counted = 0.0;
    for t in [&a, &b] {
        let text = t.http.get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
        counted += text
            .lines()
            .filter(|l| {
                l.starts_with("terrace_stripe_webhooks_total{") && l.contains("checkout.session.completed")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>();
    }
    assert_eq!(counted, 10.0);
    // The checkout's call to Stripe is in the upstream series.
    let text = a.http.get(a.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l.contains("upstream=\"stripe\"")), "{text}");
}

#[tokio::test]
async fn a_webhook_that_cannot_be_written_answers_5xx_and_its_redelivery_credits_once() {
    let (backend, proxy) = Backend::postgres_behind_proxy().await;
    let tune = [
        ("TERRACE_DB_ACQUIRE_TIMEOUT", "1s"),
        ("TERRACE_DB_CONNECT_TIMEOUT", "1s"),
        ("TERRACE_DB_STATEMENT_TIMEOUT", "2s"),
    ];
    let Billed { _google, stripe, t, token } = Billed::start(Some(backend), &tune).await;
    let session = checkout(&t, &token, json!({"package_id": "package_10"}), "/v1/billing/checkout").await;
    stripe.pay(&session).unwrap();
    let paid = events(&stripe, 1).await.remove(0);

    proxy.freeze(true);
    let started = Instant::now();
    let (status, problem) = deliver(&t, &stripe, &paid).await;
    assert!((500..600).contains(&status), "{status} {problem}");
    assert!(started.elapsed() < Duration::from_secs(7), "the webhook took {:?}", started.elapsed());
    proxy.freeze(false);

    // Stripe delivers it again until it is taken; then once more, late.
    let start = Instant::now();
    let taken = loop {
        let (status, body) = deliver(&t, &stripe, &paid).await;
        if status == 200 {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never taken after the database came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(taken["outcome"], "applied", "{taken}");
    assert_eq!(deliver(&t, &stripe, &paid).await.1["outcome"], "duplicate");
    let account = t.account(&token).await;
    assert_eq!(account["token_balance"], 10, "{account}");
    assert_conserved(&account, 3 + 10);
}

#[tokio::test]
async fn subscription_events_out_of_order_never_move_it_back() {
    let Billed { _google, stripe, t, token } = Billed::start(Some(Backend::postgres().await), &[]).await;
    let session = checkout(&t, &token, json!({"plan_id": "monthly_pro"}), "/v1/billing/subscription").await;
    stripe.pay(&session).unwrap();
    let made = events(&stripe, 3).await;
    let kinds: Vec<&str> = made.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["customer.subscription.created", "checkout.session.completed", "invoice.payment_succeeded"]
    );
    let sub = made[0]["data"]["object"]["id"].as_str().unwrap().to_owned();
    stripe.advance_subscription(&sub, "canceled").unwrap();
    let mut all = events(&stripe, 4).await;
    assert_eq!(all[3]["type"], "customer.subscription.deleted");

    // Newest first: the cancellation, then everything that came before it.
    all.reverse();
    for e in &all {
        let (status, body) = deliver(&t, &stripe, e).await;
        assert_eq!(status, 200, "{} {body}", e["type"]);
    }
    let s = wait_subscription(&t, &token, |_| true).await;
    assert_eq!(s["status"], "cancelled", "{s}");
    assert_eq!(s["plan"], "monthly_pro", "{s}");
    let account = t.account(&token).await;
    assert_eq!(account["subscription"]["status"], "cancelled", "{account}");
    // A cancelled subscription grants nothing: a create spends a trial credit.
    let (status, g) = t.create(&token, &[("front_yard", "japanese_zen")]).await;
    assert_eq!(status, 202, "{g}");
    t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    let account = t.account(&token).await;
    assert_eq!(account["trial_credits"], 2, "{account}");
    assert_conserved(&account, 3);
}

#[tokio::test]
async fn creates_spend_the_subscription_then_trial_credits_then_tokens_then_402() {
    let tune = [("TERRACE_TRIAL_CREDITS", "1")];
    let Billed { _google, stripe, t, token } = Billed::start(Some(Backend::postgres().await), &tune).await;
    // This simulator sends its webhooks to the server, as Stripe does.
    stripe.set_webhook_url(Some(t.url("/v1/webhooks/stripe")));

    let session = checkout(&t, &token, json!({"plan_id": "monthly_pro"}), "/v1/billing/subscription").await;
    stripe.pay(&session).unwrap();
    let s = wait_subscription(&t, &token, |s| s["status"] == "active").await;
    assert!(s["current_period_end"].is_string(), "{s}");
    assert_eq!(s["cancel_at_period_end"], false);
    let (status, _, p) =
        t.post("/v1/billing/subscription", &token, &json!({"plan_id": "monthly_pro"}), None).await;
    assert_eq!((status, p["code"].as_str()), (409, Some("already_subscribed")), "{p}");

    // Active: two areas hold nothing; the trial credit stays.
    let (status, g) =
        t.create(&token, &[("front_yard", "japanese_zen"), ("backyard", "mediterranean")]).await;
    assert_eq!(status, 202, "{g}");
    let done = t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    assert_eq!(done["status"], "completed", "{done}");
    let account = t.account(&token).await;
    assert_eq!(
        (account["trial_credits"].as_u64(), account["captured"].as_u64()),
        (Some(1), Some(0)),
        "{account}"
    );
    let rows = transactions(&t, &token).await;
    let free: Vec<&Value> = rows.iter().filter(|r| r["source"] == "subscription").collect();
    assert_eq!(free.iter().filter(|r| r["kind"] == "hold").count(), 2, "{rows:?}");
    assert_eq!(free.iter().filter(|r| r["kind"] == "capture").count(), 2, "{rows:?}");
    assert!(free.iter().all(|r| r["amount"] == 0), "{rows:?}");

    // Past due: nothing is granted; the trial credit, then tokens, then 402.
    stripe.advance_subscription(&stripe_subscription(&stripe), "past_due").unwrap();
    wait_subscription(&t, &token, |s| s["status"] == "past_due").await;
    let (status, g) = t.create(&token, &[("front_yard", "japanese_zen")]).await;
    assert_eq!(status, 202, "{g}");
    t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    let (status, g) = t.create(&token, &[("front_yard", "japanese_zen")]).await;
    assert_eq!((status, g["code"].as_str()), (402, Some("insufficient_credits")), "{g}");

    let session = checkout(&t, &token, json!({"package_id": "package_10"}), "/v1/billing/checkout").await;
    stripe.pay(&session).unwrap();
    let start = Instant::now();
    while t.account(&token).await["token_balance"] != 10 {
        assert!(start.elapsed() < Duration::from_secs(8), "the package was never credited\n{}", t.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, g) =
        t.create(&token, &[("front_yard", "japanese_zen"), ("backyard", "modern_minimalist")]).await;
    assert_eq!(status, 202, "{g}");
    t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    let account = t.account(&token).await;
    assert_eq!(
        (account["trial_credits"].as_u64(), account["token_balance"].as_u64()),
        (Some(0), Some(8)),
        "{account}"
    );
    assert_conserved(&account, 1 + 10);
    assert!(stripe.shutdown().await, "the Stripe simulator's tasks ended");
}

/// The one subscription the simulator has made.
fn stripe_subscription(stripe: &StripeSim) -> String {
    let created = stripe.events().into_iter().find(|e| e.event_type == "customer.subscription.created");
    created.expect("a subscription was made").body["data"]["object"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_stripe_outage_is_a_503_with_retry_after_and_a_retried_create_makes_one_session() {
    let Billed { _google, stripe, t, token } = Billed::start(None, &[]).await;
    let body = json!({"package_id": "package_10"});

    for behaviour in [ApiBehaviour::Hang, ApiBehaviour::status(500), ApiBehaviour::Disconnect] {
        stripe.set_default(Endpoint::CheckoutSessions, behaviour.clone());
        let started = Instant::now();
        let res = t
            .http
            .post(t.url("/v1/billing/checkout"))
            .header("authorization", &token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(res.status(), 503, "{behaviour:?}");
        assert!(res.headers().contains_key("retry-after"), "{behaviour:?}: no Retry-After");
        let p: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(p["code"], "payments_unavailable", "{behaviour:?}: {p}");
        // TERRACE_STRIPE_TIMEOUT bounds the whole call, retries included.
        assert!(elapsed < Duration::from_secs(4), "{behaviour:?} took {elapsed:?}");
    }

    // One failure, then Stripe answers: the adapter's retry carries the same
    // Idempotency-Key, and the client's retry with its key gets the same session.
    stripe.reset();
    stripe.script(Endpoint::CheckoutSessions, ApiBehaviour::status(503));
    let (status, _, first) = t.post("/v1/billing/checkout", &token, &body, Some("buy-once")).await;
    assert_eq!(status, 201, "{first}");
    let (status, _, again) = t.post("/v1/billing/checkout", &token, &body, Some("buy-once")).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(first["session_id"], again["session_id"]);
    assert_eq!(stripe.sessions().len(), 1, "{:?}", stripe.sessions());
    let keys: Vec<Option<String>> = stripe
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/checkout/sessions")
        .map(|r| r.idempotency_key)
        .collect();
    assert!(keys.len() >= 2 && keys.iter().all(|k| k.is_some() && *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn webhooks_with_a_bad_signature_are_refused_and_credit_nothing() {
    let Billed { _google, stripe, t, token } = Billed::start(None, &[]).await;
    let session = checkout(&t, &token, json!({"package_id": "package_10"}), "/v1/billing/checkout").await;
    stripe.pay(&session).unwrap();
    let paid = events(&stripe, 1).await.remove(0);
    let bytes = serde_json::to_vec(&paid).unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut tampered = paid.clone();
    tampered["data"]["object"]["amount_total"] = json!(1);
    let tampered = serde_json::to_vec(&tampered).unwrap();
    for (name, signature, body) in [
        ("none", None, bytes.clone()),
        ("stale", Some(stripe.sign_at(&bytes, now - 600)), bytes.clone()),
        ("another body", Some(stripe.sign(&bytes)), tampered),
        ("garbage", Some("t=1,v1=abc".to_owned()), bytes.clone()),
    ] {
        let mut req = t.http.post(t.url("/v1/webhooks/stripe")).body(body);
        if let Some(s) = signature {
            req = req.header("stripe-signature", s);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400, "{name}");
    }
    let account = t.account(&token).await;
    assert_eq!(account["token_balance"], 0, "{account}");
    // The genuine delivery still works afterwards.
    assert_eq!(deliver(&t, &stripe, &paid).await.1["outcome"], "applied");
    assert_eq!(t.account(&token).await["token_balance"], 10);
}

#[tokio::test]
async fn a_later_update_that_arrives_before_created_is_not_undone_by_it() {
    let Billed { _google, stripe, t, token } = Billed::start(Some(Backend::postgres().await), &[]).await;
    let session = checkout(&t, &token, json!({"plan_id": "monthly_pro"}), "/v1/billing/subscription").await;
    stripe.pay(&session).unwrap();
    let first = events(&stripe, 3).await;
    let sub = first[0]["data"]["object"]["id"].as_str().unwrap().to_owned();
    // A renewal fails: `invoice.payment_failed`, `customer.subscription.updated`.
    stripe.advance_subscription(&sub, "past_due").unwrap();
    let mut later: Vec<Value> = events(&stripe, 5).await.split_off(3);
    let kinds: Vec<&str> = later.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["invoice.payment_failed", "customer.subscription.updated"]);
    // They happen an hour after the purchase, as a renewal would (the
    // simulator made them within the same second).
    for e in &mut later {
        e["created"] = json!(e["created"].as_i64().unwrap() + 3600);
    }

    // The update first, then the failed invoice, then the purchase's events,
    // `created` last.
    for e in later.iter().rev().chain(first.iter().rev()) {
        let (status, body) = deliver(&t, &stripe, e).await;
        assert_eq!(status, 200, "{} {body}", e["type"]);
    }
    let s = wait_subscription(&t, &token, |_| true).await;
    assert_eq!(s["status"], "past_due", "{s}");
    assert_eq!(s["plan"], "monthly_pro", "{s}");
    // past_due grants nothing: the create spends a trial credit.
    let (status, g) = t.create(&token, &[("front_yard", "japanese_zen")]).await;
    assert_eq!(status, 202, "{g}");
    t.wait_terminal(g["id"].as_str().unwrap(), &token).await;
    assert_eq!(t.account(&token).await["trial_credits"], 2);
}
