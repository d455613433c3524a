//! The flatnet node agent: one per node. It list/watches Nodes, publishes what peers
//! need on its own Node, writes the subnet file the CNI plugin reads, and keeps the
//! kernel's routes, VXLAN peers and masquerade equal to the plan, level-triggered: on
//! every change and every second, whatever state it starts from. It is also the node's
//! Service proxy: Services and EndpointSlices become nftables DNAT (see `proxy`), and
//! it enforces NetworkPolicy for its pods (see `policy`).

pub mod bgp;
pub mod config;
pub mod dataplane;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod run;
pub mod status;
pub mod supervise;
pub mod tables;

pub use config::AgentConfig;
pub use run::run;
