//! The link-state task: this gateway's side of the flooding protocol
//! (`dwcp_control::link_state`) on the network. The pure [`Flooder`] decides everything; this
//! task feeds it and carries out what it answers.
//!
//! - One UDP socket per monitored local link, bound to the link's interface and local address
//!   and `[link_state] port`: records travel over the link itself, to the same port of its
//!   `peer_ip`. A datagram from any other address is dropped and counted (the underlay is
//!   hostile), and so is one that does not decode. Records go out with TTL 255 and, from a
//!   peer that is a neighbour (no `via_ip` router between), are taken only with TTL 255 (GTSM,
//!   RFC 5082, as the probes): one sent from beyond the link's segment counts as foreign.
//! - The link monitor's views (every poll) say what the probes see. A link whose probes answer
//!   is a neighbour (`neighbour_up`) and one whose probes stopped is not (`neighbour_down`):
//!   no datagram crosses a link the probes cannot. Its health (up, degraded, down) and figures
//!   (RTT, jitter, loss) are what we observe of it (`observe`). A link still `Unknown` (its
//!   monitoring has just begun) is neither: a start is no failure to announce. Unprobed links
//!   (WireGuard) are no adjacency and go unreported.
//! - At each `Wake`, `tick`; every `Send` goes out on its link's socket.
//! - When the database changed: the LSDB view is published (a `watch` the daemon's loop puts
//!   into the snapshot), then, if the links it reports changed, the state owner gets
//!   `Input::LinkStateView` (published first, so the snapshot that follows the input shows
//!   the database that made it).
//!
//! A reload that changes what the task runs with ([`Setup`]: name, topology digest, links,
//! `[link_state]`) starts it over: new sockets, a new flooder with a new incarnation, so the
//! neighbours send it their whole database again.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use dwcp_common::probe::{ProbeKey, PROBE_TTL};
use dwcp_control::{
    config::AgentConfig,
    input::{Input, Now},
    link_state::{
        authentic, topology_digest, Action, Figures, Flooder, LinkStateConfig, Message,
        Observation, Origin, ReportedLink, TopologyDigest, WireError,
    },
    liveness::{LinkStatus, LinkView},
    topology::{LinkId, RoutingHealth},
    view::{AgentSnapshot, DatagramsDropped, LsdbView},
};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::{
    io::Interest,
    net::UdpSocket,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, error, info, warn};

use super::{now, tasks::LinkViews};

/// Largest datagram read: a message is at most 1,400 bytes and its trailer.
const RECEIVE_BUFFER: usize = 2048;

#[derive(Debug, Error)]
pub enum LinkStateSocketError {
    #[error("socket on {at}: {what}: {source}")]
    Socket {
        at: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the task runs with: everything of the configuration it uses. A change starts it over.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Setup {
    pub me: Origin,
    pub digest: TopologyDigest,
    pub links: Vec<Adjacency>,
    pub port: u16,
    pub timers: LinkStateConfig,
    /// IPv4 TOS of the datagrams: the probes' (network control).
    pub tos: u8,
}

/// A monitored local link, over which records go to its far end (`peer`).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Adjacency {
    pub link: LinkId,
    pub interface: String,
    pub local: Ipv4Addr,
    pub peer: Ipv4Addr,
    /// The lowest TTL a record from `peer` may arrive with: [`PROBE_TTL`] when the peer is a
    /// neighbour, 0 across routers (as the probes' `probe_min_ttl`).
    pub min_ttl: u8,
    /// The link's shared key (`auth_key_file`): messages carry a MAC under it both ways.
    pub auth: Option<ProbeKey>,
}

impl Setup {
    /// `None` when link state is off (or the configuration cannot run it, which its check
    /// refuses).
    pub(super) fn of(config: &AgentConfig) -> Option<Setup> {
        let s = &config.link_state;
        if !s.enabled {
            return None;
        }
        Some(Setup {
            me: Origin::new(&config.gateway).ok()?,
            digest: topology_digest(&config.topology),
            links: config
                .local_links
                .iter()
                .filter(|l| l.monitored)
                .map(|l| Adjacency {
                    link: LinkId(l.link_id),
                    interface: l.interface.clone(),
                    local: l.local_ip,
                    peer: l.peer_ip,
                    min_ttl: if l.via_ip == l.peer_ip { PROBE_TTL } else { 0 },
                    auth: l.auth_key,
                })
                .collect(),
            port: s.port,
            timers: s.timers(),
            tos: config.sender.tos,
        })
    }
}

/// The daemon's end of the task.
pub(super) struct LinkStateHandle {
    config: watch::Sender<Arc<AgentConfig>>,
    lsdb: watch::Receiver<Option<Arc<LsdbView>>>,
}

impl LinkStateHandle {
    /// The configuration in force changed (a reload).
    pub(super) fn sync(&self, config: &Arc<AgentConfig>) {
        self.config.send_replace(config.clone());
    }

    /// The database as the task last published it (`None`: link state is off).
    pub(super) fn lsdb(&self) -> Option<Arc<LsdbView>> {
        self.lsdb.borrow().clone()
    }
}

/// The task, before it runs.
pub(super) struct LinkStateTask {
    config: watch::Receiver<Arc<AgentConfig>>,
    views: LinkViews,
    /// The state owner's snapshot: what our links carry (their utilisation), measured from
    /// the fast path's counters.
    snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    inputs: mpsc::Sender<Input>,
    lsdb: watch::Sender<Option<Arc<LsdbView>>>,
}

/// What woke the task.
enum Event {
    Config,
    Views,
    Datagram(Datagram),
    Wake,
    Stop,
}

impl LinkStateTask {
    /// The task for `config`, following the link monitor's `views`, and its daemon's end.
    pub(super) fn new(
        config: Arc<AgentConfig>,
        views: LinkViews,
        snapshot: watch::Receiver<Arc<AgentSnapshot>>,
        inputs: mpsc::Sender<Input>,
    ) -> (LinkStateTask, LinkStateHandle) {
        let (config_tx, config_rx) = watch::channel(config);
        let (lsdb_tx, lsdb_rx) = watch::channel(None);
        let task = LinkStateTask {
            config: config_rx,
            views,
            snapshot,
            inputs,
            lsdb: lsdb_tx,
        };
        let handle = LinkStateHandle {
            config: config_tx,
            lsdb: lsdb_rx,
        };
        (task, handle)
    }

    /// Runs until the daemon drops its end.
    pub(super) async fn run(mut self) {
        let mut setup = Setup::of(&self.config.borrow_and_update());
        let mut running = setup.clone().map(Running::start);
        let mut just_woke = false;
        loop {
            let wake = running.as_ref().and_then(Running::wake_in);
            // A wake due now goes first: in the select, its new sleep waits for the timer
            // while the views, which change every few milliseconds, win again and again, and
            // a down observed could be over before it was announced (seen in the damping
            // test). Every other event at most, so that a wake due again at once does not
            // starve the rest.
            let event = if wake == Some(Duration::ZERO) && !just_woke {
                Event::Wake
            } else {
                let datagram = async {
                    match running.as_mut() {
                        Some(r) => r.received.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    c = self.config.changed() => if c.is_ok() { Event::Config } else { Event::Stop },
                    v = self.views.changed() => if v.is_ok() { Event::Views } else { Event::Stop },
                    Some(d) = datagram => Event::Datagram(d),
                    _ = tokio::time::sleep(wake.unwrap_or_default()), if wake.is_some() => Event::Wake,
                }
            };
            just_woke = matches!(event, Event::Wake);
            let now = now();
            match (event, running.as_mut()) {
                (Event::Stop, _) => return,
                (Event::Config, _) => {
                    let new = Setup::of(&self.config.borrow_and_update());
                    if new == setup {
                        continue;
                    }
                    info!("link state: its configuration changed; starting over");
                    if let Some(old) = running.take() {
                        old.stop().await;
                    }
                    setup = new;
                    running = setup.clone().map(Running::start);
                    if running.is_none() {
                        self.lsdb.send_replace(None);
                        self.send(Input::LinkStateView { links: Vec::new() }).await;
                    }
                }
                (Event::Views, Some(r)) => {
                    let views = self.views.borrow_and_update().clone();
                    r.follow(&views, &self.utilisation(), now);
                }
                (Event::Datagram(d), Some(r)) => r.receive(d, now),
                (Event::Wake, Some(r)) => {
                    let actions = r.flooder.tick(now.mono_ns);
                    r.carry_out(actions);
                }
                _ => {}
            }
            let Some(r) = running.as_mut() else {
                continue;
            };
            if r.shown {
                continue;
            }
            r.shown = true;
            self.lsdb.send_replace(Some(Arc::new(r.view(now))));
            if let Some(links) = r.links_if_changed() {
                self.send(Input::LinkStateView { links }).await;
            }
        }
    }

    /// Our links' utilisation as the state owner last measured it, by link id: read when
    /// the probes' views change (several times a second), which is as often as the
    /// originator may announce new figures anyway.
    fn utilisation(&self) -> BTreeMap<u32, f64> {
        self.snapshot
            .borrow()
            .links
            .iter()
            .filter_map(|l| Some((l.id, l.utilisation_ratio?)))
            .collect()
    }

    async fn send(&self, input: Input) {
        // A closed channel means the daemon is stopping.
        let _ = self.inputs.send(input).await;
    }
}

/// What a socket's reader hands the task.
#[derive(Debug)]
enum Datagram {
    Message(LinkId, Message),
    Malformed(LinkId, WireError),
    /// From an address that is none of the socket's links' peers, or from a neighbour's
    /// address with a TTL below 255 (sent from beyond the link's segment).
    Foreign(SocketAddr),
    /// From the peer of a link with a shared key, without a valid MAC under it.
    Unauthenticated(LinkId),
}

/// A flooder at work: its sockets, their readers, and what the task keeps between events.
struct Running {
    flooder: Flooder,
    /// Each link's socket (shared by the links with the same interface and local address)
    /// and its peer, and the link's shared key if it has one (the messages' MAC).
    links: BTreeMap<LinkId, (Arc<UdpSocket>, SocketAddr, Option<ProbeKey>)>,
    readers: Vec<JoinHandle<()>>,
    received: mpsc::Receiver<Datagram>,
    /// What we last told the flooder of each link.
    observed: BTreeMap<LinkId, Observation>,
    /// When the flooder wants its `tick` (monotonic ns).
    wake_at: Option<u64>,
    foreign: u64,
    malformed: u64,
    unauthenticated: u64,
    /// Whether the published view is current (false: something it shows changed).
    shown: bool,
    /// The links last given to the state owner.
    reported: Option<Vec<ReportedLink>>,
    /// Gateways known to run another topology (logged when they change).
    other_topologies: BTreeSet<Origin>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

impl Running {
    /// Binds a socket per interface and local address of the links (a socket that fails is
    /// logged, and its links are left without an adjacency) and starts the flooder with an
    /// incarnation of this instant.
    fn start(setup: Setup) -> Running {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let link_ids: Vec<LinkId> = setup.links.iter().map(|a| a.link).collect();
        let flooder = Flooder::new(
            setup.timers,
            setup.me.clone(),
            setup.digest,
            incarnation,
            &link_ids,
        )
        .expect("the configuration check refuses timers and link counts a flooder refuses");
        let (tx, received) = mpsc::channel(1024);
        let mut links = BTreeMap::new();
        let mut readers = Vec::new();
        let mut endpoints: BTreeMap<(&str, Ipv4Addr), Vec<&Adjacency>> = BTreeMap::new();
        for a in &setup.links {
            endpoints
                .entry((a.interface.as_str(), a.local))
                .or_default()
                .push(a);
        }
        for ((interface, local), adjacencies) in endpoints {
            let socket = match bind(interface, local, setup.port, setup.tos) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    error!("link state: {e}; no records over its links");
                    continue;
                }
            };
            let peers: BTreeMap<Ipv4Addr, (LinkId, u8, Option<ProbeKey>)> = adjacencies
                .iter()
                .map(|a| (a.peer, (a.link, a.min_ttl, a.auth)))
                .collect();
            readers.push(tokio::spawn(read(socket.clone(), peers, tx.clone())));
            for a in adjacencies {
                let peer = SocketAddr::V4(SocketAddrV4::new(a.peer, setup.port));
                links.insert(a.link, (socket.clone(), peer, a.auth));
            }
        }
        info!(
            origin = %setup.me,
            digest = %setup.digest,
            port = setup.port,
            links = links.len(),
            "link state: flooding"
        );
        Running {
            flooder,
            links,
            readers,
            received,
            observed: BTreeMap::new(),
            wake_at: None,
            foreign: 0,
            unauthenticated: 0,
            malformed: 0,
            shown: false,
            reported: None,
            other_topologies: BTreeSet::new(),
        }
    }

    /// Stops the readers and waits until they are gone, so their sockets are closed (a new
    /// start binds the same addresses).
    async fn stop(mut self) {
        for r in std::mem::take(&mut self.readers) {
            r.abort();
            let _ = r.await;
        }
    }

    fn wake_in(&self) -> Option<Duration> {
        let at = self.wake_at?;
        Some(Duration::from_nanos(
            at.saturating_sub(crate::probe::monotonic_ns()),
        ))
    }

    /// Follows the probes of our links: neighbours up and down, what we observe of each.
    fn follow(
        &mut self,
        views: &BTreeMap<u32, LinkView>,
        utilisation: &BTreeMap<u32, f64>,
        now: Now,
    ) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            let observed = views
                .get(&link.0)
                .and_then(|v| observation(v, utilisation.get(&link.0).copied()));
            let Some(observation) = observed else {
                continue;
            };
            let before = self.observed.insert(link, observation);
            if before == Some(observation) {
                continue;
            }
            let actions = self.flooder.observe(link, observation, now.mono_ns);
            self.carry_out(actions);
            let up = |o: Observation| o.health != RoutingHealth::Down;
            match (before.map(up), up(observation)) {
                (Some(true), true) | (Some(false) | None, false) => {}
                (_, true) => {
                    let actions = self.flooder.neighbour_up(link, now.mono_ns);
                    self.carry_out(actions);
                }
                (Some(true), false) => {
                    self.flooder.neighbour_down(link);
                    self.shown = false;
                }
            }
        }
    }

    /// One datagram from a socket's reader.
    fn receive(&mut self, datagram: Datagram, now: Now) {
        self.shown = false;
        match datagram {
            Datagram::Message(link, message) => {
                let actions = self.flooder.handle(link, message, now.mono_ns);
                self.carry_out(actions);
            }
            Datagram::Malformed(link, error) => {
                self.malformed += 1;
                debug!(%link, %error, "link state: malformed datagram dropped");
            }
            Datagram::Foreign(from) => {
                self.foreign += 1;
                debug!(%from, "link state: datagram from an address that is no peer dropped");
            }
            Datagram::Unauthenticated(link) => {
                self.unauthenticated += 1;
                debug!(%link, "link state: datagram without a valid MAC dropped");
            }
        }
    }

    /// Sends what the flooder sends and keeps its next wake.
    fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { link, message } => {
                    self.shown = false;
                    let Some((socket, peer, key)) = self.links.get(&link) else {
                        continue;
                    };
                    // Lost sends are the protocol's to repair (retransmission); a full socket
                    // buffer must not hold the task back.
                    if let Err(e) = socket.try_send_to(&message.encode_signed(key.as_ref()), *peer)
                    {
                        debug!(%link, error = %e, "link state: send failed");
                    }
                }
                Action::DatabaseChanged => {
                    self.shown = false;
                    self.log_other_topologies();
                }
                Action::Wake { at_ns } => self.wake_at = Some(at_ns),
            }
        }
    }

    /// The database's links for the state owner, if they changed since it was last given them.
    fn links_if_changed(&mut self) -> Option<Vec<ReportedLink>> {
        let links = self.flooder.database().reported_links();
        if self.reported.as_ref() == Some(&links) {
            return None;
        }
        self.reported = Some(links.clone());
        Some(links)
    }

    fn view(&self, now: Now) -> LsdbView {
        LsdbView::new(
            &self.flooder,
            DatagramsDropped {
                foreign: self.foreign,
                malformed: self.malformed,
                unauthenticated: self.unauthenticated,
            },
            now,
        )
    }

    /// Says so when a gateway starts or stops running another topology file than ours: its
    /// records are then shown, not applied.
    fn log_other_topologies(&mut self) {
        let db = self.flooder.database();
        let now: BTreeSet<Origin> = db.foreign().map(|r| r.origin().clone()).collect();
        for r in db.foreign() {
            if !self.other_topologies.contains(r.origin()) {
                warn!(
                    gateway = %r.origin(),
                    digest = %r.digest(),
                    ours = %db.digest(),
                    "link state: gateway {} runs another topology than ours; its records are not applied",
                    r.origin()
                );
            }
        }
        for gone in self.other_topologies.difference(&now) {
            info!(gateway = %gone, "link state: gateway {gone} no longer runs another topology");
        }
        self.other_topologies = now;
    }
}

/// What the probes say of a link, and the share of its capacity in use, as the flooder
/// takes it; `None` while the probes cannot tell yet.
fn observation(v: &LinkView, utilisation: Option<f64>) -> Option<Observation> {
    let health = match (v.status, &v.degraded) {
        (LinkStatus::Unknown, _) => return None,
        (LinkStatus::Down, _) => RoutingHealth::Down,
        (LinkStatus::Up, Some(_)) => RoutingHealth::Degraded,
        (LinkStatus::Up, None) => RoutingHealth::Up,
    };
    let figures = Figures::quantise(
        (v.srtt_ns > 0).then(|| v.srtt_ns as f64 / 1e6),
        (v.replies > 1).then(|| v.jitter_ns as f64 / 1e6),
        v.loss,
        utilisation,
    );
    Some(Observation { health, figures })
}

/// A socket on `interface` and `local` (which need not be there yet: `IP_FREEBIND`), sending
/// as network control.
fn bind(
    interface: &str,
    local: Ipv4Addr,
    port: u16,
    tos: u8,
) -> Result<UdpSocket, LinkStateSocketError> {
    let err = |what| {
        let at = format!("{interface} {local}:{port}");
        move |source| LinkStateSocketError::Socket { at, what, source }
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create a UDP socket"))?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(err("bind to the interface"))?;
    socket
        .set_freebind_v4(true)
        .map_err(err("set IP_FREEBIND"))?;
    socket
        .set_tos_v4(u32::from(tos))
        .map_err(err("set IP_TOS"))?;
    socket
        .set_ttl_v4(PROBE_TTL.into())
        .map_err(err("set IP_TTL"))?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt(2) with a c_int of the size passed, on the socket we own.
    if unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVTTL,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(err("set IP_RECVTTL")(std::io::Error::last_os_error()));
    }
    socket
        .set_nonblocking(true)
        .map_err(err("set O_NONBLOCK"))?;
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(local, port)).into())
        .map_err(err("bind the address and port"))?;
    UdpSocket::from_std(socket.into()).map_err(err("register with the runtime"))
}

/// Reads `socket` until the task drops its end: datagrams from the links' `peers` (with at
/// least their `min_ttl`) decoded, others marked.
async fn read(
    socket: Arc<UdpSocket>,
    peers: BTreeMap<Ipv4Addr, (LinkId, u8, Option<ProbeKey>)>,
    tx: mpsc::Sender<Datagram>,
) {
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    loop {
        let received = socket
            .async_io(Interest::READABLE, || recv_with_ttl(&socket, &mut buf))
            .await;
        let (len, from, ttl) = match received {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "link state: receive failed");
                continue;
            }
        };
        let link = match peers.get(from.ip()) {
            Some(&(link, min_ttl, key)) if ttl >= min_ttl => Some((link, key)),
            _ => None,
        };
        let from = SocketAddr::V4(from);
        let datagram = match link {
            None => Datagram::Foreign(from),
            Some((link, Some(key))) if !authentic(&buf[..len], &key) => {
                Datagram::Unauthenticated(link)
            }
            Some((link, _)) => match Message::decode(&buf[..len]) {
                Ok(m) => Datagram::Message(link, m),
                Err(e) => Datagram::Malformed(link, e),
            },
        };
        if tx.send(datagram).await.is_err() {
            return;
        }
    }
}

/// One datagram: its length, source and the TTL it arrived with (`IP_RECVTTL`; 0 if the
/// kernel gave none, which no neighbour's record passes).
fn recv_with_ttl(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddrV4, u8)> {
    // SAFETY: all-zero sockaddr_in, cmsg buffer and msghdr are valid; the msghdr points at
    // buffers that outlive the call, with their lengths.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg(2) on our socket with the msghdr built above.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ttl = 0u8;
    // SAFETY: the CMSG_* walk over the control buffer recvmsg filled in, bounded by
    // msg_controllen; IP_TTL's data is an int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TTL {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                ttl = u8::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    );
    Ok((n as usize, from, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: LinkId = LinkId(1);

    /// A gateway on loopback address `me` (127.0.0.x), with one link to `peer`.
    fn gateway(name: &str, me: Ipv4Addr, peer: Ipv4Addr, port: u16) -> Running {
        keyed_gateway(name, me, peer, port, None)
    }

    /// [`gateway`] with the link's shared key `auth`.
    fn keyed_gateway(
        name: &str,
        me: Ipv4Addr,
        peer: Ipv4Addr,
        port: u16,
        auth: Option<ProbeKey>,
    ) -> Running {
        Running::start(Setup {
            me: Origin::new(name).unwrap(),
            digest: TopologyDigest(7),
            links: vec![Adjacency {
                link: LINK,
                interface: "lo".into(),
                local: me,
                peer,
                min_ttl: PROBE_TTL,
                auth,
            }],
            port,
            timers: LinkStateConfig::default(),
            tos: 0,
        })
    }

    fn view(status: LinkStatus) -> BTreeMap<u32, LinkView> {
        let v = LinkView {
            link_id: LINK.0,
            status,
            degraded: None,
            loss: Some(0.0),
            srtt_ns: 80_000_000,
            jitter_ns: 100_000,
            sent: 10,
            replies: 10,
            reprobe_backoff: false,
        };
        BTreeMap::from([(LINK.0, v)])
    }

    /// Hands `r` the datagrams that arrive within `wait`, with their consequences (ticks
    /// included), until `done` holds.
    async fn pump(gateways: &mut [&mut Running], done: impl Fn(&[&mut Running]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(gateways) {
            assert!(tokio::time::Instant::now() < deadline, "not done in 10 s");
            for r in gateways.iter_mut() {
                let now = now();
                let due = r.wake_at.is_some_and(|t| t <= now.mono_ns);
                if due {
                    let actions = r.flooder.tick(now.mono_ns);
                    r.carry_out(actions);
                }
                if let Ok(d) =
                    tokio::time::timeout(Duration::from_millis(20), r.received.recv()).await
                {
                    r.receive(d.expect("reader alive"), now);
                }
            }
        }
    }

    fn origins(r: &Running) -> Vec<String> {
        r.flooder
            .database()
            .records()
            .map(|r| r.origin().to_string())
            .collect()
    }

    /// Two gateways whose link has a shared key exchange records signed with it; a record
    /// from the peer's address without the MAC, or signed with another key, is dropped and
    /// counted before it is decoded.
    #[tokio::test]
    async fn on_a_keyed_link_only_records_with_its_mac_count() {
        let port = 40_000 + (std::process::id() % 20_000) as u16;
        let (ip_a, ip_b) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
        let key = ProbeKey { k0: 11, k1: 12 };
        let mut a = keyed_gateway("gw-a", ip_a, ip_b, port, Some(key));
        let mut b = keyed_gateway("gw-b", ip_b, ip_a, port, Some(key));
        let none = BTreeMap::new();
        a.follow(&view(LinkStatus::Up), &none, now());
        b.follow(&view(LinkStatus::Up), &none, now());
        pump(&mut [&mut a, &mut b], |g| {
            g.iter()
                .all(|r| origins(r) == ["gw-a", "gw-b"] && r.flooder.unacknowledged() == 0)
        })
        .await;
        assert_eq!((a.unauthenticated, b.unauthenticated), (0, 0));

        // A well-formed update of a third gateway from the peer's address, unsigned and
        // signed with another key: neither gets into a's database.
        let mut c = gateway("gw-c", Ipv4Addr::new(127, 0, 0, 3), ip_a, port + 1);
        c.follow(&view(LinkStatus::Up), &none, now());
        let update = Message::updates(
            1,
            vec![dwcp_control::link_state::Advert {
                lifetime_ms: 60_000,
                record: c
                    .flooder
                    .database()
                    .get(&Origin::new("gw-c").unwrap())
                    .unwrap()
                    .clone(),
            }],
        )
        .remove(0);
        let from_peer = std::net::UdpSocket::bind((ip_b, 0)).unwrap();
        from_peer.set_ttl(PROBE_TTL.into()).unwrap();
        for bytes in [
            update.encode(),
            update.encode_signed(Some(&ProbeKey { k0: 11, k1: 13 })),
        ] {
            from_peer.send_to(&bytes, (ip_a, port)).unwrap();
        }
        pump(&mut [&mut a], |g| g[0].unauthenticated == 2).await;
        let shown = a.view(now());
        assert_eq!(shown.datagrams_unauthenticated, 2);
        assert_eq!(shown.datagrams_malformed, 0);
        assert_eq!(origins(&a), ["gw-a", "gw-b"]);
        // The same update signed with the link's key is taken.
        from_peer
            .send_to(&update.encode_signed(Some(&key)), (ip_a, port))
            .unwrap();
        pump(&mut [&mut a], |g| origins(g[0]).len() == 3).await;
    }

    /// Two gateways over loopback: once the probes say the link is up, each has the other's
    /// record; a datagram from an address that is no peer is dropped and counted, one from
    /// the peer's address that does not decode too, and one from the peer's address with TTL
    /// 254 counts as foreign.
    #[tokio::test]
    async fn records_cross_the_link_and_strangers_are_dropped() {
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let (ip_a, ip_b) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
        let mut a = gateway("gw-a", ip_a, ip_b, port);
        let mut b = gateway("gw-b", ip_b, ip_a, port);
        // Monitoring just began: nothing to say yet.
        let none = BTreeMap::new();
        a.follow(&view(LinkStatus::Unknown), &none, now());
        assert!(a.flooder.database().is_empty());
        a.follow(&view(LinkStatus::Up), &none, now());
        // b's end carries 42 % of the link's capacity: its record says so.
        b.follow(
            &view(LinkStatus::Up),
            &BTreeMap::from([(LINK.0, 0.42)]),
            now(),
        );
        pump(&mut [&mut a, &mut b], |g| {
            g.iter()
                .all(|r| origins(r) == ["gw-a", "gw-b"] && r.flooder.unacknowledged() == 0)
        })
        .await;
        let links = b.links_if_changed().expect("new to the state owner");
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].health, RoutingHealth::Up);
        assert_eq!(links[0].figures.rtt_us, Some(80_000));
        assert_eq!(links[0].figures.utilisation, Some(4_200));
        assert_eq!(b.links_if_changed(), None, "given once");

        let stranger = std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 3), 0)).unwrap();
        stranger.send_to(b"hello", (ip_a, port)).unwrap();
        let from_peer = std::net::UdpSocket::bind((ip_b, 0)).unwrap();
        from_peer.set_ttl(PROBE_TTL.into()).unwrap();
        from_peer.send_to(b"\x01\x09", (ip_a, port)).unwrap();
        // The same from the peer's address but beyond the segment (a router took a hop off
        // the TTL): foreign, never decoded.
        let routed = std::net::UdpSocket::bind((ip_b, 0)).unwrap();
        routed.set_ttl((PROBE_TTL - 1).into()).unwrap();
        routed.send_to(b"\x01\x09", (ip_a, port)).unwrap();
        pump(&mut [&mut a], |g| g[0].foreign == 2 && g[0].malformed == 1).await;
        let shown = a.view(now());
        assert_eq!(shown.records.len(), 2);
        assert_eq!((shown.datagrams_foreign, shown.datagrams_malformed), (2, 1));
        assert_eq!(shown.neighbours, [1]);

        // The probes stop: no neighbour any more, and our record says the link is down.
        a.follow(&view(LinkStatus::Down), &none, now());
        pump(&mut [&mut a], |g| {
            let me = Origin::new("gw-a").unwrap();
            let ours = g[0].flooder.database().get(&me).cloned();
            ours.is_some_and(|r| r.links()[0].health == RoutingHealth::Down)
        })
        .await;
        assert!(a.view(now()).neighbours.is_empty());
        a.stop().await;
        b.stop().await;
    }
}
