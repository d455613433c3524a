//! The hops on a pod's side of its node: the pod's eth0 and route, the host end of its
//! veth, and the node bridge that veth is a port of; on the way out and on delivery.

use super::hop::{Hop, HopKind};
use super::world::{NodeFacts, PodFacts, link_line};
use crate::names::{format_mac, pod_mac};
use std::net::Ipv4Addr;

pub(super) fn pod_hop(src: &PodFacts, dst: Ipv4Addr, at: &str) -> Hop {
    let mut hop = Hop::new(HopKind::Pod, at, "leaves by eth0").fact("pod", src.label());
    if let Some(ip) = src.ip {
        hop = hop.fact("ip", ip);
    }
    let Some(eth0) = &src.eth0 else {
        return hop.line("the pod's namespace is not visible from here: eth0 not read");
    };
    hop = hop.fact("device", &eth0.name).fact("mtu", eth0.mtu).line(link_line(eth0));
    let route = src.routes.iter().filter(|r| r.dst.contains(&dst)).max_by_key(|r| r.dst.prefix_len());
    match route {
        Some(r) => {
            let text = match r.gateway {
                Some(g) if r.dst.prefix_len() == 0 => format!("default via {g} dev eth0"),
                Some(g) => format!("{} via {g} dev eth0", r.dst),
                None => format!("{} dev eth0", r.dst),
            };
            hop.summary = format!("eth0 {}, route {text}", src.ip.map(|i| i.to_string()).unwrap_or_default());
            hop = hop.fact("route", &text).line(format!("route: {text}"));
            if !eth0.up {
                return hop.drop("eth0 is down in the pod");
            }
            hop
        }
        None => hop.drop(format!("the pod has no route to {dst}")),
    }
}

/// The host end of `pod`'s veth on `node`, and the bridge it is a port of.
pub(super) fn veth_hop(node: &NodeFacts, pod: &PodFacts, at: &str, outbound: bool) -> (Hop, Option<u32>) {
    let mac = pod.ip.map(pod_mac);
    let by_peer = pod.eth0.as_ref().and_then(|e| e.peer).and_then(|i| node.link(i));
    let by_fdb = mac.and_then(|m| node.bridge_ports.iter().find(|(x, _)| *x == m)).and_then(|(_, i)| node.link(*i));
    let summary = if outbound { "the veth's host end" } else { "the destination pod's veth" };
    let hop = Hop::new(HopKind::Veth, at, summary).fact("pod", pod.label());
    let Some(host) = by_peer.or(by_fdb) else {
        let why = format!(
            "no host veth of {} identified on {at}: the pod's namespace is not visible and no bridge port has learned {} yet",
            pod.label(),
            mac.map(|m| format_mac(&m)).unwrap_or_default()
        );
        // The pod's address is still on this node's bridge: go on from there.
        let bridge = node.links.iter().find(|l| {
            l.kind.as_deref() == Some("bridge") && l.addrs.iter().any(|a| pod.ip.is_some_and(|ip| a.contains(&ip)))
        });
        return match bridge {
            Some(b) => {
                let mut h = hop.fact("bridge", &b.name).line(why);
                h.summary = format!("a port of {} (not identified)", b.name);
                (h, Some(b.index))
            }
            None if outbound => (hop.unknown(why), None),
            None => (hop.drop(why), None),
        };
    };
    let mut hop = hop.fact("device", &host.name).fact("mtu", host.mtu).line(link_line(host));
    hop.summary = format!("{} on {}", host.name, node.dev(host.master));
    if let Some(m) = host.master {
        hop = hop.fact("bridge", node.dev(Some(m))).line(format!("master {}", node.dev(Some(m))));
    }
    if let Some(e) = &pod.eth0
        && e.mtu != host.mtu
    {
        hop = hop.line(format!("MTU MISMATCH: eth0 in the pod has {}, the host end {}", e.mtu, host.mtu));
    }
    if !host.up {
        return (hop.drop(format!("{} is down", host.name)), None);
    }
    match host.master {
        Some(b) => (hop, Some(b)),
        None => (hop.drop(format!("{} is not a port of any bridge", host.name)), None),
    }
}

pub(super) fn bridge_hop(node: &NodeFacts, bridge: u32, at: &str, why: &str) -> Hop {
    let Some(b) = node.link(bridge) else {
        return Hop::new(HopKind::Bridge, at, "the node bridge").drop("the bridge is gone");
    };
    let gw = b.addrs.first().map(|a| a.addr().to_string()).unwrap_or_default();
    let hop = Hop::new(HopKind::Bridge, at, format!("bridge {} ({gw}): {why}", b.name))
        .fact("device", &b.name)
        .fact("gateway", &gw)
        .line(link_line(b));
    if b.up { hop } else { hop.drop(format!("bridge {} is down", b.name)) }
}
