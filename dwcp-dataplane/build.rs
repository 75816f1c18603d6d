//! Builds the eBPF object (dwcp-ebpf, nightly + bpf-linker, with BTF) into OUT_DIR so the agent
//! can embed it. `scripts/bootstrap.sh` installs what this needs.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name == "dwcp-ebpf")
        .ok_or_else(|| anyhow!("dwcp-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent"))?;
    let root_dir = root_dir.as_str();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dwcp-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
