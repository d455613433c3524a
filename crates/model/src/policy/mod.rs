//! NetworkPolicy (networking.k8s.io/v1) as nftables state for flatnet's table
//! `ip flatnet-policy`, planned for one node: each node enforces the policies of its own
//! pods, egress where the client runs and ingress where the server runs, on the
//! `forward` hook, after the Service proxy's DNAT (so policy sees the endpoint a Service
//! chose, as Kubernetes requires).
//!
//! The shape of the ruleset keeps the cost per packet independent of how many policies
//! and pods the cluster has. Two base chains, `egress` then `ingress`, each:
//! - `ct state established,related accept`: replies and the rest of an allowed
//!   connection cost one conntrack lookup;
//! - `ip saddr vmap @egress` (`ip daddr vmap @ingress`): one hash lookup finds the chain
//!   of an isolated local pod (a pod no policy selects is not in the map: allowed);
//! - that pod chain (`in-…`, `out-…`) jumps to the chain of each policy that selects the
//!   pod and ends in a drop counted per policy;
//! - a policy chain (`pol-ingress-<ns>/<name>-…`) has a rule per (rule, peer, port) that
//!   accepts, which ends that direction's base chain only. Peers are sets of pod IPs, one
//!   set per selector (`pods-…`), kept up to date element by element as pods and labels
//!   change; `ipBlock`s are interval sets (`cidr-…`) with the `except`s cut out; egress
//!   to a named port is a set of (pod IP, protocol, port) (`nport-…`).
//!
//! Chains are named by a hash of their rules, so pods with the same policies share one,
//! a chain's content never changes under its name, and a sync compares names only. A
//! policy added to a pod rewrites only the pod's short chain of jumps.

mod members;
mod plan;
mod render;
mod sync;
#[cfg(test)]
mod tests;

pub use crate::l4::Proto;
pub use plan::{Planner, Touched, plan};
pub use sync::{BASE_CHAIN_NAMES, PortElem, State, base_marker, base_transaction, diff};

use crate::selector::LabelSelector;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const TABLE: &str = "flatnet-policy";
pub const FAMILY: &str = "ip";

pub type Labels = BTreeMap<String, String>;
/// (namespace, name).
pub type Key = (String, String);

/// What policy needs of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub labels: Labels,
    /// None until the pod has an address (or when it uses the host's network).
    pub ip: Option<Ipv4Addr>,
    pub node: Option<String>,
    /// Its containers' named ports.
    pub ports: Vec<NamedPort>,
    /// Finished (or on the host's network): it has no address of its own to program.
    pub finished: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

/// A NetworkPolicy, with `policyTypes` applied: `ingress` is Some when it isolates its
/// pods for ingress (an empty list then allows nothing), `egress` likewise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub pod_selector: LabelSelector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule: traffic from/to any of `peers` (empty: anywhere) on any
/// of `ports` (empty: every port and protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces of `namespaces`.
    Pods { namespaces: Namespaces, pods: LabelSelector },
    /// Addresses in `cidr` but in none of `except`.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// The policy's own namespace (a peer with only a `podSelector`).
    Own(String),
    Matching(LabelSelector),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port of a protocol (a port entry without `port`).
    Any(Proto),
    /// `port` to `endPort` (the same when there is no `endPort`).
    Range(Proto, u16, u16),
    /// A named port, resolved against the destination pod's container ports.
    Named(Proto, String),
}

/// Everything the plan reads: namespaces' labels, pods and policies, by key.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<Key, Pod>,
    pub policies: BTreeMap<Key, Policy>,
}

/// Ingress or egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn word(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// The named counter of the packets `policy` drops in `dir` (among the policies that
/// isolate a pod, every one of them counts the drop).
pub fn counter_name(dir: Direction, key: &Key) -> String {
    let name = format!("drop-{}-{}/{}", dir.word(), key.0, key.1);
    if name.len() <= 200 {
        name
    } else {
        // nft names are at most 256 bytes; keep the start readable and unique.
        let h = crate::names::fnv1a(&[&key.0, &key.1]);
        format!("{}-{h:016x}", &name[..name.floor_char_boundary(180)])
    }
}

/// (direction, namespace, name) of a counter name, for metrics.
pub fn parse_counter_name(name: &str) -> Option<(Direction, String, String)> {
    let (dir, rest) = if let Some(r) = name.strip_prefix("drop-ingress-") {
        (Direction::Ingress, r)
    } else {
        (Direction::Egress, name.strip_prefix("drop-egress-")?)
    };
    let (ns, n) = rest.split_once('/')?;
    Some((dir, ns.to_string(), n.to_string()))
}
