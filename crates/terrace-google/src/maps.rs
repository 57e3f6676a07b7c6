//! Maps: geocoding, Street View metadata and image, satellite static map.
//! One request per call, bounded as a whole by the Maps timeout.

use crate::error::{clean, http_status, retry_after_header, transport};
use crate::{GoogleClient, Inner, upstream_outcome};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use std::future::Future;
use terrace_domain::{Address, GeocodeError, Geocoded, ImageryError, LatLng, TimeoutKind, UpstreamError};
use terrace_ports::{Geocoder, Image, Imagery, Panorama, Upstream, UpstreamOutcome};
use tokio::time::Instant;

/// Largest JSON answer read.
const MAX_JSON_BYTES: usize = 1024 * 1024;
/// Largest image read.
const MAX_IMAGE_BYTES: usize = 16 * 1024 * 1024;

/// How a Maps JSON `status` reads.
#[derive(Debug, PartialEq)]
enum MapsStatus {
    Ok,
    /// `ZERO_RESULTS`, `NOT_FOUND`.
    NotFound,
    Failed(UpstreamError),
}

fn maps_status(what: &str, status: &str, message: Option<&str>, key: &str) -> MapsStatus {
    let detail = || {
        let msg = message.map(|m| format!(": {m}")).unwrap_or_default();
        clean(&format!("{what} answered {status}{msg}"), key)
    };
    match status {
        "OK" => MapsStatus::Ok,
        "ZERO_RESULTS" | "NOT_FOUND" => MapsStatus::NotFound,
        "OVER_QUERY_LIMIT" | "UNKNOWN_ERROR" => MapsStatus::Failed(UpstreamError::unavailable(detail())),
        // REQUEST_DENIED, INVALID_REQUEST, OVER_DAILY_LIMIT and anything unknown.
        _ => MapsStatus::Failed(UpstreamError::rejected(detail())),
    }
}

#[derive(Deserialize)]
struct GeocodeResponse {
    status: String,
    #[serde(default)]
    results: Vec<GeocodeResult>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct GeocodeResult {
    formatted_address: String,
    geometry: Geometry,
}

#[derive(Deserialize)]
struct Geometry {
    location: Location,
}

#[derive(Deserialize)]
struct Location {
    lat: f64,
    lng: f64,
}

#[derive(Deserialize)]
struct MetadataResponse {
    status: String,
    pano_id: Option<String>,
    location: Option<Location>,
    error_message: Option<String>,
}

/// A 2xx answer's body, or the error its status means.
struct Answer {
    content_type: String,
    body: Bytes,
}

enum Failure {
    /// HTTP 404 (imagery endpoints read it as "no image here").
    NotFound,
    Upstream(UpstreamError),
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Upstream(e)
    }
}

fn location(l: &Location) -> Result<LatLng, UpstreamError> {
    LatLng::new(l.lat, l.lng).ok_or_else(|| UpstreamError::rejected("the answer holds an invalid location"))
}

fn malformed(what: &str, e: &serde_json::Error) -> UpstreamError {
    UpstreamError::rejected(format!("{what} answered malformed JSON: {e}"))
}

impl Inner {
    /// Sends one GET and reads the whole body, all within the Maps timeout.
    /// The request holds its place on a lane until its body is read.
    async fn get(&self, url: &reqwest::Url, query: &[(&str, &str)], cap: usize) -> Result<Answer, Failure> {
        let request = async {
            let lane = self.maps.acquire();
            let mut resp = lane
                .http()
                .get(url.clone())
                .query(query)
                .query(&[("key", self.maps_key.expose())])
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(Failure::NotFound);
            }
            if !status.is_success() {
                let retry = retry_after_header(resp.headers());
                return Err(http_status(status, retry, format!("HTTP {status}")).into());
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            // Sized from Content-Length when the answer gives one, so the
            // image is held without growth slack.
            let expected = resp.content_length().unwrap_or(0).min(cap as u64) as usize;
            let mut body = BytesMut::with_capacity(expected);
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > cap {
                    return Err(
                        UpstreamError::rejected(format!("the answer is larger than {cap} bytes")).into()
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer { content_type, body: body.freeze() })
        };
        match tokio::time::timeout(self.maps_timeout, request).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout { kind: TimeoutKind::Request }.into()),
        }
    }

    /// Runs `call` and reports its outcome.
    async fn observed<T, E>(
        &self,
        upstream: Upstream,
        call: impl Future<Output = Result<T, E>>,
        outcome: impl Fn(&Result<T, E>) -> (UpstreamOutcome, Option<TimeoutKind>),
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = call.await;
        let (o, t) = outcome(&result);
        self.report(upstream, o, t, start.elapsed());
        result
    }

    async fn image(
        &self,
        upstream: Upstream,
        url: &reqwest::Url,
        query: &[(&str, &str)],
    ) -> Result<Image, ImageryError> {
        let call = async {
            match self.get(url, query, MAX_IMAGE_BYTES).await {
                Ok(a) if a.content_type.starts_with("image/") => {
                    Ok(Image { bytes: a.body, content_type: a.content_type })
                }
                Ok(a) => Err(ImageryError::Upstream(UpstreamError::rejected(format!(
                    "answered {:?} instead of an image",
                    clean(&a.content_type, self.maps_key.expose())
                )))),
                Err(Failure::NotFound) => Err(ImageryError::NoImagery),
                Err(Failure::Upstream(e)) => Err(e.into()),
            }
        };
        self.observed(upstream, call, imagery_outcome).await
    }
}

fn imagery_outcome<T>(r: &Result<T, ImageryError>) -> (UpstreamOutcome, Option<TimeoutKind>) {
    match r {
        Ok(_) => (UpstreamOutcome::Ok, None),
        Err(ImageryError::NoImagery) => (UpstreamOutcome::Rejected, None),
        Err(ImageryError::Upstream(e)) => upstream_outcome(e),
    }
}

impl Failure {
    /// For the JSON endpoints, where a 404 is no answer about the place.
    fn into_upstream(self) -> UpstreamError {
        match self {
            Failure::NotFound => UpstreamError::rejected("HTTP 404 Not Found"),
            Failure::Upstream(e) => e,
        }
    }
}

#[async_trait]
impl Geocoder for GoogleClient {
    async fn geocode(&self, address: &Address) -> Result<Geocoded, GeocodeError> {
        let inner = &*self.inner;
        let call = async {
            let answer = inner
                .get(&inner.geocode_url, &[("address", address.as_str())], MAX_JSON_BYTES)
                .await
                // An HTTP 404 from the geocoder is not "no such address".
                .map_err(Failure::into_upstream)?;
            let parsed: GeocodeResponse =
                serde_json::from_slice(&answer.body).map_err(|e| malformed("geocoding", &e))?;
            let key = inner.maps_key.expose();
            match maps_status("geocoding", &parsed.status, parsed.error_message.as_deref(), key) {
                MapsStatus::Ok => {}
                MapsStatus::NotFound => return Err(GeocodeError::NotFound),
                MapsStatus::Failed(e) => return Err(e.into()),
            }
            let first = parsed.results.into_iter().next().ok_or(GeocodeError::NotFound)?;
            Ok(Geocoded {
                formatted_address: first.formatted_address,
                location: location(&first.geometry.location)?,
            })
        };
        inner
            .observed(Upstream::Geocode, call, |r| match r {
                Ok(_) => (UpstreamOutcome::Ok, None),
                Err(GeocodeError::NotFound) => (UpstreamOutcome::Rejected, None),
                Err(GeocodeError::Upstream(e)) => upstream_outcome(e),
            })
            .await
    }
}

#[async_trait]
impl Imagery for GoogleClient {
    async fn street_view_metadata(&self, at: LatLng) -> Result<Option<Panorama>, ImageryError> {
        let inner = &*self.inner;
        let call = async {
            let loc = at.to_string();
            let answer = inner
                .get(&inner.metadata_url, &[("location", &loc), ("radius", "50")], MAX_JSON_BYTES)
                .await
                .map_err(Failure::into_upstream)?;
            let parsed: MetadataResponse =
                serde_json::from_slice(&answer.body).map_err(|e| malformed("street view metadata", &e))?;
            let key = inner.maps_key.expose();
            match maps_status("street view metadata", &parsed.status, parsed.error_message.as_deref(), key) {
                MapsStatus::Ok => {}
                MapsStatus::NotFound => return Ok(None),
                MapsStatus::Failed(e) => return Err(ImageryError::Upstream(e)),
            }
            let (Some(pano_id), Some(l)) = (parsed.pano_id, parsed.location) else {
                return Err(UpstreamError::rejected("street view metadata is OK but has no panorama").into());
            };
            Ok(Some(Panorama { pano_id, location: location(&l)? }))
        };
        inner.observed(Upstream::StreetView, call, imagery_outcome).await
    }

    async fn street_view(&self, at: LatLng, heading: u16) -> Result<Image, ImageryError> {
        let (loc, heading) = (at.to_string(), (heading % 360).to_string());
        let query = [
            ("size", "640x640"),
            ("location", loc.as_str()),
            ("heading", heading.as_str()),
            ("fov", "90"),
            ("pitch", "0"),
            ("return_error_code", "true"),
        ];
        self.inner.image(Upstream::StreetView, &self.inner.street_view_url, &query).await
    }

    async fn satellite(&self, at: LatLng) -> Result<Image, ImageryError> {
        let center = at.to_string();
        let query = [
            ("center", center.as_str()),
            ("zoom", "20"),
            ("size", "640x640"),
            ("scale", "2"),
            ("maptype", "satellite"),
        ];
        self.inner.image(Upstream::StaticMap, &self.inner.static_map_url, &query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_the_contract_says() {
        let s = |st: &str| maps_status("geocoding", st, Some("msg"), "KEY");
        assert_eq!(s("OK"), MapsStatus::Ok);
        assert_eq!(s("ZERO_RESULTS"), MapsStatus::NotFound);
        for retryable in ["OVER_QUERY_LIMIT", "UNKNOWN_ERROR"] {
            assert!(
                matches!(s(retryable), MapsStatus::Failed(UpstreamError::Unavailable { .. })),
                "{retryable}"
            );
        }
        for permanent in ["REQUEST_DENIED", "INVALID_REQUEST", "OVER_DAILY_LIMIT", "SOMETHING_NEW"] {
            assert!(
                matches!(s(permanent), MapsStatus::Failed(UpstreamError::Rejected { .. })),
                "{permanent}"
            );
        }
    }
}
