//! Webhook delivery: resends, plans (duplicates, order, concurrency, delay,
//! dropping), the subscription lifecycle, and events of any type.

use crate::*;
use terrace_ports::{PaymentEventKind, Payments, SubscriptionAction};
use terrace_stripe_sim::{Order, WebhookPlan};

/// A paid subscription; returns its id once its three events arrived.
async fn subscribed(sim: &StripeSim, receiver: &Receiver, client: &StripeClient) -> String {
    let s = client.checkout_subscription(&plan(), &key("sub")).await.expect("created");
    sim.pay(&s.id).expect("paid");
    assert!(receiver.wait_for(WAIT, |r| r.len() >= 3).await, "{:?}", receiver.received());
    let session = sim.sessions().into_iter().find(|x| x["id"] == s.id.as_str()).expect("session");
    session["subscription"].as_str().expect("a subscription").to_owned()
}

#[tokio::test]
async fn a_refused_delivery_is_sent_again_until_accepted_within_a_bound() {
    let (sim, receiver) = start_with_receiver().await;
    receiver.answer(&[500, 503]);
    let id = sim.send_event("ping.test", serde_json::json!({"id": "x_1"}));
    assert!(sim.wait_for_events(WAIT, |e| e[0].delivered()).await, "{:?}", sim.events());
    let statuses: Vec<Option<u16>> = sim.events()[0].deliveries.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(200)]);
    assert_eq!(sim.events()[0].deliveries.iter().map(|d| d.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    let got = receiver.received();
    assert!(got.iter().all(|r| r.event_id() == id), "the same event each time");
    // Each send is signed anew, and each signature verifies.
    for r in &got {
        terrace_stripe::verify(
            r.signature.as_deref().expect("signed"),
            &r.body,
            sim.webhook_secret(),
            std::time::SystemTime::now(),
            terrace_stripe::DEFAULT_TOLERANCE,
        )
        .expect("verifies");
    }

    // A receiver that never accepts gets the configured number of sends, no more.
    receiver.answer(&[500, 500, 500, 500, 500]);
    sim.send_event("ping.test", serde_json::json!({}));
    assert!(sim.wait_for_events(WAIT, |e| e[1].deliveries.len() == 3).await, "{:?}", sim.events());
    assert!(!sim.events()[1].delivered());
    assert!(sim.shutdown().await);
    assert_eq!(sim.events()[1].deliveries.len(), 3);
}

#[tokio::test]
async fn a_receiver_that_does_not_answer_in_time_is_a_failed_send() {
    let (sim, receiver) = start_with_receiver().await;
    receiver.set_delay(Duration::from_secs(2));
    sim.send_event("ping.test", serde_json::json!({}));
    assert!(sim.wait_for_events(WAIT, |e| e[0].deliveries.len() == 3).await, "{:?}", sim.events());
    let d = &sim.events()[0].deliveries;
    assert!(d.iter().all(|d| d.status.is_none() && d.error.as_deref() == Some("timed out")), "{d:?}");
}

#[tokio::test]
async fn duplicates_arrive_as_the_same_event() {
    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = client(&sim);
    sim.script_webhooks(WebhookPlan::duplicated(2));
    let s = client.checkout_package(&package(), &key("dup")).await.expect("created");
    sim.pay(&s.id).expect("paid");
    assert!(receiver.wait_for(WAIT, |r| r.len() == 3).await, "{:?}", receiver.received());
    let events = verified_events(&client, &receiver);
    assert!(events.iter().all(|e| e == &events[0]), "{events:?}");
    assert!(
        sim.wait_for_events(WAIT, |e| e.len() == 1 && e[0].deliveries.len() == 3).await,
        "one event, sent three times: {:?}",
        sim.events()
    );
}

#[tokio::test]
async fn a_batch_can_arrive_reversed_or_all_at_once() {
    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = client(&sim);
    sim.script_webhooks(WebhookPlan { order: Order::Reversed, ..WebhookPlan::default() });
    subscribed(&sim, &receiver, &client).await;
    let types: Vec<String> = receiver.received().iter().map(|r| r.event_type()).collect();
    assert_eq!(
        types,
        ["invoice.payment_succeeded", "checkout.session.completed", "customer.subscription.created"]
    );

    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = crate::client(&sim);
    receiver.set_delay(Duration::from_millis(200));
    sim.script_webhooks(WebhookPlan { concurrent: true, duplicates: 1, ..WebhookPlan::default() });
    subscribed(&sim, &receiver, &client).await;
    assert!(receiver.wait_for(WAIT, |r| r.len() == 6).await, "{:?}", receiver.received());
    assert!(receiver.max_in_flight() >= 2, "sends overlapped: {}", receiver.max_in_flight());
    assert!(sim.wait_for_events(WAIT, |e| e.iter().all(|e| e.deliveries.len() == 2)).await);
}

#[tokio::test]
async fn a_delayed_batch_waits_and_a_dropped_one_never_comes() {
    let (sim, receiver) = start_with_receiver().await;
    sim.script_webhooks(WebhookPlan::delayed(Duration::from_millis(300)));
    let started = tokio::time::Instant::now();
    sim.send_event("ping.delayed", serde_json::json!({}));
    assert!(receiver.wait_for(WAIT, |r| r.len() == 1).await);
    assert!(receiver.received()[0].at - started >= Duration::from_millis(300));

    sim.script_webhooks(WebhookPlan::dropped());
    sim.send_event("ping.dropped", serde_json::json!({}));
    sim.send_event("ping.after", serde_json::json!({}));
    assert!(receiver.wait_for(WAIT, |r| r.len() == 2).await);
    let types: Vec<String> = receiver.received().iter().map(|r| r.event_type()).collect();
    assert_eq!(types, ["ping.delayed", "ping.after"]);
    assert_eq!(sim.events().len(), 3, "the dropped event is still recorded");
    assert!(sim.events()[1].deliveries.is_empty());
}

#[tokio::test]
async fn the_lifecycle_sends_what_stripe_would() {
    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = client(&sim);
    let sub = subscribed(&sim, &receiver, &client).await;
    let first_end = sim.subscription(&sub).expect("sub")["items"]["data"][0]["current_period_end"].as_i64();

    sim.advance_subscription(&sub, "past_due").expect("advanced");
    assert!(receiver.wait_for(WAIT, |r| r.len() == 5).await);
    sim.advance_subscription(&sub, "active").expect("renewed");
    assert!(receiver.wait_for(WAIT, |r| r.len() == 7).await);
    sim.advance_subscription(&sub, "canceled").expect("ended");
    assert!(receiver.wait_for(WAIT, |r| r.len() == 8).await);
    let events = verified_events(&client, &receiver);
    let types: Vec<&str> = events[3..].iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "invoice.payment_failed",
            "customer.subscription.updated",
            "customer.subscription.updated",
            "invoice.payment_succeeded",
            "customer.subscription.deleted",
        ]
    );
    let PaymentEventKind::InvoiceFailed(failed) = &events[3].kind else { panic!("{events:?}") };
    assert_eq!(failed.subscription_id.as_deref(), Some(sub.as_str()));
    let PaymentEventKind::SubscriptionChanged(past_due) = &events[4].kind else { panic!() };
    assert_eq!(past_due.status, "past_due");
    let PaymentEventKind::SubscriptionChanged(renewed) = &events[5].kind else { panic!() };
    assert_eq!(renewed.status, "active");
    assert!(renewed.current_period_end.map(|t| t.timestamp()) > first_end, "a renewal moves the period on");
    let PaymentEventKind::InvoicePaid(paid) = &events[6].kind else { panic!() };
    assert_eq!(paid.period_end, renewed.current_period_end);
    let PaymentEventKind::SubscriptionChanged(ended) = &events[7].kind else { panic!() };
    assert_eq!((ended.action, ended.status.as_str()), (SubscriptionAction::Deleted, "canceled"));

    assert_eq!(
        sim.advance_subscription(&sub, "sideways"),
        Err(terrace_stripe_sim::SimError::UnknownStatus("sideways".into()))
    );
    assert!(sim.advance_subscription("sub_nope", "active").is_err());
}

#[tokio::test]
async fn any_event_can_be_built_signed_and_read() {
    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = client(&sim);
    let id = sim.send_event("charge.refunded", serde_json::json!({"id": "ch_1", "object": "charge"}));
    assert!(receiver.wait_for(WAIT, |r| r.len() == 1).await);
    let e = &verified_events(&client, &receiver)[0];
    assert_eq!(
        (e.id.as_str(), e.event_type.as_str(), &e.kind),
        (id.as_str(), "charge.refunded", &PaymentEventKind::Other)
    );

    // A body signed by the simulator's own helper verifies; an old one does not.
    let body = br#"{"id":"evt_x","type":"ping","created":1,"data":{"object":{}}}"#;
    let header = sim.sign(body);
    client.parse_webhook(Some(&header), body).expect("verifies");
    let stale = sim.sign_at(body, 1_000);
    assert_eq!(
        client.parse_webhook(Some(&stale), body),
        Err(terrace_ports::WebhookError::Signature(terrace_ports::SignatureError::Stale))
    );
}

#[tokio::test]
async fn without_a_webhook_url_events_are_recorded_only() {
    let sim = start().await;
    let (client, _) = client(&sim);
    let s = client.checkout_package(&package(), &key("k")).await.expect("created");
    sim.pay(&s.id).expect("paid");
    assert_eq!(sim.events().len(), 1);
    assert!(sim.events()[0].deliveries.is_empty());
    // Once a URL is set, later events go to it.
    let receiver = Receiver::start().await;
    sim.set_webhook_url(Some(receiver.url()));
    sim.send_event("ping.test", serde_json::json!({}));
    assert!(receiver.wait_for(WAIT, |r| r.len() == 1).await);
}
