//! Underlay ingress: traffic arriving from other gateways.
//!
//! Probe requests are reflected in place (`XDP_TX`), probe replies become link state (RTT,
//! jitter, liveness) and are consumed, VXLAN for a VNI of ours is decapsulated and delivered
//! to the LAN. Everything else goes up to the kernel untouched.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use dwcp_common::{probe::*, wire::*, LinkState, Reason, MAX_LINKS};

use crate::{
    headers::{csum_replace2, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, VxlanHdr},
    lan,
    maps::*,
    stats::count,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
pub fn underlay_ingress(ctx: &XdpContext) -> u32 {
    match try_underlay(ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn try_underlay(ctx: &XdpContext) -> Result<u32, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayPassOther)?;
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Err(Reason::UnderlayPassOther);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::UnderlayPassMalformed)?;
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 || ip.proto != IPPROTO_UDP || u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Err(Reason::UnderlayPassOther);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot = u16::from_be(ip.tot_len) as usize;
    if ihl < IPV4_HLEN || tot < ihl + UDP_HLEN || tot > ctx.data_end() - ctx.data() - ETH_HLEN {
        return Err(Reason::UnderlayPassMalformed);
    }
    let l4 = ETH_HLEN + ihl;
    let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(Reason::UnderlayPassMalformed)?;
    let dport = u16::from_be(unsafe { (*udp).dport });
    if dport == PROBE_PORT {
        probe(ctx, l4)
    } else if dport == VXLAN_PORT {
        decap(ctx, l4, ip.src)
    } else {
        Err(Reason::UnderlayPassOther)
    }
}

#[inline(always)]
fn be64(b: &[u8; PROBE_LEN], at: usize) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < 8 {
        v = (v << 8) | b[at + i] as u64;
        i += 1;
    }
    v
}

#[inline(always)]
fn probe(ctx: &XdpContext, l4: usize) -> Result<u32, Reason> {
    let body: *mut [u8; PROBE_LEN] = ptr_at(ctx, l4 + UDP_HLEN).ok_or(Reason::UnderlayProbeBad)?;
    let b = unsafe { &mut *body };
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != PROBE_MAGIC || b[4] != PROBE_VERSION {
        return Err(Reason::UnderlayProbeBad);
    }
    let link_id = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let now = unsafe { bpf_ktime_get_ns() };
    match b[5] {
        PROBE_KIND_REQUEST => {
            reflect(ctx, l4, b, now)?;
            if let Some(st) = LINK_STATE.get_ptr_mut(link_id) {
                unsafe { (*st).reflected += 1 };
            }
            count(Reason::UnderlayProbeReflected);
            Ok(xdp_action::XDP_TX)
        }
        PROBE_KIND_REPLY => {
            if link_id >= MAX_LINKS {
                return Err(Reason::UnderlayProbeBad);
            }
            let tx_ns = be64(b, 16);
            if tx_ns == 0 || tx_ns > now {
                return Err(Reason::UnderlayProbeBad);
            }
            let seq = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
            let detect_ns = LINK_CONFIG.get(link_id).map(|c| c.detect_ns).unwrap_or(0);
            let st = LINK_STATE
                .get_ptr_mut(link_id)
                .ok_or(Reason::UnderlayProbeBad)?;
            measure(unsafe { &mut *st }, now, now - tx_ns, seq, detect_ns);
            count(Reason::UnderlayProbeReply);
            Ok(xdp_action::XDP_DROP)
        }
        _ => Err(Reason::UnderlayProbeBad),
    }
}

/// Turns one reply into link state. RTT smoothing as TCP (RFC 6298, alpha 1/8), jitter as
/// RTP (RFC 3550: J += (|D| - J) / 16, D the change of RTT between consecutive replies).
#[inline(always)]
fn measure(st: &mut LinkState, now: u64, rtt: u64, seq: u32, detect_ns: u64) {
    let gap = st.last_reply_ns == 0 || now - st.last_reply_ns > detect_ns;
    st.good_streak = if gap {
        1
    } else {
        st.good_streak.saturating_add(1)
    };
    if st.srtt_ns == 0 {
        st.srtt_ns = rtt;
    } else {
        st.srtt_ns = st.srtt_ns - (st.srtt_ns >> 3) + (rtt >> 3);
        let d = rtt.abs_diff(st.last_rtt_ns);
        if d > st.jitter_ns {
            st.jitter_ns += (d - st.jitter_ns) >> 4;
        } else {
            st.jitter_ns -= (st.jitter_ns - d) >> 4;
        }
    }
    st.last_rtt_ns = rtt;
    st.last_seq = seq;
    st.replies += 1;
    st.last_reply_ns = now;
}

/// Turns a request around in place: swapped MACs, IPs and ports (the IPv4 checksum is a sum,
/// unchanged by the swap), kind = reply, our receive time filled in, UDP checksum cleared.
#[inline(always)]
fn reflect(ctx: &XdpContext, l4: usize, b: &mut [u8; PROBE_LEN], now: u64) -> Result<(), Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayProbeBad)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::UnderlayProbeBad)?;
    let udp: *mut UdpHdr = ptr_at(ctx, l4).ok_or(Reason::UnderlayProbeBad)?;
    unsafe {
        core::mem::swap(&mut (*eth).dst, &mut (*eth).src);
        core::mem::swap(&mut (*ip).src, &mut (*ip).dst);
        core::mem::swap(&mut (*udp).sport, &mut (*udp).dport);
        (*udp).check = 0;
    }
    b[5] = PROBE_KIND_REPLY;
    let rx = now.to_be_bytes();
    let mut i = 0;
    while i < 8 {
        b[24 + i] = rx[i];
        i += 1;
    }
    Ok(())
}

/// Decapsulates VXLAN for a VNI of ours. Transit: when the inner destination has a route in
/// this gateway's tables (another region), the LAN pipeline re-encapsulates it towards the next
/// gateway. Local delivery: the kernel's FIB and neighbour table (`bpf_fib_lookup`) give the
/// LAN port and MACs and we redirect; while the neighbour is not resolved, the inner packet
/// goes up the stack addressed to us and the kernel routes it (and resolves the neighbour).
/// `from` is the outer source address (the previous gateway): transit never sends a packet
/// back to it (split horizon; see `lan::forward`).
#[inline(always)]
fn decap(ctx: &XdpContext, l4: usize, from: u32) -> Result<u32, Reason> {
    let vx: *const VxlanHdr = ptr_at(ctx, l4 + UDP_HLEN).ok_or(Reason::UnderlayPassMalformed)?;
    let (flags, vni) = unsafe { ((*vx).flags, u32::from_be((*vx).vni) >> 8) };
    if flags & VXLAN_FLAG_VNI == 0 {
        return Err(Reason::UnderlayPassMalformed);
    }
    // A VNI we do not terminate may belong to a kernel VXLAN device: leave it to the kernel.
    if unsafe { VNIS.get(vni) }.is_none() {
        return Err(Reason::UnderlayPassUnknownVni);
    }
    let inner_off = l4 + UDP_HLEN + VXLAN_HLEN;
    let outer: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayPassMalformed)?;
    let (our_mac, peer_mac) = unsafe { ((*outer).dst, (*outer).src) };
    // The inner frame must be there before we strip anything.
    let _inner: *const EthHdr = ptr_at(ctx, inner_off).ok_or(Reason::UnderlayPassMalformed)?;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, inner_off as i32) } != 0 {
        return Err(Reason::UnderlayPassMalformed);
    }

    match lan::forward(ctx, from) {
        Ok(action) => {
            count(Reason::UnderlayTransit);
            return Ok(action);
        }
        // Not for another region: deliver here.
        Err(Reason::LanPassNoRoute) | Err(Reason::LanPassNotReady) => {}
        // A transit packet the fast path cannot send on: the kernel gets it (counted).
        Err(reason) => {
            count(reason);
            return pass_up(ctx, our_mac, peer_mac);
        }
    }

    let inner: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayPassMalformed)?;
    let inner_proto = unsafe { (*inner).proto };
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let v6 = if inner_proto == ETH_P_IP.to_be() {
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::UnderlayPassMalformed)?;
        let ip = unsafe { &*ip };
        fib.family = AF_INET;
        fib.l4_protocol = ip.proto;
        fib.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
        fib.__bindgen_anon_2.tos = ip.tos;
        fib.__bindgen_anon_3.ipv4_src = ip.src;
        fib.__bindgen_anon_4.ipv4_dst = ip.dst;
        false
    } else if inner_proto == ETH_P_IPV6.to_be() {
        let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::UnderlayPassMalformed)?;
        let ip = unsafe { &*ip };
        fib.family = AF_INET6;
        fib.l4_protocol = ip.nexthdr;
        fib.__bindgen_anon_1.tot_len = u16::from_be(ip.payload_len) + IPV6_HLEN as u16;
        fib.__bindgen_anon_3.ipv6_src = ip.src;
        fib.__bindgen_anon_4.ipv6_dst = ip.dst;
        true
    } else {
        return pass_up(ctx, our_mac, peer_mac);
    };
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && ttl_decrement(ctx, v6) {
        let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayPassMalformed)?;
        unsafe {
            (*eth).dst = fib.dmac;
            (*eth).src = fib.smac;
        }
        if TX_PORTS.redirect(fib.ifindex, 0).is_ok() {
            count(Reason::UnderlayDecapRedirected);
            return Ok(xdp_action::XDP_REDIRECT);
        }
    }
    pass_up(ctx, our_mac, peer_mac)
}

/// Hands the decapsulated frame to the kernel, addressed to us so that it routes it.
#[inline(always)]
fn pass_up(ctx: &XdpContext, our_mac: [u8; 6], peer_mac: [u8; 6]) -> Result<u32, Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayPassMalformed)?;
    unsafe {
        (*eth).dst = our_mac;
        (*eth).src = peer_mac;
    }
    count(Reason::UnderlayDecapPassed);
    Ok(xdp_action::XDP_PASS)
}

/// Decrements the TTL / hop limit of the decapsulated packet; false if it would expire (then
/// the kernel gets it and answers with the ICMP error).
#[inline(always)]
fn ttl_decrement(ctx: &XdpContext, v6: bool) -> bool {
    if v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr, _>(ctx, ETH_HLEN) else {
            return false;
        };
        let ip = unsafe { &mut *ip };
        if ip.hop_limit <= 1 {
            return false;
        }
        ip.hop_limit -= 1;
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr, _>(ctx, ETH_HLEN) else {
            return false;
        };
        let words = ip as *mut u16;
        let ip = unsafe { &mut *ip };
        if ip.ttl <= 1 {
            return false;
        }
        let old = unsafe { *words.add(4) };
        ip.ttl -= 1;
        ip.check = csum_replace2(ip.check, old, unsafe { *words.add(4) });
    }
    true
}
