//! The simulator over real loopback HTTP, seen by a plain HTTP client: its
//! wire format (over HTTP/1.1 and HTTP/2), its control endpoint, its bounds
//! and its records.

mod control;
mod designs;
mod http2;
mod lifecycle;
mod wire;

use std::time::Duration;
use terrace_simulator::{Simulator, SimulatorConfig};

pub async fn start() -> Simulator {
    Simulator::start(SimulatorConfig::default()).await.expect("simulator starts")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client")
}

pub fn gemini_body() -> String {
    serde_json::json!({
        "contents": [{"role": "user", "parts": [
            {"text": "draw a garden"},
            {"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}},
        ]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    })
    .to_string()
}

pub fn gemini_url(sim: &Simulator) -> String {
    format!("{}/v1beta/models/gemini-2.5-flash-image:streamGenerateContent?alt=sse", sim.base_url())
}

/// The `data:` payloads of an SSE body, whichever blank-line framing it uses.
pub fn sse_events(body: &str) -> Vec<serde_json::Value> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect()
}
