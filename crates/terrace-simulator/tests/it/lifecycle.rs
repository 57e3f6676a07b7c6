//! Bounds: shutdown ends every connection, abandoned streams are seen, many
//! streams at once are served, and the standalone process starts and stops.

use crate::*;
use futures::StreamExt;
use std::time::Instant;
use terrace_simulator::{Behaviour, Endpoint, RequestEnd};
use tokio::io::AsyncBufReadExt;

#[tokio::test]
async fn shutdown_ends_hanging_stalled_and_dripping_connections_within_its_bound() {
    let sim = start().await;
    sim.script(Endpoint::Geocode, Behaviour::HangBeforeHeaders);
    sim.script(Endpoint::Gemini, Behaviour::StallAfterFirstEvent);
    sim.script(Endpoint::Gemini, Behaviour::DripEvents { every: Duration::from_millis(20) });
    let client = http();
    let hang = tokio::spawn(
        client
            .get(format!("{}/maps/api/geocode/json", sim.base_url()))
            .query(&[("address", "10 Downing Street"), ("key", sim.maps_key())])
            .send(),
    );
    let mut streams = Vec::new();
    for _ in 0..2 {
        let resp = client
            .post(gemini_url(&sim))
            .header("x-goog-api-key", sim.gemini_key())
            .body(gemini_body())
            .send()
            .await
            .expect("headers");
        streams.push(tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut chunks = 0;
            while let Some(chunk) = body.next().await {
                if chunk.is_err() {
                    return (chunks, true);
                }
                chunks += 1;
            }
            (chunks, false)
        }));
    }
    assert!(
        sim.wait_for(Duration::from_secs(2), |s| s.geocode.requests == 1 && s.gemini.requests == 2).await
    );

    let before = sim.stats();
    assert_eq!(before.geocode.in_flight() + before.gemini.in_flight(), 3);
    let started = Instant::now();
    assert!(sim.shutdown().await, "connection tasks outlived the shutdown bound");
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    assert!(sim.requests().iter().all(|r| r.end == Some(RequestEnd::Shutdown)), "{:?}", sim.requests());
    // Nothing listens any more.
    assert!(http().get(format!("{}/_sim/stats", sim.base_url())).send().await.is_err());

    let answer = tokio::time::timeout(Duration::from_secs(2), hang).await.expect("ended").expect("joined");
    assert!(answer.is_err(), "a hanging request got an answer: {answer:?}");
    for s in streams {
        let (chunks, errored) =
            tokio::time::timeout(Duration::from_secs(2), s).await.expect("ended").expect("joined");
        assert!(chunks >= 1, "no event arrived before shutdown");
        assert!(errored, "the stream ended cleanly instead of being cut");
    }
}

#[tokio::test]
async fn a_client_that_drops_a_stalled_stream_is_recorded_as_abandoned() {
    let sim = start().await;
    sim.script(Endpoint::Gemini, Behaviour::StallAfterFirstEvent);
    let resp = http()
        .post(gemini_url(&sim))
        .header("x-goog-api-key", sim.gemini_key())
        .body(gemini_body())
        .send()
        .await
        .expect("headers");
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(2), body.next()).await.expect("an event");
    assert!(matches!(first, Some(Ok(_))));
    assert_eq!(sim.stats().gemini.in_flight(), 1);
    drop(body);
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.gemini.abandoned == 1).await, "{:?}", sim.stats());
    assert_eq!(sim.requests()[0].end, Some(RequestEnd::Abandoned));
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn hundreds_of_concurrent_streams_are_served() {
    let sim = start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let started = Instant::now();
    let url = gemini_url(&sim);
    let runs = (0..300).map(|_| {
        let (client, url, key) = (client.clone(), url.clone(), sim.gemini_key().to_owned());
        async move {
            let resp = client.post(url).header("x-goog-api-key", key).body(gemini_body()).send().await?;
            resp.text().await
        }
    });
    let bodies = futures::future::join_all(runs).await;
    let elapsed = started.elapsed();
    let ok = bodies.iter().filter(|b| b.as_ref().is_ok_and(|t| sse_events(t).len() == 2)).count();
    assert_eq!(ok, 300, "streams that completed");
    assert!(sim.wait_for(Duration::from_secs(2), |s| s.gemini.completed == 300).await, "{:?}", sim.stats());
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn the_standalone_process_prints_its_address_and_stops_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_terrace-simulator"))
        .env("TERRACE_SIM_PORT", "0")
        .env_remove("GOOGLE_MAPS_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawns");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("printed in time")
        .expect("reads")
        .expect("a line");
    let addr = line.strip_prefix("listening on ").expect("the address line");
    let stats = http().get(format!("http://{addr}/_sim/stats")).send().await.expect("answers");
    assert_eq!(stats.status(), 200);
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits in time")
        .expect("waits");
    assert!(status.success(), "{status:?}");
}
