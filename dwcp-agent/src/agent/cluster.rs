//! The daemon's side of the cluster store in etcd mode (`[store] kind = "etcd"`): the
//! gateway's membership. A task registers the gateway on a lease of its own (renewed by
//! `store::Membership`), keeps its record current as the configuration changes, and
//! revokes the lease when the daemon stops. The store is never in the forwarding path: while
//! it is unreachable the task retries, and nothing else waits for it.

use std::{sync::Arc, time::Duration};

use dwcp_control::{config::AgentConfig, store::GatewayRecord, view::AgentSnapshot};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::store::{EtcdStore, Membership, DEFAULT_TIMEOUT};

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
        let task = tokio::spawn(run(store, record(config, 0), snapshot, left));
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

/// The gateway's record. `address`: its underlay addresses (the WireGuard links' are not
/// configured addresses).
fn record(config: &AgentConfig, topology_generation: u64) -> GatewayRecord {
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
        topology_generation,
    }
}

async fn run(
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
        // The topology lives in the configuration file for now: its generation is the
        // configuration's (bumped by each reload), not the topology store's, which also
        // counts every measurement.
        let record = GatewayRecord {
            topology_generation: snapshot.borrow_and_update().config_generation,
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
