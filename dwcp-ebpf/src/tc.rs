//! tc ingress on the LAN device: the second half of the WireGuard hand-off.
//!
//! XDP cannot set `skb->mark` (there is no skb yet). For a hand-off next hop the LAN XDP
//! program records the next hop's mark for the packet's flow in `HANDOFF_FLOWS` and passes
//! the packet up; this program, which runs on the same packet once the kernel has built its
//! skb, parses the flow with the same parser, finds its mark and sets `skb->mark`. The
//! kernel's policy routing (`ip rule fwmark M lookup T`) then sends the packet into the
//! WireGuard device.
//!
//! Everything else passes untouched (`TC_ACT_OK`): not IP, malformed, or a flow without a
//! hand-off entry. The skb's headers are pulled into its linear part first, so a paged skb is
//! parsed as well as a linear one.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dwcp_common::{HandoffFlow, Reason};

use crate::{
    maps::HANDOFF_FLOWS,
    parse::{parse, HEADERS_DEPTH},
    stats::count,
};

const HEADERS: u32 = HEADERS_DEPTH as u32;

#[inline(always)]
pub fn lan_tc(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    if ctx
        .pull_data(if len < HEADERS { len } else { HEADERS })
        .is_err()
    {
        return TC_ACT_OK;
    }
    let Ok(p) = parse(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: a plain read of the map value the lookup returned.
    if let Some(mark) = unsafe { HANDOFF_FLOWS.get(HandoffFlow::of(&p.key)) } {
        ctx.set_mark(*mark);
        count(Reason::HandoffMarked);
    }
    TC_ACT_OK
}
