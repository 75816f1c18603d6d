//! Types shared by dwcp's eBPF programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding, because the same bytes are written
//! by the agent into BPF maps and read by the XDP programs (and printed by `bpftool` from BTF).
//! With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod hash;
pub mod maps;
pub mod probe;
pub mod qos;
pub mod wire;

pub use hash::{flow_hash, FlowKey};
pub use maps::*;
pub use qos::QosClass;
