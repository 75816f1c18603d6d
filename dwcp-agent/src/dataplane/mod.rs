//! Loading, attaching and programming the XDP fast path.

/// The eBPF object built by build.rs (dwcp-ebpf, with BTF).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dwcp"));
