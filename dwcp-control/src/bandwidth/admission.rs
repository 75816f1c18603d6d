//! Admission control: does a reservation fit on every link of its path for its whole window,
//! and if not, which lower-priority reservations must give way. Pure functions over the set of
//! reservations, so the manager can try a change on a copy and commit it only once stored.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Reservation, ReservationId, UnixSeconds};
use crate::topology::LinkId;

/// Capacity of a link that reservations may take: the rest is headroom for unreserved traffic
/// and bursts (B4/SWAN keep such scratch capacity too).
pub fn reservable_bps(capacity_bps: u64, headroom_percent: u8) -> u64 {
    let keep = 100u128.saturating_sub(u128::from(headroom_percent));
    (u128::from(capacity_bps) * keep / 100) as u64
}

/// Highest total rate that `reservations` put on `link` at any instant of `[from, to)`.
pub fn peak_load<'a>(
    reservations: impl IntoIterator<Item = &'a Reservation>,
    link: LinkId,
    from: UnixSeconds,
    to: UnixSeconds,
) -> u64 {
    let mut events: Vec<(UnixSeconds, i128)> = Vec::new();
    for r in reservations {
        if r.uses(link) && r.overlaps(from, to) {
            events.push((r.start.max(from), i128::from(r.rate_bps)));
            events.push((r.end.min(to), -i128::from(r.rate_bps)));
        }
    }
    // Windows are half-open: at equal times, ends (negative) sort before starts.
    events.sort_unstable();
    let (mut load, mut peak) = (0i128, 0i128);
    for (_, delta) in events {
        load += delta;
        peak = peak.max(load);
    }
    u64::try_from(peak).unwrap_or(u64::MAX)
}

/// Total rate on `link` at instant `t`.
pub fn load_at<'a>(
    reservations: impl IntoIterator<Item = &'a Reservation>,
    link: LinkId,
    t: UnixSeconds,
) -> u64 {
    reservations
        .into_iter()
        .filter(|r| r.uses(link) && r.active_at(t))
        .map(|r| u128::from(r.rate_bps))
        .sum::<u128>()
        .min(u128::from(u64::MAX)) as u64
}

/// The first link on which a reservation does not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub link: LinkId,
    pub free_bps: u64,
    pub reservable_bps: u64,
}

/// Whether `cand` fits next to `others`, given each link's reservable capacity (an unknown link
/// has none).
pub fn fits<'a>(
    others: impl Iterator<Item = &'a Reservation> + Clone,
    cand: &Reservation,
    reservable: &BTreeMap<LinkId, u64>,
) -> Result<(), Shortfall> {
    for &link in &cand.path {
        let reservable_bps = reservable.get(&link).copied().unwrap_or(0);
        let peak = peak_load(others.clone(), link, cand.start, cand.end);
        let free_bps = reservable_bps.saturating_sub(peak);
        if cand.rate_bps > free_bps {
            return Err(Shortfall {
                link,
                free_bps,
                reservable_bps,
            });
        }
    }
    Ok(())
}

/// Which reservations `cand` must preempt to fit: empty if it fits as is. A reservation in
/// `others` with `cand`'s id is the one `cand` replaces (an extension) and is ignored.
///
/// Only reservations of strictly lower priority that share a link and an instant with `cand`
/// are candidates. The victims come from the lowest priority tiers possible: tier by tier
/// upwards, all candidates up to the tier are removed until `cand` fits. Then every victim that
/// can stay without breaking the fit is restored (highest priority first, oldest first), so the
/// set is irreducible: each victim is needed.
pub fn plan_preemption(
    others: &BTreeMap<ReservationId, Reservation>,
    cand: &Reservation,
    reservable: &BTreeMap<LinkId, u64>,
) -> Result<Vec<ReservationId>, Shortfall> {
    let without = |removed: &BTreeSet<ReservationId>| {
        let removed = removed.clone();
        others
            .values()
            .filter(move |r| r.id != cand.id && !removed.contains(&r.id))
    };
    let none = BTreeSet::new();
    let first = match fits(without(&none), cand, reservable) {
        Ok(()) => return Ok(Vec::new()),
        Err(s) => s,
    };
    let candidates: Vec<&Reservation> = others
        .values()
        .filter(|r| {
            r.id != cand.id
                && r.priority < cand.priority
                && r.overlaps(cand.start, cand.end)
                && r.path.iter().any(|l| cand.uses(*l))
        })
        .collect();
    let tiers: BTreeSet<u8> = candidates.iter().map(|r| r.priority).collect();
    let mut last = first;
    for tier in tiers {
        let mut victims: BTreeSet<ReservationId> = candidates
            .iter()
            .filter(|r| r.priority <= tier)
            .map(|r| r.id)
            .collect();
        match fits(without(&victims), cand, reservable) {
            Err(s) => last = s,
            Ok(()) => {
                let mut restore_order: Vec<&Reservation> = candidates
                    .iter()
                    .copied()
                    .filter(|r| victims.contains(&r.id))
                    .collect();
                restore_order.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.id));
                for r in restore_order {
                    victims.remove(&r.id);
                    if fits(without(&victims), cand, reservable).is_err() {
                        victims.insert(r.id);
                    }
                }
                return Ok(victims.into_iter().collect());
            }
        }
    }
    Err(last)
}

/// Re-admits `all` on a changed network, highest priority and oldest first. Returns what still
/// fits and what does not (with the link that refused it). If the old set fitted the network,
/// nothing is displaced.
pub fn readmit(
    all: impl IntoIterator<Item = Reservation>,
    reservable: &BTreeMap<LinkId, u64>,
) -> (
    BTreeMap<ReservationId, Reservation>,
    Vec<(Reservation, Shortfall)>,
) {
    let mut order: Vec<Reservation> = all.into_iter().collect();
    order.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.id));
    let mut kept = BTreeMap::new();
    let mut displaced = Vec::new();
    for r in order {
        match fits(kept.values(), &r, reservable) {
            Ok(()) => {
                kept.insert(r.id, r);
            }
            Err(s) => displaced.push((r, s)),
        }
    }
    (kept, displaced)
}
