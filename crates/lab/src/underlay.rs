//! The lab's underlay: a network namespace of its own holding the bridge `lab0` on
//! 192.168.1.0/24, which the nodes' `eth0`s will plug into. The control plane is
//! 192.168.1.1 on it, and listens there (from its process in the host's namespace: a
//! socket keeps the namespace it was opened in), so the host's network is never changed.

use flatnet_kernel::netns::{self, NetNs};
use flatnet_kernel::{KernelError, Netlink, addr, link};
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

pub const BRIDGE: &str = "lab0";

pub fn network() -> Ipv4Net {
    "192.168.1.0/24".parse().expect("literal")
}

/// The control plane's address on the underlay.
pub fn control_plane_ip() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 1)
}

/// Creates the underlay namespace pinned at `path`: loopback up, bridge `lab0` up with
/// the control plane's address. Idempotent.
pub fn create(path: &Path) -> Result<(), KernelError> {
    if !NetNs::open(path).is_ok_and(|n| n.is_netns()) {
        netns::create_named(path)?;
    }
    netns::run_in(path, || -> Result<(), KernelError> {
        let mut nl = Netlink::open()?;
        link::set_up(&mut nl, 1)?;
        if link::get(&mut nl, BRIDGE)?.is_none() {
            link::create_bridge(&mut nl, BRIDGE, flatnet_model::names::derived_mac(BRIDGE), None)?;
        }
        let br = link::get(&mut nl, BRIDGE)?
            .ok_or_else(|| KernelError::Decode { op: "create lab0".into(), msg: "vanished".into() })?;
        addr::add_v4(&mut nl, br.index, Ipv4Net::new(control_plane_ip(), network().prefix_len()).expect("valid"))?;
        Ok(())
    })?
}

/// Removes the underlay namespace (and with it everything plugged into it).
pub fn remove(path: &Path) -> Result<(), KernelError> {
    netns::remove_named(path)
}

/// A listening socket inside the namespace at `path`.
pub fn listen_in(path: &Path, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = netns::run_in(path, || std::net::TcpListener::bind(addr))
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    l.set_nonblocking(true)?;
    Ok(l)
}
