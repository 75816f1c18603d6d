//! Step 3 of a key rotation between hosts: the rotating gateway tells the peer gateway's
//! tunnel daemon (`dwcp-tunnels run`) its new key, over the underlay (TCP, one JSON line each
//! way, to the peer endpoint's address on the key-exchange port).
//!
//! Authenticated with what both ends already hold: the x25519 shared secret of the key the
//! peer trusts now (the rotating end's current key; for a rollback, the new one) and the
//! peer's own key — the static-static secret WireGuard's handshake also rests on. The message
//! names both keys and the peer's, carries its send time (refused when more than 60 s off or
//! not newer than the last accepted one: no replay) and an HMAC-SHA256 keyed from that secret;
//! the reply carries one over the request's, so the rotating end knows it was the peer that
//! took the key. Nothing on the wire is secret: public keys and MACs only.
//!
//! The peer answers once its new entry has had the handshake (or after its retire wait), as
//! [`super::rotation::LocalPeer`] does in one process; the rotating end waits meanwhile and
//! re-initiates should the handshake not come (see `rotation`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tracing::{info, warn};

use super::{
    error::{Result, TunnelError},
    rotation::{wireguard_spec, PeerKeyExchange},
    spec::TunnelKind,
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

type HmacSha256 = Hmac<Sha256>;

/// "The key `from` is replaced by `to`", addressed to the gateway whose key is `peer`.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Over the request's MAC; empty when the request could not be authenticated.
    pub mac: String,
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
            sent_unix_ms: sent
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            mac: String::new(),
        };
        let mut mac = mac_key(own, &peer);
        m.signed_part(&mut mac);
        m.mac = encode(&mac.finalize().into_bytes());
        m
    }

    /// Whether the holder of `from`'s private key made this request for `own`'s holder.
    fn verify(&self, own: &PrivateKey) -> bool {
        let Some(tag) = decode(&self.mac) else {
            return false;
        };
        let mut mac = mac_key(own, &self.from);
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

    fn unsigned(detail: impl Into<String>) -> Reply {
        Reply {
            accepted: false,
            detail: detail.into(),
            mac: String::new(),
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

/// The peer end: answers key changes for the tunnels of `manager`.
pub struct KeyExchangeServer {
    manager: Arc<TunnelManager>,
    /// Per tunnel, the send time of the last accepted request.
    last_accepted: Mutex<HashMap<String, u64>>,
    /// Per tunnel, when the peer last announced a rotation.
    intents: Mutex<HashMap<String, std::time::Instant>>,
}

impl KeyExchangeServer {
    pub fn new(manager: Arc<TunnelManager>) -> Arc<KeyExchangeServer> {
        Arc::new(KeyExchangeServer {
            manager,
            last_accepted: Mutex::new(HashMap::new()),
            intents: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the peer of `tunnel` announced a rotation within `within`: this end should not
    /// start its own meanwhile.
    pub fn peer_rotating(&self, tunnel: &str, within: Duration) -> bool {
        self.intents
            .lock()
            .expect("not poisoned")
            .get(tunnel)
            .is_some_and(|t| t.elapsed() < within)
    }

    /// Binds `port` on every address of the manager's namespace.
    pub async fn bind(&self, port: u16) -> Result<TcpListener> {
        // Bound on a thread inside the namespace; registered with the runtime out here.
        let bound = self.manager.ns.run(|| {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })?;
        bound
            .and_then(TcpListener::from_std)
            .map_err(|e| TunnelError::KeyExchange {
                detail: format!("cannot listen on port {port}: {e}"),
            })
    }

    /// Serves connections until the listener fails; each in its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        loop {
            let (stream, from) = listener
                .accept()
                .await
                .map_err(|e| TunnelError::KeyExchange {
                    detail: format!("accept: {e}"),
                })?;
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.connection(stream, from).await {
                    warn!(%from, "key exchange: {e}");
                }
            });
        }
    }

    async fn connection(&self, stream: TcpStream, from: SocketAddr) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_LINE));
        tokio::time::timeout(CONNECT_WAIT, reader.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("no request within 3 s"))??;
        let reply = match serde_json::from_str::<KeyChange>(line.trim()) {
            Ok(request) => self.answer(&request, from).await,
            Err(e) => Reply::unsigned(format!("malformed request: {e}")),
        };
        let mut out = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
        out.push('\n');
        write.write_all(out.as_bytes()).await
    }

    /// Checks and carries out one request.
    pub async fn answer(&self, request: &KeyChange, from: SocketAddr) -> Reply {
        let mgr = &self.manager;
        // The tunnel: this end's key is `peer`, the key in force for the other end `from`
        // (or already `to`: a repeated request).
        let mut found = None;
        for name in mgr.names().unwrap_or_default() {
            let Ok(spec) = mgr.spec(&name) else { continue };
            let TunnelKind::WireGuard(w) = &spec.kind else {
                continue;
            };
            let Ok(own) = mgr.device_key(&name, None) else {
                continue;
            };
            let Ok(in_force) = mgr.effective_peer_key(&name, w.peer.public_key) else {
                continue;
            };
            if own.public_key() == request.peer
                && (in_force == request.from || in_force == request.to)
            {
                found = Some((name, own));
                break;
            }
        }
        let Some((name, own)) = found else {
            warn!(%from, key = %request.from, "key exchange: no tunnel with this peer key");
            return Reply::unsigned("no tunnel here has that peer key");
        };
        if !request.verify(&own) {
            warn!(%from, tunnel = name, "key exchange: bad MAC, refused");
            return Reply::unsigned("bad MAC");
        }
        let key = mac_key(&own, &request.from);
        let refuse = |detail: String| {
            warn!(%from, tunnel = name, "key exchange refused: {detail}");
            Reply::signed(&key, request, false, detail)
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        if now_ms.abs_diff(request.sent_unix_ms) > MAX_SKEW.as_millis() as u64 {
            return refuse(format!(
                "sent {} ms from this clock (more than {} s)",
                now_ms as i128 - request.sent_unix_ms as i128,
                MAX_SKEW.as_secs()
            ));
        }
        {
            let mut last = self.last_accepted.lock().expect("not poisoned");
            if last.get(&name).is_some_and(|&t| request.sent_unix_ms <= t) {
                return refuse("not newer than the last accepted request (a replay?)".into());
            }
            last.insert(name.clone(), request.sent_unix_ms);
        }
        if mgr.store.rotation(&name).ok().flatten().is_some() {
            return refuse("this end is rotating its own key; try again later".into());
        }
        if request.intent {
            self.intents
                .lock()
                .expect("not poisoned")
                .insert(name.clone(), std::time::Instant::now());
            info!(%from, tunnel = name, old = %request.from, new = %request.to, "peer announced a key rotation");
            return Reply::signed(&key, request, true, String::new());
        }
        // The announced change has come: this end may rotate its own key again after it.
        self.intents.lock().expect("not poisoned").remove(&name);
        match mgr.replace_peer_key(&name, request.from, request.to).await {
            Ok(()) => {
                info!(%from, tunnel = name, old = %request.from, new = %request.to, "peer key replaced on request");
                Reply::signed(&key, request, true, String::new())
            }
            Err(e) => refuse(e.to_string()),
        }
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
    use super::*;

    #[test]
    fn a_request_verifies_only_for_its_peer_and_unchanged() {
        let (r, p, other) = (
            PrivateKey::generate(),
            PrivateKey::generate(),
            PrivateKey::generate(),
        );
        let new = PrivateKey::generate().public_key();
        let req = KeyChange::new(&r, new, p.public_key(), SystemTime::now(), false);
        assert!(req.verify(&p));
        assert!(!req.verify(&other), "another gateway's key verifies it");
        let mut forged = req.clone();
        forged.to = other.public_key();
        assert!(!forged.verify(&p), "a changed new key still verifies");
        let mut later = req.clone();
        later.sent_unix_ms += 1;
        assert!(!later.verify(&p), "a changed send time still verifies");
        let mut announced = req.clone();
        announced.intent = true;
        assert!(
            !announced.verify(&p),
            "an intent made of a change still verifies"
        );
        let mut garbage = req.clone();
        garbage.mac = "zz".into();
        assert!(!garbage.verify(&p));
    }

    #[test]
    fn a_reply_verifies_only_from_the_peer_and_for_its_request() {
        let (r, p) = (PrivateKey::generate(), PrivateKey::generate());
        let req = KeyChange::new(
            &r,
            PrivateKey::generate().public_key(),
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
            PrivateKey::generate().public_key(),
            p.public_key(),
            SystemTime::now(),
            false,
        );
        assert!(
            !reply.verify(&at_rotating, &other),
            "a reply to another request"
        );
        assert!(!Reply::unsigned("bad MAC").verify(&at_rotating, &req));
    }
}
