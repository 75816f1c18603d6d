//! Errors of route computation. A constraint that cannot be met is an error naming it, never a
//! route that silently violates it.
use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq)]
pub enum RoutingError {
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    #[error("unknown region id {0}")]
    UnknownRegionId(u32),
    #[error("source and destination are the same region {0:?}: traffic stays local")]
    SameRegion(String),
    #[error("invalid strategy: {0}")]
    InvalidStrategy(String),
    #[error("invalid constraint {constraint}: {reason}")]
    InvalidConstraint {
        constraint: &'static str,
        reason: String,
    },
    #[error(
        "no usable path from {src} to {dst}: the regions are disconnected (links down or missing)"
    )]
    Unreachable { src: String, dst: String },
    #[error("no path from {src} to {dst} satisfies {constraint}: {detail}")]
    ConstraintUnsatisfiable {
        src: String,
        dst: String,
        constraint: &'static str,
        detail: String,
    },
}
