//! The billing routes of CONTRACT §7: packages and the plan, Checkout for
//! both, the subscription, its cancellation, the billing portal, and Stripe's
//! webhook. The webhook is the only thing that credits tokens or changes a
//! subscription; these routes only ask Stripe and show what the ledger holds.

use crate::problem::{FieldError, Problem};
use crate::routes::{Authed, idempotency_key, json, json_body};
use crate::{AppState, views};
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use terrace_domain::billing::{
    BillingChange, BillingEvent, CURRENCY, EventOrder, MONTHLY_PRO, PACKAGES, Package, Plan, Subscription,
    SubscriptionChange, SubscriptionStatus,
};
use terrace_domain::{IdempotencyKey, UserId};
use terrace_ports::{
    CancelAt, CheckoutMode, PackageCheckout, PackagePrice, PaymentEvent, PaymentEventKind, PaymentStatus,
    Payments, PaymentsError, SubscriptionAction, SubscriptionCheckout, WebhookError,
};
use terrace_wire::{
    CancelSubscriptionRequest, CheckoutRequest, CheckoutSession, PortalSession, SubscribeRequest,
    WebhookReceipt,
};

/// Webhook bodies may be larger than API requests (Stripe's events carry
/// whole objects).
pub const WEBHOOK_BODY_LIMIT: usize = 256 * 1024;

/// The plan on offer: only when its Stripe price is configured.
fn offered(s: &AppState) -> Option<(Plan, String)> {
    s.0.cfg.billing.monthly_pro_price.clone().map(|price| (MONTHLY_PRO, price))
}

fn payments(s: &AppState) -> Result<&dyn Payments, Problem> {
    s.0.payments.as_deref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "billing_unavailable",
            "billing is not set up on this instance",
        )
    })
}

fn from_payments(e: &PaymentsError) -> Problem {
    let unavailable = |after: u32, detail: &str| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "payments_unavailable", detail.to_owned())
            .retry_after(after)
    };
    match e {
        PaymentsError::Unavailable { retry_after, .. } => {
            tracing::warn!(error = %e, "Stripe unavailable");
            let after = retry_after.map_or(5, |d| u32::try_from(d.as_secs().clamp(1, 60)).unwrap_or(5));
            unavailable(after, "payments are unavailable; retry shortly")
        }
        PaymentsError::Timeout => {
            tracing::warn!("Stripe did not answer in time");
            unavailable(5, "payments did not answer in time; retry shortly")
        }
        e if e.idempotency_key_reused() => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        ),
        PaymentsError::Rejected { .. } | PaymentsError::Internal { .. } => {
            tracing::error!(error = %e, "Stripe refused a request");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "payments_rejected",
                "the payment provider refused the request",
            )
        }
    }
}

/// The key Stripe sees: per user and per the caller's key (so two users'
/// keys never meet), or fresh when the caller gave none (so the adapter's
/// own retries are still safe).
fn stripe_key(what: &str, user: UserId, headers: &HeaderMap) -> Result<IdempotencyKey, Problem> {
    let theirs = idempotency_key(headers)?;
    let basis = match &theirs {
        Some(k) => format!("{what}:{user}:{}", k.as_str()),
        None => format!("{what}:{user}:{}", uuid::Uuid::new_v4()),
    };
    let key = format!("terrace-{}", crate::digest::sha256_hex(basis.as_bytes(), 16));
    Ok(IdempotencyKey::parse(&key).expect("a hex key is a valid idempotency key"))
}

fn public(s: &AppState, path: &str) -> String {
    format!("{}{path}", s.0.cfg.billing.public_url.trim_end_matches('/'))
}

/// Where Checkout returns the user: paid, or given up.
fn return_urls(s: &AppState) -> (String, String) {
    (public(s, "/billing/success?session_id={CHECKOUT_SESSION_ID}"), public(s, "/billing/cancel"))
}

async fn subscription_of(s: &AppState, user: UserId) -> Result<Subscription, Problem> {
    s.bounded(s.0.billing.subscription(user), Problem::from_ledger).await
}

fn session_created(user: UserId, session: terrace_ports::CheckoutSession) -> Response {
    tracing::info!(%user, session_id = %session.id, "checkout session created");
    json(StatusCode::CREATED, &CheckoutSession { session_id: session.id, checkout_url: session.url })
}

pub async fn packages(State(s): State<AppState>) -> Response {
    json(StatusCode::OK, &views::catalogue(offered(&s).map(|(p, _)| p)))
}

pub async fn checkout(
    State(s): State<AppState>,
    Authed(c): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let raw: CheckoutRequest = json_body(&s, &headers, body).await?;
    let package = Package::find(&raw.package_id).ok_or_else(|| {
        let ids: Vec<_> = PACKAGES.iter().map(|p| p.id).collect();
        Problem::validation(vec![FieldError {
            field: "package_id".into(),
            message: format!("must be one of: {}", ids.join(", ")),
        }])
    })?;
    let key = stripe_key("checkout", c.user, &headers)?;
    let payments = payments(&s)?;
    let (success_url, cancel_url) = return_urls(&s);
    let request = PackageCheckout {
        user: c.user,
        package_id: package.id.to_owned(),
        price: PackagePrice::Inline {
            unit_amount: package.price_cents,
            currency: CURRENCY.to_owned(),
            name: format!("Terrace: {} tokens", package.tokens),
        },
        customer: subscription_of(&s, c.user).await?.customer_id,
        success_url,
        cancel_url,
    };
    let session = payments.checkout_package(&request, &key).await.map_err(|e| from_payments(&e))?;
    Ok(session_created(c.user, session))
}

pub async fn subscribe(
    State(s): State<AppState>,
    Authed(c): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let raw: SubscribeRequest = json_body(&s, &headers, body).await?;
    let (plan, price_id) = offered(&s).filter(|(p, _)| p.id == raw.plan_id).ok_or_else(|| {
        let on_offer =
            offered(&s).map_or("no plan is offered".to_owned(), |(p, _)| format!("must be {}", p.id));
        Problem::validation(vec![FieldError { field: "plan_id".into(), message: on_offer }])
    })?;
    let current = subscription_of(&s, c.user).await?;
    if !current.may_subscribe() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "already_subscribed",
            "a subscription is active; cancel it or let it end first",
        ));
    }
    let key = stripe_key("subscribe", c.user, &headers)?;
    let payments = payments(&s)?;
    let (success_url, cancel_url) = return_urls(&s);
    let request = SubscriptionCheckout {
        user: c.user,
        plan_id: plan.id.to_owned(),
        price_id,
        customer: current.customer_id,
        success_url,
        cancel_url,
    };
    let session = payments.checkout_subscription(&request, &key).await.map_err(|e| from_payments(&e))?;
    Ok(session_created(c.user, session))
}

pub async fn subscription(State(s): State<AppState>, Authed(c): Authed) -> Result<Response, Problem> {
    Ok(json(StatusCode::OK, &views::subscription(&subscription_of(&s, c.user).await?)))
}

pub async fn cancel_subscription(
    State(s): State<AppState>,
    Authed(c): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let raw: CancelSubscriptionRequest = json_body(&s, &headers, body).await?;
    let mut sub = subscription_of(&s, c.user).await?;
    let Some(id) = sub.subscription_id.clone().filter(|_| sub.cancellable()) else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "no_subscription",
            "there is no subscription to cancel",
        ));
    };
    let key = stripe_key(&format!("cancel:{}", raw.at_period_end), c.user, &headers)?;
    let at = if raw.at_period_end { CancelAt::PeriodEnd } else { CancelAt::Now };
    payments(&s)?.cancel_subscription(&id, at, &key).await.map_err(|e| from_payments(&e))?;
    tracing::info!(user = %c.user, subscription_id = %id, at_period_end = raw.at_period_end, "subscription cancelled at Stripe");
    // Stripe's webhook records it; the answer shows what it will say.
    if raw.at_period_end {
        sub.cancel_at_period_end = true;
    } else {
        sub.status = SubscriptionStatus::Cancelled;
    }
    Ok(json(StatusCode::OK, &views::subscription(&sub)))
}

pub async fn portal(
    State(s): State<AppState>,
    Authed(c): Authed,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Some(customer) = subscription_of(&s, c.user).await?.customer_id else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "never_paid",
            "there is no billing history to manage yet",
        ));
    };
    let key = stripe_key("portal", c.user, &headers)?;
    let session = payments(&s)?
        .portal_session(&customer, &public(&s, "/"), &key)
        .await
        .map_err(|e| from_payments(&e))?;
    Ok(json(StatusCode::CREATED, &PortalSession { url: session.url }))
}

/// `POST /v1/webhooks/stripe`: the signature is checked before anything is
/// parsed (400 when it fails); each event takes effect at most once; a write
/// that fails answers 503 so that Stripe delivers the event again.
pub async fn webhook(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
    let payments = payments(&s)?;
    let bytes = crate::edge::read_body(body, WEBHOOK_BODY_LIMIT).await?;
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let metrics = &s.0.metrics;
    let event = match payments.parse_webhook(signature, &bytes) {
        Ok(e) => billing_event(&e),
        Err(WebhookError::Signature(why)) => {
            tracing::warn!(%why, "webhook refused: bad signature");
            metrics.webhook("unknown", "bad_signature");
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad_signature",
                "the Stripe-Signature does not verify",
            ));
        }
        Err(WebhookError::Malformed(why)) => {
            // Signed by Stripe but unreadable here: acknowledged, so that it
            // is not sent forever, and logged for an operator.
            tracing::error!(%why, "a signed webhook could not be read; acknowledged and ignored");
            metrics.webhook("unknown", "ignored");
            return Ok(json(StatusCode::OK, &receipt("ignored")));
        }
    };
    match s.bounded(s.0.billing.apply_event(&event, s.0.cfg.trial_credits), Problem::from_ledger).await {
        Ok(outcome) => {
            tracing::info!(event_id = %event.id, event_type = %event.kind, outcome = outcome.as_str(), "webhook");
            metrics.webhook(&event.kind, outcome.as_str());
            Ok(json(StatusCode::OK, &receipt(outcome.as_str())))
        }
        Err(p) => {
            tracing::error!(event_id = %event.id, event_type = %event.kind, code = p.code, "webhook not applied; Stripe will deliver it again");
            metrics.webhook(&event.kind, "failed");
            // Always a 5xx: Stripe retries those.
            let status = if p.status.is_server_error() { p.status } else { StatusCode::SERVICE_UNAVAILABLE };
            Err(Problem { status, ..p })
        }
    }
}

fn receipt(outcome: &str) -> WebhookReceipt {
    WebhookReceipt { received: true, outcome: outcome.to_owned() }
}

/// A user id as Terrace sent it (canonical form only).
fn user_of(raw: Option<&str>) -> Option<UserId> {
    let raw = raw?;
    let id = uuid::Uuid::try_parse(raw).ok()?;
    (id.hyphenated().to_string() == raw).then_some(UserId(id))
}

/// What a verified Stripe event does, by the rules of CONTRACT §7: a paid
/// payment Checkout credits its package to the user it names; a
/// subscription Checkout activates; subscription and invoice events keep
/// the status, period end and cancel flag. Anything else is ignored.
pub(crate) fn billing_event(e: &PaymentEvent) -> BillingEvent {
    let at = |rank| EventOrder { created: e.created, rank };
    let (order, change) = match &e.kind {
        PaymentEventKind::CheckoutCompleted(c) => {
            let user = user_of(c.client_reference_id.as_deref()).or_else(|| user_of(c.user_id.as_deref()));
            let paid = matches!(c.payment_status, PaymentStatus::Paid | PaymentStatus::NoPaymentRequired);
            let change = match (c.mode, user) {
                (CheckoutMode::Payment, Some(user)) if c.payment_status == PaymentStatus::Paid => {
                    match (c.package_id.as_deref().and_then(Package::find), &c.payment_intent) {
                        (Some(package), Some(pi)) => BillingChange::Purchase {
                            user,
                            package,
                            payment_intent: pi.clone(),
                            customer_id: c.customer.clone(),
                        },
                        _ => {
                            tracing::warn!(session_id = %c.session_id, "a paid session names no known package or payment");
                            BillingChange::Ignored
                        }
                    }
                }
                (CheckoutMode::Subscription, Some(user)) => BillingChange::Subscription {
                    user: Some(user),
                    change: SubscriptionChange {
                        customer_id: c.customer.clone(),
                        subscription_id: c.subscription.clone(),
                        plan: c.plan_id.clone().filter(|p| Plan::find(p).is_some()),
                        status: paid.then_some(SubscriptionStatus::Active),
                        ..Default::default()
                    },
                },
                _ => BillingChange::Ignored,
            };
            (at(2), change)
        }
        PaymentEventKind::SubscriptionChanged(c) => {
            // Within one second, the subscription object's own events are
            // the newest word on it: an update (a cancellation scheduled
            // just after paying, say) outranks the invoice of that second.
            let rank = match c.action {
                SubscriptionAction::Created => 1,
                SubscriptionAction::Updated => 4,
                SubscriptionAction::Deleted => 5,
            };
            let status = match c.action {
                SubscriptionAction::Deleted => Some(SubscriptionStatus::Cancelled),
                _ => SubscriptionStatus::from_stripe(&c.status),
            };
            let change = SubscriptionChange {
                customer_id: c.customer.clone(),
                subscription_id: Some(c.subscription_id.clone()),
                plan: c.plan_id.clone().filter(|p| Plan::find(p).is_some()),
                status,
                current_period_end: c.current_period_end,
                cancel_at_period_end: Some(c.cancel_at_period_end),
            };
            (at(rank), BillingChange::Subscription { user: user_of(c.user_id.as_deref()), change })
        }
        PaymentEventKind::InvoicePaid(i) | PaymentEventKind::InvoiceFailed(i) => {
            let paid = matches!(e.kind, PaymentEventKind::InvoicePaid(_));
            let change = match &i.subscription_id {
                Some(sub) => BillingChange::Subscription {
                    user: user_of(i.user_id.as_deref()),
                    change: SubscriptionChange {
                        customer_id: i.customer.clone(),
                        subscription_id: Some(sub.clone()),
                        status: Some(if paid {
                            SubscriptionStatus::Active
                        } else {
                            SubscriptionStatus::PastDue
                        }),
                        current_period_end: if paid { i.period_end } else { None },
                        ..Default::default()
                    },
                },
                None => BillingChange::Ignored,
            };
            (at(3), change)
        }
        PaymentEventKind::Other => (at(0), BillingChange::Ignored),
    };
    BillingEvent { id: e.id.clone(), kind: e.event_type.clone(), order, change }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_ports::{InvoiceEvent, SubscriptionChanged};

    fn event(created: i64, kind: PaymentEventKind) -> PaymentEvent {
        PaymentEvent { id: format!("evt_{created}"), event_type: "t".into(), created, kind }
    }

    fn updated(cancel_at_period_end: bool) -> PaymentEventKind {
        PaymentEventKind::SubscriptionChanged(SubscriptionChanged {
            action: SubscriptionAction::Updated,
            subscription_id: "sub_1".into(),
            customer: Some("cus_1".into()),
            status: "active".into(),
            current_period_end: None,
            cancel_at_period_end,
            cancel_at: None,
            price_id: None,
            user_id: None,
            plan_id: None,
        })
    }

    /// The bytes the billing routes send, field order included.
    #[test]
    fn the_billing_views_are_pinned() {
        assert_eq!(
            to(&views::catalogue(Some(MONTHLY_PRO))),
            concat!(
                r#"{"packages":[{"id":"package_10","tokens":10,"price_cents":1000,"currency":"usd"},"#,
                r#"{"id":"package_50","tokens":50,"price_cents":4500,"currency":"usd"},"#,
                r#"{"id":"package_100","tokens":100,"price_cents":9000,"currency":"usd"},"#,
                r#"{"id":"package_500","tokens":500,"price_cents":40000,"currency":"usd"}],"#,
                r#""plans":[{"id":"monthly_pro","price_cents":9900,"currency":"usd","interval":"month"}]}"#
            )
        );
        assert!(to(&views::catalogue(None)).ends_with(r#""plans":[]}"#));
        let sub = Subscription {
            plan: Some("monthly_pro".into()),
            status: SubscriptionStatus::PastDue,
            current_period_end: chrono::DateTime::from_timestamp(2_000_000_000, 250_000_000),
            cancel_at_period_end: false,
            ..Subscription::default()
        };
        assert_eq!(
            to(&views::subscription(&sub)),
            r#"{"plan":"monthly_pro","status":"past_due","current_period_end":"2033-05-18T03:33:20Z","cancel_at_period_end":false}"#
        );
        assert_eq!(
            to(&views::subscription(&Subscription::default())),
            r#"{"plan":null,"status":"none","current_period_end":null,"cancel_at_period_end":false}"#
        );
        assert_eq!(
            to(&CheckoutSession { session_id: "cs_1".into(), checkout_url: "https://pay/cs_1".into() }),
            r#"{"session_id":"cs_1","checkout_url":"https://pay/cs_1"}"#
        );
        assert_eq!(to(&PortalSession { url: "https://portal/1".into() }), r#"{"url":"https://portal/1"}"#);
        assert_eq!(to(&receipt("duplicate")), r#"{"received":true,"outcome":"duplicate"}"#);
    }

    fn to<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn within_one_second_the_subscription_s_update_is_newer_than_the_invoice() {
        let invoice = PaymentEventKind::InvoicePaid(InvoiceEvent {
            invoice_id: "in_1".into(),
            subscription_id: Some("sub_1".into()),
            customer: Some("cus_1".into()),
            period_end: None,
            user_id: None,
        });
        let same_second = billing_event(&event(100, updated(true))).order;
        assert!(same_second > billing_event(&event(100, invoice.clone())).order);
        // A later second is newer whatever the kind.
        assert!(billing_event(&event(101, invoice)).order > same_second);
        // Applied in either order, the cancellation scheduled in the
        // invoice's second stays scheduled.
        let mut sub = Subscription::default();
        for e in [
            event(100, updated(true)),
            event(
                100,
                PaymentEventKind::InvoicePaid(InvoiceEvent {
                    invoice_id: "in_1".into(),
                    subscription_id: Some("sub_1".into()),
                    customer: Some("cus_1".into()),
                    period_end: None,
                    user_id: None,
                }),
            ),
        ] {
            let BillingEvent { order, change: BillingChange::Subscription { change, .. }, .. } =
                billing_event(&e)
            else {
                panic!("a subscription change")
            };
            sub.apply(&change, order);
        }
        assert!(sub.cancel_at_period_end, "{sub:?}");
    }
}
