//! Token-bucket parameters for the fast path's policers (the XDP policer itself is in
//! dwcp-ebpf). One bucket per active reservation (its rate) and one per class (what TE granted
//! the class). Why policing in XDP and shaping only at tc egress: see docs/TRAFFIC.md.

use dwcp_common::qos::QOS_CLASSES;
use dwcp_common::QosClass;
use serde::{Deserialize, Serialize};

use super::te::TePlan;
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

/// Per-class policers from a TE plan: each class may send what TE granted it (over all
/// destinations). Best effort is never policed (it is where re-marked traffic goes); a class
/// with no demand measured gets no policer rather than a zero rate.
pub fn class_policers(
    plan: &TePlan,
    config: &PolicingConfig,
) -> [Option<TokenBucket>; QOS_CLASSES] {
    let mut granted = [0u64; QOS_CLASSES];
    let mut seen = [false; QOS_CLASSES];
    for ((_, class), a) in &plan.flows {
        granted[*class as usize] = granted[*class as usize].saturating_add(a.granted_bps);
        seen[*class as usize] = true;
    }
    std::array::from_fn(|i| {
        (seen[i] && i != QosClass::BestEffort as usize)
            .then(|| TokenBucket::new(granted[i], config.burst_ms, config.class_over_rate))
    })
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
    fn class_policers_sum_the_grants_of_a_class() {
        let mut plan = TePlan::default();
        let grant = |g| FlowAllocation {
            granted_bps: g,
            ..Default::default()
        };
        plan.flows
            .insert(("us".into(), QosClass::Realtime), grant(10_000_000));
        plan.flows
            .insert(("ap".into(), QosClass::Realtime), grant(30_000_000));
        plan.flows.insert(("ap".into(), QosClass::Bulk), grant(0));
        plan.flows
            .insert(("ap".into(), QosClass::BestEffort), grant(5));
        let p = class_policers(&plan, &PolicingConfig::default());
        assert_eq!(p[QosClass::Realtime as usize].unwrap().rate_bps, 40_000_000);
        assert_eq!(p[QosClass::Bulk as usize].unwrap().rate_bps, 0);
        assert_eq!(p[QosClass::Critical as usize], None);
        assert_eq!(p[QosClass::BestEffort as usize], None);
    }
}
