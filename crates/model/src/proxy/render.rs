//! nftables JSON for the proxy: the base of the table (hooks, dispatch maps, sets,
//! masquerade) and the statements of Service chains. Rendered as `nft -j` input; the
//! tests check every object against the `nftables` crate's schema.

use crate::l4::Proto;
use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

pub const TABLE: &str = "flatnet";
pub const FAMILY: &str = "ip";
/// The packet mark bit that asks `nat-postrouting` to masquerade (kube-proxy's bit:
/// flatnet replaces kube-proxy on a node, it does not run beside it).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// A base chain's (type, hook, priority), for the ones on a hook.
pub type Hook = Option<(&'static str, &'static str, i32)>;

/// The chains of the base.
pub const BASE_CHAINS: &[(&str, Hook)] = &[
    ("services", None),
    ("endpoints-check", None),
    ("reject-service", None),
    ("nat-prerouting", Some(("nat", "prerouting", -100))),
    ("nat-output", Some(("nat", "output", -100))),
    ("nat-postrouting", Some(("nat", "postrouting", 100))),
    // Just before the filter priority, so a rejected Service port never reaches a
    // firewall's own accept rules.
    ("filter-input", Some(("filter", "input", -1))),
    ("filter-forward", Some(("filter", "forward", -1))),
    ("filter-output", Some(("filter", "output", -1))),
];

/// One rule: its statements and a comment that says what it is for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub expr: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Rule {
    /// The rule as compact JSON, `{"expr":[…],"comment":"…"}` (what serializing it
    /// gives, without a fallible serializer).
    pub fn text(&self) -> String {
        let expr = Value::Array(self.expr.clone());
        match &self.comment {
            Some(c) => format!(r#"{{"expr":{expr},"comment":{}}}"#, Value::String(c.clone())),
            None => format!(r#"{{"expr":{expr}}}"#),
        }
    }
}

fn rule(expr: Vec<Value>, comment: impl Into<String>) -> Rule {
    Rule { expr, comment: Some(comment.into()) }
}

/// 8 hex digits of a hash of the serialized rules: the suffix of a chain's name.
pub(super) fn text_hash(bodies: &[String]) -> String {
    let parts: Vec<&str> = bodies.iter().map(String::as_str).collect();
    format!("{:08x}", crate::names::fnv1a(&parts) as u32)
}

/// `add rule` commands for `chain` from serialized rules (`{"expr":…,"comment":…}`),
/// comma-separated.
pub(super) fn add_rules(chain: &str, bodies: &[String]) -> String {
    let name = Value::String(chain.to_string()).to_string();
    let mut out = String::with_capacity(bodies.iter().map(|b| b.len() + name.len() + 64).sum());
    for (i, b) in bodies.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // b is `{"expr":…}`: its fields follow ours, and its closing brace closes the rule.
        out.push_str(&format!(r#"{{"add":{{"rule":{{"family":"{FAMILY}","table":"{TABLE}","chain":{name},"#));
        out.push_str(&b[1..]);
        out.push_str("}}");
    }
    out
}

fn ip(field: &str) -> Value {
    json!({"payload": {"protocol": "ip", "field": field}})
}
fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
pub(crate) fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}
fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}
fn prefix(net: Ipv4Net) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}
fn goto(chain: &str) -> Value {
    json!({"goto": {"target": chain}})
}
fn fib_local(flag: &str) -> Value {
    eq(json!({"fib": {"result": "type", "flags": [flag]}}), json!("local"))
}
fn not_loopback() -> Value {
    ne(ip("daddr"), prefix("127.0.0.0/8".parse().expect("literal")))
}
fn set_mark() -> Value {
    json!({"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), MASQUERADE_MARK]}}})
}
fn masquerade() -> Value {
    json!({"masquerade": {"flags": ["fully-random"]}})
}
fn proto_port_key() -> Vec<Value> {
    vec![meta("l4proto"), json!({"payload": {"protocol": "th", "field": "dport"}})]
}
/// `ip daddr . meta l4proto . th dport`: a destination address, protocol and port.
pub(crate) fn service_key() -> Value {
    let mut k = vec![ip("daddr")];
    k.extend(proto_port_key());
    json!({"concat": k})
}

/// externalTrafficPolicy: Cluster: masquerade, then any endpoint.
pub(super) fn masquerade_then(svc_chain: &str) -> Vec<Rule> {
    vec![rule(vec![set_mark(), goto(svc_chain)], "external traffic: masquerade, then any endpoint")]
}

/// externalTrafficPolicy: Local: pods and the node itself may use any endpoint (the node
/// masqueraded); everything else goes to this node's endpoints with its source kept.
pub(super) fn external_local_prelude(cluster: Ipv4Net, svc_chain: &str) -> Vec<Rule> {
    vec![
        rule(vec![eq(ip("saddr"), prefix(cluster)), goto(svc_chain)], "from a pod: any endpoint"),
        rule(vec![fib_local("saddr"), set_mark(), goto(svc_chain)], "from this node: masquerade, any endpoint"),
    ]
}

pub(super) fn drop_rule(comment: &str) -> Rule {
    rule(vec![json!({"drop": null})], comment)
}

fn dnat(proto: Proto, ip: Ipv4Addr, port: u16) -> [Value; 2] {
    [eq(meta("l4proto"), json!(proto.word())), json!({"dnat": {"addr": ip.to_string(), "port": port}})]
}

/// The rules that pick one of `eps` and DNAT to it. With affinity (`sets[i]` the set of
/// clients stuck to `eps[i]`), a client seen recently goes back to its endpoint; a new
/// one is placed at random and remembered. The pick is a cascade: rule i matches with
/// probability 1/(N-i), so each endpoint gets 1/N; only a connection's first packet
/// passes here (NAT chains see nothing else).
pub(super) fn pick_endpoint(proto: Proto, eps: &[(Ipv4Addr, u16)], sets: Option<&[String]>, svc: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    if let Some(sets) = sets {
        for ((ip, port), set) in eps.iter().zip(sets) {
            let mut expr = vec![eq(ip_saddr(), json!(format!("@{set}")))];
            expr.extend(dnat(proto, *ip, *port));
            out.push(rule(expr, format!("{svc} affinity → {ip}:{port}")));
        }
    }
    let n = eps.len();
    for (i, (ip, port)) in eps.iter().enumerate() {
        let mut expr = Vec::new();
        if i + 1 < n {
            let m = u32::try_from(n - i).unwrap_or(u32::MAX);
            expr.push(eq(json!({"numgen": {"mode": "random", "mod": m, "offset": 0}}), json!(0)));
        }
        if let Some(set) = sets.and_then(|s| s.get(i)) {
            expr.push(json!({"set": {"op": "update", "elem": ip_saddr(), "set": format!("@{set}")}}));
        }
        expr.extend(dnat(proto, *ip, *port));
        out.push(rule(expr, format!("{svc} → {ip}:{port} ({} of {n})", i + 1)));
    }
    out
}

fn ip_saddr() -> Value {
    ip("saddr")
}

/// The comment of the first rule of `services`: every setting the base depends on, so
/// the agent rewrites the base exactly when it differs.
pub fn base_marker(cluster: Ipv4Net, services: Ipv4Net) -> String {
    format!("flatnet proxy base v2: pods {cluster}, services {services}, masquerade mark {MASQUERADE_MARK:#x}")
}

fn obj(kind: &str, mut body: Value) -> Value {
    body["family"] = json!(FAMILY);
    body["table"] = json!(TABLE);
    json!({ kind: body })
}

/// The `add chain` object for `name` (a base chain with its hook, or a plain one).
pub(super) fn chain_object(name: &str) -> Value {
    let mut c = json!({"name": name});
    if let Some((_, Some((kind, hook, prio)))) = BASE_CHAINS.iter().find(|(n, _)| *n == name) {
        c["type"] = json!(kind);
        c["hook"] = json!(hook);
        c["prio"] = json!(prio);
        c["policy"] = json!("accept");
    }
    obj("chain", c)
}

pub(super) fn rule_object(chain: &str, r: &Rule) -> Value {
    let mut body = json!({"chain": chain, "expr": r.expr});
    if let Some(c) = &r.comment {
        body["comment"] = json!(c);
    }
    obj("rule", body)
}

pub(super) fn add(v: Value) -> Value {
    json!({ "add": v })
}

/// The named maps and sets of the base: (name, key types, verdict map?).
pub const BASE_SETS: &[(&str, &[&str], bool)] = &[
    ("service-ips", &["ipv4_addr", "inet_proto", "inet_service"], true),
    ("service-nodeports", &["inet_proto", "inet_service"], true),
    ("no-endpoint-services", &["ipv4_addr", "inet_proto", "inet_service"], false),
    ("no-endpoint-nodeports", &["inet_proto", "inet_service"], false),
    ("hairpin", &["ipv4_addr", "ipv4_addr"], false),
];

fn base_rules(cluster: Ipv4Net, services: Ipv4Net) -> Vec<(&'static str, Rule)> {
    let np_key = json!({"concat": proto_port_key()});
    let new_conn = eq(json!({"ct": {"key": "state"}}), json!(["new"]));
    let multicast: Ipv4Net = "224.0.0.0/4".parse().expect("literal");
    vec![
        (
            "services",
            // ClusterIP traffic from outside the pod network (the node itself, routed
            // clients) is masqueraded, so replies come back through this node and its
            // conntrack entry. One rule here rather than one per Service.
            rule(
                vec![eq(ip("daddr"), prefix(services)), ne(ip("saddr"), prefix(cluster)), set_mark()],
                base_marker(cluster, services),
            ),
        ),
        ("services", rule(vec![json!({"vmap": {"key": service_key(), "data": "@service-ips"}})], "Service IPs")),
        (
            "services",
            rule(
                vec![
                    fib_local("daddr"),
                    not_loopback(),
                    json!({"vmap": {"key": np_key, "data": "@service-nodeports"}}),
                ],
                "NodePorts on this node's addresses",
            ),
        ),
        ("nat-prerouting", rule(vec![json!({"jump": {"target": "services"}})], "Service DNAT")),
        ("nat-output", rule(vec![json!({"jump": {"target": "services"}})], "Service DNAT for this node's own traffic")),
        (
            "nat-postrouting",
            rule(
                vec![
                    eq(json!({"&": [meta("mark"), MASQUERADE_MARK]}), json!(MASQUERADE_MARK)),
                    json!({"mangle": {"key": meta("mark"), "value": {"^": [meta("mark"), MASQUERADE_MARK]}}}),
                    masquerade(),
                ],
                "masquerade what a Service chain marked",
            ),
        ),
        (
            "nat-postrouting",
            rule(
                vec![eq(json!({"concat": [ip("saddr"), ip("daddr")]}), json!("@hairpin")), masquerade()],
                "hairpin: a pod reaching itself through a Service",
            ),
        ),
        (
            "nat-postrouting",
            rule(
                vec![
                    eq(ip("saddr"), prefix(cluster)),
                    ne(ip("daddr"), prefix(cluster)),
                    ne(ip("daddr"), prefix(multicast)),
                    masquerade(),
                ],
                format!("masquerade pod traffic leaving {cluster}"),
            ),
        ),
        (
            "filter-input",
            rule(vec![new_conn.clone(), json!({"jump": {"target": "endpoints-check"}})], "new connections"),
        ),
        (
            "filter-forward",
            rule(vec![new_conn.clone(), json!({"jump": {"target": "endpoints-check"}})], "new connections"),
        ),
        ("filter-output", rule(vec![new_conn, json!({"jump": {"target": "endpoints-check"}})], "new connections")),
        (
            "endpoints-check",
            rule(
                vec![eq(service_key(), json!("@no-endpoint-services")), goto("reject-service")],
                "Service ports with no usable endpoint",
            ),
        ),
        (
            "endpoints-check",
            rule(
                vec![
                    fib_local("daddr"),
                    not_loopback(),
                    eq(json!({"concat": proto_port_key()}), json!("@no-endpoint-nodeports")),
                    goto("reject-service"),
                ],
                "NodePorts with no usable endpoint",
            ),
        ),
        (
            "endpoints-check",
            rule(
                vec![eq(ip("daddr"), prefix(services)), goto("reject-service")],
                "no Service at this address and port",
            ),
        ),
        (
            "reject-service",
            rule(
                vec![eq(meta("l4proto"), json!("tcp")), json!({"reject": {"type": "tcp reset"}})],
                "refused: TCP reset",
            ),
        ),
        ("reject-service", rule(vec![json!({"reject": null})], "refused: ICMP port unreachable")),
    ]
}

/// One transaction that makes the base exactly as planned: the table, its maps and
/// sets (created if missing, their elements kept), and the base chains rewritten. The
/// kernel applies it whole, so no packet sees a half-written base; Service chains and
/// map elements are untouched.
pub fn base_transaction(cluster: Ipv4Net, services: Ipv4Net) -> Vec<Value> {
    let mut out = vec![add(json!({"table": {"family": FAMILY, "name": TABLE}}))];
    for (name, types, verdict) in BASE_SETS {
        let mut body = json!({"name": name, "type": types});
        if *verdict {
            body["map"] = json!("verdict");
        }
        out.push(add(obj(if *verdict { "map" } else { "set" }, body)));
    }
    for (name, _) in BASE_CHAINS {
        out.push(add(chain_object(name)));
        out.push(json!({"flush": chain_object(name)}));
    }
    for (chain, r) in base_rules(cluster, services) {
        out.push(add(rule_object(chain, &r)));
    }
    out
}
