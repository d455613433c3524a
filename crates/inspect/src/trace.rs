//! `flatnet trace SRC DST[:PORT][/PROTO]` (on a node) and `flatnet lab trace` (in the
//! lab): the API names the pods and the Service; every hop is then read from the kernel
//! of the node it happens on.

use crate::{gather, probe};
use anyhow::{Context, bail};
use flatnet_kernel::probe::{Kind, Prober};
use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::connect;
use flatnet_model::trace::{self, L4, Packet, PodFacts, Target, World};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to trace.
#[derive(Debug, Clone)]
pub struct Request {
    /// The pod the packet leaves: `namespace/name` (or `name`, in namespace default).
    pub src: String,
    /// Where it goes: a pod (`namespace/name`), a Service (`name.namespace`, or its DNS
    /// name) or an IP, then `:PORT` and `/tcp`, `/udp`, `/sctp` or `/icmp`.
    pub dst: String,
    /// Send a real packet along the path and confirm each hop with nftables tracing.
    pub probe: bool,
}

/// Where the trace can look: each node's namespace, and how to find a pod's.
pub enum Scope {
    Lab(Layout),
    /// This node's name, and where pods' namespaces are pinned.
    Node(String, Vec<PathBuf>),
}

impl Scope {
    fn node_ns(&self, node: &str) -> Option<PathBuf> {
        match self {
            Scope::Lab(l) => Some(l.node_ns(node)).filter(|p| p.exists()),
            Scope::Node(me, _) => (me == node).then(|| PathBuf::from(flatnet_kernel::netns::OWN)),
        }
    }
    /// The lab's rack routers, read from their namespaces and BIRD (none elsewhere).
    fn routers(&self) -> Vec<trace::RouterFacts> {
        match self {
            Scope::Lab(l) => gather::lab_routers(l),
            Scope::Node(..) => Vec::new(),
        }
    }
    fn pod_ns(&self, pod: &Pod, ip: Ipv4Addr) -> Option<PathBuf> {
        match self {
            Scope::Lab(l) => pod.metadata.uid.as_deref().map(|u| l.pod_ns(u)).filter(|p| p.exists()),
            Scope::Node(me, dirs) => {
                let here = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(me.as_str());
                let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
                here.then(|| gather::find_netns(&dirs, ip)).flatten()
            }
        }
    }
}

/// DST split into what, port and protocol.
#[derive(Debug, PartialEq, Eq)]
pub struct Dest {
    pub host: String,
    pub port: Option<u16>,
    pub proto: Option<L4>,
}

pub fn parse_dest(s: &str) -> anyhow::Result<Dest> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) if L4::parse_packet(p).is_some() => (r, L4::parse_packet(p)),
        _ => (s, None),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse::<u16>().ok().filter(|p| *p > 0).with_context(|| {
                format!("{s:?}: the port {p:?} is not a number from 1 to 65535 (DST[:PORT][/PROTO])")
            })?;
            (h, Some(port))
        }
        None => (rest, None),
    };
    if host.is_empty() {
        bail!("{s:?}: no destination (a pod ns/name, a Service name.ns, or an IP)");
    }
    if proto == Some(L4::Icmp) && port.is_some() {
        bail!("{s:?}: ICMP has no port");
    }
    Ok(Dest { host: host.to_string(), port, proto })
}

fn pod_key(s: &str) -> (String, String) {
    match s.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => ("default".to_string(), s.to_string()),
    }
}

fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn facts_of(p: &Pod) -> PodFacts {
    PodFacts {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        ip: pod_ip(p),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        eth0: None,
        routes: Vec::new(),
    }
}

struct Api {
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    service: Option<Service>,
}

async fn read_api(client: kube::Client, dest: &Dest) -> anyhow::Result<Api> {
    let pods = kube::Api::<Pod>::all(client.clone()).list(&Default::default()).await.context("list pods")?.items;
    let nodes = kube::Api::<Node>::all(client.clone()).list(&Default::default()).await.context("list nodes")?.items;
    let service = match service_name(&dest.host) {
        Some((ns, name)) => Some(
            kube::Api::<Service>::namespaced(client, &ns)
                .get(&name)
                .await
                .with_context(|| format!("no Service {ns}/{name} (`kubectl get svc -n {ns}`)"))?,
        ),
        None => None,
    };
    Ok(Api { pods, nodes, service })
}

/// `name.ns`, `name.ns.svc` or `name.ns.svc.cluster.local`: (namespace, name).
fn service_name(host: &str) -> Option<(String, String)> {
    if host.parse::<Ipv4Addr>().is_ok() || host.contains('/') {
        return None;
    }
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    (labels.len() >= 2).then(|| (labels[1].to_string(), labels[0].to_string()))
}

/// Builds the trace: the API names things, the kernel of each node decides.
pub fn run(
    scope: &Scope,
    rt: &tokio::runtime::Runtime,
    client: kube::Client,
    req: &Request,
) -> anyhow::Result<trace::Trace> {
    let dest = parse_dest(&req.dst)?;
    let api = rt.block_on(read_api(client, &dest))?;
    let (sns, sname) = pod_key(&req.src);
    let src_pod = api
        .pods
        .iter()
        .find(|p| p.metadata.namespace.as_deref() == Some(&sns) && p.metadata.name.as_deref() == Some(&sname))
        .with_context(|| format!("no pod {sns}/{sname} (`kubectl get pod {sname} -n {sns}`)"))?;
    let mut world = World { src: facts_of(src_pod), ..Default::default() };
    let src_ip = world.src.ip.with_context(|| format!("pod {sns}/{sname} has no IP yet: is it running?"))?;
    let (dst_ip, port, proto, target) = if let Some(svc) = &api.service {
        let spec = svc.spec.as_ref().context("the Service has no spec")?;
        let ip: Ipv4Addr = spec
            .cluster_ip
            .as_deref()
            .and_then(|c| c.parse().ok())
            .context("the Service has no ClusterIP (a headless Service: trace to one of its pods instead)")?;
        let sp = spec.ports.as_deref().unwrap_or_default();
        let chosen = match dest.port {
            Some(p) => sp.iter().find(|x| x.port == i32::from(p)),
            None => sp.first(),
        };
        let port = dest.port.or_else(|| chosen.and_then(|c| u16::try_from(c.port).ok()));
        let proto = dest
            .proto
            .or_else(|| chosen.and_then(|c| c.protocol.as_deref()).and_then(L4::parse_packet))
            .unwrap_or(L4::Tcp);
        let (ns, name) = service_name(&dest.host).expect("a Service name");
        (ip, port, proto, Target::Service { namespace: ns, name })
    } else if let Ok(ip) = dest.host.parse::<Ipv4Addr>() {
        let proto = dest.proto.unwrap_or(if dest.port.is_some() { L4::Tcp } else { L4::Icmp });
        (ip, dest.port, proto, Target::Ip)
    } else {
        let (ns, name) = pod_key(&dest.host);
        let p = api
            .pods
            .iter()
            .find(|p| p.metadata.namespace.as_deref() == Some(&ns) && p.metadata.name.as_deref() == Some(&name))
            .with_context(|| format!("no pod {ns}/{name} (`kubectl get pod {name} -n {ns}`)"))?;
        let ip = pod_ip(p).with_context(|| format!("pod {ns}/{name} has no IP yet"))?;
        let proto = dest.proto.unwrap_or(if dest.port.is_some() { L4::Tcp } else { L4::Icmp });
        (ip, dest.port, proto, Target::Pod(format!("{ns}/{name}")))
    };
    if proto != L4::Icmp && port.is_none() {
        bail!("{}: {} needs a port", req.dst, proto.word());
    }
    let packet = Packet { src: src_ip, dst: dst_ip, proto, port };
    world.packet = Some(packet);
    world.target = Some(target);
    for p in &api.pods {
        if let Some(ip) = pod_ip(p)
            && p.spec.as_ref().is_some_and(|s| s.host_network != Some(true))
        {
            world.pods.insert(ip, facts_of(p));
        }
    }
    let nodes: Vec<(String, PathBuf)> = api
        .nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            Some((name.clone(), scope.node_ns(&name)?))
        })
        .collect();
    if nodes.is_empty() {
        bail!(
            "none of the cluster's nodes is visible from here (run on a node, with --node-name if its hostname differs)"
        );
    }
    // The probe goes first, so the trace follows the endpoint the kernel really chose.
    let report = if req.probe { Some(send_probe(scope, src_pod, &nodes, packet)?) } else { None };
    world.chosen = report.as_ref().and_then(|r| r.endpoint);
    world.node_ips = api
        .nodes
        .iter()
        .filter_map(|n| Some((flatnet_kube::node::internal_ip(n)?, n.metadata.name.clone()?)))
        .collect();
    let by_name: BTreeMap<&str, &Node> =
        api.nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
    for (name, path) in &nodes {
        let underlay = by_name.get(name.as_str()).and_then(|n| flatnet_kube::node::internal_ip(n));
        let facts = flatnet_kernel::netns::run_in(path, || gather::node(name, underlay, src_ip, dst_ip))?
            .with_context(|| format!("read {name}'s network state"))?;
        world.nodes.insert(name.clone(), facts);
    }
    world.routers = scope.routers();
    // The pods' own side: the source, and every pod the packet may end at.
    let wanted: Vec<Ipv4Addr> = std::iter::once(src_ip)
        .chain(
            world
                .nodes
                .get(world.src.node.as_deref().unwrap_or(""))
                .map_or_else(Vec::new, |n| gather::candidates(n.proxy.as_ref(), dst_ip)),
        )
        .chain(std::iter::once(dst_ip))
        .collect();
    for ip in wanted {
        let Some(pod) = api.pods.iter().find(|p| pod_ip(p) == Some(ip)) else { continue };
        if let (Some(path), Some(f)) = (scope.pod_ns(pod, ip), world.pods.get_mut(&ip)) {
            let _ = gather::pod_kernel(f, &path);
        }
    }
    if let Some(f) = world.pods.get(&src_ip) {
        world.src = f.clone();
    }
    let mut t = trace::build(&world);
    if let Some(r) = report {
        trace::probe::confirm(&mut t, r);
    }
    Ok(t)
}

fn send_probe(
    scope: &Scope,
    src: &Pod,
    nodes: &[(String, PathBuf)],
    p: Packet,
) -> anyhow::Result<trace::probe::Report> {
    let netns = scope.pod_ns(src, p.src).with_context(|| {
        format!("the namespace of pod {} is not visible here, so no probe can leave it", facts_of(src).label())
    })?;
    let kind = match p.proto {
        L4::Tcp => Kind::Tcp,
        L4::Udp => Kind::Udp,
        L4::Icmp => Kind::Icmp,
        L4::Sctp => bail!("--probe sends TCP, UDP or ICMP; trace SCTP without it"),
    };
    let session = probe::Session::start(nodes)?;
    let prober = Prober::open(&netns, p.src, kind).context("open the probe socket in the pod")?;
    let matcher = match kind {
        Kind::Icmp => format!("ip saddr {} icmp type echo-request icmp id {}", p.src, prober.ident),
        _ => format!("ip saddr {} {} sport {}", p.src, p.proto.word(), prober.ident),
    };
    session.arm(&matcher)?;
    let timeout = Duration::from_secs(2);
    let ident = prober.ident;
    let answer = prober.send(p.dst, p.port.unwrap_or(0), timeout);
    let events = session.collect();
    let src_node = src.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let node_ns = nodes.iter().find(|(n, _)| *n == src_node).map(|(_, p)| p.as_path());
    let proto_num = match p.proto {
        L4::Tcp => 6,
        L4::Udp => 17,
        _ => 0,
    };
    // The first packet's DNAT as traced; else conntrack's (a connection dropped on the
    // node that DNATed it leaves no conntrack entry, and a retransmission may be DNATed
    // elsewhere).
    let endpoint = trace::probe::dnat_seen(&events, &src_node).or_else(|| match node_ns {
        Some(ns) if proto_num != 0 => probe::dnat_endpoint(ns, proto_num, p.src, ident),
        _ => None,
    });
    let sent = match kind {
        Kind::Tcp => format!("TCP SYN {}:{ident} → {}:{}", p.src, p.dst, p.port.unwrap_or(0)),
        Kind::Udp => format!("UDP {}:{ident} → {}:{}", p.src, p.dst, p.port.unwrap_or(0)),
        Kind::Icmp => format!("ICMP echo id {ident} {} → {}", p.src, p.dst),
    };
    drop(session);
    Ok(trace::probe::Report { sent, outcome: probe::outcome(answer, timeout), events, endpoint })
}

/// The trace on a node, `me`, as far as this node can see; the API through `kubeconfig`
/// (else the in-cluster service account or $KUBECONFIG); pods' namespaces pinned under
/// `pod_netns_dirs`.
pub fn node(
    me: String,
    kubeconfig: Option<&Path>,
    pod_netns_dirs: Vec<PathBuf>,
    req: &Request,
) -> anyhow::Result<trace::Trace> {
    let rt = connect::runtime()?;
    let client = rt.block_on(flatnet_kube::watch::client(kubeconfig)).map_err(anyhow::Error::msg)?;
    run(&Scope::Node(me, pod_netns_dirs), &rt, client, req)
}

/// The trace in the lab, from every node's kernel.
pub fn lab(layout: Layout, req: &Request) -> anyhow::Result<trace::Trace> {
    let rt = connect::runtime()?;
    let client = rt.block_on(connect::client(&layout))?;
    run(&Scope::Lab(layout), &rt, client, req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_with_port_and_protocol() {
        let d = |s: &str| parse_dest(s).unwrap();
        assert_eq!(d("default/server:8080"), Dest { host: "default/server".into(), port: Some(8080), proto: None });
        assert_eq!(d("web.default/udp").proto, Some(L4::Udp));
        assert_eq!(d("10.96.0.10:53/udp"), Dest { host: "10.96.0.10".into(), port: Some(53), proto: Some(L4::Udp) });
        assert!(parse_dest("server:0").is_err());
        assert!(parse_dest("server:http").is_err());
        assert!(parse_dest("server:80/icmp").is_err());
        assert_eq!(service_name("web.default.svc.cluster.local"), Some(("default".into(), "web".into())));
        assert_eq!(service_name("10.96.0.1"), None);
        assert_eq!(service_name("default/web"), None);
    }
}
