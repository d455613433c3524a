//! Harness for privileged tests: each test runs in network and mount namespaces of its
//! own (a [`Sandbox`]), so nothing it does is visible on the host, and skips with a
//! printed reason when it cannot have them.
#![allow(dead_code, reason = "each test file uses a different part of the harness")]

pub mod kubectl;
pub mod lab;
pub mod terminal;

use flatnet_cni::exec::{self, Attachment, ExecError};
use flatnet_kernel::sandbox::{self, Sandbox};
use flatnet_kernel::{Netlink, link};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Runs `f` in a fresh sandbox, or prints why it is skipped.
pub fn sandboxed(test: &str, f: impl FnOnce(&Sandbox) + Send) {
    if let Some(why) = sandbox::unavailable_reason() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    sandbox::run(f).expect("could not build the sandbox");
}

/// Polls `cond` until it holds or `within` passes; the failure names what was awaited.
pub fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`eventually`], for a check that says what it saw: the last answer is in the
/// failure message.
pub fn converges(what: &str, within: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(last) => {
                assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}; last: {last}")
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A runtime for the kube client calls of a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The rcode of a full `dig` answer (`NOERROR`, `NXDOMAIN`, …), or `no reply`.
pub fn dig_rcode(text: &str) -> String {
    text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("no reply").to_string()
}

pub fn flatnet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flatnet"))
}

pub fn plugin_dirs() -> Vec<PathBuf> {
    vec![flatnet_bin().parent().unwrap().to_path_buf(), PathBuf::from("/usr/lib/cni")]
}

/// A flatnet network in a sandbox: its config and the runtime calls on it.
pub struct Net {
    pub config: Value,
    pub data_dir: PathBuf,
}

impl Net {
    pub fn new(sb: &Sandbox, version: &str, subnet: &str) -> Self {
        let data_dir = sb.dir().join("ipam");
        Self {
            config: json!({"cniVersion": version, "name": "testnet", "type": "flatnet", "subnet": subnet,
                           "dataDir": data_dir}),
            data_dir,
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.config[key] = value;
        self
    }

    pub fn call(&self, verb: &str, att: Option<&Attachment>, config: &Value) -> Result<Value, ExecError> {
        exec::exec(&flatnet_bin(), verb, att, &plugin_dirs(), config)
    }

    pub fn add(&self, att: &Attachment) -> Result<Value, ExecError> {
        self.call("ADD", Some(att), &self.config)
    }

    pub fn del(&self, att: &Attachment) -> Result<Value, ExecError> {
        self.call("DEL", Some(att), &self.config)
    }

    pub fn check(&self, att: &Attachment, prev: &Value) -> Result<Value, ExecError> {
        let mut c = self.config.clone();
        c["prevResult"] = prev.clone();
        self.call("CHECK", Some(att), &c)
    }

    /// Reserved addresses, from the store's files.
    pub fn reserved(&self) -> Vec<String> {
        let dir = self.data_dir.join("testnet").join("ips");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub fn attachment(id: &str, netns: &Path) -> Attachment {
    Attachment {
        container_id: id.into(),
        netns: netns.to_string_lossy().into_owned(),
        ifname: "eth0".into(),
        args: vec![],
    }
}

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    flatnet_kernel::netns::run_in(path, f).expect("enter netns")
}

/// Devices of the sandbox (host side) that flatnet made for pods.
pub fn pod_veths() -> Vec<link::Link> {
    let mut nl = Netlink::open().unwrap();
    link::list(&mut nl)
        .unwrap()
        .into_iter()
        .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with("flatnet:")))
        .collect()
}

pub fn wait_no_pod_veths() {
    eventually("every pod veth to be torn down", Duration::from_secs(10), || pod_veths().is_empty());
}

/// The IPv4 address of `ifname` inside a namespace, if any.
pub fn pod_ip(netns: &Path, ifname: &str) -> Option<ipnet::IpNet> {
    in_netns(netns, || {
        let mut nl = Netlink::open().ok()?;
        let l = link::get(&mut nl, ifname).ok()??;
        flatnet_kernel::addr::list(&mut nl, Some(l.index))
            .ok()?
            .into_iter()
            .map(|(_, a)| a)
            .find(|a| a.addr().is_ipv4())
    })
}

/// Connects over TCP from one namespace to a listener in another and returns the
/// source address the listener saw.
pub fn tcp_probe(from: &Path, to: &Path, to_ip: std::net::IpAddr, port: u16) -> std::io::Result<std::net::SocketAddr> {
    flatnet_kernel::probe::tcp(from, to, to_ip, port, Duration::from_secs(3))
}

/// Why a test cannot run here: the first of `tools` (program, Debian package) not
/// installed (looked for on PATH, and in /usr/sbin and /sbin, which a PATH may lack).
pub fn missing_tools(tools: &[(&str, &str)]) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> =
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).collect();
    tools
        .iter()
        .find(|(bin, _)| !dirs.iter().any(|d| d.join(bin).is_file()))
        .map(|(bin, pkg)| format!("{bin} is not installed (apt-get install {pkg})"))
}

/// Removes the cgroup `parent` (and all under it) that a runtime made for a test, in
/// every hierarchy, deepest first.
pub fn remove_cgroups(parent: &str) {
    fn tree(dir: &Path) {
        if let Ok(children) = std::fs::read_dir(dir) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                tree(&c.path());
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
    let name = parent.trim_start_matches('/');
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            tree(&h.path().join(name));
        }
    }
    tree(&Path::new("/sys/fs/cgroup").join(name));
}
