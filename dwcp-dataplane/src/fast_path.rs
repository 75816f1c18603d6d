//! dwcp-control's [`FastPath`] on the kernel's maps: the state owner's changes become map
//! writes, its reads read the pinned maps.
use std::borrow::Borrow;

use aya::maps::{Array, MapData};
use dwcp_common::{
    qos::QOS_CLASSES, ClassifierKey, Counters, LinkState, NeighbourKey, Policer, PolicerKey, Reason,
};
use dwcp_control::{
    fast_path::{FastPath, FastPathError},
    forwarding::{
        class_key, neigh_key, prefix_of, Change, ClassKey, ForwardingState, NeighKey, PolicerSpec,
    },
    liveness::{LinkStateReadError, LinkStateSource},
};

use crate::Dataplane;

impl FastPath for Dataplane {
    fn read_programmed(&self) -> Result<ForwardingState, FastPathError> {
        let config = self.config()?;
        Ok(ForwardingState {
            config: (config != Default::default()).then_some(config),
            ports: self.ports()?.into_iter().collect(),
            lan_ports: self.lan_ports()?.into_iter().collect(),
            nexthops: self.nexthops()?.into_iter().collect(),
            neighbours: self
                .neighbours()?
                .into_iter()
                .map(|(k, v)| (neigh_key(&k), v))
                .collect(),
            links: self.link_configs()?.into_iter().collect(),
            vnis: self.vnis()?.into_iter().collect(),
            groups: self.group_tables()?.into_iter().collect(),
            routes: self
                .routes()?
                .into_iter()
                .map(|(a, l, r)| (prefix_of(a, l), r))
                .collect(),
            classifier: self
                .classifier_rules()?
                .into_iter()
                .map(|(k, v)| (class_key(&k), v))
                .collect(),
            qos: (0..QOS_CLASSES as u8)
                .map(|c| Ok((c, self.qos_policy(c)?)))
                .collect::<crate::Result<Vec<_>>>()?
                .into_iter()
                .filter(|(_, p)| *p != Default::default())
                .collect(),
            policers: self
                .policers()?
                .into_iter()
                .map(|(k, p)| ((k.group_id, k.class), PolicerSpec::of(&p)))
                .collect(),
            links_down: self.links_down()?,
            transit_exits: self.transit_exits()?.into_iter().collect(),
        })
    }

    fn apply(&mut self, change: &Change) -> Result<(), FastPathError> {
        Ok(write(self, change)?)
    }

    /// Every table into its group's free slot, then every flip, in two batch updates (see
    /// [`Dataplane::set_group_tables`]); a removed group gets an empty table.
    fn swap_groups(&mut self, run: &[Change]) -> Result<(), FastPathError> {
        let tables: Vec<(u32, dwcp_common::NextHopTable)> = run
            .iter()
            .map(|c| match c {
                Change::SetGroup(g, t) => Ok((*g, **t)),
                Change::RemoveGroup(g) => Ok((*g, Default::default())),
                other => Err(format!("{} is not a group change", other.describe())),
            })
            .collect::<Result<_, _>>()?;
        self.set_group_tables(&tables)?;
        Ok(())
    }

    fn link_state(&self, link: u32) -> Result<LinkState, FastPathError> {
        Ok(Dataplane::link_state(self, link)?)
    }

    fn nexthop_counters(&self, nexthop: u32) -> Result<Counters, FastPathError> {
        Ok(Dataplane::nexthop_counters(self, nexthop)?)
    }

    fn class_counters(&self, class: u8) -> Result<Counters, FastPathError> {
        Ok(Dataplane::class_counters(self, class)?)
    }

    fn reason_count(&self, reason: Reason) -> Result<u64, FastPathError> {
        Ok(Dataplane::reason_count(self, reason)?)
    }
}

/// One map write.
fn write(dp: &mut Dataplane, c: &Change) -> crate::Result<()> {
    let nk = |(ifindex, ip4): NeighKey| NeighbourKey { ifindex, ip4 };
    let ck = |(proto, direction, port): ClassKey| ClassifierKey {
        proto,
        direction,
        port,
    };
    let pk = |(group_id, class): (u32, u8)| PolicerKey {
        group_id,
        class,
        _pad: [0; 3],
    };
    match c {
        Change::SetNextHop(id, nh) => dp.set_nexthop(*id, *nh),
        Change::RemoveNextHop(id) => dp.remove_nexthop(*id),
        Change::AddPort(i) => dp.add_port(*i),
        Change::RemovePort(i) => dp.remove_port(*i),
        Change::SetLanPort(i, p) => dp.set_lan_port(*i, *p),
        Change::RemoveLanPort(i) => dp.remove_lan_port(*i),
        Change::SetNeighbour(k, n) => dp.set_neighbour(nk(*k), *n),
        Change::RemoveNeighbour(k) => dp.remove_neighbour(&nk(*k)),
        Change::SetLink(id, cfg) => dp.set_link_config(*id, *cfg),
        Change::RemoveLink(id) => dp.set_link_config(*id, Default::default()),
        Change::SetVni(v, e) => dp.add_vni(*v, *e),
        Change::RemoveVni(v) => dp.remove_vni(*v),
        Change::SetClassifier(k, r) => dp.set_classifier_rule(ck(*k), *r),
        Change::RemoveClassifier(k) => dp.remove_classifier_rule(&ck(*k)),
        Change::SetQos(class, p) => dp.set_qos_policy(*class, *p),
        Change::SetGroup(g, t) => dp.set_group_table(*g, t.as_ref()),
        Change::RemoveGroup(g) => dp.remove_group(*g),
        Change::SetRoute(p, r) => dp.set_route(p.addr, p.len, *r),
        Change::RemoveRoute(p) => dp.remove_route(p.addr, p.len),
        Change::SetConfig(cfg) => dp.set_config(*cfg),
        Change::SetPolicer(key, p) => dp.put_policer(
            pk(*key),
            Policer {
                rate_bytes_per_s: p.rate_bytes_per_s,
                burst_bytes: p.burst_bytes,
                tokens: p.burst_bytes,
                action: p.action,
                ..Default::default()
            },
        ),
        Change::RemovePolicer(key) => dp.delete_policer(&pk(*key)),
        Change::SetLinksDown(d) => dp.set_links_down(*d),
        Change::SetTransitExit(e, l) => dp.set_transit_exit(*e, *l),
        Change::RemoveTransitExit(e) => dp.remove_transit_exit(*e),
    }
}

/// The `LINK_STATE` map (pinned, or from the loaded object) as the link monitor's source.
pub struct LinkStateMap<T>(pub Array<T, LinkState>);

impl<T: Borrow<MapData>> LinkStateSource for LinkStateMap<T> {
    fn link_state(&self, link_id: u32) -> Result<LinkState, LinkStateReadError> {
        self.0.get(&link_id, 0).map_err(|e| LinkStateReadError {
            link_id,
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root and BPF (--features dwcp-dataplane/privileged)"
    )]
    fn reads_link_state_from_a_kernel_array_map() {
        // A real BPF array of the LINK_STATE layout, written here as the XDP program would.
        let mut array = Array::<MapData, LinkState>::create(4, 0).unwrap();
        let st = LinkState {
            last_reply_ns: 123,
            good_streak: 6,
            srtt_ns: 4_000,
            replies: 77,
            ..Default::default()
        };
        array.set(2, st, 0).unwrap();
        let map = LinkStateMap(array);
        assert_eq!(map.link_state(2).unwrap(), st);
        assert_eq!(map.link_state(1).unwrap(), LinkState::default());
        let e = map.link_state(9).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the state of link 9: "),
            "{e}"
        );
    }
}
