//! Integer next-hop weights for the fast path's weighted bucket table (1021 buckets, up to 8
//! members), from per-path shares.

use std::collections::BTreeMap;

use crate::topology::LinkId;

/// Paths one destination's traffic is split over (B4 uses about four per pair).
pub const MAX_PATHS: usize = 4;
/// Largest weight: keeps weights small next to the 1021 buckets while rounding each path's
/// share to within 0.2 % of the largest one.
pub const MAX_WEIGHT: u8 = 255;

/// What the traffic engineer needs to know about a path to weight it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathView {
    /// Every link of the path is up.
    pub live: bool,
    /// Bandwidth the path can still take, bit/s (its narrowest link's).
    pub available_bps: u64,
}

/// Integer weights proportional to `shares`, each at most `MAX_WEIGHT`. A weight is zero only
/// where the share is zero. Exact ratios are kept when they are small (40:80:160 → 1:2:4);
/// otherwise each weight is rounded to within half a unit of `share * 255 / max(share)`.
pub fn proportional_weights(shares: &[u64]) -> Vec<u8> {
    let max = shares.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return vec![0; shares.len()];
    }
    let g = shares.iter().copied().filter(|&s| s > 0).fold(0, gcd);
    if max / g <= u64::from(MAX_WEIGHT) {
        return shares.iter().map(|&s| (s / g) as u8).collect();
    }
    shares
        .iter()
        .map(|&s| {
            if s == 0 {
                return 0;
            }
            let w =
                (u128::from(s) * u128::from(MAX_WEIGHT) + u128::from(max) / 2) / u128::from(max);
            w.max(1) as u8
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// ECMP: every live path weight 1, dead paths 0.
pub fn ecmp_weights(paths: &[PathView]) -> Vec<u8> {
    paths.iter().map(|p| u8::from(p.live)).collect()
}

/// WECMP: live paths weighted by available bandwidth. A live path gets 0 only if it has no
/// available bandwidth while another path has some; if none has any, traffic must still go
/// somewhere, so it is split equally over the live paths.
pub fn wecmp_weights(paths: &[PathView]) -> Vec<u8> {
    let shares: Vec<u64> = paths
        .iter()
        .map(|p| if p.live { p.available_bps } else { 0 })
        .collect();
    if shares.iter().all(|&s| s == 0) {
        return ecmp_weights(paths);
    }
    proportional_weights(&shares)
}

/// Capacity left after keeping `headroom_percent` free.
pub fn usable_bps(capacity_bps: u64, headroom_percent: u8) -> u64 {
    crate::bandwidth::reservable_bps(capacity_bps, headroom_percent)
}

/// The live/available view of `path` given each link's available bandwidth (a dead or unknown
/// link is absent from `available`).
pub fn path_view(path: &[LinkId], available: &BTreeMap<LinkId, u64>) -> PathView {
    let mut view = PathView {
        live: !path.is_empty(),
        available_bps: u64::MAX,
    };
    for l in path {
        match available.get(l) {
            Some(&a) => view.available_bps = view.available_bps.min(a),
            None => view.live = false,
        }
    }
    if !view.live {
        view.available_bps = 0;
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn live(available_bps: u64) -> PathView {
        PathView {
            live: true,
            available_bps,
        }
    }

    #[test]
    fn weights_follow_available_bandwidth() {
        // 50/100/200 Mbit/s paths less 20 % headroom.
        let paths = [live(40_000_000), live(80_000_000), live(160_000_000)];
        assert_eq!(wecmp_weights(&paths), vec![1, 2, 4]);
        assert_eq!(ecmp_weights(&paths), vec![1, 1, 1]);
        // Reservations took 60M of the 200M path: its weight drops accordingly.
        let paths = [live(40_000_000), live(80_000_000), live(100_000_000)];
        assert_eq!(wecmp_weights(&paths), vec![2, 4, 5]);
        let paths = [live(1_000_000_007), live(1_000_000_009), live(3)];
        assert_eq!(wecmp_weights(&paths), vec![255, 255, 1]);
    }

    #[test]
    fn dead_and_full_paths() {
        let dead = PathView {
            live: false,
            available_bps: 100,
        };
        assert_eq!(wecmp_weights(&[dead, live(10), live(0)]), vec![0, 1, 0]);
        assert_eq!(wecmp_weights(&[dead, live(0), live(0)]), vec![0, 1, 1]);
        assert_eq!(wecmp_weights(&[dead, dead]), vec![0, 0]);
        assert_eq!(ecmp_weights(&[dead, live(0)]), vec![0, 1]);
    }

    #[test]
    fn path_views_take_the_narrowest_link() {
        let avail: BTreeMap<LinkId, u64> = [(LinkId(1), 10), (LinkId(2), 5)].into();
        assert_eq!(path_view(&[LinkId(1), LinkId(2)], &avail), live(5));
        assert_eq!(
            path_view(&[LinkId(1), LinkId(3)], &avail),
            PathView {
                live: false,
                available_bps: 0
            }
        );
        assert!(!path_view(&[], &avail).live);
    }

    proptest! {
        #[test]
        fn proportional_weights_are_close_and_never_zero_for_a_positive_share(
            shares in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..=u64::MAX], 1..=MAX_PATHS)
        ) {
            let w = proportional_weights(&shares);
            let max_share = *shares.iter().max().unwrap() as f64;
            let top = f64::from(*w.iter().max().unwrap());
            prop_assert!(top <= f64::from(MAX_WEIGHT));
            for (&s, &wi) in shares.iter().zip(&w) {
                prop_assert_eq!(s == 0, wi == 0);
                if s > 0 {
                    // Oracle: the exact weight on the scale of the largest one.
                    let exact = top * s as f64 / max_share;
                    let err = (f64::from(wi) - exact).abs();
                    prop_assert!(err <= 0.5 + 1e-6 || (wi == 1 && exact < 1.0), "{shares:?} -> {w:?}");
                }
            }
        }
    }
}
