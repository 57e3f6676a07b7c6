//! `docs/openapi.yaml` against the running server: every documented
//! operation is exercised, every answer's status is documented for its
//! operation, its content type is a documented one, and its JSON body
//! satisfies the documented schema (required fields, types, enums, no
//! undocumented fields).

use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use terrace_domain::UserId;
use terrace_simulator::{Behaviour, Endpoint};

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
}

struct Probe {
    method: &'static str,
    template: &'static str,
    path: String,
    auth: Auth,
    body: Option<(&'static str, String)>,
    key: Option<&'static str>,
    expect: u16,
}

fn probe(
    method: &'static str,
    template: &'static str,
    path: impl Into<String>,
    auth: Auth,
    expect: u16,
) -> Probe {
    Probe { method, template, path: path.into(), auth, body: None, key: None, expect }
}

fn with_json(mut p: Probe, body: Value) -> Probe {
    p.body = Some(("application/json", body.to_string()));
    p
}

#[tokio::test]
async fn every_documented_route_answers_as_documented() {
    let doc = spec();
    let sim = simulator().await;
    let t = Terrace::start(&base_env(&sim)).await;
    let user = UserId::new_random();
    let token = t.token(user);
    let admin = t.admin_token();
    let stranger = t.token(UserId::new_random());

    // A completed generation, and one that stays processing.
    let (_, done) = t.create(&token, &[("front_yard", "japanese_zen")]).await;
    let done = done["id"].as_str().unwrap().to_owned();
    t.wait_terminal(&done, &token).await;
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let (_, running) = t.create(&token, &[("patio", "japanese_zen")]).await;
    let running = running["id"].as_str().unwrap().to_owned();
    t.wait_for(&running, &token, std::time::Duration::from_secs(5), |g| g["status"] == "processing").await;

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

    let mut problems = Vec::new();
    let mut exercised = BTreeSet::new();
    for p in probes.drain(..) {
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
            Auth::User => req = req.header("authorization", &token),
            Auth::Stranger => req = req.header("authorization", &stranger),
            Auth::Admin => req = req.header("authorization", &admin),
        }
        if let Some((ct, body)) = &p.body {
            req = req.header("content-type", *ct).body(body.clone());
        }
        if let Some(k) = p.key {
            req = req.header("idempotency-key", k);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let content_type =
            res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let essence = content_type.split(';').next().unwrap().trim().to_owned();
        assert!(res.headers().contains_key("x-request-id"), "{name}: no X-Request-Id");
        let bytes = res.bytes().await.unwrap();
        if status != p.expect {
            problems.push(format!("{name}: answered {status}: {}", String::from_utf8_lossy(&bytes)));
            continue;
        }
        let op = &doc["paths"][p.template][p.method];
        if op.is_null() {
            problems.push(format!("{name}: {} {} is not documented", p.method, p.template));
            continue;
        }
        if (200..300).contains(&status) {
            exercised.insert((p.template, p.method));
        }
        let Some(response) = op["responses"].get(status.to_string()) else {
            problems.push(format!("{name}: status {status} is not documented"));
            continue;
        };
        let response = resolve(&doc, response);
        let Some(media) = response["content"].get(essence.as_str()) else {
            problems.push(format!("{name}: content type {content_type:?} is not documented for {status}"));
            continue;
        };
        if essence.ends_with("json") {
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let mut errors = Vec::new();
            check(&doc, &media["schema"], &body, "body", &mut errors);
            problems.extend(errors.into_iter().map(|e| format!("{name}: {e}")));
        }
    }
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
