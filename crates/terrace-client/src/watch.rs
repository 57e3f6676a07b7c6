//! Following a generation to its end without leaking.

use crate::{Client, ClientError, Generation};
use eventsource_stream::Eventsource;
use futures::stream::{BoxStream, Stream};
use futures::{StreamExt, TryStreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, sleep_until, timeout_at};
use uuid::Uuid;

/// How long a watch may run and how it backs off.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchOptions {
    /// The watch ends with [`WatchError::MaxDuration`] after this long.
    pub max_duration: Duration,
    /// The watch ends with [`WatchError::CircuitOpen`] after this many
    /// failures in a row.
    pub max_failures: u32,
    /// Silence on the event stream longer than this counts as a broken
    /// stream (the server sends a keepalive every 15 s).
    pub stream_idle: Duration,
    /// First polling interval; it doubles while nothing changes, up to
    /// `poll_max`.
    pub poll_initial: Duration,
    pub poll_max: Duration,
}

impl WatchOptions {
    /// Ends after 6 minutes (a generation's deadline is 5) or 5 failures in a
    /// row; polls from 500 ms up to 10 s.
    pub fn standard() -> Self {
        Self {
            max_duration: Duration::from_secs(360),
            max_failures: 5,
            stream_idle: Duration::from_secs(45),
            poll_initial: Duration::from_millis(500),
            poll_max: Duration::from_secs(10),
        }
    }
}

/// Why a watch ended without a terminal state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatchError {
    #[error("gave up after {0:?} without a terminal state")]
    MaxDuration(Duration),
    #[error("gave up after {failures} failures in a row; last: {last}")]
    CircuitOpen { failures: u32, last: ClientError },
    /// An answer no retry can change (404, 401, 403).
    #[error(transparent)]
    Rejected(ClientError),
}

type Events = BoxStream<'static, Result<eventsource_stream::Event, String>>;

/// A stream of a generation's snapshots, each different from the one before,
/// ending after a terminal snapshot or with one [`WatchError`].
///
/// It spawns no task. Dropping it drops the request in flight, which closes
/// its connection: no request is made after the drop.
pub struct Watch {
    inner: BoxStream<'static, Result<Generation, WatchError>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Stream for Watch {
    type Item = Result<Generation, WatchError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct State {
    client: Client,
    id: Uuid,
    options: WatchOptions,
    deadline: Instant,
    failures: u32,
    /// Whether to (re)open the event stream; false once it broke: polling
    /// carries on from there.
    streaming: bool,
    events: Option<Events>,
    poll_delay: Duration,
    next_poll: Instant,
    last: Option<Generation>,
    done: bool,
}

impl Watch {
    pub(crate) fn new(client: Client, id: Uuid, options: WatchOptions) -> Self {
        let now = Instant::now();
        let state = State {
            client,
            id,
            deadline: now + options.max_duration,
            poll_delay: options.poll_initial,
            next_poll: now,
            options,
            failures: 0,
            streaming: true,
            events: None,
            last: None,
            done: false,
        };
        let inner =
            futures::stream::unfold(state, |mut s| async move { s.next_item().await.map(|i| (i, s)) })
                .boxed();
        Self { inner }
    }
}

impl State {
    async fn next_item(&mut self) -> Option<Result<Generation, WatchError>> {
        while !self.done {
            if Instant::now() >= self.deadline {
                self.done = true;
                return Some(Err(WatchError::MaxDuration(self.options.max_duration)));
            }
            let got = if self.streaming { self.next_streamed().await } else { self.poll().await };
            match got {
                Ok(Some(g)) => {
                    self.failures = 0;
                    let terminal = g.status.is_terminal();
                    if self.last.as_ref() != Some(&g) {
                        self.last = Some(g.clone());
                        self.done = terminal;
                        return Some(Ok(g));
                    }
                    if terminal {
                        self.done = true;
                    }
                }
                Ok(None) => {}
                Err(e) if e.permanent() => {
                    self.done = true;
                    return Some(Err(WatchError::Rejected(e)));
                }
                Err(e) => {
                    self.failures += 1;
                    tracing::debug!(failures = self.failures, error = %e, "watch: request failed");
                    self.streaming = false;
                    self.events = None;
                    if self.failures >= self.options.max_failures {
                        self.done = true;
                        return Some(Err(WatchError::CircuitOpen { failures: self.failures, last: e }));
                    }
                    self.back_off();
                }
            }
        }
        None
    }

    fn back_off(&mut self) {
        self.next_poll = Instant::now() + self.poll_delay;
        self.poll_delay = (self.poll_delay * 2).min(self.options.poll_max);
    }

    /// The next snapshot from the event stream; `Ok(None)` when the stream
    /// went silent or ended, which switches to polling.
    async fn next_streamed(&mut self) -> Result<Option<Generation>, ClientError> {
        if self.events.is_none() {
            let resp = timeout_at(self.deadline, self.client.open_events(self.id))
                .await
                .map_err(|_| ClientError::Timeout)??;
            self.events = Some(resp.bytes_stream().eventsource().map_err(|e| e.to_string()).boxed());
        }
        let Some(events) = self.events.as_mut() else { return Ok(None) };
        loop {
            let until = (Instant::now() + self.options.stream_idle).min(self.deadline);
            match timeout_at(until, events.next()).await {
                Err(_) | Ok(None) => {
                    // Silent past the keepalive, or closed before a terminal
                    // state: poll from here on.
                    self.events = None;
                    self.streaming = false;
                    self.next_poll = Instant::now();
                    return Ok(None);
                }
                Ok(Some(Err(e))) => return Err(ClientError::Transport(e)),
                Ok(Some(Ok(ev))) if ev.event == "generation" => {
                    return serde_json::from_str(&ev.data)
                        .map(Some)
                        .map_err(|e| ClientError::Decode(e.to_string()));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    async fn poll(&mut self) -> Result<Option<Generation>, ClientError> {
        sleep_until(self.next_poll.min(self.deadline)).await;
        if Instant::now() >= self.deadline {
            return Ok(None);
        }
        let g = self.client.get(self.id).await?;
        if self.last.as_ref() == Some(&g) {
            self.back_off();
        } else {
            self.poll_delay = self.options.poll_initial;
            self.next_poll = Instant::now() + self.poll_delay;
        }
        Ok(Some(g))
    }
}
