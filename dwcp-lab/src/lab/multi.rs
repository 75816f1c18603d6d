//! An N-region lab (3 to 10 regions) in network namespaces: per region a host and a gateway
//! (`host -- gw` on `10.<n>.0.0/24`), and per inter-region link a "wire" namespace between the
//! two gateways (`gw a == wire == gw b`, a bridge inside) where the link can be cut silently
//! with an nftables drop rule and healed again; taking a veth down would not do, since the
//! gateways would see the carrier go.
//!
//! Regions sit in a ring (3 regions: a triangle), a ring with chords (alternative paths:
//! every region has at least 3 links from 4 regions on), or a full mesh. Link `i` uses underlay
//! `172.16.<i>.0/24` (`.1` on its lower-numbered region's gateway, `.2` on the other) on
//! interfaces `ul<i>`, MTU 1600 (VXLAN adds 50 bytes to the regions' 1500).
//!
//! The lab builds the network only; agents (or a static program) run on the gateways. With
//! [`Naming::Stable`] the namespaces keep fixed names and outlive the process, so `lab status`,
//! `lab fail`, `lab heal` and `lab down` find them from another command.

use std::{net::Ipv4Addr, time::Duration};

use crate::netlab;
use crate::netlab::run;
use crate::netlab::Netns;
use dwcp_control::topology::geo::latency_prior_ms;
use dwcp_control::topology::GatewayConfig;
use dwcp_control::topology::LinkConfig;
use dwcp_control::topology::RegionConfig;
use dwcp_control::topology::TopologyConfig;
use dwcp_control::topology::TunnelKind;

use super::multilink::{tunnel_ip, Side};
use super::{LabError, Result, UNDERLAY_MTU};

pub const MIN_REGIONS: usize = 3;
pub const MAX_REGIONS: usize = 10;
/// Default prefix of stable lab names (`dwcp-lab-g1`, `dwcp-lab-w3`, ...).
pub const STABLE_PREFIX: &str = "dwcp-lab";
/// nftables table of a cut link (in the wire namespace).
const CUT_TABLE: &str = "dwcp_cut";

/// How the regions are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Region i to i+1 and the last to the first (3 regions: a triangle).
    Ring,
    /// The ring, then chords across it: region i to i + n/2 for i up to n - n/2 (rounded
    /// down), so every region has 3 links (one region 4 when n is odd), the paths between
    /// far regions are short, and each cut leaves alternatives. The ring's links keep their ids.
    Chords,
    /// Every region to every other.
    FullMesh,
}

/// One region of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRegion {
    /// 1-based.
    pub n: u8,
    pub name: String,
    /// Name of the region's gateway (`[gateway] name`).
    pub gateway: String,
    pub prefix: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub gw_lan_ip: Ipv4Addr,
}

/// One link of the plan, between regions `a < b`.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedLink {
    pub id: u32,
    pub name: String,
    pub a: u8,
    pub b: u8,
    /// Interface of the link on both gateways.
    pub interface: String,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
    /// Round-trip latency the wire emulates (netem, half each way) when the kernel has it.
    pub latency_ms: Option<f64>,
}

/// Regions, links and addresses: everything about the lab that needs no kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct LabPlan {
    pub shape: Shape,
    pub regions: Vec<PlannedRegion>,
    pub links: Vec<PlannedLink>,
    /// The seed's three regions (names, coordinates, link figures of
    /// `tests/fixtures/three_regions.toml`) rather than generated ones.
    pub seed: bool,
    /// The links' kind: VXLAN (the fast path encapsulates) or WireGuard (a tunnel per link
    /// made by `dwcp-tunnels`, see [`LabPlan::with_wireguard`]).
    pub tunnels: TunnelKind,
    /// Makes the WireGuard devices' names unique on the host (wireguard-go's socket directory
    /// is shared by all namespaces): a hash of the lab's namespace prefix.
    device_tag: String,
}

impl LabPlan {
    pub fn new(regions: usize, shape: Shape) -> Result<LabPlan> {
        if !(MIN_REGIONS..=MAX_REGIONS).contains(&regions) {
            return Err(LabError::Regions {
                asked: regions,
                min: MIN_REGIONS,
                max: MAX_REGIONS,
            });
        }
        let planned: Vec<PlannedRegion> = (1..=regions as u8)
            .map(|n| PlannedRegion {
                n,
                name: format!("region-{n}"),
                gateway: format!("gw-{n}"),
                prefix: Ipv4Addr::new(10, n, 0, 0),
                host_ip: Ipv4Addr::new(10, n, 0, 2),
                gw_lan_ip: Ipv4Addr::new(10, n, 0, 1),
            })
            .collect();
        let pairs: Vec<(u8, u8)> = match shape {
            // A 3-region ring is the triangle; larger rings close with (1, n).
            Shape::Ring => (1..=regions as u8)
                .map(|a| {
                    let b = if a as usize == regions { 1 } else { a + 1 };
                    (a.min(b), a.max(b))
                })
                .collect(),
            Shape::Chords => {
                let n = regions as u8;
                let ring = (1..=n).map(|a| if a == n { (1, n) } else { (a, a + 1) });
                let chords = (1..=n - n / 2)
                    .map(|a| (a, a + n / 2))
                    .filter(|&(a, b)| b - a > 1 && (a, b) != (1, n));
                ring.chain(chords).collect()
            }
            Shape::FullMesh => (1..=regions as u8)
                .flat_map(|a| (a + 1..=regions as u8).map(move |b| (a, b)))
                .collect(),
        };
        let links = pairs
            .into_iter()
            .enumerate()
            .map(|(i, (a, b))| {
                let id = i as u32 + 1;
                PlannedLink {
                    id,
                    name: format!("r{a}-r{b}"),
                    a,
                    b,
                    interface: format!("ul{id}"),
                    a_ip: Ipv4Addr::new(172, 16, id as u8, 1),
                    b_ip: Ipv4Addr::new(172, 16, id as u8, 2),
                    // A figure, not None: the lab emulates it where netem exists, and where
                    // it does not the agents route on it rather than on measured RTTs of
                    // microseconds, which would pick routes by noise.
                    latency_ms: Some(longitude_latency_ms(a, b)),
                }
            })
            .collect();
        Ok(LabPlan {
            shape,
            regions: planned,
            links,
            seed: false,
            tunnels: TunnelKind::Vxlan,
            device_tag: String::new(),
        })
    }

    /// The seed's triangle: us-east-1, eu-west-1 and ap-south-1 with their gateways, links 1
    /// (use1-euw1, 80 ms), 2 (euw1-aps1, 120 ms) and 3 (use1-aps1, 200 ms), as in
    /// `tests/fixtures/three_regions.toml` (embedded).
    pub fn seed() -> LabPlan {
        let mut p = LabPlan::new(3, Shape::Ring).expect("3 regions");
        for (r, (name, gw)) in p.regions.iter_mut().zip(
            super::triangle::REGIONS
                .iter()
                .zip(super::triangle::GATEWAYS),
        ) {
            r.name = name.to_string();
            r.gateway = gw.to_string();
        }
        let topo = seed_topology_file();
        for l in &mut p.links {
            let seed = topo
                .links
                .iter()
                .find(|s| s.get_ref().link_id == l.id)
                .expect("the seed has links 1 to 3");
            l.name = seed.get_ref().name.clone();
            l.latency_ms = seed.get_ref().latency_ms;
        }
        p.seed = true;
        p
    }

    /// The lab `cargo xtask lab up --regions n` builds: the seed for 3, else a ring with
    /// chords.
    pub fn for_regions(n: usize) -> Result<LabPlan> {
        if n == 3 {
            Ok(LabPlan::seed())
        } else {
            LabPlan::new(n, Shape::Chords)
        }
    }

    /// The plan with WireGuard links: link `i` is device [`LabPlan::wireguard_device`] on both
    /// gateways, tunnel addresses `10.254.<i>.1` (region `a`) and `.2`, listen port 51819 + `i`,
    /// probed inside the tunnel. `prefix` is the lab's namespace prefix.
    pub fn with_wireguard(mut self, prefix: &str) -> LabPlan {
        self.tunnels = TunnelKind::Wireguard;
        self.device_tag = interface_tag(prefix);
        self
    }

    /// Region `n`'s WireGuard device of `link`: at most 13 bytes (`wg15g10abcdef`).
    pub fn wireguard_device(&self, link: &PlannedLink, n: u8) -> String {
        format!("wg{}g{n}{}", link.id, self.device_tag)
    }

    /// Region `n`'s end of `link` inside its WireGuard tunnel, and the peer's.
    pub fn tunnel_ips(link: &PlannedLink, n: u8) -> (Ipv4Addr, Ipv4Addr) {
        let (me, peer) = if link.a == n {
            (Side::A, Side::B)
        } else {
            (Side::B, Side::A)
        };
        (tunnel_ip(link.id, me), tunnel_ip(link.id, peer))
    }

    /// The WireGuard listen port of `link` (the same at both ends).
    pub fn wireguard_port(link: &PlannedLink) -> u16 {
        51819 + link.id as u16
    }

    /// A region by name or 1-based number.
    pub fn region(&self, key: &str) -> Option<&PlannedRegion> {
        let n = key.parse::<u8>().ok();
        self.regions
            .iter()
            .find(|r| Some(r.n) == n || r.name == key)
    }

    /// The link between two regions (names or numbers), in either order.
    pub fn link_between(&self, a: &str, b: &str) -> Result<&PlannedLink> {
        let unknown = |k: &str| LabError::UnknownRegion {
            name: k.to_string(),
            known: self.regions.iter().map(|r| r.name.clone()).collect(),
        };
        let ra = self.region(a).ok_or_else(|| unknown(a))?.n;
        let rb = self.region(b).ok_or_else(|| unknown(b))?.n;
        self.links
            .iter()
            .find(|l| (l.a, l.b) == (ra.min(rb), ra.max(rb)))
            .ok_or_else(|| LabError::UnknownLink(format!("{a} -- {b}")))
    }

    pub fn link(&self, key: &str) -> Option<&PlannedLink> {
        let id = key.parse::<u32>().ok();
        self.links
            .iter()
            .find(|l| Some(l.id) == id || l.name == key)
    }

    /// The lab as a topology (`[[region]]`, `[[link]]`): the shared part of every gateway's
    /// agent.toml. Regions sit 10 degrees of longitude apart on the equator; each link is
    /// 1 Gbit/s with the latency of that distance's fibre.
    pub fn topology(&self) -> TopologyConfig {
        let underlay = |n: u8| {
            self.links
                .iter()
                .find_map(|l| {
                    (l.a == n)
                        .then_some(l.a_ip)
                        .or((l.b == n).then_some(l.b_ip))
                })
                .unwrap_or(Ipv4Addr::new(10, n, 0, 1))
        };
        if self.seed {
            // The seed's figures; the lab's links are the fast path's VXLAN, and each
            // gateway's underlay address is the lab's.
            let mut t = seed_topology_file();
            for l in &mut t.links {
                l.get_mut().kind = self.tunnels;
            }
            for (r, planned) in t.regions.iter_mut().zip(&self.regions) {
                r.get_mut().gateways = vec![GatewayConfig {
                    name: planned.gateway.clone(),
                    underlay: underlay(planned.n).into(),
                }];
            }
            return t;
        }
        let regions = self
            .regions
            .iter()
            .map(|r| RegionConfig {
                name: r.name.clone(),
                description: format!("lab region {}", r.n),
                latitude: 0.0,
                longitude: 10.0 * f64::from(r.n),
                country: "ZZ".into(),
                provider: "lab".into(),
                capacity_mbps: 10_000.0,
                gateways: vec![GatewayConfig {
                    name: r.gateway.clone(),
                    underlay: underlay(r.n).into(),
                }],
            })
            .collect();
        let links = self
            .links
            .iter()
            .map(|l| LinkConfig {
                name: l.name.clone(),
                latency_ms: l.latency_ms,
                kind: self.tunnels,
                ..LinkConfig::new(
                    l.id,
                    &self.regions[l.a as usize - 1].name,
                    &self.regions[l.b as usize - 1].name,
                    1000.0,
                )
            })
            .collect();
        TopologyConfig::from_entries(regions, links, vec![])
    }

    /// The agent.toml of region `n`'s gateway (the daemon's schema, as `deploy/agent.toml`):
    /// its LAN interface, one `[[local_link]]` per link of the region, every region's prefix,
    /// the API socket, and the lab's topology.
    pub fn agent_config(
        &self,
        n: u8,
        pin_dir: &std::path::Path,
        socket: &std::path::Path,
    ) -> String {
        // The topology first: its top-level keys (`edge = []`) must precede every table.
        self.topology_text() + "\n" + &self.local_config(n, pin_dir, socket)
    }

    /// [`LabPlan::topology`] as a topology file (what `dwcp topology push` takes).
    pub fn topology_text(&self) -> String {
        toml::to_string(&self.topology()).expect("a topology serialises")
    }

    /// The part of region `n`'s agent.toml that is the gateway's own (all of it but the
    /// topology): what its file holds when the topology comes from the cluster store.
    pub fn local_config(
        &self,
        n: u8,
        pin_dir: &std::path::Path,
        socket: &std::path::Path,
    ) -> String {
        let me = &self.regions[n as usize - 1];
        let mut s = format!(
            "[gateway]\nname = \"{}\"\nregion = \"{}\"\npin_dir = \"{}\"\n\
             lan_interfaces = [\"lan0\"]\n\n",
            me.gateway,
            me.name,
            pin_dir.display()
        );
        for l in self.links.iter().filter(|l| l.a == n || l.b == n) {
            if self.tunnels == TunnelKind::Wireguard {
                // Probed inside the tunnel: the probes' addresses are the tunnel's.
                let (local, peer) = LabPlan::tunnel_ips(l, n);
                s += &format!(
                    "[[local_link]]\nlink = \"{}\"\nkind = \"wireguard\"\ninterface = \"{}\"\n\
                     local_ip = \"{local}\"\npeer_ip = \"{peer}\"\n\n",
                    l.name,
                    self.wireguard_device(l, n)
                );
                continue;
            }
            let (local, peer) = if l.a == n {
                (l.a_ip, l.b_ip)
            } else {
                (l.b_ip, l.a_ip)
            };
            s += &format!(
                "[[local_link]]\nlink = \"{}\"\ninterface = \"{}\"\nlocal_ip = \"{local}\"\n\
                 peer_ip = \"{peer}\"\nmtu = {UNDERLAY_MTU}\n\n",
                l.name, l.interface
            );
        }
        for r in &self.regions {
            s += &format!(
                "[[prefixes]]\nregion = \"{}\"\nprefixes = [\"{}/24\"]\n\n",
                r.name, r.prefix
            );
        }
        s += &format!("[api]\nsocket = \"{}\"\n", socket.display());
        s
    }
}

/// The tag of the interface names the lab with namespace prefix `prefix` makes outside its
/// namespaces (the ending of every WireGuard device name, the etcd cluster's bridge): 6 hex
/// digits of its FNV-1a hash (stable; two labs on one host differ in their prefixes).
pub fn interface_tag(prefix: &str) -> String {
    let hash = prefix.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{:06x}", hash & 0xff_ffff)
}

/// Regions sit 10 degrees of longitude apart on the equator ([`LabPlan::topology`]): the
/// round-trip prior of the fibre between two of them, to a tenth of a millisecond.
fn longitude_latency_ms(a: u8, b: u8) -> f64 {
    let (la, lb) = (10.0 * f64::from(a), 10.0 * f64::from(b));
    (latency_prior_ms(0.0, la, 0.0, lb) * 10.0).round() / 10.0
}

/// How the lab's namespaces are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `dwcp-<tag>-<pid>-<n>`: unique to this process, removed when the lab drops (tests).
    Unique(String),
    /// `<prefix>-h<n>`, `<prefix>-g<n>`, `<prefix>-w<link>`: fixed, kept when the lab drops
    /// (`cargo xtask lab`).
    Stable(String),
}

/// A built lab. Its namespaces are removed when it drops, unless it was built with
/// [`Naming::Stable`].
pub struct MultiRegionLab {
    pub plan: LabPlan,
    /// Per region (index n-1): host and gateway namespaces.
    pub hosts: Vec<Netns>,
    pub gateways: Vec<Netns>,
    /// Per link (index id-1).
    pub wires: Vec<Netns>,
    /// Built with stable names: the namespaces outlive this value.
    stable: bool,
    delayed: bool,
}

impl Drop for MultiRegionLab {
    fn drop(&mut self) {
        if self.stable {
            for ns in self
                .hosts
                .drain(..)
                .chain(self.gateways.drain(..))
                .chain(self.wires.drain(..))
            {
                ns.keep();
            }
        }
    }
}

fn create(naming: &Naming, role: &str) -> Result<Netns> {
    Ok(match naming {
        Naming::Unique(tag) => Netns::new(&format!("{tag}{role}"))?,
        Naming::Stable(prefix) => Netns::create_named(format!("{prefix}-{role}"))?,
    })
}

impl MultiRegionLab {
    /// Builds the namespaces, veths, addresses and wires of `plan`. On failure, whatever was
    /// built is removed again.
    pub fn build(plan: &LabPlan, naming: &Naming) -> Result<MultiRegionLab> {
        let mut lab = MultiRegionLab {
            plan: plan.clone(),
            hosts: Vec::new(),
            gateways: Vec::new(),
            wires: Vec::new(),
            stable: false,
            delayed: true,
        };
        // Guards made so far live in `lab`, so an early return removes them (stable names
        // too: a half-built lab is no use to anyone).
        lab.build_inner(naming)?;
        lab.stable = matches!(naming, Naming::Stable(_));
        Ok(lab)
    }

    fn build_inner(&mut self, naming: &Naming) -> Result<()> {
        for r in &self.plan.regions.clone() {
            let host = create(naming, &format!("h{}", r.n))?;
            self.hosts.push(host);
            let gw = create(naming, &format!("g{}", r.n))?;
            self.gateways.push(gw);
            let (host, gw) = (
                &self.hosts[r.n as usize - 1],
                &self.gateways[r.n as usize - 1],
            );
            netlab::veth(host, "eth0", gw, "lan0")?;
            netlab::addr(host, "eth0", &format!("{}/24", r.host_ip))?;
            host.ip(&["route", "add", "default", "via", &r.gw_lan_ip.to_string()])?;
            // Finished checksums from the host (see the two-region lab).
            host.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
            netlab::addr(gw, "lan0", &format!("{}/24", r.gw_lan_ip))?;
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            gw.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            gw.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        let mtu = UNDERLAY_MTU.to_string();
        for l in &self.plan.links.clone() {
            let wire = create(naming, &format!("w{}", l.id))?;
            self.wires.push(wire);
            let wire = &self.wires[l.id as usize - 1];
            let (ga, gb) = (
                &self.gateways[l.a as usize - 1],
                &self.gateways[l.b as usize - 1],
            );
            netlab::veth(ga, &l.interface, wire, "wa")?;
            netlab::veth(gb, &l.interface, wire, "wb")?;
            wire.ip(&["link", "add", "br0", "type", "bridge"])?;
            for port in ["wa", "wb"] {
                wire.ip(&["link", "set", port, "mtu", &mtu])?;
                wire.ip(&["link", "set", port, "master", "br0"])?;
            }
            wire.ip(&["link", "set", "br0", "mtu", &mtu])?;
            wire.ip(&["link", "set", "br0", "up"])?;
            for (gw, ip) in [(ga, l.a_ip), (gb, l.b_ip)] {
                gw.ip(&["link", "set", &l.interface, "mtu", &mtu])?;
                netlab::addr(gw, &l.interface, &format!("{ip}/24"))?;
                gw.sysctl(&format!("net.ipv4.conf.{}.rp_filter", l.interface), "0")?;
            }
            // Static neighbours: probes never wait for ARP behind a cut wire, so a healed
            // link answers at the next probe (agents learn them from netlink).
            for (gw, peer, peer_ip) in [(ga, gb, l.b_ip), (gb, ga, l.a_ip)] {
                let mac = dwcp_control::config::Mac(peer.mac(&l.interface)?).to_string();
                gw.ip(&[
                    "neigh",
                    "replace",
                    &peer_ip.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    &l.interface,
                    "nud",
                    "permanent",
                ])?;
            }
            // The link's latency, half each way on the wire's egress ports, where the kernel
            // has netem (CONFIG_NET_SCH_NETEM); without it the wire is a plain bridge.
            if let Some(rtt) = l.latency_ms {
                let half = format!("{}us", (rtt * 500.0).round() as u64);
                for port in ["wa", "wb"] {
                    let added = wire.exec(&[
                        "tc", "qdisc", "add", "dev", port, "root", "netem", "delay", &half,
                    ]);
                    self.delayed &= added.is_ok();
                }
            }
        }
        Ok(())
    }

    /// Whether every link with a latency has it emulated (netem); false when the kernel has
    /// no netem and the latencies are only the topology's figures.
    pub fn latency_emulated(&self) -> bool {
        self.delayed
    }

    fn wire(&self, link: &str) -> Result<(&PlannedLink, &Netns)> {
        let l = self
            .plan
            .link(link)
            .ok_or_else(|| LabError::UnknownLink(link.to_string()))?;
        Ok((l, &self.wires[l.id as usize - 1]))
    }

    /// Cuts `link` (id or name) silently: both gateways keep their carrier, frames vanish.
    pub fn fail(&self, link: &str) -> Result<()> {
        let (_, wire) = self.wire(link)?;
        cut(wire.name())
    }

    pub fn heal(&self, link: &str) -> Result<()> {
        let (_, wire) = self.wire(link)?;
        uncut(wire.name())
    }

    pub fn is_cut(&self, link: &str) -> Result<bool> {
        let (_, wire) = self.wire(link)?;
        Ok(is_cut(wire.name()))
    }

    /// Whether gateway `a` of `link` reaches gateway `b` over it (one ping, 1 s timeout).
    pub fn link_answers(&self, link: &str) -> Result<bool> {
        let (l, _) = self.wire(link)?;
        let ga = &self.gateways[l.a as usize - 1];
        Ok(ga
            .exec(&[
                "ping",
                "-c1",
                "-W1",
                "-I",
                &l.interface,
                &l.b_ip.to_string(),
            ])
            .is_ok())
    }
}

fn cut(wire_ns: &str) -> Result<()> {
    if is_cut(wire_ns) {
        return Ok(());
    }
    let ruleset = format!(
        "add table bridge {CUT_TABLE}; add chain bridge {CUT_TABLE} forward \
         {{ type filter hook forward priority 0; policy drop; }}"
    );
    run(&["ip", "netns", "exec", wire_ns, "nft", &ruleset])?;
    Ok(())
}

fn uncut(wire_ns: &str) -> Result<()> {
    if is_cut(wire_ns) {
        run(&[
            "ip", "netns", "exec", wire_ns, "nft", "delete", "table", "bridge", CUT_TABLE,
        ])?;
    }
    Ok(())
}

fn is_cut(wire_ns: &str) -> bool {
    run(&[
        "ip", "netns", "exec", wire_ns, "nft", "list", "table", "bridge", CUT_TABLE,
    ])
    .is_ok()
}

/// The seed's topology file (embedded), parsed.
fn seed_topology_file() -> TopologyConfig {
    toml::from_str(super::triangle::TOPOLOGY).expect("the embedded seed topology parses")
}

/// The namespaces of a stable lab with `prefix`, as `ip netns list` shows them.
pub fn stable_namespaces(prefix: &str) -> Vec<String> {
    let Ok(out) = run(&["ip", "netns", "list"]) else {
        return Vec::new();
    };
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|role| {
                    role.len() > 1
                        && matches!(role.as_bytes()[0], b'h' | b'g' | b'w')
                        && role[1..].chars().all(|c| c.is_ascii_digit())
                })
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// One line per link of a stable lab: wire namespace and whether it is cut.
pub fn stable_link_states(prefix: &str) -> Vec<(String, bool)> {
    stable_namespaces(prefix)
        .into_iter()
        .filter(|n| n[prefix.len() + 1..].starts_with('w'))
        .map(|n| {
            let cut = is_cut(&n);
            (n, cut)
        })
        .collect()
}

/// Cuts or heals link `id` of a stable lab.
pub fn stable_set_cut(prefix: &str, id: u32, cut_it: bool) -> Result<()> {
    let wire = format!("{prefix}-w{id}");
    if !stable_namespaces(prefix).contains(&wire) {
        return Err(LabError::UnknownLink(id.to_string()));
    }
    if cut_it {
        cut(&wire)
    } else {
        uncut(&wire)
    }
}

/// Removes every namespace of a stable lab (and with them its interfaces). Returns what was
/// removed.
pub fn stable_down(prefix: &str) -> Result<Vec<String>> {
    let names = stable_namespaces(prefix);
    for n in &names {
        run(&["ip", "netns", "del", n])?;
    }
    // `ip netns del` returns before the kernel has released the namespace's devices.
    std::thread::sleep(Duration::from_millis(50));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_regions_in_a_ring_are_a_triangle() {
        let ring = LabPlan::new(3, Shape::Ring).unwrap();
        let mesh = LabPlan::new(3, Shape::FullMesh).unwrap();
        let pairs = |p: &LabPlan| {
            let mut v: Vec<(u8, u8)> = p.links.iter().map(|l| (l.a, l.b)).collect();
            v.sort();
            v
        };
        assert_eq!(pairs(&ring), vec![(1, 2), (1, 3), (2, 3)]);
        assert_eq!(pairs(&ring), pairs(&mesh));
    }

    #[test]
    fn every_ring_has_degree_two_and_unique_addresses() {
        for n in MIN_REGIONS..=MAX_REGIONS {
            let p = LabPlan::new(n, Shape::Ring).unwrap();
            assert_eq!(p.links.len(), n);
            for r in 1..=n as u8 {
                let degree = p.links.iter().filter(|l| l.a == r || l.b == r).count();
                assert_eq!(degree, 2, "region {r} of {n}");
            }
            let mut ips: Vec<Ipv4Addr> = p.links.iter().flat_map(|l| [l.a_ip, l.b_ip]).collect();
            ips.sort();
            ips.dedup();
            assert_eq!(ips.len(), 2 * n);
            let mesh = LabPlan::new(n, Shape::FullMesh).unwrap();
            assert_eq!(mesh.links.len(), n * (n - 1) / 2);
        }
    }

    #[test]
    fn chords_keep_the_ring_and_give_every_region_three_links() {
        for n in 4..=MAX_REGIONS {
            let p = LabPlan::new(n, Shape::Chords).unwrap();
            let ring = LabPlan::new(n, Shape::Ring).unwrap();
            assert_eq!(p.links[..n], ring.links[..], "the ring's ids stay");
            let mut pairs: Vec<(u8, u8)> = p.links.iter().map(|l| (l.a, l.b)).collect();
            pairs.sort();
            pairs.dedup();
            assert_eq!(pairs.len(), p.links.len(), "{n}: a pair linked twice");
            for r in 1..=n as u8 {
                let degree = p.links.iter().filter(|l| l.a == r || l.b == r).count();
                assert!((3..=4).contains(&degree), "region {r} of {n}: {degree}");
            }
            let text = toml::to_string(&p.topology()).unwrap();
            dwcp_control::topology::Topology::from_toml_str(&text)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
        let six: Vec<(u8, u8)> = LabPlan::new(6, Shape::Chords).unwrap().links[6..]
            .iter()
            .map(|l| (l.a, l.b))
            .collect();
        assert_eq!(six, [(1, 4), (2, 5), (3, 6)]);
        // 10 degrees of the equator is about 1,100 km: a round trip of some 15 ms.
        let rtt =
            |n: usize, id: usize| LabPlan::new(n, Shape::Chords).unwrap().links[id].latency_ms;
        let one_hop = rtt(6, 0).unwrap();
        assert!((10.0..20.0).contains(&one_hop), "{one_hop}");
        let chord = rtt(6, 6).unwrap();
        assert!(
            (chord - 3.0 * one_hop).abs() < 0.2,
            "region 1 to 4, 30 degrees: {chord}"
        );
        assert_eq!(LabPlan::for_regions(6).unwrap().shape, Shape::Chords);
    }

    #[test]
    fn the_default_lab_is_the_seeds_triangle() {
        let p = LabPlan::for_regions(3).unwrap();
        assert!(p.seed);
        let names: Vec<&str> = p.regions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["us-east-1", "eu-west-1", "ap-south-1"]);
        let links: Vec<(u32, &str, u8, u8, Option<f64>)> = p
            .links
            .iter()
            .map(|l| (l.id, l.name.as_str(), l.a, l.b, l.latency_ms))
            .collect();
        assert_eq!(
            links,
            [
                (1, "use1-euw1", 1, 2, Some(80.0)),
                (2, "euw1-aps1", 2, 3, Some(120.0)),
                (3, "use1-aps1", 1, 3, Some(200.0)),
            ]
        );
        assert_eq!(p.link_between("eu-west-1", "us-east-1").unwrap().id, 1);
        assert_eq!(p.link_between("3", "1").unwrap().id, 3);
        let e = p
            .link_between("us-east-1", "mars-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mars-1") && e.contains("ap-south-1"), "{e}");
        // The agent's topology: the seed's figures, VXLAN links, the lab's underlay addresses.
        let text = p.agent_config(
            2,
            std::path::Path::new("/p"),
            std::path::Path::new("/s.sock"),
        );
        let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(doc["gateway"]["name"].as_str(), Some("gw-euw1-a"));
        assert_eq!(doc["gateway"]["region"].as_str(), Some("eu-west-1"));
        let mut topo = toml::Table::new();
        for k in ["region", "link", "edge"] {
            topo.insert(k.into(), doc[k].clone());
        }
        let t = dwcp_control::topology::Topology::from_toml_str(&toml::to_string(&topo).unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(t.links().len(), 3);
        assert!(!text.contains("wireguard"), "{text}");
        assert!(text.contains("latency_ms = 200.0"), "{text}");
        assert!(text.contains("underlay = \"172.16.1.2\""), "{text}");
        assert!(!LabPlan::for_regions(4).unwrap().seed);
    }

    #[test]
    fn a_wireguard_plan_gives_each_gateway_its_tunnels_probed_inside() {
        let p = LabPlan::for_regions(10).unwrap().with_wireguard("dwcp-lab");
        for l in &p.links {
            for n in [l.a, l.b] {
                let dev = p.wireguard_device(l, n);
                assert!(dev.len() <= 15, "{dev}");
            }
        }
        assert_ne!(interface_tag("dwcp-lab"), interface_tag("dwcp-lab2"));
        let seed = LabPlan::for_regions(3).unwrap().with_wireguard("x");
        let text = seed.agent_config(2, std::path::Path::new("/p"), std::path::Path::new("/s"));
        let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let local = doc["local_link"].as_array().unwrap();
        // eu-west-1: link 1 (the b end, .2) and link 2 (the a end, .1).
        let l1 = &local[0];
        assert_eq!(l1["kind"].as_str(), Some("wireguard"));
        assert_eq!(l1["local_ip"].as_str(), Some("10.254.1.2"));
        assert_eq!(l1["peer_ip"].as_str(), Some("10.254.1.1"));
        assert_eq!(
            l1["interface"].as_str(),
            Some(format!("wg1g2{}", interface_tag("x")).as_str())
        );
        assert_eq!(local[1]["local_ip"].as_str(), Some("10.254.2.1"));
        assert!(doc["link"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["kind"].as_str() == Some("wireguard")));
    }

    #[test]
    fn region_counts_outside_3_to_10_are_refused() {
        for n in [0, 1, 2, 11, 200] {
            let e = LabPlan::new(n, Shape::Ring).unwrap_err();
            assert!(e.to_string().contains(&n.to_string()), "{e}");
        }
    }

    #[test]
    fn the_plans_topology_validates() {
        let p = LabPlan::new(10, Shape::Ring).unwrap();
        let text = toml::to_string(&p.topology()).unwrap();
        let t = dwcp_control::topology::Topology::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(t.regions().len(), 10);
        assert_eq!(t.links().len(), 10);
        assert_eq!(p.link("r1-r2").unwrap().id, 1);
        assert_eq!(p.link("10").unwrap().name, "r1-r10");
        assert!(p.link("r1-r5").is_none());
    }

    #[test]
    fn each_gateways_config_names_its_own_links_and_every_prefix() {
        let p = LabPlan::new(4, Shape::Ring).unwrap();
        let text = p.agent_config(
            1,
            std::path::Path::new("/sys/fs/bpf/dwcp-lab/g1"),
            std::path::Path::new("/run/dwcp-lab/g1.sock"),
        );
        let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(doc["gateway"]["region"].as_str(), Some("region-1"));
        let local: Vec<(&str, &str, &str)> = doc["local_link"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["link"].as_str().unwrap(),
                    l["local_ip"].as_str().unwrap(),
                    l["peer_ip"].as_str().unwrap(),
                )
            })
            .collect();
        // Region 1 of a 4-ring: link 1 to region 2 and link 4 to region 4.
        assert_eq!(
            local,
            vec![
                ("r1-r2", "172.16.1.1", "172.16.1.2"),
                ("r1-r4", "172.16.4.1", "172.16.4.2")
            ]
        );
        assert_eq!(doc["prefixes"].as_array().unwrap().len(), 4);
        assert_eq!(
            doc["api"].as_table().unwrap().keys().collect::<Vec<_>>(),
            vec!["socket"]
        );
        assert_eq!(doc["api"]["socket"].as_str(), Some("/run/dwcp-lab/g1.sock"));
        // The topology part validates as the topology module's schema.
        let mut topo = toml::Table::new();
        for k in ["region", "link"] {
            topo.insert(k.into(), doc[k].clone());
        }
        let t = dwcp_control::topology::Topology::from_toml_str(&toml::to_string(&topo).unwrap())
            .unwrap();
        assert_eq!(t.links().len(), 4);
        let r4 = p.agent_config(4, std::path::Path::new("/p"), std::path::Path::new("/s"));
        assert!(r4.contains("local_ip = \"172.16.4.2\"\npeer_ip = \"172.16.4.1\""));
    }
}
