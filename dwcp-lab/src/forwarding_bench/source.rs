//! The traffic source: an XDP program run through BPF_PROG_TEST_RUN with live frames
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`) in the source namespace. Every run hands the program a fresh
//! copy of one frame as if it had been received on the source veth; the program numbers it,
//! gives it one of `bench::FLOWS` UDP source ports and returns `XDP_TX`, so the kernel
//! transmits it out of the source veth into the gateway's LAN veth. No socket, no skb: one
//! core offers several Mpps, more than either gateway forwards (the benchmark checks that).

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Once,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use dwcp_common::wire::*;
use dwcp_lab_ebpf::bench::{self, FrameHeaders};

use super::{BenchError, Result};
use crate::LAB_EBPF_OBJECT;

/// UDP destination port of the source's frames.
pub const DST_PORT: u16 = 5001;
/// Runs of the program per BPF_PROG_TEST_RUN call while sending until stopped: as many as the
/// kernel takes (many minutes at the rates seen here); [`Stop`] interrupts the call. Every call
/// sets up and tears down a page pool, and the teardown sleeps for tens of milliseconds (an RCU
/// grace period), during which the gateway would run dry: one call per measurement avoids it.
const RUNS_UNTIL_STOPPED: u32 = u32::MAX;
/// The signal that interrupts a running source's system call (it has a no-op handler, so
/// BPF_PROG_TEST_RUN returns EINTR).
pub const INTERRUPT_SIGNAL: libc::c_int = libc::SIGUSR1;
/// How long [`Stop::stop_and_wait`] keeps interrupting before it gives up.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames the kernel runs through the program before it flushes them to the device. Smaller
/// than the largest (256): the gateway's 256-frame ring is topped up more often, so it runs dry
/// less when the sink preempts the source (measured: dwcp's gateway runnable 0.87 with 256,
/// 0.94 with 64), at a higher cost per frame that the source can afford.
pub const BATCH: u32 = 64;
/// Largest frame BPF_PROG_TEST_RUN accepts in live mode (a page less head- and tailroom),
/// rounded down.
pub const MAX_FRAME: usize = 3_000;

/// An Ethernet / IPv4 / UDP frame from `src` to `dst` with `payload` bytes of UDP payload,
/// UDP source port `bench::SPORT_BASE` and a zero (absent) UDP checksum, so that the source
/// program can change the port without touching a checksum.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: usize,
) -> Result<Vec<u8>> {
    let frame_len = ETH_HLEN + IPV4_HLEN + UDP_HLEN + payload;
    if frame_len > MAX_FRAME {
        return Err(BenchError::PayloadTooLarge {
            payload,
            max: MAX_FRAME - (ETH_HLEN + IPV4_HLEN + UDP_HLEN),
        });
    }
    let ip_len = (IPV4_HLEN + UDP_HLEN + payload) as u16;
    let udp_len = (UDP_HLEN + payload) as u16;
    let mut f = Vec::with_capacity(frame_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = [0u8; IPV4_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let check = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&bench::SPORT_BASE.to_be_bytes());
    f.extend_from_slice(&DST_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload).map(|i| i as u8));
    Ok(f)
}

/// RFC 1071 checksum of an IPv4 header whose checksum field is zero.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The source program, loaded (not attached: it runs only under BPF_PROG_TEST_RUN).
pub struct TrafficSource {
    ebpf: Ebpf,
    sent: PerCpuArray<MapData, u64>,
    template: Array<MapData, FrameHeaders>,
    ifindex: u32,
}

impl TrafficSource {
    /// Loads the source program for the source veth `ifindex`.
    pub fn load(ifindex: u32) -> Result<TrafficSource> {
        let mut ebpf = EbpfLoader::new().load(LAB_EBPF_OBJECT)?;
        let prog: &mut Xdp = xdp_program_mut(&mut ebpf, bench::TX_PROGRAM)?;
        prog.load()
            .map_err(BenchError::program(bench::TX_PROGRAM))?;
        let map = ebpf
            .take_map(bench::TX_MAP)
            .ok_or(BenchError::MissingMap(bench::TX_MAP))?;
        let sent = PerCpuArray::try_from(map).map_err(BenchError::map(bench::TX_MAP))?;
        let map = ebpf
            .take_map(bench::TEMPLATE_MAP)
            .ok_or(BenchError::MissingMap(bench::TEMPLATE_MAP))?;
        let template = Array::try_from(map).map_err(BenchError::map(bench::TEMPLATE_MAP))?;
        Ok(TrafficSource {
            ebpf,
            sent,
            template,
            ifindex,
        })
    }

    /// Frames the program has emitted so far (summed over CPUs).
    pub fn sent(&self) -> Result<u64> {
        let v = self
            .sent
            .get(&0, 0)
            .map_err(BenchError::map(bench::TX_MAP))?;
        Ok(v.iter().sum())
    }

    /// Makes `frame`'s headers the ones the program writes into every frame it sends.
    pub fn set_template(&mut self, frame: &[u8]) -> Result<()> {
        let headers: FrameHeaders = frame
            .get(..bench::HEADERS_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(BenchError::FrameTooShort {
                len: frame.len(),
                min: bench::HEADERS_LEN,
            })?;
        self.template
            .set(0, headers, 0)
            .map_err(BenchError::map(bench::TEMPLATE_MAP))
    }

    /// Sends `frame` `runs` times; its headers must be the template's
    /// ([`TrafficSource::set_template`]). The calling thread must be in the source's namespace
    /// (the kernel resolves the interface there).
    pub fn send(&self, frame: &[u8], runs: u32) -> Result<()> {
        let prog: &Xdp = self
            .ebpf
            .program(bench::TX_PROGRAM)
            .ok_or_else(|| {
                BenchError::program(bench::TX_PROGRAM)(aya::programs::ProgramError::NotLoaded)
            })?
            .try_into()
            .map_err(BenchError::program(bench::TX_PROGRAM))?;
        let ctx = xdp_md(frame.len(), self.ifindex);
        // In live mode the kernel reports no verdict (retval stays 0): what the program did
        // shows in its counter and at the far end.
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: runs,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        })
        .map_err(BenchError::program(bench::TX_PROGRAM))?;
        Ok(())
    }

    /// Sends `frame` as fast as one core can until `stop` asks it to end. Runs on the calling
    /// thread, which must be in the source's namespace.
    pub fn send_until(&self, frame: &[u8], stop: &Stop) -> Result<()> {
        install_interrupt_handler()?;
        // SAFETY: pthread_self has no preconditions.
        stop.sender
            .store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
        let r = (|| {
            while !stop.requested.load(Ordering::SeqCst) {
                match self.send(frame, RUNS_UNTIL_STOPPED) {
                    Ok(()) => {}
                    Err(e) if is_interrupted(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })();
        stop.finished.store(true, Ordering::SeqCst);
        r
    }
}

/// Whether `e` is BPF_PROG_TEST_RUN interrupted by a signal.
fn is_interrupted(e: &BenchError) -> bool {
    match e {
        BenchError::Program { source, .. } => matches!(
            source.as_ref(),
            aya::programs::ProgramError::SyscallError(s)
                if s.io_error.raw_os_error() == Some(libc::EINTR)
        ),
        _ => false,
    }
}

/// Ends a [`TrafficSource::send_until`] running on another thread.
#[derive(Debug, Default)]
pub struct Stop {
    requested: AtomicBool,
    /// `pthread_t` of the sending thread, once it has started.
    sender: AtomicU64,
    finished: AtomicBool,
}

impl Stop {
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Asks the sender to stop, without waiting (it stops at the next interruption).
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Asks the sender to stop and interrupts its system call until it has returned (again
    /// and again: a signal that lands just before the call would be lost). Gives up after a
    /// few seconds, and returns whether the sender finished.
    pub fn stop_and_wait(&self) -> bool {
        self.request();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.finished.load(Ordering::SeqCst) && Instant::now() < deadline {
            let thread = self.sender.load(Ordering::SeqCst);
            if thread != 0 {
                // SAFETY: the thread is alive until it has set `finished` (its caller joins
                // it only after this returns).
                unsafe { libc::pthread_kill(thread as libc::pthread_t, INTERRUPT_SIGNAL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.finished.load(Ordering::SeqCst)
    }

    /// Marks a sender that never started (failed before sending) as finished.
    pub fn mark_finished(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }
}

extern "C" fn on_interrupt(_: libc::c_int) {}

/// A no-op handler for [`INTERRUPT_SIGNAL`], without `SA_RESTART`, so the signal interrupts
/// the source's system call instead of killing the process.
fn install_interrupt_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    static mut RESULT: i32 = 0;
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask; RESULT is written
        // only here, inside call_once.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            RESULT = libc::sigaction(INTERRUPT_SIGNAL, &action, std::ptr::null_mut());
        }
    });
    // SAFETY: read after call_once has completed.
    if unsafe { RESULT } != 0 {
        return Err(BenchError::Io {
            what: "installing the source's interrupt handler".into(),
            source: std::io::Error::other("sigaction failed"),
        });
    }
    Ok(())
}

/// The XDP program `name` of `ebpf`.
pub(super) fn xdp_program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| BenchError::program(name)(aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(BenchError::program(name))
}

/// `struct xdp_md` for BPF_PROG_TEST_RUN: no metadata (`data` = 0), `data_end` = the frame's
/// length (the kernel insists), and the interface the frame counts as received on (where
/// `XDP_TX` sends it).
fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0u32, frame_len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frames_are_well_formed() {
        let (s, d) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        for payload in [0usize, 18, 64, 1400] {
            let f = udp_frame(
                s,
                d,
                "10.1.0.2".parse().unwrap(),
                "10.2.0.2".parse().unwrap(),
                payload,
            )
            .unwrap();
            assert_eq!(f.len(), 42 + payload);
            let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(h.time_to_live, 64);
            assert_eq!(h.total_len as usize, 28 + payload);
            let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            assert_eq!(udp.source_port(), bench::SPORT_BASE);
            assert_eq!(udp.destination_port(), DST_PORT);
            assert_eq!(udp.length() as usize, 8 + payload);
            assert_eq!(udp.checksum(), 0);
            assert_eq!(udp.payload().len(), payload);
            // The program rewrites the port at this offset.
            assert_eq!(
                &f[bench::SPORT_OFFSET..bench::SPORT_OFFSET + 2],
                &bench::SPORT_BASE.to_be_bytes()
            );
        }
        assert!(matches!(
            udp_frame(s, d, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 4000),
            Err(BenchError::PayloadTooLarge { payload: 4000, .. })
        ));
    }

    /// The constants the source program and this side share (dwcp-lab-ebpf's lib).
    #[test]
    fn source_ports_cycle_through_the_flows_and_headers_are_42_bytes() {
        use bench::{source_port, FLOWS, HEADERS_LEN, SPORT_BASE};
        assert_eq!(source_port(0), SPORT_BASE);
        assert_eq!(source_port(FLOWS as u64 - 1), SPORT_BASE + FLOWS as u16 - 1);
        assert_eq!(source_port(FLOWS as u64), SPORT_BASE);
        assert!(FLOWS.is_power_of_two());
        assert_eq!(HEADERS_LEN, 42);
        assert_eq!(size_of::<FrameHeaders>(), HEADERS_LEN);
    }

    #[test]
    fn xdp_md_layout() {
        let md = xdp_md(106, 7);
        assert_eq!(md.len(), 24);
        assert_eq!(u32::from_ne_bytes(md[4..8].try_into().unwrap()), 106);
        assert_eq!(u32::from_ne_bytes(md[12..16].try_into().unwrap()), 7);
    }
}
