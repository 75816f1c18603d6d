//! The network namespace a manager works in: the host's own on a gateway, one per gateway in
//! the lab. Sockets are bound to the namespace they are created in, so the manager opens its
//! netlink sockets on a thread inside the namespace and starts helper programs there.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output},
};

use super::error::{Result, TunnelError};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetnsTarget {
    /// The namespace of the calling process.
    #[default]
    Current,
    /// A namespace file, such as `/run/netns/<name>` or `/proc/<pid>/ns/net`.
    Path(PathBuf),
}

impl NetnsTarget {
    /// A namespace made by `ip netns add <name>`.
    pub fn named(name: &str) -> NetnsTarget {
        NetnsTarget::Path(Path::new("/run/netns").join(name))
    }

    fn open(&self) -> Result<Option<File>> {
        match self {
            NetnsTarget::Current => Ok(None),
            NetnsTarget::Path(p) => File::open(p)
                .map(Some)
                .map_err(|source| TunnelError::Netns {
                    path: p.clone(),
                    source,
                }),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            NetnsTarget::Current => PathBuf::from("/proc/self/ns/net"),
            NetnsTarget::Path(p) => p.clone(),
        }
    }

    /// Runs `f` on a thread inside the namespace (sockets it creates belong there).
    pub(crate) fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let Some(file) = self.open()? else {
            return Ok(f());
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&file).map_err(|source| TunnelError::Netns {
                    path: self.path(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Makes `cmd` start inside the namespace. The returned file must live until the command
    /// has been spawned.
    fn prepare(&self, cmd: &mut Command) -> Result<Option<File>> {
        let file = self.open()?;
        if let Some(f) = &file {
            let fd = f.as_raw_fd();
            // SAFETY: setns is async-signal-safe and only affects the forked child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(file)
    }

    /// Runs `cmd` inside the namespace and waits for it.
    pub(crate) fn output(&self, mut cmd: Command) -> Result<Output> {
        let _ns = self.prepare(&mut cmd)?;
        cmd.output().map_err(|e| TunnelError::Command {
            cmd: describe(&cmd),
            detail: e.to_string(),
        })
    }

    /// Starts `cmd` inside the namespace.
    pub(crate) fn spawn(&self, mut cmd: Command) -> Result<Child> {
        let _ns = self.prepare(&mut cmd)?;
        cmd.spawn().map_err(|e| TunnelError::Command {
            cmd: describe(&cmd),
            detail: e.to_string(),
        })
    }
}

/// Moves the calling thread into the network namespace behind `file` (setns(2) with
/// CLONE_NEWNET). Only the calling thread changes namespace, so callers use a dedicated
/// thread (see [`NetnsTarget::run`]), or call it before a runtime starts its threads (the
/// daemons' `--netns`).
pub fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a valid, open fd; it affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `program arg1 arg2` for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
