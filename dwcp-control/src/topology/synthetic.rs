//! Synthetic topologies for benchmarks and scale tests: regions scattered over the globe, each
//! linked to its nearest neighbours and along a ring (so the graph is connected and has
//! disjoint paths), plus a few long-haul links; edge nodes spread over the regions.
//! Deterministic for a given seed, so every run measures the same topology.
use super::config::{EdgeConfig, LinkConfig, RegionConfig, TopologyConfig};
use super::geo::{haversine_km, latency_prior_ms};
use super::model::{RoutingHealth, TunnelKind};

#[derive(Clone, Copy, Debug)]
pub struct SyntheticSpec {
    pub regions: usize,
    pub edges: usize,
    /// Links from each region to its nearest regions.
    pub nearest: usize,
    /// Extra links between random regions.
    pub long_haul: usize,
    pub seed: u64,
}

impl SyntheticSpec {
    /// `regions` regions and `edges` edge nodes with the default shape (4 nearest, regions / 5
    /// long-haul links).
    pub fn new(regions: usize, edges: usize) -> Self {
        SyntheticSpec {
            regions,
            edges,
            nearest: 4,
            long_haul: regions / 5,
            seed: 0x5eed_d3c9,
        }
    }
}

/// splitmix64: small, deterministic, good enough to scatter regions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const COUNTRIES: [&str; 10] = ["US", "IE", "DE", "FR", "IN", "JP", "SG", "BR", "AU", "ZA"];
const PROVIDERS: [&str; 4] = ["aws", "gcp", "azure", "equinix"];
const CAPACITIES_MBPS: [f64; 4] = [1_000.0, 2_000.0, 5_000.0, 10_000.0];

/// Builds the config of a synthetic topology (validate it with `Topology::from_config`).
pub fn generate(spec: &SyntheticSpec) -> TopologyConfig {
    let mut rng = Rng(spec.seed);
    let regions: Vec<RegionConfig> = (0..spec.regions)
        .map(|i| RegionConfig {
            name: format!("region-{i:03}"),
            description: String::new(),
            latitude: rng.range(-50.0, 60.0),
            longitude: rng.range(-180.0, 180.0),
            country: COUNTRIES[rng.below(COUNTRIES.len())].to_string(),
            provider: PROVIDERS[rng.below(PROVIDERS.len())].to_string(),
            capacity_mbps: 40_000.0,
            gateways: Vec::new(),
        })
        .collect();

    let n = regions.len();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let add = |a: usize, b: usize, pairs: &mut Vec<(usize, usize)>| {
        let key = (a.min(b), a.max(b));
        if a != b && !pairs.contains(&key) && pairs.len() < dwcp_common::MAX_LINKS as usize {
            pairs.push(key);
        }
    };
    if n > 1 {
        for i in 0..n {
            add(i, (i + 1) % n, &mut pairs);
        }
    }
    for i in 0..n {
        let mut by_distance: Vec<(f64, usize)> = (0..n)
            .filter(|&j| j != i)
            .map(|j| {
                let (a, b) = (&regions[i], &regions[j]);
                (
                    haversine_km(a.latitude, a.longitude, b.latitude, b.longitude),
                    j,
                )
            })
            .collect();
        by_distance.sort_by(|x, y| x.0.total_cmp(&y.0));
        for &(_, j) in by_distance.iter().take(spec.nearest) {
            add(i, j, &mut pairs);
        }
    }
    if n > 1 {
        for _ in 0..spec.long_haul {
            let (a, b) = (rng.below(n), rng.below(n));
            add(a, b, &mut pairs);
        }
    }

    let links = pairs
        .iter()
        .enumerate()
        .map(|(id, &(a, b))| {
            let (ra, rb) = (&regions[a], &regions[b]);
            let prior = latency_prior_ms(ra.latitude, ra.longitude, rb.latitude, rb.longitude);
            let mut link =
                LinkConfig::new(id as u32, &ra.name, &rb.name, CAPACITIES_MBPS[rng.below(4)]);
            // Half the links measured (prior ± 20 %), half still on the prior.
            link.latency_ms = (rng.unit() < 0.5).then(|| (prior * rng.range(0.8, 1.2)).max(0.5));
            link.utilisation = rng.range(0.0, 0.8);
            link.cost_per_gb = rng.range(0.01, 0.09);
            link.jitter_ms = rng.range(0.0, 3.0);
            link.loss = rng.range(0.0, 0.002);
            link.kind = if rng.unit() < 0.5 {
                TunnelKind::Vxlan
            } else {
                TunnelKind::Wireguard
            };
            link.health = RoutingHealth::Up;
            link
        })
        .collect();

    let edges = (0..spec.edges)
        .map(|i| {
            let region = &regions[i % n.max(1)];
            EdgeConfig {
                name: format!("edge-{i:04}"),
                region: region.name.clone(),
                latitude: Some((region.latitude + rng.range(-2.0, 2.0)).clamp(-90.0, 90.0)),
                longitude: Some((region.longitude + rng.range(-2.0, 2.0)).clamp(-180.0, 180.0)),
                access_latency_ms: None,
            }
        })
        .collect();

    TopologyConfig::from_entries(regions, links, edges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    #[test]
    fn fifty_regions_thousand_edges_validate_and_are_connected() {
        let config = generate(&SyntheticSpec::new(50, 1000));
        let topo = Topology::from_config(&config, None).expect("synthetic topology is valid");
        assert_eq!(topo.regions().len(), 50);
        assert_eq!(topo.edges().len(), 1000);
        // Ring + nearest neighbours: every region has at least two links.
        for r in topo.regions() {
            let degree = topo
                .links()
                .iter()
                .filter(|l| l.other_end(r.id).is_some())
                .count();
            assert!(degree >= 2, "{} has {degree} links", r.name);
        }
    }

    #[test]
    fn same_seed_same_topology() {
        let spec = SyntheticSpec::new(10, 20);
        assert_eq!(generate(&spec), generate(&spec));
        let other = SyntheticSpec { seed: 1, ..spec };
        assert_ne!(generate(&spec), generate(&other));
    }
}
