//! From routes to the fast path's maps: each remote region's route set becomes one next-hop
//! group (the first links of its primary/ECMP paths weighted by the traffic engineer, plus
//! the secondaries' first links as standby members, each member with its whole path and the
//! source route its packets carry) and one route per LAN prefix of the region; the links this
//! gateway terminates become next hops, neighbours, link settings, VNIs and transit exits.
//!
//! Pure: the same inputs give the same maps, on every gateway and every restart.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use dwcp_common::{
    probe::{ProbeKey, PROBE_TTL},
    ClassifierRule, GatewayConfig, LanPort, LinkConfig, LinksDown, MemberPath, Neighbour, NextHop,
    NextHopTable, QosPolicy, Route, VniEntry, CONFIG_F_READY, LINK_F_ADMIN_DOWN, LINK_F_AUTH,
    MAX_PATH_LINKS, NH_F_VALID, QOS_F_REWRITE,
};
use thiserror::Error;

use crate::{
    bandwidth::Reservation,
    config::{AgentConfig, Mac},
    forwarding::{ForwardingState, NeighKey, PolicerSlot, PolicerSpec},
    liveness::MonitorConfig,
    nhg_table::{build_table, Member},
    routing::{Path, RouteSet},
    topology::{LinkId, RegionId, Topology},
    traffic::policing::reservation_policer,
    view::PathRole,
};

/// The members each group table was built from, by group id.
pub type GroupMembers = BTreeMap<u32, Vec<Member>>;

/// A destination whose group could not be built, and why.
pub type GroupProblem = (String, String);

/// Paths of one destination a group is split over (the traffic engineer's limit).
pub const MAX_ACTIVE_PATHS: usize = crate::traffic::MAX_PATHS;

/// An interface as netlink reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceState {
    pub ifindex: u32,
    pub up: bool,
    pub mac: Mac,
    pub mtu: Option<u32>,
}

/// How one path of a destination is used.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedPath {
    pub path: Path,
    pub role: PathRole,
    /// Integer weight of the path (0 = standby).
    pub weight: u32,
}

/// The route to one destination region as it will be programmed.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationPlan {
    pub destination: String,
    pub region: RegionId,
    pub group_id: u32,
    pub paths: Vec<PlannedPath>,
    /// Group members: next hop (= local link id) and weight (0 = standby).
    pub members: Vec<Member>,
    /// Why there is no group (unreachable, no local first hop...).
    pub error: Option<String>,
}

impl DestinationPlan {
    /// The paths as link lists, in role order (what the history shows).
    pub fn link_lists(&self) -> Vec<Vec<u32>> {
        self.paths
            .iter()
            .map(|p| p.path.links.iter().map(|l| l.0).collect())
            .collect()
    }

    /// The weight of each path (0 = standby).
    pub fn weights(&self) -> Vec<u32> {
        self.paths.iter().map(|p| p.weight).collect()
    }
}

/// Group id of a destination region: fixed by its position in the topology.
pub fn group_id(region: RegionId) -> u32 {
    region.0 + 1
}

/// Active (primary + ECMP) and standby (secondary) paths of a route set.
pub fn split_paths(routes: &RouteSet, ecmp: bool) -> (Vec<Path>, Vec<Path>) {
    let active: Vec<Path> = if ecmp {
        routes.ecmp.iter().take(MAX_ACTIVE_PATHS).cloned().collect()
    } else {
        vec![routes.primary.clone()]
    };
    let standby = routes
        .secondaries
        .iter()
        .map(|s| s.path.clone())
        .filter(|p| !active.contains(p))
        .collect();
    (active, standby)
}

/// Why a path cannot be a group member's.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("a path of {0} links: a source route names at most {MAX_PATH_LINKS}")]
    TooLong(usize),
    #[error("link {0} has no exit number at its region (more than 255 links there?)")]
    NoExit(u32),
    #[error("link id {0} is past the fast path's link table")]
    LinkId(u32),
}

/// A path as a group member carries it: its links, and the source route (the exit number of
/// each next link at the region where the previous one ends).
pub fn member_path(topology: &Topology, path: &Path) -> Result<MemberPath, PathError> {
    let n = path.links.len();
    if n > MAX_PATH_LINKS {
        return Err(PathError::TooLong(n));
    }
    let mut m = MemberPath {
        link_count: n as u8,
        ..Default::default()
    };
    for (i, l) in path.links.iter().enumerate() {
        if l.0 >= dwcp_common::MAX_LINKS {
            return Err(PathError::LinkId(l.0));
        }
        m.links[i] = l.0 as u16;
        if i == 0 {
            m.links = [l.0 as u16; MAX_PATH_LINKS];
        } else {
            m.route[i - 1] = topology
                .exit_number(path.regions[i], *l)
                .ok_or(PathError::NoExit(l.0))?;
        }
    }
    Ok(m)
}

/// The group members of a destination: active paths' first links with their summed weights
/// (several paths may leave on the same link; the member follows the first of them), then
/// the standby paths' first links with weight 0. Only links this gateway terminates can be
/// members, and only paths `path_of` can source-route.
pub fn members(
    active: &[(Path, u32)],
    standby: &[Path],
    local: &BTreeSet<u32>,
    standby_supported: bool,
    path_of: &dyn Fn(&Path) -> Option<MemberPath>,
) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::new();
    for (p, w) in active {
        let Some(first) = p.first_link() else {
            continue;
        };
        if !local.contains(&first.0) {
            continue;
        }
        match out.iter_mut().find(|m| m.nexthop == first.0) {
            Some(m) => m.weight += w,
            None => {
                let Some(path) = path_of(p) else {
                    continue;
                };
                out.push(Member {
                    nexthop: first.0,
                    weight: *w,
                    path,
                })
            }
        }
    }
    // Traffic must go somewhere while any member exists: if the engineer gave every active
    // path 0 (no bandwidth anywhere), split equally.
    if !out.is_empty() && out.iter().all(|m| m.weight == 0) {
        out.iter_mut().for_each(|m| m.weight = 1);
    }
    if standby_supported {
        for p in standby {
            let Some(first) = p.first_link() else {
                continue;
            };
            if !local.contains(&first.0) || out.iter().any(|m| m.nexthop == first.0) {
                continue;
            }
            if let Some(path) = path_of(p) {
                out.push(Member {
                    nexthop: first.0,
                    weight: 0,
                    path,
                });
            }
        }
    } else {
        out.retain(|m| m.weight > 0);
    }
    out.truncate(dwcp_common::MAX_GROUP_MEMBERS);
    out
}

/// Whether the loaded fast path takes standby members (weight 0). Asked of the table
/// builder itself, so the agent follows the dataplane it is built with.
pub fn standby_supported() -> bool {
    build_table(
        &[
            Member {
                nexthop: 1,
                weight: 1,
                path: Default::default(),
            },
            Member {
                nexthop: 2,
                weight: 0,
                path: Default::default(),
            },
        ],
        None,
    )
    .is_ok()
}

/// A peer's probe requests are reflected at up to this many times our own probe rate: both
/// ends normally probe at the same interval, and the margin absorbs their jitter.
pub const REFLECT_RATE_FACTOR: u32 = 4;
/// Probe requests of a peer reflected back to back before the rate applies.
pub const REFLECT_BURST: u32 = 8;

/// Where a VXLAN link's packets come from: what the underlay program checks them against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkEnds {
    pub local: Ipv4Addr,
    pub peer: Ipv4Addr,
    /// The neighbour the link's packets are sent to: the peer, or a router in between.
    pub via: Ipv4Addr,
    /// The key both ends share (`auth_key_file`): probes carry a MAC under it.
    pub auth: Option<ProbeKey>,
    /// The underlay interface.
    pub ifindex: u32,
}

/// `base` (the link's liveness settings) with the link's underlay identity: its packets come
/// from `ends.peer` on `ends.ifindex`, probes arrive with TTL 255 when the peer is a neighbour
/// (GTSM, RFC 5881; across routers the TTL is not checked), and the peer's requests are
/// reflected at up to [`REFLECT_RATE_FACTOR`] times the probe rate of `monitor`.
pub fn with_link_ends(base: LinkConfig, ends: LinkEnds, monitor: &MonitorConfig) -> LinkConfig {
    let gap = monitor.interval.as_nanos() / REFLECT_RATE_FACTOR as u128;
    LinkConfig {
        peer_ip4: ends.peer.octets(),
        local_ip4: ends.local.octets(),
        ifindex: ends.ifindex,
        probe_min_ttl: if ends.via == ends.peer { PROBE_TTL } else { 0 },
        reflect_gap_ns: gap.clamp(1, u32::MAX as u128) as u32,
        reflect_burst: REFLECT_BURST,
        flags: match ends.auth {
            Some(_) => base.flags | LINK_F_AUTH,
            None => base.flags & !LINK_F_AUTH,
        },
        auth_key: ends.auth.unwrap_or_default(),
        ..base
    }
}

/// The per-gateway part of the maps: next hops, neighbours, link settings, VNIs, ports,
/// classifier, QoS and the global config. Groups and routes are added by [`add_routes`].
pub fn base_state(
    config: &AgentConfig,
    topology: &Topology,
    interfaces: &BTreeMap<String, InterfaceState>,
    neighbours: &BTreeMap<NeighKey, Mac>,
    links_down: LinksDown,
    admin_down: &BTreeSet<u32>,
) -> ForwardingState {
    let region = topology.region_by_name(&config.region).map(|r| r.id);
    let mut s = ForwardingState {
        config: Some(GatewayConfig {
            hash_seed: config.hash_seed,
            flags: CONFIG_F_READY,
            sample_threshold: dwcp_common::sample_threshold(config.flows.sample_every),
            ..Default::default()
        }),
        links_down,
        ..Default::default()
    };
    for name in &config.lan_interfaces {
        if let Some(i) = interfaces.get(name) {
            s.ports.insert(i.ifindex);
            s.lan_ports.insert(
                i.ifindex,
                LanPort {
                    mac: i.mac.0,
                    _pad: [0; 2],
                },
            );
        }
    }
    for l in &config.local_links {
        let mut lc = if l.monitored {
            config.monitor.link_config()
        } else {
            LinkConfig::default()
        };
        if admin_down.contains(&l.link_id) {
            lc.flags |= LINK_F_ADMIN_DOWN;
        }
        let iface = interfaces.get(&l.interface);
        if let Some(h) = &l.handoff {
            // WireGuard: no VNI, no neighbour; the mark takes the packet to the device. A
            // monitored link's probes travel inside the tunnel, between the tunnel addresses,
            // directly connected (TTL 255) on the WireGuard device.
            if l.monitored {
                let ends = LinkEnds {
                    local: l.local_ip,
                    peer: l.peer_ip,
                    via: l.peer_ip,
                    ifindex: iface.map_or(0, |i| i.ifindex),
                    auth: l.auth_key,
                };
                s.links
                    .insert(l.link_id, with_link_ends(lc, ends, &config.monitor));
            } else if lc != LinkConfig::default() {
                s.links.insert(l.link_id, lc);
            }
            if let Some(iface) = iface {
                s.nexthops.insert(
                    l.link_id,
                    NextHop::handoff(l.link_id, iface.ifindex, h.fwmark)
                        .with_ends(l.local_ip.octets(), l.peer_ip.octets()),
                );
            }
            continue;
        }
        // Until its interface exists, the link's packets match no interface and are dropped.
        let ends = LinkEnds {
            local: l.local_ip,
            peer: l.peer_ip,
            via: l.via_ip,
            ifindex: iface.map_or(0, |i| i.ifindex),
            auth: l.auth_key,
        };
        s.links
            .insert(l.link_id, with_link_ends(lc, ends, &config.monitor));
        s.vnis.insert(
            l.vni,
            VniEntry {
                link_id: l.link_id,
                flags: 0,
            },
        );
        let Some(iface) = iface else {
            continue;
        };
        if let Some(exit) = region.and_then(|r| topology.exit_number(r, LinkId(l.link_id))) {
            s.transit_exits.insert(exit as u32, l.link_id);
        }
        s.ports.insert(iface.ifindex);
        s.nexthops.insert(
            l.link_id,
            NextHop {
                flags: NH_F_VALID,
                link_id: l.link_id,
                ifindex: iface.ifindex,
                vni: l.vni,
                local_ip4: l.local_ip.octets(),
                remote_ip4: l.peer_ip.octets(),
                via_ip4: l.via_ip.octets(),
                mtu: l.mtu.or(iface.mtu).unwrap_or(1500),
                inner_dst_mac: l.inner_dst_mac,
                _pad: [0; 2],
            },
        );
        let key = (iface.ifindex, l.via_ip.octets());
        if let Some(mac) = neighbours.get(&key) {
            s.neighbours.insert(
                key,
                Neighbour {
                    mac: mac.0,
                    if_mac: iface.mac.0,
                    _pad: [0; 4],
                },
            );
        }
    }
    for r in &config.qos_rules {
        s.classifier.insert(
            (r.proto, r.direction, r.port),
            ClassifierRule {
                class: r.class as u8,
                _pad: [0; 3],
            },
        );
    }
    for (class, dscp) in config.dscp.iter().enumerate() {
        s.qos.insert(
            class as u8,
            QosPolicy {
                dscp: *dscp,
                flags: if config.rewrite_dscp {
                    QOS_F_REWRITE
                } else {
                    0
                },
                _pad: [0; 6],
            },
        );
    }
    s
}

/// In TE mode, a policer for each flow group TE granted less than its demand (see
/// `traffic::policing::flow_group_policers`), unless a reservation already polices that
/// (group, class): the reservation's bucket is the one that holds.
pub fn te_policers(
    config: &AgentConfig,
    plans: &[DestinationPlan],
    te: &crate::traffic::TePlan,
    policers: &mut BTreeMap<PolicerSlot, PolicerSpec>,
) {
    for ((dest, class), bucket) in
        crate::traffic::policing::flow_group_policers(te, &config.policing)
    {
        let Some(group) = planned_group(plans, &dest) else {
            continue;
        };
        policers.entry((group, class as u8)).or_insert(PolicerSpec {
            rate_bytes_per_s: bucket.rate_bps / 8,
            burst_bytes: bucket.burst_bytes,
            action: bucket.over_rate.police_action(),
        });
    }
}

/// The next-hop group of `destination`, if it was planned without error.
fn planned_group(plans: &[DestinationPlan], destination: &str) -> Option<u32> {
    plans
        .iter()
        .find(|p| p.destination == destination && p.error.is_none())
        .map(|p| p.group_id)
}

/// The token buckets that enforce the active reservations starting in this gateway's region:
/// one per (destination group, class), holding the sum of the reservations' rates and
/// bursts (several reservations of a class to one destination share the fast path's key).
/// A reservation towards a destination without a group has nothing to police here.
pub fn reservation_policers(
    config: &AgentConfig,
    plans: &[DestinationPlan],
    reservations: &[Reservation],
) -> BTreeMap<PolicerSlot, PolicerSpec> {
    let mut out: BTreeMap<PolicerSlot, PolicerSpec> = BTreeMap::new();
    for r in reservations.iter().filter(|r| r.source == config.region) {
        let Some(group) = planned_group(plans, &r.destination) else {
            continue;
        };
        let bucket = reservation_policer(r, &config.policing);
        let spec = out.entry((group, r.class as u8)).or_default();
        spec.rate_bytes_per_s = spec.rate_bytes_per_s.saturating_add(bucket.rate_bps / 8);
        spec.burst_bytes = spec.burst_bytes.saturating_add(bucket.burst_bytes);
        spec.action = bucket.over_rate.police_action();
    }
    out
}

/// Adds each planned destination's group (built from the table in force, so weight changes
/// move only the flows they must) and its prefixes' routes. A member whose next hop is not
/// programmed (interface missing) is left out. `built_from` holds the members each table in
/// force was built from: an unchanged group keeps its table without a rebuild. Returns the
/// problems and the members of every group now planned.
pub fn add_routes(
    state: &mut ForwardingState,
    config: &AgentConfig,
    plans: &[DestinationPlan],
    in_force: &BTreeMap<u32, NextHopTable>,
    built_from: &GroupMembers,
) -> (Vec<GroupProblem>, GroupMembers) {
    let mut problems = Vec::new();
    let mut built = BTreeMap::new();
    for plan in plans {
        let members: Vec<Member> = plan
            .members
            .iter()
            .copied()
            .filter(|m| state.nexthops.contains_key(&m.nexthop))
            .collect();
        if members.is_empty() || plan.error.is_some() {
            continue;
        }
        let previous = in_force.get(&plan.group_id);
        let table = match previous {
            // Same members and weights: the same table (the build is deterministic from it).
            Some(t) if built_from.get(&plan.group_id) == Some(&members) => *t,
            _ => match build_table(&members, previous) {
                Ok(t) => t,
                Err(e) => {
                    problems.push((plan.destination.clone(), e.to_string()));
                    continue;
                }
            },
        };
        state.groups.insert(plan.group_id, table);
        built.insert(plan.group_id, members);
        if let Some(p) = config.prefixes.get(&plan.destination) {
            for prefix in &p.prefixes {
                state.routes.insert(
                    *prefix,
                    Route {
                        group_id: plan.group_id,
                        default_class: p.class as u8,
                        _pad: [0; 3],
                    },
                );
            }
        }
    }
    (problems, built)
}

/// Region names along a path, for views and reasons.
pub fn region_names(topology: &Topology, path: &Path) -> Vec<String> {
    path.regions
        .iter()
        .map(|r| {
            topology
                .region(*r)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| format!("#{}", r.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::synthetic::{generate, SyntheticSpec};

    fn path(links: &[u32]) -> Path {
        Path {
            regions: (0..=links.len() as u32).map(RegionId).collect(),
            links: links.iter().map(|&l| LinkId(l)).collect(),
            latency_ms: 1.0,
            cost_per_gb: 0.0,
            bottleneck_mbps: 1.0,
            loss: 0.0,
        }
    }

    fn any(_: &Path) -> Option<MemberPath> {
        Some(MemberPath::default())
    }

    /// A link's shared key and its flag go into `LINK_CONFIG` together, and leave together;
    /// the liveness flags stay as they were.
    #[test]
    fn link_ends_carry_the_shared_key_and_its_flag() {
        let ends = LinkEnds {
            local: Ipv4Addr::new(192, 0, 2, 1),
            peer: Ipv4Addr::new(192, 0, 2, 2),
            via: Ipv4Addr::new(192, 0, 2, 2),
            ifindex: 3,
            auth: Some(ProbeKey { k0: 5, k1: 6 }),
        };
        let monitor = MonitorConfig::default();
        let base = LinkConfig {
            flags: LINK_F_ADMIN_DOWN,
            ..Default::default()
        };
        let keyed = with_link_ends(base, ends, &monitor);
        assert_eq!(keyed.flags, LINK_F_ADMIN_DOWN | LINK_F_AUTH);
        assert_eq!(keyed.auth_key, ProbeKey { k0: 5, k1: 6 });
        let unkeyed = with_link_ends(keyed, LinkEnds { auth: None, ..ends }, &monitor);
        assert_eq!(unkeyed.flags, LINK_F_ADMIN_DOWN);
        assert_eq!(unkeyed.auth_key, ProbeKey::default());
    }

    #[test]
    fn members_sum_shared_first_links_and_keep_standby_last() {
        let local: BTreeSet<u32> = [1, 2, 3].into();
        let m = members(
            &[(path(&[1, 7]), 2), (path(&[1, 8]), 3), (path(&[2]), 5)],
            &[path(&[3, 9]), path(&[1, 9])],
            &local,
            true,
            &|_| Some(MemberPath::default()),
        );
        assert_eq!(
            m,
            vec![
                Member {
                    nexthop: 1,
                    weight: 5,
                    path: Default::default(),
                },
                Member {
                    nexthop: 2,
                    weight: 5,
                    path: Default::default(),
                },
                Member {
                    nexthop: 3,
                    weight: 0,
                    path: Default::default(),
                },
            ]
        );
        // Without standby support the backups are left out.
        let m = members(&[(path(&[1]), 1)], &[path(&[3])], &local, false, &any);
        assert_eq!(m.len(), 1);
        // A first link another gateway terminates is no member.
        let m = members(&[(path(&[4]), 1)], &[], &local, true, &any);
        assert!(m.is_empty());
    }

    #[test]
    fn all_zero_weights_split_equally() {
        let local: BTreeSet<u32> = [1, 2].into();
        let m = members(
            &[(path(&[1]), 0), (path(&[2]), 0)],
            &[],
            &local,
            false,
            &any,
        );
        assert!(m.iter().all(|m| m.weight == 1), "{m:?}");
    }

    #[test]
    fn a_member_follows_the_first_path_on_its_link_and_skips_paths_it_cannot_route() {
        let local: BTreeSet<u32> = [1, 2].into();
        let only_short = |p: &Path| {
            (p.links.len() < 3).then(|| MemberPath {
                link_count: p.links.len() as u8,
                ..Default::default()
            })
        };
        let m = members(
            &[
                (path(&[1, 7]), 1),
                (path(&[1, 8, 9]), 1),
                (path(&[2, 5, 6]), 1),
            ],
            &[],
            &local,
            true,
            &only_short,
        );
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!((m[0].nexthop, m[0].weight, m[0].path.link_count), (1, 2, 2));
    }

    /// The source route names, at each region a path crosses, the exit number of the next
    /// link there: what that region's gateway finds in its `TRANSIT_EXITS`.
    #[test]
    fn member_paths_name_each_transit_exit_by_its_number_at_that_region() {
        let topology = Topology::from_config(&generate(&SyntheticSpec::new(12, 0)), None).unwrap();
        let links = topology.links();
        // A path of three links, found by walking the graph.
        let l0 = &links[0];
        let r1 = l0.b;
        let l1 = links
            .iter()
            .find(|l| l.id != l0.id && (l.a == r1 || l.b == r1))
            .unwrap();
        let r2 = l1.other_end(r1).unwrap();
        let l2 = links
            .iter()
            .find(|l| l.id != l1.id && l.id != l0.id && (l.a == r2 || l.b == r2))
            .unwrap();
        let r3 = l2.other_end(r2).unwrap();
        let p = Path {
            regions: vec![l0.a, r1, r2, r3],
            links: vec![l0.id, l1.id, l2.id],
            ..path(&[])
        };
        let m = member_path(&topology, &p).unwrap();
        assert_eq!(m.link_count, 3);
        assert_eq!(
            &m.links[..3],
            &[l0.id.0 as u16, l1.id.0 as u16, l2.id.0 as u16]
        );
        let exit_at = |r: RegionId, l: LinkId| {
            1 + topology
                .links()
                .iter()
                .filter(|x| x.a == r || x.b == r)
                .position(|x| x.id == l)
                .unwrap() as u8
        };
        assert_eq!(m.route, [exit_at(r1, l1.id), exit_at(r2, l2.id), 0, 0]);
        // Six links are more than a route can name.
        let long = Path {
            regions: vec![RegionId(0); 7],
            links: vec![l0.id; 6],
            ..path(&[])
        };
        assert_eq!(member_path(&topology, &long), Err(PathError::TooLong(6)));
    }
}
