//! Per-CPU counters: no atomics needed, the agent sums the CPUs.
use dwcp_common::Reason;

use crate::maps::{CLASS_STATS, NH_STATS, REASON_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(p) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, valid for the program's run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_nexthop(nh: u32, bytes: u64) {
    if let Some(p) = NH_STATS.get_ptr_mut(nh) {
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_class(class: u32, bytes: u64) {
    if let Some(p) = CLASS_STATS.get_ptr_mut(class) {
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes;
        }
    }
}
