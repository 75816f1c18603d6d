//! What the state owner is told: every message its tasks (probes, netlink, health checks,
//! timers, the operator) send it. Serializable, so a daemon can record what it received and a
//! test can replay it.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

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
        ip: IpAddr,
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
    /// In etcd mode: a reservation the cluster store holds, admitted by any gateway (its
    /// reservations watch, or this gateway's admission).
    StoredReservation {
        reservation: crate::bandwidth::Reservation,
    },
    /// In etcd mode: a reservation removed from the cluster store (cancelled, preempted or
    /// expired, by any gateway), seen at `now_unix_s`; `preempted_by`: the reservation the
    /// store says took its place.
    StoredReservationGone {
        id: crate::bandwidth::ReservationId,
        now_unix_s: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preempted_by: Option<crate::bandwidth::ReservationId>,
    },
    /// etcd mode: the links' figures other gateways published to the cluster store, those a
    /// reader takes as current (`link_state::current_figures`), whenever they changed: the
    /// whole set, so the last one received is the one in force. Shown for the links this
    /// gateway neither terminates nor has a link-state record of; never used for health or
    /// routes.
    StoredFigures {
        links: Vec<crate::link_state::StoredLinkFigures>,
    },
    /// Packets the fast path sampled (`FLOW_SAMPLES`), for the top-flows table.
    FlowSamples {
        samples: Vec<crate::traffic::SampledPacket>,
    },
    /// Re-read the configuration (SIGHUP, `dwcp reload`).
    Reload {
        path: PathBuf,
    },
    /// etcd mode: the cluster store's topology (a new generation pushed, or the one found at
    /// a (re)list); it replaces the configuration file's topology, atomically.
    PublishedTopology {
        topology: crate::store::PublishedTopology,
    },
    /// Periodic re-optimisation.
    Optimise,
    /// The link-state database's view of the network's links (`agent::link_state`), whenever
    /// it changed: the whole view, so the last one received is the one in force.
    LinkStateView {
        links: Vec<crate::link_state::ReportedLink>,
    },
    /// What the WireGuard device of a `wireguard` local link says of its handshakes:
    /// `stale` = why the link counts as down (no handshake within the limit), `None` = fresh
    /// or not measured (see `agent::handoff::handshake_verdict`).
    WireGuardHandshake {
        link: u32,
        #[serde(default)]
        stale: Option<String>,
        /// What the device reports of its peers; `None` = no device or no backend answered
        /// (shown as "-", never as the last reading).
        #[serde(default)]
        reading: Option<WireGuardReading>,
    },
}

/// A WireGuard device's peers as read from its backend (kernel netlink or wireguard-go UAPI):
/// the newest handshake and the byte counters summed over the peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireGuardReading {
    /// When the newest handshake completed; `None` = never.
    pub last_handshake_unix_s: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
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

/// What the kernel has said exists (interfaces, addresses, resolved neighbours), from the
/// netlink inputs sent so far. Netlink notifications are lost when the subscriber's socket
/// overruns; a full dump then tells what is, and [`KernelObjects::resync`] adds what is no
/// longer, so a neighbour deleted or an address removed meanwhile is withdrawn too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelObjects {
    interfaces: BTreeSet<String>,
    addresses: BTreeSet<(u32, IpAddr)>,
    neighbours: BTreeSet<(u32, Ipv4Addr)>,
}

impl KernelObjects {
    /// Notes what a netlink input says exists or went away (other inputs change nothing).
    pub fn note(&mut self, input: &Input) {
        match input {
            Input::Interface { name, .. } => {
                self.interfaces.insert(name.clone());
            }
            Input::InterfaceGone { name } => {
                self.interfaces.remove(name);
            }
            Input::Address {
                ifindex,
                ip,
                present,
            } => {
                if *present {
                    self.addresses.insert((*ifindex, *ip));
                } else {
                    self.addresses.remove(&(*ifindex, *ip));
                }
            }
            Input::Neighbour { ifindex, ip, mac } => {
                if mac.is_some() {
                    self.neighbours.insert((*ifindex, *ip));
                } else {
                    self.neighbours.remove(&(*ifindex, *ip));
                }
            }
            _ => {}
        }
    }

    /// The inputs that bring a receiver of the inputs noted so far to `dump`, a complete dump
    /// of the kernel's objects: the withdrawal of everything noted that the dump lacks, then
    /// the dump itself (a changed MAC, a new address). Afterwards only the dump is noted.
    pub fn resync(&mut self, dump: Vec<Input>) -> Vec<Input> {
        let mut now = KernelObjects::default();
        for input in &dump {
            now.note(input);
        }
        let gone_interfaces = self
            .interfaces
            .difference(&now.interfaces)
            .map(|name| Input::InterfaceGone { name: name.clone() });
        let gone_addresses = self
            .addresses
            .difference(&now.addresses)
            .map(|&(ifindex, ip)| Input::Address {
                ifindex,
                ip,
                present: false,
            });
        let gone_neighbours = self
            .neighbours
            .difference(&now.neighbours)
            .map(|&(ifindex, ip)| Input::Neighbour {
                ifindex,
                ip,
                mac: None,
            });
        let out = gone_neighbours
            .chain(gone_addresses)
            .chain(gone_interfaces)
            .chain(dump)
            .collect();
        *self = now;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbour(ip: [u8; 4], mac: Option<u8>) -> Input {
        Input::Neighbour {
            ifindex: 2,
            ip: ip.into(),
            mac: mac.map(|b| Mac([2, 0, 0, 0, 0, b])),
        }
    }

    fn interface(name: &str) -> Input {
        Input::Interface {
            name: name.into(),
            ifindex: 2,
            up: true,
            mac: Mac::default(),
            mtu: None,
        }
    }

    #[test]
    fn a_resync_withdraws_what_the_dump_no_longer_has_and_keeps_its_news() {
        let mut known = KernelObjects::default();
        let first = vec![
            interface("ul1"),
            interface("old0"),
            Input::Address {
                ifindex: 2,
                ip: [10, 0, 0, 1].into(),
                present: true,
            },
            neighbour([10, 0, 0, 2], Some(1)),
            neighbour([10, 0, 0, 3], Some(1)),
            neighbour([10, 0, 0, 4], None),
        ];
        // The first dump: nothing known yet, nothing withdrawn.
        assert_eq!(known.resync(first.clone()), first);
        // Changes while the socket overran: .2 moved to another MAC, .3 was deleted, old0
        // and the address went away, .5 appeared.
        let dump = vec![
            interface("ul1"),
            neighbour([10, 0, 0, 2], Some(9)),
            neighbour([10, 0, 0, 5], Some(1)),
        ];
        let out = known.resync(dump.clone());
        let mut want = vec![
            neighbour([10, 0, 0, 3], None),
            Input::Address {
                ifindex: 2,
                ip: [10, 0, 0, 1].into(),
                present: false,
            },
            Input::InterfaceGone {
                name: "old0".into(),
            },
        ];
        want.extend(dump);
        assert_eq!(out, want);
        // Notifications after it count from the dump's view.
        known.note(&neighbour([10, 0, 0, 2], None));
        let out = known.resync(vec![interface("ul1")]);
        assert_eq!(out, vec![neighbour([10, 0, 0, 5], None), interface("ul1")]);
    }
}
