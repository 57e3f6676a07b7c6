//! `docs/openapi.yaml` against the running server: every documented
//! operation is exercised, every answer's status is documented for its
//! operation, its content type is a documented one, and its JSON body
//! satisfies the documented schema (required fields, types, enums, no
//! undocumented fields). Billing runs through the Stripe simulator that
//! `terrace serve` starts in process when no Stripe secrets are set.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use terrace_domain::UserId;
use terrace_simulator::{Behaviour, Endpoint};
use terrace_stripe_sim::StripeSimConfig;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml exists");
    serde_norway::from_str(&text).expect("docs/openapi.yaml parses")
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut at = doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            assert!(!at.is_null(), "dangling $ref {r}");
            resolve(doc, at)
        }
        None => v,
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        other => panic!("unknown schema type {other}"),
    }
}

/// Checks `v` against `schema`; appends what is wrong, naming where.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(doc, s, v, at, errors);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let fits = options.iter().any(|s| {
                let mut e = Vec::new();
                check(doc, s, v, at, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{at}: {v} fits none of {key}"));
            }
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, v)) {
        errors.push(format!("{at}: {v} is not {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !v.is_null() && !allowed.contains(v) {
            errors.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let Value::Object(map) = v {
        for req in schema["required"].as_array().into_iter().flatten() {
            if !map.contains_key(req.as_str().unwrap()) {
                errors.push(format!("{at}: lacks required {req}"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, val) in map {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, val, &format!("{at}.{k}"), errors),
                None if schema["additionalProperties"] == Value::Bool(false) => {
                    errors.push(format!("{at}: undocumented field {k}"))
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"), errors);
        }
    }
}

enum Auth {
    None,
    User,
    Stranger,
    Admin,
    /// A user of their own who buys and subscribes (billing probes).
    Buyer,
}

struct Probe {
    method: &'static str,
    template: &'static str,
    path: String,
    auth: Auth,
    body: Option<(&'static str, String)>,
    key: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    expect: u16,
}

fn probe(
    method: &'static str,
    template: &'static str,
    path: impl Into<String>,
    auth: Auth,
    expect: u16,
) -> Probe {
    Probe { method, template, path: path.into(), auth, body: None, key: None, headers: Vec::new(), expect }
}

fn with_json(mut p: Probe, body: Value) -> Probe {
    p.body = Some(("application/json", body.to_string()));
    p
}

/// The bearer tokens a probe's [`Auth`] stands for.
struct Tokens {
    user: String,
    stranger: String,
    admin: String,
    buyer: String,
}

/// Sends probes to the server and checks each answer against the spec,
/// remembering what was wrong and which operations were seen to succeed.
struct Checker<'a> {
    doc: &'a Value,
    t: &'a Terrace,
    tokens: Tokens,
    problems: Vec<String>,
    exercised: BTreeSet<(&'static str, &'static str)>,
}

impl Checker<'_> {
    /// Sends `p` and checks its answer; returns the answer's headers and
    /// JSON body (`Null` when it has none).
    async fn run(&mut self, p: Probe) -> (reqwest::header::HeaderMap, Value) {
        let (doc, t) = (self.doc, self.t);
        let name = format!(
            "{} {} -> {}",
            p.method.to_uppercase(),
            p.path.chars().take(80).collect::<String>(),
            p.expect
        );
        let mut req = match p.method {
            "get" => t.http.get(t.url(&p.path)),
            "post" => t.http.post(t.url(&p.path)),
            m => panic!("{m}"),
        };
        match p.auth {
            Auth::None => {}
            Auth::User => req = req.header("authorization", &self.tokens.user),
            Auth::Stranger => req = req.header("authorization", &self.tokens.stranger),
            Auth::Admin => req = req.header("authorization", &self.tokens.admin),
            Auth::Buyer => req = req.header("authorization", &self.tokens.buyer),
        }
        if let Some((ct, body)) = &p.body {
            req = req.header("content-type", *ct).body(body.clone());
        }
        if let Some(k) = p.key {
            req = req.header("idempotency-key", k);
        }
        for (k, v) in &p.headers {
            req = req.header(*k, v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let content_type =
            headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let essence = content_type.split(';').next().unwrap().trim().to_owned();
        assert!(headers.contains_key("x-request-id"), "{name}: no X-Request-Id");
        let bytes = res.bytes().await.unwrap();
        let body: Value =
            if essence.ends_with("json") { serde_json::from_slice(&bytes).unwrap() } else { Value::Null };
        if status != p.expect {
            self.problems.push(format!("{name}: answered {status}: {}", String::from_utf8_lossy(&bytes)));
            return (headers, body);
        }
        let op = &doc["paths"][p.template][p.method];
        if op.is_null() {
            self.problems.push(format!("{name}: {} {} is not documented", p.method, p.template));
            return (headers, body);
        }
        if (200..300).contains(&status) {
            self.exercised.insert((p.template, p.method));
        }
        let Some(response) = op["responses"].get(status.to_string()) else {
            self.problems.push(format!("{name}: status {status} is not documented"));
            return (headers, body);
        };
        let response = resolve(doc, response);
        let Some(media) = response["content"].get(essence.as_str()) else {
            self.problems
                .push(format!("{name}: content type {content_type:?} is not documented for {status}"));
            return (headers, body);
        };
        if essence.ends_with("json") {
            let mut errors = Vec::new();
            check(doc, &media["schema"], &body, "body", &mut errors);
            self.problems.extend(errors.into_iter().map(|e| format!("{name}: {e}")));
        }
        (headers, body)
    }

    /// Runs `p` and returns its body, which must be the answer expected:
    /// later steps depend on it.
    async fn must(&mut self, p: Probe) -> Value {
        let name = format!("{} {} -> {}", p.method.to_uppercase(), p.path, p.expect);
        let before = self.problems.len();
        let (_, body) = self.run(p).await;
        assert_eq!(self.problems.len(), before, "{name}:\n{}", self.problems.join("\n"));
        body
    }

    /// Polls `GET path` as the buyer until `pred` holds for its body, at
    /// most 10 s (the webhooks that change it arrive on their own).
    async fn wait_until(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let within = Duration::from_secs(10);
        let found = tokio::time::timeout(within, async {
            loop {
                let (status, v) = self.t.get(path, &self.tokens.buyer).await;
                assert_eq!(status, 200, "GET {path}: {v}");
                if pred(&v) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        match found {
            Ok(v) => v,
            Err(_) => {
                let (_, v) = self.t.get(path, &self.tokens.buyer).await;
                panic!("{what}: not within {within:?}; GET {path}: {v}\nlogs:\n{}", self.t.logs())
            }
        }
    }
}

/// Pays a Checkout session as a browser on the simulator's hosted page
/// does: the Pay form posts to `<checkout_url>/pay`, answered with a 303
/// to Terrace's success page.
async fn pay(t: &Terrace, browser: &reqwest::Client, session: &Value) {
    let url = session["checkout_url"].as_str().unwrap_or_else(|| panic!("no checkout_url: {session}"));
    let res = browser.post(format!("{url}/pay")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 303, "paying {url}");
    let location = res.headers()["location"].to_str().unwrap();
    let id = session["session_id"].as_str().unwrap();
    assert_eq!(location, t.url(&format!("/billing/success?session_id={id}")));
}

/// A webhook body and a `Stripe-Signature` for it, signed now with the
/// secret of the Stripe simulator `terrace serve` runs in dev mode.
fn signed_event(id: &str, event_type: &str) -> (String, String) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let body = json!({
        "id": id, "object": "event", "type": event_type, "created": now,
        "data": {"object": {"id": "ch_openapi", "object": "charge"}},
    })
    .to_string();
    let secret = StripeSimConfig::default().webhook_secret;
    let signature = terrace_stripe_sim::sign(&secret, now, body.as_bytes());
    (body, signature)
}

fn webhook(expect: u16, body: String, signature: Option<String>) -> Probe {
    Probe {
        body: Some(("application/json", body)),
        headers: signature.map(|s| vec![("stripe-signature", s)]).unwrap_or_default(),
        ..probe("post", "/v1/webhooks/stripe", "/v1/webhooks/stripe", Auth::None, expect)
    }
}

#[tokio::test]
async fn every_documented_route_answers_as_documented() {
    let doc = spec();
    let sim = simulator().await;
    // No Stripe secrets: `terrace serve` runs the Stripe simulator in
    // process, sending its webhooks to this server.
    let t = Terrace::start(&base_env(&sim)).await;
    let user = UserId::new_random();
    let token = t.token(user);

    // A completed generation, and one that stays processing.
    let (_, done) = t.create(&token, &[("front_yard", "japanese_zen")]).await;
    let done = done["id"].as_str().unwrap().to_owned();
    t.wait_terminal(&done, &token).await;
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let (_, running) = t.create(&token, &[("patio", "japanese_zen")]).await;
    let running = running["id"].as_str().unwrap().to_owned();
    t.wait_for(&running, &token, Duration::from_secs(5), |g| g["status"] == "processing").await;

    let g = "/v1/generations/{id}";
    let create = request(&[("walkway", "english_garden")]);
    let grant = json!({"user_id": user.to_string(), "amount": 5, "reference": "openapi-1"});
    let mut probes = vec![
        probe("get", "/livez", "/livez", Auth::None, 200),
        probe("get", "/readyz", "/readyz", Auth::None, 200),
        probe("get", "/metrics", "/metrics", Auth::None, 200),
        probe("get", "/app/config.json", "/app/config.json", Auth::None, 200),
        probe("get", "/v1/account", "/v1/account", Auth::User, 200),
        probe("get", "/v1/account", "/v1/account", Auth::None, 401),
        probe("get", "/v1/account/transactions", "/v1/account/transactions?limit=5", Auth::User, 200),
        probe("get", "/v1/account/transactions", "/v1/account/transactions?limit=0", Auth::User, 400),
        probe("get", "/v1/generations", "/v1/generations?limit=5", Auth::User, 200),
        probe("get", "/v1/generations", "/v1/generations?status=bogus", Auth::User, 400),
        probe("get", "/v1/generations", "/v1/generations", Auth::None, 401),
        Probe {
            key: Some("openapi-key"),
            ..with_json(probe("post", "/v1/generations", "/v1/generations", Auth::User, 202), create.clone())
        },
        Probe {
            key: Some("openapi-key"),
            ..with_json(
                probe("post", "/v1/generations", "/v1/generations", Auth::User, 422),
                request(&[("patio", "tropical_resort")]),
            )
        },
        with_json(
            probe("post", "/v1/generations", "/v1/generations", Auth::User, 400),
            json!({"address": "x", "areas": []}),
        ),
        with_json(
            probe("post", "/v1/generations", "/v1/generations", Auth::User, 402),
            request(&[
                ("front_yard", "japanese_zen"),
                ("backyard", "japanese_zen"),
                ("side_yard", "japanese_zen"),
            ]),
        ),
        Probe {
            body: Some(("text/plain", "hello".into())),
            ..probe("post", "/v1/generations", "/v1/generations", Auth::User, 415)
        },
        Probe {
            body: Some(("application/json", format!(r#"{{"address":"{}","areas":[]}}"#, "x".repeat(70_000)))),
            ..probe("post", "/v1/generations", "/v1/generations", Auth::User, 413)
        },
        with_json(probe("post", "/v1/generations", "/v1/generations", Auth::None, 401), create.clone()),
        probe("get", g, format!("/v1/generations/{done}"), Auth::User, 200),
        probe("get", g, format!("/v1/generations/{done}"), Auth::Stranger, 404),
        probe("get", g, format!("/v1/generations/{done}"), Auth::None, 401),
        probe("get", "/v1/admin/tasks", "/v1/admin/tasks", Auth::Admin, 200),
        probe("get", "/v1/admin/tasks", "/v1/admin/tasks", Auth::User, 403),
        probe("get", "/v1/admin/tasks", "/v1/admin/tasks", Auth::None, 401),
        probe(
            "post",
            "/v1/generations/{id}/cancel",
            format!("/v1/generations/{running}/cancel"),
            Auth::Stranger,
            404,
        ),
        probe(
            "post",
            "/v1/generations/{id}/cancel",
            format!("/v1/generations/{running}/cancel"),
            Auth::User,
            202,
        ),
        probe(
            "post",
            "/v1/generations/{id}/cancel",
            format!("/v1/generations/{running}/cancel"),
            Auth::User,
            409,
        ),
        probe(
            "post",
            "/v1/generations/{id}/cancel",
            format!("/v1/generations/{running}/cancel"),
            Auth::None,
            401,
        ),
        probe(
            "get",
            "/v1/generations/{id}/events",
            format!("/v1/generations/{done}/events"),
            Auth::User,
            200,
        ),
        probe(
            "get",
            "/v1/generations/{id}/events",
            format!("/v1/generations/{done}/events"),
            Auth::Stranger,
            404,
        ),
        probe(
            "get",
            "/v1/generations/{id}/events",
            format!("/v1/generations/{done}/events"),
            Auth::None,
            401,
        ),
        probe(
            "get",
            "/v1/generations/{id}/areas/{area}/image",
            format!("/v1/generations/{done}/areas/front_yard/image"),
            Auth::User,
            200,
        ),
        probe(
            "get",
            "/v1/generations/{id}/areas/{area}/image",
            format!("/v1/generations/{running}/areas/patio/image"),
            Auth::User,
            404,
        ),
        probe(
            "get",
            "/v1/generations/{id}/areas/{area}/image",
            format!("/v1/generations/{done}/areas/front_yard/image"),
            Auth::None,
            401,
        ),
        probe(
            "get",
            "/v1/generations/{id}/source-images/{source}",
            format!("/v1/generations/{done}/source-images/street_view"),
            Auth::User,
            200,
        ),
        probe(
            "get",
            "/v1/generations/{id}/source-images/{source}",
            format!("/v1/generations/{done}/source-images/aerial"),
            Auth::User,
            404,
        ),
        probe(
            "get",
            "/v1/generations/{id}/source-images/{source}",
            format!("/v1/generations/{done}/source-images/satellite"),
            Auth::None,
            401,
        ),
        with_json(probe("post", "/v1/admin/credits", "/v1/admin/credits", Auth::Admin, 201), grant.clone()),
        with_json(probe("post", "/v1/admin/credits", "/v1/admin/credits", Auth::Admin, 200), grant.clone()),
        with_json(
            probe("post", "/v1/admin/credits", "/v1/admin/credits", Auth::Admin, 400),
            json!({"user_id": "x", "amount": 0, "reference": ""}),
        ),
        with_json(probe("post", "/v1/admin/credits", "/v1/admin/credits", Auth::User, 403), grant.clone()),
        Probe {
            body: Some(("text/plain", "x".into())),
            ..probe("post", "/v1/admin/credits", "/v1/admin/credits", Auth::Admin, 415)
        },
        with_json(probe("post", "/v1/admin/credits", "/v1/admin/credits", Auth::None, 401), grant),
    ];

    let tokens = Tokens {
        user: token.clone(),
        stranger: t.token(UserId::new_random()),
        admin: t.admin_token(),
        buyer: t.token(UserId::new_random()),
    };
    let mut c = Checker { doc: &doc, t: &t, tokens, problems: Vec::new(), exercised: BTreeSet::new() };
    for p in probes.drain(..) {
        c.run(p).await;
    }

    // Billing (CONTRACT §7), through the Stripe simulator that the server
    // runs in process. Checkout is paid as a browser pays it; the webhooks
    // that credit and subscribe arrive on their own.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let (checkout, subscription, cancel, portal) = (
        "/v1/billing/checkout",
        "/v1/billing/subscription",
        "/v1/billing/subscription/cancel",
        "/v1/billing/portal",
    );
    let buy = |expect, package: &str| {
        with_json(probe("post", checkout, checkout, Auth::Buyer, expect), json!({"package_id": package}))
    };
    let subscribe = |expect, plan: &str| {
        with_json(probe("post", subscription, subscription, Auth::Buyer, expect), json!({"plan_id": plan}))
    };
    let cancel_with =
        |expect, body: Value| with_json(probe("post", cancel, cancel, Auth::Buyer, expect), body);

    let catalogue =
        c.must(probe("get", "/v1/billing/packages", "/v1/billing/packages", Auth::None, 200)).await;
    assert_eq!(catalogue["packages"].as_array().map(Vec::len), Some(4), "{catalogue}");
    assert_eq!(catalogue["plans"][0]["id"], "monthly_pro", "the simulator offers the plan: {catalogue}");
    let none = c.must(probe("get", subscription, subscription, Auth::Buyer, 200)).await;
    assert_eq!(none["status"], "none", "{none}");
    for p in [
        probe("get", subscription, subscription, Auth::None, 401),
        cancel_with(409, json!({})),
        probe("post", portal, portal, Auth::Buyer, 409),
        probe("post", portal, portal, Auth::None, 401),
        with_json(probe("post", checkout, checkout, Auth::None, 401), json!({"package_id": "package_10"})),
        buy(400, "package_7"),
        Probe {
            body: Some(("text/plain", "package_10".into())),
            ..probe("post", checkout, checkout, Auth::Buyer, 415)
        },
        Probe {
            body: Some(("application/json", format!(r#"{{"package_id":"{}"}}"#, "x".repeat(70_000)))),
            ..probe("post", checkout, checkout, Auth::Buyer, 413)
        },
        subscribe(400, "gold"),
        Probe { body: Some(("text/plain", "{}".into())), ..probe("post", cancel, cancel, Auth::Buyer, 415) },
        cancel_with(400, json!({"at_period_end": "soon"})),
    ] {
        c.run(p).await;
    }

    // A package: Checkout, replayed under its key, refused under the same
    // key for another package; paid; the webhook credits its tokens once.
    let session = c.must(Probe { key: Some("openapi-buy"), ..buy(201, "package_10") }).await;
    let replay = c.must(Probe { key: Some("openapi-buy"), ..buy(201, "package_10") }).await;
    assert_eq!(replay["session_id"], session["session_id"], "the same key answers the same session");
    c.run(Probe { key: Some("openapi-buy"), ..buy(422, "package_50") }).await;
    pay(&t, &browser, &session).await;
    c.wait_until("/v1/account", "the package's tokens credited", |a| a["token_balance"] == 10).await;
    let account = c.must(probe("get", "/v1/account", "/v1/account", Auth::Buyer, 200)).await;
    assert_eq!(account["subscription"], Value::Null, "{account}");
    let ledger =
        c.must(probe("get", "/v1/account/transactions", "/v1/account/transactions", Auth::Buyer, 200)).await;
    let purchases: Vec<&Value> = ledger["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "credit" && e["source"] == "token")
        .collect();
    assert_eq!(purchases.len(), 1, "{ledger}");
    assert_eq!(purchases[0]["amount"], 10, "{ledger}");
    assert!(purchases[0]["reference"].as_str().unwrap().starts_with("stripe:pi_"), "{ledger}");
    // Having paid, the buyer is a Stripe customer with a portal.
    c.run(probe("post", portal, portal, Auth::Buyer, 201)).await;

    // The plan: Checkout, paid; active once its webhooks arrived, and then
    // a second subscription is refused.
    let session = c.must(subscribe(201, "monthly_pro")).await;
    pay(&t, &browser, &session).await;
    c.wait_until(subscription, "the subscription active", |s| s["status"] == "active").await;
    c.run(subscribe(409, "monthly_pro")).await;
    let active = c.must(probe("get", subscription, subscription, Auth::Buyer, 200)).await;
    assert_eq!(
        (&active["plan"], active["cancel_at_period_end"].as_bool()),
        (&json!("monthly_pro"), Some(false))
    );
    assert!(active["current_period_end"].is_string(), "{active}");
    let account = c.must(probe("get", "/v1/account", "/v1/account", Auth::Buyer, 200)).await;
    assert_eq!(account["subscription"]["status"], "active", "{account}");

    // Cancelled at the period's end, then now; then there is none to cancel.
    // (Whether the first one's webhook is recorded is not awaited: made in
    // the same second as the subscription's first invoice, it is ordered
    // before that invoice and changes nothing; the cancellation now is
    // ordered after both.)
    let ending = c.must(cancel_with(200, json!({}))).await;
    assert_eq!(ending["cancel_at_period_end"], true, "{ending}");
    let ended = c.must(cancel_with(200, json!({"at_period_end": false}))).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    c.wait_until(subscription, "the subscription cancelled", |s| s["status"] == "cancelled").await;
    c.run(cancel_with(409, json!({}))).await;

    // Stripe failing: 503 with Retry-After once the adapter's attempts are
    // spent; Stripe refusing: 502. Scripted on the simulator's control
    // endpoint, on the same loopback port as its Checkout pages.
    let sim_base = {
        let u = url::Url::parse(session["checkout_url"].as_str().unwrap()).unwrap();
        u.origin().ascii_serialization()
    };
    let script = |status: u16, times: u32| {
        let body = json!({"endpoint": "checkout_sessions", "behaviour": {"kind": "status", "status": status}, "times": times});
        browser
            .post(format!("{sim_base}/_sim/script"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    assert!(script(503, 3).await.unwrap().status().is_success());
    let (headers, body) = c.run(buy(503, "package_10")).await;
    assert_eq!(body["code"], "payments_unavailable", "{body}");
    assert!(headers.contains_key("retry-after"), "503 without Retry-After: {body}");
    assert!(script(400, 1).await.unwrap().status().is_success());
    let (_, body) = c.run(buy(502, "package_10")).await;
    assert_eq!(body["code"], "payments_rejected", "{body}");

    // The webhook: refused unsigned or badly signed, before anything is
    // read; a signed event of a type Terrace does not act on is received
    // and ignored, and its second delivery is a duplicate.
    let (event, signature) = signed_event("evt_openapi_1", "charge.refunded");
    let stamp = signature.split(',').next().unwrap();
    let bad = format!("{stamp},v1={}", "0".repeat(64));
    for p in [
        webhook(400, event.clone(), None),
        webhook(400, event.clone(), Some(bad)),
        webhook(413, format!(r#"{{"id":"{}"}}"#, "x".repeat(300 * 1024)), Some(signature.clone())),
    ] {
        c.run(p).await;
    }
    let first = c.must(webhook(200, event.clone(), Some(signature.clone()))).await;
    assert_eq!(first["outcome"], "ignored", "{first}");
    let again = c.must(webhook(200, event, Some(signature))).await;
    assert_eq!(again["outcome"], "duplicate", "{again}");

    let Checker { mut problems, exercised, .. } = c;
    // Every documented operation was seen to succeed.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !exercised.iter().any(|(p, m)| p == path && m == method) {
                problems.push(format!(
                    "{} {path} is documented but no probe saw it succeed",
                    method.to_uppercase()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
