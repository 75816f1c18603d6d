//! Link state shared between gateways (issue 16), the pure half: each gateway is the only
//! authority for its own links and floods a sequence-numbered record of them to its
//! neighbours over the links themselves, who install it and pass it on, as OSPF and IS-IS do
//! (holo's `holo-ospf` flooding and LSDB were the model).
//!
//! - [`record`]: a record (origin = gateway name, 64-bit sequence, topology digest, one
//!   report per link: health and quantised RTT, jitter, loss, utilisation).
//! - [`wire`]: its datagrams (updates, acknowledgements; version byte, room for a MAC).
//! - [`digest`]: the topology digest, so gateways with different topology files notice.
//! - [`database`]: install rules, ageing, the sequence jump after a restart, and the link
//!   state routing applies (down if either end says so).
//! - [`origin`]: what a gateway announces of its own links: down at once, up after a hold
//!   that grows while the link flaps, figures when they moved enough, at most once a second.
//! - [`stored`]: the figures a gateway publishes to the cluster store (etcd mode), when, and
//!   which a reader takes as current; never used for health or routes.
//! - [`flood`]: the per-gateway state machine: flooding, acknowledgement, retransmission,
//!   whole-database exchange when a neighbour comes up or restarts.
//!
//! When routes are recomputed after the database changed is the state owner's
//! [`crate::debounce::Debounce`], the RFC 8405 back-off it already runs for every other
//! event: one back-off per gateway, whatever the cause.
//!
//! Times are nanoseconds of a monotonic clock passed in (as `Now::mono_ns`), so a simulation
//! or a replay runs the same code on its own clock. How the agent drives a [`Flooder`]: call
//! `observe` on every change of a local link's health or figures, `neighbour_up` /
//! `neighbour_down` when a link's probes come and go, `handle` for every datagram decoded
//! from a link ([`Message::decode`]; a malformed one is counted and dropped), and `tick`
//! at every `Wake`; send every `Send` over its link; on `DatabaseChanged`, give the state
//! owner [`Database::topology_updates`].
pub mod config;
pub mod database;
pub mod digest;
pub mod flood;
pub mod origin;
pub mod record;
pub mod stored;
pub mod wire;

pub use config::{FigureThresholds, LinkStateConfig, LinkStateConfigError};
pub use database::{Database, Install, ReportedLink};
pub use digest::{topology_digest, TopologyDigest};
pub use flood::{Action, FloodCounts, Flooder, LinkStateError};
pub use origin::Observation;
pub use record::{Figures, LinkReport, Origin, Record, RecordError, RecordKey};
pub use stored::{current_figures, FiguresSchedule, StoredFigures, StoredLink, StoredLinkFigures};
pub use wire::{authentic, Advert, Body, Message, WireError};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testnet;
