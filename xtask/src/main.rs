//! Project tasks: `cargo xtask build-ebpf | clippy-ebpf | bench <name> | lab <command> | demo`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "dwcp project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object (with BTF) into target/bpf/dwcp.o and check it.
    BuildEbpf,
    /// Lint the eBPF crates (outside the workspace's default members) with `-D warnings`.
    ClippyEbpf,
    /// Run a benchmark (dwcp-lab/examples/bench_<name>.rs, release build) and record its
    /// table in docs/BENCHMARKS.md; or the criterion benchmark dwcp-lab/benches/<name>.rs,
    /// which records its own section.
    Bench {
        /// dataplane, forwarding, failover, routing, updater, tunnels, utilisation, ...
        name: String,
        /// Extra arguments passed to the benchmark.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The multi-region lab: `up [--regions N] [--tunnels wireguard] [--store etcd] | status |
    /// fail A B | heal A B | traffic [A B] | down` (run `cargo xtask lab help`). Builds the
    /// agent, the CLI, the tunnel daemon and the lab first.
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The two-region demo: traffic across the fast path in network namespaces, with counters
    /// (one statically programmed link, no agent).
    Demo,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The eBPF crates: the gateway's programs, and the lab's (benchmark traffic source and sink,
/// `XDP_PASS`).
const EBPF_CRATES: [&str; 2] = ["dwcp-ebpf", "dwcp-lab-ebpf"];

/// `cargo +nightly <subcommand>` for eBPF crate `krate`: its target, `core` built from source,
/// the workspace's target directory.
fn ebpf_cargo(krate: &str, subcommand: &str) -> Command {
    let root = root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join(krate))
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([
            "+nightly",
            subcommand,
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(root.join("target"));
    cmd
}

fn clippy_ebpf() -> Result<()> {
    for krate in EBPF_CRATES {
        run(ebpf_cargo(krate, "clippy").args(["--", "-D", "warnings"]))?;
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    let root = root();
    let target_dir = root.join("target");
    run(ebpf_cargo("dwcp-ebpf", "build").env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
    ))?;
    let built = target_dir.join("bpfel-unknown-none/release/dwcp");
    let out_dir = target_dir.join("bpf");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join("dwcp.o");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    let bytes = std::fs::read(&out)?;
    if !bytes.windows(5).any(|w| w == b".BTF\0") {
        bail!("{} has no .BTF section", out.display());
    }
    println!("built {} ({} bytes, with BTF)", out.display(), bytes.len());
    Ok(())
}

/// Replaces the section of docs/BENCHMARKS.md between the markers of `name` (appending it if
/// absent) with `body`.
fn record(name: &str, body: &str) -> Result<()> {
    let path = root().join("docs/BENCHMARKS.md");
    let mut doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => doc.replace_range(b..e + end.len(), &section),
        _ => doc = format!("{}\n\n{section}\n", doc.trim_end()),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, doc)?;
    println!("recorded in {}", path.display());
    Ok(())
}

fn bench(name: &str, args: &[String]) -> Result<()> {
    let root = root();
    let example = format!("bench_{name}");
    if !root
        .join("dwcp-lab/examples")
        .join(format!("{example}.rs"))
        .exists()
    {
        // A criterion benchmark (dwcp-lab/benches/<name>.rs) records its own section of
        // docs/BENCHMARKS.md and its figures in target/bench/<name>.json.
        if root
            .join("dwcp-lab/benches")
            .join(format!("{name}.rs"))
            .exists()
        {
            return run(Command::new("cargo")
                .current_dir(&root)
                .args(["bench", "-p", "dwcp-lab", "--bench", name, "--"])
                .args(args));
        }
        bail!(
            "no benchmark named {name} (dwcp-lab/examples/{example}.rs or \
             dwcp-lab/benches/{name}.rs)"
        );
    }
    std::fs::create_dir_all(root.join("target/bench"))?;
    let out = Command::new("cargo")
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "dwcp-lab",
            "--example",
            &example,
            "--",
        ])
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the benchmark")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("benchmark {name} failed: {}", out.status);
    }
    // The benchmark prints its Markdown report (table + method) to stdout.
    // As it must be typed: the benchmark's own arguments follow `--`.
    let cmd = if args.is_empty() {
        format!("cargo xtask bench {name}")
    } else {
        format!("cargo xtask bench {name} -- {}", args.join(" "))
    };
    record(
        name,
        &format!("## {name}\n\nProduced by `{cmd}`.\n\n{stdout}"),
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Builds `dwcp-agent`, `dwcp`, `dwcp-tunnels` and the lab (debug profile: shares the build with the test
/// suite; the fast path runs in the kernel), then runs the lab with `args`.
fn lab(args: &[String]) -> Result<()> {
    let status = Command::new("cargo")
        .current_dir(root())
        .args([
            "build",
            "--quiet",
            "-p",
            "dwcp-agent",
            "--bin",
            "dwcp-agent",
            "-p",
            "dwcp-cli",
            "--bin",
            "dwcp",
            "-p",
            "dwcp-tunnels",
            "--bin",
            "dwcp-tunnels",
            "-p",
            "dwcp-lab",
            "--example",
            "lab",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the lab failed: {status}");
    }
    let debug = target_dir().join("debug");
    let status = Command::new(debug.join("examples/lab"))
        .env("DWCP_AGENT_BIN", debug.join("dwcp-agent"))
        .env("DWCP_BIN", debug.join("dwcp"))
        .env("DWCP_TUNNELS_BIN", debug.join("dwcp-tunnels"))
        .args(args)
        .status()
        .context("running the lab")?;
    if !status.success() {
        // The lab printed why.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::ClippyEbpf => clippy_ebpf(),
        Cmd::Bench { name, args } => bench(&name, &args),
        Cmd::Lab { args } => lab(&args),
        // Debug profile: shares the build with the test suite; the fast path runs in the kernel.
        Cmd::Demo => run(Command::new("cargo").current_dir(root()).args([
            "run",
            "--quiet",
            "-p",
            "dwcp-lab",
            "--example",
            "two_region_demo",
        ])),
    }
}
