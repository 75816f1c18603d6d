use std::collections::{BTreeMap, BTreeSet};

use dwcp_common::QosClass;
use proptest::prelude::*;

use super::admission::fits;
use super::*;
use crate::topology::LinkId;

const NOW: UnixSeconds = 1_700_000_000;
const MBIT: u64 = 1_000_000;

/// Regions eu, us, ap; links 1 (eu-us, 100M), 2 (us-ap, 200M), 3 (eu-ap, 50M).
fn network() -> Network {
    Network {
        regions: ["eu", "us", "ap"].into_iter().map(String::from).collect(),
        link_capacity_bps: [
            (LinkId(1), 100 * MBIT),
            (LinkId(2), 200 * MBIT),
            (LinkId(3), 50 * MBIT),
        ]
        .into(),
    }
}

fn manager() -> ReservationManager {
    let (m, events) = ReservationManager::open(
        Box::new(MemoryStore::default()),
        network(),
        ManagerConfig::default(),
    )
    .unwrap();
    assert!(events.is_empty());
    m
}

fn request(rate_bps: u64, path: &[u32], priority: u8) -> ReservationRequest {
    ReservationRequest {
        owner: "team-a".into(),
        source: "eu".into(),
        destination: "us".into(),
        class: "bulk".into(),
        rate: rate_bps.into(),
        start: None,
        end: (NOW + 3600).into(),
        priority: Some(u64::from(priority).into()),
        path: path.iter().map(|&l| u64::from(l).into()).collect(),
        request_id: None,
    }
}

fn snapshot(m: &ReservationManager) -> Vec<Reservation> {
    m.list().cloned().collect()
}

#[test]
fn admits_within_reservable_capacity_only() {
    let mut m = manager();
    // Link 1: 100M less 20 % headroom = 80M reservable.
    assert_eq!(m.reservable_bps(LinkId(1)), 80 * MBIT);
    let a = m.create(&request(50 * MBIT, &[1], 3), NOW).unwrap();
    assert_eq!(a.reservation.id, ReservationId(1));
    assert_eq!(a.reservation.start, NOW);
    assert_eq!(a.reservation.class, QosClass::Bulk);
    assert!(a.preempted.is_empty());
    assert_eq!(m.reserved_bps(LinkId(1), NOW), 50 * MBIT);
    let e = m.create(&request(31 * MBIT, &[1], 3), NOW).unwrap_err();
    match &e {
        BandwidthError::InsufficientBandwidth {
            link,
            free_bps,
            reservable_bps,
            ..
        } => {
            assert_eq!(
                (*link, *free_bps, *reservable_bps),
                (LinkId(1), 30 * MBIT, 80 * MBIT)
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(e.http_status(), 409);
    m.create(&request(30 * MBIT, &[1], 3), NOW).unwrap();
    assert_eq!(m.reserved_bps(LinkId(1), NOW), 80 * MBIT);
}

#[test]
fn a_reservation_over_several_links_is_all_or_nothing() {
    let mut m = manager();
    m.create(&request(40 * MBIT, &[3], 3), NOW).unwrap(); // link 3 has 40M reservable: now full
    let before = snapshot(&m);
    let e = m
        .create(&request(10 * MBIT, &[1, 2, 3], 3), NOW)
        .unwrap_err();
    assert!(
        matches!(
            e,
            BandwidthError::InsufficientBandwidth {
                link: LinkId(3),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(snapshot(&m), before);
    assert_eq!(m.reserved_bps(LinkId(1), NOW), 0);
    assert_eq!(m.reserved_bps(LinkId(2), NOW), 0);
    let ok = m.create(&request(10 * MBIT, &[1, 2], 3), NOW).unwrap();
    assert_eq!(ok.reservation.path, vec![LinkId(1), LinkId(2)]);
    assert_eq!(m.reserved_bps(LinkId(1), NOW), 10 * MBIT);
    assert_eq!(m.reserved_bps(LinkId(2), NOW), 10 * MBIT);
}

#[test]
fn windows_that_do_not_overlap_share_a_link() {
    let mut m = manager();
    let mut first = request(80 * MBIT, &[1], 3);
    first.end = (NOW + 100).into();
    m.create(&first, NOW).unwrap();
    let mut second = request(80 * MBIT, &[1], 3);
    second.start = Some((NOW + 100).into());
    second.end = (NOW + 200).into();
    m.create(&second, NOW).unwrap();
    let mut overlapping = request(1, &[1], 3);
    overlapping.start = Some((NOW + 99).into());
    overlapping.end = (NOW + 101).into();
    assert!(m.create(&overlapping, NOW).is_err());
    assert_eq!(m.next_change_after(NOW), Some(NOW + 100));
}

#[test]
fn preemption_takes_the_lowest_priority_and_notifies_the_owner() {
    let mut m = manager();
    let mut low = request(30 * MBIT, &[1], 1);
    low.owner = "batch".into();
    let low = m.create(&low, NOW).unwrap().reservation;
    let mid = m
        .create(&request(30 * MBIT, &[1], 2), NOW)
        .unwrap()
        .reservation;
    assert_eq!(m.take_events().len(), 2);
    // 60 of 80 reserved; 40 more at priority 5 needs 20 freed: the priority-1 one goes.
    let high = m.create(&request(40 * MBIT, &[1], 5), NOW).unwrap();
    assert_eq!(high.preempted, vec![low.clone()]);
    assert!(m.get(mid.id).is_some());
    assert!(m.get(low.id).is_none());
    let events = m.take_events();
    assert_eq!(
        events[0],
        ReservationEvent::Preempted {
            reservation: low,
            by: high.reservation.id
        }
    );
    assert_eq!(events[0].owner(), "batch");
    assert!(matches!(events[1], ReservationEvent::Created { .. }));
    assert_eq!(events.len(), 2);
    assert_eq!(
        (m.event_counts().created, m.event_counts().preempted),
        (3, 1)
    );
    // Equal priority never preempts.
    let e = m.create(&request(20 * MBIT, &[1], 2), NOW).unwrap_err();
    assert!(matches!(e, BandwidthError::InsufficientBandwidth { .. }));
}

#[test]
fn extension_is_admitted_like_a_new_window() {
    let mut m = manager();
    let a = m
        .create(&request(80 * MBIT, &[1], 3), NOW)
        .unwrap()
        .reservation;
    let mut later = request(80 * MBIT, &[1], 3);
    later.start = Some((NOW + 3600).into());
    later.end = (NOW + 7200).into();
    m.create(&later, NOW).unwrap();
    let e = m
        .extend(
            a.id,
            &ExtendRequest {
                end: (NOW + 3601).into(),
            },
            NOW,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            BandwidthError::InsufficientBandwidth {
                link: LinkId(1),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(m.get(a.id).unwrap().end, NOW + 3600);
    let e = m
        .extend(
            a.id,
            &ExtendRequest {
                end: (NOW + 10).into(),
            },
            NOW,
        )
        .unwrap_err();
    assert!(matches!(e, BandwidthError::NotAnExtension { .. }), "{e}");
    let b = m
        .create(&request(10 * MBIT, &[2], 3), NOW)
        .unwrap()
        .reservation;
    let ext = m
        .extend(
            b.id,
            &ExtendRequest {
                end: (NOW + 9000).into(),
            },
            NOW,
        )
        .unwrap();
    assert_eq!(ext.reservation.end, NOW + 9000);
    assert_eq!(m.get(b.id).unwrap().end, NOW + 9000);
    assert!(matches!(
        m.extend(ReservationId(99), &ExtendRequest { end: 1u64.into() }, NOW),
        Err(BandwidthError::NotFound(_))
    ));
}

#[test]
fn cancel_and_expiry_free_the_bandwidth() {
    let mut m = manager();
    let a = m
        .create(&request(50 * MBIT, &[1], 3), NOW)
        .unwrap()
        .reservation;
    let mut short = request(30 * MBIT, &[1], 3);
    short.end = (NOW + 10).into();
    let s = m.create(&short, NOW).unwrap().reservation;
    assert!(m.expire(NOW + 9).unwrap().is_empty());
    // Ended but not collected yet: listed, not extendable.
    let e = m
        .extend(
            s.id,
            &ExtendRequest {
                end: (NOW + 20).into(),
            },
            NOW + 10,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "reservation 2 ended at 1700000010; it can no longer be extended"
    );
    assert_eq!(e.http_status(), 410);
    assert_eq!(m.expire(NOW + 10).unwrap(), vec![s]);
    assert_eq!(m.reserved_bps(LinkId(1), NOW + 10), 50 * MBIT);
    assert_eq!(m.cancel(a.id).unwrap(), a);
    assert_eq!(m.reserved_bps(LinkId(1), NOW + 10), 0);
    let e = m.cancel(a.id).unwrap_err();
    assert_eq!(e.to_string(), "reservation 1 not found");
    assert_eq!(e.http_status(), 404);
}

/// Bad inputs as the API receives them (JSON), each a 4xx naming the offending item, none of
/// them changing the stored state (checked on the file's bytes too).
#[test]
fn a_mirror_keeps_what_the_cluster_store_holds_and_tells_each_change_once() {
    let mut m = manager();
    let (mut cand, reservable) = m.candidate(&request(60 * MBIT, &[1], 3), NOW).unwrap();
    assert_eq!(reservable[&LinkId(1)], 80 * MBIT);
    // The store's id, not this manager's; nothing is stored until the store has decided.
    cand.id = ReservationId(4242);
    assert!(snapshot(&m).is_empty());
    assert!(matches!(
        m.candidate(&request(60 * MBIT, &[9], 3), NOW),
        Err(BandwidthError::UnknownLink(LinkId(9)))
    ));
    // Put by the admitting gateway and again by the watch: one reservation, told once.
    m.mirror_put(cand.clone()).unwrap();
    m.mirror_put(cand.clone()).unwrap();
    assert_eq!(snapshot(&m), [cand.clone()]);
    assert_eq!(m.reserved_bps(LinkId(1), NOW), 60 * MBIT);
    let events = m.take_events();
    assert!(
        matches!(&events[..], [ReservationEvent::Created { reservation }] if *reservation == cand),
        "{events:?}"
    );
    // Removed before its end: cancelled; a removal seen twice (or of one never mirrored)
    // changes nothing.
    m.mirror_remove(cand.id, NOW, None).unwrap();
    m.mirror_remove(cand.id, NOW, None).unwrap();
    m.mirror_remove(ReservationId(7), NOW, None).unwrap();
    assert!(snapshot(&m).is_empty());
    let events = m.take_events();
    assert!(
        matches!(&events[..], [ReservationEvent::Cancelled { .. }]),
        "{events:?}"
    );
    // Removed after its end: expired.
    m.mirror_put(cand.clone()).unwrap();
    m.take_events();
    m.mirror_remove(cand.id, cand.end, None).unwrap();
    let events = m.take_events();
    assert!(
        matches!(&events[..], [ReservationEvent::Expired { .. }]),
        "{events:?}"
    );
    // Put again with a later end (extended through any gateway): told as extended; other
    // changed terms are no extension.
    m.mirror_put(cand.clone()).unwrap();
    m.take_events();
    let longer = Reservation {
        end: cand.end + 60,
        ..cand.clone()
    };
    m.mirror_put(longer.clone()).unwrap();
    let events = m.take_events();
    assert!(
        matches!(&events[..], [ReservationEvent::Extended { reservation, previous_end }]
            if *reservation == longer && *previous_end == cand.end),
        "{events:?}"
    );
    m.mirror_put(Reservation {
        rate_bps: cand.rate_bps / 2,
        ..longer.clone()
    })
    .unwrap();
    assert!(m.take_events().is_empty());
    // Removed with the store's mark of a preemption: preempted, by whom, even before its end.
    m.mirror_remove(cand.id, NOW, Some(ReservationId(5000)))
        .unwrap();
    let events = m.take_events();
    assert!(
        matches!(
            &events[..],
            [ReservationEvent::Preempted {
                by: ReservationId(5000),
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(m.event_counts().preempted, 1);
}

#[test]
fn an_extension_needs_a_later_end_of_a_reservation_still_running() {
    let mut m = manager();
    let a = m
        .create(&request(60 * MBIT, &[1], 3), NOW)
        .unwrap()
        .reservation;
    let to = |end: u64| ExtendRequest { end: end.into() };
    let longer = extension(&a, &to(a.end + 10), NOW).unwrap();
    assert_eq!(
        longer,
        Reservation {
            end: a.end + 10,
            ..a.clone()
        }
    );
    assert!(matches!(
        extension(&a, &to(a.end), NOW),
        Err(BandwidthError::NotAnExtension { .. })
    ));
    assert!(matches!(
        extension(&a, &to(a.end + 10), a.end),
        Err(BandwidthError::Ended { .. })
    ));
}

#[test]
fn bad_requests_are_rejected_with_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reservations.json");
    let (mut m, _) = ReservationManager::open(
        Box::new(FileStore::new(&path)),
        network(),
        ManagerConfig::default(),
    )
    .unwrap();
    m.create(&request(10 * MBIT, &[1], 3), NOW).unwrap();
    let stored = std::fs::read(&path).unwrap();
    let before = snapshot(&m);
    let end = NOW + 3600;
    let cases: &[(&str, &str)] = &[
        (r#""rate": -5"#, "rate: -5 is negative"),
        (r#""rate": 0"#, "rate: 0 is not positive"),
        (r#""rate": "0M""#, "rate: \"0M\" is not positive"),
        (r#""rate": 1.5"#, "rate: 1.5 is not a whole number"),
        (r#""rate": "lots""#, "rate: \"lots\" is not bits per second"),
        (
            r#""rate": 99999999999999999999999999999999999999999999"#,
            "rate: 1e44 is out of range",
        ),
        (
            r#""rate": 18446744073709551616"#,
            "rate: 1.8446744073709552e19 is out of range",
        ),
        (r#""rate": 1e300"#, "is out of range"),
        (
            r#""end": 1699999999"#,
            "end: 1699999999 is not after start 1700000000",
        ),
        (
            r#""start": 1700000500, "end": 1700000400"#,
            "end: 1700000400 is not after start 1700000500",
        ),
        (r#""end": -1"#, "end: -1 is negative"),
        (
            r#""end": 340282366920938463463374607431768211455"#,
            "end: 3.402823669209385e38 is out of range",
        ),
        (r#""start": 1e300"#, "start: 1e300 is out of range"),
        (r#""start": 1.5"#, "start: 1.5 is not a whole number"),
        (r#""source": "mars""#, "source: unknown region \"mars\""),
        (
            r#""destination": "venus""#,
            "destination: unknown region \"venus\"",
        ),
        (
            r#""destination": "eu""#,
            "source and destination are the same region \"eu\"",
        ),
        (
            r#""class": "platinum""#,
            "class: unknown QoS class \"platinum\"",
        ),
        (
            r#""priority": 8"#,
            "priority: 8 is out of range (at most 7)",
        ),
        (r#""priority": -1"#, "priority: -1 is negative"),
        (r#""path": []"#, "path: empty"),
        (r#""path": [9]"#, "path: unknown link 9"),
        (r#""path": [-1]"#, "path: -1 is negative"),
        (
            r#""path": [4294967296]"#,
            "path: 4294967296 is out of range",
        ),
        (r#""path": [1, 2, 1]"#, "path: link 1 appears twice"),
        (
            r#""owner": "a\u0000b""#,
            "owner: contains control characters",
        ),
        (
            r#""rate": 10000000000001"#,
            "rate: 10000000000001 is out of range (at most 10000000000000)",
        ),
    ];
    for (patch, expected) in cases {
        let mut body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!(
            r#"{{"owner": "x", "source": "eu", "destination": "us", "class": "bulk", "rate": 1000, "end": {end}, "path": [1, 2]}}"#
        ))
        .unwrap();
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&format!("{{{patch}}}")).unwrap();
        body.extend(fields);
        let req: ReservationRequest = serde_json::from_value(body.into()).unwrap();
        let err = m.create(&req, NOW).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{patch}: got {err:?} ({err})"
        );
        assert!(
            (400..500).contains(&err.http_status()),
            "{patch}: {}",
            err.http_status()
        );
        assert_eq!(snapshot(&m), before, "{patch}");
        assert_eq!(std::fs::read(&path).unwrap(), stored, "{patch}");
    }
    // Unknown fields and missing fields are refused by the request type itself, by name.
    let e = serde_json::from_str::<ReservationRequest>(
        r#"{"source":"eu","destination":"us","class":"bulk","rate":1,"end":1,"path":[1],"rte":2}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `rte`"), "{e}");
    let e = serde_json::from_str::<ReservationRequest>(
        r#"{"source":"eu","destination":"us","class":"bulk","end":1,"path":[1]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing field `rate`"), "{e}");
}

#[test]
fn a_failed_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("reservations.json");
    let (mut m, _) = ReservationManager::open(
        Box::new(FileStore::new(&path)),
        network(),
        ManagerConfig::default(),
    )
    .unwrap();
    // The directory does not exist, so the write fails.
    let e = m.create(&request(10 * MBIT, &[1], 3), NOW).unwrap_err();
    assert!(
        matches!(e, BandwidthError::Store(StoreError::Io { .. })),
        "{e}"
    );
    assert_eq!(e.http_status(), 500);
    assert!(snapshot(&m).is_empty());
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // The id was not consumed either.
    assert_eq!(
        m.create(&request(10 * MBIT, &[1], 3), NOW)
            .unwrap()
            .reservation
            .id,
        ReservationId(1)
    );
}

#[test]
fn restart_restores_the_stored_set_and_a_corrupt_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reservations.json");
    let open = || {
        ReservationManager::open(
            Box::new(FileStore::new(&path)),
            network(),
            ManagerConfig::default(),
        )
    };
    let (mut m, _) = open().unwrap();
    m.create(&request(10 * MBIT, &[1], 3), NOW).unwrap();
    let b = m
        .create(&request(20 * MBIT, &[1, 2], 5), NOW)
        .unwrap()
        .reservation;
    m.cancel(b.id).unwrap();
    m.create(&request(5 * MBIT, &[3], 0), NOW).unwrap();
    let before = snapshot(&m);
    drop(m);
    let (mut m, events) = open().unwrap();
    assert!(events.is_empty());
    assert_eq!(snapshot(&m), before);
    // Ids are not reused after a restart.
    assert_eq!(
        m.create(&request(1, &[1], 3), NOW).unwrap().reservation.id,
        ReservationId(4)
    );
    drop(m);

    let good = std::fs::read(&path).unwrap();
    for (bytes, expected) in [
        (&good[..good.len() / 2], "is corrupt"),
        (&b""[..], "is corrupt"),
        (
            &b"{\"version\": 1, \"next_id\": 1, \"reservations\": [{}]}"[..],
            "is corrupt",
        ),
        (
            &b"{\"version\": 2, \"next_id\": 1, \"reservations\": []}"[..],
            "format version 2",
        ),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let e = open().unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
        // The bad file is left for the operator, not replaced by an empty set.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
    let mut dup: StoredState = serde_json::from_slice(&good).unwrap();
    dup.reservations.push(dup.reservations[0].clone());
    std::fs::write(&path, serde_json::to_vec(&dup).unwrap()).unwrap();
    assert!(open().unwrap_err().to_string().contains("appears twice"));
    let mut bad: StoredState = serde_json::from_slice(&good).unwrap();
    bad.reservations[0].rate_bps = 0;
    std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
    let e = open().unwrap_err().to_string();
    assert!(
        e.ends_with("is corrupt: reservation 1: rate out of range"),
        "{e}"
    );
}

#[test]
fn a_shrunk_network_displaces_the_lowest_priority_first() {
    let mut m = manager();
    let low = m
        .create(&request(30 * MBIT, &[1], 1), NOW)
        .unwrap()
        .reservation;
    let high = m
        .create(&request(30 * MBIT, &[1, 2], 6), NOW)
        .unwrap()
        .reservation;
    let other = m
        .create(&request(5 * MBIT, &[3], 0), NOW)
        .unwrap()
        .reservation;
    let mut net = network();
    net.link_capacity_bps.insert(LinkId(1), 50 * MBIT); // 40M reservable: only one fits
    net.link_capacity_bps.remove(&LinkId(3));
    m.take_events();
    m.set_network(net).unwrap();
    assert_eq!(
        m.take_events(),
        vec![
            ReservationEvent::Displaced {
                reservation: low,
                link: LinkId(1)
            },
            ReservationEvent::Displaced {
                reservation: other,
                link: LinkId(3)
            },
        ]
    );
    assert_eq!(snapshot(&m), vec![high]);
}

#[test]
fn reservations_and_events_serialise_for_the_api() {
    let mut m = manager();
    let a = m.create(&request(10 * MBIT, &[1], 3), NOW).unwrap();
    let json = serde_json::to_value(&a.reservation).unwrap();
    assert_eq!(json["class"], "bulk");
    assert_eq!(json["path"], serde_json::json!([1]));
    let back: Reservation = serde_json::from_value(json).unwrap();
    assert_eq!(back, a.reservation);
    let cancelled = ReservationEvent::Cancelled { reservation: back };
    let ev = serde_json::to_value(&cancelled).unwrap();
    assert_eq!(ev["event"], "cancelled");
    // Among the agent's events (events file, API stream), tagged as both.
    let agent = crate::view::AgentEvent::Reservation(cancelled);
    let json = serde_json::to_value(&agent).unwrap();
    assert_eq!(
        (&json["kind"], &json["event"]),
        (&"reservation".into(), &"cancelled".into())
    );
    assert_eq!(
        serde_json::from_value::<crate::view::AgentEvent>(json).unwrap(),
        agent
    );
    let req: ReservationRequest = serde_json::from_str(
        r#"{"source":"eu","destination":"us","class":"best-effort","rate":"20M","end":1700003600,"path":[1]}"#,
    )
    .unwrap();
    let r = m.create(&req, NOW).unwrap().reservation;
    assert_eq!(
        (r.rate_bps, r.priority, r.owner.as_str()),
        (20 * MBIT, default_priority(QosClass::BestEffort), "")
    );
}

// ---- properties ----

const LINKS: [u32; 3] = [1, 2, 3];

#[derive(Clone, Debug)]
enum Op {
    Create {
        rate: u64,
        start: u64,
        len: u64,
        priority: u8,
        links: Vec<u32>,
    },
    Extend {
        pick: usize,
        more: u64,
    },
    Cancel {
        pick: usize,
    },
    Expire {
        advance: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let links = proptest::sample::subsequence(LINKS.to_vec(), 1..=3);
    prop_oneof![
        6 => (1u64..=60, 0u64..50, 1u64..50, 0u8..=MAX_PRIORITY, links)
            .prop_map(|(rate, start, len, priority, links)| Op::Create { rate: rate * MBIT, start, len, priority, links }),
        1 => (any::<usize>(), 1u64..30).prop_map(|(pick, more)| Op::Extend { pick, more }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (0u64..20).prop_map(|advance| Op::Expire { advance }),
    ]
}

/// Load on every link never exceeds its reservable capacity, checked at every instant where
/// the load changes.
fn assert_not_overcommitted(m: &ReservationManager) {
    let all: Vec<&Reservation> = m.list().collect();
    let instants: BTreeSet<u64> = all.iter().flat_map(|r| [r.start, r.end]).collect();
    for &l in &LINKS {
        for &t in &instants {
            let load: u64 = all
                .iter()
                .filter(|r| r.uses(LinkId(l)) && r.active_at(t))
                .map(|r| r.rate_bps)
                .sum();
            assert!(
                load <= m.reservable_bps(LinkId(l)),
                "link {l} at {t}: {load}"
            );
        }
    }
}

fn by_id(v: &[Reservation]) -> BTreeMap<ReservationId, Reservation> {
    v.iter().map(|r| (r.id, r.clone())).collect()
}

fn run_op(m: &mut ReservationManager, op: &Op, now: &mut u64) {
    let before = snapshot(m);
    let pick = |i: usize| before.get(i % before.len().max(1)).map(|r| r.id);
    match op {
        Op::Create {
            rate,
            start,
            len,
            priority,
            links,
        } => {
            let mut req = request(*rate, links, *priority);
            req.start = Some((*now + start).into());
            req.end = (*now + start + len).into();
            match m.create(&req, *now) {
                Ok(adm) => {
                    let cand = &adm.reservation;
                    let after = by_id(&snapshot(m));
                    let mut expected = by_id(&before);
                    for v in &adm.preempted {
                        assert!(expected.remove(&v.id).is_some());
                        // Only lower priorities are preempted...
                        assert!(v.priority < cand.priority);
                        // ...each one is needed: putting it back would over-commit a link...
                        assert!(
                            fits(after.values(), v, &reservable(m)).is_err(),
                            "{v:?} was not needed"
                        );
                    }
                    // ...and from the lowest tiers possible: sparing everything below the
                    // highest victim's priority would not have made room.
                    if let Some(top) = adm.preempted.iter().map(|v| v.priority).max() {
                        let spared = before.iter().filter(|r| r.priority >= top);
                        assert!(fits(spared, cand, &reservable(m)).is_err());
                    }
                    expected.insert(cand.id, cand.clone());
                    assert_eq!(after, expected);
                    // All of it: the rate is on every link of the path.
                    for l in &cand.path {
                        assert!(m.reserved_bps(*l, cand.start) >= cand.rate_bps);
                    }
                }
                Err(e) => {
                    assert!(
                        matches!(e, BandwidthError::InsufficientBandwidth { .. }),
                        "{e}"
                    );
                    assert_eq!(snapshot(m), before);
                }
            }
        }
        Op::Extend { pick: i, more } => {
            if let Some(id) = pick(*i) {
                let end = m.get(id).unwrap().end + more;
                match m.extend(id, &ExtendRequest { end: end.into() }, *now) {
                    Ok(adm) => assert!(adm
                        .preempted
                        .iter()
                        .all(|v| v.priority < adm.reservation.priority)),
                    Err(_) => assert_eq!(snapshot(m), before),
                }
            }
        }
        Op::Cancel { pick: i } => {
            if let Some(id) = pick(*i) {
                m.cancel(id).unwrap();
                assert_eq!(snapshot(m).len(), before.len() - 1);
            }
        }
        Op::Expire { advance } => {
            *now += advance;
            let expired = m.expire(*now).unwrap();
            let after = snapshot(m);
            let gone: BTreeSet<_> = expired.iter().map(|r| r.id).collect();
            assert_eq!(
                gone,
                before
                    .iter()
                    .filter(|r| r.end <= *now)
                    .map(|r| r.id)
                    .collect()
            );
            assert_eq!(
                after,
                before
                    .iter()
                    .filter(|r| !gone.contains(&r.id))
                    .cloned()
                    .collect::<Vec<_>>()
            );
            // Expiry frees exactly the expired reservations' bandwidth, at every instant.
            let instants: BTreeSet<u64> = before.iter().flat_map(|r| [r.start, r.end]).collect();
            for &l in &LINKS {
                for &t in &instants {
                    let freed: u64 = expired
                        .iter()
                        .filter(|r| r.uses(LinkId(l)) && r.active_at(t))
                        .map(|r| r.rate_bps)
                        .sum();
                    assert_eq!(
                        load_at(&before, LinkId(l), t) - load_at(&after, LinkId(l), t),
                        freed
                    );
                }
            }
        }
    }
}

fn reservable(m: &ReservationManager) -> BTreeMap<LinkId, u64> {
    LINKS
        .iter()
        .map(|&l| (LinkId(l), m.reservable_bps(LinkId(l))))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn admission_preemption_and_expiry_keep_their_promises(ops in proptest::collection::vec(op(), 1..40)) {
        let mut m = manager();
        let mut now = NOW;
        for op in &ops {
            run_op(&mut m, op, &mut now);
            assert_not_overcommitted(&m);
        }
    }
}

proptest! {
    // Real files and fsyncs: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_restart_restores_exactly_the_stored_set(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let open = || ReservationManager::open(Box::new(FileStore::new(&path)), network(), ManagerConfig::default()).unwrap();
        let (mut m, _) = open();
        let mut now = NOW;
        for op in &ops {
            run_op(&mut m, op, &mut now);
        }
        let before = snapshot(&m);
        let probe = request(1, &[2], 0);
        drop(m);
        let (mut again, events) = open();
        prop_assert!(events.is_empty());
        prop_assert_eq!(snapshot(&again), before.clone());
        // The next id continues after every id ever given.
        if let Ok(adm) = again.create(&probe, now) {
            prop_assert!(before.iter().all(|r| r.id < adm.reservation.id));
        }
    }
}
