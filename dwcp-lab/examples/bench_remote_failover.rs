//! `cargo xtask bench remote_failover`: how fast a link failure reaches every gateway.
//!
//! Two parts, one run:
//! - Simulation: 50 regions of a synthetic topology, one gateway each, running the real
//!   link-state state machines, back-off and routing engine on a simulated clock
//!   (`dwcp_lab::flood_sim`); every single-link failure is cut in turn and measured against
//!   its bound.
//! - Lab (root): the 6-region mesh of `cargo xtask lab` with real agents; a 10,000
//!   datagram/s flow whose path crosses the cut link as its second link (the source gateway
//!   terminates neither end), cut silently; the loss window per trial, with record flooding
//!   on and then off (the baseline, a second lab in the same run); the loop counter
//!   (`dwcp_lab::lab::loops`) on every wire across all trials and a flapping phase.
//!
//! `--trials N` (default 20, at least 20) measured windows per lab mode; `--sim-only` skips the lab. Writes
//! `target/bench/remote_failover.json` and prints the Markdown report.
use anyhow::{Context, Result};
use dwcp_control::topology::synthetic::SyntheticSpec;
use dwcp_lab::flood_sim::{FailureOutcome, SimConfig, Simulation};

const REGIONS: usize = 50;
/// Links from each region to its 3 nearest (the default 4 makes 172 links; 3 makes the 148
/// of the "about 150"), plus the default regions / 5 long-haul links.
const NEAREST: usize = 3;

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() -> Result<()> {
    let mut trials = 20usize;
    let mut lab = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--trials" => {
                trials = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("--trials needs a number")?
            }
            "--sim-only" => lab = false,
            other => anyhow::bail!("unknown argument {other} (--trials N, --sim-only)"),
        }
    }
    anyhow::ensure!(trials >= 20, "at least 20 trials, not {trials}");
    let spec = SyntheticSpec {
        nearest: NEAREST,
        ..SyntheticSpec::new(REGIONS, 0)
    };
    let config = SimConfig::agent_defaults(spec);
    let sim = Simulation::new(config.clone()).context("warming up the simulated network")?;
    let links: Vec<_> = sim.topology().links().iter().map(|l| l.id).collect();
    let mut outcomes: Vec<FailureOutcome> = links
        .iter()
        .map(|&l| sim.fail(l).with_context(|| format!("failure of link {l}")))
        .collect::<Result<_>>()?;
    outcomes.sort_by(|a, b| a.converge_ms.total_cmp(&b.converge_ms));

    let converge: Vec<f64> = outcomes.iter().map(|o| o.converge_ms).collect();
    let p50 = percentile(&converge, 0.50);
    let p99 = percentile(&converge, 0.99);
    // The failure whose converge time is the p99: its own bound is the like-for-like one.
    let p99_failure = outcomes
        .iter()
        .find(|o| o.converge_ms == p99)
        .expect("the p99 is one of the values");
    let min_bound = outcomes
        .iter()
        .map(|o| o.bound_ms)
        .fold(f64::INFINITY, f64::min);
    let over_bound = outcomes
        .iter()
        .filter(|o| o.converge_ms > o.bound_ms)
        .count();
    let n = outcomes.len() as f64;
    let messages_per_change = outcomes.iter().map(|o| o.messages() as f64).sum::<f64>() / n;
    let updates_per_change = outcomes.iter().map(|o| o.updates as f64).sum::<f64>() / n;
    let acks_per_change = outcomes.iter().map(|o| o.acks as f64).sum::<f64>() / n;
    let computations = outcomes.iter().map(|o| o.computations as f64).sum::<f64>() / n;
    let compute_max = outcomes
        .iter()
        .map(|o| o.compute_max_ms)
        .fold(0.0, f64::max);
    let worst_slack = outcomes
        .iter()
        .map(|o| o.converge_ms / o.bound_ms)
        .fold(0.0, f64::max);

    let measured = lab.then(|| remote_lab::run(trials)).transpose()?;
    let mut json = serde_json::json!({
        "metrics": {
            "sim_50r_converge_p99_ms": p99,
            "sim_50r_converge_bound_ms": p99_failure.bound_ms,
            "sim_50r_messages_per_change": messages_per_change,
            "sim_50r_links": links.len(),
            "sim_50r_failures": outcomes.len(),
            "sim_50r_failures_over_bound": over_bound,
        },
        "sim_50r_converge_p50_ms": p50,
        "sim_50r_min_bound_ms": min_bound,
        "sim_50r_p99_failure": p99_failure,
        "detection_ms": config.detection.as_secs_f64() * 1e3,
        "failures": outcomes,
    });
    if let Some(m) = &measured {
        m.merge_into(&mut json);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("remote_failover.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let detection_ms = config.detection.as_secs_f64() * 1e3;
    println!(
        "Every single-link failure of a {REGIONS}-region synthetic mesh ({} links), simulated: time from the cut until every gateway has both ends' new records and has recomputed its routes from them, against that failure's bound.\n",
        links.len()
    );
    println!("| failures | converge p50 ms | converge p99 ms | bound of the p99 failure ms | smallest bound ms | failures over their own bound | largest converge ÷ own bound | messages per failure (updates + acks) | route computations per failure | slowest computation ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {p50:.1} | {p99:.1} | {:.1} | {min_bound:.1} | {over_bound} | {worst_slack:.2} | {messages_per_change:.0} ({updates_per_change:.0} + {acks_per_change:.0}) | {computations:.1} | {compute_max:.2} |",
        outcomes.len(),
        p99_failure.bound_ms,
    );
    println!(
        "\nMethod: `dwcp_lab::flood_sim`, one process, simulated clock. One gateway per region (`SyntheticSpec::new({REGIONS}, 0)` with {NEAREST} nearest neighbours per region), each running the real `dwcp_control::link_state::Flooder` (origination with damping, flooding, acknowledgements, the database), the state owner's RFC 8405 back-off (`Debounce`, the updater's defaults: initial {} ms, short {} ms, long {} ms) and the routing engine's incremental table update on the topology with the database's view applied (minimum latency). Every datagram is encoded, carried for the link's one-way delay (half the great-circle RTT prior) plus {} ms of processing, and decoded; route computations advance the gateway's clock by the wall time they take here. At the cut both ends detect the link down after {detection_ms:.0} ms (the agent's defaults: 3 unanswered probes 10 ms apart, read by the monitor's next 10 ms poll) and announce it at once. A gateway has converged when both ends' records in its database say the link is down and its routes were computed from its current view (a record that changes nothing routing sees triggers no computation). Bound of a failure = detection + the largest, over every gateway and both ends, of the one-way delays along the shortest-delay path over the surviving links + {} ms per hop; the bound reported is the one of the failure whose converge time is the p99 (the same failure on both sides of the comparison), and every failure is also checked against its own. Messages per failure: datagrams sent from the cut until the network is quiet (two records, each over every link at most once each way, and their acknowledgements). Percentiles are nearest-rank. Per-failure figures are in `target/bench/remote_failover.json`.",
        config.delays.initial.as_millis(),
        config.delays.short.as_millis(),
        config.delays.long.as_millis(),
        config.processing.as_millis(),
        config.hop_allowance.as_millis(),
    );
    match &measured {
        Some(m) => m.report(),
        None => println!("\nLab (`trials`, `p50_ms`, `p99_ms`, `baseline_p50_ms`, `looped_packets`): not measured in this run (`--sim-only`)."),
    }
    Ok(())
}

/// The lab half: loss windows of a flow whose path crosses a remote cut, flooding on and off.
mod remote_lab {
    use std::{
        net::SocketAddr,
        path::PathBuf,
        time::{Duration, Instant},
    };

    use anyhow::{bail, Context, Result};
    use dwcp_agent::agent::{LinkHealth, LinkView, RouteView};
    use dwcp_agent::probe::monotonic_ns;
    use dwcp_control::config::{LinkStateSection, UpdaterSection};
    use dwcp_lab::lab::live::{self, Borrowed, LabPaths, LabState, UpOptions};
    use dwcp_lab::lab::loops::{self, LoopCount, LoopCounter};
    use dwcp_lab::lab::multi;
    use dwcp_lab::lab::stream::{delivery_gaps, PacedSender, StreamReceiver};

    use super::percentile;

    const LAB_REGIONS: usize = 6;
    const RATE_PPS: u32 = 10_000;
    const STREAM_PORT: u16 = 9000;
    const BEFORE_CUT: Duration = Duration::from_millis(300);
    /// Longer than any window with flooding; without it the flow may be lost until the heal.
    const CUT_FOR: Duration = Duration::from_millis(1_500);
    const WAIT: Duration = Duration::from_secs(120);
    /// Probes every 10 ms, a link dead after 3 unanswered (the agent's default; the
    /// interactive lab uses 10 for a machine busy with other work).
    const DETECT_MULTIPLIER: u32 = 3;
    /// Sender and receiver in `SCHED_FIFO` below the agents' probe threads (10).
    const TRAFFIC_RT_PRIORITY: i32 = 5;
    /// A trial whose sender paused longer than this around the cut is left out.
    const MAX_SENDER_PAUSE_NS: u64 = 2_000_000;

    /// A flow from `from` to `to` (region indices) whose only weighted path is `path`, and
    /// the link of it that is cut: its second, so `from` terminates neither end.
    #[derive(Clone, Debug, serde::Serialize)]
    struct Scenario {
        from: usize,
        to: usize,
        path: Vec<u32>,
        cut: u32,
        /// Links cut before the trial and healed after it: the transit gateway's others, so
        /// that only the source can route the flow around the cut (empty: none).
        isolate: Vec<u32>,
    }

    #[derive(Debug, Default)]
    struct ModeResult {
        windows_ms: Vec<f64>,
        /// Windows that ended only after the heal: the flow was lost for the whole cut.
        until_heal: usize,
        sender_stalled: usize,
        anomalies: Vec<String>,
        details: Vec<serde_json::Value>,
        looped: LoopCount,
    }

    pub struct Measured {
        scenarios: Vec<Scenario>,
        flooding: ModeResult,
        baseline: ModeResult,
        /// The same flows with the transit gateway's alternatives cut first.
        isolated: Vec<Scenario>,
        isolated_flooding: ModeResult,
        isolated_baseline: ModeResult,
        flapping: LoopCount,
        flapping_sent: u64,
        load: [String; 2],
    }

    fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|e| format!("unknown (/proc/loadavg: {e})"))
    }

    struct Down(LabPaths);

    impl Drop for Down {
        fn drop(&mut self) {
            let _ = live::down(&self.0);
        }
    }

    fn up(tag: &str, link_state: LinkStateSection) -> Result<(LabState, Down)> {
        let pid = std::process::id();
        let paths = LabPaths {
            prefix: format!("dwcp-{tag}{pid}"),
            state_dir: std::env::temp_dir().join(format!("dwcp-lab-{tag}-{pid}")),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/dwcp-lab-{tag}-{pid}")),
        };
        let down = Down(paths.clone());
        let mut opts = UpOptions::new(LAB_REGIONS, dwcp_lab::bin("dwcp-agent"));
        opts.timeout = WAIT;
        opts.detect_multiplier = DETECT_MULTIPLIER;
        opts.link_state = link_state;
        let state = live::up(&paths, &opts, &mut |m| eprintln!("{tag}: {m}"))?;
        Ok((state, down))
    }

    fn routes(state: &LabState, r: usize) -> Result<Vec<RouteView>> {
        Ok(live::api_get(&state.agents[r].socket, "/v1/routes")?)
    }

    /// The paths of `from`'s route to `to` that carry traffic (weight above zero).
    fn weighted(state: &LabState, from: usize, to: usize) -> Result<Vec<Vec<u32>>> {
        let dest = &state.agents[to].region;
        Ok(routes(state, from)?
            .iter()
            .filter(|r| &r.destination == dest)
            .flat_map(|r| &r.paths)
            .filter(|p| p.weight > 0 && p.live)
            .map(|p| p.links.clone())
            .collect())
    }

    /// One scenario per link that is the second of some flow's only weighted path.
    fn scenarios(state: &LabState) -> Result<Vec<Scenario>> {
        let mut found: Vec<Scenario> = Vec::new();
        for from in 0..LAB_REGIONS {
            for to in (0..LAB_REGIONS).filter(|&t| t != from) {
                if let [path] = &weighted(state, from, to)?[..] {
                    if path.len() >= 2 && !found.iter().any(|s| s.cut == path[1]) {
                        found.push(Scenario {
                            from,
                            to,
                            path: path.clone(),
                            cut: path[1],
                            isolate: Vec::new(),
                        });
                    }
                }
            }
        }
        if found.is_empty() {
            bail!("no flow of the lab has a single path of two links or more");
        }
        Ok(found)
    }

    /// The same flows, with the transit gateway's other links cut first: the gateway between
    /// the path's first two links is left with the cut link and the link back to the source.
    /// (A transit gateway follows the source route and never saves a flow by itself; before
    /// source routes it could, and this case showed what only the source's reroute does.)
    fn without_transit_alternative(state: &LabState, plain: &[Scenario]) -> Result<Vec<Scenario>> {
        let plan = state.plan()?;
        let ends = |id: u32| {
            plan.links
                .iter()
                .find(|l| l.id == id)
                .map(|l| [l.a, l.b])
                .context("a link of the plan")
        };
        plain
            .iter()
            .map(|sc| {
                let (first, second) = (ends(sc.path[0])?, ends(sc.path[1])?);
                let transit = *first
                    .iter()
                    .find(|r| second.contains(r))
                    .context("consecutive links share a region")?;
                let isolate = plan
                    .links
                    .iter()
                    .filter(|l| [l.a, l.b].contains(&transit) && !sc.path[..2].contains(&l.id))
                    .map(|l| l.id)
                    .collect();
                Ok(Scenario {
                    isolate,
                    ..sc.clone()
                })
            })
            .collect()
    }

    fn wait(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while !f().unwrap_or(false) {
            if Instant::now() > deadline {
                bail!("timed out after {WAIT:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Twice the updater's default holddown: after it, the next change is a first one again.
    fn quiet() -> Duration {
        Duration::from_millis(2 * UpdaterSection::default().holddown_ms)
    }

    /// Waits until both ends of `link` see it `health`.
    fn wait_link(state: &LabState, id: u32, health: LinkHealth) -> Result<()> {
        let plan = state.plan()?;
        let link = plan.link(&id.to_string()).context("a link of the plan")?;
        for end in [link.a, link.b] {
            wait(&format!("link {id} {health:?} at region {end}"), || {
                let links: Vec<LinkView> =
                    live::api_get(&state.agents[end as usize - 1].socket, "/v1/links")?;
                Ok(links.iter().any(|l| l.id == id && l.health == health))
            })?;
        }
        Ok(())
    }

    /// Waits until both ends of the cut link have it up and `sc`'s flow is on its path again.
    fn wait_restored(state: &LabState, sc: &Scenario) -> Result<()> {
        wait_link(state, sc.cut, LinkHealth::Up)?;
        wait(&format!("the flow of {sc:?} on its path"), || {
            Ok(weighted(state, sc.from, sc.to)? == [sc.path.clone()])
        })
    }

    fn trial(
        state: &LabState,
        sc: &Scenario,
        port: u16,
        label: &str,
        result: &mut ModeResult,
    ) -> Result<()> {
        for &id in &sc.isolate {
            multi::stable_set_cut(&state.paths.prefix, id, true)?;
            wait_link(state, id, LinkHealth::Down)?;
        }
        wait_restored(state, sc)?;
        if !sc.isolate.is_empty() {
            // The isolating cut was a change for every gateway's back-off (RFC 8405): a
            // second one within its holddown would wait the long delay. The cut under test
            // comes to a quiet network.
            std::thread::sleep(quiet());
        }
        let (src, dst) = (&state.agents[sc.from], &state.agents[sc.to]);
        let (s, d) = (
            Borrowed::new(&src.host_namespace),
            Borrowed::new(&dst.host_namespace),
        );
        let addr = SocketAddr::from((dst.host_ip, STREAM_PORT));
        let receiver = StreamReceiver::start(d.ns(), addr, Some(TRAFFIC_RT_PRIORITY))?;
        let sender = PacedSender::start(
            s.ns(),
            src.host_ip,
            &[port],
            addr,
            RATE_PPS,
            Some(TRAFFIC_RT_PRIORITY),
        )?;
        std::thread::sleep(BEFORE_CUT);
        // The drop rule takes effect somewhere within the nft command.
        let cut_from = monotonic_ns();
        multi::stable_set_cut(&state.paths.prefix, sc.cut, true)?;
        std::thread::sleep(CUT_FOR);
        let heal_from = monotonic_ns();
        multi::stable_set_cut(&state.paths.prefix, sc.cut, false)?;
        let restored = wait_restored(state, sc);
        std::thread::sleep(Duration::from_millis(200));
        let sent = sender.finish();
        let arrivals = receiver.finish(Duration::from_millis(200));
        restored?;
        for &id in &sc.isolate {
            multi::stable_set_cut(&state.paths.prefix, id, false)?;
            wait_link(state, id, LinkHealth::Up)?;
        }
        let gaps = delivery_gaps(&sent, &arrivals);
        // The gap of the cut: the first that starts at it (a datagram sent up to 2 ms before
        // the rule can still be in a wire) and before the heal.
        let failover = gaps
            .iter()
            .find(|g| g.start_ns + 2_000_000 >= cut_from && g.start_ns < heal_from)
            .copied();
        let rel_ms = |t: u64| (t as f64 - cut_from as f64) / 1e6;
        let mut detail = serde_json::json!({
            "trial": label,
            "scenario": sc,
            "sent": sent.tx_ns.values().map(Vec::len).sum::<usize>(),
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
                    eprintln!(
                        "{label}: window {w:.1} ms left out: the sender paused {:.1} ms",
                        pause as f64 / 1e6
                    );
                    result.sender_stalled += 1;
                } else {
                    eprintln!("{label}: link {} cut, loss window {w:.1} ms", sc.cut);
                    result.windows_ms.push(w);
                    if end >= heal_from {
                        result.until_heal += 1;
                    }
                }
            }
            None => result.anomalies.push(format!(
                "{label}: no loss window that ended at the cut of link {} ({} gaps)",
                sc.cut,
                gaps.len()
            )),
        }
        result.details.push(detail);
        Ok(())
    }

    fn trials(
        state: &LabState,
        scenarios: &[Scenario],
        n: usize,
        mode: &str,
        counter: &LoopCounter,
        first_port: u16,
    ) -> Result<ModeResult> {
        let mut result = ModeResult::default();
        // Until `n` windows are measured: trials whose sender stalled are left out. At most
        // twice as many trials as asked.
        for t in 0..2 * n {
            if result.windows_ms.len() >= n {
                break;
            }
            let sc = &scenarios[t % scenarios.len()];
            let label = format!("{mode} trial {}", t + 1);
            // A new flow (source port) per trial.
            trial(state, sc, first_port + t as u16, &label, &mut result)?;
            result.looped.add(&counter.take());
        }
        Ok(result)
    }

    pub fn run(n: usize) -> Result<Measured> {
        dwcp_lab::netlab::sweep_stale();
        let load_before = load_average();
        // Each trial starts from a converged lab: the hold of a link's recovery stays at its
        // first value however often the link is cut (damping has its own test).
        let defaults = LinkStateSection::default();
        let flooding_section = LinkStateSection {
            hold_max_ms: defaults.hold_initial_ms,
            ..defaults.clone()
        };
        const ISOLATED: &str = "no transit alternative";
        let (scenarios, isolated, flooding, isolated_flooding, flapping) = {
            let (state, _down) = up("rfo", flooding_section)?;
            let scenarios = scenarios(&state)?;
            let isolated = without_transit_alternative(&state, &scenarios)?;
            let counter = LoopCounter::start(&state)?;
            let flooding = trials(&state, &scenarios, n, "flooding", &counter, 30_000)?;
            let mode = format!("flooding, {ISOLATED}");
            let isolated_flooding = trials(&state, &isolated, n, &mode, &counter, 31_000)?;
            let flap = loops::flap_with_streams(&state, 1_000, 9100)?;
            std::thread::sleep(Duration::from_millis(200));
            (
                scenarios,
                isolated,
                flooding,
                isolated_flooding,
                (counter.take(), flap.sent),
            )
        };
        let baseline = {
            let (state, _down) = up(
                "rfb",
                LinkStateSection {
                    enabled: false,
                    ..defaults
                },
            )?;
            for sc in &scenarios {
                anyhow::ensure!(
                    weighted(&state, sc.from, sc.to)? == [sc.path.clone()],
                    "the baseline lab routes {sc:?} otherwise"
                );
            }
            let counter = LoopCounter::start(&state)?;
            let plain = trials(&state, &scenarios, n, "baseline", &counter, 30_000)?;
            let mode = format!("baseline, {ISOLATED}");
            (
                plain,
                trials(&state, &isolated, n, &mode, &counter, 31_000)?,
            )
        };
        let (baseline, isolated_baseline) = baseline;
        for (name, r) in [
            ("flooding", &flooding),
            ("baseline", &baseline),
            ("flooding, no transit alternative", &isolated_flooding),
            ("baseline, no transit alternative", &isolated_baseline),
        ] {
            if r.windows_ms.len() < 20 {
                bail!(
                    "{name}: only {} trials measured: {:?}",
                    r.windows_ms.len(),
                    r.anomalies
                );
            }
        }
        Ok(Measured {
            scenarios,
            flooding,
            baseline,
            isolated,
            isolated_flooding,
            isolated_baseline,
            flapping: flapping.0,
            flapping_sent: flapping.1,
            load: [load_before, load_average()],
        })
    }

    fn summary(v: &[f64]) -> (f64, f64, f64) {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        (
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            *s.last().expect("20 windows or more"),
        )
    }

    impl Measured {
        /// Looped sends in the flooding lab: its trials and the flapping phase.
        fn looped_packets(&self) -> u64 {
            self.flooding.looped.looped
                + self.isolated_flooding.looped.looped
                + self.flapping.looped
        }

        /// Every mode's trials.
        fn all(&self) -> impl Iterator<Item = &ModeResult> {
            [
                &self.flooding,
                &self.baseline,
                &self.isolated_flooding,
                &self.isolated_baseline,
            ]
            .into_iter()
        }

        pub fn merge_into(&self, json: &mut serde_json::Value) {
            let (p50, p99, max) = summary(&self.flooding.windows_ms);
            let (bp50, bp99, bmax) = summary(&self.baseline.windows_ms);
            let metrics = &mut json["metrics"];
            metrics["trials"] = self.flooding.windows_ms.len().into();
            metrics["p50_ms"] = p50.into();
            metrics["p99_ms"] = p99.into();
            metrics["max_ms"] = max.into();
            metrics["baseline_trials"] = self.baseline.windows_ms.len().into();
            metrics["baseline_p50_ms"] = bp50.into();
            metrics["baseline_p99_ms"] = bp99.into();
            metrics["baseline_max_ms"] = bmax.into();
            let (ip50, ip99, imax) = summary(&self.isolated_flooding.windows_ms);
            let (ibp50, ibp99, ibmax) = summary(&self.isolated_baseline.windows_ms);
            metrics["no_transit_alternative_trials"] =
                self.isolated_flooding.windows_ms.len().into();
            metrics["no_transit_alternative_p50_ms"] = ip50.into();
            metrics["no_transit_alternative_p99_ms"] = ip99.into();
            metrics["no_transit_alternative_max_ms"] = imax.into();
            metrics["no_transit_alternative_baseline_trials"] =
                self.isolated_baseline.windows_ms.len().into();
            metrics["no_transit_alternative_baseline_p50_ms"] = ibp50.into();
            metrics["no_transit_alternative_baseline_p99_ms"] = ibp99.into();
            metrics["no_transit_alternative_baseline_max_ms"] = ibmax.into();
            metrics["looped_packets"] = self.looped_packets().into();
            metrics["baseline_looped_packets"] =
                (self.baseline.looped.looped + self.isolated_baseline.looped.looped).into();
            metrics["capture_drops"] = self
                .all()
                .map(|r| r.looped.capture_drops)
                .sum::<u64>()
                .saturating_add(self.flapping.capture_drops)
                .into();
            let mode = |r: &ModeResult| {
                serde_json::json!({
                    "windows_ms": r.windows_ms,
                    "windows_until_heal": r.until_heal,
                    "left_out_sender_stalled": r.sender_stalled,
                    "anomalies": r.anomalies,
                    "loops": format!("{:?}", r.looped),
                    "trials": r.details,
                })
            };
            json["lab"] = serde_json::json!({
                "scenarios": self.scenarios,
                "no_transit_alternative_scenarios": self.isolated,
                "flooding": mode(&self.flooding),
                "baseline": mode(&self.baseline),
                "no_transit_alternative_flooding": mode(&self.isolated_flooding),
                "no_transit_alternative_baseline": mode(&self.isolated_baseline),
                "flapping_loops": format!("{:?}", self.flapping),
                "flapping_sent": self.flapping_sent,
                "load_average": { "before": self.load[0], "after": self.load[1] },
            });
        }

        pub fn report(&self) {
            let cut_ms = CUT_FOR.as_millis();
            println!("\nLab: loss window of a {RATE_PPS} datagrams/s UDP flow whose path crosses a link cut silently, as its second link (the flow's source gateway terminates neither end); {LAB_REGIONS}-region mesh of `cargo xtask lab` (ring with chords), a real `dwcp-agent` per gateway, probes every 10 ms, a link dead after {DETECT_MULTIPLIER} unanswered.\n");
            println!("| transit gateway's other links | records flooded | trials | left out | p50 ms | p99 ms | max ms | windows that lasted until the heal ({cut_ms} ms cut) | looped packets |");
            println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
            let rows = [
                ("up", "yes (`trials`, `p50_ms`, `p99_ms`)", &self.flooding),
                ("up", "no, baseline (`baseline_p50_ms`)", &self.baseline),
                (
                    "cut (`no_transit_alternative_*`)",
                    "yes",
                    &self.isolated_flooding,
                ),
                ("cut", "no, baseline", &self.isolated_baseline),
            ];
            for (transit, flooded, r) in rows {
                let (p50, p99, max) = summary(&r.windows_ms);
                println!(
                    "| {transit} | {flooded} | {} | {} | {p50:.1} | {p99:.1} | {max:.1} | {} | {} |",
                    r.windows_ms.len(),
                    r.sender_stalled,
                    r.until_heal,
                    r.looped.looped
                );
            }
            let trial_sends = self.flooding.looped.sends + self.isolated_flooding.looped.sends;
            println!(
                "\n- `looped_packets` = **{}**: sends of a datagram by a gateway that had sent it before, over the flooding lab's trials ({trial_sends} sends seen) and a flapping phase ({} datagrams in {LAB_REGIONS} streams, {} sends seen, {} of them repeated, {} datagrams looped). The capture's sockets dropped {} frames in all.",
                self.looped_packets(),
                self.flapping_sent,
                self.flapping.sends,
                self.flapping.looped,
                self.flapping.datagrams_looped,
                self.all().map(|r| r.looped.capture_drops).sum::<u64>() + self.flapping.capture_drops
            );
            let all: Vec<&String> = self.all().flat_map(|r| &r.anomalies).collect();
            if !all.is_empty() {
                println!("- Anomalies: {all:?}");
            }
            println!(
                "\nMethod: `dwcp_lab::lab::live` labs, {LAB_REGIONS} regions, the first with `[link_state]` defaults except `hold_max_ms = hold_initial_ms` (every trial starts from the same converged state; damping has its own test), the second with `[link_state] enabled = false`, one after the other in this run. Flows (source, destination, path): {:?} (region indices from 0, link ids): for each link, the first flow whose only weighted path has it as its second link; trials cycle through them, each with a new source port. A transit gateway follows the source's route and never picks one of its own (it drops what its exit cannot carry), so in both cases only the source's reroute, on the records, ends the loss. The second case (kept from before source routes, when a transit gateway could send the flow on by itself) cuts the transit gateway's other links first ({:?}, cut before each trial, {} ms before the flow starts so that every gateway's back-off is quiet again, and healed after it). A trial waits until the flow's path is in force, sends for {} ms, cuts the link in its wire namespace (nftables drop: no carrier change), heals it {cut_ms} ms later and waits until both ends have it up and the flow's path is in force again. Loss window = send time of the first datagram delivered after the gap minus send time of the first lost one (the sender's clock). A trial whose sender paused more than {} ms is left out. The sender and receiver run in `SCHED_FIFO` at priority {TRAFFIC_RT_PRIORITY}, the agents' probe threads at 10. Loops: `dwcp_lab::lab::loops` captures both ports of every wire (AF_PACKET; the gateways forward in XDP, before a socket of theirs could see a frame) and counts a datagram (flow, sequence number, send time, inside the VXLAN) sent by the same gateway twice. The flapping phase: a stream from each region to the one across the ring at 1,000 datagrams/s while each chord is cut with a ring link, overlapping. Percentiles nearest-rank (with fewer than 100 trials the p99 is the maximum). Load average (1/5/15 min) before: {}; after: {}. Per-trial gaps in `target/bench/remote_failover.json` (`lab`).",
                self.scenarios
                    .iter()
                    .map(|s| (s.from, s.to, s.path.clone()))
                    .collect::<Vec<_>>(),
                self.isolated
                    .iter()
                    .map(|s| s.isolate.clone())
                    .collect::<Vec<_>>(),
                quiet().as_millis(),
                BEFORE_CUT.as_millis(),
                MAX_SENDER_PAUSE_NS as f64 / 1e6,
                self.load[0],
                self.load[1]
            );
        }
    }
}
