//! `flatnet lab demo`: the classic pod network scenario on a running lab. A client and a
//! neighbour on node-1, a server on node-2 behind a Service; requests between them, each
//! check explained by the kernel state it crossed.

use anyhow::{Context, bail};
use flatnet_kernel::{Netlink, link, netns, route};
use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::scenario::{self, ReadyPod};
use flatnet_lab::lifecycle::{apply, cluster_dns, connect, exec};
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::Duration;

pub const NAMESPACE: &str = "flatnet-demo";

/// The scenario's pods, Ready, and the server's Service.
pub struct Deployed {
    pub pods: Vec<ReadyPod>,
    pub service_ip: String,
}

impl Deployed {
    /// The IP of pod `name`, or "".
    pub fn ip(&self, name: &str) -> String {
        self.pods.iter().find(|p| p.name == name).map(|p| p.ip.clone()).unwrap_or_default()
    }
}

/// One check: what, whether it passed, and the path it took.
pub struct Row {
    pub check: String,
    pub ok: bool,
    pub path: String,
}

/// Every check, and the requests that failed outright (what, why).
pub struct Checks {
    pub rows: Vec<Row>,
    pub failed: Vec<(&'static str, String)>,
}

/// Creates the namespace, the client, neighbour and server pods and the server's Service
/// (telling `applied` each `kind/name created|configured`), and waits for the pods.
pub fn deploy(layout: &Layout, mut applied: impl FnMut(&str)) -> anyhow::Result<Deployed> {
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        scenario::pod("client", NAMESPACE, Some("node-1"), false),
        scenario::pod("neighbor", NAMESPACE, Some("node-1"), true),
        scenario::pod("server", NAMESPACE, Some("node-2"), true),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "server"}, "ports": [{"port": 80}]}}),
    ];
    let (pods, service_ip) = connect::runtime()?.block_on(async {
        let client = connect::client(layout).await?;
        for o in objects {
            applied(&apply::apply_one(&client, o).await?);
        }
        let pods = scenario::wait_ready(&client, NAMESPACE, 3, Duration::from_secs(60)).await?;
        let svc = kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(client, NAMESPACE).get("server").await?;
        let ip = svc.spec.and_then(|s| s.cluster_ip).context("the server Service has no ClusterIP")?;
        anyhow::Ok((pods, ip))
    })?;
    Ok(Deployed { pods, service_ip })
}

/// Checks every path: same node, across nodes (over `backend`), through the Service, by
/// name, and under a NetworkPolicy (whose creation `applied` hears of).
pub fn check(layout: &Layout, backend: &str, d: &Deployed, applied: impl FnMut(&str)) -> anyhow::Result<Checks> {
    let service_ip = d.service_ip.clone();
    let (client_ip, neighbor_ip, server_ip) = (d.ip("client"), d.ip("neighbor"), d.ip("server"));
    let client_ns = exec::find_sandbox(layout, NAMESPACE, "client").context("the client's sandbox")?.netns;
    let node1 = layout.node_ns("node-1");

    let mut rows: Vec<(String, bool, String)> = Vec::new();
    // Same node: the VXLAN device must not move.
    let before = vxlan_tx(&node1);
    let same = http_get(&client_ns, &neighbor_ip);
    let after = vxlan_tx(&node1);
    let saw = same.as_deref().ok().and_then(seen_client).unwrap_or_default();
    rows.push((
        "client → neighbor (both on node-1)".into(),
        same.is_ok() && after == before,
        format!(
            "veth → cni0 bridge → veth, inside node-1; {} packet(s) left the node",
            after.zip(before).map(|(a, b)| a.saturating_sub(b)).unwrap_or(0)
        ),
    ));
    rows.push(("neighbor saw the client's pod IP".into(), saw == client_ip, format!("{saw} (no NAT on the bridge)")));
    // Cross node.
    let before = vxlan_tx(&node1);
    let cross = http_get(&client_ns, &server_ip);
    let after = vxlan_tx(&node1);
    let saw = cross.as_deref().ok().and_then(seen_client).unwrap_or_default();
    let route = peer_route(&node1, server_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED));
    let path = match backend {
        "vxlan" => format!(
            "{route}: encapsulated in VXLAN (UDP 8472) to node-2; {} packet(s) through flatnet.1",
            after.zip(before).map(|(a, b)| a.saturating_sub(b)).unwrap_or(0)
        ),
        "bgp" => format!("{route} (proto 71, learned by BGP): routed natively, no encapsulation"),
        _ => format!("{route}: routed as is over the underlay, no encapsulation"),
    };
    rows.push(("client (node-1) → server (node-2)".into(), cross.is_ok(), path));
    rows.push((
        "server saw the client's pod IP".into(),
        saw == client_ip,
        format!("{saw} (pod to pod is never NATed; masquerade is only for traffic leaving 10.244.0.0/16)"),
    ));

    // Through the Service: DNAT on node-1 to the server, the client's IP kept.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let via_service = loop {
        let r = http_get(&client_ns, &service_ip);
        if r.is_ok() || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let saw = via_service.as_deref().ok().and_then(seen_client).unwrap_or_default();
    let answered = via_service.as_deref().ok().and_then(seen_pod).unwrap_or_default();
    rows.push((
        format!("client → Service server ({service_ip})"),
        answered == "server" && saw == client_ip,
        format!(
            "node-1 DNATs {service_ip}:80 to {server_ip}:80 ({}), then as above; the server saw {saw}",
            service_chain(&node1, &service_ip)
        ),
    ));

    // By name: the pod's resolver asks kube-dns (10.96.0.10), a Service itself.
    let resolved = resolve_in_pod(layout, "client", "server");
    rows.push((
        "client resolves the name server".into(),
        resolved.as_deref().is_ok_and(|ip| ip == service_ip),
        match &resolved {
            Ok(ip) => format!(
                "server.{NAMESPACE}.svc.cluster.local = {ip}: asked of kube-dns {}, DNATed to a flatnet dns pod",
                cluster_dns::SERVICE_IP
            ),
            Err(e) => format!("failed: {e}"),
        },
    ));

    // NetworkPolicy: the server now takes connections from the client only.
    let (allowed, refused, path) = policy_check(layout, &client_ns, &server_ip, applied)?;
    rows.push(("policy: server takes the client only".into(), allowed && refused, path));

    let mut failed = Vec::new();
    if let Err(e) = &same {
        failed.push(("client → neighbor", e.to_string()));
    }
    if let Err(e) = &cross {
        failed.push(("client → server", e.to_string()));
    }
    let rows = rows.into_iter().map(|(check, ok, path)| Row { check, ok, path }).collect();
    Ok(Checks { rows, failed })
}

/// Applies a NetworkPolicy that lets only the client reach the server on port 80, then
/// checks the client still gets through and the neighbor no longer does (within a
/// bounded wait for the agent); the path names node-2's drop counter for the policy.
fn policy_check(
    layout: &Layout,
    client_ns: &std::path::Path,
    server_ip: &str,
    mut applied: impl FnMut(&str),
) -> anyhow::Result<(bool, bool, String)> {
    let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server-from-client", "namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]}]}});
    connect::runtime()?.block_on(async {
        let client = connect::client(layout).await?;
        applied(&apply::apply_one(&client, policy).await?);
        anyhow::Ok(())
    })?;
    let neighbor_ns = exec::find_sandbox(layout, NAMESPACE, "neighbor").context("the neighbor's sandbox")?.netns;
    let short = |ns: &std::path::Path| netns::run_in(ns, || scenario::http_get(server_ip, Duration::from_millis(500)));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let blocked = short(&neighbor_ns).map(|r| r.is_err()).unwrap_or(false);
        if blocked || std::time::Instant::now() > deadline {
            break blocked;
        }
    };
    let allowed = http_get(client_ns, server_ip).is_ok();
    let node2 = layout.node_ns("node-2");
    let drops =
        netns::run_in(&node2, flatnet_agent::policy::drop_counters).ok().and_then(Result::ok).unwrap_or_default();
    let dropped: u64 = drops.iter().filter(|d| d.policy == "server-from-client").map(|d| d.packets).sum();
    let path = format!(
        "node-2 isolates the server (table ip flatnet-policy, map ingress → its chain): the client passes, \
         the neighbor is dropped ({dropped} packet(s) counted for {NAMESPACE}/server-from-client)"
    );
    Ok((allowed, refused, path))
}

/// The address `getent hosts NAME` gives inside `pod` (its resolv.conf, its search path),
/// retried for a few seconds while the DNS pods learn of the Service.
fn resolve_in_pod(layout: &Layout, pod: &str, name: &str) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["lab", "exec", pod, "-n", NAMESPACE, "--state-dir"])
            .arg(&layout.state)
            .args(["--", "getent", "hosts", name])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(ip) = text.split_whitespace().next() {
            return Ok(ip.to_string());
        }
        if std::time::Instant::now() > deadline {
            bail!("getent hosts {name} found nothing: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP GET from inside the pod whose namespace is pinned at `ns`.
pub fn http_get(ns: &std::path::Path, ip: &str) -> anyhow::Result<String> {
    netns::run_in(ns, || scenario::http_get(ip, Duration::from_secs(3)))?.with_context(|| format!("GET http://{ip}/"))
}

/// The client address the built-in server reported.
pub fn seen_client(body: &str) -> Option<String> {
    let client = body.split_whitespace().find_map(|w| w.strip_prefix("client="))?;
    Some(client.rsplit_once(':').map_or(client, |(ip, _)| ip).to_string())
}

/// The pod name the built-in server reported.
fn seen_pod(body: &str) -> Option<String> {
    body.split_whitespace().find_map(|w| w.strip_prefix("pod=")).map(str::to_string)
}

/// The chain `service-ips` sends `ip`:80/TCP to on `node_ns`, read as the agent reads it.
fn service_chain(node_ns: &std::path::Path, ip: &str) -> String {
    let actual = netns::run_in(node_ns, flatnet_agent::proxy::read_actual).ok().and_then(Result::ok);
    let key = ip.parse().ok().map(|ip| (ip, flatnet_model::proxy::Proto::Tcp, 80));
    match actual.zip(key).and_then(|(a, k)| a.service_ips.get(&k).cloned()) {
        Some(c) => format!("table ip flatnet, chain {c}"),
        None => "no map element".into(),
    }
}

fn vxlan_tx(node_ns: &std::path::Path) -> Option<u64> {
    netns::run_in(node_ns, || Some(link::get(&mut Netlink::open().ok()?, "flatnet.1").ok()??.tx_packets)).ok()?
}

/// The route node-1 uses for `ip`, as `ip route` would print it.
fn peer_route(node_ns: &std::path::Path, ip: Ipv4Addr) -> String {
    let found = netns::run_in(node_ns, || {
        let mut nl = Netlink::open().ok()?;
        let r = route::list_owned(&mut nl).ok()?.into_iter().find(|r| r.dst.contains(&ip))?;
        let dev = link::get_by_index(&mut nl, r.oif).ok()??.name;
        Some(format!("route {} via {} dev {dev}{}", r.dst, r.via, if r.onlink { " onlink" } else { "" }))
    });
    found.ok().flatten().unwrap_or_else(|| format!("no flatnet route to {ip}"))
}

/// The lab's rack routers and their routes to Pod CIDRs, as BIRD has them (none on a lab
/// of one segment).
pub fn router_tables(layout: &Layout) -> Vec<flatnet_model::trace::RouterFacts> {
    let Ok(pods) = flatnet_lab::pod_network::CLUSTER_CIDR.parse::<ipnet::Ipv4Net>() else { return Vec::new() };
    let mut routers = crate::gather::lab_routers(layout);
    for r in &mut routers {
        r.routes.retain(|x| pods.contains(&x.prefix));
    }
    routers
}
