//! Loading, validation (every error names its entry and line) and live updates.
use std::sync::Arc;

use super::*;

const THREE_REGIONS: &str = include_str!("../../../tests/fixtures/three_regions.toml");

fn invalid(source: &str) -> Vec<ValidationError> {
    match Topology::from_toml_str(source) {
        Err(TopologyError::Invalid { errors }) => errors,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

fn region(name: &str, extra: &str) -> String {
    format!(
        "[[region]]\nname = \"{name}\"\nlatitude = 10.0\nlongitude = 20.0\ncountry = \"US\"\nprovider = \"aws\"\ncapacity_mbps = 1000\n{extra}\n"
    )
}

fn link(id: u32, a: &str, b: &str, extra: &str) -> String {
    format!("[[link]]\nlink_id = {id}\nname = \"l{id}\"\na = \"{a}\"\nb = \"{b}\"\ncapacity_mbps = 100\n{extra}\n")
}

#[test]
fn the_seed_example_loads() {
    let t = Topology::from_toml_str(THREE_REGIONS).unwrap();
    assert_eq!(t.regions().len(), 3);
    assert_eq!(t.links().len(), 3);
    let l = t.link_by_name("use1-euw1").unwrap();
    assert_eq!(
        (l.id, l.latency_ms, l.latency_source, l.kind),
        (
            LinkId(1),
            80.0,
            LatencySource::Configured,
            TunnelKind::Wireguard
        )
    );
    assert_eq!(t.region(l.a).unwrap().name, "us-east-1");
    assert_eq!(t.region_by_name("ap-south-1").unwrap().country, "IN");
    assert_eq!(
        t.region_by_name("us-east-1").unwrap().gateways[0]
            .underlay
            .to_string(),
        "192.0.2.10"
    );
    // edge-nyc has coordinates but no access latency: estimated (NYC - N. Virginia ≈ 330 km).
    let nyc = t.edge_by_name("edge-nyc").unwrap();
    assert!(
        nyc.access_latency_ms > 3.0 && nyc.access_latency_ms < 6.0,
        "{}",
        nyc.access_latency_ms
    );
    assert_eq!(t.edge_by_name("edge-bom").unwrap().access_latency_ms, 2.0);
    assert_eq!(t.generation(), 1);
}

#[test]
fn a_link_without_latency_gets_the_great_circle_prior() {
    let src = THREE_REGIONS.replace("latency_ms = 80.0\n", "");
    let t = Topology::from_toml_str(&src).unwrap();
    let l = t.link(LinkId(1)).unwrap();
    assert_eq!(l.latency_source, LatencySource::Prior);
    // Virginia - Ireland ≈ 5,450 km: ≈ 80 ms round trip with the route stretch.
    assert!(
        l.latency_ms > 70.0 && l.latency_ms < 90.0,
        "{}",
        l.latency_ms
    );
}

#[test]
fn unknown_region_in_a_link_is_named_with_its_line() {
    let src = region("a", "") + &region("b", "") + &link(1, "a", "mars", "");
    let errors = invalid(&src);
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(&errors[0], ValidationError::UnknownRegion { region, .. } if region == "mars")
    );
    let line = src.lines().position(|l| l == "[[link]]").unwrap() + 1;
    assert_eq!(errors[0].entry().line, Some(line));
    let text = errors[0].to_string();
    assert!(
        text.contains(&format!("line {line}"))
            && text.contains("link \"l1\"")
            && text.contains("mars"),
        "{text}"
    );
}

#[test]
fn duplicates_are_refused() {
    let src = region("a", "")
        + &region("a", "")
        + &region("b", "")
        + &link(1, "a", "b", "")
        + &link(1, "b", "a", "");
    let errors = invalid(&src);
    assert!(errors.iter().any(
        |e| matches!(e, ValidationError::Duplicate { kind: "region name", key, .. } if key == "a")
    ));
    assert!(errors.iter().any(
        |e| matches!(e, ValidationError::Duplicate { kind: "link_id", key, .. } if key == "1")
    ));
    assert!(errors.iter().any(|e| matches!(
        e,
        ValidationError::Duplicate {
            kind: "link name",
            ..
        }
    )));
    let dup = errors
        .iter()
        .find(|e| {
            matches!(
                e,
                ValidationError::Duplicate {
                    kind: "region name",
                    ..
                }
            )
        })
        .unwrap();
    assert!(dup.to_string().contains("first defined line 1"), "{dup}");

    let edges = region("a", "")
        + "[[edge]]\nname = \"e\"\nregion = \"a\"\n[[edge]]\nname = \"e\"\nregion = \"a\"\n";
    assert!(matches!(
        &invalid(&edges)[0],
        ValidationError::Duplicate {
            kind: "edge name",
            ..
        }
    ));
}

#[test]
fn self_loops_are_refused() {
    let errors = invalid(&(region("a", "") + &link(7, "a", "a", "")));
    assert!(matches!(&errors[0], ValidationError::SelfLoop { region, .. } if region == "a"));
    assert!(errors[0].to_string().contains("link_id 7"));
}

fn invalid_field(errors: &[ValidationError]) -> Vec<&'static str> {
    errors
        .iter()
        .map(|e| match e {
            ValidationError::InvalidValue { field, .. } => *field,
            other => panic!("unexpected {other}"),
        })
        .collect()
}

#[test]
fn bad_link_figures_are_refused() {
    let base = region("a", "") + &region("b", "");
    for (extra, field) in [
        ("latency_ms = -3.0", "latency_ms"),
        ("latency_ms = nan", "latency_ms"),
        ("latency_ms = inf", "latency_ms"),
        ("utilisation = 1.5", "utilisation"),
        ("cost_per_gb = -0.01", "cost_per_gb"),
        ("loss = 1.0", "loss"),
        ("jitter_ms = -1.0", "jitter_ms"),
    ] {
        let errors = invalid(&(base.clone() + &link(1, "a", "b", extra)));
        assert_eq!(invalid_field(&errors), [field], "{extra}");
    }
    let zero =
        base.clone() + &link(1, "a", "b", "").replace("capacity_mbps = 100", "capacity_mbps = 0");
    assert_eq!(invalid_field(&invalid(&zero)), ["capacity_mbps"]);
    let too_big = base + &link(5000, "a", "b", "");
    assert_eq!(invalid_field(&invalid(&too_big)), ["link_id"]);
}

#[test]
fn bad_region_and_edge_figures_are_refused() {
    let lat = region("a", "").replace("latitude = 10.0", "latitude = 91.0");
    assert_eq!(invalid_field(&invalid(&lat)), ["latitude"]);
    let lon = region("a", "").replace("longitude = 20.0", "longitude = -180.5");
    assert_eq!(invalid_field(&invalid(&lon)), ["longitude"]);
    let cap = region("a", "").replace("capacity_mbps = 1000", "capacity_mbps = 0");
    assert_eq!(invalid_field(&invalid(&cap)), ["capacity_mbps"]);
    let edge = region("a", "")
        + "[[edge]]\nname = \"e\"\nregion = \"a\"\nlatitude = -95.0\naccess_latency_ms = -1.0\n";
    assert_eq!(
        invalid_field(&invalid(&edge)),
        ["latitude", "access_latency_ms"]
    );
    let orphan = region("a", "") + "[[edge]]\nname = \"e\"\nregion = \"nowhere\"\n";
    assert!(
        matches!(&invalid(&orphan)[0], ValidationError::UnknownRegion { region, .. } if region == "nowhere")
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let src = region("a", "").replace("latitude = 10.0", "latitude = 100.0")
        + &link(1, "a", "x", "latency_ms = -1.0");
    let errors = invalid(&src);
    assert_eq!(errors.len(), 3, "{errors:?}");
    let text = TopologyError::Invalid { errors }.to_string();
    assert!(text.starts_with("invalid topology (3 problems)"), "{text}");
}

#[test]
fn syntax_and_unknown_fields_name_the_line() {
    let src = region("a", "colour = \"blue\"");
    match Topology::from_toml_str(&src) {
        Err(TopologyError::Parse {
            line: Some(line),
            message,
        }) => {
            assert!(message.contains("colour"), "{message}");
            assert!(line >= 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn updates_apply_atomically_and_bad_ones_change_nothing() {
    let store = InMemoryTopologyStore::new(Topology::from_toml_str(THREE_REGIONS).unwrap());
    let before = store.snapshot();
    let g = store
        .apply(&[TopologyUpdate::LinkMeasurement {
            link_id: LinkId(1),
            latency_ms: 85.0,
            jitter_ms: 1.5,
            loss: 0.001,
        }])
        .unwrap();
    assert_eq!(g, 2);
    let now = store.snapshot();
    let l = now.link(LinkId(1)).unwrap();
    assert_eq!(
        (l.latency_ms, l.latency_source, l.loss),
        (85.0, LatencySource::Measured, 0.001)
    );
    // The old snapshot a reader still holds is untouched.
    assert_eq!(before.link(LinkId(1)).unwrap().latency_ms, 80.0);

    // A batch with one bad entry is refused whole.
    let err = store
        .apply(&[
            TopologyUpdate::LinkUtilisation {
                link_id: LinkId(2),
                utilisation: 0.5,
            },
            TopologyUpdate::LinkMeasurement {
                link_id: LinkId(3),
                latency_ms: f64::NAN,
                jitter_ms: 0.0,
                loss: 0.0,
            },
        ])
        .unwrap_err();
    assert!(
        err.to_string().contains("link_id 3") && err.to_string().contains("latency_ms"),
        "{err}"
    );
    assert!(Arc::ptr_eq(&now, &store.snapshot()));
    assert_eq!(store.snapshot().link(LinkId(2)).unwrap().utilisation, 0.0);

    assert_eq!(
        store.apply(&[TopologyUpdate::LinkHealth {
            link_id: LinkId(99),
            health: RoutingHealth::Down
        }]),
        Err(TopologyError::UnknownLink { link_id: 99 })
    );
    assert_eq!(store.snapshot().generation(), 2);
    assert_eq!(
        store.replace(Topology::from_toml_str(THREE_REGIONS).unwrap()),
        3
    );
}

#[test]
fn readers_see_whole_snapshots_while_a_writer_updates() {
    let store = Arc::new(InMemoryTopologyStore::new(
        Topology::from_toml_str(THREE_REGIONS).unwrap(),
    ));
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 1..=500u32 {
                // Both links change together in one batch.
                let ms = 100.0 + i as f64;
                store
                    .apply(&[
                        TopologyUpdate::LinkMeasurement {
                            link_id: LinkId(1),
                            latency_ms: ms,
                            jitter_ms: 0.0,
                            loss: 0.0,
                        },
                        TopologyUpdate::LinkMeasurement {
                            link_id: LinkId(2),
                            latency_ms: ms,
                            jitter_ms: 0.0,
                            loss: 0.0,
                        },
                    ])
                    .unwrap();
            }
        })
    };
    let mut last_generation = 0;
    while !writer.is_finished() {
        let t = store.snapshot();
        assert!(t.generation() >= last_generation);
        last_generation = t.generation();
        if t.generation() > 1 {
            assert_eq!(
                t.link(LinkId(1)).unwrap().latency_ms,
                t.link(LinkId(2)).unwrap().latency_ms
            );
        }
    }
    writer.join().unwrap();
    assert_eq!(store.snapshot().generation(), 501);
}
