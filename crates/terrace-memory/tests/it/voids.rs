//! The memory store reports the voids it makes itself, as the Postgres store
//! does: a user's cancel and the sweep of overdue work.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_domain::input::{RawAreaRequest, RawGenerationRequest};
use terrace_domain::{
    ErrorCode, GenerationId, GenerationRequest, GenerationStatus, RequestId, TimeoutKind, UserId,
};
use terrace_memory::{MemoryStore, TokioClock};
use terrace_ports::{CreateOutcome, GenerationStore, NewGeneration, Observer, Upstream, UpstreamOutcome};

#[derive(Debug, Default)]
struct Voids(Mutex<Vec<ErrorCode>>);

impl Observer for Voids {
    fn upstream_request(&self, _: Upstream, _: UpstreamOutcome, _: Duration) {}
    fn upstream_timeout(&self, _: Upstream, _: TimeoutKind) {}
    fn generation_finished(&self, _: GenerationStatus, _: Duration) {}
    fn hold_voided(&self, reason: ErrorCode) {
        self.0.lock().unwrap().push(reason);
    }
}

async fn create(store: &MemoryStore, areas: &[&str]) -> GenerationId {
    let raw = RawGenerationRequest {
        address: "12 Garden Lane".into(),
        areas: areas
            .iter()
            .map(|a| RawAreaRequest {
                area: (*a).into(),
                style: "mediterranean".into(),
                custom_prompt: None,
                preservation_strength: None,
            })
            .collect(),
    };
    let new = NewGeneration {
        id: GenerationId::new_random(),
        user_id: UserId::new_random(),
        request_id: RequestId::generate(),
        request: GenerationRequest::parse(&raw).unwrap(),
        deadline: Duration::from_secs(300),
        trial_credits: 5,
    };
    match store.create(new, None).await.unwrap() {
        CreateOutcome::Created(g) => g.id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn cancels_and_sweeps_report_each_void_once() {
    let voids = Arc::new(Voids::default());
    let store = MemoryStore::with_observer(Arc::new(TokioClock::new()), voids.clone());
    let cancelled = create(&store, &["patio", "backyard"]).await;
    store.cancel(cancelled).await.unwrap();
    assert_eq!(*voids.0.lock().unwrap(), [ErrorCode::Cancelled, ErrorCode::Cancelled]);
    store.cancel(cancelled).await.unwrap();
    assert_eq!(voids.0.lock().unwrap().len(), 2, "a second cancel voids nothing");

    let overdue = create(&store, &["front_yard"]).await;
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(store.end_overdue(10).await.unwrap(), [overdue]);
    assert_eq!(voids.0.lock().unwrap()[2..], [ErrorCode::DeadlineExceeded]);
}
