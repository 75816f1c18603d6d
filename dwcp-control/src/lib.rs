//! dwcp-control: the pure logic of a dwcp gateway. Topology, routing, traffic engineering,
//! reservations, configuration, the plans of the fast path's maps and the state owner that
//! ties them together. No kernel, no sockets, no async runtime, no clock of its own: the
//! agent feeds it inputs with their times, and it changes the fast path through the
//! [`fast_path::FastPath`] trait (the real maps in `dwcp-dataplane`, an in-memory model here).
//!
//! Where a new feature goes: its state machine and rules here, its sockets and tasks in
//! `dwcp-agent`, its maps in `dwcp-dataplane`, its lab and benchmarks in `dwcp-lab`.
pub mod bandwidth;
pub mod config;
pub mod debounce;
pub mod fast_path;
pub mod forwarding;
pub mod health;
pub mod input;
pub mod link_state;
pub mod liveness;
pub mod nhg_table;
pub mod plan;
pub mod replay;
pub mod routing;
pub mod state;
pub mod store;
pub mod topology;
pub mod traffic;
pub mod view;

pub use config::{AgentConfig, ConfigError, Prefix, Problem};
pub use input::{Input, Now, TimedInput};
pub use state::{AgentError, AgentState, UpdateStats};
