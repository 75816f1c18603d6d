//! Errors of the API. Every one is answered with a JSON body `{"error": "...", "status": N}`
//! whose message names the offending item.

use std::path::PathBuf;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use dwcp_control::{bandwidth::BandwidthError, view::CommandError};

pub use dwcp_control::view::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was refused before it reached a handler (body, query or path not
    /// understood). `message` is the extractor's explanation.
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body not received within {ms} ms")]
    BodyTimeout { ms: u64 },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("link state is off on this gateway ([link_state] enabled = false)")]
    LinkStateOff,
    #[error(
        "this gateway keeps no cluster store ([store] kind = \"file\"): only gateways in etcd mode register and list each other"
    )]
    NoClusterStore,
    #[error("{0}")]
    ClusterStore(#[from] crate::store::ClusterStoreError),
    #[error("{0}")]
    Topology(#[from] dwcp_control::topology::TopologyError),
    #[error("{0}")]
    BadRequest(String),
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    MissingToken,
    #[error("wrong bearer token")]
    WrongToken,
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    Reservation(#[from] BandwidthError),
    #[error("{0}")]
    Command(#[from] CommandError),
    #[error("the agent did not answer within {0} ms")]
    AgentTimeout(u64),
    #[error("the agent is not running its command loop")]
    AgentGone,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Rejected { status, .. } => *status,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound { .. }
            | ApiError::NoRoute { .. }
            | ApiError::LinkStateOff
            | ApiError::NoClusterStore => StatusCode::NOT_FOUND,
            ApiError::ClusterStore(crate::store::ClusterStoreError::Unreachable(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::ClusterStore(_) => StatusCode::BAD_GATEWAY,
            ApiError::Topology(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MissingToken | ApiError::WrongToken => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Reservation(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ApiError::Command(CommandError::UnknownLink(_)) => StatusCode::NOT_FOUND,
            ApiError::Command(CommandError::InvalidConfig(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Command(CommandError::ShuttingDown)
            | ApiError::AgentTimeout(_)
            | ApiError::AgentGone => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.to_string(),
            status: status.as_u16(),
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::MissingToken | ApiError::WrongToken) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dwcp\""),
            );
        }
        response
    }
}

/// Failures to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("API socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API socket {0} is in use by a running agent")]
    SocketInUse(PathBuf),
    #[error("API socket group {0:?} does not exist")]
    UnknownGroup(String),
    #[error("API TCP listener {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "api.tcp_listen needs api.token_file, api.tls_cert and api.tls_key: the TCP API is served over TLS with a bearer token only"
    )]
    TcpWithoutTlsOrToken,
    #[error("API secret {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API secret {path} has mode {mode:o}: group and others may not read it (`chmod 600 {path}`)")]
    SecretExposed { path: PathBuf, mode: u32 },
    #[error("API TLS {path}: {detail}")]
    Tls { path: PathBuf, detail: String },
    #[error("API server task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(
        "API token in {path} is {len} characters; use at least {min} (e.g. `openssl rand -hex 32`)"
    )]
    TokenTooShort {
        path: PathBuf,
        len: usize,
        min: usize,
    },
}
