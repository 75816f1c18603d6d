//! Per-link ledgers: how a shared store (etcd) keeps reservations so that gateways admitting
//! at once cannot double-book a link. Each link's key holds the reservations crossing it; an
//! admission reads the ledgers of its path, decides here with the manager's rules
//! (`plan_preemption`), and writes every touched ledger back in one transaction that holds
//! only if none of them changed since it was read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::admission::{self, plan_preemption};
use super::error::BandwidthError;
use super::manager::insufficient;
use super::model::{Reservation, ReservationId, MAX_TIME};
use crate::topology::LinkId;

/// The reservations holding (or about to hold) bandwidth on one link, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub reservations: Vec<Reservation>,
}

/// A stored ledger that cannot be what this module wrote.
#[derive(Debug, thiserror::Error)]
#[error("ledger of link {link}: {detail}")]
pub struct LedgerError {
    pub link: LinkId,
    pub detail: String,
}

impl Ledger {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ledger serialises")
    }

    /// Decodes the ledger of `link`, checking every reservation's invariants and that each
    /// crosses `link` once.
    pub fn decode(link: LinkId, bytes: &[u8]) -> Result<Ledger, LedgerError> {
        let bad = |detail: String| LedgerError { link, detail };
        let ledger: Ledger = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let mut seen = BTreeSet::new();
        for r in &ledger.reservations {
            r.check().map_err(bad)?;
            if !r.uses(link) {
                return Err(bad(format!("reservation {} does not cross it", r.id)));
            }
            if !seen.insert(r.id) {
                return Err(bad(format!("reservation {} appears twice", r.id)));
            }
        }
        Ok(ledger)
    }

    /// The highest total rate booked on `link` at any instant: what must stay within its
    /// reservable capacity.
    pub fn peak_bps(&self, link: LinkId) -> u64 {
        admission::peak_load(&self.reservations, link, 0, MAX_TIME)
    }

    /// This ledger without reservation `id`.
    pub fn without(&self, id: ReservationId) -> Ledger {
        Ledger {
            reservations: self
                .reservations
                .iter()
                .filter(|r| r.id != id)
                .cloned()
                .collect(),
        }
    }
}

/// What an admission writes: every touched link's new ledger, and whom it preempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerPlan {
    pub ledgers: BTreeMap<LinkId, Ledger>,
    pub preempted: Vec<Reservation>,
}

/// Why a plan could not be made from the ledgers given.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Preempted reservations cross these links too, whose ledgers must be read (and then
    /// compared in the transaction) before the plan can be made.
    #[error("the ledgers of links {0:?} are needed too")]
    NeedLedgers(Vec<LinkId>),
    #[error(transparent)]
    Refused(#[from] BandwidthError),
}

/// Admits `cand` over the ledgers of (at least) its path, read at one revision, each link
/// having `reservable` bit/s (an unknown link has none): the same rules as the manager's, a
/// reservation with `cand`'s id being the one it replaces. A link of `cand.path` missing from
/// `ledgers` has no reservations.
pub fn plan_admission(
    ledgers: &BTreeMap<LinkId, Ledger>,
    cand: &Reservation,
    reservable: &BTreeMap<LinkId, u64>,
) -> Result<LedgerPlan, PlanError> {
    // Every reservation sharing a link with the candidate is in one of its path's ledgers.
    let others: BTreeMap<ReservationId, Reservation> = ledgers
        .values()
        .flat_map(|l| &l.reservations)
        .map(|r| (r.id, r.clone()))
        .collect();
    let victims = plan_preemption(&others, cand, reservable).map_err(|s| insufficient(s, cand))?;
    let preempted: Vec<Reservation> = victims.iter().map(|id| others[id].clone()).collect();
    let touched: BTreeSet<LinkId> = cand
        .path
        .iter()
        .chain(preempted.iter().flat_map(|r| &r.path))
        .copied()
        .collect();
    let missing: Vec<LinkId> = touched
        .iter()
        .filter(|l| !cand.uses(**l) && !ledgers.contains_key(l))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(PlanError::NeedLedgers(missing));
    }
    let empty = Ledger::default();
    let ledgers = touched
        .into_iter()
        .map(|link| {
            let old = ledgers.get(&link).unwrap_or(&empty);
            let mut reservations: Vec<Reservation> = old
                .reservations
                .iter()
                .filter(|r| r.id != cand.id && !victims.contains(&r.id))
                .cloned()
                .collect();
            if cand.uses(link) {
                reservations.push(cand.clone());
                reservations.sort_by_key(|r| r.id);
            }
            (link, Ledger { reservations })
        })
        .collect();
    Ok(LedgerPlan { ledgers, preempted })
}

#[cfg(test)]
mod tests {
    use dwcp_common::QosClass;

    use super::*;

    fn res(id: u64, rate_bps: u64, priority: u8, path: &[u32]) -> Reservation {
        Reservation {
            id: ReservationId(id),
            owner: "t".into(),
            source: "a".into(),
            destination: "b".into(),
            class: QosClass::Bulk,
            rate_bps,
            start: 100,
            end: 200,
            priority,
            path: path.iter().map(|&l| LinkId(l)).collect(),
        }
    }

    fn ledger(rs: &[&Reservation]) -> Ledger {
        Ledger {
            reservations: rs.iter().map(|r| (*r).clone()).collect(),
        }
    }

    fn cap(links: &[(u32, u64)]) -> BTreeMap<LinkId, u64> {
        links.iter().map(|&(l, c)| (LinkId(l), c)).collect()
    }

    #[test]
    fn admits_on_every_link_of_the_path_or_refuses_naming_the_full_link() {
        let a = res(1, 600, 2, &[1, 2]);
        let ledgers = BTreeMap::from([(LinkId(1), ledger(&[&a])), (LinkId(2), ledger(&[&a]))]);
        let reservable = cap(&[(1, 1000), (2, 2000), (3, 1000)]);

        let plan = plan_admission(&ledgers, &res(2, 400, 2, &[2, 3]), &reservable).unwrap();
        assert!(plan.preempted.is_empty());
        assert_eq!(
            plan.ledgers.keys().copied().collect::<Vec<_>>(),
            [LinkId(2), LinkId(3)]
        );
        assert_eq!(plan.ledgers[&LinkId(2)].peak_bps(LinkId(2)), 1000);
        assert_eq!(plan.ledgers[&LinkId(3)].reservations.len(), 1);

        let refused = plan_admission(&ledgers, &res(3, 500, 2, &[3, 1]), &reservable);
        match refused {
            Err(PlanError::Refused(BandwidthError::InsufficientBandwidth {
                link,
                free_bps,
                ..
            })) => assert_eq!((link, free_bps), (LinkId(1), 400)),
            other => panic!("expected a refusal on link 1, got {other:?}"),
        }
    }

    #[test]
    fn preempting_asks_for_the_ledgers_of_the_victims_other_links_then_rewrites_them() {
        let low = res(1, 900, 1, &[1, 5]);
        let mut ledgers = BTreeMap::from([(LinkId(1), ledger(&[&low]))]);
        let reservable = cap(&[(1, 1000), (5, 1000)]);
        let high = res(2, 500, 6, &[1]);
        match plan_admission(&ledgers, &high, &reservable) {
            Err(PlanError::NeedLedgers(links)) => assert_eq!(links, [LinkId(5)]),
            other => panic!("expected a request for link 5's ledger, got {other:?}"),
        }
        ledgers.insert(LinkId(5), ledger(&[&low]));
        let plan = plan_admission(&ledgers, &high, &reservable).unwrap();
        assert_eq!(plan.preempted, [low]);
        assert_eq!(plan.ledgers[&LinkId(1)], ledger(&[&high]));
        assert_eq!(plan.ledgers[&LinkId(5)], Ledger::default());
    }

    #[test]
    fn decode_refuses_what_was_not_written_here() {
        let a = res(1, 600, 2, &[1]);
        let ok = ledger(&[&a]).encode();
        assert_eq!(Ledger::decode(LinkId(1), &ok).unwrap(), ledger(&[&a]));
        assert!(Ledger::decode(LinkId(2), &ok)
            .unwrap_err()
            .to_string()
            .contains("does not cross it"));
        assert!(Ledger::decode(LinkId(1), &ledger(&[&a, &a]).encode())
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        assert!(Ledger::decode(LinkId(1), b"{").is_err());
    }
}
