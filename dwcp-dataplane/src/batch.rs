//! Replacing group tables without waiting for the kernel: double-buffered slots.
//!
//! Each group has two slots in `NH_GROUPS` (`dwcp_common::group_slot`) and an index in
//! `NH_ACTIVE` saying which one is in force. Writing a group:
//!
//! 1. the new table is copied into the slot *not* in force (an array update copies the value
//!    in place and returns: no packet reads that slot, so nothing to wait for);
//! 2. `NH_ACTIVE[group]` flips to it with one 4-byte write. The index is 0 or 1, so the two
//!    values differ in their lowest byte only: whatever width the kernel copies with, a
//!    packet reads the old index or the new one.
//!
//! The LAN program reads the index once and then reads the table only from that slot, so a
//! packet sees the old table or the new one, never a mix of the two.
//!
//! A packet that read the index just before a flip goes on reading the slot that was in
//! force. That slot is next written by the *following* update of the same group, and this is
//! the only hazard. It is excluded by time: an XDP program runs in one RCU read-side section
//! of a few microseconds (non-preemptible softirq context: it cannot be descheduled
//! mid-packet), while the writer does not write a group's slot again until
//! [`SLOT_REUSE_GUARD`] (2 ms, hundreds of times a packet's run) after that group's last flip;
//! if the group flipped more recently it waits out the remainder. The agent's debounce spaces
//! updates far more than that (50 ms during a storm, an immediate computation only after a
//! quiet second), so the wait is rare; it is counted ([`SlotGuardStats`]). A full RCU grace
//! period (what the previous map-in-map swap paid on *every* update, ~15 ms here) would be
//! the exact bound, but it is longer than the remainder ever is, so waiting out the time is
//! both cheaper and sufficient for a non-realtime kernel. (On PREEMPT_RT, softirqs are
//! preemptible threads and this time bound is not a guarantee.)
//!
//! Ordering: the slot write and the flip are two syscalls of one thread, the flip after the
//! slot write returned; the program's read of the slot depends on the index it read (an
//! address dependency). On x86-64 (stores are not reordered with stores) this makes a packet
//! that sees the new index see the whole new table. The kernel's array update has no
//! explicit release barrier, so on weakly ordered CPUs this rests on the syscall path's own
//! barriers; not verified there.
//!
//! The flip times of a previous agent are not known after a restart: a loaded [`Dataplane`]
//! treats every group as flipped at load time.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use dwcp_common::{group_slot, maps::names, NextHopTable, MAX_GROUPS};

use super::{check_range, map_err, sys_bpf, syscall_err, Dataplane, Result};

/// How long after a group's flip the slot it left may be written again. See the module
/// documentation.
pub const SLOT_REUSE_GUARD: Duration = Duration::from_millis(2);

/// How [`Dataplane::set_group_tables`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupWrite {
    /// Several groups: all new tables written, then all flips.
    Batched,
    /// A single group.
    OneByOne,
}

/// Waits for [`SLOT_REUSE_GUARD`] since this [`Dataplane`] was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotGuardStats {
    /// Writes that had to wait because a group they touch flipped less than the guard ago.
    pub waits: u64,
    /// Total time waited.
    pub waited: Duration,
}

impl Dataplane {
    /// Replaces the tables of several groups: every new table into its group's free slot,
    /// then every group's active index flips. Each group switches atomically (old or new
    /// table, never a mix); the groups switch one after the other within microseconds, as
    /// separate updates always did. A group listed twice gets its last table.
    pub fn set_group_tables(&mut self, tables: &[(u32, NextHopTable)]) -> Result<GroupWrite> {
        for (g, _) in tables {
            check_range("next-hop group", *g, MAX_GROUPS)?;
        }
        let wanted: BTreeMap<u32, &NextHopTable> = tables.iter().map(|(g, t)| (*g, t)).collect();
        let mut next = Vec::with_capacity(wanted.len());
        for &g in wanted.keys() {
            let in_force = match self.slot_in_force[g as usize] {
                Some(s) => u32::from(s),
                None => self.active_slot(g)?,
            };
            next.push(1 - in_force);
        }
        // Wait until every slot about to be written has been out of force for the guard.
        let now = Instant::now();
        let wait = wanted
            .keys()
            .map(|&g| {
                SLOT_REUSE_GUARD.saturating_sub(now.duration_since(self.flipped_at[g as usize]))
            })
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            std::thread::sleep(wait);
            self.guard.waits += 1;
            self.guard.waited += now.elapsed();
        }
        // Every table into its free slot (one call), then every flip (one call): a batch
        // update of an array writes its elements in order, each as a single update does.
        let slots: Vec<u32> = wanted
            .keys()
            .zip(&next)
            .map(|(&g, &s)| group_slot(g, s))
            .collect();
        let tables: Vec<NextHopTable> = wanted.values().map(|t| **t).collect();
        if update_batch(&self.groups_fd, &slots, &tables).is_err() {
            // A kernel without batch updates of arrays, or a failure part-way: element by
            // element (writing a slot again is harmless), which names the failing map.
            for (&k, t) in slots.iter().zip(&tables) {
                self.groups
                    .set(k, t, 0)
                    .map_err(map_err(names::NH_GROUPS))?;
            }
        }
        let groups: Vec<u32> = wanted.keys().copied().collect();
        if update_batch(&self.active_fd, &groups, &next).is_err() {
            for (&g, &s) in groups.iter().zip(&next) {
                self.group_active
                    .set(g, s, 0)
                    .map_err(map_err(names::NH_ACTIVE))?;
            }
        }
        let flipped = Instant::now();
        for (&g, &s) in groups.iter().zip(&next) {
            self.flipped_at[g as usize] = flipped;
            self.slot_in_force[g as usize] = Some(s as u8);
        }
        Ok(if wanted.len() > 1 {
            GroupWrite::Batched
        } else {
            GroupWrite::OneByOne
        })
    }
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `bpf_attr` of the `BPF_MAP_*_BATCH` commands.
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

/// A duplicate of the descriptor of array map `name` (taken before the map is).
pub(super) fn array_fd(ebpf: &aya::Ebpf, name: &'static str) -> Result<OwnedFd> {
    match ebpf.map(name) {
        Some(aya::maps::Map::Array(data)) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| syscall_err(name, "dup", e)),
        _ => Err(map_err(name)(aya::maps::MapError::InvalidName {
            name: name.into(),
        })),
    }
}

/// `keys[i] := values[i]` for every i, in one `BPF_MAP_UPDATE_BATCH` on an array map whose
/// values are `V`s.
fn update_batch<V>(map: &OwnedFd, keys: &[u32], values: &[V]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len(), "a value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the batch form of bpf_attr; keys and values point at `count` live
    // elements for the duration of the call. The values are the map's own type: the callers
    // pass the element types aya checked these maps against when it took them.
    unsafe { sys_bpf(BPF_MAP_UPDATE_BATCH, &attr) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_table, Member, Pinning};

    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root and BPF (--features dwcp-dataplane/privileged)"
    )]
    fn several_groups_swap_in_one_batch() {
        let mut dp = Dataplane::load(Pinning::None).unwrap();
        let tables: Vec<(u32, NextHopTable)> = (1..=5u32)
            .map(|g| {
                let members = [
                    Member {
                        nexthop: g,
                        weight: 1,
                        path: Default::default(),
                    },
                    Member {
                        nexthop: 100 + g,
                        weight: g,
                        path: Default::default(),
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

    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root and BPF (--features dwcp-dataplane/privileged)"
    )]
    fn this_kernel_updates_both_arrays_in_one_batch_call() {
        // The fallback to single writes would hide a batch the kernel refuses: call it.
        let dp = Dataplane::load(Pinning::None).unwrap();
        let t = build_table(
            &[Member {
                nexthop: 9,
                weight: 1,
                path: Default::default(),
            }],
            None,
        )
        .unwrap();
        let slots = [group_slot(3, 1), group_slot(4, 1)];
        update_batch(&dp.groups_fd, &slots, &[t, t]).expect("batch update of NH_GROUPS");
        update_batch(&dp.active_fd, &[3, 4], &[1u32, 1]).expect("batch update of NH_ACTIVE");
        for g in [3, 4] {
            assert_eq!(dp.active_slot(g).unwrap(), 1);
            assert_eq!(dp.group_table(g).unwrap(), Some(t));
        }
        // Keys out of range fail (and `set_group_tables` then writes one by one, which names
        // the map).
        assert!(update_batch(&dp.active_fd, &[MAX_GROUPS], &[1u32]).is_err());
    }

    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root and BPF (--features dwcp-dataplane/privileged)"
    )]
    fn a_write_fills_the_free_slot_and_flips_and_the_left_slot_keeps_the_old_table() {
        let mut dp = Dataplane::load(Pinning::None).unwrap();
        let a = build_table(
            &[Member {
                nexthop: 1,
                weight: 1,
                path: Default::default(),
            }],
            None,
        )
        .unwrap();
        let b = build_table(
            &[Member {
                nexthop: 2,
                weight: 1,
                path: Default::default(),
            }],
            None,
        )
        .unwrap();
        let g = 7;
        assert_eq!(dp.active_slot(g).unwrap(), 0);
        let t0 = Instant::now();
        dp.set_group_table(g, &a).unwrap();
        let flipped = Instant::now();
        assert_eq!(dp.active_slot(g).unwrap(), 1);
        dp.set_group_table(g, &b).unwrap();
        // Back-to-back writes of one group: the second waited for the guard after the first
        // flip (which came after t0), so at least the guard passed since t0.
        assert!(t0.elapsed() >= SLOT_REUSE_GUARD);
        // It had to wait, unless this machine paused for the guard between the two calls.
        let paused = dp.slot_guard_stats().waits == 0 && flipped.elapsed() >= SLOT_REUSE_GUARD;
        assert!(dp.slot_guard_stats().waits >= 1 || paused);
        assert_eq!(dp.active_slot(g).unwrap(), 0);
        assert_eq!(dp.group_table(g).unwrap(), Some(b));
        // A packet that read the index before the last flip still finds `a` in its slot.
        assert_eq!(dp.groups.get(&group_slot(g, 1), 0).unwrap(), a);
        // Other groups untouched.
        assert_eq!(dp.active_slot(g + 1).unwrap(), 0);
        assert_eq!(
            dp.group_table(g + 1).unwrap(),
            Some(NextHopTable::default())
        );
    }

    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root and BPF (--features dwcp-dataplane/privileged)"
    )]
    fn a_group_listed_twice_gets_its_last_table_and_flips_once() {
        let mut dp = Dataplane::load(Pinning::None).unwrap();
        let a = build_table(
            &[Member {
                nexthop: 1,
                weight: 1,
                path: Default::default(),
            }],
            None,
        )
        .unwrap();
        let b = build_table(
            &[Member {
                nexthop: 2,
                weight: 1,
                path: Default::default(),
            }],
            None,
        )
        .unwrap();
        assert_eq!(
            dp.set_group_tables(&[(3, a), (3, b)]).unwrap(),
            GroupWrite::OneByOne
        );
        assert_eq!(dp.active_slot(3).unwrap(), 1);
        assert_eq!(dp.group_table(3).unwrap(), Some(b));
    }

    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root and BPF (--features dwcp-dataplane/privileged)"
    )]
    fn out_of_range_groups_are_refused_before_anything_is_written() {
        let mut dp = Dataplane::load(Pinning::None).unwrap();
        let a = build_table(
            &[Member {
                nexthop: 1,
                weight: 1,
                path: Default::default(),
            }],
            None,
        )
        .unwrap();
        let e = dp.set_group_tables(&[(1, a), (MAX_GROUPS, a)]).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        assert_eq!(dp.active_slot(1).unwrap(), 0);
    }
}
