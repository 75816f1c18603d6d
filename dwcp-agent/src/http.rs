//! The agent's HTTP servers (API, metrics): HTTP/1.1 on a listener, within the limits of
//! [`HttpLimits`], so that idle or half-written connections cannot starve the agent.
//!
//! - At most `max_connections` connections per listener. One more is closed as soon as it is
//!   accepted, not queued: a queue would make every client wait behind the idle connections
//!   that filled it, while a closed one can retry at once (and the kernel's accept queue keeps
//!   moving instead of filling up with connections nobody serves).
//! - `read_timeout` for the TLS handshake and for each request's head: hyper's header read
//!   timeout, which hyper re-arms when a kept-alive connection goes idle, so it is the idle
//!   timeout too. The API's JSON extractor gives a body the same time.
//! - Request heads of at most [`MAX_HEAD_BYTES`] (hyper's read buffer), so a connection that
//!   trickles headers holds little memory.
//!
//! At start the agent raises its open-files limit to what these limits need
//! ([`raise_fd_limit`]); the systemd unit's `LimitNOFILE` allows it.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{serve::Listener, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use dwcp_control::config::{AgentConfig, HttpLimits};

/// Largest request head (request line and headers) read; a larger one is refused (431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Descriptors the agent needs besides its HTTP connections: maps, programs, netlink and
/// probe sockets, files.
pub const FD_RESERVE: u64 = 1024;

/// How often a listener at its connection limit says so.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes, then
/// waits for the open connections to finish their requests. `name` names the listener in
/// the log.
pub async fn serve<L: Listener>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Connections refused since the last warning, which is given at most once a minute.
    let mut refused = 0u64;
    let mut warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if warned.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_INTERVAL) {
                warn!(
                    listener = name,
                    limits.max_connections,
                    refused,
                    "connection limit reached: connections over it are closed at once"
                );
                refused = 0;
                warned = Some(Instant::now());
            }
            continue;
        };
        let router = router.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(io, router, limits.read_timeout, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.read_timeout, acceptor.accept(io)).await {
                        Ok(Ok(io)) => {
                            serve_connection(io, router, limits.read_timeout, watcher).await
                        }
                        Ok(Err(e)) => debug!(listener = name, "TLS handshake failed: {e}"),
                        Err(_) => debug!(listener = name, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
}

async fn serve_connection<I>(io: I, router: Router, read_timeout: Duration, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    if let Err(e) = watcher.watch(conn).await {
        debug!("HTTP connection: {e}");
    }
}

/// Descriptors the listeners of `config` may need at once, with [`FD_RESERVE`].
pub fn fds_needed(config: &AgentConfig) -> u64 {
    let api = config.api.max_connections as u64;
    let listeners = [
        config.api.socket.is_some().then_some(api),
        config.api.tcp_listen.is_some().then_some(api),
        config
            .metrics
            .enabled
            .then_some(config.metrics.max_connections as u64),
    ];
    FD_RESERVE + listeners.into_iter().flatten().sum::<u64>()
}

/// Raises the soft limit on open files to `needed` where the hard limit allows (a process
/// starts with 1,024 outside systemd's `LimitNOFILE`); warns if it cannot, since accepting
/// then fails before the connection limits are reached.
pub fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!("reading RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        return;
    }
    if limit.rlim_cur >= needed {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: a valid pointer for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        warn!(
            "raising RLIMIT_NOFILE to {}: {}",
            raised.rlim_cur,
            std::io::Error::last_os_error()
        );
    } else if raised.rlim_cur < needed {
        warn!(
            needed,
            allowed = raised.rlim_cur,
            "the open-files limit is below what the connection limits need: raise LimitNOFILE"
        );
    }
}
