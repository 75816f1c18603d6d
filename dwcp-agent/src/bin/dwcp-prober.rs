//! `dwcp-prober`: sends the link probes of one gateway, independently of the agent, so the
//! fast path keeps failing over while the agent is stopped. Reads the links to probe from the
//! agent's pinned maps. Run it beside the agent (its own systemd unit).
//!
//! `dwcp-prober --config /etc/dwcp/agent.toml [--netns NAME]`, or without the agent's
//! configuration `dwcp-prober --pin-dir /sys/fs/bpf/dwcp [--interval-ms 10] ...`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use dwcp_agent::prober::{Prober, ProberConfig};
use dwcp_control::config::{AgentConfig, ProbeSenderMode};

#[derive(Parser)]
#[command(about = "Sends dwcp's link probes from the links in the agent's pinned maps")]
struct Args {
    /// The agent's configuration: the pin directory and the `[probe]` settings (interval,
    /// detection, backoff, rt_priority) are taken from it, and the flags below are ignored.
    /// Its `probe.sender` must be "external".
    #[arg(long, conflicts_with_all = ["pin_dir", "interval_ms", "detect_multiplier", "backoff_cap_ms", "rt_priority"])]
    config: Option<PathBuf>,
    /// The agent's pin directory.
    #[arg(long, default_value = dwcp_dataplane::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Network namespace (under /run/netns) to probe from, instead of the current one.
    #[arg(long)]
    netns: Option<String>,
    /// Probe interval.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// No reply for this many intervals makes a link dead (for the re-probe backoff; the
    /// fast path uses the detection time in LINK_CONFIG).
    #[arg(long, default_value_t = 3)]
    detect_multiplier: u32,
    /// Longest wait between re-probes of a dead link.
    #[arg(long, default_value_t = 1000)]
    backoff_cap_ms: u64,
    /// Run in the SCHED_FIFO real-time class at this priority (1-99) so probes leave on time
    /// on a busy host; 0 = normal scheduling.
    #[arg(long, default_value_t = 0)]
    rt_priority: i32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(ns) = &args.netns {
        // Before the runtime exists: this thread, and so every socket, lives in `ns`.
        // (Not `ip netns exec`: it remounts /sys and hides the bpffs under it.)
        let path = PathBuf::from("/run/netns").join(ns);
        let file = std::fs::File::open(&path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        dwcp_tunnels::netns::enter(&file)
            .with_context(|| format!("entering network namespace {ns}"))?;
    }
    let (config, rt_priority) = match &args.config {
        Some(path) => {
            let agent = AgentConfig::load(path)?;
            anyhow::ensure!(
                agent.probe_sender == ProbeSenderMode::External,
                "{}: probe.sender is not \"external\": the agent sends the probes itself",
                path.display()
            );
            let mut config = ProberConfig::new(&agent.pin_dir);
            config.sender = agent.sender;
            config.monitor = agent.monitor;
            (config, i32::from(agent.probe_rt_priority))
        }
        None => {
            let mut config = ProberConfig::new(&args.pin_dir);
            let interval = Duration::from_millis(args.interval_ms);
            config.sender.interval = interval;
            config.sender.backoff_cap = Duration::from_millis(args.backoff_cap_ms);
            config.monitor.interval = interval;
            config.monitor.detect_multiplier = args.detect_multiplier;
            config.monitor.poll_interval = interval;
            (config, args.rt_priority)
        }
    };
    if rt_priority > 0 {
        // The runtime is single-threaded: this thread sends every probe.
        dwcp_agent::prober::set_realtime_priority(rt_priority)
            .with_context(|| format!("SCHED_FIFO priority {rt_priority}"))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pin_dir = config.pin_dir.clone();
    rt.block_on(async {
        let prober = Prober::start(config)
            .with_context(|| format!("starting on the maps in {}", pin_dir.display()))?;
        tracing::info!(links = ?prober.links().keys().collect::<Vec<_>>(), "probing");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        prober
            .run(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await;
        tracing::info!("stopped");
        Ok(())
    })
}
