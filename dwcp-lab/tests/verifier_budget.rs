//! The verifier's work per program, against a budget. The kernel refuses a program whose
//! verification takes more than 1,000,000 instructions; a change that multiplies the
//! verifier's states (a variable carried through the next-hop loop did: `dwcp_lan` went from
//! 112k to over 1M) should fail here, named, rather than as a load error in every lab.
//!
//! Budgets: about twice the figures measured. `dwcp_underlay` inlined the whole forwarding
//! path for transit traffic on top of probes and decapsulation (705k, then 176k); since
//! transit packets follow their source route (the exit named in the VXLAN header, outer
//! headers rewritten in place) it is 2.7k. `dwcp_lan` is 113k (72k before members carried
//! whole paths: the check of their links against `LINKS_DOWN` is one branch-free pass per
//! packet, taken only while a link is down; a branch per member and link made it 256k).

use dwcp_common::maps::programs;
use dwcp_dataplane::Dataplane;
use dwcp_dataplane::Pinning;

const KERNEL_LIMIT: u32 = 1_000_000;

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn every_program_verifies_within_its_budget() {
    let mut dp = Dataplane::load(Pinning::None).expect("the object loads");
    let mut counts = Vec::new();
    for (name, budget) in [
        (programs::LAN_INGRESS, 230_000),
        (programs::UNDERLAY_INGRESS, 10_000),
    ] {
        let info = dp.program(name).unwrap().info().unwrap();
        counts.push((name, budget, info.verified_instruction_count()));
    }
    for name in [programs::LAN_HANDOFF_TC, programs::WG_PROBE_TC] {
        let info = dp.tc_program(name).unwrap().info().unwrap();
        counts.push((name, 10_000, info.verified_instruction_count()));
    }
    for (name, budget, n) in &counts {
        let n = n.unwrap_or_else(|| panic!("{name}: the kernel reports no verified_insns"));
        eprintln!(
            "{name}: {n} instructions verified (budget {budget}, kernel limit {KERNEL_LIMIT})"
        );
        assert!(
            n <= *budget,
            "{name}: the verifier processed {n} instructions, over its budget of {budget} \
             (the kernel refuses above {KERNEL_LIMIT})"
        );
    }
    // The forwarding program is the big one; if it verified in almost nothing, this test
    // would be reading the wrong figure.
    let lan = counts[0].2.unwrap();
    assert!(lan > 10_000, "dwcp_lan: only {lan} instructions verified");
}
