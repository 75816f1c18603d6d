//! The probe sender: one tokio task per underlay link sends a probe request from the link's
//! local address to the peer's on UDP [`PROBE_PORT`] every interval, with TTL 255 (GTSM), the
//! link id, a sequence number, the `CLOCK_MONOTONIC` send time and the token that proves the
//! request ours (made with the link's key from `PROBE_KEYS`), and on a link with a shared key
//! the MAC under it. Replies never come back to us:
//! the local XDP program checks them against the key and consumes them into `LINK_STATE`.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use dwcp_common::probe::{ProbeHeader, ProbeKey, PROBE_LEN, PROBE_PORT, PROBE_TTL};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{monotonic_ns, Backoff, ProbeCounts};

#[derive(Debug, Error)]
pub enum SenderError {
    #[error("probe interval must be at least 1 ms, got {0:?}")]
    IntervalTooShort(Duration),
    #[error("link {0} is already probed")]
    DuplicateLink(u32),
    #[error("link {0} is not probed")]
    UnknownLink(u32),
    #[error("link {link_id}: local address {local} and remote address {remote} are of different families")]
    FamilyMismatch {
        link_id: u32,
        local: IpAddr,
        remote: IpAddr,
    },
    #[error("probe thread: real-time priority {priority} (SCHED_FIFO): {source}")]
    RealtimePriority { priority: u8, source: io::Error },
    #[error("probe thread: cannot start it: {0}")]
    Thread(io::Error),
    #[error("link {link_id}: cannot {what}: {source}")]
    Socket {
        link_id: u32,
        what: String,
        source: io::Error,
    },
}

/// One underlay link to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeLink {
    /// Index into `LINK_CONFIG` / `LINK_STATE`; carried in every probe.
    pub link_id: u32,
    /// Our underlay address on this link (the probe's source).
    pub local: IpAddr,
    /// The peer gateway's underlay address (the probe's destination).
    pub remote: IpAddr,
    /// Underlay interface, for `SO_BINDTODEVICE`: with it the probe leaves on this link even
    /// when the routing table would pick another.
    pub device: Option<String>,
    /// The link's key (`PROBE_KEYS`), for the requests' token.
    pub key: ProbeKey,
    /// The key both ends share (`auth_key_file`), when the link has one: the requests carry
    /// a MAC under it, without which the peer does not reflect them.
    pub auth: Option<ProbeKey>,
}

pub use dwcp_control::config::SenderConfig;

/// Opens the probe socket of `link`: bound to the link's local address and source port, and
/// to its device when one is named. Call it inside the link's network namespace (or pass a
/// socket you opened yourself to [`ProbeSender::add_link`]).
pub fn open_probe_socket(
    link: &ProbeLink,
    config: &SenderConfig,
) -> Result<std::net::UdpSocket, SenderError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source| SenderError::Socket {
            link_id: link.link_id,
            what,
            source,
        }
    };
    check_families(link)?;
    let domain = if link.local.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create a UDP socket"))?;
    // Several links may share a local address and the fixed source port, each bound to its
    // own device.
    socket
        .set_reuse_address(true)
        .map_err(err("set SO_REUSEADDR"))?;
    if let Some(dev) = &link.device {
        socket
            .bind_device(Some(dev.as_bytes()))
            .map_err(err(&format!("bind to device {dev}")))?;
    }
    if link.local.is_ipv4() {
        socket
            .set_tos_v4(config.tos as u32)
            .map_err(err("set IP_TOS"))?;
        socket
            .set_ttl_v4(PROBE_TTL.into())
            .map_err(err("set IP_TTL"))?;
    } else {
        socket
            .set_tclass_v6(config.tos as u32)
            .map_err(err("set IPV6_TCLASS"))?;
        socket
            .set_unicast_hops_v6(PROBE_TTL.into())
            .map_err(err("set IPV6_UNICAST_HOPS"))?;
    }
    let local = SocketAddr::new(link.local, config.source_port);
    socket
        .bind(&local.into())
        .map_err(err(&format!("bind to {local}")))?;
    socket
        .set_nonblocking(true)
        .map_err(err("make the socket non-blocking"))?;
    Ok(socket.into())
}

fn check_families(link: &ProbeLink) -> Result<(), SenderError> {
    if link.local.is_ipv4() != link.remote.is_ipv4() {
        return Err(SenderError::FamilyMismatch {
            link_id: link.link_id,
            local: link.local,
            remote: link.remote,
        });
    }
    Ok(())
}

/// Per-link state shared by the link's task and the handles.
#[derive(Debug, Default)]
struct LinkShared {
    sent: AtomicU64,
    send_errors: AtomicU64,
    /// The monitor saw no reply for the detection time: re-probe with backoff.
    dead: AtomicBool,
    /// Wakes a task sleeping through a long backoff when the link answers again.
    wake: Notify,
}

type LinkTable = Arc<RwLock<BTreeMap<u32, Arc<LinkShared>>>>;

/// Counters and backoff control of the running sender, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ProbeHandle {
    links: LinkTable,
}

impl ProbeHandle {
    fn get(&self, link_id: u32) -> Option<Arc<LinkShared>> {
        self.links.read().unwrap().get(&link_id).cloned()
    }

    /// Probes that failed to leave (the socket returned an error, e.g. no route).
    pub fn send_errors(&self, link_id: u32) -> Option<u64> {
        self.get(link_id)
            .map(|l| l.send_errors.load(Ordering::Relaxed))
    }
}

impl ProbeCounts for ProbeHandle {
    fn links(&self) -> Vec<u32> {
        self.links.read().unwrap().keys().copied().collect()
    }

    fn sent(&self, link_id: u32) -> Option<u64> {
        self.get(link_id).map(|l| l.sent.load(Ordering::Relaxed))
    }

    fn set_reprobe_backoff(&self, link_id: u32, dead: bool) {
        if let Some(l) = self.get(link_id) {
            let was = l.dead.swap(dead, Ordering::Relaxed);
            if was && !dead {
                l.wake.notify_one();
            }
        }
    }
}

/// The running probe tasks, one per link. Dropping it stops them.
#[derive(Debug)]
pub struct ProbeSender {
    config: SenderConfig,
    handle: ProbeHandle,
    tasks: BTreeMap<u32, JoinHandle<()>>,
    /// What each task probes, so a caller can tell a changed link (new endpoints, a rotated
    /// shared key) from the one running.
    links: BTreeMap<u32, ProbeLink>,
    /// The thread the tasks run on, if the sender has its own.
    thread: Option<ProbeThread>,
}

/// A thread of the sender's own running a single-threaded runtime: probes then leave on time
/// whatever the rest of the process is busy with (a route computation holding a worker), and
/// the thread alone can be put in the real-time class.
#[derive(Debug)]
struct ProbeThread {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl ProbeThread {
    fn start(rt_priority: u8) -> Result<ProbeThread, SenderError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name("dwcp-probes".into())
            .spawn(move || {
                if rt_priority > 0 {
                    if let Err(source) =
                        crate::prober::set_realtime_priority(i32::from(rt_priority))
                    {
                        let _ = ready_tx.send(Err(SenderError::RealtimePriority {
                            priority: rt_priority,
                            source,
                        }));
                        return;
                    }
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(SenderError::Thread(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Drives the probe tasks until the sender is dropped.
                let _ = runtime.block_on(stopped);
            })
            .map_err(SenderError::Thread)?;
        let runtime = ready_rx
            .recv()
            .map_err(|_| SenderError::Thread(io::Error::other("the thread ended at start")))??;
        Ok(ProbeThread {
            runtime,
            stop: Some(stop),
            join: Some(join),
        })
    }
}

impl Drop for ProbeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

impl ProbeSender {
    pub fn new(config: SenderConfig) -> Result<ProbeSender, SenderError> {
        if config.interval < Duration::from_millis(1) {
            return Err(SenderError::IntervalTooShort(config.interval));
        }
        Ok(ProbeSender {
            config,
            handle: ProbeHandle::default(),
            tasks: BTreeMap::new(),
            links: BTreeMap::new(),
            thread: None,
        })
    }

    /// A sender whose probes run on a thread of its own, in the `SCHED_FIFO` class at
    /// `rt_priority` (1-99; 0 = normal scheduling): what the agent uses, so that neither its
    /// other work nor a busy host delays a probe past the detection time and makes a healthy
    /// link look dead.
    pub fn on_own_thread(
        config: SenderConfig,
        rt_priority: u8,
    ) -> Result<ProbeSender, SenderError> {
        let mut sender = ProbeSender::new(config)?;
        sender.thread = Some(ProbeThread::start(rt_priority)?);
        Ok(sender)
    }

    pub fn config(&self) -> &SenderConfig {
        &self.config
    }

    pub fn handle(&self) -> ProbeHandle {
        self.handle.clone()
    }

    /// Starts probing `link` through `socket` (from [`open_probe_socket`], or bound by the
    /// caller, e.g. inside another network namespace). Without a thread of its own, must run
    /// inside a tokio runtime.
    /// A link id already probed is refused and its task keeps running.
    pub fn add_link(
        &mut self,
        link: ProbeLink,
        socket: std::net::UdpSocket,
    ) -> Result<(), SenderError> {
        check_families(&link)?;
        if self.tasks.contains_key(&link.link_id) {
            return Err(SenderError::DuplicateLink(link.link_id));
        }
        let sock_err = |what: &str, source| SenderError::Socket {
            link_id: link.link_id,
            what: what.to_string(),
            source,
        };
        socket
            .set_nonblocking(true)
            .map_err(|e| sock_err("make the socket non-blocking", e))?;
        let runtime = match &self.thread {
            Some(t) => t.runtime.clone(),
            None => tokio::runtime::Handle::current(),
        };
        // The socket registers with the runtime that will drive its task.
        let socket = {
            let _context = runtime.enter();
            tokio::net::UdpSocket::from_std(socket)
                .map_err(|e| sock_err("register the socket with tokio", e))?
        };
        let shared = Arc::new(LinkShared::default());
        self.handle
            .links
            .write()
            .unwrap()
            .insert(link.link_id, shared.clone());
        let dest = SocketAddr::new(link.remote, PROBE_PORT);
        self.links.insert(link.link_id, link.clone());
        let task = runtime.spawn(probe_loop(
            link.link_id,
            link.key,
            link.auth,
            socket,
            dest,
            self.config,
            shared,
        ));
        self.tasks.insert(link.link_id, task);
        Ok(())
    }

    /// Stops probing a link.
    pub fn remove_link(&mut self, link_id: u32) -> Result<(), SenderError> {
        let task = self
            .tasks
            .remove(&link_id)
            .ok_or(SenderError::UnknownLink(link_id))?;
        task.abort();
        self.links.remove(&link_id);
        self.handle.links.write().unwrap().remove(&link_id);
        Ok(())
    }

    /// The link `link_id` is probed as, if it is.
    pub fn link(&self, link_id: u32) -> Option<&ProbeLink> {
        self.links.get(&link_id)
    }
}

impl Drop for ProbeSender {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

async fn probe_loop(
    link_id: u32,
    key: ProbeKey,
    auth: Option<ProbeKey>,
    socket: tokio::net::UdpSocket,
    dest: SocketAddr,
    config: SenderConfig,
    shared: Arc<LinkShared>,
) {
    let mut backoff = Backoff::new(config.interval, config.backoff_cap);
    let mut seq: u32 = 0;
    let mut buf = [0u8; PROBE_LEN];
    let mut deadline = Instant::now();
    loop {
        ProbeHeader::request(&key, link_id, seq, monotonic_ns())
            .signed(auth.as_ref())
            .encode(&mut buf);
        match socket.send_to(&buf, dest).await {
            Ok(_) => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // A dead link often shows as a send error (no route, no neighbour); counting
                // the probe as sent lets the monitor see it as loss, but log only the first.
                if shared.send_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(link_id, %dest, error = %e, "probe send failed");
                }
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        seq = seq.wrapping_add(1);
        let wait = backoff.next_wait(shared.dead.load(Ordering::Relaxed));
        // Keep a steady cadence; after a stall (the task was not scheduled), start afresh.
        deadline += wait;
        let now = Instant::now();
        if deadline < now {
            deadline = now + wait;
        }
        if wait > config.interval {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shared.wake.notified() => deadline = Instant::now(),
            }
        } else {
            tokio::time::sleep_until(deadline).await;
        }
    }
}
