//! Counter snapshots around a measurement window, and what they say: offered, received and
//! forwarded packets/s, how the forwarded packets split over the next hops, and the CPU the
//! gateway spent per forwarded packet.

use std::time::Instant;

use super::{cpu::SchedTimes, lab::Forwarder, sink::SinkCounts};

/// Every counter of one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    /// Frames the source program emitted.
    pub offered: u64,
    /// Frames gateway A's LAN interface received (the kernel's interface counter).
    pub gateway_rx: u64,
    /// Frames gateway A could not hand to the sink (its ring was full), from the underlay
    /// interface's `tx_dropped` (which counts this for skbs and XDP frames alike).
    pub gateway_tx_dropped: u64,
    /// Frames at the sink.
    pub sink: SinkCounts,
    /// Gateway A's NAPI thread (all of its forwarding work).
    pub gateway: SchedTimes,
    /// The sink's NAPI thread.
    pub sink_thread: SchedTimes,
    /// dwcp's `lan_forwarded` counter (0 while the kernel forwards).
    pub dwcp_forwarded: u64,
}

/// One measurement window of one forwarder at one packet size.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialResult {
    pub forwarder: Forwarder,
    /// UDP payload bytes of the source's frames.
    pub payload: usize,
    pub seconds: f64,
    /// Frames/s the source emitted towards gateway A.
    pub offered_pps: f64,
    /// Frames/s gateway A's LAN interface took in (the rest was dropped at its receive ring).
    pub received_pps: f64,
    /// VXLAN frames/s that reached the sink: what gateway A forwarded.
    pub forwarded_pps: f64,
    /// Frames/s gateway A forwarded that the sink had no room for (then the sink, not the
    /// gateway, would be the bottleneck).
    pub lost_to_sink_pps: f64,
    /// Share of the forwarded frames per VNI (next hop), in the order asked for.
    pub vni_shares: Vec<(u32, f64)>,
    /// Frames at the sink that were not VXLAN with an expected VNI.
    pub other_frames: u64,
    /// Gateway A's NAPI thread's CPU time / wall time (1.0 = one CPU fully busy).
    pub gateway_busy: f64,
    /// Share of the window gateway A's NAPI thread was running or waiting for its CPU; 1.0
    /// means it never ran out of packets (the source kept it saturated), and
    /// `gateway_runnable - gateway_busy` is what other tasks took of its CPU.
    pub gateway_runnable: f64,
    /// Gateway A's CPU time per forwarded packet, ns.
    pub cpu_ns_per_packet: f64,
    /// The sink's NAPI thread's CPU time / wall time.
    pub sink_busy: f64,
    /// dwcp's own count of forwarded packets/s (0 for the kernel).
    pub dwcp_forwarded_pps: f64,
}

impl TrialResult {
    pub fn between(
        forwarder: Forwarder,
        payload: usize,
        vnis: &[u32],
        a: &Snapshot,
        b: &Snapshot,
    ) -> TrialResult {
        let seconds = b.at.duration_since(a.at).as_secs_f64();
        let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / seconds;
        let sink = b.sink.since(&a.sink);
        let expected: u64 = vnis.iter().map(|v| sink.vni(*v)).sum();
        let forwarded = expected;
        let gateway_ns = b.gateway.run_ns.saturating_sub(a.gateway.run_ns);
        let gateway_wait_ns = b.gateway.wait_ns.saturating_sub(a.gateway.wait_ns);
        TrialResult {
            forwarder,
            payload,
            seconds,
            offered_pps: per_s(a.offered, b.offered),
            received_pps: per_s(a.gateway_rx, b.gateway_rx),
            forwarded_pps: forwarded as f64 / seconds,
            lost_to_sink_pps: per_s(a.gateway_tx_dropped, b.gateway_tx_dropped),
            vni_shares: vnis
                .iter()
                .map(|v| (*v, share(sink.vni(*v), forwarded)))
                .collect(),
            other_frames: sink.vxlan() - expected + sink.other(),
            gateway_busy: gateway_ns as f64 / (seconds * 1e9),
            gateway_runnable: (gateway_ns + gateway_wait_ns) as f64 / (seconds * 1e9),
            cpu_ns_per_packet: if forwarded == 0 {
                f64::NAN
            } else {
                gateway_ns as f64 / forwarded as f64
            },
            sink_busy: b.sink_thread.run_ns.saturating_sub(a.sink_thread.run_ns) as f64
                / (seconds * 1e9),
            dwcp_forwarded_pps: per_s(a.dwcp_forwarded, b.dwcp_forwarded),
        }
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The medians (and the range of forwarded packets/s) of one forwarder's trials at one size.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub forwarder: Forwarder,
    pub payload: usize,
    pub trials: usize,
    pub offered_pps: f64,
    pub received_pps: f64,
    pub forwarded_pps: f64,
    pub forwarded_pps_min: f64,
    pub forwarded_pps_max: f64,
    pub lost_to_sink_pps: f64,
    pub gateway_busy: f64,
    pub gateway_runnable: f64,
    pub cpu_ns_per_packet: f64,
    pub sink_busy: f64,
    pub dwcp_forwarded_pps: f64,
    /// Median share of each VNI.
    pub vni_shares: Vec<(u32, f64)>,
    /// Most non-VXLAN (or unexpected VNI) frames the sink saw in one trial.
    pub other_frames_max: u64,
}

impl Summary {
    /// Summary of the trials of `forwarder` at `payload`, if there are any.
    pub fn of(trials: &[TrialResult], forwarder: Forwarder, payload: usize) -> Option<Summary> {
        let ts: Vec<&TrialResult> = trials
            .iter()
            .filter(|t| t.forwarder == forwarder && t.payload == payload)
            .collect();
        let first = ts.first()?;
        let m = |f: fn(&TrialResult) -> f64| median(&ts.iter().map(|t| f(t)).collect::<Vec<_>>());
        let fwd: Vec<f64> = ts.iter().map(|t| t.forwarded_pps).collect();
        Some(Summary {
            forwarder,
            payload,
            trials: ts.len(),
            offered_pps: m(|t| t.offered_pps),
            received_pps: m(|t| t.received_pps),
            forwarded_pps: median(&fwd),
            forwarded_pps_min: fwd.iter().copied().fold(f64::INFINITY, f64::min),
            forwarded_pps_max: fwd.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            lost_to_sink_pps: m(|t| t.lost_to_sink_pps),
            gateway_busy: m(|t| t.gateway_busy),
            gateway_runnable: m(|t| t.gateway_runnable),
            cpu_ns_per_packet: m(|t| t.cpu_ns_per_packet),
            sink_busy: m(|t| t.sink_busy),
            dwcp_forwarded_pps: m(|t| t.dwcp_forwarded_pps),
            vni_shares: first
                .vni_shares
                .iter()
                .enumerate()
                .map(|(i, (vni, _))| {
                    let shares: Vec<f64> = ts.iter().map(|t| t.vni_shares[i].1).collect();
                    (*vni, median(&shares))
                })
                .collect(),
            other_frames_max: ts.iter().map(|t| t.other_frames).max().unwrap_or(0),
        })
    }

    /// Packets/s the gateway would forward with a whole CPU (1 s / CPU time per packet).
    pub fn pps_per_cpu(&self) -> f64 {
        1e9 / self.cpu_ns_per_packet
    }
}

/// Per-round ratios `f(a) / f(b)` of two forwarders' trials at `payload` (trials are paired in
/// the order they ran: round 1 with round 1, ...), and their median.
pub fn paired_ratio(
    trials: &[TrialResult],
    payload: usize,
    a: Forwarder,
    b: Forwarder,
    f: fn(&TrialResult) -> f64,
) -> (Vec<f64>, f64) {
    let pick = |w: Forwarder| {
        trials
            .iter()
            .filter(move |t| t.forwarder == w && t.payload == payload)
            .map(f)
    };
    let ratios: Vec<f64> = pick(a).zip(pick(b)).map(|(x, y)| x / y).collect();
    let m = median(&ratios);
    (ratios, m)
}

/// Median of `values` (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn snap(at: Instant, secs: u64, f: impl FnOnce(&mut Snapshot)) -> Snapshot {
        let mut s = Snapshot {
            at: at + Duration::from_secs(secs),
            offered: 0,
            gateway_rx: 0,
            gateway_tx_dropped: 0,
            sink: SinkCounts {
                slots: vec![0; dwcp_lab_ebpf::bench::SINK_SLOTS as usize],
            },
            gateway: SchedTimes::default(),
            sink_thread: SchedTimes::default(),
            dwcp_forwarded: 0,
        };
        f(&mut s);
        s
    }

    #[test]
    fn rates_shares_and_cpu_per_packet() {
        let t = Instant::now();
        let a = snap(t, 0, |s| {
            s.offered = 1_000;
            s.gateway.run_ns = 5_000;
            s.gateway.wait_ns = 1_000;
            s.sink.slots[11] = 100;
        });
        let b = snap(t, 2, |s| {
            s.offered = 6_001_000;
            s.gateway_rx = 4_000_000;
            s.gateway_tx_dropped = 93;
            s.gateway.run_ns = 5_000 + 1_800_000_000;
            s.gateway.wait_ns = 1_000 + 100_000_000;
            s.sink_thread.run_ns = 400_000_000;
            s.sink.slots[11] = 100 + 2_000_000;
            s.sink.slots[12] = 1_000_000;
            s.sink.slots[13] = 5; // a VNI nobody asked for
            s.sink.slots[0] = 2;
            s.dwcp_forwarded = 3_000_000;
        });
        let r = TrialResult::between(Forwarder::Dwcp, 64, &[11, 12], &a, &b);
        assert_eq!(r.seconds, 2.0);
        assert_eq!(r.offered_pps, 3_000_000.0);
        assert_eq!(r.received_pps, 2_000_000.0);
        assert_eq!(r.forwarded_pps, 1_500_000.0);
        assert_eq!(r.lost_to_sink_pps, 46.5);
        assert_eq!(r.vni_shares[0].0, 11);
        assert!((r.vni_shares[0].1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.vni_shares[1].1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.other_frames, 7);
        assert!((r.gateway_busy - 0.9).abs() < 1e-12);
        assert!((r.gateway_runnable - 0.95).abs() < 1e-12);
        assert!((r.cpu_ns_per_packet - 600.0).abs() < 1e-9);
        assert!((r.sink_busy - 0.2).abs() < 1e-12);
        assert_eq!(r.dwcp_forwarded_pps, 1_500_000.0);
    }

    #[test]
    fn nothing_forwarded_gives_no_cpu_per_packet() {
        let t = Instant::now();
        let a = snap(t, 0, |_| {});
        let b = snap(t, 1, |s| s.gateway.run_ns = 10);
        let r = TrialResult::between(Forwarder::Kernel, 64, &[11], &a, &b);
        assert_eq!(r.forwarded_pps, 0.0);
        assert!(r.cpu_ns_per_packet.is_nan());
        assert_eq!(r.vni_shares, vec![(11, 0.0)]);
    }

    fn trial(f: Forwarder, payload: usize, fwd: f64, ns: f64) -> TrialResult {
        TrialResult {
            forwarder: f,
            payload,
            seconds: 1.0,
            offered_pps: 3.0 * fwd,
            received_pps: fwd,
            forwarded_pps: fwd,
            lost_to_sink_pps: 0.0,
            vni_shares: vec![(11, 0.6), (12, 0.4)],
            other_frames: fwd as u64 % 3,
            gateway_busy: 0.9,
            gateway_runnable: 0.95,
            cpu_ns_per_packet: ns,
            sink_busy: 0.5,
            dwcp_forwarded_pps: 0.0,
        }
    }

    #[test]
    fn summaries_and_paired_ratios() {
        let (d, k) = (Forwarder::Dwcp, Forwarder::Kernel);
        let trials = vec![
            trial(d, 64, 2.0e6, 450.0),
            trial(k, 64, 0.5e6, 1800.0),
            trial(d, 1400, 1.0e6, 900.0),
            trial(d, 64, 1.0e6, 500.0),
            trial(k, 64, 0.4e6, 2000.0),
            trial(d, 64, 3.0e6, 400.0),
            trial(k, 64, 0.6e6, 2200.0),
        ];
        let s = Summary::of(&trials, d, 64).unwrap();
        assert_eq!(s.trials, 3);
        assert_eq!(s.forwarded_pps, 2.0e6);
        assert_eq!((s.forwarded_pps_min, s.forwarded_pps_max), (1.0e6, 3.0e6));
        assert_eq!(s.cpu_ns_per_packet, 450.0);
        assert_eq!(s.offered_pps, 6.0e6);
        assert_eq!(s.vni_shares, vec![(11, 0.6), (12, 0.4)]);
        assert_eq!(s.other_frames_max, 2);
        assert!((s.pps_per_cpu() - 1e9 / 450.0).abs() < 1e-6);
        assert!(Summary::of(&trials, k, 1400).is_none());
        // Round by round: 2.0/0.5, 1.0/0.4, 3.0/0.6.
        let (r, m) = paired_ratio(&trials, 64, d, k, |t| t.forwarded_pps);
        assert_eq!(r, vec![4.0, 2.5, 5.0]);
        assert_eq!(m, 4.0);
        let (_, cpu) = paired_ratio(&trials, 64, k, d, |t| t.cpu_ns_per_packet);
        assert_eq!(cpu, 4.0);
    }

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
