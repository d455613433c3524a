//! From the cluster to the desired state of one node's policy table: the chains of its
//! isolated pods, the peer sets those chains use, and the maps that lead to them.

use super::sync::State;
use super::{Cluster, Direction, Key, Namespaces, Peer, Pod, Policy, PortMatch, Proto, Rule, counter_name};
use crate::proxy::render::eq;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

fn hash_name(prefix: &str, text: &str) -> String {
    format!("{prefix}-{:016x}", crate::names::fnv1a(&[text]))
}

/// The peer's address: the source of ingress traffic, the destination of egress traffic.
fn peer_addr(dir: Direction) -> Value {
    let field = match dir {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    json!({"payload": {"protocol": "ip", "field": field}})
}

/// (destination address, protocol, destination port): the destination pod's for ingress,
/// the peer's for egress, the same key either way.
fn port_key() -> Value {
    crate::proxy::render::service_key()
}

/// Addresses in `cidr` outside every `except`, as disjoint inclusive ranges.
pub fn block_ranges(cidr: Ipv4Net, except: &[Ipv4Net]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut out = vec![(u32::from(cidr.network()), u32::from(cidr.broadcast()))];
    for e in except {
        let (lo, hi) = (u32::from(e.network()), u32::from(e.broadcast()));
        out = out
            .into_iter()
            .flat_map(|(a, b)| {
                if hi < a || lo > b {
                    return vec![(a, b)];
                }
                let mut v = Vec::new();
                if lo > a {
                    v.push((a, lo - 1));
                }
                if hi < b {
                    v.push((hi + 1, b));
                }
                v
            })
            .collect();
    }
    out.into_iter().map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b))).collect()
}

/// Pods that can be peers: they have an address of their own.
fn addressed(c: &Cluster) -> impl Iterator<Item = (&Key, &Pod, Ipv4Addr)> {
    c.pods.iter().filter_map(|(k, p)| Some((k, p, p.ip?)))
}

struct Planner<'a> {
    cluster: &'a Cluster,
    state: State,
    /// Policy chains already made, by (policy, direction).
    rendered: HashMap<(Key, Direction), Option<String>>,
    node: &'a str,
}

impl Planner<'_> {
    fn namespace_matches(&self, scope: &Namespaces, ns: &str) -> bool {
        match scope {
            Namespaces::Own(own) => own == ns,
            Namespaces::Matching(sel) => {
                let empty = Default::default();
                sel.matches(self.cluster.namespaces.get(ns).unwrap_or(&empty))
            }
        }
    }

    fn peer_has(&self, peer: &Peer, key: &Key, pod: &Pod, ip: Ipv4Addr) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => self.namespace_matches(namespaces, &key.0) && pods.matches(&pod.labels),
            Peer::Block { cidr, except } => cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip)),
        }
    }

    /// The set of a pod peer, made (with its members) the first time it is used.
    fn pod_set(&mut self, peer: &Peer) -> String {
        let name = hash_name("pods", &format!("{peer:?}"));
        if !self.state.pod_sets.contains_key(&name) {
            let ips = addressed(self.cluster)
                .filter(|(k, p, ip)| self.peer_has(peer, k, p, *ip))
                .map(|(_, _, ip)| ip)
                .collect();
            self.state.pod_sets.insert(name.clone(), ips);
        }
        name
    }

    fn block_set(&mut self, cidr: Ipv4Net, except: &[Ipv4Net]) -> String {
        let ranges = block_ranges(cidr, except);
        let name = hash_name("cidr", &format!("{ranges:?}"));
        self.state.block_sets.insert(name.clone(), ranges);
        name
    }

    /// The set of (address, protocol, port) of every pod among `peers` (or every pod
    /// when there are none) that has a port called `port` of protocol `proto`.
    fn named_port_set(&mut self, peers: Option<&Peer>, proto: Proto, port: &str) -> String {
        let id = format!("{peers:?}/{proto:?}/{port}");
        self.port_set(&id, proto, port, |me, k, p, ip| peers.is_none_or(|peer| me.peer_has(peer, k, p, ip)))
    }

    /// The (address, protocol, port) of each pod of this node that `policy` selects and
    /// that has a port called `port`: a named port of an ingress rule, resolved on each
    /// destination pod.
    fn selected_port_set(&mut self, key: &Key, policy: &Policy, proto: Proto, port: &str) -> String {
        let id = format!("{key:?}/ingress/{proto:?}/{port}");
        self.port_set(&id, proto, port, |me, k, p, _| {
            p.node.as_deref() == Some(me.node) && selects(&key.0, policy, &k.0, p)
        })
    }

    /// The port set named after `id`: every addressed pod `which` takes, with its ports
    /// called `port` of protocol `proto`; made the first time it is used.
    fn port_set(
        &mut self,
        id: &str,
        proto: Proto,
        port: &str,
        which: impl Fn(&Self, &Key, &Pod, Ipv4Addr) -> bool,
    ) -> String {
        let name = hash_name("nport", id);
        if !self.state.port_sets.contains_key(&name) {
            let elems = addressed(self.cluster)
                .filter(|(k, p, ip)| which(self, k, p, *ip))
                .flat_map(|(_, p, ip)| {
                    p.ports.iter().filter(|np| np.proto == proto && np.name == port).map(move |np| (ip, proto, np.port))
                })
                .collect();
            self.state.port_sets.insert(name.clone(), elems);
        }
        name
    }

    fn peer_match(&mut self, dir: Direction, peer: &Peer) -> Value {
        let set = match peer {
            Peer::Pods { .. } => self.pod_set(peer),
            Peer::Block { cidr, except } => self.block_set(*cidr, except),
        };
        eq(peer_addr(dir), json!(format!("@{set}")))
    }

    /// The rules of one policy rule for local pod `pod`, each ending in `accept`
    /// (allowed in this direction: the direction's base chain is done). A rule whose ports resolve to nothing on this pod yields no rule.
    fn render_rule(&mut self, dir: Direction, key: &Key, policy: &Policy, rule: &Rule, out: &mut Vec<String>) {
        let peers: Vec<Option<&Peer>> =
            if rule.peers.is_empty() { vec![None] } else { rule.peers.iter().map(Some).collect() };
        // Port matches that do not depend on the peer: numbers per protocol.
        let mut numeric: BTreeMap<Proto, Vec<Value>> = BTreeMap::new();
        let mut any_port: BTreeSet<Proto> = BTreeSet::new();
        let mut named_egress: Vec<(Proto, &str)> = Vec::new();
        let mut named_ingress: Vec<Value> = Vec::new();
        for p in &rule.ports {
            match p {
                PortMatch::Any(proto) => {
                    any_port.insert(*proto);
                }
                PortMatch::Range(proto, a, b) => {
                    let v = if a == b { json!(a) } else { json!({"range": [a, b]}) };
                    numeric.entry(*proto).or_default().push(v);
                }
                // Ingress: the destination is one of this node's pods the policy selects;
                // the set holds each one's (address, protocol, port) for the name.
                PortMatch::Named(proto, name) if dir == Direction::Ingress => {
                    let set = self.selected_port_set(key, policy, *proto, name);
                    named_ingress.push(eq(port_key(), json!(format!("@{set}"))));
                }
                PortMatch::Named(proto, name) => named_egress.push((*proto, name)),
            }
        }
        let mut port_matches: Vec<Option<Value>> = Vec::new();
        if rule.ports.is_empty() {
            port_matches.push(None);
        }
        port_matches.extend(named_ingress.into_iter().map(Some));
        for proto in &any_port {
            port_matches.push(Some(eq(json!({"meta": {"key": "l4proto"}}), json!(proto.word()))));
        }
        // One rule per port or range: an anonymous set per rule would cost the kernel a
        // scan of every set of the table to name each one.
        for (proto, ports) in numeric.iter().filter(|(p, _)| !any_port.contains(p)) {
            let mut ports = ports.clone();
            ports.sort_by_key(Value::to_string);
            ports.dedup();
            for right in ports {
                port_matches.push(Some(eq(json!({"payload": {"protocol": proto.word(), "field": "dport"}}), right)));
            }
        }
        for peer in &peers {
            let pm = peer.map(|p| self.peer_match(dir, p));
            for port in &port_matches {
                let expr: Vec<Value> = pm.iter().chain(port.iter()).cloned().chain([json!({"accept": null})]).collect();
                out.push(json!({"expr": expr}).to_string());
            }
            // Egress to a named port: the set holds the peer's pods that have it.
            for (proto, name) in &named_egress {
                let set = self.named_port_set(*peer, *proto, name);
                out.push(json!({"expr": [eq(port_key(), json!(format!("@{set}"))), {"accept": null}]}).to_string());
            }
        }
    }

    /// The chain of one policy in one direction: a rule per (rule, peer, port) that
    /// accepts; None when the policy allows nothing in this direction.
    fn policy_chain(&mut self, dir: Direction, key: &Key, policy: &Policy) -> Option<String> {
        if let Some(name) = self.rendered.get(&(Key::clone(key), dir)) {
            return name.clone();
        }
        let list = match dir {
            Direction::Ingress => policy.ingress.as_ref(),
            Direction::Egress => policy.egress.as_ref(),
        };
        let mut rules = Vec::new();
        for rule in list.into_iter().flatten() {
            self.render_rule(dir, key, policy, rule, &mut rules);
        }
        let name = (!rules.is_empty()).then(|| chain_name(&format!("pol-{}-{}/{}", dir.word(), key.0, key.1), &rules));
        if let Some(n) = &name {
            self.state.chains.entry(n.clone()).or_insert(rules);
        }
        self.rendered.insert((Key::clone(key), dir), name.clone());
        name
    }

    /// The chain of a local pod in one direction: a jump to the chain of each policy
    /// isolating it (one that allows the packet accepts it), then a drop counted by each
    /// of those policies.
    fn pod_chain(&mut self, dir: Direction, policies: &[(&Key, &Policy)]) -> String {
        let mut rules = Vec::new();
        let mut counters = Vec::new();
        for (key, policy) in policies {
            if let Some(chain) = self.policy_chain(dir, key, policy) {
                rules.push(json!({"expr": [{"jump": {"target": chain}}]}).to_string());
            }
            let c = counter_name(dir, key);
            counters.push(json!({"counter": c}));
            self.state.counters.insert(c);
        }
        counters.push(json!({"drop": null}));
        rules.push(json!({"expr": counters}).to_string());
        let prefix = match dir {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        };
        let name = chain_name(prefix, &rules);
        self.state.chains.entry(name.clone()).or_insert(rules);
        name
    }
}

/// A chain's name: a prefix that says what it is for, and a hash of its rules, so a
/// chain's content never changes under its name. Long prefixes are cut (nft names
/// are at most 256 bytes).
fn chain_name(prefix: &str, rules: &[String]) -> String {
    let h = crate::names::fnv1a(&rules.iter().map(String::as_str).collect::<Vec<_>>());
    format!("{}-{h:016x}", &prefix[..prefix.floor_char_boundary(200)])
}

/// Does `policy` (in namespace `ns`) select `pod` (in namespace `pod_ns`)?
fn selects(ns: &str, policy: &Policy, pod_ns: &str, pod: &Pod) -> bool {
    ns == pod_ns && policy.pod_selector.matches(&pod.labels)
}

/// The desired state of node `node`'s policy table.
pub fn plan(cluster: &Cluster, node: &str) -> State {
    let mut p = Planner { cluster, state: State::default(), rendered: HashMap::new(), node };
    // Policies by namespace, so each pod looks at its own namespace's only.
    let mut by_ns: HashMap<&str, Vec<(&Key, &Policy)>> = HashMap::new();
    for (k, pol) in &cluster.policies {
        by_ns.entry(k.0.as_str()).or_default().push((k, pol));
    }
    let locals = cluster.pods.iter().filter(|(_, pod)| pod.node.as_deref() == Some(node));
    for ((ns, _), pod) in locals {
        let Some(ip) = pod.ip else { continue };
        p.state.local.insert(ip);
        let selecting: Vec<(&Key, &Policy)> = by_ns
            .get(ns.as_str())
            .into_iter()
            .flatten()
            .filter(|(_, pol)| selects(ns, pol, ns, pod))
            .copied()
            .collect();
        for dir in [Direction::Ingress, Direction::Egress] {
            let isolating: Vec<(&Key, &Policy)> = selecting
                .iter()
                .filter(|(_, pol)| match dir {
                    Direction::Ingress => pol.ingress.is_some(),
                    Direction::Egress => pol.egress.is_some(),
                })
                .copied()
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let chain = p.pod_chain(dir, &isolating);
            match dir {
                Direction::Ingress => p.state.ingress.insert(ip, chain),
                Direction::Egress => p.state.egress.insert(ip, chain),
            };
        }
    }
    p.state
}
