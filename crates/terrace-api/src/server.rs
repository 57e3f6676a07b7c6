//! The accept loop: hyper 1 HTTP/1.1 with a timer (without one,
//! `header_read_timeout` does nothing), one tracked task per connection, and a
//! graceful drain on shutdown bounded by the grace period.

use crate::wire::Answering;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Request headers must arrive within this, or the connection is closed.
    pub header_read_timeout: Duration,
    /// After shutdown, how long open connections get to finish.
    pub grace: Duration,
}

/// What the drain achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Every connection finished within the grace period.
    pub clean: bool,
}

/// Serves `app` on `listener` until `shutdown` is cancelled; then stops
/// accepting (the listener is closed), lets in-flight requests finish and
/// closes idle connections, waiting at most `grace`.
///
/// Cancel safety: dropping the future drops the listener and aborts every
/// connection task (they live in a `JoinSet` owned by this future).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Drained {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let conn = http.serve_connection(TokioIo::new(Answering::new(stream)), service);
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracing::info!("stopped accepting; draining connections");
    let clean = tokio::time::timeout(options.grace, graceful.shutdown()).await.is_ok();
    if !clean {
        tracing::warn!(grace = ?options.grace, "connections still open after the grace period; closing them");
        connections.abort_all();
    }
    Drained { clean }
}
