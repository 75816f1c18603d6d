//! tc ingress on the LAN device: the second half of the WireGuard hand-off.
//!
//! XDP cannot set `skb->mark` (there is no skb yet). For a hand-off next hop the LAN XDP
//! program leaves a [`HandoffMeta`] (magic + mark) in the XDP metadata area in front of the
//! packet; the kernel keeps that area when it builds the skb (`skb_metadata_set`), and this
//! program, which runs on the same packet right after, reads it at `skb->data_meta`, checks
//! the magic and copies the mark to `skb->mark`. The kernel's policy routing
//! (`ip rule fwmark M lookup T`) then sends the packet into the WireGuard device.
//!
//! Everything else passes untouched (`TC_ACT_OK`): no metadata, too little of it, or no magic.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dwcp_common::{HandoffMeta, Reason, HANDOFF_META_MAGIC};

use crate::stats::count;

#[inline(always)]
pub fn lan_tc(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the context the kernel passed in (data_meta / data are valid fields
    // for tc programs; the verifier turns them into the skb's pointers).
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + core::mem::size_of::<HandoffMeta>() > data {
        return TC_ACT_OK;
    }
    let m = meta as *const HandoffMeta;
    // SAFETY: bounds-checked against `data` just above.
    let (magic, mark) = unsafe { ((*m).magic, (*m).mark) };
    if magic == HANDOFF_META_MAGIC {
        ctx.set_mark(mark);
        count(Reason::HandoffMarked);
    }
    TC_ACT_OK
}
