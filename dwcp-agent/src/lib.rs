//! dwcp-agent: the userspace side of dwcp. One module per concern.
pub mod agent;
pub mod api;
pub mod bandwidth;
pub mod cli;
pub mod dataplane;
pub mod forwarding_bench;
pub mod health;
pub mod lab;
pub mod netlab;
pub mod probe;
pub mod prober;
pub mod redundancy;
pub mod routing;
pub mod telemetry;
pub mod topology;
pub mod traffic;
pub mod tunnels;
