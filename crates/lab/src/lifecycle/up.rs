//! `lab up`: builds (or completes) the lab: the control plane, the underlay, each node
//! with its kubelet and agent, then waits for every node's network and deploys the
//! cluster DNS.

use super::settings::{self, Settings};
use crate::kubernetes::ControlPlane;
use crate::layout::Layout;
use crate::pod_network::PodNetwork;
use crate::racks::Racks;
use crate::{nodes, underlay};
use anyhow::{Context, bail};
use flatnet_model::node_network::Backend;
use k8s_openapi::api::core::v1::Node;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// What to bring up.
#[derive(Clone, Debug)]
pub struct UpConfig {
    pub layout: Layout,
    /// The API server's address on this machine.
    pub listen: SocketAddr,
    /// How many nodes (node-1 … node-N).
    pub nodes: usize,
    pub backend: Backend,
    /// How many racks the nodes spread over (1: one flat segment, no routers).
    pub racks: usize,
    /// VXLAN only to peers in other subnets.
    pub cross_subnet: bool,
    /// Nodes whose Services upstream kube-proxy carries (nftables mode) instead of the
    /// agent, as on a cluster that runs flatnet beside kube-proxy.
    pub kube_proxy_nodes: Vec<String>,
    /// flatnet, or Flannel for side-by-side comparisons (flanneld instead of the agent).
    pub network: PodNetwork,
    /// The embedded API server, or the upstream components (`scripts/kubernetes`).
    pub control_plane: ControlPlane,
}

/// What `up` is doing, for a progress display.
pub enum Progress<'a> {
    /// Starting on a lab of this size and backend.
    Lab { nodes: usize, backend: Backend },
    /// A step begins.
    Step(&'a str),
    /// The step begun last is done.
    Done(Duration),
}

/// A node as `lab up` reports it.
pub struct NodeSummary {
    pub name: String,
    pub ip: String,
    pub pod_cidr: String,
    pub network: String,
}

/// Builds (or completes) the lab and waits until every node's network is up.
pub fn up(cfg: &UpConfig, progress: &mut dyn FnMut(Progress<'_>)) -> anyhow::Result<Vec<NodeSummary>> {
    if cfg.nodes == 0 || cfg.nodes > nodes::MAX_NODES {
        bail!("--nodes must be between 1 and {}", nodes::MAX_NODES);
    }
    let racks = Racks::new(cfg.racks).map_err(anyhow::Error::msg)?;
    let upstream = cfg.control_plane == ControlPlane::Kubernetes;
    if upstream {
        crate::kubernetes::binaries().map_err(anyhow::Error::msg)?;
        if cfg.network == PodNetwork::Flannel || !cfg.kube_proxy_nodes.is_empty() {
            bail!(
                "--control-plane kubernetes runs flatnet's own agent and DNS: leave out --network flannel and --kube-proxy"
            );
        }
    }
    if racks.routed() {
        crate::racks::bird_binary().map_err(anyhow::Error::msg)?;
    }
    if cfg.cross_subnet && cfg.backend != Backend::Vxlan {
        bail!("--cross-subnet goes with --backend vxlan (direct routes in a subnet, VXLAN between subnets)");
    }
    if cfg.backend == Backend::HostGw && racks.routed() {
        eprintln!(
            "note: host-gw needs every node on one L2 segment; across {} racks only same-rack peers get routes (each node says which it skips)",
            racks.count
        );
    }
    let kube_proxy = if cfg.kube_proxy_nodes.is_empty() {
        None
    } else {
        if let Some(n) = cfg.kube_proxy_nodes.iter().find(|n| !(1..=cfg.nodes).any(|i| nodes::name(i) == **n)) {
            bail!("--kube-proxy {n}: the lab's nodes are node-1 … node-{}", cfg.nodes);
        }
        Some(crate::upstream::binary("kube-proxy").map_err(anyhow::Error::msg)?)
    };
    if cfg.network == PodNetwork::Flannel {
        if cfg.backend == Backend::Bgp {
            bail!("Flannel has no bgp backend: use --backend vxlan or host-gw with --network flannel");
        }
        crate::pod_network::flannel_binaries().map_err(anyhow::Error::msg)?;
    }
    let layout = &cfg.layout;
    if let Some(s) = settings::read(layout)
        && layout.apiserver().is_some()
        && (s.backend != cfg.backend.to_string()
            || s.nodes != cfg.nodes
            || s.network != cfg.network
            || s.racks != cfg.racks
            || s.cross_subnet != cfg.cross_subnet
            || s.control_plane != cfg.control_plane)
    {
        bail!(
            "the lab is already up with {} node(s) in {} rack(s), backend {}{}, pod network {} and the {} control plane; run `flatnet lab down` first to change that",
            s.nodes,
            s.racks,
            s.backend,
            if s.cross_subnet { " (cross-subnet)" } else { "" },
            s.network,
            s.control_plane
        );
    }
    progress(Progress::Lab { nodes: cfg.nodes, backend: cfg.backend });
    std::fs::create_dir_all(layout.netns_dir()).with_context(|| format!("create {}", layout.state.display()))?;
    flatnet_kernel::netns::make_shared_dir(&layout.netns_dir())
        .context("prepare the namespace directory (needs root)")?;

    let t = Instant::now();
    progress(Progress::Step("control plane (API server, store, controllers)"));
    let token = match std::fs::read_to_string(layout.token()) {
        Ok(t) => t.trim().to_string(),
        Err(_) => {
            let t = crate::kubeconfig::new_token();
            write_private(&layout.token(), &t)?;
            t
        }
    };
    let ca = if upstream {
        crate::kubernetes::prepare(layout, &token)?;
        crate::kubernetes::ca_pem(layout)?
    } else {
        crate::tls::load_or_create(&layout.state)?;
        // The kubelets' API certificates and the API server's client one towards them.
        crate::kubernetes::pki::Pki::load_or_create(&crate::kubernetes::pki::Pki::of(layout).dir)?;
        std::fs::read_to_string(layout.state.join("ca.crt")).context("read the lab's CA certificate")?
    };
    underlay::create(&layout.underlay_ns()).context("create the lab underlay network namespace (needs root)")?;
    start_control_plane(layout, cfg.listen, cfg.control_plane)?;
    write_private(&layout.kubeconfig(), &crate::kubeconfig::render(&format!("https://{}", cfg.listen), &ca, &token))?;
    let rt = super::connect::runtime()?;
    // flatnet itself, installed as an operator installs it: its manifest, with the
    // lab's settings in its ConfigMaps (a lab with kube-proxy or Flannel nodes runs its
    // agents and DNS pods of its own instead).
    let manifest = cfg.network == PodNetwork::Flatnet && cfg.kube_proxy_nodes.is_empty();
    write_private(
        &layout.node_resolv_conf(),
        &format!("# the lab's stand-in upstream (see `flatnet lab`)\nnameserver {}\n", underlay::control_plane_ip()),
    )?;
    let node_port = node_server_port(cfg.listen, cfg.control_plane);
    // The DNS Deployment goes in once every node is up, so that its pods spread over
    // them rather than all landing on the first node ready.
    let mut dns_deployment = Vec::new();
    rt.block_on(async {
        let client = super::connect::client(layout).await?;
        if upstream {
            crate::kubernetes::wait_ready(&client, Duration::from_secs(90))
                .await
                .with_context(|| format!("its logs are in {}", crate::kubernetes::components::dir(layout).display()))?;
        }
        let mut objects = if manifest {
            install_objects(cfg, node_port)?
        } else {
            // The least-privilege roles alone, for the agents and DNS pods the lab runs.
            super::apply::parse(crate::kubernetes::MANIFEST)?
                .into_iter()
                .filter(|o| {
                    o.get("kind")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|k| crate::kubernetes::RBAC_KINDS.contains(&k))
                })
                .collect()
        };
        // The lab's own processes' certificate groups (on the upstream control plane).
        objects.extend(super::apply::parse(crate::kubernetes::LAB_RBAC)?);
        let (later, now): (Vec<_>, Vec<_>) = objects.into_iter().partition(|o| o["kind"] == "Deployment");
        dns_deployment = later;
        for o in now {
            let p = super::apply::prepare(&client, o).await?;
            if !p.exists().await? {
                p.apply().await?;
            }
        }
        anyhow::Ok(())
    })?;
    let credentials = Credentials { layout, upstream, token: &token, ca: &ca };
    let node_server = node_server(cfg.listen, cfg.control_plane);
    write_private(&layout.dns_kubeconfig(), &credentials.render(&node_server, None)?)?;
    let settings = Settings {
        backend: cfg.backend.to_string(),
        nodes: cfg.nodes,
        listen: cfg.listen,
        kube_proxy: cfg.kube_proxy_nodes.clone(),
        network: cfg.network,
        racks: cfg.racks,
        cross_subnet: cfg.cross_subnet,
        control_plane: cfg.control_plane,
    };
    std::fs::write(layout.settings(), serde_json::to_string_pretty(&settings)?)?;
    progress(Progress::Done(t.elapsed()));
    if racks.routed() {
        let t = Instant::now();
        progress(Progress::Step(&format!(
            "{} racks: a segment each, top-of-rack routers running BIRD 2, a core between them",
            racks.count
        )));
        start_routers(layout, racks)?;
        progress(Progress::Done(t.elapsed()));
    }

    for i in 1..=cfg.nodes {
        let (name, ip) = (nodes::name(i), racks.node_ip(i));
        let t = Instant::now();
        let daemon = if cfg.network == PodNetwork::Flannel { "flanneld" } else { "agent" };
        let bridge = racks.bridge(racks.rack_of(i));
        progress(Progress::Step(&format!("{name}: netns, eth0 {ip} on {bridge}, kubelet, {daemon}")));
        std::fs::create_dir_all(layout.node_dir(&name))?;
        write_private(
            &layout.node_kubeconfig(&name),
            &credentials.render(&node_server, Some((&name, Role::Kubelet)))?,
        )?;
        write_private(&layout.agent_kubeconfig(&name), &credentials.render(&node_server, Some((&name, Role::Agent)))?)?;
        crate::kubernetes::write_kubelet_serving(layout, &name, ip)?;
        let wiring = nodes::Wiring { bridge: &bridge, addr: racks.node_net(i), gateway: racks.node_gateway(i) };
        nodes::create(&layout.underlay_ns(), &layout.node_ns(&name), &name, &wiring)
            .with_context(|| format!("create node {name}"))?;
        let proxy = kube_proxy.as_deref().filter(|_| cfg.kube_proxy_nodes.contains(&name));
        let mut agent_args = Vec::new();
        if cfg.backend == Backend::Bgp {
            agent_args.extend(racks.agent_bgp_args(i));
            agent_args.extend(["--bgp-hold-time".into(), LAB_HOLD_TIME.to_string()]);
        }
        if cfg.cross_subnet {
            agent_args.push("--cross-subnet".into());
        }
        // The node's own directories (its CNI directories, /run/flatnet), empty.
        for (dir, _) in crate::layout::NODE_LOCAL.iter().map(|l| crate::layout::on_node(&layout.node_root(&name), l)) {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let annotations = bgp_annotations(&agent_args);
        let agent = if manifest { NodeAgent::DaemonSet(&annotations) } else { NodeAgent::Process(&agent_args) };
        start_kubelet(layout, &name, ip, cfg, proxy, agent)?;
        progress(Progress::Done(t.elapsed()));
    }
    let t = Instant::now();
    progress(Progress::Step("waiting for every node's network (podCIDR, routes to peers)"));
    // host-gw across racks can only route within a rack: each node up with the other
    // racks' peers left out (and why) is as far as it goes.
    let partial_ok = cfg.backend == Backend::HostGw && racks.routed();
    let summary = rt.block_on(wait_nodes_ready(layout, cfg.nodes, cfg.network, partial_ok, Duration::from_secs(60)))?;
    progress(Progress::Done(t.elapsed()));
    let t = Instant::now();
    progress(Progress::Step(&format!("cluster DNS: kube-dns {} → 2 flatnet dns pods", super::cluster_dns::SERVICE_IP)));
    rt.block_on(async {
        let client = super::connect::client(layout).await?;
        if manifest {
            for o in dns_deployment {
                let p = super::apply::prepare(&client, o).await?;
                if !p.exists().await? {
                    p.apply().await?;
                }
            }
            super::cluster_dns::wait_installed(&client, layout).await
        } else {
            super::cluster_dns::deploy(&client, layout, cfg.nodes).await
        }
    })?;
    progress(Progress::Done(t.elapsed()));
    Ok(summary)
}

/// The API server's port as the nodes reach it, over the underlay (kube-apiserver
/// listens on its own port there; the embedded one on the port it has on the host).
fn node_server_port(listen: SocketAddr, control_plane: ControlPlane) -> u16 {
    match control_plane {
        ControlPlane::Embedded => listen.port(),
        ControlPlane::Kubernetes => crate::kubernetes::components::PORT,
    }
}

/// The API server's address as the nodes reach it.
pub fn node_server(listen: SocketAddr, control_plane: ControlPlane) -> String {
    format!("https://{}:{}", underlay::control_plane_ip(), node_server_port(listen, control_plane))
}

/// flatnet's install manifest as the lab applies it: the settings an operator would set
/// in its ConfigMaps set to the lab's, and the agents told where the API server is
/// (ConfigMap flatnet-apiserver, as on a cluster whose Service proxy is flatnet itself).
fn install_objects(cfg: &UpConfig, api_port: u16) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde_json::json;
    let mut objects = super::apply::parse(crate::kubernetes::MANIFEST)?;
    for o in &mut objects {
        if o["kind"] != "ConfigMap" {
            continue;
        }
        let name = o["metadata"]["name"].as_str().map(str::to_string);
        let data = &mut o["data"];
        match name.as_deref() {
            Some("flatnet-config") => {
                data["backend"] = json!(cfg.backend.to_string());
                data["cross-subnet"] = json!(cfg.cross_subnet.to_string());
                data["bgp-hold-time"] = json!(LAB_HOLD_TIME.to_string());
            }
            Some("flatnet-dns") => data["allow-forwarding"] = json!(super::cluster_dns::ALLOW_FORWARDING),
            _ => {}
        }
    }
    objects.push(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "flatnet-apiserver", "namespace": "kube-system", "labels": {"app.kubernetes.io/name": "flatnet"}},
        "data": {"KUBERNETES_SERVICE_HOST": underlay::control_plane_ip().to_string(), "KUBERNETES_SERVICE_PORT": api_port.to_string()},
    }));
    Ok(objects)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::write_file(path, text, 0o600).with_context(|| format!("write {}", path.display()))
}

/// Which identity a node's kubeconfig is for.
#[derive(Clone, Copy)]
enum Role {
    Kubelet,
    Agent,
}

/// The kubeconfigs of the lab's processes: on the embedded control plane the lab's token;
/// on the upstream one a client certificate each (a kubelet as `system:node:<name>`, an
/// agent and the DNS in flatnet's groups, which deploy/rbac.yaml binds).
struct Credentials<'a> {
    layout: &'a Layout,
    upstream: bool,
    token: &'a str,
    ca: &'a str,
}

impl Credentials<'_> {
    /// For `node`'s kubelet or agent, or (None) for the cluster DNS.
    fn render(&self, server: &str, who: Option<(&str, Role)>) -> anyhow::Result<String> {
        if !self.upstream {
            return Ok(crate::kubeconfig::render(server, self.ca, self.token));
        }
        let id = match who {
            Some((node, Role::Kubelet)) => crate::kubernetes::kubelet(node),
            Some((node, Role::Agent)) => crate::kubernetes::agent(node),
            None => crate::kubernetes::dns(),
        };
        crate::kubernetes::kubeconfig(self.layout, server, &id)
    }
}

fn start_control_plane(layout: &Layout, listen: SocketAddr, control_plane: ControlPlane) -> anyhow::Result<()> {
    if layout.apiserver().is_some() {
        return Ok(());
    }
    let log = std::fs::File::create(layout.state.join("apiserver.log"))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["lab", "serve", "--state-dir"])
        .arg(&layout.state)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--control-plane")
        .arg(control_plane.to_string())
        .arg("--underlay-netns")
        .arg(layout.underlay_ns())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start the control plane")?;
    std::fs::write(layout.apiserver_pid(), child.id().to_string())?;
    wait_listening(listen, Duration::from_secs(20)).with_context(|| {
        format!("the control plane did not come up; its log is {}", layout.state.join("apiserver.log").display())
    })
}

/// The BGP hold time in the lab (routers and agents): a lost node's routes are gone
/// within it. Keepalives go every third of it.
pub const LAB_HOLD_TIME: u16 = 9;

/// The rack routers: the segments, each router's namespace, and BIRD in it.
fn start_routers(layout: &Layout, racks: Racks) -> anyhow::Result<()> {
    crate::routers::create_segments(&layout.underlay_ns(), racks).context("create the racks' segments")?;
    for rack in 1..=racks.count {
        let name = crate::racks::router_name(rack);
        crate::routers::create(&layout.underlay_ns(), &layout.router_ns(rack), rack, racks)
            .with_context(|| format!("create {name}"))?;
        let dir = layout.router_dir(rack);
        std::fs::create_dir_all(&dir)?;
        let conf = crate::racks::bird_config(rack, racks, LAB_HOLD_TIME, crate::pod_network::CLUSTER_CIDR.parse()?);
        std::fs::write(dir.join("bird.conf"), conf)?;
        // The router process becomes BIRD: known by its configuration file.
        if crate::layout::running_pid(&layout.router_pid(rack), &[&dir.join("bird.conf").to_string_lossy()]).is_some() {
            continue;
        }
        let log = std::fs::File::create(dir.join("bird.log"))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["lab", "router", "--state-dir"])
            .arg(&layout.state)
            .args(["--rack", &rack.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start BIRD on {name}"))?;
        std::fs::write(layout.router_pid(rack), child.id().to_string())?;
    }
    Ok(())
}

/// The node's BGP settings as the annotations its agent reads (when the agent is a
/// DaemonSet's pod, whose flags are the same on every node).
fn bgp_annotations(agent_args: &[String]) -> Vec<(String, String)> {
    use flatnet_model::node_network::annotations::{BGP_AS, BGP_PEERS};
    agent_args
        .chunks(2)
        .filter_map(|pair| match pair {
            [flag, value] if flag == "--bgp-as" => Some((BGP_AS.to_string(), value.clone())),
            [flag, value] if flag == "--bgp-peers" => Some((BGP_PEERS.to_string(), value.clone())),
            _ => None,
        })
        .collect()
}

/// Where a node's agent comes from.
enum NodeAgent<'a> {
    /// Its kubelet runs `flatnet agent` with these flags.
    Process(&'a [String]),
    /// flatnet's DaemonSet; the Node gets these annotations (its BGP settings).
    DaemonSet(&'a [(String, String)]),
}

/// Starts the node's kubelet.
fn start_kubelet(
    layout: &Layout,
    node: &str,
    ip: Ipv4Addr,
    cfg: &UpConfig,
    kube_proxy: Option<&Path>,
    agent: NodeAgent<'_>,
) -> anyhow::Result<()> {
    if layout.kubelet(node).is_some() {
        return Ok(());
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(layout.node_dir(node).join("kubelet.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["lab", "kubelet", "--state-dir"]).arg(&layout.state).args([
        "--node",
        node,
        "--node-ip",
        &ip.to_string(),
        "--backend",
        &cfg.backend.to_string(),
        "--network",
        &cfg.network.to_string(),
    ]);
    if let Some(bin) = kube_proxy {
        cmd.arg("--kube-proxy").arg(bin);
    }
    match agent {
        NodeAgent::Process(args) => {
            for a in args {
                cmd.arg(format!("--agent-arg={a}"));
            }
        }
        NodeAgent::DaemonSet(annotations) => {
            cmd.arg("--installed-cni");
            for (k, v) in annotations {
                cmd.arg(format!("--node-annotation={k}={v}"));
            }
        }
    }
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start the kubelet of {node}"))?;
    std::fs::write(layout.kubelet_pid(node), child.id().to_string())?;
    Ok(())
}

fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until `count` nodes are registered, have a podCIDR, and their agent reports
/// the network up (NetworkUnavailable=False; flanneld reports it with a reason of its
/// own, and no message about peers).
async fn wait_nodes_ready(
    layout: &Layout,
    count: usize,
    network: PodNetwork,
    partial_ok: bool,
    within: Duration,
) -> anyhow::Result<Vec<NodeSummary>> {
    let api: kube::Api<Node> = kube::Api::all(super::connect::client(layout).await?);
    let deadline = Instant::now() + within;
    loop {
        let mut problems = Vec::new();
        let list = match api.list(&Default::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        let wanted: HashSet<String> = (1..=count).map(nodes::name).collect();
        let mut summary: Vec<NodeSummary> = list
            .iter()
            .filter(|n| n.metadata.name.as_ref().is_some_and(|x| wanted.contains(x)))
            .map(|n| {
                let up = match network {
                    PodNetwork::Flatnet => match flatnet_kube::node::network_state(n) {
                        (flatnet_kube::node::Network::Up, m) => Ok(m),
                        (flatnet_kube::node::Network::Partial, m) if partial_ok => Ok(m),
                        (_, m) => Err(m),
                    },
                    PodNetwork::Flannel => match flatnet_kube::node::network_state(n) {
                        (flatnet_kube::node::Network::Down, m) => Err(m),
                        (_, m) => Ok(m),
                    },
                };
                let message = up.unwrap_or_else(|why| {
                    problems.push(format!("{}: {why}", n.metadata.name.as_deref().unwrap_or("")));
                    why
                });
                NodeSummary {
                    name: n.metadata.name.clone().unwrap_or_default(),
                    ip: flatnet_kube::node::internal_ip(n).map(|i| i.to_string()).unwrap_or_default(),
                    pod_cidr: n.spec.as_ref().and_then(|s| s.pod_cidr.clone()).unwrap_or_default(),
                    network: message,
                }
            })
            .collect();
        if summary.len() < count {
            problems.push(format!("{} of {count} nodes registered", summary.len()));
        }
        if problems.is_empty() {
            summary.sort_by_key(|n| n.name.trim_start_matches("node-").parse::<usize>().unwrap_or(0));
            return Ok(summary);
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes' network did not come up within {within:?}: {}\n(logs: {}/nodes/*/kubelet.log, and the agents' in nodes/*/pods/*/agent.log)",
                problems.join("; "),
                layout.state.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
