//! The operator's view of real agents: the three-region lab with one `dwcp-agent` per gateway;
//! `dwcp` talks to a running agent's API socket, and a real Prometheus, started in a gateway's
//! namespace, scrapes that agent's /metrics. Everything is removed when the lab drops.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use dwcp_lab::lab::triangle::TriangleLab;
use dwcp_lab::lab::triangle::TriangleOptions;
use dwcp_lab::lab::triangle::LAB_METRICS;
use serde_json::Value;

fn agent_bin() -> std::path::PathBuf {
    dwcp_lab::bin("dwcp-agent")
}
fn dwcp_bin() -> std::path::PathBuf {
    dwcp_lab::bin("dwcp")
}
const WAIT: Duration = Duration::from_secs(60);

fn dwcp(socket: &Path, args: &[&str]) -> Output {
    Command::new(dwcp_bin())
        .arg("--socket")
        .arg(socket)
        .args(["--timeout", "10"])
        .args(args)
        .output()
        .expect("dwcp runs")
}

fn ok(socket: &Path, args: &[&str]) -> String {
    let out = dwcp(socket, args);
    assert!(
        out.status.success(),
        "dwcp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `f` until it returns Some, at most WAIT.
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what} did not happen within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_running_agent_answers_dwcp_and_prometheus_scrapes_it() {
    // Detection after 10 probes, not 3: a prober starved for 30 ms on a busy 2-core machine
    // would flap a link, and failover is not what this test is about.
    let mut lab = TriangleLab::build(
        "opl",
        &agent_bin(),
        TriangleOptions {
            detect_multiplier: 10,
            ..Default::default()
        },
    )
    .unwrap();
    for r in 0..3 {
        lab.start_agent(r, &[]).unwrap();
    }
    let socket = lab.api_socket(0);

    // The agent's links come up as its probes are answered.
    let links: Vec<Value> = wait("gateway 1's local links up", || {
        let out = dwcp(&socket, &["show", "links", "--json"]);
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        let local: Vec<Value> = links
            .into_iter()
            .filter(|l| !l["interface"].is_null())
            .collect();
        (local.len() == 2 && local.iter().all(|l| l["health"] == "up")).then_some(local)
    });
    for l in &links {
        let rtt = l["rtt_seconds"].as_f64().expect("a measured RTT");
        assert!(rtt > 0.0 && rtt < 0.1, "RTT of a veth link: {rtt} s");
    }
    let status = ok(&socket, &["status"]);
    assert!(
        status.contains("gateway gw-use1-a in us-east-1"),
        "{status}"
    );
    let routes = wait("routes to both other regions", || {
        let text = ok(&socket, &["show", "routes"]);
        (text.contains("eu-west-1 (10.2.0.0/24)") && text.contains("ap-south-1 (10.3.0.0/24)"))
            .then_some(text)
    });
    assert!(routes.contains("why:"), "{routes}");
    let table = ok(&socket, &["show", "links"]);
    assert!(
        table.contains("use1-euw1") && table.contains(" up "),
        "{table}"
    );

    // Administratively down and up again, through the agent's command loop.
    let down = ok(&socket, &["link", "down", "use1-aps1"]);
    assert_eq!(down, "link 3 (use1-aps1) is administratively down\n");
    let l3: Value = serde_json::from_str(&ok(&socket, &["show", "links", "3", "--json"])).unwrap();
    assert_eq!(l3["health"], "admin_down");
    ok(&socket, &["link", "up", "use1-aps1"]);
    let back = Instant::now();
    wait("link 3 up again once its probes are answered", || {
        let l3: Value =
            serde_json::from_str(&ok(&socket, &["show", "links", "3", "--json"])).ok()?;
        (l3["health"] == "up").then_some(())
    });
    println!("link 3 up {:?} after `link up`", back.elapsed());

    // A real Prometheus in gateway 1's namespace scrapes the agent there.
    let gw = &lab.regions[0].gw;
    let prom_dir = tempfile::tempdir().unwrap();
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: dwcp\n    static_configs:\n      - targets: ['{LAB_METRICS}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(prom_dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new("ip")
            .args(["netns", "exec", gw.name(), "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs"),
    );
    let query = |promql: &str| -> Option<Value> {
        let out = gw
            .exec(&[
                "curl",
                "-sf",
                "--max-time",
                "2",
                "--get",
                "--data-urlencode",
                &format!("query={promql}"),
                "http://127.0.0.1:9090/api/v1/query",
            ])
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    // Prometheus sees what the agent sees once a scrape after `link up` has landed: every
    // link up with its RTT (its own two as its probes measure them, link 2 as the other
    // gateways' link-state records report it), both other regions reachable. (Link 3 is up
    // again only after its probes are answered; a snapshot right after the command may still
    // show it down.)
    let rtts = wait(
        "Prometheus to have every link up, their RTTs and both regions",
        || {
            let rtts = query("dwcp_link_rtt_seconds")?["data"]["result"]
                .as_array()?
                .clone();
            let up = query("dwcp_link_health{state=\"up\"} == 1")?["data"]["result"]
                .as_array()?
                .len();
            let reachable = query("sum(dwcp_region_reachable)")?;
            (rtts.len() == 3 && up == 3 && reachable["data"]["result"][0]["value"][1] == "2")
                .then_some(rtts)
        },
    );
    for s in &rtts {
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(v > 0.0 && v < 0.1, "{s}");
        assert!(["use1-euw1", "use1-aps1", "euw1-aps1"]
            .contains(&s["metric"]["link"].as_str().unwrap()));
    }
    let probes = query("dwcp_link_probes_received_total").unwrap();
    assert!(!probes["data"]["result"].as_array().unwrap().is_empty());
    // `promtool check metrics` on the running agent's own output reports nothing.
    let scrape = gw
        .exec(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            &format!("http://{LAB_METRICS}/metrics"),
        ])
        .unwrap();
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), &scrape.stdout).unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}
