//! Failover benchmark: how long traffic is lost when the underlay link carrying it fails
//! silently.
//!
//! Two regions joined by two monitored links (the failover lab, `MultiLinkLab`), probes every
//! 10 ms, detection 3 x 10 ms. Host A sends one UDP flow at a steady 10,000 datagrams/s with
//! sequence numbers and send times to host B; the link carrying the flow is cut in its wire
//! namespace (nftables drop, both directions), healed 400 ms later, and the flow returns to it.
//! The loss window of a trial is the time from the first lost datagram to the first one
//! delivered over the backup, from the sender's timestamps of the two.
//!
//! Two modes, measured in the same run on the same lab:
//! - `kernel`: liveness in the fast path (dwcp): the XDP program skips the dead next hop by
//!   itself once the link's probes have been unanswered for the detection time.
//! - `agent` (the baseline): the kernel's detection time is set out of reach, and an agent
//!   loop does the failover instead: it polls `LINK_STATE` every 10 ms with the same rule and
//!   rewrites the next-hop group without the dead link (the way BFD + a routing daemon +
//!   the FIB do it).
//!
//! And a third row, measured in the same run on a second lab of the same shape whose links are
//! WireGuard tunnels (`MultiLinkLab::build_wireguard`: wireguard-go, hand-off next hops,
//! probes inside the tunnels): the fast path's failover of encrypted links, with a capture
//! of gateway A's underlay ports counting the stream's packets seen in clear text
//! (`wg_cleartext`, to be 0).
//!
//! Also measured: the probe cost on quiet links (probes/s per link, CPU of the prober
//! thread). Run: `cargo xtask bench failover [--trials N]`. Needs root. Writes
//! `target/bench/failover.json`; prints the Markdown report on stdout.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, PerCpuArray};
use dwcp_agent::probe::monotonic_ns;
use dwcp_agent::probe::LinkEventKind;
use dwcp_agent::probe::MonitorConfig;
use dwcp_agent::probe::ProbeCounts;
use dwcp_common::{maps::names, Counters, LinkConfig, Reason};
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Member;
use dwcp_dataplane::PinnedMaps;
use dwcp_lab::fail_closed::UnderlayCapture;
use dwcp_lab::lab::stream::delivery_gaps;
use dwcp_lab::lab::stream::PacedSender;
use dwcp_lab::lab::stream::StreamReceiver;
use dwcp_lab::lab::wait_for;
use dwcp_lab::lab::MultiLinkLab;
use dwcp_lab::lab::Side;
use dwcp_lab::lab::MULTI_LAB_GROUP;
use dwcp_tunnels::wireguard::uapi::find_in_path;
use dwcp_tunnels::WireGuardImpl;

const RATE_PPS: u32 = 10_000;
const STREAM_PORT: u16 = 9000;
const BEFORE_CUT: Duration = Duration::from_millis(200);
const CUT_FOR: Duration = Duration::from_millis(400);
const LIMIT: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_secs(5);
/// Sender and receiver run in `SCHED_FIFO` below the probers (10): the measuring tools must
/// not be what a busy machine delays.
const TRAFFIC_RT_PRIORITY: i32 = 5;
/// A trial whose sender paused longer than this around the cut is left out.
const MAX_SENDER_PAUSE_NS: u64 = 2_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Kernel,
    Agent,
}

#[derive(Debug, Default)]
struct ModeResult {
    windows_ms: Vec<f64>,
    /// Datagrams lost in the failover gaps.
    failover_lost: u64,
    /// Datagrams lost after the heal (failback).
    failback_lost: u64,
    /// Datagrams lost anywhere else (should be none).
    other_lost: u64,
    /// Trials whose cut caused no gap at all, or whose flow never came back.
    anomalies: Vec<String>,
    /// Trials left out because the sender paused during the outage (its window would be
    /// measured short).
    sender_stalled: usize,
    sent: u64,
    streamed: Duration,
    /// Gaps other than the failover one, described.
    other_gaps: Vec<String>,
    /// Per trial: link, how long the nft command took, every gap (start relative to the cut
    /// command, datagrams lost, window), the sender's longest pause around the cut.
    details: Vec<serde_json::Value>,
}

/// Gateway A's per-next-hop and per-reason counters, from their pins.
struct NhStats {
    nexthops: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, u64>,
}

impl NhStats {
    fn open(lab: &MultiLinkLab) -> Result<NhStats> {
        let maps = PinnedMaps::new(lab.pin_dir(Side::A));
        Ok(NhStats {
            nexthops: maps.map(names::NH_STATS)?,
            reasons: maps.map(names::REASON_STATS)?,
        })
    }

    fn packets(&self, nexthop: u32) -> Result<u64> {
        Ok(self
            .nexthops
            .get(&nexthop, 0)?
            .iter()
            .map(|c| c.packets)
            .sum())
    }

    /// Packets gateway A passed up because no member of the group was live.
    fn no_live_nexthop(&self) -> Result<u64> {
        let r = Reason::LanPassNoLiveNextHop as u32;
        Ok(self.reasons.get(&r, 0)?.iter().sum())
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown (/proc/loadavg: {e})"))
}

/// The agent-side failover of the baseline: poll the monitor every poll interval, rewrite
/// the group without the links it reports down.
fn spawn_agent_failover(
    lab: &MultiLinkLab,
    mut dp: Dataplane,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<Dataplane>>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut monitor = lab.agent_monitor(Side::A, tx)?;
    let links = lab.link_ids();
    let poll = lab.monitor.poll_interval;
    Ok(std::thread::spawn(move || -> Result<Dataplane> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut down = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (events, _) = monitor.poll().await;
                while rx.try_recv().is_ok() {}
                let before = down.clone();
                for ev in events {
                    match ev.kind {
                        LinkEventKind::Down { .. } => {
                            down.insert(ev.link_id);
                        }
                        LinkEventKind::Up { .. } => {
                            down.remove(&ev.link_id);
                        }
                        _ => {}
                    }
                }
                if down != before {
                    let members: Vec<Member> = links
                        .iter()
                        .filter(|l| !down.contains(*l))
                        .map(|&l| Member {
                            nexthop: l,
                            weight: 1,
                            path: Default::default(),
                        })
                        .collect();
                    if !members.is_empty() {
                        dp.set_group(MULTI_LAB_GROUP, &members)?;
                    }
                }
            }
            Ok(dp)
        })
    }))
}

fn trial(
    lab: &MultiLinkLab,
    mode: Mode,
    stats: &NhStats,
    port: u16,
    result: &mut ModeResult,
    label: &str,
) -> Result<()> {
    let dst = SocketAddr::from((lab.b.host_ip, STREAM_PORT));
    let receiver = StreamReceiver::start(&lab.b.host, dst, Some(TRAFFIC_RT_PRIORITY))?;
    let before: Vec<u64> = lab
        .link_ids()
        .iter()
        .map(|&l| stats.packets(l))
        .collect::<Result<_>>()?;
    let sender = PacedSender::start(
        &lab.a.host,
        lab.a.host_ip,
        &[port],
        dst,
        RATE_PPS,
        Some(TRAFFIC_RT_PRIORITY),
    )?;
    let streaming = Instant::now();
    let no_live_before = stats.no_live_nexthop()?;
    std::thread::sleep(BEFORE_CUT);
    // The link carrying the flow: the next hop that counted most of what was sent (a sender
    // thread slow to start on a busy machine gets up to 2 s more).
    let deadline = Instant::now() + Duration::from_secs(2);
    let link = loop {
        let sent = sender.sent();
        let mut carrying = None;
        for (i, &l) in lab.link_ids().iter().enumerate() {
            if sent >= 100 && stats.packets(l)? - before[i] > sent / 2 {
                carrying = Some(l);
            }
        }
        match carrying {
            Some(l) => break l,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            None => bail!(
                "{label}: the flow from port {port} is on no link ({} datagrams sent)",
                sender.sent()
            ),
        }
    };
    // The drop rule takes effect somewhere within the nft command.
    let cut_from = monotonic_ns();
    lab.link(link).cut()?;
    let cut_to = monotonic_ns();
    std::thread::sleep(CUT_FOR);
    let carried_at_heal = stats.packets(link)?;
    let heal_from = monotonic_ns();
    lab.link(link).heal()?;
    // The fast path's table never changed: the flow returns to its link once it is usable
    // again. The agent rebuilt the table twice, which may leave the flow on the backup; it is
    // back once the link is usable (by the agent's rule) and the agent had a poll to react.
    let back = match mode {
        Mode::Kernel => wait_for("the flow back on its link", LIMIT, || {
            Ok(stats.packets(link).unwrap_or(0) > carried_at_heal + 100)
        }),
        Mode::Agent => lab.wait_links_usable(LIMIT).map(|()| {
            std::thread::sleep(lab.monitor.poll_interval * 10);
        }),
    };
    std::thread::sleep(Duration::from_millis(100));
    let sent = sender.finish();
    result.streamed += streaming.elapsed();
    let no_live = stats.no_live_nexthop()? - no_live_before;
    let arrivals = receiver.finish(Duration::from_millis(100));
    if back.is_err() {
        result
            .anomalies
            .push(format!("{label}: link {link} never came back"));
    }
    result.sent += sent.tx_ns.values().map(|v| v.len() as u64).sum::<u64>();
    let gaps = delivery_gaps(&sent, &arrivals);
    // The failover gap: the first one that starts at the cut (a datagram sent up to 2 ms
    // before the rule can still be inside the wire when it lands) and before the heal.
    let failover = gaps
        .iter()
        .find(|g| g.start_ns + 2_000_000 >= cut_from && g.start_ns < heal_from)
        .copied();
    for g in &gaps {
        if Some(*g) == failover {
            result.failover_lost += g.lost as u64;
        } else if g.start_ns >= heal_from {
            result.failback_lost += g.lost as u64;
        } else {
            result.other_lost += g.lost as u64;
            result.other_gaps.push(format!(
                "{label} (link {link} cut): {} datagrams over {:.1} ms, from {:.1} ms after the cut command began; in this trial gateway A passed {no_live} packets up for lack of a live next hop",
                g.lost,
                g.window_ns().unwrap_or(0) as f64 / 1e6,
                (g.start_ns as f64 - cut_from as f64) / 1e6
            ));
        }
    }
    let rel_ms = |t: u64| (t as f64 - cut_from as f64) / 1e6;
    let mut detail = serde_json::json!({
        "trial": label,
        "link": link,
        "cut_command_ms": (cut_to - cut_from) as f64 / 1e6,
        "no_live_nexthop_packets": no_live,
        "gaps": gaps.iter().map(|g| serde_json::json!({
            "start_after_cut_ms": rel_ms(g.start_ns),
            "lost": g.lost,
            "window_ms": g.window_ns().map(|w| w as f64 / 1e6),
        })).collect::<Vec<_>>(),
    });
    match failover.and_then(|g| g.end_ns.map(|end| (g, end))) {
        Some((g, end)) => {
            let pause = sent.longest_pause_ns(cut_from.saturating_sub(2_000_000), end);
            detail["sender_longest_pause_ms"] = (pause as f64 / 1e6).into();
            let w = (end - g.start_ns) as f64 / 1e6;
            if pause > MAX_SENDER_PAUSE_NS {
                eprintln!("{label}: link {link} cut, window {w:.1} ms left out: the sender paused {:.1} ms", pause as f64 / 1e6);
                result.sender_stalled += 1;
            } else {
                eprintln!("{label}: link {link} cut, loss window {w:.1} ms");
                result.windows_ms.push(w);
            }
        }
        None => result
            .anomalies
            .push(format!("{label}: no loss window at the cut of link {link}")),
    }
    result.details.push(detail);
    Ok(())
}

/// Sets the kernel's detection time of every link, its other settings kept.
fn set_kernel_detection(dp: &mut Dataplane, lab: &MultiLinkLab, detect_ns: u64) -> Result<()> {
    for l in lab.link_ids() {
        let cfg = dp.link_config(l)?;
        dp.set_link_config(l, LinkConfig { detect_ns, ..cfg })?;
    }
    Ok(())
}

/// `trials` trials of `mode`, labelled `name` in the report.
fn run_mode(lab: &mut MultiLinkLab, mode: Mode, name: &str, trials: usize) -> Result<ModeResult> {
    let stats = NhStats::open(lab)?;
    let mut result = ModeResult::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut agent = None;
    if mode == Mode::Agent {
        let mut dp = lab.a.dataplane.take().context("gateway A's dataplane")?;
        // The kernel would only call a link dead after 1000 s: the failover is the agent's.
        set_kernel_detection(&mut dp, lab, 1_000_000_000_000)?;
        agent = Some(spawn_agent_failover(lab, dp, stop.clone())?);
    }
    let outcome = (|| -> Result<()> {
        for t in 0..trials {
            lab.wait_links_usable(LIMIT)?;
            std::thread::sleep(Duration::from_millis(100));
            let port = 30_000 + (t as u16) * 7 + if mode == Mode::Agent { 3 } else { 0 };
            let label = format!("{name} trial {}/{trials}", t + 1);
            trial(lab, mode, &stats, port, &mut result, &label)?;
        }
        Ok(())
    })();
    if let Some(agent) = agent {
        stop.store(true, Ordering::Relaxed);
        let mut dp = agent
            .join()
            .map_err(|_| anyhow::anyhow!("agent thread panicked"))??;
        set_kernel_detection(&mut dp, lab, lab.monitor.detect_ns())?;
        let all: Vec<Member> = lab
            .link_ids()
            .into_iter()
            .map(|l| Member {
                nexthop: l,
                weight: 1,
                path: Default::default(),
            })
            .collect();
        dp.set_group(MULTI_LAB_GROUP, &all)?;
        lab.a.dataplane = Some(dp);
    }
    outcome?;
    Ok(result)
}

struct ProbeCost {
    probes_per_s_per_link: f64,
    cpu_share: f64,
    cpu_us_per_probe: f64,
}

/// Both probers over a quiet period: no cut, no traffic.
fn probe_cost(lab: &MultiLinkLab) -> Result<ProbeCost> {
    lab.wait_links_usable(LIMIT)?;
    let probers = [Side::A, Side::B].map(|s| lab.prober(s).expect("prober running"));
    let sent = |p: &dwcp_lab::lab::ProberThread| -> u64 {
        p.handle()
            .links()
            .iter()
            .filter_map(|l| p.handle().sent(*l))
            .sum()
    };
    let s0: u64 = probers.iter().map(|p| sent(p)).sum();
    let c0: Duration = probers.iter().map(|p| p.cpu_time()).sum();
    let t0 = Instant::now();
    std::thread::sleep(QUIET);
    let s1: u64 = probers.iter().map(|p| sent(p)).sum();
    let c1: Duration = probers.iter().map(|p| p.cpu_time()).sum();
    let wall = t0.elapsed().as_secs_f64();
    let links = (2 * lab.links.len()) as f64; // probed from both ends
    let probes = (s1 - s0) as f64;
    let cpu = (c1 - c0).as_secs_f64();
    Ok(ProbeCost {
        probes_per_s_per_link: probes / wall / links,
        cpu_share: cpu / wall / 2.0,
        cpu_us_per_probe: cpu * 1e6 / probes,
    })
}

fn summary(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&s, 0.5),
        percentile(&s, 0.99),
        *s.last().unwrap(),
        *s.first().unwrap(),
    )
}

fn main() -> Result<()> {
    let mut trials = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--trials" => {
                trials = args
                    .next()
                    .context("--trials needs a number")?
                    .parse()
                    .context("--trials needs a number")?
            }
            other => bail!("unknown argument {other} (expected --trials N)"),
        }
    }
    if trials < 20 {
        bail!("at least 20 trials, not {trials}");
    }
    dwcp_lab::netlab::sweep_stale();
    let monitor = MonitorConfig::default();
    let mut lab = MultiLinkLab::build("bfo", 2, monitor)?;
    lab.start_dataplanes()?;
    lab.start_probers()?;
    let load_before = load_average();
    let cost = probe_cost(&lab)?;
    eprintln!(
        "probe cost: {:.1} probes/s per link, prober CPU {:.2} % of a core",
        cost.probes_per_s_per_link,
        cost.cpu_share * 100.0
    );
    let kernel = run_mode(&mut lab, Mode::Kernel, "Kernel", trials)?;
    let agent = run_mode(&mut lab, Mode::Agent, "Agent", trials)?;
    // The configuration and machine of this run, for the prose below.
    let n_links = lab.links.len();
    let prober_priority = lab
        .prober_rt_priority
        .map_or("the normal class".to_string(), |p| {
            format!("the `SCHED_FIFO` class at priority {p}")
        });
    drop(lab);

    // The same trials on WireGuard links, A's underlay ports captured throughout.
    // The backend gateways without the module use (and the only one this machine has).
    let wireguard_go = WireGuardImpl::Userspace {
        binary: find_in_path("wireguard-go").context("wireguard-go in PATH")?,
    };
    let mut wg_lab = MultiLinkLab::build_wireguard("bfowg", 2, monitor, wireguard_go)?;
    wg_lab.start_dataplanes()?;
    wg_lab.start_probers()?;
    let captures = wg_lab
        .links
        .iter()
        .map(|l| UnderlayCapture::start(&wg_lab.a.gw, &l.ifname))
        .collect::<Result<Vec<_>, _>>()?;
    let wg = run_mode(&mut wg_lab, Mode::Kernel, "WireGuard", trials)?;
    let (mut wg_cleartext, mut wg_encrypted) = (0, 0);
    for c in captures {
        let (clear, encrypted) = c.finish()?;
        wg_cleartext += clear;
        wg_encrypted += encrypted;
    }
    drop(wg_lab);
    let load_after = load_average();

    for (name, r) in [("kernel", &kernel), ("agent", &agent), ("wireguard", &wg)] {
        if r.windows_ms.len() < 20 {
            bail!(
                "{name}: only {} trials measured: {:?}",
                r.windows_ms.len(),
                r.anomalies
            );
        }
    }
    let (p50, p99, max, min) = summary(&kernel.windows_ms);
    let (ap50, ap99, amax, amin) = summary(&agent.windows_ms);
    let (wp50, wp99, wmax, wmin) = summary(&wg.windows_ms);
    let detect_ms = monitor.detect_ns() as f64 / 1e6;
    let interval_ms = monitor.interval.as_secs_f64() * 1e3;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    let json = serde_json::json!({
        "metrics": {
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max,
            "min_ms": min,
            "trials": kernel.windows_ms.len(),
            "agent_baseline_p50_ms": ap50,
            "agent_baseline_p99_ms": ap99,
            "agent_baseline_max_ms": amax,
            "agent_baseline_trials": agent.windows_ms.len(),
            "p99_ratio_to_agent_baseline": p99 / ap99,
            "probe_interval_ms": interval_ms,
            "detect_ms": detect_ms,
            "rate_pps": RATE_PPS,
            "achieved_pps": kernel.sent as f64 / kernel.streamed.as_secs_f64(),
            "failback_lost": kernel.failback_lost,
            "other_lost": kernel.other_lost,
            "probes_per_s_per_link": cost.probes_per_s_per_link,
            "prober_cpu_percent": cost.cpu_share * 100.0,
            "prober_cpu_us_per_probe": cost.cpu_us_per_probe,
            "wg_trials": wg.windows_ms.len(),
            "wg_p50_ms": wp50,
            "wg_p99_ms": wp99,
            "wg_max_ms": wmax,
            "wg_cleartext": wg_cleartext,
            "wg_encrypted_packets_seen": wg_encrypted,
            "wg_failback_lost": wg.failback_lost,
            "wg_other_lost": wg.other_lost,
        },
        "wg_windows_ms": wg.windows_ms,
        "wg_trials": wg.details,
        "kernel_windows_ms": kernel.windows_ms,
        "agent_windows_ms": agent.windows_ms,
        "anomalies": kernel.anomalies.iter().chain(&agent.anomalies).chain(&wg.anomalies).collect::<Vec<_>>(),
        "left_out_sender_stalled": { "kernel": kernel.sender_stalled, "agent": agent.sender_stalled, "wireguard": wg.sender_stalled },
        "kernel_trials": kernel.details,
        "agent_trials": agent.details,
        "load_average": { "before": load_before, "after": load_after },
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("failover.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let row = |name: &str, r: &ModeResult, p50: f64, p99: f64, max: f64, min: f64| {
        format!(
            "| {name} | {} | {} | {min:.1} | {p50:.1} | {p99:.1} | {max:.1} | {} | {} | {} |",
            r.windows_ms.len(),
            r.sender_stalled,
            r.failover_lost,
            r.failback_lost,
            r.other_lost
        )
    };
    println!("Loss window when the link carrying a {RATE_PPS} datagrams/s UDP flow is cut silently (probes every {interval_ms:.0} ms, detection {} x {interval_ms:.0} ms = {detect_ms:.0} ms, failback after {} good probes).\n", monitor.detect_multiplier, monitor.up_after);
    println!("| failover by | trials | left out | min ms | p50 ms | p99 ms | max ms | lost at failover (datagrams) | lost at failback | lost elsewhere |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "{}",
        row("fast path (XDP liveness)", &kernel, p50, p99, max, min)
    );
    println!(
        "{}",
        row(
            "agent, baseline (poll + group rewrite)",
            &agent,
            ap50,
            ap99,
            amax,
            amin
        )
    );
    println!(
        "{}",
        row(
            "fast path, WireGuard links (probes inside the tunnels)",
            &wg,
            wp50,
            wp99,
            wmax,
            wmin
        )
    );
    println!("\n- p99 of the fast path: **{p99:.1} ms**, {:.2} x the agent-driven baseline measured in the same run ({ap99:.1} ms); target < 50 ms.", p99 / ap99);
    println!("- WireGuard links (wireguard-go): p99 **{wp99:.1} ms** over {} trials (target < 50 ms); packets from or to the LANs seen in clear text on gateway A's underlay ports during those trials: **{wg_cleartext}** (and {wg_encrypted} WireGuard datagrams). The flow is handed to the kernel with the tunnel's mark (policy routing into the WireGuard device); each tunnel is probed inside itself and the WireGuard device's tc program reflects and measures the probes, so the LAN program skips a dead tunnel by the same rule as a dead VXLAN link. Its \"lost elsewhere\" ({} datagrams, listed below as WireGuard trials) is loss after the hand-off: in those gaps gateway A's fast path had a live tunnel (it passed nothing up for lack of one); the datagrams were lost on the way through the wireguard-go daemons (userspace, normal scheduling class), not located further.", wg.windows_ms.len(), wg.other_lost);
    println!("- For reference (published defaults, not measured here): FRR BFD detects in 900 ms (3 x 300 ms), BIRD in about 500 ms; the seed promises failover under 1 s. The p99 above is {:.0} x shorter than 900 ms, {:.0} x shorter than 500 ms, {:.0} x shorter than 1 s.", 900.0 / p99, 500.0 / p99, 1000.0 / p99);
    println!("- Probe cost, quiet links over {} s: {:.1} probes/s per link and direction; the prober thread used {:.2} % of one core per gateway ({n_links} links), that is {:.1} us of the prober's CPU per probe sent. The prober's CPU covers sending (timers, syscall, UDP/IP, veth) and its 100 Hz read of `LINK_STATE` for the re-probe backoff and write of `PROBE_SENT`; the XDP reflection and measurement are not in this figure.", QUIET.as_secs(), cost.probes_per_s_per_link, cost.cpu_share * 100.0, cost.cpu_us_per_probe);
    if !kernel.anomalies.is_empty() || !agent.anomalies.is_empty() || !wg.anomalies.is_empty() {
        println!(
            "- Anomalies: {:?}",
            kernel
                .anomalies
                .iter()
                .chain(&agent.anomalies)
                .chain(&wg.anomalies)
                .collect::<Vec<_>>()
        );
    }
    for g in kernel
        .other_gaps
        .iter()
        .chain(&agent.other_gaps)
        .chain(&wg.other_gaps)
    {
        println!("- Lost elsewhere: {g}.");
    }
    println!("\nMethod: network-namespace lab, two gateways joined by two veth links, each through a wire namespace with a bridge where the cut is an nftables drop rule (so neither gateway sees a carrier change); the WireGuard row on a second lab of the same shape, built after the first is removed, with a wireguard-go tunnel over each link (the cut drops its ciphertext) and an AF_PACKET capture on both of gateway A's underlay ports for all its trials. The sender is paced with absolute `clock_nanosleep` deadlines; every datagram carries its sequence number and `CLOCK_MONOTONIC` send time. Loss window = send time of the first datagram delivered after the gap minus send time of the first lost one. The sender achieved {:.0} datagrams/s on average (fast-path phase). The probers run in {prober_priority} (the lab's setting; `dwcp-prober --rt-priority N` on a gateway), the sender and the receiver in the `SCHED_FIFO` class at priority {TRAFFIC_RT_PRIORITY}, the baseline's agent loop in the normal class (as an agent daemon would). A trial whose sender paused more than {max_pause_ms} ms between the cut and the end of the gap is left out (its window would read short) and counted as left out. Percentiles are nearest-rank; with fewer than 100 trials the p99 is the maximum. Per-trial details (every gap, the nft command's duration, the sender's longest pause) are in `target/bench/failover.json`. Each trial uses a new UDP source port (new flow), finds the link carrying it from the per-next-hop counters, cuts that link {before_cut_ms} ms into the flow, heals it {cut_for_ms} ms later and waits for the flow to return. Load average (1/5/15 min) before: {load_before}; after: {load_after} -- the machine has {cpus} CPUs available to this run; with other work on it the tail includes scheduling delays of the sender and the receiver threads.", kernel.sent as f64 / kernel.streamed.as_secs_f64(), max_pause_ms = MAX_SENDER_PAUSE_NS as f64 / 1e6, before_cut_ms = BEFORE_CUT.as_millis(), cut_for_ms = CUT_FOR.as_millis());
    println!("\nMeaning: the window is the detection time (no reply for {detect_ms:.0} ms, counted from the last reply before the cut, so {:.0} to {detect_ms:.0} ms after the cut with probes every {interval_ms:.0} ms) plus the time until the next datagram; the fast path needs no userspace step after detection. The baseline adds the agent's poll period and the group rewrite. \"Lost at failback\" counts datagrams lost after the heal (the flow moving back to its link); \"lost elsewhere\" counts gaps other than the failover one before the heal (each is listed above with the packets gateway A passed up for lack of a live next hop in that trial: if those match, the backup link too was considered dead for that long).", (detect_ms - interval_ms).max(0.0));
    Ok(())
}
