//! Which links to probe, read from what the agent programmed: every valid next hop whose link
//! is monitored names the link's underlay endpoints (`local_ip4` -> `remote_ip4` on
//! `ifindex`). The prober therefore needs no configuration of its own and follows the agent's
//! changes, also those made by an agent that has since stopped. Each link's key comes from
//! `PROBE_KEYS` (made there by the first sender that probes the link).

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use dwcp_common::{
    probe::ProbeKey, LinkConfig, NextHop, LINK_F_AUTH, LINK_F_MONITORED, NH_F_VALID,
};

use crate::probe::ProbeLink;

/// A next hop that cannot give its link a probe path. The link is skipped (or keeps the
/// endpoints of the first next hop), the others are probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanProblem {
    /// The next hop's underlay interface does not exist in this network namespace.
    NoInterface {
        nexthop: u32,
        link_id: u32,
        ifindex: u32,
    },
    /// Two next hops on one link disagree about its endpoints; the lower next hop id wins.
    ConflictingEndpoints {
        link_id: u32,
        kept_nexthop: u32,
        ignored_nexthop: u32,
    },
    /// A zero local or remote address: nothing to probe from or to.
    NoAddress { nexthop: u32, link_id: u32 },
    /// The link's probe key can neither be read nor made.
    NoKey { link_id: u32, detail: String },
}

impl fmt::Display for ScanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanProblem::NoInterface {
                nexthop,
                link_id,
                ifindex,
            } => write!(
                f,
                "next hop {nexthop} (link {link_id}): interface {ifindex} does not exist here"
            ),
            ScanProblem::ConflictingEndpoints {
                link_id,
                kept_nexthop,
                ignored_nexthop,
            } => write!(
                f,
                "link {link_id}: next hop {ignored_nexthop} names other underlay endpoints than next hop {kept_nexthop}; probing those of {kept_nexthop}"
            ),
            ScanProblem::NoAddress { nexthop, link_id } => write!(
                f,
                "next hop {nexthop} (link {link_id}): no local or remote underlay address"
            ),
            ScanProblem::NoKey { link_id, detail } => {
                write!(f, "link {link_id}: no probe key: {detail}")
            }
        }
    }
}

/// The links to probe (by link id) and what was wrong with the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkScan {
    pub links: BTreeMap<u32, ProbeLink>,
    pub problems: Vec<ScanProblem>,
}

/// Derives the probe links from `(next hop id, next hop)` pairs. `link_config` gives a link's
/// `LINK_CONFIG` entry, `ifname` an interface's name in this namespace, `key` a link's probe
/// key.
pub fn scan_links<E: fmt::Display>(
    nexthops: impl IntoIterator<Item = (u32, NextHop)>,
    link_config: impl Fn(u32) -> Option<LinkConfig>,
    ifname: impl Fn(u32) -> Option<String>,
    mut key: impl FnMut(u32) -> Result<ProbeKey, E>,
) -> LinkScan {
    let mut scan = LinkScan::default();
    // Link id -> the next hop whose endpoints it got.
    let mut source: BTreeMap<u32, (u32, NextHop)> = BTreeMap::new();
    let mut sorted: Vec<(u32, NextHop)> = nexthops.into_iter().collect();
    sorted.sort_by_key(|(id, _)| *id);
    for (id, nh) in sorted {
        if nh.flags & NH_F_VALID == 0 {
            continue;
        }
        let Some(cfg) = link_config(nh.link_id).filter(|c| c.flags & LINK_F_MONITORED != 0) else {
            continue;
        };
        if let Some((kept, first)) = source.get(&nh.link_id) {
            let same = first.ifindex == nh.ifindex
                && first.local_ip4 == nh.local_ip4
                && first.remote_ip4 == nh.remote_ip4;
            if !same {
                scan.problems.push(ScanProblem::ConflictingEndpoints {
                    link_id: nh.link_id,
                    kept_nexthop: *kept,
                    ignored_nexthop: id,
                });
            }
            continue;
        }
        let (local, remote) = (Ipv4Addr::from(nh.local_ip4), Ipv4Addr::from(nh.remote_ip4));
        if local.is_unspecified() || remote.is_unspecified() {
            scan.problems.push(ScanProblem::NoAddress {
                nexthop: id,
                link_id: nh.link_id,
            });
            continue;
        }
        let Some(device) = ifname(nh.ifindex) else {
            scan.problems.push(ScanProblem::NoInterface {
                nexthop: id,
                link_id: nh.link_id,
                ifindex: nh.ifindex,
            });
            continue;
        };
        source.insert(nh.link_id, (id, nh));
        let key = match key(nh.link_id) {
            Ok(k) => k,
            Err(e) => {
                scan.problems.push(ScanProblem::NoKey {
                    link_id: nh.link_id,
                    detail: e.to_string(),
                });
                continue;
            }
        };
        scan.links.insert(
            nh.link_id,
            ProbeLink {
                link_id: nh.link_id,
                local: local.into(),
                remote: remote.into(),
                device: Some(device),
                key,
                auth: (cfg.flags & LINK_F_AUTH != 0).then_some(cfg.auth_key),
            },
        );
    }
    scan
}

/// The name of interface `ifindex` in the calling thread's network namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE long, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwcp_common::LINK_F_ADMIN_DOWN;

    fn nh(link_id: u32, ifindex: u32, local: [u8; 4], remote: [u8; 4]) -> NextHop {
        NextHop {
            flags: NH_F_VALID,
            link_id,
            ifindex,
            vni: 100 + link_id,
            local_ip4: local,
            remote_ip4: remote,
            via_ip4: remote,
            mtu: 1600,
            ..Default::default()
        }
    }

    fn monitored(_: u32) -> Option<LinkConfig> {
        Some(LinkConfig {
            flags: LINK_F_MONITORED,
            up_after: 5,
            detect_ns: 30_000_000,
            ..Default::default()
        })
    }

    /// Link n's key is (n, n); link 9 has none.
    fn keys(link: u32) -> Result<ProbeKey, String> {
        if link == 9 {
            return Err("no space left".into());
        }
        Ok(ProbeKey {
            k0: link.into(),
            k1: link.into(),
        })
    }

    fn names(i: u32) -> Option<String> {
        (i < 10).then(|| format!("ul{i}"))
    }

    #[test]
    fn monitored_valid_next_hops_give_one_probe_link_per_link() {
        let hops = vec![
            (2, nh(2, 4, [172, 31, 2, 1], [172, 31, 2, 2])),
            (1, nh(1, 3, [172, 31, 1, 1], [172, 31, 1, 2])),
            // A second VNI over link 1, same endpoints: no second probe stream.
            (7, nh(1, 3, [172, 31, 1, 1], [172, 31, 1, 2])),
            // Invalid: skipped.
            (
                8,
                NextHop {
                    flags: 0,
                    ..nh(5, 3, [1, 1, 1, 1], [2, 2, 2, 2])
                },
            ),
        ];
        let scan = scan_links(hops, monitored, names, keys);
        assert_eq!(scan.problems, vec![]);
        assert_eq!(scan.links.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            scan.links[&1],
            ProbeLink {
                link_id: 1,
                local: "172.31.1.1".parse().unwrap(),
                remote: "172.31.1.2".parse().unwrap(),
                device: Some("ul3".into()),
                key: ProbeKey { k0: 1, k1: 1 },
                auth: None,
            }
        );
    }

    /// A link whose `LINK_CONFIG` has a shared key is probed with it (the prober has no
    /// configuration of its own); the others without.
    #[test]
    fn the_shared_key_comes_from_the_link_config() {
        let hops = vec![
            (1, nh(1, 3, [10, 0, 0, 1], [10, 0, 0, 2])),
            (2, nh(2, 3, [10, 0, 1, 1], [10, 0, 1, 2])),
        ];
        let auth = ProbeKey { k0: 7, k1: 8 };
        let cfg = |l: u32| {
            monitored(l).map(|c| match l {
                2 => LinkConfig {
                    flags: c.flags | LINK_F_AUTH,
                    auth_key: auth,
                    ..c
                },
                _ => c,
            })
        };
        let scan = scan_links(hops, cfg, names, keys);
        assert_eq!(scan.links[&1].auth, None);
        assert_eq!(scan.links[&2].auth, Some(auth));
    }

    #[test]
    fn unmonitored_links_are_not_probed_admin_down_ones_are() {
        let hops = vec![
            (1, nh(1, 3, [10, 0, 0, 1], [10, 0, 0, 2])),
            (2, nh(2, 3, [10, 0, 1, 1], [10, 0, 1, 2])),
            (3, nh(3, 3, [10, 0, 2, 1], [10, 0, 2, 2])),
        ];
        let cfg = |l: u32| match l {
            1 => None,
            2 => Some(LinkConfig::default()),
            // Administratively down but monitored: probing tells whether it could come back.
            _ => Some(LinkConfig {
                flags: LINK_F_MONITORED | LINK_F_ADMIN_DOWN,
                ..Default::default()
            }),
        };
        let scan = scan_links(hops, cfg, names, keys);
        assert_eq!(scan.links.keys().copied().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn problems_name_the_next_hop_and_the_link_and_the_rest_is_probed() {
        let hops = vec![
            (1, nh(1, 3, [10, 0, 0, 1], [10, 0, 0, 2])),
            (2, nh(1, 4, [10, 0, 9, 1], [10, 0, 9, 2])),
            (3, nh(3, 42, [10, 0, 2, 1], [10, 0, 2, 2])),
            (4, nh(4, 3, [0, 0, 0, 0], [10, 0, 2, 2])),
            (9, nh(9, 3, [10, 0, 9, 1], [10, 0, 9, 2])),
        ];
        let scan = scan_links(hops, monitored, names, keys);
        assert_eq!(scan.links.keys().copied().collect::<Vec<_>>(), [1]);
        let text: Vec<String> = scan.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            text,
            [
                "link 1: next hop 2 names other underlay endpoints than next hop 1; probing those of 1",
                "next hop 3 (link 3): interface 42 does not exist here",
                "next hop 4 (link 4): no local or remote underlay address",
                "link 9: no probe key: no space left",
            ]
        );
    }

    #[test]
    fn loopback_has_a_name_and_a_bogus_index_has_none() {
        // Index 1 is loopback in every network namespace.
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
        assert_eq!(interface_name(u32::MAX), None);
    }
}
