//! The agent daemon's interface to the outside: what the state owner publishes (a snapshot,
//! events) and what it accepts (commands). The API server, the metrics exporter and the CLI
//! depend only on this module; the daemon's event loop implements it.
//!
//! Pattern (as in holo-routing): one task owns the state; I/O and timers are tasks that send
//! it messages; after each change it publishes a new immutable [`AgentSnapshot`] on a
//! `tokio::sync::watch` channel and [`AgentEvent`]s on a `tokio::sync::broadcast` channel.

pub mod config;
pub mod daemon;
pub mod debounce;
pub mod forwarding;
pub mod handoff;
pub mod input;
pub mod netlink;
pub mod plan;
pub mod replay;
pub mod state;

pub use config::{AgentConfig, ConfigError, Prefix, Problem};
pub use input::{Input, NextReservationChange, Now, TimedInput};
pub use state::{AgentError, AgentState, UpdateStats};

use std::{net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Health of an underlay link as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkHealth {
    Up,
    Degraded,
    Down,
    /// Administratively down (`dwcp link down`).
    AdminDown,
    /// Not measured by this gateway (a remote link: configured figures).
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
    pub rx_bytes: u64,
    pub tx_bytes: u64,
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
}

/// What happened, for the event stream (API) and subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    LinkDown { link: u32, reason: String },
    LinkUp { link: u32 },
    LinkDegraded { link: u32, reason: String },
    LinkRecovered { link: u32 },
    RouteChanged(RouteChange),
    ConfigReloaded { generation: u64 },
    ConfigRejected { error: String },
}

/// Requests to the state owner. Each carries a reply channel.
#[derive(Debug)]
pub enum AgentCommand {
    /// Administratively take a link down or up.
    SetLinkAdmin {
        link: u32,
        up: bool,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// Re-read the configuration file (what SIGHUP does).
    Reload {
        reply: oneshot::Sender<Result<u64, CommandError>>,
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

/// The handles the operator side gets.
#[derive(Clone)]
pub struct AgentHandle {
    pub snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    pub events: broadcast::Sender<AgentEvent>,
    pub commands: mpsc::Sender<AgentCommand>,
}

/// A prefix as the API and the CLI print it.
pub fn prefix_string(addr: IpAddr, len: u8) -> String {
    format!("{addr}/{len}")
}
