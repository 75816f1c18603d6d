//! The sections of agent.toml that configure the agent's I/O tasks (API, metrics, probe
//! sender): parsed and checked here with the rest of the file, used by `dwcp-agent`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use dwcp_common::probe::PROBE_PORT;
use serde::{Deserialize, Serialize};

use crate::link_state::{wire::LINK_STATE_PORT, FigureThresholds, LinkStateConfig};

pub const DEFAULT_SOCKET: &str = "/run/dwcp/agent.sock";
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 5_000;
/// Shortest bearer token accepted (128 bits as hex is 32).
pub const MIN_TOKEN_LEN: usize = 32;
/// Connections each API listener serves at once: above the 2,000 idle connections the attacks
/// benchmark holds (`api_ok_under_idle_flood`), and a bound on what idle connections cost
/// (each a task, a socket, a head buffer of at most 16 KiB and some TLS state).
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 4096;
/// Connections the metrics listener serves at once (a few scrapers and curls).
pub const DEFAULT_METRICS_MAX_CONNECTIONS: usize = 256;
/// Of those, connections one source address may hold: a sixteenth, so that one client (or
/// one attacker's address) leaves the rest to the others.
pub const DEFAULT_API_MAX_CONNECTIONS_PER_SOURCE: usize = 256;
/// Of the metrics listener's connections, those one source address may hold.
pub const DEFAULT_METRICS_MAX_CONNECTIONS_PER_SOURCE: usize = 32;
/// How long a listener waits for a client to send: see [`HttpLimits::read_timeout`].
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 5_000;
/// How long a write may wait for a client to take data: see [`HttpLimits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;

/// What one HTTP listener allows its clients, so that idle or half-written connections
/// cannot starve the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections served at once from one source address (an IPv6 source by its /64); one
    /// more from it is closed as soon as it is accepted. TCP listeners only: a Unix socket's
    /// clients are local, admitted by the socket's mode and group.
    pub max_connections_per_source: usize,
    /// Longest wait for a client: the TLS handshake, a request's head (on a new connection,
    /// and for the next request on a kept-alive one: the idle timeout) and its body each.
    pub read_timeout: Duration,
    /// Longest a write may wait for the client to take data (the time between two writes
    /// that make progress, as nginx's `send_timeout`): a client that stops reading is
    /// disconnected after it instead of holding its connection and task.
    pub write_timeout: Duration,
}

/// `[api]` of agent.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket of the API (none: no socket).
    pub socket: Option<PathBuf>,
    /// Permissions of the socket (TOML accepts `0o660`).
    pub socket_mode: u32,
    /// Group that owns the socket, so that its members may use it (default: root's group).
    pub socket_group: Option<String>,
    /// Also serve on TCP at this address, over TLS; requires `token_file`, `tls_cert` and
    /// `tls_key`.
    pub tcp_listen: Option<SocketAddr>,
    /// File holding the bearer token of the TCP API (at least 32 characters; readable by its
    /// owner only).
    pub token_file: Option<PathBuf>,
    /// Certificate chain of the TCP API (PEM, the server's certificate first).
    pub tls_cert: Option<PathBuf>,
    /// Private key of `tls_cert` (PEM; readable by its owner only).
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a request waits for the agent to take and answer a command.
    pub command_timeout_ms: u64,
    /// Connections each listener (socket, TCP) serves at once.
    pub max_connections: usize,
    /// See [`HttpLimits::max_connections_per_source`].
    pub max_connections_per_source: usize,
    /// See [`HttpLimits::read_timeout`].
    pub read_timeout_ms: u64,
    /// See [`HttpLimits::write_timeout`].
    pub write_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: Some(DEFAULT_SOCKET.into()),
            socket_mode: DEFAULT_SOCKET_MODE,
            socket_group: None,
            tcp_listen: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            command_timeout_ms: DEFAULT_COMMAND_TIMEOUT_MS,
            max_connections: DEFAULT_API_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_API_MAX_CONNECTIONS_PER_SOURCE,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
        }
    }
}

impl ApiConfig {
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            read_timeout: Duration::from_millis(self.read_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
        }
    }
}

/// Default metrics address: loopback only; expose it deliberately.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9470";

/// `[metrics]` of agent.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the `/metrics` endpoint.
    pub listen: SocketAddr,
    /// Connections served at once.
    pub max_connections: usize,
    /// See [`HttpLimits::max_connections_per_source`].
    pub max_connections_per_source: usize,
    /// See [`HttpLimits::read_timeout`].
    pub read_timeout_ms: u64,
    /// See [`HttpLimits::write_timeout`].
    pub write_timeout_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: DEFAULT_METRICS_LISTEN.parse().expect("valid default"),
            max_connections: DEFAULT_METRICS_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_METRICS_MAX_CONNECTIONS_PER_SOURCE,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
        }
    }
}

impl MetricsConfig {
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            read_timeout: Duration::from_millis(self.read_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
        }
    }
}

/// Settings shared by all links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// Interval between probes of a live link.
    pub interval: Duration,
    /// Longest interval between re-probes of a dead link.
    pub backoff_cap: Duration,
    /// UDP source port. The reflector swaps the ports, so the reply arrives on this port; the
    /// default keeps both directions on [`PROBE_PORT`], the port the XDP program matches.
    pub source_port: u16,
    /// IPv4 TOS / IPv6 traffic class of the probes: CS6 (network control, as BFD uses) so they
    /// are queued like the traffic that matters most, not behind bulk.
    pub tos: u8,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            interval: Duration::from_millis(10),
            backoff_cap: Duration::from_secs(1),
            source_port: PROBE_PORT,
            tos: 0xc0,
        }
    }
}

/// `[link_state]` of agent.toml: the link state this gateway shares with the others
/// (`crate::link_state`), flooded over each monitored local link to its `peer_ip`, on UDP
/// `port` of the link's `local_ip`. The timers and thresholds are [`LinkStateConfig`]'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkStateSection {
    /// Off: this gateway knows only its own links, and the others from the topology file.
    pub enabled: bool,
    /// The same on every gateway.
    pub port: u16,
    pub refresh_interval_ms: u64,
    pub max_age_ms: u64,
    pub retransmit_interval_ms: u64,
    pub hold_initial_ms: u64,
    pub hold_max_ms: u64,
    pub hold_half_life_ms: u64,
    pub figures_interval_ms: u64,
    /// A figure is announced again once it moved by more than this share of the figure
    /// announced last, and by more than its floor.
    pub figure_change_percent: f64,
    pub rtt_floor_us: u32,
    pub jitter_floor_us: u32,
    /// In basis points (1/10,000).
    pub loss_floor_bp: u16,
    pub utilisation_floor_bp: u16,
}

impl Default for LinkStateSection {
    fn default() -> Self {
        let c = LinkStateConfig::default();
        let ms = |d: Duration| d.as_millis() as u64;
        LinkStateSection {
            enabled: true,
            port: LINK_STATE_PORT,
            refresh_interval_ms: ms(c.refresh_interval),
            max_age_ms: ms(c.max_age),
            retransmit_interval_ms: ms(c.retransmit_interval),
            hold_initial_ms: ms(c.hold_initial),
            hold_max_ms: ms(c.hold_max),
            hold_half_life_ms: ms(c.hold_half_life),
            figures_interval_ms: ms(c.figures_interval),
            figure_change_percent: c.thresholds.relative * 100.0,
            rtt_floor_us: c.thresholds.rtt_floor_us,
            jitter_floor_us: c.thresholds.jitter_floor_us,
            loss_floor_bp: c.thresholds.loss_floor,
            utilisation_floor_bp: c.thresholds.utilisation_floor,
        }
    }
}

impl LinkStateSection {
    /// The timers and thresholds as the flooder takes them.
    pub fn timers(&self) -> LinkStateConfig {
        let ms = Duration::from_millis;
        LinkStateConfig {
            refresh_interval: ms(self.refresh_interval_ms),
            max_age: ms(self.max_age_ms),
            retransmit_interval: ms(self.retransmit_interval_ms),
            hold_initial: ms(self.hold_initial_ms),
            hold_max: ms(self.hold_max_ms),
            hold_half_life: ms(self.hold_half_life_ms),
            figures_interval: ms(self.figures_interval_ms),
            thresholds: FigureThresholds {
                relative: self.figure_change_percent / 100.0,
                rtt_floor_us: self.rtt_floor_us,
                jitter_floor_us: self.jitter_floor_us,
                loss_floor: self.loss_floor_bp,
                utilisation_floor: self.utilisation_floor_bp,
            },
        }
    }
}

/// `kind` of `[store]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    File,
    Etcd,
}

/// `[store]` of agent.toml, as written; checked into a [`crate::store::StoreConfig`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    pub kind: StoreKind,
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
    /// PEM: the CA of the etcd members, this gateway's client certificate and key.
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}
