//! dwcp-agent: the userspace side of dwcp. One module per concern.
pub mod agent;
pub mod bandwidth;
pub mod dataplane;
pub mod health;
pub mod lab;
pub mod netlab;
pub mod probe;
pub mod redundancy;
pub mod routing;
pub mod topology;
pub mod traffic;
pub mod utilisation;
