//! The sections of agent.toml that configure the agent's I/O tasks (API, metrics, probe
//! sender): parsed and checked here with the rest of the file, used by `dwcp-agent`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use dwcp_common::probe::PROBE_PORT;
use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/dwcp/agent.sock";
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 5_000;
/// Shortest bearer token accepted (128 bits as hex is 32).
pub const MIN_TOKEN_LEN: usize = 32;

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
    /// Also serve on TCP at this address; requires `token_file`.
    pub tcp_listen: Option<SocketAddr>,
    /// File holding the bearer token of the TCP API (at least 32 characters).
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a request waits for the agent to take and answer a command.
    pub command_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: Some(DEFAULT_SOCKET.into()),
            socket_mode: DEFAULT_SOCKET_MODE,
            socket_group: None,
            tcp_listen: None,
            token_file: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            command_timeout_ms: DEFAULT_COMMAND_TIMEOUT_MS,
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
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: DEFAULT_METRICS_LISTEN.parse().expect("valid default"),
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
