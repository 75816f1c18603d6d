//! The three-region lab: the seed's us-east-1, eu-west-1 and ap-south-1 in a triangle, each
//! with a host and a gateway running the real `dwcp-agent` daemon, each link passing through a
//! "wire" namespace (a bridge) where it can be cut silently with an nftables drop rule.
//!
//! ```text
//!   h1 - g1 =ul1= [wire 1] =ul1= g2 - h2        link 1: us-east-1  -- eu-west-1
//!         \\                    //              link 2: eu-west-1  -- ap-south-1
//!         ul3 [wire 3]   [wire 2] ul2           link 3: us-east-1  -- ap-south-1
//!            \\                //
//!              ====== g3 ======
//!                     |
//!                     h3
//! ```
//!
//! Host n is 10.n.0.2/24 behind gateway n; link L's underlay is 172.31.L.0/24, the gateway of
//! region n being 172.31.L.n. The gateways' kernels have no route to other regions: whatever
//! arrives crossed the fast path (transit included). Pins live under
//! `/sys/fs/bpf/dwcp-tri-<pid>-<k>/g<n>` and are removed on drop, with the namespaces.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use dwcp_common::{maps::names, Counters, Reason};
use thiserror::Error;

use super::{region, LabError, PassProgram, Region, UNDERLAY_MTU};
use crate::netlab;
use crate::netlab::Netns;
use dwcp_agent::agent::AgentEvent;
use dwcp_control::config::ProbeSenderMode;
use dwcp_dataplane::unpin_all;
use dwcp_dataplane::unpin_links;
use dwcp_dataplane::PinnedMaps;

#[derive(Debug, Error)]
pub enum TriangleError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("{0}")]
    Other(String),
}

impl From<netlab::NetlabError> for TriangleError {
    fn from(e: netlab::NetlabError) -> Self {
        TriangleError::Lab(LabError::Netlab(e))
    }
}

pub type Result<T, E = TriangleError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TriangleError {
    let what = what.into();
    move |source| TriangleError::Io { what, source }
}

/// The seed's three-region topology (links 1, 2, 3 as drawn above).
pub const TOPOLOGY: &str = include_str!("../../../tests/fixtures/three_regions.toml");
/// Where each agent serves /metrics, inside its gateway's namespace.
pub const LAB_METRICS: &str = "127.0.0.1:9470";
pub const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
pub const GATEWAYS: [&str; 3] = ["gw-use1-a", "gw-euw1-a", "gw-aps1-a"];
/// (link id, region index a, region index b).
pub const LINKS: [(u32, usize, usize); 3] = [(1, 0, 1), (2, 1, 2), (3, 0, 2)];

const WIRE_TABLE: &str = "dwcp_wire";
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The underlay address of region `r` (0-based) on link `link`.
pub fn underlay_ip(link: u32, r: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, link as u8, r as u8 + 1)
}

pub fn host_ip(r: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, r as u8 + 1, 0, 2)
}

/// One emulated link: a bridge in its own namespace between `ul<id>` of two gateways.
pub struct Wire {
    pub link: u32,
    pub ns: Netns,
}

impl Wire {
    /// Drops every frame from one gateway to the other (a silent failure: both ends keep
    /// their carrier). Other ports of the bridge (an attacker's) still reach both.
    pub fn cut(&self) -> Result<()> {
        self.ns.exec(&[
            "nft",
            "add",
            "rule",
            "bridge",
            WIRE_TABLE,
            "forward",
            "iifname",
            "{ to-a, to-b }",
            "oifname",
            "{ to-a, to-b }",
            "drop",
        ])?;
        Ok(())
    }

    pub fn heal(&self) -> Result<()> {
        self.ns
            .exec(&["nft", "flush", "chain", "bridge", WIRE_TABLE, "forward"])?;
        Ok(())
    }
}

/// A running `dwcp-agent` process (killed on drop).
pub struct AgentProcess {
    child: Child,
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, sig) } != 0 {
            return Err(io("signalling the agent")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().map_err(io("waiting for the agent"))? {
                return Ok(st);
            }
            if start.elapsed() > timeout {
                return Err(TriangleError::Timeout {
                    what: "the agent to exit".into(),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per-CPU counters of a gateway, read from its pinned maps.
pub struct PinnedCounters {
    reasons: PerCpuArray<MapData, u64>,
    nexthops: PerCpuArray<MapData, Counters>,
    classes: PerCpuArray<MapData, Counters>,
}

impl PinnedCounters {
    pub fn open(pin_dir: &Path) -> Result<PinnedCounters> {
        let maps = PinnedMaps::new(pin_dir);
        let other = |e: dwcp_dataplane::PinnedMapError| TriangleError::Other(e.to_string());
        Ok(PinnedCounters {
            reasons: maps.map(names::REASON_STATS).map_err(other)?,
            nexthops: maps.map(names::NH_STATS).map_err(other)?,
            classes: maps.map(names::CLASS_STATS).map_err(other)?,
        })
    }

    pub fn reason(&self, r: Reason) -> u64 {
        self.reasons
            .get(&(r as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// (packets, bytes) of QoS class `class` (`dwcp_common::QosClass as u8`).
    pub fn class_counters(&self, class: u8) -> (u64, u64) {
        self.classes
            .get(&u32::from(class), 0)
            .map(|v| {
                v.iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
            })
            .unwrap_or((0, 0))
    }

    /// Packets sent through next hop (= local link) `id`.
    pub fn nexthop_packets(&self, id: u32) -> u64 {
        self.nexthops
            .get(&id, 0)
            .map(|v| v.iter().map(|c| c.packets).sum())
            .unwrap_or(0)
    }
}

/// Options of the lab's agents.
#[derive(Clone, Debug)]
pub struct TriangleOptions {
    pub probe_sender: ProbeSenderMode,
    /// Probe intervals (10 ms) without a reply before a link is dead.
    pub detect_multiplier: u32,
    /// SCHED_FIFO priority of the probe senders (the agents' probe threads or `dwcp-prober`),
    /// 0 = normal scheduling. By default 10, as on a busy gateway: on this 2-core machine a
    /// probe sender starved past the detection time takes a healthy link down.
    pub probe_rt_priority: u8,
    /// Extra TOML appended to every gateway's configuration.
    pub extra_config: String,
}

impl Default for TriangleOptions {
    fn default() -> Self {
        TriangleOptions {
            probe_sender: ProbeSenderMode::Agent,
            detect_multiplier: 3,
            probe_rt_priority: 10,
            extra_config: String::new(),
        }
    }
}

pub struct TriangleLab {
    pub regions: Vec<Region>,
    pub wires: Vec<Wire>,
    /// Configurations, logs and event files.
    pub dir: PathBuf,
    pins: PathBuf,
    options: TriangleOptions,
    /// XDP_PASS on the hosts' and wires' veth ends (so redirected frames are accepted).
    _pass: PassProgram,
    agents: Vec<Option<AgentProcess>>,
    /// `dwcp-prober` processes (killed on drop, like the agents).
    probers: Vec<Option<AgentProcess>>,
    binary: PathBuf,
}

impl TriangleLab {
    /// Builds the namespaces, wires and configurations; `binary` is the `dwcp-agent` to run.
    pub fn build(tag: &str, binary: &Path, options: TriangleOptions) -> Result<TriangleLab> {
        netlab::sweep_stale();
        let k = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{k}", std::process::id());
        let dir = std::env::temp_dir().join(format!("dwcp-tri-{id}"));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let pins = PathBuf::from(format!("/sys/fs/bpf/dwcp-tri-{id}"));
        let mut regions = Vec::new();
        for n in 1..=3u8 {
            regions.push(region(tag, n)?);
        }
        let mut wires = Vec::new();
        for (link, a, b) in LINKS {
            let ns = Netns::new(&format!("{tag}-w{link}"))?;
            let ifname = format!("ul{link}");
            let mtu = UNDERLAY_MTU.to_string();
            netlab::veth(&regions[a].gw, &ifname, &ns, "to-a")?;
            netlab::veth(&regions[b].gw, &ifname, &ns, "to-b")?;
            ns.ip(&["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
            for port in ["to-a", "to-b"] {
                ns.ip(&["link", "set", port, "mtu", &mtu, "master", "br0"])?;
            }
            ns.ip(&["link", "set", "br0", "up"])?;
            ns.exec(&["nft", "add", "table", "bridge", WIRE_TABLE])?;
            ns.exec(&[
                "nft",
                "add",
                "chain",
                "bridge",
                WIRE_TABLE,
                "forward",
                "{ type filter hook forward priority 0 ; policy accept ; }",
            ])?;
            for (r, peer) in [(a, b), (b, a)] {
                let gw = &regions[r].gw;
                gw.ip(&["link", "set", &ifname, "mtu", &mtu])?;
                netlab::addr(gw, &ifname, &format!("{}/24", underlay_ip(link, r)))?;
                gw.sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), "0")?;
                // Static neighbours: probes never wait for ARP behind a cut wire, so a healed
                // link answers at the next probe (and the agent learns them from netlink).
                let peer_mac = regions[peer].gw.mac(&ifname)?;
                gw.ip(&[
                    "neigh",
                    "replace",
                    &underlay_ip(link, peer).to_string(),
                    "lladdr",
                    &mac_string(peer_mac),
                    "dev",
                    &ifname,
                    "nud",
                    "permanent",
                ])?;
            }
            wires.push(Wire { link, ns });
        }
        let mut pass = PassProgram::load()?;
        for r in &regions {
            r.host.run_in(|| pass.attach("eth0"))??;
        }
        for w in &wires {
            for end in ["to-a", "to-b"] {
                w.ns.run_in(|| pass.attach(end))??;
            }
        }
        let lab = TriangleLab {
            regions,
            wires,
            dir,
            pins,
            options,
            _pass: pass,
            agents: (0..3).map(|_| None).collect(),
            probers: (0..3).map(|_| None).collect(),
            binary: binary.to_path_buf(),
        };
        for r in 0..3 {
            let text = lab.config_text(r);
            lab.write_config(r, &text)?;
        }
        Ok(lab)
    }

    pub fn pin_dir(&self, r: usize) -> PathBuf {
        self.pins.join(format!("g{}", r + 1))
    }

    pub fn config_path(&self, r: usize) -> PathBuf {
        self.dir.join(format!("g{}.toml", r + 1))
    }

    /// The API socket of gateway `r`'s agent.
    pub fn api_socket(&self, r: usize) -> PathBuf {
        self.dir.join(format!("g{}.sock", r + 1))
    }

    /// The agent's `--state-dir`, which the agent creates.
    pub fn state_dir(&self, r: usize) -> PathBuf {
        self.dir.join(format!("g{}-state", r + 1))
    }

    pub fn log_path(&self, r: usize) -> PathBuf {
        self.dir.join(format!("g{}.log", r + 1))
    }

    pub fn events_path(&self, r: usize) -> PathBuf {
        self.dir.join(format!("g{}.events.jsonl", r + 1))
    }

    /// The configuration of gateway `r` (0-based).
    pub fn config_text(&self, r: usize) -> String {
        let mut s = format!(
            "[gateway]\nname = \"{}\"\nregion = \"{}\"\npin_dir = \"{}\"\nlan_interfaces = [\"lan0\"]\n\n",
            GATEWAYS[r],
            REGIONS[r],
            self.pin_dir(r).display()
        );
        for (link, a, b) in LINKS {
            let peer = if a == r {
                b
            } else if b == r {
                a
            } else {
                continue;
            };
            let name = TOPOLOGY_LINK_NAMES[(link - 1) as usize];
            s += &format!(
                "[[local_link]]\nlink = \"{name}\"\ninterface = \"ul{link}\"\nlocal_ip = \"{}\"\npeer_ip = \"{}\"\nmtu = {UNDERLAY_MTU}\n\n",
                underlay_ip(link, r),
                underlay_ip(link, peer)
            );
        }
        for (i, region) in REGIONS.iter().enumerate() {
            s += &format!(
                "[[prefixes]]\nregion = \"{region}\"\nprefixes = [\"10.{}.0.0/24\"]\n\n",
                i + 1
            );
        }
        let sender = match self.options.probe_sender {
            ProbeSenderMode::Agent => "agent",
            ProbeSenderMode::External => "external",
        };
        s += &format!(
            // A lab's streams are small: sample densely so the top flows show them. The veths
            // add no latency: routes follow the topology's figures, not RTTs of a tenth of a ms.
            "[probe]\nsender = \"{sender}\"\nrt_priority = {}\ndetect_multiplier = {}\n\n\
             [updater]\noptimise_interval_s = 0\n\n[routing]\nuse_measurements = false\n\n\
             [flows]\nsample_every = 10\n\n",
            self.options.probe_rt_priority, self.options.detect_multiplier
        );
        // Each gateway's API on its own socket (they share this file system); metrics on
        // the loopback of each gateway's own namespace.
        s += &format!(
            "[api]\nsocket = \"{}\"\n\n[metrics]\nlisten = \"{LAB_METRICS}\"\n\n",
            self.api_socket(r).display()
        );
        s += &self.options.extra_config;
        s += "\n";
        s += TOPOLOGY;
        s
    }

    pub fn write_config(&self, r: usize, text: &str) -> Result<()> {
        let path = self.config_path(r);
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
    }

    /// Starts the agent of gateway `r` and waits until it has programmed the fast path.
    pub fn start_agent(&mut self, r: usize, extra_args: &[&str]) -> Result<()> {
        if self.agents[r].is_some() {
            return Err(TriangleError::Other(format!("agent {r} is running")));
        }
        let log = self.log_path(r);
        let before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("opening {}", log.display())))?;
        let err = file.try_clone().map_err(io("log file"))?;
        let child = Command::new(&self.binary)
            .arg("--netns")
            .arg(self.regions[r].gw.name())
            .arg("--config")
            .arg(self.config_path(r))
            .arg("--events-file")
            .arg(self.events_path(r))
            .arg("--state-dir")
            .arg(self.state_dir(r))
            .args(extra_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        let mut agent = AgentProcess { child, log };
        // "running" is logged once the first reconciliation is done.
        let waited = Instant::now();
        let timeout = Duration::from_secs(90);
        loop {
            let text = std::fs::read_to_string(&agent.log).unwrap_or_default();
            if text.len() > before && text[before..].contains("running") {
                break;
            }
            if let Some(st) = agent.child.try_wait().map_err(io("agent status"))? {
                return Err(TriangleError::Other(format!(
                    "agent {r} exited with {st} before running:\n{}",
                    &text[before.min(text.len())..]
                )));
            }
            if waited.elapsed() > timeout {
                let _ = agent.child.kill();
                return Err(TriangleError::Timeout {
                    what: format!("agent {r} to start"),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.agents[r] = Some(agent);
        Ok(())
    }

    pub fn agent(&self, r: usize) -> Option<&AgentProcess> {
        self.agents[r].as_ref()
    }

    /// `kill -9`: the agent gets no chance to clean anything up.
    pub fn kill_agent(&mut self, r: usize) -> Result<()> {
        if let Some(mut a) = self.agents[r].take() {
            a.signal(libc::SIGKILL)?;
            a.wait(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// SIGTERM and wait for the exit.
    pub fn stop_agent(&mut self, r: usize) -> Result<std::process::ExitStatus> {
        let mut a = self.agents[r]
            .take()
            .ok_or_else(|| TriangleError::Other(format!("agent {r} is not running")))?;
        a.signal(libc::SIGTERM)?;
        a.wait(Duration::from_secs(10))
    }

    pub fn hup_agent(&self, r: usize) -> Result<()> {
        self.agents[r]
            .as_ref()
            .ok_or_else(|| TriangleError::Other(format!("agent {r} is not running")))?
            .signal(libc::SIGHUP)
    }

    pub fn log(&self, r: usize) -> String {
        std::fs::read_to_string(self.log_path(r)).unwrap_or_default()
    }

    /// The events gateway `r`'s agents wrote so far (all runs).
    pub fn events(&self, r: usize) -> Vec<AgentEvent> {
        std::fs::read_to_string(self.events_path(r))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until gateway `r` has logged an event for which `f` holds.
    pub fn wait_event(
        &self,
        r: usize,
        what: &str,
        timeout: Duration,
        f: impl Fn(&AgentEvent) -> bool,
    ) -> Result<AgentEvent> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events(r).into_iter().find(&f) {
                return Ok(e);
            }
            if start.elapsed() > timeout {
                return Err(TriangleError::Timeout {
                    what: format!("gateway {} to report {what}", r + 1),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn counters(&self, r: usize) -> Result<PinnedCounters> {
        PinnedCounters::open(&self.pin_dir(r))
    }

    pub fn wire(&self, link: u32) -> &Wire {
        &self.wires[(link - 1) as usize]
    }

    /// Starts `dwcp-prober` (beside the agent binary) for gateway `r` as the shipped unit runs
    /// it, from the agent's configuration (pin directory and `[probe]` settings): it probes
    /// the links the agent programmed, from its own process, for agents with
    /// `probe.sender = "external"`. Start the agent first (the prober reads the links from its
    /// pinned maps).
    pub fn start_prober(&mut self, r: usize) -> Result<()> {
        let binary = self.binary.with_file_name("dwcp-prober");
        let log = self.dir.join(format!("g{}.prober.log", r + 1));
        let file =
            std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = file.try_clone().map_err(io("prober log"))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(self.config_path(r))
            .arg("--netns")
            .arg(self.regions[r].gw.name())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))?;
        self.probers[r] = Some(AgentProcess { child, log });
        Ok(())
    }
}

impl Drop for TriangleLab {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.take();
        }
        for p in &mut self.probers {
            p.take();
        }
        for r in 0..3 {
            let dir = self.pin_dir(r);
            let _ = unpin_links(&dir);
            let _ = unpin_all(&dir);
        }
        // What is left: the probers' PROBE_SENT maps.
        let _ = std::fs::remove_dir_all(&self.pins);
        if std::env::var_os("DWCP_KEEP_LAB_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `[[link]]` names of the seed topology, by link id - 1.
const TOPOLOGY_LINK_NAMES: [&str; 3] = ["use1-euw1", "euw1-aps1", "use1-aps1"];

fn mac_string(m: [u8; 6]) -> String {
    dwcp_control::config::Mac(m).to_string()
}

/// What a UDP stream delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamReport {
    pub sent: u32,
    pub received: u32,
    /// Sequence numbers sent but never received, as ranges.
    pub lost: Vec<(u32, u32)>,
    /// Of those, datagrams the receiving socket itself dropped because its buffer was full
    /// (the receiving thread starved): lost by the instrument, not by the network.
    pub receiver_drops: u32,
}

impl StreamReport {
    pub fn lost_count(&self) -> u32 {
        self.lost.iter().map(|(a, b)| b - a + 1).sum()
    }
}

/// A paced UDP stream from one host to another (sequence numbers in the payload), counted at
/// the receiver.
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    rx_stop: Arc<AtomicBool>,
    sender: Option<std::thread::JoinHandle<std::io::Result<u32>>>,
    receiver: Option<std::thread::JoinHandle<std::io::Result<Received>>>,
}

/// The sequence numbers that arrived, and the receiving socket's own drops.
type Received = (BTreeSet<u32>, u32);

const STREAM_MAGIC: [u8; 4] = *b"DWST";
/// The receiver's buffer: seconds of a 1,000 datagrams/s stream, so that a starved receiving
/// thread does not itself lose datagrams.
const STREAM_RCVBUF: libc::c_int = 16 << 20;

impl UdpStream {
    /// Starts sending `rate` datagrams per second from `from` (region index) to `to`.
    pub fn start(lab: &TriangleLab, from: usize, to: usize, rate: u32) -> Result<UdpStream> {
        let (src, dst) = (host_ip(from), host_ip(to));
        let port = 7100 + (from * 3 + to) as u16;
        let rx_sock = lab.regions[to]
            .host
            .run_in(move || UdpSocket::bind((dst, port)))?
            .map_err(io("binding the stream receiver"))?;
        rx_sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io("receiver timeout"))?;
        netlab::force_recv_buffer(&rx_sock, STREAM_RCVBUF).map_err(io("receiver buffer"))?;
        let tx_sock = lab.regions[from]
            .host
            .run_in(move || UdpSocket::bind((src, 0)))?
            .map_err(io("binding the stream sender"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let rx_stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let rx_stop = rx_stop.clone();
            std::thread::spawn(move || -> std::io::Result<Received> {
                let mut got = BTreeSet::new();
                let mut buf = [0u8; 64];
                loop {
                    match rx_sock.recv(&mut buf) {
                        Ok(n) if n >= 8 && buf[..4] == STREAM_MAGIC => {
                            got.insert(u32::from_be_bytes(buf[4..8].try_into().expect("4")));
                        }
                        Ok(_) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            if rx_stop.load(Ordering::Relaxed) {
                                return Ok((got, netlab::socket_drops(&rx_sock)?));
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
        };
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || -> std::io::Result<u32> {
                let to = SocketAddr::from((dst, port));
                let start = Instant::now();
                let mut seq: u32 = 0;
                let mut buf = [0u8; 64];
                buf[..4].copy_from_slice(&STREAM_MAGIC);
                while !stop.load(Ordering::Relaxed) {
                    // Catch up with the schedule, then sleep a little.
                    let due = (start.elapsed().as_secs_f64() * rate as f64) as u32;
                    while seq < due {
                        buf[4..8].copy_from_slice(&seq.to_be_bytes());
                        tx_sock.send_to(&buf, to)?;
                        seq += 1;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                Ok(seq)
            })
        };
        Ok(UdpStream {
            stop,
            rx_stop,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Stops sending, waits for the stragglers and reports.
    pub fn finish(mut self) -> Result<StreamReport> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.take().expect("running").join();
        // Let the last datagrams arrive before the receiver stops.
        std::thread::sleep(Duration::from_millis(300));
        self.rx_stop.store(true, Ordering::Relaxed);
        let sent = sent
            .map_err(|_| TriangleError::Other("stream sender panicked".into()))?
            .map_err(io("sending the stream"))?;
        let (got, receiver_drops) = self
            .receiver
            .take()
            .expect("running")
            .join()
            .map_err(|_| TriangleError::Other("stream receiver panicked".into()))?
            .map_err(io("receiving the stream"))?;
        let mut lost = Vec::new();
        let mut run: Option<(u32, u32)> = None;
        for s in 0..sent {
            if got.contains(&s) {
                if let Some(r) = run.take() {
                    lost.push(r);
                }
            } else {
                run = Some(match run {
                    Some((a, _)) => (a, s),
                    None => (s, s),
                });
            }
        }
        lost.extend(run);
        Ok(StreamReport {
            sent,
            received: got.iter().filter(|&&s| s < sent).count() as u32,
            lost,
            receiver_drops,
        })
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        self.rx_stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.receiver.take() {
            let _ = r.join();
        }
    }
}
