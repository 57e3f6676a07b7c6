use crate::support::App;
use futures::StreamExt;
use std::time::Duration;
use terrace_domain::state::AreaStatus;
use terrace_domain::{ErrorCode, Failure, GenerationId, UserId};
use terrace_ports::{GenerationStore, Lease, WorkerId};

/// Reads the stream until `pred` holds for the text received so far.
async fn read_until(
    body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    pred: impl Fn(&str) -> bool,
) -> bool {
    tokio::time::timeout(Duration::from_secs(4), async {
        while !pred(seen) {
            match body.next().await {
                Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn the_event_stream_sends_at_once_on_change_keeps_alive_and_ends_after_terminal() {
    let app = App::start(|c| {
        c.keepalive_interval = Duration::from_millis(200);
        c.event_poll_interval = Duration::from_secs(30); // changes must come through notifications
    })
    .await;
    let user = UserId::new_random();
    let g = app.create(user).await;
    let id: GenerationId = g["id"].as_str().unwrap().parse().unwrap();

    let res = app
        .http
        .get(app.url(&format!("/v1/generations/{id}/events")))
        .header("authorization", app.token(user))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    assert!(read_until(&mut body, &mut seen, |s| s.contains("\n\n")).await, "no first event");
    assert!(seen.starts_with("event: generation\ndata: {"), "{seen}");
    assert!(seen.contains(r#""status":"pending""#));

    assert!(
        read_until(&mut body, &mut seen, |s| s.contains(": keepalive\n\n")).await,
        "no keepalive: {seen}"
    );

    // A worker claims it: a new event.
    let owner = WorkerId("w".into());
    let claimed = app.store.inner.claim(&owner, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(read_until(&mut body, &mut seen, |s| s.contains(r#""status":"processing""#)).await, "{seen}");

    // It fails: the terminal event, then the stream ends.
    let lease = Lease { generation_id: id, attempt: claimed[0].attempt, owner };
    app.store
        .inner
        .finish(&lease, AreaStatus::Failed, &Failure::new(ErrorCode::NoImage, "none"))
        .await
        .unwrap();
    assert!(read_until(&mut body, &mut seen, |s| s.contains(r#""status":"failed""#)).await, "{seen}");
    let end =
        tokio::time::timeout(Duration::from_secs(2), body.next()).await.expect("the stream did not end");
    assert!(end.is_none(), "more after the terminal event");
}

#[tokio::test]
async fn the_event_stream_is_only_for_the_owner_and_ends_on_shutdown() {
    let app = App::start(|_| {}).await;
    let user = UserId::new_random();
    let g = app.create(user).await;
    let path = format!("/v1/generations/{}/events", g["id"].as_str().unwrap());
    let other = app
        .http
        .get(app.url(&path))
        .header("authorization", app.token(UserId::new_random()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);

    let res = app.http.get(app.url(&path)).header("authorization", app.token(user)).send().await.unwrap();
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    assert!(read_until(&mut body, &mut seen, |s| s.contains("\n\n")).await);
    app.shutdown.cancel();
    let end =
        tokio::time::timeout(Duration::from_secs(3), async { while let Some(Ok(_)) = body.next().await {} })
            .await;
    assert!(end.is_ok(), "the stream outlived the shutdown");
}

#[tokio::test]
async fn an_event_stream_closes_itself_after_the_generation_timeout_plus_slack() {
    let app = App::start(|c| {
        c.generation_timeout = Duration::from_millis(200);
        c.event_stream_slack = Duration::from_millis(200);
        c.keepalive_interval = Duration::from_millis(50);
    })
    .await;
    let user = UserId::new_random();
    let g = app.create(user).await;
    let res = app
        .http
        .get(app.url(&format!("/v1/generations/{}/events", g["id"].as_str().unwrap())))
        .header("authorization", app.token(user))
        .send()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    // Nobody works on it, so it never ends by itself: the stream must.
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its bound: {seen}");
    assert!(started.elapsed() >= Duration::from_millis(350), "closed early after {:?}", started.elapsed());
    assert!(seen.contains(": keepalive") && seen.starts_with("event: generation"), "{seen}");
}
