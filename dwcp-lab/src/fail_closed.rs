//! Does a WireGuard hand-off fail closed? A lab where a packet marked for a WireGuard link
//! would leave in clear text if policy routing fell through to the main table, and a capture
//! of the underlay that counts the packets that did.
//!
//! ```text
//!   h1 ──eth0/lan── A ══ wg (wireguard-go) ══ wg ── B ──lan/eth0── h2
//!   10.1.0.2/24      └─ua 192.0.2.1/30 ── ub 192.0.2.2/30─┘       10.2.0.2/24
//! ```
//!
//! A marks H1's packets to 10.2.0.0/24 in prerouting (nftables, standing in for the fast
//! path's tc program: what matters here is what policy routing does with a marked packet, and
//! `e2e_wireguard` covers where the mark comes from) and hands them to WireGuard through the
//! tunnel manager's hand-off (`fwmark lookup <table>`). A's main table has a default route out
//! of the underlay, as a gateway's has towards the internet: a marked packet that falls through
//! to it leaves on `ua` in clear text and still reaches H2 through B.
//!
//! A [`Teardown`] breaks the tunnel under a UDP stream H1 → H2 while [`UnderlayCapture`]
//! counts, on A's underlay port, the stream's packets seen unencrypted.
//!
//! A packet marked after the teardown is either dropped by the table's unreachable default or,
//! if the hand-off falls through, counted here in clear text (and received by H2).
//!
//! Every namespace, wireguard-go daemon and key file is removed on drop, also on failure.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use dwcp_tunnels::{
    spec::{Underlay, WireGuardPeerSpec, WireGuardSpec},
    Handoff, ManagerConfig, NetnsTarget, TunnelError, TunnelKind, TunnelManager, TunnelSpec,
    WireGuardImpl,
};
use thiserror::Error;

use crate::netlab::{self, NetlabError, Netns, UdpStream};

#[derive(Debug, Error)]
pub enum FailClosedError {
    #[error(transparent)]
    Netlab(#[from] NetlabError),
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
}

pub type Result<T, E = FailClosedError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FailClosedError {
    let what = what.into();
    move |source| FailClosedError::Io { what, source }
}

pub const H2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const A_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The LANs' networks: an IPv4 packet from or to one of them on the underlay is clear text.
const LANS: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(10, 1, 0, 0), 24),
    (Ipv4Addr::new(10, 2, 0, 0), 24),
];
const WG_PORTS: [u16; 2] = [51820, 51821];
/// The hand-off of A's tunnel.
pub const HANDOFF: Handoff = Handoff {
    fwmark: 0x6477_0001,
    table: 20_001,
    priority: 1000,
};
/// A's nftables table that marks H1's packets to H2's network.
const MARK_TABLE: &str = "dwcp_lab_mark";
/// Generous: the machine is shared with builds and benchmarks.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

/// How a trial breaks A's end of the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// `ip link del` of the WireGuard device (wireguard-go exits with it).
    DeleteDevice,
    /// SIGKILL to A's wireguard-go: its TUN device disappears with the process.
    KillDaemon,
    /// `ip link set down`: the kernel flushes the device's routes, the table's included.
    DeviceDown,
    /// The table's route through the device deleted, the device left as it is.
    DeleteRoute,
}

impl Teardown {
    pub const ALL: [Teardown; 4] = [
        Teardown::DeleteDevice,
        Teardown::KillDaemon,
        Teardown::DeviceDown,
        Teardown::DeleteRoute,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Teardown::DeleteDevice => "device deleted",
            Teardown::KillDaemon => "wireguard-go killed",
            Teardown::DeviceDown => "device down",
            Teardown::DeleteRoute => "table route deleted",
        }
    }
}

/// What one trial saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrialReport {
    /// Datagrams H1 sent: before and after the teardown.
    pub sent: u64,
    /// Of those, received by H2.
    pub received: u64,
    /// WireGuard datagrams on A's underlay port before the teardown: the stream was encrypted
    /// and the capture saw the port.
    pub encrypted_before: u64,
    /// Packets from or to a LAN seen unencrypted on A's underlay port.
    pub cleartext: u64,
    /// Packets A marked for the tunnel after the teardown: what policy routing had to keep
    /// off the underlay.
    pub marked_after: u64,
}

/// Counts the frames on one interface (AF_PACKET, both directions) from a thread in its
/// namespace: IPv4 packets from or to a LAN (clear text) and WireGuard datagrams.
pub struct UnderlayCapture {
    stop: Arc<AtomicBool>,
    cleartext: Arc<AtomicU64>,
    encrypted: Arc<AtomicU64>,
    thread: JoinHandle<io::Result<()>>,
}

/// What an Ethernet frame on the underlay carries: `Some(true)` an IPv4 packet from or to a
/// LAN (clear text), `Some(false)` a WireGuard datagram, `None` anything else. IPv4 only:
/// the lab's stream is.
fn classify(frame: &[u8]) -> Option<bool> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let in_lan = |a: Ipv4Addr| {
        LANS.iter()
            .any(|(net, len)| u32::from(a) >> (32 - len) == u32::from(*net) >> (32 - len))
    };
    if in_lan(src) || in_lan(dst) {
        return Some(true);
    }
    let udp = ip.get(ihl..ihl + 4)?;
    let (sport, dport) = (
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
    );
    (ip[9] == 17 && (WG_PORTS.contains(&sport) || WG_PORTS.contains(&dport))).then_some(false)
}

impl UnderlayCapture {
    /// Starts counting on `ifname` in `ns`; returns once the socket is bound.
    pub fn start(ns: &Netns, ifname: &str) -> Result<UnderlayCapture> {
        let ifindex = ns.ifindex(ifname)?;
        let file = File::open(ns.path()).map_err(io_err(format!("opening {}", ns.name())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let cleartext = Arc::new(AtomicU64::new(0));
        let encrypted = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_t, clear_t, enc_t) = (stop.clone(), cleartext.clone(), encrypted.clone());
        let thread = std::thread::spawn(move || -> io::Result<()> {
            let fd = match netlab::enter(&file).and_then(|()| netlab::packet_socket(ifindex)) {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            let mut buf = [0u8; 2048];
            while !stop_t.load(Ordering::Relaxed) {
                // SAFETY: recv into a buffer of the length passed, on our own socket.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) {
                        continue;
                    }
                    return Err(e);
                }
                match classify(&buf[..n as usize]) {
                    Some(true) => clear_t.fetch_add(1, Ordering::Relaxed),
                    Some(false) => enc_t.fetch_add(1, Ordering::Relaxed),
                    None => 0,
                };
            }
            Ok(())
        });
        ready_rx
            .recv()
            .map_err(|_| FailClosedError::Io {
                what: "capture thread".into(),
                source: io::Error::other("ended before binding"),
            })?
            .map_err(io_err(format!("AF_PACKET socket on {ifname}")))?;
        Ok(UnderlayCapture {
            stop,
            cleartext,
            encrypted,
            thread,
        })
    }

    /// (clear text, WireGuard) packets so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.cleartext.load(Ordering::Relaxed),
            self.encrypted.load(Ordering::Relaxed),
        )
    }

    /// Stops and returns the final counts.
    pub fn finish(self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let counts = self.counts();
        self.thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
            .map_err(io_err("capturing"))?;
        Ok(counts)
    }
}

/// Packets A's mark rule has marked so far (its nftables counter).
fn marked(ns: &Netns) -> Result<u64> {
    let out = ns.exec(&["nft", "list", "chain", "ip", MARK_TABLE, "pre"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| FailClosedError::Io {
            what: format!("the mark rule's counter in {}", ns.name()),
            source: io::Error::other(format!("unparsable: {text}")),
        })
}

/// The lab drawn above.
pub struct FailClosedLab {
    pub wga: String,
    pub wgb: String,
    spec_a: TunnelSpec,
    spec_b: TunnelSpec,
    // Field order is drop order (after `Drop::drop`): managers, their state, namespaces.
    mgr_a: TunnelManager,
    mgr_b: TunnelManager,
    _state: tempfile::TempDir,
    pub h1: Netns,
    pub ga: Netns,
    pub gb: Netns,
    pub h2: Netns,
}

impl Drop for FailClosedLab {
    fn drop(&mut self) {
        stop_wireguard_go(&[&self.ga, &self.gb]);
    }
}

/// Stops the wireguard-go daemons running in `namespaces` (SIGTERM, then waits up to 5 s):
/// wireguard-go outlives a deleted namespace (its sockets keep it alive), so a lab stops its
/// daemons before its namespaces go.
pub(crate) fn stop_wireguard_go(namespaces: &[&Netns]) {
    for ns in namespaces {
        for (pid, cmd) in ns.processes() {
            if cmd.contains("wireguard-go") {
                // SAFETY: kill(2) on a daemon the lab started inside its own namespace.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && namespaces.iter().any(|ns| {
            ns.processes()
                .iter()
                .any(|(_, c)| c.contains("wireguard-go"))
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A wireguard-go tunnel `name` with one peer, keepalive 25 s.
pub(crate) fn wireguard(
    name: &str,
    address: &str,
    port: u16,
    peer: dwcp_tunnels::PublicKey,
    endpoint: (Ipv4Addr, u16),
    allowed_ips: &[&str],
    handoff: Option<Handoff>,
) -> TunnelSpec {
    TunnelSpec {
        name: name.to_string(),
        addresses: vec![address.parse().expect("a literal address")],
        underlay: Underlay::default(),
        mss_clamp: false,
        kind: TunnelKind::WireGuard(WireGuardSpec {
            listen_port: port,
            peer: WireGuardPeerSpec {
                public_key: peer,
                endpoint: Some(endpoint.into()),
                allowed_ips: allowed_ips
                    .iter()
                    .map(|s| s.parse().expect("a literal prefix"))
                    .collect(),
                persistent_keepalive: Some(25),
                preshared_key_file: None,
            },
            handoff,
        }),
    }
}

impl FailClosedLab {
    /// Builds the lab; `tag` names its namespaces and devices (unique per process).
    pub async fn build(tag: &str) -> Result<FailClosedLab> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (h1, ga) = (Netns::new(tag)?, Netns::new(tag)?);
        let (gb, h2) = (Netns::new(tag)?, Netns::new(tag)?);
        let state = tempfile::tempdir().map_err(io_err("state directory"))?;
        let manager = |ns: &Netns, sub: &str| ManagerConfig {
            netns: NetnsTarget::named(ns.name()),
            state_dir: state.path().join(sub),
            wireguard: WireGuardImpl::Auto,
        };
        let mgr_a = TunnelManager::new(manager(&ga, "a")).await?;
        let mgr_b = TunnelManager::new(manager(&gb, "b")).await?;
        // Unique on the host: wireguard-go's socket directory is shared by all namespaces.
        let (wga, wgb) = (
            format!("fca{}x{n}", std::process::id()),
            format!("fcb{}x{n}", std::process::id()),
        );
        netlab::veth(&ga, "ua", &gb, "ub")?;
        netlab::addr(&ga, "ua", &format!("{A_UNDERLAY}/30"))?;
        netlab::addr(&gb, "ub", &format!("{B_UNDERLAY}/30"))?;
        for (host, gw, i) in [(&h1, &ga, 1), (&h2, &gb, 2)] {
            netlab::veth(host, "eth0", gw, "lan")?;
            netlab::addr(host, "eth0", &format!("10.{i}.0.2/24"))?;
            netlab::addr(gw, "lan", &format!("10.{i}.0.1/24"))?;
            host.ip(&["route", "add", "default", "via", &format!("10.{i}.0.1")])?;
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            // Return traffic comes out of the tunnel with a source the main table routes
            // elsewhere.
            gw.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            gw.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        // What makes a fall-through visible: A's main table routes everything else out of the
        // underlay, and B forwards it to H2.
        ga.ip(&["route", "add", "default", "via", &B_UNDERLAY.to_string()])?;
        let mark = format!(
            "add table ip {MARK_TABLE}; add chain ip {MARK_TABLE} pre {{ type filter hook \
             prerouting priority mangle; }}; add rule ip {MARK_TABLE} pre iifname \"lan\" ip \
             daddr 10.2.0.0/24 counter meta mark set {:#x}",
            HANDOFF.fwmark
        );
        ga.exec(&["nft", &mark])?;
        let (key_a, key_b) = (mgr_a.public_key(&wga)?, mgr_b.public_key(&wgb)?);
        let spec_a = wireguard(
            &wga,
            "10.254.0.1/30",
            WG_PORTS[0],
            key_b,
            (B_UNDERLAY, WG_PORTS[1]),
            &["10.254.0.2/32", "10.2.0.0/24"],
            Some(HANDOFF),
        );
        let spec_b = wireguard(
            &wgb,
            "10.254.0.2/30",
            WG_PORTS[1],
            key_a,
            (A_UNDERLAY, WG_PORTS[0]),
            &["10.254.0.1/32", "10.1.0.0/24"],
            None,
        );
        mgr_b.ensure(&spec_b).await?;
        gb.ip(&["route", "add", "10.1.0.0/24", "dev", &wgb])?;
        let lab = FailClosedLab {
            wga,
            wgb,
            spec_a,
            spec_b,
            mgr_a,
            mgr_b,
            _state: state,
            h1,
            ga,
            gb,
            h2,
        };
        lab.mgr_a.ensure(&lab.spec_a).await?;
        Ok(lab)
    }

    /// Makes A's end whole again (after a teardown) and waits until H1 reaches H2 through
    /// the tunnel.
    pub async fn restore(&self) -> Result<()> {
        self.mgr_a.ensure(&self.spec_a).await?;
        self.mgr_b.ensure(&self.spec_b).await?;
        let start = Instant::now();
        while self
            .h1
            .exec(&["ping", "-c", "1", "-W", "1", &H2.to_string()])
            .is_err()
        {
            if start.elapsed() > HANDSHAKE_WAIT {
                return Err(FailClosedError::Timeout {
                    what: format!("H1 to reach H2 through {}", self.wga),
                    waited: HANDSHAKE_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Deletes the unreachable defaults of the hand-off's table (both families): the hand-off
    /// as it was before it failed closed, for a control that must see the leak. The next
    /// [`FailClosedLab::restore`] puts them back.
    pub fn remove_fail_closed_routes(&self) -> Result<()> {
        let table = HANDOFF.table.to_string();
        for family in ["-4", "-6"] {
            self.ga.ip(&[
                family,
                "route",
                "del",
                "unreachable",
                "default",
                "table",
                &table,
            ])?;
        }
        Ok(())
    }

    /// Breaks A's end of the tunnel.
    pub fn tear_down(&self, how: Teardown) -> Result<()> {
        match how {
            Teardown::DeleteDevice => {
                self.ga.ip(&["link", "del", &self.wga])?;
            }
            Teardown::KillDaemon => {
                let pids: Vec<i32> = self
                    .ga
                    .processes()
                    .into_iter()
                    .filter(|(_, cmd)| cmd.contains("wireguard-go") && cmd.ends_with(&self.wga))
                    .map(|(pid, _)| pid)
                    .collect();
                if pids.is_empty() {
                    return Err(FailClosedError::Io {
                        what: format!("the wireguard-go of {}", self.wga),
                        source: io::Error::other("no such process"),
                    });
                }
                for pid in pids {
                    // SAFETY: kill(2) on a daemon this lab started in its own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Teardown::DeviceDown => {
                self.ga.ip(&["link", "set", &self.wga, "down"])?;
            }
            Teardown::DeleteRoute => {
                let table = HANDOFF.table.to_string();
                self.ga
                    .ip(&["route", "del", "default", "dev", &self.wga, "table", &table])?;
            }
        }
        Ok(())
    }

    /// One trial on the tunnel as it is (see [`FailClosedLab::restore`]): a stream H1 → H2 of
    /// `per_ms` datagrams a millisecond for `before` through it, the teardown, and the stream
    /// for `after` more.
    pub async fn trial(
        &self,
        how: Teardown,
        port: u16,
        per_ms: u64,
        before: Duration,
        after: Duration,
    ) -> Result<TrialReport> {
        let capture = UnderlayCapture::start(&self.ga, "ua")?;
        let stream = UdpStream::start(&self.h1, &self.h2, H2, port, per_ms)?;
        tokio::time::sleep(before).await;
        let (_, encrypted_before) = capture.counts();
        let marked0 = marked(&self.ga)?;
        let torn = self.tear_down(how);
        tokio::time::sleep(after).await;
        let result = stream.finish().map_err(io_err("the stream"))?;
        let (cleartext, _) = capture.finish()?;
        torn?;
        Ok(TrialReport {
            sent: result.sent,
            received: result.sent - result.lost,
            encrypted_before,
            cleartext,
            marked_after: marked(&self.ga)? - marked0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = proto;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn lan_packets_are_clear_text_and_wireguard_datagrams_are_not() {
        let under = [192, 0, 2, 1];
        let peer = [192, 0, 2, 2];
        assert_eq!(
            classify(&frame([10, 1, 0, 2], [10, 2, 0, 2], 17, 40000, 7000)),
            Some(true)
        );
        assert_eq!(
            classify(&frame([10, 2, 0, 2], [10, 1, 0, 2], 1, 0, 0)),
            Some(true)
        );
        assert_eq!(classify(&frame(under, peer, 17, 51820, 51821)), Some(false));
        // Other underlay traffic (ARP is not IPv4; ICMP between the gateways) is neither.
        assert_eq!(classify(&frame(under, peer, 1, 0, 0)), None);
        let mut arp = frame(under, peer, 17, 51820, 51821);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp), None);
        assert_eq!(classify(&[0u8; 20]), None);
    }
}
