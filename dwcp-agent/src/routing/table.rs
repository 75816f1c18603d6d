//! A gateway's routing table: route sets to every region and edge node under every strategy,
//! and its incremental recompute after link changes.
use std::sync::Arc;

use super::error::RoutingError;
use super::graph::{Dist, LinkMetrics, RoutingGraph};
use super::path::RouteSet;
use super::search::{Search, Shared};
use super::strategy::{Constraints, Strategy};
use crate::topology::{EdgeId, LinkId, RegionId, Topology};

pub type RouteResult = Result<Arc<RouteSet>, RoutingError>;

/// Routes to one destination region, one entry per strategy of the table.
#[derive(Clone, Debug)]
pub struct RegionRoutes {
    pub dst: RegionId,
    /// Shared with the table's edge nodes of the region (one allocation per region).
    pub routes: Arc<[RouteResult]>,
}

/// Routes to an edge node. Edge nodes hang off exactly one region and are never transit hops,
/// so their routes are their region's (shared, not recomputed) plus the access latency.
#[derive(Clone, Debug)]
pub struct EdgeRoutes {
    pub edge: EdgeId,
    pub region: RegionId,
    pub access_latency_ms: f64,
    /// The edge node hangs off the source region itself: delivered locally, no route.
    pub local: bool,
    /// The region's entry itself (shared, not copied).
    pub routes: Arc<[RouteResult]>,
}

#[derive(Clone, Debug)]
pub struct RoutingTable {
    pub src: RegionId,
    pub generation: u64,
    pub strategies: Vec<Strategy>,
    pub constraints: Constraints,
    /// Every region but the source, in region order.
    pub regions: Vec<RegionRoutes>,
    pub edges: Vec<EdgeRoutes>,
    /// How the last computation went (full or incremental, and how much was redone).
    pub stats: TableStats,
    pub(crate) graph: Arc<RoutingGraph>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub full: bool,
    /// (destination, strategy) entries computed from scratch.
    pub recomputed: usize,
    /// Entries whose primary and ECMP set were kept and only later backups searched again.
    pub resumed: usize,
    /// Entries kept as they were.
    pub reused: usize,
}

impl RoutingTable {
    pub fn region(&self, dst: RegionId) -> Option<&RegionRoutes> {
        self.regions.iter().find(|r| r.dst == dst)
    }
}

fn edges(topology: &Topology, src: RegionId, regions: &[RegionRoutes]) -> Vec<EdgeRoutes> {
    topology
        .edges()
        .iter()
        .map(|e| {
            let local = e.region == src;
            let routes = if local {
                Arc::from(Vec::new())
            } else {
                // `regions` holds every region but the source, in region order.
                let i = e.region.0 as usize - usize::from(e.region > src);
                regions
                    .get(i)
                    .filter(|r| r.dst == e.region)
                    .or_else(|| regions.iter().find(|r| r.dst == e.region))
                    .map(|r| r.routes.clone())
                    .unwrap_or_else(|| Arc::from(Vec::new()))
            };
            EdgeRoutes {
                edge: e.id,
                region: e.region,
                access_latency_ms: e.access_latency_ms,
                local,
                routes,
            }
        })
        .collect()
}

/// Computes the full table of `src`.
pub fn compute_table(
    graph: &Arc<RoutingGraph>,
    topology: &Topology,
    src: RegionId,
    strategies: &[Strategy],
    constraints: &Constraints,
) -> Result<RoutingTable, RoutingError> {
    if src.0 as usize >= graph.region_count() {
        return Err(RoutingError::UnknownRegionId(src.0));
    }
    let searches: Vec<Search> = strategies
        .iter()
        .map(|s| Search::new(graph, s, constraints))
        .collect::<Result<_, _>>()?;
    let shared: Vec<_> = searches
        .iter()
        .map(|s| s.budget.is_none().then(|| s.shared(src.0)))
        .collect();
    let regions: Vec<RegionRoutes> = (0..graph.region_count() as u32)
        .filter(|&d| d != src.0)
        .map(|d| RegionRoutes {
            dst: RegionId(d),
            routes: searches
                .iter()
                .zip(&shared)
                .map(|(s, sh)| s.route(src, RegionId(d), sh.as_ref()).map(Arc::new))
                .collect(),
        })
        .collect();
    let recomputed = regions.len() * strategies.len();
    Ok(RoutingTable {
        src,
        generation: graph.generation(),
        strategies: strategies.to_vec(),
        constraints: constraints.clone(),
        edges: edges(topology, src, &regions),
        regions,
        stats: TableStats {
            full: true,
            recomputed,
            resumed: 0,
            reused: 0,
        },
        graph: graph.clone(),
    })
}

/// A link change that can only make paths through the link worse (or leave them as they
/// were) under every strategy.
fn no_better(old: &LinkMetrics, new: &LinkMetrics) -> bool {
    (old.usable || !new.usable)
        && new.latency_ms >= old.latency_ms
        && new.cost_per_gb >= old.cost_per_gb
        && new.avail_mbps <= old.avail_mbps
        && new.loss >= old.loss
}

fn same_structure(a: &RoutingGraph, b: &RoutingGraph) -> bool {
    a.names == b.names
        && a.countries == b.countries
        && a.providers == b.providers
        && a.links.len() == b.links.len()
        && a.links
            .iter()
            .zip(&b.links)
            .all(|(x, y)| x.id == y.id && x.a == y.a && x.b == y.b)
}

/// Brings `previous` up to date with `graph` (a later snapshot of the same topology).
///
/// When every changed link only got worse (latency, cost, loss up; available bandwidth down;
/// or went down), a route set none of whose paths uses a changed link is still exactly what a
/// full recompute would give: its paths kept their figures, every other path kept or lost
/// quality, and ties are broken by a fixed order. Only the destinations whose route sets touch
/// a changed link are recomputed, and of those whose primary and ECMP set do not, only the
/// backups from the first one that uses a changed link on.
///
/// A link that got better (in any figure, or came up) can only pull a route set onto itself
/// if some path through it could now be at least as good as one of the set's paths: the
/// entry is recomputed when a lower bound of every path through the link (see
/// `may_improve`) is not above the key of the set's worst path, or when the set has fewer
/// backups than it may hold (a new path could fill the gap), and kept otherwise: every path
/// whose figures changed is then strictly worse than each path kept, so every search of the
/// set returns what it returned before. A changed structure or a latency budget means a full
/// recompute.
pub fn update_table(
    graph: &Arc<RoutingGraph>,
    topology: &Topology,
    previous: &RoutingTable,
) -> Result<RoutingTable, RoutingError> {
    let old = &previous.graph;
    let full = || {
        compute_table(
            graph,
            topology,
            previous.src,
            &previous.strategies,
            &previous.constraints,
        )
    };
    if !same_structure(old, graph) || previous.constraints.max_latency_ms.is_some() {
        return full();
    }
    let changed: Vec<u32> = (0..graph.links.len())
        .filter(|&l| old.links[l] != graph.links[l])
        .map(|l| l as u32)
        .collect();
    let improved: Vec<u32> = changed
        .iter()
        .copied()
        .filter(|&l| !no_better(&old.links[l as usize], &graph.links[l as usize]))
        .collect();
    let changed_ids: Vec<LinkId> = changed
        .iter()
        .map(|&l| graph.links[l as usize].id)
        .collect();
    let src = previous.src;
    let searches: Vec<Search> = previous
        .strategies
        .iter()
        .map(|s| Search::new(graph, s, &previous.constraints))
        .collect::<Result<_, _>>()?;
    let mut shared: Vec<Option<Shared>> = (0..searches.len()).map(|_| None).collect();
    // For entries that only search backups again: the distances from the source alone.
    let mut trees: Vec<Option<Dist>> = (0..searches.len()).map(|_| None).collect();
    let mut stats = TableStats::default();
    // With improved links: every search's tree from the source on the new graph (the lower
    // bounds of `may_improve`), computed once per strategy.
    if !improved.is_empty() {
        for (i, s) in searches.iter().enumerate() {
            if !s.is_widest() {
                trees[i] = Some(s.tree(src.0));
            }
        }
    }
    let regions: Vec<RegionRoutes> = previous
        .regions
        .iter()
        .map(|entry| RegionRoutes {
            dst: entry.dst,
            routes: entry
                .routes
                .iter()
                .enumerate()
                .map(|(i, result)| {
                    let changed_in = |p: &super::path::Path| {
                        p.links
                            .iter()
                            .any(|id| changed_ids.binary_search(id).is_ok())
                    };
                    match result {
                        Ok(rs)
                            if rs.depends_on.is_some()
                                && !may_improve(
                                    graph,
                                    &searches[i],
                                    trees[i].as_deref(),
                                    &improved,
                                    rs,
                                ) =>
                        {
                            let deps = rs.depends_on.as_deref().unwrap_or_default();
                            if !changed.iter().any(|l| deps.binary_search(l).is_ok()) {
                                stats.reused += 1;
                                return result.clone();
                            }
                            // Primary and ECMP untouched: keep them and the backups before the
                            // first one that uses a changed link.
                            if !rs.ecmp.iter().any(changed_in) {
                                let from = rs
                                    .secondaries
                                    .iter()
                                    .position(|s| changed_in(&s.path))
                                    .unwrap_or(rs.secondaries.len());
                                stats.resumed += 1;
                                let tree = match &shared[i] {
                                    Some(sh) => sh.tree(),
                                    None => trees[i].get_or_insert_with(|| searches[i].tree(src.0)),
                                };
                                return Ok(Arc::new(searches[i].resume(rs, from, Some(tree))));
                            }
                        }
                        // Worse links cannot reconnect regions.
                        Err(RoutingError::Unreachable { .. }) if improved.is_empty() => {
                            stats.reused += 1;
                            return result.clone();
                        }
                        _ => {}
                    }
                    stats.recomputed += 1;
                    let sh = shared[i].get_or_insert_with(|| searches[i].shared(src.0));
                    searches[i].route(src, entry.dst, Some(sh)).map(Arc::new)
                })
                .collect(),
        })
        .collect();
    Ok(RoutingTable {
        src,
        generation: graph.generation(),
        strategies: previous.strategies.clone(),
        constraints: previous.constraints.clone(),
        edges: edges(topology, src, &regions),
        regions,
        stats,
        graph: graph.clone(),
    })
}

/// Whether a path through one of the `improved` links could now be as good as one of the
/// paths of `rs` (or fill a missing backup), under `search` on the new graph. `tree`: the
/// search's distances from the source within its base mask on the new graph (additive
/// strategies). Conservative: true whenever it cannot tell.
fn may_improve(
    graph: &RoutingGraph,
    search: &Search,
    tree: Option<&[Option<super::graph::Weight>]>,
    improved: &[u32],
    rs: &super::path::RouteSet,
) -> bool {
    if improved.is_empty() {
        return false;
    }
    if rs.secondaries.len() < super::search::MAX_SECONDARIES {
        return true;
    }
    // The key of the set's worst path, with the new figures.
    let mut worst = (0u64, 0u64, 0u64);
    let mut links = Vec::new();
    for p in rs.ecmp.iter().chain(rs.secondaries.iter().map(|s| &s.path)) {
        links.clear();
        for id in &p.links {
            match graph.links.binary_search_by_key(id, |m| m.id) {
                Ok(l) => links.push(l as u32),
                Err(_) => return true,
            }
        }
        worst = worst.max(search.key_of(&links));
    }
    let dst = rs.dst.0 as usize;
    improved.iter().any(|&l| {
        if !graph.allowed(&search.base, l as usize) {
            return false; // on no path the searches may take
        }
        let m = &graph.links[l as usize];
        if search.is_widest() {
            // A path through the link is no wider than the link.
            return u64::MAX - m.avail_kbps <= worst.0;
        }
        let Some(tree) = tree else {
            return true;
        };
        let Some(dd) = tree[dst] else {
            return true;
        };
        let w = search.weight(l as usize).p;
        // src .. u -l- v .. dst, either way round; dist(v, dst) >= dist(src, dst) - dist(src, v).
        [(m.a, m.b), (m.b, m.a)].iter().any(|&(u, v)| {
            match (tree[u as usize], tree[v as usize]) {
                (Some(du), Some(dv)) => {
                    du.p.saturating_add(w)
                        .saturating_add(dd.p.saturating_sub(dv.p))
                        <= worst.0
                }
                // `v` banned (or `u` unreachable): no path within the base mask this way.
                _ => false,
            }
        })
    })
}
