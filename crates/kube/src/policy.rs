//! Pods, namespaces and NetworkPolicies as the policy planner reads them. A policy
//! flatnet cannot fully read fails closed (isolates, allows less) and says why: the agent
//! logs the problems, the lab API refuses the object for them.

use flatnet_model::policy::{self, NamedPort, Namespaces, Peer, PortMatch, Proto, Rule};
use flatnet_model::selector::{LabelSelector, Requirement};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::Ipv4Addr;

/// A Kubernetes label selector as flatnet's; Err for an operator it does not know.
pub fn selector_of(s: &meta::LabelSelector) -> Result<LabelSelector, String> {
    let mut reqs: Vec<Requirement> =
        s.match_labels.iter().flatten().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect();
    for e in s.match_expressions.iter().flatten() {
        let values = || e.values.iter().flatten().cloned().collect();
        reqs.push(match e.operator.as_str() {
            "In" => Requirement::In(e.key.clone(), values()),
            "NotIn" => Requirement::NotIn(e.key.clone(), values()),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            op => return Err(format!("matchExpressions operator {op:?} is not In, NotIn, Exists or DoesNotExist")),
        });
    }
    Ok(LabelSelector(reqs))
}

/// What policy needs of a pod: labels, its own address (not for host-network pods, nor
/// for finished ones, whose address may be someone else's now), node and named ports.
pub fn pod_of(p: &Pod) -> Option<policy::Pod> {
    let spec = p.spec.as_ref()?;
    let status = p.status.as_ref();
    let finished = status.and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    let ip = status.filter(|_| spec.host_network != Some(true) && !finished).and_then(|s| {
        s.pod_ip.iter().chain(s.pod_ips.iter().flatten().map(|i| &i.ip)).find_map(|ip| ip.parse::<Ipv4Addr>().ok())
    });
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                proto: Proto::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    Some(policy::Pod {
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ip,
        node: spec.node_name.clone(),
        ports,
        finished: finished || spec.host_network == Some(true),
    })
}

fn peer_of(ns: &str, p: &NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("a peer with an ipBlock may have no selector".into());
        }
        let cidr = b.cidr.parse().map_err(|_| format!("ipBlock cidr {:?} is not an IPv4 CIDR", b.cidr))?;
        let except = b
            .except
            .iter()
            .flatten()
            .map(|e| e.parse().map_err(|_| format!("ipBlock except {e:?} is not an IPv4 CIDR")))
            .collect::<Result<_, _>>()?;
        return Ok(Peer::Block { cidr, except });
    }
    let pods = p.pod_selector.as_ref().map(selector_of).transpose()?.unwrap_or_default();
    let namespaces = match &p.namespace_selector {
        Some(s) => Namespaces::Matching(selector_of(s)?),
        None if p.pod_selector.is_some() => Namespaces::Own(ns.to_string()),
        None => return Err("a peer needs a podSelector, a namespaceSelector or an ipBlock".into()),
    };
    Ok(Peer::Pods { namespaces, pods })
}

fn port_of(p: &NetworkPolicyPort) -> Result<PortMatch, String> {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    let proto = Proto::parse(proto).ok_or_else(|| format!("protocol {proto:?} is not TCP, UDP or SCTP"))?;
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| format!("port {n} is out of range"));
    Ok(match &p.port {
        None if p.end_port.is_some() => return Err("endPort needs a port".into()),
        None => PortMatch::Any(proto),
        Some(IntOrString::Int(n)) => {
            let (a, b) = (number(*n)?, number(p.end_port.unwrap_or(*n))?);
            if b < a {
                return Err(format!("endPort {b} is below port {a}"));
            }
            PortMatch::Range(proto, a, b)
        }
        Some(IntOrString::String(_)) if p.end_port.is_some() => return Err("endPort needs a numeric port".into()),
        Some(IntOrString::String(name)) => PortMatch::Named(proto, name.clone()),
    })
}

/// A rule with its peers and ports; a peer or port that is invalid is left out, and a
/// rule left with none of the ones it had allows nothing (fails closed). Problems are
/// returned for the log.
fn rule_of(
    ns: &str,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    problems: &mut Vec<String>,
) -> Option<Rule> {
    let (peers, ports) = (peers.map_or(&[][..], Vec::as_slice), ports.map_or(&[][..], Vec::as_slice));
    let mut r = Rule::default();
    for p in peers {
        match peer_of(ns, p) {
            Ok(p) => r.peers.push(p),
            Err(e) => problems.push(e),
        }
    }
    for p in ports {
        match port_of(p) {
            Ok(p) => r.ports.push(p),
            Err(e) => problems.push(e),
        }
    }
    let emptied = (!peers.is_empty() && r.peers.is_empty()) || (!ports.is_empty() && r.ports.is_empty());
    (!emptied).then_some(r)
}

/// A NetworkPolicy with `policyTypes` applied (inferred as the API does when absent:
/// Ingress, and Egress when there are egress rules), and problems found in it.
pub fn policy_of(np: &NetworkPolicy) -> (Option<policy::Policy>, Vec<String>) {
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    let Some(spec) = np.spec.as_ref() else { return (None, vec!["it has no spec".into()]) };
    let mut problems = Vec::new();
    let types: Vec<&str> = match &spec.policy_types {
        Some(t) => t.iter().map(String::as_str).collect(),
        None if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec!["Ingress", "Egress"],
        None => vec!["Ingress"],
    };
    let pod_selector = match spec.pod_selector.as_ref().map(selector_of).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            // Fail closed: every pod of the namespace isolated, nothing allowed.
            let none = |t: &str| types.contains(&t).then(Vec::new);
            let p = policy::Policy {
                pod_selector: LabelSelector::default(),
                ingress: none("Ingress"),
                egress: none("Egress"),
            };
            return (Some(p), vec![format!("podSelector: {e}; the namespace's pods are isolated until it is fixed")]);
        }
    };
    let ingress = types.contains(&"Ingress").then(|| {
        spec.ingress
            .iter()
            .flatten()
            .filter_map(|r| rule_of(&ns, r.from.as_ref(), r.ports.as_ref(), &mut problems))
            .collect()
    });
    let egress = types.contains(&"Egress").then(|| {
        spec.egress
            .iter()
            .flatten()
            .filter_map(|r| rule_of(&ns, r.to.as_ref(), r.ports.as_ref(), &mut problems))
            .collect()
    });
    (Some(policy::Policy { pod_selector, ingress, egress }), problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netpol(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})).unwrap()
    }

    #[test]
    fn policy_types_are_inferred_and_bad_input_fails_closed() {
        let (p, _) = policy_of(&netpol(serde_json::json!({"podSelector": {}, "egress": [{}]})));
        let p = p.unwrap();
        assert!(p.ingress == Some(vec![]) && p.egress.as_ref().is_some_and(|e| e.len() == 1));
        let (p, _) = policy_of(&netpol(serde_json::json!({"podSelector": {}, "egress": []})));
        assert!(p.unwrap().egress.is_none(), "an empty egress list without policyTypes does not isolate egress");
        // An unknown operator: the namespace's pods are isolated, nothing allowed.
        let bad = serde_json::json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}, "ingress": [{}]});
        let (p, problems) = policy_of(&netpol(bad));
        let p = p.unwrap();
        assert!(p.pod_selector.0.is_empty() && p.ingress == Some(vec![]) && !problems.is_empty());
        // endPort without a port, and a bad CIDR: the rule allows nothing (it is left out).
        let (p, problems) = policy_of(&netpol(serde_json::json!({"podSelector": {}, "ingress": [
            {"ports": [{"endPort": 90}]}, {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]})));
        assert_eq!(p.unwrap().ingress, Some(vec![]));
        assert_eq!(problems.len(), 2, "{problems:?}");
        // A peer with a podSelector alone is in the policy's own namespace; with both, AND.
        let (p, _) = policy_of(&netpol(serde_json::json!({"podSelector": {}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"a": "b"}}},
            {"namespaceSelector": {}, "podSelector": {}}]}]})));
        let peers = &p.unwrap().ingress.unwrap()[0].peers;
        assert!(matches!(&peers[0], Peer::Pods { namespaces: Namespaces::Own(ns), .. } if ns == "ns"));
        assert!(
            matches!(&peers[1], Peer::Pods { namespaces: Namespaces::Matching(s), pods } if s.0.is_empty() && pods.0.is_empty())
        );
    }
}
