//! dwcp-lab: everything that tests or measures dwcp and never ships in it. Network-namespace
//! guards (`netlab`), the labs (`lab`: the three-region triangle of the daemon's end-to-end
//! tests, the N-region lab behind `cargo xtask lab`), the forwarding and utilisation
//! harnesses, the API's fixtures, and the map-in-map baseline of the group-swap benchmark.
//! The benchmarks are its examples and benches; the privileged tests are its tests.
//!
//! Privileged tests (root, the kernel's BPF, network namespaces) are gated as Cilium gates
//! its: they are ignored unless the `privileged` feature is on (`cargo test --features
//! dwcp-lab/privileged`, what `scripts/test.sh` runs as root), so `cargo test` as any user
//! runs the rest and lists these as ignored.
/// The lab's eBPF object (dwcp-lab-ebpf), built by build.rs: the forwarding benchmark's
/// traffic source and sink and the `XDP_PASS` program, which a gateway never loads.
pub static LAB_EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dwcp-lab-bpf"));

pub mod api_harness;
pub mod etcd;
pub mod fail_closed;
pub mod fixtures;
pub mod flood_sim;
pub mod forwarding_bench;
pub mod frames;
pub mod idle_flood;
pub mod lab;
pub mod map_in_map;
pub mod netlab;
pub mod utilisation;
pub mod xdp_corpus;

/// A binary of the workspace (`dwcp-agent`, `dwcp`, `dwcp-prober`, `dwcp-tunnels`) of the same
/// build profile as the running test or example: tests run from `target/<profile>/deps/`,
/// examples from `target/<profile>/examples/`, the binaries sit in `target/<profile>/`.
/// Binaries of other packages are not built for a test by cargo: `scripts/test.sh` builds them
/// first (`cargo build --bins`), and a missing one fails loudly here.
pub fn bin(name: &str) -> std::path::PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --bins` (scripts/test.sh does) before this test",
        path.display()
    );
    path
}

/// Records that `test` could not run on this machine and why: printed, and appended to
/// `target/skipped.txt`, which `scripts/test.sh` lists in its summary (a skip is never shown
/// as a plain pass). The caller returns right after.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Some(target) = profile_dir().parent() {
        use std::io::Write;
        let line = format!("{test}: {why}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(target.join("skipped.txt"))
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("cannot record the skip in {}: {e}", target.display());
        }
    }
}

/// `target/<profile>`, of the running test (`deps/`) or example (`examples/`).
fn profile_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/<deps or examples>/<exe>")
        .to_path_buf()
}
