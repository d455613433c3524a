//! Reading Nodes the way the planner needs them, and what the agent writes back on its
//! own Node: the annotations peers route by, and the NetworkUnavailable condition.

use flatnet_model::node_network::{Peer, annotations, parse_mac};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The NetworkUnavailable=False reasons the agent sets: every peer routed, or some left
/// out (named in the message).
pub const REASON_UP: &str = "FlatnetIsUp";
pub const REASON_PEERS_PENDING: &str = "FlatnetPeersPending";

pub fn pod_cidr(node: &Node) -> Option<ipnet::Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status.as_ref()?.addresses.as_ref()?.iter().find(|a| a.type_ == "InternalIP")?.address.parse().ok()
}

pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn peer(node: &Node) -> Peer {
    Peer {
        name: node.metadata.name.clone().unwrap_or_default(),
        underlay_ip: annotation(node, annotations::UNDERLAY_IP).and_then(|s| s.parse().ok()),
        pod_cidr: pod_cidr(node),
        backend: annotation(node, annotations::BACKEND).and_then(|s| s.parse().ok()),
        vtep_mac: annotation(node, annotations::VTEP_MAC).and_then(parse_mac),
    }
}

/// A merge patch that sets the annotations that differ (removing the VTEP MAC when the
/// backend no longer uses one), or None when the Node already carries them.
pub fn annotation_patch(node: &Node, want: &BTreeMap<&'static str, String>) -> Option<Value> {
    let mut patch = serde_json::Map::new();
    for (k, v) in want {
        if annotation(node, k) != Some(v.as_str()) {
            patch.insert((*k).to_string(), json!(v));
        }
    }
    if !want.contains_key(annotations::VTEP_MAC) && annotation(node, annotations::VTEP_MAC).is_some() {
        patch.insert(annotations::VTEP_MAC.to_string(), Value::Null);
    }
    (!patch.is_empty()).then(|| json!({"metadata": {"annotations": patch}}))
}

/// The node's NetworkUnavailable condition as (status, reason, message), when set.
pub fn network_condition(node: &Node) -> Option<(String, String, String)> {
    let c = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "NetworkUnavailable")?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
}

/// A strategic merge patch for the NetworkUnavailable condition (merged by type, so
/// the kubelet's conditions stay as they are). `transition` when the status flips: only
/// then does lastTransitionTime move.
pub fn condition_patch(unavailable: bool, reason: &str, message: &str, transition: bool) -> Value {
    let now = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string();
    let mut c = json!({
        "type": "NetworkUnavailable",
        "status": if unavailable { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
    });
    if transition {
        c["lastTransitionTime"] = json!(now);
    }
    json!({"status": {"conditions": [c]}})
}

/// A node's network as its agent reports it (the NetworkUnavailable condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Up, every peer routed.
    Up,
    /// Up, some peers not routed (the message says which and why).
    Partial,
    Down,
}

/// The node's network, and the agent's message about it.
pub fn network_state(node: &Node) -> (Network, String) {
    match network_condition(node) {
        Some((s, r, m)) if s == "False" && r == REASON_UP => (Network::Up, m),
        Some((s, _, m)) if s == "False" => (Network::Partial, m),
        Some((_, _, m)) => (Network::Down, m),
        None => (Network::Down, "the agent has not reported yet".into()),
    }
}
