//! Service health checks (TCP connect and HTTP GET) with interval, timeout and rise/fall
//! thresholds, feeding the health of the region the services run in.
//!
//! Check tasks only probe and report; one aggregator owns the state ([`HealthBook`]) and
//! publishes check transitions as events and every region's health on a watch channel.

mod book;
mod check;
mod config;
mod runner;

pub use book::{CheckStatus, HealthBook, HealthEvent, RegionHealth, RegionState};
pub use check::{run_check, CheckFailure};
pub use config::{CheckKind, CheckTarget, HealthCheckConfig, HealthCheckSpec};
pub use runner::HealthMonitor;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HealthError {
    #[error("health check {check}: {problem}")]
    Invalid { check: String, problem: String },
    #[error("health check {0} is defined twice")]
    Duplicate(String),
    #[error("unknown health check {0}")]
    Unknown(String),
}
