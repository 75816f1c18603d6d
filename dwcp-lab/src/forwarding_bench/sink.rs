//! The sink: gateway B's underlay end runs an XDP program that counts VXLAN frames per VNI
//! and drops them. The same for both forwarders, and far cheaper per frame than either, so
//! what the sink counts is what gateway A forwarded.

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use dwcp_lab_ebpf::bench;

use super::{source::xdp_program_mut, BenchError, Result};
use crate::netlab::Netns;
use crate::LAB_EBPF_OBJECT;

/// Frames counted by the sink: per VNI (`bench::sink_slot`), and everything else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Index = slot; slot 0 = frames that are not VXLAN with a VNI below `bench::SINK_SLOTS`.
    pub slots: Vec<u64>,
}

impl SinkCounts {
    pub fn vni(&self, vni: u32) -> u64 {
        match bench::sink_slot(vni) {
            0 => 0,
            s => self.slots.get(s as usize).copied().unwrap_or(0),
        }
    }

    /// Frames that were not VXLAN (or carried an unexpected VNI).
    pub fn other(&self) -> u64 {
        self.slots.first().copied().unwrap_or(0)
    }

    /// VXLAN frames, all VNIs.
    pub fn vxlan(&self) -> u64 {
        self.slots.iter().skip(1).sum()
    }

    /// Every frame the sink saw.
    pub fn total(&self) -> u64 {
        self.slots.iter().sum()
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &SinkCounts) -> SinkCounts {
        SinkCounts {
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, n)| n - earlier.slots.get(i).copied().unwrap_or(0))
                .collect(),
        }
    }
}

/// The sink program, attached (native XDP) while this lives.
pub struct Sink {
    _ebpf: Ebpf,
    counts: PerCpuArray<MapData, u64>,
}

impl Sink {
    /// Loads the sink program and attaches it to `ifname` in `ns`, in native mode (generic
    /// mode would build an skb per frame and could make the sink the bottleneck).
    pub fn attach(ns: &Netns, ifname: &str) -> Result<Sink> {
        let ifname = ifname.to_string();
        ns.run_in(move || -> Result<Sink> {
            let mut ebpf = EbpfLoader::new().load(LAB_EBPF_OBJECT)?;
            let prog: &mut Xdp = xdp_program_mut(&mut ebpf, bench::SINK_PROGRAM)?;
            let program = bench::SINK_PROGRAM;
            prog.load().map_err(BenchError::program(program))?;
            prog.attach(&ifname, XdpMode::Driver)
                .map_err(BenchError::program(program))?;
            let map = ebpf
                .take_map(bench::SINK_MAP)
                .ok_or(BenchError::MissingMap(bench::SINK_MAP))?;
            let counts = PerCpuArray::try_from(map).map_err(BenchError::map(bench::SINK_MAP))?;
            Ok(Sink {
                _ebpf: ebpf,
                counts,
            })
        })?
    }

    pub fn counts(&self) -> Result<SinkCounts> {
        let slots = (0..bench::SINK_SLOTS)
            .map(|i| {
                self.counts
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(BenchError::map(bench::SINK_MAP))
            })
            .collect::<Result<Vec<u64>>>()?;
        Ok(SinkCounts { slots })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_slots_are_the_vnis_below_the_slot_count() {
        assert_eq!(bench::sink_slot(0), 0);
        assert_eq!(bench::sink_slot(11), 11);
        assert_eq!(
            bench::sink_slot(bench::SINK_SLOTS - 1),
            bench::SINK_SLOTS - 1
        );
        assert_eq!(bench::sink_slot(bench::SINK_SLOTS), 0);
        assert_eq!(bench::sink_slot(dwcp_common::wire::VNI_MAX), 0);
    }

    #[test]
    fn counts_by_vni_and_differences() {
        let mut a = SinkCounts {
            slots: vec![0; bench::SINK_SLOTS as usize],
        };
        a.slots[11] = 10;
        a.slots[0] = 1;
        let mut b = a.clone();
        b.slots[11] = 25;
        b.slots[12] = 7;
        b.slots[0] = 3;
        let d = b.since(&a);
        assert_eq!(d.vni(11), 15);
        assert_eq!(d.vni(12), 7);
        assert_eq!(d.vni(0), 0);
        assert_eq!(d.vni(1 << 20), 0);
        assert_eq!(d.other(), 2);
        assert_eq!(d.vxlan(), 22);
        assert_eq!(d.total(), 24);
    }
}
