//! The state owner: the one place that holds the agent's state and changes the fast path.
//!
//! Tasks send it [`Input`]s; it folds each into its view (link health, interfaces,
//! neighbours, region health, configuration, bandwidth reservations), lets the [`Debounce`]
//! decide when to recompute, and then computes routes, plans the maps, diffs them against what
//! is programmed and writes only the difference. Every route change goes into a bounded
//! history and out on the event channel; a new [`AgentSnapshot`] is published after each
//! change.
//!
//! No I/O but the fast path's maps and the reservation store, and no clock of its own (times
//! come in with the inputs, reservations' with their operations and [`Input::Clock`]), so a
//! recorded sequence of inputs replays to the same maps and history.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::Instant,
};

use dwcp_common::{LinksDown, QosClass, Reason, CONFIG_F_POLICING, CONFIG_F_READY};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::{
    bandwidth::{
        BandwidthError, FileStore, Network, Reservation, ReservationId, ReservationManager,
        ReservationOp, ReservationReply, ReservationRequest, ReservationStore, StoreError,
        UnixSeconds,
    },
    config::{AgentConfig, ConfigError, Mac},
    debounce::Debounce,
    fast_path::{FastPath, FastPathError},
    forwarding::{self, Change, ForwardingState, NeighKey},
    input::{Input, Now, WireGuardReading},
    link_state::{ReportedLink, StoredLinkFigures},
    liveness::kernel_usable,
    nhg_table::Member,
    plan::{self, DestinationPlan, InterfaceState, PlannedPath},
    routing::{Path, RouteResult, RoutingEngine, RoutingTable},
    topology::{
        InMemoryTopologyStore, LinkId, RegionId, RoutingHealth, Topology, TopologyStore,
        TopologyUpdate,
    },
    traffic::{
        CounterSnapshot, FlowsView, LinkStatus, RateTracker, SplitMode, TopFlowView, TopFlows,
        TrafficEngineer,
    },
    view::{
        AgentEvent, AgentSnapshot, ClassView, CommandError, CounterView, LinkHealth, LinkView,
        LsdbView, PathRole, PathView, ReservationsView, RouteChange, RouteView, StoreFiguresSource,
        TunnelState, TunnelView,
    },
};

/// Weight of the newest counters interval in the smoothed rates.
const RATE_SMOOTHING: f64 = 0.3;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("fast path: {0}")]
    FastPath(#[source] FastPathError),
    #[error("traffic engineer: {0}")]
    Traffic(#[from] crate::traffic::TrafficError),
}

/// What the probes say about a link we terminate.
#[derive(Clone, Debug, PartialEq)]
enum ProbeStatus {
    Up,
    Down(String),
    /// Not probed: its interface alone decides.
    Unmonitored,
}

#[derive(Clone, Debug)]
struct LocalLinkState {
    probe: ProbeStatus,
    degraded: Option<String>,
}

/// Something that happened since the last computation, and what it concerns.
#[derive(Clone, Debug)]
struct Cause {
    text: String,
    links: Vec<u32>,
    regions: Vec<String>,
    /// A failure (link or region down): a route moved by it is a failover.
    failure: bool,
}

/// Timing of the last fast-path update, for the benchmark and the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Monotonic time of the computation.
    pub at_ns: u64,
    pub compute_ns: u64,
    /// Of `compute_ns`: the routing engine's table update.
    pub routing_ns: u64,
    /// Of `compute_ns`: the destinations' plans (paths, traffic weights, members), routing
    /// included.
    pub plans_ns: u64,
    /// Of `compute_ns`: group tables built (`plan::add_routes`).
    pub groups_ns: u64,
    pub program_ns: u64,
    /// Map writes.
    pub changes: usize,
    /// Destinations whose paths changed.
    pub routes_changed: usize,
}

/// What was found in the maps when the state owner started (an earlier agent's work).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub routes: usize,
    pub groups: usize,
    pub nexthops: usize,
    pub neighbours: usize,
}

pub struct AgentState<F> {
    config: Arc<AgentConfig>,
    config_generation: u64,
    store: Arc<dyn TopologyStore>,
    engine: RoutingEngine,
    traffic: TrafficEngineer,
    fast_path: F,
    standby_supported: bool,
    local: BTreeMap<u32, LocalLinkState>,
    /// Links taken down by the operator (local or remote).
    admin_down: BTreeSet<u32>,
    /// Health written into the topology for links whose health we decide.
    applied_health: BTreeMap<u32, RoutingHealth>,
    /// The network's links as the link-state records report them (the last
    /// `Input::LinkStateView`), by link id; empty while link state is off.
    reported: BTreeMap<u32, ReportedLink>,
    /// etcd mode: the figures other gateways published to the cluster store (the last
    /// `Input::StoredFigures`), by link id; for the snapshot only.
    stored_figures: BTreeMap<u32, StoredLinkFigures>,
    /// The link-state database, for the snapshot (`set_lsdb`).
    lsdb: Option<Arc<LsdbView>>,
    interfaces: BTreeMap<String, InterfaceState>,
    /// Addresses on the interfaces, by interface index.
    addresses: BTreeSet<(u32, std::net::IpAddr)>,
    neighbours: BTreeMap<NeighKey, Mac>,
    regions_down: BTreeMap<String, String>,
    /// The bandwidth reservations, if the agent keeps any ([`AgentState::open_reservations`]).
    reservations: Option<ReservationManager>,
    /// Wall time of the last clock input or reservation operation: the instant at which
    /// reservations are active.
    reservation_clock: UnixSeconds,
    /// The reservations active at `reservation_clock` (the traffic engineer's pinned flows).
    active_reservations: Vec<Reservation>,
    /// What the snapshot shows of the reservations, rebuilt only when they change.
    reservations_view: Option<Arc<ReservationsView>>,
    next_reservations: Option<NextReservationChange>,
    debounce: Debounce,
    causes: Vec<Cause>,
    started: bool,
    table: Option<RoutingTable>,
    /// The table `table` replaced, dropped once the maps are written (dropping a table of
    /// 1,000 edge nodes is work the update need not wait for).
    retired_table: Option<RoutingTable>,
    plans: BTreeMap<String, DestinationPlan>,
    programmed: ForwardingState,
    /// Members each programmed group table was built from.
    group_members: plan::GroupMembers,
    /// When the last computation finished writing the maps.
    programmed_at: Option<Instant>,
    resync: bool,
    adopted: Adopted,
    /// Shared with the snapshots: publishing clones pointers, not up to `history_len` changes
    /// (it cost more than the computation at 1,000).
    history: VecDeque<Arc<RouteChange>>,
    last_reason: BTreeMap<String, String>,
    route_changes_total: u64,
    failovers_total: u64,
    computations: u64,
    last_update: Option<UpdateStats>,
    /// Time of the last routing table update (see `UpdateStats::routing_ns`).
    last_routing_ns: u64,
    link_views: BTreeMap<u32, crate::liveness::LinkView>,
    /// What is missing of each WireGuard link's policy routing (rule, table route), as the
    /// daemon last found it; shown in the link's tunnel view.
    handoff_problems: BTreeMap<u32, Vec<String>>,
    /// WireGuard links whose device reports no recent handshake, with the reason.
    handshake_stale: BTreeMap<u32, String>,
    /// The latest reading of each WireGuard link's device (absent: not read or not answered).
    wireguard_readings: BTreeMap<u32, WireGuardReading>,
    counters: CounterView,
    next_counters_ns: u64,
    /// Per-link and per-class rates from successive counter reads (throughput and
    /// utilisation of the links this gateway terminates).
    rates: RateTracker,
    /// Heaviest flows of the current window (`[flows]`), from `Input::FlowSamples`.
    top_flows: TopFlows,
    flow_samples: u64,
    flows_window_start_ns: u64,
    flows_window_start_unix_ms: u64,
    /// Sampled bytes (scaled by the sampling rate) per (group, class) since the last estimate.
    demand_bytes: BTreeMap<(u32, u8), u64>,
    demand_at_ns: u64,
    /// Offered rate per flow group, smoothed: the traffic engineer's demand in TE mode.
    demand_bps: BTreeMap<(String, QosClass), f64>,
    /// The demands the traffic engineer has now.
    demand_given: BTreeMap<(String, QosClass), u64>,
    started_unix_ms: u64,
    /// Events not yet taken by the daemon ([`AgentState::take_events`]); the oldest are
    /// dropped past [`EVENTS_KEPT`], as a lagging subscriber of a broadcast channel would.
    events: VecDeque<AgentEvent>,
    /// The snapshot published last, and whether the daemon has taken it.
    snapshot: Arc<AgentSnapshot>,
    snapshot_taken: bool,
}

/// Events kept for the daemon between two of its reads.
pub const EVENTS_KEPT: usize = 1024;

/// The reservations' next start or end after the reservation clock: when, and the rate then
/// reserved on each link (links absent: nothing). Feeds the projected utilisation of the links.
struct NextReservationChange {
    at_unix_s: UnixSeconds,
    reserved_bps: BTreeMap<u32, u64>,
}

impl NextReservationChange {
    fn after(manager: &ReservationManager, clock: UnixSeconds) -> Option<Self> {
        let at = manager.next_change_after(clock)?;
        Some(NextReservationChange {
            at_unix_s: at,
            reserved_bps: manager
                .reserved_by_link(at)
                .into_iter()
                .map(|(l, bps)| (l.0, bps))
                .collect(),
        })
    }
}

/// The regions and link capacities reservations are admitted against.
fn reservable_network(topology: &Topology) -> Network {
    Network {
        regions: topology.regions().iter().map(|r| r.name.clone()).collect(),
        link_capacity_bps: topology
            .links()
            .iter()
            .map(|l| (l.id, (l.capacity_mbps * 1e6) as u64))
            .collect(),
    }
}

/// Weight of the newest interval in the flow groups' demand average.
const DEMAND_SMOOTHING: f64 = 0.5;

/// A flow group offering less than this has no demand (1 kbit/s).
const MIN_DEMAND_BPS: f64 = 1_000.0;

/// Flows in the snapshot's top-flows view.
const TOP_FLOWS_SHOWN: usize = 20;

fn now_ns_plus(now: Now, d: std::time::Duration) -> u64 {
    now.mono_ns + d.as_nanos() as u64
}

impl<F: FastPath> AgentState<F> {
    /// Takes over `fast_path` (loaded, possibly with maps an earlier agent programmed) under
    /// `config`, with an in-memory topology store. Nothing is written yet: feed the interfaces
    /// and neighbours, then [`AgentState::on_timer`] runs the first computation.
    pub fn new(config: AgentConfig, fast_path: F, now: Now) -> Result<Self, AgentError> {
        let store: Arc<dyn TopologyStore> =
            Arc::new(InMemoryTopologyStore::new(config.topology_model.clone()));
        Self::with_store(config, fast_path, store, now)
    }

    /// As [`AgentState::new`] with a topology store of the caller's (a shared store fed by
    /// other gateways' measurements).
    pub fn with_store(
        config: AgentConfig,
        fast_path: F,
        store: Arc<dyn TopologyStore>,
        now: Now,
    ) -> Result<Self, AgentError> {
        let traffic = TrafficEngineer::new(config.traffic.clone())?;
        let top_flows = TopFlows::new(
            config.flows.table_size,
            u64::from(config.flows.sample_every),
        );
        let engine = RoutingEngine::new(store.clone());
        let mut state = AgentState {
            debounce: Debounce::new(config.delays),
            config: Arc::new(config),
            config_generation: 1,
            store,
            engine,
            traffic,
            fast_path,
            standby_supported: plan::standby_supported(),
            local: BTreeMap::new(),
            admin_down: BTreeSet::new(),
            applied_health: BTreeMap::new(),
            reported: BTreeMap::new(),
            stored_figures: BTreeMap::new(),
            lsdb: None,
            interfaces: BTreeMap::new(),
            addresses: BTreeSet::new(),
            neighbours: BTreeMap::new(),
            regions_down: BTreeMap::new(),
            reservations: None,
            reservation_clock: 0,
            active_reservations: Vec::new(),
            reservations_view: None,
            next_reservations: None,
            causes: Vec::new(),
            started: false,
            table: None,
            retired_table: None,
            plans: BTreeMap::new(),
            programmed: ForwardingState::default(),
            group_members: BTreeMap::new(),
            programmed_at: None,
            resync: false,
            adopted: Adopted::default(),
            history: VecDeque::new(),
            last_reason: BTreeMap::new(),
            route_changes_total: 0,
            failovers_total: 0,
            computations: 0,
            last_update: None,
            last_routing_ns: 0,
            link_views: BTreeMap::new(),
            handoff_problems: BTreeMap::new(),
            handshake_stale: BTreeMap::new(),
            wireguard_readings: BTreeMap::new(),
            counters: CounterView::default(),
            next_counters_ns: now.mono_ns,
            rates: RateTracker::new(RATE_SMOOTHING).expect("a valid smoothing constant"),
            top_flows,
            flow_samples: 0,
            flows_window_start_ns: now.mono_ns,
            flows_window_start_unix_ms: now.unix_ms,
            demand_bytes: BTreeMap::new(),
            demand_at_ns: now.mono_ns,
            demand_bps: BTreeMap::new(),
            demand_given: BTreeMap::new(),
            started_unix_ms: now.unix_ms,
            events: VecDeque::new(),
            snapshot: Arc::new(AgentSnapshot::default()),
            snapshot_taken: true,
        };
        state.programmed = state
            .fast_path
            .read_programmed()
            .map_err(AgentError::FastPath)?;
        state.adopted = Adopted {
            routes: state.programmed.routes.len(),
            groups: state.programmed.groups.len(),
            nexthops: state.programmed.nexthops.len(),
            neighbours: state.programmed.neighbours.len(),
        };
        if state.adopted.routes > 0 {
            info!(
                routes = state.adopted.routes,
                groups = state.adopted.groups,
                nexthops = state.adopted.nexthops,
                "adopting the programmed fast path"
            );
        }
        state.init_local_links(now);
        state.refresh_health();
        state.causes.push(Cause {
            text: "agent started".into(),
            links: Vec::new(),
            regions: Vec::new(),
            failure: false,
        });
        state.debounce.event(now.mono_ns);
        Ok(state)
    }

    /// Probe status of each local link: for a monitored link, what the fast path itself
    /// decides from `LINK_STATE` right now (a restarted agent starts from the kernel's view).
    fn init_local_links(&mut self, now: Now) {
        let detect_ns = self.config.monitor.detect_ns();
        let up_after = self.config.monitor.up_after;
        let mut local = BTreeMap::new();
        for l in &self.config.local_links {
            let previous = self.local.get(&l.link_id).cloned();
            let probe = if !l.monitored {
                ProbeStatus::Unmonitored
            } else if let Some(LocalLinkState { probe, .. }) = previous.clone() {
                if probe == ProbeStatus::Unmonitored {
                    ProbeStatus::Down("probing just enabled".into())
                } else {
                    probe
                }
            } else {
                match self.fast_path.link_state(l.link_id) {
                    Ok(s) if kernel_usable(now.mono_ns, &s, detect_ns, up_after) => ProbeStatus::Up,
                    Ok(s) if s.last_reply_ns == 0 => ProbeStatus::Down("no probe reply yet".into()),
                    Ok(_) => ProbeStatus::Down("no recent probe replies".into()),
                    Err(e) => ProbeStatus::Down(format!("link state unreadable: {e}")),
                }
            };
            local.insert(
                l.link_id,
                LocalLinkState {
                    probe,
                    degraded: previous.and_then(|p| p.degraded),
                },
            );
        }
        self.local = local;
    }

    // -----------------------------------------------------------------------------------------
    // Accessors.

    pub fn config(&self) -> &Arc<AgentConfig> {
        &self.config
    }

    pub fn config_generation(&self) -> u64 {
        self.config_generation
    }

    pub fn fast_path(&self) -> &F {
        &self.fast_path
    }

    /// The fast path itself (a benchmark reads its write statistics).
    pub fn fast_path_mut(&mut self) -> &mut F {
        &mut self.fast_path
    }

    /// What the agent believes is programmed (what it wrote, or read back at start).
    pub fn programmed(&self) -> &ForwardingState {
        &self.programmed
    }

    /// Reads the maps again (tests compare it with [`AgentState::programmed`]).
    pub fn read_back(&self) -> Result<ForwardingState, FastPathError> {
        self.fast_path.read_programmed()
    }

    pub fn plans(&self) -> &BTreeMap<String, DestinationPlan> {
        &self.plans
    }

    pub fn history(&self) -> impl Iterator<Item = &RouteChange> {
        self.history.iter().map(|c| &**c)
    }

    pub fn adopted(&self) -> Adopted {
        self.adopted
    }

    pub fn last_update(&self) -> Option<UpdateStats> {
        self.last_update
    }

    /// When the last computation finished writing the maps (the benchmark's end mark).
    pub fn programmed_at(&self) -> Option<Instant> {
        self.programmed_at
    }

    pub fn computations(&self) -> u64 {
        self.computations
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.store.snapshot()
    }

    pub fn store(&self) -> &Arc<dyn TopologyStore> {
        &self.store
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> impl Iterator<Item = AgentEvent> + '_ {
        self.events.drain(..)
    }

    /// The snapshot published last.
    pub fn snapshot(&self) -> &Arc<AgentSnapshot> {
        &self.snapshot
    }

    /// The snapshot published since the last call, if there is a new one.
    pub fn take_snapshot(&mut self) -> Option<Arc<AgentSnapshot>> {
        (!std::mem::replace(&mut self.snapshot_taken, true)).then(|| self.snapshot.clone())
    }

    /// The probe monitor's view of each link (RTT, loss, probe counts), for the snapshot.
    pub fn set_link_views(&mut self, views: BTreeMap<u32, crate::liveness::LinkView>) {
        self.link_views = views;
    }

    /// The link-state database as the link-state task last published it, for the snapshot.
    pub fn set_lsdb(&mut self, lsdb: Option<Arc<LsdbView>>) {
        self.lsdb = lsdb;
    }

    /// What the daemon found missing of the WireGuard links' policy routing (empty: none).
    pub fn set_handoff_problems(&mut self, problems: BTreeMap<u32, Vec<String>>) {
        self.handoff_problems = problems;
    }

    // -----------------------------------------------------------------------------------------
    // Inputs.

    fn emit(&mut self, ev: AgentEvent) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    fn cause(&mut self, now: Now, cause: Cause) {
        debug!(cause = %cause.text, "recompute requested");
        self.causes.push(cause);
        self.debounce.event(now.mono_ns);
    }

    /// Handles one input. Errors are for the operator's commands (unknown link, a refused
    /// configuration); nothing changes when one is returned.
    pub fn handle(&mut self, input: Input, now: Now) -> Result<Option<u64>, CommandError> {
        match input {
            Input::LinkDown { link, reason } => self.on_link_down(link, reason, now),
            Input::LinkUp { link } => self.on_link_up(link, now),
            Input::LinkDegraded { link, reason, loss } => {
                self.on_link_degraded(link, reason, loss, now)
            }
            Input::LinkRecovered { link } => self.on_link_recovered(link, now),
            Input::LinkMeasured {
                link,
                rtt_ms,
                jitter_ms,
                loss,
            } => self.on_link_measured(link, rtt_ms, jitter_ms, loss),
            Input::Interface {
                name,
                ifindex,
                up,
                mac,
                mtu,
            } => {
                let state = InterfaceState {
                    ifindex,
                    up,
                    mac,
                    mtu,
                };
                self.on_interface(name, state, now)
            }
            Input::WireGuardHandshake {
                link,
                stale,
                reading,
            } => self.on_handshake(link, stale, reading, now),
            Input::LinkStateView { links } => self.on_link_state_view(links, now),
            Input::InterfaceGone { name } => self.on_interface_gone(name, now),
            Input::Address {
                ifindex,
                ip,
                present,
            } => self.on_address(ifindex, ip, present, now),
            Input::Neighbour { ifindex, ip, mac } => self.on_neighbour(ifindex, ip, mac, now),
            Input::RegionDown { region, reason } => self.on_region_down(region, reason, now),
            Input::RegionUp { region } => self.on_region_up(region, now),
            Input::LinkAdmin { link, up } => self.on_link_admin(link, up, now)?,
            Input::Clock { now_unix_s } => self.on_clock(now_unix_s, now),
            Input::Reservation { now_unix_s, op } => {
                // A replay: the daemon calls `on_reservation` itself for the API's answer. A
                // refusal is logged there and changes nothing.
                let _ = self.on_reservation(&op, now_unix_s, now);
            }
            Input::Reload { path } => return self.reload(&path, now).map(Some),
            Input::PublishedTopology { topology } => {
                return self.on_published_topology(topology, now).map(Some)
            }
            Input::StoredReservation { reservation } => {
                self.on_stored_reservation(reservation, now)
            }
            Input::StoredReservationGone {
                id,
                now_unix_s,
                preempted_by,
            } => self.on_stored_reservation_gone(id, now_unix_s, preempted_by, now),
            Input::StoredFigures { links } => {
                // The operator's view only: no health, no cause, no computation.
                self.stored_figures = links.into_iter().map(|l| (l.link.0, l)).collect();
                self.publish(now);
            }
            Input::FlowSamples { samples } => self.on_flow_samples(samples),
            Input::Optimise => self.cause(
                now,
                Cause {
                    text: "periodic optimisation".into(),
                    links: Vec::new(),
                    regions: Vec::new(),
                    failure: false,
                },
            ),
        }
        Ok(None)
    }

    fn on_link_down(&mut self, link: u32, reason: String, now: Now) {
        if let Some(s) = self.local.get_mut(&link) {
            if s.probe != ProbeStatus::Unmonitored {
                s.probe = ProbeStatus::Down(reason);
                s.degraded = None;
            }
            self.refresh_link(link, now);
        }
    }

    fn on_link_up(&mut self, link: u32, now: Now) {
        if let Some(s) = self.local.get_mut(&link) {
            if s.probe != ProbeStatus::Unmonitored {
                s.probe = ProbeStatus::Up;
            }
            self.refresh_link(link, now);
        }
    }

    fn on_link_degraded(&mut self, link: u32, reason: String, loss: Option<f64>, now: Now) {
        if let Some(s) = self.local.get_mut(&link) {
            s.degraded = Some(reason);
            if let Some(loss) = loss {
                self.measure(link, None, None, Some(loss));
            }
            self.refresh_link(link, now);
        }
    }

    fn on_link_recovered(&mut self, link: u32, now: Now) {
        if let Some(s) = self.local.get_mut(&link) {
            s.degraded = None;
            self.refresh_link(link, now);
        }
    }

    fn on_link_measured(&mut self, link: u32, rtt_ms: f64, jitter_ms: f64, loss: Option<f64>) {
        if !(self.local.contains_key(&link) && self.config.use_measurements) {
            return;
        }
        if let Some(text) = self.measure(link, Some(rtt_ms), Some(jitter_ms), loss) {
            // Taken into account at the next computation (the optimisation that follows the
            // measurements), not one computation per link.
            self.causes.push(Cause {
                text,
                links: vec![link],
                regions: Vec::new(),
                failure: false,
            });
        }
    }

    /// The records' view of the network's links: their health counts for routing (see
    /// `decided_health`), and their figures are routing's.
    fn on_link_state_view(&mut self, links: Vec<ReportedLink>, now: Now) {
        let new: BTreeMap<u32, ReportedLink> = links.into_iter().map(|l| (l.link.0, l)).collect();
        let before = std::mem::replace(&mut self.reported, new);
        self.write_links_down(now);
        let topology = self.store.snapshot();
        let changed: BTreeSet<u32> = before
            .keys()
            .chain(self.reported.keys())
            .copied()
            .filter(|l| topology.link(LinkId(*l)).is_some())
            .collect();
        for link in changed {
            let old = before.get(&link).map(|r| (r.health, r.figures));
            let new = self.reported.get(&link).map(|r| (r.health, r.figures));
            if old.map(|(h, _)| h) != new.map(|(h, _)| h) {
                self.refresh_link(link, now);
            }
            // A link no record reports and one reported without figures have the same.
            if old.map(|(_, f)| f).unwrap_or_default() != new.map(|(_, f)| f).unwrap_or_default() {
                self.apply_reported_figures(link, now);
            }
        }
    }

    /// The links down for routing anywhere in the network: those a record reports down, and
    /// those the operator took down.
    fn links_down(&self) -> LinksDown {
        let reported = self
            .reported
            .values()
            .filter(|r| r.health == RoutingHealth::Down)
            .map(|r| r.link.0);
        LinksDown::of(reported.chain(self.admin_down.iter().copied()))
    }

    /// Writes the links-down bitmap now, ahead of the route computation (which waits for its
    /// back-off): the fast path skips the members whose paths cross a link that went down at
    /// once, and flows of the other members do not move.
    fn write_links_down(&mut self, now: Now) {
        let down = self.links_down();
        if down != self.programmed.links_down {
            self.write_changes(&[Change::SetLinksDown(down)], now);
        }
    }

    /// A link's figures as its records report them into the topology, the topology file's
    /// where they report none (a link down has none). Our own links' too: our record carries
    /// what our probes measure, and taking every link's figures from the records, as every
    /// gateway does, keeps the gateways' routes consistent with each other.
    fn apply_reported_figures(&mut self, link: u32, now: Now) {
        if !self.config.use_measurements {
            return;
        }
        let Some(configured) = self.config.topology_model.link(LinkId(link)) else {
            return;
        };
        let reported = self.reported.get(&link);
        let figures = reported.map(|r| r.figures).unwrap_or_default();
        if let Err(e) = self.store.apply(&figures.updates_of(configured)) {
            warn!(link, error = %e, "reported figures refused by the topology");
            return;
        }
        // A change of health asks for its own computation; figures of a live link need one.
        let text = reported
            .filter(|r| r.health != RoutingHealth::Down)
            .map(|r| {
                format!(
                    "link {} measured: reported by {}",
                    self.link_label(link),
                    r.reporters()
                )
            });
        if let Some(text) = text {
            self.cause(
                now,
                Cause {
                    text,
                    links: vec![link],
                    regions: Vec::new(),
                    failure: false,
                },
            );
        }
    }

    /// An interface appeared or changed. Only ours (LAN, underlay) matter to the routes; the
    /// others are kept for the snapshot.
    fn on_interface(&mut self, name: String, new: InterfaceState, now: Now) {
        if !self.is_ours(&name) {
            self.interfaces.insert(name, new);
            return;
        }
        if self.interfaces.get(&name) == Some(&new) {
            return;
        }
        let (ifindex, up) = (new.ifindex, new.up);
        let was = self.interfaces.insert(name.clone(), new);
        let text = match (was, up) {
            (None, _) => format!("interface {name} appeared (index {ifindex})"),
            (Some(w), true) if !w.up => format!("interface {name} up"),
            (Some(_), false) => format!("interface {name} down"),
            (Some(_), true) => format!("interface {name} changed"),
        };
        let links = self.links_on(&name);
        for l in &links {
            self.refresh_health_of(*l, now, false);
        }
        self.cause(
            now,
            Cause {
                failure: !up,
                text,
                links,
                regions: Vec::new(),
            },
        );
    }

    fn on_handshake(
        &mut self,
        link: u32,
        stale: Option<String>,
        reading: Option<WireGuardReading>,
        now: Now,
    ) {
        let wireguard = self
            .config
            .local_link(link)
            .is_some_and(|l| l.is_wireguard());
        match reading {
            Some(r) if wireguard => {
                self.wireguard_readings.insert(link, r);
            }
            _ => {
                self.wireguard_readings.remove(&link);
            }
        }
        let changed = match &stale {
            Some(r) if wireguard => self.handshake_stale.insert(link, r.clone()) != Some(r.clone()),
            _ => self.handshake_stale.remove(&link).is_some(),
        };
        if !changed {
            return;
        }
        self.refresh_health_of(link, now, false);
        self.cause(
            now,
            Cause {
                text: match &stale {
                    Some(r) => format!("link {link}: {r}"),
                    None => format!("link {link}: WireGuard handshake fresh"),
                },
                links: vec![link],
                regions: Vec::new(),
                failure: stale.is_some(),
            },
        );
    }

    fn on_interface_gone(&mut self, name: String, now: Now) {
        if let Some(gone) = self.interfaces.get(&name) {
            let idx = gone.ifindex;
            self.addresses.retain(|(i, _)| *i != idx);
        }
        if self.interfaces.remove(&name).is_none() || !self.is_ours(&name) {
            return;
        }
        let links = self.links_on(&name);
        for l in &links {
            self.refresh_health_of(*l, now, false);
        }
        self.cause(
            now,
            Cause {
                text: format!("interface {name} deleted"),
                links,
                regions: Vec::new(),
                failure: true,
            },
        );
    }

    fn on_address(&mut self, ifindex: u32, ip: std::net::IpAddr, present: bool, now: Now) {
        let changed = if present {
            self.addresses.insert((ifindex, ip))
        } else {
            self.addresses.remove(&(ifindex, ip))
        };
        // The links whose local address this is, on their interface.
        let links: Vec<u32> = self
            .config
            .local_links
            .iter()
            .filter(|l| {
                std::net::IpAddr::V4(l.local_ip) == ip
                    && self.interfaces.get(&l.interface).map(|i| i.ifindex) == Some(ifindex)
            })
            .map(|l| l.link_id)
            .collect();
        if !changed || links.is_empty() {
            return;
        }
        for l in &links {
            self.refresh_health_of(*l, now, false);
        }
        self.cause(
            now,
            Cause {
                text: format!(
                    "address {ip} {} interface {ifindex}",
                    if present { "added to" } else { "removed from" }
                ),
                links,
                regions: Vec::new(),
                failure: !present,
            },
        );
    }

    fn on_neighbour(&mut self, ifindex: u32, ip: std::net::Ipv4Addr, mac: Option<Mac>, now: Now) {
        let key = (ifindex, ip.octets());
        let changed = match mac {
            Some(m) => self.neighbours.insert(key, m) != Some(m),
            None => self.neighbours.remove(&key).is_some(),
        };
        // A next hop of one of our links (its via address, on its interface).
        let wanted = self.config.local_links.iter().any(|l| {
            l.via_ip == ip && self.interfaces.get(&l.interface).map(|i| i.ifindex) == Some(ifindex)
        });
        if changed && wanted {
            self.cause(
                now,
                Cause {
                    text: match mac {
                        Some(m) => format!("neighbour {ip} is {m}"),
                        None => format!("neighbour {ip} gone"),
                    },
                    links: Vec::new(),
                    regions: Vec::new(),
                    failure: false,
                },
            );
        }
    }

    fn on_region_down(&mut self, region: String, reason: String, now: Now) {
        if self.regions_down.insert(region.clone(), reason.clone()) == Some(reason.clone()) {
            return;
        }
        self.cause(
            now,
            Cause {
                text: format!("region {region} down: {reason}"),
                links: Vec::new(),
                regions: vec![region],
                failure: true,
            },
        );
    }

    fn on_region_up(&mut self, region: String, now: Now) {
        if self.regions_down.remove(&region).is_some() {
            self.cause(
                now,
                Cause {
                    text: format!("region {region} up"),
                    links: Vec::new(),
                    regions: vec![region],
                    failure: false,
                },
            );
        }
    }

    /// `dwcp link up/down`: the operator's word overrides the probes.
    fn on_link_admin(&mut self, link: u32, up: bool, now: Now) -> Result<(), CommandError> {
        if self.store.snapshot().link(LinkId(link)).is_none() {
            return Err(CommandError::UnknownLink(link));
        }
        let changed = if up {
            self.admin_down.remove(&link)
        } else {
            self.admin_down.insert(link)
        };
        if !changed {
            return Ok(());
        }
        let state = if up { "up" } else { "down" };
        info!(link, up, "link set administratively {state}");
        self.refresh_health_of(link, now, true);
        self.cause(
            now,
            Cause {
                text: format!("link {} administratively {state}", self.link_label(link)),
                links: vec![link],
                regions: Vec::new(),
                failure: !up,
            },
        );
        Ok(())
    }

    /// Keeps the bandwidth reservations of `store`, admitted against the topology with the
    /// `[reservations]` settings; those that no longer fit are displaced (and told). Without
    /// it the agent keeps none and refuses reservation operations.
    pub fn open_reservations(
        &mut self,
        store: Box<dyn ReservationStore>,
        now: Now,
    ) -> Result<(), BandwidthError> {
        let network = reservable_network(&self.store.snapshot());
        let (manager, displaced) =
            ReservationManager::open(store, network, self.config.reservations.clone())?;
        for event in displaced {
            warn!(
                ?event,
                "reservation displaced: it no longer fits the topology"
            );
            self.emit(AgentEvent::Reservation(event));
        }
        self.reservations = Some(manager);
        self.refresh_reservations(now);
        Ok(())
    }

    /// Keeps the reservations stored in the file at `path` (as [`AgentState::open_reservations`]).
    /// A file that cannot be parsed is set aside (renamed with [`FileStore::set_aside`], an
    /// [`AgentEvent::ReservationsSetAside`] says where) and the agent starts with none:
    /// refusing to start would leave the gateway unmanaged over a file nobody can read. A file
    /// of another format version is still refused: it is another agent's, not garbage.
    pub fn open_reservation_file(
        &mut self,
        path: &std::path::Path,
        now_unix_s: UnixSeconds,
        now: Now,
    ) -> Result<(), BandwidthError> {
        match self.open_reservations(Box::new(FileStore::new(path)), now) {
            Err(BandwidthError::Store(StoreError::Corrupt { detail, .. })) => {
                let moved_to = FileStore::new(path).set_aside(now_unix_s)?;
                error!(
                    file = %path.display(),
                    moved_to = %moved_to.display(),
                    "the reservation store is corrupt ({detail}): set aside, starting with no reservations"
                );
                self.emit(AgentEvent::ReservationsSetAside {
                    file: path.to_path_buf(),
                    moved_to,
                    reason: detail,
                });
                self.open_reservations(Box::new(FileStore::new(path)), now)
            }
            opened => opened,
        }
    }

    /// Admission follows a reloaded topology: capacities and links as they are now;
    /// reservations that no longer fit are displaced (and told).
    fn readmit_reservations(&mut self, now: Now) {
        let network = reservable_network(&self.store.snapshot());
        let Some(manager) = self.reservations.as_mut() else {
            return;
        };
        if let Err(e) = manager.set_network(network) {
            error!("reservations after the topology reload: {e}");
        }
        self.refresh_reservations(now);
    }

    /// When a reservation next starts or ends: the daemon sends [`Input::Clock`] then.
    pub fn next_reservation_change(&self) -> Option<UnixSeconds> {
        self.next_reservations.as_ref().map(|n| n.at_unix_s)
    }

    /// Runs an operator's change to the reservations at `now_unix_s` (stored before it takes
    /// effect); the active set follows as on a clock input.
    pub fn on_reservation(
        &mut self,
        op: &ReservationOp,
        now_unix_s: UnixSeconds,
        now: Now,
    ) -> Result<ReservationReply, BandwidthError> {
        let manager = self
            .reservations
            .as_mut()
            .ok_or(BandwidthError::NoReservations)?;
        let reply = manager.apply(op, now_unix_s);
        if let Err(e) = &reply {
            info!(?op, "reservation refused: {e}");
        }
        self.reservation_clock = now_unix_s;
        self.refresh_reservations(now);
        reply
    }

    /// In etcd mode: the capacity each link may give reservations, for an extension the
    /// cluster store decides.
    pub fn reservable_capacity(&self) -> Result<BTreeMap<LinkId, u64>, BandwidthError> {
        Ok(self
            .reservations
            .as_ref()
            .ok_or(BandwidthError::NoReservations)?
            .reservable()
            .clone())
    }

    /// In etcd mode: `req` validated as a candidate for the cluster store, with each link's
    /// reservable capacity (`ReservationManager::candidate`).
    pub fn reservation_candidate(
        &self,
        req: &ReservationRequest,
        now_unix_s: UnixSeconds,
    ) -> Result<(Reservation, BTreeMap<LinkId, u64>), BandwidthError> {
        self.reservations
            .as_ref()
            .ok_or(BandwidthError::NoReservations)?
            .candidate(req, now_unix_s)
    }

    fn on_stored_reservation(&mut self, reservation: Reservation, now: Now) {
        let Some(manager) = self.reservations.as_mut() else {
            return;
        };
        if let Err(e) = manager.mirror_put(reservation) {
            warn!(error = %e, "mirroring a stored reservation");
        }
        self.refresh_reservations(now);
    }

    fn on_stored_reservation_gone(
        &mut self,
        id: ReservationId,
        now_unix_s: UnixSeconds,
        preempted_by: Option<ReservationId>,
        now: Now,
    ) {
        let Some(manager) = self.reservations.as_mut() else {
            return;
        };
        if let Err(e) = manager.mirror_remove(id, now_unix_s, preempted_by) {
            warn!(error = %e, "mirroring a removed reservation");
        }
        self.refresh_reservations(now);
    }

    /// The wall clock reached a reservation's start or end.
    fn on_clock(&mut self, now_unix_s: UnixSeconds, now: Now) {
        self.reservation_clock = now_unix_s;
        let Some(manager) = self.reservations.as_mut() else {
            return;
        };
        if let Err(e) = manager.expire(now_unix_s) {
            // Ended reservations hold nothing either way; they stay listed until a later
            // clock input expires them.
            warn!(error = %e, "expiring reservations");
        }
        self.refresh_reservations(now);
    }

    /// After the reservations or their clock changed: their events out, their view and next
    /// change updated, and a computation when the active set changed.
    fn refresh_reservations(&mut self, now: Now) {
        let Some(manager) = self.reservations.as_mut() else {
            return;
        };
        let clock = self.reservation_clock;
        let events = manager.take_events();
        let active: Vec<Reservation> = manager.active_at(clock).cloned().collect();
        self.reservations_view = Some(Arc::new(ReservationsView::new(manager, clock)));
        self.next_reservations = NextReservationChange::after(manager, clock);
        for event in events {
            self.emit(AgentEvent::Reservation(event));
        }
        let ids = |rs: &[Reservation]| rs.iter().map(|r| r.id).collect::<Vec<_>>();
        if ids(&active) != ids(&self.active_reservations) {
            self.traffic
                .set_reservations(&self.config.region, active.iter());
            self.active_reservations = active;
            self.cause(
                now,
                Cause {
                    text: format!(
                        "reservations changed ({} active)",
                        self.active_reservations.len()
                    ),
                    links: Vec::new(),
                    regions: Vec::new(),
                    failure: false,
                },
            );
        }
        // The API answers an operation from the next snapshot: publish now, not at the next
        // computation.
        self.publish(now);
    }

    /// Sampled packets: demand per group and class (scaled by the sampling rate) and the top
    /// flows.
    fn on_flow_samples(&mut self, samples: Vec<crate::traffic::SampledPacket>) {
        let every = u64::from(self.config.flows.sample_every.max(1));
        for s in &samples {
            let d = self.demand_bytes.entry((s.group, s.class)).or_default();
            *d = d.saturating_add(u64::from(s.bytes).saturating_mul(every));
            self.top_flows.record(&s.sample());
        }
        self.flow_samples += samples.len() as u64;
    }

    /// Re-reads the configuration file the agent was started with (SIGHUP, `dwcp reload`).
    pub fn reload_config(&mut self, now: Now) -> Result<u64, CommandError> {
        match self.config.path.clone() {
            Some(path) => self.reload(&path, now),
            None => Err(CommandError::InvalidConfig(
                "the agent was started without a configuration file".into(),
            )),
        }
    }

    fn is_ours(&self, ifname: &str) -> bool {
        self.config.lan_interfaces.iter().any(|i| i == ifname)
            || self
                .config
                .local_links
                .iter()
                .any(|l| l.interface == ifname)
    }

    fn links_on(&self, ifname: &str) -> Vec<u32> {
        self.config
            .local_links
            .iter()
            .filter(|l| l.interface == ifname)
            .map(|l| l.link_id)
            .collect()
    }

    fn link_label(&self, link: u32) -> String {
        match self.store.snapshot().link(LinkId(link)) {
            Some(l) => format!("{link} ({})", l.name),
            None => link.to_string(),
        }
    }

    /// A measurement of a local link into the topology, if it moved by more than the
    /// threshold. Returns a description when it did.
    fn measure(
        &mut self,
        link: u32,
        rtt_ms: Option<f64>,
        jitter_ms: Option<f64>,
        loss: Option<f64>,
    ) -> Option<String> {
        if self.reported.contains_key(&link) {
            // The records carry this link's figures (`apply_reported_figures`).
            return None;
        }
        let topology = self.store.snapshot();
        let current = topology.link(LinkId(link))?;
        let t = self.config.measurement_threshold;
        let moved = |old: f64, new: f64, floor: f64| (new - old).abs() > (old.abs() * t).max(floor);
        let latency = rtt_ms.filter(|v| v.is_finite() && *v >= 0.0);
        let loss = loss
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| v.min(0.999));
        let latency_moved = latency.is_some_and(|v| moved(current.latency_ms, v, 0.01));
        let loss_moved = loss.is_some_and(|v| moved(current.loss, v, 0.001));
        if !latency_moved && !loss_moved {
            return None;
        }
        let update = TopologyUpdate::LinkMeasurement {
            link_id: LinkId(link),
            latency_ms: latency.unwrap_or(current.latency_ms),
            jitter_ms: jitter_ms
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(current.jitter_ms),
            loss: loss.unwrap_or(current.loss),
        };
        if let Err(e) = self.store.apply(&[update]) {
            warn!(link, error = %e, "measurement refused by the topology");
            return None;
        }
        let mut parts = Vec::new();
        if let Some(v) = latency.filter(|_| latency_moved) {
            parts.push(format!("RTT {:.2} ms (was {:.2})", v, current.latency_ms));
        }
        if let Some(v) = loss.filter(|_| loss_moved) {
            parts.push(format!(
                "loss {:.1} % (was {:.1} %)",
                v * 100.0,
                current.loss * 100.0
            ));
        }
        Some(format!(
            "link {} measured: {}",
            self.link_label(link),
            parts.join(", ")
        ))
    }

    /// Effective health of a link for routing, and why it is not up: the worse of what this
    /// gateway decides (the operator, our probes and interfaces) and what the link-state
    /// records report. Our own link's probes keep deciding the fast path's failover (in the
    /// kernel, at once); routing also follows the records, so that it uses the link only when
    /// every gateway does (a recovery is announced after the damping hold). `None`: nobody
    /// says anything of the link; its configured health stands.
    fn decided_health(&self, link: u32) -> Option<(RoutingHealth, Option<String>)> {
        let reported = self.reported.get(&link).map(|r| {
            let why =
                (r.health != RoutingHealth::Up).then(|| format!("reported by {}", r.reporters()));
            (r.health, why)
        });
        match (self.local_health(link), reported) {
            (Some(l), Some(r)) if r.0.severity() > l.0.severity() => Some(r),
            (local, reported) => local.or(reported),
        }
    }

    /// Health of a link as this gateway decides it (the operator's word on any link; probes,
    /// interface, address and handshake on ours), and why it is not up.
    fn local_health(&self, link: u32) -> Option<(RoutingHealth, Option<String>)> {
        if self.admin_down.contains(&link) {
            return Some((RoutingHealth::Down, Some("administratively down".into())));
        }
        let Some(l) = self.config.local_link(link) else {
            // A remote link: only the operator decides here.
            return None;
        };
        let s = self.local.get(&link)?;
        let Some(iface) = self.interfaces.get(&l.interface) else {
            return Some((
                RoutingHealth::Down,
                Some(format!("interface {} not found", l.interface)),
            ));
        };
        if !iface.up {
            return Some((
                RoutingHealth::Down,
                Some(format!("interface {} down", l.interface)),
            ));
        }
        // Without its address the link can neither be probed nor carry our tunnels. (An
        // unprobed WireGuard link's address is shown only: the device carries the traffic.)
        if (!l.is_wireguard() || l.monitored)
            && !self
                .addresses
                .contains(&(iface.ifindex, std::net::IpAddr::V4(l.local_ip)))
        {
            return Some((
                RoutingHealth::Down,
                Some(format!("address {} not on {}", l.local_ip, l.interface)),
            ));
        }
        if let Some(r) = self.handshake_stale.get(&link) {
            return Some((RoutingHealth::Down, Some(r.clone())));
        }
        match (&s.probe, &s.degraded) {
            (ProbeStatus::Down(r), _) => Some((RoutingHealth::Down, Some(r.clone()))),
            (_, Some(d)) => Some((RoutingHealth::Degraded, Some(d.clone()))),
            _ => Some((RoutingHealth::Up, None)),
        }
    }

    /// Health of every link we decide, written into the topology (startup, reload).
    fn refresh_health(&mut self) {
        let links: Vec<u32> = self
            .config
            .local_links
            .iter()
            .map(|l| l.link_id)
            .chain(self.admin_down.iter().copied())
            .chain(self.reported.keys().copied())
            .collect();
        let mut updates = Vec::new();
        for link in links {
            let health = self
                .decided_health(link)
                .map(|(h, _)| h)
                .unwrap_or_else(|| self.configured_health(link));
            self.applied_health.insert(link, health);
            updates.push(TopologyUpdate::LinkHealth {
                link_id: LinkId(link),
                health,
            });
        }
        if let Err(e) = self.store.apply(&updates) {
            error!(error = %e, "link health refused by the topology");
        }
    }

    fn configured_health(&self, link: u32) -> RoutingHealth {
        self.config
            .topology_model
            .link(LinkId(link))
            .map(|l| l.health)
            .unwrap_or(RoutingHealth::Up)
    }

    fn refresh_link(&mut self, link: u32, now: Now) {
        self.refresh_health_of(link, now, true);
    }

    /// Recomputes the health of `link`; if it changed, writes it into the topology, emits the
    /// event and (with `cause`) asks for a computation.
    fn refresh_health_of(&mut self, link: u32, now: Now, cause: bool) {
        let (health, why) = self
            .decided_health(link)
            .unwrap_or_else(|| (self.configured_health(link), None));
        let before = self
            .applied_health
            .get(&link)
            .copied()
            .unwrap_or_else(|| self.configured_health(link));
        if before == health {
            return;
        }
        self.applied_health.insert(link, health);
        if let Err(e) = self.store.apply(&[TopologyUpdate::LinkHealth {
            link_id: LinkId(link),
            health,
        }]) {
            error!(link, error = %e, "link health refused by the topology");
            return;
        }
        let label = self.link_label(link);
        let why_text = why.clone().unwrap_or_default();
        let text = match health {
            RoutingHealth::Down => {
                warn!(link, reason = %why_text, "link {label} down");
                self.emit(AgentEvent::LinkDown {
                    link,
                    reason: why_text.clone(),
                });
                format!("link {label} down: {why_text}")
            }
            RoutingHealth::Degraded => {
                warn!(link, reason = %why_text, "link {label} degraded");
                if before == RoutingHealth::Down {
                    self.emit(AgentEvent::LinkUp { link });
                }
                self.emit(AgentEvent::LinkDegraded {
                    link,
                    reason: why_text.clone(),
                });
                format!("link {label} degraded: {why_text}")
            }
            RoutingHealth::Up => {
                info!(link, "link {label} up");
                if before == RoutingHealth::Down {
                    self.emit(AgentEvent::LinkUp { link });
                    format!("link {label} up")
                } else {
                    self.emit(AgentEvent::LinkRecovered { link });
                    format!("link {label} recovered")
                }
            }
        };
        if cause {
            self.cause(
                now,
                Cause {
                    text,
                    links: vec![link],
                    regions: Vec::new(),
                    failure: health == RoutingHealth::Down,
                },
            );
        } else {
            // Already part of another cause (an interface event): keep the text for the
            // history without a second request.
            self.causes.push(Cause {
                text,
                links: vec![link],
                regions: Vec::new(),
                failure: health == RoutingHealth::Down,
            });
        }
    }

    /// Re-reads the file at `path`; in etcd mode with the store's topology in force, that
    /// topology stays in place of the file's.
    fn reload(&mut self, path: &std::path::Path, now: Now) -> Result<u64, CommandError> {
        let loaded = match &self.config.published_topology {
            Some(p) => AgentConfig::load_with_topology(path, p),
            None => AgentConfig::load(path),
        };
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                error!("configuration reload refused; the configuration in force stays: {msg}");
                self.emit(AgentEvent::ConfigRejected { error: msg.clone() });
                return Err(CommandError::InvalidConfig(msg));
            }
        };
        self.adopt_config(path, new, now)
    }

    /// The cluster store's topology in place of the one in force (the file's, or an earlier
    /// generation), with the configuration file as it is now; refused as a whole, like a
    /// reload, if the file's links do not fit it.
    fn on_published_topology(
        &mut self,
        topology: crate::store::PublishedTopology,
        now: Now,
    ) -> Result<u64, CommandError> {
        if self.config.published_topology.as_ref() == Some(&topology) {
            return Ok(self.config_generation);
        }
        let generation = topology.generation;
        let Some(path) = self.config.path.clone() else {
            let msg = format!(
                "topology generation {generation} of the cluster store not applied: this \
                 configuration was not read from a file"
            );
            self.emit(AgentEvent::ConfigRejected { error: msg.clone() });
            return Err(CommandError::InvalidConfig(msg));
        };
        let new = match AgentConfig::load_with_topology(&path, &topology) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "topology generation {generation} of the cluster store refused; the \
                     topology in force stays: {e}"
                );
                error!("{msg}");
                self.emit(AgentEvent::ConfigRejected { error: msg.clone() });
                return Err(CommandError::InvalidConfig(msg));
            }
        };
        info!(generation, "topology of the cluster store applied");
        self.adopt_config(&path, new, now)
    }

    /// `new` in force, unless it changes what needs a restart.
    fn adopt_config(
        &mut self,
        path: &std::path::Path,
        new: AgentConfig,
        now: Now,
    ) -> Result<u64, CommandError> {
        let restart = self.config.restart_only_changes(&new);
        if !restart.is_empty() {
            let msg = format!(
                "{}: changing {} needs a restart of the agent",
                path.display(),
                restart.join(", ")
            );
            error!("configuration reload refused; the configuration in force stays: {msg}");
            self.emit(AgentEvent::ConfigRejected { error: msg.clone() });
            return Err(CommandError::InvalidConfig(msg));
        }
        if *self.config == new {
            info!(path = %path.display(), "configuration reloaded: no change");
            return Ok(self.config_generation);
        }
        let traffic = match TrafficEngineer::new(new.traffic.clone()) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                self.emit(AgentEvent::ConfigRejected { error: msg.clone() });
                return Err(CommandError::InvalidConfig(msg));
            }
        };
        let topology_changed = new.topology != self.config.topology;
        let mut traffic = traffic;
        traffic.set_reservations(&new.region, self.active_reservations.iter());
        self.traffic = traffic;
        self.debounce.set_config(new.delays);
        if new.flows != self.config.flows {
            self.top_flows = TopFlows::new(new.flows.table_size, u64::from(new.flows.sample_every));
            self.start_flows_window(now);
        }
        self.config = Arc::new(new);
        self.config_generation += 1;
        if topology_changed {
            self.store.replace(self.config.topology_model.clone());
            // Link ids may mean other links now; the link-state task sends the new view.
            self.reported.clear();
            self.table = None;
            self.readmit_reservations(now);
        }
        self.admin_down
            .retain(|l| self.config.topology_model.link(LinkId(*l)).is_some());
        self.init_local_links(now);
        self.applied_health.clear();
        self.refresh_health();
        info!(generation = self.config_generation, path = %path.display(), "configuration reloaded");
        self.emit(AgentEvent::ConfigReloaded {
            generation: self.config_generation,
        });
        self.cause(
            now,
            Cause {
                text: format!(
                    "configuration reloaded (generation {})",
                    self.config_generation
                ),
                links: Vec::new(),
                regions: Vec::new(),
                failure: false,
            },
        );
        Ok(self.config_generation)
    }

    // -----------------------------------------------------------------------------------------
    // Timers.

    /// The next time [`AgentState::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        [self.debounce.next_deadline(), Some(self.next_counters_ns)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether a computation is waiting for its delay.
    pub fn pending(&self) -> bool {
        self.debounce.pending()
    }

    /// Runs what is due at `now`: the computation (if the debounce says so) and the counters.
    pub fn on_timer(&mut self, now: Now) {
        let mut publish = false;
        if self.debounce.take_due(now.mono_ns) {
            self.recompute(now);
            publish = true;
        }
        if now.mono_ns >= self.next_counters_ns {
            self.refresh_counters(now);
            self.next_counters_ns = now_ns_plus(now, self.config.counters_interval);
            publish = true;
        }
        if publish {
            self.publish(now);
        }
    }

    /// Computes and programs now, whatever the debounce says (tests, benchmarks).
    pub fn recompute_now(&mut self, now: Now) {
        self.recompute(now);
        self.publish(now);
    }

    // -----------------------------------------------------------------------------------------
    // Computation.

    /// One computation: routes, the maps they need, the difference written to the fast path,
    /// the route changes recorded, the timings kept.
    fn recompute(&mut self, now: Now) {
        let t0 = Instant::now();
        self.computations += 1;
        let causes = std::mem::take(&mut self.causes);
        let first = !self.started;
        self.started = true;
        self.resync_if_needed();
        let plans = self.plan_routes();
        let plans_ns = t0.elapsed().as_nanos() as u64;
        let mut desired = self.base_desired(&plans);
        let t_groups = Instant::now();
        let built = self.add_routes(&mut desired, &plans);
        let groups_ns = t_groups.elapsed().as_nanos() as u64;
        let compute_ns = t0.elapsed().as_nanos() as u64;
        let t1 = Instant::now();
        let changes = self.program(&desired, built, first, now);
        let program_ns = t1.elapsed().as_nanos() as u64;
        let routes_changed = self.record_route_changes(plans, &causes, first, now);
        self.last_update = Some(UpdateStats {
            at_ns: now.mono_ns,
            compute_ns,
            routing_ns: self.last_routing_ns,
            plans_ns,
            groups_ns,
            program_ns,
            changes,
            routes_changed,
        });
    }

    /// After a failed write, what the maps hold is read back before diffing against it.
    fn resync_if_needed(&mut self) {
        if !self.resync {
            return;
        }
        match self.fast_path.read_programmed() {
            Ok(p) => {
                self.programmed = p;
                self.group_members.clear();
                self.resync = false;
            }
            Err(e) => error!(error = %e, "cannot read the fast path back"),
        }
    }

    /// What the maps must hold for `plans`, but the routes and their next-hop tables.
    fn base_desired(&self, plans: &[DestinationPlan]) -> ForwardingState {
        let mut desired = plan::base_state(
            &self.config,
            &self.store.snapshot(),
            &self.interfaces,
            &self.neighbours,
            self.links_down(),
            &self.admin_down,
        );
        desired.policers =
            plan::reservation_policers(&self.config, plans, &self.active_reservations);
        if self.config.traffic.mode == SplitMode::Te {
            plan::te_policers(
                &self.config,
                plans,
                self.traffic.plan(),
                &mut desired.policers,
            );
        }
        if let Some(want) = desired.config.as_mut() {
            // Flags this plan does not own stay as they are; policing follows the policers.
            if let Some(have) = self.programmed.config {
                want.flags |= have.flags & !(CONFIG_F_READY | CONFIG_F_POLICING);
            }
            if !desired.policers.is_empty() {
                want.flags |= CONFIG_F_POLICING;
            }
        }
        desired
    }

    /// The routes and next-hop tables of `plans` into `desired`; returns the members each
    /// table was built from.
    fn add_routes(
        &self,
        desired: &mut ForwardingState,
        plans: &[DestinationPlan],
    ) -> plan::GroupMembers {
        let (problems, built) = plan::add_routes(
            desired,
            &self.config,
            plans,
            &self.programmed.groups,
            &self.group_members,
        );
        for (dest, problem) in problems {
            error!(destination = %dest, "cannot build the next-hop group: {problem}");
        }
        built
    }

    /// Writes the difference between what is programmed and `desired`; returns the number of
    /// changes.
    fn program(
        &mut self,
        desired: &ForwardingState,
        built: plan::GroupMembers,
        first: bool,
        now: Now,
    ) -> usize {
        let changes = forwarding::diff(&self.programmed, desired);
        let written = self.write_changes(&changes, now);
        self.programmed_at = Some(Instant::now());
        self.retired_table = None;
        if !self.resync {
            self.group_members = built;
        }
        if !changes.is_empty() {
            self.log_changes(&changes, written, first);
        }
        changes.len()
    }

    /// Writes `changes` in order; returns how many were written. A failed write asks for a
    /// read-back and another computation.
    fn write_changes(&mut self, changes: &[Change], now: Now) -> usize {
        let mut written = 0;
        let mut i = 0;
        while i < changes.len() {
            // A run of group swaps is written in one call: every new table into its group's
            // free slot, then every flip (see `FastPath::swap_groups`).
            let run = changes[i..]
                .iter()
                .take_while(|c| matches!(c, Change::SetGroup(..) | Change::RemoveGroup(_)))
                .count();
            let run = run.max(1);
            let batch = &changes[i..i + run];
            let result = if run > 1 {
                self.fast_path.swap_groups(batch)
            } else {
                self.fast_path.apply(&batch[0])
            };
            match result {
                Ok(()) => {
                    for c in batch {
                        forwarding::apply(&mut self.programmed, c);
                    }
                    written += batch.len();
                }
                Err(e) => {
                    for c in batch {
                        error!(change = %c.describe(), error = %e, "fast path write failed");
                    }
                    // What the maps hold is uncertain now: read them back next time.
                    self.resync = true;
                    self.debounce.event(now.mono_ns);
                }
            }
            i += run;
        }
        written
    }

    fn log_changes(&self, changes: &[Change], written: usize, first: bool) {
        let described = changes
            .iter()
            .take(8)
            .map(Change::describe)
            .collect::<Vec<_>>()
            .join("; ");
        // What a starting agent changes in an adopted fast path is worth seeing.
        if first && self.adopted.routes > 0 {
            info!(
                changes = changes.len(),
                written, "reconciliation: {described}"
            );
        } else {
            debug!(
                changes = changes.len(),
                written, "fast path updated: {described}"
            );
        }
    }

    /// Records a route change (history, event) for every destination whose paths, weights or
    /// error changed, then keeps `plans` as the routes in force. Returns how many changed.
    fn record_route_changes(
        &mut self,
        plans: Vec<DestinationPlan>,
        causes: &[Cause],
        first: bool,
        now: Now,
    ) -> usize {
        let mut routes_changed = 0;
        let new_plans: BTreeMap<String, DestinationPlan> = plans
            .into_iter()
            .map(|p| (p.destination.clone(), p))
            .collect();
        let destinations: BTreeSet<String> =
            self.plans.keys().chain(new_plans.keys()).cloned().collect();
        for dest in destinations {
            let view = |p: Option<&DestinationPlan>| match p {
                Some(p) if p.error.is_none() => (p.link_lists(), p.weights()),
                _ => (Vec::new(), Vec::new()),
            };
            let (before, before_weights) = view(self.plans.get(&dest));
            let (after, after_weights) = view(new_plans.get(&dest));
            let error = new_plans.get(&dest).and_then(|p| p.error.clone());
            let error_changed =
                self.plans.get(&dest).map(|p| &p.error) != new_plans.get(&dest).map(|p| &p.error);
            if before == after && before_weights == after_weights && !error_changed {
                continue;
            }
            routes_changed += 1;
            let (reason, failover) = self.change_reason(causes, &dest, &before, &after, first);
            let reason = match error {
                Some(e) => format!("{reason}; {e}"),
                None => reason,
            };
            if failover && !before.is_empty() {
                self.failovers_total += 1;
            }
            self.record_route_change(RouteChange {
                at_unix_ms: now.unix_ms,
                destination: dest,
                reason,
                before,
                after,
                before_weights,
                after_weights,
            });
        }
        self.plans = new_plans;
        routes_changed
    }

    /// Why a destination's paths changed, and whether it was a failover.
    fn change_reason(
        &self,
        causes: &[Cause],
        dest: &str,
        before: &[Vec<u32>],
        after: &[Vec<u32>],
        first: bool,
    ) -> (String, bool) {
        if !first {
            return explain(causes, dest, before, after, &self.store.snapshot());
        }
        let text = if self.adopted.routes > 0 {
            format!(
                "agent started: adopted {} programmed routes",
                self.adopted.routes
            )
        } else {
            "agent started".to_string()
        };
        (text, false)
    }

    /// Into the bounded history and out as an event.
    fn record_route_change(&mut self, change: RouteChange) {
        let (dest, reason) = (&change.destination, &change.reason);
        info!(destination = %dest, before = ?change.before, after = ?change.after, "route changed: {reason}");
        self.last_reason.insert(dest.clone(), reason.clone());
        self.route_changes_total += 1;
        self.history.push_back(Arc::new(change.clone()));
        while self.history.len() > self.config.history_len {
            self.history.pop_front();
        }
        self.emit(AgentEvent::RouteChanged(change));
    }

    /// Routes to every region with prefixes, as group plans.
    fn plan_routes(&mut self) -> Vec<DestinationPlan> {
        let topology = self.store.snapshot();
        let Some(src) = topology.region_by_name(&self.config.region).map(|r| r.id) else {
            error!(region = %self.config.region, "own region missing from the topology");
            return Vec::new();
        };
        let Some(routes) = self.route_sets(&topology, src) else {
            return self.plans.values().cloned().collect();
        };
        let mut split = self.engineer_traffic(&topology, &routes);
        let local: BTreeSet<u32> = self
            .config
            .local_links
            .iter()
            .filter(|l| self.interfaces.contains_key(&l.interface))
            .map(|l| l.link_id)
            .collect();
        routes
            .into_iter()
            .map(|(dest, region, result)| {
                let group_id = plan::group_id(region);
                let (paths, members, error) = match result {
                    Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
                    Ok(_) => {
                        let (active, standby) = split.remove(&dest).unwrap_or_default();
                        self.planned_paths(&topology, &dest, active, standby, &local)
                    }
                };
                DestinationPlan {
                    destination: dest,
                    region,
                    group_id,
                    paths,
                    members,
                    error,
                }
            })
            .collect()
    }

    /// The routes to every other region with prefixes, from the routing table (recomputed or
    /// updated). `None` when the computation failed: the plans in force stay.
    fn route_sets(
        &mut self,
        topology: &Topology,
        src: RegionId,
    ) -> Option<Vec<(String, RegionId, RouteResult)>> {
        let strategy = self.config.strategy;
        let mut constraints = self.config.constraints.clone();
        for r in self.regions_down.keys() {
            if *r != self.config.region && topology.region_by_name(r).is_some() {
                constraints.avoid_regions.insert(r.clone());
            }
        }
        let t_routing = Instant::now();
        let table = match &self.table {
            Some(prev) if prev.constraints == constraints && prev.strategies == [strategy] => {
                self.engine.update_table(prev)
            }
            _ => self.engine.table_with(src, &[strategy], &constraints),
        };
        self.last_routing_ns = t_routing.elapsed().as_nanos() as u64;
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                error!(error = %e, "route computation failed; the fast path stays as it is");
                return None;
            }
        };
        let mut sets = Vec::new();
        for dest in self.config.prefixes.keys() {
            if *dest == self.config.region {
                continue;
            }
            let Some(region) = topology.region_by_name(dest) else {
                continue;
            };
            let result = if self.regions_down.contains_key(dest) {
                // A destination that is down is still routed to (nothing better to do), but
                // not through the other regions that are down.
                let mut c = constraints.clone();
                c.avoid_regions.remove(dest);
                self.engine.route(src, region.id, &strategy, &c)
            } else {
                match table.region(region.id).and_then(|r| r.routes.first()) {
                    Some(result) => result.clone(),
                    None => continue,
                }
            };
            sets.push((dest.clone(), region.id, result));
        }
        self.retired_table = self.table.replace(table);
        Some(sets)
    }

    /// Splits each route into active and standby paths and gives the active ones to the
    /// traffic engineer, which weighs them.
    fn engineer_traffic(
        &mut self,
        topology: &Topology,
        routes: &[(String, RegionId, RouteResult)],
    ) -> BTreeMap<String, (Vec<Path>, Vec<Path>)> {
        let links: BTreeMap<LinkId, LinkStatus> = topology
            .links()
            .iter()
            .map(|l| {
                let status = LinkStatus {
                    capacity_bps: (l.capacity_mbps * 1e6) as u64,
                    live: l.usable(),
                };
                (l.id, status)
            })
            .collect();
        let mut split = BTreeMap::new();
        for (dest, _, result) in routes {
            if let Ok(rs) = result {
                split.insert(dest.clone(), plan::split_paths(rs, self.config.ecmp));
            }
        }
        let te_paths = split
            .iter()
            .map(|(d, (active, _))| {
                let paths = active.iter().map(|p: &Path| p.links.clone()).collect();
                (d.clone(), paths)
            })
            .collect();
        if let Err(e) = self.traffic.set_topology(links, te_paths) {
            error!(error = %e, "traffic engineer refused the paths; splitting equally");
        }
        split
    }

    /// The paths of a destination with their roles and weights (the traffic engineer's, else
    /// equal), and the group members they make.
    fn planned_paths(
        &self,
        topology: &Topology,
        dest: &str,
        active: Vec<Path>,
        standby: Vec<Path>,
        local: &BTreeSet<u32>,
    ) -> (Vec<PlannedPath>, Vec<Member>, Option<String>) {
        let weights: Vec<u32> = match self.traffic.weights(dest) {
            Some(w) if w.len() == active.len() => w.iter().map(|&w| w as u32).collect(),
            _ => vec![1; active.len()],
        };
        let weighted: Vec<(Path, u32)> = active.into_iter().zip(weights).collect();
        let path_of = |p: &Path| match plan::member_path(topology, p) {
            Ok(m) => Some(m),
            Err(e) => {
                debug!(destination = dest, error = %e, "a path left out of the group");
                None
            }
        };
        let members = plan::members(&weighted, &standby, local, self.standby_supported, &path_of);
        let mut paths: Vec<PlannedPath> = weighted
            .into_iter()
            .enumerate()
            .map(|(i, (path, weight))| PlannedPath {
                path,
                role: if i == 0 {
                    PathRole::Primary
                } else {
                    PathRole::Ecmp
                },
                weight,
            })
            .collect();
        paths.extend(standby.into_iter().map(|p| PlannedPath {
            path: p,
            role: PathRole::Secondary,
            weight: 0,
        }));
        let error = members
            .is_empty()
            .then(|| "no path leaves on a link this gateway terminates".to_string());
        (paths, members, error)
    }

    // -----------------------------------------------------------------------------------------
    // Snapshot.

    /// Starts a new top-flows window when the current one is over.
    fn roll_flows_window(&mut self, now: Now) {
        let window = self.config.flows.window_s.saturating_mul(1_000_000_000);
        if now.mono_ns.saturating_sub(self.flows_window_start_ns) >= window {
            self.start_flows_window(now);
        }
    }

    /// An empty top-flows table from `now` on.
    fn start_flows_window(&mut self, now: Now) {
        self.top_flows.clear();
        self.flow_samples = 0;
        self.flows_window_start_ns = now.mono_ns;
        self.flows_window_start_unix_ms = now.unix_ms;
    }

    fn flows_view(&self) -> FlowsView {
        let total = self.top_flows.total_bytes();
        FlowsView {
            sample_every: self.config.flows.sample_every,
            window_seconds: self.config.flows.window_s,
            window_started_unix_ms: self.flows_window_start_unix_ms,
            samples: self.flow_samples,
            bytes: total,
            flows: self
                .top_flows
                .top(TOP_FLOWS_SHOWN)
                .iter()
                .map(|f| TopFlowView::new(f, total))
                .collect(),
        }
    }

    /// Turns the sampled bytes since the last call into each flow group's offered rate
    /// (moving average) and, in TE mode, hands the traffic engineer the new demands when one
    /// moved by more than a tenth (and 100 kbit/s): a recomputation follows, which programs
    /// the new weights and the policers of the groups it cannot grant in full.
    fn estimate_demand(&mut self, now: Now) {
        let dt = now.mono_ns.saturating_sub(self.demand_at_ns) as f64 / 1e9;
        if dt <= 0.0 {
            return;
        }
        self.demand_at_ns = now.mono_ns;
        let dest_of: BTreeMap<u32, &str> = self
            .plans
            .values()
            .map(|p| (p.group_id, p.destination.as_str()))
            .collect();
        let mut fresh: BTreeMap<(String, QosClass), f64> = BTreeMap::new();
        for ((group, class), bytes) in std::mem::take(&mut self.demand_bytes) {
            if let (Some(d), Some(c)) = (dest_of.get(&group), QosClass::from_id(class)) {
                *fresh.entry((d.to_string(), c)).or_default() += bytes as f64 * 8.0 / dt;
            }
        }
        let keys: BTreeSet<(String, QosClass)> = fresh
            .keys()
            .chain(self.demand_bps.keys())
            .cloned()
            .collect();
        for k in keys {
            let new = fresh.get(&k).copied().unwrap_or(0.0);
            let smoothed = match self.demand_bps.get(&k) {
                Some(old) => DEMAND_SMOOTHING * new + (1.0 - DEMAND_SMOOTHING) * old,
                None => new,
            };
            if smoothed < MIN_DEMAND_BPS {
                self.demand_bps.remove(&k);
            } else {
                self.demand_bps.insert(k, smoothed);
            }
        }
        if self.config.traffic.mode != SplitMode::Te {
            return;
        }
        let wanted: BTreeMap<(String, QosClass), u64> = self
            .demand_bps
            .iter()
            .map(|(k, v)| (k.clone(), *v as u64))
            .collect();
        let moved = |a: u64, b: u64| {
            let diff = a.abs_diff(b);
            diff as f64 > 0.1 * a.max(b) as f64 && diff > 100_000
        };
        let changed = wanted.len() != self.demand_given.len()
            || wanted.iter().any(|(k, v)| match self.demand_given.get(k) {
                Some(g) => moved(*v, *g),
                None => true,
            });
        if !changed {
            return;
        }
        self.demand_given = wanted.clone();
        self.traffic.set_load(BTreeMap::new(), wanted);
        self.cause(
            now,
            Cause {
                text: "measured demand changed".into(),
                links: Vec::new(),
                regions: Vec::new(),
                failure: false,
            },
        );
    }

    fn refresh_counters(&mut self, now: Now) {
        self.roll_flows_window(now);
        self.estimate_demand(now);
        let dp = &self.fast_path;
        let mut c = CounterView::default();
        let mut snap = CounterSnapshot {
            at_ns: now.mono_ns,
            ..Default::default()
        };
        for l in &self.config.local_links {
            if let Ok(n) = dp.nexthop_counters(l.link_id) {
                c.nexthops.push((l.link_id, n.packets, n.bytes));
                snap.nexthops.insert(l.link_id, n);
            }
        }
        for class in QosClass::ALL {
            if let Ok(n) = dp.class_counters(class as u8) {
                c.classes
                    .push((class.name().to_string(), n.packets, n.bytes));
                snap.classes[class as usize] = n;
            }
        }
        for r in Reason::ALL {
            if let Ok(n) = dp.reason_count(r) {
                c.reasons.push((r.name().to_string(), n));
            }
        }
        self.counters = c;
        // A local link's next hop has the link's id; capacities from the topology.
        let topology = self.store.snapshot();
        let nexthop_links = self
            .config
            .local_links
            .iter()
            .map(|l| (l.link_id, LinkId(l.link_id)))
            .collect();
        let capacity = topology
            .links()
            .iter()
            .map(|l| (l.id, (l.capacity_mbps * 1e6) as u64))
            .collect();
        self.rates.set_links(nexthop_links, capacity);
        if let Err(e) = self.rates.observe(snap) {
            debug!(error = %e, "counter snapshot not used for rates");
        }
    }

    /// Rate reserved on `link` now (active reservations) and after the next change.
    fn reserved_now_and_next(&self, link: u32) -> (u64, u64) {
        let now: u64 = self
            .active_reservations
            .iter()
            .filter(|r| r.path.iter().any(|l| l.0 == link))
            .map(|r| r.rate_bps)
            .sum();
        let then = match &self.next_reservations {
            Some(n) => n.reserved_bps.get(&link).copied().unwrap_or(0),
            None => now,
        };
        (now, then)
    }

    fn class_views(&self) -> Vec<ClassView> {
        let local: BTreeSet<u32> = self.config.local_links.iter().map(|l| l.link_id).collect();
        QosClass::ALL
            .iter()
            .filter_map(|&class| {
                let (_, packets, bytes) = self
                    .counters
                    .classes
                    .iter()
                    .find(|(n, _, _)| n == class.name())?;
                let now = self.rates.class_rate(class);
                Some(ClassView {
                    class: class.name().to_string(),
                    packets: *packets,
                    bytes: *bytes,
                    throughput_bps: now.map(|r| r.bits_per_sec),
                    packets_per_sec: now.map(|r| r.packets_per_sec),
                    smoothed_throughput_bps: self
                        .rates
                        .class_rate_smoothed(class)
                        .map(|r| r.bits_per_sec),
                    reserved_bps: self
                        .active_reservations
                        .iter()
                        .filter(|r| r.class == class && r.path.iter().any(|l| local.contains(&l.0)))
                        .map(|r| r.rate_bps)
                        .sum(),
                    offered_bps: self
                        .demand_bps
                        .iter()
                        .filter(|((_, c), _)| *c == class)
                        .map(|(_, bps)| bps)
                        .sum(),
                })
            })
            .collect()
    }

    fn link_views(&self, topology: &Topology) -> Vec<LinkView> {
        let name = |r| {
            topology
                .region(r)
                .map(|r| r.name.clone())
                .unwrap_or_default()
        };
        topology
            .links()
            .iter()
            .map(|l| {
                let local = self.config.local_link(l.id.0);
                let view = self.link_views.get(&l.id.0);
                // What other gateways measured of a link this one does not terminate.
                let reported = self
                    .reported
                    .get(&l.id.0)
                    .filter(|_| local.is_none())
                    .map(|r| r.figures);
                // Else what the cluster store holds of it (etcd mode).
                let stored = self
                    .stored_figures
                    .get(&l.id.0)
                    .filter(|_| local.is_none() && !self.reported.contains_key(&l.id.0));
                let reported = reported.or(stored.map(|s| s.figures));
                let health = if self.admin_down.contains(&l.id.0) {
                    LinkHealth::AdminDown
                } else if local.is_some() || self.reported.contains_key(&l.id.0) {
                    match self.decided_health(l.id.0).map(|(h, _)| h) {
                        Some(RoutingHealth::Down) => LinkHealth::Down,
                        Some(RoutingHealth::Degraded) => LinkHealth::Degraded,
                        _ => LinkHealth::Up,
                    }
                } else {
                    LinkHealth::Unmeasured
                };
                let state = local.and_then(|_| self.fast_path.link_state(l.id.0).ok());
                LinkView {
                    id: l.id.0,
                    name: l.name.to_string(),
                    a: name(l.a),
                    b: name(l.b),
                    interface: local.map(|x| x.interface.clone()),
                    health,
                    rtt_seconds: state
                        .filter(|s| s.srtt_ns > 0)
                        .map(|s| s.srtt_ns as f64 / 1e9)
                        .or(reported.and_then(|f| f.rtt_ms()).map(|ms| ms / 1e3)),
                    jitter_seconds: state
                        .filter(|s| s.replies > 1)
                        .map(|s| s.jitter_ns as f64 / 1e9)
                        .or(reported.and_then(|f| f.jitter_ms()).map(|ms| ms / 1e3)),
                    loss_ratio: view
                        .and_then(|v| v.loss)
                        .or(reported.and_then(|f| f.loss_fraction())),
                    capacity_bps: (l.capacity_mbps * 1e6) as u64,
                    // Measured on the links this gateway terminates (sent through the fast
                    // path, last counters interval); the topology's figure elsewhere.
                    utilisation_ratio: local
                        .and_then(|_| self.rates.utilisation(l.id))
                        .or(stored.and_then(|s| s.figures.utilisation_fraction()))
                        .or(Some(l.utilisation)),
                    projected_utilisation_ratio: local.and_then(|_| {
                        let (now_bps, then_bps) = self.reserved_now_and_next(l.id.0);
                        self.rates.projected_utilisation(l.id, now_bps, then_bps)
                    }),
                    projected_at_unix_s: local
                        .and(self.next_reservations.as_ref())
                        .map(|n| n.at_unix_s),
                    throughput_bps: local
                        .and_then(|_| self.rates.link_rate(l.id))
                        .map(|r| r.bits_per_sec),
                    probes_sent: view.map(|v| v.sent).unwrap_or(0),
                    probes_received: state.map(|s| s.replies).unwrap_or(0),
                    figures_from_store: stored.map(|s| StoreFiguresSource {
                        gateway: s.gateway.clone(),
                        measured_unix_ms: s.measured_unix_ms,
                    }),
                }
            })
            .collect()
    }

    /// The tunnels this daemon runs: the fast path's VXLAN encapsulation of each local link
    /// (one VNI per link, between this gateway's and the peer's underlay addresses). Their
    /// state follows what the daemon knows: the interface, the programmed next hop, the
    /// underlay neighbour and the link's probed health. The transmitted bytes are the link's
    /// next-hop counter; the fast path does not count received bytes per link (0).
    /// (The daemon does not run `tunnels::TunnelManager`: no WireGuard devices here.)
    fn tunnel_views(&self, links: &[LinkView], now: Now) -> Vec<TunnelView> {
        self.config
            .local_links
            .iter()
            .map(|l| {
                let iface = self.interfaces.get(&l.interface);
                let nexthop = self.programmed.nexthops.get(&l.link_id);
                let health = links.iter().find(|v| v.id == l.link_id).map(|v| v.health);
                let mut problems = Vec::new();
                let mut down = false;
                let mut degraded = false;
                match iface {
                    None => {
                        down = true;
                        problems.push(format!("interface {} missing", l.interface));
                    }
                    Some(i) if !i.up => {
                        down = true;
                        problems.push(format!("interface {} down", l.interface));
                    }
                    Some(_) if l.is_wireguard() => {}
                    Some(i) => {
                        if !self
                            .neighbours
                            .contains_key(&(i.ifindex, l.via_ip.octets()))
                        {
                            degraded = true;
                            problems.push(format!("neighbour {} unresolved", l.via_ip));
                        }
                    }
                }
                if nexthop.is_none() {
                    down = true;
                    problems.push("not programmed in the fast path".into());
                }
                if let Some(r) = self.handshake_stale.get(&l.link_id) {
                    down = true;
                    problems.push(r.clone());
                }
                if let Some(p) = self.handoff_problems.get(&l.link_id) {
                    down = true;
                    problems.extend(p.iter().cloned());
                }
                match health {
                    Some(LinkHealth::Down) => {
                        down = true;
                        problems.push(if l.monitored {
                            "link down (probes unanswered)".into()
                        } else {
                            "link down".into()
                        });
                    }
                    Some(LinkHealth::AdminDown) => {
                        down = true;
                        problems.push("link administratively down".into());
                    }
                    Some(LinkHealth::Degraded) => {
                        degraded = true;
                        problems.push("link degraded".into());
                    }
                    _ => {}
                }
                // A WireGuard link's figures are its device's (the peer's handshake and
                // bytes); a VXLAN link's are the fast path's bytes sent to its next hop.
                let reading = self
                    .wireguard_readings
                    .get(&l.link_id)
                    .filter(|_| l.is_wireguard());
                let (last_handshake_unix_s, rx_bytes, tx_bytes) = match reading {
                    Some(r) => (r.last_handshake_unix_s, Some(r.rx_bytes), Some(r.tx_bytes)),
                    None if l.is_wireguard() => (None, None, None),
                    None => (
                        None,
                        None,
                        self.counters
                            .nexthops
                            .iter()
                            .find(|(id, _, _)| *id == l.link_id)
                            .map(|(_, _, bytes)| *bytes),
                    ),
                };
                let now_s = now.unix_ms as f64 / 1e3;
                // Liveness as the link's own probes see it (monitored links only), not the
                // decided health: that stays down for a flapping link's hold, and follows
                // what other gateways report.
                let probe_alive = l
                    .monitored
                    .then(|| self.link_views.get(&l.link_id))
                    .flatten()
                    .and_then(|v| match v.status {
                        crate::liveness::LinkStatus::Up => Some(true),
                        crate::liveness::LinkStatus::Down => Some(false),
                        crate::liveness::LinkStatus::Unknown => None,
                    });
                let (kind, vni) = match &l.handoff {
                    Some(_) => ("wireguard", None),
                    None => ("vxlan", Some(l.vni)),
                };
                let shown = |a: std::net::Ipv4Addr| (!a.is_unspecified()).then(|| a.to_string());
                TunnelView {
                    name: format!("{kind}-{}", l.name),
                    kind: kind.into(),
                    link: Some(l.link_id),
                    interface: Some(l.interface.clone()),
                    state: if down {
                        TunnelState::Down
                    } else if degraded {
                        TunnelState::Degraded
                    } else {
                        TunnelState::Up
                    },
                    mtu: nexthop
                        .map(|n| n.mtu)
                        .filter(|m| *m != 0)
                        .or(l.mtu)
                        .or(iface.and_then(|i| i.mtu)),
                    last_handshake_unix_s,
                    handshake_age_seconds: last_handshake_unix_s.map(|t| (now_s - t).max(0.0)),
                    rx_bytes,
                    tx_bytes,
                    probe_alive,
                    problems,
                    local_ip: shown(l.local_ip),
                    remote_ip: shown(l.peer_ip),
                    vni,
                }
            })
            .collect()
    }

    fn route_views(&self, topology: &Topology) -> Vec<RouteView> {
        self.plans
            .values()
            .map(|p| {
                let prefixes = self
                    .config
                    .prefixes
                    .get(&p.destination)
                    .map(|x| x.prefixes.iter().map(|p| p.to_string()).collect())
                    .unwrap_or_default();
                let paths: Vec<PathView> = p
                    .paths
                    .iter()
                    .map(|pp| {
                        let first = pp.path.first_link().map(|l| l.0).unwrap_or(0);
                        PathView {
                            regions: plan::region_names(topology, &pp.path),
                            links: pp.path.links.iter().map(|l| l.0).collect(),
                            latency_seconds: pp.path.latency_ms / 1e3,
                            role: pp.role,
                            weight: pp.weight,
                            next_hop: first,
                            live: pp
                                .path
                                .links
                                .iter()
                                .all(|l| topology.link(*l).is_some_and(|l| l.usable())),
                        }
                    })
                    .collect();
                let why = match (&p.error, p.paths.first()) {
                    (Some(e), _) => e.clone(),
                    (None, Some(primary)) => format!(
                        "{} {:.1} ms via {}",
                        self.config.strategy.name(),
                        primary.path.latency_ms,
                        plan::region_names(topology, &primary.path).join(" -> ")
                    ),
                    (None, None) => "no path".into(),
                };
                let reason = match self.last_reason.get(&p.destination) {
                    Some(r) => format!("{why}; {r}"),
                    None => why,
                };
                RouteView {
                    destination: p.destination.clone(),
                    prefixes,
                    strategy: self.config.strategy.name().to_string(),
                    group_id: p.group_id,
                    paths,
                    reason,
                }
            })
            .collect()
    }

    fn publish(&mut self, now: Now) {
        let topology = self.store.snapshot();
        let links = self.link_views(&topology);
        let snapshot = AgentSnapshot {
            tunnels: self.tunnel_views(&links, now),
            gateway: self.config.gateway.clone(),
            region: self.config.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix_ms: self.started_unix_ms,
            config_generation: self.config_generation,
            topology_generation: topology.generation(),
            published_topology_generation: self
                .config
                .published_topology
                .as_ref()
                .map(|p| p.generation),
            regions: topology.regions().iter().map(|r| r.name.clone()).collect(),
            links,
            routes: self.route_views(&topology),
            history: self.history.iter().cloned().collect(),
            counters: self.counters.clone(),
            classes: self.class_views(),
            flows: self.flows_view(),
            failovers_total: self.failovers_total,
            route_changes_total: self.route_changes_total,
            reservations: self.reservations_view.clone(),
            lsdb: self.lsdb.clone(),
        };
        self.snapshot = Arc::new(snapshot);
        self.snapshot_taken = false;
    }
}

/// Why a destination's paths changed: the causes that concern it (a link on its old or new
/// paths, the destination or a region on its paths), else every cause. Also whether a failure
/// moved it.
fn explain(
    causes: &[Cause],
    dest: &str,
    before: &[Vec<u32>],
    after: &[Vec<u32>],
    topology: &Topology,
) -> (String, bool) {
    let links: BTreeSet<u32> = before.iter().chain(after).flatten().copied().collect();
    let regions: BTreeSet<String> = links
        .iter()
        .filter_map(|l| topology.link(LinkId(*l)))
        .flat_map(|l| [l.a, l.b])
        .filter_map(|r| topology.region(r).map(|r| r.name.clone()))
        .chain(std::iter::once(dest.to_string()))
        .collect();
    let relevant: Vec<&Cause> = causes
        .iter()
        .filter(|c| {
            c.links.iter().any(|l| links.contains(l))
                || c.regions.iter().any(|r| regions.contains(r))
        })
        .collect();
    let chosen: Vec<&Cause> = if relevant.is_empty() {
        causes.iter().collect()
    } else {
        relevant
    };
    let failover = chosen.iter().any(|c| c.failure);
    let mut texts: Vec<&str> = Vec::new();
    for c in &chosen {
        if !texts.contains(&c.text.as_str()) {
            texts.push(&c.text);
        }
    }
    const SHOWN: usize = 4;
    let mut reason = texts
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join("; ");
    if texts.len() > SHOWN {
        reason.push_str(&format!(" (and {} more events)", texts.len() - SHOWN));
    }
    if reason.is_empty() {
        reason = "recomputed".into();
    }
    (reason, failover)
}
