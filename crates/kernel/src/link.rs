//! Network devices: bridges, veth pairs, their state, and bridge-port settings.

use crate::error::Result;
use crate::netlink::{CHANGE, CREATE, Netlink};
use netlink_packet_route::RouteNetlinkMessage as Rt;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What flatnet reads back about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub kind: Option<String>,
    /// For a bridge port: whether hairpin mode is on.
    pub hairpin: Option<bool>,
    /// Device group (0 is the default group).
    pub group: u32,
    /// For a VXLAN device: its settings.
    pub vxlan: Option<Vxlan>,
    /// Packets sent and received (zero when the kernel gave no statistics).
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// For a veth: the peer's index (in the peer's namespace, which may be another).
    pub link: Option<u32>,
}

/// A VXLAN device's settings, as created and as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    /// The underlay device it sends through.
    pub underlay: Option<u32>,
    pub learning: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            master: None,
            alias: None,
            kind: None,
            hairpin: None,
            group: 0,
            vxlan: None,
            tx_packets: 0,
            rx_packets: 0,
            link: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::Controller(v) if *v != 0 => link.master = Some(*v),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::Group(g) => link.group = *g,
                LinkAttribute::Link(i) if *i != 0 => link.link = Some(*i),
                LinkAttribute::Stats64(st) => {
                    link.tx_packets = st.tx_packets;
                    link.rx_packets = st.rx_packets;
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(attrs)) => link.vxlan = Some(Vxlan::from_attributes(attrs)),
                            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                link.hairpin = port.iter().find_map(|p| match p {
                                    InfoBridgePort::HairpinMode(on) => Some(*on),
                                    _ => None,
                                })
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn by_name(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

fn by_index(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

/// The device called `name`, or None when there is none.
pub fn get(nl: &mut Netlink, name: &str) -> Result<Option<Link>> {
    lookup(nl, &format!("look up device {name}"), by_name(name))
}

pub fn get_by_index(nl: &mut Netlink, index: u32) -> Result<Option<Link>> {
    lookup(nl, &format!("look up device #{index}"), by_index(index))
}

fn lookup(nl: &mut Netlink, op: &str, key: LinkMessage) -> Result<Option<Link>> {
    match nl.get(op, Rt::GetLink(key)) {
        Ok(Rt::NewLink(m)) => Ok(Some(Link::from_message(&m))),
        Ok(_) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn list(nl: &mut Netlink) -> Result<Vec<Link>> {
    Ok(nl
        .dump("list devices", Rt::GetLink(LinkMessage::default()))?
        .iter()
        .filter_map(|m| match m {
            Rt::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })
        .collect())
}

/// Creates a bridge, up, with a fixed MAC (so it does not change as ports come and go).
pub fn create_bridge(nl: &mut Netlink, name: &str, mac: [u8; 6], mtu: Option<u32>) -> Result<()> {
    let mut m = by_name(name);
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
    nl.change(&format!("create bridge {name}"), Rt::NewLink(m), CREATE)
}

/// A veth pair whose far end is created directly inside another network namespace.
pub struct VethPair<'a> {
    pub host_name: &'a str,
    pub host_mac: [u8; 6],
    /// The bridge the host end joins, if any.
    pub master: Option<u32>,
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: BorrowedFd<'a>,
    pub mtu: u32,
}

/// Creates the pair in one request: the host end up (and on `master`, if given), the peer
/// already in its namespace, both with their MACs and MTU.
pub fn create_veth(nl: &mut Netlink, pair: &VethPair<'_>) -> Result<()> {
    let mut peer = by_name(pair.peer_name);
    peer.attributes.push(LinkAttribute::Address(pair.peer_mac.to_vec()));
    peer.attributes.push(LinkAttribute::Mtu(pair.mtu));
    peer.attributes.push(LinkAttribute::NetNsFd(pair.peer_netns.as_raw_fd()));
    // One queue each, asked for up front: otherwise veth creates one per CPU and then
    // trims to one, and the trim waits for an RCU grace period under the rtnl lock,
    // stalling every other link operation on the node.
    single_queue(&mut peer);
    let mut m = by_name(pair.host_name);
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Address(pair.host_mac.to_vec()));
    m.attributes.push(LinkAttribute::Mtu(pair.mtu));
    if let Some(master) = pair.master {
        m.attributes.push(LinkAttribute::Controller(master));
    }
    single_queue(&mut m);
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    nl.change(&format!("create veth pair {}/{}", pair.host_name, pair.peer_name), Rt::NewLink(m), CREATE)
}

fn single_queue(m: &mut LinkMessage) {
    m.attributes.push(LinkAttribute::NumTxQueues(1));
    m.attributes.push(LinkAttribute::NumRxQueues(1));
}

/// Sets a bridge port's hairpin mode and the device's alias, in one request.
pub fn set_bridge_port(nl: &mut Netlink, name: &str, hairpin: bool, alias: &str) -> Result<()> {
    let mut m = by_name(name);
    m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(hairpin)])),
    ]));
    nl.change(&format!("configure bridge port {name}"), Rt::NewLink(m), CHANGE)
}

pub fn set_up(nl: &mut Netlink, index: u32) -> Result<()> {
    let mut m = by_index(index);
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    nl.change(&format!("bring device #{index} up"), Rt::SetLink(m), CHANGE)
}

/// Takes a device down (its carrier gone: nothing is sent or received on it).
pub fn set_down(nl: &mut Netlink, index: u32) -> Result<()> {
    let mut m = by_index(index);
    m.header.change_mask = LinkFlags::Up;
    nl.change(&format!("bring device #{index} down"), Rt::SetLink(m), CHANGE)
}

/// Deletes a device by name; Ok(false) when it did not exist.
pub fn delete(nl: &mut Netlink, name: &str) -> Result<bool> {
    match nl.change(&format!("delete device {name}"), Rt::DelLink(by_name(name)), CHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Puts device `name` in device group `group`; Ok(false) when there is no such device.
pub fn set_group(nl: &mut Netlink, name: &str, group: u32) -> Result<bool> {
    let mut m = by_name(name);
    m.attributes.push(LinkAttribute::Group(group));
    match nl.change(&format!("move device {name} to group {group}"), Rt::NewLink(m), CHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes every device of group `group` in one kernel transaction: one set of RCU
/// grace periods for all of them, instead of one per device.
pub fn delete_group(nl: &mut Netlink, group: u32) -> Result<()> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::Group(group));
    match nl.change(&format!("delete device group {group}"), Rt::DelLink(m), CHANGE) {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

impl Vxlan {
    fn from_attributes(attrs: &[InfoVxlan]) -> Self {
        let mut v = Vxlan { vni: 0, port: 0, local: None, underlay: None, learning: true };
        for a in attrs {
            match a {
                InfoVxlan::Id(id) => v.vni = *id,
                InfoVxlan::Port(p) => v.port = *p,
                InfoVxlan::Local(ip) => v.local = Some(*ip),
                InfoVxlan::Link(i) => v.underlay = Some(*i),
                InfoVxlan::Learning(l) => v.learning = *l,
                _ => {}
            }
        }
        v
    }
}

/// Creates a VXLAN device, up, with a fixed MAC (peers know it from the API, so it must
/// survive a re-creation) and the given MTU.
pub fn create_vxlan(nl: &mut Netlink, name: &str, settings: &Vxlan, mac: [u8; 6], mtu: u32) -> Result<()> {
    let mut data =
        vec![InfoVxlan::Id(settings.vni), InfoVxlan::Port(settings.port), InfoVxlan::Learning(settings.learning)];
    if let Some(ip) = settings.local {
        data.push(InfoVxlan::Local(ip));
    }
    if let Some(i) = settings.underlay {
        data.push(InfoVxlan::Link(i));
    }
    let mut m = by_name(name);
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    m.attributes.push(LinkAttribute::Mtu(mtu));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Vxlan), LinkInfo::Data(InfoData::Vxlan(data))]));
    nl.change(&format!("create VXLAN device {name}"), Rt::NewLink(m), CREATE)
}

pub fn set_mtu(nl: &mut Netlink, index: u32, mtu: u32) -> Result<()> {
    let mut m = by_index(index);
    m.attributes.push(LinkAttribute::Mtu(mtu));
    nl.change(&format!("set the MTU of device #{index} to {mtu}"), Rt::SetLink(m), CHANGE)
}
