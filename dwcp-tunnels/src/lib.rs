//! Inter-region tunnels: VXLAN and WireGuard devices (GRE and GENEVE where the kernel has
//! them), kept equal to their specs by an idempotent reconcile.
//!
//! [`TunnelManager`] is the API. `ensure` converges one tunnel (running it again changes
//! nothing), `remove` tears one down without leaving a device, rule, nft entry or key file,
//! `check` reports health, `reconcile` does all of it for a whole config, and the rotation
//! methods ([`rotation`]) replace WireGuard keys without losing traffic.
//!
//! Crash safety comes from the order of writes: a tunnel's spec is recorded under the state
//! directory before the kernel is touched and forgotten only after teardown, so whatever a
//! killed agent left half-done is completed (still wanted) or removed (no longer wanted) by
//! the next `reconcile`. Devices the manager did not record are never modified or deleted.

pub mod error;
pub mod handoff;
pub mod kernel_support;
pub mod key_exchange;
mod links;
pub mod mss;
pub mod netns;
pub mod rotation;
pub mod rtnl;
pub mod spec;
mod state;
pub mod wireguard;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tracing::{info, warn};

pub use self::{
    error::{Result, TunnelError},
    netns::NetnsTarget,
    spec::{Handoff, TunnelKind, TunnelSpec, TunnelType, TunnelsFile},
    state::{PeerOverride, RotationPhase, RotationState},
    wireguard::{PresharedKey, PrivateKey, PublicKey, WireGuardImpl},
};
use self::{
    mss::{ClampEntry, MssClamp},
    rtnl::{LinkState, Rtnl},
    state::StateStore,
    wireguard::{plan, DeviceConfig, DeviceStatus, PeerConfig, WireGuardBackend},
};

/// Log directives every dwcp binary must add to its filter: `netlink_proto` prints whole
/// netlink messages at trace level, and for the kernel WireGuard backend those carry private
/// and preshared keys.
pub const SECRET_SAFE_LOG_DIRECTIVES: &[&str] = &["netlink_proto=info"];

/// How long a freshly created WireGuard tunnel waits for its first handshake before the
/// tie-breaking end starts a new one (see `break_handshake_tie`). Longer than a handshake
/// round trip on the lab's links; on a WAN with a longer RTT a needless re-initiation costs
/// one extra round trip.
pub const HANDSHAKE_TIE_WAIT: Duration = Duration::from_millis(100);

/// How long after creation the tie-breaking end keeps re-initiating (see
/// `break_handshake_tie`): room for three re-initiations, well before WireGuard's own retry
/// at 5 s. Only a tunnel whose peer does not answer waits this long in `ensure`.
pub const HANDSHAKE_TIE_GIVE_UP: Duration = Duration::from_millis(1500);

/// A WireGuard session is unusable this long after its handshake (the protocol's
/// REJECT_AFTER_TIME); a handshake older than that means the peer is not answering.
pub const WIREGUARD_SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// Where and how a manager works.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The namespace whose devices are managed (the gateway's own by default).
    pub netns: NetnsTarget,
    /// Keys and the spec journal live under `<state_dir>/tunnels/`.
    pub state_dir: PathBuf,
    pub wireguard: WireGuardImpl,
}

impl ManagerConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ManagerConfig {
            netns: NetnsTarget::Current,
            state_dir: state_dir.into(),
            wireguard: WireGuardImpl::Auto,
        }
    }
}

/// What an `ensure` did. No changes means the kernel already matched the spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnsureOutcome {
    pub tunnel: String,
    pub created: bool,
    pub changes: Vec<String>,
}

impl EnsureOutcome {
    pub fn unchanged(&self) -> bool {
        self.changes.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Device right; for WireGuard, a handshake within the session lifetime.
    Up,
    /// WireGuard device right, no handshake yet.
    Connecting,
    /// WireGuard handshake older than the session lifetime: the peer is not answering.
    Stale,
    /// The device differs from its spec (an `ensure` fixes it).
    Drifted,
    /// No device, administratively down, or no carrier.
    Down,
}

/// Health and counters of one tunnel. Carries public keys only.
#[derive(Clone, Debug, Serialize)]
pub struct TunnelHealth {
    pub tunnel: String,
    pub kind: TunnelType,
    pub state: HealthState,
    pub ifindex: Option<u32>,
    pub mtu: Option<u32>,
    /// How the device differs from its spec.
    pub problems: Vec<String>,
    pub wireguard: Option<WireGuardHealth>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WireGuardHealth {
    pub backend: &'static str,
    pub public_key: Option<PublicKey>,
    pub peer_public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    /// Unix time of the last handshake, seconds.
    pub last_handshake_unix_s: Option<f64>,
    pub handshake_age_s: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rotation: Option<RotationPhase>,
}

/// Per-tunnel results of a `reconcile`.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub ensured: Vec<(String, Result<EnsureOutcome>)>,
    pub removed: Vec<(String, Result<()>)>,
}

impl ReconcileReport {
    pub fn errors(&self) -> Vec<String> {
        let ensured = self.ensured.iter().filter_map(|(_, r)| r.as_ref().err());
        let removed = self.removed.iter().filter_map(|(_, r)| r.as_ref().err());
        ensured.chain(removed).map(|e| e.to_string()).collect()
    }
}

pub struct TunnelManager {
    ns: NetnsTarget,
    rtnl: Rtnl,
    store: StateStore,
    wireguard: Result<WireGuardBackend>,
    mss: Arc<MssClamp>,
    /// One change at a time: ensure/remove/rotate of the same tunnel must not interleave.
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TunnelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelManager")
            .field("netns", &self.ns)
            .field("wireguard", &self.wireguard.as_ref().map(|b| b.name()))
            .finish()
    }
}

impl TunnelManager {
    pub async fn new(config: ManagerConfig) -> Result<TunnelManager> {
        let store = StateStore::open(&config.state_dir)?;
        let rtnl = Rtnl::connect(&config.netns).await?;
        let wireguard = WireGuardBackend::detect(&config.netns, &rtnl, &config.wireguard).await;
        Ok(TunnelManager {
            mss: Arc::new(MssClamp::new(config.netns.clone())),
            ns: config.netns,
            rtnl,
            store,
            wireguard,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The WireGuard implementation in use (`kernel` or `wireguard-go`), if any.
    pub fn wireguard_backend(&self) -> Option<&'static str> {
        self.wireguard.as_ref().ok().map(|b| b.name())
    }

    fn wg(&self) -> Result<&WireGuardBackend> {
        self.wireguard.as_ref().map_err(|e| match e {
            TunnelError::KernelUnsupported { kind, detail } => TunnelError::KernelUnsupported {
                kind: *kind,
                detail: detail.clone(),
            },
            other => TunnelError::KernelUnsupported {
                kind: TunnelType::WireGuard,
                detail: other.to_string(),
            },
        })
    }

    /// Refuses, before anything is stored, what this kernel or dwcp cannot do.
    fn require_support(&self, spec: &TunnelSpec) -> Result<()> {
        match spec.tunnel_type() {
            TunnelType::Vxlan => Ok(()),
            TunnelType::WireGuard => self.wg().map(|_| ()),
            t @ (TunnelType::Gre | TunnelType::Geneve) => kernel_support::require(t),
            TunnelType::Ipsec => {
                kernel_support::require(TunnelType::Ipsec)?;
                Err(TunnelError::NotImplemented {
                    kind: TunnelType::Ipsec,
                    detail: "the kernel has ESP, but dwcp has no IKE or SA management; use \
                             WireGuard for encrypted tunnels"
                        .into(),
                })
            }
        }
    }

    /// Converges one tunnel to `spec`. Idempotent.
    pub async fn ensure(&self, spec: &TunnelSpec) -> Result<EnsureOutcome> {
        let _guard = self.lock.lock().await;
        self.ensure_locked(spec).await
    }

    async fn ensure_locked(&self, spec: &TunnelSpec) -> Result<EnsureOutcome> {
        spec.validate()?;
        self.require_support(spec)?;
        let name = spec.name.as_str();
        let existing = self.rtnl.link(name).await?;
        let previous = self.store.read_spec(name)?;
        if let (Some(link), None) = (&existing, &previous) {
            return Err(TunnelError::NameTaken {
                tunnel: name.to_string(),
                found: link.kind_name(),
            });
        }
        let (underlay_ifindex, tunnel_mtu) = self.tunnel_mtu(spec).await?;
        // Journal first: from here on a crash leaves a tunnel the next reconcile knows about.
        self.store.write_spec(spec)?;
        let mut changes = Vec::new();
        if let Some(prev) = &previous {
            self.undo_leftovers(prev, spec).await?;
        }
        let created = match &spec.kind {
            TunnelKind::WireGuard(w) => {
                self.ensure_wireguard(spec, w, existing, &mut changes)
                    .await?
            }
            _ => {
                self.ensure_kernel_link(spec, existing, underlay_ifindex, tunnel_mtu, &mut changes)
                    .await?
            }
        };
        let link = self
            .rtnl
            .link(name)
            .await?
            .ok_or_else(|| TunnelError::wg(name, "device vanished while being configured"))?;
        self.ensure_link_settings(spec, &link, tunnel_mtu, &mut changes)
            .await?;
        if let (TunnelKind::WireGuard(w), true) = (&spec.kind, created) {
            self.break_handshake_tie(spec, w, &mut changes).await?;
        }
        if let TunnelKind::WireGuard(w) = &spec.kind {
            if let Some(h) = &w.handoff {
                changes.extend(handoff::ensure(&self.rtnl, link.index, name, h).await?);
            }
        }
        if self.sync_mss().await? {
            changes.push("updated MSS clamp rules".into());
        }
        if changes.is_empty() {
            info!(tunnel = name, "tunnel already as specified");
        } else {
            info!(tunnel = name, created, changes = ?changes, "tunnel converged");
        }
        Ok(EnsureOutcome {
            tunnel: name.to_string(),
            created,
            changes,
        })
    }

    /// Undoes what an earlier spec of the same tunnel set up that the new one does not.
    async fn undo_leftovers(&self, prev: &TunnelSpec, spec: &TunnelSpec) -> Result<()> {
        let handoff_of = |s: &TunnelSpec| match &s.kind {
            TunnelKind::WireGuard(w) => w.handoff,
            _ => None,
        };
        if let Some(h) = handoff_of(prev) {
            if handoff_of(spec) != Some(h) {
                handoff::remove(&self.rtnl, &h).await?;
            }
        }
        if prev.tunnel_type() == TunnelType::WireGuard
            && spec.tunnel_type() != TunnelType::WireGuard
        {
            let name = spec.name.as_str();
            wireguard::keys::remove_secret_file(&self.store.private_key_path(name))?;
            self.store.discard_next_key(name)?;
            self.store.clear_rotation(name)?;
            self.store.clear_peer_override(name)?;
            self.store.clear_key_exchange(name)?;
        }
        Ok(())
    }

    /// The underlay interface (when named) and the tunnel MTU.
    async fn tunnel_mtu(&self, spec: &TunnelSpec) -> Result<(Option<u32>, u32)> {
        let (ifindex, underlay_mtu) = if let Some(dev) = &spec.underlay.dev {
            let link = self.rtnl.link(dev).await?.ok_or_else(|| {
                TunnelError::invalid(
                    &spec.name,
                    "underlay.dev",
                    format!("no device named `{dev}`"),
                )
            })?;
            (Some(link.index), spec.underlay.mtu.unwrap_or(link.mtu))
        } else if let Some(mtu) = spec.underlay.mtu {
            (None, mtu)
        } else {
            let Some(remote) = spec.kind.remote() else {
                return Err(TunnelError::invalid(
                    &spec.name,
                    "underlay",
                    "the peer has no endpoint, so the underlay MTU is unknown: give underlay.mtu \
                     or underlay.dev",
                ));
            };
            let link = match self.rtnl.route_oif(remote).await? {
                Some(oif) => self.rtnl.link_by_index(oif).await?,
                None => None,
            };
            let link = link.ok_or_else(|| {
                TunnelError::invalid(
                    &spec.name,
                    "underlay",
                    format!("no route to {remote}, so the underlay MTU is unknown: give underlay.mtu or underlay.dev"),
                )
            })?;
            (None, link.mtu)
        };
        Ok((ifindex, spec.check_mtu(underlay_mtu)?))
    }

    async fn ensure_kernel_link(
        &self,
        spec: &TunnelSpec,
        existing: Option<LinkState>,
        underlay_ifindex: Option<u32>,
        mtu: u32,
        changes: &mut Vec<String>,
    ) -> Result<bool> {
        let name = spec.name.as_str();
        if let Some(link) = &existing {
            let diffs = links::differences(spec, link, underlay_ifindex);
            if diffs.is_empty() {
                return Ok(false);
            }
            self.rtnl.delete_link(link.index, name).await?;
            changes.push(format!(
                "removed device to re-create it: {}",
                diffs.join("; ")
            ));
        }
        let msg = links::create_message(spec, underlay_ifindex, mtu)
            .ok_or_else(|| TunnelError::invalid(name, "type", "not a kernel link type"))?;
        if !self.rtnl.add_link(msg, name).await? {
            return Err(TunnelError::KernelUnsupported {
                kind: spec.tunnel_type(),
                detail: kernel_support::probe(spec.tunnel_type()).detail,
            });
        }
        changes.push(format!("created {} device", spec.tunnel_type()));
        Ok(true)
    }

    /// The peer key in force: the configured one, unless the peer's rotation replaced it.
    fn effective_peer_key(&self, name: &str, configured: PublicKey) -> Result<PublicKey> {
        Ok(match self.store.peer_override(name)? {
            Some(o) if o.replaces == configured => o.public_key,
            _ => configured,
        })
    }

    /// The private key the device should use (the next one once a rotation applied it).
    /// With `changes`, a missing key is generated (and reported there); without, this only
    /// reads, for health checks.
    fn device_key(&self, name: &str, changes: Option<&mut Vec<String>>) -> Result<PrivateKey> {
        let writable = changes.is_some();
        let current = match changes {
            Some(changes) => {
                let (key, created) = self.store.private_key(name)?;
                if created {
                    changes.push(format!(
                        "generated private key (public {})",
                        key.public_key()
                    ));
                }
                key
            }
            None => PrivateKey::load(&self.store.private_key_path(name))?,
        };
        if let Some(r) = self.store.rotation(name)? {
            if r.phase == RotationPhase::Applied {
                if let Some(next) = self.store.next_key(name)? {
                    return Ok(next);
                }
                // The next key was already promoted: the rotation is complete.
                if writable {
                    self.store.clear_rotation(name)?;
                }
            }
        }
        Ok(current)
    }

    fn wireguard_desired(
        &self,
        spec: &TunnelSpec,
        w: &spec::WireGuardSpec,
        changes: Option<&mut Vec<String>>,
    ) -> Result<DeviceConfig> {
        let name = spec.name.as_str();
        let preshared_key = match &w.peer.preshared_key_file {
            Some(path) => Some(PresharedKey::load(path).map_err(|e| {
                TunnelError::invalid(name, "wireguard.peer.preshared_key_file", e.to_string())
            })?),
            None => None,
        };
        Ok(DeviceConfig {
            private_key: self.device_key(name, changes)?,
            listen_port: w.listen_port,
            fwmark: 0,
            peers: vec![PeerConfig {
                public_key: self.effective_peer_key(name, w.peer.public_key)?,
                preshared_key,
                endpoint: w.peer.endpoint,
                persistent_keepalive: w.peer.persistent_keepalive,
                allowed_ips: w.peer.allowed_ips.clone(),
            }],
        })
    }

    async fn ensure_wireguard(
        &self,
        spec: &TunnelSpec,
        w: &spec::WireGuardSpec,
        existing: Option<LinkState>,
        changes: &mut Vec<String>,
    ) -> Result<bool> {
        let name = spec.name.as_str();
        let backend = self.wg()?;
        // A peer override the config has caught up with (or moved past) is no longer needed.
        if let Some(o) = self.store.peer_override(name)? {
            if o.replaces != w.peer.public_key {
                self.store.clear_peer_override(name)?;
            }
        }
        let expected_kind = match backend {
            WireGuardBackend::Kernel(_) => "wireguard",
            WireGuardBackend::Userspace(_) => "tun",
        };
        if let Some(link) = &existing {
            if link.kind_name() != expected_kind {
                self.rtnl.delete_link(link.index, name).await?;
                changes.push(format!(
                    "removed {} device to re-create it as WireGuard",
                    link.kind_name()
                ));
            }
        }
        let mut created = false;
        if backend.get(name).await?.is_none() {
            // A device without a daemon answering for it cannot be configured: start afresh.
            if let Some(link) = self.rtnl.link(name).await? {
                self.rtnl.delete_link(link.index, name).await?;
            }
            backend.create(name).await?;
            created = true;
            changes.push(format!("created WireGuard device ({})", backend.name()));
        }
        let desired = self.wireguard_desired(spec, w, Some(changes))?;
        let status = backend
            .get(name)
            .await?
            .ok_or_else(|| TunnelError::wg(name, "device vanished after creation"))?;
        let update = plan(&status, &desired);
        if !update.is_empty() {
            backend.set(name, &update).await?;
            changes.extend(update.describe());
        }
        Ok(created)
    }

    /// Two ends that initiate a handshake at the same instant both fail it (each drops its
    /// own initiation when it answers the other's) and retry only after WireGuard's 5 s — what
    /// two gateways with persistent keepalives, brought up together, do (seen in 2 of 15
    /// benchmark runs). The end with the greater public key breaks the tie: no handshake
    /// within [`HANDSHAKE_TIE_WAIT`] of creation, and it re-creates its peer entry, which
    /// initiates at once while the other end, having just initiated, stays quiet.
    ///
    /// Once is not enough: the other end's first initiation, sent when its device came up
    /// (later than this one's, on a loaded host), can cross the re-initiation just as the
    /// first ones crossed, or arrive while the entry is being replaced; both ends then wait
    /// for WireGuard's retries, 5 s (+ up to 333 ms of jitter) later, which can cross again:
    /// 10 s without traffic (a likely cause of issue 19's aborted run). So the re-creation
    /// repeats at doubling intervals (100, 300, 700 ms after creation) until a handshake or
    /// [`HANDSHAKE_TIE_GIVE_UP`]; the other end has spent its initiation for 5 s and answers.
    async fn break_handshake_tie(
        &self,
        spec: &TunnelSpec,
        w: &spec::WireGuardSpec,
        changes: &mut Vec<String>,
    ) -> Result<()> {
        let name = spec.name.as_str();
        let backend = self.wg()?;
        let peer_key = self.effective_peer_key(name, w.peer.public_key)?;
        let Some(status) = backend.get(name).await? else {
            return Ok(());
        };
        // Without a keepalive neither end initiates on bring-up (only on traffic), and a
        // re-initiation here would spend this end's next 5 s of initiations for nothing.
        if w.peer.endpoint.is_none()
            || w.peer.persistent_keepalive.is_none()
            || status.public_key.is_none_or(|own| own < peer_key)
        {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (mut next, mut interval, mut recreated) = (HANDSHAKE_TIE_WAIT, HANDSHAKE_TIE_WAIT, 0);
        while started.elapsed() < HANDSHAKE_TIE_GIVE_UP {
            let status = backend.get(name).await?;
            if status.is_some_and(|s| {
                s.peer(&peer_key)
                    .is_some_and(|p| p.last_handshake.is_some())
            }) {
                break;
            }
            if started.elapsed() >= next && next < HANDSHAKE_TIE_GIVE_UP {
                self.recreate_peer_entry(spec, w, peer_key).await?;
                recreated += 1;
                interval *= 2;
                next += interval;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if recreated > 0 {
            changes.push(format!(
                "re-created peer entry {recreated} time(s): no handshake {} ms after creation",
                HANDSHAKE_TIE_WAIT.as_millis()
            ));
        }
        Ok(())
    }

    /// Replaces the peer entry of `peer_key` by a fresh one with the same settings in one set
    /// operation. A fresh entry may initiate at once (its 5 s initiation budget is unspent),
    /// and does: its keepalive goes out immediately, or a kick when it has none.
    pub(crate) async fn recreate_peer_entry(
        &self,
        spec: &TunnelSpec,
        w: &spec::WireGuardSpec,
        peer_key: PublicKey,
    ) -> Result<()> {
        let name = spec.name.as_str();
        let backend = self.wg()?;
        let status = backend
            .get(name)
            .await?
            .ok_or_else(|| TunnelError::wg(name, "no such device"))?;
        let desired = self.wireguard_desired(spec, w, None)?;
        let without_peers = DeviceStatus {
            peers: Vec::new(),
            ..status
        };
        let mut update = plan(&without_peers, &desired);
        update.peers.retain(|p| p.public_key == peer_key);
        update.peers.insert(
            0,
            wireguard::PeerUpdate {
                remove: true,
                ..wireguard::PeerUpdate::select(peer_key)
            },
        );
        backend.set(name, &update).await?;
        if w.peer.persistent_keepalive.is_none() {
            backend.start_handshake(name, peer_key, None).await?;
        }
        Ok(())
    }

    async fn ensure_link_settings(
        &self,
        spec: &TunnelSpec,
        link: &LinkState,
        mtu: u32,
        changes: &mut Vec<String>,
    ) -> Result<()> {
        let name = spec.name.as_str();
        if link.mtu != mtu {
            self.rtnl.set_mtu(link.index, name, mtu).await?;
            changes.push(format!("set MTU {mtu} (was {})", link.mtu));
        }
        let have = self.rtnl.addresses(link.index).await?;
        for net in &spec.addresses {
            if !have.contains(net) {
                self.rtnl.add_address(link.index, name, *net).await?;
                changes.push(format!("added address {net}"));
            }
        }
        for net in have.iter().filter(|n| !spec.addresses.contains(n)) {
            self.rtnl.del_address(link.index, name, *net).await?;
            changes.push(format!("removed address {net}"));
        }
        if !link.up {
            self.rtnl.set_up(link.index, name).await?;
            changes.push("set up".into());
        }
        Ok(())
    }

    /// Rebuilds the MSS clamp table from the recorded tunnels and their devices' MTUs.
    async fn sync_mss(&self) -> Result<bool> {
        let mut entries = Vec::new();
        for name in self.store.names()? {
            let Some(spec) = self.store.read_spec(&name)? else {
                continue;
            };
            if !spec.mss_clamp {
                continue;
            }
            if let Some(link) = self.rtnl.link(&name).await? {
                entries.push(ClampEntry {
                    ifname: name,
                    mtu: link.mtu,
                });
            }
        }
        let mss = self.mss.clone();
        tokio::task::spawn_blocking(move || mss.sync(entries))
            .await
            .map_err(|e| TunnelError::Command {
                cmd: "nft".into(),
                detail: e.to_string(),
            })?
    }

    /// Tears a tunnel down: device, hand-off rules, MSS rules, keys and state. Returns
    /// whether there was anything to remove. A device dwcp did not create is refused.
    pub async fn remove(&self, name: &str) -> Result<bool> {
        let _guard = self.lock.lock().await;
        self.remove_locked(name).await
    }

    async fn remove_locked(&self, name: &str) -> Result<bool> {
        spec::validate_ifname(name)?;
        let spec = self.store.read_spec(name)?;
        let link = self.rtnl.link(name).await?;
        let Some(spec) = spec else {
            if link.is_some() {
                return Err(TunnelError::UnknownTunnel(name.to_string()));
            }
            // Keys made by `public_key` before any spec was ensured.
            let had_state = self.store.dir(name).exists();
            self.store.remove(name)?;
            return Ok(had_state);
        };
        if let TunnelKind::WireGuard(w) = &spec.kind {
            if let Some(h) = &w.handoff {
                handoff::remove(&self.rtnl, h).await?;
            }
        }
        if let Some(link) = link {
            match (&spec.kind, self.wg()) {
                (TunnelKind::WireGuard(_), Ok(backend)) => backend.delete(name).await?,
                _ => self.rtnl.delete_link(link.index, name).await?,
            }
        }
        self.store.remove(name)?;
        self.sync_mss().await?;
        info!(tunnel = name, "tunnel removed");
        Ok(true)
    }

    /// Ensures every spec and removes recorded tunnels that are not in `specs`. One failing
    /// tunnel does not stop the others.
    pub async fn reconcile(&self, specs: &[TunnelSpec]) -> ReconcileReport {
        let _guard = self.lock.lock().await;
        let mut report = ReconcileReport::default();
        for spec in specs {
            let r = self.ensure_locked(spec).await;
            if let Err(e) = &r {
                warn!(tunnel = %spec.name, error = %e, "tunnel not converged");
            }
            report.ensured.push((spec.name.clone(), r));
        }
        let names = match self.store.names() {
            Ok(n) => n,
            Err(e) => {
                report.removed.push(("<state directory>".into(), Err(e)));
                return report;
            }
        };
        for name in names {
            if !specs.iter().any(|s| s.name == name) {
                let r = self.remove_locked(&name).await.map(|_| ());
                report.removed.push((name, r));
            }
        }
        report
    }

    /// Recorded tunnels, sorted by name.
    pub fn names(&self) -> Result<Vec<String>> {
        self.store.names()
    }

    pub fn spec(&self, name: &str) -> Result<TunnelSpec> {
        self.store
            .read_spec(name)?
            .ok_or_else(|| TunnelError::UnknownTunnel(name.to_string()))
    }

    /// This end's WireGuard public key for tunnel `name` (what the peer's config needs),
    /// generating the key pair if the tunnel has none yet.
    pub fn public_key(&self, name: &str) -> Result<PublicKey> {
        spec::validate_ifname(name)?;
        let mut ignored = Vec::new();
        Ok(self.device_key(name, Some(&mut ignored))?.public_key())
    }

    /// Age of the tunnel's private key (for scheduled rotation).
    pub fn key_age(&self, name: &str, now: SystemTime) -> Result<Option<Duration>> {
        let path = self.store.private_key_path(name);
        match std::fs::metadata(&path) {
            Ok(m) => {
                let modified = m.modified().map_err(|e| TunnelError::io(&path, e))?;
                Ok(Some(now.duration_since(modified).unwrap_or(Duration::ZERO)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TunnelError::io(path, e)),
        }
    }

    /// Health of every recorded tunnel.
    pub async fn list(&self) -> Result<Vec<TunnelHealth>> {
        let mut out = Vec::new();
        for name in self.store.names()? {
            out.push(self.check(&name).await?);
        }
        Ok(out)
    }

    /// How the tunnel is doing and how its device differs from its spec.
    pub async fn check(&self, name: &str) -> Result<TunnelHealth> {
        let spec = self.spec(name)?;
        let mut health = TunnelHealth {
            tunnel: name.to_string(),
            kind: spec.tunnel_type(),
            state: HealthState::Down,
            ifindex: None,
            mtu: None,
            problems: Vec::new(),
            wireguard: None,
        };
        let Some(link) = self.rtnl.link(name).await? else {
            health.problems.push("device missing".into());
            return Ok(health);
        };
        health.ifindex = Some(link.index);
        health.mtu = Some(link.mtu);
        let problems = &mut health.problems;
        match self.tunnel_mtu(&spec).await {
            Ok((underlay, mtu)) => {
                problems.extend(links::differences(&spec, &link, underlay));
                if link.mtu != mtu {
                    problems.push(format!("MTU is {}, should be {mtu}", link.mtu));
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
        let have = self.rtnl.addresses(link.index).await?;
        for net in &spec.addresses {
            if !have.contains(net) {
                problems.push(format!("address {net} missing"));
            }
        }
        for net in have.iter().filter(|n| !spec.addresses.contains(n)) {
            problems.push(format!("unexpected address {net}"));
        }
        if !link.up {
            problems.push("administratively down".into());
        }
        if let TunnelKind::WireGuard(w) = &spec.kind {
            if let Some(h) = &w.handoff {
                problems.extend(handoff::problems(&self.rtnl, link.index, name, h).await?);
            }
            health.wireguard = self
                .wireguard_health(&spec, w, &mut health.problems)
                .await?;
        }
        health.state = if !link.up {
            HealthState::Down
        } else if !health.problems.is_empty() {
            HealthState::Drifted
        } else if let Some(wg) = &health.wireguard {
            match wg.handshake_age_s {
                None => HealthState::Connecting,
                Some(age) if age <= WIREGUARD_SESSION_LIFETIME.as_secs_f64() => HealthState::Up,
                Some(_) => HealthState::Stale,
            }
        } else if link.lower_up {
            HealthState::Up
        } else {
            HealthState::Down
        };
        Ok(health)
    }

    async fn wireguard_health(
        &self,
        spec: &TunnelSpec,
        w: &spec::WireGuardSpec,
        problems: &mut Vec<String>,
    ) -> Result<Option<WireGuardHealth>> {
        let name = spec.name.as_str();
        let backend = match self.wg() {
            Ok(b) => b,
            Err(e) => {
                problems.push(e.to_string());
                return Ok(None);
            }
        };
        let Some(status) = backend.get(name).await? else {
            problems.push(format!("no {} answers for the device", backend.name()));
            return Ok(None);
        };
        match self.wireguard_desired(spec, w, None) {
            Ok(desired) => problems.extend(
                plan(&status, &desired)
                    .describe()
                    .into_iter()
                    .map(|c| format!("pending: {c}")),
            ),
            Err(e) => problems.push(e.to_string()),
        }
        let peer_key = self.effective_peer_key(name, w.peer.public_key)?;
        let peer = status.peer(&peer_key);
        let now = SystemTime::now();
        Ok(Some(WireGuardHealth {
            backend: backend.name(),
            public_key: status.public_key,
            peer_public_key: peer_key,
            endpoint: peer.and_then(|p| p.endpoint),
            last_handshake_unix_s: peer
                .and_then(|p| p.last_handshake)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
            handshake_age_s: peer
                .and_then(|p| p.handshake_age(now))
                .map(|d| d.as_secs_f64()),
            rx_bytes: peer.map_or(0, |p| p.rx_bytes),
            tx_bytes: peer.map_or(0, |p| p.tx_bytes),
            rotation: self.store.rotation(name)?.map(|r| r.phase),
        }))
    }
}
