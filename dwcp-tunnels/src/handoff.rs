//! Hand-off from the fast path into a WireGuard tunnel. XDP cannot encrypt, so for a next hop
//! that is a WireGuard tunnel the fast path passes the packet up with a mark; policy routing
//! then sends marked packets through the tunnel:
//!
//! ```text
//! ip rule add fwmark <fwmark> lookup <table> pref <priority>      (IPv4 and IPv6)
//! ip route replace default dev <tunnel> table <table>             (IPv4 and IPv6)
//! ```
//!
//! XDP itself cannot set `skb->mark`; the mark is set by a tc ingress program that looks up
//! the mark the LAN XDP program recorded for the packet's flow (`HANDOFF_FLOWS`) — both
//! belong to the fast path (dwcp-ebpf). See docs/tunnels.md for the contract.

use super::{error::Result, rtnl::Rtnl, spec::Handoff};

/// Makes the rules and routes exist; returns what was changed.
pub async fn ensure(rtnl: &Rtnl, index: u32, ifname: &str, h: &Handoff) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        if rtnl.fwmark_rules(v6, h.fwmark, h.table).await?.is_empty() {
            rtnl.add_fwmark_rule(v6, h.fwmark, h.table, h.priority)
                .await?;
            changes.push(format!(
                "added {family} rule fwmark {:#x} lookup {} pref {}",
                h.fwmark, h.table, h.priority
            ));
        }
        if !rtnl.has_default_route(v6, index, h.table).await? {
            rtnl.replace_default_route(v6, index, h.table, ifname)
                .await?;
            changes.push(format!("routed {family} table {} via {ifname}", h.table));
        }
    }
    Ok(changes)
}

/// Removes the rules and the table's default route. The route would go with the device, but
/// the device often stays: the agent's `--remove` and a reload without the link leave the
/// tunnel manager's device in place, and so does a tunnel spec that drops its hand-off.
pub async fn remove(rtnl: &Rtnl, h: &Handoff) -> Result<()> {
    for v6 in [false, true] {
        for rule in rtnl.fwmark_rules(v6, h.fwmark, h.table).await? {
            rtnl.del_rule(rule).await?;
        }
        rtnl.del_default_routes(v6, h.table).await?;
    }
    Ok(())
}

/// What is missing, for health reports.
pub async fn problems(rtnl: &Rtnl, index: u32, ifname: &str, h: &Handoff) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        if rtnl.fwmark_rules(v6, h.fwmark, h.table).await?.is_empty() {
            out.push(format!(
                "{family} rule fwmark {:#x} lookup {} missing",
                h.fwmark, h.table
            ));
        }
        if !rtnl.has_default_route(v6, index, h.table).await? {
            out.push(format!(
                "{family} default route via {ifname} in table {} missing",
                h.table
            ));
        }
    }
    Ok(out)
}
