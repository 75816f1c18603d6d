//! The one error type of tunnel management. Every variant names the tunnel, device, file or
//! command it is about, so a log line alone says what to fix.

use std::{io, path::PathBuf};

use thiserror::Error;

use super::spec::TunnelType;

#[derive(Debug, Error)]
pub enum TunnelError {
    #[error("tunnel `{tunnel}`: {field}: {reason}")]
    InvalidSpec {
        tunnel: String,
        field: String,
        reason: String,
    },
    #[error("tunnel `{0}` is not managed by dwcp (nothing about it in the state directory)")]
    UnknownTunnel(String),
    #[error(
        "tunnel `{tunnel}`: a {found} device of that name already exists and dwcp did not \
         create it; remove it or choose another tunnel name"
    )]
    NameTaken { tunnel: String, found: String },
    #[error("{kind} tunnels need kernel support that this kernel lacks: {detail}")]
    KernelUnsupported { kind: TunnelType, detail: String },
    #[error("{kind} tunnels are not implemented by dwcp: {detail}")]
    NotImplemented { kind: TunnelType, detail: String },
    #[error("netlink {op} `{object}`: {source}")]
    Netlink {
        op: &'static str,
        object: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("WireGuard device `{device}`: {detail}")]
    WireGuard { device: String, detail: String },
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {detail}", path.display())]
    BadFile { path: PathBuf, detail: String },
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key rotation of tunnel `{tunnel}`: {detail}")]
    Rotation { tunnel: String, detail: String },
    #[error("key exchange with the peer: {detail}")]
    KeyExchange { detail: String },
}

pub type Result<T, E = TunnelError> = std::result::Result<T, E>;

impl TunnelError {
    pub(crate) fn invalid(
        tunnel: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        TunnelError::InvalidSpec {
            tunnel: tunnel.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        TunnelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn wg(device: &str, detail: impl Into<String>) -> Self {
        TunnelError::WireGuard {
            device: device.to_string(),
            detail: detail.into(),
        }
    }
}

/// The errno of a netlink error answer, if that is what `e` is.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}
