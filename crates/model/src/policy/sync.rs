//! The policy table's state, the base every node has, and the one transaction that takes
//! one state to another: nothing unchanged is rewritten, sets change element by element,
//! chains are added before anything points at them and removed after nothing does.

use super::{FAMILY, Proto, TABLE};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// A member of a named-port set: (address, protocol, port).
pub type PortElem = (Ipv4Addr, Proto, u16);

/// What the table holds (desired, or as read from the kernel). Chains and `cidr-` sets
/// are named by their content, so only their names are compared. Sets and rules are
/// shared: a plan hands out what it kept from the last one without copying it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub counters: BTreeSet<String>,
    pub pod_sets: BTreeMap<String, Arc<BTreeSet<Ipv4Addr>>>,
    pub block_sets: BTreeMap<String, Arc<Vec<(Ipv4Addr, Ipv4Addr)>>>,
    pub port_sets: BTreeMap<String, Arc<BTreeSet<PortElem>>>,
    /// Chain name → rules (`{"expr": …}`), empty when read from the kernel.
    pub chains: BTreeMap<String, Arc<Vec<String>>>,
    pub ingress: BTreeMap<Ipv4Addr, String>,
    pub egress: BTreeMap<Ipv4Addr, String>,
    /// This node's pods: traffic from one to itself (through a Service) is always allowed.
    pub local: BTreeSet<Ipv4Addr>,
}

/// The base chains: egress first, then ingress, both on the `forward` hook after the
/// Service proxy's DNAT. A policy chain that allows a packet accepts it, which ends only
/// the chain of its direction: the other direction's base chain still runs.
const BASE_CHAINS: [(&str, i32, &str); 2] = [("egress", 0, "saddr"), ("ingress", 1, "daddr")];
const BASE_VERSION: &str = "flatnet-policy base v2";

/// The comment on the first rule of each base chain: a different one means the base is
/// out of date.
pub fn base_marker() -> String {
    BASE_VERSION.to_string()
}

/// The base chains, whose first rules carry the marker.
pub const BASE_CHAIN_NAMES: [&str; 2] = [BASE_CHAINS[0].0, BASE_CHAINS[1].0];

fn obj(kind: &str, body: Value) -> Value {
    let mut b = body;
    b["family"] = json!(FAMILY);
    b["table"] = json!(TABLE);
    json!({ kind: b })
}

fn ip(field: &str) -> Value {
    json!({"payload": {"protocol": "ip", "field": field}})
}

/// The table, its base chains, maps and self set, and the base chains' rules (replaced
/// as a whole, in the same transaction, so no packet sees a half-made chain).
pub fn base_transaction() -> Vec<Value> {
    let mut out = vec![
        json!({"add": {"table": {"family": FAMILY, "name": TABLE}}}),
        json!({"add": obj("set", json!({"name": "local-self", "type": ["ipv4_addr", "ipv4_addr"]}))}),
    ];
    for (chain, prio, field) in BASE_CHAINS {
        let rule = |expr: Value, comment: &str| json!({"add": obj("rule", json!({"chain": chain, "expr": expr, "comment": comment}))});
        out.extend([
            json!({"add": obj("chain", json!({"name": chain, "type": "filter", "hook": "forward", "prio": prio, "policy": "accept"}))}),
            json!({"add": obj("map", json!({"name": chain, "type": "ipv4_addr", "map": "verdict"}))}),
            json!({"flush": obj("chain", json!({"name": chain}))}),
            rule(
                json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]),
                BASE_VERSION,
            ),
            rule(
                json!([{"match": {"op": "==", "left": {"concat": [ip("saddr"), ip("daddr")]}, "right": "@local-self"}}, {"accept": null}]),
                "a pod reaching itself (through a Service) is always allowed",
            ),
            rule(json!([{"vmap": {"key": ip(field), "data": format!("@{chain}")}}]), &format!("{chain} of this node's isolated pods")),
        ]);
    }
    out
}

fn set_decl(name: &str, ty: Value, interval: bool) -> String {
    let mut body = json!({"name": name, "type": ty});
    if interval {
        body["flags"] = json!(["interval"]);
    }
    json!({"add": obj("set", body)}).to_string()
}

fn elements(op: &str, set: &str, elems: Vec<Value>) -> Option<String> {
    (!elems.is_empty()).then(|| json!({ op: obj("element", json!({"name": set, "elem": elems})) }).to_string())
}

fn port_elem(e: &(Ipv4Addr, Proto, u16)) -> Value {
    json!({"concat": [e.0.to_string(), e.1.word(), e.2]})
}
fn self_elem(ip: &Ipv4Addr) -> Value {
    json!({"concat": [ip.to_string(), ip.to_string()]})
}
fn range_elem(r: &(Ipv4Addr, Ipv4Addr)) -> Value {
    if r.0 == r.1 { json!(r.0.to_string()) } else { json!({"range": [r.0.to_string(), r.1.to_string()]}) }
}

fn set_changes<K: Ord>(
    t: &mut Vec<String>,
    name: &str,
    old: Option<&BTreeSet<K>>,
    new: &BTreeSet<K>,
    elem: impl Fn(&K) -> Value,
) -> usize {
    let empty = BTreeSet::new();
    let old = old.unwrap_or(&empty);

    let del: Vec<Value> = old.difference(new).map(&elem).collect();
    let add: Vec<Value> = new.difference(old).map(&elem).collect();
    let n = del.len() + add.len();
    t.extend(elements("delete", name, del));
    t.extend(elements("add", name, add));
    n
}

fn map_changes(
    t: &mut Vec<String>,
    name: &str,
    old: &BTreeMap<Ipv4Addr, String>,
    new: &BTreeMap<Ipv4Addr, String>,
) -> usize {
    let del: Vec<Value> =
        old.iter().filter(|(k, v)| new.get(*k) != Some(v)).map(|(k, _)| json!(k.to_string())).collect();
    let add: Vec<Value> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, v)| json!([k.to_string(), {"jump": {"target": v}}]))
        .collect();
    let n = del.len() + add.len();
    t.extend(elements("delete", name, del));
    t.extend(elements("add", name, add));
    n
}

/// What a transaction does, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub chains_added: usize,
    pub chains_removed: usize,
    pub sets_added: usize,
    pub sets_removed: usize,
    pub elements_changed: usize,
}

/// The nft commands that take the table from `old` to `new` (empty when equal).
pub fn diff(old: &State, new: &State) -> (Vec<String>, Counts) {
    let mut t = Vec::new();
    let mut n = Counts::default();
    for c in new.counters.difference(&old.counters) {
        t.push(json!({"add": obj("counter", json!({"name": c}))}).to_string());
    }
    // Sets: new ones, then element changes (a new set's elements are all additions).
    for (name, ranges) in &new.block_sets {
        if !old.block_sets.contains_key(name) {
            t.push(set_decl(name, json!("ipv4_addr"), true));
            t.extend(elements("add", name, ranges.iter().map(range_elem).collect()));
            n.sets_added += 1;
        }
    }
    for (name, ips) in &new.pod_sets {
        if !old.pod_sets.contains_key(name) {
            t.push(set_decl(name, json!("ipv4_addr"), false));
            n.sets_added += 1;
        }
        if old.pod_sets.get(name) != Some(ips) {
            n.elements_changed +=
                set_changes(&mut t, name, old.pod_sets.get(name).map(|s| &**s), ips, |ip| json!(ip.to_string()));
        }
    }
    for (name, elems) in &new.port_sets {
        if !old.port_sets.contains_key(name) {
            t.push(set_decl(name, json!(["ipv4_addr", "inet_proto", "inet_service"]), false));
            n.sets_added += 1;
        }
        if old.port_sets.get(name) != Some(elems) {
            n.elements_changed += set_changes(&mut t, name, old.port_sets.get(name).map(|s| &**s), elems, port_elem);
        }
    }
    // Chains, before the map elements that jump to them; all declared before any rule
    // (a pod's chain jumps to its policies' chains).
    let added: Vec<(&String, &Arc<Vec<String>>)> =
        new.chains.iter().filter(|(c, _)| !old.chains.contains_key(*c)).collect();
    for (name, _) in &added {
        t.push(json!({"add": obj("chain", json!({"name": name}))}).to_string());
    }
    for (name, rules) in added {
        let chain = Value::String(name.to_string()).to_string();
        for r in rules.iter() {
            // r is `{"expr":…}`: its fields follow ours, its closing brace closes the rule.
            t.push(format!(
                r#"{{"add":{{"rule":{{"family":"{FAMILY}","table":"{TABLE}","chain":{chain},{}}}}}"#,
                &r[1..]
            ));
        }
        n.chains_added += 1;
    }
    n.elements_changed += set_changes(&mut t, "local-self", Some(&old.local), &new.local, self_elem);
    n.elements_changed += map_changes(&mut t, "egress", &old.egress, &new.egress);
    n.elements_changed += map_changes(&mut t, "ingress", &old.ingress, &new.ingress);
    // What nothing uses any more: chains, then sets, then counters.
    // Every removed chain is emptied before any is deleted: one may jump to another.
    let removed: Vec<&String> = old.chains.keys().filter(|c| !new.chains.contains_key(*c)).collect();
    for name in &removed {
        t.push(json!({"flush": obj("chain", json!({"name": name}))}).to_string());
    }
    for name in &removed {
        t.push(json!({"delete": obj("chain", json!({"name": name}))}).to_string());
        n.chains_removed += 1;
    }
    let gone_sets = old
        .pod_sets
        .keys()
        .filter(|s| !new.pod_sets.contains_key(*s))
        .chain(old.block_sets.keys().filter(|s| !new.block_sets.contains_key(*s)))
        .chain(old.port_sets.keys().filter(|s| !new.port_sets.contains_key(*s)));
    for name in gone_sets {
        t.push(json!({"delete": obj("set", json!({"name": name}))}).to_string());
        n.sets_removed += 1;
    }
    for c in old.counters.difference(&new.counters) {
        t.push(json!({"delete": obj("counter", json!({"name": c}))}).to_string());
    }
    (t, n)
}

impl State {
    /// The table as `nft -j list table ip flatnet-policy` prints it. What it cannot
    /// read is left out, so the next sync writes it again.
    pub fn from_listing(listing: &Value) -> Self {
        let mut s = State::default();
        let ip = |v: &Value| v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
        for o in listing["nftables"].as_array().into_iter().flatten() {
            if let Some(c) = o.get("counter").filter(|c| c["table"] == TABLE) {
                s.counters.extend(c["name"].as_str().map(str::to_string));
            }
            if let Some(c) = o.get("chain").filter(|c| c["table"] == TABLE)
                && let Some(name) = c["name"].as_str()
                && !BASE_CHAINS.iter().any(|(b, _, _)| *b == name)
            {
                s.chains.insert(name.to_string(), Arc::default());
            }
            let Some(set) = o.get("set").or_else(|| o.get("map")).filter(|c| c["table"] == TABLE) else { continue };
            let Some(name) = set["name"].as_str() else { continue };
            let elems = set["elem"].as_array().cloned().unwrap_or_default();
            let concat = |v: &Value| v["concat"].as_array().cloned().unwrap_or_default();
            match name {
                "ingress" | "egress" => {
                    let m = elems
                        .iter()
                        .filter_map(|e| Some((ip(e.get(0)?)?, e.get(1)?["jump"]["target"].as_str()?.to_string())))
                        .collect();
                    if name == "ingress" { s.ingress = m } else { s.egress = m }
                }
                "local-self" => s.local = elems.iter().filter_map(|e| ip(concat(e).first()?)).collect(),
                n if n.starts_with("pods-") => {
                    s.pod_sets.insert(n.to_string(), Arc::new(elems.iter().filter_map(ip).collect()));
                }
                n if n.starts_with("cidr-") => {
                    s.block_sets.insert(n.to_string(), Arc::default());
                }
                n if n.starts_with("nport-") => {
                    let e = elems
                        .iter()
                        .filter_map(|e| {
                            let p = concat(e);
                            Some((
                                ip(p.first()?)?,
                                Proto::parse(p.get(1)?.as_str()?)?,
                                u16::try_from(p.get(2)?.as_u64()?).ok()?,
                            ))
                        })
                        .collect();
                    s.port_sets.insert(n.to_string(), Arc::new(e));
                }
                _ => {}
            }
        }
        s
    }

    /// How many pods are isolated (ingress, egress) and how many chains carry them.
    pub fn summary(&self) -> String {
        format!(
            "{} pod(s) isolated for ingress, {} for egress, {} chain(s), {} set(s)",
            self.ingress.len(),
            self.egress.len(),
            self.chains.len(),
            self.pod_sets.len() + self.block_sets.len() + self.port_sets.len()
        )
    }
}
