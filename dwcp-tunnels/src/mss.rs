//! TCP MSS clamping on tunnel devices, with nftables: SYNs forwarded into or out of a tunnel
//! get their MSS option lowered to what the tunnel MTU carries, so TCP never depends on ICMP
//! "fragmentation needed" making it back across the WAN.
//!
//! The whole `inet dwcp_mss` table is rebuilt from the managed tunnels in one `nft -f`
//! transaction, so it is always exactly what the tunnels need, also after a crash.
//!
//! Limit: this covers packets the kernel forwards (the slow path and WireGuard hand-offs).
//! Flows the XDP fast path encapsulates itself never traverse netfilter; their MSS must be
//! clamped by the fast path or the LAN MTU must leave room for the 50 VXLAN bytes.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use super::{
    error::{Result, TunnelError},
    netns::NetnsTarget,
    spec::mss_for_mtu,
};

pub const TABLE: &str = "dwcp_mss";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClampEntry {
    pub ifname: String,
    pub mtu: u32,
}

#[derive(Debug)]
pub(crate) struct MssClamp {
    ns: NetnsTarget,
}

/// A fingerprint of the rules, kept as the table's comment so that any later process can
/// tell whether the table in the kernel is already the one wanted.
fn fingerprint(rules: &str) -> String {
    // FNV-1a, 64 bit: stable across processes and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rules.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("dwcp {h:016x}")
}

/// The nft script that replaces the table with one holding rules for `entries` (or deletes it
/// when there are none).
pub fn ruleset(entries: &[ClampEntry]) -> String {
    // Creating then deleting the table makes the delete valid whether or not it existed.
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if entries.is_empty() {
        return s;
    }
    let mut rules = String::new();
    for e in entries {
        for (family, ipv6) in [("ipv4", false), ("ipv6", true)] {
            let mss = mss_for_mtu(e.mtu, ipv6);
            for dir in ["oifname", "iifname"] {
                rules.push_str(&format!(
                    "    {dir} \"{ifname}\" meta nfproto {family} tcp flags & (syn | rst) == syn \
                     tcp option maxseg size > {mss} tcp option maxseg size set {mss}\n",
                    ifname = e.ifname
                ));
            }
        }
    }
    s.push_str(&format!(
        "table inet {TABLE} {{\n  comment \"{}\"\n  chain forward {{\n    type filter hook forward priority mangle; policy accept;\n{rules}  }}\n}}\n",
        fingerprint(&rules)
    ));
    s
}

/// The fingerprint `ruleset(entries)` carries (`None` for no entries: no table).
fn wanted_fingerprint(entries: &[ClampEntry]) -> Option<String> {
    let script = ruleset(entries);
    let start = script.find("comment \"")? + "comment \"".len();
    let end = start + script[start..].find('"')?;
    Some(script[start..end].to_string())
}

impl MssClamp {
    pub fn new(ns: NetnsTarget) -> Self {
        MssClamp { ns }
    }

    /// The comment of the table in the kernel; `None` when there is no table.
    fn installed_fingerprint(&self) -> Result<Option<String>> {
        let mut cmd = Command::new("nft");
        cmd.args(["list", "table", "inet", TABLE]);
        let out = self.ns.output(cmd)?;
        if !out.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(Some(
            text.lines()
                .find_map(|l| l.trim().strip_prefix("comment \""))
                .map(|c| c.trim_end_matches('"').to_string())
                .unwrap_or_default(),
        ))
    }

    /// Makes the table match `entries`; returns whether anything was changed.
    pub fn sync(&self, mut entries: Vec<ClampEntry>) -> Result<bool> {
        entries.sort();
        entries.dedup();
        if self.installed_fingerprint()? == wanted_fingerprint(&entries) {
            return Ok(false);
        }
        let script = ruleset(&entries);
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = self.ns.spawn(cmd).map_err(|e| match e {
            TunnelError::Command { cmd, detail } => TunnelError::Command {
                cmd,
                detail: format!("{detail} (MSS clamping needs nftables; install `nftables` or set mss_clamp = false)"),
            },
            other => other,
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| TunnelError::Command {
                    cmd: "nft -f -".into(),
                    detail: e.to_string(),
                })?;
        }
        let out = child.wait_with_output().map_err(|e| TunnelError::Command {
            cmd: "nft -f -".into(),
            detail: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(TunnelError::Command {
                cmd: format!("nft -f - (table inet {TABLE})"),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_clamps_both_directions_and_families() {
        let s = ruleset(&[ClampEntry {
            ifname: "vx1".into(),
            mtu: 1450,
        }]);
        assert!(s.contains("oifname \"vx1\" meta nfproto ipv4"));
        assert!(s.contains("iifname \"vx1\" meta nfproto ipv6"));
        assert!(s.contains("maxseg size > 1410 tcp option maxseg size set 1410"));
        assert!(s.contains("maxseg size > 1390 tcp option maxseg size set 1390"));
        assert!(ruleset(&[]).ends_with(&format!("delete table inet {TABLE}\n")));
        assert_eq!(wanted_fingerprint(&[]), None);
        let other = [ClampEntry {
            ifname: "vx1".into(),
            mtu: 1400,
        }];
        assert_ne!(
            wanted_fingerprint(&other),
            wanted_fingerprint(&[ClampEntry {
                ifname: "vx1".into(),
                mtu: 1450
            }])
        );
    }

    /// The generated script is valid nftables: `nft -c` (check only) accepts it.
    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root (--features dwcp-tunnels/privileged)"
    )]
    fn nft_accepts_the_ruleset() {
        let script = ruleset(&[
            ClampEntry {
                ifname: "vx1".into(),
                mtu: 1450,
            },
            ClampEntry {
                ifname: "wg-eu1".into(),
                mtu: 1420,
            },
        ]);
        let mut child = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft (nftables) is installed by scripts/bootstrap.sh");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
