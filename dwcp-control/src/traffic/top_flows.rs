//! The heaviest flows, in bounded memory: Space-Saving (Metwally, Agrawal, El Abbadi, 2005),
//! weighted by bytes, over sampled packets. With `capacity` entries every flow that carried
//! more than total/capacity bytes is in the table, and each estimate is at most `error` above
//! the truth (never below it).

use std::collections::{BTreeMap, BTreeSet};

use dwcp_common::FlowKey;
use serde::Serialize;

/// One sampled packet (or a batch of one flow's bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSample {
    pub key: FlowKey,
    pub bytes: u64,
    /// QoS class of the packet; the table shows each flow's last.
    pub class: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TopFlow {
    #[serde(skip)]
    pub key: FlowKey,
    /// Estimated bytes, already scaled up by the sampling rate.
    pub bytes: u64,
    /// How much `bytes` may overestimate.
    pub error: u64,
    /// Class of the flow's last sample.
    pub class: u8,
}

/// `FlowKey` as an ordered key.
type Key = ([u32; 4], [u32; 4], u16, u16, u8);

fn key(k: &FlowKey) -> Key {
    (k.src, k.dst, k.src_port, k.dst_port, k.proto)
}

#[derive(Debug)]
pub struct TopFlows {
    capacity: usize,
    sample_every: u64,
    /// Key -> (flow, count, error, class of the last sample).
    entries: BTreeMap<Key, (FlowKey, u64, u64, u8)>,
    by_count: BTreeSet<(u64, Key)>,
    total: u64,
}

impl TopFlows {
    /// `capacity` flows at most; samples stand for `sample_every` packets each (1 = every
    /// packet seen).
    pub fn new(capacity: usize, sample_every: u64) -> Self {
        TopFlows {
            capacity: capacity.max(1),
            sample_every: sample_every.max(1),
            entries: BTreeMap::new(),
            by_count: BTreeSet::new(),
            total: 0,
        }
    }

    pub fn record(&mut self, sample: &FlowSample) {
        let w = sample.bytes.saturating_mul(self.sample_every);
        self.total = self.total.saturating_add(w);
        let k = key(&sample.key);
        if let Some((_, count, _, class)) = self.entries.get_mut(&k) {
            self.by_count.remove(&(*count, k));
            *count = count.saturating_add(w);
            *class = sample.class;
            self.by_count.insert((*count, k));
            return;
        }
        let (count, error) = if self.entries.len() < self.capacity {
            (w, 0)
        } else {
            // Evict the smallest; the newcomer inherits its count as possible error.
            let (min, victim) = self.by_count.pop_first().expect("table is full");
            self.entries.remove(&victim);
            (min.saturating_add(w), min)
        };
        self.entries
            .insert(k, (sample.key, count, error, sample.class));
        self.by_count.insert((count, k));
    }

    /// Bytes recorded (scaled) since the last `clear`.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The `n` heaviest flows, heaviest first.
    pub fn top(&self, n: usize) -> Vec<TopFlow> {
        self.by_count
            .iter()
            .rev()
            .take(n)
            .map(|(_, k)| {
                let (key, bytes, error, class) = self.entries[k];
                TopFlow {
                    key,
                    bytes,
                    error,
                    class,
                }
            })
            .collect()
    }

    /// Starts a new measurement window.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_count.clear();
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flow(i: u16) -> FlowKey {
        FlowKey {
            src: [0x0a00_0001, 0, 0, 0],
            dst: [0x0a01_0001, 0, 0, 0],
            src_port: i,
            dst_port: 443,
            proto: 6,
        }
    }

    #[test]
    fn keeps_the_heavy_flows_in_bounded_memory() {
        let mut t = TopFlows::new(4, 10);
        for round in 0..100u16 {
            t.record(&FlowSample {
                key: flow(1),
                bytes: 1500,
                class: 0,
            });
            t.record(&FlowSample {
                key: flow(2),
                bytes: 700,
                class: 0,
            });
            t.record(&FlowSample {
                key: flow(100 + round),
                bytes: 60,
                class: 0,
            });
        }
        let top = t.top(2);
        assert_eq!(top[0].key, flow(1));
        assert_eq!(top[0].bytes, 100 * 1500 * 10);
        assert_eq!(top[1].key, flow(2));
        assert_eq!(t.top(10).len(), 4);
        assert_eq!(t.total_bytes(), 100 * (1500 + 700 + 60) * 10);
        t.clear();
        assert!(t.top(1).is_empty());
    }

    proptest! {
        /// Against exact counting: estimates bracket the truth within their error, and every
        /// flow above total/capacity is present.
        #[test]
        fn space_saving_guarantees_hold(
            capacity in 1usize..8,
            samples in proptest::collection::vec((0u16..20, 1u64..2000), 1..300),
        ) {
            let mut t = TopFlows::new(capacity, 1);
            let mut exact: BTreeMap<u16, u64> = BTreeMap::new();
            for (f, b) in &samples {
                t.record(&FlowSample { key: flow(*f), bytes: *b, class: 0 });
                *exact.entry(*f).or_default() += b;
            }
            let total: u64 = exact.values().sum();
            let table = t.top(usize::MAX);
            prop_assert!(table.len() <= capacity);
            for e in &table {
                let truth = exact[&e.key.src_port];
                prop_assert!(e.bytes >= truth && e.bytes - e.error <= truth, "{e:?} truth {truth}");
            }
            for (f, &bytes) in &exact {
                if bytes > total / capacity as u64 {
                    prop_assert!(table.iter().any(|e| e.key.src_port == *f), "flow {f} with {bytes} of {total} missing");
                }
            }
        }
    }
}
