//! The rtnetlink operations tunnel management needs, on a connection bound to one network
//! namespace. Errors name the device or object they are about.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressScope},
        link::{InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAttribute, RouteMessage, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
    Handle, IpVersion, LinkUnspec, RouteMessageBuilder,
};

use super::{
    error::{netlink_errno, Result, TunnelError},
    netns::NetnsTarget,
};

/// What the manager reads back from a link.
#[derive(Clone, Debug)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub data: Option<InfoData>,
    pub mtu: u32,
    pub up: bool,
    pub lower_up: bool,
}

impl LinkState {
    fn from_message(msg: LinkMessage) -> LinkState {
        let mut s = LinkState {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            data: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => s.name = n,
                LinkAttribute::Mtu(m) => s.mtu = m,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => s.kind = Some(k),
                            LinkInfo::Data(d) => s.data = Some(d),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// The link kind as `ip -d link` names it.
    pub fn kind_name(&self) -> String {
        self.kind
            .as_ref()
            .map(|k| k.to_string())
            .unwrap_or_else(|| "kind-less".to_string())
    }
}

/// One rtnetlink connection inside a namespace.
#[derive(Clone, Debug)]
pub struct Rtnl {
    handle: Handle,
}

fn nl(op: &'static str, object: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> TunnelError {
    let object = object.into();
    move |source| TunnelError::Netlink { op, object, source }
}

impl Rtnl {
    /// Opens a connection inside `ns` and drives it on the current tokio runtime.
    pub async fn connect(ns: &NetnsTarget) -> Result<Rtnl> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns
            .run(move || {
                // The socket registers with the runtime's reactor when it is created.
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| TunnelError::Command {
                cmd: "open rtnetlink socket".into(),
                detail: e.to_string(),
            })?;
        tokio::spawn(conn);
        Ok(Rtnl { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkState>> {
        let req = self.handle.link().get().match_name(name.to_string());
        match req.execute().try_next().await {
            Ok(msg) => Ok(msg.map(LinkState::from_message)),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl("get link", name)(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>> {
        let req = self.handle.link().get().match_index(index);
        match req.execute().try_next().await {
            Ok(msg) => Ok(msg.map(LinkState::from_message)),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl("get link", format!("index {index}"))(e)),
        }
    }

    /// Creates a link; `EOPNOTSUPP` (the kernel lacks the link kind) comes back as `Ok(false)`.
    pub async fn add_link(&self, msg: LinkMessage, name: &str) -> Result<bool> {
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(libc::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(nl("create link", name)(e)),
        }
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl("delete link", name)(e)),
        }
    }

    pub async fn set_mtu(&self, index: u32, name: &str, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl("set mtu of", name))
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl("set up", name))
    }

    /// Global and site addresses of a link (link-local ones are the kernel's business).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl("list addresses of", format!("index {index}")))?
        {
            if msg.header.index != index || msg.header.scope == AddressScope::Link {
                continue;
            }
            // IFA_LOCAL is this end's address; on point-to-point links IFA_ADDRESS is the peer.
            let mut addr = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr {
                if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    pub async fn add_address(&self, index: u32, name: &str, net: IpNet) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl("add address", format!("{net} to {name}"))(e)),
        }
    }

    pub async fn del_address(&self, index: u32, name: &str, net: IpNet) -> Result<()> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(net.addr())
            .set_prefix_length_filter(net.prefix_len())
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl("find address", format!("{net} on {name}")))?
        {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(nl("delete address", format!("{net} from {name}")))?;
        }
        Ok(())
    }

    /// The output interface of the route towards `dst` (`ip route get`).
    pub async fn route_oif(&self, dst: IpAddr) -> Result<Option<u32>> {
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, if dst.is_ipv4() { 32 } else { 128 })
            .map_err(|e| TunnelError::Command {
                cmd: format!("route get {dst}"),
                detail: e.to_string(),
            })?
            .build();
        let mut stream = self.handle.route().get(msg).execute();
        match stream.try_next().await {
            Ok(Some(route)) => Ok(route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })),
            Ok(None) => Ok(None),
            // No route to the destination.
            Err(e)
                if matches!(
                    netlink_errno(&e),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(nl("route get", dst.to_string())(e)),
        }
    }

    /// Rules sending `fwmark` to `table`, of one family.
    pub async fn fwmark_rules(
        &self,
        v6: bool,
        fwmark: u32,
        table: u32,
    ) -> Result<Vec<RuleMessage>> {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let mut stream = self.handle.rule().get(version).execute();
        let mut out = Vec::new();
        while let Some(rule) = stream
            .try_next()
            .await
            .map_err(nl("list rules", format!("fwmark {fwmark:#x}")))?
        {
            let mark = rule.attributes.iter().find_map(|a| match a {
                RuleAttribute::FwMark(m) => Some(*m),
                _ => None,
            });
            let rule_table = rule
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(rule.header.table as u32);
            if mark == Some(fwmark) && rule_table == table {
                out.push(rule);
            }
        }
        Ok(out)
    }

    pub async fn add_fwmark_rule(
        &self,
        v6: bool,
        fwmark: u32,
        table: u32,
        priority: u32,
    ) -> Result<()> {
        let req = self.handle.rule().add();
        let res = if v6 {
            req.v6()
                .fw_mark(fwmark)
                .table_id(table)
                .priority(priority)
                .action(RuleAction::ToTable)
                .execute()
                .await
        } else {
            req.v4()
                .fw_mark(fwmark)
                .table_id(table)
                .priority(priority)
                .action(RuleAction::ToTable)
                .execute()
                .await
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl("add rule", format!("fwmark {fwmark:#x} lookup {table}"))(e)),
        }
    }

    pub async fn del_rule(&self, rule: RuleMessage) -> Result<()> {
        match self.handle.rule().del(rule).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(nl("delete rule", "fwmark rule")(e)),
        }
    }

    /// `ip route replace default dev <index> table <table>`, for one family.
    pub async fn replace_default_route(
        &self,
        v6: bool,
        index: u32,
        table: u32,
        name: &str,
    ) -> Result<()> {
        let msg = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(index)
                .table_id(table)
                .build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(index)
                .table_id(table)
                .build()
        };
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(
                "replace default route",
                format!("via {name} in table {table}"),
            ))
    }

    /// `ip route add unreachable default metric <metric> table <table>`, for one family; one
    /// that exists already is kept.
    pub async fn add_unreachable_default(&self, v6: bool, table: u32, metric: u32) -> Result<()> {
        let msg = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .kind(RouteType::Unreachable)
                .priority(metric)
                .table_id(table)
                .build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .kind(RouteType::Unreachable)
                .priority(metric)
                .table_id(table)
                .build()
        };
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl(
                "add unreachable default route",
                format!("table {table}"),
            )(e)),
        }
    }

    /// Whether table `table` has an unreachable default route, for one family.
    pub async fn has_unreachable_default(&self, v6: bool, table: u32) -> Result<bool> {
        Ok(self
            .default_routes(v6, table)
            .await?
            .iter()
            .any(|route| route.header.kind == RouteType::Unreachable))
    }

    /// The default routes of table `table`, for one family.
    async fn default_routes(&self, v6: bool, table: u32) -> Result<Vec<RouteMessage>> {
        let msg = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .table_id(table)
                .build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .table_id(table)
                .build()
        };
        let mut found = Vec::new();
        let mut stream = self.handle.route().get(msg).execute();
        while let Some(route) = stream
            .try_next()
            .await
            .map_err(nl("list routes", format!("table {table}")))?
        {
            let in_table = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(route.header.table as u32);
            if in_table == table && route.header.destination_prefix_length == 0 {
                found.push(route);
            }
        }
        Ok(found)
    }

    /// Deletes every default route of table `table` (one family): the hand-off's route, which
    /// stays as long as its device does, and its unreachable fallback, which stays until
    /// deleted. Returns how many there were.
    pub async fn del_default_routes(&self, v6: bool, table: u32) -> Result<usize> {
        let found = self.default_routes(v6, table).await?;
        let n = found.len();
        for route in found {
            match self.handle.route().del(route).execute().await {
                Ok(()) => {}
                Err(e) if matches!(netlink_errno(&e), Some(libc::ENOENT | libc::ESRCH)) => {}
                Err(e) => {
                    return Err(nl("delete default route", format!("table {table}"))(e));
                }
            }
        }
        Ok(n)
    }

    /// Whether table `table` has a default route through link `index`, for one family.
    pub async fn has_default_route(&self, v6: bool, index: u32, table: u32) -> Result<bool> {
        let via = |route: &RouteMessage| {
            route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        };
        Ok(self
            .default_routes(v6, table)
            .await?
            .iter()
            .any(|route| via(route) == Some(index)))
    }
}
