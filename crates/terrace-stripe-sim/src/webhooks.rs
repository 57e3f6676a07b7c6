//! Sending events: signed as Stripe signs them, each send under a timeout,
//! non-2xx answers resent with doubling backoff a bounded number of times,
//! and each batch delivered as its [`WebhookPlan`] says.

use crate::behaviour::{Order, WebhookPlan};
use crate::{Delivery, State};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// The `Stripe-Signature` header for `body` signed at `t` (Unix seconds)
/// with `secret`: `t={t},v1={hex HMAC-SHA256 of "{t}.{body}"}`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in tag.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={t},v1={hex}")
}

/// One event on its way.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub id: String,
    pub body: Bytes,
}

/// The events one action made, how to deliver them, and where.
#[derive(Debug)]
pub(crate) struct Batch {
    pub events: Vec<Outgoing>,
    pub plan: WebhookPlan,
    pub url: Option<String>,
}

/// Starts delivering `batch` on a tracked task (nothing without a URL, or
/// when the plan drops it).
pub(crate) fn dispatch(state: &Arc<State>, batch: Batch) {
    let Some(url) = batch.url.clone() else {
        tracing::debug!(
            events = batch.events.len(),
            "stripe simulator has no webhook URL; events recorded only"
        );
        return;
    };
    if batch.plan.drop || batch.events.is_empty() {
        return;
    }
    state.tracker.spawn(deliver(Arc::clone(state), url, batch));
}

/// Sleeps unless the simulator shuts down first; `false` when it did.
async fn pause(state: &State, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        () = state.cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn deliver(state: Arc<State>, url: String, batch: Batch) {
    let plan = batch.plan;
    if !pause(&state, plan.delay).await {
        return;
    }
    let mut events = batch.events;
    match plan.order {
        Order::AsMade => {}
        Order::Reversed => events.reverse(),
        Order::Shuffled => fastrand::shuffle(&mut events),
    }
    let sends: Vec<Outgoing> =
        events.into_iter().flat_map(|e| std::iter::repeat_n(e, 1 + plan.duplicates as usize)).collect();
    if plan.concurrent {
        let mut set = JoinSet::new();
        for e in sends {
            set.spawn(send_until_accepted(Arc::clone(&state), url.clone(), e));
        }
        // Dropping the set (the simulator's tracker cancels this task at
        // shutdown) aborts every send still running.
        while set.join_next().await.is_some() {}
    } else {
        for e in sends {
            send_until_accepted(Arc::clone(&state), url.clone(), e).await;
        }
    }
}

/// Sends one event until the receiver answers 2xx, at most the configured
/// number of times, signed anew for each send.
async fn send_until_accepted(state: Arc<State>, url: String, event: Outgoing) {
    let mut backoff = state.webhook_backoff;
    for attempt in 1..=state.webhook_attempts {
        let signature = sign(&state.webhook_secret, crate::objects::now(), &event.body);
        let send = state
            .http
            .post(&url)
            .header("Content-Type", "application/json; charset=utf-8")
            .header("Stripe-Signature", signature)
            .body(event.body.clone())
            .send();
        let result = tokio::select! {
            () = state.cancel.cancelled() => return,
            r = send => r,
        };
        let delivery = match result {
            Ok(resp) => Delivery { attempt, status: Some(resp.status().as_u16()), error: None },
            Err(e) => Delivery { attempt, status: None, error: Some(describe(&e)) },
        };
        let ok = delivery.ok();
        state.record_delivery(&event.id, delivery);
        if ok || attempt == state.webhook_attempts || !pause(&state, backoff).await {
            return;
        }
        backoff = backoff.saturating_mul(2);
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "the connection failed".into()
    }
}
