//! Property tests against brute force: on random graphs of up to 8 regions (parallel links,
//! dead links, ties on purpose), every simple path is enumerated and the engine's answers are
//! checked against that list for every strategy and random constraints.
use std::collections::BTreeSet;

use proptest::prelude::{
    prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, Strategy as Gen,
    TestCaseError,
};

use super::search::{PathKey, Search};
use super::strategy::Strategy;
use super::*;
use crate::topology::{
    LinkConfig, RegionConfig, RegionId, RoutingHealth, Topology, TopologyConfig,
};

#[derive(Debug, Clone)]
struct Case {
    regions: usize,
    /// (a, b, latency ms, cost cents, capacity index, down)
    links: Vec<(usize, usize, u8, u8, u8, bool)>,
    countries: Vec<u8>,
    src: usize,
    dst: usize,
    avoid_country: Option<u8>,
    max_latency_ms: Option<u8>,
    min_bandwidth_mbps: Option<u16>,
    weights: (u8, u8, u8, u8),
}

fn case() -> impl Gen<Value = Case> {
    (2usize..=8).prop_flat_map(|n| {
        let link = (
            0..n,
            0..n,
            1u8..=6,
            0u8..=4,
            0u8..3,
            proptest::bool::weighted(0.1),
        )
            .prop_filter("no self-loop", |(a, b, ..)| a != b);
        (
            Just(n),
            proptest::collection::vec(link, 1..=16),
            proptest::collection::vec(0u8..3, n),
            0..n,
            0..n,
            proptest::option::weighted(0.3, 0u8..3),
            proptest::option::weighted(0.3, 2u8..=20),
            proptest::option::weighted(0.3, prop_oneof![Just(100u16), Just(200), Just(300)]),
            (0u8..=3, 0u8..=3, 0u8..=3, 1u8..=3),
        )
            .prop_filter("distinct ends", |t| t.3 != t.4)
            .prop_map(
                |(
                    regions,
                    links,
                    countries,
                    src,
                    dst,
                    avoid_country,
                    max_latency_ms,
                    min_bandwidth_mbps,
                    weights,
                )| Case {
                    regions,
                    links,
                    countries,
                    src,
                    dst,
                    avoid_country,
                    max_latency_ms,
                    min_bandwidth_mbps,
                    weights,
                },
            )
    })
}

fn topology(c: &Case) -> Topology {
    let regions = (0..c.regions)
        .map(|i| RegionConfig {
            name: format!("r{i}"),
            description: String::new(),
            latitude: 0.0,
            longitude: i as f64,
            country: format!("C{}", c.countries[i]),
            provider: "p".into(),
            capacity_mbps: 1000.0,
            gateways: Vec::new(),
        })
        .collect();
    let links = c
        .links
        .iter()
        .enumerate()
        .map(|(i, &(a, b, lat, cost, cap, down))| {
            let mut l = LinkConfig::new(
                i as u32,
                &format!("r{a}"),
                &format!("r{b}"),
                [100.0, 200.0, 300.0][cap as usize],
            );
            l.name = format!("l{i}");
            l.latency_ms = Some(lat as f64);
            l.cost_per_gb = cost as f64 / 100.0;
            l.health = if down {
                RoutingHealth::Down
            } else {
                RoutingHealth::Up
            };
            l
        })
        .collect();
    Topology::from_config(
        &TopologyConfig::from_entries(regions, links, Vec::new()),
        None,
    )
    .unwrap()
}

fn constraints(c: &Case) -> Constraints {
    Constraints {
        avoid_countries: c
            .avoid_country
            .map(|x| format!("C{x}"))
            .into_iter()
            .collect(),
        max_latency_ms: c.max_latency_ms.map(f64::from),
        min_bandwidth_mbps: c.min_bandwidth_mbps.map(f64::from),
        ..Constraints::default()
    }
}

fn strategies(c: &Case) -> Vec<Strategy> {
    let (l, k, b, s) = c.weights;
    let w = BalancedWeights {
        latency: l as f64,
        cost: k as f64,
        bandwidth: b as f64,
        loss: s as f64,
        ..Default::default()
    };
    vec![
        Strategy::MinLatency,
        Strategy::MinCost,
        Strategy::MaxBandwidth,
        Strategy::Balanced(w),
    ]
}

/// Every simple path from src to dst as link indexes, by plain depth-first enumeration.
fn all_simple_paths(g: &RoutingGraph, src: u32, dst: u32) -> Vec<Vec<u32>> {
    fn walk(
        g: &RoutingGraph,
        at: u32,
        dst: u32,
        seen: &mut Vec<u32>,
        links: &mut Vec<u32>,
        out: &mut Vec<Vec<u32>>,
    ) {
        if at == dst {
            out.push(links.clone());
            return;
        }
        for (i, l) in g.link_metrics_all().iter().enumerate() {
            if l.a != at && l.b != at {
                continue;
            }
            let next = l.other(at);
            if seen.contains(&next) {
                continue;
            }
            seen.push(next);
            links.push(i as u32);
            walk(g, next, dst, seen, links, out);
            links.pop();
            seen.pop();
        }
    }
    let mut out = Vec::new();
    walk(g, src, dst, &mut vec![src], &mut Vec::new(), &mut out);
    out
}

fn nodes_of(g: &RoutingGraph, src: u32, links: &[u32]) -> Vec<u32> {
    let mut at = src;
    let mut nodes = vec![src];
    for &l in links {
        at = g.link_metrics_all()[l as usize].other(at);
        nodes.push(at);
    }
    nodes
}

/// The constraints, checked from first principles on a path.
fn admissible(g: &RoutingGraph, t: &Topology, c: &Constraints, src: u32, links: &[u32]) -> bool {
    let ms = g.link_metrics_all();
    let nodes_ok = nodes_of(g, src, links)
        .iter()
        .all(|&n| !c.avoid_countries.contains(&t.regions()[n as usize].country));
    let links_ok = links.iter().all(|&l| {
        let m = &ms[l as usize];
        m.usable && c.min_bandwidth_mbps.is_none_or(|b| m.avail_mbps >= b)
    });
    let lat: u64 = links.iter().map(|&l| ms[l as usize].latency_us).sum();
    nodes_ok && links_ok && c.max_latency_ms.is_none_or(|b| lat <= (b * 1000.0) as u64)
}

/// The strategy's key of a path, computed here from the link figures.
fn key(g: &RoutingGraph, s: &Strategy, links: &[u32]) -> PathKey {
    let ms = g.link_metrics_all();
    let sum = |f: &dyn Fn(usize) -> u64| links.iter().map(|&l| f(l as usize)).sum::<u64>();
    let lat = sum(&|l| ms[l].latency_us);
    let cost = sum(&|l| ms[l].cost_micro);
    match s {
        Strategy::MinLatency => (lat, cost, 0),
        Strategy::MinCost => (cost, lat, 0),
        Strategy::Balanced(w) => (sum(&|l| ms[l].balanced_score(w)), lat, 0),
        Strategy::MaxBandwidth => (
            u64::MAX
                - links
                    .iter()
                    .map(|&l| ms[l as usize].avail_kbps)
                    .min()
                    .unwrap_or(u64::MAX),
            lat,
            cost,
        ),
    }
}

fn ecmp_equal(s: &Strategy, a: &PathKey, b: &PathKey) -> bool {
    match s {
        Strategy::MaxBandwidth => a.0 == b.0 && a.1 == b.1,
        _ => a.0 == b.0,
    }
}

fn link_indexes(g: &RoutingGraph, p: &Path) -> Vec<u32> {
    p.links
        .iter()
        .map(|id| {
            g.link_metrics_all()
                .iter()
                .position(|m| m.id == *id)
                .unwrap() as u32
        })
        .collect()
}

/// A path is loop-free, connects src to dst, and its links join its regions.
fn well_formed(g: &RoutingGraph, src: u32, dst: u32, p: &Path) -> bool {
    let links = link_indexes(g, p);
    let nodes = nodes_of(g, src, &links);
    let regions: Vec<u32> = p.regions.iter().map(|r| r.0).collect();
    let distinct: BTreeSet<u32> = regions.iter().copied().collect();
    regions == nodes && distinct.len() == regions.len() && regions.last() == Some(&dst)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn routes_match_brute_force(c in case()) {
        let t = topology(&c);
        let g = RoutingGraph::new(&t);
        let cons = constraints(&c);
        let (src, dst) = (c.src as u32, c.dst as u32);
        let paths = all_simple_paths(&g, src, dst);
        for s in strategies(&c) {
            let mut ok: Vec<(PathKey, Vec<u32>)> = paths
                .iter()
                .filter(|p| admissible(&g, &t, &cons, src, p))
                .map(|p| (key(&g, &s, p), p.clone()))
                .collect();
            ok.sort();
            let result = route_on(&g, RegionId(src), RegionId(dst), &s, &cons);
            let Some((best, best_links)) = ok.first().cloned() else {
                prop_assert!(result.is_err(), "{s:?}: brute force finds no path, engine gave {result:?}");
                if let Err(RoutingError::Unreachable { .. }) = result {
                    let open = paths.iter().any(|p| admissible(&g, &t, &Constraints::default(), src, p));
                    prop_assert!(!open, "{s:?}: called unreachable but an unconstrained path exists");
                }
                continue;
            };
            let r = result.map_err(|e| TestCaseError::fail(format!("{s:?}: {e}, brute force has {best_links:?}")))?;

            // Primary: optimal, loop-free, admissible, and the deterministic tie-break.
            let primary = link_indexes(&g, &r.primary);
            prop_assert!(well_formed(&g, src, dst, &r.primary));
            prop_assert!(admissible(&g, &t, &cons, src, &primary));
            prop_assert_eq!(key(&g, &s, &primary), best, "{:?}: primary not optimal", s);
            prop_assert_eq!(&primary, &best_links, "{:?}: tie-break", s);
            let alone = primary_on(&g, RegionId(src), RegionId(dst), &s, &cons).unwrap();
            prop_assert_eq!(key(&g, &s, &link_indexes(&g, &alone)), best, "{:?}: primary_on not optimal", s);

            // ECMP: exactly the optimal paths.
            let want: BTreeSet<Vec<u32>> = ok.iter().filter(|(k, _)| ecmp_equal(&s, k, &best)).map(|(_, p)| p.clone()).collect();
            let got: BTreeSet<Vec<u32>> = r.ecmp.iter().map(|p| link_indexes(&g, p)).collect();
            prop_assert_eq!(&r.ecmp[0], &r.primary);
            prop_assert_eq!(got.len(), r.ecmp.len(), "duplicate ECMP paths");
            if want.len() <= MAX_ECMP_PATHS {
                prop_assert_eq!(&got, &want, "{:?}: ECMP set", s);
                prop_assert!(!r.ecmp_truncated);
            } else {
                prop_assert!(got.is_subset(&want) && r.ecmp_truncated && got.len() == MAX_ECMP_PATHS);
            }

            // Secondaries: admissible, distinct; disjoint ones are the best disjoint path left,
            // overlapping ones appear only when no disjoint path was left, and say what they share.
            let mut used: BTreeSet<u32> = primary.iter().copied().collect();
            let mut seen: Vec<Vec<u32>> = vec![primary.clone()];
            for sec in &r.secondaries {
                let links = link_indexes(&g, &sec.path);
                prop_assert!(well_formed(&g, src, dst, &sec.path));
                prop_assert!(admissible(&g, &t, &cons, src, &links));
                prop_assert!(!seen.contains(&links), "repeated path");
                let shared: Vec<u32> = links.iter().copied().filter(|l| used.contains(l)).collect();
                prop_assert_eq!(link_indexes(&g, &Path { links: sec.shared_links.clone(), ..sec.path.clone() }), shared.clone());
                let best_disjoint = ok.iter().find(|(_, p)| p.iter().all(|l| !used.contains(l)));
                if sec.is_link_disjoint() {
                    let (k, p) = best_disjoint.expect("a disjoint path exists");
                    prop_assert_eq!(key(&g, &s, &links), *k, "{:?}: disjoint backup not optimal", s);
                    if cons.max_latency_ms.is_none() {
                        prop_assert_eq!(&links, p, "{:?}: disjoint backup tie-break", s);
                    }
                } else {
                    prop_assert!(best_disjoint.is_none(), "{:?}: overlapping backup though a disjoint path exists", s);
                }
                used.extend(links.iter().copied());
                seen.push(links);
            }
            prop_assert_eq!(r.secondaries.len(), (ok.len() - 1).min(MAX_SECONDARIES), "{:?}: backups missing", s);

            // Yen: the k best paths, best first, distinct.
            let search = Search::new(&g, &s, &cons).unwrap();
            let k = 10;
            let yen = search.k_shortest(src, dst, k);
            prop_assert_eq!(yen.len(), ok.len().min(k));
            let keys: Vec<PathKey> = yen.iter().map(|y| key(&g, &s, &y.links)).collect();
            let want_keys: Vec<PathKey> = ok.iter().take(k).map(|(k, _)| *k).collect();
            prop_assert_eq!(keys, want_keys, "{:?}: Yen order", s);
            let distinct: BTreeSet<&[u32]> = yen.iter().map(|y| &y.links[..]).collect();
            prop_assert_eq!(distinct.len(), yen.len());
            for y in &yen {
                prop_assert!(admissible(&g, &t, &cons, src, &y.links));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A table's route sets (backups searched backwards from the destination, guided by the
    /// source's tree) are exactly the route sets of single queries (plain searches).
    #[test]
    fn table_routes_are_single_routes(c in case()) {
        let t = topology(&c);
        let g = std::sync::Arc::new(RoutingGraph::new(&t));
        let cons = constraints(&c);
        let src = RegionId(c.src as u32);
        let strategies = strategies(&c);
        let table = compute_table(&g, &t, src, &strategies, &cons).unwrap();
        for entry in &table.regions {
            for (s, got) in strategies.iter().zip(entry.routes.iter()) {
                let want = route_on(&g, src, entry.dst, s, &cons);
                match (got, &want) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(&**a, b, "{:?} to {:?}", s, entry.dst),
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    _ => prop_assert!(false, "{s:?} to {:?}: {got:?} vs {want:?}", entry.dst),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A table brought up to date after random link changes (better, worse, up, down, several
    /// at once) holds exactly the route sets of a table computed from scratch.
    #[test]
    fn incremental_table_equals_full_after_changes(
        c in case(),
        changes in proptest::collection::vec(
            (0usize..16, 1u8..=6, 0u8..=4, 0u8..3, proptest::bool::weighted(0.2)),
            1..=4,
        ),
        keep_budget in proptest::bool::weighted(0.2),
    ) {
        let t1 = topology(&c);
        let mut c2 = c.clone();
        for &(i, lat, cost, cap, down) in &changes {
            let n = c2.links.len();
            let l = &mut c2.links[i % n];
            *l = (l.0, l.1, lat, cost, cap, down);
        }
        let t2 = topology(&c2);
        let g1 = std::sync::Arc::new(RoutingGraph::new(&t1));
        let g2 = std::sync::Arc::new(RoutingGraph::new(&t2));
        let mut cons = constraints(&c);
        if !keep_budget {
            cons.max_latency_ms = None;
        }
        let src = RegionId(c.src as u32);
        let strategies = strategies(&c);
        let before = compute_table(&g1, &t1, src, &strategies, &cons).unwrap();
        let incremental = update_table(&g2, &t2, &before).unwrap();
        let full = compute_table(&g2, &t2, src, &strategies, &cons).unwrap();
        prop_assert_eq!(incremental.regions.len(), full.regions.len());
        for (x, y) in incremental.regions.iter().zip(&full.regions) {
            for ((s, a), b) in strategies.iter().zip(x.routes.iter()).zip(y.routes.iter()) {
                match (a, b) {
                    (Ok(a), Ok(b)) => {
                        prop_assert_eq!(&a.primary, &b.primary, "{:?} to {:?}", s, x.dst);
                        prop_assert_eq!(&a.ecmp, &b.ecmp, "{:?} to {:?}", s, x.dst);
                        prop_assert_eq!(&a.secondaries, &b.secondaries, "{:?} to {:?}", s, x.dst);
                        prop_assert_eq!(a.ecmp_truncated, b.ecmp_truncated);
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    _ => prop_assert!(false, "{s:?} to {:?}: {a:?} vs {b:?}", x.dst),
                }
            }
        }
    }
}
