//! Bandwidth reservations: `rate` bit/s from one region to another over a fixed path of links,
//! during `[start, end)`, in a QoS class, with a priority.
//!
//! - Admission is time-aware and atomic: a reservation is admitted only if, at every instant of
//!   its window, every link of its path has room for it next to the reservations already
//!   there (within the link's reservable capacity: capacity less a headroom, 20 % by default).
//! - If there is no room, reservations of strictly lower priority are preempted: from the
//!   lowest tiers possible, and only those needed. Their owners are told (`ReservationEvent`,
//!   taken by the state owner, which publishes it).
//! - Every change is written to the store (`FileStore`: fsync + atomic rename) before it takes
//!   effect; if the write fails, nothing changes.
//! - Gateways sharing links admit through per-link ledgers in a shared store (`ledger.rs`):
//!   the same rules, decided over the path's ledgers read at one revision.
//! - Time is a parameter (`now`): the state owner expires and activates reservations on its
//!   clock inputs, which the daemon sends when `next_change_after` is due; tests drive it by
//!   hand.

mod admission;
mod error;
mod ledger;
mod manager;
mod model;
mod number;
mod store;

pub use admission::{load_at, peak_load, reservable_bps};
pub use error::{BandwidthError, StoreError};
pub use ledger::{
    plan_admission, plan_batch, BatchOutcome, BatchPlan, Ledger, LedgerError, LedgerPlan, PlanError,
};
pub use manager::{
    extension, Admission, ManagerConfig, ReservationEvent, ReservationEventCounts,
    ReservationManager, ReservationOp, ReservationReply,
};
pub use model::{
    check_request_id, class_name, default_priority, parse_class, ExtendRequest, Network,
    Reservation, ReservationId, ReservationRequest, UnixSeconds, MAX_OWNER_LEN, MAX_PATH_LINKS,
    MAX_PRIORITY, MAX_RATE_BPS, MAX_REQUEST_ID_LEN, MAX_TIME,
};
pub use number::RawNumber;
pub use store::{FileStore, MemoryStore, ReservationStore, StateView, StoredState, STORE_VERSION};

#[cfg(test)]
mod tests;
