//! The kernel and API state a trace reads: each node's devices, routes, neighbour and
//! FDB entries, route lookups and nftables tables, the pods involved, and what the packet
//! is sent to. The shell fills a [`World`]; the hops only read it.

use super::nft::{self, Packet};
use crate::names::format_mac;
use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A device as read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// A veth's peer index (in the peer's namespace).
    pub peer: Option<u32>,
    pub addrs: Vec<Ipv4Net>,
    pub vxlan: Option<VxlanFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VxlanFacts {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub underlay: Option<u32>,
}

/// A main-table route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RouteFacts {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// The kernel's answer to `ip route get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lookup {
    pub kind: String,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub prefsrc: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
    pub state: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fdb {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// A route lookup the shell asked the kernel for: (source, destination, input device).
pub type LookupKey = (Option<Ipv4Addr>, Ipv4Addr, Option<u32>);

/// One node's state, as its own namespace shows it.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub name: String,
    pub underlay_ip: Option<Ipv4Addr>,
    pub forwarding: Option<bool>,
    pub links: Vec<LinkFacts>,
    pub routes: Vec<RouteFacts>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<Fdb>,
    pub lookups: Vec<(LookupKey, Lookup)>,
    /// Bridge ports where a MAC was found: (MAC, port index).
    pub bridge_ports: Vec<([u8; 6], u32)>,
    /// Table `ip flatnet` (the Service proxy), when present.
    pub proxy: Option<nft::Table>,
    /// Table `ip flatnet-policy`, when present.
    pub policy: Option<nft::Table>,
}

impl NodeFacts {
    pub fn link(&self, index: u32) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.index == index)
    }
    pub fn link_named(&self, name: &str) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.name == name)
    }
    pub(super) fn dev(&self, index: Option<u32>) -> String {
        index.and_then(|i| self.link(i)).map_or_else(|| "?".into(), |l| l.name.clone())
    }
    pub fn lookup(&self, key: LookupKey) -> Option<&Lookup> {
        self.lookups.iter().find(|(k, _)| *k == key).map(|(_, l)| l)
    }
    pub(super) fn vxlan_device(&self) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.vxlan.is_some())
    }
    /// The main-table route the kernel's answer came from: the longest prefix holding
    /// `dst` that leaves by the same device.
    pub(super) fn matched_route(&self, dst: Ipv4Addr, l: &Lookup) -> Option<&RouteFacts> {
        self.routes
            .iter()
            .filter(|r| r.dst.contains(&dst) && (l.oif.is_none() || r.oif == l.oif))
            .max_by_key(|r| r.dst.prefix_len())
    }
    pub(super) fn route_text(&self, r: &RouteFacts) -> String {
        let mut s = if r.dst.prefix_len() == 0 { "default".to_string() } else { r.dst.to_string() };
        if let Some(g) = r.gateway {
            s.push_str(&format!(" via {g}"));
        }
        s.push_str(&format!(" dev {}", self.dev(r.oif)));
        s
    }
}

/// A pod: what the API says and, when its namespace is reachable, its `eth0` and routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub node: Option<String>,
    pub eth0: Option<LinkFacts>,
    pub routes: Vec<RouteFacts>,
}

impl PodFacts {
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the packet is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    Service { namespace: String, name: String },
    Ip,
}

/// Everything a trace reads.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub src: PodFacts,
    pub target: Option<Target>,
    pub packet: Option<Packet>,
    pub nodes: BTreeMap<String, NodeFacts>,
    /// Pods by IP (the destination, and each Service endpoint).
    pub pods: BTreeMap<Ipv4Addr, PodFacts>,
    /// The endpoint the kernel chose for the probe's connection (from conntrack).
    pub chosen: Option<(Ipv4Addr, u16)>,
    /// Every node's underlay address, visible or not (from the API).
    pub node_ips: BTreeMap<Ipv4Addr, String>,
}

pub(super) fn link_line(l: &LinkFacts) -> String {
    let mut s = format!("{} ({}) mtu {} {}", l.name, l.kind.as_deref().unwrap_or("device"), l.mtu, state_word(l.up));
    if let Some(m) = l.mac {
        s.push_str(&format!(" mac {}", format_mac(&m)));
    }
    for a in &l.addrs {
        s.push_str(&format!(" inet {a}"));
    }
    s
}

pub(super) fn state_word(up: bool) -> &'static str {
    if up { "UP" } else { "DOWN" }
}
