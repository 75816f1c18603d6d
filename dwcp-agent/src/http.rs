//! The agent's HTTP servers (API, metrics): HTTP/1.1 on a listener, within the limits of
//! [`HttpLimits`], so that idle or half-written connections cannot starve the agent.
//!
//! - At most `max_connections` connections per listener. One more is closed as soon as it is
//!   accepted, not queued: a queue would make every client wait behind the idle connections
//!   that filled it, while a closed one can retry at once (and the kernel's accept queue keeps
//!   moving instead of filling up with connections nobody serves).
//! - At most `max_connections_per_source` of them from one source address (an IPv6 source by
//!   its /64) on a TCP listener, closed the same way: one client cannot take every slot while
//!   others wait. A Unix socket's clients are local and admitted by the socket's mode.
//! - `read_timeout` for the TLS handshake and for each request's head: hyper's header read
//!   timeout, which hyper re-arms when a kept-alive connection goes idle, so it is the idle
//!   timeout too. The API's JSON extractor gives a body the same time.
//! - `write_timeout` for each write (the TLS handshake's included) to wait for the client to
//!   take data ([`WriteTimeout`]): a client that stops reading is disconnected instead of
//!   holding its connection, task and unsent response for ever. It bounds a stall, not a
//!   response: a slow client that keeps reading is served.
//! - Request heads of at most [`MAX_HEAD_BYTES`] (hyper's read buffer), so a connection that
//!   trickles headers holds little memory.
//!
//! At start the agent raises its open-files limit to what these limits need
//! ([`raise_fd_limit`]); the systemd unit's `LimitNOFILE` allows it.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{serve::Listener, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Semaphore,
    time::Sleep,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use dwcp_control::config::{AgentConfig, HttpLimits};
use dwcp_tunnels::key_exchange::source_of;

/// Largest request head (request line and headers) read; a larger one is refused (431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Descriptors the agent needs besides its HTTP connections: maps, programs, netlink and
/// probe sockets, files.
pub const FD_RESERVE: u64 = 1024;

/// How often a listener at its connection limit says so.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The client's source for the per-source limit, from a listener's peer address: none for a
/// Unix socket.
pub trait Source {
    fn source(&self) -> Option<IpAddr>;
}

impl Source for SocketAddr {
    fn source(&self) -> Option<IpAddr> {
        Some(source_of(self.ip()))
    }
}

impl Source for tokio::net::unix::SocketAddr {
    fn source(&self) -> Option<IpAddr> {
        None
    }
}

/// Connections open per source; a [`SourceSlot`] gives its one back when dropped.
#[derive(Clone, Default)]
struct PerSource(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct SourceSlot {
    sources: PerSource,
    source: IpAddr,
}

impl PerSource {
    /// A slot for one more connection from `source`, unless it holds `max` already.
    fn take(&self, source: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(source).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Connections closed at once, per reason, warned about at most once a minute per reason.
struct Refusals {
    name: &'static str,
    refused: u64,
    warned: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, limit: usize, what: &'static str) {
        self.refused += 1;
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_INTERVAL)
        {
            warn!(
                listener = self.name,
                limit,
                refused = self.refused,
                "{what} reached: connections over it are closed at once"
            );
            self.refused = 0;
            self.warned = Some(Instant::now());
        }
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes, then
/// waits for the open connections to finish their requests. `name` names the listener in
/// the log.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: Listener,
    L::Addr: Source,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = PerSource::default();
    let graceful = GracefulShutdown::new();
    let mut full = Refusals {
        name,
        refused: 0,
        warned: None,
    };
    let mut source_full = Refusals {
        name,
        refused: 0,
        warned: None,
    };
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let source_slot = match addr.source() {
            Some(source) => match per_source.take(source, limits.max_connections_per_source) {
                Some(slot) => Some(slot),
                None => {
                    source_full.note(
                        limits.max_connections_per_source,
                        "connection limit per source",
                    );
                    continue;
                }
            },
            None => None,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            full.note(limits.max_connections, "connection limit");
            continue;
        };
        let io = WriteTimeout::new(io, limits.write_timeout);
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
            drop((slot, source_slot));
        });
    }
    graceful.shutdown().await;
}

/// A connection whose writes fail with `TimedOut` once one has waited `timeout` for the
/// client to take data. Reads pass through (hyper times them).
pub struct WriteTimeout<I> {
    io: I,
    timeout: Duration,
    /// Armed when a write, flush or shutdown first waits; cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteTimeout<I> {
    pub fn new(io: I, timeout: Duration) -> WriteTimeout<I> {
        WriteTimeout {
            io,
            timeout,
            stalled: None,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no data for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, polled)
    }
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpSocket, TcpStream},
        sync::oneshot,
        task::JoinHandle,
    };

    use super::*;

    /// The body of `/big`.
    const BIG: usize = 1 << 20;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_connections: 8,
            max_connections_per_source: 2,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_millis(500),
        }
    }

    /// Serves `/` ("ok") and `/big` (1 MiB) on 127.0.0.1 within `limits`.
    async fn start(limits: HttpLimits) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/big", get(|| async { vec![b'x'; BIG] }));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router, limits, None, "test", async {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    /// A connection from `from`, an address of 127.0.0.0/8 (all of it is local), with a
    /// small receive buffer.
    async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
        let s = TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.bind((from, 0).into()).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Whether `GET /` on `s` is answered 200 within 2 s.
    async fn served(s: &mut TcpStream) -> bool {
        if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].starts_with(b"HTTP/1.1 200"),
            _ => false,
        }
    }

    /// Reads until the server closes `s` (end of file or reset); the bytes read, or `None`
    /// if it is still open after `within`.
    async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<usize> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        let all = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        tokio::time::timeout(within, all).await.ok()?;
        Some(total)
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
        let (addr, stop, task) = start(limits()).await;
        let mut reader = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
        // 32 pipelined requests for 1 MiB each, far more than the sockets' buffers hold, and
        // nothing read for three times the write timeout.
        let requests = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n".repeat(32);
        reader.write_all(requests.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let read = read_until_closed(&mut reader, Duration::from_secs(5))
            .await
            .expect("the stalled connection is closed");
        assert!(
            read < 32 * BIG,
            "read {read} bytes: the server never gave up"
        );
        // Its slots are free again: two more connections from the same source are served.
        for _ in 0..2 {
            let mut next = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
            assert!(served(&mut next).await);
        }
        // A client that keeps reading gets all of a response the buffers cannot hold.
        let mut steady = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr).await;
        steady
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let read = read_until_closed(&mut steady, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(read > BIG, "read {read} bytes");
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn one_source_cannot_take_every_slot_while_another_is_served() {
        let (addr, stop, task) = start(limits()).await;
        let (greedy, other) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
        // The greedy source opens as many connections as the listener has slots.
        let mut held = Vec::new();
        for _ in 0..limits().max_connections {
            held.push(connect_from(greedy, addr).await);
        }
        // Two are kept (the per-source limit), the others closed at once.
        for s in &mut held[2..] {
            assert!(
                read_until_closed(s, Duration::from_secs(1)).await.is_some(),
                "a connection over the source's limit is still open"
            );
        }
        for s in &mut held[..2] {
            assert!(served(s).await);
        }
        // Another source is served meanwhile, up to its own limit.
        let mut others = Vec::new();
        for _ in 0..2 {
            let mut s = connect_from(other, addr).await;
            assert!(served(&mut s).await);
            others.push(s);
        }
        // A connection that closes gives its source's slot back.
        held.truncate(1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut again = connect_from(greedy, addr).await;
        assert!(served(&mut again).await);
        stop.send(()).unwrap();
        drop((held, others, again));
        task.await.unwrap();
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let a: SocketAddr = "[2001:db8:1:2::10]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:ffff::1]:6000".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::10]:5000".parse().unwrap();
        assert_eq!(a.source(), b.source());
        assert_ne!(a.source(), c.source());
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert_eq!(v4.source(), Some("192.0.2.1".parse().unwrap()));
    }
}
