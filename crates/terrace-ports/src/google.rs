//! Google's side: geocoding, imagery and the design model.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use terrace_domain::{Address, DesignError, GeocodeError, Geocoded, ImageryError, LatLng};

/// Image bytes with their content type (`image/jpeg`, `image/png`).
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    pub bytes: Bytes,
    pub content_type: String,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("content_type", &self.content_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Turns an address into a place.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Geocoder: Send + Sync + 'static {
    /// Geocodes `address`, one request, no retries (the caller retries).
    ///
    /// Errors: [`GeocodeError::NotFound`] for `ZERO_RESULTS`; otherwise an
    /// [`terrace_domain::UpstreamError`] classified as CONTRACT §3 says
    /// (`Timeout` when the Maps timeout passed).
    ///
    /// Cancel safety: dropping the future abandons the request and its
    /// connection; nothing is left running.
    async fn geocode(&self, address: &Address) -> Result<Geocoded, GeocodeError>;
}

/// A Street View panorama near a place.
#[derive(Debug, Clone, PartialEq)]
pub struct Panorama {
    pub pano_id: String,
    pub location: LatLng,
}

/// Pictures of a place.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Imagery: Send + Sync + 'static {
    /// Street View metadata within 50 m of `at` (free of charge). `Ok(None)`
    /// when Google has no panorama there (`ZERO_RESULTS`, `NOT_FOUND`).
    ///
    /// Errors: `Upstream` classified as for geocoding.
    /// Cancel safety: dropping the future abandons the request.
    async fn street_view_metadata(&self, at: LatLng) -> Result<Option<Panorama>, ImageryError>;

    /// A 640×640 Street View image at `at`, looking towards `heading` degrees.
    ///
    /// Errors: [`ImageryError::NoImagery`] when Google answers 404 (no image
    /// there); `Upstream` otherwise.
    /// Cancel safety: dropping the future abandons the request.
    async fn street_view(&self, at: LatLng, heading: u16) -> Result<Image, ImageryError>;

    /// A satellite image centred on `at` (zoom 20, 640×640 at scale 2).
    ///
    /// Errors: as [`Imagery::street_view`].
    /// Cancel safety: dropping the future abandons the request.
    async fn satellite(&self, at: LatLng) -> Result<Image, ImageryError>;
}

/// What the design model is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct DesignRequest {
    pub prompt: String,
    pub source: Image,
}

/// One thing the design model's stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum DesignEvent {
    /// Bytes of a not yet complete event arrived (a large image is still
    /// coming). Callers count it as progress, not as an answer.
    Progress { received_bytes: usize },
    /// Text the model wrote alongside the image.
    Text(String),
    /// The designed image.
    Image(Image),
}

/// The events of one design, ending when the model closes the stream.
pub type DesignStream = BoxStream<'static, Result<DesignEvent, DesignError>>;

/// The image model (Gemini).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait DesignModel: Send + Sync + 'static {
    /// Starts a design and returns its event stream once the response headers
    /// arrived.
    ///
    /// The adapter bounds the connect and the wait for headers (its silence
    /// limit) and, while the stream is read, the silence between bytes: a
    /// stalled stream yields `Err(Upstream(Timeout { kind: Idle }))` and ends.
    /// A blocked prompt or blocking finish reason yields
    /// [`DesignError::Blocked`]; an `{"error": …}` event yields `Upstream`
    /// classified by its status. The caller decides that a stream which ended
    /// without an image is [`DesignError::NoImage`].
    ///
    /// Cancel safety: dropping the future or the stream closes the connection
    /// at once.
    async fn generate(&self, request: DesignRequest) -> Result<DesignStream, DesignError>;
}
