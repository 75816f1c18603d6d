//! The utilisation lab through real kernels: gateway A's fast path splits flows exactly as the
//! userspace prediction (hash + bucket table) says, every forwarded frame crosses its path's
//! shaper, and an iperf3 run is read back per stream. Namespaces are removed on drop.

use dwcp_dataplane::Member;
use dwcp_lab::lab::LAB_SEED;
use dwcp_lab::utilisation::flows_per_nexthop;
use dwcp_lab::utilisation::iperf::IPERF_PORT;
use dwcp_lab::utilisation::nexthop_of;
use dwcp_lab::utilisation::shaped_lab::ShapedPathsLab;
use dwcp_lab::utilisation::shaped_lab::HOST_A_IP;
use dwcp_lab::utilisation::shaped_lab::HOST_B_IP;
use dwcp_lab::utilisation::IperfClient;
use dwcp_lab::utilisation::IperfServer;
use dwcp_lab::utilisation::TcpLoad;

const CAPACITIES: [u64; 3] = [20_000_000, 40_000_000, 80_000_000];

fn members(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Member {
            nexthop: i as u32 + 1,
            weight,
            path: Default::default(),
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn fast_path_split_is_the_predicted_one_and_crosses_the_shapers() {
    let mut lab = ShapedPathsLab::build("utsplit", &CAPACITIES).unwrap();
    lab.start().unwrap();
    assert!(
        lab.generic_attachments.is_empty(),
        "{:?}",
        lab.generic_attachments
    );
    let ids = lab.path_ids();
    for weights in [[1, 2, 4], [1, 1, 1]] {
        let table = lab.set_split(&members(&weights)).unwrap();
        let (nh0, sh0) = (lab.nexthop_counters().unwrap(), lab.shaper_stats().unwrap());
        let sent0: Vec<_> = lab.paths.iter().map(|p| p.sent().unwrap()).collect();
        let flows = lab.send_udp_flows(2000, 20_000).unwrap();
        // Frames still in flight reach the shapers within this pause.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (nh1, sh1) = (lab.nexthop_counters().unwrap(), lab.shaper_stats().unwrap());
        let sent1: Vec<_> = lab.paths.iter().map(|p| p.sent().unwrap()).collect();
        let counted: Vec<u64> = nh1
            .iter()
            .zip(&nh0)
            .map(|(b, a)| b.packets - a.packets)
            .collect();
        let predicted = flows_per_nexthop(&flows, &table, LAB_SEED, &ids);
        // The sender keeps fewer frames in flight than the LAN ring holds (see
        // `send_udp_flows`): every flow crossed the program, so the split is exact.
        assert_eq!(counted, predicted, "weights {weights:?}");
        for (i, c) in counted.iter().enumerate() {
            assert!(*c > 0, "weights {weights:?}: path {} got no flow", i + 1);
            let shaped = sh1[i].since(&sh0[i]);
            assert!(
                shaped.packets + shaped.drops >= *c,
                "path {}: the fast path sent {c} packets, its shaper saw {shaped:?}",
                i + 1
            );
            // The fast counters of the shaper's output agree with the shaper's own, up to the
            // few control frames (ARP, neighbour discovery) the path may send between the two
            // reads (CI once saw 3 frames of 70 bytes).
            let (bytes, packets) = (
                sent1[i].bytes - sent0[i].bytes,
                sent1[i].packets - sent0[i].packets,
            );
            let (dp, db) = (
                packets.abs_diff(shaped.packets),
                bytes.abs_diff(shaped.bytes),
            );
            assert!(
                dp <= 4 && db <= 4 * 128,
                "path {}: sent {:?}, shaper {:?}",
                i + 1,
                (bytes, packets),
                (shaped.bytes, shaped.packets)
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn iperf_streams_take_the_one_path_of_a_single_member_split() {
    let mut lab = ShapedPathsLab::build("utiperf", &CAPACITIES).unwrap();
    lab.start().unwrap();
    let table = lab
        .set_split(&[Member {
            nexthop: 2,
            weight: 1,
            path: Default::default(),
        }])
        .unwrap();
    let server = IperfServer::start(&lab.host_b, HOST_B_IP, IPERF_PORT).unwrap();
    let load = TcpLoad {
        flows: 3,
        seconds: 1,
        omit_seconds: 0,
        per_flow_bps: Some(2_000_000),
        first_client_port: 41_000,
        write_bytes: 16 * 1024,
    };
    let (nh0, sh0) = (lab.nexthop_counters().unwrap(), lab.shaper_stats().unwrap());
    let report = IperfClient::start(&lab.host_a, &load, HOST_A_IP, &server)
        .unwrap()
        .finish()
        .unwrap();
    let (nh1, sh1) = (lab.nexthop_counters().unwrap(), lab.shaper_stats().unwrap());
    assert_eq!(report.streams.len(), 3);
    let mut ports: Vec<u16> = report.streams.iter().map(|s| s.flow.src_port).collect();
    ports.sort();
    assert_eq!(ports, vec![41_000, 41_001, 41_002]);
    for s in &report.streams {
        assert!(s.received_bytes > 0, "{s:?}");
        assert_eq!(nexthop_of(&s.flow, &table, LAB_SEED), 2);
    }
    assert_eq!(
        report.received_bytes,
        report.streams.iter().map(|s| s.received_bytes).sum::<u64>()
    );
    // Data went over path 2 only; its shaper carried at least the goodput.
    let sent: Vec<u64> = nh1
        .iter()
        .zip(&nh0)
        .map(|(b, a)| b.bytes - a.bytes)
        .collect();
    assert_eq!((sent[0], sent[2]), (0, 0), "{sent:?}");
    assert!(sent[1] >= report.received_bytes, "{sent:?}");
    assert!(sh1[1].since(&sh0[1]).bytes >= report.received_bytes);
}
