//! Replay tests on the kernel's maps: the recorded input sequences of dwcp-control's
//! conformance tests (`dwcp-control/tests/fixtures/replay/*.json`, read and judged by the same
//! `fixture` module) go into a state owner that programs a real (unpinned) fast path in a
//! network namespace with the configuration's interfaces; the maps read back from the kernel
//! must be what the state owner believes it wrote, and the route history what the fixture
//! says. The tests after the shared fixtures check what only a kernel shows (adoption of
//! pinned maps, policers, sampled flows, the WireGuard hand-off's rule and route).

#[path = "../../dwcp-control/tests/fixture/mod.rs"]
mod fixture;

use std::{collections::BTreeMap, path::PathBuf};

use dwcp_control::config::Mac;
use dwcp_control::input::WireGuardReading;
use dwcp_control::plan::standby_supported;
use dwcp_control::replay::replay;
use dwcp_control::traffic::SampledPacket;
use dwcp_control::AgentState;
use dwcp_control::Input;
use dwcp_control::Now;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Pinning;
use dwcp_lab::netlab::Netns;

/// Runs fixture `name` and checks its expectations.
fn run(name: &str) {
    run_with(name, Pinning::None, |_, _| {});
}

/// Runs fixture `name` on a fast path with `pinning`, checks it, then hands the state owner to
/// `after` (still inside the test namespace).
fn run_with(
    name: &str,
    pinning: Pinning,
    after: impl FnOnce(AgentState<Dataplane>, &BTreeMap<String, (u32, Mac)>) + Send,
) {
    // The namespace (and its interface indexes) is this run's: `$ifindex(ul1)` in a fixture
    // stands for the index of ul1. veth pairs (this kernel has no dummy driver); the peer
    // ends stay unused.
    let ns = Netns::new("replay").unwrap();
    for i in &fixture::interfaces(name) {
        let peer = format!("{i}-p");
        ns.ip(&["link", "add", i, "type", "veth", "peer", "name", &peer])
            .unwrap();
        ns.ip(&["link", "set", i, "up"]).unwrap();
        ns.ip(&["link", "set", &peer, "up"]).unwrap();
    }
    let resolve = |name: &str| -> (u32, Mac) {
        (
            ns.ifindex(name).unwrap(),
            Mac(ns.mac(name).unwrap_or_default()),
        )
    };
    let loaded = fixture::load(name, resolve);
    let resolved: BTreeMap<String, (u32, Mac)> = loaded
        .fx
        .interfaces
        .iter()
        .map(|i| (i.clone(), resolve(i)))
        .collect();
    let standby = standby_supported();
    ns.run_in(move || {
        let dp = Dataplane::load(pinning).unwrap();
        let mut state = fixture::state(loaded.config, dp);
        let errors = replay(&mut state, &loaded.inputs, loaded.fx.until_ms);
        fixture::check(
            name,
            &state,
            &loaded.fx.expect,
            &errors,
            standby,
            &loaded.ifindexes,
        );
        after(state, &resolved);
    })
    .unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn link_failure_and_recovery() {
    run("link_failure_and_recovery.json");
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_storm_of_1000_flaps_ends_in_the_right_state() {
    run("storm.json");
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn region_health_admin_down_and_interface_events() {
    run("region_and_admin.json");
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn config_reload_applies_and_a_bad_one_changes_nothing() {
    run("reload.json");
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_remote_link_reported_down_moves_the_routes_that_crossed_it() {
    run("remote_link_state.json");
}

/// A pin directory of this test run, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = dwcp_dataplane::unpin_all(&self.0);
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_restarted_agent_adopts_the_maps_and_writes_nothing() {
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/dwcp-replay-{}",
        std::process::id()
    )));
    let dir = pins.0.clone();
    run_with(
        "link_failure_and_recovery.json",
        Pinning::Dir(dir.clone()),
        move |first, interfaces| {
            let programmed = first.programmed().clone();
            let config = first.config().as_ref().clone();
            // The same inputs a restarted daemon gets from its netlink dump and its monitor.
            let mut start: Vec<Input> = Vec::new();
            let ifindex_of = |n: &str| interfaces[n];
            for (name, i) in interfaces {
                start.push(Input::Interface {
                    name: name.clone(),
                    ifindex: i.0,
                    up: true,
                    mac: i.1,
                    mtu: Some(1500),
                });
            }
            drop(first);
            for l in &config.local_links {
                start.push(Input::Address {
                    ifindex: ifindex_of(&l.interface).0,
                    ip: l.local_ip.into(),
                    present: true,
                });
            }
            for (ifname, ip, mac) in [
                ("ul1", [172, 31, 1, 2], [2, 0, 0, 0, 1, 2]),
                ("ul3", [172, 31, 3, 2], [2, 0, 0, 0, 3, 2]),
            ] {
                start.push(Input::Neighbour {
                    ifindex: ifindex_of(ifname).0,
                    ip: ip.into(),
                    mac: Some(Mac(mac)),
                });
            }
            start.push(Input::LinkUp { link: 1 });
            start.push(Input::LinkUp { link: 3 });
            let dp = Dataplane::load(Pinning::Dir(dir)).unwrap();
            let mut second = AgentState::new(config, dp, Now::at_ms(0)).unwrap();
            assert_eq!(second.programmed(), &programmed, "read back at start");
            for i in start {
                second.handle(i, Now::at_ms(0)).unwrap();
            }
            second.on_timer(Now::at_ms(0));
            let u = second.last_update().unwrap();
            assert_eq!(u.changes, 0, "the restart rewrote maps");
            assert_eq!(second.adopted().routes, 3);
        },
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn reservations_move_the_split() {
    run("reservations.json");
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn an_active_reservation_is_policed_in_the_fast_path_until_it_ends() {
    run_with("reservation_policer.json", Pinning::None, |mut state, _| {
        let group = state.plans()["ap-south-1"].group_id;
        let realtime = dwcp_common::QosClass::Realtime as u8;
        let policers = state.fast_path().policers().unwrap();
        assert_eq!(policers.len(), 1, "{policers:?}");
        let (key, p) = policers[0];
        assert_eq!((key.group_id, key.class), (group, realtime));
        assert_eq!(p.rate_bytes_per_s, 50_000_000, "400 Mbit/s in bytes");
        assert_eq!(p.burst_bytes, 2_500_000, "50 ms at the rate");
        assert_eq!(p.action, dwcp_common::POLICE_REMARK);
        let flags = state.fast_path().config().unwrap().flags;
        assert_ne!(flags & dwcp_common::CONFIG_F_POLICING, 0, "policing on");

        // An unrelated recomputation leaves the bucket alone (a rewrite would refill it).
        let before = state.last_update().map(|u| u.at_ns);
        state.handle(Input::Optimise, Now::at_ms(7_000)).unwrap();
        state.on_timer(Now::at_ms(9_000));
        let u = state.last_update().unwrap();
        assert_ne!(Some(u.at_ns), before, "the optimisation did not recompute");
        assert_eq!(
            u.changes, 0,
            "a recomputation without a change rewrote maps"
        );

        // Link 3 (800 Mbit/s) carries nothing yet; the reservation's end is the next change,
        // with nothing reserved after it; realtime holds the reservation.
        let link3 = |state: &AgentState<Dataplane>| {
            let snap = (**state.snapshot()).clone();
            let l = snap.links.iter().find(|l| l.id == 3).cloned().unwrap();
            (l.projected_utilisation_ratio, l.projected_at_unix_s)
        };
        assert_eq!(link3(&state), (Some(0.0), Some(1_700_003_600)));
        assert_eq!(state.next_reservation_change(), Some(1_700_003_600));
        let snap = (**state.snapshot()).clone();
        let reserved: Vec<(String, u64)> = snap
            .classes
            .iter()
            .map(|c| (c.class.clone(), c.reserved_bps))
            .collect();
        assert_eq!(reserved.len(), 5, "{reserved:?}");
        for (class, bps) in &reserved {
            let want = if class == "realtime" { 400_000_000 } else { 0 };
            assert_eq!(*bps, want, "{class}");
        }
        assert!(snap.classes.iter().all(|c| c.throughput_bps == Some(0.0)));

        // The reservation ends: its bucket goes, and policing with it.
        state
            .handle(
                Input::Clock {
                    now_unix_s: 1_700_003_600,
                },
                Now::at_ms(10_000),
            )
            .unwrap();
        let shown = state.snapshot().reservations.clone().unwrap();
        assert!(
            shown.stored.is_empty() && shown.events.expired == 1,
            "{shown:?}"
        );
        state.on_timer(Now::at_ms(12_000));
        assert!(state.fast_path().policers().unwrap().is_empty());
        let flags = state.fast_path().config().unwrap().flags;
        assert_eq!(flags & dwcp_common::CONFIG_F_POLICING, 0, "policing off");
        assert_eq!(&state.read_back().unwrap(), state.programmed());
    });
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn sampled_packets_make_the_top_flows_of_a_window() {
    run_with("reservation_policer.json", Pinning::None, |mut state, _| {
        let packet = |src: &str, sport: u16, class: u8, bytes: u32| SampledPacket {
            src: src.parse().unwrap(),
            dst: "10.3.0.9".parse().unwrap(),
            proto: 17,
            src_port: sport,
            dst_port: 5004,
            class,
            bytes,
            nexthop: 3,
            group: 0,
        };
        let samples = vec![
            packet("10.1.0.5", 40_000, 1, 1_000),
            packet("10.1.0.6", 40_001, 4, 500),
            packet("10.1.0.5", 40_000, 1, 1_000),
            packet("10.1.0.5", 40_000, 1, 1_000),
        ];
        state
            .handle(Input::FlowSamples { samples }, Now::at_ms(20_000))
            .unwrap();
        state.on_timer(Now::at_ms(20_000));
        let flows = state.snapshot().flows.clone();
        assert_eq!((flows.sample_every, flows.samples), (1_000, 4));
        // Each sample stands for 1,000 packets of its length.
        assert_eq!(flows.bytes, 3_500_000);
        let top: Vec<_> = flows
            .flows
            .iter()
            .map(|f| (f.src.to_string(), f.bytes, f.class.clone()))
            .collect();
        assert_eq!(
            top,
            [
                ("10.1.0.5".into(), 3_000_000, Some("realtime".into())),
                ("10.1.0.6".into(), 500_000, Some("best-effort".into()))
            ]
        );
        assert!((flows.flows[0].share - 3.0 / 3.5).abs() < 1e-9);
        // The window (60 s by default) ends: the table starts over.
        state.on_timer(Now::at_ms(81_000));
        let flows = state.snapshot().flows.clone();
        assert_eq!((flows.samples, flows.bytes), (0, 0));
        assert!(flows.flows.is_empty());
    });
}

/// TE mode end to end in the state owner: sampled packets become each flow group's demand,
/// the traffic engineer allocates it (strict priority between classes), and the groups it
/// cannot grant in full are policed at their grant; when the demand goes, so do the policers.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn te_mode_takes_demand_from_sampled_packets_and_polices_what_it_cannot_grant() {
    use dwcp_common::QosClass;
    run_with("te_demand.json", Pinning::None, |mut state, _| {
        let ap = state.plans()["ap-south-1"].group_id;
        assert!(
            state.fast_path().policers().unwrap().is_empty(),
            "no demand measured, no policer"
        );
        let sample = |class: QosClass| SampledPacket {
            src: "10.1.0.5".parse().unwrap(),
            dst: "10.3.0.9".parse().unwrap(),
            proto: 17,
            src_port: 40_000,
            dst_port: 5004,
            class: class as u8,
            bytes: 1_000,
            nexthop: 1,
            group: ap,
        };
        // One counters interval (1 s) of samples, each standing for 1,000 packets of its
        // length: realtime offers 2 Gbit/s towards ap-south-1, bulk 80 Mbit/s, more than the
        // two paths can take after the 20 % headroom (720 + 640 Mbit/s).
        state.on_timer(Now::at_ms(20_000));
        let mut samples = vec![sample(QosClass::Realtime); 250];
        samples.extend(vec![sample(QosClass::Bulk); 10]);
        state
            .handle(Input::FlowSamples { samples }, Now::at_ms(20_500))
            .unwrap();
        state.on_timer(Now::at_ms(21_000));
        state.on_timer(Now::at_ms(21_100));
        let policers: BTreeMap<u8, u64> = state
            .fast_path()
            .policers()
            .unwrap()
            .into_iter()
            .map(|(k, p)| {
                assert_eq!(k.group_id, ap);
                (k.class, p.rate_bytes_per_s)
            })
            .collect();
        // The estimate, as /v1/classes shows it.
        let snap = (**state.snapshot()).clone();
        let offered = |name: &str| {
            snap.classes
                .iter()
                .find(|c| c.class == name)
                .unwrap()
                .offered_bps
        };
        assert_eq!(offered("realtime"), 2e9);
        assert_eq!(offered("bulk"), 80e6);
        // Realtime gets what both paths offer; bulk, below it, nothing: both are policed at
        // their grant. Best effort never is.
        assert_eq!(
            policers,
            BTreeMap::from([
                (QosClass::Realtime as u8, 1_360_000_000 / 8),
                (QosClass::Bulk as u8, 0)
            ])
        );
        let flags = state.fast_path().config().unwrap().flags;
        assert_ne!(flags & dwcp_common::CONFIG_F_POLICING, 0);
        // The split follows the grant on each path (720:640 = 9:8).
        let paths = &state.plans()["ap-south-1"].paths;
        let weights: Vec<u32> = paths.iter().map(|p| p.weight).collect();
        assert_eq!(weights, [9, 8]);
        // The traffic stops: the average decays, the demand goes, and the policers with it.
        let mut t = 21_100;
        while t < 60_000 && !state.fast_path().policers().unwrap().is_empty() {
            t += 1_000;
            state.on_timer(Now::at_ms(t));
            state.on_timer(Now::at_ms(t + 100));
        }
        assert!(state.fast_path().policers().unwrap().is_empty());
        let flags = state.fast_path().config().unwrap().flags;
        assert_eq!(flags & dwcp_common::CONFIG_F_POLICING, 0);
        eprintln!("policers removed {} ms after the last samples", t - 21_000);
        assert_eq!(&state.read_back().unwrap(), state.programmed());
    });
}

/// `ip <args>` in the calling thread's namespace (the test namespace inside `run_in`).
fn ip_here(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Link 3 is `kind = "wireguard"` on wg3. A veth stands in for the WireGuard device: what is
/// checked (the maps, the rule and the table route) does not depend on the device's kind;
/// traffic through a real wireguard-go device is the tunnels.rs hand-off lab's.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_wireguard_link_is_a_handoff_next_hop_with_its_policy_rule() {
    run_with(
        "wireguard_handoff.json",
        Pinning::None,
        |mut state, interfaces| {
            let wg3 = interfaces["wg3"].0;
            let kernel = state.read_back().unwrap();
            let nh = kernel.nexthops[&3];
            assert!(nh.is_handoff(), "{nh:?}");
            assert_eq!(
                nh.flags & dwcp_common::NH_F_HANDOFF,
                dwcp_common::NH_F_HANDOFF
            );
            assert_eq!(nh.handoff_mark(), Some(0x6477_0003));
            assert_eq!(nh.ifindex, wg3);
            assert_eq!(nh.link_id, 3);
            // The group of ap-south-1 holds it (checked by the fixture: active [3]).
            let group = kernel.groups[&state.plans()["ap-south-1"].group_id];
            assert!(group.nexthops[..group.member_count as usize].contains(&3));
            // No VNI, no neighbour, no probing for it; link 1 (VXLAN) is as before.
            assert!(kernel
                .vnis
                .contains_key(&(dwcp_control::config::VNI_BASE + 1)));
            assert!(!kernel
                .vnis
                .contains_key(&(dwcp_control::config::VNI_BASE + 3)));
            assert_eq!(kernel.vnis.len(), 1, "{:?}", kernel.vnis.keys());
            assert!(kernel.neighbours.keys().all(|(i, _)| *i != wg3));
            assert!(!kernel.links.contains_key(&3), "link 3 is not monitored");
            assert!(!kernel.nexthops[&1].is_handoff());
            // The tunnel view names it.
            let snap = (**state.snapshot()).clone();
            let t = snap
                .tunnels
                .iter()
                .find(|t| t.name == "wireguard-use1-aps1")
                .unwrap_or_else(|| panic!("{:?}", snap.tunnels));
            assert_eq!(
                (t.kind.as_str(), t.vni, t.link),
                ("wireguard", None, Some(3))
            );
            assert!(snap.tunnels.iter().any(|t| t.name == "vxlan-use1-euw1"));

            // A stale handshake (the daemon reads it from the UAPI socket) takes link 3 down:
            // ap-south-1 goes over link 1 only; a fresh one brings it back.
            let aps1 = state.plans()["ap-south-1"].group_id;
            let members = |state: &AgentState<Dataplane>| {
                let g = state.read_back().unwrap().groups[&aps1];
                let mut m = g.nexthops[..g.member_count as usize].to_vec();
                m.sort();
                m
            };
            state
                .handle(
                    Input::WireGuardHandshake {
                        link: 3,
                        stale: Some("latest WireGuard handshake 400 s ago".into()),
                        reading: Some(WireGuardReading {
                            last_handshake_unix_s: Some(1_699_999_611.0),
                            rx_bytes: 5000,
                            tx_bytes: 7000,
                        }),
                    },
                    Now::at_ms(11_000),
                )
                .unwrap();
            state.on_timer(Now::at_ms(13_000));
            assert_eq!(members(&state), vec![1], "link 3 down");
            let last = state.history().last().unwrap().clone();
            assert!(last.reason.contains("handshake 400 s ago"), "{last:?}");
            // The device's reading is the tunnel view's, its age taken at the snapshot.
            let tunnel = |state: &AgentState<Dataplane>| {
                state
                    .snapshot()
                    .tunnels
                    .iter()
                    .find(|t| t.link == Some(3))
                    .cloned()
                    .unwrap()
            };
            let t = tunnel(&state);
            assert_eq!(
                (t.last_handshake_unix_s, t.rx_bytes, t.tx_bytes),
                (Some(1_699_999_611.0), Some(5000), Some(7000))
            );
            assert!(
                t.handshake_age_seconds
                    .is_some_and(|a| (400.0..=402.0).contains(&a)),
                "{t:?}"
            );
            // Not probed (no tunnel addresses in this fixture).
            assert_eq!(t.probe_alive, None);
            state
                .handle(
                    Input::WireGuardHandshake {
                        link: 3,
                        stale: None,
                        reading: None,
                    },
                    Now::at_ms(14_000),
                )
                .unwrap();
            state.on_timer(Now::at_ms(16_000));
            assert_eq!(members(&state), vec![1, 3], "link 3 back");
            // The device no longer answers: "-", not the last reading.
            let t = tunnel(&state);
            assert_eq!(
                (
                    t.last_handshake_unix_s,
                    t.handshake_age_seconds,
                    t.rx_bytes,
                    t.tx_bytes
                ),
                (None, None, None, None)
            );

            // The daemon's half: the policy rule and the table route, idempotent, removed when
            // the link leaves the configuration.
            let config = state.config().as_ref().clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use dwcp_agent::agent::handoff::Handoffs;
                let mut h = Handoffs::open().await.unwrap();
                let problems = h.sync(&config).await;
                assert!(problems.is_empty(), "{problems:?}");
                let rules = ip_here(&["-4", "rule", "show"]);
                assert!(rules.contains("fwmark 0x64770003 lookup 20003"), "{rules}");
                let rules6 = ip_here(&["-6", "rule", "show"]);
                assert!(
                    rules6.contains("fwmark 0x64770003 lookup 20003"),
                    "{rules6}"
                );
                let routes = ip_here(&["-4", "route", "show", "table", "20003"]);
                assert!(routes.contains("default dev wg3"), "{routes}");
                // Again: nothing added twice.
                assert!(h.sync(&config).await.is_empty());
                let rules = ip_here(&["-4", "rule", "show"]);
                assert_eq!(rules.matches("fwmark 0x64770003").count(), 1, "{rules}");
                // The device gone: reported, not fatal.
                ip_here(&["link", "set", "wg3", "down"]);
                let problems = h.sync(&config).await;
                assert!(!problems.is_empty(), "a down device's route cannot exist");
                // The table still ends in its unreachable default: marked packets are dropped,
                // not routed by the main table.
                let routes = ip_here(&["-4", "route", "show", "table", "20003"]);
                assert!(routes.contains("unreachable default"), "{routes}");
                ip_here(&["link", "set", "wg3", "up"]);
                assert!(h.sync(&config).await.is_empty(), "restored once up");
                // Table 20003's routes, both families (`show table 20003` fails once the
                // table is empty).
                let table_routes = || {
                    let all = ip_here(&["-4", "route", "show", "table", "all"])
                        + &ip_here(&["-6", "route", "show", "table", "all"]);
                    all.lines()
                        .filter(|l| l.contains("table 20003"))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                };
                // The device's route and the unreachable default behind it (fail closed),
                // both families.
                let routes = table_routes();
                assert_eq!(routes.len(), 4, "{routes:?}");
                assert_eq!(
                    routes
                        .iter()
                        .filter(|r| r.starts_with("unreachable default"))
                        .count(),
                    2,
                    "{routes:?}"
                );
                // The link leaves the configuration (a SIGHUP reload): its rules and its
                // table's route go (the device stays: it is not the agent's).
                let mut without = config.clone();
                without.local_links.retain(|l| l.link_id != 3);
                assert!(h.sync(&without).await.is_empty());
                let rules = ip_here(&["-4", "rule", "show"]);
                assert!(!rules.contains("0x64770003"), "{rules}");
                let rules6 = ip_here(&["-6", "rule", "show"]);
                assert!(!rules6.contains("0x64770003"), "{rules6}");
                assert_eq!(table_routes(), Vec::<String>::new());
                // `dwcp-agent --remove`: removes the rules and routes of the configuration's
                // links.
                h.sync(&config).await;
                assert_eq!(table_routes().len(), 4, "{:?}", table_routes());
                assert_eq!(
                    dwcp_agent::agent::handoff::remove_all(&config)
                        .await
                        .unwrap(),
                    1
                );
                assert!(!ip_here(&["rule", "show"]).contains("0x64770003"));
                assert_eq!(table_routes(), Vec::<String>::new());
            });
        },
    );
}
