//! A real lab for end-to-end tests: `flatnet lab up` in the test's sandbox, and the
//! helpers to apply manifests, find pods, and talk to them from inside.

use super::eventually;
use flatnet_kernel::netns;
use k8s_openapi::api::core::v1::Pod;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub fn flatnet() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flatnet"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(flatnet()).args(["lab", "down", "--state-dir"]).arg(self.state()).output();
    }
}

impl Lab {
    pub fn up(nodes: usize, backend: &str) -> Self {
        Self::up_with(nodes, &["--backend", backend])
    }

    /// A lab of `nodes` nodes brought up with more `lab up` flags. With
    /// `FLATNET_LAB_CONTROL_PLANE` set (to `kubernetes`), on that control plane unless the
    /// flags name one: how `scripts/test` runs suites again on the upstream one.
    pub fn up_with(nodes: usize, flags: &[&str]) -> Self {
        let lab = Lab { dir: tempfile::tempdir().unwrap(), port: free_port() };
        let mut flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        if let Ok(cp) = std::env::var("FLATNET_LAB_CONTROL_PLANE")
            && !flags.iter().any(|f| f == "--control-plane")
        {
            flags.extend(["--control-plane".to_string(), cp]);
        }
        run(Command::new(flatnet())
            .args(["lab", "up", "--nodes", &nodes.to_string()])
            .args(&flags)
            .args(["--listen", &format!("127.0.0.1:{}", lab.port), "--state-dir"])
            .arg(lab.state()));
        lab
    }

    /// `ip …` inside a lab namespace (a node, a router, the underlay); its stdout.
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let out = run(Command::new("nsenter").arg(format!("--net={}", self.ns(ns).display())).arg("ip").args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `birdc show …` on the router of `rack`; its stdout.
    pub fn birdc(&self, rack: usize, args: &[&str]) -> String {
        let sock = self.state().join(format!("routers/router-{rack}/bird.ctl"));
        let out = run(Command::new("birdc").arg("-s").arg(sock).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    pub fn ns(&self, name: &str) -> PathBuf {
        self.state().join("netns").join(name)
    }

    pub fn apply(&self, yaml: &str) {
        let file = self.state().join("manifest.yaml");
        std::fs::write(&file, yaml).unwrap();
        run(Command::new(flatnet()).args(["lab", "apply", "-f"]).arg(&file).arg("--state-dir").arg(self.state()));
    }

    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        Command::new(flatnet())
            .args(["lab", "exec", pod, "--state-dir"])
            .arg(self.state())
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    }

    pub fn client(&self, rt: &tokio::runtime::Runtime) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.state().join("kubeconfig")).unwrap();
        rt.block_on(async {
            kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap())
                .unwrap()
        })
    }

    /// Waits until the named pods (namespace default) are Ready; returns their IPs.
    pub fn ready_ips(&self, names: &[&str]) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client(&rt), "default");
        let mut ips = Vec::new();
        eventually(&format!("pods {names:?} Ready"), Duration::from_secs(30), || {
            let pods = rt.block_on(api.list(&Default::default())).map(|l| l.items).unwrap_or_default();
            ips = names
                .iter()
                .filter_map(|n| {
                    let p = pods.iter().find(|p| p.metadata.name.as_deref() == Some(*n))?;
                    let st = p.status.as_ref()?;
                    let ready = st.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
                    ready.then(|| st.pod_ip.clone()).flatten()
                })
                .collect();
            ips.len() == names.len()
        });
        ips
    }

    /// The network namespace of pod `name`, in any namespace.
    pub fn pod_netns(&self, name: &str) -> PathBuf {
        self.sandbox_netns(name, None)
    }

    /// The network namespace of pod `namespace/name`.
    /// The names of the pods `selector` picks in `namespace` (the cluster DNS's, say).
    pub fn pod_names(&self, namespace: &str, selector: &str) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client(&rt), namespace);
        let list = rt.block_on(api.list(&kube::api::ListParams::default().labels(selector))).unwrap();
        let mut names: Vec<String> = list.items.into_iter().filter_map(|p| p.metadata.name).collect();
        names.sort();
        names
    }

    pub fn pod_netns_in(&self, namespace: &str, name: &str) -> PathBuf {
        self.sandbox_netns(name, Some(namespace))
    }

    fn sandbox_netns(&self, name: &str, namespace: Option<&str>) -> PathBuf {
        for node in std::fs::read_dir(self.state().join("nodes")).unwrap() {
            let pods = node.unwrap().path().join("pods");
            for p in std::fs::read_dir(pods).into_iter().flatten() {
                let text = std::fs::read_to_string(p.unwrap().path().join("sandbox.json")).unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if v["name"] == name && namespace.is_none_or(|ns| v["namespace"] == ns) {
                    return PathBuf::from(v["netns"].as_str().unwrap());
                }
            }
        }
        panic!("no sandbox for pod {}{name}", namespace.map(|n| format!("{n}/")).unwrap_or_default());
    }

    pub fn pod_dir(&self, name: &str) -> PathBuf {
        let uid = self.pod_netns(name).file_name().unwrap().to_string_lossy().trim_start_matches("pod-").to_string();
        std::fs::read_dir(self.state().join("nodes"))
            .unwrap()
            .map(|n| n.unwrap().path().join("pods").join(&uid))
            .find(|p| p.exists())
            .unwrap()
    }

    /// A node's pod CIDR, from the API (nodes register concurrently, so any order).
    pub fn pod_cidr(&self, node: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(self.client(&rt));
        rt.block_on(api.get(node)).unwrap().spec.unwrap().pod_cidr.unwrap()
    }

    /// The node's agent (its DaemonSet pod's container, or the process its kubelet runs);
    /// while it is being restarted, the one that comes back (waited for, 20 s at most).
    pub fn agent_pid(&self, node: &str) -> i32 {
        let layout = flatnet_lab::layout::Layout::new(self.state());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(pid) = layout.agent(node) {
                return pid;
            }
            assert!(std::time::Instant::now() < deadline, "{node} has no running agent");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The node's agent's log.
    pub fn agent_log(&self, node: &str) -> std::path::PathBuf {
        flatnet_lab::layout::Layout::new(self.state()).agent_log(node)
    }

    /// The nodes' kernel state and agent logs, for a failure message.
    pub fn dump(&self, nodes: &[&str]) -> String {
        let mut out = String::new();
        for n in nodes {
            for args in [
                &["ip", "-d", "link", "show", "flatnet.1"][..],
                &["ip", "route"],
                &["ip", "neigh"],
                &["bridge", "fdb", "show", "dev", "flatnet.1"],
            ] {
                let o =
                    Command::new("nsenter").arg(format!("--net={}", self.ns(n).display())).args(args).output().unwrap();
                out.push_str(&format!(
                    "--- {n}: {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            let log = std::fs::read_to_string(self.agent_log(n)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("--- {n} agent.log (last lines, newest first)\n{}\n", tail.join("\n")));
        }
        out
    }

    pub fn status(&self) -> String {
        let out = run(Command::new(flatnet()).args(["lab", "status", "--state-dir"]).arg(self.state()));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Takes the lab down and checks that nothing of it is left.
    pub fn down_and_check_clean(self) {
        let pins: Vec<PathBuf> =
            std::fs::read_dir(self.state().join("netns")).unwrap().map(|e| e.unwrap().path()).collect();
        let inodes: std::collections::HashSet<u64> =
            pins.iter().filter_map(|p| netns::NetNs::open(p).ok()?.id().ok()).collect();
        run(Command::new(flatnet()).args(["lab", "down", "--state-dir"]).arg(self.state()));
        assert!(!self.state().exists(), "lab down left its state directory");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&*self.state().to_string_lossy()), "lab down left a mount");
        let left = netns::processes_in(&inodes);
        assert!(left.is_empty(), "processes still in lab namespaces after lab down: {left:?}");
    }
}

/// An HTTP GET to `ip`:80 from inside a network namespace; returns the body.
pub fn http_get(from: &Path, ip: &str) -> std::io::Result<String> {
    http_get_at(from, format!("{ip}:80").parse().unwrap())
}

/// An HTTP GET to `addr` from inside a network namespace; returns the body.
pub fn http_get_at(from: &Path, addr: SocketAddr) -> std::io::Result<String> {
    http_get_path(from, addr, "/")
}

/// The body of `GET path` at `addr`, from inside the namespace at `from`; an error
/// unless the answer is 200.
pub fn http_get_path(from: &Path, addr: SocketAddr, path: &str) -> std::io::Result<String> {
    netns::run_in(from, || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        if !out.split_once(' ').is_some_and(|(_, rest)| rest.starts_with("200")) {
            return Err(std::io::Error::other(format!("unexpected answer {out:?}")));
        }
        Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
    })
    .unwrap()
}

/// The `pod=` of a netexec answer.
pub fn seen_pod(body: &str) -> String {
    body.split_whitespace().find_map(|w| w.strip_prefix("pod=")).unwrap_or("").to_string()
}

pub fn seen_client_ip(body: &str) -> String {
    let c = body.split_whitespace().find_map(|w| w.strip_prefix("client=")).unwrap_or("");
    c.rsplit_once(':').map_or(c, |(ip, _)| ip).to_string()
}

/// tcpdump on an underlay bridge, started and ready to see packets.
pub struct Capture(Child);

impl Capture {
    pub fn start(underlay: &Path, iface: &str, filter: &str) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", underlay.display()))
            .args(["tcpdump", "-i", iface, "-nn", "-l", "-T", "vxlan", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (scripts/setup installs it)");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap() > 0 && !line.contains("listening on") {
            line.clear();
        }
        assert!(line.contains("listening on"), "tcpdump did not start: {line}");
        Capture(child)
    }

    pub fn stop(mut self) -> String {
        // A moment for the last packets to reach tcpdump's line-buffered output.
        std::thread::sleep(Duration::from_millis(200));
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGINT);
        let mut out = String::new();
        self.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let _ = self.0.wait();
        out
    }
}
