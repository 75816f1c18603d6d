//! The topology every gateway runs in etcd mode, under `<prefix>/topology`: published by
//! `dwcp topology push` through any gateway's API, watched by every gateway (`agent/cluster.rs`).
//! Each push is one transaction guarded by the key's `mod_revision`, so two pushes at once
//! number their generations one after the other and neither is lost.

use dwcp_control::store::PublishedTopology;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{corrupt, ClusterStoreError, EtcdStore, Result};

/// Transactions lost to another push before giving up.
const MAX_PUSH_ATTEMPTS: u32 = 16;

impl EtcdStore {
    /// The published topology, if any, with the key's `mod_revision` (0 when absent).
    async fn read_topology(&self) -> Result<(Option<PublishedTopology>, i64)> {
        let key = self.keys.topology();
        let resp = self
            .call("read topology", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match resp.kvs().first() {
            None => Ok((None, 0)),
            Some(kv) => {
                let t = serde_json::from_slice(kv.value()).map_err(|e| corrupt(&key, e))?;
                Ok((Some(t), kv.mod_revision()))
            }
        }
    }

    /// The published topology, if any.
    pub async fn topology(&self) -> Result<Option<PublishedTopology>> {
        Ok(self.read_topology().await?.0)
    }

    /// Publishes `source` (validated TOML of the topology's tables) as the next generation;
    /// the same text as the one in force publishes nothing and returns it (so a push retried
    /// after `Unreachable` never makes two generations).
    pub async fn publish_topology(&self, source: &str) -> Result<PublishedTopology> {
        let key = self.keys.topology();
        for _ in 0..MAX_PUSH_ATTEMPTS {
            let (current, revision) = self.read_topology().await?;
            if let Some(current) = current.as_ref().filter(|c| c.source == source) {
                return Ok(current.clone());
            }
            let next = PublishedTopology {
                generation: current.map_or(1, |c| c.generation + 1),
                source: source.to_owned(),
            };
            let value = serde_json::to_vec(&next).expect("a topology serialises");
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            let resp = self.txn("publish topology", txn).await?;
            if resp.succeeded() {
                return Ok(next);
            }
        }
        Err(ClusterStoreError::TopologyContention {
            attempts: MAX_PUSH_ATTEMPTS,
        })
    }
}
