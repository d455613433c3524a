//! Seeing every hop, in a real 2-node VXLAN lab: `flatnet lab trace` between pods on two
//! nodes names the devices, routes, outer addresses and VNI the kernel really has; through
//! a Service it names the endpoint the kernel chose; blocked by a policy it names the
//! policy; `--probe` agrees with what a real packet did in each case. `lab status` and
//! `flatnet status` show each node's peers, tunnels, pods and reconcilers; the agent's and
//! the DNS servers' metrics count what they did. Then `flatnet lab doctor` finds each
//! fault the test injects into a node, and says how to fix it.

mod common;

use common::lab::{Lab, flatnet, run};
use common::{converges, rt, sandboxed};
use flatnet_kernel::{Netlink, link, netns};
use k8s_openapi::api::core::v1::Node;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec: {nodeName: node-1, containers: [{name: c, image: busybox, command: [sleep, "3600"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec: {selector: {app: nobody}, ports: [{port: 80, targetPort: 8080}]}
"#;

const INGRESS_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-friends}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: friend}}}]}]
"#;

const EGRESS_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-stays-home}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
"#;

/// `flatnet lab trace --json ARGS`.
fn trace(lab: &Lab, args: &[&str]) -> Value {
    let out = run(Command::new(flatnet()).args(["lab", "trace", "--json", "--state-dir"]).arg(lab.state()).args(args));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hops<'a>(t: &'a Value, kind: &str) -> Vec<&'a Value> {
    t["hops"].as_array().unwrap().iter().filter(|h| h["kind"] == kind).collect()
}

fn hop<'a>(t: &'a Value, kind: &str) -> &'a Value {
    hops(t, kind).first().copied().unwrap_or_else(|| panic!("no {kind} hop in {t:#}"))
}

fn kinds(t: &Value) -> Vec<String> {
    t["hops"].as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap().to_string()).collect()
}

/// The probe confirmed every hop and agrees with the prediction.
fn assert_probe_agrees(t: &Value) {
    assert_eq!(t["probe"]["agrees"], true, "{:#}", t["probe"]);
    for h in t["hops"].as_array().unwrap() {
        if t["verdict"]["result"] == "delivered" {
            assert_eq!(h["probe"]["result"], "seen", "hop {} at {} not confirmed: {t:#}", h["kind"], h["at"]);
        }
    }
}

/// The host end of a pod's veth, read from the kernel independently of the trace.
fn host_veth(lab: &Lab, pod: &str, node: &str) -> String {
    let peer = netns::run_in(&lab.pod_netns(pod), || link::get(&mut Netlink::open().unwrap(), "eth0").unwrap())
        .unwrap()
        .unwrap()
        .link
        .unwrap();
    netns::run_in(&lab.ns(node), || link::get_by_index(&mut Netlink::open().unwrap(), peer).unwrap())
        .unwrap()
        .unwrap()
        .name
}

fn node_ip(nodes: &[Node], name: &str) -> String {
    let n = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name)).unwrap();
    flatnet_kube::node::internal_ip(n).unwrap().to_string()
}

/// `flatnet lab doctor --json` (with extra environment), as node → checks.
fn doctor(lab: &Lab, node: Option<&str>, env: &[(&str, &str)]) -> (bool, Value) {
    let mut cmd = Command::new(flatnet());
    cmd.args(["lab", "doctor", "--json", "--state-dir"]).arg(lab.state());
    if let Some(n) = node {
        cmd.args(["--node", n]);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

fn check<'a>(report: &'a Value, node: &str, name: &str) -> &'a Value {
    report[node].as_array().unwrap().iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

/// Waits until doctor on `node` reports `name` with `status`; returns that check.
fn doctor_says(lab: &Lab, node: &str, name: &str, status: &str) -> Value {
    let mut last = Value::Null;
    converges(&format!("doctor: {node} {name} {status}"), Duration::from_secs(20), || {
        let (_, r) = doctor(lab, Some(node), &[]);
        last = check(&r, node, name).clone();
        if last["status"] == status { Ok(()) } else { Err(format!("{last}")) }
    });
    last
}

fn in_node(lab: &Lab, node: &str, cmd: &str) {
    run(Command::new("nsenter").arg(format!("--net={}", lab.ns(node).display())).args(["sh", "-c", cmd]));
}

/// Stops a node's agent (so nothing repairs the faults a test injects) until dropped.
struct Paused(Vec<i32>);

impl Paused {
    fn agents(lab: &Lab, nodes: &[&str]) -> Self {
        let pids: Vec<i32> = nodes.iter().map(|n| lab.agent_pid(n)).collect();
        for p in &pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGSTOP).unwrap();
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGCONT);
        }
    }
}

#[test]
fn every_hop_status_metrics_and_doctor() {
    sandboxed("every_hop_status_metrics_and_doctor", |_| {
        let lab = Lab::up(2, "vxlan");
        lab.apply(MANIFEST);
        let ips = lab.ready_ips(&["client", "web-a", "web-b"]);
        let (web_a, web_b) = (ips[1].clone(), ips[2].clone());
        let rt = rt();
        let nodes = rt.block_on(kube::Api::<Node>::all(lab.client(&rt)).list(&Default::default())).unwrap().items;
        let cidr2 = lab.pod_cidr("node-2");
        let vtep2 = cidr2.split('/').next().unwrap().to_string();

        // Across nodes: the devices, the route, the outer addresses and the VNI.
        let t = trace(&lab, &["client", "default/web-a:8080"]);
        assert_eq!(t["verdict"]["result"], "delivered", "{t:#}");
        assert_eq!(
            kinds(&t),
            [
                "pod",
                "veth",
                "bridge",
                "route",
                "policy_egress",
                "vxlan",
                "decap",
                "route",
                "policy_ingress",
                "bridge",
                "veth",
                "deliver"
            ]
        );
        let veth = hop(&t, "veth");
        assert_eq!((veth["at"].as_str(), veth["facts"]["bridge"].as_str()), (Some("node-1"), Some("cni0")));
        assert_eq!(veth["facts"]["device"].as_str().unwrap(), host_veth(&lab, "client", "node-1"));
        assert_eq!(hops(&t, "veth")[1]["facts"]["device"].as_str().unwrap(), host_veth(&lab, "web-a", "node-2"));
        let route = hop(&t, "route");
        assert_eq!(route["facts"]["route"], format!("{cidr2} via {vtep2} dev flatnet.1"));
        assert_eq!(route["facts"]["device"], "flatnet.1");
        let vx = hop(&t, "vxlan");
        assert_eq!(vx["facts"]["outer_src"].as_str().unwrap(), node_ip(&nodes, "node-1"));
        assert_eq!(vx["facts"]["outer_dst"].as_str().unwrap(), node_ip(&nodes, "node-2"));
        assert_eq!((vx["facts"]["vni"].as_str(), vx["facts"]["udp_port"].as_str()), (Some("1"), Some("8472")));
        assert_eq!(vx["facts"]["vtep"].as_str().unwrap(), vtep2);
        assert_eq!(hop(&t, "decap")["at"], "node-2");
        assert_eq!(hops(&t, "route")[1]["facts"]["device"], "cni0");
        let probed = trace(&lab, &["client", "default/web-a:8080", "--probe"]);
        assert_probe_agrees(&probed);
        assert!(probed["probe"]["outcome"]["detail"].as_str().unwrap().contains("pod=web-a"), "{probed:#}");

        // `flatnet trace` on node-1 itself sees node-1's part of the path, and says where
        // its view ends; the probe still goes all the way. It reads the API as the node's
        // agent (a kubelet's credentials may list only its own node's pods).
        let out = run(Command::new("nsenter")
            .arg(format!("--net={}", lab.ns("node-1").display()))
            .arg(flatnet())
            .args(["trace", "--json", "--probe", "--node-name", "node-1", "--kubeconfig"])
            .arg(lab.state().join("nodes/node-1/agent.kubeconfig"))
            .arg("--pod-netns-dir")
            .arg(lab.state().join("netns"))
            .args(["default/client", "default/web-a:8080"]));
        let t: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(t["verdict"]["result"], "unknown", "{t:#}");
        assert!(t["verdict"]["why"].as_str().unwrap().contains("not visible from here"), "{t:#}");
        assert_eq!(hop(&t, "vxlan")["facts"]["outer_dst"].as_str().unwrap(), node_ip(&nodes, "node-2"));
        assert_eq!(hop(&t, "vxlan")["probe"]["result"], "seen", "{t:#}");
        assert_eq!(t["probe"]["outcome"]["result"], "answered", "{t:#}");

        // On one node: switched by the bridge, no tunnel; pinged.
        let t = trace(&lab, &["client", "web-b", "--probe"]);
        assert_eq!(t["verdict"]["result"], "delivered", "{t:#}");
        assert!(hops(&t, "vxlan").is_empty() && hops(&t, "route").is_empty(), "{t:#}");
        assert_eq!(t["packet"]["proto"], "icmp");
        assert_probe_agrees(&t);

        // Through a Service: the trace follows the endpoint the kernel chose for the
        // probe, which is the pod that answered; both endpoints come up.
        let t = trace(&lab, &["client", "web.default"]);
        let listed = hop(&t, "dnat")["facts"]["endpoints"].as_str().unwrap().to_string();
        assert!(listed.contains(&format!("{web_a}:8080")) && listed.contains(&format!("{web_b}:8080")), "{listed}");
        let mut chosen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let t = trace(&lab, &["client", "web.default", "--probe"]);
            assert_probe_agrees(&t);
            let endpoint = hop(&t, "dnat")["facts"]["endpoint"].as_str().unwrap().to_string();
            let ip = endpoint.split(':').next().unwrap().to_string();
            let said = t["probe"]["outcome"]["detail"].as_str().unwrap().to_string();
            assert!(said.contains(&format!("pod_ip={ip} ")), "trace followed {endpoint}, but {said}");
            let last = t["hops"].as_array().unwrap().last().unwrap()["at"].as_str().unwrap().to_string();
            let pod = if ip == web_a { "web-a" } else { "web-b" };
            assert_eq!(last, format!("pod default/{pod}"));
            assert_eq!(hops(&t, "vxlan").is_empty(), pod == "web-b", "web-b is on the client's node: {t:#}");
            chosen.insert(ip);
            if chosen.len() == 2 {
                break;
            }
        }
        assert_eq!(chosen.len(), 2, "30 probes all went to {chosen:?}");

        // A Service with no endpoint: rejected at the DNAT hop, and the probe is refused there.
        let t = trace(&lab, &["client", "empty.default", "--probe"]);
        assert_eq!(t["verdict"]["result"], "dropped", "{t:#}");
        assert_eq!(t["hops"].as_array().unwrap().last().unwrap()["kind"], "dnat");
        assert_eq!(hop(&t, "dnat")["probe"]["result"], "dropped", "{t:#}");
        assert_eq!(t["probe"]["outcome"]["result"], "refused", "{t:#}");
        assert_eq!(t["probe"]["agrees"], true, "{t:#}");

        // Blocked by a policy on the server's side: named, where it drops.
        lab.apply(INGRESS_POLICY);
        let mut t = Value::Null;
        converges("the trace to see the policy", Duration::from_secs(15), || {
            t = trace(&lab, &["client", "default/web-a:8080"]);
            if t["verdict"]["result"] == "dropped" { Ok(()) } else { Err(t["verdict"].to_string()) }
        });
        let p = hop(&t, "policy_ingress");
        assert_eq!(
            (p["at"].as_str(), p["facts"]["policy"].as_str()),
            (Some("node-2"), Some("default/web-from-friends"))
        );
        assert!(t["verdict"]["by"].as_str().unwrap().contains("default/web-from-friends"));
        assert_eq!(t["hops"].as_array().unwrap().last().unwrap()["kind"], "policy_ingress");
        t = trace(&lab, &["client", "web.default:80", "--probe"]);
        assert_eq!(t["probe"]["agrees"], true, "{:#}", t["probe"]);
        assert_eq!(t["probe"]["outcome"]["result"], "timed_out");
        let p = hop(&t, "policy_ingress");
        assert_eq!(p["probe"]["result"], "dropped", "{t:#}");
        assert!(p["probe"]["by"].as_str().unwrap().contains("default/web-from-friends"));
        // ... and on the client's side.
        lab.apply(EGRESS_POLICY);
        converges("the trace to see the egress policy", Duration::from_secs(15), || {
            t = trace(&lab, &["client", "web-b", "--probe"]);
            if t["verdict"]["result"] == "dropped" { Ok(()) } else { Err(t["verdict"].to_string()) }
        });
        let p = hop(&t, "policy_egress");
        assert_eq!(
            (p["at"].as_str(), p["facts"]["policy"].as_str()),
            (Some("node-1"), Some("default/client-stays-home"))
        );
        assert_eq!(p["probe"]["result"], "dropped", "{t:#}");
        assert_eq!(t["probe"]["agrees"], true);

        // Bad input changes nothing and says what was wrong.
        let bad = |args: &[&str], says: &str| {
            let out = Command::new(flatnet())
                .args(["lab", "trace", "--state-dir"])
                .arg(lab.state())
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
        };
        bad(&["client", "nosuch:80"], "no pod default/nosuch");
        bad(&["nosuch", "web-a:80"], "no pod default/nosuch");
        bad(&["client", "web-a:http"], "is not a number");
        bad(&["client", "nosuch.default"], "no Service default/nosuch");

        status_and_metrics(&lab);
        doctor_finds_each_fault(&lab, &nodes);
    });
}

/// The value of the sample `name` (with its labels) in exposition text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn status_and_metrics(lab: &Lab) {
    // `lab status`: each node's own account next to its kernel's.
    let text = lab.status();
    let node1 = text.split("\nnode-1 (").nth(1).unwrap_or_else(|| panic!("{text}"));
    let node1 = node1.split("\nnode-2 (").next().unwrap();
    for want in [
        "vxlan, pod CIDR",
        "device    flatnet.1 UP mtu 1450 VNI 1 UDP 8472",
        "tunnel up",
        "default/client",
        "default/web-b",
        "sync      node    in sync",
        "sync      proxy   in sync",
        "sync      policy  in sync",
        "2 NetworkPolicy(ies)",
        "ruleset   ip flatnet: ",
        "ruleset   ip flatnet-policy: ",
    ] {
        assert!(node1.contains(want), "{want:?} missing from node-1's status:\n{text}");
    }
    assert!(node1.contains("peer      node-2"), "{text}");
    // `flatnet status` on the node itself, as JSON.
    let out = run(Command::new("nsenter")
        .arg(format!("--net={}", lab.ns("node-2").display()))
        .arg(flatnet())
        .args(["status", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = &v["agent"]["Ok"];
    assert_eq!(agent["node"], "node-2", "{v:#}");
    assert!(agent["pods"].as_array().unwrap().iter().any(|p| p["name"] == "web-a"), "{v:#}");
    assert_eq!(agent["reconcilers"]["node"]["errors"], 0, "{v:#}");
    assert!(v["tunnels"][0]["answered_ms"].is_number(), "{v:#}");

    // The agent's metrics: reconcilers, what they programmed, and the policy's drops.
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], 9402));
    let m1 = common::lab::http_get_path(&lab.ns("node-1"), metrics, "/metrics").unwrap();
    for r in ["node", "proxy", "policy"] {
        assert!(sample(&m1, &format!("flatnet_reconcile_duration_seconds_count{{reconciler=\"{r}\"}}")) >= 1.0);
        assert!(sample(&m1, &format!("flatnet_reconcile_syncs_total{{reconciler=\"{r}\"}}")) >= 1.0);
        assert_eq!(sample(&m1, &format!("flatnet_reconcile_errors_total{{reconciler=\"{r}\"}}")), 0.0);
    }
    assert_eq!(sample(&m1, "flatnet_node_peers{state=\"routed\"}"), 1.0);
    // kubernetes, kube-dns, web and empty.
    assert_eq!(sample(&m1, "flatnet_services"), 4.0, "{m1}");
    assert!(sample(&m1, "flatnet_service_endpoints") >= 4.0, "{m1}");
    assert_eq!(sample(&m1, "flatnet_policies"), 2.0);
    let dropped =
        "flatnet_policy_dropped_packets_total{direction=\"egress\",namespace=\"default\",policy=\"client-stays-home\"}";
    assert!(sample(&m1, dropped) >= 1.0, "{m1}");

    // The DNS servers' metrics: a lookup from the client is counted by type, rcode and
    // latency on whichever server answered it.
    let dns = std::net::SocketAddr::from(([127, 0, 0, 1], 9153));
    let dns_pods = lab.pod_names("kube-system", "k8s-app=kube-dns");
    assert_eq!(dns_pods.len(), 2, "{dns_pods:?}");
    let read = || -> (f64, f64, f64) {
        dns_pods
            .iter()
            .map(|p| common::lab::http_get_path(&lab.pod_netns_in("kube-system", p), dns, "/metrics").unwrap())
            .map(|m| {
                (
                    sample(&m, "flatnet_dns_requests_total{type=\"A\"}"),
                    sample(&m, "flatnet_dns_responses_total{rcode=\"NOERROR\"}"),
                    sample(&m, "flatnet_dns_request_duration_seconds_count"),
                )
            })
            .fold((0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    };
    let before = read();
    let out = lab.exec("web-b", &["getent", "hosts", "web.default.svc.cluster.local"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = read();
    assert!(after.0 > before.0 && after.1 > before.1 && after.2 > before.2, "{before:?} → {after:?}");
}

fn doctor_finds_each_fault(lab: &Lab, nodes: &[Node]) {
    let (healthy, report) = doctor(lab, None, &[]);
    assert!(healthy, "{report:#}");
    for n in ["node-1", "node-2"] {
        assert!(report[n].as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{report:#}");
    }
    let failing = |node: &str, name: &str, env: &[(&str, &str)]| -> Value {
        let (ok, r) = doctor(lab, Some(node), env);
        let c = check(&r, node, name).clone();
        assert!(!ok && c["status"] == "fail", "doctor missed {name} on {node}: {r:#}");
        assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
        c
    };
    // The agent repairs most faults within a second: pause it, as a crashed agent would be.
    let paused = Paused::agents(lab, &["node-1", "node-2"]);
    failing("node-1", "agent", &[]);

    in_node(lab, "node-1", "echo 0 > /proc/sys/net/ipv4/ip_forward");
    failing("node-1", "forwarding", &[]);
    in_node(lab, "node-1", "echo 1 > /proc/sys/net/ipv4/ip_forward");

    // A missing FDB entry, repaired with the fix doctor prints.
    let mac = flatnet_kube::node::peer(nodes.iter().find(|n| n.metadata.name.as_deref() == Some("node-2")).unwrap())
        .vtep_mac
        .map(|m| flatnet_model::names::format_mac(&m))
        .unwrap();
    in_node(lab, "node-1", &format!("bridge fdb del {mac} dev flatnet.1 dst {}", node_ip(nodes, "node-2")));
    let c = failing("node-1", "fdb", &[]);
    assert!(c["detail"].as_str().unwrap().contains("node-2"), "{c}");
    failing("node-1", "tunnel", &[]);
    let fix = c["fix"].as_str().unwrap().split("by hand: ").nth(1).unwrap().to_string();
    in_node(lab, "node-1", &fix.replace("; ", " && "));
    doctor_says(lab, "node-1", "fdb", "ok");
    doctor_says(lab, "node-1", "tunnel", "ok");

    in_node(lab, "node-2", "ip link set eth0 mtu 1400");
    let c = failing("node-2", "mtu", &[]);
    assert!(c["detail"].as_str().unwrap().contains("1350"), "{c}");
    in_node(lab, "node-2", "ip link set eth0 mtu 1500");

    in_node(
        lab,
        "node-2",
        "nft add table inet fw && nft add chain inet fw in '{ type filter hook input priority 0; }' && nft add rule inet fw in udp dport 8472 drop",
    );
    failing("node-2", "vxlan-port", &[]);
    let c = failing("node-1", "tunnel", &[]);
    assert!(c["detail"].as_str().unwrap().contains("node-2"), "{c}");
    in_node(lab, "node-2", "nft delete table inet fw");

    let c = failing("node-1", "nft", &[("PATH", "/nonexistent")]);
    assert!(c["fix"].as_str().unwrap().contains("nftables"), "{c}");

    in_node(lab, "node-2", "ip link delete flatnet.1");
    failing("node-2", "vxlan-device", &[]);
    drop(paused);
    // The agent back: it re-creates the device, and every check passes again.
    converges("a healthy lab again", Duration::from_secs(20), || match doctor(lab, None, &[]) {
        (true, _) => Ok(()),
        (false, r) => Err(format!("{r}")),
    });

    // The bridge is the CNI plugin's: the agent does not make it, doctor says what does.
    in_node(lab, "node-1", "ip link delete cni0");
    let c = failing("node-1", "bridge", &[]);
    assert!(c["fix"].as_str().unwrap().contains("ip link add cni0 type bridge"), "{c}");
}
