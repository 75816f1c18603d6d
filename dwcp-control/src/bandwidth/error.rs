//! Errors of the bandwidth manager. Each names the offending item; `http_status` tells the API
//! which status to answer with.

use std::path::PathBuf;

use super::model::{ReservationId, UnixSeconds};
use crate::topology::LinkId;

#[derive(Debug, thiserror::Error)]
pub enum BandwidthError {
    #[error("{field}: {value} is negative; it must be positive")]
    Negative { field: &'static str, value: String },
    #[error("{field}: {value} is not positive; it must be at least 1")]
    NotPositive { field: &'static str, value: String },
    #[error("{field}: {value} is out of range (at most {max})")]
    OutOfRange {
        field: &'static str,
        value: String,
        max: u64,
    },
    #[error("{field}: {value} is not {expected}")]
    NotANumber {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{field}: unknown region {region:?}")]
    UnknownRegion { field: &'static str, region: String },
    #[error("source and destination are the same region {0:?}")]
    SameRegion(String),
    #[error("class: unknown QoS class {0:?} (expected one of critical, realtime, interactive, bulk, best-effort)")]
    UnknownClass(String),
    #[error("owner: {0}")]
    BadOwner(&'static str),
    #[error("end: {end} is not after start {start}")]
    EndNotAfterStart {
        start: UnixSeconds,
        end: UnixSeconds,
    },
    #[error("end: {end} is not in the future (now is {now})")]
    EndInPast { end: UnixSeconds, now: UnixSeconds },
    #[error("path: empty; a reservation needs at least one link")]
    EmptyPath,
    #[error("path: {len} links, at most {max} allowed")]
    PathTooLong { len: usize, max: usize },
    #[error("path: unknown link {0}")]
    UnknownLink(LinkId),
    #[error("path: link {0} appears twice")]
    DuplicateLink(LinkId),
    #[error(
        "link {link}: {requested_bps} bit/s requested but only {free_bps} of {reservable_bps} \
         reservable bit/s are free between {start} and {end}, even after preempting every \
         lower-priority reservation"
    )]
    InsufficientBandwidth {
        link: LinkId,
        requested_bps: u64,
        free_bps: u64,
        reservable_bps: u64,
        start: UnixSeconds,
        end: UnixSeconds,
    },
    #[error("reservation {0} not found")]
    NotFound(ReservationId),
    #[error("reservation {id} ended at {end}; it can no longer be extended")]
    Ended { id: ReservationId, end: UnixSeconds },
    #[error("end: {new_end} does not extend reservation {id}, which already ends at {end}")]
    NotAnExtension {
        id: ReservationId,
        end: UnixSeconds,
        new_end: UnixSeconds,
    },
    #[error("too many reservations: at most {0} may be stored")]
    TooManyReservations(usize),
    #[error("headroom_percent: {0} is out of range (at most 99)")]
    BadHeadroom(u8),
    /// The agent was given no store, so it has no manager.
    #[error("this agent keeps no reservations")]
    NoReservations,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// In etcd mode: the cluster store did not decide (`detail` says why); nothing was
    /// admitted or cancelled by this request.
    #[error("{detail}")]
    ClusterStore { detail: String, unreachable: bool },
    #[error("request_id: {0}")]
    BadRequestId(&'static str),
    #[error(
        "request_id {request_id} was used for another request (reservation {id}); nothing was \
         admitted: a new request needs a new id"
    )]
    RequestIdReused {
        request_id: String,
        id: ReservationId,
    },
    #[error(
        "request_id {request_id} already made reservation {id}, which was {how} since; nothing \
         was admitted"
    )]
    RequestAlreadyUndone {
        request_id: String,
        id: ReservationId,
        how: String,
    },
}

impl BandwidthError {
    /// The HTTP status an API should answer with: 400 for bad input, 404 for an unknown
    /// reservation, 410 for one that has ended, 409 when the network cannot take the request,
    /// 500 when storage failed, 501 when there are no reservations to ask about, 503 when the
    /// cluster store is unreachable and 502 when it failed otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            BandwidthError::NotFound(_) => 404,
            BandwidthError::Ended { .. } | BandwidthError::RequestAlreadyUndone { .. } => 410,
            BandwidthError::InsufficientBandwidth { .. }
            | BandwidthError::TooManyReservations(_)
            | BandwidthError::RequestIdReused { .. } => 409,
            BandwidthError::Store(_) | BandwidthError::BadHeadroom(_) => 500,
            BandwidthError::NoReservations => 501,
            BandwidthError::ClusterStore { unreachable, .. } => {
                if *unreachable {
                    503
                } else {
                    502
                }
            }
            _ => 400,
        }
    }
}

/// Persistence failures. A store that cannot be read is an error, never an empty set.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reservation store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reservation store {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "reservation store {path} has format version {found}, this agent reads version {expected}"
    )]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}
