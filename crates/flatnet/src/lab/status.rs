//! `flatnet lab status`: what the lab runs and whether each node's network is up, with
//! the agent's own words when it is not.

use flatnet_inspect::lab_nodes;
use flatnet_kube::node::Network;
use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::settings;

/// How `lab status` labels a node's network.
fn network_label(network: &(Network, String)) -> String {
    match network {
        (Network::Up, m) => m.clone(),
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
    let nodes = lab_nodes::read(layout)?;
    println!("\n  {:<8} {:<14} {:<15} {:<6} {:<9} NETWORK", "NODE", "IP", "POD CIDR", "READY", "PODS");
    for n in &nodes {
        println!(
            "  {:<8} {:<14} {:<15} {:<6} {:<9} {}",
            n.name,
            n.ip.map(|i| i.to_string()).unwrap_or_default(),
            n.pod_cidr.as_deref().unwrap_or("-"),
            if n.ready { "yes" } else { "no" },
            format!("{}/{}", n.pods_ready, n.pods),
            network_label(&n.network)
        );
    }
    let metrics: std::net::SocketAddr = flatnet_agent::config::DEFAULT_METRICS_ADDR.parse().expect("literal");
    for node in layout.nodes() {
        println!();
        match flatnet_inspect::status::read(&layout.node_ns(&node), metrics) {
            Ok(s) => print!("{}", crate::status::text(&node, &s)),
            Err(e) => println!("{node}: cannot read its state: {e:#}"),
        }
    }
    Ok(())
}
