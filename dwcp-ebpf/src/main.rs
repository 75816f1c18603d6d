//! dwcp's XDP fast path. See `lan` (towards other regions) and `underlay` (from them).
#![no_std]
#![no_main]

use dwcp_ebpf::headers;

mod lan;
mod maps;
mod parse;
mod probe;
mod stats;
mod tc;
mod underlay;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// LAN ingress: classify, mark, hash, encapsulate, redirect.
#[xdp]
pub fn dwcp_lan(ctx: XdpContext) -> u32 {
    lan::lan_ingress(&ctx)
}

/// Underlay ingress: probes and decapsulation.
#[xdp]
pub fn dwcp_underlay(ctx: XdpContext) -> u32 {
    underlay::underlay_ingress(&ctx)
}

/// tc ingress on the LAN device: sets `skb->mark` to the hand-off mark the LAN program
/// recorded for the packet's flow (see `tc`).
#[classifier]
pub fn dwcp_lan_tc(ctx: TcContext) -> i32 {
    tc::lan_tc(&ctx)
}

/// tc ingress on a WireGuard device: probes inside the tunnel (see `tc`).
#[classifier]
pub fn dwcp_wg_tc(ctx: TcContext) -> i32 {
    tc::wg_probe_tc(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
