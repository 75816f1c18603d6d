//! The probe sender: one tokio task per underlay link sends a probe request from the link's
//! local address to the peer's on UDP [`PROBE_PORT`] every interval, with the link id, a
//! sequence number and the `CLOCK_MONOTONIC` send time. Replies never come back to us: the
//! local XDP program consumes them into `LINK_STATE`.

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

use dwcp_common::probe::{ProbeHeader, PROBE_KIND_REQUEST, PROBE_LEN, PROBE_PORT};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{monitor::ProbeCounts, monotonic_ns, Backoff};

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
    } else {
        socket
            .set_tclass_v6(config.tos as u32)
            .map_err(err("set IPV6_TCLASS"))?;
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
        let task = runtime.spawn(probe_loop(link.link_id, socket, dest, self.config, shared));
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
        self.handle.links.write().unwrap().remove(&link_id);
        Ok(())
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
        ProbeHeader {
            kind: PROBE_KIND_REQUEST,
            flags: 0,
            link_id,
            seq,
            tx_ns: monotonic_ns(),
            rx_ns: 0,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlab::{addr, veth, Netns};
    use dwcp_common::probe::PROBE_KIND_REQUEST;
    use std::net::Ipv4Addr;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn rejects_bad_input_naming_the_link() {
        let link = ProbeLink {
            link_id: 4,
            local: v4("192.0.2.1"),
            remote: "2001:db8::1".parse().unwrap(),
            device: None,
        };
        let e = open_probe_socket(&link, &SenderConfig::default()).unwrap_err();
        assert!(e.to_string().contains("link 4"), "{e}");
        let e = ProbeSender::new(SenderConfig {
            interval: Duration::from_micros(10),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, SenderError::IntervalTooShort(_)));
    }

    #[test]
    fn duplicate_link_is_refused_and_the_first_keeps_running() {
        // Inside a namespace of our own: the probes go to its loopback and nowhere else.
        let ns = Netns::new("probedup").unwrap();
        let link = ProbeLink {
            link_id: 1,
            local: v4("127.0.0.1"),
            remote: v4("127.0.0.1"),
            device: None,
        };
        let config = SenderConfig::default();
        let (s1, s2) = ns
            .run_in(|| {
                (
                    open_probe_socket(&link, &config).unwrap(),
                    open_probe_socket(&link, &config).unwrap(),
                )
            })
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut sender = ProbeSender::new(config).unwrap();
            let handle = sender.handle();
            sender.add_link(link.clone(), s1).unwrap();
            let e = sender.add_link(link.clone(), s2).unwrap_err();
            assert!(matches!(e, SenderError::DuplicateLink(1)), "{e}");
            assert_eq!(e.to_string(), "link 1 is already probed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sent = handle.sent(1).unwrap();
            assert!(sent >= 2, "first link still probing: {sent}");
            sender.remove_link(1).unwrap();
            assert_eq!(handle.sent(1), None);
            assert!(matches!(
                sender.remove_link(1),
                Err(SenderError::UnknownLink(1))
            ));
        });
    }

    /// The sender's own thread probes with no runtime in the caller at all, in the real-time
    /// class it was asked for, and stops with the sender.
    #[test]
    fn a_sender_on_its_own_thread_probes_in_the_realtime_class() {
        let ns = Netns::new("probert").unwrap();
        ns.exec(&["ip", "link", "set", "lo", "up"]).unwrap();
        let link = ProbeLink {
            link_id: 1,
            local: v4("127.0.0.1"),
            remote: v4("127.0.0.1"),
            device: None,
        };
        let config = SenderConfig {
            source_port: 41000,
            ..Default::default()
        };
        let (socket, peer) = ns
            .run_in(|| {
                let peer = std::net::UdpSocket::bind(("127.0.0.1", PROBE_PORT)).unwrap();
                peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                (open_probe_socket(&link, &config).unwrap(), peer)
            })
            .unwrap();
        let probe_threads = || -> Vec<String> {
            std::fs::read_dir("/proc/thread-self/..")
                .unwrap()
                .filter_map(|t| {
                    let dir = t.ok()?.path();
                    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                    (comm.trim() == "dwcp-probes")
                        .then(|| std::fs::read_to_string(dir.join("sched")).unwrap())
                })
                .collect()
        };
        let before = probe_threads().len();
        let mut sender = ProbeSender::on_own_thread(config, 5).unwrap();
        let handle = sender.handle();
        sender.add_link(link, socket).unwrap();
        let mut buf = [0u8; 64];
        for seq in 0..3 {
            let n = peer.recv(&mut buf).unwrap();
            let probe = ProbeHeader::decode(&buf[..n]).unwrap();
            assert_eq!((probe.link_id, probe.seq), (1, seq));
        }
        let ours = probe_threads();
        assert_eq!(ours.len(), before + 1);
        // `policy` 1 is SCHED_FIFO.
        assert!(
            ours.iter().any(|s| s
                .lines()
                .any(|l| l.split_whitespace().eq(["policy", ":", "1"]))),
            "{ours:?}"
        );
        drop(sender);
        // Joined; the kernel removes the exited thread from /proc a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while probe_threads().len() != before {
            assert!(
                std::time::Instant::now() < deadline,
                "the probe thread outlived its sender"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let sent = handle.sent(1).unwrap();
        assert!(sent >= 3);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            handle.sent(1),
            Some(sent),
            "probes after the sender was dropped"
        );
    }

    /// Two gateways joined by two underlay links (two veth pairs, addresses on each). The
    /// sender probes both; on the far side a plain UDP socket per link receives the probes and
    /// checks the wire format, the source, and that each probe left on its own link.
    #[test]
    fn probes_leave_on_their_link_with_the_wire_header() {
        let a = Netns::new("probe").unwrap();
        let b = Netns::new("probe").unwrap();
        veth(&a, "ul1", &b, "ul1").unwrap();
        veth(&a, "ul2", &b, "ul2").unwrap();
        addr(&a, "ul1", "198.51.100.1/30").unwrap();
        addr(&b, "ul1", "198.51.100.2/30").unwrap();
        addr(&a, "ul2", "198.51.100.5/30").unwrap();
        addr(&b, "ul2", "198.51.100.6/30").unwrap();
        let links = [
            ProbeLink {
                link_id: 1,
                local: v4("198.51.100.1"),
                remote: v4("198.51.100.2"),
                device: Some("ul1".into()),
            },
            ProbeLink {
                link_id: 2,
                local: v4("198.51.100.5"),
                remote: v4("198.51.100.6"),
                device: Some("ul2".into()),
            },
        ];
        let config = SenderConfig::default();
        let sockets: Vec<std::net::UdpSocket> = a
            .run_in(|| {
                links
                    .iter()
                    .map(|l| open_probe_socket(l, &config).unwrap())
                    .collect()
            })
            .unwrap();
        // Receivers: bound to the device so a probe arriving on the other link is not seen.
        let receivers: Vec<std::net::UdpSocket> = b
            .run_in(|| {
                ["ul1", "ul2"]
                    .iter()
                    .map(|dev| {
                        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
                        s.set_reuse_address(true).unwrap();
                        s.bind_device(Some(dev.as_bytes())).unwrap();
                        let any: SocketAddr = (Ipv4Addr::UNSPECIFIED, PROBE_PORT).into();
                        s.bind(&any.into()).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        s.into()
                    })
                    .collect()
            })
            .unwrap();

        let sender_links = links.clone();
        let sender_thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut sender = ProbeSender::new(config).unwrap();
                for (l, s) in sender_links.into_iter().zip(sockets) {
                    sender.add_link(l, s).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                sender.handle()
            })
        });

        for (link, rx) in links.iter().zip(&receivers) {
            let mut last: Option<ProbeHeader> = None;
            for _ in 0..10 {
                let mut buf = [0u8; 128];
                let (n, from) = rx.recv_from(&mut buf).unwrap();
                assert_eq!(n, PROBE_LEN, "probe is exactly the header");
                assert_eq!(from, SocketAddr::new(link.local, PROBE_PORT));
                let h = ProbeHeader::decode(&buf[..n]).unwrap();
                assert_eq!(h.kind, PROBE_KIND_REQUEST);
                assert_eq!(h.link_id, link.link_id, "probe arrived on another link");
                assert_eq!(h.rx_ns, 0);
                if let Some(prev) = last {
                    assert_eq!(h.seq, prev.seq + 1);
                    assert!(h.tx_ns > prev.tx_ns);
                }
                last = Some(h);
            }
            let first_seq = last.unwrap().seq - 9;
            assert_eq!(first_seq, 0, "no probe lost on a clean veth");
        }
        let handle = sender_thread.join().unwrap();
        assert!(handle.sent(1).unwrap() >= 10);
        assert_eq!(handle.send_errors(1), Some(0));
    }

    /// Probes received on `rx` until `for_how_long` has passed.
    fn count_for(rx: &std::net::UdpSocket, for_how_long: Duration) -> usize {
        let end = std::time::Instant::now() + for_how_long;
        let mut n = 0;
        let mut buf = [0u8; 128];
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            rx.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            if rx.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// The backoff on the real sender: a dead link gets a handful of probes a second instead
    /// of a hundred, and the normal rate is back as soon as the monitor says it answers.
    #[test]
    fn dead_link_is_reprobed_with_backoff_and_normally_once_it_answers() {
        let a = Netns::new("probebo").unwrap();
        let b = Netns::new("probebo").unwrap();
        veth(&a, "ul1", &b, "ul1").unwrap();
        addr(&a, "ul1", "198.51.100.1/30").unwrap();
        addr(&b, "ul1", "198.51.100.2/30").unwrap();
        let link = ProbeLink {
            link_id: 1,
            local: v4("198.51.100.1"),
            remote: v4("198.51.100.2"),
            device: Some("ul1".into()),
        };
        let config = SenderConfig {
            backoff_cap: Duration::from_millis(400),
            ..Default::default()
        };
        let socket = a
            .run_in(|| open_probe_socket(&link, &config).unwrap())
            .unwrap();
        let rx = b
            .run_in(|| std::net::UdpSocket::bind(("198.51.100.2", PROBE_PORT)).unwrap())
            .unwrap();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sender_thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut sender = ProbeSender::new(config).unwrap();
                sender.add_link(link, socket).unwrap();
                handle_tx.send(sender.handle()).unwrap();
                let _ = stop_rx.await;
            })
        });
        let handle = handle_rx.recv().unwrap();
        let normal = count_for(&rx, Duration::from_secs(1));
        handle.set_reprobe_backoff(1, true);
        // Let the wait grow to the cap: 20 + 40 + 80 + 160 + 320 ms.
        count_for(&rx, Duration::from_millis(700));
        let backed_off = count_for(&rx, Duration::from_secs(2));
        handle.set_reprobe_backoff(1, false);
        let recovered = count_for(&rx, Duration::from_secs(1));
        stop_tx.send(()).unwrap();
        sender_thread.join().unwrap();
        // Rates compared within this run, not against absolute figures: a loaded machine wakes
        // the sender late, which lowers every rate alike. At the 400 ms cap the backed-off rate
        // is at most 2.5/s (late wake-ups only lower it); normal and recovered are ~100/s.
        let backed_off_per_s = backed_off as f64 / 2.0;
        assert!(backed_off <= 7, "backed off: {backed_off} probes in 2 s");
        assert!(
            normal as f64 >= 4.0 * backed_off_per_s.max(1.0),
            "normal {normal}/s vs backed off {backed_off_per_s}/s"
        );
        assert!(
            recovered as f64 >= 4.0 * backed_off_per_s.max(1.0),
            "recovered {recovered}/s vs backed off {backed_off_per_s}/s"
        );
    }
}
