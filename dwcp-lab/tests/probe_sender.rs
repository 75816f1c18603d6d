//! The probe sender on real sockets in network namespaces: probes leave at the interval, on
//! their own thread, in the realtime class when asked, and stop when the sender is dropped.

use dwcp_agent::probe::*;
use dwcp_common::probe::PROBE_KIND_REQUEST;
use dwcp_lab::netlab::{addr, veth, Netns};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use dwcp_common::probe::{probe_token, ProbeHeader, ProbeKey, PROBE_LEN, PROBE_PORT, PROBE_TTL};
use socket2::{Domain, Socket, Type};

/// The links' key: the receivers here check the token against it.
const KEY: ProbeKey = ProbeKey {
    k0: 0x0102_0304_0506_0708,
    k1: 0x1112_1314_1516_1718,
};
const AUTH: ProbeKey = ProbeKey {
    k0: 0x2122_2324_2526_2728,
    k1: 0x3132_3334_3536_3738,
};

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn rejects_bad_input_naming_the_link() {
    let link = ProbeLink {
        link_id: 4,
        local: v4("192.0.2.1"),
        remote: "2001:db8::1".parse().unwrap(),
        device: None,
        key: KEY,
        auth: None,
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
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn duplicate_link_is_refused_and_the_first_keeps_running() {
    // Inside a namespace of our own: the probes go to its loopback and nowhere else.
    let ns = Netns::new("probedup").unwrap();
    let link = ProbeLink {
        link_id: 1,
        local: v4("127.0.0.1"),
        remote: v4("127.0.0.1"),
        device: None,
        key: KEY,
        auth: None,
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
        assert_eq!(sender.link(1), Some(&link), "what the link is probed as");
        sender.remove_link(1).unwrap();
        assert_eq!(handle.sent(1), None);
        assert_eq!(sender.link(1), None);
        assert!(matches!(
            sender.remove_link(1),
            Err(SenderError::UnknownLink(1))
        ));
    });
}

/// The sender's own thread probes with no runtime in the caller at all, in the real-time
/// class it was asked for, and stops with the sender.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn a_sender_on_its_own_thread_probes_in_the_realtime_class() {
    let ns = Netns::new("probert").unwrap();
    ns.exec(&["ip", "link", "set", "lo", "up"]).unwrap();
    let link = ProbeLink {
        link_id: 1,
        local: v4("127.0.0.1"),
        remote: v4("127.0.0.1"),
        device: None,
        key: KEY,
        auth: None,
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
/// checks the wire format, the source, that each probe left on its own link, and that only
/// the keyed link's probes carry a MAC.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
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
            key: KEY,
            auth: None,
        },
        ProbeLink {
            link_id: 2,
            local: v4("198.51.100.5"),
            remote: v4("198.51.100.6"),
            device: Some("ul2".into()),
            key: KEY,
            // Link 2 has a key both ends share: its requests carry the MAC under it.
            auth: Some(AUTH),
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
    for s in &sockets {
        assert_eq!(
            s.ttl().unwrap(),
            PROBE_TTL as u32,
            "probes leave with TTL 255"
        );
    }
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
            assert_eq!(
                h.token,
                probe_token(&KEY, h.link_id, h.seq, h.tx_ns),
                "the token is made with the link's key"
            );
            assert_eq!(
                h,
                ProbeHeader { mac: 0, ..h }.signed(link.auth.as_ref()),
                "a MAC under the shared key exactly where the link has one"
            );
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
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
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
        key: KEY,
        auth: None,
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
