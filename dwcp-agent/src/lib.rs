//! dwcp-agent: the userspace side of dwcp. One module per concern.
pub mod bandwidth;
pub mod dataplane;
pub mod traffic;
