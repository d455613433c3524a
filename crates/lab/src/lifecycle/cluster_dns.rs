//! The lab's cluster DNS, deployed as a cluster's is: the `kube-dns` Service at
//! 10.96.0.10 in kube-system, in front of two pods running `flatnet dns` (on the first
//! and the last node), which forward other names to the lab's stand-in upstream. Their
//! settings are the ConfigMap `flatnet-dns` (`kubectl edit configmap -n kube-system
//! flatnet-dns`), which they read again every 2 s.

use crate::layout::Layout;
use anyhow::Context;
use serde_json::{Value, json};
use std::time::Duration;

pub const NAMESPACE: &str = "kube-system";
pub const SERVICE_IP: &str = "10.96.0.10";
/// The DNS settings' ConfigMap, as deploy/flatnet.yaml names it.
pub const CONFIG_MAP: &str = "flatnet-dns";
pub const ALLOW_FORWARDING: &str = "10.244.0.0/16,192.168.1.0/24,127.0.0.0/8";
const REPLICAS: usize = 2;

/// The Service and the pods.
pub fn objects(layout: &Layout, nodes: usize) -> anyhow::Result<Vec<Value>> {
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let config_map = format!("{NAMESPACE}/{CONFIG_MAP}");
    let mut v = vec![
        json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": "flatnet"}},
        // The upstream stays the lab's own (a flag): names outside the cluster go to the
        // lab's stand-in upstream.
        "data": {"domain": "cluster.local", "ttl": "5", "allow-forwarding": ALLOW_FORWARDING}}),
        json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": NAMESPACE, "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": SERVICE_IP, "selector": {"k8s-app": "kube-dns"}, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
    ];
    for i in 1..=REPLICAS {
        let node = crate::nodes::name(if i == 1 { 1 } else { nodes });
        let command = [
            me.as_str(),
            "dns",
            "--kubeconfig",
            &layout.dns_kubeconfig().to_string_lossy(),
            "--upstream-resolv-conf",
            &layout.node_resolv_conf().to_string_lossy(),
            "--allow-forwarding",
            ALLOW_FORWARDING,
            "--config-map",
            &config_map,
            "--udp-threads",
            "1",
        ]
        .map(String::from);
        v.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("flatnet-dns-{i}"), "namespace": NAMESPACE, "labels": {"k8s-app": "kube-dns"}},
            "spec": {"nodeName": node, "dnsPolicy": "Default", "containers": [{
                "name": "dns", "image": "flatnet", "command": command,
                "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                          {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
                "readinessProbe": {"tcpSocket": {"port": "dns-tcp"}}}]}}));
    }
    Ok(v)
}

/// Waits until the manifest's DNS Deployment has both its pods Ready.
pub async fn wait_installed(client: &kube::Client, layout: &Layout) -> anyhow::Result<()> {
    super::scenario::wait_ready_selected(client, NAMESPACE, Some("k8s-app=kube-dns"), REPLICAS, Duration::from_secs(60))
        .await
        .with_context(|| {
            format!(
                "the cluster DNS pods (Deployment flatnet-dns) did not become Ready; their logs are {}/nodes/*/pods/*/dns.log",
                layout.state.display()
            )
        })?;
    Ok(())
}

/// Creates what is missing and waits until both DNS pods are Ready.
pub async fn deploy(client: &kube::Client, layout: &Layout, nodes: usize) -> anyhow::Result<()> {
    for o in objects(layout, nodes)? {
        let p = super::apply::prepare(client, o).await?;
        if p.exists().await? {
            continue;
        }
        p.apply().await?;
    }
    super::scenario::wait_ready(client, NAMESPACE, REPLICAS, Duration::from_secs(60)).await.with_context(|| {
        format!(
            "the cluster DNS pods did not become Ready; their logs are {}/nodes/*/pods/*/dns.log",
            layout.state.display()
        )
    })?;
    Ok(())
}
