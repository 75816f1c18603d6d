//! Builds the lab's eBPF object (dwcp-lab-ebpf: the benchmark's traffic source and sink, and
//! `XDP_PASS`; nightly + bpf-linker, with BTF) into OUT_DIR so the lab can embed it, apart
//! from the gateway's object. `scripts/bootstrap.sh` installs what this needs.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name == "dwcp-lab-ebpf")
        .ok_or_else(|| anyhow!("dwcp-lab-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent"))?;
    let root_dir = root_dir.as_str();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dwcp-lab-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
