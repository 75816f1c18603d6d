//! The lab `cargo xtask lab` runs: an N-region lab ([`super::multi`]) with a real
//! `dwcp-agent` daemon on every region's gateway, that outlives the command that started it.
//!
//! `up` builds the namespaces (stable names `<prefix>-h<n>`, `-g<n>`, `-w<link>`), writes each
//! gateway's agent.toml, starts the agents in their own process group, waits until every
//! agent routes to every other region, and records the lab in a state directory (default
//! `/run/dwcp-lab/lab.json`, next to the agents' configurations, logs, event files and API
//! sockets). `status`, `fail`, `heal`, `traffic` and `down` find the lab there. `down` stops
//! the agents and removes the namespaces, the pins (default under `/sys/fs/bpf/dwcp-lab/`) and
//! the state directory; it also works without a state file (after a crash): it looks for the
//! lab's namespaces by prefix and for agents by their configuration path.
//!
//! With WireGuard links ([`UpOptions::tunnels`]) a `dwcp-tunnels run` daemon per gateway makes
//! and keeps the tunnels (see `start_tunnels`); `down` stops those daemons and the lab's
//! wireguard-go processes (found by their devices' names) before removing the namespaces.
//!
//! With the cluster store in etcd ([`UpOptions::store`], `lab up --store etcd`) `up` first
//! starts a three-member etcd cluster (TLS, client certificates) in namespaces of its own
//! (`<prefix>-e1` to `-e3`, data on a tmpfs at `<state dir>/etcd`) with a port for every
//! gateway, writes each gateway's file with only what is its own plus `[store]`, and
//! publishes the lab's topology once (`dwcp topology push`, through the first gateway, whose
//! file carries the topology tables only until then); `down` stops the members and removes
//! the cluster's namespaces, bridge and tmpfs.
//!
//! Frames the gateways redirect (native XDP) into the hosts' and wires' veths are accepted
//! because those veths' ends carry an `XDP_PASS` program, attached through links pinned under
//! `<pin root>/pass/`.

use std::{
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

use super::{
    multi::{self, LabPlan, MultiRegionLab, Naming, PlannedLink},
    LabError, PassProgram,
};

use crate::etcd::{EtcdCluster, StableNames};
use crate::netlab;
use crate::netlab::Netns;
use dwcp_agent::agent::LinkHealth;
use dwcp_agent::agent::LinkView;
use dwcp_agent::agent::PathRole;
use dwcp_agent::agent::RouteView;
use dwcp_cli::client::ApiClient;
use dwcp_cli::client::Endpoint;
use dwcp_control::config::LinkStateSection;
use dwcp_control::input::unix_now;
use dwcp_control::topology::TunnelKind;
use dwcp_control::view::{StatusView, TopologyChanges};

pub const DEFAULT_PREFIX: &str = multi::STABLE_PREFIX;
pub const DEFAULT_STATE_DIR: &str = "/run/dwcp-lab";
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dwcp-lab";
/// Where each agent serves /metrics, inside its gateway's namespace.
pub const LAB_METRICS: &str = "127.0.0.1:9470";
const STATE_FILE: &str = "lab.json";
/// In etcd mode: the topology file `up` pushed, in the state directory.
pub const TOPOLOGY_FILE: &str = "topology.toml";
/// Each gateway's port on the etcd cluster's bridge.
const STORE_INTERFACE: &str = "etcd0";

#[derive(Debug, Error)]
pub enum LiveLabError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "a lab is already up (its agents and state in {}); `cargo xtask lab down` removes it",
        dir.display()
    )]
    AlreadyUp {
        /// As recorded; 0 when agents run without a record.
        regions: usize,
        dir: PathBuf,
    },
    #[error("no lab is up (no {}); `cargo xtask lab up` starts one", .0.display())]
    NotUp(PathBuf),
    #[error("state file {}: {detail}", path.display())]
    State { path: PathBuf, detail: String },
    #[error("the agent of {region}: {detail}")]
    Agent { region: String, detail: String },
    #[error("the WireGuard tunnels of {region}: {detail}")]
    Tunnels { region: String, detail: String },
    #[error("the lab's links are VXLAN or WireGuard, not {0:?}")]
    TunnelKind(TunnelKind),
    #[error("the etcd cluster: {0}")]
    Etcd(#[from] crate::etcd::EtcdLabError),
    #[error("the lab in etcd mode has VXLAN links only (the WireGuard lab's tunnel addresses share the etcd bridge's 10.254.0.0/16)")]
    EtcdWithWireguard,
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("stream {from} -> {to}: {source}")]
    Stream {
        from: String,
        to: String,
        source: std::io::Error,
    },
}

impl From<netlab::NetlabError> for LiveLabError {
    fn from(e: netlab::NetlabError) -> Self {
        LiveLabError::Lab(LabError::Netlab(e))
    }
}

pub type Result<T, E = LiveLabError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LiveLabError {
    let what = what.into();
    move |source| LiveLabError::Io { what, source }
}

/// Where a lab lives. Tests use their own (unique) values; `cargo xtask lab` the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPaths {
    /// Prefix of the namespaces' names.
    pub prefix: String,
    pub state_dir: PathBuf,
    /// bpffs directory holding every gateway's pins (`g<n>/`).
    pub pin_root: PathBuf,
}

impl Default for LabPaths {
    fn default() -> Self {
        LabPaths {
            prefix: DEFAULT_PREFIX.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            pin_root: DEFAULT_PIN_ROOT.into(),
        }
    }
}

impl LabPaths {
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    /// The names of the lab's etcd cluster (etcd mode), its tmpfs in the state directory.
    pub fn etcd(&self) -> StableNames {
        StableNames::new(&self.prefix, &self.state_dir.join("etcd"))
    }
}

/// Where the lab's gateways keep what all of them must agree on (`[store] kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabStore {
    /// Each gateway's own files, the whole topology in each (the default).
    #[default]
    File,
    /// A three-member etcd cluster the lab starts: the topology pushed once, reservations
    /// and membership in the store.
    Etcd,
}

/// One region's gateway agent, as `up` started it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub region: String,
    pub gateway: String,
    /// The gateway's namespace (the agent runs there) and the host's.
    pub namespace: String,
    pub host_namespace: String,
    pub host_ip: Ipv4Addr,
    pub pid: u32,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub events: PathBuf,
    pub pin_dir: PathBuf,
    /// The gateway's `dwcp-tunnels run` (a WireGuard lab), 0 without.
    #[serde(default)]
    pub tunnels_pid: u32,
}

/// What `up` recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub paths: LabPaths,
    pub regions: usize,
    pub agents: Vec<AgentRecord>,
    /// Whether the links' latencies are emulated (netem) or only configured.
    pub latency_emulated: bool,
    pub started_unix_s: u64,
    /// The links' kind (`lab up --tunnels`).
    #[serde(default)]
    pub tunnels: TunnelKind,
    /// The cluster store (`lab up --store`).
    #[serde(default)]
    pub store: LabStore,
}

impl LabState {
    pub fn plan(&self) -> Result<LabPlan> {
        plan_of(self.regions, self.tunnels, &self.paths)
    }

    /// A region's agent, by region name or 1-based number.
    pub fn agent(&self, region: &str) -> Result<&AgentRecord> {
        let plan = self.plan()?;
        let r = plan.region(region).ok_or_else(|| {
            LiveLabError::Lab(LabError::UnknownRegion {
                name: region.into(),
                known: plan.regions.iter().map(|r| r.name.clone()).collect(),
            })
        })?;
        Ok(&self.agents[r.n as usize - 1])
    }
}

/// Options of `up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub regions: usize,
    /// The `dwcp-agent` to run.
    pub agent_binary: PathBuf,
    /// Probe intervals (10 ms) without a reply before a link is dead.
    pub detect_multiplier: u32,
    /// How long to wait for the agents to start and route.
    pub timeout: Duration,
    /// Every agent's `[link_state]` (tests shorten its timers; a baseline turns it off).
    pub link_state: LinkStateSection,
    /// VXLAN (default) or WireGuard links.
    pub tunnels: TunnelKind,
    /// The `dwcp-tunnels` that makes and keeps a WireGuard lab's tunnels.
    pub tunnels_binary: PathBuf,
    /// Rotate every WireGuard key once older than this (checked every second); default the
    /// daemon's (30 days).
    pub rotate_after: Option<Duration>,
    /// The gateways' files alone (default), or a cluster store on etcd.
    pub store: LabStore,
    /// The `dwcp` CLI (etcd mode: the topology is pushed with it).
    pub dwcp_binary: PathBuf,
}

/// The lab of `regions` regions with `tunnels` links, named after `paths`.
fn plan_of(regions: usize, tunnels: TunnelKind, paths: &LabPaths) -> Result<LabPlan> {
    let plan = LabPlan::for_regions(regions)?;
    match tunnels {
        TunnelKind::Vxlan => Ok(plan),
        TunnelKind::Wireguard => Ok(plan.with_wireguard(&paths.prefix)),
        other => Err(LiveLabError::TunnelKind(other)),
    }
}

impl UpOptions {
    pub fn new(regions: usize, agent_binary: impl Into<PathBuf>) -> UpOptions {
        UpOptions {
            regions,
            agent_binary: agent_binary.into(),
            // 100 ms: a loaded 2-core machine sometimes starves a probe sender for 30 ms.
            detect_multiplier: 10,
            timeout: Duration::from_secs(120),
            link_state: LinkStateSection::default(),
            tunnels: TunnelKind::Vxlan,
            tunnels_binary: crate::profile_dir().join("dwcp-tunnels"),
            rotate_after: None,
            store: LabStore::File,
            dwcp_binary: crate::profile_dir().join("dwcp"),
        }
    }
}

/// The lab recorded in `paths`, if any.
pub fn load(paths: &LabPaths) -> Result<Option<LabState>> {
    let path = paths.state_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LiveLabError::State {
            path,
            detail: e.to_string(),
        })
}

/// The lab recorded in `paths`, or [`LiveLabError::NotUp`].
pub fn require(paths: &LabPaths) -> Result<LabState> {
    load(paths)?.ok_or_else(|| LiveLabError::NotUp(paths.state_file()))
}

fn save(state: &LabState) -> Result<()> {
    let path = state.paths.state_file();
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).expect("the lab state serialises");
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))
}

/// Starts the lab. Refuses when a lab is already up in `paths`; a lab left half-made (a
/// crash, a failed `up`) is removed first. On failure everything made is removed again.
pub fn up(paths: &LabPaths, opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<LabState> {
    let plan = plan_of(opts.regions, opts.tunnels, paths)?;
    if opts.store == LabStore::Etcd {
        if plan.tunnels == TunnelKind::Wireguard {
            return Err(LiveLabError::EtcdWithWireguard);
        }
        crate::etcd::available()
            .map_err(|detail| LiveLabError::Etcd(crate::etcd::EtcdLabError::Status(detail)))?;
    }
    // Up: recorded with namespaces or agents, or agents of the lab running even without a
    // record. Namespaces, pins or a record alone are what a crash left: removed below.
    let state = load(paths).ok().flatten();
    let recorded_running = state.as_ref().is_some_and(|s| {
        s.agents.iter().any(|a| agent_alive(a.pid))
            || !multi::stable_namespaces(&paths.prefix).is_empty()
    });
    if recorded_running || !lab_agent_pids(&paths.state_dir).is_empty() {
        return Err(LiveLabError::AlreadyUp {
            regions: state.map_or(0, |s| s.regions),
            dir: paths.state_dir.clone(),
        });
    }
    let stale = leftovers(paths);
    if !stale.is_empty() {
        progress(&format!(
            "removing what an earlier lab left: {}",
            stale.join(", ")
        ));
        down(paths)?;
    }
    let result = up_inner(paths, opts, &plan, progress);
    // DWCP_LAB_KEEP=1 keeps a failed lab for inspection (`down` removes it).
    if result.is_err() && std::env::var_os("DWCP_LAB_KEEP").is_none() {
        let _ = down(paths);
    }
    result
}

fn up_inner(
    paths: &LabPaths,
    opts: &UpOptions,
    plan: &LabPlan,
    progress: &mut dyn FnMut(&str),
) -> Result<LabState> {
    std::fs::create_dir_all(&paths.state_dir)
        .map_err(io(format!("creating {}", paths.state_dir.display())))?;
    progress(&format!(
        "building {} regions and {} links in network namespaces ({}-*)",
        plan.regions.len(),
        plan.links.len(),
        paths.prefix
    ));
    let lab = MultiRegionLab::build(plan, &Naming::Stable(paths.prefix.clone()))?;
    // Frames redirected (or sent back with XDP_TX) into a veth arrive only if its receiving
    // end has an XDP program: XDP_PASS on the hosts' and wires' ends, behind pinned links
    // so they stay attached when `up` exits.
    let mut pass = PassProgram::load()?;
    let pass_dir = paths.pin_root.join("pass");
    let ends = lab
        .hosts
        .iter()
        .map(|h| (h, "eth0"))
        .chain(lab.wires.iter().flat_map(|w| [(w, "wa"), (w, "wb")]));
    for (ns, ifname) in ends {
        let pin = pass_dir.join(format!("{}-{ifname}", ns.name()));
        ns.run_in(|| pass.attach_pinned(ifname, &pin))??;
    }
    drop(pass);
    let store_section = match opts.store {
        LabStore::File => None,
        LabStore::Etcd => Some(start_etcd(paths, &lab, progress)?),
    };
    let latency_emulated = lab.latency_emulated();
    let mut agents = Vec::new();
    for r in &plan.regions {
        let i = r.n as usize - 1;
        let file = |ext: &str| paths.state_dir.join(format!("g{}.{ext}", r.n));
        let pin_dir = paths.pin_root.join(format!("g{}", r.n));
        let socket = file("sock");
        let mut text = match &store_section {
            None => plan.agent_config(r.n, &pin_dir, &socket),
            // Only the gateway's own: the topology comes from the store (the first gateway's
            // file carries it until it has pushed it: `seed_store`).
            Some(store) => plan.local_config(r.n, &pin_dir, &socket) + "\n" + store,
        };
        text += &format!(
            // Probes in the real-time class, as on a busy gateway: on this 2-core machine a
            // probe thread starved past the detection time would take a healthy link down.
            // Without netem the veths add no latency: measured RTTs (a tenth of a ms) would
            // replace the topology's figures, so routes follow those.
            "\n[probe]\nsender = \"agent\"\nrt_priority = 10\ndetect_multiplier = {}\n\n[updater]\n\
             optimise_interval_s = 0\n\n[routing]\nuse_measurements = {latency_emulated}\n\n\
             [flows]\nsample_every = 10\n\n[metrics]\nlisten = \"{LAB_METRICS}\"\n",
            opts.detect_multiplier
        );
        text += &toml::to_string(&LinkStateTable {
            link_state: &opts.link_state,
        })
        .expect("a [link_state] section serialises");
        let config = file("toml");
        std::fs::write(&config, text).map_err(io(format!("writing {}", config.display())))?;
        agents.push(AgentRecord {
            region: r.name.clone(),
            gateway: r.gateway.clone(),
            namespace: lab.gateways[i].name().to_string(),
            host_namespace: lab.hosts[i].name().to_string(),
            host_ip: r.host_ip,
            pid: 0,
            config,
            socket,
            log: file("log"),
            events: file("events.jsonl"),
            pin_dir,
            tunnels_pid: 0,
        });
    }
    // The namespaces stay (stable names) when `lab` drops at the end of `up`.
    drop(lab);
    let mut state = LabState {
        paths: paths.clone(),
        regions: plan.regions.len(),
        agents,
        latency_emulated,
        started_unix_s: unix_now(),
        tunnels: plan.tunnels,
        store: opts.store,
    };
    save(&state)?;
    if plan.tunnels == TunnelKind::Wireguard {
        start_tunnels(&mut state, opts, plan, progress)?;
    }
    progress(&format!(
        "starting {} dwcp-agent daemons",
        state.agents.len()
    ));
    let deadline = Instant::now() + opts.timeout;
    let mut published = None;
    for (i, a) in state.agents.iter_mut().enumerate() {
        if i == 0 && opts.store == LabStore::Etcd {
            published = Some(seed_store(paths, opts, plan, a, deadline, progress)?);
            continue;
        }
        a.pid = spawn_agent(&opts.agent_binary, a, &paths.state_dir)?;
        // Recorded at once: `down` finds every started agent even if `up` dies now.
        save_agents(paths, a)?;
    }
    state = require(paths)?;
    for a in &state.agents {
        wait_running(a, 0, deadline, opts.timeout)?;
    }
    progress("waiting until every gateway's links are up and it routes to every other region");
    for a in &state.agents {
        wait_until(a, deadline, opts.timeout, "its links up", |s| {
            let links: Vec<LinkView> = api_get(&s.socket, "/v1/links")?;
            Ok(links
                .iter()
                .filter(|l| l.interface.is_some())
                .all(|l| l.health == LinkHealth::Up))
        })?;
        wait_until(a, deadline, opts.timeout, "routes to every region", |s| {
            let routes: Vec<RouteView> = api_get(&s.socket, "/v1/routes")?;
            let others = plan.regions.iter().filter(|r| r.name != s.region);
            Ok(others.into_iter().all(|r| {
                routes
                    .iter()
                    .any(|rt| rt.destination == r.name && primary(rt).is_some_and(|p| p.live))
            }))
        })?;
    }
    if let Some(generation) = published {
        progress(&format!(
            "waiting until every gateway runs the store's topology (generation {generation})"
        ));
        for a in &state.agents {
            wait_until(a, deadline, opts.timeout, "the pushed topology", |s| {
                let status: StatusView = api_get(&s.socket, "/v1/status")?;
                Ok(status.published_topology_generation == Some(generation))
            })?;
        }
    }
    Ok(state)
}

/// Starts the lab's etcd cluster (three members, TLS with client certificates) and gives every
/// gateway a port on its bridge. Returns the gateways' `[store]` section. The cluster is kept
/// running: `down` removes it, also after a failed `up`.
fn start_etcd(
    paths: &LabPaths,
    lab: &MultiRegionLab,
    progress: &mut dyn FnMut(&str),
) -> Result<String> {
    let names = paths.etcd();
    progress(&format!(
        "starting a three-member etcd cluster (TLS) in {} (data on a tmpfs at {})",
        names.namespaces().join(", "),
        names.dir.display()
    ));
    let mut cluster = EtcdCluster::start_stable(&names)?;
    for gw in &lab.gateways {
        cluster.attach(gw, STORE_INTERFACE)?;
    }
    let section = cluster.store_section();
    cluster.keep();
    Ok(section)
}

/// Publishes the lab's topology in the store, once: writes it to the state directory,
/// starts the first gateway's agent on a file with the topology tables added (an agent's
/// API is what `dwcp topology push` talks to), pushes through it, waits until it runs the
/// published generation, and leaves its file with only its own part, as the others' (it
/// never reads its tables again: a restart or reload takes the store's, or the cached,
/// topology). Returns the generation.
fn seed_store(
    paths: &LabPaths,
    opts: &UpOptions,
    plan: &LabPlan,
    a: &mut AgentRecord,
    deadline: Instant,
    progress: &mut dyn FnMut(&str),
) -> Result<u64> {
    let topology = paths.state_dir.join(TOPOLOGY_FILE);
    let text = plan.topology_text();
    std::fs::write(&topology, &text).map_err(io(format!("writing {}", topology.display())))?;
    let local = std::fs::read_to_string(&a.config)
        .map_err(io(format!("reading {}", a.config.display())))?;
    // The topology first: its top-level keys (`edge = []`) must precede every table.
    std::fs::write(&a.config, format!("{text}\n{local}"))
        .map_err(io(format!("writing {}", a.config.display())))?;
    a.pid = spawn_agent(&opts.agent_binary, a, &paths.state_dir)?;
    save_agents(paths, a)?;
    wait_running(a, 0, deadline, opts.timeout)?;
    progress(&format!(
        "dwcp topology push {} (through {}'s gateway)",
        topology.display(),
        a.region
    ));
    let topology_arg = topology.to_string_lossy();
    let pushed: TopologyChanges = dwcp_json(
        &opts.dwcp_binary,
        &a.socket,
        &["topology", "push", &topology_arg],
    )?;
    let generation = pushed.generation.ok_or_else(|| LiveLabError::Agent {
        region: a.region.clone(),
        detail: format!("the push published nothing: {pushed:?}"),
    })?;
    wait_until(a, deadline, opts.timeout, "the pushed topology", |s| {
        let status: StatusView = api_get(&s.socket, "/v1/status")?;
        Ok(status.published_topology_generation == Some(generation))
    })?;
    std::fs::write(&a.config, local).map_err(io(format!("writing {}", a.config.display())))?;
    Ok(generation)
}

/// Runs `dwcp --socket SOCKET --json ARGS` and decodes its answer; a failure is the agent's
/// error with what `dwcp` said.
pub fn dwcp_json<T: DeserializeOwned>(dwcp: &Path, socket: &Path, args: &[&str]) -> Result<T> {
    let out = Command::new(dwcp)
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .map_err(io(format!("running {}", dwcp.display())))?;
    let fail = |detail: String| LiveLabError::Agent {
        region: socket.display().to_string(),
        detail: format!("dwcp {}: {detail}", args.join(" ")),
    };
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))
}

/// A WireGuard lab's tunnels, made and kept by dwcp: each gateway's keys are generated in its
/// own tunnel state directory (`dwcp-tunnels pubkey`), the public keys exchanged into both
/// ends' tunnel files, and one `dwcp-tunnels run` per gateway makes the tunnels, answers its
/// peers' key changes and rotates its keys on schedule. Waits until every tunnel passes a
/// ping. The agents install the hand-off (fast path to tunnel); the kernel's main table
/// carries transit (a packet from a tunnel to a neighbour region goes into the direct tunnel,
/// as the fast path cannot yet: docs/OPERATIONS.md), so a path crosses at most one middle
/// gateway.
fn start_tunnels(
    state: &mut LabState,
    opts: &UpOptions,
    plan: &LabPlan,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let paths = state.paths.clone();
    let fail = |n: u8, detail: String| LiveLabError::Tunnels {
        region: plan.regions[n as usize - 1].name.clone(),
        detail,
    };
    progress("generating the WireGuard keys (dwcp-tunnels pubkey) and exchanging them");
    let mut keys = std::collections::HashMap::new();
    for l in &plan.links {
        for n in [l.a, l.b] {
            let text = wireguard_public_key(state, &opts.tunnels_binary, n, l)?;
            let key: dwcp_tunnels::PublicKey = text
                .parse()
                .map_err(|e| fail(n, format!("its public key {text:?}: {e}")))?;
            keys.insert((l.id, n), key);
        }
    }
    progress("starting a dwcp-tunnels daemon per gateway (tunnels, key exchange, rotation)");
    for r in &plan.regions {
        let n = r.n;
        let mut specs = Vec::new();
        for l in plan.links.iter().filter(|l| l.a == n || l.b == n) {
            let (peer, peer_underlay) = if l.a == n {
                (l.b, l.b_ip)
            } else {
                (l.a, l.a_ip)
            };
            let (local, peer_tunnel) = LabPlan::tunnel_ips(l, n);
            // The peer's tunnel address and every region's prefix but ours: the tunnel carries
            // transit to and from regions behind the peer.
            let allowed: Vec<String> = std::iter::once(format!("{peer_tunnel}/32"))
                .chain(
                    plan.regions
                        .iter()
                        .filter(|o| o.n != n)
                        .map(|o| format!("{}/24", o.prefix)),
                )
                .collect();
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            let port = LabPlan::wireguard_port(l);
            specs.push(crate::fail_closed::wireguard(
                &plan.wireguard_device(l, n),
                &format!("{local}/30"),
                port,
                keys[&(l.id, peer)],
                (peer_underlay, port),
                &allowed,
                // The agent installs the hand-off.
                None,
            ));
        }
        let file = paths.state_dir.join(format!("g{n}.tunnels.toml"));
        let text = toml::to_string(&dwcp_tunnels::TunnelsFile { tunnels: specs })
            .map_err(|e| fail(n, format!("its tunnels file: {e}")))?;
        std::fs::write(&file, text).map_err(io(format!("writing {}", file.display())))?;
        let log_path = paths.state_dir.join(format!("g{n}.tunnels.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        let err = log.try_clone().map_err(io("tunnels log"))?;
        let mut cmd = tunnels_command(state, &opts.tunnels_binary, n);
        cmd.arg("run").arg(&file);
        if let Some(after) = opts.rotate_after {
            let s = after.as_secs().max(1).to_string();
            cmd.args(["--rotate-after-s", &s, "--check-interval-s", "1"]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {}", opts.tunnels_binary.display())))?;
        state.agents[n as usize - 1].tunnels_pid = child.id();
        // Recorded at once: `down` finds every started daemon even if `up` dies now.
        save(state)?;
    }
    let deadline = Instant::now() + opts.timeout;
    for l in &plan.links {
        let ns = Borrowed::new(&state.agents[l.a as usize - 1].namespace);
        let (_, peer) = LabPlan::tunnel_ips(l, l.a);
        let peer = peer.to_string();
        while ns.ns().exec(&["ping", "-c1", "-W1", &peer]).is_err() {
            let exited = [l.a, l.b]
                .into_iter()
                .find(|&n| !alive(state.agents[n as usize - 1].tunnels_pid, "dwcp-tunnels"));
            if exited.is_some() || Instant::now() > deadline {
                let n = exited.unwrap_or(l.a);
                let log = paths.state_dir.join(format!("g{n}.tunnels.log"));
                let what = match exited {
                    Some(_) => "its dwcp-tunnels daemon exited".to_string(),
                    None => format!(
                        "no ping crossed the tunnel of link {} within {:?}",
                        l.name, opts.timeout
                    ),
                };
                return Err(fail(
                    n,
                    format!(
                        "{what}; the daemon's log:\n{}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    ),
                ));
            }
        }
    }
    for r in &plan.regions {
        let ns = Borrowed::new(&state.agents[r.n as usize - 1].namespace);
        for l in plan.links.iter().filter(|l| l.a == r.n || l.b == r.n) {
            let peer = if l.a == r.n { l.b } else { l.a };
            let prefix = format!("{}/24", plan.regions[peer as usize - 1].prefix);
            let dev = plan.wireguard_device(l, r.n);
            ns.ns().ip(&["route", "replace", &prefix, "dev", &dev])?;
        }
    }
    Ok(())
}

/// `dwcp-tunnels` on region `n`'s gateway: its namespace and its tunnel state directory.
fn tunnels_command(state: &LabState, tunnels_binary: &Path, n: u8) -> Command {
    let mut cmd = Command::new(tunnels_binary);
    cmd.arg("--netns")
        .arg(&state.agents[n as usize - 1].namespace)
        .arg("--state-dir")
        .arg(state.paths.state_dir.join(format!("g{n}-tunnels")));
    cmd
}

/// The public key region `n`'s end of WireGuard `link` has in force (`dwcp-tunnels pubkey`
/// on its tunnel state; generated on first use): after a rotation, the new one.
pub fn wireguard_public_key(
    state: &LabState,
    tunnels_binary: &Path,
    n: u8,
    link: &PlannedLink,
) -> Result<String> {
    let plan = state.plan()?;
    let out = tunnels_command(state, tunnels_binary, n)
        .arg("pubkey")
        .arg(plan.wireguard_device(link, n))
        .output()
        .map_err(io(format!("running {}", tunnels_binary.display())))?;
    if !out.status.success() {
        return Err(LiveLabError::Tunnels {
            region: plan.regions[n as usize - 1].name.clone(),
            detail: format!(
                "{} pubkey: {}: {}",
                tunnels_binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `[link_state]` table of an agent.toml.
#[derive(Serialize)]
struct LinkStateTable<'a> {
    link_state: &'a LinkStateSection,
}

/// Kills `region`'s agent (SIGKILL, as a crash would) and leaves it dead; its fast path
/// forwards and answers probes on. Returns the lab with the dead agent's pid recorded as 0.
pub fn kill_agent(state: &LabState, region: &str, timeout: Duration) -> Result<LabState> {
    let mut a = state.agent(region)?.clone();
    kill(a.pid, timeout);
    a.pid = 0;
    save_agents(&state.paths, &a)?;
    require(&state.paths)
}

/// SIGKILL to `pid` if it is a live agent, then waits up to `timeout` until it is gone.
fn kill(pid: u32, timeout: Duration) {
    if agent_alive(pid) {
        // SAFETY: kill(2) on a pid just checked to be one of the lab's agents.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + timeout;
        while agent_alive(pid) && Instant::now() < deadline {
            reap(pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        reap(pid);
    }
}

/// Kills `region`'s agent (SIGKILL, as a crash would) and starts `binary` in its place with
/// the same configuration, then waits until it runs. Its fast path forwards meanwhile.
/// Returns the lab with the new agent recorded.
pub fn restart_agent(
    state: &LabState,
    region: &str,
    binary: &Path,
    timeout: Duration,
) -> Result<LabState> {
    let mut a = state.agent(region)?.clone();
    kill(a.pid, timeout);
    let logged = std::fs::metadata(&a.log).map_or(0, |m| m.len() as usize);
    a.pid = spawn_agent(binary, &a, &state.paths.state_dir)?;
    save_agents(&state.paths, &a)?;
    wait_running(&a, logged, Instant::now() + timeout, timeout)?;
    require(&state.paths)
}

fn save_agents(paths: &LabPaths, a: &AgentRecord) -> Result<()> {
    let mut state = require(paths)?;
    if let Some(s) = state.agents.iter_mut().find(|s| s.region == a.region) {
        *s = a.clone();
    }
    save(&state)
}

fn spawn_agent(binary: &Path, a: &AgentRecord, state_dir: &Path) -> Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .map_err(io(format!("opening {}", a.log.display())))?;
    let err = log.try_clone().map_err(io("agent log"))?;
    let child = Command::new(binary)
        .arg("--netns")
        .arg(&a.namespace)
        .arg("--config")
        .arg(&a.config)
        .arg("--events-file")
        .arg(&a.events)
        .arg("--state-dir")
        .arg(state_dir.join(format!("{}-state", a.gateway)))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: a Ctrl-C in the terminal that ran `up` does not reach it.
        .process_group(0)
        .spawn()
        .map_err(io(format!("starting {}", binary.display())))?;
    Ok(child.id())
}

/// Waits until the agent's log says it runs, after its first `from` bytes (an earlier run's).
fn wait_running(a: &AgentRecord, from: usize, deadline: Instant, timeout: Duration) -> Result<()> {
    loop {
        let text = std::fs::read_to_string(&a.log).unwrap_or_default();
        if text.get(from..).is_some_and(|t| t.contains("running")) {
            return Ok(());
        }
        // Not `!agent_alive`: a just spawned agent may not have exec'd yet.
        if exited(a.pid) {
            return Err(LiveLabError::Agent {
                region: a.region.clone(),
                detail: format!(
                    "exited before running; its log ({}):\n{text}",
                    a.log.display()
                ),
            });
        }
        if Instant::now() > deadline {
            return Err(LiveLabError::Timeout {
                what: format!("the agent of {} to start", a.region),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` on agent `a` until it holds (API errors count as "not yet").
fn wait_until(
    a: &AgentRecord,
    deadline: Instant,
    timeout: Duration,
    what: &str,
    f: impl Fn(&AgentRecord) -> Result<bool>,
) -> Result<()> {
    let mut last_err = None;
    loop {
        match f(a) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e.to_string()),
        }
        if !agent_alive(a.pid) {
            return Err(LiveLabError::Agent {
                region: a.region.clone(),
                detail: format!("is not running; the end of its log:\n{}", log_tail(a)),
            });
        }
        if Instant::now() > deadline {
            return Err(LiveLabError::Timeout {
                what: format!(
                    "the agent of {} to show {what}{}",
                    a.region,
                    last_err
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last lines of an agent's log (the state directory goes with a failed `up`).
fn log_tail(a: &AgentRecord) -> String {
    let text = std::fs::read_to_string(&a.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// GET `path` from the agent's API on `socket`.
pub fn api_get<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("a tokio runtime"))?;
    let client = ApiClient::new(Endpoint::Unix(socket.to_path_buf()));
    rt.block_on(client.get(path))
        .map_err(|e| LiveLabError::Agent {
            region: socket.display().to_string(),
            detail: e.to_string(),
        })
}

/// The primary path of a route.
pub fn primary(r: &RouteView) -> Option<&dwcp_agent::agent::PathView> {
    r.paths.iter().find(|p| p.role == PathRole::Primary)
}

/// Whether `pid` is a live (not zombie) `dwcp-agent`.
fn agent_alive(pid: u32) -> bool {
    alive(pid, "dwcp-agent")
}

/// Whether `pid` is a live (not zombie) process of program `exe`.
fn alive(pid: u32, exe: &str) -> bool {
    if pid == 0 || exited(pid) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline)
        .split('\0')
        .next()
        .is_some_and(|e| e.ends_with(exe))
}

/// Whether `pid` is gone or a zombie. Unlike `!alive`, a child just spawned, between fork
/// and exec (still this program's command line), has not exited.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Live processes of program `exe` whose arguments `ours` recognises.
fn pids_of(exe: &str, ours: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .map(str::to_string)
                .collect();
            args.first().is_some_and(|a| a.ends_with(exe)) && ours(&args) && alive(pid, exe)
        })
        .collect()
}

/// Live `exe` processes with argument `flag` followed by a file in `state_dir` (the lab's
/// agents and tunnel daemons, found without the state file).
fn lab_pids(state_dir: &Path, exe: &str, flag: &str) -> Vec<u32> {
    pids_of(exe, |args| {
        args.windows(2)
            .any(|w| w[0] == flag && Path::new(&w[1]).parent() == Some(state_dir))
    })
}

fn lab_agent_pids(state_dir: &Path) -> Vec<u32> {
    lab_pids(state_dir, "dwcp-agent", "--config")
}

fn lab_tunnel_daemon_pids(state_dir: &Path) -> Vec<u32> {
    lab_pids(state_dir, "dwcp-tunnels", "run")
}

/// The wireguard-go daemons of the lab's devices (they outlive a deleted namespace).
fn lab_wireguard_go_pids(prefix: &str) -> Vec<u32> {
    let tag = multi::interface_tag(prefix);
    pids_of("wireguard-go", |args| {
        args.iter()
            .skip(1)
            .any(|a| a.starts_with("wg") && a.ends_with(&tag))
    })
}

/// SIGTERM to `pids` (processes of `exe`), SIGKILL to those alive after `grace`.
fn terminate(pids: &[u32], exe: &str, grace: Duration) {
    for &pid in pids {
        // SAFETY: kill(2) on a pid just checked to be one of the lab's processes.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    for &pid in pids {
        while alive(pid, exe) && Instant::now() < deadline {
            reap(pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid, exe) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let killed = Instant::now();
            while alive(pid, exe) && killed.elapsed() < Duration::from_secs(5) {
                reap(pid);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        reap(pid);
    }
}

/// What is left of a lab in `paths`: namespaces, agent processes, pins, state directory.
/// Empty after `down`.
pub fn leftovers(paths: &LabPaths) -> Vec<String> {
    let mut left: Vec<String> = multi::stable_namespaces(&paths.prefix)
        .into_iter()
        .map(|n| format!("namespace {n}"))
        .collect();
    let mut pids = lab_agent_pids(&paths.state_dir);
    if let Ok(Some(s)) = load(paths) {
        pids.extend(s.agents.iter().map(|a| a.pid).filter(|&p| agent_alive(p)));
    }
    pids.sort();
    pids.dedup();
    left.extend(pids.iter().map(|p| format!("dwcp-agent process {p}")));
    left.extend(
        lab_tunnel_daemon_pids(&paths.state_dir)
            .iter()
            .map(|p| format!("dwcp-tunnels process {p}")),
    );
    left.extend(
        lab_wireguard_go_pids(&paths.prefix)
            .iter()
            .map(|p| format!("wireguard-go process {p}")),
    );
    let etcd = paths.etcd();
    left.extend(
        lab_etcd_pids(&etcd)
            .iter()
            .map(|p| format!("etcd process {p}")),
    );
    left.extend(etcd.leftovers());
    if paths.pin_root.exists() {
        left.push(format!("pins {}", paths.pin_root.display()));
    }
    if paths.state_dir.exists() {
        left.push(format!("state {}", paths.state_dir.display()));
    }
    left
}

/// The members of the lab's etcd cluster (found by their data directories).
fn lab_etcd_pids(names: &StableNames) -> Vec<u32> {
    pids_of("etcd", |args| names.is_member(args))
}

/// What `down` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownReport {
    pub agents_stopped: Vec<u32>,
    /// `dwcp-tunnels` daemons and wireguard-go processes (a WireGuard lab).
    pub tunnel_processes_stopped: Vec<u32>,
    /// The etcd cluster's members (etcd mode).
    pub etcd_stopped: Vec<u32>,
    /// The etcd cluster's namespaces, bridge and tmpfs.
    pub etcd_removed: Vec<String>,
    pub namespaces: Vec<String>,
    pub pins_removed: bool,
    pub state_removed: bool,
}

impl DownReport {
    pub fn is_empty(&self) -> bool {
        self.agents_stopped.is_empty()
            && self.tunnel_processes_stopped.is_empty()
            && self.etcd_stopped.is_empty()
            && self.etcd_removed.is_empty()
            && self.namespaces.is_empty()
            && !self.pins_removed
            && !self.state_removed
    }
}

/// Removes the lab in `paths`: stops its agents (SIGTERM, then SIGKILL after 10 s) and its
/// etcd cluster's members, deletes its namespaces (the cluster's too), the cluster's bridge
/// and tmpfs, the pins and the state directory. Idempotent; needs no state file.
pub fn down(paths: &LabPaths) -> Result<DownReport> {
    let mut report = DownReport::default();
    let mut pids = lab_agent_pids(&paths.state_dir);
    if let Ok(Some(s)) = load(paths) {
        pids.extend(s.agents.iter().map(|a| a.pid));
    }
    pids.retain(|&p| agent_alive(p));
    pids.sort();
    pids.dedup();
    terminate(&pids, "dwcp-agent", Duration::from_secs(10));
    report.agents_stopped = pids;
    // The tunnel daemons, then wireguard-go (the daemons leave the tunnels up when stopped).
    let mut daemons = lab_tunnel_daemon_pids(&paths.state_dir);
    if let Ok(Some(s)) = load(paths) {
        daemons.extend(s.agents.iter().map(|a| a.tunnels_pid));
    }
    daemons.retain(|&p| alive(p, "dwcp-tunnels"));
    daemons.sort();
    daemons.dedup();
    terminate(&daemons, "dwcp-tunnels", Duration::from_secs(5));
    let wireguard_go = lab_wireguard_go_pids(&paths.prefix);
    terminate(&wireguard_go, "wireguard-go", Duration::from_secs(5));
    report.tunnel_processes_stopped = daemons.into_iter().chain(wireguard_go).collect();
    // The agents are gone: nothing needs the store. Its data is thrown away with the tmpfs.
    let etcd = paths.etcd();
    report.etcd_stopped = lab_etcd_pids(&etcd);
    terminate(&report.etcd_stopped, "etcd", Duration::from_secs(5));
    report.namespaces = multi::stable_down(&paths.prefix)?;
    // After the gateways' namespaces, which held the other ends of the cluster's ports.
    report.etcd_removed = etcd.remove()?;
    if paths.pin_root.exists() {
        // The pinned XDP links went with their interfaces; the pins themselves remain.
        std::fs::remove_dir_all(&paths.pin_root)
            .map_err(io(format!("removing {}", paths.pin_root.display())))?;
        report.pins_removed = true;
    }
    if paths.state_dir.exists() {
        std::fs::remove_dir_all(&paths.state_dir)
            .map_err(io(format!("removing {}", paths.state_dir.display())))?;
        report.state_removed = true;
    }
    Ok(report)
}

/// Collects the exit status of `pid` if it is our child (agents started by this process).
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a pid; fails harmlessly (ECHILD) if not our child.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
}

/// The link between regions `a` and `b` (names or numbers), or the link named/numbered `a`.
pub fn find_link(state: &LabState, a: &str, b: Option<&str>) -> Result<PlannedLink> {
    let plan = state.plan()?;
    let l = match b {
        Some(b) => plan.link_between(a, b)?.clone(),
        None => plan
            .link(a)
            .cloned()
            .ok_or_else(|| LabError::UnknownLink(a.to_string()))?,
    };
    Ok(l)
}

/// The agents at the two ends of `link`.
fn ends<'a>(state: &'a LabState, link: &PlannedLink) -> [&'a AgentRecord; 2] {
    [
        &state.agents[link.a as usize - 1],
        &state.agents[link.b as usize - 1],
    ]
}

/// Cuts `link` silently (in its wire) and waits until the agents at both ends have seen it
/// down and route to each other around it, and every other agent, told by their link-state
/// records, has it down and no path over it.
pub fn fail(state: &LabState, link: &PlannedLink, timeout: Duration) -> Result<()> {
    multi::stable_set_cut(&state.paths.prefix, link.id, true)?;
    let deadline = Instant::now() + timeout;
    let [a, b] = ends(state, link);
    for (me, peer) in [(a, b), (b, a)] {
        wait_until(
            me,
            deadline,
            timeout,
            &format!("link {} down and routes around it", link.name),
            |s| {
                let links: Vec<LinkView> = api_get(&s.socket, "/v1/links")?;
                let down = links
                    .iter()
                    .any(|l| l.id == link.id && l.health == LinkHealth::Down);
                let routes: Vec<RouteView> = api_get(&s.socket, "/v1/routes")?;
                Ok(down
                    && routes.iter().any(|r| {
                        r.destination == peer.region
                            && primary(r).is_some_and(|p| p.live && !p.links.contains(&link.id))
                    }))
            },
        )?;
    }
    for other in state.agents.iter().filter(|x| ![a, b].contains(x)) {
        wait_until(
            other,
            deadline,
            timeout,
            &format!("link {} down and no path over it", link.name),
            |s| {
                let links: Vec<LinkView> = api_get(&s.socket, "/v1/links")?;
                let routes: Vec<RouteView> = api_get(&s.socket, "/v1/routes")?;
                Ok(links
                    .iter()
                    .any(|l| l.id == link.id && l.health == LinkHealth::Down)
                    && routes
                        .iter()
                        .flat_map(|r| &r.paths)
                        .all(|p| !p.links.contains(&link.id)))
            },
        )?;
    }
    Ok(())
}

/// Heals `link` and waits until the agents at both ends see it up and route over it again.
pub fn heal(state: &LabState, link: &PlannedLink, timeout: Duration) -> Result<()> {
    multi::stable_set_cut(&state.paths.prefix, link.id, false)?;
    let deadline = Instant::now() + timeout;
    let [a, b] = ends(state, link);
    for (me, peer) in [(a, b), (b, a)] {
        wait_until(
            me,
            deadline,
            timeout,
            &format!("link {} up and used again", link.name),
            |s| {
                let links: Vec<LinkView> = api_get(&s.socket, "/v1/links")?;
                let up = links
                    .iter()
                    .any(|l| l.id == link.id && l.health == LinkHealth::Up);
                let routes: Vec<RouteView> = api_get(&s.socket, "/v1/routes")?;
                Ok(up
                    && routes.iter().any(|r| {
                        r.destination == peer.region
                            && primary(r).is_some_and(|p| p.links == [link.id])
                    }))
            },
        )?;
    }
    Ok(())
}

/// Which links of the lab are cut, by link id.
pub fn cut_links(state: &LabState) -> Result<Vec<u32>> {
    let plan = state.plan()?;
    let states = multi::stable_link_states(&state.paths.prefix);
    Ok(plan
        .links
        .iter()
        .filter(|l| {
            let wire = format!("{}-w{}", state.paths.prefix, l.id);
            states.iter().any(|(n, cut)| *n == wire && *cut)
        })
        .map(|l| l.id)
        .collect())
}

/// What one stream between two hosts delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairReport {
    pub from: String,
    pub to: String,
    pub sent: u64,
    pub lost: u64,
    /// Lost in the receiving socket (harness, not network).
    pub socket_drops: u64,
}

impl PairReport {
    pub fn delivered(&self) -> u64 {
        self.sent - self.lost
    }
}

/// A namespace of the running lab, borrowed: never removed by this handle.
pub struct Borrowed(Option<Netns>);

impl Borrowed {
    pub fn new(name: &str) -> Borrowed {
        Borrowed(Some(Netns::adopt(name)))
    }
    pub fn ns(&self) -> &Netns {
        self.0.as_ref().expect("held until drop")
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            ns.keep();
        }
    }
}

/// Every ordered pair of regions (by index).
pub fn all_pairs(regions: usize) -> Vec<(usize, usize)> {
    (0..regions)
        .flat_map(|a| (0..regions).filter(move |&b| b != a).map(move |b| (a, b)))
        .collect()
}

/// Sends a numbered UDP stream of about `per_ms` datagrams per millisecond from the host of
/// region `from` to the host of region `to`, for each pair, `duration` long; at most 6 streams
/// at a time. Reports what arrived.
pub fn traffic(
    state: &LabState,
    pairs: &[(usize, usize)],
    duration: Duration,
    per_ms: u64,
) -> Result<Vec<PairReport>> {
    let mut reports = Vec::new();
    for batch in pairs.chunks(6) {
        let mut running = Vec::new();
        for &(from, to) in batch {
            let (src, dst) = (&state.agents[from], &state.agents[to]);
            let (s, d) = (
                Borrowed::new(&src.host_namespace),
                Borrowed::new(&dst.host_namespace),
            );
            let port = 20_000 + (from * 64 + to) as u16;
            let stream = netlab::UdpStream::start(s.ns(), d.ns(), dst.host_ip, port, per_ms)?;
            running.push((src.region.clone(), dst.region.clone(), stream));
        }
        std::thread::sleep(duration);
        for (_, _, stream) in &running {
            stream.stop();
        }
        for (from, to, stream) in running {
            let r = stream.finish().map_err(|source| LiveLabError::Stream {
                from: from.clone(),
                to: to.clone(),
                source,
            })?;
            reports.push(PairReport {
                from,
                to,
                sent: r.sent,
                lost: r.lost,
                socket_drops: r.socket_drops,
            });
        }
    }
    Ok(reports)
}
