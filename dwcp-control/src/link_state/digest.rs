//! The topology digest: a 64-bit fingerprint of the topology file a gateway runs with, carried
//! in every record so that gateways running different files notice.
//!
//! FNV-1a over a canonical byte form (big-endian numbers, length-prefixed strings, entries
//! sorted by name or link id), so it is the same in every process and on every machine: std's
//! `Hash` is not (its `RandomState` is seeded per process) and `#[derive(Hash)]` output is not
//! specified. It catches accidental differences; it authenticates nothing (issue 17 does).
use std::fmt;
use std::net::IpAddr;

use crate::topology::{
    EdgeConfig, GatewayConfig, LinkConfig, RegionConfig, RoutingHealth, TopologyConfig, TunnelKind,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopologyDigest(pub u64);

impl fmt::Display for TopologyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Digest of everything in the topology that changes what a gateway computes or forwards:
/// every field of regions (but the free-text description), gateways, links and edge nodes.
/// The order of entries in the file does not matter (region ids never leave a gateway).
pub fn topology_digest(config: &TopologyConfig) -> TopologyDigest {
    let mut h = Fnv::new();
    let mut regions: Vec<&RegionConfig> = config.regions.iter().map(|r| r.get_ref()).collect();
    regions.sort_by(|a, b| a.name.cmp(&b.name));
    h.u64(regions.len() as u64);
    for r in regions {
        h.str(&r.name);
        h.f64(r.latitude);
        h.f64(r.longitude);
        h.str(&r.country);
        h.str(&r.provider);
        h.f64(r.capacity_mbps);
        let mut gateways: Vec<&GatewayConfig> = r.gateways.iter().collect();
        gateways.sort_by(|a, b| a.name.cmp(&b.name));
        h.u64(gateways.len() as u64);
        for g in gateways {
            h.str(&g.name);
            h.ip(g.underlay);
        }
    }
    let mut links: Vec<&LinkConfig> = config.links.iter().map(|l| l.get_ref()).collect();
    links.sort_by_key(|l| l.link_id);
    h.u64(links.len() as u64);
    for l in links {
        h.u64(l.link_id.into());
        h.str(&l.name);
        h.str(&l.a);
        h.str(&l.b);
        h.byte(match l.kind {
            TunnelKind::Vxlan => 0,
            TunnelKind::Wireguard => 1,
            TunnelKind::Ipsec => 2,
            TunnelKind::Gre => 3,
        });
        h.f64(l.capacity_mbps);
        h.f64(l.utilisation);
        h.f64(l.cost_per_gb);
        h.opt_f64(l.latency_ms);
        h.f64(l.jitter_ms);
        h.f64(l.loss);
        h.byte(match l.health {
            RoutingHealth::Up => 0,
            RoutingHealth::Degraded => 1,
            RoutingHealth::Down => 2,
        });
    }
    let mut edges: Vec<&EdgeConfig> = config.edges.iter().map(|e| e.get_ref()).collect();
    edges.sort_by(|a, b| a.name.cmp(&b.name));
    h.u64(edges.len() as u64);
    for e in edges {
        h.str(&e.name);
        h.str(&e.region);
        h.opt_f64(e.latitude);
        h.opt_f64(e.longitude);
        h.opt_f64(e.access_latency_ms);
    }
    TopologyDigest(h.0)
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn byte(&mut self, b: u8) {
        self.bytes(&[b]);
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    /// -0.0 and 0.0 are the same figure.
    fn f64(&mut self, v: f64) {
        let v = if v == 0.0 { 0.0 } else { v };
        self.u64(v.to_bits());
    }

    fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            None => self.byte(0),
            Some(v) => {
                self.byte(1);
                self.f64(v);
            }
        }
    }

    /// Length first, so ("ab", "c") and ("a", "bc") differ.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.byte(4);
                self.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.byte(6);
                self.bytes(&v6.octets());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[[region]]
name = "us-east-1"
latitude = 38.9
longitude = -77.0
country = "US"
provider = "aws"
capacity_mbps = 10000.0
gateways = [{ name = "gw-use1-a", underlay = "192.0.2.10" }]

[[region]]
name = "eu-west-1"
description = "Dublin"
latitude = 53.3
longitude = -6.3
country = "IE"
provider = "aws"
capacity_mbps = 10000.0

[[link]]
link_id = 1
name = "use1-euw1"
a = "us-east-1"
b = "eu-west-1"
capacity_mbps = 1000.0
latency_ms = 80.0
"#;

    fn config(source: &str) -> TopologyConfig {
        TopologyConfig::from_toml_str(source).unwrap()
    }

    #[test]
    fn the_digest_is_pinned() {
        // Written down once: a change here means gateways of two builds disagree on every
        // topology, so it must be deliberate (and bump the wire version).
        assert_eq!(
            topology_digest(&config(TOML)).to_string(),
            "aed208ed1a90f421"
        );
    }

    #[test]
    fn entry_order_and_descriptions_do_not_matter() {
        let mut c = config(TOML);
        c.regions.reverse();
        for r in &mut c.regions {
            r.get_mut().description = "somewhere".into();
        }
        assert_eq!(topology_digest(&c), topology_digest(&config(TOML)));
    }

    #[test]
    fn any_routing_figure_changes_it() {
        let base = topology_digest(&config(TOML));
        let changes: [fn(&mut TopologyConfig); 5] = [
            |c| c.links[0].get_mut().capacity_mbps = 1001.0,
            |c| c.links[0].get_mut().latency_ms = None,
            |c| c.links[0].get_mut().link_id = 2,
            |c| c.regions[0].get_mut().gateways.clear(),
            |c| c.regions[1].get_mut().latitude = 53.4,
        ];
        for change in changes {
            let mut c = config(TOML);
            change(&mut c);
            assert_ne!(topology_digest(&c), base);
        }
    }
}
