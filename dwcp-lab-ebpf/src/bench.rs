//! Traffic source and sink of the forwarding benchmark (`cargo xtask bench forwarding`).
//! They are not part of the fast path: a gateway never attaches them.
use dwcp_common::wire::{ETH_HLEN, IPV4_HLEN, UDP_HLEN};

/// XDP program run in the source namespace through BPF_PROG_TEST_RUN with live frames: gives
/// each frame the next UDP source port of `FLOWS` and sends it out again (`XDP_TX`).
pub const TX_PROGRAM: &str = "dwcp_bench_tx";
/// XDP program on the receiving end of the underlay: counts VXLAN frames per VNI and drops
/// everything, so the far side costs as little as possible and is never the bottleneck.
pub const SINK_PROGRAM: &str = "dwcp_bench_sink";

/// Per-CPU count of frames the source program has emitted (one slot).
pub const TX_MAP: &str = "BENCH_TX";
/// The source frame's headers, which the source program writes into every frame it sends
/// (one [`FrameHeaders`] entry).
pub const TEMPLATE_MAP: &str = "BENCH_TEMPLATE";
/// Per-CPU counts of frames seen by the sink, indexed by [`sink_slot`].
pub const SINK_MAP: &str = "BENCH_SINK";

/// Slots of the sink's counters: slot `v` counts VXLAN frames with VNI `v` for `v` in
/// `1..SINK_SLOTS`; slot 0 counts everything else (not VXLAN, or another VNI).
pub const SINK_SLOTS: u32 = 64;

/// Distinct flows of the source: UDP source ports `SPORT_BASE..SPORT_BASE + FLOWS`.
/// A power of two, so the program's modulo is a mask.
pub const FLOWS: u32 = 256;
pub const SPORT_BASE: u16 = 10_000;

/// Offset of the UDP source port in the source's frames (Ethernet + IPv4 without options).
pub const SPORT_OFFSET: usize = ETH_HLEN + IPV4_HLEN;

/// Ethernet + IPv4 (no options) + UDP headers of the source's frames.
pub const HEADERS_LEN: usize = SPORT_OFFSET + UDP_HLEN;

/// The headers the source program copies into every frame. BPF_PROG_TEST_RUN's live mode
/// recycles its pages without restoring their contents, and the forwarders rewrite headers
/// in place (TTL, DSCP, the inner Ethernet header that encapsulation leaves behind), so a
/// recycled frame would otherwise come back with TTL 63, 62, ... and a foreign destination
/// MAC. A plain byte array: aya reads and writes it as a map value without an impl here.
pub type FrameHeaders = [u8; HEADERS_LEN];

/// The sink's slot of a VXLAN frame with VNI `vni`.
pub const fn sink_slot(vni: u32) -> u32 {
    if vni > 0 && vni < SINK_SLOTS {
        vni
    } else {
        0
    }
}

/// The UDP source port of the source's `seq`-th frame, `seq` counted per CPU (`TX_MAP`): the
/// frames one CPU sends in a row cycle through the flows in order.
pub const fn source_port(seq: u64) -> u16 {
    SPORT_BASE + (seq % FLOWS as u64) as u16
}
