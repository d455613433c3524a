//! The Service proxy's plan (kube-proxy's job), as nftables JSON for flatnet's own table
//! `ip flatnet`, following the design of kube-proxy's nftables mode:
//!
//! - one dispatch rule per hook, `ip daddr . meta l4proto . th dport vmap @service-ips`
//!   (and `meta l4proto . th dport vmap @service-nodeports` for the node's own
//!   addresses), so the cost per packet does not grow with the number of Services;
//! - a chain per Service port that picks an endpoint with `numgen random mod N` and
//!   DNATs to it (`svc-…`), and one for traffic from outside the cluster (`ext-…`);
//! - sets of Service ports with no usable endpoint, which are rejected at once;
//! - masquerade only where it is needed: hairpin, external traffic with
//!   `externalTrafficPolicy: Cluster`, ClusterIP traffic from outside the pod network,
//!   and pod traffic leaving the cluster.
//!
//! Each endpoint is a rule of its Service's chain rather than a chain of its own: `nft`
//! reads every chain of the table before each transaction, and the kernel lists chains in
//! quadratic time, so 100,000 endpoint chains would make every endpoint change cost
//! seconds. Chain names end in a hash of their rules, so the kernel's chain names tell
//! which content it has: a full sync reads names and map elements, never rules, and an
//! unchanged chain is never rewritten.

mod plan;
pub(crate) mod render;
mod sync;

pub use plan::{Context, Endpoint, Fragment, Proto, Service, ServicePort, Slice, plan_service};
pub use render::{BASE_CHAINS, BASE_SETS, FAMILY, MASQUERADE_MARK, TABLE, base_marker, base_transaction};
pub use sync::{Actual, Part, Proxier, Sink, Transaction};

/// A Service's identity: namespace and name.
pub type ServiceKey = (String, String);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ep(ip: &str, node: &str) -> Endpoint {
        Endpoint { ip: ip.parse().unwrap(), node: Some(node.into()), ready: true, serving: true, terminating: false }
    }

    /// A set of Services covering each path: ClusterIP over named ports, UDP, NodePort
    /// with externalTrafficPolicy Local, an external and a load-balancer IP, affinity,
    /// internalTrafficPolicy Local, and a Service with no endpoint.
    fn services() -> Vec<(Service, Vec<Slice>)> {
        let port = |name: &str, protocol, port, node_port| ServicePort { name: name.into(), protocol, port, node_port };
        let web = Service {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ip: Some("10.96.0.20".parse().unwrap()),
            ports: vec![port("http", Proto::Tcp, 80, Some(30080))],
            external_local: true,
            external_ips: vec!["203.0.113.7".parse().unwrap()],
            load_balancer_ips: vec!["203.0.113.8".parse().unwrap()],
            ..Default::default()
        };
        let web_slices = vec![Slice {
            ports: vec![("http".into(), Proto::Tcp, 8080)],
            endpoints: vec![ep("10.244.1.5", "node-1"), ep("10.244.2.5", "node-2"), ep("10.244.3.5", "node-3")],
        }];
        let dns = Service {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            cluster_ip: Some("10.96.0.10".parse().unwrap()),
            ports: vec![port("dns", Proto::Udp, 53, None), port("dns-tcp", Proto::Tcp, 53, None)],
            internal_local: true,
            ..Default::default()
        };
        let dns_slices = vec![Slice {
            ports: vec![("dns".into(), Proto::Udp, 53), ("dns-tcp".into(), Proto::Tcp, 53)],
            endpoints: vec![ep("10.244.1.9", "node-1"), ep("10.244.2.9", "node-2")],
        }];
        let sticky = Service {
            namespace: "shop".into(),
            name: "cart".into(),
            cluster_ip: Some("10.96.0.30".parse().unwrap()),
            ports: vec![port("", Proto::Tcp, 80, None)],
            affinity_timeout: Some(600),
            ..Default::default()
        };
        let sticky_slices = vec![Slice {
            ports: vec![(String::new(), Proto::Tcp, 80)],
            endpoints: vec![ep("10.244.2.7", "node-2"), ep("10.244.3.7", "node-3")],
        }];
        let empty = Service {
            namespace: "default".into(),
            name: "empty".into(),
            cluster_ip: Some("10.96.0.40".parse().unwrap()),
            ports: vec![port("", Proto::Tcp, 80, Some(30081))],
            ..Default::default()
        };
        vec![(web, web_slices), (dns, dns_slices), (sticky, sticky_slices), (empty, vec![])]
    }

    #[test]
    fn golden_ruleset() {
        let ctx = Context {
            node: "node-1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        };
        let mut objects = base_transaction(ctx.cluster_cidr, ctx.service_cidr);
        let plans: Vec<_> = services()
            .iter()
            .map(|(s, sl)| ((s.namespace.clone(), s.name.clone()), plan_service(&ctx, s, sl)))
            .collect();
        let rendered = Proxier::new().full_sync(&Actual::default(), plans).objects.join(",");
        let rendered: Vec<Value> = serde_json::from_str(&format!("[{rendered}]")).unwrap();
        objects.extend(rendered);
        // Every object is valid nft JSON as the `nftables` crate's schema has it, except
        // the declarations of verdict maps: the crate has no `verdict` data type.
        for o in &objects {
            let typed: Result<nftables::schema::NfObject, _> = serde_json::from_value(o.clone());
            let verdict_map = o["add"]["map"]["map"] == "verdict";
            assert!(typed.is_ok() || verdict_map, "not valid nftables JSON: {o}: {typed:?}");
        }
        let got = serde_json::to_string_pretty(&serde_json::json!({"nftables": objects})).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/proxy.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
        if let Some((i, (g, w))) = got.lines().zip(want.lines()).enumerate().find(|(_, (g, w))| g != w) {
            panic!("rendered ruleset changed at line {}: got {g:?}, golden {w:?}; UPDATE_GOLDEN=1 to accept", i + 1);
        }
        assert_eq!(
            got.lines().count(),
            want.lines().count(),
            "rendered ruleset changed length; UPDATE_GOLDEN=1 to accept"
        );
        let text: Value = serde_json::from_str(&got).unwrap();
        let s = text.to_string();
        for needle in [
            "\"@service-ips\"",
            "\"numgen\"",
            "\"fully-random\"",
            "tcp reset",
            "\"update\"",
            "aff-shop/cart/tcp/80-10.244.2.7:80-600",
        ] {
            assert!(s.contains(needle), "{needle} missing from the ruleset");
        }
    }
}
