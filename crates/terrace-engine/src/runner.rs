//! Takes one claimed generation to a terminal state.
//!
//! Deadlines, innermost first: each Maps call (`maps_timeout`); the model's
//! silence before its headers and between events (`llm_idle_timeout`); each
//! blob write (`blob_timeout`); each store call (`DbPolicy::call_timeout`);
//! each area, all attempts included (`area_timeout`, never past the
//! generation's); the generation (`deadline_at`). Whatever ends the work, the
//! runner's last act is a fenced store write that resolves every unfinished
//! area's hold (`finish`), or hands the work back (`release`) on shutdown.

use crate::Ports;
use crate::retry::{bounded, with_retry};
use crate::supervisor::{StageReporter, Stop, StopReason};
use futures::StreamExt;
use std::time::Duration;
use terrace_domain::prompt::design_prompt;
use terrace_domain::rules::Resolution;
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    Area, Classify, DesignError, ErrorCode, Failure, Generation, GeocodeError, Geocoded, HoldState,
    ImageryError, LatLng, Policies, StoreError, TimeoutKind, UpstreamError,
};
use terrace_ports::{DesignEvent, DesignRequest, Finished, Image, Lease, SourceKind, Upstream, blob_key};
use tokio::sync::OnceCell;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{Instrument, info, warn};

/// How a run ended, for the caller's logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// The generation is terminal; the final record.
    Finished(Generation),
    /// Handed back on shutdown; another instance will resume it.
    HandedBack,
    /// The lease was lost; the new owner carries on.
    LeaseLost,
    /// The final store write did not go through in time; the lease will
    /// expire and the sweeper or another instance finishes the work.
    Abandoned(StoreError),
}

/// Converts a stored wall-clock deadline into tokio time.
fn deadline_instant(ports: &Ports, deadline_at: chrono::DateTime<chrono::Utc>) -> Instant {
    let left = (deadline_at - ports.clock.now()).to_std().unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// Why the work inside the deadline stopped early.
enum Halt {
    /// Geocoding failed: every area fails with this.
    Geocode(Failure),
    LeaseLost,
    /// The generation is already terminal (cancelled by the user meanwhile).
    Finished,
}

/// Runs `generation` (claimed under `lease`) to its end.
///
/// Cancel safety: dropping the future stops the work without a final write;
/// the lease then expires and the sweeper or another instance resumes or ends
/// the work, so no hold is lost. Prefer firing `stop`.
pub async fn run_generation(
    ports: &Ports,
    policies: &Policies,
    generation: Generation,
    lease: Lease,
    stop: Stop,
    stage: Option<StageReporter>,
) -> RunOutcome {
    let span = tracing::info_span!(
        "generation",
        generation_id = %generation.id,
        request_id = %generation.request_id,
        attempt = lease.attempt,
    );
    async move {
        let started = Instant::now();
        let deadline = deadline_instant(ports, generation.deadline_at);
        info!(areas = generation.areas.len(), "generation started");
        let run = Run { ports, policies, lease: &lease, stage, sources: Sources::default() };
        let ended = tokio::select! {
            biased;
            reason = stop.fired() => Err(reason),
            r = timeout_at(deadline, run.work(&generation, deadline)) => Ok(r),
        };
        let (status, failure) = match ended {
            Ok(Ok(Ok(()))) => {
                (AreaStatus::Failed, Failure::new(ErrorCode::Internal, "the area did not finish"))
            }
            Ok(Ok(Err(Halt::Geocode(f)))) => (AreaStatus::Failed, f),
            Ok(Ok(Err(Halt::Finished))) => return run.read_final(&generation).await,
            Ok(Ok(Err(Halt::LeaseLost))) | Err(StopReason::LeaseLost) => {
                warn!("lease lost; stopping without writing");
                return RunOutcome::LeaseLost;
            }
            Ok(Err(_elapsed)) => {
                warn!(elapsed_ms = started.elapsed().as_millis() as u64, "generation deadline passed");
                (AreaStatus::Failed, Failure::generation_deadline())
            }
            Err(StopReason::User) => (AreaStatus::Cancelled, Failure::cancelled()),
            Err(StopReason::Shutdown) => return run.hand_back().await,
        };
        run.finish(&generation, status, failure).await
    }
    .instrument(span)
    .await
}

/// Source images of one generation, fetched once and shared by its areas.
#[derive(Default)]
struct Sources {
    street: OnceCell<Image>,
    satellite: OnceCell<Image>,
}

struct Run<'a> {
    ports: &'a Ports,
    policies: &'a Policies,
    lease: &'a Lease,
    stage: Option<StageReporter>,
    sources: Sources,
}

impl Run<'_> {
    fn report(&self, stage: &'static str) {
        if let Some(s) = &self.stage {
            s.set(stage);
        }
    }

    /// Reports the voids a write booked (each write reports its own).
    fn report_voids(&self, resolved: &[Resolution]) {
        for r in resolved.iter().filter(|r| r.to == HoldState::Voided) {
            self.ports.observer.hold_voided(r.reason.unwrap_or(ErrorCode::Internal));
        }
    }

    fn call_limit(&self) -> Duration {
        self.policies.db.call_timeout()
    }

    async fn work(&self, generation: &Generation, deadline: Instant) -> Result<(), Halt> {
        let location = match &generation.geocoded {
            Some(g) => g.location,
            None => {
                self.report("geocoding");
                let geocoded = self.geocode(generation, deadline).await.map_err(|e| {
                    warn!(error = %e, "geocoding failed");
                    Halt::Geocode(Failure::from_error(&e))
                })?;
                let store = &self.ports.store;
                let wrote =
                    bounded(self.call_limit(), "record_geocode", store.record_geocode(self.lease, &geocoded))
                        .await;
                self.check_write(wrote)?;
                geocoded.location
            }
        };
        self.report("designing");
        let unfinished: Vec<&Area> = generation.areas.iter().filter(|a| !a.status.is_terminal()).collect();
        let areas: Vec<_> = unfinished.into_iter().map(|area| self.area(area, location, deadline)).collect();
        let results: Vec<Result<(), Halt>> =
            futures::stream::iter(areas).buffer_unordered(self.policies.area_concurrency).collect().await;
        results.into_iter().collect::<Result<Vec<()>, Halt>>()?;
        self.report("finishing");
        Ok(())
    }

    /// Maps a fenced write's result: a lost lease or a finished generation
    /// halts the run; other failures are logged and the run goes on (the
    /// final write or the sweeper settles the holds).
    fn check_write(&self, r: Result<(), StoreError>) -> Result<(), Halt> {
        match r {
            Ok(()) => Ok(()),
            Err(StoreError::LeaseLost) => Err(Halt::LeaseLost),
            Err(e) => {
                warn!(error = %e, "store write failed");
                Ok(())
            }
        }
    }

    async fn geocode(&self, generation: &Generation, deadline: Instant) -> Result<Geocoded, GeocodeError> {
        let limit = self.policies.maps_timeout;
        with_retry(&self.policies.retry, deadline, "geocode", |_| async {
            match timeout(limit, self.ports.geocoder.geocode(&generation.address)).await {
                Ok(r) => r,
                Err(_) => Err(self.timed_out(Upstream::Geocode, TimeoutKind::Request).into()),
            }
        })
        .await
    }

    fn timed_out(&self, upstream: Upstream, kind: TimeoutKind) -> UpstreamError {
        self.ports.observer.upstream_timeout(upstream, kind);
        UpstreamError::Timeout { kind }
    }

    /// One area, start to end, always ending with its hold resolved (or the
    /// run halted for a lost lease). Its log lines carry the area.
    async fn area(&self, area: &Area, location: LatLng, gen_deadline: Instant) -> Result<(), Halt> {
        // The span is attached to the future, never entered across an await:
        // an entered guard held over a suspension leaks into other tasks.
        let span = tracing::info_span!("area", area = %area.kind());
        self.area_in_span(area, location, gen_deadline).instrument(span).await
    }

    async fn area_in_span(&self, area: &Area, location: LatLng, gen_deadline: Instant) -> Result<(), Halt> {
        let kind = area.kind();
        let deadline = (Instant::now() + self.policies.area_timeout).min(gen_deadline);
        let outcome = timeout_at(deadline, self.area_work(area, location, deadline)).await;
        let failure = match outcome {
            Ok(Ok(image_key)) => {
                let store = &self.ports.store;
                let done = self
                    .store_retry(deadline, "complete_area", || {
                        store.complete_area(self.lease, kind, &image_key)
                    })
                    .await;
                return self.settled(done, || info!("area completed"));
            }
            Ok(Err(AreaFail::Halt(h))) => return Err(h),
            Ok(Err(AreaFail::Failure(f))) => f,
            Err(_) => Failure::new(ErrorCode::DeadlineExceeded, "the area's deadline passed"),
        };
        warn!(code = %failure.code, message = %failure.message, "area failed");
        let store = &self.ports.store;
        let ended = self
            .store_retry(deadline, "end_area", || {
                store.end_area(self.lease, kind, AreaStatus::Failed, &failure)
            })
            .await;
        self.settled(ended, || {})
    }

    /// What the write that resolves an area's hold came to: on success the
    /// voids it booked are reported (and `report` tells of the rest); a
    /// finished area or generation needs nothing more; a lost lease halts the
    /// run; anything else is left to the final write or the sweeper.
    fn settled(&self, r: Result<Vec<Resolution>, StoreError>, report: impl FnOnce()) -> Result<(), Halt> {
        match r {
            Ok(resolved) => {
                self.report_voids(&resolved);
                report();
                Ok(())
            }
            Err(StoreError::Finished) => Ok(()),
            Err(StoreError::LeaseLost) => Err(Halt::LeaseLost),
            Err(e) => {
                warn!(error = %e, "could not record the area's end; the final write will settle it");
                Ok(())
            }
        }
    }

    /// A fenced store write that must land: retried while retryable, each try
    /// bounded, and never waiting past `deadline` plus one call.
    async fn store_retry<'b, T, F, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + 'b,
    {
        let until = deadline.max(Instant::now()) + self.call_limit();
        // A write that settles a hold is worth every try the time allows (a
        // database restart takes seconds): `settle_retry` is bounded by time.
        with_retry(&self.policies.settle_retry, until, what, |_| bounded(self.call_limit(), what, op())).await
    }

    async fn advance(&self, area: &Area, stage: AreaStage, progress: u8) -> Result<(), AreaFail> {
        let store = &self.ports.store;
        let r = bounded(
            self.call_limit(),
            "advance_area",
            store.advance_area(self.lease, area.kind(), stage, progress),
        )
        .await;
        match r {
            Err(StoreError::Finished) => Err(AreaFail::Halt(Halt::Finished)),
            other => self.check_write(other).map_err(AreaFail::Halt),
        }
    }

    async fn area_work(&self, area: &Area, location: LatLng, deadline: Instant) -> Result<String, AreaFail> {
        self.advance(area, AreaStage::RetrievingImagery, 10).await?;
        let source = self.source(area, location, deadline).await.map_err(|e| AreaFail::from_error(&e))?;
        self.advance(area, AreaStage::GeneratingDesign, 30).await?;
        let prompt = design_prompt(
            area.kind(),
            area.spec.style,
            area.spec.custom_prompt.as_ref(),
            area.spec.preservation_strength,
        );
        let request = DesignRequest { prompt, source };
        let image = with_retry(&self.policies.retry, deadline, "design", |_| self.design(request.clone()))
            .await
            .map_err(|e| AreaFail::from_error(&e))?;
        self.advance(area, AreaStage::Storing, 90).await?;
        let key = blob_key::design(self.lease.generation_id, area.kind());
        self.put_blob(&key, image, deadline).await?;
        Ok(key)
    }

    async fn put_blob(&self, key: &str, image: Image, deadline: Instant) -> Result<(), AreaFail> {
        let limit = self.policies.blob_timeout;
        with_retry(&self.policies.retry, deadline, "store image", |_| async {
            match timeout(limit, self.ports.blobs.put(key, image.clone())).await {
                Ok(r) => r,
                Err(_) => Err(terrace_domain::BlobError::Timeout),
            }
        })
        .await
        .map_err(|e| AreaFail::from_error(&e))
    }

    /// The source image for an area: Street View for front yard and walkway
    /// (satellite when there is no panorama), satellite otherwise. Each kind is
    /// fetched and stored once per generation.
    async fn source(&self, area: &Area, location: LatLng, deadline: Instant) -> Result<Image, ImageryError> {
        let fetch_satellite = || async {
            self.sources
                .satellite
                .get_or_try_init(|| async {
                    let img = self
                        .maps_call(deadline, Upstream::StaticMap, || self.ports.imagery.satellite(location))
                        .await?;
                    self.keep_source(SourceKind::Satellite, &img).await;
                    Ok(img)
                })
                .await
                .cloned()
        };
        if !area.kind().uses_street_view() {
            return fetch_satellite().await;
        }
        let street = self
            .sources
            .street
            .get_or_try_init(|| async {
                let meta = self
                    .maps_call(deadline, Upstream::StreetView, || {
                        self.ports.imagery.street_view_metadata(location)
                    })
                    .await?;
                let Some(pano) = meta else { return Err(ImageryError::NoImagery) };
                let heading = pano.location.bearing_to(location);
                let img = self
                    .maps_call(deadline, Upstream::StreetView, || {
                        self.ports.imagery.street_view(pano.location, heading)
                    })
                    .await?;
                self.keep_source(SourceKind::StreetView, &img).await;
                Ok(img)
            })
            .await;
        match street {
            Ok(img) => Ok(img.clone()),
            Err(ImageryError::NoImagery) => {
                info!("no street view here; using satellite imagery");
                fetch_satellite().await
            }
            Err(e) => Err(e),
        }
    }

    /// Stores a source image for the user to see; a failure here does not
    /// fail the design.
    async fn keep_source(&self, kind: SourceKind, image: &Image) {
        let key = blob_key::source(self.lease.generation_id, kind);
        match timeout(self.policies.blob_timeout, self.ports.blobs.put(&key, image.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, kind = kind.as_str(), "could not store the source image"),
            Err(_) => warn!(kind = kind.as_str(), "storing the source image timed out"),
        }
    }

    async fn maps_call<T, F, Fut>(
        &self,
        deadline: Instant,
        upstream: Upstream,
        call: F,
    ) -> Result<T, ImageryError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ImageryError>>,
    {
        let limit = self.policies.maps_timeout;
        with_retry(&self.policies.retry, deadline, upstream.as_str(), |_| async {
            match timeout(limit, call()).await {
                Ok(r) => r,
                Err(_) => Err(self.timed_out(upstream, TimeoutKind::Request).into()),
            }
        })
        .await
    }

    /// One design attempt: open the stream within the silence limit, then read
    /// until the first image, each event within the silence limit.
    async fn design(&self, request: DesignRequest) -> Result<Image, DesignError> {
        let idle = self.policies.llm_idle_timeout;
        let mut stream = match timeout(idle, self.ports.model.generate(request)).await {
            Ok(r) => r?,
            Err(_) => return Err(self.timed_out(Upstream::Gemini, TimeoutKind::Idle).into()),
        };
        loop {
            match timeout(idle, stream.next()).await {
                Err(_) => return Err(self.timed_out(Upstream::Gemini, TimeoutKind::Idle).into()),
                Ok(None) => return Err(DesignError::NoImage),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(DesignEvent::Image(image)))) => return Ok(image),
                Ok(Some(Ok(DesignEvent::Text(_) | DesignEvent::Progress { .. }))) => {}
            }
        }
    }

    async fn finish(&self, generation: &Generation, status: AreaStatus, failure: Failure) -> RunOutcome {
        let store = &self.ports.store;
        // The final write gets a few calls' worth of time, every try it allows.
        let until = Instant::now() + self.call_limit() * 3;
        let r = with_retry(&self.policies.settle_retry, until, "finish", |_| {
            bounded(self.call_limit(), "finish", store.finish(self.lease, status, &failure))
        })
        .await;
        match r {
            Ok(Finished { generation, resolved }) => {
                // The store says which holds this final write resolved.
                self.report_voids(&resolved);
                self.finished(generation)
            }
            Err(StoreError::Finished) => self.read_final(generation).await,
            Err(StoreError::LeaseLost) => RunOutcome::LeaseLost,
            Err(e) => {
                warn!(error = %e, "could not finish; the sweeper will");
                RunOutcome::Abandoned(e)
            }
        }
    }

    fn finished(&self, g: Generation) -> RunOutcome {
        let elapsed = g.completed_at.and_then(|c| (c - g.created_at).to_std().ok()).unwrap_or_default();
        info!(
            status = g.status.as_str(),
            captured = g.captured(),
            voided = g.voided(),
            "generation finished"
        );
        self.ports.observer.generation_finished(g.status, elapsed);
        RunOutcome::Finished(g)
    }

    /// The generation was finished by someone else (the user's cancel).
    async fn read_final(&self, generation: &Generation) -> RunOutcome {
        let store = &self.ports.store;
        match bounded(self.call_limit(), "get", store.get(generation.id)).await {
            Ok(Some(g)) if g.status.is_terminal() => {
                info!(status = g.status.as_str(), "generation was finished elsewhere");
                RunOutcome::Finished(g)
            }
            Ok(_) => RunOutcome::LeaseLost,
            Err(e) => RunOutcome::Abandoned(e),
        }
    }

    async fn hand_back(&self) -> RunOutcome {
        let store = &self.ports.store;
        match bounded(self.call_limit(), "release", store.release(self.lease)).await {
            Ok(()) => {
                info!("handed back for another instance");
                RunOutcome::HandedBack
            }
            Err(StoreError::LeaseLost | StoreError::Finished) => RunOutcome::LeaseLost,
            Err(e) => {
                warn!(error = %e, "could not hand back; the lease will expire");
                RunOutcome::Abandoned(e)
            }
        }
    }
}

/// Why an area's work stopped.
enum AreaFail {
    Failure(Failure),
    Halt(Halt),
}

impl AreaFail {
    fn from_error<E: Classify + std::fmt::Display>(e: &E) -> Self {
        AreaFail::Failure(Failure::from_error(e))
    }
}
