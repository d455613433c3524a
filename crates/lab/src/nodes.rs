//! The lab's nodes: each a network namespace whose `eth0` is plugged into its segment's
//! underlay bridge, with an address there and a default route (via the control plane's
//! address, or the rack's router), so pod traffic leaving the cluster has somewhere to
//! go, masqueraded.

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

/// The most nodes the underlay /24 has room for.
pub const MAX_NODES: usize = 200;

fn gone(op: &str) -> KernelError {
    KernelError::Decode { op: op.into(), msg: "the device vanished right after creation".into() }
}

/// Where a node plugs in: the underlay bridge of its segment, its address there, and
/// its default gateway.
pub struct Wiring<'a> {
    pub bridge: &'a str,
    pub addr: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Creates node `name` pinned at `node_ns`, wired to the underlay pinned at `underlay_ns`.
/// Idempotent: what already exists is kept.
pub fn create(underlay_ns: &Path, node_ns: &Path, name: &str, wiring: &Wiring<'_>) -> Result<(), KernelError> {
    attach(underlay_ns, node_ns, name, wiring.bridge, "eth0")?;
    netns::run_in(node_ns, || -> Result<(), KernelError> {
        let mut nl = Netlink::open()?;
        link::set_up(&mut nl, 1)?;
        let eth0 = link::get(&mut nl, "eth0")?.ok_or_else(|| gone("find eth0"))?;
        addr::add_v4(&mut nl, eth0.index, wiring.addr)?;
        link::set_up(&mut nl, eth0.index)?;
        route::add_v4(&mut nl, "0.0.0.0/0".parse().expect("literal"), Some(wiring.gateway), eth0.index, None)?;
        Ok(())
    })?
}

/// Plugs namespace `ns` into underlay bridge `bridge` with a veth pair: `port` on the
/// bridge side (named after what it connects, so `ip -n … link` on the underlay reads
/// well), `inner` inside. Idempotent.
pub fn attach(underlay_ns: &Path, ns: &Path, port: &str, bridge: &str, inner: &str) -> Result<(), KernelError> {
    if !NetNs::open(ns).is_ok_and(|n| n.is_netns()) {
        netns::create_named(ns)?;
    }
    let target = NetNs::open(ns).map_err(|e| KernelError::refused(format!("open {}", ns.display()), e))?;
    netns::run_in(underlay_ns, || -> Result<(), KernelError> {
        let mut nl = Netlink::open()?;
        if link::get(&mut nl, port)?.is_some() {
            return Ok(());
        }
        let br = link::get(&mut nl, bridge)?.ok_or_else(|| gone(&format!("find {bridge}")))?;
        link::create_veth(
            &mut nl,
            &link::VethPair {
                host_name: port,
                host_mac: derived_mac(&format!("underlay/{port}")),
                master: Some(br.index),
                peer_name: inner,
                peer_mac: derived_mac(&format!("{port}/{inner}")),
                peer_netns: target.file().as_fd(),
                mtu: 1500,
            },
        )
    })?
}
