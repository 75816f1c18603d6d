//! The routing engine: routes on the current topology snapshot, with a cache keyed by
//! (source, destination, strategy, constraints) that a new topology generation invalidates.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::error::RoutingError;
use super::graph::RoutingGraph;
use super::path::{Path, RouteSet};
use super::search::Search;
use super::strategy::{Constraints, Strategy};
use super::table::{compute_table, update_table, RoutingTable};
use crate::topology::{RegionId, Topology, TopologyStore};

/// Entries kept before the cache starts over (a gateway asks for far fewer).
const CACHE_CAPACITY: usize = 65_536;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    src: RegionId,
    dst: RegionId,
    strategy: Strategy,
    constraints: Constraints,
}

struct Prepared {
    topology: Arc<Topology>,
    graph: Arc<RoutingGraph>,
    cache: HashMap<CacheKey, Arc<RouteSet>>,
}

/// Cache counters, for telemetry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
}

pub struct RoutingEngine {
    store: Arc<dyn TopologyStore>,
    state: Mutex<(Prepared, CacheStats)>,
}

impl RoutingEngine {
    pub fn new(store: Arc<dyn TopologyStore>) -> Self {
        let topology = store.snapshot();
        let graph = Arc::new(RoutingGraph::new(&topology));
        RoutingEngine {
            store,
            state: Mutex::new((
                Prepared {
                    topology,
                    graph,
                    cache: HashMap::new(),
                },
                CacheStats::default(),
            )),
        }
    }

    /// The topology and routing graph of the store's current generation; a new generation
    /// rebuilds the graph and empties the cache.
    fn current(&self) -> (Arc<Topology>, Arc<RoutingGraph>) {
        let snapshot = self.store.snapshot();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (prepared, stats) = &mut *state;
        if prepared.topology.generation() != snapshot.generation() {
            prepared.graph = Arc::new(RoutingGraph::refresh(&prepared.graph, &snapshot));
            prepared.topology = snapshot;
            prepared.cache.clear();
            stats.invalidations += 1;
        }
        (prepared.topology.clone(), prepared.graph.clone())
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.current().0
    }

    pub fn graph(&self) -> Arc<RoutingGraph> {
        self.current().1
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Region id of a region name.
    pub fn region_id(&self, name: &str) -> Result<RegionId, RoutingError> {
        self.topology()
            .region_by_name(name)
            .map(|r| r.id)
            .ok_or_else(|| RoutingError::UnknownRegion(name.to_string()))
    }

    /// Primary, ECMP set and up to 3 secondaries from `src` to `dst`.
    pub fn route(
        &self,
        src: RegionId,
        dst: RegionId,
        strategy: &Strategy,
        constraints: &Constraints,
    ) -> Result<Arc<RouteSet>, RoutingError> {
        let (_, graph) = self.current();
        let key = CacheKey {
            src,
            dst,
            strategy: *strategy,
            constraints: constraints.clone(),
        };
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (prepared, stats) = &mut *state;
            if prepared.graph.generation() == graph.generation() {
                if let Some(hit) = prepared.cache.get(&key) {
                    stats.hits += 1;
                    return Ok(hit.clone());
                }
            }
            stats.misses += 1;
        }
        // Computed outside the lock: readers of other keys are not held up.
        let routes = Arc::new(Search::new(&graph, strategy, constraints)?.route(src, dst, None)?);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (prepared, _) = &mut *state;
        if prepared.graph.generation() == graph.generation() {
            if prepared.cache.len() >= CACHE_CAPACITY {
                prepared.cache.clear();
            }
            prepared.cache.insert(key, routes.clone());
        }
        Ok(routes)
    }

    /// `route` by region names.
    pub fn route_by_name(
        &self,
        src: &str,
        dst: &str,
        strategy: &Strategy,
        constraints: &Constraints,
    ) -> Result<Arc<RouteSet>, RoutingError> {
        self.route(
            self.region_id(src)?,
            self.region_id(dst)?,
            strategy,
            constraints,
        )
    }

    /// Up to `k` loopless paths from `src` to `dst` in order of the strategy (Yen), within the
    /// constraints.
    pub fn k_shortest(
        &self,
        src: RegionId,
        dst: RegionId,
        strategy: &Strategy,
        constraints: &Constraints,
        k: usize,
    ) -> Result<Vec<Path>, RoutingError> {
        let graph = self.graph();
        let search = Search::new(&graph, strategy, constraints)?;
        for r in [src, dst] {
            if r.0 as usize >= graph.region_count() {
                return Err(RoutingError::UnknownRegionId(r.0));
            }
        }
        Ok(search
            .k_shortest(src.0, dst.0, k)
            .iter()
            .map(|c| search.path(c))
            .collect())
    }

    /// Routes from `src` to every region and edge node under the four default strategies.
    pub fn table(
        &self,
        src: RegionId,
        constraints: &Constraints,
    ) -> Result<RoutingTable, RoutingError> {
        self.table_with(src, &Strategy::ALL_DEFAULT, constraints)
    }

    pub fn table_with(
        &self,
        src: RegionId,
        strategies: &[Strategy],
        constraints: &Constraints,
    ) -> Result<RoutingTable, RoutingError> {
        let (topology, graph) = self.current();
        compute_table(&graph, &topology, src, strategies, constraints)
    }

    /// `previous` brought up to the current topology, recomputing only the destinations a
    /// changed link can affect (see `table::update_table`).
    pub fn update_table(&self, previous: &RoutingTable) -> Result<RoutingTable, RoutingError> {
        let (topology, graph) = self.current();
        if graph.generation() == previous.generation {
            return Ok(previous.clone());
        }
        update_table(&graph, &topology, previous)
    }
}
