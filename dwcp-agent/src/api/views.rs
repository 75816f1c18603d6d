//! Bodies of the API's requests and responses that are not the agent's own types. They are
//! (de)serialisable both ways, so the CLI reads what the server writes with the same types.

use serde::{Deserialize, Serialize};

use crate::agent::{AgentSnapshot, LinkHealth};

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
    pub links_total: usize,
    /// Links this gateway measures and finds up (or degraded but usable).
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
}

impl StatusView {
    pub fn new(s: &AgentSnapshot, now_unix_ms: u64, reservations: Option<(usize, usize)>) -> Self {
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
            reservations_active: reservations.map(|r| r.0),
            reservations_stored: reservations.map(|r| r.1),
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
