//! Which subnet this node's pods take their addresses from: the config's `subnet`, or
//! the node subnet file the agent writes.

use flatnet_model::cni::config::SubnetSource;
use flatnet_model::cni::{CniError, ErrorCode, NetConf};
use flatnet_model::ipam::AddressPool;
use flatnet_model::subnet_file::NodeSubnet;

pub struct NodeNetwork {
    pub pool: AddressPool,
    /// MTU the agent chose for pods, if it wrote one.
    pub mtu: Option<u32>,
}

pub fn resolve(conf: &NetConf) -> Result<NodeNetwork, CniError> {
    let (subnet, mtu) = match &conf.subnet {
        SubnetSource::Config(net) => (*net, None),
        SubnetSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CniError::new(
                    ErrorCode::TryAgainLater,
                    format!("this node's subnet is not known yet: cannot read {path}"),
                    format!("{e}; the flatnet agent writes it once the node has a Pod CIDR, or set \"subnet\" in the network config"),
                )
            })?;
            let node = NodeSubnet::parse(&text).map_err(|e| {
                CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("node subnet file {path} is malformed"),
                    e.to_string(),
                )
            })?;
            (node.subnet, node.mtu)
        }
    };
    let pool = match conf.gateway {
        Some(gw) => AddressPool::with_gateway(subnet, gw),
        None => AddressPool::new(subnet),
    }
    .map_err(|e| CniError::new(ErrorCode::InvalidNetworkConfig, e.to_string(), ""))?;
    Ok(NodeNetwork { pool, mtu })
}
