//! Sequenced UDP streams across a lab, to see what a failover costs the traffic: a paced
//! sender stamps every datagram with its flow, sequence number and send time
//! (`CLOCK_MONOTONIC`, shared by all namespaces), the receiver records what arrived, and
//! [`delivery_gaps`] finds the runs of lost datagrams and how long each lasted.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use super::{LabError, Result};
use crate::netlab;
use crate::netlab::NetlabError;
use crate::netlab::Netns;
use dwcp_agent::probe::monotonic_ns;
use dwcp_agent::prober::set_realtime_priority;

const MAGIC: u32 = 0x4457_5351; // "DWSQ"
/// Datagram size: small, so the rate is limited by pacing, not by bytes.
pub const DATAGRAM_LEN: usize = 64;

/// One datagram that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// The sender's UDP source port: one flow (5-tuple) per port.
    pub flow: u16,
    pub seq: u32,
    pub tx_ns: u64,
    pub rx_ns: u64,
}

pub(crate) fn encode(flow: u16, seq: u32, tx_ns: u64) -> [u8; DATAGRAM_LEN] {
    let mut b = [0u8; DATAGRAM_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flow.to_be_bytes());
    b[6..10].copy_from_slice(&seq.to_be_bytes());
    b[10..18].copy_from_slice(&tx_ns.to_be_bytes());
    b
}

pub(crate) fn decode(b: &[u8]) -> Option<(u16, u32, u64)> {
    if b.len() < 18 || u32::from_be_bytes(b[0..4].try_into().ok()?) != MAGIC {
        return None;
    }
    Some((
        u16::from_be_bytes(b[4..6].try_into().ok()?),
        u32::from_be_bytes(b[6..10].try_into().ok()?),
        u64::from_be_bytes(b[10..18].try_into().ok()?),
    ))
}

fn enter_thread(ns: &Netns) -> Result<File> {
    File::open(ns.path()).map_err(|source| {
        LabError::Netlab(NetlabError::Enter {
            name: ns.name().to_string(),
            source,
        })
    })
}

fn socket_in(ns: &Netns, bind: SocketAddr) -> Result<UdpSocket> {
    ns.run_in(move || UdpSocket::bind(bind))?.map_err(|source| {
        LabError::Netlab(NetlabError::Spawn {
            cmd: format!("bind a UDP socket to {bind} in {}", ns.name()),
            source,
        })
    })
}

/// Records every stream datagram arriving at `addr` until stopped.
pub struct StreamReceiver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Arrival>>>,
}

impl StreamReceiver {
    /// Starts receiving at `addr` in `ns`; with `rt_priority` the thread runs in the
    /// `SCHED_FIFO` class so that a busy machine does not delay it.
    pub fn start(ns: &Netns, addr: SocketAddr, rt_priority: Option<i32>) -> Result<StreamReceiver> {
        let socket = socket_in(ns, addr)?;
        // Room for seconds of traffic: a receiver thread descheduled on a busy machine must
        // not turn into loss that the failover did not cause. (FORCE: above rmem_max, as root.)
        netlab::force_recv_buffer(&socket, 32 << 20).map_err(|source| NetlabError::Spawn {
            cmd: "set the receive buffer".into(),
            source,
        })?;
        // A short timeout so the thread notices `stop`; never blocks for long.
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(|source| NetlabError::Spawn {
                cmd: "set a read timeout".into(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Some(p) = rt_priority {
                let _ = set_realtime_priority(p);
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            let mut record = |n: usize, buf: &[u8]| {
                let rx_ns = monotonic_ns();
                if let Some((flow, seq, tx_ns)) = decode(&buf[..n]) {
                    got.push(Arrival {
                        flow,
                        seq,
                        tx_ns,
                        rx_ns,
                    });
                }
            };
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    record(n, &buf);
                }
            }
            // What arrived but was not read yet (the thread was behind) is not lost.
            if socket.set_nonblocking(true).is_ok() {
                while let Ok(n) = socket.recv(&mut buf) {
                    record(n, &buf);
                }
            }
            got
        });
        Ok(StreamReceiver {
            stop,
            thread: Some(thread),
        })
    }

    /// Waits `linger` for datagrams still in flight, stops and returns all arrivals.
    pub fn finish(mut self, linger: Duration) -> Vec<Arrival> {
        std::thread::sleep(linger);
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a paced sender sent: per flow, the send time of each sequence number.
#[derive(Clone, Debug, Default)]
pub struct SentLog {
    pub tx_ns: BTreeMap<u16, Vec<u64>>,
    pub send_errors: u64,
}

/// Sends datagrams from `src` to `dst` at `rate_pps` in total, round-robin over the flows
/// (one UDP source port each), from a thread inside `ns`, until stopped.
pub struct PacedSender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<SentLog>>,
}

impl PacedSender {
    /// With `rt_priority` the thread runs in the `SCHED_FIFO` class, so that the pacing holds
    /// on a busy machine (it sleeps between datagrams, so it does not hog a core).
    pub fn start(
        ns: &Netns,
        src: Ipv4Addr,
        flows: &[u16],
        dst: SocketAddr,
        rate_pps: u32,
        rt_priority: Option<i32>,
    ) -> Result<PacedSender> {
        let mut sockets = Vec::new();
        for &port in flows {
            sockets.push((port, socket_in(ns, SocketAddr::from((src, port)))?));
        }
        let ns_file = enter_thread(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (flag, counter) = (stop.clone(), sent.clone());
        let period_ns = 1_000_000_000 / rate_pps.max(1) as u64;
        let thread = std::thread::spawn(move || {
            let _ = netlab::enter(&ns_file);
            if let Some(p) = rt_priority {
                let _ = set_realtime_priority(p);
            }
            // Wake-ups within a microsecond of the deadline instead of the default 50 us
            // slack, or the pacing of 100 us periods would be mostly slack.
            // SAFETY: prctl on the calling thread with an integer argument.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64) };
            let mut log = SentLog::default();
            for (port, _) in &sockets {
                log.tx_ns.insert(*port, Vec::new());
            }
            let mut next = monotonic_ns();
            let mut i = 0usize;
            while !flag.load(Ordering::Relaxed) {
                sleep_until_ns(next);
                let (port, socket) = &sockets[i % sockets.len()];
                let seqs = log.tx_ns.get_mut(port).expect("flow logged");
                let tx_ns = monotonic_ns();
                let b = encode(*port, seqs.len() as u32, tx_ns);
                if socket.send_to(&b, dst).is_err() {
                    log.send_errors += 1;
                }
                seqs.push(tx_ns);
                counter.fetch_add(1, Ordering::Relaxed);
                i += 1;
                // Steady rate: deadlines on a fixed grid; after a stall, catch up at once
                // rather than bursting far ahead.
                next += period_ns;
                let now = monotonic_ns();
                if now > next + 100 * period_ns {
                    next = now;
                }
            }
            log
        });
        Ok(PacedSender {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> SentLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for PacedSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sleep_until_ns(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: absolute sleep on CLOCK_MONOTONIC (the clock of monotonic_ns); EINTR just
    // returns early, which the pacing loop tolerates.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// A run of consecutive sequence numbers of one flow that did not arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub flow: u16,
    pub first_lost: u32,
    /// Datagrams lost in the run.
    pub lost: u32,
    /// Send time of the first lost datagram.
    pub start_ns: u64,
    /// Send time of the first datagram that arrived after the run, if any did.
    pub end_ns: Option<u64>,
}

impl SentLog {
    /// The longest time between two consecutive datagrams (any flow) sent between `from_ns`
    /// and `to_ns`: a stalled sender makes a loss window look shorter than it was.
    pub fn longest_pause_ns(&self, from_ns: u64, to_ns: u64) -> u64 {
        let mut times: Vec<u64> = self
            .tx_ns
            .values()
            .flatten()
            .copied()
            .filter(|t| (from_ns..=to_ns).contains(t))
            .collect();
        times.sort_unstable();
        times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }
}

impl Gap {
    /// The loss window: from the first lost datagram to the first delivered one after it
    /// (both on the sender's clock, so the one-way delay cancels out).
    pub fn window_ns(&self) -> Option<u64> {
        self.end_ns.map(|e| e - self.start_ns)
    }
}

/// The runs of lost datagrams of every flow, in flow then sequence order. A datagram counts
/// as arrived if it arrived at all (late or duplicated ones too).
pub fn delivery_gaps(sent: &SentLog, arrivals: &[Arrival]) -> Vec<Gap> {
    let mut gaps = Vec::new();
    for (&flow, tx) in &sent.tx_ns {
        let mut got = vec![false; tx.len()];
        for a in arrivals.iter().filter(|a| a.flow == flow) {
            if let Some(g) = got.get_mut(a.seq as usize) {
                *g = true;
            }
        }
        let mut seq = 0usize;
        while seq < got.len() {
            if got[seq] {
                seq += 1;
                continue;
            }
            let first = seq;
            while seq < got.len() && !got[seq] {
                seq += 1;
            }
            gaps.push(Gap {
                flow,
                first_lost: first as u32,
                lost: (seq - first) as u32,
                start_ns: tx[first],
                end_ns: tx.get(seq).copied(),
            });
        }
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn datagram_round_trip_and_foreign_datagrams_ignored() {
        let b = encode(4000, 77, 123_456);
        assert_eq!(decode(&b), Some((4000, 77, 123_456)));
        assert_eq!(decode(&b[..17]), None);
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(decode(&bad), None);
    }

    fn log(flow: u16, n: usize) -> SentLog {
        let mut l = SentLog::default();
        l.tx_ns
            .insert(flow, (0..n as u64).map(|i| 1000 + i * 100).collect());
        l
    }

    fn arr(flow: u16, seq: u32) -> Arrival {
        Arrival {
            flow,
            seq,
            tx_ns: 0,
            rx_ns: 0,
        }
    }

    #[test]
    fn gaps_with_their_windows() {
        let sent = log(1, 10);
        // Lost: 2..=4 and 9 (the last: no end).
        let got: Vec<Arrival> = [0, 1, 5, 6, 7, 8].iter().map(|&s| arr(1, s)).collect();
        let gaps = delivery_gaps(&sent, &got);
        assert_eq!(
            gaps,
            [
                Gap {
                    flow: 1,
                    first_lost: 2,
                    lost: 3,
                    start_ns: 1200,
                    end_ns: Some(1500)
                },
                Gap {
                    flow: 1,
                    first_lost: 9,
                    lost: 1,
                    start_ns: 1900,
                    end_ns: None
                },
            ]
        );
        assert_eq!(gaps[0].window_ns(), Some(300));
        // Another flow's arrivals and unknown sequence numbers do not fill gaps.
        let other: Vec<Arrival> = vec![arr(2, 3), arr(1, 99)];
        assert_eq!(delivery_gaps(&sent, &other).len(), 1);
        assert_eq!(delivery_gaps(&sent, &other)[0].lost, 10);
    }

    #[test]
    fn longest_pause_within_a_span() {
        let mut l = log(1, 5); // 1000, 1100, 1200, 1300, 1400
        l.tx_ns.insert(2, vec![1150, 1390]);
        assert_eq!(l.longest_pause_ns(0, 10_000), 100);
        assert_eq!(l.longest_pause_ns(1150, 1300), 100);
        l.tx_ns.get_mut(&1).unwrap().push(2000);
        assert_eq!(l.longest_pause_ns(0, 10_000), 600);
        assert_eq!(l.longest_pause_ns(0, 1500), 100);
    }

    proptest! {
        /// Against the obvious oracle: every lost sequence number is in exactly one gap, no
        /// arrived one is, and gaps are maximal runs.
        #[test]
        fn gaps_cover_exactly_the_lost_datagrams(arrived in proptest::collection::vec(any::<bool>(), 0..200)) {
            let sent = log(7, arrived.len());
            let got: Vec<Arrival> = arrived.iter().enumerate().filter(|(_, a)| **a).map(|(i, _)| arr(7, i as u32)).collect();
            let gaps = delivery_gaps(&sent, &got);
            let mut covered = vec![false; arrived.len()];
            for g in &gaps {
                for s in g.first_lost..g.first_lost + g.lost {
                    prop_assert!(!covered[s as usize]);
                    covered[s as usize] = true;
                }
                let end = (g.first_lost + g.lost) as usize;
                prop_assert!(end == arrived.len() || arrived[end]);
                prop_assert!(g.first_lost == 0 || arrived[g.first_lost as usize - 1]);
                prop_assert_eq!(g.end_ns.is_some(), end < arrived.len());
            }
            for (i, a) in arrived.iter().enumerate() {
                prop_assert_eq!(covered[i], !a);
            }
        }
    }
}
