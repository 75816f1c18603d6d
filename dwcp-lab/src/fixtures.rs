//! A fixed snapshot of the seed's three regions as seen from us-east-1: what the API, metrics
//! and CLI tests publish on a real watch channel until the daemon publishes real ones.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::{broadcast, mpsc, watch};

use dwcp_agent::agent::AgentCommand;
use dwcp_agent::agent::AgentEvent;
use dwcp_agent::agent::AgentSnapshot;
use dwcp_agent::agent::ClassView;
use dwcp_agent::agent::CommandError;
use dwcp_agent::agent::CounterView;
use dwcp_agent::agent::LinkHealth;
use dwcp_agent::agent::LinkView;
use dwcp_agent::agent::PathRole;
use dwcp_agent::agent::PathView;
use dwcp_agent::agent::ReservationsView;
use dwcp_agent::agent::RouteChange;
use dwcp_agent::agent::RouteView;
use dwcp_agent::agent::TunnelState;
use dwcp_agent::agent::TunnelView;
use dwcp_common::{QosClass, Reason};
use dwcp_control::bandwidth::ReservationManager;
use dwcp_control::input::unix_now;
use dwcp_control::link_state::{Figures, LinkReport};
use dwcp_control::topology::{LinkId, RoutingHealth};
use dwcp_control::view::{LsdbRecord, LsdbView};

/// us-east-1's view: link 1 (to eu-west-1) up and measured, link 3 (to ap-south-1) degraded,
/// link 2 (between the two others) remote and unmeasured.
pub fn three_region_snapshot() -> AgentSnapshot {
    let link = |id: u32, name: &str, a: &str, b: &str| LinkView {
        id,
        name: name.into(),
        a: a.into(),
        b: b.into(),
        interface: None,
        health: LinkHealth::Unmeasured,
        rtt_seconds: None,
        jitter_seconds: None,
        loss_ratio: None,
        capacity_bps: 0,
        utilisation_ratio: None,
        projected_utilisation_ratio: None,
        projected_at_unix_s: None,
        throughput_bps: None,
        probes_sent: 0,
        probes_received: 0,
        figures_from_store: None,
    };
    let links = vec![
        LinkView {
            interface: Some("ul1".into()),
            health: LinkHealth::Up,
            rtt_seconds: Some(0.0803),
            jitter_seconds: Some(0.0012),
            loss_ratio: Some(0.0),
            capacity_bps: 1_000_000_000,
            utilisation_ratio: Some(0.3),
            projected_utilisation_ratio: Some(0.45),
            projected_at_unix_s: Some(1_700_003_600),
            throughput_bps: Some(300e6),
            probes_sent: 12_000,
            probes_received: 11_998,
            ..link(1, "use1-euw1", "us-east-1", "eu-west-1")
        },
        LinkView {
            capacity_bps: 900_000_000,
            ..link(2, "euw1-aps1", "eu-west-1", "ap-south-1")
        },
        LinkView {
            interface: Some("ul3".into()),
            health: LinkHealth::Degraded,
            rtt_seconds: Some(0.2011),
            jitter_seconds: Some(0.0094),
            loss_ratio: Some(0.07),
            capacity_bps: 800_000_000,
            utilisation_ratio: Some(0.55),
            throughput_bps: Some(440e6),
            probes_sent: 12_000,
            probes_received: 11_160,
            ..link(3, "use1-aps1", "us-east-1", "ap-south-1")
        },
    ];
    let path = |regions: &[&str], links: &[u32], latency: f64, role, weight, nh, live| PathView {
        regions: regions.iter().map(|r| r.to_string()).collect(),
        links: links.to_vec(),
        latency_seconds: latency,
        role,
        weight,
        next_hop: nh,
        live,
    };
    let routes = vec![
        RouteView {
            destination: "eu-west-1".into(),
            prefixes: vec!["10.2.0.0/16".into()],
            strategy: "latency".into(),
            group_id: 2,
            paths: vec![
                path(
                    &["us-east-1", "eu-west-1"],
                    &[1],
                    0.0803,
                    PathRole::Primary,
                    1,
                    1,
                    true,
                ),
                path(
                    &["us-east-1", "ap-south-1", "eu-west-1"],
                    &[3, 2],
                    0.3211,
                    PathRole::Secondary,
                    0,
                    3,
                    true,
                ),
            ],
            reason: "min latency 80.3 ms via link 1".into(),
        },
        RouteView {
            destination: "ap-south-1".into(),
            prefixes: vec!["10.3.0.0/16".into()],
            strategy: "latency".into(),
            group_id: 3,
            paths: vec![
                path(
                    &["us-east-1", "eu-west-1", "ap-south-1"],
                    &[1, 2],
                    0.2003,
                    PathRole::Primary,
                    1,
                    1,
                    true,
                ),
                path(
                    &["us-east-1", "ap-south-1"],
                    &[3],
                    0.2011,
                    PathRole::Secondary,
                    0,
                    3,
                    true,
                ),
            ],
            reason: "min latency 200.3 ms via eu-west-1; link 3 degraded (loss 7 %)".into(),
        },
    ];
    let history = vec![
        RouteChange {
            at_unix_ms: 1_700_000_000_000,
            destination: "ap-south-1".into(),
            reason: "initial".into(),
            before: vec![],
            after: vec![vec![3], vec![1, 2]],
            before_weights: vec![],
            after_weights: vec![1, 1],
        },
        RouteChange {
            at_unix_ms: 1_700_000_060_000,
            destination: "ap-south-1".into(),
            reason: "link 3 degraded (loss 7 %)".into(),
            before: vec![vec![3], vec![1, 2]],
            after: vec![vec![1, 2], vec![3]],
            before_weights: vec![],
            after_weights: vec![1, 1],
        },
        RouteChange {
            at_unix_ms: 1_700_000_000_000,
            destination: "eu-west-1".into(),
            reason: "initial".into(),
            before: vec![],
            after: vec![vec![1], vec![3, 2]],
            before_weights: vec![],
            after_weights: vec![1, 1],
        },
    ];
    AgentSnapshot {
        gateway: "gw-use1-a".into(),
        region: "us-east-1".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_unix_ms: 1_700_000_000_000,
        config_generation: 1,
        topology_generation: 2,
        published_topology_generation: None,
        regions: vec!["us-east-1".into(), "eu-west-1".into(), "ap-south-1".into()],
        links,
        routes,
        tunnels: vec![TunnelView {
            name: "wg-euw1".into(),
            kind: "wireguard".into(),
            link: Some(1),
            interface: Some("wg-euw1".into()),
            state: TunnelState::Up,
            mtu: Some(1420),
            last_handshake_unix_s: Some(1_700_000_100.0),
            handshake_age_seconds: Some(12.5),
            rx_bytes: Some(9_000_000),
            tx_bytes: Some(12_000_000),
            probe_alive: Some(true),
            problems: vec![],
            local_ip: Some("192.0.2.10".into()),
            remote_ip: Some("198.51.100.10".into()),
            vni: None,
        }],
        history: history.into_iter().map(Arc::new).collect(),
        counters: CounterView {
            nexthops: vec![(1, 1000, 1_200_000), (3, 10, 12_000)],
            classes: QosClass::ALL
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_string(), 100 * i as u64, 150_000 * i as u64))
                .collect(),
            reasons: Reason::ALL
                .iter()
                .map(|r| (r.name().to_string(), *r as u64))
                .collect(),
        },
        classes: QosClass::ALL
            .iter()
            .enumerate()
            .map(|(i, c)| ClassView {
                class: c.name().to_string(),
                packets: 100 * i as u64,
                bytes: 150_000 * i as u64,
                throughput_bps: Some(1e6 * i as f64),
                packets_per_sec: Some(100.0 * i as f64),
                smoothed_throughput_bps: Some(0.9e6 * i as f64),
                reserved_bps: if *c == QosClass::Realtime {
                    150_000_000
                } else {
                    0
                },
                offered_bps: 1.1e6 * i as f64,
            })
            .collect(),
        flows: dwcp_control::traffic::FlowsView {
            sample_every: 1_000,
            window_seconds: 60,
            window_started_unix_ms: 1_700_000_000_000,
            samples: 3,
            bytes: 4_500_000,
            flows: vec![dwcp_control::traffic::TopFlowView {
                src: "10.1.0.5".parse().unwrap(),
                dst: "10.2.0.9".parse().unwrap(),
                protocol: "udp".into(),
                src_port: 40_000,
                dst_port: 5004,
                bytes: 3_000_000,
                error_bytes: 0,
                share: 3_000_000.0 / 4_500_000.0,
                class: Some("realtime".into()),
            }],
        },
        failovers_total: 1,
        route_changes_total: 3,
        reservations: None,
        lsdb: Some(Arc::new(three_region_lsdb())),
    }
}

/// us-east-1's link-state database: its own record and eu-west-1's, 2 and 5 s old at
/// 1_700_000_010 s; ap-south-1 has not been heard of.
fn three_region_lsdb() -> LsdbView {
    let report = |link, health, rtt_ms| LinkReport {
        link: LinkId(link),
        health,
        figures: Figures::quantise(rtt_ms, Some(0.2), Some(0.0), None),
    };
    let digest = "6477637064776370";
    LsdbView {
        origin: "gw-use1-a".into(),
        digest: digest.into(),
        records: vec![
            LsdbRecord {
                origin: "gw-euw1-a".into(),
                seq: 12,
                digest: digest.into(),
                originated_unix_ms: 1_700_000_005_000,
                links: vec![
                    report(1, RoutingHealth::Up, Some(80.4)),
                    report(2, RoutingHealth::Up, Some(120.2)),
                ],
            },
            LsdbRecord {
                origin: "gw-use1-a".into(),
                seq: 7,
                digest: digest.into(),
                originated_unix_ms: 1_700_000_008_000,
                links: vec![
                    report(1, RoutingHealth::Up, Some(80.3)),
                    report(3, RoutingHealth::Degraded, Some(200.3)),
                ],
            },
        ],
        neighbours: vec![1, 3],
        records_received: 40,
        records_flooded: 52,
        records_aged_out: 1,
        datagrams_foreign: 3,
        datagrams_malformed: 2,
        datagrams_unauthenticated: 1,
    }
}

/// What the reservation manager admits against, taken from a snapshot's regions and links.
pub fn network_of(s: &AgentSnapshot) -> dwcp_control::bandwidth::Network {
    dwcp_control::bandwidth::Network {
        regions: s.regions.iter().cloned().collect(),
        link_capacity_bps: s
            .links
            .iter()
            .map(|l| (dwcp_control::topology::LinkId(l.id), l.capacity_bps))
            .collect(),
    }
}

/// Publishes `manager`'s reservations as the state owner does: their view in `snapshot`,
/// their changes on `events`.
pub fn publish_reservations(
    manager: &mut ReservationManager,
    snapshot: &watch::Sender<Arc<AgentSnapshot>>,
    events: &broadcast::Sender<AgentEvent>,
) {
    for e in manager.take_events() {
        let _ = events.send(AgentEvent::Reservation(e));
    }
    let view = Arc::new(ReservationsView::new(manager, unix_now()));
    snapshot.send_modify(|s| Arc::make_mut(s).reservations = Some(view));
}

/// Stands in for the daemon's command handling: applies link and reload commands to the
/// snapshot it publishes and reservation operations to `reservations` (published with
/// [`publish_reservations`]), answers, and counts the commands it took.
pub async fn apply_commands(
    mut rx: mpsc::Receiver<AgentCommand>,
    snapshot: watch::Sender<Arc<AgentSnapshot>>,
    events: broadcast::Sender<AgentEvent>,
    mut reservations: ReservationManager,
    seen: Arc<AtomicUsize>,
) {
    while let Some(cmd) = rx.recv().await {
        seen.fetch_add(1, Ordering::SeqCst);
        match cmd {
            AgentCommand::SetLinkAdmin { link, up, reply } => {
                let mut s = (**snapshot.borrow()).clone();
                let result = match s.links.iter_mut().find(|l| l.id == link) {
                    Some(l) => {
                        l.health = if up {
                            LinkHealth::Up
                        } else {
                            LinkHealth::AdminDown
                        };
                        snapshot.send_replace(Arc::new(s));
                        Ok(())
                    }
                    None => Err(CommandError::UnknownLink(link)),
                };
                let _ = reply.send(result);
            }
            AgentCommand::Reload { reply } => {
                let mut s = (**snapshot.borrow()).clone();
                s.config_generation += 1;
                let generation = s.config_generation;
                snapshot.send_replace(Arc::new(s));
                let _ = reply.send(Ok(generation));
            }
            AgentCommand::Reservation { op, reply } => {
                let result = reservations.apply(&op, unix_now());
                publish_reservations(&mut reservations, &snapshot, &events);
                let _ = reply.send(result);
            }
        }
    }
}

/// Writes a secret (a token, a key) readable by its owner only, as the agent demands.
pub fn write_secret(path: &std::path::Path, contents: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(contents).unwrap();
}

/// The files of a TCP API served over TLS: a CA, the server's certificate (for `localhost`
/// and 127.0.0.1) signed by it, and its key (mode 0600).
pub struct ApiTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl ApiTls {
    /// Makes the files in `dir`.
    pub fn create(dir: &std::path::Path) -> ApiTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let files = ApiTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("api.crt"),
            key: dir.join("api.key"),
        };
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        write_secret(&files.key, key.serialize_pem().as_bytes());
        files
    }
}
