//! Routes as the other modules see them.
use serde::Serialize;

use super::strategy::{Constraints, Strategy};
use crate::topology::{LinkId, RegionId};

/// A loop-free path through regions, with its figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Path {
    /// Source first, destination last.
    pub regions: Vec<RegionId>,
    /// `links[i]` joins `regions[i]` and `regions[i + 1]`.
    pub links: Vec<LinkId>,
    /// Sum of the links' round-trip latencies.
    pub latency_ms: f64,
    /// Sum of the links' cost per GB.
    pub cost_per_gb: f64,
    /// Smallest available bandwidth along the path.
    pub bottleneck_mbps: f64,
    /// Probability that a packet is lost somewhere on the path.
    pub loss: f64,
}

impl Path {
    /// The link this gateway sends on (the next hop of the fast path).
    pub fn first_link(&self) -> Option<LinkId> {
        self.links.first().copied()
    }
}

/// A backup path. `shared_links` lists the links it shares with the primary and the earlier
/// secondaries: empty means link-disjoint; otherwise no disjoint path was left and this is the
/// least-overlapping one among the best candidates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Secondary {
    pub path: Path,
    pub shared_links: Vec<LinkId>,
}

impl Secondary {
    pub fn is_link_disjoint(&self) -> bool {
        self.shared_links.is_empty()
    }
}

/// Routes from one region to another under one strategy and set of constraints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteSet {
    pub src: RegionId,
    pub dst: RegionId,
    pub strategy: Strategy,
    pub constraints: Constraints,
    /// Topology generation the routes were computed on.
    pub generation: u64,
    /// The best path; also `ecmp[0]`.
    pub primary: Path,
    /// Every path that is optimal under the strategy (see `Strategy` for what "equal" means),
    /// ordered by the strategy's tie-breaks, at most `MAX_ECMP_PATHS`.
    pub ecmp: Vec<Path>,
    /// More optimal paths exist than `ecmp` holds.
    pub ecmp_truncated: bool,
    /// Up to 3 backups, link-disjoint from the primary and each other where the topology allows.
    pub secondaries: Vec<Secondary>,
    /// Link indexes (into the routing graph) whose change can alter this set; `None` = any.
    #[serde(skip)]
    pub(crate) depends_on: Option<Vec<u32>>,
}

impl RouteSet {
    /// Primary then secondaries: the members of a failover group.
    pub fn failover_paths(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(&self.primary).chain(self.secondaries.iter().map(|s| &s.path))
    }
}
