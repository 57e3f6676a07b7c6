use crate::support::App;
use std::time::{Duration, Instant};
use terrace_domain::UserId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn request_ids_are_echoed_when_well_formed_and_made_otherwise() {
    let app = App::start(|_| {}).await;
    let res = app.http.get(app.url("/livez")).header("x-request-id", "abc-123.X_y").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123.X_y");
    let res = app.http.get(app.url("/livez")).header("x-request-id", "bad id/!").send().await.unwrap();
    let made = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(made, "bad id/!");
    assert!(terrace_domain::RequestId::parse(&made).is_some());

    // Problems carry the same id in their body.
    let res = app.http.get(app.url("/v1/account")).header("x-request-id", "trace-me").send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["request_id"], "trace-me");
    assert_eq!(body["status"], 401);
    assert_eq!(body["code"], "unauthorized");
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem lacks {field}: {body}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = App::start(|_| {}).await;
    let res = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = app.http.delete(app.url("/v1/generations")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn headers_that_do_not_arrive_in_time_close_the_connection() {
    let app = App::start(|c| c.header_read_timeout = Duration::from_millis(300)).await;
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a connection with unfinished headers open");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", started.elapsed());
    // A complete request on a fresh connection is still answered.
    assert_eq!(app.http.get(app.url("/livez")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn slow_requests_answer_503_timeout() {
    let app = App::start(|c| c.request_timeout = Duration::from_millis(300)).await;
    let user = UserId::new_random();
    // Open the account first, then stall the store.
    assert_eq!(
        app.http
            .get(app.url("/v1/account"))
            .header("authorization", app.token(user))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stall(true);
    let started = Instant::now();
    let res = app
        .http
        .get(app.url("/v1/generations"))
        .header("authorization", app.token(user))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "timeout");
}

#[tokio::test]
async fn load_past_the_concurrency_limit_is_shed_with_503() {
    let app = App::start(|c| {
        c.max_requests = 1;
        c.request_timeout = Duration::from_secs(5);
    })
    .await;
    let user = UserId::new_random();
    assert_eq!(
        app.http
            .get(app.url("/v1/account"))
            .header("authorization", app.token(user))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stall(true);
    let slow = {
        let (http, url, token) = (app.http.clone(), app.url("/v1/generations"), app.token(user));
        tokio::spawn(
            async move { http.get(url).header("authorization", token).send().await.map(|r| r.status()) },
        )
    };
    // The slow request holds the only permit: the next one is shed at once.
    app.until_waiting(1).await;
    let res =
        app.http.get(app.url("/v1/account")).header("authorization", app.token(user)).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "overloaded");
    app.stall(false);
    slow.abort();
    // Operations routes are never shed.
    assert_eq!(app.http.get(app.url("/livez")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = App::start(|_| {}).await;
    let user = UserId::new_random();
    let big = format!(r#"{{"address":"{}","areas":[]}}"#, "x".repeat(70 * 1024));
    let res = app
        .http
        .post(app.url("/v1/generations"))
        .header("authorization", app.token(user))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // Also when the length is not declared up front (chunked).
    let stream = futures::stream::iter(
        big.into_bytes().chunks(8192).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let res = app
        .http
        .post(app.url("/v1/generations"))
        .header("authorization", app.token(user))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
}

#[tokio::test]
async fn in_flight_requests_finish_when_the_server_drains() {
    let app = App::start(|c| c.request_timeout = Duration::from_secs(5)).await;
    let user = UserId::new_random();
    assert_eq!(
        app.http
            .get(app.url("/v1/account"))
            .header("authorization", app.token(user))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stall(true);
    let slow = {
        let (http, url, token) = (app.http.clone(), app.url("/v1/generations"), app.token(user));
        tokio::spawn(
            async move { http.get(url).header("authorization", token).send().await.map(|r| r.status()) },
        )
    };
    app.until_waiting(1).await;
    app.shutdown.cancel();
    // The listener closes at once...
    tokio::time::timeout(Duration::from_secs(2), async {
        while reqwest::Client::new().get(app.url("/livez")).send().await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener kept accepting after shutdown");
    // ...and the request in flight still gets its answer.
    app.stall(false);
    let status = tokio::time::timeout(Duration::from_secs(4), slow).await.unwrap().unwrap().unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed_after_the_header_timeout() {
    let app = App::start(|c| c.header_read_timeout = Duration::from_millis(300)).await;
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now idle: the next request's headers never come.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle kept-alive connection stayed open");
}

#[tokio::test]
async fn a_panic_below_a_handler_is_a_500_problem_and_the_server_lives_on() {
    let app = App::start(|_| {}).await;
    let user = UserId::new_random();
    assert_eq!(
        app.http
            .get(app.url("/v1/account"))
            .header("authorization", app.token(user))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.store.panics.store(true, std::sync::atomic::Ordering::SeqCst);
    let res = app
        .http
        .get(app.url("/v1/generations"))
        .header("authorization", app.token(user))
        .header("x-request-id", "boom-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["x-request-id"], "boom-1");
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!((body["code"].as_str(), body["request_id"].as_str()), (Some("internal"), Some("boom-1")));
    app.store.panics.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        app.http
            .get(app.url("/v1/generations"))
            .header("authorization", app.token(user))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
