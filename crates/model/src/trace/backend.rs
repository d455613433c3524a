//! The hops between nodes, one backend each: VXLAN wraps the packet for the peer's VTEP
//! and the peer unwraps it; host-gw sends it as it is to the peer node on the shared L2.

use super::hop::{Hop, HopKind};
use super::world::{NodeFacts, RouterFacts, state_word};
use crate::names::format_mac;
use std::net::Ipv4Addr;

pub(super) fn vxlan_hop(node: &NodeFacts, at: &str, dev: u32, gw: Ipv4Addr) -> (Hop, Option<Ipv4Addr>) {
    let Some(d) = node.link(dev) else { return (Hop::new(HopKind::Vxlan, at, "VXLAN").drop("device gone"), None) };
    let vx = d.vxlan.expect("a VXLAN device");
    let mut hop = Hop::new(HopKind::Vxlan, at, "VXLAN encapsulation")
        .fact("device", &d.name)
        .fact("vni", vx.vni)
        .fact("udp_port", vx.port)
        .line(format!("{} vni {} dstport {} mtu {} {}", d.name, vx.vni, vx.port, d.mtu, state_word(d.up)));
    if !d.up {
        return (hop.drop(format!("{} is down", d.name)), None);
    }
    let Some(n) = node.neighbours.iter().find(|n| n.ifindex == dev && n.ip == gw) else {
        return (
            hop.drop(format!(
                "no neighbour entry for the peer VTEP {gw} on {}: the agent has not programmed it",
                d.name
            )),
            None,
        );
    };
    let Some(mac) = n.mac else { return (hop.drop(format!("neighbour {gw} has no MAC ({})", n.state)), None) };
    hop = hop.fact("vtep", gw).fact("vtep_mac", format_mac(&mac)).line(format!(
        "neighbour: {gw} lladdr {} {} (dev {})",
        format_mac(&mac),
        n.state.to_uppercase(),
        d.name
    ));
    let Some(f) = node.fdb.iter().find(|f| f.ifindex == dev && f.mac == mac) else {
        return (
            hop.drop(format!(
                "no FDB entry for VTEP MAC {} on {}: the encapsulated packet has no outer destination",
                format_mac(&mac),
                d.name
            )),
            None,
        );
    };
    hop = hop.fact("outer_dst", f.dst).line(format!(
        "fdb: {} dst {} self permanent (dev {})",
        format_mac(&mac),
        f.dst,
        d.name
    ));
    let under = node.lookup((None, f.dst, None));
    let outer_src = vx.local.or_else(|| under.and_then(|l| l.prefsrc));
    if let Some(s) = outer_src {
        hop = hop.fact("outer_src", s);
    }
    if let Some(u) = under {
        hop = hop.fact("underlay_device", node.dev(u.oif)).line(format!(
            "outer packet: ip route get {} → {} dev {}",
            f.dst,
            u.kind,
            node.dev(u.oif)
        ));
    }
    hop.summary = format!(
        "{} wraps it for VTEP {gw}: UDP {} → {}:{} VNI {}",
        d.name,
        outer_src.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
        f.dst,
        vx.port,
        vx.vni,
    );
    (hop, Some(f.dst))
}

pub(super) fn decap_hop(from: &NodeFacts, dev: u32, rnode: &NodeFacts, rname: &str) -> (Hop, u32) {
    let sent = from.link(dev).and_then(|d| d.vxlan);
    let hop = Hop::new(HopKind::Decap, rname, "VXLAN decapsulation");
    let Some(rd) = rnode.vxlan_device() else {
        return (hop.drop(format!("{rname} has no VXLAN device: the packet is dropped on arrival")), 0);
    };
    let vx = rd.vxlan.expect("a VXLAN device");
    let mut hop = hop.fact("device", &rd.name).fact("vni", vx.vni).fact("udp_port", vx.port).line(format!(
        "{} vni {} dstport {} mtu {} {}",
        rd.name,
        vx.vni,
        vx.port,
        rd.mtu,
        state_word(rd.up)
    ));
    hop.summary =
        format!("{} takes UDP port {} VNI {} and hands the inner packet to the node", rd.name, vx.port, vx.vni);
    if let Some(s) = sent {
        if s.vni != vx.vni || s.port != vx.port {
            return (
                hop.drop(format!(
                    "sent as VNI {} port {}, but {rname} listens on VNI {} port {}",
                    s.vni, s.port, vx.vni, vx.port
                )),
                rd.index,
            );
        }
        if let Some(f) = from.links.iter().find(|l| l.index == dev)
            && f.mtu != rd.mtu
        {
            hop = hop.line(format!("MTU MISMATCH: {} has {} here, {} on the sender", rd.name, rd.mtu, f.mtu));
        }
    }
    if !rd.up {
        return (hop.drop(format!("{} is down on {rname}", rd.name)), rd.index);
    }
    (hop, rd.index)
}

pub(super) fn direct_hop(at: &str, dev: &str, gw: Ipv4Addr, bgp: bool) -> Hop {
    Hop::new(HopKind::Direct, at, format!("sent as it is to {gw} on {dev}: no encapsulation"))
        .fact("device", dev)
        .fact("next_hop", gw)
        .line(if bgp {
            "bgp: a plain routed packet to the next hop BGP chose (a node, or the rack's router)"
        } else {
            "host-gw: every node is on one L2 segment, and each Pod CIDR is routed to its node"
        })
}

/// A router on the way: the route its BGP daemon chose for `dst`, and the next hop.
pub(super) fn router_hop(r: &RouterFacts, dst: Ipv4Addr) -> (Hop, Option<Ipv4Addr>) {
    let hop = Hop::new(HopKind::Router, &r.name, "routes it on").fact("router", &r.name);
    let Some(route) = r.routes.iter().filter(|x| x.prefix.contains(&dst)).max_by_key(|x| x.prefix.prefix_len()) else {
        return (hop.drop(format!("{} has no route to {dst}: BGP brought none", r.name)), None);
    };
    let path: Vec<String> = route.as_path.iter().map(u32::to_string).collect();
    let mut hop = hop.fact("device", &route.dev).line(format!(
        "birdc show route for {dst}: {} {} on {} [{}{}]",
        route.prefix,
        route.via.map(|v| format!("via {v}")).unwrap_or_else(|| "directly connected".into()),
        route.dev,
        route.from,
        if path.is_empty() { String::new() } else { format!(" AS path {}", path.join(" ")) }
    ));
    let next = route.via.unwrap_or(dst);
    hop = hop.fact("next_hop", next);
    hop.summary = format!("{} via {next} on {} (learned from {})", route.prefix, route.dev, route.from);
    (hop, Some(next))
}
