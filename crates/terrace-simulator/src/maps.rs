//! The four Maps endpoints: geocoding, Street View metadata and image, and the
//! satellite static map, with Google's JSON shapes and statuses.

use crate::body::{SimBody, Step};
use crate::server::{KeyCheck, response};
use crate::{Behaviour, Endpoint, RequestGuard};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::json;

const JSON: &str = "application/json; charset=UTF-8";
const HTML: &str = "text/html; charset=UTF-8";
const TEXT: &str = "text/plain; charset=UTF-8";
const PNG: &str = "image/png";

/// FNV-1a: a stable hash, so an address always lands on the same place.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A deterministic place in the contiguous United States for `address`.
pub(crate) fn place(address: &str) -> (f64, f64) {
    let h = fnv1a(&address.trim().to_lowercase());
    let unit = |bits: u64| (bits as f64) / (u32::MAX as f64);
    let lat = 25.0 + unit(h & 0xffff_ffff) * 24.0;
    let lng = -124.0 + unit(h >> 32) * 57.0;
    ((lat * 1e7).round() / 1e7, (lng * 1e7).round() / 1e7)
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn parse_location(s: &str) -> Option<(f64, f64)> {
    let (lat, lng) = s.split_once(',')?;
    let (lat, lng): (f64, f64) = (lat.trim().parse().ok()?, lng.trim().parse().ok()?);
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng)).then_some((lat, lng))
}

fn json_body(value: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default())
}

/// A complete body with its `Content-Length`.
fn full(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    guard: RequestGuard,
) -> Response<SimBody> {
    let len = body.len();
    let mut resp = response(status, content_type, SimBody::full(body, guard));
    resp.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
    resp
}

/// The answer to a request without the right key, as Google gives it.
pub(crate) fn key_rejected(endpoint: Endpoint, key: KeyCheck, guard: RequestGuard) -> Response<SimBody> {
    let message = match key {
        KeyCheck::Missing => {
            "You must use an API key to authenticate each request to Google Maps Platform APIs."
        }
        _ => "The provided API key is invalid.",
    };
    match endpoint {
        Endpoint::Geocode => full(
            StatusCode::OK,
            JSON,
            json_body(&json!({"error_message": message, "results": [], "status": "REQUEST_DENIED"})),
            guard,
        ),
        Endpoint::StreetViewMetadata => full(
            StatusCode::OK,
            JSON,
            json_body(&json!({"error_message": message, "status": "REQUEST_DENIED"})),
            guard,
        ),
        _ => full(
            StatusCode::FORBIDDEN,
            TEXT,
            Bytes::from(format!("The Google Maps Platform server rejected your request. {message}")),
            guard,
        ),
    }
}

/// What the endpoint answers when nothing goes wrong: status, content type, body.
fn normal(
    endpoint: Endpoint,
    query: &[(String, String)],
    image: &Bytes,
) -> (StatusCode, &'static str, Bytes) {
    let invalid = |what: &str| {
        let body = json!({
            "error_message": format!("Invalid request. Missing the '{what}' parameter."),
            "status": "INVALID_REQUEST",
        });
        (StatusCode::OK, JSON, json_body(&body))
    };
    match endpoint {
        Endpoint::Geocode => {
            let Some(address) = param(query, "address") else { return invalid("address") };
            let (lat, lng) = place(address);
            let body = json!({
                "results": [{
                    "address_components": [],
                    "formatted_address": format!("{}, USA", address.trim()),
                    "geometry": {
                        "location": {"lat": lat, "lng": lng},
                        "location_type": "ROOFTOP",
                        "viewport": {
                            "northeast": {"lat": lat + 0.0013, "lng": lng + 0.0013},
                            "southwest": {"lat": lat - 0.0013, "lng": lng - 0.0013},
                        },
                    },
                    "place_id": format!("SIM{:016x}", fnv1a(address)),
                    "types": ["street_address"],
                }],
                "status": "OK",
            });
            (StatusCode::OK, JSON, json_body(&body))
        }
        Endpoint::StreetViewMetadata => {
            let Some((lat, lng)) = param(query, "location").and_then(parse_location) else {
                return invalid("location");
            };
            let body = json!({
                "copyright": "© Google",
                "date": "2024-05",
                "location": {"lat": lat + 0.00004, "lng": lng - 0.00003},
                "pano_id": format!("SIMPANO{:016x}", fnv1a(&format!("{lat:.6},{lng:.6}"))),
                "status": "OK",
            });
            (StatusCode::OK, JSON, json_body(&body))
        }
        Endpoint::StreetView | Endpoint::StaticMap => {
            let place = if endpoint == Endpoint::StreetView { "location" } else { "center" };
            if param(query, "size").is_none() || param(query, place).is_none() {
                let body = Bytes::from(format!(
                    "The Google Maps Platform server rejected your request. Missing '{place}' or 'size'."
                ));
                return (StatusCode::BAD_REQUEST, TEXT, body);
            }
            (StatusCode::OK, PNG, image.clone())
        }
        Endpoint::Gemini => (StatusCode::NOT_FOUND, TEXT, Bytes::new()),
    }
}

/// The answer to a Maps request with the right key under `behaviour`
/// (latency, hangs and resets were handled before).
pub(crate) fn answer(
    endpoint: Endpoint,
    query: &[(String, String)],
    behaviour: Behaviour,
    guard: RequestGuard,
) -> Response<SimBody> {
    let image = guard.state().canned.image.clone();
    match behaviour {
        Behaviour::Status { status, .. } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = format!("<html><title>Error {}</title>{}</html>", status.as_u16(), status);
            full(status, HTML, Bytes::from(body), guard)
        }
        Behaviour::MalformedJson if endpoint.answers_image() => {
            full(StatusCode::OK, HTML, Bytes::from_static(b"<html>not an image</html>"), guard)
        }
        Behaviour::MalformedJson => full(
            StatusCode::OK,
            JSON,
            Bytes::from_static(b"{\n  \"results\" : [ { \"formatted_address\" : "),
            guard,
        ),
        Behaviour::MapsStatus { status } if endpoint.answers_image() => {
            let code = match status.as_str() {
                "ZERO_RESULTS" | "NOT_FOUND" => StatusCode::NOT_FOUND,
                _ => StatusCode::FORBIDDEN,
            };
            full(code, TEXT, Bytes::from(format!("Sorry, we have no imagery here ({status}).")), guard)
        }
        Behaviour::MapsStatus { status } => {
            let mut body = json!({"status": status});
            if endpoint == Endpoint::Geocode {
                body["results"] = json!([]);
            }
            if status != "ZERO_RESULTS" && status != "NOT_FOUND" {
                body["error_message"] = json!(format!("Simulated {status}."));
            }
            full(StatusCode::OK, JSON, json_body(&body), guard)
        }
        Behaviour::StallAfterFirstEvent => {
            let (status, content_type, body) = normal(endpoint, query, &image);
            let len = body.len();
            let half = body.slice(..len / 2);
            let mut resp =
                response(status, content_type, SimBody::new([Step::Send(half), Step::Hang], guard));
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
            resp
        }
        Behaviour::DripEvents { every } => {
            let steps = [
                Step::Send(Bytes::from_static(b"{")),
                Step::Repeat { data: Bytes::from_static(b" "), every },
            ];
            let content_type = if endpoint.answers_image() { PNG } else { JSON };
            response(StatusCode::OK, content_type, SimBody::new(steps, guard))
        }
        _ => {
            let (status, content_type, body) = normal(endpoint, query, &image);
            full(status, content_type, body, guard)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_deterministic_and_in_range() {
        let a = place("1600 Amphitheatre Parkway, Mountain View");
        assert_eq!(a, place("  1600 amphitheatre parkway, mountain view "));
        assert_ne!(a, place("1 Infinite Loop, Cupertino"));
        for i in 0..1000 {
            let (lat, lng) = place(&format!("{i} Main Street"));
            assert!((25.0..=49.0).contains(&lat) && (-124.0..=-67.0).contains(&lng));
        }
    }

    #[test]
    fn locations_parse_like_google_writes_them() {
        assert_eq!(parse_location("37.4,-122.1"), Some((37.4, -122.1)));
        assert_eq!(parse_location("91,0"), None);
        assert_eq!(parse_location("nope"), None);
    }
}
