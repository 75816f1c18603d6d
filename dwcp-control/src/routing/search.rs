//! Route computation for one strategy and set of constraints: the best path (oracle), all
//! optimal paths (ECMP), k loopless shortest paths (Yen) and link-disjoint backups.
//!
//! Written here rather than taken from a crate, because none offers them in the shape needed:
//! Yen's algorithm (pathfinding's `yen` keys paths by node sequence, so parallel links between
//! two regions collapse, and it only knows additive costs, not the widest path's bottleneck),
//! the latency-bounded search of the cost and balanced strategies (a resource-constrained
//! shortest path, solved exactly by Pareto label-setting on (weight, latency)), and Dijkstra
//! itself (see `RoutingGraph::dijkstra`).
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use smallvec::SmallVec;

use super::error::RoutingError;
use super::graph::{
    with_scratch, with_walk, Dist, Links, Mask, RoutingGraph, Scratch, WalkBufs, Weight,
};
use super::path::{Path, RouteSet, Secondary};
use super::strategy::{Constraints, Strategy};
use crate::topology::{LinkId, RegionId};

/// Most paths kept in a route set's ECMP list (the fast path's groups hold 8 members; the
/// rest is for the operator to see).
pub const MAX_ECMP_PATHS: usize = 16;
/// Backups computed besides the primary.
pub const MAX_SECONDARIES: usize = 3;
/// Candidates examined for least-overlapping backups when no disjoint path is left.
const FALLBACK_CANDIDATES: usize = 4;

/// Total order of paths under a strategy: smaller is better. Additive strategies use
/// (weight, tie-break, 0); the widest path (u64::MAX - bottleneck, latency, cost).
pub type PathKey = (u64, u64, u64);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cand {
    pub key: PathKey,
    /// Link indexes into the routing graph.
    pub links: Links,
    /// First region; the others follow from the links (walked when needed, not stored: most
    /// candidates never need them).
    pub src: u32,
}

enum Objective<'g> {
    /// Sum of `p` (optimised), ties by sum of `s`.
    Additive {
        p: Cow<'g, [u64]>,
        s: Cow<'g, [u64]>,
    },
    /// Widest bottleneck, ties by latency then cost.
    Widest,
}

/// What a path prefix (the root of a Yen spur) already used up.
#[derive(Clone, Copy)]
struct Root {
    latency_us: u64,
    bottleneck_kbps: u64,
}

const NO_ROOT: Root = Root {
    latency_us: 0,
    bottleneck_kbps: u64::MAX,
};

/// Precomputed single-source searches shared by all destinations of a table.
pub(crate) enum Shared {
    Additive(Dist),
    /// Widest bottleneck per region, and per distinct bottleneck value the latency search
    /// restricted to links at least that wide.
    Widest {
        bottleneck: Vec<Option<u64>>,
        dists: Vec<(u64, Dist)>,
        /// (latency, cost) distances within the base mask, whatever the bottleneck: the
        /// potential of the backup searches.
        tree: Dist,
    },
}

impl Shared {
    /// Distances from the source within the base mask, under the search's link weight.
    pub fn tree(&self) -> &[Option<Weight>] {
        match self {
            Shared::Additive(dist) => dist,
            Shared::Widest { tree, .. } => tree,
        }
    }
}

/// One strategy under one set of constraints on one routing graph.
pub(crate) struct Search<'g> {
    pub g: &'g RoutingGraph,
    pub strategy: Strategy,
    /// Borrowed, not copied: a route set clones them once, for itself.
    pub constraints: &'g Constraints,
    objective: Objective<'g>,
    /// Constraints as a mask: avoided regions, unusable or too narrow links.
    pub base: Mask,
    /// max_latency_ms in µs.
    pub budget: Option<u64>,
}

impl<'g> Search<'g> {
    pub fn new(
        g: &'g RoutingGraph,
        strategy: &Strategy,
        constraints: &'g Constraints,
    ) -> Result<Self, RoutingError> {
        strategy.validate()?;
        constraints.validate()?;
        for name in &constraints.avoid_regions {
            if !g.names.contains(name) {
                return Err(RoutingError::InvalidConstraint {
                    constraint: "avoid_regions",
                    reason: format!("unknown region {name:?}"),
                });
            }
        }
        let objective = match strategy {
            Strategy::MinLatency => Objective::Additive {
                p: Cow::Borrowed(&g.latency),
                s: Cow::Borrowed(&g.cost),
            },
            Strategy::MinCost => Objective::Additive {
                p: Cow::Borrowed(&g.cost),
                s: Cow::Borrowed(&g.latency),
            },
            Strategy::Balanced(w) => Objective::Additive {
                p: Cow::Owned(g.links.iter().map(|l| l.balanced_score(w)).collect()),
                s: Cow::Borrowed(&g.latency),
            },
            Strategy::MaxBandwidth => Objective::Widest,
        };
        let mut base = g.open_mask();
        let avoids = !(constraints.avoid_regions.is_empty()
            && constraints.avoid_countries.is_empty()
            && constraints.avoid_providers.is_empty());
        if avoids {
            for r in 0..g.region_count() {
                base.nodes[r] = constraints.avoid_regions.contains(&g.names[r])
                    || constraints.avoid_countries.contains(&g.countries[r])
                    || constraints.avoid_providers.contains(&g.providers[r]);
            }
        }
        if let Some(mbps) = constraints.min_bandwidth_mbps {
            base.min_avail_kbps = (mbps * 1000.0).ceil() as u64;
        }
        let budget = constraints
            .max_latency_ms
            .map(|ms| (ms * 1000.0).floor() as u64);
        Ok(Search {
            g,
            strategy: *strategy,
            constraints,
            objective,
            base,
            budget,
        })
    }

    /// Whether the strategy is the widest path (its keys are not sums of `weight`).
    pub fn is_widest(&self) -> bool {
        matches!(self.objective, Objective::Widest)
    }

    /// Additive weight of a link; for the widest path, the (latency, cost) of its tie-break.
    #[inline]
    pub(crate) fn weight(&self, l: usize) -> Weight {
        match &self.objective {
            Objective::Additive { p, s } => Weight { p: p[l], s: s[l] },
            Objective::Widest => Weight {
                p: self.g.latency[l],
                s: self.g.cost[l],
            },
        }
    }

    pub fn key_of(&self, links: &[u32]) -> PathKey {
        match &self.objective {
            Objective::Additive { p, s } => {
                let (mut a, mut b) = (0u64, 0u64);
                for &l in links {
                    a += p[l as usize];
                    b += s[l as usize];
                }
                (a, b, 0)
            }
            Objective::Widest => {
                let (mut bw, mut lat, mut cost) = (u64::MAX, 0u64, 0u64);
                for &l in links {
                    let m = &self.g.links[l as usize];
                    bw = bw.min(m.avail_kbps);
                    lat += m.latency_us;
                    cost += m.cost_micro;
                }
                (u64::MAX - bw, lat, cost)
            }
        }
    }

    /// Whether two paths are equal-cost for ECMP.
    pub fn ecmp_equal(&self, a: &PathKey, b: &PathKey) -> bool {
        match self.objective {
            Objective::Additive { .. } => a.0 == b.0,
            Objective::Widest => a.0 == b.0 && a.1 == b.1,
        }
    }

    fn cand(&self, src: u32, links: Links) -> Cand {
        Cand {
            key: self.key_of(&links),
            links,
            src,
        }
    }

    /// Regions along a candidate, its source first.
    fn nodes<'a>(&'a self, c: &'a Cand) -> impl Iterator<Item = u32> + 'a {
        let mut at = c.src;
        std::iter::once(c.src).chain(c.links.iter().map(move |&l| {
            at = self.g.links[l as usize].other(at);
            at
        }))
    }

    fn latency_of(&self, links: &[u32]) -> u64 {
        links.iter().map(|&l| self.g.latency[l as usize]).sum()
    }

    /// The lexicographically smallest optimal path in a distance map.
    fn first_path(
        &self,
        src: u32,
        dst: u32,
        mask: &Mask,
        dist: &[Option<Weight>],
    ) -> Option<Links> {
        dist[dst as usize]?;
        let tight = |u: u32, v: u32, l: usize| match (dist[u as usize], dist[v as usize]) {
            (Some(du), Some(dv)) => du + self.weight(l) == dv,
            _ => false,
        };
        self.g.first_tight_path(src, dst, mask, tight)
    }

    /// Distances from `src` within the base mask under the search's link weight (what
    /// `Shared::tree` holds).
    pub fn tree(&self, src: u32) -> Dist {
        self.g.dijkstra(src, None, &self.base, |l| self.weight(l))
    }

    /// Single-source searches for a whole table (no latency budget).
    pub fn shared(&self, src: u32) -> Shared {
        match self.objective {
            Objective::Additive { .. } => {
                Shared::Additive(self.g.dijkstra(src, None, &self.base, |l| self.weight(l)))
            }
            Objective::Widest => {
                let bottleneck = self.g.widest(src, None, &self.base);
                let mut values: Vec<u64> = bottleneck.iter().flatten().copied().collect();
                values.sort_unstable();
                values.dedup();
                let dists = values
                    .into_iter()
                    .map(|t| {
                        let mask = Mask {
                            min_avail_kbps: t.max(self.base.min_avail_kbps),
                            ..self.base.clone()
                        };
                        (t, self.g.dijkstra(src, None, &mask, |l| self.weight(l)))
                    })
                    .collect();
                let tree = self.g.dijkstra(src, None, &self.base, |l| self.weight(l));
                Shared::Widest {
                    bottleneck,
                    dists,
                    tree,
                }
            }
        }
    }

    /// The path `first_path` would pick, from a search that ran backwards, from `dst`
    /// (`dd[v]` = distance from `v` to `dst`): the greedy walk from `src` takes the first link
    /// that lies on an optimal path, as `first_path` does.
    fn walk_back(&self, src: u32, dst: u32, mask: &Mask, dd: &[Option<Weight>]) -> Option<Links> {
        let mut left = dd[src as usize]?;
        let mut links = Links::new();
        let mut at = src;
        while at != dst {
            if links.len() >= self.g.region_count() {
                return None; // a zero-weight cycle: cannot happen with weights >= 1 µs
            }
            let (l, v, d) = self.g.neighbours(at).iter().find_map(|&(l, v)| {
                let dv = dd[v as usize]?;
                (self.g.step(mask, l, v) && dv + self.weight(l as usize) == left)
                    .then_some((l, v, dv))
            })?;
            links.push(l);
            at = v;
            left = d;
        }
        Some(links)
    }

    /// Search between `src` and `dst` within `mask` into `sc.dist`, and the lexicographically
    /// first optimal path with its weight. The search runs from `dst` towards `src` (links are
    /// undirected), and `walk_back` picks the path `first_path` would: with `tree` (distances
    /// from `src` within a mask that bans no more than `mask`) as A* with `tree` for potential
    /// (see `RoutingGraph::astar_scratch`), else as Dijkstra from `dst`, stopping at `src`.
    /// Same answer either way; the backward search needs no pass for the regions that reach
    /// `dst` (`first_path`'s), as every region with an exact distance does, and one without
    /// (never below its true distance, which is not below `src`'s) is on no optimal path.
    fn search_between(
        &self,
        sc: &mut Scratch,
        src: u32,
        dst: u32,
        mask: &Mask,
        tree: Option<&[Option<Weight>]>,
    ) -> (Option<Links>, Option<Weight>) {
        match tree {
            Some(t) => {
                self.g
                    .astar_scratch(sc, dst, src, mask, |l| self.weight(l), t);
                (
                    self.walk_back(src, dst, mask, &sc.dist),
                    sc.dist[src as usize],
                )
            }
            None => {
                self.g
                    .dijkstra_scratch(sc, dst, Some(src), mask, |l| self.weight(l));
                (
                    self.walk_back(src, dst, mask, &sc.dist),
                    sc.dist[src as usize],
                )
            }
        }
    }

    /// The best path from `src` to `dst` within `mask` and the latency budget left after
    /// `root`, or `None`. `tree`: distances from `src` within a mask that bans no more than
    /// `mask` and no latency budget (see `search_between`).
    fn best(
        &self,
        src: u32,
        dst: u32,
        mask: &Mask,
        root: Root,
        tree: Option<&[Option<Weight>]>,
    ) -> Option<Links> {
        if mask.nodes[src as usize] || mask.nodes[dst as usize] {
            return None;
        }
        // Every link at either end banned (as for the last backups on small graphs): no path,
        // known without a search.
        if !self.g.has_open_link(mask, src) || !self.g.has_open_link(mask, dst) {
            return None;
        }
        let budget = self.budget.map(|b| b.saturating_sub(root.latency_us));
        match &self.objective {
            Objective::Additive { .. } => {
                if budget.is_some() && !matches!(self.strategy, Strategy::MinLatency) {
                    return self.pareto(src, dst, mask, budget.unwrap_or(u64::MAX));
                }
                let tree = tree.filter(|_| budget.is_none());
                with_scratch(|sc| {
                    let path = self.search_between(sc, src, dst, mask, tree).0?;
                    // For MinLatency the optimum is the fastest path: if it is too slow, all are.
                    (budget.is_none_or(|b| self.latency_of(&path) <= b)).then_some(path)
                })
            }
            Objective::Widest => {
                let widest = with_scratch(|sc| {
                    self.g.widest_scratch(sc, src, Some(dst), mask);
                    sc.wide[dst as usize]
                })?;
                let t = widest.min(root.bottleneck_kbps);
                let mut m = mask.clone();
                let tree = tree.filter(|_| budget.is_none());
                let mut at = |threshold: u64| {
                    m.min_avail_kbps = threshold.max(mask.min_avail_kbps);
                    with_scratch(|sc| {
                        let (path, d) = self.search_between(sc, src, dst, &m, tree);
                        (path, d.map(|w| w.p))
                    })
                };
                let Some(b) = budget else {
                    return at(t).0;
                };
                // Largest threshold whose fastest path fits the budget. The fastest latency only
                // falls as the threshold falls, so binary search over the candidate thresholds.
                let mut thresholds: Vec<u64> = (0..self.g.links.len())
                    .filter(|&l| self.g.allowed(mask, l) && self.g.links[l].avail_kbps < t)
                    .map(|l| self.g.links[l].avail_kbps)
                    .collect();
                thresholds.push(t);
                thresholds.sort_unstable_by(|a, b| b.cmp(a));
                thresholds.dedup();
                let (mut lo, mut hi) = (0, thresholds.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if at(thresholds[mid]).1.is_some_and(|lat| lat <= b) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                thresholds.get(lo).and_then(|&th| at(th).0)
            }
        }
    }

    /// Best path by additive weight among paths within a latency budget: label-setting that
    /// keeps, per region, the labels no other label beats on both weight and latency. Every
    /// link adds ≥ 1 µs, so a label that loops is beaten by its own prefix: paths are simple.
    fn pareto(&self, src: u32, dst: u32, mask: &Mask, budget: u64) -> Option<Links> {
        struct Label {
            w: Weight,
            lat: u64,
            node: u32,
            parent: usize,
            link: u32,
            alive: bool,
        }
        let mut labels = vec![Label {
            w: Weight::default(),
            lat: 0,
            node: src,
            parent: usize::MAX,
            link: 0,
            alive: true,
        }];
        let mut at_node: Vec<Vec<usize>> = vec![Vec::new(); self.g.region_count()];
        at_node[src as usize].push(0);
        let mut heap = BinaryHeap::new();
        heap.push(Reverse((Weight::default(), 0u64, 0usize)));
        while let Some(Reverse((w, lat, idx))) = heap.pop() {
            if !labels[idx].alive {
                continue;
            }
            let u = labels[idx].node;
            if u == dst {
                let mut links = Links::new();
                let mut i = idx;
                while labels[i].parent != usize::MAX {
                    links.push(labels[i].link);
                    i = labels[i].parent;
                }
                links.reverse();
                return Some(links);
            }
            for &(l, v) in self.g.neighbours(u) {
                if !self.g.allowed(mask, l as usize) {
                    continue;
                }
                let nw = w + self.weight(l as usize);
                let nlat = lat + self.g.latency[l as usize];
                if nlat > budget {
                    continue;
                }
                let kept = &at_node[v as usize];
                if kept
                    .iter()
                    .any(|&k| labels[k].w <= nw && labels[k].lat <= nlat)
                {
                    continue;
                }
                for &k in kept {
                    if nw <= labels[k].w && nlat <= labels[k].lat {
                        labels[k].alive = false;
                    }
                }
                at_node[v as usize].retain(|&k| labels[k].alive);
                let new = labels.len();
                labels.push(Label {
                    w: nw,
                    lat: nlat,
                    node: v,
                    parent: idx,
                    link: l,
                    alive: true,
                });
                at_node[v as usize].push(new);
                heap.push(Reverse((nw, nlat, new)));
            }
        }
        None
    }

    /// Yen's k loopless shortest paths from `src` to `dst`, best first; stops early when
    /// `enough` says the list so far is enough.
    fn yen(
        &self,
        src: u32,
        dst: u32,
        k: usize,
        mask: &Mask,
        mut enough: impl FnMut(&[Cand]) -> bool,
    ) -> Vec<Cand> {
        let Some(first) = self.best(src, dst, mask, NO_ROOT, None) else {
            return Vec::new();
        };
        let mut found = vec![self.cand(src, first)];
        let mut candidates: BTreeSet<Cand> = BTreeSet::new();
        let mut work = mask.clone();
        while found.len() < k && !enough(&found) {
            let last = found.last().expect("not empty").clone();
            let last_nodes: Vec<u32> = self.nodes(&last).collect();
            for i in 0..last.links.len() {
                let spur = last_nodes[i];
                let root_links = &last.links[..i];
                for &n in &last_nodes[..i] {
                    work.nodes[n as usize] = true;
                }
                for p in &found {
                    if p.links.len() > i && p.links[..i] == *root_links {
                        work.links[p.links[i] as usize] = true;
                    }
                }
                let root = Root {
                    latency_us: self.latency_of(root_links),
                    bottleneck_kbps: root_links
                        .iter()
                        .map(|&l| self.g.links[l as usize].avail_kbps)
                        .min()
                        .unwrap_or(u64::MAX),
                };
                let spur_links = self.best(spur, dst, &work, root, None);
                // Back to `mask` for the next spur.
                for &n in &last_nodes[..i] {
                    work.nodes[n as usize] = mask.nodes[n as usize];
                }
                for p in &found {
                    if p.links.len() > i && p.links[..i] == *root_links {
                        let l = p.links[i] as usize;
                        work.links[l] = mask.links[l];
                    }
                }
                if let Some(spur_links) = spur_links {
                    let mut links = Links::from_slice(root_links);
                    links.extend(spur_links);
                    let c = self.cand(src, links);
                    if !found.iter().any(|f| f.links == c.links) {
                        candidates.insert(c);
                    }
                }
            }
            match candidates.pop_first() {
                Some(c) => found.push(c),
                None => break,
            }
        }
        found
    }

    /// Up to `k` loopless paths in order of the strategy (Yen), within the constraints.
    pub fn k_shortest(&self, src: u32, dst: u32, k: usize) -> Vec<Cand> {
        if k == 0 {
            return Vec::new();
        }
        self.yen(src, dst, k, &self.base, |_| false)
    }

    /// Whether a simple path from `src` to `dst` within the base mask may exist besides
    /// `chosen`: false only when a depth-first walk of every such path (bounded) met only paths
    /// of `chosen`. The walk needs no pruning to regions that reach `dst`: links are undirected,
    /// so every region it can step to from `src` reaches `dst` when `src` does (and when `src`
    /// does not, it meets no path at all).
    fn other_path_may_exist(&self, src: u32, dst: u32, chosen: impl Fn(&[u32]) -> bool) -> bool {
        const STEPS: u32 = 4096;
        let g = self.g;
        let mask = &self.base;
        let n = g.region_count();
        with_walk(|w| {
            let WalkBufs {
                on_path,
                links,
                frames,
                ..
            } = w;
            if mask.nodes[src as usize] || mask.nodes[dst as usize] {
                return false;
            }
            on_path.clear();
            on_path.resize(n, false);
            links.clear();
            frames.clear();
            frames.push((src, 0));
            on_path[src as usize] = true;
            let mut budget = STEPS;
            while let Some(&mut (u, ref mut next)) = frames.last_mut() {
                budget -= 1;
                if budget == 0 {
                    return true;
                }
                if u == dst {
                    if !chosen(links) {
                        return true;
                    }
                    on_path[u as usize] = false;
                    frames.pop();
                    links.pop();
                    continue;
                }
                let adj = g.neighbours(u);
                let mut advanced = false;
                while *next < adj.len() {
                    let (l, v) = adj[*next];
                    *next += 1;
                    if !on_path[v as usize] && g.step(mask, l, v) {
                        on_path[v as usize] = true;
                        links.push(l);
                        frames.push((v, 0));
                        advanced = true;
                        break;
                    }
                }
                if !advanced {
                    on_path[u as usize] = false;
                    frames.pop();
                    links.pop();
                }
            }
            false
        })
    }

    pub fn path(&self, c: &Cand) -> Path {
        let mut latency_ms = 0.0;
        let mut cost_per_gb = 0.0;
        let mut bottleneck_mbps = f64::INFINITY;
        let mut delivered = 1.0;
        // One pass over the links fills both lists (each allocated once, at its size).
        let mut regions = Vec::with_capacity(c.links.len() + 1);
        let mut links = Vec::with_capacity(c.links.len());
        let mut at = c.src;
        regions.push(RegionId(at));
        for &l in &c.links {
            let m = &self.g.links[l as usize];
            latency_ms += m.latency_ms;
            cost_per_gb += m.cost_per_gb;
            bottleneck_mbps = bottleneck_mbps.min(m.avail_mbps);
            delivered *= 1.0 - m.loss;
            at = m.other(at);
            regions.push(RegionId(at));
            links.push(m.id);
        }
        Path {
            regions,
            links,
            latency_ms,
            cost_per_gb,
            bottleneck_mbps,
            loss: 1.0 - delivered,
        }
    }

    /// Primary, ECMP set (sorted, primary first) and whether it was truncated.
    fn optimal(&self, src: u32, dst: u32, shared: Option<&Shared>) -> Option<(Vec<Cand>, bool)> {
        if self.budget.is_some() {
            let found = self.yen(src, dst, MAX_ECMP_PATHS + 1, &self.base, |f| {
                f.len() > 1 && !self.ecmp_equal(&f[0].key, &f[f.len() - 1].key)
            });
            let first = found.first()?.key;
            let mut ecmp: Vec<Cand> = found
                .into_iter()
                .filter(|c| self.ecmp_equal(&first, &c.key))
                .collect();
            // Yen yields ties in search order; the primary must be the fixed tie-break.
            ecmp.sort();
            let truncated = ecmp.len() > MAX_ECMP_PATHS;
            ecmp.truncate(MAX_ECMP_PATHS);
            return Some((ecmp, truncated));
        }
        let Some(shared) = shared else {
            return self.optimal_alone(src, dst);
        };
        let (mask, dist) = match shared {
            Shared::Additive(dist) => (Cow::Borrowed(&self.base), dist),
            Shared::Widest {
                bottleneck, dists, ..
            } => {
                let b = bottleneck[dst as usize]?;
                let (_, dist) = dists.iter().find(|(t, _)| *t == b)?;
                (
                    Cow::Owned(Mask {
                        min_avail_kbps: b.max(self.base.min_avail_kbps),
                        ..self.base.clone()
                    }),
                    dist,
                )
            }
        };
        self.optimal_on(src, dst, &mask, dist)
    }

    /// `optimal` without shared searches: the same single-source searches as `shared`, into
    /// this thread's scratch buffers, and only the one the destination needs.
    fn optimal_alone(&self, src: u32, dst: u32) -> Option<(Vec<Cand>, bool)> {
        match self.objective {
            Objective::Additive { .. } => with_scratch(|sc| {
                self.g
                    .dijkstra_scratch(sc, src, None, &self.base, |l| self.weight(l));
                self.optimal_on(src, dst, &self.base, &sc.dist)
            }),
            Objective::Widest => {
                let b = with_scratch(|sc| {
                    self.g.widest_scratch(sc, src, None, &self.base);
                    sc.wide[dst as usize]
                })?;
                let mask = Mask {
                    min_avail_kbps: b.max(self.base.min_avail_kbps),
                    ..self.base.clone()
                };
                with_scratch(|sc| {
                    self.g
                        .dijkstra_scratch(sc, src, None, &mask, |l| self.weight(l));
                    self.optimal_on(src, dst, &mask, &sc.dist)
                })
            }
        }
    }

    /// Primary and ECMP set from a complete single-source search `dist` within `mask`.
    fn optimal_on(
        &self,
        src: u32,
        dst: u32,
        mask: &Mask,
        dist: &[Option<Weight>],
    ) -> Option<(Vec<Cand>, bool)> {
        let tight_p = |u: u32, v: u32, l: usize| match (dist[u as usize], dist[v as usize]) {
            (Some(du), Some(dv)) => du.p + self.weight(l).p == dv.p,
            _ => false,
        };
        let mut ecmp: Vec<Cand> = Vec::new();
        let truncated = self
            .g
            .tight_paths(src, dst, mask, MAX_ECMP_PATHS, tight_p, |l| {
                ecmp.push(self.cand(src, Links::from_slice(l)))
            });
        if truncated {
            let primary = self.cand(src, self.first_path(src, dst, mask, dist)?);
            ecmp.retain(|c| c.links != primary.links);
            ecmp.insert(0, primary);
        } else {
            // Every optimal path is listed, in the order `first_path` walks: the primary (the
            // first of those with the least full key) is among them, no second search needed.
            let first_best = (0..ecmp.len()).min_by_key(|&i| (ecmp[i].key, i))?;
            ecmp[..=first_best].rotate_right(1);
        }
        ecmp[1..].sort();
        ecmp.truncate(MAX_ECMP_PATHS);
        Some((ecmp, truncated))
    }

    /// The route set from `src` to `dst`.
    pub fn route(
        &self,
        src: RegionId,
        dst: RegionId,
        shared: Option<&Shared>,
    ) -> Result<RouteSet, RoutingError> {
        let n = self.g.region_count() as u32;
        for r in [src, dst] {
            if r.0 >= n {
                return Err(RoutingError::UnknownRegionId(r.0));
            }
        }
        if src == dst {
            return Err(RoutingError::SameRegion(
                self.g.names[src.0 as usize].clone(),
            ));
        }
        let (s, d) = (src.0, dst.0);
        if self.base.nodes[s as usize] || self.base.nodes[d as usize] {
            return Err(self.diagnose(s, d));
        }
        let Some((ecmp, truncated)) = self.optimal(s, d, shared) else {
            return Err(self.diagnose(s, d));
        };
        Ok(self.complete(
            src,
            dst,
            ecmp,
            truncated,
            Vec::new(),
            shared.map(Shared::tree),
        ))
    }

    /// `previous` brought to this graph from its backup `from` on: the primary, the ECMP set
    /// and the backups before `from` are kept as they are (the caller knows that no changed
    /// link can alter them), the later backups are searched again. `tree`: `tree(src)` on
    /// this graph, if at hand (makes the backup searches goal-directed).
    pub fn resume(
        &self,
        previous: &RouteSet,
        from: usize,
        tree: Option<&[Option<Weight>]>,
    ) -> RouteSet {
        let to_cand = |p: &Path| {
            let links = p
                .links
                .iter()
                .map(|id| {
                    self.g
                        .links
                        .binary_search_by_key(id, |m| m.id)
                        .expect("same links") as u32
                })
                .collect();
            self.cand(p.regions[0].0, links)
        };
        let ecmp = previous.ecmp.iter().map(to_cand).collect();
        let kept = previous.secondaries[..from]
            .iter()
            .map(|s| to_cand(&s.path))
            .collect();
        self.complete(
            previous.src,
            previous.dst,
            ecmp,
            previous.ecmp_truncated,
            kept,
            tree,
        )
    }

    /// Adds backups to a primary and ECMP set, after the link-disjoint backups in `kept`.
    fn complete(
        &self,
        src: RegionId,
        dst: RegionId,
        ecmp: Vec<Cand>,
        truncated: bool,
        kept: Vec<Cand>,
        tree: Option<&[Option<Weight>]>,
    ) -> RouteSet {
        let (s, d) = (src.0, dst.0);
        let primary = &ecmp[0];

        // Backups: best path avoiding every link used so far, while one exists; then the
        // least-overlapping of the next best paths.
        // The base mask with every link used so far banned (only grows). Every path here lies
        // within the base mask, so on their links `m.links` says exactly "used so far".
        let mut m = self.base.clone();
        let mut secondaries: SmallVec<[(Cand, Vec<u32>); MAX_SECONDARIES]> = SmallVec::new();
        for c in std::iter::once(primary).chain(&kept) {
            for &l in &c.links {
                m.links[l as usize] = true;
            }
        }
        for c in kept {
            secondaries.push((c, Vec::new()));
        }
        let used = |m: &Mask, l: u32| m.links[l as usize];
        while secondaries.len() < MAX_SECONDARIES {
            let Some(links) = self.best(s, d, &m, NO_ROOT, tree) else {
                break;
            };
            let c = self.cand(s, links);
            for &l in &c.links {
                m.links[l as usize] = true;
            }
            secondaries.push((c, Vec::new()));
        }
        let mut fallback = false;
        // The paths chosen so far: the primary and the backups.
        let chosen = 1 + secondaries.len();
        let is_chosen = |links: &[u32]| {
            primary.links[..] == *links || secondaries.iter().any(|(c, _)| c.links[..] == *links)
        };
        // Yen's pool below holds `chosen + FALLBACK_CANDIDATES` paths, so it has a path not
        // chosen yet exactly when one exists: when a walk of the simple paths proves there is
        // none, the pool would be empty and the search is skipped.
        if secondaries.len() < MAX_SECONDARIES && self.other_path_may_exist(s, d, is_chosen) {
            let pool = self.yen(s, d, chosen + FALLBACK_CANDIDATES, &self.base, |_| false);
            let mut pool: Vec<Cand> = pool.into_iter().filter(|c| !is_chosen(&c.links)).collect();
            while secondaries.len() < MAX_SECONDARIES && !pool.is_empty() {
                fallback = true;
                let overlap = |c: &Cand| c.links.iter().filter(|&&l| used(&m, l)).count();
                let (i, _) = pool
                    .iter()
                    .enumerate()
                    .min_by(|(_, a), (_, b)| {
                        (overlap(a), &a.key, &a.links).cmp(&(overlap(b), &b.key, &b.links))
                    })
                    .expect("not empty");
                let c = pool.remove(i);
                let shared: Vec<u32> = c.links.iter().copied().filter(|&l| used(&m, l)).collect();
                for &l in &c.links {
                    m.links[l as usize] = true;
                }
                secondaries.push((c, shared));
            }
        }

        // A change to a link none of these paths use cannot change them, unless the set came
        // from a search whose other candidates matter (truncated ECMP, fallback, budget).
        let depends_on = if truncated || fallback || self.budget.is_some() {
            None
        } else {
            let paths = || ecmp.iter().chain(secondaries.iter().map(|(c, _)| c));
            let mut deps: Vec<u32> = Vec::with_capacity(paths().map(|c| c.links.len()).sum());
            deps.extend(paths().flat_map(|c| c.links.iter().copied()));
            deps.sort_unstable();
            deps.dedup();
            Some(deps)
        };
        let ecmp: Vec<Path> = ecmp.iter().map(|c| self.path(c)).collect();
        RouteSet {
            src,
            dst,
            strategy: self.strategy,
            constraints: self.constraints.clone(),
            generation: self.g.generation,
            // `ecmp[0]` is the primary.
            primary: ecmp[0].clone(),
            ecmp,
            ecmp_truncated: truncated,
            secondaries: secondaries
                .iter()
                .map(|(c, shared)| Secondary {
                    path: self.path(c),
                    shared_links: shared
                        .iter()
                        .map(|&l| self.g.links[l as usize].id)
                        .collect::<Vec<LinkId>>(),
                })
                .collect(),
            depends_on,
        }
    }

    /// Only the best path (no ECMP set, no backups): what a one-path route query costs.
    pub fn primary(&self, src: RegionId, dst: RegionId) -> Result<Path, RoutingError> {
        let n = self.g.region_count() as u32;
        for r in [src, dst] {
            if r.0 >= n {
                return Err(RoutingError::UnknownRegionId(r.0));
            }
        }
        if src == dst {
            return Err(RoutingError::SameRegion(
                self.g.names[src.0 as usize].clone(),
            ));
        }
        match self.best(src.0, dst.0, &self.base, NO_ROOT, None) {
            Some(links) => Ok(self.path(&self.cand(src.0, links))),
            None => Err(self.diagnose(src.0, dst.0)),
        }
    }

    /// Why there is no route: the first constraint (in a fixed order) that leaves no path, or
    /// plain disconnection.
    fn diagnose(&self, src: u32, dst: u32) -> RoutingError {
        let g = self.g;
        let c = &self.constraints;
        let (sname, dname) = (g.names[src as usize].clone(), g.names[dst as usize].clone());
        let unsat =
            |constraint: &'static str, detail: String| RoutingError::ConstraintUnsatisfiable {
                src: sname.clone(),
                dst: dname.clone(),
                constraint,
                detail,
            };
        for (role, r) in [("source", src as usize), ("destination", dst as usize)] {
            if c.avoid_regions.contains(&g.names[r]) {
                return unsat(
                    "avoid_regions",
                    format!("the {role} region {} is itself avoided", g.names[r]),
                );
            }
            if c.avoid_countries.contains(&g.countries[r]) {
                return unsat(
                    "avoid_countries",
                    format!(
                        "the {role} region {} is in avoided country {}",
                        g.names[r], g.countries[r]
                    ),
                );
            }
            if c.avoid_providers.contains(&g.providers[r]) {
                return unsat(
                    "avoid_providers",
                    format!(
                        "the {role} region {} is run by avoided provider {}",
                        g.names[r], g.providers[r]
                    ),
                );
            }
        }
        let fastest = |m: &Mask| {
            let dist = g.dijkstra(src, Some(dst), m, |l| Weight {
                p: g.latency[l],
                s: 0,
            });
            dist[dst as usize].map(|w| w.p)
        };
        let mut m = g.open_mask();
        if fastest(&m).is_none() {
            return RoutingError::Unreachable {
                src: sname,
                dst: dname,
            };
        }
        type Ban<'a> = (&'static str, &'a dyn Fn(usize) -> bool, &'static str);
        let bans: [Ban; 3] = [
            (
                "avoid_regions",
                &|r| c.avoid_regions.contains(&g.names[r]),
                "an avoided region",
            ),
            (
                "avoid_countries",
                &|r| c.avoid_countries.contains(&g.countries[r]),
                "a region in an avoided country",
            ),
            (
                "avoid_providers",
                &|r| c.avoid_providers.contains(&g.providers[r]),
                "a region of an avoided provider",
            ),
        ];
        for (name, banned, what) in bans {
            for r in 0..g.region_count() {
                m.nodes[r] |= banned(r);
            }
            if fastest(&m).is_none() {
                return unsat(name, format!("every usable path crosses {what}"));
            }
        }
        if let Some(mbps) = c.min_bandwidth_mbps {
            let widest = g.widest(src, Some(dst), &m)[dst as usize].unwrap_or(0);
            m.min_avail_kbps = self.base.min_avail_kbps;
            if fastest(&m).is_none() {
                return unsat(
                    "min_bandwidth_mbps",
                    format!("{mbps} Mbps wanted, the widest path that meets the other constraints has {} Mbps available", widest as f64 / 1000.0),
                );
            }
        }
        if let (Some(ms), Some(lat)) = (c.max_latency_ms, fastest(&m)) {
            return unsat(
                "max_latency_ms",
                format!("{ms} ms allowed, the fastest path that meets the other constraints takes {} ms", lat as f64 / 1000.0),
            );
        }
        RoutingError::Unreachable {
            src: sname,
            dst: dname,
        }
    }
}
