//! Hand-off from the fast path into a WireGuard tunnel. XDP cannot encrypt, so for a next hop
//! that is a WireGuard tunnel the fast path passes the packet up with a mark; policy routing
//! then sends marked packets through the tunnel:
//!
//! ```text
//! ip rule add fwmark <fwmark> lookup <table> pref <priority>      (IPv4 and IPv6)
//! ip route replace default dev <tunnel> table <table>             (IPv4 and IPv6)
//! ip route add unreachable default metric 4294967295 table <table> (IPv4 and IPv6)
//! ```
//!
//! The unreachable route makes the hand-off fail closed. A policy rule whose table has no
//! matching route falls through to the next rules and so to the main table, whose default
//! route leads out of the underlay: without it, a marked packet would leave in clear text
//! whenever the tunnel's route is gone — the device deleted, its wireguard-go daemon dead
//! (the TUN device goes with it), the device down (the kernel flushes its routes) or the route
//! deleted. With it, the lookup ends in table `<table>` for every marked packet, forwarded or
//! local: while the device's route exists it wins (any metric is lower), and without it the
//! packet is dropped with an ICMP unreachable to its sender (counted by the kernel as
//! `InNoRoutes`/`OutNoRoutes`, `nstat`). The route has no device, so it outlives the tunnel
//! and is removed only with the rule.
//!
//! XDP itself cannot set `skb->mark`; the mark is set by a tc ingress program that looks up
//! the mark the LAN XDP program recorded for the packet's flow (`HANDOFF_FLOWS`) — both
//! belong to the fast path (dwcp-ebpf). See docs/tunnels.md for the contract.

use super::{error::Result, rtnl::Rtnl, spec::Handoff};

/// Metric of the unreachable default route: the last resort of the hand-off's table, below
/// the device's route whatever metric that has.
pub const FAIL_CLOSED_METRIC: u32 = u32::MAX;

/// Makes the rules and routes exist; returns what was changed.
pub async fn ensure(rtnl: &Rtnl, index: u32, ifname: &str, h: &Handoff) -> Result<Vec<String>> {
    let mut changes = ensure_fail_closed(rtnl, h).await?;
    for v6 in [false, true] {
        if !rtnl.has_default_route(v6, index, h.table).await? {
            rtnl.replace_default_route(v6, index, h.table, ifname)
                .await?;
            changes.push(format!(
                "routed {} table {} via {ifname}",
                family(v6),
                h.table
            ));
        }
    }
    Ok(changes)
}

/// Makes the rules and the unreachable defaults exist, not the device's route: what holds
/// while the device is missing, so that marked packets are dropped rather than sent in clear.
/// Returns what was changed.
pub async fn ensure_fail_closed(rtnl: &Rtnl, h: &Handoff) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    for v6 in [false, true] {
        // Before the rule: from the first packet the rule sends to the table on, the lookup
        // never falls through to the main table.
        if !rtnl.has_unreachable_default(v6, h.table).await? {
            rtnl.add_unreachable_default(v6, h.table, FAIL_CLOSED_METRIC)
                .await?;
            changes.push(format!(
                "added {} unreachable default to table {} (fail closed)",
                family(v6),
                h.table
            ));
        }
        if rtnl.fwmark_rules(v6, h.fwmark, h.table).await?.is_empty() {
            rtnl.add_fwmark_rule(v6, h.fwmark, h.table, h.priority)
                .await?;
            changes.push(format!(
                "added {} rule fwmark {:#x} lookup {} pref {}",
                family(v6),
                h.fwmark,
                h.table,
                h.priority
            ));
        }
    }
    Ok(changes)
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
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
        let family = family(v6);
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
        if !rtnl.has_unreachable_default(v6, h.table).await? {
            out.push(format!(
                "{family} unreachable default in table {} missing: marked packets would fall \
                 through to the main table",
                h.table
            ));
        }
    }
    Ok(out)
}
