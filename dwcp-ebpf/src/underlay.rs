//! Underlay ingress: traffic arriving from other gateways.
//!
//! The underlay is hostile: nothing is taken for being well-formed, and a packet is taken as
//! a link's only when it comes from the link's peer, on the link's interface (`LINK_CONFIG`).
//! Probe requests of a peer are reflected in place (`XDP_TX`, rate-limited), replies to our
//! own requests (their token says so) become link state (RTT, jitter, liveness) and are
//! consumed, VXLAN for a VNI of ours is decapsulated and delivered to the LAN or sent on to
//! another region. What claims to be ours but is not is dropped and counted; everything else
//! goes up to the kernel untouched.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use dwcp_common::{probe::*, wire::*, NeighbourKey, Reason, NH_F_HANDOFF, NH_F_VALID};

use crate::{
    headers::{csum_replace2, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, VxlanHdr},
    lan,
    maps::*,
    probe::{self, Taken},
    stats::{count, count_nexthop},
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

/// The packet's verdict after `reason` was counted: XDP_DROP.
#[inline(always)]
fn dropped(reason: Reason) -> Result<u32, Reason> {
    count(reason);
    Ok(xdp_action::XDP_DROP)
}

/// Offset of the UDP header: the fast path's own packets never carry IPv4 options.
const L4: usize = ETH_HLEN + IPV4_HLEN;

#[inline(always)]
fn try_underlay(ctx: &XdpContext) -> Result<u32, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayPassOther)?;
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Err(Reason::UnderlayPassOther);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::UnderlayPassMalformed)?;
    let ip = unsafe { &*ip };
    if ip.vihl != 0x45 || ip.proto != IPPROTO_UDP || u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Err(Reason::UnderlayPassOther);
    }
    let udp: *const UdpHdr = ptr_at(ctx, L4).ok_or(Reason::UnderlayPassMalformed)?;
    let (dport, udp_len) = unsafe { (u16::from_be((*udp).dport), u16::from_be((*udp).len)) };
    if dport != PROBE_PORT && dport != VXLAN_PORT {
        return Err(Reason::UnderlayPassOther);
    }
    // Probes and VXLAN are never padded: every length must agree with the frame exactly.
    let tot = u16::from_be(ip.tot_len) as usize;
    if tot != ctx.data_end() - ctx.data() - ETH_HLEN || udp_len as usize != tot - IPV4_HLEN {
        return Err(Reason::UnderlayPassMalformed);
    }
    if dport == PROBE_PORT {
        probe(ctx, ip)
    } else {
        decap(ctx, ip)
    }
}

/// A probe is taken only from its link's peer, to our address on the link, on the link's
/// interface, with the link's TTL (GTSM); a request is then reflected (rate-limited), a reply
/// measured if its token is ours and its send time fresh (`probe::take`).
#[inline(always)]
fn probe(ctx: &XdpContext, ip: &Ipv4Hdr) -> Result<u32, Reason> {
    let (body, taken) = probe::take(ctx, L4, ctx.ingress_ifindex() as u32, ip)?;
    if taken != Taken::Reflect {
        return Ok(xdp_action::XDP_DROP);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayProbeBad)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::UnderlayProbeBad)?;
    let udp: *mut UdpHdr = ptr_at(ctx, L4).ok_or(Reason::UnderlayProbeBad)?;
    // SAFETY: bounds-checked pointers into the packet.
    unsafe {
        core::mem::swap(&mut (*eth).dst, &mut (*eth).src);
        probe::turn_around(&mut *ip, &mut *udp, &mut *body);
    }
    count(Reason::UnderlayProbeReflected);
    Ok(xdp_action::XDP_TX)
}

/// Takes VXLAN for a VNI of ours, when it comes from the VNI's link: from its peer, on its
/// interface (anything else is dropped). Transit: a packet whose source route is not over
/// goes on to the exit the route names ([`transit`]). Local delivery (the route is over):
/// the packet is decapsulated, and the kernel's FIB and neighbour table (`bpf_fib_lookup`)
/// give the port and MACs; we redirect only to a LAN port; while the neighbour is not
/// resolved, the inner packet goes up the stack addressed to us and the kernel routes it (and
/// resolves the neighbour).
#[inline(always)]
fn decap(ctx: &XdpContext, ip: &Ipv4Hdr) -> Result<u32, Reason> {
    let vx: *const VxlanHdr = ptr_at(ctx, L4 + UDP_HLEN).ok_or(Reason::UnderlayPassMalformed)?;
    let (flags, vni_word, reserved) =
        unsafe { ((*vx).flags, u32::from_be((*vx).vni), (*vx).reserved) };
    let vni = vni_word >> 8;
    let route = [reserved[0], reserved[1], reserved[2], vni_word as u8];
    if flags & VXLAN_FLAG_VNI == 0 {
        return Err(Reason::UnderlayPassMalformed);
    }
    // A VNI we do not terminate may belong to a kernel VXLAN device: the kernel's (and its
    // firewall's) to take or refuse.
    let Some(entry) = (unsafe { VNIS.get(vni) }) else {
        return Err(Reason::UnderlayPassUnknownVni);
    };
    let from = ip.src;
    match LINK_CONFIG.get(entry.link_id) {
        Some(cfg) if from == u32::from_ne_bytes(cfg.peer_ip4) => {
            if ctx.ingress_ifindex() as u32 != cfg.ifindex {
                return dropped(Reason::UnderlayDecapWrongInterface);
            }
        }
        _ => return dropped(Reason::UnderlayDecapWrongSource),
    }
    let inner_off = L4 + UDP_HLEN + VXLAN_HLEN;
    let outer: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::UnderlayPassMalformed)?;
    let (our_mac, peer_mac) = unsafe { ((*outer).dst, (*outer).src) };
    // The inner frame must be there before we send it on or strip anything.
    let _inner: *const EthHdr = ptr_at(ctx, inner_off).ok_or(Reason::UnderlayPassMalformed)?;
    if route[0] != 0 {
        return transit(ctx, ip.tos, route, entry.link_id);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, inner_off as i32) } != 0 {
        return Err(Reason::UnderlayPassMalformed);
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
    // A route out of a port that is not a LAN port would send the peer's packet on without
    // its tunnel (back to the underlay): never, neither from here nor through the kernel.
    let routed = rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64;
    if routed && unsafe { LAN_PORTS.get(fib.ifindex) }.is_none() {
        return dropped(Reason::UnderlayDecapNotLan);
    }
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

/// Sends a transit packet on along its source route: out of the exit its first byte names,
/// with that byte taken off the route. Only the outer headers are rewritten; the inner frame
/// and the outer UDP source port (the flow's entropy) stay. A transit gateway never picks a
/// path of its own, so gateways whose views differ during convergence cannot pass a packet
/// around in a circle: when the exit cannot carry, the packet is dropped, and the ingress
/// gateway moves the flow once the dead link's record reaches it.
#[inline(always)]
fn transit(ctx: &XdpContext, tos: u8, route: [u8; 4], came_on: u32) -> Result<u32, Reason> {
    let Some(&link) = (unsafe { TRANSIT_EXITS.get(route[0] as u32) }) else {
        return dropped(Reason::TransitNoExit);
    };
    // A route back over the link it came in on is no path an ingress computes.
    if link == came_on {
        return dropped(Reason::TransitNoExit);
    }
    let Some(nh) = NEXTHOPS.get(link) else {
        return dropped(Reason::TransitNoExit);
    };
    if nh.flags & NH_F_VALID == 0 {
        return dropped(Reason::TransitNoExit);
    }
    // XDP cannot encrypt, and the kernel would route the packet unmarked: never in clear.
    if nh.flags & NH_F_HANDOFF != 0 {
        return dropped(Reason::HandoffTransit);
    }
    let reported_down = LINKS_DOWN.get(0).is_some_and(|d| d.contains(link));
    if reported_down || lan::link_liveness(link, &mut lan::Clock(0)) == lan::Liveness::Dead {
        return dropped(Reason::TransitExitDown);
    }
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len - ETH_HLEN > nh.mtu as usize {
        return dropped(Reason::TransitTooBig);
    }
    let Some(neigh) = (unsafe {
        NEIGHBOURS.get(NeighbourKey {
            ifindex: nh.ifindex,
            ip4: nh.via_ip4,
        })
    }) else {
        return dropped(Reason::TransitNoNeighbour);
    };
    let udp: *const UdpHdr = ptr_at(ctx, L4).ok_or(Reason::UnderlayPassMalformed)?;
    let sport = u16::from_be(unsafe { (*udp).sport });
    if lan::write_outer(ctx, nh, neigh, sport, tos, next_route(route)).is_err() {
        return dropped(Reason::UnderlayPassMalformed);
    }
    count_nexthop(link, (frame_len - VXLAN_ENCAP_LEN) as u64);
    match TX_PORTS.redirect(nh.ifindex, 0) {
        Ok(action) => {
            count(Reason::UnderlayTransit);
            Ok(action)
        }
        Err(_) => dropped(Reason::LanRedirectFailed),
    }
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
