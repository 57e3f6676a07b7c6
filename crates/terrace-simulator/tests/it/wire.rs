//! Google's shapes: JSON bodies, keys, images and the event stream.

use crate::*;
use base64::Engine as _;
use terrace_simulator::{Behaviour, Endpoint};

fn decode_png(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a valid PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a valid PNG frame");
    (info.width, info.height)
}

#[tokio::test]
async fn geocoding_answers_google_json_deterministically() {
    let sim = start().await;
    let url = format!("{}/maps/api/geocode/json", sim.base_url());
    let get = |address: &'static str| {
        http().get(&url).query(&[("address", address), ("key", sim.maps_key())]).send()
    };
    let a: serde_json::Value = get("10 Downing Street").await.expect("answer").json_value().await;
    let b: serde_json::Value = get("10 Downing Street").await.expect("answer").json_value().await;
    assert_eq!(a["status"], "OK");
    assert_eq!(a, b);
    let loc = &a["results"][0]["geometry"]["location"];
    assert!(loc["lat"].as_f64().is_some() && loc["lng"].as_f64().is_some());
    assert_eq!(a["results"][0]["formatted_address"], "10 Downing Street, USA");
    let c: serde_json::Value = get("221B Baker Street").await.expect("answer").json_value().await;
    assert_ne!(c["results"][0]["geometry"], a["results"][0]["geometry"]);
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn maps_requires_the_key_as_google_does() {
    let sim = start().await;
    let url = format!("{}/maps/api/geocode/json", sim.base_url());
    let v: serde_json::Value = http()
        .get(&url)
        .query(&[("address", "10 Downing Street")])
        .send()
        .await
        .expect("answer")
        .json_value()
        .await;
    assert_eq!(v["status"], "REQUEST_DENIED");
    let v: serde_json::Value = http()
        .get(&url)
        .query(&[("address", "10 Downing Street"), ("key", "nope")])
        .send()
        .await
        .expect("answer")
        .json_value()
        .await;
    assert_eq!(v["status"], "REQUEST_DENIED");
    assert_eq!(v["error_message"], "The provided API key is invalid.");
    let img = http()
        .get(format!("{}/maps/api/staticmap", sim.base_url()))
        .query(&[("center", "1,2"), ("size", "640x640"), ("key", "nope")])
        .send()
        .await
        .expect("answer");
    assert_eq!(img.status(), 403);
    let stats = sim.stats();
    assert_eq!((stats.geocode.requests, stats.geocode.key_rejected), (2, 2));
    assert!(sim.requests().iter().all(|r| !r.key_ok && r.query.iter().all(|(k, _)| k != "key")));
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn images_are_real_pngs() {
    let sim = start().await;
    for (path, place) in [("streetview", "location"), ("staticmap", "center")] {
        let resp = http()
            .get(format!("{}/maps/api/{path}", sim.base_url()))
            .query(&[(place, "37.4,-122.1"), ("size", "640x640"), ("key", sim.maps_key())])
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "image/png");
        let bytes = resp.bytes().await.expect("body");
        assert_eq!(decode_png(&bytes), (64, 64));
    }
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn street_view_metadata_and_no_imagery() {
    let sim = start().await;
    let meta = format!("{}/maps/api/streetview/metadata", sim.base_url());
    let q = [("location", "37.4,-122.1"), ("radius", "50"), ("key", sim.maps_key())];
    let v: serde_json::Value = http().get(&meta).query(&q).send().await.expect("answer").json_value().await;
    assert_eq!(v["status"], "OK");
    assert!(v["pano_id"].as_str().is_some());
    sim.script(Endpoint::StreetViewMetadata, Behaviour::zero_results());
    let v: serde_json::Value = http().get(&meta).query(&q).send().await.expect("answer").json_value().await;
    assert_eq!(v["status"], "ZERO_RESULTS");
    sim.script(Endpoint::StreetView, Behaviour::zero_results());
    let resp = http()
        .get(format!("{}/maps/api/streetview", sim.base_url()))
        .query(&[
            ("location", "37.4,-122.1"),
            ("size", "640x640"),
            ("return_error_code", "true"),
            ("key", sim.maps_key()),
        ])
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 404);
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn gemini_streams_text_then_a_base64_png_framed_with_crlf() {
    let sim = start().await;
    let resp = http()
        .post(gemini_url(&sim))
        .header("x-goog-api-key", sim.gemini_key())
        .body(gemini_body())
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.expect("body");
    assert!(body.contains("\r\n\r\n"));
    let events = sse_events(&body);
    assert_eq!(events.len(), 2);
    assert!(events[0]["candidates"][0]["content"]["parts"][0]["text"].is_string());
    let part = &events[1]["candidates"][0]["content"]["parts"][0]["inlineData"];
    assert_eq!(part["mimeType"], "image/png");
    let png =
        base64::engine::general_purpose::STANDARD.decode(part["data"].as_str().expect("data")).expect("b64");
    assert_eq!(decode_png(&png), (64, 64));
    assert_eq!(events[1]["candidates"][0]["finishReason"], "STOP");
    let seen = &sim.requests()[0];
    assert_eq!(seen.prompt.as_deref(), Some("draw a garden"));
    assert_eq!(seen.inline_data, vec![("image/png".to_owned(), 5)]);
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn gemini_refuses_missing_or_wrong_keys_and_bad_bodies_with_google_errors() {
    let sim = start().await;
    let post = |key: Option<&str>, body: String| {
        let mut r = http().post(gemini_url(&sim)).body(body);
        if let Some(k) = key {
            r = r.header("x-goog-api-key", k.to_owned());
        }
        r.send()
    };
    let resp = post(None, gemini_body()).await.expect("answer");
    assert_eq!(resp.status(), 403);
    let v = resp.json_value().await;
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    let resp = post(Some("nope"), gemini_body()).await.expect("answer");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json_value().await["error"]["message"],
        "API key not valid. Please pass a valid API key."
    );
    let resp = post(Some(sim.gemini_key()), "{\"contents\": []}".into()).await.expect("answer");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json_value().await["error"]["status"], "INVALID_ARGUMENT");
    // The key may also come as `key=`, as Google allows.
    let resp = http()
        .post(format!("{}&key={}", gemini_url(&sim), sim.gemini_key()))
        .body(gemini_body())
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn gemini_429_carries_retry_info() {
    let sim = start().await;
    sim.script(Endpoint::Gemini, Behaviour::too_many_requests(Duration::from_secs(7)));
    let resp = http()
        .post(gemini_url(&sim))
        .header("x-goog-api-key", sim.gemini_key())
        .body(gemini_body())
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 429);
    let v = resp.json_value().await;
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let details = v["error"]["details"].as_array().expect("details");
    let retry =
        details.iter().find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo").expect("RetryInfo");
    assert_eq!(retry["retryDelay"], "7s");
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn lf_framing_on_request() {
    let sim = Simulator::start(SimulatorConfig { sse_crlf: false, ..SimulatorConfig::default() })
        .await
        .expect("starts");
    let body = http()
        .post(gemini_url(&sim))
        .header("x-goog-api-key", sim.gemini_key())
        .body(gemini_body())
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    assert!(!body.contains('\r'));
    assert_eq!(sse_events(&body).len(), 2);
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn a_scripted_reset_is_a_connection_error() {
    let sim = start().await;
    sim.script(Endpoint::Geocode, Behaviour::ConnectionReset);
    let r = http()
        .get(format!("{}/maps/api/geocode/json", sim.base_url()))
        .query(&[("address", "10 Downing Street"), ("key", sim.maps_key())])
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(sim.stats().geocode.reset, 1);
    assert!(sim.shutdown().await);
}

/// Reads a JSON body.
trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        let bytes = self.bytes().await.expect("body");
        serde_json::from_slice(&bytes).expect("JSON")
    }
}
