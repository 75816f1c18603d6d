//! dwcp-agent: the userspace side of dwcp. One module per concern.
pub mod dataplane;
pub mod routing;
pub mod topology;
