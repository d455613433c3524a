//! `flatnet trace`: the path one packet takes from a pod, hop by hop, built from the
//! kernel state each node really has (devices, routes, neighbour and FDB entries, the
//! Service proxy's and NetworkPolicy's tables). The shell reads that state into
//! [`World`]; [`build`] walks it as the kernel would; [`probe`] confirms each hop with
//! what a real packet did; [`render`] draws it.

pub mod nft;
pub mod probe;
pub mod render;

pub use nft::{L4, Packet};

use crate::names::{format_mac, pod_mac};
use crate::policy::Direction;
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
    fn dev(&self, index: Option<u32>) -> String {
        index.and_then(|i| self.link(i)).map_or_else(|| "?".into(), |l| l.name.clone())
    }
    pub fn lookup(&self, key: LookupKey) -> Option<&Lookup> {
        self.lookups.iter().find(|(k, _)| *k == key).map(|(_, l)| l)
    }
    fn vxlan_device(&self) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.vxlan.is_some())
    }
    /// The main-table route the kernel's answer came from: the longest prefix holding
    /// `dst` that leaves by the same device.
    fn matched_route(&self, dst: Ipv4Addr, l: &Lookup) -> Option<&RouteFacts> {
        self.routes
            .iter()
            .filter(|r| r.dst.contains(&dst) && (l.oif.is_none() || r.oif == l.oif))
            .max_by_key(|r| r.dst.prefix_len())
    }
    fn route_text(&self, r: &RouteFacts) -> String {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HopKind {
    Pod,
    Veth,
    Bridge,
    Dnat,
    Route,
    PolicyEgress,
    PolicyIngress,
    Vxlan,
    Direct,
    Decap,
    Deliver,
    Leave,
}

/// What a hop does with the packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Step {
    Pass,
    Drop { by: String },
    Unknown { why: String },
}

/// What the probe saw at a hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Seen {
    Seen { evidence: Vec<String> },
    Dropped { by: String, evidence: Vec<String> },
    NotSeen { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub kind: HopKind,
    /// Where: `pod ns/name`, a node's name, or `underlay`.
    pub at: String,
    pub summary: String,
    /// Machine-readable facts (device, route, endpoint, policy, outer addresses, VNI …).
    pub facts: BTreeMap<String, String>,
    /// The kernel state behind the hop, a line each.
    pub state: Vec<String>,
    pub step: Step,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<Seen>,
}

impl Hop {
    fn new(kind: HopKind, at: impl Into<String>, summary: impl Into<String>) -> Self {
        Hop {
            kind,
            at: at.into(),
            summary: summary.into(),
            facts: BTreeMap::new(),
            state: Vec::new(),
            step: Step::Pass,
            probe: None,
        }
    }
    fn fact(mut self, k: &str, v: impl ToString) -> Self {
        self.facts.insert(k.to_string(), v.to_string());
        self
    }
    fn line(mut self, s: impl Into<String>) -> Self {
        self.state.push(s.into());
        self
    }
    fn drop(mut self, by: impl Into<String>) -> Self {
        self.step = Step::Drop { by: by.into() };
        self
    }
    fn unknown(mut self, why: impl Into<String>) -> Self {
        self.step = Step::Unknown { why: why.into() };
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    Delivered { to: String },
    Dropped { at: String, by: String },
    Unknown { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub from: String,
    pub to: String,
    pub packet: Packet,
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<probe::Summary>,
}

fn link_line(l: &LinkFacts) -> String {
    let mut s = format!("{} ({}) mtu {} {}", l.name, l.kind.as_deref().unwrap_or("device"), l.mtu, state_word(l.up));
    if let Some(m) = l.mac {
        s.push_str(&format!(" mac {}", format_mac(&m)));
    }
    for a in &l.addrs {
        s.push_str(&format!(" inet {a}"));
    }
    s
}

fn state_word(up: bool) -> &'static str {
    if up { "UP" } else { "DOWN" }
}

/// Which way the node's route lookup sends the packet.
enum Way {
    Bridge(u32),
    Vxlan(u32, Ipv4Addr),
    Direct(Ipv4Addr),
    Local,
    Out(u32),
}

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
            let dev =
                path.hops.iter().rev().find(|h| h.kind == HopKind::Route).and_then(|h| h.facts.get("device").cloned());
            let dev = dev.unwrap_or_default();
            path.add(
                Hop::new(
                    HopKind::Direct,
                    node_name.clone(),
                    format!("sent as it is to {gw} on {dev}: no encapsulation"),
                )
                .fact("device", &dev)
                .fact("next_hop", gw)
                .line("host-gw: every node is on one L2 segment, and each Pod CIDR is routed to its node"),
            )?;
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

fn pod_hop(src: &PodFacts, dst: Ipv4Addr, at: &str) -> Hop {
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
fn veth_hop(node: &NodeFacts, pod: &PodFacts, at: &str, outbound: bool) -> (Hop, Option<u32>) {
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

fn bridge_hop(node: &NodeFacts, bridge: u32, at: &str, why: &str) -> Hop {
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

fn dnat_hop(w: &World, node: &NodeFacts, at: &str, p: Packet, out: &mut Packet) -> Option<Hop> {
    let proxy = node.proxy.as_ref()?;
    let port = p.port?;
    let key = [nft::Key::Ip(p.dst), nft::Key::Proto(p.proto), nft::Key::Port(port)];
    let hop = Hop::new(HopKind::Dnat, at, "Service DNAT").fact("service_ip", format!("{}:{port}", p.dst));
    if proxy.set_has("no-endpoint-services", &key) == Some(true) {
        let mut hop = hop;
        hop.summary = format!("{}:{port} has no ready endpoint: rejected at once", p.dst);
        return Some(
            hop.line(format!("{}:{port}/{} is in set no-endpoint-services", p.dst, p.proto.word()))
                .drop("the Service has no ready endpoint: rejected (table ip flatnet, set no-endpoint-services)"),
        );
    }
    let Some(chain) = proxy.map_target("service-ips", &key) else {
        if matches!(w.target, Some(Target::Service { .. })) {
            return Some(hop.drop(format!(
                "no element for {}:{port}/{} in map service-ips: the proxy has not programmed this Service port",
                p.dst,
                p.proto.word()
            )));
        }
        return None;
    };
    let eps = endpoints(proxy, &chain);
    let chosen = match w.chosen {
        Some(c) => Some((c, "chosen by the kernel for the probe (conntrack)")),
        None => eps.first().map(|e| ((e.0, e.1), "the first of them; each new connection picks one at random")),
    };
    let mut hop = hop
        .fact("map", "service-ips")
        .fact("chain", &chain)
        .fact("endpoints", eps.iter().map(|e| format!("{}:{}", e.0, e.1)).collect::<Vec<_>>().join(","))
        .line(format!("map service-ips: {}:{port}/{} → goto {chain}", p.dst, p.proto.word()));
    for (ip, port, comment) in &eps {
        hop = hop
            .line(format!("  dnat to {ip}:{port}{}", comment.as_ref().map(|c| format!("  ({c})")).unwrap_or_default()));
    }
    let Some(((ip, eport), how)) = chosen else {
        return Some(hop.drop(format!("chain {chain} has no endpoint")));
    };
    out.dst = ip;
    out.port = Some(eport);
    let who = w.pods.get(&ip).map(|p| format!(" (pod {})", p.label())).unwrap_or_default();
    hop.summary = format!("{}:{port} → {ip}:{eport}{who}, 1 of {} endpoint(s)", p.dst, eps.len());
    Some(hop.fact("endpoint", format!("{ip}:{eport}")).line(format!("following {ip}:{eport}: {how}")))
}

/// The DNAT targets of a Service chain: (address, port, the rule's comment).
fn endpoints(t: &nft::Table, chain: &str) -> Vec<(Ipv4Addr, u16, Option<String>)> {
    let mut out: Vec<(Ipv4Addr, u16, Option<String>)> = Vec::new();
    for r in t.chains.get(chain).into_iter().flatten() {
        for e in &r.expr {
            if let Some(d) = e.get("dnat")
                && let Some(ip) = d["addr"].as_str().and_then(|s| s.parse().ok())
            {
                let port = d["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
                if !out.iter().any(|(i, p, _)| *i == ip && *p == port) {
                    out.push((ip, port, r.comment.clone()));
                }
            }
        }
    }
    out
}

fn route_hop(node: &NodeFacts, at: &str, p: Packet, iif: Option<u32>) -> (Hop, Option<Way>) {
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
                hop.summary = format!("{} via {gw} dev {name} (direct route to the node)", p.dst);
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

fn policy_hop(node: &NodeFacts, at: &str, p: Packet, dir: Direction) -> Hop {
    let (kind, who, side) = match dir {
        Direction::Ingress => (HopKind::PolicyIngress, p.dst, "the destination's ingress"),
        Direction::Egress => (HopKind::PolicyEgress, p.src, "the source's egress"),
    };
    let base = dir.word();
    let hop = Hop::new(kind, at, format!("NetworkPolicy: {side}"));
    let Some(t) = &node.policy else {
        return hop.line("no table ip flatnet-policy: nothing isolates pods here").fact("verdict", "allow");
    };
    let run = t.run(base, &p);
    let path = run.path.join(" → ");
    let hop = hop.line(format!("table ip flatnet-policy, chain {path}"));
    match run.outcome {
        nft::Outcome::Fallthrough => {
            let mut h = hop.fact("verdict", "allow").line(format!("{who} is not in map {base}: no policy isolates it"));
            h.summary = format!("NetworkPolicy: {side}: {who} is not isolated, allowed");
            h
        }
        nft::Outcome::Accept { chain, comment } if chain == base => {
            let why = comment.unwrap_or_else(|| "accepted by the base chain".into());
            hop.fact("verdict", "allow").line(why)
        }
        nft::Outcome::Accept { chain, .. } => {
            let policy = policy_of_chain(&chain, base).unwrap_or_else(|| chain.clone());
            let mut h = hop.fact("verdict", "allow").fact("policy", &policy).fact("chain", &chain);
            h.summary = format!("NetworkPolicy: {side} allowed by {policy}");
            h
        }
        nft::Outcome::Drop { chain, counters } => {
            let policies: Vec<String> = counters
                .iter()
                .filter_map(|c| crate::policy::parse_counter_name(c).map(|(_, ns, n)| format!("{ns}/{n}")))
                .collect();
            let names = policies.join(", ");
            let mut h = hop.fact("verdict", "drop").fact("policy", &names).fact("chain", &chain);
            h.summary = format!("NetworkPolicy: {side} isolated by {names}; no rule allows this packet");
            h.drop(format!("NetworkPolicy {names} ({side} on {at}: chain {chain}, counter {})", counters.join(", ")))
        }
        nft::Outcome::Unknown(why) => hop.unknown(why),
    }
}

/// `ns/name` out of a policy chain's name `pol-<dir>-<ns>/<name>-<hash>`.
pub fn policy_of_chain(chain: &str, dir: &str) -> Option<String> {
    let rest = chain.strip_prefix(&format!("pol-{dir}-"))?;
    Some(rest.rsplit_once('-').map_or(rest, |(a, _)| a).to_string())
}

fn vxlan_hop(node: &NodeFacts, at: &str, dev: u32, gw: Ipv4Addr) -> (Hop, Option<Ipv4Addr>) {
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

fn decap_hop(from: &NodeFacts, dev: u32, rnode: &NodeFacts, rname: &str) -> (Hop, u32) {
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

#[cfg(test)]
pub(crate) mod tests;
