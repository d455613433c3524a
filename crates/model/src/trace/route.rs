//! The route lookup hop: the kernel's `ip route get` answer on a node, the main-table
//! route it came from, and which [`Way`] it sends the packet on.

use super::hop::{Hop, HopKind};
use super::nft::Packet;
use super::world::NodeFacts;
use std::net::Ipv4Addr;

/// Which way the node's route lookup sends the packet.
pub(super) enum Way {
    Bridge(u32),
    Vxlan(u32, Ipv4Addr),
    Direct(Ipv4Addr),
    Local,
    Out(u32),
}

pub(super) fn route_hop(node: &NodeFacts, at: &str, p: Packet, iif: Option<u32>) -> (Hop, Option<Way>) {
    let hop = Hop::new(HopKind::Route, at, "route lookup");
    let Some(l) = node.lookup((Some(p.src), p.dst, iif)) else {
        return (hop.unknown(format!("no route lookup for {} on {at}", p.dst)), None);
    };
    let mut hop = hop.fact("kind", &l.kind).line(format!(
        "ip route get {} from {} iif {} → {} dev {}{}",
        p.dst,
        p.src,
        node.dev(iif),
        l.kind,
        node.dev(l.oif),
        l.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
    ));
    if let Some(r) = node.matched_route(p.dst, l) {
        hop = hop.fact("route", node.route_text(r)).line(format!("matched route: {}", node.route_text(r)));
        if let Some(b) = node.bgp_routes.iter().find(|b| b.prefix == r.dst) {
            let path: Vec<String> = b.as_path.iter().map(u32::to_string).collect();
            hop = hop.fact("bgp_peer", &b.peer).line(format!(
                "learned by BGP from {}: next hop {}, AS path {} (proto 71)",
                b.peer,
                b.next_hop,
                if path.is_empty() { "(the peer's own AS, iBGP)".to_string() } else { path.join(" ") }
            ));
        }
    }
    if node.forwarding == Some(false) {
        return (hop.drop(format!("IP forwarding is off on {at} (net.ipv4.ip_forward=0)")), None);
    }
    match l.kind.as_str() {
        "unicast" => {}
        "local" => {
            hop.summary = format!("{} is local to {at}", p.dst);
            return (hop, Some(Way::Local));
        }
        k => return (hop.drop(format!("the kernel has no usable route to {} ({k})", p.dst)), None),
    }
    let Some(oif) = l.oif else { return (hop.unknown("the kernel named no output device"), None) };
    let dev = node.link(oif);
    let name = node.dev(Some(oif));
    hop = hop.fact("device", &name);
    if let Some(g) = l.gateway {
        hop = hop.fact("gateway", g);
    }
    let way = match dev {
        Some(d) if d.kind.as_deref() == Some("bridge") => {
            hop.summary = format!("{} is on this node's bridge {name}", p.dst);
            Way::Bridge(oif)
        }
        Some(d) if d.vxlan.is_some() => {
            let Some(gw) = l.gateway else { return (hop.drop(format!("route by {name} without a gateway")), None) };
            hop.summary = format!("{} via {gw} dev {name} (VXLAN)", p.dst);
            Way::Vxlan(oif, gw)
        }
        Some(_) => match l.gateway {
            Some(gw)
                if node.routes.iter().any(|r| {
                    r.oif == Some(oif) && r.gateway == Some(gw) && r.dst.contains(&p.dst) && r.dst.prefix_len() > 0
                }) =>
            {
                hop.summary = if hop.facts.contains_key("bgp_peer") {
                    format!("{} via {gw} dev {name} (learned by BGP)", p.dst)
                } else {
                    format!("{} via {gw} dev {name} (direct route to the node)", p.dst)
                };
                Way::Direct(gw)
            }
            _ => {
                hop.summary = format!("{} leaves by {name}", p.dst);
                Way::Out(oif)
            }
        },
        None => return (hop.unknown(format!("device #{oif} is not listed")), None),
    };
    (hop, Some(way))
}
