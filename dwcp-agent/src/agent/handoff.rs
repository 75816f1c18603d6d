//! The kernel half of the WireGuard local links (`kind = "wireguard"`): for each, the policy
//! rule `fwmark <fwmark> lookup <table>` and the route `default dev <device> table <table>`
//! (IPv4 and IPv6, `tunnels::handoff`), so the packets the fast path marks go into the
//! WireGuard device. The device itself belongs to the tunnel manager: the agent neither
//! creates nor removes it.
//!
//! [`Handoffs::sync`] is idempotent: it removes the rules of links that left the
//! configuration (or whose mark/table changed), makes the wanted ones exist, and returns what
//! is still missing per link (device absent, rule or route not there), for the tunnel views.
//! A link that was removed from the configuration while the agent was stopped keeps its rule
//! until `dwcp-agent --remove` runs with a configuration that still names it.
use std::collections::BTreeMap;

use tracing::{info, warn};

use super::config::AgentConfig;
use crate::tunnels::{error::TunnelError, handoff, netns::NetnsTarget, rtnl::Rtnl, spec::Handoff};

/// The hand-off rules this agent installed, by link id.
pub struct Handoffs {
    rtnl: Rtnl,
    installed: BTreeMap<u32, Handoff>,
}

impl Handoffs {
    /// An rtnetlink connection in the current namespace (inside a tokio runtime).
    pub async fn open() -> Result<Handoffs, TunnelError> {
        Ok(Handoffs {
            rtnl: Rtnl::connect(&NetnsTarget::Current).await?,
            installed: BTreeMap::new(),
        })
    }

    /// Makes the policy routing of `config`'s WireGuard links exist and removes the rules of
    /// links no longer configured. Returns the problems per link (empty entry: none).
    pub async fn sync(&mut self, config: &AgentConfig) -> BTreeMap<u32, Vec<String>> {
        let wanted: BTreeMap<u32, (&str, &Handoff)> = config
            .local_links
            .iter()
            .filter_map(|l| Some((l.link_id, (l.interface.as_str(), l.handoff.as_ref()?))))
            .collect();
        let stale: Vec<(u32, Handoff)> = self
            .installed
            .iter()
            .filter(|(id, h)| wanted.get(id).map(|(_, w)| *w) != Some(*h))
            .map(|(id, h)| (*id, *h))
            .collect();
        for (id, h) in stale {
            match handoff::remove(&self.rtnl, &h).await {
                Ok(()) => {
                    info!(
                        link = id,
                        fwmark = h.fwmark,
                        table = h.table,
                        "hand-off rule removed"
                    );
                    self.installed.remove(&id);
                }
                Err(e) => warn!(link = id, error = %e, "removing the hand-off rule"),
            }
        }
        let mut problems = BTreeMap::new();
        for (id, (ifname, h)) in wanted {
            let found = match self.rtnl.link(ifname).await {
                Ok(Some(link)) => {
                    match handoff::ensure(&self.rtnl, link.index, ifname, h).await {
                        Ok(changes) => {
                            for c in changes {
                                info!(link = id, device = ifname, "hand-off: {c}");
                            }
                            self.installed.insert(id, *h);
                        }
                        Err(e) => warn!(link = id, device = ifname, error = %e, "hand-off"),
                    }
                    handoff::problems(&self.rtnl, link.index, ifname, h)
                        .await
                        .unwrap_or_else(|e| vec![e.to_string()])
                }
                Ok(None) => vec![format!("WireGuard device {ifname} missing")],
                Err(e) => vec![e.to_string()],
            };
            problems.insert(id, found);
        }
        problems.retain(|_, p: &mut Vec<String>| !p.is_empty());
        problems
    }
}

/// Removes the hand-off rules of every WireGuard link of `config` (`dwcp-agent --remove`).
/// Returns how many links had some.
pub async fn remove_all(config: &AgentConfig) -> Result<usize, TunnelError> {
    let rtnl = Rtnl::connect(&NetnsTarget::Current).await?;
    let mut n = 0;
    for h in config.local_links.iter().filter_map(|l| l.handoff.as_ref()) {
        let mut had = false;
        for v6 in [false, true] {
            had |= !rtnl.fwmark_rules(v6, h.fwmark, h.table).await?.is_empty();
        }
        handoff::remove(&rtnl, h).await?;
        n += usize::from(had);
    }
    Ok(n)
}
