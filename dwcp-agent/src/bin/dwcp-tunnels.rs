//! `dwcp-tunnels`: create, check, rotate and remove dwcp's inter-region tunnels from a TOML
//! file of `[[tunnel]]` tables. Runs the same `TunnelManager` the agent uses.
//!
//! ```text
//! dwcp-tunnels reconcile /etc/dwcp/tunnels.toml
//! dwcp-tunnels list
//! dwcp-tunnels check wg-eu1 --json
//! ```

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use dwcp_agent::tunnels::{
    kernel_support,
    rotation::{rotate_key, LocalPeer},
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
    /// Rotate tunnel NAME's WireGuard key with a peer managed on this host (the lab).
    Rotate {
        name: String,
        #[arg(long)]
        peer_netns: String,
        #[arg(long)]
        peer_state_dir: PathBuf,
        #[arg(long)]
        peer_tunnel: String,
        #[arg(long, default_value_t = 12)]
        timeout_s: u64,
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
        Cmd::Reconcile { file } => {
            let specs = read_file(&file)?.tunnels;
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
            timeout_s,
        } => {
            let peer = TunnelManager::new(ManagerConfig {
                netns: NetnsTarget::named(&peer_netns),
                state_dir: peer_state_dir,
                wireguard: wireguard_impl(&cli.wireguard),
            })
            .await?;
            let peer = LocalPeer {
                manager: &peer,
                tunnel: &peer_tunnel,
            };
            let report = rotate_key(&mgr, &name, &peer, Duration::from_secs(timeout_s)).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{name}: key rotated, new public key {} (handshake after {:?})",
                    report.new_public, report.handshake_after
                );
            }
            Ok(true)
        }
        Cmd::Genpsk { .. } | Cmd::Support => bail!("handled above"),
    }
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
