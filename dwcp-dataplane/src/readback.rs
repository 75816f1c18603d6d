//! Reading the configuration maps back whole, and the removals the typed API lacked: what a
//! restarted agent needs to see what is programmed and change only what differs.

use aya::maps::MapError;
use dwcp_common::{
    maps::names, LanPort, LinkConfig, NextHop, NextHopTable, QosPolicy, VniEntry, MAX_GROUPS,
    MAX_LINKS, MAX_NEXTHOPS, NH_F_VALID,
};

use super::{check_range, map_err, Dataplane, Result};

impl Dataplane {
    /// Every valid next hop (`NH_F_VALID`), by id.
    pub fn nexthops(&self) -> Result<Vec<(u32, NextHop)>> {
        let mut out = Vec::new();
        for id in 0..MAX_NEXTHOPS {
            let nh = self.nexthop(id)?;
            if nh.flags & NH_F_VALID != 0 {
                out.push((id, nh));
            }
        }
        Ok(out)
    }

    /// Invalidates next hop `id` (array entries cannot be deleted; the fast path skips invalid
    /// next hops).
    pub fn remove_nexthop(&mut self, id: u32) -> Result<()> {
        self.set_nexthop(id, NextHop::default())
    }

    /// Every group whose table has members, by id.
    pub fn group_tables(&self) -> Result<Vec<(u32, NextHopTable)>> {
        let mut out = Vec::new();
        for g in 0..MAX_GROUPS {
            if let Some(t) = self.group_table(g)? {
                if t.member_count > 0 {
                    out.push((g, t));
                }
            }
        }
        Ok(out)
    }

    /// Empties group `group` (an empty table: the LAN program treats it as no group). Routes
    /// must not point at it any more.
    pub fn remove_group(&mut self, group: u32) -> Result<()> {
        check_range("next-hop group", group, MAX_GROUPS)?;
        if self
            .group_table(group)?
            .is_some_and(|t| t != NextHopTable::default())
        {
            self.set_group_table(group, &NextHopTable::default())?;
        }
        Ok(())
    }

    /// Every link whose configuration is not all zeroes, by id.
    pub fn link_configs(&self) -> Result<Vec<(u32, LinkConfig)>> {
        let mut out = Vec::new();
        for id in 0..MAX_LINKS {
            let c = self.link_config(id)?;
            if c != LinkConfig::default() {
                out.push((id, c));
            }
        }
        Ok(out)
    }

    /// The interfaces in the redirect map.
    pub fn ports(&self) -> Result<Vec<u32>> {
        self.tx_ports
            .keys()
            .map(|k| k.map_err(map_err(names::TX_PORTS)))
            .collect()
    }

    pub fn remove_port(&mut self, ifindex: u32) -> Result<()> {
        match self.tx_ports.remove(ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::TX_PORTS)(e)),
        }
    }

    /// The LAN ports and their MACs.
    pub fn lan_ports(&self) -> Result<Vec<(u32, LanPort)>> {
        self.lan_ports
            .iter()
            .map(|r| r.map_err(map_err(names::LAN_PORTS)))
            .collect()
    }

    pub fn remove_lan_port(&mut self, ifindex: u32) -> Result<()> {
        match self.lan_ports.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::LAN_PORTS)(e)),
        }
    }

    pub fn vnis(&self) -> Result<Vec<(u32, VniEntry)>> {
        self.vnis
            .iter()
            .map(|r| r.map_err(map_err(names::VNIS)))
            .collect()
    }

    pub fn remove_vni(&mut self, vni: u32) -> Result<()> {
        match self.vnis.remove(&vni) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::VNIS)(e)),
        }
    }

    pub fn qos_policy(&self, class: u8) -> Result<QosPolicy> {
        self.qos
            .get(&(class as u32), 0)
            .map_err(map_err(names::QOS_POLICY))
    }
}
