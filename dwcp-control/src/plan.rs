//! From routes to the fast path's maps: each remote region's route set becomes one next-hop
//! group (the first links of its primary/ECMP paths weighted by the traffic engineer, plus
//! the secondaries' first links as standby members) and one route per LAN prefix of the
//! region; the links this gateway terminates become next hops, neighbours, link settings and
//! VNIs.
//!
//! Pure: the same inputs give the same maps, on every gateway and every restart.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use dwcp_common::{
    probe::PROBE_TTL, ClassifierRule, GatewayConfig, LanPort, LinkConfig, Neighbour, NextHop,
    NextHopTable, QosPolicy, Route, VniEntry, CONFIG_F_READY, LINK_F_ADMIN_DOWN, NH_F_VALID,
    QOS_F_REWRITE,
};

use crate::{
    bandwidth::Reservation,
    config::{AgentConfig, Mac},
    forwarding::{ForwardingState, NeighKey, PolicerSlot, PolicerSpec},
    liveness::MonitorConfig,
    nhg_table::{build_table, Member},
    routing::{Path, RouteSet},
    topology::{RegionId, Topology},
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

/// The group members of a destination: active paths' first links with their summed weights
/// (several paths may leave on the same link), then the standby paths' first links with
/// weight 0. Only links this gateway terminates can be members.
pub fn members(
    active: &[(Path, u32)],
    standby: &[Path],
    local: &BTreeSet<u32>,
    standby_supported: bool,
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
            None => out.push(Member {
                nexthop: first.0,
                weight: *w,
            }),
        }
    }
    // Traffic must go somewhere while any member exists: if the engineer gave every active
    // path 0 (no bandwidth anywhere), split equally.
    if !out.is_empty() && out.iter().all(|m| m.weight == 0) {
        out.iter_mut().for_each(|m| m.weight = 1);
    }
    if standby_supported {
        for p in standby {
            if let Some(first) = p.first_link() {
                if local.contains(&first.0) && !out.iter().any(|m| m.nexthop == first.0) {
                    out.push(Member {
                        nexthop: first.0,
                        weight: 0,
                    });
                }
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
            },
            Member {
                nexthop: 2,
                weight: 0,
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
        ..base
    }
}

/// The per-gateway part of the maps: next hops, neighbours, link settings, VNIs, ports,
/// classifier, QoS and the global config. Groups and routes are added by [`add_routes`].
pub fn base_state(
    config: &AgentConfig,
    interfaces: &BTreeMap<String, InterfaceState>,
    neighbours: &BTreeMap<NeighKey, Mac>,
    admin_down: &BTreeSet<u32>,
) -> ForwardingState {
    let mut s = ForwardingState {
        config: Some(GatewayConfig {
            hash_seed: config.hash_seed,
            flags: CONFIG_F_READY,
            sample_threshold: dwcp_common::sample_threshold(config.flows.sample_every),
            ..Default::default()
        }),
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
            // WireGuard: no VNI, no neighbour; the mark takes the packet to the device.
            if lc != LinkConfig::default() {
                s.links.insert(l.link_id, lc);
            }
            if let Some(iface) = iface {
                s.nexthops.insert(
                    l.link_id,
                    NextHop::handoff(l.link_id, iface.ifindex, h.fwmark),
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
    use crate::topology::LinkId;

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

    #[test]
    fn members_sum_shared_first_links_and_keep_standby_last() {
        let local: BTreeSet<u32> = [1, 2, 3].into();
        let m = members(
            &[(path(&[1, 7]), 2), (path(&[1, 8]), 3), (path(&[2]), 5)],
            &[path(&[3, 9]), path(&[1, 9])],
            &local,
            true,
        );
        assert_eq!(
            m,
            vec![
                Member {
                    nexthop: 1,
                    weight: 5
                },
                Member {
                    nexthop: 2,
                    weight: 5
                },
                Member {
                    nexthop: 3,
                    weight: 0
                },
            ]
        );
        // Without standby support the backups are left out.
        let m = members(&[(path(&[1]), 1)], &[path(&[3])], &local, false);
        assert_eq!(m.len(), 1);
        // A first link another gateway terminates is no member.
        let m = members(&[(path(&[4]), 1)], &[], &local, true);
        assert!(m.is_empty());
    }

    #[test]
    fn all_zero_weights_split_equally() {
        let local: BTreeSet<u32> = [1, 2].into();
        let m = members(&[(path(&[1]), 0), (path(&[2]), 0)], &[], &local, false);
        assert!(m.iter().all(|m| m.weight == 1), "{m:?}");
    }
}
