//! Choosing the secondaries among the routing engine's ranked candidates so they share as few
//! links as possible with the primary and with each other.
//!
//! Exact, by enumeration: with at most [`MAX_CANDIDATES`] candidates there are at most
//! C(15, 3) = 455 sets of secondaries to compare.

use std::collections::BTreeSet;

use super::{validate_path, LinkId, PathSet, PathSpec, RedundancyError, MAX_SECONDARIES};

/// Candidates considered per destination (the best-ranked ones).
pub const MAX_CANDIDATES: usize = 16;

/// Picks the path set of `destination` from candidates ranked best first: the first is the
/// primary; the secondaries (up to three) minimise, in this order, the links they share with
/// the primary, the links they share with each other, and the sum of their ranks. Candidates
/// whose links are exactly the primary's add no redundancy and are skipped.
pub fn select_path_set(
    destination: &str,
    candidates: &[PathSpec],
) -> Result<PathSet, RedundancyError> {
    let (primary, rest) = candidates
        .split_first()
        .ok_or_else(|| RedundancyError::NoPaths {
            destination: destination.to_string(),
        })?;
    for c in candidates {
        validate_path(destination, c)?;
    }
    let primary_links: BTreeSet<LinkId> = primary.links.iter().copied().collect();
    let mut seen_ids = BTreeSet::from([primary.path_id]);
    // (rank, path, its link set), without copies of the primary or duplicate ids.
    let pool: Vec<(usize, &PathSpec, BTreeSet<LinkId>)> = rest
        .iter()
        .take(MAX_CANDIDATES - 1)
        .enumerate()
        .filter_map(|(rank, p)| {
            let links: BTreeSet<LinkId> = p.links.iter().copied().collect();
            (links != primary_links && seen_ids.insert(p.path_id)).then_some((rank, p, links))
        })
        .collect();
    let k = pool.len().min(MAX_SECONDARIES);
    let mut best: Option<(Cost, Vec<usize>)> = None;
    let mut chosen = Vec::with_capacity(k);
    search(&pool, &primary_links, k, 0, &mut chosen, &mut best);
    let secondaries = best
        .map(|(_, picks)| picks.iter().map(|&i| pool[i].1.clone()).collect())
        .unwrap_or_default();
    Ok(PathSet {
        primary: primary.clone(),
        secondaries,
    })
}

/// (links shared with the primary, links shared among the secondaries, sum of ranks).
type Cost = (usize, usize, usize);

fn cost(
    pool: &[(usize, &PathSpec, BTreeSet<LinkId>)],
    primary: &BTreeSet<LinkId>,
    picks: &[usize],
) -> Cost {
    let with_primary = picks
        .iter()
        .map(|&i| pool[i].2.intersection(primary).count())
        .sum();
    let mut among = 0;
    for (n, &i) in picks.iter().enumerate() {
        for &j in &picks[n + 1..] {
            among += pool[i].2.intersection(&pool[j].2).count();
        }
    }
    let ranks = picks.iter().map(|&i| pool[i].0).sum();
    (with_primary, among, ranks)
}

/// Every increasing choice of `k` pool indexes; keeps the cheapest (the first found on ties,
/// which is the lexicographically smallest index list).
fn search(
    pool: &[(usize, &PathSpec, BTreeSet<LinkId>)],
    primary: &BTreeSet<LinkId>,
    k: usize,
    from: usize,
    chosen: &mut Vec<usize>,
    best: &mut Option<(Cost, Vec<usize>)>,
) {
    if chosen.len() == k {
        let c = cost(pool, primary, chosen);
        if best.as_ref().is_none_or(|(b, _)| c < *b) {
            *best = Some((c, chosen.clone()));
        }
        return;
    }
    for i in from..pool.len() {
        if pool.len() - i < k - chosen.len() {
            break;
        }
        chosen.push(i);
        search(pool, primary, k, i + 1, chosen, best);
        chosen.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(path_id: u32, links: &[LinkId]) -> PathSpec {
        PathSpec {
            path_id,
            links: links.to_vec(),
        }
    }

    #[test]
    fn prefers_disjoint_paths_over_better_ranked_overlapping_ones() {
        // Primary 1-2. Candidate ranks: [1,3] shares link 1; [4,5] and [6] are disjoint.
        let set = select_path_set(
            "eu-west",
            &[p(10, &[1, 2]), p(11, &[1, 3]), p(12, &[4, 5]), p(13, &[6])],
        )
        .unwrap();
        assert_eq!(set.primary.path_id, 10);
        let ids: Vec<u32> = set.secondaries.iter().map(|s| s.path_id).collect();
        // All three fit; the overlapping one is kept (three slots, three candidates).
        assert_eq!(ids, [11, 12, 13]);

        let set = select_path_set(
            "eu-west",
            &[
                p(10, &[1, 2]),
                p(11, &[1, 3]),
                p(12, &[4, 5]),
                p(13, &[6]),
                p(14, &[7, 8]),
            ],
        )
        .unwrap();
        let ids: Vec<u32> = set.secondaries.iter().map(|s| s.path_id).collect();
        assert_eq!(
            ids,
            [12, 13, 14],
            "a disjoint fourth candidate beats the overlap"
        );
    }

    #[test]
    fn copies_of_the_primary_are_skipped_and_bad_input_named() {
        let set = select_path_set("ap-south", &[p(1, &[1, 2]), p(2, &[2, 1])]).unwrap();
        assert!(set.secondaries.is_empty());
        assert_eq!(
            select_path_set("ap-south", &[]).unwrap_err().to_string(),
            "destination ap-south: no candidate path"
        );
        assert_eq!(
            select_path_set("ap-south", &[p(1, &[1]), p(2, &[3, 4, 3])])
                .unwrap_err()
                .to_string(),
            "destination ap-south: path 2 crosses link 3 twice"
        );
        assert_eq!(
            select_path_set("ap-south", &[p(1, &[])]).unwrap_err(),
            RedundancyError::EmptyPath {
                destination: "ap-south".into(),
                path_id: 1
            }
        );
    }

    /// Brute force over every subset (bitmask), written independently of the search.
    fn oracle(candidates: &[PathSpec]) -> Cost {
        let primary: BTreeSet<LinkId> = candidates[0].links.iter().copied().collect();
        let mut ids = BTreeSet::from([candidates[0].path_id]);
        let pool: Vec<(usize, &PathSpec, BTreeSet<LinkId>)> = candidates[1..]
            .iter()
            .enumerate()
            .filter_map(|(r, p)| {
                let l: BTreeSet<LinkId> = p.links.iter().copied().collect();
                (l != primary && ids.insert(p.path_id)).then_some((r, p, l))
            })
            .collect();
        let k = pool.len().min(MAX_SECONDARIES);
        (0u32..1 << pool.len())
            .filter(|m| m.count_ones() as usize == k)
            .map(|m| {
                let picks: Vec<usize> = (0..pool.len()).filter(|i| m & (1 << i) != 0).collect();
                cost(&pool, &primary, &picks)
            })
            .min()
            .unwrap()
    }

    proptest! {
        #[test]
        fn selection_is_optimal(
            paths in proptest::collection::vec(
                proptest::collection::btree_set(0u32..8, 1..4), 1..9)
        ) {
            let candidates: Vec<PathSpec> = paths
                .iter()
                .enumerate()
                .map(|(i, l)| p(i as u32, &l.iter().copied().collect::<Vec<_>>()))
                .collect();
            let set = select_path_set("d", &candidates).unwrap();
            prop_assert_eq!(&set.primary, &candidates[0]);
            prop_assert!(set.secondaries.len() <= MAX_SECONDARIES);
            // Recompute the chosen set's cost the oracle's way and compare.
            let primary: BTreeSet<LinkId> = candidates[0].links.iter().copied().collect();
            let mut with_primary = 0;
            let mut among = 0;
            let mut ranks = 0;
            for (n, s) in set.secondaries.iter().enumerate() {
                let l: BTreeSet<LinkId> = s.links.iter().copied().collect();
                with_primary += l.intersection(&primary).count();
                ranks += s.path_id as usize - 1;
                for t in &set.secondaries[n + 1..] {
                    let m: BTreeSet<LinkId> = t.links.iter().copied().collect();
                    among += l.intersection(&m).count();
                }
            }
            prop_assert_eq!((with_primary, among, ranks), oracle(&candidates));
        }
    }
}
