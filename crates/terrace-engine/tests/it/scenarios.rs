//! The runner under every fault of the contract, as a table driven by one
//! checker. Each row asserts the terminal state, the error codes, the virtual
//! time the run took against its deadlines, the calls made, and the ledger.

use crate::fake::{Design, FakeGoogle, Geo, World, policies};
use std::sync::atomic::Ordering;
use std::time::Duration;
use terrace_domain::{DesignError, ErrorCode, GenerationStatus, GeocodeError, UpstreamError};
use terrace_engine::runner::{RunOutcome, run_generation};
use terrace_engine::supervisor::{Stop, StopReason};
use terrace_ports::{GenerationStore, Lease, WorkerId};
use tokio::time::Instant;

struct Scenario {
    name: &'static str,
    areas: &'static [&'static str],
    google: fn() -> FakeGoogle,
    /// Time between creation and the claim (queueing counts against the deadline).
    queued_for: Duration,
    /// The user cancels at this point of the run.
    cancel_at: Option<Duration>,
    status: GenerationStatus,
    /// The generation's error code.
    error: Option<ErrorCode>,
    /// Each area's error code; `None` for a completed area.
    area_errors: &'static [Option<ErrorCode>],
    /// Virtual time the run took, inclusive bounds.
    elapsed: (f64, f64),
    geocode_calls: u32,
    design_calls: u32,
}

const S: fn(f64) -> Duration = Duration::from_secs_f64;

fn unavailable(detail: &str, retry_after: Option<Duration>) -> UpstreamError {
    UpstreamError::Unavailable { detail: detail.into(), retry_after }
}

fn scenarios() -> Vec<Scenario> {
    use ErrorCode::*;
    use GenerationStatus as G;
    let base = Scenario {
        name: "",
        areas: &["patio"],
        google: FakeGoogle::new,
        queued_for: Duration::ZERO,
        cancel_at: None,
        status: G::Completed,
        error: None,
        area_errors: &[None],
        elapsed: (0.0, 0.01),
        geocode_calls: 1,
        design_calls: 1,
    };
    vec![
        Scenario {
            name: "happy path, two areas",
            areas: &["front_yard", "backyard"],
            area_errors: &[None, None],
            design_calls: 2,
            ..base
        },
        Scenario {
            name: "a Maps call that hangs: three attempts of 10 s each, then upstream_timeout",
            google: || FakeGoogle::new().geocode(&[], Geo::Hang),
            status: G::Failed,
            error: Some(UpstreamTimeout),
            area_errors: &[Some(UpstreamTimeout)],
            elapsed: (31.5, 33.0),
            geocode_calls: 3,
            design_calls: 0,
            ..base
        },
        Scenario {
            name: "OVER_QUERY_LIMIT twice, then the address",
            google: || {
                let busy = Geo::Fail(GeocodeError::Upstream(unavailable("OVER_QUERY_LIMIT", None)));
                FakeGoogle::new().geocode(&[busy.clone(), busy], Geo::Ok)
            },
            elapsed: (1.5, 3.0),
            geocode_calls: 3,
            ..base
        },
        Scenario {
            name: "address not found: one attempt, every area fails",
            areas: &["front_yard", "patio"],
            google: || FakeGoogle::new().geocode(&[], Geo::Fail(GeocodeError::NotFound)),
            status: G::Failed,
            error: Some(AddressNotFound),
            area_errors: &[Some(AddressNotFound), Some(AddressNotFound)],
            design_calls: 0,
            ..base
        },
        Scenario {
            name: "the model hangs before its first event: the area deadline ends the third attempt",
            google: || FakeGoogle::new().design("patio", &[], Design::HangBeforeFirstEvent),
            status: G::Failed,
            error: Some(DeadlineExceeded),
            area_errors: &[Some(DeadlineExceeded)],
            elapsed: (240.0, 240.01),
            design_calls: 3,
            ..base
        },
        Scenario {
            name: "the model never sends headers",
            google: || FakeGoogle::new().design("patio", &[], Design::HangBeforeHeaders),
            status: G::Failed,
            error: Some(DeadlineExceeded),
            area_errors: &[Some(DeadlineExceeded)],
            elapsed: (240.0, 240.01),
            design_calls: 3,
            ..base
        },
        Scenario {
            name: "the model stalls after one event, twice, then answers",
            google: || {
                FakeGoogle::new().design(
                    "patio",
                    &[Design::StallAfterOneEvent, Design::StallAfterOneEvent],
                    Design::Image,
                )
            },
            elapsed: (181.5, 183.0),
            design_calls: 3,
            ..base
        },
        Scenario {
            name: "the model drips events forever below the silence limit: the area deadline ends it",
            google: || FakeGoogle::new().design("patio", &[], Design::DripForever(S(30.0))),
            status: G::Failed,
            error: Some(DeadlineExceeded),
            area_errors: &[Some(DeadlineExceeded)],
            elapsed: (240.0, 240.01),
            design_calls: 1,
            ..base
        },
        Scenario {
            name: "503 then success",
            google: || {
                FakeGoogle::new().design(
                    "patio",
                    &[Design::Fail(unavailable("503", None).into())],
                    Design::Image,
                )
            },
            elapsed: (0.5, 1.0),
            design_calls: 2,
            ..base
        },
        Scenario {
            name: "429 with a retry-after hint of 7 s: the wait is honoured",
            google: || {
                let e = unavailable("429", Some(S(7.0)));
                FakeGoogle::new().design("patio", &[Design::Fail(e.into())], Design::Image)
            },
            elapsed: (7.0, 7.01),
            design_calls: 2,
            ..base
        },
        Scenario {
            name: "an error event mid-stream is retried",
            google: || {
                let e = unavailable("500 INTERNAL", None);
                FakeGoogle::new().design("patio", &[Design::ErrorEvent(e.into())], Design::Image)
            },
            elapsed: (0.5, 1.0),
            design_calls: 2,
            ..base
        },
        Scenario {
            name: "400: exactly one attempt",
            google: || {
                FakeGoogle::new().design("patio", &[], Design::Fail(UpstreamError::rejected("400").into()))
            },
            status: G::Failed,
            error: Some(UpstreamRejected),
            area_errors: &[Some(UpstreamRejected)],
            ..base
        },
        Scenario {
            name: "blocked prompt: content_blocked, no retry",
            google: || {
                FakeGoogle::new().design(
                    "patio",
                    &[],
                    Design::Fail(DesignError::Blocked { reason: "SAFETY".into() }),
                )
            },
            status: G::Failed,
            error: Some(ContentBlocked),
            area_errors: &[Some(ContentBlocked)],
            ..base
        },
        Scenario {
            name: "a stream without an image: no_image, no retry",
            google: || FakeGoogle::new().design("patio", &[], Design::NoImage),
            status: G::Failed,
            error: Some(NoImage),
            area_errors: &[Some(NoImage)],
            ..base
        },
        Scenario {
            name: "cancel mid-stream",
            areas: &["front_yard", "patio"],
            google: || {
                FakeGoogle::new().design("front_yard", &[], Design::HangBeforeFirstEvent).design(
                    "patio",
                    &[],
                    Design::HangBeforeFirstEvent,
                )
            },
            cancel_at: Some(S(5.0)),
            status: G::Cancelled,
            error: Some(Cancelled),
            area_errors: &[Some(Cancelled), Some(Cancelled)],
            elapsed: (5.0, 5.01),
            design_calls: 2,
            ..base
        },
        Scenario {
            name: "the generation deadline arrives mid-stream (200 s of it spent queued)",
            areas: &["front_yard", "patio"],
            google: || {
                let blocked = Design::Fail(DesignError::Blocked { reason: "SAFETY".into() });
                FakeGoogle::new().design("patio", &[], Design::DripForever(S(30.0))).design(
                    "front_yard",
                    &[],
                    blocked,
                )
            },
            queued_for: S(200.0),
            status: G::Failed,
            error: Some(ContentBlocked),
            area_errors: &[Some(ContentBlocked), Some(DeadlineExceeded)],
            elapsed: (100.0, 100.01),
            design_calls: 2,
            ..base
        },
        Scenario {
            name: "one area fails while the others complete",
            areas: &["front_yard", "backyard", "patio"],
            google: || {
                FakeGoogle::new().design(
                    "backyard",
                    &[],
                    Design::Fail(DesignError::Blocked { reason: "PROHIBITED_CONTENT".into() }),
                )
            },
            status: G::PartiallyCompleted,
            area_errors: &[None, Some(ContentBlocked), None],
            design_calls: 3,
            ..base
        },
        Scenario {
            name: "no panorama: the front yard is drawn from satellite imagery",
            areas: &["front_yard"],
            google: || FakeGoogle::new().no_panorama(),
            ..base
        },
        Scenario {
            name: "no imagery at all: imagery_unavailable",
            areas: &["front_yard"],
            google: || FakeGoogle::new().no_panorama().no_satellite(),
            status: G::Failed,
            error: Some(ImageryUnavailable),
            area_errors: &[Some(ImageryUnavailable)],
            design_calls: 0,
            ..base
        },
    ]
}

async fn check(s: Scenario) {
    let world = World::new((s.google)());
    let (_, id) = world.create(s.areas, 5).await;
    tokio::time::advance(s.queued_for).await;
    let owner = WorkerId("w1".into());
    let generation =
        world.store.claim_one(id, &owner, policies().lease.ttl).await.unwrap().expect("claimable");
    let lease = Lease { generation_id: id, attempt: generation.attempt, owner };
    let stop = Stop::new();
    if let Some(at) = s.cancel_at {
        let (store, stop) = (world.store.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            store.cancel(id).await.unwrap();
            stop.fire(StopReason::User);
        });
    }
    let start = Instant::now();
    let outcome = run_generation(&world.ports, &policies(), generation, lease, stop, None).await;
    let elapsed = start.elapsed().as_secs_f64();
    let name = s.name;

    let RunOutcome::Finished(g) = outcome else { panic!("{name}: run ended with {outcome:?}") };
    assert_eq!(g.status, s.status, "{name}: status");
    assert_eq!(g.error.as_ref().map(|e| e.code), s.error, "{name}: generation error");
    let area_errors: Vec<_> = g.areas.iter().map(|a| a.error.as_ref().map(|e| e.code)).collect();
    assert_eq!(area_errors, s.area_errors, "{name}: area errors");
    assert!(
        (s.elapsed.0..=s.elapsed.1).contains(&elapsed),
        "{name}: took {elapsed:.3} s of virtual time, expected {:?}",
        s.elapsed
    );
    let deadline = (g.deadline_at - g.created_at).to_std().unwrap();
    assert!(s.queued_for + S(elapsed) <= deadline + S(0.01), "{name}: ran past the generation's deadline");
    assert_eq!(world.google.geocode_calls.load(Ordering::SeqCst), s.geocode_calls, "{name}: geocode calls");
    assert_eq!(world.google.design_calls.load(Ordering::SeqCst), s.design_calls, "{name}: design calls");
    for a in g.areas.iter().filter(|a| a.error.is_none()) {
        let key = a.image_key.as_deref().expect("completed area has an image");
        assert!(terrace_ports::BlobStore::get(&world.blobs, key).await.is_ok(), "{name}: image stored");
    }
    world.assert_ledger(id).await;
    if s.cancel_at.is_none() {
        let voided = world.recorder.voided.lock().unwrap().len() as u64;
        assert_eq!(voided, g.voided(), "{name}: every void is reported once");
        assert_eq!(*world.recorder.finished.lock().unwrap(), [g.status], "{name}: finish reported once");
    }
}

#[tokio::test(start_paused = true)]
async fn every_fault_ends_cleanly() {
    for s in scenarios() {
        check(s).await;
    }
}

#[tokio::test(start_paused = true)]
async fn areas_share_one_fetch_of_each_source_image() {
    let world = World::new(FakeGoogle::new());
    let (_, id) = world.create(&["backyard", "patio", "pool_area"], 5).await;
    let owner = WorkerId("w1".into());
    let g = world.store.claim_one(id, &owner, policies().lease.ttl).await.unwrap().unwrap();
    let lease = Lease { generation_id: id, attempt: g.attempt, owner };
    let out = run_generation(&world.ports, &policies(), g, lease, Stop::new(), None).await;
    assert!(matches!(out, RunOutcome::Finished(ref g) if g.status == GenerationStatus::Completed), "{out:?}");
    assert_eq!(world.google.satellite_calls.load(Ordering::SeqCst), 1);
    let key = terrace_ports::blob_key::source(id, terrace_ports::SourceKind::Satellite);
    assert!(terrace_ports::BlobStore::get(&world.blobs, &key).await.is_ok());
    world.assert_ledger(id).await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_geocoding_error_is_asked_exactly_once() {
    // With a strict mock: any second call fails the test.
    let mut geocoder = terrace_ports::MockGeocoder::new();
    geocoder
        .expect_geocode()
        .times(1)
        .returning(|_| Err(GeocodeError::Upstream(UpstreamError::rejected("REQUEST_DENIED"))));
    let mut world = World::new(FakeGoogle::new());
    world.ports.geocoder = std::sync::Arc::new(geocoder);
    let (_, id) = world.create(&["patio"], 5).await;
    let owner = WorkerId("w1".into());
    let g = world.store.claim_one(id, &owner, policies().lease.ttl).await.unwrap().unwrap();
    let lease = Lease { generation_id: id, attempt: g.attempt, owner };
    let out = run_generation(&world.ports, &policies(), g, lease, Stop::new(), None).await;
    let RunOutcome::Finished(g) = out else { panic!("{out:?}") };
    assert_eq!(g.error.map(|e| e.code), Some(ErrorCode::UpstreamRejected));
    world.assert_ledger(id).await;
}
