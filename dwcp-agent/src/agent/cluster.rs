//! The daemon's side of the cluster store in etcd mode (`[store] kind = "etcd"`):
//! - membership: a task registers the gateway on a lease of its own (renewed by
//!   `store::Membership`), keeps its record current, and revokes the lease when the daemon
//!   stops;
//! - the published topology: a task watches it and hands each generation to the state owner
//!   (`Input::PublishedTopology`), which applies it atomically, as a reload; the topology in
//!   force is cached in the state directory, so a restart with the store unreachable runs
//!   on it;
//! - reservations: admissions, extensions and cancellations are decided by the store
//!   (`EtcdStore::admit`, `extend`, `cancel`) on tasks of their own, off the state owner's
//!   loop, which is fed the outcome (`Decided`) before the request is answered; a watch of
//!   the reservations mirrors every gateway's into the state owner
//!   (`Input::StoredReservation`, `...Gone`), so each gateway polices those whose traffic
//!   enters at it (a removal marked as a preemption is told as one); any gateway expires
//!   ended ones.
//!   With the store unreachable, admissions and cancellations fail (503) and the mirror keeps
//!   what it holds; the watch relists on reconnection and reports what went meanwhile. The
//!   mirror is cached in the state directory, so a restart with the store unreachable
//!   polices what it held.
//! - link figures: a task publishes the figures this gateway measured on its links
//!   (`store::publish_figures`), and a watch of every gateway's hands the current ones to the
//!   state owner (`Input::StoredFigures`), at most once a second, for the links it shows with
//!   no figures of its own; they never change health or routes.
//!
//! The store is never in the forwarding path: while it is unreachable these tasks retry, and
//! nothing else waits for them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use dwcp_control::{
    bandwidth::{
        Admission, BandwidthError, ExtendRequest, Reservation, ReservationId, ReservationReply,
        ReservationRequest, UnixSeconds,
    },
    config::AgentConfig,
    input::{unix_now, Input},
    link_state::{current_figures, StoredFigures, StoredLinkFigures},
    store::{GatewayRecord, PublishedTopology},
    topology::LinkId,
    view::{AgentSnapshot, ReservationsView},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::store::{
    ClusterStoreError, EtcdStore, Membership, PrefixWatch, WatchEvent, DEFAULT_TIMEOUT,
};

/// The topology in force, in the state directory (etcd mode).
pub const TOPOLOGY_CACHE_FILE: &str = "topology.json";

/// TTL of the membership lease: a gateway gone (killed, cut off) leaves the listing within
/// this, and a few seconds of store trouble do not drop one that is alive.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(5);
/// Pause before registering again after a failure (store unreachable).
const RETRY: Duration = Duration::from_secs(1);
/// How often a gateway removes ended reservations from the store: they stop holding
/// bandwidth at their end anyway (each mirror's clock), this only frees their ledgers' room.
const EXPIRY_EVERY: Duration = Duration::from_secs(2);

/// A reservation operation the store decided: the state owner handles `inputs` (the mirror
/// follows at once, not only when the watch reports it), publishes, then answers `reply`.
pub(super) struct Decided {
    pub inputs: Vec<Input>,
    pub result: Result<ReservationReply, BandwidthError>,
    pub reply: oneshot::Sender<Result<ReservationReply, BandwidthError>>,
}

/// The answer for an operation the store did not decide.
fn store_failed(e: ClusterStoreError) -> BandwidthError {
    match e {
        ClusterStoreError::Bandwidth(e) => e,
        ClusterStoreError::Unreachable(_) => BandwidthError::ClusterStore {
            detail: format!(
                "{e}; if the request reached the store it may have been applied: send it again \
                 once the store is back (with the same request_id an admission is made once)"
            ),
            unreachable: true,
        },
        e => BandwidthError::ClusterStore {
            detail: e.to_string(),
            unreachable: false,
        },
    }
}

/// Admits `cand` (validated by the state owner from `request`, each link having `reservable`
/// bit/s) through the store under a fresh cluster-wide id, or the id its `request_id` got.
pub(super) fn admit(
    store: EtcdStore,
    request: Box<ReservationRequest>,
    cand: Reservation,
    reservable: BTreeMap<LinkId, u64>,
    reply: oneshot::Sender<Result<ReservationReply, BandwidthError>>,
    decided: mpsc::Sender<Decided>,
) {
    tokio::spawn(async move {
        let admitted = async {
            let cand = store.admission_candidate(&request, cand).await?;
            store.admit(&cand, &reservable).await
        }
        .await;
        send_admission(admitted, reply, decided).await;
    });
}

/// Extends reservation `id` through the store (whichever gateway admitted it), as `request`
/// asks; each link has `reservable` bit/s.
pub(super) fn extend(
    store: EtcdStore,
    id: ReservationId,
    request: ExtendRequest,
    reservable: BTreeMap<LinkId, u64>,
    reply: oneshot::Sender<Result<ReservationReply, BandwidthError>>,
    decided: mpsc::Sender<Decided>,
) {
    tokio::spawn(async move {
        let extended = store.extend(id, &request, unix_now(), &reservable).await;
        send_admission(extended, reply, decided).await;
    });
}

/// Hands the state owner an admission or extension the store decided: the reservation as
/// stored, and the ones it preempted (told as preempted).
async fn send_admission(
    admitted: Result<Admission, ClusterStoreError>,
    reply: oneshot::Sender<Result<ReservationReply, BandwidthError>>,
    decided: mpsc::Sender<Decided>,
) {
    let now_unix_s = unix_now();
    let (inputs, result) = match admitted {
        Ok(a) => {
            info!(id = %a.reservation.id, end = a.reservation.end, preempted = a.preempted.len(), "reservation admitted by the cluster store");
            let inputs = a
                .preempted
                .iter()
                .map(|r| Input::StoredReservationGone {
                    id: r.id,
                    now_unix_s,
                    preempted_by: Some(a.reservation.id),
                })
                .chain([Input::StoredReservation {
                    reservation: a.reservation.clone(),
                }])
                .collect();
            (inputs, Ok(ReservationReply::Admitted(a)))
        }
        Err(e) => {
            info!(error = %e, "reservation not admitted by the cluster store");
            (Vec::new(), Err(store_failed(e)))
        }
    };
    let _ = decided
        .send(Decided {
            inputs,
            result,
            reply,
        })
        .await;
}

/// Cancels reservation `id` in the store (whichever gateway admitted it).
pub(super) fn cancel(
    store: EtcdStore,
    id: ReservationId,
    reply: oneshot::Sender<Result<ReservationReply, BandwidthError>>,
    decided: mpsc::Sender<Decided>,
) {
    tokio::spawn(async move {
        let (inputs, result) = match store.cancel(id).await {
            Ok(r) => (
                vec![Input::StoredReservationGone {
                    id,
                    now_unix_s: unix_now(),
                    preempted_by: None,
                }],
                Ok(ReservationReply::Cancelled(r)),
            ),
            Err(e) => (Vec::new(), Err(store_failed(e))),
        };
        let _ = decided
            .send(Decided {
                inputs,
                result,
                reply,
            })
            .await;
    });
}

/// A watch of `prefix`, opened once the store answers (tried every [`RETRY`], the first
/// failure logged); `known`: the keys its follower holds already.
async fn watch_once_reachable(
    store: &EtcdStore,
    prefix: &str,
    known: &[String],
    what: &str,
) -> PrefixWatch {
    let mut failing = false;
    loop {
        match store.watch_prefix_knowing(prefix, known.to_vec()).await {
            Ok(w) => return w,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cluster store: {what} not watched yet; retrying every {RETRY:?}");
                }
                failing = true;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Mirrors the store's reservations into the state owner: each one listed or put, and each
/// one deleted (a relist after an outage or a compaction reports what went meanwhile; the
/// first list, those of `cached` gone meanwhile). `listed` is sent once the store has
/// answered the first list.
pub(super) fn reservations_watch(
    store: EtcdStore,
    inputs: mpsc::Sender<Input>,
    cached: &[Reservation],
    listed: oneshot::Sender<()>,
) -> JoinHandle<()> {
    let known: Vec<String> = cached
        .iter()
        .map(|r| store.keys().reservation(r.id))
        .collect();
    tokio::spawn(async move {
        let prefix = store.keys().reservations();
        let mut watch = watch_once_reachable(&store, &prefix, &known, "reservations").await;
        let _ = listed.send(());
        loop {
            let input = match watch.next().await {
                WatchEvent::Put { key, value } => {
                    match serde_json::from_slice::<Reservation>(&value) {
                        Ok(reservation) => Input::StoredReservation { reservation },
                        Err(e) => {
                            warn!(error = %e, key, "cluster store: reservation unreadable; not mirrored");
                            continue;
                        }
                    }
                }
                WatchEvent::Delete { key } => {
                    let id = key
                        .strip_prefix(&prefix)
                        .and_then(|digits| digits.parse().ok())
                        .map(ReservationId);
                    let Some(id) = id else { continue };
                    // A preemption is marked in the transaction that deleted the key.
                    let preempted_by = match store.removal(id).await {
                        Ok(mark) => mark.and_then(|m| m.preempted_by),
                        Err(e) => {
                            warn!(error = %e, %id, "cluster store: why reservation {id} went is unknown; told as cancelled or expired");
                            None
                        }
                    };
                    Input::StoredReservationGone {
                        id,
                        now_unix_s: unix_now(),
                        preempted_by,
                    }
                }
            };
            if inputs.send(input).await.is_err() {
                return;
            }
        }
    })
}

/// How often the figures watch hands the state owner what changed (and drops figures that
/// grew too old): a bound on the inputs, whatever the number of gateways writing.
const FIGURES_EVERY: Duration = Duration::from_secs(1);

/// Follows every gateway's link figures in the store and hands the state owner those current
/// (measured within `max_age`) whenever they change, at most once per [`FIGURES_EVERY`].
pub(super) fn figures_watch(
    store: EtcdStore,
    max_age: Duration,
    inputs: mpsc::Sender<Input>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let prefix = store.keys().figures();
        let mut watch = watch_once_reachable(&store, &prefix, &[], "link figures").await;
        let mut entries: std::collections::BTreeMap<String, StoredFigures> = Default::default();
        let mut sent: Vec<StoredLinkFigures> = Vec::new();
        let mut tick = tokio::time::interval(FIGURES_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = watch.next() => match event {
                    WatchEvent::Put { key, value } => {
                        match serde_json::from_slice::<StoredFigures>(&value) {
                            Ok(entry) => {
                                entries.insert(key, entry);
                            }
                            Err(e) => {
                                warn!(error = %e, key, "cluster store: link figures unreadable; ignored");
                                entries.remove(&key);
                            }
                        }
                    }
                    WatchEvent::Delete { key } => {
                        entries.remove(&key);
                    }
                },
                _ = tick.tick() => {
                    let current = current_figures(entries.values(), super::now().unix_ms, max_age);
                    if current != sent {
                        sent = current.clone();
                        if inputs.send(Input::StoredFigures { links: current }).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
}

/// Removes ended reservations from the store, every `EXPIRY_EVERY`; any gateway may (one that
/// another removed first is skipped), so one gateway down leaves nothing behind.
pub(super) fn reservations_expiry(store: EtcdStore) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now: UnixSeconds = unix_now();
            match store.expire(now).await {
                Ok(expired) if !expired.is_empty() => {
                    info!(
                        count = expired.len(),
                        "cluster store: ended reservations removed"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cluster store: expiry not run"),
            }
        }
    })
}

/// Joins the election of the admission leader (`store::leader`) at start, so that a leader
/// is there before the first admission; again every `RETRY` while the store does not answer.
/// The election's own tasks then run as long as the store.
pub(super) fn admission_election(store: EtcdStore) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Err(e) = store.join_admission_election().await {
            tracing::debug!(error = %e, "cluster store: admission election not joined yet");
            tokio::time::sleep(RETRY).await;
        }
        info!(
            leads = store.leads_admissions(),
            "cluster store: admission leader election joined"
        );
    })
}

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
        let mut watch = watch_once_reachable(&store, &key, &[], "topology").await;
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
/// one, else none (the file's own); and whether the store answered.
pub(super) async fn initial_topology(
    store: &EtcdStore,
    state_dir: &Path,
) -> (Option<PublishedTopology>, bool) {
    let topology = match store.topology().await {
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
            return (cached, false);
        }
    };
    (topology, true)
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

/// The reservations a gateway mirrors, in the state directory (etcd mode): a restart with the
/// store unreachable goes on policing them.
pub const RESERVATIONS_CACHE_FILE: &str = "reservations-mirror.json";

/// At most one write of the mirror's cache per this: a burst of admissions across the
/// cluster costs one write, not one per reservation.
const RESERVATIONS_CACHE_EVERY: Duration = Duration::from_secs(1);

/// The mirrored reservations cached, or none (a warning says why).
pub(super) fn cached_reservations(state_dir: &Path) -> Vec<Reservation> {
    let path = state_dir.join(RESERVATIONS_CACHE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, path = %path.display(), "cluster store unreachable and no cached reservations: none policed until it answers");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<Vec<Reservation>>(&bytes) {
        Ok(cached) => {
            warn!(
                count = cached.len(),
                "cluster store unreachable: policing the cached reservations until it answers"
            );
            cached
        }
        Err(e) => {
            warn!(error = %e, path = %path.display(), "cached reservations unreadable; ignored");
            Vec::new()
        }
    }
}

/// Keeps the mirror's cache current once the store has `listed` the reservations (before,
/// the mirror holds nothing newer than the cache): the stored reservations of each snapshot
/// that changed them, written at most every [`RESERVATIONS_CACHE_EVERY`] (temporary file,
/// then rename: never half a file), off the state owner's loop.
pub(super) fn reservations_cache(
    state_dir: PathBuf,
    mut snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    listed: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if listed.await.is_err() {
            return;
        }
        // Written a pause after the list, once the state owner mirrors what it brought.
        snapshot.mark_changed();
        let path = state_dir.join(RESERVATIONS_CACHE_FILE);
        let tmp = path.with_extension("json.tmp");
        let mut written = None;
        while snapshot.changed().await.is_ok() {
            // Changes within the pause are written together.
            tokio::time::sleep(RESERVATIONS_CACHE_EVERY).await;
            let view = snapshot.borrow_and_update().reservations.clone();
            let Some(view) = view else { continue };
            if written
                .as_ref()
                .is_some_and(|w: &Arc<ReservationsView>| w.stored == view.stored)
            {
                continue;
            }
            let json = serde_json::to_vec(&view.stored).expect("reservations serialise");
            let (tmp, path) = (tmp.clone(), path.clone());
            let wrote = tokio::task::spawn_blocking(move || {
                std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path))
            })
            .await;
            if let Ok(Err(e)) = wrote {
                warn!(error = %e, "mirrored reservations not cached; a restart with the store unreachable polices the last ones cached");
            }
            written = Some(view);
        }
    })
}
