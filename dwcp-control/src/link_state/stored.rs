//! Link figures shared through the cluster store (etcd mode), the pure half: what a gateway
//! publishes of the links it terminates, when, and which of the published figures a reader
//! takes as current. The I/O is `dwcp-agent`'s (`store/figures.rs`, `agent/cluster.rs`).
//!
//! The store's figures are for the operator's picture of the whole network (a gateway that
//! has just joined, or one no record reaches): they never change a link's health or routes.
//! In-band records stay what routing and failover use.
//!
//! When: the same notion of a meaningful change as the in-band records (`origin::moved`, the
//! `[link_state]` thresholds), at most once per `figures_interval`, and a write every
//! `refresh_interval` even when nothing moved, so that a reader can tell live figures from
//! those of a gateway gone: a reader takes figures measured more than `max_age` ago as gone.
//! Ages are read on the reader's wall clock, so gateways' clocks must agree within seconds
//! (NTP), as the reservations' expiry already requires.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topology::LinkId;

use super::config::LinkStateConfig;
use super::origin::moved;
use super::record::Figures;

/// A gateway's entry in the store: the figures it measured on each link it terminates, and
/// when (its wall clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFigures {
    pub gateway: String,
    pub measured_unix_ms: u64,
    /// By link id, in increasing order.
    pub links: Vec<StoredLink>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLink {
    pub link: LinkId,
    pub figures: Figures,
}

/// A link's figures as a reader takes them from the store (`Input::StoredFigures`): the
/// freshest entry's, and who measured them when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLinkFigures {
    pub link: LinkId,
    pub figures: Figures,
    pub gateway: String,
    pub measured_unix_ms: u64,
}

/// When a gateway writes its entry. Times are a monotonic clock's nanoseconds.
#[derive(Clone, Debug)]
pub struct FiguresSchedule {
    config: LinkStateConfig,
    /// The figures of the last write that succeeded, and when it was made.
    written: Option<(BTreeMap<LinkId, Figures>, u64)>,
}

impl FiguresSchedule {
    /// With the `[link_state]` thresholds, `figures_interval` and `refresh_interval`.
    pub fn new(config: LinkStateConfig) -> FiguresSchedule {
        FiguresSchedule {
            config,
            written: None,
        }
    }

    /// When `current` (the figures measured now) must be written: at once the first time,
    /// `figures_interval` after the last write when a link's figures moved enough or the set
    /// of links changed, else `refresh_interval` after it.
    pub fn due_at(&self, current: &BTreeMap<LinkId, Figures>) -> u64 {
        let Some((written, at_ns)) = &self.written else {
            return 0;
        };
        let changed = written.len() != current.len()
            || written
                .iter()
                .zip(current)
                .any(|((l0, old), (l1, new))| l0 != l1 || moved(old, new, &self.config.thresholds));
        let after = if changed {
            self.config.figures_interval
        } else {
            self.config.refresh_interval
        };
        at_ns.saturating_add(after.as_nanos() as u64)
    }

    /// `current` was written at `now_ns` (a failed write is not recorded: it stays due).
    pub fn written(&mut self, current: BTreeMap<LinkId, Figures>, now_ns: u64) {
        self.written = Some((current, now_ns));
    }
}

/// Per link, the freshest of `entries` measured at most `max_age` before `now_unix_ms` (a
/// measurement time ahead of the reader's clock counts as now).
pub fn current_figures<'a>(
    entries: impl IntoIterator<Item = &'a StoredFigures>,
    now_unix_ms: u64,
    max_age: std::time::Duration,
) -> Vec<StoredLinkFigures> {
    let max_age_ms = max_age.as_millis() as u64;
    let mut best: BTreeMap<LinkId, StoredLinkFigures> = BTreeMap::new();
    for e in entries {
        if now_unix_ms.saturating_sub(e.measured_unix_ms) > max_age_ms {
            continue;
        }
        for l in &e.links {
            let fresher = best
                .get(&l.link)
                .is_none_or(|b| e.measured_unix_ms > b.measured_unix_ms);
            if fresher {
                best.insert(
                    l.link,
                    StoredLinkFigures {
                        link: l.link,
                        figures: l.figures,
                        gateway: e.gateway.clone(),
                        measured_unix_ms: e.measured_unix_ms,
                    },
                );
            }
        }
    }
    best.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn figures(rtt_ms: f64) -> BTreeMap<LinkId, Figures> {
        [(
            LinkId(1),
            Figures::quantise(Some(rtt_ms), Some(1.0), Some(0.0), Some(0.3)),
        )]
        .into()
    }

    /// Figures that churn every 10 ms for 10 s are written at most once a second; noise is
    /// written only at the refresh; a new link is a change.
    #[test]
    fn writes_follow_meaningful_changes_at_most_once_per_interval_and_refresh_when_still() {
        let config = LinkStateConfig::default();
        let mut s = FiguresSchedule::new(config);
        assert_eq!(s.due_at(&figures(50.0)), 0, "the first write is at once");
        let mut writes = Vec::new();
        for step in 0..1_000u64 {
            let now = step * 10 * MS;
            // 50 ms and 80 ms alternately: every step a move of 60 %.
            let f = figures(if step.is_multiple_of(2) { 50.0 } else { 80.0 });
            if s.due_at(&f) <= now {
                s.written(f, now);
                writes.push(now / MS);
            }
        }
        assert_eq!(writes.len(), 10, "{writes:?}");
        assert!(
            writes.windows(2).all(|w| w[1] - w[0] >= 1_000),
            "{writes:?}"
        );

        // Still (a 5 % move, under the 10 %): written again only at the refresh.
        let mut s = FiguresSchedule::new(config);
        s.written(figures(50.0), 0);
        let refresh = config.refresh_interval.as_nanos() as u64;
        assert_eq!(s.due_at(&figures(52.5)), refresh);
        assert_eq!(
            s.due_at(&figures(60.0)),
            config.figures_interval.as_nanos() as u64
        );
        let mut two = figures(50.0);
        two.insert(LinkId(2), Figures::default());
        assert_eq!(s.due_at(&two), config.figures_interval.as_nanos() as u64);
        assert_eq!(
            s.due_at(&BTreeMap::new()),
            config.figures_interval.as_nanos() as u64
        );
    }

    #[test]
    fn readers_take_the_freshest_figures_and_drop_those_too_old() {
        let entry = |gateway: &str, at: u64, links: &[(u32, f64)]| StoredFigures {
            gateway: gateway.into(),
            measured_unix_ms: at,
            links: links
                .iter()
                .map(|&(l, rtt)| StoredLink {
                    link: LinkId(l),
                    figures: Figures::quantise(Some(rtt), None, None, None),
                })
                .collect(),
        };
        let a = entry("gw-a", 100_000, &[(1, 10.0), (2, 20.0)]);
        let b = entry("gw-b", 110_000, &[(1, 11.0), (3, 30.0)]);
        let gone = entry("gw-gone", 10_000, &[(4, 40.0)]);
        let max_age = Duration::from_secs(60);
        let now = 120_000;
        let got = current_figures([&a, &b, &gone], now, max_age);
        let summary: Vec<(u32, &str, Option<u32>)> = got
            .iter()
            .map(|f| (f.link.0, f.gateway.as_str(), f.figures.rtt_us))
            .collect();
        assert_eq!(
            summary,
            [
                (1, "gw-b", Some(11_000)),
                (2, "gw-a", Some(20_000)),
                (3, "gw-b", Some(30_000)),
            ],
            "gw-gone measured 110 s ago"
        );
        // A clock ahead of the reader's: taken as now, not as gone.
        let ahead = entry("gw-ahead", now + 5_000, &[(4, 40.0)]);
        assert_eq!(current_figures([&ahead], now, max_age).len(), 1);
        // At exactly max_age it is still current; one millisecond later it is not.
        assert_eq!(current_figures([&a], 160_000, max_age).len(), 2);
        assert!(current_figures([&a], 160_001, max_age).is_empty());
    }
}
