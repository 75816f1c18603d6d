//! The admission leader: one gateway, elected on a lease, decides every gateway's admissions
//! in its batches. Each gateway batching its own admissions, the gateways' batches raced for
//! the same ledgers: a third of them lost the race once or more, and the p99 stayed at 80-110
//! ms however the batches were written (`cargo xtask bench cluster`, 3 gateways × 8 tasks on
//! 4 links; `reservations.rs` says what was tried). With one writer there is no race.
//!
//! ```text
//!  gateway B: admit ──put──▶ admission-queue/<B>/<id> ──watch──▶ leader A: batch of every
//!        ▲                                                        gateway's queued admissions
//!        └──── watch ◀── admission-verdicts/<s>/<B>/<id> ◀── one guarded write: ledgers,
//!                                                             reservations, verdicts
//! ```
//!
//! - **Election.** Every gateway that admits campaigns: it puts `admission-leader` on a lease
//!   of `LEADER_TTL` if nobody holds it, and renews it while it leads. The others wait for the
//!   key to go (its holder died or stepped down) and try again.
//! - **Asking.** A gateway that does not lead queues its admission under its own connection's
//!   token, in a transaction that holds only while a leader is there; with none (not yet
//!   elected), it decides its admission itself, as every gateway did before.
//! - **Deciding.** The leader lists and watches the queue and feeds what it finds into its own
//!   batches (`reservations.rs`): the write that applies a batch also deletes each queued
//!   admission it decided and puts its verdict, so a verdict exists exactly when the ledgers
//!   say it. A new leader lists what the old one left queued.
//! - **Verdicts** sort by time, so the leader sweeps them with one range delete after
//!   `VERDICT_KEEP`; the asking gateway gets its verdict through a watch long before.
//!
//! Correctness never rests on the leader: its writes are the same guarded transactions as
//! every gateway's, so two gateways that both think they lead (one whose lease ended
//! unnoticed) only race, and nothing is booked twice. A queued admission whose verdict does
//! not come within the store's timeout plus `LEADER_TTL` (the leader died and its successor is
//! slow) fails as `Unreachable`: it may still be admitted, and admitting it again returns it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dwcp_control::bandwidth::{Admission, BandwidthError, Reservation, ReservationId};
use dwcp_control::input::unix_now;
use dwcp_control::store::{AdmissionVerdict, QueuedAdmission};
use dwcp_control::topology::LinkId;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::reservations::{Answer, Queued, Waiting};
use super::{ClusterStoreError, EtcdStore, PrefixWatch, Result, WatchEvent};

/// The leader's lease: how long the admissions queued meanwhile wait when it dies.
const LEADER_TTL: Duration = Duration::from_secs(2);

/// Pause before campaigning again after the store failed, and before a batch is tried again.
const LEADER_RETRY: Duration = Duration::from_millis(500);

/// A follower tries to lead at least this often, even if it saw the leader key stay.
const VACANCY_RECHECK: Duration = Duration::from_secs(5);

/// How long verdicts stay in the store, and how often the leader sweeps the older ones.
const VERDICT_KEEP_S: u64 = 10;
const VERDICT_SWEEP: Duration = Duration::from_secs(1);

/// One gateway's share of the election, shared by its store's clones.
#[derive(Default)]
pub(super) struct Leadership {
    /// This connection holds the leader key: its admissions go straight into its batches.
    leading: AtomicBool,
    /// The campaign and the verdicts' watch, started by the first admission.
    started: tokio::sync::OnceCell<()>,
    /// Admissions queued for the leader, waiting for their verdict.
    awaiting: Mutex<HashMap<ReservationId, Vec<oneshot::Sender<AdmissionVerdict>>>>,
}

/// The store's background tasks, stopped when the last clone of the store goes.
#[derive(Default)]
pub(super) struct Tasks(Mutex<Vec<AbortHandle>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.get_mut().expect("tasks lock").drain(..) {
            task.abort();
        }
    }
}

/// How a campaign ended.
enum Campaign {
    /// We lead, on this lease.
    Won(i64),
    /// Another gateway leads, as of this revision.
    Lost(i64),
}

impl EtcdStore {
    /// Admits `cand` (validated, with a fresh id) on every link of its path, preempting
    /// lower priorities as the manager would, each link having `reservable` bit/s: through
    /// the admission leader if another gateway leads, else in this gateway's own batches.
    /// Admitting the same reservation again returns it (a retry after `Unreachable` is safe).
    pub async fn admit(
        &self,
        cand: &Reservation,
        reservable: &BTreeMap<LinkId, u64>,
    ) -> Result<Admission> {
        self.join_admission_election().await?;
        if !self.leads_admissions() {
            if let Some(decided) = self.ask_leader(cand, reservable).await? {
                return decided;
            }
        }
        self.admit_here(cand, reservable).await
    }

    /// Whether this connection is the admission leader.
    pub fn leads_admissions(&self) -> bool {
        self.leadership.leading.load(Ordering::Relaxed)
    }

    /// This connection's own clone for its background tasks: it does not keep them alive.
    fn for_task(&self) -> EtcdStore {
        EtcdStore {
            tasks: std::sync::Arc::default(),
            ..self.clone()
        }
    }

    /// Starts the verdicts' watch and the campaign, which tries to lead once before this
    /// returns: with a leader elected, the first admissions of every gateway do not race each
    /// other. The first admission does it if nothing did; an agent does it when it connects.
    pub async fn join_admission_election(&self) -> Result<()> {
        self.leadership
            .started
            .get_or_try_init(|| async {
                let store = self.for_task();
                // In place before any admission is queued: no verdict comes before it.
                let verdicts = store.watch_prefix_from_now(&self.keys.verdicts()).await?;
                let first = self.try_to_lead().await?;
                if let Campaign::Won(_) = first {
                    self.leadership.leading.store(true, Ordering::Relaxed);
                }
                let handles = [
                    tokio::spawn(store.clone().deliver_verdicts(verdicts)).abort_handle(),
                    tokio::spawn(store.campaign(first)).abort_handle(),
                ];
                self.tasks.0.lock().expect("tasks lock").extend(handles);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Queues `cand` for the leader and waits for its verdict; `None` if no gateway leads.
    async fn ask_leader(
        &self,
        cand: &Reservation,
        reservable: &BTreeMap<LinkId, u64>,
    ) -> Result<Option<Result<Admission>>> {
        let key = self.keys.queued_admission(&self.admitter, cand.id);
        let queued = QueuedAdmission {
            reservation: cand.clone(),
            // An unknown link has none, as `plan_admission` has it.
            reservable: cand
                .path
                .iter()
                .map(|l| (*l, reservable.get(l).copied().unwrap_or(0)))
                .collect(),
        };
        let (verdict, mut decided) = oneshot::channel();
        self.awaiting().entry(cand.id).or_default().push(verdict);
        let txn = Txn::new()
            .when([Compare::version(
                self.keys.admission_leader(),
                CompareOp::Greater,
                0,
            )])
            .and_then([TxnOp::put(key.as_str(), queued.encode(), None)]);
        let asked = self.txn("queue the admission for the leader", txn).await;
        let wait = self.timeout + LEADER_TTL;
        let verdict = match asked {
            Ok(resp) if resp.succeeded() => tokio::time::timeout(wait, &mut decided).await,
            Ok(_) => {
                self.forget(cand.id, decided);
                return Ok(None);
            }
            Err(e) => {
                self.forget(cand.id, decided);
                return Err(e);
            }
        };
        match verdict {
            Ok(Ok(verdict)) => Ok(Some(verdict_result(cand, &key, verdict))),
            _ => {
                self.forget(cand.id, decided);
                Err(ClusterStoreError::Unreachable(format!(
                    "reservation {}: queued for the admission leader, which gave no verdict \
                     within {wait:?}; it may still be admitted (admitting it again returns it)",
                    cand.id
                )))
            }
        }
    }

    fn awaiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ReservationId, Vec<oneshot::Sender<AdmissionVerdict>>>>
    {
        self.leadership.awaiting.lock().expect("awaiting lock")
    }

    /// Stops waiting for `id`'s verdict (this caller's; another caller of the same id waits on).
    fn forget(&self, id: ReservationId, decided: oneshot::Receiver<AdmissionVerdict>) {
        drop(decided);
        let mut awaiting = self.awaiting();
        if let Some(waiting) = awaiting.get_mut(&id) {
            waiting.retain(|w| !w.is_closed());
            if waiting.is_empty() {
                awaiting.remove(&id);
            }
        }
    }

    /// Hands each verdict for this connection to whoever waits for it.
    async fn deliver_verdicts(self, mut watch: PrefixWatch) {
        loop {
            let WatchEvent::Put { key, value } = watch.next().await else {
                continue;
            };
            let Some((admitter, id)) = self.keys.verdict_for(&key) else {
                warn!(%key, "not a verdict key, ignored");
                continue;
            };
            if admitter != self.admitter {
                continue;
            }
            let verdict = serde_json::from_slice(&value).unwrap_or_else(|e| {
                AdmissionVerdict::Invalid(format!("the leader's verdict is unreadable: {e}"))
            });
            for waiting in self.awaiting().remove(&id).unwrap_or_default() {
                drop(waiting.send(verdict.clone()));
            }
        }
    }

    /// Leads while it can, else waits for the leader to go and tries again; for as long as
    /// the store lives.
    async fn campaign(self, mut campaign: Campaign) {
        loop {
            match campaign {
                Campaign::Won(lease) => self.lead(lease).await,
                Campaign::Lost(revision) => self.wait_for_vacancy(revision).await,
            }
            campaign = loop {
                match self.try_to_lead().await {
                    Ok(campaign) => break campaign,
                    Err(_) => tokio::time::sleep(LEADER_RETRY).await,
                }
            };
        }
    }

    /// Decides every gateway's queued admissions until the lease on `admission-leader`
    /// cannot be renewed, then gives it up.
    async fn lead(&self, lease: i64) {
        info!("this gateway now decides every gateway's admissions");
        self.leadership.leading.store(true, Ordering::Relaxed);
        tokio::select! {
            () = self.hold_lease(lease) => {}
            () = self.serve_queue() => {}
        }
        self.leadership.leading.store(false, Ordering::Relaxed);
        // The next leader lists them again.
        self.admissions.drop_queued();
        warn!("this gateway no longer leads the admissions (its lease could not be renewed)");
        drop(
            self.call("give up the leader's lease", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await,
        );
    }

    async fn try_to_lead(&self) -> Result<Campaign> {
        let lease = self
            .call("grant the leader's lease", |mut c| async move {
                c.lease_grant(LEADER_TTL.as_secs() as i64, None).await
            })
            .await?
            .id();
        let key = self.keys.admission_leader();
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.admitter.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self.txn("campaign for admission leader", txn).await?;
        if resp.succeeded() {
            return Ok(Campaign::Won(lease));
        }
        drop(
            self.call("revoke an unused lease", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await,
        );
        Ok(Campaign::Lost(resp.header().map_or(0, |h| h.revision())))
    }

    /// Renews the leader's lease until a renewal fails to come back before the lease might
    /// have ended.
    async fn hold_lease(&self, lease: i64) {
        let mut valid_until = tokio::time::Instant::now() + LEADER_TTL;
        let Ok(Ok((mut keeper, mut renewals))) =
            tokio::time::timeout(self.timeout, self.client.clone().lease_keep_alive(lease)).await
        else {
            return;
        };
        loop {
            tokio::time::sleep(LEADER_TTL / 3).await;
            let sent = tokio::time::Instant::now();
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match tokio::time::timeout_at(valid_until, renewals.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    valid_until = sent + Duration::from_secs(resp.ttl() as u64);
                }
                _ => return,
            }
        }
    }

    /// Waits until the leader key (held as of `revision`) is deleted, for `VACANCY_RECHECK`
    /// at most.
    async fn wait_for_vacancy(&self, revision: i64) {
        let key = self.keys.admission_leader();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let vacant = async {
            let mut stream = self.client.clone().watch(key, Some(options)).await.ok()?;
            while let Ok(Some(resp)) = stream.message().await {
                let deleted = resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete);
                if deleted || resp.canceled() {
                    return Some(());
                }
            }
            None
        };
        let watched = tokio::time::timeout(VACANCY_RECHECK, vacant).await;
        if !matches!(watched, Ok(Some(()))) {
            // The store failed or the wait ran out: not at once again.
            tokio::time::sleep(LEADER_RETRY).await;
        }
    }

    /// Feeds every queued admission into this gateway's batches and runs them; sweeps the
    /// old verdicts. Returns only if the queue cannot be watched.
    async fn serve_queue(&self) {
        let mut watch = loop {
            match self.watch_prefix(&self.keys.admission_queue()).await {
                Ok(watch) => break watch,
                Err(_) => tokio::time::sleep(LEADER_RETRY).await,
            }
        };
        let mut queued = BTreeSet::new();
        let mut retry = false;
        let mut swept = tokio::time::Instant::now();
        self.sweep_verdicts().await;
        loop {
            // Block for the queue only with nothing to decide; after a failed batch, not
            // longer than the pause before the next try.
            let wait = if retry {
                LEADER_RETRY
            } else if self.admissions.is_empty() {
                VERDICT_SWEEP
            } else {
                Duration::ZERO
            };
            if let Ok(event) = tokio::time::timeout(wait, watch.next()).await {
                self.take_in(event, &mut queued).await;
            }
            // Whatever else has come meanwhile joins the same batch.
            while let Ok(event) = tokio::time::timeout(Duration::ZERO, watch.next()).await {
                self.take_in(event, &mut queued).await;
            }
            // One batch at a time: this gateway's own admissions keep its queue full, and the
            // others' would wait behind them.
            retry = !self.run_batch().await;
            if swept.elapsed() >= VERDICT_SWEEP {
                self.sweep_verdicts().await;
                swept = tokio::time::Instant::now();
            }
        }
    }

    /// A change of the queue: a new queued admission joins the next batch (one that cannot
    /// be decided gets an `Invalid` verdict at once); a deleted one is forgotten.
    async fn take_in(&self, event: WatchEvent, queued: &mut BTreeSet<String>) {
        let (key, value) = match event {
            WatchEvent::Put { key, value } => (key, value),
            WatchEvent::Delete { key } => {
                queued.remove(&key);
                return;
            }
        };
        if !queued.insert(key.clone()) {
            return;
        }
        let Some((admitter, id)) = self.keys.queued_for(&key) else {
            warn!(%key, "not a queued admission's key, ignored");
            return;
        };
        let queued_admission = QueuedAdmission::decode(&value);
        let queued = Queued {
            key: key.clone(),
            value,
            admitter: admitter.to_owned(),
        };
        match queued_admission {
            Ok(q) if q.reservation.id == id => self.admissions.push(Waiting {
                reservable: q.reservable.into_iter().collect(),
                cand: q.reservation,
                answer: Answer::Queued(queued),
            }),
            decoded => {
                let detail = match decoded {
                    Ok(q) => format!("queued under id {id} for reservation {}", q.reservation.id),
                    Err(e) => e,
                };
                warn!(%key, %detail, "a queued admission that cannot be decided");
                let verdict = AdmissionVerdict::Invalid(detail);
                let op = self.verdict_op(&queued, id, &verdict);
                let txn = Txn::new().and_then([op]);
                drop(self.txn("refuse a queued admission", txn).await);
            }
        }
    }

    /// Runs this gateway's next batch, if any; `false` if it failed (its queued admissions
    /// wait for another try).
    async fn run_batch(&self) -> bool {
        let mut known = self.admissions.running.lock().await;
        let batch = self.admissions.take();
        batch.is_empty() || self.admit_batch(batch, &mut known).await
    }

    /// In a batch's write: deletes the queued admission, if still as read, and puts its
    /// verdict.
    pub(super) fn verdict_op(
        &self,
        queued: &Queued,
        id: ReservationId,
        verdict: &AdmissionVerdict,
    ) -> TxnOp {
        let Queued {
            key,
            value,
            admitter,
        } = queued;
        let verdict_key = self.keys.verdict(unix_now(), admitter, id);
        TxnOp::txn(
            Txn::new()
                .when([Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    value.clone(),
                )])
                .and_then([
                    TxnOp::delete(key.as_str(), None),
                    TxnOp::put(verdict_key, verdict.encode(), None),
                ]),
        )
    }

    /// Deletes the verdicts older than `VERDICT_KEEP_S` (best effort: the next sweep takes
    /// what this one missed).
    async fn sweep_verdicts(&self) {
        let (from, to) = (
            self.keys.verdicts(),
            self.keys
                .verdicts_before(unix_now().saturating_sub(VERDICT_KEEP_S)),
        );
        drop(
            self.call("sweep old verdicts", |mut c| {
                let (from, to) = (from.clone(), to.clone());
                async move {
                    c.delete(from, Some(DeleteOptions::new().with_range(to)))
                        .await
                }
            })
            .await,
        );
    }
}

/// What the leader's verdict means to the gateway that queued `cand` under `key`. An
/// admission of other terms (a leader gone wrong) is no admission of `cand`.
fn verdict_result(cand: &Reservation, key: &str, verdict: AdmissionVerdict) -> Result<Admission> {
    let id = cand.id;
    match verdict {
        AdmissionVerdict::Admitted(a) if a.reservation == *cand => Ok(a),
        AdmissionVerdict::Admitted(a) => Err(ClusterStoreError::Corrupt {
            key: key.to_owned(),
            detail: format!(
                "the admission leader's verdict admits other terms ({:?})",
                a.reservation
            ),
        }),
        AdmissionVerdict::Refused {
            link,
            requested_bps,
            free_bps,
            reservable_bps,
            start,
            end,
        } => Err(BandwidthError::InsufficientBandwidth {
            link,
            requested_bps,
            free_bps,
            reservable_bps,
            start,
            end,
        }
        .into()),
        AdmissionVerdict::IdTaken => Err(ClusterStoreError::IdTaken(id)),
        AdmissionVerdict::Invalid(detail) => Err(ClusterStoreError::Corrupt {
            key: key.to_owned(),
            detail: format!("the admission leader could not decide it: {detail}"),
        }),
    }
}
