//! Reading a verified event: `{"id": "evt_…", "type": "…", "created": …,
//! "data": {"object": {…}}}` into [`PaymentEvent`]. Types Terrace does not
//! act on become [`PaymentEventKind::Other`] without their object being read.

use crate::wire::{self, id, meta, time};
use serde::Deserialize;
use serde_json::value::RawValue;
use terrace_ports::{
    CheckoutCompleted, CheckoutMode, InvoiceEvent, PaymentEvent, PaymentEventKind, PaymentStatus,
    SubscriptionAction, SubscriptionChanged, WebhookError,
};

#[derive(Deserialize)]
struct RawEvent<'a> {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
    #[serde(borrow)]
    data: RawData<'a>,
}

/// The object as it was sent: checked to be JSON, then read straight into
/// the type the event's type names, or not at all.
#[derive(Deserialize)]
struct RawData<'a> {
    #[serde(borrow)]
    object: &'a RawValue,
}

fn malformed(what: &str, e: impl std::fmt::Display) -> WebhookError {
    WebhookError::Malformed(format!("{what}: {e}"))
}

/// Reads an event body. Call only after [`crate::verify`] accepted it.
pub fn parse_event(body: &[u8]) -> Result<PaymentEvent, WebhookError> {
    let raw: RawEvent = serde_json::from_slice(body).map_err(|e| malformed("not a Stripe event", e))?;
    let object = raw.data.object;
    let kind = match raw.event_type.as_str() {
        "checkout.session.completed" => {
            let s: wire::Session =
                serde_json::from_str(object.get()).map_err(|e| malformed("checkout session", e))?;
            PaymentEventKind::CheckoutCompleted(checkout(s))
        }
        "customer.subscription.created" => subscription(object, SubscriptionAction::Created)?,
        "customer.subscription.updated" => subscription(object, SubscriptionAction::Updated)?,
        "customer.subscription.deleted" => subscription(object, SubscriptionAction::Deleted)?,
        "invoice.payment_succeeded" => PaymentEventKind::InvoicePaid(invoice(object)?),
        "invoice.payment_failed" => PaymentEventKind::InvoiceFailed(invoice(object)?),
        _ => PaymentEventKind::Other,
    };
    Ok(PaymentEvent { id: raw.id, event_type: raw.event_type, created: raw.created, kind })
}

fn checkout(s: wire::Session) -> CheckoutCompleted {
    let mode = match s.mode.as_deref() {
        Some("payment") => CheckoutMode::Payment,
        Some("subscription") => CheckoutMode::Subscription,
        Some("setup") => CheckoutMode::Setup,
        _ => CheckoutMode::Unknown,
    };
    let payment_status = match s.payment_status.as_deref() {
        Some("paid") => PaymentStatus::Paid,
        Some("unpaid") => PaymentStatus::Unpaid,
        Some("no_payment_required") => PaymentStatus::NoPaymentRequired,
        _ => PaymentStatus::Unknown,
    };
    CheckoutCompleted {
        user_id: meta(&s.metadata, "user_id"),
        package_id: meta(&s.metadata, "package_id"),
        plan_id: meta(&s.metadata, "plan_id"),
        session_id: s.id,
        mode,
        payment_status,
        client_reference_id: s.client_reference_id.filter(|c| !c.is_empty()),
        payment_intent: id(s.payment_intent),
        customer: id(s.customer),
        subscription: id(s.subscription),
        amount_total: s.amount_total,
        currency: s.currency,
    }
}

fn subscription(object: &RawValue, action: SubscriptionAction) -> Result<PaymentEventKind, WebhookError> {
    let s: wire::Subscription =
        serde_json::from_str(object.get()).map_err(|e| malformed("subscription", e))?;
    Ok(PaymentEventKind::SubscriptionChanged(SubscriptionChanged {
        action,
        current_period_end: time(s.period_end()),
        price_id: s.price_id(),
        user_id: meta(&s.metadata, "user_id"),
        plan_id: meta(&s.metadata, "plan_id"),
        cancel_at_period_end: s.cancel_at_period_end.unwrap_or(false),
        cancel_at: time(s.cancel_at),
        subscription_id: s.id,
        customer: id(s.customer),
        status: s.status,
    }))
}

fn invoice(object: &RawValue) -> Result<InvoiceEvent, WebhookError> {
    let i: wire::Invoice = serde_json::from_str(object.get()).map_err(|e| malformed("invoice", e))?;
    Ok(InvoiceEvent {
        subscription_id: i.subscription_id(),
        user_id: i.user_id(),
        period_end: time(i.paid_through()),
        customer: id(i.customer.clone()),
        invoice_id: i.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn at(s: i64) -> Option<chrono::DateTime<chrono::Utc>> {
        DateTime::from_timestamp(s, 0)
    }

    fn event(event_type: &str, object: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "id": "evt_1OabcDEF", "object": "event", "api_version": "2025-03-31.basil",
            "created": 1_733_000_000, "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": event_type, "data": {"object": object},
        })
        .to_string()
        .into_bytes()
    }

    fn kind(body: &[u8]) -> PaymentEventKind {
        parse_event(body).expect("parses").kind
    }

    #[test]
    fn a_paid_package_checkout_reads_whole() {
        let body = event(
            "checkout.session.completed",
            serde_json::json!({
                "id": "cs_test_a1b2", "object": "checkout.session", "mode": "payment",
                "status": "complete", "payment_status": "paid",
                "client_reference_id": "6f1c0f5e-8d7a-4c51-9a57-1c2b3d4e5f60",
                "customer": "cus_Q1", "payment_intent": "pi_3Qabc", "subscription": null,
                "amount_total": 1000, "currency": "usd", "livemode": false,
                "metadata": {"package_id": "package_10", "user_id": "6f1c0f5e-8d7a-4c51-9a57-1c2b3d4e5f60"},
                "customer_details": {"email": "a@example.com", "name": null},
                "automatic_tax": {"enabled": false}, "custom_fields": [], "expires_at": 1_733_086_400,
                "success_url": "https://terrace.example/billing/success", "url": null,
            }),
        );
        let e = parse_event(&body).expect("parses");
        assert_eq!(
            (e.id.as_str(), e.event_type.as_str(), e.created),
            ("evt_1OabcDEF", "checkout.session.completed", 1_733_000_000)
        );
        assert_eq!(
            e.kind,
            PaymentEventKind::CheckoutCompleted(CheckoutCompleted {
                session_id: "cs_test_a1b2".into(),
                mode: CheckoutMode::Payment,
                payment_status: PaymentStatus::Paid,
                client_reference_id: Some("6f1c0f5e-8d7a-4c51-9a57-1c2b3d4e5f60".into()),
                payment_intent: Some("pi_3Qabc".into()),
                customer: Some("cus_Q1".into()),
                subscription: None,
                user_id: Some("6f1c0f5e-8d7a-4c51-9a57-1c2b3d4e5f60".into()),
                package_id: Some("package_10".into()),
                plan_id: None,
                amount_total: Some(1000),
                currency: Some("usd".into()),
            })
        );
    }

    #[test]
    fn a_subscription_checkout_with_expanded_fields_reads_their_ids() {
        let body = event(
            "checkout.session.completed",
            serde_json::json!({
                "id": "cs_test_sub", "mode": "subscription", "payment_status": "paid",
                "client_reference_id": "u1", "payment_intent": null,
                "customer": {"id": "cus_Q2", "object": "customer"},
                "subscription": {"id": "sub_9", "object": "subscription", "status": "active"},
                "metadata": {"plan_id": "monthly_pro"},
            }),
        );
        let PaymentEventKind::CheckoutCompleted(c) = kind(&body) else { panic!("a checkout") };
        assert_eq!(c.mode, CheckoutMode::Subscription);
        assert_eq!((c.customer.as_deref(), c.subscription.as_deref()), (Some("cus_Q2"), Some("sub_9")));
        assert_eq!((c.plan_id.as_deref(), c.payment_intent), (Some("monthly_pro"), None));
    }

    #[test]
    fn subscriptions_read_their_period_from_either_api_version() {
        // Since 2025-03-31: the period is on the items.
        let basil = serde_json::json!({
            "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "past_due",
            "cancel_at_period_end": true, "cancel_at": 1_735_000_000, "canceled_at": null,
            "metadata": {"user_id": "u1", "plan_id": "monthly_pro"},
            "items": {"object": "list", "data": [{
                "id": "si_1", "object": "subscription_item",
                "current_period_start": 1_732_400_000, "current_period_end": 1_735_000_000,
                "price": {"id": "price_pro", "object": "price", "unit_amount": 9900, "recurring": {"interval": "month"}},
                "quantity": 1,
            }], "has_more": false, "url": "/v1/subscription_items?subscription=sub_1"},
        });
        let PaymentEventKind::SubscriptionChanged(s) = kind(&event("customer.subscription.updated", basil))
        else {
            panic!("a subscription")
        };
        assert_eq!(
            s,
            SubscriptionChanged {
                action: SubscriptionAction::Updated,
                subscription_id: "sub_1".into(),
                customer: Some("cus_1".into()),
                status: "past_due".into(),
                current_period_end: at(1_735_000_000),
                cancel_at_period_end: true,
                cancel_at: at(1_735_000_000),
                price_id: Some("price_pro".into()),
                user_id: Some("u1".into()),
                plan_id: Some("monthly_pro".into()),
            }
        );
        // Before: on the subscription itself; metadata may be empty.
        let acacia = serde_json::json!({
            "id": "sub_2", "customer": "cus_2", "status": "canceled", "current_period_end": 1_734_000_000,
            "cancel_at_period_end": false, "metadata": {}, "items": {"data": []},
        });
        let PaymentEventKind::SubscriptionChanged(s) = kind(&event("customer.subscription.deleted", acacia))
        else {
            panic!("a subscription")
        };
        assert_eq!(
            (s.action, s.current_period_end, s.user_id),
            (SubscriptionAction::Deleted, at(1_734_000_000), None)
        );
        let created = serde_json::json!({"id": "sub_3", "status": "incomplete"});
        let PaymentEventKind::SubscriptionChanged(s) = kind(&event("customer.subscription.created", created))
        else {
            panic!("a subscription")
        };
        assert_eq!(
            (s.action, s.status.as_str(), s.cancel_at_period_end),
            (SubscriptionAction::Created, "incomplete", false)
        );
    }

    #[test]
    fn invoices_find_their_subscription_in_either_api_version() {
        let basil = serde_json::json!({
            "id": "in_1", "object": "invoice", "customer": "cus_1", "status": "paid",
            "period_start": 1_732_400_000, "period_end": 1_732_400_000,
            "parent": {"type": "subscription_details", "quote_details": null, "subscription_details": {
                "subscription": "sub_1", "metadata": {"user_id": "u1", "plan_id": "monthly_pro"},
            }},
            "lines": {"object": "list", "data": [
                {"id": "il_1", "period": {"start": 1_732_400_000, "end": 1_735_000_000}},
            ]},
        });
        assert_eq!(
            kind(&event("invoice.payment_succeeded", basil)),
            PaymentEventKind::InvoicePaid(InvoiceEvent {
                invoice_id: "in_1".into(),
                subscription_id: Some("sub_1".into()),
                customer: Some("cus_1".into()),
                period_end: at(1_735_000_000),
                user_id: Some("u1".into()),
            })
        );
        let acacia = serde_json::json!({
            "id": "in_2", "customer": "cus_2", "subscription": "sub_2", "period_end": 1_734_000_000,
            "subscription_details": {"metadata": {"user_id": "u2"}},
        });
        assert_eq!(
            kind(&event("invoice.payment_failed", acacia)),
            PaymentEventKind::InvoiceFailed(InvoiceEvent {
                invoice_id: "in_2".into(),
                subscription_id: Some("sub_2".into()),
                customer: Some("cus_2".into()),
                period_end: at(1_734_000_000),
                user_id: Some("u2".into()),
            })
        );
        let one_off = serde_json::json!({"id": "in_3", "customer": "cus_3", "parent": null});
        let PaymentEventKind::InvoicePaid(i) = kind(&event("invoice.payment_succeeded", one_off)) else {
            panic!("an invoice")
        };
        assert_eq!(i.subscription_id, None);
    }

    #[test]
    fn unknown_types_are_other_whatever_their_object() {
        let body = event("charge.refunded", serde_json::json!({"id": "ch_1", "amount": "not even a number"}));
        let e = parse_event(&body).expect("parses");
        assert_eq!((e.event_type.as_str(), e.kind), ("charge.refunded", PaymentEventKind::Other));
    }

    #[test]
    fn bodies_that_are_no_event_are_malformed() {
        for body in [
            &b"not json"[..],
            br#"{"id":"evt_1","type":"x"}"#,
            br#"{"id":"evt_1","type":"invoice.payment_failed","created":1,"data":{"object":{"customer":"cus_1"}}}"#,
            br#"{"id":"evt_1","type":"customer.subscription.updated","created":1,"data":{"object":{"id":"sub_1"}}}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                matches!(parse_event(body), Err(WebhookError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
