//! The metric families of one scrape, built from the agent's current snapshot (reservations
//! included). Names follow the Prometheus conventions:
//! one `dwcp_` prefix, base units (seconds, bytes, ratios), `_total` for counters, and label
//! values drawn from bounded sets (configured links, regions, next hops, the five classes, the
//! fast path's reasons, the link states).

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

use crate::agent::{AgentSnapshot, LinkHealth, LsdbView, ReservationsView, TunnelState};

/// Every link state, so that `dwcp_link_health` is one-hot over a fixed set.
const LINK_STATES: [(LinkHealth, &str); 5] = [
    (LinkHealth::Up, "up"),
    (LinkHealth::Degraded, "degraded"),
    (LinkHealth::Down, "down"),
    (LinkHealth::AdminDown, "admin_down"),
    (LinkHealth::Unmeasured, "unmeasured"),
];

/// One scrape's worth of data; encodes itself into the registry it is registered with.
#[derive(Debug)]
pub struct SnapshotCollector {
    pub snapshot: Arc<AgentSnapshot>,
}

type Labels = Vec<(&'static str, String)>;

/// Writes one family, skipping it when it has no sample.
fn family<V: Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, V)>,
    write: impl Fn(&mut MetricEncoder, V) -> std::fmt::Result,
) -> std::fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, value) in &samples {
        if labels.is_empty() {
            write(&mut metric, *value)?;
        } else {
            write(&mut metric.encode_family(labels)?, *value)?;
        }
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: Vec<(Labels, f64)>,
) -> std::fmt::Result {
    family(enc, name, help, unit, MetricType::Gauge, samples, |m, v| {
        m.encode_gauge(&v)
    })
}

/// Gauges whose values are whole numbers (states, counts, generations) print without `.0`.
fn int_gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, i64)>,
) -> std::fmt::Result {
    family(enc, name, help, None, MetricType::Gauge, samples, |m, v| {
        m.encode_gauge(&v)
    })
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: Vec<(Labels, u64)>,
) -> std::fmt::Result {
    family(
        enc,
        name,
        help,
        unit,
        MetricType::Counter,
        samples,
        |m, v| m.encode_counter::<NoLabelSet, _, u64>(&v, None),
    )
}

fn ratio() -> Option<Unit> {
    // Prometheus names ratios `_ratio` (the crate's `Unit::Ratios` would say `_ratios`).
    Some(Unit::Other("ratio".into()))
}

fn bytes_per_second() -> Option<Unit> {
    Some(Unit::Other("bytes_per_second".into()))
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.snapshot;
        let enc = &mut enc;
        int_gauges(
            enc,
            "dwcp_build_info",
            "Agent build and identity; always 1.",
            vec![(
                vec![
                    ("version", s.version.clone()),
                    ("gateway", s.gateway.clone()),
                    ("region", s.region.clone()),
                ],
                1,
            )],
        )?;
        gauges(
            enc,
            "dwcp_start_time",
            "When the agent started, Unix time.",
            Some(Unit::Seconds),
            vec![(vec![], s.started_unix_ms as f64 / 1e3)],
        )?;
        int_gauges(
            enc,
            "dwcp_config_generation",
            "Generation of the configuration in force (increases on each accepted reload).",
            vec![(vec![], s.config_generation as i64)],
        )?;
        int_gauges(
            enc,
            "dwcp_topology_generation",
            "Generation of the topology in force.",
            vec![(vec![], s.topology_generation as i64)],
        )?;
        self.encode_links(enc)?;
        self.encode_routes(enc)?;
        self.encode_counters(enc)?;
        self.encode_tunnels(enc)?;
        if let Some(r) = &s.reservations {
            encode_reservations(enc, s, r)?;
        }
        if let Some(l) = &s.lsdb {
            encode_link_state(enc, l)?;
        }
        Ok(())
    }
}

fn link_labels(id: u32, name: &str) -> Labels {
    vec![("link", name.to_string()), ("link_id", id.to_string())]
}

impl SnapshotCollector {
    fn encode_links(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let links = &self.snapshot.links;
        let measured = |f: fn(&crate::agent::LinkView) -> Option<f64>| -> Vec<(Labels, f64)> {
            links
                .iter()
                .filter_map(|l| f(l).map(|v| (link_labels(l.id, &l.name), v)))
                .collect()
        };
        gauges(
            enc,
            "dwcp_link_rtt",
            "Smoothed round-trip time of the link measured by the probes.",
            Some(Unit::Seconds),
            measured(|l| l.rtt_seconds),
        )?;
        gauges(
            enc,
            "dwcp_link_jitter",
            "Interarrival jitter of the link's round-trip time (RFC 3550).",
            Some(Unit::Seconds),
            measured(|l| l.jitter_seconds),
        )?;
        gauges(
            enc,
            "dwcp_link_loss",
            "Share of probes lost over the loss window.",
            ratio(),
            measured(|l| l.loss_ratio),
        )?;
        gauges(
            enc,
            "dwcp_link_throughput",
            "Traffic the fast path sends over the link.",
            bytes_per_second(),
            measured(|l| l.throughput_bps.map(|b| b / 8.0)),
        )?;
        gauges(
            enc,
            "dwcp_link_utilisation",
            "Share of the link's capacity in use.",
            ratio(),
            measured(|l| l.utilisation_ratio),
        )?;
        gauges(
            enc,
            "dwcp_link_projected_utilisation",
            "Share of the link's capacity in use after the reservations' next start or end \
             (unreserved traffic now plus what will be reserved then).",
            ratio(),
            measured(|l| l.projected_utilisation_ratio),
        )?;
        gauges(
            enc,
            "dwcp_link_capacity",
            "Configured capacity of the link.",
            bytes_per_second(),
            links
                .iter()
                .map(|l| (link_labels(l.id, &l.name), l.capacity_bps as f64 / 8.0))
                .collect(),
        )?;
        int_gauges(
            enc,
            "dwcp_link_health",
            "1 for the link's current state, 0 for the others.",
            links
                .iter()
                .flat_map(|l| {
                    LINK_STATES.iter().map(move |(state, name)| {
                        let mut labels = link_labels(l.id, &l.name);
                        labels.push(("state", (*name).to_string()));
                        (labels, i64::from(l.health == *state))
                    })
                })
                .collect(),
        )?;
        counters(
            enc,
            "dwcp_link_probes_sent",
            "Probes sent on the link.",
            None,
            links
                .iter()
                .map(|l| (link_labels(l.id, &l.name), l.probes_sent))
                .collect(),
        )?;
        counters(
            enc,
            "dwcp_link_probes_received",
            "Probe replies received on the link.",
            None,
            links
                .iter()
                .map(|l| (link_labels(l.id, &l.name), l.probes_received))
                .collect(),
        )
    }

    fn encode_routes(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let s = &self.snapshot;
        counters(
            enc,
            "dwcp_route_changes",
            "Route changes programmed into the fast path.",
            None,
            vec![(vec![], s.route_changes_total)],
        )?;
        counters(
            enc,
            "dwcp_failovers",
            "Failovers from a primary path to a secondary.",
            None,
            vec![(vec![], s.failovers_total)],
        )?;
        int_gauges(
            enc,
            "dwcp_route_paths",
            "Paths of the route to a region, by role, and how many of them are live.",
            s.routes
                .iter()
                .flat_map(|r| {
                    ["primary", "ecmp", "secondary"]
                        .into_iter()
                        .map(move |role| {
                            let n = r
                                .paths
                                .iter()
                                .filter(|p| role_name(p.role) == role && p.live)
                                .count();
                            (
                                vec![
                                    ("destination", r.destination.clone()),
                                    ("role", role.to_string()),
                                ],
                                n as i64,
                            )
                        })
                })
                .collect(),
        )?;
        gauges(
            enc,
            "dwcp_route_latency",
            "Latency of the best live path to a region.",
            Some(Unit::Seconds),
            s.routes
                .iter()
                .filter_map(|r| {
                    r.paths
                        .iter()
                        .filter(|p| p.live)
                        .map(|p| p.latency_seconds)
                        .min_by(f64::total_cmp)
                        .map(|l| (vec![("destination", r.destination.clone())], l))
                })
                .collect(),
        )?;
        int_gauges(
            enc,
            "dwcp_region_reachable",
            "1 if the fast path has a live path to the region, else 0.",
            s.regions
                .iter()
                .filter(|r| **r != s.region)
                .map(|region| {
                    let up = s
                        .routes
                        .iter()
                        .any(|r| &r.destination == region && r.paths.iter().any(|p| p.live));
                    (vec![("region", region.clone())], i64::from(up))
                })
                .collect(),
        )
    }

    fn encode_counters(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let c = &self.snapshot.counters;
        let nh = |id: u32| vec![("nexthop", id.to_string())];
        counters(
            enc,
            "dwcp_nexthop_packets",
            "Packets the fast path sent to a next hop.",
            None,
            c.nexthops.iter().map(|&(id, p, _)| (nh(id), p)).collect(),
        )?;
        counters(
            enc,
            "dwcp_nexthop",
            "Bytes the fast path sent to a next hop (inner packets).",
            Some(Unit::Bytes),
            c.nexthops.iter().map(|&(id, _, b)| (nh(id), b)).collect(),
        )?;
        let class = |name: &str| vec![("class", name.to_string())];
        counters(
            enc,
            "dwcp_class_packets",
            "Packets of a QoS class forwarded by the fast path.",
            None,
            c.classes.iter().map(|(n, p, _)| (class(n), *p)).collect(),
        )?;
        counters(
            enc,
            "dwcp_class",
            "Bytes of a QoS class forwarded by the fast path.",
            Some(Unit::Bytes),
            c.classes.iter().map(|(n, _, b)| (class(n), *b)).collect(),
        )?;
        gauges(
            enc,
            "dwcp_class_throughput",
            "Rate of a QoS class through the fast path over the last counters interval.",
            bytes_per_second(),
            self.snapshot
                .classes
                .iter()
                .filter_map(|c| Some((class(&c.class), c.throughput_bps? / 8.0)))
                .collect(),
        )?;
        counters(
            enc,
            "dwcp_fastpath_packets",
            "Packets by what the fast path did with them (forwarded, passed up and why, ...).",
            None,
            c.reasons
                .iter()
                .map(|(n, v)| (vec![("reason", n.clone())], *v))
                .collect(),
        )
    }

    fn encode_tunnels(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let tunnels = &self.snapshot.tunnels;
        let t = |name: &str| vec![("tunnel", name.to_string())];
        int_gauges(
            enc,
            "dwcp_tunnel_up",
            "1 if the tunnel device matches its spec and works, else 0.",
            tunnels
                .iter()
                .map(|x| (t(&x.name), i64::from(x.state == TunnelState::Up)))
                .collect(),
        )?;
        gauges(
            enc,
            "dwcp_tunnel_handshake_age",
            "Time since the tunnel's last completed handshake (WireGuard).",
            Some(Unit::Seconds),
            tunnels
                .iter()
                .filter_map(|x| x.handshake_age_seconds.map(|a| (t(&x.name), a)))
                .collect(),
        )?;
        counters(
            enc,
            "dwcp_tunnel_received",
            "Bytes received by the tunnel device.",
            Some(Unit::Bytes),
            tunnels
                .iter()
                .filter_map(|x| x.rx_bytes.map(|b| (t(&x.name), b)))
                .collect(),
        )?;
        counters(
            enc,
            "dwcp_tunnel_transmitted",
            "Bytes sent by the tunnel device.",
            Some(Unit::Bytes),
            tunnels
                .iter()
                .filter_map(|x| x.tx_bytes.map(|b| (t(&x.name), b)))
                .collect(),
        )?;
        int_gauges(
            enc,
            "dwcp_tunnel_probe_alive",
            "1 if the in-tunnel probes find the tunnel's link alive, else 0 (probed links only).",
            tunnels
                .iter()
                .filter_map(|x| x.probe_alive.map(|a| (t(&x.name), i64::from(a))))
                .collect(),
        )
    }
}

fn encode_reservations(
    enc: &mut DescriptorEncoder,
    s: &AgentSnapshot,
    r: &ReservationsView,
) -> std::fmt::Result {
    int_gauges(
        enc,
        "dwcp_reservations_active",
        "Reservations holding bandwidth now.",
        vec![(vec![], r.active as i64)],
    )?;
    int_gauges(
        enc,
        "dwcp_reservations_stored",
        "Reservations stored (current and future).",
        vec![(vec![], r.stored.len() as i64)],
    )?;
    gauges(
        enc,
        "dwcp_link_reserved",
        "Bandwidth reserved on the link now.",
        bytes_per_second(),
        r.reserved_bps
            .iter()
            .map(|(&id, &bps)| {
                let name = s
                    .links
                    .iter()
                    .find(|l| l.id == id)
                    .map_or_else(|| id.to_string(), |l| l.name.clone());
                (link_labels(id, &name), bps as f64 / 8.0)
            })
            .collect(),
    )?;
    counters(
        enc,
        "dwcp_reservation_events",
        "Reservation changes since the agent started: created, extended, cancelled, expired, \
         preempted, displaced.",
        None,
        r.events
            .by_name()
            .into_iter()
            .map(|(e, n)| (vec![("event", e.to_string())], n))
            .collect(),
    )
}

fn encode_link_state(enc: &mut DescriptorEncoder, l: &LsdbView) -> std::fmt::Result {
    int_gauges(
        enc,
        "dwcp_link_state_records",
        "Records in the link-state database (one per gateway heard of, this one included).",
        vec![(vec![], l.records.len() as i64)],
    )?;
    counters(
        enc,
        "dwcp_link_state_records_received",
        "Link-state records received from neighbours (duplicates included).",
        None,
        vec![(vec![], l.records_received)],
    )?;
    counters(
        enc,
        "dwcp_link_state_records_flooded",
        "Link-state records sent to neighbours (retransmissions included).",
        None,
        vec![(vec![], l.records_flooded)],
    )?;
    counters(
        enc,
        "dwcp_link_state_records_aged_out",
        "Link-state records removed because their gateway stopped refreshing them.",
        None,
        vec![(vec![], l.records_aged_out)],
    )?;
    counters(
        enc,
        "dwcp_link_state_datagrams_dropped",
        "Link-state datagrams dropped: from an address that is no link's peer, malformed, or \
         without a valid MAC on a link with a shared key.",
        None,
        vec![
            (vec![("reason", "foreign".to_string())], l.datagrams_foreign),
            (
                vec![("reason", "malformed".to_string())],
                l.datagrams_malformed,
            ),
            (
                vec![("reason", "unauthenticated".to_string())],
                l.datagrams_unauthenticated,
            ),
        ],
    )?;
    int_gauges(
        enc,
        "dwcp_link_state_topology_mismatch",
        "Gateways whose records carry another topology digest than this one's (another \
         topology file): their records are not applied.",
        vec![(vec![], l.other_topologies().count() as i64)],
    )
}

fn role_name(role: crate::agent::PathRole) -> &'static str {
    match role {
        crate::agent::PathRole::Primary => "primary",
        crate::agent::PathRole::Ecmp => "ecmp",
        crate::agent::PathRole::Secondary => "secondary",
    }
}
