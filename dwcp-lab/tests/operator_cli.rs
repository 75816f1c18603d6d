//! The `dwcp` binary against a running API server (Unix socket in a temp dir, real watch
//! channel, a stand-in command loop with a real reservation manager and its file store), in
//! text and `--json`; and
//! `dwcp maps` against maps pinned by a real load of the fast path, next to `bpftool`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use dwcp_agent::agent::AgentEvent;
use dwcp_agent::agent::AgentHandle;
use dwcp_agent::agent::AgentSnapshot;
use dwcp_agent::agent::LinkHealth;
use dwcp_agent::api::ApiConfig;
use dwcp_agent::api::ApiContext;
use dwcp_agent::api::RunningApi;
use dwcp_cli::client::ApiClient;
use dwcp_cli::client::Endpoint;
use dwcp_common::{
    maps::names, ClassifierKey, ClassifierRule, LinkConfig, Neighbour, NeighbourKey, NextHop,
    PolicerKey, QosClass, QosPolicy, Route, VniEntry, LINK_F_MONITORED, NH_F_VALID, POLICE_DROP,
    QOS_F_REWRITE,
};
use dwcp_control::bandwidth::FileStore;
use dwcp_control::bandwidth::ManagerConfig;
use dwcp_control::bandwidth::Reservation;
use dwcp_control::bandwidth::ReservationManager;
use dwcp_dataplane::unpin_all;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Member;
use dwcp_dataplane::Pinning;
use dwcp_lab::fixtures::apply_commands;
use dwcp_lab::fixtures::network_of;
use dwcp_lab::fixtures::publish_reservations;
use dwcp_lab::fixtures::three_region_snapshot;
use dwcp_lab::fixtures::write_secret;
use dwcp_lab::fixtures::ApiTls;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

struct Agent {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    api: Option<RunningApi>,
    snapshot: watch::Sender<Arc<AgentSnapshot>>,
    events: broadcast::Sender<AgentEvent>,
    commands: Arc<AtomicUsize>,
}

const TOKEN: &str = "feedfacefeedfacefeedfacefeedface";

impl Agent {
    fn start() -> Agent {
        Self::start_with(false)
    }

    /// With `tcp`, the API is also served on 127.0.0.1 over TLS (its CA in `ca.pem`) behind
    /// the bearer token in `token`.
    fn start_with(tcp: bool) -> Agent {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let snapshot = three_region_snapshot();
        let (mut manager, _) = ReservationManager::open(
            Box::new(FileStore::new(dir.path().join("reservations.json"))),
            network_of(&snapshot),
            ManagerConfig::default(),
        )
        .unwrap();
        let (snap_tx, snap_rx) = watch::channel(Arc::new(snapshot));
        let (events, _) = broadcast::channel(16);
        publish_reservations(&mut manager, &snap_tx, &events);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let commands = Arc::new(AtomicUsize::new(0));
        write_secret(&dir.path().join("token"), format!("{TOKEN}\n").as_bytes());
        let tls = ApiTls::create(dir.path());
        let config = ApiConfig {
            socket: Some(dir.path().join("agent.sock")),
            tcp_listen: tcp.then(|| "127.0.0.1:0".parse().unwrap()),
            token_file: tcp.then(|| dir.path().join("token")),
            tls_cert: tcp.then_some(tls.cert),
            tls_key: tcp.then_some(tls.key),
            ..ApiConfig::default()
        };
        let handle = AgentHandle {
            snapshot: snap_rx,
            events: events.clone(),
            commands: cmd_tx,
        };
        let api = runtime.block_on(async {
            tokio::spawn(apply_commands(
                cmd_rx,
                snap_tx.clone(),
                events.clone(),
                manager,
                commands.clone(),
            ));
            let ctx = ApiContext::new(handle, &config);
            RunningApi::start(&config, ctx).await.unwrap()
        });
        Agent {
            runtime,
            dir,
            api: Some(api),
            snapshot: snap_tx,
            events,
            commands,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Runs `dwcp --socket <ours> --timeout 5 <args>`.
    fn dwcp(&self, args: &[&str]) -> Output {
        Command::new(dwcp_lab::bin("dwcp"))
            .arg("--socket")
            .arg(self.socket())
            .args(["--timeout", "5"])
            .args(args)
            .output()
            .expect("dwcp runs")
    }

    /// Runs dwcp, expecting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.dwcp(args);
        assert!(
            out.status.success(),
            "dwcp {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The API's own answer to `GET path`, as JSON.
    /// The reservations the agent published last.
    fn stored(&self) -> Vec<Reservation> {
        let s = self.snapshot.borrow();
        s.reservations.as_ref().unwrap().stored.clone()
    }

    fn api_json(&self, path: &str) -> Value {
        let client = ApiClient::new(Endpoint::Unix(self.socket()));
        self.runtime.block_on(client.get(path)).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            let _ = self.runtime.block_on(api.shutdown());
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn show_commands_print_tables_and_the_apis_json() {
    let agent = Agent::start();
    let cases: [(&[&str], &str, &[&str]); 10] = [
        (
            &["status"],
            "/v1/status",
            &["gateway gw-use1-a in us-east-1", "links: 2 up"],
        ),
        (
            &["show", "topology"],
            "/v1/topology",
            &[
                "regions: us-east-1, eu-west-1, ap-south-1",
                "use1-aps1",
                "800 Mbit/s",
            ],
        ),
        (
            &["show", "links"],
            "/v1/links",
            &[
                "RTT",
                "80.3 ms",
                "degraded",
                "unmeasured",
                "11160/12000",
                "PROJECTED",
                "45 %",
                "MEASURED BY",
                "gw-euw1-a (",
            ],
        ),
        (
            &["show", "lsdb"],
            "/v1/lsdb",
            &[
                "gateway gw-use1-a, topology 6477637064776370",
                "40 received, 52 flooded, 1 aged out",
                "gw-euw1-a",
                "120.2 ms",
                "degraded",
            ],
        ),
        (
            &["show", "flows"],
            "/v1/flows",
            &[
                "sampling 1 in 1000 packets",
                "10.1.0.5:40000",
                "10.2.0.9:5004",
                "realtime",
                "66.7 %",
            ],
        ),
        (
            &["show", "classes"],
            "/v1/classes",
            &["realtime", "RESERVED", "150 Mbit/s", "4 Mbit/s"],
        ),
        (
            &["show", "routes"],
            "/v1/routes",
            &[
                "ap-south-1 (10.3.0.0/16)",
                "why: min latency 200.3 ms",
                "secondary",
            ],
        ),
        (
            &["show", "tunnels"],
            "/v1/tunnels",
            &["wg-euw1", "wireguard", "12 s ago"],
        ),
        (
            &["show", "reservations"],
            "/v1/reservations",
            &["no reservations"],
        ),
        (
            &["show", "history"],
            "/v1/history",
            &[
                "2023-11-14 22:14:20",
                "link 3 degraded (loss 7 %)",
                "1,2 | 3",
            ],
        ),
    ];
    for (args, path, needles) in cases {
        let text = agent.ok(args);
        for needle in needles {
            assert!(
                text.contains(needle),
                "dwcp {args:?}: no {needle:?} in\n{text}"
            );
        }
        let mut json_args = args.to_vec();
        json_args.push("--json");
        let json: Value = serde_json::from_str(&agent.ok(&json_args)).unwrap();
        let mut from_api = agent.api_json(path);
        if path == "/v1/status" {
            // Uptime moves between the two requests.
            from_api["uptime_seconds"] = json["uptime_seconds"].clone();
        }
        assert_eq!(json, from_api, "dwcp {json_args:?}");
    }
    // One item, by id or name.
    let one = agent.ok(&["show", "links", "use1-aps1"]);
    assert_eq!(one.lines().count(), 2, "{one}");
    assert!(agent
        .ok(&["show", "routes", "eu-west-1"])
        .contains("eu-west-1 (10.2.0.0/16)"));
    let last = agent.ok(&[
        "show",
        "history",
        "--destination",
        "ap-south-1",
        "--limit",
        "1",
    ]);
    assert_eq!(last.lines().count(), 2, "{last}");
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn errors_name_the_item_and_exit_non_zero() {
    let agent = Agent::start();
    let out = agent.dwcp(&["show", "links", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("link \"nowhere\" not found (HTTP 404)"),
        "{err}"
    );
    let out = agent.dwcp(&["reserve", "cancel", "41"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reservation 41 not found"));
    // Membership needs the cluster store; this agent keeps its own files.
    let out = agent.dwcp(&["show", "gateways"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this gateway keeps no cluster store ([store] kind = \"file\")"),
        "{err}"
    );
    let out = Command::new(dwcp_lab::bin("dwcp"))
        .args([
            "--socket",
            "/nonexistent/dwcp.sock",
            "--timeout",
            "2",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot reach the agent at /nonexistent/dwcp.sock"));
    let out = agent.dwcp(&[
        "reserve",
        "add",
        "--from",
        "us-east-1",
        "--to",
        "eu-west-1",
        "--class",
        "realtime",
        "--rate",
        "10M",
        "--end",
        "next week",
        "--path",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"next week\" is not a time"));
    assert_eq!(agent.stored().len(), 0);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn reserve_extend_and_cancel() {
    let agent = Agent::start();
    let text = agent.ok(&[
        "reserve",
        "add",
        "--from",
        "us-east-1",
        "--to",
        "ap-south-1",
        "--class",
        "bulk",
        "--rate",
        "250M",
        "--end",
        "+2h",
        "--path",
        "1,2",
        "--owner",
        "backup",
    ]);
    assert!(
        text.contains("250 Mbit/s") && text.contains("backup") && text.contains("active"),
        "{text}"
    );
    let stored = agent.stored();
    assert_eq!(stored.len(), 1);
    let r = &stored[0];
    assert_eq!(r.path.iter().map(|l| l.0).collect::<Vec<_>>(), vec![1, 2]);
    let id = r.id.0.to_string();
    let json: Value =
        serde_json::from_str(&agent.ok(&["reserve", "extend", &id, "--end", "+3h", "--json"]))
            .unwrap();
    // "+2h" then "+3h", each from its own command's clock: an hour later, plus the seconds
    // between the two commands (CI: a second boundary fell between them).
    let extended = json["reservation"]["end"].as_u64().unwrap();
    assert!(
        (r.end + 3600..=r.end + 3605).contains(&extended),
        "end {} extended to {extended}",
        r.end
    );
    assert!(agent.ok(&["show", "reservations", &id]).contains("backup"));
    assert!(agent
        .ok(&["reserve", "cancel", &id])
        .contains(&format!("cancelled reservation {id}")));
    assert_eq!(agent.stored().len(), 0);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn link_down_waits_for_the_agent_to_show_it() {
    let agent = Agent::start();
    let text = agent.ok(&["link", "down", "use1-aps1"]);
    assert_eq!(text, "link 3 (use1-aps1) is administratively down\n");
    let link = agent.api_json("/v1/links/3");
    assert_eq!(link["health"], "admin_down");
    let json: Value = serde_json::from_str(&agent.ok(&["link", "up", "3", "--json"])).unwrap();
    assert_eq!(json["state"], "up");
    assert_eq!(agent.snapshot.borrow().links[2].health, LinkHealth::Up);
    assert_eq!(agent.commands.load(Ordering::SeqCst), 2);
    let out = agent.dwcp(&["link", "down", "99"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("link \"99\" not found"));
    assert_eq!(agent.commands.load(Ordering::SeqCst), 2);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn events_follow_the_stream() {
    let agent = Agent::start();
    let child = Command::new(dwcp_lab::bin("dwcp"))
        .arg("--socket")
        .arg(agent.socket())
        .args(["events", "--count", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut subscribed = false;
    for _ in 0..500 {
        if agent.events.receiver_count() > 0 {
            subscribed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(subscribed, "dwcp events subscribed");
    agent.events.send(AgentEvent::LinkUp { link: 1 }).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["event"], "agent");
    assert_eq!(line["data"]["kind"], "link_up");
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(dwcp_lab::bin("dwcp"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("dwcp") && script.contains("reservations"),
            "{shell}"
        );
    }
}

/// A pin directory unique to this test run, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = unpin_all(&self.0);
    }
}

fn bpftool_dump(path: &Path) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Every field we print equals bpftool's (bpftool also prints the padding fields).
fn same_fields(ours: &Value, theirs: &Value) -> bool {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => o
            .iter()
            .all(|(k, v)| t.get(k).is_some_and(|tv| same_fields(v, tv))),
        _ => ours == theirs,
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn maps_decodes_the_pinned_maps_as_bpftool_does() {
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/dwcp-clitest-{}",
        std::process::id()
    )));
    let mut dp = Dataplane::load(Pinning::Dir(dir.0.clone())).unwrap();
    dp.set_nexthop(
        9,
        NextHop {
            flags: NH_F_VALID,
            link_id: 3,
            ifindex: 7,
            vni: 4242,
            local_ip4: [192, 0, 2, 10],
            remote_ip4: [203, 0, 113, 10],
            via_ip4: [203, 0, 113, 10],
            mtu: 1600,
            inner_dst_mac: [2, 0, 0, 0, 0, 1],
            _pad: [0; 2],
        },
    )
    .unwrap();
    dp.set_group(
        5,
        &[Member {
            nexthop: 9,
            weight: 1,
            path: Default::default(),
        }],
    )
    .unwrap();
    dp.set_route(
        "10.3.0.0".parse().unwrap(),
        16,
        Route {
            group_id: 5,
            default_class: QosClass::Bulk as u8,
            _pad: [0; 3],
        },
    )
    .unwrap();
    dp.set_neighbour(
        NeighbourKey {
            ifindex: 7,
            ip4: [203, 0, 113, 10],
        },
        Neighbour {
            mac: [2, 0, 0, 0, 0, 2],
            if_mac: [2, 0, 0, 0, 0, 3],
            _pad: [0; 4],
        },
    )
    .unwrap();
    dp.set_link_config(
        3,
        LinkConfig {
            flags: LINK_F_MONITORED,
            up_after: 5,
            detect_ns: 30_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    dp.add_vni(
        4242,
        VniEntry {
            link_id: 3,
            flags: 0,
        },
    )
    .unwrap();
    dp.set_qos_policy(
        QosClass::Realtime as u8,
        QosPolicy {
            dscp: 46,
            flags: QOS_F_REWRITE,
            _pad: [0; 6],
        },
    )
    .unwrap();
    dp.set_classifier_rule(
        ClassifierKey {
            proto: 17,
            direction: 0,
            port: 5004,
        },
        ClassifierRule {
            class: QosClass::Realtime as u8,
            _pad: [0; 3],
        },
    )
    .unwrap();
    dp.set_policer(
        PolicerKey {
            group_id: 5,
            class: QosClass::Bulk as u8,
            _pad: [0; 3],
        },
        1_250_000,
        15_000,
        POLICE_DROP,
    )
    .unwrap();

    let out = Command::new(dwcp_lab::bin("dwcp"))
        .args(["maps", "--json", "--pin-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumps: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dumps.len(), names::ALL.len());
    let dump = |name: &str| dumps.iter().find(|d| d["name"] == name).unwrap().clone();

    // Field by field, what we decode is what bpftool decodes from BTF.
    for name in [
        names::CONFIG,
        names::NEXTHOPS,
        names::ROUTES_V4,
        names::NEIGHBOURS,
        names::LINK_CONFIG,
        names::VNIS,
        names::QOS_POLICY,
        names::CLASSIFIER,
        names::POLICERS,
        names::CLASS_PORTS,
    ] {
        let ours = dump(name);
        let entries = ours["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{name}: {ours}");
        let theirs = bpftool_dump(&dir.0.join(name));
        let formatted: Vec<&Value> = theirs.iter().map(|e| &e["formatted"]).collect();
        let found = formatted.iter().any(|f| {
            same_fields(&entries[0]["key"], &f["key"])
                && same_fields(&entries[0]["value"], &f["value"])
        });
        assert!(
            found,
            "{name}: ours {} not among bpftool's {:?}",
            entries[0], formatted
        );
        assert_eq!(
            ours["bpftool"],
            format!("bpftool map dump pinned {}", dir.0.join(name).display())
        );
    }
    // Group 5 written once: its table is in slot 1 (index 2 * 5 + 1), in force.
    let groups = dump(names::NH_GROUPS);
    assert_eq!(groups["entries"][0]["key"], 11);
    assert_eq!(groups["entries"][0]["value"]["group"], 5);
    assert_eq!(groups["entries"][0]["value"]["slot"], 1);
    let active = dump(names::NH_ACTIVE);
    assert_eq!(active["entries"][0]["key"], 5);
    assert_eq!(active["entries"][0]["value"], 1);
    assert_eq!(groups["entries"][0]["value"]["buckets_per_member"][0], 1021);

    // The text view reads as an operator writes these things.
    let text = Command::new(dwcp_lab::bin("dwcp"))
        .args(["maps", "--pin-dir"])
        .arg(&dir.0)
        .args([
            "nexthops",
            "routes_v4",
            "qos_policy",
            "link_config",
            "class_ports",
            "policers",
            "nh_groups",
        ])
        .output()
        .unwrap();
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in [
        "nexthop 9: valid link 3 if 7 vni 4242 192.0.2.10 -> 203.0.113.10 via 203.0.113.10 mtu 1600 inner dst 02:00:00:00:00:01",
        "10.3.0.0/16 -> group 5 default class bulk",
        "realtime: dscp 46 (rewritten)",
        "link 3: monitored up after 5 replies, dead after 30 ms without one",
        "$ bpftool map dump pinned",
        "ports 5004",
        "bulk to group 5: 10000000 bit/s burst 15000 B, over rate dropped",
        "group 5 (slot 1): nexthop 9 (1021 of 1021 buckets)",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    let bad = Command::new(dwcp_lab::bin("dwcp"))
        .args(["maps", "--pin-dir", "/sys/fs/bpf/dwcp-no-such-dir"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot open the pin"));
    drop(dp);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn the_tcp_api_takes_the_token_from_a_file_over_tls() {
    let agent = Agent::start_with(true);
    let addr = agent.api.as_ref().unwrap().tcp_addr.unwrap().to_string();
    let ca = agent.dir.path().join("ca.pem");
    let run = |token_file: Option<&Path>| {
        let mut cmd = Command::new(dwcp_lab::bin("dwcp"));
        cmd.args(["--api", &addr, "--timeout", "5", "show", "links", "--json"]);
        cmd.arg("--ca-file").arg(&ca);
        if let Some(f) = token_file {
            cmd.arg("--token-file").arg(f);
        }
        cmd.output().unwrap()
    };
    let no_ca = Command::new(dwcp_lab::bin("dwcp"))
        .args(["--api", &addr, "show", "links"])
        .output()
        .unwrap();
    assert_eq!(no_ca.status.code(), Some(1));
    let err = String::from_utf8_lossy(&no_ca.stderr);
    assert!(err.contains("served over TLS: add --ca-file FILE"), "{err}");
    let ok = run(Some(&agent.dir.path().join("token")));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let links: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 3);
    let anonymous = run(None);
    assert_eq!(anonymous.status.code(), Some(1));
    let err = String::from_utf8_lossy(&anonymous.stderr);
    assert!(err.contains("missing bearer token"), "{err}");
    assert!(err.contains("add --token-file FILE"), "{err}");
    let wrong = agent.dir.path().join("wrong");
    std::fs::write(&wrong, "0000000000000000000000000000000000").unwrap();
    let refused = run(Some(&wrong));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong bearer token (HTTP 401)"));
}
