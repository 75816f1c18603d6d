//! The multi-region lab (what `cargo xtask lab` runs; see `dwcp_lab::lab::live`).
//!
//! ```text
//! lab up [--regions N]        # 3 (default): us-east-1, eu-west-1, ap-south-1; up to 10
//!        [--tunnels wireguard [--rotate-after-s S]]  # WireGuard links (made, keyed and
//!                             # rotated by dwcp-tunnels)
//!        [--store etcd]       # a three-member etcd cluster: the topology pushed once,
//!                             # membership and reservations in the store
//! lab status                  # each agent's links, routes, tunnels and last route changes (the `dwcp` CLI), counters
//! lab fail us-east-1 eu-west-1
//! lab heal us-east-1 eu-west-1
//! lab traffic [A B]           # UDP streams between hosts; every pair of regions by default
//! lab down                    # removes every namespace, process and pin; idempotent
//! ```

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use dwcp_common::{QosClass, Reason};
use dwcp_control::topology::TunnelKind;
use dwcp_lab::lab::live;
use dwcp_lab::lab::live::LabPaths;
use dwcp_lab::lab::live::LabState;
use dwcp_lab::lab::live::LabStore;
use dwcp_lab::lab::live::UpOptions;
use dwcp_lab::lab::triangle::PinnedCounters;

#[derive(Parser)]
#[command(
    name = "lab",
    about = "The dwcp multi-region lab in network namespaces"
)]
struct Cli {
    /// Directory recording the running lab (configurations, logs, API sockets).
    #[arg(long, env = "DWCP_LAB_DIR", default_value = live::DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,
    /// The `dwcp-agent` binary (default: beside this program's target directory).
    #[arg(long, env = "DWCP_AGENT_BIN", global = true)]
    agent_binary: Option<PathBuf>,
    /// The `dwcp` CLI binary.
    #[arg(long, env = "DWCP_BIN", global = true)]
    dwcp_binary: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab and start one dwcp-agent per region's gateway.
    Up {
        /// 3 is the seed's triangle (us-east-1, eu-west-1, ap-south-1); 4 to 10 a ring with
        /// chords (each region 3 or 4 links).
        #[arg(long, default_value_t = 3)]
        regions: usize,
        /// Probe intervals (10 ms) without a reply before a link is declared dead.
        #[arg(long, default_value_t = 10)]
        detect_multiplier: u32,
        /// `vxlan` (the fast path encapsulates) or `wireguard` (a tunnel per link, made by
        /// `dwcp-tunnels` with keys it generates, exchanges and rotates; probed inside).
        #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "wireguard"])]
        tunnels: String,
        /// The `dwcp-tunnels` binary (WireGuard links).
        #[arg(long, env = "DWCP_TUNNELS_BIN")]
        tunnels_binary: Option<PathBuf>,
        /// WireGuard links: rotate every key once older than this many seconds (default: the
        /// daemon's 30 days).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rotate_after_s: Option<u64>,
        /// `file` (each gateway's file holds the whole topology) or `etcd` (a three-member
        /// etcd cluster in the lab's namespaces, data on tmpfs; each gateway's file holds only
        /// its own part, the topology is pushed once with `dwcp topology push`).
        #[arg(long, default_value = "file", value_parser = ["file", "etcd"])]
        store: String,
    },
    /// Each agent's links, routes, tunnels and last route changes, the cut links, and the fast
    /// path's counters.
    Status,
    /// Cut the link between two regions (or a link by name or id) and wait for the reroute.
    Fail {
        a: String,
        b: Option<String>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Heal a cut link and wait until the agents use it again.
    Heal {
        a: String,
        b: Option<String>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Send UDP streams between hosts and report what arrived.
    Traffic {
        /// From this region to `to`; every ordered pair of regions if absent.
        from: Option<String>,
        to: Option<String>,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Datagrams per millisecond per stream.
        #[arg(long, default_value_t = 1)]
        per_ms: u64,
    },
    /// Stop the agents, remove the namespaces, pins and state. Safe to run at any time.
    Down,
}

fn paths(cli: &Cli) -> LabPaths {
    let d = LabPaths::default();
    LabPaths {
        state_dir: cli.state_dir.clone(),
        ..d
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("lab: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let paths = paths(&cli);
    match &cli.cmd {
        Cmd::Up {
            regions,
            detect_multiplier,
            tunnels,
            tunnels_binary,
            rotate_after_s,
            store,
        } => {
            let agent = cli
                .agent_binary
                .clone()
                .unwrap_or_else(|| dwcp_lab::bin("dwcp-agent"));
            if !agent.exists() {
                bail!(
                    "no dwcp-agent at {} (build it, or pass --agent-binary)",
                    agent.display()
                );
            }
            let mut opts = UpOptions::new(*regions, agent);
            opts.detect_multiplier = *detect_multiplier;
            if let Some(dwcp) = &cli.dwcp_binary {
                opts.dwcp_binary = dwcp.clone();
            }
            if store == "etcd" {
                opts.store = LabStore::Etcd;
            }
            if tunnels == "wireguard" {
                opts.tunnels = TunnelKind::Wireguard;
                opts.tunnels_binary = tunnels_binary
                    .clone()
                    .unwrap_or_else(|| dwcp_lab::bin("dwcp-tunnels"));
                opts.rotate_after = rotate_after_s.map(Duration::from_secs);
            } else if rotate_after_s.is_some() {
                bail!("--rotate-after-s is for WireGuard links (--tunnels wireguard)");
            }
            let state = live::up(&paths, &opts, &mut |m| println!("lab: {m}"))?;
            println!(
                "lab: up: {} regions, {} agents, {} links, store {store} (state in {})",
                state.regions,
                state.agents.len(),
                tunnels,
                paths.state_dir.display()
            );
            if state.store == LabStore::Etcd {
                println!(
                    "lab: the topology in the store is {} (dwcp topology diff/push FILE on \
                     any gateway changes it)",
                    paths.state_dir.join(live::TOPOLOGY_FILE).display()
                );
            }
            if !state.latency_emulated {
                println!(
                    "lab: this kernel has no netem: link latencies are the topology's figures, \
                     the veths themselves add none"
                );
            }
            print_regions(&state)?;
        }
        Cmd::Status => status(&cli, &live::require(&paths)?)?,
        Cmd::Fail { a, b, timeout } => {
            let state = live::require(&paths)?;
            let link = live::find_link(&state, a, b.as_deref())?;
            println!("lab: cutting link {} ({}) in its wire", link.id, link.name);
            live::fail(&state, &link, Duration::from_secs(*timeout))?;
            println!("lab: both ends saw it down and route around it:");
            routes_of_ends(&cli, &state, &link)?;
            wireguard_transit_warning(&state, &link)?;
            println!("lab: and every other agent has it down, as the ends' records say:");
            link_at_others(&cli, &state, &link)?;
        }
        Cmd::Heal { a, b, timeout } => {
            let state = live::require(&paths)?;
            let link = live::find_link(&state, a, b.as_deref())?;
            println!("lab: healing link {} ({})", link.id, link.name);
            live::heal(&state, &link, Duration::from_secs(*timeout))?;
            println!("lab: both ends use it again:");
            routes_of_ends(&cli, &state, &link)?;
        }
        Cmd::Traffic {
            from,
            to,
            seconds,
            per_ms,
        } => {
            let state = live::require(&paths)?;
            let pairs = match (from, to) {
                (Some(f), Some(t)) => {
                    let idx = |k: &str| -> Result<usize> {
                        let a = state.agent(k)?;
                        Ok(state.agents.iter().position(|x| x == a).expect("listed"))
                    };
                    vec![(idx(f)?, idx(t)?)]
                }
                (None, None) => live::all_pairs(state.regions),
                _ => bail!("give both regions (FROM TO) or none"),
            };
            if !(0.1..=600.0).contains(seconds) {
                bail!("--seconds must be within 0.1 and 600, not {seconds}");
            }
            println!(
                "lab: {} stream(s) of ~{} datagrams/s for {seconds} s each",
                pairs.len(),
                per_ms * 1000
            );
            let reports =
                live::traffic(&state, &pairs, Duration::from_secs_f64(*seconds), *per_ms)?;
            println!(
                "{:<14} {:<14} {:>8} {:>10} {:>6} {:>7}",
                "FROM", "TO", "SENT", "DELIVERED", "LOST", "LOSS"
            );
            for r in &reports {
                println!(
                    "{:<14} {:<14} {:>8} {:>10} {:>6} {:>6.2}%",
                    r.from,
                    r.to,
                    r.sent,
                    r.delivered(),
                    r.lost,
                    100.0 * r.lost as f64 / r.sent.max(1) as f64
                );
            }
            if reports.iter().any(|r| r.delivered() == 0) {
                bail!("some pair delivered nothing");
            }
        }
        Cmd::Down => {
            let report = live::down(&paths)?;
            if report.is_empty() {
                println!("lab: nothing to remove");
            } else {
                println!(
                    "lab: down: stopped {} agent(s), {} tunnel process(es) and {} etcd \
                     member(s), removed {} namespace(s){}{}{}",
                    report.agents_stopped.len(),
                    report.tunnel_processes_stopped.len(),
                    report.etcd_stopped.len(),
                    report.namespaces.len(),
                    if report.etcd_removed.is_empty() {
                        String::new()
                    } else {
                        format!(", the etcd cluster's {}", report.etcd_removed.join(", "))
                    },
                    if report.pins_removed {
                        ", the pins"
                    } else {
                        ""
                    },
                    if report.state_removed {
                        ", the state directory"
                    } else {
                        ""
                    }
                );
            }
            let left = live::leftovers(&paths);
            if !left.is_empty() {
                bail!("still there: {}", left.join(", "));
            }
        }
    }
    Ok(())
}

fn print_regions(state: &LabState) -> Result<()> {
    let plan = state.plan()?;
    println!(
        "{:<12} {:<10} {:<16} {:<12} {:>7}  API socket",
        "REGION", "GATEWAY", "NAMESPACE", "HOST", "PID"
    );
    for a in &state.agents {
        println!(
            "{:<12} {:<10} {:<16} {:<12} {:>7}  {}",
            a.region,
            a.gateway,
            a.namespace,
            a.host_ip,
            a.pid,
            a.socket.display()
        );
    }
    println!("links:");
    for l in &plan.links {
        println!(
            "  {:>2} {:<10} {} -- {}{}",
            l.id,
            l.name,
            plan.regions[l.a as usize - 1].name,
            plan.regions[l.b as usize - 1].name,
            l.latency_ms
                .map(|ms| format!(" ({ms} ms)"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn dwcp(cli: &Cli, socket: &std::path::Path, args: &[&str]) -> Result<String> {
    let bin = cli
        .dwcp_binary
        .clone()
        .unwrap_or_else(|| dwcp_lab::bin("dwcp"));
    let out = Command::new(&bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        return Ok(format!(
            "(dwcp {} failed: {})\n",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn routes_of_ends(
    cli: &Cli,
    state: &LabState,
    link: &dwcp_lab::lab::multi::PlannedLink,
) -> Result<()> {
    for (me, peer) in [(link.a, link.b), (link.b, link.a)] {
        let a = &state.agents[me as usize - 1];
        let peer = &state.agents[peer as usize - 1].region;
        println!("-- {} (dwcp show routes {peer}):", a.region);
        print!("{}", dwcp(cli, &a.socket, &["show", "routes", peer])?);
    }
    Ok(())
}

/// In a WireGuard lab a middle gateway forwards transit with its kernel's routes into its
/// direct tunnel only (the fast path does not carry transit over WireGuard yet): says so when
/// an end's new path has more than one middle gateway, which then carries nothing.
fn wireguard_transit_warning(
    state: &LabState,
    link: &dwcp_lab::lab::multi::PlannedLink,
) -> Result<()> {
    if state.tunnels != TunnelKind::Wireguard {
        return Ok(());
    }
    for (me, peer) in [(link.a, link.b), (link.b, link.a)] {
        let a = &state.agents[me as usize - 1];
        let peer = &state.agents[peer as usize - 1].region;
        let routes: Vec<dwcp_agent::agent::RouteView> = live::api_get(&a.socket, "/v1/routes")?;
        let hops = routes
            .iter()
            .find(|r| &r.destination == peer)
            .and_then(live::primary)
            .map_or(0, |p| p.links.len());
        if hops > 2 {
            println!(
                "lab: warning: {} reaches {peer} over {hops} WireGuard links; a middle gateway                  forwards only into its direct tunnel, so this path carries nothing (fast-path                  transit over WireGuard is not built yet)",
                a.region
            );
        }
    }
    Ok(())
}

/// `link` as the agents that do not terminate it see it.
fn link_at_others(
    cli: &Cli,
    state: &LabState,
    link: &dwcp_lab::lab::multi::PlannedLink,
) -> Result<()> {
    let id = link.id.to_string();
    for (i, a) in state.agents.iter().enumerate() {
        if ![link.a, link.b].contains(&(i as u8 + 1)) {
            println!("-- {} (dwcp show links {id}):", a.region);
            print!("{}", dwcp(cli, &a.socket, &["show", "links", &id])?);
        }
    }
    Ok(())
}

/// A gateway's fast-path counters: packets per local link, bytes per QoS class, non-zero
/// reasons.
struct Sample {
    links: Vec<(u32, u64)>,
    classes: Vec<(&'static str, u64)>,
    reasons: Vec<(&'static str, u64)>,
}

fn sample(plan: &dwcp_lab::lab::multi::LabPlan, a: &live::AgentRecord) -> Result<Sample> {
    let c = PinnedCounters::open(&a.pin_dir)?;
    let me = plan
        .region(&a.region)
        .map(|r| r.n)
        .context("the agent's region")?;
    Ok(Sample {
        links: plan
            .links
            .iter()
            .filter(|l| l.a == me || l.b == me)
            .map(|l| (l.id, c.nexthop_packets(l.id)))
            .collect(),
        classes: QosClass::ALL
            .iter()
            .map(|q| (q.name(), c.class_counters(*q as u8).1))
            .collect(),
        reasons: Reason::ALL
            .iter()
            .map(|r| (r.name(), c.reason(*r)))
            .filter(|(_, n)| *n > 0)
            .collect(),
    })
}

fn status(cli: &Cli, state: &LabState) -> Result<()> {
    print_regions(state)?;
    if state.store == LabStore::Etcd {
        let socket = &state.agents[0].socket;
        println!(
            "cluster store: etcd\n$ dwcp --socket {} show gateways",
            socket.display()
        );
        print!("{}", dwcp(cli, socket, &["show", "gateways"])?);
    }
    let cut = live::cut_links(state)?;
    println!(
        "cut links: {}",
        if cut.is_empty() {
            "none".to_string()
        } else {
            format!("{cut:?}")
        }
    );
    // Counters twice, a second apart, for the rates.
    let plan = state.plan()?;
    let first: Vec<Result<Sample>> = state.agents.iter().map(|a| sample(&plan, a)).collect();
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let samples: Vec<Result<(Sample, Sample)>> = first
        .into_iter()
        .zip(&state.agents)
        .map(|(f, a)| Ok((f?, sample(&plan, a)?)))
        .collect();
    let elapsed = started.elapsed();
    for (i, a) in state.agents.iter().enumerate() {
        println!("\n===== {} ({}) =====", a.region, a.gateway);
        for what in [
            &["status"][..],
            &["show", "links"],
            &["show", "routes"],
            &["show", "tunnels"],
            // Why the routes are what they are: a remote cut shows as "reported by".
            &["show", "history", "--limit", "3"],
        ] {
            println!("$ dwcp --socket {} {}", a.socket.display(), what.join(" "));
            print!("{}", dwcp(cli, &a.socket, what)?);
        }
        match &samples[i] {
            Ok((before, after)) => {
                let secs = elapsed.as_secs_f64();
                let mut line = String::from("fast path, rates over the last second:");
                for ((id, p0), (_, p1)) in before.links.iter().zip(&after.links) {
                    line += &format!(" link {id} {:.0} pkt/s;", (p1 - p0) as f64 / secs);
                }
                for ((name, b0), (_, b1)) in before.classes.iter().zip(&after.classes) {
                    if b1 > b0 {
                        line += &format!(" {name} {:.0} bit/s;", (b1 - b0) as f64 * 8.0 / secs);
                    }
                }
                println!("{}", line.trim_end_matches(';'));
                let mut totals = String::from("fast path, counters:");
                for (r, n) in &after.reasons {
                    totals += &format!(" {r}={n}");
                }
                println!("{totals}");
            }
            Err(e) => println!("counters: {e}"),
        }
    }
    Ok(())
}
