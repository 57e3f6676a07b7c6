//! `LISTEN`/`NOTIFY`: one connection per store that listens on
//! [`CHANNEL`] and turns payloads into [`Notification`]s. It reconnects with
//! jittered backoff and stops when the store closes. Delivery is best effort:
//! what is missed while reconnecting is caught up by heartbeats, sweeps and
//! polling.

use futures::StreamExt;
use std::time::Duration;
use terrace_domain::GenerationId;
use terrace_ports::Notification;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// The channel every change is announced on.
pub(crate) const CHANNEL: &str = "terrace_generations";

/// The payload announcing `n`.
pub(crate) fn payload(n: &Notification) -> String {
    match n {
        Notification::Created(id) => format!("created {id}"),
        Notification::Changed(id) => format!("changed {id}"),
        Notification::CancelRequested(id) => format!("cancel {id}"),
    }
}

fn parse(payload: &str) -> Option<Notification> {
    let (kind, id) = payload.split_once(' ')?;
    let id: GenerationId = id.parse().ok()?;
    match kind {
        "created" => Some(Notification::Created(id)),
        "changed" => Some(Notification::Changed(id)),
        "cancel" => Some(Notification::CancelRequested(id)),
        _ => None,
    }
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Listens until `stop` is cancelled.
pub(crate) async fn run(
    cfg: tokio_postgres::Config,
    connect_timeout: Duration,
    events: broadcast::Sender<Notification>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        match listen(&cfg, connect_timeout, &events, &stop, &mut failures).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "the notification listener lost its connection"),
        }
        failures = failures.saturating_add(1);
        let step = BACKOFF_FIRST.saturating_mul(1 << failures.min(6)).min(BACKOFF_MAX);
        let wait = step / 2 + step.mul_f64(fastrand::f64() / 2.0);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One connection's life. `Ok` only when stopped.
async fn listen(
    cfg: &tokio_postgres::Config,
    connect_timeout: Duration,
    events: &broadcast::Sender<Notification>,
    stop: &CancellationToken,
    failures: &mut u32,
) -> Result<(), String> {
    let connect = tokio::time::timeout(connect_timeout + Duration::from_secs(1), cfg.connect(NoTls));
    let (client, mut connection) = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        r = connect => r.map_err(|_| "connecting timed out".to_string())?.map_err(|e| e.to_string())?,
    };
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    let listen = tokio::time::timeout(connect_timeout + Duration::from_secs(1), listen);
    tokio::pin!(listen);
    // The connection must be driven while LISTEN runs.
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = &mut listen => {
                r.map_err(|_| "LISTEN timed out".to_string())?.map_err(|e| e.to_string())?;
                break;
            }
            m = messages.next() => deliver(m, events)?,
        }
    }
    *failures = 0;
    tracing::debug!("listening for generation changes");
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = messages.next() => deliver(m, events)?,
        }
    }
}

fn deliver(
    m: Option<Result<AsyncMessage, tokio_postgres::Error>>,
    events: &broadcast::Sender<Notification>,
) -> Result<(), String> {
    match m {
        Some(Ok(AsyncMessage::Notification(n))) => {
            if let Some(n) = parse(n.payload()) {
                // No receivers is fine: nobody is watching.
                let _ = events.send(n);
            }
            Ok(())
        }
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the connection closed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let id = GenerationId::new_random();
        for n in [Notification::Created(id), Notification::Changed(id), Notification::CancelRequested(id)] {
            assert_eq!(parse(&payload(&n)), Some(n));
        }
        assert_eq!(parse("created nope"), None);
        assert_eq!(parse("other 00000000-0000-0000-0000-000000000000"), None);
    }
}
