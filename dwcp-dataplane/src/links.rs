//! Pinned XDP links: a program attached through a `bpf_link` pinned under
//! `<pin dir>/links/<interface>` stays attached when the agent exits (or is killed), and the
//! next agent swaps its freshly loaded program in with `bpf_link_update` — atomically, without
//! ever detaching, so no packet meets an interface without its program.

use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};

use dwcp_common::maps::programs;

use super::{AttachMode, Dataplane, DataplaneError, Result};

/// Where the XDP link on `ifname` is pinned.
pub fn link_pin_path(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join("links").join(ifname)
}

/// Where tc program `program`'s link on `ifname` is pinned: `links/<ifname>:tc` for the
/// hand-off, `links/<ifname>:wg` for the WireGuard probes (`:` is not allowed in interface
/// names, so neither can meet an XDP link's pin).
pub fn tc_link_pin_path(pin_dir: &Path, ifname: &str, program: &str) -> PathBuf {
    let suffix = if program == programs::WG_PROBE_TC {
        "wg"
    } else {
        "tc"
    };
    pin_dir.join("links").join(format!("{ifname}:{suffix}"))
}

/// What [`Dataplane::attach_pinned`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAdoption {
    /// No link was pinned: the program was attached and its link pinned.
    Attached { mode: AttachMode, program_id: u32 },
    /// A pinned link was found and its program replaced in place (`bpf_link_update`).
    Replaced {
        old_program_id: u32,
        new_program_id: u32,
    },
}

fn link_err(ifname: &str, what: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::PinnedLink {
        ifname: ifname.to_string(),
        detail: format!("{what}: {e}"),
    }
}

impl Dataplane {
    /// Puts program `name` on `ifname` behind a pinned link (in the calling thread's network
    /// namespace). A link pinned by an earlier agent is adopted: its program is replaced by
    /// this object's (same code on a restart, new code on an upgrade) without a detach. A pin
    /// whose interface has gone (the kernel refuses the update) is replaced by a new link.
    pub fn attach_pinned(&mut self, name: &'static str, ifname: &str) -> Result<LinkAdoption> {
        let dir = self
            .pin_dir
            .clone()
            .ok_or_else(|| link_err(ifname, "pinned links", "need a pin directory"))?;
        let path = link_pin_path(&dir, ifname);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| DataplaneError::PinDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        if path.exists() {
            match self.replace_pinned(name, ifname, &path) {
                Ok(adopted) => return Ok(adopted),
                Err(e) => {
                    tracing::warn!(ifname, error = %e, "pinned link unusable; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (id, mode) = self.attach(name, ifname)?;
        let prog = self.program(name)?;
        let link = prog
            .take_link(id)
            .map_err(|e| link_err(ifname, "take link", e))?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(|e| link_err(ifname, "not a bpf_link (netlink attach)", e))?;
        let program_id = fd_link
            .info()
            .map_err(|e| link_err(ifname, "link info", e))?
            .program_id();
        fd_link
            .pin(&path)
            .map_err(|e| link_err(ifname, &format!("pin at {}", path.display()), e))?;
        Ok(LinkAdoption::Attached { mode, program_id })
    }

    /// tc program `name` (`LAN_HANDOFF_TC` or `WG_PROBE_TC`) on `ifname`'s ingress behind a
    /// pinned tcx link, adopted and replaced in place like [`Dataplane::attach_pinned`]'s XDP
    /// links (a pin whose interface has gone is replaced by a new link). Needs tcx (kernel
    /// >= 6.6): a netlink `cls_bpf` filter is not a `bpf_link` and cannot be pinned.
    pub fn attach_tc_pinned(&mut self, name: &'static str, ifname: &str) -> Result<LinkAdoption> {
        let dir = self
            .pin_dir
            .clone()
            .ok_or_else(|| link_err(ifname, "pinned links", "need a pin directory"))?;
        let path = tc_link_pin_path(&dir, ifname, name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| DataplaneError::PinDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        if path.exists() {
            match self.replace_pinned_tc(name, ifname, &path) {
                Ok(adopted) => return Ok(adopted),
                Err(e) => {
                    tracing::warn!(ifname, error = %e, "pinned tc link unusable; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let id = self.attach_tc(name, ifname)?;
        let link = self
            .tc_program(name)?
            .take_link(id)
            .map_err(|e| link_err(ifname, "take tc link", e))?;
        let fd_link: FdLink = link.try_into().map_err(|e| {
            link_err(
                ifname,
                "tc program attached through netlink, not tcx (kernel < 6.6): cannot pin it",
                e,
            )
        })?;
        let program_id = fd_link
            .info()
            .map_err(|e| link_err(ifname, "tc link info", e))?
            .program_id();
        fd_link
            .pin(&path)
            .map_err(|e| link_err(ifname, &format!("pin at {}", path.display()), e))?;
        Ok(LinkAdoption::Attached {
            mode: AttachMode::Native,
            program_id,
        })
    }

    fn replace_pinned_tc(
        &mut self,
        name: &'static str,
        ifname: &str,
        path: &Path,
    ) -> Result<LinkAdoption> {
        let pinned =
            PinnedLink::from_pin(path).map_err(|e| link_err(ifname, "open pinned tc link", e))?;
        let fd_link: FdLink = pinned.into();
        let old_program_id = fd_link
            .info()
            .map_err(|e| link_err(ifname, "tc link info", e))?
            .program_id();
        let tc_link = SchedClassifierLink::try_from(fd_link)
            .map_err(|e| link_err(ifname, "not a tcx link", e))?;
        let prog = self.tc_program(name)?;
        let id = prog
            .attach_to_link(tc_link)
            .map_err(|e| link_err(ifname, "bpf_link_update (tc)", e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| link_err(ifname, "take tc link", e))?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(|e| link_err(ifname, "not a bpf_link", e))?;
        let new_program_id = fd_link
            .info()
            .map_err(|e| link_err(ifname, "tc link info", e))?
            .program_id();
        drop(fd_link);
        Ok(LinkAdoption::Replaced {
            old_program_id,
            new_program_id,
        })
    }

    fn replace_pinned(
        &mut self,
        name: &'static str,
        ifname: &str,
        path: &Path,
    ) -> Result<LinkAdoption> {
        let pinned =
            PinnedLink::from_pin(path).map_err(|e| link_err(ifname, "open pinned link", e))?;
        let fd_link: FdLink = pinned.into();
        let old_program_id = fd_link
            .info()
            .map_err(|e| link_err(ifname, "link info", e))?
            .program_id();
        let xdp_link =
            XdpLink::try_from(fd_link).map_err(|e| link_err(ifname, "not an XDP link", e))?;
        let prog = self.program(name)?;
        let id = prog
            .attach_to_link(xdp_link)
            .map_err(|e| link_err(ifname, "bpf_link_update", e))?;
        // Read the program id back through the link itself: proof the swap happened.
        let link = prog
            .take_link(id)
            .map_err(|e| link_err(ifname, "take link", e))?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(|e| link_err(ifname, "not a bpf_link", e))?;
        let new_program_id = fd_link
            .info()
            .map_err(|e| link_err(ifname, "link info", e))?
            .program_id();
        // The fd closes here; the pin keeps the link (and the new program) attached.
        drop(fd_link);
        Ok(LinkAdoption::Replaced {
            old_program_id,
            new_program_id,
        })
    }
}

/// Removes the pinned links under `pin_dir` (detaching their programs) and the directory.
pub fn unpin_links(pin_dir: &Path) -> std::io::Result<()> {
    let dir = pin_dir.join("links");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                std::fs::remove_file(e?.path())?;
            }
            std::fs::remove_dir(&dir)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
