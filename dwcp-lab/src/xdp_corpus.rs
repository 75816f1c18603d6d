//! The fuzz corpora of both XDP programs and their oracle, shared by `tests/xdp_fuzz.rs` and
//! the `attacks` benchmark.
//!
//! Both XDP programs over generated corpora (BPF_PROG_TEST_RUN, each case run once): every
//! truncation of valid seed frames, lying length fields (IPv4 total length and IHL, UDP
//! length, TCP data offset, IPv6 payload and extension header lengths, the outer headers of
//! VXLAN and probes), IPv4 options, IPv6 extension header chains (fragments, long chains),
//! VLAN tags, byte flips and random bytes, from a fixed seed.
//!
//! The invariant is judged by an independent parser (etherparse), not by the programs' own
//! logic: no frame aborts a program; a frame is transmitted (`XDP_TX`) or redirected
//! (`XDP_REDIRECT`) only if etherparse reads it whole (every length consistent, transport
//! header complete), without a VLAN tag, IPv4 options or a fragment (IPv4 flags or an IPv6
//! fragment header anywhere in the chain), from or to whom it must (the LAN port's MAC; a
//! link's peer, with VXLAN of that link's VNI or a probe request with TTL 255), and what goes
//! out parses too. A LAN frame passed to the kernel is passed untouched. Checksums are not
//! judged: the programs leave them to the receivers, as routers forwarding do.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Context;
use aya::programs::{TestRun, TestRunOptions};
use dwcp_common::{maps::programs, probe::*, wire::*, QosClass, Route};
use dwcp_dataplane::{Dataplane, Pinning};
use etherparse::{Ipv6ExtensionSlice, NetSlice, SlicedPacket, TransportSlice};

use crate::frames::*;
use crate::lab::{self, GatewayPath, Lan};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Cases per program, at least.
pub const CASES: usize = 250_000;
/// BPF_PROG_TEST_RUN runs a program as if the frame arrived on loopback (ifindex 1).
const IFINDEX: u32 = 1;
pub const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const LINKS: u32 = 2;

pub fn peer(link: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, link as u8)
}

/// xorshift64*: deterministic, so a failure reproduces.
pub struct Rng(pub u64);

/// The corpora's seed.
pub const SEED: u64 = 0x6477_6370_6675_7a7a;

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
    fn pick_ref<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway: programmed as the labs program one, links 1 and 2 to 198.51.100.{1,2}.

pub struct Gateway {
    pub dp: Dataplane,
    pub keys: [ProbeKey; LINKS as usize],
}

impl Gateway {
    /// Loads the programs (needs root) and programs them as the labs program a gateway:
    /// links 1 and 2 to 198.51.100.{1,2}, VNIs 101 and 102, region B (10.2.0.0/24,
    /// 2001:db8:2::/48) behind both, the test run's interface a LAN port.
    pub fn load() -> anyhow::Result<Gateway> {
        let mut dp = Dataplane::load(Pinning::None).context("load eBPF object (needs root)")?;
        let paths: Vec<GatewayPath> = (1..=LINKS)
            .map(|l| GatewayPath {
                nexthop: l,
                link_id: l,
                ifindex: IFINDEX,
                vni: 100 + l,
                local_ip: OUR_IP,
                remote_ip: peer(l),
                local_mac: [2, 0, 0, 0, 0, 0x10],
                remote_mac: [2, 0, 0, 0, 0, l as u8],
                monitor: None,
                handoff: None,
            })
            .collect();
        let lan = Lan {
            ifindex: IFINDEX,
            mac: GW_MAC,
        };
        // 10.2.0.0/24 (and below, 2001:db8:2::/48) is region B, behind both links.
        lab::program_paths(&mut dp, lan, Ipv4Addr::new(10, 2, 0, 0), 1, &paths)?;
        dp.set_route(
            "2001:db8:2::".parse()?,
            48,
            Route {
                group_id: 1,
                default_class: QosClass::BestEffort as u8,
                _pad: [0; 3],
            },
        )?;
        for l in 1..=LINKS {
            // Reflect whatever the corpus sends: the limiter is not what is fuzzed here.
            let cfg = dp.link_config(l)?;
            dp.set_link_config(
                l,
                dwcp_common::LinkConfig {
                    reflect_gap_ns: 1,
                    reflect_burst: u32::MAX,
                    ..cfg
                },
            )?;
        }
        // Transit: exit 1 leaves on link 2, exit 2 on link 1 (back where link 1's traffic
        // came from: the program must refuse that).
        dp.set_transit_exit(TRANSIT_EXIT as u32, 2)?;
        dp.set_transit_exit(2, 1)?;
        let keys = [dp.probe_key(1)?, dp.probe_key(2)?];
        // The lab's programming did what the oracle below assumes.
        let vnis: BTreeMap<u32, u32> = dp
            .vnis()?
            .into_iter()
            .map(|(vni, e)| (vni, e.link_id))
            .collect();
        anyhow::ensure!(
            vnis == BTreeMap::from([(101, 1), (102, 2)]),
            "VNIs {vnis:?}"
        );
        let lan_ports: Vec<(u32, [u8; 6])> = dp
            .lan_ports()?
            .into_iter()
            .map(|(i, p)| (i, p.mac))
            .collect();
        anyhow::ensure!(lan_ports == [(IFINDEX, GW_MAC)], "LAN ports {lan_ports:?}");
        Ok(Gateway { dp, keys })
    }

    /// The underlay program's verdict on `f`, run once.
    pub fn underlay(&mut self, f: &[u8]) -> anyhow::Result<u32> {
        let mut out = vec![0u8; f.len() + 512];
        let res = self
            .dp
            .program(programs::UNDERLAY_INGRESS)?
            .test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .with_context(|| format!("test run of {} bytes", f.len()))?;
        Ok(res.return_value)
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds: valid frames the programs forward, reflect or measure.

const HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DST: u8 = 60;

pub fn lan_seeds() -> Vec<Vec<u8>> {
    let v4 = |proto, l4: &[u8]| frame(ETH_P_IP, &V4::new(proto, "10.1.0.5", "10.2.0.9").build(l4));
    let v6 = |next, payload: &[u8]| {
        frame(
            ETH_P_IPV6,
            &ipv6(0, 64, next, "2001:db8:1::5", "2001:db8:2::9", payload),
        )
    };
    let mut chain = vec![DST, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop, then destination options
    chain.extend_from_slice(&[IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
    chain.extend_from_slice(&udp(1234, 5004, b"behind a chain"));
    let mut ah = vec![IPPROTO_TCP, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 7, 9, 9, 9, 9];
    ah.extend_from_slice(&tcp(40000, 443, b"after AH"));
    vec![
        v4(IPPROTO_UDP, &udp(40000, 5004, b"hello dwcp")),
        v4(IPPROTO_TCP, &tcp(51000, 22, b"ssh")),
        v4(IPPROTO_ICMP, &icmp_echo(7, b"ping")),
        v4(AUTH, &ah),
        frame(
            ETH_P_IP,
            &V4::new(IPPROTO_UDP, "10.1.0.5", "10.9.0.1").build(&udp(1, 2, b"no route")),
        ),
        v6(IPPROTO_UDP, &udp(1234, 5004, b"v6 datagram")),
        v6(IPPROTO_TCP, &tcp(1234, 443, b"v6 segment")),
        v6(IPPROTO_ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]),
        v6(HOP, &chain),
    ]
}

/// `inner` in VXLAN of `link` from its peer to us, every length right.
pub fn vxlan(link: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_from(peer(link), 100 + link, inner)
}

/// `inner` in VXLAN with `vni` from `src` to us (a spoofer's, if `src` is not the peer of
/// the VNI's link), every length right.
pub fn vxlan_from(src: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_routed_from(src, vni, [0; 4], inner)
}

/// The gateway's transit exit to link 2.
pub const TRANSIT_EXIT: u8 = 1;

/// `inner` in VXLAN of link 1 from its peer, in transit: its source route sends it on to
/// link 2 ([`TRANSIT_EXIT`]).
pub fn transit(inner: &[u8]) -> Vec<u8> {
    vxlan_routed_from(peer(1), 101, [TRANSIT_EXIT, 0, 0, 0], inner)
}

/// `inner` in VXLAN with `vni` and source route `route` from `src` to us.
pub fn vxlan_routed_from(src: Ipv4Addr, vni: u32, route: [u8; 4], inner: &[u8]) -> Vec<u8> {
    let mut payload = vxlan_header(vni, route).to_vec();
    payload.extend_from_slice(inner);
    let ip = V4::new(IPPROTO_UDP, &src.to_string(), &OUR_IP.to_string())
        .build(&udp(50000, VXLAN_PORT, &payload));
    let mut f = eth(GW_MAC, [2, 0, 0, 0, 0, src.octets()[3]], ETH_P_IP);
    f.extend_from_slice(&ip);
    f
}

/// Probe `h` from `from` to us, with the TTL of a neighbour's (255).
pub fn probe(h: &ProbeHeader, from: Ipv4Addr) -> Vec<u8> {
    probe_with_ttl(h, from, PROBE_TTL)
}

/// Probe `h` from `from` to us, arriving with `ttl` (255 from a neighbour).
pub fn probe_with_ttl(h: &ProbeHeader, from: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut b = [0u8; PROBE_LEN];
    h.encode(&mut b);
    let mut ip = V4::new(IPPROTO_UDP, &from.to_string(), &OUR_IP.to_string());
    ip.ttl = ttl;
    let mut f = eth(GW_MAC, HOST_MAC, ETH_P_IP);
    f.extend_from_slice(&ip.build(&udp(40000, PROBE_PORT, &b)));
    f
}

pub fn underlay_seeds(gw: &Gateway) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for l in 1..=LINKS {
        let req = ProbeHeader::request(&ProbeKey::default(), l, 7, 1234);
        out.push(probe(&req, peer(l)));
        let reply = ProbeHeader {
            kind: PROBE_KIND_REPLY,
            ..ProbeHeader::request(&gw.keys[l as usize - 1], l, 7, monotonic_ns())
        };
        out.push(probe(&reply, peer(l)));
    }
    // Transit and local delivery, inner frames of every kind; routes of every length, and
    // back where the packet came from.
    for inner in lan_seeds() {
        out.push(transit(&inner));
        out.push(vxlan(1, &inner));
    }
    let inner = &lan_seeds()[0];
    for route in [[1, 2, 0, 0], [1, 2, 1, 2], [2, 0, 0, 0], [9, 0, 0, 0]] {
        out.push(vxlan_routed_from(peer(1), 101, route, inner));
    }
    let local = frame(
        ETH_P_IP,
        &V4::new(IPPROTO_UDP, "10.2.0.9", "10.1.0.5").build(&udp(1, 2, b"for here")),
    );
    out.push(vxlan(2, &local));
    out
}

// ---------------------------------------------------------------------------------------------
// Mutations.

fn set_u16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Where the IP header starts (after up to two VLAN tags), if it does.
fn l3_offset(f: &[u8]) -> Option<(usize, u16)> {
    let mut at = 12;
    for _ in 0..3 {
        let t = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
        if t != ETH_P_8021Q && t != ETH_P_8021AD {
            return Some((at + 2, t));
        }
        at += 4;
    }
    None
}

/// One length field of the frame's IP packet (or of its transport header) set to a value
/// near its right one or anywhere.
fn lie_about_a_length(f: &mut [u8], rng: &mut Rng) {
    let Some((l3, t)) = l3_offset(f) else { return };
    let near = |rng: &mut Rng, right: usize| -> u16 {
        if rng.chance(70) {
            (right as i64 + rng.below(41) as i64 - 20).clamp(0, 65535) as u16
        } else {
            rng.next_u64() as u16
        }
    };
    if t == ETH_P_IP && f.len() >= l3 + 20 {
        let ihl = (f[l3] & 0xf) as usize * 4;
        match rng.below(4) {
            0 => {
                let v = near(rng, f.len() - l3);
                set_u16(f, l3 + 2, v);
            }
            1 => f[l3] = 0x40 | rng.below(16) as u8,
            2 => {
                // UDP length, or the data offset of TCP.
                let l4 = l3 + ihl;
                if f.get(l3 + 9) == Some(&IPPROTO_TCP) && l4 + 13 <= f.len() {
                    f[l4 + 12] = (rng.below(16) as u8) << 4;
                } else {
                    let v = near(rng, f.len().saturating_sub(l4));
                    set_u16(f, l4 + 4, v);
                }
            }
            _ => f[l3] = rng.byte(),
        }
    } else if t == ETH_P_IPV6 && f.len() >= l3 + 40 {
        match rng.below(3) {
            0 => {
                let v = near(rng, f.len() - l3 - 40);
                set_u16(f, l3 + 4, v);
            }
            // The first extension header's length byte, or whatever is there.
            1 if f.len() > l3 + 41 => f[l3 + 41] = rng.byte(),
            _ => {
                let v = near(rng, f.len().saturating_sub(l3 + 40));
                set_u16(f, l3 + 44, v);
            }
        }
    }
}

/// An IPv4 frame with `ihl - 5` words of options: source routes, record route, timestamps,
/// NOPs, garbage; lengths right or not.
fn with_ipv4_options(rng: &mut Rng) -> Vec<u8> {
    let words = 1 + rng.below(10);
    let mut opts = Vec::new();
    while opts.len() < words * 4 {
        match rng.below(6) {
            0 => opts.push(1), // NOP
            1 => opts.push(0), // end of list
            k => {
                let kind = [0x83, 0x89, 0x07, 0x44][k - 2]; // LSRR, SSRR, RR, timestamp
                let len = if rng.chance(70) {
                    3 + 4 * rng.below(3)
                } else {
                    rng.below(40)
                };
                opts.extend_from_slice(&[kind, len as u8, 4]);
                opts.extend_from_slice(&rng.bytes(len.saturating_sub(3)));
            }
        }
    }
    opts.truncate(words * 4);
    let proto = rng.pick(&[IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMP]);
    let l4 = match proto {
        IPPROTO_UDP => udp(1, 5004, b"opts"),
        IPPROTO_TCP => tcp(1, 22, b"opts"),
        _ => icmp_echo(1, b"opts"),
    };
    let mut ip = V4::new(proto, "10.1.0.5", "10.2.0.9");
    ip.options = opts;
    frame(ETH_P_IP, &ip.build(&l4))
}

/// An IPv6 frame with a chain of 0 to 8 extension headers (hop-by-hop anywhere, routing,
/// destination options, fragment headers that fragment or not, authentication headers,
/// lengths right or not) before UDP, TCP, ICMPv6, "no next header" or anything.
fn with_ipv6_chain(rng: &mut Rng) -> Vec<u8> {
    let n = rng.below(9);
    let kinds: Vec<u8> = (0..n)
        .map(|_| rng.pick(&[HOP, ROUTING, FRAGMENT, AUTH, DST, DST, ROUTING, 253]))
        .collect();
    let anything = rng.byte();
    let last = rng.pick(&[IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMPV6, 59, 50, anything]);
    let mut payload = Vec::new();
    for (i, &k) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(last);
        match k {
            FRAGMENT => {
                let anything = rng.next_u64() as u16;
                let off_mf = rng.pick(&[0u16, 1, 8, 9, anything]);
                payload.extend_from_slice(&[next, 0]);
                payload.extend_from_slice(&off_mf.to_be_bytes());
                payload.extend_from_slice(&rng.bytes(4));
            }
            AUTH => {
                let len = rng.pick(&[0u8, 1, 2, 4]);
                payload.extend_from_slice(&[next, len]);
                payload.extend_from_slice(&rng.bytes((len as usize + 2) * 4 - 2));
            }
            _ => {
                let len = rng.pick(&[0u8, 0, 1, 3]);
                payload.extend_from_slice(&[next, len]);
                payload.extend_from_slice(&rng.bytes((len as usize + 1) * 8 - 2));
            }
        }
    }
    match last {
        IPPROTO_UDP => payload.extend_from_slice(&udp(1234, 5004, b"chained")),
        IPPROTO_TCP => payload.extend_from_slice(&tcp(1234, 443, b"chained")),
        IPPROTO_ICMPV6 => payload.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]),
        _ => {
            let n = rng.below(24);
            payload.extend_from_slice(&rng.bytes(n));
        }
    }
    let first = kinds.first().copied().unwrap_or(last);
    let mut f = frame(
        ETH_P_IPV6,
        &ipv6(0, 64, first, "2001:db8:1::5", "2001:db8:2::9", &payload),
    );
    if rng.chance(20) {
        lie_about_a_length(&mut f, rng);
    }
    f
}

/// `f` with one to three VLAN tags (802.1Q, 802.1ad, and the old 0x9100) in front of its
/// IP header.
fn with_vlan_tags(f: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    for _ in 0..1 + rng.below(3) {
        out.extend_from_slice(&rng.pick(&[ETH_P_8021Q, ETH_P_8021AD, 0x9100]).to_be_bytes());
        out.extend_from_slice(&(rng.next_u64() as u16 & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&f[12..]);
    out
}

fn flip_bytes(f: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = f.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len());
        out[at] = if rng.chance(50) {
            out[at] ^ (1 << rng.below(8))
        } else {
            rng.byte()
        };
    }
    if rng.chance(10) {
        out.truncate(14 + rng.below(out.len() - 13));
    } else if rng.chance(10) {
        let n = 1 + rng.below(16);
        out.extend_from_slice(&rng.bytes(n));
    }
    out
}

/// Random bytes; half the time behind an Ethernet header to us for IPv4 or IPv6 (with the
/// version nibble right), so that the parsers are reached.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let n = 14 + rng.below(300);
    let mut f = rng.bytes(n);
    if rng.chance(50) {
        f[..6].copy_from_slice(&GW_MAC);
        let v6 = rng.chance(50);
        set_u16(&mut f, 12, if v6 { ETH_P_IPV6 } else { ETH_P_IP });
        if f.len() > 14 {
            f[14] = (f[14] & 0x0f) | if v6 { 0x60 } else { 0x40 };
        }
    }
    f
}

/// The corpus of one program: `seeds` through every generator, `CASES` at least.
pub fn corpus(seeds: &[Vec<u8>], wrap: impl Fn(&[u8]) -> Vec<u8>, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in seeds {
        out.push(s.clone());
        // Every truncation (the kernel runs nothing on less than an Ethernet header).
        for len in ETH_HLEN..s.len() {
            out.push(s[..len].to_vec());
        }
        // Every IPv4 total length / IPv6 payload length up to a few bytes past the frame.
        if let Some((l3, t)) = l3_offset(s) {
            let at = if t == ETH_P_IP { l3 + 2 } else { l3 + 4 };
            for v in 0..=(s.len() - l3 + 4) as u16 {
                let mut f = s.clone();
                set_u16(&mut f, at, v);
                out.push(f);
            }
        }
    }
    let lan = lan_seeds();
    while out.len() < CASES {
        let f = match rng.below(8) {
            0 => {
                let mut f = rng.pick_ref(seeds).clone();
                lie_about_a_length(&mut f, rng);
                f
            }
            1 => wrap(&with_ipv4_options(rng)),
            2 | 3 => wrap(&with_ipv6_chain(rng)),
            4 => {
                let f: &Vec<u8> = rng.pick_ref(&lan);
                wrap(&with_vlan_tags(f, rng))
            }
            5 | 6 => {
                let f: &Vec<u8> = rng.pick_ref(seeds);
                flip_bytes(f, rng)
            }
            _ => random_frame(rng),
        };
        out.push(f);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The oracle: what etherparse says of a frame.

/// Why a frame may not be forwarded as it is, if it may not: etherparse cannot read it whole,
/// or it carries a VLAN tag, IPv4 options, a fragment, or no IP at all.
fn unforwardable(f: &[u8]) -> Option<String> {
    let p = match SlicedPacket::from_ethernet(f) {
        Ok(p) => p,
        Err(e) => return Some(format!("etherparse: {e}")),
    };
    if p.vlan.is_some() {
        return Some("VLAN-tagged".into());
    }
    match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            if ip.header().ihl() != 5 {
                return Some("IPv4 options".into());
            }
            if ip.is_payload_fragmented() {
                return Some("IPv4 fragment".into());
            }
        }
        Some(NetSlice::Ipv6(ip)) => {
            if ip.header().payload_length() == 0 {
                return Some("IPv6 jumbogram".into());
            }
            let fragment = ip
                .extensions()
                .clone()
                .into_iter()
                .any(|e| matches!(e, Ipv6ExtensionSlice::Fragment(_)));
            if fragment {
                return Some("IPv6 fragment header".into());
            }
        }
        None => return Some("not IP".into()),
    }
    None
}

/// What a LAN frame the LAN program redirected must be.
fn check_lan_redirect(input: &[u8], output: &[u8]) -> Result<(), String> {
    if let Some(why) = unforwardable(input) {
        return Err(format!("redirected a malformed frame: {why}"));
    }
    if input[..6] != GW_MAC {
        return Err("redirected a frame not addressed to the LAN port".into());
    }
    check_encapsulated(output, None)
}

/// What the fast path sends to another gateway: VXLAN to a next hop (never `from`, the
/// gateway a transit packet came from) that etherparse reads whole, around a frame it reads
/// whole too.
fn check_encapsulated(out: &[u8], from: Option<Ipv4Addr>) -> Result<(), String> {
    let p = SlicedPacket::from_ethernet(out).map_err(|e| format!("output: etherparse: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Err("output: not IPv4".into());
    };
    let h = ip.header().to_header();
    if h.header_checksum != h.calc_header_checksum() {
        return Err("output: outer IPv4 checksum".into());
    }
    let dst = Ipv4Addr::from(h.destination);
    if !(1..=LINKS).any(|l| peer(l) == dst) || Some(dst) == from {
        return Err(format!("output: to {dst}"));
    }
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        return Err("output: not UDP".into());
    };
    if u.destination_port() != VXLAN_PORT || u.payload().len() < VXLAN_HLEN {
        return Err("output: not VXLAN".into());
    }
    match unforwardable(&u.payload()[VXLAN_HLEN..]) {
        Some(why) => Err(format!("output: inner frame: {why}")),
        None => Ok(()),
    }
}

/// What the outer headers of an underlay frame say.
struct Outer<'a> {
    payload: &'a [u8],
    src: Ipv4Addr,
    ttl: u8,
    sport: u16,
}

/// The outer headers of an underlay frame the program took as a link's: Ethernet, IPv4
/// without options and not fragmented, UDP to `port`.
fn outer(f: &[u8], port: u16) -> Result<Outer<'_>, String> {
    let p = SlicedPacket::from_ethernet(f).map_err(|e| format!("etherparse: {e}"))?;
    if p.vlan.is_some() {
        return Err("VLAN-tagged".into());
    }
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Err("not IPv4".into());
    };
    if ip.header().ihl() != 5 || ip.is_payload_fragmented() {
        return Err("IPv4 options or fragment".into());
    }
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        return Err("not UDP".into());
    };
    if u.destination_port() != port {
        return Err(format!("UDP to {}", u.destination_port()));
    }
    // A payload shorter than the IP packet says (trailing bytes) is no packet of ours.
    if u.slice().len() != ip.payload().payload.len() {
        return Err("UDP length short of the IP payload".into());
    }
    let h = ip.header();
    Ok(Outer {
        payload: u.payload(),
        src: Ipv4Addr::from(h.source()),
        ttl: h.ttl(),
        sport: u.source_port(),
    })
}

/// What an underlay frame the program transmitted must be: a probe request of a link, from
/// its peer, with TTL 255, to us; and the reply it became must parse.
fn check_underlay_tx(input: &[u8], output: &[u8]) -> Result<(), String> {
    let req = outer(input, PROBE_PORT).map_err(|e| format!("reflected: {e}"))?;
    let (src, ttl) = (req.src, req.ttl);
    let h =
        ProbeHeader::decode(req.payload).map_err(|e| format!("reflected a bad probe: {e:?}"))?;
    if req.payload.len() != PROBE_LEN || h.kind != PROBE_KIND_REQUEST {
        return Err("reflected something else than a request".into());
    }
    if !(1..=LINKS).contains(&h.link_id) || src != peer(h.link_id) || ttl != PROBE_TTL {
        return Err(format!(
            "reflected link {} from {src} with TTL {ttl}",
            h.link_id
        ));
    }
    let rep = outer(output, req.sport).map_err(|e| format!("reflection: {e}"))?;
    let r = ProbeHeader::decode(rep.payload).map_err(|e| format!("reflection: {e:?}"))?;
    if r.kind != PROBE_KIND_REPLY
        || r.token != h.token
        || rep.src != OUR_IP
        || rep.ttl != PROBE_TTL
        || rep.sport != PROBE_PORT
    {
        return Err("reflection: not the request's reply".into());
    }
    Ok(())
}

/// What an underlay frame the program redirected must be: VXLAN of a link's VNI from that
/// link's peer, and then either in transit (a source route not over): sent on to the exit the
/// route names, not back on the link it came in on, with well-formed outer headers, the route
/// shifted by one exit and the inner frame relayed byte for byte (but its MACs); or delivered
/// (the route over): a frame that may be forwarded.
fn check_underlay_redirect(input: &[u8], output: &[u8]) -> Result<(), String> {
    let o = outer(input, VXLAN_PORT).map_err(|e| format!("decapsulated: {e}"))?;
    let (vx, src) = (o.payload, o.src);
    if vx.len() < VXLAN_HLEN || vx[0] & VXLAN_FLAG_VNI == 0 {
        return Err("took something else than VXLAN".into());
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    if !(1..=LINKS).any(|l| vni == 100 + l && src == peer(l)) {
        return Err(format!("took VNI {vni} from {src}"));
    }
    let header: [u8; VXLAN_HLEN] = vx[..VXLAN_HLEN].try_into().unwrap();
    let route = vxlan_route(&header);
    if route[0] == 0 {
        return match unforwardable(output) {
            Some(why) => Err(format!("delivered a malformed frame: {why}")),
            None => Ok(()),
        };
    }
    // The gateway's exits: 1 to link 2, 2 to link 1 ([`Gateway::load`]).
    let exit_link = match route[0] {
        1 => 2,
        2 => 1,
        e => {
            return Err(format!(
                "sent on by exit {e}, which the gateway does not have"
            ))
        }
    };
    if vni == 100 + exit_link {
        return Err(format!("sent back on link {exit_link}, where it came from"));
    }
    let out = outer(output, VXLAN_PORT).map_err(|e| format!("sent on: {e}"))?;
    let p = SlicedPacket::from_ethernet(output).map_err(|e| format!("sent on: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Err("sent on: not IPv4".into());
    };
    let h = ip.header().to_header();
    if h.header_checksum != h.calc_header_checksum()
        || Ipv4Addr::from(h.destination) != peer(exit_link)
    {
        return Err(format!(
            "sent on to {:?}, checksum {:#x} (right: {:#x})",
            h.destination,
            h.header_checksum,
            h.calc_header_checksum()
        ));
    }
    let sent: [u8; VXLAN_HLEN] = out
        .payload
        .get(..VXLAN_HLEN)
        .and_then(|h| h.try_into().ok())
        .ok_or("sent on: no VXLAN header")?;
    if sent != vxlan_header(100 + exit_link, next_route(route)) {
        return Err(format!("sent on with VXLAN header {sent:?}"));
    }
    let (inner_in, inner_out) = (&vx[VXLAN_HLEN..], &out.payload[VXLAN_HLEN..]);
    if inner_in.len() != inner_out.len() || inner_in.get(12..) != inner_out.get(12..) {
        return Err("sent on a changed inner frame".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// What one program did with its corpus.
#[derive(Default, Debug)]
pub struct Tally {
    pub cases: usize,
    /// Cases per verdict (indexed by verdict: aborted, drop, pass, tx, redirect).
    pub verdicts: [usize; 5],
    /// The cases that broke the invariant, and why.
    pub failures: Vec<String>,
}

impl Tally {
    /// The first few failures, one a line.
    pub fn examples(&self) -> String {
        self.failures[..self.failures.len().min(5)].join("\n")
    }
}

/// Runs every case of `corpus` through `program` once and checks `judge` on what came out.
fn run_corpus(
    gw: &mut Gateway,
    program: &'static str,
    corpus: &[Vec<u8>],
    judge: impl Fn(&[u8], u32, &[u8]) -> Result<(), String>,
) -> anyhow::Result<Tally> {
    let prog = gw.dp.program(program)?;
    let mut out = vec![0u8; 4096];
    let mut tally = Tally::default();
    for (i, input) in corpus.iter().enumerate() {
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .with_context(|| format!("{program}: case {i} ({} bytes)", input.len()))?;
        let verdict = res.return_value;
        let output = &out[..res.data_size_out as usize];
        tally.cases += 1;
        let judged = match verdict {
            XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT => {
                tally.verdicts[verdict as usize] += 1;
                judge(input, verdict, output)
            }
            XDP_ABORTED => Err("aborted".into()),
            v => Err(format!("verdict {v}")),
        };
        if let Err(why) = judged {
            tally
                .failures
                .push(format!("case {i} (verdict {verdict}): {why}: {input:02x?}"));
        }
    }
    Ok(tally)
}

/// Runs the LAN corpus through the LAN program and the underlay corpus through the underlay
/// program, each case once, in a network namespace of its own (the decapsulated frames'
/// route lookups see its empty FIB), and judges every verdict: (LAN, underlay).
pub fn run_corpora(
    gw: &mut Gateway,
    lan_corpus: &[Vec<u8>],
    underlay_corpus: &[Vec<u8>],
) -> anyhow::Result<(Tally, Tally)> {
    let ns = crate::netlab::Netns::new("xdpfuzz")?;
    ns.run_in(|| -> anyhow::Result<(Tally, Tally)> {
        let lan = run_corpus(gw, programs::LAN_INGRESS, lan_corpus, |i, v, o| match v {
            XDP_REDIRECT => check_lan_redirect(i, o),
            XDP_TX => Err("transmitted back to the LAN".into()),
            XDP_PASS if o != i => Err("passed changed".into()),
            _ => Ok(()),
        })?;
        let underlay = run_corpus(
            gw,
            programs::UNDERLAY_INGRESS,
            underlay_corpus,
            |i, v, o| match v {
                XDP_TX => check_underlay_tx(i, o),
                XDP_REDIRECT => check_underlay_redirect(i, o),
                _ => Ok(()),
            },
        )?;
        Ok((lan, underlay))
    })?
}
