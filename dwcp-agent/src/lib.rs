//! dwcp-agent: the userspace side of dwcp. One module per concern.
pub mod dataplane;
pub mod forwarding_bench;
pub mod health;
pub mod lab;
pub mod netlab;
pub mod probe;
pub mod redundancy;
