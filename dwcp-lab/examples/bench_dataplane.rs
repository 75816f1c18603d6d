//! `cargo xtask bench dataplane`: ns per packet of the XDP programs under BPF_PROG_TEST_RUN
//! (repeat = 1,000,000), beside a trivial XDP_PASS program run the same way in the same run.
//! Inputs that stop at successive stages of the LAN pipeline show what each stage costs.
use std::collections::BTreeMap;

use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions};
use dwcp_common::{
    maps::programs, probe::PROBE_TTL, wire::*, ClassifierRule, GatewayConfig, LanPort, LinkConfig,
    Neighbour, NextHop, QosClass, QosPolicy, Route, CONFIG_F_READY, LINK_F_MONITORED, NH_F_VALID,
    QOS_F_REWRITE,
};
use dwcp_control::{config::Prefix, forwarding::ForwardingState};
use dwcp_dataplane::{build_table, Dataplane, Member, Pinning};
use dwcp_lab::lab::{program, PassProgram};

const REPEAT: u32 = 1_000_000;
/// Rounds by default (`--rounds N` to change): each case's figure is the median of its rounds.
const ROUNDS: usize = 5;
const CALLS: usize = 100_000;

fn csum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn eth(proto: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

/// A 64-byte frame: Ethernet + IPv4 + UDP + 18 bytes of payload.
fn v4_udp(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut f = eth(ETH_P_IP);
    let mut ip = vec![0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 5];
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x9c, 0x40]);
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 26, 0, 0]);
    f.extend_from_slice(&[0x55; 18]);
    f
}

/// An 84-byte frame: Ethernet + IPv6 + UDP + 22 bytes of payload.
fn v6_udp() -> Vec<u8> {
    let mut f = eth(ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 30, 17, 64]);
    f.extend_from_slice(
        &"2001:db8:1::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    f.extend_from_slice(
        &"2001:db8:2::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    f.extend_from_slice(&[0x9c, 0x40, 0x13, 0x8c, 0, 30, 0, 0]);
    f.extend_from_slice(&[0x55; 22]);
    f
}

/// The benchmark's fast path, built as the agent builds one ([`ForwardingState`], written
/// through the lab's `program`): group 1 = next hops 1-4 weighted 1:2:3:4; group 2 = next hop
/// 5 on a monitored link, made live by a probe reply; 1,003 IPv4 routes and one IPv6 route;
/// one classifier rule; every class's DSCP rewritten.
fn setup() -> Result<Dataplane> {
    let mut s = ForwardingState {
        config: Some(GatewayConfig {
            hash_seed: 1,
            flags: CONFIG_F_READY,
            ..Default::default()
        }),
        ..Default::default()
    };
    let nexthop = |id: u32| NextHop {
        flags: NH_F_VALID,
        link_id: id,
        ifindex: 1,
        vni: id,
        local_ip4: [192, 0, 2, 1],
        remote_ip4: [198, 51, 100, id as u8],
        via_ip4: [198, 51, 100, id as u8],
        mtu: 1600,
        inner_dst_mac: [2, 0, 0, 0, 0, 9],
        _pad: [0; 2],
    };
    for id in 1..=5u32 {
        s.nexthops.insert(id, nexthop(id));
        s.neighbours.insert(
            (1, [198, 51, 100, id as u8]),
            Neighbour {
                mac: [0xaa, 0, 0, 0, 0, 1],
                if_mac: [2, 0, 0, 0, 0, 3],
                _pad: [0; 4],
            },
        );
    }
    s.ports.insert(1);
    // The frames' destination MAC is the LAN port's (BPF_PROG_TEST_RUN runs on ifindex 1).
    s.lan_ports.insert(
        1,
        LanPort {
            mac: [2, 0, 0, 0, 0, 1],
            _pad: [0; 2],
        },
    );
    let members: Vec<Member> = (1..=4)
        .map(|n| Member {
            nexthop: n,
            weight: n,
            path: Default::default(),
        })
        .collect();
    s.groups.insert(1, build_table(&members, None)?);
    // A monitored link, alive, for the "liveness" variant (group 2 -> next hop 5 on link 5).
    let live = [Member {
        nexthop: 5,
        weight: 1,
        path: Default::default(),
    }];
    s.groups.insert(2, build_table(&live, None)?);
    s.links.insert(
        5,
        LinkConfig {
            flags: LINK_F_MONITORED,
            up_after: 0,
            detect_ns: u64::MAX / 2,
            peer_ip4: [198, 51, 100, 5],
            local_ip4: [192, 0, 2, 1],
            ifindex: 1,
            probe_min_ttl: PROBE_TTL,
            ..Default::default()
        },
    );
    let route = |g| Route {
        group_id: g,
        default_class: QosClass::BestEffort as u8,
        _pad: [0; 3],
    };
    let prefix = |addr: std::net::IpAddr, len| Prefix { addr, len };
    // A realistic table: 1,000 other prefixes around the ones used.
    for i in 0..1000u32 {
        let other = std::net::Ipv4Addr::from(0x0b00_0000 + (i << 8));
        s.routes.insert(prefix(other.into(), 24), route(1));
    }
    s.routes.insert(prefix("10.2.0.0".parse()?, 16), route(1));
    s.routes.insert(prefix("10.5.0.0".parse()?, 16), route(2));
    s.routes
        .insert(prefix("2001:db8:2::".parse()?, 48), route(1));
    s.classifier.insert(
        (IPPROTO_UDP, 0, 5004),
        ClassifierRule {
            class: QosClass::Realtime as u8,
            _pad: [0; 3],
        },
    );
    for c in QosClass::ALL {
        s.qos.insert(
            c as u8,
            QosPolicy {
                dscp: c.default_dscp(),
                flags: QOS_F_REWRITE,
                _pad: [0; 6],
            },
        );
    }
    let mut dp = Dataplane::load(Pinning::None)?;
    program(&mut dp, &s)?;
    // Make link 5 live the way the kernel learns it: a probe reply through the underlay program.
    let mut body = [0u8; dwcp_common::probe::PROBE_LEN];
    let now = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let key = dp.probe_key(5)?;
    dwcp_common::probe::ProbeHeader {
        kind: dwcp_common::probe::PROBE_KIND_REPLY,
        ..dwcp_common::probe::ProbeHeader::request(&key, 5, 1, now - 1_000_000)
    }
    .encode(&mut body);
    let mut reply = eth(ETH_P_IP);
    let mut ip = vec![
        0x45, 0, 0, 68, 0, 0, 0, 0, PROBE_TTL, 17, 0, 0, 198, 51, 100, 5, 192, 0, 2, 1,
    ];
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    reply.extend_from_slice(&ip);
    reply.extend_from_slice(&[0x12, 0xb6, 0x12, 0xb6, 0, 48, 0, 0]);
    reply.extend_from_slice(&body);
    let r = dp
        .program(programs::UNDERLAY_INGRESS)?
        .test_run(TestRunOptions {
            data_in: Some(&reply),
            ..Default::default()
        })?;
    anyhow::ensure!(
        r.return_value == 1 && dp.link_state(5)?.replies == 1,
        "probe reply not measured"
    );
    Ok(dp)
}

/// A program under BPF_PROG_TEST_RUN: dwcp's LAN program on one of the set-ups, or the lab's
/// trivial `XDP_PASS` program (the baseline).
enum Timed<'a> {
    Lan(&'a mut Dataplane),
    Pass(&'a mut PassProgram),
}

impl Timed<'_> {
    /// One BPF_PROG_TEST_RUN call of `repeat` runs on `frame`: its kernel-measured mean ns per
    /// run. A verdict other than `want` is an error (with dwcp's counters, which say why).
    fn run(&mut self, frame: &[u8], repeat: u32, want: u32) -> Result<f64> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        let r = match self {
            Timed::Lan(dp) => dp.program(programs::LAN_INGRESS)?.test_run(opts)?,
            Timed::Pass(pass) => pass.program()?.test_run(opts)?,
        };
        if r.return_value != want {
            let counters = match self {
                Timed::Lan(dp) => dp
                    .reason_counts()?
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| format!("{}={n}", r.name()))
                    .collect::<Vec<_>>()
                    .join(" "),
                Timed::Pass(_) => "none".into(),
            };
            anyhow::bail!(
                "verdict {} instead of {want} (counters: {counters})",
                r.return_value
            );
        }
        Ok(r.duration.as_secs_f64() * 1e9)
    }
}

/// Mean ns of one run with `REPEAT` runs in one syscall. Only valid for programs that leave
/// the packet as it is: the kernel does not restore the buffer between repetitions.
fn ns_repeat(t: &mut Timed, frame: &[u8], want: u32) -> Result<f64> {
    t.run(frame, REPEAT, want)
}

/// Mean of the kernel-measured time of `CALLS` single runs (fresh packet each time), for
/// programs that rewrite the packet. Each figure includes the kernel timer's own overhead.
fn ns_per_call(t: &mut Timed, frame: &[u8], want: u32) -> Result<f64> {
    let mut total = 0f64;
    for _ in 0..CALLS {
        total += t.run(frame, 1, want)?;
    }
    Ok(total / CALLS as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| anyhow::anyhow!("--rounds needs a whole number above 0"))?,
        None => ROUNDS,
    };
    let mut pass = PassProgram::load()?;
    let mut dp = setup()?;
    let mut not_ready = setup()?;
    not_ready.set_config(GatewayConfig {
        hash_seed: 1,
        flags: 0,
        ..Default::default()
    })?;
    // The daemon's default: one packet in 1,000 sampled for the top flows.
    let mut sampled = setup()?;
    sampled.set_config(GatewayConfig {
        hash_seed: 1,
        flags: CONFIG_F_READY,
        sample_threshold: dwcp_common::sample_threshold(1_000),
        ..Default::default()
    })?;
    let arp = {
        let mut f = eth(ETH_P_ARP);
        f.extend_from_slice(&[0; 46]);
        f
    };
    // (name, what, frame, verdict, rewrites the packet)
    let cases: Vec<(&str, &str, Vec<u8>, u32, bool)> = vec![
        ("baseline", "trivial XDP_PASS program", v4_udp([10, 2, 0, 9], 9), 2, false),
        ("not_ready", "config lookup only (gateway not ready)", v4_udp([10, 2, 0, 9], 9), 2, false),
        ("not_ip", "+ Ethernet parse (ARP frame, passed)", arp, 2, false),
        ("no_route", "+ IPv4/UDP parse + LPM miss (1,003 routes)", v4_udp([10, 3, 0, 9], 9), 2, false),
        ("fwd_v4", "forward IPv4: LPM hit, group, hash, next hop, neighbour, classifier miss, DSCP, encap, redirect", v4_udp([10, 2, 0, 9], 9), 4, true),
        ("fwd_v4_classified", "forward IPv4, classifier hit (DSCP EF)", v4_udp([10, 2, 0, 9], 5004), 4, true),
        ("fwd_v4_monitored", "forward IPv4 over a monitored link (+ clock read, link state)", v4_udp([10, 5, 0, 9], 9), 4, true),
        ("fwd_v6", "forward IPv6", v6_udp(), 4, true),
        ("fwd_v4_sampled", "forward IPv4 with flow sampling on (1 in 1,000: a random draw per packet)", v4_udp([10, 2, 0, 9], 9), 4, true),
    ];
    let mut repeat: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut per_call: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (name, _, frame, want, rewrites) in &cases {
            let mut t = match *name {
                "baseline" => Timed::Pass(&mut pass),
                "not_ready" => Timed::Lan(&mut not_ready),
                "fwd_v4_sampled" => Timed::Lan(&mut sampled),
                _ => Timed::Lan(&mut dp),
            };
            let ctx = |e: anyhow::Error| e.context(name.to_string());
            if !rewrites {
                repeat
                    .entry(name)
                    .or_default()
                    .push(ns_repeat(&mut t, frame, *want).map_err(ctx)?);
            }
            if *rewrites || *name == "baseline" || *name == "no_route" {
                per_call
                    .entry(name)
                    .or_default()
                    .push(ns_per_call(&mut t, frame, *want).map_err(ctx)?);
            }
        }
    }
    let r: BTreeMap<&str, f64> = repeat.into_iter().map(|(k, v)| (k, median(v))).collect();
    let c: BTreeMap<&str, f64> = per_call.into_iter().map(|(k, v)| (k, median(v))).collect();
    // The per-call timer floor: the same trivial program timed per call minus timed in bulk.
    let floor = c["baseline"] - r["baseline"];
    let base = r["baseline"];
    // A row's figure: in bulk when the program leaves the packet alone, else per call minus the
    // floor (= the bulk baseline + the per-call difference to the baseline).
    let cost = |name: &str| r.get(name).copied().unwrap_or_else(|| c[name] - floor);
    let method = |name: &str| {
        if r.contains_key(name) {
            "bulk"
        } else {
            "per call − floor"
        }
    };
    // The two methods on the same case: how far apart they are bounds what mixing them in one
    // difference would add, so no difference below mixes them.
    let no_route_per_call = c["no_route"] - floor;
    let disagreement = no_route_per_call - r["no_route"];
    println!("BPF_PROG_TEST_RUN on this machine's kernel, 60-byte IPv4 / 84-byte IPv6 frames, median of {rounds} rounds (`cargo xtask bench dataplane -- --rounds {rounds}`).");
    println!("Programs that leave the packet alone run with repeat = {REPEAT} in one syscall. The kernel does not restore");
    println!("the buffer between repetitions, so the forwarding cases (which encapsulate) run once per call, {CALLS} calls,");
    println!("and the per-call timer floor measured in the same run (trivial program per call {:.1} ns − in bulk {:.1} ns = {floor:.1} ns)", c["baseline"], r["baseline"]);
    println!("is subtracted. Cross-check: no_route in bulk {:.1} ns, per call minus floor {no_route_per_call:.1} ns ({disagreement:+.1} ns). Redirects are not transmitted in this mode.\n", r["no_route"]);
    println!("| case | what runs | timed | ns/packet | × baseline |");
    println!("|---|---|---|---:|---:|");
    for (name, what, ..) in &cases {
        println!(
            "| {name} | {what} | {} | {:.1} | {:.2} |",
            method(name),
            cost(name),
            cost(name) / base
        );
    }
    let fwd = cost("fwd_v4");
    println!(
        "\nTarget: IPv4 forward path within 3× the trivial program: **{:.2}×** ({}).",
        fwd / base,
        if fwd / base <= 3.0 { "met" } else { "not met" }
    );
    // Each difference compares two rows timed the same way: bulk with bulk, per call with per
    // call (where the floor cancels). The LPM-hit stage compares per call, no_route being timed
    // both ways.
    let lpm_hit = c["fwd_v4"] - c["no_route"];
    println!(
        "Stage costs (differences of rows timed the same way): Ethernet parse {:.1} ns and IP/UDP parse + LPM miss {:.1} ns (bulk); LPM hit through encapsulated redirect {lpm_hit:.1} ns, classifier hit {:+.1} ns, liveness check {:+.1} ns, flow sampling {:+.1} ns (per call). The two methods disagree by {disagreement:+.1} ns on no_route (per call minus floor against bulk, above): the per-call rows' absolute figures and their × baseline carry an error of that order; the per-call differences do not (the floor cancels).",
        cost("not_ip") - cost("not_ready"),
        cost("no_route") - cost("not_ip"),
        c["fwd_v4_classified"] - c["fwd_v4"],
        c["fwd_v4_monitored"] - c["fwd_v4"],
        c["fwd_v4_sampled"] - c["fwd_v4"]
    );
    // Every row's figure comes from the medians of its rounds: named `_median`, except the three
    // metrics issue 2 named (`fwd_v4_ns`, `fwd_v6_ns`, `baseline_ns`), medians as well.
    let json = format!(
        "{{\"metrics\": {{\"fwd_v4_ns\": {:.2}, \"fwd_v6_ns\": {:.2}, \"baseline_ns\": {:.2}, \"fwd_v4_ratio\": {:.3}, \"no_route_ns_median\": {:.2}, \"not_ip_ns_median\": {:.2}, \"fwd_v4_classified_ns_median\": {:.2}, \"fwd_v4_monitored_ns_median\": {:.2}, \"fwd_v4_sampled_ns_median\": {:.2}, \"timer_floor_ns\": {:.2}, \"lpm_hit_to_redirect_ns\": {:.2}, \"cross_check_disagreement_ns\": {:.2}}}}}\n",
        fwd, cost("fwd_v6"), base, fwd / base, cost("no_route"), cost("not_ip"), cost("fwd_v4_classified"), cost("fwd_v4_monitored"), cost("fwd_v4_sampled"), floor, lpm_hit, disagreement
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("dataplane.json"), json)?;
    Ok(())
}
