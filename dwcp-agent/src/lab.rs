//! A two-region lab in network namespaces: host A -- gateway A == underlay == gateway B --
//! host B. The gateways run dwcp's XDP programs; the kernels of the gateways have no route to
//! the other region, so traffic between the hosts can only cross through the fast path.
//!
//! Used by the demo (`cargo xtask demo`), the end-to-end tests and the forwarding benchmark.
//! [`multi`] builds the N-region lab (ring or full mesh, links that can be cut).

use std::net::Ipv4Addr;

use dwcp_common::{
    maps::programs, GatewayConfig, Neighbour, NeighbourKey, NextHop, QosClass, QosPolicy, Route,
    VniEntry, CONFIG_F_READY, NH_F_VALID, QOS_F_REWRITE,
};
use thiserror::Error;

use crate::{
    dataplane::{AttachMode, Dataplane, DataplaneError, Member, Pinning},
    netlab::{self, NetlabError, Netns},
};

pub mod multi;

#[derive(Debug, Error)]
pub enum LabError {
    #[error(transparent)]
    Netlab(#[from] NetlabError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{asked} regions: the lab builds {min} to {max}")]
    Regions {
        asked: usize,
        min: usize,
        max: usize,
    },
    #[error("no link {0:?} in the lab")]
    UnknownLink(String),
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
    /// 10.<n>.0.0/24
    pub prefix: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub gw_lan_ip: Ipv4Addr,
    pub gw_underlay_ip: Ipv4Addr,
    pub dataplane: Option<Dataplane>,
    pub attach_mode: Option<AttachMode>,
    /// The host's `XDP_PASS` program (attached while this lives).
    pub host_program: Option<Dataplane>,
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
        let (a_dp, a_mode) = program_gateway(&self.a, &self.b, a_ul_mac, b_ul_mac)?;
        let (b_dp, b_mode) = program_gateway(&self.b, &self.a, b_ul_mac, a_ul_mac)?;
        self.a.dataplane = Some(a_dp);
        self.a.attach_mode = Some(a_mode);
        self.b.dataplane = Some(b_dp);
        self.b.attach_mode = Some(b_mode);
        for r in [&mut self.a, &mut self.b] {
            // Hosts: a trivial XDP_PASS program so native redirects into their veth arrive.
            let host_dp = r.host.run_in(|| -> Result<Dataplane> {
                let mut dp = Dataplane::load(Pinning::None)?;
                dp.attach(programs::PASS, "eth0")?;
                Ok(dp)
            })??;
            r.host_program = Some(host_dp);
        }
        Ok(())
    }
}

/// Programs `local`'s gateway with one route to `remote`'s prefix over the one underlay link.
fn program_gateway(
    local: &Region,
    remote: &Region,
    local_mac: [u8; 6],
    remote_mac: [u8; 6],
) -> Result<(Dataplane, AttachMode)> {
    let lan_if = local.gw.ifindex("lan0")?;
    let ul_if = local.gw.ifindex("ul0")?;
    let (local_ip, remote_ip, remote_prefix) =
        (local.gw_underlay_ip, remote.gw_underlay_ip, remote.prefix);
    let r = local
        .gw
        .run_in(move || -> Result<(Dataplane, AttachMode)> {
            let mut dp = Dataplane::load(Pinning::None)?;
            let (_, mode) = dp.attach(programs::LAN_INGRESS, "lan0")?;
            dp.attach(programs::UNDERLAY_INGRESS, "ul0")?;
            dp.add_port(lan_if)?;
            dp.add_port(ul_if)?;
            dp.set_nexthop(
                LAB_NEXTHOP,
                NextHop {
                    flags: NH_F_VALID,
                    link_id: LAB_NEXTHOP,
                    ifindex: ul_if,
                    vni: LAB_VNI,
                    local_ip4: local_ip.octets(),
                    remote_ip4: remote_ip.octets(),
                    via_ip4: remote_ip.octets(),
                    mtu: UNDERLAY_MTU,
                    inner_dst_mac: remote_mac,
                    _pad: [0; 2],
                },
            )?;
            dp.set_neighbour(
                NeighbourKey {
                    ifindex: ul_if,
                    ip4: remote_ip.octets(),
                },
                Neighbour {
                    mac: remote_mac,
                    if_mac: local_mac,
                    _pad: [0; 4],
                },
            )?;
            dp.set_group(
                LAB_GROUP,
                &[Member {
                    nexthop: LAB_NEXTHOP,
                    weight: 1,
                }],
            )?;
            dp.set_route(
                remote_prefix.into(),
                24,
                Route {
                    group_id: LAB_GROUP,
                    default_class: QosClass::BestEffort as u8,
                    _pad: [0; 3],
                },
            )?;
            dp.add_vni(
                LAB_VNI,
                VniEntry {
                    lan_ifindex: lan_if,
                    flags: 0,
                },
            )?;
            for c in QosClass::ALL {
                dp.set_qos_policy(
                    c as u8,
                    QosPolicy {
                        dscp: c.default_dscp(),
                        flags: QOS_F_REWRITE,
                        _pad: [0; 6],
                    },
                )?;
            }
            dp.set_config(GatewayConfig {
                hash_seed: LAB_SEED,
                flags: CONFIG_F_READY,
            })?;
            Ok((dp, mode))
        })??;
    Ok(r)
}
