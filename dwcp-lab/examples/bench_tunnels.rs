//! Tunnel benchmarks, in network namespaces (root):
//!
//! 1. **Setup time**: from both ends of a tunnel being requested (two `ensure` calls, one per
//!    gateway, at the same time) to the first datagram crossing it — device creation, keys,
//!    MTU, addresses, MSS rules, and for VXLAN the ARP exchange through the tunnel, for
//!    WireGuard the handshake. The baseline, measured in the same run, does the same with
//!    `ip` and `wg` commands (what an operator would script).
//! 2. **Hand-off into WireGuard** from a LAN host through gateway A: TCP throughput (iperf3)
//!    and RTT (ping) with a plain destination route (reference), with fwmark policy routing
//!    (the manager's hand-off) with the mark set by nftables, the same with the mark set by
//!    dwcp's fast path (LAN XDP program → `HANDOFF_FLOWS` → tc ingress program → `skb->mark`),
//!    and with a tc ingress redirect (`mirred`, what a tc `bpf_redirect` does).
//!
//! ```text
//! cargo xtask bench tunnels [--reps 15] [--rounds 3]
//! cargo run --release -p dwcp-agent --example bench_tunnels -- [--out FILE] [--reps 15] [--rounds 3]
//! ```
//!
//! Prints a Markdown report on stdout (recorded in docs/BENCHMARKS.md by xtask), progress on
//! stderr, and writes `target/bench/tunnels.json`.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dwcp_common::{
    maps::programs, GatewayConfig, NextHop, QosClass, Reason, Route, CONFIG_F_READY,
};
use dwcp_dataplane::AttachMode;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Member;
use dwcp_dataplane::Pinning;
use dwcp_lab::lab::PassProgram;
use dwcp_lab::netlab;
use dwcp_lab::netlab::Netns;
use dwcp_lab::netlab::UdpStream;
use dwcp_tunnels::rotation::rotate_key;
use dwcp_tunnels::rotation::LocalPeer;
use dwcp_tunnels::spec::Underlay;
use dwcp_tunnels::spec::VxlanSpec;
use dwcp_tunnels::spec::WireGuardPeerSpec;
use dwcp_tunnels::spec::WireGuardSpec;
use dwcp_tunnels::Handoff;
use dwcp_tunnels::ManagerConfig;
use dwcp_tunnels::NetnsTarget;
use dwcp_tunnels::PresharedKey;
use dwcp_tunnels::PublicKey;
use dwcp_tunnels::TunnelKind;
use dwcp_tunnels::TunnelManager;
use dwcp_tunnels::TunnelSpec;
use dwcp_tunnels::WireGuardImpl;
use serde_json::json;

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

struct Gateway {
    mgr: TunnelManager,
    state: tempfile::TempDir,
    ns: Netns,
}

impl Gateway {
    async fn new(ns: Netns) -> Result<Gateway> {
        let state = tempfile::tempdir()?;
        let mgr = TunnelManager::new(ManagerConfig {
            netns: NetnsTarget::named(ns.name()),
            state_dir: state.path().to_path_buf(),
            wireguard: WireGuardImpl::Auto,
        })
        .await?;
        Ok(Gateway { mgr, state, ns })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // wireguard-go daemons outlive their namespace: delete their devices first.
        if let Ok(out) = self.ns.ip(&["-o", "link", "show", "type", "tun"]) {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line
                    .split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n))
                {
                    // Teardown, best effort: a device that is already gone is what we want,
                    // and a panic in Drop would hide the benchmark's own error.
                    let _ = self.ns.ip(&["link", "del", name]);
                }
            }
        }
    }
}

/// Gateways A (192.0.2.1) and B (192.0.2.2) joined by a veth underlay, each with a manager.
async fn gateway_pair() -> Result<(Gateway, Gateway)> {
    let na = Netns::new("bench")?;
    let nb = Netns::new("bench")?;
    netlab::veth(&na, "ua", &nb, "ub")?;
    netlab::addr(&na, "ua", "192.0.2.1/30")?;
    netlab::addr(&nb, "ub", "192.0.2.2/30")?;
    Ok((Gateway::new(na).await?, Gateway::new(nb).await?))
}

/// One preshared key in a file in each gateway's state directory.
fn shared_psk(a: &Gateway, b: &Gateway) -> Result<(PathBuf, PathBuf)> {
    let psk = PresharedKey::generate();
    let (psk_a, psk_b) = (a.state.path().join("psk"), b.state.path().join("psk"));
    psk.store(&psk_a)?;
    psk.store(&psk_b)?;
    Ok((psk_a, psk_b))
}

/// Kills a process this benchmark started when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // Teardown, best effort: the process may have exited already (kill then fails), and
        // there is nothing left to report to from Drop.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vxlan(name: &str, local: Ipv4Addr, remote: Ipv4Addr, addr: &str) -> TunnelSpec {
    TunnelSpec {
        name: name.into(),
        addresses: vec![addr.parse().unwrap()],
        underlay: Underlay::default(),
        mss_clamp: true,
        kind: TunnelKind::Vxlan(VxlanSpec {
            vni: 100,
            local: local.into(),
            remote: remote.into(),
            port: 4789,
            ttl: None,
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn wireguard(
    name: &str,
    port: u16,
    peer: PublicKey,
    endpoint: SocketAddr,
    allowed: &[&str],
    addr: &str,
    psk: PathBuf,
) -> TunnelSpec {
    TunnelSpec {
        name: name.into(),
        addresses: vec![addr.parse().unwrap()],
        underlay: Underlay::default(),
        mss_clamp: true,
        kind: TunnelKind::WireGuard(WireGuardSpec {
            listen_port: port,
            peer: WireGuardPeerSpec {
                public_key: peer,
                endpoint: Some(endpoint),
                allowed_ips: allowed.iter().map(|s| s.parse().unwrap()).collect(),
                persistent_keepalive: Some(25),
                preshared_key_file: Some(psk),
            },
            handoff: None,
        }),
    }
}

/// What the two ends of tunnel `a_dev` – `b_dev` look like, for a setup that passed no
/// traffic: devices and their counters, A's neighbour entries on it, and for WireGuard the
/// peers' handshakes and transfer (`wg show`, answered by wireguard-go's UAPI socket).
fn tunnel_state(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> String {
    let show = |ns: &Netns, argv: &[&str]| match ns.exec(argv) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(e) => e.to_string(),
    };
    let mut out = String::new();
    for (side, ns, dev) in [("A", a, a_dev), ("B", b, b_dev)] {
        out += &format!(
            "\n{side} {dev}:\n{}\n{}",
            show(ns, &["ip", "-s", "-d", "link", "show", "dev", dev]),
            show(ns, &["ip", "neigh", "show", "dev", dev])
        );
        if dwcp_tunnels::wireguard::uapi::socket_path(dev).exists() {
            out += &format!("\n{}", show(ns, &["wg", "show", dev]));
        }
    }
    out
}

/// How long a setup may take to pass its first datagram. WireGuard retries a failed
/// handshake after 5 s (+ jitter): two ends whose initiations cross twice — what the `wg`
/// baseline does now and then — pass traffic after 10 s: a slow setup to be measured, not a
/// broken one, which 10 s here would have aborted the run for. 30 s covers five retries.
const FIRST_ARRIVAL_WAIT: Duration = Duration::from_secs(30);

/// Sends a datagram every 100 µs from `src` to `dst:port` until the receiver in `dst_ns`
/// gets one; returns when it arrived. If nothing arrives within [`FIRST_ARRIVAL_WAIT`] the
/// error says what the tunnel `devs` (A's device, B's) looked like then.
fn first_arrival(
    src: &Netns,
    dst_ns: &Netns,
    dst: Ipv4Addr,
    port: u16,
    devs: (&str, &str),
) -> Result<Instant> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx_file = File::open(dst_ns.path())?;
    let receiver = std::thread::spawn(move || -> Result<Instant> {
        netlab::enter(&rx_file)?;
        let s = UdpSocket::bind(("0.0.0.0", port))?;
        s.set_read_timeout(Some(FIRST_ARRIVAL_WAIT))?;
        ready_tx.send(()).ok();
        let mut buf = [0u8; 16];
        s.recv(&mut buf).with_context(|| {
            format!("no datagram crossed the tunnel within {FIRST_ARRIVAL_WAIT:?}")
        })?;
        Ok(Instant::now())
    });
    ready_rx.recv()?;
    let tx_file = File::open(src.path())?;
    let stop_tx = stop.clone();
    // Sends that fail while the tunnel comes up (no route or key yet) are part of what is
    // measured, so they do not stop the sender; they are counted and, if nothing arrives,
    // reported with the receiver's error.
    let sender = std::thread::spawn(move || -> Result<(u64, Option<std::io::Error>)> {
        netlab::enter(&tx_file)?;
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let (mut failed, mut last_error) = (0u64, None);
        while !stop_tx.load(Ordering::Relaxed) {
            if let Err(e) = s.send_to(b"first", (dst, port)) {
                failed += 1;
                last_error = Some(e);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok((failed, last_error))
    });
    let arrived = receiver.join().expect("receiver thread");
    // Looked at while the sender still sends: the state that passed nothing.
    let state = arrived
        .is_err()
        .then(|| tunnel_state(src, devs.0, dst_ns, devs.1));
    stop.store(true, Ordering::Relaxed);
    let (failed, last_error) = sender.join().expect("sender thread")?;
    arrived.with_context(|| {
        let sends = match last_error {
            Some(e) => format!("{failed} sends failed, the last with: {e}"),
            None => "every send succeeded".to_string(),
        };
        format!("{sends}; the tunnel then:{}", state.unwrap_or_default())
    })
}

fn run_all(ns: &Netns, cmds: &[Vec<String>]) -> Result<()> {
    for c in cmds {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        ns.exec(&args).with_context(|| c.join(" "))?;
    }
    Ok(())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({"median": pick(0.5), "p90": pick(0.9), "min": v[0], "max": v[v.len() - 1], "samples": v.len()})
}

fn median(v: &serde_json::Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

async fn setup_times(reps: usize) -> Result<serde_json::Value> {
    let (a, b) = gateway_pair().await?;
    let (psk_a, psk_b) = shared_psk(&a, &b)?;
    let pid = std::process::id();
    let (mut vx, mut vx_base, mut wg, mut wg_base) = (vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let port = 20000 + rep as u16 * 4;
        // dwcp, VXLAN.
        let (va, vb) = (format!("bva{pid}x{rep}"), format!("bvb{pid}x{rep}"));
        let (sa, sb) = (
            vxlan(&va, A_IP, B_IP, "10.250.0.1/30"),
            vxlan(&vb, B_IP, A_IP, "10.250.0.2/30"),
        );
        let t0 = Instant::now();
        let (ra, rb) = tokio::join!(a.mgr.ensure(&sa), b.mgr.ensure(&sb));
        ra?;
        rb?;
        let t = first_arrival(&a.ns, &b.ns, Ipv4Addr::new(10, 250, 0, 2), port, (&va, &vb))?;
        vx.push((t - t0).as_secs_f64() * 1e3);
        a.mgr.remove(&va).await?;
        b.mgr.remove(&vb).await?;

        // iproute2, VXLAN.
        let (va, vb) = (format!("iva{pid}x{rep}"), format!("ivb{pid}x{rep}"));
        let side = |name: &str, local: &str, remote: &str, addr: &str| {
            vec![
                s(&[
                    "ip",
                    "link",
                    "add",
                    name,
                    "mtu",
                    "1450",
                    "type",
                    "vxlan",
                    "id",
                    "100",
                    "local",
                    local,
                    "remote",
                    remote,
                    "dstport",
                    "4789",
                    "nolearning",
                ]),
                s(&["ip", "addr", "add", addr, "dev", name]),
                s(&["ip", "link", "set", name, "up"]),
            ]
        };
        let (ca, cb) = (
            side(&va, "192.0.2.1", "192.0.2.2", "10.250.0.1/30"),
            side(&vb, "192.0.2.2", "192.0.2.1", "10.250.0.2/30"),
        );
        let t0 = Instant::now();
        std::thread::scope(|sc| -> Result<()> {
            let ja = sc.spawn(|| run_all(&a.ns, &ca));
            let jb = sc.spawn(|| run_all(&b.ns, &cb));
            ja.join().expect("thread")?;
            jb.join().expect("thread")
        })?;
        let t = first_arrival(
            &a.ns,
            &b.ns,
            Ipv4Addr::new(10, 250, 0, 2),
            port + 1,
            (&va, &vb),
        )?;
        vx_base.push((t - t0).as_secs_f64() * 1e3);
        a.ns.ip(&["link", "del", &va])?;
        b.ns.ip(&["link", "del", &vb])?;

        // dwcp, WireGuard (keys made in advance: the peer's public key is configuration).
        let (wa, wb) = (format!("bwa{pid}x{rep}"), format!("bwb{pid}x{rep}"));
        let (ka, kb) = (a.mgr.public_key(&wa)?, b.mgr.public_key(&wb)?);
        let sa = wireguard(
            &wa,
            51820,
            kb,
            SocketAddr::from((B_IP, 51821)),
            &["10.251.0.2/32"],
            "10.251.0.1/30",
            psk_a.clone(),
        );
        let sb = wireguard(
            &wb,
            51821,
            ka,
            SocketAddr::from((A_IP, 51820)),
            &["10.251.0.1/32"],
            "10.251.0.2/30",
            psk_b.clone(),
        );
        let t0 = Instant::now();
        let (ra, rb) = tokio::join!(a.mgr.ensure(&sa), b.mgr.ensure(&sb));
        ra?;
        rb?;
        let t = first_arrival(
            &a.ns,
            &b.ns,
            Ipv4Addr::new(10, 251, 0, 2),
            port + 2,
            (&wa, &wb),
        )?;
        wg.push((t - t0).as_secs_f64() * 1e3);
        a.mgr.remove(&wa).await?;
        b.mgr.remove(&wb).await?;

        // wireguard-go + wg(8) + iproute2, WireGuard.
        let (wa, wb) = (format!("iwa{pid}x{rep}"), format!("iwb{pid}x{rep}"));
        let (key_a, key_b) = (
            a.state.path().join("base.key"),
            b.state.path().join("base.key"),
        );
        let (sk_a, sk_b) = (
            dwcp_tunnels::PrivateKey::generate(),
            dwcp_tunnels::PrivateKey::generate(),
        );
        sk_a.store(&key_a)?;
        sk_b.store(&key_b)?;
        let side = |name: &str,
                    key: &PathBuf,
                    port: &str,
                    peer: PublicKey,
                    psk: &PathBuf,
                    endpoint: &str,
                    allowed: &str,
                    addr: &str| {
            vec![
                s(&["wireguard-go", name]),
                s(&[
                    "wg",
                    "set",
                    name,
                    "private-key",
                    &key.to_string_lossy(),
                    "listen-port",
                    port,
                    "peer",
                    &peer.to_string(),
                    "preshared-key",
                    &psk.to_string_lossy(),
                    "endpoint",
                    endpoint,
                    "allowed-ips",
                    allowed,
                    "persistent-keepalive",
                    "25",
                ]),
                s(&["ip", "addr", "add", addr, "dev", name]),
                s(&["ip", "link", "set", name, "mtu", "1440", "up"]),
            ]
        };
        let ca = side(
            &wa,
            &key_a,
            "51820",
            sk_b.public_key(),
            &psk_a,
            "192.0.2.2:51821",
            "10.251.0.2/32",
            "10.251.0.1/30",
        );
        let cb = side(
            &wb,
            &key_b,
            "51821",
            sk_a.public_key(),
            &psk_b,
            "192.0.2.1:51820",
            "10.251.0.1/32",
            "10.251.0.2/30",
        );
        let t0 = Instant::now();
        std::thread::scope(|sc| -> Result<()> {
            let ja = sc.spawn(|| run_all(&a.ns, &ca));
            let jb = sc.spawn(|| run_all(&b.ns, &cb));
            ja.join().expect("thread")?;
            jb.join().expect("thread")
        })?;
        let t = first_arrival(
            &a.ns,
            &b.ns,
            Ipv4Addr::new(10, 251, 0, 2),
            port + 3,
            (&wa, &wb),
        )?;
        wg_base.push((t - t0).as_secs_f64() * 1e3);
        a.ns.ip(&["link", "del", &wa])?;
        b.ns.ip(&["link", "del", &wb])?;
        eprintln!(
            "rep {rep}: vxlan {:.1} ms (ip: {:.1}), wireguard {:.1} ms (wg: {:.1})",
            vx[rep], vx_base[rep], wg[rep], wg_base[rep]
        );
    }
    let (vx, vx_base, wg, wg_base) = (stats(vx), stats(vx_base), stats(wg), stats(wg_base));
    Ok(json!({
        "vxlan_setup_ms": median(&vx),
        "wireguard_setup_ms": median(&wg),
        "vxlan_setup_ms_dist": vx,
        "wireguard_setup_ms_dist": wg,
        "vxlan_baseline_ip_ms_dist": vx_base,
        "wireguard_baseline_wg_ms_dist": wg_base,
        "vxlan_ratio_to_baseline": median(&vx) / median(&vx_base),
        "wireguard_ratio_to_baseline": median(&wg) / median(&wg_base),
    }))
}

/// Datagrams lost across WireGuard key rotations, by stream rate: A rotates `rotations`
/// times under each rate while it streams to B.
async fn rotation_loss(rates: &[u64], rotations: usize) -> Result<serde_json::Value> {
    let (a, b) = gateway_pair().await?;
    let pid = std::process::id();
    let (wa, wb) = (format!("rwa{pid}"), format!("rwb{pid}"));
    let (psk_a, psk_b) = shared_psk(&a, &b)?;
    let (ka, kb) = (a.mgr.public_key(&wa)?, b.mgr.public_key(&wb)?);
    let sa = wireguard(
        &wa,
        51820,
        kb,
        SocketAddr::from((B_IP, 51821)),
        &["10.254.0.2/32"],
        "10.254.0.1/30",
        psk_a,
    );
    let sb = wireguard(
        &wb,
        51821,
        ka,
        SocketAddr::from((A_IP, 51820)),
        &["10.254.0.1/32"],
        "10.254.0.2/30",
        psk_b,
    );
    a.mgr.ensure(&sa).await?;
    b.mgr.ensure(&sb).await?;
    let peer = LocalPeer {
        manager: &b.mgr,
        tunnel: &wb,
    };
    let mut out = serde_json::Map::new();
    let mut port = 30000;
    for &per_ms in rates {
        // Baseline: the same streams without a rotation (what the tunnel loses anyway).
        let (mut base_sent, mut base_lost) = (0, 0);
        // Drops by the receiving socket itself (the receiver thread starved): harness, not
        // tunnel; counted in `lost` too.
        let mut socket_drops = 0;
        for _ in 0..rotations {
            port += 1;
            let stream =
                UdpStream::start(&a.ns, &b.ns, Ipv4Addr::new(10, 254, 0, 2), port, per_ms)?;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let r = stream.finish()?;
            socket_drops += r.socket_drops;
            base_sent += r.sent;
            base_lost += r.lost;
        }
        let (mut sent, mut lost, mut windows) = (0, 0, Vec::new());
        for _ in 0..rotations {
            port += 1;
            let stream =
                UdpStream::start(&a.ns, &b.ns, Ipv4Addr::new(10, 254, 0, 2), port, per_ms)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let report = rotate_key(&a.mgr, &wa, &peer, Duration::from_secs(12)).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = stream.finish()?;
            socket_drops += r.socket_drops;
            sent += r.sent;
            lost += r.lost;
            windows.push(report.handshake_after.as_secs_f64() * 1e3);
        }
        eprintln!("rotation at {per_ms}/ms: {sent} sent, {lost} lost (without rotation: {base_sent} sent, {base_lost} lost; receiving socket dropped {socket_drops})");
        out.insert(
            format!("rotation_{per_ms}_per_ms"),
            json!({"sent": sent, "lost": lost, "baseline_sent": base_sent, "baseline_lost": base_lost,
                   "receiver_socket_drops": socket_drops, "switch_to_handshake_ms": stats(windows)}),
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// iperf3 TCP throughput from H1 to H2 in Mbit/s.
fn iperf(h1: &Netns, seconds: u32) -> Result<f64> {
    let out = h1.exec(&["iperf3", "-c", "10.2.0.2", "-t", &seconds.to_string(), "-J"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .context("iperf3 printed no throughput")
}

/// Average ping RTT from H1 to H2 in ms.
fn rtt(h1: &Netns) -> Result<f64> {
    let out = h1.exec(&["ping", "-c", "50", "-i", "0.01", "-q", "10.2.0.2"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    // rtt min/avg/max/mdev = a/b/c/d ms
    let stats = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .context("ping summary")?;
    let nums = stats.split('=').nth(1).context("ping summary")?;
    Ok(nums.trim().split('/').nth(1).context("avg")?.parse()?)
}

/// Gateway A's fast path for the hand-off: 10.2.0.0/24 → a hand-off next hop with `mark`,
/// the LAN XDP program and the tc ingress program on `lan`. Dropping it detaches both.
fn fast_path_handoff(ns: &Netns, wg: &str, mark: u32) -> Result<(Dataplane, AttachMode)> {
    let wg_ifindex = ns.ifindex(wg)?;
    let (lan_ifindex, lan_mac) = (ns.ifindex("lan")?, ns.mac("lan")?);
    ns.run_in(move || -> Result<(Dataplane, AttachMode)> {
        let mut dp = Dataplane::load(Pinning::None)?;
        // The LAN program forwards only frames addressed to a LAN port's own MAC.
        dp.set_lan_port(
            lan_ifindex,
            dwcp_common::LanPort {
                mac: lan_mac,
                _pad: [0; 2],
            },
        )?;
        dp.set_config(GatewayConfig {
            hash_seed: 1,
            flags: CONFIG_F_READY,
            ..Default::default()
        })?;
        dp.set_nexthop(1, NextHop::handoff(1, wg_ifindex, mark))?;
        dp.set_group(
            1,
            &[Member {
                nexthop: 1,
                weight: 1,
                path: Default::default(),
            }],
        )?;
        dp.set_route(
            "10.2.0.0".parse()?,
            24,
            Route {
                group_id: 1,
                default_class: QosClass::BestEffort as u8,
                _pad: [0; 3],
            },
        )?;
        let (_, mode) = dp.attach(programs::LAN_INGRESS, "lan")?;
        dp.attach_tc(programs::LAN_HANDOFF_TC, "lan")?;
        Ok((dp, mode))
    })?
}

async fn handoff(rounds: usize, seconds: u32) -> Result<serde_json::Value> {
    let (a, b) = gateway_pair().await?;
    let h1 = Netns::new("bhost")?;
    let h2 = Netns::new("bhost")?;
    netlab::veth(&h1, "eth0", &a.ns, "lan")?;
    netlab::veth(&h2, "eth0", &b.ns, "lan")?;
    netlab::addr(&h1, "eth0", "10.1.0.2/24")?;
    netlab::addr(&a.ns, "lan", "10.1.0.1/24")?;
    netlab::addr(&h2, "eth0", "10.2.0.2/24")?;
    netlab::addr(&b.ns, "lan", "10.2.0.1/24")?;
    h1.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
    h2.ip(&["route", "add", "default", "via", "10.2.0.1"])?;
    for g in [&a.ns, &b.ns] {
        g.sysctl("net.ipv4.ip_forward", "1")?;
        g.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    }
    let pid = std::process::id();
    let (wa, wb) = (format!("hwa{pid}"), format!("hwb{pid}"));
    let (psk_a, psk_b) = shared_psk(&a, &b)?;
    let (ka, kb) = (a.mgr.public_key(&wa)?, b.mgr.public_key(&wb)?);
    let mut sa = wireguard(
        &wa,
        51820,
        kb,
        SocketAddr::from((B_IP, 51821)),
        &["10.254.0.2/32", "10.2.0.0/24"],
        "10.254.0.1/30",
        psk_a,
    );
    let sb = wireguard(
        &wb,
        51821,
        ka,
        SocketAddr::from((A_IP, 51820)),
        &["10.254.0.1/32", "10.1.0.0/24"],
        "10.254.0.2/30",
        psk_b,
    );
    if let TunnelKind::WireGuard(w) = &mut sa.kind {
        w.handoff = Some(Handoff {
            fwmark: 0x64,
            table: 100,
            priority: 1000,
        });
    }
    a.mgr.ensure(&sa).await?;
    b.mgr.ensure(&sb).await?;
    b.ns.ip(&["route", "add", "10.1.0.0/24", "dev", &wb])?;
    let mut server = Command::new("ip");
    server
        .args(["netns", "exec", h2.name(), "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Process(server.spawn().context("iperf3 -s")?);
    std::thread::sleep(Duration::from_millis(300));

    type Mode = (
        &'static str,
        &'static [&'static [&'static str]],
        &'static [&'static [&'static str]],
    );
    // (name, commands in A to switch the mode on, commands to switch it off)
    // "xdp_fwmark" has no commands: the fast path is loaded and attached in Rust (below).
    let modes: [Mode; 5] = [
        ("route", &[&["ip", "route", "add", "10.2.0.0/24", "dev", "WG"]], &[&["ip", "route", "del", "10.2.0.0/24", "dev", "WG"]]),
        (
            "fwmark",
            &[&["nft", "add table ip bench; add chain ip bench pre { type filter hook prerouting priority mangle; }; add rule ip bench pre iifname \"lan\" ip daddr 10.2.0.0/24 meta mark set 0x64"]],
            &[&["nft", "delete table ip bench"]],
        ),
        ("xdp_fwmark", &[], &[]),
        // Control for the row above: `XDP_PASS` only on A's LAN veth (native XDP on a veth
        // changes its receive path: NAPI, and the peer loses GSO), mark by nftables.
        (
            "xdp_pass_nft",
            &[&["nft", "add table ip bench; add chain ip bench pre { type filter hook prerouting priority mangle; }; add rule ip bench pre iifname \"lan\" ip daddr 10.2.0.0/24 meta mark set 0x64"]],
            &[&["nft", "delete table ip bench"]],
        ),
        (
            "tc_redirect",
            &[&["tc", "qdisc", "add", "dev", "lan", "clsact"], &["tc", "filter", "add", "dev", "lan", "ingress", "protocol", "ip", "u32", "match", "ip", "dst", "10.2.0.0/24", "action", "mirred", "egress", "redirect", "dev", "WG"]],
            &[&["tc", "qdisc", "del", "dev", "lan", "clsact"]],
        ),
    ];
    let subst =
        |cmd: &[&str]| -> Vec<String> { cmd.iter().map(|a| a.replace("WG", &wa)).collect() };
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); modes.len()];
    for round in 0..rounds {
        for (i, (name, on, off)) in modes.iter().enumerate() {
            run_all(&a.ns, &on.iter().map(|c| subst(c)).collect::<Vec<_>>())?;
            let fast = if *name == "xdp_fwmark" {
                Some(fast_path_handoff(&a.ns, &wa, 0x64)?)
            } else {
                None
            };
            let pass_only = if *name == "xdp_pass_nft" {
                let mut pass = PassProgram::load()?;
                let mode = a.ns.run_in(|| pass.attach("lan"))??;
                Some((pass, mode))
            } else {
                None
            };
            let r = rtt(&h1).with_context(|| format!("{name}: ping"))?;
            let mbps = iperf(&h1, seconds).with_context(|| format!("{name}: iperf3"))?;
            if let Some((dp, mode)) = fast {
                // Proof the fast path did the hand-off (not some leftover rule).
                let handed = dp.reason_count(Reason::HandoffWireGuard)?;
                let marked = dp.reason_count(Reason::HandoffMarked)?;
                if handed == 0 || marked != handed {
                    bail!("fast-path hand-off: {handed} handed off, {marked} marked");
                }
                eprintln!("  fast path ({mode:?} XDP): {handed} packets handed off and marked");
                drop(dp);
            }
            if let Some((pass, mode)) = pass_only {
                eprintln!("  XDP_PASS only ({mode:?} XDP)");
                drop(pass);
            }
            run_all(&a.ns, &off.iter().map(|c| subst(c)).collect::<Vec<_>>())?;
            eprintln!("round {round} {name}: {mbps:.0} Mbit/s, rtt {r:.3} ms");
            results[i].0.push(mbps);
            results[i].1.push(r);
        }
    }
    let mut out = serde_json::Map::new();
    let route_mbps = stats(results[0].0.clone());
    for (i, (name, _, _)) in modes.iter().enumerate() {
        let mbps = stats(results[i].0.clone());
        out.insert(format!("handoff_{name}_mbit_s"), mbps.clone());
        out.insert(
            format!("handoff_{name}_rtt_ms"),
            stats(results[i].1.clone()),
        );
        out.insert(
            format!("handoff_{name}_throughput_ratio_to_route"),
            json!(median(&mbps) / median(&route_mbps)),
        );
    }
    if b.ns.ip(&["link", "show", &wb]).is_err() {
        bail!("tunnel vanished during the benchmark");
    }
    Ok(serde_json::Value::Object(out))
}

/// Datagrams per millisecond of the rotation-loss streams.
const ROTATION_RATES: [u64; 4] = [1, 5, 20, 50];

fn markdown(m: &serde_json::Map<String, serde_json::Value>, reps: usize, rounds: usize) -> String {
    let f = |k: &str, q: &str| m[k][q].as_f64().unwrap_or(f64::NAN);
    let r = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    let mut out = format!(
        "Two gateways in network namespaces joined by a veth underlay (MTU 1500), {reps} repetitions. \
         Both ends are requested at once (two `TunnelManager::ensure` calls running concurrently, one \
         per gateway); the time runs until the first UDP datagram (sent every 100 µs from A) arrives \
         at B through the tunnel, so it includes device creation, keys, MTU, addresses, MSS rules \
         and the ARP exchange (VXLAN) or the handshake (WireGuard). Baseline, same run: the same \
         steps as `ip` / `wireguard-go` + `wg` commands.\n\n"
    );
    out += "| tunnel | median ms | p90 ms | max ms | baseline median ms | × baseline |\n|---|---:|---:|---:|---:|---:|\n";
    for (label, key, base) in [
        (
            "VXLAN (kernel device)",
            "vxlan_setup_ms_dist",
            "vxlan_baseline_ip_ms_dist",
        ),
        (
            "WireGuard (wireguard-go)",
            "wireguard_setup_ms_dist",
            "wireguard_baseline_wg_ms_dist",
        ),
    ] {
        out += &format!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            f(key, "median"),
            f(key, "p90"),
            f(key, "max"),
            f(base, "median"),
            f(key, "median") / f(base, "median")
        );
    }
    let verdict = |v: f64| if v < 100.0 { "met" } else { "not met" };
    out += &format!(
        "\nTarget < 100 ms (the seed claims < 5 s): VXLAN {:.1} ms ({}), WireGuard {:.1} ms ({}), medians.\n\n",
        r("vxlan_setup_ms"),
        verdict(r("vxlan_setup_ms")),
        r("wireguard_setup_ms"),
        verdict(r("wireguard_setup_ms"))
    );
    out += &format!(
        "Hand-off from the LAN into WireGuard through gateway A (host H1 → A → wireguard-go → B → \
         host H2): iperf3 TCP for 3 s and 50 pings, {rounds} interleaved rounds, medians. fwmark \
         policy routing twice: the mark set by an nftables rule, and set by dwcp's fast path (the \
         LAN XDP program finds the hand-off next hop, records the flow's mark in `HANDOFF_FLOWS` \
         and passes the packet; the tc ingress program looks the flow up and sets `skb->mark`). The tc redirect \
         uses `mirred`, what a tc `bpf_redirect` does.\n\n"
    );
    out += "| hand-off | TCP Mbit/s | × route | RTT ms |\n|---|---:|---:|---:|\n";
    for (label, k) in [
        ("destination route (reference)", "route"),
        ("fwmark policy routing, mark by nftables", "fwmark"),
        (
            "fwmark policy routing, mark by the fast path (XDP flow map + tc)",
            "xdp_fwmark",
        ),
        (
            "control: XDP_PASS program on the LAN veth, mark by nftables",
            "xdp_pass_nft",
        ),
        ("tc ingress redirect", "tc_redirect"),
    ] {
        out += &format!(
            "| {label} | {:.0} | {:.2} | {:.3} |\n",
            f(&format!("handoff_{k}_mbit_s"), "median"),
            r(&format!("handoff_{k}_throughput_ratio_to_route")),
            f(&format!("handoff_{k}_rtt_ms"), "median")
        );
    }
    out += "\nWireGuard key rotation (A rotates 5 times per rate while streaming 64-byte UDP \
            datagrams to B; B learns the new key in-process). The sender sleeps 1 ms between \
            bursts, so the real rate is somewhat below the nominal one; the window is from A's \
            switch to A seeing the new handshake.\n\n";
    out += "| nominal rate | sent | lost | same streams without rotation: sent / lost | receiving socket dropped (both) | window median ms | window max ms |\n|---:|---:|---:|---:|---:|---:|---:|\n";
    for per_ms in ROTATION_RATES {
        let k = format!("rotation_{per_ms}_per_ms");
        out += &format!(
            "| {} /s | {} | {} | {} / {} | {} | {:.1} | {:.1} |\n",
            per_ms * 1000,
            m[&k]["sent"],
            m[&k]["lost"],
            m[&k]["baseline_sent"],
            m[&k]["baseline_lost"],
            m[&k]["receiver_socket_drops"],
            m[&k]["switch_to_handshake_ms"]["median"]
                .as_f64()
                .unwrap_or(f64::NAN),
            m[&k]["switch_to_handshake_ms"]["max"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let default_out =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/tunnels.json");
    let out = arg("--out").map(PathBuf::from).unwrap_or(default_out);
    let reps: usize = arg("--reps").map(|r| r.parse()).transpose()?.unwrap_or(15);
    let rounds: usize = arg("--rounds").map(|r| r.parse()).transpose()?.unwrap_or(3);
    netlab::sweep_stale();

    let setup = setup_times(reps).await?;
    let handoff = handoff(rounds, 3).await?;
    let rotation = rotation_loss(&ROTATION_RATES, 5).await?;
    let mut metrics = setup.as_object().cloned().unwrap_or_default();
    metrics.extend(handoff.as_object().cloned().unwrap_or_default());
    metrics.extend(rotation.as_object().cloned().unwrap_or_default());
    let report = json!({
        "metrics": metrics,
        "seed_claim_ms": 5000,
        "target_ms": 100,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    print!("{}", markdown(&metrics, reps, rounds));
    eprintln!("written to {}", out.display());
    Ok(())
}
