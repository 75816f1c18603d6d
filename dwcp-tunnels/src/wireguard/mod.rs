//! WireGuard devices: the desired configuration, what a device reports, the smallest update
//! from one to the other, and the two ways of talking to a device — the kernel module's
//! generic netlink family on real gateways, or a userspace `wireguard-go` over its UAPI socket
//! where the kernel has no WireGuard (this machine).
//!
//! Updates are minimal on purpose: re-sending an unchanged listen port makes `wireguard-go`
//! rebind its socket and re-sending a peer's key material is not needed, so an `ensure` that
//! finds the device right sends nothing at all.

pub mod kernel;
pub mod keys;
pub mod uapi;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

pub use self::keys::{PresharedKey, PrivateKey, PublicKey};
use self::{kernel::KernelWireGuard, uapi::UserspaceWireGuard};
use super::{
    error::{Result, TunnelError},
    netns::NetnsTarget,
    rtnl::Rtnl,
    spec::TunnelType,
};

/// How the device should be.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub private_key: PrivateKey,
    pub listen_port: u16,
    /// Mark of the device's own UDP packets (0 = none).
    pub fwmark: u32,
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub allowed_ips: Vec<IpNet>,
}

/// What a device reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Public key of the device's private key; `None` when no private key is set.
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub allowed_ips: Vec<IpNet>,
    /// Completion time of the last handshake; `None` = never.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl PeerStatus {
    fn new(public_key: PublicKey) -> PeerStatus {
        PeerStatus {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            allowed_ips: Vec::new(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    /// Time since the last handshake, measured against `now`.
    pub fn handshake_age(&self, now: SystemTime) -> Option<Duration> {
        self.last_handshake
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
    }
}

impl DeviceStatus {
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| &p.public_key == key)
    }
}

/// One set operation. Peer entries are applied in order: removals come first.
#[derive(Clone, Debug, Default)]
pub struct DeviceUpdate {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub peers: Vec<PeerUpdate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: PublicKey,
    pub remove: bool,
    /// `Some(zero key)` clears the preshared key.
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` turns keepalives off.
    pub persistent_keepalive: Option<u16>,
    /// `Some` replaces the peer's allowed IPs with these.
    pub allowed_ips: Option<Vec<IpNet>>,
}

impl PeerUpdate {
    pub(crate) fn select(public_key: PublicKey) -> PeerUpdate {
        PeerUpdate {
            public_key,
            remove: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            allowed_ips: None,
        }
    }

    fn changes_something(&self) -> bool {
        self.remove
            || self.preshared_key.is_some()
            || self.endpoint.is_some()
            || self.persistent_keepalive.is_some()
            || self.allowed_ips.is_some()
    }
}

impl DeviceUpdate {
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && self.fwmark.is_none()
            && self.peers.is_empty()
    }

    /// What the update does, for logs: keys appear as public keys only.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(k) = &self.private_key {
            out.push(format!("set private key (public {})", k.public_key()));
        }
        if let Some(p) = self.listen_port {
            out.push(format!("set listen port {p}"));
        }
        if let Some(m) = self.fwmark {
            out.push(format!("set fwmark {m:#x}"));
        }
        for p in &self.peers {
            if p.remove {
                out.push(format!("remove peer {}", p.public_key));
                continue;
            }
            let mut what = Vec::new();
            if let Some(psk) = &p.preshared_key {
                what.push(
                    if psk.is_zero() {
                        "clear preshared key"
                    } else {
                        "preshared key"
                    }
                    .to_string(),
                );
            }
            if let Some(e) = p.endpoint {
                what.push(format!("endpoint {e}"));
            }
            if let Some(k) = p.persistent_keepalive {
                what.push(format!("keepalive {k}s"));
            }
            if let Some(ips) = &p.allowed_ips {
                let ips: Vec<String> = ips.iter().map(|n| n.to_string()).collect();
                what.push(format!("allowed ips [{}]", ips.join(", ")));
            }
            out.push(format!("peer {}: {}", p.public_key, what.join(", ")));
        }
        out
    }
}

/// Allowed IPs as WireGuard stores them: host bits cleared, sorted, without duplicates.
pub fn normalize_allowed_ips(ips: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = ips.iter().map(|n| n.trunc()).collect();
    out.sort();
    out.dedup();
    out
}

/// The smallest update that turns `current` into `desired`. Empty when they agree.
pub fn plan(current: &DeviceStatus, desired: &DeviceConfig) -> DeviceUpdate {
    let mut update = DeviceUpdate::default();
    if current.public_key != Some(desired.private_key.public_key()) {
        update.private_key = Some(desired.private_key.clone());
    }
    if current.listen_port != desired.listen_port {
        update.listen_port = Some(desired.listen_port);
    }
    if current.fwmark != desired.fwmark {
        update.fwmark = Some(desired.fwmark);
    }
    let wanted: BTreeMap<PublicKey, &PeerConfig> =
        desired.peers.iter().map(|p| (p.public_key, p)).collect();
    for peer in &current.peers {
        if !wanted.contains_key(&peer.public_key) {
            update.peers.push(PeerUpdate {
                remove: true,
                ..PeerUpdate::select(peer.public_key)
            });
        }
    }
    for want in &desired.peers {
        let have = current.peer(&want.public_key);
        let mut p = PeerUpdate::select(want.public_key);
        let have_psk = have.and_then(|h| h.preshared_key.clone());
        let want_psk = want.preshared_key.clone().filter(|k| !k.is_zero());
        if have_psk != want_psk {
            p.preshared_key = Some(want_psk.unwrap_or(PresharedKey::from_bytes([0; 32])));
        }
        // An endpoint the peer roamed to is kept unless the config names one.
        if want.endpoint.is_some() && have.and_then(|h| h.endpoint) != want.endpoint {
            p.endpoint = want.endpoint;
        }
        let have_keepalive = have.and_then(|h| h.persistent_keepalive);
        if have_keepalive != want.persistent_keepalive {
            p.persistent_keepalive = Some(want.persistent_keepalive.unwrap_or(0));
        }
        let want_ips = normalize_allowed_ips(&want.allowed_ips);
        if have.map(|h| normalize_allowed_ips(&h.allowed_ips)) != Some(want_ips.clone()) {
            p.allowed_ips = Some(want_ips);
        }
        if have.is_none() || p.changes_something() {
            update.peers.push(p);
        }
    }
    update
}

/// Which WireGuard implementation to drive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WireGuardImpl {
    /// The kernel module when present, else `wireguard-go` from `PATH`.
    #[default]
    Auto,
    Kernel,
    Userspace {
        binary: PathBuf,
    },
}

/// A WireGuard implementation bound to one network namespace.
#[derive(Debug)]
pub enum WireGuardBackend {
    Kernel(KernelWireGuard),
    Userspace(UserspaceWireGuard),
}

impl WireGuardBackend {
    /// Picks the implementation; the error says what is missing.
    pub(crate) async fn detect(
        ns: &NetnsTarget,
        rtnl: &Rtnl,
        choice: &WireGuardImpl,
    ) -> Result<Self> {
        let kernel_missing = || TunnelError::KernelUnsupported {
            kind: TunnelType::WireGuard,
            detail: "the kernel has no `wireguard` generic netlink family (CONFIG_WIREGUARD \
                     not set or module not loaded); use `wireguard-go` (the `auto` choice falls \
                     back to it). Note: dwcp's kernel backend has never run against a kernel \
                     with the module (the development machine has none), so it is untested"
                .into(),
        };
        let untested = || {
            tracing::warn!(
                "using the kernel WireGuard module through generic netlink: dwcp's kernel \
                 backend is UNTESTED (never run against a kernel with the module)"
            )
        };
        match choice {
            WireGuardImpl::Kernel => {
                let k = KernelWireGuard::connect(ns, rtnl.clone())
                    .await?
                    .ok_or_else(kernel_missing)?;
                untested();
                Ok(WireGuardBackend::Kernel(k))
            }
            WireGuardImpl::Userspace { binary } => Ok(WireGuardBackend::Userspace(
                UserspaceWireGuard::new(binary.clone(), ns.clone(), rtnl.clone()),
            )),
            WireGuardImpl::Auto => {
                if let Some(k) = KernelWireGuard::connect(ns, rtnl.clone()).await? {
                    untested();
                    return Ok(WireGuardBackend::Kernel(k));
                }
                match uapi::find_in_path("wireguard-go") {
                    Some(binary) => {
                        tracing::info!(
                            binary = %binary.display(),
                            "no `wireguard` kernel module (no generic netlink family \
                             `wireguard`): WireGuard tunnels use wireguard-go over its UAPI socket"
                        );
                        Ok(WireGuardBackend::Userspace(UserspaceWireGuard::new(
                            binary,
                            ns.clone(),
                            rtnl.clone(),
                        )))
                    }
                    None => Err(TunnelError::KernelUnsupported {
                        kind: TunnelType::WireGuard,
                        detail: "no `wireguard` kernel module and no `wireguard-go` in PATH \
                                 (scripts/bootstrap.sh installs it)"
                            .into(),
                    }),
                }
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            WireGuardBackend::Kernel(_) => "kernel",
            WireGuardBackend::Userspace(_) => "wireguard-go",
        }
    }

    /// Creates the device if it does not exist (idempotent).
    pub async fn create(&self, ifname: &str) -> Result<()> {
        match self {
            WireGuardBackend::Kernel(k) => k.create(ifname).await,
            WireGuardBackend::Userspace(u) => u.create(ifname).await,
        }
    }

    /// The device's state; `None` when there is no such device.
    pub async fn get(&self, ifname: &str) -> Result<Option<DeviceStatus>> {
        match self {
            WireGuardBackend::Kernel(k) => k.get(ifname).await,
            WireGuardBackend::Userspace(u) => u.get(ifname).await,
        }
    }

    pub async fn set(&self, ifname: &str, update: &DeviceUpdate) -> Result<()> {
        if update.is_empty() {
            return Ok(());
        }
        match self {
            WireGuardBackend::Kernel(k) => k.set(ifname, update).await,
            WireGuardBackend::Userspace(u) => u.set(ifname, update).await,
        }
    }

    /// Makes the device initiate a handshake with `peer` now: turning a keepalive on sends
    /// one at once (both implementations; only when it was off), and with no session that
    /// starts the handshake; then the peer's own `keepalive` is set again.
    pub async fn start_handshake(
        &self,
        ifname: &str,
        peer: PublicKey,
        keepalive: Option<u16>,
    ) -> Result<()> {
        let turns = match keepalive {
            Some(k) if k > 0 => [0, k],
            _ => [1, 0],
        };
        for interval in turns {
            let kick = PeerUpdate {
                persistent_keepalive: Some(interval),
                ..PeerUpdate::select(peer)
            };
            let update = DeviceUpdate {
                peers: vec![kick],
                ..Default::default()
            };
            self.set(ifname, &update).await?;
        }
        Ok(())
    }

    /// Removes the device (and, for wireguard-go, waits for its process to go).
    pub async fn delete(&self, ifname: &str) -> Result<()> {
        match self {
            WireGuardBackend::Kernel(k) => k.delete(ifname).await,
            WireGuardBackend::Userspace(u) => u.delete(ifname).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A model of how WireGuard applies a set operation (wireguard-go's ipc.go and the
    /// kernel's netlink.c agree on these semantics).
    fn apply(mut dev: DeviceStatus, u: &DeviceUpdate) -> DeviceStatus {
        if let Some(k) = &u.private_key {
            let pk = k.public_key();
            // Setting a private key drops a peer with the matching public key.
            dev.peers.retain(|p| p.public_key != pk);
            dev.public_key = Some(pk);
        }
        if let Some(p) = u.listen_port {
            dev.listen_port = p;
        }
        if let Some(m) = u.fwmark {
            dev.fwmark = m;
        }
        for pu in &u.peers {
            if pu.remove {
                dev.peers.retain(|p| p.public_key != pu.public_key);
                continue;
            }
            if dev.peer(&pu.public_key).is_none() {
                dev.peers.push(PeerStatus::new(pu.public_key));
            }
            if let Some(ips) = &pu.allowed_ips {
                // A prefix belongs to one peer: giving it to this one takes it from others.
                for other in dev.peers.iter_mut() {
                    other.allowed_ips.retain(|n| !ips.contains(&n.trunc()));
                }
            }
            let peer = dev
                .peers
                .iter_mut()
                .find(|p| p.public_key == pu.public_key)
                .unwrap();
            if let Some(psk) = &pu.preshared_key {
                peer.preshared_key = (!psk.is_zero()).then(|| psk.clone());
            }
            if let Some(e) = pu.endpoint {
                peer.endpoint = Some(e);
            }
            if let Some(k) = pu.persistent_keepalive {
                peer.persistent_keepalive = (k != 0).then_some(k);
            }
            if let Some(ips) = &pu.allowed_ips {
                peer.allowed_ips = ips.clone();
            }
        }
        dev
    }

    fn matches(dev: &DeviceStatus, want: &DeviceConfig) -> bool {
        dev.public_key == Some(want.private_key.public_key())
            && dev.listen_port == want.listen_port
            && dev.fwmark == want.fwmark
            && dev.peers.len() == want.peers.len()
            && want.peers.iter().all(|w| {
                dev.peer(&w.public_key).is_some_and(|p| {
                    p.preshared_key == w.preshared_key.clone().filter(|k| !k.is_zero())
                        && (w.endpoint.is_none() || p.endpoint == w.endpoint)
                        && p.persistent_keepalive == w.persistent_keepalive
                        && normalize_allowed_ips(&p.allowed_ips)
                            == normalize_allowed_ips(&w.allowed_ips)
                })
            })
    }

    fn key(i: u8) -> PublicKey {
        PublicKey::from_bytes([i; 32])
    }

    prop_compose! {
        fn arb_peer(ips_base: u8)(
            k in 1u8..6,
            psk in prop::option::of(0u8..3),
            port in prop::option::of(1u16..4),
            keepalive in prop::option::of(1u16..30),
            ip_count in 0usize..3,
            host_bits in any::<bool>(),
        ) -> PeerConfig {
            PeerConfig {
                public_key: key(k),
                preshared_key: psk.map(|b| PresharedKey::from_bytes([b; 32])),
                endpoint: port.map(|p| SocketAddr::from(([192, 0, 2, 1], p))),
                persistent_keepalive: keepalive,
                allowed_ips: (0..ip_count)
                    .map(|i| IpNet::new([10, ips_base, i as u8, if host_bits { 7 } else { 0 }].into(), 24).unwrap())
                    .collect(),
            }
        }
    }

    prop_compose! {
        fn arb_device()(
            sk in 1u8..4,
            listen_port in 1u16..3,
            fwmark in 0u32..2,
            a in arb_peer(1), b in arb_peer(2), n in 0usize..3,
        ) -> DeviceConfig {
            let mut peers: Vec<PeerConfig> = [a, b].into_iter().take(n).collect();
            peers.dedup_by_key(|p| p.public_key);
            DeviceConfig { private_key: PrivateKey::from_bytes([sk; 32]), listen_port, fwmark, peers }
        }
    }

    proptest! {
        /// Applying the plan reaches the desired state, and planning again finds nothing to do.
        #[test]
        fn plan_converges_and_is_idempotent(start in arb_device(), want in arb_device()) {
            let current = apply(DeviceStatus::default(), &plan(&DeviceStatus::default(), &start));
            prop_assert!(matches(&current, &start));
            let update = plan(&current, &want);
            let after = apply(current.clone(), &update);
            prop_assert!(matches(&after, &want), "{:?}\n{:?}", after, update);
            prop_assert!(plan(&after, &want).is_empty());
            // Peers that already agree are not touched (no needless key material sent).
            for p in &update.peers {
                let before = current.peer(&p.public_key);
                prop_assert!(p.remove || before.is_none() || p.changes_something());
            }
        }
    }

    #[test]
    fn roamed_endpoint_is_kept_when_config_names_none() {
        let sk = PrivateKey::from_bytes([1; 32]);
        let mut peer = PeerStatus::new(key(2));
        peer.endpoint = Some("192.0.2.9:4000".parse().unwrap());
        peer.allowed_ips = vec!["10.0.0.0/24".parse().unwrap()];
        let current = DeviceStatus {
            public_key: Some(sk.public_key()),
            listen_port: 1,
            fwmark: 0,
            peers: vec![peer],
        };
        let want = DeviceConfig {
            private_key: sk,
            listen_port: 1,
            fwmark: 0,
            peers: vec![PeerConfig {
                public_key: key(2),
                preshared_key: None,
                endpoint: None,
                persistent_keepalive: None,
                allowed_ips: vec!["10.0.0.1/24".parse().unwrap()],
            }],
        };
        assert!(plan(&current, &want).is_empty());
    }

    #[test]
    fn describe_shows_no_secret() {
        let sk = PrivateKey::generate();
        let psk = PresharedKey::generate();
        let update = DeviceUpdate {
            private_key: Some(sk.clone()),
            peers: vec![PeerUpdate {
                preshared_key: Some(psk.clone()),
                ..PeerUpdate::select(key(3))
            }],
            ..Default::default()
        };
        let text = format!("{:?} {}", update, update.describe().join("; "));
        assert!(!text.contains(&keys::hex(sk.expose().as_slice())));
        assert!(!text.contains(&keys::hex(psk.expose())));
        assert!(text.contains(&sk.public_key().to_string()));
    }
}
