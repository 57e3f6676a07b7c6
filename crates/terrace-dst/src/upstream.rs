//! Simulated Google (geocoding, imagery, the design model's stream) and a
//! faulty blob store, one of each per instance incarnation. Each call draws
//! its behaviour from the run's upstream random source: success, each error
//! class of the ports, hangs, stalls, slow bodies, retry-after hints.

use crate::shared::{Shared, Who};
use async_trait::async_trait;
use bytes::Bytes;
use fastrand::Rng;
use futures::StreamExt;
use futures::stream;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::{
    Address, BlobError, DesignError, GeocodeError, Geocoded, ImageryError, LatLng, TimeoutKind, UpstreamError,
};
use terrace_ports::{
    BlobStore, DesignEvent, DesignModel, DesignRequest, DesignStream, Geocoder, Image, Imagery, Panorama,
};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

fn image() -> Image {
    Image { bytes: Bytes::from_static(b"\x89PNG simulated"), content_type: "image/png".into() }
}

fn ms(rng: &mut Rng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

/// What one Maps call does.
#[derive(Debug, Clone)]
enum Answer {
    /// Answers after a while (sometimes longer than the Maps timeout).
    Ok(Duration),
    /// Nothing there: `ZERO_RESULTS`, no panorama, no image.
    Missing(Duration),
    Unavailable(Duration, Option<Duration>),
    Rejected,
    /// The adapter's own timeout passed.
    TimedOut(Duration),
    /// Never answers.
    Hang,
}

impl Answer {
    fn name(&self) -> String {
        match self {
            Answer::Ok(d) => format!("ok after {}ms", d.as_millis()),
            Answer::Missing(_) => "nothing there".into(),
            Answer::Unavailable(_, Some(h)) => format!("unavailable, retry after {}s", h.as_secs()),
            Answer::Unavailable(_, None) => "unavailable".into(),
            Answer::Rejected => "rejected".into(),
            Answer::TimedOut(_) => "timed out".into(),
            Answer::Hang => "hangs".into(),
        }
    }

    /// Waits as the answer says, then gives the error it is, if any.
    async fn play(&self) -> Result<(), UpstreamError> {
        match self {
            Answer::Ok(d) | Answer::Missing(d) => {
                sleep(*d).await;
                Ok(())
            }
            Answer::Unavailable(d, hint) => {
                sleep(*d).await;
                Err(UpstreamError::Unavailable { detail: "503".into(), retry_after: *hint })
            }
            Answer::Rejected => Err(UpstreamError::rejected("403")),
            Answer::TimedOut(d) => {
                sleep(*d).await;
                Err(UpstreamError::Timeout { kind: TimeoutKind::Request })
            }
            Answer::Hang => futures::future::pending().await,
        }
    }
}

fn draw_answer(rng: &mut Rng, fail: f64, missing: f64, maps_timeout: Duration) -> Answer {
    if rng.f64() < missing {
        return Answer::Missing(ms(rng, 20..=400));
    }
    if rng.f64() >= fail {
        // Mostly quick; now and then slower than the Maps timeout.
        return match rng.u8(0..20) {
            0 => Answer::Ok(maps_timeout + ms(rng, 0..=5_000)),
            1..=3 => Answer::Ok(ms(rng, 1_000..=9_000)),
            _ => Answer::Ok(ms(rng, 20..=800)),
        };
    }
    match rng.u8(0..10) {
        0..=2 => Answer::Unavailable(ms(rng, 10..=500), None),
        3..=4 => Answer::Unavailable(ms(rng, 10..=200), Some(Duration::from_secs(rng.u64(1..=45)))),
        5 => Answer::Rejected,
        6..=7 => Answer::TimedOut(maps_timeout),
        _ => Answer::Hang,
    }
}

/// What one design call does.
#[derive(Debug, Clone)]
enum Design {
    /// Headers after a while, then events (each after its own wait), then
    /// the stream ends or falls silent for good.
    Stream {
        headers: Duration,
        events: Vec<(Duration, Result<DesignEvent, DesignError>)>,
        stall: bool,
        name: String,
    },
    /// The headers never come.
    Hang,
    /// Refused before any event.
    Fail(Duration, DesignError),
}

fn text() -> Result<DesignEvent, DesignError> {
    Ok(DesignEvent::Text("here is your garden".into()))
}

fn draw_design(rng: &mut Rng, fail: f64) -> Design {
    let headers = ms(rng, 100..=3_000);
    if rng.f64() >= fail {
        // A design, sometimes over a slow body of many progress events.
        let mut events = vec![(ms(rng, 100..=5_000), text())];
        let slow = rng.u8(0..4) == 0;
        if slow {
            let mut received = 0;
            for _ in 0..rng.usize(1..=6) {
                received += 64 * 1024;
                events
                    .push((ms(rng, 1_000..=60_000), Ok(DesignEvent::Progress { received_bytes: received })));
            }
        }
        events.push((ms(rng, 500..=15_000), Ok(DesignEvent::Image(image()))));
        let name = if slow { "image over a slow body" } else { "image" }.into();
        return Design::Stream { headers, events, stall: false, name };
    }
    let upstream = |rng: &mut Rng| {
        if rng.bool() {
            UpstreamError::Unavailable {
                detail: "429".into(),
                retry_after: Some(Duration::from_secs(rng.u64(1..=40))),
            }
        } else {
            UpstreamError::unavailable("503")
        }
    };
    let stream = |events, stall, name: &str| Design::Stream { headers, events, stall, name: name.into() };
    match rng.u8(0..11) {
        0 => Design::Hang,
        1 => stream(vec![], true, "headers, then silence"),
        2 => stream(vec![(ms(rng, 100..=2_000), text())], true, "one event, then silence"),
        3 => {
            // Progress forever: never silent long enough for the idle limit.
            let every = ms(rng, 5_000..=30_000);
            let drip =
                (1..=80).map(|i| (every, Ok(DesignEvent::Progress { received_bytes: i * 1024 }))).collect();
            stream(drip, true, "drips progress forever")
        }
        4..=5 => {
            let e = upstream(rng);
            Design::Fail(ms(rng, 50..=1_000), e.into())
        }
        6 => Design::Fail(ms(rng, 50..=500), UpstreamError::rejected("400").into()),
        7 => {
            let e = upstream(rng);
            stream(
                vec![(ms(rng, 100..=2_000), text()), (ms(rng, 100..=5_000), Err(e.into()))],
                false,
                "error event",
            )
        }
        8 => stream(vec![(ms(rng, 100..=5_000), text())], false, "no image"),
        9 => stream(
            vec![(ms(rng, 100..=2_000), Err(DesignError::Blocked { reason: "IMAGE_SAFETY".into() }))],
            false,
            "blocked",
        ),
        _ => stream(
            vec![
                (ms(rng, 100..=2_000), text()),
                (ms(rng, 90_000..=150_000), Ok(DesignEvent::Image(image()))),
            ],
            false,
            "image after a silence past the idle limit",
        ),
    }
}

/// Which Maps call.
#[derive(Debug, Clone, Copy)]
enum Maps {
    Geocode,
    Metadata,
    StreetView,
    Satellite,
}

/// Google as one instance sees it.
#[derive(Debug)]
pub struct SimGoogle {
    shared: Arc<Shared>,
    who: Who,
    dead: CancellationToken,
}

impl SimGoogle {
    pub fn new(shared: Arc<Shared>, who: Who, dead: CancellationToken) -> Self {
        Self { shared, who, dead }
    }

    /// `None` once the instance is down (its calls reach nothing).
    fn maps(&self, call: Maps) -> Option<Answer> {
        if self.dead.is_cancelled() {
            return None;
        }
        let at = self.shared.elapsed();
        let timeout = self.shared.policies.maps_timeout;
        let mut s = self.shared.lock();
        if !self.shared.count_call(&mut s) {
            return Some(Answer::Hang);
        }
        s.stats.upstream_calls += 1;
        let w = s.weather;
        let (fail, missing) = match call {
            Maps::Geocode => (w.geocode, w.geocode / 10.0),
            Maps::Metadata => (w.imagery, w.no_panorama),
            Maps::StreetView | Maps::Satellite => (w.imagery, w.imagery / 10.0),
        };
        let answer = draw_answer(&mut s.upstream, fail, missing, timeout);
        if !matches!(answer, Answer::Ok(_)) {
            s.stats.upstream_faults += 1;
        }
        s.trace.push(at, &self.who.to_string(), format_args!("{call:?}: {}", answer.name()));
        Some(answer)
    }
}

fn down() -> UpstreamError {
    UpstreamError::unavailable("the instance is down")
}

#[async_trait]
impl Geocoder for SimGoogle {
    async fn geocode(&self, address: &Address) -> Result<Geocoded, GeocodeError> {
        let answer = self.maps(Maps::Geocode).ok_or_else(down)?;
        answer.play().await?;
        match answer {
            Answer::Missing(_) => Err(GeocodeError::NotFound),
            _ => Ok(Geocoded {
                formatted_address: format!("{}, Springfield", address.as_str()),
                location: LatLng { lat: 37.0, lng: -122.0 },
            }),
        }
    }
}

#[async_trait]
impl Imagery for SimGoogle {
    async fn street_view_metadata(&self, at: LatLng) -> Result<Option<Panorama>, ImageryError> {
        let answer = self.maps(Maps::Metadata).ok_or_else(down)?;
        answer.play().await?;
        Ok(match answer {
            Answer::Missing(_) => None,
            _ => Some(Panorama {
                pano_id: "p1".into(),
                location: LatLng { lat: at.lat - 0.0002, lng: at.lng },
            }),
        })
    }

    async fn street_view(&self, _: LatLng, _: u16) -> Result<Image, ImageryError> {
        let answer = self.maps(Maps::StreetView).ok_or_else(down)?;
        answer.play().await?;
        match answer {
            Answer::Missing(_) => Err(ImageryError::NoImagery),
            _ => Ok(image()),
        }
    }

    async fn satellite(&self, _: LatLng) -> Result<Image, ImageryError> {
        let answer = self.maps(Maps::Satellite).ok_or_else(down)?;
        answer.play().await?;
        match answer {
            Answer::Missing(_) => Err(ImageryError::NoImagery),
            _ => Ok(image()),
        }
    }
}

#[async_trait]
impl DesignModel for SimGoogle {
    async fn generate(&self, _: DesignRequest) -> Result<DesignStream, DesignError> {
        if self.dead.is_cancelled() {
            return Err(down().into());
        }
        let design = {
            let at = self.shared.elapsed();
            let mut s = self.shared.lock();
            if !self.shared.count_call(&mut s) {
                Design::Hang
            } else {
                s.stats.upstream_calls += 1;
                let fail = s.weather.design;
                let d = draw_design(&mut s.upstream, fail);
                let name = match &d {
                    Design::Stream { name, .. } => name.clone(),
                    Design::Hang => "no headers".into(),
                    Design::Fail(_, e) => format!("refused: {e}"),
                };
                if !matches!(&d, Design::Stream { name, .. } if name.starts_with("image")) {
                    s.stats.upstream_faults += 1;
                }
                s.trace.push(at, &self.who.to_string(), format_args!("design: {name}"));
                d
            }
        };
        match design {
            Design::Hang => futures::future::pending().await,
            Design::Fail(d, e) => {
                sleep(d).await;
                Err(e)
            }
            Design::Stream { headers, events, stall, .. } => {
                sleep(headers).await;
                let body = stream::unfold(events.into_iter(), |mut rest| async move {
                    let (wait, event) = rest.next()?;
                    sleep(wait).await;
                    Some((event, rest))
                });
                Ok(if stall { body.chain(stream::pending()).boxed() } else { body.boxed() })
            }
        }
    }
}

/// The blob store as one instance sees it: the run's one memory blob store
/// behind faults.
#[derive(Debug)]
pub struct FaultyBlobs {
    shared: Arc<Shared>,
    who: Who,
    dead: CancellationToken,
}

impl FaultyBlobs {
    pub fn new(shared: Arc<Shared>, who: Who, dead: CancellationToken) -> Self {
        Self { shared, who, dead }
    }
}

#[async_trait]
impl BlobStore for FaultyBlobs {
    async fn put(&self, key: &str, image: Image) -> Result<(), BlobError> {
        if self.dead.is_cancelled() {
            return Err(BlobError::Unavailable { detail: "the instance is down".into() });
        }
        let (before, fault) = {
            let at = self.shared.elapsed();
            let mut s = self.shared.lock();
            let fail = s.weather.blob;
            let rng = &mut s.upstream;
            let before = ms(rng, 5..=300);
            let fault = (rng.f64() < fail).then(|| rng.u8(0..4));
            if let Some(f) = fault {
                s.stats.blob_faults += 1;
                let said =
                    ["refused", "hangs", "stored, answer lost", "stored, answer never comes"][f as usize];
                s.trace.push(at, &self.who.to_string(), format_args!("fault blob put: {said}"));
            }
            (before, fault)
        };
        let died = || BlobError::Unavailable { detail: "the instance is down".into() };
        tokio::select! {
            biased;
            _ = self.dead.cancelled() => return Err(died()),
            _ = sleep(before) => {}
        }
        match fault {
            Some(0) => return Err(BlobError::Unavailable { detail: "503".into() }),
            Some(1) => futures::future::pending::<()>().await,
            _ => {}
        }
        if self.dead.is_cancelled() {
            return Err(died());
        }
        self.shared.blobs.put(key, image).await?;
        match fault {
            Some(2) => Err(BlobError::Unavailable { detail: "connection reset".into() }),
            Some(_) => futures::future::pending().await,
            None => Ok(()),
        }
    }

    async fn get(&self, key: &str) -> Result<terrace_ports::Image, BlobError> {
        self.shared.blobs.get(key).await
    }
}
