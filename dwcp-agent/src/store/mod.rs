//! The cluster store on etcd (issue 18): what gateways must agree on. Reservations admitted in
//! one transaction over every link of their path (`reservations.rs`), membership on leases
//! (`membership.rs`), request ids and removal marks beside them (`requests.rs`), the published
//! topology (`topology.rs`), the gateways' link figures (`figures.rs`), and a prefix watch that
//! survives restarts and compaction without losing a delete (`watch.rs`). The rules and the key
//! layout are `dwcp-control`'s (`bandwidth::ledger`, `store`); this is the I/O.
//!
//! Every call is bounded by `EtcdStore::timeout`: with no member answering, a call fails with
//! [`ClusterStoreError::Unreachable`] instead of hanging, and nothing that needs agreement is
//! decided locally.

mod figures;
mod leader;
mod membership;
mod requests;
mod reservations;
mod topology;
mod watch;

use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use dwcp_control::bandwidth::{BandwidthError, ReservationId};
use dwcp_control::store::{EtcdConfig, KeyLayout};
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, TlsOptions, Txn,
    TxnResponse,
};

pub use figures::{local_figures, publish_figures};
pub use membership::Membership;
pub use reservations::MAX_ATTEMPTS;
pub use watch::{PrefixWatch, WatchEvent};

/// Default bound of one call to the store.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterStoreError {
    /// No member answered (all down, partitioned, or no leader). For an admission that had
    /// been sent, the transaction may still have been applied: admitting the same reservation
    /// (same id) again is safe, it is never admitted twice.
    #[error("cluster store unreachable: {0}")]
    Unreachable(String),
    #[error("cluster store: {0}")]
    Etcd(Arc<etcd_client::Error>),
    #[error(
        "reservation {id}: the ledgers of its path changed under each of {attempts} attempts \
         (other gateways admitting on the same links); nothing was admitted, try again"
    )]
    Contention { id: ReservationId, attempts: u32 },
    #[error("topology not published: another push won each of {attempts} attempts; try again")]
    TopologyContention { attempts: u32 },
    #[error("reservation {0} is already in the store with other terms")]
    IdTaken(ReservationId),
    #[error("cluster store key {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("cluster store TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bandwidth(#[from] BandwidthError),
}

impl ClusterStoreError {
    /// This failure of a batch's store calls, as each admission of the batch reports it.
    fn for_admission(&self, id: ReservationId) -> ClusterStoreError {
        match self {
            ClusterStoreError::Unreachable(detail) => {
                ClusterStoreError::Unreachable(detail.clone())
            }
            ClusterStoreError::Etcd(e) => ClusterStoreError::Etcd(e.clone()),
            ClusterStoreError::Contention { attempts, .. } => ClusterStoreError::Contention {
                id,
                attempts: *attempts,
            },
            ClusterStoreError::Corrupt { key, detail } => ClusterStoreError::Corrupt {
                key: key.clone(),
                detail: detail.clone(),
            },
            // Not from an admission's store calls: each admission's own outcome, the
            // connection's set-up, or a topology push.
            ClusterStoreError::IdTaken(_)
            | ClusterStoreError::TlsFile { .. }
            | ClusterStoreError::TopologyContention { .. }
            | ClusterStoreError::Bandwidth(_) => ClusterStoreError::Unreachable(self.to_string()),
        }
    }
}

impl From<etcd_client::Error> for ClusterStoreError {
    fn from(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        use tonic::Code;
        match &e {
            E::TransportError(_) | E::IoError(_) => ClusterStoreError::Unreachable(e.to_string()),
            // Unknown: how tonic reports a connection that broke mid-call.
            E::GRpcStatus(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                ) =>
            {
                ClusterStoreError::Unreachable(e.to_string())
            }
            _ => ClusterStoreError::Etcd(Arc::new(e)),
        }
    }
}

pub type Result<T, E = ClusterStoreError> = std::result::Result<T, E>;

/// A connection to the etcd cluster of one deployment (one key prefix). Cheap to clone: the
/// clones share the connections.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    keys: KeyLayout,
    timeout: Duration,
    /// This gateway's admissions waiting for the next batch.
    admissions: Arc<reservations::AdmissionQueue>,
    /// This connection's share of the admission leader's election (`leader.rs`).
    leadership: Arc<leader::Leadership>,
    /// The campaign and the verdicts' watch, stopped when the last clone goes.
    tasks: Arc<leader::Tasks>,
    /// What this connection writes when it takes the admission turn or leads, and queues its
    /// admissions under: unique per connection, no `/`.
    admitter: String,
}

impl EtcdStore {
    /// Connects lazily: with no member up this succeeds, and the calls fail until one answers.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // HTTP/2 pings: a silent member's streams (watches, lease renewals) break instead
            // of hanging. Not more often than etcd's --grpc-keepalive-min-time (5 s), which
            // answers faster pings by closing the connection ("too many pings").
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader refuses, rather than serving stale watches.
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| ClusterStoreError::TlsFile {
                    path: path.clone(),
                    source,
                })
            };
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
                    .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?)),
            );
        }
        let client = Client::connect(&config.endpoints, Some(options)).await?;
        Ok(EtcdStore {
            client,
            keys: KeyLayout::new(&config.prefix),
            timeout: DEFAULT_TIMEOUT,
            admissions: Arc::default(),
            leadership: Arc::default(),
            tasks: Arc::default(),
            admitter: admitter_token(),
        })
    }

    /// The same store with another bound on each call.
    pub fn with_timeout(mut self, timeout: Duration) -> EtcdStore {
        self.timeout = timeout;
        self
    }

    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// Runs one etcd call within the timeout, again while it fails to reach a member: after
    /// an outage each member's connection fails once more before it is dialled again, and
    /// another member may answer. Every call is safe to repeat (reads, or writes guarded by
    /// compares that a first application makes fail).
    async fn call<T, F>(&self, what: &str, mut call: impl FnMut(Client) -> F) -> Result<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(left, call(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => match ClusterStoreError::from(e) {
                    ClusterStoreError::Unreachable(detail) => detail,
                    other => return Err(other),
                },
                Err(_) => "no answer".to_owned(),
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(ClusterStoreError::Unreachable(format!(
                    "{what}: no member answered within {:?} (last: {last})",
                    self.timeout
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

impl EtcdStore {
    /// One transaction, as [`EtcdStore::call`] runs it.
    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Every key under `prefix`, at one revision.
    async fn get_prefix(&self, what: &str, prefix: String) -> Result<GetResponse> {
        self.call(what, |mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
    }
}

impl EtcdStore {
    /// A reservation id no gateway has had or will get: the revision of a write to
    /// `KeyLayout::reservation_ids` (revisions only grow, one per write in the cluster).
    pub async fn new_reservation_id(&self) -> Result<ReservationId> {
        let key = self.keys.reservation_ids();
        let resp = self
            .call("allocate a reservation id", |mut c| {
                let key = key.clone();
                async move { c.put(key, Vec::new(), None).await }
            })
            .await?;
        let revision = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| corrupt(&key, "the put's answer has no revision"))?;
        Ok(ReservationId(revision as u64))
    }
}

/// A value no other connection writes: the process, the time and a counter.
fn admitter_token() -> String {
    static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{now}-{n}", std::process::id())
}

/// Pause between two tries of a call that reached no member.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

fn corrupt(key: &str, detail: impl ToString) -> ClusterStoreError {
    ClusterStoreError::Corrupt {
        key: key.to_owned(),
        detail: detail.to_string(),
    }
}
