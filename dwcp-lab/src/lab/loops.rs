//! The loop counter: how many datagrams of the lab's sequenced streams ([`super::stream`]) a
//! gateway sent into the underlay more than once. A gateway forwards each datagram it receives
//! once, so a second send of the same datagram means it came back to that gateway: a loop.
//!
//! The capture is on the wires, not in the gateways' namespaces: the gateways forward in XDP,
//! before any packet socket of their own namespace could see a frame, while a wire's ports
//! hand every frame to its bridge through the stack (their `XDP_PASS` program), where an
//! `AF_PACKET` socket sees it. A frame entering a wire on the port of gateway `a` is one `a`
//! sent over that link (also when the link is cut: the bridge drops it after the capture).
//! The datagram inside the VXLAN is known by its flow, sequence number and send time, unique
//! across streams. The kernel's count of frames the capture dropped (its socket was full) is
//! reported with the count: a loop in a dropped frame is not counted.

use std::{
    collections::{BTreeMap, HashSet},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use super::{
    live::{Borrowed, LabState},
    multi::{self, LabPlan},
    stream::{self, PacedSender, StreamReceiver},
    Result,
};
use crate::netlab::NetlabError;

const VXLAN_PORT: u16 = 4789;
/// Room for a second of the underlay's frames while the capture thread is descheduled.
const CAPTURE_BUFFER: libc::c_int = 32 << 20;

/// What the capture counted since it started or was last [`LoopCounter::take`]n.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoopCount {
    /// Stream datagrams seen leaving a gateway (every hop of every datagram).
    pub sends: u64,
    /// Sends of a datagram by a gateway that had sent it before.
    pub looped: u64,
    /// Datagrams sent twice by some gateway.
    pub datagrams_looped: u64,
    /// Looped sends by gateway (region number).
    pub looped_by: BTreeMap<u8, u64>,
    /// Frames the kernel dropped because the capture's sockets were full.
    pub capture_drops: u64,
}

impl LoopCount {
    pub fn add(&mut self, other: &LoopCount) {
        self.sends += other.sends;
        self.looped += other.looped;
        self.datagrams_looped += other.datagrams_looped;
        for (g, n) in &other.looped_by {
            *self.looped_by.entry(*g).or_default() += n;
        }
        self.capture_drops += other.capture_drops;
    }
}

/// One datagram sent by one gateway: (gateway, flow, sequence number, send time).
type Send = (u8, u16, u32, u64);

#[derive(Default)]
struct Seen {
    sends: HashSet<Send>,
    /// (flow, sequence number, send time) of the datagrams counted in `datagrams_looped`.
    looped: HashSet<(u16, u32, u64)>,
    count: LoopCount,
}

/// Captures every wire of a running lab until dropped.
pub struct LoopCounter {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    /// Each socket's kernel drop counter is read (and reset) by [`LoopCounter::take`].
    sockets: Arc<Vec<Capture>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Capture {
    fd: OwnedFd,
    /// The gateway (region number) whose frames enter the wire on this port.
    sender: u8,
}

impl LoopCounter {
    /// Starts capturing on both ports of every wire of `state`'s lab.
    pub fn start(state: &LabState) -> Result<LoopCounter> {
        let plan = LabPlan::for_regions(state.regions)?;
        let mut sockets = Vec::new();
        for l in &plan.links {
            let wire = Borrowed::new(&format!("{}-w{}", state.paths.prefix, l.id));
            for (port, sender) in [("wa", l.a), ("wb", l.b)] {
                let fd = wire
                    .ns()
                    .run_in(|| packet_socket(port))?
                    .map_err(|source| NetlabError::Spawn {
                        cmd: format!("capture {port} in {}", wire.ns().name()),
                        source,
                    })?;
                sockets.push(Capture { fd, sender });
            }
        }
        let sockets = Arc::new(sockets);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, seen, sockets) = (stop.clone(), seen.clone(), sockets.clone());
            std::thread::spawn(move || capture(&sockets, &stop, &seen))
        };
        Ok(LoopCounter {
            stop,
            seen,
            sockets,
            thread: Some(thread),
        })
    }

    /// What was counted since the start or the last take, which starts the count afresh
    /// (call it while no stream runs: a datagram in flight across it could be missed).
    pub fn take(&self) -> LoopCount {
        let drops: u64 = self.sockets.iter().map(|c| drops(&c.fd)).sum();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut count = std::mem::take(&mut seen.count);
        seen.sends.clear();
        seen.looped.clear();
        count.capture_drops = drops;
        count
    }
}

impl Drop for LoopCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What [`flap_with_streams`] sent and what arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlapReport {
    pub sent: u64,
    pub delivered: u64,
}

/// Streams from every region's host to the host of the region across the ring
/// (`per_stream_pps` each, UDP ports from `port_base`) while links flap: each chord of the
/// lab is cut with a ring link, the second 300 ms after the first, both healed a second later
/// in the same order, one pair after the other, so that gateways' databases differ while the
/// records flood. Two cuts never isolate a region (each has 3 links or more). Needs a lab with
/// chords (4 regions or more).
pub fn flap_with_streams(
    state: &LabState,
    per_stream_pps: u32,
    port_base: u16,
) -> Result<FlapReport> {
    let plan = LabPlan::for_regions(state.regions)?;
    let n = plan.regions.len();
    let mut streams = Vec::new();
    for from in 0..n {
        let (src, dst) = (&state.agents[from], &state.agents[(from + n / 2) % n]);
        let (s, d) = (
            Borrowed::new(&src.host_namespace),
            Borrowed::new(&dst.host_namespace),
        );
        let port = port_base + from as u16;
        let addr = std::net::SocketAddr::from((dst.host_ip, port));
        let receiver = StreamReceiver::start(d.ns(), addr, None)?;
        let sender = PacedSender::start(s.ns(), src.host_ip, &[port], addr, per_stream_pps, None)?;
        streams.push((sender, receiver));
    }
    let (ring, chords) = plan.links.split_at(n);
    let pause = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
    let set = |id: u32, cut: bool| multi::stable_set_cut(&state.paths.prefix, id, cut);
    for (chord, link) in chords.iter().cycle().zip(ring) {
        set(chord.id, true)?;
        pause(300);
        set(link.id, true)?;
        pause(700);
        set(chord.id, false)?;
        pause(300);
        set(link.id, false)?;
        pause(700);
    }
    let mut report = FlapReport::default();
    for (sender, receiver) in streams {
        let log = sender.finish();
        report.sent += log.tx_ns.values().map(|v| v.len() as u64).sum::<u64>();
        report.delivered += receiver.finish(std::time::Duration::from_millis(200)).len() as u64;
    }
    Ok(report)
}

/// A non-blocking `AF_PACKET` socket receiving every frame of interface `ifname` (of the
/// calling thread's namespace).
fn packet_socket(ifname: &str) -> std::io::Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            all.into(),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(ifname).expect("no NUL in an interface name");
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are its family, protocol, index.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: bind(2) with a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: setsockopt(2) with a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&CAPTURE_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drops(&fd); // From zero: what was dropped before the bind is no concern.
    Ok(fd)
}

/// Frames the kernel dropped on this socket since the last call (reading resets them).
fn drops(fd: &OwnedFd) -> u64 {
    // SAFETY: a zeroed tpacket_stats is valid output space of the size passed.
    let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into `stats`, `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        0
    } else {
        stats.tp_drops.into()
    }
}

fn capture(sockets: &[Capture], stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|c| libc::pollfd {
            fd: c.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    let mut batch: Vec<Send> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: poll(2) on the fds above, their count passed; 20 ms so `stop` is noticed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            continue;
        }
        for (pfd, c) in fds.iter_mut().zip(sockets) {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: a zeroed sockaddr_ll is valid output space.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: recvfrom(2) into `buf` and `from`, their sizes passed.
                let got = unsafe {
                    libc::recvfrom(
                        pfd.fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if got <= 0 {
                    break;
                }
                // Frames the bridge sends out of this port are the other gateway's.
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                if let Some((flow, seq, tx_ns)) = stream_datagram(&buf[..got as usize]) {
                    batch.push((c.sender, flow, seq, tx_ns));
                }
            }
        }
        if !batch.is_empty() {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            for send in batch.drain(..) {
                seen.count.sends += 1;
                if !seen.sends.insert(send) {
                    seen.count.looped += 1;
                    *seen.count.looped_by.entry(send.0).or_default() += 1;
                    if seen.looped.insert((send.1, send.2, send.3)) {
                        seen.count.datagrams_looped += 1;
                    }
                }
            }
        }
    }
}

/// The stream datagram inside a VXLAN frame of the underlay (IPv4 outside, IPv4 inside).
fn stream_datagram(frame: &[u8]) -> Option<(u16, u32, u64)> {
    let udp = ipv4_udp(frame.get(14..)?)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != VXLAN_PORT {
        return None;
    }
    // VXLAN (8 bytes), the inner Ethernet header (14), the inner IPv4 and UDP headers.
    let inner = ipv4_udp(udp.get(8 + 8 + 14..)?)?;
    stream::decode(inner.get(8..)?)
}

/// The UDP header and payload of an IPv4 packet carrying UDP.
fn ipv4_udp(ip: &[u8]) -> Option<&[u8]> {
    let (&first, &proto) = (ip.first()?, ip.get(9)?);
    if first >> 4 != 4 || proto != libc::IPPROTO_UDP as u8 {
        return None;
    }
    let udp = ip.get(usize::from(first & 0x0f) * 4..)?;
    (udp.len() >= 8).then_some(udp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_datagram_is_found_inside_the_vxlan_and_nothing_else_is() {
        let payload = stream::encode(9000, 7, 123_456);
        let mut inner = vec![0u8; 14];
        inner.extend([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        inner.extend([10, 1, 0, 2, 10, 4, 0, 2]);
        inner.extend([0x23, 0x28, 0x23, 0x28, 0, 0, 0, 0]);
        inner.extend(payload);
        let mut frame = vec![0u8; 14];
        frame.extend([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        frame.extend([172, 16, 1, 1, 172, 16, 1, 2]);
        frame.extend([0xc0, 0x00, 0x12, 0xb5, 0, 0, 0, 0]);
        frame.extend([8, 0, 0, 0, 0, 0, 1, 0]);
        frame.extend(&inner);
        assert_eq!(stream_datagram(&frame), Some((9000, 7, 123_456)));
        // Another UDP port outside, or a truncated frame: not a stream datagram.
        let mut other = frame.clone();
        other[14 + 20 + 3] = 0xb6;
        assert_eq!(stream_datagram(&other), None);
        assert_eq!(stream_datagram(&frame[..60]), None);
    }
}
