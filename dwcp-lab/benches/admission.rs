//! Cost of reservation admission as the stored set grows. Baseline: the same operation on an
//! empty manager, in the same run; report the ratios.
//!
//! `cargo bench -p dwcp-lab --bench admission`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dwcp_control::bandwidth::FileStore;
use dwcp_control::bandwidth::ManagerConfig;
use dwcp_control::bandwidth::MemoryStore;
use dwcp_control::bandwidth::Network;
use dwcp_control::bandwidth::ReservationManager;
use dwcp_control::bandwidth::ReservationRequest;
use dwcp_control::bandwidth::ReservationStore;
use dwcp_control::topology::LinkId;

const NOW: u64 = 1_700_000_000;
const LINKS: u32 = 16;

fn network() -> Network {
    Network {
        regions: ["eu", "us"].into_iter().map(String::from).collect(),
        link_capacity_bps: (0..LINKS).map(|l| (LinkId(l), 1_000_000_000_000)).collect(),
    }
}

fn request(i: u64, rate: u64, priority: u64, path: Vec<u64>) -> ReservationRequest {
    ReservationRequest {
        owner: format!("owner-{i}"),
        source: "eu".into(),
        destination: "us".into(),
        class: "bulk".into(),
        rate: rate.into(),
        start: Some((NOW + i % 500).into()),
        end: (NOW + 600 + i % 3000).into(),
        priority: Some(priority.into()),
        path: path.into_iter().map(Into::into).collect(),
        request_id: None,
    }
}

/// `n` reservations of three links each, spread over the links and over an hour.
fn filled(n: u64, store: Box<dyn ReservationStore>) -> ReservationManager {
    let (mut m, _) = ReservationManager::open(store, network(), ManagerConfig::default()).unwrap();
    let links = u64::from(LINKS);
    for i in 0..n {
        let path = vec![i % links, (i + 5) % links, (i + 11) % links];
        m.create(&request(i, 1_000_000, i % 4, path), NOW).unwrap();
    }
    m
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    for n in [0u64, 100, 1_000, 10_000] {
        // Admitted, then cancelled so every iteration sees the same set.
        let mut m = filled(n, Box::new(MemoryStore::default()));
        let ok = request(7, 1_000_000, 7, vec![1, 2, 3]);
        g.bench_with_input(BenchmarkId::new("create_cancel_memory", n), &n, |b, _| {
            b.iter(|| {
                let id = m.create(black_box(&ok), NOW).unwrap().reservation.id;
                m.cancel(id).unwrap();
            })
        });
        // Refused even after trying every lower-priority tier: the most work admission does.
        let too_big = request(7, 900_000_000_000, 7, vec![1, 2, 3]);
        g.bench_with_input(
            BenchmarkId::new("refused_after_preemption_search", n),
            &n,
            |b, _| b.iter(|| m.create(black_box(&too_big), NOW).unwrap_err()),
        );
    }
    for n in [0u64, 1_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = filled(n, Box::new(FileStore::new(dir.path().join("r.json"))));
        let ok = request(7, 1_000_000, 7, vec![1, 2, 3]);
        g.bench_with_input(BenchmarkId::new("create_cancel_file", n), &n, |b, _| {
            b.iter(|| {
                let id = m.create(black_box(&ok), NOW).unwrap().reservation.id;
                m.cancel(id).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = admission
}
criterion_main!(benches);
