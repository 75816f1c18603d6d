//! The traffic engineer: keeps the latest topology, load and reservations, and turns them
//! into each destination's next-hop weights, reporting only the groups whose weights changed
//! so the updater reprograms (and atomically swaps) just those.

use std::collections::BTreeMap;

use dwcp_common::QosClass;
use serde::{Deserialize, Serialize};

use super::te::{self, FlowGroup, Pinned, TePlan};
use super::weights::{self, PathView, MAX_PATHS};
use crate::{bandwidth::Reservation, topology::LinkId};

/// How a destination's traffic is split over its paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Equal weights over the live paths.
    Ecmp,
    /// Weights proportional to each path's available bandwidth.
    #[default]
    Wecmp,
    /// Per-class demands allocated with strict priority between classes and max-min fairness
    /// within one; weights proportional to what each path was given.
    Te,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficConfig {
    pub mode: SplitMode,
    /// Share of every link kept free for bursts and for updates that move traffic (SWAN's
    /// scratch capacity). 0..=99; 20 by default.
    pub headroom_percent: u8,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            mode: SplitMode::Wecmp,
            headroom_percent: 20,
        }
    }
}

/// A link as the traffic engineer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub capacity_bps: u64,
    /// Up according to the probes (and not administratively down).
    pub live: bool,
}

/// New weights for one destination's next-hop group, one per path, in path order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupWeights {
    pub destination: String,
    pub paths: Vec<Vec<LinkId>>,
    pub weights: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrafficError {
    #[error("headroom_percent: {0} is out of range (at most 99)")]
    BadHeadroom(u8),
    #[error("destination {destination:?}: {count} paths, at most {max} allowed", max = MAX_PATHS)]
    TooManyPaths { destination: String, count: usize },
    #[error("destination {destination:?}: path {index} is empty")]
    EmptyPath { destination: String, index: usize },
    #[error("destination {destination:?}: path {index} uses unknown link {link}")]
    UnknownLink {
        destination: String,
        index: usize,
        link: LinkId,
    },
    #[error("destination {destination:?}: path {index} uses link {link} twice")]
    RepeatedLink {
        destination: String,
        index: usize,
        link: LinkId,
    },
}

#[derive(Debug)]
pub struct TrafficEngineer {
    config: TrafficConfig,
    links: BTreeMap<LinkId, LinkStatus>,
    paths: super::te::DestinationPaths,
    unsteered_bps: BTreeMap<LinkId, u64>,
    demands: BTreeMap<FlowGroup, u64>,
    pinned: Vec<Pinned>,
    programmed: BTreeMap<String, Vec<u8>>,
    plan: TePlan,
}

impl TrafficEngineer {
    pub fn new(config: TrafficConfig) -> Result<Self, TrafficError> {
        if config.headroom_percent > 99 {
            return Err(TrafficError::BadHeadroom(config.headroom_percent));
        }
        Ok(TrafficEngineer {
            config,
            links: BTreeMap::new(),
            paths: BTreeMap::new(),
            unsteered_bps: BTreeMap::new(),
            demands: BTreeMap::new(),
            pinned: Vec::new(),
            programmed: BTreeMap::new(),
            plan: TePlan::default(),
        })
    }

    pub fn config(&self) -> &TrafficConfig {
        &self.config
    }

    /// New links (capacity, liveness) and each destination's paths in preference order. On
    /// error nothing changes.
    pub fn set_topology(
        &mut self,
        links: BTreeMap<LinkId, LinkStatus>,
        paths: super::te::DestinationPaths,
    ) -> Result<Vec<GroupWeights>, TrafficError> {
        for (destination, ps) in &paths {
            if ps.len() > MAX_PATHS {
                return Err(TrafficError::TooManyPaths {
                    destination: destination.clone(),
                    count: ps.len(),
                });
            }
            for (index, p) in ps.iter().enumerate() {
                if p.is_empty() {
                    return Err(TrafficError::EmptyPath {
                        destination: destination.clone(),
                        index,
                    });
                }
                for (i, link) in p.iter().enumerate() {
                    if !links.contains_key(link) {
                        return Err(TrafficError::UnknownLink {
                            destination: destination.clone(),
                            index,
                            link: *link,
                        });
                    }
                    if p[..i].contains(link) {
                        return Err(TrafficError::RepeatedLink {
                            destination: destination.clone(),
                            index,
                            link: *link,
                        });
                    }
                }
            }
        }
        self.links = links;
        self.programmed.retain(|d, _| paths.contains_key(d));
        self.paths = paths;
        Ok(self.recompute())
    }

    /// New measurements: traffic on each link that dwcp does not steer (it only lowers what
    /// is available), and each flow group's demand (used in TE mode).
    pub fn set_load(
        &mut self,
        unsteered_bps: BTreeMap<LinkId, u64>,
        demands: BTreeMap<(String, QosClass), u64>,
    ) -> Vec<GroupWeights> {
        self.unsteered_bps = unsteered_bps;
        self.demands = demands;
        self.recompute()
    }

    /// The reservations active now. Those from `local_region` serve our own flow groups on
    /// their path; all of them take capacity.
    pub fn set_reservations<'a>(
        &mut self,
        local_region: &str,
        active: impl IntoIterator<Item = &'a Reservation>,
    ) -> Vec<GroupWeights> {
        self.pinned = active
            .into_iter()
            .map(|r| Pinned {
                flow: (r.source == local_region).then(|| (r.destination.clone(), r.class)),
                path: r.path.clone(),
                rate_bps: r.rate_bps,
            })
            .collect();
        self.recompute()
    }

    /// The weights currently wanted for `destination`.
    pub fn weights(&self, destination: &str) -> Option<&[u8]> {
        self.programmed.get(destination).map(Vec::as_slice)
    }

    /// The last TE solution (TE mode): per class granted rates, for the per-class policers
    /// and for `dwcp show te`.
    pub fn plan(&self) -> &TePlan {
        &self.plan
    }

    /// Capacity each link offers to steered traffic: usable (after headroom) less unsteered
    /// traffic; 0 for a dead link.
    fn steerable_bps(&self) -> BTreeMap<LinkId, u64> {
        self.links
            .iter()
            .filter(|(_, s)| s.live)
            .map(|(l, s)| {
                let usable = weights::usable_bps(s.capacity_bps, self.config.headroom_percent);
                (
                    *l,
                    usable.saturating_sub(self.unsteered_bps.get(l).copied().unwrap_or(0)),
                )
            })
            .collect()
    }

    fn recompute(&mut self) -> Vec<GroupWeights> {
        let steerable = self.steerable_bps();
        // Reserved bandwidth is not available to the best-effort split.
        let mut available = steerable.clone();
        for p in &self.pinned {
            for l in &p.path {
                if let Some(a) = available.get_mut(l) {
                    *a = a.saturating_sub(p.rate_bps);
                }
            }
        }
        self.plan = match self.config.mode {
            SplitMode::Te => te::solve(&steerable, &self.paths, &self.demands, &self.pinned),
            _ => TePlan::default(),
        };
        let mut changed = Vec::new();
        for (destination, paths) in &self.paths {
            let views: Vec<PathView> = paths
                .iter()
                .map(|p| weights::path_view(p, &available))
                .collect();
            let w = match self.config.mode {
                SplitMode::Ecmp => weights::ecmp_weights(&views),
                SplitMode::Wecmp => weights::wecmp_weights(&views),
                SplitMode::Te => te_weights(&self.plan, destination, paths, &views),
            };
            if self.programmed.get(destination) != Some(&w) {
                self.programmed.insert(destination.clone(), w.clone());
                changed.push(GroupWeights {
                    destination: destination.clone(),
                    paths: paths.clone(),
                    weights: w,
                });
            }
        }
        changed
    }
}

/// Weights proportional to what TE gave each path. A live path that was given nothing but
/// still has room keeps weight 1 (so new flows probe it and failover has a warm member); with
/// no allocation at all (no demand measured yet) the split falls back to WECMP.
fn te_weights(
    plan: &TePlan,
    destination: &str,
    paths: &[Vec<LinkId>],
    views: &[PathView],
) -> Vec<u8> {
    let given: Vec<u64> = plan
        .per_path_bps(destination, paths.len())
        .into_iter()
        .zip(views)
        .map(|(g, v)| if v.live { g } else { 0 })
        .collect();
    if given.iter().all(|&g| g == 0) {
        return weights::wecmp_weights(views);
    }
    let mut w = weights::proportional_weights(&given);
    for (i, p) in paths.iter().enumerate() {
        if w[i] == 0 && views[i].live && plan.residual_on(p) > 0 {
            w[i] = 1;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    fn links(caps: &[(u32, u64)]) -> BTreeMap<LinkId, LinkStatus> {
        caps.iter()
            .map(|&(l, c)| {
                (
                    LinkId(l),
                    LinkStatus {
                        capacity_bps: c,
                        live: true,
                    },
                )
            })
            .collect()
    }

    fn three_paths() -> super::te::DestinationPaths {
        [(
            "us".to_owned(),
            vec![vec![LinkId(1)], vec![LinkId(2)], vec![LinkId(3)]],
        )]
        .into()
    }

    fn reservation(path: &[u32], rate_bps: u64, source: &str) -> Reservation {
        Reservation {
            id: crate::bandwidth::ReservationId(1),
            owner: String::new(),
            source: source.into(),
            destination: "us".into(),
            class: QosClass::Bulk,
            rate_bps,
            start: 0,
            end: 10,
            priority: 3,
            path: path.iter().map(|&l| LinkId(l)).collect(),
        }
    }

    #[test]
    fn wecmp_weights_follow_capacity_reservations_and_liveness() {
        let mut te = TrafficEngineer::new(TrafficConfig::default()).unwrap();
        let caps = links(&[(1, 50 * M), (2, 100 * M), (3, 200 * M)]);
        let changed = te.set_topology(caps.clone(), three_paths()).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].weights, vec![1, 2, 4]);
        // Same input again: nothing to reprogram.
        assert!(te
            .set_topology(caps.clone(), three_paths())
            .unwrap()
            .is_empty());
        // 80M reserved on link 3 (160M usable): 80M left, like link 2.
        let r = reservation(&[3], 80 * M, "eu");
        assert_eq!(te.set_reservations("eu", [&r])[0].weights, vec![1, 2, 2]);
        // Unsteered traffic lowers what is available too.
        let changed = te.set_load([(LinkId(2), 40 * M)].into(), BTreeMap::new());
        assert_eq!(changed[0].weights, vec![1, 1, 2]);
        let mut down = caps;
        down.get_mut(&LinkId(1)).unwrap().live = false;
        assert_eq!(
            te.set_topology(down, three_paths()).unwrap()[0].weights,
            vec![0, 1, 2]
        );
    }

    #[test]
    fn reservations_from_the_manager_shift_the_weights_while_active() {
        use crate::bandwidth::{
            ManagerConfig, MemoryStore, Network, ReservationManager, ReservationRequest,
        };
        let caps = links(&[(1, 50 * M), (2, 100 * M), (3, 200 * M)]);
        let network = Network {
            regions: ["eu".to_owned(), "us".to_owned()].into(),
            link_capacity_bps: caps.iter().map(|(l, s)| (*l, s.capacity_bps)).collect(),
        };
        let (mut manager, _) = ReservationManager::open(
            Box::new(MemoryStore::default()),
            network,
            ManagerConfig::default(),
        )
        .unwrap();
        let req: ReservationRequest = serde_json::from_str(
            r#"{"owner": "db", "source": "eu", "destination": "us", "class": "critical",
                "rate": "120M", "start": 100, "end": 200, "path": [3]}"#,
        )
        .unwrap();
        manager.create(&req, 0).unwrap();
        let mut te = TrafficEngineer::new(TrafficConfig::default()).unwrap();
        assert_eq!(
            te.set_topology(caps, three_paths()).unwrap()[0].weights,
            vec![1, 2, 4]
        );
        assert!(te.set_reservations("eu", manager.active_at(99)).is_empty());
        // 160M usable on link 3 less 120M reserved: 40M, like link 1.
        assert_eq!(
            te.set_reservations("eu", manager.active_at(100))[0].weights,
            vec![1, 2, 1]
        );
        assert_eq!(manager.next_change_after(100), Some(200));
        manager.expire(200).unwrap();
        assert_eq!(
            te.set_reservations("eu", manager.active_at(200))[0].weights,
            vec![1, 2, 4]
        );
    }

    #[test]
    fn ecmp_ignores_capacity() {
        let mut te = TrafficEngineer::new(TrafficConfig {
            mode: SplitMode::Ecmp,
            ..Default::default()
        })
        .unwrap();
        let changed = te
            .set_topology(
                links(&[(1, 50 * M), (2, 100 * M), (3, 200 * M)]),
                three_paths(),
            )
            .unwrap();
        assert_eq!(changed[0].weights, vec![1, 1, 1]);
    }

    #[test]
    fn te_weights_follow_the_allocation() {
        let mut te = TrafficEngineer::new(TrafficConfig {
            mode: SplitMode::Te,
            headroom_percent: 0,
        })
        .unwrap();
        let caps = links(&[(1, 100 * M), (2, 100 * M), (3, 100 * M)]);
        // No demand known yet: WECMP.
        assert_eq!(
            te.set_topology(caps, three_paths()).unwrap()[0].weights,
            vec![1, 1, 1]
        );
        // 150M of critical fills path 1 then half of path 2; path 3 stays warm with weight 1.
        let changed = te.set_load(
            BTreeMap::new(),
            [(("us".to_owned(), QosClass::Critical), 150 * M)].into(),
        );
        assert_eq!(changed[0].weights, vec![2, 1, 1]);
        assert_eq!(
            te.plan().flows[&("us".to_owned(), QosClass::Critical)].granted_bps,
            150 * M
        );
        assert_eq!(te.weights("us"), Some(&[2, 1, 1][..]));
    }

    #[test]
    fn bad_topologies_are_refused_and_change_nothing() {
        let mut te = TrafficEngineer::new(TrafficConfig::default()).unwrap();
        te.set_topology(
            links(&[(1, M)]),
            [("us".to_owned(), vec![vec![LinkId(1)]])].into(),
        )
        .unwrap();
        let five: Vec<Vec<LinkId>> = (0..5).map(|_| vec![LinkId(1)]).collect();
        let cases = [
            (
                vec![vec![LinkId(1)]; 5],
                "destination \"us\": 5 paths, at most 4 allowed",
            ),
            (vec![vec![]], "destination \"us\": path 0 is empty"),
            (
                vec![vec![LinkId(1)], vec![LinkId(7)]],
                "destination \"us\": path 1 uses unknown link 7",
            ),
            (
                vec![vec![LinkId(1), LinkId(1)]],
                "destination \"us\": path 0 uses link 1 twice",
            ),
        ];
        assert_eq!(cases[0].0, five);
        for (paths, msg) in cases {
            let e = te
                .set_topology(links(&[(1, M)]), [("us".to_owned(), paths)].into())
                .unwrap_err();
            assert_eq!(e.to_string(), msg);
            assert_eq!(te.weights("us"), Some(&[1][..]));
        }
        assert_eq!(
            TrafficEngineer::new(TrafficConfig {
                headroom_percent: 100,
                ..Default::default()
            })
            .unwrap_err(),
            TrafficError::BadHeadroom(100)
        );
    }
}
