//! The forwarding lab: source -> gateway A -> underlay -> sink (gateway B's underlay end),
//! one set of namespaces and veths for both forwarders.
//!
//! ```text
//!  source ns            gateway A ns                                 far ns (gateway B)
//!  src0 ============== lan<pid>   [dwcp XDP | kernel: nexthop group   ul0 ====== snk<pid>
//!  (XDP_TX, live       10.1.0.1    over vx11 / vx12 VXLAN devices]    172.31.0.1  172.31.0.2
//!   frames)            threaded NAPI, pinned to the gateway CPU                   172.31.0.3
//!                                                                       sink XDP: count, drop
//! ```
//!
//! Gateway A has one route, 10.2.0.0/24, to a group of two next hops weighted 2:1: VXLAN VNI
//! 11 to 172.31.0.2 and VNI 12 to 172.31.0.3, both over `ul0`. With [`Forwarder::Dwcp`] the
//! route is dwcp's (XDP on the LAN veth, the kernel has no route at all); with
//! [`Forwarder::Kernel`] dwcp is detached and the kernel has the same route as an `ip
//! nexthop` group over two kernel VXLAN devices with the same VNIs, endpoints and weights, and
//! an L4 multipath hash (dwcp hashes the 5-tuple too).

use std::{
    fmt,
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::programs::xdp::XdpLinkId;
use dwcp_common::{
    maps::programs, wire::IPPROTO_UDP, FlowKey, Neighbour, NextHop, QosClass, Reason, Route,
    NH_F_VALID,
};
use dwcp_lab_ebpf::bench;

use super::{
    cpu,
    measure::{Snapshot, TrialResult},
    sink::Sink,
    source::{udp_frame, Stop, TrafficSource, DST_PORT},
    BenchError, Result,
};
use crate::lab::UNDERLAY_MTU;
use crate::netlab;
use crate::netlab::Netns;
use dwcp_control::{config::Prefix, forwarding::ForwardingState};
use dwcp_dataplane::AttachMode;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Pinning;
use dwcp_dataplane::{build_table, Member};

/// What forwards on gateway A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Forwarder {
    /// dwcp's XDP fast path.
    Dwcp,
    /// Linux: an `ip nexthop` group over kernel VXLAN devices.
    Kernel,
}

impl Forwarder {
    pub const ALL: [Forwarder; 2] = [Forwarder::Dwcp, Forwarder::Kernel];

    pub fn name(self) -> &'static str {
        match self {
            Forwarder::Dwcp => "dwcp XDP",
            Forwarder::Kernel => "Linux kernel",
        }
    }
}

impl fmt::Display for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One member of the benchmark's next-hop group.
#[derive(Clone, Copy, Debug)]
pub struct BenchNextHop {
    /// dwcp next-hop id, link id, and the kernel's nexthop id.
    pub id: u32,
    pub vni: u32,
    pub remote: Ipv4Addr,
    pub weight: u32,
    /// The kernel's VXLAN device for this next hop, and the /30 inside it.
    pub kernel_dev: &'static str,
    pub kernel_local: Ipv4Addr,
    pub kernel_peer: Ipv4Addr,
}

pub const NEXT_HOPS: [BenchNextHop; 2] = [
    BenchNextHop {
        id: 11,
        vni: 11,
        remote: Ipv4Addr::new(172, 31, 0, 2),
        weight: 2,
        kernel_dev: "vx11",
        kernel_local: Ipv4Addr::new(192, 168, 11, 1),
        kernel_peer: Ipv4Addr::new(192, 168, 11, 2),
    },
    BenchNextHop {
        id: 12,
        vni: 12,
        remote: Ipv4Addr::new(172, 31, 0, 3),
        weight: 1,
        kernel_dev: "vx12",
        kernel_local: Ipv4Addr::new(192, 168, 12, 1),
        kernel_peer: Ipv4Addr::new(192, 168, 12, 2),
    },
];

/// dwcp's group id and the kernel's nexthop group id.
pub const GROUP: u32 = 100;
pub const SOURCE_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const GATEWAY_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const DEST_PREFIX: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 0);
pub const DEST_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
pub const GATEWAY_UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);

/// The source's flows as the fast path hashes them: one per UDP source port
/// ([`bench::source_port`]), from [`SOURCE_IP`] to [`DEST_IP`], port [`DST_PORT`].
pub fn source_flows() -> Vec<FlowKey> {
    (0..u64::from(bench::FLOWS))
        .map(|seq| FlowKey {
            src: [u32::from(SOURCE_IP), 0, 0, 0],
            dst: [u32::from(DEST_IP), 0, 0, 0],
            src_port: bench::source_port(seq),
            dst_port: DST_PORT,
            proto: IPPROTO_UDP,
        })
        .collect()
}

/// The VNIs of [`NEXT_HOPS`].
pub fn vnis() -> Vec<u32> {
    NEXT_HOPS.iter().map(|n| n.vni).collect()
}

/// The weight share of each VNI of [`NEXT_HOPS`].
pub fn weight_shares() -> Vec<(u32, f64)> {
    let total: u32 = NEXT_HOPS.iter().map(|n| n.weight).sum();
    NEXT_HOPS
        .iter()
        .map(|n| (n.vni, n.weight as f64 / total as f64))
        .collect()
}

/// Which CPUs do what. The gateway's forwarding gets a CPU of its own; the source and the
/// sink share the other. (With the sink on the gateway's CPU, the kernel forwarder's work no
/// longer shows in the gateway's NAPI thread: measured 0.05 CPU for 0.55 Mpps. Not offered.)
#[derive(Clone, Copy, Debug)]
pub struct CpuPlan {
    pub gateway: usize,
    /// The source and the sink's NAPI thread.
    pub source: usize,
}

impl Default for CpuPlan {
    fn default() -> Self {
        CpuPlan {
            gateway: 1,
            source: 0,
        }
    }
}

pub struct ForwardingLab {
    pub source_ns: Netns,
    pub gateway: Netns,
    pub far: Netns,
    /// Gateway A's LAN veth (with a name unique on the machine: its NAPI thread is found by
    /// name).
    pub lan_if: String,
    /// The sink's veth, the far end of `ul0`.
    pub sink_if: String,
    pub source_ifindex: u32,
    source_mac: [u8; 6],
    lan_mac: [u8; 6],
    dataplane: Dataplane,
    gateway_counters: NetDevCounters,
    attached: Option<(XdpLinkId, XdpLinkId)>,
    pub attach_mode: Option<AttachMode>,
    pub source: TrafficSource,
    pub sink: Sink,
    pub cpus: CpuPlan,
    forwarder: Option<Forwarder>,
}

impl ForwardingLab {
    /// Builds the namespaces, veths, sink, source, dwcp's tables and the kernel's VXLAN
    /// devices and nexthop group. Nothing forwards until [`ForwardingLab::set_forwarder`].
    pub fn build(cpus: CpuPlan) -> Result<ForwardingLab> {
        let online = cpu::online_cpus();
        for c in [cpus.gateway, cpus.source] {
            if c >= online {
                return Err(BenchError::Cpu { cpu: c, online });
            }
        }
        if cpus.gateway == cpus.source {
            return Err(BenchError::SharedCpu(cpus.gateway));
        }
        let tag = unique_tag();
        let lan_if = format!("lan{tag}");
        let sink_if = format!("snk{tag}");
        let source_ns = Netns::new("fwdsrc")?;
        let gateway = Netns::new("fwdgwa")?;
        let far = Netns::new("fwdfar")?;
        netlab::veth(&source_ns, "src0", &gateway, &lan_if)?;
        netlab::veth(&gateway, "ul0", &far, &sink_if)?;
        for (ns, dev) in [(&gateway, "ul0"), (&far, sink_if.as_str())] {
            ns.ip(&["link", "set", dev, "mtu", &UNDERLAY_MTU.to_string()])?;
        }
        netlab::addr(&gateway, &lan_if, &format!("{GATEWAY_LAN_IP}/24"))?;
        netlab::addr(&gateway, "ul0", &format!("{GATEWAY_UNDERLAY_IP}/24"))?;
        for nh in &NEXT_HOPS {
            netlab::addr(&far, &sink_if, &format!("{}/24", nh.remote))?;
        }
        // No IPv6 in the lab: no router solicitations or MLD reports (from the kernel's VXLAN
        // devices, say) reach the sink and get counted as forwarded traffic.
        for ns in [&source_ns, &gateway, &far] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        gateway.sysctl("net.ipv4.ip_forward", "1")?;
        for key in ["all", "default", "ul0", lan_if.as_str()] {
            gateway.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        // GRO on the LAN veth gives it a NAPI context (and so a ring for frames sent to it by
        // XDP) also when no XDP program is attached: the kernel forwarder receives exactly as
        // dwcp does, minus the program. It is also the kernel's default on real NICs.
        gateway.exec(&["ethtool", "-K", &lan_if, "gro", "on"])?;
        cpu::enable_threaded_napi(&gateway, &lan_if)?;

        let sink = Sink::attach(&far, &sink_if)?;
        cpu::enable_threaded_napi(&far, &sink_if)?;

        let source_ifindex = source_ns.ifindex("src0")?;
        let source = TrafficSource::load(source_ifindex)?;
        let source_mac = source_ns.mac("src0")?;
        let lan_mac = gateway.mac(&lan_if)?;
        let far_mac = far.mac(&sink_if)?;
        let ul_mac = gateway.mac("ul0")?;

        configure_kernel_forwarder(&gateway, far_mac)?;
        let dataplane = program_dwcp(&gateway, &lan_if, ul_mac, far_mac)?;
        let gateway_counters = NetDevCounters::open(&gateway)?;

        Ok(ForwardingLab {
            source_ns,
            gateway,
            far,
            lan_if,
            sink_if,
            source_ifindex,
            source_mac,
            lan_mac,
            dataplane,
            gateway_counters,
            attached: None,
            attach_mode: None,
            source,
            sink,
            cpus,
            forwarder: None,
        })
    }

    pub fn forwarder(&self) -> Option<Forwarder> {
        self.forwarder
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// Hands forwarding to `f`: attaches dwcp and removes the kernel's route, or detaches
    /// dwcp and installs the kernel's route. Only one of them can forward at a time.
    pub fn set_forwarder(&mut self, f: Forwarder) -> Result<()> {
        match f {
            Forwarder::Dwcp => {
                self.remove_kernel_route()?;
                if self.attached.is_none() {
                    let (dp, lan_if) = (&mut self.dataplane, self.lan_if.as_str());
                    let (lan, ul, mode) = self.gateway.run_in(move || -> Result<_> {
                        let (lan, mode) = dp.attach(programs::LAN_INGRESS, lan_if)?;
                        let (ul, _) = dp.attach(programs::UNDERLAY_INGRESS, "ul0")?;
                        Ok((lan, ul, mode))
                    })??;
                    self.attached = Some((lan, ul));
                    self.attach_mode = Some(mode);
                }
            }
            Forwarder::Kernel => {
                if let Some((lan, ul)) = self.attached.take() {
                    let detach = |dp: &mut Dataplane, name, id| -> Result<()> {
                        dp.program(name)?
                            .detach(id)
                            .map_err(BenchError::program(name))
                    };
                    detach(&mut self.dataplane, programs::LAN_INGRESS, lan)?;
                    detach(&mut self.dataplane, programs::UNDERLAY_INGRESS, ul)?;
                    self.attach_mode = None;
                }
                self.gateway.ip(&[
                    "route",
                    "replace",
                    &format!("{DEST_PREFIX}/24"),
                    "nhid",
                    &GROUP.to_string(),
                ])?;
            }
        }
        self.forwarder = Some(f);
        Ok(())
    }

    fn remove_kernel_route(&self) -> Result<()> {
        let prefix = format!("{DEST_PREFIX}/24");
        let out = self.gateway.ip(&["-j", "route", "show", &prefix])?;
        if String::from_utf8_lossy(&out.stdout).contains("dst") {
            self.gateway.ip(&["route", "del", &prefix])?;
        }
        Ok(())
    }

    /// The source's frame with `payload` bytes of UDP payload.
    pub fn frame(&self, payload: usize) -> Result<Vec<u8>> {
        udp_frame(self.source_mac, self.lan_mac, SOURCE_IP, DEST_IP, payload)
    }

    /// Sends `runs` frames (for tests; the source must not be running), from the source's CPU
    /// as [`ForwardingLab::run_trial`] does: the source numbers frames per CPU, so consecutive
    /// calls continue one sequence of source ports ([`bench::source_port`]).
    pub fn send(&mut self, payload: usize, runs: u32) -> Result<()> {
        let frame = self.frame(payload)?;
        self.source.set_template(&frame)?;
        let (source, cpu) = (&self.source, self.cpus.source);
        self.source_ns.run_in(|| {
            cpu::pin_to_cpu(0, cpu)?;
            source.send(&frame, runs)
        })?
    }

    /// All counters now. `gateway_pid` / `sink_pid`: the NAPI threads.
    pub fn snapshot(&self, gateway_pid: u32, sink_pid: u32) -> Result<Snapshot> {
        let offered = self.source.sent()?;
        let sink = self.sink.counts()?;
        let gateway_thread = cpu::sched_times(gateway_pid)?;
        let at = Instant::now();
        let sink_thread = cpu::sched_times(sink_pid)?;
        let dwcp_forwarded = if self.forwarder == Some(Forwarder::Dwcp) {
            self.dataplane.reason_count(Reason::LanForwarded)?
        } else {
            0
        };
        let lan = self.link_stats(&self.lan_if)?;
        let ul = self.link_stats("ul0")?;
        Ok(Snapshot {
            at,
            offered,
            gateway_rx: lan.rx_packets,
            gateway_tx_dropped: ul.tx_dropped,
            sink,
            gateway: gateway_thread,
            sink_thread,
            dwcp_forwarded,
        })
    }

    /// The kernel's counters of gateway A's interface `ifname` (they include frames handled
    /// by XDP: a veth counts what it takes from its ring and what it hands to its peer).
    pub fn link_stats(&self, ifname: &str) -> Result<LinkStats> {
        self.gateway_counters.read(ifname)
    }

    /// Finds both NAPI threads, pins them (see [`CpuPlan`]) and gives them their real-time
    /// priority. Returns (gateway pid, sink pid).
    pub fn pin_napi_threads(&self) -> Result<(u32, u32)> {
        let gw = cpu::napi_thread(&self.lan_if)?;
        let sink = cpu::napi_thread(&self.sink_if)?;
        cpu::pin_to_cpu(gw, self.cpus.gateway)?;
        cpu::pin_to_cpu(sink, self.cpus.source)?;
        cpu::set_fifo(gw, cpu::priority::GATEWAY)?;
        cpu::set_fifo(sink, cpu::priority::SINK)?;
        Ok((gw, sink))
    }

    /// One measurement: `f` forwards `payload`-byte packets offered as fast as the source can
    /// for `warmup`, then every counter is read, again after `window`, and the source stops.
    pub fn run_trial(
        &mut self,
        f: Forwarder,
        payload: usize,
        warmup: Duration,
        window: Duration,
    ) -> Result<TrialResult> {
        self.set_forwarder(f)?;
        let (gw_pid, sink_pid) = self.pin_napi_threads()?;
        let frame = self.frame(payload)?;
        self.source.set_template(&frame)?;
        let stop = Stop::default();
        let this = &*self;
        let ns_file =
            std::fs::File::open(this.source_ns.path()).map_err(|source| BenchError::Io {
                what: format!("opening namespace {}", this.source_ns.name()),
                source,
            })?;
        let (a, b) = std::thread::scope(|s| -> Result<(Snapshot, Snapshot)> {
            let sender = s.spawn(|| {
                let r = (|| -> Result<()> {
                    netlab::enter(&ns_file).map_err(|source| BenchError::Io {
                        what: format!("entering namespace {}", this.source_ns.name()),
                        source,
                    })?;
                    cpu::pin_to_cpu(0, this.cpus.source)?;
                    cpu::set_fifo(0, cpu::priority::SOURCE)?;
                    this.source.send_until(&frame, &stop)
                })();
                // Whatever happened, the measuring side must not wait for it.
                stop.request();
                stop.mark_finished();
                r
            });
            // Its own thread: the real-time priority and CPU binding end with it.
            let measured = s
                .spawn(|| -> Result<(Snapshot, Snapshot)> {
                    cpu::pin_to_cpu(0, this.cpus.source)?;
                    cpu::set_fifo(0, cpu::priority::MEASURE)?;
                    sleep_unless(&stop, warmup);
                    let a = this.snapshot(gw_pid, sink_pid)?;
                    sleep_unless(&stop, window);
                    let b = this.snapshot(gw_pid, sink_pid)?;
                    Ok((a, b))
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            if !stop.stop_and_wait() {
                return Err(BenchError::SourceDidNotStop);
            }
            sender
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            measured
        })?;
        Ok(TrialResult::between(f, payload, &vnis(), &a, &b))
    }
}

/// A tag no other lab on this machine has now (process id and the lab's number in it, base
/// 36), short enough that `napi/<3 letters><tag>-` still fits a task name: NAPI threads are
/// found by their interface's name, and task names carry no namespace.
fn unique_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 64;
    base36(std::process::id() as u64 * 64 + n)
}

fn base36(mut x: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(x % 36) as usize]);
        x /= 36;
        if x == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Sleeps for `d`, or less if the source stopped (it failed).
fn sleep_unless(stop: &Stop, d: Duration) {
    let end = Instant::now() + d;
    while !stop.requested() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Interface counters of one namespace, read from its `/proc/net/dev` without starting a
/// process (so a snapshot's readings are microseconds apart).
pub struct NetDevCounters {
    file: std::fs::File,
}

impl NetDevCounters {
    /// Opens `ns`'s `/proc/net/dev`: the file shows the namespace of the thread that opened
    /// it, whichever thread reads it later.
    pub fn open(ns: &Netns) -> Result<NetDevCounters> {
        let file = ns.run_in(|| std::fs::File::open("/proc/thread-self/net/dev"))?;
        let file = file.map_err(|source| BenchError::Io {
            what: format!("opening /proc/net/dev of {}", ns.name()),
            source,
        })?;
        Ok(NetDevCounters { file })
    }

    pub fn read(&self, ifname: &str) -> Result<LinkStats> {
        use std::io::{Read, Seek};
        let mut file = &self.file;
        let mut text = String::new();
        file.rewind()
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(|source| BenchError::Io {
                what: "reading /proc/net/dev".into(),
                source,
            })?;
        parse_net_dev(&text, ifname).ok_or_else(|| BenchError::Parse {
            what: format!("/proc/net/dev (interface {ifname})"),
            text,
        })
    }
}

/// Interface counters (`/proc/net/dev`; the same as `ip -s link`'s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Frames the interface could not hand to its peer (a veth's peer ring was full).
    pub tx_dropped: u64,
}

/// `ifname`'s line of `/proc/net/dev`: `name: rx bytes packets errs drop fifo frame
/// compressed multicast tx bytes packets errs drop ...`.
pub fn parse_net_dev(text: &str, ifname: &str) -> Option<LinkStats> {
    let line = text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        (name.trim() == ifname).then_some(rest)
    })?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if f.len() < 16 {
        return None;
    }
    Some(LinkStats {
        rx_packets: f[1],
        tx_packets: f[9],
        tx_dropped: f[11],
    })
}

/// The kernel's half: a VXLAN device per next hop (same VNI, endpoints and underlay as
/// dwcp's), a static neighbour behind each (as dwcp's inner destination MAC), static underlay
/// neighbours (dwcp's come from its map), nexthops, the weighted group, and an L4 multipath
/// hash. The route itself is added by [`ForwardingLab::set_forwarder`].
fn configure_kernel_forwarder(gw: &Netns, far_mac: [u8; 6]) -> Result<()> {
    let mac = fmt_mac(far_mac);
    gw.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
    for nh in &NEXT_HOPS {
        gw.ip(&[
            "neigh",
            "replace",
            &nh.remote.to_string(),
            "lladdr",
            &mac,
            "nud",
            "permanent",
            "dev",
            "ul0",
        ])?;
        gw.ip(&[
            "link",
            "add",
            nh.kernel_dev,
            "type",
            "vxlan",
            "id",
            &nh.vni.to_string(),
            "local",
            &GATEWAY_UNDERLAY_IP.to_string(),
            "remote",
            &nh.remote.to_string(),
            "dstport",
            "4789",
            "dev",
            "ul0",
            "nolearning",
            "noudpcsum",
        ])?;
        gw.ip(&["link", "set", nh.kernel_dev, "up"])?;
        gw.sysctl(&format!("net.ipv4.conf.{}.rp_filter", nh.kernel_dev), "0")?;
        netlab::addr(gw, nh.kernel_dev, &format!("{}/30", nh.kernel_local))?;
        gw.ip(&[
            "neigh",
            "replace",
            &nh.kernel_peer.to_string(),
            "lladdr",
            &mac,
            "nud",
            "permanent",
            "dev",
            nh.kernel_dev,
        ])?;
        gw.ip(&[
            "nexthop",
            "add",
            "id",
            &nh.id.to_string(),
            "via",
            &nh.kernel_peer.to_string(),
            "dev",
            nh.kernel_dev,
        ])?;
    }
    let members: Vec<String> = NEXT_HOPS
        .iter()
        .map(|n| format!("{},{}", n.id, n.weight))
        .collect();
    gw.ip(&[
        "nexthop",
        "add",
        "id",
        &GROUP.to_string(),
        "group",
        &members.join("/"),
    ])?;
    Ok(())
}

/// dwcp's half: the same next hops, group, weights and route in dwcp's maps (loaded, not yet
/// attached), with the lab's QoS policy (DSCP rewrite of every class) as on a real gateway.
fn program_dwcp(gw: &Netns, lan_if: &str, ul_mac: [u8; 6], far_mac: [u8; 6]) -> Result<Dataplane> {
    let lan = crate::lab::Lan::of(gw, lan_if)?;
    let ul_ifindex = gw.ifindex("ul0")?;
    // In the gateway's namespace: the redirect map resolves interface indexes in the
    // namespace of the thread that writes it.
    gw.run_in(move || -> Result<Dataplane> {
        let mut dp = Dataplane::load(Pinning::None)?;
        let state = dwcp_state(lan, ul_ifindex, ul_mac, far_mac)?;
        crate::lab::program(&mut dp, &state)?;
        Ok(dp)
    })?
}

/// dwcp's maps for the benchmark: both next hops on the one underlay interface, the
/// weighted group, the route to the destination prefix, the QoS policy, ready.
fn dwcp_state(
    lan: crate::lab::Lan,
    ul_ifindex: u32,
    ul_mac: [u8; 6],
    far_mac: [u8; 6],
) -> Result<ForwardingState> {
    let mut s = ForwardingState::default();
    lan.add_to(&mut s);
    s.ports.insert(ul_ifindex);
    for nh in &NEXT_HOPS {
        s.nexthops.insert(
            nh.id,
            NextHop {
                flags: NH_F_VALID,
                link_id: nh.id,
                ifindex: ul_ifindex,
                vni: nh.vni,
                local_ip4: GATEWAY_UNDERLAY_IP.octets(),
                remote_ip4: nh.remote.octets(),
                via_ip4: nh.remote.octets(),
                mtu: UNDERLAY_MTU,
                inner_dst_mac: far_mac,
                _pad: [0; 2],
            },
        );
        s.neighbours.insert(
            (ul_ifindex, nh.remote.octets()),
            Neighbour {
                mac: far_mac,
                if_mac: ul_mac,
                _pad: [0; 4],
            },
        );
    }
    let members: Vec<Member> = NEXT_HOPS
        .iter()
        .map(|n| Member {
            nexthop: n.id,
            weight: n.weight,
            path: Default::default(),
        })
        .collect();
    s.groups.insert(
        GROUP,
        build_table(&members, None).map_err(crate::lab::LabError::from)?,
    );
    s.routes.insert(
        Prefix {
            addr: DEST_PREFIX.into(),
            len: 24,
        },
        Route {
            group_id: GROUP,
            default_class: QosClass::BestEffort as u8,
            _pad: [0; 3],
        },
    );
    crate::lab::set_ready_with_default_qos(&mut s);
    Ok(s)
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_stats_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
lan4808: 21452     203    0    7    0     0          0         0       90       1    0  744    0     0       0          0
";
        assert_eq!(
            parse_net_dev(text, "lan4808"),
            Some(LinkStats {
                rx_packets: 203,
                tx_packets: 1,
                tx_dropped: 744
            })
        );
        assert_eq!(parse_net_dev(text, "lan480"), None);
        assert_eq!(parse_net_dev("x: 1 2 3", "x"), None);
        assert_eq!(parse_net_dev("", "lo"), None);
    }

    #[test]
    fn proc_net_dev_shows_the_opening_threads_namespace() {
        let ns = Netns::new("fwdnd").unwrap();
        netlab::veth(&ns, "nd0", &ns, "nd1").unwrap();
        let counters = NetDevCounters::open(&ns).unwrap();
        // Read from this thread, which is not in the namespace (where there is no nd0).
        assert!(counters.read("nd0").is_ok());
        assert!(counters.read("nd1").is_ok());
        assert!(matches!(
            counters.read("eth-none"),
            Err(BenchError::Parse { .. })
        ));
    }

    #[test]
    fn tags_are_short_and_distinct() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        // The largest pid (2^22) times 64 labs: 6 characters, so "napi/lan" + tag + "-" fits
        // the kernel's 15-character task names.
        assert_eq!(base36((1u64 << 22) * 64 - 1), "4fti4f");
        let (a, b) = (unique_tag(), unique_tag());
        assert_ne!(a, b);
        assert!("napi/lan-".len() + a.len() <= 15);
    }

    #[test]
    fn weights_make_shares() {
        let s = weight_shares();
        assert_eq!(s.len(), NEXT_HOPS.len());
        assert!((s.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((s[0].1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(fmt_mac([2, 0, 0xa, 0xff, 0, 1]), "02:00:0a:ff:00:01");
    }
}
