//! The N-region lab's network: every link carries traffic between its two gateways, a cut
//! link goes silent without either end losing carrier, healing restores it, and nothing is
//! left behind — with unique names (tests) and with the stable names `cargo xtask lab` uses.

use dwcp_lab::lab::multi::stable_down;
use dwcp_lab::lab::multi::stable_link_states;
use dwcp_lab::lab::multi::stable_namespaces;
use dwcp_lab::lab::multi::stable_set_cut;
use dwcp_lab::lab::multi::LabPlan;
use dwcp_lab::lab::multi::MultiRegionLab;
use dwcp_lab::lab::multi::Naming;
use dwcp_lab::lab::multi::Shape;
use dwcp_lab::netlab::run;

fn namespaces_containing(needle: &str) -> usize {
    let out = run(&["ip", "netns", "list"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn three_region_triangle_links_fail_and_heal() {
    let plan = LabPlan::new(3, Shape::Ring).unwrap();
    let names;
    {
        let lab = MultiRegionLab::build(&plan, &Naming::Unique("tri".into())).unwrap();
        names = lab.gateways[0].name().to_string();
        for l in &plan.links {
            assert!(
                lab.link_answers(&l.name).unwrap(),
                "link {} answers",
                l.name
            );
        }
        lab.fail("r1-r2").unwrap();
        assert!(lab.is_cut("1").unwrap());
        assert!(!lab.link_answers("r1-r2").unwrap(), "a cut link is silent");
        // The gateway still has its carrier: the failure is silent, as on a WAN.
        let carrier = lab.gateways[0]
            .exec(&["cat", "/sys/class/net/ul1/carrier"])
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&carrier.stdout).trim(), "1");
        assert!(
            lab.link_answers("r2-r3").unwrap(),
            "other links are untouched"
        );
        lab.heal("r1-r2").unwrap();
        assert!(!lab.is_cut("1").unwrap());
        assert!(lab.link_answers("r1-r2").unwrap());
        assert!(lab.fail("r9-r9").is_err());
    }
    let out = run(&["ip", "netns", "list"]).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&names));
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged: needs root, BPF and network namespaces (--features dwcp-lab/privileged)"
)]
fn ten_region_ring_with_stable_names_outlives_its_builder_and_goes_down() {
    let prefix = format!("dwcp-labtest{}", std::process::id());
    // Removes the stable lab even if an assertion fails.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = stable_down(&self.0);
        }
    }
    let _down = Down(prefix.clone());
    let plan = LabPlan::new(10, Shape::Ring).unwrap();
    drop(MultiRegionLab::build(&plan, &Naming::Stable(prefix.clone())).unwrap());
    // Dropping the builder left everything: 10 hosts, 10 gateways, 10 wires.
    assert_eq!(stable_namespaces(&prefix).len(), 30);
    assert_eq!(namespaces_containing(&prefix), 30);
    stable_set_cut(&prefix, 10, true).unwrap();
    let states = stable_link_states(&prefix);
    assert_eq!(states.len(), 10);
    assert_eq!(states.iter().filter(|(_, cut)| *cut).count(), 1);
    assert!(states.contains(&(format!("{prefix}-w10"), true)));
    stable_set_cut(&prefix, 10, false).unwrap();
    assert!(stable_link_states(&prefix).iter().all(|(_, cut)| !cut));
    assert!(stable_set_cut(&prefix, 11, true).is_err());
    let removed = stable_down(&prefix).unwrap();
    assert_eq!(removed.len(), 30);
    assert_eq!(namespaces_containing(&prefix), 0);
    // No veth of the lab is left in the root namespace either.
    let links = run(&["ip", "-o", "link", "show"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("ul10"));
}
