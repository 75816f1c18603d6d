//! Two regions joined by several underlay paths of different capacities:
//!
//! ```text
//! host A -- gw A =ul1= [wire 1: bridge, TBF 50 Mbit/s towards B]  =ul1= gw B -- host B
//!                =ul2= [wire 2: bridge, TBF 100 Mbit/s towards B] =ul2=
//!                =ul3= [wire 3: bridge, TBF 200 Mbit/s towards B] =ul3=
//! ```
//!
//! Why the rate limit sits in a wire namespace: a native XDP redirect into a veth puts the
//! frame straight into the peer's ring, past the qdisc of the device it was redirected to, so a
//! qdisc on a gateway's `ul<i>` would not limit the fast path. In the wire the frame leaves the
//! XDP world (an `XDP_PASS` program turns it into an skb), crosses a bridge and is sent through
//! `to-b`'s root qdisc like any kernel-forwarded frame, so the TBF there really applies.
//! Traffic towards A (the ACKs) is not limited.
//!
//! Path `i` is next hop `i`, link `i`, VNI `100 + i`, underlay subnet `172.31.<i>.0/24`.
//! Gateway A's group (the split under test) is set with [`ShapedPathsLab::set_split`];
//! gateway B sends back over all paths equally. Everything is removed on drop.

use std::{
    net::Ipv4Addr,
    ops::RangeInclusive,
    time::{Duration, Instant},
};

use dwcp_common::{maps::programs, wire::ETH_HLEN, Counters, FlowKey, NextHopTable};
use serde::Deserialize;
use thiserror::Error;

use crate::lab::kernel_neighbour;
use crate::lab::UNDERLAY_MTU;
use crate::lab::{program_paths, GatewayPath, LabError, PassProgram};
use crate::netlab;
use crate::netlab::NetlabError;
use crate::netlab::Netns;
use crate::utilisation::sock_diag::tcp_bytes_received;
use crate::utilisation::sock_diag::SockDiagError;
use dwcp_dataplane::build_table;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::DataplaneError;
use dwcp_dataplane::Member;
use dwcp_dataplane::Pinning;

#[derive(Debug, Error)]
pub enum ShapedLabError {
    #[error(transparent)]
    Netlab(#[from] NetlabError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("path capacities: {0}")]
    BadCapacity(String),
    #[error("split: {0}")]
    BadSplit(String),
    #[error("UDP flows: {0}")]
    BadUdpFlows(String),
    #[error("shaper statistics of path {path}: {detail}")]
    ShaperStats { path: u32, detail: String },
    #[error(transparent)]
    SockDiag(#[from] SockDiagError),
    #[error("the lab's dataplanes are not started")]
    NotStarted,
}

pub type Result<T, E = ShapedLabError> = std::result::Result<T, E>;

/// The group of the route to the other region, on both gateways.
pub const SHAPED_LAB_GROUP: u32 = 1;
/// Path `i` carries VNI `SHAPED_LAB_VNI_BASE + i`.
pub const SHAPED_LAB_VNI_BASE: u32 = 100;
/// The regions' IP MTU (the underlay carries 1600 to fit VXLAN).
pub const REGION_MTU: u32 = 1500;
/// Most paths a lab may have: one byte of the underlay subnet each, and a group's members.
pub const MAX_SHAPED_PATHS: usize = dwcp_common::MAX_GROUP_MEMBERS;
/// Queue of each shaper, in time at its rate: a WAN router's buffer of a few tens of ms.
pub const SHAPER_QUEUE: Duration = Duration::from_millis(25);

/// The wire's port towards gateway B: its root qdisc is the path's shaper.
const WIRE_TO_B: &str = "to-b";
const WIRE_TO_A: &str = "to-a";

/// One rate-limited underlay path.
pub struct ShapedPath {
    /// Next-hop id = link id.
    pub id: u32,
    pub vni: u32,
    /// `ul<id>` on both gateways.
    pub ifname: String,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
    /// Rate of the shaper towards B, bit/s of underlay frames (Ethernet header included).
    pub capacity_bps: u64,
    pub wire: Netns,
}

/// A shaper's counters (what its root qdisc sent and dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ShaperStats {
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
}

impl ShaperStats {
    pub fn since(&self, earlier: &ShaperStats) -> ShaperStats {
        ShaperStats {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            packets: self.packets.saturating_sub(earlier.packets),
            drops: self.drops.saturating_sub(earlier.drops),
        }
    }
}

impl ShapedPath {
    /// Limits the path to `capacity_bps` towards B (TBF at the wire's `to-b`).
    pub fn shape(&self) -> Result<()> {
        let rate = format!("{}bit", self.capacity_bps);
        let burst = shaper_burst_bytes(self.capacity_bps).to_string();
        let latency = format!("{}ms", SHAPER_QUEUE.as_millis());
        self.wire.exec(&[
            "tc", "qdisc", "replace", "dev", WIRE_TO_B, "root", "tbf", "rate", &rate, "burst",
            &burst, "latency", &latency,
        ])?;
        Ok(())
    }

    /// Removes the limit (back to the veth's default, no queue).
    pub fn unshape(&self) -> Result<()> {
        self.wire
            .exec(&["tc", "qdisc", "del", "dev", WIRE_TO_B, "root"])?;
        Ok(())
    }

    /// The shaper's counters so far.
    pub fn shaper_stats(&self) -> Result<ShaperStats> {
        let out = self
            .wire
            .exec(&["tc", "-s", "-j", "qdisc", "show", "dev", WIRE_TO_B])?;
        parse_shaper_stats(&out.stdout).map_err(|detail| ShapedLabError::ShaperStats {
            path: self.id,
            detail,
        })
    }

    /// What the shaper has passed on towards B, in frames and frame bytes: the `to-b`
    /// interface's transmit counters, read in-process from the namespace's `/proc/net/dev` (a
    /// millisecond, where a `tc` run can take a large part of a second on a busy machine: for
    /// timing windows).
    pub fn sent(&self) -> Result<InterfaceTx> {
        let text = self
            .wire
            .run_in(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?
            .map_err(|e| ShapedLabError::ShaperStats {
                path: self.id,
                detail: format!("reading /proc/net/dev: {e}"),
            })?;
        let tx =
            parse_proc_net_dev(&text, WIRE_TO_B).map_err(|detail| ShapedLabError::ShaperStats {
                path: self.id,
                detail,
            })?;
        // A veth whose peer runs XDP counts what it sends as the peer receives it, after the
        // Ethernet header was pulled (measured: 1478 bytes per 1492-byte frame the TBF
        // counted). Put the header back so the bytes are the shaper's.
        Ok(InterfaceTx {
            bytes: tx.bytes + tx.packets * ETH_HLEN as u64,
            packets: tx.packets,
        })
    }
}

/// An interface's transmit counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceTx {
    pub bytes: u64,
    pub packets: u64,
}

/// Reads `ifname`'s transmit bytes and packets from `/proc/net/dev` text.
pub fn parse_proc_net_dev(text: &str, ifname: &str) -> std::result::Result<InterfaceTx, String> {
    let line = text
        .lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == ifname).then_some(rest)
        })
        .ok_or_else(|| format!("no interface {ifname} in /proc/net/dev"))?;
    // 8 receive fields, then transmit bytes and packets.
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{ifname}: unreadable counters: {e}"))?;
    match fields.get(8..10) {
        Some(&[bytes, packets]) => Ok(InterfaceTx { bytes, packets }),
        _ => Err(format!("{ifname}: {} counters, expected 16", fields.len())),
    }
}

/// Token-bucket depth: at least a few full underlay frames, else 1 ms at the rate. Small
/// enough that a burst cannot carry a measurable share of a run above the rate.
pub fn shaper_burst_bytes(capacity_bps: u64) -> u64 {
    (capacity_bps / 8 / 1000).max(10 * u64::from(UNDERLAY_MTU))
}

/// Reads the root qdisc's counters from `tc -s -j qdisc show dev <dev>`.
pub fn parse_shaper_stats(json: &[u8]) -> std::result::Result<ShaperStats, String> {
    #[derive(Deserialize)]
    struct Qdisc {
        #[serde(default)]
        root: bool,
        #[serde(flatten)]
        stats: ShaperStats,
    }
    let qdiscs: Vec<Qdisc> =
        serde_json::from_slice(json).map_err(|e| format!("unreadable tc output: {e}"))?;
    qdiscs
        .into_iter()
        .find(|q| q.root)
        .map(|q| q.stats)
        .ok_or_else(|| "no root qdisc".to_string())
}

/// The lab. Fields drop in order: programs are detached before the namespaces go.
pub struct ShapedPathsLab {
    gw_a_dataplane: Option<Dataplane>,
    gw_b_dataplane: Option<Dataplane>,
    /// `XDP_PASS` on the hosts' and wires' veths, so native redirects into them arrive.
    pass_program: Option<PassProgram>,
    split: Option<NextHopTable>,
    /// Interfaces whose program fell back to generic XDP (then a veth's qdisc would apply to
    /// redirected frames, and the fast path's cost differs from a real gateway's).
    pub generic_attachments: Vec<String>,
    pub paths: Vec<ShapedPath>,
    pub host_a: Netns,
    pub gw_a: Netns,
    pub gw_b: Netns,
    pub host_b: Netns,
}

pub const HOST_A_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const HOST_B_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const GW_A_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const GW_B_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const PREFIX_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
const PREFIX_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 0);

/// A host and its gateway, joined by `eth0` -- `lan0`.
fn region(tag: &str, n: u8, host_ip: Ipv4Addr, gw_ip: Ipv4Addr) -> Result<(Netns, Netns)> {
    let host = Netns::new(&format!("{tag}-h{n}"))?;
    let gw = Netns::new(&format!("{tag}-g{n}"))?;
    netlab::veth(&host, "eth0", &gw, "lan0")?;
    netlab::addr(&host, "eth0", &format!("{host_ip}/24"))?;
    host.ip(&["route", "add", "default", "via", &gw_ip.to_string()])?;
    // Hosts send finished checksums (see `lab`): XDP-redirected CHECKSUM_PARTIAL frames would
    // arrive with bad ones.
    host.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    // Load generators reuse fixed client ports (the same flows in every run): a socket left
    // in TIME_WAIT would make the next run's bind fail, so the hosts keep none.
    host.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
    // Nor does a run inherit the previous run's congestion state: the kernel would start new
    // connections to the same host from the cached ssthresh of the last ones.
    host.sysctl("net.ipv4.tcp_no_metrics_save", "1")?;
    netlab::addr(&gw, "lan0", &format!("{gw_ip}/24"))?;
    gw.sysctl("net.ipv4.ip_forward", "1")?;
    for conf in ["all", "default", "lan0"] {
        gw.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
    }
    Ok((host, gw))
}

/// Checks path capacities: 1 to `MAX_SHAPED_PATHS` of them, none zero.
pub fn validate_capacities(capacities_bps: &[u64]) -> Result<()> {
    if capacities_bps.is_empty() || capacities_bps.len() > MAX_SHAPED_PATHS {
        return Err(ShapedLabError::BadCapacity(format!(
            "{} paths given, 1 to {MAX_SHAPED_PATHS} allowed",
            capacities_bps.len()
        )));
    }
    if let Some(i) = capacities_bps.iter().position(|&c| c == 0) {
        return Err(ShapedLabError::BadCapacity(format!(
            "path {} has capacity 0",
            i + 1
        )));
    }
    Ok(())
}

impl ShapedPathsLab {
    /// Builds the namespaces, links, wires and shapers (path `i + 1` limited to
    /// `capacities_bps[i]`); [`ShapedPathsLab::start`] then loads and programs dwcp.
    pub fn build(tag: &str, capacities_bps: &[u64]) -> Result<ShapedPathsLab> {
        validate_capacities(capacities_bps)?;
        let (host_a, gw_a) = region(tag, 1, HOST_A_IP, GW_A_LAN_IP)?;
        let (host_b, gw_b) = region(tag, 2, HOST_B_IP, GW_B_LAN_IP)?;
        let mtu = UNDERLAY_MTU.to_string();
        let mut paths = Vec::new();
        for (i, &capacity_bps) in capacities_bps.iter().enumerate() {
            let id = i as u32 + 1;
            let wire = Netns::new(&format!("{tag}-w{id}"))?;
            let ifname = format!("ul{id}");
            netlab::veth(&gw_a, &ifname, &wire, WIRE_TO_A)?;
            netlab::veth(&gw_b, &ifname, &wire, WIRE_TO_B)?;
            wire.ip(&["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
            for port in [WIRE_TO_A, WIRE_TO_B] {
                wire.ip(&["link", "set", port, "mtu", &mtu, "master", "br0"])?;
            }
            wire.ip(&["link", "set", "br0", "up"])?;
            let path = ShapedPath {
                id,
                vni: SHAPED_LAB_VNI_BASE + id,
                a_ip: Ipv4Addr::new(172, 31, id as u8, 1),
                b_ip: Ipv4Addr::new(172, 31, id as u8, 2),
                ifname,
                capacity_bps,
                wire,
            };
            for (gw, ip) in [(&gw_a, path.a_ip), (&gw_b, path.b_ip)] {
                gw.ip(&["link", "set", &path.ifname, "mtu", &mtu])?;
                netlab::addr(gw, &path.ifname, &format!("{ip}/24"))?;
                gw.sysctl(&format!("net.ipv4.conf.{}.rp_filter", path.ifname), "0")?;
            }
            path.shape()?;
            paths.push(path);
        }
        Ok(ShapedPathsLab {
            gw_a_dataplane: None,
            gw_b_dataplane: None,
            pass_program: None,
            split: None,
            generic_attachments: Vec::new(),
            paths,
            host_a,
            gw_a,
            gw_b,
            host_b,
        })
    }

    /// Loads dwcp on both gateways and programs them: routes to the other region over a group
    /// of all paths (equal weights until [`ShapedPathsLab::set_split`]), decapsulation of every
    /// path's VNI. Hosts and wires get `XDP_PASS` programs.
    pub fn start(&mut self) -> Result<()> {
        let mut a_paths = Vec::new();
        let mut b_paths = Vec::new();
        for p in &self.paths {
            // The underlay peers' MACs as the kernels' neighbour tables learn them (ARP).
            let b_seen_by_a = kernel_neighbour(&self.gw_a, &p.ifname, p.b_ip)?;
            let a_seen_by_b = kernel_neighbour(&self.gw_b, &p.ifname, p.a_ip)?;
            a_paths.push(GatewayPath {
                nexthop: p.id,
                link_id: p.id,
                ifindex: self.gw_a.ifindex(&p.ifname)?,
                vni: p.vni,
                local_ip: p.a_ip,
                remote_ip: p.b_ip,
                local_mac: self.gw_a.mac(&p.ifname)?,
                remote_mac: b_seen_by_a,
                monitor: None,
                handoff: None,
            });
            b_paths.push(GatewayPath {
                nexthop: p.id,
                link_id: p.id,
                ifindex: self.gw_b.ifindex(&p.ifname)?,
                vni: p.vni,
                local_ip: p.b_ip,
                remote_ip: p.a_ip,
                local_mac: self.gw_b.mac(&p.ifname)?,
                remote_mac: a_seen_by_b,
                monitor: None,
                handoff: None,
            });
        }
        let ifnames: Vec<String> = self.paths.iter().map(|p| p.ifname.clone()).collect();
        let (a_dp, a_generic) = program_gateway(&self.gw_a, &ifnames, &a_paths, PREFIX_B)?;
        let (b_dp, b_generic) = program_gateway(&self.gw_b, &ifnames, &b_paths, PREFIX_A)?;
        self.gw_a_dataplane = Some(a_dp);
        self.gw_b_dataplane = Some(b_dp);
        self.generic_attachments.extend(a_generic);
        self.generic_attachments.extend(b_generic);
        let mut pass_on: Vec<(&Netns, Vec<&str>)> =
            vec![(&self.host_a, vec!["eth0"]), (&self.host_b, vec!["eth0"])];
        for p in &self.paths {
            pass_on.push((&p.wire, vec![WIRE_TO_A, WIRE_TO_B]));
        }
        let mut pass = PassProgram::load()?;
        for (ns, ifnames) in pass_on {
            for ifname in ifnames {
                if ns.run_in(|| pass.attach(ifname))?? == dwcp_dataplane::AttachMode::Generic {
                    self.generic_attachments
                        .push(format!("{}:{ifname}", ns.name()));
                }
            }
        }
        self.pass_program = Some(pass);
        let equal: Vec<Member> = self
            .paths
            .iter()
            .map(|p| Member {
                nexthop: p.id,
                weight: 1,
                path: Default::default(),
            })
            .collect();
        self.set_split(&equal)?;
        Ok(())
    }

    fn gw_a_dataplane(&mut self) -> Result<&mut Dataplane> {
        self.gw_a_dataplane
            .as_mut()
            .ok_or(ShapedLabError::NotStarted)
    }

    /// Programs gateway A's split towards B (atomic table swap); members name path ids.
    /// The table is built from scratch, as a freshly started agent builds it, so a split's
    /// table (and which flows take which path) does not depend on the splits set before it.
    /// Returns the bucket table now in the fast path.
    pub fn set_split(&mut self, members: &[Member]) -> Result<NextHopTable> {
        if let Some(m) = members
            .iter()
            .find(|m| !self.paths.iter().any(|p| p.id == m.nexthop))
        {
            return Err(ShapedLabError::BadSplit(format!(
                "next hop {} is not a path of the lab (1 to {})",
                m.nexthop,
                self.paths.len()
            )));
        }
        let table = build_table(members, None).map_err(|source| DataplaneError::Group {
            group: SHAPED_LAB_GROUP,
            source,
        })?;
        self.gw_a_dataplane()?
            .set_group_table(SHAPED_LAB_GROUP, &table)?;
        self.split = Some(table);
        Ok(table)
    }

    /// The bucket table of gateway A's split.
    pub fn split_table(&self) -> Option<&NextHopTable> {
        self.split.as_ref()
    }

    pub fn path_ids(&self) -> Vec<u32> {
        self.paths.iter().map(|p| p.id).collect()
    }

    pub fn capacities_bps(&self) -> Vec<u64> {
        self.paths.iter().map(|p| p.capacity_bps).collect()
    }

    /// Gateway A's per-next-hop counters (what its fast path sent on each path), path order.
    pub fn nexthop_counters(&self) -> Result<Vec<Counters>> {
        let dp = self
            .gw_a_dataplane
            .as_ref()
            .ok_or(ShapedLabError::NotStarted)?;
        self.paths
            .iter()
            .map(|p| Ok(dp.nexthop_counters(p.id)?))
            .collect()
    }

    /// Payload bytes host B's TCP sockets on `local_ports` (its servers) have received so far.
    pub fn host_b_bytes_received(&self, local_ports: RangeInclusive<u16>) -> Result<u64> {
        Ok(self.host_b.run_in(|| tcp_bytes_received(local_ports))??)
    }

    /// Every path's shaper counters, path order.
    pub fn shaper_stats(&self) -> Result<Vec<ShaperStats>> {
        self.paths.iter().map(ShapedPath::shaper_stats).collect()
    }

    /// Sends one small UDP packet on each of `count` flows from host A to host B (destination
    /// ports `first_port..`), paced so the gateway's receive ring does not overflow. Returns
    /// the flows as the fast path hashes them.
    pub fn send_udp_flows(&self, count: u16, first_port: u16) -> Result<Vec<FlowKey>> {
        if u32::from(first_port) + u32::from(count) > u32::from(u16::MAX) + 1 || first_port == 0 {
            return Err(ShapedLabError::BadUdpFlows(format!(
                "first_port {first_port}: no room for {count} flows"
            )));
        }
        let io = |what: &str, source| {
            ShapedLabError::Netlab(NetlabError::Spawn {
                cmd: format!("{what} ({count} UDP flows from host A)"),
                source,
            })
        };
        // Bound in host A's namespace, it stays there whichever thread sends.
        let sock = self
            .host_a
            .run_in(|| std::net::UdpSocket::bind((HOST_A_IP, 0)))?
            .map_err(|e| io("binding the socket", e))?;
        let src_port = sock
            .local_addr()
            .map_err(|e| io("reading its port", e))?
            .port();
        let forwarded =
            || -> Result<u64> { Ok(self.nexthop_counters()?.iter().map(|c| c.packets).sum()) };
        let before = forwarded()?;
        let mut flows = Vec::with_capacity(usize::from(count));
        for batch in (0..count).collect::<Vec<_>>().chunks(SEND_BATCH) {
            for i in batch {
                let dst_port = first_port + i;
                sock.send_to(&[0x55u8; 32], (HOST_B_IP, dst_port))
                    .map_err(|e| io("sending", e))?;
                flows.push(FlowKey {
                    src: [u32::from(HOST_A_IP), 0, 0, 0],
                    dst: [u32::from(HOST_B_IP), 0, 0, 0],
                    src_port,
                    dst_port,
                    proto: dwcp_common::wire::IPPROTO_UDP,
                });
            }
            // The next batch leaves only once the fast path has forwarded this one: never more
            // frames in flight than the LAN veth's ring holds, so none is lost before the
            // program, whatever the load, and the split can be checked exactly.
            let deadline = Instant::now() + SEND_WAIT;
            while forwarded()? - before < flows.len() as u64 {
                if Instant::now() > deadline {
                    return Err(LabError::Timeout {
                        what: format!(
                            "the fast path forwarding {} of the {} flows sent",
                            flows.len(),
                            count
                        ),
                        waited: SEND_WAIT,
                    }
                    .into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(flows)
    }
}

/// Flows [`ShapedPathsLab::send_udp_flows`] sends before it waits for the fast path: well
/// under the 256 frames of a veth's XDP ring.
const SEND_BATCH: usize = 32;
/// How long a batch may take to cross the fast path (a pause of the VM included).
const SEND_WAIT: Duration = Duration::from_secs(5);

/// Loads dwcp in `gw`, attaches it (LAN program on `lan0`, underlay program on every path's
/// interface `ifnames`), and programs one route to `remote_prefix`/24 over a group of all
/// paths, plus the VNIs it terminates, as the other labs do ([`program_paths`]). Returns the
/// dataplane and the interfaces attached in generic mode.
fn program_gateway(
    gw: &Netns,
    ifnames: &[String],
    paths: &[GatewayPath],
    remote_prefix: Ipv4Addr,
) -> Result<(Dataplane, Vec<String>)> {
    let lan = crate::lab::Lan::of(gw, "lan0")?;
    let name = gw.name().to_string();
    let paths = paths.to_vec();
    let ifnames = ifnames.to_vec();
    gw.run_in(move || -> Result<(Dataplane, Vec<String>)> {
        let mut dp = Dataplane::load(Pinning::None).map_err(LabError::from)?;
        let mut generic = Vec::new();
        for (prog, ifname) in std::iter::once((programs::LAN_INGRESS, "lan0")).chain(
            ifnames
                .iter()
                .map(|i| (programs::UNDERLAY_INGRESS, i.as_str())),
        ) {
            let (_, mode) = dp.attach(prog, ifname).map_err(LabError::from)?;
            if mode == dwcp_dataplane::AttachMode::Generic {
                generic.push(format!("{name}:{ifname}"));
            }
        }
        program_paths(&mut dp, lan, remote_prefix, SHAPED_LAB_GROUP, &paths)?;
        Ok((dp, generic))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaper_stats_from_tc_json() {
        let json = br#"[{"kind":"tbf","handle":"8001:","root":true,"refcnt":3,"options":{"rate":6250000,"burst":16000,"lat":25000},"bytes":90,"packets":1,"drops":2,"overlimits":0,"requeues":0,"backlog":0,"qlen":0}]"#;
        assert_eq!(
            parse_shaper_stats(json).unwrap(),
            ShaperStats {
                bytes: 90,
                packets: 1,
                drops: 2
            }
        );
        assert!(parse_shaper_stats(b"[]").unwrap_err().contains("no root"));
        assert!(parse_shaper_stats(b"Cannot find device")
            .unwrap_err()
            .contains("unreadable"));
        let later = ShaperStats {
            bytes: 100,
            packets: 3,
            drops: 2,
        };
        assert_eq!(
            later.since(&parse_shaper_stats(json).unwrap()),
            ShaperStats {
                bytes: 10,
                packets: 2,
                drops: 0
            }
        );
    }

    #[test]
    fn transmit_counters_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  to-b: 1234567    890    0    0    0     0          0         0 98765432   65432    0    0    0     0       0          0
";
        assert_eq!(
            parse_proc_net_dev(text, "to-b").unwrap(),
            InterfaceTx {
                bytes: 98_765_432,
                packets: 65_432
            }
        );
        assert!(parse_proc_net_dev(text, "to-a")
            .unwrap_err()
            .contains("no interface to-a"));
        assert!(parse_proc_net_dev("  to-b: 1 2 x\n", "to-b")
            .unwrap_err()
            .contains("unreadable"));
        assert!(parse_proc_net_dev("  to-b: 1 2 3\n", "to-b")
            .unwrap_err()
            .contains("3 counters"));
    }

    #[test]
    fn capacities_are_checked() {
        assert!(validate_capacities(&[50_000_000, 100_000_000]).is_ok());
        let e = validate_capacities(&[]).unwrap_err().to_string();
        assert!(e.contains("0 paths"), "{e}");
        let e = validate_capacities(&[1; 9]).unwrap_err().to_string();
        assert!(e.contains("9 paths"), "{e}");
        let e = validate_capacities(&[5, 0]).unwrap_err().to_string();
        assert!(e.contains("path 2"), "{e}");
    }

    #[test]
    fn burst_holds_several_frames_and_a_millisecond() {
        assert_eq!(shaper_burst_bytes(50_000_000), 16_000);
        assert_eq!(shaper_burst_bytes(1_000_000_000), 125_000);
    }
}
