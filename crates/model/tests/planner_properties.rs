//! Property tests of the two planners that turn cluster input into nftables state: any
//! Services, EndpointSlices, pods and NetworkPolicies the API can hold plan without a
//! panic, and the plan hangs together (everything it points at, it also makes).

use flatnet_model::l4::Proto;
use flatnet_model::policy::{self, Cluster, Namespaces, Peer, PortMatch};
use flatnet_model::proxy::{Context, Endpoint, Service, ServicePort, Slice, plan_service};
use flatnet_model::selector::{LabelSelector, Requirement};
use ipnet::Ipv4Net;
use proptest::prelude::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp), Just(Proto::Sctp)]
}

fn port_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), Just("http".to_string()), Just("dns".to_string())]
}

fn pod_ip() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..4, 1u8..5).prop_map(|(n, h)| Ipv4Addr::new(10, 244, n, h))
}

fn node() -> impl Strategy<Value = Option<String>> {
    prop_oneof![1 => Just(None), 6 => prop::sample::select(&NODES[..]).prop_map(|n| Some(n.to_string()))]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (pod_ip(), node(), any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(|(ip, node, ready, serving, terminating)| Endpoint { ip, node, ready, serving, terminating })
}

fn slice() -> impl Strategy<Value = Slice> {
    (
        prop::collection::vec((port_name(), proto(), prop_oneof![Just(80u16), Just(8080), Just(53)]), 0..3),
        prop::collection::vec(endpoint(), 0..6),
    )
        .prop_map(|(ports, endpoints)| Slice { ports, endpoints })
}

fn service() -> impl Strategy<Value = Service> {
    let port = (port_name(), proto(), prop_oneof![Just(80u16), Just(53), Just(443)], prop::option::of(30000u16..30010))
        .prop_map(|(name, protocol, port, node_port)| ServicePort { name, protocol, port, node_port });
    (
        prop::option::of(Just(Ipv4Addr::new(10, 96, 0, 20))),
        prop::collection::vec(port, 0..3),
        prop::collection::vec(Just(Ipv4Addr::new(203, 0, 113, 7)), 0..2),
        prop::collection::vec(Just(Ipv4Addr::new(203, 0, 113, 8)), 0..2),
        prop::option::of(prop_oneof![Just(10u32), Just(10800)]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cluster_ip, ports, external_ips, load_balancer_ips, affinity_timeout, il, el)| Service {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ip,
            external_ips,
            load_balancer_ips,
            ports: valid_ports(ports),
            affinity_timeout,
            internal_local: il,
            external_local: el,
        })
}

/// Ports as the API admits them: unique names, unique (protocol, port) and node ports,
/// and every port named when there are several.
fn valid_ports(mut ports: Vec<ServicePort>) -> Vec<ServicePort> {
    let mut seen = BTreeSet::new();
    ports.retain(|p| {
        seen.insert(("name", p.name.clone(), 0))
            & seen.insert((p.protocol.word(), String::new(), p.port))
            & p.node_port.is_none_or(|n| seen.insert(("node", String::new(), n)))
    });
    if ports.len() > 1 {
        ports.retain(|p| !p.name.is_empty());
    }
    ports
}

fn ctx() -> Context {
    Context {
        node: NODES[0].into(),
        cluster_cidr: "10.244.0.0/16".parse().expect("literal"),
        service_cidr: "10.96.0.0/12".parse().expect("literal"),
    }
}

/// Every value under `v` that is a string starting with `@` (a set reference), and every
/// `dnat` target.
fn walk(v: &Value, sets: &mut BTreeSet<String>, dnats: &mut BTreeSet<(Ipv4Addr, u16)>, jumps: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            if let Some(set) = s.strip_prefix('@') {
                sets.insert(set.to_string());
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, sets, dnats, jumps)),
        Value::Object(o) => {
            if let Some(d) = o.get("dnat") {
                let ip = d["addr"].as_str().and_then(|a| a.parse().ok());
                let port = d["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                dnats.extend(ip.zip(port));
            }
            for k in ["jump", "goto"] {
                if let Some(t) = o.get(k).and_then(|j| j["target"].as_str()) {
                    jumps.insert(t.to_string());
                }
            }
            o.values().for_each(|x| walk(x, sets, dnats, jumps));
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any Service with any slices plans, and the plan makes what it points at.
    #[test]
    fn any_service_plans_to_a_consistent_fragment(svc in service(), slices in prop::collection::vec(slice(), 0..3)) {
        let ctx = ctx();
        let f = plan_service(&ctx, &svc, &slices);
        let again = plan_service(&ctx, &svc, &slices);
        prop_assert_eq!(&f.summary, &again.summary, "planning is deterministic");
        let s = &f.summary;
        for chain in s.service_ips.values().chain(s.node_ports.values()) {
            prop_assert!(s.chains.contains(chain) && f.rules.contains_key(chain), "{chain} is pointed at but not made");
        }
        prop_assert_eq!(s.chains.iter().collect::<Vec<_>>(), f.rules.keys().collect::<Vec<_>>());
        let (mut sets, mut dnats, mut jumps) = Default::default();
        for text in f.rules.values() {
            let rules: Value = serde_json::from_str(&format!("[{text}]")).expect("rules are JSON");
            walk(&rules, &mut sets, &mut dnats, &mut jumps);
        }
        for set in &sets {
            prop_assert!(s.affinity_sets.contains_key(set), "rule uses set {set}, which the plan does not make");
        }
        for j in &jumps {
            prop_assert!(s.chains.contains(j), "jump to {j}, which the plan does not make");
        }
        let all_eps: Vec<&Endpoint> = slices.iter().flat_map(|s| &s.endpoints).collect();
        for (ip, port) in &dnats {
            prop_assert!(s.endpoints.iter().any(|(_, i, p)| i == ip && p == port), "DNAT to {ip}:{port} is not an endpoint");
            prop_assert!(all_eps.iter().any(|e| e.ip == *ip && (e.ready || (e.serving && e.terminating))),
                "DNAT to {ip}:{port}, which is neither ready nor serving while terminating");
        }
        for ip in &s.hairpin {
            prop_assert!(all_eps.iter().any(|e| e.ip == *ip && e.node.as_deref() == Some(ctx.node.as_str())),
                "hairpin {ip} is not an endpoint of this node");
        }
        for k in &s.no_endpoints {
            prop_assert!(!s.service_ips.contains_key(k), "{k:?} both rejected and served");
        }
        if svc.cluster_ip.is_none() {
            prop_assert!(s.chains.is_empty() && s.service_ips.is_empty(), "a headless Service plans to nothing");
        }
    }
}

// NetworkPolicy.

fn label_key() -> impl Strategy<Value = String> {
    prop::sample::select(&["app", "tier", "env"][..]).prop_map(String::from)
}

fn label_value() -> impl Strategy<Value = String> {
    prop::sample::select(&["web", "db", "a", "b"][..]).prop_map(String::from)
}

fn labels() -> impl Strategy<Value = policy::Labels> {
    prop::collection::btree_map(label_key(), label_value(), 0..3)
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let values = || prop::collection::btree_set(label_value(), 0..3);
    let req = prop_oneof![
        (label_key(), label_value()).prop_map(|(k, v)| Requirement::Equals(k, v)),
        (label_key(), label_value()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
        (label_key(), values()).prop_map(|(k, v)| Requirement::In(k, v)),
        (label_key(), values()).prop_map(|(k, v)| Requirement::NotIn(k, v)),
        label_key().prop_map(Requirement::Exists),
        label_key().prop_map(Requirement::DoesNotExist),
    ];
    prop::collection::vec(req, 0..3).prop_map(LabelSelector)
}

fn cidr() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, len)| Ipv4Net::new(Ipv4Addr::from(a), len).expect("len ≤ 32").trunc())
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (selector(), prop::option::of(selector())).prop_map(|(pods, ns)| Peer::Pods {
            namespaces: ns.map_or(Namespaces::Own("a".into()), Namespaces::Matching),
            pods
        }),
        (cidr(), prop::collection::vec(cidr(), 0..3)).prop_map(|(cidr, except)| Peer::Block { cidr, except }),
    ]
}

fn port_match() -> impl Strategy<Value = PortMatch> {
    prop_oneof![
        proto().prop_map(PortMatch::Any),
        (proto(), 1u16..100, 0u16..50).prop_map(|(p, a, d)| PortMatch::Range(p, a, a.saturating_add(d))),
        (proto(), prop::sample::select(&["http", "dns", "none"][..])).prop_map(|(p, n)| PortMatch::Named(p, n.into())),
    ]
}

fn rules() -> impl Strategy<Value = Option<Vec<policy::Rule>>> {
    let rule = (prop::collection::vec(peer(), 0..3), prop::collection::vec(port_match(), 0..3))
        .prop_map(|(peers, ports)| policy::Rule { peers, ports });
    prop::option::of(prop::collection::vec(rule, 0..3))
}

fn cluster() -> impl Strategy<Value = Cluster> {
    let named = (prop::sample::select(&["http", "dns"][..]), proto(), 1u16..100)
        .prop_map(|(n, proto, port)| policy::NamedPort { name: n.into(), proto, port });
    let pod = (labels(), prop::option::of(pod_ip()), node(), prop::collection::vec(named, 0..2), any::<bool>())
        .prop_map(|(labels, ip, node, ports, finished)| policy::Pod { labels, ip, node, ports, finished });
    let ns = prop::sample::select(&["a", "b"][..]).prop_map(String::from);
    let name = prop::sample::select(&["p1", "p2", "p3", "p4"][..]).prop_map(String::from);
    let pol = (selector(), rules(), rules()).prop_map(|(pod_selector, ingress, egress)| policy::Policy {
        pod_selector,
        ingress,
        egress,
    });
    (
        prop::collection::btree_map(ns.clone(), labels(), 0..3),
        prop::collection::btree_map((ns.clone(), name.clone()), pod, 0..6),
        prop::collection::btree_map((ns, name), pol, 0..4),
    )
        .prop_map(|(namespaces, pods, policies)| Cluster { namespaces, pods, policies })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Any cluster plans; the state makes every chain, set and counter it points at;
    /// the diff from a state to itself is empty, and from nothing makes it whole.
    #[test]
    fn any_cluster_plans_to_a_consistent_policy_table(c in cluster()) {
        let s = policy::plan(&c, NODES[0]);
        prop_assert_eq!(&s, &policy::plan(&c, NODES[0]), "planning is deterministic");
        for chain in s.ingress.values().chain(s.egress.values()) {
            prop_assert!(s.chains.contains_key(chain), "map points at {chain}, which the plan does not make");
        }
        let (mut sets, mut dnats, mut jumps) = Default::default();
        let mut counters = BTreeSet::new();
        for rules in s.chains.values() {
            for r in rules.iter() {
                let v: Value = serde_json::from_str(r).expect("rules are JSON");
                walk(&v, &mut sets, &mut dnats, &mut jumps);
                for e in v["expr"].as_array().into_iter().flatten() {
                    counters.extend(e["counter"].as_str().map(String::from));
                }
            }
        }
        for set in &sets {
            prop_assert!(s.pod_sets.contains_key(set) || s.block_sets.contains_key(set) || s.port_sets.contains_key(set),
                "a rule uses set {set}, which the plan does not make");
        }
        for j in &jumps {
            prop_assert!(s.chains.contains_key(j), "a rule jumps to {j}, which the plan does not make");
        }
        prop_assert_eq!(&counters, &s.counters);
        let here: BTreeSet<Ipv4Addr> = c.pods.values().filter(|p| p.node.as_deref() == Some(NODES[0])).filter_map(|p| p.ip).collect();
        prop_assert_eq!(&s.local, &here);
        let isolated: BTreeSet<&Ipv4Addr> = s.ingress.keys().chain(s.egress.keys()).collect();
        prop_assert!(isolated.iter().all(|ip| here.contains(ip)), "only this node's pods are isolated here");
        for ranges in s.block_sets.values() {
            prop_assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "intervals are sorted and disjoint: {ranges:?}");
            prop_assert!(ranges.iter().all(|(a, b)| a <= b));
        }
        prop_assert!(policy::diff(&s, &s).0.is_empty(), "no change from a state to itself");
        let (from_nothing, _) = policy::diff(&policy::State::default(), &s);
        prop_assert_eq!(from_nothing.is_empty(), s == policy::State::default());
    }
}

/// Each key of `a` and `b` taken from one or the other as `bits` says: a cluster that
/// differs from `a` in some places only.
fn blend<K: Ord + Clone, V: Clone>(
    a: &std::collections::BTreeMap<K, V>,
    b: &std::collections::BTreeMap<K, V>,
    bits: &mut impl Iterator<Item = bool>,
) -> std::collections::BTreeMap<K, V> {
    let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let from = if bits.next().unwrap_or(false) { b } else { a };
            from.get(k).map(|v| (k.clone(), v.clone()))
        })
        .collect()
}

/// The keys where two maps differ.
fn differ<K: Ord + Clone, V: PartialEq>(
    a: &std::collections::BTreeMap<K, V>,
    b: &std::collections::BTreeMap<K, V>,
) -> BTreeSet<K> {
    a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// A planner that planned other clusters before plans what a planner that starts
    /// from nothing plans: whether it compares the whole cluster or is told the keys
    /// that changed.
    #[test]
    fn a_plan_after_other_plans_equals_one_from_nothing(steps in prop::collection::vec((cluster(), any::<u64>()), 1..6)) {
        let mut comparing = policy::Planner::new(NODES[0]);
        let mut told = policy::Planner::new(NODES[0]);
        let mut last = Cluster::default();
        for (other, seed) in steps {
            let mut bits = (0..).map(move |i| (seed >> (i % 64)) & 1 == 1);
            let c = Cluster {
                namespaces: blend(&last.namespaces, &other.namespaces, &mut bits),
                pods: blend(&last.pods, &other.pods, &mut bits),
                policies: blend(&last.policies, &other.policies, &mut bits),
            };
            let touched = policy::Touched {
                namespaces: differ(&last.namespaces, &c.namespaces),
                pods: differ(&last.pods, &c.pods),
                policies: differ(&last.policies, &c.policies),
            };
            let fresh = policy::plan(&c, NODES[0]);
            prop_assert_eq!(&comparing.plan(&c), &fresh);
            prop_assert_eq!(&told.plan_touched(&c, &touched), &fresh);
            last = c;
        }
    }
}
