//! From the cluster to the desired state of one node's policy table: the chains of its
//! isolated pods, the peer sets those chains use, and the maps that lead to them.
//!
//! The planner keeps its state from one plan to the next and changes only what a
//! change touches, so one change costs in proportion to what it touches, not to the
//! cluster:
//! - a pod's chains are chosen again only when the pod, or a policy of its namespace,
//!   changes;
//! - a policy's chains are rendered again only when the policy changes;
//! - a set's members are found again only when a pod that changed is, or was, one of
//!   them, or when a namespace's labels change;
//! - chains, counters and sets are counted by their users, and leave the state with
//!   the last one.
//!
//! A plan after any sequence of plans equals a plan from nothing (a property test
//! holds it to that).

use super::members::{Members, Scope};
use super::render::{PolicyChain, SetUse, chain_name, policy_chain};
use super::sync::{PortElem, State};
use super::{Cluster, Direction, Key, Pod, Policy};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Hash maps with a fast hash: a plan looks up the pods and policies it keeps.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// What changed since the last plan, when the caller keeps count (a plan then compares
/// only these keys with what it saw last).
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub namespaces: BTreeSet<String>,
    pub pods: BTreeSet<Key>,
    pub policies: BTreeSet<Key>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.pods.is_empty() && self.policies.is_empty()
    }
}

/// A pod chain in the state: its direction and the policies it jumps to.
#[derive(Debug)]
struct PodChain {
    dir: Direction,
    policies: Vec<Key>,
}

/// A local pod with an address, and its chain in each direction where it is isolated.
#[derive(Debug)]
struct LocalPod {
    ip: Ipv4Addr,
    chains: [Option<String>; 2],
}

/// Names with how many users each has.
#[derive(Debug, Default)]
struct Refs(HashMap<String, usize>);

impl Refs {
    /// One more user; true for the first.
    fn take(&mut self, name: &str) -> bool {
        match self.0.get_mut(name) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                self.0.insert(name.to_string(), 1);
                true
            }
        }
    }

    /// One user fewer; true for the last.
    fn drop(&mut self, name: &str) -> bool {
        let n = self.0.get_mut(name).expect("a name is dropped only after it was taken");
        *n -= 1;
        let last = *n == 0;
        if last {
            self.0.remove(name);
        }
        last
    }
}

/// Plans one node's policy table, again and again.
#[derive(Debug)]
pub struct Planner {
    node: String,
    /// The cluster as the last plan read it.
    seen: Cluster,
    /// Each policy's chains, in the directions some local pod needed them.
    policies: HashMap<Key, [Option<PolicyChain>; 2]>,
    /// This node's pods that have an address, with their chains.
    pods: HashMap<Key, LocalPod>,
    /// Those pods by address (two can hold one address for a moment).
    by_ip: BTreeMap<Ipv4Addr, BTreeSet<Key>>,
    /// The pods' chains in the state, by name.
    pod_chains: HashMap<String, PodChain>,
    /// What decides the members of each pod set in the state.
    members: HashMap<String, Members>,
    /// Sets their last user left during this plan, with their members, in case the
    /// plan takes them again (a pod chosen again takes what it left).
    parked: HashMap<String, (Members, Found)>,
    chain_refs: Refs,
    counter_refs: Refs,
    set_refs: Refs,
    state: State,
}

/// `s` as a JSON string.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Does `policy` (in namespace `ns`) select `pod` (in namespace `pod_ns`)?
fn selects(ns: &str, policy: &Policy, pod_ns: &str, pod: &Pod) -> bool {
    ns == pod_ns && policy.pod_selector.matches(&pod.labels)
}

/// Makes `seen` equal to `now` at `keys`; returns each key whose value changed, with
/// the value it had.
fn catch_up<'k, K: Ord + Clone + 'k, V: PartialEq + Clone>(
    seen: &mut BTreeMap<K, V>,
    now: &BTreeMap<K, V>,
    keys: impl IntoIterator<Item = &'k K>,
) -> Vec<(K, Option<V>)> {
    let mut out = Vec::new();
    for k in keys {
        let new = now.get(k);
        if seen.get(k) != new {
            let old = match new {
                Some(v) => seen.insert(k.clone(), v.clone()),
                None => seen.remove(k),
            };
            out.push((k.clone(), old));
        }
    }
    out
}

/// Every key of `now` and of `seen`.
fn all_keys<K: Ord + Clone, V>(seen: &BTreeMap<K, V>, now: &BTreeMap<K, V>) -> BTreeSet<K> {
    seen.keys().chain(now.keys()).cloned().collect()
}

/// The local pod `key` is, if it is one: on this node, with an address.
fn local<'a>(cluster: &'a Cluster, node: &str, key: &Key) -> Option<(&'a Pod, Ipv4Addr)> {
    let pod = cluster.pods.get(key)?;
    Some((pod, pod.ip.filter(|_| pod.node.as_deref() == Some(node))?))
}

impl Planner {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            seen: Cluster::default(),
            policies: HashMap::default(),
            pods: HashMap::default(),
            by_ip: BTreeMap::new(),
            pod_chains: HashMap::default(),
            members: HashMap::default(),
            parked: HashMap::default(),
            chain_refs: Refs::default(),
            counter_refs: Refs::default(),
            set_refs: Refs::default(),
            state: State::default(),
        }
    }

    /// The desired state of the node's policy table in `cluster`, comparing the whole
    /// cluster with the last one planned.
    pub fn plan(&mut self, cluster: &Cluster) -> State {
        let touched = Touched {
            namespaces: all_keys(&self.seen.namespaces, &cluster.namespaces),
            pods: all_keys(&self.seen.pods, &cluster.pods),
            policies: all_keys(&self.seen.policies, &cluster.policies),
        };
        self.plan_touched(cluster, &touched)
    }

    /// The desired state of the node's policy table in `cluster`, which differs from
    /// the last one planned at most at the keys of `touched`.
    pub fn plan_touched(&mut self, cluster: &Cluster, touched: &Touched) -> State {
        let namespaces = catch_up(&mut self.seen.namespaces, &cluster.namespaces, &touched.namespaces);
        let pods = catch_up(&mut self.seen.pods, &cluster.pods, &touched.pods);
        let policies = catch_up(&mut self.seen.policies, &cluster.policies, &touched.policies);
        // Sets first, while those in use are all known: their members as the pods are now.
        self.refresh_sets(cluster, !namespaces.is_empty(), &pods);
        // A pod's chains depend on the pod and on the policies that select it: a changed
        // policy's pods are those its old or its new selector picks.
        let mut changed: HashMap<&str, Vec<&Policy>> = HashMap::default();
        for (k, old) in &policies {
            let entry = changed.entry(k.0.as_str()).or_default();
            entry.extend(old.iter().chain(cluster.policies.get(k)));
        }
        let mut again: BTreeSet<Key> = pods.iter().map(|(k, _)| k.clone()).collect();
        again.extend(
            self.pods
                .keys()
                .filter(|k| {
                    let Some(pols) = changed.get(k.0.as_str()) else { return false };
                    // The pod as it is, and as the planner saw it when it chose its chains
                    // (the same but for a pod the caller forgot to name as touched).
                    let pods = [cluster.pods.get(*k), self.seen.pods.get(*k)];
                    pols.iter().any(|pol| pods.iter().flatten().any(|pod| selects(&k.0, pol, &k.0, pod)))
                })
                .cloned(),
        );
        let mut addresses = BTreeSet::new();
        for k in &again {
            if let Some(p) = self.pods.remove(k) {
                self.leave(k, &p);
                addresses.insert(p.ip);
            }
        }
        // Nothing uses the old chains of a changed policy any more.
        for (k, _) in &policies {
            self.policies.remove(k);
        }
        let mut by_ns: HashMap<&str, Vec<(&Key, &Policy)>> = HashMap::default();
        if !again.is_empty() {
            for (k, pol) in &cluster.policies {
                by_ns.entry(k.0.as_str()).or_default().push((k, pol));
            }
        }
        for k in again {
            let Some((pod, ip)) = local(cluster, &self.node, &k) else { continue };
            let chains = self.choose(cluster, &k, pod, by_ns.get(k.0.as_str()).map_or(&[][..], Vec::as_slice));
            self.by_ip.entry(ip).or_default().insert(k.clone());
            addresses.insert(ip);
            self.pods.insert(k, LocalPod { ip, chains });
        }
        for ip in addresses {
            self.address(ip);
        }
        self.parked.clear();
        self.state.clone()
    }

    /// Takes local pod `key` out of the state.
    fn leave(&mut self, key: &Key, pod: &LocalPod) {
        if let Some(keys) = self.by_ip.get_mut(&pod.ip) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_ip.remove(&pod.ip);
            }
        }
        for name in pod.chains.iter().flatten() {
            if self.chain_refs.drop(name) {
                self.state.chains.remove(name);
                let chain = self.pod_chains.remove(name).expect("a pod chain in use is kept");
                for k in &chain.policies {
                    self.drop_policy(k, chain.dir);
                }
            }
        }
    }

    /// The state's entries for address `ip`: as a plan from nothing makes them, the
    /// pods holding it taken in order, the last isolated one's chain in each direction.
    fn address(&mut self, ip: Ipv4Addr) {
        let keys = self.by_ip.get(&ip);
        if keys.is_some() {
            self.state.local.insert(ip);
        } else {
            self.state.local.remove(&ip);
        }
        for (i, dir) in DIRECTIONS.iter().enumerate() {
            let chain = keys.into_iter().flatten().filter_map(|k| self.pods[k].chains[i].as_ref()).next_back();
            let map = match dir {
                Direction::Ingress => &mut self.state.ingress,
                Direction::Egress => &mut self.state.egress,
            };
            match chain {
                Some(c) => map.insert(ip, c.clone()),
                None => map.remove(&ip),
            };
        }
    }

    /// Finds again the members of the sets in use that the changed pods may have
    /// changed (every set, when a namespace's labels changed).
    fn refresh_sets(&mut self, cluster: &Cluster, namespaces_changed: bool, pods: &[(Key, Option<Pod>)]) {
        if pods.is_empty() && !namespaces_changed {
            return;
        }
        let scope = Scope { namespaces: &cluster.namespaces, node: &self.node };
        // Many changed pods: as cheap to look at every pod of every set.
        let all = namespaces_changed || pods.len() * 2 > cluster.pods.len();
        for (name, members) in &self.members {
            let changed = all
                || pods.iter().any(|(k, old)| {
                    let before = old.as_ref().map(|p| members.of(&scope, k, p)).unwrap_or_default();
                    let after = cluster.pods.get(k).map(|p| members.of(&scope, k, p)).unwrap_or_default();
                    before != after
                });
            if changed {
                put_members(&mut self.state, name, members, &scope, cluster);
            }
        }
    }

    /// The chains of local pod `key`, among its namespace's policies, taken into the
    /// state.
    fn choose(&mut self, cluster: &Cluster, key: &Key, pod: &Pod, policies: &[(&Key, &Policy)]) -> [Option<String>; 2] {
        let selecting: Vec<(&Key, &Policy)> =
            policies.iter().filter(|(_, pol)| selects(&key.0, pol, &key.0, pod)).copied().collect();
        DIRECTIONS.map(|dir| {
            let isolating: Vec<(&Key, &Policy)> = selecting
                .iter()
                .filter(|(_, pol)| match dir {
                    Direction::Ingress => pol.ingress.is_some(),
                    Direction::Egress => pol.egress.is_some(),
                })
                .copied()
                .collect();
            (!isolating.is_empty()).then(|| self.pod_chain(cluster, dir, &isolating))
        })
    }

    /// The chain of a local pod in one direction: a jump to the chain of each policy
    /// isolating it (one that allows the packet accepts it), then a drop counted by each
    /// of those policies. Taken into the state with what it uses.
    fn pod_chain(&mut self, cluster: &Cluster, dir: Direction, isolating: &[(&Key, &Policy)]) -> String {
        // The rules' text as serde_json writes it (a chain is named by its rules' text),
        // made without building JSON values: a plan writes these for every pod it chooses.
        let mut rules = Vec::new();
        let mut counters = String::from(r#"{"expr":["#);
        for (key, policy) in isolating {
            let chain = self.policies.entry(Key::clone(key)).or_default()[dir as usize]
                .get_or_insert_with(|| policy_chain(dir, key, policy));
            if let Some(name) = &chain.name {
                rules.push(format!(r#"{{"expr":[{{"jump":{{"target":{}}}}}]}}"#, json_str(name)));
            }
            counters.push_str(&format!(r#"{{"counter":{}}},"#, json_str(&chain.counter)));
        }
        counters.push_str(r#"{"drop":null}]}"#);
        rules.push(counters);
        let prefix = match dir {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        };
        let name = chain_name(prefix, &rules);
        if self.chain_refs.take(&name) {
            self.state.chains.insert(name.clone(), Arc::new(rules));
            let policies: Vec<Key> = isolating.iter().map(|(k, _)| Key::clone(k)).collect();
            for k in &policies {
                self.take_policy(cluster, k, dir);
            }
            self.pod_chains.insert(name.clone(), PodChain { dir, policies });
        }
        name
    }

    /// One more pod chain jumps to policy `key`'s chain in `dir` (rendered): its chain,
    /// counter and sets are in the state.
    fn take_policy(&mut self, cluster: &Cluster, key: &Key, dir: Direction) {
        let chain = self.policies[key][dir as usize].as_ref().expect("rendered before it is taken");
        if let Some(name) = &chain.name
            && self.chain_refs.take(name)
        {
            self.state.chains.insert(name.clone(), chain.rules.clone());
        }
        if self.counter_refs.take(&chain.counter) {
            self.state.counters.insert(chain.counter.clone());
        }
        let scope = Scope { namespaces: &cluster.namespaces, node: &self.node };
        for (name, set) in &chain.uses {
            if !self.set_refs.take(name) {
                continue;
            }
            match set {
                SetUse::Block(ranges) => {
                    self.state.block_sets.insert(name.clone(), ranges.clone());
                }
                SetUse::Members(m) => {
                    match self.parked.remove(name) {
                        Some((had, found)) if had == *m => found.put(&mut self.state, name),
                        _ => put_members(&mut self.state, name, m, &scope, cluster),
                    }
                    self.members.insert(name.clone(), m.clone());
                }
            }
        }
    }

    /// One pod chain fewer jumps to policy `key`'s chain in `dir`.
    fn drop_policy(&mut self, key: &Key, dir: Direction) {
        let chain = self.policies[key][dir as usize].as_ref().expect("a policy in use stays rendered");
        if let Some(name) = &chain.name
            && self.chain_refs.drop(name)
        {
            self.state.chains.remove(name);
        }
        if self.counter_refs.drop(&chain.counter) {
            self.state.counters.remove(&chain.counter);
        }
        for (name, _) in &chain.uses {
            if self.set_refs.drop(name) {
                self.state.block_sets.remove(name);
                let found = match (self.state.pod_sets.remove(name), self.state.port_sets.remove(name)) {
                    (Some(a), _) => Some(Found::Addresses(a)),
                    (_, Some(p)) => Some(Found::Ports(p)),
                    _ => None,
                };
                if let (Some(members), Some(found)) = (self.members.remove(name), found) {
                    self.parked.insert(name.clone(), (members, found));
                }
            }
        }
    }
}

/// A pod set's members, as the state holds them.
#[derive(Debug)]
enum Found {
    Addresses(Arc<BTreeSet<Ipv4Addr>>),
    Ports(Arc<BTreeSet<PortElem>>),
}

impl Found {
    fn put(self, state: &mut State, name: &str) {
        match self {
            Self::Addresses(a) => {
                state.pod_sets.insert(name.to_string(), a);
            }
            Self::Ports(p) => {
                state.port_sets.insert(name.to_string(), p);
            }
        }
    }
}

/// Puts set `name` in `state` with the members `members` finds in the cluster.
fn put_members(state: &mut State, name: &str, members: &Members, scope: &Scope, cluster: &Cluster) {
    let found = members.among(scope, &cluster.pods);
    let found = if members.addresses_only() {
        Found::Addresses(Arc::new(found.into_iter().map(|e| e.0).collect()))
    } else {
        Found::Ports(Arc::new(
            found.into_iter().filter_map(|(ip, p)| p.map(|(proto, port)| (ip, proto, port))).collect(),
        ))
    };
    found.put(state, name);
}

/// The desired state of node `node`'s policy table, planned from nothing.
pub fn plan(cluster: &Cluster, node: &str) -> State {
    Planner::new(node).plan(cluster)
}
