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

/// A binary of the workspace (`dwcp-agent`, `dwcp`, `dwcp-prober`, `dwcp-tunnels`) of the same
/// build profile as the running test or example: tests run from `target/<profile>/deps/`,
/// examples from `target/<profile>/examples/`, the binaries sit in `target/<profile>/`.
/// Binaries of other packages are not built for a test by cargo: `scripts/test.sh` builds them
/// first (`cargo build --bins`), and a missing one fails loudly here.
pub fn bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/<deps or examples>/<exe>");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --bins` (scripts/test.sh does) before this test",
        path.display()
    );
    path
}
