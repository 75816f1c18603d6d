//! Reservations, the network they are admitted on, and the API's request types.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use dwcp_common::QosClass;
use serde::{Deserialize, Serialize};

use super::error::BandwidthError;
use super::number::RawNumber;
use crate::topology::LinkId;

/// Seconds since the Unix epoch. Time is always passed in (`now`) so tests control it.
pub type UnixSeconds = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Largest rate one reservation may ask for: 10 Tbit/s. Keeps sums of many rates far from
/// overflow and catches unit mistakes.
pub const MAX_RATE_BPS: u64 = 10_000_000_000_000;
/// Latest start or end: 9999-12-31T23:59:59Z.
pub const MAX_TIME: UnixSeconds = 253_402_300_799;
/// Priorities run from 0 (lowest) to 7 (highest); a reservation may preempt only reservations
/// of strictly lower priority.
pub const MAX_PRIORITY: u8 = 7;
/// Links in one reservation's path.
pub const MAX_PATH_LINKS: usize = 16;
/// Characters of an owner name.
pub const MAX_OWNER_LEN: usize = 128;

/// An admitted reservation: `rate_bps` on every link of `path` during `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: ReservationId,
    /// Who asked for it; preemption notifications name it.
    pub owner: String,
    pub source: String,
    pub destination: String,
    #[serde(with = "class_name")]
    pub class: QosClass,
    pub rate_bps: u64,
    pub start: UnixSeconds,
    pub end: UnixSeconds,
    pub priority: u8,
    pub path: Vec<LinkId>,
}

impl Reservation {
    pub fn active_at(&self, t: UnixSeconds) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether the two half-open windows `[start, end)` share an instant.
    pub fn overlaps(&self, start: UnixSeconds, end: UnixSeconds) -> bool {
        self.start < end && start < self.end
    }

    pub fn uses(&self, link: LinkId) -> bool {
        self.path.contains(&link)
    }

    /// The invariants validation gives every admitted reservation; a stored one that breaks
    /// them was not written by us (or was damaged).
    pub fn check(&self) -> Result<(), String> {
        let what = if !(1..=MAX_RATE_BPS).contains(&self.rate_bps) {
            "rate out of range"
        } else if self.start >= self.end || self.end > MAX_TIME {
            "window is empty or out of range"
        } else if self.priority > MAX_PRIORITY {
            "priority out of range"
        } else if self.path.is_empty() || self.path.len() > MAX_PATH_LINKS {
            "path is empty or too long"
        } else if self
            .path
            .iter()
            .enumerate()
            .any(|(i, l)| self.path[..i].contains(l))
        {
            "path repeats a link"
        } else {
            return Ok(());
        };
        Err(format!("reservation {}: {what}", self.id))
    }
}

/// What the manager admits against: the regions it knows and each link's capacity in bit/s.
/// The topology module fills it; the manager keeps its own copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub regions: BTreeSet<String>,
    pub link_capacity_bps: BTreeMap<LinkId, u64>,
}

/// Body of "create a reservation". Numbers are taken raw so that a negative, fractional or
/// oversized value is rejected by validation with the field's name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationRequest {
    #[serde(default)]
    pub owner: String,
    pub source: String,
    pub destination: String,
    /// `critical`, `realtime`, `interactive`, `bulk` or `best-effort`.
    pub class: String,
    /// Bits per second: a number, or a string such as `"100M"`.
    pub rate: RawNumber,
    /// Unix seconds; absent or in the past means now.
    #[serde(default)]
    pub start: Option<RawNumber>,
    /// Unix seconds, after `start`.
    pub end: RawNumber,
    /// 0 (lowest) to 7; absent means the class's default (`default_priority`).
    #[serde(default)]
    pub priority: Option<RawNumber>,
    /// Link ids from source to destination.
    pub path: Vec<RawNumber>,
    /// The client's name for this request (1 to 64 of `A-Z a-z 0-9 . _ -`): in etcd mode, the
    /// same request sent again with it (a retry after a timeout) returns the reservation the
    /// first one made instead of booking another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Longest `request_id`.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Checks a client's `request_id` (it names a key of the cluster store).
pub fn check_request_id(id: &str) -> Result<(), BandwidthError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
        return Err(BandwidthError::BadRequestId("1 to 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(BandwidthError::BadRequestId(
            "only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Body of "extend a reservation".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// New end, unix seconds, later than the current end.
    pub end: RawNumber,
}

/// Priority of a reservation that does not give one: higher classes preempt lower ones.
pub const fn default_priority(class: QosClass) -> u8 {
    match class {
        QosClass::Critical => 6,
        QosClass::Realtime => 5,
        QosClass::Interactive => 4,
        QosClass::Bulk => 2,
        QosClass::BestEffort => 1,
    }
}

pub fn parse_class(name: &str) -> Result<QosClass, BandwidthError> {
    QosClass::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| BandwidthError::UnknownClass(name.to_owned()))
}

/// Serde for `QosClass` by its name (`"best-effort"`), as users write it.
pub mod class_name {
    use dwcp_common::QosClass;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(class: &QosClass, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(class.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<QosClass, D::Error> {
        let name = String::deserialize(d)?;
        super::parse_class(&name).map_err(D::Error::custom)
    }
}
