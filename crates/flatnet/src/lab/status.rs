//! `flatnet lab status`: what the lab runs and whether each node's network is up, with
//! the agent's own words when it is not.

use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::scenario::pod_ready;
use flatnet_lab::lifecycle::{connect, settings};
use k8s_openapi::api::core::v1::{Node, Pod};

/// A node's network as its agent reports it (the NetworkUnavailable condition).
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
pub fn network_reading(node: &Node) -> Result<String, String> {
    match network_condition(node) {
        (Network::Up, m) => Ok(m),
        (_, m) => Err(m),
    }
}

/// How `lab status` labels a node's network.
fn network_label(node: &Node) -> String {
    match network_condition(node) {
        (Network::Up, m) => m,
        (Network::Partial, m) => format!("PARTIAL: {m}"),
        (Network::Down, m) => format!("DOWN: {m}"),
    }
}

fn process(pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!("running (pid {pid})"),
        None => "NOT RUNNING".into(),
    }
}

pub fn run(layout: &Layout) -> anyhow::Result<()> {
    let Some(settings) = settings::read(layout) else {
        anyhow::bail!("the lab is not up (nothing in {}): run `flatnet lab up`", layout.state.display());
    };
    println!("lab {} ({} node(s), backend {})", layout.state.display(), settings.nodes, settings.backend);
    println!("  control plane  https://{}  {}", settings.listen, process(layout.apiserver()));
    for node in layout.nodes() {
        println!("  {node:<8} kubelet {}  agent {}", process(layout.kubelet(&node)), process(layout.agent(&node)));
    }
    let (nodes, pods) = connect::runtime()?.block_on(async {
        let client = connect::client(layout).await?;
        let nodes = kube::Api::<Node>::all(client.clone()).list(&Default::default()).await?.items;
        let pods = kube::Api::<Pod>::all(client).list(&Default::default()).await?.items;
        anyhow::Ok((nodes, pods))
    })?;
    println!("\n  {:<8} {:<14} {:<15} {:<6} {:<9} NETWORK", "NODE", "IP", "POD CIDR", "READY", "PODS");
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let on_node: Vec<&Pod> =
            pods.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name)).collect();
        let ready = on_node.iter().filter(|p| pod_ready(p)).count();
        println!(
            "  {:<8} {:<14} {:<15} {:<6} {:<9} {}",
            name,
            flatnet_agent::node::internal_ip(n).map(|i| i.to_string()).unwrap_or_default(),
            n.spec.as_ref().and_then(|s| s.pod_cidr.clone()).unwrap_or_else(|| "-".into()),
            if node_ready(n) { "yes" } else { "no" },
            format!("{ready}/{}", on_node.len()),
            network_label(n)
        );
    }
    let metrics: std::net::SocketAddr = flatnet_agent::config::DEFAULT_METRICS_ADDR.parse().expect("literal");
    for node in layout.nodes() {
        println!();
        match crate::status::read(&layout.node_ns(&node), metrics) {
            Ok(s) => print!("{}", crate::status::text(&node, &s)),
            Err(e) => println!("{node}: cannot read its state: {e:#}"),
        }
    }
    Ok(())
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
