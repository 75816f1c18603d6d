//! Building a next-hop group's weighted bucket table.
//!
//! Each member gets a number of buckets proportional to its integer weight (largest remainder,
//! so the counts are exact to one bucket). A table built from scratch is a pure function of
//! the members and weights (members sorted by next-hop id, Maglev-style preference lists seeded
//! by the next-hop id), so every gateway and every agent restart builds the same table. A
//! table rebuilt from a previous one keeps every bucket whose owner is still entitled to it and
//! moves only the surplus — like the kernel's resilient next-hop groups — so a weight change
//! moves only the flows it must.

use dwcp_common::{MemberPath, NextHopTable, MAX_GROUP_MEMBERS, NHG_BUCKETS};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GroupError {
    #[error("a next-hop group needs at least one member")]
    Empty,
    #[error("a next-hop group has at most {max} members, got {got}")]
    TooManyMembers { got: usize, max: usize },
    #[error("next hop {0} appears twice in the group")]
    DuplicateMember(u32),
    #[error("every member of the group is a standby (weight 0): at least one needs a weight")]
    NoActiveMember,
}

/// A member of a group: a next-hop id, its integer weight and its whole path. Weight 0 makes
/// it a standby: it gets no buckets and takes flows only when active members' paths are dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub nexthop: u32,
    pub weight: u32,
    /// The links the member's packets cross and the source route they carry (empty: a
    /// one-link path checked by its own link's liveness only).
    pub path: MemberPath,
}

/// Bucket counts per member (largest remainder; ties go to the lower next-hop id).
fn quotas(members: &[Member]) -> Vec<usize> {
    let total: u64 = members.iter().map(|m| m.weight as u64).sum();
    let b = NHG_BUCKETS as u64;
    let mut q: Vec<usize> = members
        .iter()
        .map(|m| (m.weight as u64 * b / total) as usize)
        .collect();
    let mut left = NHG_BUCKETS - q.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(members[i].weight as u64 * b % total));
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        q[i] += 1;
        left -= 1;
    }
    q
}

/// Maglev permutation of bucket indexes for a next hop: offset + k * skip (mod prime), stepped
/// by addition (the table is rebuilt on every membership change; a division per step showed).
struct Preference {
    pos: usize,
    skip: usize,
    left: usize,
}

impl Preference {
    fn new(nexthop: u32) -> Self {
        let h = dwcp_common::hash::flow_hash(
            &dwcp_common::FlowKey {
                src: [nexthop, 0, 0, 0],
                ..Default::default()
            },
            0x6d61_676c, // "magl"
        ) as usize;
        Preference {
            pos: h % NHG_BUCKETS,
            skip: (h >> 11) % (NHG_BUCKETS - 1) + 1,
            left: NHG_BUCKETS,
        }
    }
}

impl Iterator for Preference {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let b = self.pos;
        self.pos += self.skip;
        if self.pos >= NHG_BUCKETS {
            self.pos -= NHG_BUCKETS;
        }
        Some(b)
    }
}

fn validate(members: &[Member]) -> Result<Vec<Member>, GroupError> {
    if members.is_empty() {
        return Err(GroupError::Empty);
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(GroupError::TooManyMembers {
            got: members.len(),
            max: MAX_GROUP_MEMBERS,
        });
    }
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|m| m.nexthop);
    for w in sorted.windows(2) {
        if w[0].nexthop == w[1].nexthop {
            return Err(GroupError::DuplicateMember(w[0].nexthop));
        }
    }
    if sorted.iter().all(|m| m.weight == 0) {
        return Err(GroupError::NoActiveMember);
    }
    // Actives first (they own the buckets), then standbys, each by next-hop id.
    sorted.sort_by_key(|m| (m.weight == 0, m.nexthop));
    Ok(sorted)
}

/// Builds a group's table. With `previous`, buckets keep their next hop where its new quota
/// allows (minimal disruption); without, the table is built from scratch deterministically.
pub fn build_table(
    members: &[Member],
    previous: Option<&NextHopTable>,
) -> Result<NextHopTable, GroupError> {
    let all = validate(members)?;
    let members: Vec<Member> = all.iter().copied().filter(|m| m.weight > 0).collect();
    let quota = quotas(&members);
    // Bucket owners as indexes into `members`; FREE until claimed.
    const FREE: u8 = u8::MAX;
    let mut t = NextHopTable {
        member_count: all.len() as u16,
        active_count: members.len() as u16,
        ..Default::default()
    };
    let owner = &mut t.buckets;

    if let Some(prev) = previous {
        // This runs for every group a link event touches, so it works in simple passes over
        // the bytes of the table, which the compiler can vectorise, not bucket by bucket (a
        // per-bucket count of what each member may still keep is a dependency chain through
        // memory). The first pass writes every bucket.
        let n = (prev.active_count as usize).min(MAX_GROUP_MEMBERS);
        // Previous bucket value -> index among the new active members; FREE for a member
        // gone (and for a value out of range). At most 8 of each: a scan, once.
        let mut new_index = [FREE; 256];
        for (slot, ni) in new_index.iter_mut().enumerate().take(n) {
            if let Some(i) = members
                .iter()
                .position(|m| m.nexthop == prev.nexthops[slot])
            {
                *ni = i as u8;
            }
        }
        for (o, &m) in owner.iter_mut().zip(prev.buckets.iter()) {
            *o = new_index[m as usize];
        }
        // A member keeps its first `quota` buckets (in bucket order); a surplus is freed.
        let mut deficit = [0usize; MAX_GROUP_MEMBERS];
        for (i, &q) in quota.iter().enumerate() {
            let me = i as u8;
            let have = owner.iter().filter(|&&o| o == me).count();
            if have > q {
                for o in owner.iter_mut().filter(|o| **o == me).skip(q) {
                    *o = FREE;
                }
            }
            deficit[i] = q.saturating_sub(have);
        }
        // Only the freed buckets move: in bucket order, each member in turn takes as many as
        // it lacks. (Walking Maglev preference lists past the kept buckets cost a multiple of
        // the table per member.) Which free bucket goes to whom does not matter for the
        // split, as flows hash uniformly over the buckets; only the counts do.
        let mut takers = deficit
            .iter()
            .enumerate()
            .flat_map(|(i, &d)| std::iter::repeat_n(i as u8, d));
        for o in owner.iter_mut().filter(|o| **o == FREE) {
            *o = takers.next().unwrap_or(0);
        }
    } else {
        // From scratch: members take turns, each claiming its next preferred free bucket.
        owner.fill(FREE);
        let mut have = [0usize; MAX_GROUP_MEMBERS];
        let mut free = NHG_BUCKETS;
        let mut prefs: Vec<Preference> =
            members.iter().map(|m| Preference::new(m.nexthop)).collect();
        while free > 0 {
            for i in 0..members.len() {
                if have[i] >= quota[i] {
                    continue;
                }
                for b in prefs[i].by_ref() {
                    if owner[b] == FREE {
                        owner[b] = i as u8;
                        have[i] += 1;
                        free -= 1;
                        break;
                    }
                }
            }
        }
    }
    for (i, m) in all.iter().enumerate() {
        t.nexthops[i] = m.nexthop;
        t.paths[i] = m.path;
    }
    debug_assert!(t.buckets.iter().all(|&o| o != FREE));
    Ok(t)
}

/// The next hop a flow hash selects in a table (what the XDP program does, before liveness).
pub fn lookup(table: &NextHopTable, hash: u32) -> u32 {
    let m = table.buckets[(hash % NHG_BUCKETS as u32) as usize] as usize;
    table.nexthops[m % MAX_GROUP_MEMBERS]
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_common::{flow_hash, FlowKey};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn members(w: &[u32]) -> Vec<Member> {
        w.iter()
            .enumerate()
            .map(|(i, &w)| Member {
                nexthop: 10 + i as u32,
                weight: w,
                path: Default::default(),
            })
            .collect()
    }

    fn random_flows(n: usize, seed: u64) -> Vec<FlowKey> {
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|_| {
                let a = next();
                let b = next();
                FlowKey {
                    src: [a as u32, 0, 0, 0],
                    dst: [(a >> 32) as u32, 0, 0, 0],
                    src_port: b as u16,
                    dst_port: (b >> 16) as u16,
                    proto: if b >> 40 & 1 == 0 { 6 } else { 17 },
                }
            })
            .collect()
    }

    fn shares(t: &NextHopTable, flows: &[FlowKey], seed: u32) -> BTreeMap<u32, f64> {
        let mut c: BTreeMap<u32, f64> = BTreeMap::new();
        for f in flows {
            *c.entry(lookup(t, flow_hash(f, seed))).or_default() += 1.0;
        }
        c.values_mut().for_each(|v| *v /= flows.len() as f64);
        c
    }

    #[test]
    fn weighted_split_1_2_3_4_within_one_point() {
        let t = build_table(&members(&[1, 2, 3, 4]), None).unwrap();
        let flows = random_flows(100_000, 7);
        let s = shares(&t, &flows, 0xdead_beef);
        for (i, w) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
            let got = s[&(10 + i as u32)];
            assert!(
                (got - w / 10.0).abs() < 0.01,
                "member {i}: share {got}, want {}",
                w / 10.0
            );
        }
    }

    #[test]
    fn weight_change_moves_only_the_changed_share() {
        let flows = random_flows(100_000, 11);
        let old = build_table(&members(&[1, 2, 3, 4]), None).unwrap();
        // 1:2:3:4 -> 1:2:3:8: member 13's share goes from 40 % to 57.1 %.
        let new = build_table(&members(&[1, 2, 3, 8]), Some(&old)).unwrap();
        let moved = flows
            .iter()
            .filter(|f| lookup(&old, flow_hash(f, 1)) != lookup(&new, flow_hash(f, 1)))
            .count();
        let moved = moved as f64 / flows.len() as f64;
        let changed = 8.0 / 14.0 - 4.0 / 10.0;
        assert!(
            moved <= changed + 0.01,
            "moved {moved}, share changed {changed}"
        );
        let s = shares(&new, &flows, 1);
        assert!((s[&13] - 8.0 / 14.0).abs() < 0.01);
    }

    #[test]
    fn rebuild_from_scratch_is_identical() {
        let a = build_table(&members(&[1, 2, 3, 4]), None).unwrap();
        let mut shuffled = members(&[1, 2, 3, 4]);
        shuffled.reverse();
        let b = build_table(&shuffled, None).unwrap();
        assert_eq!(a, b);
        for f in random_flows(10_000, 3) {
            assert_eq!(lookup(&a, flow_hash(&f, 5)), lookup(&b, flow_hash(&f, 5)));
        }
    }

    #[test]
    fn bad_groups_are_refused() {
        assert_eq!(build_table(&[], None), Err(GroupError::Empty));
        assert_eq!(
            build_table(&members(&[1; 9]), None),
            Err(GroupError::TooManyMembers { got: 9, max: 8 })
        );
        assert_eq!(
            build_table(&members(&[0, 0]), None),
            Err(GroupError::NoActiveMember)
        );
        let dup = [
            Member {
                nexthop: 1,
                weight: 1,
                path: Default::default(),
            },
            Member {
                nexthop: 1,
                weight: 2,
                path: Default::default(),
            },
        ];
        assert_eq!(build_table(&dup, None), Err(GroupError::DuplicateMember(1)));
    }

    #[test]
    fn standbys_get_no_buckets_and_follow_the_actives() {
        let m = [
            Member {
                nexthop: 5,
                weight: 0,
                path: Default::default(),
            },
            Member {
                nexthop: 9,
                weight: 2,
                path: Default::default(),
            },
            Member {
                nexthop: 3,
                weight: 0,
                path: Default::default(),
            },
            Member {
                nexthop: 7,
                weight: 1,
                path: Default::default(),
            },
        ];
        let t = build_table(&m, None).unwrap();
        assert_eq!((t.member_count, t.active_count), (4, 2));
        assert_eq!(&t.nexthops[..4], &[7, 9, 3, 5]);
        assert!(t.buckets.iter().all(|&b| b < 2));
        assert_eq!(t.buckets.iter().filter(|&&b| b == 1).count(), 681);
    }

    proptest! {
        #[test]
        fn counts_match_quotas_and_incremental_moves_are_minimal(
            w1 in proptest::collection::vec(1u32..100, 1..=8),
            w2 in proptest::collection::vec(1u32..100, 1..=8),
        ) {
            let m1 = members(&w1);
            let m2 = members(&w2);
            let t1 = build_table(&m1, None).unwrap();
            let t2 = build_table(&m2, Some(&t1)).unwrap();
            let q2 = quotas(&m2);
            for (i, q) in q2.iter().enumerate() {
                prop_assert_eq!(t2.buckets.iter().filter(|&&b| b as usize == i).count(), *q);
            }
            // Minimal disruption: a bucket moves only if its old owner lost quota or left.
            let q1 = quotas(&m1);
            let must_move: usize = m1.iter().enumerate().map(|(i, m)| {
                match m2.iter().position(|n| n.nexthop == m.nexthop) {
                    Some(j) => q1[i].saturating_sub(q2[j]),
                    None => q1[i],
                }
            }).sum();
            let moved = (0..NHG_BUCKETS).filter(|&b| {
                t1.nexthops[t1.buckets[b] as usize] != t2.nexthops[t2.buckets[b] as usize]
            }).count();
            prop_assert_eq!(moved, must_move);
        }
    }
}
