//! The WireGuard hand-off end to end with the real daemon: a `dwcp-agent` process whose
//! configuration has a `kind = "wireguard"` local link programs gateway A's fast path and its
//! policy routing; a real `wireguard-go` tunnel (made by the tunnel manager) joins A and B.
//!
//! ```text
//!   h1 ──eth0/lan0── A ══ wga (wireguard-go) ══ wgb ── B ──lan0/eth0── h2
//!   10.1.0.2/24         └─ua 192.0.2.1/30 ── ub 192.0.2.2/30─┘         10.2.0.2/24
//! ```
//!
//! H1 sends UDP to H2: A's LAN XDP program finds the hand-off next hop (NH_F_HANDOFF), records
//! the flow's mark in `HANDOFF_FLOWS`, `dwcp_lan_tc` looks it up and sets `skb->mark`, the daemon's rule
//! `fwmark 0x64770001 lookup 20001` and its route `default dev wga table 20001` send it into
//! wireguard-go, and B's kernel forwards it to H2. A's main table has no route to H2's
//! network, so nothing crosses without the mark: checked before the daemon starts and after
//! `dwcp-agent --remove`, and the fast path's own counters must account for every datagram.
//!
//! Every namespace, wireguard-go daemon, key file and pin is removed when the test ends, also
//! when it fails (`Lab`'s `Drop`). Needs root, `wireguard-go` and `nft`.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use dwcp_agent::agent::AgentEvent;
use dwcp_agent::agent::TunnelView;
use dwcp_common::Reason;
use dwcp_dataplane::unpin_all;
use dwcp_dataplane::unpin_links;
use dwcp_lab::lab::triangle::PinnedCounters;
use dwcp_lab::netlab;
use dwcp_lab::netlab::Netns;
use dwcp_tunnels::spec::Underlay;
use dwcp_tunnels::spec::WireGuardPeerSpec;
use dwcp_tunnels::spec::WireGuardSpec;
use dwcp_tunnels::ManagerConfig;
use dwcp_tunnels::NetnsTarget;
use dwcp_tunnels::TunnelKind;
use dwcp_tunnels::TunnelManager;
use dwcp_tunnels::TunnelSpec;
use dwcp_tunnels::WireGuardImpl;

fn agent_bin() -> std::path::PathBuf {
    dwcp_lab::bin("dwcp-agent")
}
/// Generous: this 2-core machine is shared with benchmarks.
const WAIT: Duration = Duration::from_secs(60);
/// The link's default hand-off: `HANDOFF_FWMARK_BASE + 1`, `HANDOFF_TABLE_BASE + 1`.
const MARK: u32 = 0x6477_0001;
const TABLE: u32 = 20_001;
const H2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const A_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Where the agent serves /metrics, on the loopback of A's namespace.
const METRICS: &str = "127.0.0.1:9471";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The tests take turns: each runs daemons and wireguard-go, and the machine is small.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device name unique on the host (wireguard-go's UAPI socket directory is shared by all
/// namespaces): tag + pid + counter, at most 15 bytes.
fn ifname(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id())
}

/// Everything the test creates; `Drop` removes it in an order that works (processes first,
/// then pins, then key files and namespaces).
struct Lab {
    agent: Option<Child>,
    /// Gateway B's agent, in the test with both ends probing.
    agent_b: Option<Child>,
    pins: PathBuf,
    wga: String,
    wgb: String,
    // Field order is drop order (after `Drop::drop`): the managers, their state and key
    // directories (in `dir`), then the namespaces.
    mgr_a: TunnelManager,
    mgr_b: TunnelManager,
    dir: tempfile::TempDir,
    h1: Netns,
    ga: Netns,
    gb: Netns,
    h2: Netns,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut a in [self.agent.take(), self.agent_b.take()]
            .into_iter()
            .flatten()
        {
            let _ = a.kill();
            let _ = a.wait();
        }
        for pins in [self.pins.clone(), self.pins_b()] {
            let _ = unpin_links(&pins);
            let _ = unpin_all(&pins);
            let _ = std::fs::remove_dir_all(&pins);
        }
        // wireguard-go outlives a deleted namespace (its sockets keep it alive): stop the
        // daemons of this test's namespaces before they go.
        for ns in [&self.ga, &self.gb] {
            for (pid, cmd) in ns.processes() {
                if cmd.contains("wireguard-go") {
                    // SAFETY: kill(2) on a daemon this test started inside its own namespace.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && [&self.ga, &self.gb].iter().any(|ns| {
                ns.processes()
                    .iter()
                    .any(|(_, c)| c.contains("wireguard-go"))
            })
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::env::var_os("DWCP_KEEP_LAB_LOGS").is_some() {
            eprintln!("agent log: {}", self.log());
        }
    }
}

fn wireguard(name: &str, address: &str, port: u16, peer: PeerEnd) -> TunnelSpec {
    TunnelSpec {
        name: name.to_string(),
        addresses: vec![address.parse().unwrap()],
        underlay: Underlay::default(),
        mss_clamp: true,
        kind: TunnelKind::WireGuard(WireGuardSpec {
            listen_port: port,
            peer: WireGuardPeerSpec {
                public_key: peer.key,
                endpoint: Some(peer.endpoint),
                allowed_ips: peer
                    .allowed_ips
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect(),
                persistent_keepalive: Some(25),
                preshared_key_file: None,
            },
            // The agent installs A's policy routing, not the tunnel manager.
            handoff: None,
        }),
    }
}

struct PeerEnd {
    key: dwcp_tunnels::PublicKey,
    endpoint: SocketAddr,
    allowed_ips: &'static [&'static str],
}

impl Lab {
    async fn build() -> Lab {
        netlab::sweep_stale();
        let h1 = Netns::new("wge-h1").unwrap();
        let ga = Netns::new("wge-ga").unwrap();
        let gb = Netns::new("wge-gb").unwrap();
        let h2 = Netns::new("wge-h2").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let k = SEQ.fetch_add(1, Ordering::Relaxed);
        let pins = PathBuf::from(format!("/sys/fs/bpf/dwcp-wge2e-{}-{k}", std::process::id()));
        let manager = |ns: &Netns, sub: &str| ManagerConfig {
            netns: NetnsTarget::named(ns.name()),
            state_dir: dir.path().join(sub),
            wireguard: WireGuardImpl::Auto,
        };
        let mgr_a = TunnelManager::new(manager(&ga, "tunnels-a")).await.unwrap();
        let mgr_b = TunnelManager::new(manager(&gb, "tunnels-b")).await.unwrap();
        let lab = Lab {
            agent: None,
            agent_b: None,
            pins,
            wga: ifname("wga"),
            wgb: ifname("wgb"),
            mgr_a,
            mgr_b,
            dir,
            h1,
            ga,
            gb,
            h2,
        };
        // Underlay, LANs, hosts.
        netlab::veth(&lab.ga, "ua", &lab.gb, "ub").unwrap();
        netlab::addr(&lab.ga, "ua", &format!("{A_UNDERLAY}/30")).unwrap();
        netlab::addr(&lab.gb, "ub", &format!("{B_UNDERLAY}/30")).unwrap();
        for (host, gw, n) in [(&lab.h1, &lab.ga, 1), (&lab.h2, &lab.gb, 2)] {
            netlab::veth(host, "eth0", gw, "lan0").unwrap();
            netlab::addr(host, "eth0", &format!("10.{n}.0.2/24")).unwrap();
            netlab::addr(gw, "lan0", &format!("10.{n}.0.1/24")).unwrap();
            host.ip(&["route", "add", "default", "via", &format!("10.{n}.0.1")])
                .unwrap();
            gw.sysctl("net.ipv4.ip_forward", "1").unwrap();
            // Traffic comes back out of the tunnel with a source the main table may not
            // route there.
            gw.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
            gw.sysctl("net.ipv4.conf.default.rp_filter", "0").unwrap();
        }
        // The tunnel: wireguard-go in both gateways, keepalive 25 s (so the agent measures
        // the handshake age of link 1).
        let key_a = lab.mgr_a.public_key(&lab.wga).unwrap();
        let key_b = lab.mgr_b.public_key(&lab.wgb).unwrap();
        let spec_a = wireguard(
            &lab.wga,
            "10.254.0.1/30",
            51820,
            PeerEnd {
                key: key_b,
                endpoint: SocketAddr::from((B_UNDERLAY, 51821)),
                allowed_ips: &["10.254.0.2/32", "10.2.0.0/24"],
            },
        );
        let spec_b = wireguard(
            &lab.wgb,
            "10.254.0.2/30",
            51821,
            PeerEnd {
                key: key_a,
                endpoint: SocketAddr::from((A_UNDERLAY, 51820)),
                allowed_ips: &["10.254.0.1/32", "10.1.0.0/24"],
            },
        );
        lab.mgr_a.ensure(&spec_a).await.unwrap();
        lab.mgr_b.ensure(&spec_b).await.unwrap();
        // B routes both LANs by plain kernel routing; A has no route to 10.2.0.0/24 at all:
        // only the fast path's mark and the agent's policy routing take traffic there.
        lab.gb
            .ip(&["route", "add", "10.1.0.0/24", "dev", &lab.wgb])
            .unwrap();
        lab
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("a.toml")
    }

    fn pins_b(&self) -> PathBuf {
        // bpffs takes no dot in a name.
        PathBuf::from(format!("{}-b", self.pins.display()))
    }

    /// Gateway A's configuration with the tunnel addresses on its link (so it is probed
    /// inside the tunnel), and gateway B's, its mirror image.
    fn probed_configs(&self) -> (String, String) {
        let link = "interface = \"{wg}\"\n";
        // Detection after 10 probe intervals (100 ms), not 3: a stall of this shared VM must
        // not take the link down by itself.
        let a = self
            .config()
            .replacen(
                "[updater]",
                "[probe]\ndetect_multiplier = 10\n\n[updater]",
                1,
            )
            .replacen(
                &link.replace("{wg}", &self.wga),
                &format!(
                    "interface = \"{}\"\nlocal_ip = \"10.254.0.1\"\npeer_ip = \"10.254.0.2\"\n",
                    self.wga
                ),
                1,
            );
        let b = a
            .replacen("name = \"gw-use1-a\"", "name = \"gw-euw1-a\"", 1)
            .replacen("region = \"us-east-1\"", "region = \"eu-west-1\"", 1)
            .replacen(
                &self.pins.display().to_string(),
                &self.pins_b().display().to_string(),
                1,
            )
            .replacen(
                &format!("interface = \"{}\"", self.wga),
                &format!("interface = \"{}\"", self.wgb),
                1,
            )
            .replacen(
                "local_ip = \"10.254.0.1\"\npeer_ip = \"10.254.0.2\"",
                "local_ip = \"10.254.0.2\"\npeer_ip = \"10.254.0.1\"",
                1,
            )
            .replacen("a.sock", "b.sock", 1);
        (a, b)
    }

    /// Runs B's `dwcp-agent` (configuration `b.toml`) and waits until it runs.
    fn start_agent_b(&mut self) {
        let log_path = self.dir.path().join("b.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(agent_bin())
            .arg("--netns")
            .arg(self.gb.name())
            .arg("--config")
            .arg(self.dir.path().join("b.toml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("b-state"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent_b = Some(child);
        let agent = self.agent_b.as_mut().unwrap();
        wait_for("B's agent to run", || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(st) = agent.try_wait().unwrap() {
                panic!("B's agent exited with {st}:\n{log}");
            }
            log.contains("running")
        });
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("a.log")
    }

    fn events_path(&self) -> PathBuf {
        self.dir.path().join("a.events.jsonl")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Gateway A's configuration: region us-east-1, link 1 to eu-west-1 a WireGuard link on
    /// A's wireguard-go device (hand-off mark and table by default).
    fn config(&self) -> String {
        format!(
            r#"[gateway]
name = "gw-use1-a"
region = "us-east-1"
pin_dir = "{pins}"
lan_interfaces = ["lan0"]

[[local_link]]
link = "use1-euw1"
kind = "wireguard"
interface = "{wg}"

[[prefixes]]
region = "us-east-1"
prefixes = ["10.1.0.0/24"]

[[prefixes]]
region = "eu-west-1"
prefixes = ["10.2.0.0/24"]

[updater]
optimise_interval_s = 0

[api]
socket = "{api}"

[metrics]
listen = "{METRICS}"

[[region]]
name = "us-east-1"
description = "US East (N. Virginia)"
country = "US"
provider = "aws"
latitude = 38.9
longitude = -77.4
capacity_mbps = 10000
gateways = [{{ name = "gw-use1-a", underlay = "{A_UNDERLAY}" }}]

[[region]]
name = "eu-west-1"
description = "Europe (Ireland)"
country = "IE"
provider = "aws"
latitude = 53.3
longitude = -6.3
capacity_mbps = 10000
gateways = [{{ name = "gw-euw1-a", underlay = "{B_UNDERLAY}" }}]

[[link]]
link_id = 1
name = "use1-euw1"
a = "us-east-1"
b = "eu-west-1"
kind = "wireguard"
latency_ms = 80.0
capacity_mbps = 1000
cost_per_gb = 0.02
"#,
            pins = self.pins.display(),
            wg = self.wga,
            api = self.dir.path().join("a.sock").display(),
        )
    }

    /// Runs `dwcp-agent` in A's namespace and waits until its first reconciliation is done.
    fn start_agent(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(agent_bin())
            .arg("--netns")
            .arg(self.ga.name())
            .arg("--config")
            .arg(self.config_path())
            .arg("--events-file")
            .arg(self.events_path())
            .arg("--state-dir")
            .arg(self.dir.path().join("a-state"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let start = Instant::now();
        while !self.log().contains("running") {
            if let Some(st) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("the agent exited with {st}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < WAIT,
                "the agent did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    fn stop_agent(&mut self) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("agent running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn events(&self) -> Vec<AgentEvent> {
        std::fs::read_to_string(self.events_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `ip -n A <args>`, its stdout.
    fn ip_a(&self, args: &[&str]) -> String {
        String::from_utf8(self.ga.ip(args).unwrap().stdout).unwrap()
    }

    fn wg_tx_packets(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_packets", self.wga);
        let out = self.ga.exec(&["cat", &path]).unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Runs `dwcp --socket <A's API> <args>` and returns its stdout (it must succeed).
    fn dwcp(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(dwcp_lab::bin("dwcp"))
            .arg("--socket")
            .arg(self.dir.path().join("a.sock"))
            .args(["--timeout", "5"])
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dwcp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The agent's Prometheus counter of fast-path reason `reason`, scraped from its /metrics
    /// endpoint inside A's namespace.
    fn scraped_reason(&self, reason: &str) -> u64 {
        let key = format!("dwcp_fastpath_packets_total{{reason=\"{reason}\"}} ");
        self.scraped(&key)
    }

    /// The value of the sample whose name and labels are `key` (with the trailing space) on
    /// A's /metrics.
    fn scraped<T: std::str::FromStr>(&self, key: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        let text = self
            .ga
            .run_in(|| -> std::io::Result<String> {
                let mut s = TcpStream::connect(METRICS)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .unwrap()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in /metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// Sends `n` numbered datagrams from H1 to H2 (in bursts of 10 every 2 ms: counted, not
/// timed) and returns the sequence numbers H2 received, waiting until all are there or
/// nothing more arrived for `quiet`.
fn send_datagrams(lab: &Lab, port: u16, n: u32, quiet: Duration) -> BTreeSet<u32> {
    let rx = lab
        .h2
        .run_in(move || UdpSocket::bind((H2, port)))
        .unwrap()
        .unwrap();
    netlab::force_recv_buffer(&rx, 8 << 20).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let tx = lab
        .h1
        .run_in(|| UdpSocket::bind("10.1.0.2:0"))
        .unwrap()
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = BTreeSet::new();
        let mut last = Instant::now();
        let mut buf = [0u8; 64];
        while (got.len() as u32) < n && last.elapsed() < quiet {
            if let Ok(len) = rx.recv(&mut buf) {
                if len >= 8 && &buf[..4] == b"WGE2" {
                    got.insert(u32::from_be_bytes(buf[4..8].try_into().unwrap()));
                    last = Instant::now();
                }
            }
        }
        got
    });
    let mut payload = [0u8; 64];
    payload[..4].copy_from_slice(b"WGE2");
    for seq in 0..n {
        payload[4..8].copy_from_slice(&seq.to_be_bytes());
        tx.send_to(&payload, (H2, port)).unwrap();
        if seq % 10 == 9 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    receiver.join().unwrap()
}

/// Waits until `f` holds, polling.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rules(lab: &Lab) -> String {
    lab.ip_a(&["-4", "rule", "show"]) + &lab.ip_a(&["-6", "rule", "show"])
}

fn table_routes(lab: &Lab) -> String {
    let all = lab.ip_a(&["-4", "route", "show", "table", "all"])
        + &lab.ip_a(&["-6", "route", "show", "table", "all"]);
    all.lines()
        .filter(|l| l.contains(&format!("table {TABLE}")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn daemon_hands_lan_traffic_to_wireguard_go_and_remove_cleans_up() {
    let _turn = serial();
    const N: u32 = 2000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lab = rt.block_on(Lab::build());
    std::fs::write(lab.config_path(), lab.config()).unwrap();

    // The tunnel works (wireguard-go handshake over the underlay), before any dwcp.
    wait_for(
        "the WireGuard handshake (ping A -> B over the tunnel)",
        || {
            lab.ga
                .exec(&["ping", "-c", "1", "-W", "2", "10.254.0.2"])
                .is_ok()
        },
    );
    // Without dwcp nothing crosses: A's kernel has no route to H2's network.
    let got = send_datagrams(&lab, 7300, 50, Duration::from_secs(2));
    assert!(
        got.is_empty(),
        "crossed without dwcp: {} datagrams",
        got.len()
    );

    lab.start_agent();
    // The daemon routes eu-west-1 over link 1 (the hand-off next hop) once the link is up:
    // device present and up, fresh handshake.
    wait_for("eu-west-1 routed over link 1", || {
        lab.events().iter().any(|e| {
            matches!(e, AgentEvent::RouteChanged(c)
                if c.destination == "eu-west-1" && c.after.first().map(Vec::as_slice) == Some(&[1]))
        })
    });
    wait_for("the agent's hand-off rule and table route", || {
        rules(&lab).contains(&format!("fwmark {MARK:#x} lookup {TABLE}"))
            && table_routes(&lab).contains(&format!("default dev {} table {TABLE}", lab.wga))
    });
    let log = lab.log();
    assert!(log.contains("tc ingress attached and pinned"), "{log}");
    let rule4 = lab.ip_a(&["-4", "rule", "show"]);
    assert!(
        rule4.contains(&format!("fwmark {MARK:#x} lookup {TABLE}")),
        "{rule4}"
    );
    // The mark comes from the fast path: no nftables rule sets one.
    let ruleset =
        String::from_utf8(lab.ga.exec(&["nft", "list", "ruleset"]).unwrap().stdout).unwrap();
    assert!(!ruleset.contains("mark set"), "{ruleset}");

    // The stream: every datagram crosses A's fast path, the hand-off and the tunnel.
    let counters = PinnedCounters::open(&lab.pins).unwrap();
    let handed0 = counters.reason(Reason::HandoffWireGuard);
    let marked0 = counters.reason(Reason::HandoffMarked);
    let nh0 = counters.nexthop_packets(1);
    let scraped0 = lab.scraped_reason("handoff_wireguard");
    let wg_tx0 = lab.wg_tx_packets();
    let got = send_datagrams(&lab, 7301, N, Duration::from_secs(5));
    let handed = counters.reason(Reason::HandoffWireGuard) - handed0;
    let marked = counters.reason(Reason::HandoffMarked) - marked0;
    let nh = counters.nexthop_packets(1) - nh0;
    let wg_tx = lab.wg_tx_packets() - wg_tx0;
    // The daemon's /metrics shows them too (its counters refresh on their own interval).
    let mut scraped = 0;
    wait_for("/metrics to count the hand-offs", || {
        scraped = lab.scraped_reason("handoff_wireguard") - scraped0;
        scraped >= u64::from(N)
    });
    println!(
        "with the daemon: sent {N}, received {}, handoff_wireguard {handed}, handoff_marked \
         {marked}, next hop 1 {nh}, /metrics handoff_wireguard {scraped}, {} tx {wg_tx}",
        got.len(),
        lab.wga
    );
    let lost: Vec<u32> = (0..N).filter(|s| !got.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "lost {} of {N} (first: {:?})",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    // Every datagram was handed off by XDP and marked by tc (nothing else on H1 sends to
    // 10.2.0.0/24).
    assert!(handed >= u64::from(N), "handed off {handed} of {N}");
    assert_eq!(marked, handed, "every handed-off packet is marked by tc");
    assert_eq!(nh, handed, "counted on the hand-off next hop");
    assert!(wg_tx >= u64::from(N), "{} sent {wg_tx}", lab.wga);

    // SIGTERM: the daemon goes, the fast path and its policy routing keep forwarding.
    let st = lab.stop_agent();
    assert!(st.success(), "{st}:\n{}", lab.log());
    let got = send_datagrams(&lab, 7302, 200, Duration::from_secs(5));
    assert_eq!(got.len(), 200, "forwarding after SIGTERM");
    assert!(counters.reason(Reason::HandoffWireGuard) - handed0 >= u64::from(N) + 200);
    drop(counters);

    // `dwcp-agent --remove`: programs detached, pins, rule and table route gone.
    let out = Command::new(agent_bin())
        .arg("--netns")
        .arg(lab.ga.name())
        .arg("--config")
        .arg(lab.config_path())
        .arg("--remove")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--remove: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("removed the hand-off rules of 1 WireGuard link(s)"),
        "{stdout}"
    );
    let left = rules(&lab);
    assert!(!left.contains(&format!("{MARK:#x}")), "rule left: {left}");
    let left = table_routes(&lab);
    assert!(left.is_empty(), "table {TABLE} left: {left}");
    let pinned: Vec<_> = std::fs::read_dir(&lab.pins)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        pinned.iter().all(|p| p.is_dir() && dir_is_empty(p)),
        "pins left: {pinned:?}"
    );
    // And with it the path: A's kernel alone does not reach H2.
    let got = send_datagrams(&lab, 7303, 50, Duration::from_secs(2));
    assert!(got.is_empty(), "crossed after --remove: {}", got.len());
    // The tunnel itself is the tunnel manager's and still there.
    assert!(lab
        .ga
        .exec(&["ping", "-c", "1", "-W", "2", "10.254.0.2"])
        .is_ok());
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

/// Both gateways run the daemon with the link's tunnel addresses: each probes the link inside
/// the tunnel and reflects the other's probes (the WireGuard device's tc program, attached by
/// the daemon), so both ends measure its RTT and liveness in `LINK_STATE` as for a VXLAN link;
/// a silent cut of the tunnel (its UDP dropped on B's underlay) takes the link down on A from
/// the probes alone (a stale handshake would take 210 s).
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn both_daemons_probe_the_wireguard_link_inside_the_tunnel() {
    let _turn = serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lab = rt.block_on(Lab::build());
    let (a, b) = lab.probed_configs();
    std::fs::write(lab.config_path(), a).unwrap();
    std::fs::write(lab.dir.path().join("b.toml"), b).unwrap();
    wait_for("the WireGuard handshake", || {
        lab.ga
            .exec(&["ping", "-c", "1", "-W", "2", "10.254.0.2"])
            .is_ok()
    });
    lab.start_agent_b();
    lab.start_agent();
    wait_for("eu-west-1 routed over link 1", || {
        lab.events().iter().any(|e| {
            matches!(e, AgentEvent::RouteChanged(c)
                if c.destination == "eu-west-1" && c.after.first().map(Vec::as_slice) == Some(&[1]))
        })
    });
    assert!(
        lab.log()
            .contains("WireGuard probes: tc ingress attached and pinned"),
        "{}",
        lab.log()
    );
    let state = |pins: &Path| {
        dwcp_dataplane::PinnedMaps::new(pins)
            .link_state()
            .unwrap()
            .get(&1, 0)
            .unwrap()
    };
    // A link the sender saw dead is probed at a backed-off rate until it answers: wait until
    // both ends have taken replies, then measure.
    wait_for("replies at both ends", || {
        state(&lab.pins).replies > 20 && state(&lab.pins_b()).replies > 20
    });
    let (a0, b0) = (state(&lab.pins), state(&lab.pins_b()));
    std::thread::sleep(Duration::from_millis(500));
    let (a1, b1) = (state(&lab.pins), state(&lab.pins_b()));
    println!(
        "in 500 ms: A {} replies (srtt {} us, {} reflected), B {} replies (srtt {} us, {} reflected)",
        a1.replies - a0.replies,
        a1.srtt_ns / 1000,
        a1.reflected - a0.reflected,
        b1.replies - b0.replies,
        b1.srtt_ns / 1000,
        b1.reflected - b0.reflected
    );
    // Probes every 10 ms by default: tens in 500 ms at either end, however busy the machine.
    for (end, before, after) in [("A", a0, a1), ("B", b0, b1)] {
        assert!(
            after.replies > before.replies + 10,
            "{end}: replies {before:?} -> {after:?}"
        );
        assert!(
            after.reflected > before.reflected + 10,
            "{end}: reflected {before:?} -> {after:?}"
        );
        assert!(after.srtt_ns > 0, "{end}: an RTT measured");
    }
    // The link's probes reach the metrics as a VXLAN link's do.
    let key = r#"dwcp_link_probes_received_total{link="use1-euw1",link_id="1"} "#;
    let received: u64 = lab.scraped(key);
    assert!(received > 0, "{key}{received}");
    // The tunnel view (API, `dwcp show tunnels`) and /metrics carry what wireguard-go's UAPI
    // socket says of the peer (read every 2 s) and the probes' liveness.
    let wg_tunnel = |lab: &Lab| {
        let out = lab.dwcp(&["show", "tunnels", "--json"]);
        let all: Vec<TunnelView> = serde_json::from_slice(&out).unwrap();
        all.into_iter()
            .find(|t| t.name == "wireguard-use1-euw1")
            .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&out)))
    };
    let mut tx0 = 0;
    wait_for("the tunnel view to show the device's bytes", || {
        let t = wg_tunnel(&lab);
        tx0 = t.tx_bytes.unwrap_or(0);
        t.rx_bytes.is_some_and(|b| b > 0) && tx0 > 0
    });
    let got = send_datagrams(&lab, 7310, 200, Duration::from_secs(5));
    assert_eq!(got.len(), 200, "delivered through the probed tunnel");
    // The 200 datagrams reach the view: at least WireGuard's 32 bytes of header and tag each.
    wait_for("the tunnel view to count the datagrams", || {
        wg_tunnel(&lab)
            .tx_bytes
            .is_some_and(|b| b >= tx0 + 200 * 32)
    });
    let t = wg_tunnel(&lab);
    println!("tunnel view: {t:?}");
    // Recent: the handshake of this run, well within WireGuard's 180 s session.
    assert!(t.handshake_age_seconds.is_some_and(|a| a < 180.0), "{t:?}");
    assert!(t.last_handshake_unix_s.is_some(), "{t:?}");
    assert_eq!(t.probe_alive, Some(true), "{t:?}");
    let table = String::from_utf8(lab.dwcp(&["show", "tunnels"])).unwrap();
    println!("{table}");
    let row = table
        .lines()
        .find(|l| l.contains("wireguard-use1-euw1"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("alive"), "{table}");
    assert!(!row.contains(" 0 B"), "{table}");
    let tunnel = r#"{tunnel="wireguard-use1-euw1"} "#;
    let age: f64 = lab.scraped(&format!("dwcp_tunnel_handshake_age_seconds{tunnel}"));
    assert!((0.0..180.0).contains(&age), "handshake age {age}");
    for name in [
        "dwcp_tunnel_received_bytes_total",
        "dwcp_tunnel_transmitted_bytes_total",
    ] {
        let bytes: u64 = lab.scraped(&format!("{name}{tunnel}"));
        assert!(bytes > 0, "{name} {bytes}");
    }
    let alive: u64 = lab.scraped(&format!("dwcp_tunnel_probe_alive{tunnel}"));
    assert_eq!(alive, 1);

    // A silent cut: the tunnel's UDP dropped on B's underlay port, carriers untouched.
    lab.gb
        .exec(&["nft", "add table netdev wgcut; add chain netdev wgcut in { type filter hook ingress device ub priority 0; }; add rule netdev wgcut in udp dport 51821 drop"])
        .unwrap();
    // Within WAIT (60 s): only the probes can say so that soon (a handshake counts as stale
    // after 210 s).
    let seen = lab.events().len();
    let cut = Instant::now();
    let down_after_cut = || {
        lab.events().into_iter().skip(seen).find_map(|e| match e {
            AgentEvent::LinkDown { link: 1, reason } => Some(reason),
            _ => None,
        })
    };
    wait_for("link 1 down on A from its probes", || {
        down_after_cut().is_some()
    });
    println!(
        "link 1 down on A {:?} after the cut: {:?}",
        cut.elapsed(),
        down_after_cut()
    );
}
