//! The seed's three regions give the routes a network engineer expects; errors name the
//! constraint that failed; the cache and the incremental table agree with a full recompute.
use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::topology::synthetic::{generate, SyntheticSpec};
use crate::topology::{
    InMemoryTopologyStore, LinkId, RoutingHealth, Topology, TopologyStore, TopologyUpdate,
};

const THREE_REGIONS: &str = include_str!("../../../tests/fixtures/three_regions.toml");

fn engine() -> (Arc<InMemoryTopologyStore>, RoutingEngine) {
    let store = Arc::new(InMemoryTopologyStore::new(
        Topology::from_toml_str(THREE_REGIONS).unwrap(),
    ));
    let engine = RoutingEngine::new(store.clone());
    (store, engine)
}

fn names(engine: &RoutingEngine, p: &Path) -> Vec<String> {
    let t = engine.topology();
    p.regions
        .iter()
        .map(|&r| t.region(r).unwrap().name.clone())
        .collect()
}

fn ids(p: &Path) -> Vec<u32> {
    p.links.iter().map(|l| l.0).collect()
}

const NONE: Constraints = Constraints {
    avoid_regions: BTreeSet::new(),
    avoid_countries: BTreeSet::new(),
    avoid_providers: BTreeSet::new(),
    max_latency_ms: None,
    min_bandwidth_mbps: None,
};

#[test]
fn min_latency_us_to_ap_is_an_ecmp_tie_broken_by_cost() {
    let (_, e) = engine();
    let r = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinLatency, &NONE)
        .unwrap();
    // 80 + 120 = 200 ms = the direct link: two equal-latency paths, the cheaper one first.
    assert_eq!(
        names(&e, &r.primary),
        ["us-east-1", "eu-west-1", "ap-south-1"]
    );
    assert_eq!(r.primary.latency_ms, 200.0);
    assert_eq!(r.ecmp.len(), 2);
    assert_eq!(ids(&r.ecmp[1]), [3]);
    assert!(!r.ecmp_truncated);
    // Backup: the direct link, disjoint from the primary.
    assert_eq!(r.secondaries.len(), 1);
    assert_eq!(ids(&r.secondaries[0].path), [3]);
    assert!(r.secondaries[0].is_link_disjoint());
}

#[test]
fn each_strategy_gives_the_expected_primary() {
    let (_, e) = engine();
    let primary = |src: &str, dst: &str, s: Strategy| {
        ids(&e.route_by_name(src, dst, &s, &NONE).unwrap().primary)
    };
    assert_eq!(primary("us-east-1", "eu-west-1", Strategy::MinLatency), [1]);
    assert_eq!(
        primary("eu-west-1", "ap-south-1", Strategy::MinLatency),
        [2]
    );
    // 0.02 + 0.05 = 0.07 per GB beats the direct 0.08.
    assert_eq!(
        primary("us-east-1", "ap-south-1", Strategy::MinCost),
        [1, 2]
    );
    // Widest: via eu-west-1 the bottleneck is 900 Mbps, direct only 800.
    let w = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MaxBandwidth, &NONE)
        .unwrap();
    assert_eq!(ids(&w.primary), [1, 2]);
    assert_eq!(w.primary.bottleneck_mbps, 900.0);
    assert_eq!(ids(&w.secondaries[0].path), [3]);
    assert_eq!(
        primary("us-east-1", "eu-west-1", Strategy::MaxBandwidth),
        [1]
    );
    // Balanced: same latency both ways, but the direct link is one hop (one bandwidth and
    // cost term) fewer: 1.37 against 0.60 + 0.90.
    assert_eq!(
        primary(
            "us-east-1",
            "ap-south-1",
            Strategy::Balanced(BalancedWeights::default())
        ),
        [3]
    );
    // Balanced with all weight on cost agrees with min cost.
    let cost_only = BalancedWeights {
        latency: 0.0,
        bandwidth: 0.0,
        loss: 0.0,
        cost: 1.0,
        ..Default::default()
    };
    assert_eq!(
        primary("us-east-1", "ap-south-1", Strategy::Balanced(cost_only)),
        [1, 2]
    );
}

#[test]
fn path_figures_add_up() {
    let (_, e) = engine();
    let r = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinCost, &NONE)
        .unwrap();
    assert_eq!(r.primary.latency_ms, 200.0);
    assert!((r.primary.cost_per_gb - 0.07).abs() < 1e-12);
    assert_eq!(r.primary.bottleneck_mbps, 900.0);
    assert_eq!(r.primary.first_link(), Some(LinkId(1)));
}

#[test]
fn constraints_are_respected_or_named() {
    let (_, e) = engine();
    let avoid_ie = Constraints {
        avoid_countries: ["IE".to_string()].into(),
        ..NONE
    };
    let r = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinCost, &avoid_ie)
        .unwrap();
    assert_eq!(ids(&r.primary), [3]);
    assert!(r.secondaries.is_empty(), "no other path avoids IE");

    let err = e
        .route_by_name("us-east-1", "eu-west-1", &Strategy::MinLatency, &avoid_ie)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoutingError::ConstraintUnsatisfiable {
                constraint: "avoid_countries",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("destination region eu-west-1 is in avoided country IE"),
        "{err}"
    );

    let fast = Constraints {
        max_latency_ms: Some(150.0),
        ..NONE
    };
    let err = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinCost, &fast)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoutingError::ConstraintUnsatisfiable {
                constraint: "max_latency_ms",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("takes 200 ms"), "{err}");

    let wide = Constraints {
        min_bandwidth_mbps: Some(850.0),
        ..NONE
    };
    let r = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinLatency, &wide)
        .unwrap();
    assert_eq!(
        ids(&r.primary),
        [1, 2],
        "the 800 Mbps direct link is too narrow"
    );
    let wider = Constraints {
        min_bandwidth_mbps: Some(950.0),
        ..NONE
    };
    let err = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinLatency, &wider)
        .unwrap_err();
    assert!(err.to_string().contains("has 900 Mbps available"), "{err}");

    let via_us = Constraints {
        avoid_regions: ["us-east-1".to_string()].into(),
        ..NONE
    };
    let err = e
        .route_by_name("eu-west-1", "us-east-1", &Strategy::MinLatency, &via_us)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoutingError::ConstraintUnsatisfiable {
                constraint: "avoid_regions",
                ..
            }
        ),
        "{err}"
    );

    let aws = Constraints {
        avoid_providers: ["aws".to_string()].into(),
        ..NONE
    };
    let err = e
        .route_by_name("eu-west-1", "us-east-1", &Strategy::MinLatency, &aws)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoutingError::ConstraintUnsatisfiable {
                constraint: "avoid_providers",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn transit_avoidance_names_the_constraint() {
    let (_, e) = engine();
    // us-east-1 -> ap-south-1 with the direct link too narrow and eu-west-1 avoided.
    let c = Constraints {
        avoid_regions: ["eu-west-1".to_string()].into(),
        min_bandwidth_mbps: Some(850.0),
        ..NONE
    };
    let err = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinLatency, &c)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoutingError::ConstraintUnsatisfiable {
                constraint: "min_bandwidth_mbps",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_requests_are_refused_clearly() {
    let (_, e) = engine();
    assert_eq!(
        e.region_id("mars-1").unwrap_err(),
        RoutingError::UnknownRegion("mars-1".into())
    );
    let err = e
        .route_by_name("us-east-1", "us-east-1", &Strategy::MinLatency, &NONE)
        .unwrap_err();
    assert!(matches!(err, RoutingError::SameRegion(_)));
    let typo = Constraints {
        avoid_regions: ["eu-wset-1".to_string()].into(),
        ..NONE
    };
    let err = e
        .route_by_name("us-east-1", "ap-south-1", &Strategy::MinLatency, &typo)
        .unwrap_err();
    assert!(err.to_string().contains("eu-wset-1"), "{err}");
    let nan = Constraints {
        max_latency_ms: Some(f64::NAN),
        ..NONE
    };
    assert!(matches!(
        e.route_by_name("us-east-1", "ap-south-1", &Strategy::MinLatency, &nan),
        Err(RoutingError::InvalidConstraint {
            constraint: "max_latency_ms",
            ..
        })
    ));
    let zero = BalancedWeights {
        latency: 0.0,
        cost: 0.0,
        bandwidth: 0.0,
        loss: 0.0,
        ..Default::default()
    };
    assert!(matches!(
        e.route_by_name("us-east-1", "ap-south-1", &Strategy::Balanced(zero), &NONE),
        Err(RoutingError::InvalidStrategy(_))
    ));
}

#[test]
fn a_dead_link_moves_the_route_and_the_cache_follows() {
    let (store, e) = engine();
    let before = e
        .route_by_name("us-east-1", "eu-west-1", &Strategy::MinLatency, &NONE)
        .unwrap();
    let again = e
        .route_by_name("us-east-1", "eu-west-1", &Strategy::MinLatency, &NONE)
        .unwrap();
    assert!(
        Arc::ptr_eq(&before, &again),
        "second ask is served from the cache"
    );
    assert_eq!(e.cache_stats().hits, 1);
    store
        .apply(&[TopologyUpdate::LinkHealth {
            link_id: LinkId(1),
            health: RoutingHealth::Down,
        }])
        .unwrap();
    let after = e
        .route_by_name("us-east-1", "eu-west-1", &Strategy::MinLatency, &NONE)
        .unwrap();
    assert_eq!(ids(&after.primary), [3, 2]);
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(e.cache_stats().invalidations, 1);
    store
        .apply(&[TopologyUpdate::LinkHealth {
            link_id: LinkId(3),
            health: RoutingHealth::Down,
        }])
        .unwrap();
    let err = e
        .route_by_name("us-east-1", "eu-west-1", &Strategy::MinLatency, &NONE)
        .unwrap_err();
    assert!(matches!(err, RoutingError::Unreachable { .. }), "{err}");
}

#[test]
fn primary_alone_is_the_route_sets_primary() {
    let (_, e) = engine();
    let g = e.graph();
    for s in Strategy::ALL_DEFAULT {
        for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
            let (a, b) = (crate::topology::RegionId(a), crate::topology::RegionId(b));
            let set = e.route(a, b, &s, &NONE).unwrap();
            assert_eq!(
                primary_on(&g, a, b, &s, &NONE).unwrap(),
                set.primary,
                "{s:?}"
            );
        }
    }
}

#[test]
fn k_shortest_lists_all_paths_in_order() {
    let (_, e) = engine();
    let (us, ap) = (
        e.region_id("us-east-1").unwrap(),
        e.region_id("ap-south-1").unwrap(),
    );
    let paths = e.k_shortest(us, ap, &Strategy::MinCost, &NONE, 5).unwrap();
    assert_eq!(
        paths.iter().map(ids).collect::<Vec<_>>(),
        [vec![1, 2], vec![3]]
    );
}

#[test]
fn table_covers_every_destination_and_edge() {
    let (_, e) = engine();
    let us = e.region_id("us-east-1").unwrap();
    let table = e.table(us, &NONE).unwrap();
    assert_eq!(table.regions.len(), 2);
    for r in &table.regions {
        assert_eq!(r.routes.len(), 4);
        assert!(r.routes.iter().all(|x| x.is_ok()));
    }
    let t = e.topology();
    let nyc = table
        .edges()
        .iter()
        .find(|x| t.edge(x.edge).unwrap().name == "edge-nyc")
        .unwrap();
    assert!(nyc.local && nyc.routes.is_empty());
    let bom = table
        .edges()
        .iter()
        .find(|x| t.edge(x.edge).unwrap().name == "edge-bom")
        .unwrap();
    assert_eq!(bom.access_latency_ms, 2.0);
    assert_eq!(ids(&bom.routes[0].as_ref().unwrap().primary), [1, 2]);
}

/// Full tables of both kinds must be equal entry by entry.
fn assert_same_routes(a: &RoutingTable, b: &RoutingTable) {
    assert_eq!(a.regions.len(), b.regions.len());
    for (x, y) in a.regions.iter().zip(&b.regions) {
        for (rx, ry) in x.routes.iter().zip(y.routes.iter()) {
            match (rx, ry) {
                (Ok(rx), Ok(ry)) => {
                    assert_eq!(rx.primary, ry.primary, "primary to {:?}", x.dst);
                    assert_eq!(rx.ecmp, ry.ecmp, "ecmp to {:?}", x.dst);
                    assert_eq!(rx.secondaries, ry.secondaries, "secondaries to {:?}", x.dst);
                }
                (Err(ex), Err(ey)) => assert_eq!(ex, ey),
                _ => panic!("to {:?}: {rx:?} vs {ry:?}", x.dst),
            }
        }
    }
}

#[test]
fn incremental_table_matches_full_recompute() {
    let topo = Topology::from_config(&generate(&SyntheticSpec::new(20, 40)), None).unwrap();
    let store = Arc::new(InMemoryTopologyStore::new(topo));
    let e = RoutingEngine::new(store.clone());
    let src = crate::topology::RegionId(0);
    let mut table = e.table(src, &NONE).unwrap();
    let (mut resumed, mut reused) = (0, 0);
    let links: Vec<LinkId> = store.snapshot().links().iter().map(|l| l.id).collect();
    for (i, &link_id) in links.iter().enumerate().step_by(3) {
        let current = store.snapshot().link(link_id).unwrap().clone();
        let update = match i % 4 {
            0 => TopologyUpdate::LinkHealth {
                link_id,
                health: RoutingHealth::Down,
            },
            1 => TopologyUpdate::LinkMeasurement {
                link_id,
                latency_ms: current.latency_ms * 3.0,
                jitter_ms: 1.0,
                loss: 0.01,
            },
            2 => TopologyUpdate::LinkUtilisation {
                link_id,
                utilisation: 0.99,
            },
            // Better: forces the full path.
            _ => TopologyUpdate::LinkMeasurement {
                link_id,
                latency_ms: current.latency_ms / 2.0,
                jitter_ms: 0.0,
                loss: 0.0,
            },
        };
        store.apply(&[update]).unwrap();
        let incremental = e.update_table(&table).unwrap();
        let full = e.table(src, &NONE).unwrap();
        assert_same_routes(&incremental, &full);
        if i % 4 != 3 {
            assert!(!incremental.stats.full);
        }
        resumed += incremental.stats.resumed;
        reused += incremental.stats.reused;
        table = incremental;
    }
    // Both shortcuts were taken (and agreed with the full recompute).
    assert!(
        resumed > 0 && reused > 0,
        "resumed {resumed}, reused {reused}"
    );
}

/// On larger synthetic topologies, every entry of a table (goal-directed backup searches on
/// the source's tree) equals the route set of a single query (plain searches).
#[test]
fn table_entries_equal_single_queries() {
    for (regions, seed) in [(12, 1), (30, 2), (50, 0x5eed_d3c9)] {
        let spec = SyntheticSpec {
            seed,
            ..SyntheticSpec::new(regions, 0)
        };
        let topo = Topology::from_config(&generate(&spec), None).unwrap();
        let g = Arc::new(RoutingGraph::new(&topo));
        for src in [0, regions as u32 / 2] {
            let src = crate::topology::RegionId(src);
            let table = compute_table(&g, &topo, src, &Strategy::ALL_DEFAULT, &NONE).unwrap();
            for entry in &table.regions {
                for (s, got) in Strategy::ALL_DEFAULT.iter().zip(entry.routes.iter()) {
                    let want = route_on(&g, src, entry.dst, s, &NONE).unwrap();
                    assert_eq!(
                        **got.as_ref().unwrap(),
                        want,
                        "{s:?} {src:?} -> {:?}",
                        entry.dst
                    );
                }
            }
        }
    }
}
