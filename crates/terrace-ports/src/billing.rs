//! Payments: the provider that sells packages and the plan (Stripe), as
//! Terrace needs it. Terrace never sees a card: it asks for hosted Checkout
//! sessions, cancels subscriptions, opens billing-portal sessions, and learns
//! every outcome from signed webhook events ([`Payments::parse_webhook`]).
//!
//! The types here carry no wire format: the adapter turns them into Stripe's
//! form-encoded requests and reads Stripe's JSON into them. Event fields are
//! the provider's own values (ids, raw statuses, metadata), unparsed: which
//! user or package they name, and what they change, is the domain's rule.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;
use terrace_domain::{Classify, ErrorCode, IdempotencyKey, UserId};

/// What a one-time package payment charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackagePrice {
    /// A price made for this session: `unit_amount` in the smallest unit of
    /// `currency` (cents), shown to the buyer as `name`.
    Inline { unit_amount: u64, currency: String, name: String },
    /// A price configured at the provider (`price_…`).
    Configured(String),
}

/// A Checkout session for one package, paid once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageCheckout {
    /// The buyer: sent as the session's `client_reference_id` and in its metadata.
    pub user: UserId,
    /// e.g. `package_10`, sent in the session's metadata.
    pub package_id: String,
    pub price: PackagePrice,
    /// The buyer's provider customer, when they have one; otherwise the
    /// provider makes one at payment (so the billing portal works later).
    pub customer: Option<String>,
    /// Where the buyer returns after paying. The provider replaces
    /// `{CHECKOUT_SESSION_ID}` in it with the session's id.
    pub success_url: String,
    /// Where the buyer returns after giving up.
    pub cancel_url: String,
}

/// A Checkout session that starts a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionCheckout {
    pub user: UserId,
    /// e.g. `monthly_pro`, sent in the session's and the subscription's metadata.
    pub plan_id: String,
    /// The provider's recurring price for the plan (`price_…`).
    pub price_id: String,
    pub customer: Option<String>,
    pub success_url: String,
    pub cancel_url: String,
}

/// A Checkout session the buyer is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    /// `cs_…`
    pub id: String,
    /// The hosted page to redirect the buyer to.
    pub url: String,
}

/// When a cancelled subscription ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAt {
    /// At the end of the period already paid for; it stays active until then.
    PeriodEnd,
    /// At once.
    Now,
}

/// A subscription as the provider answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    /// `sub_…`
    pub id: String,
    pub customer: Option<String>,
    /// The provider's raw status (`active`, `trialing`, `past_due`, `canceled`, …).
    pub status: String,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
}

/// A billing-portal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSession {
    pub id: String,
    /// The hosted portal page to redirect the customer to.
    pub url: String,
}

/// Why a payments call failed. Retrying is for the caller to decide with
/// [`Classify::retryable`]; the adapter has already retried what was safe
/// within its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentsError {
    /// MUST be returned when the provider could not be reached, dropped the
    /// connection, or answered 429 or 5xx on the last attempt. A later call
    /// with the same idempotency key may succeed.
    Unavailable { detail: String, retry_after: Option<Duration> },
    /// MUST be returned when the call's deadline passed. Whether the
    /// provider acted is unknown: call again with the same idempotency key.
    Timeout,
    /// MUST be returned when the provider refused the request (a 4xx other
    /// than 429): bad parameters, an unknown or already cancelled object, a
    /// wrong key, an idempotency key reused with other parameters. The same
    /// request will fail again.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The provider's error type (`invalid_request_error`, `idempotency_error`, …).
        error_type: String,
        /// The provider's error code (`resource_missing`, …), when it gave one.
        code: Option<String>,
        message: String,
    },
    /// MUST be returned when the request could not be built or the answer
    /// could not be read (a 2xx without the fields it must have).
    Internal { detail: String },
}

impl std::fmt::Display for PaymentsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable { detail, .. } => write!(f, "the payment provider is unavailable: {detail}"),
            Self::Timeout => f.write_str("the payment provider did not answer in time"),
            Self::Rejected { status, error_type, code, message } => {
                write!(f, "the payment provider refused the request ({status} {error_type}")?;
                if let Some(code) = code {
                    write!(f, ", {code}")?;
                }
                write!(f, "): {message}")
            }
            Self::Internal { detail } => write!(f, "payments: {detail}"),
        }
    }
}

impl std::error::Error for PaymentsError {}

impl PaymentsError {
    /// The provider refused an idempotency key used before with other
    /// parameters (`idempotency_error`).
    pub fn idempotency_key_reused(&self) -> bool {
        matches!(self, Self::Rejected { error_type, .. } if error_type == "idempotency_error")
    }
}

impl Classify for PaymentsError {
    fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout)
    }

    fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable { .. } => ErrorCode::UpstreamUnavailable,
            Self::Timeout => ErrorCode::UpstreamTimeout,
            Self::Rejected { .. } => ErrorCode::UpstreamRejected,
            Self::Internal { .. } => ErrorCode::Internal,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why a webhook's signature was refused. Checked before anything in the
/// body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No header, or an empty one.
    Missing,
    /// No `t=` timestamp, a second one, or one that is not a number.
    Malformed,
    /// No `v1=` signature at all.
    NoSignature,
    /// No `v1=` signature matches the body under the secret.
    Mismatch,
    /// The timestamp is older than the tolerance.
    Stale,
    /// The timestamp is further ahead than the tolerance.
    Future,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "the signature header is missing",
            Self::Malformed => "the signature header is malformed",
            Self::NoSignature => "the signature header has no v1 signature",
            Self::Mismatch => "no signature matches the body",
            Self::Stale => "the signature timestamp is too old",
            Self::Future => "the signature timestamp is in the future",
        })
    }
}

impl std::error::Error for SignatureError {}

/// Why a webhook delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookError {
    /// The signature failed: nothing in the body was read.
    Signature(SignatureError),
    /// Signed, but not an event the adapter can read (not JSON, no id or
    /// type, a known type whose object lacks a field it must have).
    Malformed(String),
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signature(e) => std::fmt::Display::fmt(e, f),
            Self::Malformed(detail) => write!(f, "malformed event: {detail}"),
        }
    }
}

impl std::error::Error for WebhookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Signature(e) => Some(e),
            Self::Malformed(_) => None,
        }
    }
}

impl From<SignatureError> for WebhookError {
    fn from(e: SignatureError) -> Self {
        Self::Signature(e)
    }
}

/// One verified event from the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    /// `evt_…`: each id must take effect at most once.
    pub id: String,
    /// The provider's type (`checkout.session.completed`, …), for logs and metrics.
    pub event_type: String,
    /// When the provider made the event, in Unix seconds (its only ordering).
    pub created: i64,
    pub kind: PaymentEventKind,
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEventKind {
    /// `checkout.session.completed`
    CheckoutCompleted(CheckoutCompleted),
    /// `customer.subscription.created`, `.updated`, `.deleted`
    SubscriptionChanged(SubscriptionChanged),
    /// `invoice.payment_succeeded`
    InvoicePaid(InvoiceEvent),
    /// `invoice.payment_failed`
    InvoiceFailed(InvoiceEvent),
    /// Any other type: acknowledge and ignore.
    Other,
}

/// A Checkout session's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutMode {
    Payment,
    Subscription,
    Setup,
    /// A mode this adapter does not know.
    Unknown,
}

/// A Checkout session's payment status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Paid,
    Unpaid,
    NoPaymentRequired,
    Unknown,
}

/// A completed Checkout session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutCompleted {
    /// `cs_…`
    pub session_id: String,
    pub mode: CheckoutMode,
    pub payment_status: PaymentStatus,
    /// What Terrace sent as `client_reference_id` (a user id), unchecked.
    pub client_reference_id: Option<String>,
    /// `pi_…` for a payment: the once-per-payment reference.
    pub payment_intent: Option<String>,
    pub customer: Option<String>,
    /// `sub_…` for a subscription.
    pub subscription: Option<String>,
    /// `metadata.user_id`, `metadata.package_id`, `metadata.plan_id`, unchecked.
    pub user_id: Option<String>,
    pub package_id: Option<String>,
    pub plan_id: Option<String>,
    pub amount_total: Option<u64>,
    pub currency: Option<String>,
}

/// Which subscription event it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionAction {
    Created,
    Updated,
    Deleted,
}

/// A subscription as a `customer.subscription.*` event shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChanged {
    pub action: SubscriptionAction,
    /// `sub_…`
    pub subscription_id: String,
    pub customer: Option<String>,
    /// The provider's raw status (`active`, `trialing`, `past_due`, `unpaid`,
    /// `canceled`, `incomplete`, `incomplete_expired`, `paused`, …).
    pub status: String,
    /// Read from the subscription, or (API versions from 2025-03-31 on) from
    /// its first item.
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    /// When a scheduled cancellation takes effect, if one is scheduled.
    pub cancel_at: Option<DateTime<Utc>>,
    /// The first item's price (`price_…`).
    pub price_id: Option<String>,
    /// `metadata.user_id` and `metadata.plan_id` of the subscription, unchecked.
    pub user_id: Option<String>,
    pub plan_id: Option<String>,
}

/// An invoice event of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceEvent {
    /// `in_…`
    pub invoice_id: String,
    /// The subscription that billed it: `parent.subscription_details.subscription`
    /// (API versions from 2025-03-31 on) or `subscription`. `None` for an
    /// invoice of no subscription.
    pub subscription_id: Option<String>,
    pub customer: Option<String>,
    /// The end of the period the invoice pays for: the latest end of its
    /// line items' periods, else the invoice's `period_end`.
    pub period_end: Option<DateTime<Utc>>,
    /// The subscription's `user_id` metadata as the invoice carries it, unchecked.
    pub user_id: Option<String>,
}

/// The payment provider.
///
/// Every call is bounded by the adapter's deadline (`TERRACE_STRIPE_TIMEOUT`)
/// and retried inside it only when that is safe (connection errors, 429,
/// 5xx, or the provider saying so), always with the caller's idempotency
/// key: the same key with the same request never makes a second object.
///
/// Cancel safety: dropping a call's future abandons its request; whether the
/// provider acted is then unknown, and a later call with the same key
/// answers as the first would have.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Payments: Send + Sync + 'static {
    /// Starts a Checkout for one package (mode `payment`, quantity 1).
    ///
    /// Errors: as [`PaymentsError`] documents.
    async fn checkout_package(
        &self,
        request: &PackageCheckout,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, PaymentsError>;

    /// Starts a Checkout for a subscription (mode `subscription`).
    ///
    /// Errors: as [`PaymentsError`] documents.
    async fn checkout_subscription(
        &self,
        request: &SubscriptionCheckout,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, PaymentsError>;

    /// Cancels a subscription at its period end, or now. `key` guards the
    /// period-end update; cancelling now is idempotent by itself.
    ///
    /// Errors: `Rejected` (with code `resource_missing` or the like) for a
    /// subscription the provider does not have or has already ended.
    async fn cancel_subscription(
        &self,
        subscription_id: &str,
        at: CancelAt,
        key: &IdempotencyKey,
    ) -> Result<SubscriptionState, PaymentsError>;

    /// Opens a billing-portal session for `customer`, returning to `return_url`.
    ///
    /// Errors: as [`PaymentsError`] documents.
    async fn portal_session(
        &self,
        customer: &str,
        return_url: &str,
        key: &IdempotencyKey,
    ) -> Result<PortalSession, PaymentsError>;

    /// Checks a webhook's signature header (`None` when the request had
    /// none) against its raw body and the wall clock, before anything in the
    /// body is read; then reads the event. No I/O.
    ///
    /// Errors: [`WebhookError::Signature`] when the signature fails (answer
    /// 400); [`WebhookError::Malformed`] for a signed body that is no event
    /// this adapter can read.
    // The lifetime is named for mockall, which cannot mock an elided one
    // inside `Option`.
    #[allow(clippy::needless_lifetimes)]
    fn parse_webhook<'a>(
        &self,
        signature: Option<&'a str>,
        body: &[u8],
    ) -> Result<PaymentEvent, WebhookError>;
}
