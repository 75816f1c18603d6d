//! Split accounting: the share of traffic each path was meant to get (weights, bucket table)
//! and the share it got (counters), the paths the fast path picks for given flows, and what a
//! split lets demand-limited flows deliver at most.

use dwcp_common::{flow_hash, FlowKey, NextHopTable, NHG_BUCKETS};

use dwcp_control::nhg_table::lookup;

/// Each element's share of the total (all zero when the total is zero).
pub fn shares(amounts: &[u64]) -> Vec<f64> {
    let total: u128 = amounts.iter().map(|&a| u128::from(a)).sum();
    amounts
        .iter()
        .map(|&a| {
            if total == 0 {
                0.0
            } else {
                a as f64 / total as f64
            }
        })
        .collect()
}

/// The share of `table`'s buckets owned by each of `nexthops` (a uniform flow hash sends that
/// share of the flows to it).
pub fn table_shares(table: &NextHopTable, nexthops: &[u32]) -> Vec<f64> {
    let mut owned = vec![0u64; nexthops.len()];
    for &b in &table.buckets {
        let id = table.nexthops[usize::from(b) % table.nexthops.len()];
        if let Some(i) = nexthops.iter().position(|&n| n == id) {
            owned[i] += 1;
        }
    }
    owned
        .iter()
        .map(|&n| n as f64 / NHG_BUCKETS as f64)
        .collect()
}

/// The next hop the fast path gives `flow` in `table` (all members live).
pub fn nexthop_of(flow: &FlowKey, table: &NextHopTable, seed: u32) -> u32 {
    lookup(table, flow_hash(flow, seed))
}

/// How many of `flows` the fast path sends to each of `nexthops`.
pub fn flows_per_nexthop<'a>(
    flows: impl IntoIterator<Item = &'a FlowKey>,
    table: &NextHopTable,
    seed: u32,
    nexthops: &[u32],
) -> Vec<u64> {
    let mut n = vec![0u64; nexthops.len()];
    for f in flows {
        let id = nexthop_of(f, table, seed);
        if let Some(i) = nexthops.iter().position(|&x| x == id) {
            n[i] += 1;
        }
    }
    n
}

/// Configured and achieved shares of one split, path by path.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitAccuracy {
    pub configured: Vec<f64>,
    pub achieved: Vec<f64>,
}

impl SplitAccuracy {
    /// Achieved share minus configured share, per path.
    pub fn errors(&self) -> Vec<f64> {
        self.achieved
            .iter()
            .zip(&self.configured)
            .map(|(a, c)| a - c)
            .collect()
    }

    /// The largest absolute difference between achieved and configured share.
    pub fn max_abs_error(&self) -> f64 {
        self.errors().iter().fold(0.0, |m, e| m.max(e.abs()))
    }
}

/// The most that flows each offering `per_flow_bps` can deliver over paths of
/// `capacities_bps` when `flows[i]` of them are on path `i`: every path carries its flows'
/// demand or its capacity, whichever is smaller.
pub fn split_limited_bps(flows: &[u64], per_flow_bps: f64, capacities_bps: &[u64]) -> f64 {
    flows
        .iter()
        .zip(capacities_bps)
        .map(|(&n, &c)| (n as f64 * per_flow_bps).min(c as f64))
        .sum()
}

/// Jain's fairness index of `rates`: 1 when all are equal, 1/n when one takes everything.
pub fn jain_index(rates: &[f64]) -> f64 {
    let sum: f64 = rates.iter().sum();
    let sq: f64 = rates.iter().map(|r| r * r).sum();
    if rates.is_empty() || sq == 0.0 {
        return 1.0;
    }
    sum * sum / (rates.len() as f64 * sq)
}

/// Bytes a full-sized TCP segment occupies on the underlay, and the payload it carries: the
/// share of an underlay link's capacity TCP goodput can reach at most. `inner_mtu` is the
/// regions' IP MTU; the segment carries timestamps (12 bytes of options), and the underlay
/// frame adds outer Ethernet, IPv4, UDP, VXLAN and the inner Ethernet header.
pub fn tcp_goodput_ceiling(inner_mtu: u32) -> f64 {
    use dwcp_common::wire::{ETH_HLEN, IPV4_HLEN, UDP_HLEN, VXLAN_HLEN};
    const TCP_HLEN_WITH_TIMESTAMPS: u32 = 20 + 12;
    let payload = inner_mtu - IPV4_HLEN as u32 - TCP_HLEN_WITH_TIMESTAMPS;
    let frame = inner_mtu + (2 * ETH_HLEN + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN) as u32;
    payload as f64 / frame as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_dataplane::build_table;
    use dwcp_dataplane::Member;
    use proptest::prelude::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                nexthop: i as u32 + 1,
                weight,
                path: Default::default(),
            })
            .collect()
    }

    fn flow(src_port: u16) -> FlowKey {
        FlowKey {
            src: [u32::from(std::net::Ipv4Addr::new(10, 1, 0, 2)), 0, 0, 0],
            dst: [u32::from(std::net::Ipv4Addr::new(10, 2, 0, 2)), 0, 0, 0],
            src_port,
            dst_port: 5201,
            proto: 6,
        }
    }

    #[test]
    fn shares_of_counts() {
        assert_eq!(shares(&[1, 3]), vec![0.25, 0.75]);
        assert_eq!(shares(&[0, 0]), vec![0.0, 0.0]);
        assert_eq!(shares(&[u64::MAX, u64::MAX]), vec![0.5, 0.5]);
    }

    #[test]
    fn wecmp_table_follows_the_weights_to_one_bucket() {
        let t = build_table(&members(&[1, 2, 4]), None).unwrap();
        let s = table_shares(&t, &[1, 2, 3]);
        for (got, want) in s.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
            assert!((got - want).abs() <= 1.0 / NHG_BUCKETS as f64, "{s:?}");
        }
        // A next hop outside the table owns nothing.
        assert_eq!(table_shares(&t, &[9]), vec![0.0]);
    }

    #[test]
    fn accuracy_errors() {
        let a = SplitAccuracy {
            configured: vec![0.25, 0.75],
            achieved: vec![0.3, 0.7],
        };
        let e = a.errors();
        assert!((e[0] - 0.05).abs() < 1e-12 && (e[1] + 0.05).abs() < 1e-12);
        assert!((a.max_abs_error() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn split_limits() {
        // 3 flows of 20 on a 50 path, 1 on a 100 path: 50 + 20.
        assert_eq!(split_limited_bps(&[3, 1], 20.0, &[50, 100]), 70.0);
        assert_eq!(split_limited_bps(&[0, 0], 20.0, &[50, 100]), 0.0);
    }

    #[test]
    fn jain() {
        assert_eq!(jain_index(&[5.0, 5.0, 5.0]), 1.0);
        assert!((jain_index(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert_eq!(jain_index(&[]), 1.0);
    }

    #[test]
    fn goodput_ceiling_at_1500() {
        // 1448 bytes of payload in a 1564-byte underlay frame.
        assert!((tcp_goodput_ceiling(1500) - 1448.0 / 1564.0).abs() < 1e-12);
    }

    proptest! {
        /// Counting flows through the table agrees with asking for each flow's next hop one
        /// by one, and every flow lands on a member.
        #[test]
        fn flow_counts_match_lookups(
            weights in proptest::collection::vec(1u32..20, 1..5),
            ports in proptest::collection::vec(any::<u16>(), 0..200),
            seed in any::<u32>(),
        ) {
            let t = build_table(&members(&weights), None).unwrap();
            let ids: Vec<u32> = (1..=weights.len() as u32).collect();
            let flows: Vec<FlowKey> = ports.iter().map(|&p| flow(p)).collect();
            let counts = flows_per_nexthop(&flows, &t, seed, &ids);
            prop_assert_eq!(counts.iter().sum::<u64>(), flows.len() as u64);
            for (i, id) in ids.iter().enumerate() {
                let direct = flows.iter().filter(|f| nexthop_of(f, &t, seed) == *id).count();
                prop_assert_eq!(counts[i], direct as u64);
            }
        }

        /// Table shares sum to one and each is within one bucket of the weight's share.
        #[test]
        fn table_shares_follow_weights(weights in proptest::collection::vec(1u32..50, 1..5)) {
            let t = build_table(&members(&weights), None).unwrap();
            let ids: Vec<u32> = (1..=weights.len() as u32).collect();
            let s = table_shares(&t, &ids);
            prop_assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            let total: u32 = weights.iter().sum();
            for (got, w) in s.iter().zip(&weights) {
                let want = f64::from(*w) / f64::from(total);
                prop_assert!((got - want).abs() <= 1.0 / NHG_BUCKETS as f64 + 1e-12);
            }
        }
    }
}
