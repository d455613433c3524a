//! [`build`]: the packet's path through a [`World`], hop by hop in the kernel's order
//! (pod, veth, bridge, Service DNAT, route, policy, the crossing to the next node,
//! delivery), stopping at the first hop that drops it or cannot be read.

use super::backend::{decap_hop, direct_hop, router_hop, vxlan_hop};
use super::hop::{Hop, HopKind, Step, Trace, Verdict};
use super::nft::{L4, Packet};
use super::pod::{bridge_hop, pod_hop, veth_hop};
use super::policy::policy_hop;
use super::route::{Way, route_hop};
use super::service::dnat_hop;
use super::world::{NodeFacts, Target, World, link_line};
use crate::policy::Direction;
use std::net::Ipv4Addr;

/// The most routers a path crosses before the trace gives up (a loop).
const MAX_ROUTERS: usize = 8;

/// Walks the packet through `w` as the kernel would, a hop at a time, and stops at the
/// first hop that drops it (or that cannot be read).
pub fn build(w: &World) -> Trace {
    let p = w.packet.unwrap_or(Packet {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        proto: L4::Tcp,
        port: None,
    });
    let to = match &w.target {
        Some(Target::Pod(n)) => format!("pod {n}"),
        Some(Target::Service { namespace, name }) => format!("service {namespace}/{name}"),
        _ => p.dst.to_string(),
    };
    let port = p.port.map(|x| format!(":{x}")).unwrap_or_default();
    let to = format!("{to} ({}{port}/{})", p.dst, p.proto.word());
    let mut path = Walk { hops: Vec::new() };
    let (Ok(verdict) | Err(verdict)) = walk(w, p, &mut path);
    Trace { from: format!("pod {} ({})", w.src.label(), p.src), to, packet: p, hops: path.hops, verdict, probe: None }
}

/// The hops so far.
struct Walk {
    hops: Vec<Hop>,
}

impl Walk {
    /// Adds a hop; Err with the trace's verdict when the hop ends the path.
    fn add(&mut self, h: Hop) -> Result<(), Verdict> {
        let end = match &h.step {
            Step::Pass => None,
            Step::Drop { by } => Some(Verdict::Dropped { at: h.at.clone(), by: by.clone() }),
            Step::Unknown { why } => Some(Verdict::Unknown { why: why.clone() }),
        };
        self.hops.push(h);
        end.map_or(Ok(()), Err)
    }

    /// Adds a hop that ends the path (it drops, or cannot be read); its verdict.
    fn stop(&mut self, h: Hop) -> Verdict {
        self.add(h).expect_err("a hop that ends the path")
    }
}

/// Ok at the destination, Err where the path ends before it.
fn walk(w: &World, p: Packet, path: &mut Walk) -> Result<Verdict, Verdict> {
    let src = &w.src;
    let pod_at = format!("pod {}", src.label());
    let Some(node_name) = src.node.clone() else {
        return Err(path.stop(Hop::new(HopKind::Pod, pod_at, "the pod is not scheduled").drop("the pod has no node")));
    };
    let Some(node) = w.nodes.get(&node_name) else {
        return Err(path.stop(
            Hop::new(HopKind::Pod, pod_at, "its node is not visible here")
                .unknown(format!("{node_name}'s state is not visible from here (run on {node_name})")),
        ));
    };
    // 1. The pod: eth0 and its route.
    path.add(pod_hop(src, p.dst, &pod_at))?;
    // 2. Its veth's host end, on the bridge.
    let (hop, bridge) = veth_hop(node, src, &node_name, true);
    path.add(hop)?;
    let bridge = bridge.expect("a passing veth hop names its bridge");
    // A destination on the pod's own subnet is switched by the bridge, not routed.
    let on_link = src.routes.iter().filter(|r| r.dst.contains(&p.dst)).max_by_key(|r| r.dst.prefix_len());
    if src.eth0.is_some() && on_link.is_some_and(|r| r.gateway.is_none()) {
        path.add(bridge_hop(
            node,
            bridge,
            &node_name,
            "the destination is on the pod's own subnet: switched, not routed",
        ))?;
        path.add(policy_hop(node, &node_name, p, Direction::Egress))?;
        path.add(policy_hop(node, &node_name, p, Direction::Ingress))?;
        return deliver(w, node, &node_name, p, bridge, path);
    }
    path.add(bridge_hop(node, bridge, &node_name, "the pod's gateway: the packet is routed by the node"))?;
    // 3. Service DNAT.
    let mut p2 = p;
    if let Some(hop) = dnat_hop(w, node, &node_name, p, &mut p2) {
        path.add(hop)?;
    }
    let dst = p2.dst;
    // 4. The route lookup.
    let (hop, way) = route_hop(node, &node_name, p2, Some(bridge));
    path.add(hop)?;
    let way = way.expect("a passing route hop says where");
    // 5. Policy: the client's egress here; the server's ingress where it runs.
    path.add(policy_hop(node, &node_name, p2, Direction::Egress))?;
    let remote = match way {
        Way::Bridge(_) => {
            path.add(policy_hop(node, &node_name, p2, Direction::Ingress))?;
            return deliver(w, node, &node_name, p2, bridge, path);
        }
        Way::Local => {
            path.add(
                Hop::new(HopKind::Deliver, node_name.clone(), format!("{dst} is this node's own address"))
                    .fact("node", &node_name),
            )?;
            return Ok(Verdict::Delivered { to: format!("node {node_name}") });
        }
        Way::Out(oif) => {
            path.add(
                Hop::new(HopKind::Leave, node_name.clone(), format!("leaves the cluster by {}", node.dev(Some(oif))))
                    .fact("device", node.dev(Some(oif)))
                    .line("traffic from pods to outside the pod network is masqueraded to the node's address"),
            )?;
            return Ok(Verdict::Delivered { to: format!("{dst} (outside the cluster)") });
        }
        Way::Vxlan(dev, gw) => {
            let (hop, outer) = vxlan_hop(node, &node_name, dev, gw);
            path.add(hop)?;
            outer.expect("a passing VXLAN hop names the outer destination")
        }
        Way::Direct(gw) => {
            let route = path.hops.iter().rev().find(|h| h.kind == HopKind::Route);
            let dev = route.and_then(|h| h.facts.get("device").cloned()).unwrap_or_default();
            let bgp = route.is_some_and(|h| h.facts.contains_key("bgp_peer"));
            path.add(direct_hop(&node_name, &dev, gw, bgp))?;
            // Through the routers on the way (a rack's, the core's), to the next node.
            let mut gw = gw;
            for _ in 0..MAX_ROUTERS {
                let Some(r) = w.routers.iter().find(|r| r.addrs.contains(&gw)) else { break };
                let (hop, next) = router_hop(r, dst);
                path.add(hop)?;
                gw = next.expect("a passing router hop names its next hop");
            }
            gw
        }
    };
    // 6. The remote node.
    let Some((rname, rnode)) = w.nodes.iter().find(|(_, n)| n.underlay_ip == Some(remote)) else {
        let why = match w.node_ips.get(&remote) {
            Some(n) => {
                format!("{n} ({remote}) is not visible from here: run `flatnet trace` on {n} for the rest of the path")
            }
            None => format!("no node with underlay address {remote} is known; the packet leaves for {remote}"),
        };
        let at = w.node_ips.get(&remote).cloned().unwrap_or_else(|| remote.to_string());
        return Err(path.stop(Hop::new(HopKind::Decap, at, "the next node").unknown(why)));
    };
    let in_dev = match way {
        Way::Vxlan(dev, _) => {
            let (hop, vx) = decap_hop(node, dev, rnode, rname);
            path.add(hop)?;
            vx
        }
        _ => rnode.links.iter().find(|l| l.addrs.iter().any(|a| a.addr() == remote)).map_or(0, |l| l.index),
    };
    let (hop, way2) = route_hop(rnode, rname, p2, Some(in_dev));
    path.add(hop)?;
    let Some(Way::Bridge(rbridge)) = way2 else {
        return Err(path
            .stop(Hop::new(HopKind::Deliver, rname.clone(), "the destination pod").drop(format!(
                "{rname} does not route {dst} to its pod bridge: the address is not a pod of {rname}"
            ))));
    };
    path.add(policy_hop(rnode, rname, p2, Direction::Ingress))?;
    deliver(w, rnode, rname, p2, rbridge, path)
}

fn deliver(w: &World, node: &NodeFacts, at: &str, p: Packet, bridge: u32, path: &mut Walk) -> Result<Verdict, Verdict> {
    let Some(pod) = w.pods.get(&p.dst) else {
        return Err(
            path.stop(Hop::new(HopKind::Deliver, at, "no pod has this address").drop(format!("no pod has {}", p.dst)))
        );
    };
    path.add(bridge_hop(node, bridge, at, "the destination's bridge"))?;
    path.add(veth_hop(node, pod, at, false).0)?;
    let mut hop =
        Hop::new(HopKind::Deliver, format!("pod {}", pod.label()), format!("eth0 {}", p.dst)).fact("pod", pod.label());
    if let Some(e) = &pod.eth0 {
        hop = hop.fact("device", &e.name).line(link_line(e));
        if !e.addrs.iter().any(|a| a.addr() == p.dst) {
            hop = hop.drop(format!("{} is not on the pod's eth0", p.dst));
        }
    }
    path.add(hop)?;
    Ok(Verdict::Delivered { to: format!("pod {}", pod.label()) })
}
