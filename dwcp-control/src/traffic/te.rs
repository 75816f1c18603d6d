//! QoS-aware traffic engineering in the manner of B4 and SWAN: classes are served in strict
//! priority (a class only gets what every higher class left), and within a class the flow
//! groups (destination, class) share the links max-min fairly by progressive filling. A group
//! fills its paths in preference order (the routing engine's order, best first) and moves on
//! to the next path when one saturates, as B4's tunnel groups do.
//!
//! Reservations are carved out first: they were admitted with priority preemption already, so
//! they hold against any unreserved demand.

use std::collections::BTreeMap;

use dwcp_common::QosClass;

use crate::topology::LinkId;

/// A flow group: one destination's traffic of one class.
pub type FlowGroup = (String, QosClass);

/// Each destination's paths (link lists) in preference order, best first.
pub type DestinationPaths = BTreeMap<String, Vec<Vec<LinkId>>>;

/// A reserved rate on a fixed path. `flow` names the group it serves if it is ours (source
/// is this gateway's region); other gateways' reservations only take capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    pub flow: Option<FlowGroup>,
    pub path: Vec<LinkId>,
    pub rate_bps: u64,
}

/// What one flow group gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowAllocation {
    pub demand_bps: u64,
    /// Part of `granted_bps` held by reservations.
    pub reserved_bps: u64,
    /// Total the group may send: reserved plus its max-min share of what is left.
    pub granted_bps: u64,
    /// `granted_bps` split over the destination's paths (same order).
    pub per_path_bps: Vec<u64>,
}

/// The TE solution: per flow group allocations and what is left on each link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TePlan {
    pub flows: BTreeMap<FlowGroup, FlowAllocation>,
    pub residual_bps: BTreeMap<LinkId, u64>,
}

impl TePlan {
    /// Sum over classes of what a destination sends on each of its paths.
    pub fn per_path_bps(&self, destination: &str, paths: usize) -> Vec<u64> {
        let mut sum = vec![0u64; paths];
        for ((d, _), a) in &self.flows {
            if d == destination {
                for (s, v) in sum.iter_mut().zip(&a.per_path_bps) {
                    *s = s.saturating_add(*v);
                }
            }
        }
        sum
    }

    /// Bandwidth still free along `path` (its narrowest link).
    pub fn residual_on(&self, path: &[LinkId]) -> u64 {
        path.iter()
            .map(|l| self.residual_bps.get(l).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}

/// Solves TE (paths must not repeat a link; `TrafficEngineer` checks). `capacity_bps`: what each link may carry for us (headroom and unsteered traffic
/// already taken off; a dead link is 0 or absent). `paths`: each destination's paths in
/// preference order. `demands`: measured or configured rate per flow group.
pub fn solve(
    capacity_bps: &BTreeMap<LinkId, u64>,
    paths: &DestinationPaths,
    demands: &BTreeMap<FlowGroup, u64>,
    pinned: &[Pinned],
) -> TePlan {
    let mut residual = capacity_bps.clone();
    let mut plan = TePlan::default();
    for (fg, &demand_bps) in demands {
        let n = paths.get(&fg.0).map_or(0, Vec::len);
        plan.flows.insert(
            fg.clone(),
            FlowAllocation {
                demand_bps,
                per_path_bps: vec![0; n],
                ..Default::default()
            },
        );
    }
    for p in pinned {
        for l in &p.path {
            if let Some(r) = residual.get_mut(l) {
                *r = r.saturating_sub(p.rate_bps);
            }
        }
        let Some(fg) = &p.flow else { continue };
        let Some(index) = paths
            .get(&fg.0)
            .and_then(|ps| ps.iter().position(|q| *q == p.path))
        else {
            continue;
        };
        let n = paths[&fg.0].len();
        let a = plan
            .flows
            .entry(fg.clone())
            .or_insert_with(|| FlowAllocation {
                per_path_bps: vec![0; n],
                ..Default::default()
            });
        a.reserved_bps = a.reserved_bps.saturating_add(p.rate_bps);
        a.granted_bps = a.granted_bps.saturating_add(p.rate_bps);
        a.per_path_bps[index] = a.per_path_bps[index].saturating_add(p.rate_bps);
    }
    for class in QosClass::ALL {
        let mut groups: Vec<Filling> = plan
            .flows
            .iter()
            .filter(|((_, c), a)| *c == class && a.demand_bps > a.reserved_bps)
            .map(|(fg, a)| Filling {
                fg: fg.clone(),
                want: a.demand_bps - a.reserved_bps,
                got: 0,
                per_path: vec![0; a.per_path_bps.len()],
                active: true,
            })
            .collect();
        fill_max_min(&mut groups, paths, &mut residual);
        for g in groups {
            let a = plan.flows.get_mut(&g.fg).expect("group exists");
            a.granted_bps = a.granted_bps.saturating_add(g.got);
            for (s, v) in a.per_path_bps.iter_mut().zip(g.per_path) {
                *s = s.saturating_add(v);
            }
        }
    }
    plan.residual_bps = residual;
    plan
}

struct Filling {
    fg: FlowGroup,
    want: u64,
    got: u64,
    per_path: Vec<u64>,
    active: bool,
}

/// Progressive filling: all active groups grow at the same pace on their first unsaturated
/// path until a link saturates or a group's demand is met, event by event. Each round
/// saturates a link or satisfies a group, so it ends after at most links + groups rounds
/// (plus rounds that only move groups to their next path, each also caused by a saturation).
fn fill_max_min(
    groups: &mut [Filling],
    paths: &DestinationPaths,
    residual: &mut BTreeMap<LinkId, u64>,
) {
    let no_paths = Vec::new();
    // Links with fewer bit/s left than users: they cannot give each one more, so they count
    // as full (the few bit/s stay in `residual`, which remains exact).
    let mut full: std::collections::BTreeSet<LinkId> = std::collections::BTreeSet::new();
    loop {
        let mut users: BTreeMap<LinkId, u64> = BTreeMap::new();
        let mut current: Vec<Option<usize>> = Vec::with_capacity(groups.len());
        for g in groups.iter_mut() {
            let choice = if g.active {
                paths
                    .get(&g.fg.0)
                    .unwrap_or(&no_paths)
                    .iter()
                    .position(|p| {
                        !p.is_empty()
                            && p.iter().all(|l| {
                                residual.get(l).copied().unwrap_or(0) > 0 && !full.contains(l)
                            })
                    })
            } else {
                None
            };
            if choice.is_none() {
                g.active = false;
            }
            if let Some(i) = choice {
                for l in &paths[&g.fg.0][i] {
                    *users.entry(*l).or_default() += 1;
                }
            }
            current.push(choice);
        }
        if groups.iter().all(|g| !g.active) {
            return;
        }
        let link_step = users
            .iter()
            .map(|(l, n)| residual[l] / n)
            .min()
            .unwrap_or(u64::MAX);
        let group_step = groups
            .iter()
            .filter(|g| g.active)
            .map(|g| g.want - g.got)
            .min()
            .unwrap_or(u64::MAX);
        let step = link_step.min(group_step);
        if step == 0 {
            full.extend(
                users
                    .iter()
                    .filter(|(l, n)| residual[*l] < **n)
                    .map(|(l, _)| *l),
            );
            continue;
        }
        for (g, choice) in groups.iter_mut().zip(&current) {
            let Some(i) = *choice else { continue };
            g.got += step;
            g.per_path[i] += step;
            for l in &paths[&g.fg.0][i] {
                *residual.get_mut(l).expect("path links have capacity") -= step;
            }
            if g.got == g.want {
                g.active = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: u64 = 1_000_000;

    fn fg(d: &str, c: QosClass) -> FlowGroup {
        (d.to_owned(), c)
    }

    #[test]
    fn a_class_never_takes_capacity_from_a_higher_class_demand() {
        let cap: BTreeMap<LinkId, u64> = [(LinkId(1), 800 * M)].into();
        let paths: DestinationPaths = [("us".to_owned(), vec![vec![LinkId(1)]])].into();
        let demands: BTreeMap<FlowGroup, u64> = [
            (fg("us", QosClass::Critical), 500 * M),
            (fg("us", QosClass::Interactive), 500 * M),
            (fg("us", QosClass::Bulk), 500 * M),
        ]
        .into();
        let plan = solve(&cap, &paths, &demands, &[]);
        assert_eq!(
            plan.flows[&fg("us", QosClass::Critical)].granted_bps,
            500 * M
        );
        assert_eq!(
            plan.flows[&fg("us", QosClass::Interactive)].granted_bps,
            300 * M
        );
        assert_eq!(plan.flows[&fg("us", QosClass::Bulk)].granted_bps, 0);
        assert_eq!(plan.residual_bps[&LinkId(1)], 0);
    }

    #[test]
    fn max_min_within_a_class_and_spill_to_the_next_path() {
        // eu and ap both prefer link 1 (100M); ap has a second path over link 2 (100M).
        let cap: BTreeMap<LinkId, u64> = [(LinkId(1), 100 * M), (LinkId(2), 100 * M)].into();
        let paths: DestinationPaths = [
            ("eu".to_owned(), vec![vec![LinkId(1)]]),
            ("ap".to_owned(), vec![vec![LinkId(1)], vec![LinkId(2)]]),
        ]
        .into();
        let demands: BTreeMap<FlowGroup, u64> = [
            (fg("eu", QosClass::Bulk), 80 * M),
            (fg("ap", QosClass::Bulk), 120 * M),
        ]
        .into();
        let plan = solve(&cap, &paths, &demands, &[]);
        let eu = &plan.flows[&fg("eu", QosClass::Bulk)];
        let ap = &plan.flows[&fg("ap", QosClass::Bulk)];
        // Both grow to 50M on link 1, which saturates; ap moves on to link 2 for the rest.
        assert_eq!(eu.granted_bps, 50 * M);
        assert_eq!(ap.granted_bps, 120 * M);
        assert_eq!(ap.per_path_bps, vec![50 * M, 70 * M]);
        assert_eq!(plan.per_path_bps("ap", 2), vec![50 * M, 70 * M]);
    }

    #[test]
    fn reservations_are_honoured_before_any_class() {
        let cap: BTreeMap<LinkId, u64> = [(LinkId(1), 100 * M), (LinkId(2), 100 * M)].into();
        let paths: DestinationPaths =
            [("us".to_owned(), vec![vec![LinkId(1)], vec![LinkId(2)]])].into();
        let demands: BTreeMap<FlowGroup, u64> = [
            (fg("us", QosClass::Critical), 150 * M),
            (fg("us", QosClass::Bulk), 100 * M),
        ]
        .into();
        let pinned = [
            // Our bulk reservation on the second path, and someone else's on link 1.
            Pinned {
                flow: Some(fg("us", QosClass::Bulk)),
                path: vec![LinkId(2)],
                rate_bps: 30 * M,
            },
            Pinned {
                flow: None,
                path: vec![LinkId(1)],
                rate_bps: 40 * M,
            },
        ];
        let plan = solve(&cap, &paths, &demands, &pinned);
        let critical = &plan.flows[&fg("us", QosClass::Critical)];
        let bulk = &plan.flows[&fg("us", QosClass::Bulk)];
        assert_eq!(critical.per_path_bps, vec![60 * M, 70 * M]);
        assert_eq!((bulk.reserved_bps, bulk.granted_bps), (30 * M, 30 * M));
        assert_eq!(plan.residual_on(&[LinkId(1)]), 0);
    }

    // ---- properties against brute-force oracles ----

    #[derive(Clone, Debug)]
    struct Case {
        capacity: Vec<u64>,
        // Per group: class, demand, path (single path: link indexes).
        groups: Vec<(u8, u64, Vec<usize>)>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            proptest::collection::vec(1u64..=1000, 1..=4),
            proptest::collection::vec(
                (
                    0u8..5,
                    0u64..=800,
                    proptest::collection::btree_set(0usize..4, 1..=3),
                ),
                1..=6,
            ),
        )
            .prop_map(|(capacity, groups)| {
                let n = capacity.len();
                let groups = groups
                    .into_iter()
                    .map(|(c, d, links)| {
                        let path: Vec<usize> = links
                            .into_iter()
                            .map(|l| l % n)
                            .collect::<std::collections::BTreeSet<_>>()
                            .into_iter()
                            .collect();
                        (c, d, path)
                    })
                    .collect();
                Case { capacity, groups }
            })
    }

    fn build(
        case: &Case,
    ) -> (
        BTreeMap<LinkId, u64>,
        DestinationPaths,
        BTreeMap<FlowGroup, u64>,
    ) {
        let cap = case
            .capacity
            .iter()
            .enumerate()
            .map(|(i, &c)| (LinkId(i as u32), c))
            .collect();
        let mut paths = BTreeMap::new();
        let mut demands = BTreeMap::new();
        for (i, (c, d, p)) in case.groups.iter().enumerate() {
            let name = format!("d{i}");
            paths.insert(
                name.clone(),
                vec![p.iter().map(|&l| LinkId(l as u32)).collect()],
            );
            demands.insert((name, QosClass::from_id(*c).unwrap()), *d);
        }
        (cap, paths, demands)
    }

    proptest! {
        /// Single-path groups: the allocation is feasible, never above demand, and max-min
        /// fair within each class by the bottleneck characterisation: every group short of its
        /// demand crosses a link that is full (up to the rounding of one bit/s per user) and
        /// on which no group of its class got more than it did.
        #[test]
        fn allocation_is_feasible_and_max_min_fair_per_class(case in case()) {
            let (cap, paths, demands) = build(&case);
            let plan = solve(&cap, &paths, &demands, &[]);
            let groups = demands.len() as u64;
            let mut load: BTreeMap<LinkId, u64> = BTreeMap::new();
            for (fg, a) in &plan.flows {
                prop_assert!(a.granted_bps <= a.demand_bps);
                for l in &paths[&fg.0][0] {
                    *load.entry(*l).or_default() += a.granted_bps;
                }
            }
            for (l, c) in &cap {
                prop_assert!(load.get(l).copied().unwrap_or(0) <= *c);
                prop_assert_eq!(plan.residual_bps[l], c - load.get(l).copied().unwrap_or(0));
            }
            for (fg, a) in &plan.flows {
                if a.granted_bps == a.demand_bps {
                    continue;
                }
                let bottleneck = paths[&fg.0][0].iter().any(|l| {
                    // Full for this class: what lower classes hold there does not count.
                    let lower: u64 = plan.flows.iter()
                        .filter(|(g, _)| g.1 > fg.1 && paths[&g.0][0].contains(l))
                        .map(|(_, b)| b.granted_bps).sum();
                    let full = plan.residual_bps[l] + lower < groups;
                    let top = plan.flows.iter()
                        .filter(|(g, _)| g.1 == fg.1 && paths[&g.0][0].contains(l))
                        .all(|(_, b)| b.granted_bps <= a.granted_bps);
                    full && top
                });
                prop_assert!(bottleneck, "{fg:?} has no bottleneck: {plan:?}");
            }
        }

        /// Strict priority: what a class gets does not depend on any lower class's demand.
        #[test]
        fn lower_classes_never_change_a_higher_class_allocation(case in case(), cut in 0u8..5) {
            let (cap, paths, demands) = build(&case);
            let full = solve(&cap, &paths, &demands, &[]);
            let higher: BTreeMap<FlowGroup, u64> =
                demands.iter().filter(|(fg, _)| (fg.1 as u8) <= cut).map(|(k, v)| (k.clone(), *v)).collect();
            let alone = solve(&cap, &paths, &higher, &[]);
            for fg in higher.keys() {
                prop_assert_eq!(&full.flows[fg], &alone.flows[fg]);
            }
        }
    }
}
