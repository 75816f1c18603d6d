//! Forwarding throughput of dwcp's XDP fast path side by side with Linux kernel routing, on
//! the same netns lab in the same run (`cargo xtask bench forwarding`, issue 9).
//!
//! - [`lab`]: source -> gateway A -> underlay -> sink; gateway A forwards with dwcp or with
//!   the kernel (`ip nexthop` group over kernel VXLAN devices, same next hops and weights).
//! - [`source`]: an XDP program driven by BPF_PROG_TEST_RUN with live frames, which offers
//!   more packets than either forwarder can take.
//! - [`sink`]: an XDP program at the far end that counts VXLAN frames per VNI and drops them.
//! - [`cpu`]: gateway A's forwarding runs in one threaded-NAPI kernel thread, pinned to a CPU
//!   of its own; its run time is the CPU the forwarding cost.
//! - [`measure`]: counter snapshots and what they say.

pub mod cpu;
pub mod lab;
pub mod measure;
pub mod sink;
pub mod source;

use aya::{maps::MapError, programs::ProgramError};
use thiserror::Error;

pub use lab::{CpuPlan, Forwarder, ForwardingLab};
pub use measure::{median, paired_ratio, Snapshot, Summary, TrialResult};

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Netlab(#[from] crate::netlab::NetlabError),
    // Boxed, as the other large ones below.
    #[error(transparent)]
    Lab(Box<crate::lab::LabError>),
    // aya's errors are large: boxed, so that every Result stays small.
    #[error(transparent)]
    Dataplane(Box<dwcp_dataplane::DataplaneError>),
    #[error("loading the benchmark's eBPF programs: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<MapError>,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error(
        "payload of {payload} bytes is too large for BPF_PROG_TEST_RUN live frames (at most {max})"
    )]
    PayloadTooLarge { payload: usize, max: usize },
    #[error("a source frame of {len} bytes is shorter than its headers ({min} bytes)")]
    FrameTooShort { len: usize, min: usize },
    #[error("CPU {cpu} is not available (this machine has {online} online)")]
    Cpu { cpu: usize, online: usize },
    #[error(
        "the gateway and the source were both given CPU {0}: the gateway needs a CPU of its own"
    )]
    SharedCpu(usize),
    #[error("the traffic source did not stop when interrupted")]
    SourceDidNotStop,
    #[error("NAPI thread of {ifname}: {detail}")]
    NapiThread { ifname: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {text:?}")]
    Parse { what: String, text: String },
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

impl From<dwcp_dataplane::DataplaneError> for BenchError {
    fn from(e: dwcp_dataplane::DataplaneError) -> Self {
        BenchError::Dataplane(Box::new(e))
    }
}

impl From<aya::EbpfError> for BenchError {
    fn from(e: aya::EbpfError) -> Self {
        BenchError::Load(Box::new(e))
    }
}

/// Why a run of the harness cannot happen on this machine, when the kernel refuses
/// `BPF_PROG_TEST_RUN` with live frames (EPERM even for a two-instruction program as root:
/// the kernel is built so), the only traffic source fast enough for the benchmark.
pub const LIVE_FRAMES_REFUSED: &str =
    "this kernel refuses BPF_PROG_TEST_RUN with live frames (EPERM), the harness's traffic source";

impl From<crate::lab::LabError> for BenchError {
    fn from(e: crate::lab::LabError) -> Self {
        BenchError::Lab(Box::new(e))
    }
}

impl BenchError {
    /// The kernel refused to run the traffic source with live frames ([`LIVE_FRAMES_REFUSED`]).
    pub fn live_frames_refused(&self) -> bool {
        match self {
            BenchError::Program { source, .. } => matches!(
                &**source,
                ProgramError::SyscallError(e)
                    if e.call == "bpf_prog_test_run" && e.io_error.raw_os_error() == Some(libc::EPERM)
            ),
            _ => false,
        }
    }

    /// For `map_err`: an error of program `program`.
    pub fn program(program: &'static str) -> impl FnOnce(ProgramError) -> BenchError {
        move |source| BenchError::Program {
            program,
            source: Box::new(source),
        }
    }

    /// For `map_err`: an error of map `map`.
    pub fn map(map: &'static str) -> impl FnOnce(MapError) -> BenchError {
        move |source| BenchError::Map {
            map,
            source: Box::new(source),
        }
    }
}
