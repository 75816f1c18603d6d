//! Validation of a parsed agent.toml, one function per section. Each pushes its problems into
//! the [`Checker`] and returns its checked part; [`check`] composes them, in the file's order
//! (problems on the same line keep that order).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    ops::Range,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::Duration,
};

use dwcp_common::{
    probe::{ProbeKey, PROBE_PORT},
    wire::VXLAN_PORT,
    QosClass, CLASSIFY_DST_PORT, CLASSIFY_SRC_PORT,
};
use toml::Spanned;

use super::{
    AgentConfig, ApiConfig, ConfigError, ConfigFile, DelayConfig, FlowsConfig, GatewaySection,
    Handoff, HttpLimits, LocalLink, LocalLinkSection, Prefix, PrefixesSection, ProbeSection,
    Problem, QosRule, QosRuleSection, QosSection, RegionPrefixes, RoutingSection, SenderConfig,
    StrategyName, UpdaterSection, HANDOFF_FWMARK_BASE, HANDOFF_RULE_PRIORITY, HANDOFF_TABLE_BASE,
    VNI_BASE,
};
use super::{LinkStateSection, StoreKind, StoreSection};
use crate::{
    health::{HealthCheckConfig, HealthCheckSpec},
    link_state::{
        record::{MAX_ORIGIN_LEN, MAX_RECORD_LINKS},
        LinkStateConfigError, Origin,
    },
    liveness::{MonitorConfig, MonitorConfigError},
    routing::{RoutingError, Strategy},
    store::{EtcdConfig, EtcdTls, PublishedTopology, StoreConfig, DEFAULT_PREFIX},
    topology::{error::line_of, Link, Topology, TopologyConfig, TopologyError},
};

/// Checks every section; every problem is reported, not just the first. `published`: the
/// cluster store's topology, which `file`'s topology tables were replaced with (their spans
/// are in its text).
pub(super) fn check(
    file: ConfigFile,
    source: &str,
    published: Option<&PublishedTopology>,
) -> Result<AgentConfig, ConfigError> {
    let mut c = Checker {
        source,
        problems: Vec::new(),
    };
    let topology = TopologyConfig {
        regions: file.region.clone(),
        links: file.link.clone(),
        edges: file.edge.clone(),
    };
    let topology_model = topology_model(&mut c, &topology, source, published);
    let model = topology_model.as_ref();
    let gw = gateway(&mut c, &file.gateway, model);
    let local_links = local_links(&mut c, &file.local_link, model, &gw);
    let prefixes = prefixes(&mut c, &file.prefixes, model);
    let monitor = monitor(&mut c, &file.probe);
    let sender = sender(&mut c, &file.probe);
    let strategy = routing(&mut c, &file.routing, model, &gw.region);
    headroom(&mut c, "traffic", file.traffic.headroom_percent);
    headroom(&mut c, "reservations", file.reservations.headroom_percent);
    api(&mut c, &file.api);
    http_limits(&mut c, "metrics", &file.metrics.limits());
    let dscp = dscp(&mut c, &file.qos);
    let qos_rules = qos_rules(&mut c, &file.qos.rule);
    let delays = updater(&mut c, &file.updater);
    flows(&mut c, &file.flows);
    link_state(&mut c, &file.link_state, &gw, &local_links);
    let store = store(&mut c, &file.store);
    let health_checks = health_checks(&mut c, &file.health_check, model);
    c.finish()?;

    let (g, p, r, u) = (
        file.gateway.get_ref(),
        &file.probe,
        &file.routing,
        &file.updater,
    );
    Ok(AgentConfig {
        path: None,
        gateway: gw.name,
        region: gw.region,
        pin_dir: g.pin_dir.clone(),
        hash_seed: g.hash_seed,
        lan_interfaces: gw.lan,
        local_links,
        prefixes,
        probe_sender: p.sender,
        probe_rt_priority: p.rt_priority,
        monitor,
        sender,
        strategy,
        constraints: r.constraints.clone(),
        ecmp: r.ecmp,
        use_measurements: r.use_measurements,
        measurement_threshold: r.measurement_threshold_percent / 100.0,
        traffic: file.traffic.clone(),
        policing: file.policing.clone(),
        qos_rules,
        dscp,
        rewrite_dscp: file.qos.rewrite_dscp.unwrap_or(true),
        delays,
        optimise_interval: (u.optimise_interval_s > 0)
            .then(|| Duration::from_secs(u.optimise_interval_s)),
        history_len: u.history_len,
        counters_interval: Duration::from_millis(u.counters_interval_ms),
        flows: file.flows.clone(),
        reservations: file.reservations.clone(),
        api: file.api.clone(),
        metrics: file.metrics.clone(),
        link_state: file.link_state.clone(),
        store,
        health_checks,
        topology,
        topology_model: topology_model.expect("no problems means the topology is valid"),
        published_topology: published.cloned(),
    })
}

/// Collects problems with the line of the span they are about.
struct Checker<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let line = (span.end > span.start).then(|| line_of(self.source, span.start));
        self.push(line, field, message);
    }

    /// A problem about `key` of `[section]` (fields without spans: defaults and plain values).
    fn at_key(&mut self, section: &str, key: &str, message: impl Into<String>) {
        let line = key_line(self.source, section, key);
        self.push(line, format!("{section}.{key}"), message);
    }

    fn push(&mut self, line: Option<usize>, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    /// The problems found, in line order, as the error.
    fn finish(mut self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        self.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(ConfigError::Invalid {
            path: None,
            problems: self.problems,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// [[region]], [[link]], [[edge]]

fn topology_model(
    c: &mut Checker,
    topology: &TopologyConfig,
    source: &str,
    published: Option<&PublishedTopology>,
) -> Option<Topology> {
    // Lines of the published topology are lines of its text, not of the file.
    let (source, field) = match published {
        Some(p) => (
            p.source.as_str(),
            format!("topology generation {} of the cluster store", p.generation),
        ),
        None => (source, "topology".to_string()),
    };
    let model = match Topology::from_config(topology, Some(source)) {
        Ok(m) => Some(m),
        Err(TopologyError::Invalid { errors }) => {
            for e in errors {
                c.push(e.entry().line, field.clone(), e.to_string());
            }
            None
        }
        Err(e) => {
            c.push(None, field, e.to_string());
            None
        }
    };
    if topology.regions.is_empty() {
        c.push(
            None,
            "region",
            "no [[region]]: the topology must describe at least this gateway's region",
        );
    }
    model
}

// ---------------------------------------------------------------------------------------------
// [gateway]

/// The checked `[gateway]` (`pin_dir` and `hash_seed` are taken as they are).
struct Gateway {
    name: String,
    region: String,
    /// The region is a `[[region]]` (or the topology is invalid, so nobody can tell).
    region_known: bool,
    lan: Vec<String>,
}

fn gateway(
    c: &mut Checker,
    section: &Spanned<GatewaySection>,
    model: Option<&Topology>,
) -> Gateway {
    let gw = section.get_ref();
    let name = gw.name.get_ref().trim().to_string();
    if name.is_empty() {
        c.at(gw.name.span(), "gateway.name", "must not be empty");
    }
    let region = gw.region.get_ref().clone();
    let region_known = model
        .map(|m| m.region_by_name(&region).is_some())
        .unwrap_or(true);
    if !region_known {
        c.at(
            gw.region.span(),
            "gateway.region",
            format!("unknown region {region:?} (not a [[region]] name)"),
        );
    }
    if let Some(r) = model.and_then(|m| m.region_by_name(&region)) {
        if !r.gateways.is_empty() && !r.gateways.iter().any(|g| g.name == name) {
            c.at(
                gw.name.span(),
                "gateway.name",
                format!(
                    "{name:?} is not among region {region:?}'s gateways ({})",
                    r.gateways
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    let lan = lan_interfaces(c, gw);
    if !gw.pin_dir.is_absolute() {
        c.at(
            section.span(),
            "gateway.pin_dir",
            format!("{} must be an absolute path", gw.pin_dir.display()),
        );
    }
    Gateway {
        name,
        region,
        region_known,
        lan,
    }
}

fn lan_interfaces(c: &mut Checker, gw: &GatewaySection) -> Vec<String> {
    let span = gw.lan_interfaces.span();
    let lan = gw.lan_interfaces.get_ref().clone();
    let field = "gateway.lan_interfaces";
    if lan.is_empty() {
        c.at(span.clone(), field, "at least one LAN interface is needed");
    }
    let mut seen = BTreeSet::new();
    for i in &lan {
        if !valid_ifname(i) {
            c.at(
                span.clone(),
                field,
                format!("{i:?} is not an interface name (1-15 characters, no / or space)"),
            );
        }
        if !seen.insert(i.clone()) {
            c.at(span.clone(), field, format!("{i:?} is listed twice"));
        }
    }
    lan
}

// ---------------------------------------------------------------------------------------------
// [[local_link]]

/// The TOML path of a field of one entry (`local_link[2].vni`).
type FieldOf<'a> = &'a dyn Fn(&str) -> String;

/// Sorted by link id; an entry with a problem is left out.
fn local_links(
    c: &mut Checker,
    entries: &[Spanned<LocalLinkSection>],
    model: Option<&Topology>,
    gw: &Gateway,
) -> Vec<LocalLink> {
    let mut links: Vec<LocalLink> = Vec::new();
    // VNI → the link using it, over every vxlan entry (even those with problems).
    let mut vnis: BTreeMap<u32, String> = BTreeMap::new();
    for (i, spanned) in entries.iter().enumerate() {
        let field = |f: &str| format!("local_link[{i}].{f}");
        if let Some(l) = local_link(c, spanned, &field, model, gw, &links, &mut vnis) {
            links.push(l);
        }
    }
    links.sort_by_key(|l| l.link_id);
    links
}

/// How a local link leaves: hand-off to a WireGuard device, or VXLAN encapsulation.
struct Tunnel {
    via_ip: Option<Ipv4Addr>,
    vni: u32,
    monitored: bool,
    handoff: Option<Handoff>,
}

fn local_link(
    c: &mut Checker,
    spanned: &Spanned<LocalLinkSection>,
    field: FieldOf,
    model: Option<&Topology>,
    gw: &Gateway,
    earlier: &[LocalLink],
    vnis: &mut BTreeMap<u32, String>,
) -> Option<LocalLink> {
    let l = spanned.get_ref();
    let before = c.problems.len();
    let (link, peer_region) = terminated_link(c, l, field, model, gw);
    if earlier.iter().any(|o| &o.name == l.link.get_ref()) {
        c.at(
            l.link.span(),
            field("link"),
            format!("link {:?} is terminated twice", l.link.get_ref()),
        );
    }
    underlay_interface(c, l, field, gw);
    let wireguard = is_wireguard(c, l, field);
    let address = |c: &mut Checker, s: &Option<Spanned<IpAddr>>, f: &str| match s {
        Some(s) => unicast_v4(c, s, &field(f)),
        None if wireguard => Some(Ipv4Addr::UNSPECIFIED),
        None => {
            c.at(
                spanned.span(),
                field(f),
                "missing (required for a vxlan link)",
            );
            None
        }
    };
    let local_ip = address(c, &l.local_ip, "local_ip");
    let peer_ip = address(c, &l.peer_ip, "peer_ip");
    let link_id = link.as_ref().map(|k| k.id.0).unwrap_or(0);
    let tunnel = if wireguard {
        let addressed = [local_ip, peer_ip]
            .iter()
            .all(|a| a.is_some_and(|a| !a.is_unspecified()));
        wireguard_tunnel(c, spanned, field, link_id, earlier, addressed)
    } else {
        vxlan_tunnel(c, spanned, field, link_id, peer_ip, vnis)
    };
    let auth_key = l
        .auth_key_file
        .as_ref()
        .and_then(|f| match read_link_key(f.get_ref()) {
            Ok(key) => Some(key),
            Err(e) => {
                c.at(f.span(), field("auth_key_file"), e);
                None
            }
        });
    if c.problems.len() != before {
        return None;
    }
    let (link, local_ip, peer_ip, via_ip) = (link?, local_ip?, peer_ip?, tunnel.via_ip?);
    Some(LocalLink {
        link_id: link.id.0,
        name: link.name.to_string(),
        peer_region,
        interface: l.interface.get_ref().clone(),
        local_ip,
        peer_ip,
        via_ip,
        vni: tunnel.vni,
        mtu: l.mtu.as_ref().map(|m| *m.get_ref()),
        inner_dst_mac: l
            .inner_dst_mac
            .as_ref()
            .map(|m| m.get_ref().0)
            .unwrap_or_default(),
        monitored: tunnel.monitored,
        handoff: tunnel.handoff,
        auth_key,
    })
}

/// A link's shared key from its file: 32 hex digits (surrounding white space allowed), in a
/// file neither group nor others may read or write (whoever reads it can forge the link's
/// probes), not all zero.
fn read_link_key(path: &Path) -> Result<ProbeKey, String> {
    if !path.is_absolute() {
        return Err(format!("{}: must be an absolute path", path.display()));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: mode {mode:04o}: group or others may access it (chmod 600)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let hex = text.trim();
    let bad = || {
        format!(
            "{}: not a 128-bit key (32 hex digits, e.g. from `openssl rand -hex 16`)",
            path.display()
        )
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let k0 = u64::from_str_radix(&hex[..16], 16).map_err(|_| bad())?;
    let k1 = u64::from_str_radix(&hex[16..], 16).map_err(|_| bad())?;
    if k0 == 0 && k1 == 0 {
        return Err(format!("{}: the key is all zero", path.display()));
    }
    Ok(ProbeKey { k0, k1 })
}

/// The `[[link]]` an entry names, and the region at its other end.
fn terminated_link(
    c: &mut Checker,
    l: &LocalLinkSection,
    field: FieldOf,
    model: Option<&Topology>,
    gw: &Gateway,
) -> (Option<Link>, String) {
    let Some(m) = model else {
        return (None, String::new());
    };
    let Some(link) = m.link_by_name(l.link.get_ref()).cloned() else {
        c.at(
            l.link.span(),
            field("link"),
            format!("unknown link {:?} (not a [[link]] name)", l.link.get_ref()),
        );
        return (None, String::new());
    };
    let a = &m.region(link.a).expect("valid").name;
    let b = &m.region(link.b).expect("valid").name;
    let region = &gw.region;
    if gw.region_known && a != region && b != region {
        c.at(
            l.link.span(),
            field("link"),
            format!(
                "link {:?} joins {a} and {b}; this gateway is in {region}",
                l.link.get_ref()
            ),
        );
    }
    let peer_region = if a == region { b.clone() } else { a.clone() };
    (Some(link), peer_region)
}

/// The interface a link leaves on: a valid name, not one of the LAN's.
fn underlay_interface(c: &mut Checker, l: &LocalLinkSection, field: FieldOf, gw: &Gateway) {
    let ifname = l.interface.get_ref();
    if !valid_ifname(ifname) {
        c.at(
            l.interface.span(),
            field("interface"),
            format!("{ifname:?} is not an interface name"),
        );
    }
    if gw.lan.contains(ifname) {
        c.at(
            l.interface.span(),
            field("interface"),
            format!("{ifname:?} is also a LAN interface"),
        );
    }
}

fn is_wireguard(c: &mut Checker, l: &LocalLinkSection, field: FieldOf) -> bool {
    let Some(k) = &l.kind else {
        return false;
    };
    match k.get_ref().as_str() {
        "vxlan" => false,
        "wireguard" => true,
        other => {
            c.at(
                k.span(),
                field("kind"),
                format!("unknown link kind {other:?} (vxlan or wireguard)"),
            );
            false
        }
    }
}

fn unicast_v4(c: &mut Checker, s: &Spanned<IpAddr>, field: &str) -> Option<Ipv4Addr> {
    match *s.get_ref() {
        IpAddr::V4(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() => Some(a),
        IpAddr::V4(a) => {
            c.at(s.span(), field, format!("{a} is not a unicast address"));
            None
        }
        IpAddr::V6(a) => {
            c.at(
                s.span(),
                field,
                format!("{a}: the underlay is IPv4 (VXLAN over IPv4)"),
            );
            None
        }
    }
}

fn wireguard_tunnel(
    c: &mut Checker,
    spanned: &Spanned<LocalLinkSection>,
    field: FieldOf,
    link_id: u32,
    earlier: &[LocalLink],
    addressed: bool,
) -> Tunnel {
    let l = spanned.get_ref();
    let why = "makes no sense for a wireguard link (the kernel routes into the WireGuard device)";
    if let Some(v) = &l.via_ip {
        c.at(v.span(), field("via_ip"), why);
    }
    if let Some(v) = &l.vni {
        c.at(v.span(), field("vni"), why);
    }
    if let Some(m) = &l.inner_dst_mac {
        c.at(m.span(), field("inner_dst_mac"), why);
    }
    if let Some(m) = &l.mtu {
        c.at(
            m.span(),
            field("mtu"),
            "makes no sense for a wireguard link (set the MTU of the WireGuard device)",
        );
    }
    // Probed inside the tunnel, from our tunnel address to the peer's: without both, only
    // the device's state and handshake age tell the link's health.
    let monitored = l
        .monitored
        .as_ref()
        .map(|m| *m.get_ref())
        .unwrap_or(addressed);
    if monitored && !addressed {
        c.at(
            l.monitored.as_ref().map_or(spanned.span(), |m| m.span()),
            field("monitored"),
            "a wireguard link is probed inside the tunnel: set local_ip and peer_ip to the \
             tunnel addresses of both ends (or monitored = false)",
        );
    }
    Tunnel {
        via_ip: Some(Ipv4Addr::UNSPECIFIED),
        vni: 0,
        monitored,
        handoff: Some(handoff(c, spanned, field, link_id, earlier)),
    }
}

/// The hand-off of a wireguard link: its mark and table (defaults derived from the link id),
/// distinct from the other links'.
fn handoff(
    c: &mut Checker,
    spanned: &Spanned<LocalLinkSection>,
    field: FieldOf,
    link_id: u32,
    earlier: &[LocalLink],
) -> Handoff {
    let l = spanned.get_ref();
    let h = l.handoff.as_ref().map(|h| h.get_ref());
    let span = l
        .handoff
        .as_ref()
        .map(|h| h.span())
        .unwrap_or(spanned.span());
    let fwmark = h
        .and_then(|h| h.fwmark)
        .unwrap_or(HANDOFF_FWMARK_BASE.wrapping_add(link_id));
    let table = h
        .and_then(|h| h.table)
        .unwrap_or(HANDOFF_TABLE_BASE.wrapping_add(link_id));
    let priority = h.and_then(|h| h.priority).unwrap_or(HANDOFF_RULE_PRIORITY);
    if fwmark == 0 {
        c.at(
            span.clone(),
            field("handoff.fwmark"),
            "0 is no mark (packets without a mark are not handed off)",
        );
    }
    if table == 0 || (253..=255).contains(&table) {
        c.at(
            span.clone(),
            field("handoff.table"),
            format!("{table} is a reserved routing table (0, default, main, local)"),
        );
    }
    for o in earlier {
        let Some(oh) = &o.handoff else { continue };
        if oh.fwmark == fwmark {
            c.at(
                span.clone(),
                field("handoff.fwmark"),
                format!("fwmark {fwmark:#x} is also used by link {:?}", o.name),
            );
        }
        if oh.table == table {
            c.at(
                span.clone(),
                field("handoff.table"),
                format!("table {table} is also used by link {:?}", o.name),
            );
        }
    }
    Handoff {
        fwmark,
        table,
        priority,
    }
}

fn vxlan_tunnel(
    c: &mut Checker,
    spanned: &Spanned<LocalLinkSection>,
    field: FieldOf,
    link_id: u32,
    peer_ip: Option<Ipv4Addr>,
    vnis: &mut BTreeMap<u32, String>,
) -> Tunnel {
    let l = spanned.get_ref();
    if let Some(h) = &l.handoff {
        c.at(
            h.span(),
            field("handoff"),
            "only a wireguard link (kind = \"wireguard\") is handed off",
        );
    }
    let monitored = l.monitored.as_ref().map(|m| *m.get_ref()).unwrap_or(true);
    let via_ip = match &l.via_ip {
        Some(v) => unicast_v4(c, v, &field("via_ip")),
        None => peer_ip,
    };
    if let (Some(a), Some(p)) = (&l.local_ip, &l.peer_ip) {
        if a.get_ref() == p.get_ref() {
            c.at(p.span(), field("peer_ip"), "is the same as local_ip");
        }
    }
    let vni = vni(c, spanned, field, link_id, vnis);
    if let Some(m) = &l.mtu {
        let mtu = *m.get_ref();
        if !(576..=65_535).contains(&mtu) {
            c.at(
                m.span(),
                field("mtu"),
                format!("{mtu} is not within 576..=65535"),
            );
        }
    }
    Tunnel {
        via_ip,
        vni,
        monitored,
        handoff: None,
    }
}

/// The link's VNI (default `VNI_BASE + link_id`, so both ends agree), unique among the links.
fn vni(
    c: &mut Checker,
    spanned: &Spanned<LocalLinkSection>,
    field: FieldOf,
    link_id: u32,
    vnis: &mut BTreeMap<u32, String>,
) -> u32 {
    let l = spanned.get_ref();
    let vni = l
        .vni
        .as_ref()
        .map(|v| *v.get_ref())
        .unwrap_or(VNI_BASE + link_id);
    let span = l.vni.as_ref().map(|v| v.span()).unwrap_or(spanned.span());
    if vni > dwcp_common::wire::VNI_MAX {
        c.at(
            span,
            field("vni"),
            format!(
                "{vni} is above the largest VNI {}",
                dwcp_common::wire::VNI_MAX
            ),
        );
    } else if let Some(other) = vnis.get(&vni) {
        c.at(
            span,
            field("vni"),
            format!("VNI {vni} is also used by link {other:?}"),
        );
    }
    vnis.insert(vni, l.link.get_ref().clone());
    vni
}

// ---------------------------------------------------------------------------------------------
// [[prefixes]]

fn prefixes(
    c: &mut Checker,
    entries: &[Spanned<PrefixesSection>],
    model: Option<&Topology>,
) -> BTreeMap<String, RegionPrefixes> {
    let mut prefixes: BTreeMap<String, RegionPrefixes> = BTreeMap::new();
    // Every prefix so far with its region, for the overlap check across regions.
    let mut all: Vec<(Prefix, String)> = Vec::new();
    for (i, spanned) in entries.iter().enumerate() {
        let p = spanned.get_ref();
        let field = |f: &str| format!("prefixes[{i}].{f}");
        let rname = p.region.get_ref().clone();
        if model.is_some_and(|m| m.region_by_name(&rname).is_none()) {
            c.at(
                p.region.span(),
                field("region"),
                format!("unknown region {rname:?}"),
            );
        }
        if prefixes.contains_key(&rname) {
            c.at(
                p.region.span(),
                field("region"),
                format!("region {rname:?} has a [[prefixes]] entry already"),
            );
        }
        let class = prefixes_class(c, p, &field);
        let mut list = Vec::new();
        for s in &p.prefixes {
            match s.get_ref().parse::<Prefix>() {
                Ok(px) => {
                    if let Some((_, other)) = all.iter().find(|(o, _)| o.overlaps(&px)) {
                        c.at(
                            s.span(),
                            field("prefixes"),
                            format!("{px} overlaps a prefix of region {other:?}"),
                        );
                    }
                    all.push((px, rname.clone()));
                    list.push(px);
                }
                Err(e) => c.at(s.span(), field("prefixes"), e),
            }
        }
        let region = RegionPrefixes {
            prefixes: list,
            class,
        };
        prefixes.insert(rname, region);
    }
    prefixes
}

/// The class of traffic to a region's prefixes that no rule matches (default best effort).
fn prefixes_class(c: &mut Checker, p: &PrefixesSection, field: FieldOf) -> QosClass {
    let Some(s) = &p.class else {
        return QosClass::BestEffort;
    };
    class_by_name(s.get_ref()).unwrap_or_else(|| {
        c.at(
            s.span(),
            field("class"),
            format!(
                "unknown QoS class {:?} (one of {})",
                s.get_ref(),
                class_names()
            ),
        );
        QosClass::BestEffort
    })
}

// ---------------------------------------------------------------------------------------------
// [probe]

fn monitor(c: &mut Checker, p: &ProbeSection) -> MonitorConfig {
    let ms = Duration::from_millis;
    let monitor = MonitorConfig {
        interval: ms(p.interval_ms),
        detect_multiplier: p.detect_multiplier,
        up_after: p.up_after,
        loss_window: ms(p.loss_window_ms),
        loss_min_probes: p.loss_min_probes,
        degraded_loss: p.degraded_loss,
        degraded_rtt: p
            .degraded_rtt_ms
            .map(|v| Duration::from_secs_f64(v.max(0.0) / 1e3)),
        degraded_jitter: p
            .degraded_jitter_ms
            .map(|v| Duration::from_secs_f64(v.max(0.0) / 1e3)),
        poll_interval: ms(p.poll_interval_ms),
    };
    if let Err(e) = monitor.validate() {
        let key = match e {
            MonitorConfigError::Interval(_) => "interval_ms",
            MonitorConfigError::DetectMultiplier => "detect_multiplier",
            MonitorConfigError::UpAfter => "up_after",
            MonitorConfigError::DegradedLoss(_) => "degraded_loss",
            MonitorConfigError::LossWindow { .. } => "loss_window_ms",
            MonitorConfigError::PollInterval { .. } => "poll_interval_ms",
        };
        c.at_key("probe", key, e.to_string());
    }
    for (key, v) in [
        ("degraded_rtt_ms", p.degraded_rtt_ms),
        ("degraded_jitter_ms", p.degraded_jitter_ms),
    ] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
            c.at_key(
                "probe",
                key,
                format!("{v} must be a finite number of milliseconds > 0"),
            );
        }
    }
    monitor
}

/// The agent's probe sender, and the priority of its thread.
fn sender(c: &mut Checker, p: &ProbeSection) -> SenderConfig {
    let sender = SenderConfig {
        interval: Duration::from_millis(p.interval_ms),
        backoff_cap: Duration::from_millis(p.backoff_cap_ms),
        ..SenderConfig::default()
    };
    if p.rt_priority > 99 {
        c.at_key(
            "probe",
            "rt_priority",
            format!(
                "{} is not a SCHED_FIFO priority: 1-99, or 0 for normal scheduling",
                p.rt_priority
            ),
        );
    }
    if sender.backoff_cap < sender.interval {
        c.at_key(
            "probe",
            "backoff_cap_ms",
            format!(
                "{} ms is shorter than the probe interval {} ms",
                p.backoff_cap_ms, p.interval_ms
            ),
        );
    }
    sender
}

// ---------------------------------------------------------------------------------------------
// [routing]

fn routing(
    c: &mut Checker,
    r: &RoutingSection,
    model: Option<&Topology>,
    own_region: &str,
) -> Strategy {
    let strategy = match r.strategy {
        StrategyName::MinLatency => Strategy::MinLatency,
        StrategyName::MinCost => Strategy::MinCost,
        StrategyName::MaxBandwidth => Strategy::MaxBandwidth,
        StrategyName::Balanced => Strategy::Balanced(r.balanced),
    };
    if let Err(e) = strategy.validate() {
        let line = section_line(c.source, "routing.balanced")
            .or_else(|| key_line(c.source, "routing", "balanced"));
        c.push(line, "routing.balanced", e.to_string());
    }
    if let Err(e) = r.constraints.validate() {
        c.push(
            section_line(c.source, "routing.constraints"),
            format!("routing.constraints.{}", constraint_field(&e)),
            e.to_string(),
        );
    }
    if let Some(m) = model {
        avoid_regions(c, r, m, own_region);
    }
    let threshold = r.measurement_threshold_percent;
    if !(threshold.is_finite() && threshold >= 0.0) {
        c.at_key(
            "routing",
            "measurement_threshold_percent",
            format!("{threshold} must be a finite number >= 0"),
        );
    }
    strategy
}

/// Regions to avoid must exist, and cannot be our own.
fn avoid_regions(c: &mut Checker, r: &RoutingSection, model: &Topology, own_region: &str) {
    for name in &r.constraints.avoid_regions {
        if model.region_by_name(name).is_none() {
            c.at_key(
                "routing.constraints",
                "avoid_regions",
                format!("unknown region {name:?}"),
            );
        }
        if name == own_region {
            c.at_key(
                "routing.constraints",
                "avoid_regions",
                format!("{name:?} is this gateway's own region"),
            );
        }
    }
}

fn constraint_field(e: &RoutingError) -> &'static str {
    match e {
        RoutingError::InvalidConstraint { constraint, .. } => constraint,
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------------
// [traffic], [reservations], [api], [metrics]

/// `headroom_percent` of `[traffic]` or `[reservations]`: some capacity is always kept.
fn headroom(c: &mut Checker, section: &str, percent: u8) {
    if percent > 99 {
        c.at_key(
            section,
            "headroom_percent",
            format!("{percent} is above 99"),
        );
    }
}

/// The TCP API is served over TLS or not at all: its bearer token is in every request, and in
/// clear text anyone on the path could replay it. There is no plaintext opt-out: local tools
/// have the Unix socket, which needs neither.
fn api(c: &mut Checker, api: &ApiConfig) {
    if api.tcp_listen.is_some() {
        for (key, missing, why) in [
            (
                "token_file",
                api.token_file.is_none(),
                "every TCP request carries the token",
            ),
            (
                "tls_cert",
                api.tls_cert.is_none(),
                "the TCP API is served over TLS only",
            ),
            (
                "tls_key",
                api.tls_key.is_none(),
                "the TCP API is served over TLS only",
            ),
        ] {
            if missing {
                c.at_key("api", "tcp_listen", format!("needs api.{key} ({why})"));
            }
        }
    }
    http_limits(c, "api", &api.limits());
}

/// Most connections one listener may allow: more than a process can hold open anyway.
const MAX_CONNECTIONS: usize = 1 << 20;
/// Longest read or write timeout: an hour is already no protection.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

fn http_limits(c: &mut Checker, section: &str, limits: &HttpLimits) {
    for (key, n) in [
        ("max_connections", limits.max_connections),
        (
            "max_connections_per_source",
            limits.max_connections_per_source,
        ),
    ] {
        if n == 0 {
            c.at_key(section, key, "0 would refuse every connection");
        } else if n > MAX_CONNECTIONS {
            c.at_key(section, key, format!("{n} is above {MAX_CONNECTIONS}"));
        }
    }
    for (key, timeout, zero) in [
        (
            "read_timeout_ms",
            limits.read_timeout,
            "0 would close every connection before its request",
        ),
        (
            "write_timeout_ms",
            limits.write_timeout,
            "0 would close every connection before its answer",
        ),
    ] {
        let ms = timeout.as_millis();
        if ms == 0 {
            c.at_key(section, key, zero);
        } else if ms > u128::from(MAX_TIMEOUT_MS) {
            c.at_key(
                section,
                key,
                format!("{ms} is above {MAX_TIMEOUT_MS} (an hour)"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// [qos]

/// DSCP per class id: the defaults, overridden by `[qos.dscp]`.
fn dscp(c: &mut Checker, qos: &QosSection) -> [u8; dwcp_common::qos::QOS_CLASSES] {
    let mut dscp = QosClass::ALL.map(|k| k.default_dscp());
    for (name, v) in &qos.dscp {
        match class_by_name(name) {
            Some(k) if *v.get_ref() <= 63 => dscp[k as usize] = *v.get_ref(),
            Some(_) => c.at(
                v.span(),
                format!("qos.dscp.{name}"),
                format!("{} is not a DSCP (0..=63)", v.get_ref()),
            ),
            None => c.at(
                v.span(),
                format!("qos.dscp.{name}"),
                format!("unknown QoS class {name:?} (one of {})", class_names()),
            ),
        }
    }
    dscp
}

/// The classifier rules; a rule with a problem is left out.
fn qos_rules(c: &mut Checker, entries: &[Spanned<QosRuleSection>]) -> Vec<QosRule> {
    let mut rules: Vec<QosRule> = Vec::new();
    for (i, spanned) in entries.iter().enumerate() {
        let field = |f: &str| format!("qos.rule[{i}].{f}");
        if let Some(rule) = qos_rule(c, spanned, &field, &rules) {
            rules.push(rule);
        }
    }
    rules
}

fn qos_rule(
    c: &mut Checker,
    spanned: &Spanned<QosRuleSection>,
    field: FieldOf,
    earlier: &[QosRule],
) -> Option<QosRule> {
    let q = spanned.get_ref();
    let span = spanned.span();
    let before = c.problems.len();
    let class = class_by_name(&q.class);
    if class.is_none() {
        c.at(
            span.clone(),
            field("class"),
            format!("unknown QoS class {:?} (one of {})", q.class, class_names()),
        );
    }
    let proto = match q.protocol.as_deref().unwrap_or("any") {
        "any" => 0,
        "tcp" => dwcp_common::wire::IPPROTO_TCP,
        "udp" => dwcp_common::wire::IPPROTO_UDP,
        other => {
            c.at(
                span.clone(),
                field("protocol"),
                format!("{other:?} is not tcp, udp or any"),
            );
            0
        }
    };
    let direction = match q.direction.as_deref().unwrap_or("dst") {
        "dst" => CLASSIFY_DST_PORT,
        "src" => CLASSIFY_SRC_PORT,
        other => {
            c.at(
                span.clone(),
                field("direction"),
                format!("{other:?} is not dst or src"),
            );
            CLASSIFY_DST_PORT
        }
    };
    if q.port == 0 {
        c.at(span.clone(), field("port"), "port 0 matches nothing");
    }
    if earlier
        .iter()
        .any(|o| o.proto == proto && o.direction == direction && o.port == q.port)
    {
        c.at(
            span,
            field("port"),
            format!(
                "a rule for this protocol, direction and port {} exists already",
                q.port
            ),
        );
    }
    (c.problems.len() == before).then(|| QosRule {
        proto,
        direction,
        port: q.port,
        class: class.expect("checked"),
    })
}

fn class_by_name(name: &str) -> Option<QosClass> {
    QosClass::ALL
        .into_iter()
        .find(|c| c.name() == name || c.name().replace('-', "_") == name)
}

fn class_names() -> String {
    QosClass::ALL
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// [updater], [flows]

fn updater(c: &mut Checker, u: &UpdaterSection) -> DelayConfig {
    let ms = Duration::from_millis;
    let delays = DelayConfig {
        initial: ms(u.initial_delay_ms),
        short: ms(u.short_delay_ms),
        long: ms(u.long_delay_ms),
        time_to_learn: ms(u.time_to_learn_ms),
        holddown: ms(u.holddown_ms),
    };
    if delays.initial > delays.short {
        c.at_key(
            "updater",
            "initial_delay_ms",
            format!(
                "{} ms is longer than short_delay_ms ({} ms)",
                u.initial_delay_ms, u.short_delay_ms
            ),
        );
    }
    if delays.short > delays.long {
        c.at_key(
            "updater",
            "short_delay_ms",
            format!(
                "{} ms is longer than long_delay_ms ({} ms)",
                u.short_delay_ms, u.long_delay_ms
            ),
        );
    }
    if delays.long.is_zero() {
        c.at_key("updater", "long_delay_ms", "must be above 0");
    }
    if delays.holddown < delays.long {
        c.at_key(
            "updater",
            "holddown_ms",
            format!(
                "{} ms is shorter than long_delay_ms ({} ms)",
                u.holddown_ms, u.long_delay_ms
            ),
        );
    }
    if u.history_len == 0 {
        c.at_key("updater", "history_len", "must be at least 1");
    }
    if u.counters_interval_ms < 10 {
        c.at_key(
            "updater",
            "counters_interval_ms",
            format!("{} ms is below 10 ms", u.counters_interval_ms),
        );
    }
    delays
}

fn flows(c: &mut Checker, f: &FlowsConfig) {
    if !(1..=65_536).contains(&f.table_size) {
        c.at_key(
            "flows",
            "table_size",
            format!("{} is not in 1..=65536", f.table_size),
        );
    }
    if f.window_s == 0 {
        c.at_key("flows", "window_s", "must be at least 1");
    }
}

// ---------------------------------------------------------------------------------------------
// [link_state]

fn link_state(c: &mut Checker, s: &LinkStateSection, gw: &Gateway, local_links: &[LocalLink]) {
    let taken = match s.port {
        0 => Some("0 is no port"),
        VXLAN_PORT => Some("it is VXLAN's"),
        PROBE_PORT => Some("it is the probes'"),
        _ => None,
    };
    if let Some(why) = taken {
        c.at_key("link_state", "port", format!("{}: {why}", s.port));
    }
    if !(s.figure_change_percent.is_finite() && s.figure_change_percent >= 0.0) {
        c.at_key(
            "link_state",
            "figure_change_percent",
            format!("{} is not a percentage >= 0", s.figure_change_percent),
        );
    } else if let Err(e) = s.timers().validate() {
        c.at_key("link_state", link_state_field(&e), e.to_string());
    }
    if !s.enabled {
        return;
    }
    // The gateway's name is its records' origin (an empty one is reported with [gateway]).
    if !gw.name.is_empty() && Origin::new(&gw.name).is_err() {
        c.at_key(
            "gateway",
            "name",
            format!(
                "{} bytes: a link-state origin has 1 to {MAX_ORIGIN_LEN}",
                gw.name.len()
            ),
        );
    }
    let monitored = local_links.iter().filter(|l| l.monitored).count();
    if monitored > MAX_RECORD_LINKS {
        c.at_key(
            "link_state",
            "enabled",
            format!("{monitored} monitored local links: a record holds at most {MAX_RECORD_LINKS}"),
        );
    }
}

/// The `[link_state]` key a timer problem is about.
fn link_state_field(e: &LinkStateConfigError) -> &'static str {
    match e {
        LinkStateConfigError::Zero { name } => match *name {
            "refresh_interval" => "refresh_interval_ms",
            "retransmit_interval" => "retransmit_interval_ms",
            "hold_initial" => "hold_initial_ms",
            _ => "hold_half_life_ms",
        },
        LinkStateConfigError::RefreshAfterMaxAge { .. } => "refresh_interval_ms",
        LinkStateConfigError::MaxAge(_) => "max_age_ms",
        LinkStateConfigError::Hold { .. } => "hold_initial_ms",
        LinkStateConfigError::Relative(_) => "figure_change_percent",
    }
}

// ---------------------------------------------------------------------------------------------
// [store]

/// `[store]` alone (`AgentConfig::load_store`), its problems with the lines of `source`.
pub(super) fn store_only(s: &StoreSection, source: &str) -> Result<StoreConfig, ConfigError> {
    let mut c = Checker {
        source,
        problems: Vec::new(),
    };
    let store = store(&mut c, s);
    c.finish()?;
    Ok(store)
}

fn store(c: &mut Checker, s: &StoreSection) -> StoreConfig {
    let tls_keys = [
        ("tls_ca", &s.tls_ca),
        ("tls_cert", &s.tls_cert),
        ("tls_key", &s.tls_key),
    ];
    if s.kind == StoreKind::File {
        // Settings that would be silently ignored are mistakes.
        let set = [
            ("endpoints", !s.endpoints.is_empty()),
            ("prefix", s.prefix.is_some()),
        ]
        .into_iter()
        .chain(tls_keys.iter().map(|(k, v)| (*k, v.is_some())));
        for (key, _) in set.filter(|(_, set)| *set) {
            c.at_key("store", key, "only for kind = \"etcd\"");
        }
        return StoreConfig::File;
    }
    if s.endpoints.is_empty() {
        c.at_key("store", "kind", "kind = \"etcd\" needs store.endpoints");
    }
    for e in &s.endpoints {
        if let Err(why) = check_endpoint(e) {
            c.at_key("store", "endpoints", format!("{e:?}: {why}"));
        }
    }
    let prefix = s.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into());
    let trimmed = prefix.trim_end_matches('/');
    if !prefix.starts_with('/') || trimmed.is_empty() {
        c.at_key(
            "store",
            "prefix",
            format!("{prefix:?}: a key prefix starts with / and names something (\"/dwcp/v1\")"),
        );
    } else if prefix
        .chars()
        .any(|ch| ch.is_control() || ch.is_whitespace())
    {
        c.at_key(
            "store",
            "prefix",
            format!("{prefix:?}: no spaces or control characters"),
        );
    }
    let given = tls_keys.iter().filter(|(_, v)| v.is_some()).count();
    let tls = match (&s.tls_ca, &s.tls_cert, &s.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => {
            if given > 0 {
                for (key, _) in tls_keys.iter().filter(|(_, v)| v.is_none()) {
                    c.at_key(
                        "store",
                        key,
                        "missing: TLS needs tls_ca, tls_cert and tls_key",
                    );
                }
            }
            None
        }
    };
    let scheme = if tls.is_some() { "https://" } else { "http://" };
    for e in s.endpoints.iter().filter(|e| check_endpoint(e).is_ok()) {
        if !e.starts_with(scheme) {
            c.at_key(
                "store",
                "endpoints",
                format!(
                    "{e:?}: with{} TLS files, endpoints are {scheme}",
                    if tls.is_some() { "" } else { "out" }
                ),
            );
        }
    }
    StoreConfig::Etcd(EtcdConfig {
        endpoints: s.endpoints.clone(),
        prefix: trimmed.to_owned(),
        tls,
    })
}

/// `http(s)://host:port`, nothing after the port.
fn check_endpoint(e: &str) -> Result<(), &'static str> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or("not http://host:port or https://host:port")?;
    let (host, port) = rest.rsplit_once(':').ok_or("no port")?;
    if host.is_empty() || host.contains('/') {
        return Err("no host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port is not a number from 1 to 65535"),
    }
}

// ---------------------------------------------------------------------------------------------
// [[health_check]]

fn health_checks(
    c: &mut Checker,
    entries: &[Spanned<HealthCheckConfig>],
    model: Option<&Topology>,
) -> Vec<HealthCheckSpec> {
    let mut checks: Vec<HealthCheckSpec> = Vec::new();
    for (i, spanned) in entries.iter().enumerate() {
        let h = spanned.get_ref().clone();
        if model.is_some_and(|m| m.region_by_name(&h.region).is_none()) {
            c.at(
                spanned.span(),
                format!("health_check[{i}].region"),
                format!("unknown region {:?}", h.region),
            );
        }
        match HealthCheckSpec::try_from(h) {
            Ok(s) => {
                if checks.iter().any(|o| o.name == s.name) {
                    c.at(
                        spanned.span(),
                        format!("health_check[{i}].name"),
                        format!("{:?} is defined twice", s.name),
                    );
                }
                checks.push(s)
            }
            Err(e) => c.at(spanned.span(), format!("health_check[{i}]"), e.to_string()),
        }
    }
    checks
}

// ---------------------------------------------------------------------------------------------
// Lines and names.

/// Line of `key = ...` inside `[section]`, else of the section header (a default value that
/// conflicts with another field has no line of its own).
fn key_line(source: &str, section: &str, key: &str) -> Option<usize> {
    let start = section_line(source, section)?;
    for (i, l) in source.lines().enumerate().skip(start) {
        let t = l.trim();
        if t.starts_with('[') {
            break;
        }
        if t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    Some(start)
}

/// Line of a `[section]` header, for problems about a table's fields as a whole.
fn section_line(source: &str, section: &str) -> Option<usize> {
    let header = format!("[{section}]");
    source
        .lines()
        .position(|l| l.trim() == header)
        .map(|i| i + 1)
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && !s.contains('/')
        && !s.chars().any(|c| c.is_whitespace() || c == ':')
}
