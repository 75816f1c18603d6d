//! Swapping several group tables in one `BPF_MAP_UPDATE_BATCH`.
//!
//! Every update of a map-in-map makes the syscall wait for an RCU grace period (so that when
//! it returns no program still uses the old inner map): milliseconds each, whatever the map
//! holds. A route change that touches ten groups paid ten of them one after the other; the
//! batch pays one. Each table is still swapped whole (one pointer exchange per group), so a
//! packet sees either the old or the new table of a group, as before. aya has no batch call,
//! hence the raw syscall.
use std::os::fd::{AsFd, AsRawFd};

use aya::{
    maps::{Array, IterableMap, MapData, MapInfo},
    programs::ProgramError,
};
use dwcp_common::{maps::names, maps::programs, NextHopTable, MAX_GROUPS};

use super::{check_range, map_err, Dataplane, DataplaneError, Result};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `bpf_attr.batch`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// How [`Dataplane::set_group_tables`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupWrite {
    /// One `BPF_MAP_UPDATE_BATCH`.
    Batched,
    /// One update per group (a single group, or the kernel refused the batch).
    OneByOne,
}

impl Dataplane {
    /// The outer group map, opened again by id (aya keeps its descriptor to itself).
    fn groups_map(&mut self) -> Result<aya::maps::MapFd> {
        let prog = self.program(programs::LAN_INGRESS)?;
        let err = |source: ProgramError| DataplaneError::Program {
            program: programs::LAN_INGRESS,
            source: Box::new(source),
        };
        let ids = prog
            .info()
            .map_err(err)?
            .map_ids()
            .map_err(err)?
            .unwrap_or_default();
        for id in ids {
            let info = MapInfo::from_id(id).map_err(map_err(names::NH_GROUPS))?;
            if info.name_as_str() == Some(names::NH_GROUPS) {
                return info.fd().map_err(map_err(names::NH_GROUPS));
            }
        }
        Err(DataplaneError::Map {
            map: names::NH_GROUPS,
            source: Box::new(aya::maps::MapError::InvalidName {
                name: names::NH_GROUPS.into(),
            }),
        })
    }

    /// Replaces the tables of several groups with one wait for the kernel instead of one per
    /// group. Falls back to one update per group if the kernel refuses the batch.
    pub fn set_group_tables(&mut self, tables: &[(u32, NextHopTable)]) -> Result<GroupWrite> {
        for (g, _) in tables {
            check_range("next-hop group", *g, MAX_GROUPS)?;
        }
        if tables.len() < 2 {
            for (g, t) in tables {
                self.set_group_table(*g, t)?;
            }
            return Ok(GroupWrite::OneByOne);
        }
        let mut inners: Vec<Array<MapData, NextHopTable>> = Vec::with_capacity(tables.len());
        for (_, t) in tables {
            let mut inner = Array::create(1, 0).map_err(map_err(names::NH_GROUPS))?;
            inner.set(0, t, 0).map_err(map_err(names::NH_GROUPS))?;
            inners.push(inner);
        }
        let outer = self.groups_map()?;
        let keys: Vec<u32> = tables.iter().map(|(g, _)| *g).collect();
        let values: Vec<u32> = inners
            .iter()
            .map(|m| m.map().fd().as_fd().as_raw_fd() as u32)
            .collect();
        let attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: outer.as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at `keys` and `values`, which outlive the call, with `count`
        // elements each; the inner maps' descriptors stay open until after it returns.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &attr as *const BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc == 0 {
            return Ok(GroupWrite::Batched);
        }
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "batch update of group tables refused; one by one");
        // Some groups may be done already; redoing them is harmless.
        for (g, t) in tables {
            self.set_group_table(*g, t)?;
        }
        Ok(GroupWrite::OneByOne)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{build_table, Member, Pinning};

    #[test]
    fn several_groups_swap_in_one_batch() {
        let mut dp = Dataplane::load(Pinning::None).unwrap();
        let tables: Vec<(u32, NextHopTable)> = (1..=5u32)
            .map(|g| {
                let members = [
                    Member {
                        nexthop: g,
                        weight: 1,
                    },
                    Member {
                        nexthop: 100 + g,
                        weight: g,
                    },
                ];
                (g, build_table(&members, None).unwrap())
            })
            .collect();
        assert_eq!(dp.set_group_tables(&tables).unwrap(), GroupWrite::Batched);
        for (g, t) in &tables {
            assert_eq!(dp.group_table(*g).unwrap().as_ref(), Some(t), "group {g}");
        }
        // And again over the tables now in force (replacing, not adding).
        let emptied: Vec<(u32, NextHopTable)> = tables
            .iter()
            .map(|(g, _)| (*g, NextHopTable::default()))
            .collect();
        assert_eq!(dp.set_group_tables(&emptied).unwrap(), GroupWrite::Batched);
        assert!(dp.group_tables().unwrap().is_empty());
    }
}
