//! Token-bucket parameters for the fast path's policers (the XDP policer itself is in
//! dwcp-ebpf). One bucket per active reservation (its rate) and, in TE mode, one per flow group
//! (destination, class) that TE could not grant its whole demand (its grant). Why policing in XDP and shaping only at tc egress: see docs/TRAFFIC.md.

use std::collections::BTreeMap;

use dwcp_common::QosClass;
use serde::{Deserialize, Serialize};

use super::te::{FlowGroup, TePlan};
use crate::bandwidth::Reservation;

/// What the policer does with a packet over the rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverRate {
    /// Re-mark to best effort: the excess still goes, without the guarantee.
    #[default]
    Remark,
    Drop,
}

impl OverRate {
    /// The fast path's `Policer.action` for this choice.
    pub fn police_action(self) -> u8 {
        match self {
            OverRate::Remark => dwcp_common::POLICE_REMARK,
            OverRate::Drop => dwcp_common::POLICE_DROP,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicingConfig {
    /// Burst a bucket holds, as time at its rate. About one WAN round trip, so a TCP flow
    /// at the rate is not hit by loss bursts.
    pub burst_ms: u32,
    pub reservation_over_rate: OverRate,
    pub class_over_rate: OverRate,
}

impl Default for PolicingConfig {
    fn default() -> Self {
        PolicingConfig {
            burst_ms: 50,
            reservation_over_rate: OverRate::Remark,
            class_over_rate: OverRate::Remark,
        }
    }
}

/// Smallest bucket: two full-size Ethernet frames, so that a low rate still passes a packet.
pub const MIN_BURST_BYTES: u64 = 2 * 1518;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    pub rate_bps: u64,
    pub burst_bytes: u64,
    pub over_rate: OverRate,
}

impl TokenBucket {
    pub fn new(rate_bps: u64, burst_ms: u32, over_rate: OverRate) -> Self {
        let burst = u128::from(rate_bps) * u128::from(burst_ms) / 8_000;
        TokenBucket {
            rate_bps,
            burst_bytes: (burst as u64).max(MIN_BURST_BYTES),
            over_rate,
        }
    }
}

/// The policer of one reservation.
pub fn reservation_policer(r: &Reservation, config: &PolicingConfig) -> TokenBucket {
    TokenBucket::new(r.rate_bps, config.burst_ms, config.reservation_over_rate)
}

/// Policers of the flow groups (destination, class) that TE could not grant their whole
/// demand — B4's rate limit at the allocation: each such group sends at most its grant, and
/// what it sends beyond is re-marked (or dropped) by `class_over_rate`. A group granted all
/// it asks gets none: a policer at the measured demand would cut its growth before the next
/// estimate. Best effort is never policed (it is where re-marked traffic goes).
pub fn flow_group_policers(
    plan: &TePlan,
    config: &PolicingConfig,
) -> BTreeMap<FlowGroup, TokenBucket> {
    plan.flows
        .iter()
        .filter(|((_, class), a)| *class != QosClass::BestEffort && a.granted_bps < a.demand_bps)
        .map(|(group, a)| {
            (
                group.clone(),
                TokenBucket::new(a.granted_bps, config.burst_ms, config.class_over_rate),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::te::FlowAllocation;

    #[test]
    fn buckets_hold_the_burst_time_at_their_rate() {
        let b = TokenBucket::new(100_000_000, 50, OverRate::Drop);
        assert_eq!(b.burst_bytes, 625_000); // 100 Mbit/s for 50 ms
        assert_eq!(
            TokenBucket::new(64_000, 50, OverRate::Remark).burst_bytes,
            MIN_BURST_BYTES
        );
        assert_eq!(
            TokenBucket::new(u64::MAX, u32::MAX, OverRate::Remark).rate_bps,
            u64::MAX
        );
    }

    #[test]
    fn only_flow_groups_granted_less_than_their_demand_are_policed_at_their_grant() {
        let mut plan = TePlan::default();
        let alloc = |demand, granted| FlowAllocation {
            demand_bps: demand,
            granted_bps: granted,
            ..Default::default()
        };
        plan.flows.insert(
            ("us".into(), QosClass::Realtime),
            alloc(10_000_000, 10_000_000),
        );
        plan.flows.insert(
            ("ap".into(), QosClass::Realtime),
            alloc(50_000_000, 30_000_000),
        );
        plan.flows
            .insert(("ap".into(), QosClass::Bulk), alloc(20_000_000, 0));
        plan.flows
            .insert(("ap".into(), QosClass::BestEffort), alloc(90, 5));
        let p = flow_group_policers(&plan, &PolicingConfig::default());
        let rates: Vec<(&str, QosClass, u64)> = p
            .iter()
            .map(|((d, c), b)| (d.as_str(), *c, b.rate_bps))
            .collect();
        assert_eq!(
            rates,
            [
                ("ap", QosClass::Realtime, 30_000_000),
                ("ap", QosClass::Bulk, 0)
            ]
        );
        assert!(p.values().all(|b| b.over_rate == OverRate::Remark));
    }
}
