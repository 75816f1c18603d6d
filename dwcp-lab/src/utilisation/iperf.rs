//! TCP load with iperf3 inside the lab's namespaces: a server guard, a client run with a hard
//! deadline, and its JSON report read into per-stream results keyed by the flow's 5-tuple (so
//! each stream can be matched with the path the fast path gave it).

use std::{
    io::Read,
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use dwcp_common::{wire::IPPROTO_TCP, FlowKey};
use serde::Deserialize;
use thiserror::Error;

use crate::netlab::Netns;

#[derive(Debug, Error)]
pub enum IperfError {
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` did not finish within {seconds} s and was stopped")]
    Timeout { cmd: String, seconds: u64 },
    #[error("`{cmd}` failed ({status}): {message}")]
    Failed {
        cmd: String,
        status: String,
        message: String,
    },
    #[error("iperf3 server {addr} is not listening after {seconds} s")]
    NotListening { addr: String, seconds: u64 },
    #[error("client ports {ports} still held after {seconds} s (e.g. {sockets})")]
    PortsBusy {
        ports: String,
        seconds: u64,
        sockets: String,
    },
    #[error("iperf3 report: {0}")]
    Report(String),
    #[error("TCP load: {0}")]
    BadLoad(String),
}

pub type Result<T, E = IperfError> = std::result::Result<T, E>;

/// iperf3's default port.
pub const IPERF_PORT: u16 = 5201;

/// Scheduling priority of iperf3 (client and server): the machine is shared with compilers,
/// and a load generator starved of CPU would measure the scheduler instead of the paths.
pub const LOAD_NICE: &str = "-20";

/// How long a server may take to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// `iperf3 -s` in a namespace, stopped (by its process id) on drop.
pub struct IperfServer {
    child: Child,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl IperfServer {
    /// Starts a server on `ip:port` in `ns` and waits until it listens.
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> Result<IperfServer> {
        let (ip_s, port_s) = (ip.to_string(), port.to_string());
        let argv = [
            "nice", "-n", LOAD_NICE, "iperf3", "-s", "-B", &ip_s, "-p", &port_s,
        ];
        let child = netns_command(ns, &argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| IperfError::Spawn {
                cmd: argv.join(" "),
                source,
            })?;
        let server = IperfServer { child, ip, port };
        let start = Instant::now();
        let filter = format!("sport = :{port}");
        while start.elapsed() < LISTEN_WAIT {
            let listening = ns
                .exec(&["ss", "-Hltn", &filter])
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if listening {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(IperfError::NotListening {
            addr: format!("{ip}:{port}"),
            seconds: LISTEN_WAIT.as_secs(),
        })
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ip netns exec <ns> argv...` (`ip` and `nice` exec the program, so the child's id is
/// iperf3's).
fn netns_command(ns: &Netns, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name()]).args(argv);
    c
}

/// Streams one iperf3 client runs at most.
pub const MAX_FLOWS_PER_CLIENT: u16 = 128;
/// Flows a load may have: up to 8 clients.
pub const MAX_FLOWS: u16 = 8 * MAX_FLOWS_PER_CLIENT;

/// A set of parallel TCP flows from one host to another: one iperf3 client (and server) per
/// 128 flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLoad {
    /// Parallel flows, 1 to `MAX_FLOWS`.
    pub flows: u16,
    /// Measured time, after the omitted warm-up.
    pub seconds: u32,
    /// Warm-up (slow start) left out of the result.
    pub omit_seconds: u32,
    /// Each flow's demand, enforced by the kernel's TCP pacing (`SO_MAX_PACING_RATE`, iperf3
    /// `--fq-rate`), or `None` for flows that send as fast as TCP lets them. Not iperf3's `-b`:
    /// its throttle lets a flow that fell behind send unpaced until it has caught up with its
    /// average, bursts that overrun paths the flows' demands fit into.
    pub per_flow_bps: Option<u64>,
    /// Client ports are `first_client_port ..= first_client_port + flows - 1`: the same flows
    /// (5-tuples, so the same hash buckets) in every run that uses the same load.
    pub first_client_port: u16,
    /// Bytes per write (smaller writes make paced flows less bursty).
    pub write_bytes: u32,
}

impl TcpLoad {
    /// Checks the load against iperf3's limits, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_FLOWS).contains(&self.flows) {
            return Err(IperfError::BadLoad(format!(
                "flows: {} (1 to {MAX_FLOWS}: up to 8 iperf3 clients of {MAX_FLOWS_PER_CLIENT})",
                self.flows
            )));
        }
        if self.seconds == 0 {
            return Err(IperfError::BadLoad("seconds: 0".into()));
        }
        if self.per_flow_bps == Some(0) {
            return Err(IperfError::BadLoad(
                "per_flow_bps: 0 (use None for unlimited flows)".into(),
            ));
        }
        if self.first_client_port == 0
            || u32::from(self.first_client_port) + u32::from(self.flows) - 1 > u32::from(u16::MAX)
        {
            return Err(IperfError::BadLoad(format!(
                "first_client_port: {} leaves no room for {} ports",
                self.first_client_port, self.flows
            )));
        }
        if self.write_bytes == 0 {
            return Err(IperfError::BadLoad("write_bytes: 0".into()));
        }
        Ok(())
    }

    /// The load as iperf3 clients of at most `MAX_FLOWS_PER_CLIENT` flows each, on
    /// consecutive client port ranges.
    pub fn per_client(&self) -> Vec<TcpLoad> {
        (0..self.flows)
            .step_by(usize::from(MAX_FLOWS_PER_CLIENT))
            .map(|first| TcpLoad {
                flows: (self.flows - first).min(MAX_FLOWS_PER_CLIENT),
                first_client_port: self.first_client_port + first,
                ..self.clone()
            })
            .collect()
    }

    /// One client's command line (`flows` at most `MAX_FLOWS_PER_CLIENT`).
    pub fn client_argv(&self, bind: Ipv4Addr, server: Ipv4Addr, port: u16) -> Vec<String> {
        let mut argv: Vec<String> = [
            "nice",
            "-n",
            LOAD_NICE,
            "iperf3",
            "-c",
            &server.to_string(),
            "-p",
            &port.to_string(),
            "-B",
            &bind.to_string(),
            "--cport",
            &self.first_client_port.to_string(),
            "-P",
            &self.flows.to_string(),
            "-t",
            &self.seconds.to_string(),
            "-O",
            &self.omit_seconds.to_string(),
            "-l",
            &self.write_bytes.to_string(),
            "-i",
            "0",
            "-J",
            "--connect-timeout",
            "3000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(bps) = self.per_flow_bps {
            argv.extend(["--fq-rate".to_string(), bps.to_string()]);
        }
        argv
    }

    /// The longest a run may take before it is stopped: its time plus set-up and the
    /// exchange of results.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(u64::from(self.seconds + self.omit_seconds) + 20)
    }
}

/// How long the sockets of a finished run may take to close (a run over a congested path ends
/// with data still queued behind the client's FIN).
const PORTS_FREE_WAIT: Duration = Duration::from_secs(20);

/// Waits until no TCP socket in `ns` holds a port of `first..first + count`.
fn wait_ports_free(ns: &Netns, first: u16, count: u16) -> Result<()> {
    let last = first + (count - 1);
    let filter = format!("( sport >= :{first} and sport <= :{last} )");
    let start = Instant::now();
    loop {
        let out = ns
            .exec(&["ss", "-Htan", &filter])
            .map_err(|e| IperfError::BadLoad(format!("listing sockets: {e}")))?;
        let held = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if held.is_empty() {
            return Ok(());
        }
        if start.elapsed() > PORTS_FREE_WAIT {
            return Err(IperfError::PortsBusy {
                ports: format!("{first}-{last}"),
                seconds: PORTS_FREE_WAIT.as_secs(),
                sockets: held.lines().take(3).collect::<Vec<_>>().join("; "),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running load: one iperf3 client per 128 flows, each to its own server. Stopped on drop
/// if not finished.
pub struct IperfRun {
    clients: Vec<IperfClient>,
}

impl IperfRun {
    /// Starts `load` from `bind` (in `ns`), its clients spread over `servers` (one server per
    /// client needed), once the previous run's sockets have released the load's ports.
    pub fn start(
        ns: &Netns,
        load: &TcpLoad,
        bind: Ipv4Addr,
        servers: &[IperfServer],
    ) -> Result<IperfRun> {
        load.validate()?;
        let parts = load.per_client();
        if parts.len() > servers.len() {
            return Err(IperfError::BadLoad(format!(
                "flows: {} need {} iperf3 servers, {} running",
                load.flows,
                parts.len(),
                servers.len()
            )));
        }
        wait_ports_free(ns, load.first_client_port, load.flows)?;
        let clients = parts
            .iter()
            .zip(servers)
            .map(|(part, server)| IperfClient::spawn(ns, part, bind, server))
            .collect::<Result<_>>()?;
        Ok(IperfRun { clients })
    }

    /// Waits for every client and merges their reports.
    pub fn finish(self) -> Result<IperfReport> {
        let reports = self
            .clients
            .into_iter()
            .map(IperfClient::finish)
            .collect::<Result<Vec<_>>>()?;
        Ok(IperfReport::merge(reports))
    }
}

/// A running iperf3 client. Stopped on drop if not finished.
pub struct IperfClient {
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    cmd: String,
    started: Instant,
    deadline: Duration,
}

impl IperfClient {
    /// Starts `load` (at most `MAX_FLOWS_PER_CLIENT` flows) from `bind` (in `ns`) to
    /// `server`, once the previous run's sockets have released the load's client ports.
    pub fn start(ns: &Netns, load: &TcpLoad, bind: Ipv4Addr, server: &IperfServer) -> Result<Self> {
        load.validate()?;
        if load.flows > MAX_FLOWS_PER_CLIENT {
            return Err(IperfError::BadLoad(format!(
                "flows: {} for one client (at most {MAX_FLOWS_PER_CLIENT}; use IperfRun)",
                load.flows
            )));
        }
        wait_ports_free(ns, load.first_client_port, load.flows)?;
        Self::spawn(ns, load, bind, server)
    }

    fn spawn(ns: &Netns, load: &TcpLoad, bind: Ipv4Addr, server: &IperfServer) -> Result<Self> {
        let argv = load.client_argv(bind, server.ip, server.port);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let cmd = argv.join(" ");
        let mut child = netns_command(ns, &argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| IperfError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        // The JSON report can exceed a pipe's buffer: read it while the client runs.
        let mut out = child.stdout.take().expect("stdout is piped");
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        });
        Ok(IperfClient {
            child: Some(child),
            stdout: Some(stdout),
            cmd,
            started: Instant::now(),
            deadline: load.deadline(),
        })
    }

    /// Waits for the client (stopping it at its deadline) and reads its report.
    pub fn finish(mut self) -> Result<IperfReport> {
        let mut child = self.child.take().expect("finish runs once");
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(IperfError::Timeout {
                        cmd: self.cmd.clone(),
                        seconds: self.deadline.as_secs(),
                    });
                }
                Err(source) => {
                    return Err(IperfError::Spawn {
                        cmd: self.cmd.clone(),
                        source,
                    })
                }
            }
        };
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let report = parse_report(&stdout);
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            // iperf3 -J puts its error in the JSON; fall back to stderr.
            let message = match &report {
                Err(IperfError::Failed { message, .. }) => message.clone(),
                _ => stderr.trim().to_string(),
            };
            return Err(IperfError::Failed {
                cmd: self.cmd.clone(),
                status: status.to_string(),
                message,
            });
        }
        report.map_err(|e| match e {
            IperfError::Failed { message, .. } => IperfError::Failed {
                cmd: self.cmd.clone(),
                status: status.to_string(),
                message,
            },
            e => e,
        })
    }
}

impl Drop for IperfClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One stream of a finished run, as its receiver counted it.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamResult {
    /// The stream's flow as the client's gateway hashes it.
    pub flow: FlowKey,
    pub received_bytes: u64,
    pub seconds: f64,
}

impl StreamResult {
    pub fn goodput_bps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.received_bytes as f64 * 8.0 / self.seconds
        } else {
            0.0
        }
    }
}

/// What a run delivered: bytes the server received after the warm-up.
#[derive(Clone, Debug, PartialEq)]
pub struct IperfReport {
    pub received_bytes: u64,
    pub seconds: f64,
    pub retransmits: u64,
    pub streams: Vec<StreamResult>,
}

impl IperfReport {
    /// One report of several clients run together: bytes and streams added up, over the
    /// longest of their measured times.
    pub fn merge(reports: Vec<IperfReport>) -> IperfReport {
        let mut merged = IperfReport {
            received_bytes: 0,
            seconds: 0.0,
            retransmits: 0,
            streams: Vec::new(),
        };
        for r in reports {
            merged.received_bytes += r.received_bytes;
            merged.seconds = merged.seconds.max(r.seconds);
            merged.retransmits += r.retransmits;
            merged.streams.extend(r.streams);
        }
        merged
    }

    pub fn goodput_bps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.received_bytes as f64 * 8.0 / self.seconds
        } else {
            0.0
        }
    }
}

#[derive(Deserialize)]
struct Json {
    #[serde(default)]
    start: Option<Start>,
    #[serde(default)]
    end: Option<End>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Start {
    #[serde(default)]
    connected: Vec<Connected>,
}

#[derive(Deserialize)]
struct Connected {
    socket: i64,
    local_host: String,
    local_port: u16,
    remote_host: String,
    remote_port: u16,
}

#[derive(Deserialize)]
struct End {
    #[serde(default)]
    streams: Vec<EndStream>,
    sum_received: Option<Sum>,
    sum_sent: Option<Sum>,
}

#[derive(Deserialize)]
struct EndStream {
    receiver: Option<Sum>,
}

#[derive(Deserialize)]
struct Sum {
    #[serde(default)]
    socket: Option<i64>,
    seconds: f64,
    bytes: u64,
    #[serde(default)]
    retransmits: Option<u64>,
}

fn ipv4(what: &str, s: &str) -> Result<Ipv4Addr> {
    s.parse()
        .map_err(|_| IperfError::Report(format!("{what} {s:?} is not an IPv4 address")))
}

/// Reads iperf3's `-J` report of a TCP client run.
pub fn parse_report(json: &[u8]) -> Result<IperfReport> {
    let j: Json = serde_json::from_slice(json)
        .map_err(|e| IperfError::Report(format!("not iperf3 JSON: {e}")))?;
    if let Some(message) = j.error {
        return Err(IperfError::Failed {
            cmd: "iperf3".into(),
            status: "error in report".into(),
            message,
        });
    }
    let start = j
        .start
        .ok_or_else(|| IperfError::Report("no `start` section".into()))?;
    let end = j
        .end
        .ok_or_else(|| IperfError::Report("no `end` section".into()))?;
    let total = end
        .sum_received
        .ok_or_else(|| IperfError::Report("no `end.sum_received`".into()))?;
    let mut streams = Vec::new();
    for s in &end.streams {
        let r = s
            .receiver
            .as_ref()
            .ok_or_else(|| IperfError::Report("a stream without a receiver result".into()))?;
        let socket = r
            .socket
            .ok_or_else(|| IperfError::Report("a stream result without a socket".into()))?;
        let c = start
            .connected
            .iter()
            .find(|c| c.socket == socket)
            .ok_or_else(|| {
                IperfError::Report(format!("stream socket {socket} is not in `connected`"))
            })?;
        let (src, dst) = (
            ipv4("local_host", &c.local_host)?,
            ipv4("remote_host", &c.remote_host)?,
        );
        streams.push(StreamResult {
            flow: FlowKey {
                src: [u32::from(src), 0, 0, 0],
                dst: [u32::from(dst), 0, 0, 0],
                src_port: c.local_port,
                dst_port: c.remote_port,
                proto: IPPROTO_TCP,
            },
            received_bytes: r.bytes,
            seconds: r.seconds,
        });
    }
    Ok(IperfReport {
        received_bytes: total.bytes,
        seconds: total.seconds,
        retransmits: end.sum_sent.and_then(|s| s.retransmits).unwrap_or(0),
        streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of an iperf3 3.12 `-J -P 2` client report (trimmed to the fields read).
    const REPORT: &str = r#"{
      "start": {"connected": [
        {"socket": 5, "local_host": "10.1.0.2", "local_port": 40000,
         "remote_host": "10.2.0.2", "remote_port": 5201},
        {"socket": 7, "local_host": "10.1.0.2", "local_port": 40001,
         "remote_host": "10.2.0.2", "remote_port": 5201}]},
      "intervals": [],
      "end": {
        "streams": [
          {"sender": {"socket": 5, "seconds": 10, "bytes": 1000, "retransmits": 3},
           "receiver": {"socket": 5, "start": 0, "end": 10.0, "seconds": 10.0, "bytes": 900,
                        "bits_per_second": 720, "sender": true}},
          {"sender": {"socket": 7, "seconds": 10, "bytes": 2000, "retransmits": 1},
           "receiver": {"socket": 7, "start": 0, "end": 10.0, "seconds": 10.0, "bytes": 1900,
                        "bits_per_second": 1520, "sender": true}}],
        "sum_sent": {"start": 0, "end": 10, "seconds": 10, "bytes": 3000, "retransmits": 4},
        "sum_received": {"start": 0, "end": 10, "seconds": 10.0, "bytes": 2800}
      }
    }"#;

    #[test]
    fn report_is_read_per_stream() {
        let r = parse_report(REPORT.as_bytes()).unwrap();
        assert_eq!(r.received_bytes, 2800);
        assert_eq!(r.retransmits, 4);
        assert_eq!(r.goodput_bps(), 2240.0);
        assert_eq!(r.streams.len(), 2);
        let s = &r.streams[1];
        assert_eq!(s.flow.src_port, 40001);
        assert_eq!(s.flow.dst_port, 5201);
        assert_eq!(s.flow.src[0], u32::from(Ipv4Addr::new(10, 1, 0, 2)));
        assert_eq!(s.flow.proto, IPPROTO_TCP);
        assert_eq!(s.received_bytes, 1900);
        assert_eq!(s.goodput_bps(), 1520.0);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = parse_report(br#"{"start": {}, "end": {}, "error": "unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("Connection refused"), "{e}");
        let e = parse_report(b"iperf3: error").unwrap_err();
        assert!(e.to_string().contains("not iperf3 JSON"), "{e}");
        let e =
            parse_report(br#"{"start": {"connected": []}, "end": {"streams": []}}"#).unwrap_err();
        assert!(e.to_string().contains("sum_received"), "{e}");
        let unknown_socket = REPORT.replace(
            "\"socket\": 7, \"local_host\"",
            "\"socket\": 9, \"local_host\"",
        );
        let e = parse_report(unknown_socket.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("socket 7"), "{e}");
    }

    fn load() -> TcpLoad {
        TcpLoad {
            flows: 64,
            seconds: 10,
            omit_seconds: 2,
            per_flow_bps: Some(5_000_000),
            first_client_port: 40000,
            write_bytes: 16384,
        }
    }

    #[test]
    fn client_command_line() {
        let argv = load().client_argv(
            Ipv4Addr::new(10, 1, 0, 2),
            Ipv4Addr::new(10, 2, 0, 2),
            IPERF_PORT,
        );
        let line = argv.join(" ");
        assert!(
            line.starts_with(
                "nice -n -20 iperf3 -c 10.2.0.2 -p 5201 -B 10.1.0.2 --cport 40000 -P 64 -t 10 -O 2"
            ),
            "{line}"
        );
        assert!(line.ends_with("--fq-rate 5000000"), "{line}");
        let greedy = TcpLoad {
            per_flow_bps: None,
            ..load()
        };
        assert!(!greedy
            .client_argv(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1)
            .contains(&"--fq-rate".to_string()));
    }

    #[test]
    fn large_loads_are_split_over_clients() {
        let big = TcpLoad {
            flows: 300,
            ..load()
        };
        let parts = big.per_client();
        let shape: Vec<(u16, u16)> = parts
            .iter()
            .map(|p| (p.flows, p.first_client_port))
            .collect();
        assert_eq!(shape, vec![(128, 40000), (128, 40128), (44, 40256)]);
        assert!(parts.iter().all(|p| p.per_flow_bps == big.per_flow_bps));
        assert_eq!(load().per_client(), vec![load()]);
    }

    #[test]
    fn reports_merge() {
        let r = parse_report(REPORT.as_bytes()).unwrap();
        let longer = IperfReport {
            seconds: 10.5,
            ..r.clone()
        };
        let m = IperfReport::merge(vec![r, longer]);
        assert_eq!(m.received_bytes, 5600);
        assert_eq!(m.retransmits, 8);
        assert_eq!(m.streams.len(), 4);
        assert_eq!(m.seconds, 10.5);
    }

    #[test]
    fn bad_loads_are_named() {
        let cases = [
            (TcpLoad { flows: 0, ..load() }, "flows"),
            (
                TcpLoad {
                    flows: MAX_FLOWS + 1,
                    ..load()
                },
                "flows",
            ),
            (
                TcpLoad {
                    seconds: 0,
                    ..load()
                },
                "seconds",
            ),
            (
                TcpLoad {
                    per_flow_bps: Some(0),
                    ..load()
                },
                "per_flow_bps",
            ),
            (
                TcpLoad {
                    first_client_port: 65500,
                    ..load()
                },
                "first_client_port",
            ),
            (
                TcpLoad {
                    first_client_port: 0,
                    ..load()
                },
                "first_client_port",
            ),
            (
                TcpLoad {
                    write_bytes: 0,
                    ..load()
                },
                "write_bytes",
            ),
        ];
        for (l, field) in cases {
            let e = l.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(load().validate().is_ok());
        assert!(TcpLoad {
            first_client_port: 65472,
            ..load()
        }
        .validate()
        .is_ok());
    }
}
