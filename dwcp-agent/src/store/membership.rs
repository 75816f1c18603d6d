//! Membership: each gateway's record under `<prefix>/gateways/<name>`, on a lease of its own
//! (one key per lease: Cilium saw leases holding many keys make every renewal slow). A task
//! renews the lease; when the gateway stops renewing (it died, or [`Membership`] was
//! dropped), etcd deletes the record once the TTL has run out.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc, Mutex,
};
use std::time::Duration;

use dwcp_control::store::{GatewayRecord, GatewayView};
use etcd_client::{Client, PutOptions};

use super::{corrupt, EtcdStore, Result};

/// A registered gateway. Dropping it stops the renewals (the record expires with its lease);
/// [`Membership::leave`] removes the record at once.
pub struct Membership {
    key: String,
    /// The lease in force (a new one if the old expired while the store was unreachable).
    lease: Arc<AtomicI64>,
    /// The record as last put: what a new lease is registered with.
    value: Arc<Mutex<Vec<u8>>>,
    renewals: tokio::task::JoinHandle<()>,
}

impl EtcdStore {
    /// Registers `record` on a new lease of `ttl` (whole seconds, at least 2) and keeps it
    /// alive until the [`Membership`] is dropped.
    pub async fn register(&self, record: &GatewayRecord, ttl: Duration) -> Result<Membership> {
        let ttl_s = ttl.as_secs().max(2) as i64;
        let key = self.keys.gateway(&record.name);
        let value = serde_json::to_vec(record).expect("a gateway record serialises");
        let lease = grant_and_put(self, &key, &value, ttl_s).await?;
        let lease = Arc::new(AtomicI64::new(lease));
        let value = Arc::new(Mutex::new(value));
        let renewals = tokio::spawn(renew(
            self.clone(),
            key.clone(),
            Arc::clone(&value),
            ttl_s,
            Arc::clone(&lease),
        ));
        Ok(Membership {
            key,
            lease,
            value,
            renewals,
        })
    }

    /// Every registered gateway, by name, with how long ago its lease was renewed (one
    /// lease query per gateway: an operator's listing, not a hot path).
    pub async fn gateways(&self) -> Result<Vec<GatewayView>> {
        let resp = self
            .get_prefix("list gateways", self.keys.gateways())
            .await?;
        let mut views = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let record: GatewayRecord = serde_json::from_slice(kv.value())
                .map_err(|e| corrupt(&String::from_utf8_lossy(kv.key()), e))?;
            let lease = kv.lease();
            let ttl = self
                .call("lease time to live", |mut c| async move {
                    c.lease_time_to_live(lease, None).await
                })
                .await?;
            // A renewal sets the time left back to the TTL granted; an expired lease
            // answers -1.
            let last_contact_seconds =
                (ttl.ttl() >= 0).then(|| ttl.granted_ttl().saturating_sub(ttl.ttl()).max(0) as u64);
            views.push(GatewayView {
                record,
                last_contact_seconds,
            });
        }
        Ok(views)
    }
}

impl Membership {
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Puts `record` (same name) in place of the registered one, on the lease in force; a
    /// lease granted later (after an expiry) carries it too.
    pub async fn update(&self, store: &EtcdStore, record: &GatewayRecord) -> Result<()> {
        let value = serde_json::to_vec(record).expect("a gateway record serialises");
        *self.value.lock().expect("membership value lock") = value.clone();
        let lease = self.lease();
        store
            .call("update gateway record", |mut c| {
                let (key, value) = (self.key.clone(), value.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await
            .map(|_| ())
    }

    /// Stops renewing and revokes the lease: the record goes now, not after the TTL.
    pub async fn leave(self, store: &EtcdStore) -> Result<()> {
        self.renewals.abort();
        let lease = self.lease();
        store
            .call("revoke lease", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await
            .map(|_| ())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.renewals.abort();
    }
}

async fn grant_and_put(store: &EtcdStore, key: &str, value: &[u8], ttl_s: i64) -> Result<i64> {
    // A grant repeated after a lost answer leaves an unused lease, which expires.
    let lease = store
        .call("grant lease", |mut c| async move {
            c.lease_grant(ttl_s, None).await
        })
        .await?
        .id();
    store
        .call("register", |mut c| {
            let (key, value) = (key.to_owned(), value.to_vec());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
    Ok(lease)
}

/// Renews the lease three times per TTL. A broken stream is opened again; a lease that
/// expired meanwhile (the store was unreachable longer than the TTL) is replaced and the
/// record put again.
async fn renew(
    store: EtcdStore,
    key: String,
    value: Arc<Mutex<Vec<u8>>>,
    ttl_s: i64,
    lease: Arc<AtomicI64>,
) {
    let period = Duration::from_millis(ttl_s as u64 * 1000 / 3);
    let mut client: Client = store.client.clone();
    loop {
        let id = lease.load(Ordering::Relaxed);
        if let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(store.timeout, client.lease_keep_alive(id)).await
        {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(store.timeout, stream.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => {
                        // Expired: etcd already deleted the record.
                        let value = value.lock().expect("membership value lock").clone();
                        if let Ok(new) = grant_and_put(&store, &key, &value, ttl_s).await {
                            lease.store(new, Ordering::Relaxed);
                        }
                        break;
                    }
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
        }
        tokio::time::sleep(period.min(Duration::from_secs(1))).await;
    }
}
