//! Conformance tests of the state owner, in the style of holo's: recorded input sequences
//! (`tests/fixtures/replay/*.json`, format in `fixture/mod.rs`) go into a state owner whose
//! fast path is the in-memory model ([`MemoryFastPath`]); the programmed maps, the plans and
//! the route history must be what the fixture says. No root, no kernel, stable Rust.
//! `dwcp-lab/tests/replay.rs` replays the same fixtures on the kernel's maps.

mod fixture;

use dwcp_control::{
    config::Mac, fast_path::MemoryFastPath, plan::standby_supported, replay::replay, AgentState,
    Now,
};

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
    let interfaces = fixture::interfaces(name);
    let loaded = fixture::load(name, |i| interface_of(&interfaces, i));
    let mut state =
        AgentState::new(loaded.config, MemoryFastPath::default(), Now::at_ms(0)).unwrap();
    let errors = replay(&mut state, &loaded.inputs, loaded.fx.until_ms);
    fixture::check(
        name,
        &state,
        &loaded.fx.expect,
        &errors,
        standby_supported(),
        &loaded.ifindexes,
    );
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
