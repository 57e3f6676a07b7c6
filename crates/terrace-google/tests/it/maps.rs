//! The Maps adapters against the simulator: one test per fault, each checking
//! the mapped error, the wait's bound, the metrics and that no key leaks.

use crate::support::*;
use std::time::{Duration, Instant};
use terrace_domain::{Address, LatLng, TimeoutKind};
use terrace_ports::{Geocoder, Imagery, Upstream};
use terrace_simulator::{Behaviour, Endpoint, RequestEnd};

#[derive(Debug, Clone, Copy)]
pub(crate) enum Call {
    Geocode,
    Metadata,
    StreetView,
    Satellite,
}

impl Call {
    fn endpoint(self) -> Endpoint {
        match self {
            Call::Geocode => Endpoint::Geocode,
            Call::Metadata => Endpoint::StreetViewMetadata,
            Call::StreetView => Endpoint::StreetView,
            Call::Satellite => Endpoint::StaticMap,
        }
    }

    fn upstream(self) -> Upstream {
        match self {
            Call::Geocode => Upstream::Geocode,
            Call::Metadata | Call::StreetView => Upstream::StreetView,
            Call::Satellite => Upstream::StaticMap,
        }
    }
}

pub(crate) fn at() -> LatLng {
    LatLng::new(37.422, -122.0841).expect("valid")
}

/// Makes one call with `behaviour` scripted and checks everything about it.
/// Returns the harness for further checks.
async fn check(call: Call, behaviour: Option<Behaviour>, expect: Expect) -> Harness {
    check_on(harness().await, call, behaviour, expect).await
}

/// [`check`] on a given harness.
pub(crate) async fn check_on(
    h: Harness,
    call: Call,
    behaviour: Option<Behaviour>,
    expect: Expect,
) -> Harness {
    if let Some(b) = behaviour {
        h.sim.script(call.endpoint(), b);
    }
    let started = Instant::now();
    let printed = match call {
        Call::Geocode => {
            let address = Address::parse("1600 Amphitheatre Parkway, Mountain View").expect("valid");
            let r = h.client.geocode(&address).await;
            check_geocode(&r, &expect);
            format!("{r:?} {}", r.as_ref().err().map(ToString::to_string).unwrap_or_default())
        }
        Call::Metadata => {
            let r = h.client.street_view_metadata(at()).await;
            match &expect {
                Expect::Ok => assert!(matches!(r, Ok(Some(_))), "expected a panorama, got {r:?}"),
                Expect::NoPanorama => assert!(matches!(r, Ok(None)), "expected no panorama, got {r:?}"),
                _ => check_imagery(&r, &expect),
            }
            format!("{r:?} {}", r.as_ref().err().map(ToString::to_string).unwrap_or_default())
        }
        Call::StreetView | Call::Satellite => {
            let r = match call {
                Call::StreetView => h.client.street_view(at(), 123).await,
                _ => h.client.satellite(at()).await,
            };
            check_imagery(&r, &expect);
            format!("{r:?} {}", r.as_ref().err().map(ToString::to_string).unwrap_or_default())
        }
    };
    let elapsed = started.elapsed();
    assert!(elapsed <= expect.bound(true), "{call:?} took {elapsed:?} for {expect:?}");
    if let Expect::Timeout(_) = expect {
        assert!(elapsed + Duration::from_millis(20) >= MAPS_TIMEOUT, "timed out early: {elapsed:?}");
    }
    assert_no_key(&printed);
    assert_eq!(h.recorder.requests(), vec![(call.upstream(), expect.outcome())]);
    let timeouts: Vec<_> = match expect {
        Expect::Timeout(kind) => vec![(call.upstream(), kind)],
        _ => vec![],
    };
    assert_eq!(h.recorder.timeouts(), timeouts);
    h
}

macro_rules! faults {
    ($($name:ident: $call:ident, $behaviour:expr => $expect:expr;)+) => {$(
        #[tokio::test]
        async fn $name() {
            check(Call::$call, Some($behaviour), $expect).await.finish().await;
        }
    )+};
}

pub(crate) fn status(s: &str) -> Behaviour {
    Behaviour::MapsStatus { status: s.into() }
}

pub(crate) const TIMEOUT: Expect = Expect::Timeout(TimeoutKind::Request);

faults! {
    geocode_zero_results_is_not_found: Geocode, Behaviour::zero_results() => Expect::NotFound;
    geocode_over_query_limit_is_retryable: Geocode, Behaviour::over_query_limit() => Expect::UNAVAILABLE;
    geocode_unknown_error_is_retryable: Geocode, status("UNKNOWN_ERROR") => Expect::UNAVAILABLE;
    geocode_request_denied_is_permanent: Geocode, status("REQUEST_DENIED") => Expect::Rejected;
    geocode_invalid_request_is_permanent: Geocode, status("INVALID_REQUEST") => Expect::Rejected;
    geocode_over_daily_limit_is_permanent: Geocode, status("OVER_DAILY_LIMIT") => Expect::Rejected;
    geocode_http_500_is_retryable: Geocode, Behaviour::status(500) => Expect::UNAVAILABLE;
    geocode_http_503_is_retryable: Geocode, Behaviour::status(503) => Expect::UNAVAILABLE;
    geocode_http_429_is_retryable: Geocode, Behaviour::status(429) => Expect::UNAVAILABLE;
    geocode_http_400_is_permanent: Geocode, Behaviour::status(400) => Expect::Rejected;
    geocode_hang_times_out: Geocode, Behaviour::HangBeforeHeaders => TIMEOUT;
    geocode_stalled_body_times_out: Geocode, Behaviour::StallAfterFirstEvent => TIMEOUT;
    geocode_dripping_body_times_out: Geocode, Behaviour::DripEvents { every: Duration::from_millis(20) } => TIMEOUT;
    geocode_slower_than_the_deadline_times_out: Geocode, Behaviour::Latency { delay: Duration::from_secs(5) } => TIMEOUT;
    geocode_within_the_deadline_succeeds: Geocode, Behaviour::Latency { delay: Duration::from_millis(50) } => Expect::Ok;
    geocode_reset_is_retryable: Geocode, Behaviour::ConnectionReset => Expect::UNAVAILABLE;
    geocode_malformed_json_is_permanent: Geocode, Behaviour::MalformedJson => Expect::Rejected;

    metadata_zero_results_is_no_panorama: Metadata, Behaviour::zero_results() => Expect::NoPanorama;
    metadata_not_found_is_no_panorama: Metadata, status("NOT_FOUND") => Expect::NoPanorama;
    metadata_over_query_limit_is_retryable: Metadata, Behaviour::over_query_limit() => Expect::UNAVAILABLE;
    metadata_request_denied_is_permanent: Metadata, status("REQUEST_DENIED") => Expect::Rejected;
    metadata_http_503_is_retryable: Metadata, Behaviour::status(503) => Expect::UNAVAILABLE;
    metadata_hang_times_out: Metadata, Behaviour::HangBeforeHeaders => TIMEOUT;
    metadata_malformed_json_is_permanent: Metadata, Behaviour::MalformedJson => Expect::Rejected;

    street_view_404_is_no_imagery: StreetView, Behaviour::zero_results() => Expect::NoImagery;
    street_view_403_is_permanent: StreetView, Behaviour::status(403) => Expect::Rejected;
    street_view_500_is_retryable: StreetView, Behaviour::status(500) => Expect::UNAVAILABLE;
    street_view_hang_times_out: StreetView, Behaviour::HangBeforeHeaders => TIMEOUT;
    street_view_stalled_image_times_out: StreetView, Behaviour::StallAfterFirstEvent => TIMEOUT;
    street_view_reset_is_retryable: StreetView, Behaviour::ConnectionReset => Expect::UNAVAILABLE;
    street_view_html_instead_of_an_image_is_permanent: StreetView, Behaviour::MalformedJson => Expect::Rejected;

    satellite_404_is_no_imagery: Satellite, Behaviour::zero_results() => Expect::NoImagery;
    satellite_503_is_retryable: Satellite, Behaviour::status(503) => Expect::UNAVAILABLE;
    satellite_hang_times_out: Satellite, Behaviour::HangBeforeHeaders => TIMEOUT;
    satellite_dripping_image_times_out: Satellite, Behaviour::DripEvents { every: Duration::from_millis(20) } => TIMEOUT;
}

#[tokio::test]
async fn geocoding_finds_the_same_place_for_the_same_address_and_sends_the_key() {
    let h = check(Call::Geocode, None, Expect::Ok).await;
    let address = Address::parse("1600 Amphitheatre Parkway, Mountain View").expect("valid");
    let a = h.client.geocode(&address).await.expect("geocodes");
    let b = h.client.geocode(&address).await.expect("geocodes");
    assert_eq!(a, b);
    assert_eq!(a.formatted_address, "1600 Amphitheatre Parkway, Mountain View, USA");
    let other =
        h.client.geocode(&Address::parse("1 Infinite Loop, Cupertino").expect("valid")).await.expect("ok");
    assert_ne!(other.location, a.location);
    // The simulator marks a response complete just after its last byte left.
    assert!(h.sim.wait_for(Duration::from_secs(2), |s| s.geocode.completed == 4).await);
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| r.key_ok && r.end == Some(RequestEnd::Completed)));
    assert!(seen[0].query.contains(&("address".into(), "1600 Amphitheatre Parkway, Mountain View".into())));
    h.finish().await;
}

#[tokio::test]
async fn metadata_then_street_view_sends_google_parameters_and_returns_the_png() {
    let h = check(Call::Metadata, None, Expect::Ok).await;
    let pano = h.client.street_view_metadata(at()).await.expect("ok").expect("a panorama");
    assert!(pano.pano_id.starts_with("SIMPANO"));
    assert!((pano.location.lat - at().lat).abs() < 0.001);
    let image = h.client.street_view(pano.location, 123).await.expect("image");
    assert_eq!(image.content_type, "image/png");
    assert_eq!(image.bytes, h.sim.image());
    let seen = h.sim.requests();
    let q = |i: usize, k: &str| seen[i].query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(q(0, "radius").as_deref(), Some("50"));
    assert_eq!(q(0, "location").as_deref(), Some("37.4220000,-122.0841000"));
    assert_eq!(q(2, "heading").as_deref(), Some("123"));
    assert_eq!(q(2, "size").as_deref(), Some("640x640"));
    assert_eq!(q(2, "fov").as_deref(), Some("90"));
    assert_eq!(q(2, "pitch").as_deref(), Some("0"));
    assert_eq!(q(2, "return_error_code").as_deref(), Some("true"));
    h.finish().await;
}

#[tokio::test]
async fn satellite_sends_google_parameters_and_returns_the_png() {
    let h = check(Call::Satellite, None, Expect::Ok).await;
    let seen = h.sim.requests();
    let q = |k: &str| seen[0].query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(q("maptype").as_deref(), Some("satellite"));
    assert_eq!(q("zoom").as_deref(), Some("20"));
    assert_eq!(q("scale").as_deref(), Some("2"));
    assert_eq!(q("size").as_deref(), Some("640x640"));
    assert_eq!(q("center").as_deref(), Some("37.4220000,-122.0841000"));
    let image = h.client.satellite(at()).await.expect("image");
    assert!(image.bytes.starts_with(b"\x89PNG"));
    h.finish().await;
}

#[tokio::test]
async fn a_wrong_maps_key_is_refused_like_google_does_and_never_printed() {
    let sim = terrace_simulator::Simulator::start(sim_config(true)).await.expect("starts");
    let recorder = std::sync::Arc::new(Recorder::default());
    let base = sim.base_url();
    let client =
        terrace_google::GoogleClient::new(config(&base, &base, "wrong-SECRET-key", GEMINI_KEY), recorder)
            .expect("builds");
    let r = client.geocode(&Address::parse("1600 Amphitheatre Parkway").expect("valid")).await;
    check_geocode(&r, &Expect::Rejected);
    let printed = format!("{r:?} {}", r.as_ref().unwrap_err());
    assert!(!printed.contains("wrong-SECRET-key"), "{printed}");
    let r = client.street_view(at(), 0).await;
    check_imagery(&r, &Expect::Rejected);
    let stats = sim.stats();
    assert_eq!(stats.geocode.key_rejected, 1);
    assert_eq!(stats.street_view.key_rejected, 1);
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn a_refused_connection_is_retryable_and_prompt() {
    // Bound but not listening: refused, and no other test can take the port.
    let (_refusing, port) = crate::support::refusing_port();
    let base = format!("http://127.0.0.1:{port}");
    let recorder = std::sync::Arc::new(Recorder::default());
    let client =
        terrace_google::GoogleClient::new(config(&base, &base, MAPS_KEY, GEMINI_KEY), recorder.clone())
            .expect("ok");
    let started = Instant::now();
    let r = client.satellite(at()).await;
    check_imagery(&r, &Expect::UNAVAILABLE);
    assert!(started.elapsed() <= MAPS_TIMEOUT + MARGIN);
    assert_no_key(&format!("{r:?} {}", r.as_ref().unwrap_err()));
}

#[tokio::test]
async fn dropping_a_maps_call_abandons_its_request() {
    let h = harness().await;
    h.sim.script(Endpoint::Geocode, Behaviour::HangBeforeHeaders);
    let address = Address::parse("1600 Amphitheatre Parkway").expect("valid");
    let mut call = h.client.geocode(&address);
    // Give up once the request arrived, well before the Maps timeout.
    tokio::select! {
        r = &mut call => panic!("a hanging call ended: {r:?}"),
        seen = h.sim.wait_for(MAPS_TIMEOUT / 2, |s| s.geocode.requests == 1) => assert!(seen, "no request arrived"),
    }
    drop(call);
    let abandoned = h.sim.wait_for(Duration::from_secs(2), |s| s.geocode.abandoned == 1).await;
    assert!(abandoned, "the simulator did not see the client go away: {:?}", h.sim.stats());
    h.finish().await;
}

/// Collects what tracing writes.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn nothing_logged_carries_a_key() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = harness().await;
    h.sim.script(Endpoint::Geocode, status("REQUEST_DENIED"));
    h.sim.script(Endpoint::StaticMap, Behaviour::HangBeforeHeaders);
    let address = Address::parse("1600 Amphitheatre Parkway").expect("valid");
    let _ = h.client.geocode(&address).await;
    let _ = h.client.geocode(&address).await;
    let _ = h.client.satellite(at()).await;
    let _ = h.client.street_view(at(), 90).await;
    h.finish().await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).expect("utf8");
    assert!(logs.contains("google request ended"), "nothing was logged: {logs}");
    assert_no_key(&logs);
}
