//! The link monitor task: polls the kernel's per-link state and the sender's counts on an
//! interval and turns them, through the pure [`LinkTracker`]s, into link events on a channel.

use std::collections::BTreeMap;

use dwcp_control::liveness::{
    LinkEvent, LinkEventKind, LinkStateReadError, LinkStateSource, LinkTracker, LinkView,
    MonitorConfig, MonitorConfigError, ProbeCounts,
};
use tokio::sync::{mpsc, watch};

use super::monotonic_ns;

/// Watches every probed link and sends its events on a channel. Owns the trackers.
pub struct LinkMonitor<S, P> {
    config: MonitorConfig,
    source: S,
    probes: P,
    trackers: BTreeMap<u32, LinkTracker>,
    events: mpsc::Sender<LinkEvent>,
    views: watch::Sender<BTreeMap<u32, LinkView>>,
}

impl<S: LinkStateSource, P: ProbeCounts> LinkMonitor<S, P> {
    pub fn new(
        config: MonitorConfig,
        source: S,
        probes: P,
        events: mpsc::Sender<LinkEvent>,
    ) -> Result<Self, MonitorConfigError> {
        config.validate()?;
        Ok(LinkMonitor {
            config,
            source,
            probes,
            trackers: BTreeMap::new(),
            events,
            views: watch::Sender::new(BTreeMap::new()),
        })
    }

    /// The latest view of every link, updated at each poll.
    pub fn subscribe_views(&self) -> watch::Receiver<BTreeMap<u32, LinkView>> {
        self.views.subscribe()
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// One snapshot of every probed link at `CLOCK_MONOTONIC` now. Returns the events (also
    /// sent on the channel) and the links whose state could not be read; a failed read leaves
    /// that link's tracker untouched.
    pub async fn poll(&mut self) -> (Vec<LinkEvent>, Vec<LinkStateReadError>) {
        let links = self.probes.links();
        self.trackers.retain(|id, _| links.contains(id));
        let mut events = Vec::new();
        let mut errors = Vec::new();
        for link_id in links {
            let Some(sent) = self.probes.sent(link_id) else {
                continue; // removed between the two calls
            };
            let state = match self.source.link_state(link_id) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            // Read the clock after the map: a reply that lands in between is then not in
            // the future of `now`.
            let now = monotonic_ns();
            let tracker = self
                .trackers
                .entry(link_id)
                .or_insert_with(|| LinkTracker::new(link_id, now, &self.config));
            let out = tracker.observe(now, sent, &state, &self.config);
            if let Some(dead) = out.backoff {
                self.probes.set_reprobe_backoff(link_id, dead);
            }
            events.extend(out.events);
        }
        for ev in &events {
            match ev.kind {
                LinkEventKind::Up { .. } | LinkEventKind::Recovered { .. } => {
                    tracing::info!(link_id = ev.link_id, "{ev}")
                }
                _ => tracing::warn!(link_id = ev.link_id, "{ev}"),
            }
            // A closed channel only means nobody listens any more; the views still update.
            let _ = self.events.send(*ev).await;
        }
        self.views.send_replace(
            self.trackers
                .iter()
                .map(|(id, t)| (*id, t.view()))
                .collect(),
        );
        (events, errors)
    }

    /// Polls every `poll_interval` until the event channel is closed.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.events.closed() => return,
            }
            let (_, errors) = self.poll().await;
            // Log a read failure once per episode, not every 10 ms.
            match errors.first() {
                Some(e) if !failing => {
                    tracing::error!(error = %e, "link state unreadable");
                    failing = true;
                }
                None => failing = false,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use dwcp_common::LinkState;
    use dwcp_control::liveness::LinkStatus;

    use super::*;

    fn cfg() -> MonitorConfig {
        MonitorConfig::default()
    }

    fn kinds(evs: &[LinkEvent]) -> Vec<&'static str> {
        evs.iter()
            .map(|e| match e.kind {
                LinkEventKind::Down { .. } => "down",
                LinkEventKind::Up { .. } => "up",
                LinkEventKind::Degraded { .. } => "degraded",
                LinkEventKind::Recovered { .. } => "recovered",
            })
            .collect()
    }

    struct Counts(Mutex<(u64, Vec<(u32, bool)>)>);
    impl ProbeCounts for &Counts {
        fn links(&self) -> Vec<u32> {
            vec![9]
        }
        fn sent(&self, _: u32) -> Option<u64> {
            Some(self.0.lock().unwrap().0)
        }
        fn set_reprobe_backoff(&self, link_id: u32, dead: bool) {
            self.0.lock().unwrap().1.push((link_id, dead));
        }
    }
    struct Map(Mutex<Result<LinkState, ()>>);
    impl LinkStateSource for &Map {
        fn link_state(&self, link_id: u32) -> Result<LinkState, LinkStateReadError> {
            self.0.lock().unwrap().map_err(|_| LinkStateReadError {
                link_id,
                source: "map gone".into(),
            })
        }
    }

    #[tokio::test]
    async fn monitor_sends_events_switches_backoff_and_survives_read_errors() {
        let counts = Counts(Mutex::new((0, vec![])));
        let map = Map(Mutex::new(Ok(LinkState::default())));
        let (tx, mut rx) = mpsc::channel(16);
        let mut m = LinkMonitor::new(cfg(), &map, &counts, tx).unwrap();
        let views = m.subscribe_views();
        let (evs, errs) = m.poll().await;
        assert!(evs.is_empty() && errs.is_empty());
        assert_eq!(views.borrow()[&9].status, LinkStatus::Unknown);
        // A live link: recent reply, long streak.
        *map.0.lock().unwrap() = Ok(LinkState {
            last_reply_ns: monotonic_ns(),
            good_streak: 9,
            replies: 9,
            ..Default::default()
        });
        let (evs, _) = m.poll().await;
        assert_eq!(kinds(&evs), ["up"]);
        assert_eq!(rx.recv().await.unwrap(), evs[0]);
        // The map becomes unreadable: an error naming the link, the view is kept.
        *map.0.lock().unwrap() = Err(());
        let (evs, errs) = m.poll().await;
        assert!(evs.is_empty());
        assert_eq!(
            errs[0].to_string(),
            "cannot read the state of link 9: map gone"
        );
        assert_eq!(views.borrow()[&9].status, LinkStatus::Up);
        // Silent since long ago: down, and the sender is told to back off.
        *map.0.lock().unwrap() = Ok(LinkState {
            last_reply_ns: 1,
            good_streak: 9,
            replies: 9,
            ..Default::default()
        });
        let (evs, _) = m.poll().await;
        assert_eq!(kinds(&evs), ["down"]);
        assert_eq!(counts.0.lock().unwrap().1, vec![(9, true)]);
    }
}
