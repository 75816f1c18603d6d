//! The daemon's side of the cluster store in etcd mode (`[store] kind = "etcd"`):
//! - membership: a task registers the gateway on a lease of its own (renewed by
//!   `store::Membership`), keeps its record current, and revokes the lease when the daemon
//!   stops;
//! - the published topology: a task watches it and hands each generation to the state owner
//!   (`Input::PublishedTopology`), which applies it atomically, as a reload; the topology in
//!   force is cached in the state directory, so a restart with the store unreachable runs
//!   on it.
//!
//! The store is never in the forwarding path: while it is unreachable these tasks retry, and
//! nothing else waits for them.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use dwcp_control::{
    config::AgentConfig,
    input::Input,
    store::{GatewayRecord, PublishedTopology},
    view::AgentSnapshot,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::store::{EtcdStore, Membership, WatchEvent, DEFAULT_TIMEOUT};

/// The topology in force, in the state directory (etcd mode).
pub const TOPOLOGY_CACHE_FILE: &str = "topology.json";

/// TTL of the membership lease: a gateway gone (killed, cut off) leaves the listing within
/// this, and a few seconds of store trouble do not drop one that is alive.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(5);
/// Pause before registering again after a failure (store unreachable).
const RETRY: Duration = Duration::from_secs(1);

/// The running membership task.
pub(super) struct MembershipTask {
    task: JoinHandle<()>,
    leave: oneshot::Sender<()>,
}

impl MembershipTask {
    /// Registers the gateway of `config` and keeps its record current with `snapshot`.
    pub(super) fn start(
        store: EtcdStore,
        config: &AgentConfig,
        snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    ) -> MembershipTask {
        let (leave, left) = oneshot::channel();
        let task = tokio::spawn(run_membership(store, record(config), snapshot, left));
        MembershipTask { task, leave }
    }

    /// Revokes the lease (the record goes at once), waiting at most one store call.
    pub(super) async fn leave(self) {
        let _ = self.leave.send(());
        let bound = DEFAULT_TIMEOUT + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.task).await.is_err() {
            warn!("cluster store: leaving timed out; the membership record expires with its lease");
        }
    }
}

/// The gateway's record as configured at start; the topology generation comes from the
/// snapshot. `address`: its underlay addresses (the WireGuard links' are not configured).
fn record(config: &AgentConfig) -> GatewayRecord {
    let mut addresses: Vec<String> = config
        .local_links
        .iter()
        .filter(|l| !l.local_ip.is_unspecified())
        .map(|l| l.local_ip.to_string())
        .collect();
    addresses.sort();
    addresses.dedup();
    GatewayRecord {
        name: config.gateway.clone(),
        region: config.region.clone(),
        address: addresses.join(","),
        version: env!("CARGO_PKG_VERSION").to_string(),
        topology_generation: 0,
    }
}

async fn run_membership(
    store: EtcdStore,
    base: GatewayRecord,
    mut snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    mut left: oneshot::Receiver<()>,
) {
    let mut membership: Option<Membership> = None;
    let mut published: Option<GatewayRecord> = None;
    let mut failing = false;
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let record = GatewayRecord {
            topology_generation: snapshot
                .borrow_and_update()
                .published_topology_generation
                .unwrap_or(0),
            ..base.clone()
        };
        if published.as_ref() != Some(&record) {
            let result = match &membership {
                None => store
                    .register(&record, MEMBERSHIP_TTL)
                    .await
                    .map(|m| membership = Some(m)),
                Some(m) => m.update(&store, &record).await,
            };
            match result {
                Ok(()) => {
                    info!(
                        gateway = %record.name,
                        generation = record.topology_generation,
                        "cluster store: membership registered"
                    );
                    published = Some(record);
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cluster store: membership not registered; retrying every {RETRY:?}");
                    }
                    failing = true;
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut left => break,
            changed = snapshot.changed() => if changed.is_err() { break },
            _ = retry.tick() => {}
        }
    }
    if let Some(m) = membership {
        match m.leave(&store).await {
            Ok(()) => info!("cluster store: membership revoked"),
            Err(e) => {
                warn!(error = %e, "cluster store: leaving failed; the record expires with its lease")
            }
        }
    }
}

/// Follows the published topology: each generation, and the one found at each (re)list, goes
/// to the state owner (which ignores the one in force).
pub(super) fn topology_watch(store: EtcdStore, inputs: mpsc::Sender<Input>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let key = store.keys().topology();
        let mut failing = false;
        let mut watch = loop {
            match store.watch_prefix(&key).await {
                Ok(w) => break w,
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cluster store: topology not watched yet; retrying every {RETRY:?}");
                    }
                    failing = true;
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        loop {
            match watch.next().await {
                WatchEvent::Put { key: k, value } if k == key => {
                    match serde_json::from_slice::<PublishedTopology>(&value) {
                        Ok(topology) => {
                            if inputs
                                .send(Input::PublishedTopology { topology })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, key, "cluster store: topology unreadable; the topology in force stays")
                        }
                    }
                }
                WatchEvent::Delete { key: k } if k == key => {
                    warn!(
                        key,
                        "cluster store: topology deleted; the topology in force stays"
                    );
                }
                // Keys that only share the prefix.
                _ => {}
            }
        }
    })
}

/// The topology to start on in etcd mode: the store's if it answers (cached), else the cached
/// one, else none (the file's own).
pub(super) async fn initial_topology(
    store: &EtcdStore,
    state_dir: &Path,
) -> Option<PublishedTopology> {
    match store.topology().await {
        Ok(Some(t)) => {
            info!(
                generation = t.generation,
                "cluster store: starting on its topology"
            );
            Some(t)
        }
        Ok(None) => {
            info!("cluster store: no topology published yet; starting on the file's");
            None
        }
        Err(e) => {
            let cached = read_cache(state_dir);
            match &cached {
                Some(t) => {
                    warn!(error = %e, generation = t.generation, "cluster store: starting on the cached topology")
                }
                None => {
                    warn!(error = %e, "cluster store: no cached topology; starting on the file's")
                }
            }
            cached
        }
    }
}

fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOPOLOGY_CACHE_FILE)
}

fn read_cache(state_dir: &Path) -> Option<PublishedTopology> {
    let path = cache_path(state_dir);
    let text = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(error = %e, path = %path.display(), "cached topology unreadable; ignored");
            None
        }
    }
}

/// Writes the topology in force (temporary file, then rename: never half a file).
pub(super) fn write_cache(state_dir: &Path, topology: &PublishedTopology) {
    let path = cache_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec(topology).expect("a topology serialises");
    if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path)) {
        warn!(error = %e, path = %path.display(), "topology not cached; a restart with the store unreachable starts on the file's");
    }
}
