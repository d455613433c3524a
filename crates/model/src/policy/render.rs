//! A policy's chain in one direction, as nft rules: what it reads of the cluster is the
//! policy alone. The sets its rules use are named here, by what decides their members;
//! the planner finds the members.

use super::members::Members;
use super::{Direction, Key, Peer, Policy, PortMatch, Proto, Rule, counter_name};
use crate::proxy::render::eq;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

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

/// A set a policy chain uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SetUse {
    /// Pods, found by the planner.
    Members(Members),
    /// Address blocks, named by their content.
    Block(Arc<Vec<(Ipv4Addr, Ipv4Addr)>>),
}

/// The chain of one policy in one direction.
#[derive(Debug, Clone)]
pub(super) struct PolicyChain {
    /// None when the policy allows nothing in this direction.
    pub name: Option<String>,
    pub rules: Arc<Vec<String>>,
    /// The sets its rules use, by name.
    pub uses: Vec<(String, SetUse)>,
    /// The counter of the packets the policy drops in this direction.
    pub counter: String,
}

/// The chain of `policy` (named `key`) in `dir`: a rule per (rule, peer, port) that
/// accepts.
pub(super) fn policy_chain(dir: Direction, key: &Key, policy: &Policy) -> PolicyChain {
    let list = match dir {
        Direction::Ingress => policy.ingress.as_ref(),
        Direction::Egress => policy.egress.as_ref(),
    };
    let mut r = Render { uses: Vec::new() };
    let mut rules = Vec::new();
    for rule in list.into_iter().flatten() {
        r.render_rule(dir, key, policy, rule, &mut rules);
    }
    let name = (!rules.is_empty()).then(|| chain_name(&format!("pol-{}-{}/{}", dir.word(), key.0, key.1), &rules));
    PolicyChain { name, rules: Arc::new(rules), uses: r.uses, counter: counter_name(dir, key) }
}

/// The sets of one policy chain, as its rules name them.
struct Render {
    uses: Vec<(String, SetUse)>,
}

impl Render {
    fn set(&mut self, prefix: &str, id: &str, set: SetUse) -> String {
        let name = hash_name(prefix, id);
        self.uses.push((name.clone(), set));
        name
    }

    fn peer_match(&mut self, dir: Direction, peer: &Peer) -> Value {
        let set = match peer {
            Peer::Pods { .. } => self.set("pods", &format!("{peer:?}"), SetUse::Members(Members::Peer(peer.clone()))),
            Peer::Block { cidr, except } => {
                let ranges = block_ranges(*cidr, except);
                self.set("cidr", &format!("{ranges:?}"), SetUse::Block(Arc::new(ranges)))
            }
        };
        eq(peer_addr(dir), json!(format!("@{set}")))
    }

    /// The set of (address, protocol, port) of every pod among `peers` (or every pod
    /// when there are none) that has a port called `port` of protocol `proto`.
    fn named_port_set(&mut self, peers: Option<&Peer>, proto: Proto, port: &str) -> String {
        let members = Members::NamedPort(peers.cloned(), proto, port.to_string());
        self.set("nport", &format!("{peers:?}/{proto:?}/{port}"), SetUse::Members(members))
    }

    /// The (address, protocol, port) of each pod of this node that `policy` selects and
    /// that has a port called `port`: a named port of an ingress rule, resolved on each
    /// destination pod.
    fn selected_port_set(&mut self, key: &Key, policy: &Policy, proto: Proto, port: &str) -> String {
        let members = Members::Selected {
            ns: key.0.clone(),
            selector: policy.pod_selector.clone(),
            proto,
            name: port.to_string(),
        };
        self.set("nport", &format!("{key:?}/ingress/{proto:?}/{port}"), SetUse::Members(members))
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
}

/// A chain's name: a prefix that says what it is for, and a hash of its rules, so a
/// chain's content never changes under its name. Long prefixes are cut (nft names
/// are at most 256 bytes).
pub(super) fn chain_name(prefix: &str, rules: &[String]) -> String {
    let h = crate::names::fnv1a(&rules.iter().map(String::as_str).collect::<Vec<_>>());
    format!("{}-{h:016x}", &prefix[..prefix.floor_char_boundary(200)])
}
