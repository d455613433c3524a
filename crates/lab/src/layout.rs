//! Where the lab keeps things under its state directory. Everything the lab makes on
//! disk is under it, and every namespace pin is under `netns/`, one shared mount that
//! `lab down` removes in one go.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub state: PathBuf,
}

impl Layout {
    /// The layout under `state`, made absolute (processes find each other by it).
    pub fn new(state: impl Into<PathBuf>) -> Self {
        let state = state.into();
        Self { state: std::path::absolute(&state).unwrap_or(state) }
    }
    pub fn netns_dir(&self) -> PathBuf {
        self.state.join("netns")
    }
    pub fn underlay_ns(&self) -> PathBuf {
        self.netns_dir().join("underlay")
    }
    pub fn node_ns(&self, node: &str) -> PathBuf {
        self.netns_dir().join(node)
    }
    pub fn router_ns(&self, rack: usize) -> PathBuf {
        self.netns_dir().join(crate::racks::router_name(rack))
    }
    /// A rack router's BIRD configuration, control socket and log.
    pub fn router_dir(&self, rack: usize) -> PathBuf {
        self.state.join("routers").join(crate::racks::router_name(rack))
    }
    pub fn router_pid(&self, rack: usize) -> PathBuf {
        self.router_dir(rack).join("bird.pid")
    }
    pub fn pod_ns(&self, uid: &str) -> PathBuf {
        self.netns_dir().join(format!("pod-{uid}"))
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state.join("nodes").join(node)
    }
    pub fn pod_dir(&self, node: &str, uid: &str) -> PathBuf {
        self.node_dir(node).join("pods").join(uid)
    }
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("kubeconfig")
    }
    /// The agent's credentials (on the upstream control plane, a client certificate of
    /// its own in group flatnet:agents).
    pub fn agent_kubeconfig(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.kubeconfig")
    }
    /// The upstream control plane's files (its PKI, which the kubelets' API certificates
    /// come from on either control plane; its components' state and logs).
    pub fn kubernetes_dir(&self) -> PathBuf {
        self.state.join("kubernetes")
    }
    /// The cluster DNS's credentials.
    pub fn dns_kubeconfig(&self) -> PathBuf {
        self.state.join("dns.kubeconfig")
    }
    /// The node's own files (its CNI directories, `/run/flatnet`), as paths on the machine.
    pub fn node_root(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("host")
    }
    /// Where the agent writes the node's subnet (`/run/flatnet/subnet.env` on the node).
    pub fn subnet_file(&self, node: &str) -> PathBuf {
        self.node_root(node).join("run/flatnet/subnet.env")
    }
    /// The nodes' resolv.conf: names go to the lab's stand-in upstream.
    pub fn node_resolv_conf(&self) -> PathBuf {
        self.state.join("upstream-resolv.conf")
    }
    pub fn kubelet_pid(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("kubelet.pid")
    }
    /// Where the node's agent takes pod registrations from the CNI plugin
    /// (`/run/flatnet/agent.sock` on the node).
    pub fn agent_socket(&self, node: &str) -> PathBuf {
        self.node_root(node).join("run/flatnet/agent.sock")
    }

    pub fn agent_pid(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.pid")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }
    pub fn token(&self) -> PathBuf {
        self.state.join("token")
    }
    pub fn apiserver_pid(&self) -> PathBuf {
        self.state.join("apiserver.pid")
    }
    /// The lab-wide settings `lab up` chose (backend, node count).
    pub fn settings(&self) -> PathBuf {
        self.state.join("lab.json")
    }
    pub fn nodes(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state.join("nodes"))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort_by_key(|n| n.trim_start_matches("node-").parse::<usize>().unwrap_or(usize::MAX));
        names
    }
}

/// The directories each lab node has of its own; every other path is the machine's.
pub const NODE_LOCAL: &[&str] = &["/opt/cni/bin", "/etc/cni/net.d", "/run/flatnet", "/var/lib/cni"];

/// `path` on `node`, as a path on this machine.
pub fn on_node(node_root: &Path, path: &str) -> (PathBuf, bool) {
    let p = Path::new(path);
    match NODE_LOCAL.iter().find(|l| p.starts_with(l)) {
        Some(_) => (node_root.join(p.strip_prefix("/").unwrap_or(p)), true),
        None => (p.to_path_buf(), false),
    }
}

/// The mounts that give a process the node's own directories (the CNI plugins run so).
pub fn node_mounts(node_root: &Path) -> Vec<flatnet_kernel::rootfs::Mount> {
    NODE_LOCAL
        .iter()
        .map(|l| flatnet_kernel::rootfs::Mount {
            source: on_node(node_root, l).0,
            target: (*l).into(),
            read_only: false,
        })
        .collect()
}

/// The pid in `file` when that process is alive and its command line holds every one
/// of `args` (so a pid reused by an unrelated process after a reboot is not taken for
/// a lab process).
pub fn running_pid(file: &Path, args: &[&str]) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    args.iter().all(|want| argv.iter().any(|a| a == want)).then_some(pid)
}

impl Layout {
    /// The control plane's pid, when it runs.
    pub fn apiserver(&self) -> Option<i32> {
        running_pid(&self.apiserver_pid(), &["serve", &self.state.to_string_lossy()])
    }
    pub fn kubelet(&self, node: &str) -> Option<i32> {
        running_pid(&self.kubelet_pid(node), &["kubelet", node, &self.state.to_string_lossy()])
    }
    /// The node's agent: the process its kubelet runs (on a lab with kube-proxy nodes),
    /// or the `agent` container of flatnet's DaemonSet pod on the node.
    pub fn agent(&self, node: &str) -> Option<i32> {
        running_pid(&self.agent_pid(node), &["agent", &self.agent_kubeconfig(node).to_string_lossy()])
            .or_else(|| self.agent_container(node).map(|(pid, _)| pid))
    }

    /// The agent's log (its container's, when it is a DaemonSet's pod).
    pub fn agent_log(&self, node: &str) -> PathBuf {
        match self.agent_container(node) {
            Some((_, log)) if !self.agent_pid(node).exists() => log,
            _ => self.node_dir(node).join("agent.log"),
        }
    }

    /// The running `agent` container of a `flatnet-node-…` pod in kube-system on `node`
    /// (from the kubelet's records): its pid and log.
    pub fn agent_container(&self, node: &str) -> Option<(i32, PathBuf)> {
        let pods = std::fs::read_dir(self.node_dir(node).join("pods")).ok()?;
        pods.flatten().find_map(|d| {
            let dir = d.path();
            let sandbox: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("sandbox.json")).ok()?).ok()?;
            let ours = sandbox["namespace"] == "kube-system"
                && sandbox["name"].as_str().is_some_and(|n| n.starts_with("flatnet-node-"));
            let pids: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("pids.json")).ok()?).ok()?;
            let pid = i32::try_from(pids["agent"].as_i64()?).ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let running = cmdline.split(|b| *b == 0).any(|a| a == b"agent");
            (ours && running).then(|| (pid, dir.join("agent.log")))
        })
    }

    /// The pid of kube-proxy on a node whose Services it carries.
    pub fn kube_proxy(&self, node: &str) -> Option<i32> {
        running_pid(&self.node_dir(node).join("kube-proxy.pid"), &["--hostname-override", node])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_directories_are_under_its_root_and_the_rest_is_the_machines() {
        let root = Path::new("/lab/nodes/node-1/host");
        assert_eq!(on_node(root, "/run/flatnet"), (root.join("run/flatnet"), true));
        assert_eq!(
            on_node(root, "/etc/cni/net.d/10-flatnet.conflist"),
            (root.join("etc/cni/net.d/10-flatnet.conflist"), true)
        );
        assert_eq!(on_node(root, "/proc/sys/net"), (PathBuf::from("/proc/sys/net"), false));
        assert_eq!(on_node(root, "/run/flatnetx"), (PathBuf::from("/run/flatnetx"), false));
        assert_eq!(node_mounts(root).len(), NODE_LOCAL.len());
    }
}
