//! Conformance tests of the state owner, in the style of holo's: recorded input sequences
//! (`tests/fixtures/replay/*.json`, format in `fixture/mod.rs`) go into a state owner whose
//! fast path is the in-memory model ([`MemoryFastPath`]); the programmed maps, the plans and
//! the route history must be what the fixture says. No root, no kernel, stable Rust.
//! `dwcp-lab/tests/replay.rs` replays the same fixtures on the kernel's maps.

mod fixture;

use dwcp_control::{
    bandwidth::{BandwidthError, ReservationEvent, ReservationId, ReservationOp, ReservationReply},
    config::{AgentConfig, Mac},
    fast_path::MemoryFastPath,
    plan::standby_supported,
    replay::replay,
    store::PublishedTopology,
    view::{AgentEvent, ReservationsView},
    AgentState, Input, Now, TimedInput,
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
    let mut state = fixture::state(loaded.config, MemoryFastPath::default());
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

#[test]
fn a_reservation_created_by_an_operation_weighs_on_its_link() {
    run("reservation_policer.json");
}

/// Reservations belong to the state owner: an operation is stored and answered, and its change
/// published (event, snapshot); the state says when the next start or end is due, and the
/// clock input at that time activates or expires the reservation. Without a store it keeps
/// none.
#[test]
fn reservations_follow_their_operations_and_the_clock() {
    const T: u64 = 1_700_000_000;
    let config = AgentConfig::load(&fixture::dir().join("gateway_a.toml")).unwrap();
    let mut state = fixture::state(config.clone(), MemoryFastPath::default());
    let shown = |s: &AgentState<MemoryFastPath>| -> ReservationsView {
        (**s.snapshot().reservations.as_ref().unwrap()).clone()
    };
    // As a recording keeps it.
    let line = format!(
        r#"{{"at_ms": 1000, "kind": "reservation", "now_unix_s": {T}, "op": {{"create": {{
            "owner": "backup", "source": "us-east-1", "destination": "ap-south-1",
            "class": "bulk", "rate": "100M", "start": {}, "end": {}, "path": [3]}}}}}}"#,
        T + 10,
        T + 20
    );
    let recorded: TimedInput = serde_json::from_str(&line).unwrap();
    let Input::Reservation { op, .. } = &recorded.input else {
        panic!("{recorded:?}")
    };
    let reply = state.on_reservation(op, T, Now::at_ms(1_000)).unwrap();
    assert!(matches!(reply, ReservationReply::Admitted(ref a) if a.reservation.start == T + 10));
    assert_eq!((shown(&state).stored.len(), shown(&state).active), (1, 0));
    assert_eq!(state.next_reservation_change(), Some(T + 10));
    let events: Vec<AgentEvent> = state.take_events().collect();
    assert!(
        matches!(
            events[..],
            [AgentEvent::Reservation(ReservationEvent::Created { .. })]
        ),
        "{events:?}"
    );

    state
        .handle(Input::Clock { now_unix_s: T + 10 }, Now::at_ms(2_000))
        .unwrap();
    assert_eq!(shown(&state).active, 1);
    assert_eq!(shown(&state).reserved_bps[&3], 100_000_000);
    assert_eq!(state.next_reservation_change(), Some(T + 20));

    let unknown = ReservationOp::Cancel {
        id: ReservationId(9),
    };
    let e = state
        .on_reservation(&unknown, T + 11, Now::at_ms(3_000))
        .unwrap_err();
    assert_eq!(e.http_status(), 404);
    assert_eq!(shown(&state).stored.len(), 1);

    state
        .handle(Input::Clock { now_unix_s: T + 20 }, Now::at_ms(4_000))
        .unwrap();
    let after = shown(&state);
    assert!(after.stored.is_empty() && after.active == 0, "{after:?}");
    assert_eq!((after.events.created, after.events.expired), (1, 1));
    assert_eq!(state.next_reservation_change(), None);

    let mut without = AgentState::new(config, MemoryFastPath::default(), Now::at_ms(0)).unwrap();
    assert!(matches!(
        without.on_reservation(op, T, Now::at_ms(0)),
        Err(BandwidthError::NoReservations)
    ));
    assert!(without.snapshot().reservations.is_none());
}

/// A reloaded topology is what admission counts on: a link shrunk below a reservation's rate
/// displaces it (event, snapshot), and the reservation no longer weighs on the link.
#[test]
fn a_topology_reload_readmits_the_reservations() {
    const T: u64 = 1_700_000_000;
    let original = std::fs::read_to_string(fixture::dir().join("gateway_a.toml")).unwrap();
    let config = AgentConfig::load(&fixture::dir().join("gateway_a.toml")).unwrap();
    let mut state = fixture::state(config, MemoryFastPath::default());
    let create: ReservationOp = serde_json::from_str(&format!(
        r#"{{"create": {{"owner": "backup", "source": "us-east-1", "destination": "ap-south-1",
            "class": "bulk", "rate": "100M", "start": {T}, "end": {}, "path": [3]}}}}"#,
        T + 100
    ))
    .unwrap();
    state.on_reservation(&create, T, Now::at_ms(1_000)).unwrap();
    let active =
        |s: &AgentState<MemoryFastPath>| s.snapshot().reservations.as_ref().unwrap().active;
    assert_eq!(active(&state), 1);
    state.take_events().for_each(drop);

    let shrunk = original.replace(
        "latency_ms = 200.0\ncapacity_mbps = 800",
        "latency_ms = 200.0\ncapacity_mbps = 50",
    );
    assert_ne!(shrunk, original, "the fixture's link 3 changed shape");
    let dir = std::env::temp_dir().join(format!("dwcp-readmit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway_a.toml");
    std::fs::write(&path, shrunk).unwrap();
    let reloaded = state.handle(Input::Reload { path }, Now::at_ms(2_000));
    std::fs::remove_dir_all(&dir).unwrap();
    reloaded.unwrap();

    assert_eq!(active(&state), 0);
    let events: Vec<AgentEvent> = state.take_events().collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            AgentEvent::Reservation(ReservationEvent::Displaced { .. })
        )),
        "{events:?}"
    );
}

/// etcd mode: a published topology replaces the file's at once (the fast path's link
/// capacity follows), the same generation again changes nothing, one the file's links do not
/// fit is refused whole (the one in force stays), and a reload keeps the published one.
#[test]
fn a_published_topology_is_applied_whole_or_not_at_all() {
    let path = fixture::dir().join("gateway_a.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let config = AgentConfig::load(&path).unwrap();
    let mut state = fixture::state(config, MemoryFastPath::default());
    let capacity = |s: &AgentState<MemoryFastPath>| {
        s.snapshot()
            .links
            .iter()
            .find(|l| l.id == 3)
            .unwrap()
            .capacity_bps
    };
    assert_eq!(capacity(&state), 800_000_000);
    let publish = |generation: u64, text: &str| Input::PublishedTopology {
        topology: PublishedTopology {
            generation,
            source: PublishedTopology::source_of(text).unwrap().1,
        },
    };
    let grown = original.replace(
        "latency_ms = 200.0\ncapacity_mbps = 800",
        "latency_ms = 200.0\ncapacity_mbps = 1600",
    );
    assert_ne!(grown, original, "the fixture's link 3 changed shape");

    let before = state.config_generation();
    state.handle(publish(1, &grown), Now::at_ms(1_000)).unwrap();
    assert_eq!(state.config_generation(), before + 1);
    assert_eq!(state.snapshot().published_topology_generation, Some(1));
    assert_eq!(capacity(&state), 1_600_000_000);
    state.handle(publish(1, &grown), Now::at_ms(1_100)).unwrap();
    assert_eq!(state.config_generation(), before + 1, "nothing new");

    // Link 3 (this gateway's) gone: refused, generation 1 stays.
    let (mut without, _) = PublishedTopology::source_of(&grown).unwrap();
    without.links.retain(|l| l.get_ref().link_id != 3);
    let refused = state.handle(
        Input::PublishedTopology {
            topology: PublishedTopology {
                generation: 2,
                source: toml::to_string(&without).unwrap(),
            },
        },
        Now::at_ms(1_200),
    );
    assert!(refused.is_err());
    assert_eq!(state.snapshot().published_topology_generation, Some(1));
    assert_eq!(capacity(&state), 1_600_000_000);

    // A reload re-reads the file (its own topology says 800) and keeps the published one.
    state
        .handle(Input::Reload { path }, Now::at_ms(1_300))
        .unwrap();
    assert_eq!(capacity(&state), 1_600_000_000);
}

/// A reservation file that cannot be parsed is renamed aside with an event, and the state
/// owner starts with none (and stores new ones in a fresh file); a file of another format
/// version is refused and left where it is.
#[test]
fn a_corrupt_reservation_file_is_set_aside_and_the_agent_starts_with_none() {
    const T: u64 = 1_700_000_000;
    let config = AgentConfig::load(&fixture::dir().join("gateway_a.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reservations.json");
    std::fs::write(&file, b"{\"version\": 1, \"next_id\": 1, \"reserv").unwrap();
    let mut state =
        AgentState::new(config.clone(), MemoryFastPath::default(), Now::at_ms(0)).unwrap();
    state
        .open_reservation_file(&file, T, Now::at_ms(0))
        .unwrap();
    let aside = dir.path().join(format!("reservations.json.corrupt-{T}"));
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"{\"version\": 1, \"next_id\": 1, \"reserv"
    );
    assert!(!file.exists());
    let events: Vec<AgentEvent> = state.take_events().collect();
    match &events[..] {
        [AgentEvent::ReservationsSetAside {
            file: f,
            moved_to,
            reason,
        }] => {
            assert_eq!((f, moved_to), (&file, &aside));
            assert!(reason.contains("EOF"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let reservations = state.snapshot().reservations.clone().unwrap();
    assert!(reservations.stored.is_empty());
    let create: ReservationOp = serde_json::from_str(&format!(
        r#"{{"create": {{"owner": "backup", "source": "us-east-1", "destination": "ap-south-1",
            "class": "bulk", "rate": "1M", "start": {T}, "end": {}, "path": [3]}}}}"#,
        T + 100
    ))
    .unwrap();
    state.on_reservation(&create, T, Now::at_ms(1_000)).unwrap();
    assert!(file.exists(), "new reservations go to a fresh file");

    let other_version = b"{\"version\": 2, \"next_id\": 1, \"reservations\": []}";
    std::fs::write(&file, other_version).unwrap();
    let mut state = AgentState::new(config, MemoryFastPath::default(), Now::at_ms(0)).unwrap();
    let e = state
        .open_reservation_file(&file, T + 1, Now::at_ms(0))
        .unwrap_err();
    assert!(e.to_string().contains("format version 2"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), other_version);
}

/// The link-state records' view of a link this gateway does not terminate moves the routes
/// that cross it: reported down, they leave it (the reason names the link and who reported
/// it); reported up with new figures, they come back and follow the figures.
#[test]
fn a_remote_link_reported_down_moves_the_routes_that_crossed_it() {
    run("remote_link_state.json");
}

/// Remote failover does not wait for the computation: the link-state view that reports link 2
/// (another gateway's) down reaches the fast path's links-down bitmap as it is handled, while
/// the groups still hold the members whose paths cross it (the fast path skips them); the
/// computation that follows installs paths without it, and the report of it up clears it.
#[test]
fn a_link_reported_down_reaches_the_fast_path_before_the_routes_are_recomputed() {
    let name = "remote_link_state.json";
    let interfaces = fixture::interfaces(name);
    let loaded = fixture::load(name, |i| interface_of(&interfaces, i));
    let mut state = fixture::state(loaded.config, MemoryFastPath::default());
    let crossing_2 = |state: &dwcp_control::AgentState<MemoryFastPath>| {
        state
            .programmed()
            .groups
            .values()
            .flat_map(|t| t.paths[..t.member_count as usize].to_vec())
            .filter(|p| p.links[..p.link_count as usize].contains(&2))
            .count()
    };
    let (before, after): (Vec<_>, Vec<_>) = loaded.inputs.iter().partition(|i| i.at_ms < 1000);
    replay(
        &mut state,
        &before.into_iter().cloned().collect::<Vec<_>>(),
        999,
    );
    assert_eq!(state.programmed().links_down.count, 0);
    // ap-south-1's primary [1, 2] and eu-west-1's standby [3, 2].
    assert_eq!(crossing_2(&state), 2);
    let report_down = after.iter().find(|i| i.at_ms == 1000).unwrap();
    state
        .handle(report_down.input.clone(), Now::at_ms(1000))
        .unwrap();
    assert_eq!(
        state.programmed().links_down.links().collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(crossing_2(&state), 2, "the groups wait for the computation");
    state.on_timer(Now::at_ms(1000));
    assert_eq!(crossing_2(&state), 0);
    let report_up = after.iter().find(|i| i.at_ms == 5000).unwrap();
    state
        .handle(report_up.input.clone(), Now::at_ms(5000))
        .unwrap();
    assert_eq!(state.programmed().links_down.count, 0);
}

/// etcd mode: figures another gateway published to the cluster store fill the view of a link
/// this gateway neither terminates nor has a record of, and nothing else: link 2 "measured"
/// at 10 ms would make [1, 2] the shortest way to ap-south-1, yet the routes, the fast path
/// and link 2's health stay as they were. Once a record reports link 2, the record is shown.
#[test]
fn figures_from_the_cluster_store_fill_the_view_and_never_move_a_route() {
    use dwcp_control::link_state::{Figures, StoredLinkFigures};
    use dwcp_control::topology::LinkId;
    use dwcp_control::view::LinkHealth;
    let name = "remote_link_state.json";
    let interfaces = fixture::interfaces(name);
    let loaded = fixture::load(name, |i| interface_of(&interfaces, i));
    let mut state = fixture::state(loaded.config, MemoryFastPath::default());
    let (before, after): (Vec<_>, Vec<_>) = loaded.inputs.iter().partition(|i| i.at_ms < 1000);
    replay(
        &mut state,
        &before.into_iter().cloned().collect::<Vec<_>>(),
        999,
    );
    let link = |state: &AgentState<MemoryFastPath>, id: u32| {
        state
            .snapshot()
            .links
            .iter()
            .find(|l| l.id == id)
            .unwrap()
            .clone()
    };
    assert_eq!(link(&state, 2).health, LinkHealth::Unmeasured);
    let programmed = state.programmed().clone();
    let routes = state.snapshot().routes.clone();
    let stored = |id: u32, rtt_ms: f64| StoredLinkFigures {
        link: LinkId(id),
        figures: Figures::quantise(Some(rtt_ms), Some(0.5), Some(0.02), Some(0.4)),
        gateway: "gw-euw1-a".into(),
        measured_unix_ms: 1_700_000_000_000,
    };
    state
        .handle(
            Input::StoredFigures {
                links: vec![stored(1, 999.0), stored(2, 10.0)],
            },
            Now::at_ms(999),
        )
        .unwrap();
    state.on_timer(Now::at_ms(5_000));
    let l2 = link(&state, 2);
    assert_eq!(
        l2.health,
        LinkHealth::Unmeasured,
        "the store decides no health"
    );
    assert_eq!(
        (l2.rtt_seconds, l2.loss_ratio, l2.utilisation_ratio),
        (Some(0.010), Some(0.02), Some(0.4))
    );
    assert_eq!(
        l2.figures_from_store.as_ref().map(|s| s.gateway.as_str()),
        Some("gw-euw1-a")
    );
    let l1 = link(&state, 1);
    assert!(
        l1.figures_from_store.is_none() && l1.rtt_seconds != Some(0.999),
        "a link this gateway terminates shows its own figures"
    );
    assert_eq!(state.programmed(), &programmed);
    assert_eq!(state.snapshot().routes, routes);
    // A record of link 2 arrives: it is what the view shows (down), not the store's figures.
    let report_down = after.iter().find(|i| i.at_ms == 1000).unwrap();
    state
        .handle(report_down.input.clone(), Now::at_ms(5_001))
        .unwrap();
    state.on_timer(Now::at_ms(10_000));
    let l2 = link(&state, 2);
    assert_eq!(l2.health, LinkHealth::Down);
    assert!(l2.figures_from_store.is_none() && l2.rtt_seconds.is_none());
}
