//! Prometheus metrics of the agent, served on `/metrics` at a configurable address.
//!
//! Each scrape encodes the agent's current [`AgentSnapshot`] (links, routes, fast-path
//! counters, tunnels and, when the agent keeps them, reservations). Nothing is sampled in
//! between: the values are those the agent published last, and Prometheus' scrape interval
//! (10 s in `deploy/prometheus.yml`) is the export period. Prometheus gets OpenMetrics (it asks
//! for it); everything else gets the classic text format, which is what `promtool check
//! metrics` lints.

mod collector;
pub mod text_format;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::sync::watch;

pub use collector::SnapshotCollector;

use crate::agent::{AgentHandle, AgentSnapshot};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

use dwcp_control::config::HttpLimits;
pub use dwcp_control::config::{MetricsConfig, DEFAULT_METRICS_LISTEN};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("metrics listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics listener: {0}")]
    LocalAddr(std::io::Error),
    #[error("metrics server task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Builds the metrics of a scrape from the agent's boundary.
#[derive(Clone)]
pub struct Exporter {
    snapshot: watch::Receiver<Arc<AgentSnapshot>>,
}

impl Exporter {
    pub fn new(handle: &AgentHandle) -> Exporter {
        Exporter {
            snapshot: handle.snapshot.clone(),
        }
    }

    fn collector(&self) -> SnapshotCollector {
        SnapshotCollector {
            snapshot: self.snapshot.borrow().clone(),
        }
    }

    /// The OpenMetrics exposition of the current state.
    pub fn openmetrics(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.collector()));
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text exposition (0.0.4) of the current state.
    pub fn prometheus_text(&self) -> String {
        text_format::openmetrics_to_prometheus(&self.openmetrics())
    }

    /// `GET /metrics`, negotiating the format from `Accept`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    "not found: metrics are at /metrics\n",
                )
            })
            .with_state(self)
    }
}

async fn metrics(State(exporter): State<Exporter>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            exporter.openmetrics(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)],
            exporter.prometheus_text(),
        )
            .into_response()
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, TelemetryError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })
}

/// Serves `/metrics` on `listener`, within `limits` (see `crate::http`), until `shutdown`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    crate::http::serve(
        listener,
        exporter.router(),
        limits,
        None,
        "metrics",
        shutdown,
    )
    .await
}

/// The metrics endpoint as configured, running.
pub struct RunningMetrics {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningMetrics {
    /// Binds `config.listen` and serves `/metrics`; `None` when metrics are disabled.
    pub async fn start(
        config: &MetricsConfig,
        exporter: Exporter,
    ) -> Result<Option<RunningMetrics>, TelemetryError> {
        if !config.enabled {
            return Ok(None);
        }
        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(TelemetryError::LocalAddr)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, exporter, config.limits(), async {
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        Ok(Some(RunningMetrics { addr, stop, task }))
    }

    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        let _ = self.stop.send(());
        Ok(self.task.await?)
    }
}
