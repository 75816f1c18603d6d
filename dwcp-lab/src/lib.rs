//! dwcp-lab: everything that tests or measures dwcp and never ships in it. Network-namespace
//! guards (`netlab`), the labs (`lab`: the three-region triangle of the daemon's end-to-end
//! tests, the N-region lab behind `cargo xtask lab`), the forwarding and utilisation
//! harnesses, the API's fixtures, and the map-in-map baseline of the group-swap benchmark.
//! The benchmarks are its examples and benches; the privileged tests are its tests.
pub mod fixtures;
pub mod forwarding_bench;
pub mod lab;
pub mod map_in_map;
pub mod netlab;
pub mod utilisation;

/// Whether this run may do what the privileged tests need (root, the kernel's BPF and network
/// namespaces): the `privileged` feature or `DWCP_PRIVILEGED=1`, as Cilium gates its tests.
pub fn privileged() -> bool {
    cfg!(feature = "privileged") || std::env::var_os("DWCP_PRIVILEGED").is_some_and(|v| v == "1")
}
