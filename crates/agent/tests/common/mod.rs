//! What the agent's privileged tests share: a node's planning context, Services and
//! EndpointSlices to plan, the proxy's base and the policy planner's golden ruleset as
//! the transactions the agent writes, and `nft list` of a table in a namespace.
#![allow(dead_code)] // each test binary uses its own part

use flatnet_kernel::netns;
use flatnet_model::proxy::{self, Context, Endpoint, Proto, Service, ServicePort, Slice};
use std::net::Ipv4Addr;
use std::path::Path;

pub fn ctx() -> Context {
    Context {
        node: "node-1".into(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
    }
}

/// A Service of `default` on port 80.
pub fn service(name: &str, ip: Ipv4Addr, proto: Proto, node_port: Option<u16>) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: Some(ip),
        ports: vec![ServicePort { name: String::new(), protocol: proto, port: 80, node_port }],
        ..Default::default()
    }
}

/// A slice of ready endpoints on port 8080, all on `node`.
pub fn slice(ips: impl IntoIterator<Item = Ipv4Addr>, proto: Proto, node: &str) -> Slice {
    Slice {
        ports: vec![(String::new(), proto, 8080)],
        endpoints: ips
            .into_iter()
            .map(|ip| Endpoint { ip, node: Some(node.into()), ready: true, serving: true, terminating: false })
            .collect(),
    }
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn ips<'a>(list: &'a [&str]) -> impl Iterator<Item = Ipv4Addr> + 'a {
    list.iter().map(|s| ip(s))
}

/// The proxy's base transaction, as the agent writes it.
pub fn proxy_base() -> Vec<String> {
    proxy::base_transaction(ctx().cluster_cidr, ctx().service_cidr).iter().map(|o| o.to_string()).collect()
}

/// The policy planner's golden ruleset (its base, pod and port sets, an address block
/// with an except cut out, named and ranged ports, counters, verdict maps).
pub fn policy_golden() -> Vec<String> {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../model/tests/golden/policy.json")).unwrap(),
    )
    .unwrap();
    golden["nftables"].as_array().unwrap().iter().map(|o| o.to_string()).collect()
}

/// `nft list table ip <table>` in the namespace at `ns`.
pub fn listing(ns: &Path, table: &str) -> String {
    netns::run_in(ns, || {
        let out = std::process::Command::new("nft").args(["list", "table", "ip", table]).output().unwrap();
        assert!(out.status.success(), "nft list: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    })
    .unwrap()
}
