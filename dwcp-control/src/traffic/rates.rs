//! Rates from the fast path's per-CPU counters: the agent reads `NH_STATS` and `CLASS_STATS`
//! periodically, sums the CPUs (`sum_per_cpu`) and feeds the snapshots here.

use std::collections::{BTreeMap, BTreeSet};

use dwcp_common::qos::QOS_CLASSES;
use dwcp_common::Counters;
use serde::Serialize;

use crate::topology::LinkId;

/// Counters read at one instant (summed over CPUs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Monotonic clock, ns (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns`).
    pub at_ns: u64,
    /// Per next-hop index (`NH_STATS`).
    pub nexthops: BTreeMap<u32, Counters>,
    /// Per class id (`CLASS_STATS`).
    pub classes: [Counters; QOS_CLASSES],
}

/// Sum of one counter over the CPUs (a per-CPU map read gives one value per CPU).
pub fn sum_per_cpu<'a>(values: impl IntoIterator<Item = &'a Counters>) -> Counters {
    values
        .into_iter()
        .fold(Counters::default(), |acc, c| Counters {
            packets: acc.packets.wrapping_add(c.packets),
            bytes: acc.bytes.wrapping_add(c.bytes),
        })
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rate {
    pub bits_per_sec: f64,
    pub packets_per_sec: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateError {
    #[error("counter snapshot at {now_ns} ns is older than the previous one at {previous_ns} ns")]
    TimeWentBackwards { previous_ns: u64, now_ns: u64 },
    #[error("smoothing: {0} is not in (0, 1]")]
    BadSmoothing(String),
}

/// Current (last interval) and smoothed (EWMA) rates per link and per class.
#[derive(Debug)]
pub struct RateTracker {
    nexthop_links: BTreeMap<u32, LinkId>,
    capacity_bps: BTreeMap<LinkId, u64>,
    /// Weight of the newest interval in the moving average.
    smoothing: f64,
    last: Option<CounterSnapshot>,
    links: BTreeMap<LinkId, (Rate, Rate)>,
    classes: [Option<(Rate, Rate)>; QOS_CLASSES],
}

impl RateTracker {
    pub fn new(smoothing: f64) -> Result<Self, RateError> {
        if !(smoothing > 0.0 && smoothing <= 1.0) {
            return Err(RateError::BadSmoothing(smoothing.to_string()));
        }
        Ok(RateTracker {
            nexthop_links: BTreeMap::new(),
            capacity_bps: BTreeMap::new(),
            smoothing,
            last: None,
            links: BTreeMap::new(),
            classes: [None; QOS_CLASSES],
        })
    }

    /// Which link each next hop rides on (`NextHop.link_id`) and each link's capacity.
    pub fn set_links(
        &mut self,
        nexthop_links: BTreeMap<u32, LinkId>,
        capacity_bps: BTreeMap<LinkId, u64>,
    ) {
        self.links.retain(|l, _| capacity_bps.contains_key(l));
        self.nexthop_links = nexthop_links;
        self.capacity_bps = capacity_bps;
    }

    /// Takes a snapshot. Rates need two; a counter that went down (map recreated) gives no
    /// rate for that interval rather than a bogus one.
    pub fn observe(&mut self, snap: CounterSnapshot) -> Result<(), RateError> {
        let Some(last) = &self.last else {
            self.last = Some(snap);
            return Ok(());
        };
        if snap.at_ns < last.at_ns {
            return Err(RateError::TimeWentBackwards {
                previous_ns: last.at_ns,
                now_ns: snap.at_ns,
            });
        }
        let dt = (snap.at_ns - last.at_ns) as f64 / 1e9;
        if dt == 0.0 {
            return Ok(());
        }
        let mut sums: BTreeMap<LinkId, Counters> = BTreeMap::new();
        let mut broken: BTreeSet<LinkId> = BTreeSet::new();
        for (nh, &link) in &self.nexthop_links {
            let entry = sums.entry(link).or_default();
            match (last.nexthops.get(nh), snap.nexthops.get(nh)) {
                (Some(old), Some(new)) => match delta(old, new) {
                    Some(d) => *entry = sum_per_cpu([&*entry, &d]),
                    None => {
                        broken.insert(link);
                    }
                },
                (None, None) => {}
                _ => {
                    broken.insert(link);
                }
            }
        }
        let alpha = self.smoothing;
        for (link, d) in sums {
            if broken.contains(&link) {
                continue;
            }
            let now = rate(&d, dt);
            let smoothed = self
                .links
                .get(&link)
                .map_or(now, |(_, s)| ewma(s, &now, alpha));
            self.links.insert(link, (now, smoothed));
        }
        for (i, slot) in self.classes.iter_mut().enumerate() {
            if let Some(d) = delta(&last.classes[i], &snap.classes[i]) {
                let now = rate(&d, dt);
                let smoothed = slot.map_or(now, |(_, s)| ewma(&s, &now, alpha));
                *slot = Some((now, smoothed));
            }
        }
        self.last = Some(snap);
        Ok(())
    }

    /// Rate of the last interval on `link`.
    pub fn link_rate(&self, link: LinkId) -> Option<Rate> {
        self.links.get(&link).map(|(now, _)| *now)
    }

    pub fn link_rate_smoothed(&self, link: LinkId) -> Option<Rate> {
        self.links.get(&link).map(|(_, s)| *s)
    }

    pub fn class_rate(&self, class: dwcp_common::QosClass) -> Option<Rate> {
        self.classes[class as usize].map(|(now, _)| now)
    }

    pub fn class_rate_smoothed(&self, class: dwcp_common::QosClass) -> Option<Rate> {
        self.classes[class as usize].map(|(_, s)| s)
    }

    /// Share of the link's capacity used in the last interval (can exceed 1 if the configured
    /// capacity is too low).
    pub fn utilisation(&self, link: LinkId) -> Option<f64> {
        let cap = *self.capacity_bps.get(&link).filter(|&&c| c > 0)?;
        Some(self.link_rate(link)?.bits_per_sec / cap as f64)
    }

    /// Utilisation expected when the reservations change from `reserved_now_bps` to
    /// `reserved_then_bps`: today's unreserved traffic (measured less reserved, assuming
    /// reservations are used in full, the cautious view) plus the future reservations.
    pub fn projected_utilisation(
        &self,
        link: LinkId,
        reserved_now_bps: u64,
        reserved_then_bps: u64,
    ) -> Option<f64> {
        let cap = *self.capacity_bps.get(&link).filter(|&&c| c > 0)?;
        let measured = self.link_rate_smoothed(link)?.bits_per_sec;
        let unreserved = (measured - reserved_now_bps as f64).max(0.0);
        Some((unreserved + reserved_then_bps as f64) / cap as f64)
    }
}

fn delta(old: &Counters, new: &Counters) -> Option<Counters> {
    Some(Counters {
        packets: new.packets.checked_sub(old.packets)?,
        bytes: new.bytes.checked_sub(old.bytes)?,
    })
}

fn rate(d: &Counters, dt: f64) -> Rate {
    Rate {
        bits_per_sec: d.bytes as f64 * 8.0 / dt,
        packets_per_sec: d.packets as f64 / dt,
    }
}

fn ewma(old: &Rate, new: &Rate, alpha: f64) -> Rate {
    Rate {
        bits_per_sec: alpha * new.bits_per_sec + (1.0 - alpha) * old.bits_per_sec,
        packets_per_sec: alpha * new.packets_per_sec + (1.0 - alpha) * old.packets_per_sec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_common::QosClass;

    fn c(packets: u64, bytes: u64) -> Counters {
        Counters { packets, bytes }
    }

    fn snap(at_s: u64, nh: &[(u32, Counters)], bulk: Counters) -> CounterSnapshot {
        let mut classes = [Counters::default(); QOS_CLASSES];
        classes[QosClass::Bulk as usize] = bulk;
        CounterSnapshot {
            at_ns: at_s * 1_000_000_000,
            nexthops: nh.iter().copied().collect(),
            classes,
        }
    }

    #[test]
    fn rates_per_link_and_class_from_counter_deltas() {
        let mut t = RateTracker::new(0.5).unwrap();
        // Next hops 0 and 1 ride link 7 (100 Mbit/s), next hop 2 rides link 8.
        t.set_links(
            [(0, LinkId(7)), (1, LinkId(7)), (2, LinkId(8))].into(),
            [(LinkId(7), 100_000_000), (LinkId(8), 0)].into(),
        );
        t.observe(snap(
            10,
            &[(0, c(0, 0)), (1, c(0, 0)), (2, c(0, 0))],
            c(0, 0),
        ))
        .unwrap();
        assert_eq!(t.link_rate(LinkId(7)), None);
        // 2 s later: 5 MB + 2.5 MB on link 7 = 30 Mbit/s.
        t.observe(snap(
            12,
            &[
                (0, c(4000, 5_000_000)),
                (1, c(2000, 2_500_000)),
                (2, c(1, 100)),
            ],
            c(10, 1_000),
        ))
        .unwrap();
        let r = t.link_rate(LinkId(7)).unwrap();
        assert_eq!(
            r,
            Rate {
                bits_per_sec: 30e6,
                packets_per_sec: 3000.0
            }
        );
        assert_eq!(t.utilisation(LinkId(7)), Some(0.3));
        assert_eq!(t.utilisation(LinkId(8)), None); // unknown capacity
        assert_eq!(t.class_rate(QosClass::Bulk).unwrap().bits_per_sec, 4000.0);
        // Next interval 10 Mbit/s: smoothed halfway.
        t.observe(snap(
            14,
            &[
                (0, c(6000, 7_500_000)),
                (1, c(2000, 2_500_000)),
                (2, c(1, 100)),
            ],
            c(10, 1_000),
        ))
        .unwrap();
        assert_eq!(t.link_rate(LinkId(7)).unwrap().bits_per_sec, 10e6);
        assert_eq!(t.link_rate_smoothed(LinkId(7)).unwrap().bits_per_sec, 20e6);
        // 20M measured of which 15M reserved; 40M reserved later: 5 + 40 = 45 % projected.
        assert_eq!(
            t.projected_utilisation(LinkId(7), 15_000_000, 40_000_000),
            Some(0.45)
        );
    }

    #[test]
    fn a_reset_counter_gives_no_rate_instead_of_a_wrong_one() {
        let mut t = RateTracker::new(1.0).unwrap();
        t.set_links(
            [(0, LinkId(1)), (1, LinkId(2))].into(),
            [(LinkId(1), 1), (LinkId(2), 1)].into(),
        );
        t.observe(snap(1, &[(0, c(10, 1000)), (1, c(10, 1000))], c(0, 0)))
            .unwrap();
        t.observe(snap(2, &[(0, c(20, 2000)), (1, c(20, 2000))], c(0, 0)))
            .unwrap();
        t.observe(snap(3, &[(0, c(5, 500)), (1, c(30, 3000))], c(0, 0)))
            .unwrap();
        assert_eq!(t.link_rate(LinkId(1)).unwrap().bits_per_sec, 8000.0); // kept from before
        assert_eq!(t.link_rate(LinkId(2)).unwrap().bits_per_sec, 8000.0);
        let e = t.observe(snap(2, &[], c(0, 0))).unwrap_err();
        assert_eq!(
            e,
            RateError::TimeWentBackwards {
                previous_ns: 3_000_000_000,
                now_ns: 2_000_000_000
            }
        );
        assert!(RateTracker::new(0.0).is_err());
        assert!(RateTracker::new(f64::NAN).is_err());
    }

    #[test]
    fn per_cpu_values_are_summed() {
        assert_eq!(sum_per_cpu(&[c(1, 10), c(2, 20), c(3, 30)]), c(6, 60));
    }
}
