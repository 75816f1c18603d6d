//! The agent's configuration file (`/etc/dwcp/agent.toml` by default).
//!
//! One file holds what this gateway is (`[gateway]`), the links it terminates
//! (`[[local_link]]`), the LAN prefixes of every region (`[[prefixes]]`), the probe, routing,
//! traffic, QoS, updater and API settings, the health checks, and the whole topology
//! (`[[region]]`, `[[link]]`, `[[edge]]`, the same on every gateway; in etcd mode the cluster
//! store's replaces it, `load_with_topology`). Unknown fields are rejected; every error names
//! the field and its line.
//!
//! ```toml
//! [gateway]
//! name = "gw-use1-a"
//! region = "us-east-1"
//! lan_interfaces = ["lan0"]
//!
//! [[local_link]]
//! link = "use1-euw1"        # a [[link]] name; this gateway terminates it
//! interface = "ul0"
//! local_ip = "172.31.1.1"
//! peer_ip = "172.31.1.2"
//!
//! [[prefixes]]
//! region = "eu-west-1"
//! prefixes = ["10.2.0.0/16"]
//! ```
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use dwcp_common::{probe::ProbeKey, QosClass};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;
use toml::Spanned;

mod check;
mod sections;

pub use sections::LinkStateSection;
pub use sections::{
    ApiConfig, HttpLimits, MetricsConfig, SenderConfig, DEFAULT_API_MAX_CONNECTIONS,
    DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_METRICS_LISTEN,
    DEFAULT_METRICS_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT_MS, DEFAULT_SOCKET, DEFAULT_SOCKET_MODE,
    MIN_TOKEN_LEN,
};
pub use sections::{StoreKind, StoreSection};

use crate::{
    bandwidth::ManagerConfig,
    health::{HealthCheckConfig, HealthCheckSpec},
    liveness::MonitorConfig,
    routing::{BalancedWeights, Constraints, Strategy},
    store::{PublishedTopology, StoreConfig},
    topology::{error::line_of, EdgeConfig, LinkConfig, RegionConfig, Topology, TopologyConfig},
    traffic::{PolicingConfig, TrafficConfig},
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/dwcp/agent.toml";
/// The flow hash seed when none is configured: the same on every gateway, so flows hash alike.
pub const DEFAULT_HASH_SEED: u32 = 0x6477_6370;
/// VNI of a link when none is configured: `VNI_BASE + link_id`, so both ends agree.
pub const VNI_BASE: u32 = 10_000;

/// Why a configuration was refused. Nothing of the configuration in force changes.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{}: {message}{}", origin(.path), .line.map(|l| format!(":{l}")).unwrap_or_default(), .snippet.as_ref().map(|s| format!("\n    {s}")).unwrap_or_default())]
    Parse {
        path: Option<PathBuf>,
        line: Option<usize>,
        /// The offending line of the file.
        snippet: Option<String>,
        message: String,
    },
    #[error("{} is invalid ({} problem{}):\n{}", origin(.path), .problems.len(), if .problems.len() == 1 { "" } else { "s" }, Problems(.problems))]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<Problem>,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "configuration".into())
}

/// One problem found by validation: the field (as a TOML path), its line, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// This parse or check error, naming the file `path` it came from.
    fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Parse {
                line,
                snippet,
                message,
                ..
            } => ConfigError::Parse {
                path: Some(path.to_path_buf()),
                line,
                snippet,
                message,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: Some(path.to_path_buf()),
                problems,
            },
            other => other,
        }
    }

    /// The problems of an invalid configuration (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// An IP prefix, `addr/len`, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        let p = Prefix { addr, len };
        if p.network() != addr {
            return Err(format!(
                "{addr}/{len} has host bits set (the network is {}/{len})",
                p.network()
            ));
        }
        Ok(p)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether two prefixes share an address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let len = self.len.min(other.len);
        Prefix {
            addr: self.addr,
            len,
        }
        .network()
            == Prefix {
                addr: other.addr,
                len,
            }
            .network()
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix (address/length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        Prefix::new(addr, len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A MAC address, `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `aa:bb:cc:dd:ee:ff` (hex, either case) as six bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_mac(&s)
            .map(Mac)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a MAC address")))
    }
}

// ---------------------------------------------------------------------------------------------
// The TOML schema.

/// The file as parsed (before validation).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub gateway: Spanned<GatewaySection>,
    #[serde(default)]
    pub local_link: Vec<Spanned<LocalLinkSection>>,
    #[serde(default)]
    pub prefixes: Vec<Spanned<PrefixesSection>>,
    #[serde(default)]
    pub probe: ProbeSection,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub traffic: TrafficConfig,
    /// How reservations are enforced in the fast path (token buckets).
    #[serde(default)]
    pub policing: PolicingConfig,
    #[serde(default)]
    pub qos: QosSection,
    #[serde(default)]
    pub updater: UpdaterSection,
    #[serde(default)]
    pub flows: FlowsConfig,
    /// Bandwidth reservations (`crate::bandwidth`): admission limits and the state file.
    #[serde(default)]
    pub reservations: ManagerConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub link_state: LinkStateSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub health_check: Vec<Spanned<HealthCheckConfig>>,
    #[serde(default)]
    pub region: Vec<Spanned<RegionConfig>>,
    #[serde(default)]
    pub link: Vec<Spanned<LinkConfig>>,
    #[serde(default)]
    pub edge: Vec<Spanned<EdgeConfig>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub name: Spanned<String>,
    pub region: Spanned<String>,
    /// bpffs directory of the pinned maps and XDP links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default = "default_hash_seed")]
    pub hash_seed: u32,
    /// Interfaces facing this region's hosts (the LAN program runs there).
    pub lan_interfaces: Spanned<Vec<String>>,
}

/// `ip rule fwmark <fwmark> lookup <table> pref <priority>` +
/// `default dev <tunnel> table <table>`: packets marked `fwmark` leave through this tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub fwmark: u32,
    pub table: u32,
    #[serde(default = "default_rule_priority")]
    pub priority: u32,
}

fn default_rule_priority() -> u32 {
    1000
}

/// Where the agent pins its maps and links unless `[dataplane] pin_dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dwcp";

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

fn default_hash_seed() -> u32 {
    DEFAULT_HASH_SEED
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLinkSection {
    /// Name of a `[[link]]` with this gateway's region at one end.
    pub link: Spanned<String>,
    /// `vxlan` (default: the fast path encapsulates) or `wireguard` (the fast path hands the
    /// packets to the kernel with a mark; policy routing sends them into `interface`).
    #[serde(default)]
    pub kind: Option<Spanned<String>>,
    /// Underlay interface the link leaves on; for a `wireguard` link, the WireGuard device
    /// (created by the tunnel manager, not by the agent).
    pub interface: Spanned<String>,
    /// Required for a `vxlan` link. For a `wireguard` link: our address inside the tunnel (on
    /// the WireGuard device), where the peer's probes arrive.
    #[serde(default)]
    pub local_ip: Option<Spanned<IpAddr>>,
    /// The peer gateway's underlay address (the tunnel's far end). Required for `vxlan`. For
    /// a `wireguard` link: the peer's address inside the tunnel, where our probes go.
    #[serde(default)]
    pub peer_ip: Option<Spanned<IpAddr>>,
    /// `wireguard` only: the fwmark and routing table of the hand-off; default
    /// `fwmark = HANDOFF_FWMARK_BASE + link_id`, `table = HANDOFF_TABLE_BASE + link_id`,
    /// `priority = 1000`.
    #[serde(default)]
    pub handoff: Option<Spanned<HandoffSection>>,
    /// Neighbour to send to when the peer is behind a router; default: `peer_ip`.
    #[serde(default)]
    pub via_ip: Option<Spanned<IpAddr>>,
    /// VXLAN network identifier of the link; default `10000 + link_id`.
    #[serde(default)]
    pub vni: Option<Spanned<u32>>,
    /// Largest encapsulated packet the underlay carries; default: the interface's MTU.
    #[serde(default)]
    pub mtu: Option<Spanned<u32>>,
    /// Inner destination MAC (the peer's VXLAN device, for interoperation); default zero.
    #[serde(default)]
    pub inner_dst_mac: Option<Spanned<Mac>>,
    /// Probed: the fast path uses the link only while it answers probes. Default true for
    /// `vxlan`, and for a `wireguard` link whose `local_ip` and `peer_ip` are given (it is
    /// probed inside the tunnel, see [`LocalLink::handoff`]).
    #[serde(default)]
    pub monitored: Option<Spanned<bool>>,
    /// A file holding the key both ends of the link share (128 bits as 32 hex digits, made
    /// with `openssl rand -hex 16`; readable by its owner only): the link's probes carry a
    /// MAC under it and probes without a valid one are dropped. Default: no MAC.
    #[serde(default)]
    pub auth_key_file: Option<Spanned<PathBuf>>,
}

/// `handoff = { fwmark = 0x64770003, table = 20003 }` of a `wireguard` local link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffSection {
    #[serde(default)]
    pub fwmark: Option<u32>,
    #[serde(default)]
    pub table: Option<u32>,
    #[serde(default)]
    pub priority: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixesSection {
    pub region: Spanned<String>,
    pub prefixes: Vec<Spanned<String>>,
    /// QoS class of traffic to these prefixes that no classifier rule matches.
    #[serde(default)]
    pub class: Option<Spanned<String>>,
}

/// Who sends the probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeSenderMode {
    /// The agent sends them (probing pauses while the agent is stopped).
    #[default]
    Agent,
    /// Another process (`dwcp-prober`) sends them, so liveness keeps being measured while the
    /// agent restarts; the agent only watches `LINK_STATE`.
    External,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSection {
    pub sender: ProbeSenderMode,
    /// SCHED_FIFO priority (1-99) of the agent's probe thread; 0 = normal scheduling.
    pub rt_priority: u8,
    pub interval_ms: u64,
    pub detect_multiplier: u32,
    pub up_after: u32,
    pub loss_window_ms: u64,
    pub loss_min_probes: u64,
    pub degraded_loss: f64,
    pub degraded_rtt_ms: Option<f64>,
    pub degraded_jitter_ms: Option<f64>,
    pub poll_interval_ms: u64,
    pub backoff_cap_ms: u64,
}

impl Default for ProbeSection {
    fn default() -> Self {
        let m = MonitorConfig::default();
        let s = SenderConfig::default();
        ProbeSection {
            sender: ProbeSenderMode::Agent,
            rt_priority: 0,
            interval_ms: m.interval.as_millis() as u64,
            detect_multiplier: m.detect_multiplier,
            up_after: m.up_after,
            loss_window_ms: m.loss_window.as_millis() as u64,
            loss_min_probes: m.loss_min_probes,
            degraded_loss: m.degraded_loss,
            degraded_rtt_ms: None,
            degraded_jitter_ms: None,
            poll_interval_ms: m.poll_interval.as_millis() as u64,
            backoff_cap_ms: s.backoff_cap.as_millis() as u64,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    #[default]
    MinLatency,
    MinCost,
    MaxBandwidth,
    Balanced,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    pub strategy: StrategyName,
    /// Weights of the balanced strategy.
    pub balanced: BalancedWeights,
    pub constraints: Constraints,
    /// Split over every equally good path (up to 4); false: the primary only.
    pub ecmp: bool,
    /// Feed the probes' RTT and loss of our links into the topology (at each optimisation).
    pub use_measurements: bool,
    /// A measurement moves the topology only if it differs by more than this from the figure
    /// in use (keeps routes from following noise).
    pub measurement_threshold_percent: f64,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            strategy: StrategyName::MinLatency,
            balanced: BalancedWeights::default(),
            constraints: Constraints::default(),
            ecmp: true,
            use_measurements: true,
            measurement_threshold_percent: 10.0,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QosSection {
    /// Rewrite the DSCP of forwarded packets to their class's code point.
    pub rewrite_dscp: Option<bool>,
    /// DSCP per class name (`critical`, `realtime`, `interactive`, `bulk`, `best-effort`).
    pub dscp: BTreeMap<String, Spanned<u8>>,
    pub rule: Vec<Spanned<QosRuleSection>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosRuleSection {
    pub class: String,
    pub port: u16,
    /// `tcp`, `udp` or `any` (default).
    #[serde(default)]
    pub protocol: Option<String>,
    /// `dst` (default) or `src`.
    #[serde(default)]
    pub direction: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdaterSection {
    /// Wait before computing after the first event of a quiet period (RFC 8405's
    /// INITIAL_SPF_DELAY). Events already queued are handled together in any case.
    pub initial_delay_ms: u64,
    /// Wait while events keep coming, during `time_to_learn_ms`.
    pub short_delay_ms: u64,
    /// Wait once events have kept coming for longer than `time_to_learn_ms` (a storm).
    pub long_delay_ms: u64,
    pub time_to_learn_ms: u64,
    /// Quiet time after which the next event is again "first".
    pub holddown_ms: u64,
    /// Periodic re-optimisation (measurements in, routes recomputed); 0 = off.
    pub optimise_interval_s: u64,
    /// Route changes kept in the history.
    pub history_len: usize,
    /// How often the counters in the snapshot are refreshed.
    pub counters_interval_ms: u64,
}

/// `[flows]`: the top-flows table, fed by packets the fast path samples.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Sample one forwarded packet in this many (random draw per packet); 0 = off.
    pub sample_every: u32,
    /// Flows the table keeps (Space-Saving: every flow above 1/size of the bytes is in it).
    pub table_size: usize,
    /// The table starts over after this long, so it shows the flows heavy now.
    pub window_s: u64,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            sample_every: 1_000,
            table_size: 1_024,
            window_s: 60,
        }
    }
}

impl Default for UpdaterSection {
    fn default() -> Self {
        UpdaterSection {
            initial_delay_ms: 0,
            short_delay_ms: 50,
            long_delay_ms: 500,
            time_to_learn_ms: 250,
            holddown_ms: 1_000,
            optimise_interval_s: 60,
            history_len: 1_000,
            counters_interval_ms: 1_000,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.

/// A link this gateway terminates, resolved against the topology.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalLink {
    pub link_id: u32,
    pub name: String,
    /// The region at the other end.
    pub peer_region: String,
    pub interface: String,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    pub via_ip: Ipv4Addr,
    pub vni: u32,
    pub mtu: Option<u32>,
    pub inner_dst_mac: [u8; 6],
    pub monitored: bool,
    /// `Some` for a `wireguard` link: the fast path marks the packets and hands them to the
    /// kernel, where `ip rule fwmark <fwmark> lookup <table>` and `default dev <interface>
    /// table <table>` send them into the WireGuard device. A monitored one is probed inside
    /// the tunnel, from `local_ip` to `peer_ip` (the tunnel addresses; unspecified unless
    /// given), and the WireGuard device's tc program reflects and measures the probes into
    /// `LINK_STATE` as the underlay program does for VXLAN; its device's up/down state and
    /// the age of its latest handshake count as well. `via_ip` is unspecified.
    pub handoff: Option<crate::config::Handoff>,
    /// The key from `auth_key_file`, which both ends share: the link's probes carry a MAC
    /// under it (`dwcp_common::probe::probe_mac`).
    pub auth_key: Option<ProbeKey>,
}

impl LocalLink {
    pub fn is_wireguard(&self) -> bool {
        self.handoff.is_some()
    }
}

/// Default fwmark of a `wireguard` local link: `HANDOFF_FWMARK_BASE + link_id` ("dw" in the
/// high half, so it does not collide with small marks other tools use).
pub const HANDOFF_FWMARK_BASE: u32 = 0x6477_0000;
/// Default routing table of a `wireguard` local link: `HANDOFF_TABLE_BASE + link_id`.
pub const HANDOFF_TABLE_BASE: u32 = 20_000;
/// Default priority of the hand-off's `ip rule`.
pub const HANDOFF_RULE_PRIORITY: u32 = 1_000;

/// A classifier rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QosRule {
    /// 0 = any protocol.
    pub proto: u8,
    pub direction: u8,
    pub port: u16,
    pub class: QosClass,
}

/// The LAN prefixes of one region.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionPrefixes {
    pub prefixes: Vec<Prefix>,
    pub class: QosClass,
}

/// The debounce timers of the route updater.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayConfig {
    pub initial: Duration,
    pub short: Duration,
    pub long: Duration,
    pub time_to_learn: Duration,
    pub holddown: Duration,
}

/// A checked configuration. Built only by [`AgentConfig::parse`] / [`AgentConfig::load`].
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub path: Option<PathBuf>,
    pub gateway: String,
    pub region: String,
    pub pin_dir: PathBuf,
    pub hash_seed: u32,
    pub lan_interfaces: Vec<String>,
    /// Sorted by link id.
    pub local_links: Vec<LocalLink>,
    /// Region name → its prefixes.
    pub prefixes: BTreeMap<String, RegionPrefixes>,
    pub probe_sender: ProbeSenderMode,
    /// SCHED_FIFO priority of the agent's probe thread (0 = normal scheduling).
    pub probe_rt_priority: u8,
    pub monitor: MonitorConfig,
    pub sender: SenderConfig,
    pub strategy: Strategy,
    pub constraints: Constraints,
    pub ecmp: bool,
    pub use_measurements: bool,
    pub measurement_threshold: f64,
    pub traffic: TrafficConfig,
    /// `[policing]`: token buckets of the reservations.
    pub policing: PolicingConfig,
    pub qos_rules: Vec<QosRule>,
    /// DSCP per class id; rewrite on/off.
    pub dscp: [u8; dwcp_common::qos::QOS_CLASSES],
    pub rewrite_dscp: bool,
    pub delays: DelayConfig,
    pub optimise_interval: Option<Duration>,
    pub history_len: usize,
    pub counters_interval: Duration,
    pub flows: FlowsConfig,
    /// `[reservations]`: admission of bandwidth reservations.
    pub reservations: ManagerConfig,
    /// `[api]`: the API's sockets (served by `api::RunningApi`).
    pub api: ApiConfig,
    /// `[metrics]`: the Prometheus endpoint (served by `telemetry::RunningMetrics`).
    pub metrics: MetricsConfig,
    /// `[link_state]`: link state shared with the other gateways (`agent::link_state`).
    pub link_state: LinkStateSection,
    pub store: StoreConfig,
    pub health_checks: Vec<HealthCheckSpec>,
    pub topology: TopologyConfig,
    /// The validated topology.
    pub topology_model: Topology,
    /// In etcd mode, once the cluster store has one: the generation of the store's topology,
    /// which replaced the file's (`load_with_topology`), kept for reloads.
    pub published_topology: Option<PublishedTopology>,
}

impl PartialEq for AgentConfig {
    /// Two configurations are equal when their source says the same (the path aside).
    fn eq(&self, other: &Self) -> bool {
        self.gateway == other.gateway
            && self.region == other.region
            && self.pin_dir == other.pin_dir
            && self.hash_seed == other.hash_seed
            && self.lan_interfaces == other.lan_interfaces
            && self.local_links == other.local_links
            && self.prefixes == other.prefixes
            && self.probe_sender == other.probe_sender
            && self.probe_rt_priority == other.probe_rt_priority
            && self.monitor == other.monitor
            && self.sender == other.sender
            && self.strategy == other.strategy
            && self.constraints == other.constraints
            && self.ecmp == other.ecmp
            && self.use_measurements == other.use_measurements
            && self.measurement_threshold == other.measurement_threshold
            && self.traffic == other.traffic
            && self.policing == other.policing
            && self.qos_rules == other.qos_rules
            && self.dscp == other.dscp
            && self.rewrite_dscp == other.rewrite_dscp
            && self.delays == other.delays
            && self.optimise_interval == other.optimise_interval
            && self.history_len == other.history_len
            && self.counters_interval == other.counters_interval
            && self.flows == other.flows
            && self.reservations == other.reservations
            && self.api == other.api
            && self.metrics == other.metrics
            && self.link_state == other.link_state
            && self.store == other.store
            && self.health_checks == other.health_checks
            && self.topology == other.topology
            && self.published_topology == other.published_topology
    }
}

fn parse_file(source: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str(source).map_err(|e| {
        let line = e.span().map(|s| line_of(source, s.start));
        ConfigError::Parse {
            path: None,
            line,
            snippet: line.and_then(|l| line_text(source, l)),
            message: e.message().trim().to_string(),
        }
    })
}

fn line_text(source: &str, line: usize) -> Option<String> {
    source
        .lines()
        .nth(line.checked_sub(1)?)
        .map(|l| l.trim().to_string())
}

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        Self::load_from(path, None)
    }

    /// The `[store]` of the file at `path`, checked alone: in etcd mode the topology the rest
    /// is checked against may have to come from the store first.
    pub fn load_store(path: &Path) -> Result<StoreConfig, ConfigError> {
        /// Only `[store]`; the other tables are not looked at.
        #[derive(Deserialize)]
        struct OnlyStore {
            #[serde(default)]
            store: StoreSection,
        }
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let with_path = |e: ConfigError| e.in_file(path);
        let only: OnlyStore = toml::from_str(&source)
            .map_err(|e| {
                let line = e.span().map(|s| line_of(&source, s.start));
                ConfigError::Parse {
                    path: None,
                    line,
                    snippet: line.and_then(|l| line_text(&source, l)),
                    message: e.message().trim().to_string(),
                }
            })
            .map_err(with_path)?;
        check::store_only(&only.store, &source).map_err(with_path)
    }

    /// Reads and checks the file at `path` with `published` (the cluster store's topology)
    /// in place of the file's own topology tables, if it has any.
    pub fn load_with_topology(
        path: &Path,
        published: &PublishedTopology,
    ) -> Result<AgentConfig, ConfigError> {
        Self::load_from(path, Some(published))
    }

    fn load_from(
        path: &Path,
        published: Option<&PublishedTopology>,
    ) -> Result<AgentConfig, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed = match published {
            None => Self::parse(&source),
            Some(p) => Self::parse_with_topology(&source, p),
        };
        let mut c = parsed.map_err(|e| e.in_file(path))?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses and checks configuration text. Every problem is reported, not just the first.
    pub fn parse(source: &str) -> Result<AgentConfig, ConfigError> {
        check::check(parse_file(source)?, source, None)
    }

    /// [`AgentConfig::parse`] with `published`'s topology in place of `source`'s.
    pub fn parse_with_topology(
        source: &str,
        published: &PublishedTopology,
    ) -> Result<AgentConfig, ConfigError> {
        let mut file = parse_file(source)?;
        let topology =
            TopologyConfig::from_toml_str(&published.source).map_err(|e| ConfigError::Invalid {
                path: None,
                problems: vec![Problem {
                    line: None,
                    field: format!(
                        "topology generation {} of the cluster store",
                        published.generation
                    ),
                    message: e.to_string(),
                }],
            })?;
        file.region = topology.regions;
        file.link = topology.links;
        file.edge = topology.edges;
        check::check(file, source, Some(published))
    }

    pub fn local_link(&self, link_id: u32) -> Option<&LocalLink> {
        self.local_links.iter().find(|l| l.link_id == link_id)
    }

    /// The underlay interfaces of the VXLAN links (deduplicated), where the underlay program
    /// runs. A WireGuard device is none: the kernel decrypts into it, the fast path never sees
    /// its packets.
    pub fn underlay_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in self.local_links.iter().filter(|l| !l.is_wireguard()) {
            if !out.contains(&l.interface) {
                out.push(l.interface.clone());
            }
        }
        out
    }

    /// What a reload cannot change without a restart (the pins and the attached programs).
    pub fn restart_only_changes(&self, new: &AgentConfig) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.gateway != new.gateway {
            out.push("gateway.name");
        }
        if self.region != new.region {
            out.push("gateway.region");
        }
        if self.pin_dir != new.pin_dir {
            out.push("gateway.pin_dir");
        }
        if self.lan_interfaces != new.lan_interfaces {
            out.push("gateway.lan_interfaces");
        }
        if self.underlay_interfaces() != new.underlay_interfaces() {
            out.push("local_link[].interface (the set of underlay interfaces)");
        }
        if self.probe_sender != new.probe_sender {
            out.push("probe.sender");
        }
        if self.probe_rt_priority != new.probe_rt_priority {
            out.push("probe.rt_priority");
        }
        if self.api != new.api {
            out.push("api");
        }
        if self.metrics != new.metrics {
            out.push("metrics");
        }
        if self.reservations != new.reservations {
            out.push("reservations");
        }
        out
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
