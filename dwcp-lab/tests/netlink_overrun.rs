//! The agent's rtnetlink subscription overruns (the kernel drops notifications and the next
//! read fails with ENOBUFS) while a neighbour changes its MAC and another is deleted: the
//! watcher dumps again, and what it forwards ends with the neighbours as they are, never with
//! the old MAC.
//!
//! In a network namespace: a veth interface with two neighbours, a subscription with a
//! receive buffer of a few kilobytes, and a runtime kept from reading it while `ip -batch`
//! makes 6,000 neighbour changes, the two that matter in the middle.

use std::{net::Ipv4Addr, time::Duration};

use dwcp_agent::agent::netlink::NetlinkWatcher;
use dwcp_control::{config::Mac, input::Input};
use dwcp_lab::netlab::Netns;

/// The last thing forwarded about neighbour `ip`: its MAC, or None once withdrawn.
fn last_mac(inputs: &[Input], ip: Ipv4Addr) -> Option<Option<Mac>> {
    inputs.iter().rev().find_map(|i| match i {
        Input::Neighbour { ip: at, mac, .. } if *at == ip => Some(*mac),
        _ => None,
    })
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root and network namespaces (--features dwcp-lab/privileged)"
)]
fn an_overrun_is_followed_by_a_dump_and_no_neighbour_change_is_missed() {
    let ns = Netns::new("nlo").unwrap();
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .unwrap();
    ns.ip(&["link", "set", "d0", "up"]).unwrap();
    ns.ip(&["link", "set", "d1", "up"]).unwrap();
    ns.ip(&["addr", "add", "10.9.0.1/16", "dev", "d0"]).unwrap();
    let moved: Ipv4Addr = "10.9.0.2".parse().unwrap();
    let deleted: Ipv4Addr = "10.9.0.3".parse().unwrap();
    for ip in [moved, deleted] {
        ns.ip(&[
            "neigh",
            "add",
            &ip.to_string(),
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "d0",
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    let flood = |from: u32| {
        (from..from + 3000)
            .map(|i| {
                format!(
                    "neigh replace 10.9.{}.{} lladdr 02:00:00:00:01:01 dev d0 nud permanent\n",
                    1 + i / 200,
                    10 + i % 200
                )
            })
            .collect::<String>()
    };
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("changes");
    std::fs::write(
        &batch,
        format!(
            "{}neigh replace {moved} lladdr 02:00:00:00:00:09 dev d0 nud permanent\n\
             neigh del {deleted} dev d0\n{}",
            flood(0),
            flood(3000)
        ),
    )
    .unwrap();

    // The last neighbour of the flood: most notifications of the flood are dropped, so it is
    // known with its MAC only from the dump.
    let last: Ipv4Addr = format!("10.9.{}.{}", 1 + 5999 / 200, 10 + 5999 % 200)
        .parse()
        .unwrap();
    let settled = |got: &[Input]| {
        last_mac(got, moved) == Some(Some(Mac([2, 0, 0, 0, 0, 9])))
            && last_mac(got, deleted) == Some(None)
            && last_mac(got, last) == Some(Some(Mac([2, 0, 0, 0, 1, 1])))
    };
    ns.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut watcher = NetlinkWatcher::subscribe(4096).unwrap();
            let initial = watcher.dump().await.unwrap();
            assert_eq!(
                last_mac(&initial, moved),
                Some(Some(Mac([2, 0, 0, 0, 0, 1])))
            );
            // Blocking the only runtime thread: nothing reads the subscription meanwhile, so
            // its few kilobytes of buffer overrun.
            ns.ip(&["-batch", batch.to_str().unwrap()]).unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
            tokio::spawn(watcher.run(tx));
            let mut got = initial;
            let waited = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(input) = rx.recv().await {
                    got.push(input);
                    if settled(&got) {
                        break;
                    }
                }
            })
            .await;
            assert!(
                waited.is_ok(),
                "moved: {:?}, deleted: {:?}, last: {:?}",
                last_mac(&got, moved),
                last_mac(&got, deleted),
                last_mac(&got, last)
            );
        })
    })
    .unwrap();
}
