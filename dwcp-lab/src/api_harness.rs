//! The API served for real on a Unix socket (and TCP) in a temp dir, fed by a real watch
//! channel, as the API tests and the `attacks` benchmark serve it. A small task plays the
//! agent's command loop: it applies link and reload commands to the snapshot it publishes,
//! and reservation operations to a real reservation manager with its file store, whose
//! reservations and events it publishes as the state owner does.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::{broadcast, mpsc, watch};

use dwcp_agent::agent::AgentEvent;
use dwcp_agent::agent::AgentSnapshot;
use dwcp_agent::{agent::AgentHandle, api::*};
use dwcp_cli::client::*;
use dwcp_control::bandwidth::FileStore;
use dwcp_control::bandwidth::ManagerConfig;
use dwcp_control::bandwidth::Reservation;
use dwcp_control::bandwidth::ReservationManager;

use crate::fixtures::*;

/// A running API, its state directory, TLS fixtures and a client of its Unix socket.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub tls: ApiTls,
    pub snapshot: watch::Sender<Arc<AgentSnapshot>>,
    pub events: broadcast::Sender<AgentEvent>,
    pub commands_seen: Arc<AtomicUsize>,
    pub api: Option<RunningApi>,
    pub client: ApiClient,
    pub config: ApiConfig,
}

#[derive(Clone, Copy, PartialEq)]
/// How the agent behind the API behaves.
pub enum Agent {
    /// Applies commands to the snapshot and answers.
    Answers,
    /// Takes commands and never answers.
    Silent,
    /// Has stopped: the command channel is closed.
    Gone,
}

/// The TCP API's bearer token.
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

impl Harness {
    /// Serves the API of the three-region fixture on a Unix socket in a temp dir, and on
    /// TLS at 127.0.0.1 (an ephemeral port) if `tcp`, with the agent behaving as `agent`.
    pub async fn start(agent: Agent, tcp: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = three_region_snapshot();
        let (mut manager, _) = ReservationManager::open(
            Box::new(FileStore::new(dir.path().join("reservations.json"))),
            network_of(&snapshot),
            ManagerConfig::default(),
        )
        .unwrap();
        let (snap_tx, snap_rx) = watch::channel(Arc::new(snapshot));
        let (events, _) = broadcast::channel(64);
        publish_reservations(&mut manager, &snap_tx, &events);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let commands_seen = Arc::new(AtomicUsize::new(0));
        match agent {
            Agent::Answers => {
                tokio::spawn(apply_commands(
                    cmd_rx,
                    snap_tx.clone(),
                    events.clone(),
                    manager,
                    commands_seen.clone(),
                ));
            }
            Agent::Silent => {
                let seen = commands_seen.clone();
                tokio::spawn(async move {
                    let mut rx = cmd_rx;
                    let mut held = Vec::new();
                    while let Some(c) = rx.recv().await {
                        seen.fetch_add(1, Ordering::SeqCst);
                        held.push(c);
                    }
                });
            }
            Agent::Gone => drop(cmd_rx),
        }
        let token_file = dir.path().join("token");
        write_secret(&token_file, format!("{TOKEN}\n").as_bytes());
        let tls = ApiTls::create(dir.path());
        let config = ApiConfig {
            socket: Some(dir.path().join("run/api.sock")),
            tcp_listen: tcp.then(|| "127.0.0.1:0".parse().unwrap()),
            token_file: tcp.then_some(token_file),
            tls_cert: tcp.then(|| tls.cert.clone()),
            tls_key: tcp.then(|| tls.key.clone()),
            max_body_bytes: 4096,
            command_timeout_ms: 300,
            read_timeout_ms: 1000,
            ..ApiConfig::default()
        };
        let handle = AgentHandle {
            snapshot: snap_rx,
            events: events.clone(),
            commands: cmd_tx,
        };
        let ctx = ApiContext::new(handle, &config);
        let api = RunningApi::start(&config, ctx).await.unwrap();
        let client = ApiClient::new(Endpoint::Unix(config.socket.clone().unwrap()));
        Harness {
            dir,
            tls,
            snapshot: snap_tx,
            events,
            commands_seen,
            api: Some(api),
            client,
            config,
        }
    }

    pub fn tcp_addr(&self) -> std::net::SocketAddr {
        self.api.as_ref().unwrap().tcp_addr.unwrap()
    }

    /// A client of the TCP API (TLS, trusting the fixture's CA) sending `token`.
    pub fn tcp(&self, token: Option<&str>) -> ApiClient {
        ApiClient::new(Endpoint::Https {
            addr: self.tcp_addr().to_string(),
            token: token.map(str::to_string),
            trust: TlsTrust::from_pem_file(&self.tls.ca).unwrap(),
        })
    }

    pub async fn raw(&self, method: &str, path: &str, body: Option<&str>) -> RawResponse {
        self.client
            .request_raw(method, path, &[], body.map(|b| b.as_bytes().to_vec()))
            .await
            .unwrap()
    }

    pub fn store_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.path().join("reservations.json")).ok()
    }

    /// The reservations the agent published last.
    pub fn stored(&self) -> Vec<Reservation> {
        let s = self.snapshot.borrow();
        s.reservations.as_ref().unwrap().stored.clone()
    }

    pub async fn stop(mut self) {
        self.api.take().unwrap().shutdown().await.unwrap();
        assert!(
            !self.config.socket.as_ref().unwrap().exists(),
            "socket removed on shutdown"
        );
    }
}
