//! The agents in etcd mode (`[store] kind = "etcd"`): the three-region lab's real
//! `dwcp-agent`s, each gateway's namespace given a port on the bridge of a real three-member
//! etcd cluster (`dwcp_lab::etcd::EtcdCluster`) that serves clients over TLS and requires
//! their certificates. Both guards remove everything when they drop, also when the test
//! fails.
//!
//! Every wait is for a mechanism (a record listed, a record gone, a generation applied) with a
//! generous deadline. Covered: every agent lists every gateway with its region, addresses,
//! version and topology generation; a topology pushed once through one gateway reaches every
//! gateway (diff first, then push; a bad file refused with its line; the same text twice makes
//! one generation); a reservation admitted by one gateway is listed by every gateway and
//! refuses another gateway's that would overbook its link; extended through another gateway,
//! every gateway mirrors the longer window, and an extension that would overbook is refused;
//! a reload keeps the published topology; a store outage leaves the agents running, the
//! listing and new admissions failing clearly and the reservations in place (a cancel through
//! another gateway reaches every one once the store is back), an agent restarted meanwhile
//! starts on the cached topology and the cached reservations (still policed), and membership
//! comes back with the store; a preemption by another gateway is told as one by every
//! gateway; a request sent again with its request id through another gateway books once; a
//! stopped agent leaves at once, a killed one when its lease expires. With link state off,
//! every gateway (one that joins last too) shows the link it does not terminate with the
//! figures its ends published.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use dwcp_control::bandwidth::{Admission, Reservation, ReservationEvent};
use dwcp_control::store::GatewayView;
use dwcp_control::view::{AgentEvent, StatusView, TopologyChanges, TopologyView};
use dwcp_lab::etcd::EtcdCluster;
use dwcp_lab::lab::triangle::{
    underlay_ip, TriangleLab, TriangleOptions, GATEWAYS, LINKS, REGIONS, TOPOLOGY,
};

const WAIT: Duration = Duration::from_secs(60);

fn dwcp(socket: &Path, args: &[&str]) -> Output {
    Command::new(dwcp_lab::bin("dwcp"))
        .arg("--socket")
        .arg(socket)
        .args(["--timeout", "10"])
        .args(args)
        .output()
        .expect("dwcp runs")
}

/// `dwcp show gateways --json` on gateway `r`'s agent, sorted by name (as etcd lists them).
fn gateways(lab: &TriangleLab, r: usize) -> Vec<GatewayView> {
    let out = dwcp(&lab.api_socket(r), &["--json", "show", "gateways"]);
    assert!(
        out.status.success(),
        "dwcp show gateways: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list of gateways")
}

/// `dwcp --json ARGS` on gateway `r`'s agent, decoded.
fn json<T: serde::de::DeserializeOwned>(lab: &TriangleLab, r: usize, args: &[&str]) -> T {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = dwcp(&lab.api_socket(r), &all);
    assert!(
        out.status.success(),
        "dwcp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the API's JSON")
}

/// `dwcp reserve add` on gateway `r`'s agent: `rate` from `from` to us-east-1 over `path`,
/// from now for an hour.
fn reserve(lab: &TriangleLab, r: usize, from: &str, rate: &str, path: &str) -> Output {
    reserve_at(lab, r, from, rate, path, None, "+1h", None)
}

/// As [`reserve`], from `start` (now if `None`) to `end` (unix seconds or `+1h`), at
/// `priority` if given.
#[allow(clippy::too_many_arguments)]
fn reserve_at(
    lab: &TriangleLab,
    r: usize,
    from: &str,
    rate: &str,
    path: &str,
    start: Option<&str>,
    end: &str,
    priority: Option<&str>,
) -> Output {
    let mut args = vec![
        "--json",
        "reserve",
        "add",
        "--from",
        from,
        "--to",
        "us-east-1",
        "--class",
        "bulk",
        "--rate",
        rate,
        "--end",
        end,
        "--path",
        path,
    ];
    if let Some(s) = start {
        args.extend(["--start", s]);
    }
    if let Some(p) = priority {
        args.extend(["--priority", p]);
    }
    dwcp(&lab.api_socket(r), &args)
}

/// Link 1's capacity as gateway `r` runs it.
fn link1_capacity(lab: &TriangleLab, r: usize) -> u64 {
    let t: TopologyView = json(lab, r, &["show", "topology"]);
    t.links.iter().find(|l| l.id == 1).unwrap().capacity_bps
}

fn names(views: &[GatewayView]) -> Vec<&str> {
    views.iter().map(|g| g.record.name.as_str()).collect()
}

/// A three-member etcd cluster over TLS with client certificates, or `None` (the skip
/// recorded) where it cannot run.
fn tls_cluster(test: &str) -> Option<EtcdCluster> {
    if let Err(why) = dwcp_lab::etcd::available() {
        dwcp_lab::skip(test, &why);
        return None;
    }
    Some(EtcdCluster::start_tls().expect("a three-member etcd cluster"))
}

/// Polls `f` until it returns Some, at most WAIT.
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what} did not happen within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn gateways_register_on_leases_and_every_agent_lists_them() {
    // TLS with client certificates: the agents' [store] names the CA, certificate and key.
    let Some(mut cluster) = tls_cluster("gateways_register_on_leases_and_every_agent_lists_them")
    else {
        return;
    };
    let mut lab = TriangleLab::build(
        "etcdag",
        &dwcp_lab::bin("dwcp-agent"),
        TriangleOptions {
            extra_config: cluster.store_section(),
            ..TriangleOptions::default()
        },
    )
    .expect("the three-region lab");
    for r in 0..3 {
        cluster
            .attach(&lab.regions[r].gw, "etcd0")
            .expect("a port on the cluster's bridge");
    }
    for r in 0..3 {
        lab.start_agent(r, &[]).expect("agent starts");
    }

    // Every agent lists all three, with their regions, addresses and generation.
    for r in 0..3 {
        let listed = wait("all three gateways listed", || {
            let g = gateways(&lab, r);
            (g.len() == 3).then_some(g)
        });
        // etcd lists by key, i.e. by name.
        assert_eq!(names(&listed), ["gw-aps1-a", "gw-euw1-a", "gw-use1-a"]);
        for g in &listed {
            let i = GATEWAYS.iter().position(|n| *n == g.record.name).unwrap();
            assert_eq!(g.record.region, REGIONS[i]);
            // Its underlay addresses.
            let mut addresses: Vec<String> = LINKS
                .iter()
                .filter(|(_, a, b)| *a == i || *b == i)
                .map(|(link, _, _)| underlay_ip(*link, i).to_string())
                .collect();
            addresses.sort();
            assert_eq!(g.record.address, addresses.join(","));
            assert_eq!(g.record.version, env!("CARGO_PKG_VERSION"));
            assert_eq!(g.record.topology_generation, 0, "its file's topology");
            let contact = g.last_contact_seconds.expect("a live lease");
            assert!(
                contact <= dwcp_agent::agent::MEMBERSHIP_TTL.as_secs(),
                "{}: last contact {contact} s ago",
                g.record.name
            );
        }
    }
    let table = String::from_utf8(dwcp(&lab.api_socket(0), &["show", "gateways"]).stdout).unwrap();
    assert!(
        table.starts_with("GATEWAY") && GATEWAYS.iter().all(|g| table.contains(g)),
        "{table}"
    );

    // Reservations are admitted by the store: eu-west-1's gateway books 700 Mbit/s of link 1
    // (800 of its 1000 reservable), so ap-south-1's gateway cannot book 700 more over it.
    let out = reserve(&lab, 1, "eu-west-1", "700M", "1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let booked: Admission = serde_json::from_slice(&out.stdout).unwrap();
    let out = reserve(&lab, 2, "ap-south-1", "700M", "2,1");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("link 1: 700000000 bit/s requested"), "{err}");
    // Every gateway mirrors it (each polices the reservations whose traffic enters at it).
    for r in 0..3 {
        wait("the reservation listed by every gateway", || {
            let listed: Vec<Reservation> = json(&lab, r, &["show", "reservations"]);
            (listed == [booked.reservation.clone()]).then_some(())
        });
    }
    // Extended through another gateway than the admitting one: every gateway mirrors the
    // longer window, the admitting one tells it as extended. One that would overbook link 1
    // (ap-south-1's 200 Mbit/s booked from its end) is refused, naming the link.
    let id = booked.reservation.id.to_string();
    let end = booked.reservation.end;
    let out = dwcp(
        &lab.api_socket(2),
        &[
            "--json",
            "reserve",
            "extend",
            &id,
            "--end",
            &(end + 600).to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let booked: Admission = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(booked.reservation.end, end + 600);
    for r in 0..3 {
        wait("the extension mirrored by every gateway", || {
            let listed: Vec<Reservation> = json(&lab, r, &["show", "reservations"]);
            (listed == [booked.reservation.clone()]).then_some(())
        });
    }
    lab.wait_event(1, "the extension", WAIT, |e| {
        matches!(e, AgentEvent::Reservation(ReservationEvent::Extended { reservation, previous_end })
            if reservation.id == booked.reservation.id && *previous_end == end)
    })
    .unwrap();
    let later = booked.reservation.end.to_string();
    let out = reserve_at(
        &lab,
        2,
        "ap-south-1",
        "200M",
        "2,1",
        Some(&later),
        "+3h",
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Admission = serde_json::from_slice(&out.stdout).unwrap();
    let out = dwcp(
        &lab.api_socket(0),
        &["reserve", "extend", &id, "--end", &(end + 1200).to_string()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("link 1: 700000000 bit/s requested") && err.contains("409"),
        "{err}"
    );
    let after_id = after.reservation.id.to_string();
    assert!(dwcp(&lab.api_socket(1), &["reserve", "cancel", &after_id])
        .status
        .success());
    for r in 0..3 {
        wait("the later reservation's cancel mirrored", || {
            let listed: Vec<Reservation> = json(&lab, r, &["show", "reservations"]);
            (listed == [booked.reservation.clone()]).then_some(())
        });
    }

    // A topology pushed once, through gateway 2, reaches every gateway.
    const FILE_CAPACITY: u64 = 1_000_000_000;
    const PUSHED_CAPACITY: u64 = 1_500_000_000;
    assert_eq!(link1_capacity(&lab, 0), FILE_CAPACITY);
    let file = lab.dir.join("topology.toml");
    std::fs::write(
        &file,
        TOPOLOGY.replacen("capacity_mbps = 1000\n", "capacity_mbps = 1500\n", 1),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let diff: TopologyChanges = json(&lab, 1, &["topology", "diff", file]);
    assert_eq!(diff.from_generation, None);
    assert_eq!(
        diff.changes.len(),
        8,
        "3 regions, 3 links, 2 edges added: {diff:?}"
    );
    assert!(diff.changes.iter().all(|c| c.starts_with("+ ")), "{diff:?}");
    let pushed: TopologyChanges = json(&lab, 1, &["topology", "push", file]);
    assert_eq!(pushed.generation, Some(1));
    for r in 0..3 {
        wait("the pushed generation applied", || {
            let s: StatusView = json(&lab, r, &["status"]);
            (s.published_topology_generation == Some(1)).then_some(())
        });
        assert_eq!(link1_capacity(&lab, r), PUSHED_CAPACITY);
    }
    wait("every record at generation 1", || {
        gateways(&lab, 0)
            .iter()
            .all(|g| g.record.topology_generation == 1)
            .then_some(())
    });
    // Pushing the same text again publishes nothing; a diff says so.
    let again: TopologyChanges = json(&lab, 2, &["topology", "push", file]);
    assert_eq!(
        (again.from_generation, again.generation),
        (Some(1), Some(1))
    );
    let diff: TopologyChanges = json(&lab, 2, &["topology", "diff", file]);
    assert!(diff.changes.is_empty(), "{diff:?}");
    // A bad file is refused with its line, and nothing is published.
    let bad = lab.dir.join("bad.toml");
    let text = TOPOLOGY.replacen("capacity_mbps = 1000\n", "capacity_mbps = -5\n", 1);
    std::fs::write(&bad, &text).unwrap();
    let out = dwcp(
        &lab.api_socket(0),
        &["topology", "push", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line "), "{err}");
    assert_eq!(
        json::<TopologyChanges>(&lab, 0, &["topology", "diff", file]).from_generation,
        Some(1)
    );

    // A reload re-reads the file but keeps the published topology in place of the file's.
    let text = lab
        .config_text(0)
        .replace("sample_every = 10", "sample_every = 20");
    lab.write_config(0, &text).unwrap();
    let before: StatusView = json(&lab, 0, &["status"]);
    lab.hup_agent(0).unwrap();
    wait("the reload", || {
        let s: StatusView = json(&lab, 0, &["status"]);
        (s.config_generation > before.config_generation).then_some(())
    });
    assert_eq!(link1_capacity(&lab, 0), PUSHED_CAPACITY);

    // The whole store down: the agents go on, the listing says why it cannot answer; back
    // up, every gateway is listed again (renewed, or registered anew if its lease expired).
    cluster.stop();
    let out = dwcp(&lab.api_socket(0), &["show", "gateways"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster store unreachable"), "{err}");
    for r in 0..3 {
        assert!(dwcp(&lab.api_socket(r), &["status"]).status.success());
    }
    // A new admission fails clearly, never decided locally; the reservation stays in force.
    let out = reserve(&lab, 0, "ap-south-1", "10M", "3");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("503") && err.contains("cluster store unreachable"),
        "{err}"
    );
    for r in 0..3 {
        let listed: Vec<Reservation> = json(&lab, r, &["show", "reservations"]);
        assert_eq!(listed, std::slice::from_ref(&booked.reservation));
    }
    // Restarted meanwhile, an agent starts on the topology it cached, and on the reservations
    // it cached: eu-west-1's gateway, where the reservation's traffic enters, still polices
    // it (700 Mbit/s, in bytes per second, in its fast path's policers).
    let policed = |lab: &TriangleLab| {
        let out = Command::new(dwcp_lab::bin("dwcp"))
            .args(["--json", "maps", "--pin-dir"])
            .arg(lab.pin_dir(1))
            .arg("policers")
            .output()
            .expect("dwcp maps runs");
        String::from_utf8_lossy(&out.stdout).contains("87500000")
    };
    wait("eu-west-1's gateway policing it", || {
        policed(&lab).then_some(())
    });
    lab.kill_agent(1).unwrap();
    lab.start_agent(1, &[])
        .expect("agent 2 starts with the store down");
    let s: StatusView = json(&lab, 1, &["status"]);
    assert_eq!(s.published_topology_generation, Some(1));
    assert_eq!(link1_capacity(&lab, 1), PUSHED_CAPACITY);
    let listed: Vec<Reservation> = json(&lab, 1, &["show", "reservations"]);
    assert_eq!(listed, std::slice::from_ref(&booked.reservation));
    assert_eq!(s.reservations_active, Some(1));
    wait(
        "the restarted gateway policing it with the store down",
        || policed(&lab).then_some(()),
    );
    cluster.start_again().expect("the cluster back");
    wait("all three gateways listed after the outage", || {
        (gateways(&lab, 0).len() == 3).then_some(())
    });
    // A cancel on another gateway than the admitting one reaches all, the one restarted
    // during the outage included (its watch took over from the cache).
    let id = booked.reservation.id.to_string();
    assert!(dwcp(&lab.api_socket(0), &["reserve", "cancel", &id])
        .status
        .success());
    for r in 0..3 {
        wait("the cancel seen by every gateway", || {
            json::<Vec<Reservation>>(&lab, r, &["show", "reservations"])
                .is_empty()
                .then_some(())
        });
    }

    // A higher priority admitted by ap-south-1's gateway preempts eu-west-1's reservation:
    // eu-west-1's gateway, and every other, tells its owner it was preempted, and by which.
    let out = reserve(&lab, 1, "eu-west-1", "700M", "1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let low: Admission = serde_json::from_slice(&out.stdout).unwrap();
    let out = reserve_at(
        &lab,
        2,
        "ap-south-1",
        "700M",
        "2,1",
        Some("+0s"),
        "+1h",
        Some("6"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let high: Admission = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(high.preempted, std::slice::from_ref(&low.reservation));
    for r in 0..3 {
        lab.wait_event(r, "the preemption", WAIT, |e| {
            matches!(e, AgentEvent::Reservation(ReservationEvent::Preempted { reservation, by })
                if reservation.id == low.reservation.id && *by == high.reservation.id)
        })
        .unwrap();
    }
    let id = high.reservation.id.to_string();
    assert!(dwcp(&lab.api_socket(0), &["reserve", "cancel", &id])
        .status
        .success());

    // The same request sent again with its request id, through another gateway (a retry
    // after a timeout): the first one's reservation, booked once. Another request under the
    // same id is refused.
    let end = (booked.reservation.end + 3600).to_string();
    let once = |r: usize, rate: &str| {
        let args = [
            "--json",
            "reserve",
            "add",
            "--from",
            "ap-south-1",
            "--to",
            "us-east-1",
            "--class",
            "bulk",
            "--rate",
            rate,
            "--end",
            &end,
            "--path",
            "3",
            "--request-id",
            "job-7",
        ];
        dwcp(&lab.api_socket(r), &args)
    };
    let out = once(0, "10M");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Admission = serde_json::from_slice(&out.stdout).unwrap();
    let out = once(2, "10M");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: Admission = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again.reservation, first.reservation);
    let out = once(1, "20M");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("request_id job-7 was used for another request"),
        "{err}"
    );
    wait("one reservation for the request, on every gateway", || {
        (0..3)
            .all(|r| {
                json::<Vec<Reservation>>(&lab, r, &["show", "reservations"])
                    == [first.reservation.clone()]
            })
            .then_some(())
    });

    // A stopped agent revokes its lease before it exits: gone at once.
    lab.stop_agent(1).expect("agent 2 stops");
    assert_eq!(
        names(&gateways(&lab, 0)),
        [GATEWAYS[2], GATEWAYS[0]],
        "a stopped gateway leaves at once"
    );

    // A killed one renews no more: etcd removes it when its lease runs out.
    lab.kill_agent(2).expect("agent 3 killed");
    wait("the killed gateway's record expiring", || {
        (names(&gateways(&lab, 0)) == [GATEWAYS[0]]).then_some(())
    });
}

/// Link figures through the store, with link state off (so no record reaches anyone): each
/// gateway shows the one link it does not terminate with the figures one of that link's ends
/// published, its health still `unmeasured` (the store decides no health). us-east-1's
/// gateway joins last, once the two others' figures are in the store, and shows the whole
/// network from the store alone.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF, network namespaces and etcd (--features dwcp-lab/privileged)"
)]
fn a_gateway_that_joins_shows_every_link_with_the_figures_others_published() {
    use dwcp_control::view::{LinkHealth, LinkView};
    let Some(mut cluster) =
        tls_cluster("a_gateway_that_joins_shows_every_link_with_the_figures_others_published")
    else {
        return;
    };
    let mut lab = TriangleLab::build(
        "etcdfg",
        &dwcp_lab::bin("dwcp-agent"),
        TriangleOptions {
            extra_config: format!(
                "{}\n[link_state]\nenabled = false\n",
                cluster.store_section()
            ),
            ..TriangleOptions::default()
        },
    )
    .expect("the three-region lab");
    for r in 0..3 {
        cluster
            .attach(&lab.regions[r].gw, "etcd0")
            .expect("a port on the cluster's bridge");
    }
    // Gateway `r`'s view of the link whose ends are the two other regions, once it shows
    // figures from the store (with an RTT if `rtt`); `ends`: who may have published them.
    let remote_from_store = |lab: &TriangleLab, r: usize, ends: &[usize], rtt: bool| {
        let (remote, _, _) = LINKS.iter().find(|(_, a, b)| *a != r && *b != r).unwrap();
        let link = wait("the remote link's figures from the store", || {
            let links: Vec<LinkView> = json(lab, r, &["show", "links"]);
            let l = links.into_iter().find(|l| l.id == *remote)?;
            (l.figures_from_store.is_some() && (l.rtt_seconds.is_some() || !rtt)).then_some(l)
        });
        let from = &link.figures_from_store.as_ref().unwrap().gateway;
        assert!(
            ends.iter().any(|e| GATEWAYS[*e] == from),
            "{} shows figures of {from}: {link:?}",
            GATEWAYS[r]
        );
        assert_eq!(link.health, LinkHealth::Unmeasured, "{link:?}");
        assert!(link.interface.is_none());
    };
    lab.start_agent(1, &[]).expect("agent 2 starts");
    lab.start_agent(2, &[]).expect("agent 3 starts");
    // eu-west-1's gateway shows link 3 as ap-south-1's published it, and the other way round
    // for link 1 (no RTT yet: us-east-1's gateway, their other end, is not running).
    remote_from_store(&lab, 1, &[2], false);
    remote_from_store(&lab, 2, &[1], false);

    // us-east-1's gateway joins: link 2, between the two others, with their RTT at once;
    // and theirs get RTTs as it answers their probes.
    lab.start_agent(0, &[]).expect("agent 1 starts");
    remote_from_store(&lab, 0, &[1, 2], true);
    remote_from_store(&lab, 1, &[0, 2], true);
    remote_from_store(&lab, 2, &[0, 1], true);
    let table = String::from_utf8(dwcp(&lab.api_socket(0), &["show", "links"]).stdout).unwrap();
    assert!(table.contains("(store, "), "{table}");
}
