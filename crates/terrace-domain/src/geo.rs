//! Coordinates and the one piece of geometry Terrace needs: which way a camera
//! standing at a panorama must look to see the property.

use serde::{Deserialize, Serialize};

/// A WGS84 coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatLng {
    pub lat: f64,
    pub lng: f64,
}

impl LatLng {
    /// Returns `None` unless both values are finite and in range.
    pub fn new(lat: f64, lng: f64) -> Option<Self> {
        let ok = lat.is_finite()
            && lng.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lng);
        ok.then_some(Self { lat, lng })
    }

    /// Initial compass bearing in whole degrees (0..360) from `self` towards `to`.
    pub fn bearing_to(&self, to: LatLng) -> u16 {
        let (p1, p2) = (self.lat.to_radians(), to.lat.to_radians());
        let dl = (to.lng - self.lng).to_radians();
        let y = dl.sin() * p2.cos();
        let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
        let deg = y.atan2(x).to_degrees().rem_euclid(360.0);
        (deg.round() as u16) % 360
    }
}

impl std::fmt::Display for LatLng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.7},{:.7}", self.lat, self.lng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_nan() {
        assert!(LatLng::new(91.0, 0.0).is_none());
        assert!(LatLng::new(0.0, -180.5).is_none());
        assert!(LatLng::new(f64::NAN, 0.0).is_none());
        assert!(LatLng::new(37.4, -122.1).is_some());
    }

    #[test]
    fn bearings_point_the_right_way() {
        let o = LatLng { lat: 0.0, lng: 0.0 };
        assert_eq!(o.bearing_to(LatLng { lat: 1.0, lng: 0.0 }), 0);
        assert_eq!(o.bearing_to(LatLng { lat: 0.0, lng: 1.0 }), 90);
        assert_eq!(o.bearing_to(LatLng { lat: -1.0, lng: 0.0 }), 180);
        assert_eq!(o.bearing_to(LatLng { lat: 0.0, lng: -1.0 }), 270);
    }
}
