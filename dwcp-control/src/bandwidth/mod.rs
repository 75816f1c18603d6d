//! Bandwidth reservations: `rate` bit/s from one region to another over a fixed path of links,
//! during `[start, end)`, in a QoS class, with a priority.
//!
//! - Admission is time-aware and atomic: a reservation is admitted only if, at every instant of
//!   its window, every link of its path has room for it next to the reservations already
//!   there (within the link's reservable capacity: capacity less a headroom, 20 % by default).
//! - If there is no room, reservations of strictly lower priority are preempted: from the
//!   lowest tiers possible, and only those needed. Their owners are told (`ReservationEvent`).
//! - Every change is written to the store (`FileStore`: fsync + atomic rename) before it takes
//!   effect; if the write fails, nothing changes.
//! - Time is a parameter (`now`), so the daemon drives expiry from a timer
//!   (`next_change_after`) and tests drive it by hand.

mod admission;
mod error;
mod manager;
mod model;
mod number;
mod store;

pub use admission::{load_at, peak_load, reservable_bps};
pub use error::{BandwidthError, StoreError};
pub use manager::{Admission, Listener, ManagerConfig, ReservationEvent, ReservationManager};
pub use model::{
    class_name, default_priority, parse_class, ExtendRequest, Network, Reservation, ReservationId,
    ReservationRequest, UnixSeconds, MAX_OWNER_LEN, MAX_PATH_LINKS, MAX_PRIORITY, MAX_RATE_BPS,
    MAX_TIME,
};
pub use number::RawNumber;
pub use store::{FileStore, MemoryStore, ReservationStore, StateView, StoredState, STORE_VERSION};

#[cfg(test)]
mod tests;
