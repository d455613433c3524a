//! The lab kubelet, one per node, running in the node's network namespace: it registers
//! the Node, keeps the node agent running (as a real kubelet keeps a DaemonSet pod), and
//! for each pod bound to the node makes a sandbox through the CNI plugin, starts the
//! containers' processes in it and reports the pod's IPs and readiness. On delete it
//! stops the processes and runs CNI DEL.

pub mod sandbox;
pub mod supervisor;
pub mod workload;

use crate::layout::Layout;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use sandbox::{Process, Sandbox};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
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
    pub cluster_dns: String,
    pub cluster_domain: String,
}

/// A pod this kubelet runs.
struct Running {
    sandbox: Sandbox,
    containers: Vec<Container>,
    restart: String,
    ready: bool,
    started_at: String,
    last_status: Option<Value>,
}

struct Container {
    name: String,
    image: String,
    process: Option<Process>,
    restarts: u32,
    exit_code: Option<i32>,
    started_at: String,
    /// TCP ports to probe for readiness (the built-in server's).
    tcp_ports: Vec<u16>,
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
    let agent = cfg.agent.clone().map(|cmd| {
        supervisor::Supervisor::start(
            "agent",
            cmd,
            cfg.layout.agent_pid(&cfg.node),
            cfg.layout.node_dir(&cfg.node).join("agent.log"),
        )
    });
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
    let mut running = adopt(&cfg);
    tokio::pin!(shutdown);
    tokio::select! {
        r = reader.wait_until_ready() => r.map_err(fail)?,
        () = &mut shutdown => { watch.abort(); return Ok(()); }
    }
    info!(node = %cfg.node, "lab kubelet running; {} pod(s) adopted", running.len());
    loop {
        sync(&cfg, &client, &reader.state(), &mut running).await;
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = &mut shutdown => break,
        }
    }
    watch.abort();
    if let Some(a) = agent {
        a.detach();
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubeletError(String);

fn fail(e: impl std::fmt::Display) -> KubeletError {
    KubeletError(e.to_string())
}

/// Creates the Node (or refreshes its addresses and Ready condition).
async fn register(cfg: &KubeletConfig, nodes: &Api<Node>) -> Result<(), KubeletError> {
    let status = json!({
        "addresses": [{"type": "InternalIP", "address": cfg.node_ip.to_string()}, {"type": "Hostname", "address": cfg.node}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "flatnet lab kubelet is posting ready status",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "nodeInfo": {"kubeletVersion": "flatnet-lab", "containerRuntimeVersion": "flatnet-lab://0", "operatingSystem": "linux",
                     "architecture": std::env::consts::ARCH, "osImage": "flatnet lab", "kernelVersion": "", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""},
    });
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node, "labels": {"kubernetes.io/hostname": cfg.node, "kubernetes.io/os": "linux"}},
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

fn adopt(cfg: &KubeletConfig) -> HashMap<String, Running> {
    let mut out = HashMap::new();
    for s in sandbox::adopt(&cfg.layout, &cfg.node) {
        let pids = sandbox::recorded_pids(&s);
        let containers = pids
            .into_iter()
            .map(|(name, pid)| Container {
                name,
                image: String::new(),
                process: Process::adopt(pid),
                restarts: 0,
                exit_code: None,
                started_at: now(),
                tcp_ports: Vec::new(),
            })
            .collect();
        out.insert(
            s.uid.clone(),
            Running {
                sandbox: s,
                containers,
                restart: "Always".into(),
                ready: false,
                started_at: now(),
                last_status: None,
            },
        );
    }
    out
}

async fn sync(cfg: &KubeletConfig, client: &kube::Client, pods: &[Arc<Pod>], running: &mut HashMap<String, Running>) {
    let by_uid: HashMap<&str, &Arc<Pod>> = pods.iter().filter_map(|p| Some((p.metadata.uid.as_deref()?, p))).collect();
    // Pods gone from the API, or being deleted: stop and tear down.
    let doomed: Vec<String> = running
        .keys()
        .filter(|uid| by_uid.get(uid.as_str()).is_none_or(|p| p.metadata.deletion_timestamp.is_some()))
        .cloned()
        .collect();
    for uid in doomed {
        let r = running.remove(&uid).expect("listed");
        let pod = by_uid.get(uid.as_str()).cloned().cloned();
        teardown(cfg, r).await;
        if let Some(p) = pod {
            finalize(client, &p).await;
        }
    }
    for pod in pods {
        let Some(uid) = pod.metadata.uid.clone() else { continue };
        if pod.metadata.deletion_timestamp.is_some() {
            if !running.contains_key(&uid) {
                finalize(client, pod).await;
            }
            continue;
        }
        if !running.contains_key(&uid) {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            match start_pod(cfg, pod).await {
                Ok(r) => {
                    info!("started pod {}/{} at {}", r.sandbox.namespace, r.sandbox.name, r.sandbox.ip);
                    running.insert(uid.clone(), r);
                }
                Err(e) => {
                    warn!(
                        "pod {}/{}: {e}",
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.name.as_deref().unwrap_or("")
                    );
                    report_failure(client, pod, &e).await;
                    continue;
                }
            }
        }
        let r = running.get_mut(&uid).expect("present");
        tend(cfg, pod, r);
        let status = pod_status(cfg, r);
        if r.last_status.as_ref() != Some(&status) {
            let api: Api<Pod> = Api::namespaced(client.clone(), &r.sandbox.namespace);
            match api
                .patch_status(&r.sandbox.name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                .await
            {
                Ok(_) => r.last_status = Some(status),
                Err(e) => warn!("report pod {}/{}: {e}", r.sandbox.namespace, r.sandbox.name),
            }
        }
    }
}

async fn start_pod(cfg: &KubeletConfig, pod: &Pod) -> Result<Running, String> {
    let (cfg2, pod2) = (cfg.clone(), pod.clone());
    tokio::task::spawn_blocking(move || start_pod_blocking(&cfg2, &pod2)).await.map_err(|e| e.to_string())?
}

fn start_pod_blocking(cfg: &KubeletConfig, pod: &Pod) -> Result<Running, String> {
    let sb =
        sandbox::create(&cfg.layout, &cfg.node, pod, &sandbox::cni_dirs(), (&cfg.cluster_dns, &cfg.cluster_domain))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let mut r = Running {
        sandbox: sb,
        containers: Vec::new(),
        restart: spec.restart_policy.clone().unwrap_or_else(|| "Always".into()),
        ready: false,
        started_at: now(),
        last_status: None,
    };
    for c in &spec.containers {
        let w = workload::workload(c);
        let tcp_ports = match &w {
            workload::Workload::Netexec(ports) => {
                ports.iter().filter_map(|p| p.strip_suffix("/TCP")?.parse().ok()).collect()
            }
            _ => Vec::new(),
        };
        let mut container = Container {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            process: None,
            restarts: 0,
            exit_code: None,
            started_at: now(),
            tcp_ports,
        };
        if let Err(e) = launch(cfg, pod, &r.sandbox, c, &mut container) {
            let mut procs: Vec<Process> = r.containers.iter_mut().filter_map(|c| c.process.take()).collect();
            sandbox::stop(&mut procs, Duration::ZERO);
            let _ = sandbox::destroy(&cfg.layout, &cfg.node, &r.sandbox);
            return Err(format!("container {}: {e}", c.name));
        }
        r.containers.push(container);
    }
    record(&r);
    Ok(r)
}

fn launch(
    cfg: &KubeletConfig,
    pod: &Pod,
    sb: &Sandbox,
    c: &k8s_openapi::api::core::v1::Container,
    container: &mut Container,
) -> Result<(), String> {
    let w = workload::workload(c);
    let flatnet = std::env::current_exe().map_err(|e| e.to_string())?;
    let argv = workload::argv(&w, &flatnet, pod, &cfg.node);
    let env = workload::env(c, pod, &sb.ip, &cfg.node_ip.to_string());
    let log = sb.dir.join(format!("{}.log", c.name));
    container.process = Some(sandbox::start(sb, &argv, &env, c.working_dir.as_deref(), &log)?);
    container.started_at = now();
    container.exit_code = None;
    Ok(())
}

fn record(r: &Running) {
    let pids: Vec<(String, i32)> =
        r.containers.iter().filter_map(|c| Some((c.name.clone(), c.process.as_ref()?.pid))).collect();
    sandbox::record_pids(&r.sandbox, &pids);
}

/// Restarts exited containers as the pod's restartPolicy says, and probes readiness.
fn tend(cfg: &KubeletConfig, pod: &Pod, r: &mut Running) {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut relaunched = false;
    for c in &mut r.containers {
        let Some(code) = c.process.as_mut().and_then(Process::exited) else { continue };
        c.process = None;
        c.exit_code = Some(code);
        let again = match r.restart.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if again && let Some(spec_c) = spec.containers.iter().find(|s| s.name == c.name) {
            c.restarts += 1;
            if let Err(e) = launch(cfg, pod, &r.sandbox, spec_c, c) {
                warn!("restart container {} of {}: {e}", c.name, r.sandbox.name);
            }
            relaunched = true;
        }
    }
    if relaunched {
        record(r);
    }
    let running = r.containers.iter().all(|c| c.process.is_some());
    if r.ready && running && !relaunched {
        return; // Once its servers answered, a pod stays Ready while its processes run.
    }
    let ip: Ipv4Addr = r.sandbox.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    r.ready = running
        && r.containers.iter().all(|c| {
            c.tcp_ports.iter().all(|p| {
                std::net::TcpStream::connect_timeout(&SocketAddr::from((ip, *p)), Duration::from_millis(100)).is_ok()
            })
        });
}

fn pod_status(cfg: &KubeletConfig, r: &Running) -> Value {
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
    let all_exited = r.containers.iter().all(|c| c.process.is_none());
    let phase = if !all_exited {
        "Running"
    } else if r.containers.iter().all(|c| c.exit_code == Some(0)) {
        "Succeeded"
    } else {
        "Failed"
    };
    let containers: Vec<Value> = r
        .containers
        .iter()
        .map(|c| {
            let state = match (&c.process, c.exit_code) {
                (Some(_), _) => json!({"running": {"startedAt": c.started_at}}),
                (None, code) => json!({"terminated": {"exitCode": code.unwrap_or(-1), "reason": if code == Some(0) { "Completed" } else { "Error" }}}),
            };
            json!({
                "name": c.name, "image": c.image, "imageID": "", "containerID": format!("flatnet://{}/{}", r.sandbox.uid, c.name),
                "ready": r.ready && c.process.is_some(), "started": c.process.is_some(), "restartCount": c.restarts, "state": state,
            })
        })
        .collect();
    json!({
        "phase": phase,
        "hostIP": cfg.node_ip.to_string(), "hostIPs": [{"ip": cfg.node_ip.to_string()}],
        "podIP": r.sandbox.ip, "podIPs": [{"ip": r.sandbox.ip}],
        "startTime": r.started_at,
        "conditions": [cond("PodReadyToStartContainers", true), cond("Initialized", true), cond("Ready", r.ready),
                       cond("ContainersReady", r.ready), cond("PodScheduled", true)],
        "containerStatuses": containers,
    })
}

async fn report_failure(client: &kube::Client, pod: &Pod, why: &str) {
    let (Some(ns), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else { return };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True"},
        {"type": "PodReadyToStartContainers", "status": "False", "reason": "SandboxFailed", "message": why}]}});
    let _ = api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await;
}

async fn teardown(cfg: &KubeletConfig, mut r: Running) {
    let (cfg2, name) = (cfg.clone(), format!("{}/{}", r.sandbox.namespace, r.sandbox.name));
    let res = tokio::task::spawn_blocking(move || {
        let mut procs: Vec<Process> = r.containers.iter_mut().filter_map(|c| c.process.take()).collect();
        sandbox::stop(&mut procs, Duration::from_secs(2));
        sandbox::destroy(&cfg2.layout, &cfg2.node, &r.sandbox)
    })
    .await;
    match res {
        Ok(Ok(())) => info!("stopped pod {name}"),
        Ok(Err(e)) => warn!("tear down pod {name}: {e}"),
        Err(e) => warn!("tear down pod {name}: {e}"),
    }
}

/// Completes a graceful delete once the pod's processes are gone.
async fn finalize(client: &kube::Client, pod: &Pod) {
    let (Some(ns), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else { return };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(name, &dp).await
        && !matches!(&e, kube::Error::Api(a) if a.code == 404 || a.code == 409)
    {
        warn!("finish deleting pod {ns}/{name}: {e}");
    }
}
