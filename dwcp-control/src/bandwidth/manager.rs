//! The reservation manager: validates requests, admits them atomically over every link of the
//! path (preempting lower priorities when it must), and stores every change before it takes
//! effect, so a failed write leaves both memory and disk as they were.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::admission::{self, Shortfall};
use super::error::BandwidthError;
use super::model::*;
use super::store::{ReservationStore, StateView, StoredState, STORE_VERSION};
use crate::topology::LinkId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// Share of each link's capacity kept free of reservations (0..=99).
    pub headroom_percent: u8,
    pub max_reservations: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            headroom_percent: 20,
            max_reservations: 100_000,
        }
    }
}

/// What happened to a reservation, once the change is stored. The state owner takes them
/// ([`ReservationManager::take_events`]) and publishes them with its own events; the API
/// filters by `owner()` to notify whoever made the reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ReservationEvent {
    Created {
        reservation: Reservation,
    },
    Extended {
        reservation: Reservation,
        previous_end: UnixSeconds,
    },
    Cancelled {
        reservation: Reservation,
    },
    Expired {
        reservation: Reservation,
    },
    /// Taken away to make room for the higher-priority reservation `by`.
    Preempted {
        reservation: Reservation,
        by: ReservationId,
    },
    /// No longer fits the network (a link was removed or lost capacity).
    Displaced {
        reservation: Reservation,
        link: LinkId,
    },
}

impl ReservationEvent {
    pub fn reservation(&self) -> &Reservation {
        match self {
            ReservationEvent::Created { reservation }
            | ReservationEvent::Extended { reservation, .. }
            | ReservationEvent::Cancelled { reservation }
            | ReservationEvent::Expired { reservation }
            | ReservationEvent::Preempted { reservation, .. }
            | ReservationEvent::Displaced { reservation, .. } => reservation,
        }
    }

    pub fn owner(&self) -> &str {
        &self.reservation().owner
    }
}

/// How many changes of each kind the manager made since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationEventCounts {
    pub created: u64,
    pub extended: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub preempted: u64,
    pub displaced: u64,
}

impl ReservationEventCounts {
    fn record(&mut self, event: &ReservationEvent) {
        let count = match event {
            ReservationEvent::Created { .. } => &mut self.created,
            ReservationEvent::Extended { .. } => &mut self.extended,
            ReservationEvent::Cancelled { .. } => &mut self.cancelled,
            ReservationEvent::Expired { .. } => &mut self.expired,
            ReservationEvent::Preempted { .. } => &mut self.preempted,
            ReservationEvent::Displaced { .. } => &mut self.displaced,
        };
        *count += 1;
    }

    /// (event name as serialised, count), in a fixed order.
    pub fn by_name(&self) -> [(&'static str, u64); 6] {
        [
            ("created", self.created),
            ("extended", self.extended),
            ("cancelled", self.cancelled),
            ("expired", self.expired),
            ("preempted", self.preempted),
            ("displaced", self.displaced),
        ]
    }
}

/// Result of a create or extend: the reservation as stored and whom it displaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub reservation: Reservation,
    pub preempted: Vec<Reservation>,
}

/// A change an operator asks for (the API's POST, PATCH and DELETE), as the state owner runs
/// it and a recording keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ReservationOp {
    /// Boxed: a request is several times the size of the other operations.
    Create(Box<ReservationRequest>),
    Extend {
        id: ReservationId,
        request: ExtendRequest,
    },
    Cancel {
        id: ReservationId,
    },
}

/// The answer to a [`ReservationOp`], serialised as the API's response body: the admission of
/// a create or extend, the reservation a cancel removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReservationReply {
    Admitted(Admission),
    Cancelled(Reservation),
}

pub struct ReservationManager {
    config: ManagerConfig,
    network: Network,
    reservable: BTreeMap<LinkId, u64>,
    reservations: BTreeMap<ReservationId, Reservation>,
    next_id: u64,
    store: Box<dyn ReservationStore>,
    /// Changes not yet taken; the oldest are dropped past [`EVENTS_PENDING`].
    events: VecDeque<ReservationEvent>,
    counts: ReservationEventCounts,
}

/// Events kept until [`ReservationManager::take_events`]. The state owner takes them after
/// every change; only a manager nobody drains (a benchmark) reaches the bound.
const EVENTS_PENDING: usize = 1024;

impl std::fmt::Debug for ReservationManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReservationManager")
            .field("config", &self.config)
            .field("reservations", &self.reservations.len())
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl ReservationManager {
    /// Loads the stored reservations and checks them against `network`. With an unchanged
    /// network the stored set is restored exactly; reservations that no longer fit are
    /// displaced (and the store updated), and returned as events (taken: not pending).
    pub fn open(
        mut store: Box<dyn ReservationStore>,
        network: Network,
        config: ManagerConfig,
    ) -> Result<(Self, Vec<ReservationEvent>), BandwidthError> {
        if config.headroom_percent > 99 {
            return Err(BandwidthError::BadHeadroom(config.headroom_percent));
        }
        let state = store.load()?.unwrap_or(StoredState {
            version: STORE_VERSION,
            next_id: 1,
            reservations: vec![],
        });
        let reservable = reservable_map(&network, config.headroom_percent);
        let mut manager = ReservationManager {
            config,
            network,
            reservable,
            reservations: state.reservations.into_iter().map(|r| (r.id, r)).collect(),
            next_id: state.next_id,
            store,
            events: VecDeque::new(),
            counts: ReservationEventCounts::default(),
        };
        let network = manager.network.clone();
        manager.set_network(network)?;
        let events = manager.take_events();
        Ok((manager, events))
    }

    /// The changes stored since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<ReservationEvent> {
        self.events.drain(..).collect()
    }

    /// How many changes of each kind were stored since the manager was opened.
    pub fn event_counts(&self) -> ReservationEventCounts {
        self.counts
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// All stored reservations (current and future; expired ones until `expire` runs), by id.
    pub fn list(&self) -> impl Iterator<Item = &Reservation> + '_ {
        self.reservations.values()
    }

    pub fn get(&self, id: ReservationId) -> Option<&Reservation> {
        self.reservations.get(&id)
    }

    /// Reservations holding bandwidth at instant `t`.
    pub fn active_at(&self, t: UnixSeconds) -> impl Iterator<Item = &Reservation> + '_ {
        self.reservations.values().filter(move |r| r.active_at(t))
    }

    /// Capacity of `link` that reservations may take (capacity less headroom).
    pub fn reservable_bps(&self, link: LinkId) -> u64 {
        self.reservable.get(&link).copied().unwrap_or(0)
    }

    /// Capacity each link may give reservations (capacity less headroom).
    pub fn reservable(&self) -> &BTreeMap<LinkId, u64> {
        &self.reservable
    }

    /// Rate reserved on `link` at instant `t`.
    pub fn reserved_bps(&self, link: LinkId, t: UnixSeconds) -> u64 {
        admission::load_at(self.reservations.values(), link, t)
    }

    /// Rate reserved on each known link at instant `t` (the traffic engineer's input).
    pub fn reserved_by_link(&self, t: UnixSeconds) -> BTreeMap<LinkId, u64> {
        self.network
            .link_capacity_bps
            .keys()
            .map(|&l| (l, self.reserved_bps(l, t)))
            .collect()
    }

    /// The next instant after `now` at which a reservation starts or ends: when the daemon's
    /// timer should run `expire` and recompute the traffic weights.
    pub fn next_change_after(&self, now: UnixSeconds) -> Option<UnixSeconds> {
        self.reservations
            .values()
            .flat_map(|r| [r.start, r.end])
            .filter(|&t| t > now)
            .min()
    }

    /// Admits a new reservation on every link of its path, or on none.
    pub fn create(
        &mut self,
        req: &ReservationRequest,
        now: UnixSeconds,
    ) -> Result<Admission, BandwidthError> {
        let cand = self.validate(req, now)?;
        if self.reservations.len() >= self.config.max_reservations {
            return Err(BandwidthError::TooManyReservations(
                self.config.max_reservations,
            ));
        }
        let victims = admission::plan_preemption(&self.reservations, &cand, &self.reservable)
            .map_err(|s| insufficient(s, &cand))?;
        let change = Change {
            remove: victims,
            upsert: Some(cand.clone()),
            next_id: self.next_id + 1,
        };
        let preempted = self.commit(change, |r| ReservationEvent::Preempted {
            reservation: r,
            by: cand.id,
        })?;
        self.notify(ReservationEvent::Created {
            reservation: cand.clone(),
        });
        Ok(Admission {
            reservation: cand,
            preempted,
        })
    }

    /// Moves a reservation's end later, admitting the longer window like a new reservation of
    /// the same priority (so it may preempt lower priorities).
    pub fn extend(
        &mut self,
        id: ReservationId,
        req: &ExtendRequest,
        now: UnixSeconds,
    ) -> Result<Admission, BandwidthError> {
        let current = self
            .reservations
            .get(&id)
            .ok_or(BandwidthError::NotFound(id))?;
        let previous_end = current.end;
        let cand = extension(current, req, now)?;
        // The candidate has the same id as the stored reservation, which admission ignores.
        let victims = admission::plan_preemption(&self.reservations, &cand, &self.reservable)
            .map_err(|s| insufficient(s, &cand))?;
        let change = Change {
            remove: victims,
            upsert: Some(cand.clone()),
            next_id: self.next_id,
        };
        let preempted = self.commit(change, |r| ReservationEvent::Preempted {
            reservation: r,
            by: id,
        })?;
        self.notify(ReservationEvent::Extended {
            reservation: cand.clone(),
            previous_end,
        });
        Ok(Admission {
            reservation: cand,
            preempted,
        })
    }

    pub fn cancel(&mut self, id: ReservationId) -> Result<Reservation, BandwidthError> {
        if !self.reservations.contains_key(&id) {
            return Err(BandwidthError::NotFound(id));
        }
        let change = Change {
            remove: vec![id],
            upsert: None,
            next_id: self.next_id,
        };
        let mut gone = self.commit(change, |reservation| ReservationEvent::Cancelled {
            reservation,
        })?;
        Ok(gone.pop().expect("the reservation was there"))
    }

    /// Removes every reservation whose window has ended by `now`.
    pub fn expire(&mut self, now: UnixSeconds) -> Result<Vec<Reservation>, BandwidthError> {
        let remove: Vec<ReservationId> = self
            .reservations
            .values()
            .filter(|r| r.end <= now)
            .map(|r| r.id)
            .collect();
        if remove.is_empty() {
            return Ok(Vec::new());
        }
        let change = Change {
            remove,
            upsert: None,
            next_id: self.next_id,
        };
        self.commit(change, |reservation| ReservationEvent::Expired {
            reservation,
        })
    }

    /// `req` validated at `now` as a candidate for the cluster store, with the capacity each
    /// link may give reservations: the store decides (`EtcdStore::admit`), and its id comes
    /// from the store (this manager's ids are one gateway's).
    pub fn candidate(
        &self,
        req: &ReservationRequest,
        now: UnixSeconds,
    ) -> Result<(Reservation, BTreeMap<LinkId, u64>), BandwidthError> {
        Ok((self.validate(req, now)?, self.reservable.clone()))
    }

    /// Mirrors a reservation the cluster store holds (admitted by any gateway): kept as is,
    /// the store having admitted it; told as created the first time.
    pub fn mirror_put(&mut self, reservation: Reservation) -> Result<(), BandwidthError> {
        let new = !self.reservations.contains_key(&reservation.id);
        if !new && self.reservations.get(&reservation.id) == Some(&reservation) {
            return Ok(());
        }
        // Only an extension changes a stored reservation's terms (its end, later).
        let previous_end = self
            .reservations
            .get(&reservation.id)
            .filter(|r| {
                r.end < reservation.end
                    && **r
                        == Reservation {
                            end: r.end,
                            ..reservation.clone()
                        }
            })
            .map(|r| r.end);
        let change = Change {
            remove: Vec::new(),
            upsert: Some(reservation.clone()),
            next_id: self.next_id,
        };
        self.commit(change, |reservation| ReservationEvent::Cancelled {
            reservation,
        })?;
        if new {
            self.notify(ReservationEvent::Created { reservation });
        } else if let Some(previous_end) = previous_end {
            self.notify(ReservationEvent::Extended {
                reservation,
                previous_end,
            });
        }
        Ok(())
    }

    /// Mirrors a reservation's removal from the cluster store: preempted if the store marked
    /// it taken away for reservation `preempted_by`, else expired if it had ended by `now`,
    /// else cancelled.
    pub fn mirror_remove(
        &mut self,
        id: ReservationId,
        now: UnixSeconds,
        preempted_by: Option<ReservationId>,
    ) -> Result<(), BandwidthError> {
        let Some(ended) = self.reservations.get(&id).map(|r| r.end <= now) else {
            return Ok(());
        };
        let change = Change {
            remove: vec![id],
            upsert: None,
            next_id: self.next_id,
        };
        self.commit(change, |reservation| {
            if let Some(by) = preempted_by {
                ReservationEvent::Preempted { reservation, by }
            } else if ended {
                ReservationEvent::Expired { reservation }
            } else {
                ReservationEvent::Cancelled { reservation }
            }
        })?;
        Ok(())
    }

    /// Takes a new picture of the network. Reservations that no longer fit (a link gone or
    /// shrunk) are displaced, lowest priority and newest first.
    pub fn set_network(&mut self, network: Network) -> Result<(), BandwidthError> {
        let reservable = reservable_map(&network, self.config.headroom_percent);
        let (_, displaced) = admission::readmit(self.reservations.values().cloned(), &reservable);
        let links: BTreeMap<ReservationId, LinkId> =
            displaced.iter().map(|(r, s)| (r.id, s.link)).collect();
        if !links.is_empty() {
            let change = Change {
                remove: links.keys().copied().collect(),
                upsert: None,
                next_id: self.next_id,
            };
            self.commit(change, |reservation| ReservationEvent::Displaced {
                link: links[&reservation.id],
                reservation,
            })?;
        }
        self.network = network;
        self.reservable = reservable;
        Ok(())
    }

    /// Runs `op` at `now`.
    pub fn apply(
        &mut self,
        op: &ReservationOp,
        now: UnixSeconds,
    ) -> Result<ReservationReply, BandwidthError> {
        Ok(match op {
            ReservationOp::Create(req) => ReservationReply::Admitted(self.create(req, now)?),
            ReservationOp::Extend { id, request } => {
                ReservationReply::Admitted(self.extend(*id, request, now)?)
            }
            ReservationOp::Cancel { id } => ReservationReply::Cancelled(self.cancel(*id)?),
        })
    }

    /// Stores the state with `change` applied, then applies it in memory and notifies each
    /// removed reservation's owner with `removed_event`. Nothing changes if the store fails.
    /// Returns the removed reservations. Writes a view of the state, not a copy of it.
    fn commit(
        &mut self,
        change: Change,
        removed_event: impl Fn(Reservation) -> ReservationEvent,
    ) -> Result<Vec<Reservation>, BandwidthError> {
        let replaced = change.upsert.as_ref().map(|r| r.id);
        let mut view: Vec<&Reservation> = self
            .reservations
            .values()
            .filter(|r| !change.remove.contains(&r.id) && Some(r.id) != replaced)
            .chain(change.upsert.as_ref())
            .collect();
        view.sort_by_key(|r| r.id);
        self.store.save(&StateView {
            version: STORE_VERSION,
            next_id: change.next_id,
            reservations: view,
        })?;
        let removed: Vec<Reservation> = change
            .remove
            .iter()
            .filter_map(|id| self.reservations.remove(id))
            .collect();
        if let Some(r) = change.upsert {
            self.reservations.insert(r.id, r);
        }
        self.next_id = change.next_id;
        for r in &removed {
            self.notify(removed_event(r.clone()));
        }
        Ok(removed)
    }

    fn notify(&mut self, event: ReservationEvent) {
        tracing::info!(event = ?event, "reservation");
        self.counts.record(&event);
        if self.events.len() == EVENTS_PENDING {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn validate(
        &self,
        req: &ReservationRequest,
        now: UnixSeconds,
    ) -> Result<Reservation, BandwidthError> {
        if req.owner.chars().count() > MAX_OWNER_LEN {
            return Err(BandwidthError::BadOwner("longer than 128 characters"));
        }
        if req.owner.chars().any(char::is_control) {
            return Err(BandwidthError::BadOwner("contains control characters"));
        }
        if let Some(id) = &req.request_id {
            check_request_id(id)?;
        }
        for (field, region) in [("source", &req.source), ("destination", &req.destination)] {
            if !self.network.regions.contains(region) {
                return Err(BandwidthError::UnknownRegion {
                    field,
                    region: region.clone(),
                });
            }
        }
        if req.source == req.destination {
            return Err(BandwidthError::SameRegion(req.source.clone()));
        }
        let class = parse_class(&req.class)?;
        let rate_bps = req.rate.to_rate("rate", MAX_RATE_BPS)?;
        let start = match &req.start {
            Some(s) => s.to_u64("start", MAX_TIME)?,
            None => now,
        };
        let end = req.end.to_u64("end", MAX_TIME)?;
        if end <= start {
            return Err(BandwidthError::EndNotAfterStart { start, end });
        }
        if end <= now {
            return Err(BandwidthError::EndInPast { end, now });
        }
        let priority = match &req.priority {
            Some(p) => p.to_u64("priority", MAX_PRIORITY.into())? as u8,
            None => default_priority(class),
        };
        if req.path.is_empty() {
            return Err(BandwidthError::EmptyPath);
        }
        if req.path.len() > MAX_PATH_LINKS {
            return Err(BandwidthError::PathTooLong {
                len: req.path.len(),
                max: MAX_PATH_LINKS,
            });
        }
        let mut path = Vec::with_capacity(req.path.len());
        let mut seen = BTreeSet::new();
        for raw in &req.path {
            let link = LinkId(raw.to_u64("path", u32::MAX.into())? as u32);
            if !self.network.link_capacity_bps.contains_key(&link) {
                return Err(BandwidthError::UnknownLink(link));
            }
            if !seen.insert(link) {
                return Err(BandwidthError::DuplicateLink(link));
            }
            path.push(link);
        }
        Ok(Reservation {
            id: ReservationId(self.next_id),
            owner: req.owner.clone(),
            source: req.source.clone(),
            destination: req.destination.clone(),
            class,
            rate_bps,
            // Bandwidth cannot be held in the past: a start already gone means now.
            start: start.max(now),
            end,
            priority,
            path,
        })
    }
}

/// `current` with the later end `req` asks for at `now`, to be admitted like a new
/// reservation of the same id and priority (the manager's `extend`, and the cluster store's).
pub fn extension(
    current: &Reservation,
    req: &ExtendRequest,
    now: UnixSeconds,
) -> Result<Reservation, BandwidthError> {
    let id = current.id;
    if current.end <= now {
        return Err(BandwidthError::Ended {
            id,
            end: current.end,
        });
    }
    let new_end = req.end.to_u64("end", MAX_TIME)?;
    if new_end <= current.end {
        return Err(BandwidthError::NotAnExtension {
            id,
            end: current.end,
            new_end,
        });
    }
    Ok(Reservation {
        end: new_end,
        ..current.clone()
    })
}

/// One stored change: reservations removed, one added or replaced, and the next id.
struct Change {
    remove: Vec<ReservationId>,
    upsert: Option<Reservation>,
    next_id: u64,
}

fn reservable_map(network: &Network, headroom_percent: u8) -> BTreeMap<LinkId, u64> {
    network
        .link_capacity_bps
        .iter()
        .map(|(&l, &c)| (l, admission::reservable_bps(c, headroom_percent)))
        .collect()
}

pub(super) fn insufficient(s: Shortfall, cand: &Reservation) -> BandwidthError {
    BandwidthError::InsufficientBandwidth {
        link: s.link,
        requested_bps: cand.rate_bps,
        free_bps: s.free_bps,
        reservable_bps: s.reservable_bps,
        start: cand.start,
        end: cand.end,
    }
}
