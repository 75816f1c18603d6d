//! What a route optimises (strategy) and what it must respect (constraints).
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use super::error::RoutingError;

/// Weights and reference values of the balanced strategy. Each link gets the score
///
/// `latency·lat/latency_ref + cost·cost/cost_ref + bandwidth·bandwidth_ref/available + loss·ln(1-loss)/ln(1-loss_ref)`
///
/// and a path's score is the sum over its links. The terms are normalised by fixed references, not by the current topology's extremes, so a
/// link's score depends on that link alone: one link changing does not re-weight the others
/// (which keeps routes stable and lets the table be recomputed incrementally). The bandwidth
/// term is the OSPF reference-bandwidth cost, computed on the bandwidth still available.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancedWeights {
    pub latency: f64,
    pub cost: f64,
    pub bandwidth: f64,
    pub loss: f64,
    pub latency_ref_ms: f64,
    pub cost_ref_per_gb: f64,
    pub bandwidth_ref_mbps: f64,
    /// Loss fraction that costs as much as one unit of the other terms.
    pub loss_ref: f64,
}

impl Default for BalancedWeights {
    fn default() -> Self {
        BalancedWeights {
            latency: 0.4,
            cost: 0.2,
            bandwidth: 0.2,
            loss: 0.2,
            latency_ref_ms: 100.0,
            cost_ref_per_gb: 0.05,
            bandwidth_ref_mbps: 1000.0,
            loss_ref: 0.01,
        }
    }
}

impl BalancedWeights {
    pub fn validate(&self) -> Result<(), RoutingError> {
        let weights = [
            ("latency", self.latency),
            ("cost", self.cost),
            ("bandwidth", self.bandwidth),
            ("loss", self.loss),
        ];
        for (name, w) in weights {
            if !(w.is_finite() && w >= 0.0) {
                return Err(RoutingError::InvalidStrategy(format!(
                    "balanced weight {name} = {w} must be a finite number >= 0"
                )));
            }
        }
        if weights.iter().all(|(_, w)| *w == 0.0) {
            return Err(RoutingError::InvalidStrategy(
                "balanced weights are all 0".into(),
            ));
        }
        let refs = [
            ("latency_ref_ms", self.latency_ref_ms),
            ("cost_ref_per_gb", self.cost_ref_per_gb),
            ("bandwidth_ref_mbps", self.bandwidth_ref_mbps),
        ];
        for (name, r) in refs {
            if !(r.is_finite() && r > 0.0) {
                return Err(RoutingError::InvalidStrategy(format!(
                    "balanced {name} = {r} must be a finite number > 0"
                )));
            }
        }
        if !(self.loss_ref > 0.0 && self.loss_ref < 1.0) {
            return Err(RoutingError::InvalidStrategy(format!(
                "balanced loss_ref = {} must be within 0..1 (exclusive)",
                self.loss_ref
            )));
        }
        Ok(())
    }

    fn bits(&self) -> [u64; 8] {
        [
            self.latency,
            self.cost,
            self.bandwidth,
            self.loss,
            self.latency_ref_ms,
            self.cost_ref_per_gb,
            self.bandwidth_ref_mbps,
            self.loss_ref,
        ]
        .map(f64::to_bits)
    }
}

impl Eq for BalancedWeights {}

impl Hash for BalancedWeights {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bits().hash(state);
    }
}

/// What a route optimises. Every strategy breaks its ties deterministically (see each variant,
/// then the sequence of link ids), so every gateway picks the same primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Minimum sum of link round-trip latencies (Dijkstra); ties by cost. ECMP: equal latency.
    MinLatency,
    /// Minimum sum of cost per GB (Dijkstra); ties by latency. ECMP: equal cost.
    MinCost,
    /// Maximum bottleneck of available bandwidth (widest path); ties by latency, then cost.
    /// ECMP: equal bottleneck and latency.
    MaxBandwidth,
    /// Minimum sum of balanced link scores; ties by latency. ECMP: equal score.
    Balanced(BalancedWeights),
}

impl Strategy {
    /// The four strategies of a routing table (balanced with default weights).
    pub const ALL_DEFAULT: [Strategy; 4] = [
        Strategy::MinLatency,
        Strategy::MinCost,
        Strategy::MaxBandwidth,
        Strategy::Balanced(BalancedWeights {
            latency: 0.4,
            cost: 0.2,
            bandwidth: 0.2,
            loss: 0.2,
            latency_ref_ms: 100.0,
            cost_ref_per_gb: 0.05,
            bandwidth_ref_mbps: 1000.0,
            loss_ref: 0.01,
        }),
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::MinLatency => "min_latency",
            Strategy::MinCost => "min_cost",
            Strategy::MaxBandwidth => "max_bandwidth",
            Strategy::Balanced(_) => "balanced",
        }
    }

    pub fn validate(&self) -> Result<(), RoutingError> {
        match self {
            Strategy::Balanced(w) => w.validate(),
            _ => Ok(()),
        }
    }
}

/// Policy a route must respect. Region, country and provider names are compared exactly
/// (countries as ISO codes, as in the topology).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    pub avoid_regions: BTreeSet<String>,
    pub avoid_countries: BTreeSet<String>,
    pub avoid_providers: BTreeSet<String>,
    /// Largest acceptable path round-trip latency (compared at microsecond resolution).
    pub max_latency_ms: Option<f64>,
    /// Every link of the path must have at least this much bandwidth available.
    pub min_bandwidth_mbps: Option<f64>,
}

impl Eq for Constraints {}

impl Hash for Constraints {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.avoid_regions.hash(state);
        self.avoid_countries.hash(state);
        self.avoid_providers.hash(state);
        self.max_latency_ms.map(f64::to_bits).hash(state);
        self.min_bandwidth_mbps.map(f64::to_bits).hash(state);
    }
}

impl Constraints {
    pub fn none() -> Self {
        Constraints::default()
    }

    pub fn validate(&self) -> Result<(), RoutingError> {
        if let Some(ms) = self.max_latency_ms {
            if !(ms.is_finite() && ms >= 0.0) {
                return Err(RoutingError::InvalidConstraint {
                    constraint: "max_latency_ms",
                    reason: format!("{ms} must be a finite number >= 0"),
                });
            }
        }
        if let Some(mbps) = self.min_bandwidth_mbps {
            if !(mbps.is_finite() && mbps >= 0.0) {
                return Err(RoutingError::InvalidConstraint {
                    constraint: "min_bandwidth_mbps",
                    reason: format!("{mbps} must be a finite number >= 0"),
                });
            }
        }
        Ok(())
    }
}
