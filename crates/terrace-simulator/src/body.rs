//! The one response body type: a script of sends, pauses and silences, which
//! records how the response ended and aborts when the simulator shuts down.

use crate::{RequestEnd, RequestGuard, State};
use bytes::Bytes;
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// One step of a response body.
#[derive(Debug)]
pub(crate) enum Step {
    Send(Bytes),
    Pause(Duration),
    /// Fall silent until the client leaves or the simulator shuts down.
    Hang,
    /// `Pause(every)` then `Send(data)`, forever.
    Repeat {
        data: Bytes,
        every: Duration,
    },
}

/// The simulator is shutting down: the body ends with an error, so the
/// connection closes without a clean end of message.
#[derive(Debug, thiserror::Error)]
#[error("the simulator is shutting down")]
pub(crate) struct Aborted;

pub(crate) struct SimBody {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<Sleep>>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    guard: Option<RequestGuard>,
}

impl std::fmt::Debug for SimBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBody").field("steps", &self.steps.len()).finish()
    }
}

impl SimBody {
    pub(crate) fn new(steps: impl IntoIterator<Item = Step>, guard: RequestGuard) -> Self {
        let cancel = guard.state().cancel.clone();
        Self::build(steps, cancel, Some(guard))
    }

    fn build(
        steps: impl IntoIterator<Item = Step>,
        cancel: CancellationToken,
        guard: Option<RequestGuard>,
    ) -> Self {
        let cancelled = Box::pin(cancel.cancelled_owned());
        Self { steps: steps.into_iter().collect(), sleep: None, cancelled, guard }
    }

    /// A body sent at once.
    pub(crate) fn full(data: impl Into<Bytes>, guard: RequestGuard) -> Self {
        Self::new([Step::Send(data.into())], guard)
    }

    /// A body sent at once, for a request that is not recorded.
    pub(crate) fn untracked(data: impl Into<Bytes>, state: &State) -> Self {
        Self::build([Step::Send(data.into())], state.cancel.clone(), None)
    }

    /// `data` sent `chunk` bytes at a time, `every` apart.
    pub(crate) fn chunked_steps(data: Bytes, chunk: usize, every: Duration) -> Vec<Step> {
        let chunk = chunk.max(1);
        let mut steps = Vec::with_capacity(2 * data.len().div_ceil(chunk));
        let mut offset = 0;
        while offset < data.len() {
            if offset > 0 {
                steps.push(Step::Pause(every));
            }
            let end = (offset + chunk).min(data.len());
            steps.push(Step::Send(data.slice(offset..end)));
            offset = end;
        }
        steps
    }

    fn wait(&mut self, cx: &mut Context<'_>, every: Duration) -> Poll<()> {
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.sleep = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Aborted;

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty()
    }

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = &mut *self;
        if this.cancelled.as_mut().poll(cx).is_ready() {
            if let Some(mut g) = this.guard.take() {
                g.finish(RequestEnd::Shutdown);
            }
            return Poll::Ready(Some(Err(Aborted)));
        }
        loop {
            match this.steps.front_mut() {
                None => {
                    if let Some(mut g) = this.guard.take() {
                        g.finish(RequestEnd::Completed);
                    }
                    return Poll::Ready(None);
                }
                Some(Step::Send(data)) => {
                    let data = std::mem::take(data);
                    this.steps.pop_front();
                    if this.steps.is_empty() {
                        // hyper may not poll again once a sized body is written.
                        if let Some(mut g) = this.guard.take() {
                            g.finish(RequestEnd::Completed);
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Step::Pause(d)) => {
                    let d = *d;
                    if this.wait(cx, d).is_pending() {
                        return Poll::Pending;
                    }
                    this.steps.pop_front();
                }
                Some(Step::Hang) => return Poll::Pending,
                Some(Step::Repeat { data, every }) => {
                    let (data, every) = (data.clone(), *every);
                    if this.wait(cx, every).is_pending() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }
}
