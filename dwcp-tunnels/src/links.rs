//! Tunnel devices the kernel builds from one rtnetlink message — VXLAN, and GRE and GENEVE
//! where the kernel has them: the message that creates the device, and the differences
//! between an existing device and its spec that only re-creating it can fix.
//!
//! VXLAN: unicast to one remote, learning off (the peer is known, flooding to a learned
//! address would be wrong), the configured UDP port (4789 unless given; Linux's own default
//! without `dstport` is the pre-IANA 8472). A plain Linux peer is
//! `ip link add vx0 type vxlan id <vni> local <its ip> remote <our ip> dstport 4789 nolearning`.

use std::net::IpAddr;

use rtnetlink::{
    packet_route::link::{InfoData, InfoGeneve, InfoGre, InfoKind, InfoVxlan, LinkMessage},
    LinkGeneve, LinkGre, LinkVxlan,
};

use super::{
    rtnl::LinkState,
    spec::{GeneveSpec, GreSpec, TunnelKind, TunnelSpec, VxlanSpec},
};

/// The link kind a spec's device has (`None` for types not created by one rtnetlink message).
pub(crate) fn expected_kind(kind: &TunnelKind) -> Option<InfoKind> {
    match kind {
        TunnelKind::Vxlan(_) => Some(InfoKind::Vxlan),
        TunnelKind::Gre(_) => Some(InfoKind::GreTun),
        TunnelKind::Geneve(_) => Some(InfoKind::Geneve),
        TunnelKind::WireGuard(_) | TunnelKind::Ipsec(_) => None,
    }
}

/// The creation message, with MTU, administratively up.
pub(crate) fn create_message(
    spec: &TunnelSpec,
    underlay_ifindex: Option<u32>,
    mtu: u32,
) -> Option<LinkMessage> {
    let name = spec.name.as_str();
    let msg = match &spec.kind {
        TunnelKind::Vxlan(v) => {
            let mut b = LinkVxlan::new(name, v.vni).port(v.port).learning(false);
            b = match (v.local, v.remote) {
                (IpAddr::V4(l), IpAddr::V4(r)) => b.local(l).remote(r),
                (IpAddr::V6(l), IpAddr::V6(r)) => b.local6(l).remote6(r),
                _ => return None, // rejected by validation
            };
            if let Some(ttl) = v.ttl {
                b = b.ttl(ttl);
            }
            if let Some(i) = underlay_ifindex {
                b = b.dev(i);
            }
            b.mtu(mtu).up().build()
        }
        TunnelKind::Gre(g) => {
            let mut b = LinkGre::new(name).local(g.local).remote(g.remote);
            if let Some(ttl) = g.ttl {
                b = b.ttl(ttl);
            }
            b.mtu(mtu).up().build()
        }
        TunnelKind::Geneve(g) => {
            let b = LinkGeneve::new(name, g.vni).port(g.port);
            let b = match g.remote {
                IpAddr::V4(r) => b.remote(r),
                IpAddr::V6(r) => b.remote6(r),
            };
            b.mtu(mtu).up().build()
        }
        TunnelKind::WireGuard(_) | TunnelKind::Ipsec(_) => return None,
    };
    Some(msg)
}

/// Differences between `link` and `spec` that need the device re-created (MTU, addresses and
/// up/down are fixed in place elsewhere). Empty when the device is right.
pub(crate) fn differences(
    spec: &TunnelSpec,
    link: &LinkState,
    underlay_ifindex: Option<u32>,
) -> Vec<String> {
    let Some(kind) = expected_kind(&spec.kind) else {
        return Vec::new();
    };
    if link.kind.as_ref() != Some(&kind) {
        return vec![format!("device is a {} link, not {kind}", link.kind_name())];
    }
    match (&spec.kind, &link.data) {
        (TunnelKind::Vxlan(v), Some(InfoData::Vxlan(attrs))) => {
            vxlan_differences(v, attrs, underlay_ifindex)
        }
        (TunnelKind::Gre(g), Some(InfoData::GreTun(attrs))) => gre_differences(g, attrs),
        (TunnelKind::Geneve(g), Some(InfoData::Geneve(attrs))) => geneve_differences(g, attrs),
        _ => vec!["device reports no tunnel attributes".into()],
    }
}

fn vxlan_differences(v: &VxlanSpec, attrs: &[InfoVxlan], underlay: Option<u32>) -> Vec<String> {
    let mut vni = None;
    let mut local = None;
    let mut remote = None;
    let mut port = None;
    let mut learning = None;
    let mut link = None;
    let mut ttl = None;
    for a in attrs {
        match a {
            InfoVxlan::Id(i) => vni = Some(*i),
            InfoVxlan::Local(ip) => local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Group(ip) => remote = Some(IpAddr::V4(*ip)),
            InfoVxlan::Group6(ip) => remote = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Learning(l) => learning = Some(*l),
            InfoVxlan::Link(i) => link = Some(*i),
            InfoVxlan::Ttl(t) => ttl = Some(*t),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut check = |what: &str, have: String, want: String| {
        if have != want {
            out.push(format!("{what} is {have}, spec says {want}"));
        }
    };
    check("VNI", fmt(vni), v.vni.to_string());
    check("local", fmt(local), v.local.to_string());
    check("remote", fmt(remote), v.remote.to_string());
    check("port", fmt(port), v.port.to_string());
    check("learning", fmt(learning), "false".into());
    if let Some(i) = underlay {
        check("underlay ifindex", fmt(link), i.to_string());
    }
    if let Some(t) = v.ttl {
        check("ttl", fmt(ttl), t.to_string());
    }
    out
}

fn gre_differences(g: &GreSpec, attrs: &[InfoGre]) -> Vec<String> {
    let local = attrs.iter().find_map(|a| match a {
        InfoGre::Local(ip) => Some(*ip),
        _ => None,
    });
    let remote = attrs.iter().find_map(|a| match a {
        InfoGre::Remote(ip) => Some(*ip),
        _ => None,
    });
    let mut out = Vec::new();
    if local != Some(g.local) {
        out.push(format!("local is {}, spec says {}", fmt(local), g.local));
    }
    if remote != Some(g.remote) {
        out.push(format!("remote is {}, spec says {}", fmt(remote), g.remote));
    }
    out
}

fn geneve_differences(g: &GeneveSpec, attrs: &[InfoGeneve]) -> Vec<String> {
    let vni = attrs.iter().find_map(|a| match a {
        InfoGeneve::Id(i) => Some(*i),
        _ => None,
    });
    let remote = attrs.iter().find_map(|a| match a {
        InfoGeneve::Remote(ip) => Some(IpAddr::V4(*ip)),
        InfoGeneve::Remote6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    });
    let mut out = Vec::new();
    if vni != Some(g.vni) {
        out.push(format!("VNI is {}, spec says {}", fmt(vni), g.vni));
    }
    if remote != Some(g.remote) {
        out.push(format!("remote is {}, spec says {}", fmt(remote), g.remote));
    }
    out
}

fn fmt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unset".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TunnelsFile;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo};

    fn vxlan_spec() -> TunnelSpec {
        TunnelsFile::parse(
            "[[tunnel]]\nname = \"vx1\"\n[tunnel.vxlan]\nvni = 42\nlocal = \"192.0.2.1\"\nremote = \"192.0.2.2\"\n",
        )
        .unwrap()
        .tunnels
        .remove(0)
    }

    /// The creation message, read back as a device, shows no differences; a changed spec does.
    #[test]
    fn created_device_matches_its_spec() {
        let spec = vxlan_spec();
        let msg = create_message(&spec, Some(7), 1450).unwrap();
        let mut link = LinkState {
            index: 9,
            name: "vx1".into(),
            kind: None,
            data: None,
            mtu: 1450,
            up: true,
            lower_up: true,
        };
        for attr in msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k),
                        LinkInfo::Data(d) => link.data = Some(d),
                        _ => {}
                    }
                }
            }
        }
        assert!(
            differences(&spec, &link, Some(7)).is_empty(),
            "{:?}",
            differences(&spec, &link, Some(7))
        );
        let mut other = spec.clone();
        if let TunnelKind::Vxlan(v) = &mut other.kind {
            v.vni = 43;
            v.port = 8472;
        }
        let diffs = differences(&other, &link, Some(7));
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].contains("VNI is 42, spec says 43"));
    }
}
