//! Traffic source and sink of the forwarding benchmark. Not part of the fast path: no gateway
//! attaches them, and they share no map with it.
use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    macros::btf_map,
    programs::XdpContext,
};
use dwcp_common::wire::*;
use dwcp_lab_ebpf::bench::{sink_slot, source_port, FrameHeaders, SINK_SLOTS, SPORT_OFFSET};

use dwcp_ebpf::headers::{ptr_at, EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr};

#[btf_map]
pub static BENCH_TX: PerCpuArray<u64, 1> = PerCpuArray::new();

#[btf_map]
pub static BENCH_TEMPLATE: Array<FrameHeaders, 1> = Array::new();

#[btf_map]
pub static BENCH_SINK: PerCpuArray<u64, { SINK_SLOTS as usize }> = PerCpuArray::new();

/// Source: restores the frame's headers from the template (live mode recycles pages that a
/// forwarder has rewritten), numbers the frame, gives it its flow's UDP source port and sends
/// it back out of the interface it was "received" on. The template has a zero UDP checksum
/// (optional in IPv4), so changing the port needs no checksum update.
#[inline(always)]
pub fn bench_tx(ctx: &XdpContext) -> u32 {
    let Some(count) = BENCH_TX.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(template) = BENCH_TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(headers) = ptr_at::<FrameHeaders, _>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot; the headers were bounds-checked against data_end, and the port
    // lies inside them.
    unsafe {
        *headers = *template;
        let seq = *count;
        *count = seq + 1;
        let sport = (headers as *mut u8).add(SPORT_OFFSET) as *mut u16;
        sport.write_unaligned(source_port(seq).to_be());
    }
    xdp_action::XDP_TX
}

/// Sink: counts the frame under its VXLAN VNI (slot 0 for anything else) and drops it.
#[inline(always)]
pub fn bench_sink(ctx: &XdpContext) -> u32 {
    let slot = sink_slot(vxlan_vni(ctx).unwrap_or(0));
    if let Some(n) = BENCH_SINK.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 };
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn vxlan_vni(ctx: &XdpContext) -> Option<u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    let udp: *const UdpHdr = ptr_at(ctx, ETH_HLEN + IPV4_HLEN)?;
    let vx: *const VxlanHdr = ptr_at(ctx, ETH_HLEN + IPV4_HLEN + UDP_HLEN)?;
    // SAFETY: all four headers were bounds-checked above.
    unsafe {
        if (*eth).proto != ETH_P_IP.to_be()
            || (*ip).vihl != 0x45
            || (*ip).proto != IPPROTO_UDP
            || (*udp).dport != VXLAN_PORT.to_be()
            || (*vx).flags & VXLAN_FLAG_VNI == 0
        {
            return None;
        }
        Some(u32::from_be((*vx).vni) >> 8)
    }
}
