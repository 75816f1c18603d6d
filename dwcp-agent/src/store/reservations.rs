//! Reservations in the store: each link's ledger under one key, each reservation under its
//! own. An admission reads its path's ledgers (and its own key) in one transaction, decides with
//! `plan_admission`, and writes in one transaction guarded by every ledger's `mod_revision`
//! (or its absence) and by the reservation key's absence: a gateway that admitted on one of
//! those links meanwhile makes the transaction fail, and it is read and decided again. So no
//! link is booked past its capacity however many gateways admit at once, and a reservation id
//! is admitted once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dwcp_control::bandwidth::{
    plan_admission, Admission, BandwidthError, Ledger, PlanError, Reservation, ReservationId,
    UnixSeconds,
};
use dwcp_control::topology::LinkId;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{corrupt, ClusterStoreError, EtcdStore, Result};

/// Transactions refused because a ledger changed, before giving up with `Contention`.
pub const MAX_ATTEMPTS: u32 = 64;

/// Ledgers and a reservation as read at one revision, with what the write must compare.
struct Read {
    ledgers: BTreeMap<LinkId, Ledger>,
    /// Each ledger key's `mod_revision`; 0 for a key that does not exist.
    revisions: BTreeMap<LinkId, i64>,
    reservation: Option<(Reservation, i64)>,
}

impl EtcdStore {
    /// Admits `cand` (validated, with a fresh id) on every link of its path, preempting
    /// lower priorities as the manager would, each link having `reservable` bit/s. Admitting
    /// the same reservation again returns it (a retry after `Unreachable` is safe).
    pub async fn admit(
        &self,
        cand: &Reservation,
        reservable: &BTreeMap<LinkId, u64>,
    ) -> Result<Admission> {
        let key = self.keys.reservation(cand.id);
        let mut links: BTreeSet<LinkId> = cand.path.iter().copied().collect();
        let mut conflicts = 0;
        loop {
            let read = self.read(&links, Some(cand.id)).await?;
            if let Some((existing, _)) = read.reservation {
                return if existing == *cand {
                    Ok(Admission {
                        reservation: existing,
                        preempted: Vec::new(),
                    })
                } else {
                    Err(ClusterStoreError::IdTaken(cand.id))
                };
            }
            let plan = match plan_admission(&read.ledgers, cand, reservable) {
                Ok(plan) => plan,
                Err(PlanError::NeedLedgers(more)) => {
                    links.extend(more);
                    continue;
                }
                Err(PlanError::Refused(e)) => return Err(e.into()),
            };
            let mut compares = self.unchanged(&read);
            compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
            let mut ops: Vec<TxnOp> = plan
                .ledgers
                .iter()
                .map(|(&link, ledger)| TxnOp::put(self.keys.ledger(link), ledger.encode(), None))
                .collect();
            ops.push(TxnOp::put(key.clone(), encode(cand), None));
            for victim in &plan.preempted {
                ops.push(TxnOp::delete(self.keys.reservation(victim.id), None));
            }
            if self.commit(compares, ops).await? {
                return Ok(Admission {
                    reservation: cand.clone(),
                    preempted: plan.preempted,
                });
            }
            conflicts += 1;
            if conflicts == MAX_ATTEMPTS {
                return Err(ClusterStoreError::Contention {
                    id: cand.id,
                    attempts: conflicts,
                });
            }
            backoff(conflicts).await;
        }
    }

    /// Removes a reservation from the ledgers of its path and the store.
    pub async fn cancel(&self, id: ReservationId) -> Result<Reservation> {
        self.remove(id, |_| true)
            .await?
            .ok_or(ClusterStoreError::Bandwidth(BandwidthError::NotFound(id)))
    }

    /// Removes every reservation that ended by `now`. Any gateway may run it: one that
    /// another removed first is skipped.
    pub async fn expire(&self, now: UnixSeconds) -> Result<Vec<Reservation>> {
        let mut expired = Vec::new();
        for r in self.reservations().await? {
            if r.end <= now {
                if let Some(r) = self.remove(r.id, |r| r.end <= now).await? {
                    expired.push(r);
                }
            }
        }
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

    /// Removes reservation `id` if `still` holds for it as read; `None` if it is not there.
    async fn remove(
        &self,
        id: ReservationId,
        still: impl Fn(&Reservation) -> bool,
    ) -> Result<Option<Reservation>> {
        let key = self.keys.reservation(id);
        let mut links = BTreeSet::new();
        let mut conflicts = 0;
        loop {
            let read = self.read(&links, Some(id)).await?;
            let Some((r, revision)) = &read.reservation else {
                return Ok(None);
            };
            if !still(r) {
                return Ok(None);
            }
            let path: BTreeSet<LinkId> = r.path.iter().copied().collect();
            if path != links {
                // First pass (or a replaced reservation): read its path's ledgers with it.
                links = path;
                continue;
            }
            let mut compares = self.unchanged(&read);
            compares.push(Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                *revision,
            ));
            let mut ops: Vec<TxnOp> = read
                .ledgers
                .iter()
                .map(|(&link, ledger)| {
                    TxnOp::put(self.keys.ledger(link), ledger.without(id).encode(), None)
                })
                .collect();
            ops.push(TxnOp::delete(key.clone(), None));
            if self.commit(compares, ops).await? {
                return Ok(Some(r.clone()));
            }
            conflicts += 1;
            if conflicts == MAX_ATTEMPTS {
                return Err(ClusterStoreError::Contention {
                    id,
                    attempts: conflicts,
                });
            }
            backoff(conflicts).await;
        }
    }

    /// Reads the ledgers of `links` and reservation `id` in one transaction (one revision).
    async fn read(&self, links: &BTreeSet<LinkId>, id: Option<ReservationId>) -> Result<Read> {
        let mut ops: Vec<TxnOp> = links
            .iter()
            .map(|&l| TxnOp::get(self.keys.ledger(l), None))
            .collect();
        if let Some(id) = id {
            ops.push(TxnOp::get(self.keys.reservation(id), None));
        }
        let txn = Txn::new().and_then(ops);
        let resp = self
            .call("read ledgers", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let mut gets = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g,
            _ => unreachable!("a transaction of gets answers gets"),
        });
        let mut read = Read {
            ledgers: BTreeMap::new(),
            revisions: BTreeMap::new(),
            reservation: None,
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
        if let Some(id) = id {
            let get = gets.next().expect("one answer per get");
            if let Some(kv) = get.kvs().first() {
                let r: Reservation = serde_json::from_slice(kv.value())
                    .map_err(|e| corrupt(&self.keys.reservation(id), e))?;
                read.reservation = Some((r, kv.mod_revision()));
            }
        }
        Ok(read)
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

    /// Whether the guarded write was applied.
    async fn commit(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool> {
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self
            .call("write ledgers", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }
}

fn encode(r: &Reservation) -> Vec<u8> {
    serde_json::to_vec(r).expect("a reservation serialises")
}

/// After a lost race: a short wait, growing and jittered, so that gateways racing on the same
/// links do not collide again in lockstep.
async fn backoff(conflicts: u32) {
    let cap_ms = 2u64 << conflicts.min(5);
    let jitter = u64::from(std::process::id() ^ conflicts.wrapping_mul(2_654_435_761))
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(jitter % cap_ms)).await;
}
