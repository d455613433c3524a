//! What decides the members of a policy table's pod sets, and which pods they are.

use super::{Key, Labels, Namespaces, Peer, Pod, Proto};
use crate::selector::LabelSelector;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// What decides a set's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Members {
    /// The addresses of the pods a peer matches (a `pods-…` set).
    Peer(Peer),
    /// (address, protocol, port) of each pod among a peer (every pod when None) that
    /// has a port called `name` of protocol `proto` (an `nport-…` set, for egress).
    NamedPort(Option<Peer>, Proto, String),
    /// The same, of this node's pods that a policy of namespace `ns` selects (an
    /// `nport-…` set, for ingress: the named port resolved on each destination pod).
    Selected { ns: String, selector: LabelSelector, proto: Proto, name: String },
}

/// One member: an address, with a protocol and port in a port set.
pub(super) type Elem = (Ipv4Addr, Option<(Proto, u16)>);

/// What membership reads besides the pod itself: namespaces' labels and this node.
pub(super) struct Scope<'a> {
    pub namespaces: &'a BTreeMap<String, Labels>,
    pub node: &'a str,
}

impl Scope<'_> {
    fn namespace_matches(&self, scope: &Namespaces, ns: &str) -> bool {
        match scope {
            Namespaces::Own(own) => own == ns,
            Namespaces::Matching(sel) => {
                let empty = Default::default();
                sel.matches(self.namespaces.get(ns).unwrap_or(&empty))
            }
        }
    }

    fn peer_has(&self, peer: &Peer, key: &Key, pod: &Pod, ip: Ipv4Addr) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => self.namespace_matches(namespaces, &key.0) && pods.matches(&pod.labels),
            Peer::Block { cidr, except } => cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip)),
        }
    }
}

impl Members {
    /// Whether the set holds addresses only (a `pods-…` set) rather than ports.
    pub(super) fn addresses_only(&self) -> bool {
        matches!(self, Self::Peer(_))
    }

    /// What pod `key` puts in the set: nothing unless it has an address of its own.
    pub(super) fn of(&self, scope: &Scope, key: &Key, pod: &Pod) -> Vec<Elem> {
        let mut out = Vec::new();
        self.add(scope, key, pod, &mut out);
        out
    }

    /// Adds to `out` what pod `key` puts in the set.
    fn add(&self, scope: &Scope, key: &Key, pod: &Pod, out: &mut impl Extend<Elem>) {
        let Some(ip) = pod.ip else { return };
        let (proto, name) = match self {
            Self::Peer(peer) => {
                if scope.peer_has(peer, key, pod, ip) {
                    out.extend([(ip, None)]);
                }
                return;
            }
            Self::NamedPort(peer, proto, name) if peer.as_ref().is_none_or(|p| scope.peer_has(p, key, pod, ip)) => {
                (*proto, name)
            }
            Self::Selected { ns, selector, proto, name }
                if pod.node.as_deref() == Some(scope.node) && *ns == key.0 && selector.matches(&pod.labels) =>
            {
                (*proto, name)
            }
            Self::NamedPort(..) | Self::Selected { .. } => return,
        };
        let ports = pod.ports.iter().filter(|np| np.proto == proto && np.name == *name);
        out.extend(ports.map(|np| (ip, Some((proto, np.port)))));
    }

    /// Every member among `pods`.
    pub(super) fn among(&self, scope: &Scope, pods: &BTreeMap<Key, Pod>) -> BTreeSet<Elem> {
        let mut found = BTreeSet::new();
        for (k, p) in pods {
            self.add(scope, k, p, &mut found);
        }
        found
    }
}
