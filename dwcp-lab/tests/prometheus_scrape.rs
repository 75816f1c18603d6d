//! A real Prometheus (Debian's `prometheus`) scrapes the agent's exporter on 127.0.0.1; the
//! test reads the link metrics back through Prometheus' HTTP API, sees a new snapshot arrive,
//! and runs every query of the Grafana dashboard against it.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use dwcp_agent::agent::AgentHandle;
use dwcp_agent::agent::AgentSnapshot;
use dwcp_agent::telemetry::bind;
use dwcp_agent::telemetry::serve;
use dwcp_agent::telemetry::Exporter;
use dwcp_agent::telemetry::MetricsConfig;
use dwcp_cli::client::ApiClient;
use dwcp_cli::client::Endpoint;
use dwcp_lab::fixtures::three_region_snapshot;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

mod deploy_files_exprs {
    // The dashboard's queries, read the same way the deploy-file test reads them.
    pub fn exprs() -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/grafana/dwcp-dashboard.json");
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Kills and reaps the Prometheus process, also when the test fails.
struct PrometheusGuard(Child);

impl Drop for PrometheusGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /api/v1/query?query=...` -> the JSON answer (Null while Prometheus is not listening).
async fn try_query(prom: &ApiClient, promql: &str) -> Value {
    match prom
        .request_raw(
            "GET",
            &format!("/api/v1/query?query={}", urlencode(promql)),
            &[],
            None,
        )
        .await
    {
        Ok(r) => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

async fn query(prom: &ApiClient, promql: &str) -> Value {
    let answer = try_query(prom, promql).await;
    assert!(!answer.is_null(), "Prometheus answers {promql}");
    answer
}

/// The value of the sample of `promql` whose label `label` is `value`.
fn sample(answer: &Value, label: &str, value: &str) -> Option<f64> {
    answer["data"]["result"]
        .as_array()?
        .iter()
        .find(|s| s["metric"][label] == value)
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
}

/// Polls until `check` holds, at most `limit` (Prometheus scrapes every second here).
async fn wait_for(
    prom: &ApiClient,
    log: &std::path::Path,
    promql: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let answer = try_query(prom, promql).await;
        if check(&answer) {
            return answer;
        }
        assert!(
            start.elapsed() < limit,
            "{promql}: last answer {answer}; Prometheus log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_exporter_and_finds_the_link_metrics() {
    let (snap_tx, snap_rx) = watch::channel(Arc::new(three_region_snapshot()));
    let handle = AgentHandle {
        snapshot: snap_rx,
        events: broadcast::channel(1).0,
        commands: mpsc::channel(1).0,
    };
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let exporter_addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Exporter::new(&handle),
        MetricsConfig::default().limits(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: dwcp\n    static_configs:\n      - targets: ['{exporter_addr}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log_path = dir.path().join("prometheus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus runs (Debian's prometheus package; scripts/bootstrap.sh installs it)");
    let _guard = PrometheusGuard(child);
    let mut prom = ApiClient::new(Endpoint::Http(format!("127.0.0.1:{port}")));
    prom.timeout = Duration::from_secs(5);
    let limit = Duration::from_secs(60);

    // Prometheus starts, scrapes, and the target is healthy.
    let up = wait_for(&prom, &log_path, "up{job=\"dwcp\"}", limit, |a| {
        sample(a, "job", "dwcp") == Some(1.0)
    })
    .await;
    assert_eq!(up["status"], "success");
    let rtt = wait_for(&prom, &log_path, "dwcp_link_rtt_seconds", limit, |a| {
        sample(a, "link", "use1-euw1").is_some()
    })
    .await;
    assert_eq!(sample(&rtt, "link", "use1-euw1"), Some(0.0803));
    assert_eq!(sample(&rtt, "link", "use1-aps1"), Some(0.2011));
    assert_eq!(
        sample(&rtt, "link", "euw1-aps1"),
        None,
        "unmeasured link has no RTT"
    );
    let loss = query(&prom, "dwcp_link_loss_ratio").await;
    assert_eq!(sample(&loss, "link", "use1-aps1"), Some(0.07));
    let util = query(&prom, "dwcp_link_utilisation_ratio").await;
    assert_eq!(sample(&util, "link", "use1-euw1"), Some(0.3));
    let degraded = query(&prom, "dwcp_link_health{state=\"degraded\"} == 1").await;
    assert_eq!(sample(&degraded, "link", "use1-aps1"), Some(1.0));
    let probes = query(&prom, "dwcp_link_probes_received_total").await;
    assert_eq!(sample(&probes, "link", "use1-euw1"), Some(11998.0));
    // OpenMetrics carried the metadata: Prometheus knows the types and units.
    let meta = prom
        .request_raw(
            "GET",
            "/api/v1/metadata?metric=dwcp_link_rtt_seconds",
            &[],
            None,
        )
        .await
        .unwrap();
    let meta: Value = serde_json::from_slice(&meta.body).unwrap();
    assert_eq!(
        meta["data"]["dwcp_link_rtt_seconds"][0]["type"], "gauge",
        "{meta}"
    );
    assert_eq!(
        meta["data"]["dwcp_link_rtt_seconds"][0]["unit"], "seconds",
        "{meta}"
    );

    // A new snapshot from the agent shows in the next scrape.
    let mut next: AgentSnapshot = three_region_snapshot();
    next.links[0].rtt_seconds = Some(0.1234);
    next.failovers_total = 5;
    snap_tx.send_replace(Arc::new(next));
    wait_for(
        &prom,
        &log_path,
        "dwcp_link_rtt_seconds{link=\"use1-euw1\"}",
        limit,
        |a| sample(a, "link", "use1-euw1") == Some(0.1234),
    )
    .await;
    let failovers = query(&prom, "dwcp_failovers_total").await;
    assert_eq!(failovers["data"]["result"][0]["value"][1], "5");

    // Every query of the dashboard is valid PromQL over these series.
    for expr in deploy_files_exprs::exprs() {
        let promql = expr
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        let answer = query(&prom, &promql).await;
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
    }

    // The target never failed a scrape.
    let targets = prom
        .request_raw("GET", "/api/v1/targets", &[], None)
        .await
        .unwrap();
    let targets: Value = serde_json::from_slice(&targets.body).unwrap();
    let t = &targets["data"]["activeTargets"][0];
    assert_eq!(t["health"], "up", "{t}");
    assert_eq!(t["lastError"], "", "{t}");

    stop_tx.send(()).unwrap();
    server.await.unwrap();
}
