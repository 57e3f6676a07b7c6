//! The real Stripe adapter (`terrace-stripe`) against the simulator over real
//! loopback HTTP, and the simulator's webhooks, pages, control endpoint and
//! bounds. Every wait is bounded; nothing sleeps to wait for something.

mod adapter;
mod control;
mod lifecycle;
mod receiver;
mod webhooks;

use receiver::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_domain::{IdempotencyKey, RetryPolicy, TimeoutKind, UserId};
use terrace_ports::{
    Observer, PackageCheckout, PackagePrice, PaymentEvent, SubscriptionCheckout, Upstream, UpstreamOutcome,
};
use terrace_stripe::{SecretKey, StripeClient, StripeConfig};
use terrace_stripe_sim::{MONTHLY_PRICE_ID, StripeSim, StripeSimConfig};

/// The longest any test waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn sim_config() -> StripeSimConfig {
    StripeSimConfig {
        webhook_timeout: Duration::from_millis(500),
        webhook_attempts: 3,
        webhook_backoff: Duration::from_millis(20),
        ..StripeSimConfig::default()
    }
}

pub async fn start() -> StripeSim {
    StripeSim::start(sim_config()).await.expect("simulator starts")
}

/// A simulator whose webhooks go to a fresh receiver.
pub async fn start_with_receiver() -> (StripeSim, Receiver) {
    let sim = start().await;
    let receiver = Receiver::start().await;
    sim.set_webhook_url(Some(receiver.url()));
    (sim, receiver)
}

/// Every upstream report, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    pub requests: Mutex<Vec<(Upstream, UpstreamOutcome)>>,
    pub timeouts: Mutex<Vec<(Upstream, TimeoutKind)>>,
}

impl Observer for Recorder {
    fn upstream_request(&self, upstream: Upstream, outcome: UpstreamOutcome, _: Duration) {
        self.requests.lock().expect("lock").push((upstream, outcome));
    }
    fn upstream_timeout(&self, upstream: Upstream, kind: TimeoutKind) {
        self.timeouts.lock().expect("lock").push((upstream, kind));
    }
    fn generation_finished(&self, _: terrace_domain::GenerationStatus, _: Duration) {}
    fn hold_voided(&self, _: terrace_domain::ErrorCode) {}
}

impl Recorder {
    pub fn outcomes(&self) -> Vec<UpstreamOutcome> {
        let r = self.requests.lock().expect("lock");
        assert!(r.iter().all(|(u, _)| *u == Upstream::Stripe), "{r:?}");
        r.iter().map(|(_, o)| *o).collect()
    }
}

/// The adapter's configuration for tests: a short deadline, fast retries.
pub fn client_config(sim: &StripeSim, timeout: Duration) -> StripeConfig {
    StripeConfig {
        connect_timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_retry_after: timeout,
        },
        ..StripeConfig::new(
            sim.base_url(),
            SecretKey::new(sim.secret_key()),
            SecretKey::new(sim.webhook_secret()),
            timeout,
        )
    }
}

pub fn client(sim: &StripeSim) -> (StripeClient, Arc<Recorder>) {
    client_with(client_config(sim, Duration::from_secs(2)))
}

pub fn client_with(config: StripeConfig) -> (StripeClient, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let client = StripeClient::new(config, recorder.clone()).expect("client builds");
    (client, recorder)
}

pub fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k).expect("key")
}

pub fn user() -> UserId {
    "6f1c0f5e-8d7a-4c51-9a57-1c2b3d4e5f60".parse().expect("uuid")
}

pub fn package() -> PackageCheckout {
    PackageCheckout {
        user: user(),
        package_id: "package_10".into(),
        price: PackagePrice::Inline {
            unit_amount: 1000,
            currency: "usd".into(),
            name: "Terrace: 10 tokens".into(),
        },
        customer: None,
        success_url: "http://127.0.0.1:9/billing/success?session_id={CHECKOUT_SESSION_ID}".into(),
        cancel_url: "http://127.0.0.1:9/billing/cancel".into(),
    }
}

pub fn plan() -> SubscriptionCheckout {
    SubscriptionCheckout {
        user: user(),
        plan_id: "monthly_pro".into(),
        price_id: MONTHLY_PRICE_ID.into(),
        customer: None,
        success_url: "http://127.0.0.1:9/billing/success".into(),
        cancel_url: "http://127.0.0.1:9/billing/cancel".into(),
    }
}

/// A plain HTTP client that follows no redirects.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Every webhook the receiver got, verified with the adapter and read.
pub fn verified_events(client: &StripeClient, receiver: &Receiver) -> Vec<PaymentEvent> {
    use terrace_ports::Payments;
    receiver
        .received()
        .iter()
        .map(|r| client.parse_webhook(r.signature.as_deref(), &r.body).expect("a verified event"))
        .collect()
}
