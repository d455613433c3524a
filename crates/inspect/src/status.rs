//! A node's status, for `flatnet status` (this node) and each node of `flatnet lab
//! status`: the agent's own account (`/status`: pod CIDR, peers, pods, each reconciler's
//! last sync and error) next to what the kernel has (devices, each peer's tunnel, the
//! ruleset's size).

use crate::agent_api::get_status;
use flatnet_agent::status::Snapshot;
use flatnet_kernel::probe::{Answer, Kind, Prober};
use flatnet_kernel::{Netlink, netns, nft};
use flatnet_model::node_network::vtep_ip;
use nftables::types::NfFamily;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Tunnel {
    pub peer: String,
    pub underlay_ip: Option<String>,
    pub routed: bool,
    pub reason: Option<String>,
    /// The peer's VTEP answered a ping through the tunnel, in this many ms.
    pub answered_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Table {
    pub table: String,
    pub chains: usize,
    pub rules: usize,
    pub elements: usize,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub agent: Result<Snapshot, String>,
    pub devices: Vec<String>,
    pub tunnels: Vec<Tunnel>,
    pub ruleset: Vec<Table>,
}

fn table_size(name: &str) -> Option<Table> {
    let listing = nft::list_table(NfFamily::IP, name).ok()??;
    let objs = listing["nftables"].as_array()?;
    let count = |k: &str| objs.iter().filter(|o| o.get(k).is_some()).count();
    let elements = objs
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .map(|s| s["elem"].as_array().map_or(0, Vec::len))
        .sum();
    Some(Table { table: format!("ip {name}"), chains: count("chain"), rules: count("rule"), elements })
}

/// Whether `peer_vtep` answers a ping from `local` through the tunnel, and how fast.
pub fn ping(ns: &Path, local: std::net::Ipv4Addr, peer_vtep: std::net::Ipv4Addr, timeout: Duration) -> Option<f64> {
    let t = Instant::now();
    match Prober::open(ns, local, Kind::Icmp).ok()?.send(peer_vtep, 0, timeout) {
        Answer::Answered(_) => Some(t.elapsed().as_secs_f64() * 1e3),
        _ => None,
    }
}

/// The node's status, read in the namespace at `ns` (its agent answers on its loopback).
pub fn read(ns: &Path, metrics: SocketAddr) -> anyhow::Result<NodeStatus> {
    netns::run_in(ns, || -> anyhow::Result<NodeStatus> {
        let agent = get_status(metrics);
        let mut nl = Netlink::open()?;
        let links = crate::gather::links(&mut nl)?;
        let devices = links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("bridge") || l.vxlan.is_some())
            .map(|l| {
                let mut s = format!("{} {} mtu {}", l.name, if l.up { "UP" } else { "DOWN" }, l.mtu);
                if let Some(v) = l.vxlan {
                    s.push_str(&format!(" VNI {} UDP {}", v.vni, v.port));
                }
                for a in &l.addrs {
                    s.push_str(&format!(" {a}"));
                }
                s
            })
            .collect();
        let mut tunnels = Vec::new();
        if let Ok(snap) = &agent {
            let local = snap.pod_cidr.as_deref().and_then(|c| c.parse().ok()).map(vtep_ip);
            for p in &snap.peers {
                let peer_vtep = p.pod_cidr.as_deref().and_then(|c| c.parse().ok()).map(vtep_ip);
                let answered_ms = match (snap.backend.as_str(), local, peer_vtep) {
                    ("vxlan", Some(l), Some(r)) => ping(ns, l, r, Duration::from_millis(500)),
                    _ => None,
                };
                tunnels.push(Tunnel {
                    peer: p.name.clone(),
                    underlay_ip: p.underlay_ip.clone(),
                    routed: p.routed,
                    reason: p.reason.clone(),
                    answered_ms,
                });
            }
        }
        let ruleset =
            [flatnet_model::proxy::TABLE, flatnet_model::policy::TABLE].iter().filter_map(|t| table_size(t)).collect();
        Ok(NodeStatus { agent, devices, tunnels, ruleset })
    })?
}
