//! `flatnet doctor` (this node) and `flatnet lab doctor` (each lab node): reads the
//! node's kernel state, its agent's health and, when the API is reachable, its peers,
//! and prints each check with how to fix what fails.

use crate::trace::gather;
use anyhow::Context;
use flatnet_kernel::{Netlink, netns, nft, sysctl};
use flatnet_model::doctor::{Check, Facts, PeerFacts, Status, diagnose};
use flatnet_model::node_network::{Backend, VxlanSettings, vtep_ip};
use k8s_openapi::api::core::v1::Node;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct DoctorOpts {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where the agent serves /healthz.
    #[arg(long, default_value = flatnet_agent::config::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// The VXLAN VNI and port the cluster uses.
    #[arg(long, default_value_t = 1)]
    pub vni: u32,
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    /// The node bridge.
    #[arg(long, default_value = "cni0")]
    pub bridge: String,
}

#[derive(clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub opts: DoctorOpts,
    /// A kubeconfig, to learn this node's peers; without it, the in-cluster service
    /// account (or $KUBECONFIG). Checks that need the API are skipped without one.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in the API (default: $NODE_NAME, else the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
}

/// The node's facts, read in the calling thread's namespace (`ns` names it, for the
/// tunnel pings that open sockets there).
fn read(ns: &Path, me: &str, nodes: &[Node], opts: &DoctorOpts) -> anyhow::Result<Facts> {
    let mut nl = Netlink::open()?;
    let links = gather::links(&mut nl)?;
    let routes = gather::routes(&mut nl)?;
    let (neighbours, fdb) = gather::neighbours(&mut nl, &links)?;
    let node = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(me));
    let backend = node.map(flatnet_agent::node::peer).and_then(|p| p.backend).unwrap_or(Backend::Vxlan);
    let nft = nft::version();
    let ruleset = if nft.is_ok() { nft::list_ruleset().ok() } else { None };
    let bridge_nf = sysctl::read("net.bridge.bridge-nf-call-iptables").ok().map(|v| v == "1");
    let mut f = Facts {
        node: me.into(),
        backend,
        vxlan: VxlanSettings { vni: opts.vni, port: opts.vxlan_port },
        bridge: opts.bridge.clone(),
        nft: Some(nft),
        forwarding: sysctl::read("net.ipv4.ip_forward").ok().map(|v| v == "1"),
        bridge_nf,
        links,
        routes,
        neighbours,
        fdb,
        underlay_ip: node.and_then(flatnet_agent::node::internal_ip),
        pod_cidr: node.and_then(flatnet_agent::node::pod_cidr),
        peers: nodes
            .iter()
            .map(flatnet_agent::node::peer)
            .map(|p| PeerFacts { name: p.name, underlay_ip: p.underlay_ip, pod_cidr: p.pod_cidr, vtep_mac: p.vtep_mac })
            .collect(),
        ruleset,
        tunnel: Vec::new(),
        agent: Some(crate::status::http_get(opts.metrics_addr, "/healthz").map(|_| ())),
    };
    // Through the tunnel, from this node's VTEP address to each peer's.
    if backend == Backend::Vxlan
        && let Some(local) = f.pod_cidr.map(vtep_ip)
    {
        for p in f.peers.iter().filter(|p| p.name != me) {
            let Some(cidr) = p.pod_cidr else { continue };
            let answered = crate::status::ping(ns, local, vtep_ip(cidr), Duration::from_millis(1000)).is_some();
            f.tunnel.push((p.name.clone(), answered));
        }
    }
    Ok(f)
}

fn print(node: &str, checks: &[Check]) {
    println!("{node}");
    for c in checks {
        let mark = match c.status {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        };
        println!("  {mark} {:<13} {}", c.check, c.detail);
        if let Some(fix) = c.fix.as_ref().filter(|_| c.status != Status::Ok) {
            println!("    {:<13} fix: {fix}", "");
        }
    }
}

/// Prints every node's checks; an error when any failed.
fn report(results: Vec<(String, Vec<Check>)>, json: bool) -> anyhow::Result<()> {
    if json {
        let v: serde_json::Map<String, serde_json::Value> =
            results.iter().map(|(n, c)| (n.clone(), serde_json::to_value(c).expect("serializable"))).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (n, c) in &results {
            print(n, c);
        }
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|(n, cs)| cs.iter().filter(|c| c.status == Status::Fail).map(move |c| format!("{n}: {}", c.check)))
        .collect();
    if failed.is_empty() { Ok(()) } else { anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join(", ")) }
}

/// `flatnet doctor` on this node.
pub fn run_node(args: DoctorArgs) -> anyhow::Result<()> {
    let me = crate::agent::this_node(args.node_name)?;
    let rt = flatnet_lab::lifecycle::connect::runtime()?;
    let nodes = rt
        .block_on(async {
            let client = flatnet_agent::watch::client(args.kubeconfig.as_deref()).await.map_err(anyhow::Error::msg)?;
            anyhow::Ok(kube::Api::<Node>::all(client).list(&Default::default()).await?.items)
        })
        .unwrap_or_else(|e| {
            eprintln!(
                "flatnet doctor: the API is not reachable ({e:#}); checks that need this node's peers are skipped"
            );
            Vec::new()
        });
    let ns = PathBuf::from(netns::OWN);
    let facts = read(&ns, &me, &nodes, &args.opts)?;
    report(vec![(me, diagnose(&facts))], args.opts.json)
}

/// `flatnet lab doctor`: every node of the lab, or one.
pub fn run_lab(layout: &flatnet_lab::layout::Layout, node: Option<&str>, opts: &DoctorOpts) -> anyhow::Result<()> {
    let rt = flatnet_lab::lifecycle::connect::runtime()?;
    let nodes = rt.block_on(async {
        let client = flatnet_lab::lifecycle::connect::client(layout).await?;
        anyhow::Ok(kube::Api::<Node>::all(client).list(&Default::default()).await?.items)
    })?;
    let mut results = Vec::new();
    for name in layout.nodes() {
        if node.is_some_and(|n| n != name) {
            continue;
        }
        let ns = layout.node_ns(&name);
        let facts = netns::run_in(&ns, || read(&ns, &name, &nodes, opts))?.with_context(|| format!("read {name}"))?;
        results.push((name, diagnose(&facts)));
    }
    if results.is_empty() {
        anyhow::bail!("no such node in the lab: {}", node.unwrap_or("(none)"));
    }
    report(results, opts.json)
}
