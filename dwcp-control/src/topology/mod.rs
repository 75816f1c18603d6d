//! The global topology: regions, inter-region links, edge nodes; loaded from TOML, validated,
//! updated live from measurements and shared with readers as immutable snapshots.
pub mod config;
pub mod error;
pub mod geo;
pub mod model;
pub mod store;
pub mod synthetic;

pub use config::{EdgeConfig, GatewayConfig, LinkConfig, RegionConfig, TopologyConfig};
pub use error::{Entry, TopologyError, ValidationError};
pub use model::{
    EdgeId, EdgeNode, Gateway, LatencySource, Link, LinkId, Region, RegionId, RoutingHealth,
    Topology, TopologyUpdate, TunnelKind,
};
pub use store::{InMemoryTopologyStore, TopologyStore};

#[cfg(test)]
mod tests;
