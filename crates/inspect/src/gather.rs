//! Reads what a trace needs from the kernel, inside each namespace: a node's devices,
//! routes, neighbour and FDB entries, the kernel's own route lookups for the packet, and
//! flatnet's two nftables tables; a pod's eth0 and routes.

use flatnet_kernel::{Netlink, addr, link, neigh, netns, nft, route, sysctl};
use flatnet_model::trace::{
    Fdb, LinkFacts, Lookup, LookupKey, Neighbour, NodeFacts, PodFacts, RouteFacts, VxlanFacts, nft as tnft,
};
use ipnet::IpNet;
use nftables::types::NfFamily;
use std::net::Ipv4Addr;
use std::path::Path;

pub fn links(nl: &mut Netlink) -> anyhow::Result<Vec<LinkFacts>> {
    let addrs = addr::list(nl, None)?;
    Ok(link::list(nl)?
        .into_iter()
        .map(|l| LinkFacts {
            index: l.index,
            name: l.name,
            kind: l.kind,
            mtu: l.mtu,
            up: l.up,
            master: l.master,
            mac: l.mac.as_slice().try_into().ok(),
            peer: l.link,
            addrs: addrs
                .iter()
                .filter(|(i, _)| *i == l.index)
                .filter_map(|(_, a)| match a {
                    IpNet::V4(n) => Some(*n),
                    IpNet::V6(_) => None,
                })
                .collect(),
            vxlan: l.vxlan.map(|v| VxlanFacts { vni: v.vni, port: v.port, local: v.local, underlay: v.underlay }),
        })
        .collect())
}

pub fn routes(nl: &mut Netlink) -> anyhow::Result<Vec<RouteFacts>> {
    Ok(route::list_v4(nl)?
        .into_iter()
        .filter_map(|r| match r.dst {
            IpNet::V4(dst) => Some(RouteFacts {
                dst,
                gateway: r.gateway.and_then(|g| match g {
                    std::net::IpAddr::V4(g) => Some(g),
                    std::net::IpAddr::V6(_) => None,
                }),
                oif: r.oif,
            }),
            IpNet::V6(_) => None,
        })
        .collect())
}

/// Every neighbour entry, and the FDB entries of each VXLAN device.
pub fn neighbours(nl: &mut Netlink, links: &[LinkFacts]) -> anyhow::Result<(Vec<Neighbour>, Vec<Fdb>)> {
    let neighbours = neigh::list_all(nl)?
        .into_iter()
        .map(|n| Neighbour { ifindex: n.ifindex, ip: n.ip, mac: n.mac, state: n.state })
        .collect();
    let mut fdb = Vec::new();
    for l in links.iter().filter(|l| l.vxlan.is_some()) {
        fdb.extend(neigh::list_fdb(nl, l.index)?.into_iter().map(|(mac, dst)| Fdb { ifindex: l.index, mac, dst }));
    }
    Ok((neighbours, fdb))
}

fn table(name: &str) -> anyhow::Result<Option<tnft::Table>> {
    Ok(nft::list_table(NfFamily::IP, name)?.map(|l| tnft::Table::from_listing(&l, name)))
}

/// The destinations a packet from `src` to `dst` may end at on this node: `dst`, and
/// every endpoint a Service chain here DNATs it to.
pub fn candidates(proxy: Option<&tnft::Table>, dst: Ipv4Addr) -> Vec<Ipv4Addr> {
    let mut out = vec![dst];
    for rules in proxy.iter().flat_map(|t| t.chains.values()) {
        for r in rules {
            for e in &r.expr {
                if let Some(ip) = e.get("dnat").and_then(|d| d["addr"].as_str()).and_then(|a| a.parse().ok())
                    && !out.contains(&ip)
                {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// One node's facts, read in the calling thread's namespace, for a packet from `src` to
/// `dst`.
pub fn node(name: &str, underlay_ip: Option<Ipv4Addr>, src: Ipv4Addr, dst: Ipv4Addr) -> anyhow::Result<NodeFacts> {
    let mut nl = Netlink::open()?;
    let mut f = NodeFacts { name: name.into(), underlay_ip, ..Default::default() };
    f.links = links(&mut nl)?;
    f.routes = routes(&mut nl)?;
    f.forwarding = sysctl::read("net.ipv4.ip_forward").ok().map(|v| v == "1");
    (f.neighbours, f.fdb) = neighbours(&mut nl, &f.links)?;
    f.proxy = table(flatnet_model::proxy::TABLE)?;
    f.policy = table(flatnet_model::policy::TABLE)?;
    f.bgp_routes = crate::agent_api::bgp_routes(flatnet_agent::config::DEFAULT_METRICS_ADDR.parse().expect("literal"));
    // The kernel's own answers: from the pod, the tunnel or the underlay, to each place
    // the packet may end; and the outer packet to each VXLAN peer.
    let bridge = f.links.iter().filter(|l| l.kind.as_deref() == Some("bridge")).map(|l| l.index);
    let vxlan = f.links.iter().filter(|l| l.vxlan.is_some()).map(|l| l.index);
    let under =
        f.links.iter().filter(|l| underlay_ip.is_some_and(|u| l.addrs.iter().any(|a| a.addr() == u))).map(|l| l.index);
    let iifs: Vec<u32> = bridge.chain(vxlan).chain(under).collect();
    // Every place the packet may end: `dst`, or an endpoint a Service chain DNATs it to.
    let ends = candidates(f.proxy.as_ref(), dst);
    let mut keys: Vec<LookupKey> = Vec::new();
    for d in &ends {
        keys.extend(iifs.iter().map(|i| (Some(src), *d, Some(*i))));
    }
    keys.extend(f.fdb.iter().map(|e| (None, e.dst, None)));
    for key in keys {
        let (s, d, i) = key;
        if let Ok(l) = route::get_v4(&mut nl, d, s, i) {
            f.lookups.push((key, Lookup { kind: l.kind, oif: l.oif, gateway: l.gateway, prefsrc: l.prefsrc }));
        }
    }
    // The bridge ports of the source and of those ends (pods' MACs derive from their IPs).
    let macs: Vec<[u8; 6]> = ends.iter().chain([&src]).map(|ip| flatnet_model::names::pod_mac(*ip)).collect();
    for b in f.links.iter().filter(|l| l.kind.as_deref() == Some("bridge")) {
        f.bridge_ports.extend(neigh::bridge_ports(&mut nl, b.index)?.into_iter().filter(|(m, _)| macs.contains(m)));
    }
    Ok(f)
}

/// A pod's eth0 and routes, read inside its namespace.
pub fn pod_kernel(pod: &mut PodFacts, path: &Path) -> anyhow::Result<()> {
    let (eth0, routes) = netns::run_in(path, || -> anyhow::Result<_> {
        let mut nl = Netlink::open()?;
        let links = links(&mut nl)?;
        Ok((links.into_iter().find(|l| l.name == "eth0"), routes(&mut nl)?))
    })??;
    pod.eth0 = eth0;
    pod.routes = routes;
    Ok(())
}

/// The namespace under one of `dirs` whose eth0 holds `ip` (how a pod's namespace is
/// found on a real node: runtimes pin them under /run/netns).
pub fn find_netns(dirs: &[&Path], ip: Ipv4Addr) -> Option<std::path::PathBuf> {
    for dir in dirs {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            let holds = netns::run_in(&path, || -> Option<bool> {
                let mut nl = Netlink::open().ok()?;
                Some(addr::list(&mut nl, None).ok()?.iter().any(|(_, a)| a.addr() == std::net::IpAddr::V4(ip)))
            });
            if matches!(holds, Ok(Some(true))) {
                return Some(path);
            }
        }
    }
    None
}

/// A router's facts, read in the calling thread's namespace (its addresses) and from its
/// BIRD control socket (its chosen routes).
pub fn router(
    name: &str,
    birdc: &std::path::Path,
    socket: &std::path::Path,
) -> anyhow::Result<flatnet_model::trace::RouterFacts> {
    let mut nl = Netlink::open()?;
    let addrs = links(&mut nl)?.iter().flat_map(|l| l.addrs.iter().map(|a| a.addr())).collect();
    let out = std::process::Command::new(birdc)
        .arg("-s")
        .arg(socket)
        .args(["show", "route", "all"])
        .output()
        .map_err(|e| anyhow::anyhow!("run {}: {e}", birdc.display()))?;
    let routes = flatnet_model::trace::parse_bird_routes(&String::from_utf8_lossy(&out.stdout));
    Ok(flatnet_model::trace::RouterFacts { name: name.into(), addrs, routes })
}

/// The lab's rack routers (none on a lab of one segment, or without BIRD's client).
pub fn lab_routers(layout: &flatnet_lab::layout::Layout) -> Vec<flatnet_model::trace::RouterFacts> {
    let racks = flatnet_lab::lifecycle::settings::read(layout).map_or(1, |s| s.racks);
    let Ok(birdc) = flatnet_lab::racks::birdc_binary() else { return Vec::new() };
    if racks < 2 {
        return Vec::new();
    }
    (1..=racks)
        .filter_map(|rack| {
            let name = flatnet_lab::racks::router_name(rack);
            let sock = layout.router_dir(rack).join("bird.ctl");
            netns::run_in(&layout.router_ns(rack), || router(&name, &birdc, &sock)).ok()?.ok()
        })
        .collect()
}
