//! Reservations in the store: each link's ledger under one key, each reservation under its
//! own. An admission decides with `plan_admission` on its path's ledgers and writes in one
//! transaction guarded by every ledger's `mod_revision` (or its absence) and by the
//! reservation key's absence: a gateway that admitted on one of those links meanwhile makes
//! the transaction fail, and it is decided again on the ledgers the failure returned. So no
//! link is booked past its capacity however many gateways admit at once, and a reservation id
//! is admitted once.
//!
//! A gateway's concurrent admissions share one write (group commit, `Batch`): admitting one
//! at a time, 24 tasks of 3 gateways racing on 4 ledgers lost most of their transactions to
//! each other and the p99 was 1.4 s (`cargo xtask bench cluster`); batched, only the gateways
//! race, not their tasks. A batch that lost the race 3 times takes the admission turn, which
//! the others' writes wait for, so no gateway is starved.
//!
//! Where the time went (that bench, 1,200 attempts, load average about 6, before the changes
//! below): about 159 batches of 7.6 admissions took 32-35 ms each on average; a batch made 1.9
//! reads (3.0 ms each under that load, 0.8 ms idle) and 2.2 writes (6 ms, 1.4 ms idle), of
//! which 1.2-1.3 lost the race, since every gateway's batch covers the same 4 ledgers; a third
//! of the batches took the turn (lease grant and take: 6-6.7 ms) and the others waited for it
//! 0.7 s in all. So a batch first writes on the ledgers as its gateway last knew them (from
//! its own reads, lost writes and applied writes): one round trip instead of two when nobody
//! else wrote meanwhile, and a stale guess costs what the read would have (the lost write
//! returns the state). It reads first only for ledgers never seen, and before refusing a
//! whole batch, since a refusal must not rest on a stale ledger. The write that would lose the
//! third time takes the turn in the same transaction (on a lease reused while it has 1 s
//! left), which saves a lease grant, a take and a read. Measured (admission phases alone,
//! interleaved runs on a quieter machine): p50 16-21.5 -> 7.5-13 ms, 1,200 attempts in
//! 1.1-1.5 s -> 1.0-1.4 s, but p99 69-93 ms before and 69-95 ms after: the winner of a race
//! knows the fresh ledgers and wins the next one too, which shortens the median and not the
//! tail. Two full bench runs: p99 79.0 and 103.8 ms (goal < 50). What removed the races
//! themselves is one elected admission leader batching every gateway's admissions
//! (`leader.rs`): its batches are these, fed from the store's queue as well.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use dwcp_control::bandwidth::{
    extension, plan_admission, plan_batch, Admission, BandwidthError, BatchOutcome, ExtendRequest,
    Ledger, PlanError, Reservation, ReservationId, UnixSeconds,
};
use dwcp_control::store::{AdmissionVerdict, Removal};
use dwcp_control::topology::LinkId;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::oneshot;
use tracing::warn;

use super::{corrupt, ClusterStoreError, EtcdStore, Result};

/// Transactions refused because a ledger changed, before giving up with `Contention`.
pub const MAX_ATTEMPTS: u32 = 64;

/// Admissions decided together at most (and fewer over long paths: `MAX_BATCH_KEYS`).
const MAX_BATCH: usize = 32;

/// Conflicts retried at once, before waiting between tries.
const IMMEDIATE_RETRIES: u32 = 2;

/// Conflicts after which a batch takes the admission turn (`KeyLayout::admission_turn`).
const TURN_AFTER: u32 = 3;

/// How long a turn lasts if its holder never writes (it died): others wait at most that.
const TURN_TTL_S: i64 = 2;

/// Time a turn's lease must have left to be used for another turn (a turn is over within a
/// few round trips; one whose lease ends meanwhile is simply taken again).
const TURN_LEASE_MIN_LEFT: Duration = Duration::from_secs(1);

/// How long a batch waits for other gateways' turns before giving up with `Contention`: a
/// dead holder's turn ends with its lease.
const TURN_WAIT_BOUND: Duration = Duration::from_secs(2 * TURN_TTL_S as u64 + 1);

/// Pause between two reads while another gateway holds the turn.
const TURN_POLL: Duration = Duration::from_millis(2);

/// etcd's default bound on the operations of one transaction (of its compares, and of each
/// of its branches).
const MAX_TXN_OPS: usize = 128;

/// Ledgers and reservations a batch reads at most (its admissions' paths and ids), so that
/// its reads, and the compares of its write, stay within `MAX_TXN_OPS` with room for the
/// ledgers of the reservations it preempts.
const MAX_BATCH_KEYS: usize = MAX_TXN_OPS / 2;

/// Ledgers and reservations as read at one revision, with what the write must compare.
struct Read {
    ledgers: BTreeMap<LinkId, Ledger>,
    /// Each ledger key's `mod_revision`; 0 for a key that does not exist.
    revisions: BTreeMap<LinkId, i64>,
    /// The reservations asked for that exist, with their `mod_revision`.
    reservations: BTreeMap<ReservationId, (Reservation, i64)>,
    /// Who holds the admission turn, if anyone.
    turn: Option<Vec<u8>>,
}

/// The admissions of one gateway waiting for a batch, shared by the store's clones.
#[derive(Default)]
pub(super) struct AdmissionQueue {
    waiting: std::sync::Mutex<VecDeque<Waiting>>,
    /// Held by the caller that runs a batch: one batch at a time per gateway (a second one
    /// would only race the first on the same ledgers).
    pub(super) running: tokio::sync::Mutex<Known>,
}

/// What this gateway's batches last learnt from the store, kept between batches.
#[derive(Default)]
pub(super) struct Known {
    /// Each ledger as of this gateway's last transaction on it, with its `mod_revision`: a
    /// batch writes on it at once, without a read first. A stale one only makes the guarded
    /// write fail, and the failure returns the ledgers as they are.
    ledgers: BTreeMap<LinkId, (Ledger, i64)>,
    /// The lease of our last turn and when it ends: the next turn reuses it while it has
    /// time left, which saves a lease grant.
    turn_lease: Option<(i64, tokio::time::Instant)>,
}

impl Known {
    /// The ledgers of `links` as last known, as a read that found none of the batch's
    /// reservations and nobody's turn (the write compares both); `None` if one was never
    /// seen.
    fn read(&self, links: &BTreeSet<LinkId>) -> Option<Read> {
        let mut read = Read {
            ledgers: BTreeMap::new(),
            revisions: BTreeMap::new(),
            reservations: BTreeMap::new(),
            turn: None,
        };
        for link in links {
            let (ledger, revision) = self.ledgers.get(link)?;
            read.ledgers.insert(*link, ledger.clone());
            read.revisions.insert(*link, *revision);
        }
        Some(read)
    }

    fn learn(&mut self, read: &Read) {
        for (link, ledger) in &read.ledgers {
            self.ledgers
                .insert(*link, (ledger.clone(), read.revisions[link]));
        }
    }
}

pub(super) struct Waiting {
    pub(super) cand: Reservation,
    pub(super) reservable: BTreeMap<LinkId, u64>,
    pub(super) answer: Answer,
}

/// Who is told what a batch decided.
pub(super) enum Answer {
    /// A caller of `admit` on this gateway.
    Caller(oneshot::Sender<Result<Admission>>),
    /// Another gateway, through the store (`leader.rs`): the batch's write puts the verdict.
    Queued(Queued),
}

/// Another gateway's queued admission as the leader read it: the batch's write deletes it,
/// if still `value`, and puts the verdict for connection `admitter`.
pub(super) struct Queued {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) admitter: String,
}

impl AdmissionQueue {
    pub(super) fn push(&self, waiting: Waiting) {
        self.waiting.lock().expect("queue lock").push_back(waiting);
    }

    /// The next batch: the first in line, and those after it while the batch reads at most
    /// `MAX_BATCH_KEYS` ledgers and reservations together.
    pub(super) fn take(&self) -> Vec<Waiting> {
        let mut waiting = self.waiting.lock().expect("queue lock");
        let mut links = BTreeSet::new();
        let mut n = 0;
        for w in waiting.iter().take(MAX_BATCH) {
            let more = w.cand.path.iter().filter(|l| !links.contains(*l)).count();
            if n > 0 && links.len() + more + n + 1 > MAX_BATCH_KEYS {
                break;
            }
            links.extend(w.cand.path.iter().copied());
            n += 1;
        }
        waiting.drain(..n).collect()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.lock().expect("queue lock").is_empty()
    }

    /// Forgets the other gateways' admissions (this one no longer leads: the next leader
    /// lists them).
    pub(super) fn drop_queued(&self) {
        let mut waiting = self.waiting.lock().expect("queue lock");
        waiting.retain(|w| matches!(w.answer, Answer::Caller(_)));
    }

    /// Puts back, first in line, what a batch left for the next one.
    fn put_back(&self, deferred: Vec<Waiting>) {
        let mut waiting = self.waiting.lock().expect("queue lock");
        for w in deferred.into_iter().rev() {
            waiting.push_front(w);
        }
    }
}

/// How a guarded write ended.
enum Commit {
    /// Applied at `revision` (the `mod_revision` of every key it wrote).
    Written { revision: i64 },
    /// Another write got in first: the state as it is now.
    Lost(Read),
}

/// What a batch decided for each of its admissions, in the batch's order; `None`: left for
/// the next batch (the transaction was full).
type Decisions = Vec<Option<Result<Admission>>>;

impl EtcdStore {
    /// Admits `cand` in this gateway's batches: the caller either runs the next batch of this
    /// gateway's admissions, its own included, or waits for the batch that decides it.
    pub(super) async fn admit_here(
        &self,
        cand: &Reservation,
        reservable: &BTreeMap<LinkId, u64>,
    ) -> Result<Admission> {
        loop {
            let (reply, mut decided) = oneshot::channel();
            self.admissions.push(Waiting {
                cand: cand.clone(),
                reservable: reservable.clone(),
                answer: Answer::Caller(reply),
            });
            loop {
                tokio::select! {
                    biased;
                    decision = &mut decided => match decision {
                        Ok(result) => return result,
                        // The caller running its batch was cancelled: queue it again (an
                        // admission it wrote is found by id and returned).
                        Err(_) => break,
                    },
                    mut known = self.admissions.running.lock() => {
                        let batch = self.admissions.take();
                        if !batch.is_empty() {
                            self.admit_batch(batch, &mut known).await;
                        }
                    }
                }
            }
        }
    }

    /// Decides `batch` and tells each caller; `false` if the store failed (the other
    /// gateways' admissions are put back for another try, the callers told).
    pub(super) async fn admit_batch(&self, batch: Vec<Waiting>, known: &mut Known) -> bool {
        match self.decide(&batch, known).await {
            Ok(decisions) => {
                let mut deferred = Vec::new();
                for (w, decision) in batch.into_iter().zip(decisions) {
                    match (decision, w.answer) {
                        // A waiter that went away needs no answer.
                        (Some(result), Answer::Caller(reply)) => drop(reply.send(result)),
                        // Its verdict was in the batch's write.
                        (Some(_), Answer::Queued(_)) => {}
                        (None, answer) => deferred.push(Waiting { answer, ..w }),
                    }
                }
                self.admissions.put_back(deferred);
                true
            }
            Err(e) => {
                let mut again = Vec::new();
                for w in batch {
                    match w.answer {
                        Answer::Caller(reply) => drop(reply.send(Err(e.for_admission(w.cand.id)))),
                        answer @ Answer::Queued(_) => again.push(Waiting { answer, ..w }),
                    }
                }
                warn!(error = %e, queued = again.len(), "an admission batch failed");
                self.admissions.put_back(again);
                false
            }
        }
    }

    /// Decides each admission of the batch in turn on the ledgers as the ones before left
    /// them, and writes every change in one guarded transaction; again on the ledgers the
    /// failed write returned while another gateway's write got in first. The first try
    /// decides on the ledgers as this gateway last knew them (one round trip when nobody
    /// else wrote meanwhile); a read at one revision comes first only for ledgers never
    /// seen, and before refusing all of a batch (a refusal must not rest on a stale ledger).
    async fn decide(&self, batch: &[Waiting], known: &mut Known) -> Result<Decisions> {
        let mut links: BTreeSet<LinkId> = batch
            .iter()
            .flat_map(|w| w.cand.path.iter().copied())
            .collect();
        let ids: BTreeSet<ReservationId> = batch.iter().map(|w| w.cand.id).collect();
        let mut conflicts = 0;
        let mut holding_turn = false;
        let turn_waits_until = tokio::time::Instant::now() + TURN_WAIT_BOUND;
        let (mut read, mut speculative) = match known.read(&links) {
            Some(read) => (read, true),
            None => (self.read(&links, &ids).await?, false),
        };
        loop {
            if !speculative {
                known.learn(&read);
                // Taken by our last write that lost; a turn whose lease ended is nobody's.
                holding_turn = read.turn.as_deref() == Some(self.admitter.as_bytes());
            }
            if read
                .turn
                .as_ref()
                .is_some_and(|t| t != self.admitter.as_bytes())
            {
                // Another gateway's admissions go first: its write would fail ours anyway.
                if tokio::time::Instant::now() > turn_waits_until {
                    return Err(ClusterStoreError::Contention {
                        id: batch[0].cand.id,
                        attempts: conflicts,
                    });
                }
                tokio::time::sleep(TURN_POLL).await;
                read = self.read(&links, &ids).await?;
                continue;
            }
            let stored = read
                .reservations
                .iter()
                .map(|(&id, (r, _))| (id, r.clone()))
                .collect();
            let admissions: Vec<_> = batch.iter().map(|w| (&w.cand, &w.reservable)).collect();
            // The write compares every ledger read, the turn and each admitted reservation,
            // and may delete the turn and put a verdict per queued admission: a budget of
            // writes that leaves room for all.
            let queued = batch
                .iter()
                .filter(|w| matches!(w.answer, Answer::Queued(_)))
                .count();
            let budget = MAX_TXN_OPS.saturating_sub(read.revisions.len() + 1 + queued);
            let plan = match plan_batch(&read.ledgers, &stored, &admissions, budget) {
                Ok(plan) => plan,
                Err(more) => {
                    links.extend(more);
                    read = self.read(&links, &ids).await?;
                    speculative = false;
                    continue;
                }
            };
            if plan.admitted.is_empty() && speculative {
                read = self.read(&links, &ids).await?;
                speculative = false;
                continue;
            }
            let verdicts = self.verdict_ops(batch, &plan.outcomes);
            if plan.admitted.is_empty() {
                // Refused or found on ledgers just read: final, with nothing to compare.
                if holding_turn || !verdicts.is_empty() {
                    self.end_batch(holding_turn, verdicts).await?;
                }
                return Ok(decisions(batch, plan.outcomes));
            }
            let mut compares = self.unchanged(&read);
            compares.push(self.turn_is_ours_or_free(holding_turn));
            let mut ops: Vec<TxnOp> = plan
                .ledgers
                .iter()
                .map(|(&link, ledger)| TxnOp::put(self.keys.ledger(link), ledger.encode(), None))
                .collect();
            for r in &plan.admitted {
                let key = self.keys.reservation(r.id);
                compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(key, encode(r), None));
            }
            for &victim in &plan.preempted {
                ops.push(TxnOp::delete(self.keys.reservation(victim), None));
            }
            ops.extend(self.preemption_marks(&plan.outcomes));
            ops.extend(verdicts);
            if holding_turn {
                ops.push(TxnOp::delete(self.keys.admission_turn(), None));
            }
            // The write that would lose the race the `TURN_AFTER`th time takes the turn if it
            // loses: the next try then has no rival.
            let turn_lease = if !holding_turn && !speculative && conflicts + 1 >= TURN_AFTER {
                Some(self.turn_lease(known).await?)
            } else {
                None
            };
            let committed = self.commit(compares, ops, &links, &ids, turn_lease).await;
            if committed.is_err() && turn_lease.is_some() {
                // Perhaps the lease was gone: the next turn gets a new one.
                known.turn_lease = None;
            }
            let fresh = match committed? {
                Commit::Written { revision } => {
                    for (&link, ledger) in &plan.ledgers {
                        known.ledgers.insert(link, (ledger.clone(), revision));
                    }
                    return Ok(decisions(batch, plan.outcomes));
                }
                Commit::Lost(fresh) => fresh,
            };
            if std::mem::take(&mut speculative) {
                // What we knew was stale: the failed write did what a read would have.
                read = fresh;
                continue;
            }
            count_conflict(&mut conflicts, batch[0].cand.id)?;
            read = if fresh.turn.as_deref() == Some(self.admitter.as_bytes()) {
                // Taken with the write that lost: nobody else writes before our next try.
                fresh
            } else {
                self.after_conflict(conflicts, fresh, &links, &ids).await?
            };
        }
    }
    /// Removes a reservation from the ledgers of its path and the store, leaving a mark that
    /// it was cancelled (`Removal`).
    pub async fn cancel(&self, id: ReservationId) -> Result<Reservation> {
        self.remove(id, |_| true, true)
            .await?
            .ok_or(ClusterStoreError::Bandwidth(BandwidthError::NotFound(id)))
    }

    /// Moves reservation `id`'s end later, as `req` asks at `now`: the longer window admitted
    /// over its path's ledgers like an admission (preempting lower priorities, each link
    /// having `reservable` bit/s), written in one transaction that holds only if neither the
    /// ledgers read nor the reservation changed meanwhile; again from the read if they did.
    pub async fn extend(
        &self,
        id: ReservationId,
        req: &ExtendRequest,
        now: UnixSeconds,
        reservable: &BTreeMap<LinkId, u64>,
    ) -> Result<Admission> {
        let key = self.keys.reservation(id);
        let ids = BTreeSet::from([id]);
        let mut links = BTreeSet::new();
        let mut conflicts = 0;
        let mut read = self.read(&links, &ids).await?;
        loop {
            let Some((current, revision)) = read.reservations.get(&id) else {
                return Err(BandwidthError::NotFound(id).into());
            };
            let cand = extension(current, req, now)?;
            let mut more: Vec<LinkId> = cand
                .path
                .iter()
                .filter(|l| !links.contains(*l))
                .copied()
                .collect();
            let plan = match plan_admission(&read.ledgers, &cand, reservable) {
                Ok(plan) => Some(plan),
                Err(PlanError::NeedLedgers(victims_links)) => {
                    more.extend(victims_links);
                    None
                }
                Err(PlanError::Refused(e)) if more.is_empty() => return Err(e.into()),
                Err(PlanError::Refused(_)) => None,
            };
            let Some(plan) = plan.filter(|_| more.is_empty()) else {
                // Its path's ledgers (first pass), or its victims' other links: read them with it.
                links.extend(more);
                read = self.read(&links, &ids).await?;
                continue;
            };
            let compares = self.unchanged_with(&read, &key, *revision);
            let mut ops: Vec<TxnOp> = plan
                .ledgers
                .iter()
                .map(|(&link, ledger)| TxnOp::put(self.keys.ledger(link), ledger.encode(), None))
                .collect();
            ops.push(TxnOp::put(key.clone(), encode(&cand), None));
            for victim in &plan.preempted {
                ops.push(TxnOp::delete(self.keys.reservation(victim.id), None));
            }
            let admission = Admission {
                reservation: cand,
                preempted: plan.preempted,
            };
            ops.extend(self.preemption_marks(&[BatchOutcome::Admitted(admission.clone())]));
            let Commit::Lost(fresh) = self.commit(compares, ops, &links, &ids, None).await? else {
                return Ok(admission);
            };
            count_conflict(&mut conflicts, id)?;
            read = self.after_conflict(conflicts, fresh, &links, &ids).await?;
        }
    }

    /// The removal marks of the reservations `outcomes` preempt, naming who took their place.
    fn preemption_marks(&self, outcomes: &[BatchOutcome]) -> Vec<TxnOp> {
        outcomes
            .iter()
            .filter_map(|o| match o {
                BatchOutcome::Admitted(a) => Some(a),
                _ => None,
            })
            .flat_map(|a| {
                a.preempted.iter().map(|victim| {
                    let mark = Removal {
                        end: victim.end,
                        preempted_by: Some(a.reservation.id),
                    };
                    TxnOp::put(self.keys.removal(victim.id), encode_mark(&mark), None)
                })
            })
            .collect()
    }

    /// Removes every reservation that ended by `now`. Any gateway may run it: one that
    /// another removed first is skipped.
    pub async fn expire(&self, now: UnixSeconds) -> Result<Vec<Reservation>> {
        let mut expired = Vec::new();
        for r in self.reservations().await? {
            if r.end <= now {
                if let Some(r) = self.remove(r.id, |r| r.end <= now, false).await? {
                    expired.push(r);
                }
            }
        }
        self.sweep_marks(now).await?;
        Ok(expired)
    }

    /// Every reservation in the store, by id.
    pub async fn reservations(&self) -> Result<Vec<Reservation>> {
        let resp = self
            .get_prefix("list reservations", self.keys.reservations())
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// Every link's ledger.
    pub async fn ledgers(&self) -> Result<BTreeMap<LinkId, Ledger>> {
        let resp = self.get_prefix("list ledgers", self.keys.ledgers()).await?;
        let mut ledgers = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let link = self
                .keys
                .ledger_link(&key)
                .ok_or_else(|| corrupt(&key, "not a ledger key"))?;
            let ledger = Ledger::decode(link, kv.value()).map_err(|e| corrupt(&key, e))?;
            ledgers.insert(link, ledger);
        }
        Ok(ledgers)
    }

    /// Removes reservation `id` if `still` holds for it as read, with a mark that it was
    /// cancelled if `mark`; `None` if it is not there.
    async fn remove(
        &self,
        id: ReservationId,
        still: impl Fn(&Reservation) -> bool,
        mark: bool,
    ) -> Result<Option<Reservation>> {
        let key = self.keys.reservation(id);
        let ids = BTreeSet::from([id]);
        let mut links = BTreeSet::new();
        let mut conflicts = 0;
        let mut read = self.read(&links, &ids).await?;
        loop {
            let Some((r, revision)) = read.reservations.get(&id) else {
                return Ok(None);
            };
            if !still(r) {
                return Ok(None);
            }
            let path: BTreeSet<LinkId> = r.path.iter().copied().collect();
            if path != links {
                // First pass (or a replaced reservation): read its path's ledgers with it.
                links = path;
                read = self.read(&links, &ids).await?;
                continue;
            }
            let compares = self.unchanged_with(&read, &key, *revision);
            let mut ops: Vec<TxnOp> = read
                .ledgers
                .iter()
                .map(|(&link, ledger)| {
                    TxnOp::put(self.keys.ledger(link), ledger.without(id).encode(), None)
                })
                .collect();
            ops.push(TxnOp::delete(key.clone(), None));
            if mark {
                let cancelled = Removal {
                    end: r.end,
                    preempted_by: None,
                };
                ops.push(TxnOp::put(
                    self.keys.removal(id),
                    encode_mark(&cancelled),
                    None,
                ));
            }
            let removed = r.clone();
            let Commit::Lost(fresh) = self.commit(compares, ops, &links, &ids, None).await? else {
                return Ok(Some(removed));
            };
            count_conflict(&mut conflicts, id)?;
            read = self.after_conflict(conflicts, fresh, &links, &ids).await?;
        }
    }

    /// What an admission's write compares about the turn: ours if we hold it, else nobody's.
    fn turn_is_ours_or_free(&self, holding: bool) -> Compare {
        let key = self.keys.admission_turn();
        if holding {
            Compare::value(key, CompareOp::Equal, self.admitter.clone())
        } else {
            Compare::version(key, CompareOp::Equal, 0)
        }
    }

    /// A lease of `TURN_TTL_S` for the admission turn, with time left: the last one if it
    /// has, else a new one.
    async fn turn_lease(&self, known: &mut Known) -> Result<i64> {
        let now = tokio::time::Instant::now();
        let lease = match known.turn_lease {
            Some((lease, ends)) if ends > now + TURN_LEASE_MIN_LEFT => lease,
            _ => {
                let lease = self
                    .call("grant the admission turn's lease", |mut c| async move {
                        c.lease_grant(TURN_TTL_S, None).await
                    })
                    .await?
                    .id();
                known.turn_lease = Some((lease, now + Duration::from_secs(TURN_TTL_S as u64)));
                lease
            }
        };
        Ok(lease)
    }

    /// Takes the admission turn if nobody holds it, on `lease`: the others' writes then wait
    /// for ours (which gives the turn back), so that a gateway that keeps losing the race is
    /// not starved.
    fn take_turn(&self, lease: i64) -> TxnOp {
        let key = self.keys.admission_turn();
        TxnOp::txn(
            Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    self.admitter.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]),
        )
    }

    /// Ends a batch that admitted nothing: gives back our turn if we hold it, and puts the
    /// queued admissions' verdicts.
    async fn end_batch(&self, holding_turn: bool, verdicts: Vec<TxnOp>) -> Result<()> {
        let key = self.keys.admission_turn();
        let give_back = Txn::new()
            .when([Compare::value(
                key.as_str(),
                CompareOp::Equal,
                self.admitter.as_bytes(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let txn = Txn::new().and_then(
            holding_turn
                .then(|| TxnOp::txn(give_back))
                .into_iter()
                .chain(verdicts)
                .collect::<Vec<_>>(),
        );
        self.txn("end an admission batch", txn).await?;
        Ok(())
    }

    /// The verdicts of the batch's queued admissions that `outcomes` decided.
    fn verdict_ops(&self, batch: &[Waiting], outcomes: &[BatchOutcome]) -> Vec<TxnOp> {
        batch
            .iter()
            .zip(outcomes)
            .filter_map(|(w, o)| match &w.answer {
                Answer::Queued(queued) => {
                    Some(self.verdict_op(queued, w.cand.id, &AdmissionVerdict::of(o)?))
                }
                Answer::Caller(_) => None,
            })
            .collect()
    }

    /// Reads the ledgers of `links` and reservations `ids` in one transaction (one revision).
    async fn read(&self, links: &BTreeSet<LinkId>, ids: &BTreeSet<ReservationId>) -> Result<Read> {
        let txn = Txn::new().and_then(self.read_ops(links, ids));
        let resp = self.txn("read ledgers", txn).await?;
        self.parse_read(links, ids, resp.op_responses())
    }

    fn read_ops(&self, links: &BTreeSet<LinkId>, ids: &BTreeSet<ReservationId>) -> Vec<TxnOp> {
        links
            .iter()
            .map(|&l| TxnOp::get(self.keys.ledger(l), None))
            .chain(
                ids.iter()
                    .map(|&id| TxnOp::get(self.keys.reservation(id), None)),
            )
            .chain([TxnOp::get(self.keys.admission_turn(), None)])
            .collect()
    }

    fn parse_read(
        &self,
        links: &BTreeSet<LinkId>,
        ids: &BTreeSet<ReservationId>,
        responses: Vec<TxnOpResponse>,
    ) -> Result<Read> {
        let mut gets = responses.into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g,
            _ => unreachable!("a transaction of gets answers gets"),
        });
        let mut read = Read {
            ledgers: BTreeMap::new(),
            revisions: BTreeMap::new(),
            reservations: BTreeMap::new(),
            turn: None,
        };
        for &link in links {
            let get = gets.next().expect("one answer per get");
            let (ledger, revision) = match get.kvs().first() {
                Some(kv) => (
                    Ledger::decode(link, kv.value())
                        .map_err(|e| corrupt(&self.keys.ledger(link), e))?,
                    kv.mod_revision(),
                ),
                None => (Ledger::default(), 0),
            };
            read.ledgers.insert(link, ledger);
            read.revisions.insert(link, revision);
        }
        for &id in ids {
            let get = gets.next().expect("one answer per get");
            if let Some(kv) = get.kvs().first() {
                let r: Reservation = serde_json::from_slice(kv.value())
                    .map_err(|e| corrupt(&self.keys.reservation(id), e))?;
                read.reservations.insert(id, (r, kv.mod_revision()));
            }
        }
        let turn = gets.next().expect("one answer per get");
        read.turn = turn.kvs().first().map(|kv| kv.value().to_vec());
        Ok(read)
    }

    /// [`Self::unchanged`], and reservation `key` still at `revision` as read.
    fn unchanged_with(&self, read: &Read, key: &str, revision: i64) -> Vec<Compare> {
        let mut compares = self.unchanged(read);
        compares.push(Compare::mod_revision(key, CompareOp::Equal, revision));
        compares
    }

    /// Compares that hold only if no ledger read changed (or appeared) since.
    fn unchanged(&self, read: &Read) -> Vec<Compare> {
        read.revisions
            .iter()
            .map(|(&link, &revision)| {
                let key = self.keys.ledger(link);
                if revision == 0 {
                    Compare::version(key, CompareOp::Equal, 0)
                } else {
                    Compare::mod_revision(key, CompareOp::Equal, revision)
                }
            })
            .collect()
    }

    /// Applies the guarded write, or, if another write got in first, reads the ledgers of
    /// `links` and reservations `ids` as they are now in the same transaction (a retry needs
    /// no read of its own), after taking the admission turn on `turn_lease` if given and
    /// nobody holds it.
    async fn commit(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
        links: &BTreeSet<LinkId>,
        ids: &BTreeSet<ReservationId>,
        turn_lease: Option<i64>,
    ) -> Result<Commit> {
        let lost: Vec<TxnOp> = turn_lease
            .map(|lease| self.take_turn(lease))
            .into_iter()
            .chain(self.read_ops(links, ids))
            .collect();
        let txn = Txn::new().when(compares).and_then(ops).or_else(lost);
        let resp = self.txn("write ledgers", txn).await?;
        if resp.succeeded() {
            return Ok(Commit::Written {
                revision: resp.header().map_or(0, |h| h.revision()),
            });
        }
        let mut responses = resp.op_responses();
        if turn_lease.is_some() {
            responses.remove(0);
        }
        self.parse_read(links, ids, responses).map(Commit::Lost)
    }

    /// After a lost race: the first times at once, on what the failed transaction read; then
    /// after a short wait, growing and jittered, and a new read, so that gateways racing on
    /// the same links do not collide again in lockstep.
    async fn after_conflict(
        &self,
        conflicts: u32,
        fresh: Read,
        links: &BTreeSet<LinkId>,
        ids: &BTreeSet<ReservationId>,
    ) -> Result<Read> {
        if conflicts <= IMMEDIATE_RETRIES {
            return Ok(fresh);
        }
        backoff(conflicts).await;
        self.read(links, ids).await
    }
}

fn decisions(batch: &[Waiting], outcomes: Vec<BatchOutcome>) -> Decisions {
    batch
        .iter()
        .zip(outcomes)
        .map(|(w, o)| match o {
            BatchOutcome::Admitted(a) => Some(Ok(a)),
            BatchOutcome::Refused(e) => Some(Err(e.into())),
            BatchOutcome::IdTaken => Some(Err(ClusterStoreError::IdTaken(w.cand.id))),
            BatchOutcome::Deferred => None,
        })
        .collect()
}

fn encode(r: &Reservation) -> Vec<u8> {
    serde_json::to_vec(r).expect("a reservation serialises")
}

fn encode_mark(m: &Removal) -> Vec<u8> {
    serde_json::to_vec(m).expect("a removal mark serialises")
}

/// Counts a lost race for reservation `id`; `Contention` once there have been
/// `MAX_ATTEMPTS`.
fn count_conflict(conflicts: &mut u32, id: ReservationId) -> Result<()> {
    *conflicts += 1;
    if *conflicts == MAX_ATTEMPTS {
        return Err(ClusterStoreError::Contention {
            id,
            attempts: *conflicts,
        });
    }
    Ok(())
}

/// A short wait, growing and jittered.
async fn backoff(conflicts: u32) {
    let cap_ms = 2u64 << conflicts.min(5);
    let jitter = u64::from(std::process::id() ^ conflicts.wrapping_mul(2_654_435_761))
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(jitter % cap_ms)).await;
}
