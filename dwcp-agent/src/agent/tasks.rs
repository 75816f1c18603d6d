//! The daemon's tasks, one function each: it spawns the task and returns what the daemon
//! keeps of it (its handle, its channels). [`super::daemon::Daemon::start`] composes them.
//!
//! Every task only sends; the state owner's loop (`Daemon::run`) alone touches the state, and
//! after each step publishes its events and snapshot (`publish`):
//!
//! ```text
//!  netlink watcher ------------------------------------------+
//!  flow samples (ring buffer) -------------------------------+
//!  link monitor --LinkEvent mpsc--> link forwarder ----------+
//!  health checks --HealthEvent mpsc--> health forwarder -----+
//!  SIGHUP ---------------------------------------------------+
//!  optimiser (reads the link views) -------------------------+
//!  link state (LinkStateView) -------------------------------+
//!                                                            | inputs: mpsc<Input>
//!                                                            v
//!  API, CLI --AgentCommand mpsc, oneshot reply---> +-------------------------+
//!   (link admin, reload, reservation operations)   | Daemon::run             |
//!  link monitor --link views: watch<LinkView>----> |  AgentState, the state  |
//!  link state --LSDB view: watch<LsdbView>-------> |  owner (reservations    |
//!  link state <--LinkStateHandle::sync on config-- |  included); its timers; |
//!  probe sender <--Probes::sync on config change-- |  then publish()         |
//!  probe sender --sent counts--> link monitor      |                         |
//!  kernel LINK_STATE ----------> link monitor      +-------------------------+
//!                                 events: broadcast  |                  | snapshot: watch
//!                                 <AgentEvent>       v                  v <Arc<AgentSnapshot>>
//!                          API event stream, events file        API, exporter, CLI
//!
//!  link monitor --link views: watch<LinkView>--> link state <--UDP, over each link--> peers
//!  snapshot (its links' utilisation) -----------> link state
//!
//!  etcd mode ([store] kind = "etcd", `cluster.rs`):
//!  etcd <topology>  --watch--> topology watch --Input::PublishedTopology--> inputs (above);
//!                              the loop caches the topology in force in the state directory
//!  snapshot (published generation) --> membership --register, update, revoke--> etcd (lease)
//!  API GET /v1/gateways --------------------------------list gateways, leases--> etcd
//!  API PUT /v1/topology, POST /v1/topology/diff -----read, publish (txn)------> etcd
//!  API reservation ops --> Daemon::run --candidate--> admit/extend/cancel task --txn--> etcd;
//!                          its outcome --cluster::Decided mpsc--> Daemon::run, then the reply
//!  admit task (not the leader) --put <admission-queue/>--> etcd --watch--> the admission
//!                          leader's batches --txn: ledgers, verdict--> etcd <admission-verdicts/>
//!                          --watch--> the admit task (`store::leader`; elected at start by the
//!                          admission election task, on a lease)
//!  etcd <reservations/> --watch--> reservations watch --Input::StoredReservation{,Gone}-->
//!                          (a delete's reason read from <removed/>)
//!  snapshot (reservations) --> mirror cache (at most 1/s) --> <state>/reservations-mirror.json
//!  expiry task (every 2 s) --remove ended (guarded txn), their marks--> etcd
//! ```
//!
//! The loop's timers need no task: the debounced computation, the counters, the next start
//! or end of a reservation, which it feeds to the state owner as an `Input::Clock`, and every
//! 2 s the WireGuard links' devices (kernel netlink or wireguard-go UAPI: handshake verdict,
//! newest handshake, RX/TX), fed as an `Input::WireGuardHandshake` when they changed:
//!
//! ```text
//!  WireGuard devices --get (2 s tick, Handoffs::handshakes)--> Daemon::run
//!                      --Input::WireGuardHandshake--> AgentState --> tunnel views, metrics
//! ```
//! Reservation changes go out with the other events (`AgentEvent::Reservation`), and the
//! reservations themselves in the snapshot.
//!
//! The operator side holds its ends of the commands, events and snapshot channels in an
//! [`AgentHandle`].

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use dwcp_control::{
    config::{AgentConfig, ProbeSenderMode},
    health::HealthCheckSpec,
    input::Input,
    view::{AgentEvent, AgentSnapshot},
};
use dwcp_dataplane::{LinkStateMap, PinnedMaps};
use tokio::{
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{
    daemon::DaemonError,
    link_state::{LinkStateHandle, LinkStateTask},
    netlink::NetlinkWatcher,
    probes::{ExternalProbes, Probes},
    AgentHandle,
};
use crate::{
    api::{ApiContext, RunningApi},
    health::{HealthEvent, HealthMonitor, RegionState},
    probe::{LinkEvent, LinkMonitor, LinkView, ProbeSender},
    store::EtcdStore,
    telemetry::{Exporter, RunningMetrics},
};

pub(super) type Task = JoinHandle<()>;

/// The link monitor's latest view of every link (RTT, jitter, loss).
pub(super) type LinkViews = watch::Receiver<BTreeMap<u32, LinkView>>;

/// Hands the fast path's sampled packets to the state owner (top flows); `None` when the
/// ring buffer cannot be polled.
pub(super) fn flow_samples(ring: RingBuf<MapData>, inputs: mpsc::Sender<Input>) -> Option<Task> {
    // SAFETY: the ring buffer owns its map's fd, open until the AsyncFd drops it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(fd) => Some(tokio::spawn(read_flow_samples(fd, inputs))),
        Err(e) => {
            warn!(error = %e, "flow samples not read: no top flows");
            None
        }
    }
}

/// Reads the fast path's sampled packets and hands them to the state owner in batches: drain
/// the ring buffer when it signals, send, then pause (the ring holds 4,096 samples; at one in
/// 1,000 packets that is seconds of traffic at a million packets per second).
async fn read_flow_samples(
    mut fd: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<Input>,
) {
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "flow samples: ring buffer unreadable; top flows stop");
                return;
            }
        };
        let mut samples = Vec::new();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(r) = dwcp_dataplane::decode_sample(&item) {
                samples.push(dwcp_control::traffic::SampledPacket::from(&r));
            }
        }
        guard.clear_ready();
        if !samples.is_empty() && tx.send(Input::FlowSamples { samples }).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends every event to `path` (JSON lines). Subscribed before the daemon publishes its
/// first step, so that step's events are in the file too.
pub(super) fn events_file(
    path: &Path,
    events: &broadcast::Sender<AgentEvent>,
) -> Result<Task, DaemonError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| DaemonError::Record {
            path: path.to_path_buf(),
            source,
        })?;
    let mut events = events.subscribe();
    Ok(tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => {
                    if let Ok(json) = serde_json::to_string(&ev) {
                        if writeln!(file, "{json}").is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!("events file missed {n} events");
                }
                Err(_) => return,
            }
        }
    }))
}

/// Interfaces, addresses and neighbours as they change (the initial dump is the daemon's).
pub(super) fn netlink(watcher: NetlinkWatcher, inputs: mpsc::Sender<Input>) -> Task {
    tokio::spawn(watcher.run(inputs))
}

/// The HTTP/JSON API, if a socket or a TCP address is configured; in etcd mode it lists the
/// gateways from the cluster `store`.
pub(super) async fn api(
    config: &AgentConfig,
    handle: &AgentHandle,
    store: Option<EtcdStore>,
) -> Result<Option<RunningApi>, DaemonError> {
    if config.api.socket.is_none() && config.api.tcp_listen.is_none() {
        return Ok(None);
    }
    let mut ctx = ApiContext::new(handle.clone(), &config.api);
    if let Some(store) = store {
        ctx = ctx.with_cluster_store(store);
    }
    Ok(Some(RunningApi::start(&config.api, ctx).await?))
}

/// The Prometheus exporter, if enabled.
pub(super) async fn metrics(
    config: &AgentConfig,
    handle: &AgentHandle,
) -> Result<Option<RunningMetrics>, DaemonError> {
    Ok(RunningMetrics::start(&config.metrics, Exporter::new(handle)).await?)
}

/// The probe sender (its own thread) or, with `probe.sender = "external"`, the prober's
/// counts; either probes the monitored local links of `config`.
pub(super) fn probe_sender(config: &AgentConfig) -> Result<Probes, DaemonError> {
    let mut probes = match config.probe_sender {
        ProbeSenderMode::Agent => Probes::Agent {
            sender: ProbeSender::on_own_thread(config.sender, config.probe_rt_priority)?,
            keys: Box::new(PinnedMaps::new(&config.pin_dir).probe_keys()?),
        },
        ProbeSenderMode::External => Probes::External(ExternalProbes::open(&config.pin_dir)?),
    };
    probes.sync(config);
    Ok(probes)
}

/// The link monitor (the kernel's `LINK_STATE` and the sent counts of `probes`) and the task
/// that turns its link events into inputs.
pub(super) fn link_monitor(
    config: &AgentConfig,
    probes: &Probes,
    inputs: mpsc::Sender<Input>,
) -> Result<([Task; 2], LinkViews), DaemonError> {
    let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(1024);
    let monitor = LinkMonitor::new(
        config.monitor,
        LinkStateMap(PinnedMaps::new(&config.pin_dir).link_state()?),
        probes.counts(),
        link_tx,
    )?;
    let views = monitor.subscribe_views();
    let forwarder = tokio::spawn(async move {
        while let Some(ev) = link_rx.recv().await {
            if inputs.send(Input::from_link_event(&ev)).await.is_err() {
                break;
            }
        }
    });
    Ok(([tokio::spawn(monitor.run()), forwarder], views))
}

/// The link-state task (`link_state.rs`), following the link monitor's `views` and sending
/// the state owner the records' view of the network's links; idle while link state is off.
pub(super) fn link_state(
    config: &Arc<AgentConfig>,
    views: LinkViews,
    snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    inputs: mpsc::Sender<Input>,
) -> (Task, LinkStateHandle) {
    let (task, handle) = LinkStateTask::new(config.clone(), views, snapshot, inputs);
    (tokio::spawn(task.run()), handle)
}

/// The health checks, if any, and the task that turns their events into inputs: a region
/// whose checks all fail is down.
pub(super) fn health_checks(
    checks: &[HealthCheckSpec],
    inputs: mpsc::Sender<Input>,
) -> Result<Option<(HealthMonitor, Task)>, DaemonError> {
    if checks.is_empty() {
        return Ok(None);
    }
    let (htx, mut hrx) = mpsc::channel::<HealthEvent>(256);
    let monitor = HealthMonitor::spawn(checks.to_vec(), htx)?;
    let forwarder = tokio::spawn(async move {
        let mut down: BTreeMap<String, bool> = BTreeMap::new();
        while let Some(ev) = hrx.recv().await {
            let is_down = ev.region_health.state == RegionState::Down;
            let was = down.insert(ev.region.clone(), is_down).unwrap_or(false);
            let input = match (was, is_down) {
                (false, true) => Input::RegionDown {
                    region: ev.region.clone(),
                    reason: match &ev.cause {
                        Some(c) => format!("health check {} failed: {c}", ev.check),
                        None => format!("health check {} down", ev.check),
                    },
                },
                (true, false) => Input::RegionUp {
                    region: ev.region.clone(),
                },
                _ => continue,
            };
            if inputs.send(input).await.is_err() {
                break;
            }
        }
    });
    Ok(Some((monitor, forwarder)))
}

/// SIGHUP: reload the configuration file at `path`.
pub(super) fn reload_on_sighup(
    path: PathBuf,
    inputs: mpsc::Sender<Input>,
) -> Result<Task, DaemonError> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(DaemonError::Signal)?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading {}", path.display());
            if inputs
                .send(Input::Reload { path: path.clone() })
                .await
                .is_err()
            {
                break;
            }
        }
    }))
}

/// Periodic optimisation, every `every`: the probes' figures, then a recomputation.
pub(super) fn optimiser(every: Duration, views: LinkViews, inputs: mpsc::Sender<Input>) -> Task {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let measured: Vec<Input> = views
                .borrow()
                .values()
                .filter(|v| v.replies > 0 && v.srtt_ns > 0)
                .map(|v| Input::LinkMeasured {
                    link: v.link_id,
                    rtt_ms: v.srtt_ns as f64 / 1e6,
                    jitter_ms: v.jitter_ns as f64 / 1e6,
                    loss: v.loss,
                })
                .collect();
            for m in measured.into_iter().chain([Input::Optimise]) {
                if inputs.send(m).await.is_err() {
                    return;
                }
            }
        }
    })
}
