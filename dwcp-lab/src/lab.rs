//! Two-region labs in network namespaces: host A -- gateway A == underlay == gateway B --
//! host B. The gateways run dwcp's XDP programs; the kernels of the gateways have no route to
//! the other region, so traffic between the hosts can only cross through the fast path.
//!
//! [`TwoRegionLab`] has one underlay link, programmed statically: the demo
//! (`cargo xtask demo`), the end-to-end tests and the forwarding benchmark use it.
//! [`MultiLinkLab`] has several monitored links that can be cut, probers and agent-side link
//! monitors, and pins everything so the agent can be stopped: the failover tests and
//! benchmark use it, with the sequenced streams of [`stream`].
//! [`multi`] builds the network of an N-region lab (3 to 10 regions, ring, ring with chords or
//! full mesh, links cut in wire namespaces), without programming it; [`loops`] counts the
//! datagrams of a stream that a gateway of it sends twice.

pub mod triangle;

use std::net::Ipv4Addr;

use dwcp_common::{
    maps::programs, GatewayConfig, LanPort, Neighbour, NextHop, QosClass, QosPolicy, Route,
    VniEntry, CONFIG_F_READY, NH_F_VALID, QOS_F_REWRITE,
};
use thiserror::Error;

use crate::netlab;
use crate::netlab::NetlabError;
use crate::netlab::Netns;
use dwcp_control::config::Prefix;
use dwcp_control::fast_path::{FastPath, FastPathError};
use dwcp_control::forwarding::{self, ForwardingState};
use dwcp_control::liveness::MonitorConfig;
use dwcp_control::plan::{with_link_ends, LinkEnds};
use dwcp_dataplane::AttachMode;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::DataplaneError;
use dwcp_dataplane::Member;
use dwcp_dataplane::Pinning;
use dwcp_dataplane::{build_table, GroupError};

pub mod live;
pub mod loops;
pub mod multi;
mod multilink;
mod pass;
pub mod stream;

pub use pass::PassProgram;

pub use multilink::{
    ports_on_nexthop, tunnel_ip, udp_flow_nexthop, wait_for, LinkCut, MultiLinkLab,
    PinnedLinkMonitor, ProberThread, Side, UnderlayLink, MULTI_LAB_GROUP, MULTI_LAB_VNI_BASE,
};

#[derive(Debug, Error)]
pub enum LabError {
    #[error(transparent)]
    Netlab(#[from] NetlabError),
    #[error("WireGuard tunnels: {0}")]
    Wireguard(String),
    // Boxed: these two are large, and every lab call returns this error type.
    #[error(transparent)]
    Dataplane(Box<DataplaneError>),
    #[error(transparent)]
    Prober(Box<dwcp_agent::prober::ProberError>),
    #[error(transparent)]
    SentMap(#[from] dwcp_agent::prober::SentMapError),
    #[error(transparent)]
    PinnedMap(#[from] dwcp_dataplane::PinnedMapError),
    #[error("programming the fast path: {0}")]
    Program(FastPathError),
    #[error("loading the lab's eBPF object: {0}")]
    LabObject(Box<aya::EbpfError>),
    #[error("program {program} of the lab's eBPF object: {source}")]
    LabProgram {
        program: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("building a next-hop table: {0}")]
    Table(#[from] GroupError),
    #[error("bpffs {path}: {detail}")]
    Pin {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("the lab needs 1 to {max} underlay links, not {asked}")]
    LinkCount { asked: usize, max: usize },
    #[error("{what} did not happen within {waited:?}")]
    Timeout {
        what: String,
        waited: std::time::Duration,
    },
    #[error("{asked} regions: the lab builds {min} to {max}")]
    Regions {
        asked: usize,
        min: usize,
        max: usize,
    },
    #[error("no link {0:?} in the lab")]
    UnknownLink(String),
    #[error("no region {name:?} in the lab (it has {})", known.join(", "))]
    UnknownRegion { name: String, known: Vec<String> },
}

impl From<DataplaneError> for LabError {
    fn from(e: DataplaneError) -> Self {
        LabError::Dataplane(Box::new(e))
    }
}

impl From<dwcp_agent::prober::ProberError> for LabError {
    fn from(e: dwcp_agent::prober::ProberError) -> Self {
        LabError::Prober(Box::new(e))
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// The hash seed of the lab's gateways.
pub const LAB_SEED: u32 = 0x6477_6370;
/// VNI = path id of the one path between the two regions.
pub const LAB_VNI: u32 = 100;
/// The single next hop / link / group id used on both gateways.
pub const LAB_NEXTHOP: u32 = 1;
pub const LAB_GROUP: u32 = 1;
pub const UNDERLAY_MTU: u32 = 1600;

/// One region: a host and its gateway.
pub struct Region {
    pub host: Netns,
    pub gw: Netns,
    /// `10.<n>.0.0/24`
    pub prefix: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub gw_lan_ip: Ipv4Addr,
    pub gw_underlay_ip: Ipv4Addr,
    pub dataplane: Option<Dataplane>,
    pub attach_mode: Option<AttachMode>,
    /// The host's `XDP_PASS` program (attached while this lives).
    pub host_program: Option<PassProgram>,
}

pub struct TwoRegionLab {
    pub a: Region,
    pub b: Region,
}

fn region(tag: &str, n: u8) -> Result<Region> {
    let host = Netns::new(&format!("{tag}-h{n}"))?;
    let gw = Netns::new(&format!("{tag}-g{n}"))?;
    netlab::veth(&host, "eth0", &gw, "lan0")?;
    let r = Region {
        prefix: Ipv4Addr::new(10, n, 0, 0),
        host_ip: Ipv4Addr::new(10, n, 0, 2),
        gw_lan_ip: Ipv4Addr::new(10, n, 0, 1),
        gw_underlay_ip: Ipv4Addr::new(172, 31, 0, n),
        host,
        gw,
        dataplane: None,
        attach_mode: None,
        host_program: None,
    };
    netlab::addr(&r.host, "eth0", &format!("{}/24", r.host_ip))?;
    r.host
        .ip(&["route", "add", "default", "via", &r.gw_lan_ip.to_string()])?;
    // A veth hands locally sent TCP/UDP to its peer with the checksum still to be filled in
    // (CHECKSUM_PARTIAL). Once XDP redirects the raw frame nobody completes it, so the far
    // host would drop it. Frames from a real NIC carry finished checksums: make the lab's
    // hosts compute theirs in software.
    r.host.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    netlab::addr(&r.gw, "lan0", &format!("{}/24", r.gw_lan_ip))?;
    r.gw.sysctl("net.ipv4.ip_forward", "1")?;
    r.gw.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    r.gw.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    Ok(r)
}

impl TwoRegionLab {
    /// Builds the namespaces and links; `start_dataplanes` then loads and programs dwcp.
    pub fn build(tag: &str) -> Result<TwoRegionLab> {
        let a = region(tag, 1)?;
        let b = region(tag, 2)?;
        netlab::veth(&a.gw, "ul0", &b.gw, "ul0")?;
        // VXLAN adds 50 bytes: the underlay carries 1600-byte packets so that the regions keep
        // a standard 1500-byte MTU (as VXLAN fabrics usually do).
        a.gw.ip(&["link", "set", "ul0", "mtu", &UNDERLAY_MTU.to_string()])?;
        b.gw.ip(&["link", "set", "ul0", "mtu", &UNDERLAY_MTU.to_string()])?;
        netlab::addr(&a.gw, "ul0", &format!("{}/24", a.gw_underlay_ip))?;
        netlab::addr(&b.gw, "ul0", &format!("{}/24", b.gw_underlay_ip))?;
        for r in [&a, &b] {
            r.gw.sysctl("net.ipv4.conf.ul0.rp_filter", "0")?;
            r.gw.sysctl("net.ipv4.conf.lan0.rp_filter", "0")?;
        }
        Ok(TwoRegionLab { a, b })
    }

    /// Loads dwcp on both gateways, attaches it and programs the route to the other region.
    pub fn start_dataplanes(&mut self) -> Result<()> {
        let a_ul_mac = self.a.gw.mac("ul0")?;
        let b_ul_mac = self.b.gw.mac("ul0")?;
        // The underlay peers' MACs as the kernels' neighbour tables know them (ARP).
        let b_seen_by_a = kernel_neighbour(&self.a.gw, "ul0", self.b.gw_underlay_ip)?;
        let a_seen_by_b = kernel_neighbour(&self.b.gw, "ul0", self.a.gw_underlay_ip)?;
        let (a_dp, a_mode) = program_gateway(&self.a, &self.b, a_ul_mac, b_seen_by_a)?;
        let (b_dp, b_mode) = program_gateway(&self.b, &self.a, b_ul_mac, a_seen_by_b)?;
        self.a.dataplane = Some(a_dp);
        self.a.attach_mode = Some(a_mode);
        self.b.dataplane = Some(b_dp);
        self.b.attach_mode = Some(b_mode);
        for r in [&mut self.a, &mut self.b] {
            // Hosts: a trivial XDP_PASS program so native redirects into their veth arrive.
            let mut pass = PassProgram::load()?;
            r.host.run_in(|| pass.attach("eth0"))??;
            r.host_program = Some(pass);
        }
        Ok(())
    }
}

/// Resolves `ip` on `dev` through the kernel (one ping triggers ARP) and returns the MAC the
/// kernel's neighbour table holds for it.
pub fn kernel_neighbour(ns: &Netns, dev: &str, ip: Ipv4Addr) -> Result<[u8; 6]> {
    let ip_s = ip.to_string();
    ns.exec(&["ping", "-c1", "-W2", "-I", dev, &ip_s])?;
    let out = ns.ip(&["-j", "neigh", "show", "dev", dev, "to", &ip_s])?;
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    entries
        .iter()
        .find_map(|e| e["lladdr"].as_str().and_then(netlab::parse_mac))
        .ok_or_else(|| {
            LabError::Netlab(NetlabError::Command {
                cmd: format!("ip neigh show dev {dev} to {ip_s}"),
                stderr: "no resolved neighbour".into(),
            })
        })
}

/// Programs `local`'s gateway with one route to `remote`'s prefix over the one underlay link.
fn program_gateway(
    local: &Region,
    remote: &Region,
    local_mac: [u8; 6],
    remote_mac: [u8; 6],
) -> Result<(Dataplane, AttachMode)> {
    let lan = Lan::of(&local.gw, "lan0")?;
    let path = GatewayPath {
        nexthop: LAB_NEXTHOP,
        link_id: LAB_NEXTHOP,
        ifindex: local.gw.ifindex("ul0")?,
        vni: LAB_VNI,
        local_ip: local.gw_underlay_ip,
        remote_ip: remote.gw_underlay_ip,
        local_mac,
        remote_mac,
        monitor: None,
        handoff: None,
    };
    let remote_prefix = remote.prefix;
    let r = local
        .gw
        .run_in(move || -> Result<(Dataplane, AttachMode)> {
            let mut dp = Dataplane::load(Pinning::None)?;
            let (_, mode) = dp.attach(programs::LAN_INGRESS, "lan0")?;
            dp.attach(programs::UNDERLAY_INGRESS, "ul0")?;
            program_paths(&mut dp, lan, remote_prefix, LAB_GROUP, &[path])?;
            Ok((dp, mode))
        })??;
    Ok(r)
}

/// One path from a gateway to the other region: a next hop (VXLAN with its own VNI) over one
/// underlay link.
#[derive(Clone, Debug)]
pub struct GatewayPath {
    pub nexthop: u32,
    pub link_id: u32,
    /// The underlay interface on this gateway.
    pub ifindex: u32,
    pub vni: u32,
    pub local_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    pub local_mac: [u8; 6],
    pub remote_mac: [u8; 6],
    /// `Some`: the link is monitored, with these settings (else only its underlay identity
    /// is in `LINK_CONFIG`, with the default probe rate for reflection).
    pub monitor: Option<MonitorConfig>,
    /// `Some(fwmark)`: a WireGuard link, handed off to the kernel with this mark (policy
    /// routing into the device `ifindex`); `local_ip` and `remote_ip` are then the tunnel's
    /// addresses, between which it is probed, and the MACs and VNI are unused.
    pub handoff: Option<u32>,
}

/// A gateway's LAN port.
#[derive(Clone, Copy, Debug)]
pub struct Lan {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

impl Lan {
    /// Interface `ifname` of `ns`.
    pub fn of(ns: &Netns, ifname: &str) -> Result<Lan> {
        Ok(Lan {
            ifindex: ns.ifindex(ifname)?,
            mac: ns.mac(ifname)?,
        })
    }

    /// Adds the port to `s`: a redirect target, and the LAN port whose MAC frames must carry.
    pub fn add_to(&self, s: &mut ForwardingState) {
        s.ports.insert(self.ifindex);
        s.lan_ports.insert(
            self.ifindex,
            LanPort {
                mac: self.mac,
                _pad: [0; 2],
            },
        );
    }
}

/// Programs a gateway whose LAN is `lan`: one route to `remote_prefix`/24 through group
/// `group`, whose members are `paths` (equal weights); each path's VNI terminates here too
/// (the other gateway sends back over the same paths). Ends by marking the gateway ready.
pub fn program_paths(
    dp: &mut Dataplane,
    lan: Lan,
    remote_prefix: Ipv4Addr,
    group: u32,
    paths: &[GatewayPath],
) -> Result<()> {
    program(dp, &paths_state(lan, remote_prefix, group, paths)?)
}

/// What [`program_paths`] writes, as the agent's model of the maps.
pub fn paths_state(
    lan: Lan,
    remote_prefix: Ipv4Addr,
    group: u32,
    paths: &[GatewayPath],
) -> Result<ForwardingState> {
    let mut s = ForwardingState::default();
    lan.add_to(&mut s);
    for p in paths {
        let monitor = p.monitor.unwrap_or_default();
        let liveness = p.monitor.map(|m| m.link_config()).unwrap_or_default();
        let ends = LinkEnds {
            local: p.local_ip,
            peer: p.remote_ip,
            via: p.remote_ip,
            ifindex: p.ifindex,
            auth: None,
        };
        s.links
            .insert(p.link_id, with_link_ends(liveness, ends, &monitor));
        if let Some(mark) = p.handoff {
            s.nexthops.insert(
                p.nexthop,
                NextHop::handoff(p.link_id, p.ifindex, mark)
                    .with_ends(p.local_ip.octets(), p.remote_ip.octets()),
            );
            continue;
        }
        s.ports.insert(p.ifindex);
        s.nexthops.insert(
            p.nexthop,
            NextHop {
                flags: NH_F_VALID,
                link_id: p.link_id,
                ifindex: p.ifindex,
                vni: p.vni,
                local_ip4: p.local_ip.octets(),
                remote_ip4: p.remote_ip.octets(),
                via_ip4: p.remote_ip.octets(),
                mtu: UNDERLAY_MTU,
                inner_dst_mac: p.remote_mac,
                _pad: [0; 2],
            },
        );
        s.neighbours.insert(
            (p.ifindex, p.remote_ip.octets()),
            Neighbour {
                mac: p.remote_mac,
                if_mac: p.local_mac,
                _pad: [0; 4],
            },
        );
        s.vnis.insert(
            p.vni,
            VniEntry {
                link_id: p.link_id,
                flags: 0,
            },
        );
    }
    let members: Vec<Member> = paths
        .iter()
        .map(|p| Member {
            nexthop: p.nexthop,
            weight: 1,
            path: Default::default(),
        })
        .collect();
    s.groups.insert(group, build_table(&members, None)?);
    s.routes.insert(
        Prefix {
            addr: remote_prefix.into(),
            len: 24,
        },
        Route {
            group_id: group,
            default_class: QosClass::BestEffort as u8,
            _pad: [0; 3],
        },
    );
    set_ready_with_default_qos(&mut s);
    Ok(s)
}

/// What every lab gateway has besides its paths: each class's default DSCP rewritten, the
/// lab's hash seed, and the ready flag.
pub fn set_ready_with_default_qos(s: &mut ForwardingState) {
    for c in QosClass::ALL {
        s.qos.insert(
            c as u8,
            QosPolicy {
                dscp: c.default_dscp(),
                flags: QOS_F_REWRITE,
                _pad: [0; 6],
            },
        );
    }
    s.config = Some(GatewayConfig {
        hash_seed: LAB_SEED,
        flags: CONFIG_F_READY,
        ..Default::default()
    });
}

/// Writes `desired` into the maps as the agent does: the difference from what they hold, in
/// the order `forwarding::diff` makes safe for packets in flight, through the same
/// [`FastPath`] the state owner writes through. The labs program gateways only this way.
pub fn program(dp: &mut Dataplane, desired: &ForwardingState) -> Result<()> {
    let have = dp.read_programmed().map_err(LabError::Program)?;
    for change in forwarding::diff(&have, desired) {
        dp.apply(&change).map_err(LabError::Program)?;
    }
    Ok(())
}
