//! A small evaluator for flatnet's own nftables tables, as `nft -j list table` prints
//! them: it runs one packet through a chain and says which rule decided, so `flatnet
//! trace` reads the verdict from the kernel's ruleset instead of guessing it from the
//! API. It knows the expressions flatnet writes (addresses, protocols, ports, their
//! concatenations, named sets and maps, jumps, counters); anything else is reported as
//! something it cannot evaluate, never guessed.

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// One rule as listed: its expressions and comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub expr: Vec<Value>,
    pub comment: Option<String>,
}

/// The chains and sets of one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub sets: BTreeMap<String, Vec<Value>>,
    pub chains: BTreeMap<String, Vec<Rule>>,
}

impl Table {
    /// Table `name` out of a listing (`nft -j list table …` or `list ruleset`).
    pub fn from_listing(listing: &Value, name: &str) -> Self {
        let mut t = Table::default();
        for o in listing["nftables"].as_array().into_iter().flatten() {
            if let Some(c) = o.get("chain").filter(|c| c["table"] == name)
                && let Some(n) = c["name"].as_str()
            {
                t.chains.entry(n.to_string()).or_default();
            }
            if let Some(r) = o.get("rule").filter(|r| r["table"] == name)
                && let Some(chain) = r["chain"].as_str()
            {
                t.chains.entry(chain.to_string()).or_default().push(Rule {
                    expr: r["expr"].as_array().cloned().unwrap_or_default(),
                    comment: r["comment"].as_str().map(str::to_string),
                });
            }
            if let Some(s) = o.get("set").or_else(|| o.get("map")).filter(|s| s["table"] == name)
                && let Some(n) = s["name"].as_str()
            {
                t.sets.insert(n.to_string(), s["elem"].as_array().cloned().unwrap_or_default());
            }
        }
        t
    }

    /// The verdict of map `map` for `key` (`jump`/`goto` target), when it has one.
    pub fn map_target(&self, map: &str, key: &[Key]) -> Option<String> {
        self.sets.get(map)?.iter().find_map(|e| {
            let pair = e.as_array()?;
            let (k, v) = (pair.first()?, pair.get(1)?);
            element_matches(key, k).then(|| target(v)).flatten()
        })
    }

    /// Whether set `set` holds `key`.
    pub fn set_has(&self, set: &str, key: &[Key]) -> Option<bool> {
        Some(self.sets.get(set)?.iter().any(|e| element_matches(key, e)))
    }
}

fn target(v: &Value) -> Option<String> {
    v.get("jump").or_else(|| v.get("goto"))?["target"].as_str().map(str::to_string)
}

/// The protocol of a packet.
pub use crate::l4::Proto as L4;

/// The fields of a packet the evaluator can look at. A new connection's first packet:
/// conntrack state `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: L4,
    /// The destination port (None for ICMP).
    pub port: Option<u16>,
}

/// One component of a lookup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Ip(Ipv4Addr),
    Proto(L4),
    Port(u16),
    Word(String),
}

fn key_of(left: &Value, p: &Packet) -> Option<Vec<Key>> {
    if let Some(parts) = left.get("concat").and_then(Value::as_array) {
        let mut out = Vec::new();
        for part in parts {
            out.extend(key_of(part, p)?);
        }
        return Some(out);
    }
    if let Some(pl) = left.get("payload") {
        return match (pl["protocol"].as_str()?, pl["field"].as_str()?) {
            ("ip", "saddr") => Some(vec![Key::Ip(p.src)]),
            ("ip", "daddr") => Some(vec![Key::Ip(p.dst)]),
            (_, "dport") => Some(vec![Key::Port(p.port?)]),
            _ => None,
        };
    }
    if let Some(m) = left.get("meta") {
        return match m["key"].as_str()? {
            "l4proto" | "protocol" => Some(vec![Key::Proto(p.proto)]),
            _ => None,
        };
    }
    if let Some(ct) = left.get("ct") {
        return (ct["key"] == "state").then(|| vec![Key::Word("new".into())]);
    }
    None
}

fn scalar_matches(k: &Key, v: &Value) -> bool {
    match (k, v) {
        (Key::Ip(ip), Value::String(s)) => s.parse::<Ipv4Addr>().is_ok_and(|x| x == *ip),
        (Key::Ip(ip), Value::Object(o)) => {
            if let Some(pre) = o.get("prefix") {
                let (Some(addr), Some(len)) = (pre["addr"].as_str(), pre["len"].as_u64()) else { return false };
                let Ok(net) = ipnet::Ipv4Net::new(addr.parse().unwrap_or(Ipv4Addr::UNSPECIFIED), len as u8) else {
                    return false;
                };
                return net.contains(ip);
            }
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                let ips: Vec<Ipv4Addr> = r.iter().filter_map(|x| x.as_str()?.parse().ok()).collect();
                return ips.len() == 2 && ips[0] <= *ip && *ip <= ips[1];
            }
            false
        }
        (Key::Proto(p), Value::String(s)) => s == p.word(),
        (Key::Proto(p), Value::Number(n)) => n.as_u64() == Some(u64::from(p.number())),
        (Key::Port(port), Value::Number(n)) => n.as_u64() == Some(u64::from(*port)),
        (Key::Port(port), Value::Object(o)) => o.get("range").and_then(Value::as_array).is_some_and(|r| {
            let b: Vec<u64> = r.iter().filter_map(Value::as_u64).collect();
            b.len() == 2 && b[0] <= u64::from(*port) && u64::from(*port) <= b[1]
        }),
        (Key::Word(w), Value::String(s)) => s == w,
        (Key::Word(w), Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(w)),
        _ => false,
    }
}

/// Whether a set element (a scalar, a range or prefix, or a concatenation) holds `key`.
fn element_matches(key: &[Key], elem: &Value) -> bool {
    let elem = elem.get("elem").and_then(|e| e.get("val")).unwrap_or(elem);
    match elem.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.len() == key.len() && key.iter().zip(parts).all(|(k, v)| scalar_matches(k, v)),
        None => key.len() == 1 && scalar_matches(&key[0], elem),
    }
}

/// How a run through a chain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `accept` in `chain` (whose rule had `comment`).
    Accept { chain: String, comment: Option<String> },
    /// `drop` in `chain`, after the named counters of that rule.
    Drop { chain: String, counters: Vec<String> },
    /// The end of the chain without a verdict: the base chain's policy decides.
    Fallthrough,
    /// A rule the evaluator cannot decide for this packet.
    Unknown(String),
}

/// One run: the outcome and the chains it went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub outcome: Outcome,
    pub path: Vec<String>,
}

impl Table {
    /// Runs `p` through `chain` (jumps followed, at most 16 deep).
    pub fn run(&self, chain: &str, p: &Packet) -> Run {
        let mut path = Vec::new();
        let outcome = self.run_in(chain, p, &mut path, 0);
        Run { outcome, path }
    }

    fn run_in(&self, chain: &str, p: &Packet, path: &mut Vec<String>, depth: usize) -> Outcome {
        path.push(chain.to_string());
        let Some(rules) = self.chains.get(chain) else {
            return Outcome::Unknown(format!("chain {chain} is not in the table"));
        };
        if depth > 16 {
            return Outcome::Unknown("jumps nested too deep".into());
        }
        'rules: for r in rules {
            let mut counters = Vec::new();
            for e in &r.expr {
                if let Some(m) = e.get("match") {
                    let Some(key) = key_of(&m["left"], p) else {
                        return Outcome::Unknown(format!("cannot evaluate {} in {chain}", m["left"]));
                    };
                    let right = &m["right"];
                    let hit = match right.as_str().and_then(|s| s.strip_prefix('@')) {
                        Some(set) => match self.set_has(set, &key) {
                            Some(h) => h,
                            None => return Outcome::Unknown(format!("set {set} is not in the table")),
                        },
                        None => match right.get("set").and_then(Value::as_array) {
                            Some(items) => items.iter().any(|i| element_matches(&key, i)),
                            None => element_matches(&key, right),
                        },
                    };
                    let want = m["op"].as_str() != Some("!=");
                    if hit != want {
                        continue 'rules;
                    }
                } else if let Some(c) = e.get("counter") {
                    if let Some(name) = c.as_str() {
                        counters.push(name.to_string());
                    }
                } else if e.get("accept").is_some() {
                    return Outcome::Accept { chain: chain.to_string(), comment: r.comment.clone() };
                } else if e.get("drop").is_some() {
                    return Outcome::Drop { chain: chain.to_string(), counters };
                } else if let Some(t) = e.get("jump").and_then(|j| j["target"].as_str()) {
                    match self.run_in(t, p, path, depth + 1) {
                        Outcome::Fallthrough => {}
                        other => return other,
                    }
                } else if let Some(t) = e.get("goto").and_then(|j| j["target"].as_str()) {
                    return self.run_in(t, p, path, depth + 1);
                } else if e.get("return").is_some() {
                    return Outcome::Fallthrough;
                } else if let Some(v) = e.get("vmap") {
                    let Some(key) = key_of(&v["key"], p) else {
                        return Outcome::Unknown(format!("cannot evaluate {} in {chain}", v["key"]));
                    };
                    let Some(map) = v["data"].as_str().and_then(|s| s.strip_prefix('@')) else {
                        return Outcome::Unknown(format!("an anonymous verdict map in {chain}"));
                    };
                    if let Some(t) = self.map_target(map, &key) {
                        match self.run_in(&t, p, path, depth + 1) {
                            Outcome::Fallthrough => {}
                            other => return other,
                        }
                    }
                }
            }
        }
        Outcome::Fallthrough
    }
}
