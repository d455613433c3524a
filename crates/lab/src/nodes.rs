//! The lab's nodes: each a network namespace whose `eth0` is plugged into the underlay
//! bridge, with an address on 192.168.1.0/24 and a default route via the control plane's
//! address (so pod traffic leaving the cluster has somewhere to go, masqueraded).

use crate::underlay;
use flatnet_kernel::netns::{self, NetNs};
use flatnet_kernel::{KernelError, Netlink, addr, link, route};
use flatnet_model::names::derived_mac;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

pub fn name(i: usize) -> String {
    format!("node-{i}")
}

/// node-1 is 192.168.1.11, node-2 .12, …
pub fn ip(i: usize) -> Ipv4Addr {
    let last = u8::try_from(10 + i).expect("at most 200 lab nodes");
    Ipv4Addr::new(192, 168, 1, last)
}

/// The most nodes the underlay /24 has room for.
pub const MAX_NODES: usize = 200;

fn gone(op: &str) -> KernelError {
    KernelError::Decode { op: op.into(), msg: "the device vanished right after creation".into() }
}

/// Creates node `name` pinned at `node_ns`, wired to the underlay pinned at `underlay_ns`.
/// Idempotent: what already exists is kept.
pub fn create(underlay_ns: &Path, node_ns: &Path, name: &str, ip: Ipv4Addr) -> Result<(), KernelError> {
    if !NetNs::open(node_ns).is_ok_and(|n| n.is_netns()) {
        netns::create_named(node_ns)?;
    }
    let node = NetNs::open(node_ns).map_err(|e| KernelError::refused(format!("open {}", node_ns.display()), e))?;
    // The underlay end is named after the node, so `ip -n … link` on the underlay reads well.
    netns::run_in(underlay_ns, || -> Result<(), KernelError> {
        let mut nl = Netlink::open()?;
        if link::get(&mut nl, name)?.is_some() {
            return Ok(());
        }
        let bridge = link::get(&mut nl, underlay::BRIDGE)?.ok_or_else(|| gone("find lab0"))?;
        link::create_veth(
            &mut nl,
            &link::VethPair {
                host_name: name,
                host_mac: derived_mac(&format!("underlay/{name}")),
                master: Some(bridge.index),
                peer_name: "eth0",
                peer_mac: derived_mac(&format!("{name}/eth0")),
                peer_netns: node.file().as_fd(),
                mtu: 1500,
            },
        )
    })??;
    netns::run_in(node_ns, || -> Result<(), KernelError> {
        let mut nl = Netlink::open()?;
        link::set_up(&mut nl, 1)?;
        let eth0 = link::get(&mut nl, "eth0")?.ok_or_else(|| gone("find eth0"))?;
        addr::add_v4(&mut nl, eth0.index, Ipv4Net::new(ip, underlay::network().prefix_len()).expect("valid"))?;
        link::set_up(&mut nl, eth0.index)?;
        route::add_v4(
            &mut nl,
            "0.0.0.0/0".parse().expect("literal"),
            Some(underlay::control_plane_ip()),
            eth0.index,
            None,
        )?;
        Ok(())
    })?
}
