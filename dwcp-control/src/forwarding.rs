//! The fast path's configuration maps as one value: what the agent wants programmed
//! ([`ForwardingState`]), what is programmed (the same type, read back from the maps), and the
//! difference between the two as an ordered list of map writes ([`diff`]).
//!
//! The order of the writes is what makes an update safe for packets in flight: whatever a
//! packet can reach is written before what points at it (next hops and neighbours, then
//! group tables, then routes), and removed after (routes, then groups, then next hops). Each
//! group table is swapped whole (double-buffered slots), so a packet never sees half a table.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use dwcp_common::{
    ClassifierKey, ClassifierRule, GatewayConfig, LanPort, LinkConfig, LinksDown, Neighbour,
    NeighbourKey, NextHop, NextHopTable, Policer, QosPolicy, Route, VniEntry,
};

use crate::config::Prefix;

/// `(ifindex, IPv4)` — `NeighbourKey` as an ordered key.
pub type NeighKey = (u32, [u8; 4]);
/// `(proto, direction, port)` — `ClassifierKey` as an ordered key.
pub type ClassKey = (u8, u8, u16);

pub fn neigh_key(k: &NeighbourKey) -> NeighKey {
    (k.ifindex, k.ip4)
}

pub fn class_key(k: &ClassifierKey) -> ClassKey {
    (k.proto, k.direction, k.port)
}

/// `(group_id, class)` — `PolicerKey` as an ordered key.
pub type PolicerSlot = (u32, u8);

/// What the agent sets of a policer: the XDP program owns the bucket's fill level and its
/// counters, so only these three are compared (an unchanged policer is never rewritten,
/// which would refill its bucket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicerSpec {
    pub rate_bytes_per_s: u64,
    pub burst_bytes: u64,
    pub action: u8,
}

impl PolicerSpec {
    pub fn of(p: &Policer) -> Self {
        PolicerSpec {
            rate_bytes_per_s: p.rate_bytes_per_s,
            burst_bytes: p.burst_bytes,
            action: p.action,
        }
    }
}

/// Everything the agent programs into the fast path. Entries absent here are absent (or
/// invalid) in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardingState {
    pub config: Option<GatewayConfig>,
    /// Interfaces the fast path may redirect to.
    pub ports: BTreeSet<u32>,
    /// The LAN interfaces among them, with their MACs.
    pub lan_ports: BTreeMap<u32, LanPort>,
    pub nexthops: BTreeMap<u32, NextHop>,
    pub neighbours: BTreeMap<NeighKey, Neighbour>,
    /// Link configuration of the links we terminate.
    pub links: BTreeMap<u32, LinkConfig>,
    pub vnis: BTreeMap<u32, VniEntry>,
    pub groups: BTreeMap<u32, NextHopTable>,
    pub routes: BTreeMap<Prefix, Route>,
    pub classifier: BTreeMap<ClassKey, ClassifierRule>,
    pub qos: BTreeMap<u8, QosPolicy>,
    /// Token buckets of the active bandwidth reservations from this region.
    pub policers: BTreeMap<PolicerSlot, PolicerSpec>,
    /// Links down anywhere in the network (the records', and the operator's).
    pub links_down: LinksDown,
    /// Exit number -> link id: where transit packets' source routes leave this gateway.
    pub transit_exits: BTreeMap<u32, u32>,
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetNextHop(u32, NextHop),
    RemoveNextHop(u32),
    AddPort(u32),
    RemovePort(u32),
    SetLanPort(u32, LanPort),
    RemoveLanPort(u32),
    SetNeighbour(NeighKey, Neighbour),
    RemoveNeighbour(NeighKey),
    SetLink(u32, LinkConfig),
    RemoveLink(u32),
    SetVni(u32, VniEntry),
    RemoveVni(u32),
    SetClassifier(ClassKey, ClassifierRule),
    RemoveClassifier(ClassKey),
    SetQos(u8, QosPolicy),
    SetGroup(u32, Box<NextHopTable>),
    RemoveGroup(u32),
    SetRoute(Prefix, Route),
    RemoveRoute(Prefix),
    SetConfig(GatewayConfig),
    SetPolicer(PolicerSlot, PolicerSpec),
    RemovePolicer(PolicerSlot),
    SetLinksDown(LinksDown),
    SetTransitExit(u32, u32),
    RemoveTransitExit(u32),
}

impl Change {
    /// Short description for logs: `"route 10.2.0.0/16 -> group 3"`.
    pub fn describe(&self) -> String {
        match self {
            Change::SetNextHop(id, nh) => format!(
                "next hop {id}: link {} ifindex {} vni {}",
                nh.link_id, nh.ifindex, nh.vni
            ),
            Change::RemoveNextHop(id) => format!("remove next hop {id}"),
            Change::AddPort(i) => format!("redirect port {i}"),
            Change::RemovePort(i) => format!("remove redirect port {i}"),
            Change::SetLanPort(i, p) => format!(
                "LAN port {i}: MAC {}",
                p.mac.map(|b| format!("{b:02x}")).join(":")
            ),
            Change::RemoveLanPort(i) => format!("remove LAN port {i}"),
            Change::SetNeighbour((i, ip), _) => {
                format!("neighbour {} on {i}", std::net::Ipv4Addr::from(*ip))
            }
            Change::RemoveNeighbour((i, ip)) => {
                format!("remove neighbour {} on {i}", std::net::Ipv4Addr::from(*ip))
            }
            Change::SetLink(id, c) => format!("link {id} flags {:#x}", c.flags),
            Change::RemoveLink(id) => format!("reset link {id}"),
            Change::SetVni(v, _) => format!("vni {v}"),
            Change::RemoveVni(v) => format!("remove vni {v}"),
            Change::SetClassifier(k, r) => format!("classifier {k:?} -> class {}", r.class),
            Change::RemoveClassifier(k) => format!("remove classifier {k:?}"),
            Change::SetQos(c, p) => format!("qos class {c} dscp {}", p.dscp),
            Change::SetGroup(g, t) => format!(
                "group {g}: next hops {:?} ({} active), buckets {:?}",
                &t.nexthops[..t.member_count as usize],
                t.active_count,
                (0..t.active_count as u8)
                    .map(|m| t.buckets.iter().filter(|&&b| b == m).count())
                    .collect::<Vec<_>>()
            ),
            Change::RemoveGroup(g) => format!("remove group {g}"),
            Change::SetRoute(p, r) => format!("route {p} -> group {}", r.group_id),
            Change::RemoveRoute(p) => format!("remove route {p}"),
            Change::SetConfig(c) => format!("config flags {:#x}", c.flags),
            Change::SetPolicer((g, c), p) => format!(
                "policer group {g} class {c}: {} bytes/s, burst {} bytes, action {}",
                p.rate_bytes_per_s, p.burst_bytes, p.action
            ),
            Change::RemovePolicer((g, c)) => format!("remove policer group {g} class {c}"),
            Change::SetLinksDown(d) => format!("links down {:?}", d.links().collect::<Vec<_>>()),
            Change::SetTransitExit(e, l) => format!("transit exit {e} -> link {l}"),
            Change::RemoveTransitExit(e) => format!("remove transit exit {e}"),
        }
    }
}

fn set_then_remove<K: Ord + Copy, V: PartialEq + Clone>(
    from: &BTreeMap<K, V>,
    to: &BTreeMap<K, V>,
    set: impl Fn(K, V) -> Change,
    sets: &mut Vec<Change>,
    removes: &mut Vec<Change>,
    remove: impl Fn(K) -> Change,
) {
    for (k, v) in to {
        if from.get(k) != Some(v) {
            sets.push(set(*k, v.clone()));
        }
    }
    for k in from.keys() {
        if !to.contains_key(k) {
            removes.push(remove(*k));
        }
    }
}

/// The writes that turn `from` (programmed) into `to` (wanted), in a safe order.
pub fn diff(from: &ForwardingState, to: &ForwardingState) -> Vec<Change> {
    // Phase 1: what others point at, and settings. Phase 2: groups. Phase 3: routes.
    // Phase 4: removals, in the reverse order. Phase 5: the ready flag.
    let mut p1 = Vec::new();
    let mut p4 = Vec::new();
    let mut late = Vec::new();
    for i in &to.ports {
        if !from.ports.contains(i) {
            p1.push(Change::AddPort(*i));
        }
    }
    // A LAN port after its redirect entry; removed before it.
    set_then_remove(
        &from.lan_ports,
        &to.lan_ports,
        Change::SetLanPort,
        &mut p1,
        &mut late,
        Change::RemoveLanPort,
    );
    set_then_remove(
        &from.nexthops,
        &to.nexthops,
        Change::SetNextHop,
        &mut p1,
        &mut late,
        Change::RemoveNextHop,
    );
    set_then_remove(
        &from.neighbours,
        &to.neighbours,
        Change::SetNeighbour,
        &mut p1,
        &mut late,
        Change::RemoveNeighbour,
    );
    set_then_remove(
        &from.links,
        &to.links,
        Change::SetLink,
        &mut p1,
        &mut late,
        Change::RemoveLink,
    );
    // An exit after its next hop (an exit without one drops what it gets: either order of
    // removal is safe).
    set_then_remove(
        &from.transit_exits,
        &to.transit_exits,
        Change::SetTransitExit,
        &mut p1,
        &mut late,
        Change::RemoveTransitExit,
    );
    // Before the groups: a member whose path it marks down is skipped from the start.
    if from.links_down != to.links_down {
        p1.push(Change::SetLinksDown(to.links_down));
    }
    set_then_remove(
        &from.vnis,
        &to.vnis,
        Change::SetVni,
        &mut p1,
        &mut late,
        Change::RemoveVni,
    );
    set_then_remove(
        &from.classifier,
        &to.classifier,
        Change::SetClassifier,
        &mut p1,
        &mut late,
        Change::RemoveClassifier,
    );
    for (c, p) in &to.qos {
        if from.qos.get(c) != Some(p) {
            p1.push(Change::SetQos(*c, *p));
        }
    }
    // Policers before the flag that turns policing on; removed before it goes off.
    set_then_remove(
        &from.policers,
        &to.policers,
        Change::SetPolicer,
        &mut p1,
        &mut late,
        Change::RemovePolicer,
    );
    let mut p2 = Vec::new();
    let mut group_removes = Vec::new();
    set_then_remove(
        &from.groups,
        &to.groups,
        |g, t| Change::SetGroup(g, Box::new(t)),
        &mut p2,
        &mut group_removes,
        Change::RemoveGroup,
    );
    let mut p3 = Vec::new();
    let mut route_removes = Vec::new();
    set_then_remove(
        &from.routes,
        &to.routes,
        Change::SetRoute,
        &mut p3,
        &mut route_removes,
        Change::RemoveRoute,
    );
    p4.extend(route_removes);
    p4.extend(group_removes);
    p4.extend(late);
    for i in &from.ports {
        if !to.ports.contains(i) {
            p4.push(Change::RemovePort(*i));
        }
    }
    let mut out = p1;
    out.extend(p2);
    out.extend(p3);
    out.extend(p4);
    match (&from.config, &to.config) {
        (f, Some(t)) if f.as_ref() != Some(t) => out.push(Change::SetConfig(*t)),
        _ => {}
    }
    out
}

/// Applies one change to an in-memory state (what the maps will hold after the write).
pub fn apply(state: &mut ForwardingState, change: &Change) {
    match change {
        Change::SetNextHop(id, nh) => {
            state.nexthops.insert(*id, *nh);
        }
        Change::RemoveNextHop(id) => {
            state.nexthops.remove(id);
        }
        Change::AddPort(i) => {
            state.ports.insert(*i);
        }
        Change::RemovePort(i) => {
            state.ports.remove(i);
        }
        Change::SetLanPort(i, p) => {
            state.lan_ports.insert(*i, *p);
        }
        Change::RemoveLanPort(i) => {
            state.lan_ports.remove(i);
        }
        Change::SetNeighbour(k, n) => {
            state.neighbours.insert(*k, *n);
        }
        Change::RemoveNeighbour(k) => {
            state.neighbours.remove(k);
        }
        Change::SetLink(id, c) => {
            state.links.insert(*id, *c);
        }
        Change::RemoveLink(id) => {
            state.links.remove(id);
        }
        Change::SetVni(v, e) => {
            state.vnis.insert(*v, *e);
        }
        Change::RemoveVni(v) => {
            state.vnis.remove(v);
        }
        Change::SetClassifier(k, r) => {
            state.classifier.insert(*k, *r);
        }
        Change::RemoveClassifier(k) => {
            state.classifier.remove(k);
        }
        Change::SetQos(c, p) => {
            state.qos.insert(*c, *p);
        }
        Change::SetGroup(g, t) => {
            state.groups.insert(*g, **t);
        }
        Change::RemoveGroup(g) => {
            state.groups.remove(g);
        }
        Change::SetRoute(p, r) => {
            state.routes.insert(*p, *r);
        }
        Change::RemoveRoute(p) => {
            state.routes.remove(p);
        }
        Change::SetConfig(c) => state.config = Some(*c),
        Change::SetPolicer(k, p) => {
            state.policers.insert(*k, *p);
        }
        Change::RemovePolicer(k) => {
            state.policers.remove(k);
        }
        Change::SetLinksDown(d) => state.links_down = *d,
        Change::SetTransitExit(e, l) => {
            state.transit_exits.insert(*e, *l);
        }
        Change::RemoveTransitExit(e) => {
            state.transit_exits.remove(e);
        }
    }
}

/// Whether every route's group exists and every group's next hops exist: what a packet can
/// reach is programmed.
pub fn references_resolve(state: &ForwardingState) -> Result<(), String> {
    for (p, r) in &state.routes {
        if !state.groups.contains_key(&r.group_id) {
            return Err(format!("route {p} points at missing group {}", r.group_id));
        }
    }
    for (g, t) in &state.groups {
        for nh in &t.nexthops[..(t.member_count as usize).min(t.nexthops.len())] {
            if !state.nexthops.contains_key(nh) {
                return Err(format!("group {g} points at missing next hop {nh}"));
            }
        }
    }
    Ok(())
}

/// Converts an address + prefix length read from a map.
pub fn prefix_of(addr: IpAddr, len: u8) -> Prefix {
    Prefix { addr, len }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_common::{NHG_BUCKETS, NH_F_VALID};
    use proptest::prelude::*;

    fn nh(link: u32) -> NextHop {
        NextHop {
            flags: NH_F_VALID,
            link_id: link,
            ifindex: 2 + link,
            vni: 100 + link,
            ..Default::default()
        }
    }

    fn table(nexthops: &[u32]) -> NextHopTable {
        let mut t = NextHopTable {
            member_count: nexthops.len() as u16,
            active_count: nexthops.len() as u16,
            ..Default::default()
        };
        t.nexthops[..nexthops.len()].copy_from_slice(nexthops);
        for b in 0..NHG_BUCKETS {
            t.buckets[b] = (b % nexthops.len()) as u8;
        }
        t
    }

    /// A consistent state from a small description: groups of next hops, routes to groups.
    fn state(groups: &[(u32, Vec<u32>)], routes: &[(u8, u32)], neigh: &[u32]) -> ForwardingState {
        let mut s = ForwardingState::default();
        for (g, nhs) in groups {
            for n in nhs {
                s.nexthops.insert(*n, nh(*n));
                s.ports.insert(2 + n);
            }
            s.groups.insert(*g, table(nhs));
        }
        for (i, g) in routes {
            if s.groups.contains_key(g) {
                s.routes.insert(
                    Prefix {
                        addr: IpAddr::from([10, *i, 0, 0]),
                        len: 16,
                    },
                    Route {
                        group_id: *g,
                        ..Default::default()
                    },
                );
            }
        }
        for n in neigh {
            s.neighbours
                .insert((2 + n, [172, 31, 0, *n as u8]), Neighbour::default());
            // A LAN port per neighbour, so that the diff adds and removes some.
            s.ports.insert(100 + n);
            s.lan_ports.insert(
                100 + n,
                LanPort {
                    mac: [2, 0, 0, 0, 0, *n as u8],
                    _pad: [0; 2],
                },
            );
        }
        s.config = Some(GatewayConfig {
            hash_seed: 1,
            flags: 1,
            ..Default::default()
        });
        s
    }

    fn arb_state() -> impl Strategy<Value = ForwardingState> {
        (
            proptest::collection::btree_map(
                1u32..6,
                proptest::collection::btree_set(1u32..8, 1..4),
                0..4,
            ),
            proptest::collection::vec((0u8..6, 1u32..6), 0..6),
            proptest::collection::vec(1u32..8, 0..4),
        )
            .prop_map(|(groups, routes, neigh)| {
                let groups: Vec<(u32, Vec<u32>)> = groups
                    .into_iter()
                    .map(|(g, s)| (g, s.into_iter().collect()))
                    .collect();
                state(&groups, &routes, &neigh)
            })
    }

    #[test]
    fn no_change_no_writes() {
        let s = state(&[(1, vec![1, 2])], &[(1, 1)], &[1]);
        assert!(diff(&s, &s).is_empty());
    }

    #[test]
    fn new_group_is_written_before_the_route_that_uses_it() {
        let from = state(&[(1, vec![1])], &[(1, 1)], &[]);
        let to = state(&[(2, vec![2])], &[(1, 2)], &[]);
        let changes = diff(&from, &to);
        let pos = |f: &dyn Fn(&Change) -> bool| changes.iter().position(f).unwrap();
        let nh2 = pos(&|c| matches!(c, Change::SetNextHop(2, _)));
        let g2 = pos(&|c| matches!(c, Change::SetGroup(2, _)));
        let route = pos(&|c| matches!(c, Change::SetRoute(..)));
        let g1_gone = pos(&|c| matches!(c, Change::RemoveGroup(1)));
        let nh1_gone = pos(&|c| matches!(c, Change::RemoveNextHop(1)));
        assert!(nh2 < g2 && g2 < route && route < g1_gone && g1_gone < nh1_gone);
    }

    proptest! {
        /// Applying the diff gives the wanted state, and after every single write every route
        /// and group still points at something programmed (no packet follows a dangling id).
        #[test]
        fn diff_reaches_the_target_through_consistent_states(from in arb_state(), to in arb_state()) {
            let mut s = from.clone();
            prop_assert!(references_resolve(&s).is_ok());
            for c in diff(&from, &to) {
                apply(&mut s, &c);
                prop_assert!(references_resolve(&s).is_ok(), "after {:?}: {:?}", c, references_resolve(&s));
            }
            prop_assert_eq!(&s, &to);
            prop_assert!(diff(&s, &to).is_empty());
        }
    }
}
