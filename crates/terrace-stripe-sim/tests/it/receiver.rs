//! A tiny webhook receiver on hyper: records what arrives, answers scripted
//! statuses (200 once the script is used up), optionally after a delay.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    pub fn event_id(&self) -> String {
        self.json()["id"].as_str().unwrap_or_default().to_owned()
    }
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    answers: Mutex<VecDeque<u16>>,
    delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    changed: Notify,
}

#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let (s, c) = (Arc::clone(&shared), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = c.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (s, c) = (Arc::clone(&s), c.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, Arc::clone(&s)));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = c.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, shared, cancel }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/webhooks/stripe", self.addr)
    }

    /// Answers these statuses, in order, to the next requests.
    pub fn answer(&self, statuses: &[u16]) {
        self.shared.answers.lock().expect("lock").extend(statuses);
    }

    /// Waits this long before answering each request.
    pub fn set_delay(&self, d: Duration) {
        *self.shared.delay.lock().expect("lock") = d;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until `condition` holds for what arrived, at most `timeout`.
    pub async fn wait_for(&self, timeout: Duration, mut condition: impl FnMut(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&self.shared.received.lock().expect("lock")) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.shared.received.lock().expect("lock"));
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    s: Arc<Shared>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (signature, content_type) = (header("stripe-signature"), header("content-type"));
    let body = req.into_body().collect().await?.to_bytes().to_vec();
    s.received.lock().expect("lock").push(Received { signature, content_type, body, at: Instant::now() });
    s.changed.notify_waiters();
    let delay = *s.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = s.answers.lock().expect("lock").pop_front().unwrap_or(200);
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{}")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    Ok(resp)
}
