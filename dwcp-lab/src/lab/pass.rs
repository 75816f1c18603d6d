//! The lab's `XDP_PASS` program (`dwcp_pass` in [`crate::LAB_EBPF_OBJECT`], never in a
//! gateway's object). The labs put it on the receiving end of the hosts' and wires' veths:
//! frames a gateway redirects (native XDP) into a veth are only delivered when its peer runs an
//! XDP program. The dataplane benchmark runs it as its baseline.

use std::path::Path;

use aya::{
    programs::{links::FdLink, Xdp},
    Ebpf, EbpfLoader,
};
use dwcp_dataplane::{attach_xdp, AttachMode};
use dwcp_lab_ebpf::PASS_PROGRAM;

use super::{LabError, Result};
use crate::LAB_EBPF_OBJECT;

/// The loaded program. What [`PassProgram::attach`] attached stays as long as this lives.
pub struct PassProgram {
    ebpf: Ebpf,
}

impl PassProgram {
    pub fn load() -> Result<PassProgram> {
        let mut ebpf = EbpfLoader::new()
            .load(LAB_EBPF_OBJECT)
            .map_err(|e| LabError::LabObject(Box::new(e)))?;
        program(&mut ebpf)?.load().map_err(program_err)?;
        Ok(PassProgram { ebpf })
    }

    /// The loaded program (for BPF_PROG_TEST_RUN).
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// Attaches it to `ifname` in the calling thread's network namespace, native XDP or else
    /// generic ([`attach_xdp`]).
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode> {
        Ok(attach_xdp(self.program()?, PASS_PROGRAM, ifname)?.1)
    }

    /// [`PassProgram::attach`] behind a link pinned at `pin`: it stays attached after this is
    /// dropped and the process exits, until the pin is removed or the interface goes.
    pub fn attach_pinned(&mut self, ifname: &str, pin: &Path) -> Result<AttachMode> {
        attach_pinned(self.program()?, PASS_PROGRAM, ifname, pin)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PASS_PROGRAM)
        .ok_or_else(|| program_err(aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(program_err)
}

fn program_err(e: aya::programs::ProgramError) -> LabError {
    LabError::LabProgram {
        program: PASS_PROGRAM,
        source: Box::new(e),
    }
}

/// Attaches the loaded program `prog` (named `name`) to `ifname` ([`attach_xdp`]) and pins its
/// link at `pin`, creating the pin's directory: the program outlives this process.
pub(super) fn attach_pinned(
    prog: &mut Xdp,
    name: &'static str,
    ifname: &str,
    pin: &Path,
) -> Result<AttachMode> {
    let pin_err = |detail: String| LabError::Pin {
        path: pin.to_path_buf(),
        detail,
    };
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| pin_err(format!("creating its directory: {e}")))?;
    }
    let (id, mode) = attach_xdp(prog, name, ifname)?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(|e| pin_err(format!("taking the {name} link on {ifname}: {e}")))?
        .try_into()
        .map_err(|e| pin_err(format!("{name} on {ifname} is not a bpf_link: {e}")))?;
    link.pin(pin)
        .map_err(|e| pin_err(format!("pinning {name} on {ifname}: {e}")))?;
    Ok(mode)
}
