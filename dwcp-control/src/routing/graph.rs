//! The routing graph: a topology snapshot turned into integer link metrics on a dense
//! adjacency list (regions = nodes, links = edges, parallel links allowed), plus the
//! shortest-path primitives the strategies are built from.
//!
//! Metrics are integers (latency in µs, cost in millionths of a unit per GB, bandwidth in kbit/s,
//! balanced score in millionths) so that path sums are exact and "equal cost" in ECMP means
//! equal, not "within a float epsilon". Every link counts at least 1 µs, so every path weight
//! strictly grows along a path and optimal paths are loop-free.
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Add;
use std::sync::Arc;

use smallvec::SmallVec;

use super::strategy::BalancedWeights;
use crate::topology::{LinkId, RegionId, Topology};

/// Integer figures of one link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkMetrics {
    pub id: LinkId,
    pub a: u32,
    pub b: u32,
    pub usable: bool,
    /// Round-trip latency in µs, at least 1.
    pub latency_us: u64,
    /// Cost per GB in millionths.
    pub cost_micro: u64,
    /// Available bandwidth in kbit/s.
    pub avail_kbps: u64,
    pub loss: f64,
    // The float figures, for reporting.
    pub latency_ms: f64,
    pub cost_per_gb: f64,
    pub avail_mbps: f64,
}

impl LinkMetrics {
    pub fn other(&self, n: u32) -> u32 {
        if n == self.a {
            self.b
        } else {
            self.a
        }
    }

    /// Balanced score of the link in millionths (see [`BalancedWeights`]).
    pub fn balanced_score(&self, w: &BalancedWeights) -> u64 {
        let latency = self.latency_ms / w.latency_ref_ms;
        let cost = self.cost_per_gb / w.cost_ref_per_gb;
        // Capped so a saturated link is very expensive but still finite.
        let bandwidth = (w.bandwidth_ref_mbps / self.avail_mbps.max(1e-3)).min(1e6);
        let loss = (1.0 - self.loss).ln() / (1.0 - w.loss_ref).ln();
        let score = w.latency * latency + w.cost * cost + w.bandwidth * bandwidth + w.loss * loss;
        (score * 1e6).round() as u64
    }
}

/// Lexicographic pair weight: `p` is what the strategy optimises, `s` breaks its ties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight {
    pub p: u64,
    pub s: u64,
}

impl Add for Weight {
    type Output = Weight;
    fn add(self, o: Weight) -> Weight {
        Weight {
            p: self.p.saturating_add(o.p),
            s: self.s.saturating_add(o.s),
        }
    }
}

/// What a search may use: banned regions, banned links, and a floor on available bandwidth.
/// The flags are held inline up to 32 regions and 64 links, so that a route set's masks (the
/// constraints', the backups' copy of it, Yen's) cost no allocation on small graphs.
#[derive(Debug)]
pub(crate) struct Mask {
    pub nodes: SmallVec<[bool; 32]>,
    pub links: SmallVec<[bool; 64]>,
    pub min_avail_kbps: u64,
}

impl Clone for Mask {
    /// A copy of the flags (`SmallVec`'s own `clone` goes element by element).
    fn clone(&self) -> Self {
        Mask {
            nodes: SmallVec::from_slice(&self.nodes),
            links: SmallVec::from_slice(&self.links),
            min_avail_kbps: self.min_avail_kbps,
        }
    }
}

/// Link indexes of a path, inline up to 8 links (no allocation for the paths of most
/// topologies).
pub(crate) type Links = SmallVec<[u32; 8]>;

/// Distances of a single-source search (`None` = not reached).
pub(crate) type Dist = Vec<Option<Weight>>;

/// Buffers of the searches, kept per thread and reused so that a search allocates nothing
/// (a route set runs up to dozens of them).
#[derive(Default)]
pub(crate) struct Scratch {
    pub dist: Dist,
    pub done: Vec<bool>,
    pub heap: BinaryHeap<Reverse<(Weight, u32)>>,
    pub wide: Vec<Option<u64>>,
    wheap: BinaryHeap<(u64, u32)>,
}

thread_local! {
    // Const-initialised: no lazy-initialisation check on each use.
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            dist: Vec::new(),
            done: Vec::new(),
            heap: BinaryHeap::new(),
            wide: Vec::new(),
            wheap: BinaryHeap::new(),
        })
    };
    /// `reaching`'s buffers (used while a distance map in `SCRATCH` is borrowed).
    static REACH: RefCell<(Vec<bool>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static WALK: RefCell<WalkBufs> = const {
        RefCell::new(WalkBufs {
            reaches: Vec::new(),
            stack: Vec::new(),
            on_path: Vec::new(),
            links: Vec::new(),
            frames: Vec::new(),
        })
    };
}

/// Buffers of the depth-first walks (`tight_paths`, the search for a path besides the
/// chosen ones), kept per thread.
#[derive(Default)]
pub(crate) struct WalkBufs {
    pub reaches: Vec<bool>,
    pub stack: Vec<u32>,
    pub on_path: Vec<bool>,
    pub links: Vec<u32>,
    pub frames: Vec<(u32, usize)>,
}

/// Runs `f` with this thread's walk buffers (fresh ones if they are in use further up).
pub(crate) fn with_walk<R>(f: impl FnOnce(&mut WalkBufs) -> R) -> R {
    WALK.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut WalkBufs::default()),
    })
}

/// Runs `f` with this thread's search buffers (fresh ones if they are in use further up).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// A topology snapshot prepared for routing.
#[derive(Debug)]
pub struct RoutingGraph {
    pub(crate) generation: u64,
    /// Indexed like the topology's links (sorted by link id).
    pub(crate) links: Vec<LinkMetrics>,
    /// Per region `r`: `adj[adj_start[r]..adj_start[r + 1]]` are its (link index, neighbour),
    /// sorted by link index (one flat array: the searches walk it without pointer chasing).
    /// The structure (adjacency, regions' names, countries, providers) is shared with the
    /// previous snapshot's graph when only link figures changed (see [`RoutingGraph::refresh`]).
    adj_start: Arc<[u32]>,
    adj: Arc<[(u32, u32)]>,
    pub(crate) names: Arc<[String]>,
    pub(crate) countries: Arc<[String]>,
    pub(crate) providers: Arc<[String]>,
    pub(crate) latency: Vec<u64>,
    pub(crate) cost: Vec<u64>,
    pub(crate) avail: Vec<u64>,
}

impl RoutingGraph {
    pub fn new(topology: &Topology) -> Self {
        let n = topology.regions().len();
        let mut adj = vec![Vec::new(); n];
        for (i, l) in topology.links().iter().enumerate() {
            adj[l.a.0 as usize].push((i as u32, l.b.0));
            adj[l.b.0 as usize].push((i as u32, l.a.0));
        }
        let mut start = Vec::with_capacity(n + 1);
        let mut at = 0u32;
        start.push(0);
        for a in &adj {
            at += a.len() as u32;
            start.push(at);
        }
        let regions = topology.regions();
        Self::with_structure(
            topology,
            start.into(),
            adj.concat().into(),
            regions.iter().map(|r| r.name.clone()).collect(),
            regions.iter().map(|r| r.country.clone()).collect(),
            regions.iter().map(|r| r.provider.clone()).collect(),
        )
    }

    /// The graph of `topology`, sharing `previous`'s structure when it is the same (the
    /// usual case: a link event changes figures, not which regions and links exist), so a
    /// link event rebuilds only the link figures.
    pub fn refresh(previous: &RoutingGraph, topology: &Topology) -> Self {
        let regions = topology.regions();
        let links = topology.links();
        let same = regions.len() == previous.names.len()
            && links.len() == previous.links.len()
            && regions.iter().enumerate().all(|(i, r)| {
                r.name == previous.names[i]
                    && r.country == previous.countries[i]
                    && r.provider == previous.providers[i]
            })
            && links
                .iter()
                .zip(previous.links.iter())
                .all(|(l, m)| l.id == m.id && l.a.0 == m.a && l.b.0 == m.b);
        if !same {
            return Self::new(topology);
        }
        Self::with_structure(
            topology,
            previous.adj_start.clone(),
            previous.adj.clone(),
            previous.names.clone(),
            previous.countries.clone(),
            previous.providers.clone(),
        )
    }

    fn with_structure(
        topology: &Topology,
        adj_start: Arc<[u32]>,
        adj: Arc<[(u32, u32)]>,
        names: Arc<[String]>,
        countries: Arc<[String]>,
        providers: Arc<[String]>,
    ) -> Self {
        let links: Vec<LinkMetrics> = topology
            .links()
            .iter()
            .map(|l| {
                let avail_mbps = l.available_mbps().max(0.0);
                LinkMetrics {
                    id: l.id,
                    a: l.a.0,
                    b: l.b.0,
                    usable: l.usable(),
                    latency_us: ((l.latency_ms * 1000.0).round() as u64).max(1),
                    cost_micro: (l.cost_per_gb * 1e6).round() as u64,
                    avail_kbps: (avail_mbps * 1000.0).floor() as u64,
                    loss: l.loss,
                    latency_ms: l.latency_ms,
                    cost_per_gb: l.cost_per_gb,
                    avail_mbps,
                }
            })
            .collect();
        let latency = links.iter().map(|l| l.latency_us).collect();
        let cost = links.iter().map(|l| l.cost_micro).collect();
        let avail = links.iter().map(|l| l.avail_kbps).collect();
        RoutingGraph {
            generation: topology.generation(),
            links,
            adj_start,
            adj,
            names,
            countries,
            providers,
            latency,
            cost,
            avail,
        }
    }

    /// (link index, neighbour) of the links of region `u`, by link index.
    #[inline]
    pub(crate) fn neighbours(&self, u: u32) -> &[(u32, u32)] {
        &self.adj[self.adj_start[u as usize] as usize..self.adj_start[u as usize + 1] as usize]
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn region_count(&self) -> usize {
        self.names.len()
    }

    pub fn region_name(&self, r: RegionId) -> &str {
        &self.names[r.0 as usize]
    }

    /// Integer metrics of a link, as routing sees them.
    pub fn link_metrics(&self, id: LinkId) -> Option<&LinkMetrics> {
        self.links
            .binary_search_by_key(&id, |l| l.id)
            .ok()
            .map(|i| &self.links[i])
    }

    pub fn link_metrics_all(&self) -> &[LinkMetrics] {
        &self.links
    }

    /// Everything usable, nothing banned.
    pub(crate) fn open_mask(&self) -> Mask {
        Mask {
            nodes: SmallVec::from_elem(false, self.region_count()),
            links: self.links.iter().map(|l| !l.usable).collect(),
            min_avail_kbps: 0,
        }
    }

    pub(crate) fn allowed(&self, mask: &Mask, l: usize) -> bool {
        let m = &self.links[l];
        !mask.links[l]
            && m.avail_kbps >= mask.min_avail_kbps
            && !mask.nodes[m.a as usize]
            && !mask.nodes[m.b as usize]
    }

    /// Whether any link of region `r` is open under `mask` (else no search leaves or reaches it).
    #[inline]
    pub(crate) fn has_open_link(&self, mask: &Mask, r: u32) -> bool {
        self.neighbours(r)
            .iter()
            .any(|&(l, v)| self.step(mask, l, v))
    }

    /// `allowed` for a step from a region already reached (so not banned) to `v` over `l`.
    #[inline]
    pub(crate) fn step(&self, mask: &Mask, l: u32, v: u32) -> bool {
        !mask.links[l as usize]
            && !mask.nodes[v as usize]
            && self.avail[l as usize] >= mask.min_avail_kbps
    }

    /// Dijkstra over the allowed links with pair weights, from `src` to every region, or until
    /// `goal` is settled (regions not settled by then keep tentative distances that are never
    /// below the goal's). Written on the dense adjacency rather than petgraph's `dijkstra`:
    /// with petgraph (hash-map scores, filtered-graph callbacks) the 50-region table took
    /// 13.3 ms against 6.4 ms with this one (criterion medians, two runs on the dev machine).
    pub(crate) fn dijkstra(
        &self,
        src: u32,
        goal: Option<u32>,
        mask: &Mask,
        weight: impl Fn(usize) -> Weight,
    ) -> Dist {
        let mut dist = Vec::new();
        self.dijkstra_into(
            src,
            goal,
            mask,
            weight,
            &mut dist,
            &mut Vec::new(),
            &mut BinaryHeap::new(),
        );
        dist
    }

    /// `dijkstra` into reused buffers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dijkstra_into(
        &self,
        src: u32,
        goal: Option<u32>,
        mask: &Mask,
        weight: impl Fn(usize) -> Weight,
        dist: &mut Dist,
        done: &mut Vec<bool>,
        heap: &mut BinaryHeap<Reverse<(Weight, u32)>>,
    ) {
        let n = self.region_count();
        dist.clear();
        dist.resize(n, None);
        done.clear();
        done.resize(n, false);
        heap.clear();
        dist[src as usize] = Some(Weight::default());
        heap.push(Reverse((Weight::default(), src)));
        while let Some(Reverse((d, u))) = heap.pop() {
            if std::mem::replace(&mut done[u as usize], true) {
                continue;
            }
            if Some(u) == goal {
                break;
            }
            for &(l, v) in self.neighbours(u) {
                if done[v as usize] || !self.step(mask, l, v) {
                    continue;
                }
                let nd = d + weight(l as usize);
                if dist[v as usize].is_none_or(|old| nd < old) {
                    dist[v as usize] = Some(nd);
                    heap.push(Reverse((nd, v)));
                }
            }
        }
    }

    /// Goal-directed `dijkstra` (A*) into this thread's scratch buffers (`s.dist`), with
    /// `pot[v]` the distance from `v` to `goal` under a mask that bans no more than `mask`
    /// (a consistent lower bound: `mask` only removes paths). `pot[v] = None` means `v`
    /// cannot reach `goal` at all, so it is skipped.
    ///
    /// Gives the same answer as `dijkstra_scratch` to `first_tight_path` and the goal's
    /// distance: regions are settled in order of `g + pot`, and the search stops only once
    /// every region left has `g + pot` above the goal's distance, so every region on an
    /// optimal path to the goal is settled with its exact distance; a region left with a
    /// tentative distance (never below its true one) is on no optimal path and cannot look
    /// tight towards one that is.
    pub(crate) fn astar_scratch(
        &self,
        s: &mut Scratch,
        src: u32,
        goal: u32,
        mask: &Mask,
        weight: impl Fn(usize) -> Weight,
        pot: &[Option<Weight>],
    ) {
        let n = self.region_count();
        let (dist, done, heap) = (&mut s.dist, &mut s.done, &mut s.heap);
        dist.clear();
        dist.resize(n, None);
        done.clear();
        done.resize(n, false);
        heap.clear();
        let Some(h0) = pot[src as usize] else {
            return;
        };
        dist[src as usize] = Some(Weight::default());
        heap.push(Reverse((h0, src)));
        let mut reached: Option<Weight> = None;
        while let Some(Reverse((f, u))) = heap.pop() {
            if reached.is_some_and(|d| f > d) {
                break;
            }
            if std::mem::replace(&mut done[u as usize], true) {
                continue;
            }
            if u == goal {
                reached = Some(f);
                continue;
            }
            let d = dist[u as usize].expect("queued regions have a distance");
            for &(l, v) in self.neighbours(u) {
                if done[v as usize] || !self.step(mask, l, v) {
                    continue;
                }
                let Some(h) = pot[v as usize] else {
                    continue;
                };
                let nd = d + weight(l as usize);
                if dist[v as usize].is_none_or(|old| nd < old) {
                    dist[v as usize] = Some(nd);
                    heap.push(Reverse((nd + h, v)));
                }
            }
        }
    }

    /// `dijkstra` into this thread's scratch buffers (`s.dist`).
    pub(crate) fn dijkstra_scratch(
        &self,
        s: &mut Scratch,
        src: u32,
        goal: Option<u32>,
        mask: &Mask,
        weight: impl Fn(usize) -> Weight,
    ) {
        self.dijkstra_into(
            src,
            goal,
            mask,
            weight,
            &mut s.dist,
            &mut s.done,
            &mut s.heap,
        );
    }

    /// Widest-path Dijkstra: the largest bottleneck of available bandwidth to every region.
    /// Stops once `goal` is settled.
    pub(crate) fn widest(&self, src: u32, goal: Option<u32>, mask: &Mask) -> Vec<Option<u64>> {
        let mut s = Scratch::default();
        self.widest_scratch(&mut s, src, goal, mask);
        s.wide
    }

    /// `widest` into scratch buffers (`s.wide`).
    pub(crate) fn widest_scratch(&self, s: &mut Scratch, src: u32, goal: Option<u32>, mask: &Mask) {
        let n = self.region_count();
        let (best, done, heap) = (&mut s.wide, &mut s.done, &mut s.wheap);
        best.clear();
        best.resize(n, None);
        done.clear();
        done.resize(n, false);
        heap.clear();
        best[src as usize] = Some(u64::MAX);
        heap.push((u64::MAX, src));
        while let Some((b, u)) = heap.pop() {
            if std::mem::replace(&mut done[u as usize], true) {
                continue;
            }
            if Some(u) == goal {
                break;
            }
            for &(l, v) in self.neighbours(u) {
                if done[v as usize] || !self.step(mask, l, v) {
                    continue;
                }
                let nb = b.min(self.avail[l as usize]);
                if best[v as usize].is_none_or(|old| nb > old) {
                    best[v as usize] = Some(nb);
                    heap.push((nb, v));
                }
            }
        }
    }

    /// Regions from which `dst` is reachable over tight links (prunes dead ends), into
    /// `reaches` (`stack` is scratch).
    pub(crate) fn reaching(
        &self,
        dst: u32,
        mask: &Mask,
        tight: &impl Fn(u32, u32, usize) -> bool,
        reaches: &mut Vec<bool>,
        stack: &mut Vec<u32>,
    ) {
        reaches.clear();
        reaches.resize(self.region_count(), false);
        reaches[dst as usize] = true;
        stack.clear();
        stack.push(dst);
        while let Some(v) = stack.pop() {
            for &(l, u) in self.neighbours(v) {
                if !reaches[u as usize] && self.step(mask, l, u) && tight(u, v, l as usize) {
                    reaches[u as usize] = true;
                    stack.push(u);
                }
            }
        }
    }

    /// The first of `tight_paths` in lexicographic order, by a greedy walk: with strictly
    /// positive weights the tight links form an acyclic graph in which every region that
    /// reaches `dst` has a tight link onward, so the walk never has to back up.
    pub(crate) fn first_tight_path(
        &self,
        src: u32,
        dst: u32,
        mask: &Mask,
        tight: impl Fn(u32, u32, usize) -> bool,
    ) -> Option<Links> {
        REACH.with(|c| {
            let mut fresh = Default::default();
            let mut held = c.try_borrow_mut();
            let (reaches, stack) = match held.as_deref_mut() {
                Ok(r) => r,
                Err(_) => &mut fresh,
            };
            self.reaching(dst, mask, &tight, reaches, stack);
            if !reaches[src as usize] {
                return None;
            }
            let mut links = Links::new();
            let mut at = src;
            while at != dst {
                if links.len() >= self.region_count() {
                    return None; // a zero-weight cycle: cannot happen with weights >= 1 µs
                }
                let &(l, v) = self.neighbours(at).iter().find(|&&(l, v)| {
                    reaches[v as usize] && self.step(mask, l, v) && tight(at, v, l as usize)
                })?;
                links.push(l);
                at = v;
            }
            Some(links)
        })
    }

    /// Loop-free paths from `src` to `dst` that only use links for which `tight(u, v, l)` holds
    /// (the links lying on optimal paths), in lexicographic order of their link indexes, at
    /// most `limit` of them: each is passed to `emit` (as its link list). Returns whether more
    /// exist.
    pub(crate) fn tight_paths(
        &self,
        src: u32,
        dst: u32,
        mask: &Mask,
        limit: usize,
        tight: impl Fn(u32, u32, usize) -> bool,
        mut emit: impl FnMut(&[u32]),
    ) -> bool {
        let n = self.region_count();
        with_walk(|w| {
            let WalkBufs {
                reaches,
                stack,
                on_path,
                links,
                frames,
            } = w;
            self.reaching(dst, mask, &tight, reaches, stack);
            if !reaches[src as usize] {
                return false;
            }
            let mut found = 0;
            on_path.clear();
            on_path.resize(n, false);
            links.clear();
            // Depth-first with an explicit stack of (node, next adjacency index); a step budget
            // bounds the walk should zero-weight links make the tight graph cyclic.
            frames.clear();
            frames.push((src, 0));
            on_path[src as usize] = true;
            let mut budget: u32 = 200_000;
            let mut truncated = false;
            while let Some(&mut (u, ref mut next)) = frames.last_mut() {
                budget = budget.saturating_sub(1);
                if budget == 0 {
                    truncated = true;
                    break;
                }
                if u == dst {
                    if found == limit {
                        truncated = true;
                        break;
                    }
                    found += 1;
                    emit(links);
                    on_path[u as usize] = false;
                    frames.pop();
                    links.pop();
                    continue;
                }
                let adj = self.neighbours(u);
                let mut advanced = false;
                while *next < adj.len() {
                    let (l, v) = adj[*next];
                    *next += 1;
                    if !on_path[v as usize]
                        && reaches[v as usize]
                        && self.step(mask, l, v)
                        && tight(u, v, l as usize)
                    {
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
            truncated
        })
    }
}
