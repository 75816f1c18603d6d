use std::sync::Arc;

use super::*;
use crate::link_state::record::{Figures, LinkReport, Record};
use crate::link_state::testnet::{self, Net, MS};
use crate::topology::RoutingHealth;

const A: LinkId = LinkId(1);
const C: LinkId = LinkId(2);
const D: LinkId = LinkId(3);

/// gw-b, with links to gw-a (1), gw-c (2) and gw-d (3), all up, nothing originated of its own
/// but an empty record.
fn gw_b() -> Flooder {
    let mut b = Flooder::new(
        testnet::config(),
        Origin::new("gw-b").unwrap(),
        TopologyDigest(1),
        22,
        &[A, C, D],
    )
    .unwrap();
    for link in [A, C, D] {
        b.neighbour_up(link, 0);
    }
    // Everyone acknowledges b's own record.
    for link in [A, C, D] {
        let own = b
            .database()
            .get(&Origin::new("gw-b").unwrap())
            .unwrap()
            .key();
        b.handle(link, ack(incarnation(link), own), 0);
    }
    assert_eq!(b.unacknowledged(), 0);
    b
}

/// The incarnation of the neighbour over `link`.
fn incarnation(link: LinkId) -> u64 {
    11 * u64::from(link.0)
}

fn record(name: &str, seq: u64) -> Arc<Record> {
    let links = vec![LinkReport {
        link: LinkId(9),
        health: RoutingHealth::Down,
        figures: Figures::default(),
    }];
    Arc::new(Record::new(Origin::new(name).unwrap(), seq, TopologyDigest(1), links).unwrap())
}

fn update(incarnation: u64, record: Arc<Record>) -> Message {
    let advert = Advert {
        lifetime_ms: 10_000,
        record,
    };
    Message::updates(incarnation, vec![advert]).remove(0)
}

fn ack(incarnation: u64, key: RecordKey) -> Message {
    Message::acks(incarnation, vec![key]).remove(0)
}

/// The links the actions send updates over, with the records' (origin, seq).
fn updates_sent(actions: &[Action]) -> Vec<(LinkId, Vec<(String, u64)>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { link, message } => match message.body() {
                Body::Update(adverts) => Some((
                    *link,
                    adverts
                        .iter()
                        .map(|a| (a.record.origin().to_string(), a.record.seq()))
                        .collect(),
                )),
                Body::Ack(_) => None,
            },
            _ => None,
        })
        .collect()
}

fn acks_sent(actions: &[Action]) -> Vec<(LinkId, Vec<RecordKey>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { link, message } => match message.body() {
                Body::Ack(keys) => Some((*link, keys.clone())),
                Body::Update(_) => None,
            },
            _ => None,
        })
        .collect()
}

fn a(seq: u64) -> (String, u64) {
    ("gw-a".to_string(), seq)
}

#[test]
fn a_new_record_is_acknowledged_and_flooded_to_all_but_its_sender() {
    let mut b = gw_b();
    let out = b.handle(A, update(incarnation(A), record("gw-a", 5)), 10 * MS);
    assert_eq!(acks_sent(&out), [(A, vec![record("gw-a", 5).key()])]);
    assert_eq!(updates_sent(&out), [(C, vec![a(5)]), (D, vec![a(5)])]);
    assert!(out.contains(&Action::DatabaseChanged));
    assert_eq!(
        out.last(),
        Some(&Action::Wake { at_ns: 110 * MS }),
        "retransmission due"
    );
}

#[test]
fn unacknowledged_records_are_sent_again_until_acknowledged() {
    let mut b = gw_b();
    b.handle(A, update(incarnation(A), record("gw-a", 5)), 10 * MS);
    assert!(updates_sent(&b.tick(109 * MS)).is_empty());
    b.handle(C, ack(incarnation(C), record("gw-a", 5).key()), 50 * MS);
    assert_eq!(updates_sent(&b.tick(110 * MS)), [(D, vec![a(5)])]);
    // d answers with the record itself (it had it from elsewhere): as good as an ack.
    b.handle(D, update(incarnation(D), record("gw-a", 5)), 150 * MS);
    assert_eq!(b.unacknowledged(), 0);
    assert!(updates_sent(&b.tick(1_000 * MS)).is_empty());
}

#[test]
fn a_duplicate_is_acknowledged_and_goes_no_further() {
    let mut b = gw_b();
    b.handle(A, update(incarnation(A), record("gw-a", 5)), 0);
    let out = b.handle(C, update(incarnation(C), record("gw-a", 5)), MS);
    assert_eq!(acks_sent(&out), [(C, vec![record("gw-a", 5).key()])]);
    assert_eq!(updates_sent(&out), []);
    assert!(!out.contains(&Action::DatabaseChanged));
}

#[test]
fn an_older_copy_is_answered_with_ours() {
    let mut b = gw_b();
    b.handle(A, update(incarnation(A), record("gw-a", 5)), 0);
    b.handle(C, ack(incarnation(C), record("gw-a", 5).key()), 0);
    b.handle(D, ack(incarnation(D), record("gw-a", 5).key()), 0);
    let out = b.handle(C, update(incarnation(C), record("gw-a", 4)), MS);
    assert_eq!(acks_sent(&out), []);
    assert_eq!(updates_sent(&out), [(C, vec![a(5)])]);
    // And again until c acknowledges it.
    assert_eq!(updates_sent(&b.tick(101 * MS)), [(C, vec![a(5)])]);
}

#[test]
fn a_neighbour_coming_up_gets_the_whole_database() {
    let mut b = gw_b();
    b.handle(A, update(incarnation(A), record("gw-a", 5)), 0);
    b.handle(A, update(incarnation(A), record("gw-x", 2)), 0);
    b.neighbour_down(D);
    let out = b.neighbour_up(D, MS);
    assert_eq!(
        updates_sent(&out),
        [(D, vec![a(5), ("gw-b".into(), 1), ("gw-x".into(), 2)])]
    );
}

#[test]
fn a_neighbour_that_restarted_gets_the_whole_database() {
    let mut b = gw_b();
    b.handle(A, update(incarnation(A), record("gw-a", 5)), 0);
    b.handle(C, ack(incarnation(C), record("gw-a", 5).key()), 0);
    b.handle(D, ack(incarnation(D), record("gw-a", 5).key()), 0);
    // c's agent restarted (new incarnation) and floods its record; its link never went down.
    let out = b.handle(C, update(incarnation(C) + 1, record("gw-c", 1)), MS);
    assert_eq!(
        updates_sent(&out),
        [
            (A, vec![("gw-c".into(), 1)]),
            (C, vec![a(5), ("gw-b".into(), 1)]),
            (D, vec![("gw-c".into(), 1)]),
        ]
    );
}

#[test]
fn messages_over_a_link_that_is_not_up_are_ignored() {
    let mut b = gw_b();
    b.neighbour_down(A);
    let out = b.handle(A, update(incarnation(A), record("gw-a", 5)), 0);
    assert_eq!(
        out.iter()
            .filter(|a| !matches!(a, Action::Wake { .. }))
            .count(),
        0
    );
    assert!(b.database().get(&Origin::new("gw-a").unwrap()).is_none());
}

#[test]
fn our_record_from_before_a_restart_makes_us_jump_above_it() {
    let mut b = gw_b();
    let out = b.handle(A, update(incarnation(A), record("gw-b", 57)), MS);
    assert_eq!(acks_sent(&out), [(A, vec![record("gw-b", 57).key()])]);
    let b58 = ("gw-b".to_string(), 58);
    assert_eq!(
        updates_sent(&out),
        [
            (A, vec![b58.clone()]),
            (C, vec![b58.clone()]),
            (D, vec![b58])
        ],
        "to its sender too: it holds the stale copy"
    );
}

#[test]
fn changes_of_one_instant_make_one_record() {
    let mut b = gw_b();
    let up = Observation {
        health: RoutingHealth::Up,
        figures: Figures::default(),
    };
    let mut wakes = Vec::new();
    for link in [A, C, D] {
        wakes.extend(b.observe(link, up, 5 * MS));
    }
    assert_eq!(wakes.last(), Some(&Action::Wake { at_ns: 5 * MS }));
    let out = b.tick(5 * MS);
    let own = ("gw-b".to_string(), 2);
    assert_eq!(
        updates_sent(&out),
        [
            (A, vec![own.clone()]),
            (C, vec![own.clone()]),
            (D, vec![own])
        ]
    );
    assert_eq!(
        b.database()
            .get(&Origin::new("gw-b").unwrap())
            .unwrap()
            .links()
            .len(),
        3
    );
}

#[test]
fn our_record_is_refreshed_and_others_age_out() {
    let mut b = gw_b();
    b.handle(A, update(incarnation(A), record("gw-a", 5)), 0);
    let (gw_a, gw_b) = (Origin::new("gw-a").unwrap(), Origin::new("gw-b").unwrap());
    // Lifetime 10 s (all of max_age: just made); our refresh every 3 s.
    assert_eq!(b.record_age_ns(&gw_a, 2_000 * MS), Some(2_000 * MS));
    assert_eq!(b.record_age_ns(&gw_b, 2_000 * MS), Some(2_000 * MS));
    let out = b.tick(3_000 * MS);
    assert!(updates_sent(&out)
        .iter()
        .any(|(_, records)| records.contains(&("gw-b".to_string(), 2))));
    assert_eq!(b.record_age_ns(&gw_b, 3_500 * MS), Some(500 * MS));
    let out = b.tick(10_000 * MS);
    assert!(out.contains(&Action::DatabaseChanged));
    assert!(b.database().get(&gw_a).is_none());
    assert_eq!(b.database().len(), 1);
    assert_eq!(b.record_age_ns(&gw_a, 10_000 * MS), None);
    let counts = b.counts();
    assert_eq!((counts.received, counts.aged_out), (1, 1));
    assert!(
        counts.flooded >= 3 + 2,
        "b's records to a, c, d, gw-a's to c, d: {counts:?}"
    );
}

#[test]
fn links_not_ours_are_refused() {
    let mut b = gw_b();
    let up = Observation {
        health: RoutingHealth::Up,
        figures: Figures::default(),
    };
    b.observe(LinkId(77), up, 0);
    let out = b.tick(0);
    assert!(
        out.iter().all(|a| matches!(a, Action::Wake { .. })),
        "nothing due, nothing sent: {out:?}"
    );
    assert!(updates_sent(&b.neighbour_up(LinkId(77), 0)).is_empty());
    let too_many: Vec<LinkId> = (0..65).map(LinkId).collect();
    assert_eq!(
        Flooder::new(
            testnet::config(),
            Origin::new("gw-z").unwrap(),
            TopologyDigest(1),
            0,
            &too_many
        )
        .unwrap_err(),
        LinkStateError::TooManyLinks(65)
    );
}

/// A ring of four with a chord: 0-1-2-3-0 and 0-2.
fn ring() -> Net {
    let mut net = Net::new(
        4,
        &[(0, 1, 10), (1, 2, 20), (2, 3, 30), (3, 0, 40), (0, 2, 15)],
        7,
    );
    net.start();
    assert!(net.settle(10_000));
    net
}

#[test]
fn a_cut_reaches_every_gateway_and_heals_after_the_hold() {
    let mut net = ring();
    let db = |net: &Net, node: usize, link: u32| {
        net.nodes[node]
            .database()
            .records()
            .filter_map(|r| r.link(LinkId(link)).map(|l| l.health))
            .collect::<Vec<_>>()
    };
    let t0 = net.now;
    net.set_link(1, false, 30, 30);
    net.run_until(t0 + 200 * MS);
    for node in 0..4 {
        assert_eq!(
            db(&net, node, 1),
            [RoutingHealth::Down; 2],
            "gateway {node}"
        );
    }
    let t1 = net.now;
    net.set_link(1, true, 30, 50);
    net.run_until(t1 + 150 * MS);
    assert_eq!(db(&net, 3, 1), [RoutingHealth::Down; 2], "held");
    net.run_until(t1 + 400 * MS);
    assert_eq!(db(&net, 3, 1), [RoutingHealth::Up; 2]);
    assert!(net.settle(10_000));
    let dbs = net.databases();
    assert!(dbs.iter().all(|d| *d == dbs[0]));
}

#[test]
fn a_restarted_gateway_resynchronises_and_jumps_its_sequence() {
    let mut net = ring();
    let before = net.nodes[2]
        .database()
        .get(&testnet::name(2))
        .unwrap()
        .seq();
    // Refreshes raise everyone's sequence numbers a little.
    net.run_until(net.now + 7_000 * MS);
    net.restart(2, 99);
    assert!(net.settle(10_000));
    let dbs = net.databases();
    assert_eq!(dbs[2].len(), 4, "the whole database back");
    assert!(dbs.iter().all(|d| *d == dbs[0]), "{dbs:#?}");
    let after = net.nodes[2]
        .database()
        .get(&testnet::name(2))
        .unwrap()
        .seq();
    assert!(
        after > before + 1,
        "{before} -> {after}: above its old records"
    );
}
