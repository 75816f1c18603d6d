//! The failover lab: two regions joined by several underlay links, each through a "wire"
//! namespace in the middle where the link can be cut or made lossy without either gateway
//! seeing its interface go down (a silent failure, the kind probes exist for):
//!
//! ```text
//! host A -- gw A =ul1= [wire 1: bridge] =ul1= gw B -- host B
//!                =ul2= [wire 2: bridge] =ul2=
//! ```
//!
//! Link `i` carries next hop `i` with VNI `100 + i` in both directions; the route to the other
//! region is one group of all next hops, every link monitored (`LINK_CONFIG` from the lab's
//! [`MonitorConfig`]). Maps and XDP attachments are pinned under a bpffs directory of the lab,
//! so the agent's objects can be dropped ([`MultiLinkLab::stop_agents`]) while the programs keep
//! forwarding, and loaded again ([`MultiLinkLab::restart_agents`]).
//!
//! [`MultiLinkLab::build_wireguard`] makes every link a WireGuard tunnel instead (wireguard-go
//! or kernel WireGuard, `wg<i>` over `ul<i>`, tunnel addresses 10.254.i.1 and .2): next hop `i` hands off to it with
//! mark `HANDOFF_FWMARK_BASE + i` (the tunnel manager's policy routing, unreachable default
//! included), and the link is probed inside the tunnel (the WireGuard device's tc program).
//! A cut wire then drops only ciphertext.

use dwcp_dataplane::{LinkStateMap, PinnedMaps};
use std::{
    fs::File,
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use dwcp_common::{
    flow_hash, maps::programs, probe::PROBE_PORT, FlowKey, LinkState, NextHopTable,
    MAX_GROUP_MEMBERS, NHG_BUCKETS,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    pass::attach_pinned, program_paths, region, GatewayPath, LabError, Lan, PassProgram, Region,
    Result, LAB_SEED, UNDERLAY_MTU,
};
use crate::fail_closed::{stop_wireguard_go, wireguard};
use crate::netlab;
use crate::netlab::NetlabError;
use crate::netlab::Netns;
use dwcp_agent::probe::kernel_usable;
use dwcp_agent::probe::LinkEvent;
use dwcp_agent::probe::LinkMonitor;
use dwcp_agent::probe::MonitorConfig;
use dwcp_agent::probe::ProbeHandle;
use dwcp_agent::prober::set_realtime_priority;
use dwcp_agent::prober::PinnedProbeCounts;
use dwcp_agent::prober::Prober;
use dwcp_agent::prober::ProberConfig;
use dwcp_control::config::{HANDOFF_FWMARK_BASE, HANDOFF_RULE_PRIORITY, HANDOFF_TABLE_BASE};
use dwcp_dataplane::AttachMode;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Pinning;
use dwcp_tunnels::{Handoff, ManagerConfig, NetnsTarget, TunnelManager, WireGuardImpl};

/// The group of the route to the other region.
pub const MULTI_LAB_GROUP: u32 = 1;
/// Link `i` carries VNI `MULTI_LAB_VNI_BASE + i`.
pub const MULTI_LAB_VNI_BASE: u32 = 100;

/// nftables table in each wire namespace; its forward chain holds the fault of the moment.
const WIRE_TABLE: &str = "dwcp_wire";

static NEXT_PIN_ROOT: AtomicU32 = AtomicU32::new(0);

/// One of the two gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn dir(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// What the wire of a link does to the frames crossing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkCut {
    /// Everything crosses.
    Clear,
    /// Nothing crosses, in either direction.
    Cut,
    /// This percentage of probe packets from gateway A's side is dropped at random (so about
    /// that share of each gateway's probes is lost: A's requests, B's replies). Data crosses.
    DropProbes { percent: u32 },
}

/// One underlay link: `ul<id>` on both gateways, a bridge in the wire namespace between them.
pub struct UnderlayLink {
    pub id: u32,
    pub vni: u32,
    pub ifname: String,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
    pub wire: Netns,
}

impl UnderlayLink {
    pub fn ip(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::A => self.a_ip,
            Side::B => self.b_ip,
        }
    }

    /// Applies `cut` in the wire namespace, replacing the previous fault.
    pub fn set(&self, cut: LinkCut) -> Result<()> {
        let nft = |args: &[&str]| -> Result<()> {
            let mut argv = vec!["nft"];
            argv.extend_from_slice(args);
            self.wire.exec(&argv)?;
            Ok(())
        };
        nft(&["flush", "chain", "bridge", WIRE_TABLE, "forward"])?;
        match cut {
            LinkCut::Clear => Ok(()),
            LinkCut::Cut => nft(&["add", "rule", "bridge", WIRE_TABLE, "forward", "drop"]),
            LinkCut::DropProbes { percent } => nft(&[
                "add",
                "rule",
                "bridge",
                WIRE_TABLE,
                "forward",
                "iifname",
                "to-a",
                "udp",
                "dport",
                &PROBE_PORT.to_string(),
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                &percent.to_string(),
                "drop",
            ]),
        }
    }

    pub fn cut(&self) -> Result<()> {
        self.set(LinkCut::Cut)
    }

    pub fn heal(&self) -> Result<()> {
        self.set(LinkCut::Clear)
    }
}

/// A bpffs directory of the lab (`/sys/fs/bpf/dwcp-<tag>-<pid>-<n>`), removed with everything
/// pinned in it on drop: the maps are freed and the pinned XDP attachments detached.
struct PinRoot(PathBuf);

impl PinRoot {
    fn new(tag: &str) -> Result<PinRoot> {
        let n = NEXT_PIN_ROOT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/dwcp-{tag}-{}-{n}", std::process::id()));
        for sub in ["a", "b"] {
            std::fs::create_dir_all(path.join(sub)).map_err(|e| LabError::Pin {
                path: path.join(sub),
                detail: e.to_string(),
            })?;
        }
        Ok(PinRoot(path))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The prober run on a thread of its own inside a gateway's namespace, as `dwcp-prober` runs
/// in a process of its own. Stopped on drop.
pub struct ProberThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    handle: ProbeHandle,
    cpu_clock: libc::clockid_t,
}

impl ProberThread {
    /// Starts a prober in `ns` on the maps pinned under `config.pin_dir`, in the `SCHED_FIFO`
    /// class at `rt_priority` if given.
    pub fn spawn(
        ns: &Netns,
        config: ProberConfig,
        rt_priority: Option<i32>,
    ) -> Result<ProberThread> {
        let file = File::open(ns.path()).map_err(|source| NetlabError::Enter {
            name: ns.name().to_string(),
            source,
        })?;
        let name = ns.name().to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<ProbeHandle>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("dwcp-prober".into())
            .spawn(move || {
                if let Err(source) = netlab::enter(&file) {
                    let _ = ready_tx.send(Err(NetlabError::Enter { name, source }.into()));
                    return;
                }
                if let Some(p) = rt_priority {
                    if let Err(source) = set_realtime_priority(p) {
                        let _ = ready_tx.send(Err(NetlabError::Spawn {
                            cmd: format!("SCHED_FIFO priority {p} for the prober"),
                            source,
                        }
                        .into()));
                        return;
                    }
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = ready_tx.send(Err(NetlabError::Enter { name, source }.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Prober::start(config) {
                        Ok(prober) => {
                            let _ = ready_tx.send(Ok(prober.handle()));
                            prober
                                .run(async move {
                                    let _ = stop_rx.await;
                                })
                                .await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                        }
                    }
                });
            })
            .map_err(|source| NetlabError::Spawn {
                cmd: "prober thread".into(),
                source,
            })?;
        let handle = match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => {
                // The thread ended without a word: it panicked; surface the panic.
                let _ = thread.join().map_err(std::panic::resume_unwind);
                unreachable!("the prober thread ended before reporting");
            }
        };
        let mut cpu_clock: libc::clockid_t = 0;
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: the thread is alive (it runs until told to stop) and cpu_clock is ours.
        unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut cpu_clock) };
        Ok(ProberThread {
            stop: Some(stop_tx),
            thread: Some(thread),
            handle,
            cpu_clock,
        })
    }

    /// Per-link probe counters of this prober.
    pub fn handle(&self) -> &ProbeHandle {
        &self.handle
    }

    /// CPU time (user + system) the prober's thread has used so far.
    pub fn cpu_time(&self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the clock belongs to our live thread; ts is ours.
        unsafe { libc::clock_gettime(self.cpu_clock, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

impl Drop for ProberThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The agent's monitor of one gateway, on the pinned maps.
pub type PinnedLinkMonitor = LinkMonitor<LinkStateMap<MapData>, PinnedProbeCounts>;

/// The tunnels of a WireGuard lab: per link, the devices of A and B.
struct WireGuardLinks {
    devices: Vec<[String; 2]>,
    // Drop order: the managers, then their runtime and state directory.
    _managers: [TunnelManager; 2],
    _rt: tokio::runtime::Runtime,
    _state: tempfile::TempDir,
}

/// Two regions, `links.len()` monitored underlay links between their gateways.
pub struct MultiLinkLab {
    pub a: Region,
    pub b: Region,
    pub links: Vec<UnderlayLink>,
    /// The monitors' thresholds, and through [`MonitorConfig::link_config`] the kernel's.
    pub monitor: MonitorConfig,
    /// `SCHED_FIFO` priority of the probers (default 10): the lab's machine is shared, and a
    /// prober starved past the detection time would fail healthy links over.
    pub prober_rt_priority: Option<i32>,
    probers: Vec<(Side, ProberThread)>,
    wireguard: Option<WireGuardLinks>,
    pins: PinRoot,
}

impl MultiLinkLab {
    /// Builds the namespaces, links and wires (`n_links` of them, 1 to 8); nothing runs yet.
    pub fn build(tag: &str, n_links: usize, monitor: MonitorConfig) -> Result<MultiLinkLab> {
        if n_links == 0 || n_links > MAX_GROUP_MEMBERS {
            return Err(LabError::LinkCount {
                asked: n_links,
                max: MAX_GROUP_MEMBERS,
            });
        }
        monitor
            .validate()
            .map_err(dwcp_agent::prober::ProberError::from)?;
        let pins = PinRoot::new(tag)?;
        let a = region(tag, 1)?;
        let b = region(tag, 2)?;
        let mut links = Vec::new();
        for i in 1..=n_links as u32 {
            let wire = Netns::new(&format!("{tag}-w{i}"))?;
            let ifname = format!("ul{i}");
            netlab::veth(&a.gw, &ifname, &wire, "to-a")?;
            netlab::veth(&b.gw, &ifname, &wire, "to-b")?;
            let mtu = UNDERLAY_MTU.to_string();
            wire.ip(&["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
            for port in ["to-a", "to-b"] {
                wire.ip(&["link", "set", port, "mtu", &mtu, "master", "br0"])?;
            }
            wire.ip(&["link", "set", "br0", "up"])?;
            wire.exec(&["nft", "add", "table", "bridge", WIRE_TABLE])?;
            wire.exec(&[
                "nft",
                "add",
                "chain",
                "bridge",
                WIRE_TABLE,
                "forward",
                "{ type filter hook forward priority 0 ; policy accept ; }",
            ])?;
            let link = UnderlayLink {
                id: i,
                vni: MULTI_LAB_VNI_BASE + i,
                a_ip: Ipv4Addr::new(172, 31, i as u8, 1),
                b_ip: Ipv4Addr::new(172, 31, i as u8, 2),
                ifname,
                wire,
            };
            for (gw, ip) in [(&a.gw, link.a_ip), (&b.gw, link.b_ip)] {
                gw.ip(&["link", "set", &link.ifname, "mtu", &mtu])?;
                netlab::addr(gw, &link.ifname, &format!("{ip}/24"))?;
                gw.sysctl(&format!("net.ipv4.conf.{}.rp_filter", link.ifname), "0")?;
            }
            // Static neighbours: the probe sockets then never wait for ARP, which a cut wire
            // would block, so a healed link answers at the next probe.
            let (a_mac, b_mac) = (a.gw.mac(&link.ifname)?, b.gw.mac(&link.ifname)?);
            for (gw, peer_ip, peer_mac) in [(&a.gw, link.b_ip, b_mac), (&b.gw, link.a_ip, a_mac)] {
                gw.ip(&[
                    "neigh",
                    "replace",
                    &peer_ip.to_string(),
                    "lladdr",
                    &mac_string(peer_mac),
                    "dev",
                    &link.ifname,
                    "nud",
                    "permanent",
                ])?;
            }
            links.push(link);
        }
        Ok(MultiLinkLab {
            a,
            b,
            links,
            monitor,
            prober_rt_priority: Some(10),
            probers: Vec::new(),
            wireguard: None,
            pins,
        })
    }

    /// As [`MultiLinkLab::build`], with a WireGuard tunnel of backend `backend` (wireguard-go
    /// or the kernel's) over every link (see the module documentation); waits until each has
    /// handshaken (a ping through it).
    pub fn build_wireguard(
        tag: &str,
        n_links: usize,
        monitor: MonitorConfig,
        backend: WireGuardImpl,
    ) -> Result<MultiLinkLab> {
        let mut lab = MultiLinkLab::build(tag, n_links, monitor)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::Wireguard(format!("tokio runtime: {e}")))?;
        let state = tempfile::tempdir()
            .map_err(|e| LabError::Wireguard(format!("state directory: {e}")))?;
        let wg = |e: dwcp_tunnels::TunnelError| LabError::Wireguard(e.to_string());
        let managers = rt.block_on(async {
            let manager = |ns: &Netns, sub: &str| ManagerConfig {
                netns: NetnsTarget::named(ns.name()),
                state_dir: state.path().join(sub),
                wireguard: backend.clone(),
            };
            Ok::<_, LabError>([
                TunnelManager::new(manager(&lab.a.gw, "a"))
                    .await
                    .map_err(wg)?,
                TunnelManager::new(manager(&lab.b.gw, "b"))
                    .await
                    .map_err(wg)?,
            ])
        })?;
        let n = NEXT_PIN_ROOT.fetch_add(1, Ordering::Relaxed);
        let mut devices = Vec::new();
        for l in &lab.links {
            // Unique on the host: wireguard-go's socket directory is shared by all namespaces.
            let names = [Side::A, Side::B]
                .map(|s| format!("wg{}{}{}x{n}", l.id, s.dir(), std::process::id()));
            let keys = [
                managers[0].public_key(&names[0]).map_err(wg)?,
                managers[1].public_key(&names[1]).map_err(wg)?,
            ];
            // 51820 and up: the ports `fail_closed`'s capture knows for WireGuard.
            let port = 51819 + l.id as u16;
            for (i, side, other) in [(0, Side::A, Side::B), (1, Side::B, Side::A)] {
                let remote = lab.region(other).prefix;
                let spec = wireguard(
                    &names[i],
                    &format!("{}/30", tunnel_ip(l.id, side)),
                    port,
                    keys[1 - i],
                    (l.ip(other), port),
                    &[
                        &format!("{}/32", tunnel_ip(l.id, other)),
                        &format!("{remote}/24"),
                    ],
                    Some(Handoff {
                        fwmark: HANDOFF_FWMARK_BASE + l.id,
                        table: HANDOFF_TABLE_BASE + l.id,
                        priority: HANDOFF_RULE_PRIORITY,
                    }),
                );
                rt.block_on(managers[i].ensure(&spec)).map_err(wg)?;
            }
            devices.push(names);
        }
        lab.wireguard = Some(WireGuardLinks {
            devices,
            _managers: managers,
            _rt: rt,
            _state: state,
        });
        for l in &lab.links {
            let peer = tunnel_ip(l.id, Side::B).to_string();
            wait_for(
                &format!("the WireGuard handshake of link {}", l.id),
                Duration::from_secs(20),
                || {
                    Ok(lab
                        .a
                        .gw
                        .exec(&["ping", "-c", "1", "-W", "1", &peer])
                        .is_ok())
                },
            )?;
        }
        Ok(lab)
    }

    /// The WireGuard device of link `id` on `side`, in a lab built by
    /// [`MultiLinkLab::build_wireguard`].
    pub fn wireguard_device(&self, id: u32, side: Side) -> Option<&str> {
        let names = self.wireguard.as_ref()?.devices.get((id - 1) as usize)?;
        Some(match side {
            Side::A => &names[0],
            Side::B => &names[1],
        })
    }

    pub fn region(&self, side: Side) -> &Region {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn region_mut(&mut self, side: Side) -> &mut Region {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// The gateway's pin directory (its `/sys/fs/bpf/dwcp`).
    pub fn pin_dir(&self, side: Side) -> PathBuf {
        self.pins.0.join(side.dir())
    }

    pub fn link(&self, id: u32) -> &UnderlayLink {
        &self.links[(id - 1) as usize]
    }

    pub fn link_ids(&self) -> Vec<u32> {
        self.links.iter().map(|l| l.id).collect()
    }

    /// Loads dwcp on both gateways with pinned maps and attachments and programs the route to
    /// the other region over every link. Hosts and wires get the `XDP_PASS` program their veth
    /// ends need to accept natively redirected frames (pinned as well).
    pub fn start_dataplanes(&mut self) -> Result<()> {
        let pass_dir = self.pins.0.join("pass");
        let mut pass = PassProgram::load()?;
        let mut ends: Vec<(&Netns, &str, String)> = vec![
            (&self.a.host, "eth0", "host-a".into()),
            (&self.b.host, "eth0", "host-b".into()),
        ];
        for l in &self.links {
            ends.push((&l.wire, "to-a", format!("wire{}-a", l.id)));
            ends.push((&l.wire, "to-b", format!("wire{}-b", l.id)));
        }
        for (ns, ifname, pin) in ends {
            let pin = pass_dir.join(pin);
            ns.run_in(|| pass.attach_pinned(ifname, &pin))??;
        }
        drop(pass);
        for side in [Side::A, Side::B] {
            let (dp, mode) = self.program_gateway(side)?;
            let r = self.region_mut(side);
            r.dataplane = Some(dp);
            r.attach_mode = Some(mode);
        }
        Ok(())
    }

    fn program_gateway(&self, side: Side) -> Result<(Dataplane, AttachMode)> {
        let (local, remote, other) = match side {
            Side::A => (&self.a, &self.b, Side::B),
            Side::B => (&self.b, &self.a, Side::A),
        };
        let mut paths = Vec::new();
        let mut wg_devices = Vec::new();
        for l in &self.links {
            let path = match self.wireguard_device(l.id, side) {
                Some(dev) => {
                    wg_devices.push(dev.to_string());
                    GatewayPath {
                        nexthop: l.id,
                        link_id: l.id,
                        ifindex: local.gw.ifindex(dev)?,
                        vni: 0,
                        local_ip: tunnel_ip(l.id, side),
                        remote_ip: tunnel_ip(l.id, other),
                        local_mac: [0; 6],
                        remote_mac: [0; 6],
                        monitor: Some(self.monitor),
                        handoff: Some(HANDOFF_FWMARK_BASE + l.id),
                    }
                }
                None => GatewayPath {
                    nexthop: l.id,
                    link_id: l.id,
                    ifindex: local.gw.ifindex(&l.ifname)?,
                    vni: l.vni,
                    local_ip: l.ip(side),
                    remote_ip: l.ip(other),
                    local_mac: local.gw.mac(&l.ifname)?,
                    remote_mac: remote.gw.mac(&l.ifname)?,
                    monitor: Some(self.monitor),
                    handoff: None,
                },
            };
            paths.push(path);
        }
        let lan = Lan::of(&local.gw, "lan0")?;
        let pin_dir = self.pin_dir(side);
        let remote_prefix = remote.prefix;
        // A WireGuard lab's underlay carries only ciphertext: no underlay program.
        let ifnames: Vec<String> = if wg_devices.is_empty() {
            self.links.iter().map(|l| l.ifname.clone()).collect()
        } else {
            Vec::new()
        };
        local
            .gw
            .run_in(move || -> Result<(Dataplane, AttachMode)> {
                let mut dp = Dataplane::load(Pinning::Dir(pin_dir.clone()))?;
                // Pinned like the hosts' and wires' programs: they stay when `dp` is dropped.
                let lan_prog = programs::LAN_INGRESS;
                let mode = attach_pinned(
                    dp.program(lan_prog)?,
                    lan_prog,
                    "lan0",
                    &pin_dir.join("xdp-lan0"),
                )?;
                let underlay = programs::UNDERLAY_INGRESS;
                for ifname in &ifnames {
                    let pin = pin_dir.join(format!("xdp-{ifname}"));
                    attach_pinned(dp.program(underlay)?, underlay, ifname, &pin)?;
                }
                if !wg_devices.is_empty() {
                    dp.attach_tc_pinned(programs::LAN_HANDOFF_TC, "lan0")?;
                }
                for dev in &wg_devices {
                    dp.attach_tc_pinned(programs::WG_PROBE_TC, dev)?;
                }
                program_paths(&mut dp, lan, remote_prefix, MULTI_LAB_GROUP, &paths)?;
                Ok((dp, mode))
            })?
    }

    /// The prober's settings for a gateway: the lab's monitor thresholds, probes at its
    /// interval.
    pub fn prober_config(&self, side: Side) -> ProberConfig {
        let mut c = ProberConfig::new(self.pin_dir(side));
        c.sender.interval = self.monitor.interval;
        c.monitor = self.monitor;
        c
    }

    /// Arguments of `dwcp-prober` for a gateway, to run it as a process of its own.
    pub fn prober_args(&self, side: Side) -> Vec<String> {
        let mut args = vec![
            "--pin-dir".into(),
            self.pin_dir(side).display().to_string(),
            "--netns".into(),
            self.region(side).gw.name().to_string(),
            "--interval-ms".into(),
            self.monitor.interval.as_millis().to_string(),
            "--detect-multiplier".into(),
            self.monitor.detect_multiplier.to_string(),
        ];
        if let Some(p) = self.prober_rt_priority {
            args.extend(["--rt-priority".into(), p.to_string()]);
        }
        args
    }

    /// Starts a prober thread on each gateway.
    pub fn start_probers(&mut self) -> Result<()> {
        for side in [Side::A, Side::B] {
            let p = ProberThread::spawn(
                &self.region(side).gw,
                self.prober_config(side),
                self.prober_rt_priority,
            )?;
            self.probers.push((side, p));
        }
        Ok(())
    }

    pub fn prober(&self, side: Side) -> Option<&ProberThread> {
        self.probers
            .iter()
            .find(|(s, _)| *s == side)
            .map(|(_, p)| p)
    }

    pub fn stop_probers(&mut self) {
        self.probers.clear();
    }

    /// Stops "the agent" of both gateways: every userspace object of the fast path is dropped.
    /// The programs stay attached and keep their maps through the pins.
    pub fn stop_agents(&mut self) {
        self.a.dataplane = None;
        self.b.dataplane = None;
    }

    /// Starts the agents again: they re-adopt the pinned maps (the programs never left).
    pub fn restart_agents(&mut self) -> Result<()> {
        for side in [Side::A, Side::B] {
            let dp = Dataplane::load(Pinning::Dir(self.pin_dir(side)))?;
            self.region_mut(side).dataplane = Some(dp);
        }
        Ok(())
    }

    /// The gateway's `LINK_STATE`, opened from its pin (works with the agent stopped).
    pub fn link_state_map(&self, side: Side) -> Result<Array<MapData, LinkState>> {
        Ok(PinnedMaps::new(self.pin_dir(side)).link_state()?)
    }

    /// Whether the gateway's fast path uses `link` now, by the kernel's rule.
    pub fn link_usable(&self, map: &Array<MapData, LinkState>, link: u32) -> bool {
        let Ok(st) = map.get(&link, 0) else {
            return false;
        };
        kernel_usable(
            dwcp_agent::probe::monotonic_ns(),
            &st,
            self.monitor.detect_ns(),
            self.monitor.up_after,
        )
    }

    /// Waits until every link is usable on both gateways.
    pub fn wait_links_usable(&self, limit: Duration) -> Result<()> {
        let maps = [self.link_state_map(Side::A)?, self.link_state_map(Side::B)?];
        wait_for("every link usable on both gateways", limit, || {
            Ok(maps
                .iter()
                .all(|m| self.links.iter().all(|l| self.link_usable(m, l.id))))
        })
    }

    /// The agent's link monitor of a gateway, on the pinned `LINK_STATE` and `PROBE_SENT`.
    pub fn agent_monitor(
        &self,
        side: Side,
        events: mpsc::Sender<LinkEvent>,
    ) -> Result<PinnedLinkMonitor> {
        let dir = self.pin_dir(side);
        let counts = PinnedProbeCounts::open(&dir, self.link_ids())?;
        LinkMonitor::new(
            self.monitor,
            LinkStateMap(PinnedMaps::new(&dir).link_state()?),
            counts,
            events,
        )
        .map_err(|e| dwcp_agent::prober::ProberError::from(e).into())
    }
}

impl Drop for MultiLinkLab {
    fn drop(&mut self) {
        // Probers first (their threads live in the namespaces), then wireguard-go, then the
        // fields in order: regions, wires, and last the pins.
        self.probers.clear();
        if self.wireguard.is_some() {
            stop_wireguard_go(&[&self.a.gw, &self.b.gw]);
        }
    }
}

/// Polls `done` every millisecond until it holds, for at most `limit` (so a broken lab fails
/// instead of hanging).
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(LabError::Timeout {
                what: what.to_string(),
                waited: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The next hop the fast path picks for a UDP flow from `table` when every member is live:
/// the same seeded hash and bucket table as the XDP program.
pub fn udp_flow_nexthop(
    table: &NextHopTable,
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
) -> u32 {
    let key = FlowKey {
        src: [u32::from(src), 0, 0, 0],
        dst: [u32::from(dst), 0, 0, 0],
        src_port,
        dst_port,
        proto: 17,
    };
    let bucket = flow_hash(&key, LAB_SEED) as usize % NHG_BUCKETS;
    table.nexthops[table.buckets[bucket] as usize % MAX_GROUP_MEMBERS]
}

/// `count` UDP source ports from `first_port` up whose flows to `dst:dst_port` take `nexthop`.
pub fn ports_on_nexthop(
    table: &NextHopTable,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_port: u16,
    nexthop: u32,
    first_port: u16,
    count: usize,
) -> Vec<u16> {
    (first_port..u16::MAX)
        .filter(|&p| udp_flow_nexthop(table, src, p, dst, dst_port) == nexthop)
        .take(count)
        .collect()
}

/// The tunnel address of `side` on WireGuard link `link`: 10.254.<link>.1 (A) or .2 (B).
pub fn tunnel_ip(link: u32, side: Side) -> Ipv4Addr {
    let host = match side {
        Side::A => 1,
        Side::B => 2,
    };
    Ipv4Addr::new(10, 254, link as u8, host)
}

fn mac_string(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
