//! One synchronous rtnetlink socket with typed operations on top: links
//! (bridges, veths, ports), addresses and routes. No `ip` command is run.
//!
//! A [`Netlink`] works on the namespace it was opened in; open one inside a
//! container's namespace with [`crate::netns::NetNs::run`] and keep using it
//! from the host thread. Every request waits for the kernel's answer, so a
//! failure is reported by the call that caused it, with the errno.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort,
    InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::result::IpPrefix;

mod tc;

pub use tc::{Qdisc, Tbf};

/// A failed netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened.
    #[error("failed to open a netlink socket")]
    Socket(#[source] io::Error),
    /// The kernel refused a request, or talking to it failed.
    #[error("netlink: {op} {target}")]
    Request {
        /// What was attempted (`add veth`).
        op: &'static str,
        /// What it was attempted on (a link name or address).
        target: String,
        /// The errno or I/O failure.
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The errno behind a refused request, if that is what it is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } | Self::Socket(source) => source.raw_os_error(),
        }
    }
}

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`), if any.
    pub kind: Option<String>,
    /// Hardware address, `aa:bb:..`.
    pub mac: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Operational state is up.
    pub oper_up: bool,
    /// Promiscuous mode.
    pub promisc: bool,
    /// Index of the master (bridge), if enslaved.
    pub master: Option<u32>,
    /// `IFLA_LINK`: a veth's peer index (in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Link index.
    pub index: u32,
    /// Address and prefix length.
    pub prefix: IpPrefix,
    /// Scope is global (universe), i.e. not link-local or host.
    pub global: bool,
}

/// A route to add, or one found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination network.
    pub dst: IpPrefix,
    /// Next hop.
    pub gw: Option<IpAddr>,
    /// Output link index.
    pub oif: Option<u32>,
    /// `RTAX_MTU`.
    pub mtu: Option<u32>,
    /// `RTAX_ADVMSS`.
    pub advmss: Option<u32>,
    /// Metric.
    pub priority: Option<u32>,
    /// Table (main when absent).
    pub table: Option<u32>,
    /// Scope (`RT_SCOPE_*`), universe when absent.
    pub scope: Option<u8>,
}

impl RouteSpec {
    /// A route to `dst` via `gw` out of `oif`, nothing else set.
    pub fn new(dst: IpPrefix, gw: Option<IpAddr>, oif: u32) -> Self {
        Self {
            dst,
            gw,
            oif: Some(oif),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

const RT_TABLE_MAIN: u32 = 254;
const ENODEV: i32 = libc::ENODEV;

fn family_of(addr: &IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(addr: IpAddr) -> RouteAddress {
    match addr {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Vec<u8>> {
    let bytes: Option<Vec<u8>> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16).ok())
        .collect();
    bytes.filter(|b| b.len() == 6)
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            ..Link::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(mac) if !mac.is_empty() => link.mac = Some(format_mac(mac)),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(master) if *master != 0 => link.master = Some(*master),
                LinkAttribute::Link(peer) if *peer != 0 => link.peer_index = Some(*peer),
                LinkAttribute::OperState(state) => link.oper_up = *state == State::Up,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // Errors only for our own requests, and extended acks for context.
        let _ = socket.set_ext_ack(true);
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and collects the replies: up to the ACK for plain
    /// requests, up to DONE for dumps.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        target: &dyn std::fmt::Display,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let fail = |source: io::Error| NetlinkError::Request {
            op,
            target: target.to_string(),
            source,
        };
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(fail)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(fail)?;
            let mut offset = 0;
            while offset < data.len() {
                let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|err| fail(io::Error::new(io::ErrorKind::InvalidData, err)))?;
                let len = packet.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if packet.header.sequence_number != self.seq {
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            Some(code) => Err(fail(io::Error::from_raw_os_error(-code.get()))),
                            None => Ok(replies),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        replies.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(
        &mut self,
        message: RouteNetlinkMessage,
        extra: u16,
        op: &'static str,
        target: &dyn std::fmt::Display,
    ) -> Result<(), NetlinkError> {
        self.request(message, NLM_F_ACK | extra, op, target)
            .map(|_| ())
    }

    /// The link called `name`, if it exists.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(msg, &name)
    }

    /// The link with index `index`, if it exists.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, &index)
    }

    fn get_link(
        &mut self,
        msg: LinkMessage,
        target: &dyn std::fmt::Display,
    ) -> Result<Option<Link>, NetlinkError> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, "get link", target) {
            Ok(replies) => Ok(replies.iter().find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })),
            Err(err) if err.errno() == Some(ENODEV) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "list links",
            &"",
        )?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge; `EEXIST` is returned as an error for the caller to judge.
    pub fn add_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add bridge",
            &name,
        )
    }

    /// Creates a veth pair: `name` here, `peer_name` in the namespace of
    /// `peer_netns` (or here when `None`).
    pub fn add_veth(
        &mut self,
        name: &str,
        mac: Option<&[u8]>,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns: Option<RawFd>,
    ) -> Result<(), NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_owned()));
        if let Some(mtu) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(fd) = peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add veth",
            &name,
        )
    }

    fn set_link(
        &mut self,
        index: u32,
        flags: LinkFlags,
        mask: LinkFlags,
        attributes: Vec<LinkAttribute>,
        op: &'static str,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = flags;
        msg.header.change_mask = mask;
        msg.attributes = attributes;
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, op, &index)
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_link(index, LinkFlags::Up, LinkFlags::Up, Vec::new(), "set up")
    }

    /// Sets a link down.
    pub fn set_down(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_link(
            index,
            LinkFlags::empty(),
            LinkFlags::Up,
            Vec::new(),
            "set down",
        )
    }

    /// Turns promiscuous mode on.
    pub fn set_promisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_link(
            index,
            LinkFlags::Promisc,
            LinkFlags::Promisc,
            Vec::new(),
            "set promisc",
        )
    }

    /// Enslaves a link to a bridge and sets it up, in one request.
    pub fn set_master_up(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        self.set_link(
            index,
            LinkFlags::Up,
            LinkFlags::Up,
            vec![LinkAttribute::Controller(master)],
            "set master",
        )
    }

    /// Sets a link's hardware address.
    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<(), NetlinkError> {
        self.set_link(
            index,
            LinkFlags::empty(),
            LinkFlags::empty(),
            vec![LinkAttribute::Address(mac.to_vec())],
            "set address",
        )
    }

    /// Sets hairpin mode on a bridge port.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), 0, "set hairpin", &index)
    }

    /// Adds VLAN `vid` to a bridge port as its untagged PVID.
    pub fn bridge_vlan_add(&mut self, index: u32, vid: u16) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::AfSpecBridge(vec![
            AfSpecBridge::Flags(BridgeFlag::Controller),
            AfSpecBridge::VlanInfo(BridgeVlanInfo {
                flags: BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
                vid,
            }),
        ]));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, "add vlan", &index)
    }

    /// Deletes a link (a veth takes its peer along).
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(msg), 0, "delete link", &index)
    }

    /// Addresses, of one link or of all.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, NetlinkError> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            "list addresses",
            &index.unwrap_or(0),
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                continue;
            };
            if index.is_some_and(|i| i != msg.header.index) {
                continue;
            }
            // IFA_ADDRESS is the peer on point-to-point links; IFA_LOCAL,
            // when present, is ours.
            let mut addr = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push(Address {
                    index: msg.header.index,
                    prefix: IpPrefix {
                        addr,
                        prefix_len: msg.header.prefix_len,
                    },
                    global: u8::from(msg.header.scope) == 0,
                });
            }
        }
        Ok(out)
    }

    fn address_message(index: u32, prefix: IpPrefix) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(&prefix.addr);
        msg.header.prefix_len = prefix.prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Address(prefix.addr));
        if let IpAddr::V4(v4) = prefix.addr {
            msg.attributes.push(AddressAttribute::Local(prefix.addr));
            // A broadcast address, as iproute2 and the reference plugins set one.
            if prefix.prefix_len < 31 {
                let host_mask = u32::MAX >> prefix.prefix_len;
                let broadcast = Ipv4Addr::from(u32::from(v4) | host_mask);
                msg.attributes.push(AddressAttribute::Broadcast(broadcast));
            }
        }
        msg
    }

    /// Adds an address; `EEXIST` is returned for the caller to judge.
    pub fn add_address(&mut self, index: u32, prefix: IpPrefix) -> Result<(), NetlinkError> {
        self.ack(
            RouteNetlinkMessage::NewAddress(Self::address_message(index, prefix)),
            NLM_F_CREATE | NLM_F_EXCL,
            "add address",
            &prefix,
        )
    }

    /// Removes an address.
    pub fn del_address(&mut self, index: u32, prefix: IpPrefix) -> Result<(), NetlinkError> {
        self.ack(
            RouteNetlinkMessage::DelAddress(Self::address_message(index, prefix)),
            0,
            "delete address",
            &prefix,
        )
    }

    /// Adds a route (appending to an existing multipath one, as the
    /// reference's `RouteAddEcmp` does).
    pub fn add_route(&mut self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        let table = route.table.unwrap_or(RT_TABLE_MAIN);
        msg.header = RouteHeader {
            address_family: family_of(&route.dst.addr),
            destination_prefix_length: route.dst.prefix_len,
            table: u8::try_from(table).unwrap_or(0),
            protocol: RouteProtocol::Boot,
            scope: RouteScope::from(route.scope.unwrap_or(0)),
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        if table > 255 {
            msg.attributes.push(RouteAttribute::Table(table));
        }
        let is_default = route.dst.prefix_len == 0;
        if !is_default {
            msg.attributes
                .push(RouteAttribute::Destination(route_address(route.dst.addr)));
        }
        if let Some(gw) = route.gw {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(priority) = route.priority {
            msg.attributes.push(RouteAttribute::Priority(priority));
        }
        let mut metrics = Vec::new();
        if let Some(mtu) = route.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(advmss) = route.advmss {
            metrics.push(RouteMetric::Advmss(advmss));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE,
            "add route",
            &route.dst,
        )
    }

    /// The routes of the main table (and others) of one family.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<RouteSpec>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.request(
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
            "list routes",
            &"",
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            let unspecified: IpAddr = if ipv6 {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            let mut route = RouteSpec {
                dst: IpPrefix {
                    addr: unspecified,
                    prefix_len: msg.header.destination_prefix_length,
                },
                gw: None,
                oif: None,
                mtu: None,
                advmss: None,
                priority: None,
                table: Some(u32::from(msg.header.table)),
                scope: Some(u8::from(msg.header.scope)),
            };
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                        route.dst.addr = (*a).into()
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                        route.dst.addr = (*a).into()
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gw = Some((*a).into()),
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => route.gw = Some((*a).into()),
                    RouteAttribute::Oif(oif) => route.oif = Some(*oif),
                    RouteAttribute::Priority(p) => route.priority = Some(*p),
                    RouteAttribute::Table(t) => route.table = Some(*t),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }

    /// The output link the kernel would route `dst` through.
    pub fn route_get_oif(&mut self, dst: IpAddr) -> Result<Option<u32>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), 0, "get route", &dst)?;
        Ok(replies.iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(route) => route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(oif) => Some(*oif),
                _ => None,
            }),
            _ => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0A:f0:00:05"),
            Some(vec![0x0a, 0x58, 0x0a, 0xf0, 0, 5])
        );
        assert_eq!(parse_mac("0a:58:0a"), None);
        assert_eq!(parse_mac("zz:58:0a:f0:00:05"), None);
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0, 1, 2, 0xff]),
            "0a:58:00:01:02:ff"
        );
    }

    #[test]
    fn lists_own_loopback() {
        // Reading links needs no privilege.
        let mut nl = Netlink::open().unwrap();
        let lo = nl.link_by_name("lo").unwrap().expect("lo exists");
        assert_eq!(lo.index, 1);
        assert!(nl.link_by_name("cnit-none-such").unwrap().is_none());
        assert!(nl.links().unwrap().iter().any(|l| l.name == "lo"));
    }
}
