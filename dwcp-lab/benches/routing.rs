//! Routing benchmark (criterion): one route on the seed's 3 regions, a gateway's full table
//! (every destination, primary + ECMP + 3 secondaries, four strategies) on 10 regions and on 50
//! regions with 1,000 edge nodes, and the incremental recompute after one link degrades,
//! against a full recompute measured in the same run.
//!
//! Run: `cargo xtask bench routing` (= `cargo bench -p dwcp-lab --bench routing`), or with a
//! filter, `cargo xtask bench routing -- route_3r`. Writes `target/bench/routing.json` and the
//! routing section of `docs/BENCHMARKS.md`, with the cases this invocation ran.
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use std::hint::black_box;

use criterion::Bencher;
use criterion::Criterion;
use dwcp_control::routing::compute_table;
use dwcp_control::routing::primary_on;
use dwcp_control::routing::route_on;
use dwcp_control::routing::update_table;
use dwcp_control::routing::Constraints;
use dwcp_control::routing::RoutingEngine;
use dwcp_control::routing::RoutingGraph;
use dwcp_control::routing::Strategy;
use dwcp_control::topology::synthetic::generate;
use dwcp_control::topology::synthetic::SyntheticSpec;
use dwcp_control::topology::InMemoryTopologyStore;
use dwcp_control::topology::RegionId;
use dwcp_control::topology::Topology;
use dwcp_control::topology::TopologyUpdate;

/// The daemon's allocator (see `bin/dwcp-agent.rs`): routes are measured as it computes them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREE_REGIONS: &str = include_str!("../../tests/fixtures/three_regions.toml");

struct Scenario {
    topology: Topology,
    graph: Arc<RoutingGraph>,
}

fn scenario(topology: Topology) -> Scenario {
    Scenario {
        graph: Arc::new(RoutingGraph::new(&topology)),
        topology,
    }
}

/// The topology after the first link of the primary min-latency route to `dst` lost `factor`
/// in latency (a degradation, the common failover trigger) or, with factor < 1, improved.
fn changed(s: &Scenario, src: RegionId, dst: RegionId, factor: f64) -> Scenario {
    let rs = route_on(
        &s.graph,
        src,
        dst,
        &Strategy::MinLatency,
        &Constraints::none(),
    )
    .expect("route");
    let link_id = rs.primary.links[0];
    let link = s.topology.link(link_id).expect("link");
    let next = s
        .topology
        .apply(&[TopologyUpdate::LinkMeasurement {
            link_id,
            latency_ms: link.latency_ms * factor,
            jitter_ms: link.jitter_ms,
            loss: link.loss,
        }])
        .expect("valid update");
    scenario(next)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The cases of this benchmark, and those this process ran: criterion calls a case's routine
/// only when the command line's filter selects it, so the id is recorded from inside it.
#[derive(Default)]
struct Cases {
    declared: RefCell<Vec<&'static str>>,
    ran: RefCell<BTreeSet<&'static str>>,
}

/// `c.bench_function(id, f)`, recording `id` in `cases.ran` when criterion runs it.
fn bench<F>(c: &mut Criterion, cases: &Cases, id: &'static str, mut f: F)
where
    F: FnMut(&mut Bencher<'_>),
{
    // Criterion's filter is an unanchored regex: `route_3r` would also run a `route_3r_x`, and
    // a filtered run would write that case's figures too.
    for other in cases.declared.borrow().iter() {
        assert!(
            !id.contains(other) && !other.contains(id),
            "case ids {id} and {other}: one contains the other, so a filter naming one runs both"
        );
    }
    cases.declared.borrow_mut().push(id);
    c.bench_function(id, |b| {
        cases.ran.borrow_mut().insert(id);
        f(b)
    });
}

/// Per-iteration times in ns of one case from criterion's files, if this process measured it:
/// the case's routine ran here (`cases`) and criterion wrote both files after `start` (in test
/// mode, `--profile-time` or with `--save-baseline` it runs the routine without writing `new/`,
/// and `target/criterion/` keeps the files of earlier invocations: those are not this run's).
///
/// Each of criterion's samples times `iters[i]` iterations in `times[i]` ns; the sample's mean
/// per iteration is `times[i] / iters[i]`. Returns (the smallest of those means, criterion's
/// median of those means). On a machine shared with other work the fastest sample is the better
/// estimate of what the code costs; the median shows the contention.
fn timing(cases: &Cases, start: SystemTime, id: &str) -> Option<(f64, f64)> {
    if !cases.ran.borrow().contains(id) {
        return None;
    }
    let dir = target_dir().join("criterion").join(id).join("new");
    let read = |f: &str| -> Option<serde_json::Value> {
        let path = dir.join(f);
        let written = std::fs::metadata(&path).ok()?.modified().ok()?;
        if written < start {
            eprintln!(
                "routing: {} predates this run: {id} not recorded",
                path.display()
            );
            return None;
        }
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let estimates = read("estimates.json")?;
    let sample = read("sample.json")?;
    let iters = sample["iters"].as_array()?;
    let times = sample["times"].as_array()?;
    let fastest = iters
        .iter()
        .zip(times)
        .filter_map(|(i, t)| Some(t.as_f64()? / i.as_f64()?))
        .fold(f64::INFINITY, f64::min);
    Some((fastest, estimates["median"]["point_estimate"].as_f64()?))
}

fn main() {
    // Files criterion writes from here on are this run's (see `timing`).
    let start = SystemTime::now();
    let cases = Cases::default();
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let none = Constraints::none();
    let strategies = Strategy::ALL_DEFAULT;

    // 3 regions: one route set (primary, ECMP, backups), computed, and served from the cache.
    let three = scenario(Topology::from_toml_str(THREE_REGIONS).expect("fixture"));
    let (us, ap) = (RegionId(0), RegionId(2));
    bench(&mut c, &cases, "route_3r", |b| {
        b.iter(|| {
            route_on(
                black_box(&three.graph),
                us,
                ap,
                &Strategy::MinLatency,
                &none,
            )
            .unwrap()
        })
    });
    bench(&mut c, &cases, "primary_3r", |b| {
        b.iter(|| {
            primary_on(
                black_box(&three.graph),
                us,
                ap,
                &Strategy::MinLatency,
                &none,
            )
            .unwrap()
        })
    });
    let engine = RoutingEngine::new(Arc::new(InMemoryTopologyStore::new(three.topology.clone())));
    engine.route(us, ap, &Strategy::MinLatency, &none).unwrap();
    bench(&mut c, &cases, "route_cached_3r", |b| {
        b.iter(|| {
            engine
                .route(black_box(us), ap, &Strategy::MinLatency, &none)
                .unwrap()
        })
    });

    // Full tables.
    let ten = scenario(
        Topology::from_config(&generate(&SyntheticSpec::new(10, 0)), None).expect("valid"),
    );
    bench(&mut c, &cases, "table_10r", |b| {
        b.iter(|| {
            compute_table(&ten.graph, &ten.topology, RegionId(0), &strategies, &none).unwrap()
        })
    });
    let fifty = scenario(
        Topology::from_config(&generate(&SyntheticSpec::new(50, 1000)), None).expect("valid"),
    );
    // Edge nodes' routes are built on first use: asked for here, so the row covers them.
    bench(&mut c, &cases, "table_50r_1000e", |b| {
        b.iter(|| {
            let t = compute_table(
                &fifty.graph,
                &fifty.topology,
                RegionId(0),
                &strategies,
                &none,
            )
            .unwrap();
            black_box(t.edges().len());
            t
        })
    });

    // One link degrades (latency x1.5): incremental against full, same topologies.
    let before = compute_table(
        &fifty.graph,
        &fifty.topology,
        RegionId(0),
        &strategies,
        &none,
    )
    .unwrap();
    let worse = changed(&fifty, RegionId(0), RegionId(25), 1.5);
    let probe = update_table(&worse.graph, &worse.topology, &before).unwrap();
    let (recomputed, resumed, reused) = (
        probe.stats.recomputed,
        probe.stats.resumed,
        probe.stats.reused,
    );
    bench(&mut c, &cases, "incremental_50r_1000e", |b| {
        b.iter(|| {
            let t = update_table(&worse.graph, &worse.topology, black_box(&before)).unwrap();
            black_box(t.edges().len());
            t
        })
    });
    bench(&mut c, &cases, "full_after_change_50r_1000e", |b| {
        b.iter(|| {
            let t = compute_table(
                &worse.graph,
                &worse.topology,
                RegionId(0),
                &strategies,
                &none,
            )
            .unwrap();
            black_box(t.edges().len());
            t
        })
    });
    // A link that improves (latency halved): incremental too, recomputing only the entries it
    // could pull (see `update_table`).
    let better = changed(&fifty, RegionId(0), RegionId(25), 0.5);
    bench(&mut c, &cases, "incremental_better_50r_1000e", |b| {
        b.iter(|| {
            let t = update_table(&better.graph, &better.topology, black_box(&before)).unwrap();
            black_box(t.edges().len());
            t
        })
    });
    c.final_summary();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from));

    let us_of = |id: &str| timing(&cases, start, id).map(|(f, m)| (f / 1e3, m / 1e3));
    let ms_of = |id: &str| timing(&cases, start, id).map(|(f, m)| (f / 1e6, m / 1e6));
    // (criterion id, metric, figures, unit, what, target, named by issue 4). A case's fastest
    // figure is `<metric>_fastest` and its median `<metric>_median` (see `timing`); the four
    // metrics issue 4 named keep their names, for the median.
    let metrics = [
        (
            "route_3r",
            "route_3r_us",
            us_of("route_3r"),
            "µs",
            "3 regions: one route set (primary + ECMP + backups), uncached",
            Some("< 1 µs (seed claims 2.55 µs)"),
            true,
        ),
        (
            "primary_3r",
            "primary_3r_us",
            us_of("primary_3r"),
            "µs",
            "3 regions: the best path alone, comparable to the seed's single-route figure",
            None,
            false,
        ),
        (
            "route_cached_3r",
            "route_cached_3r_us",
            us_of("route_cached_3r"),
            "µs",
            "3 regions: the same route set from the engine's cache",
            None,
            false,
        ),
        (
            "table_10r",
            "table_10r_ms",
            ms_of("table_10r"),
            "ms",
            "10 regions: full table of one gateway, 4 strategies",
            Some("seed target < 10 ms"),
            true,
        ),
        (
            "table_50r_1000e",
            "table_50r_1000e_ms",
            ms_of("table_50r_1000e"),
            "ms",
            "50 regions + 1,000 edge nodes: full table",
            Some("< 5 ms"),
            true,
        ),
        (
            "incremental_50r_1000e",
            "incremental_50r_1000e_ms",
            ms_of("incremental_50r_1000e"),
            "ms",
            "same, after one link degrades: incremental",
            Some("< 1 ms"),
            true,
        ),
        (
            "full_after_change_50r_1000e",
            "full_after_change_50r_1000e_ms",
            ms_of("full_after_change_50r_1000e"),
            "ms",
            "same change: full recompute (baseline)",
            None,
            false,
        ),
        (
            "incremental_better_50r_1000e",
            "incremental_better_50r_1000e_ms",
            ms_of("incremental_better_50r_1000e"),
            "ms",
            "a link improves (latency /2): incremental",
            None,
            false,
        ),
    ];
    let measured: Vec<&str> = metrics
        .iter()
        .filter(|m| m.2.is_some())
        .map(|m| m.0)
        .collect();
    if measured.is_empty() {
        // Nothing measured in this invocation (a filter matching no case, or test mode): the
        // figures already recorded stay as they are rather than being replaced by old ones.
        eprintln!(
            "routing: no case measured in this run; target/bench/routing.json and \
             docs/BENCHMARKS.md left unchanged"
        );
        return;
    }
    let not_measured: Vec<&str> = metrics
        .iter()
        .filter(|m| m.2.is_none())
        .map(|m| m.0)
        .collect();
    // Both figures of the comparison from this run, fastest against fastest.
    let incremental = ms_of("incremental_50r_1000e");
    let ratio = match (ms_of("full_after_change_50r_1000e"), incremental) {
        (Some((full, _)), Some((inc, _))) if inc > 0.0 => Some(full / inc),
        _ => None,
    };

    let mut json = serde_json::Map::new();
    for (_, metric, value, .., named_by_issue) in &metrics {
        if let Some((fastest, median)) = value {
            let median_key = if *named_by_issue {
                metric.to_string()
            } else {
                format!("{metric}_median")
            };
            json.insert(format!("{metric}_fastest"), serde_json::json!(fastest));
            json.insert(median_key, serde_json::json!(median));
        }
    }
    if let Some(r) = ratio {
        json.insert(
            "incremental_speedup_50r_1000e_fastest".into(),
            serde_json::json!(r),
        );
    }
    // The entry counts describe the incremental case: recorded with it only.
    if incremental.is_some() {
        json.insert(
            "incremental_recomputed_entries".into(),
            serde_json::json!(recomputed),
        );
        json.insert(
            "incremental_resumed_entries".into(),
            serde_json::json!(resumed),
        );
        json.insert(
            "incremental_reused_entries".into(),
            serde_json::json!(reused),
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut run = serde_json::Map::new();
    run.insert("cases_measured".into(), serde_json::json!(measured));
    run.insert("cases_not_measured".into(), serde_json::json!(not_measured));
    run.insert("available_parallelism".into(), serde_json::json!(cores));
    if let Some(l) = load.as_deref().and_then(|l| l.parse::<f64>().ok()) {
        run.insert("load_average_1m_after".into(), serde_json::json!(l));
    }
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let doc = serde_json::json!({ "metrics": json, "run": run });
    std::fs::write(
        out.join("routing.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .expect("write routing.json");

    // `write!` to a `String` cannot fail: the results below are unwrapped.
    let mut table = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // The command as run: cargo passes `--bench`, the rest is the invocation's filter.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let command = if filter.is_empty() {
        "cargo xtask bench routing".to_string()
    } else {
        format!("cargo xtask bench routing -- {}", filter.join(" "))
    };
    writeln!(table, "## routing\n\nProduced by `{command}`.\n").unwrap();
    writeln!(
        table,
        "Criterion, release build, {cpu}, {cores} cores (`available_parallelism`), 1-minute load \
         average {} after the run. 30 samples per case, each the time of many iterations; \
         `fastest` is the mean per iteration of the fastest sample (`<metric>_fastest` in \
         `target/bench/routing.json`), `median` criterion's median of the samples' means per \
         iteration (`<metric>_median`, or `<metric>` itself for the four metrics issue 4 named: \
         `route_3r_us`, `table_10r_ms`, `table_50r_1000e_ms`, `incremental_50r_1000e_ms`), which \
         grows with the load of the machine: compare figures of one run with each other, not \
         across runs. Synthetic topologies from `topology::synthetic::generate` (seeded). Tables: \
         every destination, primary + ECMP + up to 3 secondaries, for min latency, min cost, max \
         bandwidth and balanced. Allocator: mimalloc, the daemon's (this run measures no other).\n",
        load.as_deref().unwrap_or("unknown")
    )
    .unwrap();
    if !not_measured.is_empty() {
        writeln!(
            table,
            "Measured in this run: {}. Not measured in this run (filtered out), so not listed: {}.\n",
            measured.join(", "),
            not_measured.join(", ")
        )
        .unwrap();
    }
    writeln!(
        table,
        "| metric | what | fastest | median | target |\n|---|---|---|---|---|"
    )
    .unwrap();
    for (_, metric, value, unit, what, target, _) in &metrics {
        if let Some((f, m)) = value {
            writeln!(
                table,
                "| `{metric}` | {what} | {f:.3} {unit} | {m:.3} {unit} | {} |",
                target.unwrap_or("")
            )
            .unwrap();
        }
    }
    if let Some(r) = ratio {
        writeln!(
            table,
            "\nIncremental recompute after one degraded link (latency x1.5 on the first link of a primary): \
             {r:.1}x faster (fastest samples) than the full recompute of the same \
             change in the same run (of {} (destination, strategy) entries: {recomputed} recomputed, {resumed} kept \
             their primary and ECMP set and searched some backups again, {reused} kept whole).",
            recomputed + resumed + reused
        )
        .unwrap();
    }
    println!("\n{table}");
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/BENCHMARKS.md");
    // The markers `cargo xtask bench <name>` uses for the sections it records.
    let (begin, end) = ("<!-- bench:routing:begin -->", "<!-- bench:routing:end -->");
    let section = format!("{begin}\n{table}{end}\n");
    let existing = std::fs::read_to_string(&docs).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let updated = match (existing.find(begin), existing.find(end)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{section}{}",
            &existing[..b],
            existing[e + end.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n\n{section}", existing.trim_end()),
    };
    std::fs::create_dir_all(docs.parent().unwrap()).expect("docs/");
    std::fs::write(&docs, updated).expect("write docs/BENCHMARKS.md");
}
