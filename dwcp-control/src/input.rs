//! What the state owner is told: every message its tasks (probes, netlink, health checks,
//! timers, the operator) send it. Serializable, so a daemon can record what it received and a
//! test can replay it.
use std::{net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Mac;
use crate::liveness::{DegradeReason, LinkEvent, LinkEventKind};

/// A point in time: the monotonic clock (for timers; `CLOCK_MONOTONIC`, the clock of the fast
/// path's timestamps) and the wall clock (for the history). The agent reads the clocks; the
/// state owner only compares the times it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono_ns: u64,
    pub unix_ms: u64,
}

/// The wall clock in whole seconds since the epoch (the API's and the reservations' times).
/// Read by the I/O side only: the state owner takes its times with its inputs.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Now {
    /// A synthetic time `ms` milliseconds after a fixed epoch (replays, benchmarks).
    pub fn at_ms(ms: u64) -> Now {
        Now {
            mono_ns: ms * 1_000_000,
            unix_ms: 1_700_000_000_000 + ms,
        }
    }
}

/// One message to the state owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// The probes say the fast path no longer uses the link.
    LinkDown {
        link: u32,
        reason: String,
    },
    /// The probes say the fast path uses the link (again).
    LinkUp {
        link: u32,
    },
    /// The link is up but worse than a threshold (loss, RTT, jitter).
    LinkDegraded {
        link: u32,
        reason: String,
        #[serde(default)]
        loss: Option<f64>,
    },
    LinkRecovered {
        link: u32,
    },
    /// The probes' current figures of a link (sent before each periodic optimisation).
    LinkMeasured {
        link: u32,
        rtt_ms: f64,
        jitter_ms: f64,
        #[serde(default)]
        loss: Option<f64>,
    },
    /// An interface exists (netlink dump or RTM_NEWLINK) with this state.
    Interface {
        name: String,
        ifindex: u32,
        up: bool,
        #[serde(default)]
        mac: Mac,
        #[serde(default)]
        mtu: Option<u32>,
    },
    /// An interface was deleted (RTM_DELLINK).
    InterfaceGone {
        name: String,
    },
    /// An address was added to (`present`) or removed from the interface `ifindex`.
    Address {
        ifindex: u32,
        ip: std::net::IpAddr,
        present: bool,
    },
    /// The kernel's neighbour table: `mac` = None when the entry is gone or unresolved.
    Neighbour {
        ifindex: u32,
        ip: Ipv4Addr,
        #[serde(default)]
        mac: Option<Mac>,
    },
    /// The health checks of a region all fail.
    RegionDown {
        region: String,
        reason: String,
    },
    RegionUp {
        region: String,
    },
    /// `dwcp link down|up`.
    LinkAdmin {
        link: u32,
        up: bool,
    },
    /// The wall clock, when a reservation starts or ends (`AgentState::next_reservation_change`):
    /// ended reservations expire, started ones take their share of the links.
    Clock {
        now_unix_s: u64,
    },
    /// An operator's change to the reservations (`dwcp reserve`), run at `now_unix_s`.
    Reservation {
        now_unix_s: u64,
        op: crate::bandwidth::ReservationOp,
    },
    /// Packets the fast path sampled (`FLOW_SAMPLES`), for the top-flows table.
    FlowSamples {
        samples: Vec<crate::traffic::SampledPacket>,
    },
    /// Re-read the configuration (SIGHUP, `dwcp reload`).
    Reload {
        path: PathBuf,
    },
    /// Periodic re-optimisation.
    Optimise,
    /// What the WireGuard device of a `wireguard` local link says of its handshakes:
    /// `stale` = why the link counts as down (no handshake within the limit), `None` = fresh
    /// or not measured (see `agent::handoff::handshake_verdict`).
    WireGuardHandshake {
        link: u32,
        #[serde(default)]
        stale: Option<String>,
    },
}

impl Input {
    /// The input a probe monitor event stands for.
    pub fn from_link_event(ev: &LinkEvent) -> Input {
        let link = ev.link_id;
        match &ev.kind {
            LinkEventKind::Down { reason } => Input::LinkDown {
                link,
                reason: reason.to_string(),
            },
            LinkEventKind::Up { .. } => Input::LinkUp { link },
            LinkEventKind::Degraded { reason } => Input::LinkDegraded {
                link,
                reason: reason.to_string(),
                loss: match reason {
                    DegradeReason::Loss { ratio, .. } => Some(*ratio),
                    _ => None,
                },
            },
            LinkEventKind::Recovered { .. } => Input::LinkRecovered { link },
        }
    }
}

/// An input with the time it arrived, as recorded (`--record`) and replayed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedInput {
    /// Milliseconds since the start of the recording.
    pub at_ms: u64,
    #[serde(flatten)]
    pub input: Input,
}
