//! Link state in meshes of 5 and 6 regions (`cargo xtask lab`'s ring with chords), real agents
//! flooding their records over the links: a remote cut reroutes every gateway whose routes
//! crossed the link; a restarted gateway gets the whole database back from its neighbours; a
//! flapping link is damped; the records of a gateway gone for good age out; and no datagram
//! reaches the same gateway twice while links flap (the loop counter,
//! `dwcp_lab::lab::loops`).
//!
//! Each test has its own namespace prefix, state directory and pin root (with the pid),
//! removed by a guard also when it fails; the tests of this file run one at a time (each lab
//! runs 5 or 6 agents). Every wait is for a mechanism (a record, a route, a health) with a
//! generous deadline; the only comparisons of times are lower bounds (the damping hold, the
//! records' lifetime), which a stalled machine only widens.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use dwcp_agent::agent::{AgentEvent, LsdbView, RouteChange, RouteView, TunnelView};
use dwcp_control::config::LinkStateSection;
use dwcp_control::topology::RoutingHealth;
use dwcp_lab::lab::live::{self, LabPaths, LabState, UpOptions};
use dwcp_lab::lab::loops::{self, LoopCounter};
use dwcp_lab::lab::multi;

/// Generous: agents start and probes converge on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(120);
/// One lab at a time: each runs 5 or 6 agents.
static ONE_LAB: Mutex<()> = Mutex::new(());

struct Down(LabPaths);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = live::down(&self.0);
    }
}

/// A running lab of `regions` with `link_state`, removed when the guard drops.
fn lab(tag: &str, regions: usize, link_state: LinkStateSection) -> (LabState, Down) {
    let pid = std::process::id();
    let paths = LabPaths {
        prefix: format!("dwcp-{tag}{pid}"),
        state_dir: std::env::temp_dir().join(format!("dwcp-lab-{tag}-{pid}")),
        pin_root: PathBuf::from(format!("/sys/fs/bpf/dwcp-lab-{tag}-{pid}")),
    };
    let down = Down(paths.clone());
    let mut opts = UpOptions::new(regions, dwcp_lab::bin("dwcp-agent"));
    opts.timeout = WAIT;
    opts.link_state = link_state;
    let state = live::up(&paths, &opts, &mut |m| println!("up: {m}")).unwrap();
    (state, down)
}

fn get<T: serde::de::DeserializeOwned>(state: &LabState, region: usize, path: &str) -> T {
    live::api_get(&state.agents[region].socket, path).unwrap()
}

/// Polls `f` until it gives a value; panics naming `what` after [`WAIT`].
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every agent's database holds a record of every gateway.
fn wait_full_databases(state: &LabState) {
    for r in 0..state.agents.len() {
        poll(&format!("{}'s database", state.agents[r].region), || {
            let lsdb: LsdbView = get(state, r, "/v1/lsdb");
            (lsdb.records.len() == state.agents.len()).then_some(())
        });
    }
}

/// A database as gateways must agree on it: each record's origin, sequence number and links.
fn contents(lsdb: &LsdbView) -> Vec<(String, u64, String)> {
    lsdb.records
        .iter()
        .map(|r| (r.origin.clone(), r.seq, format!("{:?}", r.links)))
        .collect()
}

fn routes(state: &LabState, region: usize) -> Vec<RouteView> {
    get(state, region, "/v1/routes")
}

fn crosses(routes: &[RouteView], link: u32) -> bool {
    routes
        .iter()
        .flat_map(|r| &r.paths)
        .any(|p| p.links.contains(&link))
}

/// Probe replies `region`'s gateway has received over its `link`.
/// What `region`'s own probes say of `link` (its tunnel's `probe_alive`): unlike the link's
/// health in /v1/links, not held down by the damping nor by the far end's records.
fn probe_alive(state: &LabState, region: usize, link: u32) -> Option<bool> {
    let tunnels: Vec<TunnelView> = get(state, region, "/v1/tunnels");
    tunnels
        .iter()
        .find(|t| t.link == Some(link))
        .unwrap()
        .probe_alive
}

/// What `origin`'s record in `region`'s database says of `link`, and its sequence number.
fn reported(
    state: &LabState,
    region: usize,
    origin: &str,
    link: u32,
) -> Option<(RoutingHealth, u64)> {
    let lsdb: LsdbView = live::api_get(&state.agents[region].socket, "/v1/lsdb").ok()?;
    let r = lsdb.records.iter().find(|r| r.origin == origin)?;
    let l = r.links.iter().find(|l| l.link.0 == link)?;
    Some((l.health, r.seq))
}

/// Every event in `region`'s agent's events file so far.
fn events(state: &LabState, region: usize) -> Vec<AgentEvent> {
    std::fs::read_to_string(&state.agents[region].events)
        .unwrap_or_default()
        .lines()
        // A line being written as we read is left out.
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_remote_cut_reroutes_every_gateway_whose_routes_crossed_the_link() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let (state, _down) = lab("lsa", 6, LinkStateSection::default());
    wait_full_databases(&state);
    let plan = state.plan().unwrap();
    // The link the most gateways other than its ends route over (active or standby).
    let before: Vec<Vec<RouteView>> = (0..6).map(|r| routes(&state, r)).collect();
    let affected = |l: &multi::PlannedLink| -> Vec<usize> {
        (0..6)
            .filter(|&r| ![l.a, l.b].contains(&(r as u8 + 1)) && crosses(&before[r], l.id))
            .collect()
    };
    let link = plan
        .links
        .iter()
        .max_by_key(|l| affected(l).len())
        .unwrap()
        .clone();
    let remote = affected(&link);
    println!(
        "cutting link {} ({}); gateways not at its ends that route over it: {:?}",
        link.id,
        link.name,
        remote
            .iter()
            .map(|&r| &state.agents[r].region)
            .collect::<Vec<_>>()
    );
    assert!(remote.len() >= 2, "a mesh has transit over every link");

    // `fail` cuts it silently and returns once both ends route around it and every other
    // agent has it down with no path over it; checked again here, route by route.
    live::fail(&state, &link, WAIT).unwrap();
    for r in 0..6 {
        let now = routes(&state, r);
        assert!(
            !crosses(&now, link.id),
            "{}: {now:#?}",
            state.agents[r].region
        );
        for other in plan.regions.iter().filter(|o| o.n as usize != r + 1) {
            let route = now.iter().find(|rt| rt.destination == other.name);
            assert!(
                route.and_then(live::primary).is_some_and(|p| p.live),
                "{} has no live path to {}: {now:#?}",
                state.agents[r].region,
                other.name
            );
        }
    }
    // The remote gateways left the link on the word of an end's record.
    for &r in &remote {
        let history: Vec<RouteChange> = get(&state, r, "/v1/history");
        let why = format!("link {} ({}) down: reported by gw-", link.id, link.name);
        assert!(
            history.iter().any(|c| c.reason.contains(&why)),
            "{}: no change for {why:?}: {history:#?}",
            state.agents[r].region
        );
    }
    live::heal(&state, &link, WAIT).unwrap();
    for &r in &remote {
        poll(
            &format!("{} over link {} again", state.agents[r].region, link.id),
            || crosses(&routes(&state, r), link.id).then_some(()),
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_restarted_gateway_gets_the_whole_database_back_from_its_neighbours() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let (state, _down) = lab("lsr", 5, LinkStateSection::default());
    wait_full_databases(&state);
    // Region 3 has 4 links (5 is odd).
    const R: usize = 2;
    let state = live::restart_agent(&state, "3", &dwcp_lab::bin("dwcp-agent"), WAIT).unwrap();
    // The restarted agent starts with its own record only; every record of the others comes
    // from its neighbours, and the databases converge to one.
    let agreed = poll(
        "the restarted agent's database to equal every other's",
        || {
            let all: Vec<LsdbView> = (0..5)
                .map(|r| live::api_get(&state.agents[r].socket, "/v1/lsdb").ok())
                .collect::<Option<_>>()?;
            let mine = contents(&all[R]);
            (mine.len() == 5 && all.iter().all(|l| contents(l) == mine)).then_some(all)
        },
    );
    println!("{:#?}", contents(&agreed[R]));
    assert!(agreed[R].records_received > 0, "{:#?}", agreed[R]);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_flapping_link_is_damped() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    // A first hold of 4 s, four times the default: a good spell between two flaps (from the
    // first reply to the next cut detected, 1 to 2 s here with the replies counted and the
    // API polled) stays well inside it on a loaded machine.
    let section = LinkStateSection {
        hold_initial_ms: 4_000,
        ..LinkStateSection::default()
    };
    let (state, _down) = lab("lsf", 5, section.clone());
    wait_full_databases(&state);
    let link = live::find_link(&state, "1", Some("2")).unwrap();
    let ends = [0usize, 1];
    // Region 4 terminates neither end of link 1: it knows the link from the records only.
    const OBSERVER: usize = 3;
    let seq = |end: usize| {
        reported(&state, OBSERVER, &state.agents[end].gateway, link.id)
            .unwrap()
            .1
    };
    // Records are also originated for figures that moved and for the refresh: the rate
    // before the flaps, for the report.
    let quiet = [seq(0), seq(1)];
    std::thread::sleep(Duration::from_secs(5));
    let seq_before = [seq(0), seq(1)];
    let events_before = events(&state, OBSERVER).len();
    const FLAPS: u32 = 4;
    let started = Instant::now();
    let mut healed_at = 0;
    for flap in 0..FLAPS {
        // Each cut is seen down by both ends' own probes before the heal, and each heal up
        // before the next cut: every flap is a down of a good link, however slow the machine
        // (silence on the wire alone is not enough: an agent stalled through a whole cut
        // would see only loss), and each good spell is far shorter than the hold.
        multi::stable_set_cut(&state.paths.prefix, link.id, true).unwrap();
        for &e in &ends {
            poll(
                &format!("flap {flap}: end {e}'s probes to see the cut"),
                || (probe_alive(&state, e, link.id) == Some(false)).then_some(()),
            );
        }
        healed_at = unix_ms();
        multi::stable_set_cut(&state.paths.prefix, link.id, false).unwrap();
        for &e in &ends {
            poll(
                &format!("flap {flap}: end {e}'s probes to see the heal"),
                || (probe_alive(&state, e, link.id) == Some(true)).then_some(()),
            );
        }
        println!("flap {flap}: healed for {} ms", unix_ms() - healed_at);
    }
    // The hold doubles with each down within a half-life (the flaps take seconds): after the
    // first down it is hold_initial, after the last hold_initial * 2^(FLAPS - 1).
    let hold_ms = (section.hold_initial_ms << (FLAPS - 1)).min(section.hold_max_ms);
    let mut up_seen = [None; 2];
    poll(
        "both ends' records to say link 1 is up again at region 4",
        || {
            for (i, &e) in ends.iter().enumerate() {
                if up_seen[i].is_none() {
                    let (health, seq) =
                        reported(&state, OBSERVER, &state.agents[e].gateway, link.id)?;
                    if health != RoutingHealth::Down {
                        up_seen[i] = Some((unix_ms(), seq));
                    }
                }
            }
            up_seen.iter().all(Option::is_some).then_some(())
        },
    );
    let phase = started.elapsed();
    for (i, seen) in up_seen.iter().enumerate() {
        let (at, seq) = seen.unwrap();
        let gateway = &state.agents[ends[i]].gateway;
        println!(
            "{gateway}: link 1 up at region 4 {} ms after the last heal (hold {hold_ms} ms); \
             {} records originated in 5 quiet seconds before, {} over the {FLAPS} flaps and \
             the hold ({:.1} s)",
            at - healed_at,
            seq_before[i] - quiet[i],
            seq - seq_before[i],
            phase.as_secs_f64()
        );
        assert!(
            at >= healed_at + hold_ms,
            "{gateway} announced link 1 up {} ms after the last heal: the hold is {hold_ms} ms",
            at - healed_at
        );
    }
    // What the network saw of link 1 (region 4's events, every change of its health there):
    // one down and one up, where each flap undamped would have been a down and an up. Before
    // the down, degraded spells (the loss rose before the probes' detection); in 2 of 5 full
    // runs the first flap was only such a spell at region 4 though both ends' probes had
    // seen it down (the cause is not found: see the closing note of 2026-12-08).
    let seen: Vec<AgentEvent> = events(&state, OBSERVER)
        .split_off(events_before)
        .into_iter()
        .filter(|e| match e {
            AgentEvent::LinkDown { link: l, .. }
            | AgentEvent::LinkUp { link: l }
            | AgentEvent::LinkDegraded { link: l, .. }
            | AgentEvent::LinkRecovered { link: l } => *l == link.id,
            _ => false,
        })
        .collect();
    println!("region 4's changes of link 1: {seen:?}");
    let (before, last_two) = seen.split_at(seen.len().saturating_sub(2));
    assert!(
        matches!(
            last_two,
            [AgentEvent::LinkDown { .. }, AgentEvent::LinkUp { .. }]
        ) && before.iter().all(|e| matches!(
            e,
            AgentEvent::LinkDegraded { .. } | AgentEvent::LinkRecovered { .. }
        )),
        "{seen:#?}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn the_records_of_a_gateway_gone_for_good_age_out() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    // Short lifetimes, so the test waits seconds and not the default minute.
    let section = LinkStateSection {
        refresh_interval_ms: 2_000,
        max_age_ms: 8_000,
        ..LinkStateSection::default()
    };
    let (state, _down) = lab("lsg", 5, section.clone());
    wait_full_databases(&state);
    const GONE: usize = 4;
    let gateway = state.agents[GONE].gateway.clone();
    let aged_before: Vec<u64> = (0..GONE)
        .map(|r| get::<LsdbView>(&state, r, "/v1/lsdb").records_aged_out)
        .collect();
    let killed = Instant::now();
    let state = live::kill_agent(&state, "5", WAIT).unwrap();
    let mut gone_after = BTreeMap::new();
    poll(&format!("{gateway}'s record to age out everywhere"), || {
        for r in 0..GONE {
            if let std::collections::btree_map::Entry::Vacant(e) = gone_after.entry(r) {
                let lsdb: LsdbView = get(&state, r, "/v1/lsdb");
                if lsdb.records.iter().all(|x| x.origin != gateway) {
                    e.insert(killed.elapsed());
                }
            }
        }
        (gone_after.len() == GONE).then_some(())
    });
    // Its last refresh was at most a refresh interval before the kill, and a copy lives for
    // the lifetime it was sent with: the record cannot go sooner than this.
    let earliest = Duration::from_millis(section.max_age_ms - section.refresh_interval_ms);
    for (r, after) in &gone_after {
        println!(
            "{}: {gateway}'s record gone {after:?} after the kill",
            state.agents[*r].region
        );
        assert!(
            *after >= earliest,
            "gone after {after:?}, before {earliest:?}"
        );
        let lsdb: LsdbView = get(&state, *r, "/v1/lsdb");
        assert!(lsdb.records_aged_out > aged_before[*r], "{lsdb:#?}");
        assert_eq!(lsdb.records.len(), GONE, "{lsdb:#?}");
    }
}

/// Transit gateways follow the ingress's source route, so no datagram comes back to a gateway
/// it has crossed, however the databases differ while links flap. (Before source routes, in
/// two runs on 2026-12-07, 634 datagrams were sent twice or more by a gateway here: 37,324 and
/// 37,406 repeated sends, each looping until its TTL ran out.)
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn no_datagram_reaches_a_gateway_twice_while_links_flap() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let (state, _down) = lab("lsl", 6, LinkStateSection::default());
    wait_full_databases(&state);
    let counter = LoopCounter::start(&state).unwrap();
    let flap = loops::flap_with_streams(&state, 1_000, 9100).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let count = counter.take();
    let sent = flap.sent;
    println!(
        "sent {sent} datagrams, {} delivered; {} sends by gateways seen on the wires, \
         {} of a datagram by a gateway that had sent it before ({} datagrams; by region: \
         {:?}); capture dropped {} frames",
        flap.delivered,
        count.sends,
        count.looped,
        count.datagrams_looped,
        count.looped_by,
        count.capture_drops
    );
    assert!(
        count.sends > sent,
        "the capture saw {} sends of {sent} datagrams: no transit?",
        count.sends
    );
    assert_eq!(count.looped, 0, "{count:?}");
}
