//! Link-state flooding at scale, simulated: one gateway per region of a synthetic topology,
//! each running the real state machines of `dwcp_control::link_state` (origination with
//! damping, flooding, the database), the state owner's back-off ([`Debounce`], RFC 8405) and
//! the routing engine's table update, on a simulated clock. Datagrams are encoded, carried
//! for the link's one-way delay (half the great-circle RTT prior) plus a processing delay,
//! and decoded on arrival. Route computations take the wall time they really take.
//!
//! [`Simulation::fail`] cuts one link of the quiet network and measures how long until every
//! gateway has both ends' new records installed and its routes recomputed from them, beside a
//! bound: the detection time, plus, over every gateway and both ends of the cut, the one-way
//! delays along the shortest-delay path over the surviving links and an allowance per hop.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dwcp_control::config::{DelayConfig, UpdaterSection};
use dwcp_control::debounce::Debounce;
use dwcp_control::link_state::{
    topology_digest, Action, Body, Figures, Flooder, LinkStateConfig, LinkStateError, Message,
    Observation, Origin, RecordError, TopologyDigest, WireError,
};
use dwcp_control::liveness::MonitorConfig;
use dwcp_control::routing::{
    compute_table, update_table, Constraints, RoutingError, RoutingGraph, RoutingTable, Strategy,
};
use dwcp_control::topology::geo::latency_prior_ms;
use dwcp_control::topology::synthetic::{generate, SyntheticSpec};
use dwcp_control::topology::{
    LinkId, RegionId, RoutingHealth, Topology, TopologyError, TopologyUpdate,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("topology: {0}")]
    Topology(#[from] TopologyError),
    #[error("gateway name: {0}")]
    Origin(#[from] RecordError),
    #[error("link state: {0}")]
    LinkState(#[from] LinkStateError),
    #[error("routing: {0}")]
    Routing(#[from] RoutingError),
    #[error("a datagram did not decode: {0}")]
    Wire(#[from] WireError),
    #[error("link {0} is not in the topology")]
    UnknownLink(LinkId),
    #[error("the network was not quiet {0:?} (simulated) after the {1}")]
    NotQuiet(Duration, &'static str),
    #[error("{0} never learnt of the cut of link {1}")]
    NotConverged(String, LinkId),
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub spec: SyntheticSpec,
    /// From the cut until each end's liveness declares the link down.
    pub detection: Duration,
    /// From a datagram's arrival until its handling, at every hop.
    pub processing: Duration,
    /// Allowance per hop in the bound (processing, scheduling, route computation).
    pub hop_allowance: Duration,
    pub link_state: LinkStateConfig,
    pub delays: DelayConfig,
}

impl SimConfig {
    /// The agent's defaults: detection after 3 unanswered probes 10 ms apart, read by the
    /// monitor's next 10 ms poll of the kernel's link state (40 ms at worst); the updater's
    /// RFC 8405 delays; the link-state defaults. 1 ms of processing and 10 ms of allowance
    /// per hop.
    pub fn agent_defaults(spec: SyntheticSpec) -> SimConfig {
        let monitor = MonitorConfig::default();
        let u = UpdaterSection::default();
        SimConfig {
            spec,
            detection: Duration::from_nanos(monitor.detect_ns()) + monitor.poll_interval,
            processing: Duration::from_millis(1),
            hop_allowance: Duration::from_millis(10),
            link_state: LinkStateConfig::default(),
            delays: DelayConfig {
                initial: Duration::from_millis(u.initial_delay_ms),
                short: Duration::from_millis(u.short_delay_ms),
                long: Duration::from_millis(u.long_delay_ms),
                time_to_learn: Duration::from_millis(u.time_to_learn_ms),
                holddown: Duration::from_millis(u.holddown_ms),
            },
        }
    }
}

/// One single-link failure, measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FailureOutcome {
    pub link: u32,
    /// Cut → the last gateway has both ends' records and routes computed from them.
    pub converge_ms: f64,
    pub bound_ms: f64,
    /// Hops of the flooding path that sets the bound.
    pub bound_hops: usize,
    /// Datagrams sent: updates and acknowledgements.
    pub updates: usize,
    pub acks: usize,
    /// Records carried by the updates.
    pub adverts: usize,
    /// Route computations run, and the longest (wall time).
    pub computations: usize,
    pub compute_max_ms: f64,
}

impl FailureOutcome {
    pub fn messages(&self) -> usize {
        self.updates + self.acks
    }
}

/// The quiet network, ready for failures.
pub struct Simulation {
    world: World,
    quiet: Mesh,
    /// When failures are cut: the warm-up is over and every back-off is quiet again.
    cut_at_ns: u64,
}

/// What does not change while the simulation runs.
struct World {
    config: SimConfig,
    topology: Topology,
    /// By link id.
    links: BTreeMap<LinkId, Span>,
    names: Vec<Origin>,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    a: usize,
    b: usize,
    delay_ns: u64,
}

/// The simulated gateways, their clock and the datagrams and wake-ups pending.
#[derive(Clone)]
struct Mesh {
    now: u64,
    gateways: Vec<Gateway>,
    events: BTreeMap<(u64, u64), Event>,
    next_event: u64,
    wakes: BTreeSet<(usize, u64)>,
    cut: Option<LinkId>,
    counts: Counts,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    updates: usize,
    acks: usize,
    adverts: usize,
    computations: usize,
    compute_max_ns: u64,
}

#[derive(Clone)]
enum Event {
    Deliver {
        to: usize,
        link: LinkId,
        bytes: Vec<u8>,
    },
    Wake(usize),
    Spf(usize),
    Detect {
        gateway: usize,
        link: LinkId,
    },
}

/// One region's gateway: its flooder, and the state owner's part that routing needs.
#[derive(Clone)]
struct Gateway {
    flooder: Flooder,
    debounce: Debounce,
    /// Routing's view from the database, and how many times it changed.
    view: Vec<TopologyUpdate>,
    view_version: u64,
    /// The view version the routes were computed on.
    routed_version: u64,
    graph: Arc<RoutingGraph>,
    table: RoutingTable,
}

/// The gateway an event concerned, and when it was done with it.
struct Handled {
    gateway: usize,
    done_ns: u64,
}

impl Simulation {
    /// Builds the topology, starts every gateway with its links up and floods until the
    /// network is quiet.
    pub fn new(config: SimConfig) -> Result<Simulation, SimError> {
        let topology_config = generate(&config.spec);
        let topology = Topology::from_config(&topology_config, None)?;
        let links = topology
            .links()
            .iter()
            .map(|l| {
                let (ra, rb) = (
                    &topology.regions()[l.a.0 as usize],
                    &topology.regions()[l.b.0 as usize],
                );
                let rtt_ms = latency_prior_ms(ra.latitude, ra.longitude, rb.latitude, rb.longitude);
                let span = Span {
                    a: l.a.0 as usize,
                    b: l.b.0 as usize,
                    delay_ns: (rtt_ms / 2.0 * 1e6).round() as u64,
                };
                (l.id, span)
            })
            .collect();
        let names = topology
            .regions()
            .iter()
            .map(|r| Origin::new(&format!("gw-{}", r.name)))
            .collect::<Result<_, _>>()?;
        let world = World {
            config,
            topology,
            links,
            names,
        };
        let digest = topology_digest(&topology_config);
        let mut net = Mesh::new(&world, digest)?;
        net.start(&world)?;
        let quiet_by = net.now + 10_000 * MS;
        net.run_until_quiet(&world, quiet_by, "warm-up")?;
        // Past the back-off's hold-down, so the cut is a first event again.
        let cut_at_ns = net.now + world.config.delays.holddown.as_nanos() as u64 + 1_000 * MS;
        net.run_until(&world, cut_at_ns)?;
        Ok(Simulation {
            world,
            quiet: net,
            cut_at_ns,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.world.topology
    }

    /// Cuts `link` (silently: messages on it are lost from then on), lets both ends detect
    /// it, and runs until the network is quiet again.
    pub fn fail(&self, link: LinkId) -> Result<FailureOutcome, SimError> {
        let span = *self
            .world
            .links
            .get(&link)
            .ok_or(SimError::UnknownLink(link))?;
        let mut net = self.quiet.clone();
        net.counts = Counts::default();
        net.cut = Some(link);
        let t0 = self.cut_at_ns;
        let detected = t0 + self.world.config.detection.as_nanos() as u64;
        for gateway in [span.a, span.b] {
            net.push(detected, Event::Detect { gateway, link });
        }
        let ends = [&self.world.names[span.a], &self.world.names[span.b]];
        let mut done_at: Vec<Option<u64>> = vec![None; net.gateways.len()];
        let limit = t0 + 10_000 * MS;
        while !net.quiet() {
            if net.now > limit {
                return Err(SimError::NotQuiet(Duration::from_secs(10), "cut"));
            }
            let Some(h) = net.step(&self.world)? else {
                break;
            };
            let g = &net.gateways[h.gateway];
            let done = g.routed_version == g.view_version && g.knows_cut(link, ends);
            done_at[h.gateway] = if done {
                done_at[h.gateway].or(Some(h.done_ns))
            } else {
                None
            };
        }
        let mut converged = t0;
        for (g, at) in done_at.iter().enumerate() {
            let at =
                at.ok_or_else(|| SimError::NotConverged(self.world.names[g].to_string(), link))?;
            converged = converged.max(at);
        }
        let (bound_ns, bound_hops) = self.bound(link, span);
        Ok(FailureOutcome {
            link: link.0,
            converge_ms: (converged - t0) as f64 / 1e6,
            bound_ms: bound_ns as f64 / 1e6,
            bound_hops,
            updates: net.counts.updates,
            acks: net.counts.acks,
            adverts: net.counts.adverts,
            computations: net.counts.computations,
            compute_max_ms: net.counts.compute_max_ns as f64 / 1e6,
        })
    }

    /// Detection + the largest (delay + allowance × hops) over every gateway's shortest-delay
    /// path from either end of the cut, over the surviving links; with that path's hops.
    fn bound(&self, cut: LinkId, span: Span) -> (u64, usize) {
        let allowance = self.world.config.hop_allowance.as_nanos() as u64;
        let worst = [span.a, span.b]
            .into_iter()
            .flat_map(|end| self.shortest_delays(end, cut))
            .flatten()
            .map(|(delay, hops)| (delay + allowance * hops as u64, hops))
            .max()
            .unwrap_or((0, 0));
        (
            self.world.config.detection.as_nanos() as u64 + worst.0,
            worst.1,
        )
    }

    /// Dijkstra from `from` on one-way delays (ties: fewer hops), without link `cut`.
    fn shortest_delays(&self, from: usize, cut: LinkId) -> Vec<Option<(u64, usize)>> {
        let n = self.world.names.len();
        let mut adjacent = vec![Vec::new(); n];
        for (&id, s) in &self.world.links {
            if id != cut {
                adjacent[s.a].push((s.b, s.delay_ns));
                adjacent[s.b].push((s.a, s.delay_ns));
            }
        }
        let mut best: Vec<Option<(u64, usize)>> = vec![None; n];
        let mut queue = BinaryHeap::from([Reverse((0u64, 0usize, from))]);
        while let Some(Reverse((delay, hops, g))) = queue.pop() {
            if best[g].is_some() {
                continue;
            }
            best[g] = Some((delay, hops));
            for &(next, d) in &adjacent[g] {
                if best[next].is_none() {
                    queue.push(Reverse((delay + d, hops + 1, next)));
                }
            }
        }
        best
    }
}

const MS: u64 = 1_000_000;

impl Mesh {
    fn new(w: &World, digest: TopologyDigest) -> Result<Mesh, SimError> {
        let graph = Arc::new(RoutingGraph::new(&w.topology));
        let gateways = (0..w.names.len())
            .map(|g| {
                let own: Vec<LinkId> = w
                    .links
                    .iter()
                    .filter(|(_, s)| s.a == g || s.b == g)
                    .map(|(&id, _)| id)
                    .collect();
                let table = compute_table(
                    &graph,
                    &w.topology,
                    RegionId(g as u32),
                    &[Strategy::MinLatency],
                    &Constraints::default(),
                )?;
                Ok(Gateway {
                    flooder: Flooder::new(
                        w.config.link_state,
                        w.names[g].clone(),
                        digest,
                        g as u64,
                        &own,
                    )?,
                    debounce: Debounce::new(w.config.delays),
                    view: Vec::new(),
                    view_version: 0,
                    routed_version: 0,
                    graph: graph.clone(),
                    table,
                })
            })
            .collect::<Result<_, SimError>>()?;
        Ok(Mesh {
            now: 0,
            gateways,
            events: BTreeMap::new(),
            next_event: 0,
            wakes: BTreeSet::new(),
            cut: None,
            counts: Counts::default(),
        })
    }

    /// Every gateway sees its links up with the topology's figures, and its neighbours.
    fn start(&mut self, w: &World) -> Result<(), SimError> {
        for (&id, s) in &w.links {
            let l = w.topology.link(id).ok_or(SimError::UnknownLink(id))?;
            let observation = Observation {
                health: RoutingHealth::Up,
                figures: Figures::quantise(
                    Some(l.latency_ms),
                    Some(l.jitter_ms),
                    Some(l.loss),
                    Some(l.utilisation),
                ),
            };
            for g in [s.a, s.b] {
                let actions = self.gateways[g].flooder.observe(id, observation, self.now);
                self.apply(w, g, actions);
            }
        }
        for (&id, s) in &w.links {
            for g in [s.a, s.b] {
                let actions = self.gateways[g].flooder.neighbour_up(id, self.now);
                self.apply(w, g, actions);
            }
        }
        Ok(())
    }

    fn push(&mut self, at: u64, event: Event) {
        self.next_event += 1;
        self.events.insert((at, self.next_event), event);
    }

    /// No datagram in flight, nothing unacknowledged, no detection, origination or
    /// computation pending: only timers of later (refreshes, expiries, stale retransmits).
    fn quiet(&self) -> bool {
        self.events
            .iter()
            .all(|(&(at, _), e)| matches!(e, Event::Wake(_)) && at > self.now)
            && self
                .gateways
                .iter()
                .all(|g| g.flooder.unacknowledged() == 0 && !g.debounce.pending())
    }

    fn run_until_quiet(
        &mut self,
        w: &World,
        limit: u64,
        phase: &'static str,
    ) -> Result<(), SimError> {
        while !self.quiet() {
            if self.now > limit || self.step(w)?.is_none() {
                return Err(SimError::NotQuiet(Duration::from_nanos(limit), phase));
            }
        }
        Ok(())
    }

    fn run_until(&mut self, w: &World, t: u64) -> Result<(), SimError> {
        while self
            .events
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= t)
        {
            self.step(w)?;
        }
        self.now = self.now.max(t);
        Ok(())
    }

    /// Handles the next event; `None` when there is none.
    fn step(&mut self, w: &World) -> Result<Option<Handled>, SimError> {
        let Some(((at, _), event)) = self.events.pop_first() else {
            return Ok(None);
        };
        self.now = self.now.max(at);
        let now = self.now;
        let handled = match event {
            Event::Deliver { to, link, bytes } => {
                // Lost on a cut link; what was in flight when it was cut too.
                if self.cut != Some(link) {
                    let message = Message::decode(&bytes)?;
                    let actions = self.gateways[to].flooder.handle(link, message, now);
                    self.apply(w, to, actions);
                }
                Handled {
                    gateway: to,
                    done_ns: now,
                }
            }
            Event::Wake(g) => {
                self.wakes.remove(&(g, at));
                let actions = self.gateways[g].flooder.tick(now);
                self.apply(w, g, actions);
                Handled {
                    gateway: g,
                    done_ns: now,
                }
            }
            Event::Detect { gateway, link } => {
                let down = Observation {
                    health: RoutingHealth::Down,
                    figures: Figures::default(),
                };
                let flooder = &mut self.gateways[gateway].flooder;
                flooder.neighbour_down(link);
                let actions = flooder.observe(link, down, now);
                self.apply(w, gateway, actions);
                Handled {
                    gateway,
                    done_ns: now,
                }
            }
            Event::Spf(g) => {
                let compute_ns = if self.gateways[g].debounce.take_due(now) {
                    self.gateways[g].recompute(&w.topology)?
                } else {
                    0
                };
                if compute_ns > 0 {
                    self.counts.computations += 1;
                    self.counts.compute_max_ns = self.counts.compute_max_ns.max(compute_ns);
                }
                Handled {
                    gateway: g,
                    done_ns: now + compute_ns,
                }
            }
        };
        Ok(Some(handled))
    }

    fn apply(&mut self, w: &World, g: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { link, message } => self.send(w, g, link, &message),
                Action::Wake { at_ns } => {
                    if self.wakes.insert((g, at_ns)) {
                        self.push(at_ns, Event::Wake(g));
                    }
                }
                Action::DatabaseChanged => {
                    let gw = &mut self.gateways[g];
                    let view = gw.flooder.database().topology_updates(&w.topology);
                    if view != gw.view {
                        gw.view = view;
                        gw.view_version += 1;
                        gw.debounce.event(self.now);
                        if let Some(at) = gw.debounce.next_deadline() {
                            self.push(at, Event::Spf(g));
                        }
                    }
                }
            }
        }
    }

    fn send(&mut self, w: &World, from: usize, link: LinkId, message: &Message) {
        match message.body() {
            Body::Update(adverts) => {
                self.counts.updates += 1;
                self.counts.adverts += adverts.len();
            }
            Body::Ack(_) => self.counts.acks += 1,
        }
        let Some(span) = w.links.get(&link) else {
            return;
        };
        if self.cut == Some(link) {
            return;
        }
        let to = if span.a == from { span.b } else { span.a };
        let at = self.now + span.delay_ns + w.config.processing.as_nanos() as u64;
        let bytes = message.encode();
        self.push(at, Event::Deliver { to, link, bytes });
    }
}

impl Gateway {
    /// Routes on the topology with the database's view applied (the routing engine's
    /// incremental table update); returns the wall time it took, at least 1 ns.
    fn recompute(&mut self, base: &Topology) -> Result<u64, SimError> {
        let started = Instant::now();
        let topology = base.apply(&self.view)?;
        let graph = Arc::new(RoutingGraph::refresh(&self.graph, &topology));
        self.table = update_table(&graph, &topology, &self.table)?;
        self.graph = graph;
        self.routed_version = self.view_version;
        Ok((started.elapsed().as_nanos() as u64).max(1))
    }

    /// Both ends' records in our database say the cut link is down.
    fn knows_cut(&self, link: LinkId, ends: [&Origin; 2]) -> bool {
        ends.iter().all(|end| {
            self.flooder
                .database()
                .get(end)
                .and_then(|r| r.link(link))
                .is_some_and(|r| r.health == RoutingHealth::Down)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Simulation {
        Simulation::new(SimConfig::agent_defaults(SyntheticSpec::new(8, 0))).unwrap()
    }

    #[test]
    fn every_single_failure_converges_within_its_bound() {
        let sim = small();
        for l in sim.topology().links() {
            let o = sim.fail(l.id).unwrap();
            assert!(o.converge_ms <= o.bound_ms, "{o:?}");
            assert!(o.converge_ms >= 40.0, "not before detection: {o:?}");
            assert!(o.computations >= 8, "every gateway recomputed: {o:?}");
        }
    }

    #[test]
    fn a_failure_costs_an_update_and_an_ack_per_link_and_direction_at_most() {
        let sim = small();
        let links = sim.topology().links().len();
        for l in sim.topology().links() {
            let o = sim.fail(l.id).unwrap();
            // Two records, each over every surviving link at most once each way.
            assert!(o.updates <= 2 * 2 * (links - 1), "{o:?}");
            assert!(o.acks <= o.updates, "{o:?}");
        }
    }
}
