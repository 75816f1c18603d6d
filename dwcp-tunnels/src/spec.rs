//! What a tunnel should be: the desired state the manager converges the kernel to.
//!
//! In TOML a tunnel is a table with its common fields and exactly one sub-table naming its
//! type, so a misspelt field is an error instead of a silently ignored key:
//!
//! ```toml
//! [[tunnel]]
//! name = "vx-eu1"
//! addresses = ["10.255.0.1/30"]
//! [tunnel.vxlan]
//! vni = 100
//! local = "192.0.2.1"
//! remote = "192.0.2.2"
//! ```

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use dwcp_common::wire::{IPV4_HLEN, IPV6_HLEN, UDP_HLEN, VNI_MAX, VXLAN_ENCAP_LEN, VXLAN_PORT};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    error::{Result, TunnelError},
    wireguard::PublicKey,
};

/// The tunnel types users ask for (the seed's list plus GENEVE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelType {
    Vxlan,
    #[serde(rename = "wireguard")]
    WireGuard,
    Gre,
    Geneve,
    Ipsec,
}

impl fmt::Display for TunnelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelType::Vxlan => "VXLAN",
            TunnelType::WireGuard => "WireGuard",
            TunnelType::Gre => "GRE",
            TunnelType::Geneve => "GENEVE",
            TunnelType::Ipsec => "IPsec/ESP",
        })
    }
}

/// One inter-region tunnel. `name` is both the tunnel's id and its device name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TunnelSpecToml", into = "TunnelSpecToml")]
pub struct TunnelSpec {
    pub name: String,
    /// Overlay addresses of this end, with their prefix (`10.255.0.1/30`).
    pub addresses: Vec<IpNet>,
    pub underlay: Underlay,
    /// Clamp the MSS of TCP SYNs crossing the device to its MTU (nftables). Without it,
    /// TCP relies on path MTU discovery through the tunnel.
    pub mss_clamp: bool,
    pub kind: TunnelKind,
}

/// Where the tunnel's packets travel, for its MTU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Underlay {
    /// Underlay interface. VXLAN also binds to it. Default: the route towards the remote.
    pub dev: Option<String>,
    /// Underlay MTU. Default: the MTU of `dev` (or of the interface of the route).
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    Vxlan(VxlanSpec),
    WireGuard(WireGuardSpec),
    Gre(GreSpec),
    Geneve(GeneveSpec),
    Ipsec(IpsecSpec),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanSpec {
    pub vni: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// UDP destination port; the IANA port unless a peer uses another (Linux's own
    /// default without `dstport` is 8472).
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    pub ttl: Option<u8>,
}

fn default_vxlan_port() -> u16 {
    VXLAN_PORT
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuardSpec {
    pub listen_port: u16,
    pub peer: WireGuardPeerSpec,
    /// Policy routing that takes packets the fast path hands over (marked) into this tunnel.
    pub handoff: Option<Handoff>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuardPeerSpec {
    /// The peer gateway's public key (base64, as `wg pubkey` prints it).
    pub public_key: PublicKey,
    /// Where to reach the peer; without it this end waits for the peer to call.
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses routed to and accepted from the peer.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives; also what keeps the handshake age meaningful for health.
    pub persistent_keepalive: Option<u16>,
    /// File (mode 0600) with the preshared key, base64 as `wg genpsk` writes it.
    pub preshared_key_file: Option<PathBuf>,
}

pub use dwcp_control::config::Handoff;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreSpec {
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub ttl: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneveSpec {
    pub vni: u32,
    pub remote: IpAddr,
    #[serde(default = "default_geneve_port")]
    pub port: u16,
}

fn default_geneve_port() -> u16 {
    6081
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpsecSpec {
    pub local: IpAddr,
    pub remote: IpAddr,
}

impl TunnelKind {
    pub fn tunnel_type(&self) -> TunnelType {
        match self {
            TunnelKind::Vxlan(_) => TunnelType::Vxlan,
            TunnelKind::WireGuard(_) => TunnelType::WireGuard,
            TunnelKind::Gre(_) => TunnelType::Gre,
            TunnelKind::Geneve(_) => TunnelType::Geneve,
            TunnelKind::Ipsec(_) => TunnelType::Ipsec,
        }
    }

    /// The underlay address the tunnel's packets go to, when the spec names one.
    pub fn remote(&self) -> Option<IpAddr> {
        match self {
            TunnelKind::Vxlan(v) => Some(v.remote),
            TunnelKind::WireGuard(w) => w.peer.endpoint.map(|e| e.ip()),
            TunnelKind::Gre(g) => Some(IpAddr::V4(g.remote)),
            TunnelKind::Geneve(g) => Some(g.remote),
            TunnelKind::Ipsec(i) => Some(i.remote),
        }
    }

    /// Bytes the encapsulation adds in front of an inner IP packet. An unknown WireGuard
    /// endpoint counts as IPv6, the larger header.
    pub fn overhead(&self) -> u32 {
        let outer_ip = |ip: Option<IpAddr>| match ip {
            Some(IpAddr::V4(_)) => IPV4_HLEN,
            _ => IPV6_HLEN,
        };
        let bytes = match self {
            // Outer IP + UDP + VXLAN + the inner Ethernet header.
            TunnelKind::Vxlan(v) => VXLAN_ENCAP_LEN - IPV4_HLEN + outer_ip(Some(v.remote)),
            // Outer IP + UDP + type/receiver/counter (16) + Poly1305 tag (16).
            TunnelKind::WireGuard(w) => outer_ip(w.peer.endpoint.map(|e| e.ip())) + UDP_HLEN + 32,
            // Outer IPv4 + the 4-byte GRE header without key or sequence numbers.
            TunnelKind::Gre(_) => IPV4_HLEN + 4,
            TunnelKind::Geneve(g) => VXLAN_ENCAP_LEN - IPV4_HLEN + outer_ip(Some(g.remote)),
            // ESP tunnel mode, worst case with AES-GCM: IP + ESP header/IV (16) + pad/trailer/ICV (2+16+3).
            TunnelKind::Ipsec(i) => outer_ip(Some(i.remote)) + 16 + 21,
        };
        bytes as u32
    }
}

/// The tunnel MTU for an underlay MTU.
pub fn tunnel_mtu(underlay_mtu: u32, kind: &TunnelKind) -> u32 {
    underlay_mtu.saturating_sub(kind.overhead())
}

/// The largest TCP MSS that fits a device MTU, per inner family.
pub fn mss_for_mtu(mtu: u32, ipv6: bool) -> u32 {
    mtu.saturating_sub(if ipv6 { 60 } else { 40 })
}

impl TunnelSpec {
    pub fn tunnel_type(&self) -> TunnelType {
        self.kind.tunnel_type()
    }

    /// Checks everything that can be checked without the kernel. The error names the tunnel
    /// and the offending field.
    pub fn validate(&self) -> Result<()> {
        validate_ifname(&self.name)?;
        let bad =
            |field: &str, reason: String| Err(TunnelError::invalid(&self.name, field, reason));
        if let Some(dev) = &self.underlay.dev {
            if validate_ifname(dev).is_err() {
                return bad(
                    "underlay.dev",
                    format!("`{dev}` is not a valid interface name"),
                );
            }
        }
        if let Some(mtu) = self.underlay.mtu {
            if !(576..=65535).contains(&mtu) {
                return bad("underlay.mtu", format!("{mtu} is outside 576..=65535"));
            }
            self.check_mtu(mtu)?;
        }
        match &self.kind {
            TunnelKind::Vxlan(v) => {
                if v.vni == 0 || v.vni > VNI_MAX {
                    return bad("vxlan.vni", format!("{} is outside 1..={VNI_MAX}", v.vni));
                }
                check_endpoints(&self.name, "vxlan", v.local, v.remote)?;
                if v.port == 0 {
                    return bad("vxlan.port", "0 is not a port".into());
                }
            }
            TunnelKind::WireGuard(w) => {
                if w.listen_port == 0 {
                    return bad(
                        "wireguard.listen_port",
                        "0 (a random port) cannot be given to the peer; choose a port".into(),
                    );
                }
                if w.peer.allowed_ips.is_empty() {
                    return bad(
                        "wireguard.peer.allowed_ips",
                        "empty: the tunnel would carry nothing".into(),
                    );
                }
                if w.peer.persistent_keepalive == Some(0) {
                    return bad(
                        "wireguard.peer.persistent_keepalive",
                        "0 means off; leave the field out instead".into(),
                    );
                }
                if let Some(e) = w.peer.endpoint {
                    if e.port() == 0 || e.ip().is_unspecified() || e.ip().is_multicast() {
                        return bad(
                            "wireguard.peer.endpoint",
                            format!("{e} is not a unicast endpoint"),
                        );
                    }
                }
                if let Some(h) = w.handoff {
                    if h.fwmark == 0 {
                        return bad("wireguard.handoff.fwmark", "0 marks nothing".into());
                    }
                    // 0 = unspecified, 253..=255 = default, main, local.
                    if h.table == 0 || (253..=255).contains(&h.table) {
                        return bad(
                            "wireguard.handoff.table",
                            format!("{} is a reserved routing table", h.table),
                        );
                    }
                }
            }
            TunnelKind::Gre(g) => {
                check_endpoints(&self.name, "gre", IpAddr::V4(g.local), IpAddr::V4(g.remote))?
            }
            TunnelKind::Geneve(g) => {
                if g.vni > VNI_MAX {
                    return bad("geneve.vni", format!("{} is outside 0..={VNI_MAX}", g.vni));
                }
                if g.remote.is_unspecified() || g.remote.is_multicast() {
                    return bad(
                        "geneve.remote",
                        format!("{} is not a unicast address", g.remote),
                    );
                }
            }
            TunnelKind::Ipsec(i) => check_endpoints(&self.name, "ipsec", i.local, i.remote)?,
        }
        Ok(())
    }

    /// Checks that the tunnel MTU for this underlay MTU carries the tunnel's addresses.
    pub fn check_mtu(&self, underlay_mtu: u32) -> Result<u32> {
        let mtu = tunnel_mtu(underlay_mtu, &self.kind);
        let needs = if self.addresses.iter().any(|a| a.addr().is_ipv6()) {
            1280 // IPv6 minimum link MTU
        } else {
            576
        };
        if mtu < needs {
            return Err(TunnelError::invalid(
                &self.name,
                "underlay.mtu",
                format!(
                    "underlay MTU {underlay_mtu} leaves {mtu} for the tunnel, below the {needs} \
                     its addresses need"
                ),
            ));
        }
        Ok(mtu)
    }
}

/// Interface names: 1..=15 bytes, no `/`, `:`, whitespace or control characters (the kernel's
/// `dev_valid_name`, plus `:` which `ip` reads as an alias).
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > 15 {
        Some(format!(
            "`{name}` must be 1 to 15 bytes long (it is the device name)"
        ))
    } else if name == "." || name == ".." {
        Some(format!("`{name}` is not a device name"))
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        Some(format!(
            "`{name}` may not contain `/`, `:`, spaces or non-ASCII characters"
        ))
    } else {
        None
    };
    match reason {
        Some(r) => Err(TunnelError::invalid(name, "name", r)),
        None => Ok(()),
    }
}

fn check_endpoints(tunnel: &str, kind: &str, local: IpAddr, remote: IpAddr) -> Result<()> {
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(TunnelError::invalid(
            tunnel,
            format!("{kind}.remote"),
            format!("{remote} and local {local} are of different address families"),
        ));
    }
    for (field, ip) in [("local", local), ("remote", remote)] {
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(TunnelError::invalid(
                tunnel,
                format!("{kind}.{field}"),
                format!("{ip} is not a unicast address"),
            ));
        }
    }
    if local == remote {
        return Err(TunnelError::invalid(
            tunnel,
            format!("{kind}.remote"),
            format!("{remote} is the local address too"),
        ));
    }
    Ok(())
}

/// The TOML/JSON shape: common fields plus exactly one table named after the type.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelSpecToml {
    name: String,
    #[serde(default)]
    addresses: Vec<IpNet>,
    #[serde(default)]
    underlay: Underlay,
    #[serde(default = "yes")]
    mss_clamp: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    vxlan: Option<VxlanSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wireguard: Option<WireGuardSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gre: Option<GreSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    geneve: Option<GeneveSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipsec: Option<IpsecSpec>,
}

fn yes() -> bool {
    true
}

impl TryFrom<TunnelSpecToml> for TunnelSpec {
    type Error = String;

    fn try_from(t: TunnelSpecToml) -> std::result::Result<Self, String> {
        let mut kinds = Vec::new();
        if let Some(v) = t.vxlan {
            kinds.push(TunnelKind::Vxlan(v));
        }
        if let Some(w) = t.wireguard {
            kinds.push(TunnelKind::WireGuard(w));
        }
        if let Some(g) = t.gre {
            kinds.push(TunnelKind::Gre(g));
        }
        if let Some(g) = t.geneve {
            kinds.push(TunnelKind::Geneve(g));
        }
        if let Some(i) = t.ipsec {
            kinds.push(TunnelKind::Ipsec(i));
        }
        if kinds.len() != 1 {
            let found: Vec<String> = kinds.iter().map(|k| k.tunnel_type().to_string()).collect();
            return Err(format!(
                "tunnel `{}`: needs exactly one of the tables vxlan, wireguard, gre, geneve, ipsec \
                 (found {})",
                t.name,
                if found.is_empty() { "none".to_string() } else { found.join(", ") }
            ));
        }
        Ok(TunnelSpec {
            name: t.name,
            addresses: t.addresses,
            underlay: t.underlay,
            mss_clamp: t.mss_clamp,
            kind: kinds.remove(0),
        })
    }
}

impl From<TunnelSpec> for TunnelSpecToml {
    fn from(s: TunnelSpec) -> Self {
        let mut t = TunnelSpecToml {
            name: s.name,
            addresses: s.addresses,
            underlay: s.underlay,
            mss_clamp: s.mss_clamp,
            vxlan: None,
            wireguard: None,
            gre: None,
            geneve: None,
            ipsec: None,
        };
        match s.kind {
            TunnelKind::Vxlan(v) => t.vxlan = Some(v),
            TunnelKind::WireGuard(w) => t.wireguard = Some(w),
            TunnelKind::Gre(g) => t.gre = Some(g),
            TunnelKind::Geneve(g) => t.geneve = Some(g),
            TunnelKind::Ipsec(i) => t.ipsec = Some(i),
        }
        t
    }
}

/// A file of tunnels: `[[tunnel]]` tables.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelsFile {
    #[serde(default, rename = "tunnel")]
    pub tunnels: Vec<TunnelSpec>,
}

impl TunnelsFile {
    /// Parses and validates; the error names the file position or the tunnel and field.
    pub fn parse(text: &str) -> Result<TunnelsFile, String> {
        let file: TunnelsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        for t in &file.tunnels {
            t.validate().map_err(|e| e.to_string())?;
            if !seen.insert(t.name.as_str()) {
                return Err(format!("tunnel `{}` is defined twice", t.name));
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan_toml(extra: &str) -> String {
        format!(
            r#"
[[tunnel]]
name = "vx-eu1"
addresses = ["10.255.0.1/30"]
[tunnel.vxlan]
vni = 100
local = "192.0.2.1"
remote = "192.0.2.2"
{extra}
"#
        )
    }

    #[test]
    fn vxlan_toml_parses_with_defaults() {
        let f = TunnelsFile::parse(&vxlan_toml("")).unwrap();
        let t = &f.tunnels[0];
        assert!(t.mss_clamp);
        let TunnelKind::Vxlan(v) = &t.kind else {
            panic!("not vxlan")
        };
        assert_eq!(v.port, 4789);
        assert_eq!(v.vni, 100);
    }

    #[test]
    fn misspelt_field_is_named() {
        let err = TunnelsFile::parse(&vxlan_toml("vnii = 3")).unwrap_err();
        assert!(err.contains("vnii"), "{err}");
    }

    #[test]
    fn two_kinds_or_none_is_an_error_naming_the_tunnel() {
        let text = vxlan_toml("[tunnel.gre]\nlocal = \"192.0.2.1\"\nremote = \"192.0.2.2\"");
        let err = TunnelsFile::parse(&text).unwrap_err();
        assert!(
            err.contains("vx-eu1") && err.contains("VXLAN, GRE"),
            "{err}"
        );
        let err = TunnelsFile::parse("[[tunnel]]\nname = \"t1\"\n").unwrap_err();
        assert!(err.contains("t1") && err.contains("none"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let text = format!("{}{}", vxlan_toml(""), vxlan_toml(""));
        let err = TunnelsFile::parse(&text).unwrap_err();
        assert!(err.contains("defined twice"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("vni", vxlan_toml("").replace("vni = 100", "vni = 16777216")),
            (
                "vxlan.remote",
                vxlan_toml("").replace("192.0.2.2", "2001:db8::2"),
            ),
            (
                "vxlan.remote",
                vxlan_toml("").replace("192.0.2.2", "192.0.2.1"),
            ),
            (
                "name",
                vxlan_toml("").replace("vx-eu1", "a-name-that-is-too-long"),
            ),
            ("name", vxlan_toml("").replace("vx-eu1", "vx/1")),
            (
                "underlay.mtu",
                vxlan_toml("")
                    .replace("[tunnel.vxlan]", "underlay = { mtu = 600 }\n[tunnel.vxlan]"),
            ),
        ];
        for (field, text) in cases {
            let err = TunnelsFile::parse(&text).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn wireguard_spec_checks() {
        let text = r#"
[[tunnel]]
name = "wg-eu1"
[tunnel.wireguard]
listen_port = 51820
[tunnel.wireguard.peer]
public_key = "ySYdyrXw1U6iEsAIkaOzaU9CTxtTzOhxGrEhVtcWUCM="
allowed_ips = []
"#;
        let err = TunnelsFile::parse(text).unwrap_err();
        assert!(err.contains("wireguard.peer.allowed_ips"), "{err}");
        let bad_key = text.replace("[]", "[\"10.0.0.0/8\"]").replace("UCM=", "UC");
        let err = TunnelsFile::parse(&bad_key).unwrap_err();
        assert!(err.contains("UC` is not a base64 WireGuard key"), "{err}");
        let ok = text.replace("[]", "[\"10.0.0.0/8\"]");
        TunnelsFile::parse(&ok).unwrap();
        let err = TunnelsFile::parse(&ok.replace("51820", "0")).unwrap_err();
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn overheads_and_mtus() {
        let vx = |remote: &str| {
            TunnelKind::Vxlan(VxlanSpec {
                vni: 1,
                local: "192.0.2.1".parse().unwrap(),
                remote: remote.parse().unwrap(),
                port: 4789,
                ttl: None,
            })
        };
        assert_eq!(tunnel_mtu(1500, &vx("192.0.2.2")), 1450);
        assert_eq!(vx("2001:db8::2").overhead(), 70);
        let wg = |endpoint: Option<&str>| {
            TunnelKind::WireGuard(WireGuardSpec {
                listen_port: 1,
                peer: WireGuardPeerSpec {
                    public_key: PublicKey::from_bytes([1; 32]),
                    endpoint: endpoint.map(|e| e.parse().unwrap()),
                    allowed_ips: vec![],
                    persistent_keepalive: None,
                    preshared_key_file: None,
                },
                handoff: None,
            })
        };
        assert_eq!(tunnel_mtu(1500, &wg(Some("192.0.2.2:51820"))), 1440);
        // wg-quick's 1420 is the unknown/IPv6 case.
        assert_eq!(tunnel_mtu(1500, &wg(None)), 1420);
        assert_eq!(mss_for_mtu(1450, false), 1410);
        assert_eq!(mss_for_mtu(1450, true), 1390);
    }

    #[test]
    fn json_round_trip() {
        let f = TunnelsFile::parse(&vxlan_toml("")).unwrap();
        let json = serde_json::to_string(&f.tunnels[0]).unwrap();
        let back: TunnelSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f.tunnels[0]);
    }
}
