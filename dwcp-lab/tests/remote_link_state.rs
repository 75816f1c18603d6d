//! Link state in the three-region lab of `cargo xtask lab`: real agents flood their records
//! over the links themselves. A cut of us-east-1 -- eu-west-1 reaches ap-south-1, which
//! terminates neither end: its database shows the link down in a record of one of its ends,
//! its routes leave the link with a reason that names the link and that end, and after the
//! heal the link comes back no sooner than the damping hold. A restarted agent has every
//! record again shortly after it starts. Its own namespace prefix, state directory and pin
//! root (with the pid), removed by a guard also when the test fails.
//!
//! Every wait is for a mechanism (a record, a route, a reason), with a generous deadline; the
//! one comparison of times is a lower bound (the hold), which a stalled machine only widens.

use std::{path::PathBuf, time::Duration};

use dwcp_agent::agent::{LinkHealth, LinkView, LsdbView, RouteChange, RouteView};
use dwcp_control::config::LinkStateSection;
use dwcp_control::topology::RoutingHealth;
use dwcp_lab::lab::live::{self, LabPaths, LabState, UpOptions};

/// Generous: agents start and probes converge on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(90);
const GATEWAYS: [&str; 3] = ["gw-aps1-a", "gw-euw1-a", "gw-use1-a"];
const US: usize = 0;
const AP: usize = 2;

struct Down(LabPaths);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = live::down(&self.0);
    }
}

fn get<T: serde::de::DeserializeOwned>(state: &LabState, region: usize, path: &str) -> T {
    live::api_get(&state.agents[region].socket, path).unwrap()
}

/// Polls `f` until it gives a value; panics naming `what` after [`WAIT`].
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn origins(lsdb: &LsdbView) -> Vec<&str> {
    lsdb.records.iter().map(|r| r.origin.as_str()).collect()
}

/// The links of every path (active and standby) of every route of `region`.
fn paths(state: &LabState, region: usize) -> Vec<Vec<u32>> {
    let routes: Vec<RouteView> = get(state, region, "/v1/routes");
    routes
        .iter()
        .flat_map(|r| r.paths.iter().map(|p| p.links.clone()))
        .collect()
}

fn paths_to(state: &LabState, region: usize, dest: &str) -> Vec<Vec<u32>> {
    let routes: Vec<RouteView> = get(state, region, "/v1/routes");
    routes
        .iter()
        .filter(|r| r.destination == dest)
        .flat_map(|r| r.paths.iter().map(|p| p.links.clone()))
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
fn a_remote_cut_reroutes_the_third_region_and_a_restarted_agent_resynchronises() {
    let pid = std::process::id();
    let paths_of_lab = LabPaths {
        prefix: format!("dwcp-rls{pid}"),
        state_dir: std::env::temp_dir().join(format!("dwcp-lab-rls-{pid}")),
        pin_root: PathBuf::from(format!("/sys/fs/bpf/dwcp-lab-rls-{pid}")),
    };
    let _down = Down(paths_of_lab.clone());
    let agent = dwcp_lab::bin("dwcp-agent");
    let mut opts = UpOptions::new(3, &agent);
    opts.timeout = WAIT;
    let state = live::up(&paths_of_lab, &opts, &mut |m| println!("up: {m}")).unwrap();
    assert_eq!(state.agents[AP].region, "ap-south-1");

    // Every agent hears every other's record.
    for r in 0..3 {
        poll(&format!("{}'s database", state.agents[r].region), || {
            let lsdb: LsdbView = get(&state, r, "/v1/lsdb");
            (origins(&lsdb) == GATEWAYS).then_some(())
        });
    }
    // The case: ap-south-1 reaches us-east-1 over two 200 ms paths, one through the
    // link about to be cut.
    assert!(
        paths_to(&state, AP, "us-east-1").contains(&vec![2, 1]),
        "{:?}",
        paths_to(&state, AP, "us-east-1")
    );

    // Cut us-east-1 -- eu-west-1; `fail` returns once both of its ends route around it.
    let link = live::find_link(&state, "us-east-1", Some("eu-west-1")).unwrap();
    assert_eq!(link.id, 1);
    live::fail(&state, &link, WAIT).unwrap();
    let reporter = poll("ap-south-1's database to show link 1 down", || {
        let lsdb: LsdbView = get(&state, AP, "/v1/lsdb");
        lsdb.records
            .iter()
            .find(|r| {
                r.links
                    .iter()
                    .any(|l| l.link.0 == 1 && l.health == RoutingHealth::Down)
            })
            .map(|r| r.origin.clone())
    });
    assert!(
        ["gw-use1-a", "gw-euw1-a"].contains(&reporter.as_str()),
        "link 1 reported down by {reporter}, not an end"
    );
    poll("ap-south-1 to show link 1 down", || {
        let links: Vec<LinkView> = get(&state, AP, "/v1/links");
        links
            .iter()
            .any(|l| l.id == 1 && l.health == LinkHealth::Down)
            .then_some(())
    });
    poll("ap-south-1's routes to leave link 1", || {
        (!paths(&state, AP).iter().any(|p| p.contains(&1))).then_some(())
    });
    assert_eq!(paths_to(&state, AP, "us-east-1"), vec![vec![3]]);
    let history: Vec<RouteChange> = get(&state, AP, "/v1/history?destination=us-east-1");
    let left = history
        .iter()
        .rev()
        .find(|c| c.before.contains(&vec![2, 1]) && !c.after.contains(&vec![2, 1]))
        .unwrap_or_else(|| panic!("no change leaving link 1: {history:#?}"));
    println!("ap-south-1 left link 1: {}", left.reason);
    assert!(
        left.reason
            .contains("link 1 (use1-euw1) down: reported by gw-"),
        "{}",
        left.reason
    );

    // Heal: link 1 comes back into ap-south-1's routes once both ends announce it up, which
    // they do only after it has been good for the hold.
    let hold_ms = LinkStateSection::default().hold_initial_ms;
    let healed_at = unix_ms();
    live::heal(&state, &link, WAIT).unwrap();
    poll("ap-south-1's route to us-east-1 over link 1 again", || {
        paths_to(&state, AP, "us-east-1")
            .contains(&vec![2, 1])
            .then_some(())
    });
    let history: Vec<RouteChange> = get(&state, AP, "/v1/history?destination=us-east-1");
    let back = history
        .iter()
        .rev()
        .find(|c| c.after.contains(&vec![2, 1]))
        .unwrap();
    println!(
        "ap-south-1 back on link 1 {} ms after the heal: {}",
        back.at_unix_ms - healed_at,
        back.reason
    );
    assert!(
        back.reason.contains("link 1 (use1-euw1) up"),
        "{}",
        back.reason
    );
    assert!(
        back.at_unix_ms >= healed_at + hold_ms,
        "link 1 back at ap-south-1 {} ms after the heal: the hold is {hold_ms} ms",
        back.at_unix_ms - healed_at
    );

    // A restarted agent resynchronises: its database has every record again, and its own
    // record has jumped above the number it had before the restart.
    let ours = |lsdb: &LsdbView| {
        lsdb.records
            .iter()
            .find(|r| r.origin == "gw-aps1-a")
            .map(|r| r.seq)
    };
    let before: LsdbView = get(&state, AP, "/v1/lsdb");
    let seq_before = ours(&before).unwrap();
    let state = live::restart_agent(&state, "ap-south-1", &agent, WAIT).unwrap();
    poll("the restarted agent's database", || {
        let lsdb: LsdbView = live::api_get(&state.agents[AP].socket, "/v1/lsdb").ok()?;
        (origins(&lsdb) == GATEWAYS && ours(&lsdb)? > seq_before).then_some(())
    });
    // And routes as before the cut, link 1 included.
    poll("the restarted agent's routes", || {
        paths_to(&state, AP, "us-east-1")
            .contains(&vec![2, 1])
            .then_some(())
    });
    assert!(paths(&state, US).iter().any(|p| p == &vec![1]));
}
