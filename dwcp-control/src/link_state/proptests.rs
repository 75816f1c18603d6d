//! The flooding property, on the real state machines of small random networks: after any
//! sequence of link cuts and heals, figure changes and agent restarts, with messages lost at
//! random, a quiet period without loss leaves every gateway with the same database, holding
//! every gateway's record.
use proptest::prelude::{prop_assert, prop_assert_eq, proptest, ProptestConfig, Strategy as Gen};

use super::testnet::{Net, MS};

#[derive(Clone, Debug)]
enum Change {
    /// Link index (modulo the links), both ends' detection delays in ms.
    Flip(usize, u64, u64),
    /// Gateway, link of it (modulo its links), new RTT in ms.
    Figures(usize, usize, u16),
    Restart(usize),
}

#[derive(Clone, Debug)]
struct Case {
    nodes: usize,
    /// (a, b, one-way delay ms); the first `nodes - 1` make a spanning tree.
    links: Vec<(usize, usize, u64)>,
    /// (ms since the previous change, change)
    changes: Vec<(u64, Change)>,
    loss: f64,
    seed: u64,
}

fn case() -> impl Gen<Value = Case> {
    (2usize..=6).prop_flat_map(|n| {
        let tree =
            proptest::collection::vec((0usize..1_000, 1u64..=60), n - 1).prop_map(|parents| {
                parents
                    .into_iter()
                    .enumerate()
                    .map(|(i, (p, delay))| (i + 1, p % (i + 1), delay))
                    .collect::<Vec<_>>()
            });
        let extra = proptest::collection::vec((0..n, 0..n, 1u64..=60), 0..=n)
            .prop_map(|v| v.into_iter().filter(|(a, b, _)| a != b).collect::<Vec<_>>());
        let change = proptest::prop_oneof![
            4 => (0usize..64, 0u64..=80, 0u64..=80).prop_map(|(l, a, b)| Change::Flip(l, a, b)),
            2 => (0..n, 0usize..8, 1u16..=300).prop_map(|(g, l, rtt)| Change::Figures(g, l, rtt)),
            1 => (0..n).prop_map(Change::Restart),
        ];
        (
            tree,
            extra,
            proptest::collection::vec((0u64..=1_500, change), 0..=25),
            0.0f64..0.6,
            proptest::num::u64::ANY,
        )
            .prop_map(move |(tree, extra, changes, loss, seed)| Case {
                nodes: n,
                links: tree.into_iter().chain(extra).collect(),
                changes,
                loss,
                seed,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn databases_agree_after_a_quiet_period(case in case()) {
        let mut net = Net::new(case.nodes, &case.links, case.seed);
        net.loss = case.loss;
        net.start();
        let mut incarnation = 1;
        for (gap_ms, change) in &case.changes {
            net.run_until(net.now + gap_ms * MS);
            match *change {
                Change::Flip(l, da, db) => {
                    let l = l % net.links.len();
                    let up = !net.links[l].up;
                    net.set_link(l, up, da, db);
                }
                Change::Figures(g, l, rtt) => {
                    let links = net.links_of(g);
                    let link = links[l % links.len()];
                    let up = net.links[link.0 as usize].up;
                    net.observe(g, link, up, f64::from(rtt));
                }
                Change::Restart(g) => {
                    incarnation += 1;
                    net.restart(g, incarnation);
                }
            }
        }
        // Quiet: no loss, every link back up, every hold over.
        net.loss = 0.0;
        for l in 0..net.links.len() {
            if !net.links[l].up {
                net.set_link(l, true, 10, 10);
            }
        }
        net.run_until(net.now + 3_000 * MS);
        prop_assert!(net.settle(60_000), "no quiet moment within a minute");
        let dbs = net.databases();
        prop_assert_eq!(dbs[0].len(), case.nodes, "{:#?}", dbs);
        for db in &dbs {
            prop_assert_eq!(db, &dbs[0]);
        }
    }
}
