//! The Gemini adapter against the simulator: one test per fault, each checking
//! the mapped error, the silence bound, the metrics and that no key leaks.

use crate::support::*;
use bytes::Bytes;
use futures::StreamExt;
use std::time::{Duration, Instant};
use terrace_domain::{DesignError, TimeoutKind};
use terrace_ports::{DesignEvent, DesignModel, DesignRequest, Image, Upstream, UpstreamOutcome};
use terrace_simulator::{Behaviour, Endpoint, RequestEnd};

pub(crate) fn request() -> DesignRequest {
    DesignRequest {
        prompt: "Redesign this front yard as a japanese zen garden.".into(),
        source: Image {
            bytes: Bytes::from_static(b"\x89PNG source image"),
            content_type: "image/png".into(),
        },
    }
}

/// What one design call produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub texts: usize,
    pub images: Vec<Image>,
    pub progress: usize,
    pub result: Option<Result<(), DesignError>>,
}

/// Runs one design to its end (or first error), bounded so a broken adapter
/// fails the test instead of hanging it.
pub(crate) async fn design(h: &Harness) -> Outcome {
    let run = async {
        let mut out = Outcome::default();
        let mut stream = match h.client.generate(request()).await {
            Ok(s) => s,
            Err(e) => {
                out.result = Some(Err(e));
                return out;
            }
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(DesignEvent::Text(_)) => out.texts += 1,
                Ok(DesignEvent::Image(i)) => out.images.push(i),
                Ok(DesignEvent::Progress { .. }) => out.progress += 1,
                Err(e) => {
                    out.result = Some(Err(e));
                    // The stream ends after an error.
                    assert!(stream.next().await.is_none(), "the stream went on after an error");
                    return out;
                }
            }
        }
        out.result = Some(Ok(()));
        out
    };
    tokio::time::timeout(Duration::from_secs(8), run).await.expect("the design call ended")
}

pub(crate) async fn check_with(
    h: Harness,
    behaviour: Option<Behaviour>,
    expect: Expect,
) -> (Harness, Outcome) {
    if let Some(b) = behaviour {
        h.sim.script(Endpoint::Gemini, b);
    }
    let started = Instant::now();
    let out = design(&h).await;
    let elapsed = started.elapsed();
    let result = out.result.clone().expect("ended");
    check_design(&result, &expect);
    match expect {
        Expect::Ok => assert_eq!(out.images.len(), 1, "{out:?}"),
        Expect::NoImage => assert!(out.images.is_empty(), "{out:?}"),
        _ => {}
    }
    assert!(elapsed <= expect.bound(false), "took {elapsed:?} for {expect:?}");
    if let Expect::Timeout(TimeoutKind::Idle) = expect {
        assert!(elapsed + Duration::from_millis(20) >= IDLE_TIMEOUT, "timed out early: {elapsed:?}");
    }
    if let Err(e) = &result {
        assert_no_key(&format!("{e:?} {e}"));
    }
    let outcome = match expect {
        Expect::NoImage => UpstreamOutcome::Rejected,
        ref other => other.outcome(),
    };
    assert_eq!(h.recorder.requests(), vec![(Upstream::Gemini, outcome)]);
    let timeouts: Vec<_> = match expect {
        Expect::Timeout(kind) => vec![(Upstream::Gemini, kind)],
        _ => vec![],
    };
    assert_eq!(h.recorder.timeouts(), timeouts);
    (h, out)
}

async fn check(behaviour: Option<Behaviour>, expect: Expect) -> (Harness, Outcome) {
    check_with(harness().await, behaviour, expect).await
}

macro_rules! faults {
    ($($name:ident: $behaviour:expr => $expect:expr;)+) => {$(
        #[tokio::test]
        async fn $name() {
            let (h, _) = check(Some($behaviour), $expect).await;
            h.finish().await;
        }
    )+};
}

pub(crate) const IDLE: Expect = Expect::Timeout(TimeoutKind::Idle);

faults! {
    hang_before_headers_times_out_idle: Behaviour::HangBeforeHeaders => IDLE;
    stall_after_the_first_event_times_out_idle: Behaviour::StallAfterFirstEvent => IDLE;
    http_429_is_retryable_with_the_retry_delay: Behaviour::too_many_requests(Duration::from_millis(7500))
        => Expect::Unavailable { retry_after: Some(Duration::from_millis(7500)) };
    http_500_is_retryable: Behaviour::status(500) => Expect::UNAVAILABLE;
    http_503_is_retryable: Behaviour::status(503) => Expect::UNAVAILABLE;
    http_504_is_retryable: Behaviour::status(504) => Expect::UNAVAILABLE;
    http_400_is_permanent: Behaviour::status(400) => Expect::Rejected;
    http_403_is_permanent: Behaviour::status(403) => Expect::Rejected;
    http_404_is_permanent: Behaviour::status(404) => Expect::Rejected;
    reset_is_retryable: Behaviour::ConnectionReset => Expect::UNAVAILABLE;
    malformed_json_is_permanent: Behaviour::MalformedJson => Expect::Rejected;
    blocked_prompt_is_content_blocked: Behaviour::BlockedPrompt { reason: "PROHIBITED_CONTENT".into() }
        => Expect::Blocked("PROHIBITED_CONTENT");
    image_safety_finish_is_content_blocked: Behaviour::BlockedFinish { reason: "IMAGE_SAFETY".into() }
        => Expect::Blocked("IMAGE_SAFETY");
    recitation_finish_is_content_blocked: Behaviour::BlockedFinish { reason: "RECITATION".into() }
        => Expect::Blocked("RECITATION");
    an_error_event_is_classified_by_its_code: Behaviour::ErrorEvent { status: 503 } => Expect::UNAVAILABLE;
    a_permanent_error_event_is_rejected: Behaviour::ErrorEvent { status: 400 } => Expect::Rejected;
    a_stream_without_an_image_just_ends: Behaviour::NoImage => Expect::NoImage;
    latency_within_the_silence_limit_succeeds: Behaviour::Latency { delay: Duration::from_millis(100) } => Expect::Ok;
    latency_past_the_silence_limit_times_out: Behaviour::Latency { delay: Duration::from_secs(5) } => IDLE;
}

#[tokio::test]
async fn a_normal_design_streams_text_then_the_png_with_crlf_framing() {
    let (h, out) = check(None, Expect::Ok).await;
    assert_eq!(out.texts, 1);
    assert_eq!(out.images[0].content_type, "image/png");
    assert_eq!(out.images[0].bytes, h.sim.image());
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].key_ok);
    assert_eq!(seen[0].prompt.as_deref(), Some(request().prompt.as_str()));
    assert_eq!(seen[0].inline_data, vec![("image/png".to_owned(), request().source.bytes.len())]);
    assert!(h.sim.wait_for(Duration::from_secs(2), |s| s.gemini.completed == 1).await);
    h.finish().await;
}

#[tokio::test]
async fn lf_framing_reads_the_same() {
    let (h, out) = check_with(harness_with(sim_config(false)).await, None, Expect::Ok).await;
    assert_eq!(out.texts, 1);
    assert_eq!(out.images[0].bytes, h.sim.image());
    h.finish().await;
}

#[tokio::test]
async fn a_large_image_that_keeps_arriving_is_progress_not_silence() {
    // 1.5 MB arriving 48 KiB every 40 ms takes about 1.3 s: far past the
    // 300 ms silence limit in total, never silent for that long.
    let trickle =
        Behaviour::TrickleImage { size: 1_500_000, chunk: 48 * 1024, every: Duration::from_millis(40) };
    let h = harness().await;
    h.sim.script(Endpoint::Gemini, trickle);
    let started = Instant::now();
    let out = design(&h).await;
    assert!(started.elapsed() > IDLE_TIMEOUT, "the trickle was too fast to prove anything");
    assert_eq!(out.result, Some(Ok(())), "{out:?}");
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.images[0].bytes, h.sim.image());
    assert!(out.progress >= 5, "expected progress events while the image arrived: {out:?}");
    assert_eq!(h.recorder.requests(), vec![(Upstream::Gemini, UpstreamOutcome::Ok)]);
    h.finish().await;
}

#[tokio::test]
async fn dripping_events_flow_until_dropped_and_dropping_closes_the_connection() {
    let h = harness().await;
    h.sim.script(Endpoint::Gemini, Behaviour::DripEvents { every: Duration::from_millis(30) });
    let mut stream = h.client.generate(request()).await.expect("stream opens");
    let mut texts = 0;
    // Drips keep the stream alive well past the silence limit.
    let started = Instant::now();
    while started.elapsed() < IDLE_TIMEOUT * 2 {
        let item = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("an event");
        match item {
            Some(Ok(DesignEvent::Text(_))) => texts += 1,
            Some(Ok(DesignEvent::Progress { .. })) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(texts >= 5, "only {texts} drips");
    let dropped = Instant::now();
    drop(stream);
    let seen = h.sim.wait_for(Duration::from_secs(2), |s| s.gemini.abandoned == 1).await;
    assert!(seen, "the simulator never saw the stream abandoned: {:?}", h.sim.stats());
    assert!(dropped.elapsed() < Duration::from_secs(1), "closing took {:?}", dropped.elapsed());
    assert_eq!(h.sim.requests()[0].end, Some(RequestEnd::Abandoned));
    assert_eq!(h.recorder.requests(), vec![(Upstream::Gemini, UpstreamOutcome::Ok)]);
    h.finish().await;
}

#[tokio::test]
async fn a_stalled_stream_is_abandoned_when_the_silence_limit_passes() {
    let (h, out) = check(Some(Behaviour::StallAfterFirstEvent), IDLE).await;
    assert_eq!(out.texts, 1);
    let seen = h.sim.wait_for(Duration::from_secs(2), |s| s.gemini.abandoned == 1).await;
    assert!(seen, "the connection stayed open after the timeout: {:?}", h.sim.stats());
    h.finish().await;
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused_and_never_printed() {
    let sim = terrace_simulator::Simulator::start(sim_config(true)).await.expect("starts");
    let base = sim.base_url();
    let recorder = std::sync::Arc::new(Recorder::default());
    let client =
        terrace_google::GoogleClient::new(config(&base, &base, MAPS_KEY, "wrong-SECRET-key"), recorder)
            .expect("builds");
    let r = client.generate(request()).await.map(|_| ());
    check_design(&r, &Expect::Rejected);
    let printed = format!("{r:?} {}", r.as_ref().unwrap_err());
    assert!(!printed.contains("wrong-SECRET-key"), "{printed}");
    assert_eq!(sim.stats().gemini.key_rejected, 1);
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // Bound but not listening: refused, and no other test can take the port.
    let (_refusing, port) = crate::support::refusing_port();
    let base = format!("http://127.0.0.1:{port}");
    let recorder = std::sync::Arc::new(Recorder::default());
    let client =
        terrace_google::GoogleClient::new(config(&base, &base, MAPS_KEY, GEMINI_KEY), recorder.clone())
            .expect("ok");
    let r = client.generate(request()).await.map(|_| ());
    check_design(&r, &Expect::UNAVAILABLE);
    assert_eq!(recorder.requests(), vec![(Upstream::Gemini, UpstreamOutcome::Unavailable)]);
}

#[tokio::test]
async fn a_connect_that_never_completes_times_out_as_connect() {
    // A listener whose accept queue is full: the kernel stops answering SYNs,
    // so a new connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("binds");
    let listener = socket.listen(1).expect("listens");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    // Make the connect timeout the tightest bound so it is the one that fires.
    let base = format!("http://{addr}");
    let mut cfg = config(&base, &base, MAPS_KEY, GEMINI_KEY);
    cfg.llm_idle_timeout = Duration::from_secs(3);
    let recorder = std::sync::Arc::new(Recorder::default());
    let client = terrace_google::GoogleClient::new(cfg, recorder.clone()).expect("ok");
    let started = Instant::now();
    let r = client.generate(request()).await.map(|_| ());
    let elapsed = started.elapsed();
    check_design(&r, &Expect::Timeout(TimeoutKind::Connect));
    assert!(elapsed <= CONNECT_TIMEOUT + MARGIN, "took {elapsed:?}");
    assert_eq!(recorder.timeouts(), vec![(Upstream::Gemini, TimeoutKind::Connect)]);
    drop(listener);
}

#[tokio::test]
async fn a_separator_split_across_reads_still_frames_the_event() {
    // The image event is exactly `size` bytes and ends with "\r\n\r\n"; with
    // these sizes the last read is a lone "\n" after a "\r\n\r".
    let h = harness().await;
    let split = Behaviour::TrickleImage { size: 100_001, chunk: 50_000, every: Duration::from_millis(60) };
    h.sim.script(Endpoint::Gemini, split);
    let out = design(&h).await;
    assert_eq!(out.result, Some(Ok(())), "{out:?}");
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.images[0].bytes, h.sim.image());
    h.finish().await;
}

#[tokio::test]
async fn a_stream_cut_midway_is_retryable() {
    let h = harness().await;
    h.sim.script(Endpoint::Gemini, Behaviour::DripEvents { every: Duration::from_millis(20) });
    let mut stream = h.client.generate(request()).await.expect("stream opens");
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("an event");
    assert!(matches!(first, Some(Ok(DesignEvent::Text(_)))), "{first:?}");
    // The simulator going away cuts the chunked body without its end.
    assert!(h.sim.shutdown().await);
    let started = Instant::now();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("the stream moves") {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended cleanly"),
        }
    };
    check_design(&Err(err), &Expect::UNAVAILABLE);
    assert!(started.elapsed() <= IDLE_TIMEOUT + MARGIN);
    assert_eq!(h.recorder.requests(), vec![(Upstream::Gemini, UpstreamOutcome::Unavailable)]);
}

#[tokio::test]
async fn a_multi_megabyte_event_is_read_in_linear_time() {
    // 8 MB in 16 KiB pieces: an SSE parser that re-reads its incomplete line
    // on every piece would take minutes here.
    let h = harness_idle(sim_config(true), Duration::from_secs(2)).await;
    let big = Behaviour::TrickleImage { size: 8_000_000, chunk: 16 * 1024, every: Duration::ZERO };
    h.sim.script(Endpoint::Gemini, big);
    let started = Instant::now();
    let out = design(&h).await;
    assert_eq!(out.result, Some(Ok(())), "{out:?}");
    assert_eq!(out.images.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    h.finish().await;
}
