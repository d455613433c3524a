//! The lab kubelet, one per node, running in the node's network namespace: it registers
//! the Node, keeps the node agent running (as a real kubelet keeps a DaemonSet pod), and
//! for each pod bound to the node makes a sandbox through the CNI plugin, starts the
//! containers' processes in it and reports the pod's IPs and readiness. On delete it
//! stops the processes and runs CNI DEL.

pub mod api;
pub mod exec;
pub mod inputs;
mod pods;
pub mod sandbox;
pub mod supervisor;
pub mod volumes;
pub mod workload;

use crate::layout::Layout;
use crate::pod_network::Cni;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub layout: Layout,
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub kubeconfig: PathBuf,
    /// The agent's command line (run and restarted by the kubelet); None runs no agent.
    pub agent: Option<Vec<String>>,
    /// Other node-level processes the kubelet keeps running, as it keeps DaemonSet pods
    /// (kube-proxy on a node whose Services it carries, flanneld on a Flannel lab).
    pub daemons: Vec<Daemon>,
    /// Which CNI network wires the pods.
    pub cni: Cni,
    /// Annotations of the Node it registers.
    pub annotations: Vec<(String, String)>,
    pub cluster_dns: String,
    pub cluster_domain: String,
    /// The kubelet API's TLS (on the upstream control plane; None: not served).
    pub api: Option<api::ApiTls>,
}

/// A node-level process: its name (its pid file and log are `<name>.pid`, `<name>.log` in
/// the node's directory), command line and environment.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub name: &'static str,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
}

fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

pub async fn run(cfg: KubeletConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), KubeletError> {
    let kc = kube::config::Kubeconfig::read_from(&cfg.kubeconfig).map_err(fail)?;
    let client =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(fail)?)
            .map_err(fail)?;
    register(&cfg, &Api::all(client.clone())).await?;
    let lease = tokio::spawn(renew_lease(client.clone(), cfg.node.clone()));
    let kubelet_api = cfg.api.clone().map(|t| {
        let addr = std::net::SocketAddr::from((cfg.node_ip, api::PORT));
        tokio::spawn(api::serve(cfg.layout.clone(), cfg.node.clone(), addr, t))
    });
    let dir = cfg.layout.node_dir(&cfg.node);
    let agent = cfg.agent.clone().map(|cmd| {
        supervisor::Supervisor::start("agent", cmd, Vec::new(), cfg.layout.agent_pid(&cfg.node), dir.join("agent.log"))
    });
    let daemons: Vec<_> = cfg
        .daemons
        .iter()
        .map(|d| {
            let (pid, log) = (dir.join(format!("{}.pid", d.name)), dir.join(format!("{}.log", d.name)));
            supervisor::Supervisor::start(d.name, d.cmd.clone(), d.env.clone(), pid, log)
        })
        .collect();
    let pods_api: Api<Pod> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node));
    let watch = tokio::spawn(
        reflector(writer, watcher(pods_api.clone(), wc)).default_backoff().touched_objects().for_each(move |ev| {
            if let Err(e) = ev {
                warn!("watching pods: {e}");
            }
            notify.notify_one();
            futures::future::ready(())
        }),
    );
    let mut pods = pods::PodManager::adopt(&cfg);
    tokio::pin!(shutdown);
    tokio::select! {
        r = reader.wait_until_ready() => r.map_err(fail)?,
        () = &mut shutdown => { watch.abort(); return Ok(()); }
    }
    info!(node = %cfg.node, "lab kubelet running; {} sandbox(es) from an earlier run", pods.adopted());
    let nodes: Api<Node> = Api::all(client.clone());
    let mut network_ready = cni_ready(&cfg);
    loop {
        let mine: Vec<_> = reader.state().into_iter().filter(|p| !synthetic(p)).collect();
        pods.sync(&cfg, &client, &mine).await;
        let ready = cni_ready(&cfg);
        if ready != network_ready {
            // Told again on the next pass if the API did not take it.
            match report_ready(&cfg, ready, &nodes).await {
                Ok(()) => network_ready = ready,
                Err(e) => warn!("{e}"),
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = &mut shutdown => break,
        }
    }
    watch.abort();
    lease.abort();
    if let Some(a) = kubelet_api {
        a.abort();
    }
    for s in agent.into_iter().chain(daemons) {
        s.detach();
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubeletError(String);

fn fail(e: impl std::fmt::Display) -> KubeletError {
    KubeletError(e.to_string())
}

/// The node's network is ready for pods: its CNI configuration is there (when it is
/// the one a DaemonSet installs).
fn cni_ready(cfg: &KubeletConfig) -> bool {
    cfg.cni != Cni::Installed || crate::pod_network::installed_config(&cfg.layout, &cfg.node).is_some()
}

/// The Ready condition as a kubelet reports it: not ready while the network plugin has
/// not installed its configuration.
fn ready_condition(network_ready: bool) -> serde_json::Value {
    let (status, reason, message) = if network_ready {
        ("True", "KubeletReady", "flatnet lab kubelet is posting ready status".to_string())
    } else {
        (
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized".to_string(),
        )
    };
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": now(), "lastTransitionTime": now()})
}

async fn report_ready(cfg: &KubeletConfig, network_ready: bool, nodes: &Api<Node>) -> Result<(), KubeletError> {
    let status = json!({"status": {"conditions": [ready_condition(network_ready)]}});
    nodes
        .patch_status(&cfg.node, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .map(drop)
        .map_err(|e| fail(format!("report node {}'s readiness: {e}", cfg.node)))
}

/// Creates the Node (or refreshes its addresses and Ready condition).
async fn register(cfg: &KubeletConfig, nodes: &Api<Node>) -> Result<(), KubeletError> {
    let status = json!({
        "addresses": [{"type": "InternalIP", "address": cfg.node_ip.to_string()}, {"type": "Hostname", "address": cfg.node}],
        "conditions": [ready_condition(cni_ready(cfg))],
        // What the scheduler fits pods against, as a kubelet reports it: this machine's
        // CPUs and memory, and a kubelet's default of 110 pods.
        "capacity": resources(), "allocatable": resources(),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": api::PORT}},
        // The API server then proxies `kubectl exec`'s WebSocket to us as it is, instead
        // of translating it to SPDY (which the lab kubelet does not speak).
        "declaredFeatures": ["ExtendWebSocketsToKubelet"],
        "nodeInfo": {"kubeletVersion": "flatnet-lab", "containerRuntimeVersion": "flatnet-lab://0", "operatingSystem": "linux",
                     "architecture": std::env::consts::ARCH, "osImage": "flatnet lab", "kernelVersion": "", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""},
    });
    let mut annotations = serde_json::Map::new();
    annotations.insert("volumes.kubernetes.io/controller-managed-attach-detach".into(), json!("true"));
    annotations.extend(cfg.annotations.iter().map(|(k, v)| (k.clone(), json!(v))));
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        // As a kubelet registers it: programs that read Nodes (Flannel among them) count
        // on the annotation map being there.
        "metadata": {"name": cfg.node, "labels": {"kubernetes.io/hostname": cfg.node, "kubernetes.io/os": "linux"},
                     "annotations": annotations},
        "status": status,
    }))
    .map_err(fail)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => info!("registered node {}", cfg.node),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(fail(format!("register node {}: {e}", cfg.node))),
    }
    nodes
        .patch_status(&cfg.node, &PatchParams::default(), &Patch::Strategic(json!({"status": status})))
        .await
        .map_err(|e| fail(format!("report node {} ready: {e}", cfg.node)))?;
    Ok(())
}

/// The node's resources: every CPU and all the memory of the machine (the lab's nodes
/// share it), and 110 pods.
fn resources() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(1 << 20);
    json!({"cpu": cpus.to_string(), "memory": format!("{mem_kib}Ki"), "pods": "110", "ephemeral-storage": "10Gi"})
}

/// How long a node's Lease holds; it is renewed every quarter of it, as a kubelet does.
const LEASE_SECONDS: i32 = 40;

/// Keeps the node's Lease in `kube-node-lease` renewed: the node lifecycle controller
/// takes a node whose Lease runs out for dead (NotReady, then its pods evicted). An API
/// without Leases (the embedded one) is told once and left alone.
async fn renew_lease(client: kube::Client, node: String) {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut told = false;
    loop {
        // A MicroTime: six digits of fraction, as the API parses it.
        let now = jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", jiff::Timestamp::now()).unwrap_or_default();
        let spec = json!({"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now});
        let result = match api.get_opt(&node).await {
            Ok(Some(_)) => {
                api.patch(&node, &PatchParams::default(), &Patch::Merge(json!({"spec": spec}))).await.map(drop)
            }
            Ok(None) => {
                let lease: Result<Lease, _> = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node, "namespace": "kube-node-lease"}, "spec": spec}));
                match lease {
                    Ok(l) => api.create(&PostParams::default(), &l).await.map(drop),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                }
            }
            Err(e) => Err(e),
        };
        let every = Duration::from_secs((LEASE_SECONDS / 4) as u64);
        let next = match result {
            Ok(()) => {
                told = false;
                every
            }
            Err(e) => {
                if !told {
                    warn!("could not renew node {node}'s Lease (trying again, then every {every:?}): {e}");
                    told = true;
                }
                // Soon after a failure (the API just starting), then at the usual pace.
                Duration::from_secs(1).min(every)
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// Pods the lab kubelet leaves alone: benchmarks create them on a node, with an address
/// in their status, to stand for pods whose runtime is elsewhere (a thousand pods cost
/// the API and the agent what real ones do, and no namespace or process each).
pub const SYNTHETIC_ANNOTATION: &str = "lab.flatnet.dev/synthetic";

/// The name of the projected service-account volume (a token, the cluster CA and the
/// namespace) that admission adds to a pod, followed by a random suffix.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

fn synthetic(p: &Pod) -> bool {
    p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(SYNTHETIC_ANNOTATION))
}
