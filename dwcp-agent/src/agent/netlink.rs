//! The kernel's view of interfaces, addresses and neighbours, over rtnetlink: a dump at start,
//! then the multicast groups RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_NEIGH, turned into
//! [`Input`]s. An underlay
//! interface going down reaches the state owner as soon as the kernel says so, without
//! waiting for the probes to time out.
//!
//! The kernel does not wait for a subscriber: when the socket's receive buffer is full it
//! drops notifications and the next read fails with ENOBUFS (netlink-proto hands that on as
//! an overrun message). The watcher then dumps everything again, on a connection of its own
//! (the subscription's buffer may still be full), and [`KernelObjects::resync`] turns the dump
//! into inputs, withdrawals included: a neighbour whose MAC changed during the overrun is
//! never left with the old one.
use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkFlags, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        AddressFamily, RouteNetlinkMessage,
    },
    sys::AsyncSocket,
    MulticastGroup,
};
use std::{os::fd::AsRawFd, time::Duration};

use thiserror::Error;
use tokio::sync::mpsc;
use tracing::warn;

use dwcp_control::{
    config::Mac,
    input::{Input, KernelObjects},
};

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

/// What one notification of the subscription means.
#[derive(Debug, PartialEq)]
pub enum Notification {
    /// A change to forward.
    Change(Input),
    /// Notifications were lost: dump everything again.
    Overrun,
    /// Nothing the state owner needs.
    Ignored,
}

/// Reads one message of the subscription.
pub fn notification(msg: NetlinkMessage<RouteNetlinkMessage>) -> Notification {
    let input = match msg.payload {
        NetlinkPayload::Overrun(_) => return Notification::Overrun,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => interface_input(&m),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => interface_gone(&m),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => address_input(&m, true),
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
    input.map_or(Notification::Ignored, Notification::Change)
}

/// A subscription to interface, address and neighbour changes. Create it, take the initial
/// dump, then run it to forward the changes.
pub struct NetlinkWatcher {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    connection: tokio::task::JoinHandle<()>,
    /// What has been forwarded, for the withdrawals of a re-dump.
    known: KernelObjects,
}

impl NetlinkWatcher {
    /// Subscribes (before the dump, so no change between the two is missed) with a receive
    /// buffer of `receive_buffer` bytes. Must run inside a tokio runtime, in the network
    /// namespace to watch.
    pub fn subscribe(receive_buffer: usize) -> Result<NetlinkWatcher, NetlinkError> {
        let (mut connection, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Neigh,
        ])
        .map_err(NetlinkError::Socket)?;
        let fd = connection.socket_mut().socket_mut().as_raw_fd();
        if let Err(e) = set_receive_buffer(fd, receive_buffer) {
            warn!(receive_buffer, "netlink receive buffer not set: {e}");
        }
        Ok(NetlinkWatcher {
            messages,
            connection: tokio::spawn(connection),
            known: KernelObjects::default(),
        })
    }

    /// Every interface, address and IPv4 neighbour as it is now, with the withdrawal of what
    /// was forwarded before and is gone (see [`KernelObjects::resync`]).
    pub async fn dump(&mut self) -> Result<Vec<Input>, NetlinkError> {
        let dump = dump_all().await?;
        Ok(self.known.resync(dump))
    }

    /// Forwards every change as an input until the receiver is dropped; after an overrun,
    /// what a new dump says.
    pub async fn run(mut self, tx: mpsc::Sender<Input>) {
        use futures::StreamExt;
        while let Some((msg, _)) = self.messages.next().await {
            let inputs = match notification(msg) {
                Notification::Change(input) => {
                    self.known.note(&input);
                    vec![input]
                }
                Notification::Overrun => {
                    warn!("netlink notifications were lost (receive buffer overrun): dumping interfaces, addresses and neighbours again");
                    self.redump().await
                }
                Notification::Ignored => continue,
            };
            for input in inputs {
                if tx.send(input).await.is_err() {
                    self.connection.abort();
                    return;
                }
            }
        }
        self.connection.abort();
    }

    /// A dump, retried until it succeeds: without it the state owner's view stays stale.
    async fn redump(&mut self) -> Vec<Input> {
        loop {
            match self.dump().await {
                Ok(inputs) => return inputs,
                Err(e) => {
                    warn!("netlink dump after an overrun failed, retrying in 1 s: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Every interface, address and IPv4 neighbour, read on a connection of its own.
async fn dump_all() -> Result<Vec<Input>, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    let connection = tokio::spawn(connection);
    let dumped = dump_with(&handle).await;
    connection.abort();
    dumped
}

async fn dump_with(handle: &rtnetlink::Handle) -> Result<Vec<Input>, NetlinkError> {
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
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
    let mut addresses = handle.address().get().execute();
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
    let mut neigh = handle
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

/// SO_RCVBUFFORCE (the agent has CAP_NET_ADMIN; `net.core.rmem_max` would cap SO_RCVBUF),
/// else SO_RCVBUF.
fn set_receive_buffer(fd: std::os::fd::RawFd, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: an open socket and a c_int option value of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) == 0 || set(libc::SO_RCVBUF) == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{NetlinkHeader, NLMSG_OVERRUN};

    #[test]
    fn an_overrun_asks_for_a_dump_and_a_neighbour_change_is_forwarded() {
        // What netlink-proto hands on when a read fails with ENOBUFS.
        let mut header = NetlinkHeader::default();
        header.message_type = NLMSG_OVERRUN;
        let overrun = NetlinkMessage::new(header, NetlinkPayload::Overrun(Vec::new()));
        assert_eq!(notification(overrun), Notification::Overrun);

        let mut neighbour = NeighbourMessage::default();
        neighbour.header.ifindex = 3;
        neighbour.header.state = NeighbourState::Reachable;
        neighbour.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet([10, 0, 0, 2].into())),
            NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]),
        ];
        let msg = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(neighbour));
        assert_eq!(
            notification(msg),
            Notification::Change(Input::Neighbour {
                ifindex: 3,
                ip: [10, 0, 0, 2].into(),
                mac: Some(Mac([2, 0, 0, 0, 0, 9])),
            })
        );
        let done = NetlinkMessage::<RouteNetlinkMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Done(Default::default()),
        );
        assert_eq!(notification(done), Notification::Ignored);
    }
}
