//! The group-table mechanism the fast path used before double-buffered slots: one
//! `BPF_MAP_TYPE_ARRAY_OF_MAPS` whose inner maps each hold one group's table, replaced whole
//! by one update of the outer map. Every such update from userspace waits for an RCU grace
//! period in the kernel (`maybe_wait_bpf_programs`), used by a program or not. Kept as the
//! benchmark baseline (measured in the same run as the new path) and to make maps of the old
//! layout in tests (an agent must refuse such pins clearly). Not used by the fast path.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use aya::maps::{Array, IterableMap, MapData};
use dwcp_common::NextHopTable;

use dwcp_dataplane::{map_err, sys_bpf, syscall_err, DataplaneError, Result};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
const NAME: &str = "NH_GROUPS";

#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn inner(table: &NextHopTable) -> Result<Array<MapData, NextHopTable>> {
    let mut inner = Array::create(1, 0).map_err(map_err(NAME))?;
    inner.set(0, table, 0).map_err(map_err(NAME))?;
    Ok(inner)
}

/// An array of maps of group tables, as the fast path had them.
pub struct MapInMap {
    outer: MapData,
}

impl MapInMap {
    /// An outer map of `max_entries` groups, named `NH_GROUPS`.
    pub fn create(max_entries: u32) -> Result<MapInMap> {
        let template = inner(&NextHopTable::default())?;
        let mut attr = CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries,
            inner_map_fd: template.map().fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        attr.map_name[..NAME.len()].copy_from_slice(NAME.as_bytes());
        // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_CREATE; the template's
        // descriptor is open for the duration of the call.
        let fd = unsafe { sys_bpf(BPF_MAP_CREATE, &attr) }
            .map_err(|e| syscall_err(NAME, "BPF_MAP_CREATE", e))?;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let outer = MapData::from_fd(fd).map_err(map_err(NAME))?;
        Ok(MapInMap { outer })
    }

    /// Replaces group `group`'s table: a fresh inner map, then one update of the outer map
    /// (which waits for an RCU grace period before returning).
    pub fn swap(&mut self, group: u32, table: &NextHopTable) -> Result<()> {
        let inner = inner(table)?;
        let fd = inner.map().fd().as_fd().as_raw_fd() as u32;
        let attr = ElemAttr {
            map_fd: self.outer.fd().as_fd().as_raw_fd() as u32,
            key: &group as *const u32 as u64,
            value: &fd as *const u32 as u64,
            ..Default::default()
        };
        // SAFETY: key and value point at live u32s; the inner map stays open during the call.
        unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) }
            .map_err(|e| syscall_err(NAME, "BPF_MAP_UPDATE_ELEM", e))?;
        Ok(())
    }

    /// Pins the outer map at `path` (a map of the old layout, for tests of pin checks).
    pub fn pin(&self, path: &std::path::Path) -> Result<()> {
        self.outer.pin(path).map_err(|e| DataplaneError::Map {
            map: NAME,
            source: Box::new(aya::maps::MapError::PinError {
                name: Some(NAME.into()),
                error: e,
            }),
        })
    }
}
