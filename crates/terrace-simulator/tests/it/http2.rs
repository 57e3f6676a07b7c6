//! HTTP/2 with prior knowledge beside HTTP/1.1 on the one port: answers,
//! resets of a stream, Google's stream limit, connection counts and shutdown.

use crate::*;
use terrace_simulator::{Behaviour, ConnectionStats, Endpoint, MAX_CONCURRENT_STREAMS, RequestEnd};
use tokio::io::AsyncWriteExt;

fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

fn geocode(client: &reqwest::Client, sim: &Simulator) -> reqwest::RequestBuilder {
    client
        .get(format!("{}/maps/api/geocode/json", sim.base_url()))
        .query(&[("address", "10 Downing Street"), ("key", sim.maps_key())])
}

#[tokio::test]
async fn http1_and_http2_with_prior_knowledge_share_the_port() {
    let sim = start().await;
    let over_h2 = geocode(&h2(), &sim).send().await.expect("answer");
    assert_eq!(over_h2.version(), reqwest::Version::HTTP_2);
    let a: serde_json::Value = over_h2.json().await.expect("JSON");
    let over_h1 = geocode(&http(), &sim).send().await.expect("answer");
    assert_eq!(over_h1.version(), reqwest::Version::HTTP_11);
    let b: serde_json::Value = over_h1.json().await.expect("JSON");
    assert_eq!(a["status"], "OK");
    assert_eq!(a, b);

    let body = h2()
        .post(gemini_url(&sim))
        .header("x-goog-api-key", sim.gemini_key())
        .body(gemini_body())
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    assert_eq!(sse_events(&body).len(), 2);
    assert!(
        sim.wait_for(Duration::from_secs(2), |s| s.geocode.completed == 2 && s.gemini.completed == 1).await
    );
    let c = sim.stats().connections;
    assert_eq!((c.accepted, c.http1, c.http2), (3, 1, 2), "{c:?}");
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn a_scripted_reset_on_http2_resets_the_stream_not_the_connection() {
    let sim = start().await;
    sim.script(Endpoint::Geocode, Behaviour::ConnectionReset);
    sim.script(Endpoint::Gemini, Behaviour::ConnectionReset);
    let client = h2();
    let r = geocode(&client, &sim).send().await;
    assert!(r.is_err(), "{r:?}");
    let r = client
        .post(gemini_url(&sim))
        .header("x-goog-api-key", sim.gemini_key())
        .body(gemini_body())
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    let after = geocode(&client, &sim).send().await.expect("the connection still answers");
    assert_eq!(after.status(), 200);
    let stats = sim.stats();
    assert_eq!((stats.geocode.reset, stats.gemini.reset), (1, 1));
    assert_eq!(stats.connections.http2, 1, "{stats:?}");
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn an_http2_connection_runs_at_most_googles_stream_limit_at_once() {
    let sim = start().await;
    let limit = MAX_CONCURRENT_STREAMS as u64;
    sim.set_default(Endpoint::Geocode, Behaviour::HangBeforeHeaders);
    let client = h2();
    let mut hanging = tokio::task::JoinSet::new();
    for _ in 0..limit {
        hanging.spawn(geocode(&client, &sim).send());
    }
    let all = sim.wait_for(Duration::from_secs(5), |s| s.geocode.requests == limit).await;
    assert!(all, "{:?}", sim.stats());
    // One more waits inside the client for a free stream…
    sim.set_default(Endpoint::Geocode, Behaviour::Ok);
    let next = tokio::spawn(geocode(&client, &sim).send());
    let early = sim.wait_for(Duration::from_millis(300), |s| s.geocode.requests > limit).await;
    assert!(!early, "a stream past the limit was served: {:?}", sim.stats());
    // …and runs once the hanging ones go away.
    hanging.shutdown().await;
    let answer = tokio::time::timeout(Duration::from_secs(5), next).await.expect("ended").expect("joined");
    assert_eq!(answer.expect("an answer").status(), 200);
    let stats = sim.stats();
    assert_eq!(stats.geocode.abandoned, limit, "{stats:?}");
    assert_eq!(stats.connections.http2, 1, "{stats:?}");
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn connections_are_counted_while_open_and_a_partial_preface_is_no_protocol() {
    let sim = start().await;
    let mut raw = tokio::net::TcpStream::connect(sim.addr()).await.expect("connects");
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.connections.open == 1).await, "{:?}", sim.stats());
    raw.write_all(b"PRI * HTTP/2.0\r\n").await.expect("writes");
    drop(raw);
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.connections.open == 0).await, "{:?}", sim.stats());
    let c = sim.stats().connections;
    assert_eq!(c, ConnectionStats { accepted: 1, http1: 0, http2: 0, open: 0 });
    // A connection that sends nothing ends at shutdown, within its bound.
    let _silent = tokio::net::TcpStream::connect(sim.addr()).await.expect("connects");
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.connections.open == 1).await, "{:?}", sim.stats());
    sim.reset();
    assert_eq!(sim.stats().connections, ConnectionStats { open: 1, ..Default::default() });
    assert!(sim.shutdown().await);
    assert_eq!(sim.stats().connections.open, 0);
}

#[tokio::test]
async fn shutdown_ends_hanging_and_dripping_http2_streams_within_its_bound() {
    let sim = start().await;
    sim.script(Endpoint::Geocode, Behaviour::HangBeforeHeaders);
    sim.script(Endpoint::Gemini, Behaviour::DripEvents { every: Duration::from_millis(20) });
    let client = h2();
    let hang = tokio::spawn(geocode(&client, &sim).send());
    let resp = client
        .post(gemini_url(&sim))
        .header("x-goog-api-key", sim.gemini_key())
        .body(gemini_body())
        .send()
        .await
        .expect("headers");
    let mut body = resp.bytes_stream();
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.geocode.requests == 1).await);
    let first = tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut body)).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "{first:?}");

    let started = std::time::Instant::now();
    assert!(sim.shutdown().await, "connection tasks outlived the shutdown bound");
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    assert!(sim.requests().iter().all(|r| r.end == Some(RequestEnd::Shutdown)), "{:?}", sim.requests());
    let answer = tokio::time::timeout(Duration::from_secs(2), hang).await.expect("ended").expect("joined");
    assert!(answer.is_err(), "a hanging request got an answer: {answer:?}");
    let cut = loop {
        match tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut body)).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) => break true,
            Ok(None) => break false,
            Err(_) => panic!("the stream neither ended nor failed"),
        }
    };
    assert!(cut, "the stream ended cleanly instead of being cut");
}
