//! The CLI's human-readable views of what the API returns: aligned columns with a header, no
//! borders (in the style of `ip`, `ss` and `kubectl get`), so they read well and grep well.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use dwcp_control::{
    bandwidth::Reservation,
    store::GatewayView,
    topology::RoutingHealth,
    view::{
        ClassView, LinkHealth, LinkView, LsdbRecord, LsdbView, PathRole, RouteChange, RouteView,
        StatusView, TopologyChanges, TopologyView, TunnelState, TunnelView,
    },
};

use crate::format;

fn table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for &i in right_aligned {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Tables pad every line to the widest; operators paste them, so drop trailing blanks.
fn render(t: &Table) -> String {
    let mut out: String = t
        .lines()
        .map(|l| l.trim_end().to_string())
        .map(|l| l.strip_prefix(' ').map(str::to_string).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

pub fn health(h: LinkHealth) -> &'static str {
    match h {
        LinkHealth::Up => "up",
        LinkHealth::Degraded => "degraded",
        LinkHealth::Down => "down",
        LinkHealth::AdminDown => "admin-down",
        LinkHealth::Unmeasured => "unmeasured",
    }
}

fn role(r: PathRole) -> &'static str {
    match r {
        PathRole::Primary => "primary",
        PathRole::Ecmp => "ecmp",
        PathRole::Secondary => "secondary",
    }
}

pub fn status(s: &StatusView) -> String {
    let mut out = format!(
        "gateway {} in {} (dwcp {})\n  up {}, config generation {}, topology generation {}\n  \
         links: {} up, {} down, {} in total\n  regions: {} of {} reachable over {} routes\n  \
         failovers: {}, route changes: {}\n",
        s.gateway,
        s.region,
        s.version,
        format::age(s.uptime_seconds).trim_end_matches(" ago"),
        s.config_generation,
        s.topology_generation,
        s.links_up,
        s.links_down,
        s.links_total,
        s.regions_reachable,
        s.regions_remote,
        s.routes,
        s.failovers_total,
        s.route_changes_total,
    );
    if let Some(g) = s.published_topology_generation {
        out += &format!("  topology from the cluster store: generation {g}\n");
    }
    if let (Some(a), Some(t)) = (s.reservations_active, s.reservations_stored) {
        out.push_str(&format!("  reservations: {a} active, {t} stored\n"));
    }
    if !s.topology_differs.is_empty() {
        out.push_str(&format!(
            "  topology: {} run another topology file than this gateway (their link state is \
             not applied)\n",
            s.topology_differs.join(", ")
        ));
    }
    out
}

pub fn topology(t: &TopologyView) -> String {
    let mut out = format!(
        "gateway {} in {}; topology generation {}\nregions: {}\n\n",
        t.gateway,
        t.region,
        t.generation,
        t.regions.join(", ")
    );
    let mut tab = table(
        &["ID", "LINK", "A", "B", "CAPACITY", "HEALTH", "LOCAL"],
        &[0, 4],
    );
    for l in &t.links {
        tab.add_row(vec![
            l.id.to_string(),
            l.name.clone(),
            l.a.clone(),
            l.b.clone(),
            format::bits_per_second(l.capacity_bps as f64),
            health(l.health).into(),
            if l.local { "yes" } else { "no" }.into(),
        ]);
    }
    out.push_str(&render(&tab));
    out
}

/// Every link of the network with its figures, and who measured it how long ago (the
/// link-state records that report it, `lsdb`, none when link state is off; else, in etcd
/// mode, the gateway whose figures the cluster store holds).
pub fn links(links: &[LinkView], lsdb: Option<&LsdbView>, now_unix_ms: u64) -> String {
    let measured_by = |l: &LinkView| -> String {
        let by: Vec<String> = lsdb
            .iter()
            .flat_map(|l| &l.records)
            .filter(|r| r.links.iter().any(|report| report.link.0 == l.id))
            .map(|r| format!("{} ({})", r.origin, record_age(r, now_unix_ms)))
            .collect();
        match &l.figures_from_store {
            _ if !by.is_empty() => by.join(", "),
            Some(s) => format!(
                "{} (store, {})",
                s.gateway,
                format::age(now_unix_ms.saturating_sub(s.measured_unix_ms) as f64 / 1e3)
            ),
            None => "-".into(),
        }
    };
    let mut tab = table(
        &[
            "ID",
            "LINK",
            "IFACE",
            "HEALTH",
            "RTT",
            "JITTER",
            "LOSS",
            "THROUGHPUT",
            "UTIL",
            "PROJECTED",
            "CAPACITY",
            "PROBES",
            "MEASURED BY",
        ],
        &[0, 4, 5, 6, 7, 8, 9, 10, 11],
    );
    for l in links {
        tab.add_row(vec![
            l.id.to_string(),
            l.name.clone(),
            l.interface.clone().unwrap_or_else(|| "-".into()),
            health(l.health).into(),
            opt(l.rtt_seconds, format::seconds),
            opt(l.jitter_seconds, format::seconds),
            opt(l.loss_ratio, format::percent),
            opt(l.throughput_bps, format::bits_per_second),
            opt(l.utilisation_ratio, format::percent),
            opt(l.projected_utilisation_ratio, format::percent),
            format::bits_per_second(l.capacity_bps as f64),
            format!("{}/{}", l.probes_received, l.probes_sent),
            measured_by(l),
        ]);
    }
    render(&tab)
}

/// How long ago a record's origin made it.
fn record_age(r: &LsdbRecord, now_unix_ms: u64) -> String {
    format::age(now_unix_ms.saturating_sub(r.originated_unix_ms) as f64 / 1e3)
}

/// The link-state database: what this gateway's flooding did, then one line per link of every
/// record (origin, sequence number, age, topology, and what it says of the link).
pub fn lsdb(l: &LsdbView, now_unix_ms: u64) -> String {
    let neighbours: Vec<String> = l.neighbours.iter().map(u32::to_string).collect();
    let mut out = format!(
        "gateway {}, topology {}; neighbours over links {}\n\
         records: {} received, {} flooded, {} aged out; datagrams dropped: {} from no peer, \
         {} malformed\n\n",
        l.origin,
        l.digest,
        if neighbours.is_empty() {
            "-".into()
        } else {
            neighbours.join(", ")
        },
        l.records_received,
        l.records_flooded,
        l.records_aged_out,
        l.datagrams_foreign,
        l.datagrams_malformed,
    );
    let mut tab = table(
        &[
            "ORIGIN", "SEQ", "AGE", "TOPOLOGY", "LINK", "HEALTH", "RTT", "JITTER", "LOSS", "UTIL",
        ],
        &[1, 4, 6, 7, 8, 9],
    );
    let ms = |us: Option<u32>| opt(us.map(|v| f64::from(v) / 1e6), format::seconds);
    let bp = |v: Option<u16>| opt(v.map(|v| f64::from(v) / 1e4), format::percent);
    for r in &l.records {
        let topology = if r.digest == l.digest {
            "ours".to_string()
        } else {
            format!("other ({})", r.digest)
        };
        let head = [
            r.origin.clone(),
            r.seq.to_string(),
            record_age(r, now_unix_ms),
            topology,
        ];
        if r.links.is_empty() {
            tab.add_row(head.iter().cloned().chain((0..6).map(|_| "-".to_string())));
        }
        for report in &r.links {
            let f = &report.figures;
            tab.add_row(head.iter().cloned().chain([
                report.link.0.to_string(),
                routing_health(report.health).into(),
                ms(f.rtt_us),
                ms(f.jitter_us),
                bp(f.loss),
                bp(f.utilisation),
            ]));
        }
    }
    out.push_str(&render(&tab));
    out
}

fn routing_health(h: RoutingHealth) -> &'static str {
    match h {
        RoutingHealth::Up => "up",
        RoutingHealth::Degraded => "degraded",
        RoutingHealth::Down => "down",
    }
}

/// One block per destination: its paths (role, weight, links, latency, live) and why.
pub fn routes(routes: &[RouteView]) -> String {
    let mut out = String::new();
    for r in routes {
        out.push_str(&format!(
            "{} ({}) group {} strategy {}\n  why: {}\n",
            r.destination,
            r.prefixes.join(", "),
            r.group_id,
            r.strategy,
            r.reason
        ));
        let mut tab = table(
            &[
                "ROLE", "WEIGHT", "VIA", "LINKS", "LATENCY", "NEXTHOP", "LIVE",
            ],
            &[1, 4, 5],
        );
        for p in &r.paths {
            tab.add_row(vec![
                role(p.role).to_string(),
                p.weight.to_string(),
                p.regions.join(" > "),
                p.links
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                format::seconds(p.latency_seconds),
                p.next_hop.to_string(),
                if p.live { "yes" } else { "no" }.into(),
            ]);
        }
        for line in render(&tab).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("no routes\n");
    }
    out
}

fn paths(p: &[Vec<u32>]) -> String {
    if p.is_empty() {
        return "-".into();
    }
    p.iter()
        .map(|links| {
            links
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

pub fn history(changes: &[RouteChange]) -> String {
    let mut tab = table(
        &["TIME (UTC)", "DESTINATION", "BEFORE", "AFTER", "WHY"],
        &[],
    );
    for c in changes {
        tab.add_row(vec![
            format::unix_time(c.at_unix_ms / 1000),
            c.destination.clone(),
            paths(&c.before),
            paths(&c.after),
            c.reason.clone(),
        ]);
    }
    render(&tab)
}

/// Per QoS class: counters, rates, the rate offered (from sampled packets) and what
/// reservations hold.
pub fn classes(classes: &[ClassView]) -> String {
    let mut tab = table(
        &[
            "CLASS", "PACKETS", "BYTES", "RATE", "PPS", "AVG RATE", "OFFERED", "RESERVED",
        ],
        &[1, 2, 3, 4, 5, 6, 7],
    );
    for c in classes {
        tab.add_row(vec![
            c.class.clone(),
            c.packets.to_string(),
            format::bytes(c.bytes),
            opt(c.throughput_bps, format::bits_per_second),
            opt(c.packets_per_sec, |p| format!("{p:.0}")),
            opt(c.smoothed_throughput_bps, format::bits_per_second),
            format::bits_per_second(c.offered_bps),
            format::bits_per_second(c.reserved_bps as f64),
        ]);
    }
    render(&tab)
}

/// The top-flows table: one line of what it covers, then the flows, heaviest first.
pub fn flows(f: &dwcp_control::traffic::FlowsView, now_unix_s: u64) -> String {
    if f.sample_every == 0 {
        return "flow sampling is off ([flows] sample_every = 0)\n".into();
    }
    let age = now_unix_s.saturating_sub(f.window_started_unix_ms / 1_000);
    let mut out = format!(
        "sampling 1 in {} packets; window of {} s, started {}; {} samples, {} estimated\n",
        f.sample_every,
        f.window_seconds,
        format::age(age as f64),
        f.samples,
        format::bytes(f.bytes)
    );
    if f.flows.is_empty() {
        out.push_str("no flows sampled yet\n");
        return out;
    }
    let mut tab = table(
        &[
            "SOURCE",
            "DESTINATION",
            "PROTO",
            "CLASS",
            "BYTES",
            "SHARE",
            "ERROR",
        ],
        &[4, 5, 6],
    );
    let endpoint = |ip: std::net::IpAddr, port: u16| match ip {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    for fl in &f.flows {
        tab.add_row(vec![
            endpoint(fl.src, fl.src_port),
            endpoint(fl.dst, fl.dst_port),
            fl.protocol.clone(),
            fl.class.clone().unwrap_or_else(|| "-".into()),
            format::bytes(fl.bytes),
            format::percent(fl.share),
            format!("±{}", format::bytes(fl.error_bytes)),
        ]);
    }
    out.push_str(&render(&tab));
    out
}

/// A push's or a diff's answer.
pub fn topology_changes(t: &TopologyChanges) -> String {
    let from = t
        .from_generation
        .map_or("nothing published".to_string(), |g| {
            format!("generation {g}")
        });
    let mut out = match t.generation {
        Some(g) if Some(g) == t.from_generation => {
            format!("generation {g} already has this topology: nothing published\n")
        }
        Some(g) => format!(
            "published topology generation {g} ({} change{} from {from})\n",
            t.changes.len(),
            if t.changes.len() == 1 { "" } else { "s" }
        ),
        None if t.changes.is_empty() => format!("no change from {from}\n"),
        None => format!("changes from {from}:\n"),
    };
    if t.generation.is_none() || t.generation != t.from_generation {
        for c in &t.changes {
            out += &format!("  {c}\n");
        }
    }
    out
}

/// Gateways by name; generation 0 is a gateway on its file's topology.
pub fn gateways(gateways: &[GatewayView]) -> String {
    if gateways.is_empty() {
        return "no gateways registered\n".into();
    }
    let mut tab = table(
        &[
            "GATEWAY",
            "REGION",
            "ADDRESS",
            "VERSION",
            "TOPOLOGY",
            "LAST CONTACT",
        ],
        &[4],
    );
    for g in gateways {
        let r = &g.record;
        tab.add_row(vec![
            r.name.clone(),
            r.region.clone(),
            if r.address.is_empty() {
                "-".into()
            } else {
                r.address.clone()
            },
            r.version.clone(),
            match r.topology_generation {
                0 => "file".into(),
                g => g.to_string(),
            },
            opt(g.last_contact_seconds.map(|s| s as f64), format::age),
        ]);
    }
    render(&tab)
}

pub fn tunnels(tunnels: &[TunnelView]) -> String {
    if tunnels.is_empty() {
        return "no tunnels\n".into();
    }
    let mut tab = table(
        &[
            "TUNNEL",
            "KIND",
            "LINK",
            "IFACE",
            "STATE",
            "LOCAL",
            "REMOTE",
            "VNI",
            "MTU",
            "HANDSHAKE",
            "RX",
            "TX",
            "PROBE",
            "PROBLEMS",
        ],
        &[2, 7, 8, 10, 11],
    );
    for t in tunnels {
        tab.add_row(vec![
            t.name.clone(),
            t.kind.clone(),
            t.link.map_or("-".into(), |l| l.to_string()),
            t.interface.clone().unwrap_or_else(|| "-".into()),
            match t.state {
                TunnelState::Up => "up",
                TunnelState::Degraded => "degraded",
                TunnelState::Down => "down",
            }
            .into(),
            t.local_ip.clone().unwrap_or_else(|| "-".into()),
            t.remote_ip.clone().unwrap_or_else(|| "-".into()),
            t.vni.map_or("-".into(), |v| v.to_string()),
            t.mtu.map_or("-".into(), |m| m.to_string()),
            opt(t.handshake_age_seconds, format::age),
            t.rx_bytes.map_or("-".into(), format::bytes),
            t.tx_bytes.map_or("-".into(), format::bytes),
            match t.probe_alive {
                Some(true) => "alive",
                Some(false) => "dead",
                None => "-",
            }
            .into(),
            if t.problems.is_empty() {
                "-".into()
            } else {
                t.problems.join("; ")
            },
        ]);
    }
    render(&tab)
}

pub fn reservations(rs: &[Reservation], now: u64) -> String {
    if rs.is_empty() {
        return "no reservations\n".into();
    }
    let mut tab = table(
        &[
            "ID", "OWNER", "FROM", "TO", "CLASS", "RATE", "PRIO", "PATH", "START", "END", "STATE",
        ],
        &[0, 5, 6],
    );
    for r in rs {
        tab.add_row(vec![
            r.id.to_string(),
            if r.owner.is_empty() {
                "-".into()
            } else {
                r.owner.clone()
            },
            r.source.clone(),
            r.destination.clone(),
            r.class.name().into(),
            format::bits_per_second(r.rate_bps as f64),
            r.priority.to_string(),
            r.path
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(","),
            format::unix_time(r.start),
            format::unix_time(r.end),
            if r.active_at(now) {
                "active"
            } else if r.end <= now {
                "ended"
            } else {
                "scheduled"
            }
            .into(),
        ]);
    }
    render(&tab)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_lab::fixtures::three_region_snapshot;

    #[test]
    fn links_table_shows_measured_figures_and_dashes_for_unmeasured() {
        let s = three_region_snapshot();
        let text = links(&s.links, None, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID"), "{text}");
        assert!(lines[0].contains("RTT") && lines[0].contains("LOSS"));
        let l1 = lines.iter().find(|l| l.contains("use1-euw1")).unwrap();
        assert!(l1.contains("80.3 ms") && l1.contains(" up "), "{l1}");
        assert!(
            l1.contains("300 Mbit/s") && l1.contains("11998/12000"),
            "{l1}"
        );
        let l2 = lines.iter().find(|l| l.contains("euw1-aps1")).unwrap();
        assert!(l2.contains("unmeasured") && l2.contains(" - "), "{l2}");
        assert!(lines.iter().all(|l| l == &l.trim_end()));

        // Figures from the cluster store: shown with who published them, and the health
        // stays unmeasured.
        let mut from_store = s.links.clone();
        from_store[1].rtt_seconds = Some(0.1204);
        from_store[1].figures_from_store = Some(dwcp_control::view::StoreFiguresSource {
            gateway: "gw-euw1-a".into(),
            measured_unix_ms: 1_700_000_000_000,
        });
        let text = links(&from_store, None, 1_700_000_003_000);
        let l2 = text.lines().find(|l| l.contains("euw1-aps1")).unwrap();
        assert!(l2.contains("unmeasured") && l2.contains("120.4 ms"), "{l2}");
        assert!(l2.ends_with("gw-euw1-a (store, 3 s ago)"), "{l2}");
    }

    #[test]
    fn lsdb_and_links_show_who_measured_each_link_and_when() {
        use dwcp_control::link_state::{Figures, LinkReport};
        use dwcp_control::topology::LinkId;
        let now = 1_700_000_010_000;
        let report = |link, health, rtt_ms: Option<f64>| LinkReport {
            link: LinkId(link),
            health,
            figures: Figures::quantise(rtt_ms, None, None, None),
        };
        let record = |origin: &str, seq, age_ms, digest: &str, links| LsdbRecord {
            origin: origin.into(),
            seq,
            digest: digest.into(),
            originated_unix_ms: now - age_ms,
            links,
        };
        let view = LsdbView {
            origin: "gw-use1-a".into(),
            digest: "00000000000000aa".into(),
            records: vec![
                record(
                    "gw-euw1-a",
                    7,
                    3_000,
                    "00000000000000aa",
                    vec![
                        report(1, RoutingHealth::Down, None),
                        report(2, RoutingHealth::Up, Some(120.0)),
                    ],
                ),
                record("gw-x", 1, 500, "00000000000000bb", vec![]),
            ],
            neighbours: vec![1, 3],
            records_received: 5,
            records_flooded: 9,
            records_aged_out: 1,
            datagrams_foreign: 2,
            datagrams_malformed: 0,
            datagrams_unauthenticated: 0,
        };
        let text = lsdb(&view, now);
        assert!(text.contains("neighbours over links 1, 3"), "{text}");
        assert!(text.contains("5 received, 9 flooded, 1 aged out"), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("gw-")).collect();
        assert_eq!(rows.len(), 3, "one line per link of each record:\n{text}");
        assert!(
            rows[0].contains("3 s ago") && rows[0].contains(" down"),
            "{text}"
        );
        assert!(
            rows[1].contains("120 ms") && rows[1].contains(" up"),
            "{text}"
        );
        assert!(rows[2].contains("other (00000000000000bb)"), "{text}");

        let s = three_region_snapshot();
        let text = links(&s.links, Some(&view), now);
        let l2 = text.lines().find(|l| l.contains("euw1-aps1")).unwrap();
        assert!(l2.ends_with("gw-euw1-a (3 s ago)"), "{l2}");
        let l3 = text.lines().find(|l| l.contains("use1-aps1")).unwrap();
        assert!(l3.ends_with(" -"), "nobody reports link 3: {l3}");
    }

    #[test]
    fn status_names_the_gateways_of_another_topology() {
        let mut s = three_region_snapshot();
        let quiet = status(&StatusView::new(&s, 0));
        assert!(!quiet.contains("topology:"), "{quiet}");
        s.lsdb = Some(std::sync::Arc::new(LsdbView {
            digest: "aa".into(),
            records: vec![LsdbRecord {
                origin: "gw-x".into(),
                seq: 1,
                digest: "bb".into(),
                originated_unix_ms: 0,
                links: vec![],
            }],
            ..LsdbView::default()
        }));
        let text = status(&StatusView::new(&s, 0));
        assert!(
            text.contains("topology: gw-x run another topology file"),
            "{text}"
        );
    }

    #[test]
    fn routes_show_each_path_and_why() {
        let s = three_region_snapshot();
        let text = routes(&s.routes);
        assert!(text.contains("ap-south-1 (10.3.0.0/16) group 3 strategy latency"));
        assert!(text.contains("why: min latency 200.3 ms via eu-west-1"));
        assert!(
            text.contains("us-east-1 > eu-west-1 > ap-south-1"),
            "{text}"
        );
    }
}
