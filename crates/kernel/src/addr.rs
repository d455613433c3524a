//! Interface addresses.

use crate::error::Result;
use crate::netlink::{CREATE, Netlink};
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use std::net::IpAddr;

/// Adds `addr` to device `index`; Ok(false) when it was already there.
pub fn add_v4(nl: &mut Netlink, index: u32, addr: Ipv4Net) -> Result<bool> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
    m.attributes.push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
    if addr.prefix_len() < 31 {
        m.attributes.push(AddressAttribute::Broadcast(addr.broadcast()));
    }
    match nl.change(&format!("add address {addr} to device #{index}"), Rt::NewAddress(m), CREATE) {
        Ok(()) => Ok(true),
        Err(e) if e.is_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every address on device `index` (all devices when None).
pub fn list(nl: &mut Netlink, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
    let msgs = nl.dump("list addresses", Rt::GetAddress(AddressMessage::default()))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            Rt::NewAddress(a) if index.is_none_or(|i| i == a.header.index) => {
                let ip = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                })?;
                Some((a.header.index, IpNet::new(ip, a.header.prefix_len).ok()?))
            }
            _ => None,
        })
        .collect())
}

/// Removes IPv4 address `ip` (whatever its prefix) from device `index`; Ok(false) when
/// it was not there.
pub fn delete_v4(nl: &mut Netlink, index: u32, ip: std::net::Ipv4Addr) -> Result<bool> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    match nl.change(&format!("remove address {ip} from device #{index}"), Rt::DelAddress(m), crate::netlink::CHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
