//! Bounds: shutdown ends hanging requests and deliveries in time, and a
//! dropped simulator stops.

use crate::*;
use std::time::Instant;
use terrace_ports::Payments;
use terrace_stripe_sim::{ApiBehaviour, Endpoint};

#[tokio::test]
async fn shutdown_ends_hanging_requests_and_deliveries_within_its_bound() {
    let (sim, receiver) = start_with_receiver().await;
    // A receiver slower than the send timeout keeps a delivery going.
    receiver.set_delay(Duration::from_secs(30));
    sim.send_event("ping.slow", serde_json::json!({}));
    sim.script(Endpoint::CheckoutSessions, ApiBehaviour::Hang);
    let (client, _) = client_with(client_config(&sim, Duration::from_secs(20)));
    let hanging = tokio::spawn(async move { client.checkout_package(&package(), &key("hang")).await });
    assert!(receiver.wait_for(WAIT, |r| !r.is_empty()).await);
    assert!(sim.wait_for_requests(WAIT, |r| r.len() == 1).await, "the hanging request arrived");

    let started = Instant::now();
    assert!(sim.shutdown().await, "tasks outlived the shutdown bound");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let answer = tokio::time::timeout(WAIT, hanging).await.expect("ended").expect("joined");
    assert!(matches!(answer, Err(terrace_ports::PaymentsError::Unavailable { .. })), "{answer:?}");
    // Nothing listens any more.
    assert!(http().get(format!("{}/_sim/events", sim.base_url())).send().await.is_err());
    assert!(sim.shutdown().await, "idempotent");
}

#[tokio::test]
async fn a_dropped_simulator_stops_serving() {
    let sim = start().await;
    let url = format!("{}/_sim/events", sim.base_url());
    assert!(http().get(&url).send().await.is_ok());
    drop(sim);
    let started = Instant::now();
    let mut refused = false;
    while started.elapsed() < WAIT {
        if http().get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        // The next probe a moment later: the poll of a condition, bounded by WAIT.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still serving after drop");
}
