//! dwcp-agent: the userspace side of dwcp. One module per concern.
pub mod dataplane;
pub mod health;
pub mod lab;
pub mod netlab;
pub mod probe;
pub mod prober;
pub mod redundancy;
