//! End to end through real kernels: host A -> gateway A -> underlay -> gateway B -> host B, in
//! network namespaces this test creates (and removes on drop, also on failure). The gateways'
//! kernels have no route to the other region, so every packet that arrives crossed dwcp's XDP
//! fast path; the counters must say so too.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use dwcp_common::Reason;
use dwcp_lab::lab::TwoRegionLab;
use dwcp_lab::lab::LAB_NEXTHOP;
use dwcp_lab::netlab;
use dwcp_lab::netlab::Netns;

/// Runs `f` on a thread inside `ns` and returns its handle (a server that outlives the call).
fn spawn_in<F, R>(ns: &Netns, f: F) -> std::thread::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let file = std::fs::File::open(ns.path()).unwrap();
    std::thread::spawn(move || {
        netlab::enter(&file).unwrap();
        f()
    })
}

fn udp_exchange(from: &Netns, from_ip: Ipv4Addr, to: &Netns, to_ip: Ipv4Addr, n: usize) {
    let server = to
        .run_in(move || UdpSocket::bind((to_ip, 7000)).unwrap())
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        for _ in 0..n {
            let (len, peer) = server.recv_from(&mut buf).expect("server received");
            server.send_to(&buf[..len], peer).unwrap();
        }
    });
    let client = from
        .run_in(move || UdpSocket::bind((from_ip, 0)).unwrap())
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1500];
    for i in 0..n {
        let msg = format!("dwcp udp {i}");
        client
            .send_to(msg.as_bytes(), SocketAddr::from((to_ip, 7000)))
            .unwrap();
        let (len, _) = client.recv_from(&mut buf).expect("echo came back");
        assert_eq!(&buf[..len], msg.as_bytes());
    }
    echo.join().unwrap();
}

/// accept() with a deadline, so a broken path fails the test instead of hanging it.
fn accept_within(l: &TcpListener, limit: Duration) -> (TcpStream, SocketAddr) {
    l.set_nonblocking(true).unwrap();
    let start = std::time::Instant::now();
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).unwrap();
                return (s, a);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("no connection within {limit:?}: {e}"),
        }
    }
}

fn tcp_exchange(from: &Netns, to: &Netns, to_ip: Ipv4Addr) {
    let listener = to
        .run_in(move || TcpListener::bind((to_ip, 7001)).unwrap())
        .unwrap();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, _) = accept_within(&listener, Duration::from_secs(10));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 100_000];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let sent = data.clone();
    let got = spawn_in(from, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((to_ip, 7001)), Duration::from_secs(5))
                .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&sent).unwrap();
        let mut back = vec![0u8; sent.len()];
        s.read_exact(&mut back).unwrap();
        back
    })
    .join()
    .unwrap();
    assert_eq!(got, data, "100 kB echoed over TCP");
    server.join().unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn udp_and_tcp_cross_the_fast_path_in_both_directions() {
    let mut lab = TwoRegionLab::build("e2e").expect("build lab");
    // Before dwcp runs there is no way across: the gateways have no route to the other region.
    let blocked = lab
        .a
        .host
        .exec(&["ping", "-c1", "-W1", &lab.b.host_ip.to_string()]);
    assert!(
        blocked.is_err(),
        "traffic crossed before the fast path was programmed"
    );

    lab.start_dataplanes().expect("start dwcp on both gateways");
    udp_exchange(&lab.a.host, lab.a.host_ip, &lab.b.host, lab.b.host_ip, 50);
    udp_exchange(&lab.b.host, lab.b.host_ip, &lab.a.host, lab.a.host_ip, 50);
    tcp_exchange(&lab.a.host, &lab.b.host, lab.b.host_ip);
    tcp_exchange(&lab.b.host, &lab.a.host, lab.a.host_ip);

    for (name, r) in [("A", &lab.a), ("B", &lab.b)] {
        let dp = r.dataplane.as_ref().unwrap();
        let fwd = dp.reason_count(Reason::LanForwarded).unwrap();
        let nh = dp.nexthop_counters(LAB_NEXTHOP).unwrap();
        let decap = dp.reason_count(Reason::UnderlayDecapRedirected).unwrap()
            + dp.reason_count(Reason::UnderlayDecapPassed).unwrap();
        // 100 UDP datagrams each way plus two TCP connections of 100 kB each way.
        assert!(
            fwd >= 100 + 2 * 60,
            "gateway {name}: only {fwd} packets encapsulated"
        );
        assert_eq!(
            nh.packets, fwd,
            "gateway {name}: next-hop counter equals forwarded packets"
        );
        assert!(
            decap >= 100,
            "gateway {name}: only {decap} packets decapsulated"
        );
        assert_eq!(dp.reason_count(Reason::LanRedirectFailed).unwrap(), 0);
        eprintln!("gateway {name} ({:?}): encapsulated {fwd}, {} bytes; decapsulated {decap} (redirected {}, passed to the kernel {})",
            r.attach_mode.unwrap(), nh.bytes, dp.reason_count(Reason::UnderlayDecapRedirected).unwrap(), dp.reason_count(Reason::UnderlayDecapPassed).unwrap());
    }
}
