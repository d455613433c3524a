//! Diffing what the kernel has against the plan, as one nftables transaction: a full
//! sync against the table as read from the kernel, or an update of a few Services
//! against what the proxier last applied. Nothing unchanged is rewritten; new chains are
//! added before the map elements that point at them, and old ones removed after.

use super::ServiceKey;
use super::plan::{Fragment, Proto, Summary};
use super::render::{self, BASE_CHAINS, FAMILY, TABLE};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// What the kernel's table holds, as read at a full sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
    pub service_ips: BTreeMap<(Ipv4Addr, Proto, u16), String>,
    pub node_ports: BTreeMap<(Proto, u16), String>,
    pub no_endpoints: BTreeSet<(Ipv4Addr, Proto, u16)>,
    pub no_endpoint_node_ports: BTreeSet<(Proto, u16)>,
    pub hairpin: BTreeSet<Ipv4Addr>,
}

impl Actual {
    /// Reads the table as `nft -j` lists it: chain and set names, and the elements of
    /// the base's maps and sets (each `[key, value]` for a map). Elements it cannot read
    /// are left out, so the next sync writes them again.
    /// `elements` hands over each set's elements (each is asked for once), so that no
    /// copy of them is kept while they are read: at 10,000 Services they are most of a
    /// restarted agent's memory.
    pub fn from_listing(chains: Vec<String>, sets: Vec<String>, elements: &mut dyn FnMut(&str) -> Vec<Value>) -> Self {
        let parts = |v: &Value| v["concat"].as_array().cloned().unwrap_or_default();
        let ip = |v: &Value| v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
        let proto = |v: &Value| v.as_str().and_then(Proto::parse);
        let port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
        let svc_key = |v: &Value| {
            let p = parts(v);
            Some((ip(p.first()?)?, proto(p.get(1)?)?, port(p.get(2)?)?))
        };
        let np_key = |v: &Value| {
            let p = parts(v);
            Some((proto(p.first()?)?, port(p.get(1)?)?))
        };
        let target = |v: &Value| v["goto"]["target"].as_str().map(str::to_string);
        // A map's element is `[key, value]`.
        fn pair(e: &Value) -> Option<(&Value, &Value)> {
            Some((e.get(0)?, e.get(1)?))
        }
        // One set's elements at a time: each list is dropped before the next is asked for.
        let service_ips = {
            let listed = elements("service-ips");
            listed.iter().filter_map(|e| pair(e).and_then(|(k, v)| Some((svc_key(k)?, target(v)?)))).collect()
        };
        let node_ports = {
            let listed = elements("service-nodeports");
            listed.iter().filter_map(|e| pair(e).and_then(|(k, v)| Some((np_key(k)?, target(v)?)))).collect()
        };
        let no_endpoints = elements("no-endpoint-services").iter().filter_map(svc_key).collect();
        let no_endpoint_node_ports = elements("no-endpoint-nodeports").iter().filter_map(np_key).collect();
        let hairpin = elements("hairpin").iter().filter_map(|e| ip(parts(e).first()?)).collect();
        Self {
            chains: chains.into_iter().collect(),
            sets: sets.into_iter().collect(),
            service_ips,
            node_ports,
            no_endpoints,
            no_endpoint_node_ports,
            hairpin,
        }
    }
}

/// One transaction, and what it means.
#[derive(Debug, Default)]
pub struct Transaction {
    /// nft JSON commands, rendered; an entry may hold several, comma-separated.
    pub objects: Vec<String>,
    /// UDP endpoints that no longer receive traffic of some Service: their conntrack
    /// entries must go, or clients keep sending to them.
    pub removed_udp_endpoints: BTreeSet<(Ipv4Addr, u16)>,
    pub chains_added: usize,
    pub chains_removed: usize,
    pub elements_changed: usize,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// The three parts of a transaction, which the kernel must take in this order: new sets
/// and chains; the rules that fill new chains; then map and set elements, and what
/// nothing uses any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Declare = 0,
    Fill = 1,
    Finish = 2,
}

/// Where a transaction's commands go as they are made. A full sync fills each new chain
/// as its Service is planned, before it declares the chains (sorted, once every Service
/// is planned): a writer that compiles each command at once must keep the parts apart.
pub trait Sink {
    /// One object: one or more nft JSON commands, comma-separated.
    fn push(&mut self, part: Part, object: String);
}

/// A sink that keeps the objects, in the order the kernel takes them.
#[derive(Debug, Default)]
struct Collect([Vec<String>; 3]);

impl Sink for Collect {
    fn push(&mut self, part: Part, object: String) {
        self.0[part as usize].push(object);
    }
}

impl Collect {
    fn objects(self) -> Vec<String> {
        self.0.into_iter().flatten().collect()
    }
}

/// What the proxier has applied, per Service.
#[derive(Debug, Default)]
pub struct Proxier {
    applied: HashMap<ServiceKey, Summary>,
    /// How many Services DNAT to each endpoint IP (its hairpin element lives while > 0).
    hairpin: HashMap<Ipv4Addr, u32>,
}

// Elements are written straight as JSON text: at 10,000 Services a map's elements as
// `Value` trees were the largest thing a cold sync held besides its rules.
fn elem_key(key: &(Ipv4Addr, Proto, u16)) -> String {
    format!(r#"{{"concat":["{}","{}",{}]}}"#, key.0, key.1.word(), key.2)
}
fn np_key(key: &(Proto, u16)) -> String {
    format!(r#"{{"concat":["{}",{}]}}"#, key.0.word(), key.1)
}
fn hairpin_key(ip: &Ipv4Addr) -> String {
    format!(r#"{{"concat":["{ip}","{ip}"]}}"#)
}

/// Elements per command: the writer parses one command at a time, so a full sync's
/// ten thousand elements are never one tree in memory.
const ELEMENTS_PER_COMMAND: usize = 1000;

/// The commands that add (or delete) `elems` (each one element's JSON text) in `set`.
fn element(op: &str, set: &str, elems: &[String]) -> impl Iterator<Item = String> {
    let name = Value::from(set).to_string();
    elems.chunks(ELEMENTS_PER_COMMAND).map(move |chunk| {
        format!(
            r#"{{"{op}":{{"element":{{"family":"{FAMILY}","table":"{TABLE}","name":{name},"elem":[{}]}}}}}}"#,
            chunk.join(",")
        )
    })
}

/// Element changes of one map: (deletes, adds), a changed value being both.
fn map_diff<K: Ord>(
    old: &BTreeMap<K, String>,
    new: &BTreeMap<K, String>,
    key: impl Fn(&K) -> String,
) -> (Vec<String>, Vec<String>) {
    let del = old.iter().filter(|(k, v)| new.get(*k) != Some(v)).map(|(k, _)| key(k)).collect();
    let add = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, v)| format!(r#"[{},{{"goto":{{"target":{}}}}}]"#, key(k), Value::from(v.as_str())))
        .collect();
    (del, add)
}

fn set_diff<K: Ord>(old: &BTreeSet<K>, new: &BTreeSet<K>, key: impl Fn(&K) -> String) -> (Vec<String>, Vec<String>) {
    (old.difference(new).map(&key).collect(), new.difference(old).map(&key).collect())
}

/// Builds the transaction taking `old` to `new` into `out`, but for the rules that fill
/// new chains (`fill` writes those, as each Service's plan comes).
fn diff(old: &Actual, new: &Actual, new_affinity: &BTreeMap<String, u32>, out: &mut dyn Sink) -> Transaction {
    let mut t = Transaction::default();
    // 1. New affinity sets, then new chains.
    for s in new.sets.difference(&old.sets) {
        let timeout = new_affinity.get(s).copied().unwrap_or(10800);
        out.push(
            Part::Declare,
            json!({"add": {"set": {"family": FAMILY, "table": TABLE, "name": s, "type": "ipv4_addr",
            "flags": ["timeout"], "timeout": timeout}}})
            .to_string(),
        );
    }
    // Every new chain exists before any rule jumps to one of them.
    for c in new.chains.difference(&old.chains) {
        out.push(Part::Declare, render::add(render::chain_object(c)).to_string());
        t.chains_added += 1;
    }
    // 2. Elements: deletes (including changed values), then adds.
    let (d1, a1) = map_diff(&old.service_ips, &new.service_ips, elem_key);
    let (d2, a2) = map_diff(&old.node_ports, &new.node_ports, np_key);
    let (d3, a3) = set_diff(&old.no_endpoints, &new.no_endpoints, elem_key);
    let (d4, a4) = set_diff(&old.no_endpoint_node_ports, &new.no_endpoint_node_ports, np_key);
    let (d5, a5) = set_diff(&old.hairpin, &new.hairpin, hairpin_key);
    t.elements_changed = [&d1, &a1, &d2, &a2, &d3, &a3, &d4, &a4, &d5, &a5].iter().map(|v| v.len()).sum();
    let names = ["service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports", "hairpin"];
    let (dels, adds) = ([d1, d2, d3, d4, d5], [a1, a2, a3, a4, a5]);
    for (name, d) in names.iter().zip(dels) {
        element("delete", name, &d).for_each(|o| out.push(Part::Finish, o));
    }
    for (name, a) in names.iter().zip(adds) {
        element("add", name, &a).for_each(|o| out.push(Part::Finish, o));
    }
    // 3. Chains nothing points at any more, then the sets only they used.
    let base: BTreeSet<&str> = BASE_CHAINS.iter().map(|(n, _)| *n).collect();
    for c in old.chains.difference(&new.chains).filter(|c| !base.contains(c.as_str())) {
        out.push(Part::Finish, json!({"flush": render::chain_object(c)}).to_string());
        out.push(Part::Finish, json!({"delete": render::chain_object(c)}).to_string());
        t.chains_removed += 1;
    }
    let base_sets: BTreeSet<&str> = render::BASE_SETS.iter().map(|(n, _, _)| *n).collect();
    for s in old.sets.difference(&new.sets).filter(|s| !base_sets.contains(s.as_str())) {
        out.push(Part::Finish, json!({"delete": {"set": {"family": FAMILY, "table": TABLE, "name": s}}}).to_string());
    }
    t
}

/// The rules of a Service's chains that `old` lacks, to `out`: a chain the kernel has
/// keeps its rules (its name is a hash of them).
fn fill(old: &BTreeSet<String>, rules: BTreeMap<String, String>, out: &mut dyn Sink) {
    for (chain, r) in rules {
        if !old.contains(&chain) && !r.is_empty() {
            out.push(Part::Fill, r);
        }
    }
}

/// The kernel-shaped view of some Services' summaries (hairpin left empty).
fn merge<'a>(summaries: impl Iterator<Item = &'a Summary>) -> (Actual, BTreeMap<String, u32>) {
    let mut a = Actual::default();
    let mut affinity = BTreeMap::new();
    for s in summaries {
        a.chains.extend(s.chains.iter().cloned());
        a.sets.extend(s.affinity_sets.keys().cloned());
        affinity.extend(s.affinity_sets.iter().map(|(k, v)| (k.clone(), *v)));
        a.service_ips.extend(s.service_ips.iter().map(|(k, v)| (*k, v.clone())));
        a.node_ports.extend(s.node_ports.iter().map(|(k, v)| (*k, v.clone())));
        a.no_endpoints.extend(s.no_endpoints.iter().copied());
        a.no_endpoint_node_ports.extend(s.no_endpoint_node_ports.iter().copied());
    }
    (a, affinity)
}

fn udp_endpoints(s: &Summary) -> impl Iterator<Item = (Ipv4Addr, u16)> + '_ {
    s.endpoints.iter().filter(|(p, _, _)| *p == Proto::Udp).map(|(_, ip, port)| (*ip, *port))
}

impl Proxier {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many Services and endpoints are programmed.
    pub fn counts(&self) -> (usize, usize) {
        (self.applied.len(), self.applied.values().map(|s| s.endpoints.len()).sum())
    }

    /// The transaction that takes the kernel's table, as read, to the plan for every
    /// Service; the proxier then holds that plan as applied. Chains and sets of the
    /// table that no Service wants (and that are not the base's) are removed.
    pub fn full_sync(
        &mut self,
        actual: &Actual,
        plans: impl IntoIterator<Item = (ServiceKey, Fragment)>,
    ) -> Transaction {
        let mut out = Collect::default();
        let mut t = self.full_sync_into(actual, plans, &mut out);
        t.objects = out.objects();
        t
    }

    /// As `full_sync`, with the objects handed to `out` as they are made (the
    /// transaction returned has none). `plans` is consumed one Service at a time, and
    /// the rules of a chain the kernel lacks go to `out` at once: a full sync never
    /// holds the rules of every Service, and a restart over a table that is already
    /// right makes none.
    pub fn full_sync_into(
        &mut self,
        actual: &Actual,
        plans: impl IntoIterator<Item = (ServiceKey, Fragment)>,
        out: &mut dyn Sink,
    ) -> Transaction {
        // Base chains and sets are the base transaction's; keep them out of the diff.
        let mut old = actual.clone();
        old.chains.retain(|c| !BASE_CHAINS.iter().any(|(n, _)| n == c));
        old.sets.retain(|s| !render::BASE_SETS.iter().any(|(n, _, _)| n == s));
        let before: BTreeSet<(Ipv4Addr, u16)> = self.applied.values().flat_map(udp_endpoints).collect();
        self.applied = HashMap::new();
        for (k, f) in plans {
            fill(&old.chains, f.rules, out);
            self.applied.insert(k, f.summary);
        }
        let (mut desired, affinity) = merge(self.applied.values());
        let mut hairpin: HashMap<Ipv4Addr, u32> = HashMap::new();
        for ip in self.applied.values().flat_map(|s| &s.hairpin) {
            *hairpin.entry(*ip).or_default() += 1;
        }
        desired.hairpin = hairpin.keys().copied().collect();
        let after: BTreeSet<(Ipv4Addr, u16)> = self.applied.values().flat_map(udp_endpoints).collect();
        let mut t = diff(&old, &desired, &affinity, out);
        t.removed_udp_endpoints = before.difference(&after).copied().collect();
        self.hairpin = hairpin;
        t
    }

    /// The transaction for the Services in `changes` (None: deleted), against what was
    /// last applied for them.
    pub fn update(&mut self, changes: Vec<(ServiceKey, Option<Fragment>)>) -> Transaction {
        let empty = Summary::default();
        let (mut old, _) = merge(changes.iter().map(|(k, _)| self.applied.get(k).unwrap_or(&empty)));
        let (mut new, affinity) = merge(changes.iter().map(|(_, f)| f.as_ref().map_or(&empty, |f| &f.summary)));
        // Hairpin elements by reference count across every Service.
        let ips = |s: &Summary| s.hairpin.clone();
        let mut removed_udp = BTreeSet::new();
        for (k, f) in &changes {
            let before = self.applied.get(k).unwrap_or(&empty);
            let after = f.as_ref().map_or(&empty, |f| &f.summary);
            let after_udp: BTreeSet<_> = udp_endpoints(after).collect();
            removed_udp.extend(udp_endpoints(before).filter(|e| !after_udp.contains(e)));
            let (b, a) = (ips(before), ips(after));
            for ip in b.difference(&a) {
                let n = self.hairpin.entry(*ip).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.hairpin.remove(ip);
                    old.hairpin.insert(*ip);
                }
            }
            for ip in a.difference(&b) {
                let n = self.hairpin.entry(*ip).or_default();
                *n += 1;
                if *n == 1 {
                    new.hairpin.insert(*ip);
                }
            }
        }
        let mut out = Collect::default();
        for (k, f) in changes {
            match f {
                Some(f) => {
                    fill(&old.chains, f.rules, &mut out);
                    self.applied.insert(k, f.summary)
                }
                None => self.applied.remove(&k),
            };
        }
        let mut t = diff(&old, &new, &affinity, &mut out);
        t.objects = out.objects();
        t.removed_udp_endpoints = removed_udp;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Context, Endpoint, Service, ServicePort, Slice, plan_service};
    use super::*;

    fn ctx() -> Context {
        Context {
            node: "node-1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        }
    }

    fn svc(name: &str, ip: &str, proto: Proto) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: Some(ip.parse().unwrap()),
            ports: vec![ServicePort { name: String::new(), protocol: proto, port: 53, node_port: None }],
            ..Default::default()
        }
    }

    fn slice(ips: &[&str], proto: Proto) -> Slice {
        Slice {
            ports: vec![(String::new(), proto, 5353)],
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    ip: ip.parse().unwrap(),
                    node: Some("node-1".into()),
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect(),
        }
    }

    fn key(n: &str) -> ServiceKey {
        ("default".into(), n.into())
    }

    fn ops(t: &Transaction) -> Vec<String> {
        let all: Vec<Value> = serde_json::from_str(&format!("[{}]", t.objects.join(","))).unwrap();
        all.iter()
            .map(|o| {
                let (op, body) = o.as_object().unwrap().iter().next().unwrap();
                let (kind, b) = body.as_object().unwrap().iter().next().unwrap();
                format!("{op} {kind} {}", b["name"].as_str().or(b["chain"].as_str()).unwrap_or(""))
            })
            .collect()
    }

    #[test]
    fn an_endpoint_change_touches_only_its_service() {
        let mut p = Proxier::new();
        let a = plan_service(&ctx(), &svc("a", "10.96.0.5", Proto::Tcp), &[slice(&["10.244.2.2"], Proto::Tcp)]);
        let b = plan_service(&ctx(), &svc("b", "10.96.0.6", Proto::Tcp), &[slice(&["10.244.2.3"], Proto::Tcp)]);
        let t = p.full_sync(&Actual::default(), vec![(key("a"), a.clone()), (key("b"), b)]);
        assert_eq!(t.chains_added, 2);
        let a2 = plan_service(
            &ctx(),
            &svc("a", "10.96.0.5", Proto::Tcp),
            &[slice(&["10.244.2.2", "10.244.2.9"], Proto::Tcp)],
        );
        let t = p.update(vec![(key("a"), Some(a2))]);
        let o = ops(&t);
        // New chain, the map element re-pointed (delete + add), the new hairpin element, old chain gone.
        assert_eq!(t.chains_added, 1);
        assert_eq!(t.chains_removed, 1);
        assert!(o.iter().all(|s| !s.contains("svc-default/b/")), "{o:?}");
        let add_chain = o.iter().position(|s| s.starts_with("add chain")).unwrap();
        let add_elem = o.iter().position(|s| s == "add element service-ips").unwrap();
        let del_chain = o.iter().position(|s| s.starts_with("delete chain")).unwrap();
        assert!(add_chain < add_elem && add_elem < del_chain, "{o:?}");
        // Nothing to do when nothing changed.
        let t = p.update(vec![(key("a"), Some(a))]);
        assert_eq!(t.chains_added, 1);
        let a_same = plan_service(&ctx(), &svc("a", "10.96.0.5", Proto::Tcp), &[slice(&["10.244.2.2"], Proto::Tcp)]);
        assert!(p.update(vec![(key("a"), Some(a_same))]).is_empty());
    }

    #[test]
    fn full_sync_against_the_same_state_changes_nothing() {
        let a = plan_service(&ctx(), &svc("a", "10.96.0.5", Proto::Tcp), &[slice(&["10.244.2.2"], Proto::Tcp)]);
        let mut p = Proxier::new();
        p.full_sync(&Actual::default(), vec![(key("a"), a.clone())]);
        // What the kernel would list after that transaction, plus a stale chain.
        let mut actual = Actual {
            chains: a.summary.chains.clone(),
            service_ips: a.summary.service_ips.clone(),
            hairpin: ["10.244.2.2".parse().unwrap()].into(),
            ..Default::default()
        };
        actual.chains.extend(BASE_CHAINS.iter().map(|(n, _)| n.to_string()));
        let mut p2 = Proxier::new();
        assert!(p2.full_sync(&actual, vec![(key("a"), a.clone())]).is_empty(), "a restart rewrites nothing");
        actual.chains.insert("svc-default/gone/tcp/80-00000000".into());
        actual.chains.insert("postrouting".into());
        let t = p2.full_sync(&actual, vec![(key("a"), a)]);
        assert_eq!(t.chains_removed, 2, "stale chains of the table go: {:?}", ops(&t));
    }

    #[test]
    fn reads_what_nft_lists() {
        let mut listing = |name: &str| -> Vec<Value> {
            match name {
                "service-ips" => vec![json!([{"concat": ["10.96.0.10", "udp", 53]}, {"goto": {"target": "svc-x"}}])],
                "service-nodeports" => vec![json!([{"concat": ["tcp", 30080]}, {"goto": {"target": "ext-x"}}])],
                "no-endpoint-services" => vec![json!({"concat": ["10.96.0.40", "tcp", 80]})],
                "hairpin" => vec![json!({"concat": ["10.244.1.5", "10.244.1.5"]}), json!("garbage")],
                _ => vec![],
            }
        };
        let a = Actual::from_listing(vec!["svc-x".into()], vec!["hairpin".into()], &mut listing);
        assert_eq!(a.service_ips[&("10.96.0.10".parse().unwrap(), Proto::Udp, 53)], "svc-x");
        assert_eq!(a.node_ports[&(Proto::Tcp, 30080)], "ext-x");
        assert_eq!(a.no_endpoints.len(), 1);
        assert_eq!(a.hairpin.len(), 1);
    }

    #[test]
    fn removed_udp_endpoints_are_reported_and_hairpin_is_reference_counted() {
        let mut p = Proxier::new();
        let a = plan_service(&ctx(), &svc("a", "10.96.0.5", Proto::Udp), &[slice(&["10.244.2.2"], Proto::Udp)]);
        let b = plan_service(&ctx(), &svc("b", "10.96.0.6", Proto::Udp), &[slice(&["10.244.2.2"], Proto::Udp)]);
        p.full_sync(&Actual::default(), vec![(key("a"), a), (key("b"), b)]);
        let t = p.update(vec![(key("a"), None)]);
        assert_eq!(t.removed_udp_endpoints, [("10.244.2.2".parse().unwrap(), 5353)].into());
        assert!(!ops(&t).iter().any(|o| o.contains("hairpin")), "b still uses 10.244.2.2");
        let t = p.update(vec![(key("b"), None)]);
        assert!(ops(&t).contains(&"delete element hairpin".to_string()));
        assert_eq!(p.counts(), (0, 0));
    }
}
