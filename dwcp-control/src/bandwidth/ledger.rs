//! Per-link ledgers: how a shared store (etcd) keeps reservations so that gateways admitting
//! at once cannot double-book a link. Each link's key holds the reservations crossing it; an
//! admission reads the ledgers of its path, decides here with the manager's rules
//! (`plan_preemption`), and writes every touched ledger back in one transaction that holds
//! only if none of them changed since it was read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::admission::{self, plan_preemption};
use super::error::BandwidthError;
use super::manager::{insufficient, Admission};
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

/// What one admission of a batch came to.
#[derive(Debug)]
pub enum BatchOutcome {
    Admitted(Admission),
    Refused(BandwidthError),
    /// Another reservation is stored (or admitted earlier in the batch) under its id.
    IdTaken,
    /// Left for a later batch: the write had no room for it.
    Deferred,
}

/// What a batch of admissions writes in one transaction, and each admission's outcome.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// Every touched link's new ledger.
    pub ledgers: BTreeMap<LinkId, Ledger>,
    /// The reservations admitted, to be stored.
    pub admitted: Vec<Reservation>,
    /// Stored reservations that admissions preempt, to be deleted.
    pub preempted: BTreeSet<ReservationId>,
    /// One per admission, in the batch's order.
    pub outcomes: Vec<BatchOutcome>,
}

impl BatchPlan {
    /// Keys the transaction writes (ledgers, admitted reservations, deletions and their
    /// removal marks).
    fn writes(&self) -> usize {
        self.ledgers.len() + self.admitted.len() + 2 * self.preempted.len()
    }
}

/// Decides a batch of admissions over the ledgers of (at least) their paths and the stored
/// reservations under their ids, read at one revision: highest priority first, each on the
/// ledgers as the ones before it left them, so that the batch can be written in one
/// transaction (none of it preempts another of it: only strictly lower priorities are
/// preempted). An admission whose write would take the transaction past `max_writes` keys is
/// deferred, and so is every later one. `Err`: the ledgers of these links are needed too.
pub fn plan_batch(
    ledgers: &BTreeMap<LinkId, Ledger>,
    stored: &BTreeMap<ReservationId, Reservation>,
    batch: &[(&Reservation, &BTreeMap<LinkId, u64>)],
    max_writes: usize,
) -> Result<BatchPlan, Vec<LinkId>> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(batch[i].0.priority));
    let mut current = ledgers.clone();
    let mut plan = BatchPlan::default();
    let mut outcomes: Vec<Option<BatchOutcome>> = batch.iter().map(|_| None).collect();
    let mut full = false;
    for i in order {
        let (cand, reservable) = batch[i];
        let existing = stored
            .get(&cand.id)
            .or_else(|| plan.admitted.iter().find(|r| r.id == cand.id));
        outcomes[i] = Some(match existing {
            Some(r) if r == cand => BatchOutcome::Admitted(Admission {
                reservation: r.clone(),
                preempted: Vec::new(),
            }),
            Some(_) => BatchOutcome::IdTaken,
            None if full => BatchOutcome::Deferred,
            None => match plan_admission(&current, cand, reservable) {
                Err(PlanError::NeedLedgers(more)) => return Err(more),
                Err(PlanError::Refused(e)) => BatchOutcome::Refused(e),
                Ok(one) => {
                    let new_ledgers = one
                        .ledgers
                        .keys()
                        .filter(|l| !plan.ledgers.contains_key(l))
                        .count();
                    let writes = plan.writes() + new_ledgers + 1 + 2 * one.preempted.len();
                    if writes > max_writes && !plan.admitted.is_empty() {
                        full = true;
                        BatchOutcome::Deferred
                    } else {
                        for (link, ledger) in one.ledgers {
                            current.insert(link, ledger.clone());
                            plan.ledgers.insert(link, ledger);
                        }
                        plan.preempted.extend(one.preempted.iter().map(|r| r.id));
                        plan.admitted.push(cand.clone());
                        BatchOutcome::Admitted(Admission {
                            reservation: cand.clone(),
                            preempted: one.preempted,
                        })
                    }
                }
            },
        });
    }
    plan.outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every admission decided"))
        .collect();
    Ok(plan)
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

    fn outcome_ids(plan: &BatchPlan) -> Vec<&'static str> {
        plan.outcomes
            .iter()
            .map(|o| match o {
                BatchOutcome::Admitted(_) => "admitted",
                BatchOutcome::Refused(_) => "refused",
                BatchOutcome::IdTaken => "id taken",
                BatchOutcome::Deferred => "deferred",
            })
            .collect()
    }

    #[test]
    fn a_batch_decides_each_admission_on_what_the_ones_before_it_booked() {
        let reservable = cap(&[(1, 1000), (2, 1000)]);
        let (a, b, c) = (
            res(1, 600, 2, &[1]),
            res(2, 600, 2, &[1, 2]),
            res(3, 400, 2, &[2]),
        );
        let batch = [(&a, &reservable), (&b, &reservable), (&c, &reservable)];
        let plan = plan_batch(&BTreeMap::new(), &BTreeMap::new(), &batch, 128).unwrap();
        assert_eq!(outcome_ids(&plan), ["admitted", "refused", "admitted"]);
        assert_eq!(plan.admitted, [a.clone(), c.clone()]);
        assert_eq!(plan.ledgers[&LinkId(1)], ledger(&[&a]));
        assert_eq!(plan.ledgers[&LinkId(2)], ledger(&[&c]));
    }

    #[test]
    fn a_batch_admits_higher_priorities_first_and_never_preempts_its_own() {
        let reservable = cap(&[(1, 1000)]);
        let stored_low = res(1, 500, 1, &[1]);
        let ledgers = BTreeMap::from([(LinkId(1), ledger(&[&stored_low]))]);
        let stored = BTreeMap::from([(stored_low.id, stored_low.clone())]);
        let (mid, high) = (res(2, 500, 2, &[1]), res(3, 500, 3, &[1]));
        // The lower priority comes first in the batch: it must not be admitted and then
        // preempted by the other in the same write.
        let batch = [(&mid, &reservable), (&high, &reservable)];
        let plan = plan_batch(&ledgers, &stored, &batch, 128).unwrap();
        assert_eq!(outcome_ids(&plan), ["admitted", "admitted"]);
        assert_eq!(plan.admitted, [high.clone(), mid.clone()]);
        assert_eq!(plan.preempted, BTreeSet::from([stored_low.id]));
        assert_eq!(plan.ledgers[&LinkId(1)], ledger(&[&mid, &high]));
    }

    #[test]
    fn a_batch_returns_stored_admissions_refuses_taken_ids_and_defers_past_its_writes() {
        let reservable = cap(&[(1, 10_000)]);
        let stored_a = res(1, 100, 2, &[1]);
        let stored = BTreeMap::from([(stored_a.id, stored_a.clone())]);
        let ledgers = BTreeMap::from([(LinkId(1), ledger(&[&stored_a]))]);
        let other_a = res(1, 200, 2, &[1]);
        let (b, b_again, c) = (
            res(2, 100, 2, &[1]),
            res(2, 100, 2, &[1]),
            res(3, 100, 2, &[1]),
        );
        let batch = [
            (&stored_a, &reservable),
            (&other_a, &reservable),
            (&b, &reservable),
            (&b_again, &reservable),
            (&c, &reservable),
        ];
        // Room for one ledger and one reservation: c waits for the next batch.
        let plan = plan_batch(&ledgers, &stored, &batch, 2).unwrap();
        assert_eq!(
            outcome_ids(&plan),
            ["admitted", "id taken", "admitted", "admitted", "deferred"]
        );
        assert_eq!(plan.admitted, [b]);
    }

    #[test]
    fn a_batch_counts_a_preemption_as_a_deletion_and_its_mark() {
        let reservable = cap(&[(1, 1000), (2, 1000)]);
        let (low1, low2) = (res(1, 900, 1, &[1]), res(2, 900, 1, &[2]));
        let ledgers =
            BTreeMap::from([(LinkId(1), ledger(&[&low1])), (LinkId(2), ledger(&[&low2]))]);
        let stored = BTreeMap::from([(low1.id, low1.clone()), (low2.id, low2.clone())]);
        let (high1, high2) = (res(3, 500, 6, &[1]), res(4, 500, 6, &[2]));
        let batch = [(&high1, &reservable), (&high2, &reservable)];
        // Each writes a ledger, itself, its victim's deletion and the victim's mark: 4 keys.
        let plan = plan_batch(&ledgers, &stored, &batch, 7).unwrap();
        assert_eq!(outcome_ids(&plan), ["admitted", "deferred"]);
        let plan = plan_batch(&ledgers, &stored, &batch, 8).unwrap();
        assert_eq!(outcome_ids(&plan), ["admitted", "admitted"]);
    }

    #[test]
    fn a_batch_asks_for_the_ledgers_of_its_victims_other_links() {
        let reservable = cap(&[(1, 1000), (5, 1000)]);
        let low = res(1, 900, 1, &[1, 5]);
        let ledgers = BTreeMap::from([(LinkId(1), ledger(&[&low]))]);
        let high = res(2, 500, 6, &[1]);
        let err = plan_batch(&ledgers, &BTreeMap::new(), &[(&high, &reservable)], 128);
        assert_eq!(err.unwrap_err(), [LinkId(5)]);
    }

    proptest::proptest! {
        /// However a batch is made up, what it writes never books a link past its capacity,
        /// and each admission it reports admitted is in the write.
        #[test]
        fn a_batch_never_books_a_link_past_its_capacity(
            cands in proptest::collection::vec((1u64..700, 1u8..4, 0usize..4), 1..24),
        ) {
            let paths: [&[u32]; 4] = [&[1], &[2], &[1, 2], &[2, 3]];
            let reservable = cap(&[(1, 1000), (2, 1500), (3, 800)]);
            let cands: Vec<Reservation> = cands
                .iter()
                .enumerate()
                .map(|(i, &(rate, prio, p))| res(i as u64 + 1, rate, prio, paths[p]))
                .collect();
            let batch: Vec<_> = cands.iter().map(|c| (c, &reservable)).collect();
            let plan = plan_batch(&BTreeMap::new(), &BTreeMap::new(), &batch, 128).unwrap();
            for (link, ledger) in &plan.ledgers {
                proptest::prop_assert!(ledger.peak_bps(*link) <= reservable[link]);
            }
            for o in &plan.outcomes {
                if let BatchOutcome::Admitted(a) = o {
                    proptest::prop_assert!(plan.admitted.contains(&a.reservation));
                }
            }
        }
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
