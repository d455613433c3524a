//! `flatnet agent`: the node agent's command line.

use clap::Args;
use flatnet_agent::AgentConfig;
use flatnet_model::node_network::{Backend, VxlanSettings};
use std::path::PathBuf;

#[derive(Args)]
pub struct AgentArgs {
    /// This node's name in the API (default: $NODE_NAME, else the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// A kubeconfig; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How packets cross between nodes: vxlan (encapsulated), host-gw (direct routes,
    /// every node on one L2 segment) or bgp (each node announces its Pod CIDR over BGP and
    /// installs what it learns as plain routes).
    #[arg(long, default_value = "vxlan")]
    backend: Backend,
    /// With vxlan: direct routes to peers in this node's subnet, VXLAN to the others
    /// (`--cross-subnet`, or `--cross-subnet=true|false`).
    #[arg(long, num_args = 0..=1, default_value = "false", default_missing_value = "true", action = clap::ArgAction::Set)]
    cross_subnet: bool,
    /// bgp: this node's AS (a private one by default), unless its Node's annotation
    /// flatnet.dev/bgp-as says otherwise.
    #[arg(long, default_value = "64512", value_parser = flatnet_model::bgp::parse_as)]
    bgp_as: u32,
    /// bgp: `mesh` (every other bgp node), or peers `[name=]address:AS,…` (the rack's
    /// router, a route reflector), unless the Node's annotation flatnet.dev/bgp-peers
    /// says otherwise.
    #[arg(long, default_value = "mesh", value_parser = flatnet_model::bgp::parse_peering)]
    bgp_peers: flatnet_model::bgp::Peering,
    /// bgp: hold time in seconds (keepalives every third of it); a peer silent this long
    /// loses its routes.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u16).range(3..))]
    bgp_hold_time: u16,
    #[arg(long, default_value_t = 1)]
    vni: u32,
    /// VXLAN UDP port: 8472 (Linux, Flannel) or 4789 (IANA).
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,
    /// The interface that joins the nodes (default: the one holding the Node's InternalIP).
    #[arg(long)]
    iface: Option<String>,
    /// The cluster's pod CIDR; pod traffic leaving it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// The Service CIDR (ClusterIPs); traffic to an address in it that no Service port
    /// has is refused.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::Ipv4Net,
    /// Where to write the node's subnet for the CNI plugin.
    #[arg(long, default_value = flatnet_model::subnet_file::DEFAULT_PATH)]
    subnet_file: PathBuf,
    /// Where the CNI plugin registers new pods, so that each starts with its
    /// NetworkPolicy already in force ("none" to take no registrations).
    #[arg(long, default_value = flatnet_model::cni::config::DEFAULT_AGENT_SOCKET)]
    policy_socket: PathBuf,
    /// Where to serve Prometheus metrics (`/metrics`) and health (`/healthz`); "none"
    /// to serve nothing.
    #[arg(long, default_value = flatnet_agent::config::DEFAULT_METRICS_ADDR)]
    metrics_addr: String,
    /// Who carries Services on this node: flatnet (the agent, on nftables) or none (another
    /// proxy such as kube-proxy does; the agent still connects nodes and enforces policy).
    #[arg(long, default_value = "flatnet", value_parser = ["flatnet", "none"])]
    service_proxy: String,
    /// The pods' MTU: `auto` (the underlay's, less 50 bytes with VXLAN) or a number no
    /// larger than that.
    #[arg(long, default_value = "auto", value_parser = parse_mtu)]
    mtu: Mtu,
    /// Where the host's /proc/sys is (in a container, the host's mounted writable).
    #[arg(long, default_value = "/proc/sys")]
    host_proc_sys: PathBuf,
}

/// `--mtu`: `auto` (None) or a number.
#[derive(Debug, Clone, Copy)]
struct Mtu(Option<u32>);

fn parse_mtu(s: &str) -> Result<Mtu, String> {
    match s {
        "auto" | "" => Ok(Mtu(None)),
        n => n.parse().map(|m| Mtu(Some(m))).map_err(|_| format!("{n:?}: an MTU is `auto` or a number of bytes")),
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging();
    let mut cfg = AgentConfig::new(this_node(args.node_name)?);
    cfg.kubeconfig = args.kubeconfig;
    cfg.backend = args.backend;
    cfg.cross_subnet = args.cross_subnet;
    if cfg.cross_subnet && cfg.backend != Backend::Vxlan {
        anyhow::bail!("--cross-subnet goes with --backend vxlan");
    }
    cfg.bgp = flatnet_model::bgp::NodeBgp { local_as: args.bgp_as, peering: args.bgp_peers };
    cfg.bgp_hold_time = args.bgp_hold_time;
    cfg.vxlan = VxlanSettings { vni: args.vni, port: args.vxlan_port };
    cfg.underlay_iface = args.iface;
    cfg.cluster_cidr = args.cluster_cidr;
    cfg.service_cidr = args.service_cidr;
    cfg.subnet_file = args.subnet_file;
    cfg.service_proxy = args.service_proxy == "flatnet";
    cfg.mtu = args.mtu.0;
    cfg.proc_sys = args.host_proc_sys;
    cfg.metrics_addr = match args.metrics_addr.as_str() {
        "none" => None,
        a => Some(a.parse().map_err(|_| anyhow::anyhow!("--metrics-addr {a:?} is not an address:port (or none)"))?),
    };
    cfg.policy_socket = (args.policy_socket != std::path::Path::new("none")).then_some(args.policy_socket);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).max_blocking_threads(2).enable_all().build()?;
    rt.block_on(async {
        let stop = crate::shutdown::requested()?;
        #[cfg(feature = "heap-profile")]
        let _profile = heap_profile();
        flatnet_agent::run(cfg, stop).await.map_err(anyhow::Error::from)
    })
}

/// A heap profile of this agent (a build with `--features heap-profile`, and
/// `FLATNET_HEAP_PROFILE=DIR` in its environment): dhat follows every allocation from
/// the start for `FLATNET_HEAP_PROFILE_SECS` seconds (default 60, time for a full sync
/// at scale), then writes `DIR/dhat-agent-<pid>.json`, whose peak (t-gmax) shows what
/// held the memory when the agent used the most (view it with dhat's dh_view.html, or
/// `scripts/heap-top`).
#[cfg(feature = "heap-profile")]
fn heap_profile() -> Option<tokio::task::JoinHandle<()>> {
    let dir = std::path::PathBuf::from(std::env::var_os("FLATNET_HEAP_PROFILE")?);
    let secs: u64 = std::env::var("FLATNET_HEAP_PROFILE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let file = dir.join(format!("dhat-agent-{}.json", std::process::id()));
    let profiler = dhat::Profiler::builder().file_name(&file).build();
    tracing::info!("heap profile: writing {} in {secs} s", file.display());
    Some(tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
        drop(profiler);
        tracing::info!("heap profile written to {}", file.display());
    }))
}

/// This node's name in the API: `--node-name`, else $NODE_NAME, else the hostname.
pub fn this_node(flag: Option<String>) -> anyhow::Result<String> {
    match flag.or_else(|| std::env::var("NODE_NAME").ok()) {
        Some(n) => Ok(n),
        None => Ok(nix::unistd::gethostname()?.to_string_lossy().into_owned()),
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours for a person at a terminal; plain text in log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
