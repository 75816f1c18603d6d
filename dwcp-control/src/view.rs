//! What the state owner publishes and the operator side reads: the snapshot, its views, the
//! events, and the bodies of the API's requests and responses. (De)serialisable both ways, so
//! the CLI reads what the server writes with the same types.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::bandwidth::{
    Reservation, ReservationEvent, ReservationEventCounts, ReservationManager, UnixSeconds,
};
use crate::input::Now;
use crate::link_state::{Flooder, LinkReport};

/// Health of an underlay link as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkHealth {
    Up,
    Degraded,
    Down,
    /// Administratively down (`dwcp link down`).
    AdminDown,
    /// Not measured by this gateway and reported by no link-state record (configured figures,
    /// or those another gateway published to the cluster store: `figures_from_store`).
    Unmeasured,
}

/// One inter-region link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub id: u32,
    pub name: String,
    pub a: String,
    pub b: String,
    /// Local underlay interface, if this gateway terminates the link.
    pub interface: Option<String>,
    pub health: LinkHealth,
    pub rtt_seconds: Option<f64>,
    pub jitter_seconds: Option<f64>,
    pub loss_ratio: Option<f64>,
    pub capacity_bps: u64,
    pub utilisation_ratio: Option<f64>,
    /// Utilisation after the reservations' next start or end (at `projected_at_unix_s`, or
    /// with today's reservations if none is due): today's unreserved traffic plus what will
    /// be reserved then, reservations counted in full. Links this gateway terminates only.
    #[serde(default)]
    pub projected_utilisation_ratio: Option<f64>,
    #[serde(default)]
    pub projected_at_unix_s: Option<u64>,
    pub throughput_bps: Option<f64>,
    pub probes_sent: u64,
    pub probes_received: u64,
    /// etcd mode, a link this gateway neither terminates nor has a link-state record of: its
    /// RTT, jitter, loss and utilisation are those the named gateway published to the
    /// cluster store. Its health stays `unmeasured`: the store never decides health or routes.
    #[serde(default)]
    pub figures_from_store: Option<StoreFiguresSource>,
}

/// Who published a link's figures to the cluster store, and when it measured them (its
/// wall clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFiguresSource {
    pub gateway: String,
    pub measured_unix_ms: u64,
}

/// One path of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathView {
    pub regions: Vec<String>,
    pub links: Vec<u32>,
    pub latency_seconds: f64,
    pub role: PathRole,
    /// Integer weight in the fast path's group (0 = standby, used only on failover).
    pub weight: u32,
    pub next_hop: u32,
    pub live: bool,
}

/// A path's part in its route: the primary, another equal-cost path sharing the traffic, or a
/// standby taken on failover. Planned (`plan::PlannedPath`) and shown (`PathView`) alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRole {
    Primary,
    Ecmp,
    Secondary,
}

/// The route to one destination region as programmed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub destination: String,
    pub prefixes: Vec<String>,
    pub strategy: String,
    pub group_id: u32,
    pub paths: Vec<PathView>,
    /// Why the route is what it is (e.g. "min latency 80 ms via eu-west-1; link 3 down").
    pub reason: String,
}

/// One entry of the bounded route history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteChange {
    pub at_unix_ms: u64,
    pub destination: String,
    pub reason: String,
    /// Paths (link ids) before and after: primary, ECMP, then secondaries.
    pub before: Vec<Vec<u32>>,
    pub after: Vec<Vec<u32>>,
    /// Weight of each path in `before` / `after` in the next-hop group (0 = standby).
    #[serde(default)]
    pub before_weights: Vec<u32>,
    #[serde(default)]
    pub after_weights: Vec<u32>,
}

/// Health of a tunnel device as its manager last checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    Up,
    Degraded,
    Down,
}

/// One tunnel device (VXLAN, WireGuard, ...) carrying an inter-region link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunnelView {
    pub name: String,
    /// `vxlan`, `wireguard`, ...
    pub kind: String,
    /// The inter-region link it carries, if any.
    pub link: Option<u32>,
    pub interface: Option<String>,
    pub state: TunnelState,
    pub mtu: Option<u32>,
    /// WireGuard only: when the peer last completed a handshake.
    pub last_handshake_unix_s: Option<f64>,
    pub handshake_age_seconds: Option<f64>,
    /// Bytes received (WireGuard: from the peer, as the device counts them); `None` = not
    /// measured (no device, backend not answering, or a VXLAN link).
    #[serde(default)]
    pub rx_bytes: Option<u64>,
    /// Bytes sent (WireGuard: the device's; VXLAN: the fast path's to the next hop).
    #[serde(default)]
    pub tx_bytes: Option<u64>,
    /// Whether the link's own probes find it alive (through the tunnel for WireGuard), whatever
    /// the decided health; `None` = not probed, or not decided yet since the start.
    #[serde(default)]
    pub probe_alive: Option<bool>,
    /// How the device differs from its spec (empty when healthy).
    pub problems: Vec<String>,
    /// Underlay address of this end.
    #[serde(default)]
    pub local_ip: Option<String>,
    /// Underlay address of the far end (the peer gateway).
    #[serde(default)]
    pub remote_ip: Option<String>,
    /// VXLAN network identifier (VXLAN tunnels).
    #[serde(default)]
    pub vni: Option<u32>,
}

/// Fast-path counters (summed over CPUs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterView {
    /// (next hop id, packets, bytes)
    pub nexthops: Vec<(u32, u64, u64)>,
    /// (class name, packets, bytes)
    pub classes: Vec<(String, u64, u64)>,
    /// (reason name, count)
    pub reasons: Vec<(String, u64)>,
}

/// One QoS class as the fast path forwards it (`CLASS_STATS`, all CPUs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassView {
    pub class: String,
    pub packets: u64,
    pub bytes: u64,
    /// Rate over the last counters interval (inner packets); none before two reads.
    pub throughput_bps: Option<f64>,
    pub packets_per_sec: Option<f64>,
    /// Moving average of the rate.
    pub smoothed_throughput_bps: Option<f64>,
    /// Rate the active reservations of this class hold on this gateway's links.
    pub reserved_bps: u64,
    /// Rate offered in this class, estimated from sampled packets (before any policer), over
    /// all destinations: the traffic engineer's demand in TE mode.
    #[serde(default)]
    pub offered_bps: f64,
}

/// Everything the operator view shows. Immutable; a new one replaces it after each change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub gateway: String,
    pub region: String,
    pub version: String,
    pub started_unix_ms: u64,
    pub config_generation: u64,
    pub topology_generation: u64,
    /// etcd mode: the generation of the cluster store's topology in force (`None` while the
    /// configuration file's topology is).
    #[serde(default)]
    pub published_topology_generation: Option<u64>,
    pub regions: Vec<String>,
    pub links: Vec<LinkView>,
    pub routes: Vec<RouteView>,
    /// Absent in snapshots of an agent without a tunnel manager.
    #[serde(default)]
    pub tunnels: Vec<TunnelView>,
    pub history: Vec<Arc<RouteChange>>,
    pub counters: CounterView,
    /// Per QoS class: what the fast path forwarded, and at what rate.
    #[serde(default)]
    pub classes: Vec<ClassView>,
    /// The heaviest flows of the current window, from sampled packets.
    #[serde(default)]
    pub flows: crate::traffic::FlowsView,
    pub failovers_total: u64,
    pub route_changes_total: u64,
    /// Absent when the agent keeps no reservations.
    #[serde(default)]
    pub reservations: Option<Arc<ReservationsView>>,
    /// The link-state database; absent when link state is off.
    #[serde(default)]
    pub lsdb: Option<Arc<LsdbView>>,
}

/// `GET /v1/lsdb`: the link-state database (`crate::link_state`) as this gateway holds it, and
/// what its flooding has done since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LsdbView {
    /// This gateway: the origin of its own record.
    pub origin: String,
    /// Digest of the topology this gateway runs with (hex).
    pub digest: String,
    /// By origin.
    pub records: Vec<LsdbRecord>,
    /// Local links that are up, over which records are exchanged.
    pub neighbours: Vec<u32>,
    pub records_received: u64,
    pub records_flooded: u64,
    pub records_aged_out: u64,
    /// Datagrams dropped: from another address than the link's peer, malformed, or on a
    /// link with a shared key without a valid MAC.
    pub datagrams_foreign: u64,
    pub datagrams_malformed: u64,
    #[serde(default)]
    pub datagrams_unauthenticated: u64,
}

/// The datagrams the socket side of the link-state task dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramsDropped {
    pub foreign: u64,
    pub malformed: u64,
    pub unauthenticated: u64,
}

/// One record of the link-state database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LsdbRecord {
    pub origin: String,
    pub seq: u64,
    /// Digest of the topology its origin runs with (hex); a record of another topology than
    /// ours is shown, not applied.
    pub digest: String,
    /// When its origin made it, by this gateway's clock: now less the lifetime it has used.
    pub originated_unix_ms: u64,
    pub links: Vec<LinkReport>,
}

impl LsdbView {
    /// `flooder`'s database and counts at `now`, with the datagrams the socket side dropped.
    pub fn new(flooder: &Flooder, dropped: DatagramsDropped, now: Now) -> LsdbView {
        let db = flooder.database();
        let counts = flooder.counts();
        LsdbView {
            origin: db.me().to_string(),
            digest: db.digest().to_string(),
            records: db
                .records()
                .map(|r| LsdbRecord {
                    origin: r.origin().to_string(),
                    seq: r.seq(),
                    digest: r.digest().to_string(),
                    originated_unix_ms: now.unix_ms.saturating_sub(
                        flooder.record_age_ns(r.origin(), now.mono_ns).unwrap_or(0) / 1_000_000,
                    ),
                    links: r.links().to_vec(),
                })
                .collect(),
            neighbours: flooder.neighbours().map(|l| l.0).collect(),
            records_received: counts.received,
            records_flooded: counts.flooded,
            records_aged_out: counts.aged_out,
            datagrams_foreign: dropped.foreign,
            datagrams_malformed: dropped.malformed,
            datagrams_unauthenticated: dropped.unauthenticated,
        }
    }

    /// Gateways whose records say they run another topology than ours.
    pub fn other_topologies(&self) -> impl Iterator<Item = &LsdbRecord> {
        self.records.iter().filter(|r| r.digest != self.digest)
    }
}

/// The bandwidth reservations at one instant (the state owner's reservation clock).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReservationsView {
    /// Every stored reservation, current and future, by id.
    pub stored: Vec<Reservation>,
    /// How many of them hold bandwidth.
    pub active: usize,
    /// Rate reserved on each link of the network, bit/s (0 included).
    pub reserved_bps: BTreeMap<u32, u64>,
    /// Changes since the agent started.
    pub events: ReservationEventCounts,
}

impl ReservationsView {
    pub fn new(m: &ReservationManager, now: UnixSeconds) -> Self {
        ReservationsView {
            stored: m.list().cloned().collect(),
            active: m.active_at(now).count(),
            reserved_bps: m
                .reserved_by_link(now)
                .into_iter()
                .map(|(l, bps)| (l.0, bps))
                .collect(),
            events: m.event_counts(),
        }
    }
}

/// What happened, for the event stream (API; reservation changes are its `reservation`
/// events) and subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    LinkDown {
        link: u32,
        reason: String,
    },
    LinkUp {
        link: u32,
    },
    LinkDegraded {
        link: u32,
        reason: String,
    },
    LinkRecovered {
        link: u32,
    },
    RouteChanged(RouteChange),
    ConfigReloaded {
        generation: u64,
    },
    ConfigRejected {
        error: String,
    },
    Reservation(ReservationEvent),
    /// The reservation store could not be read (`reason`): it was renamed to `moved_to` and
    /// the agent started with no reservations.
    ReservationsSetAside {
        file: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    #[error("unknown link {0}")]
    UnknownLink(u32),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// A prefix as the API and the CLI print it.
pub fn prefix_string(addr: IpAddr, len: u8) -> String {
    format!("{addr}/{len}")
}

/// `GET /v1/status`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub gateway: String,
    pub region: String,
    pub version: String,
    pub started_unix_ms: u64,
    pub uptime_seconds: f64,
    pub config_generation: u64,
    pub topology_generation: u64,
    /// etcd mode: the cluster store's topology generation in force.
    #[serde(default)]
    pub published_topology_generation: Option<u64>,
    pub links_total: usize,
    /// Links up (or degraded but usable): this gateway's by its probes, the others' by their
    /// link-state records.
    pub links_up: usize,
    pub links_down: usize,
    /// Other regions, and how many of them have a live path.
    pub regions_remote: usize,
    pub regions_reachable: usize,
    pub routes: usize,
    pub tunnels: usize,
    pub failovers_total: u64,
    pub route_changes_total: u64,
    /// Absent when the agent keeps no reservations.
    pub reservations_active: Option<usize>,
    pub reservations_stored: Option<usize>,
    /// Gateways whose link-state records carry another topology digest than ours: they run
    /// another topology file.
    #[serde(default)]
    pub topology_differs: Vec<String>,
}

impl StatusView {
    pub fn new(s: &AgentSnapshot, now_unix_ms: u64) -> Self {
        let reachable = s
            .routes
            .iter()
            .filter(|r| r.destination != s.region && r.paths.iter().any(|p| p.live))
            .count();
        StatusView {
            gateway: s.gateway.clone(),
            region: s.region.clone(),
            version: s.version.clone(),
            started_unix_ms: s.started_unix_ms,
            uptime_seconds: now_unix_ms.saturating_sub(s.started_unix_ms) as f64 / 1e3,
            config_generation: s.config_generation,
            topology_generation: s.topology_generation,
            published_topology_generation: s.published_topology_generation,
            links_total: s.links.len(),
            links_up: s
                .links
                .iter()
                .filter(|l| matches!(l.health, LinkHealth::Up | LinkHealth::Degraded))
                .count(),
            links_down: s
                .links
                .iter()
                .filter(|l| matches!(l.health, LinkHealth::Down | LinkHealth::AdminDown))
                .count(),
            regions_remote: s.regions.iter().filter(|r| **r != s.region).count(),
            regions_reachable: reachable,
            routes: s.routes.len(),
            tunnels: s.tunnels.len(),
            failovers_total: s.failovers_total,
            route_changes_total: s.route_changes_total,
            reservations_active: s.reservations.as_ref().map(|r| r.active),
            reservations_stored: s.reservations.as_ref().map(|r| r.stored.len()),
            topology_differs: s
                .lsdb
                .iter()
                .flat_map(|l| l.other_topologies())
                .map(|r| r.origin.clone())
                .collect(),
        }
    }
}

/// One link of `GET /v1/topology`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopologyLink {
    pub id: u32,
    pub name: String,
    pub a: String,
    pub b: String,
    pub capacity_bps: u64,
    pub health: LinkHealth,
    /// Whether this gateway terminates the link.
    pub local: bool,
}

/// `GET /v1/topology`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopologyView {
    pub gateway: String,
    pub region: String,
    pub generation: u64,
    pub regions: Vec<String>,
    pub links: Vec<TopologyLink>,
}

impl TopologyView {
    pub fn new(s: &AgentSnapshot) -> Self {
        TopologyView {
            gateway: s.gateway.clone(),
            region: s.region.clone(),
            generation: s.topology_generation,
            regions: s.regions.clone(),
            links: s
                .links
                .iter()
                .map(|l| TopologyLink {
                    id: l.id,
                    name: l.name.clone(),
                    a: l.a.clone(),
                    b: l.b.clone(),
                    capacity_bps: l.capacity_bps,
                    health: l.health,
                    local: l.interface.is_some(),
                })
                .collect(),
        }
    }
}

/// Administrative state of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Up,
    Down,
}

/// `PUT /v1/links/{link}/admin` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    pub state: AdminState,
}

/// `PUT /v1/links/{link}/admin` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResponse {
    pub link: u32,
    pub name: String,
    pub state: AdminState,
}

/// `POST /v1/reload` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResponse {
    pub generation: u64,
}

/// `PUT /v1/topology` (push) and `POST /v1/topology/diff` request: a topology file's text (a
/// whole agent.toml or only its `[[region]]`, `[[link]]`, `[[edge]]` tables).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    pub source: String,
}

/// `PUT /v1/topology` and `POST /v1/topology/diff` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyChanges {
    /// The cluster store's generation compared with (`None`: nothing published yet).
    pub from_generation: Option<u64>,
    /// The generation published (push only; equal to `from_generation` when the text was
    /// already the one in force).
    pub generation: Option<u64>,
    /// One line per entry added (`+`), removed (`-`) or changed (`~`).
    pub changes: Vec<String>,
}

/// `GET /v1/history` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only changes of the route to this region.
    pub destination: Option<String>,
    /// Only the newest `limit` changes.
    pub limit: Option<usize>,
}

/// `GET /v1/events` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only changes of this owner's reservations.
    pub owner: Option<String>,
}

/// The body of every error response of the API: `{"error": "...", "status": N}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub status: u16,
}
