//! Stripe over HTTP: the [`Payments`] port on Stripe's documented wire
//! format, with one shared `reqwest` client (no SDK; `docs/STRIPE.md` says why).
//!
//! [`StripeClient`] creates Checkout sessions for a package (mode `payment`)
//! or the plan (mode `subscription`), cancels subscriptions (at the period
//! end: `POST /v1/subscriptions/{id}` with `cancel_at_period_end=true`; now:
//! `DELETE /v1/subscriptions/{id}`), opens billing-portal sessions, and reads
//! signed webhooks ([`verify`], then [`parse_event`]).
//!
//! Requests are form-encoded with bracket notation, authenticated with
//! `Authorization: Bearer sk_…`, and carry the caller's `Idempotency-Key`
//! (POST). Errors are Stripe's `{"error": {"type", "code", "message"}}`.
//!
//! Bounds: [`StripeConfig::timeout`] is the deadline of one whole call,
//! retries included (`TERRACE_STRIPE_TIMEOUT`); [`StripeConfig::connect_timeout`]
//! bounds each connect. Within the deadline a call is retried with jittered
//! backoff ([`StripeConfig::retry`]) after a connection error, a 429, a 5xx
//! or `Stripe-Should-Retry: true`, never after another 4xx nor when Stripe
//! says `Stripe-Should-Retry: false`; a retry never sleeps past the deadline.
//! Every attempt is reported to the [`Observer`] as `upstream="stripe"`.
//!
//! Keys are held in [`SecretKey`], whose `Debug` and `Display` print `***`;
//! no error, log line or metric label carries a key or a request URL.

mod call;
mod event;
mod form;
mod webhook;
mod wire;

pub use event::parse_event;
pub use webhook::{DEFAULT_TOLERANCE, signature_header, verify};

use async_trait::async_trait;
use call::Request;
use reqwest::Method;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use terrace_domain::{IdempotencyKey, RetryPolicy};
use terrace_ports::{
    CancelAt, CheckoutSession, Observer, PackageCheckout, PaymentEvent, Payments, PaymentsError,
    PortalSession, SignatureError, SubscriptionCheckout, SubscriptionState, WebhookError,
};

/// A secret (`sk_…` or `whsec_…`). Printing it shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where Stripe is, the secrets, and how long to wait.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com` (`TERRACE_STRIPE_BASE_URL`) or a simulator's base URL.
    pub base_url: String,
    /// `STRIPE_SECRET_KEY`.
    pub secret_key: SecretKey,
    /// `STRIPE_WEBHOOK_SECRET`: the endpoint's signing secret.
    pub webhook_secret: SecretKey,
    /// One whole call, retries included (`TERRACE_STRIPE_TIMEOUT`).
    pub timeout: Duration,
    /// Establishing one connection.
    pub connect_timeout: Duration,
    /// Attempts and backoff within [`StripeConfig::timeout`].
    pub retry: RetryPolicy,
    /// How far a webhook's timestamp may be from the clock, either way.
    pub webhook_tolerance: Duration,
}

impl StripeConfig {
    /// The configuration with the adapter's usual bounds around `timeout`:
    /// connects within `min(timeout, 5 s)`; up to 3 attempts, backoff from
    /// 250 ms doubling to 2 s with equal jitter, a `Retry-After` honoured up
    /// to `timeout`; webhooks within [`DEFAULT_TOLERANCE`].
    pub fn new(
        base_url: impl Into<String>,
        secret_key: SecretKey,
        webhook_secret: SecretKey,
        timeout: Duration,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            secret_key,
            webhook_secret,
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(250),
                max_backoff: Duration::from_secs(2),
                max_retry_after: timeout,
            },
            webhook_tolerance: DEFAULT_TOLERANCE,
        }
    }
}

/// The configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the Stripe base URL is not an http(s) URL")]
    InvalidBaseUrl,
    #[error("{which} is empty")]
    EmptyKey { which: &'static str },
    #[error("{which} has characters no Stripe key has")]
    InvalidKey { which: &'static str },
    #[error("{which} must be greater than zero")]
    ZeroTimeout { which: &'static str },
    #[error("the retry policy needs at least one attempt and a backoff that does not shrink")]
    InvalidRetry,
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

/// The Stripe adapter. Cheap to clone; every clone shares one HTTP client.
#[derive(Debug, Clone)]
pub struct StripeClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    observer: Arc<dyn Observer>,
    /// Without a trailing slash.
    base_url: String,
    secret_key: SecretKey,
    /// `Bearer sk_…`, built once and marked sensitive.
    auth_header: reqwest::header::HeaderValue,
    webhook_secret: SecretKey,
    webhook_tolerance: Duration,
    timeout: Duration,
    retry: RetryPolicy,
}

impl StripeClient {
    /// Checks the configuration and builds the one HTTP client.
    pub fn new(config: StripeConfig, observer: Arc<dyn Observer>) -> Result<Self, ConfigError> {
        for (which, d) in [
            ("timeout", config.timeout),
            ("connect_timeout", config.connect_timeout),
            ("webhook_tolerance", config.webhook_tolerance),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroTimeout { which });
            }
        }
        for (which, key) in [("secret_key", &config.secret_key), ("webhook_secret", &config.webhook_secret)] {
            if key.0.trim().is_empty() {
                return Err(ConfigError::EmptyKey { which });
            }
            if !key.0.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::InvalidKey { which });
            }
        }
        let r = &config.retry;
        if r.max_attempts == 0 || r.max_backoff < r.initial_backoff {
            return Err(ConfigError::InvalidRetry);
        }
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base_url).map_err(|_| ConfigError::InvalidBaseUrl)?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::InvalidBaseUrl);
        }
        let mut auth_header =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", config.secret_key.expose()))
                .map_err(|_| ConfigError::InvalidKey { which: "secret_key" })?;
        auth_header.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // This adapter owns its retries (with the idempotency key).
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(concat!("terrace/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Client(call::describe(e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                observer,
                base_url,
                auth_header,
                secret_key: config.secret_key,
                webhook_secret: config.webhook_secret,
                webhook_tolerance: config.webhook_tolerance,
                timeout: config.timeout,
                retry: config.retry,
            }),
        })
    }

    /// [`Payments::parse_webhook`] at a given time, for tests and replays.
    pub fn parse_webhook_at(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<PaymentEvent, WebhookError> {
        let signature = signature.ok_or(SignatureError::Missing)?;
        verify(signature, body, self.inner.webhook_secret.expose(), now, self.inner.webhook_tolerance)?;
        parse_event(body)
    }

    async fn checkout(
        &self,
        form: form::Form,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, PaymentsError> {
        let request = Request {
            method: Method::POST,
            path: "/v1/checkout/sessions".into(),
            form: Some(form),
            idempotency_key: Some(key.as_str()),
        };
        let session: wire::Session = self.inner.call(request).await?;
        let url = session.url.filter(|u| !u.is_empty()).ok_or_else(|| PaymentsError::Internal {
            detail: "Stripe answered a Checkout session without a url".into(),
        })?;
        Ok(CheckoutSession { id: session.id, url })
    }
}

fn subscription_state(s: wire::Subscription) -> SubscriptionState {
    SubscriptionState {
        current_period_end: wire::time(s.period_end()),
        cancel_at_period_end: s.cancel_at_period_end.unwrap_or(false),
        customer: wire::id(s.customer),
        status: s.status,
        id: s.id,
    }
}

#[async_trait]
impl Payments for StripeClient {
    async fn checkout_package(
        &self,
        request: &PackageCheckout,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, PaymentsError> {
        self.checkout(form::package_checkout(request), key).await
    }

    async fn checkout_subscription(
        &self,
        request: &SubscriptionCheckout,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, PaymentsError> {
        self.checkout(form::subscription_checkout(request), key).await
    }

    async fn cancel_subscription(
        &self,
        subscription_id: &str,
        at: CancelAt,
        key: &IdempotencyKey,
    ) -> Result<SubscriptionState, PaymentsError> {
        if !form::path_safe(subscription_id) {
            return Err(PaymentsError::Internal { detail: "not a Stripe subscription id".into() });
        }
        let path = format!("/v1/subscriptions/{subscription_id}");
        let request = match at {
            CancelAt::PeriodEnd => Request {
                method: Method::POST,
                path,
                form: Some(form::cancel_at_period_end()),
                idempotency_key: Some(key.as_str()),
            },
            CancelAt::Now => Request { method: Method::DELETE, path, form: None, idempotency_key: None },
        };
        let s: wire::Subscription = self.inner.call(request).await?;
        Ok(subscription_state(s))
    }

    async fn portal_session(
        &self,
        customer: &str,
        return_url: &str,
        key: &IdempotencyKey,
    ) -> Result<PortalSession, PaymentsError> {
        let request = Request {
            method: Method::POST,
            path: "/v1/billing_portal/sessions".into(),
            form: Some(form::portal(customer, return_url)),
            idempotency_key: Some(key.as_str()),
        };
        let p: wire::PortalSession = self.inner.call(request).await?;
        Ok(PortalSession { id: p.id, url: p.url })
    }

    fn parse_webhook(&self, signature: Option<&str>, body: &[u8]) -> Result<PaymentEvent, WebhookError> {
        self.parse_webhook_at(signature, body, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_ports::{NoopObserver, PaymentEventKind};

    fn config() -> StripeConfig {
        StripeConfig::new(
            "https://api.stripe.com/",
            SecretKey::new("sk_test_XYZZY1234"),
            SecretKey::new("whsec_PLUGH5678"),
            Duration::from_secs(10),
        )
    }

    #[test]
    fn secrets_never_print() {
        let c = config();
        let printed = format!("{c:?} {} {:?}", c.secret_key, c.webhook_secret);
        assert!(!printed.contains("XYZZY") && !printed.contains("PLUGH"), "{printed}");
        let client = StripeClient::new(c, Arc::new(NoopObserver)).expect("builds");
        let printed = format!("{client:?}");
        assert!(!printed.contains("XYZZY") && !printed.contains("PLUGH"), "{printed}");
        assert_eq!(client.inner.base_url, "https://api.stripe.com");
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let o: Arc<dyn Observer> = Arc::new(NoopObserver);
        let mut c = config();
        c.base_url = "api.stripe.com".into();
        assert_eq!(StripeClient::new(c, o.clone()).unwrap_err(), ConfigError::InvalidBaseUrl);
        let mut c = config();
        c.timeout = Duration::ZERO;
        assert_eq!(
            StripeClient::new(c, o.clone()).unwrap_err(),
            ConfigError::ZeroTimeout { which: "timeout" }
        );
        let mut c = config();
        c.secret_key = SecretKey::new(" ");
        assert_eq!(
            StripeClient::new(c, o.clone()).unwrap_err(),
            ConfigError::EmptyKey { which: "secret_key" }
        );
        let mut c = config();
        c.webhook_secret = SecretKey::new("whsec\n1");
        assert_eq!(
            StripeClient::new(c, o.clone()).unwrap_err(),
            ConfigError::InvalidKey { which: "webhook_secret" }
        );
        let mut c = config();
        c.retry.max_attempts = 0;
        assert_eq!(StripeClient::new(c, o).unwrap_err(), ConfigError::InvalidRetry);
    }

    #[test]
    fn webhooks_are_verified_before_they_are_read() {
        let client = StripeClient::new(config(), Arc::new(NoopObserver)).expect("builds");
        let body = br#"{"id":"evt_1","type":"ping","created":1700000000,"data":{"object":{}}}"#;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        let header = signature_header("whsec_PLUGH5678", 1_700_000_000, body);
        let e = client.parse_webhook_at(Some(&header), body, now).expect("verified");
        assert_eq!((e.id.as_str(), e.kind), ("evt_1", PaymentEventKind::Other));
        assert_eq!(
            client.parse_webhook_at(None, body, now),
            Err(WebhookError::Signature(SignatureError::Missing))
        );
        // A body that is no JSON at all is refused for its signature first.
        let forged = signature_header("whsec_other", 1_700_000_000, b"garbage");
        assert_eq!(
            client.parse_webhook_at(Some(&forged), b"garbage", now),
            Err(WebhookError::Signature(SignatureError::Mismatch))
        );
        let signed_garbage = signature_header("whsec_PLUGH5678", 1_700_000_000, b"garbage");
        assert!(matches!(
            client.parse_webhook_at(Some(&signed_garbage), b"garbage", now),
            Err(WebhookError::Malformed(_))
        ));
    }
}
