//! The LISTEN connection: it comes back after its connection dies, and stops
//! when the store closes.

use crate::support::{TestDb, policies, session};
use futures::StreamExt;
use std::time::{Duration, Instant};
use terrace_conformance::{eventually, new_generation};
use terrace_domain::{AreaKind, UserId};
use terrace_ports::{CreateOutcome, GenerationStore, Notification};

async fn created_is_heard(
    store: &terrace_postgres::PgStore,
    events: &mut futures::stream::BoxStream<'static, Notification>,
) {
    let user = UserId::new_random();
    eventually("a creation is announced", Duration::from_secs(8), async || {
        let Ok(CreateOutcome::Created(g)) =
            store.create(new_generation(user, &[AreaKind::Patio], Duration::from_secs(60), 100), None).await
        else {
            panic!("created")
        };
        let heard = tokio::time::timeout(Duration::from_millis(300), async {
            while let Some(n) = events.next().await {
                if n == Notification::Created(g.id) {
                    return true;
                }
            }
            false
        })
        .await;
        heard.unwrap_or(false).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_dies() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let mut events = terrace_ports::GenerationStore::notifications(&store);
    created_is_heard(&store, &mut events).await;
    let admin = session(&db.url).await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'terrace-listener'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one listener per store");
    created_is_heard(&store, &mut events).await;
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_the_listener_and_ends_the_stream() {
    let db = TestDb::create().await;
    let store = db.store(&policies()).await;
    let mut events = store.notifications();
    let started = Instant::now();
    store.close().await;
    assert!(started.elapsed() < Duration::from_secs(2), "close took {:?}", started.elapsed());
    let end = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
    assert_eq!(end, Ok(None), "the stream ends with the store");
    assert!(store.ping().await.is_err(), "a closed store serves nothing");
    let admin = session(&db.url).await;
    eventually("the listener's session is gone", Duration::from_secs(3), async || {
        let rows = admin
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'terrace-listener'",
                &[],
            )
            .await
            .unwrap();
        rows.is_empty().then_some(())
    })
    .await;
    db.drop_now().await;
}
