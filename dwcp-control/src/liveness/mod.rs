//! Link liveness, the pure half of probing: the fast path's rule for when a link carries
//! traffic ([`kernel_usable`]), and the per-link trackers that turn successive readings of the
//! kernel's `LINK_STATE` into link events (down, up, degraded, recovered) with hysteresis,
//! loss windows and the reprobe back-off. The tasks that read the map live in the agent.

mod backoff;
mod loss;
mod tracker;

pub use backoff::Backoff;
pub use loss::LossWindow;
pub use tracker::{
    kernel_usable, DegradeReason, DownReason, LinkEvent, LinkEventKind, LinkStateReadError,
    LinkStateSource, LinkStatus, LinkTracker, LinkView, MonitorConfig, MonitorConfigError,
    ProbeCounts, TrackerOutput,
};
