//! Both XDP programs over the generated corpora of `dwcp_lab::xdp_corpus` (BPF_PROG_TEST_RUN,
//! each case run once): every truncation of valid seed frames, lying length fields (IPv4
//! total length and IHL, UDP length, TCP data offset, IPv6 payload and extension header
//! lengths, the outer headers of VXLAN and probes), IPv4 options, IPv6 extension header
//! chains (fragments, long chains), VLAN tags, byte flips and random bytes, from a fixed seed.
//!
//! The invariant is judged by an independent parser (etherparse), not by the programs' own
//! logic: no frame aborts a program; a frame is transmitted (`XDP_TX`) or redirected
//! (`XDP_REDIRECT`) only if etherparse reads it whole (every length consistent, transport
//! header complete), without a VLAN tag, IPv4 options or a fragment (IPv4 flags or an IPv6
//! fragment header anywhere in the chain), from or to whom it must (the LAN port's MAC; a
//! link's peer, with VXLAN of that link's VNI or a probe request with TTL 255), and what goes
//! out parses too. A LAN frame passed to the kernel is passed untouched. Checksums are not
//! judged: the programs leave them to the receivers, as routers forwarding do.

use std::time::Instant;

use dwcp_lab::xdp_corpus::*;

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn no_malformed_frame_is_ever_transmitted_or_redirected() {
    let t0 = Instant::now();
    let mut gw = Gateway::load().unwrap();
    let mut rng = Rng(SEED);
    let lan_corpus = corpus(&lan_seeds(), |f| f.to_vec(), &mut rng);
    let underlay_corpus = corpus(&underlay_seeds(&gw), transit, &mut rng);
    let built = t0.elapsed();
    let t = Instant::now();
    let (lan, underlay) = run_corpora(&mut gw, &lan_corpus, &underlay_corpus).unwrap();
    let ran = t.elapsed();
    for (program, tally) in [("LAN", &lan), ("underlay", &underlay)] {
        assert!(
            tally.failures.is_empty(),
            "{program}: {} of {} cases broke the invariant, e.g.\n{}",
            tally.failures.len(),
            tally.cases,
            tally.examples()
        );
    }
    eprintln!(
        "corpora built in {built:?}; ran in {ran:?}: LAN {} cases (drop/pass/tx/redirect {:?}), \
         underlay {} cases ({:?})",
        lan.cases,
        &lan.verdicts[1..],
        underlay.cases,
        &underlay.verdicts[1..]
    );
    assert!(lan.cases >= CASES && underlay.cases >= CASES);
    // The corpora reached the deep ends: frames were forwarded, reflected and sent on.
    assert!(lan.verdicts[XDP_REDIRECT as usize] > 1_000, "{lan:?}");
    assert!(underlay.verdicts[XDP_TX as usize] > 100, "{underlay:?}");
    assert!(
        underlay.verdicts[XDP_REDIRECT as usize] > 1_000,
        "{underlay:?}"
    );
}
