//! The lab's XDP programs: the forwarding benchmark's traffic source and sink, and `XDP_PASS`.
//! Never part of a gateway's object (`dwcp-ebpf`); `dwcp-lab`'s build.rs builds and embeds
//! this one. Names and constants shared with the lab are in this crate's lib (`lib.rs`).
#![no_std]
#![no_main]

mod traffic;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Forwarding benchmark's traffic source (run through BPF_PROG_TEST_RUN with live frames).
#[xdp]
pub fn dwcp_bench_tx(ctx: XdpContext) -> u32 {
    traffic::bench_tx(&ctx)
}

/// Forwarding benchmark's sink: counts VXLAN frames per VNI and drops everything.
#[xdp]
pub fn dwcp_bench_sink(ctx: XdpContext) -> u32 {
    traffic::bench_sink(&ctx)
}

/// `XDP_PASS` only (`dwcp_lab_ebpf::PASS_PROGRAM`).
#[xdp]
pub fn dwcp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
