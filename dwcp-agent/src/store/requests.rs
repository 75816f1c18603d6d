//! What an admission leaves beside the reservation: a client's request id (a retry finds the
//! reservation its first attempt made instead of booking another), and removal marks (a
//! mirror tells a preemption from a cancel; a retry does not book again what was undone).
//! Both are removed by the expiry once the reservation's end has passed.

use dwcp_control::bandwidth::{BandwidthError, Reservation, ReservationId, ReservationRequest};
use dwcp_control::store::{AdmissionRecord, Removal};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{corrupt, EtcdStore, Result};

/// Deletions in one transaction (etcd's default `--max-txn-ops` is 128).
const SWEEP_CHUNK: usize = 100;

impl EtcdStore {
    /// `cand` (validated from `request`) with the id to admit it under: a fresh one; or, for a
    /// `request_id`, the one its first attempt got, with the first attempt's terms. A
    /// reservation of that id already admitted is then found by the admission, not booked
    /// again; one cancelled or preempted since is an error.
    pub async fn admission_candidate(
        &self,
        request: &ReservationRequest,
        cand: Reservation,
    ) -> Result<Reservation> {
        let Some(request_id) = &request.request_id else {
            let id = self.new_reservation_id().await?;
            return Ok(Reservation { id, ..cand });
        };
        let key = self.keys.request(request_id);
        let record = AdmissionRecord {
            request: request.clone(),
            candidate: Reservation {
                id: ReservationId(0),
                ..cand.clone()
            },
        };
        let value = serde_json::to_vec(&record).expect("a request record serialises");
        // Created by the first attempt: its revision is the id. Else the first attempt's.
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn("record the request id", txn).await?;
        if resp.succeeded() {
            let revision = resp
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| corrupt(&key, "the transaction's answer has no revision"))?;
            return Ok(Reservation {
                id: ReservationId(revision as u64),
                ..cand
            });
        }
        let kv = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            // The compare failed on this key, so the same transaction's get found it.
            .ok_or_else(|| corrupt(&key, "the request record was not returned"))?;
        let first: AdmissionRecord =
            serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?;
        let id = ReservationId(kv.create_revision() as u64);
        let again = first.retry(request, id)?;
        if let Some(undone) = self.removal(id).await? {
            return Err(BandwidthError::RequestAlreadyUndone {
                request_id: request_id.clone(),
                id,
                how: undone.to_string(),
            }
            .into());
        }
        Ok(again)
    }

    /// Why reservation `id` was removed before its end, if a gateway said (cancelled, or
    /// preempted by whom); `None` for an expiry, or once the mark was swept after its end.
    pub async fn removal(&self, id: ReservationId) -> Result<Option<Removal>> {
        let key = self.keys.removal(id);
        let resp = self
            .call("read a removal mark", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        resp.kvs()
            .first()
            .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e)))
            .transpose()
    }

    /// Deletes the removal marks and request records of reservations ended by `now`: a retry
    /// of such a request is refused by validation (its end has passed) before it gets here.
    pub(super) async fn sweep_marks(&self, now: u64) -> Result<()> {
        let mut ended = Vec::new();
        for prefix in [self.keys.removals(), self.keys.requests()] {
            let resp = self.get_prefix("list removal marks", prefix).await?;
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let end = if key.starts_with(&self.keys.removals()) {
                    serde_json::from_slice::<Removal>(kv.value()).map(|m| m.end)
                } else {
                    serde_json::from_slice::<AdmissionRecord>(kv.value()).map(|r| r.candidate.end)
                };
                match end {
                    Ok(end) if end > now => {}
                    Ok(_) => ended.push(key),
                    // Of no use to a mirror or a retry: read as "no mark".
                    Err(e) => {
                        tracing::warn!(error = %e, key, "cluster store: unreadable mark removed");
                        ended.push(key);
                    }
                }
            }
        }
        for chunk in ended.chunks(SWEEP_CHUNK) {
            let txn = Txn::new().and_then(
                chunk
                    .iter()
                    .map(|k| TxnOp::delete(k.clone(), None))
                    .collect::<Vec<_>>(),
            );
            self.txn("remove ended marks", txn).await?;
        }
        Ok(())
    }
}
