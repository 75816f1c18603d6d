//! The files in `deploy/` stay true to the code: the example agent.toml parses with the
//! sections' real types (with every commented option too), the Prometheus config passes
//! `promtool check config`, the systemd units pass `systemd-analyze verify` and keep the
//! probes going through an agent restart, and the Grafana dashboard only queries metrics the
//! exporter exports.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use dwcp_agent::agent::AgentHandle;
use dwcp_agent::agent::ReservationsView;
use dwcp_agent::api::ApiConfig;
use dwcp_agent::telemetry::Exporter;
use dwcp_agent::telemetry::MetricsConfig;
use dwcp_control::bandwidth::ManagerConfig;
use dwcp_control::config::LinkStateSection;
use dwcp_control::config::ProbeSenderMode;
use dwcp_control::config::{StoreKind, StoreSection};
use dwcp_control::store::DEFAULT_PREFIX;
use dwcp_control::topology::Topology;
use dwcp_control::traffic::PolicingConfig;
use dwcp_lab::fixtures::three_region_snapshot;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, watch};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// The lines of `[section]` (up to the next table header).
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("[{name}]");
    text.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect()
}

/// Parses a section as `T`, as written, and with every `# key = value` option uncommented.
fn parse_section<T: DeserializeOwned>(text: &str, name: &str) -> (T, T) {
    let lines = section(text, name);
    let as_written: T =
        toml::from_str(&lines.join("\n")).unwrap_or_else(|e| panic!("[{name}] as written: {e}"));
    let uncommented: Vec<String> = lines
        .iter()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect();
    let all: T = toml::from_str(&uncommented.join("\n"))
        .unwrap_or_else(|e| panic!("[{name}] with every option: {e}"));
    (as_written, all)
}

#[test]
fn agent_toml_sections_parse_with_their_types_and_document_the_defaults() {
    let text = std::fs::read_to_string(deploy("agent.toml")).unwrap();
    let whole: toml::Table = toml::from_str(&text).expect("agent.toml is TOML");
    for key in [
        "gateway",
        "local_link",
        "prefixes",
        "probe",
        "api",
        "metrics",
        "link_state",
        "region",
        "link",
    ] {
        assert!(whole.contains_key(key), "agent.toml has [{key}]");
    }

    let (api, api_all): (ApiConfig, ApiConfig) = parse_section(&text, "api");
    assert_eq!(api.socket_group.as_deref(), Some("dwcp"));
    let default = ApiConfig::default();
    assert_eq!(api_all.socket, default.socket);
    assert_eq!(api_all.socket_mode, 0o660);
    assert_eq!(api_all.max_body_bytes, default.max_body_bytes);
    assert_eq!(api_all.command_timeout_ms, default.command_timeout_ms);
    assert_eq!(api_all.max_connections, default.max_connections);
    assert_eq!(api_all.read_timeout_ms, default.read_timeout_ms);
    assert!(api_all.tcp_listen.is_some() && api_all.token_file.is_some());
    assert!(api_all.tls_cert.is_some() && api_all.tls_key.is_some());

    let (res, res_all): (ManagerConfig, ManagerConfig) = parse_section(&text, "reservations");
    assert_eq!(res, ManagerConfig::default());
    assert_eq!(res_all, ManagerConfig::default(), "documented defaults");
    let (pol, pol_all): (PolicingConfig, PolicingConfig) = parse_section(&text, "policing");
    assert_eq!(pol, PolicingConfig::default());
    assert_eq!(pol_all, PolicingConfig::default(), "documented defaults");

    let (metrics, metrics_all): (MetricsConfig, MetricsConfig) = parse_section(&text, "metrics");
    assert_eq!(metrics, MetricsConfig::default());
    assert_eq!(metrics_all, MetricsConfig::default());

    let (ls, ls_all): (LinkStateSection, LinkStateSection) = parse_section(&text, "link_state");
    assert_eq!(ls, LinkStateSection::default());
    assert_eq!(ls_all, LinkStateSection::default(), "documented defaults");

    let (store, store_all): (StoreSection, StoreSection) = parse_section(&text, "store");
    assert_eq!(store, StoreSection::default());
    assert_eq!(store_all, StoreSection::default(), "documented default");
    // The etcd example, indented so that it is not taken for a default.
    let example: String = section(&text, "store")
        .iter()
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| format!("{l}\n"))
        .collect();
    let example: StoreSection = toml::from_str(&example).expect("the etcd example parses");
    assert_eq!(example.kind, StoreKind::Etcd);
    assert_eq!(example.prefix.as_deref(), Some(DEFAULT_PREFIX));
    assert!(example.endpoints.len() == 3 && example.tls_key.is_some());

    // The topology part is the topology module's schema, and validates.
    let mut topology = String::new();
    for table in ["region", "link", "edge"] {
        if let Some(toml::Value::Array(items)) = whole.get(table) {
            let mut doc = toml::Table::new();
            doc.insert(table.into(), toml::Value::Array(items.clone()));
            topology.push_str(&toml::to_string(&doc).unwrap());
        }
    }
    let t = Topology::from_toml_str(&topology).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.regions().len(), 3);
    assert_eq!(t.links().len(), 3);
}

#[test]
fn prometheus_config_passes_promtool() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_units_verify() {
    // The units name binaries under /usr/local/bin, which are not installed here: verify
    // copies that run /bin/true instead, so only the units' own syntax and directives are
    // judged. Both together, so the agent's Wants= on the prober resolves.
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (unit, exec) in [
        (
            "dwcp-agent.service",
            "/usr/local/bin/dwcp-agent --config /etc/dwcp/agent.toml",
        ),
        (
            "dwcp-prober.service",
            "/usr/local/bin/dwcp-prober --config /etc/dwcp/agent.toml",
        ),
    ] {
        let text = std::fs::read_to_string(deploy(unit)).unwrap();
        assert!(text.contains(&format!("ExecStart={exec}\n")), "{unit}");
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace(exec, "/bin/true")).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Both checks are needed: the exit status fails on errors (a command that is not
    // executable, a dependency that cannot be loaded) but stays 0 on what verify reports and
    // ignores (an unknown key, a value it cannot parse: "…, ignoring"), which the lines naming
    // a unit catch. `verify` loads units offline, without the manager: it exits 0 for these
    // units in a container without systemd as PID 1 (checked with systemd 252), so a failing
    // status is the units' fault, not the environment's.
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}): {said}",
        out.status
    );
    let about_units: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("dwcp-agent.service") || l.contains("dwcp-prober.service"))
        .collect();
    assert!(about_units.is_empty(), "{said}");
}

/// The values of `key=` in a unit file (every occurrence, in order).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// The shipped files keep forwarding through a restart or a crash of the agent: the probes
/// come from dwcp-prober, a unit of its own that no agent restart touches; both units allow
/// the real-time priority the configuration may ask for; the agent may hold every
/// connection its limits allow; the operators' group can reach the API socket.
#[test]
fn the_shipped_units_keep_probing_through_an_agent_restart() {
    let agent_unit = std::fs::read_to_string(deploy("dwcp-agent.service")).unwrap();
    let prober_unit = std::fs::read_to_string(deploy("dwcp-prober.service")).unwrap();
    let config = dwcp_control::AgentConfig::load(&deploy("agent.toml")).unwrap();
    assert_eq!(config.probe_sender, ProbeSenderMode::External);

    // Tied by nothing that propagates a stop or a restart.
    for (unit, other) in [
        (&agent_unit, "dwcp-prober.service"),
        (&prober_unit, "dwcp-agent.service"),
    ] {
        for key in ["Requires", "BindsTo", "PartOf", "Requisite"] {
            assert!(
                unit_values(unit, key).iter().all(|v| !v.contains(other)),
                "{key}= on {other}"
            );
        }
    }
    assert_eq!(unit_values(&agent_unit, "Wants")[1], "dwcp-prober.service");
    assert_eq!(unit_values(&prober_unit, "Restart"), ["always"]);
    assert_eq!(unit_values(&prober_unit, "StartLimitIntervalSec"), ["0"]);

    // SCHED_FIFO at probe.rt_priority: allowed wherever probes are sent.
    for unit in [&agent_unit, &prober_unit] {
        let caps = unit_values(unit, "CapabilityBoundingSet").join(" ");
        assert!(caps.split(' ').any(|c| c == "CAP_SYS_NICE"), "{caps}");
        assert!(unit_values(unit, "RestrictRealtime").is_empty());
    }

    // Every connection the limits allow, with the TCP API on too.
    let dir = tempfile::tempdir().unwrap();
    let all = write_every_option(dir.path());
    let every_option = dwcp_control::AgentConfig::load(&all).unwrap();
    assert!(every_option.api.tcp_listen.is_some());
    let nofile: u64 = unit_values(&agent_unit, "LimitNOFILE")[0].parse().unwrap();
    let needed = dwcp_agent::http::fds_needed(&every_option);
    assert!(nofile >= needed, "LimitNOFILE={nofile} < {needed}");

    // The socket: group-writable, owned by the operators' group, in a directory they can
    // traverse.
    assert_eq!(config.api.socket_group.as_deref(), Some("dwcp"));
    assert_eq!(config.api.socket_mode & 0o060, 0o060);
    let runtime_mode =
        u32::from_str_radix(&unit_values(&agent_unit, "RuntimeDirectoryMode")[0], 8).unwrap();
    assert_eq!(runtime_mode & 0o011, 0o011, "{runtime_mode:o}");
    assert_eq!(unit_values(&agent_unit, "RuntimeDirectory"), ["dwcp"]);
    assert!(config.api.socket.as_ref().unwrap().starts_with("/run/dwcp"));
}

/// `dwcp-prober --config` takes the pin directory and probe settings of agent.toml, and
/// refuses a configuration whose agent sends the probes itself.
#[test]
fn the_prober_reads_the_agents_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins");
    let text = std::fs::read_to_string(deploy("agent.toml"))
        .unwrap()
        .replace(
            "# pin_dir = \"/sys/fs/bpf/dwcp\"",
            &format!("pin_dir = \"{}\"", pins.display()),
        );
    let run = |text: &str| {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(dwcp_lab::bin("dwcp-prober"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // No agent has pinned anything there: it fails, on the configured maps.
    let err = run(&text);
    assert!(
        err.contains(&format!("starting on the maps in {}", pins.display())),
        "{err}"
    );
    let err = run(&text.replace("sender = \"external\"", "sender = \"agent\""));
    assert!(err.contains("probe.sender is not \"external\""), "{err}");
}

/// `dwcp_...` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("dwcp_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

pub fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/dwcp-dashboard.json")).unwrap(),
    )
    .unwrap();
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    // The reservation figures are exported when the agent keeps reservations.
    let mut snapshot = three_region_snapshot();
    let (manager, _) = dwcp_control::bandwidth::ReservationManager::open(
        Box::new(dwcp_control::bandwidth::MemoryStore::default()),
        dwcp_lab::fixtures::network_of(&snapshot),
        ManagerConfig::default(),
    )
    .unwrap();
    snapshot.reservations = Some(Arc::new(ReservationsView::new(
        &manager,
        dwcp_control::input::unix_now(),
    )));
    let (_tx, rx) = watch::channel(Arc::new(snapshot));
    let handle = AgentHandle {
        snapshot: rx,
        events: broadcast::channel(1).0,
        commands: mpsc::channel(1).0,
    };
    let text = Exporter::new(&handle).prometheus_text();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "the dashboard queries {name}, which the exporter does not export"
            );
        }
    }
    for wanted in [
        "dwcp_link_rtt_seconds",
        "dwcp_link_loss_ratio",
        "dwcp_link_utilisation_ratio",
        "dwcp_failovers_total",
        "dwcp_class_bytes_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(wanted)),
            "a panel shows {wanted}"
        );
    }
}

/// `# key = value` lines uncommented (the file's optional settings), prose comments kept.
fn uncomment_all(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-')
                }) =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_agent_accepts_the_example_config_as_written_and_with_every_option() {
    let check = |path: &Path| {
        let out = Command::new(dwcp_lab::bin("dwcp-agent"))
            .args(["--check", "--config"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(&deploy("agent.toml"));
    let dir = tempfile::tempdir().unwrap();
    let all = write_every_option(dir.path());
    let text = std::fs::read_to_string(&all).unwrap();
    assert!(text.contains("\ntcp_listen = ") && text.contains("\nbest-effort = 0"));
    assert!(text.contains("\nauth_key_file = "));
    check(&all);
}

/// The example with every option on (`uncomment_all`) in `dir`, its link key file made there
/// as an operator would (`openssl rand -hex 16`, mode 0600): the agent reads it at load.
fn write_every_option(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("link-1.key");
    std::fs::write(&key, "00112233445566778899aabbccddeeff\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = uncomment_all(&std::fs::read_to_string(deploy("agent.toml")).unwrap()).replace(
        "auth_key_file = \"/etc/dwcp/keys/link-1.key\"",
        &format!("auth_key_file = \"{}\"", key.display()),
    );
    let all = dir.join("agent.toml");
    std::fs::write(&all, text).unwrap();
    all
}
