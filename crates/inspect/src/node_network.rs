//! A node's network as its agent reports it on the Node: the NetworkUnavailable
//! condition, read as up, partial or down.

use k8s_openapi::api::core::v1::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Up, every peer routed.
    Up,
    /// Up, some peers not routed (the message says which and why).
    Partial,
    Down,
}

pub fn network_condition(node: &Node) -> (Network, String) {
    match flatnet_agent::node::network_condition(node) {
        Some((s, r, m)) if s == "False" && r == flatnet_agent::run::REASON_UP => (Network::Up, m),
        Some((s, _, m)) if s == "False" => (Network::Partial, m),
        Some((_, _, m)) => (Network::Down, m),
        None => (Network::Down, "the agent has not reported yet".into()),
    }
}

/// The reading `lab up` waits on: the message, as `Ok` only when the network is up.
pub fn reading(node: &Node) -> Result<String, String> {
    match network_condition(node) {
        (Network::Up, m) => Ok(m),
        (_, m) => Err(m),
    }
}
