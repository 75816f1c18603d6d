//! dwcp-agent: the userspace side of dwcp. One module per concern.
pub mod dataplane;
pub mod netlab;
pub mod tunnels;
