//! SIGTERM: stop accepting, finish or hand back work, exit within the grace
//! period; a second signal exits at once; another instance finishes the work.
//! And the edge that keeps clients from hanging the server: readiness while
//! the database stalls, header and request timeouts, load shedding.

use crate::support::*;
use std::time::{Duration, Instant};
use terrace_domain::UserId;
use terrace_simulator::{Behaviour, Endpoint};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn sigterm_with_work_in_flight_exits_within_the_grace_period() {
    let sim = simulator().await;
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let mut env = base_env(&sim);
    set(&mut env, "TERRACE_LLM_IDLE_TIMEOUT", "60s");
    set(&mut env, "TERRACE_SHUTDOWN_GRACE", "3s");
    let mut t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());
    let (_, g) = t.create(&token, &[("patio", "japanese_zen"), ("backyard", "english_garden")]).await;
    let id = g["id"].as_str().unwrap().to_owned();
    t.wait_for(&id, &token, Duration::from_secs(5), |g| g["status"] == "processing").await;

    let started = Instant::now();
    t.signal("TERM");
    let status = t.wait_exit(Duration::from_secs(5)).await.expect("terrace did not exit");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    let logs = t.logs();
    assert!(logs.contains("stopped accepting"), "{logs}");
    assert!(logs.contains("generations handed back stopped=1 drained=true"), "{logs}");
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.endpoint(Endpoint::Gemini).in_flight() == 0).await);
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let sim = simulator().await;
    let mut env = base_env(&sim);
    set(&mut env, "TERRACE_SHUTDOWN_GRACE", "30s");
    let mut t = Terrace::start(&env).await;
    // A request whose body never finishes keeps the drain waiting.
    let _slow = stalled_post(&t).await;
    // A round trip on another connection: by then the server has read the first request.
    assert_eq!(t.http.get(t.url("/livez")).send().await.unwrap().status(), 200);

    t.signal("TERM");
    tokio::time::timeout(Duration::from_secs(3), async {
        while !t.logs().contains("stopped accepting") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first signal did not start the drain");
    assert!(
        t.wait_exit(Duration::from_millis(300)).await.is_none(),
        "the drain did not wait for the request in flight"
    );
    let started = Instant::now();
    t.signal("INT");
    let status =
        t.wait_exit(Duration::from_secs(2)).await.expect("the second signal did not end the process");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(status.code(), Some(130));
}

#[tokio::test]
async fn sigterm_hands_work_back_and_a_second_instance_finishes_it() {
    let backend = crate::support::Backend::postgres().await;
    let sim = simulator().await;
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    set(&mut env, "TERRACE_LLM_IDLE_TIMEOUT", "60s");
    set(&mut env, "TERRACE_GENERATION_TIMEOUT", "2m");
    set(&mut env, "TERRACE_AREA_TIMEOUT", "2m");
    let mut first = Terrace::start(&env).await;
    let token = first.token(UserId::new_random());
    let (status, g) =
        first.create(&token, &[("patio", "japanese_zen"), ("backyard", "english_garden")]).await;
    assert_eq!(status, 202, "{g}");
    let id = g["id"].as_str().unwrap().to_owned();
    let rid = g["request_id"].as_str().unwrap().to_owned();
    first.wait_for(&id, &token, Duration::from_secs(5), |g| g["status"] == "processing").await;
    assert!(sim.wait_for(Duration::from_secs(5), |s| s.endpoint(Endpoint::Gemini).in_flight() >= 2).await);

    let started = Instant::now();
    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(5)).await.expect("the first instance did not exit");
    assert!(
        status.success() && started.elapsed() < Duration::from_secs(4),
        "{status:?} after {:?}",
        started.elapsed()
    );

    // Google answers again; a second instance on the same database finishes the work.
    sim.reset();
    let second = Terrace::start(&env).await;
    let done = second.wait_terminal(&id, &token).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", second.logs());
    assert_eq!((done["captured"].as_u64(), done["voided"].as_u64()), (Some(2), Some(0)));
    let account = second.account(&token).await;
    assert_conserved(&account, 3);
    assert_eq!(account["held"], 0);
    // Its work logs under the request id that created the generation.
    assert!(
        second.logs().lines().any(|l| l.contains("generation finished") && l.contains(&rid)),
        "{}",
        second.logs()
    );
    for area in done["areas"].as_array().unwrap() {
        let res = second
            .http
            .get(second.url(area["image_url"].as_str().unwrap()))
            .header("authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test]
async fn readyz_answers_in_time_while_the_database_stalls() {
    let (backend, proxy) = Backend::postgres_behind_proxy().await;
    let sim = simulator().await;
    let mut env = base_env(&sim);
    backend.apply(&mut env);
    set(&mut env, "TERRACE_DB_ACQUIRE_TIMEOUT", "1s");
    set(&mut env, "TERRACE_DB_CONNECT_TIMEOUT", "1s");
    set(&mut env, "TERRACE_DB_STATEMENT_TIMEOUT", "2s");
    set(&mut env, "TERRACE_DB_POOL_SIZE", "3");
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());
    assert_eq!(t.get("/v1/account", &token).await.0, 200);
    assert_eq!(t.http.get(t.url("/readyz")).send().await.unwrap().status(), 200);

    proxy.freeze(true);
    for _ in 0..2 {
        let started = Instant::now();
        let res = t.http.get(t.url("/readyz")).send().await.unwrap();
        assert_eq!(res.status(), 503);
        assert!(started.elapsed() < Duration::from_millis(2200), "readyz took {:?}", started.elapsed());
    }
    let started = Instant::now();
    assert_eq!(t.http.get(t.url("/livez")).send().await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(t.http.get(t.url("/metrics")).send().await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_millis(2200), "metrics took {:?}", started.elapsed());
    // An API call fails cleanly within its bound rather than hanging.
    let started = Instant::now();
    let (status, p) = t.get("/v1/generations", &token).await;
    assert_eq!(status, 503, "{p}");
    assert!(started.elapsed() < Duration::from_secs(7), "took {:?}", started.elapsed());

    proxy.freeze(false);
    tokio::time::timeout(Duration::from_secs(8), async {
        while t.http.get(t.url("/readyz")).send().await.unwrap().status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("readyz did not recover after the database did");
}

/// Sends the head of a POST whose body never completes; returns the connection.
async fn stalled_post(t: &Terrace) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let head = format!(
        "POST /v1/generations HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"addr",
        t.token(UserId::new_random())
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

#[tokio::test]
async fn the_edge_limits_come_from_the_environment() {
    use tokio::io::AsyncReadExt;
    let sim = simulator().await;
    let mut env = base_env(&sim);
    set(&mut env, "TERRACE_HEADER_READ_TIMEOUT", "300ms");
    set(&mut env, "TERRACE_REQUEST_TIMEOUT", "700ms");
    set(&mut env, "TERRACE_MAX_CONCURRENT_REQUESTS", "1");
    set(&mut env, "TERRACE_MAX_STREAMS_PER_USER", "1");
    set(&mut env, "TERRACE_LLM_IDLE_TIMEOUT", "30s");
    // Designs never come, so the streams below stay open.
    sim.set_default(Endpoint::Gemini, Behaviour::HangBeforeHeaders);
    let t = Terrace::start(&env).await;
    let token = t.token(UserId::new_random());

    // Headers that never finish: the connection is closed.
    let mut partial = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    partial.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), partial.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a connection with unfinished headers stayed open");

    // A request whose body stalls takes no capacity: with one slot in all,
    // the next request is still served...
    let mut slow = stalled_post(&t).await;
    for _ in 0..3 {
        assert_eq!(t.get("/v1/account", &token).await.0, 200);
    }
    // ...and the stalled request itself ends with 503 timeout.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");
    assert_eq!(t.get("/v1/account", &token).await.0, 200);

    // Streams: one per user, two in all.
    let (_, g) = t.create(&token, &[("patio", "japanese_zen")]).await;
    let events = format!("/v1/generations/{}/events", g["id"].as_str().unwrap());
    let stream = |token: &str| t.http.get(t.url(&events)).header("authorization", token).send();
    let first = stream(&token).await.unwrap();
    assert_eq!(first.status(), 200);
    let second = stream(&token).await.unwrap();
    assert_eq!(second.status(), 429, "one stream per user");
    drop((first, second));
}
