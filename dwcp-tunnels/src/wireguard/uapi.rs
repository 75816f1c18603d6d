//! Userspace WireGuard (`wireguard-go`) driven over the cross-platform UAPI socket
//! (`/var/run/wireguard/<ifname>.sock`, the text protocol of
//! <https://www.wireguard.com/xplatform/>: `get=1` / `set=1`, keys in hex).
//!
//! `wireguard-go <ifname>` is started in the gateway's namespace in its default daemon mode:
//! the command returns only once the TUN device and the UAPI socket exist, so its exit status
//! is the readiness signal, and the daemon outlives an agent restart (traffic keeps flowing;
//! the next agent finds the device and adopts it). Deleting the TUN device makes the daemon
//! exit and remove its socket.
//!
//! The socket directory is shared by all namespaces, so with `wireguard-go` a device name must
//! be unique on the host; the manager checks that the daemon behind a socket lives in its own
//! namespace (`SO_PEERCRED` → `/proc/<pid>/ns/net`) before trusting it.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};
use zeroize::Zeroizing;

use super::{
    keys::{hex, parse_hex},
    DeviceStatus, DeviceUpdate, PeerStatus, PresharedKey, PrivateKey, PublicKey,
};
use crate::{
    error::{Result, TunnelError},
    netns::{describe, NetnsTarget},
    rtnl::Rtnl,
};

/// Where wireguard-go puts its sockets (compiled in; not configurable).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long one UAPI exchange may take before the daemon counts as hung.
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct UserspaceWireGuard {
    binary: PathBuf,
    ns: NetnsTarget,
    rtnl: Rtnl,
}

/// Finds `program` in `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

impl UserspaceWireGuard {
    pub fn new(binary: PathBuf, ns: NetnsTarget, rtnl: Rtnl) -> Self {
        UserspaceWireGuard { binary, ns, rtnl }
    }

    pub async fn create(&self, ifname: &str) -> Result<()> {
        if self.rtnl.link(ifname).await?.is_some() && self.connect(ifname).await?.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg(ifname)
            // With LOG_LEVEL set the daemon would keep our pipes and `output()` would hang.
            .env_remove("LOG_LEVEL")
            .env_remove("WG_PROCESS_FOREGROUND")
            .stdin(Stdio::null());
        let what = describe(&cmd);
        let ns = self.ns.clone();
        let out = tokio::task::spawn_blocking(move || ns.output(cmd))
            .await
            .map_err(|e| TunnelError::wg(ifname, format!("{what}: {e}")))??;
        if !out.status.success() {
            // A wireguard-go started by a killed agent may have been finishing the same device
            // (TUN busy, socket in use): if it now answers, adopt it.
            for _ in 0..50 {
                if self.rtnl.link(ifname).await?.is_some() && self.connect(ifname).await?.is_some()
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Drop wireguard-go's banner about the kernel module; keep the actual complaint.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let detail: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.contains('│') && !l.contains('┌') && !l.contains('└'))
                .filter(|l| !l.trim().is_empty())
                .collect();
            return Err(TunnelError::Command {
                cmd: what,
                detail: format!("{} ({})", detail.join("; "), out.status),
            });
        }
        Ok(())
    }

    /// Connects to the device's UAPI socket. `None` when no daemon listens there; an error
    /// when the daemon that answers lives in another namespace.
    async fn connect(&self, ifname: &str) -> Result<Option<UnixStream>> {
        let path = socket_path(ifname);
        let stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(TunnelError::io(&path, e)),
        };
        let pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .filter(|p| *p > 0);
        if let Some(pid) = pid {
            let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok();
            let ours = std::fs::metadata(self.ns_file()).ok();
            if let (Some(t), Some(o)) = (theirs, ours) {
                if (t.dev(), t.ino()) != (o.dev(), o.ino()) {
                    return Err(TunnelError::wg(
                        ifname,
                        format!(
                            "{} belongs to a wireguard-go (pid {pid}) in another network \
                             namespace; with wireguard-go, device names must be unique on the host",
                            path.display()
                        ),
                    ));
                }
            }
        }
        Ok(Some(stream))
    }

    fn ns_file(&self) -> PathBuf {
        match &self.ns {
            NetnsTarget::Current => PathBuf::from("/proc/self/ns/net"),
            NetnsTarget::Path(p) => p.clone(),
        }
    }

    /// Sends one request and returns the response lines before the terminating blank line.
    async fn exchange(&self, ifname: &str, request: &str) -> Result<Option<Zeroizing<String>>> {
        if self.rtnl.link(ifname).await?.is_none() {
            return Ok(None);
        }
        let Some(stream) = self.connect(ifname).await? else {
            return Ok(None);
        };
        let io = async {
            let (read, mut write) = stream.into_split();
            write.write_all(request.as_bytes()).await?;
            let mut reader = BufReader::new(read);
            let mut response = Zeroizing::new(String::new());
            loop {
                let mut line = Zeroizing::new(String::new());
                if reader.read_line(&mut line).await? == 0 || line.as_str() == "\n" {
                    break;
                }
                response.push_str(&line);
            }
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(UAPI_TIMEOUT, io)
            .await
            .map_err(|_| TunnelError::wg(ifname, "UAPI socket did not answer within 5 s"))?
            .map_err(|e| TunnelError::io(socket_path(ifname), e))?;
        let errno = response
            .lines()
            .find_map(|l| l.strip_prefix("errno="))
            .and_then(|v| v.parse::<i32>().ok());
        match errno {
            Some(0) => Ok(Some(response)),
            Some(n) => Err(TunnelError::wg(
                ifname,
                format!(
                    "UAPI request refused with errno {n} ({})",
                    std::io::Error::from_raw_os_error(n.abs())
                ),
            )),
            None => Err(TunnelError::wg(ifname, "UAPI answer without errno")),
        }
    }

    pub async fn get(&self, ifname: &str) -> Result<Option<DeviceStatus>> {
        match self.exchange(ifname, "get=1\n\n").await? {
            Some(text) => parse_get(&text)
                .map(Some)
                .map_err(|e| TunnelError::wg(ifname, e)),
            None => Ok(None),
        }
    }

    pub async fn set(&self, ifname: &str, update: &DeviceUpdate) -> Result<()> {
        match self.exchange(ifname, &encode_set(update)).await? {
            Some(_) => Ok(()),
            None => Err(TunnelError::wg(ifname, "no such device")),
        }
    }

    /// Deletes the TUN device; the daemon notices, exits and unlinks its socket.
    pub async fn delete(&self, ifname: &str) -> Result<()> {
        let pid = match self.connect(ifname).await {
            Ok(Some(s)) => s.peer_cred().ok().and_then(|c| c.pid()),
            _ => None,
        };
        if let Some(link) = self.rtnl.link(ifname).await? {
            self.rtnl.delete_link(link.index, ifname).await?;
        }
        // Wait for the daemon to let go of the socket, then make sure it is gone.
        for _ in 0..200 {
            if !socket_path(ifname).exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(pid) = pid.filter(|p| *p > 0) {
            // SAFETY: plain kill(2) on the daemon that served this device's socket.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if self.connect(ifname).await.ok().flatten().is_none() {
            let _ = std::fs::remove_file(socket_path(ifname));
        }
        Ok(())
    }
}

/// The `set=1` request for an update. Holds key material: zeroized on drop.
pub(crate) fn encode_set(u: &DeviceUpdate) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::from("set=1\n"));
    if let Some(k) = &u.private_key {
        s.push_str("private_key=");
        s.push_str(&hex(k.expose().as_slice()));
        s.push('\n');
    }
    if let Some(p) = u.listen_port {
        s.push_str(&format!("listen_port={p}\n"));
    }
    if let Some(m) = u.fwmark {
        s.push_str(&format!("fwmark={m}\n"));
    }
    for p in &u.peers {
        s.push_str(&format!("public_key={}\n", p.public_key.to_hex()));
        if p.remove {
            s.push_str("remove=true\n");
            continue;
        }
        if let Some(psk) = &p.preshared_key {
            s.push_str("preshared_key=");
            s.push_str(&hex(psk.expose()));
            s.push('\n');
        }
        if let Some(e) = p.endpoint {
            s.push_str(&format!("endpoint={e}\n"));
        }
        if let Some(k) = p.persistent_keepalive {
            s.push_str(&format!("persistent_keepalive_interval={k}\n"));
        }
        if let Some(ips) = &p.allowed_ips {
            s.push_str("replace_allowed_ips=true\n");
            for ip in ips {
                s.push_str(&format!("allowed_ip={ip}\n"));
            }
        }
    }
    s.push('\n');
    s
}

/// Parses a `get=1` answer. Unknown keys are skipped (newer daemons add some).
pub(crate) fn parse_get(text: &str) -> Result<DeviceStatus, String> {
    let mut dev = DeviceStatus::default();
    let mut handshake: (u64, u32) = (0, 0);
    let finish = |peer: &mut Option<PeerStatus>, hs: &mut (u64, u32), dev: &mut DeviceStatus| {
        if let Some(mut p) = peer.take() {
            if *hs != (0, 0) {
                p.last_handshake = Some(SystemTime::UNIX_EPOCH + Duration::new(hs.0, hs.1));
            }
            dev.peers.push(p);
        }
        *hs = (0, 0);
    };
    let mut peer: Option<PeerStatus> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "UAPI line without `=`: `{}`",
                line.chars().take(40).collect::<String>()
            ));
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("UAPI {key}: `{v}` is not a number"))
        };
        match (key, peer.as_mut()) {
            ("private_key", _) => {
                let k = parse_hex(value).ok_or("UAPI private_key is not 64 hex digits")?;
                if k.iter().any(|b| *b != 0) {
                    dev.public_key = Some(PrivateKey::from_bytes(*k).public_key());
                }
            }
            ("listen_port", _) => dev.listen_port = num(value)? as u16,
            ("fwmark", _) => dev.fwmark = num(value)? as u32,
            ("public_key", _) => {
                finish(&mut peer, &mut handshake, &mut dev);
                let k = PublicKey::from_hex(value).ok_or("UAPI public_key is not 64 hex digits")?;
                peer = Some(PeerStatus::new(k));
            }
            ("preshared_key", Some(p)) => {
                let k = parse_hex(value).ok_or("UAPI preshared_key is not 64 hex digits")?;
                let k = PresharedKey::from_bytes(*k);
                p.preshared_key = (!k.is_zero()).then_some(k);
            }
            ("endpoint", Some(p)) => {
                p.endpoint = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|_| format!("UAPI endpoint `{value}` is not ip:port"))?,
                )
            }
            ("persistent_keepalive_interval", Some(p)) => {
                let k = num(value)? as u16;
                p.persistent_keepalive = (k != 0).then_some(k);
            }
            ("allowed_ip", Some(p)) => p.allowed_ips.push(
                value
                    .parse::<IpNet>()
                    .map_err(|_| format!("UAPI allowed_ip `{value}` is not a prefix"))?,
            ),
            ("last_handshake_time_sec", Some(_)) => handshake.0 = num(value)?,
            ("last_handshake_time_nsec", Some(_)) => handshake.1 = num(value)? as u32,
            ("rx_bytes", Some(p)) => p.rx_bytes = num(value)?,
            ("tx_bytes", Some(p)) => p.tx_bytes = num(value)?,
            _ => {}
        }
    }
    finish(&mut peer, &mut handshake, &mut dev);
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::PeerUpdate;

    #[test]
    fn parses_a_wireguard_go_answer() {
        let sk = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
        let pk = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33";
        let text = format!(
            "private_key={sk}\nlisten_port=51820\npublic_key={pk}\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             protocol_version=1\nendpoint=[2001:db8::1]:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\ntx_bytes=92\nrx_bytes=148\npersistent_keepalive_interval=25\n\
             allowed_ip=10.9.0.2/32\nallowed_ip=fd00::/64\nerrno=0\n"
        );
        let dev = parse_get(&text).unwrap();
        assert_eq!(dev.listen_port, 51820);
        let expected_pub = PrivateKey::from_bytes(*parse_hex(sk).unwrap()).public_key();
        assert_eq!(dev.public_key, Some(expected_pub));
        let p = &dev.peers[0];
        assert_eq!(p.public_key.to_hex(), pk);
        assert_eq!(p.preshared_key, None);
        assert_eq!(p.endpoint, Some("[2001:db8::1]:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!((p.rx_bytes, p.tx_bytes), (148, 92));
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(
            p.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        // A device without private key or peers.
        let empty = parse_get(&format!(
            "private_key={}\nlisten_port=0\nerrno=0\n",
            "0".repeat(64)
        ))
        .unwrap();
        assert_eq!(empty, DeviceStatus::default());
    }

    #[test]
    fn malformed_answers_are_named() {
        let err = parse_get("listen_port=abc\n").unwrap_err();
        assert!(err.contains("listen_port") && err.contains("abc"), "{err}");
        let err = parse_get("public_key=zz\n").unwrap_err();
        assert!(err.contains("public_key"), "{err}");
    }

    #[test]
    fn encodes_removals_and_replacements() {
        let pk = PublicKey::from_bytes([0xab; 32]);
        let update = DeviceUpdate {
            listen_port: Some(51820),
            peers: vec![
                PeerUpdate {
                    public_key: pk,
                    remove: true,
                    preshared_key: None,
                    endpoint: None,
                    persistent_keepalive: None,
                    allowed_ips: None,
                },
                PeerUpdate {
                    public_key: PublicKey::from_bytes([1; 32]),
                    remove: false,
                    preshared_key: None,
                    endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                    persistent_keepalive: Some(0),
                    allowed_ips: Some(vec!["10.0.0.0/24".parse().unwrap()]),
                },
            ],
            ..Default::default()
        };
        let text = encode_set(&update);
        let expected = format!(
            "set=1\nlisten_port=51820\npublic_key={}\nremove=true\npublic_key={}\n\
             endpoint=192.0.2.2:51820\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\n\
             allowed_ip=10.0.0.0/24\n\n",
            "ab".repeat(32),
            "01".repeat(32)
        );
        assert_eq!(text.as_str(), expected);
    }
}
