//! Node IPAM: every Node gets a /24 of the cluster CIDR in `spec.podCIDR` and
//! `spec.podCIDRs`. A deleted node's range is free again, since what is taken is read
//! from the Nodes that exist.

use crate::apiserver::admission::ClusterConfig;
use crate::store::{Change, Key, Objects};
use ipnet::Ipv4Net;
use serde_json::json;
use std::collections::BTreeSet;

pub(super) fn plan(objects: &Objects, cluster: &ClusterConfig) -> Vec<(Key, Change)> {
    let mut taken: BTreeSet<Ipv4Net> = objects
        .list("nodes", None)
        .filter_map(|n| n["spec"]["podCIDR"].as_str().and_then(|c| c.parse().ok()))
        .collect();
    let mut out = Vec::new();
    let Ok(mut subnets) = cluster.cluster_cidr.subnets(cluster.node_prefix) else { return out };
    for node in objects.list("nodes", None).filter(|n| n["spec"]["podCIDR"].is_null()) {
        let Some(cidr) = subnets.by_ref().find(|s| !taken.contains(s)) else {
            tracing::warn!("the cluster CIDR {} has no free /{} for a node", cluster.cluster_cidr, cluster.node_prefix);
            break;
        };
        taken.insert(cidr);
        let mut n = (**node).clone();
        n["spec"]["podCIDR"] = json!(cidr.to_string());
        n["spec"]["podCIDRs"] = json!([cidr.to_string()]);
        let name = n["metadata"]["name"].as_str().unwrap_or_default().to_string();
        out.push((Key::new("nodes", "", &name), Change::Put(n)));
    }
    out
}
