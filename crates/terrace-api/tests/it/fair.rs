//! No user starves another (CONTRACT §5): capacity is taken only once a
//! body has arrived, and each user has their own caps, past which that user
//! alone gets 429.

use crate::support::App;
use std::time::{Duration, Instant};
use terrace_domain::UserId;
use tokio::io::AsyncWriteExt;

async fn status_of(app: &App, user: UserId, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let res = app.http.get(app.url(path)).header("authorization", app.token(user)).send().await.unwrap();
    (res.status().as_u16(), started.elapsed())
}

#[tokio::test]
async fn bodies_that_never_arrive_take_no_capacity() {
    let app = App::start(|c| {
        c.max_requests = 8;
        c.request_timeout = Duration::from_secs(5);
    })
    .await;
    let (attacker, other) = (UserId::new_random(), UserId::new_random());
    // Five times the instance's capacity of creates whose bodies never come.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /v1/generations HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
            app.token(attacker)
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        held.push(conn);
    }
    // Everyone else is served as before, and so is a create with a body.
    for _ in 0..5 {
        let (status, took) = status_of(&app, other, "/v1/account").await;
        assert_eq!(status, 200, "another user was refused while bodies were awaited");
        assert!(took < Duration::from_secs(2), "another user waited {took:?}");
    }
    let created = app.create(other).await;
    assert_eq!(created["status"], "pending");
    drop(held);
}

#[tokio::test]
async fn one_user_at_their_cap_gets_429_and_others_are_served() {
    let app = App::start(|c| {
        c.max_requests_per_user = 4;
        c.request_timeout = Duration::from_secs(5);
    })
    .await;
    let (greedy, other) = (UserId::new_random(), UserId::new_random());
    assert_eq!(status_of(&app, greedy, "/v1/account").await.0, 200);
    app.store.slow_user.send_replace(Some(greedy));
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, token) = (app.http.clone(), app.url("/v1/generations"), app.token(greedy));
            tokio::spawn(async move {
                http.get(url).header("authorization", token).send().await.map(|r| r.status())
            })
        })
        .collect();
    app.until_slow(4).await;
    // The greedy user's next request is refused at once, with a hint.
    let res =
        app.http.get(app.url("/v1/account")).header("authorization", app.token(greedy)).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "too_many_requests");
    // Another user's latency while the greedy one holds their cap.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let (status, took) = status_of(&app, other, "/v1/generations").await;
        assert_eq!(status, 200);
        worst = worst.max(took);
    }
    eprintln!("another user's slowest request while one user held their cap: {worst:?}");
    assert!(worst < Duration::from_secs(2));
    // The slots come back when the greedy requests end.
    app.store.slow_user.send_replace(None);
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    assert_eq!(status_of(&app, greedy, "/v1/account").await.0, 200);
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("terrace_requests_rejected_total{reason=\"too_many_requests\"} 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn one_user_cannot_hold_every_event_stream() {
    let app = App::start(|c| {
        c.max_streams_per_user = 3;
        c.max_event_streams = 10;
        c.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    let (greedy, other) = (UserId::new_random(), UserId::new_random());
    let mine = app.create(greedy).await;
    let theirs = app.create(other).await;
    let open = |user: UserId, id: &serde_json::Value| {
        let url = app.url(&format!("/v1/generations/{}/events", id.as_str().unwrap()));
        app.http.get(url).header("authorization", app.token(user)).send()
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let res = open(greedy, &mine["id"]).await.unwrap();
        assert_eq!(res.status(), 200);
        streams.push(res);
    }
    let refused = open(greedy, &mine["id"]).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let res = open(other, &theirs["id"]).await.unwrap();
    assert_eq!(res.status(), 200, "another user's stream is not limited by the first user's");
    drop(streams.pop());
    // The closed stream's slot comes back (the server sees the close at its next write).
    let reopened = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let res = open(greedy, &mine["id"]).await.unwrap();
            if res.status() == 200 {
                return res;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reopened.is_ok(), "a closed stream's slot never came back");
}
