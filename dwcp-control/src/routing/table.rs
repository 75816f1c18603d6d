//! A gateway's routing table: route sets to every region and edge node under every strategy,
//! and its incremental recompute after link changes.
use std::sync::{Arc, OnceLock};

use super::error::RoutingError;
use super::graph::{Dist, LinkMetrics, RoutingGraph};
use super::path::RouteSet;
use super::search::{Search, Shared};
use super::strategy::{Constraints, Strategy};
use crate::topology::{EdgeId, EdgeNode, LinkId, RegionId, Topology};

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
    /// The topology's edge nodes, and their routes once asked for ([`RoutingTable::edges`]):
    /// the agent programs regions only, so a link event does not build a thousand entries.
    edge_nodes: Arc<[EdgeNode]>,
    edges: OnceLock<Vec<EdgeRoutes>>,
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

    /// Routes to every edge node (its region's, shared), built on first use.
    pub fn edges(&self) -> &[EdgeRoutes] {
        self.edges
            .get_or_init(|| edges(&self.edge_nodes, self.src, &self.regions))
    }
}

fn edges(nodes: &[EdgeNode], src: RegionId, regions: &[RegionRoutes]) -> Vec<EdgeRoutes> {
    nodes
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
        edge_nodes: topology.edges_shared(),
        edges: OnceLock::new(),
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
    // Single-source searches, computed on first use (cells, so the entry closure can fill them).
    let shared: Vec<OnceLock<Shared>> = (0..searches.len()).map(|_| OnceLock::new()).collect();
    // For entries that only search backups again: the distances from the source alone.
    let trees: Vec<OnceLock<Dist>> = (0..searches.len()).map(|_| OnceLock::new()).collect();
    // With improved links: every search's tree from the source on the new graph (the lower
    // bounds of `may_improve`), computed once per strategy.
    // And from both ends of each improved link (a few links: one flap is one), so that the
    // bound of a path through the link is exact rather than a triangle estimate.
    let mut ends: Vec<Vec<LinkEnds>> = (0..searches.len()).map(|_| Vec::new()).collect();
    if !improved.is_empty() {
        for (i, s) in searches.iter().enumerate() {
            if !s.is_widest() {
                trees[i].get_or_init(|| s.tree(src.0));
                if improved.len() <= EXACT_BOUND_LINKS {
                    ends[i] = improved
                        .iter()
                        .filter(|&&l| graph.allowed(&s.base, l as usize))
                        .map(|&l| {
                            let m = &graph.links[l as usize];
                            LinkEnds {
                                link: l,
                                from_a: s.tree(m.a),
                                from_b: s.tree(m.b),
                            }
                        })
                        .collect();
                }
            }
        }
    }
    let entry = |i: usize, dst: RegionId, result: &RouteResult| -> (RouteResult, Outcome) {
        let changed_in = |p: &super::path::Path| {
            p.links
                .iter()
                .any(|id| changed_ids.binary_search(id).is_ok())
        };
        match result {
            Ok(rs) if rs.depends_on.is_some() => {
                let reach = may_improve(
                    graph,
                    &searches[i],
                    trees[i].get().map(|t| &t[..]),
                    (improved.len() <= EXACT_BOUND_LINKS).then_some(&ends[i][..]),
                    &improved,
                    rs,
                );
                let improved_from = match reach {
                    Reach::Nothing => Some(rs.secondaries.len()),
                    Reach::FromSecondary(j) => Some(j),
                    Reach::All => None,
                };
                if let Some(improved_from) = improved_from {
                    let deps = rs.depends_on.as_deref().unwrap_or_default();
                    if reach == Reach::Nothing
                        && !changed.iter().any(|l| deps.binary_search(l).is_ok())
                    {
                        return (result.clone(), Outcome::Reused);
                    }
                    // Primary and ECMP untouched: keep them and the backups before the first
                    // one that uses a changed link or that a better link may beat.
                    if !rs.ecmp.iter().any(changed_in) {
                        let from = rs
                            .secondaries
                            .iter()
                            .position(|s| changed_in(&s.path))
                            .unwrap_or(rs.secondaries.len())
                            .min(improved_from);
                        let tree = match shared[i].get() {
                            Some(sh) => sh.tree(),
                            None => trees[i].get_or_init(|| searches[i].tree(src.0)),
                        };
                        let rs = searches[i].resume(rs, from, Some(tree));
                        return (Ok(Arc::new(rs)), Outcome::Resumed);
                    }
                }
            }
            // Worse links cannot reconnect regions.
            Err(RoutingError::Unreachable { .. }) if improved.is_empty() => {
                return (result.clone(), Outcome::Reused);
            }
            _ => {}
        }
        let sh = shared[i].get_or_init(|| searches[i].shared(src.0));
        let rs = searches[i].route(src, dst, Some(sh)).map(Arc::new);
        (rs, Outcome::Recomputed)
    };
    let mut stats = TableStats::default();
    let regions: Vec<RegionRoutes> = previous
        .regions
        .iter()
        .map(|r| RegionRoutes {
            dst: r.dst,
            routes: r
                .routes
                .iter()
                .enumerate()
                .map(|(i, result)| {
                    let (rs, outcome) = entry(i, r.dst, result);
                    match outcome {
                        Outcome::Reused => stats.reused += 1,
                        Outcome::Resumed => stats.resumed += 1,
                        Outcome::Recomputed => stats.recomputed += 1,
                    }
                    rs
                })
                .collect(),
        })
        .collect();
    Ok(RoutingTable {
        src,
        generation: graph.generation(),
        strategies: previous.strategies.clone(),
        constraints: previous.constraints.clone(),
        edge_nodes: topology.edges_shared(),
        edges: OnceLock::new(),
        regions,
        stats,
        graph: graph.clone(),
    })
}

/// Up to this many improved links, their bounds come from searches from both their ends.
const EXACT_BOUND_LINKS: usize = 4;

/// Distances (within a search's base mask) from both ends of an improved link.
struct LinkEnds {
    link: u32,
    from_a: Dist,
    from_b: Dist,
}

/// What became of one entry in an update.
enum Outcome {
    Reused,
    Resumed,
    Recomputed,
}

/// Which paths of a route set a path through an `improved` link may now displace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// None: every path through an improved link is worse than each path of the set.
    Nothing,
    /// The backups from this one on (the primary, ECMP set and earlier backups are better
    /// than any path through an improved link).
    FromSecondary(usize),
    /// The primary or ECMP set, or a missing backup.
    All,
}

/// Which paths of `rs` a path through one of the `improved` links could now be as good as
/// (or a missing backup it could fill), under `search` on the new graph. `tree`: the search's
/// distances from the source within its base mask on the new graph (additive strategies).
/// Conservative: `All` whenever it cannot tell.
///
/// Each backup is the best path outside the links of the paths before it; a path through an
/// improved link whose lower bound is above a backup's key cannot beat that backup, and the
/// backup's own key is unchanged (it holds no improved link: its key would then be at least
/// the bound). So the set is kept up to the first path whose key reaches the bound.
fn may_improve(
    graph: &RoutingGraph,
    search: &Search,
    tree: Option<&[Option<super::graph::Weight>]>,
    ends: Option<&[LinkEnds]>,
    improved: &[u32],
    rs: &super::path::RouteSet,
) -> Reach {
    if improved.is_empty() {
        return Reach::Nothing;
    }
    if rs.secondaries.len() < super::search::MAX_SECONDARIES {
        return Reach::All;
    }
    // Keys of the set's paths with the new figures: the ECMP set's worst, then each backup.
    let mut links = Vec::new();
    let mut key = |p: &super::path::Path| -> Option<u64> {
        links.clear();
        for id in &p.links {
            links.push(graph.links.binary_search_by_key(id, |m| m.id).ok()? as u32);
        }
        Some(search.key_of(&links).0)
    };
    let mut ecmp_worst = 0u64;
    for p in &rs.ecmp {
        let Some(k) = key(p) else {
            return Reach::All;
        };
        ecmp_worst = ecmp_worst.max(k);
    }
    let mut backups = Vec::with_capacity(rs.secondaries.len());
    for s in &rs.secondaries {
        let Some(k) = key(&s.path) else {
            return Reach::All;
        };
        backups.push(k);
    }
    // The lowest key (first component) any path through an improved link can have.
    let dst = rs.dst.0 as usize;
    let mut bound = u64::MAX;
    for &l in improved {
        if !graph.allowed(&search.base, l as usize) {
            continue; // on no path the searches may take
        }
        let m = &graph.links[l as usize];
        if search.is_widest() {
            // A path through the link is no wider than the link.
            bound = bound.min(u64::MAX - m.avail_kbps);
            continue;
        }
        let Some(tree) = tree else {
            return Reach::All;
        };
        let Some(dd) = tree[dst] else {
            return Reach::All;
        };
        let w = search.weight(l as usize).p;
        let exact = ends.and_then(|e| e.iter().find(|e| e.link == l));
        for (u, v) in [(m.a, m.b), (m.b, m.a)] {
            let Some(du) = tree[u as usize] else {
                continue; // `u` unreachable: no path within the base mask this way
            };
            // The rest of the path, v .. dst: exactly its shortest distance (undirected
            // links) when searched, else dist(v, dst) >= dist(src, dst) - dist(src, v).
            let rest = match exact {
                Some(e) => {
                    let from_v = if v == m.a { &e.from_a } else { &e.from_b };
                    match from_v[dst] {
                        Some(d) => d.p,
                        None => continue, // `dst` out of reach from `v`
                    }
                }
                None => match tree[v as usize] {
                    Some(dv) => dd.p.saturating_sub(dv.p),
                    None => continue, // `v` banned
                },
            };
            bound = bound.min(du.p.saturating_add(w).saturating_add(rest));
        }
    }
    if bound <= ecmp_worst {
        return Reach::All;
    }
    match backups.iter().position(|&k| bound <= k) {
        Some(j) => Reach::FromSecondary(j),
        None => Reach::Nothing,
    }
}
