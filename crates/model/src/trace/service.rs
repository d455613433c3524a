//! The Service DNAT hop: the proxy's table `ip flatnet` maps a Service address and port
//! to a chain of endpoints; the trace follows the one the kernel chose (or the first).

use super::hop::{Hop, HopKind};
use super::nft::{self, Packet};
use super::world::{NodeFacts, Target, World};
use std::net::Ipv4Addr;

pub(super) fn dnat_hop(w: &World, node: &NodeFacts, at: &str, p: Packet, out: &mut Packet) -> Option<Hop> {
    let proxy = node.proxy.as_ref()?;
    let port = p.port?;
    let key = [nft::Key::Ip(p.dst), nft::Key::Proto(p.proto), nft::Key::Port(port)];
    let hop = Hop::new(HopKind::Dnat, at, "Service DNAT").fact("service_ip", format!("{}:{port}", p.dst));
    if proxy.set_has("no-endpoint-services", &key) == Some(true) {
        let mut hop = hop;
        hop.summary = format!("{}:{port} has no ready endpoint: rejected at once", p.dst);
        return Some(
            hop.line(format!("{}:{port}/{} is in set no-endpoint-services", p.dst, p.proto.word()))
                .drop("the Service has no ready endpoint: rejected (table ip flatnet, set no-endpoint-services)"),
        );
    }
    let Some(chain) = proxy.map_target("service-ips", &key) else {
        if matches!(w.target, Some(Target::Service { .. })) {
            return Some(hop.drop(format!(
                "no element for {}:{port}/{} in map service-ips: the proxy has not programmed this Service port",
                p.dst,
                p.proto.word()
            )));
        }
        return None;
    };
    let eps = endpoints(proxy, &chain);
    let chosen = match w.chosen {
        Some(c) => Some((c, "chosen by the kernel for the probe (conntrack)")),
        None => eps.first().map(|e| ((e.0, e.1), "the first of them; each new connection picks one at random")),
    };
    let mut hop = hop
        .fact("map", "service-ips")
        .fact("chain", &chain)
        .fact("endpoints", eps.iter().map(|e| format!("{}:{}", e.0, e.1)).collect::<Vec<_>>().join(","))
        .line(format!("map service-ips: {}:{port}/{} → goto {chain}", p.dst, p.proto.word()));
    for (ip, port, comment) in &eps {
        hop = hop
            .line(format!("  dnat to {ip}:{port}{}", comment.as_ref().map(|c| format!("  ({c})")).unwrap_or_default()));
    }
    let Some(((ip, eport), how)) = chosen else {
        return Some(hop.drop(format!("chain {chain} has no endpoint")));
    };
    out.dst = ip;
    out.port = Some(eport);
    let who = w.pods.get(&ip).map(|p| format!(" (pod {})", p.label())).unwrap_or_default();
    hop.summary = format!("{}:{port} → {ip}:{eport}{who}, 1 of {} endpoint(s)", p.dst, eps.len());
    Some(hop.fact("endpoint", format!("{ip}:{eport}")).line(format!("following {ip}:{eport}: {how}")))
}

/// The DNAT targets of a Service chain: (address, port, the rule's comment).
fn endpoints(t: &nft::Table, chain: &str) -> Vec<(Ipv4Addr, u16, Option<String>)> {
    let mut out: Vec<(Ipv4Addr, u16, Option<String>)> = Vec::new();
    for r in t.chains.get(chain).into_iter().flatten() {
        for e in &r.expr {
            if let Some(d) = e.get("dnat")
                && let Some(ip) = d["addr"].as_str().and_then(|s| s.parse().ok())
            {
                let port = d["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
                if !out.iter().any(|(i, p, _)| *i == ip && *p == port) {
                    out.push((ip, port, r.comment.clone()));
                }
            }
        }
    }
    out
}
