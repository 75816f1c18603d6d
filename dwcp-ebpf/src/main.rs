//! dwcp's XDP fast path. See `lan` (towards other regions) and `underlay` (from them).
#![no_std]
#![no_main]

use dwcp_ebpf::headers;

mod lan;
mod maps;
mod parse;
mod stats;
mod tc;
mod underlay;

use aya_ebpf::{
    bindings::xdp_action,
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

/// `XDP_PASS` only: the benchmark baseline, and the program for the receiving end of a veth
/// (native XDP redirects into a veth are only delivered when its peer runs XDP).
#[xdp]
pub fn dwcp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
