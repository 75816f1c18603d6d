use std::{
    io::Write,
    process::{Command, Stdio},
    sync::Arc,
};

use tokio::sync::{broadcast, mpsc, watch};

use dwcp_agent::agent::AgentHandle;
use dwcp_agent::agent::AgentSnapshot;
use dwcp_agent::agent::LinkHealth;
use dwcp_agent::agent::ReservationsView;
use dwcp_agent::telemetry::*;
use dwcp_cli::client::ApiClient;
use dwcp_cli::client::Endpoint;
use dwcp_control::bandwidth::ManagerConfig;
use dwcp_control::bandwidth::MemoryStore;
use dwcp_control::bandwidth::RawNumber;
use dwcp_control::bandwidth::ReservationManager;
use dwcp_control::bandwidth::ReservationRequest;
use dwcp_control::input::unix_now;
use dwcp_lab::fixtures::network_of;
use dwcp_lab::fixtures::three_region_snapshot;

fn handle(snapshot: AgentSnapshot) -> (AgentHandle, watch::Sender<Arc<AgentSnapshot>>) {
    let (tx, rx) = watch::channel(Arc::new(snapshot));
    let handle = AgentHandle {
        snapshot: rx,
        events: broadcast::channel(16).0,
        commands: mpsc::channel(4).0,
    };
    (handle, tx)
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn link_metrics_are_in_base_units_with_bounded_labels() {
    let (h, _tx) = handle(three_region_snapshot());
    let text = Exporter::new(&h).prometheus_text();
    for line in [
        r#"dwcp_link_rtt_seconds{link="use1-euw1",link_id="1"} 0.0803"#,
        r#"dwcp_link_jitter_seconds{link="use1-aps1",link_id="3"} 0.0094"#,
        r#"dwcp_link_loss_ratio{link="use1-aps1",link_id="3"} 0.07"#,
        // 300 Mbit/s is 37.5 MB/s.
        r#"dwcp_link_throughput_bytes_per_second{link="use1-euw1",link_id="1"} 37500000.0"#,
        r#"dwcp_link_utilisation_ratio{link="use1-euw1",link_id="1"} 0.3"#,
        r#"dwcp_link_projected_utilisation_ratio{link="use1-euw1",link_id="1"} 0.45"#,
        // Best effort (index 4 in the fixture) at 4 Mbit/s is 500 kB/s.
        r#"dwcp_class_throughput_bytes_per_second{class="best-effort"} 500000.0"#,
        r#"dwcp_link_health{link="use1-aps1",link_id="3",state="degraded"} 1"#,
        r#"dwcp_link_health{link="use1-aps1",link_id="3",state="up"} 0"#,
        r#"dwcp_link_probes_sent_total{link="use1-euw1",link_id="1"} 12000"#,
        r#"dwcp_link_probes_received_total{link="use1-aps1",link_id="3"} 11160"#,
        r#"dwcp_nexthop_bytes_total{nexthop="1"} 1200000"#,
        r#"dwcp_class_packets_total{class="best-effort"} 400"#,
        r#"dwcp_fastpath_packets_total{reason="lan_pass_no_route"} 4"#,
        "dwcp_failovers_total 1",
        "dwcp_route_changes_total 3",
        r#"dwcp_route_latency_seconds{destination="ap-south-1"} 0.2003"#,
        r#"dwcp_region_reachable{region="eu-west-1"} 1"#,
        r#"dwcp_tunnel_handshake_age_seconds{tunnel="wg-euw1"} 12.5"#,
        "# TYPE dwcp_failovers_total counter",
    ] {
        assert!(has_line(&text, line), "missing {line:?} in\n{text}");
    }
    // The unmeasured remote link has a capacity and a state but no measurements.
    assert!(text.contains(r#"dwcp_link_capacity_bytes_per_second{link="euw1-aps1",link_id="2"}"#));
    assert!(!text.contains(r#"dwcp_link_rtt_seconds{link="euw1-aps1""#));
    // Exactly one state of each link is 1.
    for id in 1..=3 {
        let ones = text
            .lines()
            .filter(|l| {
                l.starts_with("dwcp_link_health{")
                    && l.contains(&format!("link_id=\"{id}\""))
                    && l.ends_with(" 1")
            })
            .count();
        assert_eq!(ones, 1, "link {id}");
    }
    // Every sample has the one prefix.
    assert!(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .all(|l| l.starts_with("dwcp_")));
}

#[test]
fn openmetrics_names_units_and_ends_with_eof() {
    let (h, _tx) = handle(three_region_snapshot());
    let om = Exporter::new(&h).openmetrics();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# UNIT dwcp_link_rtt_seconds seconds\n"));
    assert!(om.contains("# TYPE dwcp_failovers counter\n"));
    assert!(has_line(&om, "dwcp_failovers_total 1"));
}

/// Runs `promtool check metrics` on `text`: (success, everything it printed).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package; scripts/bootstrap.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut said = String::from_utf8_lossy(&out.stdout).to_string();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn promtool_reports_nothing_on_the_exposition() {
    let (h, _tx) = handle(three_region_snapshot());
    let text = Exporter::new(&h).prometheus_text();
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
    // The linter is live: a counter without `_total` is reported.
    let (ok, said) = promtool("# HELP x A thing.\n# TYPE x counter\nx 1\n");
    assert!(!ok || !said.trim().is_empty());
}

#[test]
fn empty_snapshot_exports_identity_and_lints_clean() {
    let (h, _tx) = handle(AgentSnapshot::default());
    let text = Exporter::new(&h).prometheus_text();
    assert!(text.contains("dwcp_build_info{"));
    assert!(!text.contains("dwcp_link_rtt_seconds"));
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
}

#[test]
fn reservation_figures_and_events_are_exported() {
    let mut snapshot = three_region_snapshot();
    let (mut manager, _) = ReservationManager::open(
        Box::new(MemoryStore::default()),
        network_of(&snapshot),
        ManagerConfig::default(),
    )
    .unwrap();
    let now = unix_now();
    manager
        .create(
            &ReservationRequest {
                owner: "video".into(),
                source: "us-east-1".into(),
                destination: "eu-west-1".into(),
                class: "realtime".into(),
                rate: RawNumber::Text("100M".into()),
                start: None,
                end: (now + 3600).into(),
                priority: None,
                path: vec![1u64.into()],
                request_id: None,
            },
            now,
        )
        .unwrap();
    // What the state owner publishes after the change.
    snapshot.reservations = Some(Arc::new(ReservationsView::new(&manager, now)));
    let (h, _tx) = handle(snapshot);
    let text = Exporter::new(&h).prometheus_text();
    assert!(
        has_line(&text, r#"dwcp_reservation_events_total{event="created"} 1"#),
        "{text}"
    );
    assert!(has_line(&text, "dwcp_reservations_active 1"));
    // 100 Mbit/s = 12.5 MB/s on link 1, nothing on the others.
    assert!(has_line(
        &text,
        r#"dwcp_link_reserved_bytes_per_second{link="use1-euw1",link_id="1"} 12500000.0"#
    ));
    assert!(has_line(
        &text,
        r#"dwcp_link_reserved_bytes_per_second{link="use1-aps1",link_id="3"} 0.0"#
    ));
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
}

#[tokio::test]
async fn the_endpoint_serves_openmetrics_to_prometheus_and_text_to_others() {
    let (h, tx) = handle(three_region_snapshot());
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Exporter::new(&h),
        MetricsConfig::default().limits(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let client = ApiClient::new(Endpoint::Http(addr.to_string()));
    let plain = client
        .request_raw("GET", "/metrics", &[], None)
        .await
        .unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.content_type.as_deref(),
        Some(PROMETHEUS_TEXT_CONTENT_TYPE)
    );
    let om = client
        .request_raw(
            "GET",
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
            None,
        )
        .await
        .unwrap();
    assert_eq!(om.content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
    assert!(String::from_utf8_lossy(&om.body).ends_with("# EOF\n"));
    // A new snapshot shows on the next scrape.
    let mut changed = three_region_snapshot();
    changed.links[0].health = LinkHealth::Down;
    changed.failovers_total = 2;
    tx.send(Arc::new(changed)).unwrap();
    let after = client
        .request_raw("GET", "/metrics", &[], None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&after.body);
    assert!(has_line(&text, "dwcp_failovers_total 2"));
    assert!(has_line(
        &text,
        r#"dwcp_link_health{link="use1-euw1",link_id="1",state="down"} 1"#
    ));
    let missing = client.request_raw("GET", "/nope", &[], None).await.unwrap();
    assert_eq!(missing.status, 404);
    stop_tx.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn running_metrics_follow_the_config() {
    let (h, _tx) = handle(three_region_snapshot());
    let off = MetricsConfig {
        enabled: false,
        ..MetricsConfig::default()
    };
    assert!(RunningMetrics::start(&off, Exporter::new(&h))
        .await
        .unwrap()
        .is_none());
    let on = MetricsConfig {
        enabled: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        ..MetricsConfig::default()
    };
    let running = RunningMetrics::start(&on, Exporter::new(&h))
        .await
        .unwrap()
        .unwrap();
    let client = ApiClient::new(Endpoint::Http(running.addr.to_string()));
    let r = client
        .request_raw("GET", "/metrics", &[], None)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&r.body).contains("dwcp_link_rtt_seconds"));
    // A taken address is an error naming it.
    let taken = MetricsConfig {
        enabled: true,
        listen: running.addr,
        ..MetricsConfig::default()
    };
    let err = RunningMetrics::start(&taken, Exporter::new(&h))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains(&running.addr.to_string()), "{err}");
    running.shutdown().await.unwrap();
}

#[test]
fn link_state_metrics_count_records_and_dropped_datagrams() {
    let mut snapshot = three_region_snapshot();
    let (h, _tx) = handle(snapshot.clone());
    let text = Exporter::new(&h).prometheus_text();
    for line in [
        "dwcp_link_state_records 2",
        "dwcp_link_state_records_received_total 40",
        "dwcp_link_state_records_flooded_total 52",
        "dwcp_link_state_records_aged_out_total 1",
        r#"dwcp_link_state_datagrams_dropped_total{reason="foreign"} 3"#,
        r#"dwcp_link_state_datagrams_dropped_total{reason="malformed"} 2"#,
        r#"dwcp_link_state_datagrams_dropped_total{reason="unauthenticated"} 1"#,
        "dwcp_link_state_topology_mismatch 0",
    ] {
        assert!(has_line(&text, line), "no {line:?} in\n{text}");
    }
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
    // A gateway of another topology file is counted; without link state, no family at all.
    let mut lsdb = (**snapshot.lsdb.as_ref().unwrap()).clone();
    lsdb.records[0].digest = "0000000000000001".into();
    snapshot.lsdb = Some(Arc::new(lsdb));
    let (h, _tx) = handle(snapshot.clone());
    let text = Exporter::new(&h).prometheus_text();
    assert!(
        has_line(&text, "dwcp_link_state_topology_mismatch 1"),
        "{text}"
    );
    snapshot.lsdb = None;
    let (h, _tx) = handle(snapshot);
    assert!(!Exporter::new(&h)
        .prometheus_text()
        .contains("dwcp_link_state"));
}
