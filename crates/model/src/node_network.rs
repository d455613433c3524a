//! The node network planner: from this node and its peers as the API shows them, the
//! routes, neighbours and FDB entries that make every remote Pod CIDR reachable, and the
//! smallest change from what the kernel has now to that.

use crate::names::format_mac;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

pub type Mac = [u8; 6];

/// Node annotations the agent publishes so peers can reach it.
pub mod annotations {
    pub const BACKEND: &str = "flatnet.dev/backend";
    pub const UNDERLAY_IP: &str = "flatnet.dev/underlay-ip";
    pub const VTEP_MAC: &str = "flatnet.dev/vtep-mac";
    /// The node's BGP AS number (backend bgp).
    pub const BGP_AS: &str = "flatnet.dev/bgp-as";
    /// The node's BGP router ID (backend bgp).
    pub const BGP_ROUTER_ID: &str = "flatnet.dev/bgp-router-id";
    /// The node's BGP peers, `address:AS` separated by commas, or `mesh` (backend bgp).
    pub const BGP_PEERS: &str = "flatnet.dev/bgp-peers";
}

/// How packets between nodes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// Encapsulated in VXLAN (UDP) between the nodes' underlay addresses.
    #[default]
    Vxlan,
    /// Routed natively: the next hop of a remote Pod CIDR is the node itself.
    HostGw,
    /// Routed natively by BGP: each node announces its Pod CIDR and installs the routes
    /// it learns (from the other nodes, or from the network's routers).
    Bgp,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vxlan => "vxlan",
            Self::HostGw => "host-gw",
            Self::Bgp => "bgp",
        })
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(Self::Vxlan),
            "host-gw" => Ok(Self::HostGw),
            "bgp" => Ok(Self::Bgp),
            other => Err(format!("unknown backend {other:?}: use vxlan, host-gw or bgp")),
        }
    }
}

/// VXLAN settings; the defaults are Flannel's (VNI 1, the Linux port 8472).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSettings {
    pub vni: u32,
    pub port: u16,
}

impl Default for VxlanSettings {
    fn default() -> Self {
        Self { vni: 1, port: 8472 }
    }
}

impl VxlanSettings {
    /// `flatnet.<vni>`, as Flannel names `flannel.<vni>`.
    pub fn device(&self) -> String {
        format!("flatnet.{}", self.vni)
    }
}

/// Bytes VXLAN adds around a pod's packet: outer IPv4 (20), UDP (8), VXLAN (8), inner
/// Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// A remote node as the API shows it; anything may still be missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub underlay_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Net>,
    pub backend: Option<Backend>,
    pub vtep_mac: Option<Mac>,
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub backend: Backend,
    /// The underlay address and its connected subnet (host-gw peers must be inside it).
    pub underlay: Ipv4Net,
    pub pod_cidr: Ipv4Net,
    /// VXLAN only across subnets: a peer on this node's own segment gets a direct route,
    /// as Flannel's DirectRouting and Calico's CrossSubnet do.
    pub cross_subnet: bool,
}

/// Which device a peer route leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteDevice {
    Vxlan,
    Underlay,
}

/// Where a route's knowledge comes from; the kernel tells them apart by protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RouteOrigin {
    /// Planned from the Nodes the API lists.
    #[default]
    Api,
    /// Learned from a BGP peer.
    Bgp,
}

/// A route to a remote node's Pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerRoute {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub device: RouteDevice,
    /// The gateway is not in any connected subnet (a VTEP address): `onlink`.
    pub onlink: bool,
    pub origin: RouteOrigin,
}

/// A route a BGP session brought: a prefix, its next hop, and the peer that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRoute {
    pub prefix: Ipv4Net,
    pub next_hop: Ipv4Addr,
    pub peer: String,
}

/// Everything the node needs for its peers, keyed the way the kernel keys it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeNetwork {
    /// By destination.
    pub routes: BTreeMap<Ipv4Net, PeerRoute>,
    /// VTEP address → VTEP MAC (permanent ARP entries on the VXLAN device).
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// VTEP MAC → the peer's underlay address (permanent FDB entries on the VXLAN device).
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
}

/// A peer left out of the plan, and why (shown to the operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.reason)
    }
}

/// A node's VTEP address: the network address of its Pod CIDR (never given to a pod),
/// as Flannel does. It only names the peer in routes and ARP entries.
pub fn vtep_ip(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.network()
}

fn direct(dst: Ipv4Net, via: Ipv4Addr) -> PeerRoute {
    PeerRoute { dst, via, device: RouteDevice::Underlay, onlink: false, origin: RouteOrigin::Api }
}

/// The desired network for `local` given every node the API lists (itself included)
/// and, with the bgp backend, the routes its BGP sessions learned. The API says which
/// prefixes are Pod CIDRs; BGP says how to reach them: a learned route is installed only
/// for a Node's Pod CIDR, and only with a next hop on this node's own segment.
pub fn plan(local: &Local, nodes: &[Peer], learned: &[LearnedRoute]) -> (NodeNetwork, Vec<Skipped>) {
    let learned: BTreeMap<Ipv4Net, &LearnedRoute> = learned.iter().map(|r| (r.prefix, r)).collect();
    let mut net = NodeNetwork::default();
    let mut skipped = Vec::new();
    let mut skip = |node: &str, reason: String| skipped.push(Skipped { node: node.into(), reason });
    for peer in nodes.iter().filter(|p| p.name != local.name) {
        let Some(cidr) = peer.pod_cidr else {
            skip(&peer.name, "no spec.podCIDR yet".into());
            continue;
        };
        let Some(ip) = peer.underlay_ip else {
            skip(&peer.name, format!("no {} annotation yet (is its agent running?)", annotations::UNDERLAY_IP));
            continue;
        };
        let seg = local.underlay.trunc();
        if ip == local.underlay.addr() || (seg.contains(&ip) && (ip == seg.network() || ip == seg.broadcast())) {
            skip(
                &peer.name,
                format!("its underlay address {ip} is this node's own, or {seg}'s network or broadcast address"),
            );
            continue;
        }
        if cidr.contains(&local.pod_cidr.network()) || local.pod_cidr.contains(&cidr.network()) {
            skip(&peer.name, format!("its Pod CIDR {cidr} overlaps this node's {}", local.pod_cidr));
            continue;
        }
        if let Some(other) = net.routes.get(&cidr) {
            skip(&peer.name, format!("its Pod CIDR {cidr} is already routed via {}", other.via));
            continue;
        }
        match peer.backend {
            Some(b) if b != local.backend => {
                skip(
                    &peer.name,
                    format!("it runs backend {b}, this node {}: use one backend per cluster", local.backend),
                );
                continue;
            }
            None => {
                skip(&peer.name, format!("no {} annotation yet (is its agent running?)", annotations::BACKEND));
                continue;
            }
            Some(_) => {}
        }
        match local.backend {
            Backend::HostGw => {
                if !local.underlay.contains(&ip) {
                    skip(
                        &peer.name,
                        format!(
                            "host-gw needs every node on one L2 segment, but {ip} is outside this node's {}; use the vxlan backend",
                            local.underlay.trunc()
                        ),
                    );
                    continue;
                }
                net.routes.insert(cidr, direct(cidr, ip));
            }
            Backend::Vxlan if local.cross_subnet && local.underlay.contains(&ip) => {
                net.routes.insert(cidr, direct(cidr, ip));
            }
            Backend::Bgp => {
                let Some(r) = learned.get(&cidr) else {
                    skip(&peer.name, format!("no BGP route to its Pod CIDR {cidr} learned yet"));
                    continue;
                };
                if !local.underlay.contains(&r.next_hop) || r.next_hop == local.underlay.addr() {
                    skip(
                        &peer.name,
                        format!(
                            "the BGP route to {cidr} from {} has next hop {}, not a neighbour on this node's {}",
                            r.peer,
                            r.next_hop,
                            local.underlay.trunc()
                        ),
                    );
                    continue;
                }
                net.routes.insert(cidr, PeerRoute { origin: RouteOrigin::Bgp, ..direct(cidr, r.next_hop) });
            }
            Backend::Vxlan => {
                let Some(mac) = peer.vtep_mac else {
                    skip(&peer.name, format!("no {} annotation yet (is its agent running?)", annotations::VTEP_MAC));
                    continue;
                };
                if let Some(owner) = net.fdb.get(&mac) {
                    skip(&peer.name, format!("its VTEP MAC {} is also {owner}'s", format_mac(&mac)));
                    continue;
                }
                let vtep = vtep_ip(cidr);
                net.routes.insert(
                    cidr,
                    PeerRoute {
                        dst: cidr,
                        via: vtep,
                        device: RouteDevice::Vxlan,
                        onlink: true,
                        origin: RouteOrigin::Api,
                    },
                );
                net.neighbours.insert(vtep, mac);
                net.fdb.insert(mac, ip);
            }
        }
    }
    (net, skipped)
}

/// The change that turns `actual` into `desired`: entries to add or replace, keys to
/// remove. Entries already right are not touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> Changes<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(desired: &BTreeMap<K, V>, actual: &BTreeMap<K, V>) -> Changes<K, V> {
    Changes {
        upsert: desired.iter().filter(|(k, v)| actual.get(k) != Some(v)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        remove: actual.keys().filter(|k| !desired.contains_key(k)).cloned().collect(),
    }
}

/// Parses a MAC written as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn peer(name: &str, ip: &str, cidr: &str, backend: Backend, mac: u8) -> Peer {
        Peer {
            name: name.into(),
            underlay_ip: Some(ip.parse().unwrap()),
            pod_cidr: Some(net(cidr)),
            backend: Some(backend),
            vtep_mac: Some([0x0e, 0, 0, 0, 0, mac]),
        }
    }

    fn local(backend: Backend) -> Local {
        Local {
            name: "node-1".into(),
            backend,
            underlay: net("192.168.1.11/24"),
            pod_cidr: net("10.244.1.0/24"),
            cross_subnet: false,
        }
    }

    #[test]
    fn vxlan_routes_onlink_via_vtep_with_arp_and_fdb() {
        let nodes = vec![
            peer("node-1", "192.168.1.11", "10.244.1.0/24", Backend::Vxlan, 1),
            peer("node-2", "192.168.1.12", "10.244.2.0/24", Backend::Vxlan, 2),
            peer("node-3", "10.9.0.13", "10.244.3.0/24", Backend::Vxlan, 3),
        ];
        let (plan, skipped) = plan(&local(Backend::Vxlan), &nodes, &[]);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(plan.routes.len(), 2, "no route to itself");
        let r = plan.routes[&net("10.244.2.0/24")];
        assert_eq!((r.via, r.device, r.onlink), ("10.244.2.0".parse().unwrap(), RouteDevice::Vxlan, true));
        assert_eq!(plan.neighbours[&"10.244.3.0".parse().unwrap()], [0x0e, 0, 0, 0, 0, 3]);
        assert_eq!(plan.fdb[&[0x0e, 0, 0, 0, 0, 3]], "10.9.0.13".parse::<Ipv4Addr>().unwrap(), "VXLAN crosses L3");
    }

    #[test]
    fn host_gw_routes_via_the_node_and_refuses_other_segments() {
        let nodes = vec![
            peer("node-2", "192.168.1.12", "10.244.2.0/24", Backend::HostGw, 2),
            peer("node-3", "10.9.0.13", "10.244.3.0/24", Backend::HostGw, 3),
        ];
        let (plan, skipped) = plan(&local(Backend::HostGw), &nodes, &[]);
        let r = plan.routes[&net("10.244.2.0/24")];
        assert_eq!((r.via, r.device, r.onlink), ("192.168.1.12".parse().unwrap(), RouteDevice::Underlay, false));
        assert!(plan.neighbours.is_empty() && plan.fdb.is_empty());
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].node, "node-3");
        assert!(skipped[0].reason.contains("one L2 segment"), "{}", skipped[0].reason);
        assert!(skipped[0].reason.contains("192.168.1.0/24"), "{}", skipped[0].reason);
    }

    #[test]
    fn incomplete_or_conflicting_peers_are_skipped_with_a_reason() {
        let mut no_cidr = peer("a", "192.168.1.20", "10.244.9.0/24", Backend::Vxlan, 9);
        no_cidr.pod_cidr = None;
        let mut no_mac = peer("b", "192.168.1.21", "10.244.10.0/24", Backend::Vxlan, 10);
        no_mac.vtep_mac = None;
        let other_backend = peer("c", "192.168.1.22", "10.244.11.0/24", Backend::HostGw, 11);
        let overlap = peer("d", "192.168.1.23", "10.244.1.0/25", Backend::Vxlan, 12);
        let dup_cidr = peer("e", "192.168.1.24", "10.244.2.0/24", Backend::Vxlan, 13);
        let broadcast = peer("g", "192.168.1.255", "10.244.12.0/24", Backend::Vxlan, 15);
        let me_again = peer("h", "192.168.1.11", "10.244.13.0/24", Backend::Vxlan, 16);
        let first = peer("f", "192.168.1.25", "10.244.2.0/24", Backend::Vxlan, 14);
        let (plan, skipped) = plan(
            &local(Backend::Vxlan),
            &[first, no_cidr, no_mac, other_backend, overlap, dup_cidr, broadcast, me_again],
            &[],
        );
        assert_eq!(plan.routes.len(), 1);
        let reasons: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(reasons.len(), 7, "{reasons:?}");
        assert!(reasons[5].starts_with("g: its underlay address 192.168.1.255"), "{}", reasons[5]);
        assert!(reasons[6].starts_with("h: its underlay address 192.168.1.11 is this node's own"), "{}", reasons[6]);
        assert!(reasons[0].starts_with("a: no spec.podCIDR"));
        assert!(reasons[1].contains("vtep-mac"));
        assert!(reasons[2].contains("backend host-gw"));
        assert!(reasons[3].contains("overlaps"));
        assert!(reasons[4].contains("already routed"));
    }

    #[test]
    fn cross_subnet_routes_directly_on_the_segment_and_by_vxlan_elsewhere() {
        let nodes = vec![
            peer("node-2", "192.168.1.12", "10.244.2.0/24", Backend::Vxlan, 2),
            peer("node-3", "192.168.2.13", "10.244.3.0/24", Backend::Vxlan, 3),
        ];
        let (plan, skipped) = plan(&Local { cross_subnet: true, ..local(Backend::Vxlan) }, &nodes, &[]);
        assert!(skipped.is_empty(), "{skipped:?}");
        let same = plan.routes[&net("10.244.2.0/24")];
        assert_eq!((same.via, same.device), ("192.168.1.12".parse().unwrap(), RouteDevice::Underlay));
        let other = plan.routes[&net("10.244.3.0/24")];
        assert_eq!((other.via, other.device), ("10.244.3.0".parse().unwrap(), RouteDevice::Vxlan));
        assert_eq!(plan.fdb.len(), 1, "only the peer across subnets is reached by VXLAN");
    }

    #[test]
    fn bgp_installs_learned_routes_for_pod_cidrs_with_connected_next_hops() {
        let learned = |prefix: &str, nh: &str| LearnedRoute {
            prefix: net(prefix),
            next_hop: nh.parse().unwrap(),
            peer: "rack-1".into(),
        };
        let nodes = vec![
            peer("node-2", "192.168.2.12", "10.244.2.0/24", Backend::Bgp, 2),
            peer("node-3", "192.168.1.13", "10.244.3.0/24", Backend::Bgp, 3),
            peer("node-4", "192.168.1.14", "10.244.4.0/24", Backend::Bgp, 4),
            peer("node-5", "192.168.1.15", "10.244.5.0/24", Backend::Bgp, 5),
        ];
        let routes = [
            learned("10.244.2.0/24", "192.168.1.254"),
            learned("10.244.3.0/24", "192.168.1.13"),
            learned("10.244.4.0/24", "192.168.9.1"),
            learned("10.244.99.0/24", "192.168.1.254"),
        ];
        let (plan, skipped) = plan(&local(Backend::Bgp), &nodes, &routes);
        let r = plan.routes[&net("10.244.2.0/24")];
        assert_eq!(
            (r.via, r.device, r.origin),
            ("192.168.1.254".parse().unwrap(), RouteDevice::Underlay, RouteOrigin::Bgp)
        );
        assert_eq!(plan.routes[&net("10.244.3.0/24")].via, "192.168.1.13".parse::<Ipv4Addr>().unwrap());
        assert_eq!(plan.routes.len(), 2, "no route for a prefix no Node has, nor via a far next hop");
        let reasons: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("node-4: the BGP route to 10.244.4.0/24 from rack-1 has next hop 192.168.9.1"));
        assert!(reasons[1].starts_with("node-5: no BGP route to its Pod CIDR 10.244.5.0/24"));
    }

    #[test]
    fn diff_touches_only_what_differs() {
        let desired: BTreeMap<u8, &str> = [(1, "a"), (2, "b"), (3, "c")].into();
        let actual: BTreeMap<u8, &str> = [(1, "a"), (2, "x"), (4, "d")].into();
        let c = diff(&desired, &actual);
        assert_eq!(c.upsert, vec![(2, "b"), (3, "c")]);
        assert_eq!(c.remove, vec![4]);
        assert!(diff(&desired, &desired).is_empty());
    }

    #[test]
    fn macs_and_backends_parse() {
        assert_eq!(parse_mac("0e:00:0a:ff:10:01"), Some([0x0e, 0, 0x0a, 0xff, 0x10, 1]));
        assert_eq!(parse_mac("0e:00:0a:ff:10"), None);
        assert_eq!(parse_mac("0e:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("0e:00:0a:ff:10:zz"), None);
        assert_eq!("host-gw".parse::<Backend>(), Ok(Backend::HostGw));
        assert_eq!("bgp".parse::<Backend>(), Ok(Backend::Bgp));
        assert!("gre".parse::<Backend>().unwrap_err().contains("vxlan, host-gw or bgp"));
        assert_eq!(VxlanSettings::default().device(), "flatnet.1");
    }
}
