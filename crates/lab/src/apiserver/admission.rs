//! What the API server does to an object before storing it: defaults, checks that need
//! the rest of the cluster (the namespace exists, a ClusterIP or NodePort is free), and
//! the allocations a real API server makes synchronously (ClusterIPs, NodePorts).

use super::resources::Resource;
use super::status::ApiError;
use crate::store::{Key, Objects};
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
        // Kubernetes' inference: Ingress always, Egress when there is an egress section.
        "NetworkPolicy" if obj["spec"]["policyTypes"].is_null() => {
            let mut types = vec!["Ingress"];
            if obj["spec"].get("egress").is_some() {
                types.push("Egress");
            }
            obj["spec"]["policyTypes"] = json!(types);
        }
        _ => {}
    }
}

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
    if key.resource == "services" {
        service_ips(cfg, all, key, obj, old)?;
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
