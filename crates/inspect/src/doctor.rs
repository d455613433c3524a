//! `flatnet doctor` (this node) and `flatnet lab doctor` (each lab node): reads the
//! node's kernel state, its agent's health and, when the API is reachable, its peers,
//! and runs the checks (each says how to fix what fails).

use crate::gather;
use anyhow::Context;
use flatnet_kernel::{Netlink, netns, nft, sysctl};
use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::connect;
use flatnet_model::doctor::{Check, Facts, PeerFacts, diagnose};
use flatnet_model::node_network::{Backend, VxlanSettings, vtep_ip};
use k8s_openapi::api::core::v1::Node;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the checks take as given.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the agent serves /healthz.
    pub metrics_addr: SocketAddr,
    /// The VXLAN VNI and port the cluster uses.
    pub vxlan: VxlanSettings,
    /// The node bridge.
    pub bridge: String,
}

/// A node's name and its checks.
pub type NodeChecks = (String, Vec<Check>);

/// The node's facts, read in the calling thread's namespace (`ns` names it, for the
/// tunnel pings that open sockets there).
fn read(ns: &Path, me: &str, nodes: &[Node], opts: &Options) -> anyhow::Result<Facts> {
    let mut nl = Netlink::open()?;
    let links = gather::links(&mut nl)?;
    let routes = gather::routes(&mut nl)?;
    let (neighbours, fdb) = gather::neighbours(&mut nl, &links)?;
    let node = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(me));
    let backend = node.map(flatnet_kube::node::peer).and_then(|p| p.backend).unwrap_or(Backend::Vxlan);
    let nft = nft::version();
    let ruleset = if nft.is_ok() { nft::list_ruleset().ok() } else { None };
    let bridge_nf = sysctl::read("net.bridge.bridge-nf-call-iptables").ok().map(|v| v == "1");
    let mut f = Facts {
        node: me.into(),
        backend,
        vxlan: opts.vxlan,
        bridge: opts.bridge.clone(),
        nft: Some(nft),
        forwarding: sysctl::read("net.ipv4.ip_forward").ok().map(|v| v == "1"),
        bridge_nf,
        links,
        routes,
        neighbours,
        fdb,
        underlay_ip: node.and_then(flatnet_kube::node::internal_ip),
        pod_cidr: node.and_then(flatnet_kube::node::pod_cidr),
        peers: nodes
            .iter()
            .map(flatnet_kube::node::peer)
            .map(|p| PeerFacts { name: p.name, underlay_ip: p.underlay_ip, pod_cidr: p.pod_cidr, vtep_mac: p.vtep_mac })
            .collect(),
        ruleset,
        tunnel: Vec::new(),
        agent: Some(crate::agent_api::http_get(opts.metrics_addr, "/healthz").map(|_| ())),
        agent_ready: Some(crate::agent_api::http_get(opts.metrics_addr, "/readyz").map(|_| ())),
        bgp_sessions: crate::agent_api::bgp_sessions(opts.metrics_addr),
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

/// The cluster's Nodes, through `kubeconfig` (else the in-cluster service account or
/// $KUBECONFIG), for the checks that need this node's peers.
pub fn cluster_nodes(kubeconfig: Option<&Path>) -> anyhow::Result<Vec<Node>> {
    connect::runtime()?.block_on(async {
        let client = flatnet_kube::watch::client(kubeconfig).await.map_err(anyhow::Error::msg)?;
        anyhow::Ok(kube::Api::<Node>::all(client).list(&Default::default()).await?.items)
    })
}

/// The checks of this node, `me`, among `nodes`.
pub fn node(me: &str, nodes: &[Node], opts: &Options) -> anyhow::Result<Vec<Check>> {
    let ns = PathBuf::from(netns::OWN);
    Ok(diagnose(&read(&ns, me, nodes, opts)?))
}

/// `flatnet lab doctor`: every node of the lab, or one.
pub fn lab(layout: &Layout, node: Option<&str>, opts: &Options) -> anyhow::Result<Vec<NodeChecks>> {
    let rt = connect::runtime()?;
    let nodes = rt.block_on(async {
        let client = connect::client(layout).await?;
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
    Ok(results)
}
