//! The store and ledger conformance suite, on [`PgStore`] with a fresh
//! database per test.

use crate::support::{TestDb, policies};
use futures::future::BoxFuture;
use std::sync::Arc;
use terrace_conformance::{Factory, Subject};

struct Postgres;

impl Factory for Postgres {
    fn fresh(&self) -> BoxFuture<'_, Subject> {
        Box::pin(async {
            let db = TestDb::create().await;
            let store = Arc::new(db.store(&policies()).await);
            let closing = store.clone();
            Subject {
                store: store.clone(),
                ledger: store.clone(),
                billing: store,
                teardown: Some(Box::new(move || {
                    Box::pin(async move {
                        closing.close().await;
                        db.drop_now().await;
                    })
                })),
            }
        })
    }
}

terrace_conformance::suite!(Postgres);
