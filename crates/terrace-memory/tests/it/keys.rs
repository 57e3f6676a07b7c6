//! Idempotency keys are forgotten once their window ends.

use std::sync::Arc;
use std::time::Duration;
use terrace_conformance::{key_claim, new_generation};
use terrace_domain::{AreaKind, UserId};
use terrace_memory::{MemoryStore, TokioClock};
use terrace_ports::{CreateOutcome, GenerationStore, IdempotencyClaim};

fn claim(key: &str) -> Option<IdempotencyClaim> {
    Some(key_claim(key, "h"))
}

#[tokio::test(start_paused = true)]
async fn expired_keys_are_forgotten_up_to_the_limit_and_open_ones_are_kept() {
    let window = Duration::from_secs(60);
    let store = MemoryStore::new(Arc::new(TokioClock::new())).with_idempotency_ttl(window);
    let user = UserId::new_random();
    let new = || new_generation(user, &[AreaKind::Patio], Duration::from_secs(600), 10);
    for key in ["first", "second", "third"] {
        assert!(matches!(store.create(new(), claim(key)).await.unwrap(), CreateOutcome::Created(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(store.forget_expired_keys(10).await.unwrap(), 0, "every window is still open");
    assert!(matches!(store.create(new(), claim("first")).await.unwrap(), CreateOutcome::Replayed(_)));
    // Past the first two windows, not the third.
    tokio::time::advance(window - Duration::from_millis(1500)).await;
    assert_eq!(store.forget_expired_keys(1).await.unwrap(), 1, "one at a time");
    assert_eq!(store.forget_expired_keys(10).await.unwrap(), 1);
    assert_eq!(store.forget_expired_keys(10).await.unwrap(), 0);
    assert!(
        matches!(store.create(new(), claim("third")).await.unwrap(), CreateOutcome::Replayed(_)),
        "the key whose window is open is kept"
    );
    assert!(matches!(store.create(new(), claim("first")).await.unwrap(), CreateOutcome::Created(_)));
}
