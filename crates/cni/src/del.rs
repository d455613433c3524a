//! DEL: take the pod off the network and release its address. Succeeds when any of it
//! is already gone: the netns, the link, or the whole attachment.
//!
//! The address is withdrawn from the pod's interface first, so the pod cannot use it
//! once it is released. Deleting the veth itself costs the kernel 20–40 ms of RCU grace
//! periods and nothing waits on it any more, so DEL marks it for teardown and a detached
//! child deletes every marked device in one go; GC and a repeated ADD finish the job
//! should that child die. Without the pod's namespace to withdraw
//! the address from, DEL deletes the veth inline before releasing.

use crate::store::Store;
use flatnet_kernel::netns::{NetNs, NetNsGuard};
use flatnet_kernel::{Netlink, addr, detach, link};
use flatnet_model::cni::{CniError, ErrorCode, Invocation, TeardownConf};
use flatnet_model::names::host_veth_name;
use std::net::Ipv4Addr;
use std::path::Path;

pub fn del(conf: &TeardownConf, inv: &Invocation) -> Result<(), CniError> {
    let (cid, ifname) = attachment(inv);
    let host_name = host_veth_name(cid, ifname);
    let data_dir = Path::new(&conf.data_dir);
    let store = Store::new(data_dir, &conf.name);
    // The lock is held only around store access, not across the kernel work, so
    // concurrent DELs do not queue behind each other's namespaces.
    let reserved = match store.lock_existing().map_err(store_error)? {
        Some(l) => l.lookup(cid, ifname).map_err(store_error)?,
        None => None,
    };
    let pod_is_off = match reserved {
        None => true, // nothing to hand out again
        Some(ip) => withdraw_address(inv.netns.as_deref(), ifname, ip)?,
    };
    let mut nl = Netlink::open().map_err(kernel_error)?;
    if !pod_is_off {
        link::delete(&mut nl, &host_name).map_err(kernel_error)?;
    }
    if reserved.is_some()
        && let Some(l) = store.lock_existing().map_err(store_error)?
    {
        l.release(cid, ifname).map_err(store_error)?;
    }
    if pod_is_off {
        if !data_dir.is_dir() {
            // No store, so no place for the reaper's lock: an odd case, delete inline.
            link::delete(&mut nl, &host_name).map_err(kernel_error)?;
        } else if link::set_group(&mut nl, &host_name, detach::TEARDOWN_GROUP).map_err(kernel_error)? {
            detach::schedule_teardown(data_dir).map_err(kernel_error)?;
        }
    }
    Ok(())
}

/// Removes `ip` from the pod's interface. True when the pod can no longer use the
/// address (removed now, or the interface or namespace is gone); false when the
/// namespace was not given, so nothing could be checked.
fn withdraw_address(netns: Option<&str>, ifname: &str, ip: Ipv4Addr) -> Result<bool, CniError> {
    let Some(path) = netns else { return Ok(false) };
    let ns = match NetNs::open(path) {
        Ok(ns) if ns.is_netns() => ns,
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(_) => return Ok(false),
    };
    let mut pod = {
        let _inside = NetNsGuard::enter(&ns).map_err(kernel_error)?;
        Netlink::open().map_err(kernel_error)?
    };
    let Some(eth) = link::get(&mut pod, ifname).map_err(kernel_error)? else {
        return Ok(true);
    };
    addr::delete_v4(&mut pod, eth.index, ip).map_err(kernel_error)?;
    Ok(true)
}

pub(crate) fn attachment(inv: &Invocation) -> (&str, &str) {
    // Invocation::from_env guarantees both for ADD, DEL and CHECK.
    (inv.container_id.as_deref().unwrap_or_default(), inv.ifname.as_deref().unwrap_or_default())
}

pub(crate) fn kernel_error(e: flatnet_kernel::KernelError) -> CniError {
    CniError::plugin(e.to_string(), "")
}

pub(crate) fn store_error(e: crate::store::StoreError) -> CniError {
    match e {
        crate::store::StoreError::Io { .. } => {
            CniError::new(ErrorCode::Io, e.to_string(), "check that dataDir exists and is writable by root")
        }
        crate::store::StoreError::Full { .. } => {
            CniError::plugin(e.to_string(), "delete pods on this node, or give the node a larger Pod CIDR")
        }
    }
}
