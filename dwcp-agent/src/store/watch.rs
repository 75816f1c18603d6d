//! A watch of a key prefix that survives member deaths, cluster restarts and compaction
//! without losing a delete (Cilium's `pkg/kvstore` lost deletes when a watch restarted from
//! a fresh list without comparing it with what it had reported).
//!
//! It lists the prefix at one revision, then watches from the next. A broken stream is resumed
//! from the revision after the last event seen, so etcd replays what happened meanwhile,
//! deletes included. If that history was compacted (or etcd cancels the watch), it lists again
//! and reconciles with the keys it has reported: a key gone from the list is reported deleted,
//! a new or changed one put. Pull-based and cancel-safe: state changes only once a call to
//! the store has returned, so dropping [`PrefixWatch::next`] (a timeout) loses nothing.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchStream};

use super::{ClusterStoreError, EtcdStore, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

pub struct PrefixWatch {
    store: EtcdStore,
    prefix: String,
    /// Every key reported present, with its `mod_revision`.
    known: BTreeMap<String, i64>,
    pending: VecDeque<WatchEvent>,
    stream: Option<WatchStream>,
    /// Where the watch resumes: one past the last revision reported.
    next_revision: i64,
    must_relist: bool,
    relists: u64,
}

impl EtcdStore {
    /// Lists `prefix` (its keys come first, as puts) and watches it from then on.
    pub async fn watch_prefix(&self, prefix: &str) -> Result<PrefixWatch> {
        self.watch_prefix_knowing(prefix, Vec::new()).await
    }

    /// As [`EtcdStore::watch_prefix`], for a follower that holds `known` keys already (a
    /// cache): the first list also reports those gone, as deletes.
    pub async fn watch_prefix_knowing(
        &self,
        prefix: &str,
        known: Vec<String>,
    ) -> Result<PrefixWatch> {
        let mut w = PrefixWatch {
            store: self.clone(),
            prefix: prefix.to_owned(),
            // No revision: every key listed is reported.
            known: known.into_iter().map(|k| (k, 0)).collect(),
            pending: VecDeque::new(),
            stream: None,
            next_revision: 0,
            must_relist: false,
            relists: 0,
        };
        w.relist().await?;
        w.relists = 0;
        Ok(w)
    }
}

impl EtcdStore {
    /// Watches `prefix` from now on, without a list: for keys that cannot exist before the
    /// caller writes them. The watch is in place when this returns. (A watch from the
    /// revision after a list, once other writes have come, waits for etcd's catch-up loop,
    /// which runs every 100 ms: measured, the first admission verdicts of a gateway that had
    /// just listed took 180 ms instead of 10.)
    pub async fn watch_prefix_from_now(&self, prefix: &str) -> Result<PrefixWatch> {
        let options = WatchOptions::new().with_prefix();
        let mut stream = self
            .call("watch", |mut c| {
                let (prefix, options) = (prefix.to_owned(), options.clone());
                async move { c.watch(prefix, Some(options)).await }
            })
            .await?;
        let created = tokio::time::timeout(self.timeout, stream.message()).await;
        let revision = match created {
            Ok(Ok(Some(resp))) if resp.created() => resp.header().map_or(0, |h| h.revision()),
            Ok(Err(e)) => return Err(e.into()),
            _ => {
                return Err(ClusterStoreError::Unreachable(format!(
                    "watch {prefix}: not created within {:?}",
                    self.timeout
                )))
            }
        };
        Ok(PrefixWatch {
            store: self.clone(),
            prefix: prefix.to_owned(),
            known: BTreeMap::new(),
            pending: VecDeque::new(),
            stream: Some(stream),
            next_revision: revision + 1,
            must_relist: false,
            relists: 0,
        })
    }
}

impl PrefixWatch {
    /// The next change. Retries (with a pause) while the store is unreachable; bound it with a
    /// timeout to do something else meanwhile.
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if let Err(e) = self.step().await {
                tracing::debug!(prefix = %self.prefix, error = %e, "watch: store unreachable, retrying");
                self.stream = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Lists made after the first one (compaction or a cancelled watch).
    pub fn relists(&self) -> u64 {
        self.relists
    }

    async fn step(&mut self) -> Result<()> {
        if self.must_relist {
            return self.relist().await;
        }
        let Some(stream) = self.stream.as_mut() else {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(self.next_revision);
            let prefix = self.prefix.clone();
            let stream = self
                .store
                .call("watch", |mut c| {
                    let (prefix, options) = (prefix.clone(), options.clone());
                    async move { c.watch(prefix, Some(options)).await }
                })
                .await?;
            self.stream = Some(stream);
            return Ok(());
        };
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.compact_revision() > 0 || resp.canceled() {
                    tracing::info!(
                        prefix = %self.prefix,
                        compact_revision = resp.compact_revision(),
                        reason = resp.cancel_reason(),
                        "watch: history gone, listing again"
                    );
                    self.stream = None;
                    self.must_relist = true;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    self.next_revision = self.next_revision.max(kv.mod_revision() + 1);
                    match event.event_type() {
                        EventType::Put => {
                            self.known.insert(key.clone(), kv.mod_revision());
                            self.pending.push_back(WatchEvent::Put {
                                key,
                                value: kv.value().to_vec(),
                            });
                        }
                        EventType::Delete => {
                            if self.known.remove(&key).is_some() {
                                self.pending.push_back(WatchEvent::Delete { key });
                            }
                        }
                    }
                }
                Ok(())
            }
            // The stream ended or broke (a member died): resume from `next_revision`.
            Ok(None) => {
                self.stream = None;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Lists the prefix at one revision and reports the difference with what was known.
    async fn relist(&mut self) -> Result<()> {
        let resp = self.store.get_prefix("list", self.prefix.clone()).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let listed: BTreeMap<String, (i64, Vec<u8>)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    (kv.mod_revision(), kv.value().to_vec()),
                )
            })
            .collect();
        for key in self.known.keys() {
            if !listed.contains_key(key) {
                self.pending
                    .push_back(WatchEvent::Delete { key: key.clone() });
            }
        }
        for (key, (revision, value)) in &listed {
            if self.known.get(key) != Some(revision) {
                self.pending.push_back(WatchEvent::Put {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        self.known = listed.into_iter().map(|(k, (r, _))| (k, r)).collect();
        self.next_revision = revision + 1;
        self.stream = None;
        self.must_relist = false;
        self.relists += 1;
        Ok(())
    }
}
