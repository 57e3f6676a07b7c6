use crate::support::App;
use std::time::{Duration, Instant};

#[tokio::test]
async fn livez_touches_nothing_and_readyz_follows_the_store() {
    let app = App::start(|_| {}).await;
    app.stall(true);
    let live = app.http.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.text().await.unwrap(), r#"{"status":"ok"}"#);

    // A stalled store: /readyz answers 503 within the acquire timeout (500ms here) + 1 s.
    let started = Instant::now();
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(1500), "readyz took {:?}", started.elapsed());

    app.stall(false);
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);

    // Draining: 503 at once.
    app.shutdown.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        // The listener closes; a request on a fresh connection is refused.
        loop {
            if app.http.get(app.url("/readyz")).send().await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(drained.is_ok(), "the listener kept accepting after shutdown");
}

#[tokio::test]
async fn metrics_expose_every_contract_name_even_with_a_stalled_store() {
    let app = App::start(|_| {}).await;
    app.stall(true);
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for name in [
        "terrace_generation_tasks_active",
        "terrace_generations_total",
        "terrace_generation_duration_seconds_bucket",
        "terrace_generations_stuck",
        "terrace_db_pool_connections",
        "terrace_db_pool_max",
        "terrace_db_acquire_timeouts_total",
        "terrace_upstream_requests_total",
        "terrace_upstream_timeouts_total",
        "terrace_upstream_request_duration_seconds_bucket",
        "terrace_credits_held",
        "terrace_holds_voided_total",
        "terrace_event_streams_active",
        "process_resident_memory_bytes",
        "terrace_requests_rejected_total{reason=\"overloaded\"}",
        "terrace_requests_rejected_total{reason=\"too_many_requests\"}",
        "terrace_requests_rejected_total{reason=\"timeout\"}",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "/metrics lacks {name}");
    }
}

#[tokio::test]
async fn admin_tasks_lists_the_work_and_needs_an_admin() {
    let app = App::start(|_| {}).await;
    let user = terrace_domain::UserId::new_random();
    let res = app
        .http
        .get(app.url("/v1/admin/tasks"))
        .header("authorization", app.token(user))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let admin = format!("Bearer {}", app.jwt.mint(user, true, Duration::from_secs(60)));
    let res = app.http.get(app.url("/v1/admin/tasks")).header("authorization", admin).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "[]");
}

#[tokio::test]
async fn readyz_turns_503_at_once_when_draining() {
    use tower::ServiceExt;
    let app = App::start(|_| {}).await;
    let ask = || axum::http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap();
    assert_eq!(app.router.clone().oneshot(ask()).await.unwrap().status(), 200);
    app.shutdown.cancel();
    let res = app.router.clone().oneshot(ask()).await.unwrap();
    assert_eq!(res.status(), 503);
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], br#"{"status":"draining"}"#);
}
