//! The agent's configuration file (`/etc/dwcp/agent.toml` by default).
//!
//! One file holds what this gateway is (`[gateway]`), the links it terminates
//! (`[[local_link]]`), the LAN prefixes of every region (`[[prefixes]]`), the probe, routing,
//! traffic, QoS, updater and API settings, the health checks, and the whole topology
//! (`[[region]]`, `[[link]]`, `[[edge]]`, the same on every gateway). Unknown fields are
//! rejected; every error names the field and its line.
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
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use dwcp_common::{QosClass, CLASSIFY_DST_PORT, CLASSIFY_SRC_PORT};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;
use toml::Spanned;

mod sections;

pub use sections::{
    ApiConfig, MetricsConfig, SenderConfig, DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_METRICS_LISTEN, DEFAULT_SOCKET, DEFAULT_SOCKET_MODE, MIN_TOKEN_LEN,
};

use crate::{
    bandwidth::ManagerConfig,
    health::{HealthCheckConfig, HealthCheckSpec},
    liveness::{MonitorConfig, MonitorConfigError},
    routing::{BalancedWeights, Constraints, Strategy},
    topology::{
        error::line_of, EdgeConfig, LinkConfig, RegionConfig, Topology, TopologyConfig,
        TopologyError,
    },
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

/// `ip rule fwmark <fwmark> lookup <table> pref <priority>` + `default dev <tunnel> table
/// <table>`: packets marked `fwmark` leave through this tunnel.
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
    /// Required for a `vxlan` link; optional (shown only) for a `wireguard` link.
    #[serde(default)]
    pub local_ip: Option<Spanned<IpAddr>>,
    /// The peer gateway's underlay address (the tunnel's far end). Required for `vxlan`.
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
    /// `vxlan`; a `wireguard` link cannot be probed (see [`LocalLink::handoff`]).
    #[serde(default)]
    pub monitored: Option<Spanned<bool>>,
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
    /// table <table>` send them into the WireGuard device. Such a link is not probed (the
    /// probes cannot be reflected by XDP across a TUN device); its health is the device's
    /// up/down state from netlink and the age of its latest handshake (UAPI). The address
    /// fields (`local_ip`, `peer_ip`, `via_ip`) are unspecified unless given, shown only.
    pub handoff: Option<crate::config::Handoff>,
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
    pub health_checks: Vec<HealthCheckSpec>,
    pub topology: TopologyConfig,
    /// The validated topology.
    pub topology_model: Topology,
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
            && self.health_checks == other.health_checks
            && self.topology == other.topology
    }
}

fn line_text(source: &str, line: usize) -> Option<String> {
    source
        .lines()
        .nth(line.checked_sub(1)?)
        .map(|l| l.trim().to_string())
}

/// Collects problems with the line of the span they are about.
struct Checker<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let line = (span.end > span.start).then(|| line_of(self.source, span.start));
        self.problems.push(Problem {
            line,
            field: field.into(),
            message: message.into(),
        });
    }
}

fn class_by_name(name: &str) -> Option<QosClass> {
    QosClass::ALL
        .into_iter()
        .find(|c| c.name() == name || c.name().replace('-', "_") == name)
}

fn class_names() -> String {
    QosClass::ALL
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Self::parse(&source).map_err(|e| match e {
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
        })?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses and checks configuration text. Every problem is reported, not just the first.
    pub fn parse(source: &str) -> Result<AgentConfig, ConfigError> {
        let file: ConfigFile = toml::from_str(source).map_err(|e| {
            let line = e.span().map(|s| line_of(source, s.start));
            ConfigError::Parse {
                path: None,
                line,
                snippet: line.and_then(|l| line_text(source, l)),
                message: e.message().trim().to_string(),
            }
        })?;
        Self::check(file, source)
    }

    fn check(file: ConfigFile, source: &str) -> Result<AgentConfig, ConfigError> {
        let mut c = Checker {
            source,
            problems: Vec::new(),
        };
        let topology = TopologyConfig {
            regions: file.region.clone(),
            links: file.link.clone(),
            edges: file.edge.clone(),
        };
        let model = match Topology::from_config(&topology, Some(source)) {
            Ok(m) => Some(m),
            Err(TopologyError::Invalid { errors }) => {
                for e in errors {
                    c.problems.push(Problem {
                        line: e.entry().line,
                        field: "topology".into(),
                        message: e.to_string(),
                    });
                }
                None
            }
            Err(e) => {
                c.problems.push(Problem {
                    line: None,
                    field: "topology".into(),
                    message: e.to_string(),
                });
                None
            }
        };
        if file.region.is_empty() {
            c.problems.push(Problem {
                line: None,
                field: "region".into(),
                message: "no [[region]]: the topology must describe at least this gateway's region"
                    .into(),
            });
        }

        // [gateway]
        let gw = file.gateway.get_ref();
        let name = gw.name.get_ref().trim().to_string();
        if name.is_empty() {
            c.at(gw.name.span(), "gateway.name", "must not be empty");
        }
        let region = gw.region.get_ref().clone();
        let region_known = model
            .as_ref()
            .map(|m| m.region_by_name(&region).is_some())
            .unwrap_or(true);
        if !region_known {
            c.at(
                gw.region.span(),
                "gateway.region",
                format!("unknown region {region:?} (not a [[region]] name)"),
            );
        }
        if let Some(r) = model.as_ref().and_then(|m| m.region_by_name(&region)) {
            if !r.gateways.is_empty() && !r.gateways.iter().any(|g| g.name == name) {
                c.at(
                    gw.name.span(),
                    "gateway.name",
                    format!(
                        "{name:?} is not among region {region:?}'s gateways ({})",
                        r.gateways
                            .iter()
                            .map(|g| g.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        let lan = gw.lan_interfaces.get_ref().clone();
        if lan.is_empty() {
            c.at(
                gw.lan_interfaces.span(),
                "gateway.lan_interfaces",
                "at least one LAN interface is needed",
            );
        }
        let mut seen_if = BTreeSet::new();
        for i in &lan {
            if !valid_ifname(i) {
                c.at(
                    gw.lan_interfaces.span(),
                    "gateway.lan_interfaces",
                    format!("{i:?} is not an interface name (1-15 characters, no / or space)"),
                );
            }
            if !seen_if.insert(i.clone()) {
                c.at(
                    gw.lan_interfaces.span(),
                    "gateway.lan_interfaces",
                    format!("{i:?} is listed twice"),
                );
            }
        }
        if !gw.pin_dir.is_absolute() {
            c.at(
                file.gateway.span(),
                "gateway.pin_dir",
                format!("{} must be an absolute path", gw.pin_dir.display()),
            );
        }

        // [[local_link]]
        let mut local_links: Vec<LocalLink> = Vec::new();
        let mut vnis: BTreeMap<u32, String> = BTreeMap::new();
        for (i, spanned) in file.local_link.iter().enumerate() {
            let l = spanned.get_ref();
            let field = |f: &str| format!("local_link[{i}].{f}");
            let before = c.problems.len();
            let link = model
                .as_ref()
                .and_then(|m| m.link_by_name(l.link.get_ref()).cloned());
            let mut peer_region = String::new();
            match (&model, &link) {
                (Some(_), None) => c.at(
                    l.link.span(),
                    field("link"),
                    format!("unknown link {:?} (not a [[link]] name)", l.link.get_ref()),
                ),
                (Some(m), Some(link)) => {
                    let a = &m.region(link.a).expect("valid").name;
                    let b = &m.region(link.b).expect("valid").name;
                    if region_known && *a != region && *b != region {
                        c.at(
                            l.link.span(),
                            field("link"),
                            format!(
                                "link {:?} joins {a} and {b}; this gateway is in {region}",
                                l.link.get_ref()
                            ),
                        );
                    }
                    peer_region = if *a == region { b.clone() } else { a.clone() };
                }
                _ => {}
            }
            if local_links.iter().any(|o| &o.name == l.link.get_ref()) {
                c.at(
                    l.link.span(),
                    field("link"),
                    format!("link {:?} is terminated twice", l.link.get_ref()),
                );
            }
            let ifname = l.interface.get_ref();
            if !valid_ifname(ifname) {
                c.at(
                    l.interface.span(),
                    field("interface"),
                    format!("{ifname:?} is not an interface name"),
                );
            }
            if lan.contains(ifname) {
                c.at(
                    l.interface.span(),
                    field("interface"),
                    format!("{ifname:?} is also a LAN interface"),
                );
            }
            let wireguard = match &l.kind {
                None => false,
                Some(k) => match k.get_ref().as_str() {
                    "vxlan" => false,
                    "wireguard" => true,
                    other => {
                        c.at(
                            k.span(),
                            field("kind"),
                            format!("unknown link kind {other:?} (vxlan or wireguard)"),
                        );
                        false
                    }
                },
            };
            let v4 = |c: &mut Checker, s: &Spanned<IpAddr>, f: &str| match *s.get_ref() {
                IpAddr::V4(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() => {
                    Some(a)
                }
                IpAddr::V4(a) => {
                    c.at(s.span(), field(f), format!("{a} is not a unicast address"));
                    None
                }
                IpAddr::V6(a) => {
                    c.at(
                        s.span(),
                        field(f),
                        format!("{a}: the underlay is IPv4 (VXLAN over IPv4)"),
                    );
                    None
                }
            };
            let link_id = link.as_ref().map(|k| k.id.0).unwrap_or(0);
            let required = |c: &mut Checker, s: &Option<Spanned<IpAddr>>, f: &str| match s {
                Some(s) => v4(c, s, f),
                None if wireguard => Some(Ipv4Addr::UNSPECIFIED),
                None => {
                    c.at(
                        spanned.span(),
                        field(f),
                        "missing (required for a vxlan link)",
                    );
                    None
                }
            };
            let local_ip = required(&mut c, &l.local_ip, "local_ip");
            let peer_ip = required(&mut c, &l.peer_ip, "peer_ip");
            let mut handoff = None;
            let mut vni = 0;
            let via_ip;
            let monitored;
            if wireguard {
                let why = "makes no sense for a wireguard link (the kernel routes into the \
                           WireGuard device)";
                if let Some(v) = &l.via_ip {
                    c.at(v.span(), field("via_ip"), why);
                }
                if let Some(v) = &l.vni {
                    c.at(v.span(), field("vni"), why);
                }
                if let Some(m) = &l.inner_dst_mac {
                    c.at(m.span(), field("inner_dst_mac"), why);
                }
                if let Some(m) = &l.mtu {
                    c.at(
                        m.span(),
                        field("mtu"),
                        "makes no sense for a wireguard link (set the MTU of the WireGuard \
                         device)",
                    );
                }
                if let Some(m) = l.monitored.as_ref().filter(|m| *m.get_ref()) {
                    c.at(
                        m.span(),
                        field("monitored"),
                        "a wireguard link cannot be probed (probes are not reflected across \
                         a TUN device); its health is the device's state and handshake age",
                    );
                }
                via_ip = Some(Ipv4Addr::UNSPECIFIED);
                monitored = false;
                let h = l.handoff.as_ref().map(|h| h.get_ref());
                let hspan = l
                    .handoff
                    .as_ref()
                    .map(|h| h.span())
                    .unwrap_or(spanned.span());
                let fwmark = h
                    .and_then(|h| h.fwmark)
                    .unwrap_or(HANDOFF_FWMARK_BASE.wrapping_add(link_id));
                let table = h
                    .and_then(|h| h.table)
                    .unwrap_or(HANDOFF_TABLE_BASE.wrapping_add(link_id));
                let priority = h.and_then(|h| h.priority).unwrap_or(HANDOFF_RULE_PRIORITY);
                if fwmark == 0 {
                    c.at(
                        hspan.clone(),
                        field("handoff.fwmark"),
                        "0 is no mark (packets without a mark are not handed off)",
                    );
                }
                if table == 0 || (253..=255).contains(&table) {
                    c.at(
                        hspan.clone(),
                        field("handoff.table"),
                        format!("{table} is a reserved routing table (0, default, main, local)"),
                    );
                }
                for o in &local_links {
                    if let Some(oh) = &o.handoff {
                        if oh.fwmark == fwmark {
                            c.at(
                                hspan.clone(),
                                field("handoff.fwmark"),
                                format!("fwmark {fwmark:#x} is also used by link {:?}", o.name),
                            );
                        }
                        if oh.table == table {
                            c.at(
                                hspan.clone(),
                                field("handoff.table"),
                                format!("table {table} is also used by link {:?}", o.name),
                            );
                        }
                    }
                }
                handoff = Some(crate::config::Handoff {
                    fwmark,
                    table,
                    priority,
                });
            } else {
                if let Some(h) = &l.handoff {
                    c.at(
                        h.span(),
                        field("handoff"),
                        "only a wireguard link (kind = \"wireguard\") is handed off",
                    );
                }
                monitored = l.monitored.as_ref().map(|m| *m.get_ref()).unwrap_or(true);
                via_ip = match &l.via_ip {
                    Some(v) => v4(&mut c, v, "via_ip"),
                    None => peer_ip,
                };
                if let (Some(a), Some(p)) = (&l.local_ip, &l.peer_ip) {
                    if a.get_ref() == p.get_ref() {
                        c.at(p.span(), field("peer_ip"), "is the same as local_ip");
                    }
                }
                vni = l
                    .vni
                    .as_ref()
                    .map(|v| *v.get_ref())
                    .unwrap_or(VNI_BASE + link_id);
                if vni > dwcp_common::wire::VNI_MAX {
                    c.at(
                        l.vni.as_ref().map(|v| v.span()).unwrap_or(spanned.span()),
                        field("vni"),
                        format!(
                            "{vni} is above the largest VNI {}",
                            dwcp_common::wire::VNI_MAX
                        ),
                    );
                } else if let Some(other) = vnis.get(&vni) {
                    c.at(
                        l.vni.as_ref().map(|v| v.span()).unwrap_or(spanned.span()),
                        field("vni"),
                        format!("VNI {vni} is also used by link {other:?}"),
                    );
                }
                vnis.insert(vni, l.link.get_ref().clone());
                if let Some(m) = &l.mtu {
                    let mtu = *m.get_ref();
                    if !(576..=65_535).contains(&mtu) {
                        c.at(
                            m.span(),
                            field("mtu"),
                            format!("{mtu} is not within 576..=65535"),
                        );
                    }
                }
            }
            if c.problems.len() == before {
                if let (Some(link), Some(local_ip), Some(peer_ip), Some(via_ip)) =
                    (link, local_ip, peer_ip, via_ip)
                {
                    local_links.push(LocalLink {
                        link_id: link.id.0,
                        name: link.name.to_string(),
                        peer_region,
                        interface: ifname.clone(),
                        local_ip,
                        peer_ip,
                        via_ip,
                        vni,
                        mtu: l.mtu.as_ref().map(|m| *m.get_ref()),
                        inner_dst_mac: l
                            .inner_dst_mac
                            .as_ref()
                            .map(|m| m.get_ref().0)
                            .unwrap_or_default(),
                        monitored,
                        handoff,
                    });
                }
            }
        }
        local_links.sort_by_key(|l| l.link_id);

        // [[prefixes]]
        let mut prefixes: BTreeMap<String, RegionPrefixes> = BTreeMap::new();
        let mut all: Vec<(Prefix, String)> = Vec::new();
        for (i, spanned) in file.prefixes.iter().enumerate() {
            let p = spanned.get_ref();
            let field = |f: &str| format!("prefixes[{i}].{f}");
            let rname = p.region.get_ref().clone();
            if model
                .as_ref()
                .is_some_and(|m| m.region_by_name(&rname).is_none())
            {
                c.at(
                    p.region.span(),
                    field("region"),
                    format!("unknown region {rname:?}"),
                );
            }
            if prefixes.contains_key(&rname) {
                c.at(
                    p.region.span(),
                    field("region"),
                    format!("region {rname:?} has a [[prefixes]] entry already"),
                );
            }
            let class = match &p.class {
                None => QosClass::BestEffort,
                Some(s) => match class_by_name(s.get_ref()) {
                    Some(k) => k,
                    None => {
                        c.at(
                            s.span(),
                            field("class"),
                            format!(
                                "unknown QoS class {:?} (one of {})",
                                s.get_ref(),
                                class_names()
                            ),
                        );
                        QosClass::BestEffort
                    }
                },
            };
            let mut list = Vec::new();
            for s in &p.prefixes {
                match s.get_ref().parse::<Prefix>() {
                    Ok(px) => {
                        if let Some((_, other)) = all.iter().find(|(o, _)| o.overlaps(&px)) {
                            c.at(
                                s.span(),
                                field("prefixes"),
                                format!("{px} overlaps a prefix of region {other:?}"),
                            );
                        }
                        all.push((px, rname.clone()));
                        list.push(px);
                    }
                    Err(e) => c.at(s.span(), field("prefixes"), e),
                }
            }
            prefixes.insert(
                rname,
                RegionPrefixes {
                    prefixes: list,
                    class,
                },
            );
        }

        // [probe]
        let p = &file.probe;
        let ms = Duration::from_millis;
        let monitor = MonitorConfig {
            interval: ms(p.interval_ms),
            detect_multiplier: p.detect_multiplier,
            up_after: p.up_after,
            loss_window: ms(p.loss_window_ms),
            loss_min_probes: p.loss_min_probes,
            degraded_loss: p.degraded_loss,
            degraded_rtt: p
                .degraded_rtt_ms
                .map(|v| Duration::from_secs_f64(v.max(0.0) / 1e3)),
            degraded_jitter: p
                .degraded_jitter_ms
                .map(|v| Duration::from_secs_f64(v.max(0.0) / 1e3)),
            poll_interval: ms(p.poll_interval_ms),
        };
        if let Err(e) = monitor.validate() {
            let key = match e {
                MonitorConfigError::Interval(_) => "interval_ms",
                MonitorConfigError::DetectMultiplier => "detect_multiplier",
                MonitorConfigError::UpAfter => "up_after",
                MonitorConfigError::DegradedLoss(_) => "degraded_loss",
                MonitorConfigError::LossWindow { .. } => "loss_window_ms",
                MonitorConfigError::PollInterval { .. } => "poll_interval_ms",
            };
            c.problems.push(Problem {
                line: key_line(source, "probe", key),
                field: format!("probe.{key}"),
                message: e.to_string(),
            });
        }
        for (f, v) in [
            ("probe.degraded_rtt_ms", p.degraded_rtt_ms),
            ("probe.degraded_jitter_ms", p.degraded_jitter_ms),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    c.problems.push(Problem {
                        line: key_line(source, "probe", &f["probe.".len()..]),
                        field: f.into(),
                        message: format!("{v} must be a finite number of milliseconds > 0"),
                    });
                }
            }
        }
        let sender = SenderConfig {
            interval: ms(p.interval_ms),
            backoff_cap: ms(p.backoff_cap_ms),
            ..SenderConfig::default()
        };
        if p.rt_priority > 99 {
            c.problems.push(Problem {
                line: key_line(source, "probe", "rt_priority"),
                field: "probe.rt_priority".into(),
                message: format!(
                    "{} is not a SCHED_FIFO priority: 1-99, or 0 for normal scheduling",
                    p.rt_priority
                ),
            });
        }
        if sender.backoff_cap < sender.interval {
            c.problems.push(Problem {
                line: key_line(source, "probe", "backoff_cap_ms"),
                field: "probe.backoff_cap_ms".into(),
                message: format!(
                    "{} ms is shorter than the probe interval {} ms",
                    p.backoff_cap_ms, p.interval_ms
                ),
            });
        }

        // [routing]
        let r = &file.routing;
        let strategy = match r.strategy {
            StrategyName::MinLatency => Strategy::MinLatency,
            StrategyName::MinCost => Strategy::MinCost,
            StrategyName::MaxBandwidth => Strategy::MaxBandwidth,
            StrategyName::Balanced => Strategy::Balanced(r.balanced),
        };
        if let Err(e) = strategy.validate() {
            c.problems.push(Problem {
                line: section_line(source, "routing.balanced")
                    .or_else(|| key_line(source, "routing", "balanced")),
                field: "routing.balanced".into(),
                message: e.to_string(),
            });
        }
        if let Err(e) = r.constraints.validate() {
            c.problems.push(Problem {
                line: section_line(source, "routing.constraints"),
                field: format!("routing.constraints.{}", constraint_field(&e)),
                message: e.to_string(),
            });
        }
        if let Some(m) = &model {
            for name in &r.constraints.avoid_regions {
                if m.region_by_name(name).is_none() {
                    c.problems.push(Problem {
                        line: key_line(source, "routing.constraints", "avoid_regions"),
                        field: "routing.constraints.avoid_regions".into(),
                        message: format!("unknown region {name:?}"),
                    });
                }
                if *name == region {
                    c.problems.push(Problem {
                        line: key_line(source, "routing.constraints", "avoid_regions"),
                        field: "routing.constraints.avoid_regions".into(),
                        message: format!("{name:?} is this gateway's own region"),
                    });
                }
            }
        }
        if !(r.measurement_threshold_percent.is_finite() && r.measurement_threshold_percent >= 0.0)
        {
            c.problems.push(Problem {
                line: key_line(source, "routing", "measurement_threshold_percent"),
                field: "routing.measurement_threshold_percent".into(),
                message: format!(
                    "{} must be a finite number >= 0",
                    r.measurement_threshold_percent
                ),
            });
        }

        // [traffic]
        if file.traffic.headroom_percent > 99 {
            c.problems.push(Problem {
                line: key_line(source, "traffic", "headroom_percent"),
                field: "traffic.headroom_percent".into(),
                message: format!("{} is above 99", file.traffic.headroom_percent),
            });
        }

        if file.reservations.headroom_percent > 99 {
            c.problems.push(Problem {
                line: key_line(source, "reservations", "headroom_percent"),
                field: "reservations.headroom_percent".into(),
                message: format!("{} is above 99", file.reservations.headroom_percent),
            });
        }
        if file.api.tcp_listen.is_some() && file.api.token_file.is_none() {
            c.problems.push(Problem {
                line: key_line(source, "api", "tcp_listen"),
                field: "api.tcp_listen".into(),
                message: "needs api.token_file (every TCP request carries the token)".into(),
            });
        }

        // [qos]
        let mut dscp = QosClass::ALL.map(|k| k.default_dscp());
        for (name, v) in &file.qos.dscp {
            match class_by_name(name) {
                Some(k) if *v.get_ref() <= 63 => dscp[k as usize] = *v.get_ref(),
                Some(_) => c.at(
                    v.span(),
                    format!("qos.dscp.{name}"),
                    format!("{} is not a DSCP (0..=63)", v.get_ref()),
                ),
                None => c.at(
                    v.span(),
                    format!("qos.dscp.{name}"),
                    format!("unknown QoS class {name:?} (one of {})", class_names()),
                ),
            }
        }
        let mut qos_rules: Vec<QosRule> = Vec::new();
        for (i, spanned) in file.qos.rule.iter().enumerate() {
            let q = spanned.get_ref();
            let field = |f: &str| format!("qos.rule[{i}].{f}");
            let before = c.problems.len();
            let class = class_by_name(&q.class);
            if class.is_none() {
                c.at(
                    spanned.span(),
                    field("class"),
                    format!("unknown QoS class {:?} (one of {})", q.class, class_names()),
                );
            }
            let proto = match q.protocol.as_deref().unwrap_or("any") {
                "any" => 0,
                "tcp" => dwcp_common::wire::IPPROTO_TCP,
                "udp" => dwcp_common::wire::IPPROTO_UDP,
                other => {
                    c.at(
                        spanned.span(),
                        field("protocol"),
                        format!("{other:?} is not tcp, udp or any"),
                    );
                    0
                }
            };
            let direction = match q.direction.as_deref().unwrap_or("dst") {
                "dst" => CLASSIFY_DST_PORT,
                "src" => CLASSIFY_SRC_PORT,
                other => {
                    c.at(
                        spanned.span(),
                        field("direction"),
                        format!("{other:?} is not dst or src"),
                    );
                    CLASSIFY_DST_PORT
                }
            };
            if q.port == 0 {
                c.at(spanned.span(), field("port"), "port 0 matches nothing");
            }
            if qos_rules
                .iter()
                .any(|o| o.proto == proto && o.direction == direction && o.port == q.port)
            {
                c.at(
                    spanned.span(),
                    field("port"),
                    format!(
                        "a rule for this protocol, direction and port {} exists already",
                        q.port
                    ),
                );
            }
            if c.problems.len() == before {
                qos_rules.push(QosRule {
                    proto,
                    direction,
                    port: q.port,
                    class: class.expect("checked"),
                });
            }
        }

        // [updater]
        let u = &file.updater;
        let delays = DelayConfig {
            initial: ms(u.initial_delay_ms),
            short: ms(u.short_delay_ms),
            long: ms(u.long_delay_ms),
            time_to_learn: ms(u.time_to_learn_ms),
            holddown: ms(u.holddown_ms),
        };
        let upd = |c: &mut Checker, f: &str, m: String| {
            c.problems.push(Problem {
                line: key_line(source, "updater", f),
                field: format!("updater.{f}"),
                message: m,
            })
        };
        if delays.initial > delays.short {
            upd(
                &mut c,
                "initial_delay_ms",
                format!(
                    "{} ms is longer than short_delay_ms ({} ms)",
                    u.initial_delay_ms, u.short_delay_ms
                ),
            );
        }
        if delays.short > delays.long {
            upd(
                &mut c,
                "short_delay_ms",
                format!(
                    "{} ms is longer than long_delay_ms ({} ms)",
                    u.short_delay_ms, u.long_delay_ms
                ),
            );
        }
        if delays.long.is_zero() {
            upd(&mut c, "long_delay_ms", "must be above 0".into());
        }
        if delays.holddown < delays.long {
            upd(
                &mut c,
                "holddown_ms",
                format!(
                    "{} ms is shorter than long_delay_ms ({} ms)",
                    u.holddown_ms, u.long_delay_ms
                ),
            );
        }
        if u.history_len == 0 {
            upd(&mut c, "history_len", "must be at least 1".into());
        }
        if u.counters_interval_ms < 10 {
            upd(
                &mut c,
                "counters_interval_ms",
                format!("{} ms is below 10 ms", u.counters_interval_ms),
            );
        }

        // [flows]
        let f = &file.flows;
        let flows = |c: &mut Checker, field: &str, m: String| {
            c.problems.push(Problem {
                line: key_line(source, "flows", field),
                field: format!("flows.{field}"),
                message: m,
            })
        };
        if !(1..=65_536).contains(&f.table_size) {
            flows(
                &mut c,
                "table_size",
                format!("{} is not in 1..=65536", f.table_size),
            );
        }
        if f.window_s == 0 {
            flows(&mut c, "window_s", "must be at least 1".into());
        }

        // [[health_check]]
        let mut health_checks = Vec::new();
        for (i, spanned) in file.health_check.iter().enumerate() {
            let h = spanned.get_ref().clone();
            if model
                .as_ref()
                .is_some_and(|m| m.region_by_name(&h.region).is_none())
            {
                c.at(
                    spanned.span(),
                    format!("health_check[{i}].region"),
                    format!("unknown region {:?}", h.region),
                );
            }
            match HealthCheckSpec::try_from(h) {
                Ok(s) => {
                    if health_checks
                        .iter()
                        .any(|o: &HealthCheckSpec| o.name == s.name)
                    {
                        c.at(
                            spanned.span(),
                            format!("health_check[{i}].name"),
                            format!("{:?} is defined twice", s.name),
                        );
                    }
                    health_checks.push(s)
                }
                Err(e) => c.at(spanned.span(), format!("health_check[{i}]"), e.to_string()),
            }
        }

        if !c.problems.is_empty() {
            c.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            return Err(ConfigError::Invalid {
                path: None,
                problems: c.problems,
            });
        }
        Ok(AgentConfig {
            path: None,
            gateway: name,
            region,
            pin_dir: gw.pin_dir.clone(),
            hash_seed: gw.hash_seed,
            lan_interfaces: lan,
            local_links,
            prefixes,
            probe_sender: p.sender,
            probe_rt_priority: p.rt_priority,
            monitor,
            sender,
            strategy,
            constraints: r.constraints.clone(),
            ecmp: r.ecmp,
            use_measurements: r.use_measurements,
            measurement_threshold: r.measurement_threshold_percent / 100.0,
            traffic: file.traffic.clone(),
            policing: file.policing.clone(),
            qos_rules,
            dscp,
            rewrite_dscp: file.qos.rewrite_dscp.unwrap_or(true),
            delays,
            optimise_interval: (u.optimise_interval_s > 0)
                .then(|| Duration::from_secs(u.optimise_interval_s)),
            history_len: u.history_len,
            counters_interval: ms(u.counters_interval_ms),
            flows: file.flows.clone(),
            reservations: file.reservations.clone(),
            api: file.api.clone(),
            metrics: file.metrics.clone(),
            health_checks,
            topology,
            topology_model: model.expect("no problems means the topology is valid"),
        })
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

/// Line of `key = ...` inside `[section]`, else of the section header (a default value that
/// conflicts with another field has no line of its own).
fn key_line(source: &str, section: &str, key: &str) -> Option<usize> {
    let start = section_line(source, section)?;
    for (i, l) in source.lines().enumerate().skip(start) {
        let t = l.trim();
        if t.starts_with('[') {
            break;
        }
        if t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    Some(start)
}

/// Line of a `[section]` header, for problems about a table's fields as a whole.
fn section_line(source: &str, section: &str) -> Option<usize> {
    let header = format!("[{section}]");
    source
        .lines()
        .position(|l| l.trim() == header)
        .map(|i| i + 1)
}

fn constraint_field(e: &crate::routing::RoutingError) -> &'static str {
    match e {
        crate::routing::RoutingError::InvalidConstraint { constraint, .. } => constraint,
        _ => "",
    }
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && !s.contains('/')
        && !s.chars().any(|c| c.is_whitespace() || c == ':')
}

#[cfg(test)]
mod tests;
