//! `flatnet doctor`: the usual causes of a broken pod network on one node, each checked
//! against what the node's kernel really has, and each with the way to fix it. The shell
//! reads [`Facts`]; [`diagnose`] judges them.

use crate::node_network::{Backend, VXLAN_OVERHEAD, VxlanSettings, vtep_ip};
use crate::trace::{Fdb, LinkFacts, Neighbour, RouteFacts};
use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;
use std::net::Ipv4Addr;

/// A peer node as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFacts {
    pub name: String,
    pub underlay_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Net>,
    pub vtep_mac: Option<[u8; 6]>,
}

/// What the shell read from one node.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub node: String,
    pub backend: Backend,
    pub vxlan: VxlanSettings,
    pub bridge: String,
    /// `nft --version`'s output, or why it could not run.
    pub nft: Option<Result<String, String>>,
    pub forwarding: Option<bool>,
    /// net.bridge.bridge-nf-call-iptables; None when br_netfilter is not loaded.
    pub bridge_nf: Option<bool>,
    pub links: Vec<LinkFacts>,
    pub routes: Vec<RouteFacts>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<Fdb>,
    pub underlay_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Net>,
    pub peers: Vec<PeerFacts>,
    /// `nft -j list ruleset`, when nft ran.
    pub ruleset: Option<Value>,
    /// Whether each peer's VTEP answered a ping through the tunnel.
    pub tunnel: Vec<(String, bool)>,
    /// The agent's /healthz: Ok, or what went wrong.
    pub agent: Option<Result<(), String>>,
    /// The agent's /readyz: Ok, or which reconciler is failing and why.
    pub agent_ready: Option<Result<(), String>>,
    /// The BGP sessions as the agent reports them (backend bgp).
    pub bgp_sessions: Vec<BgpSessionFacts>,
}

/// One BGP session: the peer, its state, and the last error the speaker saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BgpSessionFacts {
    pub name: String,
    pub peer: String,
    pub state: String,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A stable identifier: `nft`, `forwarding`, `br-netfilter`, `bridge`, `vxlan-device`,
    /// `fdb`, `routes` (host-gw), `mtu`, `vxlan-port`, `tunnel`, `agent`, `reconcilers`.
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Check {
    Check { check, status: Status::Ok, detail: detail.into(), fix: None }
}
fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { check, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
}
fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { check, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
}

fn mac_text(m: &[u8; 6]) -> String {
    crate::names::format_mac(m)
}

/// Every check, in the order a packet needs them.
pub fn diagnose(f: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match &f.nft {
        Some(Ok(v)) => ok("nft", v.trim().to_string()),
        Some(Err(e)) => fail(
            "nft",
            format!(
                "nft cannot run ({e}): doctor and `flatnet trace` read the rulesets with it (the agent \
                 writes them over netlink and does not need it)"
            ),
            "install nftables 1.0.1 or newer (Debian/Ubuntu: apt install nftables)",
        ),
        None => fail("nft", "nft was not checked", "install nftables"),
    });
    out.push(match f.forwarding {
        Some(true) => ok("forwarding", "net.ipv4.ip_forward = 1"),
        Some(false) => fail(
            "forwarding",
            "net.ipv4.ip_forward = 0: the node drops every packet between pods and to other nodes",
            "sysctl -w net.ipv4.ip_forward=1 (the agent sets it on each pass: is it running?)",
        ),
        None => fail("forwarding", "net.ipv4.ip_forward cannot be read", "check /proc/sys/net/ipv4/ip_forward"),
    });
    out.push(match f.bridge_nf {
        Some(true) => ok("br-netfilter", "net.bridge.bridge-nf-call-iptables = 1"),
        Some(false) => warn(
            "br-netfilter",
            "net.bridge.bridge-nf-call-iptables = 0: traffic between pods of this node skips Service and NetworkPolicy rules",
            "sysctl -w net.bridge.bridge-nf-call-iptables=1",
        ),
        None => warn(
            "br-netfilter",
            "br_netfilter is not loaded: traffic between pods of this node skips Service and NetworkPolicy rules",
            "modprobe br_netfilter, then restart the agent",
        ),
    });
    let bridge = f.links.iter().find(|l| l.name == f.bridge);
    let gw = f.pod_cidr.and_then(|c| c.hosts().next());
    out.push(match bridge {
        None => fail(
            "bridge",
            format!("{} is missing: pods on this node are cut off from everything", f.bridge),
            format!(
                "the CNI plugin creates {b} at the next pod's ADD; for the pods already running: \
                 ip link add {b} type bridge && ip link set {b} up{} && reattach their host veths (ip link set <veth> master {b}), \
                 or delete those pods so they are re-created",
                gw.map(|g| format!(" && ip addr add {g}/{} dev {}", f.pod_cidr.map_or(24, |c| c.prefix_len()), f.bridge))
                    .unwrap_or_default(),
                b = f.bridge
            ),
        ),
        Some(b) if !b.up => fail("bridge", format!("{} is down", b.name), format!("ip link set {} up", b.name)),
        Some(b) if gw.is_some_and(|g| !b.addrs.iter().any(|a| a.addr() == g)) => fail(
            "bridge",
            format!("{} lacks the pods' gateway address {}", b.name, gw.expect("checked")),
            format!(
                "ip addr add {}/{} dev {}",
                gw.expect("checked"),
                f.pod_cidr.map_or(24, |c| c.prefix_len()),
                b.name
            ),
        ),
        Some(b) => ok("bridge", format!("{} up, mtu {}", b.name, b.mtu)),
    });
    let underlay = f.links.iter().find(|l| f.underlay_ip.is_some_and(|ip| l.addrs.iter().any(|a| a.addr() == ip)));
    let vx = f.links.iter().find(|l| l.name == f.vxlan.device());
    if f.backend == Backend::Vxlan {
        out.push(vxlan_device(f, vx));
        out.push(fdb(f, vx));
    }
    if f.backend == Backend::HostGw {
        out.push(direct_routes(f));
    }
    out.push(mtu(f, bridge, vx, underlay));
    if f.backend == Backend::Vxlan {
        out.push(vxlan_port(f));
        if !f.tunnel.is_empty() {
            let down: Vec<&str> = f.tunnel.iter().filter(|(_, up)| !up).map(|(n, _)| n.as_str()).collect();
            out.push(if down.is_empty() {
                ok("tunnel", format!("every peer's VTEP answers through {} ({})", f.vxlan.device(), f.tunnel.len()))
            } else {
                fail(
                    "tunnel",
                    format!("no answer through {} from {}", f.vxlan.device(), down.join(", ")),
                    format!(
                        "run `flatnet doctor` on {} too; look for UDP {} blocked on the way, a missing FDB entry, or a VNI that differs",
                        down.join(", "),
                        f.vxlan.port
                    ),
                )
            });
        }
    }
    out.push(match &f.agent {
        Some(Ok(())) => ok("agent", "the agent answers /healthz"),
        Some(Err(e)) => fail(
            "agent",
            format!("the agent does not answer /healthz ({e}): nothing repairs this node's network"),
            "start the flatnet agent (DaemonSet pod, or `flatnet agent`), and read its log",
        ),
        None => warn("agent", "the agent's health was not checked", "pass --metrics-addr"),
    });
    if f.backend == Backend::Bgp {
        out.extend(bgp_sessions(f));
    }
    if let (Some(Ok(())), Some(ready)) = (&f.agent, &f.agent_ready) {
        out.push(match ready {
            Ok(()) => ok("reconcilers", "every reconciler of the agent (node, proxy, policy) is in sync"),
            Err(e) => fail(
                "reconcilers",
                format!("the agent runs but is not ready: {e}"),
                "read the agent's log: the failing reconciler retries with back-off, and `flatnet status` shows \
                 its last error; one that keeps restarting after a panic is a bug: report it with that log",
            ),
        });
    }
    out
}

/// A check per BGP session that is down, naming why and what to do; one ok otherwise.
fn bgp_sessions(f: &Facts) -> Vec<Check> {
    if f.bgp_sessions.is_empty() {
        return vec![warn(
            "bgp",
            "the agent reports no BGP session: no peer is configured, or no other node is in the mesh yet",
            "flatnet status shows the node's peering; set peers with --bgp-peers or the flatnet.dev/bgp-peers annotation",
        )];
    }
    let down: Vec<&BgpSessionFacts> = f.bgp_sessions.iter().filter(|s| s.state != "Established").collect();
    if down.is_empty() {
        return vec![ok("bgp", format!("{} BGP session(s) Established", f.bgp_sessions.len()))];
    }
    down.into_iter()
        .map(|s| {
            let why = s.last_error.as_deref().unwrap_or("it has not come up yet");
            let lower = why.to_lowercase();
            let fix = if lower.contains("refused") {
                format!("nothing accepts BGP on {}:179: is the peer's BGP running, or is TCP port 179 blocked between the two?", s.peer)
            } else if lower.contains("no route") || lower.contains("unreachable") {
                format!("this node has no route to {}: check the underlay's routing to the peer", s.peer)
            } else if lower.contains("as mismatch") || lower.contains("bad peer as") {
                "the AS numbers disagree: make the peer's configured AS and its own AS the same (--bgp-peers, flatnet.dev/bgp-as)".into()
            } else if lower.contains("hold timer") {
                format!("{} stopped answering (keepalives lost): is it up, and is the path to it dropping packets?", s.peer)
            } else if lower.contains("timed out") {
                format!("connecting to {}:179 times out: a firewall drops it, or the peer is down", s.peer)
            } else {
                format!("read the agent's log and the peer's for the session with {}", s.peer)
            };
            fail("bgp", format!("BGP session with {} ({}) is {}: {why}", s.name, s.peer, s.state), fix)
        })
        .collect()
}

fn vxlan_device(f: &Facts, vx: Option<&LinkFacts>) -> Check {
    let name = f.vxlan.device();
    let Some(d) = vx else {
        return fail(
            "vxlan-device",
            format!("{name} is missing: no packet leaves for another node"),
            "restart the flatnet agent: it creates the device on its first pass",
        );
    };
    match d.vxlan {
        Some(v) if v.vni != f.vxlan.vni || v.port != f.vxlan.port => fail(
            "vxlan-device",
            format!(
                "{name} has VNI {} port {}, the cluster uses VNI {} port {}",
                v.vni, v.port, f.vxlan.vni, f.vxlan.port
            ),
            format!("ip link delete {name}; the agent re-creates it with the cluster's settings"),
        ),
        Some(_) if !d.up => fail("vxlan-device", format!("{name} is down"), format!("ip link set {name} up")),
        Some(v) => ok("vxlan-device", format!("{name} VNI {} UDP {} up", v.vni, v.port)),
        None => fail("vxlan-device", format!("{name} is not a VXLAN device"), format!("ip link delete {name}")),
    }
}

/// For each peer: the route to its pod CIDR, the neighbour entry for its VTEP, and the
/// FDB entry that says where that VTEP lives.
fn fdb(f: &Facts, vx: Option<&LinkFacts>) -> Check {
    let Some(d) = vx else { return warn("fdb", "no VXLAN device to check", "see vxlan-device") };
    let dev = &d.name;
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    for p in f.peers.iter().filter(|p| p.name != f.node) {
        let (Some(cidr), Some(ip), Some(mac)) = (p.pod_cidr, p.underlay_ip, p.vtep_mac) else {
            problems.push(format!("{} has not published its VTEP yet", p.name));
            continue;
        };
        let vtep = vtep_ip(cidr);
        if !f.routes.iter().any(|r| r.dst == cidr && r.oif == Some(d.index)) {
            problems.push(format!("no route to {} ({}) via {dev}", cidr, p.name));
            fixes.push(format!("ip route replace {cidr} via {vtep} dev {dev} onlink"));
        }
        if !f.neighbours.iter().any(|n| n.ifindex == d.index && n.ip == vtep && n.mac == Some(mac)) {
            problems.push(format!("no neighbour entry {vtep} → {} for {}", mac_text(&mac), p.name));
            fixes.push(format!("ip neigh replace {vtep} lladdr {} dev {dev} nud permanent", mac_text(&mac)));
        }
        if !f.fdb.iter().any(|e| e.ifindex == d.index && e.mac == mac && e.dst == ip) {
            problems.push(format!("no FDB entry {} → {ip} for {}", mac_text(&mac), p.name));
            fixes.push(format!("bridge fdb append {} dev {dev} dst {ip}", mac_text(&mac)));
        }
    }
    if problems.is_empty() {
        let peers = f.peers.iter().filter(|p| p.name != f.node).count();
        ok("fdb", format!("route, neighbour and FDB entry in place for each of {peers} peer(s)"))
    } else {
        fail(
            "fdb",
            format!("{}: packets for those nodes' pods are not encapsulated to them", problems.join("; ")),
            format!("restart the flatnet agent (it programs them every pass), or by hand: {}", fixes.join("; ")),
        )
    }
}

/// host-gw: each peer's Pod CIDR routed to its node's address.
fn direct_routes(f: &Facts) -> Check {
    let mut missing = Vec::new();
    for p in f.peers.iter().filter(|p| p.name != f.node) {
        let (Some(cidr), Some(ip)) = (p.pod_cidr, p.underlay_ip) else { continue };
        if !f.routes.iter().any(|r| r.dst == cidr && r.gateway == Some(ip)) {
            missing.push((p.name.clone(), cidr, ip));
        }
    }
    if missing.is_empty() {
        return ok("routes", "each peer's Pod CIDR is routed to its node");
    }
    fail(
        "routes",
        format!(
            "no route to {}",
            missing.iter().map(|(n, c, ip)| format!("{c} via {ip} ({n})")).collect::<Vec<_>>().join(", ")
        ),
        format!(
            "restart the flatnet agent, or by hand: {}",
            missing.iter().map(|(_, c, ip)| format!("ip route replace {c} via {ip}")).collect::<Vec<_>>().join("; ")
        ),
    )
}

fn mtu(f: &Facts, bridge: Option<&LinkFacts>, vx: Option<&LinkFacts>, underlay: Option<&LinkFacts>) -> Check {
    let Some(u) = underlay else {
        return warn("mtu", "the underlay device (holding the node's InternalIP) was not found", "check --iface");
    };
    let tunnel_max = match f.backend {
        Backend::Vxlan => u.mtu.saturating_sub(VXLAN_OVERHEAD),
        Backend::HostGw | Backend::Bgp => u.mtu,
    };
    if let Some(d) = vx.filter(|_| f.backend == Backend::Vxlan)
        && d.mtu > tunnel_max
    {
        return fail(
            "mtu",
            format!(
                "{} has MTU {}, but {} ({}) leaves room for {tunnel_max} after VXLAN's {VXLAN_OVERHEAD} bytes: big packets between nodes are lost",
                d.name, d.mtu, u.name, u.mtu
            ),
            format!("ip link set {} mtu {tunnel_max} (the agent sets it on each pass)", d.name),
        );
    }
    let pod_max = vx.filter(|_| f.backend == Backend::Vxlan).map_or(tunnel_max, |d| d.mtu.min(tunnel_max));
    let too_big: Vec<String> = f
        .links
        .iter()
        .filter(|l| bridge.is_some_and(|b| l.index == b.index || l.master == Some(b.index)) && l.mtu > pod_max)
        .map(|l| format!("{} ({})", l.name, l.mtu))
        .collect();
    if !too_big.is_empty() {
        return fail(
            "mtu",
            format!(
                "pod-side devices with an MTU above {pod_max}, what fits through to other nodes: {}",
                too_big.join(", ")
            ),
            format!(
                "the pods' MTU comes from the subnet file the agent writes ({pod_max}); re-create those pods, or ip link set <dev> mtu {pod_max}"
            ),
        );
    }
    ok("mtu", format!("pods {pod_max}, underlay {} {}", u.name, u.mtu))
}

/// A rule on a hook that takes packets in (`prerouting`, `input`, `ingress`) that drops or
/// rejects UDP to the VXLAN port.
fn vxlan_port(f: &Facts) -> Check {
    let Some(rs) = &f.ruleset else { return warn("vxlan-port", "the ruleset could not be read", "see nft") };
    let port = f.vxlan.port;
    let mut chains: Vec<(String, String, String)> = Vec::new();
    for o in rs["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = o.get("chain")
            && matches!(c["hook"].as_str(), Some("prerouting" | "input" | "ingress"))
        {
            chains.push((
                c["family"].as_str().unwrap_or("").into(),
                c["table"].as_str().unwrap_or("").into(),
                c["name"].as_str().unwrap_or("").into(),
            ));
        }
    }
    for o in rs["nftables"].as_array().into_iter().flatten() {
        let Some(r) = o.get("rule") else { continue };
        let key = (
            r["family"].as_str().unwrap_or("").to_string(),
            r["table"].as_str().unwrap_or("").to_string(),
            r["chain"].as_str().unwrap_or("").to_string(),
        );
        if !chains.contains(&key) {
            continue;
        }
        let expr = r["expr"].as_array().cloned().unwrap_or_default();
        let blocks = expr.iter().any(|e| e.get("drop").is_some() || e.get("reject").is_some());
        let hits_port = expr.iter().any(|e| {
            let Some(m) = e.get("match") else { return false };
            let is_dport = m["left"]["payload"]["field"] == "dport"
                && matches!(m["left"]["payload"]["protocol"].as_str(), Some("udp" | "th"));
            is_dport && port_in(&m["right"], port) && m["op"] != "!="
        });
        if blocks && hits_port {
            let (fam, table, chain) = key;
            let handle = r["handle"].as_u64().map(|h| h.to_string()).unwrap_or_else(|| "<handle>".into());
            return fail(
                "vxlan-port",
                format!(
                    "table {fam} {table}, chain {chain} drops UDP port {port}: VXLAN packets from other nodes never arrive"
                ),
                format!(
                    "allow UDP {port} from the other nodes (nft delete rule {fam} {table} {chain} handle {handle})"
                ),
            );
        }
    }
    ok("vxlan-port", format!("no nftables rule drops UDP {port} on the way in"))
}

fn port_in(right: &Value, port: u16) -> bool {
    let p = u64::from(port);
    match right {
        Value::Number(n) => n.as_u64() == Some(p),
        Value::Object(o) => {
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                return r.len() == 2 && r[0].as_u64().is_some_and(|a| a <= p) && r[1].as_u64().is_some_and(|b| p <= b);
            }
            o.get("set").and_then(Value::as_array).is_some_and(|s| s.iter().any(|x| port_in(x, port)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn link(index: u32, name: &str, mtu: u32, master: Option<u32>, addrs: &[&str]) -> LinkFacts {
        LinkFacts { mtu, kind: None, ..crate::trace::tests::link(index, name, "", master, addrs) }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// A healthy node-1 with one peer, node-2.
    fn healthy() -> Facts {
        let vx = crate::trace::VxlanFacts { vni: 1, port: 8472, local: None, underlay: Some(2) };
        Facts {
            node: "node-1".into(),
            backend: Backend::Vxlan,
            vxlan: VxlanSettings::default(),
            bridge: "cni0".into(),
            nft: Some(Ok("nftables v1.0.6".into())),
            forwarding: Some(true),
            bridge_nf: Some(true),
            links: vec![
                link(2, "eth0", 1500, None, &["192.168.1.2/24"]),
                link(3, "cni0", 1450, None, &["10.244.1.1/24"]),
                LinkFacts { vxlan: Some(vx), ..link(4, "flatnet.1", 1450, None, &[]) },
                link(5, "veth1", 1450, Some(3), &[]),
            ],
            routes: vec![RouteFacts {
                dst: "10.244.2.0/24".parse().unwrap(),
                gateway: Some(ip("10.244.2.0")),
                oif: Some(4),
            }],
            neighbours: vec![Neighbour { ifindex: 4, ip: ip("10.244.2.0"), mac: Some(MAC), state: "permanent".into() }],
            fdb: vec![Fdb { ifindex: 4, mac: MAC, dst: ip("192.168.1.3") }],
            underlay_ip: Some(ip("192.168.1.2")),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            peers: vec![PeerFacts {
                name: "node-2".into(),
                underlay_ip: Some(ip("192.168.1.3")),
                pod_cidr: Some("10.244.2.0/24".parse().unwrap()),
                vtep_mac: Some(MAC),
            }],
            ruleset: Some(json!({"nftables": []})),
            tunnel: vec![("node-2".into(), true)],
            agent: Some(Ok(())),
            agent_ready: Some(Ok(())),
            bgp_sessions: Vec::new(),
        }
    }

    #[test]
    fn a_bgp_session_down_is_named_with_its_cause() {
        let mut f = healthy();
        f.backend = Backend::Bgp;
        f.bgp_sessions = vec![
            BgpSessionFacts {
                name: "rack-1".into(),
                peer: "192.168.1.254".into(),
                state: "Established".into(),
                last_error: None,
            },
            BgpSessionFacts {
                name: "node-3".into(),
                peer: "192.168.1.13".into(),
                state: "Active".into(),
                last_error: Some("hold timer expired (no message for 9 s)".into()),
            },
        ];
        let checks: Vec<Check> = diagnose(&f).into_iter().filter(|c| c.check == "bgp").collect();
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].status, Status::Fail);
        assert!(
            checks[0].detail.contains("node-3 (192.168.1.13) is Active: hold timer expired"),
            "{}",
            checks[0].detail
        );
        f.bgp_sessions.truncate(1);
        assert!(diagnose(&f).iter().any(|c| c.check == "bgp" && c.status == Status::Ok));
    }

    fn failing(f: &Facts) -> Vec<&'static str> {
        diagnose(f).into_iter().filter(|c| c.status == Status::Fail).map(|c| c.check).collect()
    }

    #[test]
    fn a_healthy_node_passes_every_check() {
        let checks = diagnose(&healthy());
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:#?}");
    }

    #[test]
    fn each_fault_is_named_with_its_fix() {
        let mut f = healthy();
        f.forwarding = Some(false);
        assert_eq!(failing(&f), ["forwarding"]);

        let mut f = healthy();
        f.links.retain(|l| l.name != "cni0");
        assert_eq!(failing(&f), ["bridge"]);

        let mut f = healthy();
        f.links.retain(|l| l.name != "flatnet.1");
        assert!(failing(&f).starts_with(&["vxlan-device"]));

        let mut f = healthy();
        f.fdb.clear();
        assert_eq!(failing(&f), ["fdb"]);
        let c = diagnose(&f).into_iter().find(|c| c.check == "fdb").unwrap();
        assert!(c.detail.contains("node-2"), "{c:?}");
        assert!(c.fix.unwrap().contains("bridge fdb append 02:00:00:00:00:02 dev flatnet.1 dst 192.168.1.3"));

        let mut f = healthy();
        f.links.iter_mut().filter(|l| l.name == "eth0").for_each(|l| l.mtu = 1400);
        assert_eq!(failing(&f), ["mtu"]);
        let mut f = healthy();
        f.links.iter_mut().filter(|l| l.name == "veth1").for_each(|l| l.mtu = 1500);
        assert_eq!(failing(&f), ["mtu"]);

        let mut f = healthy();
        f.ruleset = Some(json!({"nftables": [
            {"chain": {"family": "inet", "table": "fw", "name": "in", "hook": "input"}},
            {"rule": {"family": "inet", "table": "fw", "chain": "in", "handle": 3, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 8472}},
                {"drop": null}]}},
        ]}));
        assert_eq!(failing(&f), ["vxlan-port"]);
        assert!(diagnose(&f).iter().any(|c| c.fix.as_deref().is_some_and(|x| x.contains("handle 3"))));

        let mut f = healthy();
        f.backend = Backend::HostGw;
        f.routes.clear();
        assert_eq!(failing(&f), ["routes"]);
        f.routes.push(RouteFacts {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some(ip("192.168.1.3")),
            oif: Some(2),
        });
        assert!(failing(&f).is_empty());

        let mut f = healthy();
        f.nft = Some(Err("No such file or directory".into()));
        assert_eq!(failing(&f), ["nft"]);

        let mut f = healthy();
        f.tunnel = vec![("node-2".into(), false)];
        f.agent = Some(Err("connection refused".into()));
        assert_eq!(failing(&f), ["tunnel", "agent"]);

        let mut f = healthy();
        f.agent_ready = Some(Err("not ready: proxy: the proxy reconciler stopped: it panicked".into()));
        assert_eq!(failing(&f), ["reconcilers"]);
        let c = diagnose(&f).into_iter().find(|c| c.check == "reconcilers").unwrap();
        assert!(c.detail.contains("proxy: the proxy reconciler stopped"), "{c:?}");
    }
}
