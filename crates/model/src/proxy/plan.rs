//! From one Service and its EndpointSlices to the chains, map elements and sets that
//! carry it. Each Service is planned on its own, so an endpoint change re-plans one
//! Service, not the cluster.

use super::render::{self, Rule};
pub use crate::l4::Proto;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// "" for a Service's single unnamed port.
    pub name: String,
    pub protocol: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// What the proxy needs of a Service (IPv4 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// None for headless and ExternalName Services, which the proxy does not carry.
    pub cluster_ip: Option<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub internal_local: bool,
    pub external_local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One EndpointSlice: its ports (name, protocol, number; named target ports are already
/// resolved per pod by the slice controller) and endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slice {
    pub ports: Vec<(String, Proto, u16)>,
    pub endpoints: Vec<Endpoint>,
}

/// Who is planning: this node, and the cluster's ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub node: String,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
}

/// The state of one Service in the kernel, without the rules of its chains (their names
/// carry a hash of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub chains: BTreeSet<String>,
    pub service_ips: BTreeMap<(Ipv4Addr, Proto, u16), String>,
    pub node_ports: BTreeMap<(Proto, u16), String>,
    pub no_endpoints: BTreeSet<(Ipv4Addr, Proto, u16)>,
    pub no_endpoint_node_ports: BTreeSet<(Proto, u16)>,
    /// Affinity sets by name, with their timeout.
    pub affinity_sets: BTreeMap<String, u32>,
    /// Every endpoint the Service DNATs to: (protocol, IP, port).
    pub endpoints: BTreeSet<(Proto, Ipv4Addr, u16)>,
    /// The endpoints on this node: a pod here may reach itself through the Service
    /// (hairpin), which must be masqueraded. Pods elsewhere never loop back through here.
    pub hairpin: BTreeSet<Ipv4Addr>,
}

/// The plan for one Service: its summary and, per chain, the `add rule` commands that
/// fill it, already rendered as nft JSON (compact: 10,000 Services are 100,000 rules).
#[derive(Debug, Clone, Default)]
pub struct Fragment {
    pub summary: Summary,
    pub rules: BTreeMap<String, String>,
}

impl Fragment {
    /// Adds a chain holding `rules`, named after its content; returns the name. Each
    /// rule is serialized once: the hash is taken over that text.
    fn chain(&mut self, prefix: &str, id: &str, rules: Vec<Rule>) -> String {
        let bodies: Vec<String> = rules.iter().map(Rule::text).collect();
        let name = format!("{prefix}-{id}-{}", render::text_hash(&bodies));
        self.summary.chains.insert(name.clone());
        self.rules.insert(name.clone(), render::add_rules(&name, &bodies));
        name
    }
}

/// The endpoints traffic may go to: the ready ones, else (when none is ready) the ones
/// still serving while they terminate.
fn usable<'a>(eps: impl Iterator<Item = (&'a Endpoint, u16)> + Clone) -> Vec<(Ipv4Addr, u16)> {
    let ready: Vec<_> = eps.clone().filter(|(e, _)| e.ready).map(|(e, p)| (e.ip, p)).collect();
    let mut out = if ready.is_empty() {
        eps.filter(|(e, _)| e.serving && e.terminating).map(|(e, p)| (e.ip, p)).collect()
    } else {
        ready
    };
    out.sort();
    out.dedup();
    out
}

/// Plans one Service given its slices. A Service with no ClusterIP (headless,
/// ExternalName) plans to nothing.
pub fn plan_service(ctx: &Context, svc: &Service, slices: &[Slice]) -> Fragment {
    let mut f = Fragment::default();
    let Some(cluster_ip) = svc.cluster_ip else { return f };
    for sp in &svc.ports {
        let id = format!(
            "{}/{}/{}/{}",
            svc.namespace,
            svc.name,
            sp.protocol.word(),
            if sp.name.is_empty() { sp.port.to_string() } else { sp.name.clone() }
        );
        // This port's endpoints, with the target port each slice resolved for it.
        let all: Vec<(&Endpoint, u16)> = slices
            .iter()
            .filter_map(|s| {
                s.ports.iter().find(|(n, p, _)| *n == sp.name && *p == sp.protocol).map(|(_, _, n)| (s, *n))
            })
            .flat_map(|(s, port)| s.endpoints.iter().map(move |e| (e, port)))
            .collect();
        let local = |(e, _): &(&Endpoint, u16)| e.node.as_deref() == Some(ctx.node.as_str());
        let cluster_eps = usable(all.iter().copied());
        let local_eps = usable(all.iter().copied().filter(local));
        f.summary.endpoints.extend(cluster_eps.iter().chain(&local_eps).map(|(ip, port)| (sp.protocol, *ip, *port)));
        f.summary.hairpin.extend(local_eps.iter().map(|(ip, _)| *ip));
        let has_external = !svc.external_ips.is_empty() || !svc.load_balancer_ips.is_empty() || sp.node_port.is_some();
        let comment = match sp.name.as_str() {
            "" => format!("{}/{}", svc.namespace, svc.name),
            port => format!("{}/{}:{port}", svc.namespace, svc.name),
        };

        if cluster_eps.is_empty() {
            // No usable endpoint anywhere: reject at once, on every address of the Service.
            f.summary.no_endpoints.insert((cluster_ip, sp.protocol, sp.port));
            for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
                f.summary.no_endpoints.insert((*ip, sp.protocol, sp.port));
            }
            if let Some(np) = sp.node_port {
                f.summary.no_endpoint_node_ports.insert((sp.protocol, np));
            }
            continue;
        }
        // One affinity set per endpoint traffic may go to: the cluster's, and the node's
        // own (which, when none is ready here, may be terminating ones the cluster's
        // ready endpoints do not include).
        let affinity: Option<BTreeMap<(Ipv4Addr, u16), String>> = svc.affinity_timeout.map(|t| {
            let sets: BTreeMap<_, _> = cluster_eps
                .iter()
                .chain(&local_eps)
                .map(|&(ip, port)| ((ip, port), format!("aff-{id}-{ip}:{port}-{t}")))
                .collect();
            for s in sets.values() {
                f.summary.affinity_sets.insert(s.clone(), t);
            }
            sets
        });
        let pick = |eps: &[(Ipv4Addr, u16)]| {
            let sets =
                affinity.as_ref().map(|sets| eps.iter().filter_map(|ep| sets.get(ep).cloned()).collect::<Vec<_>>());
            render::pick_endpoint(sp.protocol, eps, sets.as_deref(), &comment)
        };
        // ClusterIP traffic: to every usable endpoint, or only the node's own with
        // internalTrafficPolicy: Local (dropped when there is none here).
        let mut svc_rules = Vec::new();
        if svc.internal_local {
            if local_eps.is_empty() {
                svc_rules.push(render::drop_rule(&format!("{comment} has no endpoint on this node")));
            } else {
                svc_rules.extend(pick(&local_eps));
            }
        } else {
            svc_rules.extend(pick(&cluster_eps));
        }
        let svc_chain = f.chain("svc", &id, svc_rules);
        f.summary.service_ips.insert((cluster_ip, sp.protocol, sp.port), svc_chain.clone());
        if !has_external {
            continue;
        }
        // Traffic from outside the cluster (NodePort, external and load-balancer IPs).
        let ext_rules = if svc.external_local {
            let mut rules = render::external_local_prelude(ctx.cluster_cidr, &svc_chain);
            if local_eps.is_empty() {
                rules.push(render::drop_rule(&format!("{comment} has no endpoint on this node")));
            } else {
                rules.extend(pick(&local_eps));
            }
            rules
        } else {
            render::masquerade_then(&svc_chain)
        };
        let ext_chain = f.chain("ext", &id, ext_rules);
        for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            f.summary.service_ips.insert((*ip, sp.protocol, sp.port), ext_chain.clone());
        }
        if let Some(np) = sp.node_port {
            f.summary.node_ports.insert((sp.protocol, np), ext_chain);
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ctx() -> Context {
        Context {
            node: "node-1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        }
    }

    fn ep(ip: &str, node: &str, ready: bool) -> Endpoint {
        Endpoint { ip: ip.parse().unwrap(), node: Some(node.into()), ready, serving: ready, terminating: false }
    }

    fn web() -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ip: Some("10.96.0.20".parse().unwrap()),
            ports: vec![ServicePort { name: "http".into(), protocol: Proto::Tcp, port: 80, node_port: None }],
            ..Default::default()
        }
    }

    fn slice(eps: Vec<Endpoint>) -> Slice {
        Slice { ports: vec![("http".into(), Proto::Tcp, 8080)], endpoints: eps }
    }

    #[test]
    fn ready_endpoints_only_and_named_ports_resolved() {
        let f = plan_service(
            &ctx(),
            &web(),
            &[slice(vec![ep("10.244.1.5", "node-1", true), ep("10.244.2.5", "node-2", false)])],
        );
        assert_eq!(f.summary.endpoints.iter().map(|e| e.1.to_string()).collect::<Vec<_>>(), ["10.244.1.5"]);
        assert!(f.summary.endpoints.iter().all(|e| e.2 == 8080), "the slice's port for `http`, not the Service's 80");
        assert_eq!(f.summary.service_ips.len(), 1);
        assert!(f.summary.no_endpoints.is_empty());
    }

    #[test]
    fn terminating_serving_endpoints_are_the_fallback() {
        let mut t = ep("10.244.2.5", "node-2", false);
        t.serving = true;
        t.terminating = true;
        let f = plan_service(&ctx(), &web(), &[slice(vec![t])]);
        assert_eq!(f.summary.endpoints.len(), 1);
    }

    #[test]
    fn no_usable_endpoint_rejects_on_every_address() {
        let mut s = web();
        s.external_ips = vec!["203.0.113.7".parse().unwrap()];
        s.ports[0].node_port = Some(30080);
        let f = plan_service(&ctx(), &s, &[slice(vec![ep("10.244.2.5", "node-2", false)])]);
        assert!(f.summary.service_ips.is_empty() && f.summary.chains.is_empty());
        assert_eq!(f.summary.no_endpoints.len(), 2);
        assert_eq!(f.summary.no_endpoint_node_ports.len(), 1);
    }

    #[test]
    fn chain_names_follow_content() {
        let a = plan_service(&ctx(), &web(), &[slice(vec![ep("10.244.1.5", "node-1", true)])]);
        let b = plan_service(&ctx(), &web(), &[slice(vec![ep("10.244.1.5", "node-1", true)])]);
        let c = plan_service(&ctx(), &web(), &[slice(vec![ep("10.244.1.6", "node-1", true)])]);
        assert_eq!(a.summary, b.summary);
        assert_ne!(a.summary.chains, c.summary.chains);
        assert!(a.summary.chains.iter().all(|c| c.starts_with("svc-default/web/tcp/http-")));
    }

    #[test]
    fn a_port_missing_from_the_slice_has_no_endpoint() {
        let mut s = web();
        s.ports[0].name = "https".into();
        let f = plan_service(&ctx(), &s, &[slice(vec![ep("10.244.1.5", "node-1", true)])]);
        assert_eq!(f.summary.no_endpoints.len(), 1);
    }

    #[test]
    fn external_local_uses_node_local_endpoints() {
        let mut s = web();
        s.ports[0].node_port = Some(30080);
        s.external_local = true;
        let f = plan_service(
            &ctx(),
            &s,
            &[slice(vec![ep("10.244.1.5", "node-1", true), ep("10.244.2.5", "node-2", true)])],
        );
        let ext = f.summary.node_ports[&(Proto::Tcp, 30080)].clone();
        let text = &f.rules[&ext];
        assert!(text.contains("10.244.1.5") && !text.contains("10.244.2.5"), "{text}");
        let last = text.rsplit("{\"add\"").next().unwrap();
        assert!(last.contains("dnat") && !last.contains("16384"), "the local path keeps the client's address: {last}");
    }

    #[test]
    fn headless_services_plan_nothing() {
        let mut s = web();
        s.cluster_ip = None;
        let f = plan_service(&ctx(), &s, &[slice(vec![ep("10.244.1.5", "node-1", true)])]);
        assert_eq!(f.summary, Summary::default());
    }
}
