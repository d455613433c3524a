//! What the API server does to an object before storing it: defaults, checks that need
//! the rest of the cluster (the namespace exists, a ClusterIP or NodePort is free), and
//! the allocations a real API server makes synchronously (ClusterIPs, NodePorts).

use super::resources::Resource;
use super::status::ApiError;
use crate::store::{Change, Key, Objects};
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Cluster-wide settings the API server enforces.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub service_cidr: Ipv4Net,
    pub node_ports: std::ops::RangeInclusive<u16>,
    pub cluster_cidr: Ipv4Net,
    pub node_prefix: u8,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            service_cidr: "10.96.0.0/12".parse().expect("literal"),
            node_ports: 30000..=32767,
            cluster_cidr: "10.244.0.0/16".parse().expect("literal"),
            node_prefix: 24,
        }
    }
}

impl ClusterConfig {
    /// 10.96.0.1: `default/kubernetes`.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        nth(self.service_cidr, 1)
    }

    /// 10.96.0.10: reserved for `kube-system/kube-dns`.
    pub fn dns_ip(&self) -> Ipv4Addr {
        nth(self.service_cidr, 10)
    }
}

fn nth(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// Defaults every object gets on create, whatever its kind.
pub fn stamp_new(obj: &mut Value, resource: &Resource, namespace: &str) {
    let meta = obj["metadata"].as_object_mut().expect("checked by the caller");
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    if resource.namespaced {
        meta.insert("namespace".into(), json!(namespace));
    } else {
        meta.remove("namespace");
    }
    meta.remove("deletionTimestamp");
    obj["kind"] = json!(resource.kind);
    obj["apiVersion"] = json!(resource.api_version());
}

pub fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or(jiff::Timestamp::now()).to_string()
}

/// Kind-specific defaults, as the real API server's defaulting sets them.
pub fn defaults(obj: &mut Value, kind: &str) {
    match kind {
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        "Pod" => {
            let spec = &mut obj["spec"];
            for (k, v) in
                [("restartPolicy", "Always"), ("dnsPolicy", "ClusterFirst"), ("schedulerName", "default-scheduler")]
            {
                if spec[k].is_null() {
                    spec[k] = json!(v);
                }
            }
            for c in spec["containers"].as_array_mut().into_iter().flatten() {
                for p in c["ports"].as_array_mut().into_iter().flatten() {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                }
            }
            if obj["status"]["phase"].is_null() {
                obj["status"]["phase"] = json!("Pending");
            }
        }
        "Service" => {
            let spec = &mut obj["spec"];
            for (k, v) in [("type", "ClusterIP"), ("sessionAffinity", "None"), ("internalTrafficPolicy", "Cluster")] {
                if spec[k].is_null() {
                    spec[k] = json!(v);
                }
            }
            let external = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
            if external && spec["externalTrafficPolicy"].is_null() {
                spec["externalTrafficPolicy"] = json!("Cluster");
            }
            for p in spec["ports"].as_array_mut().into_iter().flatten() {
                if p["protocol"].is_null() {
                    p["protocol"] = json!("TCP");
                }
                if p["targetPort"].is_null() {
                    p["targetPort"] = p["port"].clone();
                }
            }
            if spec["sessionAffinity"] == "ClientIP" && spec["sessionAffinityConfig"].is_null() {
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
            }
            if obj["status"].is_null() {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        // Kubernetes' inference: Ingress always, Egress when there are egress rules.
        "NetworkPolicy" if obj["spec"]["policyTypes"].is_null() => {
            let mut types = vec!["Ingress"];
            if obj["spec"]["egress"].as_array().is_some_and(|e| !e.is_empty()) {
                types.push("Egress");
            }
            obj["spec"]["policyTypes"] = json!(types);
        }
        k if super::workloads::is_workload(k) => super::workloads::defaults(obj, k),
        _ => {}
    }
}

/// A pod's deletion as the API does it (a DELETE, or a controller's): graceful when a
/// ready node's kubelet runs it (it turns Terminating, `deletionTimestamp` `grace`
/// seconds on, its own `terminationGracePeriodSeconds` by default, and the kubelet
/// deletes it once its containers are gone); at once on no ready node or with grace 0;
/// nothing when it is already Terminating.
pub fn pod_deletion(all: &Objects, pod: &Value, grace: Option<i64>) -> Result<Change, ApiError> {
    let grace = grace.or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30).max(0);
    let node_ready = pod["spec"]["nodeName"]
        .as_str()
        .and_then(|n| all.get(&Key::new("nodes", "", n)))
        .is_some_and(|n| is_ready_node(n));
    if grace == 0 || !node_ready {
        return Ok(Change::Delete);
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return Ok(Change::Keep);
    }
    let mut p = pod.clone();
    let at = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(grace)).map_err(|_| {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        ApiError::invalid("Pod", name, "gracePeriodSeconds", format!("{grace} is too large"))
    })?;
    p["metadata"]["deletionTimestamp"] = json!(at.round(jiff::Unit::Second).unwrap_or(at).to_string());
    p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    Ok(Change::Put(p))
}

/// A node pods may be placed on and run on: schedulable, and Ready.
pub fn is_ready_node(n: &Value) -> bool {
    n["spec"]["unschedulable"].as_bool() != Some(true)
        && n["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

pub use super::names::{NAME_ALPHABET, random_suffix};

/// Checks that need the rest of the cluster, and the allocations; runs inside the
/// store's writer, so two creates cannot take the same address.
pub fn admit(
    cfg: &ClusterConfig,
    all: &Objects,
    key: &Key,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if !key.namespace.is_empty() && all.get(&Key::new("namespaces", "", &key.namespace)).is_none() {
        return Err(ApiError::not_found("namespaces", &key.namespace));
    }
    if key.resource == "pods" && old.is_none() {
        super::service_accounts::admit_pod(all, &key.namespace, obj);
    }
    if key.resource == "services" {
        service_ips(cfg, all, key, obj, old)?;
    }
    if let Some(kind) = obj["kind"].as_str().filter(|k| super::workloads::is_workload(k)) {
        super::workloads::validate(kind, &key.name, obj, old)?;
        super::workloads::generation(obj, old);
    }
    if key.resource == "configmaps" {
        super::workloads::validate_config_map(&key.name, obj)?;
    }
    if key.resource == "networkpolicies.networking.k8s.io" {
        let enforced = || {
            // What passes the API's checks must also be what the agent enforces as
            // written: the agent's own reading of it reports nothing.
            let np = serde_json::from_value(obj.clone()).map_err(|e| ("spec".to_string(), e.to_string()))?;
            match flatnet_kube::policy::policy_of(&np).1.as_slice() {
                [] => Ok(()),
                problems => Err(("spec".to_string(), problems.join("; "))),
            }
        };
        if let Err((field, why)) = network_policy(&obj["spec"]).and_then(|()| enforced()) {
            return Err(ApiError::invalid("NetworkPolicy", &key.name, &field, why));
        }
    }
    if key.resource == "nodes"
        && let Some(prev) = old.and_then(|o| o["spec"]["podCIDR"].as_str()).filter(|p| !p.is_empty())
    {
        // A node's pod range is fixed once given: its pods already have addresses in it.
        match obj["spec"]["podCIDR"].as_str() {
            None | Some("") => {
                obj["spec"]["podCIDR"] = json!(prev);
                obj["spec"]["podCIDRs"] = old.map(|o| o["spec"]["podCIDRs"].clone()).unwrap_or_else(|| json!([prev]));
            }
            Some(new) if new != prev => {
                return Err(ApiError::invalid(
                    "Node",
                    &key.name,
                    "spec.podCIDR",
                    format!("field is immutable once set (it is {prev})"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

type Invalid = (String, String);

/// The checks the Kubernetes API makes of a NetworkPolicy's spec: (field, why) of the
/// first problem.
fn network_policy(spec: &Value) -> Result<(), Invalid> {
    let bad = |field: String, why: &str| Err((field, why.to_string()));
    label_selector("spec.podSelector", &spec["podSelector"])?;
    for (i, t) in spec["policyTypes"].as_array().into_iter().flatten().enumerate() {
        if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
            return bad(format!("spec.policyTypes[{i}]"), "must be Ingress or Egress");
        }
    }
    for (section, peers_key) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec[section].as_array().into_iter().flatten().enumerate() {
            for (j, peer) in rule[peers_key].as_array().into_iter().flatten().enumerate() {
                network_policy_peer(&format!("spec.{section}[{i}].{peers_key}[{j}]"), peer)?;
            }
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                network_policy_port(&format!("spec.{section}[{i}].ports[{j}]"), port)?;
            }
        }
    }
    Ok(())
}

fn label_selector(field: &str, sel: &Value) -> Result<(), Invalid> {
    for (i, e) in sel["matchExpressions"].as_array().into_iter().flatten().enumerate() {
        let values = e["values"].as_array().map_or(0, Vec::len);
        let why = match (e["operator"].as_str(), values) {
            (Some("In" | "NotIn"), 0) => "In and NotIn need values",
            (Some("Exists" | "DoesNotExist"), 1..) => "Exists and DoesNotExist take no values",
            (Some("In" | "NotIn" | "Exists" | "DoesNotExist"), _) => continue,
            _ => "operator must be In, NotIn, Exists or DoesNotExist",
        };
        return Err((format!("{field}.matchExpressions[{i}]"), why.to_string()));
    }
    Ok(())
}

fn network_policy_peer(field: &str, peer: &Value) -> Result<(), Invalid> {
    let selectors = ["podSelector", "namespaceSelector"].iter().filter(|k| !peer[**k].is_null()).count();
    let block = &peer["ipBlock"];
    if block.is_null() {
        if selectors == 0 {
            return Err((field.to_string(), "must name a podSelector, a namespaceSelector or an ipBlock".into()));
        }
        label_selector(&format!("{field}.podSelector"), &peer["podSelector"])?;
        return label_selector(&format!("{field}.namespaceSelector"), &peer["namespaceSelector"]);
    }
    if selectors > 0 {
        return Err((field.to_string(), "an ipBlock may not be combined with a selector".into()));
    }
    let cidr: ipnet::IpNet = block["cidr"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| (format!("{field}.ipBlock.cidr"), format!("{} is not a CIDR", block["cidr"])))?;
    for (i, e) in block["except"].as_array().into_iter().flatten().enumerate() {
        let inside =
            e.as_str().and_then(|e| e.parse::<ipnet::IpNet>().ok()).is_some_and(|e| cidr.contains(&e) && e != cidr);
        if !inside {
            return Err((format!("{field}.ipBlock.except[{i}]"), format!("{e} must be a CIDR strictly within {cidr}")));
        }
    }
    Ok(())
}

fn network_policy_port(field: &str, port: &Value) -> Result<(), Invalid> {
    let bad = |f: &str, why: String| Err((format!("{field}.{f}"), why));
    if let Some(p) = port.get("protocol").filter(|p| !p.is_null())
        && !matches!(p.as_str(), Some("TCP" | "UDP" | "SCTP"))
    {
        return bad("protocol", format!("{p} is not TCP, UDP or SCTP"));
    }
    let number = match &port["port"] {
        Value::Null => None,
        Value::Number(n) => match n.as_u64().filter(|n| (1..=65535).contains(n)) {
            Some(n) => Some(n),
            None => return bad("port", format!("{n} is not between 1 and 65535")),
        },
        Value::String(name) => {
            let ok = (1..=15).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && name.chars().any(|c| c.is_ascii_lowercase());
            if !ok {
                return bad("port", format!("{name:?} is not a port name (1 to 15 lowercase letters, digits, '-')"));
            }
            None
        }
        other => return bad("port", format!("{other} is not a number or a name")),
    };
    match (&port["endPort"], number) {
        (Value::Null, _) => Ok(()),
        (_, None) => bad("endPort", "needs a numeric port".into()),
        (end, Some(p)) if end.as_u64().is_some_and(|e| e >= p && e <= 65535) => Ok(()),
        (end, Some(p)) => bad("endPort", format!("{end} must be between port {p} and 65535")),
    }
}

fn service_ips(
    cfg: &ClusterConfig,
    all: &Objects,
    key: &Key,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let name = key.name.as_str();
    let invalid = |field: &str, why: String| ApiError::invalid("Service", name, field, why);
    let others = || {
        all.list("services", None)
            .filter(|s| !(s["metadata"]["namespace"] == key.namespace.as_str() && s["metadata"]["name"] == name))
    };

    // ClusterIP: immutable once set; a requested one must be in range and free.
    let requested = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    let previous = old.and_then(|o| o["spec"]["clusterIP"].as_str()).map(str::to_string);
    if svc["spec"]["type"] == "ExternalName" {
        svc["spec"].as_object_mut().map(|s| s.remove("clusterIP"));
    } else if let Some(prev) = previous.filter(|p| !p.is_empty()) {
        if !requested.is_empty() && requested != prev {
            return Err(invalid("spec.clusterIP", format!("field is immutable (it is {prev})")));
        }
        svc["spec"]["clusterIP"] = json!(prev);
    } else if requested == "None" {
        svc["spec"]["clusterIPs"] = json!(["None"]);
    } else {
        let taken: BTreeSet<String> =
            others().filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_string)).collect();
        let ip = if requested.is_empty() {
            allocate_cluster_ip(cfg, key, &taken)
                .ok_or_else(|| invalid("spec.clusterIP", "the service CIDR is full".into()))?
        } else {
            let ip: Ipv4Addr = requested
                .parse()
                .map_err(|_| invalid("spec.clusterIP", format!("{requested:?} is not a valid IPv4 address")))?;
            if !cfg.service_cidr.contains(&ip) || ip == cfg.service_cidr.network() || ip == cfg.service_cidr.broadcast()
            {
                return Err(invalid(
                    "spec.clusterIP",
                    format!(
                        "{requested}: provided IP is not in the valid range. The range of valid IPs is {}",
                        cfg.service_cidr
                    ),
                ));
            }
            if taken.contains(&requested) {
                return Err(invalid("spec.clusterIP", format!("{requested}: provided IP is already allocated")));
            }
            ip
        };
        svc["spec"]["clusterIP"] = json!(ip.to_string());
    }
    if let Some(ip) = svc["spec"]["clusterIP"].as_str().map(str::to_string)
        && ip != "None"
    {
        svc["spec"]["clusterIPs"] = json!([ip]);
        svc["spec"]["ipFamilies"] = json!(["IPv4"]);
        svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }

    // NodePorts for NodePort and LoadBalancer Services.
    if matches!(svc["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer")) {
        let mut taken: BTreeSet<u16> = others()
            .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["nodePort"].as_u64().map(|n| n as u16))
            .collect();
        let old_ports: Vec<Value> = old.and_then(|o| o["spec"]["ports"].as_array().cloned()).unwrap_or_default();
        for (i, p) in svc["spec"]["ports"].as_array_mut().into_iter().flatten().enumerate() {
            let port = match p["nodePort"].as_u64() {
                Some(n) => {
                    let n = u16::try_from(n).ok().filter(|n| cfg.node_ports.contains(n)).ok_or_else(|| {
                        invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            format!(
                                "{n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                cfg.node_ports.start(),
                                cfg.node_ports.end()
                            ),
                        )
                    })?;
                    if taken.contains(&n) {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            format!("{n}: provided port is already allocated"),
                        ));
                    }
                    n
                }
                None => {
                    let kept = old_ports.iter().find(|o| o["port"] == p["port"]).and_then(|o| o["nodePort"].as_u64());
                    match kept {
                        Some(n) => n as u16,
                        None => cfg
                            .node_ports
                            .clone()
                            .find(|n| !taken.contains(n))
                            .ok_or_else(|| invalid("spec.ports", "no NodePort is free".into()))?,
                    }
                }
            };
            taken.insert(port);
            p["nodePort"] = json!(port);
        }
    } else {
        for p in svc["spec"]["ports"].as_array_mut().into_iter().flatten() {
            p.as_object_mut().map(|o| o.remove("nodePort"));
        }
    }
    Ok(())
}

/// The lowest free ClusterIP; 10.96.0.1 and 10.96.0.10 go only to their owners.
fn allocate_cluster_ip(cfg: &ClusterConfig, key: &Key, taken: &BTreeSet<String>) -> Option<Ipv4Addr> {
    let owner = (key.namespace.as_str(), key.name.as_str());
    if owner == ("default", "kubernetes") {
        return Some(cfg.kubernetes_ip());
    }
    if owner == ("kube-system", "kube-dns") && !taken.contains(&cfg.dns_ip().to_string()) {
        return Some(cfg.dns_ip());
    }
    let base = u32::from(cfg.service_cidr.network());
    let size = 1u32 << (32 - cfg.service_cidr.prefix_len());
    (2..size - 1)
        .map(|i| Ipv4Addr::from(base + i))
        .filter(|ip| *ip != cfg.dns_ip())
        .find(|ip| !taken.contains(&ip.to_string()))
}

#[cfg(test)]
mod tests {
    use super::network_policy;
    use serde_json::json;

    #[test]
    fn network_policies_are_checked_as_the_api_does() {
        let ok = json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}, {"namespaceSelector": {}}],
                         "ports": [{"port": 80, "endPort": 90}, {"port": "http", "protocol": "SCTP"}, {"protocol": "UDP"}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"a": "b"}}}]}]});
        assert_eq!(network_policy(&ok), Ok(()));
        for (spec, field) in [
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
                "spec.podSelector.matchExpressions[0]",
            ),
            (json!({"podSelector": {}, "policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
            (json!({"podSelector": {}, "ingress": [{"from": [{}]}]}), "spec.ingress[0].from[0]"),
            (
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (
                json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "spec.egress[0].to[0].ipBlock.cidr",
            ),
            (
                json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}), "spec.ingress[0].ports[0].port"),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "Not_A_Name"}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}),
                "spec.ingress[0].ports[0].protocol",
            ),
            (json!({"podSelector": {}, "ingress": [{"ports": [{"endPort": 90}]}]}), "spec.ingress[0].ports[0].endPort"),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
        ] {
            let got = network_policy(&spec);
            assert_eq!(got.as_ref().map_err(|e| e.0.as_str()), Err(field), "{spec}: {got:?}");
        }
    }
}
