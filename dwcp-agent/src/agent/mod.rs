//! The daemon: the state owner's I/O shell. Tasks feed it inputs and commands; after each
//! step the daemon hands its events and snapshot to the operator side (API, exporter, CLI)
//! on tokio channels.

mod cluster;
pub mod daemon;
pub mod handoff;
mod link_state;
pub mod netlink;
mod probes;
mod tasks;

use std::sync::Arc;

pub use cluster::MEMBERSHIP_TTL;

use dwcp_control::bandwidth::{BandwidthError, ReservationOp, ReservationReply};
pub use dwcp_control::view::*;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

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
    /// Create, extend or cancel a bandwidth reservation. The reply comes once the change is
    /// stored and the snapshot showing it published.
    Reservation {
        op: ReservationOp,
        reply: oneshot::Sender<Result<ReservationReply, BandwidthError>>,
    },
}

/// The handles the operator side gets.
#[derive(Clone)]
pub struct AgentHandle {
    pub snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    pub events: broadcast::Sender<AgentEvent>,
    pub commands: mpsc::Sender<AgentCommand>,
}

/// The time now, as the state owner takes it: `CLOCK_MONOTONIC` (the fast path's clock) and
/// the wall clock.
pub fn now() -> dwcp_control::Now {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    dwcp_control::Now {
        mono_ns: crate::probe::monotonic_ns(),
        unix_ms,
    }
}
