//! Whether the running kernel can carry a tunnel type, found by trying: the device (or the
//! ESP security association) is created in a throwaway network namespace that vanishes with
//! the probing thread or process, so a probe leaves nothing behind. The kernel loads a module
//! for a link kind by itself (`rtnl-link-<kind>`), so a probe also covers modular kernels.
//!
//! Results are cached for the life of the process: kernels do not gain features at runtime
//! often enough to probe on every request.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    process::Command,
    sync::{Mutex, OnceLock},
};

use rtnetlink::{
    packet_route::link::InfoKind, LinkGeneve, LinkGre, LinkMessageBuilder, LinkUnspec, LinkVxlan,
};
use serde::Serialize;

use super::{
    error::{netlink_errno, Result, TunnelError},
    spec::TunnelType,
};

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Support {
    pub kind: TunnelType,
    pub supported: bool,
    /// What was tried and what the kernel said.
    pub detail: String,
}

/// The kernel configuration options (and modules) each type needs.
fn needs(kind: TunnelType) -> (&'static [&'static str], &'static str) {
    match kind {
        TunnelType::Vxlan => (&["CONFIG_VXLAN"], "vxlan"),
        TunnelType::WireGuard => (&["CONFIG_WIREGUARD"], "wireguard"),
        TunnelType::Gre => (&["CONFIG_NET_IPGRE"], "ip_gre"),
        TunnelType::Geneve => (&["CONFIG_GENEVE"], "geneve"),
        TunnelType::Ipsec => (
            &["CONFIG_INET_ESP", "CONFIG_INET6_ESP", "CONFIG_XFRM_USER"],
            "esp4",
        ),
    }
}

static CACHE: OnceLock<Mutex<HashMap<TunnelType, Support>>> = OnceLock::new();

/// Probes (once per process) whether the kernel supports `kind`.
pub fn probe(kind: TunnelType) -> Support {
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&kind) {
        return s.clone();
    }
    let support = probe_uncached(kind);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(kind, support.clone());
    support
}

/// `Ok` when the kernel supports `kind`, else `KernelUnsupported` naming what is missing.
pub fn require(kind: TunnelType) -> Result<()> {
    let s = probe(kind);
    if s.supported {
        Ok(())
    } else {
        Err(TunnelError::KernelUnsupported {
            kind,
            detail: s.detail,
        })
    }
}

/// Every tunnel type, for `dwcp-tunnels support`.
pub fn probe_all() -> Vec<Support> {
    [
        TunnelType::Vxlan,
        TunnelType::WireGuard,
        TunnelType::Gre,
        TunnelType::Geneve,
        TunnelType::Ipsec,
    ]
    .into_iter()
    .map(probe)
    .collect()
}

fn probe_uncached(kind: TunnelType) -> Support {
    let attempt = match kind {
        TunnelType::Ipsec => probe_esp(),
        _ => probe_link(kind),
    };
    let (options, module) = needs(kind);
    match attempt {
        Ok(what) => Support {
            kind,
            supported: true,
            detail: format!("{what}: ok"),
        },
        Err(what) => {
            let mut detail = format!(
                "{what}; it needs {} (module `{module}`)",
                options.join(" / ")
            );
            if let Some(lines) = kernel_config_lines(options) {
                detail.push_str(&format!("; /proc/config.gz says: {}", lines.join(", ")));
            }
            Support {
                kind,
                supported: false,
                detail,
            }
        }
    }
}

/// Tries to create a device of the type's link kind in a fresh namespace of a new thread.
fn probe_link(kind: TunnelType) -> std::result::Result<String, String> {
    let (name, msg) = match kind {
        TunnelType::Vxlan => (
            "vxlan",
            LinkVxlan::new("probe0", 1)
                .remote(Ipv4Addr::new(192, 0, 2, 2))
                .port(4789)
                .build(),
        ),
        TunnelType::Gre => (
            "gre",
            LinkGre::new("probe0")
                .local(Ipv4Addr::new(192, 0, 2, 1))
                .remote(Ipv4Addr::new(192, 0, 2, 2))
                .build(),
        ),
        TunnelType::Geneve => (
            "geneve",
            LinkGeneve::new("probe0", 1)
                .remote(Ipv4Addr::new(192, 0, 2, 2))
                .build(),
        ),
        TunnelType::WireGuard => (
            "wireguard",
            LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Wireguard)
                .name("probe0".to_string())
                .build(),
        ),
        TunnelType::Ipsec => unreachable!("ESP is probed through XFRM"),
    };
    let tried = format!("creating a `{name}` link in a scratch network namespace");
    let outcome = std::thread::spawn(move || -> std::result::Result<(), String> {
        // SAFETY: unshare affects only this thread, whose namespace dies with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            match handle.link().add(msg).execute().await {
                Ok(()) => Ok(()),
                Err(e) if netlink_errno(&e) == Some(libc::EOPNOTSUPP) => {
                    Err("the kernel does not know the link kind (EOPNOTSUPP)".to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("probe thread panicked".into()));
    outcome
        .map(|()| tried.clone())
        .map_err(|e| format!("{tried} failed: {e}"))
}

/// Tries to install an ESP security association with `ip xfrm` in a fresh namespace of a
/// child process.
fn probe_esp() -> std::result::Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args([
        "xfrm",
        "state",
        "add",
        "src",
        "192.0.2.1",
        "dst",
        "192.0.2.2",
        "proto",
        "esp",
        "spi",
        "0x100",
        "mode",
        "tunnel",
        "aead",
        "rfc4106(gcm(aes))",
        "0x0011223344556677889900112233445566778899",
        "128",
    ]);
    // SAFETY: unshare in the forked child only.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let tried = "adding an ESP security association (`ip xfrm state add ... proto esp`) in a \
                 scratch network namespace";
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(tried.to_string()),
        Ok(out) => Err(format!(
            "{tried} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{tried} failed: cannot run `ip`: {e}")),
    }
}

/// The lines of the running kernel's configuration about `options`, when it is published.
fn kernel_config_lines(options: &[&str]) -> Option<Vec<String>> {
    let out = Command::new("gzip")
        .args(["-dc", "/proc/config.gz"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = options
        .iter()
        .filter_map(|opt| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("{opt}="))
                        || l.starts_with(&format!("# {opt} is not set"))
                })
                .map(|l| format!("`{l}`"))
        })
        .collect();
    (!lines.is_empty()).then_some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probes agree with the kernel's published configuration, and an unsupported type's
    /// error names the missing option. (On this machine: VXLAN yes; GRE, GENEVE, ESP no.)
    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root (--features dwcp-tunnels/privileged)"
    )]
    fn probes_agree_with_kernel_config() {
        for kind in [
            TunnelType::Vxlan,
            TunnelType::Gre,
            TunnelType::Geneve,
            TunnelType::Ipsec,
        ] {
            let (options, _) = needs(kind);
            let Some(lines) = kernel_config_lines(&options[..1]) else {
                continue;
            };
            let configured = lines[0].ends_with("=y`") || lines[0].ends_with("=m`");
            let s = probe(kind);
            assert_eq!(s.supported, configured, "{s:?} vs {lines:?}");
            if !configured {
                let err = require(kind).unwrap_err().to_string();
                assert!(
                    err.contains(&kind.to_string()) && err.contains(options[0]),
                    "{err}"
                );
            }
        }
        assert!(
            probe(TunnelType::Vxlan).supported,
            "{:?}",
            probe(TunnelType::Vxlan)
        );
    }
}
