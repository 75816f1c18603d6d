//! The lab's XDP programs: the forwarding benchmark's traffic source and sink. Never part of
//! a gateway's object (`dwcp-ebpf`); `dwcp-lab`'s build.rs builds and embeds this one.
#![no_std]
#![no_main]

mod bench;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Forwarding benchmark's traffic source (run through BPF_PROG_TEST_RUN with live frames).
#[xdp]
pub fn dwcp_bench_tx(ctx: XdpContext) -> u32 {
    bench::bench_tx(&ctx)
}

/// Forwarding benchmark's sink: counts VXLAN frames per VNI and drops everything.
#[xdp]
pub fn dwcp_bench_sink(ctx: XdpContext) -> u32 {
    bench::bench_sink(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
