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
    /// What the node's agent learned by BGP (backend bgp).
    pub bgp_routes: Vec<BgpRouteFacts>,
}

/// A route a node's agent learned by BGP: from which peer, through which ASes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BgpRouteFacts {
    pub prefix: Ipv4Net,
    pub next_hop: Ipv4Addr,
    pub peer: String,
    pub as_path: Vec<u32>,
}

/// A router between nodes (a rack's top-of-rack router): its addresses and the routes
/// its BGP daemon chose, as `birdc show route all` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouterFacts {
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
    pub routes: Vec<RouterRoute>,
}

/// One of a router's chosen routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterRoute {
    pub prefix: Ipv4Net,
    /// The next hop, or None for a directly connected subnet.
    pub via: Option<Ipv4Addr>,
    pub dev: String,
    /// The protocol instance it came from (a BGP session's name, `direct1`, …).
    pub from: String,
    pub as_path: Vec<u32>,
}

/// The primary routes in `birdc show route all` output.
pub fn parse_bird_routes(text: &str) -> Vec<RouterRoute> {
    let mut out: Vec<RouterRoute> = Vec::new();
    let mut current: Option<RouterRoute> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // `10.244.0.0/24   unicast [node1 09:46:58.844] * (100) [AS64513i]`: a new prefix.
            out.extend(current.take());
            let mut words = line.split_whitespace();
            let Some(prefix) = words.next().and_then(|w| w.parse::<Ipv4Net>().ok()) else { continue };
            let from = line.split('[').nth(1).and_then(|x| x.split_whitespace().next()).unwrap_or("").to_string();
            current = Some(RouterRoute { prefix, via: None, dev: String::new(), from, as_path: Vec::new() });
            continue;
        }
        let Some(r) = current.as_mut() else { continue };
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("via ") {
            // `via 192.168.0.2 on core`
            let mut w = rest.split_whitespace();
            r.via = w.next().and_then(|v| v.parse().ok());
            r.dev = w.nth(1).unwrap_or("").to_string();
        } else if let Some(dev) = l.strip_prefix("dev ") {
            r.dev = dev.trim().to_string();
        } else if let Some(path) = l.strip_prefix("BGP.as_path:") {
            r.as_path = path.split_whitespace().filter_map(|a| a.parse().ok()).collect();
        } else if l.starts_with("unicast") {
            // An alternative route for the same prefix: only the primary is used.
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
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
    /// Routers between the nodes, when they can be read (the lab's rack routers).
    pub routers: Vec<RouterFacts>,
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
