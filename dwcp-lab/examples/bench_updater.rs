//! `cargo xtask bench updater`: how long a link event takes from entering the agent's state
//! owner to the fast path's maps being updated (routes recomputed, groups rebuilt, the
//! difference written), on the three-region configuration and on a 50-region topology with
//! 1,000 edge nodes. Real maps (unpinned, in a network namespace of this run). Baseline,
//! measured in the same run: one group-table swap of the previous mechanism (an inner map of
//! an array of maps replaced, which waits for an RCU grace period), the floor every update
//! paid before group tables were double-buffered.
use dwcp_common::{Counters, LinkState, Reason};
use dwcp_control::{
    fast_path::{FastPath, FastPathError},
    forwarding::{Change, ForwardingState},
};
use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context, Result};
use dwcp_control::config::Mac;
use dwcp_control::link_state::{record::Origin, ReportedLink};
use dwcp_control::topology::synthetic::generate;
use dwcp_control::topology::synthetic::SyntheticSpec;
use dwcp_control::topology::{LinkId, RoutingHealth};
use dwcp_control::AgentConfig;
use dwcp_control::AgentState;
use dwcp_control::Input;
use dwcp_control::Now;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Pinning;
use dwcp_dataplane::SLOT_REUSE_GUARD;
use dwcp_lab::map_in_map::MapInMap;
use dwcp_lab::netlab::Netns;

/// The daemon's allocator (see `bin/dwcp-agent.rs`): what is measured is what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per scenario (half down, half up), after `WARMUP` unmeasured ones.
const EVENTS: usize = 400;
/// Events of the one-write-per-group row.
const BASELINE_EVENTS: usize = 200;
/// Swaps of the map-in-map baseline (each waits for a grace period).
const MAP_IN_MAP_SWAPS: usize = 60;
const WARMUP: usize = 20;
const TOPOLOGY: &str = include_str!("../../tests/fixtures/three_regions.toml");

struct Scenario {
    name: &'static str,
    config: String,
    interfaces: Vec<String>,
    /// (link id, interface, peer underlay address) of every local link.
    links: Vec<(u32, String, std::net::Ipv4Addr)>,
    /// The link that flaps.
    flap: Flap,
}

/// What the measured events are.
#[derive(Clone, Copy)]
enum Flap {
    /// A link of this gateway, by its probes (`Input::LinkDown` / `LinkUp`).
    Local(u32),
    /// Another gateways' link, by their link-state records (`Input::LinkStateView`).
    Remote(u32),
}

fn three_regions() -> Scenario {
    let config = format!(
        r#"
[gateway]
name = "gw-use1-a"
region = "us-east-1"
lan_interfaces = ["lan0"]

[[local_link]]
link = "use1-euw1"
interface = "ul1"
local_ip = "172.31.1.1"
peer_ip = "172.31.1.2"
mtu = 1600

[[local_link]]
link = "use1-aps1"
interface = "ul3"
local_ip = "172.31.3.1"
peer_ip = "172.31.3.2"
mtu = 1600

[[prefixes]]
region = "eu-west-1"
prefixes = ["10.2.0.0/16"]

[[prefixes]]
region = "ap-south-1"
prefixes = ["10.3.0.0/16"]

[updater]
optimise_interval_s = 0

{TOPOLOGY}"#
    );
    Scenario {
        name: "3 regions (seed triangle)",
        config,
        interfaces: vec!["lan0".into(), "ul1".into(), "ul3".into()],
        links: vec![
            (1, "ul1".into(), [172, 31, 1, 2].into()),
            (3, "ul3".into(), [172, 31, 3, 2].into()),
        ],
        flap: Flap::Local(1),
    }
}

/// 50 regions, 1,000 edge nodes; this gateway in region-000 terminates every link of its
/// region; every other region has a /16.
fn fifty_regions() -> Result<Scenario> {
    let topo = generate(&SyntheticSpec::new(50, 1000));
    let text = toml::to_string(&topo).context("serialising the synthetic topology")?;
    let own = "region-000";
    let mut config = format!(
        "[gateway]\nname = \"gw-000\"\nregion = \"{own}\"\nlan_interfaces = [\"lan0\"]\n\n"
    );
    let mut links = Vec::new();
    for l in &topo.links {
        let l = l.get_ref();
        if l.a != own && l.b != own {
            continue;
        }
        let ifname = format!("ul{}", l.link_id);
        let subnet = (l.link_id % 250) as u8;
        let peer = std::net::Ipv4Addr::new(172, 30, subnet, 2);
        config += &format!(
            "[[local_link]]\nlink = \"{}\"\ninterface = \"{ifname}\"\nlocal_ip = \"172.30.{subnet}.1\"\npeer_ip = \"{peer}\"\nmtu = 1600\n\n",
            l.name
        );
        links.push((l.link_id, ifname, peer));
    }
    for (i, r) in topo.regions.iter().enumerate() {
        config += &format!(
            "[[prefixes]]\nregion = \"{}\"\nprefixes = [\"10.{i}.0.0/16\"]\n\n",
            r.get_ref().name
        );
    }
    config += "[updater]\noptimise_interval_s = 0\nhistory_len = 1000\n\n";
    config += &text;
    // The link whose loss moves the most routes: the first-hop link of the most primaries
    // is not known before routing, so flap the first one (a ring link, on many paths).
    let flap = Flap::Local(links.first().context("region-000 has links")?.0);
    let mut interfaces = vec!["lan0".to_string()];
    interfaces.extend(links.iter().map(|l| l.1.clone()));
    Ok(Scenario {
        name: "50 regions, 1,000 edge nodes (synthetic)",
        config,
        interfaces,
        links,
        flap,
    })
}

#[derive(Default)]
struct Samples {
    /// Event handed to the state owner -> last map write done, µs.
    event_to_map_us: Vec<f64>,
    /// Event handed to the state owner -> the owner free for the next one (after publishing
    /// the operator snapshot), µs.
    handled_us: Vec<f64>,
    /// Of which: route computation and planning, µs.
    compute_us: Vec<f64>,
    /// Of the computation: routing table update, µs.
    routing_us: Vec<f64>,
    /// Of the computation: plans after routing (paths, weights, members), µs.
    plans_us: Vec<f64>,
    /// Of the computation: group tables built, µs.
    groups_us: Vec<f64>,
    /// Of which: map writes, µs.
    program_us: Vec<f64>,
    writes: Vec<usize>,
    routes: usize,
    groups: usize,
    /// Route changes in the state's history at the end.
    history_len: usize,
    /// Measured events whose group writes waited for the slot guard.
    guard_waits: u64,
    /// One double-buffered group swap (slot write + flip), µs, median.
    swap_us: f64,
    /// One map-in-map group swap (the previous mechanism), µs, median.
    map_in_map_us: f64,
    /// CPU time the hypervisor took from this VM during the row (steal in /proc/stat), % of
    /// all CPU time: what stretches single events past the p50 on a shared host.
    steal_percent: f64,
}

/// (steal, total) CPU ticks of the whole machine so far.
/// An error rather than zeros when /proc/stat cannot be read: the steal is printed as measured.
fn cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let steal = *ticks
        .get(7)
        .context("/proc/stat: no steal field on the cpu line")?;
    Ok((steal, ticks.iter().sum()))
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// The 50-region scenario with a remote link flapping: one that leaves a neighbour of
/// region-000 over the link of its first local one (on the paths of many routes, two hops away).
fn fifty_regions_remote() -> Result<Scenario> {
    let mut sc = fifty_regions()?;
    let topo = generate(&SyntheticSpec::new(50, 1000));
    let own = "region-000";
    let Flap::Local(first) = sc.flap else {
        anyhow::bail!("the 50-region scenario flaps a local link");
    };
    let first = topo
        .links
        .iter()
        .map(|l| l.get_ref())
        .find(|l| l.link_id == first)
        .context("the first local link")?;
    let neighbour = if first.a == own { &first.b } else { &first.a };
    let remote = topo
        .links
        .iter()
        .map(|l| l.get_ref())
        .find(|l| (&l.a == neighbour || &l.b == neighbour) && l.a != own && l.b != own)
        .context("a link of the neighbour")?;
    sc.name = "50 regions, a remote link's records";
    sc.flap = Flap::Remote(remote.link_id);
    Ok(sc)
}

fn run(sc: &Scenario, batch: bool, events: usize) -> Result<Samples> {
    let config = AgentConfig::parse(&sc.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ns = Netns::new("bench-upd")?;
    for i in &sc.interfaces {
        let peer = format!("{i}-p");
        ns.ip(&["link", "add", i, "type", "veth", "peer", "name", &peer])?;
        ns.ip(&["link", "set", i, "up"])?;
        ns.ip(&["link", "set", &peer, "up"])?;
    }
    let mut start: Vec<Input> = Vec::new();
    let mut ifindex = BTreeMap::new();
    for i in &sc.interfaces {
        let idx = ns.ifindex(i)?;
        ifindex.insert(i.clone(), idx);
        start.push(Input::Interface {
            name: i.clone(),
            ifindex: idx,
            up: true,
            mac: Mac(ns.mac(i)?),
            mtu: Some(1500),
        });
    }
    for (link, ifname, peer) in &sc.links {
        start.push(Input::Neighbour {
            ifindex: ifindex[ifname],
            ip: *peer,
            mac: Some(Mac([2, 0, 0, 0, 0, *link as u8])),
        });
        start.push(Input::LinkUp { link: *link });
    }
    for l in &config.local_links {
        start.push(Input::Address {
            ifindex: ifindex[&l.interface],
            ip: l.local_ip.into(),
            present: true,
        });
    }
    let flap = sc.flap;
    ns.run_in(move || -> Result<Samples> {
        let dp = Dataplane::load(Pinning::None)?;
        let mut state = AgentState::new(config, BenchFastPath { dp, batch }, Now::at_ms(0))?;
        for i in start {
            // Setup: an input the state refuses means the scenario is wrong.
            let what = format!("{i:?}");
            state
                .handle(i, Now::at_ms(0))
                .map_err(|e| anyhow::anyhow!("setup input {what}: {e}"))?;
        }
        state.on_timer(Now::at_ms(0));
        let mut samples = Samples {
            routes: state.programmed().routes.len(),
            groups: state.programmed().groups.len(),
            ..Default::default()
        };
        // Each event arrives after a quiet period (2 s of replay time > the hold-down), so
        // the debounce computes at once: what is measured is the work, not a configured wait.
        // In real time the events are spaced by the slot guard (unmeasured): the debounce
        // spaces a daemon's updates far more (its `short` delay while events keep coming), so what a
        // back-to-back replay would add (waiting out the guard) is not what a daemon sees.
        // Any wait that still happens is counted and shown.
        let mut t_ms = 10_000;
        for i in 0..WARMUP + events {
            std::thread::sleep(SLOT_REUSE_GUARD);
            let waits = state.fast_path_mut().dp.slot_guard_stats().waits;
            let down = i % 2 == 0;
            let input = match flap {
                Flap::Local(link) if down => Input::LinkDown {
                    link,
                    reason: "bench".into(),
                },
                Flap::Local(link) => Input::LinkUp { link },
                Flap::Remote(link) => Input::LinkStateView {
                    links: vec![ReportedLink {
                        link: LinkId(link),
                        health: if down {
                            RoutingHealth::Down
                        } else {
                            RoutingHealth::Up
                        },
                        figures: Default::default(),
                        reported_by: vec![Origin::new("gw-remote").expect("a valid origin")],
                    }],
                },
            };
            let now = Now::at_ms(t_ms);
            let t0 = Instant::now();
            state
                .handle(input, now)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            state.on_timer(now);
            let handled = t0.elapsed();
            let done = state.programmed_at().context("programmed")?;
            let u = state.last_update().context("an update ran")?;
            anyhow::ensure!(u.at_ns == now.mono_ns, "the event did not compute at once");
            if i >= WARMUP {
                samples
                    .event_to_map_us
                    .push(done.duration_since(t0).as_secs_f64() * 1e6);
                samples.handled_us.push(handled.as_secs_f64() * 1e6);
                samples.compute_us.push(u.compute_ns as f64 / 1e3);
                samples.program_us.push(u.program_ns as f64 / 1e3);
                samples.routing_us.push(u.routing_ns as f64 / 1e3);
                samples.groups_us.push(u.groups_ns as f64 / 1e3);
                samples
                    .plans_us
                    .push(u.plans_ns.saturating_sub(u.routing_ns) as f64 / 1e3);
                samples.writes.push(u.changes);
                samples.guard_waits += state.fast_path_mut().dp.slot_guard_stats().waits - waits;
            }
            t_ms += 2_000;
        }
        // One double-buffered group swap on the same maps (slot write + flip), spaced by
        // the guard.
        let dp = &mut state.fast_path_mut().dp;
        let table = *dp.group_tables()?.first().context("a group")?;
        let (g, t) = table;
        let mut swaps = Vec::new();
        for _ in 0..100 {
            std::thread::sleep(SLOT_REUSE_GUARD);
            let t0 = Instant::now();
            dp.set_group_table(g, &t)?;
            swaps.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        samples.swap_us = pct(&swaps, 0.5);
        samples.history_len = state.history().count();
        // Baseline: the same table swapped in as an inner map of an array of maps (a fresh
        // inner map + one outer update), the previous mechanism.
        let mut mim = MapInMap::create(dwcp_common::MAX_GROUPS)?;
        let mut swaps = Vec::new();
        for _ in 0..MAP_IN_MAP_SWAPS {
            let t0 = Instant::now();
            mim.swap(g, &t)?;
            swaps.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        samples.map_in_map_us = pct(&swaps, 0.5);
        Ok(samples)
    })?
}

fn main() -> Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    let mut rows = Vec::new();
    // Each row's agent configuration, for the delays quoted below (the debounce's and the
    // counters' intervals this run used, not figures written once).
    let mut configs = Vec::new();
    for (sc, batch, events, label) in [
        (three_regions(), true, EVENTS, "3 regions (seed triangle)"),
        (
            fifty_regions()?,
            true,
            EVENTS,
            "50 regions, 1,000 edge nodes (synthetic)",
        ),
        (
            fifty_regions()?,
            false,
            BASELINE_EVENTS,
            "same, one write call per group",
        ),
        (
            fifty_regions_remote()?,
            true,
            EVENTS,
            "50 regions, a remote link's records (two hops away)",
        ),
    ] {
        configs.push(AgentConfig::parse(&sc.config).map_err(|e| anyhow::anyhow!("{e}"))?);
        let (steal0, total0) = cpu_ticks()?;
        let mut s = run(&sc, batch, events).with_context(|| sc.name)?;
        let (steal1, total1) = cpu_ticks()?;
        s.steal_percent = 100.0 * (steal1 - steal0) as f64 / (total1 - total0).max(1) as f64;
        rows.push((label, s));
    }
    println!("Event to map update of the state owner, {EVENTS} link events per row ({BASELINE_EVENTS} for the one-call-per-group row; link down and up in turn,");
    println!("each after a quiet period so the debounce computes at once; {WARMUP} warm-up events first), real maps in a");
    println!(
        "network namespace of this run, release build, load average at start {}.",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("Measured from handing the event to the state owner until its last map write returned: link");
    println!(
        "health into the topology, routes recomputed (incremental table: only the entries a worse link"
    );
    println!(
        "touched or a better link could pull), traffic-engineer weights, group tables rebuilt where members"
    );
    println!("changed, the difference against the programmed maps written. Group tables are double-buffered:");
    println!("the new table into the group's free slot, then its active index flipped (no RCU grace period);");
    println!(
        "all of an event's tables go in one batch update of the slots, then all flips in one more."
    );
    // The 50-region rows' configuration (the figures the text discusses).
    let delays = &configs[1].delays;
    let counters_interval = configs[1].counters_interval;
    println!("Events are spaced in real time by the slot guard ({} ms, unmeasured; with this run's configuration the daemon's", SLOT_REUSE_GUARD.as_millis());
    println!("debounce spaces updates by {} ms or more while events keep coming, {} ms once they have kept coming for {} ms);", delays.short.as_millis(), delays.long.as_millis(), delays.time_to_learn.as_millis());
    println!("guard waits inside measured events are counted. The daemon's channel");
    println!("hop and the snapshot published afterwards are not included.");
    println!("Baseline, same run and same maps' namespace: one group-table swap of the previous mechanism (a fresh");
    println!(
        "inner map put into an array of maps, which waits for an RCU grace period), median.\n"
    );
    println!("| topology | routes / groups | map writes per event (median) | compute p50 µs | program p50 µs | event→map p50 ms | event→map p99 ms | guard waits | one map-in-map swap ÷ event→map p50 | host steal during the row |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, s) in &rows {
        let mut w = s.writes.clone();
        w.sort();
        println!(
            "| {name} | {} / {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {} | {:.1} | {:.1} % |",
            s.routes,
            s.groups,
            w[w.len() / 2],
            pct(&s.compute_us, 0.5),
            pct(&s.program_us, 0.5),
            pct(&s.event_to_map_us, 0.5) / 1e3,
            pct(&s.event_to_map_us, 0.99) / 1e3,
            s.guard_waits,
            s.map_in_map_us / pct(&s.event_to_map_us, 0.5),
            s.steal_percent,
        );
    }
    let (_, big) = &rows[1];
    let (_, small) = &rows[0];
    let (_, one_by_one) = &rows[2];
    let (_, remote) = &rows[3];
    let remote_p99 = pct(&remote.event_to_map_us, 0.99) / 1e3;
    let p99 = pct(&big.event_to_map_us, 0.99) / 1e3;
    let speedup = pct(&one_by_one.event_to_map_us, 0.5) / pct(&big.event_to_map_us, 0.5);
    println!(
        "\nOne group swap, double-buffered, p50: {:.1} µs (3 regions), {:.1} µs (50 regions); map-in-map baseline: {:.0} µs / {:.0} µs ({:.0}x / {:.0}x).",
        small.swap_us,
        big.swap_us,
        small.map_in_map_us,
        big.map_in_map_us,
        small.map_in_map_us / small.swap_us,
        big.map_in_map_us / big.swap_us,
    );
    println!(
        "All groups written in one call vs one call per group: p50 {:.2}x (50 regions).",
        speedup
    );
    println!(
        "Target: p99 under 1 ms at 50 regions: **{:.3} ms** ({}). Of the 50-region p50, the map writes are {:.3} ms (p99 {:.3} ms);",
        p99,
        if p99 < 1.0 { "met" } else { "not met" },
        pct(&big.program_us, 0.5) / 1e3,
        pct(&big.program_us, 0.99) / 1e3,
    );
    println!(
        "the rest is the computation (compute p99 {:.3} ms), which is what the target now depends on.",
        pct(&big.compute_us, 0.99) / 1e3
    );
    println!(
        "With a remote link's records arriving instead (link-state view: the links-down bitmap written as the view is handled, then the computation): p99 **{:.3} ms** ({}).",
        remote_p99,
        if remote_p99 < 1.0 { "met" } else { "not met" },
    );
    println!(
        "The state owner is free for the next event once it has also read the counters (due at every event here, as the replay clock moves 2 s per event; the daemon reads them every {3} ms with this configuration) and published the operator snapshot (history of {2} route changes, shared, not copied): p50 {0:.3} ms, p99 {1:.3} ms at 50 regions. Neither delays a failover unless it exceeds the debounce: a second event's computation waits for it anyway ({4} ms while events keep coming, configured).",
        pct(&big.handled_us, 0.5) / 1e3,
        pct(&big.handled_us, 0.99) / 1e3,
        big.history_len,
        counters_interval.as_millis(),
        delays.short.as_millis(),
    );
    println!(
        "\n50 regions, by event (the flapped link is on most routes: down moves them off it, up brings them back):\n"
    );
    println!("| event | event→map p50 ms | event→map p99 ms | compute p50 µs | of which routing p50 µs | of which plans p50 µs | of which group tables p50 µs | program p50 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (kind, parity) in [("link down", 0), ("link up", 1)] {
        let pick = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == parity)
                .map(|(_, x)| *x)
                .collect()
        };
        println!(
            "| {kind} | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            pct(&pick(&big.event_to_map_us), 0.5) / 1e3,
            pct(&pick(&big.event_to_map_us), 0.99) / 1e3,
            pct(&pick(&big.compute_us), 0.5),
            pct(&pick(&big.routing_us), 0.5),
            pct(&pick(&big.plans_us), 0.5),
            pct(&pick(&big.groups_us), 0.5),
            pct(&pick(&big.program_us), 0.5),
        );
    }
    println!("\nThe agent (and this benchmark) allocate with mimalloc.");
    let json = format!(
        "{{\"metrics\": {{\"event_to_map_p50_ms\": {:.4}, \"event_to_map_p99_ms\": {:.4}, \"compute_p50_ms\": {:.4}, \"compute_p99_ms\": {:.4}, \"program_p50_ms\": {:.4}, \"program_p99_ms\": {:.4}, \"one_by_one_p50_ms\": {:.4}, \"batch_speedup_p50\": {:.2}, \"three_regions_event_to_map_p50_ms\": {:.4}, \"three_regions_event_to_map_p99_ms\": {:.4}, \"group_swap_p50_us\": {:.2}, \"map_in_map_swap_p50_us\": {:.1}, \"map_in_map_swap_per_event_to_map_p50\": {:.2}, \"event_to_map_p50_per_group_swap\": {:.2}, \"guard_waits\": {}, \"host_steal_percent\": {:.2}, \"remote_records_event_to_map_p50_ms\": {:.4}, \"remote_records_event_to_map_p99_ms\": {:.4}}}}}\n",
        pct(&big.event_to_map_us, 0.5) / 1e3,
        p99,
        pct(&big.compute_us, 0.5) / 1e3,
        pct(&big.compute_us, 0.99) / 1e3,
        pct(&big.program_us, 0.5) / 1e3,
        pct(&big.program_us, 0.99) / 1e3,
        pct(&one_by_one.event_to_map_us, 0.5) / 1e3,
        speedup,
        pct(&small.event_to_map_us, 0.5) / 1e3,
        pct(&small.event_to_map_us, 0.99) / 1e3,
        big.swap_us,
        big.map_in_map_us,
        big.map_in_map_us / pct(&big.event_to_map_us, 0.5),
        pct(&big.event_to_map_us, 0.5) / big.swap_us,
        big.guard_waits,
        big.steal_percent,
        pct(&remote.event_to_map_us, 0.5) / 1e3,
        remote_p99,
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("updater.json"), json)?;
    Ok(())
}

/// The real maps, with an event's group swaps written in two batch updates (the product's
/// way) or one call per change (`batch` false: the baseline row).
struct BenchFastPath {
    dp: Dataplane,
    batch: bool,
}

impl FastPath for BenchFastPath {
    fn read_programmed(&self) -> Result<ForwardingState, FastPathError> {
        self.dp.read_programmed()
    }
    fn apply(&mut self, change: &Change) -> Result<(), FastPathError> {
        self.dp.apply(change)
    }
    fn swap_groups(&mut self, run: &[Change]) -> Result<(), FastPathError> {
        if self.batch {
            self.dp.swap_groups(run)
        } else {
            run.iter().try_for_each(|c| self.dp.apply(c))
        }
    }
    fn link_state(&self, link: u32) -> Result<LinkState, FastPathError> {
        FastPath::link_state(&self.dp, link)
    }
    fn nexthop_counters(&self, nexthop: u32) -> Result<Counters, FastPathError> {
        FastPath::nexthop_counters(&self.dp, nexthop)
    }
    fn class_counters(&self, class: u8) -> Result<Counters, FastPathError> {
        FastPath::class_counters(&self.dp, class)
    }
    fn reason_count(&self, reason: Reason) -> Result<u64, FastPathError> {
        FastPath::reason_count(&self.dp, reason)
    }
}
