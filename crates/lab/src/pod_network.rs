//! Which pod network a lab runs: flatnet's own (the default), or Flannel, so that the
//! benchmarks compare the two on the same nodes, API and kernel.
//!
//! With Flannel, each lab kubelet runs `flanneld` as the kube-flannel DaemonSet does
//! (`--kube-subnet-mgr`, `--ip-masq`, Pod CIDRs from the Nodes, its net-conf.json) and
//! no flatnet agent. Flannel's CNI plugin (`github.com/flannel-io/cni-plugin`) is not
//! served by the Go module proxy here, so the kubelet does what that plugin does: it
//! reads flanneld's subnet file at ADD time and runs the reference `bridge` plugin with
//! `host-local`, configured as the plugin would delegate (the kube-flannel conflist's
//! `hairpinMode` and `isDefaultGateway`, Flannel's MTU, IP masquerade left to flanneld).
//! Both binaries come from `scripts/peers flannel plugins`.

use crate::layout::Layout;
use crate::upstream::{FLANNEL_VERSION, PLUGINS_VERSION, peer_dir};
use flatnet_cni::exec::ConfList;
use flatnet_model::node_network::Backend;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Flannel's Pod network (its net-conf.json `Network`): the lab's cluster CIDR.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodNetwork {
    #[default]
    Flatnet,
    Flannel,
}

impl std::fmt::Display for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flatnet => "flatnet",
            Self::Flannel => "flannel",
        })
    }
}

impl std::str::FromStr for PodNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flatnet" => Ok(Self::Flatnet),
            "flannel" => Ok(Self::Flannel),
            _ => Err(format!("unknown pod network {s:?}: use flatnet or flannel")),
        }
    }
}

/// `program` of peer `name`, or how to build it.
fn peer_binary(name: &str, version: &str, program: &str) -> Result<PathBuf, String> {
    let path = peer_dir(name, version).join(program);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{program} ({name} {version}) is not built (no {}): run scripts/peers {name}", path.display()))
    }
}

/// flanneld and the reference plugins, or what is missing.
pub fn flannel_binaries() -> Result<(PathBuf, PathBuf), String> {
    let flanneld = peer_binary("flannel", FLANNEL_VERSION, "flanneld")?;
    let bridge = peer_binary("plugins", PLUGINS_VERSION, "bridge")?;
    peer_binary("plugins", PLUGINS_VERSION, "host-local")?;
    Ok((flanneld, bridge.parent().map(Path::to_path_buf).unwrap_or_default()))
}

/// The node's Flannel directory: net-conf.json, subnet.env, the IPAM store.
fn flannel_dir(layout: &Layout, node: &str) -> PathBuf {
    layout.node_dir(node).join("flannel")
}

/// A process's environment variables.
pub type Env = Vec<(String, String)>;

/// Writes the node's net-conf.json (what the kube-flannel ConfigMap holds) and returns
/// flanneld's command line and environment, as the kube-flannel DaemonSet runs it.
pub fn flanneld(layout: &Layout, node: &str, backend: Backend, bin: &Path) -> std::io::Result<(Vec<String>, Env)> {
    let dir = flannel_dir(layout, node);
    std::fs::create_dir_all(&dir)?;
    let kind = match backend {
        Backend::Vxlan => "vxlan",
        Backend::HostGw => "host-gw",
        Backend::Bgp => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "Flannel has no bgp backend: use vxlan or host-gw with --network flannel",
            ));
        }
    };
    let conf = dir.join("net-conf.json");
    std::fs::write(&conf, json!({"Network": CLUSTER_CIDR, "Backend": {"Type": kind}}).to_string())?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let cmd = vec![
        s(bin),
        "--kube-subnet-mgr".into(),
        "--ip-masq".into(),
        "--kubeconfig-file".into(),
        s(&layout.node_kubeconfig(node)),
        "--iface".into(),
        "eth0".into(),
        "--net-config-path".into(),
        s(&conf),
        "--subnet-file".into(),
        s(&dir.join("subnet.env")),
    ];
    Ok((cmd, vec![("NODE_NAME".into(), node.into())]))
}

/// Where a lab kubelet's CNI configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cni {
    /// Made by the lab for this network (flatnet's agent run by the kubelet, or Flannel).
    Lab(PodNetwork),
    /// What the network's DaemonSet installed in the node's /etc/cni/net.d and
    /// /opt/cni/bin, as a container runtime finds it; the plugins run with the node's
    /// own directories (see `layout::NODE_LOCAL`).
    Installed,
}

/// The node's CNI configuration file, as a runtime picks it: the first by name in
/// /etc/cni/net.d.
pub fn installed_config(layout: &Layout, node: &str) -> Option<PathBuf> {
    let dir = layout.node_root(node).join("etc/cni/net.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
        .collect();
    files.sort();
    files.into_iter().next()
}

fn installed(layout: &Layout, node: &str) -> Result<(ConfList, Vec<PathBuf>), String> {
    let file = installed_config(layout, node)
        .ok_or("no CNI configuration in /etc/cni/net.d yet (the pod network's DaemonSet installs it)")?;
    let text = std::fs::read_to_string(&file).map_err(|e| format!("read {}: {e}", file.display()))?;
    let mut conf = ConfList::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let me = std::env::current_exe().map_err(|e| format!("find the flatnet binary: {e}"))?;
    let root = layout.node_root(node);
    let mut runner: Vec<std::ffi::OsString> = vec![me.into(), "lab".into(), "enter".into(), "--netns".into()];
    runner.push(layout.node_ns(node).into());
    for m in crate::layout::node_mounts(&root) {
        runner.extend(["--mount".into(), m.render().into()]);
    }
    runner.extend(["--root".into(), layout.node_dir(node).join("cni-root").into(), "--".into()]);
    conf.runner = runner;
    Ok((conf, vec![root.join("opt/cni/bin")]))
}

/// The node's CNI network and where its plugins are.
pub fn conflist(network: Cni, layout: &Layout, node: &str) -> Result<(ConfList, Vec<PathBuf>), String> {
    let network = match network {
        Cni::Installed => return installed(layout, node),
        Cni::Lab(n) => n,
    };
    let (text, dirs) = match network {
        PodNetwork::Flatnet => (
            json!({
                "cniVersion": "1.1.0",
                "name": "flatnet",
                "plugins": [{
                    "type": "flatnet",
                    "bridge": "cni0",
                    "subnetFile": layout.subnet_file(node),
                    "dataDir": layout.node_root(node).join("var/lib/cni/flatnet"),
                    "agentSocket": layout.agent_socket(node),
                }],
            }),
            own_dir(),
        ),
        PodNetwork::Flannel => {
            let file = flannel_dir(layout, node).join("subnet.env");
            let env = std::fs::read_to_string(&file)
                .map_err(|e| format!("read {} (flanneld writes it once it has a lease): {e}", file.display()))?;
            (
                flannel_delegate(&env, &flannel_dir(layout, node).join("ipam"))?,
                vec![peer_dir("plugins", PLUGINS_VERSION)],
            )
        }
    };
    Ok((ConfList::parse(&text.to_string()).map_err(|e| e.to_string())?, dirs))
}

/// The directory of this executable: where the flatnet plugin is (it is the binary).
fn own_dir() -> Vec<PathBuf> {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).into_iter().collect()
}

/// What Flannel's CNI plugin hands the bridge plugin, from flanneld's subnet file.
fn flannel_delegate(subnet_env: &str, ipam_dir: &Path) -> Result<serde_json::Value, String> {
    let get = |key: &str| {
        subnet_env
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .ok_or_else(|| format!("flanneld's subnet file has no {key}"))
    };
    let subnet: ipnet::Ipv4Net = get("FLANNEL_SUBNET")?.parse().map_err(|e| format!("FLANNEL_SUBNET: {e}"))?;
    let mtu: u32 = get("FLANNEL_MTU")?.parse().map_err(|e| format!("FLANNEL_MTU: {e}"))?;
    let ip_masq = get("FLANNEL_IPMASQ").is_ok_and(|v| v == "true");
    Ok(json!({
        "cniVersion": "1.1.0",
        "name": "cbr0",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "hairpinMode": true,
            "isDefaultGateway": true,
            "isGateway": true,
            // flanneld masquerades when it was asked to; the bridge then must not.
            "ipMasq": !ip_masq,
            "mtu": mtu,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet.trunc().to_string()}]],
                "routes": [{"dst": get("FLANNEL_NETWORK")?}],
                "dataDir": ipam_dir,
            },
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_gets_what_flannels_plugin_would_delegate() {
        let env =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let c = flannel_delegate(env, Path::new("/x/ipam")).unwrap();
        let p = &c["plugins"][0];
        assert_eq!(p["type"], "bridge");
        assert_eq!(p["mtu"], 1450);
        assert_eq!(p["ipMasq"], false);
        assert_eq!(p["ipam"]["ranges"][0][0]["subnet"], "10.244.2.0/24");
        assert_eq!(p["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
        assert_eq!(p["ipam"]["dataDir"], "/x/ipam");
    }

    #[test]
    fn a_subnet_file_without_a_lease_is_refused_with_its_reason() {
        let e = flannel_delegate("FLANNEL_NETWORK=10.244.0.0/16\n", Path::new("/x")).unwrap_err();
        assert!(e.contains("FLANNEL_SUBNET"), "{e}");
        assert!("weave".parse::<PodNetwork>().unwrap_err().contains("flatnet or flannel"));
    }
}
