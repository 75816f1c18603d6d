//! Pinned maps: created under a bpffs directory, printed by `bpftool` with field names (BTF),
//! and re-used by a second load (what a restarted agent sees).

use std::path::PathBuf;

use dwcp_agent::dataplane::{unpin_all, Dataplane, Member, Pinning};
use dwcp_common::{maps::names, NextHop, NH_F_VALID};

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
