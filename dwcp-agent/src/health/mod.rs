//! Service health checks (TCP connect and HTTP GET) with interval, timeout and rise/fall
//! thresholds, feeding the health of the region the services run in.
//!
//! Check tasks only probe and report; one aggregator owns the state (`dwcp_control`'s
//! [`HealthBook`]) and publishes check transitions as events and every region's health on a
//! watch channel.

mod check;
mod runner;

pub use check::run_check;
pub use dwcp_control::health::*;
pub use runner::HealthMonitor;
