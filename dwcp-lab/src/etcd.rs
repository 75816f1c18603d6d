//! A real three-member etcd cluster for tests and benchmarks (Debian's `etcd-server` 3.4).
//! Each member runs in its own network namespace, joined to the root namespace by a veth on
//! a bridge so that the test process reaches the client URLs; data directories are on a
//! tmpfs of the cluster's own (etcd 3.4 has no `--unsafe-no-fsync`). The guard kills the
//! members and removes the namespaces, the bridge and the tmpfs when it drops, also when the
//! test fails.
//!
//! The lab of `cargo xtask lab up --store etcd` starts one with stable names
//! ([`EtcdCluster::start_stable`]) and keeps it ([`EtcdCluster::keep`]) past the command that
//! started it; `lab down` removes it by those names ([`StableNames`]), also without the lab's
//! state file.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::netlab::{self, run, NetlabError, Netns};

pub const MEMBERS: usize = 3;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// Generous: three members elect a leader in about a second, on a loaded 2-core machine
/// sometimes much later.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);
/// How long a removed cluster's veths may take to go (the kernel frees a namespace's devices
/// after `ip netns del` returns; seconds on a loaded machine).
const RELEASED_WITHIN: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum EtcdLabError {
    #[error(transparent)]
    Netlab(#[from] NetlabError),
    #[error("etcd cluster: {0}")]
    Io(#[from] std::io::Error),
    #[error("etcd cluster not healthy within {within:?}: {detail}")]
    Unhealthy { within: Duration, detail: String },
    #[error("etcd cluster: {0}")]
    Status(String),
}

pub type Result<T, E = EtcdLabError> = std::result::Result<T, E>;

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

struct Member {
    name: String,
    ns: Netns,
    ip: Ipv4Addr,
    process: Option<Child>,
}

pub struct EtcdCluster {
    /// Members before the bridge: their namespaces (and veths) go first.
    members: Vec<Member>,
    /// Left running when the guard drops ([`EtcdCluster::keep`]).
    kept: bool,
    /// Members in process groups of their own: a Ctrl-C of the command that started a kept
    /// cluster does not reach them.
    detached: bool,
    bridge: String,
    tmpfs: PathBuf,
    initial_cluster: String,
    token: String,
    /// The bridge's `10.254.<subnet>.0/24`.
    subnet: u8,
    /// With `start_tls`: the files of clients (the members' own are beside them).
    tls: Option<ClientTls>,
    /// Namespaces given a port on the bridge (`attach`).
    attached: u8,
}

impl EtcdCluster {
    /// Starts the three members and waits until the cluster has a leader and every member
    /// answers.
    pub fn start() -> Result<EtcdCluster> {
        Self::start_with(false)
    }

    /// [`EtcdCluster::start`], the members serving clients over TLS only, to clients with a
    /// certificate of the cluster's CA (`--client-cert-auth`): [`EtcdCluster::client_tls`].
    pub fn start_tls() -> Result<EtcdCluster> {
        Self::start_with(true)
    }

    /// The CA, client certificate and key of a cluster started with `start_tls`.
    pub fn client_tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// A TLS cluster ([`EtcdCluster::start_tls`]) named after `names`, to be kept
    /// ([`EtcdCluster::keep`]) by a lab that outlives its command.
    pub fn start_stable(names: &StableNames) -> Result<EtcdCluster> {
        let pid = std::process::id();
        let subnet = free_subnet(pid, NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed))?;
        Self::start_named(
            Naming {
                namespaces: Some(names.namespaces()),
                bridge: names.bridge(),
                tmpfs: names.dir.clone(),
                token: format!("dwcp-lab-{}", names.tag),
                subnet,
                detached: true,
            },
            true,
        )
    }

    /// Leaves the members running, and their namespaces, bridge and tmpfs in place, when the
    /// guard drops: [`StableNames::remove`] removes them.
    pub fn keep(mut self) {
        self.kept = true;
        for m in self.members.drain(..) {
            m.ns.keep();
        }
    }

    fn start_with(tls: bool) -> Result<EtcdCluster> {
        let pid = std::process::id();
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        Self::start_named(
            Naming {
                namespaces: None,
                bridge: format!("de{pid}c{n}"),
                tmpfs: PathBuf::from(format!("/tmp/dwcp-etcd-{pid}-{n}")),
                token: format!("dwcp-lab-{pid}-{n}"),
                subnet: free_subnet(pid, n)?,
                detached: false,
            },
            tls,
        )
    }

    fn start_named(naming: Naming, tls: bool) -> Result<EtcdCluster> {
        let Naming {
            namespaces,
            bridge,
            tmpfs,
            token,
            subnet,
            detached,
        } = naming;
        // The guard exists from the first resource on, so a failure half-way cleans up.
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            kept: false,
            detached,
            bridge: bridge.clone(),
            tmpfs: tmpfs.clone(),
            initial_cluster: String::new(),
            token,
            subnet,
            attached: 0,
            tls: None,
        };
        std::fs::create_dir_all(&tmpfs)?;
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=4g",
            "tmpfs",
            &tmpfs.to_string_lossy(),
        ])?;
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", subnet_ip(subnet, 1)),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..MEMBERS {
            let ns = match &namespaces {
                Some(names) => Netns::create_named(names[i].clone())?,
                None => Netns::new("etcd")?,
            };
            let ip = subnet_ip(subnet, 2 + i as u8);
            bridge_port(&bridge, &format!("{bridge}m{i}"), &ns, "eth0", ip)?;
            let name = format!("m{i}");
            std::fs::create_dir_all(tmpfs.join(&name))?;
            cluster.members.push(Member {
                name,
                ns,
                ip,
                process: None,
            });
        }
        if tls {
            cluster.tls = Some(ClientTls::create(&tmpfs, &cluster.members)?);
        }
        cluster.initial_cluster = cluster
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",");
        cluster.start_members()?;
        Ok(cluster)
    }

    /// `http://ip:2379` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| client_url(m.ip, self.tls.is_some()))
            .collect()
    }

    /// The `[store]` section of an agent of this cluster (etcd mode, the default prefix); the
    /// agent's namespace must be `attach`ed.
    pub fn store_section(&self) -> String {
        let endpoints: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let mut s = format!(
            "[store]\nkind = \"etcd\"\nendpoints = [{}]\n",
            endpoints.join(", ")
        );
        if let Some(t) = &self.tls {
            s += &format!(
                "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            );
        }
        s
    }

    /// Gives namespace `ns` (a gateway's, so an agent in it reaches the members) an interface
    /// `ifname` on the cluster's bridge, and returns its address. The interface goes with the
    /// namespace; until then the bridge's removal only leaves it unconnected.
    pub fn attach(&mut self, ns: &Netns, ifname: &str) -> Result<Ipv4Addr> {
        // Members are .2 to .4; clients from .10 on.
        let k = self.attached;
        if k >= 200 {
            return Err(EtcdLabError::Status("no address left on the bridge".into()));
        }
        let ip = subnet_ip(self.subnet, 10 + k);
        let outside = format!("{}a{k}", self.bridge);
        bridge_port(&self.bridge, &outside, ns, ifname, ip)?;
        self.attached += 1;
        Ok(ip)
    }

    /// The member (index) that leads now.
    pub fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let statuses = self.statuses();
            let leader = statuses.iter().flatten().next().map(|s| s.leader);
            if let Some(leader) = leader {
                if let Some(i) = statuses
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|s| s.member == leader))
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                return Err(EtcdLabError::Status("no member reports a leader".into()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the leader (SIGKILL) and returns its index; the other two elect a new one.
    pub fn kill_leader(&mut self) -> Result<usize> {
        let i = self.leader()?;
        self.kill(i);
        Ok(i)
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data (after `kill`).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].process.is_none() {
            self.spawn(i)?;
        }
        self.wait_healthy()
    }

    /// Kills every member: the whole store is down.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member on its data and waits until the cluster is healthy.
    pub fn start_again(&mut self) -> Result<()> {
        self.start_members()
    }

    /// Compacts the history up to the current revision, which it returns.
    pub fn compact(&self) -> Result<i64> {
        let revision = self
            .statuses()
            .into_iter()
            .flatten()
            .map(|s| s.revision)
            .max()
            .ok_or_else(|| EtcdLabError::Status("no member answers".into()))?;
        self.etcdctl(&self.endpoints(), &["compact", &revision.to_string()])?;
        Ok(revision)
    }

    /// Logs of member `i` (for a failing test's message).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.tmpfs.join(format!("{}.log", self.members[i].name))
    }

    fn start_members(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                self.spawn(i)?;
            }
        }
        self.wait_healthy()
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let m = &self.members[i];
        let data = self.tmpfs.join(&m.name);
        let peer = format!("http://{}:{PEER_PORT}", m.ip);
        let client = client_url(m.ip, self.tls.is_some());
        // `ip netns exec` execs etcd: the child is etcd itself, killed by its pid.
        let mut cmd = Command::new("ip");
        if self.detached {
            cmd.process_group(0);
        }
        let child = cmd
            .args(["netns", "exec", m.ns.name(), "etcd"])
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.server_cert.clone().into_os_string(),
                    "--key-file".into(),
                    t.server_key.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    t.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.members[i].process = Some(child);
        Ok(())
    }

    /// Waits until every running member answers and one of them leads.
    fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].process.is_some())
            .collect();
        loop {
            let statuses = self.statuses();
            let ok = running.iter().all(|&i| {
                statuses[i]
                    .as_ref()
                    .is_some_and(|s| s.leader != 0 && s.raft_index > 0)
            });
            if ok
                && self
                    .etcdctl(&self.endpoints(), &["endpoint", "health", "--cluster"])
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EtcdLabError::Unhealthy {
                    within: HEALTHY_WITHIN,
                    detail: format!("statuses {statuses:?}; log of m0:\n{}", self.log(0)),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Each member's status, `None` for one that does not answer.
    fn statuses(&self) -> Vec<Option<Status>> {
        self.members
            .iter()
            .map(|m| {
                let out = self
                    .etcdctl(
                        &[client_url(m.ip, self.tls.is_some())],
                        &["endpoint", "status", "-w", "json"],
                    )
                    .ok()?;
                Status::parse(&out)
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if std::thread::panicking() {
            for i in 0..self.members.len() {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("etcd member m{i}, end of its log:");
                tail.iter().rev().for_each(|l| eprintln!("  {l}"));
            }
        }
        self.stop();
        // Deleting a namespace deletes its veth end, and with it the bridge's.
        self.members.clear();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = Command::new("umount").arg(&self.tmpfs).output();
        let _ = std::fs::remove_dir(&self.tmpfs);
    }
}

/// How a cluster's resources are named.
struct Naming {
    /// The members' namespaces; `None`: unique ones, removed with the guard.
    namespaces: Option<Vec<String>>,
    bridge: String,
    tmpfs: PathBuf,
    token: String,
    subnet: u8,
    detached: bool,
}

/// The names of a lab's kept cluster ([`EtcdCluster::start_stable`]), derived from the lab's
/// namespace prefix and a directory of its own: `<prefix>-e1` to `-e3`, the bridge `le<tag>`
/// (interface names are short; the tag is the lab's [`crate::lab::multi::interface_tag`]),
/// and the tmpfs mounted on `dir` (data, logs, TLS files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StableNames {
    pub prefix: String,
    pub dir: PathBuf,
    tag: String,
}

impl StableNames {
    pub fn new(prefix: &str, dir: &Path) -> StableNames {
        StableNames {
            prefix: prefix.into(),
            dir: dir.into(),
            tag: crate::lab::multi::interface_tag(prefix),
        }
    }

    pub fn namespaces(&self) -> Vec<String> {
        (1..=MEMBERS)
            .map(|i| format!("{}-e{i}", self.prefix))
            .collect()
    }

    pub fn bridge(&self) -> String {
        format!("le{}", self.tag)
    }

    /// Whether a member runs with its data under `dir` (an etcd command line's arguments).
    pub fn is_member(&self, args: &[String]) -> bool {
        args.windows(2)
            .any(|w| w[0] == "--data-dir" && Path::new(&w[1]).starts_with(&self.dir))
    }

    /// What is left of the cluster besides its processes: namespaces, the bridge and the
    /// veths on it (in the root namespace, named after the bridge), the tmpfs.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = self.namespaces_left();
        left.extend(self.interfaces().into_iter().map(|i| {
            if i == self.bridge() {
                format!("bridge {i}")
            } else {
                format!("interface {i}")
            }
        }));
        if self.mounted() {
            left.push(format!("tmpfs {}", self.dir.display()));
        }
        left
    }

    fn namespaces_left(&self) -> Vec<String> {
        let listed = run(&["ip", "netns", "list"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        self.namespaces()
            .into_iter()
            .filter(|n| {
                listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(n))
            })
            .map(|n| format!("namespace {n}"))
            .collect()
    }

    /// The bridge and the veths named after it, in the root namespace.
    fn interfaces(&self) -> Vec<String> {
        let bridge = self.bridge();
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&bridge))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&*self.dir.to_string_lossy()))
        })
    }

    /// Removes the namespaces, the bridge and the tmpfs (its members must be stopped: the
    /// caller finds them with [`StableNames::is_member`]; and the namespaces given a port,
    /// [`EtcdCluster::attach`], should be gone). Waits until the kernel has released every
    /// veth named after the bridge (a namespace's removal finishes after `ip netns del`
    /// returns), so that a cluster of the same names can start at once. Idempotent; returns
    /// the namespaces, bridge and tmpfs it removed.
    pub fn remove(&self) -> Result<Vec<String>> {
        let mut removed = self.namespaces_left();
        for n in self.namespaces() {
            if removed.contains(&format!("namespace {n}")) {
                run(&["ip", "netns", "del", &n])?;
            }
        }
        let bridge = self.bridge();
        if self.interfaces().contains(&bridge) {
            run(&["ip", "link", "del", &bridge])?;
            removed.push(format!("bridge {bridge}"));
        }
        let deadline = Instant::now() + RELEASED_WITHIN;
        loop {
            let left = self.interfaces();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(EtcdLabError::Status(format!(
                    "still there {RELEASED_WITHIN:?} after removal: {}",
                    left.join(", ")
                )));
            }
            // A veth whose other end's namespace is still there goes with this end.
            for i in left {
                let _ = Command::new("ip").args(["link", "del", &i]).output();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.mounted() {
            run(&["umount", &self.dir.to_string_lossy()])?;
            removed.push(format!("tmpfs {}", self.dir.display()));
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)?;
        }
        Ok(removed)
    }
}

#[derive(Debug)]
struct Status {
    member: u64,
    leader: u64,
    raft_index: u64,
    revision: i64,
}

impl Status {
    /// `etcdctl endpoint status -w json`: `[{"Endpoint":..,"Status":{"header":{..},"leader":..}}]`.
    fn parse(json: &str) -> Option<Status> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let s = v.get(0)?.get("Status")?;
        let header = s.get("header")?;
        Some(Status {
            member: header.get("member_id")?.as_u64()?,
            leader: s.get("leader")?.as_u64()?,
            raft_index: s.get("raftIndex")?.as_u64()?,
            revision: header.get("revision")?.as_i64()?,
        })
    }
}

fn client_url(ip: Ipv4Addr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:{CLIENT_PORT}")
}

/// TLS files of a cluster (`EtcdCluster::start_tls`), on its tmpfs: one CA, the members'
/// certificate (every member's address) and a client's.
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl ClientTls {
    fn create(dir: &Path, members: &[Member]) -> Result<ClientTls> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let tls_error = |e: rcgen::Error| EtcdLabError::Status(format!("certificates: {e}"));
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).map_err(tls_error)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let sign = |names: Vec<String>| -> Result<(String, String)> {
            let key = KeyPair::generate().map_err(tls_error)?;
            let cert = CertificateParams::new(names)
                .map_err(tls_error)?
                .signed_by(&key, &issuer)
                .map_err(tls_error)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) =
            sign(members.iter().map(|m| m.ip.to_string()).collect())?;
        let (client_pem, client_key_pem) = sign(vec!["dwcp-gateway".into()])?;
        let files = ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        for (path, pem) in [
            (&files.ca, ca.pem()),
            (&files.cert, client_pem),
            (&files.key, client_key_pem),
            (&files.server_cert, server_pem),
            (&files.server_key, server_key_pem),
        ] {
            std::fs::write(path, pem)?;
        }
        // Private keys readable by their owner only, as an operator would keep them.
        for key in [&files.key, &files.server_key] {
            std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        Ok(files)
    }
}

impl EtcdCluster {
    /// Runs etcdctl (API v3) against `endpoints`, with short timeouts (and the client
    /// certificate of a TLS cluster); returns its stdout.
    fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Result<String> {
        let mut argv: Vec<std::ffi::OsString> = vec![
            "--endpoints".into(),
            endpoints.join(",").into(),
            "--dial-timeout=1s".into(),
            "--command-timeout=3s".into(),
        ];
        if let Some(t) = &self.tls {
            for (flag, path) in [("--cacert", &t.ca), ("--cert", &t.cert), ("--key", &t.key)] {
                argv.push(flag.into());
                argv.push(path.clone().into_os_string());
            }
        }
        argv.extend(args.iter().map(Into::into));
        etcdctl(&argv, args)
    }
}

/// Runs etcdctl (API v3) with `argv`; returns its stdout. `args` name the command in errors.
fn etcdctl(argv: &[std::ffi::OsString], args: &[&str]) -> Result<String> {
    let out = Command::new("etcdctl")
        .args(argv)
        .env("ETCDCTL_API", "3")
        .output()?;
    if !out.status.success() {
        return Err(EtcdLabError::Status(format!(
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A port on `bridge` for namespace `ns`: a veth `outside` (on the bridge) and `ifname` (in
/// `ns`, given `ip`/24), both up.
fn bridge_port(bridge: &str, outside: &str, ns: &Netns, ifname: &str, ip: Ipv4Addr) -> Result<()> {
    run(&[
        "ip",
        "link",
        "add",
        outside,
        "type",
        "veth",
        "peer",
        "name",
        ifname,
        "netns",
        ns.name(),
    ])?;
    run(&["ip", "link", "set", outside, "master", bridge])?;
    run(&["ip", "link", "set", outside, "up"])?;
    ns.ip(&["link", "set", ifname, "up"])?;
    netlab::addr(ns, ifname, &format!("{ip}/24"))?;
    Ok(())
}

/// A 10.254.x.0/24 that no interface of the root namespace uses yet, chosen from the pid so
/// that concurrent test processes (other builders on the machine) rarely try the same one.
fn free_subnet(pid: u32, n: u32) -> Result<u8> {
    let out = run(&["ip", "-4", "-o", "addr", "show"])?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    (0..250u32)
        .map(|k| ((pid.wrapping_mul(7) + n * 31 + k) % 250) as u8 + 1)
        .find(|x| !used.contains(&format!("10.254.{x}.")))
        .ok_or_else(|| EtcdLabError::Status("no free 10.254.x.0/24".into()))
}

fn subnet_ip(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 254, subnet, host)
}

/// Whether this machine can run the cluster (root, and etcd installed by the bootstrap).
pub fn available() -> std::result::Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, tmpfs)".into());
    }
    for bin in ["etcd", "etcdctl"] {
        if !Path::new("/usr/bin").join(bin).exists() {
            return Err(format!(
                "{bin} is not installed (scripts/bootstrap.sh installs it)"
            ));
        }
    }
    Ok(())
}

/// A bulk reservation from us-east-1 to eu-west-1 over `path`, for the store's tests and its
/// benchmark.
pub fn reservation(
    id: u64,
    rate_bps: u64,
    start: u64,
    end: u64,
    prio: u8,
    path: &[u32],
) -> dwcp_control::bandwidth::Reservation {
    dwcp_control::bandwidth::Reservation {
        id: dwcp_control::bandwidth::ReservationId(id),
        owner: format!("tenant-{}", id % 7),
        source: "us-east-1".into(),
        destination: "eu-west-1".into(),
        class: dwcp_common::QosClass::Bulk,
        rate_bps,
        start,
        end,
        priority: prio,
        path: path
            .iter()
            .map(|&l| dwcp_control::topology::LinkId(l))
            .collect(),
    }
}

/// A small deterministic generator: the same spread of requests every run.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}
