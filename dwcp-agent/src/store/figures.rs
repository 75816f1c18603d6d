//! Link figures in the store: each gateway publishes what it measured on the links it
//! terminates (`<prefix>/figures/<gateway>`), so a gateway that has just joined, or one no
//! link-state record reaches, shows the whole network. When to write and what a reader takes
//! as current are `dwcp_control::link_state::stored`'s rules; routing never reads them.
//!
//! One key per gateway, not per (gateway, link): a gateway's links that moved together (a
//! congested region, a restart) make one write, not one per link, and every reader gets one
//! event instead of several. At 100 gateways of about 4 links under churn everywhere, that is
//! at most 100 writes (and revisions) a second instead of 400; at rest, one write per
//! gateway per `refresh_interval` (15 s): about 7 a second. The value stays small (about
//! 100 bytes a link).
//!
//! No lease: a gateway gone is told by the age of its figures (the reader drops those older
//! than `max_age`), so there is no keep-alive stream per gateway, no key on a lease (Cilium
//! found leases holding many keys slow to renew), and no figures deleted in bulk because a
//! lease lapsed while the store was away. The cost: a gone gateway's key stays, small and
//! ignored, until a gateway of that name writes it again.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use dwcp_control::{
    link_state::{Figures, FiguresSchedule, LinkStateConfig, StoredFigures, StoredLink},
    topology::LinkId,
    view::AgentSnapshot,
};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use super::{EtcdStore, Result};

/// Pause before writing again after a write that failed (store unreachable).
const RETRY: Duration = Duration::from_secs(1);

impl EtcdStore {
    /// Writes `entry` as its gateway's figures (a plain put: repeating it is harmless).
    pub async fn put_figures(&self, entry: &StoredFigures) -> Result<()> {
        let key = self.keys.figures_of(&entry.gateway);
        let value = serde_json::to_vec(entry).expect("figures serialise");
        self.call("publish figures", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await
        .map(|_| ())
    }
}

/// The figures this gateway measured on the links it terminates, as its snapshot shows them.
pub fn local_figures(snapshot: &AgentSnapshot) -> BTreeMap<LinkId, Figures> {
    snapshot
        .links
        .iter()
        .filter(|l| l.interface.is_some())
        .map(|l| {
            let ms = |s: Option<f64>| s.map(|s| s * 1e3);
            let figures = Figures::quantise(
                ms(l.rtt_seconds),
                ms(l.jitter_seconds),
                l.loss_ratio,
                l.utilisation_ratio,
            );
            (LinkId(l.id), figures)
        })
        .collect()
}

/// Publishes `gateway`'s figures from its `snapshot` as `timers` schedule them, until the
/// snapshot's sender is gone. Runs on a task of its own: with the store unreachable a write
/// waits for the store's timeout, and is tried again [`RETRY`] later with the figures of
/// then; the snapshot channel keeps only the newest, so nothing queues and nothing else waits.
pub async fn publish_figures(
    store: EtcdStore,
    gateway: String,
    timers: LinkStateConfig,
    mut snapshot: watch::Receiver<Arc<AgentSnapshot>>,
) {
    let start = Instant::now();
    let elapsed_ns = || start.elapsed().as_nanos() as u64;
    let mut schedule = FiguresSchedule::new(timers);
    let mut not_before = 0;
    let mut failing = false;
    loop {
        let current = local_figures(&snapshot.borrow_and_update());
        let now = elapsed_ns();
        let due = schedule.due_at(&current).max(not_before);
        if due <= now {
            let entry = StoredFigures {
                gateway: gateway.clone(),
                measured_unix_ms: unix_now_ms(),
                links: current
                    .iter()
                    .map(|(&link, &figures)| StoredLink { link, figures })
                    .collect(),
            };
            match store.put_figures(&entry).await {
                Ok(()) => {
                    if failing {
                        info!("cluster store: link figures published again");
                    }
                    debug!(
                        links = entry.links.len(),
                        "cluster store: link figures published"
                    );
                    schedule.written(current, now);
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cluster store: link figures not published; retrying every {RETRY:?}");
                    }
                    failing = true;
                    not_before = elapsed_ns() + RETRY.as_nanos() as u64;
                }
            }
            continue;
        }
        tokio::select! {
            changed = snapshot.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_nanos(due - now)) => {}
        }
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
