//! `cargo xtask bench utilisation`: how much of three rate-limited paths' capacity TCP traffic
//! gets across dwcp's fast path with WECMP weights, ECMP weights and a single path, in one run.
//!
//! Lab (`utilisation::ShapedPathsLab`): host A -- gw A ==3 paths, TBF in a wire namespace==
//! gw B -- host B. Load: iperf3 TCP flows with fixed client ports (the same 5-tuples, so the
//! same hash buckets, in every run). Two loads: flows paced by the kernel so that their demands
//! add up to the sum of the capacities (traffic of many rate-limited flows, which is what a
//! split decides), and greedy flows. Writes `target/bench/utilisation.json` and prints the
//! Markdown report that `cargo xtask bench` records in docs/BENCHMARKS.md.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dwcp_common::{wire::IPPROTO_TCP, Counters, FlowKey};
use dwcp_control::topology::LinkId;
use dwcp_control::traffic::LinkStatus;
use dwcp_control::traffic::SplitMode;
use dwcp_control::traffic::TrafficConfig;
use dwcp_control::traffic::TrafficEngineer;
use dwcp_dataplane::build_table;
use dwcp_dataplane::Member;
use dwcp_lab::lab::LAB_SEED;
use dwcp_lab::utilisation::flows_per_nexthop;
use dwcp_lab::utilisation::iperf::IPERF_PORT;
use dwcp_lab::utilisation::iperf::MAX_FLOWS_PER_CLIENT;
use dwcp_lab::utilisation::jain_index;
use dwcp_lab::utilisation::shaped_lab::ShapedPathsLab;
use dwcp_lab::utilisation::shaped_lab::HOST_A_IP;
use dwcp_lab::utilisation::shaped_lab::HOST_B_IP;
use dwcp_lab::utilisation::shaped_lab::REGION_MTU;
use dwcp_lab::utilisation::shaped_lab::SHAPER_QUEUE;
use dwcp_lab::utilisation::shares;
use dwcp_lab::utilisation::split_limited_bps;
use dwcp_lab::utilisation::table_shares;
use dwcp_lab::utilisation::tcp_goodput_ceiling;
use dwcp_lab::utilisation::IperfReport;
use dwcp_lab::utilisation::IperfRun;
use dwcp_lab::utilisation::IperfServer;
use dwcp_lab::utilisation::SplitAccuracy;
use dwcp_lab::utilisation::TcpLoad;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Path capacities, Mbit/s (shaper rates on the underlay).
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    capacities_mbit: Vec<u64>,
    /// Paced TCP flows per run (one iperf3 client per 128).
    #[arg(long, default_value_t = 512)]
    flows: u16,
    /// Greedy TCP flows per run.
    #[arg(long, default_value_t = 32)]
    greedy_flows: u16,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Warm-up seconds left out of each run.
    #[arg(long, default_value_t = 2)]
    omit: u32,
    /// One-packet UDP flows for the hash split check.
    #[arg(long, default_value_t = 20_000)]
    udp_flows: u16,
}

const DESTINATION: &str = "region-b";
const FIRST_CLIENT_PORT: u16 = 40_000;
const CHECK_CLIENT_PORT: u16 = 39_000;
const FIRST_UDP_PORT: u16 = 10_000;
const WRITE_BYTES: u32 = 16 * 1024;

/// A split under test: its name and gateway A's members.
struct Split {
    name: &'static str,
    members: Vec<Member>,
}

/// Weights from the traffic engineer, as the agent computes them.
fn engineer_weights(mode: SplitMode, capacities: &[u64]) -> Result<Vec<u8>> {
    let mut te = TrafficEngineer::new(TrafficConfig {
        mode,
        ..TrafficConfig::default()
    })?;
    let links: BTreeMap<LinkId, LinkStatus> = capacities
        .iter()
        .enumerate()
        .map(|(i, &capacity_bps)| {
            (
                LinkId(i as u32 + 1),
                LinkStatus {
                    capacity_bps,
                    live: true,
                },
            )
        })
        .collect();
    let paths = BTreeMap::from([(
        DESTINATION.to_string(),
        (1..=capacities.len() as u32)
            .map(|i| vec![LinkId(i)])
            .collect(),
    )]);
    te.set_topology(links, paths)?;
    Ok(te
        .weights(DESTINATION)
        .context("the traffic engineer has no weights for the destination")?
        .to_vec())
}

fn members(weights: &[u8]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0)
        .map(|(i, &w)| Member {
            nexthop: i as u32 + 1,
            weight: u32::from(w),
            path: Default::default(),
        })
        .collect()
}

/// Configured share of each path (by weight; zero for paths not in the split).
fn configured_shares(split: &Split, n_paths: usize) -> Vec<f64> {
    let mut w = vec![0u64; n_paths];
    for m in &split.members {
        w[m.nexthop as usize - 1] = u64::from(m.weight);
    }
    shares(&w)
}

/// Counters over the measured part of one run.
struct Window {
    /// Payload host B's server sockets received, bit/s.
    goodput_bps: f64,
    /// Per path: underlay bytes the shaper passed on, and the seconds between its readings.
    wire: Vec<(u64, f64)>,
    /// Per path: frames the shaper dropped over the whole run (warm-up included).
    drops: Vec<u64>,
    nexthop_bytes: Vec<u64>,
}

impl Window {
    fn wire_bps(&self) -> Vec<f64> {
        self.wire
            .iter()
            .map(|&(bytes, seconds)| bytes as f64 * 8.0 / seconds)
            .collect()
    }
}

/// One reading of the window's counters, each path's timed by itself.
struct Sample {
    received: (Instant, u64),
    wire: Vec<(Instant, u64)>,
    nexthop: Vec<Counters>,
}

fn sample(lab: &ShapedPathsLab, servers: &[IperfServer]) -> Result<Sample> {
    let ports = servers.iter().map(|s| s.port);
    let ports = ports.clone().min().unwrap_or(IPERF_PORT)..=ports.max().unwrap_or(IPERF_PORT);
    let before = Instant::now();
    let bytes = lab.host_b_bytes_received(ports)?;
    let received = (before + before.elapsed() / 2, bytes);
    let mut wire = Vec::new();
    for p in &lab.paths {
        let before = Instant::now();
        let sent = p.sent()?;
        wire.push((before + before.elapsed() / 2, sent.bytes));
    }
    Ok(Sample {
        received,
        wire,
        nexthop: lab.nexthop_counters()?,
    })
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// Runs `load`. The window's counters are read from half a second after the warm-up to half a
/// second before the end (iperf3's clock starts once its connections are up, a little after
/// the client does, so the window lies inside iperf3's measured time).
fn run_load(
    lab: &ShapedPathsLab,
    servers: &[IperfServer],
    load: &TcpLoad,
) -> Result<(IperfReport, Window)> {
    let shaper0 = lab.shaper_stats()?;
    let client = IperfRun::start(&lab.host_a, load, HOST_A_IP, servers)?;
    let started = Instant::now();
    let half = Duration::from_millis(500);
    let omit = Duration::from_secs(u64::from(load.omit_seconds));
    let measured = Duration::from_secs(u64::from(load.seconds));
    sleep_until(started + omit + half);
    let s0 = sample(lab, servers)?;
    sleep_until(started + omit + measured - half);
    let s1 = sample(lab, servers)?;
    let report = client.finish()?;
    let shaper1 = lab.shaper_stats()?;
    Ok((
        report,
        Window {
            goodput_bps: (s1.received.1 - s0.received.1) as f64 * 8.0
                / (s1.received.0 - s0.received.0).as_secs_f64(),
            wire: s1
                .wire
                .iter()
                .zip(&s0.wire)
                .map(|((t1, b1), (t0, b0))| (b1 - b0, (*t1 - *t0).as_secs_f64()))
                .collect(),
            drops: shaper1
                .iter()
                .zip(&shaper0)
                .map(|(b, a)| b.since(a).drops)
                .collect(),
            nexthop_bytes: s1
                .nexthop
                .iter()
                .zip(&s0.nexthop)
                .map(|(b, a)| b.bytes - a.bytes)
                .collect(),
        },
    ))
}

/// The paced bound (goodput / capacity) a split allows `flows` TCP flows from host A's ports
/// `base..base + flows` to host B's iperf3 port, for `samples` bases spread over the port
/// range: computed through the hash and a freshly built table, no traffic. Sorted.
fn bound_over_port_choices(
    members: &[Member],
    ids: &[u32],
    flows: u16,
    capacities: &[u64],
    ceiling: f64,
    samples: u32,
) -> Result<Vec<f64>> {
    let table = build_table(members, None)?;
    let total: f64 = capacities.iter().sum::<u64>() as f64;
    let goodput_caps: Vec<u64> = capacities
        .iter()
        .map(|&c| (c as f64 * ceiling) as u64)
        .collect();
    let span = u32::from(u16::MAX) - 1024 - u32::from(flows);
    let mut bounds: Vec<f64> = (0..samples)
        .map(|k| {
            let base = (1024 + (k * 7919) % span) as u16;
            let keys: Vec<FlowKey> = (0..flows)
                .map(|i| FlowKey {
                    src: [u32::from(HOST_A_IP), 0, 0, 0],
                    dst: [u32::from(HOST_B_IP), 0, 0, 0],
                    src_port: base + i,
                    dst_port: IPERF_PORT,
                    proto: IPPROTO_TCP,
                })
                .collect();
            let n = flows_per_nexthop(&keys, &table, LAB_SEED, ids);
            split_limited_bps(&n, total / f64::from(flows), &goodput_caps) / total
        })
        .collect();
    bounds.sort_by(f64::total_cmp);
    Ok(bounds)
}

/// One split's hash check.
struct HashSplit {
    name: &'static str,
    weights: String,
    table: Vec<f64>,
    accuracy: SplitAccuracy,
    counted: u64,
    as_predicted: bool,
}

/// One split under one load.
struct Outcome {
    load: &'static str,
    flows: u16,
    /// Share of the flows the hash gave each path.
    flow_shares: Vec<f64>,
    split: &'static str,
    weights: String,
    flows_per_path: Vec<u64>,
    goodput_bps: f64,
    /// Goodput / sum of capacities.
    util: f64,
    /// Underlay bytes the shapers sent / (capacity × time), all paths.
    wire_util: f64,
    per_path_wire_util: Vec<f64>,
    shaper_drops: u64,
    retransmits: u64,
    jain: f64,
    /// For paced load: the most the flows on each path could deliver, / sum of capacities, in
    /// goodput after header overhead.
    split_bound: Option<f64>,
    byte_split: SplitAccuracy,
}

fn mbit(bps: f64) -> f64 {
    bps / 1e6
}

fn fmt_shares(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{:.3}", s))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.flows == 0 || args.greedy_flows == 0 || args.seconds < 2 {
        bail!("--flows and --greedy-flows must be at least 1, --seconds at least 2");
    }
    let capacities: Vec<u64> = args.capacities_mbit.iter().map(|m| m * 1_000_000).collect();
    let total_capacity: f64 = capacities.iter().sum::<u64>() as f64;
    let n = capacities.len();
    let bench_started = Instant::now();

    let wecmp = engineer_weights(SplitMode::Wecmp, &capacities)?;
    let ecmp = engineer_weights(SplitMode::Ecmp, &capacities)?;
    let widest = capacities
        .iter()
        .enumerate()
        .max_by_key(|(i, &c)| (c, std::cmp::Reverse(*i)))
        .map(|(i, _)| i as u32 + 1)
        .context("no paths")?;
    let splits = [
        Split {
            name: "WECMP",
            members: members(&wecmp),
        },
        Split {
            name: "ECMP",
            members: members(&ecmp),
        },
        Split {
            name: "single path",
            members: vec![Member {
                nexthop: widest,
                weight: 1,
                path: Default::default(),
            }],
        },
    ];
    let weights_of = |s: &Split| {
        let mut w = vec![0u32; n];
        for m in &s.members {
            w[m.nexthop as usize - 1] = m.weight;
        }
        w.iter().map(u32::to_string).collect::<Vec<_>>().join(":")
    };

    eprintln!(
        "building the lab ({n} paths: {:?} Mbit/s)",
        args.capacities_mbit
    );
    let mut lab = ShapedPathsLab::build("util", &capacities)?;
    lab.start()?;
    if !lab.generic_attachments.is_empty() {
        bail!(
            "XDP fell back to generic mode on {:?}: the lab would not measure the native fast path",
            lab.generic_attachments
        );
    }
    let ids = lab.path_ids();

    // 1. Hash split: many one-packet UDP flows, counted per next hop by gateway A.
    eprintln!("hash split: {} UDP flows per split", args.udp_flows);
    let mut hash_rows = Vec::new();
    for split in &splits[..2] {
        let table = lab.set_split(&split.members)?;
        let before = lab.nexthop_counters()?;
        let flows = lab.send_udp_flows(args.udp_flows, FIRST_UDP_PORT)?;
        std::thread::sleep(Duration::from_millis(300));
        let after = lab.nexthop_counters()?;
        let counted: Vec<u64> = after
            .iter()
            .zip(&before)
            .map(|(b, a)| b.packets - a.packets)
            .collect();
        let predicted = flows_per_nexthop(&flows, &table, LAB_SEED, &ids);
        hash_rows.push(HashSplit {
            name: split.name,
            weights: weights_of(split),
            table: table_shares(&table, &ids),
            accuracy: SplitAccuracy {
                configured: configured_shares(split, n),
                achieved: shares(&counted),
            },
            counted: counted.iter().sum(),
            as_predicted: counted == predicted,
        });
    }

    // One server per iperf3 client (128 flows each).
    let clients = args
        .flows
        .max(args.greedy_flows)
        .div_ceil(MAX_FLOWS_PER_CLIENT);
    let servers = (0..clients)
        .map(|i| IperfServer::start(&lab.host_b, HOST_B_IP, IPERF_PORT + i))
        .collect::<Result<Vec<_>, _>>()?;

    // 2. The shapers apply to the fast path: one greedy flow alone on each path.
    eprintln!("shaper check: one flow per path");
    let check = TcpLoad {
        flows: 1,
        seconds: 4,
        omit_seconds: 1,
        per_flow_bps: None,
        first_client_port: CHECK_CLIENT_PORT,
        write_bytes: WRITE_BYTES,
    };
    let mut check_rows = Vec::new();
    for (i, &cap) in capacities.iter().enumerate() {
        let id = i as u32 + 1;
        lab.set_split(&[Member {
            nexthop: id,
            weight: 1,
            path: Default::default(),
        }])?;
        let (_, w) = run_load(&lab, &servers, &check)?;
        check_rows.push((id, cap, w.goodput_bps, w.wire_bps()[i], w.drops[i]));
    }

    // 3. What the lab carries with no limit at all (the shapers removed), equal split.
    eprintln!("lab capacity without shapers");
    for p in &lab.paths {
        p.unshape()?;
    }
    lab.set_split(&splits[1].members)?;
    let unshaped = TcpLoad {
        flows: args.greedy_flows,
        seconds: 4,
        omit_seconds: 1,
        per_flow_bps: None,
        first_client_port: FIRST_CLIENT_PORT,
        write_bytes: WRITE_BYTES,
    };
    let unshaped_result = run_load(&lab, &servers, &unshaped);
    for p in &lab.paths {
        p.shape()?;
    }
    let unshaped_goodput_bps = unshaped_result?.1.goodput_bps;

    // 4. The splits under paced and greedy load.
    let per_flow_bps = (total_capacity / f64::from(args.flows)).round() as u64;
    let ceiling = tcp_goodput_ceiling(REGION_MTU);
    let mut outcomes = Vec::new();
    for (load_name, flows, per_flow) in [
        ("paced", args.flows, Some(per_flow_bps)),
        ("greedy", args.greedy_flows, None),
    ] {
        let load = TcpLoad {
            flows,
            seconds: args.seconds,
            omit_seconds: args.omit,
            per_flow_bps: per_flow,
            first_client_port: FIRST_CLIENT_PORT,
            write_bytes: WRITE_BYTES,
        };
        for split in &splits {
            eprintln!("{load_name} load ({flows} flows), {}", split.name);
            let t_run = Instant::now();
            let table = lab.set_split(&split.members)?;
            let (report, w) = run_load(&lab, &servers, &load)?;
            if report.streams.len() != usize::from(flows) {
                bail!(
                    "{load_name} {}: {} of {flows} streams reported",
                    split.name,
                    report.streams.len()
                );
            }
            eprintln!(
                "  goodput {:.1} Mbit/s (iperf3's own sum {:.1} over {:.2} s), wire {:.1}, run {:.1} s",
                w.goodput_bps / 1e6,
                report.goodput_bps() / 1e6,
                report.seconds,
                w.wire_bps().iter().sum::<f64>() / 1e6,
                t_run.elapsed().as_secs_f64()
            );
            let keys: Vec<FlowKey> = report.streams.iter().map(|s| s.flow).collect();
            let flows_per_path = flows_per_nexthop(&keys, &table, LAB_SEED, &ids);
            let per_path_wire_bps = w.wire_bps();
            let rates: Vec<f64> = report.streams.iter().map(|s| s.goodput_bps()).collect();
            let goodput_caps: Vec<u64> = capacities
                .iter()
                .map(|&c| (c as f64 * ceiling) as u64)
                .collect();
            outcomes.push(Outcome {
                load: load_name,
                flows,
                split: split.name,
                weights: weights_of(split),
                split_bound: per_flow.map(|d| {
                    split_limited_bps(&flows_per_path, d as f64, &goodput_caps) / total_capacity
                }),
                flow_shares: shares(&flows_per_path),
                flows_per_path,
                goodput_bps: w.goodput_bps,
                util: w.goodput_bps / total_capacity,
                wire_util: per_path_wire_bps.iter().sum::<f64>() / total_capacity,
                per_path_wire_util: per_path_wire_bps
                    .iter()
                    .zip(&capacities)
                    .map(|(bps, &c)| bps / c as f64)
                    .collect(),
                shaper_drops: w.drops.iter().sum(),
                retransmits: report.retransmits,
                jain: jain_index(&rates),
                byte_split: SplitAccuracy {
                    configured: configured_shares(split, n),
                    achieved: shares(&w.nexthop_bytes),
                },
            });
        }
    }
    drop(servers);
    drop(lab);
    let elapsed = bench_started.elapsed();

    // The draw of flows: the paced bound over other client port ranges (computed only).
    const PORT_CHOICES: u32 = 1000;
    let pct = |v: &[f64], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    let mut spread = Vec::new();
    for flows in [32u16, 64, 128, 512, 1024] {
        let w = bound_over_port_choices(
            &splits[0].members,
            &ids,
            flows,
            &capacities,
            ceiling,
            PORT_CHOICES,
        )?;
        let e = bound_over_port_choices(
            &splits[1].members,
            &ids,
            flows,
            &capacities,
            ceiling,
            PORT_CHOICES,
        )?;
        spread.push((flows, pct(&w, 50), pct(&w, 5), pct(&e, 50), pct(&e, 5)));
    }

    let find = |load: &str, split: &str| {
        outcomes
            .iter()
            .find(|o| o.load == load && o.split == split)
            .expect("every load ran every split")
    };
    let (pw, pe, ps) = (
        find("paced", "WECMP"),
        find("paced", "ECMP"),
        find("paced", "single path"),
    );
    let (gw, ge, gs) = (
        find("greedy", "WECMP"),
        find("greedy", "ECMP"),
        find("greedy", "single path"),
    );
    let pw_bound = pw.split_bound.expect("paced runs have a bound");

    // Report.
    let mut md = String::new();
    let caps_s = args
        .capacities_mbit
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" / ");
    let frame_bytes = (1448.0 / ceiling).round();
    writeln!(md, "Two regions in network namespaces joined by {n} underlay paths. Each path crosses a wire namespace whose bridge sends towards region B through a TBF shaper ({caps_s} Mbit/s of underlay frames, {} ms queue); a qdisc on the gateways' own veths would not apply, since native XDP redirects bypass it. The gateways run dwcp's XDP programs in native mode; their kernels have no route to the other region. Load: iperf3 from host A to host B (at nice {nice}, so that other work on the machine does not take its CPU), fixed client ports from {FIRST_CLIENT_PORT} so that every split sees the same 5-tuples, {} s measured after {} s of warm-up per run; every run in one process ({:.0} s in all). Weights: WECMP and ECMP from `TrafficEngineer` ({} % headroom, the `TrafficConfig` default this run used) on the paths' capacities; single path = the widest path alone, the best one path can do.", SHAPER_QUEUE.as_millis(), args.seconds, args.omit, elapsed.as_secs_f64(), TrafficConfig::default().headroom_percent, nice = dwcp_lab::utilisation::iperf::LOAD_NICE)?;
    writeln!(md)?;
    writeln!(md, "- **paced**, {} flows: each paced by the kernel at {:.2} Mbit/s (iperf3 `--fq-rate`, TCP's own pacing), their demands adding up to the sum of the capacities ({:.0} Mbit/s). Many rate-limited flows: the split decides what gets through. (iperf3's `-b` throttle was tried first: a flow that fell behind sends unpaced until it has caught up, and those bursts overran paths whose flows' demands fit.)", args.flows, mbit(per_flow_bps as f64), mbit(total_capacity))?;
    writeln!(md, "- **greedy**, {} flows (`iperf3 -P {}`): as fast as TCP lets them. Every path holding a flow gets filled, so the split decides fairness between the flows more than utilisation.", args.greedy_flows, args.greedy_flows)?;
    writeln!(md)?;
    writeln!(md, "`util` = aggregate goodput / sum of capacities, goodput being the payload host B's server sockets received (the kernel's `tcp_info`, read through sock_diag) over the same window as the wire counters, from half a second after the warm-up to half a second before the end (iperf3's own sums are not used: its clients of 128 flows each start their clocks apart when connections are slow to open). A full TCP segment (1448 bytes of payload) is a {frame_bytes}-byte underlay frame (VXLAN, inner and outer Ethernet), so goodput can reach at most **{ceiling:.3}** of capacity. `wire` = underlay bytes the shapers sent / (capacity × time). `bound` (paced) = the most the flows hashed to each path can deliver (per path min(flows × demand, capacity × {ceiling:.3})) / sum of capacities. Flows per path: each stream's 5-tuple through the same hash and bucket table as the kernel. Jain = fairness of per-flow goodput (1 = all equal).")?;
    writeln!(md)?;
    writeln!(md, "| load | split | weights | flows per path | goodput Mbit/s | util | bound | wire | per-path wire | retransmits | shaper drops | Jain |")?;
    writeln!(
        md,
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|"
    )?;
    for o in &outcomes {
        writeln!(
            md,
            "| {} ({}) | {} | {} | {} | {:.1} | **{:.3}** | {} | {:.3} | {} | {} | {} | {:.3} |",
            o.load,
            o.flows,
            o.split,
            o.weights,
            o.flows_per_path
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            mbit(o.goodput_bps),
            o.util,
            o.split_bound
                .map(|b| format!("{b:.3}"))
                .unwrap_or_else(|| "–".into()),
            o.wire_util,
            fmt_shares(&o.per_path_wire_util),
            o.retransmits,
            o.shaper_drops,
            o.jain
        )?;
    }
    writeln!(md)?;
    writeln!(md, "Target: WECMP ≥ 0.90 and above ECMP (paced load). WECMP **{:.3}** ({}): {:.2}× ECMP ({:.3}), {:.2}× single path ({:.3}). What stands between WECMP and 1.0: the header ceiling ({ceiling:.3}, no split can pass it); the draw of {} flows over the buckets (bound {pw_bound:.3} for these ports, table below for others); TCP and the fast path then delivered {:.3} of the bound. Wire utilisation of WECMP: {:.3}. Greedy: WECMP {:.3}, ECMP {:.3}, single path {:.3}; Jain {:.3} (WECMP) vs {:.3} (ECMP).",
        pw.util,
        if pw.util >= 0.90 && pw.util > pe.util { "met" } else if pw.util > pe.util { "above ECMP, 0.90 not met" } else { "not met" },
        pw.util / pe.util, pe.util, pw.util / ps.util, ps.util, args.flows, pw.util / pw_bound, pw.wire_util, gw.util, ge.util, gs.util, gw.jain, ge.jain)?;
    writeln!(md)?;
    writeln!(md, "**How much the draw of flows matters**: the paced bound of the same weights for flows from {PORT_CHOICES} other client port ranges (computed through the hash and table, not run; demand per flow = sum of capacities / flows):")?;
    writeln!(md)?;
    writeln!(
        md,
        "| flows | WECMP median | WECMP 5th percentile | ECMP median | ECMP 5th percentile |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|")?;
    for (flows, wm, w5, em, e5) in &spread {
        writeln!(md, "| {flows} | {wm:.3} | {w5:.3} | {em:.3} | {e5:.3} |")?;
    }
    writeln!(md)?;
    writeln!(md, "**Split accuracy under TCP load**: bytes gateway A's fast path sent on each path (per-next-hop counters) against the configured share, beside the share of flows the hash gave each path. A path carries at most its capacity, so where the weights ask a path for more than it has (ECMP's third on the thinnest path) the bytes follow the capacities, not the weights.")?;
    writeln!(md)?;
    writeln!(
        md,
        "| load | split | configured | flows | bytes | max abs error (bytes) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---:|")?;
    for o in outcomes.iter().filter(|o| o.split != "single path") {
        writeln!(
            md,
            "| {} ({}) | {} | {} | {} | {} | {:.3} |",
            o.load,
            o.flows,
            o.split,
            fmt_shares(&o.byte_split.configured),
            fmt_shares(&o.flow_shares),
            fmt_shares(&o.byte_split.achieved),
            o.byte_split.max_abs_error()
        )?;
    }
    writeln!(md)?;
    writeln!(md, "**Hash split** without capacity limits: {} one-packet UDP flows through gateway A, packets per next hop. `kernel = prediction`: every path's count equals what the userspace hash and table predict for the flows sent.", args.udp_flows)?;
    writeln!(md)?;
    writeln!(md, "| split | weights | configured | bucket table | achieved | max abs error | packets counted | kernel = prediction |")?;
    writeln!(md, "|---|---|---|---|---|---:|---:|---|")?;
    for h in &hash_rows {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.4} | {} | {} |",
            h.name,
            h.weights,
            fmt_shares(&h.accuracy.configured),
            fmt_shares(&h.table),
            fmt_shares(&h.accuracy.achieved),
            h.accuracy.max_abs_error(),
            h.counted,
            if h.as_predicted { "yes" } else { "no" }
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "**The shapers limit the fast path**: one greedy flow alone on each path, {} s:",
        check.seconds
    )?;
    writeln!(md)?;
    writeln!(md, "| path | capacity Mbit/s | wire Mbit/s | wire / capacity | goodput Mbit/s | shaper drops |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
    for (id, cap, good, wire, drops) in &check_rows {
        writeln!(
            md,
            "| {id} | {:.0} | {:.1} | {:.3} | {:.1} | {drops} |",
            mbit(*cap as f64),
            mbit(*wire),
            wire / *cap as f64,
            mbit(*good)
        )?;
    }
    writeln!(md)?;
    writeln!(md, "**What the lab carries at all**: with the shapers removed, {} greedy flows over the {n} paths delivered {:.0} Mbit/s of goodput, {:.2}× the sum of the capacities, in the same run.", unshaped.flows, mbit(unshaped_goodput_bps), unshaped_goodput_bps / total_capacity)?;
    print!("{md}");

    let mut metrics = serde_json::Map::new();
    let mut put = |k: String, v: f64| {
        metrics.insert(k, json!((v * 10_000.0).round() / 10_000.0));
    };
    put("wecmp_util".into(), pw.util);
    put("ecmp_util".into(), pe.util);
    put("single_path_util".into(), ps.util);
    put("wecmp_bound".into(), pw_bound);
    put("wecmp_wire_util".into(), pw.wire_util);
    put("ecmp_wire_util".into(), pe.wire_util);
    put("single_path_wire_util".into(), ps.wire_util);
    put("greedy_wecmp_util".into(), gw.util);
    put("greedy_ecmp_util".into(), ge.util);
    put("greedy_single_path_util".into(), gs.util);
    put("greedy_wecmp_jain".into(), gw.jain);
    put("greedy_ecmp_jain".into(), ge.jain);
    put("goodput_ceiling".into(), ceiling);
    put(
        "wecmp_byte_split_max_error".into(),
        pw.byte_split.max_abs_error(),
    );
    put(
        "wecmp_hash_split_max_error".into(),
        hash_rows[0].accuracy.max_abs_error(),
    );
    for (flows, wm, w5, _, _) in &spread {
        put(format!("wecmp_bound_{flows}_flows_median"), *wm);
        put(format!("wecmp_bound_{flows}_flows_p5"), *w5);
    }
    put(
        "unshaped_goodput_over_capacity".into(),
        unshaped_goodput_bps / total_capacity,
    );
    let out = json!({
        "metrics": metrics,
        "config": {
            "capacities_mbit": args.capacities_mbit,
            "paced_flows": args.flows,
            "greedy_flows": args.greedy_flows,
            "seconds": args.seconds,
            "omit_seconds": args.omit,
            "paced_per_flow_bps": per_flow_bps,
            "wecmp_weights": wecmp,
            "ecmp_weights": ecmp,
            "hash_split_kernel_equals_prediction": hash_rows.iter().all(|h| h.as_predicted),
        },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("utilisation.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    Ok(())
}
