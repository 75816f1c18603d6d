//! Traffic engineering: how each destination's traffic is split over its (up to 4) paths,
//! and what the counters say about the result.
//!
//! - `weights`: ECMP (equal), WECMP (proportional to available bandwidth, after a headroom of
//!   20 % by default and after reservations), small integer weights for the bucket table.
//! - `te`: QoS-aware TE: reservations first, then the five classes in strict priority, max-min
//!   fair within a class (B4/SWAN).
//! - `engineer`: `TrafficEngineer` keeps topology, load and reservations, and reports the
//!   next-hop groups whose weights changed.
//! - `rates`: `RateTracker` turns per-CPU counter snapshots into per-link and per-class rates
//!   and utilisation, current and projected with reservations.
//! - `top_flows`: a bounded table of the heaviest flows from sampled packets.
//! - `sampling`: the packets the fast path samples (`FLOW_SAMPLES`) and the flows' views.
//! - `policing`: token-bucket parameters for the XDP policers, per reservation and per class.

mod engineer;
pub mod policing;
mod rates;
pub mod sampling;
pub mod te;
mod top_flows;
pub mod weights;

pub use engineer::{
    GroupWeights, LinkStatus, SplitMode, TrafficConfig, TrafficEngineer, TrafficError,
};
pub use policing::{OverRate, PolicingConfig, TokenBucket};
pub use rates::{sum_per_cpu, CounterSnapshot, Rate, RateError, RateTracker};
pub use sampling::{flow_address, FlowsView, SampledPacket, TopFlowView};
pub use te::{DestinationPaths, FlowAllocation, FlowGroup, Pinned, TePlan};
pub use top_flows::{FlowSample, TopFlow, TopFlows};
pub use weights::{PathView, MAX_PATHS, MAX_WEIGHT};
