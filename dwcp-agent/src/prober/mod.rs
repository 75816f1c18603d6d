//! The standalone prober (`dwcp-prober`): sends the link probes from a process of its own, so
//! that the fast path keeps detecting dead links and failing over while the agent is stopped
//! (restarted, upgraded, crashed).
//!
//! Why a separate process: liveness is decided in the kernel from probe replies, but the
//! probes are sent from userspace (XDP cannot originate packets). If the agent sent them, a
//! stopped agent would make every monitored link look dead at once, and the fast path would
//! stop forwarding exactly when nobody is there to fix it. BFD daemons are kept apart from
//! routing daemons for the same reason (FRR's bfdd).
//!
//! The prober needs nothing from the agent but the pinned maps: it probes every monitored
//! link named by a valid next hop ([`scan_links`]) with the link's key from `PROBE_KEYS`
//! (made by the first sender of the link), rescans them every second to follow the
//! agent's changes, slows the probes of dead links down (its own [`LinkMonitor`] over
//! `LINK_STATE` drives the backoff), and publishes its per-link sent counts in the pinned
//! `PROBE_SENT` map for the agent's monitor ([`PinnedProbeCounts`]).

mod scan;
mod sent;

pub use scan::{interface_name, scan_links, LinkScan, ScanProblem};
pub use sent::{open_sent_map, PinnedProbeCounts, SentMapError, PROBE_SENT};

use std::{collections::BTreeMap, future::Future, path::PathBuf, time::Duration};

use aya::maps::{Array, MapData, MapError};
use dwcp_common::{maps::names, LinkConfig, NextHop};
use dwcp_dataplane::{LinkStateMap, PinnedMapError, PinnedMaps, ProbeKeys};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::probe::{
    open_probe_socket, LinkEvent, LinkMonitor, MonitorConfig, MonitorConfigError, ProbeCounts,
    ProbeHandle, ProbeLink, ProbeSender, SenderConfig, SenderError,
};

#[derive(Debug, Error)]
pub enum ProberError {
    #[error(transparent)]
    PinnedMap(#[from] PinnedMapError),
    #[error("reading map {map}: {source}")]
    ReadMap { map: &'static str, source: MapError },
    #[error(transparent)]
    SentMap(#[from] SentMapError),
    #[error("monitor settings: {0}")]
    Monitor(#[from] MonitorConfigError),
    #[error("probe sender: {0}")]
    Sender(#[from] SenderError),
    #[error("the sender's probe interval ({sender:?}) differs from the monitor's ({monitor:?})")]
    IntervalMismatch { sender: Duration, monitor: Duration },
    #[error("rescan interval must be at least the probe interval, got {0:?}")]
    RescanInterval(Duration),
}

/// Settings of the prober.
#[derive(Clone, Debug, PartialEq)]
pub struct ProberConfig {
    /// Where the fast path's maps are pinned (the agent's pin directory).
    pub pin_dir: PathBuf,
    pub sender: SenderConfig,
    /// Drives the re-probe backoff only; the agent runs its own monitor for link events.
    pub monitor: MonitorConfig,
    /// How often the maps are read again for added, changed or removed links.
    pub rescan_interval: Duration,
}

impl ProberConfig {
    pub fn new(pin_dir: impl Into<PathBuf>) -> ProberConfig {
        ProberConfig {
            pin_dir: pin_dir.into(),
            sender: SenderConfig::default(),
            monitor: MonitorConfig::default(),
            rescan_interval: Duration::from_secs(1),
        }
    }

    pub fn validate(&self) -> Result<(), ProberError> {
        self.monitor.validate()?;
        if self.sender.interval != self.monitor.interval {
            return Err(ProberError::IntervalMismatch {
                sender: self.sender.interval,
                monitor: self.monitor.interval,
            });
        }
        if self.rescan_interval < self.sender.interval {
            return Err(ProberError::RescanInterval(self.rescan_interval));
        }
        Ok(())
    }
}

/// Puts the calling thread in the `SCHED_FIFO` real-time class at `priority` (1-99), so its
/// probes leave on time on a busy host: a prober starved for longer than the detection time
/// makes healthy links look dead. Needs root or `CAP_SYS_NICE` (systemd:
/// `CPUSchedulingPolicy=fifo`).
pub fn set_realtime_priority(priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 = the calling thread; param is ours.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a rescan changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RescanOutcome {
    pub added: Vec<u32>,
    pub removed: Vec<u32>,
    pub problems: Vec<String>,
}

/// The running prober. Create it inside a tokio runtime whose thread is in the gateway's
/// network namespace: the probe sockets are opened there.
pub struct Prober {
    config: ProberConfig,
    nexthops: Array<MapData, NextHop>,
    link_config: Array<MapData, LinkConfig>,
    keys: ProbeKeys,
    sent_map: Array<MapData, u64>,
    sender: ProbeSender,
    handle: ProbeHandle,
    monitor: LinkMonitor<LinkStateMap<MapData>, ProbeHandle>,
    events: mpsc::Receiver<LinkEvent>,
    probed: BTreeMap<u32, ProbeLink>,
    /// Problems of the last rescan, so each is logged once and not every second.
    problems: Vec<String>,
}

impl Prober {
    /// Opens the pinned maps and starts probing the links they name.
    pub fn start(config: ProberConfig) -> Result<Prober, ProberError> {
        config.validate()?;
        let maps = PinnedMaps::new(&config.pin_dir);
        let sender = ProbeSender::new(config.sender)?;
        let handle = sender.handle();
        let (tx, events) = mpsc::channel(64);
        let monitor = LinkMonitor::new(
            config.monitor,
            LinkStateMap(maps.link_state()?),
            handle.clone(),
            tx,
        )?;
        let mut prober = Prober {
            nexthops: maps.nexthops()?,
            link_config: maps.link_config()?,
            keys: maps.probe_keys()?,
            sent_map: open_sent_map(&config.pin_dir)?,
            config,
            sender,
            handle,
            monitor,
            events,
            probed: BTreeMap::new(),
            problems: Vec::new(),
        };
        prober.rescan()?;
        Ok(prober)
    }

    /// Counters of the probe tasks (sent, send errors).
    pub fn handle(&self) -> ProbeHandle {
        self.handle.clone()
    }

    /// The links being probed.
    pub fn links(&self) -> &BTreeMap<u32, ProbeLink> {
        &self.probed
    }

    /// Reads the maps again and starts, restarts or stops link probes to match them.
    pub fn rescan(&mut self) -> Result<RescanOutcome, ProberError> {
        let mut hops = Vec::new();
        for (id, nh) in self.nexthops.iter().enumerate() {
            let nh = nh.map_err(|source| ProberError::ReadMap {
                map: names::NEXTHOPS,
                source,
            })?;
            hops.push((id as u32, nh));
        }
        let link_config = &self.link_config;
        let keys = &mut self.keys;
        let scan = scan_links(
            hops,
            |l| link_config.get(&l, 0).ok(),
            interface_name,
            |l| keys.get_or_create(l),
        );
        let mut out = RescanOutcome {
            problems: scan.problems.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let stale: Vec<u32> = self
            .probed
            .iter()
            .filter(|(id, link)| scan.links.get(id) != Some(link))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.sender.remove_link(id)?;
            self.probed.remove(&id);
            out.removed.push(id);
        }
        for (id, link) in scan.links {
            if self.probed.contains_key(&id) {
                continue;
            }
            // A socket that cannot be opened (address not configured yet, say) is retried at
            // the next rescan; the other links are probed meanwhile.
            match open_probe_socket(&link, &self.config.sender)
                .and_then(|s| self.sender.add_link(link.clone(), s))
            {
                Ok(()) => {
                    self.probed.insert(id, link);
                    out.added.push(id);
                }
                Err(e) => out.problems.push(e.to_string()),
            }
        }
        if !out.added.is_empty() || !out.removed.is_empty() {
            tracing::info!(added = ?out.added, removed = ?out.removed, "probed links changed");
        }
        if out.problems != self.problems {
            for p in &out.problems {
                tracing::warn!("{p}");
            }
            self.problems = out.problems.clone();
        }
        Ok(out)
    }

    /// One step: drive the backoff from the kernel's link state and publish the sent counts.
    pub async fn tick(&mut self) {
        self.monitor.poll().await;
        // The monitor logs its events; nobody else here wants them.
        while self.events.try_recv().is_ok() {}
        for id in self.handle.links() {
            if let Some(n) = self.handle.sent(id) {
                // Best effort: a failed write only delays the agent's loss figure.
                let _ = self.sent_map.set(id, n, 0);
            }
        }
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.config.monitor.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.tick().await; // the first tick is immediate and start() has just scanned
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => self.tick().await,
                _ = rescan.tick() => {
                    if let Err(e) = self.rescan() {
                        tracing::error!(error = %e, "rescanning the pinned maps failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_setting() {
        let mut c = ProberConfig::new("/nonexistent");
        c.validate().unwrap();
        c.sender.interval = Duration::from_millis(20);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "the sender's probe interval (20ms) differs from the monitor's (10ms)"
        );
        let mut c = ProberConfig::new("/nonexistent");
        c.rescan_interval = Duration::from_millis(1);
        assert!(matches!(c.validate(), Err(ProberError::RescanInterval(_))));
    }

    #[tokio::test]
    async fn missing_pins_are_reported_with_their_path() {
        let e = Prober::start(ProberConfig::new("/sys/fs/bpf/dwcp-no-such-dir"))
            .err()
            .expect("no maps there");
        assert!(
            e.to_string().starts_with(
                "map LINK_STATE: cannot open the pin /sys/fs/bpf/dwcp-no-such-dir/LINK_STATE"
            ),
            "{e}"
        );
    }
}
