//! What one Prometheus scrape costs the agent: encoding the metrics of a snapshot (OpenMetrics,
//! and the classic text format), against serialising the same snapshot to JSON (what the API
//! does for `GET /v1/links` and friends) as the baseline measured in the same run.
//!
//! Snapshots: the seed's three regions (the API tests' fixture), and synthetic 10-region
//! ring (10 links) and full mesh (45 links) labs, every link measured, routes with a primary
//! and backups to every other region, counters for every next hop, class and reason.
//!
//! `cargo xtask bench operator` runs it in release mode and records the report.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use dwcp_agent::agent::AgentHandle;
use dwcp_agent::agent::AgentSnapshot;
use dwcp_agent::agent::ClassView;
use dwcp_agent::agent::CounterView;
use dwcp_agent::agent::LinkHealth;
use dwcp_agent::agent::LinkView;
use dwcp_agent::agent::PathRole;
use dwcp_agent::agent::PathView;
use dwcp_agent::agent::RouteView;
use dwcp_agent::telemetry::Exporter;
use dwcp_common::{QosClass, Reason};
use dwcp_lab::fixtures::three_region_snapshot;
use dwcp_lab::lab::multi::LabPlan;
use dwcp_lab::lab::multi::Shape;
use tokio::sync::{broadcast, mpsc, watch};

const ROUNDS: usize = 9;
/// Each round runs the case for about this long.
const ROUND_TIME: Duration = Duration::from_millis(60);

/// A snapshot of gateway 1 of a lab plan: every link measured, paths to every other region
/// along the plan's links (the direct link if any, else via the neighbours).
fn lab_snapshot(plan: &LabPlan) -> AgentSnapshot {
    let links: Vec<LinkView> = plan
        .links
        .iter()
        .map(|l| LinkView {
            id: l.id,
            name: l.name.clone(),
            a: format!("region-{}", l.a),
            b: format!("region-{}", l.b),
            interface: (l.a == 1 || l.b == 1).then(|| l.interface.clone()),
            health: LinkHealth::Up,
            rtt_seconds: Some(0.010 + f64::from(l.id) * 0.001),
            jitter_seconds: Some(0.0004),
            loss_ratio: Some(0.001),
            capacity_bps: 1_000_000_000,
            utilisation_ratio: Some(0.25),
            projected_utilisation_ratio: Some(0.25),
            projected_at_unix_s: None,
            throughput_bps: Some(250e6),
            probes_sent: 100_000,
            probes_received: 99_900,
            figures_from_store: None,
        })
        .collect();
    let local: Vec<&dwcp_lab::lab::multi::PlannedLink> =
        plan.links.iter().filter(|l| l.a == 1 || l.b == 1).collect();
    let routes = plan
        .regions
        .iter()
        .filter(|r| r.n != 1)
        .map(|r| RouteView {
            destination: r.name.clone(),
            prefixes: vec![format!("{}/24", r.prefix)],
            strategy: "latency".into(),
            group_id: u32::from(r.n),
            // One path per local link (up to 4: primary + secondaries).
            paths: local
                .iter()
                .take(4)
                .enumerate()
                .map(|(i, l)| PathView {
                    regions: vec!["region-1".into(), r.name.clone()],
                    links: vec![l.id],
                    latency_seconds: 0.01 * (i + 1) as f64,
                    role: if i == 0 {
                        PathRole::Primary
                    } else {
                        PathRole::Secondary
                    },
                    weight: u32::from(i == 0),
                    next_hop: l.id,
                    live: true,
                })
                .collect(),
            reason: format!("min latency via link {}", local[0].id),
        })
        .collect();
    AgentSnapshot {
        gateway: "gw-1".into(),
        region: "region-1".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_unix_ms: 1_700_000_000_000,
        config_generation: 1,
        published_topology_generation: None,
        topology_generation: 1,
        regions: plan.regions.iter().map(|r| r.name.clone()).collect(),
        links,
        routes,
        tunnels: vec![],
        history: vec![],
        counters: CounterView {
            nexthops: local
                .iter()
                .map(|l| (l.id, 1_000_000, 1_200_000_000))
                .collect(),
            classes: QosClass::ALL
                .iter()
                .map(|c| (c.name().to_string(), 1_000_000, 1_200_000_000))
                .collect(),
            reasons: Reason::ALL
                .iter()
                .map(|r| (r.name().to_string(), 1_000))
                .collect(),
        },
        classes: QosClass::ALL
            .iter()
            .map(|c| ClassView {
                class: c.name().to_string(),
                packets: 1_000_000,
                bytes: 1_200_000_000,
                throughput_bps: Some(50e6),
                packets_per_sec: Some(4_000.0),
                smoothed_throughput_bps: Some(48e6),
                reserved_bps: 0,
                offered_bps: 50e6,
            })
            .collect(),
        flows: Default::default(),
        failovers_total: 3,
        route_changes_total: 12,
        reservations: None,
        lsdb: None,
    }
}

/// Median over rounds of the time per call of `f`.
fn time_per_call(mut f: impl FnMut() -> usize) -> f64 {
    // Calibrate the calls per round.
    let mut calls = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(f());
        }
        if t.elapsed() >= ROUND_TIME / 4 {
            calls = (calls as f64 * (ROUND_TIME.as_secs_f64() / t.elapsed().as_secs_f64())).ceil()
                as usize;
            break;
        }
        calls *= 2;
    }
    let mut per_call: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                std::hint::black_box(f());
            }
            t.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[ROUNDS / 2]
}

fn main() -> anyhow::Result<()> {
    let cases = vec![
        (
            "seed3",
            "seed's 3 regions (3 links, 2 routes)",
            three_region_snapshot(),
        ),
        (
            "ring10",
            "10-region ring (10 links, 9 routes)",
            lab_snapshot(&LabPlan::new(10, Shape::Ring)?),
        ),
        (
            "mesh10",
            "10-region full mesh (45 links, 9 routes × 4 paths)",
            lab_snapshot(&LabPlan::new(10, Shape::FullMesh)?),
        ),
    ];
    // The machine as this run found it (not a description written once).
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")?;
    let load = load.split_whitespace().next().unwrap_or("unknown");
    println!(
        "One scrape's encoding on this machine ({cpus} CPUs available, 1-minute load average \
         {load} before the run), median of {ROUNDS} rounds of ~{} ms each. Baseline: \
         `serde_json::to_vec` of the same snapshot in the same run (the API's cost of answering \
         with it). OpenMetrics is what Prometheus gets; the classic text format (`curl`, \
         `promtool`) adds the conversion.\n",
        ROUND_TIME.as_millis()
    );
    println!("| snapshot | samples | bytes | JSON (baseline) µs | OpenMetrics µs | × baseline | classic text µs | × baseline |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut json_out = BTreeMap::new();
    for (name, what, snapshot) in cases {
        let (_tx, rx) = watch::channel(Arc::new(snapshot.clone()));
        let handle = AgentHandle {
            snapshot: rx,
            events: broadcast::channel(1).0,
            commands: mpsc::channel(1).0,
        };
        let exporter = Exporter::new(&handle);
        let text = exporter.prometheus_text();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let om_bytes = exporter.openmetrics().len();
        let json = time_per_call(|| serde_json::to_vec(&snapshot).map_or(0, |v| v.len()));
        let om = time_per_call(|| exporter.openmetrics().len());
        let classic = time_per_call(|| exporter.prometheus_text().len());
        println!(
            "| {what} | {samples} | {om_bytes} | {:.1} | {:.1} | {:.2} | {:.1} | {:.2} |",
            json * 1e6,
            om * 1e6,
            om / json,
            classic * 1e6,
            classic / json
        );
        json_out.insert(
            name,
            format!(
                "{{\"samples\": {samples}, \"openmetrics_bytes\": {om_bytes}, \"json_us_median\": {:.2}, \"openmetrics_us_median\": {:.2}, \"openmetrics_ratio\": {:.3}, \"classic_us_median\": {:.2}, \"classic_ratio\": {:.3}}}",
                json * 1e6,
                om * 1e6,
                om / json,
                classic * 1e6,
                classic / json
            ),
        );
    }
    println!(
        "\nA scrape every 10 s of the largest snapshot costs the agent the OpenMetrics time above \
         once per 10 s: the figures are per scrape, not per second."
    );
    let body = json_out
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("operator.json"),
        format!("{{\"metrics\": {{{body}}}}}\n"),
    )?;
    Ok(())
}
