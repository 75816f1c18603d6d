//! LAN ingress: traffic from this region towards other regions.
//!
//! parse -> route (LPM) -> next-hop group -> flow hash -> bucket -> live member -> classify
//! -> VXLAN encapsulate (+ DSCP rewrite, TTL decrement of the inner packet) -> redirect.
//! Every check that can fail happens before the packet is touched, so a pass-up is
//! byte-for-byte the packet that arrived. Only frames addressed to the LAN port's own MAC
//! are forwarded (`LAN_PORTS`); the rest (broadcasts, frames for other hosts) is the kernel's.
//!
//! A hand-off next hop (`NH_F_HANDOFF`, a WireGuard tunnel) is the exception to "encapsulate
//! and redirect": XDP cannot encrypt, so the packet gets its DSCP, the next hop's mark is
//! recorded for the packet's flow in `HANDOFF_FLOWS` ([`HandoffFlow`]) and the packet is
//! passed up; the tc ingress program (`tc.rs`) finds the flow's mark, sets `skb->mark`, and
//! the kernel's policy routing does the rest.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use dwcp_common::{
    bucket_of, flow_hash, group_slot, wire::*, ClassifierKey, FlowSampleRecord, GatewayConfig,
    HandoffFlow, LanPort, LinkConfig, Neighbour, NeighbourKey, NextHop, NextHopTable, PolicerKey,
    QosPolicy, Reason, Route, CLASSIFY_DST_PORT, CLASSIFY_SRC_PORT, CONFIG_F_POLICING,
    CONFIG_F_READY, LINKS_DOWN_WORDS, LINK_F_ADMIN_DOWN, LINK_F_MONITORED, MAX_GROUP_MEMBERS,
    MAX_PATH_LINKS, NHG_BUCKETS, NH_F_HANDOFF, NH_F_VALID, POLICER_ANY_GROUP, POLICE_DROP,
    QOS_F_REWRITE,
};

use crate::{
    headers::{
        bounded, csum_fold, csum_replace2, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, VxlanHdr,
    },
    maps::*,
    parse::{parse, Parsed},
    stats::{count, count_class, count_nexthop},
};

const BEST_EFFORT: u8 = 4;

#[inline(always)]
pub fn lan_ingress(ctx: &XdpContext) -> u32 {
    match addressed_to_port(ctx).and_then(|()| forward(ctx)) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            xdp_action::XDP_PASS
        }
    }
}

/// Whether the frame is addressed to the MAC of the LAN port it arrived on.
#[inline(always)]
fn addressed_to_port(ctx: &XdpContext) -> Result<(), Reason> {
    let port: &LanPort =
        unsafe { LAN_PORTS.get(ctx.ingress_ifindex() as u32) }.ok_or(Reason::LanPassOtherMac)?;
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::LanPassOtherMac)?;
    let dst = unsafe { (*eth).dst };
    // Compared as two integers: a byte array comparison may become a memcmp call, which BPF
    // does not have.
    let m = port.mac;
    if u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]])
        != u32::from_ne_bytes([m[0], m[1], m[2], m[3]])
        || u16::from_ne_bytes([dst[4], dst[5]]) != u16::from_ne_bytes([m[4], m[5]])
    {
        return Err(Reason::LanPassOtherMac);
    }
    Ok(())
}

/// Lazily read clock: only packets whose next hop is monitored pay for it.
pub(crate) struct Clock(pub(crate) u64);

impl Clock {
    #[inline(always)]
    pub(crate) fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = unsafe { bpf_ktime_get_ns() };
        }
        self.0
    }
}

/// What the fast path knows of a next hop's link.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Usable,
    /// Answering (last reply younger than `detect_ns`) but still inside the hold-down after
    /// an outage (fewer than `up_after` replies in a row).
    HeldDown,
    Dead,
}

/// The kernel's liveness rule (the agent mirrors it): a monitored link is usable while its
/// last probe reply is younger than `detect_ns` and, after an outage, once `up_after`
/// consecutive replies came back (hysteresis against flapping).
#[inline(always)]
pub(crate) fn link_liveness(link_id: u32, clock: &mut Clock) -> Liveness {
    let Some(cfg) = LINK_CONFIG.get(link_id) else {
        return Liveness::Usable;
    };
    let cfg: &LinkConfig = cfg;
    if cfg.flags & LINK_F_ADMIN_DOWN != 0 {
        return Liveness::Dead;
    }
    if cfg.flags & LINK_F_MONITORED == 0 {
        return Liveness::Usable;
    }
    let Some(st) = LINK_STATE.get(link_id) else {
        return Liveness::Dead;
    };
    let last = st.last_reply_ns;
    if last == 0 || clock.now().saturating_sub(last) > cfg.detect_ns {
        return Liveness::Dead;
    }
    if st.good_streak < cfg.up_after {
        Liveness::HeldDown
    } else {
        Liveness::Usable
    }
}

/// The bucket's member if its path is usable, else the next usable active member in order,
/// else the first usable standby: flows of live members never move, a dead member's flows
/// spread deterministically, and secondary paths carry traffic only when no active one can.
/// A member's path is usable when its first link (ours) is live by our probes and no link of
/// the whole path is down in `LINKS_DOWN` (a remote failure, known from the link-state
/// records before any route is recomputed).
/// When no member is usable, the first one that answers probes but is still held down takes
/// the flow: the hold-down keeps flows off a flapping link while another can carry them, and
/// with none left it would only turn a link that works into a black hole (after a stall of
/// the prober, every link restarts its streak at once).
#[inline(always)]
fn pick_nexthop(
    table: &NextHopTable,
    member: u32,
    clock: &mut Clock,
) -> Result<(u32, &'static NextHop, [u8; 4]), Reason> {
    let actives = table.active_count as u32;
    let all = table.member_count as u32;
    let dead_paths = dead_paths(table);
    let mut skipped = false;
    let mut i = 0u32;
    while i < MAX_GROUP_MEMBERS as u32 {
        if i >= all {
            break;
        }
        // First the actives starting at the bucket's member, then the standbys in order.
        let m = if i < actives {
            (member + i) % actives
        } else {
            i
        };
        let m = (m as usize) & (MAX_GROUP_MEMBERS - 1);
        let id = table.nexthops[m];
        if let Some(nh) = NEXTHOPS.get(id) {
            let liveness = if nh.flags & NH_F_VALID == 0 {
                Liveness::Dead
            } else if (dead_paths >> m) & 1 != 0 {
                count(Reason::LanRemoteLinkDown);
                Liveness::Dead
            } else {
                link_liveness(nh.link_id, clock)
            };
            if liveness == Liveness::Usable {
                if skipped {
                    count(Reason::LanFailover);
                }
                return Ok((id, nh, table.paths[m].route));
            }
            note_skip(&mut skipped);
            if liveness == Liveness::HeldDown {
                if let Some(first) = PICK_SCRATCH.get_ptr_mut(0) {
                    // SAFETY: per-CPU slot; XDP runs to completion on this CPU.
                    unsafe {
                        if *first == NO_MEMBER {
                            *first = m as u32;
                        }
                    }
                }
            }
        } else {
            note_skip(&mut skipped);
        }
        i += 1;
    }
    if skipped {
        if let Some(first) = PICK_SCRATCH.get(0) {
            let m = (*first as usize) & (MAX_GROUP_MEMBERS - 1);
            if *first != NO_MEMBER {
                let id = table.nexthops[m];
                if let Some(nh) = NEXTHOPS.get(id) {
                    count(Reason::LanHeldDownFallback);
                    return Ok((id, nh, table.paths[m].route));
                }
            }
        }
    }
    Err(Reason::LanPassNoLiveNextHop)
}

/// The members whose path crosses a link that is down in the network's bitmap, one bit
/// each. Computed once per packet without a branch (the agent fills a path's unused link
/// slots with its first link), and only while some link is down: a branch per member and
/// link would multiply the verifier's states through the member loop.
#[inline(always)]
fn dead_paths(table: &NextHopTable) -> u32 {
    let Some(down) = LINKS_DOWN.get(0) else {
        return 0;
    };
    if down.count == 0 {
        return 0;
    }
    let mut dead = 0u32;
    let mut m = 0;
    while m < MAX_GROUP_MEMBERS {
        let path = &table.paths[m];
        let mut hit = 0u64;
        let mut j = 0;
        while j < MAX_PATH_LINKS {
            let l = path.links[j] as usize;
            hit |= down.words[(l >> 6) & (LINKS_DOWN_WORDS - 1)] >> (l & 63);
            j += 1;
        }
        // 1 for a path with links (at most MAX_PATH_LINKS), 0 for an empty one.
        let has_links = (path.link_count as u64 + 255) >> 8;
        dead |= ((hit & has_links & 1) as u32) << m;
        m += 1;
    }
    dead
}

const NO_MEMBER: u32 = u32::MAX;

/// Marks a member as passed over; the first time, clears the held-down candidate of the
/// previous packet (only packets that skip a member pay for the scratch slot).
#[inline(always)]
fn note_skip(skipped: &mut bool) {
    if !*skipped {
        if let Some(first) = PICK_SCRATCH.get_ptr_mut(0) {
            // SAFETY: per-CPU slot; XDP runs to completion on this CPU.
            unsafe { *first = NO_MEMBER };
        }
        *skipped = true;
    }
}

enum Verdict {
    Conform,
    Remark,
    Drop,
}

/// Token bucket of the destination's (group's) reservations for this class, else of the class
/// as a whole. No policer: conform.
#[inline(always)]
fn police(group_id: u32, class: u8, bytes: u64, clock: &mut Clock) -> Verdict {
    let key = PolicerKey {
        group_id,
        class,
        _pad: [0; 3],
    };
    let p = match POLICERS.get_ptr_mut(key) {
        Some(p) => p,
        None => match POLICERS.get_ptr_mut(PolicerKey {
            group_id: POLICER_ANY_GROUP,
            class,
            _pad: [0; 3],
        }) {
            Some(p) => p,
            None => return Verdict::Conform,
        },
    };
    let p = unsafe { &mut *p };
    let now = clock.now();
    let elapsed = now.saturating_sub(p.last_ns);
    // Refill; a second or more of silence fills the bucket (and keeps the product in range).
    let tokens = if elapsed >= 1_000_000_000 {
        p.burst_bytes
    } else {
        let t = p.tokens + elapsed * p.rate_bytes_per_s / 1_000_000_000;
        if t > p.burst_bytes {
            p.burst_bytes
        } else {
            t
        }
    };
    p.last_ns = now;
    if tokens >= bytes {
        p.tokens = tokens - bytes;
        p.conformed += 1;
        Verdict::Conform
    } else {
        p.tokens = tokens;
        p.exceeded += 1;
        if p.action == POLICE_DROP {
            Verdict::Drop
        } else {
            Verdict::Remark
        }
    }
}

/// Does some classifier rule name `port`? One array lookup instead of two hash lookups.
#[inline(always)]
fn port_has_rules(port: u16) -> bool {
    CLASS_PORTS
        .get((port >> 6) as u32)
        .is_some_and(|w| (*w >> (port & 63)) & 1 != 0)
}

#[inline(always)]
fn lookup_rule(proto: u8, direction: u8, port: u16) -> Option<u8> {
    let exact = ClassifierKey {
        proto,
        direction,
        port,
    };
    if let Some(rule) = unsafe { CLASSIFIER.get(exact) } {
        return Some(rule.class);
    }
    let any = ClassifierKey {
        proto: 0,
        direction,
        port,
    };
    unsafe { CLASSIFIER.get(any) }.map(|r| r.class)
}

/// The first matching rule (destination port, then source port; the packet's protocol, then
/// any protocol), else the route's default class.
#[inline(always)]
fn classify(p: &Parsed, default_class: u8) -> u8 {
    let k = &p.key;
    if k.dst_port != 0 && port_has_rules(k.dst_port) {
        if let Some(c) = lookup_rule(k.proto, CLASSIFY_DST_PORT, k.dst_port) {
            return c;
        }
    }
    if k.src_port != 0 && port_has_rules(k.src_port) {
        if let Some(c) = lookup_rule(k.proto, CLASSIFY_SRC_PORT, k.src_port) {
            return c;
        }
    }
    default_class
}

/// The packet's QoS class after classification and policing; `None`: the policer drops it.
#[inline(always)]
fn class_of(
    p: &Parsed,
    route: &Route,
    nexthop: u32,
    cfg: &GatewayConfig,
    frame_len: usize,
    clock: &mut Clock,
) -> Option<u8> {
    let class = classify(p, route.default_class);
    let class = if class > BEST_EFFORT {
        BEST_EFFORT
    } else {
        class
    };
    // Sampled as offered (classified, before the policer): the agent's demand estimate
    // must not shrink to what a policer let through.
    sample(
        p,
        cfg.sample_threshold,
        frame_len,
        route.group_id,
        nexthop,
        class,
    );
    let policing = cfg.flags & CONFIG_F_POLICING != 0;
    let group_id = route.group_id;
    if !policing {
        return Some(class);
    }
    match police(group_id, class, frame_len as u64, clock) {
        Verdict::Conform => Some(class),
        Verdict::Remark => {
            count(Reason::PolicerRemarked);
            Some(BEST_EFFORT)
        }
        Verdict::Drop => {
            count(Reason::PolicerDropped);
            None
        }
    }
}

/// Routes the LAN's Ethernet frame at the start of the packet: encapsulates it with the
/// chosen member's source route and redirects it (or, for a hand-off next hop, marks it for
/// the kernel), or returns why not (the packet untouched).
#[inline(always)]
fn forward(ctx: &XdpContext) -> Result<u32, Reason> {
    let cfg = DWCP_CONFIG.get(0).ok_or(Reason::LanPassNotReady)?;
    if cfg.flags & CONFIG_F_READY == 0 {
        return Err(Reason::LanPassNotReady);
    }
    let seed = cfg.hash_seed;
    let p = parse(ctx)?;

    let route = if p.v6 {
        ROUTES_V6.get(&V6Key::new(128, p.dst6))
    } else {
        ROUTES_V4.get(&V4Key::new(32, p.dst4))
    };
    let route = *route.ok_or(Reason::LanPassNoRoute)?;

    // The active slot is read once; the table is then read from that slot only (see
    // `dwcp_common::group_slot`).
    let slot = *NH_ACTIVE
        .get(route.group_id)
        .ok_or(Reason::LanPassNoGroup)?;
    let table: &NextHopTable = NH_GROUPS
        .get(group_slot(route.group_id, slot))
        .ok_or(Reason::LanPassNoGroup)?;
    if table.active_count == 0
        || table.active_count > table.member_count
        || table.member_count as usize > MAX_GROUP_MEMBERS
    {
        return Err(Reason::LanPassNoGroup);
    }
    let hash = flow_hash(&p.key, seed);
    let bucket = bounded(bucket_of(hash), NHG_BUCKETS).ok_or(Reason::LanPassNoGroup)?;
    let member = table.buckets[bucket] as u32;
    let mut clock = Clock(0);
    let (nh_id, nh, source_route) = match pick_nexthop(table, member, &mut clock) {
        Ok(picked) => picked,
        Err(reason) => {
            // Fail closed: with no usable member, a hand-off group's packet still goes to the
            // hashed member's WireGuard device (which encrypts it, or whose table's
            // unreachable default drops it); passed up unmarked it would meet the main table,
            // which may route it out in clear text.
            let m = (member as usize) & (MAX_GROUP_MEMBERS - 1);
            let id = table.nexthops[m];
            match NEXTHOPS.get(id) {
                Some(nh)
                    if nh.flags & NH_F_HANDOFF != 0 && reason == Reason::LanPassNoLiveNextHop =>
                {
                    count(Reason::HandoffNoLiveNextHop);
                    (id, nh, [0; 4])
                }
                _ => return Err(reason),
            }
        }
    };

    let frame_len = ctx.data_end() - ctx.data();
    if nh.flags & NH_F_HANDOFF != 0 {
        let Some(class) = class_of(&p, &route, nh_id, cfg, frame_len, &mut clock) else {
            return Ok(xdp_action::XDP_DROP);
        };
        return handoff(ctx, &p, nh_id, nh.vni, class, frame_len);
    }

    // Outer IP packet = outer IPv4 + UDP + VXLAN + the whole frame.
    let outer_ip_len = frame_len + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;
    if outer_ip_len > nh.mtu as usize {
        return Err(Reason::LanPassTooBig);
    }
    let neigh: &Neighbour = unsafe {
        NEIGHBOURS.get(NeighbourKey {
            ifindex: nh.ifindex,
            ip4: nh.via_ip4,
        })
    }
    .ok_or(Reason::LanPassNoNeighbour)?;
    let Some(class) = class_of(&p, &route, nh_id, cfg, frame_len, &mut clock) else {
        return Ok(xdp_action::XDP_DROP);
    };

    // TTL / hop limit: leave expiring packets to the kernel (it sends the ICMP error).
    if p.v6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::LanPassMalformed)?;
        if unsafe { (*ip).hop_limit } <= 1 {
            return Err(Reason::LanPassTtlExceeded);
        }
    } else {
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::LanPassMalformed)?;
        if unsafe { (*ip).ttl } <= 1 {
            return Err(Reason::LanPassTtlExceeded);
        }
    }

    // From here on the packet is modified: the outer headers go in front of the frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(VXLAN_ENCAP_LEN as i32)) } != 0 {
        return Err(Reason::LanPassNoHeadroom);
    }
    let policy: Option<&QosPolicy> = QOS_POLICY.get(class as u32);
    let tos = rewrite_inner(ctx, p.v6, policy)?;
    write_outer(ctx, nh, neigh, encap_source_port(hash), tos, source_route)?;

    count_nexthop(nh_id, frame_len as u64);
    count_class(class as u32, frame_len as u64);
    match TX_PORTS.redirect(nh.ifindex, 0) {
        Ok(action) => {
            count(Reason::LanForwarded);
            Ok(action)
        }
        Err(_) => {
            count(Reason::LanRedirectFailed);
            Ok(xdp_action::XDP_DROP)
        }
    }
}

/// Random sampling of forwarded packets for the agent's top flows (sFlow-style: a random
/// draw per packet, so no per-CPU counter to keep and no periodic bias). A full ring buffer
/// loses the sample, never the packet.
#[inline(always)]
fn sample(p: &Parsed, threshold: u32, frame_len: usize, group: u32, nexthop: u32, class: u8) {
    if threshold == 0 || unsafe { bpf_get_prandom_u32() } >= threshold {
        return;
    }
    let record = FlowSampleRecord {
        src: p.key.src,
        dst: p.key.dst,
        src_port: p.key.src_port,
        dst_port: p.key.dst_port,
        proto: p.key.proto,
        class,
        v6: p.v6 as u8,
        _pad: 0,
        bytes: frame_len as u32,
        nexthop,
        group,
        _pad2: 0,
    };
    let _ = FLOW_SAMPLES.output_untyped::<FlowSampleRecord>(&record, 0);
}

/// Hand-off to the kernel: the DSCP rewrite in place, then the flow's mark into
/// `HANDOFF_FLOWS` for the tc program. A failed rewrite returns before the mark is recorded
/// (an unrewritten packet is not handed off). No TTL decrement: the kernel forwards the
/// packet and decrements it itself.
#[inline(always)]
fn handoff(
    ctx: &XdpContext,
    p: &Parsed,
    nh_id: u32,
    mark: u32,
    class: u8,
    frame_len: usize,
) -> Result<u32, Reason> {
    let policy: Option<&QosPolicy> = QOS_POLICY.get(class as u32);
    rewrite_dscp(ctx, p.v6, policy)?;
    if HANDOFF_FLOWS
        .insert(HandoffFlow::of(&p.key), mark, 0)
        .is_err()
    {
        return Err(Reason::HandoffNoEntry);
    }
    count_nexthop(nh_id, frame_len as u64);
    count_class(class as u32, frame_len as u64);
    count(Reason::HandoffWireGuard);
    Ok(xdp_action::XDP_PASS)
}

/// DSCP rewrite (ECN kept) of the frame's IP header, nothing else.
#[inline(always)]
fn rewrite_dscp(ctx: &XdpContext, v6: bool, policy: Option<&QosPolicy>) -> Result<(), Reason> {
    let Some(dscp) = policy
        .filter(|p| p.flags & QOS_F_REWRITE != 0)
        .map(|p| p.dscp & 0x3f)
    else {
        return Ok(());
    };
    if v6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::LanPassMalformed)?;
        let ip = unsafe { &mut *ip };
        let b0 = ip.vtc_flow[0];
        let b1 = ip.vtc_flow[1];
        let tc = ((b0 & 0x0f) << 4) | (b1 >> 4);
        let tc = (dscp << 2) | (tc & 0x03);
        ip.vtc_flow[0] = 0x60 | (tc >> 4);
        ip.vtc_flow[1] = ((tc & 0x0f) << 4) | (b1 & 0x0f);
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::LanPassMalformed)?;
        let words = ip as *mut u16;
        let ip = unsafe { &mut *ip };
        let old = unsafe { *words };
        ip.tos = (dscp << 2) | (ip.tos & 0x03);
        ip.check = csum_replace2(ip.check, old, unsafe { *words });
    }
    Ok(())
}

const INNER_L3: usize = VXLAN_ENCAP_LEN + ETH_HLEN;

/// DSCP rewrite (ECN kept) and TTL / hop-limit decrement of the inner packet, now at a fixed
/// offset behind the new headers. Returns the inner TOS / traffic class for the outer header.
#[inline(always)]
fn rewrite_inner(ctx: &XdpContext, v6: bool, policy: Option<&QosPolicy>) -> Result<u8, Reason> {
    let rewrite = policy
        .filter(|p| p.flags & QOS_F_REWRITE != 0)
        .map(|p| p.dscp & 0x3f);
    if v6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, INNER_L3).ok_or(Reason::LanPassMalformed)?;
        let ip = unsafe { &mut *ip };
        let b0 = ip.vtc_flow[0];
        let b1 = ip.vtc_flow[1];
        let mut tc = ((b0 & 0x0f) << 4) | (b1 >> 4);
        if let Some(dscp) = rewrite {
            tc = (dscp << 2) | (tc & 0x03);
            ip.vtc_flow[0] = 0x60 | (tc >> 4);
            ip.vtc_flow[1] = ((tc & 0x0f) << 4) | (b1 & 0x0f);
        }
        ip.hop_limit -= 1;
        Ok(tc)
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, INNER_L3).ok_or(Reason::LanPassMalformed)?;
        let words = ip as *mut u16;
        let ip = unsafe { &mut *ip };
        let mut check = ip.check;
        if let Some(dscp) = rewrite {
            let old = unsafe { *words };
            ip.tos = (dscp << 2) | (ip.tos & 0x03);
            check = csum_replace2(check, old, unsafe { *words });
        }
        let old = unsafe { *words.add(4) };
        ip.ttl -= 1;
        check = csum_replace2(check, old, unsafe { *words.add(4) });
        ip.check = check;
        Ok(ip.tos)
    }
}

/// Writes outer Ethernet, IPv4, UDP and VXLAN headers and the inner Ethernet addresses.
#[inline(always)]
pub(crate) fn write_outer(
    ctx: &XdpContext,
    nh: &NextHop,
    neigh: &Neighbour,
    sport: u16,
    tos: u8,
    route: [u8; 4],
) -> Result<(), Reason> {
    let frame_len = ctx.data_end() - ctx.data();
    let _all: *mut [u8; INNER_L3] = ptr_at(ctx, 0).ok_or(Reason::LanPassMalformed)?;
    let base = ctx.data();
    let eth = base as *mut EthHdr;
    let ip = (base + ETH_HLEN) as *mut Ipv4Hdr;
    let udp = (base + ETH_HLEN + IPV4_HLEN) as *mut UdpHdr;
    let vx = (base + ETH_HLEN + IPV4_HLEN + UDP_HLEN) as *mut VxlanHdr;
    let inner = (base + VXLAN_ENCAP_LEN) as *mut EthHdr;
    let ip_len = (frame_len - ETH_HLEN) as u16;
    let udp_len = ip_len - IPV4_HLEN as u16;
    let l = nh.local_ip4;
    let r = nh.remote_ip4;
    // One's complement sum of the outer IPv4 header, computed from the values written.
    let sum = ((0x45u32 << 8) | tos as u32)
        + ip_len as u32
        + ((64u32 << 8) | IPPROTO_UDP as u32)
        + (((l[0] as u32) << 8) | l[1] as u32)
        + (((l[2] as u32) << 8) | l[3] as u32)
        + (((r[0] as u32) << 8) | r[1] as u32)
        + (((r[2] as u32) << 8) | r[3] as u32);
    unsafe {
        (*eth).dst = neigh.mac;
        (*eth).src = neigh.if_mac;
        (*eth).proto = ETH_P_IP.to_be();
        *ip = Ipv4Hdr {
            vihl: 0x45,
            tos,
            tot_len: ip_len.to_be(),
            id: 0,
            frag_off: 0,
            ttl: 64,
            proto: IPPROTO_UDP,
            check: csum_fold(sum).to_be(),
            src: u32::from_ne_bytes(l),
            dst: u32::from_ne_bytes(r),
        };
        *udp = UdpHdr {
            sport: sport.to_be(),
            dport: VXLAN_PORT.to_be(),
            len: udp_len.to_be(),
            check: 0,
        };
        *vx = VxlanHdr {
            flags: VXLAN_FLAG_VNI,
            reserved: [route[0], route[1], route[2]],
            vni: ((nh.vni << 8) | route[3] as u32).to_be(),
        };
        (*inner).dst = nh.inner_dst_mac;
        (*inner).src = neigh.if_mac;
    }
    Ok(())
}
