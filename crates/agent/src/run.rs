//! The agent's loop: a reflector keeps every Node in memory; each change, and a resync
//! tick, runs one reconcile pass. Errors are logged, shown on the Node, and retried on
//! the next pass; nothing is torn down when the agent stops, so a restart drops no
//! packet.

use crate::config::AgentConfig;
use crate::dataplane::{self, DataplaneError};
use crate::node;
use flatnet_kernel::Netlink;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::sync::Arc;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot configure a Kubernetes client: {0}")]
    Client(String),
    #[error("{0}")]
    Pass(String),
}

/// Runs until `shutdown` resolves.
pub async fn run(cfg: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let client = client(&cfg).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let status = Arc::new(crate::status::Status::new(&cfg.node_name, &cfg.backend.to_string()));
    let (proxy_stop, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(crate::proxy::run(cfg.clone(), client.clone(), status.clone(), async move {
        let _ = proxy_stopped.await;
    }));
    let (policy_stop, policy_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = cfg.metrics_addr.map(|a| tokio::spawn(crate::metrics::serve(a, status.clone())));
    let stopped = async move {
        let _ = policy_stopped.await;
    };
    let policy = tokio::spawn(crate::policy::run(
        cfg.node_name.clone(),
        client,
        cfg.policy_socket.clone(),
        status.clone(),
        stopped,
    ));
    let (reader, writer) = reflector::store();
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let watch = reflector(writer, watcher(nodes.clone(), watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(move |ev| {
            if let Err(e) = ev {
                warn!("watching Nodes: {e}");
            }
            notify.notify_one();
            futures::future::ready(())
        });
    let watch = tokio::spawn(watch);
    tokio::pin!(shutdown);
    info!(node = %cfg.node_name, backend = %cfg.backend, "flatnet agent starting");
    tokio::select! {
        r = reader.wait_until_ready() => r.map_err(|e| AgentError::Client(e.to_string()))?,
        () = &mut shutdown => {
            watch.abort();
            metrics.iter().for_each(tokio::task::JoinHandle::abort);
            let _ = (proxy_stop.send(()), policy_stop.send(()));
            let _ = tokio::join!(proxy, policy);
            return Ok(());
        }
    }
    let mut last_error: Option<String> = None;
    loop {
        let all: Vec<Arc<Node>> = reader.state();
        let me = all.iter().find(|n| n.metadata.name.as_deref() == Some(&cfg.node_name));
        let started = std::time::Instant::now();
        let result = match me {
            Some(me) => pass(&cfg, &nodes, me, &all, &status).await,
            None => Err(AgentError::Pass(format!("node {} is not registered with the API yet", cfg.node_name))),
        };
        let took = started.elapsed();
        match &result {
            Ok((summary, complete)) => {
                status.synced("node", took, Ok(summary));
                if last_error.take().is_some() {
                    info!("recovered: {summary}");
                }
                // Up with every peer routed, or up with some peers still missing what they need.
                let reason = if *complete { REASON_UP } else { REASON_PEERS_PENDING };
                if let Some(me) = me {
                    report(&nodes, me, false, reason, summary).await;
                }
            }
            Err(e) => {
                let text = e.to_string();
                status.synced("node", took, Err(&text));
                if last_error.as_deref() != Some(&text) {
                    warn!("{text} (retrying every {:?})", cfg.resync);
                }
                if let Some(me) = me {
                    report(&nodes, me, true, "FlatnetNotReady", &text).await;
                }
                last_error = Some(text);
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(cfg.resync) => {}
            () = &mut shutdown => break,
        }
    }
    watch.abort();
    metrics.iter().for_each(tokio::task::JoinHandle::abort);
    let _ = (proxy_stop.send(()), policy_stop.send(()));
    let _ = tokio::join!(proxy, policy);
    info!("flatnet agent stopped; the node's network is left as it is");
    Ok(())
}

async fn client(cfg: &AgentConfig) -> Result<kube::Client, AgentError> {
    crate::watch::client(cfg.kubeconfig.as_deref()).await.map_err(AgentError::Client)
}

/// The NetworkUnavailable=False reasons: every peer routed, or some left out (named in
/// the message).
pub const REASON_UP: &str = "FlatnetIsUp";
pub const REASON_PEERS_PENDING: &str = "FlatnetPeersPending";

/// One reconcile pass; returns a one-line summary and whether every peer is routed.
async fn pass(
    cfg: &AgentConfig,
    api: &Api<Node>,
    me: &Node,
    all: &[Arc<Node>],
    status: &crate::status::Status,
) -> Result<(String, bool), AgentError> {
    let (internal_ip, iface) = (node::internal_ip(me), cfg.underlay_iface.clone());
    let underlay = blocking(move |nl| dataplane::find_underlay(nl, iface.as_deref(), internal_ip)).await?;
    let want = node::desired_annotations(cfg, underlay.addr.addr());
    if let Some(patch) = node::annotation_patch(me, &want) {
        api.patch(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| AgentError::Pass(format!("publish this node's annotations: {e}")))?;
        info!("published {}", want.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    }
    let pod_cidr = node::pod_cidr(me).ok_or_else(|| {
        AgentError::Pass(format!(
            "node {} has no spec.podCIDR: the API's node IPAM (kube-controller-manager --allocate-node-cidrs) must assign one",
            cfg.node_name
        ))
    })?;
    let mtu = dataplane::pod_mtu(cfg.backend, &underlay).map_err(|e| AgentError::Pass(e.to_string()))?;
    write_subnet_file(cfg, pod_cidr, mtu)?;
    let peers: Vec<_> = all.iter().map(|n| node::peer(n)).collect();
    let views = peers.clone();
    let cfg2 = cfg.clone();
    let outcome = blocking(move |nl| dataplane::reconcile(nl, &cfg2, &underlay, pod_cidr, &peers)).await?;
    for c in &outcome.changes {
        info!("{c}");
    }
    status.set_network(
        Some(pod_cidr.to_string()),
        Some(mtu),
        views
            .into_iter()
            .filter(|p| p.name != cfg.node_name)
            .map(|p| {
                let reason = outcome.skipped.iter().find(|s| s.node == p.name).map(|s| s.reason.clone());
                crate::status::PeerView {
                    routed: reason.is_none(),
                    reason,
                    underlay_ip: p.underlay_ip.map(|i| i.to_string()),
                    pod_cidr: p.pod_cidr.map(|c| c.to_string()),
                    name: p.name,
                }
            })
            .collect(),
    );
    let mut summary = format!("{}: {} peer route(s), pod CIDR {pod_cidr}, MTU {mtu}", cfg.backend, outcome.peers);
    if !outcome.skipped.is_empty() {
        let list: Vec<String> = outcome.skipped.iter().map(ToString::to_string).collect();
        summary.push_str(&format!("; not routed: {}", list.join("; ")));
    }
    Ok((summary, outcome.skipped.is_empty()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce(&mut Netlink) -> Result<T, DataplaneError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(move || {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .await
    .map_err(|e| AgentError::Pass(format!("reconcile task failed: {e}")))?
    .map_err(|e| AgentError::Pass(e.to_string()))
}

/// Writes the subnet file when its content differs (the CNI plugin reads it on every ADD).
fn write_subnet_file(cfg: &AgentConfig, subnet: ipnet::Ipv4Net, mtu: u32) -> Result<(), AgentError> {
    let text =
        flatnet_model::subnet_file::NodeSubnet { network: Some(cfg.cluster_cidr), subnet, mtu: Some(mtu) }.render();
    if std::fs::read_to_string(&cfg.subnet_file).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let fail = |e: std::io::Error| AgentError::Pass(format!("write {}: {e}", cfg.subnet_file.display()));
    if let Some(dir) = cfg.subnet_file.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = cfg.subnet_file.with_extension("tmp");
    std::fs::write(&tmp, &text).map_err(fail)?;
    std::fs::rename(&tmp, &cfg.subnet_file).map_err(fail)?;
    info!("wrote {}: subnet {subnet}, MTU {mtu}", cfg.subnet_file.display());
    Ok(())
}

/// Sets the NetworkUnavailable condition when its status or message changed.
async fn report(api: &Api<Node>, me: &Node, unavailable: bool, reason: &str, message: &str) {
    let want = (if unavailable { "True" } else { "False" }.to_string(), reason.to_string(), message.to_string());
    if node::network_condition(me).as_ref() == Some(&want) {
        return;
    }
    let name = me.metadata.name.clone().unwrap_or_default();
    let transition = node::network_condition(me).is_none_or(|(status, _, _)| status != want.0);
    let patch = node::condition_patch(unavailable, reason, message, transition);
    if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
        warn!("could not report the network condition on node {name}: {e}");
    }
}
