//! The adapters over HTTP/2 with prior knowledge, as dev mode and the load
//! runs speak to the simulator: the same answers and bounds as over
//! HTTP/1.1, a reset stream is retryable, and requests in flight spread over
//! connections of at most `streams_per_connection` streams.

use crate::gemini::{IDLE, check_with, design, request};
use crate::maps::{Call, Captured, TIMEOUT, at, check_on, status};
use crate::support::*;
use futures::StreamExt;
use std::time::{Duration, Instant};
use terrace_domain::Address;
use terrace_google::DEFAULT_STREAMS_PER_CONNECTION;
use terrace_ports::{DesignModel, DesignStream, Geocoder, Imagery, Upstream, UpstreamOutcome};
use terrace_simulator::{Behaviour, Endpoint, RequestEnd, Stats};

/// A harness over HTTP/2 with the suite's short bounds and Google's stream limit.
async fn h2() -> Harness {
    harness_http2(IDLE_TIMEOUT, DEFAULT_STREAMS_PER_CONNECTION).await
}

macro_rules! design_faults {
    ($($name:ident: $behaviour:expr => $expect:expr;)+) => {$(
        #[tokio::test]
        async fn $name() {
            let (h, _) = check_with(h2().await, $behaviour, $expect).await;
            h.finish_http2().await;
        }
    )+};
}

design_faults! {
    a_design_streams_its_image: None => Expect::Ok;
    a_design_that_hangs_before_headers_times_out_idle: Some(Behaviour::HangBeforeHeaders) => IDLE;
    a_design_stalled_after_its_first_event_times_out_idle: Some(Behaviour::StallAfterFirstEvent) => IDLE;
    a_design_slower_than_the_silence_limit_times_out: Some(Behaviour::Latency { delay: Duration::from_secs(5) }) => IDLE;
    a_design_within_the_silence_limit_succeeds: Some(Behaviour::Latency { delay: Duration::from_millis(100) }) => Expect::Ok;
    a_design_429_is_retryable_with_the_retry_delay: Some(Behaviour::too_many_requests(Duration::from_millis(7500)))
        => Expect::Unavailable { retry_after: Some(Duration::from_millis(7500)) };
    a_design_500_is_retryable: Some(Behaviour::status(500)) => Expect::UNAVAILABLE;
    a_design_400_is_permanent: Some(Behaviour::status(400)) => Expect::Rejected;
    a_design_reset_is_retryable: Some(Behaviour::ConnectionReset) => Expect::UNAVAILABLE;
    a_design_with_malformed_json_is_permanent: Some(Behaviour::MalformedJson) => Expect::Rejected;
    a_design_error_event_is_classified_by_its_code: Some(Behaviour::ErrorEvent { status: 503 }) => Expect::UNAVAILABLE;
    a_design_blocked_by_its_finish_reason_is_content_blocked: Some(Behaviour::BlockedFinish { reason: "IMAGE_SAFETY".into() })
        => Expect::Blocked("IMAGE_SAFETY");
    a_design_without_an_image_just_ends: Some(Behaviour::NoImage) => Expect::NoImage;
}

macro_rules! maps_faults {
    ($($name:ident: $call:ident, $behaviour:expr => $expect:expr;)+) => {$(
        #[tokio::test]
        async fn $name() {
            check_on(h2().await, Call::$call, $behaviour, $expect).await.finish_http2().await;
        }
    )+};
}

maps_faults! {
    geocoding_answers: Geocode, None => Expect::Ok;
    metadata_answers: Metadata, None => Expect::Ok;
    street_view_answers: StreetView, None => Expect::Ok;
    satellite_answers: Satellite, None => Expect::Ok;
    geocoding_zero_results_is_not_found: Geocode, Some(Behaviour::zero_results()) => Expect::NotFound;
    geocoding_request_denied_is_permanent: Geocode, Some(status("REQUEST_DENIED")) => Expect::Rejected;
    geocoding_503_is_retryable: Geocode, Some(Behaviour::status(503)) => Expect::UNAVAILABLE;
    geocoding_that_hangs_times_out: Geocode, Some(Behaviour::HangBeforeHeaders) => TIMEOUT;
    geocoding_with_a_stalled_body_times_out: Geocode, Some(Behaviour::StallAfterFirstEvent) => TIMEOUT;
    geocoding_with_a_dripping_body_times_out: Geocode, Some(Behaviour::DripEvents { every: Duration::from_millis(20) }) => TIMEOUT;
    geocoding_reset_is_retryable: Geocode, Some(Behaviour::ConnectionReset) => Expect::UNAVAILABLE;
    street_view_404_is_no_imagery: StreetView, Some(Behaviour::zero_results()) => Expect::NoImagery;
    street_view_reset_is_retryable: StreetView, Some(Behaviour::ConnectionReset) => Expect::UNAVAILABLE;
}

#[tokio::test]
async fn a_design_hanging_past_the_silence_limit_resets_its_stream() {
    let (h, _) = check_with(h2().await, Some(Behaviour::HangBeforeHeaders), IDLE).await;
    let seen = h.sim.wait_for(Duration::from_secs(2), |s| s.gemini.abandoned == 1).await;
    assert!(seen, "the simulator never saw the request abandoned: {:?}", h.sim.stats());
    h.finish_http2().await;
}

#[tokio::test]
async fn a_reset_stream_leaves_the_connection_to_the_next_request() {
    let h = h2().await;
    h.sim.script(Endpoint::Gemini, Behaviour::ConnectionReset);
    h.sim.script(Endpoint::Geocode, Behaviour::ConnectionReset);
    let (h, _) = check_with(h, None, Expect::UNAVAILABLE).await;
    let out = design(&h).await;
    assert_eq!(out.result, Some(Ok(())), "{out:?}");
    assert_eq!(out.images.len(), 1);
    let address = Address::parse("1600 Amphitheatre Parkway").expect("valid");
    check_geocode(&h.client.geocode(&address).await, &Expect::UNAVAILABLE);
    check_geocode(&h.client.geocode(&address).await, &Expect::Ok);
    let stats = h.sim.stats();
    assert_eq!((stats.gemini.reset, stats.geocode.reset), (1, 1));
    // One connection to Gemini's lane and one to Maps', each kept.
    assert_eq!(stats.connections.http2, 2, "{stats:?}");
    h.finish_http2().await;
}

#[tokio::test]
async fn dropping_a_dripping_design_resets_its_stream_at_once() {
    let h = h2().await;
    h.sim.script(Endpoint::Gemini, Behaviour::DripEvents { every: Duration::from_millis(30) });
    let mut stream = h.client.generate(request()).await.expect("stream opens");
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("an event");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    let dropped = Instant::now();
    drop(stream);
    let seen = h.sim.wait_for(Duration::from_secs(2), |s| s.gemini.abandoned == 1).await;
    assert!(seen, "the simulator never saw the stream abandoned: {:?}", h.sim.stats());
    assert!(dropped.elapsed() < Duration::from_secs(1), "closing took {:?}", dropped.elapsed());
    assert_eq!(h.sim.requests()[0].end, Some(RequestEnd::Abandoned));
    assert_eq!(h.recorder.requests(), vec![(Upstream::Gemini, UpstreamOutcome::Ok)]);
    h.finish_http2().await;
}

#[tokio::test]
async fn a_stream_cut_by_the_server_going_away_is_retryable() {
    let h = h2().await;
    h.sim.script(Endpoint::Gemini, Behaviour::DripEvents { every: Duration::from_millis(20) });
    let mut stream = h.client.generate(request()).await.expect("stream opens");
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("an event");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    assert!(h.sim.shutdown().await);
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("the stream moves") {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended cleanly"),
        }
    };
    check_design(&Err(err), &Expect::UNAVAILABLE);
    assert_eq!(h.recorder.requests(), vec![(Upstream::Gemini, UpstreamOutcome::Unavailable)]);
}

/// Opens a design whose answer stalls after its first event, and holds it.
async fn held(h: &Harness) -> DesignStream {
    h.sim.script(Endpoint::Gemini, Behaviour::StallAfterFirstEvent);
    let run = h.client.generate(request());
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("headers came").expect("stream opens")
}

async fn wait(h: &Harness, what: &str, condition: impl FnMut(&Stats) -> bool) {
    let held = h.sim.wait_for(Duration::from_secs(3), condition).await;
    assert!(held, "{what}: {:?}", h.sim.stats());
}

#[tokio::test]
async fn held_designs_spread_over_connections_of_streams_per_connection() {
    // Streams stay in flight while held, long after their headers came.
    let h = harness_http2(Duration::from_secs(10), 2).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(held(&h).await);
    }
    wait(&h, "five streams in flight", |s| s.gemini.in_flight() == 5).await;
    // 2 + 2 + 1: three lanes, one connection each.
    assert_eq!(h.sim.stats().connections.http2, 3, "{:?}", h.sim.stats());

    // The first lane's two streams end: its places are free again, so the
    // next two designs go there rather than to the third lane and a fourth.
    streams.drain(..2).for_each(drop);
    wait(&h, "two streams abandoned", |s| s.gemini.abandoned == 2).await;
    for _ in 0..2 {
        streams.push(held(&h).await);
    }
    wait(&h, "five streams in flight again", |s| s.gemini.in_flight() == 5).await;
    assert_eq!(h.sim.stats().connections.http2, 3, "{:?}", h.sim.stats());
    drop(streams);
    wait(&h, "every stream abandoned", |s| s.gemini.abandoned == 7).await;
    h.finish_http2().await;
}

#[tokio::test]
async fn designs_past_googles_stream_limit_open_another_connection_instead_of_queueing() {
    let h = harness_http2(Duration::from_secs(10), DEFAULT_STREAMS_PER_CONNECTION).await;
    let started = Instant::now();
    let runs = (0..210).map(|_| design(&h));
    let outs = futures::future::join_all(runs).await;
    let ok = outs.iter().filter(|o| o.result == Some(Ok(())) && o.images.len() == 1).count();
    assert_eq!(ok, 210, "designs that completed in {:?}", started.elapsed());
    // 100 + 100 + 10: every design had a stream of its own at once.
    let stats = h.sim.stats();
    assert_eq!(stats.connections.http2, 3, "{stats:?}");
    assert_eq!(stats.gemini.completed, 210, "{stats:?}");
    h.finish_http2().await;
}

#[tokio::test]
async fn maps_calls_in_flight_spread_over_connections_too() {
    let h = harness_http2(Duration::from_secs(10), 2).await;
    h.sim.set_default(Endpoint::StaticMap, Behaviour::Latency { delay: Duration::from_millis(100) });
    let runs = (0..4).map(|_| h.client.satellite(at()));
    let results = futures::future::join_all(runs).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(h.sim.stats().connections.http2, 2, "{:?}", h.sim.stats());
    h.finish_http2().await;
}

#[tokio::test]
async fn nothing_logged_over_http2_carries_a_key() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = h2().await;
    h.sim.script(Endpoint::Geocode, status("REQUEST_DENIED"));
    h.sim.script(Endpoint::Gemini, Behaviour::ConnectionReset);
    let address = Address::parse("1600 Amphitheatre Parkway").expect("valid");
    let _ = h.client.geocode(&address).await;
    let _ = h.client.street_view(at(), 90).await;
    let _ = design(&h).await;
    let _ = design(&h).await;
    h.finish_http2().await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).expect("utf8");
    assert!(logs.contains("google request ended"), "nothing was logged: {logs}");
    assert_no_key(&logs);
}
