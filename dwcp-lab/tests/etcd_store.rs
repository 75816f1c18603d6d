//! The cluster store on a real three-member etcd cluster (`dwcp_lab::etcd::EtcdCluster`: each
//! member in its own namespace, data on tmpfs, everything removed by the guard also when a
//! test fails). Three gateways are three separate etcd clients.
//!
//! Every wait is for a mechanism (an event, a key gone, an error) with a generous deadline;
//! the one comparison of times is a lower bound (a lease cannot expire before most of its
//! TTL), which a stalled machine only widens.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dwcp_agent::store::{ClusterStoreError, EtcdStore, PrefixWatch, WatchEvent};
use dwcp_control::bandwidth::{
    peak_load, BandwidthError, ExtendRequest, Ledger, Reservation, ReservationId,
    ReservationRequest, MAX_TIME,
};
use dwcp_control::store::{
    AdmissionVerdict, EtcdConfig, GatewayRecord, GatewayView, KeyLayout, QueuedAdmission,
    DEFAULT_PREFIX,
};
use dwcp_control::topology::LinkId;
use dwcp_lab::etcd::{reservation, EtcdCluster, Lcg};
use etcd_client::{Client, GetOptions, PutOptions};

const WAIT: Duration = Duration::from_secs(60);
const GBIT: u64 = 1_000_000_000;

/// The cluster, or `None` (the skip recorded) where it cannot run.
fn cluster(test: &str) -> Option<EtcdCluster> {
    if let Err(why) = dwcp_lab::etcd::available() {
        dwcp_lab::skip(test, &why);
        return None;
    }
    Some(EtcdCluster::start().expect("a three-member etcd cluster"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(cluster: &EtcdCluster) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: DEFAULT_PREFIX.into(),
        tls: None,
    })
    .await
    .expect("a lazy connection")
}

/// Checks every ledger against the reservable capacity and against the reservation keys:
/// each reservation is in the ledger of every link of its path and nowhere else.
fn check_consistent(
    ledgers: &BTreeMap<LinkId, Ledger>,
    reservations: &[Reservation],
    reservable: &BTreeMap<LinkId, u64>,
) {
    for (link, ledger) in ledgers {
        assert!(
            ledger.peak_bps(*link) <= reservable[link],
            "link {link} booked {} of {} bit/s",
            ledger.peak_bps(*link),
            reservable[link]
        );
    }
    for (&link, &cap) in reservable {
        let peak = peak_load(reservations, link, 0, MAX_TIME);
        assert!(
            peak <= cap,
            "reservations on link {link} sum to {peak} > {cap}"
        );
        let in_ledger: BTreeSet<ReservationId> = ledgers
            .get(&link)
            .map(|l| l.reservations.iter().map(|r| r.id).collect())
            .unwrap_or_default();
        let crossing: BTreeSet<ReservationId> = reservations
            .iter()
            .filter(|r| r.uses(link))
            .map(|r| r.id)
            .collect();
        assert_eq!(
            in_ledger, crossing,
            "ledger of link {link} vs reservation keys"
        );
    }
}

#[derive(Default, Debug)]
struct Outcomes {
    admitted: u64,
    refused: u64,
    contention: u64,
    preempted: u64,
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn concurrent_admissions_from_three_gateways_never_oversubscribe() {
    let Some(cluster) = cluster("concurrent_admissions_from_three_gateways_never_oversubscribe")
    else {
        return;
    };
    const GATEWAYS: u64 = 3;
    const TASKS_PER_GATEWAY: u64 = 8;
    const ATTEMPTS: u64 = 1_050;
    // Four links shared by six paths; 800 Mbit/s reservable each (1 Gbit/s less 20 %).
    let reservable: BTreeMap<LinkId, u64> = (1..=4).map(|l| (LinkId(l), GBIT * 8 / 10)).collect();
    let paths: [&[u32]; 6] = [&[1], &[1, 2], &[2, 3], &[3, 4], &[1, 4], &[2, 4]];
    let rt = runtime();
    let outcomes = rt.block_on(async {
        let gateways: Vec<EtcdStore> =
            futures::future::join_all((0..GATEWAYS).map(|_| connect(&cluster))).await;
        // Every version of every ledger, as a fourth client sees it: never over capacity.
        let mut watch = gateways[0]
            .watch_prefix(&gateways[0].keys().ledgers())
            .await
            .unwrap();
        let watched = tokio::spawn(async move {
            let mut latest = BTreeMap::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
                    Ok(WatchEvent::Put { key, value }) => {
                        let link = LinkId(key.rsplit('/').next().unwrap().parse().unwrap());
                        let ledger = Ledger::decode(link, &value).unwrap();
                        assert!(
                            ledger.peak_bps(link) <= GBIT * 8 / 10,
                            "{key} over capacity"
                        );
                        latest.insert(link, ledger);
                    }
                    Ok(WatchEvent::Delete { key }) => panic!("ledger {key} deleted"),
                    Err(_) => return latest,
                }
            }
        });
        let mut tasks = Vec::new();
        for g in 0..GATEWAYS {
            for t in 0..TASKS_PER_GATEWAY {
                let store = gateways[g as usize].clone();
                let reservable = reservable.clone();
                tasks.push(tokio::spawn(async move {
                    let mut rng = Lcg(g * 1_000 + t + 1);
                    let mut out = Outcomes::default();
                    let per_task = ATTEMPTS / (GATEWAYS * TASKS_PER_GATEWAY);
                    for k in 0..per_task {
                        let id = (g * TASKS_PER_GATEWAY + t) * 1_000 + k + 1;
                        let start = 1_000 + rng.below(20) * 100;
                        let cand = reservation(
                            id,
                            (10 + rng.below(90)) * 1_000_000,
                            start,
                            start + 100 + rng.below(3) * 100,
                            1 + rng.below(3) as u8,
                            paths[rng.below(paths.len() as u64) as usize],
                        );
                        match store.admit(&cand, &reservable).await {
                            Ok(a) => {
                                out.admitted += 1;
                                out.preempted += a.preempted.len() as u64;
                            }
                            Err(ClusterStoreError::Bandwidth(
                                BandwidthError::InsufficientBandwidth { .. },
                            )) => out.refused += 1,
                            Err(ClusterStoreError::Contention { .. }) => out.contention += 1,
                            Err(e) => panic!("admission {id}: {e}"),
                        }
                    }
                    out
                }));
            }
        }
        let mut total = Outcomes::default();
        for t in tasks {
            let o = t.await.unwrap();
            total.admitted += o.admitted;
            total.refused += o.refused;
            total.contention += o.contention;
            total.preempted += o.preempted;
        }
        let ledgers = gateways[1].ledgers().await.unwrap();
        let reservations = gateways[2].reservations().await.unwrap();
        check_consistent(&ledgers, &reservations, &reservable);
        let latest = watched.await.expect("no ledger version over capacity");
        assert_eq!(
            latest, ledgers,
            "the watch saw every ledger write up to the last"
        );
        assert_eq!(
            reservations.len() as u64,
            total.admitted - total.preempted,
            "every admitted reservation is stored, less those preempted"
        );
        total
    });
    eprintln!("{outcomes:?}");
    let attempts = (ATTEMPTS / (GATEWAYS * TASKS_PER_GATEWAY)) * GATEWAYS * TASKS_PER_GATEWAY;
    assert!(attempts >= 1_000);
    assert_eq!(
        outcomes.admitted + outcomes.refused + outcomes.contention,
        attempts
    );
    assert!(
        outcomes.admitted > 0 && outcomes.refused > 0,
        "{outcomes:?}: the links never filled"
    );
}

/// Applies watch events until the view equals the store's keys under `prefix`; returns the
/// keys reported deleted.
async fn follow_until_equal(
    watch: &mut PrefixWatch,
    view: &mut BTreeMap<String, Vec<u8>>,
    raw: &Client,
    prefix: &str,
) -> BTreeSet<String> {
    let deadline = Instant::now() + WAIT;
    let mut deleted = BTreeSet::new();
    loop {
        let truth = retry(|| list(raw.clone(), prefix)).await;
        if *view == truth {
            return deleted;
        }
        assert!(
            Instant::now() < deadline,
            "the watch did not converge: {view:?} vs {truth:?}"
        );
        if let Ok(e) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
            match e {
                WatchEvent::Put { key, value } => {
                    view.insert(key, value);
                }
                WatchEvent::Delete { key } => {
                    assert!(view.remove(&key).is_some(), "delete of unknown {key}");
                    deleted.insert(key);
                }
            }
        }
    }
}

/// A plain etcd client: the tests' writer, beside the store under test.
async fn raw(cluster: &EtcdCluster) -> Client {
    Client::connect(cluster.endpoints(), None).await.unwrap()
}

async fn list(
    mut raw: Client,
    prefix: &str,
) -> Result<BTreeMap<String, Vec<u8>>, etcd_client::Error> {
    let resp = raw
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect())
}

/// Runs a store call until the store answers (it restarts in these tests).
async fn retry<T, E: Into<ClusterStoreError>, F: std::future::Future<Output = Result<T, E>>>(
    mut call: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match call().await.map_err(Into::into) {
            Ok(v) => return v,
            Err(ClusterStoreError::Unreachable(e)) if Instant::now() < deadline => {
                eprintln!("store unreachable, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The restart tests: ten keys watched, one deleted live; the cluster stopped (the watch
/// breaks); restarted; then, before the watch is polled again, `meanwhile` changes the keys
/// (and may compact). The watch must report every delete.
fn watch_across_restart(test: &str, compact: bool) {
    let Some(mut cluster) = cluster(test) else {
        return;
    };
    let rt = runtime();
    let prefix = format!("{DEFAULT_PREFIX}/test/");
    let key = |i: u32| format!("{prefix}k{i:02}");
    let (writer, mut watch, mut view) = rt.block_on(async {
        let mut writer = raw(&cluster).await;
        let watcher = connect(&cluster).await;
        for i in 0..10 {
            writer.put(key(i), "v1", None).await.unwrap();
        }
        let mut watch = watcher.watch_prefix(&prefix).await.unwrap();
        let mut view = BTreeMap::new();
        let deleted = follow_until_equal(&mut watch, &mut view, &writer, &prefix).await;
        assert!(deleted.is_empty());
        assert_eq!(view.len(), 10);
        writer.delete(key(1), None).await.unwrap();
        let deleted = follow_until_equal(&mut watch, &mut view, &writer, &prefix).await;
        assert_eq!(deleted, BTreeSet::from([key(1)]), "a live delete");
        (writer, watch, view)
    });
    cluster.stop();
    rt.block_on(async {
        // Polled while the store is down: nothing to report, and nothing lost by timing out.
        assert!(tokio::time::timeout(Duration::from_secs(2), watch.next())
            .await
            .is_err());
    });
    cluster
        .start_again()
        .expect("the cluster restarts on its data");
    let relists_before = watch.relists();
    rt.block_on(async {
        retry(|| {
            let (mut w, k) = (writer.clone(), key(2));
            async move { w.delete(k, None).await }
        })
        .await;
        retry(|| {
            let (mut w, k) = (writer.clone(), key(3));
            async move { w.delete(k, None).await }
        })
        .await;
        retry(|| {
            let (mut w, k) = (writer.clone(), key(4));
            async move { w.put(k, "v2", None).await }
        })
        .await;
        retry(|| {
            let (mut w, k) = (writer.clone(), key(10));
            async move { w.put(k, "v1", None).await }
        })
        .await;
    });
    if compact {
        let revision = cluster.compact().expect("compaction");
        eprintln!("compacted at revision {revision}");
    }
    rt.block_on(async {
        let deleted = follow_until_equal(&mut watch, &mut view, &writer, &prefix).await;
        assert_eq!(
            deleted,
            BTreeSet::from([key(2), key(3)]),
            "deletes made while the watch was down"
        );
        assert_eq!(view.get(&key(4)).map(Vec::as_slice), Some(&b"v2"[..]));
    });
    let relists = watch.relists() - relists_before;
    eprintln!("relists after the restart: {relists}");
    if compact {
        assert!(
            relists >= 1,
            "the compacted history must be replaced by a list"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn a_watch_restart_loses_no_delete() {
    watch_across_restart("a_watch_restart_loses_no_delete", false);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn a_compacted_revision_triggers_a_relist_that_reports_the_deletes() {
    watch_across_restart(
        "a_compacted_revision_triggers_a_relist_that_reports_the_deletes",
        true,
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn with_the_store_down_admissions_fail_clearly_and_nothing_is_admitted() {
    let Some(mut cluster) =
        cluster("with_the_store_down_admissions_fail_clearly_and_nothing_is_admitted")
    else {
        return;
    };
    let reservable: BTreeMap<LinkId, u64> = [(LinkId(1), GBIT), (LinkId(2), GBIT)].into();
    let rt = runtime();
    let store = rt
        .block_on(connect(&cluster))
        .with_timeout(Duration::from_secs(2));
    let first = reservation(1, 100_000_000, 1_000, 2_000, 2, &[1, 2]);
    rt.block_on(store.admit(&first, &reservable)).unwrap();
    cluster.stop();
    rt.block_on(async {
        for id in 2..=6 {
            let cand = reservation(id, 100_000_000, 1_000, 2_000, 2, &[1, 2]);
            match store.admit(&cand, &reservable).await {
                Err(e @ ClusterStoreError::Unreachable(_)) => {
                    assert!(
                        e.to_string().starts_with("cluster store unreachable"),
                        "{e}"
                    );
                }
                other => panic!("admission {id} with the store down: {other:?}"),
            }
        }
        assert!(matches!(
            store.cancel(first.id).await,
            Err(ClusterStoreError::Unreachable(_))
        ));
    });
    cluster
        .start_again()
        .expect("the cluster restarts on its data");
    rt.block_on(async {
        let reservations = retry(|| store.reservations()).await;
        assert_eq!(
            reservations,
            std::slice::from_ref(&first),
            "only what was admitted before the outage"
        );
        let ledgers = store.ledgers().await.unwrap();
        check_consistent(&ledgers, &reservations, &reservable);
        // Admitting the same reservation again (a retry) does not book it twice.
        store.admit(&first, &reservable).await.unwrap();
        assert_eq!(store.ledgers().await.unwrap(), ledgers);
    });
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn a_membership_entry_disappears_after_its_lease_once_renewals_stop() {
    let Some(cluster) = cluster("a_membership_entry_disappears_after_its_lease_once_renewals_stop")
    else {
        return;
    };
    const TTL: Duration = Duration::from_secs(3);
    let rt = runtime();
    rt.block_on(async {
        let stores = [
            connect(&cluster).await,
            connect(&cluster).await,
            connect(&cluster).await,
        ];
        let record = |name: &str| GatewayRecord {
            name: name.into(),
            region: "us-east-1".into(),
            address: "10.0.0.1".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            topology_generation: 1,
        };
        let a = stores[0].register(&record("gw-a"), TTL).await.unwrap();
        let b = stores[1].register(&record("gw-b"), TTL).await.unwrap();
        let names =
            |rs: Vec<GatewayView>| rs.into_iter().map(|r| r.record.name).collect::<Vec<_>>();
        // Renewals keep both well past their TTL.
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(names(stores[2].gateways().await.unwrap()), ["gw-a", "gw-b"]);
        let listed = stores[2].gateways().await.unwrap();
        assert_eq!(listed[0].record, record("gw-a"));
        // Renewed every third of the TTL (a stalled machine may stretch that, not past it).
        let contact = listed[0].last_contact_seconds.expect("a live lease");
        assert!(contact <= TTL.as_secs(), "last contact {contact} s ago");

        drop(a);
        let stopped = Instant::now();
        loop {
            let listed = names(stores[2].gateways().await.unwrap());
            if listed == ["gw-b"] {
                break;
            }
            assert_eq!(listed, ["gw-a", "gw-b"]);
            assert!(
                stopped.elapsed() < WAIT,
                "gw-a still listed {:?} after its renewals stopped",
                stopped.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The last renewal was at most a third of the TTL before the stop.
        assert!(
            stopped.elapsed() >= TTL / 2,
            "gone after {:?}",
            stopped.elapsed()
        );

        b.leave(&stores[1]).await.unwrap();
        assert!(
            stores[2].gateways().await.unwrap().is_empty(),
            "a gateway that leaves goes at once"
        );
    });
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn admissions_go_on_when_the_leader_is_killed_and_none_is_booked_twice() {
    let Some(mut cluster) =
        cluster("admissions_go_on_when_the_leader_is_killed_and_none_is_booked_twice")
    else {
        return;
    };
    let reservable: BTreeMap<LinkId, u64> = [(LinkId(1), GBIT), (LinkId(2), GBIT)].into();
    let cand = |id: u64| reservation(id, 10_000_000, 1_000, 2_000, 2, &[1, 2]);
    let rt = runtime();
    let store = rt.block_on(connect(&cluster));
    rt.block_on(async {
        for id in 1..=20 {
            store.admit(&cand(id), &reservable).await.unwrap();
        }
    });
    let killed = cluster.kill_leader().expect("a leader to kill");
    rt.block_on(async {
        // During the election a call may find no leader; the same reservation admitted again
        // is admitted once.
        for id in 21..=40 {
            let r = cand(id);
            retry(|| store.admit(&r, &reservable)).await;
        }
    });
    assert_ne!(cluster.leader().unwrap(), killed, "a new leader");
    cluster.restart(killed).expect("the killed member rejoins");
    rt.block_on(async {
        let reservations = store.reservations().await.unwrap();
        assert_eq!(
            reservations.iter().map(|r| r.id.0).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>()
        );
        check_consistent(&store.ledgers().await.unwrap(), &reservations, &reservable);
        // Cancel and expiry take reservations out of their ledgers the same way.
        assert_eq!(store.cancel(ReservationId(1)).await.unwrap(), cand(1));
        assert!(matches!(
            store.cancel(ReservationId(1)).await,
            Err(ClusterStoreError::Bandwidth(BandwidthError::NotFound(_)))
        ));
        assert!(store.expire(1_999).await.unwrap().is_empty());
        assert_eq!(store.expire(2_000).await.unwrap().len(), 39);
        assert!(store.reservations().await.unwrap().is_empty());
        let ledgers = store.ledgers().await.unwrap();
        assert!(
            ledgers.values().all(|l| l.reservations.is_empty()),
            "{ledgers:?}"
        );
    });
}

/// A gateway that took the admission turn and died holds the others' admissions back only
/// until the turn's lease ends: they are written after the turn is gone, not before, and not
/// given up.
#[test]
fn a_turn_left_by_a_dead_gateway_holds_admissions_back_only_until_its_lease_ends() {
    let Some(cluster) =
        cluster("a_turn_left_by_a_dead_gateway_holds_admissions_back_only_until_its_lease_ends")
    else {
        return;
    };
    let reservable: BTreeMap<LinkId, u64> = [(LinkId(1), GBIT)].into();
    let rt = runtime();
    rt.block_on(async {
        let store = connect(&cluster).await;
        let turn = KeyLayout::new(DEFAULT_PREFIX).admission_turn();
        let mut plain = Client::connect(cluster.endpoints(), None).await.unwrap();
        let lease = plain.lease_grant(2, None).await.unwrap().id();
        let taken = plain
            .put(
                turn.as_str(),
                "a gateway that died",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        let cand = reservation(1, 100_000_000, 1_000, 2_000, 2, &[1]);
        store.admit(&cand, &reservable).await.unwrap();
        let written = plain
            .get(KeyLayout::new(DEFAULT_PREFIX).reservation(cand.id), None)
            .await
            .unwrap();
        let gone = plain.get(turn.as_str(), None).await.unwrap();
        assert!(gone.kvs().is_empty(), "the turn ended with its lease");
        // The turn was put at one revision and deleted (lease expiry) at the next: an
        // admission written while it was there would sit in between.
        let put_at = taken.header().unwrap().revision();
        assert!(
            written.kvs()[0].mod_revision() > put_at + 1,
            "admitted at revision {} while the turn (put at {put_at}) was held",
            written.kvs()[0].mod_revision()
        );
    });
}

/// The version of `key` (writes since it was made), 0 while it does not exist.
async fn version(raw: &mut Client, key: &str) -> Result<i64, etcd_client::Error> {
    let resp = raw.get(key, None).await?;
    Ok(resp.kvs().first().map(|kv| kv.version()).unwrap_or(0))
}

/// The RTT of each link in the figures at `key`.
async fn rtts(raw: &mut Client, key: &str) -> Vec<Option<u32>> {
    let resp = raw.get(key, None).await.unwrap();
    let entry: dwcp_control::link_state::StoredFigures =
        serde_json::from_slice(resp.kvs()[0].value()).unwrap();
    entry.links.iter().map(|l| l.figures.rtt_us).collect()
}

/// A gateway's link figures (`store::publish_figures`, fed its snapshots as the agent feeds
/// it): written at once; while both links' RTT swings by 60 % every 20 ms, at most once
/// per `figures_interval` (1 s), counted by the key's version over the window; not at all
/// while the figures only wobble under the thresholds; with the store stopped the task keeps
/// taking snapshots and writes again once it is back.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn figures_are_written_at_most_once_a_second_under_churn_and_resume_after_an_outage() {
    use dwcp_control::link_state::{LinkStateConfig, StoredFigures};
    use std::sync::Arc;
    let Some(mut cluster) =
        cluster("figures_are_written_at_most_once_a_second_under_churn_and_resume_after_an_outage")
    else {
        return;
    };
    let rt = runtime();
    let store = rt
        .block_on(connect(&cluster))
        .with_timeout(Duration::from_secs(2));
    let key = KeyLayout::new(DEFAULT_PREFIX).figures_of("gw-use1-a");
    let base = dwcp_lab::fixtures::three_region_snapshot();
    let with_rtt = |rtt_s: f64| {
        let mut s = base.clone();
        for l in s.links.iter_mut().filter(|l| l.interface.is_some()) {
            l.rtt_seconds = Some(rtt_s);
        }
        Arc::new(s)
    };
    let (snapshots, rx) = tokio::sync::watch::channel(with_rtt(0.050));
    let timers = LinkStateConfig::default();
    let publisher = rt.spawn(dwcp_agent::store::publish_figures(
        store,
        "gw-use1-a".into(),
        timers,
        rx,
    ));
    rt.block_on(async {
        let mut raw = raw(&cluster).await;
        let deadline = Instant::now() + WAIT;
        while version(&mut raw, &key).await.unwrap() == 0 {
            assert!(Instant::now() < deadline, "no figures written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let value = raw.get(key.as_str(), None).await.unwrap();
        let entry: StoredFigures = serde_json::from_slice(value.kvs()[0].value()).unwrap();
        let links: Vec<(u32, Option<u32>)> = entry
            .links
            .iter()
            .map(|l| (l.link.0, l.figures.rtt_us))
            .collect();
        assert_eq!(links, [(1, Some(50_000)), (3, Some(50_000))], "{entry:?}");

        // Churn: 50 ms and 80 ms alternately, every 20 ms, for 3 s.
        let (v0, t0) = (version(&mut raw, &key).await.unwrap(), Instant::now());
        let mut swing = 0u64;
        while t0.elapsed() < Duration::from_secs(3) {
            swing += 1;
            snapshots.send_replace(with_rtt(if swing.is_multiple_of(2) {
                0.050
            } else {
                0.080
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (v1, elapsed) = (version(&mut raw, &key).await.unwrap(), t0.elapsed());
        let writes = v1 - v0;
        let interval = timers.figures_interval.as_secs_f64();
        eprintln!(
            "churn: {swing} figure changes, {writes} writes in {:.2} s ({:.2} writes/s per link)",
            elapsed.as_secs_f64(),
            writes as f64 / elapsed.as_secs_f64()
        );
        // One write per interval, plus one at the window's edge.
        assert!(
            writes >= 1 && writes as f64 <= elapsed.as_secs_f64() / interval + 1.0,
            "{writes} writes in {elapsed:?}"
        );

        // Wobble under the thresholds (80 ms and 81 ms): once the last swing is written, no
        // more writes until the refresh (15 s).
        snapshots.send_replace(with_rtt(0.080));
        let deadline = Instant::now() + WAIT;
        while rtts(&mut raw, &key).await != [Some(80_000); 2] {
            assert!(Instant::now() < deadline, "80 ms never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let v2 = version(&mut raw, &key).await.unwrap();
        for i in 0..75u32 {
            snapshots.send_replace(with_rtt(if i.is_multiple_of(2) { 0.081 } else { 0.080 }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(version(&mut raw, &key).await.unwrap(), v2, "noise written");
        v2
    });

    // Outage: snapshots keep coming, nothing waits for the store, the task lives on.
    cluster.stop();
    rt.block_on(async {
        for i in 0..50u32 {
            snapshots.send_replace(with_rtt(if i.is_multiple_of(2) { 0.050 } else { 0.200 }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        !publisher.is_finished(),
        "the publisher ended in the outage"
    );
    cluster
        .start_again()
        .expect("the cluster restarts on its data");
    snapshots.send_replace(with_rtt(0.300));
    rt.block_on(async {
        let raw = retry(|| Client::connect(cluster.endpoints(), None)).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let resp = retry(|| {
                let mut raw = raw.clone();
                let key = key.clone();
                async move { raw.get(key, None).await }
            })
            .await;
            let entry: StoredFigures = serde_json::from_slice(resp.kvs()[0].value()).unwrap();
            if entry
                .links
                .iter()
                .all(|l| l.figures.rtt_us == Some(300_000))
            {
                break;
            }
            assert!(Instant::now() < deadline, "not written after the outage");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    publisher.abort();
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn extensions_across_gateways_never_oversubscribe_and_a_conflicting_one_is_refused() {
    let Some(cluster) =
        cluster("extensions_across_gateways_never_oversubscribe_and_a_conflicting_one_is_refused")
    else {
        return;
    };
    const MBIT: u64 = 1_000_000;
    let reservable: BTreeMap<LinkId, u64> = [(LinkId(1), GBIT), (LinkId(2), GBIT)].into();
    let to = |end: u64| ExtendRequest { end: end.into() };
    let rt = runtime();
    rt.block_on(async {
        let gw: Vec<EtcdStore> = futures::future::join_all((0..3).map(|_| connect(&cluster))).await;
        // Link 1: a until 2000, then b from 2000: each fits, a longer a does not.
        let a = reservation(1, 600 * MBIT, 1_000, 2_000, 2, &[1]);
        let b = reservation(2, 500 * MBIT, 2_000, 3_000, 2, &[1, 2]);
        gw[0].admit(&a, &reservable).await.unwrap();
        gw[1].admit(&b, &reservable).await.unwrap();
        // Extended through a third gateway: refused on link 1, with what is free there.
        let e = gw[2]
            .extend(a.id, &to(2_500), 1_500, &reservable)
            .await
            .unwrap_err();
        match &e {
            ClusterStoreError::Bandwidth(BandwidthError::InsufficientBandwidth {
                link,
                free_bps,
                ..
            }) => assert_eq!((*link, *free_bps), (LinkId(1), 500 * MBIT)),
            other => panic!("expected a refusal on link 1, got {other}"),
        }
        assert!(e.to_string().contains("link 1"), "{e}");
        // Not later, ended, or unknown: refused, nothing written.
        assert!(matches!(
            gw[2].extend(a.id, &to(2_000), 1_500, &reservable).await,
            Err(ClusterStoreError::Bandwidth(
                BandwidthError::NotAnExtension { .. }
            ))
        ));
        assert!(matches!(
            gw[2].extend(a.id, &to(2_500), 2_000, &reservable).await,
            Err(ClusterStoreError::Bandwidth(BandwidthError::Ended { .. }))
        ));
        assert!(matches!(
            gw[2]
                .extend(ReservationId(99), &to(2_500), 1_500, &reservable)
                .await,
            Err(ClusterStoreError::Bandwidth(BandwidthError::NotFound(_)))
        ));
        assert_eq!(gw[2].reservations().await.unwrap(), [a.clone(), b.clone()]);
        // Within what is free: every ledger of its path has the longer window.
        let longer = gw[2]
            .extend(b.id, &to(3_500), 1_500, &reservable)
            .await
            .unwrap();
        assert_eq!(longer.reservation.end, 3_500);
        for ledger in gw[0].ledgers().await.unwrap().values() {
            assert!(ledger
                .reservations
                .iter()
                .all(|r| r.id != b.id || r.end == 3_500));
        }

        // Rounds of an extension and an admission racing on link 2 from two gateways, each
        // fitting alone, not both: exactly one wins each time.
        for round in 0..5u64 {
            let base = 10_000 + round * 1_000;
            let x = reservation(10 + round, 500 * MBIT, base, base + 500, 2, &[2]);
            gw[0].admit(&x, &reservable).await.unwrap();
            let y = reservation(20 + round, 600 * MBIT, base + 500, base + 1_000, 2, &[2]);
            let longer = to(base + 800);
            let (extended, admitted) = tokio::join!(
                gw[1].extend(x.id, &longer, base, &reservable),
                gw[2].admit(&y, &reservable),
            );
            assert!(
                extended.is_ok() != admitted.is_ok(),
                "round {round}: extension {extended:?}, admission {admitted:?}"
            );
            let refused = extended.err().or(admitted.err()).unwrap();
            assert!(
                matches!(
                    refused,
                    ClusterStoreError::Bandwidth(BandwidthError::InsufficientBandwidth { .. })
                ),
                "{refused}"
            );
        }
        let reservations = gw[0].reservations().await.unwrap();
        check_consistent(&gw[0].ledgers().await.unwrap(), &reservations, &reservable);
    });
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn a_preemption_is_marked_for_every_gateway_and_a_retried_request_books_once() {
    let Some(cluster) =
        cluster("a_preemption_is_marked_for_every_gateway_and_a_retried_request_books_once")
    else {
        return;
    };
    const MBIT: u64 = 1_000_000;
    let reservable: BTreeMap<LinkId, u64> = [(LinkId(1), GBIT), (LinkId(2), GBIT)].into();
    let rt = runtime();
    rt.block_on(async {
        let gw: Vec<EtcdStore> = futures::future::join_all((0..3).map(|_| connect(&cluster))).await;
        // A third gateway follows the reservations as the agents' mirror does.
        let mut watch = gw[2]
            .watch_prefix(&gw[2].keys().reservations())
            .await
            .unwrap();
        let low = reservation(1, 700 * MBIT, 1_000, 2_000, 1, &[1, 2]);
        gw[0].admit(&low, &reservable).await.unwrap();
        let high = reservation(2, 700 * MBIT, 1_000, 2_000, 6, &[1]);
        let a = gw[1].admit(&high, &reservable).await.unwrap();
        assert_eq!(a.preempted, std::slice::from_ref(&low));
        let low_key = gw[2].keys().reservation(low.id);
        loop {
            match tokio::time::timeout(WAIT, watch.next())
                .await
                .expect("the delete")
            {
                WatchEvent::Delete { key } if key == low_key => break,
                _ => {}
            }
        }
        // Seen deleted: the mark, written with the delete, says by whom.
        let mark = gw[2].removal(low.id).await.unwrap().expect("a mark");
        assert_eq!((mark.preempted_by, mark.end), (Some(high.id), low.end));
        assert_eq!(mark.to_string(), "preempted by reservation 2");
        // A cancel is marked as one; an expiry is not marked.
        gw[0].cancel(high.id).await.unwrap();
        let mark = gw[2].removal(high.id).await.unwrap().expect("a mark");
        assert_eq!(mark.preempted_by, None);

        // A request sent again with its request id, through another gateway, later: the
        // first one's reservation, booked once.
        let request = |id: &str, rate: &str| -> ReservationRequest {
            serde_json::from_str(&format!(
                r#"{{"source":"us-east-1","destination":"eu-west-1","class":"bulk",
                    "rate":"{rate}","end":5000,"path":[1],"request_id":"{id}"}}"#
            ))
            .unwrap()
        };
        // As each gateway validates it: "now" is a little later on the retry.
        let cand = |start: u64| reservation(0, 300 * MBIT, start, 5_000, 2, &[1]);
        let first = gw[0]
            .admission_candidate(&request("job-1", "300M"), cand(4_000))
            .await
            .unwrap();
        let admitted = gw[0].admit(&first, &reservable).await.unwrap();
        let again = gw[1]
            .admission_candidate(&request("job-1", "300M"), cand(4_001))
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(gw[1].admit(&again, &reservable).await.unwrap(), admitted);
        // Two tries at once through two gateways (the first timed out, not failed): one
        // reservation, which both return.
        let (one, two) = tokio::join!(
            async {
                let c = gw[0]
                    .admission_candidate(&request("job-2", "300M"), cand(4_000))
                    .await?;
                gw[0].admit(&c, &reservable).await
            },
            async {
                let c = gw[2]
                    .admission_candidate(&request("job-2", "300M"), cand(4_002))
                    .await?;
                gw[2].admit(&c, &reservable).await
            },
        );
        assert_eq!(one.unwrap().reservation, two.unwrap().reservation);
        let listed = gw[2].reservations().await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        check_consistent(&gw[2].ledgers().await.unwrap(), &listed, &reservable);
        // Another request under a used id, or a retry of one cancelled since: refused.
        let e = gw[1]
            .admission_candidate(&request("job-1", "400M"), cand(4_000))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "request_id job-1 was used for another request (reservation {})",
                first.id
            )),
            "{e}"
        );
        gw[1].cancel(first.id).await.unwrap();
        let e = gw[0]
            .admission_candidate(&request("job-1", "300M"), cand(4_003))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "already made reservation {}, which was cancelled",
                first.id
            )),
            "{e}"
        );
        // Once their reservations' ends pass, marks and request records go with the expiry.
        gw[0].expire(6_000).await.unwrap();
        let raw = raw(&cluster).await;
        for prefix in [gw[0].keys().removals(), gw[0].keys().requests()] {
            let left = list(raw.clone(), &prefix).await.unwrap();
            assert!(left.is_empty(), "{left:?}");
        }
    });
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn a_watch_that_starts_from_a_cache_reports_what_went_meanwhile() {
    let Some(cluster) = cluster("a_watch_that_starts_from_a_cache_reports_what_went_meanwhile")
    else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let store = connect(&cluster).await;
        let mut raw = raw(&cluster).await;
        let prefix = "/dwcp-test/cache/";
        raw.put(format!("{prefix}b"), "b", None).await.unwrap();
        raw.put(format!("{prefix}c"), "c", None).await.unwrap();
        // A follower restarted on a cache of a and b (a deleted while it was away).
        let cached = vec![format!("{prefix}a"), format!("{prefix}b")];
        let mut watch = store.watch_prefix_knowing(prefix, cached).await.unwrap();
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(tokio::time::timeout(WAIT, watch.next()).await.unwrap());
        }
        first.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            first,
            [
                WatchEvent::Delete {
                    key: format!("{prefix}a")
                },
                WatchEvent::Put {
                    key: format!("{prefix}b"),
                    value: b"b".to_vec()
                },
                WatchEvent::Put {
                    key: format!("{prefix}c"),
                    value: b"c".to_vec()
                },
            ]
        );
        // Then it follows as any watch.
        raw.delete(format!("{prefix}b"), None).await.unwrap();
        assert_eq!(
            tokio::time::timeout(WAIT, watch.next()).await.unwrap(),
            WatchEvent::Delete {
                key: format!("{prefix}b")
            }
        );
    });
}

/// A gateway's concurrent admissions over long paths of a wide network: each batch's
/// transactions stay within etcd's bound on operations (128 by default), however many links
/// the waiting admissions cross together; every one that fits is admitted.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn batches_over_many_links_stay_within_the_transaction_bound() {
    let Some(cluster) = cluster("batches_over_many_links_stay_within_the_transaction_bound") else {
        return;
    };
    // 64 admissions, each over 6 links of its own: 384 links in all.
    const ADMISSIONS: u32 = 64;
    const HOPS: u32 = 6;
    let reservable: BTreeMap<LinkId, u64> =
        (1..=ADMISSIONS * HOPS).map(|l| (LinkId(l), GBIT)).collect();
    let rt = runtime();
    rt.block_on(async {
        // Through the admission leader: its writes carry a verdict per admission too.
        let leader = connect(&cluster).await;
        leader.join_admission_election().await.unwrap();
        assert!(leader.leads_admissions());
        let store = connect(&cluster).await;
        let admitted = futures::future::join_all((0..ADMISSIONS).map(|i| {
            let path: Vec<u32> = (1..=HOPS).map(|h| i * HOPS + h).collect();
            let cand = reservation(u64::from(i) + 1, 100 * 1_000_000, 1_000, 2_000, 2, &path);
            let (store, reservable) = (store.clone(), reservable.clone());
            async move { store.admit(&cand, &reservable).await }
        }))
        .await;
        for (i, a) in admitted.iter().enumerate() {
            assert!(a.is_ok(), "admission {}: {:?}", i + 1, a.as_ref().err());
        }
        assert_eq!(
            store.reservations().await.unwrap().len(),
            ADMISSIONS as usize
        );
    });
}

/// The admission leader decides another gateway's admission (its verdict is in the store);
/// when the leader dies, an admission queued meanwhile waits for its lease to end, and the
/// gateway elected next decides it: admitted once, never twice.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn the_admission_leader_decides_for_every_gateway_and_a_successor_takes_over() {
    let Some(cluster) =
        cluster("the_admission_leader_decides_for_every_gateway_and_a_successor_takes_over")
    else {
        return;
    };
    let keys = KeyLayout::new(DEFAULT_PREFIX);
    let reservable: BTreeMap<LinkId, u64> = [(LinkId(1), GBIT), (LinkId(2), GBIT)].into();
    let rt = runtime();
    rt.block_on(async {
        let mut raw = raw(&cluster).await;
        let leader = connect(&cluster).await;
        leader.join_admission_election().await.unwrap();
        assert!(leader.leads_admissions(), "the first to join leads");
        let gw = [connect(&cluster).await, connect(&cluster).await];
        for g in &gw {
            g.join_admission_election().await.unwrap();
            assert!(!g.leads_admissions(), "one leader");
        }
        let mut verdicts = leader.watch_prefix(&keys.verdicts()).await.unwrap();

        let first = reservation(1, 600_000_000, 1_000, 2_000, 2, &[1, 2]);
        let admitted = gw[0].admit(&first, &reservable).await.unwrap();
        assert_eq!(admitted.reservation, first);
        // Decided by the leader: its verdict, under the asking gateway's queue.
        let WatchEvent::Put { key, value } = verdicts.next().await else {
            panic!("a verdict is put")
        };
        assert_eq!(keys.verdict_for(&key).map(|(_, id)| id), Some(first.id));
        assert_eq!(
            serde_json::from_slice::<AdmissionVerdict>(&value).unwrap(),
            AdmissionVerdict::Admitted(admitted)
        );
        assert!(
            list(raw.clone(), &keys.admission_queue())
                .await
                .unwrap()
                .is_empty(),
            "the queued admission went with its verdict"
        );
        // Refused through the leader as it would be anywhere: the other gateway booked it.
        let second = reservation(2, 600_000_000, 1_000, 2_000, 2, &[2]);
        match gw[1].admit(&second, &reservable).await {
            Err(ClusterStoreError::Bandwidth(BandwidthError::InsufficientBandwidth {
                link: LinkId(2),
                ..
            })) => {}
            other => panic!("600M more on link 2: {other:?}"),
        }

        // The leader dies: its tasks stop with its last handle (the watch holds one), its
        // lease is not renewed.
        drop((leader, verdicts));
        // Renewed every 2/3 s on a 2 s TTL: at least 1.3 s left when its tasks stopped.
        let held_until_at_least = Instant::now() + Duration::from_secs(1);
        let third = reservation(3, 300_000_000, 1_000, 2_000, 2, &[1]);
        let t = Instant::now();
        let admitted = retry(|| gw[1].admit(&third, &reservable)).await;
        assert_eq!(admitted.reservation, third);
        let successor: Vec<bool> = gw.iter().map(EtcdStore::leads_admissions).collect();
        assert_eq!(
            successor.iter().filter(|l| **l).count(),
            1,
            "one successor: {successor:?}"
        );
        // Queued while the dead leader's key stood, then decided by the successor (which may
        // be the asking gateway, from the queue it listed).
        assert!(
            Instant::now() >= held_until_at_least,
            "decided after {:?}, before the dead leader's lease could end",
            t.elapsed()
        );
        let stored = gw[0].reservations().await.unwrap();
        assert_eq!(
            stored.iter().map(|r| r.id.0).collect::<Vec<_>>(),
            [1, 3],
            "admitted once each"
        );
        check_consistent(&gw[0].ledgers().await.unwrap(), &stored, &reservable);
        assert_eq!(
            version(&mut raw, &keys.admission_leader()).await.unwrap(),
            1
        );
    });
}

/// What another gateway queues is read as hostile: an admission that cannot be decided gets
/// an `Invalid` verdict (and leaves the queue), a key that is not a queued admission is
/// ignored, and the leader goes on deciding the others. Old verdicts are swept.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn a_queued_admission_that_cannot_be_decided_gets_a_clear_verdict_and_old_verdicts_go() {
    let Some(cluster) = cluster(
        "a_queued_admission_that_cannot_be_decided_gets_a_clear_verdict_and_old_verdicts_go",
    ) else {
        return;
    };
    let keys = KeyLayout::new(DEFAULT_PREFIX);
    let reservable: BTreeMap<LinkId, u64> = [(LinkId(1), GBIT)].into();
    let rt = runtime();
    rt.block_on(async {
        let mut raw = raw(&cluster).await;
        let stale = keys.verdict(1_000, "gone", ReservationId(9));
        raw.put(stale.as_str(), "{}", None).await.unwrap();
        let garbage = keys.queued_admission("hostile", ReservationId(7));
        raw.put(garbage.as_str(), vec![0xff; 64], None)
            .await
            .unwrap();
        let repeating = keys.queued_admission("hostile", ReservationId(8));
        let bad = QueuedAdmission {
            reservation: reservation(8, 1_000_000, 1_000, 2_000, 2, &[1, 1]),
            reservable: vec![(LinkId(1), GBIT)],
        };
        raw.put(repeating.as_str(), bad.encode(), None)
            .await
            .unwrap();
        let not_a_key = format!("{}hostile/x", keys.admission_queue());
        raw.put(not_a_key.as_str(), "x", None).await.unwrap();

        let leader = connect(&cluster).await;
        leader.join_admission_election().await.unwrap();
        assert!(leader.leads_admissions());
        let gw = connect(&cluster).await;
        let cand = reservation(1, 100_000_000, 1_000, 2_000, 2, &[1]);
        assert_eq!(
            gw.admit(&cand, &reservable).await.unwrap().reservation,
            cand
        );

        let deadline = Instant::now() + WAIT;
        let verdicts = loop {
            let verdicts = list(raw.clone(), &keys.verdicts()).await.unwrap();
            let hostile: BTreeMap<ReservationId, AdmissionVerdict> = verdicts
                .iter()
                .filter_map(|(k, v)| match keys.verdict_for(k)? {
                    ("hostile", id) => Some((id, serde_json::from_slice(v).unwrap())),
                    _ => None,
                })
                .collect();
            if hostile.len() == 2 && !verdicts.contains_key(&stale) {
                break hostile;
            }
            assert!(Instant::now() < deadline, "verdicts: {verdicts:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for (id, why) in [(7, "expected value"), (8, "repeats a link")] {
            match &verdicts[&ReservationId(id)] {
                AdmissionVerdict::Invalid(detail) => assert!(detail.contains(why), "{detail}"),
                other => panic!("queued {id}: {other:?}"),
            }
        }
        let queue = list(raw.clone(), &keys.admission_queue()).await.unwrap();
        assert_eq!(
            queue.keys().collect::<Vec<_>>(),
            [&not_a_key],
            "the undecidable ones left the queue; a stray key is only ignored"
        );
        assert_eq!(
            gw.reservations().await.unwrap(),
            [cand],
            "nothing of the hostile ones was admitted"
        );
    });
}
