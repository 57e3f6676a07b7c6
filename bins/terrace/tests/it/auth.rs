//! Every way a bearer token can be wrong is 401; other users' things are 404.

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use terrace_domain::UserId;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn sign(alg: Algorithm, claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

#[tokio::test]
async fn every_bad_token_is_401() {
    let sim = simulator().await;
    let t = Terrace::start(&base_env(&sim)).await;
    let user = UserId::new_random().to_string();
    let good = json!({"sub": user, "exp": now() + 600});
    let unsigned = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(good.to_string().as_bytes())
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not bearer", Some(format!("Basic {}", B64.encode(b"a:b")))),
        ("empty bearer", Some("Bearer ".into())),
        ("malformed", Some("Bearer not.a.jwt".into())),
        (
            "wrong signature",
            Some(format!("Bearer {}", sign(Algorithm::HS256, &good, b"another-secret-another-secret"))),
        ),
        ("HS384", Some(format!("Bearer {}", sign(Algorithm::HS384, &good, SECRET.as_bytes())))),
        ("HS512", Some(format!("Bearer {}", sign(Algorithm::HS512, &good, SECRET.as_bytes())))),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::HS256, &json!({"sub": user, "exp": now() - 120}), SECRET.as_bytes())
            )),
        ),
        (
            "no exp",
            Some(format!("Bearer {}", sign(Algorithm::HS256, &json!({"sub": user}), SECRET.as_bytes()))),
        ),
        (
            "no sub",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::HS256, &json!({"exp": now() + 600}), SECRET.as_bytes())
            )),
        ),
        (
            "sub not a uuid",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::HS256, &json!({"sub": "alice", "exp": now() + 600}), SECRET.as_bytes())
            )),
        ),
    ];
    for (name, header) in cases {
        for path in ["/v1/account", "/v1/generations", "/v1/admin/tasks"] {
            let mut req = t.http.get(t.url(path));
            if let Some(h) = &header {
                req = req.header("authorization", h);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{name} on {path}");
            assert_eq!(res.headers()["content-type"], "application/problem+json", "{name}");
            let p: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            assert_eq!(
                (p["status"].as_u64(), p["code"].as_str()),
                (Some(401), Some("unauthorized")),
                "{name}: {p}"
            );
        }
    }
    // The good token works.
    let ok = format!("Bearer {}", sign(Algorithm::HS256, &good, SECRET.as_bytes()));
    assert_eq!(t.get("/v1/account", &ok).await.0, 200);
    // A service_role token is an administrator.
    let admin = sign(
        Algorithm::HS256,
        &json!({"sub": user, "exp": now() + 600, "role": "service_role"}),
        SECRET.as_bytes(),
    );
    assert_eq!(t.get("/v1/admin/tasks", &format!("Bearer {admin}")).await.0, 200);
    assert_eq!(t.get("/v1/admin/tasks", &ok).await.0, 403);
}

#[tokio::test]
async fn users_see_only_their_own_things_and_admins_see_all() {
    let sim = simulator().await;
    let t = Terrace::start(&base_env(&sim)).await;
    let (alice, bob) = (t.token(UserId::new_random()), t.token(UserId::new_random()));
    let (_, g) = t.create(&alice, &[("front_yard", "japanese_zen")]).await;
    let id = g["id"].as_str().unwrap();
    t.wait_terminal(id, &alice).await;
    for path in [
        format!("/v1/generations/{id}"),
        format!("/v1/generations/{id}/events"),
        format!("/v1/generations/{id}/areas/front_yard/image"),
        format!("/v1/generations/{id}/source-images/street_view"),
    ] {
        let res = t.http.get(t.url(&path)).header("authorization", &bob).send().await.unwrap();
        assert_eq!(res.status(), 404, "bob saw {path}");
        let res = t.http.get(t.url(&path)).header("authorization", &alice).send().await.unwrap();
        assert_eq!(res.status(), 200, "alice could not see {path}");
    }
    assert_eq!(t.post(&format!("/v1/generations/{id}/cancel"), &bob, &json!({}), None).await.0, 404);
    let (_, list) = t.get("/v1/generations", &bob).await;
    assert_eq!(list["items"], json!([]));
    let (_, tx) = t.get("/v1/account/transactions", &bob).await;
    assert!(tx["items"].as_array().unwrap().iter().all(|e| e["generation_id"].is_null()));
    assert_eq!(t.get(&format!("/v1/generations/{id}"), &t.admin_token()).await.0, 200);
}

/// An access token exactly as Supabase Auth issues one.
fn supabase_claims(user: &str, aud: &str) -> serde_json::Value {
    let iat = now();
    json!({
        "aud": aud, "exp": iat + 3600, "iat": iat, "iss": "https://abcd.supabase.co/auth/v1",
        "sub": user, "email": "gardener@example.com", "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"email": "gardener@example.com", "email_verified": true, "sub": user},
        "role": "authenticated", "aal": "aal1",
        "amr": [{"method": "password", "timestamp": iat}],
        "session_id": "3f1c2b9e-6a4d-4c1e-9b7a-2d5e8f0a1b3c", "is_anonymous": false,
    })
}

#[tokio::test]
async fn supabase_access_tokens_sign_in_and_the_audience_is_configurable() {
    let sim = simulator().await;
    let user = UserId::new_random();
    let token = |aud: &str| {
        format!(
            "bearer {}",
            sign(Algorithm::HS256, &supabase_claims(&user.to_string(), aud), SECRET.as_bytes())
        )
    };
    let t = Terrace::start(&base_env(&sim)).await;
    let (status, account) = t.get("/v1/account", &token("authenticated")).await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(
        (account["user_id"].as_str(), account["trial_credits"].as_u64()),
        (Some(&*user.to_string()), Some(3))
    );
    assert_eq!(t.get("/v1/account", &token("someone-else")).await.0, 401);
    // An upper-case spelling of the same user is not the same account.
    let upper = format!(
        "Bearer {}",
        sign(
            Algorithm::HS256,
            &supabase_claims(&user.to_string().to_uppercase(), "authenticated"),
            SECRET.as_bytes()
        )
    );
    assert_eq!(t.get("/v1/account", &upper).await.0, 401);
    drop(t);

    let mut env = base_env(&sim);
    set(&mut env, "TERRACE_JWT_AUDIENCE", "terrace-web");
    let t = Terrace::start(&env).await;
    assert_eq!(t.get("/v1/account", &token("terrace-web")).await.0, 200);
    assert_eq!(t.get("/v1/account", &token("authenticated")).await.0, 401);
}
