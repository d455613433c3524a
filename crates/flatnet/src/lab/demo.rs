//! `flatnet lab demo`: brings the lab up if needed, deploys the demo's pods and prints
//! each path check with what it crossed, then how to look closer.

use super::UpArgs;
use anyhow::{Context, bail};
use flatnet_inspect::lab_demo::{self, NAMESPACE};
use flatnet_lab::lifecycle::settings;

pub fn run(args: &UpArgs) -> anyhow::Result<()> {
    let layout = args.state.layout();
    if layout.apiserver().is_none() || settings::read(&layout).is_none() {
        super::up::up(args)?;
        println!();
    }
    let settings = settings::read(&layout).context("the lab's settings are missing")?;
    if settings.nodes < 2 {
        bail!("the demo needs two nodes; this lab has {}: `flatnet lab down` then `flatnet lab demo`", settings.nodes);
    }
    if settings.racks > 1 {
        println!("node-1 is in rack 1 and node-2 in rack 2: the pods below cross the racks' routers");
    }
    println!("deploying in namespace {NAMESPACE}: client and neighbor on node-1, server on node-2");
    let deployed = lab_demo::deploy(&layout, |applied| println!("  {applied}"))?;
    println!("\n  {:<10} {:<8} {:<12} READY", "POD", "NODE", "IP");
    for p in &deployed.pods {
        println!("  {:<10} {:<8} {:<12} yes", p.name, p.node, p.ip);
    }
    let checks = lab_demo::check(&layout, &settings.backend, &deployed, |applied| println!("  {applied}"))?;
    println!("\n  {:<38} {:<7}PATH", "CHECK", "RESULT");
    for r in &checks.rows {
        println!("  {:<38} {:<7}{}", r.check, if r.ok { "PASS" } else { "FAIL" }, r.path);
    }
    for (what, e) in &checks.failed {
        println!("  {what} failed: {e}");
    }
    let routers = lab_demo::router_tables(&layout);
    if !routers.is_empty() {
        println!("\nthe racks' routers (BIRD 2) and the Pod CIDRs they learned by BGP:");
        for r in &routers {
            for (i, x) in r.routes.iter().enumerate() {
                let path: Vec<String> = x.as_path.iter().map(u32::to_string).collect();
                println!(
                    "  {:<9} {:<15} via {:<14} on {:<5} AS path {}",
                    if i == 0 { r.name.as_str() } else { "" },
                    x.prefix,
                    x.via.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    x.dev,
                    path.join(" ")
                );
            }
        }
    }
    let (server_ip, service_ip) = (deployed.ip("server"), &deployed.service_ip);
    let node1 = layout.node_ns("node-1");
    let across = match settings.backend.as_str() {
        "vxlan" => "across nodes, over VXLAN",
        "bgp" if settings.racks > 1 => "across racks, routed by BGP through the routers",
        "bgp" => "across nodes, routed by BGP",
        _ => "across nodes, routed directly",
    };
    println!("\nsee every hop, read from each node's kernel and confirmed by a real packet:");
    println!("  flatnet lab trace {NAMESPACE}/client {NAMESPACE}/server:80 --probe    # {across}");
    println!("  flatnet lab trace {NAMESPACE}/neighbor {NAMESPACE}/server:80 --probe  # dropped: which policy, where");
    println!("  flatnet lab status; flatnet lab doctor");
    println!("\ntry it yourself:");
    println!("  flatnet lab exec client -n {NAMESPACE} -- wget -qO- http://{server_ip}");
    println!("  flatnet lab exec client -n {NAMESPACE} -- wget -qO- http://{service_ip}");
    println!("  flatnet lab exec client -n {NAMESPACE} -- wget -qO- http://server");
    println!("  flatnet lab exec client -n {NAMESPACE} -- dig server.{NAMESPACE}.svc.cluster.local");
    println!("  flatnet lab exec client -n {NAMESPACE} -- ip route");
    println!("  nsenter --net={} nft list table ip flatnet", node1.display());
    println!("  nsenter --net={} nft list table ip flatnet-policy", layout.node_ns("node-2").display());
    println!("  KUBECONFIG={} kubectl get pods,netpol -n {NAMESPACE} -o wide", layout.kubeconfig().display());
    if checks.rows.iter().any(|r| !r.ok) {
        bail!("some checks failed (logs under {}/nodes/)", layout.state.display());
    }
    Ok(())
}
