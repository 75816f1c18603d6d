//! What the lab's XDP programs share with the lab in userspace (dwcp-lab): program, map and
//! traffic constants. No program code, and no dependency but dwcp-common, so it builds for the
//! host too; the programs are the `dwcp-lab-bpf` binary of this crate (`main.rs`).
#![no_std]

pub mod bench;

/// `XDP_PASS` and nothing else: put on the receiving end of a veth, since native XDP redirects
/// into a veth are only delivered when its peer runs an XDP program; and the dataplane
/// benchmark's baseline.
pub const PASS_PROGRAM: &str = "dwcp_pass";
