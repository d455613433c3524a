//! The lab's nodes as `lab status` shows them: address, pod CIDR, readiness, their pods,
//! and the network their agent reports.

use flatnet_kube::node::{Network, network_state as network_condition};
use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::connect;
use flatnet_lab::lifecycle::scenario::pod_ready;
use k8s_openapi::api::core::v1::{Node, Pod};

pub struct NodeRow {
    pub name: String,
    pub ip: Option<std::net::Ipv4Addr>,
    pub pod_cidr: Option<String>,
    pub ready: bool,
    /// Pods on the node that are Ready.
    pub pods_ready: usize,
    pub pods: usize,
    pub network: (Network, String),
}

/// Every Node of the lab's API, with its pods counted.
pub fn read(layout: &Layout) -> anyhow::Result<Vec<NodeRow>> {
    let (nodes, pods) = connect::runtime()?.block_on(async {
        let client = connect::client(layout).await?;
        let nodes = kube::Api::<Node>::all(client.clone()).list(&Default::default()).await?.items;
        let pods = kube::Api::<Pod>::all(client).list(&Default::default()).await?.items;
        anyhow::Ok((nodes, pods))
    })?;
    Ok(nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            let on_node: Vec<&Pod> =
                pods.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name)).collect();
            NodeRow {
                ip: flatnet_kube::node::internal_ip(n),
                pod_cidr: n.spec.as_ref().and_then(|s| s.pod_cidr.clone()),
                ready: node_ready(n),
                pods_ready: on_node.iter().filter(|p| pod_ready(p)).count(),
                pods: on_node.len(),
                network: network_condition(n),
                name,
            }
        })
        .collect())
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
