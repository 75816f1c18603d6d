//! What an attacker on the underlay gets from a gateway, and whether the API answers under an
//! idle-connection flood: every figure measured in this run.
//!
//! The underlay attacks run in the three-region lab of real `dwcp-agent` daemons, each with
//! `dwcp-prober` beside it (`lab::triangle`, the shipped probe settings of deploy/agent.toml),
//! with an attacker namespace whose ports sit on every link's bridge beside the gateways'. It
//! sends whole frames from AF_PACKET sockets at us-east-1:
//! - spoofed VXLAN (a stranger's source, another peer's source, the wrong VNI for the source,
//!   the right peer on the wrong segment), around inner datagrams for us-east-1's host and for
//!   transit: how many a capture on the hosts' LAN ports saw;
//! - forged probe replies (no token, random tokens, another key's tokens, eavesdropped genuine
//!   replies replayed as they were, from a stranger and across a router), with the link cut:
//!   trials in which the link stayed usable; with the link cut or live: trials in which the
//!   smoothed RTT moved;
//! - probe requests from strangers (a stranger's source, another peer naming the link, the
//!   peer across a router or on the wrong segment): how many replies reached the attacker.
//!
//! The target's per-reason drop counters are read over each phase, genuine streams cross the
//! target during the injection, and every attack has its control: a frame the target must
//! take (the peer's own address on its segment, or a reply made with the target's key), or
//! the benchmark fails (a zero of a harness that sees nothing is no zero). Then:
//! - the fuzz corpora of `tests/xdp_fuzz.rs` (`xdp_corpus`) through BPF_PROG_TEST_RUN, judged
//!   by etherparse;
//! - the API tests' harness (`api_harness`), flooded with `idle_flood`;
//! - the WireGuard hand-off broken under a stream four ways (`fail_closed`, the unencrypted
//!   packets counted on the underlay);
//! - us-east-1's agent killed with SIGKILL under a stream (before the attacks, in the same
//!   lab).
//!
//! `cargo xtask bench attacks` runs it in release mode and records the report. Needs root,
//! `wireguard-go` and the release `dwcp-agent` and `dwcp-prober` (`cargo build --release
//! --bins`).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use aya::maps::MapData;
use dwcp_common::{maps::names, probe::*, wire::*, LinkState, Reason};
use dwcp_control::config::{ProbeSenderMode, VNI_BASE};
use dwcp_control::view::{AgentEvent, StatusView};
use dwcp_dataplane::PinnedMaps;
use dwcp_lab::api_harness::{Agent, Harness, TOKEN};
use dwcp_lab::fail_closed::{FailClosedLab, Teardown};
use dwcp_lab::frames::*;
use dwcp_lab::idle_flood::{under_idle_flood, FloodTarget};
use dwcp_lab::lab::triangle::{
    host_ip, underlay_ip, StreamReport, TriangleLab, TriangleOptions, UdpStream,
};
use dwcp_lab::netlab::{self, Netns};
use dwcp_lab::xdp_corpus::*;

/// Idle connections held while the API is asked.
const IDLE_CONNECTIONS: usize = 2_000;
/// Trials per way of breaking the WireGuard hand-off.
const TEARDOWN_TRIALS: u32 = 2;
/// The fail-closed stream: datagrams per millisecond, and its time before and after the
/// teardown.
const TEARDOWN_STREAM: (u64, Duration, Duration) =
    (1, Duration::from_millis(400), Duration::from_millis(1000));
/// The agent-kill stream: datagrams per second, and its time before and after the SIGKILL.
const KILL_STREAM: (u32, Duration, Duration) =
    (1000, Duration::from_secs(1), Duration::from_secs(3));
// ---------------------------------------------------------------------------------------------
// The attacker on the underlay: a namespace with a port on every wire's bridge of the
// three-region lab, beside the gateways' own ports.

/// The gateway attacked: us-east-1 (links 1 to eu-west-1 and 3 to ap-south-1).
const TARGET: usize = 0;
/// The target's link whose peer the attacker impersonates, and its other link.
const LINK: u32 = 1;
const OTHER_LINK: u32 = 3;
/// Rounds of spoofed VXLAN and strangers' probe requests (each round sends every kind).
const ROUNDS: u32 = 2_000;
/// One genuine-looking control frame (the peer's own address, on its wire) every this many
/// rounds: it must arrive, or the capture sees nothing.
const CONTROL_EVERY: u32 = 20;
/// Forged-probe trials on the cut link, and on the live link.
const PROBE_TRIALS: u32 = 10;
/// How long forged replies are sent per trial, one every millisecond of each kind.
const FORGE_FOR: Duration = Duration::from_millis(1000);
/// A smoothed RTT above this on a veth lab (sub-millisecond) means forged replies moved it:
/// the forged and replayed ones claim send times 0.5-2 s old.
const RTT_MOVED_NS: u64 = 100_000_000;
/// The payload marker of the attacker's inner datagrams, followed by the kind and a number.
const MARK: &[u8; 5] = b"DWATK";
/// Destination port of the inner datagrams, and the source port of forged probes.
const ATTACK_PORT: u16 = 6666;
/// Sequence numbers of the attacker's probes: MARK_SEQ | kind << 16 | n.
const MARK_SEQ: u32 = 0xa700_0000;

/// Spoofed VXLAN, by what is wrong with it; the kind byte of an inner datagram is
/// `kind * 2 + transit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spoof {
    /// The control: the link's peer's address, on its wire, with its VNI.
    Genuine = 0,
    Stranger = 1,
    OtherPeer = 2,
    WrongVni = 3,
    WrongInterface = 4,
}

const SPOOFS: [Spoof; 4] = [
    Spoof::Stranger,
    Spoof::OtherPeer,
    Spoof::WrongVni,
    Spoof::WrongInterface,
];

/// Strangers' probe requests, by what is wrong with them (the kind in the sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    /// The control: the peer's address, TTL 255, on its wire.
    Genuine = 0,
    Stranger = 1,
    OtherPeer = 2,
    Routed = 3,
    WrongInterface = 4,
}

const REQUESTS: [Request; 4] = [
    Request::Stranger,
    Request::OtherPeer,
    Request::Routed,
    Request::WrongInterface,
];

/// A stranger on the underlay: 203.0.113.0/24, never a peer.
fn stranger(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, rng.next_u64() as u8)
}

/// The three-region lab with an attacker namespace whose port `a<link>` sits on wire
/// `link`'s bridge (the segment both gateways of the link are on).
struct AttackLab {
    lab: TriangleLab,
    attacker: Netns,
    /// The attacker's packet socket and MAC on each wire, by link id - 1.
    ports: Vec<(OwnedFd, [u8; 6])>,
    /// The target's MAC on each wire, by link id - 1 (none on a link it is not on).
    target_macs: Vec<Option<[u8; 6]>>,
}

impl AttackLab {
    fn attach(lab: TriangleLab) -> anyhow::Result<AttackLab> {
        let attacker = Netns::new("atk-x")?;
        let mut ports = Vec::new();
        let mut target_macs = Vec::new();
        for w in &lab.wires {
            target_macs.push(lab.regions[TARGET].gw.mac(&format!("ul{}", w.link)).ok());
            let ifname = format!("a{}", w.link);
            netlab::veth(&attacker, &ifname, &w.ns, "atk")?;
            w.ns.ip(&["link", "set", "atk", "master", "br0"])?;
            let ifindex = attacker.ifindex(&ifname)?;
            let fd = attacker.run_in(|| netlab::packet_socket(ifindex))??;
            ports.push((fd, attacker.mac(&ifname)?));
        }
        Ok(AttackLab {
            lab,
            attacker,
            ports,
            target_macs,
        })
    }

    /// Sends `frame` into wire `link` from the attacker's port.
    fn send(&self, link: u32, frame: &[u8]) -> anyhow::Result<()> {
        let fd = self.ports[(link - 1) as usize].0.as_raw_fd();
        // SAFETY: send(2) of a buffer of the length passed on our own socket.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(
            n == frame.len() as isize,
            "sending on the attacker's port of wire {link}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    fn attacker_mac(&self, link: u32) -> [u8; 6] {
        self.ports[(link - 1) as usize].1
    }

    /// The target's MAC on link `link`.
    fn target_mac(&self, link: u32) -> anyhow::Result<[u8; 6]> {
        self.target_macs[(link - 1) as usize].context("the target is not on that link")
    }

    fn maps(&self) -> PinnedMaps {
        PinnedMaps::new(self.lab.pin_dir(TARGET))
    }

    fn link_state(&self) -> anyhow::Result<LinkState> {
        Ok(self.maps().link_state()?.get(&LINK, 0)?)
    }

    /// Whether the target's fast path takes `LINK` as answering (its last reply younger than
    /// the detection time), and as usable (also past the hold-down: `up_after` replies in a
    /// row): the kernel's rule (`lan.rs`, `link_liveness`).
    fn fast_path_live(&self) -> anyhow::Result<(bool, bool)> {
        let cfg = self.maps().link_config()?.get(&LINK, 0)?;
        let st = self.link_state()?;
        let answering = st.last_reply_ns != 0
            && monotonic_ns().saturating_sub(st.last_reply_ns) <= cfg.detect_ns;
        Ok((answering, answering && st.good_streak >= cfg.up_after))
    }

    /// The target's exit number for `link` in source routes (`TRANSIT_EXITS`).
    fn exit_to(&self, link: u32) -> anyhow::Result<u8> {
        let exits: aya::maps::HashMap<MapData, u32, u32> = self.maps().map(names::TRANSIT_EXITS)?;
        for e in exits.iter() {
            let (exit, l) = e?;
            if l == link {
                return Ok(u8::try_from(exit)?);
            }
        }
        anyhow::bail!("the target has no transit exit to link {link}")
    }
}

/// An IPv4 frame from the attacker's port to `dst_mac`.
fn ip_frame(dst_mac: [u8; 6], src_mac: [u8; 6], ip: &V4, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ETH_P_IP);
    f.extend_from_slice(&ip.build(l4));
    f
}

/// The inner frame of spoofed VXLAN: a UDP datagram to `dst` carrying the marker.
fn inner_datagram(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, n: u32) -> Vec<u8> {
    let mut payload = MARK.to_vec();
    payload.push(kind);
    payload.extend_from_slice(&n.to_be_bytes());
    let ip = V4::new(IPPROTO_UDP, &src.to_string(), &dst.to_string());
    ip_frame(
        GW_MAC,
        HOST_MAC,
        &ip,
        &udp(ATTACK_PORT, ATTACK_PORT, &payload),
    )
}

/// The marker's kind byte of an IPv4/UDP frame carrying the attacker's marker.
fn marked_kind(frame: &[u8]) -> Option<u8> {
    let ip = frame.get(14..)?;
    if frame[12..14] != [0x08, 0x00] || ip[0] >> 4 != 4 || ip[9] != IPPROTO_UDP {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let payload = ip.get(ihl + 8..ihl + 8 + MARK.len() + 1)?;
    (payload[..MARK.len()] == MARK[..]).then_some(payload[MARK.len()])
}

/// The kind of a probe reply carrying one of the attacker's sequence numbers.
fn reflected_kind(frame: &[u8]) -> Option<u8> {
    let ip = frame.get(14..)?;
    if frame[12..14] != [0x08, 0x00] || ip[0] >> 4 != 4 || ip[9] != IPPROTO_UDP {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let h = ProbeHeader::decode(ip.get(ihl + 8..)?).ok()?;
    (h.kind == PROBE_KIND_REPLY && h.seq & 0xff00_0000 == MARK_SEQ).then_some((h.seq >> 16) as u8)
}

/// Counts, by kind, the frames `classify` recognises on some interfaces, from a thread.
struct KindCapture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<BTreeMap<u8, u64>>>>,
}

impl KindCapture {
    fn start(
        on: &[(&Netns, &str)],
        classify: fn(&[u8]) -> Option<u8>,
    ) -> anyhow::Result<KindCapture> {
        let mut fds = Vec::new();
        for (ns, ifname) in on {
            let ifindex = ns.ifindex(ifname)?;
            fds.push(ns.run_in(|| netlab::packet_socket(ifindex))??);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || -> std::io::Result<BTreeMap<u8, u64>> {
                let mut counts = BTreeMap::new();
                let mut buf = [0u8; 2048];
                // Drain every socket without blocking, then wait a little.
                loop {
                    let stopping = stop.load(Ordering::Relaxed);
                    let mut got = false;
                    for fd in &fds {
                        loop {
                            // SAFETY: recv into a buffer of the length passed.
                            let n = unsafe {
                                libc::recv(
                                    fd.as_raw_fd(),
                                    buf.as_mut_ptr().cast(),
                                    buf.len(),
                                    libc::MSG_DONTWAIT,
                                )
                            };
                            if n < 0 {
                                let e = std::io::Error::last_os_error();
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::Interrupted
                                {
                                    break;
                                }
                                return Err(e);
                            }
                            got = true;
                            if let Some(k) = classify(&buf[..n as usize]) {
                                *counts.entry(k).or_insert(0) += 1;
                            }
                        }
                    }
                    if stopping {
                        return Ok(counts);
                    }
                    if !got {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            })
        };
        Ok(KindCapture {
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for stragglers, stops and returns the counts by kind.
    fn finish(mut self) -> anyhow::Result<BTreeMap<u8, u64>> {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().context("capture running")?;
        Ok(t.join()
            .map_err(|_| anyhow::anyhow!("capture panicked"))??)
    }
}

impl Drop for KindCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sums the target's per-reason counters.
fn reasons(lab: &TriangleLab, of: &[Reason]) -> anyhow::Result<u64> {
    let c = lab.counters(TARGET)?;
    Ok(of.iter().map(|r| c.reason(*r)).sum())
}

/// What the spoofing and reflection phases measured.
struct Injection {
    vxlan_sent: u64,
    /// Spoofed inner datagrams seen on any host's LAN port.
    vxlan_delivered: u64,
    /// The target's `underlay_decap_wrong_source` + `_wrong_interface` over the phase.
    vxlan_dropped: u64,
    controls_sent: u64,
    controls_delivered: u64,
    requests_sent: u64,
    /// Replies to the attacker's requests seen back on the attacker's ports.
    reflected: u64,
    /// The target's `underlay_probe_stranger` + `_ttl` over the phase.
    requests_dropped: u64,
    request_controls_sent: u64,
    request_controls_reflected: u64,
    /// The genuine streams that ran meanwhile: eu-west-1 → us-east-1, ap-south-1 → us-east-1.
    genuine: Vec<StreamReport>,
}

/// Spoofed VXLAN around inner frames for the target's region and for transit, and strangers'
/// probe requests, from the attacker's ports, while genuine streams cross the target.
fn inject(atk: &AttackLab, rng: &mut Rng) -> anyhow::Result<Injection> {
    let lab = &atk.lab;
    let target_ip = underlay_ip(LINK, TARGET);
    let peer_ip = underlay_ip(LINK, 1);
    let other_peer_ip = underlay_ip(OTHER_LINK, 2);
    let (vni, other_vni) = (VNI_BASE + LINK, VNI_BASE + OTHER_LINK);
    // Transit: in over LINK, on to ap-south-1 over OTHER_LINK (a route the target serves).
    let route = [atk.exit_to(OTHER_LINK)?, 0, 0, 0];
    let hosts: Vec<(&Netns, &str)> = lab.regions.iter().map(|r| (&r.host, "eth0")).collect();
    let lan = KindCapture::start(&hosts, marked_kind)?;
    let attacker_ports: Vec<(&Netns, &str)> = vec![(&atk.attacker, "a1"), (&atk.attacker, "a3")];
    let back = KindCapture::start(&attacker_ports, reflected_kind)?;
    let vxlan_counters = [
        Reason::UnderlayDecapWrongSource,
        Reason::UnderlayDecapWrongInterface,
    ];
    let probe_counters = [Reason::UnderlayProbeStranger, Reason::UnderlayProbeTtl];
    let (vxlan_before, probes_before) = (
        reasons(lab, &vxlan_counters)?,
        reasons(lab, &probe_counters)?,
    );
    let genuine = [
        UdpStream::start(lab, 1, TARGET, GENUINE_RATE)?,
        UdpStream::start(lab, 2, TARGET, GENUINE_RATE)?,
    ];
    let vxlan = |atk: &AttackLab,
                 wire: u32,
                 src: Ipv4Addr,
                 dst: Ipv4Addr,
                 vni: u32,
                 kind: Spoof,
                 n: u32|
     -> anyhow::Result<()> {
        for (transit, inner_dst, route) in [(0u8, host_ip(TARGET), [0; 4]), (1, host_ip(2), route)]
        {
            let inner = inner_datagram(host_ip(1), inner_dst, kind as u8 * 2 + transit, n);
            let mut payload = vxlan_header(vni, route).to_vec();
            payload.extend_from_slice(&inner);
            let ip = V4::new(IPPROTO_UDP, &src.to_string(), &dst.to_string());
            let f = ip_frame(
                atk.target_mac(wire)?,
                atk.attacker_mac(wire),
                &ip,
                &udp(50000, VXLAN_PORT, &payload),
            );
            atk.send(wire, &f)?;
        }
        Ok(())
    };
    let request = |atk: &AttackLab,
                   wire: u32,
                   src: Ipv4Addr,
                   ttl: u8,
                   kind: Request,
                   n: u32,
                   rng: &mut Rng|
     -> anyhow::Result<()> {
        let key = ProbeKey {
            k0: rng.next_u64(),
            k1: rng.next_u64(),
        };
        let h = ProbeHeader::request(
            &key,
            LINK,
            MARK_SEQ | (kind as u32) << 16 | n,
            monotonic_ns(),
        );
        let mut b = [0u8; PROBE_LEN];
        h.encode(&mut b);
        let mut ip = V4::new(IPPROTO_UDP, &src.to_string(), &target_ip.to_string());
        ip.ttl = ttl;
        let f = ip_frame(
            atk.target_mac(wire)?,
            atk.attacker_mac(wire),
            &ip,
            &udp(ATTACK_PORT, PROBE_PORT, &b),
        );
        atk.send(wire, &f)
    };
    let (mut controls_sent, mut request_controls_sent) = (0u64, 0u64);
    for n in 0..ROUNDS {
        for kind in SPOOFS {
            let (wire, src, v) = match kind {
                Spoof::Stranger => (LINK, stranger(rng), vni),
                Spoof::OtherPeer => (LINK, other_peer_ip, vni),
                Spoof::WrongVni => (LINK, peer_ip, other_vni),
                Spoof::WrongInterface => (OTHER_LINK, peer_ip, vni),
                Spoof::Genuine => unreachable!("not an attack"),
            };
            vxlan(atk, wire, src, target_ip, v, kind, n)?;
        }
        for kind in REQUESTS {
            let (wire, src, ttl) = match kind {
                Request::Stranger => (LINK, stranger(rng), PROBE_TTL),
                Request::OtherPeer => (LINK, other_peer_ip, PROBE_TTL),
                Request::Routed => (LINK, peer_ip, PROBE_TTL - 1),
                Request::WrongInterface => (OTHER_LINK, peer_ip, PROBE_TTL),
                Request::Genuine => unreachable!("not an attack"),
            };
            request(atk, wire, src, ttl, kind, n, rng)?;
        }
        if n % CONTROL_EVERY == 0 {
            vxlan(atk, LINK, peer_ip, target_ip, vni, Spoof::Genuine, n)?;
            controls_sent += 2;
            request(atk, LINK, peer_ip, PROBE_TTL, Request::Genuine, n, rng)?;
            request_controls_sent += 1;
        }
        if n % 10 == 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Let the genuine streams run on past the attack's last frames.
    std::thread::sleep(Duration::from_millis(500));
    let genuine = genuine
        .into_iter()
        .map(|s| s.finish())
        .collect::<Result<Vec<_>, _>>()?;
    let lan = lan.finish()?;
    let back = back.finish()?;
    let delivered = |kinds: &[Spoof]| -> u64 {
        kinds
            .iter()
            .flat_map(|k| [*k as u8 * 2, *k as u8 * 2 + 1])
            .map(|k| lan.get(&k).copied().unwrap_or(0))
            .sum()
    };
    let reflected = REQUESTS
        .iter()
        .map(|k| back.get(&(*k as u8)).copied().unwrap_or(0))
        .sum();
    Ok(Injection {
        vxlan_sent: u64::from(ROUNDS) * SPOOFS.len() as u64 * 2,
        vxlan_delivered: delivered(&SPOOFS),
        vxlan_dropped: reasons(lab, &vxlan_counters)? - vxlan_before,
        controls_sent,
        controls_delivered: delivered(&[Spoof::Genuine]),
        requests_sent: u64::from(ROUNDS) * REQUESTS.len() as u64,
        reflected,
        requests_dropped: reasons(lab, &probe_counters)? - probes_before,
        request_controls_sent,
        request_controls_reflected: back.get(&(Request::Genuine as u8)).copied().unwrap_or(0),
        genuine,
    })
}

/// Genuine streams' rate during the injection, datagrams/s.
const GENUINE_RATE: u32 = 1000;

/// Replies from the link's peer to the target, taken off the wire (the port the peer's
/// frames enter it by) for `for_`: what an eavesdropper replays later.
fn eavesdrop_replies(atk: &AttackLab, for_: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
    let wire = &atk.lab.wire(LINK).ns;
    let ifindex = wire.ifindex("to-b")?;
    let fd = wire.run_in(|| netlab::packet_socket(ifindex))??;
    let mut out = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < for_ {
        // SAFETY: recv into a buffer of the length passed (50 ms timeout on the socket).
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let f = &buf[..n as usize];
        let ip = &f[14.min(f.len())..];
        if f.len() >= 14 + 20 && f[12..14] == [0x08, 0x00] && ip[9] == IPPROTO_UDP {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if let Some(Ok(h)) = ip.get(ihl + 8..).map(ProbeHeader::decode) {
                let from_peer = ip[12..16] == underlay_ip(LINK, 1).octets();
                if h.kind == PROBE_KIND_REPLY && h.link_id == LINK && from_peer {
                    out.push(f.to_vec());
                }
            }
        }
    }
    ensure!(!out.is_empty(), "no reply of link {LINK} seen on its wire");
    Ok(out)
}

/// `frame` (an IPv4 probe) from the attacker's port, with its source address and TTL
/// replaced (the IPv4 checksum redone).
fn resent(atk: &AttackLab, frame: &[u8], src: Option<Ipv4Addr>, ttl: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[6..12].copy_from_slice(&atk.attacker_mac(LINK));
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if let Some(src) = src {
        f[26..30].copy_from_slice(&src.octets());
    }
    f[22] = ttl;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// A reply for the target's link, as the peer would reflect it, with `token` and send time.
fn forged_reply(
    atk: &AttackLab,
    seq: u32,
    tx_ns: u64,
    token: u64,
    src: Ipv4Addr,
    ttl: u8,
) -> anyhow::Result<Vec<u8>> {
    let h = ProbeHeader {
        kind: PROBE_KIND_REPLY,
        flags: 0,
        link_id: LINK,
        seq,
        tx_ns,
        token,
        mac: 0,
    };
    let mut b = [0u8; PROBE_LEN];
    h.encode(&mut b);
    let mut ip = V4::new(
        IPPROTO_UDP,
        &src.to_string(),
        &underlay_ip(LINK, TARGET).to_string(),
    );
    ip.ttl = ttl;
    Ok(ip_frame(
        atk.target_mac(LINK)?,
        atk.attacker_mac(LINK),
        &ip,
        &udp(PROBE_PORT, PROBE_PORT, &b),
    ))
}

/// Sends, for [`FORGE_FOR`], one forged reply of each kind every millisecond: no token, a
/// random token, the token of another key (claiming 500 ms of RTT), the eavesdropped genuine
/// replies replayed as they were, from a stranger and across a router; returns how many, and
/// the highest smoothed RTT of the link seen meanwhile.
fn forge(atk: &AttackLab, replayed: &[Vec<u8>], rng: &mut Rng) -> anyhow::Result<(u64, u64)> {
    let peer_ip = underlay_ip(LINK, 1);
    let (mut sent, mut max_srtt) = (0u64, 0u64);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < FORGE_FOR {
        let tx = monotonic_ns().saturating_sub(500_000_000);
        let seq = rng.next_u64() as u32;
        let other = ProbeKey {
            k0: rng.next_u64(),
            k1: rng.next_u64(),
        };
        let old = &replayed[n % replayed.len()];
        for f in [
            forged_reply(atk, seq, tx, 0, peer_ip, PROBE_TTL)?,
            forged_reply(atk, seq, tx, rng.next_u64(), peer_ip, PROBE_TTL)?,
            forged_reply(
                atk,
                seq,
                tx,
                probe_token(&other, LINK, seq, tx),
                peer_ip,
                PROBE_TTL,
            )?,
            resent(atk, old, None, PROBE_TTL),
            resent(atk, old, Some(stranger(rng)), PROBE_TTL),
            resent(atk, old, None, PROBE_TTL - 1),
        ] {
            atk.send(LINK, &f)?;
            sent += 1;
        }
        n += 1;
        max_srtt = max_srtt.max(atk.link_state()?.srtt_ns);
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((sent, max_srtt))
}

/// The control of a forged-probe trial: a reply made with the target's own key (which the
/// attacker does not have) through the same port must be recorded, or the trial proves
/// nothing.
fn keyed_reply_recorded(atk: &AttackLab) -> anyhow::Result<bool> {
    let keys: aya::maps::HashMap<MapData, u32, ProbeKey> = atk.maps().map(names::PROBE_KEYS)?;
    let key = keys.get(&LINK, 0)?;
    let before = atk.link_state()?.replies;
    let (seq, tx) = (MARK_SEQ, monotonic_ns() - 1_000_000);
    let f = forged_reply(
        atk,
        seq,
        tx,
        probe_token(&key, LINK, seq, tx),
        underlay_ip(LINK, 1),
        PROBE_TTL,
    )?;
    atk.send(LINK, &f)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if atk.link_state()?.replies > before {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(false)
}

/// Waits until the target's fast path takes `LINK` as usable.
fn wait_link_up(atk: &AttackLab) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !atk.fast_path_live()?.1 {
        ensure!(
            Instant::now() < deadline,
            "link {LINK} did not come back up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// What the forged-probe trials measured.
#[derive(Default)]
struct Forgery {
    /// Cut-link trials in which the link stayed usable: the fast path recorded a reply after
    /// the cut, or took the link as answering at the end.
    kept_up: u64,
    /// Trials in which the smoothed RTT moved: on the cut link any change (no genuine reply
    /// arrives), on the live link above [`RTT_MOVED_NS`].
    rtt_moved: u64,
    trials: u64,
    forged: u64,
    /// The target's bad-token, stale, stranger and TTL drops over the trials.
    dropped: u64,
    /// Genuine replies recorded during the live-link trials.
    genuine_replies: u64,
}

/// [`PROBE_TRIALS`] trials with `LINK` cut silently (the bridge drops the gateways' frames;
/// the attacker's port still reaches the target) and as many with it live, forged replies
/// flooding the target all along.
fn forged_probes(atk: &AttackLab, rng: &mut Rng) -> anyhow::Result<Forgery> {
    let lab = &atk.lab;
    let counters = [
        Reason::UnderlayProbeBadToken,
        Reason::UnderlayProbeStale,
        Reason::UnderlayProbeStranger,
        Reason::UnderlayProbeTtl,
    ];
    let mut out = Forgery::default();
    wait_link_up(atk)?;
    for t in 0..PROBE_TRIALS {
        let replayed = eavesdrop_replies(atk, Duration::from_millis(300))?;
        let dropped_before = reasons(lab, &counters)?;
        lab.wire(LINK).cut()?;
        // The last genuine replies in flight are in by then.
        std::thread::sleep(Duration::from_millis(50));
        let before = atk.link_state()?;
        let (sent, _) = forge(atk, &replayed, rng)?;
        let after = atk.link_state()?;
        let (answering, _) = atk.fast_path_live()?;
        out.dropped += reasons(lab, &counters)? - dropped_before;
        ensure!(
            keyed_reply_recorded(atk)?,
            "trial {t}: a reply with the target's key was not recorded: the attacker's frames \
             do not reach the probe handling"
        );
        out.kept_up += u64::from(after.replies != before.replies || answering);
        out.rtt_moved += u64::from(after.srtt_ns != before.srtt_ns);
        out.forged += sent;
        out.trials += 1;
        lab.wire(LINK).heal()?;
        wait_link_up(atk)?;
    }
    for t in 0..PROBE_TRIALS {
        let replayed = eavesdrop_replies(atk, Duration::from_millis(300))?;
        let dropped_before = reasons(lab, &counters)?;
        let before = atk.link_state()?;
        let (sent, max_srtt) = forge(atk, &replayed, rng)?;
        let after = atk.link_state()?;
        out.dropped += reasons(lab, &counters)? - dropped_before;
        ensure!(
            after.replies > before.replies,
            "live trial {t}: no genuine reply recorded while forging"
        );
        out.genuine_replies += after.replies - before.replies;
        out.rtt_moved += u64::from(max_srtt > RTT_MOVED_NS);
        out.forged += sent;
        out.trials += 1;
    }
    Ok(out)
}

/// Whether the API of an agent answers `GET /v1/status` over TLS while
/// [`IDLE_CONNECTIONS`] idle connections are held on its port and on its socket (each in
/// turn), and the slower answer's time in ms.
async fn api_under_idle_flood() -> anyhow::Result<(bool, f64)> {
    let h = Harness::start(Agent::Answers, true).await;
    let client = h.tcp(Some(TOKEN));
    let mut ok = true;
    let mut slowest = 0f64;
    for target in [
        FloodTarget::Tcp(h.tcp_addr()),
        FloodTarget::Unix(h.config.socket.clone().context("the API's socket")?),
    ] {
        let flood = under_idle_flood(
            &target,
            IDLE_CONNECTIONS,
            client.get::<StatusView>("/v1/status"),
        )
        .await?;
        ok &= flood.answer.is_ok() && flood.still_open == IDLE_CONNECTIONS;
        slowest = slowest.max(flood.took.as_secs_f64() * 1e3);
    }
    h.stop().await;
    Ok((ok, slowest))
}

/// Stream packets seen unencrypted on the underlay while the WireGuard hand-off is broken
/// ([`Teardown::ALL`], [`TEARDOWN_TRIALS`] times each), and the packets marked for the tunnel
/// after the teardowns (what had to be kept off the underlay).
async fn cleartext_leaked() -> anyhow::Result<(u64, u64, u32)> {
    let lab = FailClosedLab::build("atkfc").await?;
    let (mut leaked, mut marked, mut trials) = (0, 0, 0);
    let (per_ms, before, after) = TEARDOWN_STREAM;
    for t in 0..TEARDOWN_TRIALS {
        for (i, how) in Teardown::ALL.into_iter().enumerate() {
            let port = 7400 + (t as u16) * 8 + i as u16;
            lab.restore().await?;
            let r = lab.trial(how, port, per_ms, before, after).await?;
            eprintln!("fail closed, {}: {r:?}", how.name());
            // The controls: the capture saw the tunnel's traffic, and A marked packets for
            // it after the teardown.
            ensure!(
                r.encrypted_before > 0 && r.received > 0,
                "{}: the stream did not cross the tunnel before the teardown: {r:?}",
                how.name()
            );
            ensure!(
                r.marked_after > 0,
                "{}: nothing marked after the teardown: {r:?}",
                how.name()
            );
            leaked += r.cleartext;
            marked += r.marked_after;
            trials += 1;
        }
    }
    Ok((leaked, marked, trials))
}

/// The shipped settings of the probes (deploy/agent.toml, whose `[probe]` the prober unit
/// reads too): (sender, interval, detection multiplier, prober's real-time priority).
fn shipped_probe_settings() -> anyhow::Result<(ProbeSenderMode, Duration, u32, u8)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    let c = dwcp_control::AgentConfig::load(&path)?;
    Ok((
        c.probe_sender,
        c.monitor.interval,
        c.monitor.detect_multiplier,
        c.probe_rt_priority,
    ))
}

/// The three-region lab of real daemons with the shipped probe settings: every agent with
/// `dwcp-prober` beside it, started from the agent's configuration as the prober unit does.
fn shipped_lab() -> anyhow::Result<TriangleLab> {
    let (sender, interval, detect_multiplier, probe_rt_priority) = shipped_probe_settings()?;
    // The lab's agents keep the default probe interval: it must be the shipped one.
    ensure!(
        interval == dwcp_control::liveness::MonitorConfig::default().interval,
        "deploy/agent.toml sets a probe interval of {interval:?}: the lab does not"
    );
    let mut lab = TriangleLab::build(
        "atk",
        &dwcp_lab::bin("dwcp-agent"),
        TriangleOptions {
            probe_sender: sender,
            detect_multiplier,
            probe_rt_priority,
            ..Default::default()
        },
    )?;
    for r in 0..3 {
        lab.start_agent(r, &[])?;
        lab.start_prober(r)?;
    }
    lab.wait_event(0, "eu-west-1 over link 1", Duration::from_secs(60), |e| {
        matches!(e, AgentEvent::RouteChanged(c)
            if c.destination == "eu-west-1" && c.after.first().map(Vec::as_slice) == Some(&[1]))
    })?;
    Ok(lab)
}

/// A steady stream us-east-1 → eu-west-1 through the lab: without a kill (the baseline),
/// then with us-east-1's agent killed with SIGKILL after [`KILL_STREAM`]'s first part; the
/// agent is started again afterwards.
fn agent_kill_lost(lab: &mut TriangleLab) -> anyhow::Result<(StreamReport, StreamReport)> {
    let (rate, before, after) = KILL_STREAM;
    let baseline = UdpStream::start(lab, 0, 1, rate)?;
    std::thread::sleep(before + after);
    let baseline = baseline.finish()?;
    let stream = UdpStream::start(lab, 0, 1, rate)?;
    std::thread::sleep(before);
    lab.kill_agent(0)?;
    ensure!(lab.agent(0).is_none(), "the agent of us-east-1 still runs");
    std::thread::sleep(after);
    let killed = stream.finish()?;
    ensure!(
        killed.received > 0 && baseline.received > 0,
        "no stream crossed the lab: {baseline:?} {killed:?}"
    );
    lab.start_agent(0, &[])?;
    Ok((killed, baseline))
}

fn main() -> anyhow::Result<()> {
    let t0 = Instant::now();
    // The fuzz corpora, from the fuzz test's seed, in a namespace of their own.
    let ns = dwcp_lab::netlab::Netns::new("attacks")?;
    let (lan, underlay) = ns.run_in(|| -> anyhow::Result<_> {
        let mut gw = Gateway::load()?;
        let mut rng = Rng(SEED);
        let lan_corpus = corpus(&lan_seeds(), |f| f.to_vec(), &mut rng);
        let underlay_corpus = corpus(&underlay_seeds(&gw), transit, &mut rng);
        run_corpora(&mut gw, &lan_corpus, &underlay_corpus)
    })??;
    let xdp_time = t0.elapsed();
    let (api_ok, api_ms) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(api_under_idle_flood())?;
    let (leaked, marked_after, teardowns) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(cleartext_leaked())?;
    let (sender, interval, detect_multiplier, rt_priority) = shipped_probe_settings()?;
    let mut lab = shipped_lab()?;
    let (killed, baseline) = agent_kill_lost(&mut lab)?;
    eprintln!("agent kill: {killed:?}; baseline {baseline:?}");
    let atk = AttackLab::attach(lab)?;
    let mut rng = Rng(SEED);
    let t1 = Instant::now();
    let inj = inject(&atk, &mut rng)?;
    eprintln!(
        "injection: {} spoofed VXLAN, {} delivered, {} counted as drops; controls {} of {}; \
         {} requests, {} reflected, {} counted as drops; controls {} of {}; genuine {:?}",
        inj.vxlan_sent,
        inj.vxlan_delivered,
        inj.vxlan_dropped,
        inj.controls_delivered,
        inj.controls_sent,
        inj.requests_sent,
        inj.reflected,
        inj.requests_dropped,
        inj.request_controls_reflected,
        inj.request_controls_sent,
        inj.genuine
    );
    // The controls: the captures see what the target lets through.
    ensure!(
        inj.controls_delivered > 0 && inj.request_controls_reflected > 0,
        "the attacker's genuine-looking frames were not delivered or reflected: the captures \
         see nothing"
    );
    let forgery = forged_probes(&atk, &mut rng)?;
    let lab_time = t1.elapsed();
    let genuine_lost: u32 = inj.genuine.iter().map(StreamReport::lost_count).sum();
    let genuine_sent: u32 = inj.genuine.iter().map(|g| g.sent).sum();
    let misforwarded = lan.failures.len() + underlay.failures.len();
    for (program, tally) in [("LAN", &lan), ("underlay", &underlay)] {
        if !tally.failures.is_empty() {
            eprintln!(
                "{program}: cases that broke the invariant, e.g.\n{}",
                tally.examples()
            );
        }
    }
    let metrics: Vec<(&str, u64, String)> = vec![
        (
            "spoofed_vxlan_delivered",
            inj.vxlan_delivered,
            format!(
                "of {} spoofed VXLAN frames ({} counted by the target as wrong source or \
                 interface; genuine-looking controls delivered {} of {}; genuine streams lost \
                 {genuine_lost} of {genuine_sent})",
                inj.vxlan_sent, inj.vxlan_dropped, inj.controls_delivered, inj.controls_sent
            ),
        ),
        (
            "forged_probe_kept_up",
            forgery.kept_up,
            format!(
                "trials of {PROBE_TRIALS} on the cut link ({} forged or replayed replies in \
                 all {} trials, {} counted by the target as bad token, stale, stranger or TTL)",
                forgery.forged, forgery.trials, forgery.dropped
            ),
        ),
        (
            "forged_probe_rtt_moved",
            forgery.rtt_moved,
            format!(
                "trials of {} ({PROBE_TRIALS} cut, {PROBE_TRIALS} live; {} genuine replies \
                 recorded in the live ones)",
                forgery.trials, forgery.genuine_replies
            ),
        ),
        (
            "reflected_for_strangers",
            inj.reflected,
            format!(
                "of {} strangers' requests ({} counted by the target as stranger or TTL; \
                 the peer's own requests reflected {} of {})",
                inj.requests_sent,
                inj.requests_dropped,
                inj.request_controls_reflected,
                inj.request_controls_sent
            ),
        ),
        (
            "underlay_corpus_cases",
            underlay.cases as u64,
            "generated frames through the underlay program".into(),
        ),
        (
            "lan_corpus_cases",
            lan.cases as u64,
            "generated frames through the LAN program".into(),
        ),
        (
            "corpus_misforwarded",
            misforwarded as u64,
            "cases transmitted or redirected against the invariant (or aborted)".into(),
        ),
        (
            "api_ok_under_idle_flood",
            u64::from(api_ok),
            format!(
                "{IDLE_CONNECTIONS} idle connections on the TLS port, then on the socket; \
                 slower answer {api_ms:.1} ms"
            ),
        ),
        (
            "cleartext_leaked",
            leaked,
            format!(
                "stream packets on the underlay, in {teardowns} teardowns of the WireGuard \
                 hand-off ({marked_after} packets marked for it after them)"
            ),
        ),
        (
            "agent_kill_lost",
            u64::from(killed.lost_count()),
            format!(
                "of {} datagrams; the same stream without a kill lost {} of {}",
                killed.sent,
                baseline.lost_count(),
                baseline.sent
            ),
        ),
    ];
    println!("| metric | value | out of |");
    println!("|---|---:|---|");
    for (name, value, of) in &metrics {
        println!("| `{name}` | {value} | {of} |");
    }
    let sender = match sender {
        ProbeSenderMode::Agent => "agent",
        ProbeSenderMode::External => "external",
    };
    println!(
        "\nMethod: the attacks run in the three-region lab of real `dwcp-agent` daemons \
         (`lab::triangle`: network namespaces, each link a bridge in a namespace of its own, \
         each agent with `dwcp-prober` beside it, the shipped probe settings below). An \
         attacker namespace has a port on every link's bridge, beside the gateways' own, and \
         sends whole frames from AF_PACKET sockets; the gateway attacked is us-east-1 (link 1 \
         to eu-west-1, link 3 to ap-south-1). Spoofed VXLAN, {ROUNDS} rounds of: from a \
         stranger, from another peer's address (ap-south-1's on link 3), from link 1's peer \
         with link 3's VNI, and from link 1's peer on link 3's segment; each around an inner \
         datagram for us-east-1's host and one in transit (a source route on to ap-south-1). \
         Delivered counts the attacker's datagrams an AF_PACKET capture on every host's LAN \
         port saw; every {CONTROL_EVERY}th round also sends the same frames from link 1's \
         peer address on its own segment, which must arrive (an attacker on the peer's \
         segment can forge that much: only WireGuard links are authenticated). Two genuine \
         streams of {GENUINE_RATE} datagrams/s (eu-west-1 and ap-south-1 to us-east-1) run \
         meanwhile. Strangers' probe requests (a stranger, another peer naming link 1, link \
         1's peer with TTL 254, link 1's peer on link 3's segment; {ROUNDS} of each) count if \
         a reply reaches the attacker's ports; the peer's own request is the control. Forged \
         probes: {PROBE_TRIALS} trials with link 1 cut silently on its bridge (the attacker's \
         port still reaches us-east-1), forged replies flooding for {FORGE_FOR:?}, one each \
         millisecond of each kind: no token, a random token, another key's token claiming \
         500 ms, and genuine replies eavesdropped on the wire before the cut, replayed as they \
         were, from a stranger and with TTL 254. A trial keeps the link up if the fast path \
         recorded a reply after the cut or took the link as answering at the end (the \
         kernel's liveness rule on its `LINK_STATE`); it moves the RTT if the smoothed RTT \
         changed. Each trial ends with a reply made \
         with us-east-1's own key (which an attacker has not), which must be recorded. Then \
         {PROBE_TRIALS} trials with the link live and the same flood: the RTT moved if the \
         smoothed RTT exceeded {} ms. Every drop is also read from the target's per-reason \
         counters (`REASON_STATS`). The lab part took {:.1} s.\n\n\
         The corpora are the fuzz test's (every truncation, lying lengths, IPv4 options, IPv6 \
         extension chains, VLAN tags, byte flips, random bytes; fixed seed), run with \
         BPF_PROG_TEST_RUN, each verdict judged by etherparse; they took {:.1} s. The API is \
         the API tests' harness (TLS, token), asked for its status while {IDLE_CONNECTIONS} \
         connections that send nothing are held (100 per source address, from 20 sources: \
         one source may hold at most 256); 1 if it answered and shed none.\n\n\
         `cleartext_leaked`: gateway A hands a UDP stream from its LAN ({} datagram/ms) to a \
         wireguard-go tunnel by fwmark policy routing (the tunnel manager's hand-off; the mark \
         set by nftables), while A's main table routes everything else out of the underlay; \
         {:?} into the stream A's end is broken ({}; {TEARDOWN_TRIALS} trials each) and the \
         stream goes on for {:?}. An AF_PACKET capture on A's underlay port counts packets \
         from or to the LANs not inside WireGuard; every trial must first have seen WireGuard \
         traffic and the stream cross, and A mark packets after the teardown.\n\n\
         `agent_kill_lost`: the same lab, before the attacks, with the shipped probe settings \
         read from deploy/agent.toml (`probe.sender = \"{sender}\"`, interval {interval:?}, \
         detection after {detect_multiplier} intervals, prober real-time priority \
         {rt_priority} (0: normal scheduling); the prober started with `--config`, as \
         deploy/dwcp-prober.service starts it); a stream us-east-1 → eu-west-1 of {} \
         datagrams/s; us-east-1's agent gets SIGKILL {:?} into it and stays dead for the \
         remaining {:?}. The baseline is the same stream without the kill, just before.",
        RTT_MOVED_NS / 1_000_000,
        lab_time.as_secs_f64(),
        xdp_time.as_secs_f64(),
        TEARDOWN_STREAM.0,
        TEARDOWN_STREAM.1,
        Teardown::ALL.map(Teardown::name).join(", "),
        TEARDOWN_STREAM.2,
        KILL_STREAM.0,
        KILL_STREAM.1,
        KILL_STREAM.2,
    );
    let body = metrics
        .iter()
        .map(|(name, value, _)| format!("\"{name}\": {value}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("attacks.json"),
        format!("{{\"metrics\": {{{body}}}}}\n"),
    )?;
    Ok(())
}
