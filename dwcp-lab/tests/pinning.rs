//! Pinned maps: created under a bpffs directory, printed by `bpftool` with field names (BTF),
//! and re-used by a second load (what a restarted agent sees).

use std::path::PathBuf;

use dwcp_common::{maps::names, NextHop, NH_F_VALID};
use dwcp_dataplane::pin_mismatches;
use dwcp_dataplane::unpin_all;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Member;
use dwcp_dataplane::Pinning;
use dwcp_lab::map_in_map::MapInMap;

/// A pin directory unique to this test run, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> PinDir {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/dwcp-test-{}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = unpin_all(&self.0);
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn maps_are_pinned_with_btf_and_reused_by_the_next_load() {
    let dir = PinDir::new();
    let nh = NextHop {
        flags: NH_F_VALID,
        link_id: 3,
        ifindex: 1,
        vni: 4242,
        mtu: 1600,
        ..Default::default()
    };
    {
        let mut dp = Dataplane::load(Pinning::Dir(dir.0.clone())).unwrap();
        dp.set_nexthop(9, nh).unwrap();
        dp.set_group(
            5,
            &[Member {
                nexthop: 9,
                weight: 1,
                path: Default::default(),
            }],
        )
        .unwrap();
    }
    for name in names::ALL {
        assert!(dir.0.join(name).exists(), "{name} pinned");
    }
    // bpftool decodes the value with its field names from BTF.
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(dir.0.join(names::NEXTHOPS))
        .args(["key", "9", "0", "0", "0"])
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let formatted = &json["formatted"]["value"];
    assert_eq!(formatted["vni"], 4242, "bpftool output: {json}");
    assert_eq!(formatted["link_id"], 3);

    // A second load (an agent restart) finds what the first one programmed.
    let dp = Dataplane::load(Pinning::Dir(dir.0.clone())).unwrap();
    assert_eq!(dp.nexthop(9).unwrap(), nh);
    let table = dp.group_table(5).unwrap().expect("group 5 survives");
    assert_eq!(table.nexthops[0], 9);
}

/// A pin directory of its own per test (several tests of this file run in parallel).
fn pin_dir(test: &str) -> PinDir {
    PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/dwcp-test-{test}-{}",
        std::process::id()
    )))
}

fn one_member(nexthop: u32) -> [Member; 1] {
    [Member {
        nexthop,
        weight: 1,
        path: Default::default(),
    }]
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_restart_reads_the_table_of_the_slot_in_force() {
    let dir = pin_dir("slots");
    let (first, second) = {
        let mut dp = Dataplane::load(Pinning::Dir(dir.0.clone())).unwrap();
        let a = dp.set_group(5, &one_member(1)).unwrap();
        let b = dp.set_group(5, &one_member(2)).unwrap();
        // Two flips: slot 0 is in force again, slot 1 still holds the first table.
        assert_eq!(dp.active_slot(5).unwrap(), 0);
        (a, b)
    };
    assert_ne!(first, second);
    let dp = Dataplane::load(Pinning::Dir(dir.0.clone())).unwrap();
    assert_eq!(dp.active_slot(5).unwrap(), 0);
    assert_eq!(dp.group_table(5).unwrap(), Some(second));
    assert_eq!(dp.group_tables().unwrap(), vec![(5, second)]);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn pins_of_the_map_in_map_layout_are_refused_with_a_clear_error() {
    let dir = pin_dir("oldpins");
    std::fs::create_dir_all(&dir.0).unwrap();
    // What an agent from before double-buffered group tables left pinned.
    let old = MapInMap::create(dwcp_common::MAX_GROUPS).unwrap();
    old.pin(&dir.0.join(names::NH_GROUPS)).unwrap();
    drop(old);
    let err = match Dataplane::load(Pinning::Dir(dir.0.clone())) {
        Ok(_) => panic!("old pins were adopted"),
        Err(e) => e,
    };
    let msg = err.to_string();
    for needle in [
        "NH_GROUPS is pinned as array of maps",
        "this object defines array, key 4 B",
        "incompatible version",
        "dwcp-agent --remove",
    ] {
        assert!(msg.contains(needle), "no {needle:?} in: {msg}");
    }
    // Nothing was pinned or changed by the refused load.
    assert!(!dir.0.join(names::NH_ACTIVE).exists());
    let m = pin_mismatches(dwcp_dataplane::EBPF_OBJECT, &dir.0);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].map, names::NH_GROUPS);
}

/// The daemon refuses the old layout at start with the same message, before it attaches or
/// changes anything.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn the_agent_refuses_pins_of_the_map_in_map_layout_at_start() {
    let dir = pin_dir("oldpins-agent");
    std::fs::create_dir_all(&dir.0).unwrap();
    let old = MapInMap::create(dwcp_common::MAX_GROUPS).unwrap();
    old.pin(&dir.0.join(names::NH_GROUPS)).unwrap();
    drop(old);
    let ns = dwcp_lab::netlab::Netns::new("oldpins-agent").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[gateway]
name = "gw-use1-a"
region = "us-east-1"
lan_interfaces = ["lan0"]
pin_dir = "{}"

[[local_link]]
link = "use1-euw1"
interface = "ul1"
local_ip = "172.31.1.1"
peer_ip = "172.31.1.2"

[[prefixes]]
region = "eu-west-1"
prefixes = ["10.2.0.0/16"]

{}"#,
        dir.0.display(),
        include_str!("../../tests/fixtures/three_regions.toml")
    );
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(dwcp_lab::bin("dwcp-agent"))
        .arg("--config")
        .arg(&path)
        .args(["--netns", ns.name()])
        .arg("--state-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    for needle in [
        "NH_GROUPS is pinned as array of maps",
        "incompatible version",
        "dwcp-agent --remove",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    assert!(!dir.0.join(names::NH_ACTIVE).exists());
}
