//! The adapter's calls against the simulator: encoding, idempotency, the
//! error taxonomy, retries and deadlines.

use crate::*;
use std::time::Instant;
use terrace_domain::Classify;
use terrace_ports::{
    CancelAt, CheckoutMode, PaymentEventKind, PaymentStatus, Payments, PaymentsError, SubscriptionAction,
};
use terrace_stripe_sim::{ApiBehaviour, Endpoint};

#[tokio::test]
async fn the_same_key_twice_makes_one_session_and_another_body_is_refused() {
    let sim = start().await;
    let (client, recorder) = client(&sim);
    let first = client.checkout_package(&package(), &key("checkout-1")).await.expect("created");
    let again = client.checkout_package(&package(), &key("checkout-1")).await.expect("replayed");
    assert_eq!(first, again);
    assert!(first.id.starts_with("cs_test_"), "{first:?}");
    assert_eq!(first.url, format!("{}/checkout/{}", sim.base_url(), first.id));
    assert_eq!(sim.sessions().len(), 1);
    let replayed: Vec<bool> = sim.requests().iter().map(|r| r.replayed).collect();
    assert_eq!(replayed, [false, true]);
    assert!(sim.requests().iter().all(|r| r.idempotency_key.as_deref() == Some("checkout-1")));

    let other = terrace_ports::PackageCheckout { package_id: "package_50".into(), ..package() };
    let e = client.checkout_package(&other, &key("checkout-1")).await.expect_err("a reused key");
    assert!(e.idempotency_key_reused(), "{e:?}");
    assert!(!e.retryable());
    assert_eq!(sim.sessions().len(), 1);
    // A new key is a new session.
    client.checkout_package(&other, &key("checkout-2")).await.expect("created");
    assert_eq!(sim.sessions().len(), 2);
    assert_eq!(
        recorder.outcomes(),
        [UpstreamOutcome::Ok, UpstreamOutcome::Ok, UpstreamOutcome::Rejected, UpstreamOutcome::Ok]
    );
}

#[tokio::test]
async fn the_session_carries_what_the_webhook_needs() {
    let sim = start().await;
    let (client, _) = client(&sim);
    let s = client.checkout_package(&package(), &key("k")).await.expect("created");
    let session = &sim.sessions()[0];
    assert_eq!(session["id"], s.id.as_str());
    assert_eq!(session["mode"], "payment");
    assert_eq!(session["client_reference_id"], user().to_string());
    assert_eq!(session["metadata"]["package_id"], "package_10");
    assert_eq!(session["metadata"]["user_id"], user().to_string());
    assert_eq!(session["amount_total"], 1000);
    assert_eq!(session["customer_creation"], "always");
    assert_eq!(session["cancel_url"], "http://127.0.0.1:9/billing/cancel");

    let sub = client.checkout_subscription(&plan(), &key("k2")).await.expect("created");
    let session = &sim.sessions()[1];
    assert_eq!(
        (session["id"].as_str(), session["mode"].as_str()),
        (Some(sub.id.as_str()), Some("subscription"))
    );
    assert_eq!(session["metadata"]["plan_id"], "monthly_pro");
    assert_eq!(session["amount_total"], 9900);
}

#[tokio::test]
async fn paying_sends_a_signed_checkout_completed_that_the_adapter_verifies() {
    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = client(&sim);
    let s = client.checkout_package(&package(), &key("pay-1")).await.expect("created");
    sim.pay(&s.id).expect("paid");
    assert!(receiver.wait_for(WAIT, |r| !r.is_empty()).await, "no webhook arrived");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.content_type.as_deref(), Some("application/json; charset=utf-8"));
    let header = r.signature.as_deref().expect("signed");
    terrace_stripe::verify(
        header,
        &r.body,
        sim.webhook_secret(),
        std::time::SystemTime::now(),
        terrace_stripe::DEFAULT_TOLERANCE,
    )
    .expect("the signature verifies");
    assert_eq!(
        terrace_stripe::verify(
            header,
            &r.body,
            "whsec_wrong",
            std::time::SystemTime::now(),
            terrace_stripe::DEFAULT_TOLERANCE
        ),
        Err(terrace_ports::SignatureError::Mismatch)
    );
    let events = verified_events(&client, &receiver);
    assert_eq!(events[0].event_type, "checkout.session.completed");
    let PaymentEventKind::CheckoutCompleted(c) = &events[0].kind else { panic!("{events:?}") };
    assert_eq!(
        (c.session_id.as_str(), c.mode, c.payment_status),
        (s.id.as_str(), CheckoutMode::Payment, PaymentStatus::Paid)
    );
    assert!(c.payment_intent.as_deref().is_some_and(|p| p.starts_with("pi_")), "{c:?}");
    assert!(c.customer.as_deref().is_some_and(|p| p.starts_with("cus_")), "{c:?}");
    assert_eq!(c.client_reference_id.as_deref(), Some(user().to_string().as_str()));
    assert_eq!((c.package_id.as_deref(), c.amount_total), (Some("package_10"), Some(1000)));
    // Paying again changes nothing and sends nothing more.
    sim.pay(&s.id).expect("still paid");
    assert!(sim.wait_for_events(WAIT, |e| e.len() == 1 && e[0].delivered()).await, "{:?}", sim.events());
}

#[tokio::test]
async fn a_subscription_is_created_paid_cancelled_and_opens_the_portal() {
    let (sim, receiver) = start_with_receiver().await;
    let (client, _) = client(&sim);
    let s = client.checkout_subscription(&plan(), &key("sub-1")).await.expect("created");
    sim.pay(&s.id).expect("paid");
    assert!(receiver.wait_for(WAIT, |r| r.len() == 3).await, "{:?}", receiver.received());
    let events = verified_events(&client, &receiver);
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["customer.subscription.created", "checkout.session.completed", "invoice.payment_succeeded"]
    );
    let PaymentEventKind::SubscriptionChanged(created) = &events[0].kind else { panic!("{events:?}") };
    let PaymentEventKind::CheckoutCompleted(checkout) = &events[1].kind else { panic!("{events:?}") };
    let PaymentEventKind::InvoicePaid(invoice) = &events[2].kind else { panic!("{events:?}") };
    assert_eq!(created.action, SubscriptionAction::Created);
    assert_eq!(created.status, "active");
    assert_eq!(created.user_id.as_deref(), Some(user().to_string().as_str()));
    assert_eq!(created.plan_id.as_deref(), Some("monthly_pro"));
    assert_eq!(created.price_id.as_deref(), Some(MONTHLY_PRICE_ID));
    assert_eq!(checkout.mode, CheckoutMode::Subscription);
    assert_eq!(checkout.subscription.as_deref(), Some(created.subscription_id.as_str()));
    assert_eq!(invoice.subscription_id.as_deref(), Some(created.subscription_id.as_str()));
    assert_eq!(invoice.period_end, created.current_period_end);
    assert!(created.current_period_end.is_some());
    let customer = checkout.customer.clone().expect("a customer");
    let sub_id = created.subscription_id.clone();

    let state =
        client.cancel_subscription(&sub_id, CancelAt::PeriodEnd, &key("cancel-1")).await.expect("cancelled");
    assert!(state.cancel_at_period_end, "{state:?}");
    assert_eq!((state.status.as_str(), state.customer.as_deref()), ("active", Some(customer.as_str())));
    assert_eq!(state.current_period_end, created.current_period_end);
    assert!(receiver.wait_for(WAIT, |r| r.len() == 4).await);
    let PaymentEventKind::SubscriptionChanged(updated) = &verified_events(&client, &receiver)[3].kind else {
        panic!()
    };
    assert_eq!((updated.action, updated.cancel_at_period_end), (SubscriptionAction::Updated, true));

    let portal =
        client.portal_session(&customer, "http://127.0.0.1:9/", &key("portal-1")).await.expect("portal");
    assert!(portal.url.starts_with(&format!("{}/portal/", sim.base_url())), "{portal:?}");
    let page = http().get(&portal.url).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("ends at the period end") && html.contains("http://127.0.0.1:9/"), "{html}");

    let state =
        client.cancel_subscription(&sub_id, CancelAt::Now, &key("cancel-2")).await.expect("cancelled");
    assert_eq!((state.status.as_str(), state.cancel_at_period_end), ("canceled", false));
    assert!(receiver.wait_for(WAIT, |r| r.len() == 5).await);
    let PaymentEventKind::SubscriptionChanged(deleted) = &verified_events(&client, &receiver)[4].kind else {
        panic!()
    };
    assert_eq!((deleted.action, deleted.status.as_str()), (SubscriptionAction::Deleted, "canceled"));
    // Cancelling now again answers the same and sends nothing.
    let again =
        client.cancel_subscription(&sub_id, CancelAt::Now, &key("cancel-3")).await.expect("idempotent");
    assert_eq!(again.status, "canceled");
    assert_eq!(sim.events().len(), 5);
    // DELETE carries no idempotency key; the POSTs do.
    let deletes: Vec<_> = sim.requests().into_iter().filter(|r| r.method == "DELETE").collect();
    assert!(deletes.len() == 2 && deletes.iter().all(|r| r.idempotency_key.is_none()), "{deletes:?}");
}

#[tokio::test]
async fn what_stripe_refuses_comes_back_typed() {
    let sim = start().await;
    let (client, recorder) = client(&sim);
    let e = client.cancel_subscription("sub_nope", CancelAt::Now, &key("c")).await.expect_err("unknown");
    assert!(
        matches!(&e, PaymentsError::Rejected { status: 404, code: Some(c), .. } if c == "resource_missing"),
        "{e:?}"
    );
    let e = client.portal_session("cus_nope", "http://x.example/", &key("p")).await.expect_err("unknown");
    assert!(matches!(&e, PaymentsError::Rejected { status: 400, .. }), "{e:?}");
    let e = client.cancel_subscription("sub/../x", CancelAt::Now, &key("c")).await.expect_err("refused");
    assert!(matches!(e, PaymentsError::Internal { .. }), "{e:?}");
    let unknown_price = terrace_ports::SubscriptionCheckout { price_id: "price_nope".into(), ..plan() };
    let e = client.checkout_subscription(&unknown_price, &key("s")).await.expect_err("unknown price");
    assert!(matches!(&e, PaymentsError::Rejected { code: Some(c), .. } if c == "resource_missing"), "{e:?}");
    // Every refusal was sent once.
    assert_eq!(sim.requests().len(), 3);
    assert_eq!(recorder.outcomes(), [UpstreamOutcome::Rejected; 3]);

    let mut config = client_config(&sim, Duration::from_secs(2));
    config.secret_key = terrace_stripe::SecretKey::new("sk_test_wrong");
    let (wrong, _) = client_with(config);
    let e = wrong.checkout_package(&package(), &key("w")).await.expect_err("unauthorised");
    assert!(
        matches!(&e, PaymentsError::Rejected { status: 401, message, .. } if !message.contains("sk_test_wrong")),
        "{e:?}"
    );
}

/// What a scripted answer must come to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Ok,
    Unavailable,
    Rejected,
    Timeout,
}

struct Case {
    name: &'static str,
    script: Vec<ApiBehaviour>,
    expect: Expect,
    /// Requests the simulator must have seen.
    attempts: usize,
    outcomes: Vec<UpstreamOutcome>,
}

fn status(s: u16) -> ApiBehaviour {
    ApiBehaviour::status(s)
}

use UpstreamOutcome as O;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "500 once",
            script: vec![status(500)],
            expect: Expect::Ok,
            attempts: 2,
            outcomes: vec![O::Unavailable, O::Ok],
        },
        Case {
            name: "429 twice",
            script: vec![status(429), status(429)],
            expect: Expect::Ok,
            attempts: 3,
            outcomes: vec![O::Unavailable, O::Unavailable, O::Ok],
        },
        Case {
            name: "503 always",
            script: vec![status(503), status(503), status(503)],
            expect: Expect::Unavailable,
            attempts: 3,
            outcomes: vec![O::Unavailable; 3],
        },
        Case {
            name: "400",
            script: vec![status(400)],
            expect: Expect::Rejected,
            attempts: 1,
            outcomes: vec![O::Rejected],
        },
        Case {
            name: "503 that Stripe says not to retry",
            script: vec![ApiBehaviour::Status { status: 503, should_retry: Some(false) }],
            expect: Expect::Unavailable,
            attempts: 1,
            outcomes: vec![O::Unavailable],
        },
        Case {
            name: "409 that Stripe says to retry",
            script: vec![ApiBehaviour::Status { status: 409, should_retry: Some(true) }],
            expect: Expect::Ok,
            attempts: 2,
            outcomes: vec![O::Unavailable, O::Ok],
        },
        Case {
            name: "a dropped connection",
            script: vec![ApiBehaviour::Disconnect],
            expect: Expect::Ok,
            attempts: 2,
            outcomes: vec![O::Unavailable, O::Ok],
        },
        Case {
            name: "latency inside the deadline",
            script: vec![ApiBehaviour::Latency { delay: Duration::from_millis(100) }],
            expect: Expect::Ok,
            attempts: 1,
            outcomes: vec![O::Ok],
        },
        Case {
            name: "a hang",
            script: vec![ApiBehaviour::Hang],
            expect: Expect::Timeout,
            attempts: 1,
            outcomes: vec![O::Timeout],
        },
        Case {
            name: "500 then a hang",
            script: vec![status(500), ApiBehaviour::Hang],
            expect: Expect::Timeout,
            attempts: 2,
            outcomes: vec![O::Unavailable, O::Timeout],
        },
    ]
}

const DEADLINE: Duration = Duration::from_millis(600);
/// How late past the deadline a call may end on a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

#[tokio::test]
async fn faults_are_retried_when_safe_and_end_typed_within_the_deadline() {
    let sim = start().await;
    for case in cases() {
        sim.reset();
        for b in &case.script {
            sim.script(Endpoint::CheckoutSessions, b.clone());
        }
        let (client, recorder) = client_with(client_config(&sim, DEADLINE));
        let started = Instant::now();
        let result =
            client.checkout_package(&package(), &key(&format!("case-{}", case.name.replace(' ', "-")))).await;
        let elapsed = started.elapsed();
        let name = case.name;
        match (case.expect, &result) {
            (Expect::Ok, Ok(_)) => {}
            (Expect::Unavailable, Err(e @ PaymentsError::Unavailable { .. })) => {
                assert!(e.retryable(), "{name}")
            }
            (Expect::Rejected, Err(e @ PaymentsError::Rejected { .. })) => assert!(!e.retryable(), "{name}"),
            (Expect::Timeout, Err(e @ PaymentsError::Timeout)) => assert!(e.retryable(), "{name}"),
            (expect, got) => panic!("{name}: expected {expect:?}, got {got:?}"),
        }
        assert!(elapsed < DEADLINE + SLACK, "{name}: took {elapsed:?}");
        if matches!(case.expect, Expect::Timeout) {
            assert!(elapsed >= DEADLINE, "{name}: gave up early, after {elapsed:?}");
            assert_eq!(
                *recorder.timeouts.lock().expect("lock"),
                [(Upstream::Stripe, TimeoutKind::Request)],
                "{name}"
            );
        }
        let requests = sim.requests();
        assert_eq!(requests.len(), case.attempts, "{name}: {requests:?}");
        let sessions = if matches!(case.expect, Expect::Ok) { 1 } else { 0 };
        assert_eq!(sim.sessions().len(), sessions, "{name}: one session whatever the retries");
        assert!(requests.iter().all(|r| r.idempotency_key == requests[0].idempotency_key), "{name}: one key");
        assert_eq!(recorder.outcomes(), case.outcomes, "{name}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_within_the_deadline() {
    // A port that stays bound but never listens: connections are refused,
    // and no other test can take it meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("binds");
    let base = format!("http://{}", socket.local_addr().expect("addr"));
    let sim = start().await;
    let config = StripeConfig { base_url: base.clone(), ..client_config(&sim, DEADLINE) };
    let (client, recorder) = client_with(config);
    let started = Instant::now();
    let e = client.checkout_package(&package(), &key("gone")).await.expect_err("nothing listens");
    assert!(matches!(e, PaymentsError::Unavailable { .. }), "{e:?}");
    assert!(started.elapsed() < DEADLINE + SLACK, "{:?}", started.elapsed());
    assert_eq!(recorder.outcomes(), [O::Unavailable; 3]);
    assert!(!format!("{e}").contains(&base), "errors carry no URL: {e}");
}
