//! The daemon: loads and adopts the fast path, opens the reservations, starts the tasks
//! (`tasks.rs`: probes and link monitor, link state, rtnetlink, health checks, signals,
//! timers, API, metrics) and runs the state owner's loop. Every task only sends [`Input`]s; the loop alone
//! touches the state.
//!
//! Stopping the daemon (SIGTERM, a crash, `kill -9`) leaves the programs attached through
//! their pinned links and the maps pinned, so forwarding goes on; the next start adopts both.
use std::{
    collections::BTreeMap,
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use dwcp_common::maps::programs;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use dwcp_control::{
    bandwidth::{BandwidthError, MemoryStore, Reservation, ReservationOp, ReservationReply},
    config::{AgentConfig, ConfigError},
    input::{unix_now, Input, TimedInput, WireGuardReading},
    state::{AgentError, AgentState},
    store::StoreConfig,
    view::{AgentEvent, AgentSnapshot},
};
use dwcp_dataplane::{
    Dataplane, DataplaneError, LinkAdoption, PinnedMapError, Pinning, EBPF_OBJECT,
};

use super::{
    cluster::{self, MembershipTask},
    handoff::Handoffs,
    link_state::LinkStateHandle,
    netlink::{NetlinkError, NetlinkWatcher},
    now,
    probes::Probes,
    tasks::{self, LinkViews, Task},
    AgentCommand, AgentHandle, CommandError,
};
use crate::{
    api::RunningApi, health::HealthMonitor, probe::SenderError, store::EtcdStore,
    telemetry::RunningMetrics,
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
    #[error(transparent)]
    PinnedMap(#[from] PinnedMapError),
    #[error(transparent)]
    ProbeSent(#[from] crate::prober::SentMapError),
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
    #[error("state directory {path}: {source} (create it, or pass --state-dir)")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Reservations(#[from] dwcp_control::bandwidth::BandwidthError),
    #[error(transparent)]
    Api(#[from] crate::api::ServeError),
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::TelemetryError),
    #[error("WireGuard hand-off policy routing: {0}")]
    Handoff(#[from] dwcp_tunnels::error::TunnelError),
    #[error(transparent)]
    ClusterStore(#[from] crate::store::ClusterStoreError),
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
    /// Where the reservations are stored (`reservations.json`); created (mode 0750) if
    /// missing.
    pub state_dir: PathBuf,
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/dwcp";
/// The reservation store in the state directory.
pub const RESERVATIONS_FILE: &str = "reservations.json";
/// Receive buffer of the rtnetlink subscription: room for a burst of neighbour changes (a
/// smaller one overruns sooner, and each overrun costs a full dump).
const NETLINK_RECEIVE_BUFFER: usize = 4 << 20;

/// The input log of `--record`: the file and the daemon's start, from which times are taken.
type Record = Option<(std::fs::File, Instant)>;

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
    link_views: LinkViews,
    link_state: LinkStateHandle,
    tasks: Vec<Task>,
    _health: Option<HealthMonitor>,
    record: Record,
    api: Option<RunningApi>,
    metrics: Option<RunningMetrics>,
    /// Policy routing of the WireGuard local links.
    handoffs: Handoffs,
    /// The WireGuard links' policy routing must be checked again (configuration or
    /// interfaces changed).
    handoffs_dirty: bool,
    /// The last handshake verdict and device reading sent to the state owner, per WireGuard link.
    handshakes: BTreeMap<u32, (Option<String>, Option<WireGuardReading>)>,
    /// In etcd mode: this gateway's registration in the cluster store.
    membership: Option<MembershipTask>,
    /// In etcd mode: the cluster store, which decides reservation operations.
    store: Option<EtcdStore>,
    /// Reservation operations the store decided, to hand the state owner and answer.
    decided: mpsc::Receiver<cluster::Decided>,
    decided_tx: mpsc::Sender<cluster::Decided>,
}

impl Daemon {
    /// Loads the configuration and the fast path, adopts what an earlier agent left pinned,
    /// reads the interfaces and neighbours, programs the difference, then starts the tasks
    /// (see `tasks.rs` for the channels between them). Must run inside a tokio runtime, in
    /// the gateway's network namespace.
    pub async fn start(options: DaemonOptions) -> Result<Daemon, DaemonError> {
        // In etcd mode the topology may come from the store: its settings first. The
        // connection is lazy: an unreachable store is no start error (unreadable TLS files
        // are).
        let store = match AgentConfig::load_store(&options.config_path)? {
            StoreConfig::File => None,
            StoreConfig::Etcd(etcd) => Some(EtcdStore::connect(&etcd).await?),
        };
        let (published, store_answered) = match &store {
            Some(store) => cluster::initial_topology(store, &options.state_dir).await,
            None => (None, false),
        };
        // In etcd mode, the reservations to mirror until its watch lists them: none if the
        // store answers (the list comes at once), else the ones cached.
        let mirror = match &store {
            Some(_) if !store_answered => Some(cluster::cached_reservations(&options.state_dir)),
            Some(_) => Some(Vec::new()),
            None => None,
        };
        let config = match &published {
            Some(p) => match AgentConfig::load_with_topology(&options.config_path, p) {
                Ok(c) => c,
                // As a running agent would refuse it: this gateway runs its file's topology,
                // and `dwcp show gateways` shows it behind.
                Err(e) => {
                    warn!(generation = p.generation, "the cluster store's topology does not fit this gateway's file; starting on the file's: {e}");
                    AgentConfig::load(&options.config_path)?
                }
            },
            None => AgentConfig::load(&options.config_path)?,
        };
        info!(gateway = %config.gateway, region = %config.region, path = %options.config_path.display(), "configuration loaded");
        // Before the fast path: a state directory that cannot be made is a start error, not
        // a failure of the first reservation.
        create_state_dir(&options.state_dir)?;
        if let Some(p) = &config.published_topology {
            cluster::write_cache(&options.state_dir, p);
        }
        crate::http::raise_fd_limit(crate::http::fds_needed(&config));
        let mut dataplane = load_fast_path(options.ebpf_object.as_deref(), &config)?;
        let flow_samples = dataplane.take_flow_samples();

        let mut watcher = NetlinkWatcher::subscribe(NETLINK_RECEIVE_BUFFER)?;
        let initial = watcher.dump().await?;
        let mut record = open_record(options.record.as_deref())?;
        let (mut state, handoffs) = first_step(
            &config,
            dataplane,
            initial,
            &options.state_dir,
            mirror.clone(),
            &mut record,
        )
        .await?;
        let (events, _) = broadcast::channel(1024);
        let (snapshot, _) = watch::channel(state.snapshot().clone());

        let (input_tx, inputs) = mpsc::channel(4096);
        let (command_tx, commands) = mpsc::channel(64);
        let handle = AgentHandle {
            snapshot: snapshot.subscribe(),
            events: events.clone(),
            commands: command_tx.clone(),
        };
        let mut started = Vec::new();
        started.extend(flow_samples.and_then(|ring| tasks::flow_samples(ring, input_tx.clone())));
        if let Some(path) = &options.events_file {
            started.push(tasks::events_file(path, &events)?);
        }
        // The first step's events (its route changes, a reservation store set aside) go out
        // once the events file listens.
        publish(&mut state, &events, &snapshot);
        started.push(tasks::netlink(watcher, input_tx.clone()));
        let api = tasks::api(&config, &handle, store.clone()).await?;
        let metrics = tasks::metrics(&config, &handle).await?;
        let probes = tasks::probe_sender(&config)?;
        let (monitor, link_views) = tasks::link_monitor(&config, &probes, input_tx.clone())?;
        started.extend(monitor);
        let (flooding, link_state) = tasks::link_state(
            state.config(),
            link_views.clone(),
            snapshot.subscribe(),
            input_tx.clone(),
        );
        started.push(flooding);
        let (health, forwarder) =
            tasks::health_checks(&config.health_checks, input_tx.clone())?.unzip();
        started.extend(forwarder);
        let config_path = options.config_path.clone();
        started.push(tasks::reload_on_sighup(config_path, input_tx.clone())?);
        if let Some(every) = config.optimise_interval {
            started.push(tasks::optimiser(
                every,
                link_views.clone(),
                input_tx.clone(),
            ));
        }

        if let Some(store) = &store {
            started.push(cluster::topology_watch(store.clone(), input_tx.clone()));
            let (listed, first_list) = oneshot::channel();
            started.push(cluster::reservations_watch(
                store.clone(),
                input_tx.clone(),
                mirror.as_deref().unwrap_or_default(),
                listed,
            ));
            started.push(cluster::reservations_cache(
                options.state_dir.clone(),
                snapshot.subscribe(),
                first_list,
            ));
            started.push(cluster::reservations_expiry(store.clone()));
            started.push(cluster::admission_election(store.clone()));
            let timers = config.link_state.timers();
            started.push(cluster::figures_watch(
                store.clone(),
                timers.max_age,
                input_tx.clone(),
            ));
            started.push(tokio::spawn(crate::store::publish_figures(
                store.clone(),
                config.gateway.clone(),
                timers,
                snapshot.subscribe(),
            )));
        }
        let membership = store
            .clone()
            .map(|store| MembershipTask::start(store, &config, snapshot.subscribe()));
        let (decided_tx, decided) = mpsc::channel(64);

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
            link_state,
            tasks: started,
            _health: health,
            record,
            api,
            metrics,
            handoffs,
            handoffs_dirty: false,
            handshakes: BTreeMap::new(),
            membership,
            store,
            decided,
            decided_tx,
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

    /// Records an operator command as an input and answers it.
    fn command(&mut self, cmd: AgentCommand) {
        match cmd {
            AgentCommand::SetLinkAdmin { link, up, reply } => {
                let input = Input::LinkAdmin { link, up };
                write_record(&mut self.record, &input);
                let r = self.state.handle(input, now());
                let _ = reply.send(r.map(|_| ()));
            }
            AgentCommand::Reload { reply } => {
                let path = self.options.config_path.clone();
                write_record(&mut self.record, &Input::Reload { path });
                let _ = reply.send(self.state.reload_config(now()));
            }
            AgentCommand::Reservation { op, reply } if self.store.is_some() => {
                self.reservation_in_store(op, reply);
            }
            AgentCommand::Reservation { op, reply } => {
                let now_unix_s = unix_now();
                let input = Input::Reservation {
                    now_unix_s,
                    op: op.clone(),
                };
                write_record(&mut self.record, &input);
                // The store's write (fsync, rename) runs on this task: reservation changes are
                // rare, and the loop runs on the runtime's `block_on` thread, so the API and
                // the exporter on the worker threads are not held up meanwhile.
                let r = self.state.on_reservation(&op, now_unix_s, now());
                // The client reads what it changed in the snapshot next: publish first.
                publish(&mut self.state, &self.events, &self.snapshot);
                let _ = reply.send(r);
            }
        }
    }

    /// In etcd mode: a reservation operation goes to the store on a task of its own (the
    /// loop goes on meanwhile); `Decided` brings its outcome back.
    fn reservation_in_store(
        &mut self,
        op: ReservationOp,
        reply: oneshot::Sender<Result<ReservationReply, BandwidthError>>,
    ) {
        let store = self.store.clone().expect("etcd mode");
        let decided = self.decided_tx.clone();
        match op {
            ReservationOp::Create(req) => {
                match self.state.reservation_candidate(&req, unix_now()) {
                    Ok((cand, reservable)) => {
                        cluster::admit(store, req, cand, reservable, reply, decided)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            ReservationOp::Cancel { id } => cluster::cancel(store, id, reply, decided),
            ReservationOp::Extend { id, request } => match self.state.reservable_capacity() {
                Ok(reservable) => cluster::extend(store, id, request, reservable, reply, decided),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    fn handle_input(&mut self, input: Input) {
        write_record(&mut self.record, &input);
        if let Input::InterfaceGone { name } = &input {
            let config = self.state.config().clone();
            self.probes.forget_interface(&config, name);
        }
        if matches!(
            input,
            Input::Interface { .. }
                | Input::InterfaceGone { .. }
                | Input::Address { .. }
                | Input::Reload { .. }
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
            if let Some(p) = &config.published_topology {
                cluster::write_cache(&self.options.state_dir, p);
            }
            self.probes.sync(&config);
            self.link_state.sync(&config);
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
        // The WireGuard links' devices (handshakes, bytes), every 2 s: one netlink or UAPI
        // request per link, a bounded cost whatever the counters interval.
        let mut handshake_tick = tokio::time::interval(Duration::from_secs(2));
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
            let reservation_due = self.state.next_reservation_change().map(until_unix_s);
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
                        let generation = self.state.config_generation();
                        self.command(cmd);
                        if self.state.config_generation() != generation {
                            let config = self.state.config().clone();
                            self.probes.sync(&config);
                            self.link_state.sync(&config);
                            self.handoffs_dirty = true;
                        }
                    }
                }
                Some(d) = self.decided.recv() => {
                    for input in d.inputs {
                        self.handle_input(input);
                    }
                    // The client reads what it changed in the snapshot next: publish first.
                    publish(&mut self.state, &self.events, &self.snapshot);
                    let _ = d.reply.send(d.result);
                }
                _ = handshake_tick.tick(), if self.state.config().local_links.iter().any(|l| l.is_wireguard()) => {
                    let config = self.state.config().clone();
                    for (link, measured) in self.handoffs.handshakes(&config).await {
                        if self.handshakes.get(&link) != Some(&measured) {
                            self.handshakes.insert(link, measured.clone());
                            let (stale, reading) = measured;
                            self.handle_input(Input::WireGuardHandshake { link, stale, reading });
                        }
                    }
                }
                _ = tokio::time::sleep(reservation_due.unwrap_or_default()), if reservation_due.is_some() => {
                    self.handle_input(Input::Clock { now_unix_s: unix_now() });
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
                attach_wg_probes(self.state.fast_path_mut(), &config);
                // A link whose probe socket could not be opened (its device or address not
                // there yet, as a WireGuard device created after us) gets another try.
                self.probes.sync(&config);
            }
            let views = self.link_views.borrow().clone();
            self.state.set_link_views(views);
            self.state.set_lsdb(self.link_state.lsdb());
            self.state.on_timer(now());
            publish(&mut self.state, &self.events, &self.snapshot);
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(m) = self.membership.take() {
            m.leave().await;
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
}

/// The built-in eBPF object, or `object` (an upgrade), loaded and adopted under the pin
/// directory, with its programs attached.
fn load_fast_path(object: Option<&Path>, config: &AgentConfig) -> Result<Dataplane, DaemonError> {
    let read;
    let bytes: &[u8] = match object {
        Some(path) => {
            read = std::fs::read(path).map_err(|source| DaemonError::Object {
                path: path.to_path_buf(),
                source,
            })?;
            &read
        }
        None => EBPF_OBJECT,
    };
    // aya needs the object 8-byte aligned; a Vec<u8> may not be.
    let aligned = Aligned::new(bytes);
    let mut dataplane =
        Dataplane::load_object(aligned.as_slice(), Pinning::Dir(config.pin_dir.clone()))?;
    attach_xdp(&mut dataplane, config)?;
    attach_handoff_tc(&mut dataplane, config)?;
    Ok(dataplane)
}

/// The LAN and underlay programs on their interfaces, through pinned links: a link an earlier
/// agent pinned gets the new program in place.
fn attach_xdp(dataplane: &mut Dataplane, config: &AgentConfig) -> Result<(), DaemonError> {
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
    Ok(())
}

/// The second half of the WireGuard hand-off: sets `skb->mark` to the mark the LAN XDP
/// program recorded for the packet's flow in `HANDOFF_FLOWS` (docs/tunnels.md, "Hand-off").
fn attach_handoff_tc(dataplane: &mut Dataplane, config: &AgentConfig) -> Result<(), DaemonError> {
    let program = programs::LAN_HANDOFF_TC;
    for ifname in &config.lan_interfaces {
        match dataplane.attach_tc_pinned(program, ifname)? {
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
    Ok(())
}

/// The probes inside the tunnel of every monitored WireGuard link: the tc program that
/// reflects and measures them on the link's WireGuard device, behind a pinned link so the
/// peer's probes keep their answers while the agent is down. Run again whenever interfaces
/// change: the tunnel manager may create the device after us, or re-create it (a pin whose
/// device has gone is replaced). A device not there yet is left for the next change; its
/// link is down meanwhile (interface missing, no probe replies).
fn attach_wg_probes(dataplane: &mut Dataplane, config: &AgentConfig) {
    let program = programs::WG_PROBE_TC;
    for l in config
        .local_links
        .iter()
        .filter(|l| l.is_wireguard() && l.monitored)
    {
        let ifname = &l.interface;
        match dataplane.attach_tc_pinned(program, ifname) {
            Ok(LinkAdoption::Attached { program_id, .. }) => {
                info!(
                    program,
                    ifname,
                    program_id,
                    link = l.link_id,
                    "WireGuard probes: tc ingress attached and pinned"
                )
            }
            Ok(LinkAdoption::Replaced { .. }) => {}
            Err(e) => {
                tracing::debug!(program, ifname, link = l.link_id, error = %e, "WireGuard probes: tc program not attached (yet)")
            }
        }
    }
}

/// The state owner's first step: the configuration over what the fast path holds, the
/// reservations stored in `state_dir` as they are now, and the interfaces and neighbours as
/// they are now (`initial`); programs the difference.
async fn first_step(
    config: &AgentConfig,
    dataplane: Dataplane,
    initial: Vec<Input>,
    state_dir: &Path,
    etcd_mirror: Option<Vec<Reservation>>,
    record: &mut Record,
) -> Result<(AgentState<Dataplane>, Handoffs), DaemonError> {
    let now = now();
    let mut state = AgentState::new(config.clone(), dataplane, now)?;
    if let Some(cached) = etcd_mirror {
        // A mirror of the cluster store's reservations, filled by its watch; until then, with
        // the store unreachable at start, the ones cached.
        state.open_reservations(Box::new(MemoryStore::holding(cached)), now)?;
    } else {
        state.open_reservation_file(&state_dir.join(RESERVATIONS_FILE), unix_now(), now)?;
    }
    let mut handoffs = Handoffs::open().await?;
    state.set_handoff_problems(handoffs.sync(config).await);
    attach_wg_probes(state.fast_path_mut(), config);
    let clock = Input::Clock {
        now_unix_s: unix_now(),
    };
    for input in initial.into_iter().chain([clock]) {
        write_record(record, &input);
        let _ = state.handle(input, now);
    }
    state.on_timer(now);
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
    Ok((state, handoffs))
}

/// The state directory, made (mode 0750, parents too) if it does not exist; it must be a
/// directory the agent can write.
fn create_state_dir(path: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let error = |source| DaemonError::StateDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(path)
        .map_err(error)?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: a NUL-terminated path for the call.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(error(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The `--record` file, opened for appending.
fn open_record(path: Option<&Path>) -> Result<Record, DaemonError> {
    let Some(path) = path else { return Ok(None) };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| DaemonError::Record {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Some((file, Instant::now())))
}

fn write_record(record: &mut Record, input: &Input) {
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

/// How long until the wall clock reads `at` (Unix seconds).
fn until_unix_s(at: u64) -> Duration {
    Duration::from_millis((at * 1000).saturating_sub(now().unix_ms))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A state directory nobody created is made (parents too, closed to others); one that cannot be
    /// made refuses the start with an error naming it and what to do.
    #[test]
    fn the_state_directory_is_created_or_the_start_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        create_state_dir(&state).unwrap();
        // 0750 under the umask: never open to others.
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "{mode:o}");
        create_state_dir(&state).expect("an existing directory is taken as it is");

        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let under_a_file = file.join("state");
        let e = create_state_dir(&under_a_file).unwrap_err().to_string();
        assert!(e.contains(&under_a_file.display().to_string()), "{e}");
        assert!(e.contains("create it, or pass --state-dir"), "{e}");
    }
}
