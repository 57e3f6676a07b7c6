//! The store and ledger conformance suite, on [`MemoryStore`].

use futures::future::BoxFuture;
use std::sync::Arc;
use terrace_conformance::{Factory, Subject};
use terrace_memory::MemoryStore;
use terrace_ports::SystemClock;

/// A fresh in-memory store on the system clock (the suite waits in real time).
struct Memory;

impl Factory for Memory {
    fn fresh(&self) -> BoxFuture<'_, Subject> {
        Box::pin(async {
            let store = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
            Subject { store: store.clone(), ledger: store.clone(), billing: store, teardown: None }
        })
    }
}

terrace_conformance::suite!(Memory);
