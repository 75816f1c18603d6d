//! Conformance tests of the state owner, in the style of holo's: recorded input sequences
//! (`tests/fixtures/replay/*.json`) go into a state owner whose fast path is the in-memory
//! model ([`MemoryFastPath`]); the programmed maps, the plans and the route history must be
//! what the fixture says. No root, no kernel, stable Rust. `dwcp-lab/tests/replay.rs` replays
//! the same fixtures on the kernel's maps and checks that they end up as the model says.
//!
//! Fixture format:
//! ```json
//! { "config": "gateway_a.toml", "interfaces": ["lan0", "ul1"],
//!   "neighbours": [{"interface": "ul1", "ip": "172.31.1.2", "mac": "02:00:00:00:01:02"}],
//!   "events": [{"at_ms": 0, "kind": "link_up", "link": 1}, ...],
//!   "until_ms": 10000,
//!   "expect": { "groups": {"eu-west-1": {"active": [1], "standby": [3]}},
//!               "history": [{"destination": "eu-west-1", "before": [], "after": [[1]],
//!                            "reason": "agent started"}] } }
//! ```
//! `$ifindex(name)` stands for the index of interface `name` (numbered from 2 in the order of
//! `interfaces`, as in a fresh network namespace).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use dwcp_common::NHG_BUCKETS;
use dwcp_control::config::AgentConfig;
use dwcp_control::config::Mac;
use dwcp_control::fast_path::MemoryFastPath;
use dwcp_control::plan::standby_supported;
use dwcp_control::replay::replay;
use dwcp_control::AgentState;
use dwcp_control::Input;
use dwcp_control::Now;
use dwcp_control::TimedInput;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[allow(dead_code)]
    description: String,
    config: String,
    interfaces: Vec<String>,
    #[serde(default)]
    neighbours: Vec<NeighbourFixture>,
    /// Inline events, or a file of JSON lines (as `dwcp-agent --record` writes).
    #[serde(default)]
    events: Vec<TimedInput>,
    #[serde(default)]
    events_file: Option<String>,
    until_ms: u64,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NeighbourFixture {
    interface: String,
    ip: Ipv4Addr,
    mac: Mac,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Destination -> the links of its group: active (with buckets) and standby.
    groups: BTreeMap<String, ExpectGroup>,
    /// Destinations without a route.
    #[serde(default)]
    unrouted: Vec<String>,
    /// The whole history, in order; `null` = check only `history_last`.
    #[serde(default)]
    history: Option<Vec<ExpectChange>>,
    /// The last entries of the history.
    #[serde(default)]
    history_last: Vec<ExpectChange>,
    #[serde(default)]
    max_computations: Option<u64>,
    /// Errors the inputs must produce (substrings), in order.
    #[serde(default)]
    errors: Vec<String>,
    /// Link id -> flags of its LINK_CONFIG entry.
    #[serde(default)]
    link_flags: BTreeMap<u32, u32>,
    /// Underlay interface -> MAC of the peer in NEIGHBOURS.
    #[serde(default)]
    neighbours: BTreeMap<String, Mac>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExpectGroup {
    active: Vec<u32>,
    #[serde(default)]
    standby: Vec<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExpectChange {
    destination: String,
    before: Vec<Vec<u32>>,
    after: Vec<Vec<u32>>,
    /// A substring of the recorded reason.
    reason: String,
    #[serde(default)]
    at_ms: Option<u64>,
    #[serde(default)]
    after_weights: Option<Vec<u32>>,
}

/// Replaces every `$ifindex(name)` in `text` with `f(name)`.
fn substitute(text: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("$ifindex(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "$ifindex(".len()..];
        let end = after.find(')').expect("$ifindex( closed");
        out.push_str(&f(&after[..end]));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay")
}

/// Interfaces as a namespace would number them: index 2 onwards in the fixture's order (1 is
/// the loopback), each with a MAC that names its index.
fn interface_of(interfaces: &[String], name: &str) -> (u32, Mac) {
    let i = interfaces
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("interface {name} is not in the fixture's interfaces"));
    let ifindex = 2 + i as u32;
    (ifindex, Mac([0x02, 0, 0, 0, 0x10, ifindex as u8]))
}

/// Runs fixture `name` on the in-memory fast path and checks its expectations.
fn run(name: &str) {
    let dir = fixtures();
    let raw = std::fs::read_to_string(dir.join(name)).unwrap();
    let interfaces: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&substitute(&raw, |_| "0".into()))
            .ok()
            .and_then(|v| serde_json::from_value(v["interfaces"].clone()).ok())
            .unwrap_or_default();
    let resolve = |name: &str| interface_of(&interfaces, name);
    let text = substitute(&raw, |i| resolve(i).0.to_string());
    let fx: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = AgentConfig::load(&dir.join(&fx.config)).unwrap();
    let mut events = fx.events.clone();
    if let Some(file) = &fx.events_file {
        let lines = std::fs::read_to_string(dir.join(file)).unwrap();
        for (i, l) in lines.lines().enumerate() {
            if !l.trim().is_empty() {
                events.push(
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{file}:{}: {e}", i + 1)),
                );
            }
        }
    }
    events.sort_by_key(|e| e.at_ms);
    // The dump the daemon would take at start, then the recorded events.
    let mut inputs: Vec<TimedInput> = Vec::new();
    for i in &fx.interfaces {
        let (ifindex, mac) = resolve(i);
        inputs.push(TimedInput {
            at_ms: 0,
            input: Input::Interface {
                name: i.clone(),
                ifindex,
                up: true,
                mac,
                mtu: Some(1500),
            },
        });
    }
    for l in &config.local_links {
        inputs.push(TimedInput {
            at_ms: 0,
            input: Input::Address {
                ifindex: resolve(&l.interface).0,
                ip: l.local_ip.into(),
                present: true,
            },
        });
    }
    for n in &fx.neighbours {
        inputs.push(TimedInput {
            at_ms: 0,
            input: Input::Neighbour {
                ifindex: resolve(&n.interface).0,
                ip: n.ip,
                mac: Some(n.mac),
            },
        });
    }
    for mut e in events {
        match &mut e.input {
            Input::Interface {
                name, ifindex, mac, ..
            } if *ifindex == 0 => {
                let (i, m) = resolve(name);
                *ifindex = i;
                *mac = m;
            }
            Input::Reload { path } => *path = dir.join(&*path),
            _ => {}
        }
        inputs.push(e);
    }

    let ifindexes: BTreeMap<String, u32> = fx
        .interfaces
        .iter()
        .map(|i| (i.clone(), resolve(i).0))
        .collect();
    let mut state = AgentState::new(config, MemoryFastPath::default(), Now::at_ms(0)).unwrap();
    let errors = replay(&mut state, &inputs, fx.until_ms);
    check(
        name,
        &state,
        &fx.expect,
        &errors,
        standby_supported(),
        &ifindexes,
    );
}

fn check(
    name: &str,
    state: &AgentState<MemoryFastPath>,
    expect: &Expect,
    errors: &[(u64, String)],
    standby: bool,
    ifindexes: &BTreeMap<String, u32>,
) {
    // Shown when the test fails (cargo prints a failing test's output).
    let history: Vec<_> = state.history().cloned().collect();
    let render = |h: &[dwcp_control::view::RouteChange]| {
        h.iter()
            .map(|c| {
                format!(
                    "  +{} ms {}: {:?} -> {:?}: {}",
                    c.at_unix_ms - Now::at_ms(0).unix_ms,
                    c.destination,
                    c.before,
                    c.after,
                    c.reason
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!("{name}: history\n{}", render(&history));
    for p in state.plans().values() {
        eprintln!(
            "{name}: {} group {} members {:?} error {:?}",
            p.destination, p.group_id, p.members, p.error
        );
    }
    // The agent's belief is what the kernel holds.
    let kernel = state.read_back().unwrap();
    assert_eq!(
        &kernel,
        state.programmed(),
        "{name}: maps differ from what the agent believes"
    );

    // Groups and routes, by destination.
    let plans = state.plans();
    for (dest, want) in &expect.groups {
        let plan = plans
            .get(dest)
            .unwrap_or_else(|| panic!("{name}: no plan for {dest}"));
        let table = kernel
            .groups
            .get(&plan.group_id)
            .unwrap_or_else(|| panic!("{name}: group {} of {dest} not programmed", plan.group_id));
        let n = table.member_count as usize;
        let mut active = Vec::new();
        let mut standby_members = Vec::new();
        for (i, nh) in table.nexthops[..n].iter().enumerate() {
            let buckets = table.buckets.iter().filter(|&&b| b as usize == i).count();
            if buckets > 0 {
                active.push(*nh);
            } else {
                standby_members.push(*nh);
            }
        }
        assert_eq!(
            table.buckets.len(),
            NHG_BUCKETS,
            "{name}: {dest} bucket table"
        );
        active.sort();
        let mut want_active = want.active.clone();
        want_active.sort();
        assert_eq!(active, want_active, "{name}: active members of {dest}");
        let want_standby: Vec<u32> = if standby {
            want.standby.clone()
        } else {
            vec![]
        };
        assert_eq!(
            standby_members, want_standby,
            "{name}: standby members of {dest}"
        );
        // Every prefix of the destination points at its group.
        let prefixes = &state.config().prefixes[dest].prefixes;
        for p in prefixes {
            let r = kernel
                .routes
                .get(p)
                .unwrap_or_else(|| panic!("{name}: no route for {p}"));
            assert_eq!(r.group_id, plan.group_id, "{name}: route {p}");
        }
    }
    for dest in &expect.unrouted {
        for p in &state.config().prefixes[dest].prefixes {
            assert!(
                !kernel.routes.contains_key(p),
                "{name}: {p} of {dest} is still routed"
            );
        }
    }
    for (iface, mac) in &expect.neighbours {
        let link = state
            .config()
            .local_links
            .iter()
            .find(|l| &l.interface == iface)
            .unwrap();
        let n = kernel
            .neighbours
            .get(&(ifindexes[iface], link.via_ip.octets()))
            .unwrap_or_else(|| panic!("{name}: no neighbour on {iface}"));
        assert_eq!(n.mac, mac.0, "{name}: neighbour MAC on {iface}");
        assert_ne!(n.if_mac, [0; 6], "{name}: our MAC on {iface}");
    }
    // Nothing routed that the fixture does not name.
    let expected_prefixes: usize = expect
        .groups
        .keys()
        .map(|d| state.config().prefixes[d].prefixes.len())
        .sum();
    assert_eq!(
        kernel.routes.len(),
        expected_prefixes,
        "{name}: route count"
    );
    for (link, flags) in &expect.link_flags {
        assert_eq!(
            kernel.links.get(link).map(|c| c.flags),
            Some(*flags),
            "{name}: flags of link {link}"
        );
    }

    let matches = |got: &dwcp_control::view::RouteChange, want: &ExpectChange| {
        got.destination == want.destination
            && got.before == want.before
            && got.after == want.after
            && got.reason.contains(&want.reason)
            && want
                .at_ms
                .is_none_or(|t| got.at_unix_ms == Now::at_ms(t).unix_ms)
            && want
                .after_weights
                .as_ref()
                .is_none_or(|w| *w == got.after_weights)
    };
    if let Some(want) = &expect.history {
        assert_eq!(
            history.len(),
            want.len(),
            "{name}: history\n{}",
            render(&history)
        );
        for (g, w) in history.iter().zip(want) {
            assert!(
                matches(g, w),
                "{name}: history entry {w:?} not matched; history:\n{}",
                render(&history)
            );
        }
    }
    if !expect.history_last.is_empty() {
        let tail = &history[history.len().saturating_sub(expect.history_last.len())..];
        for (g, w) in tail.iter().zip(&expect.history_last) {
            assert!(
                matches(g, w),
                "{name}: last history entries: {w:?} not matched:\n{}",
                render(tail)
            );
        }
    }
    if let Some(max) = expect.max_computations {
        assert!(
            state.computations() <= max,
            "{name}: {} computations, at most {max} expected",
            state.computations()
        );
    }
    assert_eq!(
        errors.len(),
        expect.errors.len(),
        "{name}: input errors {errors:?}"
    );
    for ((_, got), want) in errors.iter().zip(&expect.errors) {
        assert!(got.contains(want), "{name}: error {got:?} lacks {want:?}");
    }
}

#[test]
fn link_failure_and_recovery() {
    run("link_failure_and_recovery.json");
}

#[test]
fn a_storm_of_1000_flaps_ends_in_the_right_state() {
    run("storm.json");
}

#[test]
fn region_health_admin_down_and_interface_events() {
    run("region_and_admin.json");
}

#[test]
fn config_reload_applies_and_a_bad_one_changes_nothing() {
    run("reload.json");
}

#[test]
fn reservations_move_the_split() {
    run("reservations.json");
}
