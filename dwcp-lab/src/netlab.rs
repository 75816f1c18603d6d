//! Network-namespace labs for tests, benchmarks and `cargo xtask lab`: namespaces and veth
//! pairs that are removed again when their guard drops, also when a test fails or panics.
//!
//! Namespace names are `dwcp-<tag>-<pid>-<n>`, so concurrent test processes never collide and
//! [`sweep_stale`] can remove what a killed process left behind.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetlabError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        name: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = NetlabError> = std::result::Result<T, E>;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(argv: &[&str]) -> Result<Output> {
    let cmd = argv.join(" ");
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|source| NetlabError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetlabError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// A network namespace that is deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Creates `dwcp-<tag>-<pid>-<n>`, with loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("dwcp-{tag}-{}-{n}", std::process::id());
        Self::create_named(name)
    }

    /// Creates a namespace with exactly this name (the lab uses stable names so that
    /// `lab status` and `lab down` find them from another process).
    pub fn create_named(name: String) -> Result<Netns> {
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name, keep: false };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Adopts an existing namespace (removed on drop unless [`Netns::keep`] is called).
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            keep: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves the namespace in place when the guard drops (the lab outlives its command).
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.name.clone()
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        run(&argv)
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Starts a program inside the namespace without waiting for it.
    pub fn spawn(&self, argv: &[&str]) -> Result<std::process::Child> {
        let cmd = argv.join(" ");
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .spawn()
            .map_err(|source| NetlabError::Spawn { cmd, source })
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Processes whose network namespace is this one, as (pid, command line): what a test
    /// started in it (e.g. wireguard-go daemons) and must not leave behind.
    pub fn processes(&self) -> Vec<(i32, String)> {
        use std::os::unix::fs::MetadataExt;
        let Ok(ns_meta) = std::fs::metadata(self.path()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            if (m.dev(), m.ino()) == (ns_meta.dev(), ns_meta.ino()) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if !cmdline.trim().is_empty() {
                    out.push((pid, cmdline.trim().to_string()));
                }
            }
        }
        out
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets it opens and
    /// interfaces it names are this namespace's), and returns its result.
    pub fn run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(self.path()).map_err(|source| NetlabError::Enter {
            name: self.name.clone(),
            source,
        })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&file).map_err(|source| NetlabError::Enter {
                    name: self.name.clone(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Returns the interface index of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{ifname}/ifindex")])?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| NetlabError::Command {
                cmd: format!("ifindex of {ifname}"),
                stderr: "not a number".into(),
            })
    }

    /// Returns the MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
        parse_mac(String::from_utf8_lossy(&out.stdout).trim()).ok_or_else(|| NetlabError::Command {
            cmd: format!("mac of {ifname}"),
            stderr: "unparsable".into(),
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

pub use dwcp_tunnels::netns::enter;

/// An AF_PACKET socket of every protocol bound to `ifindex` of the calling thread's namespace,
/// with a 50 ms receive timeout and a 16 MiB buffer: it sees both directions and can send
/// whole frames.
pub fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2) and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields bind needs are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    let buffer: libc::c_int = 16 << 20;
    for (opt, value, len) in [
        (
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>(),
        ),
        (
            libc::SO_RCVBUFFORCE,
            (&buffer as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        ),
    ] {
        // SAFETY: option values of the sizes passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                value,
                len as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Creates a veth pair `a_if` (in `a`) <-> `b_if` (in `b`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Adds an address (CIDR notation) to an interface.
pub fn addr(ns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
    let family = if cidr.contains(':') { "-6" } else { "-4" };
    ns.ip(&[family, "addr", "add", cidr, "dev", ifname, "nodad"])
        .or_else(|_| ns.ip(&[family, "addr", "add", cidr, "dev", ifname]))
        .map(|_| ())
}

pub use dwcp_control::config::parse_mac;

/// Deletes `dwcp-*-<pid>-*` namespaces whose process is gone (left by a killed test run).
pub fn sweep_stale() -> usize {
    let Ok(out) = run(&["ip", "netns", "list"]) else {
        return 0;
    };
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let parts: Vec<&str> = name.split('-').collect();
        if parts.len() >= 4 && parts[0] == "dwcp" {
            if let Ok(pid) = parts[parts.len() - 2].parse::<u32>() {
                if !PathBuf::from(format!("/proc/{pid}")).exists()
                    && run(&["ip", "netns", "del", name]).is_ok()
                {
                    removed += 1;
                }
            }
        }
    }
    removed
}

/// A numbered UDP stream between two namespaces, for loss measurements: the sender sends
/// `per_ms` datagrams every millisecond until [`UdpStream::finish`]; the receiver records
/// which sequence numbers arrived.
pub struct UdpStream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<std::io::Result<(std::collections::HashSet<u64>, u64)>>,
}

/// What a [`UdpStream`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamResult {
    pub sent: u64,
    /// Sent but never received (a failed send counts as lost).
    pub lost: u64,
    /// Datagrams the receiving socket itself dropped because it was full: a harness problem,
    /// not a network one.
    pub socket_drops: u64,
}

/// Sets a socket's receive buffer with SO_RCVBUFFORCE (root may exceed `net.core.rmem_max`):
/// a measuring receiver needs room for the seconds its thread may be descheduled on a busy
/// machine, or it turns its own starvation into loss.
pub fn force_recv_buffer(sock: &std::net::UdpSocket, bytes: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: an open socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The datagrams a socket dropped because its receive buffer was full (SO_MEMINFO): what the
/// instrument lost, not the network.
pub fn socket_drops(sock: &std::net::UdpSocket) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info[SK_MEMINFO_DROPS])
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl UdpStream {
    /// Starts receiving on `dst_ip:port` in `dst` and sending there from `src`, `per_ms`
    /// datagrams every millisecond (less the sender's sleep overshoot).
    pub fn start(
        src: &Netns,
        dst: &Netns,
        dst_ip: std::net::Ipv4Addr,
        port: u16,
        per_ms: u64,
    ) -> Result<UdpStream> {
        Self::start_paced(
            src,
            dst,
            dst_ip,
            port,
            per_ms,
            std::time::Duration::from_millis(1),
        )
    }

    /// Like [`UdpStream::start`], with `burst` datagrams every `tick`.
    pub fn start_paced(
        src: &Netns,
        dst: &Netns,
        dst_ip: std::net::Ipv4Addr,
        port: u16,
        burst: u64,
        tick: std::time::Duration,
    ) -> Result<UdpStream> {
        use std::{
            net::UdpSocket,
            sync::{atomic::AtomicBool, Arc},
            time::{Duration, Instant},
        };
        let open = |ns: &Netns| {
            File::open(ns.path()).map_err(|source| NetlabError::Enter {
                name: ns.name().to_string(),
                source,
            })
        };
        let (rx_ns, tx_ns) = (open(dst)?, open(src)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_r = stop.clone();
        let receiver = std::thread::spawn(move || {
            enter(&rx_ns)?;
            let s = UdpSocket::bind((dst_ip, port))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            force_recv_buffer(&s, 16 << 20)?;
            let _ = ready_tx.send(());
            let mut got = std::collections::HashSet::new();
            let mut buf = [0u8; 64];
            let mut stopped_at = None;
            loop {
                if let Ok(n) = s.recv(&mut buf) {
                    if n >= 8 {
                        got.insert(u64::from_be_bytes(buf[..8].try_into().unwrap_or_default()));
                    }
                }
                // Drain what is still in flight for half a second after the stop.
                if stop_r.load(Ordering::Relaxed) {
                    let t = *stopped_at.get_or_insert_with(Instant::now);
                    if t.elapsed() > Duration::from_millis(500) {
                        return Ok((got, u64::from(socket_drops(&s)?)));
                    }
                }
            }
        });
        // The receiver fails before `ready` only if it cannot bind; `finish` reports that.
        let _ = ready_rx.recv();
        let stop_s = stop.clone();
        let sender = std::thread::spawn(move || {
            if enter(&tx_ns).is_err() {
                return 0;
            }
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return 0;
            };
            let mut seq = 0u64;
            let mut payload = [0u8; 64];
            while !stop_s.load(Ordering::Relaxed) {
                for _ in 0..burst {
                    payload[..8].copy_from_slice(&seq.to_be_bytes());
                    let _ = s.send_to(&payload, (dst_ip, port));
                    seq += 1;
                }
                std::thread::sleep(tick);
            }
            seq
        });
        Ok(UdpStream {
            stop,
            sender,
            receiver,
        })
    }

    /// Stops sending, waits for stragglers, and counts.
    /// Stops sending (the receiver drains until [`UdpStream::finish`]): streams run side by
    /// side stop together rather than one receiver's drain after another.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn finish(self) -> std::io::Result<StreamResult> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().unwrap_or(0);
        let (got, socket_drops) = self
            .receiver
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        let lost = (0..sent).filter(|s| !got.contains(s)).count() as u64;
        Ok(StreamResult {
            sent,
            lost,
            socket_drops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }

    #[test]
    fn namespace_and_veth_are_removed_on_drop() {
        let name;
        {
            let a = Netns::new("nltest").unwrap();
            let b = Netns::new("nltest").unwrap();
            veth(&a, "v0", &b, "v1").unwrap();
            addr(&a, "v0", "192.0.2.1/30").unwrap();
            addr(&b, "v1", "192.0.2.2/30").unwrap();
            a.exec(&["ping", "-c1", "-W2", "192.0.2.2"]).unwrap();
            let idx = a.ifindex("v0").unwrap();
            assert!(idx > 1);
            // A thread inside the namespace can bind to the namespace's address; outside, not.
            let inside = a
                .run_in(|| std::net::UdpSocket::bind("192.0.2.1:0").is_ok())
                .unwrap();
            assert!(inside);
            assert!(std::net::UdpSocket::bind("192.0.2.1:0").is_err());
            name = a.name().to_string();
        }
        let list = run(&["ip", "netns", "list"]).unwrap();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    }

    #[test]
    fn a_full_receive_buffer_is_counted_as_the_sockets_own_drops() {
        let ns = Netns::new("nldrop").unwrap();
        ns.exec(&["ip", "link", "set", "lo", "up"]).unwrap();
        let drops = |buffer: libc::c_int| {
            ns.run_in(move || {
                let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                force_recv_buffer(&rx, buffer).unwrap();
                let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for _ in 0..2000 {
                    tx.send_to(&[0u8; 64], rx.local_addr().unwrap()).unwrap();
                }
                socket_drops(&rx).unwrap()
            })
            .unwrap()
        };
        // Nothing reads: a small buffer overflows (the kernel's minimum holds a few
        // datagrams), a 16 MiB one takes all 2,000.
        assert!(drops(4096) > 1000);
        assert_eq!(drops(16 << 20), 0);
    }
}
