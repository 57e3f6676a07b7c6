//! What crosses the wire (CONTRACT §5): exactly one JSON value per body,
//! validation answers that are bounded and speak JSON, a problem with a
//! request id even for requests hyper refuses itself, and images that are
//! cached as the immutable things they are.

use crate::support::App;
use std::time::Duration;
use terrace_domain::{AreaKind, UserId};
use terrace_ports::{BlobStore, GenerationStore, Image, Lease, Ledger, WorkerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CREATE: &str =
    r#"{"address":"12 Main St, Springfield","areas":[{"area":"patio","style":"japanese_zen"}]}"#;

async fn post(app: &App, path: &str, token: &str, body: String) -> (u16, serde_json::Value) {
    let res = app
        .http
        .post(app.url(path))
        .header("authorization", token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or_default())
}

#[tokio::test]
async fn a_body_must_be_exactly_one_json_value() {
    let app = App::start(|_| {}).await;
    let user = UserId::new_random();
    let token = app.token(user);
    for trailing in ["xyz", "{}", " 1", "\n[]"] {
        let (status, body) = post(&app, "/v1/generations", &token, format!("{CREATE}{trailing}")).await;
        assert_eq!(status, 400, "{trailing:?}");
        assert_eq!(body["errors"][0]["field"], "body");
    }
    let account = app.store.inner.open_account(user, 3).await.unwrap();
    assert_eq!((account.trial_credits, account.held), (3, 0), "nothing was held");
    // Trailing whitespace is fine.
    assert_eq!(post(&app, "/v1/generations", &token, format!("{CREATE} \r\n\t")).await.0, 202);

    let admin = format!("Bearer {}", app.jwt.mint(UserId::new_random(), true, Duration::from_secs(60)));
    let grant = format!(r#"{{"user_id":"{user}","amount":5,"reference":"pay_1"}}"#);
    assert_eq!(post(&app, "/v1/admin/credits", &admin, format!("{grant}NOT JSON")).await.0, 400);
    let account = app.store.inner.open_account(user, 3).await.unwrap();
    assert_eq!(account.token_balance, 0, "a grant with trailing bytes was applied");
    assert_eq!(post(&app, "/v1/admin/credits", &admin, grant).await.0, 201);
}

#[tokio::test]
async fn validation_answers_are_bounded_and_name_no_rust_types() {
    let app = App::start(|_| {}).await;
    let token = app.token(UserId::new_random());
    let area = r#"{"area":"lawn","style":"gothic"},"#;
    let areas = area.repeat(64 * 1024 / area.len() - 2);
    let body = format!(r#"{{"address":"12 Main St","areas":[{}]}}"#, areas.trim_end_matches(','));
    assert!(body.len() < 64 * 1024);
    let (status, problem) = post(&app, "/v1/generations", &token, body).await;
    assert_eq!(status, 400);
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 50, "at most 50 errors are listed");
    assert!(problem["detail"].as_str().unwrap().contains("the first 50"), "{problem}");

    let admin = format!("Bearer {}", app.jwt.mint(UserId::new_random(), true, Duration::from_secs(60)));
    for (path, token, body) in [
        ("/v1/generations", &token, "[1, 2]".to_owned()),
        ("/v1/generations", &token, r#"{"address": 5, "areas": []}"#.to_owned()),
        ("/v1/admin/credits", &admin, r#"{"user_id":"x","amount":"five","reference":"r"}"#.to_owned()),
        ("/v1/admin/credits", &admin, r#"{"user_id":"x","amount":1.5,"reference":"r"}"#.to_owned()),
    ] {
        let (status, problem) = post(&app, path, token, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        // The words the answer says, without its random request id (whose
        // hex could hold `f64`).
        let mut said = problem.clone();
        said.as_object_mut().unwrap().remove("request_id");
        let text = said.to_string();
        for rust in ["struct", "Raw", "i64", "u64", "f64", "sequence"] {
            assert!(!text.contains(rust), "{body} answered with a Rust type ({rust}): {text}");
        }
        assert!(text.contains("expected"), "{text}");
    }
}

/// Sends raw bytes and reads the whole answer (the server closes after it).
async fn raw(app: &App, request: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = conn.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|n| out.len() >= head_end + 4 + n) {
                    break;
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer came");
    String::from_utf8_lossy(&out).into_owned()
}

fn problem_of(answer: &str) -> (u16, String, serde_json::Value) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {answer:?}"));
    let status = head[9..12].parse().unwrap();
    let head = head.to_ascii_lowercase();
    let id = head.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap_or_default().to_owned();
    assert!(head.contains("content-type: application/problem+json"), "{head}");
    (status, id, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

#[tokio::test]
async fn requests_hyper_refuses_still_get_a_problem_with_a_request_id() {
    let app = App::start(|_| {}).await;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // More headers than hyper parses, and a head larger than its buffer.
        (format!("GET /livez HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(200)).into_bytes(), 431),
        (
            format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(500 * 1024))
                .into_bytes(),
            431,
        ),
        // Bad framing.
        (b"POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(), 400),
        (b"NOT-HTTP\r\n\r\n".to_vec(), 400),
        // Within hyper's limits, but over Terrace's own.
        (format!("GET /livez?q={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9 * 1024)).into_bytes(), 414),
        (
            format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024))
                .into_bytes(),
            431,
        ),
    ];
    for (request, want) in cases {
        let answer = raw(&app, &request).await;
        let (status, id, body) = problem_of(&answer);
        assert_eq!(status, want, "{}", &answer[..answer.len().min(300)]);
        assert!(terrace_domain::RequestId::parse(&id).is_some(), "no request id: {answer}");
        assert_eq!(body["request_id"], id.as_str());
        assert_eq!(body["status"], want);
        assert!(body["code"].is_string() && body["detail"].is_string(), "{body}");
    }
    // The server lives on.
    assert_eq!(app.http.get(app.url("/livez")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn images_are_immutable_validated_and_never_sniffed() {
    let app = App::start(|_| {}).await;
    let user = UserId::new_random();
    let g = app.create(user).await;
    let id: terrace_domain::GenerationId = g["id"].as_str().unwrap().parse().unwrap();
    let owner = WorkerId("w".into());
    let claimed = app.store.inner.claim(&owner, Duration::from_secs(30), 10).await.unwrap();
    let lease = Lease { generation_id: id, attempt: claimed[0].attempt, owner };
    let png = Image {
        bytes: bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\nfake"),
        content_type: "image/png".into(),
    };
    app.blobs.put("designs/k", png).await.unwrap();
    app.store.inner.complete_area(&lease, AreaKind::Patio, "designs/k").await.unwrap();

    let url = app.url(&format!("/v1/generations/{id}/areas/patio/image"));
    let res = app.http.get(&url).header("authorization", app.token(user)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let cache = h["cache-control"].to_str().unwrap();
    assert!(
        cache.contains("private") && cache.contains("immutable") && cache.contains("max-age="),
        "{cache}"
    );
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10, "{etag}");
    let again = app
        .http
        .get(&url)
        .header("authorization", app.token(user))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert!(again.bytes().await.unwrap().is_empty());
    let stale = app
        .http
        .get(&url)
        .header("authorization", app.token(user))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    // JSON answers say nosniff too.
    let res = app.http.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn a_store_failure_on_a_paged_request_is_a_5xx_and_a_bad_cursor_a_400() {
    let app = App::start(|_| {}).await;
    let user = UserId::new_random();
    let get = |path: &str| app.http.get(app.url(path)).header("authorization", app.token(user)).send();
    for path in ["/v1/generations?cursor=garbage", "/v1/account/transactions?cursor=garbage"] {
        let res = get(path).await.unwrap();
        assert_eq!(res.status(), 400, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(body["errors"][0]["field"], "cursor");
    }
    app.store.list_fails.store(true, std::sync::atomic::Ordering::SeqCst);
    let res = get("/v1/generations?cursor=17").await.unwrap();
    assert_eq!(res.status(), 500, "a broken store is not the caller's bad cursor");
}
