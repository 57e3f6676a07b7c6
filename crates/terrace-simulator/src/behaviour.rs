//! What the simulator does with one request: the endpoints and the behaviours
//! (normal answers and faults) that can be scripted for them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One of the five Google endpoints the simulator imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /maps/api/geocode/json`
    Geocode,
    /// `GET /maps/api/streetview/metadata`
    StreetViewMetadata,
    /// `GET /maps/api/streetview`
    StreetView,
    /// `GET /maps/api/staticmap`
    StaticMap,
    /// `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`
    Gemini,
}

impl Endpoint {
    pub const ALL: &'static [Endpoint] = &[
        Endpoint::Geocode,
        Endpoint::StreetViewMetadata,
        Endpoint::StreetView,
        Endpoint::StaticMap,
        Endpoint::Gemini,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the endpoint answers JSON (the Maps JSON endpoints), an image,
    /// or an event stream.
    pub(crate) fn answers_image(self) -> bool {
        matches!(self, Endpoint::StreetView | Endpoint::StaticMap)
    }
}

/// What the simulator does with one request.
///
/// Each behaviour is meaningful for some endpoints; on the others it answers
/// normally unless documented otherwise. Serialised as
/// `{"kind": "snake_case_name", ...fields}` with durations in milliseconds
/// (`every_ms`, `delay_ms`, `retry_delay_ms`) for the control endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Behaviour {
    /// The normal answer.
    Ok,
    /// The normal answer after a fixed delay (before the headers).
    Latency {
        #[serde(rename = "delay_ms", with = "millis")]
        delay: Duration,
    },
    /// Accept the request and never answer (until the client goes away or the
    /// simulator shuts down).
    HangBeforeHeaders,
    /// Gemini: send the headers and the first event, then fall silent. Maps:
    /// send the headers and half of the body, then fall silent.
    StallAfterFirstEvent,
    /// Gemini: a text event every `every`, forever. Maps: one byte of body
    /// every `every`, forever.
    DripEvents {
        #[serde(rename = "every_ms", with = "millis")]
        every: Duration,
    },
    /// An HTTP error status with Google's error body (Gemini: the
    /// `{"error": {code, message, status, details}}` JSON, with a
    /// `google.rpc.RetryInfo` detail when `retry_delay` is set).
    Status {
        status: u16,
        #[serde(rename = "retry_delay_ms", with = "opt_millis", default)]
        retry_delay: Option<Duration>,
    },
    /// Close the connection with a TCP reset before answering (on HTTP/2:
    /// reset the request's stream, `RST_STREAM`, and leave the connection).
    ConnectionReset,
    /// A 200 whose JSON does not parse (Gemini: one event of broken JSON;
    /// images: an HTML page instead of an image).
    MalformedJson,
    /// Maps JSON endpoints: HTTP 200 with this `status` (`ZERO_RESULTS`,
    /// `OVER_QUERY_LIMIT`, `REQUEST_DENIED`, `NOT_FOUND`, …). Image endpoints:
    /// `ZERO_RESULTS`/`NOT_FOUND` answer 404 (as `return_error_code=true`
    /// does), any other status 403.
    MapsStatus { status: String },
    /// Gemini: no candidates, `promptFeedback.blockReason` = `reason`.
    BlockedPrompt { reason: String },
    /// Gemini: a candidate whose `finishReason` is `reason` (e.g. `IMAGE_SAFETY`).
    BlockedFinish { reason: String },
    /// Gemini: a text event, then an `{"error": …}` event with this HTTP code,
    /// then the stream closes.
    ErrorEvent { status: u16 },
    /// Gemini: text only, `finishReason: STOP`, no image part.
    NoImage,
    /// Gemini: a text event, then the image event padded with JSON whitespace
    /// to `size` bytes, sent `chunk` bytes at a time every `every` (a large
    /// image that keeps arriving).
    TrickleImage {
        size: usize,
        chunk: usize,
        #[serde(rename = "every_ms", with = "millis")]
        every: Duration,
    },
}

impl Behaviour {
    /// `MapsStatus { status: "ZERO_RESULTS" }`.
    pub fn zero_results() -> Self {
        Behaviour::MapsStatus { status: "ZERO_RESULTS".into() }
    }

    /// `MapsStatus { status: "OVER_QUERY_LIMIT" }`.
    pub fn over_query_limit() -> Self {
        Behaviour::MapsStatus { status: "OVER_QUERY_LIMIT".into() }
    }

    /// `Status { status, retry_delay: None }`.
    pub fn status(status: u16) -> Self {
        Behaviour::Status { status, retry_delay: None }
    }

    /// HTTP 429 with `RetryInfo.retryDelay`.
    pub fn too_many_requests(retry_delay: Duration) -> Self {
        Behaviour::Status { status: 429, retry_delay: Some(retry_delay) }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviours_read_from_the_control_json() {
        let b: Behaviour =
            serde_json::from_str(r#"{"kind":"status","status":429,"retry_delay_ms":1500}"#).expect("parses");
        assert_eq!(b, Behaviour::too_many_requests(Duration::from_millis(1500)));
        let b: Behaviour = serde_json::from_str(r#"{"kind":"drip_events","every_ms":20}"#).expect("parses");
        assert_eq!(b, Behaviour::DripEvents { every: Duration::from_millis(20) });
        let b: Behaviour = serde_json::from_str(r#"{"kind":"status","status":503}"#).expect("parses");
        assert_eq!(b, Behaviour::status(503));
        let text = serde_json::to_string(&Behaviour::zero_results()).expect("serialises");
        assert_eq!(text, r#"{"kind":"maps_status","status":"ZERO_RESULTS"}"#);
    }
}
