//! Which path of each destination is active, and when that changes.
//!
//! Rules, per destination:
//! - A path is down if any of its links is down, degraded if any is degraded, healthy
//!   otherwise. Links never reported (remote links, links not yet probed) count as up.
//! - Paths are preferred healthy before degraded (unless `avoid_degraded` is off), then
//!   primary before secondaries in order.
//! - The active path going down: move at once to the most preferred live path, taking one
//!   that has been stable for the hold-down time if there is one (a path that has just come
//!   back is the last resort, not the first choice).
//! - A more preferred path than the active one (the primary coming back, a healthy path while
//!   the active is degraded): move to it once it has been in its state for the hold-down time.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Duration,
};

use crate::probe::{LinkEvent, LinkEventKind};

use super::{LinkId, PathSet, PathSpec, RedundancyError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedundancyPolicy {
    /// How long a more preferred path must be stable before traffic moves back to it.
    pub failback_hold: Duration,
    /// Prefer a healthy secondary over a degraded primary.
    pub avoid_degraded: bool,
    /// Path changes kept in the history.
    pub history_len: usize,
}

impl Default for RedundancyPolicy {
    fn default() -> Self {
        RedundancyPolicy {
            failback_hold: Duration::from_secs(5),
            avoid_degraded: true,
            history_len: 1024,
        }
    }
}

/// A link's condition as the link events report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkHealth {
    Up,
    Degraded,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathHealth {
    Healthy,
    Degraded,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRole {
    Primary,
    /// 1, 2 or 3.
    Secondary(u8),
}

impl PathRole {
    fn of_index(i: usize) -> PathRole {
        if i == 0 {
            PathRole::Primary
        } else {
            PathRole::Secondary(i as u8)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ActivePath {
    pub role: PathRole,
    pub path_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum ChangeReason {
    /// Paths were installed or replaced.
    Installed,
    /// The active path went down (`link_id`: the link whose event did it).
    ActiveDown { link_id: Option<LinkId> },
    /// A destination without a live path got one back.
    Restored,
    /// A more preferred path has been stable for `held_ns`.
    Preferred { held_ns: u64 },
}

/// A change of a destination's active path. `to: None`: no path to the destination is live.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathChange {
    pub at_ns: u64,
    pub destination: String,
    pub from: Option<ActivePath>,
    pub to: Option<ActivePath>,
    #[serde(flatten)]
    pub reason: ChangeReason,
}

#[derive(Clone, Debug)]
struct Destination {
    paths: Vec<PathSpec>,
    health: Vec<PathHealth>,
    /// When each path entered its current health.
    since_ns: Vec<u64>,
    active: Option<usize>,
}

/// The redundancy state of every destination.
#[derive(Clone, Debug)]
pub struct PathRedundancy {
    policy: RedundancyPolicy,
    links: HashMap<LinkId, LinkHealth>,
    destinations: BTreeMap<String, Destination>,
    history: VecDeque<PathChange>,
}

impl PathRedundancy {
    pub fn new(policy: RedundancyPolicy) -> PathRedundancy {
        PathRedundancy {
            policy,
            links: HashMap::new(),
            destinations: BTreeMap::new(),
            history: VecDeque::new(),
        }
    }

    /// Installs or replaces the paths of `destination`. An invalid set is refused and the
    /// destination keeps its current paths. A replaced destination keeps its active path if
    /// the new set still has it (same links) and it is live.
    pub fn set_paths(
        &mut self,
        destination: &str,
        paths: PathSet,
        now_ns: u64,
    ) -> Result<Option<PathChange>, RedundancyError> {
        paths.validate(destination)?;
        let old = self.destinations.remove(destination);
        let paths: Vec<PathSpec> = paths.iter().cloned().collect();
        let health: Vec<PathHealth> = paths.iter().map(|p| self.path_health(p)).collect();
        let mut since_ns = vec![now_ns; paths.len()];
        let mut kept_active = None;
        if let Some(old) = &old {
            for (i, p) in paths.iter().enumerate() {
                if let Some(j) = old.paths.iter().position(|q| q.links == p.links) {
                    if old.health[j] == health[i] {
                        since_ns[i] = old.since_ns[j];
                    }
                    if old.active == Some(j) && health[i] != PathHealth::Down {
                        kept_active = Some(i);
                    }
                }
            }
        }
        let from = old
            .as_ref()
            .and_then(|o| o.active.map(|a| active_path(&o.paths, a)));
        let mut dest = Destination {
            paths,
            health,
            since_ns,
            active: kept_active,
        };
        let change = match kept_active {
            Some(_) => match self.reselect(destination, &mut dest, now_ns, None) {
                Some(c) => Some(PathChange { from, ..c }),
                // Same links, but the id (the VNI) or the role may differ: say so.
                None => {
                    let to = dest.active.map(|a| active_path(&dest.paths, a));
                    (from != to).then(|| PathChange {
                        at_ns: now_ns,
                        destination: destination.to_string(),
                        from,
                        to,
                        reason: ChangeReason::Installed,
                    })
                }
            },
            None => {
                dest.active = self.choose_after_loss(&dest, now_ns);
                let to = dest.active.map(|a| active_path(&dest.paths, a));
                (from != to || old.is_none()).then(|| PathChange {
                    at_ns: now_ns,
                    destination: destination.to_string(),
                    from,
                    to,
                    reason: ChangeReason::Installed,
                })
            }
        };
        self.destinations.insert(destination.to_string(), dest);
        if let Some(c) = &change {
            self.record(c.clone());
        }
        Ok(change)
    }

    /// Forgets a destination.
    pub fn remove_destination(&mut self, destination: &str) -> Result<(), RedundancyError> {
        self.destinations
            .remove(destination)
            .map(|_| ())
            .ok_or_else(|| RedundancyError::UnknownDestination(destination.to_string()))
    }

    /// Applies a link event; returns the destinations whose active path changed.
    pub fn on_link_event(&mut self, ev: &LinkEvent) -> Vec<PathChange> {
        let health = match ev.kind {
            LinkEventKind::Down { .. } => LinkHealth::Down,
            LinkEventKind::Degraded { .. } => LinkHealth::Degraded,
            LinkEventKind::Up { .. } | LinkEventKind::Recovered { .. } => LinkHealth::Up,
        };
        self.set_link(ev.link_id, health, ev.at_ns)
    }

    /// Sets a link's health directly (e.g. from shared state of remote links).
    pub fn set_link(
        &mut self,
        link_id: LinkId,
        health: LinkHealth,
        now_ns: u64,
    ) -> Vec<PathChange> {
        self.links.insert(link_id, health);
        let mut changes = Vec::new();
        let names: Vec<String> = self
            .destinations
            .iter()
            .filter(|(_, d)| d.paths.iter().any(|p| p.links.contains(&link_id)))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let mut dest = self.destinations.remove(&name).expect("listed above");
            for (i, p) in dest.paths.iter().enumerate() {
                let h = self.path_health(p);
                if h != dest.health[i] {
                    dest.health[i] = h;
                    dest.since_ns[i] = now_ns;
                }
            }
            if let Some(c) = self.reselect(&name, &mut dest, now_ns, Some(link_id)) {
                changes.push(c);
            }
            self.destinations.insert(name, dest);
        }
        for c in &changes {
            self.record(c.clone());
        }
        changes
    }

    /// Moves destinations whose more preferred path has now been held long enough. Call it
    /// at [`PathRedundancy::next_deadline_ns`].
    pub fn tick(&mut self, now_ns: u64) -> Vec<PathChange> {
        let mut changes = Vec::new();
        let names: Vec<String> = self.destinations.keys().cloned().collect();
        for name in names {
            let mut dest = self.destinations.remove(&name).expect("listed above");
            if let Some(c) = self.reselect(&name, &mut dest, now_ns, None) {
                changes.push(c);
            }
            self.destinations.insert(name, dest);
        }
        for c in &changes {
            self.record(c.clone());
        }
        changes
    }

    /// The earliest time at which [`PathRedundancy::tick`] may move a destination.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let hold = self.hold_ns();
        self.destinations
            .values()
            .flat_map(|d| {
                let active_key = d.active.and_then(|a| self.key(d, a));
                (0..d.paths.len())
                    .filter(move |&i| match (self.key(d, i), active_key) {
                        (Some(k), Some(ak)) => k < ak,
                        _ => false,
                    })
                    .map(move |i| d.since_ns[i] + hold)
            })
            .min()
    }

    pub fn active(&self, destination: &str) -> Option<ActivePath> {
        let d = self.destinations.get(destination)?;
        d.active.map(|a| active_path(&d.paths, a))
    }

    /// The active path's spec (its links and id), for programming the fast path.
    pub fn active_spec(&self, destination: &str) -> Option<&PathSpec> {
        let d = self.destinations.get(destination)?;
        d.active.map(|a| &d.paths[a])
    }

    /// Health of every path of a destination, primary first.
    pub fn path_healths(&self, destination: &str) -> Option<Vec<(ActivePath, PathHealth)>> {
        let d = self.destinations.get(destination)?;
        Some(
            (0..d.paths.len())
                .map(|i| (active_path(&d.paths, i), d.health[i]))
                .collect(),
        )
    }

    pub fn link_health(&self, link_id: LinkId) -> Option<LinkHealth> {
        self.links.get(&link_id).copied()
    }

    /// Past path changes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &PathChange> {
        self.history.iter()
    }

    fn record(&mut self, change: PathChange) {
        if self.policy.history_len == 0 {
            return;
        }
        if self.history.len() == self.policy.history_len {
            self.history.pop_front();
        }
        self.history.push_back(change);
    }

    fn hold_ns(&self) -> u64 {
        self.policy.failback_hold.as_nanos() as u64
    }

    fn path_health(&self, p: &PathSpec) -> PathHealth {
        p.links
            .iter()
            .map(|l| match self.links.get(l) {
                None | Some(LinkHealth::Up) => PathHealth::Healthy,
                Some(LinkHealth::Degraded) => PathHealth::Degraded,
                Some(LinkHealth::Down) => PathHealth::Down,
            })
            .max()
            .unwrap_or(PathHealth::Healthy)
    }

    /// Preference of path `i` (smaller is better); `None` if it is down.
    fn key(&self, d: &Destination, i: usize) -> Option<(u8, usize)> {
        match d.health[i] {
            PathHealth::Down => None,
            PathHealth::Degraded if self.policy.avoid_degraded => Some((1, i)),
            _ => Some((0, i)),
        }
    }

    fn held(&self, d: &Destination, i: usize, now_ns: u64) -> bool {
        now_ns.saturating_sub(d.since_ns[i]) >= self.hold_ns()
    }

    /// The best live path, preferring those stable for the hold-down time.
    fn choose_after_loss(&self, d: &Destination, now_ns: u64) -> Option<usize> {
        let live = || (0..d.paths.len()).filter_map(|i| self.key(d, i).map(|k| (k, i)));
        live()
            .filter(|&(_, i)| self.held(d, i, now_ns))
            .min()
            .or_else(|| live().min())
            .map(|(_, i)| i)
    }

    fn reselect(
        &self,
        name: &str,
        d: &mut Destination,
        now_ns: u64,
        trigger: Option<LinkId>,
    ) -> Option<PathChange> {
        let from = d.active;
        let (to, reason) = match from.map(|a| self.key(d, a)) {
            None => (self.choose_after_loss(d, now_ns), ChangeReason::Restored),
            Some(None) => (
                self.choose_after_loss(d, now_ns),
                ChangeReason::ActiveDown { link_id: trigger },
            ),
            Some(Some(active_key)) => {
                let better = (0..d.paths.len())
                    .filter_map(|i| self.key(d, i).map(|k| (k, i)))
                    .filter(|&(k, i)| k < active_key && self.held(d, i, now_ns))
                    .min();
                match better {
                    Some((_, i)) => (
                        Some(i),
                        ChangeReason::Preferred {
                            held_ns: now_ns.saturating_sub(d.since_ns[i]),
                        },
                    ),
                    None => return None,
                }
            }
        };
        if to == from {
            return None;
        }
        d.active = to;
        Some(PathChange {
            at_ns: now_ns,
            destination: name.to_string(),
            from: from.map(|a| active_path(&d.paths, a)),
            to: to.map(|a| active_path(&d.paths, a)),
            reason,
        })
    }
}

fn active_path(paths: &[PathSpec], i: usize) -> ActivePath {
    ActivePath {
        role: PathRole::of_index(i),
        path_id: paths[i].path_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{DegradeReason, DownReason};
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn p(path_id: u32, links: &[LinkId]) -> PathSpec {
        PathSpec {
            path_id,
            links: links.to_vec(),
        }
    }

    /// Primary over links 1+2, secondaries over 3, 4+5 and 6.
    fn setup() -> PathRedundancy {
        let mut r = PathRedundancy::new(RedundancyPolicy::default());
        let c = r
            .set_paths(
                "eu-west",
                PathSet {
                    primary: p(100, &[1, 2]),
                    secondaries: vec![p(101, &[3]), p(102, &[4, 5]), p(103, &[6])],
                },
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(c.reason, ChangeReason::Installed);
        assert_eq!(c.to.unwrap().role, PathRole::Primary);
        r
    }

    fn ev(link_id: u32, at_ns: u64, kind: LinkEventKind) -> LinkEvent {
        LinkEvent {
            link_id,
            at_ns,
            kind,
        }
    }
    fn down(link: u32, at: u64) -> LinkEvent {
        ev(
            link,
            at,
            LinkEventKind::Down {
                reason: DownReason::NoReply {
                    silent_ns: 31_000_000,
                    detect_ns: 30_000_000,
                },
            },
        )
    }
    fn up(link: u32, at: u64) -> LinkEvent {
        ev(
            link,
            at,
            LinkEventKind::Up {
                good_streak: 5,
                outage_ns: None,
            },
        )
    }
    fn degraded(link: u32, at: u64) -> LinkEvent {
        ev(
            link,
            at,
            LinkEventKind::Degraded {
                reason: DegradeReason::Loss {
                    ratio: 0.2,
                    threshold: 0.05,
                },
            },
        )
    }

    #[test]
    fn fails_over_at_once_and_fails_back_after_the_hold_down() {
        let mut r = setup();
        let c = r.on_link_event(&down(2, 10 * S));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reason, ChangeReason::ActiveDown { link_id: Some(2) });
        assert_eq!(c[0].to.unwrap().path_id, 101);
        // Primary's links come back at 20 s: no move before 25 s.
        assert!(r.on_link_event(&up(2, 20 * S)).is_empty());
        assert_eq!(r.next_deadline_ns(), Some(25 * S));
        assert!(r.tick(25 * S - 1).is_empty());
        let c = r.tick(25 * S);
        assert_eq!(c[0].reason, ChangeReason::Preferred { held_ns: 5 * S });
        assert_eq!(c[0].to.unwrap().role, PathRole::Primary);
        assert_eq!(r.history().count(), 3);
        assert_eq!(r.next_deadline_ns(), None);
    }

    #[test]
    fn flapping_primary_never_gets_traffic_back() {
        let mut r = setup();
        r.on_link_event(&down(1, S));
        for i in 0..20 {
            let t = 2 * S + i * 2 * S;
            r.on_link_event(&up(1, t));
            assert!(r.tick(t + S).is_empty());
            r.on_link_event(&down(1, t + S + 1));
        }
        assert_eq!(r.active("eu-west").unwrap().path_id, 101);
    }

    #[test]
    fn degraded_primary_moves_to_a_healthy_secondary_and_back() {
        let mut r = setup();
        // Everything stable since 0; at 10 s the primary degrades: the secondary has been
        // healthy for 10 s, so the move is immediate.
        let c = r.on_link_event(&degraded(1, 10 * S));
        assert_eq!(c[0].to.unwrap().path_id, 101);
        assert!(matches!(c[0].reason, ChangeReason::Preferred { .. }));
        let recovered = ev(
            1,
            12 * S,
            LinkEventKind::Recovered {
                loss: Some(0.0),
                srtt_ns: 1,
            },
        );
        assert!(r.on_link_event(&recovered).is_empty());
        assert_eq!(r.tick(17 * S)[0].to.unwrap().role, PathRole::Primary);
    }

    #[test]
    fn takes_a_stable_secondary_over_one_that_just_came_back() {
        let mut r = setup();
        r.on_link_event(&down(3, S)); // secondary 1 dead
        r.on_link_event(&up(3, 9 * S)); // ... and back, not yet stable
        let c = r.on_link_event(&down(1, 10 * S));
        assert_eq!(c[0].to.unwrap().path_id, 102, "secondary 2 was stable");
        // With no stable choice the newest live path is still better than none.
        r.on_link_event(&down(4, 10 * S));
        r.on_link_event(&down(6, 10 * S));
        assert_eq!(r.active("eu-west").unwrap().path_id, 101);
    }

    #[test]
    fn all_paths_down_then_restored() {
        let mut r = setup();
        for l in [1, 3, 4, 6] {
            r.on_link_event(&down(l, S));
        }
        assert_eq!(r.active("eu-west"), None);
        let last = r.history().last().unwrap();
        assert_eq!(last.to, None);
        let c = r.on_link_event(&up(6, 2 * S));
        assert_eq!(c[0].reason, ChangeReason::Restored);
        assert_eq!(c[0].to.unwrap().role, PathRole::Secondary(3));
    }

    #[test]
    fn bad_path_set_is_refused_and_the_old_one_kept() {
        let mut r = setup();
        let e = r
            .set_paths(
                "eu-west",
                PathSet {
                    primary: p(1, &[1]),
                    secondaries: vec![p(2, &[2]), p(3, &[3]), p(4, &[4]), p(5, &[5])],
                },
                S,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "destination eu-west: 4 secondary paths, at most 3 allowed"
        );
        let e = r
            .set_paths(
                "eu-west",
                PathSet {
                    primary: p(1, &[1]),
                    secondaries: vec![p(1, &[2])],
                },
                S,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "destination eu-west: path id 1 is used twice"
        );
        assert_eq!(r.active("eu-west").unwrap().path_id, 100);
        assert_eq!(r.path_healths("eu-west").unwrap().len(), 4);
    }

    #[test]
    fn replacing_paths_keeps_a_live_active_path() {
        let mut r = setup();
        r.on_link_event(&down(1, S));
        assert_eq!(r.active("eu-west").unwrap().path_id, 101);
        // New set from the routing engine: same links for the active path, new id order.
        let c = r
            .set_paths(
                "eu-west",
                PathSet {
                    primary: p(200, &[7]),
                    secondaries: vec![p(201, &[3])],
                },
                2 * S,
            )
            .unwrap();
        // The new primary is better but not held yet: stay on link 3, now under id 201.
        let c = c.unwrap();
        assert_eq!(c.reason, ChangeReason::Installed);
        assert_eq!(c.from.unwrap().path_id, 101);
        assert_eq!(
            c.to,
            Some(ActivePath {
                role: PathRole::Secondary(1),
                path_id: 201
            })
        );
        assert_eq!(r.tick(7 * S)[0].to.unwrap().path_id, 200);
        r.remove_destination("eu-west").unwrap();
        assert_eq!(
            r.remove_destination("eu-west").unwrap_err().to_string(),
            "unknown destination eu-west"
        );
    }

    /// Reference: health of a path from the link table, and the most preferred live path.
    fn oracle_best(links: &HashMap<LinkId, LinkHealth>, paths: &[Vec<LinkId>]) -> Option<usize> {
        paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let hs: Vec<LinkHealth> = p
                    .iter()
                    .map(|l| *links.get(l).unwrap_or(&LinkHealth::Up))
                    .collect();
                if hs.contains(&LinkHealth::Down) {
                    None
                } else if hs.contains(&LinkHealth::Degraded) {
                    Some(((1, i), i))
                } else {
                    Some(((0, i), i))
                }
            })
            .min()
            .map(|(_, i)| i)
    }

    proptest! {
        /// Random link events and ticks: the active path is never down while a live path
        /// exists, a move to a more preferred path always waited the hold-down, and once
        /// things stay quiet for the hold-down the active path is the most preferred one.
        #[test]
        fn active_path_follows_the_policy(
            ops in proptest::collection::vec((0u32..7, 0u8..4, 0u64..4000), 1..80)
        ) {
            const MS: u64 = 1_000_000;
            let policy = RedundancyPolicy { failback_hold: Duration::from_secs(1), ..Default::default() };
            let mut r = PathRedundancy::new(policy);
            let paths = vec![vec![1, 2], vec![3], vec![4, 5], vec![2, 6]];
            r.set_paths("d", PathSet {
                primary: p(0, &paths[0]),
                secondaries: (1..4).map(|i| p(i as u32, &paths[i])).collect(),
            }, 0).unwrap();
            let mut links: HashMap<LinkId, LinkHealth> = HashMap::new();
            let mut now = 0;
            for (link, what, dt) in ops {
                now += dt * MS;
                let changes = match what {
                    0 => { links.insert(link, LinkHealth::Down); r.on_link_event(&down(link, now)) }
                    1 => { links.insert(link, LinkHealth::Up); r.on_link_event(&up(link, now)) }
                    2 => { links.insert(link, LinkHealth::Degraded); r.on_link_event(&degraded(link, now)) }
                    _ => r.tick(now),
                };
                for c in &changes {
                    if let ChangeReason::Preferred { held_ns } = c.reason {
                        prop_assert!(held_ns >= 1000 * MS);
                    }
                }
                let best = oracle_best(&links, &paths);
                let active = r.active("d").map(|a| a.path_id as usize);
                prop_assert_eq!(active.is_some(), best.is_some());
                if let Some(a) = active {
                    prop_assert!(paths[a].iter().all(|l| links.get(l) != Some(&LinkHealth::Down)));
                }
            }
            now += 1000 * MS;
            r.tick(now);
            prop_assert_eq!(r.active("d").map(|a| a.path_id as usize), oracle_best(&links, &paths));
            prop_assert_eq!(r.next_deadline_ns(), None);
        }
    }
}
