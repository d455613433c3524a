//! A pod's sandbox, as a container runtime makes it: a network namespace pinned under
//! the lab's `netns/`, wired by executing the CNI plugin exactly as containerd does, and
//! the pod's resolv.conf and hosts files. Its container processes run inside it.

use crate::layout::Layout;
use crate::pod_network::{Cni, conflist};
use flatnet_cni::exec::Attachment;
use flatnet_kernel::netns;
use flatnet_kernel::rootfs::Mount;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What is on disk about a sandbox (so a restarted kubelet finds its pods again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ip: String,
    pub netns: PathBuf,
    pub dir: PathBuf,
    /// `hostNetwork: true`: the node's own namespace and address, no CNI call.
    #[serde(default)]
    pub host_network: bool,
}

impl Sandbox {
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    /// Where a container's root is built (each container's in a mount namespace of its own).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    fn mounts_file(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.mounts"))
    }
    /// The container's volumes as it was started with them (`exec` enters the same).
    pub fn container_mounts(&self, container: &str) -> Vec<Mount> {
        std::fs::read_to_string(self.mounts_file(container))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| Mount::parse(l).ok())
            .collect()
    }
    pub fn record_mounts(&self, container: &str, mounts: &[Mount]) -> Result<(), String> {
        let text: String = mounts.iter().map(|m| m.render() + "\n").collect();
        let path = self.mounts_file(container);
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
    }
}

fn attachment(uid: &str, namespace: &str, name: &str, netns: &Path) -> Attachment {
    Attachment {
        container_id: uid.to_string(),
        netns: netns.to_string_lossy().into_owned(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), namespace.into()),
            ("K8S_POD_NAME".into(), name.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), uid.into()),
            ("K8S_POD_UID".into(), uid.into()),
        ],
    }
}

/// Creates the sandbox: namespace, CNI ADD, the pod's files; for a `hostNetwork` pod the
/// node's own namespace and address, as a kubelet does for a CNI's DaemonSet (no CNI
/// call). On failure nothing is left.
pub fn create(
    network: Cni,
    layout: &Layout,
    node: (&str, std::net::Ipv4Addr),
    pod: &Pod,
    dns: (&str, &str),
) -> Result<Sandbox, String> {
    let resolv = resolv_conf(layout, pod, dns);
    let (node, node_ip) = node;
    let uid = pod.metadata.uid.clone().ok_or("the pod has no uid")?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let dir = layout.pod_dir(node, &uid);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        let sandbox = Sandbox {
            uid,
            namespace,
            name,
            ip: node_ip.to_string(),
            netns: layout.node_ns(node),
            dir,
            host_network: true,
        };
        write_files(&sandbox, &resolv)?;
        return Ok(sandbox);
    }
    let ns = layout.pod_ns(&uid);
    if !netns::NetNs::open(&ns).is_ok_and(|n| n.is_netns()) {
        netns::create_named(&ns).map_err(|e| format!("create the pod's network namespace: {e}"))?;
    }
    let att = attachment(&uid, &namespace, &name, &ns);
    let result = conflist(network, layout, node)
        .and_then(|(conf, dirs)| conf.add(&att, &dirs, &Map::new()).map_err(|e| e.to_string()));
    let ip = match result.as_ref().map(first_ip) {
        Ok(Some(ip)) => ip,
        other => {
            let why = match other {
                Err(e) => format!("CNI ADD: {e}"),
                _ => "CNI ADD returned no IP address".to_string(),
            };
            let _ = destroy_parts(network, layout, node, &uid, &namespace, &name);
            return Err(why);
        }
    };
    let sandbox = Sandbox { uid, namespace, name, ip, netns: ns, dir, host_network: false };
    write_files(&sandbox, &resolv)?;
    Ok(sandbox)
}

/// The pod's resolv.conf, as its dnsPolicy says: the cluster DNS (`ClusterFirst`, and
/// `ClusterFirstWithHostNet`), the node's own (`Default`, and a `hostNetwork` pod's
/// `ClusterFirst`: in the lab the node resolves through the lab's stand-in upstream), or
/// only the pod's dnsConfig (`None`).
fn resolv_conf(layout: &Layout, pod: &Pod, dns: (&str, &str)) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let node_own = || std::fs::read_to_string(layout.node_resolv_conf()).ok();
    match (spec.dns_policy.as_deref().unwrap_or("ClusterFirst"), spec.host_network == Some(true)) {
        ("Default", _) | ("ClusterFirst", true) => {
            node_own().unwrap_or_else(|| super::workload::resolv_conf(namespace, dns.0, dns.1))
        }
        ("None", _) => {
            let c = spec.dns_config.unwrap_or_default();
            let mut out = String::new();
            if let Some(s) = c.searches.filter(|s| !s.is_empty()) {
                out.push_str(&format!("search {}\n", s.join(" ")));
            }
            for n in c.nameservers.iter().flatten() {
                out.push_str(&format!("nameserver {n}\n"));
            }
            let options: Vec<String> = c
                .options
                .iter()
                .flatten()
                .map(|o| match &o.value {
                    Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                    None => o.name.clone().unwrap_or_default(),
                })
                .collect();
            if !options.is_empty() {
                out.push_str(&format!("options {}\n", options.join(" ")));
            }
            out
        }
        _ => super::workload::resolv_conf(namespace, dns.0, dns.1),
    }
}

/// The pod's resolv.conf and hosts, and the sandbox's record.
fn write_files(sandbox: &Sandbox, resolv: &str) -> Result<(), String> {
    let write =
        |path: PathBuf, text: String| std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()));
    write(sandbox.resolv_conf(), resolv.to_string())?;
    write(sandbox.hosts(), super::workload::hosts_file(&sandbox.ip, &sandbox.name))?;
    write(sandbox.dir.join("sandbox.json"), serde_json::to_string(sandbox).expect("serializes"))
}

fn first_ip(result: &Value) -> Option<String> {
    let addr = result.get("ips")?.as_array()?.first()?.get("address")?.as_str()?;
    Some(addr.split('/').next()?.to_string())
}

/// Tears the sandbox down: CNI DEL, the namespace, the pod's files. Idempotent.
pub fn destroy(network: Cni, layout: &Layout, node: &str, s: &Sandbox) -> Result<(), String> {
    if s.host_network {
        // The node's namespace is not the pod's to remove: only its files go.
        return match std::fs::remove_dir_all(&s.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {}: {e}", s.dir.display())),
            _ => Ok(()),
        };
    }
    destroy_parts(network, layout, node, &s.uid, &s.namespace, &s.name)
}

fn destroy_parts(
    network: Cni,
    layout: &Layout,
    node: &str,
    uid: &str,
    namespace: &str,
    name: &str,
) -> Result<(), String> {
    let ns = layout.pod_ns(uid);
    let att = attachment(uid, namespace, name, &ns);
    let (conf, dirs) = conflist(network, layout, node).map_err(|e| format!("CNI DEL: {e}"))?;
    conf.del(&att, &dirs, &Map::new(), &Value::Null).map_err(|e| format!("CNI DEL: {e}"))?;
    netns::remove_named(&ns).map_err(|e| format!("remove the pod's network namespace: {e}"))?;
    let dir = layout.pod_dir(node, uid);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {}: {e}", dir.display())),
        _ => Ok(()),
    }
}

/// The sandboxes a previous run of this node's kubelet left.
pub fn adopt(layout: &Layout, node: &str) -> Vec<Sandbox> {
    let Ok(dirs) = std::fs::read_dir(layout.node_dir(node).join("pods")) else { return Vec::new() };
    dirs.filter_map(|d| {
        let text = std::fs::read_to_string(d.ok()?.path().join("sandbox.json")).ok()?;
        serde_json::from_str(&text).ok()
    })
    .collect()
}

/// Where the CNI plugin lives: next to this binary, which is the plugin.
/// A running container process (the leader of its own process group).
#[derive(Debug)]
pub struct Process {
    pub pid: i32,
    /// The container it runs, when known.
    pub name: Option<String>,
    child: Option<Child>,
}

impl Process {
    /// Adopts a process an earlier kubelet started, when it is still alive and still in
    /// the pod's network namespace (a pid reused by anything else is not ours).
    pub fn adopt(name: &str, pid: i32, netns: &Path) -> Option<Self> {
        let want = netns::NetNs::open(netns).ok()?.id().ok()?;
        (netns::of_process(pid) == Some(want)).then(|| Self { pid, name: Some(name.to_string()), child: None })
    }

    /// Its exit code once it has exited (-1 when killed by a signal or not ours to reap).
    pub fn exited(&mut self) -> Option<i32> {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(Some(st)) => Some(st.code().unwrap_or(-1)),
                _ => None,
            },
            None => (!Path::new(&format!("/proc/{}", self.pid)).exists()).then_some(-1),
        }
    }
}

/// `flatnet lab enter` into the sandbox, running `argv` with `env` (over a base PATH,
/// HOME and HOSTNAME) in `workdir`, with the container's `mounts` (in a root of its own
/// when there are any); `tty`: its standard input is a terminal to take as the
/// controlling one.
pub fn enter_command(
    s: &Sandbox,
    argv: &[std::ffi::OsString],
    env: &[(String, String)],
    workdir: Option<&str>,
    mounts: &[Mount],
    tty: bool,
) -> Result<Command, String> {
    let flatnet = std::env::current_exe().map_err(|e| format!("find the flatnet binary: {e}"))?;
    let mut cmd = Command::new(flatnet);
    cmd.args(["lab", "enter", "--netns"])
        .arg(&s.netns)
        .arg("--resolv-conf")
        .arg(s.resolv_conf())
        .arg("--hosts")
        .arg(s.hosts())
        .arg("--hostname")
        .arg(&s.name);
    if tty {
        cmd.arg("--tty");
    }
    let mut workdir = workdir.unwrap_or("/");
    if !mounts.is_empty() {
        cmd.arg("--root").arg(s.rootfs());
        for m in mounts {
            cmd.arg("--mount").arg(m.render());
        }
        // The directory is the container's: changed into once its root is there.
        cmd.arg("--workdir").arg(workdir);
        workdir = "/";
    }
    cmd.arg("--")
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("HOSTNAME", &s.name)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(workdir);
    Ok(cmd)
}

/// Starts `argv` inside the sandbox through `flatnet lab enter`, logging to `log`.
pub fn start(
    s: &Sandbox,
    name: &str,
    argv: &[std::ffi::OsString],
    env: &[(String, String)],
    workdir: Option<&str>,
    mounts: &[Mount],
    log: &Path,
) -> Result<Process, String> {
    s.record_mounts(name, mounts)?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = enter_command(s, argv, env, workdir, mounts, false)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().map_err(|e| format!("start the container: {e}"))?;
    Ok(Process { pid: i32::try_from(child.id()).unwrap_or(i32::MAX), name: Some(name.to_string()), child: Some(child) })
}

/// Stops processes: SIGTERM to each process group, then SIGKILL to every group after
/// `grace`, even when its leader has exited (its children may not have).
pub fn stop(procs: &mut [Process], grace: Duration) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    for p in procs.iter() {
        let _ = killpg(Pid::from_raw(p.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && procs.iter_mut().any(|p| p.exited().is_none()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in procs.iter_mut() {
        let _ = killpg(Pid::from_raw(p.pid), Signal::SIGKILL);
        if let Some(c) = &mut p.child {
            let _ = c.wait();
        }
    }
}

/// Adds the sandbox's process ids to its record, for a restarted kubelet to adopt.
pub fn record_pids(s: &Sandbox, pids: &[(String, i32)]) {
    let v: Value = pids.iter().map(|(n, p)| (n.clone(), json!(p))).collect::<Map<_, _>>().into();
    // Written aside and renamed, so a reader never sees half a file.
    let tmp = s.dir.join("pids.json.tmp");
    if std::fs::write(&tmp, v.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, s.dir.join("pids.json"));
    }
}

pub fn recorded_pids(s: &Sandbox) -> Vec<(String, i32)> {
    let Ok(text) = std::fs::read_to_string(s.dir.join("pids.json")) else { return Vec::new() };
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text) else { return Vec::new() };
    m.into_iter().filter_map(|(k, v)| Some((k, i32::try_from(v.as_i64()?).ok()?))).collect()
}
