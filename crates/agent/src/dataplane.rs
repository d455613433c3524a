//! The kernel side of the agent: read what the node has, diff it against the plan,
//! apply only the difference. Everything it touches is its own: the VXLAN device, the
//! routes carrying flatnet's protocol number, the entries on that device, and the
//! `ip flatnet` nftables table.

use crate::config::AgentConfig;
use flatnet_kernel::route::{FLATNET_BGP_PROTOCOL, FLATNET_PROTOCOL, OwnedRoute};
use flatnet_kernel::{KernelError, Netlink, addr, link, neigh, nft, route, sysctl};
use flatnet_model::node_network::{
    self, Backend, LearnedRoute, Local, NodeNetwork, Peer, RouteDevice, RouteOrigin, Skipped, VXLAN_OVERHEAD,
};
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Something only a person can fix; retried, and shown on the Node.
    #[error("{0}")]
    NeedsPerson(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
}

/// The device that carries traffic between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub addr: Ipv4Net,
    pub mtu: u32,
}

/// Finds the underlay device: the one named, else the one holding `internal_ip`.
pub fn find_underlay(
    nl: &mut Netlink,
    iface: Option<&str>,
    internal_ip: Option<Ipv4Addr>,
) -> Result<Underlay, DataplaneError> {
    let addrs = addr::list(nl, None)?;
    let v4 = |index: u32| {
        addrs.iter().find_map(|(i, a)| match a {
            IpNet::V4(a) if *i == index => Some(*a),
            _ => None,
        })
    };
    let (index, ip) = match (iface, internal_ip) {
        (Some(name), _) => {
            let l = link::get(nl, name)?.ok_or_else(|| {
                DataplaneError::NeedsPerson(format!("underlay interface {name} not found on this node (--iface)"))
            })?;
            let a = v4(l.index)
                .ok_or_else(|| DataplaneError::NeedsPerson(format!("underlay interface {name} has no IPv4 address")))?;
            (l.index, a)
        }
        (None, Some(ip)) => addrs
            .iter()
            .find_map(|(i, a)| match a {
                IpNet::V4(a) if a.addr() == ip => Some((*i, *a)),
                _ => None,
            })
            .ok_or_else(|| {
                DataplaneError::NeedsPerson(format!(
                    "no interface on this node holds the Node's InternalIP {ip}: name the underlay with --iface"
                ))
            })?,
        (None, None) => {
            return Err(DataplaneError::NeedsPerson(
                "the Node has no InternalIP and no --iface was given: cannot tell which interface joins the nodes"
                    .into(),
            ));
        }
    };
    let l = link::get_by_index(nl, index)?
        .ok_or_else(|| DataplaneError::NeedsPerson(format!("underlay interface #{index} vanished")))?;
    Ok(Underlay { index, name: l.name, addr: ip, mtu: l.mtu })
}

/// The smallest pod MTU flatnet configures (IPv4's minimum reassembly size).
const MIN_POD_MTU: u32 = 576;

/// The MTU pods get on this node.
pub fn pod_mtu(backend: Backend, underlay: &Underlay, wanted: Option<u32>) -> Result<u32, DataplaneError> {
    let most = match backend {
        Backend::Vxlan => underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
        Backend::HostGw | Backend::Bgp => underlay.mtu,
    };
    let mtu = wanted.unwrap_or(most);
    if mtu > most {
        return Err(DataplaneError::NeedsPerson(format!(
            "pod MTU {mtu} is more than the underlay {} (MTU {}) carries with {backend}: at most {most} (or leave the MTU setting empty)",
            underlay.name, underlay.mtu
        )));
    }
    if mtu < MIN_POD_MTU {
        return Err(DataplaneError::NeedsPerson(format!(
            "pod MTU {mtu} on the underlay {} (MTU {}) with {backend}: pods need at least {MIN_POD_MTU}",
            underlay.name, underlay.mtu
        )));
    }
    Ok(mtu)
}

/// What a reconcile did, for the log and the status.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: Vec<String>,
    /// Peers (or routes) left out, and why: the plan's reasons, routes in the way, and
    /// kernel refusals for one peer (which do not stop the others).
    pub skipped: Vec<Skipped>,
    pub peers: usize,
}

impl Outcome {
    fn refused(&mut self, what: String, e: KernelError) {
        self.skipped.push(Skipped { node: what, reason: e.to_string() });
    }
}

/// What the BGP sessions know (backend bgp).
#[derive(Debug, Clone, Default)]
pub struct BgpRoutes {
    pub learned: Vec<LearnedRoute>,
    /// Every session has sent its full table (or given up): until then, BGP routes a
    /// previous run left in the kernel stay, so a restart drops no traffic.
    pub synced: bool,
}

/// One pass: make the kernel match the plan for `local` and `nodes`.
pub fn reconcile(
    nl: &mut Netlink,
    cfg: &AgentConfig,
    underlay: &Underlay,
    pod_cidr: Ipv4Net,
    nodes: &[Peer],
    bgp: &BgpRoutes,
) -> Result<Outcome, DataplaneError> {
    let mut out = Outcome::default();
    sysctl::ensure_in(&cfg.proc_sys, "net.ipv4.ip_forward", "1")?;
    // Bridged pod-to-pod replies must pass conntrack to undo a Service's DNAT (the
    // client and the endpoint on one bridge); the setting exists once br_netfilter is loaded.
    if cfg.proc_sys.join("net/bridge/bridge-nf-call-iptables").exists() {
        sysctl::ensure_in(&cfg.proc_sys, "net.bridge.bridge-nf-call-iptables", "1")?;
    }
    let local = Local {
        name: cfg.node_name.clone(),
        backend: cfg.backend,
        underlay: underlay.addr,
        pod_cidr,
        cross_subnet: cfg.cross_subnet,
    };
    let (plan, skipped) = node_network::plan(&local, nodes, &bgp.learned);
    out.skipped = skipped;
    out.peers = plan.routes.len();
    let vxlan_index = match cfg.backend {
        Backend::Vxlan => Some(ensure_vxlan(nl, cfg, underlay, pod_cidr, &mut out.changes)?),
        Backend::HostGw | Backend::Bgp => None,
    };
    remove_stale_devices(nl, cfg, &mut out.changes)?;
    let keep_bgp = cfg.backend == Backend::Bgp && !bgp.synced;
    apply_peers(nl, &plan, underlay.index, vxlan_index, keep_bgp, &mut out)?;
    Ok(out)
}

/// The VXLAN device as configured: created when missing, re-created when its identity
/// (VNI, port, local address, underlay, learning, MAC) differs, MTU and state fixed in place.
fn ensure_vxlan(
    nl: &mut Netlink,
    cfg: &AgentConfig,
    underlay: &Underlay,
    pod_cidr: Ipv4Net,
    changes: &mut Vec<String>,
) -> Result<u32, DataplaneError> {
    let name = cfg.vxlan.device();
    let want = link::Vxlan {
        vni: cfg.vxlan.vni,
        port: cfg.vxlan.port,
        local: Some(underlay.addr.addr()),
        underlay: Some(underlay.index),
        learning: false,
    };
    let mac = cfg.vtep_mac();
    let mtu = pod_mtu(Backend::Vxlan, underlay, cfg.mtu)?;
    let existing = link::get(nl, &name)?;
    let dev = match existing {
        Some(l) if l.vxlan.as_ref() == Some(&want) && l.mac == mac => l,
        other => {
            if other.is_some() {
                link::delete(nl, &name)?;
                changes.push(format!("deleted {name}: its settings differ from the configuration"));
            }
            link::create_vxlan(nl, &name, &want, mac, mtu)?;
            changes.push(format!(
                "created {name} (VNI {}, UDP {}, local {})",
                want.vni,
                want.port,
                underlay.addr.addr()
            ));
            link::get(nl, &name)?
                .ok_or_else(|| DataplaneError::NeedsPerson(format!("{name} vanished after creation")))?
        }
    };
    if dev.mtu != mtu {
        link::set_mtu(nl, dev.index, mtu)?;
        changes.push(format!("set the MTU of {name} to {mtu}"));
    }
    if !dev.up {
        link::set_up(nl, dev.index)?;
        changes.push(format!("brought {name} up"));
    }
    let vtep = Ipv4Net::new(node_network::vtep_ip(pod_cidr), 32).expect("valid prefix");
    let addrs = addr::list(nl, Some(dev.index))?;
    for (_, a) in &addrs {
        if let IpNet::V4(a) = a
            && *a != vtep
        {
            addr::delete_v4(nl, dev.index, a.addr())?;
            changes.push(format!("removed {a} from {name}"));
        }
    }
    if addr::add_v4(nl, dev.index, vtep)? {
        changes.push(format!("added VTEP address {vtep} to {name}"));
    }
    Ok(dev.index)
}

/// VXLAN devices of flatnet's that the configuration no longer names (another VNI, or
/// the host-gw backend).
fn remove_stale_devices(nl: &mut Netlink, cfg: &AgentConfig, changes: &mut Vec<String>) -> Result<(), DataplaneError> {
    let keep = (cfg.backend == Backend::Vxlan).then(|| cfg.vxlan.device());
    for l in link::list(nl)? {
        if l.name.starts_with("flatnet.") && l.vxlan.is_some() && Some(&l.name) != keep.as_ref() {
            link::delete(nl, &l.name)?;
            changes.push(format!("deleted {}: no longer configured", l.name));
        }
    }
    Ok(())
}

/// FDB and neighbour entries first and routes last when adding, the reverse when
/// removing: a route never points at a VTEP the device cannot reach. A route whose
/// destination already has a route flatnet did not make is left out, and a refusal for
/// one entry does not stop the others. With `keep_bgp`, BGP routes already in the
/// kernel are kept until the sessions have synced.
fn apply_peers(
    nl: &mut Netlink,
    plan: &NodeNetwork,
    underlay: u32,
    vxlan: Option<u32>,
    keep_bgp: bool,
    out: &mut Outcome,
) -> Result<(), DataplaneError> {
    let mac = flatnet_model::names::format_mac;
    let (fdb, neighbours) = match vxlan {
        Some(dev) => {
            let actual_fdb: BTreeMap<_, _> = neigh::list_fdb(nl, dev)?.into_iter().collect();
            let fdb = node_network::diff(&plan.fdb, &actual_fdb);
            let neighbours =
                node_network::diff(&plan.neighbours, &neigh::list_permanent(nl, dev)?.into_iter().collect());
            (Some((dev, fdb, actual_fdb)), Some((dev, neighbours)))
        }
        None => (None, None),
    };
    let foreign: std::collections::BTreeSet<Ipv4Net> = route::foreign_destinations(nl)?.into_iter().collect();
    let mut desired_routes: BTreeMap<Ipv4Net, OwnedRoute> = BTreeMap::new();
    for r in plan.routes.values() {
        let oif = match r.device {
            RouteDevice::Vxlan => match vxlan {
                Some(i) => i,
                None => continue,
            },
            RouteDevice::Underlay => underlay,
        };
        if foreign.contains(&r.dst) {
            out.skipped.push(Skipped {
                node: r.dst.to_string(),
                reason: "a route to it exists that flatnet did not make; flatnet leaves it alone (remove it to let flatnet route there)".into(),
            });
            continue;
        }
        let protocol = match r.origin {
            RouteOrigin::Api => FLATNET_PROTOCOL,
            RouteOrigin::Bgp => FLATNET_BGP_PROTOCOL,
        };
        desired_routes.insert(r.dst, OwnedRoute { dst: r.dst, via: r.via, oif, onlink: r.onlink, protocol });
    }
    let actual_routes: BTreeMap<Ipv4Net, OwnedRoute> = route::list_owned(nl)?.into_iter().map(|r| (r.dst, r)).collect();
    if keep_bgp {
        for r in actual_routes.values().filter(|r| r.protocol == FLATNET_BGP_PROTOCOL) {
            desired_routes.entry(r.dst).or_insert(*r);
        }
    }
    let routes = node_network::diff(&desired_routes, &actual_routes);

    if let Some((dev, c, _)) = &fdb {
        for (m, ip) in &c.upsert {
            match neigh::replace_fdb(nl, *dev, *m, *ip) {
                Ok(()) => out.changes.push(format!("FDB {} → {ip}", mac(m))),
                Err(e) => out.refused(format!("FDB {}", mac(m)), e),
            }
        }
    }
    if let Some((dev, c)) = &neighbours {
        for (ip, m) in &c.upsert {
            match neigh::replace(nl, *dev, *ip, *m) {
                Ok(()) => out.changes.push(format!("neighbour {ip} → {}", mac(m))),
                Err(e) => out.refused(format!("neighbour {ip}"), e),
            }
        }
    }
    for (_, r) in &routes.upsert {
        match route::replace_owned(nl, r) {
            Ok(()) => {
                out.changes.push(format!("route {} via {}{}", r.dst, r.via, if r.onlink { " onlink" } else { "" }))
            }
            Err(e) => out.refused(format!("route {}", r.dst), e),
        }
    }
    for dst in &routes.remove {
        let Some(r) = actual_routes.get(dst) else { continue };
        match route::delete_owned(nl, *dst, r.protocol) {
            Ok(_) => out.changes.push(format!("removed route {dst}")),
            Err(e) => out.refused(format!("route {dst}"), e),
        }
    }
    if let Some((dev, c)) = &neighbours {
        for ip in &c.remove {
            match neigh::delete(nl, *dev, *ip) {
                Ok(_) => out.changes.push(format!("removed neighbour {ip}")),
                Err(e) => out.refused(format!("neighbour {ip}"), e),
            }
        }
    }
    // An FDB entry is deleted by MAC and the remote it points at, as the kernel has it.
    if let Some((dev, c, actual)) = &fdb {
        for m in &c.remove {
            if let Some(ip) = actual.get(m) {
                match neigh::delete_fdb(nl, *dev, *m, *ip) {
                    Ok(_) => out.changes.push(format!("removed FDB {}", mac(m))),
                    Err(e) => out.refused(format!("FDB {}", mac(m)), e),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay(mtu: u32) -> Underlay {
        Underlay { index: 2, name: "eth0".into(), addr: "192.168.1.11/24".parse().unwrap(), mtu }
    }

    #[test]
    fn the_pod_mtu_is_the_underlays_less_vxlan_unless_a_smaller_one_is_set() {
        assert_eq!(pod_mtu(Backend::Vxlan, &underlay(1500), None).unwrap(), 1450);
        assert_eq!(pod_mtu(Backend::HostGw, &underlay(9000), None).unwrap(), 9000);
        assert_eq!(pod_mtu(Backend::Vxlan, &underlay(1500), Some(1400)).unwrap(), 1400);
        let too_big = pod_mtu(Backend::Vxlan, &underlay(1500), Some(1500)).unwrap_err().to_string();
        assert!(too_big.contains("at most 1450"), "{too_big}");
        let too_small = pod_mtu(Backend::Bgp, &underlay(1500), Some(500)).unwrap_err().to_string();
        assert!(too_small.contains("at least 576"), "{too_small}");
    }
}
