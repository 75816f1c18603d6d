//! WireGuard key rotation without dropping traffic.
//!
//! A peer is known by its public key, and both sides check that decrypted packets come from
//! the peer the source address belongs to, so the two gateways cannot switch at exactly the
//! same instant. The order that loses nothing, for gateway A rotating its key with peer B:
//!
//! 1. **stage** — A generates the next key and stores it (`private.key.next`, 0600). Nothing
//!    changes on the wire.
//! 2. **apply** — A's device takes the next key. A stops *sending* on the old session (its
//!    packets are queued, up to 128 per peer in both implementations) and starts a handshake
//!    that B cannot answer yet; A still *receives* on the old session, so B→A traffic flows.
//! 3. **replace** — B adds a peer entry for A's new key (same endpoint, allowed IPs,
//!    keepalive and preshared key; it takes the allowed IPs over) and starts a handshake at
//!    once (a keepalive turned on is sent immediately). The handshake completes in one round
//!    trip; both sides flush their queues into the new session. Only then does B remove the
//!    entry of A's old key: removing it earlier drops the packets still in its send pipeline
//!    (seen in the lab: 5 of 3,600).
//!    Should A's first initiation (sent when it switched, if it had traffic) reach B only after
//!    B's entry exists, it crosses B's and both fail; each end then waits WireGuard's 5 s
//!    before initiating again. A breaks the tie, not B: B re-creating its entry would drop
//!    the packets queued in it (the traffic towards A: 25 at 250/s in the lab). A
//!    *re-initiates* instead — its device takes a throwaway key and the next key again, which
//!    resets its initiation budget without touching its peers or queues — 100 ms after the
//!    switch and then at doubling intervals, while B, having spent its budget, stays quiet.
//! 4. **commit** — once A sees a handshake newer than the switch, the next key becomes the
//!    current one and the old private key file is gone. If no handshake comes within the
//!    timeout, both sides go back (A's old key, B's old peer entry): the old key is retired
//!    only after the new handshake has completed.
//!
//! Loss is zero as long as the queue holds what A sends between steps 2 and 4 (128 packets:
//! at 100,000 packets/s that is about 1.3 ms, so the control path between A and B must be
//! faster than that for such a flow; the lab measures it). B learns A's new key through
//! [`PeerKeyExchange`]: from a manager in the same process ([`LocalPeer`], the lab) or from
//! B's `dwcp-tunnels run` daemon over the underlay ([`super::key_exchange::RemotePeer`]).

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tracing::{info, warn};

use super::{
    error::{Result, TunnelError},
    spec::{TunnelKind, TunnelSpec, WireGuardSpec},
    state::{PeerOverride, RotationPhase, RotationState},
    wireguard::{plan, DeviceUpdate, PeerUpdate, PublicKey},
    TunnelManager,
};

/// How long the peer keeps the old entry when no handshake with the new key comes: two of
/// WireGuard's 5 s handshake retries and a little more.
const RETIRE_WAIT: Duration = Duration::from_secs(11);

/// How often the handshake is looked for during a rotation.
const HANDSHAKE_POLL: Duration = Duration::from_millis(2);

/// How B hears about A's new key.
pub trait PeerKeyExchange {
    /// Announces the change before this end switches; the peer refuses when it is rotating
    /// its own key of the tunnel. Nothing to do for a peer in this process.
    fn announce(&self, _old: PublicKey, _new: PublicKey) -> impl Future<Output = Result<()>> {
        async { Ok(()) }
    }

    /// Makes the peer accept `new` instead of `old` for this tunnel.
    fn replace_peer_key(&self, old: PublicKey, new: PublicKey) -> impl Future<Output = Result<()>>;
}

/// A peer whose manager runs in this process (the lab, tests, benchmarks).
pub struct LocalPeer<'a> {
    pub manager: &'a TunnelManager,
    /// The tunnel's name on the peer.
    pub tunnel: &'a str,
}

impl PeerKeyExchange for LocalPeer<'_> {
    async fn replace_peer_key(&self, old: PublicKey, new: PublicKey) -> Result<()> {
        self.manager.replace_peer_key(self.tunnel, old, new).await
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RotationReport {
    pub tunnel: String,
    pub old_public: PublicKey,
    pub new_public: PublicKey,
    /// From applying the key to the first handshake with it.
    pub handshake_after: Duration,
}

/// When keys are rotated on a schedule.
#[derive(Clone, Copy, Debug)]
pub struct RotationPolicy {
    /// Rotate keys older than this.
    pub max_key_age: Duration,
    /// Give up (and roll back) when no handshake with the new key comes within this. More
    /// than WireGuard's 5 s handshake retry, so one lost handshake packet is survived.
    pub handshake_timeout: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            max_key_age: Duration::from_secs(30 * 24 * 3600),
            handshake_timeout: Duration::from_secs(12),
        }
    }
}

/// Rotates `tunnel`'s key with the peer's help (stage, apply, replace, commit), rolling back
/// when no handshake with the new key completes within `timeout`.
pub async fn rotate_key(
    local: &TunnelManager,
    tunnel: &str,
    peer: &impl PeerKeyExchange,
    timeout: Duration,
) -> Result<RotationReport> {
    let staged = local.stage_rotation(tunnel).await?;
    let (old, new) = (staged.old_public, staged.new_public);
    if let Err(e) = peer.announce(old, new).await {
        local.abort_rotation(tunnel).await?;
        return Err(TunnelError::Rotation {
            tunnel: tunnel.to_string(),
            detail: format!("the peer refused the rotation ({e}); nothing changed"),
        });
    }
    let switched_at = local.apply_rotation(tunnel).await?;
    let applied = Instant::now();
    // The exchange (for a peer in this process: until its new entry has the handshake) runs
    // beside the wait for this end's handshake, which may need this end to re-initiate.
    let mut exchange = Box::pin(peer.replace_peer_key(old, new));
    let (mut exchanged, mut handshake_after) = (false, None);
    let mut reinitiate_at = super::HANDSHAKE_TIE_WAIT;
    while !(exchanged && handshake_after.is_some()) {
        if exchanged {
            tokio::time::sleep(HANDSHAKE_POLL).await;
        } else {
            tokio::select! {
                done = &mut exchange => {
                    if let Err(e) = done {
                        // The peer may have taken the key before its reply was lost: it is
                        // told to go back too (authenticated by the next key, which `abort`
                        // forgets), whatever it answers.
                        let _ = peer.replace_peer_key(new, old).await;
                        local.abort_rotation(tunnel).await?;
                        return Err(TunnelError::Rotation {
                            tunnel: tunnel.to_string(),
                            detail: format!("the peer did not take the new key ({e}); rolled back"),
                        });
                    }
                    exchanged = true;
                }
                _ = tokio::time::sleep(HANDSHAKE_POLL) => {}
            }
        }
        if handshake_after.is_some() {
            continue;
        }
        if local
            .peer_last_handshake(tunnel)
            .await?
            .is_some_and(|t| t > switched_at)
        {
            handshake_after = Some(applied.elapsed());
            continue;
        }
        if applied.elapsed() > timeout {
            warn!(tunnel, "no handshake with the new key; rolling back");
            // An exchange still running may hold the peer (in this process: its lock).
            drop(exchange);
            let peer_back = peer.replace_peer_key(new, old).await;
            local.abort_rotation(tunnel).await?;
            peer_back?;
            return Err(TunnelError::Rotation {
                tunnel: tunnel.to_string(),
                detail: format!(
                    "no handshake with the new key within {timeout:?}; both sides are back on the old key"
                ),
            });
        }
        if applied.elapsed() >= reinitiate_at {
            warn!(tunnel, after = ?applied.elapsed(), "no handshake with the new key yet; initiating again");
            local.reinitiate(tunnel).await?;
            reinitiate_at *= 2;
        }
    }
    let handshake_after = handshake_after.expect("loop ends with a handshake");
    local.commit_rotation(tunnel).await?;
    info!(tunnel, old = %old, new = %new, ?handshake_after, "key rotated");
    Ok(RotationReport {
        tunnel: tunnel.to_string(),
        old_public: old,
        new_public: new,
        handshake_after,
    })
}

/// WireGuard tunnels whose key is older than the policy allows, or whose rotation was left
/// unfinished (by a crash); the agent's timer rotates them.
pub fn due_for_rotation(
    manager: &TunnelManager,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<Vec<String>> {
    let mut due = Vec::new();
    for name in manager.names()? {
        if manager.spec(&name)?.tunnel_type() != super::TunnelType::WireGuard {
            continue;
        }
        let unfinished = manager.store.rotation(&name)?.is_some();
        let old = manager
            .key_age(&name, now)?
            .is_some_and(|age| age >= policy.max_key_age);
        if unfinished || old {
            due.push(name);
        }
    }
    Ok(due)
}

pub(super) fn wireguard_spec(spec: &TunnelSpec) -> Result<&WireGuardSpec> {
    match &spec.kind {
        TunnelKind::WireGuard(w) => Ok(w),
        _ => Err(TunnelError::Rotation {
            tunnel: spec.name.clone(),
            detail: format!("a {} tunnel has no keys to rotate", spec.tunnel_type()),
        }),
    }
}

impl TunnelManager {
    /// Step 1: generates and stores the next key. Idempotent while a rotation is open.
    pub async fn stage_rotation(&self, name: &str) -> Result<RotationState> {
        let _guard = self.lock.lock().await;
        wireguard_spec(&self.spec(name)?)?;
        if let Some(r) = self.store.rotation(name)? {
            if self.store.next_key(name)?.is_some() {
                return Ok(r);
            }
        }
        let (current, _) = self.store.private_key(name)?;
        let next = super::PrivateKey::generate();
        self.store.store_next_key(name, &next)?;
        let state = RotationState {
            phase: RotationPhase::Staged,
            old_public: current.public_key(),
            new_public: next.public_key(),
        };
        self.store.set_rotation(name, &state)?;
        Ok(state)
    }

    /// Step 2: the device takes the next key. Returns the time just before the switch.
    pub async fn apply_rotation(&self, name: &str) -> Result<SystemTime> {
        let _guard = self.lock.lock().await;
        wireguard_spec(&self.spec(name)?)?;
        let backend = self.wg()?;
        let mut state = self
            .store
            .rotation(name)?
            .ok_or_else(|| TunnelError::Rotation {
                tunnel: name.to_string(),
                detail: "no rotation staged".into(),
            })?;
        let next = self
            .store
            .next_key(name)?
            .ok_or_else(|| TunnelError::Rotation {
                tunnel: name.to_string(),
                detail: "the staged key file is missing".into(),
            })?;
        // Recorded first: after a crash, `ensure` keeps the device on the key it may already use.
        state.phase = RotationPhase::Applied;
        self.store.set_rotation(name, &state)?;
        let switched_at = SystemTime::now();
        backend
            .set(
                name,
                &DeviceUpdate {
                    private_key: Some(next),
                    ..Default::default()
                },
            )
            .await?;
        Ok(switched_at)
    }

    /// Step 4: the next key becomes the current one; the old key file is gone.
    pub async fn commit_rotation(&self, name: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let Some(state) = self.store.rotation(name)? else {
            return Ok(());
        };
        if state.phase != RotationPhase::Applied {
            return Err(TunnelError::Rotation {
                tunnel: name.to_string(),
                detail: "the staged key was never applied".into(),
            });
        }
        if self.store.next_key(name)?.is_some() {
            self.store.promote_next_key(name)?;
        }
        self.store.clear_rotation(name)
    }

    /// Goes back to the current key and forgets the next one.
    pub async fn abort_rotation(&self, name: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let Some(mut state) = self.store.rotation(name)? else {
            return Ok(());
        };
        // Recorded first, as in `apply_rotation`: the device should be on the current key.
        state.phase = RotationPhase::Staged;
        self.store.set_rotation(name, &state)?;
        let (current, _) = self.store.private_key(name)?;
        let backend = self.wg()?;
        if backend.get(name).await?.is_some() {
            backend
                .set(
                    name,
                    &DeviceUpdate {
                        private_key: Some(current),
                        ..Default::default()
                    },
                )
                .await?;
        }
        self.store.discard_next_key(name)?;
        self.store.clear_rotation(name)
    }

    /// Step 3, on the peer: accept `new` where `old` was, in one set operation, and start the
    /// handshake at once. Idempotent; the learned key survives restarts (`peer.json`) until
    /// the configuration names it or another key.
    pub async fn replace_peer_key(&self, name: &str, old: PublicKey, new: PublicKey) -> Result<()> {
        let _guard = self.lock.lock().await;
        let spec = self.spec(name)?;
        let w = wireguard_spec(&spec)?;
        let in_force = self.effective_peer_key(name, w.peer.public_key)?;
        if in_force == new {
            return Ok(());
        }
        if in_force != old {
            return Err(TunnelError::Rotation {
                tunnel: name.to_string(),
                detail: format!("the peer key in force is {in_force}, not {old}"),
            });
        }
        let backend = self.wg()?;
        if new == w.peer.public_key {
            self.store.clear_peer_override(name)?;
        } else {
            self.store.set_peer_override(
                name,
                &PeerOverride {
                    replaces: w.peer.public_key,
                    public_key: new,
                },
            )?;
        }
        let desired = self.wireguard_desired(&spec, w, None)?;
        let status = backend
            .get(name)
            .await?
            .ok_or_else(|| TunnelError::wg(name, "no such device"))?;
        // The new entry first (it takes over the allowed IPs, so new packets use it); the old
        // one stays until the new handshake completes, because removing a peer drops what is
        // still queued in its send pipeline.
        let mut update = plan(&status, &desired);
        let retire: Vec<PeerUpdate> = update.peers.iter().filter(|p| p.remove).cloned().collect();
        update.peers.retain(|p| !p.remove);
        backend.set(name, &update).await?;
        if w.peer.persistent_keepalive.is_none() {
            backend.start_handshake(name, new, None).await?;
        }
        // No re-initiation here should the handshake not come: the rotating end breaks ties
        // (see the module's notes), so what is queued in the new entry stays queued.
        let started = Instant::now();
        while started.elapsed() < RETIRE_WAIT {
            let status = backend.get(name).await?;
            if status.is_some_and(|s| s.peer(&new).is_some_and(|p| p.last_handshake.is_some())) {
                break;
            }
            tokio::time::sleep(HANDSHAKE_POLL).await;
        }
        backend
            .set(
                name,
                &DeviceUpdate {
                    peers: retire,
                    ..Default::default()
                },
            )
            .await?;
        info!(tunnel = name, old = %old, new = %new, "peer key replaced");
        Ok(())
    }

    /// Makes the device initiate a handshake at once, during a rotation (after `apply`): it
    /// takes a throwaway key and then the next key again. Setting a key expires the sessions'
    /// sending side (already expired by the switch) and resets the initiation budget; setting
    /// the key in force is ignored by both implementations, hence the detour. Peers, queues
    /// and receiving sessions are untouched. A packet waiting to be sent, or a kick, starts
    /// the initiation.
    pub async fn reinitiate(&self, name: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let spec = self.spec(name)?;
        let w = wireguard_spec(&spec)?;
        let next = self
            .store
            .next_key(name)?
            .ok_or_else(|| TunnelError::Rotation {
                tunnel: name.to_string(),
                detail: "no rotation in progress".into(),
            })?;
        let backend = self.wg()?;
        for key in [super::PrivateKey::generate(), next] {
            backend
                .set(
                    name,
                    &DeviceUpdate {
                        private_key: Some(key),
                        ..Default::default()
                    },
                )
                .await?;
        }
        let peer_key = self.effective_peer_key(name, w.peer.public_key)?;
        backend
            .start_handshake(name, peer_key, w.peer.persistent_keepalive)
            .await
    }

    /// This end's private key whose public key is `public`: the current one or, during a
    /// rotation, the next.
    pub(crate) fn own_key(&self, name: &str, public: PublicKey) -> Result<super::PrivateKey> {
        if let Some(next) = self.store.next_key(name)? {
            if next.public_key() == public {
                return Ok(next);
            }
        }
        let (current, _) = self.store.private_key(name)?;
        if current.public_key() == public {
            return Ok(current);
        }
        Err(TunnelError::Rotation {
            tunnel: name.to_string(),
            detail: format!("no private key of this end has the public key {public}"),
        })
    }

    /// The WireGuard tunnel's peer key in force (the configured one or what a rotation of the
    /// peer replaced it with).
    pub(crate) fn peer_key_in_force(&self, name: &str) -> Result<PublicKey> {
        let spec = self.spec(name)?;
        self.effective_peer_key(name, wireguard_spec(&spec)?.peer.public_key)
    }

    /// When the last handshake with the tunnel's peer completed.
    pub async fn peer_last_handshake(&self, name: &str) -> Result<Option<SystemTime>> {
        let peer_key = self.peer_key_in_force(name)?;
        let status = self.wg()?.get(name).await?;
        Ok(status.and_then(|s| s.peer(&peer_key).and_then(|p| p.last_handshake)))
    }
}
