//! Service health checks (TCP connect and HTTP GET) with interval, timeout and rise/fall
//! thresholds, feeding the health of the region the services run in.
//!
//! The pure half: the checks' configuration and the book that turns check results into check
//! transitions and every region's health. The check tasks and their aggregator live in the
//! agent.

mod book;
mod config;

pub use book::{CheckStatus, HealthBook, HealthEvent, RegionHealth, RegionState};
pub use config::{CheckKind, CheckTarget, HealthCheckConfig, HealthCheckSpec};

use std::fmt;

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

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "failure")]
pub enum CheckFailure {
    /// Connection refused: nothing listens.
    Refused,
    /// No complete answer within the timeout.
    Timeout,
    /// Another socket error (unreachable, reset...).
    Io { message: String },
    /// The server answered with a status not expected.
    BadStatus { got: u16, expected: Vec<u16> },
    /// The answer is not HTTP, or ends early.
    BadResponse { message: String },
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckFailure::Refused => write!(f, "connection refused"),
            CheckFailure::Timeout => write!(f, "timed out"),
            CheckFailure::Io { message } => write!(f, "{message}"),
            CheckFailure::BadStatus { got, expected } => {
                write!(f, "status {got}, expected one of {expected:?}")
            }
            CheckFailure::BadResponse { message } => write!(f, "bad response: {message}"),
        }
    }
}
