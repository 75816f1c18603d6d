//! Great-circle distance and the latency prior of links that have no measurement yet.

/// Mean Earth radius (IUGG).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Light in fibre travels at c / 1.468 ≈ 204 km per millisecond.
pub const FIBRE_KM_PER_MS: f64 = 204.0;
/// Fibre routes are longer than the great circle; 1.5 is a common planning factor and turns
/// us-east-1 ↔ eu-west-1 (≈ 5,500 km) into ≈ 81 ms RTT, close to what is measured there.
pub const ROUTE_STRETCH: f64 = 1.5;

/// Great-circle distance in km between two points given in degrees (haversine formula).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Round-trip latency prior in ms for a path of fibre between two points.
pub fn latency_prior_ms(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    2.0 * haversine_km(lat1, lon1, lat2, lon2) * ROUTE_STRETCH / FIBRE_KM_PER_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        // New York JFK - London LHR: 5,555 km great circle.
        let d = haversine_km(40.6413, -73.7781, 51.4700, -0.4543);
        assert!((d - 5555.0).abs() < 15.0, "{d}");
        // Antipodes: half the circumference.
        let d = haversine_km(0.0, 0.0, 0.0, 180.0);
        assert!(
            (d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6,
            "{d}"
        );
        assert_eq!(haversine_km(10.0, 20.0, 10.0, 20.0), 0.0);
    }

    #[test]
    fn prior_is_symmetric_and_grows_with_distance() {
        let ab = latency_prior_ms(38.9, -77.0, 53.3, -6.3);
        let ba = latency_prior_ms(53.3, -6.3, 38.9, -77.0);
        assert!((ab - ba).abs() < 1e-9);
        assert!(ab > 70.0 && ab < 90.0, "{ab}");
        assert!(latency_prior_ms(38.9, -77.0, 19.1, 72.9) > ab);
    }
}
