//! The kernel's view of interfaces, addresses and neighbours, over rtnetlink: a dump at start,
//! then the multicast groups RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_NEIGH, turned into
//! [`Input`]s. An underlay
//! interface going down reaches the state owner as soon as the kernel says so, without
//! waiting for the probes to time out.
use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkFlags, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        AddressFamily, RouteNetlinkMessage,
    },
    MulticastGroup,
};
use thiserror::Error;
use tokio::sync::mpsc;

use dwcp_control::{config::Mac, input::Input};

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("opening the rtnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("dumping {what}: {source}")]
    Dump {
        what: &'static str,
        source: rtnetlink::Error,
    },
}

/// What an interface message says, if it names an interface.
pub fn interface_input(msg: &LinkMessage) -> Option<Input> {
    let mut name = None;
    let mut mac = Mac::default();
    let mut mtu = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(b) if b.len() == 6 => {
                mac = Mac(b.as_slice().try_into().expect("6 bytes"))
            }
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    let flags = msg.header.flags;
    // Administratively up and with carrier: what "up" means for sending on it.
    let up = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp);
    Some(Input::Interface {
        name: name?,
        ifindex: msg.header.index,
        up,
        mac,
        mtu,
    })
}

fn interface_gone(msg: &LinkMessage) -> Option<Input> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(Input::InterfaceGone { name: n.clone() }),
        _ => None,
    })
}

/// What a neighbour message says about an IPv4 neighbour; `deleted` for RTM_DELNEIGH.
pub fn neighbour_input(msg: &NeighbourMessage, deleted: bool) -> Option<Input> {
    let mut ip = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                mac = Some(Mac(b.as_slice().try_into().expect("6 bytes")))
            }
            _ => {}
        }
    }
    let usable = matches!(
        msg.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    // A stale entry still has the right MAC (the kernel re-confirms it while it is used);
    // only failed, incomplete or deleted entries withdraw it.
    Some(Input::Neighbour {
        ifindex: msg.header.ifindex,
        ip: ip?,
        mac: if deleted || !usable { None } else { mac },
    })
}

/// What an address message says: the interface's local address (IFA_LOCAL, else IFA_ADDRESS).
pub fn address_input(msg: &AddressMessage, present: bool) -> Option<Input> {
    let mut address = None;
    let mut local = None;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    Some(Input::Address {
        ifindex: msg.header.index,
        ip: local.or(address)?,
        present,
    })
}

/// A subscription to interface, address and neighbour changes. Create it, take the initial dump, then
/// run it to forward the changes.
pub struct NetlinkWatcher {
    handle: rtnetlink::Handle,
    messages: futures::channel::mpsc::UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    connection: tokio::task::JoinHandle<()>,
}

impl NetlinkWatcher {
    /// Subscribes (before the dump, so no change between the two is missed). Must run inside
    /// a tokio runtime, in the network namespace to watch.
    pub fn subscribe() -> Result<NetlinkWatcher, NetlinkError> {
        let (connection, handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Neigh,
        ])
        .map_err(NetlinkError::Socket)?;
        let connection = tokio::spawn(connection);
        Ok(NetlinkWatcher {
            handle,
            messages,
            connection,
        })
    }

    /// Every interface and IPv4 neighbour as it is now.
    pub async fn dump(&self) -> Result<Vec<Input>, NetlinkError> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|source| NetlinkError::Dump {
                what: "interfaces",
                source,
            })?
        {
            out.extend(interface_input(&msg));
        }
        let mut addresses = self.handle.address().get().execute();
        while let Some(msg) = addresses
            .try_next()
            .await
            .map_err(|source| NetlinkError::Dump {
                what: "addresses",
                source,
            })?
        {
            out.extend(address_input(&msg, true));
        }
        let mut neigh = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = neigh
            .try_next()
            .await
            .map_err(|source| NetlinkError::Dump {
                what: "neighbours",
                source,
            })?
        {
            out.extend(neighbour_input(&msg, false));
        }
        Ok(out)
    }

    /// Forwards every change as an input until the receiver is dropped.
    pub async fn run(mut self, tx: mpsc::Sender<Input>) {
        use futures::StreamExt;
        while let Some((msg, _)) = self.messages.next().await {
            let input = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    interface_input(&m)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => interface_gone(&m),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                    address_input(&m, true)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                    address_input(&m, false)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => {
                    neighbour_input(&m, false)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => {
                    neighbour_input(&m, true)
                }
                _ => None,
            };
            if let Some(input) = input {
                if tx.send(input).await.is_err() {
                    break;
                }
            }
        }
        self.connection.abort();
    }
}
