//! `dwcp`: the operator's command line. Talks to the agent's API (Unix socket by default, or
//! TCP with a bearer token) and reads the pinned maps directly.
//!
//! ```text
//! dwcp show links                 # tables by default; every link, who measured it, when
//! dwcp show lsdb                  # the link-state records
//! dwcp show gateways              # etcd mode: every registered gateway
//! dwcp show routes --json         # the API's JSON
//! dwcp link down use1-aps1        # administrative; waits until the agent shows it
//! dwcp reserve add --from us-east-1 --to eu-west-1 --class realtime --rate 100M --end +1h --path 1
//! dwcp maps                       # the pinned BPF maps, decoded
//! dwcp completions bash > /etc/bash_completion.d/dwcp
//! ```

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use dwcp_cli::{
    client::{ApiClient, ClientError, Endpoint, TlsTrust},
    maps, tables,
    when::parse_when,
};
use dwcp_control::{
    bandwidth::{Admission, ExtendRequest, RawNumber, Reservation, ReservationRequest},
    config::{DEFAULT_PIN_DIR, DEFAULT_SOCKET},
    input::unix_now,
    store::GatewayView,
    view::{
        AdminRequest, AdminResponse, AdminState, ClassView, LinkHealth, LinkView, LsdbView,
        ReloadResponse, RouteChange, RouteView, StatusView, TopologyChanges, TopologyFile,
        TopologyView, TunnelView,
    },
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "dwcp",
    version,
    about = "Operate a dwcp gateway: topology, routes, links, tunnels, reservations, BPF maps"
)]
struct Cli {
    /// The agent's API socket.
    #[arg(long, env = "DWCP_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Use the TCP API at HOST:PORT (over TLS) instead of the socket (needs --ca-file and
    /// --token-file).
    #[arg(long, env = "DWCP_API", global = true)]
    api: Option<String>,
    /// File with the bearer token of the TCP API.
    #[arg(long, env = "DWCP_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) that signed the TCP API's certificate.
    #[arg(long, env = "DWCP_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
    /// Print JSON (the API's answer) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The agent at a glance.
    Status,
    /// Show what the agent knows.
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Bandwidth reservations.
    Reserve {
        #[command(subcommand)]
        action: Reserve,
    },
    /// Take a link administratively down or bring it back up.
    Link {
        state: LinkState,
        /// Link id or name.
        link: String,
        /// Return once the agent accepted it, without waiting to see it applied.
        #[arg(long)]
        no_wait: bool,
    },
    /// Follow the agent's events (link, route, config and reservation changes).
    Events {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Only changes of this owner's reservations (created, preempted, expired, ...).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Make the agent re-read its configuration.
    Reload,
    /// etcd mode: the topology every gateway runs, in the cluster store.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Decode the pinned BPF maps (read-only; needs root).
    Maps {
        #[arg(long, env = "DWCP_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Only these maps (e.g. NEXTHOPS LINK_STATE); all by default.
        names: Vec<String>,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Validate FILE's topology (an agent.toml, or only its [[region]], [[link]], [[edge]]
    /// tables) and publish it as the next generation; every gateway applies it.
    Push { file: PathBuf },
    /// What `push` of FILE would change in the published topology.
    Diff { file: PathBuf },
}

#[derive(Subcommand)]
enum Show {
    /// The agent at a glance (as `dwcp status`).
    Status,
    /// Regions and links.
    Topology,
    /// Routes with their paths and why; one destination region if given.
    Routes {
        destination: Option<String>,
    },
    /// Links with their measurements and who measured them; one link (id or name) if given.
    Links {
        link: Option<String>,
    },
    /// The link-state database: every gateway's record of its links, and the flooding counters.
    Lsdb,
    /// Every gateway registered in the cluster store (etcd mode): region, address, version,
    /// topology generation, last contact.
    Gateways,
    Tunnels,
    /// QoS classes: what the fast path forwarded in each, at what rate, and what is reserved.
    Classes,
    /// The heaviest flows of the current window, from packets the fast path samples.
    Flows,
    /// Reservations; one if an id is given.
    Reservations {
        id: Option<u64>,
    },
    /// Route changes, oldest first.
    History {
        #[arg(long)]
        destination: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
enum Reserve {
    /// Reserve bandwidth on a path of links.
    Add {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// critical, realtime, interactive, bulk or best-effort.
        #[arg(long)]
        class: String,
        /// Bits per second: 100000000, 100M, 1.5G.
        #[arg(long)]
        rate: String,
        /// Unix seconds or +30m, +2h, +1d.
        #[arg(long)]
        end: String,
        /// Unix seconds or +30m; now if absent.
        #[arg(long)]
        start: Option<String>,
        /// 0 (lowest) to 7; the class's default if absent.
        #[arg(long)]
        priority: Option<u8>,
        #[arg(long, default_value = "")]
        owner: String,
        /// Link ids from source to destination, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        path: Vec<u32>,
        /// Names this request (1 to 64 of A-Z a-z 0-9 . _ -); a new one if absent. With the
        /// cluster store, the same request sent again with it (say after a timeout; give
        /// absolute times) returns the reservation the first one made instead of booking
        /// another.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Move a reservation's end later.
    Extend {
        id: u64,
        #[arg(long)]
        end: String,
    },
    /// Cancel a reservation.
    Cancel { id: u64 },
}

#[derive(Clone, Copy, ValueEnum)]
enum LinkState {
    Up,
    Down,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let tcp_without_token = cli.api.is_some() && cli.token_file.is_none();
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("dwcp: {e:#}");
        let unauthorised = matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::Api { status: 401, .. })
        );
        if unauthorised && tcp_without_token {
            eprintln!("dwcp: the TCP API needs its bearer token: add --token-file FILE");
        }
        std::process::exit(1);
    }
}

fn client(cli: &Cli) -> Result<ApiClient> {
    let endpoint = match &cli.api {
        Some(addr) => {
            let token = match &cli.token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading the token file {}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let ca_file = cli
                .ca_file
                .as_ref()
                .context("the TCP API is served over TLS: add --ca-file FILE (its CA)")?;
            Endpoint::Https {
                addr: addr.clone(),
                token,
                trust: TlsTrust::from_pem_file(ca_file)?,
            }
        }
        None => Endpoint::Unix(cli.socket.clone()),
    };
    let mut c = ApiClient::new(endpoint);
    c.timeout = Duration::from_secs(cli.timeout);
    Ok(c)
}

/// Prints `value` as JSON with `--json`, else the table `table` makes of it.
fn print<T: Serialize>(json: bool, value: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    let text = if json {
        serde_json::to_string_pretty(value)? + "\n"
    } else {
        table(value)
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`dwcp show links | head`) is not an error.
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn path_segment(s: &str) -> String {
    // Link and region names are [A-Za-z0-9._-]; anything else is escaped.
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "dwcp", &mut std::io::stdout());
            Ok(())
        }
        Command::Maps { pin_dir, names } => {
            let dumps = if names.is_empty() {
                maps::dump_pinned(pin_dir)?
            } else {
                names
                    .iter()
                    .map(|n| {
                        let name = dwcp_common::maps::names::ALL
                            .iter()
                            .find(|m| m.eq_ignore_ascii_case(n))
                            .with_context(|| {
                                format!(
                                    "no map {n:?}; the maps are {}",
                                    dwcp_common::maps::names::ALL.join(", ")
                                )
                            })?;
                        Ok(maps::dump_one(pin_dir, name)?)
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            print(json, &dumps, |d| maps::render(d))
        }
        Command::Status | Command::Show { what: Show::Status } => {
            let s: StatusView = client(&cli)?.get("/v1/status").await?;
            print(json, &s, tables::status)
        }
        Command::Show { what } => show(&cli, what).await,
        Command::Reserve { action } => reserve(&cli, action).await,
        Command::Link {
            state,
            link,
            no_wait,
        } => set_link(&cli, *state, link, *no_wait).await,
        Command::Events { count, owner } => {
            let mut seen = 0;
            let path = match owner {
                Some(o) => format!("/v1/events?owner={}", path_segment(o)),
                None => "/v1/events".to_string(),
            };
            client(&cli)?
                .events_at(&path, |e| {
                    if json {
                        println!("{{\"event\":{:?},\"data\":{}}}", e.event, e.data);
                    } else {
                        println!("{:<12} {}", e.event, e.data);
                    }
                    seen += 1;
                    count.is_none_or(|c| seen < c)
                })
                .await?;
            Ok(())
        }
        Command::Topology { action } => {
            let (path, file, push) = match action {
                TopologyAction::Push { file } => ("/v1/topology", file, true),
                TopologyAction::Diff { file } => ("/v1/topology/diff", file, false),
            };
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body = TopologyFile { source };
            let method = if push { "PUT" } else { "POST" };
            let r: TopologyChanges = client(&cli)?
                .call(method, path, Some(&body))
                .await
                .with_context(|| format!("{}", file.display()))?;
            print(json, &r, tables::topology_changes)
        }
        Command::Reload => {
            let r: ReloadResponse = client(&cli)?
                .call::<(), _>("POST", "/v1/reload", None)
                .await?;
            print(json, &r, |r| {
                format!("configuration reloaded: generation {}\n", r.generation)
            })
        }
    }
}

async fn show(cli: &Cli, what: &Show) -> Result<()> {
    let c = client(cli)?;
    let json = cli.json;
    match what {
        Show::Status => unreachable!("handled by run"),
        Show::Topology => {
            let t: TopologyView = c.get("/v1/topology").await?;
            print(json, &t, tables::topology)
        }
        Show::Routes { destination: None } => {
            let r: Vec<RouteView> = c.get("/v1/routes").await?;
            print(json, &r, |r| tables::routes(r))
        }
        Show::Routes {
            destination: Some(d),
        } => {
            let r: RouteView = c.get(&format!("/v1/routes/{}", path_segment(d))).await?;
            print(json, &r, |r| tables::routes(std::slice::from_ref(r)))
        }
        Show::Links { link: None } => {
            let l: Vec<LinkView> = c.get("/v1/links").await?;
            let lsdb = lsdb(&c).await?;
            print(json, &l, |l| tables::links(l, lsdb.as_ref(), now_unix_ms()))
        }
        Show::Links { link: Some(l) } => {
            let l: LinkView = c.get(&format!("/v1/links/{}", path_segment(l))).await?;
            let lsdb = lsdb(&c).await?;
            print(json, &l, |l| {
                tables::links(std::slice::from_ref(l), lsdb.as_ref(), now_unix_ms())
            })
        }
        Show::Lsdb => {
            let l: LsdbView = c.get("/v1/lsdb").await?;
            print(json, &l, |l| tables::lsdb(l, now_unix_ms()))
        }
        Show::Gateways => {
            let g: Vec<GatewayView> = c.get("/v1/gateways").await?;
            print(json, &g, |g| tables::gateways(g))
        }
        Show::Tunnels => {
            let t: Vec<TunnelView> = c.get("/v1/tunnels").await?;
            print(json, &t, |t| tables::tunnels(t))
        }
        Show::Classes => {
            let cl: Vec<ClassView> = c.get("/v1/classes").await?;
            print(json, &cl, |cl| tables::classes(cl))
        }
        Show::Flows => {
            let f: dwcp_control::traffic::FlowsView = c.get("/v1/flows").await?;
            print(json, &f, |f| tables::flows(f, unix_now()))
        }
        Show::Reservations { id: None } => {
            let r: Vec<Reservation> = c.get("/v1/reservations").await?;
            print(json, &r, |r| tables::reservations(r, unix_now()))
        }
        Show::Reservations { id: Some(id) } => {
            let r: Reservation = c.get(&format!("/v1/reservations/{id}")).await?;
            print(json, &r, |r| {
                tables::reservations(std::slice::from_ref(r), unix_now())
            })
        }
        Show::History { destination, limit } => {
            let mut query = Vec::new();
            if let Some(d) = destination {
                query.push(format!("destination={}", path_segment(d)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let path = if query.is_empty() {
                "/v1/history".to_string()
            } else {
                format!("/v1/history?{}", query.join("&"))
            };
            let h: Vec<RouteChange> = c.get(&path).await?;
            print(json, &h, |h| tables::history(h))
        }
    }
}

/// The link-state database, `None` when the agent runs without link state.
async fn lsdb(c: &ApiClient) -> Result<Option<LsdbView>> {
    match c.get("/v1/lsdb").await {
        Ok(l) => Ok(Some(l)),
        Err(ClientError::Api { status: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A request id no other invocation makes: the time in nanoseconds and the process.
fn new_request_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cli-{nanos:x}-{:x}", std::process::id())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn reserve(cli: &Cli, action: &Reserve) -> Result<()> {
    let c = client(cli)?;
    let now = unix_now();
    let admitted = |a: &Admission| {
        let mut s = tables::reservations(std::slice::from_ref(&a.reservation), now);
        for p in &a.preempted {
            s.push_str(&format!(
                "preempted reservation {} of {:?} (priority {})\n",
                p.id, p.owner, p.priority
            ));
        }
        s
    };
    match action {
        Reserve::Add {
            from,
            to,
            class,
            rate,
            end,
            start,
            priority,
            owner,
            path,
            request_id,
        } => {
            let req = ReservationRequest {
                owner: owner.clone(),
                source: from.clone(),
                destination: to.clone(),
                class: class.clone(),
                rate: RawNumber::Text(rate.clone()),
                start: start
                    .as_deref()
                    .map(|s| parse_when(s, now).map(RawNumber::from))
                    .transpose()?,
                end: parse_when(end, now)?.into(),
                priority: priority.map(|p| RawNumber::from(u64::from(p))),
                path: path
                    .iter()
                    .map(|&l| RawNumber::from(u64::from(l)))
                    .collect(),
                request_id: Some(request_id.clone().unwrap_or_else(new_request_id)),
            };
            let a: Admission = c.call("POST", "/v1/reservations", Some(&req)).await?;
            print(cli.json, &a, admitted)
        }
        Reserve::Extend { id, end } => {
            let req = ExtendRequest {
                end: parse_when(end, now)?.into(),
            };
            let a: Admission = c
                .call("PATCH", &format!("/v1/reservations/{id}"), Some(&req))
                .await?;
            print(cli.json, &a, admitted)
        }
        Reserve::Cancel { id } => {
            let r: Reservation = c
                .call::<(), _>("DELETE", &format!("/v1/reservations/{id}"), None)
                .await?;
            print(cli.json, &r, |r| {
                format!("cancelled reservation {}\n", r.id)
            })
        }
    }
}

/// Sends the administrative change, then (unless `no_wait`) shows a spinner until the agent's
/// snapshot shows the link in the new state.
async fn set_link(cli: &Cli, state: LinkState, link: &str, no_wait: bool) -> Result<()> {
    let c = client(cli)?;
    let admin = match state {
        LinkState::Up => AdminState::Up,
        LinkState::Down => AdminState::Down,
    };
    let path = format!("/v1/links/{}", path_segment(link));
    let r: AdminResponse = c
        .call(
            "PUT",
            &format!("{path}/admin"),
            Some(&AdminRequest { state: admin }),
        )
        .await?;
    if !no_wait {
        let spinner = ProgressBar::new_spinner().with_message(format!(
            "waiting for the agent to show link {} {}",
            r.name,
            if admin == AdminState::Down {
                "administratively down"
            } else {
                "back in service"
            }
        ));
        spinner.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})")?);
        spinner.enable_steady_tick(Duration::from_millis(100));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.timeout);
        loop {
            let l: LinkView = c.get(&path).await?;
            let applied = match admin {
                AdminState::Down => l.health == LinkHealth::AdminDown,
                AdminState::Up => l.health != LinkHealth::AdminDown,
            };
            if applied {
                spinner.finish_and_clear();
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                spinner.finish_and_clear();
                bail!(
                    "the agent accepted the change but link {} still shows {} after {} s",
                    r.name,
                    tables::health(l.health),
                    cli.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    print(cli.json, &r, |r| {
        format!(
            "link {} ({}) is administratively {}\n",
            r.link,
            r.name,
            match r.state {
                AdminState::Up => "up",
                AdminState::Down => "down",
            }
        )
    })
}
