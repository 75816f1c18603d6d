//! Who sends the probes of the daemon's monitored links: its own sender thread
//! (`probe.sender = "agent"`) or `dwcp-prober` (`"external"`), whose sent counts the link
//! monitor then reads from the pinned `PROBE_SENT` map.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
};

use aya::maps::{Array, MapData};
use dwcp_control::config::{AgentConfig, LocalLink};
use dwcp_dataplane::ProbeKeys;
use tracing::error;

use crate::{
    probe::{open_probe_socket, ProbeCounts, ProbeLink, ProbeSender},
    prober::{open_sent_map, SentMapError},
};

/// Links the monitor watches when another process (`dwcp-prober`) sends the probes: their
/// sent counts come from the prober's pinned `PROBE_SENT` map, so loss is measured as with
/// the agent's own sender.
#[derive(Clone)]
pub(super) struct ExternalProbes {
    links: Arc<RwLock<Vec<u32>>>,
    sent: Arc<Array<MapData, u64>>,
}

impl ExternalProbes {
    pub(super) fn open(pin_dir: &Path) -> Result<ExternalProbes, SentMapError> {
        Ok(ExternalProbes {
            links: Arc::default(),
            sent: Arc::new(open_sent_map(pin_dir)?),
        })
    }

    fn set(&self, links: Vec<u32>) {
        *self.links.write().unwrap_or_else(|e| e.into_inner()) = links;
    }
}

impl ProbeCounts for ExternalProbes {
    fn links(&self) -> Vec<u32> {
        self.links.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn sent(&self, link_id: u32) -> Option<u64> {
        // Unreadable counts read as nothing sent: liveness needs none, and no loss is invented.
        self.links()
            .contains(&link_id)
            .then(|| self.sent.get(&link_id, 0).unwrap_or(0))
    }
    /// The prober backs off on its own.
    fn set_reprobe_backoff(&self, _link_id: u32, _dead: bool) {}
}

pub(super) enum Probes {
    /// The agent's own sender, with the links' keys (`PROBE_KEYS`).
    Agent {
        sender: ProbeSender,
        keys: Box<ProbeKeys>,
    },
    External(ExternalProbes),
}

impl Probes {
    /// The sent counts, for the link monitor.
    pub(super) fn counts(&self) -> Box<dyn ProbeCounts + Send> {
        match self {
            Probes::Agent { sender, .. } => Box::new(sender.handle()),
            Probes::External(e) => Box::new(e.clone()),
        }
    }

    /// Stops probing the links of `config` on interface `name`, which was deleted: their
    /// sockets are bound to it. The next [`Probes::sync`] opens new ones once the interface
    /// (e.g. a re-created WireGuard device) and its address are back.
    pub(super) fn forget_interface(&mut self, config: &AgentConfig, name: &str) {
        if let Probes::Agent { sender, .. } = self {
            for l in config.local_links.iter().filter(|l| l.interface == name) {
                let _ = sender.remove_link(l.link_id);
            }
        }
    }

    /// Probes exactly the monitored local links of `config`.
    pub(super) fn sync(&mut self, config: &AgentConfig) {
        let wanted: Vec<&LocalLink> = config.local_links.iter().filter(|l| l.monitored).collect();
        match self {
            Probes::External(e) => e.set(wanted.iter().map(|l| l.link_id).collect()),
            Probes::Agent { sender, keys } => {
                let handle = sender.handle();
                for id in handle.links() {
                    // Gone, or changed (a rotated shared key, new endpoints): the next
                    // loop starts it again as configured.
                    let current = sender.link(id);
                    let same = |l: &&LocalLink| {
                        l.link_id == id
                            && current.is_some_and(|p| {
                                p.auth == l.auth_key
                                    && p.local == IpAddr::from(l.local_ip)
                                    && p.remote == IpAddr::from(l.peer_ip)
                                    && p.device.as_deref() == Some(l.interface.as_str())
                            })
                    };
                    if !wanted.iter().any(same) {
                        let _ = sender.remove_link(id);
                    }
                }
                let probed = handle.links();
                for l in wanted {
                    if probed.contains(&l.link_id) {
                        continue;
                    }
                    let key = match keys.get_or_create(l.link_id) {
                        Ok(k) => k,
                        Err(e) => {
                            error!(link = l.link_id, error = %e, "no probe key for the link; it stays down");
                            continue;
                        }
                    };
                    let link = ProbeLink {
                        link_id: l.link_id,
                        local: l.local_ip.into(),
                        remote: l.peer_ip.into(),
                        device: Some(l.interface.clone()),
                        key,
                        auth: l.auth_key,
                    };
                    let added = open_probe_socket(&link, sender.config())
                        .and_then(|s| sender.add_link(link, s));
                    if let Err(e) = added {
                        error!(link = l.link_id, error = %e, "cannot probe the link; it stays down");
                    }
                }
            }
        }
    }
}
