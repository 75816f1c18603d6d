use super::*;

/// The seed's three regions (same file as the routing tests).
const TOPOLOGY: &str = include_str!("../../../tests/fixtures/three_regions.toml");

const GATEWAY: &str = r#"
[gateway]
name = "gw-use1-a"
region = "us-east-1"
lan_interfaces = ["lan0"]

[[local_link]]
link = "use1-euw1"
interface = "ul1"
local_ip = "172.31.1.1"
peer_ip = "172.31.1.2"
mtu = 1600

[[local_link]]
link = "use1-aps1"
interface = "ul3"
local_ip = "172.31.3.1"
peer_ip = "172.31.3.2"

[[prefixes]]
region = "us-east-1"
prefixes = ["10.1.0.0/16"]

[[prefixes]]
region = "eu-west-1"
prefixes = ["10.2.0.0/16", "fd00:2::/48"]
class = "interactive"

[[prefixes]]
region = "ap-south-1"
prefixes = ["10.3.0.0/16"]
"#;

pub(super) fn valid() -> String {
    format!("{GATEWAY}\n{TOPOLOGY}")
}

/// Parses `text` expecting an error; returns its message.
fn refused(text: &str) -> String {
    match AgentConfig::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn line_of_text(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
        + 1
}

#[test]
fn the_example_is_valid_with_defaults() {
    let c = AgentConfig::parse(&valid()).unwrap();
    assert_eq!(c.gateway, "gw-use1-a");
    assert_eq!(c.region, "us-east-1");
    assert_eq!(c.pin_dir, PathBuf::from("/sys/fs/bpf/dwcp"));
    assert_eq!(c.local_links.len(), 2);
    let l1 = c.local_link(1).unwrap();
    assert_eq!(l1.peer_region, "eu-west-1");
    assert_eq!(l1.vni, VNI_BASE + 1, "default VNI");
    assert_eq!(l1.mtu, Some(1600));
    assert_eq!(l1.via_ip, l1.peer_ip, "default neighbour");
    assert!(l1.monitored);
    assert_eq!(c.local_link(3).unwrap().mtu, None);
    assert_eq!(
        c.prefixes["eu-west-1"].prefixes[1],
        "fd00:2::/48".parse().unwrap()
    );
    assert_eq!(c.prefixes["eu-west-1"].class, QosClass::Interactive);
    assert_eq!(c.prefixes["ap-south-1"].class, QosClass::BestEffort);
    assert_eq!(c.monitor, MonitorConfig::default());
    assert_eq!(c.strategy, Strategy::MinLatency);
    assert_eq!(c.delays.initial, Duration::ZERO);
    assert_eq!(c.underlay_interfaces(), vec!["ul1", "ul3"]);
    assert_eq!(c.topology_model.regions().len(), 3);
}

#[test]
fn an_unknown_field_is_named_with_its_line() {
    let text = valid().replace(
        "lan_interfaces = [\"lan0\"]",
        "lan_interfaces = [\"lan0\"]\nlan_interface = \"lan1\"",
    );
    let e = refused(&text);
    let line = line_of_text(&text, "lan_interface = ");
    assert!(e.contains("unknown field `lan_interface`"), "{e}");
    assert!(e.contains(&format!(":{line}")), "line {line} in {e}");
    assert!(
        e.contains("lan_interface = \"lan1\""),
        "the line is quoted: {e}"
    );
}

#[test]
fn an_unknown_section_and_a_wrong_type_are_refused() {
    let e = refused(&format!("{}\n[routng]\nstrategy = \"min_cost\"\n", valid()));
    assert!(e.contains("unknown field `routng`"), "{e}");
    let text = valid().replace("mtu = 1600", "mtu = \"big\"");
    let e = refused(&text);
    assert!(e.contains("invalid type"), "{e}");
    assert!(
        e.contains(&format!(":{}", line_of_text(&text, "mtu = \"big\""))),
        "{e}"
    );
}

#[test]
fn a_syntax_error_names_its_line() {
    let text = valid().replace("region = \"us-east-1\"\nlan", "region = us-east-1\nlan");
    let e = refused(&text);
    assert!(
        e.contains(&format!(":{}", line_of_text(&text, "region = us-east-1"))),
        "{e}"
    );
}

#[test]
fn semantic_problems_name_field_and_line_and_all_are_reported() {
    let text = valid()
        .replace("region = \"us-east-1\"\nlan", "region = \"us-west-9\"\nlan")
        .replace("link = \"use1-aps1\"", "link = \"nowhere\"")
        .replace("\"10.3.0.0/16\"", "\"10.3.0.1/16\"");
    let e = refused(&text);
    let line = |needle| line_of_text(&text, needle);
    for (needle, field, words) in [
        (
            "region = \"us-west-9\"",
            "gateway.region",
            "unknown region \"us-west-9\"",
        ),
        (
            "link = \"nowhere\"",
            "local_link[1].link",
            "unknown link \"nowhere\"",
        ),
        ("\"10.3.0.1/16\"", "prefixes[2].prefixes", "host bits set"),
    ] {
        let expected = format!("line {}: {field}: ", line(needle));
        assert!(e.contains(&expected), "{expected:?} in {e}");
        assert!(e.contains(words), "{words:?} in {e}");
    }
    assert!(e.contains("3 problems"), "{e}");
}

#[test]
fn local_link_problems() {
    // A link that does not touch this gateway's region.
    let e = refused(&valid().replace("link = \"use1-aps1\"", "link = \"euw1-aps1\""));
    assert!(
        e.contains("local_link[1].link: link \"euw1-aps1\" joins eu-west-1 and ap-south-1"),
        "{e}"
    );
    // IPv6 underlay.
    let e = refused(&valid().replace("local_ip = \"172.31.3.1\"", "local_ip = \"fd00::1\""));
    assert!(
        e.contains("local_link[1].local_ip: fd00::1: the underlay is IPv4"),
        "{e}"
    );
    // Two links on one VNI.
    let e = refused(&valid().replace("mtu = 1600", "mtu = 1600\nvni = 10003"));
    assert!(e.contains("VNI 10003 is also used by link"), "{e}");
    // A LAN interface used as underlay.
    let e = refused(&valid().replace("interface = \"ul3\"", "interface = \"lan0\""));
    assert!(e.contains("\"lan0\" is also a LAN interface"), "{e}");
    // The same link twice.
    let e = refused(&valid().replace("link = \"use1-aps1\"", "link = \"use1-euw1\""));
    assert!(e.contains("terminated twice"), "{e}");
}

#[test]
fn prefix_problems() {
    let e = refused(&valid().replace("\"10.3.0.0/16\"", "\"10.2.128.0/17\""));
    assert!(
        e.contains("10.2.128.0/17 overlaps a prefix of region \"eu-west-1\""),
        "{e}"
    );
    let e = refused(&valid().replace("class = \"interactive\"", "class = \"gold\""));
    assert!(e.contains("unknown QoS class \"gold\""), "{e}");
    let e = refused(&valid().replace("\"10.3.0.0/16\"", "\"10.3.0.0/33\""));
    assert!(e.contains("prefix length 33 is longer than 32"), "{e}");
}

#[test]
fn section_values_are_checked_with_the_line_of_the_key() {
    let text = format!("{}\n[probe]\ninterval_ms = 0\n", valid());
    let e = refused(&text);
    let line = line_of_text(&text, "interval_ms = 0");
    assert!(
        e.contains(&format!(
            "line {line}: probe.interval_ms: probe interval must be at least 1 ms"
        )),
        "{e}"
    );
    let text = format!("{}\n[probe]\nrt_priority = 120\n", valid());
    let e = refused(&text);
    assert!(
        e.contains(&format!(
            "line {}: probe.rt_priority: 120 is not a SCHED_FIFO priority: 1-99, or 0 for \
             normal scheduling",
            line_of_text(&text, "rt_priority = 120")
        )),
        "{e}"
    );
    let text = format!(
        "{}\n[updater]\nshort_delay_ms = 2000\nlong_delay_ms = 1000\n",
        valid()
    );
    let e = refused(&text);
    assert!(
        e.contains(&format!(
            "line {}: updater.short_delay_ms: 2000 ms is longer than long_delay_ms",
            line_of_text(&text, "short_delay_ms")
        )),
        "{e}"
    );
    let text = format!(
        "{}\n[routing.constraints]\navoid_regions = [\"mars-1\"]\n",
        valid()
    );
    let e = refused(&text);
    assert!(
        e.contains("routing.constraints.avoid_regions: unknown region \"mars-1\""),
        "{e}"
    );
    let e = refused(&format!("{}\n[traffic]\nheadroom_percent = 120\n", valid()));
    assert!(
        e.contains("traffic.headroom_percent: 120 is above 99"),
        "{e}"
    );
    let text = format!("{}\n[qos.dscp]\nrealtime = 64\n", valid());
    let e = refused(&text);
    assert!(e.contains("qos.dscp.realtime: 64 is not a DSCP"), "{e}");
    let text = format!("{}\n[flows]\ntable_size = 0\nwindow_s = 0\n", valid());
    let e = refused(&text);
    for (field, why) in [
        ("table_size", "0 is not in 1..=65536"),
        ("window_s", "must be at least 1"),
    ] {
        assert!(
            e.contains(&format!(
                "line {}: flows.{field}: {why}",
                line_of_text(&text, field)
            )),
            "{e}"
        );
    }
    let e = refused(&format!("{}\n[flows]\nsample_evry = 10\n", valid()));
    assert!(e.contains("sample_evry"), "{e}");
}

#[test]
fn topology_problems_keep_their_lines() {
    let text = valid().replace("b = \"ap-south-1\"\nkind", "b = \"ap-south-9\"\nkind");
    let e = refused(&text);
    assert!(e.contains("unknown region \"ap-south-9\""), "{e}");
    assert!(e.contains("line "), "{e}");
}

#[test]
fn the_gateway_must_be_one_of_its_regions_gateways() {
    let e = refused(&valid().replacen("name = \"gw-use1-a\"", "name = \"gw-use1-z\"", 1));
    assert!(
        e.contains("\"gw-use1-z\" is not among region \"us-east-1\"'s gateways (gw-use1-a)"),
        "{e}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/agent.toml"), "{e}");
}

#[test]
fn reload_tells_what_needs_a_restart() {
    let a = AgentConfig::parse(&valid()).unwrap();
    let b = AgentConfig::parse(&valid().replace("[\"lan0\"]", "[\"lan1\"]")).unwrap();
    assert_eq!(a.restart_only_changes(&b), vec!["gateway.lan_interfaces"]);
    let rt = AgentConfig::parse(&format!("{}\n[probe]\nrt_priority = 10\n", valid())).unwrap();
    assert_eq!(rt.probe_rt_priority, 10);
    assert_eq!(a.restart_only_changes(&rt), vec!["probe.rt_priority"]);
    let c = AgentConfig::parse(&format!(
        "{}\n[routing]\nstrategy = \"min_cost\"\n",
        valid()
    ))
    .unwrap();
    assert!(a.restart_only_changes(&c).is_empty());
    assert!(a != c && a == AgentConfig::parse(&valid()).unwrap());
}

#[test]
fn prefixes_parse_and_overlap() {
    let p: Prefix = "10.0.0.0/8".parse().unwrap();
    assert!(p.overlaps(&"10.2.0.0/16".parse().unwrap()));
    assert!(!p.overlaps(&"11.0.0.0/8".parse().unwrap()));
    assert!(!p.overlaps(&"::/0".parse().unwrap()));
    assert_eq!(p.to_string(), "10.0.0.0/8");
    assert!("10.0.0.0".parse::<Prefix>().is_err());
    assert!("0.0.0.0/0".parse::<Prefix>().is_ok());
}

#[test]
fn the_deployed_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    let c = AgentConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.local_links.len(), 2);
    assert_eq!(c.health_checks.len(), 1);
    assert_eq!(c.api.socket_group.as_deref(), Some("dwcp"));
    assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9470");
}

#[test]
fn api_over_tcp_needs_a_token_and_tls() {
    let e = refused(&format!(
        "{}\n[api]\ntcp_listen = \"127.0.0.1:9471\"\n",
        valid()
    ));
    for key in ["token_file", "tls_cert", "tls_key"] {
        assert!(
            e.contains(&format!("api.tcp_listen: needs api.{key}")),
            "{e}"
        );
    }
    let e = refused(&format!(
        "{}\n[api]\ntcp_listen = \"127.0.0.1:9471\"\ntoken_file = \"/t\"\ntls_cert = \"/c\"\n",
        valid()
    ));
    assert!(e.contains("1 problem"), "{e}");
    assert!(
        e.contains("needs api.tls_key (the TCP API is served over TLS only)"),
        "{e}"
    );
    // No plaintext opt-out.
    let e = refused(&format!(
        "{}\n[api]\ntcp_listen = \"127.0.0.1:9471\"\ninsecure_plaintext = true\n",
        valid()
    ));
    assert!(e.contains("unknown field `insecure_plaintext`"), "{e}");
    let c = AgentConfig::parse(&format!(
        "{}\n[api]\ntcp_listen = \"127.0.0.1:9471\"\ntoken_file = \"/t\"\n\
         tls_cert = \"/c\"\ntls_key = \"/k\"\n",
        valid()
    ))
    .unwrap();
    assert_eq!(c.api.tls_key, Some(PathBuf::from("/k")));
}

#[test]
fn listeners_need_room_for_a_connection_and_time_for_a_request() {
    let text = format!(
        "{}\n[api]\nmax_connections = 0\nread_timeout_ms = 0\nwrite_timeout_ms = 0\n\
         max_connections_per_source = 0\n\n[metrics]\nmax_connections = 0\n",
        valid()
    );
    let e = refused(&text);
    assert!(
        e.contains("api.max_connections: 0 would refuse every connection"),
        "{e}"
    );
    assert!(
        e.contains("api.read_timeout_ms: 0 would close every connection"),
        "{e}"
    );
    assert!(
        e.contains("api.write_timeout_ms: 0 would close every connection before its answer"),
        "{e}"
    );
    assert!(
        e.contains("api.max_connections_per_source: 0 would refuse every connection"),
        "{e}"
    );
    assert!(e.contains("metrics.max_connections: 0 would refuse"), "{e}");
    let e = refused(&format!(
        "{}\n[metrics]\nmax_connections = 100000000\nread_timeout_ms = 9223372036854775807\n",
        valid()
    ));
    assert!(
        e.contains("metrics.max_connections: 100000000 is above"),
        "{e}"
    );
    assert!(
        e.contains("metrics.read_timeout_ms: 9223372036854775807 is above"),
        "{e}"
    );
    let c = AgentConfig::parse(&valid()).unwrap();
    assert_eq!(c.api.limits().max_connections, DEFAULT_API_MAX_CONNECTIONS);
    assert_eq!(
        c.metrics.limits().read_timeout,
        Duration::from_millis(DEFAULT_READ_TIMEOUT_MS)
    );
}

/// The example with link 3 (`use1-aps1`) as a WireGuard link on `wg-aps1`.
fn with_wireguard_link3(extra: &str) -> String {
    valid().replace(
        "link = \"use1-aps1\"\ninterface = \"ul3\"\nlocal_ip = \"172.31.3.1\"\npeer_ip = \"172.31.3.2\"\n",
        &format!("link = \"use1-aps1\"\nkind = \"wireguard\"\ninterface = \"wg-aps1\"\n{extra}"),
    )
}

#[test]
fn a_wireguard_link_gets_a_handoff_with_derived_defaults() {
    let text = with_wireguard_link3("");
    assert!(text.contains("kind = \"wireguard\""));
    let c = AgentConfig::parse(&text).unwrap();
    let l3 = c.local_link(3).unwrap();
    assert!(l3.is_wireguard());
    assert_eq!(
        l3.handoff,
        Some(crate::config::Handoff {
            fwmark: HANDOFF_FWMARK_BASE + 3,
            table: HANDOFF_TABLE_BASE + 3,
            priority: HANDOFF_RULE_PRIORITY,
        })
    );
    assert!(
        !l3.monitored,
        "a WireGuard link without tunnel addresses is not probed"
    );
    assert_eq!(l3.local_ip, Ipv4Addr::UNSPECIFIED);
    // The VXLAN link is unchanged; the WireGuard device runs no underlay program.
    assert!(c.local_link(1).unwrap().handoff.is_none());
    assert!(c.local_link(1).unwrap().monitored);
    assert_eq!(c.underlay_interfaces(), vec!["ul1"]);

    let c = AgentConfig::parse(&with_wireguard_link3(
        "handoff = { fwmark = 0x51, table = 151, priority = 99 }\nlocal_ip = \"10.9.0.1\"\nmonitored = false\n",
    ))
    .unwrap();
    let l3 = c.local_link(3).unwrap();
    assert_eq!(
        l3.handoff,
        Some(crate::config::Handoff {
            fwmark: 0x51,
            table: 151,
            priority: 99,
        })
    );
    assert_eq!(l3.local_ip, Ipv4Addr::new(10, 9, 0, 1));
    assert!(!l3.monitored);
}

#[test]
fn a_wireguard_link_with_tunnel_addresses_is_probed_inside_the_tunnel() {
    let c = AgentConfig::parse(&with_wireguard_link3(
        "local_ip = \"10.9.0.1\"\npeer_ip = \"10.9.0.2\"\n",
    ))
    .unwrap();
    let l3 = c.local_link(3).unwrap();
    assert!(l3.is_wireguard() && l3.monitored);
    assert_eq!(
        (l3.local_ip, l3.peer_ip),
        (Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2))
    );
    // Probing needs both ends' tunnel addresses.
    let text = with_wireguard_link3("local_ip = \"10.9.0.1\"\nmonitored = true\n");
    let e = refused(&text);
    let line = line_of_text(&text, "monitored = true");
    assert!(
        e.contains(&format!("line {line}: local_link[1].monitored")) && e.contains("peer_ip"),
        "{e}"
    );
}

#[test]
fn vxlan_fields_on_a_wireguard_link_are_refused_with_their_line() {
    for (extra, field) in [
        ("vni = 10003\n", "local_link[1].vni"),
        ("via_ip = \"172.31.3.9\"\n", "local_link[1].via_ip"),
        (
            "inner_dst_mac = \"02:00:00:00:00:01\"\n",
            "local_link[1].inner_dst_mac",
        ),
        ("mtu = 1400\n", "local_link[1].mtu"),
        ("monitored = true\n", "local_link[1].monitored"),
        (
            "handoff = { fwmark = 0, table = 100 }\n",
            "local_link[1].handoff.fwmark",
        ),
        (
            "handoff = { fwmark = 7, table = 254 }\n",
            "local_link[1].handoff.table",
        ),
    ] {
        let text = with_wireguard_link3(extra);
        let e = refused(&text);
        assert!(e.contains(field), "{field} in {e}");
        let line = line_of_text(&text, extra.trim_end());
        assert!(
            e.contains(&format!("line {line}: {field}")),
            "line {line} in {e}"
        );
    }
    // A hand-off on a VXLAN link, an unknown kind, a field typo in the hand-off.
    let e = refused(&valid().replace(
        "mtu = 1600\n",
        "mtu = 1600\nhandoff = { fwmark = 7, table = 100 }\n",
    ));
    assert!(
        e.contains("local_link[0].handoff") && e.contains("wireguard"),
        "{e}"
    );
    let e = refused(&with_wireguard_link3("").replace(
        "kind = \"wireguard\"\ninterface = \"wg-aps1\"",
        "kind = \"wg\"\ninterface = \"wg-aps1\"",
    ));
    assert!(e.contains("unknown link kind \"wg\""), "{e}");
    let e = refused(&with_wireguard_link3("handoff = { mark = 7 }\n"));
    assert!(e.contains("unknown field `mark`"), "{e}");
    // A VXLAN link still needs its addresses.
    let e = refused(&valid().replace("local_ip = \"172.31.1.1\"\n", ""));
    assert!(
        e.contains("local_link[0].local_ip") && e.contains("required for a vxlan link"),
        "{e}"
    );
}

#[test]
fn two_wireguard_links_cannot_share_a_mark_or_a_table() {
    let text = with_wireguard_link3("handoff = { fwmark = 0x51, table = 151 }\n").replace(
        "link = \"use1-euw1\"\ninterface = \"ul1\"\nlocal_ip = \"172.31.1.1\"\npeer_ip = \"172.31.1.2\"\nmtu = 1600\n",
        "link = \"use1-euw1\"\nkind = \"wireguard\"\ninterface = \"wg-euw1\"\nhandoff = { fwmark = 0x51, table = 151 }\n",
    );
    let e = refused(&text);
    assert!(
        e.contains("fwmark 0x51 is also used by link \"use1-euw1\""),
        "{e}"
    );
    assert!(
        e.contains("table 151 is also used by link \"use1-euw1\""),
        "{e}"
    );
}

#[test]
fn link_state_is_on_by_default_and_its_values_are_checked() {
    let c = AgentConfig::parse(&valid()).unwrap();
    assert!(c.link_state.enabled);
    assert_eq!(c.link_state.port, 4792);
    assert_eq!(
        c.link_state.timers(),
        crate::link_state::LinkStateConfig::default()
    );
    let text = format!(
        "{}\n[link_state]\nport = 4790\nrefresh_interval_ms = 60000\nhold_initial_ms = 0\n\
         figure_change_percent = -1\n",
        valid()
    );
    let e = refused(&text);
    for (key, why) in [
        ("port", "4790: it is the probes'"),
        ("figure_change_percent", "-1 is not a percentage >= 0"),
    ] {
        assert!(
            e.contains(&format!(
                "line {}: link_state.{key}: {why}",
                line_of_text(&text, key)
            )),
            "{e}"
        );
    }
    let text = format!("{}\n[link_state]\nrefresh_interval_ms = 60000\n", valid());
    let e = refused(&text);
    assert!(
        e.contains(&format!(
            "line {}: link_state.refresh_interval_ms: refresh_interval (60s) must be below \
             max_age (60s)",
            line_of_text(&text, "refresh_interval_ms")
        )),
        "{e}"
    );
    let e = refused(&format!("{}\n[link_state]\nhold_max_ms = 10\n", valid()));
    assert!(
        e.contains("link_state.hold_initial_ms: hold_initial (1s) above hold_max (10ms)"),
        "{e}"
    );
    // A record's origin is the gateway's name: at most 64 bytes, unless link state is off.
    let mut t: toml::Table = toml::from_str(&valid()).unwrap();
    t["gateway"]["name"] = toml::Value::String("g".repeat(65));
    // The seed's region lists its gateway by name: drop the list so any name is allowed.
    for r in t["region"].as_array_mut().unwrap() {
        r.as_table_mut().unwrap().remove("gateways");
    }
    let text = toml::to_string(&t).unwrap();
    let e = refused(&text);
    assert!(
        e.contains("gateway.name: 65 bytes: a link-state origin has 1 to 64"),
        "{e}"
    );
    assert!(AgentConfig::parse(&format!("{text}\n[link_state]\nenabled = false\n")).is_ok());
}

#[test]
fn the_store_is_files_by_default_and_etcd_when_configured() {
    assert_eq!(
        AgentConfig::parse(&valid()).unwrap().store,
        StoreConfig::File
    );
    let text = format!(
        "{}\n[store]\nkind = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\", \"http://etcd-b:2379\"]\n",
        valid()
    );
    let c = AgentConfig::parse(&text).unwrap();
    assert_eq!(
        c.store,
        StoreConfig::Etcd(crate::store::EtcdConfig {
            endpoints: vec!["http://10.0.0.1:2379".into(), "http://etcd-b:2379".into()],
            prefix: "/dwcp/v1".into(),
            tls: None,
        })
    );
    let text = format!(
        "{}\n[store]\nkind = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\"]\nprefix = \"/prod/dwcp/\"\n\
         tls_ca = \"/etc/dwcp/etcd-ca.pem\"\ntls_cert = \"/etc/dwcp/etcd.pem\"\ntls_key = \"/etc/dwcp/etcd.key\"\n",
        valid()
    );
    match AgentConfig::parse(&text).unwrap().store {
        StoreConfig::Etcd(e) => {
            assert_eq!(e.prefix, "/prod/dwcp");
            assert_eq!(e.tls.unwrap().key, PathBuf::from("/etc/dwcp/etcd.key"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn store_problems_name_the_key_and_its_line() {
    let cases: [(&str, &[(&str, &str)]); 6] = [
        (
            "kind = \"etcd\"\n",
            &[("kind = \"etcd\"", "store.kind: kind = \"etcd\" needs store.endpoints")],
        ),
        (
            "kind = \"etcd\"\nendpoints = [\"10.0.0.1:2379\", \"http://h:0\"]\nprefix = \"dwcp\"\n",
            &[
                ("endpoints", "store.endpoints: \"10.0.0.1:2379\": not http://host:port"),
                ("endpoints", "store.endpoints: \"http://h:0\": the port is not a number"),
                ("prefix", "store.prefix: \"dwcp\": a key prefix starts with /"),
            ],
        ),
        (
            "kind = \"etcd\"\nendpoints = [\"http://h:2379\"]\ntls_cert = \"/c.pem\"\n",
            &[
                ("endpoints", "store.tls_ca: missing: TLS needs tls_ca, tls_cert and tls_key"),
                ("endpoints", "store.tls_key: missing: TLS needs"),
            ],
        ),
        (
            "kind = \"etcd\"\nendpoints = [\"http://h:2379\"]\ntls_ca = \"/a\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n",
            &[("endpoints", "store.endpoints: \"http://h:2379\": with TLS files, endpoints are https://")],
        ),
        (
            "endpoints = [\"http://h:2379\"]\n",
            &[("endpoints", "store.endpoints: only for kind = \"etcd\"")],
        ),
        ("kind = \"zookeeper\"\n", &[("zookeeper", "unknown variant `zookeeper`")]),
    ];
    for (section, expected) in cases {
        let text = format!("{}\n[store]\n{section}", valid());
        let e = refused(&text);
        for (needle, message) in expected {
            // Problems about a key missing from the section name the section's header.
            let store = line_of_text(&text, "[store]");
            let line = if message.contains("missing") {
                store
            } else {
                store + line_of_text(section, needle)
            };
            assert!(e.contains(message), "{message:?} not in:\n{e}");
            assert!(
                e.contains(&format!("line {line}: {message}")) || e.contains(&format!(":{line}:")),
                "{message:?} not on line {line}:\n{e}"
            );
        }
    }
}

fn published(generation: u64, topology: &str) -> crate::store::PublishedTopology {
    crate::store::PublishedTopology {
        generation,
        source: crate::store::PublishedTopology::source_of(topology)
            .unwrap()
            .1,
    }
}

#[test]
fn a_published_topology_replaces_the_files_own() {
    let pushed = TOPOLOGY.replacen("capacity_mbps = 1000\n", "capacity_mbps = 1500\n", 1);
    let p = published(4, &pushed);
    // A local-only file, and a whole one: the same configuration, on the published topology.
    let local = AgentConfig::parse_with_topology(GATEWAY, &p).unwrap();
    let whole = AgentConfig::parse_with_topology(&valid(), &p).unwrap();
    assert!(local == whole);
    assert_eq!(local.published_topology.as_ref(), Some(&p));
    let link = local
        .topology_model
        .link(crate::topology::LinkId(1))
        .unwrap();
    assert_eq!(link.capacity_mbps, 1500.0);
    assert_eq!(local.local_links.len(), 2);
    // Without it, a local-only file has no topology.
    assert!(refused(GATEWAY).contains("no [[region]]"));
}

#[test]
fn a_published_topology_without_a_local_link_is_refused_at_the_files_line() {
    // use1-aps1 (link 3) gone from the published topology: the file's [[local_link]] that
    // names it is the problem, at its line.
    let (mut config, _) = crate::store::PublishedTopology::source_of(TOPOLOGY).unwrap();
    config.links.retain(|l| l.get_ref().link_id != 3);
    let p = crate::store::PublishedTopology {
        generation: 2,
        source: toml::to_string(&config).unwrap(),
    };
    let e = AgentConfig::parse_with_topology(GATEWAY, &p)
        .unwrap_err()
        .to_string();
    let line = line_of_text(GATEWAY, "link = \"use1-aps1\"");
    assert!(e.contains(&format!("line {line}")), "{e}");
    assert!(e.contains("use1-aps1"), "{e}");
}

#[test]
fn load_store_reads_the_store_section_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    // No topology, which `load` would refuse; `[store]` alone is what is read.
    std::fs::write(
        &path,
        format!("{GATEWAY}\n[store]\nkind = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\"]\n"),
    )
    .unwrap();
    assert!(matches!(
        AgentConfig::load_store(&path).unwrap(),
        crate::store::StoreConfig::Etcd(_)
    ));
    std::fs::write(&path, format!("{GATEWAY}\n[store]\nkind = \"etcd\"\n")).unwrap();
    let e = AgentConfig::load_store(&path).unwrap_err().to_string();
    assert!(
        e.contains("needs store.endpoints") && e.contains("agent.toml"),
        "{e}"
    );
}

/// `auth_key_file` of a local link: a 128-bit key in a file only its owner may read, or a
/// problem naming the field, its line and why.
#[test]
fn link_auth_keys_come_from_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key_file = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let with_key = |path: &std::path::Path| {
        valid().replacen(
            "mtu = 1600\n",
            &format!("mtu = 1600\nauth_key_file = \"{}\"\n", path.display()),
            1,
        )
    };
    let good = key_file("good", "000102030405060708090a0b0c0d0e0F\n", 0o600);
    let c = AgentConfig::parse(&with_key(&good)).unwrap();
    assert_eq!(
        c.local_link(1).unwrap().auth_key,
        Some(ProbeKey {
            k0: 0x0001_0203_0405_0607,
            k1: 0x0809_0a0b_0c0d_0e0f
        })
    );
    assert_eq!(c.local_link(3).unwrap().auth_key, None, "no file, no key");

    for (path, why) in [
        (key_file("group", &"ab".repeat(16), 0o640), "mode 0640"),
        (
            key_file("short", &"ab".repeat(15), 0o600),
            "not a 128-bit key",
        ),
        (
            key_file("nothex", &"zz".repeat(16), 0o600),
            "not a 128-bit key",
        ),
        (key_file("zero", &"00".repeat(16), 0o600), "all zero"),
        (dir.path().join("missing"), "No such file"),
        ("relative.key".into(), "absolute path"),
    ] {
        let text = with_key(&path);
        let e = refused(&text);
        let line = line_of_text(&text, "auth_key_file");
        assert!(
            e.contains(&format!("line {line}: local_link[0].auth_key_file")) && e.contains(why),
            "{why} in {e}"
        );
    }
}
