//! The kernel half of the WireGuard local links (`kind = "wireguard"`): for each, the policy
//! rule `fwmark <fwmark> lookup <table>`, the route `default dev <device> table <table>` and
//! the table's unreachable default (IPv4 and IPv6, `tunnels::handoff`), so the packets the
//! fast path marks go into the WireGuard device or nowhere, never in clear text. The device itself belongs to the tunnel manager: the agent neither
//! creates nor removes it.
//!
//! [`Handoffs::sync`] is idempotent: it removes the rules and table routes of links that
//! left the configuration (or whose mark/table changed), makes the wanted ones exist, and
//! returns what is still missing per link (device absent, rule or route not there), for the
//! tunnel views.
//! A link that was removed from the configuration while the agent was stopped keeps its rule
//! until `dwcp-agent --remove` runs with a configuration that still names it.
//!
//! Liveness of a WireGuard link: a monitored one (tunnel addresses configured) is probed
//! inside the tunnel like a VXLAN link (the probe sender, and the WireGuard device's tc
//! program the daemon attaches, `dwcp-ebpf` `tc.rs`), so the fast path skips it within the
//! detection time. Besides, for every WireGuard link: the device's up/down state and its
//! presence (netlink, as for any interface: a device down or deleted takes the link down),
//! and, from the device's backend (kernel WireGuard over generic netlink, else wireguard-go
//! over its UAPI socket `/var/run/wireguard/<dev>.sock`, `get=1`), the age of the latest
//! handshake of the peers that have a persistent keepalive:
//! older than [`HANDSHAKE_STALE`] (180 s, after which WireGuard itself rejects the session,
//! plus a 30 s margin) or none at all = down ([`handshake_verdict`]). Peers without a
//! persistent keepalive are not judged by their handshakes (WireGuard handshakes only when
//! there is traffic, so an idle link would look dead and never get traffic back).
//! The same read gives the tunnel view its handshake time and RX/TX ([`reading`]); a device
//! that is missing or does not answer gives none (shown as "-").
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

use dwcp_control::{config::AgentConfig, input::WireGuardReading};
use dwcp_tunnels::{
    error::TunnelError,
    handoff,
    netns::NetnsTarget,
    rtnl::Rtnl,
    spec::Handoff,
    wireguard::{kernel::KernelWireGuard, uapi::UserspaceWireGuard, DeviceStatus},
};

/// A handshake older than this (WireGuard's REJECT_AFTER_TIME, 180 s, plus a 30 s margin)
/// means the peer is gone.
pub const HANDSHAKE_STALE: Duration = Duration::from_secs(210);

/// Whether a WireGuard device's handshakes say its link is down: `Some(reason)` when some
/// peer has a persistent keepalive (so handshakes must keep happening) and none of those has
/// handshaken within [`HANDSHAKE_STALE`]; `None` when one has, or when no peer keeps the
/// session alive (not measurable: see the module documentation).
pub fn handshake_verdict(status: &DeviceStatus, now: SystemTime) -> Option<String> {
    let kept: Vec<_> = status
        .peers
        .iter()
        .filter(|p| p.persistent_keepalive.is_some_and(|k| k > 0))
        .collect();
    if kept.is_empty() {
        return None;
    }
    let newest = kept.iter().filter_map(|p| p.handshake_age(now)).min();
    match newest {
        Some(age) if age <= HANDSHAKE_STALE => None,
        Some(age) => Some(format!(
            "latest WireGuard handshake {} s ago (limit {} s)",
            age.as_secs(),
            HANDSHAKE_STALE.as_secs()
        )),
        None => Some("no WireGuard handshake yet".into()),
    }
}

/// What the agent shows of a WireGuard device: the newest handshake among its peers and the
/// bytes summed over them.
pub fn reading(status: &DeviceStatus) -> WireGuardReading {
    WireGuardReading {
        last_handshake_unix_s: status
            .peers
            .iter()
            .filter_map(|p| p.last_handshake)
            .max()
            .map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            }),
        rx_bytes: status.peers.iter().map(|p| p.rx_bytes).sum(),
        tx_bytes: status.peers.iter().map(|p| p.tx_bytes).sum(),
    }
}

/// Bound of one device read (a healthy wireguard-go answers its UAPI `get` in well under a
/// millisecond): the state owner's loop awaits the reads.
const DEVICE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// The hand-off rules this agent installed, by link id.
pub struct Handoffs {
    rtnl: Rtnl,
    installed: BTreeMap<u32, Handoff>,
    /// Kernel WireGuard's generic netlink family, when the module is loaded.
    kernel: Option<KernelWireGuard>,
}

impl Handoffs {
    /// An rtnetlink connection in the current namespace (inside a tokio runtime).
    pub async fn open() -> Result<Handoffs, TunnelError> {
        let rtnl = Rtnl::connect(&NetnsTarget::Current).await?;
        Ok(Handoffs {
            kernel: KernelWireGuard::connect(&NetnsTarget::Current, rtnl.clone()).await?,
            rtnl,
            installed: BTreeMap::new(),
        })
    }

    /// Makes the policy routing of `config`'s WireGuard links exist and removes the rules and
    /// table routes of links no longer configured. Returns the problems per link (empty
    /// entry: none).
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
                // Rule and unreachable default without the device: what the fast path still
                // marks for the link is dropped, not routed in clear by the main table.
                Ok(None) => {
                    match handoff::ensure_fail_closed(&self.rtnl, h).await {
                        Ok(changes) => {
                            for c in changes {
                                info!(link = id, device = ifname, "hand-off: {c}");
                            }
                            self.installed.insert(id, *h);
                        }
                        Err(e) => warn!(link = id, device = ifname, error = %e, "hand-off"),
                    }
                    vec![format!("WireGuard device {ifname} missing")]
                }
                Err(e) => vec![e.to_string()],
            };
            problems.insert(id, found);
        }
        problems.retain(|_, p: &mut Vec<String>| !p.is_empty());
        problems
    }

    /// Every WireGuard link of `config`: its handshake verdict and its device's reading, from
    /// kernel WireGuard (generic netlink) for a kernel device, else from wireguard-go (UAPI).
    /// A link whose device is missing or whose backend does not answer gets `(None, None)`:
    /// not measured.
    pub async fn handshakes(
        &self,
        config: &AgentConfig,
    ) -> BTreeMap<u32, (Option<String>, Option<WireGuardReading>)> {
        let wg = UserspaceWireGuard::new(
            "wireguard-go".into(),
            NetnsTarget::Current,
            self.rtnl.clone(),
        );
        let now = SystemTime::now();
        let mut out = BTreeMap::new();
        for l in config.local_links.iter().filter(|l| l.is_wireguard()) {
            let read = async {
                // The kernel backend answers `None` for a device that is not a kernel one.
                let kernel = match &self.kernel {
                    Some(k) => k.get(&l.interface).await,
                    None => Ok(None),
                };
                match kernel {
                    Ok(None) => wg.get(&l.interface).await,
                    found => found,
                }
            };
            // The state owner waits for this: a hung wireguard-go must not hold it up.
            let measured = match tokio::time::timeout(DEVICE_READ_TIMEOUT, read).await {
                Ok(Ok(Some(status))) => (handshake_verdict(&status, now), Some(reading(&status))),
                Ok(Ok(None)) => (None, None),
                Ok(Err(e)) => {
                    tracing::debug!(link = l.link_id, error = %e, "WireGuard device unreadable");
                    (None, None)
                }
                Err(_) => {
                    tracing::debug!(link = l.link_id, "WireGuard device did not answer in time");
                    (None, None)
                }
            };
            out.insert(l.link_id, measured);
        }
        out
    }
}

/// Removes the hand-off rules and table routes of every WireGuard link of `config`
/// (`dwcp-agent --remove`). Returns how many links had rules.
pub async fn remove_all(config: &AgentConfig) -> Result<usize, TunnelError> {
    if !config.local_links.iter().any(|l| l.is_wireguard()) {
        return Ok(0);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_tunnels::wireguard::{PeerStatus, PublicKey};

    fn peer(keepalive: Option<u16>, handshake_s_ago: Option<u64>, now: SystemTime) -> PeerStatus {
        PeerStatus {
            public_key: PublicKey::from_bytes([7; 32]),
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: keepalive,
            allowed_ips: Vec::new(),
            last_handshake: handshake_s_ago.map(|s| now - Duration::from_secs(s)),
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    #[test]
    fn reading_takes_the_newest_handshake_and_sums_the_bytes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut a = peer(Some(25), None, t0);
        a.last_handshake = Some(t0);
        (a.rx_bytes, a.tx_bytes) = (100, 200);
        let mut b = peer(None, None, t0);
        b.last_handshake = Some(t0 + Duration::from_millis(1500));
        (b.rx_bytes, b.tx_bytes) = (1, 2);
        let dev = DeviceStatus {
            peers: vec![a, b],
            ..Default::default()
        };
        assert_eq!(
            reading(&dev),
            WireGuardReading {
                last_handshake_unix_s: Some(1_700_000_001.5),
                rx_bytes: 101,
                tx_bytes: 202,
            }
        );
        // No peer, or none that handshook: no handshake time, not a made-up one.
        let none = reading(&DeviceStatus::default());
        assert_eq!(none.last_handshake_unix_s, None);
        let idle = DeviceStatus {
            peers: vec![peer(Some(25), None, t0)],
            ..Default::default()
        };
        assert_eq!(reading(&idle).last_handshake_unix_s, None);
    }

    #[test]
    fn handshake_age_decides_only_for_kept_alive_peers() {
        let now = SystemTime::now();
        let dev = |peers| DeviceStatus {
            peers,
            ..Default::default()
        };
        assert_eq!(handshake_verdict(&dev(vec![]), now), None);
        // No keepalive: an idle session does not handshake; not measured.
        assert_eq!(
            handshake_verdict(&dev(vec![peer(None, Some(10_000), now)]), now),
            None
        );
        assert_eq!(
            handshake_verdict(&dev(vec![peer(Some(25), Some(120), now)]), now),
            None
        );
        assert_eq!(
            handshake_verdict(&dev(vec![peer(Some(25), Some(210), now)]), now),
            None,
            "the limit itself is still fresh"
        );
        let v = handshake_verdict(&dev(vec![peer(Some(25), Some(211), now)]), now).unwrap();
        assert!(v.contains("211 s ago") && v.contains("limit 210 s"), "{v}");
        let v = handshake_verdict(&dev(vec![peer(Some(25), None, now)]), now).unwrap();
        assert!(v.contains("no WireGuard handshake"), "{v}");
        // Any fresh kept-alive peer keeps the link up.
        assert_eq!(
            handshake_verdict(
                &dev(vec![
                    peer(Some(25), Some(500), now),
                    peer(Some(25), Some(5), now)
                ]),
                now
            ),
            None
        );
    }
}
