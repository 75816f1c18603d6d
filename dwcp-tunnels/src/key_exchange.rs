//! Step 3 of a key rotation between hosts: the rotating gateway tells the peer gateway's
//! tunnel daemon (`dwcp-tunnels run`) its new key, over the underlay (TCP, one JSON line each
//! way, to the peer endpoint's address on the key-exchange port).
//!
//! Authenticated with what both ends already hold: the x25519 shared secret of the peer's own
//! key and the rotating end's key the peer trusts — the static-static secret WireGuard's
//! handshake also rests on. The message names the keys, but the peer keys the MAC from its own
//! state, never from the message: the rotating end's key it has in force or, for a request
//! that only asks for the key in force (a rollback, or a change repeated after a crash), the
//! other key of the last change that end announced (`Trust`). A request naming any other
//! `from` is refused whatever its MAC. The message carries its send time, refused when more
//! than 60 s off or not newer than the last accepted one, which the peer keeps in the tunnel's
//! state (no replay, across restarts too), and an HMAC-SHA256; the reply carries one over the
//! request's, so the rotating end knows it was the peer that took the key. Nothing on the wire
//! is secret: public keys and MACs only.
//!
//! The listener faces the underlay, so what an unauthenticated client can make it do is bounded
//! ([`ListenerLimits`]), and every bad request gets the same [`REFUSED`] line: the reason is
//! only logged and counted ([`Refusal`]).
//!
//! The peer answers once its new entry has had the handshake (or after its retire wait), as
//! [`super::rotation::LocalPeer`] does in one process; the rotating end waits meanwhile and
//! re-initiates should the handshake not come (see `rotation`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use governor::{DefaultKeyedRateLimiter, Quota};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use super::{
    error::{Result, TunnelError},
    rotation::{wireguard_spec, PeerKeyExchange},
    spec::TunnelKind,
    state::{Announcement, KeyExchangeState},
    PrivateKey, PublicKey, TunnelManager,
};

/// Where `dwcp-tunnels run` listens unless told otherwise (the same on every gateway).
pub const DEFAULT_PORT: u16 = 51900;
/// Longest request or reply line.
const MAX_LINE: u64 = 2048;
/// How far a request's send time may be from the receiver's clock.
const MAX_SKEW: Duration = Duration::from_secs(60);
/// The rotating end's wait for the reply: the peer answers after its handshake wait (11 s).
const REPLY_WAIT: Duration = Duration::from_secs(15);
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Sources the rate limit tracks before it forgets those whose allowance is whole again.
const TRACKED_SOURCES: usize = 4096;

/// The one answer to every bad request, whatever was wrong with it.
pub const REFUSED: &str = "{\"accepted\":false,\"detail\":\"refused\",\"mac\":\"\"}\n";

type HmacSha256 = Hmac<Sha256>;

/// "The key `from` is replaced by `to`", addressed to the gateway whose key is `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChange {
    /// Only announces the change, before the rotating end switches: a peer that is rotating
    /// its own key refuses, and both ends keep their keys (two rotations of one tunnel at
    /// once would leave each end on a key the other refused).
    pub intent: bool,
    pub from: PublicKey,
    pub to: PublicKey,
    pub peer: PublicKey,
    pub sent_unix_ms: u64,
    /// HMAC-SHA256, base64.
    pub mac: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub accepted: bool,
    pub detail: String,
    /// Over the request's MAC; empty in [`REFUSED`].
    pub mac: String,
}

/// Why a connection or request got [`REFUSED`] (or was closed unread): logged and counted
/// here, never told to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Error, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    #[error("the source opened connections faster than its rate allows")]
    RateLimited,
    #[error("every connection slot is taken")]
    Busy,
    #[error("no request line within the wait")]
    Timeout,
    #[error("not a request")]
    Malformed,
    #[error("send time more than {} s from this clock", MAX_SKEW.as_secs())]
    Skew,
    #[error("no tunnel here has the key the request is addressed to")]
    UnknownTunnel,
    #[error("`from` is not a key this end trusts for the tunnel's peer")]
    WrongKey,
    #[error("bad MAC")]
    BadMac,
    #[error("not newer than the last accepted request (a replay?)")]
    Replay,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::RateLimited,
        Refusal::Busy,
        Refusal::Timeout,
        Refusal::Malformed,
        Refusal::Skew,
        Refusal::UnknownTunnel,
        Refusal::WrongKey,
        Refusal::BadMac,
        Refusal::Replay,
    ];
}

/// The MAC key of a tunnel's two static keys (one private, the other's public).
fn mac_key(own: &PrivateKey, other: &PublicKey) -> HmacSha256 {
    let shared = own.shared_secret(other);
    let mut kdf = HmacSha256::new_from_slice(shared.as_slice()).expect("any key length");
    kdf.update(b"dwcp key exchange v1");
    HmacSha256::new_from_slice(&kdf.finalize().into_bytes()).expect("any key length")
}

fn encode(tag: &[u8]) -> String {
    BASE64.encode(tag)
}

fn decode(s: &str) -> Option<Vec<u8>> {
    BASE64.decode(s).ok()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl KeyChange {
    fn signed_part(&self, mac: &mut HmacSha256) {
        mac.update(if self.intent { b"intent " } else { b"request" });
        for k in [&self.from, &self.to, &self.peer] {
            mac.update(k.as_bytes());
        }
        mac.update(&self.sent_unix_ms.to_le_bytes());
    }

    /// A request from the holder of `own` (whose public key is `from`) to `peer`.
    pub fn new(
        own: &PrivateKey,
        to: PublicKey,
        peer: PublicKey,
        sent: SystemTime,
        intent: bool,
    ) -> KeyChange {
        let mut m = KeyChange {
            intent,
            from: own.public_key(),
            to,
            peer,
            sent_unix_ms: unix_ms(sent),
            mac: String::new(),
        };
        let mut mac = mac_key(own, &peer);
        m.signed_part(&mut mac);
        m.mac = encode(&mac.finalize().into_bytes());
        m
    }

    /// One request line (the newline optional).
    pub fn parse(line: &[u8]) -> std::result::Result<KeyChange, Refusal> {
        serde_json::from_slice(line).map_err(|_| Refusal::Malformed)
    }

    fn verify(&self, key: &HmacSha256) -> bool {
        let Some(tag) = decode(&self.mac) else {
            return false;
        };
        let mut mac = key.clone();
        self.signed_part(&mut mac);
        mac.verify_slice(&tag).is_ok()
    }
}

impl Reply {
    fn signed(key: &HmacSha256, request: &KeyChange, accepted: bool, detail: String) -> Reply {
        let mut mac = key.clone();
        Reply::signed_part(&mut mac, request, accepted, &detail);
        Reply {
            accepted,
            detail,
            mac: encode(&mac.finalize().into_bytes()),
        }
    }

    fn signed_part(mac: &mut HmacSha256, request: &KeyChange, accepted: bool, detail: &str) {
        mac.update(b"reply");
        mac.update(request.mac.as_bytes());
        mac.update(&[accepted as u8]);
        mac.update(detail.as_bytes());
    }

    fn verify(&self, key: &HmacSha256, request: &KeyChange) -> bool {
        let Some(tag) = decode(&self.mac) else {
            return false;
        };
        let mut mac = key.clone();
        Reply::signed_part(&mut mac, request, self.accepted, &self.detail);
        mac.verify_slice(&tag).is_ok()
    }
}

/// What this end trusts for one tunnel's peer, from its own state.
struct Trust {
    tunnel: String,
    own: PrivateKey,
    /// The peer's key in force.
    in_force: PublicKey,
    /// The other key of the peer's last announced change, while one of its two is in force.
    announced_other: Option<PublicKey>,
}

impl Trust {
    /// The MAC key that verifies `request`: from the peer's key in force or, for a request
    /// that asks for that key (which changes nothing here), from the announced other one.
    fn authenticate(&self, request: &KeyChange) -> std::result::Result<HmacSha256, Refusal> {
        let trusted = if request.from == self.in_force {
            self.in_force
        } else if self.announced_other == Some(request.from) && request.to == self.in_force {
            request.from
        } else {
            return Err(Refusal::WrongKey);
        };
        let key = mac_key(&self.own, &trusted);
        if !request.verify(&key) {
            return Err(Refusal::BadMac);
        }
        Ok(key)
    }
}

/// What one client can make the listener do before it is authenticated.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Connections served at once; any more are closed unread.
    pub max_connections: usize,
    /// How long a client has to send its request line.
    pub request_wait: Duration,
    /// Connections per source address (an IPv6 source by its /64); any more are closed
    /// unread. A connection carries one request, so this bounds the MAC verifications and
    /// the connection slots a source can take, too.
    pub per_source: Quota,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        // A rotation sends 2 requests (3 with its rollback) and a gateway has a few peers.
        let burst = NonZeroU32::new(5).expect("not zero");
        ListenerLimits {
            max_connections: 64,
            request_wait: Duration::from_secs(3),
            per_source: Quota::per_second(NonZeroU32::MIN).allow_burst(burst),
        }
    }
}

/// Whom a per-source limit counts: an address, or an IPv6 source's /64 (a host commonly
/// holds the whole prefix). The agent's HTTP listeners count their clients the same way.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// The peer end: answers key changes for the tunnels of `manager`.
pub struct KeyExchangeServer {
    manager: Arc<TunnelManager>,
    limits: ListenerLimits,
    sources: DefaultKeyedRateLimiter<IpAddr>,
    /// One read-check-write of a tunnel's key-exchange state at a time.
    state_lock: Mutex<()>,
    /// Per [`Refusal`], in the order of `Refusal::ALL`.
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl KeyExchangeServer {
    pub fn new(manager: Arc<TunnelManager>, limits: ListenerLimits) -> Arc<KeyExchangeServer> {
        Arc::new(KeyExchangeServer {
            manager,
            limits,
            sources: DefaultKeyedRateLimiter::keyed(limits.per_source),
            state_lock: Mutex::new(()),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }

    /// Whether the peer of `tunnel` announced a rotation within `within` that has not come
    /// yet: this end should not start its own meanwhile.
    pub fn peer_rotating(&self, tunnel: &str, within: Duration) -> Result<bool> {
        let Some(a) = self.manager.store.key_exchange(tunnel)?.announced else {
            return Ok(false);
        };
        let age_ms = unix_ms(SystemTime::now()).saturating_sub(a.at_unix_ms);
        Ok(age_ms < within.as_millis() as u64 && self.manager.peer_key_in_force(tunnel)? != a.new)
    }

    /// Connections and requests refused since start, by reason (reasons never seen left out).
    pub fn refusals(&self) -> BTreeMap<Refusal, u64> {
        Refusal::ALL
            .into_iter()
            .zip(&self.refused)
            .map(|(r, n)| (r, n.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Binds `address` in the manager's namespace.
    pub async fn bind(&self, address: SocketAddr) -> Result<TcpListener> {
        // Bound on a thread inside the namespace; registered with the runtime out here.
        let bound = self.manager.ns.run(|| {
            let l = std::net::TcpListener::bind(address)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })?;
        bound
            .and_then(TcpListener::from_std)
            .map_err(|e| TunnelError::KeyExchange {
                detail: format!("cannot listen on {address}: {e}"),
            })
    }

    /// Serves connections until the listener fails; each in its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let (stream, from) = listener
                .accept()
                .await
                .map_err(|e| TunnelError::KeyExchange {
                    detail: format!("accept: {e}"),
                })?;
            // Dropping `stream` closes it: nothing is read from a source over its rate or
            // when every slot is taken.
            if self.sources.len() > TRACKED_SOURCES {
                self.sources.retain_recent();
            }
            if self.sources.check_key(&source_of(from.ip())).is_err() {
                self.count(Refusal::RateLimited, from);
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.count(Refusal::Busy, from);
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                server.connection(stream, from).await;
                drop(slot);
            });
        }
    }

    /// Logs (quietly for what costs this end nothing) and counts a refusal.
    fn count(&self, refusal: Refusal, from: SocketAddr) {
        let i = Refusal::ALL.iter().position(|&r| r == refusal);
        self.refused[i.expect("in ALL")].fetch_add(1, Ordering::Relaxed);
        match refusal {
            Refusal::Skew | Refusal::WrongKey | Refusal::BadMac | Refusal::Replay => {
                warn!(%from, "key exchange refused: {refusal}")
            }
            _ => debug!(%from, "key exchange refused: {refusal}"),
        }
    }

    async fn connection(&self, stream: TcpStream, from: SocketAddr) {
        let (read, mut write) = stream.into_split();
        let mut line = Vec::new();
        let mut reader = BufReader::new(read.take(MAX_LINE));
        let read = reader.read_until(b'\n', &mut line);
        match tokio::time::timeout(self.limits.request_wait, read).await {
            Err(_) => return self.count(Refusal::Timeout, from),
            Ok(Err(e)) => return debug!(%from, "key exchange: reading the request: {e}"),
            Ok(Ok(_)) => {}
        }
        let reply = match self.answer(&line, from).await {
            Ok(reply) => serde_json::to_string(&reply).expect("a reply serializes") + "\n",
            Err(refusal) => {
                self.count(refusal, from);
                REFUSED.to_string()
            }
        };
        if let Err(e) = write.write_all(reply.as_bytes()).await {
            debug!(%from, "key exchange: writing the reply: {e}");
        }
    }

    /// Checks and carries out one request line. A refused request that was authenticated
    /// gets a signed reply saying why; any other refusal is a [`Refusal`].
    async fn answer(&self, line: &[u8], from: SocketAddr) -> std::result::Result<Reply, Refusal> {
        let request = KeyChange::parse(line)?;
        let now_ms = unix_ms(SystemTime::now());
        if now_ms.abs_diff(request.sent_unix_ms) > MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Skew);
        }
        let trust = self.trust(&request.peer)?;
        let key = trust.authenticate(&request)?;
        let tunnel = trust.tunnel.as_str();
        // On disk before anything is done, so a replay after a restart is refused too.
        match self.update_state(tunnel, |s| s.accept_send_time(request.sent_unix_ms)) {
            Ok(true) => {}
            Ok(false) => return Err(Refusal::Replay),
            Err(e) => {
                warn!(%from, tunnel, "key exchange: cannot record the request: {e}");
                return Ok(Reply::signed(&key, &request, false, e.to_string()));
            }
        }
        Ok(match self.carry_out(&request, tunnel, now_ms, from).await {
            Ok(()) => Reply::signed(&key, &request, true, String::new()),
            Err(detail) => {
                warn!(%from, tunnel, "key exchange refused: {detail}");
                Reply::signed(&key, &request, false, detail)
            }
        })
    }

    /// Does what an authenticated request asks, or says why not.
    async fn carry_out(
        &self,
        request: &KeyChange,
        tunnel: &str,
        now_ms: u64,
        from: SocketAddr,
    ) -> std::result::Result<(), String> {
        let mgr = &self.manager;
        if mgr.store.rotation(tunnel).ok().flatten().is_some() {
            return Err("this end is rotating its own key; try again later".into());
        }
        let (old, new) = (request.from, request.to);
        if request.intent {
            let announced = Announcement {
                old,
                new,
                at_unix_ms: now_ms,
            };
            self.update_state(tunnel, |s| s.announced = Some(announced))
                .map_err(|e| e.to_string())?;
            info!(%from, tunnel, %old, %new, "peer announced a key rotation");
            return Ok(());
        }
        mgr.replace_peer_key(tunnel, old, new)
            .await
            .map_err(|e| e.to_string())?;
        info!(%from, tunnel, %old, %new, "peer key replaced on request");
        Ok(())
    }

    /// What this end trusts for the WireGuard tunnel whose own key is `own_public` (a
    /// request's `peer`).
    fn trust(&self, own_public: &PublicKey) -> std::result::Result<Trust, Refusal> {
        let mgr = &self.manager;
        for name in mgr.names().unwrap_or_default() {
            let Ok(spec) = mgr.spec(&name) else { continue };
            let TunnelKind::WireGuard(w) = &spec.kind else {
                continue;
            };
            let Ok(own) = mgr.device_key(&name, None) else {
                continue;
            };
            if own.public_key() != *own_public {
                continue;
            }
            let state = mgr.store.key_exchange(&name);
            let in_force = mgr.effective_peer_key(&name, w.peer.public_key);
            let (Ok(state), Ok(in_force)) = (state, in_force) else {
                warn!(
                    tunnel = name,
                    "key exchange: the tunnel's state is unreadable"
                );
                return Err(Refusal::UnknownTunnel);
            };
            return Ok(Trust {
                announced_other: state.announced.and_then(|a| a.other_than(in_force)),
                tunnel: name,
                own,
                in_force,
            });
        }
        Err(Refusal::UnknownTunnel)
    }

    /// Changes one tunnel's key-exchange state on disk.
    fn update_state<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut KeyExchangeState) -> T,
    ) -> Result<T> {
        let _one = self.state_lock.lock().expect("not poisoned");
        let mut state = self.manager.store.key_exchange(name)?;
        let out = change(&mut state);
        self.manager.store.set_key_exchange(name, &state)?;
        Ok(out)
    }
}

/// The rotating end's side: the peer's daemon at `address`.
pub struct RemotePeer<'a> {
    pub manager: &'a TunnelManager,
    pub tunnel: &'a str,
    pub address: SocketAddr,
}

impl RemotePeer<'_> {
    /// The peer's daemon for `tunnel`: its endpoint's address on `port`.
    pub fn for_tunnel<'a>(
        manager: &'a TunnelManager,
        tunnel: &'a str,
        port: u16,
    ) -> Result<RemotePeer<'a>> {
        let spec = manager.spec(tunnel)?;
        let w = wireguard_spec(&spec)?;
        let endpoint = w.peer.endpoint.ok_or_else(|| TunnelError::KeyExchange {
            detail: format!("{tunnel}'s peer has no endpoint: its daemon cannot be reached"),
        })?;
        Ok(RemotePeer {
            manager,
            tunnel,
            address: SocketAddr::new(endpoint.ip(), port),
        })
    }

    async fn exchange(&self, request: &KeyChange) -> Result<Reply> {
        let fail = |detail: String| TunnelError::KeyExchange {
            detail: format!("{}: {detail}", self.address),
        };
        let address = self.address;
        // The socket belongs to the tunnel's namespace (the underlay is there).
        let socket = self
            .manager
            .ns
            .run(move || -> std::io::Result<std::net::TcpStream> {
                let s = std::net::TcpStream::connect_timeout(&address, CONNECT_WAIT)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })?;
        let stream = TcpStream::from_std(socket.map_err(|e| fail(e.to_string()))?)
            .map_err(|e| fail(e.to_string()))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request).map_err(|e| fail(e.to_string()))?;
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut answer = String::new();
        let mut reader = BufReader::new(read.take(MAX_LINE));
        tokio::time::timeout(REPLY_WAIT, reader.read_line(&mut answer))
            .await
            .map_err(|_| fail(format!("no reply within {REPLY_WAIT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(answer.trim()).map_err(|e| fail(format!("malformed reply: {e}")))
    }

    async fn request(&self, old: PublicKey, new: PublicKey, intent: bool) -> Result<()> {
        let own = self.manager.own_key(self.tunnel, old)?;
        let peer = self.manager.peer_key_in_force(self.tunnel)?;
        let request = KeyChange::new(&own, new, peer, SystemTime::now(), intent);
        let reply = self.exchange(&request).await?;
        if !reply.verify(&mac_key(&own, &peer), &request) {
            return Err(TunnelError::KeyExchange {
                detail: format!(
                    "{}: unauthenticated reply ({})",
                    self.address,
                    if reply.detail.is_empty() {
                        "no detail"
                    } else {
                        reply.detail.as_str()
                    }
                ),
            });
        }
        if !reply.accepted {
            return Err(TunnelError::KeyExchange {
                detail: format!("{} refused: {}", self.address, reply.detail),
            });
        }
        Ok(())
    }
}

impl PeerKeyExchange for RemotePeer<'_> {
    async fn announce(&self, old: PublicKey, new: PublicKey) -> Result<()> {
        self.request(old, new, true).await
    }

    async fn replace_peer_key(&self, old: PublicKey, new: PublicKey) -> Result<()> {
        self.request(old, new, false).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use tokio::net::TcpSocket;

    use super::*;
    use crate::{ManagerConfig, TunnelsFile, WireGuardImpl};

    fn key() -> PrivateKey {
        PrivateKey::generate()
    }

    fn at(t: SystemTime, ms: u64) -> SystemTime {
        t + Duration::from_millis(ms)
    }

    #[test]
    fn a_request_verifies_only_with_its_key_and_unchanged() {
        let (r, p, other) = (key(), key(), key());
        let req = KeyChange::new(
            &r,
            key().public_key(),
            p.public_key(),
            SystemTime::now(),
            false,
        );
        let at_peer = mac_key(&p, &r.public_key());
        assert!(req.verify(&at_peer));
        assert!(
            !req.verify(&mac_key(&other, &r.public_key())),
            "another gateway's key verifies it"
        );
        let mut forged = req.clone();
        forged.to = other.public_key();
        assert!(!forged.verify(&at_peer), "a changed new key still verifies");
        let mut later = req.clone();
        later.sent_unix_ms += 1;
        assert!(
            !later.verify(&at_peer),
            "a changed send time still verifies"
        );
        let mut announced = req.clone();
        announced.intent = true;
        assert!(
            !announced.verify(&at_peer),
            "an intent made of a change still verifies"
        );
        let mut garbage = req.clone();
        garbage.mac = "zz".into();
        assert!(!garbage.verify(&at_peer));
    }

    #[test]
    fn a_reply_verifies_only_from_the_peer_and_for_its_request() {
        let (r, p) = (key(), key());
        let req = KeyChange::new(
            &r,
            key().public_key(),
            p.public_key(),
            SystemTime::now(),
            false,
        );
        let at_peer = mac_key(&p, &r.public_key());
        let at_rotating = mac_key(&r, &p.public_key());
        let reply = Reply::signed(&at_peer, &req, true, String::new());
        assert!(reply.verify(&at_rotating, &req));
        let mut flipped = reply.clone();
        flipped.accepted = false;
        assert!(!flipped.verify(&at_rotating, &req));
        let other = KeyChange::new(
            &r,
            key().public_key(),
            p.public_key(),
            SystemTime::now(),
            false,
        );
        assert!(
            !reply.verify(&at_rotating, &other),
            "a reply to another request"
        );
        let refused: Reply = serde_json::from_str(REFUSED).unwrap();
        assert!(!refused.accepted && !refused.verify(&at_rotating, &req));
        // What a reply serializes to: the rotating end reads REFUSED like any reply.
        let same = Reply {
            accepted: false,
            detail: "refused".into(),
            mac: String::new(),
        };
        assert_eq!(serde_json::to_string(&same).unwrap() + "\n", REFUSED);
    }

    /// B's trust for its tunnel to A, whose key in force is `a`.
    fn trust(b: &PrivateKey, a: PublicKey, announced_other: Option<PublicKey>) -> Trust {
        Trust {
            tunnel: "wg-b".into(),
            own: b.clone(),
            in_force: a,
            announced_other,
        }
    }

    #[test]
    fn the_mac_is_keyed_from_the_key_this_end_trusts_never_one_the_request_names() {
        let (a, b, attacker, next) = (key(), key(), key(), key());
        let now = SystemTime::now();
        let t = trust(&b, a.public_key(), None);
        let legit = KeyChange::new(&a, next.public_key(), b.public_key(), now, false);
        assert!(t.authenticate(&legit).is_ok());
        // A valid key pair of its own, named as `from`: its MAC is right, and refused.
        for to in [attacker.public_key(), a.public_key()] {
            let own_key = KeyChange::new(&attacker, to, b.public_key(), now, true);
            assert_eq!(t.authenticate(&own_key).err(), Some(Refusal::WrongKey));
        }
        let mut posing = KeyChange::new(&attacker, next.public_key(), b.public_key(), now, false);
        posing.from = a.public_key();
        assert_eq!(t.authenticate(&posing).err(), Some(Refusal::BadMac));
        // The announced key authenticates only a request for the key in force (a rollback).
        let t = trust(&b, a.public_key(), Some(next.public_key()));
        let rollback = KeyChange::new(&next, a.public_key(), b.public_key(), now, false);
        assert!(t.authenticate(&rollback).is_ok());
        let onwards = KeyChange::new(&next, attacker.public_key(), b.public_key(), now, false);
        assert_eq!(t.authenticate(&onwards).err(), Some(Refusal::WrongKey));
    }

    #[test]
    fn the_rate_limit_counts_ipv6_sources_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    /// A (the peer, its key in force), B (this end) and A's announced next key: fixed, so a
    /// failing case replays.
    fn gateways() -> (PrivateKey, PrivateKey, PrivateKey) {
        let k = |b| PrivateKey::from_bytes([b; 32]);
        (k(1), k(2), k(3))
    }

    fn b_trust() -> Trust {
        let (a, b, next) = gateways();
        trust(&b, a.public_key(), Some(next.public_key()))
    }

    /// A well-formed request with any keys (the three gateways' among them), send time and MAC.
    fn any_request() -> impl Strategy<Value = KeyChange> {
        let (a, b, next) = gateways();
        let known = vec![a.public_key(), b.public_key(), next.public_key()];
        let public = || {
            prop_oneof![
                proptest::sample::select(known.clone()),
                any::<[u8; 32]>().prop_map(PublicKey::from_bytes),
            ]
        };
        let mac = prop_oneof![any::<String>(), any::<[u8; 32]>().prop_map(|m| encode(&m))];
        (
            any::<bool>(),
            public(),
            public(),
            public(),
            any::<u64>(),
            mac,
        )
            .prop_map(|(intent, from, to, peer, sent_unix_ms, mac)| KeyChange {
                intent,
                from,
                to,
                peer,
                sent_unix_ms,
                mac,
            })
    }

    /// A request B accepts: from A's key in force, or a rollback from the announced one.
    fn valid_request() -> impl Strategy<Value = KeyChange> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<[u8; 32]>(),
            0..u64::from(u32::MAX) << 10,
        )
            .prop_map(|(rollback, intent, to, ms)| {
                let (a, b, next) = gateways();
                let sent = at(UNIX_EPOCH, ms);
                if rollback {
                    KeyChange::new(&next, a.public_key(), b.public_key(), sent, intent)
                } else {
                    KeyChange::new(&a, PublicKey::from_bytes(to), b.public_key(), sent, intent)
                }
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_never_accepted(
            line in proptest::collection::vec(any::<u8>(), 0..3000)
        ) {
            if let Ok(request) = KeyChange::parse(&line) {
                prop_assert!(b_trust().authenticate(&request).is_err());
            }
        }

        #[test]
        fn arbitrary_requests_are_never_accepted(request in any_request()) {
            let line = serde_json::to_vec(&request).unwrap();
            prop_assert_eq!(KeyChange::parse(&line), Ok(request.clone()));
            prop_assert!(b_trust().authenticate(&request).is_err());
        }

        #[test]
        fn valid_requests_round_trip(request in valid_request()) {
            let line = serde_json::to_string(&request).unwrap() + "\n";
            let parsed = KeyChange::parse(line.as_bytes()).unwrap();
            prop_assert_eq!(&parsed, &request);
            prop_assert!(b_trust().authenticate(&parsed).is_ok());
        }

        #[test]
        fn a_changed_byte_is_never_accepted(
            request in valid_request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut line = serde_json::to_vec(&request).unwrap();
            let i = at.index(line.len());
            prop_assume!(line[i] != byte);
            line[i] = byte;
            if let Ok(changed) = KeyChange::parse(&line) {
                prop_assert!(changed == request || b_trust().authenticate(&changed).is_err());
            }
        }
    }

    const TUNNEL: &str = "wg-b";

    /// Gateway B with a WireGuard tunnel to A (no device: requests that would touch one are
    /// not made here), in a temporary state directory.
    struct Receiver {
        dir: tempfile::TempDir,
        server: Arc<KeyExchangeServer>,
        /// B's key for the tunnel.
        own: PublicKey,
    }

    async fn server(dir: &Path, limits: ListenerLimits) -> Arc<KeyExchangeServer> {
        let config = ManagerConfig {
            wireguard: WireGuardImpl::Userspace {
                binary: "/nonexistent/wireguard-go".into(),
            },
            ..ManagerConfig::new(dir)
        };
        let mgr = TunnelManager::new(config).await.unwrap();
        KeyExchangeServer::new(Arc::new(mgr), limits)
    }

    impl Receiver {
        async fn new(a: PublicKey, limits: ListenerLimits) -> Receiver {
            let dir = tempfile::tempdir().unwrap();
            let server = server(dir.path(), limits).await;
            let text = format!(
                "[[tunnel]]\nname = \"{TUNNEL}\"\n[tunnel.wireguard]\nlisten_port = 51820\n\
                 [tunnel.wireguard.peer]\npublic_key = \"{a}\"\nallowed_ips = [\"10.0.0.0/8\"]\n"
            );
            let spec = TunnelsFile::parse(&text).unwrap().tunnels.remove(0);
            server.manager.store.write_spec(&spec).unwrap();
            let own = server.manager.public_key(TUNNEL).unwrap();
            Receiver { dir, server, own }
        }

        /// The same gateway after a restart: a new manager and server on the same state.
        async fn restarted(self) -> Receiver {
            let server = server(self.dir.path(), self.server.limits).await;
            Receiver { server, ..self }
        }

        async fn answer(&self, request: &KeyChange) -> std::result::Result<Reply, Refusal> {
            let line = serde_json::to_vec(request).unwrap();
            let from = SocketAddr::from(([192, 0, 2, 1], 40000));
            self.server.answer(&line, from).await
        }

        /// Serves on a loopback port.
        async fn listen(&self) -> SocketAddr {
            let listener = self.server.bind(([127, 0, 0, 1], 0).into()).await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(self.server.clone().serve(listener));
            address
        }
    }

    /// Loose enough that the tests of one limit do not trip over another.
    fn loose() -> ListenerLimits {
        ListenerLimits {
            per_source: Quota::per_second(NonZeroU32::MAX),
            ..Default::default()
        }
    }

    /// Whether `reply` is an acceptance B made for `request` of A's holder of `signer`.
    fn accepted_by(reply: &Reply, b: PublicKey, signer: &PrivateKey, request: &KeyChange) -> bool {
        reply.accepted && reply.verify(&mac_key(signer, &b), request)
    }

    #[tokio::test]
    async fn an_attacker_naming_its_own_key_is_refused_and_the_peer_is_not() {
        let (a, attacker) = (key(), key());
        let rx = Receiver::new(a.public_key(), loose()).await;
        let now = SystemTime::now();
        for (i, to) in [attacker.public_key(), a.public_key()]
            .into_iter()
            .enumerate()
        {
            let own_key = KeyChange::new(&attacker, to, rx.own, at(now, i as u64), true);
            assert_eq!(rx.answer(&own_key).await.err(), Some(Refusal::WrongKey));
        }
        let intent = KeyChange::new(&a, key().public_key(), rx.own, at(now, 5), true);
        let reply = rx.answer(&intent).await.unwrap();
        assert!(accepted_by(&reply, rx.own, &a, &intent), "{reply:?}");
    }

    #[tokio::test]
    async fn a_replay_is_refused_after_a_restart() {
        let a = key();
        let rx = Receiver::new(a.public_key(), loose()).await;
        let now = SystemTime::now();
        let first = KeyChange::new(&a, key().public_key(), rx.own, now, true);
        assert!(rx.answer(&first).await.unwrap().accepted);
        let rx = rx.restarted().await;
        assert_eq!(rx.answer(&first).await.err(), Some(Refusal::Replay));
        let older = KeyChange::new(&a, key().public_key(), rx.own, at(now, 0), true);
        assert_eq!(rx.answer(&older).await.err(), Some(Refusal::Replay));
        let newer = KeyChange::new(&a, key().public_key(), rx.own, at(now, 1), true);
        assert!(rx.answer(&newer).await.unwrap().accepted);
    }

    #[tokio::test]
    async fn a_rollback_is_authenticated_by_the_announced_key_only() {
        let (a, next, other) = (key(), key(), key());
        let rx = Receiver::new(a.public_key(), loose()).await;
        let now = SystemTime::now();
        let within = Duration::from_secs(30);
        assert!(!rx.server.peer_rotating(TUNNEL, within).unwrap());
        let intent = KeyChange::new(&a, next.public_key(), rx.own, now, true);
        assert!(rx.answer(&intent).await.unwrap().accepted);
        assert!(rx.server.peer_rotating(TUNNEL, within).unwrap());
        // The change never came here (B is still on `a`): the rollback changes nothing.
        let rollback = KeyChange::new(&next, a.public_key(), rx.own, at(now, 1), false);
        let reply = rx.answer(&rollback).await.unwrap();
        assert!(accepted_by(&reply, rx.own, &next, &rollback), "{reply:?}");
        let unannounced = KeyChange::new(&other, a.public_key(), rx.own, at(now, 2), false);
        assert_eq!(rx.answer(&unannounced).await.err(), Some(Refusal::WrongKey));
    }

    /// Sends `bytes` and the end of the stream from a connection of `source`, and reads until
    /// the server closes.
    async fn send(to: SocketAddr, source: [u8; 4], bytes: &[u8]) -> Vec<u8> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let mut stream = socket.connect(to).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut reply = Vec::new();
        let read = stream.read_to_end(&mut reply);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("closed in time")
            .expect("closed cleanly");
        reply
    }

    fn line(request: &KeyChange) -> Vec<u8> {
        serde_json::to_vec(request).unwrap()
    }

    #[tokio::test]
    async fn every_bad_request_gets_the_same_bytes_and_is_counted() {
        let (a, attacker) = (key(), key());
        let rx = Receiver::new(a.public_key(), loose()).await;
        let to = rx.listen().await;
        let now = SystemTime::now();
        let valid = KeyChange::new(&a, key().public_key(), rx.own, now, true);
        let mut posing = KeyChange::new(&attacker, key().public_key(), rx.own, now, true);
        posing.from = a.public_key();
        let an_hour_ago = now - Duration::from_secs(3600);
        let bad = [
            b"{\"intent\": tru".to_vec(),
            b"\xff\xfe\n".to_vec(),
            vec![b'{'; MAX_LINE as usize],
            Vec::new(),
            line(&KeyChange::new(
                &a,
                key().public_key(),
                key().public_key(),
                now,
                true,
            )),
            line(&KeyChange::new(
                &attacker,
                key().public_key(),
                rx.own,
                now,
                true,
            )),
            line(&posing),
            line(&KeyChange::new(
                &a,
                key().public_key(),
                rx.own,
                an_hour_ago,
                true,
            )),
        ];
        for bytes in &bad {
            let reply = send(to, [127, 0, 0, 1], bytes).await;
            assert_eq!(
                reply,
                REFUSED.as_bytes(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let accepted = send(to, [127, 0, 0, 1], &line(&valid)).await;
        assert_ne!(accepted, REFUSED.as_bytes());
        let replayed = send(to, [127, 0, 0, 1], &line(&valid)).await;
        assert_eq!(replayed, REFUSED.as_bytes());
        let counted = BTreeMap::from([
            (Refusal::Malformed, 4),
            (Refusal::Skew, 1),
            (Refusal::UnknownTunnel, 1),
            (Refusal::WrongKey, 1),
            (Refusal::BadMac, 1),
            (Refusal::Replay, 1),
        ]);
        assert_eq!(rx.server.refusals(), counted);
    }

    /// Whether the server closes `stream` (without a reply) within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(within, stream.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_at_once_and_the_served_ones_finish() {
        let a = key();
        let limits = ListenerLimits {
            max_connections: 2,
            request_wait: Duration::from_secs(10),
            ..loose()
        };
        let rx = Receiver::new(a.public_key(), limits).await;
        let to = rx.listen().await;
        let mut good = TcpStream::connect(to).await.unwrap();
        let _idle = TcpStream::connect(to).await.unwrap();
        // Both have their slots once the server has seen them (it counts nothing for them).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        for _ in 0..20 {
            let mut excess = TcpStream::connect(to).await.unwrap();
            assert!(closed_within(&mut excess, Duration::from_secs(1)).await);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let request = KeyChange::new(&a, key().public_key(), rx.own, SystemTime::now(), true);
        good.write_all(&line(&request)).await.unwrap();
        good.write_all(b"\n").await.unwrap();
        let mut reply = Vec::new();
        good.read_to_end(&mut reply).await.unwrap();
        let reply: Reply = serde_json::from_slice(&reply).unwrap();
        assert!(accepted_by(&reply, rx.own, &a, &request), "{reply:?}");
        assert_eq!(rx.server.refusals(), BTreeMap::from([(Refusal::Busy, 20)]));
    }

    #[tokio::test]
    async fn a_client_that_stalls_mid_line_is_dropped_after_the_wait() {
        let a = key();
        let limits = ListenerLimits {
            max_connections: 1,
            request_wait: Duration::from_millis(300),
            ..loose()
        };
        let rx = Receiver::new(a.public_key(), limits).await;
        let to = rx.listen().await;
        let request = KeyChange::new(&a, key().public_key(), rx.own, SystemTime::now(), true);
        let whole = line(&request);
        let mut slow = TcpStream::connect(to).await.unwrap();
        slow.write_all(&whole[..whole.len() / 2]).await.unwrap();
        let started = std::time::Instant::now();
        assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Its slot is free again.
        let reply = send(to, [127, 0, 0, 1], &whole).await;
        let reply: Reply = serde_json::from_slice(&reply).unwrap();
        assert!(accepted_by(&reply, rx.own, &a, &request), "{reply:?}");
        assert_eq!(
            rx.server.refusals(),
            BTreeMap::from([(Refusal::Timeout, 1)])
        );
    }

    #[tokio::test]
    async fn a_source_over_its_rate_is_closed_unread_and_others_are_served() {
        let limits = ListenerLimits {
            per_source: Quota::with_period(Duration::from_secs(3600))
                .unwrap()
                .allow_burst(NonZeroU32::new(2).unwrap()),
            ..Default::default()
        };
        let rx = Receiver::new(key().public_key(), limits).await;
        let to = rx.listen().await;
        for _ in 0..2 {
            assert_eq!(send(to, [127, 0, 0, 1], b"x\n").await, REFUSED.as_bytes());
        }
        assert_eq!(send(to, [127, 0, 0, 1], b"").await, b"");
        assert_eq!(send(to, [127, 0, 0, 2], b"x\n").await, REFUSED.as_bytes());
        let counted = BTreeMap::from([(Refusal::RateLimited, 1), (Refusal::Malformed, 3)]);
        assert_eq!(rx.server.refusals(), counted);
    }
}
