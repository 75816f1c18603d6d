//! The forwarding benchmark compares like with like only if both forwarders do the same job on
//! the same traffic: every frame the source sends crosses gateway A, VXLAN-encapsulated with one
//! of the group's two VNIs, split 2:1 by flow, by dwcp alone or by the kernel alone. Checked
//! here frame by frame at low rate (no timing), in namespaces this test creates and removes.

use std::time::{Duration, Instant};

use dwcp_common::Reason;
use dwcp_lab::forwarding_bench::lab::Forwarder;
use dwcp_lab::forwarding_bench::lab::ForwardingLab;
use dwcp_lab::forwarding_bench::lab::NEXT_HOPS;
use dwcp_lab::forwarding_bench::lab::{source_flows, weight_shares, GROUP};
use dwcp_lab::forwarding_bench::sink::SinkCounts;
use dwcp_lab::forwarding_bench::{BenchError, CpuPlan, LIVE_FRAMES_REFUSED};
use dwcp_lab::utilisation::flows_per_nexthop;
use dwcp_lab_ebpf::bench::FLOWS;

/// Frames per burst: less than the LAN veth's 256-frame ring, so none is dropped there.
const BURST: u32 = 128;
/// Frames each of the source's flows sends per forwarder. The source numbers the frames of one
/// CPU (`ForwardingLab::send` runs it on one) and gives them the flows' ports in turn, so
/// `FRAMES_PER_FLOW * FLOWS` frames in a row give every flow that many, wherever it started.
const FRAMES_PER_FLOW: u64 = 2;
const BURSTS: u32 = (FRAMES_PER_FLOW * FLOWS as u64 / BURST as u64) as u32;
/// The kernel's split can only be bounded: its multipath hash has a random key per namespace,
/// so each flow takes the weight-2 next hop with probability 2/3 (hash-threshold), and the
/// flows there are Binomial(256, 2/3), 170.7 on average. Outside ±30 of that (141 to 200) lies
/// 7e-5 of the distribution: a false failure in about 15,000 runs.
const KERNEL_SPLIT_MARGIN_FLOWS: f64 = 30.0;

/// A kernel that refuses live frames cannot run the harness: a visible skip. Anything else fails.
fn skip_or_fail(test: &str, e: BenchError) {
    if e.live_frames_refused() {
        dwcp_lab::skip(test, LIVE_FRAMES_REFUSED);
    } else {
        panic!("{test}: {e}");
    }
}

fn wait_for_sink(lab: &ForwardingLab, before: &SinkCounts, frames: u64) -> SinkCounts {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = lab.sink.counts().unwrap().since(before);
        if now.total() >= frames || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn both_forwarders_encapsulate_every_frame_and_split_it_by_weight() {
    let mut lab = ForwardingLab::build(CpuPlan::default()).unwrap();
    // dwcp's split is exact: the source's flows through the table and seed the program reads.
    let table = lab
        .dataplane()
        .group_table(GROUP)
        .unwrap()
        .expect("dwcp's group is programmed");
    let seed = lab.dataplane().config().unwrap().hash_seed;
    let ids: Vec<u32> = NEXT_HOPS.iter().map(|n| n.id).collect();
    let dwcp_split: Vec<u64> = flows_per_nexthop(&source_flows(), &table, seed, &ids)
        .iter()
        .map(|flows| flows * FRAMES_PER_FLOW)
        .collect();
    for f in Forwarder::ALL {
        lab.set_forwarder(f).unwrap();
        let dwcp_before = lab.dataplane().reason_count(Reason::LanForwarded).unwrap();
        let vx_before: u64 = NEXT_HOPS
            .iter()
            .map(|n| lab.link_stats(n.kernel_dev).unwrap().tx_packets)
            .sum();
        let before = lab.sink.counts().unwrap();
        let mut sent = 0u64;
        for _ in 0..BURSTS {
            if let Err(e) = lab.send(64, BURST) {
                return skip_or_fail(
                    "both_forwarders_encapsulate_every_frame_and_split_it_by_weight",
                    e,
                );
            }
            sent += BURST as u64;
            wait_for_sink(&lab, &before, sent);
        }
        let got = lab.sink.counts().unwrap().since(&before);
        assert_eq!(got.other(), 0, "{f}: frames that are not the group's VXLAN");
        assert_eq!(got.vxlan(), sent, "{f}: every frame forwarded, once");
        let split: Vec<u64> = NEXT_HOPS.iter().map(|n| got.vni(n.vni)).collect();
        assert_eq!(
            split.iter().sum::<u64>(),
            sent,
            "{f}: frames per VNI {split:?}"
        );
        match f {
            Forwarder::Dwcp => assert_eq!(split, dwcp_split, "dwcp: frames per next hop"),
            Forwarder::Kernel => {
                // A flow's frames take one next hop.
                assert_eq!(
                    split[0] % FRAMES_PER_FLOW,
                    0,
                    "kernel: frames per VNI {split:?}"
                );
                let flows = (split[0] / FRAMES_PER_FLOW) as f64;
                let expected = FLOWS as f64 * weight_shares()[0].1;
                assert!(
                    (flows - expected).abs() <= KERNEL_SPLIT_MARGIN_FLOWS,
                    "kernel: {flows} of {FLOWS} flows on VNI {}, {expected:.0} expected",
                    NEXT_HOPS[0].vni
                );
            }
        }

        let dwcp = lab.dataplane().reason_count(Reason::LanForwarded).unwrap() - dwcp_before;
        let vx: u64 = NEXT_HOPS
            .iter()
            .map(|n| lab.link_stats(n.kernel_dev).unwrap().tx_packets)
            .sum::<u64>()
            - vx_before;
        match f {
            Forwarder::Dwcp => assert_eq!((dwcp, vx), (sent, 0), "dwcp forwarded alone"),
            Forwarder::Kernel => assert_eq!((dwcp, vx), (0, sent), "the kernel forwarded alone"),
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_trial_conserves_frames_and_stops_its_source() {
    let mut lab = ForwardingLab::build(CpuPlan::default()).unwrap();
    for f in Forwarder::ALL {
        let t = match lab.run_trial(
            f,
            64,
            Duration::from_millis(200),
            Duration::from_millis(300),
        ) {
            Ok(t) => t,
            Err(e) => return skip_or_fail("a_trial_conserves_frames_and_stops_its_source", e),
        };
        assert!(t.forwarded_pps > 0.0, "{f}: nothing forwarded");
        // Counters are read in one order at both ends of the window, so what is downstream
        // never exceeds what is upstream by more than the frames in flight (two 256-frame
        // rings).
        let slack = 512.0 / t.seconds;
        assert!(t.offered_pps + slack >= t.received_pps, "{t:?}");
        assert!(t.received_pps + slack >= t.forwarded_pps, "{t:?}");
        let shares: f64 = t.vni_shares.iter().map(|(_, s)| s).sum();
        assert!((shares - 1.0).abs() < 1e-9, "{t:?}");
        assert_eq!(t.other_frames, 0);
        assert!(t.cpu_ns_per_packet.is_finite() && t.cpu_ns_per_packet > 0.0);
        if f == Forwarder::Dwcp {
            assert!(t.dwcp_forwarded_pps > 0.0);
        } else {
            assert_eq!(t.dwcp_forwarded_pps, 0.0);
        }
    }
    // The source stopped: its counter no longer moves.
    let sent = lab.source.sent().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(lab.source.sent().unwrap(), sent);
}
