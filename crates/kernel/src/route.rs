//! Routes in the main table: the ones the CNI plugin adds in a pod, and the ones the
//! agent owns on a node (marked with flatnet's protocol number).

use crate::error::Result;
use crate::netlink::{CREATE, Netlink};
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
}

/// Adds an IPv4 route in the main table; Ok(false) when an equal one was already there.
pub fn add_v4(nl: &mut Netlink, dst: Ipv4Net, gateway: Option<Ipv4Addr>, oif: u32, mtu: Option<u32>) -> Result<bool> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    if dst.prefix_len() > 0 {
        m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst.network())));
    }
    if let Some(gw) = gateway {
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    if let Some(mtu) = mtu {
        m.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    match nl.change(&format!("add route {dst}"), Rt::NewRoute(m), CREATE) {
        Ok(()) => Ok(true),
        Err(e) if e.is_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The IPv4 routes of the main table.
pub fn list_v4(nl: &mut Netlink) -> Result<Vec<RouteEntry>> {
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet;
    let msgs = nl.dump("list routes", Rt::GetRoute(req))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            Rt::NewRoute(r) if r.header.table == RouteHeader::RT_TABLE_MAIN => Some(entry(r)),
            _ => None,
        })
        .collect())
}

fn entry(r: &RouteMessage) -> RouteEntry {
    let mut e = RouteEntry {
        dst: IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), r.header.destination_prefix_length).unwrap_or_default(),
        gateway: None,
        oif: None,
        mtu: None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                e.dst = IpNet::new(IpAddr::V4(*ip), r.header.destination_prefix_length).unwrap_or(e.dst)
            }
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => e.gateway = Some(IpAddr::V4(*gw)),
            RouteAttribute::Oif(i) => e.oif = Some(*i),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(v) = m {
                        e.mtu = Some(*v);
                    }
                }
            }
            _ => {}
        }
    }
    e
}

/// The protocol number flatnet stamps on the routes it owns (`ip route` shows
/// `proto 70`): the agent only ever reads back, changes or removes routes carrying it.
pub const FLATNET_PROTOCOL: u8 = 70;

/// The protocol number of the routes the agent learned by BGP (`proto 71`), so that
/// `ip route` tells them from the routes it planned from the API.
pub const FLATNET_BGP_PROTOCOL: u8 = 71;

/// A route the agent owns: a destination via a gateway on one device, stamped with one
/// of flatnet's protocol numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedRoute {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
    pub protocol: u8,
}

fn owned_message(dst: Ipv4Net, protocol: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Other(protocol);
    m.header.kind = RouteType::Unicast;
    m.header.scope = RouteScope::Universe;
    m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst.network())));
    m
}

/// Adds the route, or replaces the one to the same destination, in one request.
pub fn replace_owned(nl: &mut Netlink, r: &OwnedRoute) -> Result<()> {
    let mut m = owned_message(r.dst, r.protocol);
    m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(r.via)));
    m.attributes.push(RouteAttribute::Oif(r.oif));
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    let flags = netlink_packet_core::NLM_F_REQUEST
        | netlink_packet_core::NLM_F_ACK
        | netlink_packet_core::NLM_F_CREATE
        | netlink_packet_core::NLM_F_REPLACE;
    nl.change(&format!("route {} via {}", r.dst, r.via), Rt::NewRoute(m), flags)
}

/// Removes flatnet's route to `dst` carrying `protocol`; Ok(false) when there was none.
pub fn delete_owned(nl: &mut Netlink, dst: Ipv4Net, protocol: u8) -> Result<bool> {
    match nl.change(&format!("delete route {dst}"), Rt::DelRoute(owned_message(dst, protocol)), crate::netlink::CHANGE)
    {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every IPv4 route of the main table, as the kernel gives them.
fn main_table(nl: &mut Netlink) -> Result<Vec<RouteMessage>> {
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet;
    Ok(nl
        .dump("list routes", Rt::GetRoute(req))?
        .into_iter()
        .filter_map(|m| match m {
            Rt::NewRoute(r) if r.header.table == RouteHeader::RT_TABLE_MAIN => Some(r),
            _ => None,
        })
        .collect())
}

fn owned_protocol(r: &RouteMessage) -> Option<u8> {
    match r.header.protocol {
        RouteProtocol::Other(p) if p == FLATNET_PROTOCOL || p == FLATNET_BGP_PROTOCOL => Some(p),
        _ => None,
    }
}

fn is_owned(r: &RouteMessage) -> bool {
    owned_protocol(r).is_some()
}

/// The IPv4 routes of the main table that carry one of flatnet's protocol numbers.
pub fn list_owned(nl: &mut Netlink) -> Result<Vec<OwnedRoute>> {
    Ok(main_table(nl)?
        .iter()
        .filter(|r| is_owned(r))
        .filter_map(|r| {
            let e = entry(r);
            let (IpNet::V4(dst), Some(IpAddr::V4(via)), Some(oif)) = (e.dst, e.gateway, e.oif) else {
                return None;
            };
            Some(OwnedRoute {
                dst,
                via,
                oif,
                onlink: r.header.flags.contains(RouteFlags::Onlink),
                protocol: owned_protocol(r)?,
            })
        })
        .collect())
}

/// Destinations of main-table IPv4 routes that flatnet did not make (any protocol but
/// its own): the agent never replaces one of these.
pub fn foreign_destinations(nl: &mut Netlink) -> Result<Vec<Ipv4Net>> {
    Ok(main_table(nl)?
        .iter()
        .filter(|r| !is_owned(r))
        .filter_map(|r| match entry(r).dst {
            IpNet::V4(d) => Some(d),
            IpNet::V6(_) => None,
        })
        .collect())
}

/// What the kernel decides for one packet (`ip route get DST from SRC iif DEV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// `unicast`, `local`, `broadcast`, `blackhole`, `unreachable`, `prohibit`, …
    pub kind: String,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub prefsrc: Option<Ipv4Addr>,
    pub table: Option<u32>,
}

/// Asks the kernel's FIB which way a packet to `dst` goes: as if it arrived on device
/// `iif` from `src` (a forwarded packet), or as sent from this namespace when `iif` is
/// None. A destination with no route is `kind: "unreachable"`, not an error.
pub fn get_v4(nl: &mut Netlink, dst: Ipv4Addr, src: Option<Ipv4Addr>, iif: Option<u32>) -> Result<Lookup> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 32;
    m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    if let Some(s) = src {
        m.header.source_prefix_length = 32;
        m.attributes.push(RouteAttribute::Source(RouteAddress::Inet(s)));
    }
    if let Some(i) = iif {
        m.attributes.push(RouteAttribute::Iif(i));
    }
    let answer = match nl.get(&format!("route get {dst}"), Rt::GetRoute(m)) {
        Ok(Rt::NewRoute(r)) => r,
        Ok(_) => return Err(crate::KernelError::Decode { op: format!("route get {dst}"), msg: "no route".into() }),
        Err(e) if matches!(e.errno(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => {
            return Ok(Lookup { kind: "unreachable".into(), oif: None, gateway: None, prefsrc: None, table: None });
        }
        Err(e) => return Err(e),
    };
    let mut out = Lookup {
        kind: format!("{:?}", answer.header.kind).to_lowercase(),
        oif: None,
        gateway: None,
        prefsrc: None,
        table: Some(u32::from(answer.header.table)),
    };
    for a in &answer.attributes {
        match a {
            RouteAttribute::Oif(i) => out.oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => out.gateway = Some(*g),
            RouteAttribute::PrefSource(RouteAddress::Inet(p)) => out.prefsrc = Some(*p),
            RouteAttribute::Table(t) => out.table = Some(*t),
            _ => {}
        }
    }
    Ok(out)
}
