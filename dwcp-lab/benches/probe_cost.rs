//! Probe cost: CPU time of the probe sender at the default 10 ms interval for 1, 10 and 100
//! links, against a baseline of the same runtime idling for the same time, in one run.
//!
//! Runs in a network namespace of its own (root needed). The probes leave on a veth whose peer
//! drops them at once (they are addressed to a MAC that is not the peer's), so the figure is
//! the sending side: timers, the syscall, the UDP/IP stack and the veth transmit.
//!
//! `cargo bench -p dwcp-lab --bench probe_cost` (root); writes `target/bench/probe_cost.json`.

use std::{net::IpAddr, time::Duration};

use dwcp_agent::probe::open_probe_socket;
use dwcp_agent::probe::ProbeCounts;
use dwcp_agent::probe::ProbeLink;
use dwcp_agent::probe::ProbeSender;
use dwcp_agent::probe::SenderConfig;
use dwcp_common::probe::ProbeKey;
use dwcp_lab::netlab::addr;
use dwcp_lab::netlab::veth;
use dwcp_lab::netlab::Netns;

const RUN: Duration = Duration::from_secs(5);

/// User + system CPU time of this process, in ns.
fn cpu_ns() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Run {
    links: usize,
    probes_per_s: f64,
    cpu_share: f64,
}

fn measure(ns: &Netns, links: usize) -> Run {
    let config = SenderConfig {
        source_port: 0,
        ..Default::default()
    };
    let specs: Vec<ProbeLink> = (0..links)
        .map(|i| ProbeLink {
            link_id: i as u32,
            local: "198.51.100.1".parse().unwrap(),
            remote: IpAddr::from([198, 51, 100, 10 + i as u8]),
            device: Some("ul0".into()),
            // Any key: nobody checks the replies here, the cost is the sender's.
            key: ProbeKey {
                k0: 1,
                k1: i as u64,
            },
            auth: None,
        })
        .collect();
    let sockets: Vec<std::net::UdpSocket> = ns
        .run_in(|| {
            specs
                .iter()
                .map(|l| open_probe_socket(l, &config).unwrap())
                .collect()
        })
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut sender = ProbeSender::new(config).unwrap();
        for (l, s) in specs.into_iter().zip(sockets) {
            sender.add_link(l, s).unwrap();
        }
        let h = sender.handle();
        let sent = |h: &dwcp_agent::probe::ProbeHandle| -> u64 {
            h.links().iter().map(|l| h.sent(*l).unwrap()).sum()
        };
        // Let the first probes resolve and the timers settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (c0, s0, t0) = (cpu_ns(), sent(&h), std::time::Instant::now());
        tokio::time::sleep(RUN).await;
        let (c1, s1, el) = (cpu_ns(), sent(&h), t0.elapsed());
        Run {
            links,
            probes_per_s: (s1 - s0) as f64 / el.as_secs_f64(),
            cpu_share: (c1 - c0) as f64 / el.as_nanos() as f64,
        }
    })
}

fn main() {
    let a = Netns::new("pcost").unwrap();
    let b = Netns::new("pcost").unwrap();
    veth(&a, "ul0", &b, "ul0").unwrap();
    addr(&a, "ul0", "198.51.100.1/24").unwrap();
    for i in 0..100u8 {
        let ip = format!("198.51.100.{}", 10 + i);
        a.ip(&[
            "neigh",
            "replace",
            &ip,
            "lladdr",
            "02:00:00:00:00:99",
            "nud",
            "permanent",
            "dev",
            "ul0",
        ])
        .unwrap();
    }
    let baseline = measure(&a, 0);
    let runs: Vec<Run> = [1, 10, 100].iter().map(|&n| measure(&a, n)).collect();
    println!(
        "baseline (idle runtime): {:.3} % of a core",
        baseline.cpu_share * 100.0
    );
    let mut json = Vec::new();
    for r in &runs {
        let extra = (r.cpu_share - baseline.cpu_share).max(0.0);
        let us_per_probe = extra * 1e6 / r.probes_per_s;
        println!(
            "{:>3} links: {:>7.0} probes/s ({:.1} per link), {:.2} % of a core ({:.2} % over baseline), {:.1} us CPU per probe",
            r.links,
            r.probes_per_s,
            r.probes_per_s / r.links as f64,
            r.cpu_share * 100.0,
            extra * 100.0,
            us_per_probe
        );
        json.push(format!(
            "{{\"links\": {}, \"probes_per_s\": {:.1}, \"probes_per_s_per_link\": {:.2}, \"cpu_percent\": {:.3}, \"cpu_percent_over_baseline\": {:.3}, \"cpu_us_per_probe\": {:.2}}}",
            r.links,
            r.probes_per_s,
            r.probes_per_s / r.links as f64,
            r.cpu_share * 100.0,
            extra * 100.0,
            us_per_probe
        ));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let body = format!(
        "{{\"metrics\": {{\"interval_ms\": 10, \"baseline_cpu_percent\": {:.3}, \"runs\": [{}]}}}}\n",
        baseline.cpu_share * 100.0,
        json.join(", ")
    );
    std::fs::write(out.join("probe_cost.json"), body).unwrap();
}
