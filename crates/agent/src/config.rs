//! What the agent is told: who it is, how to reach the API, and how to connect nodes.

use flatnet_model::node_network::{Backend, VxlanSettings};
use ipnet::Ipv4Net;
use std::path::PathBuf;
use std::time::Duration;

/// The agent's metrics address: local only, as a node's own port.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9402";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// A kubeconfig file; None means in-cluster config (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    pub backend: Backend,
    pub vxlan: VxlanSettings,
    /// VXLAN only to peers outside this node's subnet; direct routes inside it.
    pub cross_subnet: bool,
    /// The device that carries traffic between nodes; None means the one holding the
    /// Node's InternalIP.
    pub underlay_iface: Option<String>,
    /// The cluster's pod CIDR: pod traffic leaving it is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// The Service CIDR: traffic to an address in it that no Service port has is refused.
    pub service_cidr: Ipv4Net,
    pub subnet_file: PathBuf,
    /// Where the CNI plugin registers new pods (None: no registrations).
    pub policy_socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics and health (None: nowhere).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How often the kernel is compared with the plan even when the API is quiet.
    pub resync: Duration,
    /// The bgp backend's defaults: the node's AS and peering, unless its Node's
    /// annotations say otherwise.
    pub bgp: flatnet_model::bgp::NodeBgp,
    /// BGP hold time, seconds (keepalives every third of it).
    pub bgp_hold_time: u16,
    /// Where the BGP speaker listens and peers connect (179).
    pub bgp_port: u16,
    /// Whether the agent is the node's Service proxy (false: another one, kube-proxy,
    /// carries Services; the agent still connects nodes and enforces NetworkPolicy).
    pub service_proxy: bool,
    /// The pods' MTU; None: the most the underlay carries with the backend.
    pub mtu: Option<u32>,
    /// Where the host's sysctls are written (/proc/sys, or the host's mounted into a
    /// container).
    pub proc_sys: PathBuf,
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            kubeconfig: None,
            backend: Backend::default(),
            vxlan: VxlanSettings::default(),
            cross_subnet: false,
            underlay_iface: None,
            cluster_cidr: "10.244.0.0/16".parse().expect("literal"),
            service_cidr: "10.96.0.0/12".parse().expect("literal"),
            subnet_file: flatnet_model::subnet_file::DEFAULT_PATH.into(),
            policy_socket: Some(flatnet_model::cni::config::DEFAULT_AGENT_SOCKET.into()),
            metrics_addr: Some(DEFAULT_METRICS_ADDR.parse().expect("literal")),
            resync: Duration::from_secs(1),
            service_proxy: true,
            bgp: flatnet_model::bgp::NodeBgp { local_as: 64512, peering: flatnet_model::bgp::Peering::Mesh },
            bgp_hold_time: 90,
            bgp_port: 179,
            mtu: None,
            proc_sys: "/proc/sys".into(),
        }
    }

    /// The VTEP MAC: derived from the node name, so it is the same after a restart or
    /// a re-creation of the device, and peers' FDB entries stay right.
    pub fn vtep_mac(&self) -> [u8; 6] {
        flatnet_model::names::derived_mac(&format!("{}/{}", self.node_name, self.vxlan.device()))
    }
}
