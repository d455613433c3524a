//! Services end to end in a real 3-node lab: ClusterIP load-balanced over pods on every
//! node with the client's pod IP kept, NodePort on each node's address, external and
//! load-balancer IPs from a host on the underlay, externalTrafficPolicy Local keeping
//! the client's address, ClientIP affinity, hairpin, and a Service whose pods are all
//! gone refusing connections at once.

mod common;

use common::lab::{Lab, http_get_at, seen_client_ip, seen_pod};
use common::{converges, rt, sandboxed};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web, member: one}}
spec: {nodeName: node-1, containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-3, labels: {app: web}}
spec: {nodeName: node-3, containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: doomed-1, labels: {app: doomed}}
spec: {nodeName: node-2, terminationGracePeriodSeconds: 0, containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: doomed-2, labels: {app: doomed}}
spec: {nodeName: node-3, terminationGracePeriodSeconds: 0, containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-1, containers: [{name: c, image: busybox, command: [sleep, "3600"]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec: {type: NodePort, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30081}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec: {type: LoadBalancer, externalIPs: [203.0.113.51], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec: {sessionAffinity: ClientIP, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: self}
spec: {selector: {member: one}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: doomed}
spec: {selector: {app: doomed}, ports: [{port: 80}]}
"#;

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// GETs `to` from `from` `n` times; the answering pods, counted, and the client addresses seen.
fn spread(from: &Path, to: SocketAddr, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut pods = BTreeMap::new();
    let mut clients = Vec::new();
    for i in 0..n {
        let body = http_get_at(from, to).unwrap_or_else(|e| panic!("request {i} to {to}: {e}"));
        *pods.entry(seen_pod(&body)).or_default() += 1;
        clients.push(seen_client_ip(&body));
    }
    (pods, clients)
}

#[test]
fn services_end_to_end() {
    sandboxed("services_end_to_end", |_| {
        let lab = Lab::up(3, "vxlan");
        lab.apply(MANIFEST);
        let ips = lab.ready_ips(&["client", "web-1", "web-2", "web-3", "doomed-1", "doomed-2"]);
        let client_ip = ips[0].clone();
        let rt = rt();
        let client = lab.client(&rt);
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let cluster_ip = |name: &str| {
            rt.block_on(services.get(name)).unwrap().spec.unwrap().cluster_ip.unwrap_or_else(|| panic!("{name}"))
        };
        let client_ns = lab.pod_netns("client");
        let underlay = lab.ns("underlay");

        // ClusterIP with a named targetPort: 60 requests reach all three pods (one per
        // node), and each saw the client's pod IP. (A bounded poll: on the upstream
        // control plane an endpoint can join the EndpointSlice a moment after its pod is
        // Ready, so the first rounds may see two.)
        let web = cluster_ip("web");
        converges("the web Service answers", Duration::from_secs(20), || {
            http_get_at(&client_ns, addr(&web, 80)).map(|_| ()).map_err(|e| e.to_string())
        });
        converges("60 requests to the web Service to reach all three pods", Duration::from_secs(30), || {
            let (pods, clients) = spread(&client_ns, addr(&web, 80), 60);
            assert!(clients.iter().all(|c| *c == client_ip), "backends saw {clients:?}, not {client_ip}");
            match pods.keys().cloned().collect::<Vec<_>>() {
                seen if seen == ["web-1", "web-2", "web-3"] => Ok(()),
                _ => Err(format!("{pods:?}")),
            }
        });

        // NodePort, on every node's address, from the host on the underlay.
        for node_ip in ["192.168.1.11", "192.168.1.12", "192.168.1.13"] {
            converges(&format!("NodePort 30080 on {node_ip}"), Duration::from_secs(10), || {
                http_get_at(&underlay, addr(node_ip, 30080)).map(|_| ()).map_err(|e| e.to_string())
            });
        }
        // ...and from a pod, to another node's address.
        http_get_at(&client_ns, addr("192.168.1.13", 30080)).unwrap();

        // externalTrafficPolicy Local: node-2's own pod answers, and sees the outside client.
        let (pods, clients) = spread(&underlay, addr("192.168.1.12", 30081), 10);
        assert_eq!(pods.keys().cloned().collect::<Vec<_>>(), ["web-2"], "{pods:?}");
        assert!(clients.iter().all(|c| c == "192.168.1.1"), "source not kept: {clients:?}");

        // A load-balancer IP (as a cloud controller would publish it) and an external IP,
        // routed to node-1 by the underlay host.
        let lb = "203.0.113.50";
        rt.block_on(services.patch_status(
            "web-lb",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": lb}]}}})),
        ))
        .unwrap();
        for ip in [lb, "203.0.113.51"] {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", underlay.display()))
                .args(["ip", "route", "replace", &format!("{ip}/32"), "via", "192.168.1.11"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            converges(&format!("{ip}:80 from the underlay"), Duration::from_secs(10), || {
                http_get_at(&underlay, addr(ip, 80)).map(|_| ()).map_err(|e| e.to_string())
            });
        }
        let (pods, _) = spread(&underlay, addr(lb, 80), 30);
        assert!(pods.len() >= 2, "the load-balancer IP is spread over the endpoints: {pods:?}");

        // ClientIP affinity: 20 requests from one client, one backend.
        let (pods, _) = spread(&client_ns, addr(&cluster_ip("sticky"), 80), 20);
        assert_eq!(pods.len(), 1, "affinity broken: {pods:?}");

        // Hairpin: web-1 reaches itself through a Service that has only it.
        let body = http_get_at(&lab.pod_netns("web-1"), addr(&cluster_ip("self"), 80)).unwrap();
        assert_eq!(seen_pod(&body), "web-1", "{body}");

        // Every pod of a Service deleted: new connections are refused, at once.
        let doomed = cluster_ip("doomed");
        http_get_at(&client_ns, addr(&doomed, 80)).unwrap();
        let pods: Api<Pod> = Api::namespaced(client, "default");
        for p in ["doomed-1", "doomed-2"] {
            rt.block_on(pods.delete(p, &DeleteParams::default())).unwrap();
        }
        // Once the pods are gone from the API, node-1 lists the Service as having no
        // endpoint (a dying pod's own kernel also refuses connections, so the refusal alone
        // would not tell whose it was).
        let node1 = lab.ns("node-1");
        let unroutable = |ip: &str| {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", node1.display()))
                .args(["nft", "-j", "list", "set", "ip", "flatnet", "no-endpoint-services"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("[\"{ip}\", \"tcp\", 80]"))
        };
        converges("node-1 lists the Service as having no endpoint", Duration::from_secs(20), || {
            let left =
                rt.block_on(pods.list(&Default::default())).unwrap().items.into_iter().filter_map(|p| p.metadata.name);
            let left: Vec<String> = left.filter(|n| n.starts_with("doomed")).collect();
            if !left.is_empty() {
                return Err(format!("pods still in the API: {left:?}"));
            }
            if unroutable(&doomed) { Ok(()) } else { Err("not in @no-endpoint-services yet".into()) }
        });
        let t = Instant::now();
        let e = http_get_at(&client_ns, addr(&doomed, 80)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "from a pod: {e}");
        assert!(t.elapsed() < Duration::from_secs(1), "from a pod: took {:?}", t.elapsed());
        // Also from the node itself, and to a ClusterIP no Service has.
        for (target, what) in [(addr(&doomed, 80), "from the node"), (addr("10.96.200.200", 80), "unallocated")] {
            let t = Instant::now();
            let e = http_get_at(&node1, target).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{what}: {e}");
            assert!(t.elapsed() < Duration::from_secs(1), "{what}: took {:?}", t.elapsed());
        }
        rolling_update_with_affinity_and_local_policy(&lab, &client_ns, &ips[1], &ips[2], &cluster_ip);
        lab.down_and_check_clean();
    });
}

/// The moment of a rolling update that used to kill the proxy: ClientIP affinity and
/// internalTrafficPolicy Local, this node's only endpoint terminating (still serving) and
/// another node's ready. The node's own endpoint keeps serving, and no reconciler fails.
fn rolling_update_with_affinity_and_local_policy(
    lab: &Lab,
    client_ns: &Path,
    web1_ip: &str,
    web2_ip: &str,
    cluster_ip: &dyn Fn(&str) -> String,
) {
    lab.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: rolling}}
spec: {{sessionAffinity: ClientIP, internalTrafficPolicy: Local, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: rolling-1, labels: {{kubernetes.io/service-name: rolling}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ["{web1_ip}"], nodeName: node-1, conditions: {{ready: false, serving: true, terminating: true}}}}
- {{addresses: ["{web2_ip}"], nodeName: node-2, conditions: {{ready: true, serving: true, terminating: false}}}}
"#
    ));
    let rolling = cluster_ip("rolling");
    converges("the terminating local endpoint serves the rolling Service", Duration::from_secs(20), || {
        let body = http_get_at(client_ns, addr(&rolling, 80)).map_err(|e| e.to_string())?;
        match seen_pod(&body).as_str() {
            "web-1" => Ok(()),
            other => Err(format!("answered by {other:?}")),
        }
    });
    let metrics = SocketAddr::from(([127, 0, 0, 1], 9402));
    let status = common::lab::http_get_path(&lab.ns("node-1"), metrics, "/status").unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    for r in ["node", "proxy", "policy"] {
        let rec = &v["reconcilers"][r];
        assert!(rec["last_error"].is_null() && rec["restarts"] == 0, "{r} is failing on node-1: {v:#}");
    }
    let ready = common::lab::http_get_path(&lab.ns("node-1"), metrics, "/readyz");
    assert!(ready.is_ok(), "node-1's agent is not ready: {ready:?}");
}

const UDP_MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: dns-1, labels: {app: dns}}
spec: {nodeName: node-2, terminationGracePeriodSeconds: 0, containers: [{name: d, image: nginx, ports: [{containerPort: 5353, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-1, containers: [{name: c, image: busybox, command: [sleep, "3600"]}]}
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec: {selector: {app: dns}, ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]}
"#;

const DNS_2: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: dns-2, labels: {app: dns}}
spec: {nodeName: node-2, containers: [{name: d, image: nginx, ports: [{containerPort: 5353, protocol: UDP}]}]}
"#;

/// One datagram from `from`'s fixed source port 40000 to `to`; the answering pod.
fn udp_ask(from: &Path, to: SocketAddr) -> Result<String, String> {
    flatnet_kernel::netns::run_in(from, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:40000").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
        s.send_to(b"who", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(seen_pod(&String::from_utf8_lossy(&buf[..n])))
    })
    .unwrap()
}

/// The rules of table ip flatnet in node-1, with their handles.
fn ruleset(lab: &Lab) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.ns("node-1").display()))
        .args(["nft", "-a", "list", "table", "ip", "flatnet"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn udp_flows_follow_endpoint_changes_and_a_restart_rewrites_nothing() {
    sandboxed("udp_flows_follow_endpoint_changes_and_a_restart_rewrites_nothing", |_| {
        let lab = Lab::up(2, "vxlan");
        lab.apply(UDP_MANIFEST);
        lab.ready_ips(&["client", "dns-1"]);
        let rt = rt();
        let client = lab.client(&rt);
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let ip = rt.block_on(services.get("dns")).unwrap().spec.unwrap().cluster_ip.unwrap();
        let client_ns = lab.pod_netns("client");
        converges("UDP through the Service", Duration::from_secs(20), || {
            udp_ask(&client_ns, addr(&ip, 53)).and_then(|p| if p == "dns-1" { Ok(()) } else { Err(p) })
        });

        // The endpoint is replaced; the same client flow (same source port) must reach the
        // new one: the agent flushed the conntrack entry to the old.
        lab.apply(DNS_2);
        lab.ready_ips(&["dns-2"]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        rt.block_on(pods.delete("dns-1", &DeleteParams::default())).unwrap();
        converges("the same UDP flow reaches the new endpoint", Duration::from_secs(20), || {
            udp_ask(&client_ns, addr(&ip, 53)).and_then(|p| if p == "dns-2" { Ok(()) } else { Err(p) })
        });
        let log = std::fs::read_to_string(lab.agent_log("node-1")).unwrap();
        assert!(log.contains("UDP conntrack entr"), "no conntrack flush logged:\n{log}");

        // kubectl shows what the agents program.
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(lab.state().join("kubeconfig"))
            .args(["get", "svc,endpointslices", "-A"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("service/dns") && text.contains("5353"), "{text}");
        assert!(text.contains("192.168.1.1"), "default/kubernetes points at the control plane:\n{text}");

        // An agent restart rewrites nothing: every rule keeps its handle.
        let before = ruleset(&lab);
        assert!(before.contains("dnat to"), "{before}");
        let old = lab.agent_pid("node-1");
        let log_path = lab.agent_log("node-1");
        let mark = std::fs::read_to_string(&log_path).unwrap().len();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL).unwrap();
        converges("the restarted agent's full sync", Duration::from_secs(30), || {
            let log = std::fs::read_to_string(&log_path).unwrap();
            let new = &log[mark.min(log.len())..];
            match new.lines().find(|l| l.contains("full sync:")) {
                Some(l) if l.contains("0 chain(s) added, 0 removed, 0 element(s) changed") => Ok(()),
                Some(l) => Err(format!("the restart changed the table: {l}")),
                None => Err("not yet".into()),
            }
        });
        assert_ne!(lab.agent_pid("node-1"), old);
        assert_eq!(ruleset(&lab), before, "the restart rewrote rules");
        udp_ask(&client_ns, addr(&ip, 53)).unwrap();
        lab.down_and_check_clean();
    });
}

/// The README's main job: `lab demo` brings a lab up and every check passes, the
/// Service one included.
#[test]
fn the_demo_passes_every_check() {
    sandboxed("the_demo_passes_every_check", |_| {
        let dir = tempfile::tempdir().unwrap();
        let port = common::lab::free_port();
        let out = Command::new(common::lab::flatnet())
            .args(["lab", "demo", "--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = Command::new(common::lab::flatnet()).args(["lab", "down", "--state-dir"]).arg(dir.path()).output();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let checks: Vec<&str> = text.lines().filter(|l| l.contains(" PASS ") || l.contains(" FAIL ")).collect();
        assert_eq!(checks.len(), 7, "{text}");
        assert!(checks.iter().all(|l| l.contains(" PASS ")), "{text}");
        assert!(text.contains("client → Service server"), "{text}");
    });
}
