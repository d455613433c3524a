//! ADD: wire a pod to the node bridge. An address from the node subnet, a veth pair
//! (the pod end created directly inside the pod's namespace), the pod's address, routes
//! and MTU, hairpin on the bridge port. A failure part way undoes what this call made.

use crate::del::{attachment, kernel_error, store_error};
use crate::store::Store;
use crate::subnet::{self, NodeNetwork};
use flatnet_kernel::link::{self, VethPair};
use flatnet_kernel::netns::{NetNs, NetNsGuard};
use flatnet_kernel::{Netlink, addr, detach, route, sysctl};
use flatnet_model::cni::{CniError, CniResult, ErrorCode, Interface, Invocation, IpConfig, NetConf, Route};
use flatnet_model::names::{attachment_alias, derived_mac, format_mac, host_veth_name, pod_mac};
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::Path;

pub fn add(conf: &NetConf, inv: &Invocation) -> Result<CniResult, CniError> {
    let (cid, ifname) = attachment(inv);
    let netns_path = inv.netns.as_deref().unwrap_or_default();
    let netns = open_netns(netns_path)?;
    let node = subnet::resolve(conf)?;
    let mut host = Netlink::open().map_err(kernel_error)?;
    let mtu = match conf.mtu.or(node.mtu) {
        Some(m) => m,
        None => default_route_mtu(&mut host),
    };

    let store = Store::new(Path::new(&conf.data_dir), &conf.name);
    let (ip, fresh) = {
        let locked = store.lock().map_err(store_error)?;
        locked.allocate(&node.pool, cid, ifname).map_err(store_error)?
    };
    let pod = PodWiring { conf, cid, ifname, netns_path, netns: &netns, node: &node, ip, mtu };
    let mut made_veth = false;
    let wired = pod.wire(&mut host, &mut made_veth).and_then(|r| {
        crate::register::register(conf, inv, ip)?;
        Ok(r)
    });
    match wired {
        Ok(result) => Ok(result),
        Err(e) => {
            // Undo what this call made, and only that: an existing attachment's veth and
            // reservation stay.
            if made_veth {
                let _ = link::delete(&mut host, &host_veth_name(cid, ifname));
            }
            if fresh && let Ok(locked) = store.lock() {
                let _ = locked.release(cid, ifname);
            }
            Err(e)
        }
    }
}

pub(crate) fn open_netns(path: &str) -> Result<NetNs, CniError> {
    let ns = NetNs::open(path).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS={path:?} cannot be opened"),
            format!("{e}; it must name the pod's network namespace, such as /run/netns/<name> or /proc/<pid>/ns/net"),
        )
    })?;
    if !ns.is_netns() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS={path:?} is not a network namespace"),
            "it must name the pod's network namespace, such as /run/netns/<name> or /proc/<pid>/ns/net",
        ));
    }
    Ok(ns)
}

/// The MTU of the device the host's default route uses, else 1500.
fn default_route_mtu(nl: &mut Netlink) -> u32 {
    let dev = route::list_v4(nl)
        .ok()
        .and_then(|routes| routes.into_iter().find(|r| r.dst.prefix_len() == 0).and_then(|r| r.oif));
    dev.and_then(|i| link::get_by_index(nl, i).ok().flatten()).map(|l| l.mtu).filter(|&m| m >= 576).unwrap_or(1500)
}

struct PodWiring<'a> {
    conf: &'a NetConf,
    cid: &'a str,
    ifname: &'a str,
    netns_path: &'a str,
    netns: &'a NetNs,
    node: &'a NodeNetwork,
    ip: Ipv4Addr,
    mtu: u32,
}

impl PodWiring<'_> {
    fn wire(&self, host: &mut Netlink, made_veth: &mut bool) -> Result<CniResult, CniError> {
        let bridge = ensure_bridge(host, &self.conf.bridge, self.node.pool.gateway_net())?;
        let host_name = host_veth_name(self.cid, self.ifname);
        let host_mac = derived_mac(&host_name);
        let mac = pod_mac(self.ip);
        let pair = VethPair {
            host_name: &host_name,
            host_mac,
            master: Some(bridge.index),
            peer_name: self.ifname,
            peer_mac: mac,
            peer_netns: self.netns.file().as_fd(),
            mtu: self.mtu,
        };
        self.create_pair(host, &pair)?;
        *made_veth = true;
        link::set_bridge_port(
            host,
            &host_name,
            self.conf.hairpin,
            &attachment_alias(&self.conf.name, self.cid, self.ifname),
        )
        .map_err(kernel_error)?;
        sysctl::ensure("net.ipv4.ip_forward", "1").map_err(kernel_error)?;
        let routes = self.configure_pod()?;

        let gateway = self.node.pool.gateway;
        let prefix = self.node.pool.subnet.prefix_len();
        // A plugin earlier in the chain keeps what it reported; ours is appended.
        let mut result = self.conf.prev_result.clone().unwrap_or_default();
        let first = result.interfaces.len();
        result.interfaces.extend([
            Interface { name: self.conf.bridge.clone(), mac: format_mac(&bridge.mac), mtu: None, sandbox: None },
            Interface { name: host_name, mac: format_mac(&host_mac), mtu: Some(self.mtu), sandbox: None },
            Interface {
                name: self.ifname.to_string(),
                mac: format_mac(&mac),
                mtu: Some(self.mtu),
                sandbox: Some(self.netns_path.to_string()),
            },
        ]);
        result.ips.push(IpConfig {
            address: IpNet::V4(Ipv4Net::new(self.ip, prefix).expect("prefix from the pool")),
            gateway: Some(IpAddr::V4(gateway)),
            interface: Some(first + 2),
        });
        result.routes.extend(routes);
        if !self.conf.dns.is_empty() {
            result.dns = self.conf.dns.clone();
        }
        Ok(result)
    }

    /// Creates the veth pair. The spec has ADD fail when the interface already exists;
    /// the one exception is a pair an earlier DEL left for the reaper, which goes now.
    fn create_pair(&self, host: &mut Netlink, pair: &VethPair<'_>) -> Result<(), CniError> {
        let again = match link::create_veth(host, pair) {
            Err(e) if e.is_exists() => match link::get(host, pair.host_name).map_err(kernel_error)? {
                Some(old) if old.group == detach::TEARDOWN_GROUP => {
                    link::delete(host, pair.host_name).map_err(kernel_error)?;
                    link::create_veth(host, pair)
                }
                Some(_) => {
                    return Err(CniError::plugin(
                        format!(
                            "{}/{} is already added: its host end {} exists",
                            self.cid, self.ifname, pair.host_name
                        ),
                        "the CNI spec has ADD fail when the interface exists: run DEL first",
                    ));
                }
                None => Err(e),
            },
            other => other,
        };
        again.map_err(|e| {
            if e.is_exists() {
                CniError::plugin(
                    format!("interface {} already exists in {}", self.ifname, self.netns_path),
                    "another plugin or an earlier ADD left it there: run DEL first, or pick another CNI_IFNAME",
                )
            } else {
                kernel_error(e)
            }
        })
    }

    /// Inside the pod: address, links up, default route and the config's routes.
    fn configure_pod(&self) -> Result<Vec<Route>, CniError> {
        let mut pod = {
            let _inside = NetNsGuard::enter(self.netns).map_err(kernel_error)?;
            Netlink::open().map_err(kernel_error)?
        };
        let eth = link::get(&mut pod, self.ifname).map_err(kernel_error)?.ok_or_else(|| {
            CniError::plugin(format!("{} vanished from {} right after it was made", self.ifname, self.netns_path), "")
        })?;
        let addr = Ipv4Net::new(self.ip, self.node.pool.subnet.prefix_len()).expect("prefix from the pool");
        addr::add_v4(&mut pod, eth.index, addr).map_err(kernel_error)?;
        link::set_up(&mut pod, eth.index).map_err(kernel_error)?;
        link::set_up(&mut pod, 1).map_err(kernel_error)?; // lo is always index 1
        let gw = self.node.pool.gateway;
        let mut routes = vec![Route {
            dst: "0.0.0.0/0".parse().expect("literal"),
            gw: Some(IpAddr::V4(gw)),
            mtu: None,
            priority: None,
        }];
        routes.extend(self.conf.routes.iter().cloned());
        for r in &routes {
            let (IpNet::V4(dst), via) = (r.dst, r.gw.unwrap_or(IpAddr::V4(gw))) else {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("route {} is IPv6; flatnet pods are IPv4-only for now", r.dst),
                    "",
                ));
            };
            let IpAddr::V4(via) = via else {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("route {} has an IPv6 gateway", r.dst),
                    "",
                ));
            };
            route::add_v4(&mut pod, dst, Some(via), eth.index, r.mtu).map_err(kernel_error)?;
        }
        for r in &mut routes {
            r.gw.get_or_insert(IpAddr::V4(gw));
        }
        Ok(routes)
    }
}

/// The node bridge, made on first use: up, with the gateway address and a fixed MAC.
fn ensure_bridge(nl: &mut Netlink, name: &str, gateway: Ipv4Net) -> Result<link::Link, CniError> {
    let bridge = match link::get(nl, name).map_err(kernel_error)? {
        Some(l) => l,
        None => {
            match link::create_bridge(nl, name, derived_mac(name), None) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {} // another ADD made it first
                Err(e) => return Err(kernel_error(e)),
            }
            link::get(nl, name)
                .map_err(kernel_error)?
                .ok_or_else(|| CniError::plugin(format!("bridge {name} vanished right after it was made"), ""))?
        }
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(CniError::plugin(
            format!("{name} exists but is a {} device, not a bridge", bridge.kind.as_deref().unwrap_or("plain")),
            "set \"bridge\" in the network config to another name, or remove the device",
        ));
    }
    if !bridge.up {
        link::set_up(nl, bridge.index).map_err(kernel_error)?;
    }
    addr::add_v4(nl, bridge.index, gateway).map_err(kernel_error)?;
    Ok(bridge)
}
