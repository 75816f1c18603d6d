//! Reservations admitted through the cluster store (issue 18) on a real three-member etcd
//! cluster (`dwcp_lab::etcd::EtcdCluster`): three gateways (three etcd clients), each with
//! several tasks admitting at once over four links shared by six paths.
//!
//! - `admissions`: attempts made (each decided: admitted, refused for lack of bandwidth, or
//!   given up after the store's bounded retries on conflicts);
//! - `oversubscribed`: links whose booked total exceeded their reservable capacity in any
//!   version of their ledger a fourth client saw through a watch, or in the final state;
//! - `admission_p99_ms`: 99th percentile of one admission's time, call to answer, under that
//!   contention; beside it the same figure for admissions made one at a time (the baseline).
//!
//! - `topology_converge_p99_ms`: the three-region lab's agents in etcd mode on the same
//!   cluster; a topology generation published (one etcd transaction) until every agent's
//!   status shows it in force, over [`PUSHES`] pushes.
//!
//! - `leader_kill_lost`, `store_down_lost`, `resync_s`: the same lab's streams while the etcd
//!   leader is killed and while the whole cluster is down, and the agents' resynchronisation.
//!
//! `cargo xtask bench cluster` runs it in release mode and records the report. Needs root.
//! With `--admission-only` it runs the admission phases alone (seconds, not minutes) and
//! prints their rows, writing nothing: for iterating, run the example itself (`cargo run
//! --release -p dwcp-lab --example bench_cluster -- --admission-only`), since the xtask
//! would record the partial report.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use dwcp_agent::store::{ClusterStoreError, EtcdStore, WatchEvent};
use dwcp_control::bandwidth::{peak_load, BandwidthError, Ledger, MAX_TIME};
use dwcp_control::store::{EtcdConfig, DEFAULT_PREFIX};
use dwcp_control::topology::LinkId;
use dwcp_lab::etcd::{reservation, EtcdCluster, Lcg};
use dwcp_lab::lab::triangle::StreamReport;

const GATEWAYS: u64 = 3;
const TASKS_PER_GATEWAY: u64 = 8;
const PER_TASK: u64 = 50;
const BASELINE_ADMISSIONS: u64 = 200;
/// Admissions of each gateway's single task in the one-at-a-time-per-gateway run.
const SERIAL_PER_GATEWAY: u64 = 100;
/// 1 Gbit/s links less the default 20 % headroom.
const RESERVABLE_BPS: u64 = 800_000_000;
const PATHS: [&[u32]; 6] = [&[1], &[1, 2], &[2, 3], &[3, 4], &[1, 4], &[2, 4]];

#[derive(Default)]
struct Outcomes {
    admitted: u64,
    refused: u64,
    contention: u64,
    preempted: u64,
    /// Time of every decided attempt (admitted or refused), in ms.
    latencies_ms: Vec<f64>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

async fn connect(cluster: &EtcdCluster, prefix: &str) -> anyhow::Result<EtcdStore> {
    Ok(EtcdStore::connect(&EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: prefix.into(),
        tls: None,
    })
    .await?)
}

async fn gateway_task(
    store: EtcdStore,
    seed: u64,
    first_id: u64,
    per_task: u64,
    reservable: BTreeMap<LinkId, u64>,
) -> anyhow::Result<Outcomes> {
    let mut rng = Lcg(seed);
    let mut out = Outcomes::default();
    for k in 0..per_task {
        let start = 1_000 + rng.below(20) * 100;
        let cand = reservation(
            first_id + k,
            (10 + rng.below(90)) * 1_000_000,
            start,
            start + 100 + rng.below(3) * 100,
            1 + rng.below(3) as u8,
            PATHS[rng.below(PATHS.len() as u64) as usize],
        );
        let t = Instant::now();
        match store.admit(&cand, &reservable).await {
            Ok(a) => {
                out.admitted += 1;
                out.preempted += a.preempted.len() as u64;
            }
            Err(ClusterStoreError::Bandwidth(BandwidthError::InsufficientBandwidth { .. })) => {
                out.refused += 1
            }
            Err(ClusterStoreError::Contention { .. }) => {
                out.contention += 1;
                continue;
            }
            Err(e) => return Err(e).context(format!("admission {}", cand.id)),
        }
        out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// One contended run: what it decided, and what the watching client saw.
struct Phase {
    attempts: u64,
    total: Outcomes,
    oversubscribed: usize,
    versions: u64,
    stored: usize,
    elapsed: Duration,
}

impl Phase {
    fn p99_ms(&self) -> f64 {
        let mut ms = self.total.latencies_ms.clone();
        ms.sort_by(f64::total_cmp);
        percentile(&ms, 99.0)
    }
}

/// `GATEWAYS` gateways with `tasks` concurrent tasks each, `per_task` admissions per task,
/// under `prefix` (empty ledgers); a fourth client watches every ledger version. `elected`:
/// the gateways join the admission leader's election when they connect, as an agent does at
/// start; else their first admissions do, all at once.
async fn contended(
    cluster: &EtcdCluster,
    prefix: &str,
    tasks_per_gateway: u64,
    per_task: u64,
    reservable: &BTreeMap<LinkId, u64>,
    elected: bool,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let mut gateways = Vec::new();
    for _ in 0..GATEWAYS {
        let gateway = connect(cluster, prefix).await?;
        if elected {
            gateway.join_admission_election().await?;
        }
        gateways.push(gateway);
    }
    let observer = connect(cluster, prefix).await?;
    let mut watch = observer.watch_prefix(&observer.keys().ledgers()).await?;
    let keys = observer.keys().clone();
    let watched = tokio::spawn(async move {
        let mut over = BTreeSet::new();
        let mut versions = 0u64;
        while let Ok(event) = tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            if let WatchEvent::Put { key, value } = event {
                let link = keys.ledger_link(&key).expect("a ledger key");
                let ledger = Ledger::decode(link, &value).expect("a ledger");
                if ledger.peak_bps(link) > RESERVABLE_BPS {
                    over.insert(link);
                }
                versions += 1;
            }
        }
        (over, versions)
    });
    let mut tasks = Vec::new();
    for g in 0..GATEWAYS {
        for t in 0..tasks_per_gateway {
            let n = g * tasks_per_gateway + t;
            tasks.push(tokio::spawn(gateway_task(
                gateways[g as usize].clone(),
                n + 1,
                n * 1_000 + 1,
                per_task,
                reservable.clone(),
            )));
        }
    }
    let mut total = Outcomes::default();
    for task in tasks {
        let o = task.await??;
        total.admitted += o.admitted;
        total.refused += o.refused;
        total.contention += o.contention;
        total.preempted += o.preempted;
        total.latencies_ms.extend(o.latencies_ms);
    }
    let elapsed = started.elapsed();
    let ledgers = observer.ledgers().await?;
    let stored = observer.reservations().await?;
    let mut over: BTreeSet<LinkId> = ledgers
        .iter()
        .filter(|(l, ledger)| ledger.peak_bps(**l) > RESERVABLE_BPS)
        .map(|(l, _)| *l)
        .collect();
    over.extend(
        reservable
            .keys()
            .filter(|l| peak_load(&stored, **l, 0, MAX_TIME) > RESERVABLE_BPS),
    );
    let (over_watched, versions) = watched.await?;
    over.extend(over_watched);
    let attempts = GATEWAYS * tasks_per_gateway * per_task;
    ensure!(
        total.admitted + total.refused + total.contention == attempts,
        "every attempt is decided"
    );
    ensure!(
        stored.len() as u64 == total.admitted - total.preempted,
        "stored reservations ({}) = admitted ({}) - preempted ({})",
        stored.len(),
        total.admitted,
        total.preempted
    );
    Ok(Phase {
        attempts,
        total,
        oversubscribed: over.len(),
        versions,
        stored: stored.len(),
        elapsed,
    })
}

fn main() -> anyhow::Result<()> {
    let admission_only = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--admission-only") => true,
        Some(other) => anyhow::bail!("unknown argument {other:?} (only --admission-only)"),
    };
    dwcp_lab::etcd::available().map_err(anyhow::Error::msg)?;
    let mut cluster = EtcdCluster::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let reservable: BTreeMap<LinkId, u64> = (1..=4).map(|l| (LinkId(l), RESERVABLE_BPS)).collect();

    // Baseline: one admission at a time from one gateway, on a prefix of its own (empty
    // ledgers, no conflicts).
    let baseline_ms = rt.block_on(async {
        let store = connect(&cluster, "/dwcp-baseline/v1").await?;
        let mut ms = Vec::new();
        for id in 1..=BASELINE_ADMISSIONS {
            let cand = reservation(id, 1_000_000, 1_000, 2_000, 2, PATHS[(id % 6) as usize]);
            let t = Instant::now();
            store.admit(&cand, &reservable).await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        anyhow::Ok(ms)
    })?;

    let rt_ref = &rt;
    let phase = |prefix: &'static str, tasks, per_task, elected| {
        rt_ref.block_on(contended(
            &cluster,
            prefix,
            tasks,
            per_task,
            &reservable,
            elected,
        ))
    };
    let headline = phase(DEFAULT_PREFIX, TASKS_PER_GATEWAY, PER_TASK, true)?;
    // The daemon's state owner admits one request at a time: the same three gateways, one
    // task each, on a prefix of their own.
    let serial = phase("/dwcp-serial/v1", 1, SERIAL_PER_GATEWAY, true)?;
    // The headline's load on gateways that connected that instant: no leader yet.
    let cold = phase("/dwcp-cold/v1", TASKS_PER_GATEWAY, PER_TASK, false)?;
    let Phase {
        attempts,
        total,
        oversubscribed,
        versions,
        stored,
        elapsed,
    } = &headline;
    let (attempts, stored) = (*attempts, *stored);
    let mut ms = total.latencies_ms.clone();
    ms.sort_by(f64::total_cmp);
    let p99 = percentile(&ms, 99.0);
    let p50 = percentile(&ms, 50.0);
    let base_p50 = percentile(&baseline_ms, 50.0);
    let base_p99 = percentile(&baseline_ms, 99.0);

    println!("| metric | value | goal / baseline |");
    println!("|---|---:|---|");
    println!(
        "| `admissions` | {attempts} | ≥ 1,000 from ≥ 3 gateways ({GATEWAYS} gateways × {TASKS_PER_GATEWAY} tasks) |"
    );
    println!("| `oversubscribed` | {oversubscribed} | 0 ({versions} ledger versions watched) |");
    println!(
        "| `admission_p99_ms` | {p99:.1} | < 50; one at a time from one gateway: {base_p99:.1} ({:.1}×) |",
        p99 / base_p99
    );
    let serial_p99 = serial.p99_ms();
    println!(
        "| admission p99 (ms), one task per gateway | {serial_p99:.1} | {} attempts, {} oversubscribed links ({:.1}× one gateway alone) |",
        serial.attempts,
        serial.oversubscribed,
        serial_p99 / base_p99
    );
    let cold_p99 = cold.p99_ms();
    println!(
        "| admission p99 (ms), gateways admitting as they connect | {cold_p99:.1} | {} attempts, {} oversubscribed links: the first admissions elect the leader |",
        cold.attempts, cold.oversubscribed
    );
    if admission_only {
        println!(
            "\n{} admitted, {} refused, {} given up; p50 {p50:.1} ms, max {:.1} ms; \
             baseline p50 {base_p50:.1} ms, p99 {base_p99:.1} ms; {attempts} attempts in {:.2} s. \
             Admission phases only: nothing recorded.",
            total.admitted,
            total.refused,
            total.contention,
            ms.last().copied().unwrap_or(0.0),
            elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let AgentFigures {
        converge_ms: mut converge,
        outages,
    } = agents_in_etcd_mode(&rt, &mut cluster)?;
    converge.sort_by(f64::total_cmp);
    let converge_p99 = percentile(&converge, 99.0);
    println!(
        "| `topology_converge_p99_ms` | {converge_p99:.1} | < 500; p50 {:.1}, max {:.1} over {} pushes to 3 agents |",
        percentile(&converge, 50.0),
        converge.last().copied().unwrap_or(0.0),
        converge.len()
    );
    let Outages {
        leader_kill,
        store_down,
        rerouted,
        resync_s,
    } = &outages;
    println!(
        "| `leader_kill_lost` | {} | 0; of {} datagrams sent while the leader was killed |",
        leader_kill.lost_count(),
        leader_kill.sent
    );
    println!(
        "| `store_down_lost` | {} | 0; of {} datagrams sent across {} s without any member, link 2 cut meanwhile |",
        store_down.lost_count(),
        store_down.sent,
        STORE_DOWN.as_secs()
    );
    println!(
        "| stream across the cut link, lost meanwhile | {} | of {} datagrams: the failover, with no store |",
        rerouted.lost_count(),
        rerouted.sent
    );
    println!("| `resync_s` | {resync_s:.2} | < 5 |");
    println!(
        "\nOutcomes: {} admitted (preempting {} lower-priority reservations), {} refused \
         for lack of bandwidth, {} given up after {} conflicting transactions; {stored} \
         reservations stored at the end. Admission time under contention: p50 {p50:.1} ms, \
         p99 {p99:.1} ms, max {:.1} ms; one at a time ({BASELINE_ADMISSIONS} admissions, \
         empty ledgers): p50 {base_p50:.1} ms, p99 {base_p99:.1} ms. {attempts} attempts in \
         {:.1} s ({:.0} per second).",
        total.admitted,
        total.preempted,
        total.refused,
        total.contention,
        dwcp_agent::store::MAX_ATTEMPTS,
        ms.last().copied().unwrap_or(0.0),
        elapsed.as_secs_f64(),
        attempts as f64 / elapsed.as_secs_f64()
    );
    println!(
        "\nMethod: a three-member etcd {} cluster, each member in its own network namespace \
         behind a veth on a bridge, data on tmpfs; {GATEWAYS} gateways are {GATEWAYS} etcd \
         clients of one process ({TASKS_PER_GATEWAY} concurrent tasks each, {PER_TASK} \
         admissions per task, 4 tokio worker threads), admitting over 4 links of \
         {RESERVABLE_BPS} bit/s reservable shared by 6 paths of one or two links; rates 10-99 \
         Mbit/s, windows of 100-300 s among 20 start times, priorities 1-3 (so some \
         admissions preempt); the same requests every run (fixed seeds). Each gateway joins \
         the admission leader's election when it connects, as an agent does at start; the \
         leader decides every gateway's admissions in batches (`EtcdStore::admit`, \
         `store/leader.rs`): the other gateways queue theirs in the store and watch for the \
         verdict, which the leader writes in the transaction that writes the batch's ledgers, \
         guarded by their mod_revisions. A fourth client watches every ledger version; `oversubscribed` \
         counts the links over capacity in any version watched or in the final ledgers and \
         reservation keys. The second run (one task per gateway, as the daemon's state owner \
         admits one request at a time; {SERIAL_PER_GATEWAY} admissions each) uses a prefix of \
         its own, so its ledgers start empty; so does the third (the headline's load on \
         gateways that connected that instant, whose first admissions join the election). Latency percentiles are nearest-rank over the \
         decided attempts (admitted or refused). The machine's 2 CPUs run the three members, the clients and \
         other work. Topology convergence: the three-region lab's `dwcp-agent`s (release \
         build) in etcd mode, each gateway namespace given a port on the cluster's bridge; \
         {PUSHES} topology generations (link 1's capacity changed each time) published by \
         one client transaction each; the time runs from the call to the first moment all \
         three agents' `GET /v1/status` (polled every 2 ms over their API sockets) show the \
         generation in force, which each agent's topology watch delivered and its state \
         owner applied as a reload. Outages, in the same lab after the pushes ({OUTAGE_RATE} \
         datagrams/s UDP streams between the regions' hosts): `leader_kill_lost`, a stream \
         us-east-1 -> eu-west-1 for 4 s, the etcd leader killed (SIGKILL) 1 s into it; \
         `store_down_lost`, the same stream while every member is killed for {} s, link 2 \
         (eu-west-1 -- ap-south-1, not on its path) cut silently (nftables drop) a third of the \
         way in, with a second stream ap-south-1 -> eu-west-1 across that link; `resync_s`, \
         from the moment the restarted cluster is healthy until every agent's \
         `GET /v1/gateways` lists all three gateways, each running the last generation pushed \
         (polled every 20 ms).",
        etcd_version(),
        STORE_DOWN.as_secs()
    );

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "metrics": {
                "admissions": attempts,
                "oversubscribed": oversubscribed,
                "admission_p99_ms": p99,
                "topology_converge_p99_ms": converge_p99,
                "leader_kill_lost": leader_kill.lost_count(),
                "store_down_lost": store_down.lost_count(),
                "resync_s": resync_s,
            },
            "leader_kill_sent": leader_kill.sent,
            "store_down_sent": store_down.sent,
            "rerouted_lost": rerouted.lost_count(),
            "rerouted_sent": rerouted.sent,
            "topology_converge_p50_ms": percentile(&converge, 50.0),
            "topology_pushes": converge.len(),
            "admitted": total.admitted,
            "refused": total.refused,
            "contention": total.contention,
            "preempted": total.preempted,
            "admission_p50_ms": p50,
            "one_task_per_gateway": {
                "admissions": serial.attempts,
                "oversubscribed": serial.oversubscribed,
                "admission_p99_ms": serial_p99,
                "admitted": serial.total.admitted,
                "refused": serial.total.refused,
                "contention": serial.total.contention,
            },
            "gateways_admitting_as_they_connect": {
                "admissions": cold.attempts,
                "oversubscribed": cold.oversubscribed,
                "admission_p99_ms": cold_p99,
            },
            "baseline_p50_ms": base_p50,
            "baseline_p99_ms": base_p99,
            "ledger_versions_watched": versions,
        }))? + "\n",
    )?;
    Ok(())
}

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_owned())
        })
        .unwrap_or_else(|| "(unknown version)".into())
}

/// Topology generations published for `topology_converge_p99_ms`.
const PUSHES: u64 = 20;

/// What the agents in etcd mode showed: topology convergence, and forwarding through store
/// outages.
struct AgentFigures {
    converge_ms: Vec<f64>,
    outages: Outages,
}

/// Streams through the store's outages, and how long the agents took to be consistent again.
struct Outages {
    /// us-east-1 -> eu-west-1 while the etcd leader is killed.
    leader_kill: StreamReport,
    /// us-east-1 -> eu-west-1 while the whole cluster is down and link 2 (not on its path)
    /// fails.
    store_down: StreamReport,
    /// ap-south-1 -> eu-west-1, across link 2 when it fails during the outage: rerouted by the
    /// fast path and the in-band records alone.
    rerouted: StreamReport,
    resync_s: f64,
}

/// The three-region lab's agents in etcd mode on `cluster`: topology convergence, then the
/// outages.
fn agents_in_etcd_mode(
    rt: &tokio::runtime::Runtime,
    cluster: &mut EtcdCluster,
) -> anyhow::Result<AgentFigures> {
    use dwcp_cli::client::{ApiClient, Endpoint};
    use dwcp_lab::lab::triangle::{TriangleLab, TriangleOptions};

    let mut lab = TriangleLab::build(
        "bcl",
        &dwcp_lab::bin("dwcp-agent"),
        TriangleOptions {
            extra_config: cluster.store_section(),
            ..TriangleOptions::default()
        },
    )?;
    for r in 0..3 {
        cluster.attach(&lab.regions[r].gw, "etcd0")?;
    }
    for r in 0..3 {
        lab.start_agent(r, &[])?;
    }
    let clients: Vec<ApiClient> = (0..3)
        .map(|r| ApiClient::new(Endpoint::Unix(lab.api_socket(r))))
        .collect();
    let (converge_ms, generation) = topology_convergence(rt, cluster, &clients)?;
    let outages = outages(rt, cluster, &lab, &clients, generation)?;
    Ok(AgentFigures {
        converge_ms,
        outages,
    })
}

/// Stream rate of the outage measurements, datagrams per second.
const OUTAGE_RATE: u32 = 1_000;
/// How long the whole cluster stays down (the figure).
const STORE_DOWN: Duration = Duration::from_secs(60);

fn outages(
    rt: &tokio::runtime::Runtime,
    cluster: &mut EtcdCluster,
    lab: &dwcp_lab::lab::triangle::TriangleLab,
    clients: &[dwcp_cli::client::ApiClient],
    generation: u64,
) -> anyhow::Result<Outages> {
    use dwcp_lab::lab::triangle::UdpStream;

    let stream = UdpStream::start(lab, 0, 1, OUTAGE_RATE)?;
    std::thread::sleep(Duration::from_secs(1));
    let killed = cluster.kill_leader()?;
    std::thread::sleep(Duration::from_secs(3));
    let leader_kill = stream.finish()?;
    cluster.restart(killed)?;

    let steady = UdpStream::start(lab, 0, 1, OUTAGE_RATE)?;
    let across = UdpStream::start(lab, 2, 1, OUTAGE_RATE)?;
    std::thread::sleep(Duration::from_secs(1));
    cluster.stop();
    std::thread::sleep(STORE_DOWN / 3);
    lab.wire(2).cut()?;
    std::thread::sleep(STORE_DOWN - STORE_DOWN / 3);
    cluster.start_again()?;
    let back = Instant::now();
    rt.block_on(consistent(clients, generation))?;
    let resync_s = back.elapsed().as_secs_f64();
    lab.wire(2).heal()?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(Outages {
        leader_kill,
        store_down: steady.finish()?,
        rerouted: across.finish()?,
        resync_s,
    })
}

/// Waits until every agent lists all three gateways from the store, each running
/// `generation`.
async fn consistent(
    clients: &[dwcp_cli::client::ApiClient],
    generation: u64,
) -> anyhow::Result<()> {
    use dwcp_control::store::GatewayView;

    let t = Instant::now();
    loop {
        let mut all = true;
        for c in clients {
            match c.get::<Vec<GatewayView>>("/v1/gateways").await {
                Ok(gateways) => {
                    all &= gateways.len() == clients.len()
                        && gateways
                            .iter()
                            .all(|g| g.record.topology_generation == generation);
                }
                // The agent's own store client is still reconnecting.
                Err(_) => all = false,
            }
        }
        if all {
            return Ok(());
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the agents were not consistent 60 s after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes [`PUSHES`] topology generations to the agents; returns each one's time to be in
/// force on all three, in ms, and the last generation.
fn topology_convergence(
    rt: &tokio::runtime::Runtime,
    cluster: &EtcdCluster,
    clients: &[dwcp_cli::client::ApiClient],
) -> anyhow::Result<(Vec<f64>, u64)> {
    use dwcp_cli::client::ApiClient;
    use dwcp_control::store::PublishedTopology;
    use dwcp_control::view::StatusView;
    use dwcp_lab::lab::triangle::TOPOLOGY;

    rt.block_on(async {
        let store = connect(cluster, DEFAULT_PREFIX).await?;
        let mut ms = Vec::new();
        let mut last = 0;
        for k in 1..=PUSHES {
            let text = TOPOLOGY.replacen(
                "capacity_mbps = 1000\n",
                &format!("capacity_mbps = {}\n", 1000 + k),
                1,
            );
            let (_, source) = PublishedTopology::source_of(&text)?;
            let t = Instant::now();
            let generation = store.publish_topology(&source).await?.generation;
            last = generation;
            let mut pending: Vec<&ApiClient> = clients.iter().collect();
            while !pending.is_empty() {
                ensure!(
                    t.elapsed() < Duration::from_secs(30),
                    "generation {generation} not in force everywhere after 30 s"
                );
                let mut still = Vec::new();
                for c in pending {
                    let s: StatusView = c.get("/v1/status").await?;
                    if s.published_topology_generation != Some(generation) {
                        still.push(c);
                    }
                }
                pending = still;
                if !pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            // Apart: each push finds the agents idle, as an operator's would.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok((ms, last))
    })
}
