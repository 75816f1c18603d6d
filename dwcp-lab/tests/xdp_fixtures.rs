//! BPF_PROG_TEST_RUN fixtures for the XDP programs: input bytes -> expected output bytes and
//! verdict, computed independently of the program (headers rebuilt, checksums recomputed from
//! scratch). Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).

use std::net::{IpAddr, Ipv4Addr};

use aya::programs::{TestRun, TestRunOptions};
use dwcp_common::{
    bucket_of, flow_hash, maps::programs, probe::*, wire::*, ClassifierKey, ClassifierRule,
    FlowKey, GatewayConfig, LanPort, LinkConfig, LinksDown, MemberPath, Neighbour, NeighbourKey,
    NextHop, NextHopTable, QosClass, QosPolicy, Reason, Route, VniEntry, CONFIG_F_READY,
    LINK_F_ADMIN_DOWN, LINK_F_AUTH, LINK_F_MONITORED, MAX_PATH_LINKS, NH_F_VALID, QOS_F_REWRITE,
};
use dwcp_control::nhg_table;
use dwcp_dataplane::decode_sample;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Member;
use dwcp_dataplane::Pinning;
use dwcp_dataplane::SLOT_REUSE_GUARD;
use dwcp_lab::frames::*;
use dwcp_lab::lab::PassProgram;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const SEED: u32 = 0x5eed_1234;
const GROUP: u32 = 7;
const IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

fn nexthop(id: u32) -> NextHop {
    NextHop {
        flags: NH_F_VALID,
        link_id: id,
        ifindex: 1,
        vni: 100 + id,
        local_ip4: [192, 0, 2, 1],
        remote_ip4: [198, 51, 100, id as u8],
        via_ip4: [198, 51, 100, id as u8],
        mtu: 1500,
        inner_dst_mac: [0x02, 0, 0, 0, 0xb0, id as u8],
        _pad: [0; 2],
    }
}

fn neighbour(id: u32) -> Neighbour {
    Neighbour {
        mac: [0xaa, 0, 0, 0, 0, id as u8],
        if_mac: IF_MAC,
        _pad: [0; 4],
    }
}

struct Fixture {
    dp: Dataplane,
    table: NextHopTable,
    /// Probe keys of links 1 to [`LINKS`].
    keys: std::collections::BTreeMap<u32, ProbeKey>,
}

/// Links 1 to 8 are next hops n (peer 198.51.100.n, VNI 100 + n); link 9 comes from region A's
/// gateway at 203.0.113.7 (VNI 109) and is no next hop: transit arrives on it.
const LINKS: u32 = 9;
const OUR_IP: &str = "192.0.2.1";
const REGION_A_GW: &str = "203.0.113.7";
/// BPF_PROG_TEST_RUN runs a program as if the packet arrived on the loopback interface.
const TEST_RUN_IFINDEX: u32 = 1;

fn peer_of(link: u32) -> Ipv4Addr {
    if link == LINKS {
        REGION_A_GW.parse().unwrap()
    } else {
        Ipv4Addr::new(198, 51, 100, link as u8)
    }
}

/// Link `link`'s underlay identity: from its peer to us, on the test run's interface, probes
/// with TTL 255, the peer's requests reflected at up to 1,000 a second in bursts of 4.
fn link_identity(link: u32) -> LinkConfig {
    LinkConfig {
        peer_ip4: peer_of(link).octets(),
        local_ip4: OUR_IP.parse::<Ipv4Addr>().unwrap().octets(),
        ifindex: TEST_RUN_IFINDEX,
        probe_min_ttl: PROBE_TTL,
        reflect_gap_ns: 1_000_000,
        reflect_burst: 4,
        ..Default::default()
    }
}

impl Fixture {
    /// A gateway with routes 10.2.0.0/16 and 2001:db8:2::/48 to a group of next hops 1 and 2
    /// (weights 1:3), classifier rules UDP/5004 -> realtime and TCP/22 -> interactive, every
    /// class rewriting its DSCP; links 1 to [`LINKS`] with their underlay identity, VNI and
    /// probe key, and the test run's interface a LAN port with MAC [`GW_MAC`].
    fn new() -> Fixture {
        let mut dp = Dataplane::load(Pinning::None).expect("load eBPF object (needs root)");
        dp.set_config(GatewayConfig {
            hash_seed: SEED,
            flags: CONFIG_F_READY,
            ..Default::default()
        })
        .unwrap();
        for id in [1, 2] {
            dp.set_nexthop(id, nexthop(id)).unwrap();
            dp.set_neighbour(
                NeighbourKey {
                    ifindex: 1,
                    ip4: [198, 51, 100, id as u8],
                },
                neighbour(id),
            )
            .unwrap();
        }
        dp.add_port(1).unwrap();
        // Frames arrive on the test run's interface, addressed to the gateway's MAC.
        dp.set_lan_port(
            TEST_RUN_IFINDEX,
            LanPort {
                mac: GW_MAC,
                _pad: [0; 2],
            },
        )
        .unwrap();
        let mut keys = std::collections::BTreeMap::new();
        for link in 1..=LINKS {
            dp.set_link_config(link, link_identity(link)).unwrap();
            dp.add_vni(
                100 + link,
                VniEntry {
                    link_id: link,
                    flags: 0,
                },
            )
            .unwrap();
            keys.insert(link, dp.probe_key(link).unwrap());
        }
        let table = dp
            .set_group(
                GROUP,
                &[
                    Member {
                        nexthop: 1,
                        weight: 1,
                        path: Default::default(),
                    },
                    Member {
                        nexthop: 2,
                        weight: 3,
                        path: Default::default(),
                    },
                ],
            )
            .unwrap();
        let route = Route {
            group_id: GROUP,
            default_class: QosClass::BestEffort as u8,
            _pad: [0; 3],
        };
        dp.set_route("10.2.0.0".parse().unwrap(), 16, route)
            .unwrap();
        dp.set_route("2001:db8:2::".parse().unwrap(), 48, route)
            .unwrap();
        dp.set_classifier_rule(
            ClassifierKey {
                proto: IPPROTO_UDP,
                direction: 0,
                port: 5004,
            },
            ClassifierRule {
                class: QosClass::Realtime as u8,
                _pad: [0; 3],
            },
        )
        .unwrap();
        dp.set_classifier_rule(
            ClassifierKey {
                proto: IPPROTO_TCP,
                direction: 0,
                port: 22,
            },
            ClassifierRule {
                class: QosClass::Interactive as u8,
                _pad: [0; 3],
            },
        )
        .unwrap();
        for c in QosClass::ALL {
            dp.set_qos_policy(
                c as u8,
                QosPolicy {
                    dscp: c.default_dscp(),
                    flags: QOS_F_REWRITE,
                    _pad: [0; 6],
                },
            )
            .unwrap();
        }
        Fixture { dp, table, keys }
    }

    /// Sets the liveness settings (flags, hold-down, detection time) of `liveness` on `link`,
    /// which keeps its underlay identity.
    fn set_link(&mut self, link: u32, liveness: LinkConfig) -> dwcp_dataplane::Result<()> {
        self.dp.set_link_config(
            link,
            LinkConfig {
                flags: liveness.flags,
                up_after: liveness.up_after,
                detect_ns: liveness.detect_ns,
                ..link_identity(link)
            },
        )
    }

    /// A reply to our request `seq` of `link`, sent at `tx_ns`, as the link's peer reflects it.
    fn reply(&self, link: u32, seq: u32, tx_ns: u64) -> Vec<u8> {
        let h = ProbeHeader {
            kind: PROBE_KIND_REPLY,
            ..ProbeHeader::request(&self.keys[&link], link, seq, tx_ns)
        };
        probe_frame(&h, peer_of(link), PROBE_TTL)
    }

    fn underlay(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.run(programs::UNDERLAY_INGRESS, input)
    }

    fn run(&mut self, program: &'static str, input: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.program(program).unwrap();
        let mut out = vec![0u8; input.len() + 512];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("test_run of {} bytes: {e}", input.len()));
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    fn lan(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.run(programs::LAN_INGRESS, input)
    }

    fn reason(&self, r: Reason) -> u64 {
        self.dp.reason_count(r).unwrap()
    }

    /// Which next hop the group picks for this flow (before liveness).
    fn chosen(&self, key: &FlowKey) -> u32 {
        nhg_table::lookup(&self.table, flow_hash(key, SEED))
    }
}

fn v4_key(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowKey {
    let s: Ipv4Addr = src.parse().unwrap();
    let d: Ipv4Addr = dst.parse().unwrap();
    FlowKey {
        src: [u32::from(s), 0, 0, 0],
        dst: [u32::from(d), 0, 0, 0],
        src_port: sport,
        dst_port: dport,
        proto,
    }
}

fn v6_key(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowKey {
    let w = |a: &str| {
        let o = a.parse::<std::net::Ipv6Addr>().unwrap().octets();
        [0, 1, 2, 3]
            .map(|i| u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
    };
    FlowKey {
        src: w(src),
        dst: w(dst),
        src_port: sport,
        dst_port: dport,
        proto,
    }
}

/// The inner IP packet as the fast path must emit it: TTL / hop limit - 1, DSCP set (ECN
/// kept), IPv4 checksum recomputed from scratch.
fn expected_inner(l3: &[u8], dscp: u8) -> Vec<u8> {
    let mut p = l3.to_vec();
    if p[0] >> 4 == 4 {
        p[1] = (dscp << 2) | (p[1] & 3);
        p[8] -= 1;
        let ihl = (p[0] & 0xf) as usize * 4;
        p[10] = 0;
        p[11] = 0;
        let c = checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        let tc = ((p[0] & 0x0f) << 4) | (p[1] >> 4);
        let tc = (dscp << 2) | (tc & 3);
        p[0] = 0x60 | (tc >> 4);
        p[1] = ((tc & 0x0f) << 4) | (p[1] & 0x0f);
        p[7] -= 1;
    }
    p
}

/// The whole frame the fast path must send: outer Ethernet/IPv4/UDP/VXLAN, inner Ethernet,
/// inner packet.
fn expected_encap(l3_out: &[u8], nh: &NextHop, hash: u32) -> Vec<u8> {
    let v6 = l3_out[0] >> 4 == 6;
    let tos = if v6 {
        ((l3_out[0] & 0x0f) << 4) | (l3_out[1] >> 4)
    } else {
        l3_out[1]
    };
    let sport = ENCAP_SPORT_MIN + ((hash >> 16) % (65536 - ENCAP_SPORT_MIN as u32)) as u16;
    expected_outer(l3_out, v6, nh, sport, tos, [0; 4])
}

/// The frame the fast path sends to `nh` around the inner packet `l3_out`: outer Ethernet,
/// IPv4 (`tos`), UDP from `sport`, VXLAN with `route`, and the inner Ethernet header.
fn expected_outer(
    l3_out: &[u8],
    v6: bool,
    nh: &NextHop,
    sport: u16,
    tos: u8,
    route: [u8; 4],
) -> Vec<u8> {
    let n = neighbour(nh.link_id);
    let inner_len = 14 + l3_out.len();
    let mut f = eth(n.mac, n.if_mac, ETH_P_IP);
    let mut ip = vec![0x45, tos];
    ip.extend_from_slice(&((20 + 8 + 8 + inner_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    ip.extend_from_slice(&nh.local_ip4);
    ip.extend_from_slice(&nh.remote_ip4);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&VXLAN_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + 8 + inner_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&vxlan_header(nh.vni, route));
    f.extend_from_slice(&eth(
        nh.inner_dst_mac,
        n.if_mac,
        if v6 { ETH_P_IPV6 } else { ETH_P_IP },
    ));
    f.extend_from_slice(l3_out);
    f
}

/// Runs a frame that must be forwarded and checks every output byte and the counters.
fn assert_forwarded(fx: &mut Fixture, input: &[u8], key: FlowKey, class: QosClass) {
    let nh_id = fx.chosen(&key);
    let before_nh = fx.dp.nexthop_counters(nh_id).unwrap();
    let before_class = fx.dp.class_counters(class as u8).unwrap();
    let (verdict, out) = fx.lan(input);
    assert_eq!(verdict, XDP_REDIRECT, "verdict");
    let want = expected_encap(
        &expected_inner(&input[ETH_HLEN..], class.default_dscp()),
        &nexthop(nh_id),
        flow_hash(&key, SEED),
    );
    assert_eq!(out, want, "output bytes");
    // Independent parse of the result: valid outer IPv4 checksum, VXLAN on 4789.
    let parsed = etherparse::SlicedPacket::from_ethernet(&out).expect("output parses");
    match parsed.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
        }
        other => panic!("outer header is not IPv4: {other:?}"),
    }
    let after_nh = fx.dp.nexthop_counters(nh_id).unwrap();
    assert_eq!(after_nh.packets, before_nh.packets + 1);
    assert_eq!(after_nh.bytes, before_nh.bytes + input.len() as u64);
    assert_eq!(
        fx.dp.class_counters(class as u8).unwrap().packets,
        before_class.packets + 1
    );
}

fn assert_passed_unchanged(fx: &mut Fixture, input: &[u8], reason: Reason) {
    let before = fx.reason(reason);
    let (verdict, out) = fx.lan(input);
    assert_eq!(verdict, XDP_PASS, "verdict for {reason:?}");
    assert_eq!(out, input, "bytes must be unchanged ({reason:?})");
    assert_eq!(fx.reason(reason), before + 1, "counter {reason:?}");
}

fn udp_v4_frame(tos: u8) -> (Vec<u8>, FlowKey) {
    let mut ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9");
    ip.tos = tos;
    let f = frame(ETH_P_IP, &ip.build(&udp(40000, 5004, b"hello dwcp")));
    (f, v4_key("10.1.0.5", "10.2.0.9", IPPROTO_UDP, 40000, 5004))
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn ipv4_udp_is_classified_marked_and_encapsulated() {
    let mut fx = Fixture::new();
    let (f, key) = udp_v4_frame(0);
    assert_forwarded(&mut fx, &f, key, QosClass::Realtime);
    assert_eq!(fx.reason(Reason::LanForwarded), 1);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn ipv4_tcp_is_forwarded() {
    let mut fx = Fixture::new();
    let ip = V4::new(IPPROTO_TCP, "10.1.0.5", "10.2.200.1").build(&tcp(51000, 22, b""));
    assert_forwarded(
        &mut fx,
        &frame(ETH_P_IP, &ip),
        v4_key("10.1.0.5", "10.2.200.1", IPPROTO_TCP, 51000, 22),
        QosClass::Interactive,
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn ipv4_with_options_goes_to_the_kernel() {
    let mut fx = Fixture::new();
    // Harmless options (NOP NOP NOP EOL, timestamp-ish filler), and a loose source route
    // (type 131: length 7, pointer 4, one hop): both the kernel's.
    for options in [
        vec![1, 1, 1, 0, 0x44, 4, 5, 0],
        vec![131, 7, 4, 198, 51, 100, 9, 0],
    ] {
        let mut ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9");
        ip.options = options;
        let f = frame(ETH_P_IP, &ip.build(&udp(40001, 5004, b"opts")));
        assert_passed_unchanged(&mut fx, &f, Reason::LanPassIpOptions);
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn ipv6_udp_is_forwarded_with_traffic_class_rewritten() {
    let mut fx = Fixture::new();
    let ip = ipv6(
        0x03,
        64,
        IPPROTO_UDP,
        "2001:db8:1::5",
        "2001:db8:2::9",
        &udp(1234, 5004, b"v6"),
    );
    assert_forwarded(
        &mut fx,
        &frame(ETH_P_IPV6, &ip),
        v6_key("2001:db8:1::5", "2001:db8:2::9", IPPROTO_UDP, 1234, 5004),
        QosClass::Realtime,
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn vlan_tagged_frames_go_to_the_kernel() {
    let mut fx = Fixture::new();
    let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(40002, 9999, b"tagged"));
    let mut f = eth(GW_MAC, HOST_MAC, ETH_P_8021Q);
    f.extend_from_slice(&vlan_tag(42, ETH_P_IP));
    f.extend_from_slice(&ip);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassVlan);
    // Q-in-Q.
    let mut f = eth(GW_MAC, HOST_MAC, ETH_P_8021AD);
    f.extend_from_slice(&vlan_tag(7, ETH_P_8021Q));
    f.extend_from_slice(&vlan_tag(42, ETH_P_IP));
    f.extend_from_slice(&ip);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassVlan);
    // VLAN 0 (priority tag only) is a VLAN all the same: never merged with untagged traffic.
    let mut f = eth(GW_MAC, HOST_MAC, ETH_P_8021Q);
    f.extend_from_slice(&vlan_tag(0, ETH_P_IP));
    f.extend_from_slice(&ip);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassVlan);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn icmp_takes_the_route_default_class() {
    let mut fx = Fixture::new();
    let ip = V4::new(IPPROTO_ICMP, "10.1.0.5", "10.2.0.9").build(&icmp_echo(77, b"ping"));
    assert_forwarded(
        &mut fx,
        &frame(ETH_P_IP, &ip),
        v4_key("10.1.0.5", "10.2.0.9", IPPROTO_ICMP, 0, 0),
        QosClass::BestEffort,
    );
    let ip = ipv6(
        0,
        64,
        IPPROTO_ICMPV6,
        "2001:db8:1::5",
        "2001:db8:2::9",
        &[128, 0, 0, 0, 0, 1, 0, 1],
    );
    assert_forwarded(
        &mut fx,
        &frame(ETH_P_IPV6, &ip),
        v6_key("2001:db8:1::5", "2001:db8:2::9", IPPROTO_ICMPV6, 0, 0),
        QosClass::BestEffort,
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn dscp_rewrite_keeps_every_ecn_codepoint() {
    let mut fx = Fixture::new();
    for ecn in 0..4u8 {
        for old_dscp in [0u8, 10, 63] {
            let (f, key) = udp_v4_frame((old_dscp << 2) | ecn);
            assert_forwarded(&mut fx, &f, key, QosClass::Realtime);
            let (_, out) = fx.lan(&f);
            let inner_tos = out[VXLAN_ENCAP_LEN + 14 + 1];
            assert_eq!(inner_tos & 3, ecn, "ECN kept");
            assert_eq!(inner_tos >> 2, QosClass::Realtime.default_dscp());
            assert_eq!(out[14 + 1], inner_tos, "outer TOS copies the inner one");
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn no_route_non_ip_ttl_and_unknown_neighbour_pass_unchanged() {
    let mut fx = Fixture::new();
    let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.3.0.1").build(&udp(1, 2, b"x"));
    assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassNoRoute);
    let arp = frame(ETH_P_ARP, &[0u8; 28]);
    assert_passed_unchanged(&mut fx, &arp, Reason::LanPassNotIp);
    let mut ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9");
    ip.ttl = 1;
    assert_passed_unchanged(
        &mut fx,
        &frame(ETH_P_IP, &ip.build(&udp(1, 2, b"x"))),
        Reason::LanPassTtlExceeded,
    );
    let (f, key) = udp_v4_frame(0);
    let nh = fx.chosen(&key);
    fx.dp
        .remove_neighbour(&NeighbourKey {
            ifindex: 1,
            ip4: [198, 51, 100, nh as u8],
        })
        .unwrap();
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassNoNeighbour);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn not_ready_gateway_passes_everything() {
    let mut fx = Fixture::new();
    fx.dp
        .set_config(GatewayConfig {
            hash_seed: SEED,
            flags: 0,
            ..Default::default()
        })
        .unwrap();
    let (f, _) = udp_v4_frame(0);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassNotReady);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn too_big_for_the_underlay_passes_up() {
    let mut fx = Fixture::new();
    let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(40000, 5004, &[0u8; 1440]));
    // 1468-byte inner packet + 50 bytes of VXLAN > 1500.
    assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassTooBig);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn dead_link_moves_only_its_flows_to_the_next_live_member() {
    let mut fx = Fixture::new();
    // Both links monitored; only link 2 has answered probes recently.
    let cfg = LinkConfig {
        flags: LINK_F_MONITORED,
        up_after: 1,
        detect_ns: 30_000_000,
        ..Default::default()
    };
    fx.set_link(1, cfg).unwrap();
    fx.set_link(2, cfg).unwrap();
    // Make link 2 live through the underlay program: a probe reply it measures.
    let reply = fx.reply(2, 1, monotonic_ns() - 1_000_000);
    let (v, _) = fx.run(programs::UNDERLAY_INGRESS, &reply);
    assert_eq!(v, XDP_DROP);
    let mut moved = 0;
    for sport in 1000..1200u16 {
        let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(sport, 7, b"f"));
        let key = v4_key("10.1.0.5", "10.2.0.9", IPPROTO_UDP, sport, 7);
        let (verdict, out) = fx.lan(&frame(ETH_P_IP, &ip));
        assert_eq!(verdict, XDP_REDIRECT);
        let vni = u32::from_be_bytes([0, out[46], out[47], out[48]]);
        // Every flow now rides next hop 2 (VNI 102), including those hashed to next hop 1.
        assert_eq!(vni, 102);
        if fx.chosen(&key) == 1 {
            moved += 1;
        }
    }
    assert!(moved > 0, "some flows hashed to the dead member");
    assert_eq!(fx.reason(Reason::LanFailover), moved);
    // With link 2 silent for longer than detect_ns too, nothing is live: pass up.
    fx.set_link(
        2,
        LinkConfig {
            detect_ns: 1,
            ..cfg
        },
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let (f, _) = udp_v4_frame(0);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassNoLiveNextHop);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn held_down_link_carries_flows_only_while_no_member_is_usable() {
    let mut fx = Fixture::new();
    // Long detection so a pause of this VM cannot expire a reply mid-test.
    let cfg = LinkConfig {
        flags: LINK_F_MONITORED,
        up_after: 3,
        detect_ns: 5_000_000_000,
        ..Default::default()
    };
    fx.set_link(1, cfg).unwrap();
    fx.set_link(2, cfg).unwrap();
    let reply = |fx: &mut Fixture, link: u32, seq: u32| {
        let f = fx.reply(link, seq, monotonic_ns() - 1_000_000);
        assert_eq!(fx.run(programs::UNDERLAY_INGRESS, &f).0, XDP_DROP);
    };
    let vni_of = |fx: &mut Fixture, sport: u16| {
        let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(sport, 7, b"f"));
        let (verdict, out) = fx.lan(&frame(ETH_P_IP, &ip));
        assert_eq!(verdict, XDP_REDIRECT, "flow {sport}");
        u32::from_be_bytes([0, out[46], out[47], out[48]])
    };
    // Link 1 never answered; link 2 answered once after its outage: held down, yet the only
    // member that can carry. Every flow takes it rather than the kernel's (absent) route.
    reply(&mut fx, 2, 1);
    assert_eq!(fx.dp.link_state(2).unwrap().good_streak, 1);
    let flows = 1000..1100u16;
    let mut hashed_to = [0u32; 2];
    for sport in flows.clone() {
        assert_eq!(vni_of(&mut fx, sport), 102);
        let key = v4_key("10.1.0.5", "10.2.0.9", IPPROTO_UDP, sport, 7);
        hashed_to[(fx.chosen(&key) - 1) as usize] += 1;
    }
    assert!(hashed_to.iter().all(|&n| n > 0), "{hashed_to:?}");
    assert_eq!(fx.reason(Reason::LanHeldDownFallback), 100);
    assert_eq!(fx.reason(Reason::LanPassNoLiveNextHop), 0);
    // Link 1 comes up fully (3 replies in a row): it is usable, link 2 still held down, so
    // every flow rides link 1 and the fallback is no longer taken.
    for seq in 1..=3 {
        reply(&mut fx, 1, seq);
    }
    for sport in flows.clone() {
        assert_eq!(vni_of(&mut fx, sport), 101, "flow {sport}");
    }
    assert_eq!(fx.reason(Reason::LanHeldDownFallback), 100);
    // Link 2 finishes its hold-down: each flow is back on its hashed member.
    for seq in 2..=3 {
        reply(&mut fx, 2, seq);
    }
    for sport in flows {
        let key = v4_key("10.1.0.5", "10.2.0.9", IPPROTO_UDP, sport, 7);
        assert_eq!(vni_of(&mut fx, sport), 100 + fx.chosen(&key));
    }
    assert_eq!(fx.reason(Reason::LanHeldDownFallback), 100);
    // An administratively downed link is never a fallback, answering or not.
    for link in [1, 2] {
        fx.set_link(
            link,
            LinkConfig {
                flags: LINK_F_MONITORED | LINK_F_ADMIN_DOWN,
                ..cfg
            },
        )
        .unwrap();
    }
    let (f, _) = udp_v4_frame(0);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassNoLiveNextHop);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn forwarded_packets_are_sampled_into_the_ring_buffer_at_the_configured_rate() {
    let mut fx = Fixture::new();
    let mut ring = fx.dp.take_flow_samples().expect("the ring buffer");
    let drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(decode_sample(&item).expect("a whole record"));
        }
        out
    };
    // Sampling off (the fixture's configuration): nothing.
    let (f, key) = udp_v4_frame(0);
    assert_eq!(fx.lan(&f).0, XDP_REDIRECT);
    assert!(drain(&mut ring).is_empty());
    // Every packet (1 in 1): one record per forwarded packet, with its flow, length, class and
    // next hop; a packet passed up is not sampled.
    let every = |n| GatewayConfig {
        hash_seed: SEED,
        flags: CONFIG_F_READY,
        sample_threshold: dwcp_common::sample_threshold(n),
        ..Default::default()
    };
    fx.dp.set_config(every(1)).unwrap();
    assert_eq!(fx.lan(&f).0, XDP_REDIRECT);
    let ip6 = ipv6(
        0,
        64,
        IPPROTO_UDP,
        "2001:db8:1::5",
        "2001:db8:2::9",
        &udp(7, 5004, b"v6"),
    );
    let f6 = frame(ETH_P_IPV6, &ip6);
    assert_eq!(fx.lan(&f6).0, XDP_REDIRECT);
    let no_route = V4::new(IPPROTO_UDP, "10.1.0.5", "10.3.0.1").build(&udp(1, 2, b"x"));
    assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &no_route), Reason::LanPassNoRoute);
    let got = drain(&mut ring);
    assert_eq!(got.len(), 2, "{got:?}");
    let (v4, v6) = (&got[0], &got[1]);
    assert_eq!((v4.src, v4.dst), (key.src, key.dst));
    assert_eq!(
        (v4.src_port, v4.dst_port, v4.proto),
        (key.src_port, key.dst_port, key.proto)
    );
    assert_eq!((v4.v6, v4.bytes as usize), (0, f.len()));
    assert_eq!(v4.nexthop, fx.chosen(&key));
    assert_eq!(v4.group, GROUP);
    assert_eq!(v4.class, QosClass::Realtime as u8, "UDP/5004 is realtime");
    let p6 = dwcp_control::traffic::SampledPacket::from(v6);
    assert_eq!(p6.src, "2001:db8:1::5".parse::<IpAddr>().unwrap());
    assert_eq!((v6.v6, v6.bytes as usize), (1, f6.len()));
    // Sampled as offered: a packet the policer re-marks to best effort (or drops) is
    // sampled in the class it asked for, so the demand estimate sees what was offered.
    let rt = dwcp_common::PolicerKey {
        group_id: GROUP,
        class: QosClass::Realtime as u8,
        _pad: [0; 3],
    };
    fx.dp
        .set_policer(rt, 1, 0, dwcp_common::POLICE_REMARK)
        .unwrap();
    assert_forwarded(&mut fx, &f, key, QosClass::BestEffort);
    fx.dp
        .set_policer(rt, 1, 0, dwcp_common::POLICE_DROP)
        .unwrap();
    assert_eq!(fx.lan(&f).0, XDP_DROP);
    let got = drain(&mut ring);
    let classes: Vec<u8> = got.iter().map(|r| r.class).collect();
    assert_eq!(classes, [QosClass::Realtime as u8; 2], "{got:?}");
    fx.dp.remove_policer(&rt).unwrap();
    // One in 4: a random draw per packet, so about a quarter of 4,000.
    let policing_off = GatewayConfig {
        flags: CONFIG_F_READY,
        ..every(4)
    };
    fx.dp.set_config(policing_off).unwrap();
    let mut n = 0;
    for i in 0..4_000u32 {
        let (f, _) = udp_v4_frame(0);
        assert_eq!(fx.lan(&f).0, XDP_REDIRECT);
        if i % 500 == 499 {
            n += drain(&mut ring).len();
        }
    }
    // Binomial(4000, 1/4): mean 1,000, standard deviation 27; 5 deviations either side.
    assert!((865..=1135).contains(&n), "{n} samples of 4,000 at 1 in 4");
}

/// Every prefix of a valid frame (all truncation lengths) must pass up unchanged.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn every_truncation_passes_unchanged_and_never_redirects() {
    let mut fx = Fixture::new();
    let mut opts = V4::new(IPPROTO_TCP, "10.1.0.5", "10.2.0.9");
    opts.options = vec![1, 1, 1, 0];
    let mut vlan = eth(GW_MAC, HOST_MAC, ETH_P_8021Q);
    vlan.extend_from_slice(&vlan_tag(3, ETH_P_IP));
    vlan.extend_from_slice(&V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(5, 6, b"abc")));
    let frames = vec![
        udp_v4_frame(0).0,
        frame(ETH_P_IP, &opts.build(&tcp(1, 22, b""))),
        frame(
            ETH_P_IPV6,
            &ipv6(
                0,
                64,
                IPPROTO_UDP,
                "2001:db8:1::5",
                "2001:db8:2::9",
                &udp(1, 2, b"abcd"),
            ),
        ),
        frame(
            ETH_P_IP,
            &V4::new(IPPROTO_ICMP, "10.1.0.5", "10.2.0.9").build(&icmp_echo(1, b"")),
        ),
        vlan,
    ];
    for f in frames {
        // The kernel refuses to run XDP on less than an Ethernet header.
        for len in ETH_HLEN..f.len() {
            let input = &f[..len];
            let (verdict, out) = fx.lan(input);
            assert_eq!(verdict, XDP_PASS, "truncated to {len} bytes");
            assert_eq!(out, input, "truncated to {len} bytes: unchanged");
        }
    }
    // Shorter than an Ethernet header: BPF_PROG_TEST_RUN itself refuses, nothing runs.
    let prog = fx.dp.program(programs::LAN_INGRESS).unwrap();
    for len in [0usize, 1, 13] {
        let input = vec![0u8; len];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(&input),
            ..Default::default()
        });
        assert!(r.is_err(), "{len}-byte frame accepted by the kernel");
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn lying_headers_and_fragments_pass_unchanged() {
    let mut fx = Fixture::new();
    let good = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(40000, 5004, b"payload"));
    // IHL below 5, and IHL pointing past the packet.
    for ihl in [0u8, 4, 15] {
        let mut ip = good.clone();
        ip[0] = 0x40 | ihl;
        assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassMalformed);
    }
    // Total length longer than the frame; shorter than the header.
    for tot in [good.len() as u16 + 1, 19] {
        let mut ip = good.clone();
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassMalformed);
    }
    // Wrong version in an IPv4 frame.
    let mut ip = good.clone();
    ip[0] = 0x65;
    assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassMalformed);
    // Fragments: more-fragments set; non-zero offset.
    for frag in [0x2000u16, 0x0010] {
        let mut v4 = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9");
        v4.frag_off = frag;
        assert_passed_unchanged(
            &mut fx,
            &frame(ETH_P_IP, &v4.build(&udp(1, 2, b"frag"))),
            Reason::LanPassFragment,
        );
    }
    // IPv6: payload length beyond the frame, zero (jumbogram), fragment header.
    let v6 = ipv6(
        0,
        64,
        IPPROTO_UDP,
        "2001:db8:1::5",
        "2001:db8:2::9",
        &udp(1, 2, b"abcd"),
    );
    for plen in [v6.len() as u16, 0] {
        let mut ip = v6.clone();
        ip[4..6].copy_from_slice(&plen.to_be_bytes());
        assert_passed_unchanged(&mut fx, &frame(ETH_P_IPV6, &ip), Reason::LanPassMalformed);
    }
    let frag = ipv6(
        0,
        64,
        44,
        "2001:db8:1::5",
        "2001:db8:2::9",
        &[17, 0, 0, 1, 0, 0, 0, 9, 0, 1, 0, 2, 0, 12, 0, 0],
    );
    assert_passed_unchanged(&mut fx, &frame(ETH_P_IPV6, &frag), Reason::LanPassFragment);
    // A UDP header cut short by the IP total length (the frame itself is long enough).
    let mut ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(1, 2, b""));
    ip[2..4].copy_from_slice(&24u16.to_be_bytes());
    let c = {
        ip[10] = 0;
        ip[11] = 0;
        checksum(&ip[..20])
    };
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassMalformed);
    // Transport lengths that lie: a UDP length below its header or past the packet, a TCP
    // data offset below 5 words or past the packet.
    for udp_len in [7u16, 100] {
        let mut l4 = udp(1, 2, b"abcd");
        l4[4..6].copy_from_slice(&udp_len.to_be_bytes());
        let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&l4);
        assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassMalformed);
    }
    for doff in [4u8, 15] {
        let mut l4 = tcp(1, 22, b"abcd");
        l4[12] = doff << 4;
        let ip = V4::new(IPPROTO_TCP, "10.1.0.5", "10.2.0.9").build(&l4);
        assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassMalformed);
    }
}

/// Probe `h` from `src` to us, arriving with `ttl`.
fn probe_frame(h: &ProbeHeader, src: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut b = [0u8; PROBE_LEN];
    h.encode(&mut b);
    let mut ip = V4::new(IPPROTO_UDP, &src.to_string(), OUR_IP);
    ip.ttl = ttl;
    frame(ETH_P_IP, &ip.build(&udp(40000, PROBE_PORT, &b)))
}

/// The peer's request `seq` on `link` (its token is the peer's business: any value).
fn request(link: u32, seq: u32) -> Vec<u8> {
    let h = ProbeHeader {
        kind: PROBE_KIND_REQUEST,
        flags: 0,
        link_id: link,
        seq,
        tx_ns: 12345,
        token: 0x0bad_cafe_f00d_0001,
        mac: 0,
    };
    probe_frame(&h, peer_of(link), PROBE_TTL)
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn probe_request_is_reflected_in_place() {
    let mut fx = Fixture::new();
    let (verdict, out) = fx.underlay(&request(3, 9));
    assert_eq!(verdict, XDP_TX);
    // Expected: MACs, IPs and ports swapped, TTL 255, UDP checksum 0, kind = reply, and
    // nothing of the reflector's (its clock least of all): the token goes back as it came.
    let mut want = eth(HOST_MAC, GW_MAC, ETH_P_IP);
    let mut ip = V4::new(IPPROTO_UDP, OUR_IP, "198.51.100.3");
    ip.ttl = PROBE_TTL;
    let mut body = [0u8; PROBE_LEN];
    ProbeHeader {
        kind: PROBE_KIND_REPLY,
        flags: 0,
        link_id: 3,
        seq: 9,
        tx_ns: 12345,
        token: 0x0bad_cafe_f00d_0001,
        mac: 0,
    }
    .encode(&mut body);
    want.extend_from_slice(&ip.build(&udp(PROBE_PORT, 40000, &body)));
    assert_eq!(out, want);
    assert_eq!(fx.dp.link_state(3).unwrap().reflected, 1);
    assert_eq!(fx.reason(Reason::UnderlayProbeReflected), 1);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn probe_reply_becomes_link_state() {
    let mut fx = Fixture::new();
    fx.set_link(
        4,
        LinkConfig {
            flags: LINK_F_MONITORED,
            up_after: 3,
            detect_ns: 30_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    for seq in 1..=3u32 {
        let tx = monotonic_ns() - 2_000_000; // sent 2 ms ago
        let (verdict, _) = fx.underlay(&fx.reply(4, seq, tx));
        assert_eq!(verdict, XDP_DROP, "replies are consumed");
        let st = fx.dp.link_state(4).unwrap();
        assert_eq!(st.replies, seq as u64);
        assert_eq!(st.good_streak, seq);
        assert_eq!(st.last_seq, seq);
        assert!(
            st.last_rtt_ns >= 2_000_000 && st.last_rtt_ns < 1_000_000_000,
            "rtt {}",
            st.last_rtt_ns
        );
        assert!(st.srtt_ns >= 2_000_000);
    }
    // Not a probe of ours (bad magic, version 1): passed up, not counted.
    let mut bad_magic = fx.reply(4, 9, monotonic_ns());
    bad_magic[42] ^= 0xff;
    let mut version_1 = request(4, 9);
    version_1[46] = 1;
    for f in [bad_magic, version_1] {
        let (verdict, out) = fx.underlay(&f);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, f);
    }
    assert_eq!(fx.reason(Reason::UnderlayProbeBad), 2);
    // Ours, but sent "in the future", too long ago, or not after the last one taken (a
    // replay): dropped as stale, not measured.
    let last = fx.reply(4, 3, fx.dp.link_state(4).unwrap().last_tx_ns);
    for f in [
        fx.reply(4, 9, monotonic_ns() + 60_000_000_000),
        fx.reply(4, 9, monotonic_ns() - PROBE_MAX_AGE_NS - 1_000_000),
        last,
    ] {
        assert_eq!(fx.underlay(&f).0, XDP_DROP);
    }
    assert_eq!(fx.reason(Reason::UnderlayProbeStale), 3);
    assert_eq!(fx.dp.link_state(4).unwrap().replies, 3);
}

/// VXLAN of link `link` (VNI 100 + link) from its peer.
fn vxlan_frame(link: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame_from(&peer_of(link).to_string(), 100 + link, inner)
}

/// VXLAN from the gateway at `src` (the fixture's next hop n is 198.51.100.n).
fn vxlan_frame_from(src: &str, vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame_routed(src, vni, [0; 4], inner)
}

/// VXLAN carrying a source route (its first byte: the exit this gateway is to take).
fn vxlan_frame_routed(src: &str, vni: u32, route: [u8; 4], inner: &[u8]) -> Vec<u8> {
    let mut payload = vxlan_header(vni, route).to_vec();
    payload.extend_from_slice(inner);
    let ip = V4::new(IPPROTO_UDP, src, OUR_IP).build(&udp(50000, VXLAN_PORT, &payload));
    let mut f = eth([2, 0, 0, 0, 0, 0x99], [2, 0, 0, 0, 0, 0x98], ETH_P_IP);
    f.extend_from_slice(&ip);
    f
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn vxlan_for_an_unknown_vni_goes_to_the_kernel_untouched() {
    let mut fx = Fixture::new();
    let inner = frame(
        ETH_P_IP,
        &V4::new(IPPROTO_UDP, "10.2.0.9", "10.1.0.5").build(&udp(1, 2, b"back")),
    );
    let f = vxlan_frame_from(&peer_of(1).to_string(), 555, &inner);
    let (verdict, out) = fx.run(programs::UNDERLAY_INGRESS, &f);
    assert_eq!((verdict, out), (XDP_PASS, f));
    assert_eq!(fx.reason(Reason::UnderlayPassUnknownVni), 1);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn vxlan_for_our_vni_is_decapsulated() {
    let mut fx = Fixture::new();
    let l3 = V4::new(IPPROTO_UDP, "10.2.0.9", "10.1.0.5").build(&udp(1, 2, b"back"));
    let f = vxlan_frame(1, &frame(ETH_P_IP, &l3));
    let (verdict, out) = fx.run(programs::UNDERLAY_INGRESS, &f);
    // In the test's namespace the kernel has no route for 10.1.0.5: the inner packet goes up
    // the stack addressed to us (outer destination MAC), unchanged otherwise.
    assert_eq!(verdict, XDP_PASS);
    let mut want = eth([2, 0, 0, 0, 0, 0x99], [2, 0, 0, 0, 0, 0x98], ETH_P_IP);
    want.extend_from_slice(&l3);
    assert_eq!(out, want);
    assert_eq!(fx.reason(Reason::UnderlayDecapPassed), 1);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn the_labs_pass_program_passes_frames_untouched() {
    // Not the gateway's: the lab's object, on the labs' veth ends and the dataplane
    // benchmark's baseline.
    let mut pass = PassProgram::load().expect("load the lab's eBPF object (needs root)");
    let (f, _) = udp_v4_frame(0);
    let mut out = vec![0u8; f.len() + 512];
    let res = pass
        .program()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&f),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .unwrap();
    out.truncate(res.data_size_out as usize);
    assert_eq!((res.return_value, out), (XDP_PASS, f));
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn transit_follows_the_source_route_and_rewrites_only_the_outer_headers() {
    let mut fx = Fixture::new();
    fx.dp.set_transit_exit(3, 2).unwrap();
    // From region A's gateway on its link, for wherever: the route, not the destination,
    // says where it goes (exit 3 here, then exit 5 at the next gateway).
    let l3 = V4::new(IPPROTO_UDP, "10.1.0.5", "10.7.0.9").build(&udp(40000, 5004, b"transit"));
    let inner = frame(ETH_P_IP, &l3);
    let f = vxlan_frame_routed(REGION_A_GW, 100 + LINKS, [3, 5, 0, 0], &inner);
    let (verdict, out) = fx.underlay(&f);
    assert_eq!(verdict, XDP_REDIRECT);
    // Only the outer headers change: the outer source port (the flow's entropy) stays, the
    // route loses its first exit, the inner frame is addressed for the next link and its
    // packet is untouched (TTL included).
    let want = expected_outer(&l3, false, &nexthop(2), 50000, 0, [5, 0, 0, 0]);
    assert_eq!(out, want);
    assert_eq!(fx.reason(Reason::UnderlayTransit), 1);
    assert_eq!(fx.dp.nexthop_counters(2).unwrap().packets, 1);
}

/// A transit gateway never routes on its own: an exit it does not have, a dead or
/// reported-down exit link, or a WireGuard exit (which XDP cannot encrypt) drops the packet.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn transit_drops_what_its_exit_cannot_carry_and_never_routes_it_elsewhere() {
    let mut fx = Fixture::new();
    fx.dp.set_transit_exit(1, 1).unwrap();
    fx.dp.set_transit_exit(2, 2).unwrap();
    let l3 = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(40000, 5004, b"transit"));
    let inner = frame(ETH_P_IP, &l3);
    let routed = |exit: u8| vxlan_frame_routed(REGION_A_GW, 100 + LINKS, [exit, 0, 0, 0], &inner);
    // No exit 9 here, although 10.2.0.0/16 has a route: dropped, not routed.
    assert_eq!(fx.underlay(&routed(9)).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::TransitNoExit), 1);
    // Exit 1's link reported down by a record; exit 2's link dead by our probes.
    fx.dp.set_links_down(LinksDown::of([1])).unwrap();
    fx.set_link(
        2,
        LinkConfig {
            flags: LINK_F_MONITORED,
            up_after: 1,
            detect_ns: 30_000_000,
            ..link_identity(2)
        },
    )
    .unwrap();
    assert_eq!(fx.underlay(&routed(1)).0, XDP_DROP);
    assert_eq!(fx.underlay(&routed(2)).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::TransitExitDown), 2);
    // Back up: carried again.
    fx.dp.set_links_down(LinksDown::default()).unwrap();
    assert_eq!(fx.underlay(&routed(1)).0, XDP_REDIRECT);
    // A WireGuard exit: never in clear text.
    fx.dp.set_nexthop(1, NextHop::handoff(1, 1, 0x64)).unwrap();
    assert_eq!(fx.underlay(&routed(1)).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::HandoffTransit), 1);
    assert_eq!(fx.reason(Reason::UnderlayTransit), 1);
    assert_eq!(fx.reason(Reason::UnderlayDecapPassed), 0);
}

/// Members are whole paths: a member whose path crosses a link the records say is down is
/// skipped at once (its flows move to the next live member), the other members' flows stay,
/// and every packet carries its member's source route.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_member_whose_path_crosses_a_down_link_is_skipped_and_the_others_keep_their_flows() {
    let mut fx = Fixture::new();
    let path = |links: &[u16], route: [u8; 4]| {
        let mut p = MemberPath {
            links: [links[0]; MAX_PATH_LINKS],
            link_count: links.len() as u8,
            route,
            ..Default::default()
        };
        p.links[..links.len()].copy_from_slice(links);
        p
    };
    let members = [
        Member {
            nexthop: 1,
            weight: 1,
            path: path(&[1, 7, 8], [4, 2, 0, 0]),
        },
        Member {
            nexthop: 2,
            weight: 1,
            path: path(&[2, 6], [3, 0, 0, 0]),
        },
    ];
    fx.table = fx.dp.set_group(GROUP, &members).unwrap();
    let route_of = |out: &[u8]| [out[43], out[44], out[45], out[49]];
    let flows: Vec<(u16, u32)> = (6000..6100u16)
        .map(|sport| {
            let key = v4_key("10.1.0.5", "10.2.0.9", IPPROTO_UDP, sport, 7);
            (sport, fx.chosen(&key))
        })
        .collect();
    assert!(flows.iter().any(|f| f.1 == 1) && flows.iter().any(|f| f.1 == 2));
    let send = |fx: &mut Fixture, sport: u16| {
        let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(sport, 7, b"f"));
        let (verdict, out) = fx.lan(&frame(ETH_P_IP, &ip));
        assert_eq!(verdict, XDP_REDIRECT);
        (out[33], route_of(&out))
    };
    for &(sport, member) in &flows {
        let want = if member == 1 {
            [4, 2, 0, 0]
        } else {
            [3, 0, 0, 0]
        };
        assert_eq!(send(&mut fx, sport), (member as u8, want), "flow {sport}");
    }
    // Link 8, two hops away on member 1's path, goes down: member 1's flows move, member 2's
    // stay where they were. A link no member crosses changes nothing.
    fx.dp.set_links_down(LinksDown::of([8, 300])).unwrap();
    for &(sport, _) in &flows {
        assert_eq!(send(&mut fx, sport), (2, [3, 0, 0, 0]), "flow {sport}");
    }
    let moved = flows.iter().filter(|f| f.1 == 1).count() as u64;
    assert_eq!(fx.reason(Reason::LanRemoteLinkDown), moved);
    assert_eq!(fx.reason(Reason::LanFailover), moved);
    fx.dp.set_links_down(LinksDown::of([300])).unwrap();
    for &(sport, member) in &flows {
        assert_eq!(send(&mut fx, sport).0, member as u8, "flow {sport} back");
    }
    // Both paths down: nothing to carry the flows, the kernel gets them.
    fx.dp.set_links_down(LinksDown::of([7, 6])).unwrap();
    let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(6000, 7, b"f"));
    assert_eq!(fx.lan(&frame(ETH_P_IP, &ip)).0, XDP_PASS);
    assert_eq!(fx.reason(Reason::LanPassNoLiveNextHop), 1);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn standby_member_takes_traffic_only_when_the_active_one_is_dead() {
    let mut fx = Fixture::new();
    fx.dp
        .set_group(
            GROUP,
            &[
                Member {
                    nexthop: 1,
                    weight: 1,
                    path: Default::default(),
                },
                Member {
                    nexthop: 2,
                    weight: 0,
                    path: Default::default(),
                },
            ],
        )
        .unwrap();
    let cfg = LinkConfig {
        flags: LINK_F_MONITORED,
        up_after: 1,
        detect_ns: 30_000_000,
        ..Default::default()
    };
    fx.set_link(1, cfg).unwrap();
    fx.set_link(2, cfg).unwrap();
    for link in [1, 2] {
        let (v, _) = fx.run(
            programs::UNDERLAY_INGRESS,
            &fx.reply(link, 1, monotonic_ns() - 1_000_000),
        );
        assert_eq!(v, XDP_DROP);
    }
    let vni_of = |out: &[u8]| u32::from_be_bytes([0, out[46], out[47], out[48]]);
    for sport in 2000..2050u16 {
        let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(sport, 7, b"f"));
        let (verdict, out) = fx.lan(&frame(ETH_P_IP, &ip));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            vni_of(&out),
            101,
            "both links live: the active member carries everything"
        );
    }
    // Link 1 goes silent: every flow moves to the standby.
    fx.set_link(
        1,
        LinkConfig {
            detect_ns: 1,
            ..cfg
        },
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    for sport in 2000..2050u16 {
        let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(sport, 7, b"f"));
        let (verdict, out) = fx.lan(&frame(ETH_P_IP, &ip));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(vni_of(&out), 102, "active dead: the standby takes over");
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn removing_a_classifier_rule_stops_classifying_its_port() {
    let mut fx = Fixture::new();
    let (f, key) = udp_v4_frame(0);
    assert_forwarded(&mut fx, &f, key, QosClass::Realtime);
    fx.dp
        .remove_classifier_rule(&ClassifierKey {
            proto: IPPROTO_UDP,
            direction: 0,
            port: 5004,
        })
        .unwrap();
    assert_forwarded(&mut fx, &f, key, QosClass::BestEffort);
    // A rule for any protocol on the source port classifies too.
    fx.dp
        .set_classifier_rule(
            ClassifierKey {
                proto: 0,
                direction: 1,
                port: 40000,
            },
            ClassifierRule {
                class: QosClass::Bulk as u8,
                _pad: [0; 3],
            },
        )
        .unwrap();
    assert_forwarded(&mut fx, &f, key, QosClass::Bulk);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn policer_remarks_or_drops_over_rate_traffic_and_leaves_the_rest() {
    use dwcp_common::{PolicerKey, POLICER_ANY_GROUP, POLICE_DROP, POLICE_REMARK};
    let mut fx = Fixture::new();
    let (f, key) = udp_v4_frame(0);
    let len = f.len() as u64;
    // Realtime towards this group: a 5-packet burst, refilled at 1 byte/s (nothing, here).
    let rt = PolicerKey {
        group_id: GROUP,
        class: QosClass::Realtime as u8,
        _pad: [0; 3],
    };
    fx.dp.set_policer(rt, 1, 5 * len, POLICE_REMARK).unwrap();
    for _ in 0..5 {
        assert_forwarded(&mut fx, &f, key, QosClass::Realtime);
    }
    // Over the rate: re-marked to best effort (DSCP 0), still forwarded.
    assert_forwarded(&mut fx, &f, key, QosClass::BestEffort);
    assert_eq!(fx.reason(Reason::PolicerRemarked), 1);
    let p = fx.dp.policer(&rt).unwrap().unwrap();
    assert_eq!((p.conformed, p.exceeded), (5, 1));
    // Dropping policer for the class everywhere (TCP/22 is interactive).
    let inter = PolicerKey {
        group_id: POLICER_ANY_GROUP,
        class: QosClass::Interactive as u8,
        _pad: [0; 3],
    };
    let ip = V4::new(IPPROTO_TCP, "10.1.0.5", "10.2.200.1").build(&tcp(51000, 22, b""));
    let tcp_frame = frame(ETH_P_IP, &ip);
    fx.dp
        .set_policer(inter, 1, tcp_frame.len() as u64, POLICE_DROP)
        .unwrap();
    let tkey = v4_key("10.1.0.5", "10.2.200.1", IPPROTO_TCP, 51000, 22);
    assert_forwarded(&mut fx, &tcp_frame, tkey, QosClass::Interactive);
    let (verdict, _) = fx.lan(&tcp_frame);
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(fx.reason(Reason::PolicerDropped), 1);
    // Under the rate: a generous policer leaves every packet untouched.
    fx.dp
        .set_policer(rt, 1_000_000_000, 1_000_000, POLICE_DROP)
        .unwrap();
    for _ in 0..50 {
        assert_forwarded(&mut fx, &f, key, QosClass::Realtime);
    }
    // Removing the last policers turns policing off.
    fx.dp.remove_policer(&rt).unwrap();
    fx.dp.remove_policer(&inter).unwrap();
    assert_eq!(
        fx.dp.config().unwrap().flags & dwcp_common::CONFIG_F_POLICING,
        0
    );
    assert_forwarded(&mut fx, &tcp_frame, tkey, QosClass::Interactive);
}

// ---------------------------------------------------------------------------------------------
// Double-buffered group tables: the program reads the table of the slot in force only.

fn one_member_table(nexthop: u32) -> NextHopTable {
    nhg_table::build_table(
        &[Member {
            nexthop,
            weight: 1,
            path: Default::default(),
        }],
        None,
    )
    .unwrap()
}

fn vni_of(out: &[u8]) -> u32 {
    u32::from_be_bytes([0, out[46], out[47], out[48]])
}

/// Adds next hops 3 and 4 (with neighbours) to the fixture's 1 and 2.
fn add_nexthops_3_and_4(fx: &mut Fixture) {
    for id in [3, 4] {
        fx.dp.set_nexthop(id, nexthop(id)).unwrap();
        fx.dp
            .set_neighbour(
                NeighbourKey {
                    ifindex: 1,
                    ip4: [198, 51, 100, id as u8],
                },
                neighbour(id),
            )
            .unwrap();
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn the_lan_program_reads_only_the_slot_in_force() {
    let mut fx = Fixture::new();
    add_nexthops_3_and_4(&mut fx);
    // Two writes: one slot holds "all to 3", then the other, "all to 4", is in force.
    let before = fx.dp.active_slot(GROUP).unwrap();
    fx.dp.set_group_table(GROUP, &one_member_table(3)).unwrap();
    assert_eq!(fx.dp.active_slot(GROUP).unwrap(), 1 - before);
    fx.dp.set_group_table(GROUP, &one_member_table(4)).unwrap();
    assert_eq!(fx.dp.active_slot(GROUP).unwrap(), before);
    for sport in 3000..3040u16 {
        let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(sport, 7, b"s"));
        let (verdict, out) = fx.lan(&frame(ETH_P_IP, &ip));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(vni_of(&out), 104, "the table in force, not the other slot");
    }
    // Removing the group empties the slot in force: packets pass up, although the other
    // slot still holds a table.
    fx.dp.remove_group(GROUP).unwrap();
    assert_eq!(
        fx.dp.group_table(GROUP).unwrap(),
        Some(NextHopTable::default())
    );
    let (f, _) = udp_v4_frame(0);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassNoGroup);
}

/// Removes a pinned program on drop.
struct PinnedProgram(std::path::PathBuf);

impl Drop for PinnedProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One thread runs the LAN program on many flows (BPF_PROG_TEST_RUN, the real program and
/// maps) while this thread swaps the group's table between two member sets thousands of
/// times: every packet must be sent to the member the old table or the new table picks for
/// its flow, none dropped or passed up.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn swapping_a_group_under_traffic_sends_every_packet_by_the_old_or_the_new_table() {
    use std::sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    };
    const SWAPS: usize = 2_000;
    const FLOWS: u16 = 64;

    let mut fx = Fixture::new();
    add_nexthops_3_and_4(&mut fx);
    let weights = |a, b| {
        [
            Member {
                nexthop: a,
                weight: 1,
                path: Default::default(),
            },
            Member {
                nexthop: b,
                weight: 2,
                path: Default::default(),
            },
        ]
    };
    let old = nhg_table::build_table(&weights(1, 2), None).unwrap();
    let new = nhg_table::build_table(&weights(3, 4), None).unwrap();
    fx.dp.set_group_table(GROUP, &old).unwrap();

    let pin = PinnedProgram(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/dwcp-test-swap-under-traffic-{}",
        std::process::id()
    )));
    fx.dp
        .program(programs::LAN_INGRESS)
        .unwrap()
        .pin(&pin.0)
        .unwrap();
    let runner =
        aya::programs::Xdp::from_pin(&pin.0, aya_obj::programs::XdpAttachType::Interface).unwrap();

    let frames: Vec<(Vec<u8>, u32)> = (0..FLOWS)
        .map(|i| {
            let sport = 20_000 + i;
            let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(sport, 7, b"x"));
            let key = v4_key("10.1.0.5", "10.2.0.9", IPPROTO_UDP, sport, 7);
            (frame(ETH_P_IP, &ip), flow_hash(&key, SEED))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let seen_old = Arc::new(AtomicU64::new(0));
    let seen_new = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, seen_old, seen_new) = (stop.clone(), seen_old.clone(), seen_new.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let mut packets = 0u64;
            let mut out = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                for (f, hash) in &frames {
                    let res = runner
                        .test_run(TestRunOptions {
                            data_in: Some(f),
                            data_out: Some(&mut out),
                            ..Default::default()
                        })
                        .map_err(|e| e.to_string())?;
                    packets += 1;
                    if res.return_value != XDP_REDIRECT {
                        return Err(format!(
                            "packet {packets}: verdict {} instead of a redirect",
                            res.return_value
                        ));
                    }
                    let nh = vni_of(&out[..res.data_size_out as usize]) - 100;
                    let by_old = nhg_table::lookup(&old, *hash);
                    let by_new = nhg_table::lookup(&new, *hash);
                    if nh == by_old {
                        seen_old.fetch_add(1, Ordering::Relaxed);
                    } else if nh == by_new {
                        seen_new.fetch_add(1, Ordering::Relaxed);
                    } else {
                        return Err(format!(
                            "packet {packets}: next hop {nh}, but the old table picks {by_old} and the new one {by_new}"
                        ));
                    }
                }
            }
            Ok(packets)
        })
    };
    // Swap at least SWAPS times, and on until traffic has met both tables (on a loaded
    // machine the traffic thread may start late), within a minute.
    let t0 = std::time::Instant::now();
    let mut swaps = 0;
    while swaps < SWAPS
        || ((seen_old.load(Ordering::Relaxed) == 0 || seen_new.load(Ordering::Relaxed) == 0)
            && t0.elapsed() < std::time::Duration::from_secs(60))
    {
        if traffic.is_finished() {
            break;
        }
        let t = if swaps % 2 == 0 { &new } else { &old };
        fx.dp.set_group_table(GROUP, t).unwrap();
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let packets = traffic.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    let (o, n) = (
        seen_old.load(Ordering::Relaxed),
        seen_new.load(Ordering::Relaxed),
    );
    eprintln!(
        "{swaps} swaps, {packets} packets: {o} by the old table, {n} by the new one, guard waits {:?}",
        fx.dp.slot_guard_stats()
    );
    assert!(swaps >= SWAPS);
    assert_eq!(o + n, packets);
    assert!(o > 0 && n > 0, "traffic met both tables: {o} / {n}");
    // Back-to-back writes of one group are spaced by at least the slot guard.
    assert!(t0.elapsed() >= SLOT_REUSE_GUARD * (swaps as u32 - 1));
    assert!(fx.dp.slot_guard_stats().waits > 0);
    drop(pin);
}

const HANDOFF_GROUP: u32 = 8;
const HANDOFF_NH: u32 = 3;
const HANDOFF_MARK: u32 = 0x64;

/// The fixture plus 10.3.0.0/16 and 2001:db8:3::/48 routed to a group whose only member is a
/// hand-off (WireGuard) next hop with mark 0x64.
fn handoff_fixture() -> Fixture {
    let mut fx = Fixture::new();
    fx.dp
        .set_nexthop(HANDOFF_NH, NextHop::handoff(HANDOFF_NH, 9, HANDOFF_MARK))
        .unwrap();
    fx.dp
        .set_group(
            HANDOFF_GROUP,
            &[Member {
                nexthop: HANDOFF_NH,
                weight: 1,
                path: Default::default(),
            }],
        )
        .unwrap();
    let route = Route {
        group_id: HANDOFF_GROUP,
        default_class: QosClass::BestEffort as u8,
        _pad: [0; 3],
    };
    fx.dp
        .set_route("10.3.0.0".parse().unwrap(), 16, route)
        .unwrap();
    fx.dp
        .set_route("2001:db8:3::".parse().unwrap(), 48, route)
        .unwrap();
    fx
}

/// The frame with only the DSCP of its IP header rewritten, ECN kept, IPv4
/// checksum recomputed from scratch; TTL untouched (the kernel forwards it and decrements).
fn expected_handoff(input: &[u8], dscp: u8) -> Vec<u8> {
    let mut f = input.to_vec();
    let p = &mut f[ETH_HLEN..];
    if p[0] >> 4 == 4 {
        p[1] = (dscp << 2) | (p[1] & 3);
        let ihl = (p[0] & 0xf) as usize * 4;
        p[10] = 0;
        p[11] = 0;
        let c = checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        let tc = ((p[0] & 0x0f) << 4) | (p[1] >> 4);
        let tc = (dscp << 2) | (tc & 3);
        p[0] = 0x60 | (tc >> 4);
        p[1] = ((tc & 0x0f) << 4) | (p[1] & 0x0f);
    }
    f
}

/// Runs a frame for the hand-off next hop: XDP_PASS, no encapsulation, only its DSCP
/// changed, the next hop's mark recorded in `HANDOFF_FLOWS` for the frame's flow (ports and
/// protocol as in the frame), and the counters say so.
fn assert_handed_off(fx: &mut Fixture, input: &[u8], class: QosClass) {
    let before = fx.reason(Reason::HandoffWireGuard);
    let before_fwd = fx.reason(Reason::LanForwarded);
    let before_nh = fx.dp.nexthop_counters(HANDOFF_NH).unwrap();
    let before_class = fx.dp.class_counters(class as u8).unwrap();
    let (verdict, out) = fx.lan(input);
    assert_eq!(verdict, XDP_PASS, "verdict");
    let want = expected_handoff(input, class.default_dscp());
    assert_eq!(
        &out[..],
        &want[..],
        "the frame with its DSCP rewritten, nothing added"
    );
    let parsed = etherparse::SlicedPacket::from_ethernet(input).expect("input parses");
    let (proto, ports) = match parsed.transport {
        Some(etherparse::TransportSlice::Udp(u)) => (17, (u.source_port(), u.destination_port())),
        Some(etherparse::TransportSlice::Tcp(t)) => (6, (t.source_port(), t.destination_port())),
        other => panic!("a UDP or TCP frame, not {other:?}"),
    };
    let flows = fx.dp.handoff_flows().unwrap();
    let recorded = flows
        .iter()
        .find(|(f, _)| (f.proto, (f.src_port, f.dst_port)) == (proto, ports))
        .unwrap_or_else(|| panic!("the frame's flow is recorded: {flows:?}"));
    assert_eq!(recorded.1, HANDOFF_MARK, "the hand-off mark");
    assert_eq!(fx.reason(Reason::HandoffWireGuard), before + 1);
    assert_eq!(fx.reason(Reason::LanForwarded), before_fwd, "not forwarded");
    let nh = fx.dp.nexthop_counters(HANDOFF_NH).unwrap();
    assert_eq!(nh.packets, before_nh.packets + 1);
    assert_eq!(nh.bytes, before_nh.bytes + input.len() as u64);
    assert_eq!(
        fx.dp.class_counters(class as u8).unwrap().packets,
        before_class.packets + 1
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn handoff_nexthop_passes_to_the_kernel_with_the_mark_recorded_for_its_flow() {
    let mut fx = handoff_fixture();
    // ECN bits set: they must survive the DSCP rewrite.
    let mut ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.3.0.9");
    ip.tos = 0x03;
    let f = frame(ETH_P_IP, &ip.build(&udp(40000, 5004, b"to wireguard")));
    assert_handed_off(&mut fx, &f, QosClass::Realtime);

    let ip = V4::new(IPPROTO_TCP, "10.1.0.5", "10.3.1.1").build(&tcp(51000, 443, b""));
    assert_handed_off(&mut fx, &frame(ETH_P_IP, &ip), QosClass::BestEffort);

    let l3 = ipv6(
        0x01,
        64,
        IPPROTO_UDP,
        "2001:db8:1::5",
        "2001:db8:3::9",
        &udp(40000, 5004, b"v6"),
    );
    assert_handed_off(&mut fx, &frame(ETH_P_IPV6, &l3), QosClass::Realtime);

    // A VLAN-tagged frame is the kernel's, hand-off or not: no mark recorded for it.
    let before = fx.dp.handoff_flows().unwrap().len();
    let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.3.0.9").build(&udp(40001, 5004, b"tag"));
    let mut f = eth(GW_MAC, HOST_MAC, ETH_P_8021Q);
    f.extend_from_slice(&vlan_tag(100, ETH_P_IP));
    f.extend_from_slice(&ip);
    assert_passed_unchanged(&mut fx, &f, Reason::LanPassVlan);
    assert_eq!(fx.dp.handoff_flows().unwrap().len(), before);

    // TTL 1 is the kernel's to answer (ICMP time exceeded): handed off all the same, TTL kept.
    let mut ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.3.0.9");
    ip.ttl = 1;
    let f = frame(ETH_P_IP, &ip.build(&udp(40000, 5004, b"ttl")));
    assert_handed_off(&mut fx, &f, QosClass::Realtime);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn vxlan_nexthops_next_to_a_handoff_one_are_not_handed_off() {
    let mut fx = handoff_fixture();
    // 10.2/16 still goes through VXLAN next hops: encapsulated, no flow recorded.
    let (f, key) = udp_v4_frame(0);
    assert_forwarded(&mut fx, &f, key, QosClass::Realtime);
    assert_eq!(fx.reason(Reason::HandoffWireGuard), 0);
    // No route: passed unchanged, no flow recorded either.
    let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.9.0.1").build(&udp(1, 2, b""));
    assert_passed_unchanged(&mut fx, &frame(ETH_P_IP, &ip), Reason::LanPassNoRoute);
    assert!(
        fx.dp.handoff_flows().unwrap().is_empty(),
        "no hand-off flow"
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_handoff_group_without_a_usable_member_still_hands_off_and_never_passes_up_unmarked() {
    let mut fx = handoff_fixture();
    // The hand-off next hop rides on a monitored link that never answered: not usable.
    fx.set_link(
        HANDOFF_NH,
        LinkConfig {
            flags: LINK_F_MONITORED,
            up_after: 1,
            detect_ns: 1_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    // Its only member dead, the group's packet goes to the dead tunnel's device all the same
    // (encrypted there or dropped by its table's unreachable default), not to the main table.
    let ip = V4::new(IPPROTO_UDP, "10.1.0.5", "10.3.0.9").build(&udp(40000, 5004, b"x"));
    // (Port 5004 is a realtime port in the fixture's classifier.)
    assert_handed_off(&mut fx, &frame(ETH_P_IP, &ip), QosClass::Realtime);
    assert_eq!(fx.reason(Reason::HandoffNoLiveNextHop), 1);
    assert_eq!(fx.reason(Reason::LanPassNoLiveNextHop), 0);
}

// ---------------------------------------------------------------------------------------------
// Failover order in groups of 3 to 8 members, against an oracle written from the README's rule
// ("the next live member takes the flow, and flows of live members do not move"), not from the
// program: with two members the survivor is the only choice, so the order was never tested.

/// What a member's link is in a scenario. `Silent`, `AdminDown` and `HeldDown` are all "dead"
/// to the README's rule (no reply for `detect_ns`, not yet `up_after` replies, or downed by the
/// operator); only `HeldDown` may still carry a flow, as the last resort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkIs {
    /// Monitored, answered, hold-down over.
    Live,
    /// Monitored, last reply older than `detect_ns`.
    Silent,
    /// Administratively down (its last reply is recent).
    AdminDown,
    /// Monitored and answering, but fewer than `up_after` replies in a row.
    HeldDown,
}

/// Long enough that no pause of the machine expires the one reply each link gets at setup.
const FAILOVER_DETECT_NS: u64 = 600_000_000_000;

/// The link configuration that makes a link that answered once (good streak 1) be `state`.
fn failover_link_config(state: LinkIs) -> LinkConfig {
    let live = LinkConfig {
        flags: LINK_F_MONITORED,
        up_after: 1,
        detect_ns: FAILOVER_DETECT_NS,
        ..Default::default()
    };
    match state {
        LinkIs::Live => live,
        LinkIs::Silent => LinkConfig {
            detect_ns: 1,
            ..live
        },
        LinkIs::AdminDown => LinkConfig {
            flags: LINK_F_MONITORED | LINK_F_ADMIN_DOWN,
            ..live
        },
        LinkIs::HeldDown => LinkConfig {
            up_after: 1000,
            ..live
        },
    }
}

/// How the oracle says a flow leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carried {
    /// By its bucket's member.
    Hashed(u32),
    /// By another usable member (`lan_failover`).
    FailedOver(u32),
    /// By a member still held down, none being usable (`lan_held_down_fallback`).
    HeldDownFallback(u32),
    /// Not at all: passed to the kernel (`lan_pass_no_live_next_hop`).
    Passed,
}

/// The oracle. `members`: the group's next hops in table order, the first `actives` owning the
/// buckets, the rest standbys (weight 0); `owner`: the index of the flow's bucket's member.
/// The rule: the bucket's member if usable; else the next usable active member after it, in
/// table order, wrapping from the last active member to the first; else the first usable
/// standby in table order; with none usable, the first member in that same order that answers
/// but is held down; else nobody.
fn failover_oracle(
    members: &[u32],
    actives: usize,
    owner: usize,
    link: impl Fn(u32) -> LinkIs,
) -> Carried {
    assert!(owner < actives && actives <= members.len());
    let order: Vec<u32> = members[owner..actives]
        .iter()
        .chain(&members[..owner])
        .chain(&members[actives..])
        .copied()
        .collect();
    if let Some(&nh) = order.iter().find(|&&nh| link(nh) == LinkIs::Live) {
        return if nh == members[owner] {
            Carried::Hashed(nh)
        } else {
            Carried::FailedOver(nh)
        };
    }
    match order.iter().find(|&&nh| link(nh) == LinkIs::HeldDown) {
        Some(&nh) => Carried::HeldDownFallback(nh),
        None => Carried::Passed,
    }
}

/// Groups of 3 to 8 members as (next hop, weight), listed out of id order (the table orders
/// them); weight 0 is a standby.
const FAILOVER_GROUPS: &[&[(u32, u32)]] = &[
    &[(3, 1), (1, 1), (2, 1)],
    &[(7, 4), (2, 2), (5, 1)],
    &[(4, 1), (8, 1), (1, 1), (6, 1)],
    &[(2, 3), (8, 2), (3, 1), (5, 4)],
    &[(5, 1), (1, 1), (4, 1), (2, 1), (3, 1)],
    &[(8, 5), (6, 1), (4, 2), (2, 3), (7, 1)],
    &[(6, 1), (2, 1), (8, 1), (4, 1), (1, 1), (3, 1)],
    &[(1, 6), (3, 1), (5, 2), (7, 5), (2, 3), (4, 4)],
    &[(7, 1), (1, 1), (6, 1), (2, 1), (5, 1), (3, 1), (4, 1)],
    &[(2, 1), (4, 7), (6, 2), (8, 3), (1, 1), (3, 5), (5, 2)],
    &[
        (8, 1),
        (7, 1),
        (6, 1),
        (5, 1),
        (4, 1),
        (3, 1),
        (2, 1),
        (1, 1),
    ],
    &[
        (3, 8),
        (6, 1),
        (1, 2),
        (8, 7),
        (5, 3),
        (2, 6),
        (7, 4),
        (4, 5),
    ],
    // Standbys: taken only when no active member is usable, first by table order.
    &[(6, 0), (2, 1), (4, 1)],
    &[(7, 0), (5, 1), (1, 2), (3, 1)],
    &[(8, 1), (1, 0), (4, 3), (5, 0), (2, 2)],
    &[
        (1, 1),
        (8, 0),
        (2, 2),
        (3, 3),
        (7, 0),
        (4, 4),
        (5, 5),
        (6, 6),
    ],
];

const FAILOVER_FLOWS: usize = 256;

struct FailoverLab {
    fx: Fixture,
    /// Frame and flow key of each flow: IPv4 and IPv6, UDP and TCP, distinct 5-tuples.
    flows: Vec<(Vec<u8>, FlowKey)>,
    /// Flows seen failing over, walking past two or more members, wrapping from the last
    /// active member to the first, landing on a standby, falling back to a held-down member.
    moved: usize,
    walked_past_two: usize,
    wrapped: usize,
    to_standby: usize,
    fallback: usize,
}

impl FailoverLab {
    /// Next hops 1..=8 on links 1..=8, every link monitored and answered once.
    fn new() -> FailoverLab {
        let mut fx = Fixture::new();
        for id in 1..=8u32 {
            fx.dp.set_nexthop(id, nexthop(id)).unwrap();
            fx.dp
                .set_neighbour(
                    NeighbourKey {
                        ifindex: 1,
                        ip4: [198, 51, 100, id as u8],
                    },
                    neighbour(id),
                )
                .unwrap();
            fx.set_link(id, failover_link_config(LinkIs::Live)).unwrap();
            let reply = fx.reply(id, 1, monotonic_ns() - 1_000_000);
            assert_eq!(fx.run(programs::UNDERLAY_INGRESS, &reply).0, XDP_DROP);
            assert_eq!(fx.dp.link_state(id).unwrap().good_streak, 1);
        }
        let flows = (0..FAILOVER_FLOWS)
            .map(|i| {
                let sport = 20000 + (i as u16) * 7;
                let dport = 80 + (i as u16 % 13);
                let proto = if i % 2 == 0 { IPPROTO_UDP } else { IPPROTO_TCP };
                let l4 = |p: u8| {
                    if p == IPPROTO_UDP {
                        udp(sport, dport, b"flow")
                    } else {
                        tcp(sport, dport, b"flow")
                    }
                };
                if i % 4 < 2 {
                    let src = format!("10.1.{}.{}", i / 50, 1 + i % 50);
                    let dst = format!("10.2.{}.{}", i % 3, 1 + i % 17);
                    let ip = V4::new(proto, &src, &dst).build(&l4(proto));
                    (
                        frame(ETH_P_IP, &ip),
                        v4_key(&src, &dst, proto, sport, dport),
                    )
                } else {
                    let src = format!("2001:db8:1::{:x}", 1 + i);
                    let dst = format!("2001:db8:2::{:x}", 1 + i % 11);
                    let ip = ipv6(0, 64, proto, &src, &dst, &l4(proto));
                    (
                        frame(ETH_P_IPV6, &ip),
                        v6_key(&src, &dst, proto, sport, dport),
                    )
                }
            })
            .collect();
        FailoverLab {
            fx,
            flows,
            moved: 0,
            walked_past_two: 0,
            wrapped: 0,
            to_standby: 0,
            fallback: 0,
        }
    }

    /// Installs the group; returns its members in table order, the number of actives, and
    /// each flow's bucket's member index (read back from the map: the input, not the answer).
    fn install(&mut self, group: &[(u32, u32)]) -> (Vec<u32>, usize, Vec<usize>) {
        let members: Vec<Member> = group
            .iter()
            .map(|&(nexthop, weight)| Member {
                nexthop,
                weight,
                path: Default::default(),
            })
            .collect();
        self.fx.dp.set_group(GROUP, &members).unwrap();
        let t = self.fx.dp.group_table(GROUP).unwrap().unwrap();
        let n = t.member_count as usize;
        let actives = t.active_count as usize;
        assert_eq!(n, group.len());
        assert_eq!(actives, group.iter().filter(|m| m.1 > 0).count());
        let table_members = t.nexthops[..n].to_vec();
        let mut ids = table_members.clone();
        ids.sort_unstable();
        let mut want: Vec<u32> = group.iter().map(|m| m.0).collect();
        want.sort_unstable();
        assert_eq!(ids, want, "table members");
        let owners = self
            .flows
            .iter()
            .map(|(_, key)| t.buckets[bucket_of(flow_hash(key, SEED))] as usize)
            .collect();
        (table_members, actives, owners)
    }

    /// Sets every member's link and sends every flow; returns the next hop each flow left by
    /// (`None`: passed up) after checking each against the oracle and the counters.
    fn run(
        &mut self,
        what: &str,
        members: &[u32],
        actives: usize,
        owners: &[usize],
        states: &[LinkIs],
    ) -> Vec<Option<u32>> {
        for (&nh, &s) in members.iter().zip(states) {
            self.fx.set_link(nh, failover_link_config(s)).unwrap();
        }
        let link = |nh: u32| states[members.iter().position(|&m| m == nh).unwrap()];
        let before = [
            Reason::LanFailover,
            Reason::LanHeldDownFallback,
            Reason::LanPassNoLiveNextHop,
        ]
        .map(|r| self.fx.reason(r));
        let mut want_counts = [0u64; 3];
        let mut wrong = Vec::new();
        let mut got_all = Vec::new();
        for (i, (input, _)) in self.flows.iter().enumerate() {
            let owner = owners[i];
            let want = failover_oracle(members, actives, owner, link);
            let (verdict, out) = self.fx.lan(input);
            let got = match verdict {
                XDP_REDIRECT => {
                    let nh = vni_of(&out) - 100;
                    assert_eq!(
                        out[30..34],
                        nexthop(nh).remote_ip4,
                        "{what}: flow {i}: outer destination and VNI disagree"
                    );
                    Some(nh)
                }
                XDP_PASS => {
                    assert_eq!(&out, input, "{what}: flow {i} passed changed");
                    None
                }
                v => panic!("{what}: flow {i}: verdict {v}"),
            };
            got_all.push(got);
            let want_nh = match want {
                Carried::Hashed(nh) => Some(nh),
                Carried::FailedOver(nh) => {
                    want_counts[0] += 1;
                    self.moved += 1;
                    let at = members.iter().position(|&m| m == nh).unwrap();
                    if at >= actives {
                        self.to_standby += 1;
                    } else {
                        if at < owner {
                            self.wrapped += 1;
                        }
                        if (at + actives - owner) % actives >= 2 {
                            self.walked_past_two += 1;
                        }
                    }
                    Some(nh)
                }
                Carried::HeldDownFallback(nh) => {
                    want_counts[1] += 1;
                    self.fallback += 1;
                    Some(nh)
                }
                Carried::Passed => {
                    want_counts[2] += 1;
                    None
                }
            };
            if got != want_nh {
                wrong.push(format!(
                    "flow {i} (bucket's member {} at index {owner}): got {got:?}, oracle {want:?}",
                    members[owner]
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{what}: members {members:?} ({actives} active), links {states:?}: {} of {} flows \
             wrong, e.g.\n{}",
            wrong.len(),
            self.flows.len(),
            wrong[..wrong.len().min(8)].join("\n")
        );
        let after = [
            Reason::LanFailover,
            Reason::LanHeldDownFallback,
            Reason::LanPassNoLiveNextHop,
        ]
        .map(|r| self.fx.reason(r));
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(
            delta, want_counts,
            "{what}: counters (failover, held-down fallback, pass) {before:?} -> {after:?}"
        );
        got_all
    }
}

/// Every pair of member indexes `i < j` of a group of `n`: adjacent ones, the last with the
/// first (the walk wraps), the last active with a standby, and all the others.
fn pairs(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).flat_map(move |i| (i + 1..n).map(move |j| (i, j)))
}

const DEAD_KINDS: [LinkIs; 3] = [LinkIs::Silent, LinkIs::AdminDown, LinkIs::HeldDown];

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn dead_members_flows_take_the_next_live_member_in_groups_of_3_to_8() {
    let mut lab = FailoverLab::new();
    let mut scenarios = 0;
    for group in FAILOVER_GROUPS {
        let (members, actives, owners) = lab.install(group);
        let n = members.len();
        // All alive: every flow rides its bucket's member, and every active member carries
        // some of the flows (so each one's death has flows to move).
        let baseline = lab.run(
            "all alive",
            &members,
            actives,
            &owners,
            &vec![LinkIs::Live; n],
        );
        for (i, nh) in baseline.iter().enumerate() {
            assert_eq!(*nh, Some(members[owners[i]]), "all alive: flow {i}");
        }
        for (k, m) in members[..actives].iter().enumerate() {
            assert!(
                owners.contains(&k),
                "no flow hashes to member {m} of {members:?}"
            );
        }
        // One dead member: each in turn, each way of being dead. Two dead: every pair.
        let mut dead_sets: Vec<Vec<(usize, LinkIs)>> = (0..n)
            .flat_map(|i| DEAD_KINDS.map(|kind| vec![(i, kind)]))
            .collect();
        dead_sets.extend(pairs(n).map(|(i, j)| {
            vec![
                (i, DEAD_KINDS[(i + j) % 3]),
                (j, DEAD_KINDS[(i + j + 1) % 3]),
            ]
        }));
        for dead in dead_sets {
            let mut states = vec![LinkIs::Live; n];
            for &(i, kind) in &dead {
                states[i] = kind;
            }
            let what = format!("dead {dead:?}");
            let got = lab.run(&what, &members, actives, &owners, &states);
            // Flows whose member is alive did not move.
            for (i, nh) in got.iter().enumerate() {
                if states[owners[i]] == LinkIs::Live {
                    assert_eq!(*nh, baseline[i], "{what}: flow {i} of a live member moved");
                }
            }
            scenarios += 1;
        }
    }
    // The scenarios exercised what they claim to.
    assert!(scenarios > 300, "{scenarios} scenarios");
    assert!(lab.moved > 20_000, "{} flows failed over", lab.moved);
    assert!(lab.walked_past_two > 1_000, "{}", lab.walked_past_two);
    assert!(lab.wrapped > 1_000, "{} flows wrapped", lab.wrapped);
    assert!(
        lab.to_standby >= FAILOVER_FLOWS,
        "{} flows to a standby",
        lab.to_standby
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn with_no_member_usable_the_first_held_down_member_in_walk_order_carries() {
    let mut lab = FailoverLab::new();
    for group in FAILOVER_GROUPS {
        let (members, actives, owners) = lab.install(group);
        let n = members.len();
        // Two members answer but are held down, the others silent or downed: each flow takes
        // the first held-down member of its walk.
        for (i, j) in pairs(n) {
            let mut states: Vec<LinkIs> = (0..n)
                .map(|k| [LinkIs::Silent, LinkIs::AdminDown][k % 2])
                .collect();
            states[i] = LinkIs::HeldDown;
            states[j] = LinkIs::HeldDown;
            lab.run("held down pair", &members, actives, &owners, &states);
        }
        // Nothing answers: every flow goes to the kernel untouched.
        let got = lab.run(
            "all dead",
            &members,
            actives,
            &owners,
            &vec![LinkIs::Silent; n],
        );
        assert!(got.iter().all(Option::is_none));
    }
    assert!(lab.fallback > 50_000, "{} fallbacks", lab.fallback);
}

// ---------------------------------------------------------------------------------------------
// The hostile underlay: only a link's peer, on the link's interface, gets anything in.

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn vxlan_is_decapsulated_only_from_the_vnis_link_peer_on_its_interface() {
    let mut fx = Fixture::new();
    // For this region (local delivery) and for region B (transit): neither gets in spoofed.
    let local = frame(
        ETH_P_IP,
        &V4::new(IPPROTO_UDP, "10.2.0.9", "10.1.0.5").build(&udp(1, 2, b"in")),
    );
    let transit = frame(
        ETH_P_IP,
        &V4::new(IPPROTO_UDP, "10.1.0.5", "10.2.0.9").build(&udp(40000, 5004, b"on")),
    );
    fx.dp.set_transit_exit(1, 2).unwrap();
    let routes = [[0; 4], [1, 0, 0, 0]];
    for route in routes {
        let inner = if route[0] == 0 { &local } else { &transit };
        // A stranger using link 1's VNI; link 2's peer using link 1's VNI; link 1's peer
        // using link 2's VNI: the VNI names the link, the source is not its peer.
        for f in [
            vxlan_frame_routed("198.51.100.77", 101, route, inner),
            vxlan_frame_routed(&peer_of(2).to_string(), 101, route, inner),
            vxlan_frame_routed(&peer_of(1).to_string(), 102, route, inner),
        ] {
            assert_eq!(fx.underlay(&f).0, XDP_DROP);
        }
    }
    assert_eq!(fx.reason(Reason::UnderlayDecapWrongSource), 6);
    // The right peer on another interface than its link's.
    fx.dp
        .set_link_config(
            1,
            LinkConfig {
                ifindex: 7,
                ..link_identity(1)
            },
        )
        .unwrap();
    let peer1 = peer_of(1).to_string();
    for (route, inner) in [([0; 4], &local), ([1, 0, 0, 0], &transit)] {
        let f = vxlan_frame_routed(&peer1, 101, route, inner);
        assert_eq!(fx.underlay(&f).0, XDP_DROP);
    }
    assert_eq!(fx.reason(Reason::UnderlayDecapWrongInterface), 2);
    assert_eq!(fx.reason(Reason::UnderlayTransit), 0);
    assert_eq!(fx.reason(Reason::UnderlayDecapPassed), 0);
    // On its interface again: in.
    fx.dp.set_link_config(1, link_identity(1)).unwrap();
    let f = vxlan_frame_routed(&peer1, 101, [1, 0, 0, 0], &transit);
    assert_eq!(fx.underlay(&f).0, XDP_REDIRECT);
    assert_eq!(fx.reason(Reason::UnderlayTransit), 1);
}

/// In a namespace of its own, whose FIB routes 10.1.0.0/24 out of a veth: decapsulated
/// traffic for it is dropped while the veth is not a LAN port, redirected once it is.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn decapsulated_traffic_is_redirected_only_to_lan_ports() {
    let ns = dwcp_lab::netlab::Netns::new("decaplan").unwrap();
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        .unwrap();
    for dev in ["v0", "v1"] {
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    ns.ip(&["addr", "add", "192.168.50.1/24", "dev", "v0"])
        .unwrap();
    let router_mac = "02:00:00:00:50:02";
    ns.ip(&[
        "neigh",
        "add",
        "192.168.50.2",
        "lladdr",
        router_mac,
        "dev",
        "v0",
        "nud",
        "permanent",
    ])
    .unwrap();
    ns.ip(&["route", "add", "10.1.0.0/24", "via", "192.168.50.2"])
        .unwrap();
    // And one whose next hop is not resolved.
    ns.ip(&["route", "add", "10.1.1.0/24", "via", "192.168.50.3"])
        .unwrap();
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let v0 = ns.ifindex("v0").unwrap();
    let v0_mac = ns.mac("v0").unwrap();
    let mut fx = Fixture::new();
    let l3 = V4::new(IPPROTO_UDP, "10.2.0.9", "10.1.0.5").build(&udp(1, 2, b"in"));
    let resolved = vxlan_frame(1, &frame(ETH_P_IP, &l3));
    let unresolved = vxlan_frame(
        1,
        &frame(
            ETH_P_IP,
            &V4::new(IPPROTO_UDP, "10.2.0.9", "10.1.1.5").build(&udp(1, 2, b"in")),
        ),
    );
    ns.run_in(|| {
        // v0 is a redirect target, but no LAN port: the kernel's route leads off the LAN.
        fx.dp.add_port(v0).unwrap();
        assert_eq!(fx.underlay(&resolved).0, XDP_DROP);
        assert_eq!(fx.underlay(&unresolved).0, XDP_DROP);
        assert_eq!(fx.reason(Reason::UnderlayDecapNotLan), 2);
        fx.dp
            .set_lan_port(
                v0,
                LanPort {
                    mac: v0_mac,
                    _pad: [0; 2],
                },
            )
            .unwrap();
        let (verdict, out) = fx.underlay(&resolved);
        assert_eq!(verdict, XDP_REDIRECT);
        let mut want = eth(
            dwcp_lab::netlab::parse_mac(router_mac).unwrap(),
            v0_mac,
            ETH_P_IP,
        );
        let mut ip = V4::new(IPPROTO_UDP, "10.2.0.9", "10.1.0.5");
        ip.ttl = 63;
        want.extend_from_slice(&ip.build(&udp(1, 2, b"in")));
        assert_eq!(out, want, "the inner packet, to the LAN neighbour, TTL - 1");
        assert_eq!(fx.reason(Reason::UnderlayDecapRedirected), 1);
        // Unresolved on a LAN port: the kernel resolves it.
        assert_eq!(fx.underlay(&unresolved).0, XDP_PASS);
        assert_eq!(fx.reason(Reason::UnderlayDecapNotLan), 2);
    })
    .unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn probe_requests_are_reflected_only_for_the_links_peer() {
    let mut fx = Fixture::new();
    let stranger: Ipv4Addr = "198.51.100.77".parse().unwrap();
    let h = |link: u32| ProbeHeader {
        kind: PROBE_KIND_REQUEST,
        flags: 0,
        link_id: link,
        seq: 1,
        tx_ns: 12345,
        token: 7,
        mac: 0,
    };
    let mut to_other = request(3, 1);
    to_other[14 + 19] = 99; // to 192.0.2.99, not our address on the link
    let rechecksum = |f: &mut Vec<u8>| {
        f[24] = 0;
        f[25] = 0;
        let c = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    };
    rechecksum(&mut to_other);
    for f in [
        probe_frame(&h(3), stranger, PROBE_TTL),
        // Another peer of ours, naming link 3.
        probe_frame(&h(3), peer_of(4), PROBE_TTL),
        to_other,
        // No such link (an empty entry; past the map's end).
        probe_frame(&h(500), peer_of(3), PROBE_TTL),
        probe_frame(&h(5000), peer_of(3), PROBE_TTL),
    ] {
        let (verdict, _) = fx.underlay(&f);
        assert_eq!(verdict, XDP_DROP, "never reflected");
    }
    assert_eq!(fx.reason(Reason::UnderlayProbeStranger), 5);
    // The peer, with TTL 254: it crossed a router, so it is not our neighbour.
    assert_eq!(
        fx.underlay(&probe_frame(&h(3), peer_of(3), 254)).0,
        XDP_DROP
    );
    assert_eq!(fx.reason(Reason::UnderlayProbeTtl), 1);
    // The peer on another interface.
    fx.dp
        .set_link_config(
            3,
            LinkConfig {
                ifindex: 7,
                ..link_identity(3)
            },
        )
        .unwrap();
    assert_eq!(fx.underlay(&request(3, 2)).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::UnderlayProbeStranger), 6);
    assert_eq!(fx.reason(Reason::UnderlayProbeReflected), 0);
    assert_eq!(fx.dp.link_state(3).unwrap().reflected, 0);
    // A link across routers (`via_ip`): no TTL check, and the reply leaves with TTL 255.
    fx.dp
        .set_link_config(
            5,
            LinkConfig {
                probe_min_ttl: 0,
                ..link_identity(5)
            },
        )
        .unwrap();
    let (verdict, out) = fx.underlay(&probe_frame(&h(5), peer_of(5), 200));
    assert_eq!(verdict, XDP_TX);
    let reply = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
    match reply.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.time_to_live, PROBE_TTL);
            assert_eq!(h.header_checksum, h.calc_header_checksum());
        }
        other => panic!("not IPv4: {other:?}"),
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn reflection_is_rate_limited_per_link() {
    let mut fx = Fixture::new();
    // Link 3: one request a second, bursts of 3. Link 4 keeps the fixture's 1,000 a second.
    fx.dp
        .set_link_config(
            3,
            LinkConfig {
                reflect_gap_ns: 1_000_000_000,
                reflect_burst: 3,
                ..link_identity(3)
            },
        )
        .unwrap();
    let verdicts: Vec<u32> = (0..5).map(|seq| fx.underlay(&request(3, seq)).0).collect();
    assert_eq!(
        verdicts,
        [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP],
        "the burst, then nothing"
    );
    assert_eq!(fx.reason(Reason::UnderlayProbeRateLimited), 2);
    assert_eq!(fx.dp.link_state(3).unwrap().reflected, 3);
    assert_eq!(
        fx.underlay(&request(4, 0)).0,
        XDP_TX,
        "another link's budget"
    );
    // No rate configured: nothing reflected.
    fx.dp
        .set_link_config(
            5,
            LinkConfig {
                reflect_gap_ns: 0,
                ..link_identity(5)
            },
        )
        .unwrap();
    assert_eq!(fx.underlay(&request(5, 0)).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::UnderlayProbeRateLimited), 3);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn probe_replies_count_only_with_our_token_from_the_peer() {
    let mut fx = Fixture::new();
    let tx = monotonic_ns() - 1_000_000;
    let ours = ProbeHeader {
        kind: PROBE_KIND_REPLY,
        ..ProbeHeader::request(&fx.keys[&4], 4, 1, tx)
    };
    let forged = |token| ProbeHeader { token, ..ours };
    let other_key = ProbeKey { k0: 1, k1: 2 };
    // No token, a token of another key, a token of another link's key, a token of ours for
    // another send time: forged.
    for h in [
        forged(0),
        forged(probe_token(&other_key, 4, 1, tx)),
        forged(probe_token(&fx.keys[&3], 4, 1, tx)),
        ProbeHeader {
            tx_ns: tx - 1,
            ..ours
        },
    ] {
        assert_eq!(
            fx.underlay(&probe_frame(&h, peer_of(4), PROBE_TTL)).0,
            XDP_DROP
        );
    }
    assert_eq!(fx.reason(Reason::UnderlayProbeBadToken), 4);
    // Our own reply, but not from the peer, or with TTL 254: dropped before the token counts.
    let stranger: Ipv4Addr = "198.51.100.77".parse().unwrap();
    assert_eq!(
        fx.underlay(&probe_frame(&ours, stranger, PROBE_TTL)).0,
        XDP_DROP
    );
    assert_eq!(fx.reason(Reason::UnderlayProbeStranger), 1);
    assert_eq!(
        fx.underlay(&probe_frame(&ours, peer_of(4), 254)).0,
        XDP_DROP
    );
    assert_eq!(fx.reason(Reason::UnderlayProbeTtl), 1);
    assert_eq!(
        fx.dp.link_state(4).unwrap(),
        dwcp_common::LinkState::default()
    );
    // The real reply: measured, once.
    let real = probe_frame(&ours, peer_of(4), PROBE_TTL);
    assert_eq!(fx.underlay(&real).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::UnderlayProbeReply), 1);
    let st = fx.dp.link_state(4).unwrap();
    assert_eq!((st.replies, st.last_tx_ns), (1, tx));
    assert_eq!(fx.underlay(&real).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::UnderlayProbeStale), 1, "a replay");
    assert_eq!(fx.dp.link_state(4).unwrap().replies, 1);
}

// ---------------------------------------------------------------------------------------------
// The LAN side: only frames for the gateway's MAC, untagged, without IPv4 options or IPv6
// fragments anywhere in the extension header chain.

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn lan_frames_not_addressed_to_the_port_go_to_the_kernel() {
    let mut fx = Fixture::new();
    let (ours, key) = udp_v4_frame(0);
    for dst in [
        HOST_MAC,
        [0xff; 6],
        [0x01, 0, 0x5e, 0, 0, 1],
        [0x02, 0, 0, 0, 1, 1],
    ] {
        let mut f = ours.clone();
        f[..6].copy_from_slice(&dst);
        assert_passed_unchanged(&mut fx, &f, Reason::LanPassOtherMac);
    }
    assert_forwarded(&mut fx, &ours, key, QosClass::Realtime);
    // A port that is not a LAN port forwards nothing.
    fx.dp.remove_lan_port(TEST_RUN_IFINDEX).unwrap();
    assert_passed_unchanged(&mut fx, &ours, Reason::LanPassOtherMac);
}

/// An IPv6 extension header of `len` 8-byte units after the first 8, followed by `next`.
fn ext_header(next: u8, len: u8) -> Vec<u8> {
    let mut h = vec![next, len];
    h.resize((len as usize + 1) * 8, 1);
    h
}

/// An IPv6 fragment header: offset 0, more fragments.
fn fragment_header(next: u8) -> Vec<u8> {
    vec![next, 0, 0, 1, 0, 0, 0, 42]
}

/// An authentication header of 16 bytes (length field 2).
fn auth_header(next: u8) -> Vec<u8> {
    let mut h = vec![next, 2];
    h.resize(16, 7);
    h
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn ipv6_extension_headers_are_walked_and_fragments_behind_them_go_to_the_kernel() {
    const HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DST: u8 = 60;
    let mut fx = Fixture::new();
    let l4 = udp(1234, 5004, b"behind the chain");
    let v6 = |first: u8, chain: &[u8]| {
        let mut payload = chain.to_vec();
        payload.extend_from_slice(&l4);
        frame(
            ETH_P_IPV6,
            &ipv6(0, 64, first, "2001:db8:1::5", "2001:db8:2::9", &payload),
        )
    };
    let cat = |parts: &[Vec<u8>]| parts.concat();
    // A fragment header behind hop-by-hop, destination options, routing or authentication.
    for (first, chain) in [
        (
            HOP,
            cat(&[ext_header(FRAGMENT, 0), fragment_header(IPPROTO_UDP)]),
        ),
        (
            DST,
            cat(&[
                ext_header(ROUTING, 1),
                ext_header(FRAGMENT, 0),
                fragment_header(IPPROTO_UDP),
            ]),
        ),
        (
            AUTH,
            cat(&[auth_header(FRAGMENT), fragment_header(IPPROTO_UDP)]),
        ),
    ] {
        assert_passed_unchanged(&mut fx, &v6(first, &chain), Reason::LanPassFragment);
    }
    // Five extension headers: more than the fast path walks. Four whose transport header
    // lies beyond the first 256 bytes (what the tc program looks at): the same.
    let long = cat(&[
        ext_header(DST, 0),
        ext_header(ROUTING, 0),
        ext_header(AUTH, 0),
        auth_header(DST),
        ext_header(IPPROTO_UDP, 0),
    ]);
    assert_passed_unchanged(&mut fx, &v6(HOP, &long), Reason::LanPassExtHeaders);
    let deep = cat(&[ext_header(DST, 20), ext_header(IPPROTO_UDP, 2)]);
    assert_passed_unchanged(&mut fx, &v6(HOP, &deep), Reason::LanPassExtHeaders);
    // Hop-by-hop anywhere but first; a header claiming 328 bytes of the 48 left; an
    // authentication header of length 0: malformed.
    for (first, chain) in [
        (DST, cat(&[ext_header(HOP, 0), ext_header(IPPROTO_UDP, 0)])),
        (DST, vec![IPPROTO_UDP, 40, 1, 1, 1, 1, 1, 1]),
        (AUTH, vec![IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ] {
        assert_passed_unchanged(&mut fx, &v6(first, &chain), Reason::LanPassMalformed);
    }
    // A chain of four: the flow is hashed on the ports behind it.
    let four = cat(&[
        ext_header(DST, 1),
        ext_header(ROUTING, 0),
        ext_header(AUTH, 2),
        auth_header(IPPROTO_UDP),
    ]);
    assert_forwarded(
        &mut fx,
        &v6(HOP, &four),
        v6_key("2001:db8:1::5", "2001:db8:2::9", IPPROTO_UDP, 1234, 5004),
        QosClass::Realtime,
    );
    // IPv4 with an authentication header: the same.
    let mut ah = auth_header(IPPROTO_UDP);
    ah.extend_from_slice(&l4);
    let ip = V4::new(AUTH, "10.1.0.5", "10.2.0.9").build(&ah);
    assert_forwarded(
        &mut fx,
        &frame(ETH_P_IP, &ip),
        v4_key("10.1.0.5", "10.2.0.9", IPPROTO_UDP, 1234, 5004),
        QosClass::Realtime,
    );
}

/// A link with a shared key (`LINK_F_AUTH`): a request is reflected only with its MAC under
/// that key, and goes back with the reply's MAC; a reply is measured only with a valid MAC
/// as well as our token. A link without a key still reflects whatever the reserved word held.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn keyed_links_reflect_and_measure_only_probes_with_their_mac() {
    let mut fx = Fixture::new();
    let shared = ProbeKey {
        k0: 0x1111,
        k1: 0x2222,
    };
    for link in [3, 4] {
        fx.dp
            .set_link_config(
                link,
                LinkConfig {
                    flags: LINK_F_AUTH,
                    auth_key: shared,
                    ..link_identity(link)
                },
            )
            .unwrap();
    }
    let body = |frame: &[u8]| ProbeHeader::decode(&frame[14 + 20 + 8..]).unwrap();
    // Requests of the peer: without a MAC, with one under another key, with ours but for
    // another sequence number: not reflected.
    let req = ProbeHeader {
        kind: PROBE_KIND_REQUEST,
        flags: 0,
        link_id: 3,
        seq: 9,
        tx_ns: 12345,
        token: 0x0bad_cafe_f00d_0001,
        mac: 0,
    };
    let wrong_key = ProbeKey {
        k0: 0x1111,
        k1: 0x2223,
    };
    for h in [
        req,
        req.signed(Some(&wrong_key)),
        ProbeHeader {
            seq: 10,
            ..req.signed(Some(&shared))
        },
    ] {
        assert_eq!(
            fx.underlay(&probe_frame(&h, peer_of(3), PROBE_TTL)).0,
            XDP_DROP
        );
    }
    assert_eq!(fx.reason(Reason::UnderlayProbeBadMac), 3);
    assert_eq!(fx.dp.link_state(3).unwrap().reflected, 0);
    // Signed: reflected, with the reply's own MAC (not the request's, echoed).
    let (verdict, out) = fx.underlay(&probe_frame(
        &req.signed(Some(&shared)),
        peer_of(3),
        PROBE_TTL,
    ));
    assert_eq!(verdict, XDP_TX);
    let reply = body(&out);
    assert_eq!(
        reply,
        ProbeHeader {
            kind: PROBE_KIND_REPLY,
            ..req
        }
        .signed(Some(&shared))
    );
    assert_ne!(reply.mac, req.signed(Some(&shared)).mac);

    // Replies to our request on link 4: our token but no MAC, or a bad one: not measured.
    let tx = monotonic_ns() - 1_000_000;
    let ours = ProbeHeader {
        kind: PROBE_KIND_REPLY,
        ..ProbeHeader::request(&fx.keys[&4], 4, 1, tx)
    };
    for h in [ours, ours.signed(Some(&wrong_key))] {
        assert_eq!(
            fx.underlay(&probe_frame(&h, peer_of(4), PROBE_TTL)).0,
            XDP_DROP
        );
    }
    assert_eq!(fx.reason(Reason::UnderlayProbeBadMac), 5);
    assert_eq!(fx.reason(Reason::UnderlayProbeReply), 0);
    assert_eq!(fx.dp.link_state(4).unwrap().replies, 0);
    // The reply as the keyed reflector makes it: measured.
    let signed = ours.signed(Some(&shared));
    assert_eq!(
        fx.underlay(&probe_frame(&signed, peer_of(4), PROBE_TTL)).0,
        XDP_DROP
    );
    assert_eq!(fx.reason(Reason::UnderlayProbeReply), 1);
    assert_eq!(fx.dp.link_state(4).unwrap().replies, 1);

    // A link without a key (5): the reserved word is not looked at and goes back as it came.
    let unkeyed = ProbeHeader {
        link_id: 5,
        mac: 0x7777,
        ..req
    };
    let (verdict, out) = fx.underlay(&probe_frame(&unkeyed, peer_of(5), PROBE_TTL));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        body(&out),
        ProbeHeader {
            kind: PROBE_KIND_REPLY,
            ..unkeyed
        }
    );
    assert_eq!(fx.reason(Reason::UnderlayProbeBadMac), 5);
}
