//! The kernel WireGuard module, driven through its generic netlink family `wireguard`
//! (`WG_CMD_GET_DEVICE` / `WG_CMD_SET_DEVICE`, the interface `wg(8)` uses).
//!
//! NOT TESTED against a kernel: the development machine's kernel has no WireGuard module, so
//! only the message construction and parsing are unit-tested here. `detect` picks this backend
//! only where the family resolves.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use genetlink::GenetlinkHandle;
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use rtnetlink::LinkWireguard;

use super::{DeviceStatus, DeviceUpdate, PeerStatus, PresharedKey, PrivateKey, PublicKey};
use crate::{
    error::{Result, TunnelError},
    netns::NetnsTarget,
    rtnl::Rtnl,
    spec::TunnelType,
};

#[derive(Debug)]
pub struct KernelWireGuard {
    genl: GenetlinkHandle,
    rtnl: Rtnl,
}

impl KernelWireGuard {
    /// Connects inside `ns`; `None` when the kernel has no `wireguard` family.
    pub async fn connect(ns: &NetnsTarget, rtnl: Rtnl) -> Result<Option<KernelWireGuard>> {
        let rt = tokio::runtime::Handle::current();
        let (conn, genl, _) = ns
            .run(move || {
                let _guard = rt.enter();
                genetlink::new_connection()
            })?
            .map_err(|e| TunnelError::Command {
                cmd: "open generic netlink socket".into(),
                detail: e.to_string(),
            })?;
        tokio::spawn(conn);
        match genl.resolve_family::<WireguardMessage>().await {
            Ok(_) => Ok(Some(KernelWireGuard { genl, rtnl })),
            Err(_) => Ok(None),
        }
    }

    pub async fn create(&self, ifname: &str) -> Result<()> {
        if let Some(link) = self.rtnl.link(ifname).await? {
            if link.kind_name() == "wireguard" {
                return Ok(());
            }
        }
        if !self
            .rtnl
            .add_link(LinkWireguard::new(ifname).build(), ifname)
            .await?
        {
            return Err(TunnelError::KernelUnsupported {
                kind: TunnelType::WireGuard,
                detail: "the kernel refused link kind `wireguard`".into(),
            });
        }
        Ok(())
    }

    async fn request(
        &self,
        ifname: &str,
        msg: WireguardMessage,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>> {
        let mut nlmsg = NetlinkMessage::from(GenlMessage::from_payload(msg));
        nlmsg.header.flags = flags;
        let mut genl = self.genl.clone();
        let mut responses = genl
            .request(nlmsg)
            .await
            .map_err(|e| TunnelError::wg(ifname, format!("generic netlink request: {e}")))?;
        let mut out = Vec::new();
        while let Some(answer) = responses.next().await {
            let answer =
                answer.map_err(|e| TunnelError::wg(ifname, format!("undecodable answer: {e}")))?;
            match answer.payload {
                NetlinkPayload::InnerMessage(genlmsg) => out.push(genlmsg.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    let errno = -e.raw_code();
                    if errno == libc::ENODEV {
                        return Err(TunnelError::wg(ifname, "no such device"));
                    }
                    return Err(TunnelError::wg(
                        ifname,
                        format!("kernel refused: {}", e.to_io()),
                    ));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    pub async fn get(&self, ifname: &str) -> Result<Option<DeviceStatus>> {
        match self.rtnl.link(ifname).await? {
            Some(link) if link.kind_name() == "wireguard" => {}
            _ => return Ok(None),
        }
        let msg = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
        };
        let parts = self
            .request(ifname, msg, NLM_F_REQUEST | NLM_F_DUMP)
            .await?;
        Ok(Some(parse_device(parts)))
    }

    pub async fn set(&self, ifname: &str, update: &DeviceUpdate) -> Result<()> {
        self.request(
            ifname,
            encode_set(ifname, update),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
        .map(|_| ())
    }

    pub async fn delete(&self, ifname: &str) -> Result<()> {
        if let Some(link) = self.rtnl.link(ifname).await? {
            self.rtnl.delete_link(link.index, ifname).await?;
        }
        Ok(())
    }
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = if net.addr().is_ipv4() {
        WireguardAddressFamily::Ipv4
    } else {
        WireguardAddressFamily::Ipv6
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// `WG_CMD_SET_DEVICE` for an update. Large updates would need splitting across messages;
/// a tunnel has one peer, far below the limit.
pub(crate) fn encode_set(ifname: &str, u: &DeviceUpdate) -> WireguardMessage {
    let mut attributes = vec![WireguardAttribute::IfName(ifname.to_string())];
    if let Some(k) = &u.private_key {
        attributes.push(WireguardAttribute::PrivateKey(*k.expose()));
    }
    if let Some(p) = u.listen_port {
        attributes.push(WireguardAttribute::ListenPort(p));
    }
    if let Some(m) = u.fwmark {
        attributes.push(WireguardAttribute::Fwmark(m));
    }
    let peers: Vec<WireguardPeer> = u
        .peers
        .iter()
        .map(|p| {
            let mut attrs = vec![WireguardPeerAttribute::PublicKey(*p.public_key.as_bytes())];
            let mut flags = WireguardPeerFlags::empty();
            if p.remove {
                flags |= WireguardPeerFlags::RemoveMe;
            }
            if let Some(psk) = &p.preshared_key {
                attrs.push(WireguardPeerAttribute::PresharedKey(*psk.expose()));
            }
            if let Some(e) = p.endpoint {
                attrs.push(WireguardPeerAttribute::Endpoint(e));
            }
            if let Some(k) = p.persistent_keepalive {
                attrs.push(WireguardPeerAttribute::PersistentKeepalive(k));
            }
            if let Some(ips) = &p.allowed_ips {
                flags |= WireguardPeerFlags::ReplaceAllowedIps;
                attrs.push(WireguardPeerAttribute::AllowedIps(
                    ips.iter().map(allowed_ip).collect(),
                ));
            }
            if !flags.is_empty() {
                attrs.push(WireguardPeerAttribute::Flags(flags));
            }
            WireguardPeer(attrs)
        })
        .collect();
    if !peers.is_empty() {
        attributes.push(WireguardAttribute::Peers(peers));
    }
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    }
}

/// Merges the messages of a `WG_CMD_GET_DEVICE` dump (a peer's allowed IPs may continue in
/// the next message).
pub(crate) fn parse_device(parts: Vec<WireguardMessage>) -> DeviceStatus {
    let mut dev = DeviceStatus::default();
    for part in parts {
        for attr in part.attributes {
            match attr {
                WireguardAttribute::PrivateKey(k) if k.iter().any(|b| *b != 0) => {
                    dev.public_key = Some(PrivateKey::from_bytes(k).public_key());
                }
                WireguardAttribute::ListenPort(p) => dev.listen_port = p,
                WireguardAttribute::Fwmark(m) => dev.fwmark = m,
                WireguardAttribute::Peers(peers) => {
                    for WireguardPeer(attrs) in peers {
                        merge_peer(&mut dev, attrs);
                    }
                }
                _ => {}
            }
        }
    }
    dev
}

fn merge_peer(dev: &mut DeviceStatus, attrs: Vec<WireguardPeerAttribute>) {
    let Some(key) = attrs.iter().find_map(|a| match a {
        WireguardPeerAttribute::PublicKey(k) => Some(PublicKey::from_bytes(*k)),
        _ => None,
    }) else {
        return;
    };
    if dev.peer(&key).is_none() {
        dev.peers.push(PeerStatus::new(key));
    }
    let peer = dev
        .peers
        .iter_mut()
        .find(|p| p.public_key == key)
        .expect("just added");
    for attr in attrs {
        match attr {
            WireguardPeerAttribute::PresharedKey(k) => {
                let k = PresharedKey::from_bytes(k);
                peer.preshared_key = (!k.is_zero()).then_some(k);
            }
            WireguardPeerAttribute::Endpoint(e) => peer.endpoint = Some(e),
            WireguardPeerAttribute::PersistentKeepalive(k) => {
                peer.persistent_keepalive = (k != 0).then_some(k)
            }
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 || t.nano_seconds > 0 => {
                peer.last_handshake = Some(
                    SystemTime::UNIX_EPOCH
                        + Duration::new(
                            t.seconds.max(0) as u64,
                            t.nano_seconds.clamp(0, 999_999_999) as u32,
                        ),
                );
            }
            WireguardPeerAttribute::RxBytes(b) => peer.rx_bytes = b,
            WireguardPeerAttribute::TxBytes(b) => peer.tx_bytes = b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for WireguardAllowedIp(nlas) in ips {
                    let addr = nlas.iter().find_map(|n| match n {
                        WireguardAllowedIpAttr::IpAddr(a) => Some(*a),
                        _ => None,
                    });
                    let cidr = nlas.iter().find_map(|n| match n {
                        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
                        _ => None,
                    });
                    if let (Some(a), Some(c)) = (addr, cidr) {
                        if let Ok(net) = IpNet::new(a, c) {
                            peer.allowed_ips.push(net);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::{plan, DeviceConfig, PeerConfig};

    /// What `encode_set` sends, read back with the dump parser, gives the configured device:
    /// the two halves agree on attribute meanings.
    #[test]
    fn set_message_reads_back_as_the_configured_device() {
        let sk = PrivateKey::from_bytes([7; 32]);
        let peer = PeerConfig {
            public_key: PublicKey::from_bytes([9; 32]),
            preshared_key: Some(PresharedKey::from_bytes([3; 32])),
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            persistent_keepalive: Some(25),
            allowed_ips: vec!["10.9.0.0/24".parse().unwrap()],
        };
        let want = DeviceConfig {
            private_key: sk.clone(),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![peer.clone()],
        };
        let update = plan(&DeviceStatus::default(), &want);
        let msg = encode_set("wg0", &update);
        assert_eq!(msg.cmd, WireguardCmd::SetDevice);
        let dev = parse_device(vec![msg]);
        assert_eq!(dev.public_key, Some(sk.public_key()));
        assert_eq!(dev.listen_port, 51820);
        let p = dev.peer(&peer.public_key).unwrap();
        assert_eq!(p.preshared_key, peer.preshared_key);
        assert_eq!(p.endpoint, peer.endpoint);
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!(p.allowed_ips, peer.allowed_ips);
    }
}
