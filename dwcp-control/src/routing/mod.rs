//! The routing engine: strategies (minimum latency, minimum cost, widest path, balanced),
//! ECMP sets, k loopless shortest paths (Yen), link-disjoint backups, policy constraints, a
//! route cache, and per-gateway routing tables with incremental recompute.
//!
//! Layers: [`RoutingGraph`] is a topology snapshot prepared for routing (pure, no locking);
//! [`RoutingEngine`] tracks the store's current snapshot, caches route sets and builds tables.
pub mod engine;
pub mod error;
pub mod graph;
pub mod path;
pub mod search;
pub mod strategy;
pub mod table;

pub use engine::{CacheStats, RoutingEngine};
pub use error::RoutingError;
pub use graph::{LinkMetrics, RoutingGraph};
pub use path::{Path, RouteSet, Secondary};
pub use search::{PathKey, MAX_ECMP_PATHS, MAX_SECONDARIES};
pub use strategy::{BalancedWeights, Constraints, Strategy};
pub use table::{
    compute_table, update_table, EdgeRoutes, RegionRoutes, RouteResult, RoutingTable, TableStats,
};

/// Route set from `src` to `dst` on a prepared graph, without cache (benchmarks, tools).
pub fn route_on(
    graph: &RoutingGraph,
    src: crate::topology::RegionId,
    dst: crate::topology::RegionId,
    strategy: &Strategy,
    constraints: &Constraints,
) -> Result<RouteSet, RoutingError> {
    search::Search::new(graph, strategy, constraints)?.route(src, dst, None)
}

/// Only the best path from `src` to `dst` (same choice as `RouteSet::primary`).
pub fn primary_on(
    graph: &RoutingGraph,
    src: crate::topology::RegionId,
    dst: crate::topology::RegionId,
    strategy: &Strategy,
    constraints: &Constraints,
) -> Result<Path, RoutingError> {
    search::Search::new(graph, strategy, constraints)?.primary(src, dst)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
