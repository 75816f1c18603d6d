//! `dwcp-agent`: the gateway daemon. Loads `/etc/dwcp/agent.toml` (or `--config`), adopts or
//! attaches the XDP fast path, and keeps it programmed from the topology, the probes and the
//! kernel's interfaces and neighbours. `SIGHUP` reloads the configuration; `SIGTERM` stops the
//! daemon and leaves the fast path forwarding.
//!
//! ```text
//! dwcp-agent [--config /etc/dwcp/agent.toml] [--check] [--netns NAME] [--state-dir DIR]
//!            [--ebpf-object FILE] [--record FILE] [--events-file FILE] [--remove]
//! ```
// mimalloc: the state owner's updates allocate many small route and plan objects; with
// glibc's malloc they cost measurably more per event (see docs/BENCHMARKS.md, updater).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use dwcp_agent::agent::daemon::{Daemon, DaemonOptions};
use dwcp_control::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use dwcp_dataplane::{unpin_all, unpin_links};

#[derive(Parser)]
#[command(about = "dwcp gateway agent: keeps the XDP fast path programmed")]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Check the configuration and exit (0 if valid, 1 with the problems if not).
    #[arg(long)]
    check: bool,
    /// Run inside this network namespace (under /run/netns). Not `ip netns exec`: it remounts
    /// /sys and hides the bpffs the pins live in.
    #[arg(long)]
    netns: Option<String>,
    /// Load this eBPF object instead of the built-in one: an upgrade. Its programs replace the
    /// running ones through the pinned links (bpf_link_update), without a detach.
    #[arg(long)]
    ebpf_object: Option<PathBuf>,
    /// Append every input the agent receives, with its time, to this file (JSON lines).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Append every event (links, route changes with their reasons, reloads) to this file
    /// (JSON lines).
    #[arg(long)]
    events_file: Option<PathBuf>,
    /// Directory of the agent's own state (the reservation store); created (mode 0750) if
    /// missing, else the agent does not start.
    #[arg(long, default_value = dwcp_agent::agent::daemon::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Detach the programs and remove the pinned links and maps of this configuration's pin
    /// directory, then exit. Forwarding stops.
    #[arg(long)]
    remove: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if args.check {
        return match AgentConfig::load(&args.config) {
            Ok(c) => {
                println!(
                    "{}: valid (gateway {} in {}, {} local links, {} regions)",
                    args.config.display(),
                    c.gateway,
                    c.region,
                    c.local_links.len(),
                    c.topology_model.regions().len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
    }
    if let Some(ns) = &args.netns {
        // Before the runtime exists: this thread, and the runtime's threads it spawns, live in
        // `ns` (sockets, interface names, netlink).
        let path = PathBuf::from("/run/netns").join(ns);
        let file = std::fs::File::open(&path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        dwcp_tunnels::netns::enter(&file)
            .with_context(|| format!("entering network namespace {ns}"))?;
    }
    if args.remove {
        let config = AgentConfig::load(&args.config)?;
        unpin_links(&config.pin_dir)
            .with_context(|| format!("removing the links in {}", config.pin_dir.display()))?;
        // The prober's sent counters, if one ran.
        let sent = config.pin_dir.join(dwcp_agent::prober::PROBE_SENT);
        if sent.exists() {
            std::fs::remove_file(&sent).with_context(|| format!("removing {}", sent.display()))?;
        }
        unpin_all(&config.pin_dir)
            .with_context(|| format!("removing the maps in {}", config.pin_dir.display()))?;
        // The WireGuard links' policy rules (the devices belong to the tunnel manager).
        let handed_off = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(dwcp_agent::agent::handoff::remove_all(&config))
            .context("removing the WireGuard hand-off rules")?;
        if handed_off > 0 {
            println!("removed the hand-off rules of {handed_off} WireGuard link(s)");
        }
        println!(
            "removed the fast path pinned in {}",
            config.pin_dir.display()
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let daemon = Daemon::start(DaemonOptions {
            config_path: args.config.clone(),
            ebpf_object: args.ebpf_object.clone(),
            record: args.record.clone(),
            events_file: args.events_file.clone(),
            state_dir: args.state_dir.clone(),
        })
        .await
        .with_context(|| format!("starting with {}", args.config.display()))?;
        // The daemon serves the operator's view itself ([api], [metrics]) and stops it when
        // it exits.
        daemon.run(std::future::pending()).await?;
        Ok(())
    })
}
