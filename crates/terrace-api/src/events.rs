//! `GET /v1/generations/{id}/events`: a `text/event-stream` of the
//! generation. The first event is sent at once, then one on every change
//! (store notifications, with a bounded re-read as the fallback), a `:
//! keepalive` comment every keepalive interval; the stream ends after a
//! terminal state, on shutdown, and at the latest after the generation
//! timeout plus one minute. Dropping the body (the client left) drops
//! everything: no task is left behind.

use crate::AppState;
use crate::edge::Capacity;
use crate::views;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::convert::Infallible;
use std::pin::Pin;
use terrace_domain::{Generation, GenerationId};
use terrace_metrics::Gauge;
use terrace_ports::Notification;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep, interval_at, sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Counts the stream in `terrace_event_streams_active` while it lives.
struct Active(Gauge);
impl Active {
    fn new(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}
impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Watch {
    state: AppState,
    id: GenerationId,
    first: Option<Generation>,
    last: Option<String>,
    done: bool,
    notes: Option<BoxStream<'static, Notification>>,
    poll: Interval,
    keepalive: Interval,
    closes: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    _active: Active,
    _capacity: Capacity,
}

fn frame(json: &str) -> Bytes {
    Bytes::from(format!("event: generation\ndata: {json}\n\n"))
}

impl Watch {
    /// The next frame, or `None` when the stream should end.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(g) = self.first.take() {
            return Some(self.emit(views::generation_json(&g), g.status.is_terminal()));
        }
        loop {
            let refresh = tokio::select! {
                biased;
                _ = self.shutdown.as_mut() => return None,
                _ = self.closes.as_mut() => return None,
                n = next_note(&mut self.notes) => match n {
                    Some(Notification::Changed(id) | Notification::CancelRequested(id) | Notification::Created(id)) => id == self.id,
                    None => { self.notes = None; false }
                },
                _ = self.poll.tick() => true,
                _ = self.keepalive.tick() => return Some(Bytes::from_static(b": keepalive\n\n")),
            };
            if !refresh {
                continue;
            }
            let read =
                tokio::time::timeout(self.state.0.cfg.store_timeout, self.state.0.store.get(self.id)).await;
            match read {
                Ok(Ok(Some(g))) => {
                    let json = views::generation_json(&g);
                    if self.last.as_deref() != Some(json.as_str()) {
                        return Some(self.emit(json, g.status.is_terminal()));
                    }
                }
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => tracing::debug!(error = %e, "event stream re-read failed; retrying"),
                Err(_) => tracing::debug!("event stream re-read timed out; retrying"),
            }
        }
    }

    /// Frames a snapshot already rendered to JSON (each snapshot is
    /// rendered once: the same text decides whether it changed).
    fn emit(&mut self, json: String, terminal: bool) -> Bytes {
        let out = frame(&json);
        self.last = Some(json);
        self.done = terminal;
        out
    }
}

async fn next_note(notes: &mut Option<BoxStream<'static, Notification>>) -> Option<Notification> {
    match notes {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The body of an event stream for `g`, which the caller may see. `notes`
/// was subscribed before `g` was read, so no change falls between them.
pub(crate) fn stream(
    state: AppState,
    g: Generation,
    notes: BoxStream<'static, Notification>,
    capacity: Capacity,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let cfg = &state.0.cfg;
    let now = Instant::now();
    let mut poll = interval_at(now + cfg.event_poll_interval, cfg.event_poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut keepalive = interval_at(now + cfg.keepalive_interval, cfg.keepalive_interval);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watch = Watch {
        id: g.id,
        first: Some(g),
        last: None,
        done: false,
        notes: Some(notes),
        poll,
        keepalive,
        closes: Box::pin(sleep(cfg.generation_timeout + cfg.event_stream_slack)),
        shutdown: Box::pin(state.0.shutdown.clone().cancelled_owned()),
        _active: Active::new(state.0.metrics.event_streams()),
        _capacity: capacity,
        state,
    };
    futures::stream::unfold(watch, |mut w| async move { w.next().await.map(|b| (Ok(b), w)) })
}
