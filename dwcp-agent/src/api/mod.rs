//! The agent's HTTP/JSON API: on a Unix socket by default (mode 0660: whoever may write it is
//! an operator), optionally on TCP, served over TLS only (`tls.rs`), where every request
//! needs `Authorization: Bearer <token>`. Every listener has the limits of `crate::http`.
//!
//! Built only against the agent's boundary ([`AgentHandle`]): reads (reservations included)
//! come from the latest snapshot, and link, reload and reservation changes go to the agent as
//! commands; events come from its event channel. A request that is unauthenticated, malformed
//! or too large is refused before any handler runs, so it changes nothing. Every error is a
//! JSON body (see [`ErrorBody`]).
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/status` | gateway, generations, links up, regions reachable, counters |
//! | GET | `/v1/topology` | regions and links |
//! | PUT | `/v1/topology` | etcd mode: publish a topology file's topology (`TopologyFile`) |
//! | POST | `/v1/topology/diff` | etcd mode: what publishing it would change |
//! | GET | `/v1/links`, `/v1/links/{id or name}` | measured links |
//! | PUT | `/v1/links/{id or name}/admin` | `{"state": "down"}` / `{"state": "up"}` |
//! | GET | `/v1/routes`, `/v1/routes/{region}` | routes with their paths and why |
//! | GET | `/v1/history?destination=&limit=` | route changes, oldest first |
//! | GET | `/v1/tunnels` | tunnel devices |
//! | GET | `/v1/lsdb` | the link-state database: records, neighbours, flooding counters |
//! | GET | `/v1/gateways` | every gateway registered in the cluster store (etcd mode) |
//! | GET, POST | `/v1/reservations` | list, create (`ReservationRequest`) |
//! | GET, PATCH, DELETE | `/v1/reservations/{id}` | read, extend (`{"end": ...}`), cancel |
//! | GET | `/v1/events?owner=` | server-sent events: `agent`, `reservation`, `lagged` |
//! | POST | `/v1/reload` | re-read the configuration |

mod error;
mod extract;
mod handlers;
mod tls;

use tls::{acceptor, read_secret};

/// The bodies of the API's requests and responses (shared with the CLI).
pub use dwcp_control::view as views;

use std::{
    future::Future,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, put},
    Router,
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinHandle,
};
use tracing::info;

pub use error::{ApiError, ErrorBody, ServeError};

use crate::agent::AgentHandle;
use crate::store::EtcdStore;

pub use dwcp_control::config::{
    ApiConfig, DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_SOCKET,
    DEFAULT_SOCKET_MODE, MIN_TOKEN_LEN,
};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiContext {
    handle: AgentHandle,
    command_timeout: Duration,
    max_body_bytes: usize,
    /// How long a request body may take to arrive.
    read_timeout: Duration,
    /// Set when the server shuts down: ends the event streams, which would otherwise keep
    /// a graceful shutdown waiting for ever.
    closing: Arc<watch::Sender<bool>>,
    /// The cluster store in etcd mode (membership is read from it, not from the snapshot).
    cluster_store: Option<EtcdStore>,
}

impl ApiContext {
    pub fn new(handle: AgentHandle, config: &ApiConfig) -> ApiContext {
        ApiContext {
            handle,
            command_timeout: Duration::from_millis(config.command_timeout_ms),
            max_body_bytes: config.max_body_bytes,
            read_timeout: config.limits().read_timeout,
            closing: Arc::new(watch::channel(false).0),
            cluster_store: None,
        }
    }

    /// The same context, listing the gateways of `store`.
    pub fn with_cluster_store(mut self, store: EtcdStore) -> ApiContext {
        self.cluster_store = Some(store);
        self
    }

    /// Ends open event streams and makes [`ApiContext::closed`] complete: call it together
    /// with the servers' shutdown.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once [`ApiContext::close`] has been called.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// The routes, without authentication (the Unix socket's permissions are its access control).
pub fn router(ctx: ApiContext) -> Router {
    let limit = ctx.max_body_bytes;
    Router::new()
        .route("/v1/status", get(handlers::status))
        .route(
            "/v1/topology",
            get(handlers::topology).put(handlers::push_topology),
        )
        .route(
            "/v1/topology/diff",
            axum::routing::post(handlers::diff_topology),
        )
        .route("/v1/links", get(handlers::links))
        .route("/v1/links/{link}", get(handlers::link))
        .route("/v1/links/{link}/admin", put(handlers::set_link_admin))
        .route("/v1/routes", get(handlers::routes))
        .route("/v1/routes/{destination}", get(handlers::route))
        .route("/v1/history", get(handlers::history))
        .route("/v1/tunnels", get(handlers::tunnels))
        .route("/v1/lsdb", get(handlers::lsdb))
        .route("/v1/gateways", get(handlers::gateways))
        .route("/v1/classes", get(handlers::classes))
        .route("/v1/flows", get(handlers::flows))
        .route(
            "/v1/reservations",
            get(handlers::reservations).post(handlers::create_reservation),
        )
        .route(
            "/v1/reservations/{id}",
            get(handlers::reservation)
                .patch(handlers::extend_reservation)
                .delete(handlers::cancel_reservation),
        )
        .route("/v1/events", get(handlers::events))
        .route("/v1/reload", axum::routing::post(handlers::reload))
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ctx)
}

/// The routes behind a bearer token (for TCP).
pub fn router_with_token(ctx: ApiContext, token: String) -> Router {
    router(ctx).layer(middleware::from_fn_with_state(
        Arc::<str>::from(token),
        require_bearer,
    ))
}

async fn require_bearer(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    match given {
        None => ApiError::MissingToken.into_response(),
        Some(t) if !constant_time_eq(t.trim().as_bytes(), token.as_bytes()) => {
            ApiError::WrongToken.into_response()
        }
        Some(_) => next.run(req).await,
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a bearer token from `path` (surrounding whitespace ignored; readable by its owner
/// only, see `read_secret`).
pub fn load_token(path: &Path) -> Result<String, ServeError> {
    let bytes = read_secret(path)?;
    let token = String::from_utf8_lossy(&bytes).trim().to_string();
    if token.len() < MIN_TOKEN_LEN {
        return Err(ServeError::TokenTooShort {
            path: path.into(),
            len: token.len(),
            min: MIN_TOKEN_LEN,
        });
    }
    Ok(token)
}

/// Binds the API's Unix socket at `path` with permissions `mode` (and group `group`).
///
/// The socket is created under a temporary name, given its mode and group, and then renamed
/// into place, so it is never reachable with looser permissions. A stale socket left by a
/// dead agent is replaced; one a running agent answers on is not.
pub async fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<UnixListener, ServeError> {
    let io = |source| ServeError::Socket {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::SocketInUse(path.into()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let gid = group.map(group_id).transpose()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(listener)
}

fn group_id(name: &str) -> Result<u32, ServeError> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| ServeError::UnknownGroup(name.to_string()))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(ServeError::UnknownGroup(name.to_string()));
    }
    Ok(grp.gr_gid)
}

/// The API as configured, running. [`RunningApi::shutdown`] stops it and removes its socket.
pub struct RunningApi {
    ctx: ApiContext,
    tasks: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
    pub tcp_addr: Option<SocketAddr>,
}

impl RunningApi {
    /// Binds everything `config` asks for (failing before serving anything if one fails: a
    /// TCP listener needs its token, certificate and key, each readable) and starts serving.
    pub async fn start(config: &ApiConfig, ctx: ApiContext) -> Result<RunningApi, ServeError> {
        let tcp = match config.tcp_listen {
            Some(addr) => {
                let (Some(token), Some(cert), Some(key)) =
                    (&config.token_file, &config.tls_cert, &config.tls_key)
                else {
                    return Err(ServeError::TcpWithoutTlsOrToken);
                };
                let token = load_token(token)?;
                let tls = acceptor(cert, key)?;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Tcp { addr, source })?;
                Some((listener, token, tls))
            }
            None => None,
        };
        let unix = match &config.socket {
            Some(path) => {
                Some(bind_unix(path, config.socket_mode, config.socket_group.as_deref()).await?)
            }
            None => None,
        };
        let limits = config.limits();
        let mut tasks = Vec::new();
        let mut tcp_addr = None;
        if let Some(listener) = unix {
            info!(socket = ?config.socket, "API listening on the Unix socket");
            tasks.push(tokio::spawn(crate::http::serve(
                listener,
                router(ctx.clone()),
                limits,
                None,
                "API socket",
                ctx.closed(),
            )));
        }
        if let Some((listener, token, tls)) = tcp {
            tcp_addr = listener.local_addr().ok();
            info!(addr = ?tcp_addr, "API listening on TCP (TLS, bearer token required)");
            tasks.push(tokio::spawn(crate::http::serve(
                listener,
                router_with_token(ctx.clone(), token),
                limits,
                Some(tls),
                "API TCP",
                ctx.closed(),
            )));
        }
        Ok(RunningApi {
            ctx,
            tasks,
            socket: config.socket.clone(),
            tcp_addr,
        })
    }

    /// Stops serving (open event streams end) and removes the socket.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.ctx.close();
        let mut result = Ok(());
        for task in self.tasks {
            if let Err(e) = task.await {
                result = Err(ServeError::Task(e));
            }
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}
