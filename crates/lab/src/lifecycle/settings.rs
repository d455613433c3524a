//! What `lab up` chose, kept in the state directory for `status`, `demo` and a second
//! `up`.

use crate::layout::Layout;
use std::net::SocketAddr;

/// Where the lab keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flatnet/lab";

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Settings {
    pub backend: String,
    pub nodes: usize,
    pub listen: SocketAddr,
    /// Nodes whose Services kube-proxy carries.
    #[serde(default)]
    pub kube_proxy: Vec<String>,
    /// The pod network (flatnet unless a benchmark asked for Flannel).
    #[serde(default)]
    pub network: crate::pod_network::PodNetwork,
    /// How many racks (1: one flat segment).
    #[serde(default = "one")]
    pub racks: usize,
    /// VXLAN only across subnets.
    #[serde(default)]
    pub cross_subnet: bool,
    /// The embedded API server, or the upstream components.
    #[serde(default)]
    pub control_plane: crate::kubernetes::ControlPlane,
}

fn one() -> usize {
    1
}

/// The settings of the lab at `layout`, when it has been brought up.
pub fn read(layout: &Layout) -> Option<Settings> {
    serde_json::from_str(&std::fs::read_to_string(layout.settings()).ok()?).ok()
}
