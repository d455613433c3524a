//! The pods of one node, from API state to running sandboxes and back: start what is
//! bound here, keep containers running as their restart policy says, report status,
//! stop and tear down what is deleted or finished. A teardown that fails is retried
//! every pass, and a graceful delete is completed only once it succeeded. Sandboxes left
//! by an earlier kubelet are resumed (their live processes adopted, verified by their
//! network namespace) or torn down.

use super::inputs::{self, Inputs};
use super::sandbox::{self, Process, Sandbox};
use super::volumes;
use super::{KubeletConfig, now, workload};
use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

struct Running {
    sandbox: Sandbox,
    containers: Vec<Container>,
    restart: String,
    ready: bool,
    started_at: String,
    last_status: Option<Value>,
    /// A finished pod's sandbox is torn down (its IP released); its status stays.
    released: bool,
    /// What its volumes and environment took from the API, and when to look again.
    inputs: Inputs,
    refresh_at: Instant,
    /// Its init containers, each run to completion before the others started.
    init: Vec<(String, String)>,
}

/// How often a running pod's ConfigMaps and Secrets are read again into its volumes
/// (`kubectl edit configmap` reaches a pod within it); a pod whose only such volume is
/// its service account's is looked at less often (its token is renewed long before it
/// expires, and the cluster's CA hardly changes).
const REFRESH: Duration = Duration::from_secs(5);
const REFRESH_TOKEN_ONLY: Duration = Duration::from_secs(60);

/// When to read the pod's volumes again.
fn refresh_after(pod: &Pod) -> Duration {
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    let token_only = volumes
        .filter(|v| v.config_map.is_some() || v.secret.is_some() || v.projected.is_some())
        .all(|v| v.name.starts_with(super::TOKEN_VOLUME_PREFIX));
    if token_only { REFRESH_TOKEN_ONLY } else { REFRESH }
}

/// What tells that a container is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Tcp(u16),
    /// An HTTP GET answered 200–399, on `host` (the pod's address when None).
    Http {
        host: Option<String>,
        port: u16,
        path: String,
    },
}

struct Container {
    name: String,
    image: String,
    process: Option<Process>,
    restarts: u32,
    exit_code: Option<i32>,
    started_at: String,
    /// What to probe for readiness (the built-in server's ports, and a readinessProbe).
    probes: Vec<Probe>,
    /// When a crashed container may be started again (doubling back-off, 10 s at most).
    retry_at: Option<Instant>,
}

#[derive(Default)]
pub struct PodManager {
    running: HashMap<String, Running>,
    /// Sandboxes found on disk at start, not yet matched with a pod.
    adopted: HashMap<String, Sandbox>,
    /// Sandboxes whose teardown failed: retried every pass.
    leftovers: HashMap<String, Sandbox>,
    /// Pods whose start failed: attempts so far and when to try again.
    backoff: HashMap<String, (u32, Instant)>,
}

fn backoff_delay(attempts: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempts.min(5))).min(Duration::from_secs(10))
}

impl PodManager {
    pub fn adopt(cfg: &KubeletConfig) -> Self {
        let adopted = sandbox::adopt(&cfg.layout, &cfg.node).into_iter().map(|s| (s.uid.clone(), s)).collect();
        Self { adopted, ..Self::default() }
    }

    pub fn adopted(&self) -> usize {
        self.adopted.len()
    }

    pub async fn sync(&mut self, cfg: &KubeletConfig, client: &kube::Client, pods: &[Arc<Pod>]) {
        let by_uid: HashMap<&str, &Arc<Pod>> =
            pods.iter().filter_map(|p| Some((p.metadata.uid.as_deref()?, p))).collect();
        let gone = |uid: &str| by_uid.get(uid).is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        // Deleted or being deleted: stop, tear down, then let the API forget the pod.
        for uid in self.running.keys().filter(|u| gone(u)).cloned().collect::<Vec<_>>() {
            let r = self.running.remove(&uid).expect("listed");
            let grace = grace_period(by_uid.get(uid.as_str()).map(|p| p.as_ref()));
            let (released, sandbox) = (r.released, r.sandbox.clone());
            for c in &r.containers {
                let message = format!("Stopping container {}", c.name);
                post_event(client, &cfg.node, &sandbox, "Normal", "Killing", &message).await;
            }
            stop_containers(r.containers, grace).await;
            if !released {
                self.leftovers.insert(uid, sandbox);
            }
        }
        for uid in self.adopted.keys().filter(|u| gone(u)).cloned().collect::<Vec<_>>() {
            let s = self.adopted.remove(&uid).expect("listed");
            stop_processes(adopt_processes(&s), Duration::ZERO).await;
            self.leftovers.insert(uid, s);
        }
        for (uid, s) in std::mem::take(&mut self.leftovers) {
            match destroy(cfg, s.clone()).await {
                Ok(()) => info!("stopped pod {}/{}", s.namespace, s.name),
                Err(e) => {
                    warn!("tear down pod {}/{}: {e}; retrying", s.namespace, s.name);
                    self.leftovers.insert(uid, s);
                }
            }
        }
        self.begin(cfg, client, pods).await;
        self.refresh(cfg, client, pods).await;
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else { continue };
            if pod.metadata.deletion_timestamp.is_some() {
                if !self.leftovers.contains_key(&uid) {
                    finalize(client, pod).await;
                }
                continue;
            }
            let Some(r) = self.running.get_mut(&uid) else { continue };
            tend(cfg, pod, r);
            let status = pod_status(cfg, r);
            if r.last_status.as_ref() != Some(&status) {
                let api: Api<Pod> = Api::namespaced(client.clone(), &r.sandbox.namespace);
                let patch = Patch::Merge(json!({"status": status}));
                match api.patch_status(&r.sandbox.name, &PatchParams::default(), &patch).await {
                    Ok(_) => r.last_status = Some(status.clone()),
                    Err(e) => warn!("report pod {}/{}: {e}", r.sandbox.namespace, r.sandbox.name),
                }
            }
            if !r.released && matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")) {
                // Finished for good: give the address back, as a kubelet stops the sandbox.
                r.released = true;
                self.leftovers.insert(uid, r.sandbox.clone());
            }
        }
    }

    /// Starts (or resumes) the pods not running yet, side by side as a kubelet's pod
    /// workers do (as many at once as the runtime's blocking threads).
    async fn begin(&mut self, cfg: &KubeletConfig, client: &kube::Client, pods: &[Arc<Pod>]) {
        let mut starts = Vec::new();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else { continue };
            if pod.metadata.deletion_timestamp.is_some() || self.running.contains_key(&uid) {
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if !self.adopted.contains_key(&uid) && matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            if self.backoff.get(&uid).is_some_and(|(_, at)| Instant::now() < *at) {
                continue;
            }
            let inputs = match inputs::fetch(client, pod, &Inputs::default()).await {
                Ok(i) => i,
                Err(e) => {
                    self.failed(cfg, client, pod, &uid, "CreateContainerConfigError", &e).await;
                    continue;
                }
            };
            let resumed = self.adopted.remove(&uid);
            let (cfg2, pod2) = (cfg.clone(), pod.clone());
            let work = tokio::task::spawn_blocking(move || match resumed {
                Some(s) => Ok(resume(&cfg2, &pod2, s, inputs)),
                None => start(&cfg2, &pod2, inputs),
            });
            starts.push((pod, uid, work));
        }
        for (pod, uid, work) in starts {
            let started = work.await.unwrap_or_else(|e| Err(e.to_string()));
            let name = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or("")
            );
            match started {
                Ok(r) => {
                    info!("running pod {name} at {}", r.sandbox.ip);
                    for c in &r.containers {
                        let message = format!("Started container {}", c.name);
                        post_event(client, &cfg.node, &r.sandbox, "Normal", "Started", &message).await;
                    }
                    self.backoff.remove(&uid);
                    self.running.insert(uid, r);
                }
                Err(e) => self.failed(cfg, client, pod, &uid, "FailedCreatePodSandBox", &e).await,
            }
        }
    }

    /// A pod that could not start: tried again after a back-off; said in an event and
    /// in its status.
    async fn failed(
        &mut self,
        cfg: &KubeletConfig,
        client: &kube::Client,
        pod: &Pod,
        uid: &str,
        reason: &str,
        e: &str,
    ) {
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        let attempts = self.backoff.get(uid).map_or(0, |b| b.0) + 1;
        let delay = backoff_delay(attempts);
        warn!("pod {name}: {e}; retrying in {delay:?}");
        self.backoff.insert(uid.to_string(), (attempts, Instant::now() + delay));
        if let (Some(ns), Some(n)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) {
            let about = Involved { namespace: ns, name: n, uid };
            post_event_about(client, &cfg.node, about, "Warning", reason, e).await;
        }
        report_failure(client, pod, e).await;
    }

    /// Reads the running pods' ConfigMaps, Secrets and tokens again into their volumes
    /// (every few seconds, as a kubelet's volume manager does).
    async fn refresh(&mut self, cfg: &KubeletConfig, client: &kube::Client, pods: &[Arc<Pod>]) {
        for pod in pods {
            let Some(r) = pod.metadata.uid.as_deref().and_then(|u| self.running.get_mut(u)) else { continue };
            if r.released || Instant::now() < r.refresh_at || !needs_api(pod) {
                continue;
            }
            r.refresh_at = Instant::now() + refresh_after(pod);
            match inputs::fetch(client, pod, &r.inputs).await {
                Ok(inputs) => {
                    if let Err(e) = volumes::materialize(pod, &inputs, &r.sandbox.dir, &cfg.layout.node_root(&cfg.node))
                    {
                        warn!("refresh the volumes of {}/{}: {e}", r.sandbox.namespace, r.sandbox.name);
                    }
                    r.inputs = inputs;
                }
                Err(e) => warn!("refresh the volumes of {}/{}: {e}", r.sandbox.namespace, r.sandbox.name),
            }
        }
    }
}

/// The pod has volumes whose content comes from the API.
fn needs_api(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.config_map.is_some() || v.secret.is_some() || v.projected.is_some())
}

fn grace_period(pod: Option<&Pod>) -> Duration {
    let secs = pod
        .and_then(|p| p.metadata.deletion_grace_period_seconds.or(p.spec.as_ref()?.termination_grace_period_seconds))
        .unwrap_or(30);
    // The lab's workloads stop at once on SIGTERM; a few seconds bound a stubborn one.
    Duration::from_secs(u64::try_from(secs).unwrap_or(0).min(5))
}

/// A probe's port, a number or the name of a container port.
fn probe_port(c: &ContainerSpec, port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> Option<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => {
            let p = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name.as_str()))?;
            u16::try_from(p.container_port).ok()
        }
    }
}

/// The container's readinessProbe (tcpSocket or httpGet).
fn readiness_probe(c: &ContainerSpec) -> Option<Probe> {
    let p = c.readiness_probe.as_ref()?;
    if let Some(t) = &p.tcp_socket {
        return Some(Probe::Tcp(probe_port(c, &t.port)?));
    }
    let h = p.http_get.as_ref()?;
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    Some(Probe::Http { host: h.host.clone(), port: probe_port(c, &h.port)?, path })
}

/// One probe against the pod at `ip`: connects (and for HTTP, a 2xx or 3xx answer).
fn probe(p: &Probe, ip: Ipv4Addr) -> bool {
    use std::io::{Read, Write};
    let (host, port) = match p {
        Probe::Tcp(port) => (ip, *port),
        Probe::Http { host, port, .. } => (host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(ip), *port),
    };
    let timeout = Duration::from_millis(300);
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&SocketAddr::from((host, port)), timeout) else {
        return false;
    };
    let Probe::Http { path, .. } = p else { return true };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let n = conn.read(&mut head).unwrap_or(0);
    let code: u16 =
        String::from_utf8_lossy(&head[..n]).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (200..400).contains(&code)
}

fn new_container(c: &ContainerSpec) -> Container {
    let mut probes: Vec<Probe> = match workload::workload(c) {
        workload::Workload::Netexec(ports) => {
            ports.iter().filter_map(|p| Some(Probe::Tcp(p.strip_suffix("/TCP")?.parse().ok()?))).collect()
        }
        _ => Vec::new(),
    };
    probes.extend(readiness_probe(c));
    Container {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        process: None,
        restarts: 0,
        exit_code: None,
        started_at: now(),
        probes,
        retry_at: None,
    }
}

fn new_running(pod: &Pod, sandbox: Sandbox, inputs: Inputs) -> Running {
    let spec = pod.spec.clone().unwrap_or_default();
    Running {
        sandbox,
        containers: spec.containers.iter().map(new_container).collect(),
        restart: spec.restart_policy.unwrap_or_else(|| "Always".into()),
        ready: false,
        started_at: pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map_or_else(now, |t| t.0.to_string()),
        last_status: None,
        released: false,
        inputs,
        refresh_at: Instant::now() + refresh_after(pod),
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect(),
    }
}

fn start(cfg: &KubeletConfig, pod: &Pod, inputs: Inputs) -> Result<Running, String> {
    let node = (cfg.node.as_str(), cfg.node_ip);
    let sb = sandbox::create(cfg.cni, &cfg.layout, node, pod, (&cfg.cluster_dns, &cfg.cluster_domain))?;
    let mut r = new_running(pod, sb, inputs);
    let undo = |r: &mut Running, e: String| {
        let mut procs: Vec<Process> = r.containers.iter_mut().filter_map(|c| c.process.take()).collect();
        sandbox::stop(&mut procs, Duration::ZERO);
        let _ = sandbox::destroy(cfg.cni, &cfg.layout, &cfg.node, &r.sandbox);
        Err(e)
    };
    let vols = match volumes::materialize(pod, &r.inputs, &r.sandbox.dir, &cfg.layout.node_root(&cfg.node)) {
        Ok(v) => v,
        Err(e) => return undo(&mut r, e),
    };
    let spec = pod.spec.clone().unwrap_or_default();
    for init in spec.init_containers.iter().flatten() {
        if let Err(e) = run_init(cfg, pod, &r, init, &vols) {
            return undo(&mut r, format!("init container {}: {e}", init.name));
        }
    }
    for (c, spec) in r.containers.iter_mut().zip(&spec.containers) {
        if let Err(e) = launch(cfg, pod, &r.sandbox, spec, c, (&r.inputs, &vols)) {
            let e = format!("container {}: {e}", spec.name);
            return undo(&mut r, e);
        }
    }
    record(&r);
    Ok(r)
}

/// How long an init container may run before the pod's start is given up (and tried
/// again after a back-off).
const INIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs an init container to completion; an exit code other than 0 is an error.
fn run_init(
    cfg: &KubeletConfig,
    pod: &Pod,
    r: &Running,
    spec: &ContainerSpec,
    vols: &HashMap<String, std::path::PathBuf>,
) -> Result<(), String> {
    let mut c = new_container(spec);
    launch(cfg, pod, &r.sandbox, spec, &mut c, (&r.inputs, vols))?;
    let mut p = c.process.take().expect("launched");
    let deadline = Instant::now() + INIT_TIMEOUT;
    loop {
        match p.exited() {
            Some(0) => return Ok(()),
            Some(code) => {
                let log = r.sandbox.dir.join(format!("{}.log", spec.name));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let last = tail.lines().last().unwrap_or("").to_string();
                return Err(format!("exited with {code}: {last}"));
            }
            None if Instant::now() > deadline => {
                sandbox::stop(std::slice::from_mut(&mut p), Duration::ZERO);
                return Err(format!("still running after {INIT_TIMEOUT:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A sandbox an earlier kubelet made: its live processes are adopted, the others
/// started again; restart counts carry over from the pod's status.
fn resume(cfg: &KubeletConfig, pod: &Pod, s: Sandbox, inputs: Inputs) -> Running {
    let mut live: HashMap<String, Process> =
        adopt_processes(&s).into_iter().filter_map(|p| Some((p.name.clone()?, p))).collect();
    let mut r = new_running(pod, s, inputs);
    let vols =
        volumes::materialize(pod, &r.inputs, &r.sandbox.dir, &cfg.layout.node_root(&cfg.node)).unwrap_or_else(|e| {
            warn!("the volumes of {}: {e}", r.sandbox.name);
            HashMap::new()
        });
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    let specs = pod.spec.clone().unwrap_or_default().containers;
    for (c, spec) in r.containers.iter_mut().zip(&specs) {
        c.restarts = statuses.iter().find(|st| st.name == c.name).map_or(0, |st| st.restart_count.max(0) as u32);
        match live.remove(&c.name) {
            Some(p) => c.process = Some(p),
            None => {
                if let Err(e) = launch(cfg, pod, &r.sandbox, spec, c, (&r.inputs, &vols)) {
                    warn!("restart container {} of {}: {e}", c.name, r.sandbox.name);
                }
            }
        }
    }
    let mut strays: Vec<Process> = live.into_values().collect();
    sandbox::stop(&mut strays, Duration::ZERO);
    record(&r);
    r
}

/// The recorded processes of a sandbox that are still alive inside its namespace (so a
/// reused pid is never mistaken for one of ours).
fn adopt_processes(s: &Sandbox) -> Vec<Process> {
    sandbox::recorded_pids(s).into_iter().filter_map(|(name, pid)| Process::adopt(&name, pid, &s.netns)).collect()
}

async fn stop_containers(containers: Vec<Container>, grace: Duration) {
    stop_processes(containers.into_iter().filter_map(|c| c.process).collect(), grace).await;
}

async fn stop_processes(mut procs: Vec<Process>, grace: Duration) {
    if procs.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || sandbox::stop(&mut procs, grace)).await;
}

async fn destroy(cfg: &KubeletConfig, s: Sandbox) -> Result<(), String> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || sandbox::destroy(cfg.cni, &cfg.layout, &cfg.node, &s))
        .await
        .map_err(|e| e.to_string())?
}

fn launch(
    cfg: &KubeletConfig,
    pod: &Pod,
    sb: &Sandbox,
    spec: &ContainerSpec,
    c: &mut Container,
    (inputs, vols): (&Inputs, &HashMap<String, std::path::PathBuf>),
) -> Result<(), String> {
    let w = workload::workload(spec);
    let flatnet = std::env::current_exe().map_err(|e| e.to_string())?;
    let env = workload::env(spec, pod, (&sb.ip, &cfg.node_ip.to_string()), inputs)?;
    let argv = workload::argv(&w, &flatnet, pod, &cfg.node, &env);
    let mounts = volumes::container_mounts(spec, vols)?;
    let log = sb.dir.join(format!("{}.log", spec.name));
    c.process = Some(sandbox::start(sb, &spec.name, &argv, &env, spec.working_dir.as_deref(), &mounts, &log)?);
    c.started_at = now();
    c.exit_code = None;
    Ok(())
}

fn record(r: &Running) {
    let pids: Vec<(String, i32)> =
        r.containers.iter().filter_map(|c| Some((c.name.clone(), c.process.as_ref()?.pid))).collect();
    sandbox::record_pids(&r.sandbox, &pids);
}

/// Restarts exited containers as the pod's restartPolicy says (with back-off), and
/// probes readiness until the pod's servers answer.
fn tend(cfg: &KubeletConfig, pod: &Pod, r: &mut Running) {
    if r.released {
        return;
    }
    let specs = pod.spec.clone().unwrap_or_default().containers;
    let mut changed = false;
    for c in &mut r.containers {
        if let Some(code) = c.process.as_mut().and_then(Process::exited) {
            c.process = None;
            c.exit_code = Some(code);
            changed = true;
            let again = match r.restart.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            c.retry_at = again.then(|| Instant::now() + backoff_delay(c.restarts));
        }
        if c.process.is_none()
            && c.retry_at.is_some_and(|at| Instant::now() >= at)
            && let Some(spec) = specs.iter().find(|s| s.name == c.name)
        {
            c.restarts += 1;
            let vols = volumes::materialize(pod, &r.inputs, &r.sandbox.dir, &cfg.layout.node_root(&cfg.node));
            match vols.and_then(|v| launch(cfg, pod, &r.sandbox, spec, c, (&r.inputs, &v))) {
                Ok(()) => c.retry_at = None,
                Err(e) => {
                    warn!("restart container {} of {}: {e}", c.name, r.sandbox.name);
                    c.retry_at = Some(Instant::now() + backoff_delay(c.restarts));
                }
            }
            changed = true;
        }
    }
    if changed {
        record(r);
    }
    let running = r.containers.iter().all(|c| c.process.is_some());
    if r.ready && running && !changed {
        return; // Once its servers answered, a pod stays Ready while its processes run.
    }
    let ip: Ipv4Addr = r.sandbox.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    r.ready = running && r.containers.iter().all(|c| c.probes.iter().all(|p| probe(p, ip)));
}

fn pod_status(cfg: &KubeletConfig, r: &Running) -> Value {
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
    let waiting = |c: &Container| c.process.is_none() && c.retry_at.is_some();
    let phase = if r.containers.iter().any(|c| c.process.is_some() || waiting(c)) {
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
                (None, _) if waiting(c) => json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("exited with {}; restarting", c.exit_code.unwrap_or(-1))}}),
                (None, code) => json!({"terminated": {"exitCode": code.unwrap_or(-1),
                    "reason": if code == Some(0) { "Completed" } else { "Error" }}}),
            };
            json!({
                "name": c.name, "image": c.image, "imageID": "",
                "containerID": format!("flatnet://{}/{}", r.sandbox.uid, c.name),
                "ready": r.ready && c.process.is_some(), "started": c.process.is_some(),
                "restartCount": c.restarts, "state": state,
            })
        })
        .collect();
    let init: Vec<Value> = r
        .init
        .iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": "", "ready": true, "restartCount": 0,
                   "containerID": format!("flatnet://{}/{}", r.sandbox.uid, name),
                   "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}})
        })
        .collect();
    json!({
        "phase": phase,
        "hostIP": cfg.node_ip.to_string(), "hostIPs": [{"ip": cfg.node_ip.to_string()}],
        "podIP": r.sandbox.ip, "podIPs": [{"ip": r.sandbox.ip}],
        "startTime": r.started_at,
        "conditions": [cond("PodReadyToStartContainers", !r.released), cond("Initialized", true),
                       cond("Ready", r.ready), cond("ContainersReady", r.ready), cond("PodScheduled", true)],
        "containerStatuses": containers,
        "initContainerStatuses": init,
    })
}

/// The pod an event is about.
struct Involved<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

/// Posts a core/v1 Event about a pod, as a kubelet does (`kubectl get events`,
/// `kubectl describe pod`); one that cannot be posted is only logged.
async fn post_event(client: &kube::Client, node: &str, s: &Sandbox, kind: &str, reason: &str, message: &str) {
    let about = Involved { namespace: &s.namespace, name: &s.name, uid: &s.uid };
    post_event_about(client, node, about, kind, reason, message).await;
}

async fn post_event_about(
    client: &kube::Client,
    node: &str,
    about: Involved<'_>,
    kind: &str,
    reason: &str,
    message: &str,
) {
    use k8s_openapi::api::core::v1::Event;
    let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(16).collect();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{suffix}", about.name), "namespace": about.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": about.namespace, "name": about.name, "uid": about.uid},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "firstTimestamp": now(), "lastTimestamp": now(),
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet", "reportingInstance": node,
    });
    let Ok(event) = serde_json::from_value::<Event>(event) else { return };
    let api: Api<Event> = Api::namespaced(client.clone(), about.namespace);
    if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
        tracing::debug!("post event {reason} for {}/{}: {e}", about.namespace, about.name);
    }
}

async fn report_failure(client: &kube::Client, pod: &Pod, why: &str) {
    let (Some(ns), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else { return };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True"},
        {"type": "PodReadyToStartContainers", "status": "False", "reason": "SandboxFailed", "message": why}]}});
    let _ = api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await;
}

/// Completes a graceful delete once the pod's processes and sandbox are gone.
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
