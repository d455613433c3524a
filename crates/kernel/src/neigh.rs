//! Permanent neighbour (ARP) and bridge FDB entries on one device: how the agent tells
//! the VXLAN device which MAC each remote VTEP has and which node address it lives at.

use crate::error::Result;
use crate::netlink::{CHANGE, Netlink};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

const UPSERT: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;

fn message(family: AddressFamily, ifindex: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m
}

fn mac_of(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => b.as_slice().try_into().ok(),
        _ => None,
    })
}

fn ip_of(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // In AF_BRIDGE (FDB) messages the address family of the destination is not
        // the header's, so it arrives undecoded: four bytes are an IPv4 address.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

/// The entries of `family`, on device `ifindex` only when given.
fn dump(nl: &mut Netlink, op: &str, family: AddressFamily, ifindex: Option<u32>) -> Result<Vec<NeighbourMessage>> {
    let mut req = NeighbourMessage::default();
    req.header.family = family;
    Ok(nl
        .dump(op, Rt::GetNeighbour(req))?
        .into_iter()
        .filter_map(|m| match m {
            Rt::NewNeighbour(n) if ifindex.is_none_or(|i| n.header.ifindex == i) && n.header.family == family => {
                Some(n)
            }
            _ => None,
        })
        .collect())
}

/// The permanent IPv4 neighbour entries on device `ifindex`: (IP, MAC).
pub fn list_permanent(nl: &mut Netlink, ifindex: u32) -> Result<Vec<(Ipv4Addr, Mac)>> {
    Ok(dump(nl, "list neighbours", AddressFamily::Inet, Some(ifindex))?
        .iter()
        .filter(|n| n.header.state == NeighbourState::Permanent)
        .filter_map(|n| Some((ip_of(n)?, mac_of(n)?)))
        .collect())
}

/// Sets a permanent neighbour entry `ip` → `mac` on device `ifindex`.
pub fn replace(nl: &mut Netlink, ifindex: u32, ip: Ipv4Addr, mac: Mac) -> Result<()> {
    let mut m = message(AddressFamily::Inet, ifindex);
    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    nl.change(&format!("neighbour {ip} on device #{ifindex}"), Rt::NewNeighbour(m), UPSERT)
}

/// Removes the neighbour entry for `ip`; Ok(false) when there was none.
pub fn delete(nl: &mut Netlink, ifindex: u32, ip: Ipv4Addr) -> Result<bool> {
    let mut m = message(AddressFamily::Inet, ifindex);
    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    match nl.change(&format!("delete neighbour {ip} on device #{ifindex}"), Rt::DelNeighbour(m), CHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The FDB entries of device `ifindex` (a VXLAN device) that name a remote IPv4
/// address: (MAC, remote).
pub fn list_fdb(nl: &mut Netlink, ifindex: u32) -> Result<Vec<(Mac, Ipv4Addr)>> {
    Ok(dump(nl, "list FDB entries", AddressFamily::Bridge, Some(ifindex))?
        .iter()
        .filter_map(|n| Some((mac_of(n)?, ip_of(n)?)))
        .collect())
}

fn fdb_message(ifindex: u32, mac: Mac, dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = message(AddressFamily::Bridge, ifindex);
    m.header.flags = NeighbourFlags::Own;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    m
}

/// Sets the permanent FDB entry `mac` → remote `dst` on VXLAN device `ifindex`.
pub fn replace_fdb(nl: &mut Netlink, ifindex: u32, mac: Mac, dst: Ipv4Addr) -> Result<()> {
    let op = format!("FDB entry {} via {dst} on device #{ifindex}", mac_text(&mac));
    nl.change(&op, Rt::NewNeighbour(fdb_message(ifindex, mac, dst)), UPSERT)
}

/// Removes the FDB entry `mac` → `dst`; Ok(false) when there was none.
pub fn delete_fdb(nl: &mut Netlink, ifindex: u32, mac: Mac, dst: Ipv4Addr) -> Result<bool> {
    let op = format!("delete FDB entry {} on device #{ifindex}", mac_text(&mac));
    match nl.change(&op, Rt::DelNeighbour(fdb_message(ifindex, mac, dst)), CHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

fn mac_text(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One neighbour (ARP) entry, any state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
    /// `permanent`, `reachable`, `stale`, `failed`, …
    pub state: String,
}

/// Every IPv4 neighbour entry of the namespace.
pub fn list_all(nl: &mut Netlink) -> Result<Vec<Neighbour>> {
    Ok(dump(nl, "list neighbours", AddressFamily::Inet, None)?
        .iter()
        .filter_map(|n| {
            Some(Neighbour {
                ifindex: n.header.ifindex,
                ip: ip_of(n)?,
                mac: mac_of(n),
                state: format!("{:?}", n.header.state).to_lowercase(),
            })
        })
        .collect())
}

/// The MACs bridge `bridge` has learned or been told, each with its port's index.
pub fn bridge_ports(nl: &mut Netlink, bridge: u32) -> Result<Vec<(Mac, u32)>> {
    Ok(dump(nl, "list bridge FDB entries", AddressFamily::Bridge, None)?
        .iter()
        .filter(|n| {
            n.header.ifindex != bridge
                && n.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Controller(c) if *c == bridge))
        })
        .filter_map(|n| Some((mac_of(n)?, n.header.ifindex)))
        .collect())
}
