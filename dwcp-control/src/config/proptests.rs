//! Property tests of [`AgentConfig::parse`]: whatever text it is given (random, TOML-shaped,
//! or a valid file with lines deleted, duplicated, swapped, truncated or given other values),
//! it answers Ok or an error and never panics; and a valid file parses to the same
//! configuration whatever comments and blank lines it has, with the values it says.
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest};
use proptest::strategy::Strategy;
use proptest::test_runner::Config;

use super::tests::valid;
use super::*;

const SECTIONS: &[&str] = &[
    "[gateway]",
    "[[local_link]]",
    "[[prefixes]]",
    "[probe]",
    "[routing]",
    "[routing.balanced]",
    "[routing.constraints]",
    "[traffic]",
    "[reservations]",
    "[policing]",
    "[qos]",
    "[qos.dscp]",
    "[[qos.rule]]",
    "[updater]",
    "[flows]",
    "[api]",
    "[metrics]",
    "[[health_check]]",
    "[[region]]",
    "[[link]]",
    "[[edge]]",
];

const KEYS: &[&str] = &[
    "name",
    "region",
    "lan_interfaces",
    "pin_dir",
    "hash_seed",
    "link",
    "kind",
    "interface",
    "local_ip",
    "peer_ip",
    "via_ip",
    "vni",
    "mtu",
    "handoff",
    "monitored",
    "prefixes",
    "class",
    "sender",
    "rt_priority",
    "interval_ms",
    "detect_multiplier",
    "up_after",
    "loss_window_ms",
    "degraded_loss",
    "backoff_cap_ms",
    "strategy",
    "ecmp",
    "latency",
    "avoid_regions",
    "max_latency_ms",
    "mode",
    "headroom_percent",
    "max_reservations",
    "burst_ms",
    "rewrite_dscp",
    "realtime",
    "port",
    "protocol",
    "direction",
    "short_delay_ms",
    "history_len",
    "sample_every",
    "table_size",
    "socket",
    "socket_mode",
    "socket_group",
    "tcp_listen",
    "token_file",
    "tls_cert",
    "tls_key",
    "max_body_bytes",
    "command_timeout_ms",
    "max_connections",
    "max_connections_per_source",
    "read_timeout_ms",
    "write_timeout_ms",
    "enabled",
    "listen",
    "address",
    "path",
    "expect_status",
    "link_id",
    "a",
    "b",
    "capacity_mbps",
    "latency_ms",
    "cost_per_gb",
    "latitude",
    "longitude",
    "gateways",
    "access_latency_ms",
];

/// A TOML value, well-formed or not, of the kinds the file uses and some it does not.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        "-?[0-9_]{1,30}",
        any::<f64>().prop_map(|v| format!("{v:?}")),
        prop::sample::select(vec![
            "nan",
            "inf",
            "-inf",
            "true",
            "false",
            "0o777",
            "0x64770003",
            "0b101",
            "1e400",
            "[]",
            "[1, \"a\"]",
            "{}",
            "{ fwmark = 1, table = 2 }",
            "1979-05-27T07:32:00Z",
            "\"10.0.0.0/8\"",
            "\"fd00::/129\"",
            "\"1.2.3.4:5\"",
            "\"us-east-1\"",
            "\"use1-euw1\"",
            "\"external\"",
            "\"wireguard\"",
            "\"ul1\"",
            "\"\"",
            "\"",
            "[\"lan0\", \"lan0\"]",
            "[{ name = \"gw\", underlay = \"0.0.0.0\" }]",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,24}".prop_map(|s| format!("{:?}", s)),
        "[ -~]{0,12}",
    ]
}

/// A line of a TOML-shaped file: a section header, `key = value`, a comment or junk.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(SECTIONS).prop_map(str::to_string),
        6 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "#[ -~]{0,20}",
        1 => "\\PC{0,30}",
    ]
}

/// One edit of a file's lines.
#[derive(Clone, Debug)]
enum Edit {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    Revalue(prop::sample::Index, String),
    Insert(prop::sample::Index, String),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let i = any::<prop::sample::Index>;
    prop_oneof![
        i().prop_map(Edit::Delete),
        i().prop_map(Edit::Duplicate),
        (i(), i()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (i(), value()).prop_map(|(a, v)| Edit::Revalue(a, v)),
        (i(), line()).prop_map(|(a, l)| Edit::Insert(a, l)),
        i().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match e {
            Edit::Delete(i) => {
                lines.remove(i.index(n));
            }
            Edit::Duplicate(i) => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            Edit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            Edit::Revalue(i, v) => {
                let l = &mut lines[i.index(n)];
                if let Some((key, _)) = l.split_once(" = ") {
                    *l = format!("{key} = {v}");
                }
            }
            Edit::Insert(i, l) => lines.insert(i.index(n + 1), l.clone()),
            Edit::Truncate(i) => {
                let l = &mut lines[i.index(n)];
                let mut at = i.index(l.len() + 1);
                while !l.is_char_boundary(at) {
                    at -= 1;
                }
                l.truncate(at);
            }
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn any_text_is_answered_without_a_panic(text in "\\PC{0,300}") {
        let _ = AgentConfig::parse(&text);
    }

    #[test]
    fn toml_shaped_text_is_answered_without_a_panic(lines in prop::collection::vec(line(), 0..40)) {
        let _ = AgentConfig::parse(&lines.join("\n"));
    }

    #[test]
    fn an_edited_valid_file_is_answered_without_a_panic(
        extra in prop::collection::vec(line(), 0..6),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let text = format!("{}\n{}\n", valid(), extra.join("\n"));
        let _ = AgentConfig::parse(&apply(&text, &edits));
    }

    #[test]
    fn a_valid_file_parses_to_what_it_says_whatever_its_comments(
        max_connections in 1usize..1_000_000,
        read_timeout_ms in 1u64..3_600_000,
        metrics_connections in 1usize..1_000,
        history_len in 1usize..10_000,
        comments in prop::collection::vec((any::<prop::sample::Index>(), "(#[ -~]{0,30})?"), 0..12),
    ) {
        let text = format!(
            "{}\n[api]\nmax_connections = {max_connections}\nread_timeout_ms = {read_timeout_ms}\n\
             \n[metrics]\nmax_connections = {metrics_connections}\n\
             \n[updater]\nhistory_len = {history_len}\n",
            valid()
        );
        let parsed = AgentConfig::parse(&text);
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.api.max_connections, max_connections);
        prop_assert_eq!(parsed.api.read_timeout_ms, read_timeout_ms);
        prop_assert_eq!(parsed.metrics.max_connections, metrics_connections);
        prop_assert_eq!(parsed.history_len, history_len);
        // Comments and blank lines anywhere between lines change nothing.
        let mut lines: Vec<&str> = text.lines().collect();
        for (at, comment) in &comments {
            lines.insert(at.index(lines.len() + 1), comment);
        }
        let commented = AgentConfig::parse(&lines.join("\n"));
        prop_assert!(commented.is_ok(), "{:?}", commented.err());
        prop_assert!(commented.unwrap() == parsed);
    }
}
