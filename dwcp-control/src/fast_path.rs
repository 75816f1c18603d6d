//! The state owner's view of the fast path: what it writes (the [`Change`]s of a diff) and
//! what it reads (what is programmed, link liveness, counters). `dwcp-dataplane` implements
//! it on the kernel's maps; [`MemoryFastPath`] implements it in memory, so the state owner's
//! conformance tests replay recorded inputs without root, and a privileged test checks that
//! the real maps end up equal to the model after the same replay.
use std::collections::BTreeMap;

use dwcp_common::{Counters, LinkState, Reason};

use crate::forwarding::{self, Change, ForwardingState};

/// Why a read or write of the fast path failed (a map error, a value out of range).
pub type FastPathError = Box<dyn std::error::Error + Send + Sync>;

pub trait FastPath {
    /// Everything the maps hold now: an earlier agent's work at start, or what is left after
    /// a failed write.
    fn read_programmed(&self) -> Result<ForwardingState, FastPathError>;

    /// Writes one change.
    fn apply(&mut self, change: &Change) -> Result<(), FastPathError>;

    /// Writes a run of group changes (`SetGroup` / `RemoveGroup` only) as one step where the
    /// fast path can: every new table into its group's free slot, then every flip.
    fn swap_groups(&mut self, run: &[Change]) -> Result<(), FastPathError> {
        run.iter().try_for_each(|c| self.apply(c))
    }

    /// The kernel's liveness measurements of one link (`LINK_STATE`).
    fn link_state(&self, link: u32) -> Result<LinkState, FastPathError>;

    /// Packets and bytes sent through one next hop, summed over CPUs.
    fn nexthop_counters(&self, nexthop: u32) -> Result<Counters, FastPathError>;

    /// Packets and bytes forwarded in one QoS class, summed over CPUs.
    fn class_counters(&self, class: u8) -> Result<Counters, FastPathError>;

    /// How often the fast path took one pass/drop decision, summed over CPUs.
    fn reason_count(&self, reason: Reason) -> Result<u64, FastPathError>;
}

/// The fast path as a model: the maps as a [`ForwardingState`], plus the figures the kernel
/// would measure, set by the test that drives it.
#[derive(Clone, Debug, Default)]
pub struct MemoryFastPath {
    pub maps: ForwardingState,
    pub link_states: BTreeMap<u32, LinkState>,
    pub nexthop_counters: BTreeMap<u32, Counters>,
    pub class_counters: BTreeMap<u8, Counters>,
    pub reason_counts: BTreeMap<u32, u64>,
}

impl FastPath for MemoryFastPath {
    fn read_programmed(&self) -> Result<ForwardingState, FastPathError> {
        Ok(self.maps.clone())
    }

    fn apply(&mut self, change: &Change) -> Result<(), FastPathError> {
        forwarding::apply(&mut self.maps, change);
        Ok(())
    }

    fn link_state(&self, link: u32) -> Result<LinkState, FastPathError> {
        Ok(self.link_states.get(&link).copied().unwrap_or_default())
    }

    fn nexthop_counters(&self, nexthop: u32) -> Result<Counters, FastPathError> {
        Ok(self
            .nexthop_counters
            .get(&nexthop)
            .copied()
            .unwrap_or_default())
    }

    fn class_counters(&self, class: u8) -> Result<Counters, FastPathError> {
        Ok(self.class_counters.get(&class).copied().unwrap_or_default())
    }

    fn reason_count(&self, reason: Reason) -> Result<u64, FastPathError> {
        Ok(self
            .reason_counts
            .get(&(reason as u32))
            .copied()
            .unwrap_or_default())
    }
}
