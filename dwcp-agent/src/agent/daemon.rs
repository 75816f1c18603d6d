//! The daemon: loads and adopts the fast path, starts the tasks (probes and link monitor,
//! rtnetlink, health checks, signals, timers) and runs the state owner's loop. Every task only
//! sends [`Input`]s; the loop alone touches the state.
//!
//! Stopping the daemon (SIGTERM, a crash, `kill -9`) leaves the programs attached through
//! their pinned links and the maps pinned, so forwarding goes on; the next start adopts both.
use std::{
    collections::BTreeMap,
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use dwcp_common::{maps::names, maps::programs, LinkState};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{error, info, warn};

use dwcp_control::{
    bandwidth::{FileStore, LinkId as TeLinkId, Network, ReservationManager},
    config::{AgentConfig, ConfigError, LocalLink, ProbeSenderMode},
    input::{Input, NextReservationChange, TimedInput},
    state::{AgentError, AgentState},
    view::{AgentEvent, AgentSnapshot},
};
use dwcp_dataplane::{Dataplane, DataplaneError, LinkAdoption, LinkStateMap, Pinning, EBPF_OBJECT};

use super::{
    netlink::{NetlinkError, NetlinkWatcher},
    now, reservation_events, AgentCommand, AgentHandle, CommandError,
};
use crate::{
    api::{ApiContext, RunningApi},
    health::{HealthEvent, HealthMonitor, RegionState},
    probe::{
        open_probe_socket, LinkEvent, LinkMonitor, ProbeCounts, ProbeLink, ProbeSender, SenderError,
    },
    telemetry::{Exporter, RunningMetrics},
};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("reading the eBPF object {path}: {source}")]
    Object {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the pinned {map}: {detail}")]
    PinnedMap { map: &'static str, detail: String },
    #[error("probe sender: {0}")]
    Sender(#[from] SenderError),
    #[error("probe monitor: {0}")]
    Monitor(#[from] crate::probe::MonitorConfigError),
    #[error("health checks: {0}")]
    Health(#[from] crate::health::HealthError),
    #[error("recording inputs to {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Reservations(#[from] dwcp_control::bandwidth::BandwidthError),
    #[error(transparent)]
    Api(#[from] crate::api::ServeError),
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::TelemetryError),
    #[error("WireGuard hand-off policy routing: {0}")]
    Handoff(#[from] dwcp_tunnels::error::TunnelError),
}

/// How the daemon is started.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub config_path: PathBuf,
    /// Load this eBPF object instead of the one built in (an upgrade: its programs replace the
    /// running ones in place).
    pub ebpf_object: Option<PathBuf>,
    /// Append every input, with its time, to this file (JSON lines) for replay.
    pub record: Option<PathBuf>,
    /// Append every event (link up/down, route changes with their reasons, reloads) to this
    /// file (JSON lines): an audit log of what the agent did and why.
    pub events_file: Option<PathBuf>,
    /// Where the reservations are stored (`reservations.json`).
    pub state_dir: PathBuf,
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/dwcp";

/// Links the monitor watches when another process (`dwcp-prober`) sends the probes: their
/// sent counts come from the prober's pinned `PROBE_SENT` map, so loss is measured as with
/// the agent's own sender.
#[derive(Clone)]
pub struct ExternalProbes {
    links: Arc<RwLock<Vec<u32>>>,
    sent: Arc<Array<MapData, u64>>,
}

impl ExternalProbes {
    fn open(pin_dir: &Path) -> Result<ExternalProbes, DaemonError> {
        Ok(ExternalProbes {
            links: Arc::default(),
            sent: Arc::new(crate::prober::open_sent_map(pin_dir).map_err(|e| {
                DaemonError::PinnedMap {
                    map: crate::prober::PROBE_SENT,
                    detail: e.to_string(),
                }
            })?),
        })
    }

    fn set(&self, links: Vec<u32>) {
        *self.links.write().unwrap_or_else(|e| e.into_inner()) = links;
    }
}

impl ProbeCounts for ExternalProbes {
    fn links(&self) -> Vec<u32> {
        self.links.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn sent(&self, link_id: u32) -> Option<u64> {
        // Unreadable counts read as nothing sent: liveness needs none, and no loss is invented.
        self.links()
            .contains(&link_id)
            .then(|| self.sent.get(&link_id, 0).unwrap_or(0))
    }
    /// The prober backs off on its own.
    fn set_reprobe_backoff(&self, _link_id: u32, _dead: bool) {}
}

/// The pinned `LINK_STATE` map, opened a second time for the monitor task.
fn open_link_state(pin_dir: &Path) -> Result<Array<MapData, LinkState>, DaemonError> {
    let path = pin_dir.join(names::LINK_STATE);
    let err = |e: aya::maps::MapError| DaemonError::PinnedMap {
        map: names::LINK_STATE,
        detail: format!("{}: {e}", path.display()),
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    Map::from_map_data(data)
        .map_err(err)?
        .try_into()
        .map_err(err)
}

enum Probes {
    Agent(ProbeSender),
    External(ExternalProbes),
}

impl Probes {
    fn counts(&self) -> Box<dyn ProbeCounts + Send> {
        match self {
            Probes::Agent(s) => Box::new(s.handle()),
            Probes::External(e) => Box::new(e.clone()),
        }
    }

    /// Probes exactly the monitored local links of `config`.
    fn sync(&mut self, config: &AgentConfig) {
        let wanted: Vec<&LocalLink> = config.local_links.iter().filter(|l| l.monitored).collect();
        match self {
            Probes::External(e) => e.set(wanted.iter().map(|l| l.link_id).collect()),
            Probes::Agent(sender) => {
                let handle = sender.handle();
                for id in handle.links() {
                    if !wanted.iter().any(|l| l.link_id == id) {
                        let _ = sender.remove_link(id);
                    }
                }
                let probed = handle.links();
                for l in wanted {
                    if probed.contains(&l.link_id) {
                        continue;
                    }
                    let link = ProbeLink {
                        link_id: l.link_id,
                        local: l.local_ip.into(),
                        remote: l.peer_ip.into(),
                        device: Some(l.interface.clone()),
                    };
                    let added = open_probe_socket(&link, sender.config())
                        .and_then(|s| sender.add_link(link, s));
                    if let Err(e) = added {
                        error!(link = l.link_id, error = %e, "cannot probe the link; it stays down");
                    }
                }
            }
        }
    }
}

/// The started daemon: state owner, tasks and channels.
pub struct Daemon {
    options: DaemonOptions,
    state: AgentState<Dataplane>,
    /// Where the state owner's events and snapshots go after each step (`publish`).
    events: broadcast::Sender<AgentEvent>,
    snapshot: watch::Sender<Arc<AgentSnapshot>>,
    inputs: mpsc::Receiver<Input>,
    input_tx: mpsc::Sender<Input>,
    commands: mpsc::Receiver<AgentCommand>,
    command_tx: mpsc::Sender<AgentCommand>,
    probes: Probes,
    link_views: watch::Receiver<BTreeMap<u32, crate::probe::LinkView>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _health: Option<HealthMonitor>,
    record: Option<(std::fs::File, Instant)>,
    api: Option<RunningApi>,
    metrics: Option<RunningMetrics>,
    /// Policy routing of the WireGuard local links.
    handoffs: super::handoff::Handoffs,
    /// The WireGuard links' policy routing must be checked again (configuration or
    /// interfaces changed).
    handoffs_dirty: bool,
    /// The last handshake verdict sent to the state owner, per WireGuard link.
    handshakes: BTreeMap<u32, Option<String>>,
}

impl Daemon {
    /// Loads the configuration and the fast path, adopts what an earlier agent left pinned,
    /// reads the interfaces and neighbours, and programs the difference. Must run inside a
    /// tokio runtime, in the gateway's network namespace.
    pub async fn start(options: DaemonOptions) -> Result<Daemon, DaemonError> {
        let config = AgentConfig::load(&options.config_path)?;
        info!(gateway = %config.gateway, region = %config.region, path = %options.config_path.display(), "configuration loaded");
        let object: Vec<u8>;
        let bytes: &[u8] = match &options.ebpf_object {
            Some(path) => {
                object = std::fs::read(path).map_err(|source| DaemonError::Object {
                    path: path.clone(),
                    source,
                })?;
                &object
            }
            None => EBPF_OBJECT,
        };
        // aya needs the object 8-byte aligned; a Vec<u8> may not be.
        let aligned = Aligned::new(bytes);
        let mut dataplane =
            Dataplane::load_object(aligned.as_slice(), Pinning::Dir(config.pin_dir.clone()))?;
        let flow_samples = dataplane.take_flow_samples();
        for (program, ifnames) in [
            (programs::LAN_INGRESS, config.lan_interfaces.clone()),
            (programs::UNDERLAY_INGRESS, config.underlay_interfaces()),
        ] {
            for ifname in ifnames {
                match dataplane.attach_pinned(program, &ifname)? {
                    LinkAdoption::Attached { mode, program_id } => {
                        info!(program, ifname, ?mode, program_id, "attached and pinned")
                    }
                    LinkAdoption::Replaced {
                        old_program_id,
                        new_program_id,
                    } => info!(
                        program,
                        ifname,
                        old_program_id,
                        new_program_id,
                        "adopted the pinned link: program replaced in place (bpf_link_update)"
                    ),
                }
            }
        }
        // The second half of the WireGuard hand-off: copies the mark the LAN XDP program
        // leaves in the XDP metadata to `skb->mark` (docs/tunnels.md, "Hand-off").
        for ifname in config.lan_interfaces.clone() {
            let program = programs::LAN_HANDOFF_TC;
            match dataplane.attach_handoff_tc_pinned(&ifname)? {
                LinkAdoption::Attached { program_id, .. } => {
                    info!(
                        program,
                        ifname, program_id, "tc ingress attached and pinned"
                    )
                }
                LinkAdoption::Replaced {
                    old_program_id,
                    new_program_id,
                } => info!(
                    program,
                    ifname,
                    old_program_id,
                    new_program_id,
                    "adopted the pinned tc link: tc program swapped in place (bpf_link_update)"
                ),
            }
        }

        let mut tasks = Vec::new();
        let watcher = NetlinkWatcher::subscribe()?;
        let initial = watcher.dump().await?;
        let now = now();
        let mut state = AgentState::new(config.clone(), dataplane, now)?;
        let (events, _) = broadcast::channel(1024);
        let (snapshot, _) = watch::channel(state.snapshot().clone());
        let mut handoffs = super::handoff::Handoffs::open().await?;
        state.set_handoff_problems(handoffs.sync(&config).await);
        let mut record = match &options.record {
            Some(path) => Some((
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| DaemonError::Record {
                        path: path.clone(),
                        source,
                    })?,
                Instant::now(),
            )),
            None => None,
        };
        for input in initial {
            write_record(&mut record, &input);
            let _ = state.handle(input, now);
        }
        state.on_timer(now);
        publish(&mut state, &events, &snapshot);
        let adopted = state.adopted();
        if let Some(u) = state.last_update() {
            info!(
                adopted_routes = adopted.routes,
                adopted_groups = adopted.groups,
                writes = u.changes,
                "fast path reconciled with the configuration ({} map writes)",
                u.changes
            );
        }

        let (input_tx, inputs) = mpsc::channel(4096);
        if let Some(ring) = flow_samples {
            // SAFETY: the ring buffer owns its map's fd, open until the AsyncFd drops it.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    ring,
                    tokio::io::Interest::READABLE,
                )
            };
            match registered {
                Ok(fd) => tasks.push(tokio::spawn(read_flow_samples(fd, input_tx.clone()))),
                Err(e) => warn!(error = %e, "flow samples not read: no top flows"),
            }
        }
        if let Some(path) = &options.events_file {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| DaemonError::Record {
                    path: path.clone(),
                    source,
                })?;
            // The first computation's route changes happened before anyone could subscribe.
            for change in state.history() {
                if let Ok(json) = serde_json::to_string(&AgentEvent::RouteChanged(change.clone())) {
                    let _ = writeln!(file, "{json}");
                }
            }
            let mut events = events.subscribe();
            tasks.push(tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(ev) => {
                            if let Ok(json) = serde_json::to_string(&ev) {
                                if writeln!(file, "{json}").is_err() {
                                    return;
                                }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            warn!("events file missed {n} events");
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        let (command_tx, commands) = mpsc::channel(64);
        {
            let tx = input_tx.clone();
            tasks.push(tokio::spawn(watcher.run(tx)));
        }

        // Reservations, the API and the metrics.
        let topology = state.topology();
        let network = Network {
            regions: topology.regions().iter().map(|r| r.name.clone()).collect(),
            link_capacity_bps: topology
                .links()
                .iter()
                .map(|l| (TeLinkId(l.id.0), (l.capacity_mbps * 1e6) as u64))
                .collect(),
        };
        let (manager, displaced) = ReservationManager::open(
            Box::new(FileStore::new(options.state_dir.join("reservations.json"))),
            network,
            config.reservations.clone(),
        )?;
        for ev in displaced {
            warn!(?ev, "reservation displaced: it no longer fits the topology");
        }
        let manager = Arc::new(std::sync::Mutex::new(manager));
        let handle = AgentHandle {
            snapshot: snapshot.subscribe(),
            events: events.clone(),
            commands: command_tx.clone(),
        };
        let api = if config.api.socket.is_some() || config.api.tcp_listen.is_some() {
            let ctx =
                ApiContext::new(handle.clone(), &config.api).with_reservations(manager.clone());
            Some(RunningApi::start(&config.api, ctx).await?)
        } else {
            None
        };
        let metrics = RunningMetrics::start(
            &config.metrics,
            Exporter::new(&handle).with_reservations(manager.clone()),
        )
        .await?;
        {
            // The active set changes when one is created, extended or cancelled (events) and
            // when one starts or ends (the clock): both are watched.
            let tx = input_tx.clone();
            let manager = manager.clone();
            let mut changes = reservation_events(&manager);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut last = None;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        r = changes.recv() => {
                            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                                return;
                            }
                        }
                    }
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let (active, next) = {
                        let mut m = manager.lock().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = m.expire(now) {
                            warn!(error = %e, "expiring reservations");
                        }
                        let active: Vec<dwcp_control::bandwidth::Reservation> =
                            m.active_at(now).cloned().collect();
                        let next = m.next_change_after(now).map(|at| NextReservationChange {
                            at_unix_s: at,
                            reserved_bps: m
                                .reserved_by_link(at)
                                .into_iter()
                                .map(|(l, bps)| (l.0, bps))
                                .collect(),
                        });
                        (active, next)
                    };
                    let seen = (active.iter().map(|r| r.id.0).collect::<Vec<u64>>(), next);
                    if last.as_ref() != Some(&seen) {
                        let next = seen.1.clone();
                        last = Some(seen);
                        if tx.send(Input::Reservations { active, next }).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }

        // Probes and the link monitor.
        let mut probes = match config.probe_sender {
            ProbeSenderMode::Agent => Probes::Agent(ProbeSender::on_own_thread(
                config.sender,
                config.probe_rt_priority,
            )?),
            ProbeSenderMode::External => Probes::External(ExternalProbes::open(&config.pin_dir)?),
        };
        probes.sync(&config);
        let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(1024);
        let monitor = LinkMonitor::new(
            config.monitor,
            LinkStateMap(open_link_state(&config.pin_dir)?),
            probes.counts(),
            link_tx,
        )?;
        let link_views = monitor.subscribe_views();
        tasks.push(tokio::spawn(monitor.run()));
        {
            let tx = input_tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = link_rx.recv().await {
                    if tx.send(Input::from_link_event(&ev)).await.is_err() {
                        break;
                    }
                }
            }));
        }

        // Health checks: a region whose checks all fail is down.
        let health = if config.health_checks.is_empty() {
            None
        } else {
            let (htx, mut hrx) = mpsc::channel::<HealthEvent>(256);
            let monitor = HealthMonitor::spawn(config.health_checks.clone(), htx)?;
            let tx = input_tx.clone();
            tasks.push(tokio::spawn(async move {
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
                    if tx.send(input).await.is_err() {
                        break;
                    }
                }
            }));
            Some(monitor)
        };

        // SIGHUP: reload.
        {
            let tx = input_tx.clone();
            let path = options.config_path.clone();
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(DaemonError::Signal)?;
            tasks.push(tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    info!("SIGHUP: reloading {}", path.display());
                    if tx.send(Input::Reload { path: path.clone() }).await.is_err() {
                        break;
                    }
                }
            }));
        }

        // Periodic optimisation: the probes' figures, then a recomputation.
        if let Some(every) = config.optimise_interval {
            let tx = input_tx.clone();
            let views = link_views.clone();
            tasks.push(tokio::spawn(async move {
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
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }

        Ok(Daemon {
            options,
            state,
            events,
            snapshot,
            inputs,
            input_tx,
            commands,
            command_tx,
            probes,
            link_views,
            tasks,
            _health: health,
            record,
            api,
            metrics,
            handoffs,
            handoffs_dirty: false,
            handshakes: BTreeMap::new(),
        })
    }

    /// The handles of the operator side (API, metrics, CLI).
    pub fn handle(&self) -> AgentHandle {
        // The same handle the API and the metrics were given.
        AgentHandle {
            snapshot: self.snapshot.subscribe(),
            events: self.events.clone(),
            commands: self.command_tx.clone(),
        }
    }

    /// A sender of inputs (tests inject events through it).
    pub fn inputs(&self) -> mpsc::Sender<Input> {
        self.input_tx.clone()
    }

    pub fn state(&self) -> &AgentState<Dataplane> {
        &self.state
    }

    /// Answers an operator command.
    fn command(&mut self, cmd: AgentCommand) {
        match cmd {
            AgentCommand::SetLinkAdmin { link, up, reply } => {
                let r = self.state.handle(Input::LinkAdmin { link, up }, now());
                let _ = reply.send(r.map(|_| ()));
            }
            AgentCommand::Reload { reply } => {
                let _ = reply.send(self.state.reload_config(now()));
            }
        }
    }

    fn handle_input(&mut self, input: Input) {
        write_record(&mut self.record, &input);
        if matches!(
            input,
            Input::Interface { .. } | Input::InterfaceGone { .. } | Input::Reload { .. }
        ) {
            self.handoffs_dirty = true;
        }
        let generation = self.state.config_generation();
        if let Err(e) = self.state.handle(input, now()) {
            // The state owner has logged it with its context already.
            tracing::debug!("input refused: {e}");
        }
        if self.state.config_generation() != generation {
            let config = self.state.config().clone();
            self.probes.sync(&config);
        }
    }

    /// Runs until `shutdown` completes (or SIGTERM / SIGINT arrives). The fast path keeps
    /// forwarding afterwards.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(DaemonError::Signal)?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(DaemonError::Signal)?;
        tokio::pin!(shutdown);
        // The WireGuard links' handshakes (UAPI), every 10 s.
        let mut handshake_tick = tokio::time::interval(Duration::from_secs(10));
        handshake_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(config = %self.options.config_path.display(), "running");
        loop {
            let sleep = match self.state.next_deadline() {
                Some(t) => {
                    let now = now().mono_ns;
                    Duration::from_nanos(t.saturating_sub(now))
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                input = self.inputs.recv() => {
                    let Some(input) = input else { break };
                    self.handle_input(input);
                    // Everything already queued is one batch.
                    while let Ok(more) = self.inputs.try_recv() {
                        self.handle_input(more);
                    }
                }
                cmd = self.commands.recv() => {
                    if let Some(cmd) = cmd {
                        self.record_command(&cmd);
                        let generation = self.state.config_generation();
                        self.command(cmd);
                        if self.state.config_generation() != generation {
                            let config = self.state.config().clone();
                            self.probes.sync(&config);
                            self.handoffs_dirty = true;
                        }
                    }
                }
                _ = handshake_tick.tick(), if self.state.config().local_links.iter().any(|l| l.is_wireguard()) => {
                    let config = self.state.config().clone();
                    for (link, verdict) in self.handoffs.handshakes(&config).await {
                        if self.handshakes.get(&link) != Some(&verdict) {
                            self.handshakes.insert(link, verdict.clone());
                            self.handle_input(Input::WireGuardHandshake { link, stale: verdict });
                        }
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                _ = term.recv() => { info!("SIGTERM"); break; }
                _ = int.recv() => { info!("SIGINT"); break; }
                _ = &mut shutdown => break,
            }
            if std::mem::take(&mut self.handoffs_dirty) {
                let config = self.state.config().clone();
                let problems = self.handoffs.sync(&config).await;
                self.state.set_handoff_problems(problems);
            }
            let views = self.link_views.borrow().clone();
            self.state.set_link_views(views);
            self.state.on_timer(now());
            publish(&mut self.state, &self.events, &self.snapshot);
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(api) = self.api.take() {
            if let Err(e) = api.shutdown().await {
                warn!(error = %e, "API shutdown");
            }
        }
        if let Some(m) = self.metrics.take() {
            if let Err(e) = m.shutdown().await {
                warn!(error = %e, "metrics shutdown");
            }
        }
        info!("stopped; the fast path keeps forwarding with the pinned programs and maps");
        Ok(())
    }

    fn record_command(&mut self, cmd: &AgentCommand) {
        let input = match cmd {
            AgentCommand::SetLinkAdmin { link, up, .. } => Input::LinkAdmin {
                link: *link,
                up: *up,
            },
            AgentCommand::Reload { .. } => Input::Reload {
                path: self.options.config_path.clone(),
            },
        };
        write_record(&mut self.record, &input);
    }
}

fn write_record(record: &mut Option<(std::fs::File, Instant)>, input: &Input) {
    if let Some((file, start)) = record {
        let line = TimedInput {
            at_ms: start.elapsed().as_millis() as u64,
            input: input.clone(),
        };
        if let Ok(json) = serde_json::to_string(&line) {
            if let Err(e) = writeln!(file, "{json}") {
                warn!(error = %e, "recording failed; recording stops");
                *record = None;
            }
        }
    }
}

/// An 8-byte aligned copy of an eBPF object (the ELF parser wants aligned input).
struct Aligned(Vec<u64>, usize);

impl Aligned {
    fn new(bytes: &[u8]) -> Aligned {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: u64 has no invalid bit patterns and the buffer holds at least `bytes.len()`.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8)
        };
        dst[..bytes.len()].copy_from_slice(bytes);
        Aligned(words, bytes.len())
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the words own at least `self.1` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.1) }
    }
}

/// Answers an operator command from outside the loop (a helper for the API side).
pub async fn set_link_admin(handle: &AgentHandle, link: u32, up: bool) -> Result<(), CommandError> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    handle
        .commands
        .send(AgentCommand::SetLinkAdmin { link, up, reply })
        .await
        .map_err(|_| CommandError::ShuttingDown)?;
    rx.await.map_err(|_| CommandError::ShuttingDown)?
}

/// Reads the fast path's sampled packets and hands them to the state owner in batches: drain
/// the ring buffer when it signals, send, then pause (the ring holds 4,096 samples; at one in
/// 1,000 packets that is seconds of traffic at a million packets per second).
async fn read_flow_samples(
    mut fd: tokio::io::unix::AsyncFd<aya::maps::RingBuf<MapData>>,
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

/// Hands the state owner's new events and snapshot to the operator side. No subscriber is
/// fine: the snapshot is kept for the next one, events are only for those listening.
fn publish(
    state: &mut AgentState<Dataplane>,
    events: &broadcast::Sender<AgentEvent>,
    snapshot: &watch::Sender<Arc<AgentSnapshot>>,
) {
    for event in state.take_events() {
        let _ = events.send(event);
    }
    if let Some(s) = state.take_snapshot() {
        snapshot.send_replace(s);
    }
}
