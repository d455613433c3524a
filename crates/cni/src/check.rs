//! CHECK: the attachment is still as ADD left it. Compares the prevResult with the live
//! kernel state and the IPAM store, and names the first thing that differs.

use crate::add::open_netns;
use crate::del::{attachment, kernel_error, store_error};
use crate::store::Store;
use flatnet_kernel::netns::NetNsGuard;
use flatnet_kernel::{Netlink, addr, link, route};
use flatnet_model::cni::{CniError, ErrorCode, Invocation, NetConf};
use flatnet_model::names::{format_mac, host_veth_name};
use ipnet::IpNet;
use std::path::Path;

pub fn check(conf: &NetConf, inv: &Invocation) -> Result<(), CniError> {
    let (cid, ifname) = attachment(inv);
    let netns_path = inv.netns.as_deref().unwrap_or_default();
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK needs prevResult", "the runtime passes the result of ADD")
    })?;
    let mismatch =
        |what: String| Err(CniError::plugin(what, format!("attachment {cid}/{ifname}: run DEL and ADD again")));

    let (index, want) = prev
        .sandbox_interface(ifname)
        .ok_or_else(|| CniError::plugin(format!("prevResult has no interface {ifname} inside a sandbox"), ""))?;
    if want.sandbox.as_deref() != Some(netns_path) {
        return mismatch(format!(
            "prevResult puts {ifname} in {}, but CNI_NETNS is {netns_path}",
            want.sandbox.as_deref().unwrap_or("no sandbox")
        ));
    }
    let want_ips: Vec<IpNet> =
        prev.ips.iter().filter(|ip| ip.interface.is_none_or(|i| i == index)).map(|ip| ip.address).collect();

    // The address is still ours in the store.
    let store = Store::new(Path::new(&conf.data_dir), &conf.name);
    let reserved = match store.lock_existing().map_err(store_error)? {
        Some(l) => l.lookup(cid, ifname).map_err(store_error)?,
        None => None,
    };
    let Some(reserved) = reserved else {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("no address is reserved for {cid}/{ifname}"),
            "the attachment was never added, or was deleted",
        ));
    };
    if !want_ips.iter().any(|n| n.addr() == reserved) {
        return mismatch(format!("the store reserves {reserved} for this attachment, prevResult says {want_ips:?}"));
    }

    // Host side: the veth is on the bridge.
    let mut host = Netlink::open().map_err(kernel_error)?;
    let bridge = link::get(&mut host, &conf.bridge).map_err(kernel_error)?;
    let Some(bridge) = bridge else {
        return mismatch(format!("bridge {} is missing", conf.bridge));
    };
    let host_name = host_veth_name(cid, ifname);
    match link::get(&mut host, &host_name).map_err(kernel_error)? {
        None => return mismatch(format!("host veth {host_name} is missing")),
        Some(l) if l.master != Some(bridge.index) => {
            return mismatch(format!("host veth {host_name} is not attached to {}", conf.bridge));
        }
        Some(_) => {}
    }

    // Pod side: interface, addresses, routes.
    let netns = open_netns(netns_path)?;
    let mut pod = {
        let _inside = NetNsGuard::enter(&netns).map_err(kernel_error)?;
        Netlink::open().map_err(kernel_error)?
    };
    let Some(eth) = link::get(&mut pod, ifname).map_err(kernel_error)? else {
        return mismatch(format!("interface {ifname} is missing in {netns_path}"));
    };
    if !want.mac.is_empty() && !format_mac(&eth.mac).eq_ignore_ascii_case(&want.mac) {
        return mismatch(format!("{ifname} has MAC {}, prevResult says {}", format_mac(&eth.mac), want.mac));
    }
    if !eth.up {
        return mismatch(format!("{ifname} is down"));
    }
    if let Some(mtu) = want.mtu
        && eth.mtu != mtu
    {
        return mismatch(format!("{ifname} has MTU {}, prevResult says {mtu}", eth.mtu));
    }
    let have: Vec<IpNet> =
        addr::list(&mut pod, Some(eth.index)).map_err(kernel_error)?.into_iter().map(|(_, a)| a).collect();
    for want in &want_ips {
        if !have.contains(want) {
            return mismatch(format!("{ifname} does not have address {want} (it has {have:?})"));
        }
    }
    // Only the routes flatnet itself adds (the default route via the gateway and the
    // config's routes), on this interface: a later plugin in the chain may have changed
    // the rest, and the spec has CHECK allow for that.
    let gateway = want_ips
        .first()
        .and_then(|_| prev.ips.iter().find(|ip| ip.interface.is_none_or(|i| i == index)).and_then(|ip| ip.gateway));
    let ours = std::iter::once(("0.0.0.0/0".parse::<IpNet>().expect("literal"), gateway))
        .chain(conf.routes.iter().map(|r| (r.dst.trunc(), r.gw.or(gateway))));
    let routes = route::list_v4(&mut pod).map_err(kernel_error)?;
    for (dst, gw) in ours {
        let found =
            routes.iter().any(|r| r.dst == dst && r.oif == Some(eth.index) && (gw.is_none() || r.gateway == gw));
        if !found {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return mismatch(format!("route {dst}{via} is missing in {netns_path}"));
        }
    }
    Ok(())
}
