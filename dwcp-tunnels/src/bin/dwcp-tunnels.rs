//! `dwcp-tunnels`: create, check, rotate and remove dwcp's inter-region tunnels from a TOML
//! file of `[[tunnel]]` tables. Runs the same `TunnelManager` the agent uses.
//!
//! ```text
//! dwcp-tunnels reconcile /etc/dwcp/tunnels.toml
//! dwcp-tunnels list
//! dwcp-tunnels check wg-eu1 --json
//! dwcp-tunnels run /etc/dwcp/tunnels.toml        # keep them, rotate keys on a schedule
//! dwcp-tunnels rotate wg-eu1                     # now, with the peer's `run` daemon
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use dwcp_tunnels::{
    kernel_support,
    key_exchange::{self, KeyExchangeServer, ListenerLimits, RemotePeer},
    rotation::{due_for_rotation, rotate_key, LocalPeer, RotationPolicy, RotationReport},
    ManagerConfig, NetnsTarget, PresharedKey, TunnelHealth, TunnelManager, TunnelsFile,
    WireGuardImpl, SECRET_SAFE_LOG_DIRECTIVES,
};

#[derive(Parser)]
#[command(version, about = "dwcp tunnel management (VXLAN, WireGuard)")]
struct Cli {
    /// Network namespace to manage (`ip netns` name); default: this process's.
    #[arg(long, global = true)]
    netns: Option<String>,
    /// Where keys and the tunnel journal live.
    #[arg(long, global = true, default_value = "/var/lib/dwcp")]
    state_dir: PathBuf,
    /// WireGuard implementation: auto, kernel, or a path to wireguard-go.
    #[arg(long, global = true, default_value = "auto")]
    wireguard: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or fix every tunnel in FILE (removes nothing).
    Ensure { file: PathBuf },
    /// Make the tunnels exactly FILE's: ensure them, remove recorded tunnels not in it.
    Reconcile { file: PathBuf },
    /// Tear a tunnel down (device, rules, keys, state).
    Remove { name: String },
    /// Health of one tunnel.
    Check { name: String },
    /// Health of every tunnel.
    List,
    /// This end's WireGuard public key for tunnel NAME (generated on first use).
    Pubkey { name: String },
    /// Write a new preshared key to PATH (mode 0600).
    Genpsk { path: PathBuf },
    /// Which tunnel types the running kernel supports.
    Support,
    /// Rotate tunnel NAME's WireGuard key now: with the peer's `run` daemon (reached at its
    /// endpoint's address on the key-exchange port), or with a peer managed on this host
    /// (the lab: --peer-netns, --peer-state-dir, --peer-tunnel).
    Rotate {
        name: String,
        #[arg(long, requires_all = ["peer_state_dir", "peer_tunnel"])]
        peer_netns: Option<String>,
        #[arg(long)]
        peer_state_dir: Option<PathBuf>,
        #[arg(long)]
        peer_tunnel: Option<String>,
        #[arg(long, default_value_t = key_exchange::DEFAULT_PORT)]
        key_exchange_port: u16,
        #[arg(long, default_value_t = 12)]
        timeout_s: u64,
    },
    /// Keep FILE's tunnels (reconcile at start and on SIGHUP), answer the peers' key changes
    /// on the key-exchange port (TCP), and rotate this end's WireGuard keys once they are
    /// older than --rotate-after-s (checked every --check-interval-s, with jitter). SIGTERM or
    /// SIGINT stops the daemon and leaves the tunnels up.
    Run {
        file: PathBuf,
        /// The peers' port, and this end's (the same on every gateway).
        #[arg(long, default_value_t = key_exchange::DEFAULT_PORT)]
        key_exchange_port: u16,
        /// The address the key exchange listens on. The default, every IPv4 address of the
        /// namespace, includes the LAN side's: name the underlay address to keep it off.
        #[arg(long, value_name = "ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
        key_exchange_listen: IpAddr,
        /// Default 30 days.
        #[arg(long, default_value_t = 30 * 24 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
        rotate_after_s: u64,
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        check_interval_s: u64,
    },
}

fn wireguard_impl(s: &str) -> WireGuardImpl {
    match s {
        "auto" => WireGuardImpl::Auto,
        "kernel" => WireGuardImpl::Kernel,
        path => WireGuardImpl::Userspace {
            binary: PathBuf::from(path),
        },
    }
}

fn read_file(path: &PathBuf) -> Result<TunnelsFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    TunnelsFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn print_health(h: &TunnelHealth) {
    println!("tunnel: {} ({})", h.tunnel, h.kind);
    println!("  state: {:?}", h.state);
    if let (Some(i), Some(m)) = (h.ifindex, h.mtu) {
        println!("  ifindex: {i}  mtu: {m}");
    }
    if let Some(wg) = &h.wireguard {
        println!("  backend: {}", wg.backend);
        if let Some(k) = &wg.public_key {
            println!("  public key: {k}");
        }
        println!("  peer: {}", wg.peer_public_key);
        if let Some(e) = wg.endpoint {
            println!("    endpoint: {e}");
        }
        match wg.handshake_age_s {
            Some(age) => println!("    latest handshake: {age:.1} s ago"),
            None => println!("    latest handshake: never"),
        }
        println!(
            "    transfer: {} B received, {} B sent",
            wg.rx_bytes, wg.tx_bytes
        );
        if let Some(r) = wg.rotation {
            println!("    key rotation: {r:?}");
        }
    }
    for p in &h.problems {
        println!("  problem: {p}");
    }
}

async fn run(cli: Cli) -> Result<bool> {
    let netns = cli
        .netns
        .as_deref()
        .map(NetnsTarget::named)
        .unwrap_or_default();
    let config = ManagerConfig {
        netns,
        state_dir: cli.state_dir.clone(),
        wireguard: wireguard_impl(&cli.wireguard),
    };
    match &cli.command {
        Cmd::Genpsk { path } => {
            PresharedKey::generate().store(path)?;
            return Ok(true);
        }
        Cmd::Support => {
            let all = kernel_support::probe_all();
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for s in all {
                    let verdict = if s.supported {
                        "supported"
                    } else {
                        "NOT supported"
                    };
                    println!("{:<10} {verdict}: {}", s.kind.to_string(), s.detail);
                }
            }
            return Ok(true);
        }
        _ => {}
    }
    let mgr = TunnelManager::new(config).await?;
    match cli.command {
        Cmd::Ensure { file } => {
            let mut ok = true;
            for spec in read_file(&file)?.tunnels {
                match mgr.ensure(&spec).await {
                    Ok(o) if cli.json => println!("{}", serde_json::to_string(&o)?),
                    Ok(o) if o.unchanged() => println!("{}: unchanged", o.tunnel),
                    Ok(o) => println!("{}: {}", o.tunnel, o.changes.join("; ")),
                    Err(e) => {
                        eprintln!("error: {e}");
                        ok = false;
                    }
                }
            }
            Ok(ok)
        }
        Cmd::Reconcile { file } => reconcile(&mgr, &file).await,
        Cmd::Remove { name } => {
            if mgr.remove(&name).await? {
                println!("{name}: removed");
            } else {
                println!("{name}: nothing to remove");
            }
            Ok(true)
        }
        Cmd::Check { name } => {
            let h = mgr.check(&name).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                print_health(&h);
            }
            Ok(true)
        }
        Cmd::List => {
            let all = mgr.list().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for h in &all {
                    print_health(h);
                }
            }
            Ok(true)
        }
        Cmd::Pubkey { name } => {
            println!("{}", mgr.public_key(&name)?);
            Ok(true)
        }
        Cmd::Rotate {
            name,
            peer_netns,
            peer_state_dir,
            peer_tunnel,
            key_exchange_port,
            timeout_s,
        } => {
            let timeout = Duration::from_secs(timeout_s);
            let report = match (peer_netns, peer_state_dir, peer_tunnel) {
                (Some(netns), Some(state_dir), Some(tunnel)) => {
                    let peer = TunnelManager::new(ManagerConfig {
                        netns: NetnsTarget::named(&netns),
                        state_dir,
                        wireguard: wireguard_impl(&cli.wireguard),
                    })
                    .await?;
                    let peer = LocalPeer {
                        manager: &peer,
                        tunnel: &tunnel,
                    };
                    rotate_key(&mgr, &name, &peer, timeout).await?
                }
                _ => {
                    let peer = RemotePeer::for_tunnel(&mgr, &name, key_exchange_port)?;
                    rotate_key(&mgr, &name, &peer, timeout).await?
                }
            };
            print_rotation(&report, cli.json)?;
            Ok(true)
        }
        Cmd::Run {
            file,
            key_exchange_port,
            key_exchange_listen,
            rotate_after_s,
            check_interval_s,
        } => {
            let policy = RotationPolicy {
                max_key_age: Duration::from_secs(rotate_after_s),
                ..Default::default()
            };
            serve(
                mgr,
                &file,
                SocketAddr::new(key_exchange_listen, key_exchange_port),
                policy,
                Duration::from_secs(check_interval_s),
                cli.json,
            )
            .await
        }
        Cmd::Genpsk { .. } | Cmd::Support => bail!("handled above"),
    }
}

fn print_rotation(report: &RotationReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!(
            "{}: key rotated, new public key {} (handshake after {:?})",
            report.tunnel, report.new_public, report.handshake_after
        );
    }
    Ok(())
}

async fn reconcile(mgr: &TunnelManager, file: &PathBuf) -> Result<bool> {
    let specs = read_file(file)?.tunnels;
    let report = mgr.reconcile(&specs).await;
    for (name, r) in &report.ensured {
        match r {
            Ok(o) if o.unchanged() => println!("{name}: unchanged"),
            Ok(o) => println!("{name}: {}", o.changes.join("; ")),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    for (name, r) in &report.removed {
        match r {
            Ok(()) => println!("{name}: removed (not in {})", file.display()),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(report.errors().is_empty())
}

/// `run`: the tunnels of `file` kept, peers' key changes answered on `listen` (whose port is
/// the peers' too), keys rotated when due.
async fn serve(
    mgr: TunnelManager,
    file: &PathBuf,
    listen: SocketAddr,
    policy: RotationPolicy,
    check_every: Duration,
    json: bool,
) -> Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let mgr = std::sync::Arc::new(mgr);
    if !reconcile(&mgr, file).await? {
        eprintln!(
            "warning: some tunnels of {} failed; retried on SIGHUP",
            file.display()
        );
    }
    let server = KeyExchangeServer::new(mgr.clone(), ListenerLimits::default());
    let listener = server.bind(listen).await?;
    println!("answering key changes on TCP {listen}");
    let mut serving = tokio::spawn(server.clone().serve(listener));
    let mut refusals = Default::default();
    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
        signal(SignalKind::hangup())?,
    );
    loop {
        // Jitter (0.5 to 1.5 checks): two ends whose keys fall due together drift apart
        // instead of announcing at the same instant again and again.
        let wait = check_every.mul_f64(
            0.5 + (rand_core::RngCore::next_u32(&mut rand_core::OsRng) as f64 / u32::MAX as f64),
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = reconcile(&mgr, file).await {
                    eprintln!("error: {e:#}");
                }
                continue;
            }
            served = &mut serving => {
                bail!("the key-exchange listener stopped: {:?}", served);
            }
        }
        let now_refused = server.refusals();
        if now_refused != refusals {
            eprintln!(
                "key exchange: refused since start: {}",
                serde_json::to_string(&now_refused)?
            );
            refusals = now_refused;
        }
        let due = match due_for_rotation(&mgr, &policy, std::time::SystemTime::now()) {
            Ok(due) => due,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        for name in due {
            // The peer announced its own rotation of this tunnel: its turn first.
            // Unknown (unreadable state): rotated anyway, the peer refuses if it is rotating.
            let peer_rotating = server
                .peer_rotating(&name, policy.handshake_timeout * 2)
                .unwrap_or_else(|e| {
                    eprintln!("{name}: {e}");
                    false
                });
            if peer_rotating {
                continue;
            }
            let result = match RemotePeer::for_tunnel(&mgr, &name, listen.port()) {
                Ok(peer) => rotate_key(&mgr, &name, &peer, policy.handshake_timeout).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(report) => print_rotation(&report, json)?,
                Err(e) => eprintln!("{name}: key rotation failed, retried at the next check: {e}"),
            }
        }
    }
    serving.abort();
    println!("stopped; tunnels left up");
    Ok(true)
}

fn main() -> ExitCode {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    for directive in SECRET_SAFE_LOG_DIRECTIVES {
        filter = filter.add_directive(directive.parse().expect("valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
